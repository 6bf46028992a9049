//! Reckon's simulator.
//!
//! This crate owns the load generator that drives a running server over
//! the native protocol (`reckon-sim load`: [`load`], [`workload`],
//! [`report`], with its engine in [`generator`] and the samples of the server
//! and of itself in [`sample`]), the same generator against Redis + Lua
//! for comparison (`reckon-sim redis`: [`resp`]), a stand-in server that
//! answers at once to measure the generator's own ceiling (`reckon-sim
//! sink`: [`sink`]), a Diameter Gy load driver (`reckon-sim diameter`:
//! [`diameter_load`]), and the deterministic
//! simulation of the engine with injected faults (`reckon-sim dst`:
//! [`dst`]). Nothing in the workspace may depend on it.

pub mod diameter_load;
pub mod dst;
pub mod generator;
pub mod load;
pub mod report;
pub mod resp;
pub mod rng;
pub mod sample;
pub mod sink;
pub mod workload;
