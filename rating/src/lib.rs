//! Reckon's pricing.
//!
//! This crate will own rate cards with versions and effective dates, the
//! price of a usage, credit normalisation and provider cost. It is pure: no
//! I/O and no clock reads, and it must never depend on `balances`,
//! `settlement` or `charging`.
//!
//! Status: empty until the rating issue lands; nothing here is usable yet.
