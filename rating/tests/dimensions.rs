//! Dimension matching: most specific rule wins, then file order, then the
//! default; time-of-day and day-of-week bands in the card's fixed offset.

mod common;

use common::{card, d, ms, simple, u, T0};
use reckon_rating::{parse_toml, RateCard, RatingError, Usage};

fn card_with_dims() -> RateCard {
    simple(
        "",
        r#"
[[versions.services.rules]]
name = "default"
unit = "tokens_out"
price = { model = "per_unit", price = "1" }

[[versions.services.rules]]
name = "model large"
unit = "tokens_out"
when = { model = "large" }
price = { model = "per_unit", price = "2" }

[[versions.services.rules]]
name = "region eu"
unit = "tokens_out"
when = { region = "eu" }
price = { model = "per_unit", price = "3" }

[[versions.services.rules]]
name = "large in eu or uk"
unit = "tokens_out"
when = { model = "large", region = ["eu", "uk"] }
price = { model = "per_unit", price = "4" }

[[versions.services.rules]]
name = "category batch"
unit = "tokens_out"
when = { category = "batch" }
price = { model = "per_unit", price = "5" }

[[versions.services.rules]]
name = "large, eu, batch, site"
unit = "tokens_out"
when = { model = "large", region = "eu", category = "batch", site = "paris" }
price = { model = "per_unit", price = "6" }
"#,
    )
}

fn price(c: &RateCard, attrs: &[(&str, &str)]) -> (String, u16) {
    let r = c
        .rate(&Usage::new(1, u("tokens_out"), d("1"), T0).with_attributes(attrs))
        .unwrap();
    (r.price.to_string(), r.lines[0].rule)
}

#[test]
fn match_order_is_specificity_then_file_order_then_default() {
    let c = card_with_dims();
    // Nothing matches but the default.
    assert_eq!(price(&c, &[]), ("1".into(), 0));
    assert_eq!(price(&c, &[("model", "small")]), ("1".into(), 0));
    // One condition.
    assert_eq!(price(&c, &[("model", "large")]), ("2".into(), 1));
    assert_eq!(price(&c, &[("region", "eu")]), ("3".into(), 2));
    // Two conditions beat one; lists match any value.
    assert_eq!(
        price(&c, &[("model", "large"), ("region", "eu")]),
        ("4".into(), 3)
    );
    assert_eq!(
        price(&c, &[("region", "uk"), ("model", "large")]),
        ("4".into(), 3)
    );
    // Equally specific (one condition each): the earlier rule in the file wins.
    assert_eq!(
        price(&c, &[("model", "large"), ("category", "batch")]),
        ("2".into(), 1)
    );
    assert_eq!(
        price(&c, &[("category", "batch"), ("region", "eu")]),
        ("3".into(), 2)
    );
    // Four conditions beat all.
    let all = [
        ("site", "paris"),
        ("category", "batch"),
        ("region", "eu"),
        ("model", "large"),
    ];
    assert_eq!(price(&c, &all), ("6".into(), 5));
    // A partial match of the four-condition rule falls back.
    assert_eq!(price(&c, &all[1..]), ("4".into(), 3));
    // Values are case-sensitive and compared exactly.
    assert_eq!(price(&c, &[("model", "Large")]), ("1".into(), 0));
    // The first occurrence of a repeated key counts.
    assert_eq!(
        price(&c, &[("model", "small"), ("model", "large")]),
        ("1".into(), 0)
    );
}

#[test]
fn without_a_default_an_unmatched_usage_is_an_error() {
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "tokens_out"
when = { model = "large" }
price = { model = "per_unit", price = "2" }
"#,
    );
    let e = c
        .rate(&Usage::new(1, u("tokens_out"), d("1"), T0).with_attributes(&[("model", "x")]))
        .unwrap_err();
    assert!(matches!(
        e,
        RatingError::NoRule {
            service: 1,
            version: 1,
            ..
        }
    ));
}

#[test]
fn identical_conditions_for_one_unit_are_rejected() {
    let text = r#"
card = "t"
[[versions]]
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "USD"
[[versions.services]]
id = 1
[[versions.services.rules]]
unit = "tokens_out"
when = { model = ["a", "b"], region = "eu" }
price = { model = "per_unit", price = "2" }
[[versions.services.rules]]
unit = "tokens_out"
when = { region = "eu", model = ["b", "a"] }
price = { model = "per_unit", price = "3" }
[[versions.services.rules]]
unit = "tokens_in"
when = { region = "eu", model = ["b", "a"] }
price = { model = "per_unit", price = "3" }
"#;
    let e = parse_toml("dup.toml", text).unwrap_err();
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].field, "versions[0].services[0].rules[1].when");
    assert_eq!(e.errors[0].line, 15);
}

fn banded() -> RateCard {
    // Offset +02:00. Peak: weekdays 08:00–20:00; night: every day 22:00–06:00;
    // weekend: Saturday and Sunday all day.
    card(
        r#"
card = "bands"
[[versions]]
version = 1
effective_from = 2025-01-01T00:00:00Z
utc_offset = "+02:00"
currency = "USD"

[[versions.time_bands]]
name = "peak"
days = ["mon", "tue", "wed", "thu", "fri"]
from = "08:00"
to = "20:00"

[[versions.time_bands]]
name = "night"
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
from = "22:00"
to = "06:00"

[[versions.time_bands]]
name = "weekend"
days = ["sat", "sun"]
from = "00:00"
to = "24:00"

[[versions.services]]
id = 1

[[versions.services.rules]]
unit = "seconds"
price = { model = "per_unit", price = "2" }

[[versions.services.rules]]
unit = "seconds"
when = { time_band = "peak" }
price = { model = "per_unit", price = "3" }

[[versions.services.rules]]
unit = "seconds"
when = { time_band = ["night", "weekend"] }
price = { model = "per_unit", price = "1" }

[[versions.services.rules]]
unit = "seconds"
when = { time_band = "night", region = "eu" }
price = { model = "per_unit", price = "0.5" }
"#,
    )
}

#[test]
fn time_bands_use_the_cards_offset_and_weekday() {
    let c = banded();
    let p = |at: u64, attrs: &[(&str, &str)]| {
        c.rate(&Usage::new(1, u("seconds"), d("1"), at).with_attributes(attrs))
            .unwrap()
            .price
            .to_string()
    };
    // Wed 2025-01-15 05:59 UTC = 07:59 local: shoulder (default 2).
    assert_eq!(p(ms(2025, 1, 15, 5, 59), &[]), "2");
    // 06:00 UTC = 08:00 local: peak starts (inclusive).
    assert_eq!(p(ms(2025, 1, 15, 6, 0), &[]), "3");
    // 17:59 UTC = 19:59 local: still peak; 18:00 UTC = 20:00 local: not.
    assert_eq!(p(ms(2025, 1, 15, 17, 59), &[]), "3");
    assert_eq!(p(ms(2025, 1, 15, 18, 0), &[]), "2");
    // 20:00 UTC = 22:00 local: night; with region eu the 2-condition rule.
    assert_eq!(p(ms(2025, 1, 15, 20, 0), &[]), "1");
    assert_eq!(p(ms(2025, 1, 15, 20, 0), &[("region", "eu")]), "0.5");
    // Night wraps past midnight: Thu 03:00 UTC = 05:00 local.
    assert_eq!(p(ms(2025, 1, 16, 3, 0), &[]), "1");
    // Saturday 2025-01-18 10:00 local (08:00 UTC): weekend, not peak.
    assert_eq!(p(ms(2025, 1, 18, 8, 0), &[]), "1");
    // Friday 23:30 UTC = Saturday 01:30 local: night and weekend.
    assert_eq!(p(ms(2025, 1, 17, 23, 30), &[]), "1");
    // Monday 2025-01-20 06:30 UTC = 08:30 local: peak again; the weekend
    // band ended at Sunday 24:00 local = 22:00 UTC.
    assert_eq!(p(ms(2025, 1, 20, 6, 30), &[]), "3");
    assert_eq!(p(ms(2025, 1, 19, 22, 0) + 3_600_000 * 2, &[]), "1"); // Mon 02:00 local: night
}

#[test]
fn next_change_reports_band_edges_for_banded_rules_only() {
    let c = banded();
    // Wed 07:59 local → next edge 08:00 local (06:00 UTC).
    let at = ms(2025, 1, 15, 5, 59);
    let usage = Usage::new(1, u("seconds"), d("1"), at);
    assert_eq!(c.next_change(&usage).unwrap(), Some(ms(2025, 1, 15, 6, 0)));
    // A rule set without bands never changes within a single version.
    let flat = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "seconds"
price = { model = "per_unit", price = "2" }
"#,
    );
    assert_eq!(flat.next_change(&usage).unwrap(), None);
}
