//! The credit-control engine: sessions, grants, validity, final units and
//! result codes, on top of the ledger. Sans-IO: `apply(now, request)`.
//!
//! One charging session is keyed by its session id. Each (service, unit) of
//! a session holds at most one ledger reservation: the current grant. An
//! UPDATE or TERMINATE reporting used units commits their cost against that
//! reservation and releases the rest; an UPDATE asking for more then
//! reserves the next grant. Retransmissions (same session id and request
//! number) get the stored answer and change nothing.
//!
//! Pricing: the active rate card (applied through the log, so a replay
//! prices alike) prices every (service, unit) it has a rule for, with the
//! card's own rounding rules; usage under a grant is rated over the time
//! since the grant, so it splits across tariff changes. Otherwise the
//! configuration's fixed [`Price`] table maps (service, unit) to a price
//! per unit in a charge unit (e.g. USD per token), and a unit with no price
//! is drawn 1:1 from buckets of that unit (e.g. `gpu_seconds`). Rounding on
//! the fixed table: the cost of used units is rounded up to the ledger's
//! 10^-9 (never undercharge a fraction). Grants are whole units, as many as
//! the available credit buys.

use reckon_balances::codec::{DecodeError, Reader, Sink};
use reckon_balances::journal::{Machine, SnapshotPair};
use reckon_balances::machine::{LedgerMachine, LedgerRequest, LedgerResponse};
use reckon_balances::snapshot::SnapshotWrite;
use reckon_balances::{
    AccountId, Amount, Command, CreditKind, LedgerError, OpId, Operation, Outcome, ReservationId,
    ServiceId, Timestamp, Unit,
};
use rust_decimal::{Decimal, RoundingStrategy};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

mod answers;
mod codec;
mod credit_control;
mod events;
mod persist;
mod pricing;
mod ratecards;
mod sessions;
mod tenancy;
mod types;

use answers::request_digest;
pub use answers::{ANSWERS_MAX_DEFAULT, ANSWERS_MAX_LIMIT};
use codec::*;
use pricing::Rate;
use ratecards::RateFile;
pub use ratecards::{
    RateCardOutcome, RateCardSummary, RateCardVersionSummary, RATE_CARD_NAME_MAX,
    RATE_CARD_TEXT_MAX, RATE_FILES_MAX,
};
use sessions::{Grant, Session};
pub use types::*;

/// A bug the deterministic simulator may plant, to prove its checks catch
/// it. Never set by the server; not part of the configuration or the log.
#[doc(hidden)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Look remembered answers up before authorising the caller.
    AnswersBeforeAuthorisation,
    /// Let an organisation refund without a recorded charge.
    RefundWithoutCharge,
    /// Change state during an incremental checkpoint without saving what
    /// the checkpoint must still write.
    CheckpointWithoutCopy,
}

/// The credit-control engine with its ledger.
pub struct Engine {
    /// The ledger (and its checkpoint bookkeeping).
    pub ledger: LedgerMachine,
    config: EngineConfig,
    /// Open sessions, by organisation and id.
    sessions: HashMap<SessionKey, Session>,
    supervision: BinaryHeap<Reverse<(Timestamp, SessionKey)>>,
    /// Sessions changed since the last checkpoint began: opened (true), or
    /// changed or ended (false).
    dirty_sessions: Vec<(SessionKey, bool)>,
    /// Sessions changed since the last checkpoint began carry this mark.
    session_epoch: u64,
    /// The checkpoint begun and not yet encoded, if any.
    pending: Option<Box<persist::PendingCheckpoint>>,
    /// Where remembered answers are in the log.
    answers: answers::AnswerIndex,
    /// Remembered records not yet durable (all of them with no log).
    recent: answers::RecentRecords,
    /// Reads the engine's durable log records back.
    log: Option<reckon_balances::journal::LogReader>,
    /// The log position the request being handled gets if logged (given
    /// by the journal), else counted here (an engine without a journal).
    lsn_hint: Option<u64>,
    standalone_lsn: u64,
    /// True while recovery replays: records are durable already.
    replaying: bool,
    /// The record of the request being handled, when it is remembered.
    record: Vec<u8>,
    /// What the session being ended (or refunded) may still have refunded.
    closing: Option<(AccountId, Vec<sessions::Charge>)>,
    config_dirty: bool,
    /// Units the engine accepts (see [`Engine::knows_unit`]).
    known_units: HashSet<Unit>,
    /// Rate cards (pure pricing, rebuilt from the applied files on restore).
    rates: reckon_rating::RateBook,
    /// The card the engine prices with.
    active_card: Option<String>,
    /// Every rate card file applied, in order: (time, op id, name, text, result).
    rate_files: Vec<RateFile>,
    rates_dirty: bool,
    /// Set when the request being handled changed state.
    changed: bool,
    checkpoint_seq: u64,
    planted: Option<PlantedBug>,
    /// The request being handled, as its audit entries name it.
    cause: OpId,
    /// The attributes of the credit-control request being handled, which
    /// pricing matches on top of each service's configured ones.
    request_attributes: Vec<(String, String)>,
}

/// How audit entries name the credit-control request that caused them: the
/// organisation in the high 64 bits, a digest of the session id and request
/// number in the low 64 (supervision uses request number `u32::MAX`).
pub fn request_ref(org: AccountId, session_id: &str, request_number: u32) -> OpId {
    let mut d = reckon_balances::codec::Digest::default();
    d.bytes16(session_id.as_bytes());
    d.u32(request_number);
    OpId(((org.0 as u128) << 64) | d.finish() as u128)
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("sessions", &self.sessions.len())
            .field("remembered_answers", &self.answers.len())
            .field("log_attached", &self.log.is_some())
            .finish_non_exhaustive()
    }
}

/// First byte of the engine's log records.
pub const ENGINE_TAG: u8 = b'E';

impl Engine {
    /// An engine over a ledger.
    pub fn new(ledger: LedgerMachine, config: EngineConfig) -> Engine {
        let mut engine = Engine {
            ledger,
            config,
            sessions: HashMap::new(),
            supervision: BinaryHeap::new(),
            dirty_sessions: Vec::new(),
            session_epoch: 1,
            pending: None,
            answers: answers::AnswerIndex::default(),
            recent: answers::RecentRecords::default(),
            log: None,
            lsn_hint: None,
            standalone_lsn: 0,
            replaying: false,
            record: Vec::new(),
            closing: None,
            config_dirty: true,
            known_units: HashSet::new(),
            rates: reckon_rating::RateBook::new(),
            active_card: None,
            rate_files: Vec::new(),
            rates_dirty: false,
            changed: false,
            checkpoint_seq: 0,
            planted: None,
            cause: OpId::SERVER,
            request_attributes: Vec::new(),
        };
        engine.refresh_units();
        engine
    }

    /// Plants a bug (the deterministic simulator's self-test only).
    #[doc(hidden)]
    pub fn plant(&mut self, bug: Option<PlantedBug>) {
        self.planted = bug;
        if bug == Some(PlantedBug::CheckpointWithoutCopy) {
            self.ledger.ledger.plant_checkpoint_without_copy();
        }
    }

    /// Number of answers remembered for retransmissions.
    pub fn remembered_answers(&self) -> usize {
        self.answers.len()
    }

    /// The log position for the request being handled.
    fn take_lsn(&mut self) -> u64 {
        match self.lsn_hint.take() {
            Some(lsn) => lsn,
            None => {
                self.standalone_lsn += 1;
                self.standalone_lsn
            }
        }
    }

    /// A remembered record, from the recent ones or the log: its time and
    /// payload.
    fn read_record(&self, lsn: u64) -> Option<(Timestamp, Vec<u8>)> {
        if let Some((at, bytes)) = self.recent.get(lsn) {
            return Some((at, bytes.to_vec()));
        }
        self.log.as_ref().and_then(|read| read(lsn))
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Entries in the supervision queue (live and superseded); bounded by
    /// twice the open sessions plus a constant.
    pub fn supervision_queue_len(&self) -> usize {
        self.supervision.len()
    }

    /// Applies one ledger step of the request being handled. The engine
    /// deduplicates whole requests itself (and replays them
    /// deterministically), so its steps carry no ledger op ids.
    fn ledger_apply(&mut self, now: Timestamp, command: Command) -> Result<Outcome, LedgerError> {
        let result = self
            .ledger
            .ledger
            .apply_unrecorded(now, self.cause, &command);
        self.changed |= result.is_ok();
        result
    }

    /// Applies one request at `now`.
    pub fn handle(&mut self, now: Timestamp, request: EngineRequest) -> EngineResponse {
        match request {
            EngineRequest::Ledger(caller, request) => self.handle_ledger(now, caller, request),
            EngineRequest::CreditControl(caller, ccr) => {
                EngineResponse::CreditControl(self.credit_control(now, caller, &ccr))
            }
            EngineRequest::Supervise => {
                self.supervise(now);
                EngineResponse::CreditControl(CreditControlAnswer::error(result_code::SUCCESS))
            }
            EngineRequest::Configure(config) => {
                if let Err(e) = config.validate() {
                    return EngineResponse::ConfigRefused(e);
                }
                self.config = config;
                self.config_dirty = true;
                self.answers.set_cap(self.config.answers_max as usize);
                self.refresh_units();
                EngineResponse::Configured
            }
            EngineRequest::ApplyRateCard {
                caller,
                op,
                name,
                text,
            } => {
                if caller != Caller::Admin {
                    return EngineResponse::Forbidden;
                }
                EngineResponse::RateCard(self.apply_rate_card(now, op, name, text))
            }
            EngineRequest::ShowRateCards(card) => EngineResponse::RateCards(self.rate_cards(&card)),
            EngineRequest::Alerts { caller, after, max } => {
                let ledger = &self.ledger.ledger;
                let newest = ledger.last_alert();
                let oldest = ledger.oldest_alert();
                // Scans at most `max` of anyone's alerts: a tenant's read
                // costs the same whoever raised the rest.
                let scanned = ledger.alerts_after(after, max);
                let resume_after = scanned.last().map_or(newest, |a| a.seq);
                let alerts = scanned
                    .into_iter()
                    .filter(|a| match caller {
                        Caller::Admin => true,
                        Caller::Org(org) => ledger.root_of(a.account) == Some(org),
                    })
                    .collect();
                EngineResponse::Alerts {
                    alerts,
                    oldest,
                    resume_after,
                    last: newest,
                }
            }
            EngineRequest::Gauges { digest } => {
                EngineResponse::Gauges(self.gauges(self.standalone_lsn, digest))
            }
        }
    }

    /// The engine's gauges, with `last_lsn` the position of the last
    /// request applied.
    fn gauges(&self, last_lsn: u64, digest: bool) -> EngineGauges {
        let answers = self.answers.len() as u64;
        EngineGauges {
            last_lsn,
            sessions: self.sessions.len() as u64,
            reservations: self.ledger.ledger.reservation_count() as u64,
            accounts: self.ledger.ledger.account_count() as u64,
            answers,
            answer_bytes: answers * answers::INDEX_BYTES_PER_ANSWER + self.recent.bytes() as u64,
            digest: digest.then(|| self.state_digest()),
        }
    }

    /// A digest of everything the engine's behaviour depends on: the
    /// ledger, the open sessions, the remembered answers and the
    /// configuration. Two engines with equal digests answer alike.
    pub fn state_digest(&self) -> u64 {
        self.state_digest_at(Timestamp(0))
    }

    /// The parts of [`Engine::state_digest_at`] — ledger, sessions,
    /// answers, configuration — so a difference can be located.
    pub fn digest_parts_at(&self, horizon: Timestamp) -> [u64; 4] {
        let ledger = self.ledger.ledger.state_digest_at(horizon);
        let window = self.config.answer_window_ms;
        let mut d = reckon_balances::codec::Digest::default();
        let mut keys: Vec<&SessionKey> = self.sessions.keys().collect();
        keys.sort_unstable();
        for key in keys {
            d.account(key.0);
            d.bytes16(key.1.as_bytes());
            encode_session(&mut d, &self.sessions[key]);
        }
        let sessions = d.finish();
        let answers = self.answers.digest_at(horizon, window);
        let mut d = reckon_balances::codec::Digest::default();
        encode_config(&mut d, &self.config);
        d.bytes16(self.active_card.as_deref().unwrap_or("").as_bytes());
        for f in &self.rate_files {
            encode_rate_file(&mut d, f.at, f.op, &f.name, &f.text);
        }
        [ledger, sessions, answers, d.finish()]
    }

    /// [`Engine::state_digest`] leaving out remembered answers and op ids
    /// already past their window at `horizon`: when they are forgotten
    /// (a pure function of time) cannot change any answer, so two states
    /// that differ only there behave the same from `horizon` on.
    pub fn state_digest_at(&self, horizon: Timestamp) -> u64 {
        let mut d = reckon_balances::codec::Digest::default();
        for part in self.digest_parts_at(horizon) {
            d.u64(part);
        }
        d.finish()
    }
}
