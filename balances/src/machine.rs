//! The ledger as a journaled [`Machine`]: its requests, responses and log
//! payloads.
//!
//! Log payloads start with the tag byte [`LEDGER_TAG`], so a larger machine
//! (the charging engine) can log its own records beside the ledger's in the
//! same log and hand `L` records to [`LedgerMachine::replay_payload`].

use crate::amount::Amount;
use crate::codec::{Reader, Sink};
use crate::command::{Command, LedgerError, OpResult, Operation};
use crate::journal::{Machine, SnapshotPair};
use crate::ledger::{AccountView, Ledger, ReservationView};
use crate::snapshot::{CheckpointState, SnapshotWrite};
use crate::types::{AccountId, OpId, ReservationId, ServiceId, Timestamp, Unit};
use std::collections::BTreeMap;

/// First byte of every ledger log payload.
pub const LEDGER_TAG: u8 = b'L';

/// A request to the journaled ledger: an operation or a read.
#[derive(Clone, Debug)]
pub enum LedgerRequest {
    /// A mutating operation (logged unless answered from idempotency).
    Apply(Operation),
    /// One account with buckets and caps.
    Account(AccountId),
    /// What a reservation could get now.
    Available {
        /// The account.
        account: AccountId,
        /// The unit.
        unit: Unit,
        /// The service, for restricted buckets.
        service: Option<ServiceId>,
    },
    /// One open reservation.
    Reservation(ReservationId),
    /// Open reservations of an account, at most `limit`.
    Reservations {
        /// The account.
        account: AccountId,
        /// List ids above this one (0 for the first page).
        after: ReservationId,
        /// Most to list.
        limit: usize,
    },
    /// Sum of balances per unit.
    Totals,
    /// [`Ledger::state_digest`], to compare a live state with a recovered one.
    StateDigest,
}

/// The answer to a [`LedgerRequest`], same variant order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerResponse {
    /// Result of an operation.
    Applied(OpResult),
    /// The account, if it exists.
    Account(Option<AccountView>),
    /// What could be reserved.
    Available(Result<Amount, LedgerError>),
    /// The reservation, if open.
    Reservation(Option<ReservationView>),
    /// Open reservations.
    Reservations(Vec<ReservationView>),
    /// Balances per unit.
    Totals(BTreeMap<Unit, Amount>),
    /// The state digest.
    StateDigest(u64),
}

/// The ledger plus what its checkpoints remember.
#[derive(Debug, Default)]
pub struct LedgerMachine {
    /// The state.
    pub ledger: Ledger,
    checkpoints: CheckpointState,
}

impl LedgerMachine {
    /// Wraps a ledger.
    pub fn new(ledger: Ledger) -> Self {
        LedgerMachine {
            ledger,
            checkpoints: CheckpointState::default(),
        }
    }

    /// Applies an operation, writing its log payload unless it is answered
    /// from the idempotency table (which changes nothing).
    pub fn apply_op(&mut self, now: Timestamp, op: &Operation, log: &mut Vec<u8>) -> OpResult {
        self.ledger.forget_expired_ops(now);
        if !self.ledger.is_known_op(op.op) {
            log.u8(LEDGER_TAG);
            op.encode(log);
        }
        self.ledger.apply(now, op)
    }

    /// Re-applies a payload written by [`LedgerMachine::apply_op`].
    pub fn replay_payload(&mut self, now: Timestamp, payload: &[u8]) -> Result<(), String> {
        let mut r = Reader::new(payload);
        if r.u8().map_err(|e| e.to_string())? != LEDGER_TAG {
            return Err("not a ledger record".into());
        }
        let op = Operation::decode(&mut r).map_err(|e| e.to_string())?;
        r.finish().map_err(|e| e.to_string())?;
        let _ = self.ledger.apply(now, &op);
        Ok(())
    }

    /// Begins a checkpoint (see [`Ledger::checkpoint_begin`]); the audit
    /// entries are handed off by [`LedgerMachine::audit_encoder`].
    pub fn checkpoint_begin(&mut self, now: Timestamp) {
        self.ledger.checkpoint_begin(&mut self.checkpoints, now);
    }

    /// The audit entries of the checkpoint just taken, to encode off the
    /// writer thread.
    pub fn audit_encoder(&mut self) -> crate::journal::Deferred {
        self.ledger.take_audit_encoder()
    }

    /// Rebuilds from snapshot pairs, ignoring keys of other namespaces.
    pub fn restore_pairs(pairs: &mut dyn Iterator<Item = SnapshotPair>) -> Result<Self, String> {
        let owned = pairs.filter(|(k, _)| k.first() == Some(&LEDGER_TAG));
        let (ledger, checkpoints) = Ledger::restore(owned).map_err(|e| e.to_string())?;
        Ok(LedgerMachine {
            ledger,
            checkpoints,
        })
    }

    /// The sweep due at `now`, if any.
    pub fn due_sweep(&self, now: Timestamp) -> Option<Operation> {
        self.ledger.sweep_due(now).then_some(Operation {
            op: OpId::SERVER,
            command: Command::Sweep,
        })
    }
}

impl Machine for LedgerMachine {
    type Request = LedgerRequest;
    type Response = LedgerResponse;

    fn apply(
        &mut self,
        now: Timestamp,
        _lsn: u64,
        request: LedgerRequest,
        log: &mut Vec<u8>,
    ) -> LedgerResponse {
        match request {
            LedgerRequest::Apply(op) => LedgerResponse::Applied(self.apply_op(now, &op, log)),
            LedgerRequest::Account(id) => LedgerResponse::Account(self.ledger.account_at(id, now)),
            LedgerRequest::Available {
                account,
                unit,
                service,
            } => LedgerResponse::Available(self.ledger.available(now, account, unit, service)),
            LedgerRequest::Reservation(id) => {
                LedgerResponse::Reservation(self.ledger.reservation(id))
            }
            LedgerRequest::Reservations {
                account,
                after,
                limit,
            } => LedgerResponse::Reservations(self.ledger.reservations_of(
                account,
                after,
                limit.min(10_000),
            )),
            LedgerRequest::Totals => LedgerResponse::Totals(self.ledger.totals()),
            LedgerRequest::StateDigest => LedgerResponse::StateDigest(self.ledger.state_digest()),
        }
    }

    fn replay(&mut self, now: Timestamp, _lsn: u64, payload: &[u8]) -> Result<(), String> {
        self.replay_payload(now, payload)
    }

    fn replay_hint(&mut self, records: u64) {
        // Each record is at most one op id to remember.
        self.ledger.reserve_ops(records);
    }

    fn checkpoint_begin(&mut self, now: Timestamp) {
        self.ledger.checkpoint_begin(&mut self.checkpoints, now);
    }

    fn checkpoint_step(&mut self, budget: usize) -> Option<Vec<SnapshotWrite>> {
        self.ledger.checkpoint_step(budget)
    }

    fn checkpoint_background(&mut self) -> Option<crate::journal::Deferred> {
        Some(self.audit_encoder())
    }

    fn restore(pairs: &mut dyn Iterator<Item = SnapshotPair>) -> Result<Self, String> {
        Self::restore_pairs(pairs)
    }

    fn check(&self) -> Result<(), String> {
        self.ledger.check_invariants()
    }

    fn due(&self, now: Timestamp) -> Option<LedgerRequest> {
        self.due_sweep(now).map(LedgerRequest::Apply)
    }
}
