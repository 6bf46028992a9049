//! What operators see: the admin HTTP listener (`/metrics`, `/healthz`,
//! `/readyz`, a status page at `/` polling `/status.json`) and the
//! counters behind it.
//!
//! The listener is bound before the data directory is recovered, so a
//! supervisor can tell "alive but recovering" (`/healthz` 200, `/readyz`
//! 503) from "dead". Counters are relaxed atomics in fixed tables,
//! incremented where answers are rendered; nothing on the request path
//! takes a lock or allocates for them. The journal's own counters are
//! copied by the server's housekeeping tick, never read from the writer's
//! loop. The text format is written by `prometheus-client` at scrape time
//! from these tables (a [`Collector`]), so labels stay bounded: message
//! kinds and result-code names are closed sets.
//!
//! The HTTP side is a small HTTP/1.1 responder (GET and HEAD, one request
//! per connection): a request head is at most [`HEAD_MAX`] bytes and must
//! arrive within [`REQUEST_TIMEOUT`], at most [`CONNECTIONS_MAX`] requests
//! are served at once, and anything else gets a 4xx and a close.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use reckon_balances::journal::{Health, JournalStats, Log2Histogram, RecoveryReport, LOG2_BUCKETS};
use reckon_protocol::codes::{AdminCode, ErrorCode, ResultCode};
use reckon_protocol::frame::Kind;
use reckon_protocol::message::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head (request line and headers) read, in bytes.
pub const HEAD_MAX: usize = 8 * 1024;
/// Time a client has to send its request head and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most admin requests served at once; more are closed unanswered.
pub const CONNECTIONS_MAX: usize = 32;

/// Where the server is in its life, as `/readyz` reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Opening and recovering the data directory.
    Recovering = 0,
    /// Recovered and accepting connections.
    Ready = 1,
    /// Stopped accepting (shutdown or a failed journal).
    Stopping = 2,
}

/// Result names in table order: `OK` for answers without a code (a
/// balance, a list), then each code table, then `OTHER` for codes this
/// version does not know. Names may repeat across tables; the scrape adds
/// such series up.
fn result_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = vec!["OK"];
        names.extend(ResultCode::ALL.iter().map(|c| c.name().unwrap_or("OTHER")));
        names.extend(AdminCode::ALL.iter().map(|c| c.name().unwrap_or("OTHER")));
        names.extend(ErrorCode::ALL.iter().map(|c| c.name().unwrap_or("OTHER")));
        names.push("OTHER");
        names
    })
}

const RESULT_OK: usize = 0;

fn result_index(answer: &Message) -> usize {
    let results = ResultCode::ALL.len();
    let admin = AdminCode::ALL.len();
    let errors = ErrorCode::ALL.len();
    let other = 1 + results + admin + errors;
    let position = |found: Option<usize>, base: usize| found.map_or(other, |i| base + i);
    match answer {
        Message::Cca(a) => position(ResultCode::ALL.iter().position(|c| *c == a.result_code), 1),
        Message::AdminResult(a) => position(
            AdminCode::ALL.iter().position(|c| *c == a.code),
            1 + results,
        ),
        Message::RateCardResult(a) => position(
            AdminCode::ALL.iter().position(|c| *c == a.code),
            1 + results,
        ),
        Message::Error(e) => position(
            ErrorCode::ALL.iter().position(|c| *c == e.code),
            1 + results + admin,
        ),
        _ => RESULT_OK,
    }
}

/// Kind rows: every wire kind, then one for frames whose kind could not
/// be read (malformed).
const KIND_MALFORMED: usize = Kind::ALL.len();

fn kind_index(kind: Kind) -> usize {
    Kind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_MALFORMED)
}

fn kind_name(index: usize) -> &'static str {
    Kind::ALL.get(index).map_or("MALFORMED", |k| k.name())
}

/// Most organisations counted apart (the first by label); the rest are
/// counted together as `other`, so the label set stays bounded.
pub const ORGS_MAX: usize = 32;
/// Organisation slots: 0 admin, then the named ones, then `other`.
const ORG_ADMIN: usize = 0;
const ORG_OTHER: usize = ORGS_MAX + 1;
const ORG_SLOTS: usize = ORGS_MAX + 2;

/// Whether an answer refuses what was asked (a credit-control result
/// other than success, an admin refusal, a protocol error).
fn is_denial(answer: &Message) -> bool {
    match answer {
        Message::Cca(a) => !a.result_code.is_success(),
        Message::AdminResult(a) => !a.code.is_ok(),
        Message::RateCardResult(a) => !a.code.is_ok(),
        Message::Error(_) => true,
        _ => false,
    }
}

/// Figures read from elsewhere by the server's housekeeping (the engine
/// in the writer's order, the disk) and kept for the admin listener.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Submissions waiting in the writer's queue.
    pub queue_depth: AtomicU64,
    /// Open charging sessions.
    pub sessions: AtomicU64,
    /// Open reservations.
    pub reservations: AtomicU64,
    /// Accounts.
    pub accounts: AtomicU64,
    /// Answers remembered for retransmissions.
    pub answers: AtomicU64,
    /// Approximate memory of the remembered answers, in bytes.
    pub answer_bytes: AtomicU64,
    /// Log position of the last request applied, as last read.
    pub applied_lsn: AtomicU64,
    /// Log position recovery reached at start.
    pub recovered_lsn: AtomicU64,
    /// Bytes of the write-ahead log's files.
    pub wal_bytes: AtomicU64,
    /// Bytes of every file in the data directory.
    pub data_dir_bytes: AtomicU64,
}

/// Bytes of the files under `dir` (recursively; unreadable entries count 0).
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The journal's counters as last copied (see [`Ops::copy_journal_stats`]).
#[derive(Debug, Default)]
struct JournalCopy {
    requests: AtomicU64,
    records: AtomicU64,
    syncs: AtomicU64,
    records_per_sync_max: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_pause_us_max: AtomicU64,
    checkpoint_work_us: AtomicU64,
    checkpoint_pauses_over_1ms: AtomicU64,
    durable_lsn: AtomicU64,
}

/// Counters of the native-protocol server and its state, shared by the
/// connections (which count) and the admin listener (which reads).
#[derive(Debug)]
pub struct Ops {
    phase: AtomicU8,
    health: OnceLock<Arc<Health>>,
    recovery: OnceLock<RecoveryReport>,
    /// Answers by request kind (row) and result (column).
    answers: Box<[AtomicU64]>,
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    journal: JournalCopy,
    /// The journal's counters themselves, for the histograms and the last
    /// checkpoint (relaxed loads at scrape time; the writer is not touched).
    journal_stats: OnceLock<Arc<JournalStats>>,
    /// Labels of the organisations counted apart, sorted by organisation id
    /// (see [`Ops::set_orgs`]).
    orgs: OnceLock<Vec<(u64, String)>>,
    /// Requests and denials by organisation slot.
    org_requests: Box<[AtomicU64]>,
    org_denials: Box<[AtomicU64]>,
    /// Answer latency by request kind (µs).
    latency: Box<[Log2Histogram]>,
    /// Figures the housekeeping reads in.
    pub gauges: Gauges,
    started: std::time::Instant,
}

impl Default for Ops {
    fn default() -> Self {
        let cells = (KIND_MALFORMED + 1) * result_names().len();
        Ops {
            phase: AtomicU8::new(Phase::Recovering as u8),
            health: OnceLock::new(),
            recovery: OnceLock::new(),
            answers: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            connections_open: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            journal: JournalCopy::default(),
            journal_stats: OnceLock::new(),
            orgs: OnceLock::new(),
            org_requests: (0..ORG_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            org_denials: (0..ORG_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..=KIND_MALFORMED)
                .map(|_| Log2Histogram::default())
                .collect(),
            gauges: Gauges::default(),
            started: std::time::Instant::now(),
        }
    }
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<Ops>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Ops {
    /// Counts an answer to a request of `kind` (`None`: a frame too
    /// malformed to have one).
    pub fn answered(&self, kind: Option<Kind>, answer: &Message) {
        let row = kind.map_or(KIND_MALFORMED, kind_index);
        let cell = row * result_names().len() + result_index(answer);
        if let Some(c) = self.answers.get(cell) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an answer of a request an organisation (or the admin) sent,
    /// `elapsed` after it was read.
    pub fn answered_by(
        &self,
        kind: Option<Kind>,
        org: usize,
        answer: &Message,
        elapsed: std::time::Duration,
    ) {
        self.answered(kind, answer);
        let bump = |table: &[AtomicU64]| {
            if let Some(c) = table.get(org.min(ORG_OTHER)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        };
        bump(&self.org_requests);
        if is_denial(answer) {
            bump(&self.org_denials);
        }
        let row = kind.map_or(KIND_MALFORMED, kind_index);
        if let Some(h) = self.latency.get(row) {
            h.record(elapsed.as_micros() as u64);
        }
    }

    /// Names the organisations counted apart: those of the credentials,
    /// labelled by the credential's name (else the organisation id), the
    /// first [`ORGS_MAX`] by label.
    pub fn set_orgs(&self, credentials: &[crate::config::CredentialConfig]) {
        let mut orgs: Vec<(u64, String)> = Vec::new();
        for c in credentials {
            if let Some(org) = c.org {
                if !orgs.iter().any(|(o, _)| *o == org) {
                    let label = if c.name.is_empty() {
                        org.to_string()
                    } else {
                        c.name.clone()
                    };
                    orgs.push((org, label));
                }
            }
        }
        orgs.sort_by(|a, b| a.1.cmp(&b.1));
        orgs.truncate(ORGS_MAX);
        orgs.sort_by_key(|o| o.0);
        let _ = self.orgs.set(orgs);
    }

    /// The slot `caller` is counted in.
    pub fn org_slot(&self, caller: crate::engine::Caller) -> usize {
        match caller {
            crate::engine::Caller::Admin => ORG_ADMIN,
            crate::engine::Caller::Org(a) => self
                .orgs
                .get()
                .and_then(|o| o.binary_search_by_key(&a.0, |x| x.0).ok())
                .map_or(ORG_OTHER, |i| i + 1),
        }
    }

    fn org_label(&self, slot: usize) -> &str {
        match slot {
            ORG_ADMIN => "admin",
            ORG_OTHER => "other",
            i => self
                .orgs
                .get()
                .and_then(|o| o.get(i - 1))
                .map_or("other", |o| o.1.as_str()),
        }
    }

    /// Keeps the journal's counters to read at scrape time.
    pub fn attach_journal(&self, stats: Arc<JournalStats>) {
        let _ = self.journal_stats.set(stats);
    }

    /// Counts an accepted connection; it is open until the guard drops.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Counts a connection refused at a limit.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the server to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The server's phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Recovering,
            1 => Phase::Ready,
            _ => Phase::Stopping,
        }
    }

    /// Records what recovery did and the journal's health, once it opened.
    pub fn recovered(&self, report: &RecoveryReport, health: Arc<Health>) {
        let _ = self.recovery.set(report.clone());
        let _ = self.health.set(health);
    }

    /// Copies the journal's counters (relaxed loads of its atomics; the
    /// writer is never touched).
    pub fn copy_journal_stats(&self, stats: &JournalStats) {
        let copy = |from: &AtomicU64, to: &AtomicU64| {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        let j = &self.journal;
        copy(&stats.requests, &j.requests);
        copy(&stats.records, &j.records);
        copy(&stats.syncs, &j.syncs);
        copy(&stats.records_per_sync_max, &j.records_per_sync_max);
        copy(&stats.checkpoints, &j.checkpoints);
        copy(&stats.checkpoint_pause_us_max, &j.checkpoint_pause_us_max);
        copy(&stats.checkpoint_work_us, &j.checkpoint_work_us);
        copy(
            &stats.checkpoint_pauses_over_1ms,
            &j.checkpoint_pauses_over_1ms,
        );
        copy(&stats.durable_lsn, &j.durable_lsn);
    }

    /// Whether the server should get traffic, and if not why.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(why) = self.health.get().and_then(|h| h.failure()) {
            return Err(format!("journal failed: {why}"));
        }
        match self.phase() {
            Phase::Ready => Ok(()),
            Phase::Recovering => Err("recovering the data directory".into()),
            Phase::Stopping => Err("stopping".into()),
        }
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::new();
        // Writing to a String cannot fail; a collector error leaves what
        // was written so far, which is still valid text.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }
}

/// Writes one metric with its name and help text.
fn emit(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Ops {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // Requests answered, by kind and result name; only series seen.
        let names = result_names();
        let mut answered: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (cell, count) in self.answers.iter().enumerate() {
            let n = get(count);
            if n > 0 {
                let key = (kind_name(cell / names.len()), names[cell % names.len()]);
                *answered.entry(key).or_default() += n;
            }
        }
        let counter_type = ConstCounter::new(0u64).metric_type();
        let mut family = encoder.encode_descriptor(
            "reckon_requests",
            "Native-protocol requests answered, by request kind and result (a BATCH counts each entry).",
            None,
            counter_type,
        )?;
        for ((kind, result), n) in &answered {
            let labels = [("kind", *kind), ("result", *result)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        emit(
            &mut encoder,
            "reckon_ready",
            "1 when recovered, the journal healthy and accepting; 0 otherwise.",
            ConstGauge::new(i64::from(self.readiness().is_ok())),
        )?;
        emit(
            &mut encoder,
            "reckon_uptime_seconds",
            "Seconds since the process started serving its admin listener.",
            ConstGauge::new(self.started.elapsed().as_secs_f64()),
        )?;
        emit(
            &mut encoder,
            "reckon_connections_open",
            "Native-protocol connections open now.",
            ConstGauge::new(get(&self.connections_open) as i64),
        )?;
        emit(
            &mut encoder,
            "reckon_connections_accepted",
            "Native-protocol connections accepted.",
            ConstCounter::new(get(&self.connections_accepted)),
        )?;
        emit(
            &mut encoder,
            "reckon_connections_refused",
            "Native-protocol connections refused at the connection or pending limit.",
            ConstCounter::new(get(&self.connections_refused)),
        )?;
        if let Some(r) = self.recovery.get() {
            emit(
                &mut encoder,
                "reckon_recovery_seconds",
                "Time the last start took to recover the data directory.",
                ConstGauge::new(r.elapsed_ms as f64 / 1000.0),
            )?;
            emit(
                &mut encoder,
                "reckon_recovery_replayed_records",
                "Log records replayed after the snapshot at the last start.",
                ConstGauge::new(r.replayed as i64),
            )?;
        }
        let j = &self.journal;
        emit(
            &mut encoder,
            "reckon_journal_requests",
            "Requests applied by the writer (including the server's own).",
            ConstCounter::new(get(&j.requests)),
        )?;
        emit(
            &mut encoder,
            "reckon_journal_records",
            "Log records made durable.",
            ConstCounter::new(get(&j.records)),
        )?;
        emit(
            &mut encoder,
            "reckon_journal_syncs",
            "fdatasync calls of the log (one per write group).",
            ConstCounter::new(get(&j.syncs)),
        )?;
        emit(
            &mut encoder,
            "reckon_journal_records_per_sync_max",
            "Most log records made durable by one fdatasync.",
            ConstGauge::new(get(&j.records_per_sync_max) as i64),
        )?;
        emit(
            &mut encoder,
            "reckon_journal_checkpoints",
            "Checkpoints written.",
            ConstCounter::new(get(&j.checkpoints)),
        )?;
        emit(
            &mut encoder,
            "reckon_journal_checkpoint_pause_max_seconds",
            "Longest single pause of the writer for checkpoint work.",
            ConstGauge::new(get(&j.checkpoint_pause_us_max) as f64 / 1e6),
        )?;
        emit(
            &mut encoder,
            "reckon_journal_checkpoint_work_seconds",
            "Time the writer spent on checkpoint work.",
            ConstCounter::new(get(&j.checkpoint_work_us) as f64 / 1e6),
        )?;
        emit(
            &mut encoder,
            "reckon_journal_checkpoint_pauses_over_1ms",
            "Writer pauses for checkpoint work longer than 1 ms.",
            ConstCounter::new(get(&j.checkpoint_pauses_over_1ms)),
        )?;
        emit(
            &mut encoder,
            "reckon_journal_durable_lsn",
            "Last durable log position.",
            ConstGauge::new(get(&j.durable_lsn) as i64),
        )?;
        self.encode_more(&mut encoder)
    }
}

/// A histogram of [`Log2Histogram`] counts, its bucket bounds scaled by
/// `scale` (1e-6: µs to seconds).
struct Histogram {
    counts: [u64; LOG2_BUCKETS],
    sum: u64,
    scale: f64,
}

impl Histogram {
    fn of(h: &Log2Histogram, scale: f64) -> Histogram {
        let (counts, sum) = h.read();
        Histogram { counts, sum, scale }
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut encoder = encoder;
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = if i + 1 == LOG2_BUCKETS {
                    f64::INFINITY
                } else {
                    (1u64 << i) as f64 * self.scale
                };
                (bound, *n)
            })
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum as f64 * self.scale,
            self.count(),
            &buckets,
            None,
        )
    }

    /// The value under which `q` of the counts fall (an upper bound).
    fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= want {
                return (1u64 << i.min(62)) as f64 * self.scale;
            }
        }
        0.0
    }
}

fn histogram_type() -> prometheus_client::metrics::MetricType {
    prometheus_client::metrics::MetricType::Histogram
}

/// The status page at `/`: plain HTML whose script polls `/status.json`.
pub const STATUS_PAGE: &str = include_str!("status.html");

impl Ops {
    /// The figures of the status page, as JSON.
    pub fn status_json(&self) -> serde_json::Value {
        use serde_json::json;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let names = result_names();
        let mut kinds = Vec::new();
        let mut requests = 0u64;
        for row in 0..=KIND_MALFORMED {
            let answered: u64 = (0..names.len())
                .filter_map(|col| self.answers.get(row * names.len() + col))
                .map(get)
                .sum();
            requests += answered;
            if answered == 0 {
                continue;
            }
            let latency = Histogram::of(&self.latency[row], 1e-3);
            kinds.push(json!({
                "kind": kind_name(row),
                "answered": answered,
                "p50_ms": latency.quantile(0.5),
                "p99_ms": latency.quantile(0.99),
            }));
        }
        let orgs: Vec<_> = (0..ORG_SLOTS)
            .filter(|s| get(&self.org_requests[*s]) > 0)
            .map(|s| {
                json!({
                    "org": self.org_label(s),
                    "requests": get(&self.org_requests[s]),
                    "denials": get(&self.org_denials[s]),
                })
            })
            .collect();
        let g = &self.gauges;
        let mut status = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "ready": self.readiness().is_ok(),
            "not_ready": self.readiness().err().unwrap_or_default(),
            "connections_open": get(&self.connections_open),
            "requests": requests,
            "queue_depth": get(&g.queue_depth),
            "sessions": get(&g.sessions),
            "reservations": get(&g.reservations),
            "accounts": get(&g.accounts),
            "retransmission_entries": get(&g.answers),
            "retransmission_bytes": get(&g.answer_bytes),
            "recovered_lsn": get(&g.recovered_lsn),
            "applied_lsn": get(&g.applied_lsn),
            "durable_lsn": get(&self.journal.durable_lsn),
            "wal_bytes": get(&g.wal_bytes),
            "data_dir_bytes": get(&g.data_dir_bytes),
            "kinds": kinds,
            "orgs": orgs,
        });
        if let Some(stats) = self.journal_stats.get() {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let at = get(&stats.checkpoint_last_unix_ms);
            let extra = json!({
                "sync_p99_ms": Histogram::of(&stats.sync_us, 1e-3).quantile(0.99),
                "checkpoint_last_lsn": get(&stats.checkpoint_last_lsn),
                "checkpoint_last_unix_ms": at,
                "checkpoint_last_age_s": if at == 0 { None } else { Some(now_ms.saturating_sub(at) / 1000) },
                "checkpoint_last_ms": get(&stats.checkpoint_last_us) / 1000,
                "checkpoint_last_bytes": get(&stats.checkpoint_last_bytes),
            });
            if let (Some(s), serde_json::Value::Object(e)) = (status.as_object_mut(), extra) {
                s.extend(e);
            }
        }
        status
    }

    /// The answer to a `STATUS` request.
    pub fn status_result(&self, queue_capacity: usize) -> reckon_protocol::StatusResult {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let g = &self.gauges;
        let last =
            |f: fn(&JournalStats) -> &AtomicU64| self.journal_stats.get().map_or(0, |s| get(f(s)));
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        reckon_protocol::StatusResult {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            ready: self.readiness().is_ok(),
            recovered_lsn: get(&g.recovered_lsn),
            durable_lsn: last(|s| &s.durable_lsn),
            queue_depth: narrow(get(&g.queue_depth)),
            queue_capacity: narrow(queue_capacity as u64),
            connections: narrow(get(&self.connections_open)),
            sessions: get(&g.sessions),
            reservations: get(&g.reservations),
            checkpoint_lsn: last(|s| &s.checkpoint_last_lsn),
            checkpoint_at_ms: last(|s| &s.checkpoint_last_unix_ms),
            wal_bytes: get(&g.wal_bytes),
            data_dir_bytes: get(&g.data_dir_bytes),
        }
    }

    fn encode_more(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counter_type = ConstCounter::new(0u64).metric_type();
        for (name, help, table) in [
            (
                "reckon_org_requests",
                "Requests answered per organisation (by credential name; `other` beyond the first ones; `admin`).",
                &self.org_requests,
            ),
            (
                "reckon_org_denials",
                "Requests refused per organisation (a non-success credit-control result, an admin refusal or an error).",
                &self.org_denials,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, counter_type)?;
            for (slot, c) in table.iter().enumerate() {
                let n = get(c);
                if n > 0 {
                    let labels = [("org", self.org_label(slot))];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "reckon_request_latency_seconds",
            "Time from reading a request to its answer, by request kind.",
            None,
            histogram_type(),
        )?;
        for (row, h) in self.latency.iter().enumerate() {
            let h = Histogram::of(h, 1e-6);
            if h.count() > 0 {
                let labels = [("kind", kind_name(row))];
                h.encode(family.encode_family(&labels)?)?;
            }
        }
        let g = &self.gauges;
        for (name, help, value) in [
            (
                "reckon_writer_queue_depth",
                "Submissions waiting in the writer's queue.",
                &g.queue_depth,
            ),
            (
                "reckon_sessions_open",
                "Open charging sessions.",
                &g.sessions,
            ),
            (
                "reckon_reservations_open",
                "Open ledger reservations.",
                &g.reservations,
            ),
            ("reckon_accounts", "Accounts.", &g.accounts),
            (
                "reckon_retransmission_entries",
                "Answers remembered for retransmissions.",
                &g.answers,
            ),
            (
                "reckon_retransmission_bytes",
                "Approximate memory of the remembered answers.",
                &g.answer_bytes,
            ),
            (
                "reckon_applied_lsn",
                "Log position of the last request applied, as last read.",
                &g.applied_lsn,
            ),
            (
                "reckon_wal_bytes",
                "Bytes of the write-ahead log's files.",
                &g.wal_bytes,
            ),
            (
                "reckon_data_dir_bytes",
                "Bytes of every file in the data directory.",
                &g.data_dir_bytes,
            ),
        ] {
            emit(encoder, name, help, ConstGauge::new(get(value) as i64))?;
        }
        let Some(stats) = self.journal_stats.get() else {
            return Ok(());
        };
        for (name, help, h, scale) in [
            (
                "reckon_journal_sync_seconds",
                "Time of each group commit's write and fdatasync.",
                &stats.sync_us,
                1e-6,
            ),
            (
                "reckon_journal_records_per_sync",
                "Log records made durable by each fdatasync (group-commit batch size).",
                &stats.records_per_sync,
                1.0,
            ),
        ] {
            let h = Histogram::of(h, scale);
            h.encode(encoder.encode_descriptor(name, help, None, histogram_type())?)?;
        }
        emit(
            encoder,
            "reckon_checkpoint_last_seconds",
            "Time the last checkpoint took to write (snapshot thread).",
            ConstGauge::new(get(&stats.checkpoint_last_us) as f64 / 1e6),
        )?;
        emit(
            encoder,
            "reckon_checkpoint_last_bytes",
            "Bytes of keys and values the last checkpoint wrote.",
            ConstGauge::new(get(&stats.checkpoint_last_bytes) as i64),
        )?;
        emit(
            encoder,
            "reckon_checkpoint_last_lsn",
            "Log position the last checkpoint covers.",
            ConstGauge::new(get(&stats.checkpoint_last_lsn) as i64),
        )?;
        emit(
            encoder,
            "reckon_checkpoint_last_timestamp_seconds",
            "When the last checkpoint landed (Unix time; 0: none since start).",
            ConstGauge::new(get(&stats.checkpoint_last_unix_ms) as f64 / 1000.0),
        )?;
        Ok(())
    }
}

/// The admin listener: its address and the task serving it (stopped when
/// this is dropped).
pub struct AdminListener {
    /// The address it listens on, when on.
    pub addr: Option<SocketAddr>,
    /// The state it reports.
    pub ops: Arc<Ops>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl AdminListener {
    /// Binds `addr` (`None`: no listener, counters still kept) and serves it.
    pub async fn bind(addr: Option<SocketAddr>) -> std::io::Result<AdminListener> {
        let ops = Arc::new(Ops::default());
        let Some(addr) = addr else {
            return Ok(AdminListener {
                addr: None,
                ops,
                task: None,
            });
        };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the admin listener is not on a loopback address: its metrics are readable by anyone who can reach it");
        }
        let task = tokio::spawn(serve_admin(listener, ops.clone()));
        Ok(AdminListener {
            addr: Some(addr),
            ops,
            task: Some(task),
        })
    }
}

async fn serve_admin(listener: TcpListener, ops: Arc<Ops>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over the limit: closed at once, so a flood costs nothing.
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let ops = ops.clone();
                tasks.spawn(async move {
                    let _slot = slot;
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, http(stream, &ops)).await;
                });
            }
        }
    }
}

/// Answers one HTTP request on `stream`, then closes it.
async fn http(mut stream: TcpStream, ops: &Arc<Ops>) {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let response = loop {
        if let Some(end) = find(&head, b"\r\n\r\n").or_else(|| find(&head, b"\n\n")) {
            break route(&head[..end], ops);
        }
        if head.len() >= HEAD_MAX {
            break if head.contains(&b'\n') {
                plain(
                    431,
                    "Request Header Fields Too Large",
                    "request head too large\n",
                )
            } else {
                plain(414, "URI Too Long", "request line too long\n")
            };
        }
        let room = (HEAD_MAX - head.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    };
    if stream.write_all(&response).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    // Read what the client still sends (bounded) before closing, so that
    // closing with unread bytes does not reset the connection before the
    // client has read the answer.
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The answer to a request head (without its blank line).
fn route(head: &[u8], ops: &Arc<Ops>) -> Vec<u8> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return plain(400, "Bad Request", "request line is not text\n");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return plain(400, "Bad Request", "expected METHOD TARGET HTTP/1.x\n");
    };
    if !version.starts_with("HTTP/1.") {
        return plain(400, "Bad Request", "expected HTTP/1.x\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut r = plain(405, "Method Not Allowed", "only GET and HEAD\n");
            insert_header(&mut r, "Allow: GET, HEAD");
            return r;
        }
    };
    let path = target.split('?').next().unwrap_or_default();
    let response = match path {
        "/metrics" => response(
            200,
            "OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            ops.render().into_bytes(),
        ),
        "/healthz" => plain(200, "OK", "alive\n"),
        "/readyz" => match ops.readiness() {
            Ok(()) => plain(200, "OK", "ready\n"),
            Err(why) => plain(503, "Service Unavailable", &format!("not ready: {why}\n")),
        },
        "/" => response(
            200,
            "OK",
            "text/html; charset=utf-8",
            STATUS_PAGE.as_bytes().to_vec(),
        ),
        "/status.json" => response(
            200,
            "OK",
            "application/json",
            ops.status_json().to_string().into_bytes(),
        ),
        _ => plain(404, "Not Found", "not found\n"),
    };
    if head_only {
        strip_body(response)
    } else {
        response
    }
}

fn response(status: u16, reason: &str, content_type: &str, body: Vec<u8>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(
        status,
        reason,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn insert_header(response: &mut Vec<u8>, header: &str) {
    if let Some(end) = find(response, b"\r\n\r\n") {
        let at = end + 2;
        let line = format!("{header}\r\n");
        response.splice(at..at, line.into_bytes());
    }
}

fn strip_body(mut response: Vec<u8>) -> Vec<u8> {
    if let Some(end) = find(&response, b"\r\n\r\n") {
        response.truncate(end + 4);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(response: &[u8]) -> &str {
        std::str::from_utf8(&response[9..12]).unwrap()
    }

    #[test]
    fn routes_and_refusals() {
        let ops = Arc::new(Ops::default());
        assert_eq!(status(&route(b"GET /healthz HTTP/1.1", &ops)), "200");
        assert_eq!(status(&route(b"GET /readyz HTTP/1.1", &ops)), "503");
        ops.set_phase(Phase::Ready);
        assert_eq!(status(&route(b"GET /readyz HTTP/1.0", &ops)), "200");
        ops.set_phase(Phase::Stopping);
        assert_eq!(status(&route(b"GET /readyz HTTP/1.1", &ops)), "503");
        assert_eq!(status(&route(b"POST /metrics HTTP/1.1", &ops)), "405");
        assert_eq!(status(&route(b"GET /nope HTTP/1.1", &ops)), "404");
        assert_eq!(status(&route(b"\x16\x03\x01\x02\x00", &ops)), "400");
        assert_eq!(status(&route(b"GET / SSH-2.0", &ops)), "400");
        assert_eq!(status(&route(b"", &ops)), "400");
        let head = route(b"HEAD /metrics HTTP/1.1\r\nHost: x", &ops);
        assert!(head.ends_with(b"\r\n\r\n"), "HEAD has no body");
    }

    #[test]
    fn answers_are_counted_by_kind_and_result_name() {
        use reckon_protocol::message::{AdminResult, ErrorReply};
        let ops = Arc::new(Ops::default());
        let ok = Message::AdminResult(AdminResult {
            code: AdminCode::OK,
            bucket: 0,
            balance: Default::default(),
        });
        for _ in 0..3 {
            ops.answered(Some(Kind::TopUp), &ok);
        }
        let error = Message::Error(ErrorReply {
            code: ErrorCode::MALFORMED_FRAME,
            message: String::new(),
        });
        ops.answered(None, &error);
        let text = ops.render();
        assert!(
            text.contains("reckon_requests_total{kind=\"TOPUP\",result=\"OK\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "reckon_requests_total{kind=\"MALFORMED\",result=\"MALFORMED_FRAME\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("reckon_ready 0\n"), "{text}");
    }
}
