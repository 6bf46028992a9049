//! Deterministic simulation of the charging engine with injected faults.
//!
//! One seed drives everything: simulated time (true time, and a server wall
//! clock with errors: steps forward and back that are clock errors, not
//! elapsed time), simulated clients of several organisations with their own
//! credentials (new requests, retransmissions, replies dropped, duplicated
//! or reordered), hostile clients (session ids colliding across
//! organisations, another tenant's requests replayed, refunds without a
//! debit, reused ids with other content), admin work (top-ups, caps on a
//! hierarchy, account closes with sessions open, tariff changes and rate
//! cards), checkpoints, and a simulated disk whose unsynced records are lost
//! on a crash and whose syncs can fail (a failed fsync is treated as a
//! crash, as the real journal stops acknowledging).
//!
//! The engine runs the real code: `Engine::apply`, `checkpoint`, `restore`
//! and `replay`, exactly as the journal drives them, with the journal's
//! own rule for the writer's time (`WriterClock`).
//!
//! After every step it checks: the ledger's invariants (available never
//! below its limit, holds consistent); conservation per unit (balances move
//! only with an audit entry); tenancy (every balance change caused by a
//! credit-control request lands in the organisation that sent it, and an
//! organisation naming another's account is answered as if it did not
//! exist); no money minted (refunds credited to a session never exceed what
//! it was debited); every acknowledged answer survives a crash (after
//! recovery the state equals the live state at the recovered log position,
//! and retransmissions get the acknowledged answer); a retransmission never
//! moves money; sweeps never expire a reservation early. A failure names
//! its seed and step and prints the command that reproduces it.

use reckon_balances::codec::{Digest, Sink};
use reckon_balances::journal::{Machine, WriterClock};
use reckon_balances::machine::{LedgerMachine, LedgerRequest, LedgerResponse};
use reckon_balances::{
    AccountId, Amount, AuditKind, Command, CreditKind, OpId, Operation, Period, ServiceId,
    Timestamp, Unit,
};
use reckon_charging::engine::{
    request_ref, result_code, Caller, CreditControlRequest, Engine, EngineConfig, EngineRequest,
    EngineResponse, EventAction, PlantedBug, Price, RequestType, ServicePolicy, ServiceRequest,
};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A bug the simulator can plant, to prove it catches it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Acknowledge a request before its log record is synced.
    ReplyBeforeSync,
    /// Look remembered answers up before authorising the caller.
    AnswersBeforeAuthorisation,
    /// Let an organisation refund without a recorded debit.
    RefundWithoutCharge,
    /// Change state during an incremental checkpoint without saving what
    /// the checkpoint must still write.
    CheckpointWithoutCopy,
}

impl Mutation {
    /// Every mutation, with the name `--mutation` takes.
    pub const ALL: [(Mutation, &'static str); 4] = [
        (Mutation::ReplyBeforeSync, "reply-before-sync"),
        (
            Mutation::AnswersBeforeAuthorisation,
            "answers-before-authorisation",
        ),
        (Mutation::RefundWithoutCharge, "refund-without-charge"),
        (Mutation::CheckpointWithoutCopy, "checkpoint-without-copy"),
    ];

    /// The mutation named `name`.
    pub fn parse(name: &str) -> Option<Mutation> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(m, _)| *m)
    }

    /// Its `--mutation` name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("?", |(_, n)| n)
    }

    fn planted(self) -> Option<PlantedBug> {
        match self {
            Mutation::ReplyBeforeSync => None,
            Mutation::AnswersBeforeAuthorisation => Some(PlantedBug::AnswersBeforeAuthorisation),
            Mutation::RefundWithoutCharge => Some(PlantedBug::RefundWithoutCharge),
            Mutation::CheckpointWithoutCopy => Some(PlantedBug::CheckpointWithoutCopy),
        }
    }
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
    /// Hostile requests sent (foreign replays, unbacked refunds, reused ids).
    pub hostile: u64,
    /// Steps of the server's wall clock (errors set or corrected).
    pub clock_steps: u64,
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
    /// The planted bug of the run, if any.
    pub mutation: Option<Mutation>,
    /// What was wrong.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "violation at step {}: {}\nreproduce: reckon-sim dst --seed {} --steps {}{}",
            self.step,
            self.what,
            self.seed,
            self.step,
            self.mutation
                .map(|m| format!(" --mutation {}", m.name()))
                .unwrap_or_default()
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
    /// The log segment as the real WAL frames it (write groups), and how
    /// much of it is durable: a write in flight at a power loss lands page
    /// by page in any order, and the real recovery code decides what stays.
    image: Vec<u8>,
    image_synced: usize,
    /// The durable records, shared with the engine's log reader.
    durable: Arc<parking_lot::RwLock<Vec<LogRecord>>>,
}

/// A log record as the simulated disk keeps it: its time and payload.
type LogRecord = (Timestamp, Vec<u8>);

impl SimDisk {
    /// A reader of the durable records, as the journal gives the engine.
    fn reader(&self) -> reckon_balances::journal::LogReader {
        let durable = self.durable.clone();
        Arc::new(move |lsn| {
            let index = usize::try_from(lsn).ok()?.checked_sub(1)?;
            durable.read().get(index).cloned()
        })
    }

    /// Makes the durable copy match `records[..synced]`.
    fn publish(&self) {
        let mut durable = self.durable.write();
        durable.truncate(self.synced);
        let have = durable.len();
        durable.extend_from_slice(&self.records[have..self.synced]);
    }
}

/// The simulated disk's page: small, so write groups span several and
/// land with holes.
const SIM_PAGE: usize = 64;

/// What a hostile request must be answered with.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// An ordinary request: any answer (checked by the general properties).
    Any,
    /// Another organisation's account: it must look absent.
    UserUnknown,
    /// A refund no debit covers.
    RefundNotCovered,
    /// A reused id with other content.
    IdReused,
}

/// A request a client has sent and the answer it is owed.
#[derive(Clone, Debug)]
struct Exchange {
    request: EngineRequest,
    /// When the server first applied it: the idempotency windows count from here.
    first_applied: Option<Timestamp>,
    /// The answer the client received, once it did.
    acknowledged: Option<(Timestamp, EngineResponse)>,
    expect: Expect,
}

/// A charging session (or event) as a client drives it.
#[derive(Clone, Debug)]
struct ClientSession {
    caller: Caller,
    id: Arc<str>,
    account: AccountId,
    next_number: u32,
    /// Whether the client stamps its requests (with true time).
    stamped: bool,
    /// Index into `exchanges` of the request waiting for an answer.
    waiting: Option<usize>,
    done: bool,
    /// An event whose debit may be refunded later.
    event: bool,
}

struct Pending {
    exchange: usize,
    response: EngineResponse,
    needs_len: usize,
}

const T0: u64 = 1_800_000_000_000;
/// Organisations (root accounts); each has keys `org + 1` and `org + 2`
/// drawing on it, the second under a cap.
const ORGS: [u64; 3] = [100, 200, 300];
const SERVICE: ServiceId = ServiceId(10);
/// How long retransmissions are guaranteed the acknowledged answer here: a
/// margin inside the engine's and ledger's 10-minute windows.
const RETRANSMIT_WINDOW_MS: u64 = 5 * 60 * 1000;
/// A server wall clock that goes wrong is off by this much.
const CLOCK_ERROR_MS: i64 = 3_600_000;

fn org_of(account: AccountId) -> AccountId {
    AccountId(account.0 / 100 * 100)
}

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
        answer_window_ms: 10 * 60 * 1000,
        // Small, so the cap's early forgetting is exercised too.
        answers_max: 2_000,
        ..EngineConfig::default()
    }
}

/// A rate card pricing the service's output tokens in USD, effective from
/// `from_ms`.
fn rate_card(version: u32, from_ms: u64, price: &str) -> String {
    let secs = from_ms / 1000;
    let from = reckon_charging::timefmt::format_ms(secs * 1000);
    format!(
        "card = \"dst\"\n[[versions]]\nversion = {version}\neffective_from = {from}\ncurrency = \"USD\"\ndecimals = 9\nrounding = \"up\"\n[[versions.services]]\nid = 10\nname = \"chat\"\n[[versions.services.rules]]\nname = \"out\"\nunit = \"tokens_out\"\nprice = {{ model = \"per_unit\", price = \"{price}\", per = 1000 }}\n"
    )
}

/// Money of one session in one unit: (organisation, session id, unit).
type FlowKey = (AccountId, Arc<str>, Unit);

struct World {
    cfg: DstConfig,
    rng: Rng,
    /// True time, and the server wall clock's error from it.
    real_ms: u64,
    wall_error_ms: i64,
    /// The writer's time, as the journal derives it from the wall clock.
    clock: WriterClock,
    now: Timestamp,
    engine: Engine,
    disk: SimDisk,
    exchanges: Vec<Exchange>,
    sessions: Vec<ClientSession>,
    pending: Vec<Pending>,
    /// The log length the checkpoint being encoded covers, if one is.
    checkpoint_covers: Option<usize>,
    digest_at_len: HashMap<usize, (Timestamp, [u64; 4])>,
    totals: BTreeMap<Unit, i128>,
    /// Which organisation sent the request an audit entry names, and the
    /// session it belongs to.
    refs: HashMap<OpId, (Caller, AccountId, Arc<str>)>,
    /// Per (organisation, session, unit): debited and refunded nanos.
    flows: HashMap<FlowKey, (i128, i128)>,
    /// Each change to `flows` with the log length it was made at, so a
    /// crash takes back those of records it lost.
    flow_log: Vec<(usize, FlowKey, i128, i128)>,
    next_op: u128,
    next_session: HashMap<u64, u64>,
    /// The rate card's versions so far: (effective from, price per 1K).
    card_versions: Vec<(u64, String)>,
    report: DstReport,
    run: Digest,
    step: u64,
}

impl World {
    fn new(cfg: DstConfig) -> World {
        let rng = Rng(cfg.seed ^ 0x5151_5eed);
        let mut engine = Engine::new(LedgerMachine::default(), EngineConfig::default());
        engine.plant(cfg.mutation.and_then(Mutation::planted));
        let disk = SimDisk {
            image: reckon_balances::wal::WalBatch::segment_header(reckon_balances::wal::Lsn(1))
                .to_vec(),
            image_synced: reckon_balances::wal::SEGMENT_HEADER_LEN,
            ..SimDisk::default()
        };
        engine.attach_log(disk.reader());
        World {
            cfg,
            rng,
            real_ms: T0,
            wall_error_ms: 0,
            clock: WriterClock::new(Timestamp(T0), T0),
            now: Timestamp(T0),
            engine,
            disk,
            exchanges: Vec::new(),
            sessions: Vec::new(),
            pending: Vec::new(),
            checkpoint_covers: None,
            digest_at_len: HashMap::new(),
            totals: BTreeMap::new(),
            refs: HashMap::new(),
            flows: HashMap::new(),
            flow_log: Vec::new(),
            next_op: 1,
            next_session: HashMap::new(),
            card_versions: Vec::new(),
            report: DstReport {
                steps: 0,
                requests: 0,
                acknowledged: 0,
                crashes: 0,
                checkpoints: 0,
                hostile: 0,
                clock_steps: 0,
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
            mutation: self.cfg.mutation,
            what: what.into(),
        }
    }

    fn wall(&self) -> Timestamp {
        Timestamp(self.real_ms.saturating_add_signed(self.wall_error_ms))
    }

    /// Applies a request as the journal's writer would, logging its record.
    fn apply(&mut self, request: EngineRequest) -> EngineResponse {
        let mut log = Vec::new();
        let lsn = self.disk.records.len() as u64 + 1;
        let response = self.engine.apply(self.now, lsn, request, &mut log);
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

    fn new_exchange(&mut self, request: EngineRequest, expect: Expect) -> usize {
        if let EngineRequest::CreditControl(caller, ccr) = &request {
            // The first sender of a request owns its reference: a hostile
            // copy naming the same account and ids is caught by its
            // expected answer instead.
            let org = org_of(ccr.account);
            self.refs
                .entry(request_ref(org, &ccr.session_id, ccr.request_number))
                .or_insert((*caller, org, ccr.session_id.clone()));
        }
        self.exchanges.push(Exchange {
            request,
            first_applied: None,
            acknowledged: None,
            expect,
        });
        self.exchanges.len() - 1
    }

    fn admin(&mut self, command: Command) -> usize {
        self.next_op += 1;
        let op = Operation {
            op: OpId(self.next_op),
            command,
        };
        self.new_exchange(
            EngineRequest::Ledger(Caller::Admin, LedgerRequest::Apply(op)),
            Expect::Any,
        )
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

    /// Checks hostile requests got the answer the rules demand.
    fn check_expectations(&self) -> Result<(), Violation> {
        for (i, e) in self.exchanges.iter().enumerate() {
            let Some((_, EngineResponse::CreditControl(a))) = &e.acknowledged else {
                continue;
            };
            let want = match e.expect {
                Expect::Any => continue,
                Expect::UserUnknown => result_code::USER_UNKNOWN,
                Expect::RefundNotCovered => result_code::REFUND_NOT_COVERED,
                Expect::IdReused => result_code::REQUEST_ID_REUSED,
            };
            // A request stamped outside the window is refused before its
            // content is looked at: also a refusal that changes nothing.
            let stale = a.result_code == result_code::REQUEST_TOO_OLD
                && e.expect == Expect::RefundNotCovered;
            if a.result_code != want && !stale {
                return Err(self.fail(format!(
                    "hostile request {i} ({:?}) was answered {a:?}, expected result code {want}: {:?}",
                    e.expect, e.request
                )));
            }
        }
        Ok(())
    }

    /// Makes every record durable and delivers the replies now due; false
    /// when the fsync failed (and the process restarted instead).
    fn sync(&mut self) -> Result<bool, Violation> {
        self.sync_or_fail(true)
    }

    fn sync_or_fail(&mut self, may_fail: bool) -> Result<bool, Violation> {
        let len = self.disk.records.len();
        let horizon = self.now;
        // The state this write would make durable, should it land whole.
        self.digest_at_len
            .insert(len, (horizon, self.engine.digest_parts_at(horizon)));
        if len > self.disk.synced {
            // One write group of the records since the last sync, framed as
            // the journal's sync thread frames it.
            let mut batch = reckon_balances::wal::WalBatch::new(reckon_balances::wal::Lsn(
                self.disk.synced as u64 + 1,
            ));
            for (at, payload) in &self.disk.records[self.disk.synced..] {
                let mut record = at.0.to_le_bytes().to_vec();
                record.extend_from_slice(payload);
                if batch.push(&record).is_err() {
                    return Err(self.fail("a log record beyond the WAL's limit"));
                }
            }
            // Compressed, as the journal writes it by default.
            self.disk
                .image
                .extend_from_slice(&batch.to_group_bytes(true));
        }
        if may_fail && self.rng.chance(2) {
            // The power went (or fsync failed) while the group was being
            // written: its pages land in any order, holes included; the real
            // recovery code decides what stays. Then the process restarts.
            self.lose_unsynced_pages()?;
            self.crash("power loss during fsync")?;
            return Ok(false);
        }
        self.disk.synced = len;
        self.disk.image_synced = self.disk.image.len();
        self.disk.publish();
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
        self.check_expectations()?;
        Ok(true)
    }

    /// A power loss during a write: each page of the unsynced part of the
    /// log image lands or not; recovery keeps what `wal::check_segment`
    /// keeps, which must be the whole in-flight group or none of it.
    fn lose_unsynced_pages(&mut self) -> Result<(), Violation> {
        let rng = &mut self.rng;
        let mut disk = reckon_balances::wal::after_power_loss(
            &self.disk.image,
            self.disk.image_synced,
            SIM_PAGE,
            |_| rng.chance(50),
        );
        let checked = reckon_balances::wal::check_segment(
            std::path::Path::new("sim.log"),
            &disk,
            1,
            reckon_balances::wal::DEFAULT_RECORD_BYTES_MAX,
            true,
        )
        .map_err(|e| {
            self.fail(format!(
                "the log refused to recover after a power loss: {e}"
            ))
        })?;
        let kept = (checked.next_lsn - 1) as usize;
        if kept != self.disk.synced && kept != self.disk.records.len() {
            return Err(self.fail(format!(
                "a power loss kept part of a write group: {kept} records, synced {}, written {}",
                self.disk.synced,
                self.disk.records.len()
            )));
        }
        self.run.put(format!("landed:{kept};").as_bytes());
        disk.truncate(checked.valid_len);
        self.disk.image = disk;
        self.disk.image_synced = self.disk.image.len();
        self.disk.synced = kept;
        self.disk.publish();
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), Violation> {
        // As the journal's writer does: a checkpoint begins at a log
        // position and is encoded a few entries at a time while requests
        // go on changing the state it must write.
        let covers = match self.checkpoint_covers {
            Some(covers) => covers,
            None => {
                self.engine.checkpoint_begin(self.now);
                // The checkpoint holds the state after these records as of
                // now: what expired since they were written (op ids,
                // answers) is not in it, so compare a restore from it with
                // the live state at this later horizon.
                let len = self.disk.records.len();
                self.digest_at_len
                    .insert(len, (self.now, self.engine.digest_parts_at(self.now)));
                self.checkpoint_covers = Some(len);
                self.disk.records.len()
            }
        };
        let budget = 1 + self.rng.below(32) as usize;
        let Some(writes) = self.engine.checkpoint_step(budget) else {
            return Ok(());
        };
        self.checkpoint_covers = None;
        // It lands only after the records it covers are durable.
        if self.disk.synced < covers && !self.sync()? {
            return Ok(()); // the sync failed: this checkpoint never lands
        }
        for (k, v) in writes {
            match v {
                Some(v) => self.disk.snapshot.insert(k, v),
                None => self.disk.snapshot.remove(&k),
            };
        }
        self.disk.snapshot_len = covers;
        self.report.checkpoints += 1;
        Ok(())
    }

    fn crash(&mut self, why: &str) -> Result<(), Violation> {
        self.report.crashes += 1;
        self.run.put(format!("crash:{why};").as_bytes());
        self.disk.records.truncate(self.disk.synced);
        self.disk.publish();
        self.pending.clear();
        // A checkpoint being encoded dies with the process.
        self.checkpoint_covers = None;
        // Money moved by records the crash lost moved back.
        while let Some((at, key, debit, refund)) = self.flow_log.last().cloned() {
            if at <= self.disk.synced {
                break;
            }
            self.flow_log.pop();
            if let Some(flow) = self.flows.get_mut(&key) {
                flow.0 -= debit;
                flow.1 -= refund;
            }
        }
        let mut pairs = self
            .disk
            .snapshot
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()));
        let mut engine =
            Engine::restore(&mut pairs).map_err(|e| self.fail(format!("restore: {e}")))?;
        engine.attach_log(self.disk.reader());
        // As the journal recovers: records the snapshot covers are recalled
        // (where the answers are), the rest replayed.
        for (i, (at, payload)) in self.disk.records[..self.disk.snapshot_len]
            .iter()
            .enumerate()
        {
            engine
                .recall(*at, i as u64 + 1, &payload[..])
                .map_err(|e| self.fail(format!("recall: {e}")))?;
        }
        let mut last = Timestamp(0);
        for (i, (at, payload)) in self
            .disk
            .records
            .iter()
            .enumerate()
            .skip(self.disk.snapshot_len)
        {
            engine
                .replay(*at, i as u64 + 1, &payload[..])
                .map_err(|e| self.fail(format!("replay: {e}")))?;
            last = last.max(*at);
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
                genesis.attach_log(self.disk.reader());
                for (i, (at, payload)) in self.disk.records.iter().enumerate() {
                    let _ = genesis.replay(*at, i as u64 + 1, &payload[..]);
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
        engine.plant(self.cfg.mutation.and_then(Mutation::planted));
        self.engine = engine;
        let _ = self.engine.ledger.ledger.drain_audit();
        self.totals = self.current_totals();
        // The restarted writer starts at its wall clock, or at the last
        // logged record's time if the wall clock is behind it.
        let start = self.wall().max(last).max(self.now);
        self.clock = WriterClock::new(start, self.real_ms);
        self.now = start;
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

    /// Acknowledged with an answer the server remembers, and first applied
    /// recently enough that every window still remembers it.
    fn within_window(&self, i: usize) -> bool {
        let e = &self.exchanges[i];
        let remembered = match &e.acknowledged {
            Some((_, EngineResponse::CreditControl(a))) => {
                e.expect == Expect::Any
                    && matches!(
                        a.result_code,
                        result_code::SUCCESS
                            | result_code::CREDIT_LIMIT_REACHED
                            | result_code::END_USER_SERVICE_DENIED
                            | result_code::RATING_FAILED
                            | result_code::REFUND_NOT_COVERED
                    )
                    && !matches!(
                        &e.request,
                        EngineRequest::CreditControl(_, c)
                            if matches!(c.event_action, EventAction::CheckBalance | EventAction::PriceEnquiry)
                    )
            }
            Some((_, EngineResponse::Ledger(_))) => true,
            _ => false,
        };
        remembered
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

    fn money(&self) -> (BTreeMap<Unit, i128>, usize) {
        (
            self.current_totals(),
            self.engine.ledger.ledger.reservation_count(),
        )
    }

    fn retransmit_acknowledged(&mut self, i: usize) -> Result<(), Violation> {
        let Some((_, first)) = self.exchanges[i].acknowledged.clone() else {
            return Ok(());
        };
        let before = self.money();
        let request = self.exchanges[i].request.clone();
        let again = self.apply(request);
        let after = self.money();
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
            return Err(self.fail(format!("configure refused: {c:?}")));
        }
        for org in ORGS {
            for (account, parent) in [
                (org, None),
                (org + 1, Some(AccountId(org))),
                (org + 2, Some(AccountId(org))),
            ] {
                let e = self.admin(Command::CreateAccount {
                    account: AccountId(account),
                    parent,
                    draws_on_parent: parent.is_some(),
                });
                self.send(e);
            }
            let e = self.admin(Command::Credit {
                account: AccountId(org),
                unit: Unit::USD,
                amount: Amount::from_units(1),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: "dst".into(),
            });
            self.send(e);
            // The second key spends at most 0.2 USD (held + debited).
            let e = self.admin(Command::SetLimit {
                account: AccountId(org + 2),
                unit: Unit::USD,
                cap: Some(Amount::from_nanos(200_000_000)),
                period: Period::Lifetime,
                soft: false,
                alerts: Vec::new(),
            });
            self.send(e);
        }
        // The organisations exist before any client speaks.
        self.sync_or_fail(false)?;
        let _ = self.engine.ledger.ledger.drain_audit();
        self.totals = self.current_totals();
        Ok(())
    }

    fn ccr(
        &self,
        s: &ClientSession,
        kind: RequestType,
        action: EventAction,
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
            s.caller,
            CreditControlRequest {
                session_id: s.id.clone(),
                request_type: kind,
                request_number: s.next_number,
                account: s.account,
                timestamp_ms: if s.stamped { self.real_ms } else { 0 },
                event_action: action,
                services: vec![ServiceRequest {
                    service: SERVICE,
                    requested: q(requested),
                    used: q(used),
                    report_only: false,
                }],
                attributes: Vec::new(),
            },
        )
    }

    fn new_session_id(&mut self, org: u64) -> Arc<str> {
        // Each organisation counts its own ids, so ids collide across
        // organisations by construction.
        let n = self.next_session.entry(org).or_insert(0);
        *n += 1;
        Arc::from(format!("s{n}"))
    }

    /// One client action.
    fn client_step(&mut self) -> Result<(), Violation> {
        let roll = self.rng.below(100);
        if roll < 22 || self.sessions.is_empty() {
            // A new session (or event) by an organisation on its own key.
            let org = ORGS[self.rng.below(ORGS.len() as u64) as usize];
            let account = AccountId(org + 1 + self.rng.below(2));
            let id = self.new_session_id(org);
            let event = self.rng.chance(30);
            let s = ClientSession {
                caller: Caller::Org(AccountId(org)),
                id,
                account,
                next_number: 0,
                stamped: self.rng.chance(50),
                waiting: None,
                done: false,
                event,
            };
            let request = if event {
                let used = (1 + self.rng.below(5000)).to_string();
                self.ccr(&s, RequestType::Event, EventAction::DirectDebit, &used, "")
            } else {
                let want = (1 + self.rng.below(8192)).to_string();
                self.ccr(&s, RequestType::Initial, EventAction::None, &want, "")
            };
            let e = self.new_exchange(request, Expect::Any);
            let mut s = s;
            s.waiting = Some(e);
            s.done = event;
            self.sessions.push(s);
            self.send(e);
        } else if roll < 30 {
            // Top-ups arrive now and then.
            let org = ORGS[self.rng.below(ORGS.len() as u64) as usize];
            let cents = 1 + self.rng.below(100) as i64;
            let e = self.admin(Command::Credit {
                account: AccountId(org),
                unit: Unit::USD,
                amount: Amount::from_nanos(cents as i128 * 10_000_000),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: "dst top-up".into(),
            });
            self.send(e);
        } else if roll < 40 {
            self.hostile_step();
        } else if roll < 43 {
            self.admin_step()?;
        } else {
            let i = self.rng.below(self.sessions.len() as u64) as usize;
            let s = self.sessions[i].clone();
            if let Some(w) = s.waiting {
                // No answer yet: retransmit (it may have been lost).
                if self.rng.chance(30) {
                    self.send(w);
                }
                return Ok(());
            }
            if s.done {
                // An event that debited: now and then refund part of it,
                // as its organisation may.
                if s.event && self.rng.chance(10) {
                    let mut next = s.clone();
                    next.next_number += 1;
                    let units = (1 + self.rng.below(3000)).to_string();
                    let request =
                        self.ccr(&next, RequestType::Event, EventAction::Refund, &units, "");
                    let e = self.new_exchange(request, Expect::Any);
                    self.sessions[i].next_number = next.next_number;
                    self.sessions[i].waiting = Some(e);
                    self.send(e);
                }
                return Ok(());
            }
            let silent = self.rng.chance(5);
            if silent {
                // The client vanishes; supervision must release its grant.
                self.sessions[i].done = true;
                return Ok(());
            }
            let used = self.rng.below(1200).to_string();
            let finish = self.rng.chance(35);
            let mut next = s.clone();
            next.next_number += 1;
            let request = if finish {
                self.ccr(&next, RequestType::Terminate, EventAction::None, "", &used)
            } else {
                self.ccr(&next, RequestType::Update, EventAction::None, "1000", &used)
            };
            let e = self.new_exchange(request, Expect::Any);
            self.sessions[i].next_number = next.next_number;
            self.sessions[i].waiting = Some(e);
            self.sessions[i].done = finish;
            self.send(e);
        }
        Ok(())
    }

    /// A hostile or careless request, answered as the rules demand.
    fn hostile_step(&mut self) {
        self.report.hostile += 1;
        let org = ORGS[self.rng.below(ORGS.len() as u64) as usize];
        let caller = Caller::Org(AccountId(org));
        match self.rng.below(3) {
            0 => {
                // Replay another organisation's request exactly, under its
                // own credential: the account must look absent.
                let foreign: Vec<usize> = (0..self.exchanges.len())
                    .filter(|i| {
                        matches!(
                            &self.exchanges[*i].request,
                            EngineRequest::CreditControl(Caller::Org(o), c)
                                if o.0 != org && org_of(c.account).0 != org
                        )
                    })
                    .collect();
                if foreign.is_empty() {
                    return;
                }
                // Recent ones are the interesting ones: their answers are
                // remembered.
                let pick = foreign
                    [foreign.len() - 1 - self.rng.below(foreign.len().min(20) as u64) as usize];
                let EngineRequest::CreditControl(_, ccr) = self.exchanges[pick].request.clone()
                else {
                    return;
                };
                let e = self.new_exchange(
                    EngineRequest::CreditControl(caller, ccr),
                    Expect::UserUnknown,
                );
                self.send(e);
            }
            1 => {
                // A refund with no debit behind it.
                let id = self.new_session_id(org);
                let s = ClientSession {
                    caller,
                    id,
                    account: AccountId(org + 1),
                    next_number: 0,
                    stamped: true,
                    waiting: None,
                    done: true,
                    event: false,
                };
                let units = (1 + self.rng.below(100_000)).to_string();
                let request = self.ccr(&s, RequestType::Event, EventAction::Refund, &units, "");
                let e = self.new_exchange(request, Expect::RefundNotCovered);
                self.send(e);
            }
            _ => {
                // Reuse an id of this organisation's with other content:
                // a request acknowledged SUCCESS, recent enough to be
                // remembered.
                let own: Vec<usize> = (0..self.exchanges.len())
                    .filter(|i| {
                        let e = &self.exchanges[*i];
                        matches!(&e.request, EngineRequest::CreditControl(Caller::Org(o), c)
                            if o.0 == org && c.event_action != EventAction::CheckBalance)
                            && matches!(&e.acknowledged,
                                Some((_, EngineResponse::CreditControl(a))) if a.result_code == result_code::SUCCESS)
                            && e.expect == Expect::Any
                            && e.first_applied.is_some_and(|at| at.plus_ms(RETRANSMIT_WINDOW_MS) > self.now)
                    })
                    .collect();
                if own.is_empty() {
                    return;
                }
                let pick = own[self.rng.below(own.len() as u64) as usize];
                let EngineRequest::CreditControl(c, mut ccr) = self.exchanges[pick].request.clone()
                else {
                    return;
                };
                let extra = Decimal::from(1 + self.rng.below(9));
                let service = &mut ccr.services[0];
                let list = if service.used.is_empty() {
                    &mut service.requested
                } else {
                    &mut service.used
                };
                match list.first_mut() {
                    Some((_, q)) => *q += extra,
                    None => list.push((Unit::TOKENS_OUT, extra)),
                }
                let e = self.new_exchange(EngineRequest::CreditControl(c, ccr), Expect::IdReused);
                self.send(e);
            }
        }
    }

    /// Admin work on the hierarchy: caps, closes with sessions open, rate
    /// cards.
    fn admin_step(&mut self) -> Result<(), Violation> {
        match self.rng.below(3) {
            0 => {
                // Close a key account. Refused while it (or an account
                // below it) has a reservation open; checked at once.
                let org = ORGS[self.rng.below(ORGS.len() as u64) as usize];
                let account = AccountId(org + 1 + self.rng.below(2));
                let open = !self
                    .engine
                    .ledger
                    .ledger
                    .reservations_of(account, reckon_balances::ReservationId(0), 1)
                    .is_empty();
                let e = self.admin(Command::SetStatus {
                    account,
                    status: reckon_balances::AccountStatus::Closed,
                });
                let request = self.exchanges[e].request.clone();
                let response = self.apply(request);
                self.exchanges[e].first_applied = Some(self.now);
                self.pending.push(Pending {
                    exchange: e,
                    response: response.clone(),
                    needs_len: self.disk.records.len(),
                });
                if open
                    && matches!(
                        response,
                        EngineResponse::Ledger(LedgerResponse::Applied(Ok(_)))
                    )
                {
                    return Err(self.fail(format!(
                        "account {account:?} was closed with a reservation open"
                    )));
                }
            }
            1 => {
                let org = ORGS[self.rng.below(ORGS.len() as u64) as usize];
                let cap = self.rng.below(400_000_000) as i128;
                // Budgets that start over every few seconds, so periods
                // end under open reservations; a soft one now and then.
                let period = match self.rng.below(4) {
                    0 => Period::Lifetime,
                    1 => Period::calendar_month(0),
                    _ => Period::Fixed {
                        anchor: self.now,
                        length_ms: 60_000 + self.rng.below(60_000),
                    },
                };
                let soft = self.rng.below(4) == 0;
                let e = self.admin(Command::SetLimit {
                    account: AccountId(org + 2),
                    unit: Unit::USD,
                    cap: Some(Amount::from_nanos(cap)),
                    period,
                    soft,
                    alerts: Vec::new(),
                });
                self.send(e);
            }
            _ => {
                // A rate card version effective soon (a scheduled tariff
                // change, priced from the card once it applies); earlier
                // versions are sent again unchanged, as a card file is.
                let last = self.card_versions.last().map_or(0, |(f, _)| *f);
                let from = (self.now.0.max(last + 1000) / 1000 + 1 + self.rng.below(60)) * 1000;
                let price = format!("0.0{}", 1 + self.rng.below(40));
                let mut versions = self.card_versions.clone();
                versions.push((from, price));
                let mut text = String::from("card = \"dst\"\n");
                for (v, (at, price)) in versions.iter().enumerate() {
                    text.push_str(
                        &rate_card(v as u32 + 1, *at, price).replace("card = \"dst\"\n", ""),
                    );
                }
                self.next_op += 1;
                let e = self.new_exchange(
                    EngineRequest::ApplyRateCard {
                        caller: Caller::Admin,
                        op: self.next_op,
                        name: Arc::from("dst.toml"),
                        text: Arc::from(text),
                    },
                    Expect::Any,
                );
                let request = self.exchanges[e].request.clone();
                self.exchanges[e].first_applied = Some(self.now);
                let response = self.apply(request);
                if matches!(
                    response,
                    EngineResponse::RateCard(
                        reckon_charging::engine::RateCardOutcome::Applied { .. }
                    )
                ) {
                    self.card_versions = versions;
                }
                self.pending.push(Pending {
                    exchange: e,
                    response,
                    needs_len: self.disk.records.len(),
                });
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), Violation> {
        self.engine
            .check()
            .map_err(|e| self.fail(format!("invariant: {e}")))?;
        // Conservation: balances move only with an audit entry. Tenancy:
        // a balance change caused by a credit-control request lands in the
        // organisation that sent it. Minting: a session's refunds never
        // exceed its debits.
        for entry in self.engine.ledger.ledger.drain_audit() {
            *self.totals.entry(entry.unit).or_default() += entry.delta.nanos();
            if entry.op.0 >> 64 == 0 {
                continue; // admin operations and server sweeps
            }
            let owner = self
                .engine
                .ledger
                .ledger
                .root_of(entry.account)
                .unwrap_or(entry.account);
            let Some((caller, org, session)) = self.refs.get(&entry.op).cloned() else {
                return Err(self.fail(format!(
                    "audit entry {entry:?} names a request no client sent"
                )));
            };
            if org != owner || matches!(caller, Caller::Org(o) if o != owner) {
                return Err(self.fail(format!(
                    "{caller:?} moved the money of organisation {owner:?}: {entry:?}"
                )));
            }
            let key = (org, session.clone(), entry.unit);
            let (debit, refund) = match entry.kind {
                AuditKind::Debit => (-entry.delta.nanos(), 0),
                AuditKind::Refund => (0, entry.delta.nanos()),
                _ => (0, 0),
            };
            self.flow_log
                .push((self.disk.records.len(), key.clone(), debit, refund));
            let flow = self.flows.entry(key).or_default();
            flow.0 += debit;
            flow.1 += refund;
            let (debited, refunded) = *flow;
            if refunded > debited {
                return Err(self.fail(format!(
                    "session {session} of {org:?} was refunded {refunded} nanos of {} but debited only {debited}",
                    entry.unit
                )));
            }
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
        self.check_expectations()
    }

    fn time_step(&mut self) -> Result<(), Violation> {
        if self.rng.chance(2) {
            // The server's wall clock goes wrong (NTP, a paused VM) or is
            // corrected: a clock error, not elapsed time.
            self.report.clock_steps += 1;
            self.wall_error_ms = if self.wall_error_ms == 0 {
                if self.rng.chance(50) {
                    CLOCK_ERROR_MS
                } else {
                    -CLOCK_ERROR_MS
                }
            } else {
                0
            };
        }
        self.real_ms += self.rng.below(3_000);
        let before = self.now;
        self.now = self.clock.advance(self.wall(), self.real_ms);
        if self.now < before || self.now.0 - before.0 > 2 * 3_000 + 1 {
            return Err(self.fail(format!(
                "the writer's time moved from {} to {}",
                before.0, self.now.0
            )));
        }
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
        for org in ORGS {
            for a in org..org + 3 {
                for r in self.engine.ledger.ledger.reservations_of(
                    AccountId(a),
                    reckon_balances::ReservationId(0),
                    10_000,
                ) {
                    out.push((r.id.0, r.expires_at.0));
                }
            }
        }
        out
    }

    fn step_once(&mut self) -> Result<(), Violation> {
        match self.rng.below(100) {
            0..=54 => self.client_step()?,
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
