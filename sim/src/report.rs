//! What a load run reports: a text summary, a JSON report, and a latency
//! chart (SVG, or an HTML page around it) drawn by hand.

use crate::load::LoadConfig;
use crate::workload::{Flow, MsgType};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The options a run was given, as recorded in the report.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    /// Server address.
    pub server: String,
    /// Accounts drawn on.
    pub accounts: u64,
    /// First account id.
    pub account_base: u64,
    /// Connections opened.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// "closed" (as fast as possible) or "open" (target rate).
    pub mode: String,
    /// Open-loop target, requests per second (0 in closed loop).
    pub rate: u64,
    /// Seconds of load.
    pub duration_s: f64,
    /// The mix, e.g. `telco=40,inference=40,gpu=10,event=10`.
    pub mix: String,
    /// Opening balance of each bucket, in units.
    pub balance: u64,
    /// Mean think time between a session's requests, ms.
    pub think_ms: u64,
    /// Seed of the workload's random choices.
    pub seed: u64,
}

/// How the accounts were provisioned.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Provisioning {
    /// Whether provisioning was skipped (`--no-provision`).
    pub skipped: bool,
    /// Accounts created.
    pub accounts_created: u64,
    /// Accounts that existed already and were reused.
    pub accounts_existing: u64,
    /// Seconds it took.
    pub seconds: f64,
}

/// The ledger check: balances before and after against acknowledged debits.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    /// Accounts checked.
    pub accounts: u64,
    /// True when every (account, unit) lost exactly what was acknowledged.
    pub exact: bool,
    /// (account, unit) pairs whose loss differs from the acknowledged debits.
    pub mismatches: u64,
    /// (account, unit) pairs with credit still held by reservations after the run.
    pub held_after: u64,
    /// Up to ten mismatches, described.
    pub examples: Vec<String>,
}

/// Latency of one message type, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Requests answered.
    pub count: u64,
    /// Of those, answered SUCCESS.
    pub succeeded: u64,
    /// Fastest.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: u64,
    /// 99.99th percentile.
    #[serde(rename = "p99.99")]
    pub p99_99: u64,
    /// Slowest.
    pub max: u64,
    /// (percentile, latency) points from the 50th to the 99.999th percentile.
    pub curve: Vec<(f64, u64)>,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "reckon-sim load".
    pub tool: String,
    /// The simulator's version.
    pub version: String,
    /// The options of the run.
    pub config: RunConfig,
    /// How accounts were provisioned.
    pub provisioning: Provisioning,
    /// Seconds from the first request to the last answer (the drain included).
    pub elapsed_s: f64,
    /// Requests answered (each counted once, after any BUSY retries).
    pub requests: u64,
    /// Requests answered SUCCESS.
    pub succeeded: u64,
    /// Requests answered per second.
    pub requests_per_s: f64,
    /// Flows completed, by kind.
    pub flows_completed: BTreeMap<String, u64>,
    /// Latency by message type (INITIAL, UPDATE, TERMINATE, EVENT), µs.
    pub latency_us: BTreeMap<String, Latency>,
    /// Failures by code name: request-level result codes, ERROR codes
    /// (BUSY included, each retry counted), `transport`.
    pub errors: BTreeMap<String, u64>,
    /// Non-success per-service result codes inside SUCCESS answers.
    pub service_results: BTreeMap<String, u64>,
    /// Grants that carried a final-unit action (credit running low).
    pub final_unit_grants: u64,
    /// Open loop: arrivals dropped because the generator's backlog was full.
    pub dropped_arrivals: u64,
    /// Units acknowledged as debited, by unit.
    pub units_debited: BTreeMap<String, u64>,
    /// The ledger check, when asked for.
    pub verification: Option<Verification>,
}

/// What [`build`] turns into a [`Report`].
pub struct Inputs<'a> {
    /// The run's options.
    pub config: &'a LoadConfig,
    /// How accounts were provisioned.
    pub provisioning: Provisioning,
    /// Time from the first request to the last answer.
    pub elapsed: Duration,
    /// Latency histograms (µs) in [`MsgType::ALL`] order.
    pub latency: &'a [Histogram<u64>; 4],
    /// SUCCESS answers in [`MsgType::ALL`] order.
    pub succeeded: [u64; 4],
    /// Flows completed in [`Flow::ALL`] order.
    pub flows: [u64; 4],
    /// Failures by code name.
    pub errors: BTreeMap<String, u64>,
    /// Non-success per-service results by code name.
    pub service_results: BTreeMap<String, u64>,
    /// Grants with a final-unit action.
    pub final_units: u64,
    /// Open-loop arrivals dropped.
    pub dropped: u64,
    /// Units acknowledged as debited, by unit name.
    pub debited: BTreeMap<String, u64>,
    /// The ledger check.
    pub verification: Option<Verification>,
}

/// The curve and chart run from the 50th percentile up to this many nines (99.999 %).
const CURVE_TOP_NINES: f64 = 5.0;

fn latency(h: &Histogram<u64>, succeeded: u64) -> Latency {
    let mut curve = Vec::new();
    let mut k = 2f64.log10();
    while k <= CURVE_TOP_NINES + 1e-9 {
        let q = 1.0 - 10f64.powf(-k);
        curve.push(((q * 100.0 * 1e4).round() / 1e4, h.value_at_quantile(q)));
        k += 0.025;
    }
    Latency {
        count: h.len(),
        succeeded,
        min: h.min(),
        mean: (h.mean() * 10.0).round() / 10.0,
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p99_9: h.value_at_quantile(0.999),
        p99_99: h.value_at_quantile(0.9999),
        max: h.max(),
        curve,
    }
}

/// Assembles the report of a run.
pub fn build(inputs: Inputs<'_>) -> Report {
    let c = inputs.config;
    let mut latency_us = BTreeMap::new();
    let mut requests = 0;
    for t in MsgType::ALL {
        let h = &inputs.latency[t.index()];
        requests += h.len();
        if !h.is_empty() {
            latency_us.insert(
                t.name().to_string(),
                latency(h, inputs.succeeded[t.index()]),
            );
        }
    }
    let elapsed_s = inputs.elapsed.as_secs_f64();
    Report {
        tool: "reckon-sim load".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        config: RunConfig {
            server: c.server.clone(),
            accounts: c.accounts,
            account_base: c.account_base,
            connections: c.connections,
            depth: c.depth,
            mode: c.mode().into(),
            rate: c.rate,
            duration_s: c.duration.as_secs_f64(),
            mix: c.mix.to_string(),
            balance: c.balance,
            think_ms: c.think_ms,
            seed: c.seed,
        },
        provisioning: inputs.provisioning,
        elapsed_s,
        requests,
        succeeded: inputs.succeeded.iter().sum(),
        requests_per_s: if elapsed_s > 0.0 {
            requests as f64 / elapsed_s
        } else {
            0.0
        },
        flows_completed: Flow::ALL
            .iter()
            .filter(|f| c.mix.weight(**f) > 0)
            .map(|f| (f.name().to_string(), inputs.flows[*f as usize]))
            .collect(),
        latency_us,
        errors: inputs.errors,
        service_results: inputs.service_results,
        final_unit_grants: inputs.final_units,
        dropped_arrivals: inputs.dropped,
        units_debited: inputs.debited,
        verification: inputs.verification,
    }
}

/// An axis tick in µs without needless decimals: `500 µs`, `2 ms`, `1 s`.
fn tick_label(us: f64) -> String {
    let trim = |v: f64| {
        let t = format!("{v:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if us < 1000.0 {
        format!("{} µs", trim(us))
    } else if us < 1_000_000.0 {
        format!("{} ms", trim(us / 1000.0))
    } else {
        format!("{} s", trim(us / 1_000_000.0))
    }
}

/// A latency in µs, readably: `812 µs`, `12.35 ms`, `1.20 s`.
pub fn human_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn map_line(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text summary printed at the end of a run.
pub fn summary(r: &Report) -> String {
    let c = &r.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reckon-sim load: {} requests in {:.1} s = {:.0} requests/s ({} loop{}, {} connection(s) × {} in flight, {} accounts, mix {})",
        r.requests,
        r.elapsed_s,
        r.requests_per_s,
        c.mode,
        if c.rate > 0 {
            format!(", target {}/s", c.rate)
        } else {
            String::new()
        },
        c.connections,
        c.depth,
        c.accounts,
        c.mix
    );
    let _ = writeln!(
        out,
        "succeeded {} ({:.2} %); flows completed: {}",
        r.succeeded,
        if r.requests > 0 {
            r.succeeded as f64 * 100.0 / r.requests as f64
        } else {
            0.0
        },
        map_line(&r.flows_completed)
    );
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "latency", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    for t in MsgType::ALL {
        if let Some(l) = r.latency_us.get(t.name()) {
            let _ = writeln!(
                out,
                "{:<10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
                t.name(),
                l.count,
                human_us(l.p50 as f64),
                human_us(l.p90 as f64),
                human_us(l.p99 as f64),
                human_us(l.p99_9 as f64),
                human_us(l.max as f64),
                human_us(l.mean)
            );
        }
    }
    let _ = writeln!(out, "errors: {}", map_line(&r.errors));
    if !r.service_results.is_empty() || r.final_unit_grants > 0 {
        let _ = writeln!(
            out,
            "per-service results: {}; grants with final units: {}",
            map_line(&r.service_results),
            r.final_unit_grants
        );
    }
    if r.dropped_arrivals > 0 {
        let _ = writeln!(
            out,
            "open loop: {} arrivals dropped (the generator's backlog was full: the server, or this machine, could not keep up)",
            r.dropped_arrivals
        );
    }
    let _ = writeln!(out, "units debited: {}", map_line(&r.units_debited));
    if let Some(v) = &r.verification {
        if v.exact {
            let _ = writeln!(
                out,
                "ledger check: exact for {} accounts (balance lost = acknowledged debits); {} (account, unit) pairs still held",
                v.accounts, v.held_after
            );
        } else {
            let _ = writeln!(
                out,
                "ledger check: {} MISMATCH(ES) over {} accounts; {} still held",
                v.mismatches, v.accounts, v.held_after
            );
            for e in &v.examples {
                let _ = writeln!(out, "  {e}");
            }
        }
    }
    out
}

/// The report as pretty JSON.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).expect("a report always serialises")
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

const COLORS: [&str; 4] = ["#1f77b4", "#e6550d", "#2ca02c", "#9467bd"];

/// The latency chart as a standalone SVG document: latency (log scale) by
/// percentile (log scale of 1/(1 − p), 50 % to 99.999 %), one curve per
/// message type, with a legend of the main percentiles.
pub fn svg(r: &Report) -> String {
    let (width, height) = (1040.0, 600.0);
    let (x0, x1, y0, y1) = (90.0, 730.0, 80.0, 530.0);
    let kmin = 2f64.log10();
    let kmax = CURVE_TOP_NINES;
    let px = |p: f64| {
        let k = -(1.0 - p / 100.0).max(1e-12).log10();
        x0 + (k - kmin) / (kmax - kmin) * (x1 - x0)
    };
    let values = r
        .latency_us
        .values()
        .flat_map(|l| l.curve.iter().map(|(_, v)| *v))
        .filter(|v| *v > 0);
    let (lo, hi) = values.fold((u64::MAX, 0u64), |(a, b), v| (a.min(v), b.max(v)));
    let (mut dmin, mut dmax) = if hi == 0 {
        (1.0, 4.0)
    } else {
        (
            (lo as f64).log10().floor(),
            (hi as f64)
                .log10()
                .ceil()
                .max((lo as f64).log10().floor() + 1.0),
        )
    };
    if dmax - dmin < 2.0 {
        dmax += 1.0;
        if dmin > 0.0 {
            dmin -= 1.0;
        }
    }
    let py = |us: f64| y1 - ((us.max(1.0)).log10() - dmin) / (dmax - dmin) * (y1 - y0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r##"<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>"##
    );
    let c = &r.config;
    let _ = writeln!(
        s,
        r##"<text x="{x0}" y="32" font-size="20" font-weight="bold" fill="#222">reckon-sim load: latency by percentile</text>"##
    );
    let subtitle = format!(
        "{} requests in {:.1} s = {:.0}/s · {} loop{} · {} conn × {} in flight · {} accounts · mix {}",
        r.requests,
        r.elapsed_s,
        r.requests_per_s,
        c.mode,
        if c.rate > 0 {
            format!(" (target {}/s)", c.rate)
        } else {
            String::new()
        },
        c.connections,
        c.depth,
        c.accounts,
        c.mix
    );
    let _ = writeln!(
        s,
        r##"<text x="{x0}" y="56" font-size="13" fill="#555">{}</text>"##,
        escape(&subtitle)
    );
    // Horizontal grid: decades, with 2 and 5 in between.
    let mut d = dmin;
    while d <= dmax + 1e-9 {
        for (m, major) in [(1.0, true), (2.0, false), (5.0, false)] {
            let us = 10f64.powf(d) * m;
            if us.log10() > dmax + 1e-9 {
                continue;
            }
            let y = py(us);
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="{}" stroke-width="1"{}/>"##,
                if major { "#cccccc" } else { "#eeeeee" },
                if major {
                    ""
                } else {
                    r#" stroke-dasharray="4 3""#
                }
            );
            if major || dmax - dmin <= 4.0 {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end" fill="{}">{}</text>"##,
                    x0 - 8.0,
                    y + 4.0,
                    if major { "#333" } else { "#888" },
                    escape(&tick_label(us))
                );
            }
        }
        d += 1.0;
    }
    // Vertical grid: 50, 90, 99, ... percentiles.
    for (p, label) in [
        (50.0, "50%"),
        (90.0, "90%"),
        (99.0, "99%"),
        (99.9, "99.9%"),
        (99.99, "99.99%"),
        (99.999, "99.999%"),
    ] {
        let x = px(p);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#cccccc" stroke-width="1"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#333">{label}</text>"##,
            y1 + 18.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#444" stroke-width="1"/>"##,
        x1 - x0,
        y1 - y0
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#333">percentile (log scale of 1/(1 − p))</text>"##,
        (x0 + x1) / 2.0,
        y1 + 42.0
    );
    let _ = writeln!(
        s,
        r##"<text x="24" y="{:.1}" font-size="13" text-anchor="middle" fill="#333" transform="rotate(-90 24 {:.1})">latency (log scale)</text>"##,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0
    );
    if r.latency_us.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="16" text-anchor="middle" fill="#a00">no requests were answered</text>"##,
            (x0 + x1) / 2.0,
            (y0 + y1) / 2.0
        );
    }
    // Curves and legend.
    let lx = x1 + 24.0;
    let mut ly = y0 + 6.0;
    for (i, t) in MsgType::ALL.iter().enumerate() {
        let Some(l) = r.latency_us.get(t.name()) else {
            continue;
        };
        let color = COLORS[i];
        let mut d = String::new();
        for (j, (p, v)) in l.curve.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1} ",
                if j == 0 { "M" } else { "L" },
                px(*p),
                py(*v as f64)
            );
        }
        let _ = writeln!(
            s,
            r#"<path d="{}" fill="none" stroke="{color}" stroke-width="2.2" stroke-linejoin="round"/>"#,
            d.trim_end()
        );
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="4"/>"#,
            lx + 22.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold" fill="#222">{} <tspan font-weight="normal" fill="#555">n = {}</tspan></text>"##,
            lx + 30.0,
            ly + 5.0,
            t.name(),
            l.count
        );
        for (k, line) in [
            format!(
                "p50 {}   p90 {}",
                human_us(l.p50 as f64),
                human_us(l.p90 as f64)
            ),
            format!(
                "p99 {}   p99.9 {}",
                human_us(l.p99 as f64),
                human_us(l.p99_9 as f64)
            ),
            format!("max {}", human_us(l.max as f64)),
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#333">{}</text>"##,
                lx + 30.0,
                ly + 23.0 + 16.0 * k as f64,
                escape(line)
            );
        }
        ly += 90.0;
    }
    let errors: Vec<String> = r
        .errors
        .iter()
        .take(5)
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(
        s,
        r##"<text x="{lx}" y="{:.1}" font-size="13" font-weight="bold" fill="#222">errors</text>"##,
        ly + 4.0
    );
    let lines = if errors.is_empty() {
        vec!["none".to_string()]
    } else {
        errors
    };
    for (k, e) in lines.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{lx}" y="{:.1}" font-size="12" fill="#333">{}</text>"##,
            ly + 22.0 + 16.0 * k as f64,
            escape(e)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// An HTML page with the chart and the tables of the summary.
pub fn html(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>reckon-sim load report</title>\n");
    s.push_str("<style>body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}pre{background:#f7f7f7;padding:10px}</style>\n</head>\n<body>\n");
    s.push_str(&svg(r));
    s.push_str("<table>\n<tr><th>type</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th><th>mean</th></tr>\n");
    for t in MsgType::ALL {
        if let Some(l) = r.latency_us.get(t.name()) {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                t.name(),
                l.count,
                escape(&human_us(l.p50 as f64)),
                escape(&human_us(l.p90 as f64)),
                escape(&human_us(l.p99 as f64)),
                escape(&human_us(l.p99_9 as f64)),
                escape(&human_us(l.p99_99 as f64)),
                escape(&human_us(l.max as f64)),
                escape(&human_us(l.mean))
            );
        }
    }
    s.push_str("</table>\n<pre>");
    s.push_str(&escape(&summary(r)));
    s.push_str("</pre>\n</body>\n</html>\n");
    s
}

/// Writes the JSON report to `path`.
pub fn write_json(r: &Report, path: &Path) -> std::io::Result<()> {
    std::fs::write(path, json(r))
}

/// Writes the chart to `path`: an HTML page if it ends in `.html`/`.htm`, else SVG.
pub fn write_chart(r: &Report, path: &Path) -> std::io::Result<()> {
    let is_html = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    std::fs::write(path, if is_html { html(r) } else { svg(r) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_us(812.0), "812 µs");
        assert_eq!(human_us(12_345.0), "12.35 ms");
        assert_eq!(human_us(1_200_000.0), "1.20 s");
        assert_eq!(tick_label(500.0), "500 µs");
        assert_eq!(tick_label(2000.0), "2 ms");
        assert_eq!(tick_label(100_000_000.0), "100 s");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b & 'c'"), "a&lt;b &amp; &apos;c&apos;");
    }
}
