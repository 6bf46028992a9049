//! Deterministic simulation of the charging engine with injected faults.
//!
//! One seed drives everything: simulated time (including jumps), simulated
//! clients (new requests, retransmissions, replies dropped, duplicated or
//! reordered), tariff changes, checkpoints, and a simulated disk whose
//! unsynced records are lost on a crash (a torn record at the tail is the
//! same as a lost one: the WAL cuts it) and whose syncs can fail (a failed
//! fsync is treated as a crash, as the real journal stops acknowledging).
//! The engine runs the real code: `Engine::apply`, `checkpoint`, `restore`
//! and `replay`, exactly as the journal drives them.
//!
//! After every step it checks: the ledger's invariants (available never
//! below its limit, holds consistent); conservation per unit (balances move
//! only with an audit entry); every acknowledged answer survives a crash
//! (after recovery the state equals the live state at the recovered log
//! position, and retransmissions get the acknowledged answer); a
//! retransmission never moves money; sweeps never expire a reservation
//! early. A failure names its seed and the step that failed; rerunning
//! with `--steps` set to that step reproduces it exactly.

use reckon_balances::codec::{Digest, Sink};
use reckon_balances::journal::Machine;
use reckon_balances::machine::{LedgerMachine, LedgerRequest};
use reckon_balances::{
    AccountId, Amount, Command, CreditKind, OpId, Operation, ServiceId, Timestamp, Unit,
};
use reckon_charging::engine::{
    Caller, CreditControlRequest, Engine, EngineConfig, EngineRequest, EngineResponse, EventAction,
    Price, RequestType, ServicePolicy, ServiceRequest,
};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A bug the simulator can plant, to prove it catches it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Acknowledge a request before its log record is synced.
    ReplyBeforeSync,
}

/// Settings of one simulation run.
#[derive(Clone, Debug)]
pub struct DstConfig {
    /// The seed; the same seed gives the same run.
    pub seed: u64,
    /// Steps to run.
    pub steps: u64,
    /// A planted bug, or none.
    pub mutation: Option<Mutation>,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DstReport {
    /// Steps run.
    pub steps: u64,
    /// Requests applied (new and retransmitted).
    pub requests: u64,
    /// Answers delivered to clients.
    pub acknowledged: u64,
    /// Crash-restarts.
    pub crashes: u64,
    /// Checkpoints taken.
    pub checkpoints: u64,
    /// A digest of every delivered answer and the final state: equal for
    /// equal seeds.
    pub run_digest: u64,
}

/// A broken property, with what reproduces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// The step at which the check failed; `--steps` this value reproduces it.
    pub step: u64,
    /// What was wrong.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "violation at step {}: {}\nreproduce: reckon-sim dst --seed {} --steps {}",
            self.step, self.what, self.seed, self.step
        )
    }
}

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The disk: records in log order; a prefix is synced; a snapshot (the
/// checkpoint's key/values) covers a prefix of the synced records.
#[derive(Default)]
struct SimDisk {
    records: Vec<(Timestamp, Vec<u8>)>,
    synced: usize,
    snapshot: BTreeMap<Vec<u8>, Vec<u8>>,
    snapshot_len: usize,
}

/// A request a client has sent and the answer it is owed.
#[derive(Clone, Debug)]
struct Exchange {
    request: EngineRequest,
    /// When the server first applied it: the idempotency windows count from here.
    first_applied: Option<Timestamp>,
    /// The answer the client received, once it did.
    acknowledged: Option<(Timestamp, EngineResponse)>,
}

/// A charging session as a client drives it.
#[derive(Clone, Debug)]
struct ClientSession {
    id: Arc<str>,
    account: AccountId,
    next_number: u32,
    /// Index into `exchanges` of the request waiting for an answer.
    waiting: Option<usize>,
    done: bool,
}

struct Pending {
    exchange: usize,
    response: EngineResponse,
    needs_len: usize,
}

const T0: u64 = 1_800_000_000_000;
const ACCOUNTS: u64 = 4;
const SERVICE: ServiceId = ServiceId(10);
/// How long retransmissions are guaranteed the acknowledged answer here: a
/// margin inside the engine's and ledger's 10-minute windows.
const RETRANSMIT_WINDOW_MS: u64 = 5 * 60 * 1000;

fn config(price_nanos: i64) -> EngineConfig {
    EngineConfig {
        prices: vec![Price {
            service: Some(SERVICE),
            unit: Unit::TOKENS_OUT,
            charge_unit: Unit::USD,
            per_unit: Decimal::new(price_nanos, 9),
        }],
        policies: vec![ServicePolicy {
            service: None,
            default_unit: Unit::TOKENS_OUT,
            default_grant: Decimal::from(1000),
            max_grant: Decimal::from(8192),
            validity_s: 30,
        }],
        supervision_grace_s: 10,
        ..EngineConfig::default()
    }
}

struct World {
    cfg: DstConfig,
    rng: Rng,
    now: Timestamp,
    engine: Engine,
    disk: SimDisk,
    exchanges: Vec<Exchange>,
    sessions: Vec<ClientSession>,
    pending: Vec<Pending>,
    digest_at_len: HashMap<usize, (Timestamp, [u64; 4])>,
    totals: BTreeMap<Unit, i128>,
    next_op: u128,
    next_session: u64,
    report: DstReport,
    run: Digest,
    step: u64,
}

impl World {
    fn new(cfg: DstConfig) -> World {
        let rng = Rng(cfg.seed ^ 0x5151_5eed);
        World {
            cfg,
            rng,
            now: Timestamp(T0),
            engine: Engine::new(LedgerMachine::default(), EngineConfig::default()),
            disk: SimDisk::default(),
            exchanges: Vec::new(),
            sessions: Vec::new(),
            pending: Vec::new(),
            digest_at_len: HashMap::new(),
            totals: BTreeMap::new(),
            next_op: 1,
            next_session: 1,
            report: DstReport {
                steps: 0,
                requests: 0,
                acknowledged: 0,
                crashes: 0,
                checkpoints: 0,
                run_digest: 0,
            },
            run: Digest::default(),
            step: 0,
        }
    }

    fn fail(&self, what: impl Into<String>) -> Violation {
        Violation {
            seed: self.cfg.seed,
            step: self.step,
            what: what.into(),
        }
    }

    /// Applies a request as the journal's writer would, logging its record.
    fn apply(&mut self, request: EngineRequest) -> EngineResponse {
        let mut log = Vec::new();
        let response = self.engine.apply(self.now, request, &mut log);
        if !log.is_empty() {
            self.disk.records.push((self.now, log));
        }
        self.report.requests += 1;
        response
    }

    fn send(&mut self, exchange: usize) {
        let request = self.exchanges[exchange].request.clone();
        let now = self.now;
        self.exchanges[exchange].first_applied.get_or_insert(now);
        let response = self.apply(request);
        if self.cfg.mutation == Some(Mutation::ReplyBeforeSync) {
            self.deliver(exchange, response);
        } else {
            self.pending.push(Pending {
                exchange,
                response,
                needs_len: self.disk.records.len(),
            });
        }
    }

    fn new_exchange(&mut self, request: EngineRequest) -> usize {
        self.exchanges.push(Exchange {
            request,
            first_applied: None,
            acknowledged: None,
        });
        self.exchanges.len() - 1
    }

    fn admin(&mut self, command: Command) -> usize {
        self.next_op += 1;
        let op = Operation {
            op: OpId(self.next_op),
            command,
        };
        self.new_exchange(EngineRequest::Ledger(
            Caller::Admin,
            LedgerRequest::Apply(op),
        ))
    }

    fn deliver(&mut self, exchange: usize, response: EngineResponse) {
        self.run.put(format!("{exchange}:{response:?};").as_bytes());
        let slot = &mut self.exchanges[exchange];
        if slot.acknowledged.is_none() {
            slot.acknowledged = Some((self.now, response));
            self.report.acknowledged += 1;
        }
        for s in self.sessions.iter_mut() {
            if s.waiting == Some(exchange) {
                s.waiting = None;
            }
        }
    }

    /// Makes every record durable and delivers the replies now due; false
    /// when the fsync failed (and the process restarted instead).
    fn sync(&mut self) -> Result<bool, Violation> {
        if self.rng.chance(2) {
            // fsync failed: the journal stops; the process restarts.
            self.crash("fsync error")?;
            return Ok(false);
        }
        self.disk.synced = self.disk.records.len();
        let horizon = self.now;
        self.digest_at_len.insert(
            self.disk.synced,
            (horizon, self.engine.digest_parts_at(horizon)),
        );
        // Replies of synced requests go out, some lost, some twice, in
        // shuffled order.
        let mut ready: Vec<Pending> = Vec::new();
        let mut waiting = Vec::new();
        for p in self.pending.drain(..) {
            if p.needs_len <= self.disk.synced {
                ready.push(p);
            } else {
                waiting.push(p);
            }
        }
        self.pending = waiting;
        for i in (1..ready.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            ready.swap(i, j);
        }
        for p in ready {
            if self.rng.chance(10) {
                continue; // lost on the way: the client will retransmit
            }
            let twice = self.rng.chance(5);
            self.deliver(p.exchange, p.response.clone());
            if twice {
                self.deliver(p.exchange, p.response);
            }
        }
        Ok(true)
    }

    fn checkpoint(&mut self) -> Result<(), Violation> {
        // The journal writes a checkpoint only after the records it covers
        // are durable.
        let writes = self.engine.checkpoint(self.now);
        if !self.sync()? {
            return Ok(()); // the sync failed: this checkpoint never lands
        }
        for (k, v) in writes {
            match v {
                Some(v) => self.disk.snapshot.insert(k, v),
                None => self.disk.snapshot.remove(&k),
            };
        }
        self.disk.snapshot_len = self.disk.synced;
        self.report.checkpoints += 1;
        Ok(())
    }

    fn crash(&mut self, why: &str) -> Result<(), Violation> {
        self.report.crashes += 1;
        self.run.put(format!("crash:{why};").as_bytes());
        self.disk.records.truncate(self.disk.synced);
        self.pending.clear();
        let mut pairs = self.disk.snapshot.iter().map(|(k, v)| {
            (
                sled::IVec::from(k.as_slice()),
                sled::IVec::from(v.as_slice()),
            )
        });
        let mut engine =
            Engine::restore(&mut pairs).map_err(|e| self.fail(format!("restore: {e}")))?;
        for (at, payload) in &self.disk.records[self.disk.snapshot_len..] {
            engine
                .replay(*at, &payload[..])
                .map_err(|e| self.fail(format!("replay: {e}")))?;
        }
        engine
            .check()
            .map_err(|e| self.fail(format!("recovered state: {e}")))?;
        if let Some((horizon, expected)) = self.digest_at_len.get(&self.disk.synced).copied() {
            let got = engine.digest_parts_at(horizon);
            if expected != got {
                let parts = ["ledger", "sessions", "answers", "configuration"];
                let differing: Vec<&str> = (0..4)
                    .filter(|i| expected[*i] != got[*i])
                    .map(|i| parts[i])
                    .collect();
                // Locate the fault: replaying the whole log from genesis
                // (no snapshot) tells a snapshot bug from a replay one.
                let mut genesis = Engine::new(LedgerMachine::default(), EngineConfig::default());
                for (at, payload) in &self.disk.records {
                    let _ = genesis.replay(*at, &payload[..]);
                }
                let from_genesis = genesis.digest_parts_at(horizon) == expected;
                return Err(self.fail(format!(
                    "recovered state differs from the live state at log position {} (in: {}; snapshot at {}; replay from genesis {})",
                    self.disk.synced,
                    differing.join(", "),
                    self.disk.snapshot_len,
                    if from_genesis { "matches" } else { "differs too" }
                )));
            }
        }
        self.engine = engine;
        let _ = self.engine.ledger.ledger.drain_audit();
        self.totals = self.current_totals();
        // Clients whose requests got no answer will retransmit them.
        for s in self.sessions.iter_mut() {
            if let Some(w) = s.waiting {
                if self.exchanges[w].acknowledged.is_some() {
                    s.waiting = None;
                }
            }
        }
        self.check_acknowledged_survived()
    }

    /// Every acknowledged answer is still what a retransmission gets.
    fn check_acknowledged_survived(&mut self) -> Result<(), Violation> {
        let recent: Vec<usize> = (0..self.exchanges.len())
            .filter(|i| self.within_window(*i))
            .collect();
        for i in recent {
            self.retransmit_acknowledged(i)?;
        }
        Ok(())
    }

    /// Acknowledged, and first applied recently enough that every window
    /// still remembers it.
    fn within_window(&self, i: usize) -> bool {
        let e = &self.exchanges[i];
        e.acknowledged.is_some()
            && e.first_applied
                .is_some_and(|at| at.plus_ms(RETRANSMIT_WINDOW_MS) > self.now)
    }

    fn current_totals(&self) -> BTreeMap<Unit, i128> {
        self.engine
            .ledger
            .ledger
            .totals()
            .into_iter()
            .map(|(u, a)| (u, a.nanos()))
            .collect()
    }

    fn retransmit_acknowledged(&mut self, i: usize) -> Result<(), Violation> {
        let Some((_, first)) = self.exchanges[i].acknowledged.clone() else {
            return Ok(());
        };
        let before = (
            self.current_totals(),
            self.engine.ledger.ledger.reservation_count(),
        );
        let request = self.exchanges[i].request.clone();
        let again = self.apply(request);
        let after = (
            self.current_totals(),
            self.engine.ledger.ledger.reservation_count(),
        );
        if again != first {
            return Err(self.fail(format!(
                "a retransmission of acknowledged request {i} got {again:?}, the client had {first:?}"
            )));
        }
        if before != after {
            return Err(self.fail(format!(
                "a retransmission of request {i} moved money: {:?} answered {again:?}; before {before:?} after {after:?}",
                self.exchanges[i].request
            )));
        }
        Ok(())
    }

    fn setup(&mut self) -> Result<(), Violation> {
        let c = self.apply(EngineRequest::Configure(config(20_000)));
        if c != EngineResponse::Configured {
            return Err(self.fail("configure refused"));
        }
        for a in 1..=ACCOUNTS {
            let e = self.admin(Command::CreateAccount {
                account: AccountId(a),
                parent: None,
                draws_on_parent: false,
            });
            self.send(e);
            let e = self.admin(Command::Credit {
                account: AccountId(a),
                unit: Unit::USD,
                amount: Amount::from_units(1),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: "dst".into(),
            });
            self.send(e);
        }
        self.sync()?;
        let _ = self.engine.ledger.ledger.drain_audit();
        self.totals = self.current_totals();
        Ok(())
    }

    fn ccr(
        &self,
        s: &ClientSession,
        kind: RequestType,
        requested: &str,
        used: &str,
    ) -> EngineRequest {
        let q = |v: &str| {
            if v.is_empty() {
                Vec::new()
            } else {
                vec![(Unit::TOKENS_OUT, v.parse().unwrap_or_default())]
            }
        };
        EngineRequest::CreditControl(
            Caller::Admin,
            CreditControlRequest {
                session_id: s.id.clone(),
                request_type: kind,
                request_number: s.next_number,
                account: s.account,
                timestamp_ms: 0,
                event_action: if kind == RequestType::Event {
                    EventAction::DirectDebit
                } else {
                    EventAction::None
                },
                services: vec![ServiceRequest {
                    service: SERVICE,
                    requested: q(requested),
                    used: q(used),
                }],
            },
        )
    }

    /// One client action.
    fn client_step(&mut self) {
        let roll = self.rng.below(100);
        if roll < 25 || self.sessions.is_empty() {
            // A new session (or event).
            let account = AccountId(1 + self.rng.below(ACCOUNTS));
            let id: Arc<str> = Arc::from(format!("s{}", self.next_session));
            self.next_session += 1;
            let event = self.rng.chance(30);
            let s = ClientSession {
                id,
                account,
                next_number: 0,
                waiting: None,
                done: false,
            };
            let request = if event {
                let used = (1 + self.rng.below(5000)).to_string();
                self.ccr(&s, RequestType::Event, &used, "")
            } else {
                let want = (1 + self.rng.below(8192)).to_string();
                self.ccr(&s, RequestType::Initial, &want, "")
            };
            let e = self.new_exchange(request);
            let mut s = s;
            s.waiting = Some(e);
            s.done = event;
            self.sessions.push(s);
            self.send(e);
        } else if roll < 35 {
            // Top-ups arrive now and then.
            let account = AccountId(1 + self.rng.below(ACCOUNTS));
            let cents = 1 + self.rng.below(100) as i64;
            let e = self.admin(Command::Credit {
                account,
                unit: Unit::USD,
                amount: Amount::from_nanos(cents as i128 * 10_000_000),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: "dst top-up".into(),
            });
            self.send(e);
        } else {
            let i = self.rng.below(self.sessions.len() as u64) as usize;
            let s = self.sessions[i].clone();
            if let Some(w) = s.waiting {
                // No answer yet: retransmit (it may have been lost).
                if self.rng.chance(30) {
                    self.send(w);
                }
                return;
            }
            if s.done {
                // Occasionally retransmit a finished exchange: same answer,
                // no money moved (checked at once).
                return;
            }
            let silent = self.rng.chance(5);
            if silent {
                // The client vanishes; supervision must release its grant.
                self.sessions[i].done = true;
                return;
            }
            let used = self.rng.below(1200).to_string();
            let finish = self.rng.chance(35);
            let mut next = s.clone();
            next.next_number += 1;
            let request = if finish {
                self.ccr(&next, RequestType::Terminate, "", &used)
            } else {
                self.ccr(&next, RequestType::Update, "1000", &used)
            };
            let e = self.new_exchange(request);
            self.sessions[i].next_number = next.next_number;
            self.sessions[i].waiting = Some(e);
            self.sessions[i].done = finish;
            self.send(e);
        }
    }

    fn check(&mut self) -> Result<(), Violation> {
        self.engine
            .check()
            .map_err(|e| self.fail(format!("invariant: {e}")))?;
        // Conservation: balances move only with an audit entry.
        for entry in self.engine.ledger.ledger.drain_audit() {
            *self.totals.entry(entry.unit).or_default() += entry.delta.nanos();
        }
        let now_totals = self.current_totals();
        for (unit, total) in &now_totals {
            let expected = self.totals.get(unit).copied().unwrap_or(0);
            if *total != expected {
                return Err(self.fail(format!(
                    "{unit}: balances {total} but audit says {expected}"
                )));
            }
        }
        Ok(())
    }

    fn time_step(&mut self) -> Result<(), Violation> {
        let advance = if self.rng.chance(1) {
            3_600_000
        } else {
            self.rng.below(3_000)
        };
        self.now = self.now.plus_ms(advance);
        // Server-issued work, as the journal's writer does on its tick.
        for _ in 0..8 {
            let Some(due) = self.engine.due(self.now) else {
                break;
            };
            let open: Vec<_> = self.open_reservations();
            let _ = self.apply(due);
            let still: Vec<_> = self.open_reservations();
            for (id, expires) in &open {
                if *expires > self.now.0 && !still.iter().any(|(s, _)| s == id) {
                    // Only a sweep ran here (no client request): a vanished
                    // reservation not yet due means it expired early.
                    return Err(self.fail(format!(
                        "reservation {id} expired early (expires {expires})"
                    )));
                }
            }
        }
        Ok(())
    }

    fn open_reservations(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for a in 1..=ACCOUNTS {
            for r in self.engine.ledger.ledger.reservations_of(
                AccountId(a),
                reckon_balances::ReservationId(0),
                10_000,
            ) {
                out.push((r.id.0, r.expires_at.0));
            }
        }
        out
    }

    fn step_once(&mut self) -> Result<(), Violation> {
        match self.rng.below(100) {
            0..=54 => self.client_step(),
            55..=74 => {
                self.sync()?;
            }
            75..=84 => self.time_step()?,
            85..=88 => self.checkpoint()?,
            89..=91 => {
                // A tariff change, logged like any request.
                let price = 10_000 + self.rng.below(30_000) as i64;
                let _ = self.apply(EngineRequest::Configure(config(price)));
            }
            92..=94 => {
                // A retransmission of something acknowledged.
                if !self.exchanges.is_empty() {
                    let i = self.rng.below(self.exchanges.len() as u64) as usize;
                    if self.within_window(i) {
                        self.retransmit_acknowledged(i)?;
                    }
                }
            }
            _ => self.crash("crash")?,
        }
        self.check()
    }
}

/// Runs one simulation.
pub fn run(cfg: DstConfig) -> Result<DstReport, Violation> {
    let mut world = World::new(cfg.clone());
    world.setup()?;
    for step in 1..=cfg.steps {
        world.step = step;
        world.step_once()?;
    }
    world.report.steps = cfg.steps;
    world.run.u64(world.engine.state_digest());
    world.report.run_digest = world.run.clone().finish();
    Ok(world.report)
}
