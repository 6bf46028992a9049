//! Reckon's ledger.
pub mod wal;
