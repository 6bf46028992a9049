//! Pricing: which tariff prices a (service, unit), the cost of units and
//! how many whole units an amount buys.

#[allow(unused_imports)]
use super::*;

/// How one (service, unit) is priced: a fixed price per unit, or a rule of
/// the active rate card at a time.
#[derive(Clone, Debug)]
pub(super) enum Rate {
    Fixed(Decimal),
    Card {
        card: String,
        service: u32,
        unit: reckon_rating::Unit,
        /// Start of the usage.
        at: u64,
        /// Length of the usage in ms (0: an instant); a usage that spans a
        /// tariff change is priced on each side.
        span_ms: u64,
    },
}

impl Engine {
    pub(super) fn price(&self, service: ServiceId, unit: Unit) -> Option<&Price> {
        self.config
            .prices
            .iter()
            .find(|p| p.unit == unit && p.service == Some(service))
            .or_else(|| {
                self.config
                    .prices
                    .iter()
                    .find(|p| p.unit == unit && p.service.is_none())
            })
    }

    pub(super) fn policy(&self, service: ServiceId, unit: Option<Unit>) -> ServicePolicy {
        let matches = |p: &&ServicePolicy| unit.is_none_or(|u| p.default_unit == u);
        self.config
            .policies
            .iter()
            .filter(matches)
            .find(|p| p.service == Some(service))
            .or_else(|| {
                self.config
                    .policies
                    .iter()
                    .filter(matches)
                    .find(|p| p.service.is_none())
            })
            .or_else(|| {
                self.config
                    .policies
                    .iter()
                    .find(|p| p.service == Some(service))
            })
            .or_else(|| self.config.policies.iter().find(|p| p.service.is_none()))
            .cloned()
            .unwrap_or_else(|| EngineConfig::default().policies[0].clone())
    }

    /// How (service, unit) is priced at `now`, and in which ledger unit it
    /// is charged: the active rate card when it has a rule for the pair,
    /// else the fixed price table, else one-for-one in the unit itself.
    pub(super) fn tariff(&self, service: ServiceId, unit: Unit, now: Timestamp) -> (Unit, Rate) {
        if let Some(card_id) = &self.active_card {
            if let (Some(card), Ok(runit)) = (
                self.rates.card(card_id),
                reckon_rating::Unit::new(unit.as_str()),
            ) {
                if let Some(version) = card.version_at(now.0) {
                    if version.units_of(service.0).contains(&runit) {
                        if let Ok(charge) = Unit::new(version.charge_unit().as_str()) {
                            return (
                                charge,
                                Rate::Card {
                                    card: card_id.clone(),
                                    service: service.0,
                                    unit: runit,
                                    at: now.0,
                                    span_ms: 0,
                                },
                            );
                        }
                    }
                }
            }
        }
        match self.price(service, unit) {
            Some(p) => (p.charge_unit, Rate::Fixed(p.per_unit)),
            None => (unit, Rate::Fixed(Decimal::ONE)),
        }
    }

    /// Usage attributes (model, region, ...) configured for a service: the
    /// native protocol names the service (rating group), the configuration
    /// says which product it is.
    pub(super) fn attributes_of(&self, service: ServiceId) -> &[(String, String)] {
        self.config
            .service_attributes
            .iter()
            .find(|(s, _)| *s == service)
            .map_or(&[], |(_, a)| a.as_slice())
    }

    /// Checks a request's attributes (SPEC 6.4, 7.3): at most 8 distinct
    /// keys of 1..=32 bytes, values of at most 64. A key the configuration
    /// binds for one of the request's services may only repeat the bound
    /// value: the operator's binding (service 11 is model "large") fixes
    /// what the service costs, and a request must not be able to relabel
    /// it as a cheaper product; a different value is refused rather than
    /// ignored, so a misconfigured gateway is told instead of being billed
    /// for a product other than the one it named.
    pub(super) fn validate_attributes(&self, ccr: &CreditControlRequest) -> Result<(), u32> {
        let attrs = &ccr.attributes;
        if attrs.len() > REQUEST_ATTRIBUTES_MAX {
            return Err(result_code::INVALID_AVP_VALUE);
        }
        for (i, (k, v)) in attrs.iter().enumerate() {
            if k.is_empty()
                || k.len() > REQUEST_ATTRIBUTE_KEY_MAX
                || v.len() > REQUEST_ATTRIBUTE_VALUE_MAX
                || attrs[..i].iter().any(|(o, _)| o == k)
            {
                return Err(result_code::INVALID_AVP_VALUE);
            }
            for s in &ccr.services {
                if self
                    .attributes_of(s.service)
                    .iter()
                    .any(|(bk, bv)| bk == k && bv != v)
                {
                    return Err(result_code::INVALID_AVP_VALUE);
                }
            }
        }
        Ok(())
    }

    /// The attributes a card prices a usage of `service` with: those the
    /// configuration binds to it, then the request's other ones.
    fn usage_attributes(&self, service: ServiceId) -> Vec<(&str, &str)> {
        let bound = self.attributes_of(service);
        bound
            .iter()
            .chain(
                self.request_attributes
                    .iter()
                    .filter(|(k, _)| !bound.iter().any(|(b, _)| b == k)),
            )
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Price of `units` at a rate, in ledger amounts.
    pub(super) fn cost(&self, rate: &Rate, units: Decimal) -> Result<Amount, u32> {
        match rate {
            Rate::Fixed(per_unit) => Self::fixed_cost(*per_unit, units),
            Rate::Card {
                card,
                service,
                unit,
                at,
                span_ms,
            } => {
                let pairs = self.usage_attributes(ServiceId(*service));
                let usage = reckon_rating::Usage::new(*service, *unit, units, *at)
                    .with_attributes(&pairs)
                    .spanning(*span_ms);
                let rated = self
                    .rates
                    .rate(card, &usage)
                    .map_err(|_| result_code::RATING_FAILED)?;
                Amount::from_decimal(rated.price).map_err(|_| result_code::RATING_FAILED)
            }
        }
    }

    /// Whole units `money` buys at a rate.
    pub(super) fn units_for(&self, rate: &Rate, money: Amount) -> Decimal {
        match rate {
            Rate::Fixed(per_unit) => Self::fixed_units_for(*per_unit, money),
            Rate::Card {
                card,
                service,
                unit,
                at,
                ..
            } => {
                let pairs = self.usage_attributes(ServiceId(*service));
                let usage = reckon_rating::Usage::new(*service, *unit, Decimal::ZERO, *at)
                    .with_attributes(&pairs);
                let mut units = self
                    .rates
                    .units_for(card, &usage, money.to_decimal())
                    .unwrap_or(Decimal::ZERO)
                    .floor();
                // Grants are whole units; never more than the money pays for.
                while units.is_sign_positive() && self.cost(rate, units).map_or(true, |c| c > money)
                {
                    units -= Decimal::ONE;
                }
                units.max(Decimal::ZERO)
            }
        }
    }

    /// Cost of `units` at a fixed price, rounded up to the ledger's precision.
    pub(super) fn fixed_cost(per_unit: Decimal, units: Decimal) -> Result<Amount, u32> {
        let raw = per_unit
            .checked_mul(units)
            .ok_or(result_code::RATING_FAILED)?;
        let rounded = raw.round_dp_with_strategy(Amount::SCALE, RoundingStrategy::AwayFromZero);
        Amount::from_decimal(rounded).map_err(|_| result_code::RATING_FAILED)
    }

    /// Whole units that `money` buys at a fixed `per_unit`.
    pub(super) fn fixed_units_for(per_unit: Decimal, money: Amount) -> Decimal {
        if per_unit.is_zero() {
            return Decimal::MAX;
        }
        let mut units = (money.to_decimal() / per_unit).floor();
        while units.is_sign_positive() && Self::fixed_cost(per_unit, units).is_ok_and(|c| c > money)
        {
            units -= Decimal::ONE;
        }
        units.max(Decimal::ZERO)
    }
}
