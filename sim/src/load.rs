//! `reckon-sim load`: drives a running server over the native protocol.
//!
//! The run has three phases:
//!
//! 1. **Provisioning**: accounts `account_base ..< account_base + accounts`
//!    are created with one bucket of every unit the mix draws on, each
//!    topped up with `balance` units, in BATCH frames (ACCOUNT_CREATE +
//!    TOPUP). Accounts that exist already are reused and topped up again.
//! 2. **Load** for `duration`, on `threads` generator threads that share
//!    the `connections` between them (see [`crate::generator`] for why it is built
//!    that way): closed loop (`rate` 0: every connection keeps `depth` flows
//!    running back to back, so `depth` requests in flight) or open loop
//!    (`rate` > 0: flows arrive on a fixed schedule per connection so that
//!    about `rate` requests per second are sent, at most `depth` in flight
//!    per connection; every flow's first request is timed from its
//!    scheduled arrival, however late the generator or the server made it,
//!    so queueing counts as latency rather than being hidden by coordinated
//!    omission, and the generator's own lateness is reported as schedule
//!    lag). With `batch` > 1 up to `batch` ready requests of a connection
//!    go out in one BATCH frame. At the deadline no new flow starts and
//!    open sessions are terminated. Requests answered are counted per
//!    interval (throughput over time); the generator's CPU time is measured;
//!    the server's RSS, CPU and data directory are sampled if asked.
//! 3. **Verification** (optional): every account's balance is read before
//!    and after the load; what each account lost must equal exactly what
//!    the generator saw acknowledged as debited.
//!
//! A session's requests go one after the other (its INITIAL's answer
//! before its first UPDATE); many sessions share a connection. BUSY and
//! TOO_BUSY answers are counted and retried with the same session id and
//! request number after a backoff (1 ms doubling to 1 s).

use crate::generator::{self as gen, GenOutcome, Target};
use crate::report::{self, Report};
use crate::rng::Rng;
use crate::sample::{self, CpuTimes, Sample, SamplingConfig};
use crate::workload::Mix;
use parking_lot::Mutex;
use reckon_charging::client::Client;
use reckon_protocol::codes::{AdminCode, ErrorCode};
use reckon_protocol::message::{AccountCreate, BalanceQuery, LimitSet, Message, TopUp};
use reckon_protocol::types::{CreditKind, LimitPeriod, Unit};
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
/// Most generator threads.
pub const THREADS_MAX: usize = 256;
/// Longest time between samples.
pub const SAMPLE_EVERY_MAX: Duration = Duration::from_secs(3600);
/// Largest flatness tolerance, percent.
pub const TOLERANCE_PCT_MAX: u32 = 1000;
/// Most throughput intervals a run records (longer runs get longer intervals).
pub const INTERVALS_MAX: u64 = 3600;

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
    /// Give every account a monthly and a yearly hard budget in each unit,
    /// never reached: what enforcing spend controls costs per request.
    pub budgets: bool,
    /// Print progress lines to stderr.
    pub progress: bool,
    /// Generator threads; 0: one per core, at most one per connection.
    pub threads: usize,
    /// Most ready requests of a connection sent in one BATCH frame; 1: one frame per request.
    pub batch: usize,
    /// The server's RSS, CPU and data directory to sample during the run.
    pub sampling: SamplingConfig,
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
            budgets: false,
            progress: true,
            threads: 0,
            batch: 1,
            sampling: SamplingConfig::default(),
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
        self.validate_shape()?;
        if self.token.is_empty() {
            return Err(LoadError::Config(
                "no credential: pass --token or --data-dir of the server".into(),
            ));
        }
        Ok(())
    }

    /// [`LoadConfig::validate`] but for the credential (a Redis run needs none).
    pub fn validate_shape(&self) -> Result<(), LoadError> {
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
        if self.threads > THREADS_MAX {
            return bad(format!(
                "--threads {}: at most {THREADS_MAX} (0: one per core)",
                self.threads
            ));
        }
        let batch_max = reckon_protocol::limits::BATCH_MAX;
        if self.batch == 0 || self.batch > batch_max {
            return bad(format!(
                "--batch {}: must be 1 to {batch_max} (1: no BATCH frames)",
                self.batch
            ));
        }
        let s = &self.sampling;
        if s.every < Duration::from_secs(1) || s.every > SAMPLE_EVERY_MAX {
            return bad(format!(
                "--sample-every {} s: must be 1 to {} s",
                s.every.as_secs_f64(),
                SAMPLE_EVERY_MAX.as_secs()
            ));
        }
        if s.flat_after > DURATION_MAX {
            return bad(format!(
                "--flat-after {} s: at most {} s",
                s.flat_after.as_secs(),
                DURATION_MAX.as_secs()
            ));
        }
        if s.tolerance_pct > TOLERANCE_PCT_MAX {
            return bad(format!(
                "--flat-tolerance {}: at most {TOLERANCE_PCT_MAX} %",
                s.tolerance_pct
            ));
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

    /// Generator threads the run uses: as asked (or one per core), at most
    /// one per connection.
    pub fn effective_threads(&self) -> usize {
        let asked = if self.threads == 0 {
            sample::cores()
        } else {
            self.threads
        };
        asked.clamp(1, self.connections.max(1))
    }

    /// Length of one throughput interval: 1 s, longer for runs over an hour
    /// so a report holds at most [`INTERVALS_MAX`] of them.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.duration.as_secs().div_ceil(INTERVALS_MAX).max(1))
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

    pub(crate) fn add(&self, account: u64, unit: usize, amount: u64) {
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

fn run_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    Rng::derive(t, std::process::id() as u64).next_u64()
}

async fn connect(config: &LoadConfig) -> Result<Vec<Client>, LoadError> {
    // Provisioning and verification only; the load has its own connections.
    let mut clients = Vec::with_capacity(config.connections.min(4));
    for _ in 0..config.connections.min(4) {
        let client = Client::connect(&config.server, &config.token)
            .await
            .map_err(|e| LoadError::Connect {
                server: config.server.clone(),
                reason: e.to_string(),
            })?;
        clients.push(client);
    }
    Ok(clients)
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
    clients: &[Client],
    config: &LoadConfig,
    units: &[Unit],
    stop: &CancellationToken,
) -> Result<report::Provisioning, LoadError> {
    if !clients[0].hello.is_admin {
        return Err(LoadError::Provision(
            "the credential is not an admin credential; creating accounts needs one (or pass --no-provision for accounts that exist)".into(),
        ));
    }
    let started = Instant::now();
    let controls = if config.budgets { 2 } else { 0 };
    let per_batch =
        (reckon_protocol::limits::BATCH_MAX / (1 + units.len() * (1 + controls))) as u64;
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
    for client in clients {
        for _ in 0..4 {
            let client = client.clone();
            let (next, created, existing) = (next.clone(), created.clone(), existing.clone());
            let units = units.to_vec();
            let (base, accounts, balance) = (config.account_base, config.accounts, config.balance);
            let budgets = config.budgets;
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
                            if budgets {
                                for months in [1, 12] {
                                    entries.push(Message::LimitSet(LimitSet {
                                        op_id: client.new_op_id(),
                                        account,
                                        unit: *unit,
                                        cap: Some(Decimal::from(balance) * Decimal::TEN),
                                        period: LimitPeriod::Months {
                                            months,
                                            anchor_ms: 946_684_800_000,
                                            offset_min: 0,
                                        },
                                        soft: false,
                                        // Checked on every commit, never
                                        // reached: their cost is measured.
                                        alerts: vec![50, 80, 100],
                                    }));
                                }
                            }
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
    clients: &[Client],
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
    for client in clients {
        for _ in 0..4 {
            let (client, next, cells) = (client.clone(), next.clone(), cells.clone());
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

/// Per-account debit tracking, when verifying.
fn new_debits(config: &LoadConfig, units: &[Unit]) -> Option<Arc<Debits>> {
    config.verify.then(|| {
        Arc::new(Debits::new(
            config.account_base,
            config.accounts,
            units.to_vec(),
        ))
    })
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
    let clients = connect(config).await?;
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
        provision(&clients, config, &units, &stop).await?
    };
    let before = if config.verify {
        Some(read_balances(&clients, config, &units).await?)
    } else {
        None
    };
    let debits = new_debits(config, &units);
    let target = Target::Native {
        token: config.token.clone(),
    };
    let measured = measure(config, &units, target, stop, debits.clone()).await?;
    let verification = match &before {
        Some(before) => {
            let after = read_balances(&clients, config, &units).await?;
            let d = debits.as_ref().expect("debits are tracked when verifying");
            Some(compare(config, &units, before, &after, d))
        }
        None => None,
    };
    Ok(LoadOutcome {
        report: measured.report(config, "reckon", provisioning, verification),
        debits,
    })
}

/// `reckon-sim redis`: the reserve-commit flow against a Redis server with
/// the scripts of [`crate::resp`], by the same generator as [`run`].
pub async fn run_redis(
    config: &LoadConfig,
    stop: CancellationToken,
) -> Result<LoadOutcome, LoadError> {
    crate::resp::validate(config)?;
    let units = config.mix.units();
    let connect_error = |reason: String| LoadError::Connect {
        server: config.server.clone(),
        reason,
    };
    let mut setup = crate::resp::RedisConn::connect(&config.server)
        .await
        .map_err(connect_error)?;
    let scripts = setup.load_scripts().await.map_err(connect_error)?;
    let provisioning = if config.skip_provision {
        report::Provisioning {
            skipped: true,
            ..Default::default()
        }
    } else {
        if config.progress {
            eprintln!(
                "reckon-sim: setting accounts {}..={} in Redis to {} credits",
                config.account_base,
                config.account_base + config.accounts - 1,
                config.balance
            );
        }
        crate::resp::provision(config).await?
    };
    let before = if config.verify {
        Some(crate::resp::read_balances(config).await?)
    } else {
        None
    };
    let debits = new_debits(config, &units);
    let target = Target::Redis { scripts };
    let measured = measure(config, &units, target, stop, debits.clone()).await?;
    let verification = match &before {
        Some(before) => {
            let after = crate::resp::read_balances(config).await?;
            let d = debits.as_ref().expect("debits are tracked when verifying");
            Some(compare(config, &units, before, &after, d))
        }
        None => None,
    };
    Ok(LoadOutcome {
        report: measured.report(config, "redis", provisioning, verification),
        debits,
    })
}

/// The load phase's results, before they become a report.
struct Measured {
    gen: GenOutcome,
    cpu: CpuTimes,
    threads: usize,
    interval: Duration,
    samples: Option<Vec<Sample>>,
}

impl Measured {
    fn report(
        &self,
        config: &LoadConfig,
        target: &str,
        provisioning: report::Provisioning,
        verification: Option<report::Verification>,
    ) -> Report {
        let s = &self.gen.stats;
        report::build(report::Inputs {
            config,
            target,
            provisioning,
            elapsed: self.gen.elapsed,
            latency: &s.latency,
            succeeded: s.succeeded,
            flows: s.flows,
            errors: s.errors.clone(),
            service_results: s.service_results.clone(),
            final_units: s.final_units,
            dropped: s.dropped,
            debited: config
                .mix
                .units()
                .iter()
                .zip(&s.debited)
                .map(|(u, n)| (u.as_str().to_string(), *n))
                .collect(),
            verification,
            threads: self.threads,
            frames: s.frames,
            sent: s.sent,
            cpu: self.cpu,
            thread_cpu: &self.gen.thread_cpu,
            lag: &s.lag,
            series: &s.series,
            intervals: &self.gen.intervals,
            late_interval_samples: self.gen.late_interval_samples,
            interval: self.interval,
            load: s
                .stopped_after
                .map_or(config.duration, |d| d.min(config.duration)),
            samples: self.samples.clone(),
        })
    }
}

#[derive(Default)]
struct Hooks {
    started: Option<CpuTimes>,
    sampler: Option<sample::Sampler>,
    progress: Option<tokio::task::JoinHandle<()>>,
}

/// Runs the load phase on the generator threads, with the progress line
/// and the sampler running beside it; measures the generator's CPU time.
async fn measure(
    config: &LoadConfig,
    units: &[Unit],
    target: Target,
    stop: CancellationToken,
    debits: Option<Arc<Debits>>,
) -> Result<Measured, LoadError> {
    let threads = config.effective_threads();
    let interval = config.interval();
    if config.progress {
        eprintln!(
            "reckon-sim: {} loop, {} connection(s) × {} in flight{} on {} generator thread(s){}, {} s, mix {}",
            config.mode(),
            config.connections,
            config.depth,
            if config.rate > 0 {
                format!(", target {} requests/s", config.rate)
            } else {
                String::new()
            },
            threads,
            if config.batch > 1 {
                format!(", up to {} requests per BATCH frame", config.batch)
            } else {
                String::new()
            },
            config.duration.as_secs_f64(),
            config.mix
        );
    }
    let hooks = Arc::new(Mutex::new(Hooks::default()));
    let done = Arc::new(AtomicBool::new(false));
    let setup = gen::Setup {
        config: config.clone(),
        units: units.to_vec(),
        run_id: run_id(),
        interval,
        stop,
        debits,
        target,
        threads,
    };
    let runtime = tokio::runtime::Handle::current();
    let (h, d, progress, sampling) = (
        hooks.clone(),
        done.clone(),
        config.progress,
        config.sampling.clone(),
    );
    // The generator blocks its caller (it runs its own threads).
    let outcome = tokio::task::spawn_blocking(move || {
        gen::run(setup, move |plan| {
            let mut h = h.lock();
            h.started = Some(sample::process_cpu());
            if sampling.enabled() {
                h.sampler = Some(sample::Sampler::start(sampling, plan.start, progress));
            }
            if progress {
                h.progress = Some(runtime.spawn(progress_lines(plan, d)));
            }
        })
    })
    .await
    .map_err(|e| LoadError::Config(format!("the generator failed: {e}")));
    let cpu1 = sample::process_cpu();
    done.store(true, Ordering::Relaxed);
    let hooks = std::mem::take(&mut *hooks.lock());
    if let Some(p) = hooks.progress {
        p.abort();
    }
    let samples = hooks.sampler.map(sample::Sampler::finish);
    let gen = outcome??;
    if gen.all_lost {
        return Err(LoadError::AllConnectionsLost);
    }
    let cpu = hooks
        .started
        .map_or_else(CpuTimes::default, |c0| cpu1.since(&c0));
    Ok(Measured {
        gen,
        cpu,
        threads,
        interval,
        samples,
    })
}

/// A line a second: requests answered, rates, errors, the generator's CPU.
async fn progress_lines(plan: Arc<gen::Plan>, done: Arc<AtomicBool>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let (mut last, mut last_cpu, mut last_t) = (0u64, sample::process_cpu().total(), 0f64);
    loop {
        tick.tick().await;
        if done.load(Ordering::Relaxed) {
            return;
        }
        let sum = |f: fn(&gen::Live) -> &AtomicU64| {
            plan.live
                .iter()
                .map(|l| f(l).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let n = sum(|l| &l.answered);
        let errors = sum(|l| &l.errors);
        let dropped = sum(|l| &l.dropped);
        let secs = start.elapsed().as_secs_f64();
        let cpu = sample::process_cpu().total();
        let cores = cpu.saturating_sub(last_cpu).as_secs_f64() / (secs - last_t).max(1e-3);
        let mut extra = format!("; errors {errors}");
        if dropped > 0 {
            extra.push_str(&format!(", arrivals dropped {dropped}"));
        }
        if plan.stop.is_cancelled() || std::time::Instant::now() >= plan.deadline {
            extra.push_str("; draining (terminating open sessions)");
        }
        eprintln!(
            "[{:>4.0}s] {n} requests answered: {}/s now, {:.0}/s average{extra}; generator {cores:.2} cores",
            secs,
            n - last.min(n),
            n as f64 / secs
        );
        (last, last_cpu, last_t) = (n, cpu, secs);
    }
}
