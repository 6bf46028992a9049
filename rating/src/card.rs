//! Rate cards, their versions, the rate book, and rating itself.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use smallvec::SmallVec;

use crate::fixed::{round_ratio, Fx};
use crate::limits::*;
use crate::model::{Rule, Service, UnitRules};
use crate::time::Bands;
use crate::{Rated, RatedPart, RatingError, Rounding, Unit, Usage};

/// One immutable version of a rate card, in force from `effective_from_ms`
/// until the next version's effective time.
///
/// Built only by the loader ([`crate::parse_toml`], [`crate::parse_json`]),
/// so every value is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardVersion {
    pub(crate) version: u32,
    pub(crate) effective_from_ms: u64,
    pub(crate) utc_offset_minutes: i16,
    pub(crate) currency: Unit,
    pub(crate) charge_unit: Unit,
    /// Currency per charge unit (`None` when pricing in the currency itself).
    pub(crate) credit_value: Option<Fx>,
    pub(crate) decimals: u32,
    pub(crate) rounding: Rounding,
    pub(crate) units: Vec<Unit>,
    pub(crate) bands: Bands,
    /// Sorted by id.
    pub(crate) services: Vec<Service>,
}

impl CardVersion {
    /// The version number (strictly increasing within a card).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Milliseconds since the Unix epoch (UTC) from which this version prices usage.
    pub fn effective_from_ms(&self) -> u64 {
        self.effective_from_ms
    }
    /// The card's fixed time zone, minutes east of UTC (no DST: there is no tz database).
    pub fn utc_offset_minutes(&self) -> i16 {
        self.utc_offset_minutes
    }
    /// The currency of cost and of reporting (e.g. `USD`).
    pub fn currency(&self) -> Unit {
        self.currency
    }
    /// The unit prices are stated in: the currency, or a credit unit.
    pub fn charge_unit(&self) -> Unit {
        self.charge_unit
    }
    /// Currency per one charge unit when the card prices in credits.
    pub fn credit_value(&self) -> Option<Decimal> {
        self.credit_value.and_then(Fx::to_dec)
    }
    /// Decimal places every price and cost is rounded to.
    pub fn decimals(&self) -> u32 {
        self.decimals
    }
    /// The rounding mode of prices and costs.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }
    /// Ids of the services this version prices, ascending.
    pub fn service_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.services.iter().map(|s| s.id)
    }
    /// The units this version prices for a service (empty if unknown service).
    pub fn units_of(&self, service: u32) -> Vec<Unit> {
        self.service(service)
            .map(|s| s.by_unit.iter().map(|u| u.unit).collect())
            .unwrap_or_default()
    }

    #[inline]
    fn service(&self, id: u32) -> Option<&Service> {
        match self.services.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => self.services.get(i),
            Err(_) => None,
        }
    }

    #[inline]
    fn unit_rules(&self, service: u32, unit: Unit) -> Result<&UnitRules, RatingError> {
        let s = self.service(service).ok_or(RatingError::UnknownService {
            service,
            version: self.version,
        })?;
        s.by_unit
            .iter()
            .find(|u| u.unit == unit)
            .ok_or(RatingError::NoRule {
                service,
                unit,
                version: self.version,
            })
    }

    #[inline]
    fn round(&self, num: Fx, den: u64) -> Result<Fx, RatingError> {
        round_ratio(num, den, self.decimals, self.rounding).ok_or_else(ovf)
    }

    /// Rounded price of `q` billed units (already on the increment grid),
    /// including the minimum: what `units_for` inverts.
    fn price_of_billed(&self, rule: &Rule, q: Fx, prior: Fx) -> Result<Fx, RatingError> {
        let mut flat_done = false;
        let (n, d) = rule.price.eval(q, prior, &mut flat_done).ok_or_else(ovf)?;
        let p = self.round(n, d)?;
        Ok(match rule.minimum {
            Some(min) if !q.is_zero() => p.max(min),
            _ => p,
        })
    }
}

/// A rate card: an id and its full version history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCard {
    pub(crate) id: String,
    pub(crate) description: Option<String>,
    /// Strictly increasing in number and effective time.
    pub(crate) versions: Vec<CardVersion>,
}

// A priced piece of a usage before quantities are allocated.
struct Seg<'a> {
    vi: usize,
    rule: &'a Rule,
    from: u64,
    to: u64,
}

impl RateCard {
    /// The card id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The optional description from the file.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    /// All versions, oldest first (history is never dropped).
    pub fn versions(&self) -> &[CardVersion] {
        &self.versions
    }
    /// The versions, to add them one by one with [`RateBook::add_version`].
    pub fn into_versions(self) -> Vec<CardVersion> {
        self.versions
    }

    #[inline]
    fn index_at(&self, at_ms: u64) -> Result<usize, RatingError> {
        let i = self
            .versions
            .partition_point(|v| v.effective_from_ms <= at_ms);
        if i == 0 {
            return Err(RatingError::NotInForce {
                card: self.id.clone(),
                at_ms,
            });
        }
        Ok(i - 1)
    }

    /// The version in force at an instant (the latest with `effective_from_ms <= at_ms`).
    pub fn version_at(&self, at_ms: u64) -> Option<&CardVersion> {
        self.index_at(at_ms).ok().and_then(|i| self.versions.get(i))
    }

    /// The first instant after `usage.at_ms` at which this usage's price may
    /// change (next version, or next time-band edge if its rules use bands):
    /// a grant's validity should not cross it (Diameter Tariff-Time-Change).
    pub fn next_change(&self, usage: &Usage) -> Result<Option<u64>, RatingError> {
        let vi = self.index_at(usage.at_ms)?;
        let v = &self.versions[vi];
        let ur = v.unit_rules(usage.service, usage.unit)?;
        let mut next = self
            .versions
            .get(vi + 1)
            .map_or(u64::MAX, |n| n.effective_from_ms);
        if ur.uses_bands {
            next = next.min(v.bands.next_edge(usage.at_ms, v.utc_offset_minutes));
        }
        Ok(if next == u64::MAX { None } else { Some(next) })
    }

    /// Prices one usage with the version(s) in force over its time.
    ///
    /// A usage with `duration_ms > 0` is split where the version or the
    /// matching rule changes (a time band boundary), and each part is priced
    /// by its own rule; see the crate docs for the rounding rules.
    pub fn rate(&self, usage: &Usage) -> Result<Rated, RatingError> {
        let q = check_quantity(usage.quantity, MAX_QUANTITY_DIGITS)?;
        let prior = check_quantity(usage.prior_quantity, MAX_PRIOR_DIGITS)?;
        check_usage(usage)?;
        let vi0 = self.index_at(usage.at_ms)?;

        if usage.duration_ms == 0 {
            // The hot path (one request, one event): no splitting, no sums.
            let v = &self.versions[vi0];
            let ur = v.unit_rules(usage.service, usage.unit)?;
            let rule = select(v, ur, usage, usage.at_ms)?;
            return rate_single(v, rule, q, prior, usage.at_ms, usage.at_ms);
        }
        let mut segs: SmallVec<[Seg<'_>; 2]> = SmallVec::new();
        self.split(usage, vi0, &mut segs)?;
        if let [seg] = segs.as_slice() {
            return rate_single(&self.versions[seg.vi], seg.rule, q, prior, seg.from, seg.to);
        }

        let v0 = &self.versions[vi0];
        // Exact parts first; converted to Decimal once at the end.
        let mut parts: SmallVec<[(Fx, Fx, Fx, Fx); 1]> = SmallVec::new();
        let total_ms = usage.duration_ms.max(1) as i128;
        let mut left = q;
        let mut pos = prior;
        let mut price_sum = Fx::ZERO;
        let mut cost_sum = Fx::ZERO;
        let mut billed_sum = Fx::ZERO;
        let mut flat_price = false;
        let mut flat_cost = false;
        let n = segs.len();
        for (i, seg) in segs.iter().enumerate() {
            let v = &self.versions[seg.vi];
            // Proportional share, floored to the quantity's own decimals;
            // the remainder goes to the last part so shares sum exactly.
            let qi = if i + 1 == n {
                left
            } else {
                let d = (seg.to - seg.from) as i128;
                let m = q.m.checked_mul(d).ok_or_else(ovf)?.div_euclid(total_ms);
                Fx { m, s: q.s }
            };
            if i + 1 < n {
                left = left.sub(qi).ok_or_else(ovf)?;
            }
            let rule = seg.rule;
            let billed = match rule.increment {
                Some(inc) if !qi.is_zero() => {
                    let k = qi.div_ceil(inc).ok_or_else(ovf)?;
                    Fx::int(k).mul(inc).ok_or_else(ovf)?
                }
                _ => qi,
            };
            let (pn, pd) = rule
                .price
                .eval(billed, pos, &mut flat_price)
                .ok_or_else(ovf)?;
            let price = v.round(pn, pd)?;
            // Cost is what the provider charges for the exact quantity.
            let cost = match &rule.cost {
                Some(c) => {
                    let (cn, cd) = c.eval(qi, pos, &mut flat_cost).ok_or_else(ovf)?;
                    v.round(cn, cd)?
                }
                None => Fx::ZERO,
            };
            pos = pos.add(billed).ok_or_else(ovf)?;
            billed_sum = billed_sum.add(billed).ok_or_else(ovf)?;
            price_sum = price_sum.add(price).ok_or_else(ovf)?;
            cost_sum = cost_sum.add(cost).ok_or_else(ovf)?;
            parts.push((qi, billed, price, cost));
        }

        // The minimum applies once per usage, by the rule in force at its start;
        // the shortfall is added to the first part.
        if let Some(min) = segs[0].rule.minimum {
            if !q.is_zero() && price_sum.lt(min) {
                let top = min.sub(price_sum).ok_or_else(ovf)?;
                price_sum = min;
                parts[0].2 = parts[0].2.add(top).ok_or_else(ovf)?;
            }
        }

        let price_cur = match v0.credit_value {
            Some(cv) => v0.round(price_sum.mul(cv).ok_or_else(ovf)?, 1)?,
            None => price_sum,
        };
        let margin = price_cur.sub(cost_sum).ok_or_else(ovf)?;
        let mut lines: SmallVec<[RatedPart; 1]> = SmallVec::new();
        for (seg, (qi, billed, price, cost)) in segs.iter().zip(&parts) {
            lines.push(RatedPart {
                version: self.versions[seg.vi].version,
                rule: seg.rule.index,
                from_ms: seg.from,
                to_ms: seg.to,
                quantity: to_dec(*qi)?,
                billed_quantity: to_dec(*billed)?,
                price: to_dec(*price)?,
                cost: to_dec(*cost)?,
            });
        }
        let (price, cost, billed_quantity) =
            (to_dec(price_sum)?, to_dec(cost_sum)?, to_dec(billed_sum)?);
        Ok(Rated {
            charge_unit: v0.charge_unit,
            price,
            currency: v0.currency,
            price_in_currency: if v0.credit_value.is_some() {
                to_dec(price_cur)?
            } else {
                price
            },
            cost,
            margin: to_dec_signed(margin)?,
            version: v0.version,
            billed_quantity,
            lines,
        })
    }

    // Walks version changes and band edges inside the usage, merging
    // neighbouring pieces priced by the same rule of the same version.
    fn split<'a>(
        &'a self,
        usage: &Usage,
        vi0: usize,
        segs: &mut SmallVec<[Seg<'a>; 2]>,
    ) -> Result<(), RatingError> {
        let end = usage
            .at_ms
            .checked_add(usage.duration_ms)
            .ok_or(RatingError::InvalidUsage("at_ms + duration_ms overflows"))?;
        let mut t = usage.at_ms;
        let mut vi = vi0;
        let mut steps = 0usize;
        while t < end {
            steps += 1;
            if steps > MAX_SPLIT_STEPS {
                return Err(RatingError::TooManyParts(MAX_PARTS));
            }
            let v = &self.versions[vi];
            let ur = v.unit_rules(usage.service, usage.unit)?;
            let next_v = self
                .versions
                .get(vi + 1)
                .map_or(u64::MAX, |n| n.effective_from_ms);
            let mut to = end.min(next_v);
            if ur.uses_bands {
                to = to.min(v.bands.next_edge(t, v.utc_offset_minutes));
            }
            let rule = select(v, ur, usage, t)?;
            match segs.last_mut() {
                Some(last) if last.vi == vi && std::ptr::eq(last.rule, rule) => last.to = to,
                _ => {
                    if segs.len() == MAX_PARTS {
                        return Err(RatingError::TooManyParts(MAX_PARTS));
                    }
                    segs.push(Seg {
                        vi,
                        rule,
                        from: t,
                        to,
                    });
                }
            }
            t = to;
            if t >= next_v {
                vi += 1;
            }
        }
        Ok(())
    }

    /// The largest quantity of `usage.unit` that `amount` (in the charge
    /// unit) pays for at `usage.at_ms`, given `usage.prior_quantity`.
    ///
    /// Exact: the answer is the largest multiple of the rule's increment
    /// (1 unit when the rule has none) such that every quantity up to it
    /// costs at most `amount` after all rounding. For every model but volume
    /// tiers that is simply the largest quantity whose price is ≤ `amount`;
    /// volume tiers can make more units cheaper than fewer, and a grant must
    /// stay affordable whatever part of it is used. `usage.quantity` and
    /// `usage.duration_ms` are ignored; the answer is capped at
    /// [`MAX_QUANTITY`].
    pub fn units_for(&self, usage: &Usage, amount: Decimal) -> Result<Decimal, RatingError> {
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(RatingError::InvalidAmount("amount is negative"));
        }
        let amount = Fx::from_dec(amount);
        let prior = check_quantity(usage.prior_quantity, MAX_PRIOR_DIGITS)?;
        check_usage(usage)?;
        let vi = self.index_at(usage.at_ms)?;
        let v = &self.versions[vi];
        let ur = v.unit_rules(usage.service, usage.unit)?;
        let rule = select(v, ur, usage, usage.at_ms)?;
        let step = rule.increment.unwrap_or(Fx::int(1));
        let max_q = Fx::from_dec(Decimal::from(MAX_QUANTITY));
        let k_max = max_q.div_floor(step).ok_or_else(ovf)?;
        let fits = |k: i128| -> Result<bool, RatingError> {
            let q = Fx::int(k).mul(step).ok_or_else(ovf)?;
            Ok(v.price_of_billed(rule, q, prior)?.le(amount))
        };
        // Largest k in [lo, hi] with fits(k), given fits(lo) and a price
        // that does not decrease on [lo, hi].
        let search = |mut lo: i128, mut hi: i128| -> Result<i128, RatingError> {
            if fits(hi)? {
                return Ok(hi);
            }
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid)? {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            Ok(lo)
        };
        let k = match rule.price.volume_edges() {
            None => match rule.price.estimate(amount, prior, step) {
                // Start next to the exact inverse of the unrounded price and
                // gallop to the answer: a few evaluations instead of ~40.
                Some(k0) => {
                    let k0 = k0.clamp(0, k_max);
                    if fits(k0)? {
                        let (mut lo, mut d) = (k0, 1i128);
                        loop {
                            let hi = (lo + d).min(k_max);
                            if hi == lo {
                                break lo;
                            }
                            if !fits(hi)? {
                                break search(lo, hi)?;
                            }
                            lo = hi;
                            d *= 2;
                        }
                    } else {
                        let (mut hi, mut d) = (k0, 1i128);
                        loop {
                            let lo = (hi - d).max(0);
                            if fits(lo)? {
                                break search(lo, hi)?;
                            }
                            hi = lo;
                            d *= 2;
                        }
                    }
                }
                None => search(0, k_max)?,
            },
            Some(tiers) => {
                // The price only falls where the tier changes: walk tiers,
                // searching inside the first one not wholly affordable.
                let mut lo = 0i128;
                let mut answer = None;
                for t in tiers {
                    let top = match t.up_to {
                        Some(u) => match u.sub(prior).and_then(|r| r.div_floor(step)) {
                            Some(x) => x.min(k_max),
                            None => return Err(RatingError::Overflow),
                        },
                        None => k_max,
                    };
                    if top <= lo {
                        continue;
                    }
                    if !fits(lo + 1)? {
                        answer = Some(lo);
                        break;
                    }
                    let k = search(lo + 1, top)?;
                    if k < top {
                        answer = Some(k);
                        break;
                    }
                    lo = top;
                }
                answer.unwrap_or(lo)
            }
        };
        to_dec(Fx::int(k).mul(step).ok_or_else(ovf)?)
    }
}

/// Prices a usage that one rule of one version covers entirely.
#[inline]
fn rate_single(
    v: &CardVersion,
    rule: &Rule,
    q: Fx,
    prior: Fx,
    from_ms: u64,
    to_ms: u64,
) -> Result<Rated, RatingError> {
    let billed = match rule.increment {
        Some(inc) if !q.is_zero() => {
            let k = q.div_ceil(inc).ok_or_else(ovf)?;
            Fx::int(k).mul(inc).ok_or_else(ovf)?
        }
        _ => q,
    };
    let mut flat = false;
    let (pn, pd) = rule.price.eval(billed, prior, &mut flat).ok_or_else(ovf)?;
    let mut price = v.round(pn, pd)?;
    if let Some(min) = rule.minimum {
        if !q.is_zero() && price.lt(min) {
            price = min;
        }
    }
    // Cost is what the provider charges for the exact quantity.
    let cost = match &rule.cost {
        Some(c) => {
            let mut flat = false;
            let (cn, cd) = c.eval(q, prior, &mut flat).ok_or_else(ovf)?;
            v.round(cn, cd)?
        }
        None => Fx::ZERO,
    };
    let price_cur = match v.credit_value {
        Some(cv) => v.round(price.mul(cv).ok_or_else(ovf)?, 1)?,
        None => price,
    };
    let margin = to_dec_signed(price_cur.sub(cost).ok_or_else(ovf)?)?;
    let (price_d, cost_d, billed_d) = (to_dec(price)?, to_dec(cost)?, to_dec(billed)?);
    Ok(Rated {
        charge_unit: v.charge_unit,
        price: price_d,
        currency: v.currency,
        price_in_currency: if v.credit_value.is_some() {
            to_dec(price_cur)?
        } else {
            price_d
        },
        cost: cost_d,
        margin,
        version: v.version,
        billed_quantity: billed_d,
        lines: SmallVec::from_buf([RatedPart {
            version: v.version,
            rule: rule.index,
            from_ms,
            to_ms,
            quantity: if billed == q { billed_d } else { to_dec(q)? },
            billed_quantity: billed_d,
            price: price_d,
            cost: cost_d,
        }]),
    })
}

#[inline]
fn select<'a>(
    v: &CardVersion,
    ur: &'a UnitRules,
    usage: &Usage,
    at: u64,
) -> Result<&'a Rule, RatingError> {
    let mask = if ur.uses_bands {
        v.bands.mask_at(at, v.utc_offset_minutes)
    } else {
        0
    };
    ur.select(usage.attributes, mask)
        .and_then(|i| ur.rules.get(i))
        .ok_or(RatingError::NoRule {
            service: usage.service,
            unit: usage.unit,
            version: v.version,
        })
}

#[inline]
fn to_dec(f: Fx) -> Result<Decimal, RatingError> {
    f.to_dec().ok_or_else(ovf)
}

/// Like `to_dec` for a value that may be negative (a margin).
#[inline]
fn to_dec_signed(f: Fx) -> Result<Decimal, RatingError> {
    if f.m < 0 {
        Ok(-to_dec(Fx { m: -f.m, s: f.s })?)
    } else {
        to_dec(f)
    }
}

#[cold]
fn ovf() -> RatingError {
    RatingError::Overflow
}

/// Checks `0 <= q < 10^int_digits` with at most `MAX_QUANTITY_SCALE` decimals.
#[inline]
fn check_quantity(d: Decimal, int_digits: u32) -> Result<Fx, RatingError> {
    let mut d = d;
    if d.scale() > MAX_QUANTITY_SCALE {
        // Trailing zeros are harmless: 5.0000000 is 5.
        d = d.normalize();
        if d.scale() > MAX_QUANTITY_SCALE {
            return Err(RatingError::InvalidQuantity("more than 6 decimal places"));
        }
    }
    let f = Fx::from_dec(d);
    if f.m < 0 {
        return Err(RatingError::InvalidQuantity("negative"));
    }
    // m < 10^(int_digits + s)  <=>  value < 10^int_digits
    let bound = crate::fixed::pow10(int_digits + f.s).ok_or_else(ovf)?;
    if f.m >= bound {
        return Err(RatingError::InvalidQuantity("too large"));
    }
    Ok(f)
}

#[inline]
fn check_usage(u: &Usage) -> Result<(), RatingError> {
    if u.attributes.len() > MAX_ATTRIBUTES {
        return Err(RatingError::InvalidUsage("too many attributes"));
    }
    for (k, v) in u.attributes {
        if k.len() > MAX_NAME_LEN || v.len() > MAX_VALUE_LEN {
            return Err(RatingError::InvalidUsage("attribute key or value too long"));
        }
    }
    if u.duration_ms > MAX_DURATION_MS {
        return Err(RatingError::InvalidUsage("duration longer than 31 days"));
    }
    Ok(())
}

/// What [`RateBook::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Whether the card was new to the book.
    pub new_card: bool,
    /// Versions appended (already-present identical versions are skipped).
    pub added: usize,
}

/// All rate cards by id, each with its full history.
#[derive(Debug, Clone, Default)]
pub struct RateBook {
    cards: BTreeMap<String, RateCard>,
}

impl RateBook {
    /// An empty book.
    pub fn new() -> RateBook {
        RateBook::default()
    }

    /// A card by id.
    pub fn card(&self, id: &str) -> Option<&RateCard> {
        self.cards.get(id)
    }

    /// All cards, by id.
    pub fn cards(&self) -> impl Iterator<Item = &RateCard> {
        self.cards.values()
    }

    /// Merges a loaded card into the book, all or nothing.
    ///
    /// A new card is added whole (its versions may lie in the past: this is
    /// how history is restored). For a known card, versions already present
    /// must be identical (re-applying a file is a no-op) and the others are
    /// appended as with [`RateBook::add_version`].
    pub fn apply(&mut self, card: RateCard, now_ms: u64) -> Result<Applied, RatingError> {
        let Some(existing) = self.cards.get_mut(&card.id) else {
            let added = card.versions.len();
            self.cards.insert(card.id.clone(), card);
            return Ok(Applied {
                new_card: true,
                added,
            });
        };
        // Validate everything before changing anything.
        let mut fresh = Vec::new();
        for v in card.versions {
            match existing.versions.iter().find(|e| e.version == v.version) {
                Some(e) if *e == v => continue,
                Some(_) => {
                    return Err(RatingError::VersionConflict {
                        card: existing.id.clone(),
                        version: v.version,
                    })
                }
                None => fresh.push(v),
            }
        }
        // Order checks run against the last version present (old or new).
        let mut last = existing
            .versions
            .last()
            .map(|l| (l.version, l.effective_from_ms));
        for (count, v) in (existing.versions.len()..).zip(&fresh) {
            check_append(&existing.id, last, count, v, now_ms)?;
            last = Some((v.version, v.effective_from_ms));
        }
        let added = fresh.len();
        existing.versions.extend(fresh);
        if card.description.is_some() {
            existing.description = card.description;
        }
        Ok(Applied {
            new_card: false,
            added,
        })
    }

    /// Appends one version to a known card: its number and effective time
    /// must exceed the last version's, and it may not take effect before
    /// `now_ms` (usage already rated must keep its price). A version
    /// effective in the future is thereby scheduled: rating picks it up when
    /// usage time reaches it, with no restart.
    pub fn add_version(
        &mut self,
        card_id: &str,
        version: CardVersion,
        now_ms: u64,
    ) -> Result<(), RatingError> {
        let card = self
            .cards
            .get_mut(card_id)
            .ok_or_else(|| RatingError::UnknownCard(card_id.to_string()))?;
        let last = card
            .versions
            .last()
            .map(|l| (l.version, l.effective_from_ms));
        check_append(&card.id, last, card.versions.len(), &version, now_ms)?;
        card.versions.push(version);
        Ok(())
    }

    /// Prices a usage with the named card (see [`RateCard::rate`]).
    #[inline]
    pub fn rate(&self, card: &str, usage: &Usage) -> Result<Rated, RatingError> {
        self.get(card)?.rate(usage)
    }

    /// Units an amount buys with the named card (see [`RateCard::units_for`]).
    pub fn units_for(
        &self,
        card: &str,
        usage: &Usage,
        amount: Decimal,
    ) -> Result<Decimal, RatingError> {
        self.get(card)?.units_for(usage, amount)
    }

    /// Next possible price change for the usage (see [`RateCard::next_change`]).
    pub fn next_change(&self, card: &str, usage: &Usage) -> Result<Option<u64>, RatingError> {
        self.get(card)?.next_change(usage)
    }

    #[inline]
    fn get(&self, card: &str) -> Result<&RateCard, RatingError> {
        self.cards
            .get(card)
            .ok_or_else(|| RatingError::UnknownCard(card.to_string()))
    }
}

fn check_append(
    card: &str,
    last: Option<(u32, u64)>,
    count: usize,
    v: &CardVersion,
    now_ms: u64,
) -> Result<(), RatingError> {
    if let Some((last_version, last_from)) = last {
        if v.version <= last_version || v.effective_from_ms <= last_from {
            return Err(RatingError::VersionOrder {
                card: card.to_string(),
                version: v.version,
                last: last_version,
            });
        }
    }
    if v.effective_from_ms < now_ms {
        return Err(RatingError::EffectiveInPast {
            card: card.to_string(),
            version: v.version,
            effective_from_ms: v.effective_from_ms,
            now_ms,
        });
    }
    if count >= MAX_VERSIONS {
        return Err(RatingError::TooManyVersions(card.to_string()));
    }
    Ok(())
}
