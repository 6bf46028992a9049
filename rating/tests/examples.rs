//! The example cards in `rating/examples/` load and price known usages to
//! values computed by hand (in the comments).

mod common;

use common::{d, ms, u};
use reckon_rating::{parse_toml, RateBook, RateCard, Usage};

fn inference() -> RateCard {
    let text = include_str!("../examples/inference.toml");
    parse_toml("examples/inference.toml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn gpu() -> RateCard {
    let text = include_str!("../examples/gpu_cloud.toml");
    parse_toml("examples/gpu_cloud.toml", text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn inference_card_prices_in_credits() {
    let c = inference();
    assert_eq!(c.id(), "inference-acme");
    assert_eq!(c.versions().len(), 2);
    let feb = ms(2025, 2, 1, 12, 0);
    let us = [("model", "large"), ("region", "us")];

    // 1,213 output tokens on "large": 1213 × 15 / 1000 = 18.195 credits;
    // in USD 18.195 × 0.001 = 0.018195; cost 1213 × 8 / 10^6 = 0.009704;
    // margin 0.018195 - 0.009704 = 0.008491.
    let r = c
        .rate(&Usage::new(1, u("tokens_out"), d("1213"), feb).with_attributes(&us))
        .unwrap();
    assert_eq!(r.charge_unit, u("credits"));
    assert_eq!(r.currency, u("USD"));
    assert_eq!(r.price, d("18.195"));
    assert_eq!(r.price_in_currency, d("0.018195"));
    assert_eq!(r.cost, d("0.009704"));
    assert_eq!(r.margin, d("0.008491"));
    assert_eq!(r.version, 1);

    // In the EU the two-condition rule wins: 1213 × 16.5 / 1000 = 20.0145
    // credits; USD 0.0200145 → half_up at 6 places → 0.020015;
    // cost 1213 × 9 / 10^6 = 0.010917; margin 0.009098.
    let eu = [("region", "eu"), ("model", "large")];
    let r = c
        .rate(&Usage::new(1, u("tokens_out"), d("1213"), feb).with_attributes(&eu))
        .unwrap();
    assert_eq!(r.price, d("20.0145"));
    assert_eq!(r.price_in_currency, d("0.020015"));
    assert_eq!(r.cost, d("0.010917"));
    assert_eq!(r.margin, d("0.009098"));

    // "small" output, graduated, 9,999,000 tokens already this month:
    // 1,000 tokens at 0.8/1K = 0.8 and 1,000 at 0.6/1K = 0.6 → 1.4 credits;
    // cost 2000 × 0.40 / 10^6 = 0.0008; USD 0.0014; margin 0.0006.
    let small = [("model", "small")];
    let usage = Usage::new(1, u("tokens_out"), d("2000"), feb)
        .with_attributes(&small)
        .with_prior(d("9999000"));
    let r = c.rate(&usage).unwrap();
    assert_eq!(r.price, d("1.4"));
    assert_eq!(r.cost, d("0.0008"));
    assert_eq!(r.margin, d("0.0006"));

    // Same usage after the 2025-03-01 price cut (version 2):
    // 1000 × 0.5/1K + 1000 × 0.4/1K = 0.9 credits; cost 2000 × 0.30/10^6 = 0.0006.
    let mar = ms(2025, 3, 10, 0, 0);
    let r = c
        .rate(&Usage {
            at_ms: mar,
            ..usage
        })
        .unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(r.price, d("0.9"));
    assert_eq!(r.cost, d("0.0006"));
    assert_eq!(r.price_in_currency, d("0.0009"));

    // Unknown model → default rule, per started 1K: 1,213 → 2,000 billed → 2 credits.
    let other = [("model", "mystery-7b")];
    let r = c
        .rate(&Usage::new(1, u("tokens_in"), d("1213"), feb).with_attributes(&other))
        .unwrap();
    assert_eq!(r.billed_quantity, d("2000"));
    assert_eq!(r.price, d("2"));
    assert_eq!(r.cost, d("0"));
    assert_eq!(r.margin, d("0.002"));

    // Images: 3 × 40 = 120 credits, cost 3 × 0.02 = 0.06, USD 0.12, margin 0.06.
    let hd = [("model", "draw-1-hd")];
    let r = c
        .rate(&Usage::new(2, u("images"), d("3"), feb).with_attributes(&hd))
        .unwrap();
    assert_eq!(
        (r.price, r.cost, r.margin),
        (d("120"), d("0.06"), d("0.06"))
    );
    // The request fee is flat per event, whatever the count.
    for n in ["1", "5"] {
        let r = c.rate(&Usage::new(2, u("requests"), d(n), feb)).unwrap();
        assert_eq!(r.price, d("0.5"));
    }
}

#[test]
fn inference_card_sizes_grants() {
    let c = inference();
    let feb = ms(2025, 2, 1, 12, 0);
    let large = [("model", "large")];
    // 100 credits at 15/1K: 6,666 × 0.015 = 99.99 ≤ 100 < 6,667 × 0.015 = 100.005.
    let q = c
        .units_for(
            &Usage::new(1, u("tokens_out"), d("0"), feb).with_attributes(&large),
            d("100"),
        )
        .unwrap();
    assert_eq!(q, d("6666"));
    // At the tier edge: 0.8 credits buy exactly the 1,000 tokens left in tier 1;
    // 0.8006 buy one more at 0.0006.
    let small = [("model", "small")];
    let at = Usage::new(1, u("tokens_out"), d("0"), feb)
        .with_attributes(&small)
        .with_prior(d("9999000"));
    assert_eq!(c.units_for(&at, d("0.8")).unwrap(), d("1000"));
    assert_eq!(c.units_for(&at, d("0.8005")).unwrap(), d("1000"));
    assert_eq!(c.units_for(&at, d("0.8006")).unwrap(), d("1001"));
    assert_eq!(c.units_for(&at, d("1.4")).unwrap(), d("2000"));
}

#[test]
fn gpu_cloud_card() {
    let c = gpu();
    // 2025-01-15 15:00 local (-05:00) = 20:00 UTC: daytime.
    let day = ms(2025, 1, 15, 20, 0);
    let h100 = [("gpu", "h100"), ("plan", "on_demand")];
    let gs = u("gpu_seconds");

    // 90.5 s → per-second increment → 91 s × 2.49 / 3600 = 0.06294166… → 0.062942;
    // cost on the exact 90.5 s: 90.5 × 1.80 / 3600 = 0.04525; margin 0.017692.
    let r = c
        .rate(&Usage::new(10, gs, d("90.5"), day).with_attributes(&h100))
        .unwrap();
    assert_eq!(r.billed_quantity, d("91"));
    assert_eq!(r.price, d("0.062942"));
    assert_eq!(r.cost, d("0.04525"));
    assert_eq!(r.margin, d("0.017692"));

    // 30 s: 30 × 2.49 / 3600 = 0.02075 < minimum 0.0415 → 0.0415; cost 0.015.
    let r = c
        .rate(&Usage::new(10, gs, d("30"), day).with_attributes(&h100))
        .unwrap();
    assert_eq!(
        (r.price, r.cost, r.margin),
        (d("0.0415"), d("0.015"), d("0.0265"))
    );

    // 23:00 local = 04:00 UTC next day: off-peak rule, 3600 s × 1.99 / 3600 = 1.99.
    let night = ms(2025, 1, 16, 4, 0);
    let r = c
        .rate(&Usage::new(10, gs, d("3600"), night).with_attributes(&h100))
        .unwrap();
    assert_eq!(
        (r.price, r.cost, r.margin),
        (d("1.99"), d("1.8"), d("0.19"))
    );

    // A job from 21:30 to 22:30 local crosses into off-peak at 22:00:
    // 1800 s × 2.49/3600 = 1.245 plus 1800 s × 1.99/3600 = 0.995 → 2.24.
    let start = ms(2025, 1, 16, 2, 30);
    let r = c
        .rate(
            &Usage::new(10, gs, d("3600"), start)
                .with_attributes(&h100)
                .spanning(3_600_000),
        )
        .unwrap();
    assert_eq!(r.lines.len(), 2);
    assert_eq!(r.lines[0].price, d("1.245"));
    assert_eq!(r.lines[1].price, d("0.995"));
    assert_eq!(r.lines[0].to_ms, ms(2025, 1, 16, 3, 0));
    assert_eq!((r.price, r.cost), (d("2.24"), d("1.8")));

    // Committed, 3,599,000 s used this period, 1,030 s now → per started
    // minute: 1,080 s billed; 1,000 s at 1.89/h and 80 s at 1.69/h:
    // (1890 + 135.2) / 3600 = 0.5625555… → 0.562556; cost 1030 × 1.5 / 3600
    // = 0.4291666… → 0.429167; margin 0.133389.
    let committed = [("gpu", "h100"), ("plan", "committed")];
    let u_c = Usage::new(10, gs, d("1030"), day)
        .with_attributes(&committed)
        .with_prior(d("3599000"));
    let r = c.rate(&u_c).unwrap();
    assert_eq!(r.billed_quantity, d("1080"));
    assert_eq!(
        (r.price, r.cost, r.margin),
        (d("0.562556"), d("0.429167"), d("0.133389"))
    );
    // Inverse at that exact amount: 1,080 s (the next minute, 1,140 s, costs 0.590722).
    assert_eq!(c.units_for(&u_c, d("0.562556")).unwrap(), d("1080"));
    assert_eq!(c.units_for(&u_c, d("0.590721")).unwrap(), d("1080"));
    assert_eq!(c.units_for(&u_c, d("0.590722")).unwrap(), d("1140"));

    // A100 volume: 350,000 s prior + 20,000 s lands in tier 2 (1.19/h):
    // 20000 × 1.19 / 3600 = 6.6111… → 6.611111; cost 5; margin 1.611111.
    let a100 = [("gpu", "a100"), ("plan", "on_demand")];
    let r = c
        .rate(
            &Usage::new(10, gs, d("20000"), day)
                .with_attributes(&a100)
                .with_prior(d("350000")),
        )
        .unwrap();
    assert_eq!(
        (r.price, r.cost, r.margin),
        (d("6.611111"), d("5"), d("1.611111"))
    );

    // Any other GPU: 3,601 s = 2 started hours = 2.00.
    let l40 = [("gpu", "l40s")];
    let r = c
        .rate(&Usage::new(10, gs, d("3601"), day).with_attributes(&l40))
        .unwrap();
    assert_eq!(r.price, d("2"));

    // Egress 1.5 GB: 0.075 in the US (cost 0.015), 0.135 elsewhere (cost 0.03).
    let r = c
        .rate(
            &Usage::new(11, u("octets"), d("1500000000"), day)
                .with_attributes(&[("region", "us-east")]),
        )
        .unwrap();
    assert_eq!((r.price, r.cost), (d("0.075"), d("0.015")));
    let r = c
        .rate(
            &Usage::new(11, u("octets"), d("1500000000"), day)
                .with_attributes(&[("region", "eu-west")]),
        )
        .unwrap();
    assert_eq!((r.price, r.cost), (d("0.135"), d("0.03")));

    // Support: 3 % of a USD 1,234.56 bill = 37.0368.
    let r = c
        .rate(&Usage::new(12, u("USD"), d("1234.56"), day))
        .unwrap();
    assert_eq!(r.price, d("37.0368"));

    // USD 10 of daytime H100: 14,457 s cost 9.999425; 14,458 s cost 10.000117.
    let q = c
        .units_for(
            &Usage::new(10, gs, d("0"), day).with_attributes(&h100),
            d("10"),
        )
        .unwrap();
    assert_eq!(q, d("14457"));
}

#[test]
fn gpu_cloud_version_switch_mid_job() {
    let mut book = RateBook::new();
    book.apply(gpu(), 0).unwrap();
    // 2025-06-30 18:30 local (23:30 UTC) for one hour: version 2 takes effect
    // at 2025-07-01T00:00Z (19:00 local, daytime). 1800 s × 2.49/3600 = 1.245
    // under v1 and 1800 s × 2.29/3600 = 1.145 under v2 → 2.39;
    // cost 0.9 + 0.85 = 1.75.
    let h100 = [("gpu", "h100"), ("plan", "on_demand")];
    let usage = Usage::new(10, u("gpu_seconds"), d("3600"), ms(2025, 6, 30, 23, 30))
        .with_attributes(&h100)
        .spanning(3_600_000);
    let r = book.rate("gpu-cloud", &usage).unwrap();
    assert_eq!(r.version, 1);
    let versions: Vec<u32> = r.lines.iter().map(|l| l.version).collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(
        (r.lines[0].price, r.lines[1].price),
        (d("1.245"), d("1.145"))
    );
    assert_eq!(
        (r.price, r.cost, r.margin),
        (d("2.39"), d("1.75"), d("0.64"))
    );
    // The grant's validity should stop at the tariff change.
    assert_eq!(
        book.next_change("gpu-cloud", &usage).unwrap(),
        Some(ms(2025, 7, 1, 0, 0))
    );
}

#[test]
fn examples_parse_as_json_too() {
    // The JSON loader accepts the same structure (a hand-written subset).
    let json = r#"{
      "card": "gpu-mini",
      "versions": [{
        "version": 1,
        "effective_from": "2025-01-01T00:00:00Z",
        "currency": "USD",
        "services": [{
          "id": 10, "name": "gpu",
          "rules": [{
            "unit": "gpu_seconds",
            "when": {"gpu": "h100"},
            "increment": 1,
            "price": {"model": "per_unit", "price": 2.49, "per": 3600},
            "cost": {"model": "per_unit", "price": "1.80", "per": 3600}
          }]
        }]
      }]
    }"#;
    let c = reckon_rating::parse_json("gpu-mini.json", json).unwrap_or_else(|e| panic!("{e}"));
    let r = c
        .rate(
            &Usage::new(10, u("gpu_seconds"), d("90.5"), ms(2025, 2, 1, 0, 0))
                .with_attributes(&[("gpu", "h100")]),
        )
        .unwrap();
    assert_eq!((r.price, r.cost), (d("0.062942"), d("0.04525")));
}
