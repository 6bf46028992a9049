//! The tokio server: listener, connections, handshake, and the bridge to the
//! journal's single writer.
//!
//! Each connection reads frames, turns each request into an engine request
//! and submits it (a BATCH as one submission) to the journal's bounded
//! queue. The journal replies after group commit; the reply goes back
//! through a channel to the connection's writer task, so answers may leave
//! out of order and a client can pipeline. A full queue answers BUSY at
//! once instead of queueing without bound; each connection has a bounded
//! number of requests in flight and stops reading when it reaches it.

use crate::config::{Config, CredentialConfig};
use crate::engine::{Caller, Engine, EngineConfig, EngineRequest};
use crate::ops::{AdminListener, Ops, Phase};
use crate::wire::{self, Prepared};
use futures_util::{SinkExt, StreamExt};
use reckon_balances::journal::{
    system_clock, Clock, Journal, JournalConfig, JournalError, Submitter,
};
use reckon_balances::AccountId;
use reckon_protocol::codec::TolerantCodec;
use reckon_protocol::codes::ErrorCode;
use reckon_protocol::frame::{Frame, Kind};
use reckon_protocol::message::{self as msg, BatchResult, HelloOk, Message};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

/// The highest protocol version this server speaks; it accepts
/// [`PROTOCOL_VERSION_MIN`]`..=PROTOCOL_VERSION` and answers in the highest
/// one the client offers.
pub const PROTOCOL_VERSION: u16 = reckon_protocol::PROTOCOL_VERSION;
/// The lowest protocol version this server speaks.
pub const PROTOCOL_VERSION_MIN: u16 = reckon_protocol::PROTOCOL_VERSION_MIN;
/// Most requests one connection may have in flight.
pub const IN_FLIGHT_PER_CONNECTION: usize = 4096;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be opened or recovered.
    #[error("opening the data directory: {0}")]
    Journal(#[from] JournalError),
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

struct Shared {
    submitter: Submitter<Engine>,
    credentials: Vec<CredentialConfig>,
    max_frame: u32,
    keepalive_s: u16,
    shutdown: watch::Receiver<bool>,
    connections: Arc<Semaphore>,
    /// Connections that have not completed HELLO yet: bounded apart, so a
    /// flood of idle sockets cannot take every slot.
    pending: Arc<Semaphore>,
    hello_timeout: Duration,
    requests: AtomicU64,
    /// Tells the Diameter peers about admin changes (RAR/ASR), if serving.
    diameter: Option<crate::diameter::Notifier>,
    /// Counters the admin listener reports.
    ops: Arc<Ops>,
    /// The data directory (its size is reported).
    data_dir: std::path::PathBuf,
    /// The writer queue's capacity.
    queue_capacity: usize,
    /// The journal's counters and checkpoint lock (backups hold it).
    journal_stats: Arc<reckon_balances::journal::JournalStats>,
    /// Set while a backup runs (one at a time).
    backup_running: Arc<std::sync::atomic::AtomicBool>,
}

/// A running server: its address, and the handle that stops it.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The Diameter listener's address, when it runs.
    pub diameter_addr: Option<SocketAddr>,
    /// The admin HTTP listener's address, unless it is off.
    pub admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    done: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl RunningServer {
    /// Stops accepting, drains in-flight requests, flushes and checkpoints.
    /// An error says the journal had failed before (see [`RunningServer::finished`]).
    pub async fn shutdown(mut self) -> Result<(), String> {
        let _ = self.stop.send(true);
        self.finished().await
    }

    /// Waits until the server stops by itself: only when its journal failed
    /// (a failed fdatasync, a dead writer thread), with the reason. A server
    /// in that state acknowledges nothing more; the process should exit
    /// non-zero so that its supervisor restarts it into recovery.
    pub async fn finished(&mut self) -> Result<(), String> {
        match self.done.as_mut() {
            None => Ok(()),
            Some(handle) => {
                let result = handle
                    .await
                    .unwrap_or_else(|e| Err(format!("server task failed: {e}")));
                self.done = None;
                result
            }
        }
    }
}

/// Opens the data directory and starts serving on the configured address.
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    start_with_clock(config, system_clock()).await
}

/// [`start`] with a given clock (tests drive time).
pub async fn start_with_clock(config: Config, clock: Clock) -> Result<RunningServer, ServerError> {
    let admin = bind_admin(&config).await?;
    start_with(config, clock, admin).await
}

/// Binds the configured admin listener, before recovery, so that
/// `/readyz` answers "not ready" while the data directory is recovered.
pub async fn bind_admin(config: &Config) -> Result<AdminListener, ServerError> {
    let addr = config.admin_addr()?;
    AdminListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen {
            addr: addr.unwrap_or(config.listen),
            source,
        })
}

/// [`start_with_clock`] reporting through an admin listener already bound
/// (see [`bind_admin`]).
pub async fn start_with(
    config: Config,
    clock: Clock,
    admin: AdminListener,
) -> Result<RunningServer, ServerError> {
    let credentials = config.credentials()?;
    let mut journal_config = JournalConfig::new(&config.data_dir);
    journal_config.queue_capacity = config.queue_capacity;
    journal_config.history_bytes_max = config.history_retention_mb.saturating_mul(1 << 20);
    let engine_config: EngineConfig = config.engine_config()?;
    let opened =
        tokio::task::spawn_blocking(move || Journal::<Engine>::open(journal_config, clock))
            .await
            .map_err(|e| ServerError::Config(format!("recovery task failed: {e}")))??;
    let (journal, report) = opened;
    tracing::info!(
        snapshot_lsn = report.snapshot_lsn,
        replayed = report.replayed,
        torn_tail_bytes = report.torn_tail_bytes,
        elapsed_ms = report.elapsed_ms,
        "data directory recovered"
    );
    admin.ops.recovered(&report, journal.health());
    admin.ops.attach_journal(journal.stats_handle());
    admin.ops.gauges.recovered_lsn.store(
        journal.stats().durable_lsn.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    admin.ops.set_orgs(&credentials);
    // Prices and policies are state: logging them keeps replay exact.
    let window_ms = engine_config.answer_window_ms;
    match journal
        .call(EngineRequest::Configure(engine_config))
        .map_err(ServerError::Journal)?
    {
        crate::engine::EngineResponse::Configured => {}
        other => return Err(ServerError::Config(format!("{other:?}"))),
    }
    // The ledger's op-id window follows the same setting. The op id is
    // derived from the value, so restarting with an unchanged setting is a
    // retry of the same operation.
    let op = reckon_balances::OpId(0x7769_6e64_6f77_u128 << 64 | window_ms as u128);
    let window = reckon_balances::Operation {
        op,
        command: reckon_balances::Command::SetIdempotencyWindow { window_ms },
    };
    journal
        .call(EngineRequest::Ledger(
            Caller::Admin,
            reckon_balances::machine::LedgerRequest::Apply(window),
        ))
        .map_err(ServerError::Journal)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "reckon serving");
    let (stop, shutdown) = watch::channel(false);
    let diameter = match &config.diameter {
        Some(d) => Some(crate::diameter::start(d, journal.submitter(), shutdown.clone()).await?),
        None => None,
    };
    let diameter_addr = diameter.as_ref().map(|d| d.addr);
    let shared = Arc::new(Shared {
        submitter: journal.submitter(),
        credentials,
        max_frame: config.max_frame,
        keepalive_s: config.keepalive_s,
        shutdown: shutdown.clone(),
        connections: Arc::new(Semaphore::new(config.max_connections)),
        pending: Arc::new(Semaphore::new(config.max_pending_connections)),
        hello_timeout: Duration::from_millis(config.hello_timeout_ms),
        requests: AtomicU64::new(0),
        diameter: diameter.as_ref().map(|d| d.notifier.clone()),
        ops: admin.ops.clone(),
        data_dir: config.data_dir.clone(),
        queue_capacity: config.queue_capacity,
        journal_stats: journal.stats_handle(),
        backup_running: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    });
    let admin_addr = admin.addr;
    admin.ops.copy_journal_stats(journal.stats());
    admin.ops.set_phase(Phase::Ready);
    let done = tokio::spawn(accept_loop(
        listener,
        shared,
        shutdown,
        journal,
        stop.clone(),
        diameter.map(|d| d.done),
        admin,
    ));
    Ok(RunningServer {
        addr,
        diameter_addr,
        admin_addr,
        stop,
        done: Some(done),
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    journal: Journal<Engine>,
    stop: watch::Sender<bool>,
    diameter: Option<tokio::task::JoinHandle<()>>,
    // Serves until this returns: `/readyz` says "stopping" while draining.
    admin: AdminListener,
) -> Result<(), String> {
    let mut tasks = tokio::task::JoinSet::new();
    let health = journal.health();
    let mut health_check = tokio::time::interval(Duration::from_millis(50));
    let mut stats_tick = tokio::time::interval(STATS_LOG_EVERY);
    stats_tick.tick().await;
    let mut gauge_tick = tokio::time::interval(GAUGES_EVERY);
    gauge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut fatal = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = stats_tick.tick() => log_journal_stats(journal.stats()),
            _ = gauge_tick.tick() => read_gauges(&shared, &measuring),
            _ = health_check.tick() => {
                shared.ops.copy_journal_stats(journal.stats());
                shared.ops.gauges.queue_depth.store(shared.submitter.queue_depth() as u64, Ordering::Relaxed);
                if let Some(why) = health.failure() {
                    tracing::error!(reason = %why, "the journal failed: nothing more can be acknowledged; stopping so a restart recovers from the log");
                    fatal = Some(why);
                    // Connections see the same signal as a shutdown.
                    let _ = stop.send(true);
                    break;
                }
            }
            // Finished connections are reaped as they end, not at shutdown.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
                    shared.ops.connection_refused();
                    tracing::warn!(%peer, "connection limit reached; refusing");
                    continue;
                };
                let Ok(pending) = shared.pending.clone().try_acquire_owned() else {
                    shared.ops.connection_refused();
                    tracing::warn!(%peer, "too many connections waiting to authenticate; refusing");
                    continue;
                };
                let shared = shared.clone();
                let open = shared.ops.connection_opened();
                tasks.spawn(async move {
                    let _permit = permit;
                    let _open = open;
                    if let Err(e) = connection(stream, peer, shared, pending).await {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
        }
    }
    drop(listener);
    admin.ops.set_phase(Phase::Stopping);
    tracing::info!("shutting down: draining connections");
    // Connections see the shutdown flag, stop reading and finish their
    // in-flight requests; give them a bounded time.
    let drain = async { while tasks.join_next().await.is_some() {} };
    let grace = if fatal.is_some() { 1 } else { 10 };
    if tokio::time::timeout(Duration::from_secs(grace), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections did not drain in {grace} s; closing them");
        tasks.abort_all();
    }
    if let Some(d) = diameter {
        // Diameter peers get DPR and their in-flight answers first.
        let _ = d.await;
    }
    tracing::info!(
        requests = shared.requests.load(Ordering::Relaxed),
        "flushing and checkpointing"
    );
    log_journal_stats(journal.stats());
    admin.ops.copy_journal_stats(journal.stats());
    let _ = tokio::task::spawn_blocking(move || journal.shutdown()).await;
    tracing::info!("stopped");
    drop(admin);
    match fatal {
        Some(why) => Err(format!("journal failed: {why}")),
        None => Ok(()),
    }
}

/// How often the engine's gauges and the disk use are read.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Reads the engine's gauges (a read in the writer's order, never logged)
/// and the data directory's size (off the runtime), unless the last
/// reading is still going. Only while the writer's queue is at most half
/// full: a figure is not worth a client's BUSY.
fn read_gauges(shared: &Arc<Shared>, measuring: &Arc<std::sync::atomic::AtomicBool>) {
    if (shared.submitter.queue_depth() + 1) * 2 > shared.queue_capacity {
        return;
    }
    if measuring.swap(true, Ordering::AcqRel) {
        return;
    }
    let ops = shared.ops.clone();
    let dir = shared.data_dir.clone();
    let done = measuring.clone();
    let submitted = shared.submitter.submit(
        vec![EngineRequest::Gauges { digest: false }],
        Box::new(move |result| {
            if let Ok(mut r) = result {
                if let Some(crate::engine::EngineResponse::Gauges(e)) = r.pop() {
                    let g = &ops.gauges;
                    let set = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
                    set(&g.sessions, e.sessions);
                    set(&g.reservations, e.reservations);
                    set(&g.accounts, e.accounts);
                    set(&g.answers, e.answers);
                    set(&g.answer_bytes, e.answer_bytes);
                    set(&g.applied_lsn, e.last_lsn);
                }
            }
            // The reply runs on the sync thread: the directory walk goes
            // to its own thread, not there.
            std::thread::spawn(move || {
                let g = &ops.gauges;
                g.wal_bytes
                    .store(crate::ops::dir_bytes(&dir.join("wal")), Ordering::Relaxed);
                g.data_dir_bytes
                    .store(crate::ops::dir_bytes(&dir), Ordering::Relaxed);
                done.store(false, Ordering::Release);
            });
        }),
    );
    if submitted.is_err() {
        measuring.store(false, Ordering::Release);
    }
}

/// How often the server logs what its journal did.
const STATS_LOG_EVERY: Duration = Duration::from_secs(60);

/// Logs the journal's counters: what an operator checks first when
/// latency moves (syncs and records per sync, checkpoint pauses).
fn log_journal_stats(stats: &reckon_balances::journal::JournalStats) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    tracing::info!(
        requests = get(&stats.requests),
        records = get(&stats.records),
        syncs = get(&stats.syncs),
        records_per_sync_max = get(&stats.records_per_sync_max),
        checkpoints = get(&stats.checkpoints),
        checkpoint_pause_us_max = get(&stats.checkpoint_pause_us_max),
        checkpoint_work_ms = get(&stats.checkpoint_work_us) / 1000,
        checkpoint_pauses_over_1ms = get(&stats.checkpoint_pauses_over_1ms),
        durable_lsn = get(&stats.durable_lsn),
        "journal"
    );
}

fn error_frame(request_id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::new(
        request_id,
        Message::Error(msg::ErrorReply {
            code,
            message: message.into(),
        }),
    )
}

fn too_large() -> Message {
    Message::Error(msg::ErrorReply {
        code: ErrorCode::FRAME_TOO_LARGE,
        message: "answer too large for one frame; resend this request alone".into(),
    })
}

/// Makes an answer fit the frame limit (SPEC 5.6, 6.3): a batch result
/// loses answers from the end, replaced by FRAME_TOO_LARGE errors; any other
/// answer becomes one such error. The requests were applied either way.
/// Linear in the batch: each entry is measured once.
fn fit(frame: Frame, max_frame: u32) -> Frame {
    use reckon_protocol::limits::{HEADER_LEN, LENGTH_PREFIX_LEN};
    // Only these answers can grow large; the rest skip the measuring.
    if !matches!(
        frame.body,
        Message::BatchResult(_) | Message::Balance(_) | Message::Reservations(_)
    ) {
        return frame;
    }
    let limit = max_frame as usize + LENGTH_PREFIX_LEN;
    let request_id = frame.request_id;
    match frame.body {
        Message::BatchResult(mut result) => {
            let mut scratch = bytes::BytesMut::new();
            let mut entry_size = |m: &Message| {
                scratch.clear();
                // u32 length, u8 kind, body.
                m.encode(&mut scratch)
                    .map_or(usize::MAX / 4096, |_| 5 + scratch.len())
            };
            let sizes: Vec<usize> = result.entries.iter().map(&mut entry_size).collect();
            let small = entry_size(&too_large());
            let mut total = LENGTH_PREFIX_LEN + HEADER_LEN + 2 + sizes.iter().sum::<usize>();
            for i in (0..result.entries.len()).rev() {
                if total <= limit {
                    break;
                }
                total = total - sizes[i] + small;
                result.entries[i] = too_large();
            }
            Frame::new(request_id, Message::BatchResult(result))
        }
        body => {
            let frame = Frame::new(request_id, body);
            match frame.to_bytes() {
                Ok(b) if b.len() <= limit => frame,
                _ => Frame::new(request_id, too_large()),
            }
        }
    }
}

fn authenticate(shared: &Shared, credential: &str) -> Option<Caller> {
    use subtle::ConstantTimeEq;
    // An empty credential never authenticates; every credential is
    // compared in full, in constant time, whatever matches, so timing
    // tells nothing about how much of a token was right.
    if credential.is_empty() {
        return None;
    }
    let mut found = None;
    for c in &shared.credentials {
        let equal: bool = c.token.as_bytes().ct_eq(credential.as_bytes()).into();
        if equal && !c.token.is_empty() {
            found = Some(match c.org {
                None => Caller::Admin,
                Some(org) => Caller::Org(AccountId(org)),
            });
        }
    }
    found
}

/// A frame on its way out, with the in-flight permits of the request it
/// answers: they are released once the frame is handed to the socket, so a
/// client that never reads stops being read from (TCP backpressure) instead
/// of growing the server's queues.
struct Outgoing {
    frame: Frame,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

type Out = mpsc::UnboundedSender<Outgoing>;

/// Counts an answer to a request of `kind` (see [`Ops::answered`]) and sends it.
fn answer(
    shared: &Shared,
    kind: Option<Kind>,
    out: &Out,
    frame: Frame,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    shared.ops.answered(kind, &frame.body);
    send(out, frame, permit);
}

fn send(out: &Out, frame: Frame, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
    let _ = out.send(Outgoing {
        frame,
        _permit: permit,
    });
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    pending: tokio::sync::OwnedSemaphorePermit,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(
        read,
        TolerantCodec::with_max_frame(reckon_protocol::limits::PRE_AUTH_MAX_FRAME),
    );
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let max_frame = shared.max_frame;
    // The version HELLO_OK chose: answers are laid out in it.
    let version = Arc::new(AtomicU16::new(PROTOCOL_VERSION_MIN));
    let writer_version = version.clone();
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(write, TolerantCodec::with_max_frame(max_frame));
        while let Some(Outgoing { frame, _permit }) = out_rx.recv().await {
            let frame = fit(frame, max_frame);
            sink.encoder_mut()
                .inner
                .set_version(writer_version.load(Ordering::Relaxed));
            if let Err(e) = sink.feed(frame).await {
                tracing::debug!(error = %e, "write failed");
                return;
            }
            drop(_permit);
            // Flush when nothing else is waiting: batches small writes.
            if out_rx.is_empty() && SinkExt::<Frame>::flush(&mut sink).await.is_err() {
                return;
            }
        }
        let _ = SinkExt::<Frame>::flush(&mut sink).await;
    });
    let caller = handshake(&mut frames, &out_tx, peer, &shared).await;
    // Authenticated (or refused): no longer one of the connections waiting.
    drop(pending);
    if let Some((who, chosen)) = caller {
        version.store(chosen, Ordering::Relaxed);
        frames.decoder_mut().inner.set_version(chosen);
        frames.decoder_mut().inner.set_max_frame(shared.max_frame);
        serve(&mut frames, &out_tx, peer, &shared, who, chosen).await;
    }
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}

/// Waits (at most the HELLO deadline) for the handshake; the caller and
/// the version chosen on success. Anything else is answered and ends the
/// connection.
async fn handshake(
    frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, TolerantCodec>,
    out: &Out,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<(Caller, u16)> {
    let first = match tokio::time::timeout(shared.hello_timeout, frames.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => return None,
        Err(_) => {
            tracing::debug!(%peer, "no HELLO within the deadline; closing");
            return None;
        }
    };
    let frame = match first {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) | Err(e) => {
            answer(
                shared,
                None,
                out,
                error_frame(e.request_id().unwrap_or(0), e.code(), e.to_string()),
                None,
            );
            return None;
        }
    };
    let request_id = frame.request_id;
    if request_id == 0 {
        answer(
            shared,
            Some(frame.body.kind()),
            out,
            error_frame(
                0,
                ErrorCode::MALFORMED_FRAME,
                "request id 0 is reserved; use a non-zero id",
            ),
            None,
        );
        return None;
    }
    let kind = frame.body.kind();
    let Message::Hello(hello) = frame.body else {
        answer(
            shared,
            Some(kind),
            out,
            error_frame(request_id, ErrorCode::NOT_AUTHENTICATED, "send HELLO first"),
            None,
        );
        return None;
    };
    // SPEC 5.1: the highest version both sides speak.
    let chosen = hello.max_version.min(PROTOCOL_VERSION);
    if hello.min_version == 0
        || hello.min_version > hello.max_version
        || chosen < hello.min_version.max(PROTOCOL_VERSION_MIN)
    {
        answer(
            shared,
            Some(Kind::Hello),
            out,
            error_frame(
                request_id,
                ErrorCode::UNSUPPORTED_VERSION,
                format!("supported versions: {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}"),
            ),
            None,
        );
        return None;
    }
    let Some(c) = authenticate(shared, &hello.credential) else {
        tracing::warn!(%peer, client = %hello.client_name, "authentication failed");
        answer(
            shared,
            Some(Kind::Hello),
            out,
            error_frame(
                request_id,
                ErrorCode::AUTH_FAILED,
                "credential not accepted",
            ),
            None,
        );
        return None;
    };
    tracing::debug!(%peer, client = %hello.client_name, caller = ?c, version = chosen, "authenticated");
    answer(
        shared,
        Some(Kind::Hello),
        out,
        Frame::new(
            request_id,
            Message::HelloOk(HelloOk {
                version: chosen,
                org_id: match c {
                    Caller::Admin => 0,
                    Caller::Org(a) => a.0,
                },
                is_admin: c == Caller::Admin,
                max_frame: shared.max_frame,
                keepalive_s: shared.keepalive_s,
                server_name: format!("reckon {}", env!("CARGO_PKG_VERSION")),
            }),
        ),
        None,
    );
    Some((c, chosen))
}

/// Reads requests of an authenticated connection until it closes, the peer
/// goes silent or the server shuts down; then waits for every answer.
async fn serve(
    frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, TolerantCodec>,
    out: &Out,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    who: Caller,
    version: u16,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_PER_CONNECTION));
    let mut shutdown = shared.shutdown.clone();
    // The alert subscription's task, if any, and its way of saying the
    // subscriber fell too far behind.
    let mut feed: Option<tokio::task::JoinHandle<()>> = None;
    let (overrun_tx, mut overrun) = watch::channel(false);
    let ping_after = Duration::from_secs(shared.keepalive_s.max(1) as u64);
    let idle = ping_after * 3;
    let mut silent_for = Duration::ZERO;
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => {
                send(out, error_frame(0, ErrorCode::SHUTTING_DOWN, "server shutting down; reconnect later"), None);
                None
            }
            _ = overrun.changed() => {
                tracing::info!(%peer, "alert subscriber more than {ALERTS_UNWRITTEN_MAX} alerts behind; closing");
                None
            }
            next = tokio::time::timeout(ping_after, frames.next()) => match next {
                Ok(n) => {
                    silent_for = Duration::ZERO;
                    n
                }
                Err(_) => {
                    silent_for += ping_after;
                    if silent_for >= idle {
                        tracing::debug!(%peer, "no frame within three keepalive periods; closing");
                        None
                    } else {
                        // Silent for a keepalive period: ask the peer.
                        send(out, Frame::new(0, Message::Ping), None);
                        continue;
                    }
                }
            },
        };
        let Some(item) = next else { break };
        // Every request, answered at once or by the writer, holds in-flight
        // permits until its answer is written: a BATCH one per entry.
        let entries = match &item {
            Ok(Ok(Frame {
                body: Message::Batch(b),
                ..
            })) => b.entries.len().clamp(1, IN_FLIGHT_PER_CONNECTION),
            _ => 1,
        };
        let Ok(permit) = in_flight.clone().acquire_many_owned(entries as u32).await else {
            break;
        };
        let frame = match item {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                // Malformed but the frame boundary is intact: answer, go on.
                answer(
                    shared,
                    None,
                    out,
                    error_frame(e.request_id().unwrap_or(0), e.code(), e.to_string()),
                    Some(permit),
                );
                continue;
            }
            Err(e) => {
                answer(
                    shared,
                    None,
                    out,
                    error_frame(e.request_id().unwrap_or(0), e.code(), e.to_string()),
                    Some(permit),
                );
                break;
            }
        };
        let request_id = frame.request_id;
        if request_id == 0 && !matches!(frame.body, Message::Pong) {
            answer(
                shared,
                Some(frame.body.kind()),
                out,
                error_frame(
                    0,
                    ErrorCode::MALFORMED_FRAME,
                    "request id 0 is reserved; use a non-zero id",
                ),
                Some(permit),
            );
            continue;
        }
        let kind = frame.body.kind();
        if kind.since_version() > version {
            // As a peer of that version would: the kind does not exist.
            answer(
                shared,
                Some(kind),
                out,
                error_frame(
                    request_id,
                    ErrorCode::UNKNOWN_KIND,
                    format!(
                        "{} needs protocol version {}",
                        kind.name(),
                        kind.since_version()
                    ),
                ),
                Some(permit),
            );
            continue;
        }
        match frame.body {
            Message::Status => {
                let reply = if who == Caller::Admin {
                    Frame::new(
                        request_id,
                        Message::StatusResult(shared.ops.status_result(shared.queue_capacity)),
                    )
                } else {
                    error_frame(
                        request_id,
                        ErrorCode::FORBIDDEN,
                        "STATUS is for an admin credential",
                    )
                };
                answer(shared, Some(Kind::Status), out, reply, Some(permit));
            }
            Message::Backup(b) => {
                if who != Caller::Admin {
                    let reply = error_frame(
                        request_id,
                        ErrorCode::FORBIDDEN,
                        "BACKUP is for an admin credential",
                    );
                    answer(shared, Some(Kind::Backup), out, reply, Some(permit));
                } else {
                    backup(shared, request_id, b.dir, out.clone(), permit);
                }
            }
            Message::AlertSubscribe(s) => {
                if let Some(old) = feed.take() {
                    old.abort();
                }
                feed = Some(tokio::spawn(alert_feed(
                    shared.clone(),
                    who,
                    request_id,
                    s.after,
                    out.clone(),
                    permit,
                    overrun_tx.clone(),
                )));
            }
            Message::Ping => answer(
                shared,
                Some(Kind::Ping),
                out,
                Frame::new(request_id, Message::Pong),
                Some(permit),
            ),
            Message::Pong => {}
            Message::Hello(_) => answer(
                shared,
                Some(Kind::Hello),
                out,
                error_frame(
                    request_id,
                    ErrorCode::UNEXPECTED_KIND,
                    "already authenticated",
                ),
                Some(permit),
            ),
            Message::Batch(batch) => {
                shared
                    .requests
                    .fetch_add(batch.entries.len() as u64, Ordering::Relaxed);
                submit_batch(shared, who, request_id, batch.entries, out.clone(), permit);
            }
            body => {
                shared.requests.fetch_add(1, Ordering::Relaxed);
                let change = shared
                    .diameter
                    .as_ref()
                    .and_then(|_| crate::diameter::admin_change(&body));
                submit_one(shared, who, request_id, body, out.clone(), permit, change);
            }
        }
    }
    // The feed holds a sender of the connection's writer: it must end for
    // the connection to close.
    if let Some(f) = feed.take() {
        f.abort();
        let _ = f.await;
    }
    // Wait for every in-flight request to be answered before closing.
    let _ = in_flight
        .acquire_many(IN_FLIGHT_PER_CONNECTION as u32)
        .await;
}

/// Most alerts pushed to one connection and not yet written to its socket
/// (SPEC 6.11): a subscriber further behind is disconnected.
const ALERTS_UNWRITTEN_MAX: usize = 1024;
/// Alerts read from the engine at a time.
const ALERTS_PER_READ: usize = 256;
/// How often a caught-up subscription looks for new alerts.
const ALERTS_POLL: Duration = Duration::from_millis(200);

/// One read of the engine's alerts, in the writer's order (so after the
/// operations that raised them are durable).
async fn read_alerts(
    shared: &Shared,
    who: Caller,
    after: u64,
) -> Result<(Vec<reckon_balances::Alert>, u64, u64, u64), JournalError> {
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = EngineRequest::Alerts {
            caller: who,
            after,
            max: ALERTS_PER_READ,
        };
        match shared.submitter.submit(
            vec![request],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        ) {
            Ok(()) => {}
            Err(JournalError::Busy) => {
                // Credit control first: alerts wait for a free slot.
                tokio::time::sleep(ALERTS_POLL).await;
                continue;
            }
            Err(e) => return Err(e),
        }
        let reply = rx.await.map_err(|_| JournalError::Busy)?;
        return match reply
            .map_err(|e| JournalError::Stopped(e.to_string()))?
            .pop()
        {
            Some(crate::engine::EngineResponse::Alerts {
                alerts,
                oldest,
                resume_after,
                last,
            }) => Ok((alerts, oldest, resume_after, last)),
            other => Err(JournalError::Stopped(format!(
                "unexpected answer to an alert read: {other:?}"
            ))),
        };
    }
}

/// Answers an ALERT_SUBSCRIBE, then pushes the alerts after `after` as
/// they are kept and raised, until aborted (the connection closes or
/// subscribes again).
async fn alert_feed(
    shared: Arc<Shared>,
    who: Caller,
    request_id: u64,
    mut after: u64,
    out: Out,
    permit: tokio::sync::OwnedSemaphorePermit,
    overrun: watch::Sender<bool>,
) {
    let unwritten = Arc::new(Semaphore::new(ALERTS_UNWRITTEN_MAX));
    let mut answered = Some(permit);
    loop {
        let (alerts, oldest, resume_after, last) = match read_alerts(&shared, who, after).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(permit) = answered.take() {
                    let reply = error_frame(request_id, ErrorCode::SHUTTING_DOWN, e.to_string());
                    answer(
                        &shared,
                        Some(Kind::AlertSubscribe),
                        &out,
                        reply,
                        Some(permit),
                    );
                }
                return;
            }
        };
        if let Some(permit) = answered.take() {
            let reply = Frame::new(
                request_id,
                Message::AlertSubscribed(msg::AlertSubscribed {
                    oldest_seq: oldest,
                    last_seq: last,
                }),
            );
            answer(
                &shared,
                Some(Kind::AlertSubscribe),
                &out,
                reply,
                Some(permit),
            );
        }
        let caught_up = resume_after >= last;
        for a in &alerts {
            let Ok(slot) = unwritten.clone().try_acquire_owned() else {
                let _ = overrun.send(true);
                return;
            };
            send(&out, Frame::new(0, wire::wire_alert(a)), Some(slot));
        }
        // A client ahead of the server's sequence (restored from an older
        // backup) keeps its place, as SPEC 6.11 says.
        after = after.max(resume_after);
        if caught_up {
            tokio::time::sleep(ALERTS_POLL).await;
        }
    }
}

/// Writes a backup off the runtime and answers when it is done.
fn backup(
    shared: &Shared,
    request_id: u64,
    dir: String,
    out: Out,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    use reckon_protocol::codes::AdminCode;
    let refused = |message: String| {
        Message::BackupResult(msg::BackupResult {
            code: AdminCode::INVALID_INPUT,
            lsn: 0,
            digest: 0,
            bytes: 0,
            message,
        })
    };
    if shared.backup_running.swap(true, Ordering::AcqRel) {
        let reply = refused("a backup is running; try again when it ends".into());
        shared.ops.answered(Some(Kind::Backup), &reply);
        send(&out, Frame::new(request_id, reply), Some(permit));
        return;
    }
    let submitter = shared.submitter.clone();
    let stats = shared.journal_stats.clone();
    let data_dir = shared.data_dir.clone();
    let running = shared.backup_running.clone();
    let ops = shared.ops.clone();
    tokio::task::spawn_blocking(move || {
        let target = std::path::PathBuf::from(&dir);
        let result = crate::backup::backup(&submitter, &stats, &data_dir, &target);
        running.store(false, Ordering::Release);
        // Messages are bounded on the wire (1024 bytes).
        let short = |mut why: String| {
            if why.len() > 1000 {
                let mut end = 1000;
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                why.truncate(end);
            }
            why
        };
        let reply = match result {
            Ok(m) => {
                tracing::info!(dir = %target.display(), lsn = m.lsn, bytes = m.bytes, "backup written");
                Message::BackupResult(msg::BackupResult {
                    code: AdminCode::OK,
                    lsn: m.lsn,
                    digest: m.digest,
                    bytes: m.bytes,
                    message: String::new(),
                })
            }
            Err(crate::backup::BackupError::Refused(why)) => refused(short(why)),
            Err(crate::backup::BackupError::Failed(why)) => {
                tracing::error!(dir = %target.display(), error = %why, "backup failed");
                Message::Error(msg::ErrorReply {
                    code: ErrorCode::INTERNAL,
                    message: short(why),
                })
            }
        };
        ops.answered(Some(Kind::Backup), &reply);
        send(&out, Frame::new(request_id, reply), Some(permit));
    });
}

fn submit_one(
    shared: &Shared,
    caller: Caller,
    request_id: u64,
    body: Message,
    out: Out,
    permit: tokio::sync::OwnedSemaphorePermit,
    change: Option<(u64, crate::diameter::AccountChange)>,
) {
    let notifier = change.and(shared.diameter.clone());
    let kind = Some(body.kind());
    let started = std::time::Instant::now();
    let org = shared.ops.org_slot(caller);
    let (request, shape) = match wire::prepare(caller, body) {
        Prepared::Immediate(message) => {
            shared
                .ops
                .answered_by(kind, org, &message, started.elapsed());
            send(&out, Frame::new(request_id, message), Some(permit));
            return;
        }
        Prepared::Submit(request, shape) => (request, shape),
    };
    let ops = shared.ops.clone();
    // The permit travels with the reply; a refused submission hands it
    // back through this slot so the refusal carries it instead.
    let slot = Arc::new(parking_lot::Mutex::new(Some(permit)));
    let reply_slot = slot.clone();
    let reply_shape = shape.clone();
    let reply_out = out.clone();
    let submitted = shared.submitter.submit(
        vec![request],
        Box::new(move |result| {
            let message = match result {
                Ok(mut responses) => match responses.pop() {
                    Some(r) => wire::render(&reply_shape, r),
                    None => Message::Error(msg::ErrorReply {
                        code: ErrorCode::INTERNAL,
                        message: "no response".into(),
                    }),
                },
                Err(e) => Message::Error(msg::ErrorReply {
                    code: ErrorCode::INTERNAL,
                    message: e.to_string(),
                }),
            };
            if let (Some(n), Some((account, c)), Message::AdminResult(r)) =
                (&notifier, change, &message)
            {
                if r.code.is_ok() {
                    n.changed(account, c);
                }
            }
            ops.answered_by(kind, org, &message, started.elapsed());
            let permit = reply_slot.lock().take();
            send(&reply_out, Frame::new(request_id, message), permit);
        }),
    );
    if let Err(e) = submitted {
        let message = match e {
            JournalError::Busy => wire::busy_reply(&shape),
            other => Message::Error(msg::ErrorReply {
                code: ErrorCode::SHUTTING_DOWN,
                message: other.to_string(),
            }),
        };
        let permit = slot.lock().take();
        shared
            .ops
            .answered_by(kind, org, &message, started.elapsed());
        send(&out, Frame::new(request_id, message), permit);
    }
}

fn submit_batch(
    shared: &Shared,
    caller: Caller,
    request_id: u64,
    entries: Vec<Message>,
    out: Out,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    // Entries answered at once keep their place; the rest go to the writer
    // as one submission and fill their places when it replies.
    let mut slots: Vec<Option<Message>> = Vec::with_capacity(entries.len());
    let mut requests = Vec::new();
    let mut shapes = Vec::new();
    // Kinds of the submitted entries, to count their answers by.
    let mut kinds = Vec::new();
    let started = std::time::Instant::now();
    let org = shared.ops.org_slot(caller);
    for entry in entries {
        let kind = Some(entry.kind());
        match wire::prepare(caller, entry) {
            Prepared::Immediate(m) => {
                shared.ops.answered_by(kind, org, &m, started.elapsed());
                slots.push(Some(m));
            }
            Prepared::Submit(r, shape) => {
                slots.push(None);
                requests.push(r);
                shapes.push(shape);
                kinds.push(kind);
            }
        }
    }
    if requests.is_empty() {
        let entries = slots.into_iter().flatten().collect();
        send(
            &out,
            Frame::new(request_id, Message::BatchResult(BatchResult { entries })),
            Some(permit),
        );
        return;
    }
    let shapes = Arc::new(shapes);
    let reply_shapes = shapes.clone();
    let kinds = Arc::new(kinds);
    let reply_kinds = kinds.clone();
    let ops = shared.ops.clone();
    let slots = Arc::new(parking_lot::Mutex::new((slots, Some(permit))));
    let reply_slots = slots.clone();
    let reply_out = out.clone();
    let submitted = shared.submitter.submit(
        requests,
        Box::new(move |result| {
            let mut responses = match result {
                Ok(r) => r
                    .into_iter()
                    .zip(reply_shapes.iter())
                    .map(|(r, s)| wire::render(s, r))
                    .collect::<Vec<_>>(),
                Err(e) => reply_shapes
                    .iter()
                    .map(|_| {
                        Message::Error(msg::ErrorReply {
                            code: ErrorCode::INTERNAL,
                            message: e.to_string(),
                        })
                    })
                    .collect(),
            }
            .into_iter();
            let elapsed = started.elapsed();
            for (kind, message) in reply_kinds.iter().zip(responses.as_slice()) {
                ops.answered_by(*kind, org, message, elapsed);
            }
            let (slots, permit) = std::mem::take(&mut *reply_slots.lock());
            let entries = slots
                .into_iter()
                .map(|slot| slot.or_else(|| responses.next()))
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default();
            send(
                &reply_out,
                Frame::new(request_id, Message::BatchResult(BatchResult { entries })),
                permit,
            );
        }),
    );
    if let Err(e) = submitted {
        let mut busy = shapes.iter().zip(kinds.iter()).map(|(shape, kind)| {
            let message = match &e {
                JournalError::Busy => wire::busy_reply(shape),
                other => Message::Error(msg::ErrorReply {
                    code: ErrorCode::SHUTTING_DOWN,
                    message: other.to_string(),
                }),
            };
            shared
                .ops
                .answered_by(*kind, org, &message, started.elapsed());
            message
        });
        let (slots, permit) = std::mem::take(&mut *slots.lock());
        let entries = slots
            .into_iter()
            .map(|slot| slot.or_else(|| busy.next()))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        send(
            &out,
            Frame::new(request_id, Message::BatchResult(BatchResult { entries })),
            permit,
        );
    }
}
