//! Reckon's wire formats: the native compact binary protocol.
//!
//! This crate owns the native protocol, specified byte for byte in
//! `protocol/SPEC.md`: the frame layout, every message and field, every
//! result and error code, the limits, version negotiation and hex test
//! vectors. It provides
//!
//! - [`Frame`] and [`Message`]: one typed struct per message kind, with
//!   canonical encoding (`bytes`) and bounded decoding (`nom`);
//! - [`decode_frame`]: decode one frame from a byte slice, without tokio;
//! - [`ReckonCodec`] / [`TolerantCodec`]: `tokio_util::codec` decoders and
//!   encoders with a configurable maximum frame size;
//! - [`ProtocolError`]: a typed error for every class of malformed input,
//!   carrying the request id when it is known, so a server can answer
//!   `ERROR` and keep the connection when the frame boundary is intact.
//!
//! It holds no business logic and must never depend on a domain crate
//! (`balances`, `rating`, `settlement`, `charging`): it has its own wire
//! types (account ids are plain `u64`, units are [`Unit`], amounts are
//! [`rust_decimal::Decimal`]), and the server maps them to the ledger's.
//!
//! [`diameter`] is the Diameter base protocol (RFC 6733) with the
//! Credit-Control application (RFC 4006 / 8506) and the 3GPP Ro/Gy AVPs:
//! framing, AVPs, a dictionary and typed messages.

#![forbid(unsafe_code)]

pub mod codec;
pub mod codes;
pub mod diameter;
pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
pub mod types;
mod wire;

pub use codec::{ReckonCodec, TolerantCodec};
pub use codes::{AdminCode, ErrorCode, ResultCode};
pub use error::ProtocolError;
pub use frame::{
    decode_frame, decode_frame_version, decode_frame_with_limit, frame_size, Frame, Kind,
};
pub use message::{
    AccountCreate, AccountStatusChange, Adjust, AdminResult, Alert, AlertSubscribe,
    AlertSubscribed, Backup, BackupResult, Balance, BalanceQuery, Batch, BatchResult, BucketGrant,
    BucketInfo, Cca, Ccr, ErrorReply, Hello, HelloOk, LimitInfo, LimitSet, Message, RateCardApply,
    RateCardInfo, RateCardResult, RateCardShow, RateCardVersionInfo, RateCards, ReservationInfo,
    ReservationList, Reservations, ServiceAnswer, ServiceRequest, StatusResult, TopUp,
};
pub use types::{
    AccountStatus, CreditKind, Denial, EventAction, FinalUnitAction, InvalidUnitName, LimitPeriod,
    RequestType, TerminationCause, Unit, UnitAmount,
};

/// The highest protocol version this crate speaks (SPEC 5.1, 12): version 2
/// is version 1 plus `CCR.attributes`, `STATUS` / `STATUS_RESULT` and
/// `BACKUP` / `BACKUP_RESULT`; version 3 is version 2 plus spend controls
/// (`LIMIT_SET.period` / `soft` / `alerts`, `BALANCE.limits`), the CCA
/// service `denial` and alerts (`ALERT_SUBSCRIBE` / `ALERT_SUBSCRIBED`, the
/// pushed `ALERT`). Published versions never change. Which kinds a version
/// has: [`Kind::since_version`].
pub const PROTOCOL_VERSION: u16 = 3;
/// The lowest protocol version this crate speaks; it never changes.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
