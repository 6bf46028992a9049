//! Reckon's partner settlement.
//!
//! This crate will own partner split rules, per-period settlement
//! accumulation, chargeback and revenue reports and their exports (CSV and
//! JSON). It may depend on `rating` for unit types, never on `balances` or
//! `charging`.
//!
//! Status: empty until the settlement issue lands; nothing here is usable
//! yet.
