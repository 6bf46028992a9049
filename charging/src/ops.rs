//! What operators see: the admin HTTP listener (`/metrics`, `/healthz`,
//! `/readyz`) and the counters behind it.
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
use reckon_balances::journal::{Health, JournalStats, RecoveryReport};
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
        "/" => plain(
            200,
            "OK",
            "reckon admin: /metrics (Prometheus text), /healthz (alive), /readyz (recovered, journal healthy, accepting)\n",
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
