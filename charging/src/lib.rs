//! Reckon's online charging system.
//!
//! It owns the credit-control engine ([`engine::Engine`]: sessions,
//! services, grant sizing, validity, final units, result codes, rate cards)
//! that ties `rating`, `balances` and (later) `settlement` together; the
//! tokio server ([`server`]) that feeds it through the journal's single
//! writer; the async client ([`client`]); the mapping between protocol
//! messages and engine requests ([`wire`]); the server's configuration
//! ([`config`]); the Diameter Credit-Control front end ([`diameter`]); the
//! admin HTTP listener, metrics and status page ([`ops`]); backups taken
//! by the running server and their restore ([`backup`]); the accounts file
//! of `reckon export` / `import` ([`accounts_file`]); and the `reckon`
//! binary. Only `sim` and `benches` may
//! depend on it. The engine itself never reads a clock or a socket.

pub mod accounts_file;
pub mod backup;
pub mod client;
pub mod config;
pub mod diameter;
pub mod engine;
pub mod ops;
pub mod server;
pub mod timefmt;
pub mod wire;
