//! Reckon's ledger: accounts, buckets, reservations and their durable store.
//!
//! It owns every balance: the account hierarchy, buckets per unit, two-phase
//! reservations (reserve → commit / release / expire), caps on subtrees,
//! idempotency of client operations and the audit trail
//! ([`ledger::Ledger`], a sans-IO single-writer state machine); and the
//! durable store around it: a checksummed write-ahead log with group commit
//! ([`wal`]), snapshots and the history store ([`snapstore`]) and recovery
//! ([`journal`]).
//!
//! It must never depend on `charging`, `settlement`, `protocol` or `sim`: the
//! charging engine builds on the ledger, not the other way round. The
//! journal is generic over the state machine it makes durable, so the engine
//! logs its own operations through the same writer and log.

pub mod amount;
pub mod codec;
pub mod command;
pub mod journal;
pub mod ledger;
pub mod machine;
pub mod period;
pub mod snapshot;
pub mod snapstore;
pub mod types;
pub mod wal;

pub use amount::{Amount, AmountError};
pub use command::{
    BucketSpec, Command, CreditKind, Hold, Holds, InvalidInput, LedgerError, OpResult, Operation,
    Outcome,
};
pub use ledger::{
    AccountView, Alert, AuditEntry, AuditKind, Availability, BucketView, Ledger, LimitView,
    ReservationView,
};
pub use period::Period;
pub use types::{
    AccountId, AccountStatus, BucketId, OpId, ReservationId, ServiceId, Timestamp, Unit,
};
