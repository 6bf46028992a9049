//! Reckon's wire formats.
//!
//! This crate will own the native compact binary protocol (its spec in
//! `SPEC.md`, the frame codec and the message types) and, later, the
//! Diameter Credit-Control codecs. It holds no business logic and must never
//! depend on a domain crate (`balances`, `rating`, `settlement`, `charging`).
//!
//! Status: empty until the native protocol issue lands; nothing here is
//! usable yet.
