//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::str::FromStr;

use reckon_rating::{parse_toml, RateCard, Unit};
use rust_decimal::Decimal;

/// Exact decimal from text.
pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test decimal")
}

/// A unit from a name.
pub fn u(s: &str) -> Unit {
    Unit::new(s).expect("test unit")
}

/// Milliseconds since the epoch of a UTC date-time.
pub fn ms(y: i64, m: u32, day: u32, h: u64, mi: u64) -> u64 {
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mm = m as i64;
    let doy = (153 * (if mm > 2 { mm - 3 } else { mm + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days as u64 * 86_400_000 + h * 3_600_000 + mi * 60_000
}

/// Loads a TOML card or panics with the load errors.
pub fn card(text: &str) -> RateCard {
    match parse_toml("test.toml", text) {
        Ok(c) => c,
        Err(e) => panic!("card did not load:\n{e}"),
    }
}

/// A one-version USD card (effective 2025-01-01) with the given rules
/// for service 1; `extra` goes into the version table (before services).
pub fn simple(extra: &str, rules: &str) -> RateCard {
    card(&format!(
        r#"
card = "t"
[[versions]]
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "USD"
{extra}
[[versions.services]]
id = 1
name = "svc"
{rules}
"#
    ))
}

/// 2025-01-15 12:00 UTC (a Wednesday).
pub const T0: u64 = 1_736_942_400_000;
