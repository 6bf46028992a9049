//! Rating benchmarks: price one usage on one core.
//!
//! - `per_unit`: a one-rule card (USD per 1K output tokens); goal ≥ 5M ratings/s.
//! - `graduated_3_dims`: graduated tiers chosen by three dimensions (model,
//!   region, category) among 12 rules, with prior usage so the usage
//!   crosses a tier edge; goal ≥ 1M ratings/s.
//! - `units_for_*`: inverse pricing (grant sizing) on the same cards.
//!
//! Run: `cargo bench -p reckon-benches --bench rating`

use std::hint::black_box;
use std::str::FromStr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reckon_rating::{parse_toml, RateBook, Unit, Usage};
use rust_decimal::Decimal;

const AT: u64 = 1_750_000_000_000;

const PER_UNIT: &str = r#"
card = "flat-rate"
[[versions]]
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "USD"
[[versions.services]]
id = 1
name = "chat"
[[versions.services.rules]]
unit = "tokens_out"
price = { model = "per_unit", price = "0.60", per = 1000 }
cost = { model = "per_unit", price = "0.25", per = 1000 }
"#;

/// Twelve rules over model × region × category, each graduated.
fn tiered_card() -> String {
    let mut s = String::from(
        r#"
card = "tiered"
[[versions]]
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "USD"
[[versions.services]]
id = 1
name = "chat"
"#,
    );
    let mut price = 1.0f64;
    for model in ["small", "medium", "large"] {
        for region in ["us", "eu"] {
            for category in ["batch", "interactive"] {
                price += 0.25;
                s.push_str(&format!(
                    r#"
[[versions.services.rules]]
unit = "tokens_out"
when = {{ model = "{model}", region = "{region}", category = "{category}" }}
price = {{ model = "graduated", per = 1000, tiers = [
  {{ up_to = 1000000, price = "{p1:.2}" }},
  {{ up_to = 10000000, price = "{p2:.2}" }},
  {{ price = "{p3:.2}" }},
] }}
cost = {{ model = "per_unit", price = "0.40", per = 1000 }}
"#,
                    p1 = price,
                    p2 = price * 0.8,
                    p3 = price * 0.6,
                ));
            }
        }
    }
    s.push_str(
        r#"
[[versions.services.rules]]
unit = "tokens_out"
price = { model = "per_unit", price = "5", per = 1000 }
"#,
    );
    s
}

fn book() -> RateBook {
    let mut book = RateBook::new();
    for (name, text) in [
        ("per_unit.toml", PER_UNIT.to_string()),
        ("tiered.toml", tiered_card()),
    ] {
        let card = parse_toml(name, &text).unwrap_or_else(|e| panic!("{e}"));
        book.apply(card, 0).expect("fresh book");
    }
    book
}

fn rating(c: &mut Criterion) {
    let book = book();
    let tokens_out = Unit::TOKENS_OUT;
    let mut g = c.benchmark_group("rating");
    g.throughput(Throughput::Elements(1));

    let usage = Usage::new(1, tokens_out, Decimal::from(1213), AT);
    g.bench_function("per_unit", |b| {
        b.iter(|| book.rate(black_box("flat-rate"), black_box(&usage)))
    });

    // The last-matching combination, crossing the 1M tier edge.
    let attrs = [
        ("model", "large"),
        ("region", "eu"),
        ("category", "interactive"),
    ];
    let usage = Usage::new(1, tokens_out, Decimal::from(4096), AT)
        .with_attributes(&attrs)
        .with_prior(Decimal::from(998_000));
    g.bench_function("graduated_3_dims", |b| {
        b.iter(|| book.rate(black_box("tiered"), black_box(&usage)))
    });

    let amount = Decimal::from_str("25.5").unwrap_or_default();
    g.bench_function("units_for_per_unit", |b| {
        b.iter(|| book.units_for(black_box("flat-rate"), black_box(&usage), black_box(amount)))
    });
    g.bench_function("units_for_graduated_3_dims", |b| {
        b.iter(|| book.units_for(black_box("tiered"), black_box(&usage), black_box(amount)))
    });
    g.finish();
}

criterion_group!(benches, rating);
criterion_main!(benches);
