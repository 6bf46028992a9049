//! Reckon's online charging system.
//!
//! It owns the credit-control engine ([`engine::Engine`]: sessions,
//! services, grant sizing, validity, final units, result codes) that ties
//! `rating`, `balances` and `settlement` together, and (next) the tokio
//! server and the `reckon` command-line binary. Only `sim` and `benches` may
//! depend on it; it never reads a clock or a socket inside the engine.

pub mod client;
pub mod config;
pub mod engine;
pub mod server;
pub mod wire;
