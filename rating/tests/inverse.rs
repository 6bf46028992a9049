//! Inverse pricing: the largest quantity an amount pays for, exact at tier
//! edges and consistent with forward rating.

mod common;

use common::{d, simple, u, T0};
use reckon_rating::{RateCard, RatingError, Usage};
use rust_decimal::Decimal;

fn units(c: &RateCard, unit: &str, prior: &str, amount: &str) -> Decimal {
    c.units_for(
        &Usage::new(1, u(unit), Decimal::ZERO, T0).with_prior(d(prior)),
        d(amount),
    )
    .unwrap()
}

fn price(c: &RateCard, unit: &str, prior: &str, q: Decimal) -> Decimal {
    c.rate(&Usage::new(1, u(unit), q, T0).with_prior(d(prior)))
        .unwrap()
        .price
}

/// Checks the defining property of `units_for` against forward rating:
/// the answer is affordable and one more step is not.
fn check(c: &RateCard, unit: &str, prior: &str, amount: &str, step: Decimal) {
    let q = units(c, unit, prior, amount);
    assert!(
        price(c, unit, prior, q) <= d(amount),
        "q={q} amount={amount}"
    );
    let next = q + step;
    assert!(
        price(c, unit, prior, next) > d(amount),
        "q+1={next} amount={amount}"
    );
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
fn graduated_exact_at_tier_edges() {
    let c = simple("", GRADUATED);
    // 100 units cost exactly 100: the edge itself is bought.
    assert_eq!(units(&c, "requests", "0", "100"), d("100"));
    assert_eq!(units(&c, "requests", "0", "99.99"), d("99"));
    // One cent short of the next unit in tier 2 (0.5 each).
    assert_eq!(units(&c, "requests", "0", "100.49"), d("100"));
    assert_eq!(units(&c, "requests", "0", "100.5"), d("101"));
    // The end of tier 2: 100 + 450 = 550 buys 1000.
    assert_eq!(units(&c, "requests", "0", "550"), d("1000"));
    assert_eq!(units(&c, "requests", "0", "550.1"), d("1001"));
    // With prior usage 95: 5 × 1 + then 0.5 each.
    assert_eq!(units(&c, "requests", "95", "5"), d("5"));
    assert_eq!(units(&c, "requests", "95", "6"), d("7"));
    assert_eq!(units(&c, "requests", "0", "0"), d("0"));
    for a in [
        "0.5", "1", "99.5", "100", "100.25", "549.9", "550", "600", "1234.5",
    ] {
        check(&c, "requests", "0", a, Decimal::ONE);
        check(&c, "requests", "42", a, Decimal::ONE);
    }
}

#[test]
fn respects_increments_and_price_rounding() {
    let c = simple(
        "decimals = 2",
        r#"
[[versions.services.rules]]
unit = "seconds"
increment = 60
price = { model = "per_unit", price = "0.001" }
"#,
    );
    // 60 s cost 0.06. 0.17 buys 120 s (0.12); 180 s would cost 0.18.
    assert_eq!(units(&c, "seconds", "0", "0.17"), d("120"));
    assert_eq!(units(&c, "seconds", "0", "0.18"), d("180"));
    // Price rounding (half_up, 2 places): 1 s at 0.004 = 0.00, 2 s = 0.01.
    let c = simple(
        "decimals = 2",
        r#"
[[versions.services.rules]]
unit = "requests"
price = { model = "per_unit", price = "0.004" }
"#,
    );
    // n × 0.004 rounds to ≤ 0.01 while n × 0.004 < 0.015, i.e. n ≤ 3.
    assert_eq!(units(&c, "requests", "0", "0.01"), d("3"));
    // Amount 0 still buys the single request that rounds to 0.00.
    assert_eq!(units(&c, "requests", "0", "0"), d("1"));
    for a in ["0.01", "0.02", "0.05", "1", "3.33"] {
        check(&c, "requests", "0", a, Decimal::ONE);
    }
}

#[test]
fn gpu_hours_per_non_decimal_divisor() {
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "gpu_seconds"
price = { model = "per_unit", price = "2.49", per = 3600 }
"#,
    );
    // USD 1 → 1445 s (0.999458…→0.999458); 1446 s = 1.000150.
    assert_eq!(units(&c, "gpu_seconds", "0", "1"), d("1445"));
    for a in ["0.000692", "0.5", "1", "2.49", "100"] {
        check(&c, "gpu_seconds", "0", a, Decimal::ONE);
    }
}

#[test]
fn minimum_flat_and_blocks() {
    let c = simple(
        "",
        r#"
[[versions.services.rules]]
unit = "seconds"
minimum = "1"
price = { model = "per_unit", price = "0.01" }

[[versions.services.rules]]
unit = "requests"
price = { model = "flat", price = "0.25" }

[[versions.services.rules]]
unit = "octets"
price = { model = "per_block", block = 1000, price = "0.1" }
"#,
    );
    // Below the minimum nothing is affordable; at it, 100 s (= 1.00).
    assert_eq!(units(&c, "seconds", "0", "0.99"), d("0"));
    assert_eq!(units(&c, "seconds", "0", "1"), d("100"));
    assert_eq!(units(&c, "seconds", "0", "1.5"), d("150"));
    // A flat fee buys any quantity once it is affordable (capped at the max).
    assert_eq!(units(&c, "requests", "0", "0.24"), d("0"));
    assert_eq!(units(&c, "requests", "0", "0.25"), d("1000000000000"));
    // Blocks: 0.35 buys 3 blocks = 3000 octets (units, not just blocks).
    assert_eq!(units(&c, "octets", "0", "0.35"), d("3000"));
}

#[test]
fn volume_tiers_grant_only_what_stays_affordable() {
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
    // 60 buys 60 (not 120: although 120 units cost 60, 61–100 units would
    // cost more than 60, and a grant must stay affordable whatever is used).
    assert_eq!(units(&c, "requests", "0", "60"), d("60"));
    // 100 buys the whole of tier 1 and tier 2 up to 200 units.
    assert_eq!(units(&c, "requests", "0", "100"), d("200"));
    // 500 buys all of tier 2 (1000 units cost 500), then tier 3 at 0.1 up to 5000.
    assert_eq!(units(&c, "requests", "0", "500"), d("5000"));
    // With prior 950 usage is already in tier 2: 0.5 each until position
    // 1000 (50 units = 25), then 0.1 each: 25 buys 250 units.
    assert_eq!(units(&c, "requests", "950", "25"), d("250"));
    assert_eq!(units(&c, "requests", "950", "24.5"), d("49"));
    // Every quantity up to the answer is affordable.
    for (prior, amount) in [
        ("0", "60"),
        ("0", "100"),
        ("0", "500"),
        ("950", "25"),
        ("10", "120"),
    ] {
        let q = units(&c, "requests", prior, amount);
        let mut k = Decimal::ZERO;
        while k <= q && k < d("1200") {
            assert!(price(&c, "requests", prior, k) <= d(amount), "k={k}");
            k += Decimal::ONE;
        }
    }
}

#[test]
fn brute_force_agrees_on_a_tiered_card_with_increment() {
    let c = simple(
        "decimals = 3\nrounding = \"half_even\"",
        r#"
[[versions.services.rules]]
unit = "tokens_out"
increment = 10
price = { model = "graduated", per = 1000, tiers = [
  { up_to = 500, price = "7" },
  { up_to = 2000, price = "3.3" },
  { price = "1.1" },
] }
"#,
    );
    // Walk quantities in steps of 10; for many amounts, the answer is the
    // largest step whose price fits.
    let prices: Vec<(Decimal, Decimal)> = (0..400)
        .map(|k| {
            let q = Decimal::from(k * 10);
            (q, price(&c, "tokens_out", "120", q))
        })
        .collect();
    let mut amount = Decimal::ZERO;
    while amount < d("9") {
        let want = prices
            .iter()
            .filter(|(_, p)| *p <= amount)
            .map(|(q, _)| *q)
            .max()
            .unwrap_or_default();
        assert_eq!(
            units(&c, "tokens_out", "120", &amount.to_string()),
            want,
            "amount {amount}"
        );
        amount += d("0.037");
    }
}

#[test]
fn negative_amount_is_refused() {
    let c = simple("", GRADUATED);
    assert!(matches!(
        c.units_for(&Usage::new(1, u("requests"), Decimal::ZERO, T0), d("-1")),
        Err(RatingError::InvalidAmount(_))
    ));
}

#[test]
fn brute_force_agrees_on_per_unit_cards() {
    for (extra, price_line) in [
        (
            "rounding = \"up\"",
            "price = { model = \"per_unit\", price = \"2.49\", per = 3600 }",
        ),
        (
            "decimals = 2\nrounding = \"down\"",
            "price = { model = \"per_unit\", price = \"0.013\" }",
        ),
        (
            "decimals = 1",
            "minimum = \"0.3\"\nprice = { model = \"per_unit\", price = \"0.07\" }",
        ),
    ] {
        let c = simple(
            extra,
            &format!("[[versions.services.rules]]\nunit = \"seconds\"\n{price_line}\n"),
        );
        let prices: Vec<(Decimal, Decimal)> = (0..600)
            .map(|k| {
                (
                    Decimal::from(k),
                    price(&c, "seconds", "0", Decimal::from(k)),
                )
            })
            .collect();
        // Stay below the price of the last quantity tabulated.
        let top = prices[prices.len() - 1].1;
        let mut amount = Decimal::ZERO;
        while amount < top {
            let want = prices
                .iter()
                .filter(|(_, p)| *p <= amount)
                .map(|(q, _)| *q)
                .max()
                .unwrap_or_default();
            assert_eq!(
                units(&c, "seconds", "0", &amount.to_string()),
                want,
                "{extra}: amount {amount}"
            );
            amount += d("0.0031");
        }
    }
}
