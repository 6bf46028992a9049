//! What a load run reports: a text summary, a JSON report, and a chart
//! (SVG, or an HTML page around it) drawn by hand: latency by percentile,
//! throughput and latency over time, and the server's memory and disk
//! over time when they were sampled.

use crate::generator::IntervalLatency;
use crate::load::LoadConfig;
use crate::sample::{self, human_bytes, CpuTimes, Flatness, Sample};
use crate::workload::{Flow, MsgType};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// A generator thread this busy (share of the run) may have limited the run.
pub const BUSY_THREAD_LIMIT_PCT: f64 = 90.0;
/// A generator taking this share of the machine (percent) is said to compete with a server on it.
pub const SHARE_WARN_PCT: f64 = 25.0;
/// Throughput is compared over the first and last window of this length (or half the run).
pub const WINDOW: Duration = Duration::from_secs(60);

/// The options a run was given, as recorded in the report.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    /// What was driven: "reckon" or "redis".
    pub target: String,
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
    /// Generator threads.
    pub threads: usize,
    /// Most requests per BATCH frame (1: no BATCH frames).
    pub batch: usize,
    /// Every account had a monthly and a yearly hard budget per unit.
    pub budgets: bool,
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

/// Schedule lag: how late the generator started each open-loop flow
/// behind its scheduled arrival, µs: its own lateness (timer granularity,
/// a busy thread), which is part of the latency reported.
#[derive(Clone, Debug, Serialize)]
pub struct Lag {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: u64,
    /// Latest.
    pub max: u64,
}

/// How the generator ran, what it cost, and whether it limited the run.
#[derive(Clone, Debug, Serialize)]
pub struct GeneratorReport {
    /// Generator threads.
    pub threads: usize,
    /// Most requests per BATCH frame.
    pub batch: usize,
    /// Frames (Redis: commands) written.
    pub frames: u64,
    /// Requests written, BUSY retries included.
    pub requests_sent: u64,
    /// Requests per frame written.
    pub requests_per_frame: f64,
    /// User CPU seconds of the whole generator process during the load.
    pub cpu_user_s: f64,
    /// System CPU seconds.
    pub cpu_sys_s: f64,
    /// User + system.
    pub cpu_s: f64,
    /// CPU seconds per second of the run: cores the generator kept busy.
    pub cores_used: f64,
    /// Cores of the machine.
    pub machine_cores: usize,
    /// `cores_used` as a share of the machine, percent.
    pub share_of_machine_pct: f64,
    /// CPU µs the generator spent per request answered.
    pub cpu_us_per_request: f64,
    /// The busiest generator thread's CPU time as a share of the run, percent.
    pub busiest_thread_busy_pct: f64,
    /// Open loop: schedule lag of the flows' first requests.
    pub schedule_lag_us: Option<Lag>,
    /// True when a generator thread was busy enough to have limited the run.
    pub may_have_limited: bool,
    /// True when the generator took [`SHARE_WARN_PCT`] or more of the machine.
    pub competed_for_cpu: bool,
    /// The verdict in words.
    pub verdict: String,
}

/// Requests answered per interval, with the latency of each interval.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// Length of one interval, seconds; interval i covers [i, i + 1) × interval_s from the start.
    pub interval_s: f64,
    /// Requests answered in each interval (the drain after the deadline included); they sum to `requests`.
    pub requests: Vec<u64>,
    /// Median latency of each interval, µs (0: none answered).
    pub p50_us: Vec<u64>,
    /// 99th percentile of each interval, µs.
    pub p99_us: Vec<u64>,
    /// Slowest of each interval, µs.
    pub max_us: Vec<u64>,
    /// Latency samples that reached their interval's summary too late to be in it.
    pub late_latency_samples: u64,
    /// Seconds of load before the deadline (or before the run was told to stop).
    pub load_s: f64,
    /// Length of the first and last windows compared, seconds.
    pub window_s: f64,
    /// Requests per second over the first window of the load.
    pub first_window_per_s: f64,
    /// Requests per second over the last window before the deadline.
    pub last_window_per_s: f64,
    /// Last window over first, percent.
    pub last_vs_first_pct: f64,
}

/// The server's memory, disk and CPU over the run, and their verdicts.
#[derive(Clone, Debug, Serialize)]
pub struct SteadyState {
    /// Seconds between samples.
    pub every_s: f64,
    /// The server's process id, if sampled.
    pub server_pid: Option<u32>,
    /// The data directory, if sampled.
    pub data_dir: Option<String>,
    /// The samples.
    pub samples: Vec<Sample>,
    /// Whether RSS stayed flat after `flat_after`.
    pub rss: Option<Flatness>,
    /// Whether the data directory stayed flat after `flat_after` (outside
    /// the history store, when that was sampled: it is judged against its
    /// retention instead).
    pub disk: Option<Flatness>,
    /// The history store: its retention and largest size sampled, and
    /// whether it stayed within the retention plus one segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryBound>,
}

/// The retention-capped history store over a run.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryBound {
    /// The configured retention, bytes.
    pub retention_bytes: u64,
    /// Largest size sampled, bytes.
    pub max_bytes: u64,
    /// Whether `max_bytes` ≤ retention + one segment being written.
    pub within: bool,
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
    /// Latency of every request together, µs.
    pub latency_all_us: Option<Latency>,
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
    /// The generator: threads, frames, CPU, and whether it limited the run.
    pub generator: GeneratorReport,
    /// Throughput and latency over time.
    pub throughput: Throughput,
    /// The server's RSS and data directory over time, when sampled.
    pub steady_state: Option<SteadyState>,
}

/// What [`build`] turns into a [`Report`].
pub(crate) struct Inputs<'a> {
    /// The run's options.
    pub config: &'a LoadConfig,
    /// "reckon" or "redis".
    pub target: &'a str,
    /// How accounts were provisioned.
    pub provisioning: Provisioning,
    /// Time from the first request to the last answer.
    pub elapsed: Duration,
    /// Latency histograms (µs) in [`MsgType::ALL`] order.
    pub latency: &'a [Histogram<u64>; 4],
    /// SUCCESS answers in [`MsgType::ALL`] order.
    pub succeeded: [u64; 4],
    /// Flows completed in [`Flow::ALL`] order.
    pub flows: [u64; 5],
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
    /// Generator threads.
    pub threads: usize,
    /// Frames written.
    pub frames: u64,
    /// Requests written.
    pub sent: u64,
    /// The generator's CPU time during the load.
    pub cpu: CpuTimes,
    /// Each generator thread's CPU time during the load.
    pub thread_cpu: &'a [Duration],
    /// Open-loop schedule lag, µs.
    pub lag: &'a Histogram<u64>,
    /// Requests answered per interval.
    pub series: &'a [u64],
    /// Latency per interval.
    pub intervals: &'a BTreeMap<u64, IntervalLatency>,
    /// Latency samples that missed their interval.
    pub late_interval_samples: u64,
    /// Length of an interval.
    pub interval: Duration,
    /// How long the load ran before the deadline, or before it was told to stop.
    pub load: Duration,
    /// Samples of the server, when taken.
    pub samples: Option<Vec<Sample>>,
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

/// Requests per second over the first and last windows of the load:
/// (window seconds, first, last, last/first %).
pub fn windows(series: &[u64], interval: Duration, duration: Duration) -> (f64, f64, f64, f64) {
    let step = interval.as_secs_f64().max(1e-9);
    // Whole intervals of the load proper (the drain after the deadline or
    // the stop is not compared).
    let load = ((duration.as_secs_f64() / step).floor() as usize).max(1);
    let w = ((WINDOW.as_secs_f64() / step).ceil() as usize)
        .min((load / 2).max(1))
        .max(1);
    let at = |i: usize| series.get(i).copied().unwrap_or(0);
    let first: u64 = (0..w).map(at).sum();
    let last: u64 = (load.saturating_sub(w)..load).map(at).sum();
    let secs = w as f64 * step;
    let (f, l) = (first as f64 / secs, last as f64 / secs);
    let pct = if f > 0.0 { l / f * 100.0 } else { 0.0 };
    (secs, f, l, (pct * 10.0).round() / 10.0)
}

fn generator_report(i: &Inputs<'_>, requests: u64, elapsed_s: f64) -> GeneratorReport {
    let c = i.config;
    let cpu_s = i.cpu.total().as_secs_f64();
    let cores_used = if elapsed_s > 0.0 {
        cpu_s / elapsed_s
    } else {
        0.0
    };
    let machine_cores = sample::cores();
    let busiest = i
        .thread_cpu
        .iter()
        .map(|d| d.as_secs_f64())
        .fold(0.0, f64::max);
    let busiest_pct = if elapsed_s > 0.0 {
        busiest / elapsed_s * 100.0
    } else {
        0.0
    };
    let limited = busiest_pct >= BUSY_THREAD_LIMIT_PCT;
    let share = cores_used / machine_cores as f64 * 100.0;
    let lag = (c.rate > 0 && !i.lag.is_empty()).then(|| Lag {
        p50: i.lag.value_at_quantile(0.5),
        p99: i.lag.value_at_quantile(0.99),
        p99_9: i.lag.value_at_quantile(0.999),
        max: i.lag.max(),
    });
    let competing = share >= SHARE_WARN_PCT;
    let mut verdict = if limited {
        format!(
            "the generator may have limited this run: its busiest thread was {busiest_pct:.0} % busy (try more --threads{})",
            if c.batch <= 1 && i.target == "reckon" { " or --batch" } else { "" }
        )
    } else if competing {
        format!(
            "its threads kept up (busiest {busiest_pct:.0} % busy), but it took {cores_used:.2} of the {machine_cores} cores ({share:.0} %): a server on this machine had that much less (fewer connections, or the generator on another machine, leave it more)"
        )
    } else {
        format!(
            "not the bottleneck: its busiest thread was {busiest_pct:.0} % busy; it took {cores_used:.2} of the {machine_cores} cores ({share:.0} %)"
        )
    };
    if let Some(l) = &lag {
        if l.p99 > 1000 {
            verdict.push_str(&format!(
                "; open loop: its schedule lag (p99 {}) is part of the latency reported",
                human_us(l.p99 as f64)
            ));
        }
    }
    let round = |v: f64, k: f64| (v * k).round() / k;
    GeneratorReport {
        threads: i.threads,
        batch: c.batch,
        frames: i.frames,
        requests_sent: i.sent,
        requests_per_frame: if i.frames > 0 {
            round(i.sent as f64 / i.frames as f64, 100.0)
        } else {
            0.0
        },
        cpu_user_s: round(i.cpu.user.as_secs_f64(), 1000.0),
        cpu_sys_s: round(i.cpu.sys.as_secs_f64(), 1000.0),
        cpu_s: round(cpu_s, 1000.0),
        cores_used: round(cores_used, 1000.0),
        machine_cores,
        share_of_machine_pct: round(share, 10.0),
        cpu_us_per_request: if requests > 0 {
            round(cpu_s * 1e6 / requests as f64, 100.0)
        } else {
            0.0
        },
        busiest_thread_busy_pct: round(busiest_pct, 10.0),
        schedule_lag_us: lag,
        may_have_limited: limited,
        competed_for_cpu: competing,
        verdict,
    }
}

fn throughput(i: &Inputs<'_>) -> Throughput {
    let n = i.series.len();
    let pick = |f: fn(&IntervalLatency) -> u64| -> Vec<u64> {
        (0..n as u64)
            .map(|k| i.intervals.get(&k).map_or(0, f))
            .collect()
    };
    let (window_s, first, last, pct) = windows(i.series, i.interval, i.load);
    Throughput {
        interval_s: i.interval.as_secs_f64(),
        requests: i.series.to_vec(),
        p50_us: pick(|l| l.p50),
        p99_us: pick(|l| l.p99),
        max_us: pick(|l| l.max),
        late_latency_samples: i.late_interval_samples,
        load_s: i.load.as_secs_f64(),
        window_s,
        first_window_per_s: first.round(),
        last_window_per_s: last.round(),
        last_vs_first_pct: pct,
    }
}

fn steady_state(i: &Inputs<'_>) -> Option<SteadyState> {
    Some(judge_samples(i.samples.clone()?, &i.config.sampling))
}

/// Judges a run's samples: RSS and the data directory outside its history
/// for flatness, the history store against its retention.
fn judge_samples(samples: Vec<Sample>, s: &sample::SamplingConfig) -> SteadyState {
    let after = s.flat_after.as_secs_f64();
    let tol = s.tolerance_pct;
    let series = |f: fn(&Sample) -> Option<u64>| -> Vec<(f64, u64)> {
        samples
            .iter()
            .filter_map(|x| f(x).map(|v| (x.t_s, v)))
            .collect()
    };
    SteadyState {
        every_s: s.every.as_secs_f64(),
        server_pid: s.server_pid,
        data_dir: s.data_dir.as_ref().map(|d| d.display().to_string()),
        rss: s
            .server_pid
            .map(|_| sample::flatness(&series(|x| x.rss_bytes), after, tol)),
        disk: s.data_dir.as_ref().map(|_| {
            sample::flatness(
                &series(|x| {
                    x.disk_bytes
                        .map(|d| d.saturating_sub(x.history_bytes.unwrap_or(0)))
                }),
                after,
                tol,
            )
        }),
        history: samples
            .iter()
            .filter_map(|x| x.history_bytes)
            .max()
            .map(|max_bytes| HistoryBound {
                retention_bytes: s.history_retention_bytes,
                max_bytes,
                within: max_bytes
                    <= s.history_retention_bytes
                        + reckon_balances::snapstore::HISTORY_SEGMENT_BYTES_MAX,
            }),
        samples,
    }
}

/// Assembles the report of a run.
pub(crate) fn build(inputs: Inputs<'_>) -> Report {
    let c = inputs.config;
    let mut latency_us = BTreeMap::new();
    let mut requests = 0;
    let mut all = crate::generator::histogram();
    for t in MsgType::ALL {
        let h = &inputs.latency[t.index()];
        requests += h.len();
        let _ = all.add(h);
        if !h.is_empty() {
            latency_us.insert(
                t.name().to_string(),
                latency(h, inputs.succeeded[t.index()]),
            );
        }
    }
    let elapsed_s = inputs.elapsed.as_secs_f64();
    let generator = generator_report(&inputs, requests, elapsed_s);
    let throughput = throughput(&inputs);
    let steady_state = steady_state(&inputs);
    Report {
        tool: format!(
            "reckon-sim {}",
            if inputs.target == "redis" {
                "redis"
            } else {
                "load"
            }
        ),
        version: env!("CARGO_PKG_VERSION").into(),
        config: RunConfig {
            target: inputs.target.to_string(),
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
            threads: inputs.threads,
            batch: c.batch,
            budgets: c.budgets,
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
        latency_all_us: (!all.is_empty()).then(|| latency(&all, inputs.succeeded.iter().sum())),
        errors: inputs.errors,
        service_results: inputs.service_results,
        final_unit_grants: inputs.final_units,
        dropped_arrivals: inputs.dropped,
        units_debited: inputs.debited,
        verification: inputs.verification,
        generator,
        throughput,
        steady_state,
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
        "{}: {} requests in {:.1} s = {:.0} requests/s ({} loop{}, {} connection(s) × {} in flight{}, {} generator thread(s), {} accounts, mix {})",
        r.tool,
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
        if c.batch > 1 {
            format!(", BATCH frames of up to {}", c.batch)
        } else {
            String::new()
        },
        c.threads,
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
    if let Some(l) = &r.latency_all_us {
        let _ = writeln!(
            out,
            "all requests: p50 {}, p99 {}, p99.9 {}, max {}",
            human_us(l.p50 as f64),
            human_us(l.p99 as f64),
            human_us(l.p99_9 as f64),
            human_us(l.max as f64)
        );
    }
    let t = &r.throughput;
    let _ = writeln!(
        out,
        "throughput: first {:.0} s {:.0}/s, last {:.0} s {:.0}/s ({:.1} % of the first){}",
        t.window_s,
        t.first_window_per_s,
        t.window_s,
        t.last_window_per_s,
        t.last_vs_first_pct,
        if t.load_s + 1e-9 < c.duration_s {
            format!("; the load was stopped after {:.1} s", t.load_s)
        } else {
            String::new()
        }
    );
    let g = &r.generator;
    let _ = writeln!(
        out,
        "generator: {:.2} CPU-s (user {:.2} + sys {:.2}) = {:.2} cores, {:.0} % of {} cores; {:.1} µs CPU per request; {:.1} requests per frame",
        g.cpu_s, g.cpu_user_s, g.cpu_sys_s, g.cores_used, g.share_of_machine_pct, g.machine_cores, g.cpu_us_per_request, g.requests_per_frame
    );
    if let Some(l) = &g.schedule_lag_us {
        let _ = writeln!(
            out,
            "open loop schedule lag (the generator's lateness in starting flows; included in the latency): p50 {}, p99 {}, p99.9 {}, max {}",
            human_us(l.p50 as f64),
            human_us(l.p99 as f64),
            human_us(l.p99_9 as f64),
            human_us(l.max as f64)
        );
    }
    let _ = writeln!(out, "generator verdict: {}", g.verdict);
    if let Some(st) = &r.steady_state {
        type Get = fn(&Sample) -> Option<u64>;
        let rss: Get = |x| x.rss_bytes;
        let disk: Get = |x| {
            x.disk_bytes
                .map(|d| d.saturating_sub(x.history_bytes.unwrap_or(0)))
        };
        let disk_name = if st.history.is_some() {
            "data directory outside its history"
        } else {
            "data directory"
        };
        for (what, f, get) in [("server RSS", &st.rss, rss), (disk_name, &st.disk, disk)] {
            let Some(f) = f else { continue };
            let values: Vec<u64> = st.samples.iter().filter_map(get).collect();
            let (Some(first), Some(last)) = (values.first(), values.last()) else {
                let _ = writeln!(out, "{what}: could not be read");
                continue;
            };
            let judged = match f.verdict.as_str() {
                "too few samples" => format!(
                    "from {:.0} s on: too few samples to judge (is the run shorter than --flat-after?)",
                    f.after_s
                ),
                verdict => format!(
                    "from {:.0} s on ({} samples): {} .. {} (spread {}): {}",
                    f.after_s,
                    f.samples,
                    human_bytes(f.min),
                    human_bytes(f.max),
                    if f.spread_pct < 0.0 {
                        "unbounded".to_string()
                    } else {
                        format!("{:.1} %", f.spread_pct)
                    },
                    if verdict == "flat" {
                        format!("FLAT (within {:.0} %)", f.tolerance_pct)
                    } else {
                        format!("NOT FLAT (more than {:.0} %)", f.tolerance_pct)
                    }
                ),
            };
            let _ = writeln!(
                out,
                "{what}: {} at the start, {} at the end; {judged}",
                human_bytes(*first),
                human_bytes(*last)
            );
        }
        if let Some(h) = &st.history {
            let _ = writeln!(
                out,
                "history store: at most {} against a retention of {} (+ the segment being written): {}",
                human_bytes(h.max_bytes),
                human_bytes(h.retention_bytes),
                if h.within { "WITHIN" } else { "BEYOND ITS RETENTION" }
            );
        }
        let written: Vec<u64> = st.samples.iter().filter_map(|x| x.written_bytes).collect();
        if let (Some(first), Some(last)) = (written.first(), written.last()) {
            let bytes = last.saturating_sub(*first);
            let _ = writeln!(
                out,
                "server wrote {} to storage during the load: {} per request",
                human_bytes(bytes),
                human_bytes(bytes / r.requests.max(1))
            );
        }
        let cores: Vec<f64> = st.samples.iter().filter_map(|x| x.server_cores).collect();
        if !cores.is_empty() {
            let _ = writeln!(
                out,
                "server CPU: {:.2} cores on average over the samples (max {:.2})",
                cores.iter().sum::<f64>() / cores.len() as f64,
                cores.iter().copied().fold(0.0, f64::max)
            );
        }
    }
    out
}

/// Whether the run held steady: RSS and disk flat where sampled, and
/// throughput in the last window at least `min_last_vs_first_pct` of the
/// first. The reasons it did not, if any.
pub fn steady_failures(r: &Report, min_last_vs_first_pct: f64) -> Vec<String> {
    let mut why = Vec::new();
    if r.throughput.last_vs_first_pct < min_last_vs_first_pct {
        why.push(format!(
            "throughput in the last window was {:.1} % of the first (needs ≥ {min_last_vs_first_pct:.0} %)",
            r.throughput.last_vs_first_pct
        ));
    }
    match &r.steady_state {
        None => why.push("nothing was sampled (give --server-pid and/or --data-dir)".into()),
        Some(st) => {
            for (what, f) in [("server RSS", &st.rss), ("data directory", &st.disk)] {
                if let Some(f) = f {
                    if !f.is_flat() {
                        why.push(format!("{what}: {}", f.verdict));
                    }
                }
            }
            if let Some(h) = st.history.as_ref().filter(|h| !h.within) {
                why.push(format!(
                    "history store: {} bytes, beyond its retention of {}",
                    h.max_bytes, h.retention_bytes
                ));
            }
        }
    }
    why
}

/// Two JSON reports side by side (e.g. Redis as the baseline, Reckon as
/// the candidate): throughput, reserve-commit pairs, latency of all
/// requests, errors, the generator's cores, and the candidate's ratios.
pub fn compare(
    baseline: &serde_json::Value,
    candidate: &serde_json::Value,
) -> Result<String, String> {
    struct Row {
        name: String,
        per_s: f64,
        pairs_per_s: f64,
        p50: u64,
        p99: u64,
        p999: u64,
        errors: u64,
        cores: f64,
        shape: String,
    }
    let row = |v: &serde_json::Value, which: &str| -> Result<Row, String> {
        let f = |path: &[&str]| -> Option<&serde_json::Value> {
            path.iter().try_fold(v, |v, k| v.get(*k))
        };
        let num = |path: &[&str]| -> Result<f64, String> {
            f(path)
                .and_then(|x| x.as_f64())
                .ok_or_else(|| format!("the {which} report has no {}", path.join(".")))
        };
        let elapsed = num(&["elapsed_s"])?;
        let pairs = f(&["flows_completed", "reserve-commit"])
            .and_then(|x| x.as_f64())
            .unwrap_or(0.0);
        let errors = f(&["errors"])
            .and_then(|e| e.as_object())
            .map_or(0, |m| m.values().filter_map(|x| x.as_u64()).sum());
        let text = |path: &[&str]| f(path).and_then(|x| x.as_str()).unwrap_or("?").to_string();
        Ok(Row {
            name: format!(
                "{} {}",
                text(&["config", "target"]),
                text(&["config", "server"])
            ),
            per_s: num(&["requests_per_s"])?,
            pairs_per_s: if elapsed > 0.0 { pairs / elapsed } else { 0.0 },
            p50: num(&["latency_all_us", "p50"])? as u64,
            p99: num(&["latency_all_us", "p99"])? as u64,
            p999: num(&["latency_all_us", "p99.9"])? as u64,
            errors,
            cores: num(&["generator", "cores_used"]).unwrap_or(0.0),
            shape: format!(
                "{} conn × {} in flight, {} s, {} loop, mix {}",
                f(&["config", "connections"]).map_or("?".into(), |x| x.to_string()),
                f(&["config", "depth"]).map_or("?".into(), |x| x.to_string()),
                f(&["config", "duration_s"]).map_or("?".into(), |x| x.to_string()),
                text(&["config", "mode"]),
                text(&["config", "mix"])
            ),
        })
    };
    let (a, b) = (row(baseline, "baseline")?, row(candidate, "candidate")?);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:>12} {:>16} {:>10} {:>10} {:>10} {:>8} {:>10}",
        "", "requests/s", "reserve+commit/s", "p50", "p99", "p99.9", "errors", "gen cores"
    );
    for r in [&a, &b] {
        let _ = writeln!(
            out,
            "{:<32} {:>12.0} {:>16.0} {:>10} {:>10} {:>10} {:>8} {:>10.2}",
            r.name,
            r.per_s,
            r.pairs_per_s,
            human_us(r.p50 as f64),
            human_us(r.p99 as f64),
            human_us(r.p999 as f64),
            r.errors,
            r.cores
        );
    }
    if a.shape != b.shape {
        let _ = writeln!(
            out,
            "NOTE: the runs differ in shape:\n  {}\n  {}",
            a.shape, b.shape
        );
    } else {
        let _ = writeln!(out, "both: {}", a.shape);
    }
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::INFINITY };
    let _ = writeln!(
        out,
        "{} / {}: {:.2}× the requests/s; p50 {:.2}×, p99 {:.2}× (below 1: faster)",
        b.name.split(' ').next().unwrap_or("candidate"),
        a.name.split(' ').next().unwrap_or("baseline"),
        ratio(b.per_s, a.per_s),
        ratio(b.p50 as f64, a.p50 as f64),
        ratio(b.p99 as f64, a.p99 as f64)
    );
    Ok(out)
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

/// Height of the panels below the latency chart.
const PANEL_H: f64 = 320.0;

/// The chart as a standalone SVG document: latency (log scale) by
/// percentile (log scale of 1/(1 − p), 50 % to 99.999 %), one curve per
/// message type, with a legend of the main percentiles; below it
/// throughput and latency over time; below that, when sampled, the
/// server's RSS and data directory over time.
pub fn svg(r: &Report) -> String {
    let panels = 1.0 + r.steady_state.is_some() as u8 as f64;
    let (width, height) = (1040.0, 600.0 + PANEL_H * panels);
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
    throughput_panel(&mut s, r, 600.0);
    if let Some(st) = &r.steady_state {
        steady_panel(&mut s, r, st, 600.0 + PANEL_H);
    }
    s.push_str("</svg>\n");
    s
}

/// Round axis steps: 1, 2 or 5 × 10^k, about `n` of them up to `max`.
fn linear_ticks(max: f64, n: usize) -> (f64, Vec<f64>) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, vec![0.0, 1.0]);
    }
    let raw = max / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let top = (max / step).ceil() * step;
    let ticks = (0..=((top / step).round() as usize))
        .map(|i| i as f64 * step)
        .collect();
    (top, ticks)
}

/// A count, readably: `950`, `12.5k`, `1.20M`.
fn human_count(v: f64) -> String {
    if v < 1e3 {
        format!("{v:.0}")
    } else if v < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{:.2}M", v / 1e6)
    }
}

/// The time axis of a panel: seconds from 0 to `end`.
fn time_axis(s: &mut String, end: f64, x0: f64, x1: f64, y1: f64) -> impl Fn(f64) -> f64 {
    let (top, ticks) = linear_ticks(end.max(1.0), 8);
    let px = move |t: f64| x0 + t / top * (x1 - x0);
    for t in ticks {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{y1:.1}" stroke="#eeeeee" stroke-width="1"/>"##,
            y1 - (PANEL_H - 110.0)
        );
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#333">{t:.0} s</text>"##,
            y1 + 18.0
        );
    }
    px
}

/// Requests per second over time (left axis) and each interval's p50 and
/// p99 latency (right axis, log scale).
fn throughput_panel(s: &mut String, r: &Report, top: f64) {
    let t = &r.throughput;
    let (x0, x1, y0, y1) = (90.0, 730.0, top + 50.0, top + PANEL_H - 60.0);
    let step = t.interval_s.max(1e-9);
    let rates: Vec<f64> = t.requests.iter().map(|n| *n as f64 / step).collect();
    let _ = writeln!(
        s,
        r##"<text x="{x0}" y="{:.1}" font-size="16" font-weight="bold" fill="#222">throughput and latency over time</text>"##,
        top + 30.0
    );
    let end = rates.len() as f64 * step;
    let px = time_axis(s, end, x0, x1, y1);
    let (ymax, yticks) = linear_ticks(rates.iter().copied().fold(0.0, f64::max) * 1.05, 5);
    let py = |v: f64| y1 - v / ymax * (y1 - y0);
    for v in yticks {
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#dddddd" stroke-width="1"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end" fill="#1f77b4">{}/s</text>"##,
            x0 - 8.0,
            y + 4.0,
            human_count(v)
        );
    }
    // The deadline: what comes after it is the drain.
    let xd = px(r.config.duration_s);
    let _ = writeln!(
        s,
        r##"<line x1="{xd:.1}" y1="{y0}" x2="{xd:.1}" y2="{y1}" stroke="#999" stroke-width="1" stroke-dasharray="6 4"/>"##
    );
    // Latency on a log axis at the right.
    let lat: Vec<u64> = t
        .p99_us
        .iter()
        .chain(&t.p50_us)
        .copied()
        .filter(|v| *v > 0)
        .collect();
    let (lo, hi) = lat
        .iter()
        .fold((u64::MAX, 0), |(a, b), v| (a.min(*v), b.max(*v)));
    let (dmin, dmax) = if hi == 0 {
        (1.0, 4.0)
    } else {
        let a = (lo as f64).log10().floor();
        (a, (hi as f64).log10().ceil().max(a + 1.0))
    };
    let ly = |us: f64| y1 - (us.max(1.0).log10() - dmin) / (dmax - dmin) * (y1 - y0);
    let mut d = dmin;
    while d <= dmax + 1e-9 {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#e6550d">{}</text>"##,
            x1 + 6.0,
            ly(10f64.powf(d)) + 4.0,
            escape(&tick_label(10f64.powf(d)))
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#444" stroke-width="1"/>"##,
        x1 - x0,
        y1 - y0
    );
    let line = |s: &mut String, pts: String, color: &str, width: f64, dash: &str| {
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"{dash}/>"#,
            pts.trim_end()
        );
    };
    let mut pts = String::new();
    for (i, v) in rates.iter().enumerate() {
        let _ = write!(
            pts,
            "{:.1},{:.1} {:.1},{:.1} ",
            px(i as f64 * step),
            py(*v),
            px((i + 1) as f64 * step),
            py(*v)
        );
    }
    line(s, pts, "#1f77b4", 2.0, "");
    for (series, color, dash) in [
        (&t.p99_us, "#e6550d", ""),
        (&t.p50_us, "#e6550d", r#" stroke-dasharray="4 3""#),
    ] {
        let mut pts = String::new();
        for (i, v) in series.iter().enumerate() {
            if *v > 0 {
                let _ = write!(
                    pts,
                    "{:.1},{:.1} ",
                    px((i as f64 + 0.5) * step),
                    ly(*v as f64)
                );
            }
        }
        line(s, pts, color, 1.4, dash);
    }
    let lx = x1 + 60.0;
    for (k, (text, color)) in [
        ("requests/s (left)".to_string(), "#1f77b4"),
        ("p99 latency (right)".to_string(), "#e6550d"),
        ("p50 latency, dashed".to_string(), "#e6550d"),
        (
            format!(
                "first {:.0} s: {}/s",
                t.window_s,
                human_count(t.first_window_per_s)
            ),
            "#222",
        ),
        (
            format!(
                "last {:.0} s: {}/s",
                t.window_s,
                human_count(t.last_window_per_s)
            ),
            "#222",
        ),
        (format!("last/first: {:.1} %", t.last_vs_first_pct), "#222"),
        (
            format!("generator: {:.2} cores", r.generator.cores_used),
            "#555",
        ),
        (
            format!(
                "busiest generator thread {:.0} % busy",
                r.generator.busiest_thread_busy_pct
            ),
            "#555",
        ),
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            s,
            r##"<text x="{lx}" y="{:.1}" font-size="13" fill="{color}">{}</text>"##,
            y0 + 14.0 + 20.0 * k as f64,
            escape(text)
        );
    }
    if rates.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="16" text-anchor="middle" fill="#a00">no requests were answered</text>"##,
            (x0 + x1) / 2.0,
            (y0 + y1) / 2.0
        );
    }
}

/// The server's RSS and data directory over time, with the point from
/// which flatness is judged.
fn steady_panel(s: &mut String, r: &Report, st: &SteadyState, top: f64) {
    let (x0, x1, y0, y1) = (90.0, 730.0, top + 50.0, top + PANEL_H - 60.0);
    let _ = writeln!(
        s,
        r##"<text x="{x0}" y="{:.1}" font-size="16" font-weight="bold" fill="#222">server memory and disk over time</text>"##,
        top + 30.0
    );
    let end = st
        .samples
        .iter()
        .map(|x| x.t_s)
        .fold(r.config.duration_s, f64::max);
    let px = time_axis(s, end, x0, x1, y1);
    let max = st
        .samples
        .iter()
        .flat_map(|x| [x.rss_bytes.unwrap_or(0), x.disk_bytes.unwrap_or(0)])
        .max()
        .unwrap_or(0) as f64;
    let (ymax, yticks) = linear_ticks(max * 1.05, 5);
    let py = |v: f64| y1 - v / ymax * (y1 - y0);
    for v in yticks {
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#dddddd" stroke-width="1"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end" fill="#333">{}</text>"##,
            x0 - 8.0,
            y + 4.0,
            escape(&human_bytes(v as u64))
        );
    }
    let after = r
        .steady_state
        .as_ref()
        .and_then(|st| st.rss.as_ref().or(st.disk.as_ref()))
        .map_or(0.0, |f| f.after_s);
    let xa = px(after);
    let _ = writeln!(
        s,
        r##"<line x1="{xa:.1}" y1="{y0}" x2="{xa:.1}" y2="{y1}" stroke="#999" stroke-width="1" stroke-dasharray="6 4"/>"##
    );
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#444" stroke-width="1"/>"##,
        x1 - x0,
        y1 - y0
    );
    let lx = x1 + 24.0;
    let mut k = 0;
    for (name, f, get, color) in [
        (
            "server RSS",
            &st.rss,
            (|x: &Sample| x.rss_bytes) as fn(&Sample) -> Option<u64>,
            "#2ca02c",
        ),
        (
            if st.history.is_some() {
                "data dir outside history"
            } else {
                "data directory"
            },
            &st.disk,
            |x: &Sample| {
                x.disk_bytes
                    .map(|d| d.saturating_sub(x.history_bytes.unwrap_or(0)))
            },
            "#9467bd",
        ),
    ] {
        let Some(f) = f else { continue };
        let pts: String = st
            .samples
            .iter()
            .filter_map(|x| get(x).map(|v| format!("{:.1},{:.1} ", px(x.t_s), py(v as f64))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"/>"#,
            pts.trim_end()
        );
        for line in [
            format!("{name}: {}", f.verdict),
            format!(
                "after {:.0} s: {} .. {}",
                f.after_s,
                human_bytes(f.min),
                human_bytes(f.max)
            ),
        ] {
            let _ = writeln!(
                s,
                r##"<text x="{lx}" y="{:.1}" font-size="13" fill="{color}">{}</text>"##,
                y0 + 14.0 + 20.0 * k as f64,
                escape(&line)
            );
            k += 1;
        }
    }
    if let Some(h) = &st.history {
        let color = "#8c564b";
        let pts: String = st
            .samples
            .iter()
            .filter_map(|x| {
                x.history_bytes
                    .map(|v| format!("{:.1},{:.1} ", px(x.t_s), py(v as f64)))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="4 3"/>"#,
            pts.trim_end()
        );
        for line in [
            format!(
                "history store: {}",
                if h.within {
                    "within retention"
                } else {
                    "beyond retention"
                }
            ),
            format!(
                "max {} of {}",
                human_bytes(h.max_bytes),
                human_bytes(h.retention_bytes)
            ),
        ] {
            let _ = writeln!(
                s,
                r##"<text x="{lx}" y="{:.1}" font-size="13" fill="{color}">{}</text>"##,
                y0 + 14.0 + 20.0 * k as f64,
                escape(&line)
            );
            k += 1;
        }
    }
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
    fn first_and_last_windows_leave_out_the_drain() {
        // Ten minutes decaying from 1,000/s to 700/s in steps of a minute, then a drain.
        let mut series: Vec<u64> = (0..600).map(|i| 1000 - (i / 60) * 30).collect();
        series.push(5);
        let (w, first, last, pct) =
            windows(&series, Duration::from_secs(1), Duration::from_secs(600));
        assert_eq!(w, 60.0);
        assert_eq!(first, 1000.0);
        assert_eq!(last, 730.0);
        assert_eq!(pct, 73.0);
        // A short run compares halves; the drain interval (index 8) is not in the last.
        let short = [10, 10, 10, 10, 20, 20, 20, 20, 1];
        assert_eq!(
            windows(&short, Duration::from_secs(1), Duration::from_secs(8)),
            (4.0, 10.0, 20.0, 200.0)
        );
        // Longer intervals: a minute is one 60-s interval.
        // Stopped early at 12.5 s: the partial 13th second is not compared.
        let early = [5, 5, 5, 5, 5, 5, 9, 9, 9, 9, 9, 9, 1, 0];
        assert_eq!(
            windows(
                &early,
                Duration::from_secs(1),
                Duration::from_millis(12_500)
            ),
            (6.0, 5.0, 9.0, 180.0)
        );
        let (w, first, last, _) = windows(
            &[600, 1200, 1800],
            Duration::from_secs(60),
            Duration::from_secs(180),
        );
        assert_eq!((w, first, last), (60.0, 10.0, 30.0));
        assert_eq!(
            windows(&[], Duration::from_secs(1), Duration::from_secs(1)).3,
            0.0
        );
    }

    #[test]
    fn compare_reports_side_by_side_with_the_ratio() {
        let report = |target: &str, per_s: f64, p50: u64, p99: u64| {
            serde_json::json!({
                "config": {"target": target, "server": "127.0.0.1:1", "connections": 4, "depth": 256,
                           "duration_s": 10.0, "mode": "closed", "mix": "reserve-commit=1"},
                "elapsed_s": 10.0,
                "requests_per_s": per_s,
                "flows_completed": {"reserve-commit": (per_s * 5.0) as u64},
                "latency_all_us": {"p50": p50, "p99": p99, "p99.9": p99 * 2},
                "errors": {"BUSY": 3},
                "generator": {"cores_used": 0.25}
            })
        };
        let text = compare(
            &report("redis", 50_000.0, 1000, 4000),
            &report("reckon", 150_000.0, 500, 1000),
        )
        .unwrap();
        assert!(
            text.contains("reckon / redis: 3.00× the requests/s; p50 0.50×, p99 0.25×"),
            "{text}"
        );
        assert!(text.contains("both: 4 conn × 256 in flight"), "{text}");
        assert!(
            text.contains("75000"),
            "reserve+commit pairs per second: {text}"
        );
        let mut other = report("reckon", 1.0, 1, 1);
        other["config"]["depth"] = serde_json::json!(1);
        assert!(compare(&report("redis", 1.0, 1, 1), &other)
            .unwrap()
            .contains("NOTE: the runs differ"));
        assert!(compare(&serde_json::json!({}), &other).is_err());
    }

    #[test]
    fn history_is_judged_against_its_retention_and_the_rest_for_flatness() {
        let config = sample::SamplingConfig {
            server_pid: None,
            data_dir: Some("/nonexistent".into()),
            every: Duration::from_secs(10),
            flat_after: Duration::from_secs(120),
            tolerance_pct: 10,
            history_retention_bytes: 1000 << 20,
        };
        // History fills to its retention over 400 s while the rest
        // of the data directory holds at 500 MiB.
        let run = |history_cap: u64, rest_growth: u64| -> SteadyState {
            let samples = (0..=60u64)
                .map(|i| {
                    let history = (i * (25 << 20)).min(history_cap);
                    Sample {
                        t_s: i as f64 * 10.0,
                        disk_bytes: Some((500 << 20) + i * rest_growth + history),
                        history_bytes: Some(history),
                        ..Sample::default()
                    }
                })
                .collect();
            judge_samples(samples, &config)
        };
        let held = run(1000 << 20, 0);
        assert!(held.disk.as_ref().unwrap().is_flat(), "{:?}", held.disk);
        assert!(held.history.as_ref().unwrap().within);
        // Growth outside the history is a leak, whatever the retention.
        let leak = run(1000 << 20, 4 << 20);
        assert!(!leak.disk.as_ref().unwrap().is_flat());
        // History past its retention plus one segment is refused.
        let over = run(1100 << 20, 0);
        let h = over.history.as_ref().unwrap();
        assert!(!h.within && h.max_bytes == 1100 << 20, "{h:?}");
        // Just within: retention + the segment being written.
        assert!(run(1064 << 20, 0).history.unwrap().within);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b & 'c'"), "a&lt;b &amp; &apos;c&apos;");
    }
}
