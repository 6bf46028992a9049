//! Diameter CCR ↔ engine credit-control request and answer.
//!
//! - Subscription-Id → account: exact entries, then numeric ranges
//!   (`account = account_base + the digits after the prefix`).
//! - Rating-Group (else the first Service-Identifier, else 0) → service.
//! - Units: CC-Time → `seconds`, CC-Total-Octets → `octets`,
//!   CC-Input-/CC-Output-Octets → `octets_in` / `octets_out` (only when
//!   no total is given: a total and its breakdown are the same volume),
//!   CC-Service-Specific-Units → the rating group's configured unit
//!   (default `requests`), CC-Money → its currency (ISO 4217 numeric code
//!   → `USD`, `EUR`, ...; absent → the configured currency). Unit names
//!   are configurable.
//! - Session-Id → engine session id: `d<org>:<Session-Id>` when that fits
//!   the engine's 128 bytes, else `d<org>#` and a 128-bit FNV-1a hash of
//!   the Session-Id in hex. The organisation is part of the id, so peers
//!   of two organisations never share a session or its stored answers.
//!   The mapping is deterministic (a fixed hash, not the process's
//!   randomised one) so a retransmission after a restart finds its session.

use crate::engine::{
    self, CreditControlAnswer, CreditControlRequest, EventAction, FinalUnitAction, Quantity,
    RequestType, ServiceRequest,
};
use reckon_balances::{AccountId, ServiceId, Unit};
use reckon_protocol::diameter::dictionary::{
    cc_request_type, check_balance_result, final_unit_action, redirect_address_type,
    requested_action,
};
use reckon_protocol::diameter::message::{
    CostInformation, FinalUnitIndication, Money, Mscc, ServiceUnits, SubscriptionId, UsedUnits,
};
use reckon_protocol::diameter::result;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// ISO 4217 numeric codes of the currencies Reckon names as units.
pub const CURRENCIES: &[(u32, &str)] = &[
    (36, "AUD"),
    (124, "CAD"),
    (156, "CNY"),
    (208, "DKK"),
    (344, "HKD"),
    (356, "INR"),
    (392, "JPY"),
    (410, "KRW"),
    (484, "MXN"),
    (554, "NZD"),
    (578, "NOK"),
    (643, "RUB"),
    (702, "SGD"),
    (710, "ZAR"),
    (752, "SEK"),
    (756, "CHF"),
    (826, "GBP"),
    (840, "USD"),
    (949, "TRY"),
    (978, "EUR"),
    (985, "PLN"),
    (986, "BRL"),
];

/// ISO 4217 "no currency": Cost-Information in credits or another unit
/// carries it with the unit in Cost-Unit.
pub const NO_CURRENCY: u32 = 999;

/// Unit names for the Diameter unit kinds.
#[derive(Clone, Debug)]
pub struct UnitMap {
    /// CC-Time.
    pub time: Unit,
    /// CC-Total-Octets.
    pub total_octets: Unit,
    /// CC-Input-Octets.
    pub input_octets: Unit,
    /// CC-Output-Octets.
    pub output_octets: Unit,
    /// CC-Service-Specific-Units, unless the rating group names its own.
    pub service_specific: Unit,
    /// CC-Money without a Currency-Code.
    pub currency: Unit,
    /// CC-Service-Specific-Units per rating group.
    pub per_service: HashMap<u32, Unit>,
}

/// How subscribers map to accounts.
#[derive(Clone, Debug, Default)]
pub struct SubscriberMap {
    /// Exact (Subscription-Id-Type, Subscription-Id-Data) → account.
    pub exact: HashMap<(u32, String), u64>,
    /// (type, prefix, account base), tried in order.
    pub ranges: Vec<(u32, String, u64)>,
}

impl SubscriberMap {
    /// The account of the first Subscription-Id that maps.
    pub fn account(&self, ids: &[SubscriptionId<'_>]) -> Option<AccountId> {
        for id in ids {
            if let Some(a) = self.exact.get(&(id.kind, id.data.to_string())) {
                return Some(AccountId(*a));
            }
            for (kind, prefix, base) in &self.ranges {
                if *kind != id.kind {
                    continue;
                }
                let Some(rest) = id.data.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                if rest.is_empty() || rest.len() > 18 || !rest.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some(a) = rest.parse::<u64>().ok().and_then(|n| base.checked_add(n)) {
                    return Some(AccountId(a));
                }
            }
        }
        None
    }
}

/// The engine's session id for a Diameter Session-Id of an organisation.
pub fn engine_session_id(org: u64, session_id: &str) -> Arc<str> {
    use std::io::Write;
    // Built on the stack: one allocation (the Arc) per request.
    let mut buf = [0u8; engine::SESSION_ID_LEN_MAX];
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let prefixed = write!(cur, "d{org}:{session_id}").is_ok();
    let len = cur.position() as usize;
    if prefixed {
        if let Ok(id) = std::str::from_utf8(&buf[..len]) {
            return Arc::from(id);
        }
    }
    Arc::from(format!("d{org}#{:032x}", fnv1a_128(session_id.as_bytes())))
}

/// The Diameter Session-Id inside an engine session id, when it is kept
/// whole (`d<org>:<Session-Id>`); `None` for a hashed one.
pub fn diameter_part(engine_id: &str) -> Option<&str> {
    let rest = engine_id.strip_prefix('d')?;
    let colon = rest.find([':', '#'])?;
    (rest.as_bytes()[colon] == b':').then(|| &rest[colon + 1..])
}

/// FNV-1a, 128-bit: fixed and stable across builds and restarts.
pub fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ *b as u128).wrapping_mul(PRIME))
}

/// FNV-1a, 64-bit (duplicate-cache digests).
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// How the answer to one request is shaped: the request's services as it
/// named them, single-service or MSCC form, and its event action.
#[derive(Clone, Debug)]
pub struct AnswerShape {
    /// MSCC form (else top-level GSU and Validity-Time).
    pub mscc: bool,
    /// Per service as the request named it: (Rating-Group,
    /// Service-Identifiers) echoed back, and whether the service is free of
    /// credit control (answered 4011 without the engine).
    pub services: Vec<(Option<u32>, Vec<u32>, bool)>,
    /// CC-Request-Type.
    pub request_type: u32,
    /// The event's Requested-Action.
    pub action: Option<u32>,
}

/// A CCR turned into an engine request, or the result code to refuse it with.
pub type Mapped = Result<(CreditControlRequest, AnswerShape), u32>;

fn money_value(m: &Money) -> Option<Decimal> {
    if !(-28..=18).contains(&m.exponent) {
        return None;
    }
    let digits = Decimal::from(m.value_digits);
    if m.exponent < 0 {
        let mut d = digits;
        d.set_scale((-m.exponent) as u32).ok()?;
        Some(d)
    } else {
        digits.checked_mul(Decimal::from(10u64.pow(m.exponent as u32)))
    }
}

impl UnitMap {
    fn currency_unit(&self, code: Option<u32>) -> Option<Unit> {
        match code {
            None => Some(self.currency),
            Some(c) => CURRENCIES
                .iter()
                .find(|(n, _)| *n == c)
                .and_then(|(_, name)| Unit::new(name).ok()),
        }
    }

    fn ssu_unit(&self, rating_group: u32) -> Unit {
        self.per_service
            .get(&rating_group)
            .copied()
            .unwrap_or(self.service_specific)
    }

    /// Adds the units of `u` to `out` (summing a unit already there).
    fn quantities(
        &self,
        u: &ServiceUnits,
        service: u32,
        out: &mut Vec<Quantity>,
    ) -> Result<(), u32> {
        let mut add = |unit: Unit, amount: Decimal| match out.iter_mut().find(|(x, _)| *x == unit) {
            Some((_, a)) => *a += amount,
            None => out.push((unit, amount)),
        };
        if let Some(t) = u.time {
            add(self.time, Decimal::from(t));
        }
        if let Some(t) = u.total_octets {
            add(self.total_octets, Decimal::from(t));
        } else {
            if let Some(i) = u.input_octets {
                add(self.input_octets, Decimal::from(i));
            }
            if let Some(o) = u.output_octets {
                add(self.output_octets, Decimal::from(o));
            }
        }
        if let Some(s) = u.service_specific_units {
            add(self.ssu_unit(service), Decimal::from(s));
        }
        if let Some(m) = &u.money {
            let unit = self
                .currency_unit(m.currency_code)
                .ok_or(result::INVALID_AVP_VALUE)?;
            let value = money_value(m).ok_or(result::INVALID_AVP_VALUE)?;
            if value.is_sign_negative() {
                return Err(result::INVALID_AVP_VALUE);
            }
            add(unit, value);
        }
        Ok(())
    }

    fn used(&self, used: &[UsedUnits], service: u32) -> Result<Vec<Quantity>, u32> {
        let mut out = Vec::new();
        for u in used {
            self.quantities(&u.units, service, &mut out)?;
        }
        Ok(out)
    }

    fn requested(&self, r: &Option<ServiceUnits>, service: u32) -> Result<Vec<Quantity>, u32> {
        let mut out = Vec::new();
        if let Some(r) = r {
            self.quantities(r, service, &mut out)?;
        }
        Ok(out)
    }

    /// Granted quantities as a Granted-Service-Unit.
    pub fn granted(&self, granted: &[Quantity], service: u32) -> ServiceUnits {
        let mut g = ServiceUnits::default();
        for (unit, amount) in granted {
            let whole = amount.trunc();
            if *unit == self.time {
                g.time = Some(whole.to_u32().unwrap_or(u32::MAX));
            } else if *unit == self.total_octets {
                g.total_octets = whole.to_u64();
            } else if *unit == self.input_octets {
                g.input_octets = whole.to_u64();
            } else if *unit == self.output_octets {
                g.output_octets = whole.to_u64();
            } else if *unit == self.ssu_unit(service) {
                g.service_specific_units = whole.to_u64();
            } else if let Some(code) = currency_code(*unit) {
                let (value_digits, exponent) = unit_value(*amount);
                g.money = Some(Money {
                    value_digits,
                    exponent,
                    currency_code: Some(code),
                });
            } else {
                // Another unit (tokens, GPU-seconds): service-specific units.
                g.service_specific_units = whole.to_u64();
            }
        }
        g
    }
}

/// The ISO 4217 numeric code of a currency unit.
pub fn currency_code(unit: Unit) -> Option<u32> {
    CURRENCIES
        .iter()
        .find(|(_, name)| *name == unit.as_str())
        .map(|(n, _)| *n)
}

/// A decimal as Value-Digits × 10^Exponent, rounding away digits that do
/// not fit an i64 (never for ledger amounts below 9.2 × 10^9 with 9 decimals).
pub fn unit_value(d: Decimal) -> (i64, i32) {
    let mut d = d.normalize();
    loop {
        let scale = d.scale() as i32;
        if let Some(m) = d.mantissa().to_i64() {
            return (m, -scale);
        }
        if scale == 0 {
            // Too large even as an integer: drop trailing digits into the exponent.
            let mut m = d.mantissa();
            let mut exp = 0;
            while m.to_i64().is_none() {
                m /= 10;
                exp += 1;
            }
            return (m.to_i64().unwrap_or(i64::MAX), exp);
        }
        d = d.round_dp((scale - 1) as u32);
    }
}

/// Maps a decoded CCR, for `account`, to an engine request of session
/// `session_id` (see [`engine_session_id`]).
pub fn request(
    units: &UnitMap,
    free: &HashSet<u32>,
    session_id: Arc<str>,
    account: AccountId,
    ccr: &reckon_protocol::diameter::message::Ccr<'_>,
) -> Mapped {
    let request_type = match ccr.request_type {
        cc_request_type::INITIAL => RequestType::Initial,
        cc_request_type::UPDATE => RequestType::Update,
        cc_request_type::TERMINATION => RequestType::Terminate,
        _ => RequestType::Event,
    };
    let action = if request_type == RequestType::Event {
        // Liberal: an EVENT without Requested-Action is a direct debit (the
        // 3GPP immediate event charging default).
        Some(
            ccr.requested_action
                .unwrap_or(requested_action::DIRECT_DEBITING),
        )
    } else {
        None
    };
    let event_action = match action {
        None => EventAction::None,
        Some(requested_action::DIRECT_DEBITING) => EventAction::DirectDebit,
        Some(requested_action::REFUND_ACCOUNT) => EventAction::Refund,
        Some(requested_action::CHECK_BALANCE) => EventAction::CheckBalance,
        Some(_) => EventAction::PriceEnquiry,
    };
    let mut services = Vec::new();
    let mut shape_services = Vec::new();
    let mscc = !ccr.mscc.is_empty();
    if mscc {
        for m in &ccr.mscc {
            let id = service_of(m);
            if free.contains(&id) {
                shape_services.push((m.rating_group, m.service_identifiers.clone(), true));
                continue;
            }
            services.push(ServiceRequest {
                service: ServiceId(id),
                requested: units.requested(&m.requested, id)?,
                used: units.used(&m.used, id)?,
                // RFC 4006: an UPDATE's MSCC without Requested-Service-Unit
                // reports usage and asks for no more quota.
                report_only: request_type == RequestType::Update && m.requested.is_none(),
            });
            shape_services.push((m.rating_group, m.service_identifiers.clone(), false));
        }
    } else if ccr.requested.is_some()
        || !ccr.used.is_empty()
        || request_type == RequestType::Initial
    {
        let id = ccr.service_identifier.unwrap_or(0);
        let is_free = free.contains(&id);
        if !is_free {
            services.push(ServiceRequest {
                service: ServiceId(id),
                requested: units.requested(&ccr.requested, id)?,
                used: units.used(&ccr.used, id)?,
                report_only: request_type == RequestType::Update && ccr.requested.is_none(),
            });
        }
        shape_services.push((None, ccr.service_identifier.into_iter().collect(), is_free));
    }
    Ok((
        CreditControlRequest {
            session_id,
            request_type,
            request_number: ccr.request_number,
            account,
            event_action,
            // A retransmission carries the original's Event-Timestamp, so
            // one past the engine's window is refused, not applied again.
            timestamp_ms: ccr.event_timestamp.map_or(0, ntp_to_unix_ms),
            services,
            attributes: Vec::new(),
        },
        AnswerShape {
            mscc,
            services: shape_services,
            request_type: ccr.request_type,
            action,
        },
    ))
}

/// Diameter `Time` (seconds since 1900, RFC 6733 §4.3.1) as ms since the
/// Unix epoch. Values below 2^31 are read in the era that starts in 2036
/// (RFC 5905's rule), so the field keeps working after it wraps.
pub fn ntp_to_unix_ms(t: u32) -> u64 {
    const UNIX_EPOCH_NTP: u64 = 2_208_988_800;
    let seconds = if t < 0x8000_0000 {
        t as u64 + (1u64 << 32)
    } else {
        t as u64
    };
    seconds.saturating_sub(UNIX_EPOCH_NTP) * 1000
}

/// True when the request names services and all are free of credit
/// control: it is answered DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE (4011)
/// without the engine.
pub fn all_free(request: &CreditControlRequest, shape: &AnswerShape) -> bool {
    request.services.is_empty() && shape.services.iter().any(|s| s.2)
}

/// The service an MSCC is about.
pub fn service_of(m: &Mscc<'_>) -> u32 {
    m.rating_group
        .or_else(|| m.service_identifiers.first().copied())
        .unwrap_or(0)
}

/// The parts of a CCA the engine's answer fills.
#[derive(Clone, Debug, Default)]
pub struct AnswerParts<'a> {
    /// Result-Code.
    pub result_code: u32,
    /// MSCC answers.
    pub mscc: Vec<Mscc<'a>>,
    /// Top-level GSU.
    pub granted: Option<ServiceUnits>,
    /// Top-level Validity-Time.
    pub validity_time: Option<u32>,
    /// Top-level Final-Unit-Indication.
    pub final_unit_indication: Option<FinalUnitIndication<'a>>,
    /// Cost-Information (PRICE_ENQUIRY).
    pub cost_information: Option<CostInformation<'a>>,
    /// Check-Balance-Result (CHECK_BALANCE).
    pub check_balance_result: Option<u32>,
    /// True when a service got a final grant or ran out of credit (the
    /// session may be re-authorised after a top-up).
    pub starved: bool,
}

/// Turns the engine's answer into CCA parts; `redirect` is the address a
/// REDIRECT final-unit action sends the user to.
pub fn answer<'a>(
    units: &UnitMap,
    shape: &AnswerShape,
    a: &CreditControlAnswer,
    redirect: Option<&'a str>,
    cost_unit: &'a mut String,
) -> AnswerParts<'a> {
    let mut parts = AnswerParts {
        result_code: a.result_code,
        ..AnswerParts::default()
    };
    let fui = |action: FinalUnitAction| -> Option<FinalUnitIndication<'a>> {
        let action = match action {
            FinalUnitAction::None => return None,
            FinalUnitAction::Terminate => final_unit_action::TERMINATE,
            FinalUnitAction::Redirect if redirect.is_some() => final_unit_action::REDIRECT,
            FinalUnitAction::Redirect => final_unit_action::TERMINATE,
            FinalUnitAction::RestrictAccess => final_unit_action::RESTRICT_ACCESS,
        };
        Some(FinalUnitIndication {
            action,
            redirect: redirect
                .filter(|_| action == final_unit_action::REDIRECT)
                .map(|r| (redirect_address_type::URL, r)),
            filter_ids: Vec::new(),
        })
    };
    let grants = shape.request_type != cc_request_type::TERMINATION
        && shape.action != Some(requested_action::REFUND_ACCOUNT);
    let mut engine_answers = a.services.iter();
    for (rating_group, identifiers, free) in &shape.services {
        let (rating_group, identifiers) = (*rating_group, identifiers.clone());
        if *free {
            if shape.mscc {
                parts.mscc.push(Mscc {
                    service_identifiers: identifiers,
                    rating_group,
                    result_code: Some(result::CREDIT_CONTROL_NOT_APPLICABLE),
                    ..Mscc::default()
                });
            } else {
                parts.result_code = result::CREDIT_CONTROL_NOT_APPLICABLE;
            }
            continue;
        }
        let Some(s) = engine_answers.next() else {
            break;
        };
        let granted =
            (grants && !s.granted.is_empty()).then(|| units.granted(&s.granted, s.service.0));
        let validity = (s.validity_time_s > 0).then_some(s.validity_time_s);
        let final_units = fui(s.final_unit_action);
        parts.starved |= final_units.is_some()
            || s.result_code == result::CREDIT_LIMIT_REACHED
            || s.result_code == result::END_USER_SERVICE_DENIED;
        if shape.mscc {
            parts.mscc.push(Mscc {
                granted,
                service_identifiers: identifiers,
                rating_group,
                validity_time: validity,
                result_code: Some(s.result_code),
                final_unit_indication: final_units,
                ..Mscc::default()
            });
        } else {
            parts.granted = granted;
            parts.validity_time = validity;
            parts.final_unit_indication = final_units;
            if s.result_code != result::SUCCESS && parts.result_code == result::SUCCESS {
                // Without MSCC the only place for the service's result.
                parts.result_code = s.result_code;
            }
        }
    }
    match shape.action {
        Some(requested_action::CHECK_BALANCE) if parts.result_code == result::SUCCESS => {
            let enough = a
                .balance
                .iter()
                .any(|(_, amount)| amount.is_sign_positive() && !amount.is_zero());
            parts.check_balance_result = Some(if enough {
                check_balance_result::ENOUGH_CREDIT
            } else {
                check_balance_result::NO_CREDIT
            });
        }
        Some(requested_action::PRICE_ENQUIRY) if parts.result_code == result::SUCCESS => {
            if let Some((unit, _)) = a.price.first() {
                let total: Decimal = a
                    .price
                    .iter()
                    .filter(|(u, _)| u == unit)
                    .map(|(_, p)| *p)
                    .sum();
                let (value_digits, exponent) = unit_value(total);
                let code = currency_code(*unit);
                cost_unit.clear();
                if code.is_none() {
                    cost_unit.push_str(unit.as_str());
                }
                parts.cost_information = Some(CostInformation {
                    value_digits,
                    exponent,
                    currency_code: code.unwrap_or(NO_CURRENCY),
                    cost_unit: (!cost_unit.is_empty()).then_some(cost_unit.as_str()),
                });
            }
        }
        _ => {}
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units() -> UnitMap {
        UnitMap {
            time: Unit::SECONDS,
            total_octets: Unit::OCTETS,
            input_octets: Unit::new("octets_in").unwrap(),
            output_octets: Unit::new("octets_out").unwrap(),
            service_specific: Unit::REQUESTS,
            currency: Unit::USD,
            per_service: [(30, Unit::TOKENS_OUT)].into_iter().collect(),
        }
    }

    #[test]
    fn session_ids_are_scoped_by_org_and_bounded() {
        assert_eq!(&*engine_session_id(7, "gw;1;2"), "d7:gw;1;2");
        assert_eq!(diameter_part("d7:gw;1;2"), Some("gw;1;2"));
        assert_eq!(diameter_part("d7:a:b#c"), Some("a:b#c"));
        let exact = "y".repeat(engine::SESSION_ID_LEN_MAX - 3);
        assert_eq!(
            engine_session_id(7, &exact).len(),
            engine::SESSION_ID_LEN_MAX
        );
        assert!(engine_session_id(7, &format!("{exact}z")).starts_with("d7#"));
        assert_ne!(
            engine_session_id(7, "gw;1;2"),
            engine_session_id(8, "gw;1;2")
        );
        let long = "x".repeat(500);
        let mapped = engine_session_id(1000, &long);
        assert!(mapped.len() <= engine::SESSION_ID_LEN_MAX);
        assert!(mapped.starts_with("d1000#"));
        assert_eq!(diameter_part(&mapped), None);
        assert_eq!(mapped, engine_session_id(1000, &long), "deterministic");
        assert_ne!(mapped, engine_session_id(1000, &"x".repeat(501)));
        // Known FNV-1a 128 value of the empty input is its offset basis.
        assert_eq!(fnv1a_128(b""), 0x6c62272e07bb014262b821756295c58d);
    }

    #[test]
    fn subscribers_map_exactly_then_by_range() {
        let mut m = SubscriberMap::default();
        m.exact.insert((0, "491701234567".into()), 1001);
        m.ranges.push((0, "4917".into(), 5_000_000));
        let id = |data| SubscriptionId { kind: 0, data };
        assert_eq!(m.account(&[id("491701234567")]), Some(AccountId(1001)));
        assert_eq!(m.account(&[id("491700000042")]), Some(AccountId(5_000_042)));
        assert_eq!(m.account(&[id("33612345678")]), None);
        assert_eq!(m.account(&[id("4917abc")]), None);
        let imsi = SubscriptionId {
            kind: 1,
            data: "491701234567",
        };
        assert_eq!(m.account(&[imsi]), None);
        assert_eq!(
            m.account(&[imsi, id("491701234567")]),
            Some(AccountId(1001))
        );
    }

    #[test]
    fn free_services_are_answered_4011_beside_charged_ones() {
        use reckon_protocol::diameter::message::Ccr;
        let u = units();
        let free: HashSet<u32> = [99].into_iter().collect();
        let ccr = Ccr {
            session_id: "s",
            request_type: 1,
            mscc: vec![
                Mscc {
                    rating_group: Some(99),
                    ..Default::default()
                },
                Mscc {
                    rating_group: Some(10),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let (req, shape) = request(&u, &free, Arc::from("d1:s"), AccountId(1), &ccr).unwrap();
        assert_eq!(req.services.len(), 1);
        assert_eq!(req.services[0].service, ServiceId(10));
        assert!(!all_free(&req, &shape));
        let engine_answer = CreditControlAnswer {
            result_code: 2001,
            services: vec![crate::engine::ServiceAnswer {
                service: ServiceId(10),
                result_code: 2001,
                granted: vec![(Unit::SECONDS, Decimal::from(60))],
                validity_time_s: 300,
                final_unit_action: FinalUnitAction::None,
                denial: None,
            }],
            balance: vec![],
            price: vec![],
        };
        let mut cost = String::new();
        let parts = answer(&u, &shape, &engine_answer, None, &mut cost);
        assert_eq!(parts.result_code, 2001);
        assert_eq!(parts.mscc[0].result_code, Some(4011));
        assert_eq!(parts.mscc[0].rating_group, Some(99));
        assert_eq!(parts.mscc[1].result_code, Some(2001));
        assert_eq!(parts.mscc[1].granted.unwrap().time, Some(60));
        let only_free = Ccr {
            mscc: vec![Mscc {
                rating_group: Some(99),
                ..Default::default()
            }],
            ..ccr
        };
        let (req, shape) = request(&u, &free, Arc::from("d1:s"), AccountId(1), &only_free).unwrap();
        assert!(all_free(&req, &shape));
    }

    #[test]
    fn units_map_both_ways() {
        let u = units();
        let mut q = Vec::new();
        u.quantities(
            &ServiceUnits {
                time: Some(60),
                total_octets: Some(1000),
                input_octets: Some(400),
                output_octets: Some(600),
                service_specific_units: Some(5),
                money: Some(Money {
                    value_digits: 1234,
                    exponent: -2,
                    currency_code: Some(978),
                }),
            },
            30,
            &mut q,
        )
        .unwrap();
        assert_eq!(
            q,
            vec![
                (Unit::SECONDS, Decimal::from(60)),
                (Unit::OCTETS, Decimal::from(1000)),
                (Unit::TOKENS_OUT, Decimal::from(5)),
                (Unit::EUR, Decimal::new(1234, 2)),
            ]
        );
        let mut q = Vec::new();
        u.quantities(
            &ServiceUnits {
                input_octets: Some(4),
                output_octets: Some(6),
                ..Default::default()
            },
            1,
            &mut q,
        )
        .unwrap();
        assert_eq!(q.len(), 2);
        let bad = ServiceUnits {
            money: Some(Money {
                value_digits: 1,
                exponent: 0,
                currency_code: Some(1),
            }),
            ..Default::default()
        };
        assert_eq!(
            u.quantities(&bad, 1, &mut Vec::new()),
            Err(result::INVALID_AVP_VALUE)
        );

        let g = u.granted(
            &[
                (Unit::SECONDS, Decimal::from(90)),
                (Unit::USD, Decimal::new(250, 2)),
            ],
            1,
        );
        assert_eq!(g.time, Some(90));
        assert_eq!(
            g.money,
            Some(Money {
                value_digits: 25,
                exponent: -1,
                currency_code: Some(840)
            })
        );
        assert_eq!(
            unit_value(Decimal::new(123_456_789_012_345_678, 9)),
            (123456789012345678, -9)
        );
        assert_eq!(unit_value(Decimal::from(20)), (20, 0));
    }
}
