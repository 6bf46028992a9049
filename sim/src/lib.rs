//! Reckon's simulator.
//!
//! This crate will own the load generator that drives a running server over
//! the native protocol, and the deterministic simulation of the engine with
//! injected faults. Nothing in the workspace may depend on it.
//!
//! Status: empty until the simulator issue lands; nothing here is usable yet.
