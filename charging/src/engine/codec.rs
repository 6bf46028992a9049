//! Log and snapshot encoding of engine requests, answers, sessions and
//! configuration.

#[allow(unused_imports)]
use super::*;
use sessions::Charge;

pub(super) const REC_CCR: u8 = 1;
pub(super) const REC_LEDGER: u8 = 2;
pub(super) const REC_SUPERVISE: u8 = 3;
pub(super) const REC_CONFIG: u8 = 4;
pub(super) const REC_RATECARD: u8 = 5;
/// Set in a logged CCR's request-type byte when attributes follow its
/// services: records without attributes (and their digests) stay as they were.
const CCR_HAS_ATTRIBUTES: u8 = 0x80;

pub(super) fn encode_rate_file<S: Sink>(
    s: &mut S,
    at: Timestamp,
    op: u128,
    name: &str,
    text: &str,
) {
    s.time(at);
    s.u128(op);
    s.bytes16(name.as_bytes());
    s.u32(text.len() as u32);
    s.put(text.as_bytes());
}

pub(super) fn decode_rate_file(
    r: &mut Reader<'_>,
) -> Result<(Timestamp, u128, Arc<str>, Arc<str>), DecodeError> {
    let at = r.time()?;
    let op = r.u128()?;
    let name = std::str::from_utf8(r.bytes16(RATE_CARD_NAME_MAX)?)
        .map_err(|_| DecodeError::Invalid("rate card name"))?;
    let len = r.u32()? as usize;
    if len > RATE_CARD_TEXT_MAX {
        return Err(DecodeError::Invalid("rate card too long"));
    }
    let text =
        std::str::from_utf8(r.take(len)?).map_err(|_| DecodeError::Invalid("rate card text"))?;
    Ok((at, op, Arc::from(name), Arc::from(text)))
}

pub(super) fn encode_config<S: Sink>(s: &mut S, c: &EngineConfig) {
    s.u16(c.prices.len() as u16);
    for p in &c.prices {
        s.bool(p.service.is_some());
        s.u32(p.service.map_or(0, |v| v.0));
        s.unit(p.unit);
        s.unit(p.charge_unit);
        encode_decimal(s, p.per_unit);
    }
    s.u16(c.policies.len() as u16);
    for p in &c.policies {
        s.bool(p.service.is_some());
        s.u32(p.service.map_or(0, |v| v.0));
        s.unit(p.default_unit);
        encode_decimal(s, p.default_grant);
        encode_decimal(s, p.max_grant);
        s.u32(p.validity_s);
    }
    s.u32(c.supervision_grace_s);
    s.u8(c.final_unit_action as u8);
    s.u64(c.answer_window_ms);
    s.u16(c.service_attributes.len() as u16);
    for (service, attributes) in &c.service_attributes {
        s.service(*service);
        s.u8(attributes.len() as u8);
        for (k, v) in attributes {
            s.bytes16(k.as_bytes());
            s.bytes16(v.as_bytes());
        }
    }
    s.u16(c.units.len() as u16);
    for u in &c.units {
        s.unit(*u);
    }
    s.u64(c.answers_max);
}

pub(super) fn decode_config(r: &mut Reader<'_>) -> Result<EngineConfig, DecodeError> {
    let n = r.u16()? as usize;
    if n > CONFIG_ENTRIES_MAX {
        return Err(DecodeError::Invalid("too many prices"));
    }
    let mut prices = Vec::with_capacity(n);
    for _ in 0..n {
        let has = r.bool()?;
        let service = r.service()?;
        prices.push(Price {
            service: has.then_some(service),
            unit: r.unit()?,
            charge_unit: r.unit()?,
            per_unit: decode_decimal(r)?,
        });
    }
    let n = r.u16()? as usize;
    if n > CONFIG_ENTRIES_MAX {
        return Err(DecodeError::Invalid("too many policies"));
    }
    let mut policies = Vec::with_capacity(n);
    for _ in 0..n {
        let has = r.bool()?;
        let service = r.service()?;
        policies.push(ServicePolicy {
            service: has.then_some(service),
            default_unit: r.unit()?,
            default_grant: decode_decimal(r)?,
            max_grant: decode_decimal(r)?,
            validity_s: r.u32()?,
        });
    }
    let supervision_grace_s = r.u32()?;
    let final_unit_action = match r.u8()? {
        0 => FinalUnitAction::None,
        1 => FinalUnitAction::Terminate,
        2 => FinalUnitAction::Redirect,
        3 => FinalUnitAction::RestrictAccess,
        _ => return Err(DecodeError::Invalid("final unit action")),
    };
    let answer_window_ms = r.u64()?;
    let n = r.u16()? as usize;
    if n > CONFIG_ENTRIES_MAX {
        return Err(DecodeError::Invalid("too many service attributes"));
    }
    let mut service_attributes = Vec::with_capacity(n);
    for _ in 0..n {
        let service = r.service()?;
        let m = r.u8()? as usize;
        if m > ATTRIBUTES_MAX {
            return Err(DecodeError::Invalid("too many attributes"));
        }
        let mut attributes = Vec::with_capacity(m);
        for _ in 0..m {
            let k = std::str::from_utf8(r.bytes16(ATTRIBUTE_NAME_LEN_MAX)?)
                .map_err(|_| DecodeError::Invalid("attribute"))?
                .to_string();
            let v = std::str::from_utf8(r.bytes16(ATTRIBUTE_VALUE_LEN_MAX)?)
                .map_err(|_| DecodeError::Invalid("attribute"))?
                .to_string();
            attributes.push((k, v));
        }
        service_attributes.push((service, attributes));
    }
    let n = r.u16()? as usize;
    if n > CONFIG_ENTRIES_MAX {
        return Err(DecodeError::Invalid("too many units"));
    }
    let units = (0..n).map(|_| r.unit()).collect::<Result<_, _>>()?;
    let answers_max = r.u64()?;
    Ok(EngineConfig {
        prices,
        policies,
        supervision_grace_s,
        final_unit_action,
        answer_window_ms,
        service_attributes,
        units,
        answers_max,
    })
}

pub(super) fn encode_caller<S: Sink>(s: &mut S, caller: Caller) {
    match caller {
        Caller::Admin => {
            s.u8(0);
            s.u64(0);
        }
        Caller::Org(a) => {
            s.u8(1);
            s.account(a);
        }
    }
}

pub(super) fn decode_caller(r: &mut Reader<'_>) -> Result<Caller, DecodeError> {
    let kind = r.u8()?;
    let id = r.account()?;
    match kind {
        0 => Ok(Caller::Admin),
        1 => Ok(Caller::Org(id)),
        _ => Err(DecodeError::Invalid("caller")),
    }
}

pub(super) fn encode_decimal<S: Sink>(s: &mut S, d: Decimal) {
    s.i128(d.mantissa());
    s.u8(d.scale() as u8);
}

pub(super) fn decode_decimal(r: &mut Reader<'_>) -> Result<Decimal, DecodeError> {
    let m = i128::from_le_bytes(r.take(16)?.try_into().map_err(|_| DecodeError::Truncated)?);
    let scale = r.u8()? as u32;
    Decimal::try_from_i128_with_scale(m, scale).map_err(|_| DecodeError::Invalid("decimal"))
}

pub(super) fn encode_quantities<S: Sink>(s: &mut S, q: &[Quantity]) {
    s.u8(q.len() as u8);
    for (unit, amount) in q {
        s.unit(*unit);
        encode_decimal(s, *amount);
    }
}

pub(super) fn decode_quantities(r: &mut Reader<'_>) -> Result<Vec<Quantity>, DecodeError> {
    let n = r.u8()? as usize;
    if n > UNITS_PER_SERVICE_MAX {
        return Err(DecodeError::Invalid("too many units"));
    }
    (0..n)
        .map(|_| Ok((r.unit()?, decode_decimal(r)?)))
        .collect()
}

pub(super) fn encode_ccr<S: Sink>(s: &mut S, ccr: &CreditControlRequest) {
    encode_ccr_with(s, ccr, true)
}

/// Encodes a CCR, leaving out its timestamp when `timestamp` is false (the
/// request digest: a client resending a request may stamp it anew).
pub(super) fn encode_ccr_with<S: Sink>(s: &mut S, ccr: &CreditControlRequest, timestamp: bool) {
    s.bytes16(ccr.session_id.as_bytes());
    let flag = if ccr.attributes.is_empty() {
        0
    } else {
        CCR_HAS_ATTRIBUTES
    };
    s.u8(ccr.request_type as u8 | flag);
    s.u32(ccr.request_number);
    s.account(ccr.account);
    s.u8(ccr.event_action as u8);
    if timestamp {
        s.u64(ccr.timestamp_ms);
    }
    s.u8(ccr.services.len() as u8);
    for service in &ccr.services {
        s.service(service.service);
        encode_quantities(s, &service.requested);
        encode_quantities(s, &service.used);
        s.bool(service.report_only);
    }
    // In the digest too: attributes choose the price, so a retransmission
    // with other attributes is another request (REQUEST_ID_REUSED).
    if !ccr.attributes.is_empty() {
        s.u8(ccr.attributes.len() as u8);
        for (k, v) in &ccr.attributes {
            s.bytes16(k.as_bytes());
            s.bytes16(v.as_bytes());
        }
    }
}

pub(super) fn decode_ccr(r: &mut Reader<'_>) -> Result<CreditControlRequest, DecodeError> {
    let session_id = std::str::from_utf8(r.bytes16(SESSION_ID_LEN_MAX)?)
        .map_err(|_| DecodeError::Invalid("session id"))?;
    let type_byte = r.u8()?;
    let request_type = match type_byte & !CCR_HAS_ATTRIBUTES {
        1 => RequestType::Initial,
        2 => RequestType::Update,
        3 => RequestType::Terminate,
        4 => RequestType::Event,
        _ => return Err(DecodeError::Invalid("request type")),
    };
    let request_number = r.u32()?;
    let account = r.account()?;
    let event_action = match r.u8()? {
        0 => EventAction::None,
        1 => EventAction::DirectDebit,
        2 => EventAction::Refund,
        3 => EventAction::CheckBalance,
        4 => EventAction::PriceEnquiry,
        _ => return Err(DecodeError::Invalid("event action")),
    };
    let timestamp_ms = r.u64()?;
    let n = r.u8()? as usize;
    if n > SERVICES_MAX {
        return Err(DecodeError::Invalid("too many services"));
    }
    let services = (0..n)
        .map(|_| {
            Ok(ServiceRequest {
                service: r.service()?,
                requested: decode_quantities(r)?,
                used: decode_quantities(r)?,
                report_only: r.bool()?,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    let mut attributes = Vec::new();
    if type_byte & CCR_HAS_ATTRIBUTES != 0 {
        let n = r.u8()? as usize;
        if n == 0 || n > REQUEST_ATTRIBUTES_MAX {
            return Err(DecodeError::Invalid("attribute count"));
        }
        attributes.reserve_exact(n);
        for _ in 0..n {
            let k = std::str::from_utf8(r.bytes16(REQUEST_ATTRIBUTE_KEY_MAX)?)
                .map_err(|_| DecodeError::Invalid("attribute"))?;
            let v = std::str::from_utf8(r.bytes16(REQUEST_ATTRIBUTE_VALUE_MAX)?)
                .map_err(|_| DecodeError::Invalid("attribute"))?;
            attributes.push((k.to_string(), v.to_string()));
        }
    }
    Ok(CreditControlRequest {
        session_id: Arc::from(session_id),
        request_type,
        request_number,
        account,
        event_action,
        timestamp_ms,
        services,
        attributes,
    })
}

/// Top bit of a stored service answer's final-unit byte: a denial follows.
const DENIAL_FOLLOWS: u8 = 0x80;

pub(super) fn encode_answer<S: Sink>(s: &mut S, a: &CreditControlAnswer) {
    s.u32(a.result_code);
    s.u8(a.services.len() as u8);
    for service in &a.services {
        s.service(service.service);
        s.u32(service.result_code);
        encode_quantities(s, &service.granted);
        s.u32(service.validity_time_s);
        // The final-unit byte's top bit says a denial follows: answers
        // stored before denials existed read the same.
        match service.denial {
            None => s.u8(service.final_unit_action as u8),
            Some(d) => {
                s.u8(service.final_unit_action as u8 | DENIAL_FOLLOWS);
                match d {
                    Denial::NoCredit => s.u8(1),
                    Denial::SpendControl { account, period } => {
                        s.u8(2);
                        s.account(account);
                        s.u8(period);
                    }
                }
            }
        }
    }
    encode_quantities(s, &a.balance);
    encode_quantities(s, &a.price);
}

pub(super) fn decode_answer(r: &mut Reader<'_>) -> Result<CreditControlAnswer, DecodeError> {
    let result_code = r.u32()?;
    let n = r.u8()? as usize;
    if n > SERVICES_MAX {
        return Err(DecodeError::Invalid("too many services"));
    }
    let services = (0..n)
        .map(|_| {
            let service = r.service()?;
            let result_code = r.u32()?;
            let granted = decode_quantities(r)?;
            let validity_time_s = r.u32()?;
            let byte = r.u8()?;
            let final_unit_action = match byte & !DENIAL_FOLLOWS {
                0 => FinalUnitAction::None,
                1 => FinalUnitAction::Terminate,
                2 => FinalUnitAction::Redirect,
                3 => FinalUnitAction::RestrictAccess,
                _ => return Err(DecodeError::Invalid("final unit action")),
            };
            let denial = if byte & DENIAL_FOLLOWS != 0 {
                Some(match r.u8()? {
                    1 => Denial::NoCredit,
                    2 => Denial::SpendControl {
                        account: r.account()?,
                        period: r.u8()?,
                    },
                    _ => return Err(DecodeError::Invalid("denial")),
                })
            } else {
                None
            };
            Ok(ServiceAnswer {
                service,
                result_code,
                granted,
                validity_time_s,
                final_unit_action,
                denial,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(CreditControlAnswer {
        result_code,
        services,
        balance: decode_quantities(r)?,
        price: decode_quantities(r)?,
    })
}

pub(super) fn encode_session<S: Sink>(s: &mut S, v: &Session) {
    s.account(v.account);
    s.u32(v.last_number);
    s.time(v.expires_at);
    s.u16(v.grants.len() as u16);
    for g in &v.grants {
        s.service(g.service);
        s.unit(g.unit);
        s.u64(g.reservation.map_or(0, |r| r.0));
        s.time(g.granted_at);
    }
    encode_charges(s, &v.charges);
}

/// Most (service, unit) grants or charges one session can hold.
pub(super) const SESSION_LINES_MAX: usize = SERVICES_MAX * UNITS_PER_SERVICE_MAX * 2;

pub(super) fn encode_charges<S: Sink>(s: &mut S, charges: &[Charge]) {
    s.u16(charges.len() as u16);
    for c in charges {
        s.service(c.service);
        s.unit(c.unit);
        s.unit(c.charge_unit);
        s.account(c.account);
        encode_decimal(s, c.units);
        s.amount(c.amount);
    }
}

pub(super) fn decode_charges(r: &mut Reader<'_>) -> Result<Vec<Charge>, DecodeError> {
    let n = r.u16()? as usize;
    if n > SESSION_LINES_MAX {
        return Err(DecodeError::Invalid("too many charges"));
    }
    (0..n)
        .map(|_| {
            Ok(Charge {
                service: r.service()?,
                unit: r.unit()?,
                charge_unit: r.unit()?,
                account: r.account()?,
                units: decode_decimal(r)?,
                amount: r.amount()?,
            })
        })
        .collect()
}

pub(super) fn decode_session(r: &mut Reader<'_>) -> Result<Session, DecodeError> {
    let account = r.account()?;
    let last_number = r.u32()?;
    let expires_at = r.time()?;
    let n = r.u16()? as usize;
    if n > SESSION_LINES_MAX {
        return Err(DecodeError::Invalid("too many grants"));
    }
    let grants = (0..n)
        .map(|_| {
            let service = r.service()?;
            let unit = r.unit()?;
            let id = r.u64()?;
            let granted_at = r.time()?;
            Ok(Grant {
                service,
                unit,
                reservation: (id != 0).then_some(ReservationId(id)),
                granted_at,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(Session {
        account,
        last_number,
        grants,
        expires_at,
        charges: decode_charges(r)?,
        mark: 0,
        born: 0,
    })
}

/// Encodes an engine request as a log payload (without its timestamp).
pub(super) fn encode_request(request: &EngineRequest, out: &mut Vec<u8>) -> bool {
    match request {
        EngineRequest::CreditControl(caller, ccr) => {
            out.u8(ENGINE_TAG);
            out.u8(REC_CCR);
            encode_caller(out, *caller);
            encode_ccr(out, ccr);
            true
        }
        EngineRequest::Ledger(caller, LedgerRequest::Apply(op)) => {
            out.u8(ENGINE_TAG);
            out.u8(REC_LEDGER);
            encode_caller(out, *caller);
            op.encode(out);
            true
        }
        // Reads change nothing and are not logged.
        EngineRequest::Ledger(_, _) => false,
        EngineRequest::Supervise => {
            out.u8(ENGINE_TAG);
            out.u8(REC_SUPERVISE);
            true
        }
        EngineRequest::Configure(config) => {
            out.u8(ENGINE_TAG);
            out.u8(REC_CONFIG);
            encode_config(out, config);
            true
        }
        EngineRequest::ApplyRateCard {
            caller,
            op,
            name,
            text,
        } => {
            out.u8(ENGINE_TAG);
            out.u8(REC_RATECARD);
            encode_caller(out, *caller);
            // The time is the record's own; encode_rate_file's slot is unused here.
            encode_rate_file(out, Timestamp(0), *op, name, text);
            true
        }
        EngineRequest::ShowRateCards(_)
        | EngineRequest::Gauges { .. }
        | EngineRequest::Alerts { .. } => false,
    }
}
