//! Usage spanning a tariff change (new version or time band) is split and
//! each side priced by its own rule.

mod common;

use common::{card, d, ms, u};
use reckon_rating::{RateCard, RatingError, Usage};

/// Version 1 from 2025-01-01: 0.02/s by day (08:00–20:00 UTC every day),
/// 0.01/s otherwise, billed per started 60 s, minimum 0.50 per call.
/// Version 2 from 2025-02-01 12:00 UTC: 0.03/s flat, no bands, per second.
fn telco() -> RateCard {
    card(
        r#"
card = "voice"
[[versions]]
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "EUR"
decimals = 4

[[versions.time_bands]]
name = "day"
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
from = "08:00"
to = "20:00"

[[versions.services]]
id = 1
name = "voice"

[[versions.services.rules]]
unit = "seconds"
increment = 60
minimum = "0.50"
price = { model = "per_unit", price = "0.01" }

[[versions.services.rules]]
unit = "seconds"
when = { time_band = "day" }
increment = 60
minimum = "0.50"
price = { model = "per_unit", price = "0.02" }

[[versions]]
version = 2
effective_from = 2025-02-01T12:00:00Z
currency = "EUR"
decimals = 4

[[versions.services]]
id = 1
name = "voice"

[[versions.services.rules]]
unit = "seconds"
price = { model = "per_unit", price = "0.03" }
"#,
    )
}

fn call(start: u64, secs: u64) -> Usage<'static> {
    Usage::new(1, u("seconds"), d(&secs.to_string()), start).spanning(secs * 1000)
}

#[test]
fn split_at_a_time_band_boundary() {
    let c = telco();
    // 19:55 → 20:05: 300 s at day rate (0.02) and 300 s at night rate (0.01).
    let r = c.rate(&call(ms(2025, 1, 10, 19, 55), 600)).unwrap();
    assert_eq!(r.lines.len(), 2);
    let (a, b) = (&r.lines[0], &r.lines[1]);
    assert_eq!(
        (a.from_ms, a.to_ms),
        (ms(2025, 1, 10, 19, 55), ms(2025, 1, 10, 20, 0))
    );
    assert_eq!(
        (b.from_ms, b.to_ms),
        (ms(2025, 1, 10, 20, 0), ms(2025, 1, 10, 20, 5))
    );
    assert_eq!((a.quantity, a.price, a.rule), (d("300"), d("6"), 1));
    assert_eq!((b.quantity, b.price, b.rule), (d("300"), d("3"), 0));
    assert_eq!(
        (r.price, r.billed_quantity, r.version),
        (d("9"), d("600"), 1)
    );
}

#[test]
fn each_side_is_rounded_on_its_own() {
    let c = telco();
    // 19:59:30 → 20:00:31 (61 s): 30 s day + 31 s night; each side rounds up
    // to 60 s: 60 × 0.02 + 60 × 0.01 = 1.80.
    let start = ms(2025, 1, 10, 19, 59) + 30_000;
    let r = c.rate(&call(start, 61)).unwrap();
    assert_eq!(r.lines.len(), 2);
    assert_eq!(
        (r.lines[0].quantity, r.lines[0].billed_quantity),
        (d("30"), d("60"))
    );
    assert_eq!(
        (r.lines[1].quantity, r.lines[1].billed_quantity),
        (d("31"), d("60"))
    );
    assert_eq!(r.price, d("1.8"));
    // Sum of lines equals the total.
    let sum: rust_decimal::Decimal = r.lines.iter().map(|l| l.price).sum();
    assert_eq!(sum, r.price);
}

#[test]
fn minimum_applies_once_per_usage_on_the_first_part() {
    let c = telco();
    // 03:00:00 for 10 s at night: 60 s × 0.01 = 0.60 ≥ 0.50, no top-up.
    let r = c.rate(&call(ms(2025, 1, 10, 3, 0), 10)).unwrap();
    assert_eq!(r.price, d("0.6"));
    // A night rate with a smaller increment would fall below the minimum; the
    // top-up lands on the first line and lines still add up.
    let c2 = card(
        r#"
card = "m"
[[versions]]
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "EUR"
[[versions.time_bands]]
name = "day"
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
from = "08:00"
to = "20:00"
[[versions.services]]
id = 1
[[versions.services.rules]]
unit = "seconds"
minimum = "0.50"
price = { model = "per_unit", price = "0.01" }
[[versions.services.rules]]
unit = "seconds"
when = { time_band = "day" }
minimum = "0.40"
price = { model = "per_unit", price = "0.02" }
"#,
    );
    // 19:59:50 → 20:00:10: 10 s × 0.02 + 10 s × 0.01 = 0.30 < 0.40 (the
    // minimum of the rule in force at the start) → 0.40, once.
    let r = c2
        .rate(&call(ms(2025, 1, 10, 19, 59) + 50_000, 20))
        .unwrap();
    assert_eq!(r.price, d("0.4"));
    assert_eq!((r.lines[0].price, r.lines[1].price), (d("0.3"), d("0.1")));
}

#[test]
fn split_at_a_new_version_mid_session() {
    let c = telco();
    // 2025-02-01 11:50 → 12:10 UTC (day band under v1): 600 s at 0.02 under
    // v1 (=12), then 600 s at 0.03 under v2 (=18).
    let r = c.rate(&call(ms(2025, 2, 1, 11, 50), 1200)).unwrap();
    assert_eq!(r.lines.len(), 2);
    assert_eq!((r.lines[0].version, r.lines[0].price), (1, d("12")));
    assert_eq!((r.lines[1].version, r.lines[1].price), (2, d("18")));
    assert_eq!(r.lines[1].from_ms, ms(2025, 2, 1, 12, 0));
    assert_eq!((r.price, r.version), (d("30"), 1));
}

#[test]
fn split_across_band_and_version_with_uneven_quantity() {
    let c = telco();
    // 2025-02-01 07:00 → 13:00 UTC (6 h), reported as 1000 units (not equal
    // to the seconds): night 07–08 (1 h), day 08–12 (4 h) under v1, then
    // 12–13 (1 h) under v2. Shares: 1000 × 1/6 = 166.66… → 166, 1000 × 4/6
    // = 666.66… → 666, remainder 168.
    let u_ = Usage::new(1, u("seconds"), d("1000"), ms(2025, 2, 1, 7, 0)).spanning(6 * 3_600_000);
    let r = c.rate(&u_).unwrap();
    let q: Vec<_> = r.lines.iter().map(|l| l.quantity).collect();
    assert_eq!(q, [d("166"), d("666"), d("168")]);
    // Billed: 180 (per 60) × 0.01 = 1.8; 720 × 0.02 = 14.4; 168 × 0.03 = 5.04.
    let p: Vec<_> = r.lines.iter().map(|l| l.price).collect();
    assert_eq!(p, [d("1.8"), d("14.4"), d("5.04")]);
    assert_eq!(r.price, d("21.24"));
    assert_eq!(r.billed_quantity, d("1068"));
}

#[test]
fn edges_that_do_not_change_the_rule_do_not_split() {
    let c = telco();
    // Under v2 (no bands) a 10-hour session is one part.
    let r = c.rate(&call(ms(2025, 3, 1, 0, 0), 36_000)).unwrap();
    assert_eq!(r.lines.len(), 1);
    assert_eq!(r.price, d("1080"));
    // A usage entirely inside one band is one part.
    let r = c.rate(&call(ms(2025, 1, 10, 9, 0), 3600)).unwrap();
    assert_eq!(r.lines.len(), 1);
}

#[test]
fn too_many_tariff_periods_are_refused() {
    let c = telco();
    // 31 days of day/night alternation under v1 = 62 periods → fine; a
    // usage starting 2025-01-01 for 31 days crosses v2 too: 63 parts.
    let r = c.rate(&call(ms(2025, 1, 1, 0, 0), 31 * 86_400));
    assert!(r.is_ok(), "{r:?}");
    // A card with many bands makes more periods than allowed.
    let mut s = String::from(
        "card = \"b\"\n[[versions]]\nversion = 1\neffective_from = 2025-01-01T00:00:00Z\ncurrency = \"EUR\"\n",
    );
    for h in 0..8 {
        s.push_str(&format!(
            "[[versions.time_bands]]\nname = \"b{h}\"\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\nfrom = \"{:02}:00\"\nto = \"{:02}:30\"\n",
            h * 3,
            h * 3
        ));
    }
    s.push_str("[[versions.services]]\nid = 1\n[[versions.services.rules]]\nunit = \"seconds\"\nprice = { model = \"per_unit\", price = \"1\" }\n");
    s.push_str("[[versions.services.rules]]\nunit = \"seconds\"\nwhen = { time_band = [\"b0\", \"b1\", \"b2\", \"b3\", \"b4\", \"b5\", \"b6\", \"b7\"] }\nprice = { model = \"per_unit\", price = \"2\" }\n");
    let c = card(&s);
    let e = c
        .rate(&call(ms(2025, 1, 1, 0, 0), 10 * 86_400))
        .unwrap_err();
    assert!(matches!(e, RatingError::TooManyParts(64)));
}
