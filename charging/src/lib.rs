//! Reckon's online charging system.
//!
//! This crate will own the credit-control engine (sessions, services, grant
//! sizing, validity, final units, result codes) that ties `rating`,
//! `balances` and `settlement` together, the tokio server and the `reckon`
//! command-line binary. Only `sim` and `benches` may depend on it.
//!
//! Status: the engine lands with the native protocol issue. Until then the
//! ledger in `reckon-balances` is the usable part of Reckon.
