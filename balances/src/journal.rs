//! The durable single writer: applies requests to a state machine in one
//! order, logs them with group commit, checkpoints into the snapshot
//! store, recovers.
//!
//! ```text
//! clients ──submit──▶ [bounded queue] ──▶ writer thread: apply, frame log records
//!                                              │ batch (records + replies)
//!                                              ▼
//!                                         sync thread: write + fdatasync, then reply
//!                                              │ checkpoint (after its records are durable)
//!                                              ▼
//!                                         snapshot thread: snapshot store (one group, fdatasync), history
//! ```
//!
//! The writer forms batch N+1 while the sync thread makes batch N durable;
//! when several batches wait, the sync thread merges them into one write and
//! one fdatasync. Every reply — also to a read or a retried operation that
//! logs nothing — is sent only after the batch it was applied in is durable,
//! so no client ever sees state that a crash could take back.
//!
//! The journal is generic over [`Machine`], so the charging engine logs its
//! session operations through the same writer and log as the ledger.

use crate::snapshot::SnapshotWrite;
use crate::types::Timestamp;
use crate::wal::{self, Lsn, WalBatch, WalConfig, WalWriter};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A deterministic state machine the journal makes durable.
pub trait Machine: Send + Sized + 'static {
    /// What clients submit.
    type Request: Send + 'static;
    /// What they get back.
    type Response: Send + 'static;

    /// Applies a request at `now`. When it may change state, appends the
    /// bytes that [`Machine::replay`] needs to redo it to `log`; leaving
    /// `log` as it was means nothing is logged. (`log` may already hold a
    /// prefix of the caller's: append, never clear.) `lsn` is the position
    /// the record will have in the log if one is written.
    fn apply(
        &mut self,
        now: Timestamp,
        lsn: u64,
        request: Self::Request,
        log: &mut Vec<u8>,
    ) -> Self::Response;

    /// Redoes the logged request at `lsn` during recovery.
    fn replay(&mut self, now: Timestamp, lsn: u64, payload: &[u8]) -> Result<(), String>;

    /// During recovery, shows the machine a record its snapshot already
    /// covers (only records still in the log, see
    /// [`Machine::log_retention_ms`]), so it can rebuild memory it keeps
    /// outside the snapshot, such as where its remembered answers are.
    fn recall(&mut self, _now: Timestamp, _lsn: u64, _payload: &[u8]) -> Result<(), String> {
        Ok(())
    }

    /// How long a log record must stay in the log after it was written,
    /// in ms, whatever the checkpoints cover (the machine reads its records
    /// back, see [`Machine::attach_log`]).
    fn log_retention_ms(&self) -> u64 {
        0
    }

    /// Told, before recovery replays the log, how many records it will
    /// replay, so tables that grow with them are sized once (a table grown
    /// by doubling while 10M records replay zeroes and copies gigabytes).
    fn replay_hint(&mut self, _records: u64) {}

    /// Gives the machine a reader of its own durable log records.
    fn attach_log(&mut self, _reader: LogReader) {}

    /// Begins a checkpoint of the state as it is now, cheaply: the
    /// encoding is done by [`Machine::checkpoint_step`], and the machine
    /// keeps what the checkpoint must write until then (copy on write).
    /// Does nothing while an earlier checkpoint is not complete.
    fn checkpoint_begin(&mut self, now: Timestamp);

    /// Encodes up to about `budget` more entries of the checkpoint begun;
    /// returns all its writes once it is complete (an empty list when none
    /// was begun). The writer calls it between batches, so a checkpoint
    /// never stalls requests for long.
    fn checkpoint_step(&mut self, budget: usize) -> Option<Vec<SnapshotWrite>>;

    /// Snapshot writes for everything changed since the last checkpoint,
    /// begun and finished at once (after finishing one begun earlier).
    fn checkpoint(&mut self, now: Timestamp) -> Vec<SnapshotWrite> {
        let mut writes = self.checkpoint_step(usize::MAX).unwrap_or_default();
        self.checkpoint_begin(now);
        writes.extend(self.checkpoint_step(usize::MAX).unwrap_or_default());
        writes
    }

    /// Work of the checkpoint just taken that can run off the writer
    /// thread: the journal calls it on the snapshot thread and writes what
    /// it returns with the rest (e.g. encoding data the machine handed over).
    fn checkpoint_background(&mut self) -> Option<Deferred> {
        None
    }

    /// Rebuilds the machine from all snapshot pairs.
    fn restore(pairs: &mut dyn Iterator<Item = SnapshotPair>) -> Result<Self, String>;

    /// Checks invariants; recovery refuses to serve a state that fails.
    fn check(&self) -> Result<(), String>;

    /// A server-issued request due at `now` (e.g. an expiry sweep).
    fn due(&self, now: Timestamp) -> Option<Self::Request>;
}

/// Reads a durable log record back: its time and payload.
pub type LogReader = Arc<dyn Fn(u64) -> Option<(Timestamp, Vec<u8>)> + Send + Sync>;

/// Checkpoint work moved off the writer thread.
pub type Deferred = Box<dyn FnOnce() -> CheckpointExtra + Send>;

/// What checkpoint work done off the writer produces: more snapshot
/// writes, and history records (the audit trail) for the history store.
#[derive(Debug, Default)]
pub struct CheckpointExtra {
    /// More snapshot writes.
    pub writes: Vec<SnapshotWrite>,
    /// Records appended to the history store.
    pub history: Vec<Vec<u8>>,
}

/// One key/value of the snapshot as read back.
pub type SnapshotPair = (Vec<u8>, Vec<u8>);

/// Where time comes from: the system clock in production, a fake in tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system clock in milliseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since.as_millis() as u64)
    })
}

/// Settings of a journal.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Directory holding `wal/` and `snapshot/`.
    pub data_dir: PathBuf,
    /// Most submissions waiting for the writer; more are refused as busy.
    pub queue_capacity: usize,
    /// Most requests applied in one batch.
    pub batch_requests_max: usize,
    /// Checkpoint after this many milliseconds ...
    pub checkpoint_interval_ms: u64,
    /// ... or after this many log records, whichever comes first.
    pub checkpoint_records: u64,
    /// How often the writer wakes to run due server requests (sweeps).
    pub tick_ms: u64,
    /// Largest WAL segment before rolling to a new one.
    pub segment_bytes_max: u64,
    /// Bytes of history (the audit trail) kept; older segments are removed.
    pub history_bytes_max: u64,
    /// Write a checkpoint on shutdown so the next start replays little
    /// (tests turn it off to exercise replay).
    pub checkpoint_on_shutdown: bool,
}

/// Bytes of history kept by default (1 GiB).
pub const HISTORY_BYTES_MAX_DEFAULT: u64 = 1 << 30;

impl JournalConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            data_dir: data_dir.into(),
            queue_capacity: 16_384,
            batch_requests_max: 8_192,
            // A checkpoint rewrites every entry changed since the last one
            // (all 100k accounts under load: ~15 MB): once a second, that
            // was ~165 of the ~550 bytes written per request. Every 5 s or
            // 1M records, a restart replays at most ~2 s of log (replay
            // runs at ~570k records/s), and the writer's pause does not
            // depend on it (checkpoints are encoded in slices).
            checkpoint_interval_ms: 5_000,
            checkpoint_records: 1_000_000,
            tick_ms: 100,
            // Segments are dropped whole once a checkpoint and the window
            // cover them: at ~14 MB/s of log under full load, 16 MB ones
            // keep the directory's sawtooth to about one segment (64 MB
            // ones swung it by 12.8 % in a 10-minute run).
            segment_bytes_max: 16 << 20,
            history_bytes_max: HISTORY_BYTES_MAX_DEFAULT,
            checkpoint_on_shutdown: true,
        }
    }
}

/// Why the journal could not open or serve.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The write-ahead log failed.
    #[error("write-ahead log: {0}")]
    Wal(#[from] wal::WalError),
    /// The snapshot or history store failed.
    #[error("snapshot store: {0}")]
    Snapshot(#[from] crate::snapstore::SnapStoreError),
    /// Another I/O failure, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The snapshot or a log record could not be decoded or re-applied.
    #[error("recovery: {0}")]
    Recovery(String),
    /// The recovered state broke an invariant; refusing to serve it.
    #[error("recovered state is inconsistent: {0}")]
    Invariant(String),
    /// Another process has the data directory open.
    #[error("data directory {0} is in use by another Reckon process")]
    InUse(PathBuf),
    /// The queue is full; retry later.
    #[error("busy: the writer's queue is full")]
    Busy,
    /// The journal stopped (shut down, or a write or sync failed); nothing
    /// more is acknowledged.
    #[error("journal stopped: {0}")]
    Stopped(String),
}

/// Whether the journal still serves, and why not once it stopped: shared by
/// its threads (a failed fdatasync, a panicking thread) and read by the
/// server, which must then exit so a supervisor restarts it into recovery.
#[derive(Debug, Default)]
pub struct Health {
    stopped: AtomicBool,
    failure: parking_lot::Mutex<Option<String>>,
}

impl Health {
    /// Records a fatal failure (the first one wins) and stops the journal.
    pub fn fail(&self, why: impl Into<String>) {
        let mut failure = self.failure.lock();
        if failure.is_none() {
            *failure = Some(why.into());
        }
        self.stopped.store(true, Ordering::Release);
    }

    /// The fatal failure, if one happened.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// Marks the journal failed when the thread holding it unwinds from a
/// panic: a dead writer must not leave a server answering errors forever.
struct PanicGuard(Arc<Health>, &'static str);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(format!("the {} thread panicked", self.1));
        }
    }
}

/// The writer's time: it follows the wall clock, never runs backwards, and
/// never jumps. A wall clock stepped forward (NTP, a paused VM) is caught up
/// at most at twice the speed of real (monotonic) time, so answers, op ids,
/// reservations and sessions age out in order instead of all at once; a
/// wall clock stepped back is waited for at half speed. Pure (readings are
/// passed in), so the simulator runs the same rule.
#[derive(Clone, Debug)]
pub struct WriterClock {
    now: Timestamp,
    mono_ms: u64,
    warned_at_ms: Option<u64>,
}

/// Difference between wall and writer time worth a log line, in ms.
const CLOCK_STEP_WARN_MS: u64 = 10_000;

impl WriterClock {
    /// Starts at `start` (at least the time of the last logged record).
    pub fn new(start: Timestamp, mono_ms: u64) -> WriterClock {
        WriterClock {
            now: start,
            mono_ms,
            warned_at_ms: None,
        }
    }

    /// The writer's current time.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Advances to a new reading of the wall clock and the monotonic clock.
    pub fn advance(&mut self, wall: Timestamp, mono_ms: u64) -> Timestamp {
        let dt = mono_ms.saturating_sub(self.mono_ms);
        self.mono_ms = self.mono_ms.max(mono_ms);
        let step = if wall > self.now {
            (wall.0 - self.now.0).min(dt.saturating_mul(2).saturating_add(1))
        } else {
            dt / 2
        };
        self.now = Timestamp(self.now.0.saturating_add(step));
        let gap = wall.0.abs_diff(self.now.0);
        if gap > CLOCK_STEP_WARN_MS
            && self
                .warned_at_ms
                .is_none_or(|at| mono_ms.saturating_sub(at) >= 60_000)
        {
            self.warned_at_ms = Some(mono_ms);
            tracing::warn!(
                wall_ms = wall.0,
                writer_ms = self.now.0,
                "the wall clock differs from the writer's time by {gap} ms (a clock step?); the writer's time follows it gradually"
            );
        } else if gap <= CLOCK_STEP_WARN_MS {
            self.warned_at_ms = None;
        }
        self.now
    }
}

/// What a submitter gets back: every response of its batch, in order.
pub type Reply<M> =
    Box<dyn FnOnce(Result<Vec<<M as Machine>::Response>, Arc<JournalError>>) + Send>;

enum Submission<M: Machine> {
    Requests(Vec<M::Request>, Reply<M>),
    Shutdown,
}

struct Batch<M: Machine> {
    wal: WalBatch,
    replies: Vec<(Reply<M>, Vec<M::Response>)>,
    checkpoint: Option<Checkpoint>,
    /// The writer's time when the batch was formed, and how long the
    /// machine needs log records kept: segments are removed only once a
    /// checkpoint covers them and they are that old.
    now: Timestamp,
    retention_ms: u64,
}

/// A checkpoint on its way to the snapshot store: writes encoded on the writer, and work
/// to finish on the snapshot thread.
struct Checkpoint {
    lsn: Lsn,
    writes: Vec<SnapshotWrite>,
    deferred: Option<Deferred>,
}

/// Counters of the journal's work, readable while it runs.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Requests applied.
    pub requests: AtomicU64,
    /// Log records made durable.
    pub records: AtomicU64,
    /// fdatasync calls.
    pub syncs: AtomicU64,
    /// Most records made durable by one fdatasync.
    pub records_per_sync_max: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Last durable log position.
    pub durable_lsn: AtomicU64,
    /// Longest time the writer paused at once for checkpoint work (beginning
    /// one, or encoding a slice of it), in µs.
    pub checkpoint_pause_us_max: AtomicU64,
    /// Total time the writer spent on checkpoint work, in µs.
    pub checkpoint_work_us: AtomicU64,
    /// Checkpoint pauses longer than 1 ms (the target for one pause).
    pub checkpoint_pauses_over_1ms: AtomicU64,
    /// Time of each group commit's write and fdatasync, in µs.
    pub sync_us: Log2Histogram,
    /// Log records made durable by each fdatasync (group-commit size).
    pub records_per_sync: Log2Histogram,
    /// Time the snapshot thread took for the last checkpoint, in µs.
    pub checkpoint_last_us: AtomicU64,
    /// Bytes of keys and values the last checkpoint wrote.
    pub checkpoint_last_bytes: AtomicU64,
    /// Log position the last checkpoint covers.
    pub checkpoint_last_lsn: AtomicU64,
    /// When the last checkpoint landed, in ms since the Unix epoch.
    pub checkpoint_last_unix_ms: AtomicU64,
    /// Held by the snapshot thread while it writes a checkpoint: whoever
    /// holds it (a backup) sees the snapshot and history stores unchanged.
    pub checkpoint_hold: parking_lot::Mutex<()>,
}

/// Buckets of a [`Log2Histogram`]: upper bounds 1, 2, 4, ... 2^30, then
/// one for larger values.
pub const LOG2_BUCKETS: usize = 32;

/// A histogram of relaxed atomic counters in power-of-two buckets: bucket
/// `i` counts values in (2^(i-1), 2^i]. Lock-free, fixed size.
#[derive(Debug, Default)]
pub struct Log2Histogram {
    buckets: [AtomicU64; LOG2_BUCKETS],
    sum: AtomicU64,
}

impl Log2Histogram {
    /// Counts one value.
    pub fn record(&self, value: u64) {
        let i = if value <= 1 {
            0
        } else {
            (64 - (value - 1).leading_zeros()) as usize
        };
        self.buckets[i.min(LOG2_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts per bucket (not cumulative) and the sum of the values.
    pub fn read(&self) -> ([u64; LOG2_BUCKETS], u64) {
        let counts = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        (counts, self.sum.load(Ordering::Relaxed))
    }
}

/// What recovery found and did.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    /// Log position of the snapshot loaded.
    pub snapshot_lsn: u64,
    /// Keys read from the snapshot.
    pub snapshot_keys: u64,
    /// Log records replayed after it.
    pub replayed: u64,
    /// Bytes of a torn record cut off the log's tail.
    pub torn_tail_bytes: u64,
    /// Time spent loading the snapshot, in milliseconds.
    pub snapshot_ms: u64,
    /// Time spent replaying the log, in milliseconds.
    pub replay_ms: u64,
    /// Time spent in all, in milliseconds.
    pub elapsed_ms: u64,
}

/// What an offline check of a data directory found ([`Journal::check_data_dir`]).
#[derive(Debug, Clone)]
pub struct DataDirReport {
    /// The log: segments, LSNs, and the torn tail a start would cut.
    pub wal: wal::WalInspection,
    /// Log position the snapshot covers.
    pub snapshot_lsn: u64,
    /// Keys in the snapshot.
    pub snapshot_keys: u64,
    /// Log records after the snapshot, replayed.
    pub replayed: u64,
}

/// The running journal; owns its threads. Stop it with [`Journal::shutdown`].
pub struct Journal<M: Machine> {
    submitter: Submitter<M>,
    health: Arc<Health>,
    stats: Arc<JournalStats>,
    threads: Vec<JoinHandle<()>>,
    /// Held (and so locked) for as long as the journal lives.
    _lock: std::fs::File,
}

/// A cloneable handle that submits requests to a running journal.
pub struct Submitter<M: Machine> {
    queue: Sender<Submission<M>>,
    health: Arc<Health>,
}

impl<M: Machine> Clone for Submitter<M> {
    fn clone(&self) -> Self {
        Submitter {
            queue: self.queue.clone(),
            health: self.health.clone(),
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JournalError {
    let what = what.into();
    move |source| JournalError::Io { what, source }
}

/// A log record's time (its first 8 bytes) and the machine's payload.
fn split_record(record: &[u8]) -> Result<(Timestamp, &[u8]), String> {
    if record.len() < 8 {
        return Err("log record shorter than its timestamp".to_string());
    }
    let now = Timestamp(u64::from_le_bytes(
        record[..8].try_into().unwrap_or_default(),
    ));
    Ok((now, &record[8..]))
}

/// A [`LogReader`] over the write-ahead log.
fn log_reader(reader: wal::WalReader) -> LogReader {
    Arc::new(move |lsn| {
        let record = reader.read(Lsn(lsn))?;
        let (now, payload) = split_record(&record).ok()?;
        Some((now, payload.to_vec()))
    })
}

impl<M: Machine> Journal<M> {
    /// Opens the data directory, recovers the machine (snapshot + log
    /// suffix, then an invariant check) and starts the writer, sync and
    /// snapshot threads.
    pub fn open(
        config: JournalConfig,
        clock: Clock,
    ) -> Result<(Journal<M>, RecoveryReport), JournalError> {
        let started = Instant::now();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(io_err(format!("creating {}", config.data_dir.display())))?;
        // One process per data directory: a second would interleave its log
        // with ours. The lock goes with the process, kill -9 included.
        let lock_path = config.data_dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return Err(JournalError::InUse(config.data_dir.clone()));
        }
        let snapshot_dir = config.data_dir.join("snapshot");
        if snapshot_dir.join("conf").exists() || snapshot_dir.join("db").exists() {
            return Err(JournalError::Recovery(format!(
                "{} holds a snapshot written by an older Reckon (sled); this version cannot read it: start from an empty data directory",
                snapshot_dir.display()
            )));
        }
        let (store, loaded) = crate::snapstore::SnapStore::open(&snapshot_dir)?;
        let snapshot_lsn = loaded.lsn;
        let keys = loaded.pairs.len() as u64;
        let mut pairs = loaded.pairs.into_iter();
        let machine = M::restore(&mut pairs);
        drop(pairs);
        let mut machine = machine.map_err(JournalError::Recovery)?;
        let snapshot_ms = started.elapsed().as_millis() as u64;

        let mut wal_config = WalConfig::new(config.data_dir.join("wal"));
        wal_config.segment_bytes_max = config.segment_bytes_max;
        let opened = wal::open(&wal_config)?;
        machine.attach_log(log_reader(opened.writer.reader()));
        let mut replayed = 0u64;
        let mut last_now = Timestamp(0);
        recall_covered(&wal_config, opened.first_lsn, snapshot_lsn, &mut machine)?;
        machine.replay_hint(opened.last_lsn.0.saturating_sub(snapshot_lsn));
        let last = wal::replay(&wal_config, Lsn(snapshot_lsn), |lsn, record| {
            let (now, payload) = split_record(record)?;
            last_now = last_now.max(now);
            replayed += 1;
            machine.replay(now, lsn.0, payload)
        })
        .map_err(|e| JournalError::Recovery(format!("{e}")))?;
        let replay_ms = started.elapsed().as_millis() as u64 - snapshot_ms;
        machine.check().map_err(JournalError::Invariant)?;
        let next_lsn = Lsn(last.0.max(opened.last_lsn.0).max(snapshot_lsn) + 1);
        let report = RecoveryReport {
            snapshot_lsn,
            snapshot_keys: keys,
            replayed,
            torn_tail_bytes: opened.torn_tail_bytes,
            snapshot_ms,
            replay_ms,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(?report, "recovered");
        let journal = Self::start(
            config,
            clock,
            machine,
            opened.writer,
            next_lsn,
            last_now,
            store,
            lock,
        )?;
        Ok((journal, report))
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        config: JournalConfig,
        clock: Clock,
        machine: M,
        writer: WalWriter,
        next_lsn: Lsn,
        last_now: Timestamp,
        store: crate::snapstore::SnapStore,
        lock: std::fs::File,
    ) -> Result<Journal<M>, JournalError> {
        let history = crate::snapstore::HistoryStore::open(
            &config.data_dir.join(crate::snapstore::HISTORY_DIR),
            config.history_bytes_max,
        )?;
        let (queue_tx, queue_rx) = bounded::<Submission<M>>(config.queue_capacity);
        let (sync_tx, sync_rx) = bounded::<Batch<M>>(2);
        let (snap_tx, snap_rx) = bounded::<Checkpoint>(1);
        let (trim_tx, trim_rx) = bounded::<Lsn>(4);
        let recovered = (Lsn(next_lsn.0 - 1), last_now);
        let stats = Arc::new(JournalStats::default());
        stats.durable_lsn.store(next_lsn.0 - 1, Ordering::Relaxed);
        let health = Arc::new(Health::default());
        let checkpoint_busy = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();

        let writer_state = WriterLoop {
            config: config.clone(),
            clock: clock.clone(),
            machine,
            queue: queue_rx,
            sync: sync_tx,
            batch: WalBatch::new(next_lsn),
            // Downtime was real time: start at the wall clock (or the last
            // record's time, if the clock is behind it).
            time: WriterClock::new(last_now.max(clock()), 0),
            started: Instant::now(),
            health: health.clone(),
            stats: stats.clone(),
            checkpoint_busy: checkpoint_busy.clone(),
            records_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            pending: None,
        };
        threads.push(
            std::thread::Builder::new()
                .name("reckon-writer".into())
                .spawn(move || writer_state.run())
                .expect("spawning the writer thread"),
        );
        let sync_stats = stats.clone();
        let sync_health = health.clone();
        threads.push(
            std::thread::Builder::new()
                .name("reckon-sync".into())
                .spawn(move || {
                    sync_loop::<M>(
                        writer,
                        sync_rx,
                        snap_tx,
                        trim_rx,
                        sync_stats,
                        sync_health,
                        recovered,
                    )
                })
                .expect("spawning the sync thread"),
        );
        let snap_stats = stats.clone();
        let snap_health = health.clone();
        threads.push(
            std::thread::Builder::new()
                .name("reckon-snapshot".into())
                .spawn(move || {
                    snapshot_loop(
                        store,
                        history,
                        snap_rx,
                        trim_tx,
                        snap_stats,
                        checkpoint_busy,
                        snap_health,
                    )
                })
                .expect("spawning the snapshot thread"),
        );
        Ok(Journal {
            submitter: Submitter {
                queue: queue_tx,
                health: health.clone(),
            },
            health,
            stats,
            threads,
            _lock: lock,
        })
    }

    /// Verifies a stopped server's data directory without changing it:
    /// the log (what a start would cut or refuse), the snapshot, a replay of
    /// the log after it, and the machine's invariant check. Refuses a
    /// directory in use.
    pub fn check_data_dir(data_dir: &Path) -> Result<DataDirReport, JournalError> {
        Self::recover_offline(data_dir).map(|(_, report)| report)
    }

    /// What [`Journal::check_data_dir`] checks, also returning the machine
    /// recovered (snapshot plus every log record), changing nothing: what
    /// a restore compares with its backup.
    pub fn recover_offline(data_dir: &Path) -> Result<(M, DataDirReport), JournalError> {
        if !data_dir.is_dir() {
            return Err(JournalError::Recovery(format!(
                "{} is not a data directory",
                data_dir.display()
            )));
        }
        let lock_path = data_dir.join("LOCK");
        let _lock = match std::fs::File::open(&lock_path) {
            Ok(f) => {
                if f.try_lock_shared().is_err() {
                    return Err(JournalError::InUse(data_dir.to_path_buf()));
                }
                Some(f)
            }
            Err(_) => None,
        };
        let wal_config = WalConfig::new(data_dir.join("wal"));
        let found = wal::inspect(&wal_config)?;
        let snapshot_dir = data_dir.join("snapshot");
        if snapshot_dir.join("conf").exists() || snapshot_dir.join("db").exists() {
            return Err(JournalError::Recovery(format!(
                "{} holds a snapshot written by an older Reckon (sled)",
                snapshot_dir.display()
            )));
        }
        let loaded = crate::snapstore::load(&snapshot_dir)?;
        let snapshot_lsn = loaded.lsn;
        let keys = loaded.pairs.len() as u64;
        let mut pairs = loaded.pairs.into_iter();
        let machine = M::restore(&mut pairs);
        drop(pairs);
        let mut machine = machine.map_err(JournalError::Recovery)?;
        let reader = wal::open_reader(&wal_config)?;
        machine.attach_log(log_reader(reader));
        let mut replayed = 0u64;
        recall_covered(&wal_config, found.first_lsn, snapshot_lsn, &mut machine)?;
        if found.last_lsn.0 > snapshot_lsn {
            wal::replay_upto(
                &wal_config,
                Lsn(snapshot_lsn),
                found.last_lsn,
                |lsn, record| {
                    let (now, payload) = split_record(record)?;
                    replayed += 1;
                    machine.replay(now, lsn.0, payload)
                },
            )
            .map_err(|e| JournalError::Recovery(format!("{e}")))?;
        } else if found.last_lsn.0 < snapshot_lsn && found.last_lsn.0 != 0 {
            return Err(JournalError::Recovery(format!(
                "the log ends at lsn {} before the snapshot's {snapshot_lsn}",
                found.last_lsn.0
            )));
        }
        machine.check().map_err(JournalError::Invariant)?;
        let report = DataDirReport {
            wal: found,
            snapshot_lsn,
            snapshot_keys: keys,
            replayed,
        };
        Ok((machine, report))
    }

    /// A cloneable handle for submitting from other threads.
    pub fn submitter(&self) -> Submitter<M> {
        self.submitter.clone()
    }

    /// See [`Submitter::submit`].
    pub fn submit(&self, requests: Vec<M::Request>, reply: Reply<M>) -> Result<(), JournalError> {
        self.submitter.submit(requests, reply)
    }

    /// See [`Submitter::call_batch`].
    pub fn call_batch(&self, requests: Vec<M::Request>) -> Result<Vec<M::Response>, JournalError> {
        self.submitter.call_batch(requests)
    }

    /// See [`Submitter::call`].
    pub fn call(&self, request: M::Request) -> Result<M::Response, JournalError> {
        self.submitter.call(request)
    }

    /// Whether the journal stopped on a fatal failure (a failed fdatasync,
    /// a dead thread), and why.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Counters of the journal's work.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// The counters, shared (for readers that outlive a borrow).
    pub fn stats_handle(&self) -> Arc<JournalStats> {
        self.stats.clone()
    }

    /// Drains queued requests, makes them durable, writes a final
    /// checkpoint and stops the threads.
    pub fn shutdown(mut self) {
        let _ = self.submitter.queue.send(Submission::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<M: Machine> Submitter<M> {
    /// Submissions waiting in the writer's queue now.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Submits a batch of requests; `reply` gets their responses once the
    /// batch is durable. Refuses with [`JournalError::Busy`] when the queue
    /// is full rather than queueing without bound.
    pub fn submit(&self, requests: Vec<M::Request>, reply: Reply<M>) -> Result<(), JournalError> {
        if self.health.is_stopped() {
            return Err(JournalError::Stopped(
                self.health
                    .failure()
                    .unwrap_or_else(|| "journal is stopped".into()),
            ));
        }
        match self.queue.try_send(Submission::Requests(requests, reply)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(JournalError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(JournalError::Stopped("writer gone".into())),
        }
    }

    /// Submits one batch and waits for its responses (blocking the caller;
    /// waits for queue space instead of refusing).
    pub fn call_batch(&self, requests: Vec<M::Request>) -> Result<Vec<M::Response>, JournalError> {
        let (tx, rx) = bounded(1);
        let reply: Reply<M> = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.queue
            .send(Submission::Requests(requests, reply))
            .map_err(|_| JournalError::Stopped("writer gone".into()))?;
        match rx.recv() {
            Ok(Ok(responses)) => Ok(responses),
            Ok(Err(e)) => Err(JournalError::Stopped(e.to_string())),
            Err(_) => Err(JournalError::Stopped("reply dropped".into())),
        }
    }

    /// Submits one request and waits for its response.
    pub fn call(&self, request: M::Request) -> Result<M::Response, JournalError> {
        self.call_batch(vec![request])?
            .pop()
            .ok_or_else(|| JournalError::Stopped("no response".into()))
    }
}

struct WriterLoop<M: Machine> {
    config: JournalConfig,
    clock: Clock,
    machine: M,
    queue: Receiver<Submission<M>>,
    sync: Sender<Batch<M>>,
    batch: WalBatch,
    time: WriterClock,
    started: Instant,
    health: Arc<Health>,
    stats: Arc<JournalStats>,
    checkpoint_busy: Arc<AtomicBool>,
    records_since_checkpoint: u64,
    last_checkpoint: Instant,
    /// The checkpoint begun and still being encoded: the log position it
    /// covers and its off-writer work.
    pending: Option<(Lsn, Option<Deferred>)>,
}

/// Longest slice of checkpoint encoding the writer does between batches.
const CHECKPOINT_SLICE: Duration = Duration::from_micros(250);
/// Entries encoded between two looks at the clock.
const CHECKPOINT_STEP_ENTRIES: usize = 128;

impl<M: Machine> WriterLoop<M> {
    fn now(&mut self) -> Timestamp {
        // Time never runs backwards in the log and never jumps, whatever
        // the wall clock does.
        let mono_ms = self.started.elapsed().as_millis() as u64;
        self.time.advance((self.clock)(), mono_ms)
    }

    fn run(mut self) {
        let _guard = PanicGuard(self.health.clone(), "writer");
        let tick = Duration::from_millis(self.config.tick_ms.max(1));
        let mut record = Vec::with_capacity(256);
        let mut shutting_down = false;
        loop {
            let mut replies: Vec<(Reply<M>, Vec<M::Response>)> = Vec::new();
            let mut applied = 0usize;
            // A checkpoint being encoded goes on while no request comes.
            let wait = if self.pending.is_some() {
                Duration::from_millis(1)
            } else {
                tick
            };
            let first = if shutting_down {
                self.queue.try_recv().ok()
            } else {
                match self.queue.recv_timeout(wait) {
                    Ok(s) => Some(s),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        shutting_down = true;
                        None
                    }
                }
            };
            let now = self.now();
            let mut next = first;
            while let Some(submission) = next.take() {
                match submission {
                    Submission::Shutdown => shutting_down = true,
                    Submission::Requests(requests, reply) => {
                        let mut responses = Vec::with_capacity(requests.len());
                        for request in requests {
                            responses.push(self.apply_logged(now, request, &mut record));
                            applied += 1;
                        }
                        replies.push((reply, responses));
                    }
                }
                if applied >= self.config.batch_requests_max {
                    break;
                }
                next = self.queue.try_recv().ok();
            }
            // Server-issued work (expiry sweeps) rides in the same batch.
            if let Some(request) = self.machine.due(now) {
                let _ = self.apply_logged(now, request, &mut record);
            }
            self.stats
                .requests
                .fetch_add(applied as u64, Ordering::Relaxed);
            let checkpoint = self.maybe_checkpoint(now, shutting_down);
            let idle = replies.is_empty() && self.batch.is_empty() && checkpoint.is_none();
            if !idle {
                let batch = Batch {
                    wal: self.batch.take(),
                    replies,
                    checkpoint,
                    now,
                    retention_ms: self.machine.log_retention_ms(),
                };
                if self.sync.send(batch).is_err() {
                    return;
                }
            }
            if shutting_down && self.queue.is_empty() {
                if !self.config.checkpoint_on_shutdown {
                    return;
                }
                if !self.checkpoint_busy.load(Ordering::Acquire) && self.pending.is_none() {
                    // Final checkpoint so the next start replays little.
                    if let Some(cp) = self.checkpoint(now) {
                        let _ = self.sync.send(Batch {
                            wal: self.batch.take(),
                            replies: Vec::new(),
                            checkpoint: Some(cp),
                            now,
                            retention_ms: self.machine.log_retention_ms(),
                        });
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Applies a request and logs what it appended, as one record: the
    /// time, then the machine's payload written straight after it (no copy).
    fn apply_logged(
        &mut self,
        now: Timestamp,
        request: M::Request,
        record: &mut Vec<u8>,
    ) -> M::Response {
        record.clear();
        record.extend_from_slice(&now.0.to_le_bytes());
        let lsn = self.batch.next_lsn().0;
        let response = self.machine.apply(now, lsn, request, record);
        if record.len() > 8 {
            self.push_record(record);
        }
        response
    }

    fn push_record(&mut self, record: &[u8]) {
        // Records are bounded by the machine's own input limits; one that is
        // still too large is a bug, and losing it silently would be worse.
        self.batch
            .push(record)
            .expect("log record exceeds the WAL's record limit");
        self.records_since_checkpoint += 1;
    }

    /// Begins a checkpoint and encodes it whole (at shutdown).
    fn checkpoint(&mut self, now: Timestamp) -> Option<Checkpoint> {
        self.begin_checkpoint(now);
        self.checkpoint_work(usize::MAX, None)
    }

    fn begin_checkpoint(&mut self, now: Timestamp) {
        let started = Instant::now();
        self.machine.checkpoint_begin(now);
        let deferred = self.machine.checkpoint_background();
        self.pending = Some((Lsn(self.batch.next_lsn().0 - 1), deferred));
        self.records_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.checkpoint_busy.store(true, Ordering::Release);
        self.note_pause(started, "begin");
    }

    /// Encodes more of the checkpoint begun, for at most `slice` (when
    /// given); returns it once complete.
    fn checkpoint_work(&mut self, entries: usize, slice: Option<Duration>) -> Option<Checkpoint> {
        self.pending.as_ref()?;
        let started = Instant::now();
        let writes = loop {
            if let Some(writes) = self.machine.checkpoint_step(entries) {
                break Some(writes);
            }
            if slice.is_some_and(|s| started.elapsed() >= s) {
                break None;
            }
        };
        self.note_pause(
            started,
            if writes.is_some() {
                "last slice"
            } else {
                "slice"
            },
        );
        let writes = writes?;
        let (lsn, deferred) = self.pending.take()?;
        tracing::debug!(
            writes = writes.len(),
            lsn = lsn.0,
            "checkpoint encoded between batches"
        );
        Some(Checkpoint {
            lsn,
            writes,
            deferred,
        })
    }

    /// Records how long the writer paused for checkpoint work: the stall
    /// requests see, so it is measured and reported.
    fn note_pause(&self, started: Instant, phase: &'static str) {
        let micros = started.elapsed().as_micros() as u64;
        if micros > 1000 {
            self.stats
                .checkpoint_pauses_over_1ms
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(phase, micros, "checkpoint pause over 1 ms");
        }
        self.stats
            .checkpoint_pause_us_max
            .fetch_max(micros, Ordering::Relaxed);
        self.stats
            .checkpoint_work_us
            .fetch_add(micros, Ordering::Relaxed);
    }

    fn maybe_checkpoint(&mut self, now: Timestamp, shutting_down: bool) -> Option<Checkpoint> {
        if self.pending.is_some() {
            // At shutdown the checkpoint begun is finished at once.
            let slice = (!shutting_down).then_some(CHECKPOINT_SLICE);
            return self.checkpoint_work(CHECKPOINT_STEP_ENTRIES, slice);
        }
        if shutting_down || self.checkpoint_busy.load(Ordering::Acquire) {
            return None;
        }
        let due = self.records_since_checkpoint >= self.config.checkpoint_records
            || (self.records_since_checkpoint > 0
                && self.last_checkpoint.elapsed()
                    >= Duration::from_millis(self.config.checkpoint_interval_ms));
        if !due {
            return None;
        }
        self.begin_checkpoint(now);
        self.checkpoint_work(CHECKPOINT_STEP_ENTRIES, Some(CHECKPOINT_SLICE))
    }
}

fn sync_loop<M: Machine>(
    mut writer: WalWriter,
    batches: Receiver<Batch<M>>,
    snapshots: Sender<Checkpoint>,
    trims: Receiver<Lsn>,
    stats: Arc<JournalStats>,
    health: Arc<Health>,
    recovered: (Lsn, Timestamp),
) {
    let _guard = PanicGuard(health.clone(), "sync");
    let mut failure: Option<Arc<JournalError>> = None;
    // (last lsn, writer time) of each write: how old the records up to an
    // lsn are. The recovered log counts as written at its last record's time.
    let mut written: std::collections::VecDeque<(Lsn, Timestamp)> =
        std::iter::once(recovered).collect();
    let mut covered = Lsn(0);
    while let Ok(first) = batches.recv() {
        let mut group = vec![first];
        while let Ok(b) = batches.try_recv() {
            group.push(b);
        }
        while let Ok(upto) = trims.try_recv() {
            covered = covered.max(upto);
        }
        if let Some(latest) = group.last() {
            // Segments a checkpoint covers and older than the machine's
            // retention may go.
            let old_enough = latest.now.0.saturating_sub(latest.retention_ms);
            let mut upto = Lsn(0);
            while let Some((lsn, at)) = written.front().copied() {
                if lsn > covered || at.0 > old_enough {
                    break;
                }
                upto = lsn;
                written.pop_front();
            }
            if upto.0 > 0 {
                if let Err(e) = writer.remove_segments_upto(upto) {
                    tracing::warn!(error = %e, "could not remove old log segments");
                }
            }
        }
        let mut merged: Option<WalBatch> = None;
        let mut checkpoints = Vec::new();
        let mut replies = Vec::new();
        for batch in group {
            if let Some(last) = batch.wal.last_lsn() {
                written.push_back((last, batch.now));
            }
            match merged.as_mut() {
                None => merged = Some(batch.wal),
                Some(m) if m.len_bytes() + batch.wal.len_bytes() > wal::GROUP_BYTES_MAX => {
                    // Too much for one write group: sync what is merged so
                    // far on its own, then go on with this batch.
                    if failure.is_none() {
                        if let Err(e) = writer.write_and_sync(m) {
                            tracing::error!(error = %e, "write-ahead log failed; the journal stops");
                            health.fail(format!("write-ahead log: {e}"));
                            failure = Some(Arc::new(JournalError::Wal(e)));
                        }
                    }
                    merged = Some(batch.wal);
                }
                Some(m) => m.extend(batch.wal),
            }
            replies.extend(batch.replies);
            checkpoints.extend(batch.checkpoint);
        }
        let merged = merged.unwrap_or_else(|| WalBatch::new(Lsn(0)));
        if failure.is_none() && !merged.is_empty() {
            let started = Instant::now();
            match writer.write_and_sync(&merged) {
                Ok(()) => {
                    let n = merged.len_records() as u64;
                    stats.sync_us.record(started.elapsed().as_micros() as u64);
                    stats.records_per_sync.record(n);
                    stats.records.fetch_add(n, Ordering::Relaxed);
                    stats.syncs.fetch_add(1, Ordering::Relaxed);
                    stats.records_per_sync_max.fetch_max(n, Ordering::Relaxed);
                    if let Some(last) = merged.last_lsn() {
                        stats.durable_lsn.store(last.0, Ordering::Release);
                    }
                }
                Err(e) => {
                    // After a failed fsync the page cache may lie about what
                    // is on disk: stop acknowledging anything.
                    tracing::error!(error = %e, "write-ahead log failed; the journal stops");
                    health.fail(format!("write-ahead log: {e}"));
                    failure = Some(Arc::new(JournalError::Wal(e)));
                }
            }
        }
        for (reply, responses) in replies {
            match &failure {
                None => reply(Ok(responses)),
                Some(e) => reply(Err(e.clone())),
            }
        }
        if failure.is_none() {
            for cp in checkpoints {
                if snapshots.send(cp).is_err() {
                    break;
                }
            }
        }
    }
}

/// Hands the machine the records the snapshot covers but the log still
/// holds (from `first`), so it recalls what it keeps outside the snapshot.
/// The group holding `snapshot_lsn` may run past it: those records are
/// replayed after, not recalled.
fn recall_covered<M: Machine>(
    wal_config: &WalConfig,
    first: Option<Lsn>,
    snapshot_lsn: u64,
    machine: &mut M,
) -> Result<(), JournalError> {
    let Some(first) = first.filter(|f| f.0 <= snapshot_lsn) else {
        return Ok(());
    };
    wal::replay_upto(
        wal_config,
        Lsn(first.0 - 1),
        Lsn(snapshot_lsn),
        |lsn, record| -> Result<(), String> {
            if lsn.0 <= snapshot_lsn {
                let (now, payload) = split_record(record)?;
                machine.recall(now, lsn.0, payload)?;
            }
            Ok(())
        },
    )
    .map_err(|e| JournalError::Recovery(format!("{e}")))?;
    Ok(())
}

fn snapshot_loop(
    mut store: crate::snapstore::SnapStore,
    mut history: crate::snapstore::HistoryStore,
    checkpoints: Receiver<Checkpoint>,
    trims: Sender<Lsn>,
    stats: Arc<JournalStats>,
    busy: Arc<AtomicBool>,
    health: Arc<Health>,
) {
    let _guard = PanicGuard(health.clone(), "snapshot");
    while let Ok(Checkpoint {
        lsn,
        mut writes,
        deferred,
    }) = checkpoints.recv()
    {
        let mut extra = CheckpointExtra::default();
        if let Some(work) = deferred {
            extra = work();
            writes.append(&mut extra.writes);
        }
        let hold = stats.checkpoint_hold.lock();
        let started = Instant::now();
        let bytes: usize = writes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        let result = (|| -> Result<(), JournalError> {
            // History first: a checkpoint that lands covers the records
            // whose history is already durable.
            history.append(&extra.history)?;
            store.write_checkpoint(lsn.0, writes)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                let set = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
                set(
                    &stats.checkpoint_last_us,
                    started.elapsed().as_micros() as u64,
                );
                set(&stats.checkpoint_last_bytes, bytes as u64);
                set(&stats.checkpoint_last_lsn, lsn.0);
                let unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                set(&stats.checkpoint_last_unix_ms, unix_ms);
                stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                let _ = trims.try_send(lsn);
            }
            Err(e) => {
                // A lost delta cannot be rebuilt from the change tracking
                // (it was reset), so no later checkpoint could claim a newer
                // log position and the log would grow without bound. The
                // log still holds every acknowledged record since the last
                // good checkpoint (it is trimmed only after one lands), so
                // the journal stops like after a failed fdatasync: the
                // server exits non-zero and its restart recovers from the
                // previous checkpoint plus the log.
                tracing::error!(error = %e, "checkpoint failed; the journal stops (a restart recovers from the previous checkpoint and the log)");
                health.fail(format!("checkpoint failed: {e}"));
                busy.store(false, Ordering::Release);
                return;
            }
        }
        drop(hold);
        busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_clock_follows_the_wall_clock_without_jumps() {
        let t0 = 1_800_000_000_000u64;
        let mut c = WriterClock::new(Timestamp(t0), 0);
        // Normal running: it follows the wall clock exactly.
        assert_eq!(c.advance(Timestamp(t0 + 100), 100), Timestamp(t0 + 100));
        assert_eq!(c.advance(Timestamp(t0 + 1100), 1100), Timestamp(t0 + 1100));
        // The wall clock steps an hour ahead: the writer advances at most
        // twice the real time elapsed (+1 ms), then catches up.
        let step = 3_600_000;
        let now = c.advance(Timestamp(t0 + 1200 + step), 1200);
        assert_eq!(now, Timestamp(t0 + 1100 + 201));
        let mut mono = 1200;
        let mut last = now;
        while c.now().0 < t0 + mono + step {
            mono += 1000;
            let now = c.advance(Timestamp(t0 + mono + step), mono);
            assert!(now.0 - last.0 <= 2001, "jumped {} ms", now.0 - last.0);
            last = now;
        }
        // Caught up, it follows again.
        assert_eq!(
            c.advance(Timestamp(t0 + mono + step + 10), mono + 10),
            Timestamp(t0 + mono + step + 10)
        );
        // The wall clock steps back: time never runs backwards; it runs at
        // half speed until the wall clock catches up.
        let before = c.now();
        let now = c.advance(Timestamp(t0), mono + 1010);
        assert_eq!(now, Timestamp(before.0 + 500));
        // A monotonic clock that does not move moves nothing.
        assert_eq!(c.advance(Timestamp(t0), mono + 1010), now);
    }
}
