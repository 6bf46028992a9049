//! `reckon-sim load`: drives a running server over the native protocol.
//!
//! The run has three phases:
//!
//! 1. **Provisioning**: accounts `account_base ..< account_base + accounts`
//!    are created with one bucket of every unit the mix draws on, each
//!    topped up with `balance` units, in BATCH frames (ACCOUNT_CREATE +
//!    TOPUP). Accounts that exist already are reused and topped up again.
//! 2. **Load** for `duration`: closed loop (`rate` 0: every connection keeps
//!    `depth` flows running back to back, so `depth` requests in flight) or
//!    open loop (`rate` > 0: flows arrive on a fixed schedule so that about
//!    `rate` requests per second are sent, at most `depth` in flight per
//!    connection; when the generator falls behind its schedule, a flow's
//!    first request is timed from its scheduled arrival, so queueing counts
//!    as latency rather than being hidden by coordinated omission). At the
//!    deadline no new flow starts and open sessions are terminated.
//! 3. **Verification** (optional): every account's balance is read before
//!    and after the load; what each account lost must equal exactly what
//!    the generator saw acknowledged as debited.
//!
//! A session's requests go one after the other (its INITIAL's answer
//! before its first UPDATE); many sessions share a connection. BUSY and
//! TOO_BUSY answers are counted and retried with the same session id and
//! request number after a backoff (1 ms doubling to 1 s).

use crate::report::{self, Report};
use crate::rng::Rng;
use crate::workload::{self as wl, Flow, Mix, MsgType};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use reckon_charging::client::Client;
use reckon_protocol::codes::{AdminCode, ErrorCode, ResultCode};
use reckon_protocol::message::{AccountCreate, BalanceQuery, Cca, Message, TopUp};
use reckon_protocol::types::{CreditKind, RequestType, Unit};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most accounts a run may provision and draw on.
pub const ACCOUNTS_MAX: u64 = 10_000_000;
/// Most connections a run may open.
pub const CONNECTIONS_MAX: usize = 1024;
/// Most requests in flight per connection.
pub const DEPTH_MAX: usize = 4096;
/// Most requests in flight over all connections together.
pub const IN_FLIGHT_MAX: usize = 262_144;
/// Highest open-loop target rate, requests per second.
pub const RATE_MAX: u64 = 10_000_000;
/// Longest run.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Largest opening balance per bucket, in units.
pub const BALANCE_MAX: u64 = 1_000_000_000_000_000;
/// Longest mean think time between a session's requests, in ms.
pub const THINK_MS_MAX: u64 = 3_600_000;
/// Most accounts whose balances `verify` reads (it keeps them in memory).
pub const VERIFY_ACCOUNTS_MAX: u64 = 1_000_000;
/// How long past the deadline BUSY answers are still retried.
const BUSY_RETRY_GRACE: Duration = Duration::from_secs(30);
/// Lateness of an open-loop arrival put down to the timer, not to load.
const TIMER_SLACK: Duration = Duration::from_millis(2);
/// Histogram shards (each behind its own lock) to spread recording.
const SHARDS: usize = 32;

/// Everything a load run is told.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server address, `host:port`.
    pub server: String,
    /// Credential (an admin credential, to provision accounts).
    pub token: String,
    /// How many accounts to draw on.
    pub accounts: u64,
    /// The first account id; accounts are `account_base ..< account_base + accounts`.
    pub account_base: u64,
    /// Connections to open.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Open-loop target in requests per second; 0 for closed loop.
    pub rate: u64,
    /// How long to generate load.
    pub duration: Duration,
    /// Relative weights of the flows.
    pub mix: Mix,
    /// Opening balance of every bucket, in units.
    pub balance: u64,
    /// Mean ms a session waits between its requests (capped by the grant's validity); 0: none.
    pub think_ms: u64,
    /// Seed of the workload's random choices.
    pub seed: u64,
    /// Skip provisioning (the accounts exist from an earlier run).
    pub skip_provision: bool,
    /// Read every balance before and after and check the ledger against the acknowledged debits.
    pub verify: bool,
    /// Print progress lines to stderr.
    pub progress: bool,
}

impl Default for LoadConfig {
    fn default() -> LoadConfig {
        LoadConfig {
            server: "127.0.0.1:7878".into(),
            token: String::new(),
            accounts: 1000,
            account_base: 1_000_000_000,
            connections: 4,
            depth: 64,
            rate: 0,
            duration: Duration::from_secs(10),
            mix: Mix::default(),
            balance: 1_000_000_000_000,
            think_ms: 0,
            seed: 1,
            skip_provision: false,
            verify: false,
            progress: true,
        }
    }
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An option is out of range or inconsistent.
    #[error("invalid option: {0}")]
    Config(String),
    /// Connecting or the handshake failed.
    #[error("connecting to {server}: {reason}")]
    Connect {
        /// The server address.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// Creating or topping up accounts failed.
    #[error("provisioning: {0}")]
    Provision(String),
    /// Reading balances for verification failed.
    #[error("verification: {0}")]
    Verify(String),
    /// Told to stop before the load began.
    #[error("interrupted before the load began")]
    Interrupted,
    /// Every connection was lost during the run.
    #[error("every connection was lost during the run")]
    AllConnectionsLost,
}

impl LoadConfig {
    /// Checks every option against its bounds; the error says which and why.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Config(m));
        if self.accounts == 0 || self.accounts > ACCOUNTS_MAX {
            return bad(format!(
                "--accounts {}: must be 1 to {ACCOUNTS_MAX}",
                self.accounts
            ));
        }
        if self.account_base == 0 || self.account_base.checked_add(self.accounts).is_none() {
            return bad(format!(
                "--account-base {}: must be ≥ 1 and leave room for {} accounts below 2^64",
                self.account_base, self.accounts
            ));
        }
        if self.connections == 0 || self.connections > CONNECTIONS_MAX {
            return bad(format!(
                "--connections {}: must be 1 to {CONNECTIONS_MAX}",
                self.connections
            ));
        }
        if self.depth == 0 || self.depth > DEPTH_MAX {
            return bad(format!("--depth {}: must be 1 to {DEPTH_MAX}", self.depth));
        }
        if self.connections * self.depth > IN_FLIGHT_MAX {
            return bad(format!(
                "--connections {} × --depth {} = {} requests in flight: at most {IN_FLIGHT_MAX}",
                self.connections,
                self.depth,
                self.connections * self.depth
            ));
        }
        if self.rate > RATE_MAX {
            return bad(format!(
                "--rate {}: at most {RATE_MAX} requests/s (0: closed loop)",
                self.rate
            ));
        }
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            return bad(format!(
                "--duration {} s: must be 1 to {} s",
                self.duration.as_secs_f64(),
                DURATION_MAX.as_secs()
            ));
        }
        if self.balance == 0 || self.balance > BALANCE_MAX {
            return bad(format!(
                "--balance {}: must be 1 to {BALANCE_MAX}",
                self.balance
            ));
        }
        if self.think_ms > THINK_MS_MAX {
            return bad(format!(
                "--think-ms {}: at most {THINK_MS_MAX}",
                self.think_ms
            ));
        }
        if self.verify && self.accounts > VERIFY_ACCOUNTS_MAX {
            return bad(format!(
                "--verify reads every balance into memory: at most {VERIFY_ACCOUNTS_MAX} accounts (got {})",
                self.accounts
            ));
        }
        if self.token.is_empty() {
            return bad("no credential: pass --token or --data-dir of the server".into());
        }
        Ok(())
    }

    /// "closed" or "open".
    pub fn mode(&self) -> &'static str {
        if self.rate == 0 {
            "closed"
        } else {
            "open"
        }
    }
}

/// Units the generator saw acknowledged as debited, per account and unit.
pub struct Debits {
    base: u64,
    units: Vec<Unit>,
    cells: Vec<AtomicU64>,
}

impl Debits {
    fn new(base: u64, accounts: u64, units: Vec<Unit>) -> Debits {
        let n = accounts as usize * units.len();
        Debits {
            base,
            cells: (0..n).map(|_| AtomicU64::new(0)).collect(),
            units,
        }
    }

    fn add(&self, account: u64, unit: usize, amount: u64) {
        let i = (account - self.base) as usize * self.units.len() + unit;
        self.cells[i].fetch_add(amount, Ordering::Relaxed);
    }

    /// Acknowledged debits of `unit` on `account` (0 for anything not tracked).
    pub fn get(&self, account: u64, unit: Unit) -> u64 {
        let Some(u) = self.units.iter().position(|x| *x == unit) else {
            return 0;
        };
        let Some(a) = account.checked_sub(self.base) else {
            return 0;
        };
        self.cells
            .get(a as usize * self.units.len() + u)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The units tracked.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }
}

/// What a run produced: the report, and the debits it tracked if asked to verify.
pub struct LoadOutcome {
    /// Throughput, latency, errors and verification, ready to print or save.
    pub report: Report,
    /// Acknowledged debits per account and unit (when `verify` was set).
    pub debits: Option<Arc<Debits>>,
}

struct Shard {
    latency: [Histogram<u64>; 4],
    succeeded: [u64; 4],
    errors: BTreeMap<String, u64>,
    service_results: BTreeMap<String, u64>,
    flows: [u64; 4],
    final_units: u64,
}

impl Shard {
    fn new() -> Shard {
        let h = || Histogram::<u64>::new(3).expect("3 significant figures are valid");
        Shard {
            latency: [h(), h(), h(), h()],
            succeeded: [0; 4],
            errors: BTreeMap::new(),
            service_results: BTreeMap::new(),
            flows: [0; 4],
            final_units: 0,
        }
    }
}

/// Longest latency recorded as such (an hour, in µs); longer ones count as an hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Records a latency in an auto-resizing histogram. (`saturating_record`
/// would clamp to the histogram's current, initially tiny, range instead of
/// growing it.)
fn record_us(h: &mut Histogram<u64>, micros: u64) {
    let _ = h.record(micros.clamp(1, LATENCY_MAX_US));
}

struct Stats {
    shards: Vec<Mutex<Shard>>,
    answered: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    debited: Vec<AtomicU64>,
}

impl Stats {
    fn error(&self, shard: usize, name: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.shards[shard].lock().errors.entry(name).or_insert(0) += 1;
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

struct Conn {
    client: Client,
    permits: Semaphore,
    dead: AtomicBool,
}

struct Shared {
    config: LoadConfig,
    units: Vec<Unit>,
    conns: Vec<Conn>,
    stats: Stats,
    debits: Option<Arc<Debits>>,
    run_id: u64,
    deadline: Instant,
    stop: CancellationToken,
}

impl Shared {
    /// True once the deadline has passed or the run was told to stop.
    fn stopping(&self) -> bool {
        self.stop.is_cancelled() || Instant::now() >= self.deadline
    }
}

/// A granted quota: units per unit, how long it is valid, whether it is the last.
#[derive(Default)]
struct Grant {
    units: Vec<(Unit, u64)>,
    validity_s: u32,
    last: bool,
}

impl Grant {
    fn of(answer: &Cca, service: u32) -> Grant {
        let Some(s) = answer.services.iter().find(|s| s.service_id == service) else {
            return Grant::default();
        };
        Grant {
            units: s
                .granted
                .iter()
                .map(|g| (g.unit, g.amount.trunc().to_u64().unwrap_or(0)))
                .collect(),
            validity_s: s.validity_time_s,
            last: s.final_unit_action.is_some(),
        }
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

/// Runs one flow after another (closed loop) or one flow (open loop).
struct Worker {
    shared: Arc<Shared>,
    conn: usize,
    shard: usize,
    lane: u64,
    seq: u64,
    rng: Rng,
}

impl Worker {
    fn new(shared: Arc<Shared>, conn: usize, lane: u64) -> Worker {
        let seed = shared.config.seed;
        Worker {
            shared,
            conn,
            shard: (lane % SHARDS as u64) as usize,
            lane,
            seq: 0,
            rng: Rng::derive(seed, lane),
        }
    }

    fn connection(&self) -> &Conn {
        &self.shared.conns[self.conn]
    }

    fn dead(&self) -> bool {
        self.connection().dead.load(Ordering::Relaxed)
    }

    fn stopping(&self) -> bool {
        self.shared.stopping()
    }

    /// Sends one request (retrying BUSY), records its latency from `ready`
    /// and its result; `None` if it got no CCA.
    async fn send(&self, ty: MsgType, message: Message, ready: Instant) -> Option<Cca> {
        let conn = self.connection();
        let stats = &self.shared.stats;
        let _permit = conn.permits.acquire().await.ok()?;
        let mut backoff = Duration::from_millis(1);
        let mut busy_rng = Rng::derive(self.lane, self.seq);
        loop {
            if conn.dead.load(Ordering::Relaxed) {
                return None;
            }
            let busy = match conn.client.call(message.clone()).await {
                Ok(Message::Cca(c)) if c.result_code == ResultCode::TOO_BUSY => "TOO_BUSY",
                Ok(Message::Error(e)) if e.code == ErrorCode::BUSY => "BUSY",
                Ok(Message::Cca(c)) => {
                    self.record(ty, ready, &c);
                    return Some(c);
                }
                Ok(Message::Error(e)) => {
                    if e.code == ErrorCode::SHUTTING_DOWN {
                        conn.dead.store(true, Ordering::Relaxed);
                    }
                    self.answered(ty, ready);
                    stats.error(self.shard, error_name(e.code));
                    return None;
                }
                Ok(other) => {
                    self.answered(ty, ready);
                    stats.error(self.shard, format!("unexpected {:?}", other.kind()));
                    return None;
                }
                Err(_) => {
                    conn.dead.store(true, Ordering::Relaxed);
                    stats.error(self.shard, "transport".into());
                    return None;
                }
            };
            stats.error(self.shard, busy.into());
            if Instant::now() > self.shared.deadline + BUSY_RETRY_GRACE {
                stats.error(self.shard, "gave up after BUSY".into());
                return None;
            }
            // Back off with jitter: half to all of the current backoff.
            let jitter = busy_rng.range(backoff.as_micros() as u64 / 2, backoff.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    fn answered(&self, ty: MsgType, ready: Instant) {
        let micros = (ready.elapsed().as_micros() as u64).max(1);
        self.shared.stats.answered.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shared.stats.shards[self.shard].lock();
        record_us(&mut shard.latency[ty.index()], micros);
    }

    fn record(&self, ty: MsgType, ready: Instant, answer: &Cca) {
        self.answered(ty, ready);
        let stats = &self.shared.stats;
        let ok = answer.result_code.is_success();
        if !ok {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut shard = stats.shards[self.shard].lock();
        if ok {
            shard.succeeded[ty.index()] += 1;
        } else {
            *shard
                .errors
                .entry(result_name(answer.result_code))
                .or_insert(0) += 1;
        }
        for s in &answer.services {
            if ok && !s.result_code.is_success() {
                *shard
                    .service_results
                    .entry(result_name(s.result_code))
                    .or_insert(0) += 1;
            }
            if s.final_unit_action.is_some() {
                shard.final_units += 1;
            }
        }
    }

    /// Books acknowledged usage.
    fn debit(&self, account: u64, used: &[(Unit, u64)]) {
        for (unit, n) in used {
            if *n == 0 {
                continue;
            }
            if let Some(i) = self.shared.units.iter().position(|u| u == unit) {
                self.shared.stats.debited[i].fetch_add(*n, Ordering::Relaxed);
                if let Some(d) = &self.shared.debits {
                    d.add(account, i, *n);
                }
            }
        }
    }

    /// Waits as a user of the grant would: about `think_ms`, but never past
    /// the grant's validity or the deadline.
    async fn think(&mut self, validity_s: u32) {
        let think = self.shared.config.think_ms;
        if think == 0 {
            return;
        }
        let mut wait = self.rng.range(think / 2, think + think / 2);
        if validity_s > 0 {
            wait = wait.min(validity_s as u64 * 900);
        }
        let until = (Instant::now() + Duration::from_millis(wait)).min(self.shared.deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.shared.stop.cancelled() => {}
        }
    }

    /// Runs one flow whose first request became due at `ready`.
    async fn flow(&mut self, flow: Flow, ready: Instant) {
        self.seq += 1;
        let account = self.shared.config.account_base + self.rng.below(self.shared.config.accounts);
        let session = format!(
            "reckon-sim;{:x};{:x}.{:x}",
            self.shared.run_id, self.lane, self.seq
        );
        let completed = match flow {
            Flow::Event => self.event(&session, account, ready).await,
            _ => self.session(flow, &session, account, ready).await,
        };
        if completed {
            self.shared.stats.shards[self.shard].lock().flows[flow as usize] += 1;
        }
    }

    async fn event(&mut self, session: &str, account: u64, ready: Instant) -> bool {
        let debit = [(Unit::REQUESTS, wl::EVENT_UNITS)];
        let message = wl::ccr(
            session,
            RequestType::Event,
            0,
            account,
            wl::EVENT_SERVICE,
            &debit,
            &[],
        );
        match self.send(MsgType::Event, message, ready).await {
            Some(a) => {
                if a.result_code.is_success() {
                    self.debit(account, &debit);
                }
                true
            }
            None => false,
        }
    }

    /// What a flow asks for in an INITIAL or UPDATE.
    fn ask(&mut self, flow: Flow) -> Vec<(Unit, u64)> {
        match flow {
            Flow::Telco => vec![(Unit::OCTETS, wl::TELCO_QUOTA)],
            Flow::Gpu => vec![(Unit::GPU_SECONDS, wl::GPU_QUOTA)],
            Flow::Inference => vec![
                (
                    Unit::TOKENS_IN,
                    self.rng.range(wl::PROMPT_TOKENS.0, wl::PROMPT_TOKENS.1),
                ),
                (Unit::TOKENS_OUT, wl::MAX_TOKENS_OUT),
            ],
            Flow::Event => Vec::new(),
        }
    }

    /// What a flow reports as used of its grant (never more than granted).
    fn usage(&mut self, flow: Flow, grant: &Grant, last: bool) -> Vec<(Unit, u64)> {
        match flow {
            Flow::Inference => {
                let out = grant.get(Unit::TOKENS_OUT);
                vec![
                    // The prompt was read in full; the model wrote 1..=max tokens.
                    (Unit::TOKENS_IN, grant.get(Unit::TOKENS_IN)),
                    (Unit::TOKENS_OUT, self.rng.range(out.min(1), out)),
                ]
            }
            _ => grant
                .units
                .iter()
                .map(|(u, n)| {
                    let used = if last {
                        // The session ends part-way into its grant.
                        self.rng.range(0, *n)
                    } else if flow == Flow::Gpu {
                        // Periodic GPU usage reports: most of the hour was used.
                        self.rng.range(n * 3 / 4, *n)
                    } else {
                        // The quota is mostly used up (or the validity ran out).
                        self.rng.range(n / 2, *n)
                    };
                    (*u, used)
                })
                .collect(),
        }
    }

    async fn session(&mut self, flow: Flow, session: &str, account: u64, ready: Instant) -> bool {
        let service = flow.service();
        let updates = match flow {
            Flow::Telco => self.rng.range(wl::TELCO_UPDATES.0, wl::TELCO_UPDATES.1),
            Flow::Gpu => self.rng.range(wl::GPU_UPDATES.0, wl::GPU_UPDATES.1),
            _ => 0,
        };
        let ask = self.ask(flow);
        let initial = wl::ccr(
            session,
            RequestType::Initial,
            0,
            account,
            service,
            &ask,
            &[],
        );
        let Some(answer) = self.send(MsgType::Initial, initial, ready).await else {
            return false;
        };
        if !answer.result_code.is_success() {
            // Nothing was granted: the flow ends here (a refusal is an outcome).
            return true;
        }
        let mut grant = Grant::of(&answer, service);
        let mut number = 1u32;
        for _ in 0..updates {
            if grant.last || grant.total() == 0 || self.stopping() || self.dead() {
                break;
            }
            self.think(grant.validity_s).await;
            let used = self.usage(flow, &grant, false);
            let ask = self.ask(flow);
            let update = wl::ccr(
                session,
                RequestType::Update,
                number,
                account,
                service,
                &ask,
                &used,
            );
            number += 1;
            let Some(answer) = self.send(MsgType::Update, update, Instant::now()).await else {
                return false;
            };
            if answer.result_code.is_success() {
                self.debit(account, &used);
                grant = Grant::of(&answer, service);
            }
        }
        self.think(grant.validity_s).await;
        let used = self.usage(flow, &grant, true);
        let terminate = wl::ccr(
            session,
            RequestType::Terminate,
            number,
            account,
            service,
            &[],
            &used,
        );
        let Some(answer) = self
            .send(MsgType::Terminate, terminate, Instant::now())
            .await
        else {
            return false;
        };
        if answer.result_code.is_success() {
            self.debit(account, &used);
        }
        true
    }
}

fn run_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    Rng::derive(t, std::process::id() as u64).next_u64()
}

async fn connect(config: &LoadConfig) -> Result<Vec<Conn>, LoadError> {
    let mut conns = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let client = Client::connect(&config.server, &config.token)
            .await
            .map_err(|e| LoadError::Connect {
                server: config.server.clone(),
                reason: e.to_string(),
            })?;
        conns.push(Conn {
            client,
            permits: Semaphore::new(config.depth),
            dead: AtomicBool::new(false),
        });
    }
    Ok(conns)
}

/// Prints a progress line every second until `done` is set: `[  3s]`,
/// then what `count` says (a count, and what follows it), then rates.
fn spawn_progress(
    done: Arc<AtomicBool>,
    count: impl Fn() -> (u64, String, String) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0u64;
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        loop {
            tick.tick().await;
            if done.load(Ordering::Relaxed) {
                return;
            }
            let (n, what, extra) = count();
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "[{:>4.0}s] {n} {what}: {}/s now, {:.0}/s average{extra}",
                secs,
                n - last.min(n),
                n as f64 / secs
            );
            last = n;
        }
    })
}

/// Creates the accounts with a bucket of every unit, in pipelined BATCHes.
async fn provision(
    conns: &[Conn],
    config: &LoadConfig,
    units: &[Unit],
    stop: &CancellationToken,
) -> Result<report::Provisioning, LoadError> {
    if !conns[0].client.hello.is_admin {
        return Err(LoadError::Provision(
            "the credential is not an admin credential; creating accounts needs one (or pass --no-provision for accounts that exist)".into(),
        ));
    }
    let started = Instant::now();
    let per_batch = (reckon_protocol::limits::BATCH_MAX / (1 + units.len())) as u64;
    let batches = config.accounts.div_ceil(per_batch);
    let next = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let existing = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let progress = config.progress.then(|| {
        let (c, e, total) = (created.clone(), existing.clone(), config.accounts);
        spawn_progress(done.clone(), move || {
            let n = c.load(Ordering::Relaxed) + e.load(Ordering::Relaxed);
            (n, format!("of {total} accounts provisioned"), String::new())
        })
    });
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        for _ in 0..4 {
            let client = conn.client.clone();
            let (next, created, existing) = (next.clone(), created.clone(), existing.clone());
            let units = units.to_vec();
            let (base, accounts, balance) = (config.account_base, config.accounts, config.balance);
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    if stop.is_cancelled() {
                        return Err(LoadError::Interrupted);
                    }
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        return Ok::<(), LoadError>(());
                    }
                    let first = base + b * per_batch;
                    let last = (first + per_batch).min(base + accounts);
                    let mut entries =
                        Vec::with_capacity(((last - first) as usize) * (1 + units.len()));
                    for account in first..last {
                        entries.push(Message::AccountCreate(AccountCreate {
                            op_id: client.new_op_id(),
                            account,
                            parent: None,
                            draws_on_parent: false,
                        }));
                        for unit in &units {
                            entries.push(Message::TopUp(TopUp {
                                op_id: client.new_op_id(),
                                account,
                                unit: *unit,
                                amount: Decimal::from(balance),
                                bucket: None,
                                kind: CreditKind::TopUp,
                                reason: "reckon-sim load".into(),
                            }));
                        }
                    }
                    let (c, e) = provision_batch(&client, entries).await?;
                    created.fetch_add(c, Ordering::Relaxed);
                    existing.fetch_add(e, Ordering::Relaxed);
                }
            });
        }
    }
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                result = Err(e);
                tasks.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => result = Err(LoadError::Provision(format!("a task failed: {e}"))),
        }
    }
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    result?;
    Ok(report::Provisioning {
        skipped: false,
        accounts_created: created.load(Ordering::Relaxed),
        accounts_existing: existing.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Sends one provisioning batch, retrying entries answered BUSY; returns
/// (accounts created, accounts that existed).
async fn provision_batch(client: &Client, entries: Vec<Message>) -> Result<(u64, u64), LoadError> {
    let mut pending = entries;
    let (mut created, mut existing) = (0, 0);
    let mut backoff = Duration::from_millis(1);
    while !pending.is_empty() {
        let answers = client
            .batch(pending.clone())
            .await
            .map_err(|e| LoadError::Provision(e.to_string()))?;
        let mut retry = Vec::new();
        for (request, answer) in pending.into_iter().zip(answers) {
            let create = matches!(request, Message::AccountCreate(_));
            match &answer {
                Message::AdminResult(r) if r.code == AdminCode::OK => created += create as u64,
                Message::AdminResult(r) if create && r.code == AdminCode::ACCOUNT_EXISTS => {
                    existing += 1
                }
                Message::Error(e) if e.code == ErrorCode::BUSY => retry.push(request),
                Message::AdminResult(r) => {
                    return Err(LoadError::Provision(format!(
                        "{} refused: {}",
                        describe(&request),
                        r.code.name().unwrap_or("unknown code")
                    )))
                }
                Message::Error(e) => {
                    return Err(LoadError::Provision(format!(
                        "{} refused: {} ({})",
                        describe(&request),
                        e.code.name().unwrap_or("unknown code"),
                        e.message
                    )))
                }
                other => {
                    return Err(LoadError::Provision(format!(
                        "{}: unexpected answer {:?}",
                        describe(&request),
                        other.kind()
                    )))
                }
            }
        }
        if !retry.is_empty() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        pending = retry;
    }
    Ok((created, existing))
}

fn describe(m: &Message) -> String {
    match m {
        Message::AccountCreate(a) => format!("creating account {}", a.account),
        Message::TopUp(t) => format!("topping up account {} in {}", t.account, t.unit),
        Message::BalanceQuery(q) => format!("reading the balance of account {}", q.account),
        other => format!("{:?}", other.kind()),
    }
}

/// Per account, per unit: (amount, held) summed over the account's buckets.
async fn read_balances(
    conns: &[Conn],
    config: &LoadConfig,
    units: &[Unit],
) -> Result<Vec<(Decimal, Decimal)>, LoadError> {
    const PER_BATCH: u64 = 256;
    let n = config.accounts;
    let cells = Arc::new(Mutex::new(vec![
        (Decimal::ZERO, Decimal::ZERO);
        n as usize * units.len()
    ]));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        for _ in 0..4 {
            let (client, next, cells) = (conn.client.clone(), next.clone(), cells.clone());
            let units = units.to_vec();
            let base = config.account_base;
            tasks.spawn(async move {
                loop {
                    let first = next.fetch_add(PER_BATCH, Ordering::Relaxed);
                    if first >= n {
                        return Ok::<(), LoadError>(());
                    }
                    let last = (first + PER_BATCH).min(n);
                    let queries: Vec<Message> = (first..last)
                        .map(|i| Message::BalanceQuery(BalanceQuery { account: base + i }))
                        .collect();
                    let mut answers = Vec::new();
                    let mut backoff = Duration::from_millis(1);
                    let mut pending: Vec<(u64, Message)> = (first..last).zip(queries).collect();
                    while !pending.is_empty() {
                        let got = client
                            .batch(pending.iter().map(|(_, m)| m.clone()).collect())
                            .await
                            .map_err(|e| LoadError::Verify(e.to_string()))?;
                        let mut retry = Vec::new();
                        for ((i, q), a) in pending.into_iter().zip(got) {
                            match a {
                                Message::Error(e) if e.code == ErrorCode::BUSY => {
                                    retry.push((i, q))
                                }
                                Message::Balance(b) => answers.push((i, b)),
                                Message::AdminResult(r) => {
                                    return Err(LoadError::Verify(format!(
                                        "{}: {}",
                                        describe(&q),
                                        r.code.name().unwrap_or("unknown code")
                                    )))
                                }
                                other => {
                                    return Err(LoadError::Verify(format!(
                                        "{}: unexpected answer {:?}",
                                        describe(&q),
                                        other.kind()
                                    )))
                                }
                            }
                        }
                        if !retry.is_empty() {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                        pending = retry;
                    }
                    let mut cells = cells.lock();
                    for (i, b) in answers {
                        for (u, unit) in units.iter().enumerate() {
                            let cell = &mut cells[i as usize * units.len() + u];
                            for k in b.buckets.iter().filter(|k| k.unit == *unit) {
                                cell.0 += k.amount;
                                cell.1 += k.held;
                            }
                        }
                    }
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(LoadError::Verify(format!("a task failed: {e}"))),
        }
    }
    let cells = std::mem::take(&mut *cells.lock());
    Ok(cells)
}

/// Compares what each account lost with what the generator saw acknowledged.
fn compare(
    config: &LoadConfig,
    units: &[Unit],
    before: &[(Decimal, Decimal)],
    after: &[(Decimal, Decimal)],
    debits: &Debits,
) -> report::Verification {
    let mut v = report::Verification {
        accounts: config.accounts,
        exact: true,
        mismatches: 0,
        held_after: 0,
        examples: Vec::new(),
    };
    for i in 0..config.accounts {
        let account = config.account_base + i;
        for (u, unit) in units.iter().enumerate() {
            let cell = i as usize * units.len() + u;
            let lost = before[cell].0 - after[cell].0;
            let acked = Decimal::from(debits.get(account, *unit));
            if lost != acked {
                v.exact = false;
                v.mismatches += 1;
                if v.examples.len() < 10 {
                    v.examples.push(format!(
                        "account {account} {unit}: balance fell by {lost}, acknowledged debits {acked}"
                    ));
                }
            }
            if !after[cell].1.is_zero() {
                v.held_after += 1;
            }
        }
    }
    v
}

/// Runs a whole load: provisioning, load, optional verification.
pub async fn run(config: &LoadConfig) -> Result<LoadOutcome, LoadError> {
    run_with_stop(config, CancellationToken::new()).await
}

/// Like [`run`], but cancelling `stop` ends the load early (open sessions
/// are still terminated and the report covers what ran) or interrupts
/// provisioning.
pub async fn run_with_stop(
    config: &LoadConfig,
    stop: CancellationToken,
) -> Result<LoadOutcome, LoadError> {
    config.validate()?;
    let units = config.mix.units();
    let conns = connect(config).await?;
    let provisioning = if config.skip_provision {
        report::Provisioning {
            skipped: true,
            ..Default::default()
        }
    } else {
        if config.progress {
            eprintln!(
                "reckon-sim: provisioning accounts {}..={} with {} of each of {}",
                config.account_base,
                config.account_base + config.accounts - 1,
                config.balance,
                units
                    .iter()
                    .map(|u| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        provision(&conns, config, &units, &stop).await?
    };
    let before = if config.verify {
        Some(read_balances(&conns, config, &units).await?)
    } else {
        None
    };
    if config.progress {
        eprintln!(
            "reckon-sim: {} loop, {} connection(s) × {} in flight{}, {} s, mix {}",
            config.mode(),
            config.connections,
            config.depth,
            if config.rate > 0 {
                format!(", target {} requests/s", config.rate)
            } else {
                String::new()
            },
            config.duration.as_secs_f64(),
            config.mix
        );
    }
    let started = Instant::now();
    let shared = Arc::new(Shared {
        config: config.clone(),
        stats: Stats {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            answered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            debited: units.iter().map(|_| AtomicU64::new(0)).collect(),
        },
        debits: config.verify.then(|| {
            Arc::new(Debits::new(
                config.account_base,
                config.accounts,
                units.clone(),
            ))
        }),
        units: units.clone(),
        conns,
        run_id: run_id(),
        deadline: started + config.duration,
        stop,
    });
    let done = Arc::new(AtomicBool::new(false));
    let progress = config.progress.then(|| {
        let s = shared.clone();
        spawn_progress(done.clone(), move || {
            let n = s.stats.answered.load(Ordering::Relaxed);
            let mut extra = format!("; errors {}", s.stats.errors.load(Ordering::Relaxed));
            let dropped = s.stats.dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                extra.push_str(&format!(", arrivals dropped {dropped}"));
            }
            if s.stopping() {
                extra.push_str("; draining (terminating open sessions)");
            }
            (n, "requests answered".into(), extra)
        })
    });
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..config.connections {
        if config.rate == 0 {
            for d in 0..config.depth {
                let lane = (c * config.depth + d) as u64;
                let shared = shared.clone();
                tasks.spawn(closed_lane(shared, c, lane));
            }
        } else {
            tasks.spawn(open_generator(shared.clone(), c));
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    if shared.conns.iter().all(|c| c.dead.load(Ordering::Relaxed)) {
        return Err(LoadError::AllConnectionsLost);
    }
    let verification = match &before {
        Some(before) => {
            let after = read_balances(&shared.conns, config, &units).await?;
            let debits = shared
                .debits
                .as_ref()
                .expect("debits are tracked when verifying");
            Some(compare(config, &units, before, &after, debits))
        }
        None => None,
    };
    let mut merged = Shard::new();
    for s in &shared.stats.shards {
        let s = s.lock();
        for i in 0..4 {
            merged.latency[i]
                .add(&s.latency[i])
                .expect("auto-resizing histograms merge");
            merged.succeeded[i] += s.succeeded[i];
            merged.flows[i] += s.flows[i];
        }
        for (k, v) in &s.errors {
            *merged.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &s.service_results {
            *merged.service_results.entry(k.clone()).or_insert(0) += v;
        }
        merged.final_units += s.final_units;
    }
    let report = report::build(report::Inputs {
        config,
        provisioning,
        elapsed,
        latency: &merged.latency,
        succeeded: merged.succeeded,
        flows: merged.flows,
        errors: merged.errors,
        service_results: merged.service_results,
        final_units: merged.final_units,
        dropped: shared.stats.dropped.load(Ordering::Relaxed),
        debited: units
            .iter()
            .zip(&shared.stats.debited)
            .map(|(u, n)| (u.as_str().to_string(), n.load(Ordering::Relaxed)))
            .collect(),
        verification,
    });
    Ok(LoadOutcome {
        report,
        debits: shared.debits.clone(),
    })
}

async fn closed_lane(shared: Arc<Shared>, conn: usize, lane: u64) {
    let mut worker = Worker::new(shared.clone(), conn, lane);
    while !worker.stopping() && !worker.dead() {
        let flow = shared.config.mix.pick(&mut worker.rng);
        worker.flow(flow, Instant::now()).await;
    }
}

async fn open_generator(shared: Arc<Shared>, conn: usize) {
    let config = &shared.config;
    // Flows per second on this connection so that requests/s ≈ rate.
    let per_second = config.rate as f64 / config.connections as f64 / config.mix.mean_requests();
    let backlog_max = (config.depth * 16).max(1024);
    let active = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut picker = Rng::derive(config.seed, u64::MAX - conn as u64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    loop {
        let due = start + Duration::from_secs_f64(n as f64 / per_second);
        if due >= shared.deadline || shared.conns[conn].dead.load(Ordering::Relaxed) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = shared.stop.cancelled() => break,
        }
        let now = Instant::now();
        loop {
            let due = start + Duration::from_secs_f64(n as f64 / per_second);
            if due > now || due >= shared.deadline {
                break;
            }
            n += 1;
            if active.load(Ordering::Relaxed) >= backlog_max {
                shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let flow = config.mix.pick(&mut picker);
            let lane = ((conn as u64) << 40) | n;
            // Time the flow from its scheduled arrival when the generator is
            // behind (queueing counts as latency), but not for the timer's
            // own granularity (about a millisecond).
            let ready = if now.duration_since(due) > TIMER_SLACK {
                due
            } else {
                now
            };
            let (shared, active) = (shared.clone(), active.clone());
            active.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                let mut worker = Worker::new(shared, conn, lane);
                worker.flow(flow, ready).await;
                active.fetch_sub(1, Ordering::Relaxed);
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_beyond_the_first_bucket_are_recorded_exactly_enough() {
        let mut h = Shard::new().latency[0].clone();
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
}
