//! Criterion benchmarks for Reckon; see `benches/` and README.md.
//!
//! The library part is empty on purpose: every benchmark is a target under
//! `benches/benches/`, run with `cargo bench -p reckon-benches`.
