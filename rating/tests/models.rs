//! Each price model, increments, minimums and the rounding rules.

mod common;

use common::{d, simple, u, T0};
use reckon_rating::{RateCard, Rated, RatingError, Usage};

fn rate(c: &RateCard, unit: &str, q: &str) -> Rated {
    c.rate(&Usage::new(1, u(unit), d(q), T0)).unwrap()
}

fn rate_prior(c: &RateCard, unit: &str, q: &str, prior: &str) -> Rated {
    c.rate(&Usage::new(1, u(unit), d(q), T0).with_prior(d(prior)))
        .unwrap()
}

#[test]
fn per_unit() {
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "tokens_out"
price = { model = "per_unit", price = "0.60", per = 1000 }
cost = { model = "per_unit", price = "0.25", per = 1000 }
"#,
    );
    // 1213 × 0.60 / 1000 = 0.7278; cost 1213 × 0.25 / 1000 = 0.30325.
    let r = rate(&c, "tokens_out", "1213");
    assert_eq!(
        (r.price, r.cost, r.margin),
        (d("0.7278"), d("0.30325"), d("0.42455"))
    );
    assert_eq!(r.price_in_currency, r.price);
    assert_eq!(r.charge_unit, u("USD"));
    assert_eq!(r.lines.len(), 1);
    assert_eq!(r.lines[0].price, r.price);
    // Zero quantity costs zero.
    let r = rate(&c, "tokens_out", "0");
    assert_eq!((r.price, r.cost), (d("0"), d("0")));
}

#[test]
fn per_block_is_package_pricing() {
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "octets"
price = { model = "per_block", block = 1000000, price = "0.10" }
"#,
    );
    // ceil(q / 1,000,000) blocks × 0.10
    assert_eq!(rate(&c, "octets", "1").price, d("0.10"));
    assert_eq!(rate(&c, "octets", "1000000").price, d("0.10"));
    assert_eq!(rate(&c, "octets", "1000001").price, d("0.20"));
    assert_eq!(rate(&c, "octets", "0").price, d("0"));
}

const GRADUATED: &str = r#"
[[versions.services.rules]]
unit = "requests"
price = { model = "graduated", tiers = [
  { up_to = 100, price = "1" },
  { up_to = 1000, price = "0.5" },
  { price = "0.1" },
] }
"#;

#[test]
fn graduated_tiers_price_each_unit_in_its_tier() {
    let c = simple("", GRADUATED);
    // 150 units from zero: 100 × 1 + 50 × 0.5 = 125.
    assert_eq!(rate(&c, "requests", "150").price, d("125"));
    // Exactly at the edge: 100 → 100; 1000 → 100 + 450 = 550.
    assert_eq!(rate(&c, "requests", "100").price, d("100"));
    assert_eq!(rate(&c, "requests", "1000").price, d("550"));
    // Crossing all tiers: 100 + 450 + 0.1 × 500 = 600.
    assert_eq!(rate(&c, "requests", "1500").price, d("600"));
    // With prior usage 90: 10 × 1 + 20 × 0.5 = 20 (cumulative position 90..120).
    assert_eq!(rate_prior(&c, "requests", "30", "90").price, d("20"));
    // Prior exactly on an edge: the next unit is in the next tier.
    assert_eq!(rate_prior(&c, "requests", "1", "100").price, d("0.5"));
    assert_eq!(rate_prior(&c, "requests", "1", "99").price, d("1"));
    // Far past every edge.
    assert_eq!(rate_prior(&c, "requests", "10", "5000").price, d("1"));
    // Fractional quantities are exact: 0.5 × 1 + 0.25 × 0.5 around the edge.
    assert_eq!(rate_prior(&c, "requests", "0.75", "99.5").price, d("0.625"));
}

#[test]
fn volume_tiers_price_all_units_at_the_reached_tier() {
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "requests"
price = { model = "volume", tiers = [
  { up_to = 100, price = "1" },
  { up_to = 1000, price = "0.5" },
  { price = "0.1" },
] }
"#,
    );
    assert_eq!(rate(&c, "requests", "100").price, d("100"));
    assert_eq!(rate(&c, "requests", "101").price, d("50.5"));
    assert_eq!(rate(&c, "requests", "1001").price, d("100.1"));
    // Prior usage moves the whole usage into the tier of prior + quantity;
    // earlier usage is not re-priced.
    assert_eq!(rate_prior(&c, "requests", "10", "95").price, d("5"));
    assert_eq!(rate_prior(&c, "requests", "10", "90").price, d("10"));
}

#[test]
fn flat_fee_per_event_and_percentage() {
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "requests"
price = { model = "flat", price = "0.05" }
cost = { model = "flat", price = "0.01" }

[[versions.services.rules]]
unit = "USD"
price = { model = "percentage", percent = "2.9" }
"#,
    );
    for q in ["1", "7", "0.5"] {
        let r = rate(&c, "requests", q);
        assert_eq!(
            (r.price, r.cost, r.margin),
            (d("0.05"), d("0.01"), d("0.04"))
        );
    }
    assert_eq!(rate(&c, "requests", "0").price, d("0"));
    // 2.9 % of 1234.56 = 35.80224
    assert_eq!(rate(&c, "USD", "1234.56").price, d("35.80224"));
    // 2.9 % of 0.01 = 0.00029 (6 decimals by default, exact here)
    assert_eq!(rate(&c, "USD", "0.01").price, d("0.00029"));
}

#[test]
fn minimum_charge_and_increments() {
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "seconds"
increment = 60
minimum = "0.10"
price = { model = "per_unit", price = "0.06", per = 60 }
"#,
    );
    // 1 s → billed 60 s → 0.06 < 0.10 minimum → 0.10.
    let r = rate(&c, "seconds", "1");
    assert_eq!((r.billed_quantity, r.price), (d("60"), d("0.10")));
    // 61 s → 120 s → 0.12 (a started increment is billed in full).
    let r = rate(&c, "seconds", "61");
    assert_eq!((r.billed_quantity, r.price), (d("120"), d("0.12")));
    assert_eq!(r.lines[0].quantity, d("61"));
    // Exactly 120 s stays 120 s.
    assert_eq!(rate(&c, "seconds", "120").billed_quantity, d("120"));
    // No usage, no minimum.
    assert_eq!(rate(&c, "seconds", "0").price, d("0"));
}

#[test]
fn tokens_per_started_thousand() {
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "tokens_in"
increment = 1000
price = { model = "per_unit", price = "0.003", per = 1000 }
"#,
    );
    // 1,213 tokens bill as 2,000: 2 × 0.003 = 0.006.
    let r = rate(&c, "tokens_in", "1213");
    assert_eq!((r.billed_quantity, r.price), (d("2000"), d("0.006")));
}

fn rounding_card(mode: &str) -> RateCard {
    simple(
        &format!("decimals = 2\nrounding = \"{mode}\""),
        r#"
[[versions.services.rules]]
unit = "requests"
price = { model = "per_unit", price = "0.005" }
"#,
    )
}

#[test]
fn rounding_modes_on_ties_and_fractions() {
    // 1 × 0.005 = 0.005 (a tie at 2 places); 3 × 0.005 = 0.015 (tie);
    // 5 × 0.005 = 0.025 (tie, even neighbour 0.02); 7 × 0.005 = 0.035.
    let cases = [
        ("half_up", ["0.01", "0.02", "0.03", "0.04"]),
        ("half_even", ["0.00", "0.02", "0.02", "0.04"]),
        ("up", ["0.01", "0.02", "0.03", "0.04"]),
        ("down", ["0.00", "0.01", "0.02", "0.03"]),
    ];
    for (mode, want) in cases {
        let c = rounding_card(mode);
        for (q, w) in ["1", "3", "5", "7"].iter().zip(want) {
            assert_eq!(rate(&c, "requests", q).price, d(w), "{mode} q={q}");
        }
    }
    // Non-ties: 0.004 × 1 → half_up 0.00, up 0.01.
    let c = simple(
        "decimals = 2\nrounding = \"up\"",
        r#"
[[versions.services.rules]]
unit = "requests"
price = { model = "per_unit", price = "0.004" }
"#,
    );
    assert_eq!(rate(&c, "requests", "1").price, d("0.01"));
}

#[test]
fn price_per_non_decimal_divisor_is_rounded_once() {
    // 2.49 per 3600 s: 1 s = 0.000691666… → 0.000692 (half_up, 6 places);
    // 7 s = 0.00484166… → 0.004842, not 7 × 0.000692 = 0.004844.
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "gpu_seconds"
price = { model = "per_unit", price = "2.49", per = 3600 }
"#,
    );
    assert_eq!(rate(&c, "gpu_seconds", "1").price, d("0.000692"));
    assert_eq!(rate(&c, "gpu_seconds", "7").price, d("0.004842"));
    assert_eq!(rate(&c, "gpu_seconds", "3600").price, d("2.49"));
}

#[test]
fn credits_convert_to_currency_and_margin_may_be_negative() {
    let c = simple(
        "charge_in = \"credits\"\ncredit_value = \"0.0125\"\ndecimals = 4",
        r#"
[[versions.services.rules]]
unit = "requests"
price = { model = "per_unit", price = "3" }
cost = { model = "per_unit", price = "0.05" }
"#,
    );
    // 1 request: 3 credits = 0.0375 USD; cost 0.05 → margin -0.0125.
    let r = rate(&c, "requests", "1");
    assert_eq!(r.charge_unit, u("credits"));
    assert_eq!((r.price, r.price_in_currency), (d("3"), d("0.0375")));
    assert_eq!(r.margin, d("-0.0125"));
    // 0.1 request (fractional units are allowed): 0.3 credits = 0.00375 →
    // 4 places half_up → 0.0038.
    let r = rate(&c, "requests", "0.1");
    assert_eq!(r.price_in_currency, d("0.0038"));
}

#[test]
fn usage_bounds_are_enforced() {
    let c = simple("", GRADUATED);
    let bad = |q: &str, prior: &str| {
        c.rate(&Usage::new(1, u("requests"), d(q), T0).with_prior(d(prior)))
            .unwrap_err()
    };
    assert!(matches!(bad("-1", "0"), RatingError::InvalidQuantity(_)));
    assert!(matches!(
        bad("1000000000000", "0"),
        RatingError::InvalidQuantity(_)
    ));
    assert!(matches!(
        bad("0.0000001", "0"),
        RatingError::InvalidQuantity(_)
    ));
    assert!(matches!(bad("1", "-5"), RatingError::InvalidQuantity(_)));
    // Trailing zeros beyond 6 places are fine.
    assert!(c
        .rate(&Usage::new(1, u("requests"), d("1.00000000"), T0))
        .is_ok());
    let many: Vec<(&str, &str)> = (0..17).map(|_| ("k", "v")).collect();
    assert!(matches!(
        c.rate(&Usage::new(1, u("requests"), d("1"), T0).with_attributes(&many)),
        Err(RatingError::InvalidUsage(_))
    ));
    assert!(matches!(
        c.rate(&Usage::new(1, u("requests"), d("1"), T0).spanning(32 * 86_400_000)),
        Err(RatingError::InvalidUsage(_))
    ));
    assert!(matches!(
        c.rate(&Usage::new(7, u("requests"), d("1"), T0)),
        Err(RatingError::UnknownService {
            service: 7,
            version: 1
        })
    ));
    assert!(matches!(
        c.rate(&Usage::new(1, u("tokens_in"), d("1"), T0)),
        Err(RatingError::NoRule { .. })
    ));
    assert!(reckon_rating::Unit::new("").is_err());
    assert!(reckon_rating::Unit::new("tokens-out").is_err());
    assert!(reckon_rating::Unit::new("a_very_long_unit_name").is_err());
    assert_eq!(u("gpu_seconds"), reckon_rating::Unit::GPU_SECONDS);
}
