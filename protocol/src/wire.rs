//! Field-level reading (nom) and writing (bytes) shared by every message.
//!
//! Readers take a [`Cx`] carrying the frame's request id so that every
//! error is built complete, and a field name for the error. Every length
//! and count is checked against its maximum before anything is taken or
//! allocated, and list capacities are further bounded by the bytes left.

use crate::error::ProtocolError;
use crate::limits::{
    ALERT_PCT_MAX, ALERT_THRESHOLDS_MAX, ATTRIBUTES_MAX, ATTRIBUTE_KEY_MAX, ATTRIBUTE_VALUE_MAX,
    DECIMAL_MANTISSA_MAX, DECIMAL_SCALE_MAX,
};
use crate::types::{Denial, LimitPeriod, Unit, UnitAmount};
use bytes::{BufMut, BytesMut};
use nom::bytes::complete::take;
use nom::number::complete as num;
use nom::IResult;
use rust_decimal::Decimal;

/// A nom result whose error is a complete [`ProtocolError`].
pub(crate) type PResult<'a, T> = IResult<&'a [u8], T, ProtocolError>;

/// Fails a parser with this error.
pub(crate) fn fail<T>(e: ProtocolError) -> Result<T, nom::Err<ProtocolError>> {
    Err(nom::Err::Failure(e))
}

/// Turns a nom error from a complete parser into the error it carries.
pub(crate) fn into_error(e: nom::Err<ProtocolError>, request_id: u64) -> ProtocolError {
    match e {
        nom::Err::Error(e) | nom::Err::Failure(e) => e,
        // Complete parsers never report Incomplete; treat it as truncation.
        nom::Err::Incomplete(_) => ProtocolError::Truncated {
            request_id,
            field: "body",
        },
    }
}

/// A capacity for `count` items that each take at least `min_wire` bytes,
/// never more than the bytes left can hold.
pub(crate) fn bounded_capacity(count: usize, remaining: usize, min_wire: usize) -> usize {
    count.min(remaining / min_wire.max(1))
}

/// Decoding context: the request id of the frame being decoded.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Cx {
    /// The frame's request id, put into every error.
    pub(crate) rid: u64,
    /// The connection's protocol version: which fields a body has.
    pub(crate) version: u16,
}

macro_rules! int_reader {
    ($name:ident, $ty:ty, $nom:path) => {
        /// Reads one little-endian integer.
        pub(crate) fn $name<'a>(self, i: &'a [u8], field: &'static str) -> PResult<'a, $ty> {
            $nom(i).map_err(|_: nom::Err<()>| self.truncated(field))
        }
    };
}

impl Cx {
    /// The error for a field cut short.
    pub(crate) fn truncated(self, field: &'static str) -> nom::Err<ProtocolError> {
        nom::Err::Failure(ProtocolError::Truncated {
            request_id: self.rid,
            field,
        })
    }

    int_reader!(u8, u8, num::le_u8);
    int_reader!(u16, u16, num::le_u16);
    int_reader!(u32, u32, num::le_u32);
    int_reader!(u64, u64, num::le_u64);
    int_reader!(u128, u128, num::le_u128);
    int_reader!(i16, i16, num::le_i16);
    int_reader!(i128, i128, num::le_i128);

    /// Takes `n` raw bytes.
    pub(crate) fn bytes<'a>(
        self,
        i: &'a [u8],
        n: usize,
        field: &'static str,
    ) -> PResult<'a, &'a [u8]> {
        take(n)(i).map_err(|_: nom::Err<()>| self.truncated(field))
    }

    /// Reads a boolean byte (0 or 1).
    pub(crate) fn bool<'a>(self, i: &'a [u8], field: &'static str) -> PResult<'a, bool> {
        let (i, v) = self.u8(i, field)?;
        match v {
            0 => Ok((i, false)),
            1 => Ok((i, true)),
            value => fail(ProtocolError::InvalidBool {
                request_id: self.rid,
                field,
                value,
            }),
        }
    }

    /// Reads an enumeration byte through `from_code`.
    pub(crate) fn enumeration<'a, T>(
        self,
        i: &'a [u8],
        field: &'static str,
        from_code: fn(u8) -> Option<T>,
    ) -> PResult<'a, T> {
        let (i, v) = self.u8(i, field)?;
        match from_code(v) {
            Some(t) => Ok((i, t)),
            None => fail(ProtocolError::InvalidEnum {
                request_id: self.rid,
                field,
                value: v,
            }),
        }
    }

    /// Reads an optional enumeration byte where 0 means absent.
    pub(crate) fn opt_enumeration<'a, T>(
        self,
        i: &'a [u8],
        field: &'static str,
        from_code: fn(u8) -> Option<T>,
    ) -> PResult<'a, Option<T>> {
        let (i, v) = self.u8(i, field)?;
        if v == 0 {
            return Ok((i, None));
        }
        match from_code(v) {
            Some(t) => Ok((i, Some(t))),
            None => fail(ProtocolError::InvalidEnum {
                request_id: self.rid,
                field,
                value: v,
            }),
        }
    }

    /// Reads a string: u16 length (checked against `max` first), UTF-8 bytes.
    pub(crate) fn string<'a>(
        self,
        i: &'a [u8],
        field: &'static str,
        max: usize,
    ) -> PResult<'a, String> {
        let (i, len) = self.u16(i, field)?;
        let len = len as usize;
        if len > max {
            return fail(ProtocolError::StringTooLong {
                request_id: self.rid,
                field,
                len,
                max,
            });
        }
        let (i, raw) = self.bytes(i, len, field)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok((i, s.to_owned())),
            Err(_) => fail(ProtocolError::InvalidUtf8 {
                request_id: self.rid,
                field,
            }),
        }
    }

    /// Reads a unit: a string of 1 to 16 ASCII letters, digits or `_`.
    pub(crate) fn unit<'a>(self, i: &'a [u8], field: &'static str) -> PResult<'a, Unit> {
        let (i, len) = self.u16(i, field)?;
        let (i, raw) = self.bytes(i, len as usize, field)?;
        match Unit::from_bytes(raw) {
            Some(u) => Ok((i, u)),
            None => fail(ProtocolError::InvalidUnit {
                request_id: self.rid,
                field,
            }),
        }
    }

    /// Reads a decimal: i128 mantissa, u8 scale.
    pub(crate) fn decimal<'a>(self, i: &'a [u8], field: &'static str) -> PResult<'a, Decimal> {
        let (i, mantissa) = self.i128(i, field)?;
        let (i, scale) = self.u8(i, field)?;
        if scale > DECIMAL_SCALE_MAX {
            return fail(ProtocolError::DecimalScale {
                request_id: self.rid,
                field,
                scale,
            });
        }
        if mantissa.unsigned_abs() > DECIMAL_MANTISSA_MAX {
            return fail(ProtocolError::DecimalOutOfRange {
                request_id: self.rid,
                field,
            });
        }
        match Decimal::try_from_i128_with_scale(mantissa, scale as u32) {
            Ok(d) => Ok((i, d)),
            Err(_) => fail(ProtocolError::DecimalOutOfRange {
                request_id: self.rid,
                field,
            }),
        }
    }

    /// Checks a count against its maximum.
    fn check_count(
        self,
        field: &'static str,
        count: usize,
        max: usize,
    ) -> Result<usize, nom::Err<ProtocolError>> {
        if count > max {
            return fail(ProtocolError::CountTooLarge {
                request_id: self.rid,
                field,
                count,
                max,
            });
        }
        Ok(count)
    }

    /// Reads a u8 count and checks it against `max`.
    pub(crate) fn count_u8<'a>(
        self,
        i: &'a [u8],
        field: &'static str,
        max: usize,
    ) -> PResult<'a, usize> {
        let (i, n) = self.u8(i, field)?;
        Ok((i, self.check_count(field, n as usize, max)?))
    }

    /// Reads a u16 count and checks it against `max`.
    pub(crate) fn count_u16<'a>(
        self,
        i: &'a [u8],
        field: &'static str,
        max: usize,
    ) -> PResult<'a, usize> {
        let (i, n) = self.u16(i, field)?;
        Ok((i, self.check_count(field, n as usize, max)?))
    }

    /// Reads a u8-counted list of (unit, decimal) pairs.
    pub(crate) fn unit_amounts<'a>(
        self,
        i: &'a [u8],
        field: &'static str,
        max: usize,
    ) -> PResult<'a, Vec<UnitAmount>> {
        let (mut i, n) = self.count_u8(i, field, max)?;
        // Smallest pair: 2 + 1 (unit) + 17 (decimal).
        let mut out = Vec::with_capacity(bounded_capacity(n, i.len(), 20));
        for _ in 0..n {
            let (r, unit) = self.unit(i, field)?;
            let (r, amount) = self.decimal(r, field)?;
            out.push(UnitAmount { unit, amount });
            i = r;
        }
        Ok((i, out))
    }

    /// Reads a u8-counted list of (key, value) attributes: keys 1 to
    /// [`ATTRIBUTE_KEY_MAX`] bytes and distinct, values at most
    /// [`ATTRIBUTE_VALUE_MAX`] bytes.
    pub(crate) fn attributes<'a>(self, i: &'a [u8]) -> PResult<'a, Vec<(String, String)>> {
        let (mut i, n) = self.count_u8(i, "attributes", ATTRIBUTES_MAX)?;
        // Smallest attribute: 2 + 1 (key) + 2 (value).
        let mut out: Vec<(String, String)> = Vec::with_capacity(bounded_capacity(n, i.len(), 5));
        for _ in 0..n {
            let (r, key) = self.string(i, "attribute key", ATTRIBUTE_KEY_MAX)?;
            let (r, value) = self.string(r, "attribute value", ATTRIBUTE_VALUE_MAX)?;
            if let Err(e) = check_attribute_key(&key, &out) {
                return fail(e.with_request_id(self.rid));
            }
            out.push((key, value));
            i = r;
        }
        Ok((i, out))
    }

    /// Reads a u8-counted list of u32 service ids.
    pub(crate) fn service_ids<'a>(
        self,
        i: &'a [u8],
        field: &'static str,
        max: usize,
    ) -> PResult<'a, Vec<u32>> {
        let (mut i, n) = self.count_u8(i, field, max)?;
        let mut out = Vec::with_capacity(bounded_capacity(n, i.len(), 4));
        for _ in 0..n {
            let (r, s) = self.u32(i, field)?;
            out.push(s);
            i = r;
        }
        Ok((i, out))
    }

    /// Reads `flag u8 | value u64`: `None` when the flag is 0 (the value must then be 0).
    pub(crate) fn opt_u64<'a>(
        self,
        i: &'a [u8],
        flag: &'static str,
        field: &'static str,
    ) -> PResult<'a, Option<u64>> {
        let (i, present) = self.bool(i, flag)?;
        let (i, v) = self.u64(i, field)?;
        match (present, v) {
            (true, v) => Ok((i, Some(v))),
            (false, 0) => Ok((i, None)),
            (false, _) => fail(ProtocolError::NonCanonical {
                request_id: self.rid,
                field,
            }),
        }
    }

    /// Reads `flag u8 | decimal`: `None` when the flag is 0 (the decimal must then be all zero).
    pub(crate) fn opt_decimal<'a>(
        self,
        i: &'a [u8],
        flag: &'static str,
        field: &'static str,
    ) -> PResult<'a, Option<Decimal>> {
        let (i, present) = self.bool(i, flag)?;
        if present {
            let (i, d) = self.decimal(i, field)?;
            return Ok((i, Some(d)));
        }
        let (i, raw) = self.bytes(i, 17, field)?;
        if raw.iter().any(|&b| b != 0) {
            return fail(ProtocolError::NonCanonical {
                request_id: self.rid,
                field,
            });
        }
        Ok((i, None))
    }

    /// Reads a spend-control period (version 3): `u8 kind`, then for
    /// kinds 1 ..= 12 `u64 anchor_ms | i16 offset_min`, for kind 13
    /// `u64 anchor_ms | u64 length_ms`, for kind 0 nothing; refuses a
    /// kind above 13 and values out of range.
    pub(crate) fn limit_period<'a>(self, i: &'a [u8]) -> PResult<'a, LimitPeriod> {
        let (i, kind) = self.u8(i, "period kind")?;
        let (i, period) = match kind {
            LimitPeriod::KIND_LIFETIME => (i, LimitPeriod::Lifetime),
            LimitPeriod::KIND_FIXED => {
                let (i, anchor_ms) = self.u64(i, "anchor_ms")?;
                let (i, length_ms) = self.u64(i, "length_ms")?;
                (
                    i,
                    LimitPeriod::Fixed {
                        anchor_ms,
                        length_ms,
                    },
                )
            }
            months if LimitPeriod::is_kind(months) => {
                let (i, anchor_ms) = self.u64(i, "anchor_ms")?;
                let (i, offset_min) = self.i16(i, "offset_min")?;
                (
                    i,
                    LimitPeriod::Months {
                        months,
                        anchor_ms,
                        offset_min,
                    },
                )
            }
            value => {
                return fail(ProtocolError::InvalidEnum {
                    request_id: self.rid,
                    field: "period kind",
                    value,
                })
            }
        };
        match period.check() {
            Ok(()) => Ok((i, period)),
            Err(reason) => fail(ProtocolError::InvalidValue {
                request_id: self.rid,
                field: "period",
                reason,
            }),
        }
    }

    /// Reads a spend control's alert thresholds (version 3): `u8` count
    /// (at most 8), then that many `u8` percents, 1 ..= 250 and strictly
    /// increasing.
    pub(crate) fn thresholds<'a>(self, i: &'a [u8]) -> PResult<'a, Vec<u8>> {
        let (i, n) = self.count_u8(i, "alerts", ALERT_THRESHOLDS_MAX)?;
        let (i, raw) = self.bytes(i, n, "alerts")?;
        match check_thresholds(raw) {
            Ok(()) => Ok((i, raw.to_vec())),
            Err(reason) => fail(ProtocolError::InvalidValue {
                request_id: self.rid,
                field: "alerts",
                reason,
            }),
        }
    }

    /// Reads a CCA service's denial (version 3): `u8 reason | u64
    /// control_account | u8 control_period`, the last two zero unless the
    /// reason is 2 (`SPEND_CONTROL`).
    pub(crate) fn denial<'a>(self, i: &'a [u8]) -> PResult<'a, Option<Denial>> {
        let (i, reason) = self.u8(i, "denial reason")?;
        if reason > 2 {
            return fail(ProtocolError::InvalidEnum {
                request_id: self.rid,
                field: "denial reason",
                value: reason,
            });
        }
        let (i, account) = self.u64(i, "control_account")?;
        let (i, period_kind) = self.u8(i, "control_period")?;
        if reason == 2 {
            if !LimitPeriod::is_kind(period_kind) {
                return fail(ProtocolError::InvalidEnum {
                    request_id: self.rid,
                    field: "control_period",
                    value: period_kind,
                });
            }
            return Ok((
                i,
                Some(Denial::SpendControl {
                    account,
                    period_kind,
                }),
            ));
        }
        if account != 0 || period_kind != 0 {
            return fail(ProtocolError::NonCanonical {
                request_id: self.rid,
                field: if account != 0 {
                    "control_account"
                } else {
                    "control_period"
                },
            });
        }
        Ok((i, (reason == 1).then_some(Denial::NoCredit)))
    }
}

/// Writes a string with its u16 length, refusing one longer than `max`.
pub(crate) fn put_string(
    dst: &mut BytesMut,
    s: &str,
    field: &'static str,
    max: usize,
) -> Result<(), ProtocolError> {
    if s.len() > max {
        return Err(ProtocolError::StringTooLong {
            request_id: 0,
            field,
            len: s.len(),
            max,
        });
    }
    dst.put_u16_le(s.len() as u16);
    dst.put_slice(s.as_bytes());
    Ok(())
}

/// Refuses an empty attribute key or one already in `before`.
pub(crate) fn check_attribute_key(
    key: &str,
    before: &[(String, String)],
) -> Result<(), ProtocolError> {
    let reason = if key.is_empty() {
        "key must not be empty"
    } else if before.iter().any(|(k, _)| k == key) {
        "key appears twice"
    } else {
        return Ok(());
    };
    Err(ProtocolError::InvalidValue {
        request_id: 0,
        field: "attributes",
        reason,
    })
}

/// Writes a u8-counted attribute list, refusing what a decoder would refuse.
pub(crate) fn put_attributes(
    dst: &mut BytesMut,
    list: &[(String, String)],
) -> Result<(), ProtocolError> {
    check_count("attributes", list.len(), ATTRIBUTES_MAX)?;
    dst.put_u8(list.len() as u8);
    for (n, (key, value)) in list.iter().enumerate() {
        check_attribute_key(key, &list[..n])?;
        put_string(dst, key, "attribute key", ATTRIBUTE_KEY_MAX)?;
        put_string(dst, value, "attribute value", ATTRIBUTE_VALUE_MAX)?;
    }
    Ok(())
}

/// Writes a unit as a string.
pub(crate) fn put_unit(dst: &mut BytesMut, unit: &Unit) {
    dst.put_u16_le(unit.as_bytes().len() as u16);
    dst.put_slice(unit.as_bytes());
}

/// Writes a decimal: i128 mantissa, u8 scale.
pub(crate) fn put_decimal(dst: &mut BytesMut, d: &Decimal) {
    dst.put_i128_le(d.mantissa());
    dst.put_u8(d.scale() as u8);
}

/// Checks a list length against its maximum before it is written.
pub(crate) fn check_count(
    field: &'static str,
    count: usize,
    max: usize,
) -> Result<(), ProtocolError> {
    if count > max {
        return Err(ProtocolError::CountTooLarge {
            request_id: 0,
            field,
            count,
            max,
        });
    }
    Ok(())
}

/// Writes a u8-counted list of (unit, decimal) pairs.
pub(crate) fn put_unit_amounts(
    dst: &mut BytesMut,
    list: &[UnitAmount],
    field: &'static str,
    max: usize,
) -> Result<(), ProtocolError> {
    check_count(field, list.len(), max)?;
    dst.put_u8(list.len() as u8);
    for ua in list {
        put_unit(dst, &ua.unit);
        put_decimal(dst, &ua.amount);
    }
    Ok(())
}

/// Writes a u8-counted list of u32 service ids.
pub(crate) fn put_service_ids(
    dst: &mut BytesMut,
    list: &[u32],
    field: &'static str,
    max: usize,
) -> Result<(), ProtocolError> {
    check_count(field, list.len(), max)?;
    dst.put_u8(list.len() as u8);
    for s in list {
        dst.put_u32_le(*s);
    }
    Ok(())
}

/// Writes `flag u8 | value u64` (value 0 when absent).
pub(crate) fn put_opt_u64(dst: &mut BytesMut, v: Option<u64>) {
    dst.put_u8(v.is_some() as u8);
    dst.put_u64_le(v.unwrap_or(0));
}

/// Writes `flag u8 | decimal` (all zero when absent).
pub(crate) fn put_opt_decimal(dst: &mut BytesMut, v: Option<&Decimal>) {
    dst.put_u8(v.is_some() as u8);
    match v {
        Some(d) => put_decimal(dst, d),
        None => dst.put_bytes(0, 17),
    }
}

/// Writes a spend-control period, refusing one a decoder would refuse.
pub(crate) fn put_limit_period(dst: &mut BytesMut, p: &LimitPeriod) -> Result<(), ProtocolError> {
    if let Err(reason) = p.check() {
        return Err(ProtocolError::InvalidValue {
            request_id: 0,
            field: "period",
            reason,
        });
    }
    dst.put_u8(p.kind());
    match *p {
        LimitPeriod::Lifetime => {}
        LimitPeriod::Months {
            anchor_ms,
            offset_min,
            ..
        } => {
            dst.put_u64_le(anchor_ms);
            dst.put_i16_le(offset_min);
        }
        LimitPeriod::Fixed {
            anchor_ms,
            length_ms,
        } => {
            dst.put_u64_le(anchor_ms);
            dst.put_u64_le(length_ms);
        }
    }
    Ok(())
}

/// Why alert thresholds are out of range, if they are: each 1 ..= 250,
/// strictly increasing, at most 8.
pub(crate) fn check_thresholds(alerts: &[u8]) -> Result<(), &'static str> {
    if alerts.len() > ALERT_THRESHOLDS_MAX {
        Err("at most 8 thresholds")
    } else if alerts.iter().any(|p| !(1..=ALERT_PCT_MAX).contains(p)) {
        Err("each threshold must be 1 ..= 250 percent")
    } else if alerts.windows(2).any(|w| w[0] >= w[1]) {
        Err("thresholds must be strictly increasing")
    } else {
        Ok(())
    }
}

/// Writes alert thresholds with their u8 count, refusing what a decoder would refuse.
pub(crate) fn put_thresholds(dst: &mut BytesMut, alerts: &[u8]) -> Result<(), ProtocolError> {
    check_count("alerts", alerts.len(), ALERT_THRESHOLDS_MAX)?;
    if let Err(reason) = check_thresholds(alerts) {
        return Err(ProtocolError::InvalidValue {
            request_id: 0,
            field: "alerts",
            reason,
        });
    }
    dst.put_u8(alerts.len() as u8);
    dst.put_slice(alerts);
    Ok(())
}

/// Writes a CCA service's denial (all zero when there is none), refusing
/// a period kind a decoder would refuse.
pub(crate) fn put_denial(dst: &mut BytesMut, d: Option<&Denial>) -> Result<(), ProtocolError> {
    let (account, period_kind) = match d {
        Some(&Denial::SpendControl {
            account,
            period_kind,
        }) => (account, period_kind),
        None | Some(Denial::NoCredit) => (0, 0),
    };
    if !LimitPeriod::is_kind(period_kind) {
        return Err(ProtocolError::InvalidValue {
            request_id: 0,
            field: "control_period",
            reason: "must be a period kind, 0 ..= 13",
        });
    }
    dst.put_u8(d.map_or(0, Denial::reason));
    dst.put_u64_le(account);
    dst.put_u8(period_kind);
    Ok(())
}
