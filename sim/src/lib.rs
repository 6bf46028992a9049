//! Reckon's simulator.
//!
//! This crate owns the load generator that drives a running server over
//! the native protocol (`reckon-sim load`: [`load`], [`workload`],
//! [`report`]), and the deterministic simulation of the engine with
//! injected faults (`reckon-sim dst`: [`dst`]), and a Diameter Gy load driver
//! (`reckon-sim diameter`: [`diameter_load`]). Nothing in the workspace may depend on it.

pub mod diameter_load;
pub mod dst;
pub mod load;
pub mod report;
pub mod rng;
pub mod workload;
