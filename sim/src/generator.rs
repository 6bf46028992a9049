//! The load phase's engine: generator threads, each running the flows of
//! its connections as state machines over raw sockets.
//!
//! Why this shape: at hundreds of thousands of requests per second, a task,
//! a oneshot channel, a shared map lookup and a lock per request cost the
//! generator as much CPU as the server spends on the request, and on a
//! shared 2-core machine that CPU is taken from the server. Here each
//! connection is one task that owns its flows ("lanes"), its histograms
//! and its counters; an answer is routed by its request id to a lane by
//! indexing a slot table, the lane's next request is rewritten in place,
//! and every ready request of the connection goes out in one write (and,
//! with `batch` > 1, in BATCH frames of up to `batch` entries). Nothing on
//! the hot path is shared between threads: the live counters the progress
//! line reads are written by one thread each, and everything else is
//! merged when the threads end.
//!
//! Waking a sleeping thread is what the generator pays most for per
//! request at moderate rates (on this kind of virtual machine far more
//! than a system call), so a connection that just handled answers first
//! yields a few times (the runtime polls the sockets without sleeping)
//! before it sleeps; and the loop sleeps on a microsecond timer (a Linux
//! timerfd) rather than tokio's millisecond one, so an open-loop arrival is
//! started within [`ARRIVAL_TICK`] of its time plus the scheduler's delay,
//! not up to a millisecond late (its latency counts from that time).
//!
//! Threads rather than processes: one process merges exact histograms and
//! counters in memory, shares the per-account debit table `--verify` needs,
//! and `getrusage(RUSAGE_SELF)` covers all of its threads, so the report can
//! say what the generator cost. With no shared state on the hot path,
//! threads scale as processes would. Each thread runs a single-threaded
//! tokio runtime (no work stealing: a connection stays on its thread).

use crate::load::{Debits, LoadConfig, LoadError};
use crate::rng::Rng;
use crate::workload::{self as wl, Flow, MsgType};
use bytes::{Buf, BufMut, BytesMut};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use reckon_protocol::codes::{ErrorCode, ResultCode};
use reckon_protocol::frame::{decode_frame_with_limit, frame_size, Frame, Kind};
use reckon_protocol::limits::{DEFAULT_MAX_FRAME, LENGTH_PREFIX_LEN, MAX_FRAME_CAP};
use reckon_protocol::message::{Cca, Hello, Message};
use reckon_protocol::types::{RequestType, Unit};
use rust_decimal::prelude::ToPrimitive;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How long past the deadline BUSY answers are still retried.
const BUSY_RETRY_GRACE: Duration = Duration::from_secs(30);
/// Longest latency recorded as such (an hour, in µs); longer ones count as an hour.
pub(crate) const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Bits of a request id that name the slot of the frame in flight.
const SLOT_BITS: u32 = 24;
/// Intervals a connection may lag behind the newest one before the
/// per-interval latency of older intervals is summarised.
const INTERVAL_LAG: u64 = 3;
/// Most bytes read from a socket before the answers read so far are handled.
const READ_CHUNK_MAX: usize = 1 << 20;
/// After handling answers, how many times a connection yields (letting the
/// runtime poll the sockets without sleeping) before it may sleep. Waking a
/// sleeping thread costs far more than a non-blocking poll, and at high
/// rates more answers are usually there by then.
const SPINS: u32 = 4;
/// Open loop: the shortest time between two wake-ups for arrivals. Each
/// wake-up costs the thread a sleep and a wake; arrivals that fall due
/// within this time of each other are started together, so the
/// generator's own lateness stays below it (plus the scheduler's).
pub const ARRIVAL_TICK: Duration = Duration::from_micros(100);

/// A one-shot timer with microsecond precision (a Linux timerfd) that the
/// runtime polls like a socket. Tokio's timers tick in milliseconds, which
/// would add up to a millisecond of the generator's own lateness to every
/// open-loop arrival (and the latency is timed from the arrival).
struct FineTimer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    armed: Option<Instant>,
}

impl FineTimer {
    fn new() -> std::io::Result<FineTimer> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create returns a new descriptor or -1.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor is new and owned by nothing else.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd keeps its descriptor open, and always the same
        // one, for as long as it lives, which is as long as the AsyncFd.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        }?;
        Ok(FineTimer { fd, armed: None })
    }

    /// Makes the timer fire at `at` unless it is already set to fire sooner
    /// (an early wake-up only makes the loop look again).
    fn arm(&mut self, at: Instant) {
        if self.armed.is_some_and(|a| a <= at) {
            return;
        }
        use std::os::fd::AsRawFd;
        let d = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and itimerspec; the old value is not asked for.
        unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
        self.armed = Some(at);
    }

    /// Waits until the timer fires.
    async fn fired(&self) {
        use std::os::fd::AsRawFd;
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                // The runtime cannot poll it: fall back on a millisecond tick.
                tokio::time::sleep(Duration::from_millis(1)).await;
                return;
            };
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            guard.clear_ready();
            if n == 8 {
                return;
            }
        }
    }
}

/// Records a latency in an auto-resizing histogram. (`saturating_record`
/// would clamp to the histogram's current, initially tiny, range instead of
/// growing it.)
pub(crate) fn record_us(h: &mut Histogram<u64>, micros: u64) {
    let _ = h.record(micros.clamp(1, LATENCY_MAX_US));
}

/// A histogram of µs with three significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("3 significant figures are valid")
}

/// Counters one connection's thread writes and the progress line reads.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Live {
    /// Requests answered (each once, after any BUSY retries).
    pub answered: AtomicU64,
    /// Failures (error codes, refusals, transport).
    pub errors: AtomicU64,
    /// Open-loop arrivals dropped.
    pub dropped: AtomicU64,
}

/// Latency of one interval, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntervalLatency {
    /// Requests whose latency the interval holds.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Slowest.
    pub max: u64,
}

/// Merges the connections' per-interval histograms as they come in and
/// keeps only a summary of each finished interval, so memory does not
/// grow with the length of the run.
#[derive(Default)]
pub(crate) struct IntervalCollector {
    pending: BTreeMap<u64, Histogram<u64>>,
    done: BTreeMap<u64, IntervalLatency>,
    newest: u64,
    /// Samples that came in after their interval was summarised.
    pub late: u64,
}

impl IntervalCollector {
    /// Adds a connection's histogram of interval `idx`.
    pub fn add(&mut self, idx: u64, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        if self.done.contains_key(&idx) {
            self.late += h.len();
            return;
        }
        let slot = self
            .pending
            .entry(idx)
            .or_insert_with(|| Histogram::<u64>::new(2).expect("2 significant figures are valid"));
        let _ = slot.add(h);
        self.newest = self.newest.max(idx);
        let keep_from = self.newest.saturating_sub(INTERVAL_LAG);
        while let Some((&k, _)) = self.pending.first_key_value() {
            if k >= keep_from {
                break;
            }
            let h = self.pending.remove(&k).expect("the key was just seen");
            self.done.insert(k, summarise(&h));
        }
    }

    /// Summarises every interval still open and returns them all.
    pub fn finish(&mut self) -> BTreeMap<u64, IntervalLatency> {
        for (k, h) in std::mem::take(&mut self.pending) {
            self.done.insert(k, summarise(&h));
        }
        std::mem::take(&mut self.done)
    }
}

fn summarise(h: &Histogram<u64>) -> IntervalLatency {
    IntervalLatency {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
    }
}

/// What every generator thread shares, read-only but for the live counters.
pub(crate) struct Plan {
    /// The run's options.
    pub config: LoadConfig,
    /// Units the mix draws on, in the order `debited` counts them.
    pub units: Vec<Unit>,
    /// Tells this run's session ids apart from other runs'.
    pub run_id: u64,
    /// Requests answered per interval are counted from here.
    pub start: Instant,
    /// No flow starts after this.
    pub deadline: Instant,
    /// Length of one throughput interval.
    pub interval: Duration,
    /// Cancelled: stop starting flows, terminate open sessions.
    pub stop: CancellationToken,
    /// Per-account debits, when verifying.
    pub debits: Option<Arc<Debits>>,
    /// One per connection.
    pub live: Vec<Live>,
    /// Per-interval latency.
    pub intervals: Mutex<IntervalCollector>,
}

impl Plan {
    fn interval_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_nanos();
        (since / self.interval.as_nanos().max(1)) as u64
    }
}

/// What one connection measured.
pub(crate) struct ConnStats {
    /// Latency (µs) in [`MsgType::ALL`] order.
    pub latency: [Histogram<u64>; 4],
    /// SUCCESS answers in [`MsgType::ALL`] order.
    pub succeeded: [u64; 4],
    /// Flows completed in [`Flow::ALL`] order.
    pub flows: [u64; 5],
    /// Failures by name.
    pub errors: BTreeMap<String, u64>,
    /// Non-success per-service results by name.
    pub service_results: BTreeMap<String, u64>,
    /// Grants with a final-unit action.
    pub final_units: u64,
    /// Open-loop arrivals dropped.
    pub dropped: u64,
    /// Units acknowledged as debited, in [`Plan::units`] order.
    pub debited: Vec<u64>,
    /// Requests answered per interval.
    pub series: Vec<u64>,
    /// Open loop: how late (µs) the generator noticed each flow's
    /// scheduled arrival (its own lateness, not the server's backpressure).
    pub lag: Histogram<u64>,
    /// Frames (or Redis commands) written.
    pub frames: u64,
    /// Requests written, retries included.
    pub sent: u64,
    /// Connections that were lost or told the server was shutting down.
    pub dead: usize,
    /// When the run was told to stop early, if it was (time since the start).
    pub stopped_after: Option<Duration>,
}

impl ConnStats {
    fn new(units: usize) -> ConnStats {
        ConnStats {
            latency: [histogram(), histogram(), histogram(), histogram()],
            succeeded: [0; 4],
            flows: [0; 5],
            errors: BTreeMap::new(),
            service_results: BTreeMap::new(),
            final_units: 0,
            dropped: 0,
            debited: vec![0; units],
            series: Vec::new(),
            lag: histogram(),
            frames: 0,
            sent: 0,
            dead: 0,
            stopped_after: None,
        }
    }

    /// Adds another connection's figures to these.
    pub fn merge(&mut self, o: &ConnStats) {
        for i in 0..4 {
            let _ = self.latency[i].add(&o.latency[i]);
            self.succeeded[i] += o.succeeded[i];
        }
        for i in 0..5 {
            self.flows[i] += o.flows[i];
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.service_results {
            *self.service_results.entry(k.clone()).or_insert(0) += v;
        }
        self.final_units += o.final_units;
        self.dropped += o.dropped;
        if self.debited.len() < o.debited.len() {
            self.debited.resize(o.debited.len(), 0);
        }
        for (a, b) in self.debited.iter_mut().zip(&o.debited) {
            *a += b;
        }
        if self.series.len() < o.series.len() {
            self.series.resize(o.series.len(), 0);
        }
        for (a, b) in self.series.iter_mut().zip(&o.series) {
            *a += b;
        }
        let _ = self.lag.add(&o.lag);
        self.frames += o.frames;
        self.sent += o.sent;
        self.dead += o.dead;
        self.stopped_after = match (self.stopped_after, o.stopped_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Everything the load phase produced.
pub(crate) struct GenOutcome {
    /// All connections' figures, merged.
    pub stats: ConnStats,
    /// Per-interval latency.
    pub intervals: BTreeMap<u64, IntervalLatency>,
    /// Samples that missed their interval's summary.
    pub late_interval_samples: u64,
    /// CPU time of each generator thread over its load loop.
    pub thread_cpu: Vec<Duration>,
    /// Whether every connection was lost.
    pub all_lost: bool,
    /// From the start of the clock to the last connection's end (the drain included).
    pub elapsed: Duration,
}

/// A granted quota: units per unit, how long it is valid, whether it is the last.
#[derive(Default)]
pub(crate) struct Grant {
    units: Vec<(Unit, u64)>,
    validity_s: u32,
    last: bool,
}

impl Grant {
    fn set(&mut self, answer: &Cca, service: u32) {
        self.units.clear();
        self.validity_s = 0;
        self.last = false;
        let Some(s) = answer.services.iter().find(|s| s.service_id == service) else {
            return;
        };
        self.units.extend(
            s.granted
                .iter()
                .map(|g| (g.unit, g.amount.trunc().to_u64().unwrap_or(0))),
        );
        self.validity_s = s.validity_time_s;
        self.last = s.final_unit_action.is_some();
    }

    fn get(&self, unit: Unit) -> u64 {
        self.units
            .iter()
            .find(|(u, _)| *u == unit)
            .map_or(0, |(_, n)| *n)
    }

    fn total(&self) -> u64 {
        self.units.iter().map(|(_, n)| *n).sum()
    }
}

/// What a transport makes of the bytes a server sent.
pub(crate) enum Event {
    /// The answer to the request of a lane; `in_batch` when it came in a BATCH_RESULT.
    Answer {
        /// The lane whose request it answers.
        lane: u32,
        /// The answer.
        message: Message,
        /// Whether it was an entry of a BATCH_RESULT.
        in_batch: bool,
    },
    /// The request of a lane failed in a way the transport names.
    Failed {
        /// The lane whose request failed.
        lane: u32,
        /// How, for the report's errors.
        name: String,
    },
    /// The server is shutting down: send nothing more.
    ShuttingDown,
    /// Something no request waits for.
    Stray(String),
}

/// How requests are put on the wire and answers read back.
pub(crate) trait Transport: Send {
    /// Appends a group of ready requests to `out`: one frame (or command)
    /// each, or one BATCH frame for the whole group.
    fn send<'a>(
        &mut self,
        group: &[u32],
        message: impl Fn(u32) -> &'a Message,
        out: &mut BytesMut,
    ) -> Result<(), String>;
    /// Takes every complete answer from `input` into `events`; control
    /// replies (PONG) go to `out`. An error means the stream is unusable.
    fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        events: &mut Vec<Event>,
    ) -> Result<(), String>;
    /// The lanes with a request in flight, forgotten (the connection is gone).
    fn abandon(&mut self) -> Vec<u32>;
    /// Frames (or commands) written so far.
    fn frames(&self) -> u64;
}

/// A frame in flight on a native connection.
enum Slot {
    Free,
    One { rid: u64, lane: u32 },
    Many { rid: u64, lanes: Vec<u32> },
}

/// Reckon's native protocol: one CCR frame per request, or BATCH frames.
pub(crate) struct Native {
    max_frame: u32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    counter: u64,
    frames: u64,
    spare: Vec<Vec<u32>>,
}

/// Appends one frame of `message` with `request_id`, exactly as
/// [`Frame::encode_with_limit`] would, without owning the message.
pub(crate) fn encode_frame(
    dst: &mut BytesMut,
    request_id: u64,
    message: &Message,
    max_frame: u32,
) -> Result<(), String> {
    let start = dst.len();
    let kind = message.kind();
    dst.put_u32_le(0);
    dst.put_u8(kind.code());
    dst.put_u8(kind.flags());
    dst.put_u64_le(request_id);
    if let Err(e) = message.encode(dst) {
        dst.truncate(start);
        return Err(e.to_string());
    }
    finish_frame(dst, start, max_frame)
}

fn finish_frame(dst: &mut BytesMut, start: usize, max_frame: u32) -> Result<(), String> {
    let length = dst.len() - start - LENGTH_PREFIX_LEN;
    if length as u64 > max_frame.min(MAX_FRAME_CAP) as u64 {
        dst.truncate(start);
        return Err(format!("a frame of {length} bytes is above the limit"));
    }
    dst[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&(length as u32).to_le_bytes());
    Ok(())
}

/// Appends one BATCH frame of `entries` (SPEC 6.3) without owning them.
pub(crate) fn encode_batch<'a>(
    dst: &mut BytesMut,
    request_id: u64,
    entries: impl ExactSizeIterator<Item = &'a Message>,
    max_frame: u32,
) -> Result<(), String> {
    let start = dst.len();
    let count = entries.len();
    if count > reckon_protocol::limits::BATCH_MAX {
        return Err(format!("{count} entries in one BATCH"));
    }
    dst.put_u32_le(0);
    dst.put_u8(Kind::Batch.code());
    dst.put_u8(Kind::Batch.flags());
    dst.put_u64_le(request_id);
    dst.put_u16_le(count as u16);
    for m in entries {
        let at = dst.len();
        dst.put_u32_le(0);
        dst.put_u8(m.kind().code());
        if let Err(e) = m.encode(dst) {
            dst.truncate(start);
            return Err(e.to_string());
        }
        let length = (dst.len() - at - 4) as u32;
        dst[at..at + 4].copy_from_slice(&length.to_le_bytes());
    }
    finish_frame(dst, start, max_frame)
}

impl Native {
    /// A transport for a connection whose handshake gave `max_frame`.
    pub fn new(max_frame: u32) -> Native {
        Native {
            max_frame,
            slots: Vec::new(),
            free: Vec::new(),
            counter: 0,
            frames: 0,
            spare: Vec::new(),
        }
    }

    fn take_slot(&mut self) -> (usize, u64) {
        let slot = match self.free.pop() {
            Some(s) => s as usize,
            None => {
                self.slots.push(Slot::Free);
                self.slots.len() - 1
            }
        };
        self.counter += 1;
        (slot, (self.counter << SLOT_BITS) | slot as u64)
    }

    fn release(&mut self, slot: usize) {
        if let Slot::Many { lanes, .. } = std::mem::replace(&mut self.slots[slot], Slot::Free) {
            let mut lanes = lanes;
            lanes.clear();
            self.spare.push(lanes);
        }
        self.free.push(slot as u32);
    }

    fn route(&mut self, frame: Frame, out: &mut BytesMut, events: &mut Vec<Event>) {
        let rid = frame.request_id;
        if rid == 0 {
            match frame.body {
                Message::Ping => {
                    let _ = encode_frame(out, 0, &Message::Pong, self.max_frame);
                }
                Message::Error(e) if e.code == ErrorCode::SHUTTING_DOWN => {
                    events.push(Event::ShuttingDown)
                }
                Message::Error(e) => events.push(Event::Stray(format!(
                    "server error {}",
                    e.code.name().unwrap_or("unknown")
                ))),
                other => events.push(Event::Stray(format!("unexpected {:?}", other.kind()))),
            }
            return;
        }
        let slot = (rid & ((1 << SLOT_BITS) - 1)) as usize;
        let matches = match self.slots.get(slot) {
            Some(Slot::One { rid: r, .. }) | Some(Slot::Many { rid: r, .. }) => *r == rid,
            _ => false,
        };
        if !matches {
            events.push(Event::Stray(format!("answer to unknown request {rid}")));
            return;
        }
        match &self.slots[slot] {
            Slot::One { lane, .. } => events.push(Event::Answer {
                lane: *lane,
                message: frame.body,
                in_batch: false,
            }),
            Slot::Many { lanes, .. } => match frame.body {
                Message::BatchResult(r) if r.entries.len() == lanes.len() => {
                    for (lane, message) in lanes.iter().zip(r.entries) {
                        events.push(Event::Answer {
                            lane: *lane,
                            message,
                            in_batch: true,
                        });
                    }
                }
                Message::BatchResult(r) => {
                    for lane in lanes {
                        events.push(Event::Failed {
                            lane: *lane,
                            name: format!(
                                "BATCH_RESULT of {} entries for {}",
                                r.entries.len(),
                                lanes.len()
                            ),
                        });
                    }
                }
                // The whole BATCH was refused: every entry shares the answer.
                other => {
                    for lane in lanes {
                        events.push(Event::Answer {
                            lane: *lane,
                            message: other.clone(),
                            in_batch: false,
                        });
                    }
                }
            },
            Slot::Free => unreachable!("matched above"),
        }
        self.release(slot);
    }
}

impl Transport for Native {
    fn send<'a>(
        &mut self,
        group: &[u32],
        message: impl Fn(u32) -> &'a Message,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        let (slot, rid) = self.take_slot();
        let result = if group.len() == 1 {
            self.slots[slot] = Slot::One {
                rid,
                lane: group[0],
            };
            encode_frame(out, rid, message(group[0]), self.max_frame)
        } else {
            let mut lanes = self.spare.pop().unwrap_or_default();
            lanes.extend_from_slice(group);
            self.slots[slot] = Slot::Many { rid, lanes };
            encode_batch(out, rid, group.iter().map(|l| message(*l)), self.max_frame)
        };
        if result.is_err() {
            self.release(slot);
        } else {
            self.frames += 1;
        }
        result
    }

    fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        loop {
            match decode_frame_with_limit(input, self.max_frame) {
                Ok(None) => return Ok(()),
                Ok(Some((frame, used))) => {
                    input.advance(used);
                    self.route(frame, out, events);
                }
                Err(e) if !e.is_fatal() => {
                    let size = frame_size(input).unwrap_or(input.len()).min(input.len());
                    input.advance(size);
                    events.push(Event::Stray(format!("malformed answer: {e}")));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn abandon(&mut self) -> Vec<u32> {
        let mut lanes = Vec::new();
        for slot in std::mem::take(&mut self.slots) {
            match slot {
                Slot::One { lane, .. } => lanes.push(lane),
                Slot::Many { lanes: l, .. } => lanes.extend(l),
                Slot::Free => {}
            }
        }
        self.free.clear();
        lanes
    }

    fn frames(&self) -> u64 {
        self.frames
    }
}

/// Connects and authenticates a native connection; returns the stream and
/// the negotiated maximum frame length.
pub(crate) async fn connect_native(addr: &str, token: &str) -> Result<(TcpStream, u32), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    let hello = Message::Hello(Hello {
        min_version: 1,
        max_version: 1,
        credential: token.to_string(),
        client_name: format!("reckon-sim {}", env!("CARGO_PKG_VERSION")),
    });
    encode_frame(&mut out, 1, &hello, DEFAULT_MAX_FRAME)?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut input = BytesMut::with_capacity(4096);
    loop {
        match decode_frame_with_limit(&input, DEFAULT_MAX_FRAME) {
            Ok(Some((frame, _))) => {
                return match frame.body {
                    Message::HelloOk(ok) => Ok((stream, ok.max_frame)),
                    Message::Error(e) => Err(format!(
                        "handshake refused: {} ({})",
                        e.message,
                        e.code.name().unwrap_or("unknown code")
                    )),
                    other => Err(format!("unexpected {:?} to HELLO", other.kind())),
                };
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if stream
            .read_buf(&mut input)
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("the server closed the connection during the handshake".into());
        }
    }
}

/// Why a lane waits on a timer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wait {
    /// A user's think time (cut short when the run is told to stop).
    Think,
    /// A backoff after BUSY.
    Retry,
}

/// One flow slot of a connection: the flow it runs and its request.
struct Lane {
    active: bool,
    flow: Flow,
    step: MsgType,
    id: u64,
    seq: u64,
    rng: Rng,
    busy_rng: Rng,
    account: u64,
    session: String,
    number: u32,
    updates_left: u64,
    grant: Grant,
    used: Vec<(Unit, u64)>,
    ask: Vec<(Unit, u64)>,
    message: Message,
    ready: Instant,
    backoff: Duration,
    solo: bool,
    timer: u32,
}

impl Lane {
    fn new(id: u64, seed: u64, now: Instant) -> Lane {
        Lane {
            active: false,
            flow: Flow::Event,
            step: MsgType::Event,
            id,
            seq: 0,
            rng: Rng::derive(seed, id),
            busy_rng: Rng::derive(id, 0),
            account: 0,
            session: String::new(),
            number: 0,
            updates_left: 0,
            grant: Grant::default(),
            used: Vec::new(),
            ask: Vec::new(),
            message: Message::Ping,
            ready: now,
            backoff: Duration::from_millis(1),
            solo: false,
            timer: 0,
        }
    }

    /// Fills `ask` with what the flow asks for in an INITIAL or UPDATE.
    fn ask(&mut self) {
        self.ask.clear();
        match self.flow {
            Flow::Telco => self.ask.push((Unit::OCTETS, wl::TELCO_QUOTA)),
            Flow::Gpu => self.ask.push((Unit::GPU_SECONDS, wl::GPU_QUOTA)),
            Flow::Inference => {
                let prompt = self.rng.range(wl::PROMPT_TOKENS.0, wl::PROMPT_TOKENS.1);
                self.ask.push((Unit::TOKENS_IN, prompt));
                self.ask.push((Unit::TOKENS_OUT, wl::MAX_TOKENS_OUT));
            }
            Flow::ReserveCommit => self.ask.push((Unit::CREDITS, wl::RESERVE_UNITS)),
            Flow::Event => {}
        }
    }

    /// Fills `used` with what the flow reports as used of its grant (never
    /// more than granted).
    fn usage(&mut self, last: bool) {
        self.used.clear();
        match self.flow {
            Flow::Inference => {
                let out = self.grant.get(Unit::TOKENS_OUT);
                // The prompt was read in full; the model wrote 1..=max tokens.
                self.used
                    .push((Unit::TOKENS_IN, self.grant.get(Unit::TOKENS_IN)));
                self.used
                    .push((Unit::TOKENS_OUT, self.rng.range(out.min(1), out)));
            }
            Flow::ReserveCommit => {
                let n = self.grant.get(Unit::CREDITS);
                self.used.push((Unit::CREDITS, self.rng.range(n.min(1), n)));
            }
            flow => {
                for i in 0..self.grant.units.len() {
                    let (u, n) = self.grant.units[i];
                    let used = if last {
                        // The session ends part-way into its grant.
                        self.rng.range(0, n)
                    } else if flow == Flow::Gpu {
                        // Periodic GPU usage reports: most of the hour was used.
                        self.rng.range(n * 3 / 4, n)
                    } else {
                        // The quota is mostly used up (or the validity ran out).
                        self.rng.range(n / 2, n)
                    };
                    self.used.push((u, used));
                }
            }
        }
    }

    fn set_request(&mut self, ty: RequestType) {
        let service = self.flow.service();
        type Amounts<'a> = &'a [(Unit, u64)];
        let (requested, used): (Amounts, Amounts) = match ty {
            RequestType::Initial => (&self.ask, &[]),
            RequestType::Update => (&self.ask, &self.used),
            RequestType::Terminate => (&[], &self.used),
            _ => (&self.used, &[]),
        };
        wl::set_ccr(
            &mut self.message,
            &self.session,
            ty,
            self.number,
            self.account,
            service,
            requested,
            used,
        );
        self.backoff = Duration::from_millis(1);
    }
}

fn result_name(code: ResultCode) -> String {
    code.name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("result {}", code.0))
}

fn error_name(code: ErrorCode) -> String {
    code.name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("error {}", code.0))
}

/// One connection's flows, timers and figures (everything but the socket).
struct Engine<T: Transport> {
    plan: Arc<Plan>,
    conn: usize,
    transport: T,
    lanes: Vec<Lane>,
    idle: Vec<u32>,
    ready: VecDeque<u32>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32, Wait)>>,
    timer_seq: u32,
    active: usize,
    in_flight: usize,
    stats: ConnStats,
    interval_hist: Histogram<u64>,
    interval_idx: u64,
    arrivals: u64,
    per_second: f64,
    lanes_max: usize,
    picker: Rng,
    arrivals_checked: Instant,
    stop_seen: bool,
    dead: bool,
    group: Vec<u32>,
}

impl<T: Transport> Engine<T> {
    fn new(plan: Arc<Plan>, conn: usize, transport: T) -> Engine<T> {
        let c = &plan.config;
        let open = c.rate > 0;
        let per_second = if open {
            c.rate as f64 / c.connections as f64 / c.mix.mean_requests()
        } else {
            0.0
        };
        let units = plan.units.len();
        let picker = Rng::derive(c.seed, u64::MAX - conn as u64);
        Engine {
            conn,
            transport,
            lanes: Vec::new(),
            idle: Vec::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            active: 0,
            in_flight: 0,
            stats: ConnStats::new(units),
            interval_hist: Histogram::<u64>::new(2).expect("2 significant figures are valid"),
            interval_idx: 0,
            arrivals: 0,
            per_second,
            // Open loop: flows waiting to send (queued arrivals) are bounded
            // too; past that, arrivals are dropped and counted.
            lanes_max: if open {
                (c.depth * 16).max(1024)
            } else {
                c.depth
            },
            picker,
            arrivals_checked: Instant::now(),
            stop_seen: false,
            dead: false,
            group: Vec::new(),
            plan,
        }
    }

    fn live(&self) -> &Live {
        &self.plan.live[self.conn]
    }

    fn stopping(&self, now: Instant) -> bool {
        self.stop_seen || now >= self.plan.deadline
    }

    fn open(&self) -> bool {
        self.plan.config.rate > 0
    }

    /// Closed loop: every lane starts a flow at once.
    fn begin(&mut self, now: Instant) {
        if self.open() {
            return;
        }
        let depth = self.plan.config.depth;
        for d in 0..depth {
            let id = (self.conn * depth + d) as u64;
            self.lanes.push(Lane::new(id, self.plan.config.seed, now));
            let flow = self.plan.config.mix.pick(&mut self.lanes[d].rng);
            self.start_flow(d as u32, flow, now);
        }
    }

    fn start_flow(&mut self, l: u32, flow: Flow, ready: Instant) {
        let c = &self.plan.config;
        let (base, accounts, run_id) = (c.account_base, c.accounts, self.plan.run_id);
        let lane = &mut self.lanes[l as usize];
        lane.active = true;
        lane.flow = flow;
        lane.seq += 1;
        lane.busy_rng = Rng::derive(lane.id, lane.seq);
        lane.account = base + lane.rng.below(accounts);
        lane.session.clear();
        use std::fmt::Write as _;
        let _ = write!(
            lane.session,
            "reckon-sim;{:x};{:x}.{:x}",
            run_id, lane.id, lane.seq
        );
        lane.number = 0;
        lane.grant = Grant::default();
        lane.ready = ready;
        lane.solo = false;
        match flow {
            Flow::Event => {
                lane.step = MsgType::Event;
                lane.used.clear();
                lane.used.push((Unit::REQUESTS, wl::EVENT_UNITS));
                lane.set_request(RequestType::Event);
            }
            _ => {
                lane.updates_left = match flow {
                    Flow::Telco => lane.rng.range(wl::TELCO_UPDATES.0, wl::TELCO_UPDATES.1),
                    Flow::Gpu => lane.rng.range(wl::GPU_UPDATES.0, wl::GPU_UPDATES.1),
                    _ => 0,
                };
                lane.step = MsgType::Initial;
                lane.ask();
                lane.set_request(RequestType::Initial);
            }
        }
        self.active += 1;
        self.make_ready(l);
    }

    fn make_ready(&mut self, l: u32) {
        if self.dead {
            // The connection is going away: the flow cannot go on.
            self.end_flow(l, false, Instant::now());
        } else {
            self.ready.push_back(l);
        }
    }

    /// Ends a lane's flow (counted if `completed`) and starts the next one
    /// in closed loop.
    fn end_flow(&mut self, l: u32, completed: bool, now: Instant) {
        let lane = &mut self.lanes[l as usize];
        if !lane.active {
            return;
        }
        lane.active = false;
        lane.timer = 0;
        self.active -= 1;
        if completed {
            self.stats.flows[lane.flow.index()] += 1;
        }
        if self.open() {
            self.idle.push(l);
        } else if !self.stopping(now) && !self.dead {
            let flow = self.plan.config.mix.pick(&mut self.lanes[l as usize].rng);
            self.start_flow(l, flow, now);
        }
    }

    fn wait(&mut self, l: u32, until: Instant, why: Wait) {
        self.timer_seq = self.timer_seq.wrapping_add(1).max(1);
        self.lanes[l as usize].timer = self.timer_seq;
        self.timers.push(Reverse((until, l, self.timer_seq, why)));
    }

    /// Sends the lane's request after the user's think time (about
    /// `think_ms`, never past the grant's validity or the deadline).
    fn after_think(&mut self, l: u32, now: Instant) {
        let think = self.plan.config.think_ms;
        if think == 0 || self.stop_seen {
            self.lanes[l as usize].ready = now;
            self.make_ready(l);
            return;
        }
        let lane = &mut self.lanes[l as usize];
        let mut wait = lane.rng.range(think / 2, think + think / 2);
        if lane.grant.validity_s > 0 {
            wait = wait.min(lane.grant.validity_s as u64 * 900);
        }
        let until = (now + Duration::from_millis(wait)).min(self.plan.deadline.max(now));
        self.wait(l, until, Wait::Think);
    }

    fn answered(&mut self, l: u32, now: Instant) {
        let lane = &self.lanes[l as usize];
        let micros = (now.saturating_duration_since(lane.ready).as_micros() as u64).max(1);
        record_us(&mut self.stats.latency[lane.step.index()], micros);
        record_us(&mut self.interval_hist, micros);
        let idx = self.plan.interval_of(now) as usize;
        if self.stats.series.len() <= idx {
            self.stats.series.resize(idx + 1, 0);
        }
        self.stats.series[idx] += 1;
        self.live().answered.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&mut self, name: String) {
        self.live().errors.fetch_add(1, Ordering::Relaxed);
        *self.stats.errors.entry(name).or_insert(0) += 1;
    }

    fn record(&mut self, l: u32, answer: &Cca) {
        let ty = self.lanes[l as usize].step;
        let ok = answer.result_code.is_success();
        if ok {
            self.stats.succeeded[ty.index()] += 1;
        } else {
            self.error(result_name(answer.result_code));
        }
        for s in &answer.services {
            if ok && !s.result_code.is_success() {
                *self
                    .stats
                    .service_results
                    .entry(result_name(s.result_code))
                    .or_insert(0) += 1;
            }
            if s.final_unit_action.is_some() {
                self.stats.final_units += 1;
            }
        }
    }

    /// Books acknowledged usage.
    fn debit(&mut self, l: u32) {
        let lane = &self.lanes[l as usize];
        for (unit, n) in &lane.used {
            if *n == 0 {
                continue;
            }
            if let Some(i) = self.plan.units.iter().position(|u| u == unit) {
                self.stats.debited[i] += n;
                if let Some(d) = &self.plan.debits {
                    d.add(lane.account, i, *n);
                }
            }
        }
    }

    fn busy(&mut self, l: u32, name: &str, now: Instant) {
        self.error(name.to_string());
        if now > self.plan.deadline + BUSY_RETRY_GRACE {
            self.error("gave up after BUSY".into());
            self.end_flow(l, false, now);
            return;
        }
        // Back off with jitter: half to all of the current backoff.
        let lane = &mut self.lanes[l as usize];
        let b = lane.backoff.as_micros() as u64;
        let jitter = lane.busy_rng.range(b / 2, b);
        lane.backoff = (lane.backoff * 2).min(Duration::from_secs(1));
        self.wait(l, now + Duration::from_micros(jitter), Wait::Retry);
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Answer {
                lane,
                message,
                in_batch,
            } => {
                self.in_flight -= 1;
                self.on_answer(lane, message, in_batch, now);
            }
            Event::Failed { lane, name } => {
                self.in_flight -= 1;
                self.answered(lane, now);
                self.error(name);
                self.end_flow(lane, false, now);
            }
            Event::ShuttingDown => self.dead = true,
            Event::Stray(name) => self.error(name),
        }
    }

    fn on_answer(&mut self, l: u32, message: Message, in_batch: bool, now: Instant) {
        match message {
            Message::Cca(c) if c.result_code == ResultCode::TOO_BUSY => {
                self.busy(l, "TOO_BUSY", now)
            }
            Message::Error(e) if e.code == ErrorCode::BUSY => self.busy(l, "BUSY", now),
            Message::Error(e) if e.code == ErrorCode::FRAME_TOO_LARGE && in_batch => {
                // Applied, but its answer did not fit the BATCH_RESULT:
                // resending it alone gets the answer without applying it twice.
                self.lanes[l as usize].solo = true;
                self.ready.push_front(l);
            }
            Message::Cca(c) => {
                self.answered(l, now);
                self.record(l, &c);
                self.advance(l, &c, now);
            }
            Message::Error(e) => {
                if e.code == ErrorCode::SHUTTING_DOWN {
                    self.dead = true;
                }
                self.answered(l, now);
                self.error(error_name(e.code));
                self.end_flow(l, false, now);
            }
            other => {
                self.answered(l, now);
                self.error(format!("unexpected {:?}", other.kind()));
                self.end_flow(l, false, now);
            }
        }
    }

    /// The flow's next step after an answer.
    fn advance(&mut self, l: u32, answer: &Cca, now: Instant) {
        let ok = answer.result_code.is_success();
        let step = self.lanes[l as usize].step;
        match step {
            MsgType::Event => {
                if ok {
                    self.debit(l);
                }
                self.end_flow(l, true, now);
            }
            MsgType::Initial => {
                if !ok {
                    // Nothing was granted: the flow ends here (a refusal is an outcome).
                    self.end_flow(l, true, now);
                    return;
                }
                let lane = &mut self.lanes[l as usize];
                let service = lane.flow.service();
                lane.grant.set(answer, service);
                lane.number = 1;
                self.next_step(l, now);
            }
            MsgType::Update => {
                if ok {
                    self.debit(l);
                    let lane = &mut self.lanes[l as usize];
                    let service = lane.flow.service();
                    lane.grant.set(answer, service);
                }
                self.next_step(l, now);
            }
            MsgType::Terminate => {
                if ok {
                    self.debit(l);
                }
                self.end_flow(l, true, now);
            }
        }
    }

    /// An UPDATE while there are updates left, the grant goes on and the
    /// run does; else the TERMINATE.
    fn next_step(&mut self, l: u32, now: Instant) {
        let stopping = self.stopping(now) || self.dead;
        let lane = &mut self.lanes[l as usize];
        let update =
            lane.updates_left > 0 && !lane.grant.last && lane.grant.total() > 0 && !stopping;
        if update {
            lane.updates_left -= 1;
            lane.usage(false);
            lane.ask();
            lane.step = MsgType::Update;
            lane.set_request(RequestType::Update);
        } else {
            lane.usage(true);
            lane.step = MsgType::Terminate;
            lane.set_request(RequestType::Terminate);
        }
        lane.number += 1;
        // The request was built with the number before this increment.
        self.after_think(l, now);
    }

    /// Timers that are due, arrivals that are due, interval roll-over.
    fn tick(&mut self, now: Instant) {
        while let Some(Reverse((due, l, seq, why))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let lane = &mut self.lanes[l as usize];
            if lane.timer != seq || !lane.active {
                continue;
            }
            lane.timer = 0;
            if why == Wait::Think {
                lane.ready = now;
            }
            self.make_ready(l);
        }
        if self.open() && !self.dead && !self.stopping(now) {
            self.arrivals_checked = now;
            loop {
                let due = self.arrival(self.arrivals);
                if due > now || due >= self.plan.deadline {
                    break;
                }
                self.arrivals += 1;
                if self.active >= self.lanes_max {
                    self.stats.dropped += 1;
                    self.live().dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let l = match self.idle.pop() {
                    Some(l) => l,
                    None => {
                        self.lanes.push(Lane::new(0, 0, now));
                        (self.lanes.len() - 1) as u32
                    }
                };
                // A fresh flow per arrival, as its own user.
                let id = ((self.conn as u64) << 40) | self.arrivals;
                let lane = &mut self.lanes[l as usize];
                lane.id = id;
                lane.seq = 0;
                lane.rng = Rng::derive(self.plan.config.seed, id);
                let flow = self.plan.config.mix.pick(&mut self.picker);
                // How late this loop noticed the arrival: the generator's own
                // lateness (timer granularity, a busy thread). Waiting for a
                // free place in flight afterwards is the server's doing.
                record_us(
                    &mut self.stats.lag,
                    now.saturating_duration_since(due).as_micros() as u64,
                );
                // Timed from its scheduled arrival, however late it is sent:
                // queueing counts as latency (no coordinated omission).
                self.start_flow(l, flow, due);
            }
        }
        let idx = self.plan.interval_of(now);
        if idx > self.interval_idx {
            self.flush_interval();
            self.interval_idx = idx;
        }
    }

    fn arrival(&self, n: u64) -> Instant {
        self.plan.start + Duration::from_secs_f64(n as f64 / self.per_second)
    }

    fn flush_interval(&mut self) {
        if !self.interval_hist.is_empty() {
            self.plan
                .intervals
                .lock()
                .add(self.interval_idx, &self.interval_hist);
            self.interval_hist.reset();
        }
    }

    /// Puts the ready requests on the wire, in groups of up to `batch`.
    fn fill(&mut self, now: Instant, out: &mut BytesMut) {
        let depth = self.plan.config.depth;
        let batch = self.plan.config.batch.max(1);
        while self.in_flight < depth && !self.ready.is_empty() {
            self.group.clear();
            while self.group.len() < batch && self.in_flight < depth {
                let Some(&l) = self.ready.front() else { break };
                let solo = self.lanes[l as usize].solo;
                if solo && !self.group.is_empty() {
                    break;
                }
                self.ready.pop_front();
                if self.dead {
                    self.end_flow(l, false, now);
                    continue;
                }
                self.group.push(l);
                self.in_flight += 1;
                if solo {
                    self.lanes[l as usize].solo = false;
                    break;
                }
            }
            if self.group.is_empty() {
                continue;
            }
            let lanes = &self.lanes;
            let sent = self
                .transport
                .send(&self.group, |l| &lanes[l as usize].message, out);
            self.stats.sent += self.group.len() as u64;
            if let Err(e) = sent {
                for i in 0..self.group.len() {
                    let l = self.group[i];
                    self.in_flight -= 1;
                    self.error(format!("cannot encode the request: {e}"));
                    self.end_flow(l, false, now);
                }
            }
        }
    }

    /// When the loop should wake up if the socket says nothing.
    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self.plan.start + self.plan.interval * (self.interval_idx as u32 + 1);
        if let Some(Reverse((due, ..))) = self.timers.peek() {
            wake = wake.min(*due);
        }
        if !self.stopping(now) {
            wake = wake.min(self.plan.deadline);
            if self.open() && !self.dead {
                let due = self.arrival(self.arrivals);
                wake = wake.min(due.max(self.arrivals_checked + ARRIVAL_TICK));
            }
        }
        wake.max(now)
    }

    fn finished(&self, now: Instant) -> bool {
        (self.dead && self.in_flight == 0) || (self.stopping(now) && self.active == 0)
    }

    /// The run was told to stop: think times end now.
    fn on_stop(&mut self, now: Instant) {
        self.stop_seen = true;
        if now < self.plan.deadline {
            self.stats.stopped_after = Some(now.saturating_duration_since(self.plan.start));
        }
        let timers = std::mem::take(&mut self.timers);
        self.timers = timers
            .into_iter()
            .map(|Reverse((due, l, seq, why))| {
                Reverse((if why == Wait::Think { now } else { due }, l, seq, why))
            })
            .collect();
    }

    /// The connection is gone: requests in flight failed, flows end.
    fn lost(&mut self, now: Instant) {
        self.dead = true;
        for l in self.transport.abandon() {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.error("transport".into());
            self.end_flow(l, false, now);
        }
        self.in_flight = 0;
        for l in 0..self.lanes.len() as u32 {
            self.end_flow(l, false, now);
        }
        self.ready.clear();
        self.timers.clear();
    }
}

/// Runs one connection's flows until the run ends; returns its figures.
async fn drive<T: Transport>(
    plan: Arc<Plan>,
    conn: usize,
    stream: TcpStream,
    transport: T,
) -> ConnStats {
    let mut e = Engine::new(plan.clone(), conn, transport);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut events = Vec::new();
    let start = Instant::now();
    e.begin(start);
    e.interval_idx = plan.interval_of(start);
    let stop = plan.stop.clone();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let mut timer = match FineTimer::new() {
        Ok(t) => t,
        Err(err) => {
            e.error(format!("no timerfd: {err}"));
            e.lost(start);
            e.stats.dead = 1;
            return e.stats;
        }
    };
    let mut spins = SPINS;
    loop {
        let now = Instant::now();
        e.tick(now);
        e.fill(now, &mut out);
        while !out.is_empty() {
            match stream.try_write(&out) {
                Ok(n) => out.advance(n),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    e.lost(now);
                    out.clear();
                }
            }
        }
        if e.finished(now) {
            break;
        }
        timer.arm(e.next_wake(now));
        tokio::select! {
            biased;
            r = stream.readable() => {
                if r.is_err() {
                    e.lost(Instant::now());
                    continue;
                }
                spins = 0;
                let mut got = 0;
                let mut closed = false;
                while got < READ_CHUNK_MAX {
                    input.reserve(64 * 1024);
                    let room = input.capacity() - input.len();
                    match stream.try_read_buf(&mut input) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        // A short read drained the socket: asking again
                        // would cost a syscall to hear WouldBlock. (The
                        // readiness stays set, so nothing is missed.)
                        Ok(n) if n < room => break,
                        Ok(n) => got += n,
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let now = Instant::now();
                if let Err(err) = e.transport.decode(&mut input, &mut out, &mut events) {
                    e.error(format!("unreadable answer: {err}"));
                    closed = true;
                }
                for ev in events.drain(..) {
                    e.on_event(ev, now);
                }
                if closed {
                    e.lost(now);
                }
            }
            r = stream.writable(), if !out.is_empty() => {
                if r.is_err() {
                    e.lost(Instant::now());
                }
            }
            _ = timer.fired() => timer.armed = None,
            _ = &mut cancelled, if !e.stop_seen => e.on_stop(Instant::now()),
            _ = tokio::task::yield_now(), if spins < SPINS => spins += 1,
        }
    }
    e.flush_interval();
    e.stats.frames = e.transport.frames();
    e.stats.dead = e.dead as usize;
    e.stats
}

/// Where the load goes, and how to reach it.
#[derive(Clone)]
pub(crate) enum Target {
    /// A Reckon server over the native protocol, with this credential.
    Native {
        /// The credential.
        token: String,
    },
    /// A Redis server running the reserve/commit scripts.
    Redis {
        /// SHA1 of the loaded scripts.
        scripts: crate::resp::Scripts,
    },
}

enum Connected {
    Native(TcpStream, Native),
    Redis(TcpStream, crate::resp::RespTransport),
}

async fn connect(addr: &str, target: &Target) -> Result<Connected, String> {
    match target {
        Target::Native { token } => {
            let (stream, max_frame) = connect_native(addr, token).await?;
            Ok(Connected::Native(stream, Native::new(max_frame)))
        }
        Target::Redis { scripts } => {
            let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            Ok(Connected::Redis(
                stream,
                crate::resp::RespTransport::new(scripts.clone()),
            ))
        }
    }
}

/// What starts the load phase: the plan minus its clock.
pub(crate) struct Setup {
    /// The run's options.
    pub config: LoadConfig,
    /// Units the mix draws on.
    pub units: Vec<Unit>,
    /// This run's id (session ids).
    pub run_id: u64,
    /// Throughput interval.
    pub interval: Duration,
    /// Stops the run early.
    pub stop: CancellationToken,
    /// Per-account debits when verifying.
    pub debits: Option<Arc<Debits>>,
    /// Where the load goes.
    pub target: Target,
    /// Generator threads.
    pub threads: usize,
}

/// Connects every connection on its thread, then starts the clock and runs
/// the load; `on_start` gets the plan once the clock runs (for progress
/// and sampling).
pub(crate) fn run(setup: Setup, on_start: impl FnOnce(Arc<Plan>)) -> Result<GenOutcome, LoadError> {
    let Setup {
        config,
        units,
        run_id,
        interval,
        stop,
        debits,
        target,
        threads,
    } = setup;
    let threads = threads.clamp(1, config.connections);
    let connected = Arc::new(Barrier::new(threads + 1));
    let go = Arc::new(Barrier::new(threads + 1));
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let plan_slot: Arc<Mutex<Option<Arc<Plan>>>> = Arc::new(Mutex::new(None));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns: Vec<usize> = (t..config.connections).step_by(threads).collect();
        let (connected, go, failure, plan_slot) = (
            connected.clone(),
            go.clone(),
            failure.clone(),
            plan_slot.clone(),
        );
        let (server, target) = (config.server.clone(), target.clone());
        let handle = std::thread::Builder::new()
            .name(format!("reckon-sim-gen-{t}"))
            .spawn(move || -> (Vec<ConnStats>, Duration) {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        *failure.lock() = Some(format!("cannot start a runtime: {e}"));
                        connected.wait();
                        go.wait();
                        return (Vec::new(), Duration::ZERO);
                    }
                };
                let mut streams = Vec::new();
                for c in &conns {
                    match runtime.block_on(connect(&server, &target)) {
                        Ok(s) => streams.push((*c, s)),
                        Err(e) => {
                            failure.lock().get_or_insert(e);
                            break;
                        }
                    }
                }
                connected.wait();
                go.wait();
                let plan = plan_slot.lock().clone();
                let Some(plan) = plan.filter(|_| failure.lock().is_none()) else {
                    return (Vec::new(), Duration::ZERO);
                };
                let cpu0 = crate::sample::thread_cpu();
                let stats = runtime.block_on(async move {
                    let mut set = tokio::task::JoinSet::new();
                    for (c, s) in streams {
                        let plan = plan.clone();
                        match s {
                            Connected::Native(stream, t) => {
                                set.spawn(drive(plan, c, stream, t));
                            }
                            Connected::Redis(stream, t) => {
                                set.spawn(drive(plan, c, stream, t));
                            }
                        }
                    }
                    let mut all = Vec::new();
                    while let Some(r) = set.join_next().await {
                        if let Ok(s) = r {
                            all.push(s);
                        }
                    }
                    all
                });
                (stats, crate::sample::thread_cpu().saturating_sub(cpu0))
            });
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The threads already started wait at the barriers for
                // `threads + 1` parties; without them they would hang.
                return Err(LoadError::Config(format!(
                    "cannot start generator thread {t}: {e}"
                )));
            }
        }
    }
    connected.wait();
    let start = Instant::now();
    let plan = Arc::new(Plan {
        units,
        run_id,
        start,
        deadline: start + config.duration,
        interval,
        stop,
        debits,
        live: (0..config.connections).map(|_| Live::default()).collect(),
        intervals: Mutex::new(IntervalCollector::default()),
        config,
    });
    let failed = failure.lock().clone();
    if failed.is_none() {
        *plan_slot.lock() = Some(plan.clone());
        on_start(plan.clone());
    }
    go.wait();
    let mut stats = ConnStats::new(plan.units.len());
    let mut thread_cpu = Vec::new();
    let mut conns = 0;
    for h in handles {
        let (s, cpu) = h
            .join()
            .map_err(|_| LoadError::Config("a generator thread panicked".into()))?;
        conns += s.len();
        for c in &s {
            stats.merge(c);
        }
        thread_cpu.push(cpu);
    }
    if let Some(reason) = failed {
        return Err(LoadError::Connect {
            server: plan.config.server.clone(),
            reason,
        });
    }
    let elapsed = plan.start.elapsed();
    let intervals = plan.intervals.lock().finish();
    let late = plan.intervals.lock().late;
    Ok(GenOutcome {
        all_lost: conns == 0 || stats.dead == conns,
        stats,
        intervals,
        late_interval_samples: late,
        thread_cpu,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reckon_protocol::message::Batch;

    pub(super) fn cca_ok() -> Message {
        Message::Cca(Cca {
            result_code: ResultCode::SUCCESS,
            session_id: "s".into(),
            request_number: 0,
            services: Vec::new(),
            balance: Vec::new(),
            price: Vec::new(),
        })
    }

    #[test]
    fn latencies_beyond_the_first_bucket_are_recorded_exactly_enough() {
        let mut h = histogram();
        for us in [3, 700, 2_500, 40_000, 5_000_000, u64::MAX] {
            record_us(&mut h, us);
        }
        assert_eq!(h.len(), 6);
        assert_eq!(h.min(), 3);
        assert!(h.equivalent(h.max(), LATENCY_MAX_US));
        assert!(h.equivalent(h.value_at_quantile(0.7), 5_000_000));
        assert!(h.equivalent(h.value_at_quantile(0.5), 2_500));
        assert!(h.equivalent(h.value_at_quantile(0.6), 40_000));
    }

    #[test]
    fn frames_encode_exactly_as_the_protocol_crate_does() {
        let a = wl::ccr(
            "s-1",
            RequestType::Initial,
            0,
            7,
            40,
            &[(Unit::CREDITS, 1000)],
            &[],
        );
        let b = wl::ccr(
            "s-2",
            RequestType::Terminate,
            1,
            8,
            40,
            &[],
            &[(Unit::CREDITS, 12)],
        );
        let mut ours = BytesMut::new();
        encode_frame(&mut ours, 77, &a, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(
            &ours[..],
            &Frame::new(77, a.clone()).to_bytes().unwrap()[..]
        );
        let mut ours = BytesMut::new();
        encode_batch(&mut ours, 78, [&a, &b].into_iter(), DEFAULT_MAX_FRAME).unwrap();
        let theirs = Frame::new(
            78,
            Message::Batch(Batch {
                entries: vec![a.clone(), b.clone()],
            }),
        )
        .to_bytes()
        .unwrap();
        assert_eq!(&ours[..], &theirs[..]);
        // Too large for the limit: refused, nothing written.
        let mut small = BytesMut::new();
        assert!(encode_batch(&mut small, 79, [&a, &b].into_iter(), 40).is_err());
        assert!(small.is_empty());
    }

    #[test]
    fn native_routes_batch_answers_to_their_lanes_in_order() {
        use reckon_protocol::message::{BatchResult, ErrorReply};
        let mut t = Native::new(DEFAULT_MAX_FRAME);
        let msgs: Vec<Message> = (0..3)
            .map(|i| {
                wl::ccr(
                    &format!("s{i}"),
                    RequestType::Event,
                    0,
                    1,
                    30,
                    &[(Unit::REQUESTS, 1)],
                    &[],
                )
            })
            .collect();
        let mut out = BytesMut::new();
        t.send(&[5, 9, 2], |l| &msgs[(l % 3) as usize], &mut out)
            .unwrap();
        t.send(&[4], |l| &msgs[(l % 3) as usize], &mut out).unwrap();
        assert_eq!(t.frames(), 2);
        let (first, used) = decode_frame_with_limit(&out, DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        let (second, _) = decode_frame_with_limit(&out[used..], DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        let Message::Batch(b) = &first.body else {
            panic!("{first:?}")
        };
        assert_eq!(b.entries.len(), 3);
        assert!(matches!(second.body, Message::Ccr(_)));
        // Answers: the single one first, then the batch; an unknown id is stray.
        let busy = Message::Error(ErrorReply {
            code: ErrorCode::BUSY,
            message: String::new(),
        });
        let mut input = BytesMut::new();
        for f in [
            Frame::new(second.request_id, busy.clone()),
            Frame::new(
                first.request_id,
                Message::BatchResult(BatchResult {
                    entries: vec![busy.clone(), super::tests::cca_ok(), busy.clone()],
                }),
            ),
            Frame::new(first.request_id, busy.clone()),
            Frame::new(0, Message::Ping),
        ] {
            f.encode(&mut input).unwrap();
        }
        let mut reply = BytesMut::new();
        let mut events = Vec::new();
        t.decode(&mut input, &mut reply, &mut events).unwrap();
        assert!(input.is_empty());
        let lanes: Vec<(u32, bool)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Answer { lane, in_batch, .. } => Some((*lane, *in_batch)),
                _ => None,
            })
            .collect();
        assert_eq!(lanes, vec![(4, false), (5, true), (9, true), (2, true)]);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Stray(_)))
                .count(),
            1,
            "the second answer to one request id is stray"
        );
        let (pong, _) = decode_frame_with_limit(&reply, DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(pong.body, Message::Pong);
        assert!(t.abandon().is_empty(), "nothing left in flight");
    }

    #[test]
    fn interval_collector_summarises_old_intervals_and_counts_late_ones() {
        let mut c = IntervalCollector::default();
        let mut h = histogram();
        for us in [100, 200, 300, 10_000] {
            record_us(&mut h, us);
        }
        c.add(0, &h);
        c.add(0, &h);
        c.add(1, &h);
        c.add(10, &h);
        // Interval 0 was summarised when 10 came in: a late sample for it is counted.
        c.add(0, &h);
        assert_eq!(c.late, 4);
        let all = c.finish();
        assert_eq!(all[&0].count, 8);
        assert_eq!(all[&1].count, 4);
        assert_eq!(all[&10].count, 4);
        assert!(all[&0].max >= 9_900 && all[&0].p50 <= 310);
    }
}
