//! [`Message`]: one variant per message kind, each a typed struct with its
//! body encoding and decoding. Layouts are in `SPEC.md` § Messages.

use crate::codes::{AdminCode, ErrorCode, ResultCode};
use crate::error::ProtocolError;
use crate::frame::Kind;
use crate::limits::*;
use crate::types::*;
use crate::wire::{
    bounded_capacity, check_count, fail, into_error, put_attributes, put_decimal, put_denial,
    put_limit_period, put_opt_decimal, put_opt_u64, put_service_ids, put_string, put_thresholds,
    put_unit, put_unit_amounts, Cx, PResult,
};
use bytes::{BufMut, BytesMut};
use rust_decimal::Decimal;

/// Opens a connection: the versions the client speaks and its credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// The client's credential (an API key), at most 256 bytes.
    pub credential: String,
    /// The client's name and version, for logs, at most 64 bytes.
    pub client_name: String,
}

/// Accepts a connection: the chosen version and the session's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloOk {
    /// The version both sides now speak.
    pub version: u16,
    /// The organisation (root account) the credential belongs to.
    pub org_id: u64,
    /// Whether the credential may use admin operations on any account.
    pub is_admin: bool,
    /// Largest frame length either side may send from now on.
    pub max_frame: u32,
    /// Keepalive interval in seconds (0: no keepalive).
    pub keepalive_s: u16,
    /// The server's name and version, at most 64 bytes.
    pub server_name: String,
}

/// Many requests in one frame, answered by one [`BatchResult`] in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The requests: CCR and admin requests only, at most 1024.
    pub entries: Vec<Message>,
}

/// The answers to a [`Batch`], entry for entry in the same order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchResult {
    /// The answers: CCA, ADMIN_RESULT, BALANCE, RESERVATIONS or ERROR.
    pub entries: Vec<Message>,
}

/// One service (rating group) in a credit-control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    /// The rating group or service id.
    pub service_id: u32,
    /// Units asked for, per unit (at most 8).
    pub requested: Vec<UnitAmount>,
    /// Units used since the last report, per unit (at most 8).
    pub used: Vec<UnitAmount>,
}

/// A credit-control request (CCR): a session step or a one-shot event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ccr {
    /// The session's id, unique per client, at most 128 bytes.
    pub session_id: String,
    /// INITIAL, UPDATE, TERMINATE or EVENT.
    pub request_type: RequestType,
    /// Sequence number within the session (0 for INITIAL and EVENT).
    pub request_number: u32,
    /// The account charged.
    pub account: u64,
    /// What an EVENT does; `None` for session requests.
    pub event_action: Option<EventAction>,
    /// Why a session ends; `None` unless TERMINATE.
    pub termination_cause: Option<TerminationCause>,
    /// When the usage happened, ms since the Unix epoch (0: the server's time).
    pub timestamp_ms: u64,
    /// The services (at most 32).
    pub services: Vec<ServiceRequest>,
    /// Usage attributes rate-card conditions match (model, region, ...):
    /// at most 8 distinct keys; protocol version 2 only (empty in version 1).
    pub attributes: Vec<(String, String)>,
}

/// One service's answer in a CCA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAnswer {
    /// The rating group or service id it answers.
    pub service_id: u32,
    /// This service's result.
    pub result_code: ResultCode,
    /// Units granted, per unit (at most 8).
    pub granted: Vec<UnitAmount>,
    /// Seconds the grant is valid (0: no limit).
    pub validity_time_s: u32,
    /// What to do when the grant is used up; `None`: ask for more.
    pub final_unit_action: Option<FinalUnitAction>,
    /// Where to redirect for [`FinalUnitAction::Redirect`], else empty; at most 256 bytes.
    pub redirect: String,
    /// Which control refused the service (protocol version 3; `None` in
    /// versions 1 and 2, where `result_code` 4012 alone says it was refused).
    pub denial: Option<Denial>,
}

/// A credit-control answer (CCA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cca {
    /// The request's overall result.
    pub result_code: ResultCode,
    /// The request's session id.
    pub session_id: String,
    /// The request's number.
    pub request_number: u32,
    /// One answer per service asked about (at most 32).
    pub services: Vec<ServiceAnswer>,
    /// Balances, for CHECK_BALANCE (at most 32).
    pub balance: Vec<UnitAmount>,
    /// Prices, for PRICE_ENQUIRY (at most 8).
    pub price: Vec<UnitAmount>,
}

/// Admin: opens an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountCreate {
    /// Idempotency key (non-zero).
    pub op_id: u128,
    /// The new account's id.
    pub account: u64,
    /// Its parent, which must exist; `None` for a root (organisation).
    pub parent: Option<u64>,
    /// Whether it draws on its parent's buckets when its own run short.
    pub draws_on_parent: bool,
}

/// Admin: suspends, re-activates or closes an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountStatusChange {
    /// Idempotency key (non-zero).
    pub op_id: u128,
    /// The account.
    pub account: u64,
    /// Its new status.
    pub status: AccountStatus,
}

/// Admin: credits an amount (a top-up or a refund).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopUp {
    /// Idempotency key (non-zero).
    pub op_id: u128,
    /// The account credited.
    pub account: u64,
    /// The unit credited.
    pub unit: Unit,
    /// How much (> 0).
    pub amount: Decimal,
    /// A specific bucket, or `None` for the account's default bucket of the unit.
    pub bucket: Option<u64>,
    /// Top-up or refund.
    pub kind: CreditKind,
    /// Why, for the audit trail; at most 256 bytes.
    pub reason: String,
}

/// Admin: changes a bucket by a signed amount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adjust {
    /// Idempotency key (non-zero).
    pub op_id: u128,
    /// The account owning the bucket.
    pub account: u64,
    /// The bucket.
    pub bucket: u64,
    /// Signed change (≠ 0).
    pub delta: Decimal,
    /// Why, for the audit trail; at most 256 bytes.
    pub reason: String,
}

/// Admin: adds a bucket with its own terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketGrant {
    /// Idempotency key (non-zero).
    pub op_id: u128,
    /// The account receiving the bucket.
    pub account: u64,
    /// What the bucket counts.
    pub unit: Unit,
    /// Opening amount (≥ 0).
    pub amount: Decimal,
    /// First instant it may be drawn on, ms since the epoch.
    pub valid_from_ms: u64,
    /// First instant it may no longer be drawn on (`u64::MAX`: never).
    pub valid_until_ms: u64,
    /// Higher is drawn first.
    pub priority: i16,
    /// How far below zero it may go (≥ 0).
    pub credit_limit: Decimal,
    /// Services it may pay for (at most 32); empty: any.
    pub services: Vec<u32>,
}

/// Admin: sets or removes a spend control (a cap) on an account subtree in a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSet {
    /// Idempotency key (non-zero).
    pub op_id: u128,
    /// The account whose subtree is capped.
    pub account: u64,
    /// The unit capped.
    pub unit: Unit,
    /// The cap, or `None` to remove it.
    pub cap: Option<Decimal>,
    /// When the count starts again (protocol version 3; anything but
    /// [`LimitPeriod::Lifetime`] cannot be encoded in versions 1 and 2).
    pub period: LimitPeriod,
    /// A soft cap is reported (in `BALANCE`) but never refuses (protocol
    /// version 3; `true` cannot be encoded in versions 1 and 2).
    pub soft: bool,
    /// Alert thresholds, percent of the cap: 1 ..= 250, strictly
    /// increasing, at most 8; each raises an alert once per period when the
    /// period's usage reaches it (protocol version 3; must be empty in
    /// versions 1 and 2).
    pub alerts: Vec<u8>,
}

/// Query: an account's status and buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceQuery {
    /// The account.
    pub account: u64,
}

/// Query: an account's open reservations, a page at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationList {
    /// The reserving account.
    pub account: u64,
    /// Only reservations with a larger id (0: from the first).
    pub after: u64,
    /// Most to return (0 or above 4096: 4096).
    pub limit: u32,
}

/// The answer to a mutating admin request, or to a query that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminResult {
    /// The result.
    pub code: AdminCode,
    /// The bucket created or changed (0 if none).
    pub bucket: u64,
    /// Its balance afterwards; or what is available / the headroom on
    /// INSUFFICIENT_FUNDS / LIMIT_EXCEEDED; else 0.
    pub balance: Decimal,
}

/// One bucket in a [`Balance`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    /// The bucket's id.
    pub bucket: u64,
    /// What it counts.
    pub unit: Unit,
    /// Its amount (may be negative down to −credit_limit).
    pub amount: Decimal,
    /// What reservations hold of it.
    pub held: Decimal,
    /// What can still be reserved: amount − held + credit_limit, or 0 if not valid now.
    pub available: Decimal,
    /// How far below zero it may go.
    pub credit_limit: Decimal,
    /// First instant it may be drawn on.
    pub valid_from_ms: u64,
    /// First instant it may no longer be drawn on (`u64::MAX`: never).
    pub valid_until_ms: u64,
    /// Higher is drawn first.
    pub priority: i16,
    /// Whether its validity has ended.
    pub expired: bool,
    /// Services it may pay for (at most 32); empty: any.
    pub services: Vec<u32>,
}

/// One spend control in a [`Balance`] (protocol version 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitInfo {
    /// The unit capped.
    pub unit: Unit,
    /// The cap.
    pub cap: Decimal,
    /// What the subtree has been debited in the current period.
    pub used: Decimal,
    /// What open reservations in the subtree hold against it.
    pub held: Decimal,
    /// When the count starts again.
    pub period: LimitPeriod,
    /// Whether it only reports (soft) rather than refuses (hard).
    pub soft: bool,
    /// Start of the current period, ms since the epoch (0 for a lifetime control).
    pub period_start_ms: u64,
    /// End of the current period, ms since the epoch (`u64::MAX`: never).
    pub period_end_ms: u64,
    /// Its alert thresholds, percent of the cap, increasing.
    pub alerts: Vec<u8>,
}

/// The answer to [`BalanceQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    /// The account.
    pub account: u64,
    /// Its parent, if any.
    pub parent: Option<u64>,
    /// Its status.
    pub status: AccountStatus,
    /// Whether it draws on its parent's buckets.
    pub draws_on_parent: bool,
    /// Its buckets (at most 1024).
    pub buckets: Vec<BucketInfo>,
    /// The spend controls set on it (at most 64; protocol version 3, empty
    /// in versions 1 and 2, which do not carry them).
    pub limits: Vec<LimitInfo>,
}

/// One reservation in [`Reservations`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationInfo {
    /// The reservation's id.
    pub reservation: u64,
    /// The reserving account.
    pub account: u64,
    /// The unit reserved.
    pub unit: Unit,
    /// What it still holds.
    pub remaining: Decimal,
    /// When it lapses, ms since the epoch.
    pub expires_at_ms: u64,
}

/// The answer to [`ReservationList`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservations {
    /// Whether more reservations follow the last one listed.
    pub more: bool,
    /// The reservations in increasing id order (at most 4096).
    pub reservations: Vec<ReservationInfo>,
}

/// Validate a rate card and activate its versions (admin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardApply {
    /// Idempotency key.
    pub op_id: u128,
    /// File name, for error messages and the format (`.json` is JSON, else TOML).
    pub name: String,
    /// The card's text, at most 60,000 bytes.
    pub text: String,
}

/// List rate cards and their versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardShow {
    /// One card's id, or empty for every card.
    pub card: String,
}

/// The answer to [`RateCardApply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardResult {
    /// `OK`, or why the card was refused (nothing changed then).
    pub code: AdminCode,
    /// The card's id.
    pub card: String,
    /// Versions added (0 when the same card was applied again).
    pub versions_added: u16,
    /// Validation errors, one per line (`file:line:col: field: message`).
    pub message: String,
}

/// One version of a card in [`RateCards`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardVersionInfo {
    /// Version number.
    pub version: u32,
    /// When it takes effect, ms since the epoch.
    pub effective_from_ms: u64,
    /// The unit it charges in (a currency or credits).
    pub charge_unit: Unit,
    /// Its reporting currency.
    pub currency: Unit,
}

/// One card in [`RateCards`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardInfo {
    /// Its id.
    pub card: String,
    /// True for the card the server prices with.
    pub active: bool,
    /// Its versions, oldest first.
    pub versions: Vec<RateCardVersionInfo>,
}

/// The answer to [`RateCardShow`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCards {
    /// The cards.
    pub cards: Vec<RateCardInfo>,
}

/// The answer to `STATUS` (version 2): the server's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusResult {
    /// The server's software version, e.g. `0.1.0`.
    pub version: String,
    /// Seconds since the server started.
    pub uptime_s: u64,
    /// True when recovered, the journal healthy and accepting.
    pub ready: bool,
    /// Log position recovery reached at start.
    pub recovered_lsn: u64,
    /// Last durable log position.
    pub durable_lsn: u64,
    /// Submissions waiting in the writer's queue.
    pub queue_depth: u32,
    /// The writer queue's capacity.
    pub queue_capacity: u32,
    /// Native-protocol connections open.
    pub connections: u32,
    /// Open charging sessions.
    pub sessions: u64,
    /// Open reservations.
    pub reservations: u64,
    /// Log position the last checkpoint covers (0: none since start).
    pub checkpoint_lsn: u64,
    /// When the last checkpoint landed, ms since the epoch (0: none since start).
    pub checkpoint_at_ms: u64,
    /// Bytes of the write-ahead log.
    pub wal_bytes: u64,
    /// Bytes of the whole data directory.
    pub data_dir_bytes: u64,
}

/// Write a consistent backup of the running server (version 2, admin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// Absolute path of a directory on the server's host, new or empty.
    pub dir: String,
}

/// The answer to [`Backup`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupResult {
    /// `OK`, or `INVALID_INPUT` (a bad directory, a backup running) with
    /// `message` saying why.
    pub code: AdminCode,
    /// The log position the backup restores to.
    pub lsn: u64,
    /// The state digest at that position.
    pub digest: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Why it failed, or empty.
    pub message: String,
}

/// Subscribes the connection to spend-control alerts (version 3); a
/// second subscription on the connection replaces the first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertSubscribe {
    /// Deliver every alert with a larger sequence number: the last one the
    /// client has seen, or 0 for everything the server keeps.
    pub after: u64,
}

/// The answer to [`AlertSubscribe`], written before any [`Alert`] of the
/// subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertSubscribed {
    /// Sequence number of the oldest alert the server keeps, or
    /// `last_seq + 1` when it keeps none: alerts numbered above the
    /// subscription's `after` and below this one are gone.
    pub oldest_seq: u64,
    /// Sequence number of the newest alert so far (0: none yet); alerts
    /// up to it are the backlog, later ones arrive as they are raised.
    pub last_seq: u64,
}

impl AlertSubscribed {
    /// How many alerts numbered after `after` the server no longer has
    /// (server-wide numbers: an organisation's share of them may be fewer).
    pub fn missed(&self, after: u64) -> u64 {
        self.oldest_seq.saturating_sub(after.saturating_add(1))
    }

    /// Checks the ranges a decoder enforces: 1 ≤ `oldest_seq` ≤ `last_seq` + 1.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.oldest_seq == 0 || self.oldest_seq - 1 > self.last_seq {
            Err("oldest_seq must be 1 ..= last_seq + 1")
        } else {
            Ok(())
        }
    }
}

/// A spend-control alert the server pushes to a subscriber (version 3,
/// request id 0): a control's period usage reached one of its thresholds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Position in the server's alert sequence (1, 2, ...), server-wide.
    pub seq: u64,
    /// When the commit that reached the threshold happened, ms since the epoch.
    pub at_ms: u64,
    /// The account the control is set on.
    pub account: u64,
    /// The control's unit.
    pub unit: Unit,
    /// The control's period kind ([`LimitPeriod::kind`]: 0 lifetime,
    /// 1 ..= 12 months, 13 fixed length).
    pub period_kind: u8,
    /// Start of the period the threshold was reached in, ms since the
    /// epoch (0 for a lifetime control).
    pub period_start_ms: u64,
    /// The threshold reached, percent of the cap (1 ..= 250).
    pub threshold_pct: u8,
    /// The period's usage after the commit.
    pub used: Decimal,
    /// The control's cap.
    pub cap: Decimal,
    /// Whether the control is soft (reports only).
    pub soft: bool,
}

impl Alert {
    /// Checks the ranges a decoder enforces; `Err` names the field and why.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.seq == 0 {
            Err(("seq", "must be at least 1"))
        } else if !LimitPeriod::is_kind(self.period_kind) {
            Err(("period_kind", "must be a period kind, 0 ..= 13"))
        } else if !(1..=ALERT_PCT_MAX).contains(&self.threshold_pct) {
            Err(("threshold_pct", "must be 1 ..= 250"))
        } else {
            Ok(())
        }
    }
}

/// A protocol-level failure (sent with flags = 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// What failed.
    pub code: ErrorCode,
    /// Human-readable detail, at most 1024 bytes.
    pub message: String,
}

/// Every message of the protocol, one variant per [`Kind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// `HELLO` (0x01).
    Hello(Hello),
    /// `PING` (0x02).
    Ping,
    /// `BATCH` (0x03).
    Batch(Batch),
    /// `CCR` (0x10).
    Ccr(Ccr),
    /// `ACCOUNT_CREATE` (0x20).
    AccountCreate(AccountCreate),
    /// `ACCOUNT_STATUS` (0x21).
    AccountStatus(AccountStatusChange),
    /// `TOPUP` (0x22).
    TopUp(TopUp),
    /// `ADJUST` (0x23).
    Adjust(Adjust),
    /// `BUCKET_GRANT` (0x24).
    BucketGrant(BucketGrant),
    /// `LIMIT_SET` (0x25).
    LimitSet(LimitSet),
    /// `BALANCE_QUERY` (0x26).
    BalanceQuery(BalanceQuery),
    /// `RESERVATION_LIST` (0x27).
    ReservationList(ReservationList),
    /// `RATECARD_APPLY` (0x28).
    RateCardApply(RateCardApply),
    /// `RATECARD_SHOW` (0x29).
    RateCardShow(RateCardShow),
    /// `STATUS` (0x2A, version 2).
    Status,
    /// `BACKUP` (0x2B, version 2).
    Backup(Backup),
    /// `HELLO_OK` (0x81).
    HelloOk(HelloOk),
    /// `PONG` (0x82).
    Pong,
    /// `BATCH_RESULT` (0x83).
    BatchResult(BatchResult),
    /// `CCA` (0x90).
    Cca(Cca),
    /// `ADMIN_RESULT` (0xA0).
    AdminResult(AdminResult),
    /// `BALANCE` (0xA1).
    Balance(Balance),
    /// `RESERVATIONS` (0xA2).
    Reservations(Reservations),
    /// `RATECARD_RESULT` (0xA3).
    RateCardResult(RateCardResult),
    /// `RATECARDS` (0xA4).
    RateCards(RateCards),
    /// `STATUS_RESULT` (0xA5, version 2).
    StatusResult(StatusResult),
    /// `BACKUP_RESULT` (0xA6, version 2).
    BackupResult(BackupResult),
    /// `ALERT_SUBSCRIBE` (0x2C, version 3).
    AlertSubscribe(AlertSubscribe),
    /// `ALERT_SUBSCRIBED` (0xA7, version 3).
    AlertSubscribed(AlertSubscribed),
    /// `ALERT` (0xA8, version 3): pushed, request id 0.
    Alert(Alert),
    /// `ERROR` (0xFF).
    Error(ErrorReply),
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Ping => Kind::Ping,
            Message::Batch(_) => Kind::Batch,
            Message::Ccr(_) => Kind::Ccr,
            Message::AccountCreate(_) => Kind::AccountCreate,
            Message::AccountStatus(_) => Kind::AccountStatus,
            Message::TopUp(_) => Kind::TopUp,
            Message::Adjust(_) => Kind::Adjust,
            Message::BucketGrant(_) => Kind::BucketGrant,
            Message::LimitSet(_) => Kind::LimitSet,
            Message::BalanceQuery(_) => Kind::BalanceQuery,
            Message::ReservationList(_) => Kind::ReservationList,
            Message::HelloOk(_) => Kind::HelloOk,
            Message::Pong => Kind::Pong,
            Message::BatchResult(_) => Kind::BatchResult,
            Message::Cca(_) => Kind::Cca,
            Message::AdminResult(_) => Kind::AdminResult,
            Message::Balance(_) => Kind::Balance,
            Message::Reservations(_) => Kind::Reservations,
            Message::RateCardApply(_) => Kind::RateCardApply,
            Message::RateCardShow(_) => Kind::RateCardShow,
            Message::RateCardResult(_) => Kind::RateCardResult,
            Message::RateCards(_) => Kind::RateCards,
            Message::Status => Kind::Status,
            Message::StatusResult(_) => Kind::StatusResult,
            Message::Backup(_) => Kind::Backup,
            Message::BackupResult(_) => Kind::BackupResult,
            Message::AlertSubscribe(_) => Kind::AlertSubscribe,
            Message::AlertSubscribed(_) => Kind::AlertSubscribed,
            Message::Alert(_) => Kind::Alert,
            Message::Error(_) => Kind::Error,
        }
    }

    /// Appends the message's body (no frame header) to `dst`, as version 1
    /// lays it out.
    ///
    /// Refuses, leaving `dst` unchanged, anything a decoder would refuse: a
    /// string or list over its limit, or a batch entry of a kind not allowed
    /// there. Errors carry request id 0.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        let result = self.encode_body_version(dst, 1);
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    /// Appends the message's body as `version` lays it out (SPEC 12): a CCR
    /// with attributes needs version 2, a `LIMIT_SET` with a period, a
    /// soft cap or alert thresholds version 3; below version 3 a CCA's
    /// denials and a `BALANCE`'s spend controls are left out. Refuses like
    /// [`Message::encode`].
    pub fn encode_version(&self, dst: &mut BytesMut, version: u16) -> Result<(), ProtocolError> {
        let start = dst.len();
        let result = self.encode_body_version(dst, version);
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    /// Decodes a whole version-1 body of the given kind; every byte must be used.
    pub fn decode(kind: Kind, body: &[u8], request_id: u64) -> Result<Message, ProtocolError> {
        Message::decode_version(kind, body, request_id, 1)
    }

    /// Decodes a whole body of the given kind as `version` lays it out.
    pub fn decode_version(
        kind: Kind,
        body: &[u8],
        request_id: u64,
        version: u16,
    ) -> Result<Message, ProtocolError> {
        let cx = Cx {
            rid: request_id,
            version,
        };
        match Message::parse(cx, kind, body) {
            Ok(([], m)) => Ok(m),
            Ok((rest, _)) => Err(ProtocolError::TrailingBytes {
                request_id,
                field: "body",
                extra: rest.len(),
            }),
            Err(e) => Err(into_error(e, request_id)),
        }
    }

    fn encode_body_version(&self, dst: &mut BytesMut, version: u16) -> Result<(), ProtocolError> {
        match self {
            Message::Hello(m) => {
                dst.put_u16_le(m.min_version);
                dst.put_u16_le(m.max_version);
                put_string(dst, &m.credential, "credential", CREDENTIAL_MAX)?;
                put_string(dst, &m.client_name, "client_name", CLIENT_NAME_MAX)?;
            }
            Message::HelloOk(m) => {
                if !(MIN_NEGOTIATED_MAX_FRAME..=MAX_FRAME_CAP).contains(&m.max_frame) {
                    return Err(max_frame_error(0));
                }
                dst.put_u16_le(m.version);
                dst.put_u64_le(m.org_id);
                dst.put_u8(m.is_admin as u8);
                dst.put_u32_le(m.max_frame);
                dst.put_u16_le(m.keepalive_s);
                put_string(dst, &m.server_name, "server_name", SERVER_NAME_MAX)?;
            }
            Message::Ping | Message::Pong | Message::Status => {}
            Message::Batch(b) => encode_entries(dst, &b.entries, Kind::allowed_in_batch, version)?,
            Message::BatchResult(b) => {
                encode_entries(dst, &b.entries, Kind::allowed_in_batch_result, version)?
            }
            Message::Ccr(m) => {
                put_string(dst, &m.session_id, "session_id", SESSION_ID_MAX)?;
                dst.put_u8(m.request_type.code());
                dst.put_u32_le(m.request_number);
                dst.put_u64_le(m.account);
                dst.put_u8(m.event_action.map_or(0, EventAction::code));
                dst.put_u8(m.termination_cause.map_or(0, TerminationCause::code));
                dst.put_u64_le(m.timestamp_ms);
                check_count("services", m.services.len(), SERVICES_MAX)?;
                dst.put_u8(m.services.len() as u8);
                for s in &m.services {
                    dst.put_u32_le(s.service_id);
                    put_unit_amounts(dst, &s.requested, "requested", UNIT_AMOUNTS_MAX)?;
                    put_unit_amounts(dst, &s.used, "used", UNIT_AMOUNTS_MAX)?;
                }
                if version >= 2 {
                    put_attributes(dst, &m.attributes)?;
                } else if !m.attributes.is_empty() {
                    return Err(ProtocolError::InvalidValue {
                        request_id: 0,
                        field: "attributes",
                        reason: "need protocol version 2",
                    });
                }
            }
            Message::Cca(m) => {
                dst.put_u32_le(m.result_code.0);
                put_string(dst, &m.session_id, "session_id", SESSION_ID_MAX)?;
                dst.put_u32_le(m.request_number);
                check_count("services", m.services.len(), SERVICES_MAX)?;
                dst.put_u8(m.services.len() as u8);
                for s in &m.services {
                    dst.put_u32_le(s.service_id);
                    dst.put_u32_le(s.result_code.0);
                    put_unit_amounts(dst, &s.granted, "granted", UNIT_AMOUNTS_MAX)?;
                    dst.put_u32_le(s.validity_time_s);
                    dst.put_u8(s.final_unit_action.map_or(0, FinalUnitAction::code));
                    put_string(dst, &s.redirect, "redirect", REDIRECT_MAX)?;
                    // Version 3: older versions only see the result code.
                    if version >= 3 {
                        put_denial(dst, s.denial.as_ref())?;
                    }
                }
                put_unit_amounts(dst, &m.balance, "balance", BALANCE_ENTRIES_MAX)?;
                put_unit_amounts(dst, &m.price, "price", UNIT_AMOUNTS_MAX)?;
            }
            Message::AccountCreate(m) => {
                dst.put_u128_le(m.op_id);
                dst.put_u64_le(m.account);
                put_opt_u64(dst, m.parent);
                dst.put_u8(m.draws_on_parent as u8);
            }
            Message::AccountStatus(m) => {
                dst.put_u128_le(m.op_id);
                dst.put_u64_le(m.account);
                dst.put_u8(m.status.code());
            }
            Message::TopUp(m) => {
                dst.put_u128_le(m.op_id);
                dst.put_u64_le(m.account);
                put_unit(dst, &m.unit);
                put_decimal(dst, &m.amount);
                put_opt_u64(dst, m.bucket);
                dst.put_u8(m.kind.code());
                put_string(dst, &m.reason, "reason", REASON_MAX)?;
            }
            Message::Adjust(m) => {
                dst.put_u128_le(m.op_id);
                dst.put_u64_le(m.account);
                dst.put_u64_le(m.bucket);
                put_decimal(dst, &m.delta);
                put_string(dst, &m.reason, "reason", REASON_MAX)?;
            }
            Message::BucketGrant(m) => {
                dst.put_u128_le(m.op_id);
                dst.put_u64_le(m.account);
                put_unit(dst, &m.unit);
                put_decimal(dst, &m.amount);
                dst.put_u64_le(m.valid_from_ms);
                dst.put_u64_le(m.valid_until_ms);
                dst.put_i16_le(m.priority);
                put_decimal(dst, &m.credit_limit);
                put_service_ids(dst, &m.services, "services", BUCKET_SERVICES_MAX)?;
            }
            Message::LimitSet(m) => {
                dst.put_u128_le(m.op_id);
                dst.put_u64_le(m.account);
                put_unit(dst, &m.unit);
                put_opt_decimal(dst, m.cap.as_ref());
                if version >= 3 {
                    put_limit_period(dst, &m.period)?;
                    dst.put_u8(m.soft as u8);
                    put_thresholds(dst, &m.alerts)?;
                } else if m.period != LimitPeriod::Lifetime || m.soft || !m.alerts.is_empty() {
                    // A cap that resets, only reports or alerts must not
                    // become a silent hard lifetime cap on an older connection.
                    return Err(ProtocolError::InvalidValue {
                        request_id: 0,
                        field: if m.period != LimitPeriod::Lifetime {
                            "period"
                        } else if m.soft {
                            "soft"
                        } else {
                            "alerts"
                        },
                        reason: "need protocol version 3",
                    });
                }
            }
            Message::BalanceQuery(m) => dst.put_u64_le(m.account),
            Message::ReservationList(m) => {
                dst.put_u64_le(m.account);
                dst.put_u64_le(m.after);
                dst.put_u32_le(m.limit);
            }
            Message::AdminResult(m) => {
                dst.put_u32_le(m.code.0);
                dst.put_u64_le(m.bucket);
                put_decimal(dst, &m.balance);
            }
            Message::Balance(m) => {
                dst.put_u64_le(m.account);
                put_opt_u64(dst, m.parent);
                dst.put_u8(m.status.code());
                dst.put_u8(m.draws_on_parent as u8);
                check_count("buckets", m.buckets.len(), BUCKETS_MAX)?;
                dst.put_u16_le(m.buckets.len() as u16);
                for b in &m.buckets {
                    dst.put_u64_le(b.bucket);
                    put_unit(dst, &b.unit);
                    put_decimal(dst, &b.amount);
                    put_decimal(dst, &b.held);
                    put_decimal(dst, &b.available);
                    put_decimal(dst, &b.credit_limit);
                    dst.put_u64_le(b.valid_from_ms);
                    dst.put_u64_le(b.valid_until_ms);
                    dst.put_i16_le(b.priority);
                    dst.put_u8(b.expired as u8);
                    put_service_ids(dst, &b.services, "bucket services", BUCKET_SERVICES_MAX)?;
                }
                // Version 3; an older connection's answer leaves them out.
                if version >= 3 {
                    check_count("limits", m.limits.len(), LIMITS_MAX)?;
                    dst.put_u8(m.limits.len() as u8);
                    for l in &m.limits {
                        put_unit(dst, &l.unit);
                        put_decimal(dst, &l.cap);
                        put_decimal(dst, &l.used);
                        put_decimal(dst, &l.held);
                        put_limit_period(dst, &l.period)?;
                        dst.put_u8(l.soft as u8);
                        put_thresholds(dst, &l.alerts)?;
                        dst.put_u64_le(l.period_start_ms);
                        dst.put_u64_le(l.period_end_ms);
                    }
                }
            }
            Message::Reservations(m) => {
                dst.put_u8(m.more as u8);
                check_count("reservations", m.reservations.len(), RESERVATIONS_MAX)?;
                dst.put_u16_le(m.reservations.len() as u16);
                for r in &m.reservations {
                    dst.put_u64_le(r.reservation);
                    dst.put_u64_le(r.account);
                    put_unit(dst, &r.unit);
                    put_decimal(dst, &r.remaining);
                    dst.put_u64_le(r.expires_at_ms);
                }
            }
            Message::RateCardApply(m) => {
                dst.put_u128_le(m.op_id);
                put_string(dst, &m.name, "name", RATECARD_NAME_MAX)?;
                put_string(dst, &m.text, "text", RATECARD_TEXT_MAX)?;
            }
            Message::RateCardShow(m) => put_string(dst, &m.card, "card", RATECARD_ID_MAX)?,
            Message::RateCardResult(m) => {
                dst.put_u32_le(m.code.0);
                put_string(dst, &m.card, "card", RATECARD_ID_MAX)?;
                dst.put_u16_le(m.versions_added);
                put_string(dst, &m.message, "message", RATECARD_MESSAGE_MAX)?;
            }
            Message::RateCards(m) => {
                check_count("cards", m.cards.len(), RATECARDS_MAX)?;
                dst.put_u16_le(m.cards.len() as u16);
                for c in &m.cards {
                    put_string(dst, &c.card, "card", RATECARD_ID_MAX)?;
                    dst.put_u8(c.active as u8);
                    check_count("versions", c.versions.len(), RATECARD_VERSIONS_MAX)?;
                    dst.put_u16_le(c.versions.len() as u16);
                    for v in &c.versions {
                        dst.put_u32_le(v.version);
                        dst.put_u64_le(v.effective_from_ms);
                        put_unit(dst, &v.charge_unit);
                        put_unit(dst, &v.currency);
                    }
                }
            }
            Message::StatusResult(m) => {
                put_string(dst, &m.version, "version", SERVER_NAME_MAX)?;
                dst.put_u64_le(m.uptime_s);
                dst.put_u8(m.ready as u8);
                dst.put_u64_le(m.recovered_lsn);
                dst.put_u64_le(m.durable_lsn);
                dst.put_u32_le(m.queue_depth);
                dst.put_u32_le(m.queue_capacity);
                dst.put_u32_le(m.connections);
                dst.put_u64_le(m.sessions);
                dst.put_u64_le(m.reservations);
                dst.put_u64_le(m.checkpoint_lsn);
                dst.put_u64_le(m.checkpoint_at_ms);
                dst.put_u64_le(m.wal_bytes);
                dst.put_u64_le(m.data_dir_bytes);
            }
            Message::Backup(m) => put_string(dst, &m.dir, "dir", BACKUP_DIR_MAX)?,
            Message::BackupResult(m) => {
                dst.put_u32_le(m.code.0);
                dst.put_u64_le(m.lsn);
                dst.put_u64_le(m.digest);
                dst.put_u64_le(m.bytes);
                put_string(dst, &m.message, "message", ERROR_MESSAGE_MAX)?;
            }
            Message::AlertSubscribe(m) => dst.put_u64_le(m.after),
            Message::AlertSubscribed(m) => {
                if let Err(reason) = m.check() {
                    return Err(ProtocolError::InvalidValue {
                        request_id: 0,
                        field: "oldest_seq",
                        reason,
                    });
                }
                dst.put_u64_le(m.oldest_seq);
                dst.put_u64_le(m.last_seq);
            }
            Message::Alert(m) => {
                if let Err((field, reason)) = m.check() {
                    return Err(ProtocolError::InvalidValue {
                        request_id: 0,
                        field,
                        reason,
                    });
                }
                dst.put_u64_le(m.seq);
                dst.put_u64_le(m.at_ms);
                dst.put_u64_le(m.account);
                put_unit(dst, &m.unit);
                dst.put_u8(m.period_kind);
                dst.put_u64_le(m.period_start_ms);
                dst.put_u8(m.threshold_pct);
                put_decimal(dst, &m.used);
                put_decimal(dst, &m.cap);
                dst.put_u8(m.soft as u8);
            }
            Message::Error(m) => {
                dst.put_u16_le(m.code.0);
                put_string(dst, &m.message, "message", ERROR_MESSAGE_MAX)?;
            }
        }
        Ok(())
    }

    /// Parses a body of the given kind (bytes may remain).
    pub(crate) fn parse(cx: Cx, kind: Kind, i: &[u8]) -> PResult<'_, Message> {
        Ok(match kind {
            Kind::Hello => {
                let (i, min_version) = cx.u16(i, "min_version")?;
                let (i, max_version) = cx.u16(i, "max_version")?;
                let (i, credential) = cx.string(i, "credential", CREDENTIAL_MAX)?;
                let (i, client_name) = cx.string(i, "client_name", CLIENT_NAME_MAX)?;
                let m = Hello {
                    min_version,
                    max_version,
                    credential,
                    client_name,
                };
                (i, Message::Hello(m))
            }
            Kind::HelloOk => {
                let (i, version) = cx.u16(i, "version")?;
                let (i, org_id) = cx.u64(i, "org_id")?;
                let (i, is_admin) = cx.bool(i, "is_admin")?;
                let (i, max_frame) = cx.u32(i, "max_frame")?;
                if !(MIN_NEGOTIATED_MAX_FRAME..=MAX_FRAME_CAP).contains(&max_frame) {
                    return fail(max_frame_error(cx.rid));
                }
                let (i, keepalive_s) = cx.u16(i, "keepalive_s")?;
                let (i, server_name) = cx.string(i, "server_name", SERVER_NAME_MAX)?;
                let m = HelloOk {
                    version,
                    org_id,
                    is_admin,
                    max_frame,
                    keepalive_s,
                    server_name,
                };
                (i, Message::HelloOk(m))
            }
            Kind::Ping => (i, Message::Ping),
            Kind::Status => (i, Message::Status),
            Kind::Backup => {
                let (i, dir) = cx.string(i, "dir", BACKUP_DIR_MAX)?;
                (i, Message::Backup(Backup { dir }))
            }
            Kind::BackupResult => {
                let (i, code) = cx.u32(i, "code")?;
                let (i, lsn) = cx.u64(i, "lsn")?;
                let (i, digest) = cx.u64(i, "digest")?;
                let (i, bytes) = cx.u64(i, "bytes")?;
                let (i, message) = cx.string(i, "message", ERROR_MESSAGE_MAX)?;
                let m = BackupResult {
                    code: AdminCode(code),
                    lsn,
                    digest,
                    bytes,
                    message,
                };
                (i, Message::BackupResult(m))
            }
            Kind::StatusResult => {
                let (i, version) = cx.string(i, "version", SERVER_NAME_MAX)?;
                let (i, uptime_s) = cx.u64(i, "uptime_s")?;
                let (i, ready) = cx.bool(i, "ready")?;
                let (i, recovered_lsn) = cx.u64(i, "recovered_lsn")?;
                let (i, durable_lsn) = cx.u64(i, "durable_lsn")?;
                let (i, queue_depth) = cx.u32(i, "queue_depth")?;
                let (i, queue_capacity) = cx.u32(i, "queue_capacity")?;
                let (i, connections) = cx.u32(i, "connections")?;
                let (i, sessions) = cx.u64(i, "sessions")?;
                let (i, reservations) = cx.u64(i, "reservations")?;
                let (i, checkpoint_lsn) = cx.u64(i, "checkpoint_lsn")?;
                let (i, checkpoint_at_ms) = cx.u64(i, "checkpoint_at_ms")?;
                let (i, wal_bytes) = cx.u64(i, "wal_bytes")?;
                let (i, data_dir_bytes) = cx.u64(i, "data_dir_bytes")?;
                let m = StatusResult {
                    version,
                    uptime_s,
                    ready,
                    recovered_lsn,
                    durable_lsn,
                    queue_depth,
                    queue_capacity,
                    connections,
                    sessions,
                    reservations,
                    checkpoint_lsn,
                    checkpoint_at_ms,
                    wal_bytes,
                    data_dir_bytes,
                };
                (i, Message::StatusResult(m))
            }
            Kind::Pong => (i, Message::Pong),
            Kind::Batch => {
                let (i, entries) = parse_entries(cx, i, Kind::allowed_in_batch)?;
                (i, Message::Batch(Batch { entries }))
            }
            Kind::BatchResult => {
                let (i, entries) = parse_entries(cx, i, Kind::allowed_in_batch_result)?;
                (i, Message::BatchResult(BatchResult { entries }))
            }
            Kind::Ccr => {
                let (i, session_id) = cx.string(i, "session_id", SESSION_ID_MAX)?;
                let (i, request_type) =
                    cx.enumeration(i, "request_type", RequestType::from_code)?;
                let (i, request_number) = cx.u32(i, "request_number")?;
                let (i, account) = cx.u64(i, "account")?;
                let (i, event_action) =
                    cx.opt_enumeration(i, "event_action", EventAction::from_code)?;
                let (i, termination_cause) =
                    cx.opt_enumeration(i, "termination_cause", TerminationCause::from_code)?;
                let (i, timestamp_ms) = cx.u64(i, "timestamp_ms")?;
                let (mut i, n) = cx.count_u8(i, "services", SERVICES_MAX)?;
                // Smallest service: 4 + 1 + 1.
                let mut services = Vec::with_capacity(bounded_capacity(n, i.len(), 6));
                for _ in 0..n {
                    let (r, service_id) = cx.u32(i, "service_id")?;
                    let (r, requested) = cx.unit_amounts(r, "requested", UNIT_AMOUNTS_MAX)?;
                    let (r, used) = cx.unit_amounts(r, "used", UNIT_AMOUNTS_MAX)?;
                    services.push(ServiceRequest {
                        service_id,
                        requested,
                        used,
                    });
                    i = r;
                }
                let (i, attributes) = if cx.version >= 2 {
                    cx.attributes(i)?
                } else {
                    (i, Vec::new())
                };
                let m = Ccr {
                    session_id,
                    request_type,
                    request_number,
                    account,
                    event_action,
                    termination_cause,
                    timestamp_ms,
                    services,
                    attributes,
                };
                (i, Message::Ccr(m))
            }
            Kind::Cca => {
                let (i, result_code) = cx.u32(i, "result_code")?;
                let (i, session_id) = cx.string(i, "session_id", SESSION_ID_MAX)?;
                let (i, request_number) = cx.u32(i, "request_number")?;
                let (mut i, n) = cx.count_u8(i, "services", SERVICES_MAX)?;
                // Smallest service answer: 4 + 4 + 1 + 4 + 1 + 2.
                let mut services = Vec::with_capacity(bounded_capacity(n, i.len(), 16));
                for _ in 0..n {
                    let (r, service_id) = cx.u32(i, "service_id")?;
                    let (r, code) = cx.u32(r, "service result_code")?;
                    let (r, granted) = cx.unit_amounts(r, "granted", UNIT_AMOUNTS_MAX)?;
                    let (r, validity_time_s) = cx.u32(r, "validity_time_s")?;
                    let (r, final_unit_action) =
                        cx.opt_enumeration(r, "final_unit_action", FinalUnitAction::from_code)?;
                    let (r, redirect) = cx.string(r, "redirect", REDIRECT_MAX)?;
                    let (r, denial) = if cx.version >= 3 {
                        cx.denial(r)?
                    } else {
                        (r, None)
                    };
                    services.push(ServiceAnswer {
                        service_id,
                        result_code: ResultCode(code),
                        granted,
                        validity_time_s,
                        final_unit_action,
                        redirect,
                        denial,
                    });
                    i = r;
                }
                let (i, balance) = cx.unit_amounts(i, "balance", BALANCE_ENTRIES_MAX)?;
                let (i, price) = cx.unit_amounts(i, "price", UNIT_AMOUNTS_MAX)?;
                let m = Cca {
                    result_code: ResultCode(result_code),
                    session_id,
                    request_number,
                    services,
                    balance,
                    price,
                };
                (i, Message::Cca(m))
            }
            Kind::AccountCreate => {
                let (i, op_id) = cx.u128(i, "op_id")?;
                let (i, account) = cx.u64(i, "account")?;
                let (i, parent) = cx.opt_u64(i, "has_parent", "parent")?;
                let (i, draws_on_parent) = cx.bool(i, "draws_on_parent")?;
                let m = AccountCreate {
                    op_id,
                    account,
                    parent,
                    draws_on_parent,
                };
                (i, Message::AccountCreate(m))
            }
            Kind::AccountStatus => {
                let (i, op_id) = cx.u128(i, "op_id")?;
                let (i, account) = cx.u64(i, "account")?;
                let (i, status) = cx.enumeration(i, "status", AccountStatus::from_code)?;
                let m = AccountStatusChange {
                    op_id,
                    account,
                    status,
                };
                (i, Message::AccountStatus(m))
            }
            Kind::TopUp => {
                let (i, op_id) = cx.u128(i, "op_id")?;
                let (i, account) = cx.u64(i, "account")?;
                let (i, unit) = cx.unit(i, "unit")?;
                let (i, amount) = cx.decimal(i, "amount")?;
                let (i, bucket) = cx.opt_u64(i, "has_bucket", "bucket")?;
                let (i, kind) = cx.enumeration(i, "credit kind", CreditKind::from_code)?;
                let (i, reason) = cx.string(i, "reason", REASON_MAX)?;
                let m = TopUp {
                    op_id,
                    account,
                    unit,
                    amount,
                    bucket,
                    kind,
                    reason,
                };
                (i, Message::TopUp(m))
            }
            Kind::Adjust => {
                let (i, op_id) = cx.u128(i, "op_id")?;
                let (i, account) = cx.u64(i, "account")?;
                let (i, bucket) = cx.u64(i, "bucket")?;
                let (i, delta) = cx.decimal(i, "delta")?;
                let (i, reason) = cx.string(i, "reason", REASON_MAX)?;
                let m = Adjust {
                    op_id,
                    account,
                    bucket,
                    delta,
                    reason,
                };
                (i, Message::Adjust(m))
            }
            Kind::BucketGrant => {
                let (i, op_id) = cx.u128(i, "op_id")?;
                let (i, account) = cx.u64(i, "account")?;
                let (i, unit) = cx.unit(i, "unit")?;
                let (i, amount) = cx.decimal(i, "amount")?;
                let (i, valid_from_ms) = cx.u64(i, "valid_from_ms")?;
                let (i, valid_until_ms) = cx.u64(i, "valid_until_ms")?;
                let (i, priority) = cx.i16(i, "priority")?;
                let (i, credit_limit) = cx.decimal(i, "credit_limit")?;
                let (i, services) = cx.service_ids(i, "services", BUCKET_SERVICES_MAX)?;
                let m = BucketGrant {
                    op_id,
                    account,
                    unit,
                    amount,
                    valid_from_ms,
                    valid_until_ms,
                    priority,
                    credit_limit,
                    services,
                };
                (i, Message::BucketGrant(m))
            }
            Kind::LimitSet => {
                let (i, op_id) = cx.u128(i, "op_id")?;
                let (i, account) = cx.u64(i, "account")?;
                let (i, unit) = cx.unit(i, "unit")?;
                let (i, cap) = cx.opt_decimal(i, "has_cap", "cap")?;
                let (i, period, soft, alerts) = if cx.version >= 3 {
                    let (i, period) = cx.limit_period(i)?;
                    let (i, soft) = cx.bool(i, "soft")?;
                    let (i, alerts) = cx.thresholds(i)?;
                    (i, period, soft, alerts)
                } else {
                    (i, LimitPeriod::Lifetime, false, Vec::new())
                };
                let m = LimitSet {
                    op_id,
                    account,
                    unit,
                    cap,
                    period,
                    soft,
                    alerts,
                };
                (i, Message::LimitSet(m))
            }
            Kind::BalanceQuery => {
                let (i, account) = cx.u64(i, "account")?;
                (i, Message::BalanceQuery(BalanceQuery { account }))
            }
            Kind::ReservationList => {
                let (i, account) = cx.u64(i, "account")?;
                let (i, after) = cx.u64(i, "after")?;
                let (i, limit) = cx.u32(i, "limit")?;
                let m = ReservationList {
                    account,
                    after,
                    limit,
                };
                (i, Message::ReservationList(m))
            }
            Kind::AdminResult => {
                let (i, code) = cx.u32(i, "code")?;
                let (i, bucket) = cx.u64(i, "bucket")?;
                let (i, balance) = cx.decimal(i, "balance")?;
                let m = AdminResult {
                    code: AdminCode(code),
                    bucket,
                    balance,
                };
                (i, Message::AdminResult(m))
            }
            Kind::Balance => {
                let (i, account) = cx.u64(i, "account")?;
                let (i, parent) = cx.opt_u64(i, "has_parent", "parent")?;
                let (i, status) = cx.enumeration(i, "status", AccountStatus::from_code)?;
                let (i, draws_on_parent) = cx.bool(i, "draws_on_parent")?;
                let (mut i, n) = cx.count_u16(i, "buckets", BUCKETS_MAX)?;
                // Smallest bucket: 8 + 3 + 4 * 17 + 8 + 8 + 2 + 1 + 1.
                let mut buckets = Vec::with_capacity(bounded_capacity(n, i.len(), 99));
                for _ in 0..n {
                    let (r, bucket) = cx.u64(i, "bucket")?;
                    let (r, unit) = cx.unit(r, "unit")?;
                    let (r, amount) = cx.decimal(r, "amount")?;
                    let (r, held) = cx.decimal(r, "held")?;
                    let (r, available) = cx.decimal(r, "available")?;
                    let (r, credit_limit) = cx.decimal(r, "credit_limit")?;
                    let (r, valid_from_ms) = cx.u64(r, "valid_from_ms")?;
                    let (r, valid_until_ms) = cx.u64(r, "valid_until_ms")?;
                    let (r, priority) = cx.i16(r, "priority")?;
                    let (r, expired) = cx.bool(r, "expired")?;
                    let (r, services) =
                        cx.service_ids(r, "bucket services", BUCKET_SERVICES_MAX)?;
                    buckets.push(BucketInfo {
                        bucket,
                        unit,
                        amount,
                        held,
                        available,
                        credit_limit,
                        valid_from_ms,
                        valid_until_ms,
                        priority,
                        expired,
                        services,
                    });
                    i = r;
                }
                let (i, limits) = if cx.version >= 3 {
                    let (mut i, n) = cx.count_u8(i, "limits", LIMITS_MAX)?;
                    // Smallest limit: 3 + 3 * 17 + 1 + 1 + 1 + 8 + 8.
                    let mut limits = Vec::with_capacity(bounded_capacity(n, i.len(), 73));
                    for _ in 0..n {
                        let (r, unit) = cx.unit(i, "limit unit")?;
                        let (r, cap) = cx.decimal(r, "limit cap")?;
                        let (r, used) = cx.decimal(r, "limit used")?;
                        let (r, held) = cx.decimal(r, "limit held")?;
                        let (r, period) = cx.limit_period(r)?;
                        let (r, soft) = cx.bool(r, "soft")?;
                        let (r, alerts) = cx.thresholds(r)?;
                        let (r, period_start_ms) = cx.u64(r, "period_start_ms")?;
                        let (r, period_end_ms) = cx.u64(r, "period_end_ms")?;
                        limits.push(LimitInfo {
                            unit,
                            cap,
                            used,
                            held,
                            period,
                            soft,
                            period_start_ms,
                            period_end_ms,
                            alerts,
                        });
                        i = r;
                    }
                    (i, limits)
                } else {
                    (i, Vec::new())
                };
                let m = Balance {
                    account,
                    parent,
                    status,
                    draws_on_parent,
                    buckets,
                    limits,
                };
                (i, Message::Balance(m))
            }
            Kind::Reservations => {
                let (i, more) = cx.bool(i, "more")?;
                let (mut i, n) = cx.count_u16(i, "reservations", RESERVATIONS_MAX)?;
                // Smallest reservation: 8 + 8 + 3 + 17 + 8.
                let mut reservations = Vec::with_capacity(bounded_capacity(n, i.len(), 44));
                for _ in 0..n {
                    let (r, reservation) = cx.u64(i, "reservation")?;
                    let (r, account) = cx.u64(r, "account")?;
                    let (r, unit) = cx.unit(r, "unit")?;
                    let (r, remaining) = cx.decimal(r, "remaining")?;
                    let (r, expires_at_ms) = cx.u64(r, "expires_at_ms")?;
                    reservations.push(ReservationInfo {
                        reservation,
                        account,
                        unit,
                        remaining,
                        expires_at_ms,
                    });
                    i = r;
                }
                (
                    i,
                    Message::Reservations(Reservations { more, reservations }),
                )
            }
            Kind::RateCardApply => {
                let (i, op_id) = cx.u128(i, "op_id")?;
                let (i, name) = cx.string(i, "name", RATECARD_NAME_MAX)?;
                let (i, text) = cx.string(i, "text", RATECARD_TEXT_MAX)?;
                (
                    i,
                    Message::RateCardApply(RateCardApply { op_id, name, text }),
                )
            }
            Kind::RateCardShow => {
                let (i, card) = cx.string(i, "card", RATECARD_ID_MAX)?;
                (i, Message::RateCardShow(RateCardShow { card }))
            }
            Kind::RateCardResult => {
                let (i, code) = cx.u32(i, "code")?;
                let (i, card) = cx.string(i, "card", RATECARD_ID_MAX)?;
                let (i, versions_added) = cx.u16(i, "versions_added")?;
                let (i, message) = cx.string(i, "message", RATECARD_MESSAGE_MAX)?;
                let m = RateCardResult {
                    code: AdminCode(code),
                    card,
                    versions_added,
                    message,
                };
                (i, Message::RateCardResult(m))
            }
            Kind::RateCards => {
                let (mut i, n) = cx.count_u16(i, "cards", RATECARDS_MAX)?;
                // Smallest card: 2 (empty id) + 1 + 2.
                let mut cards = Vec::with_capacity(bounded_capacity(n, i.len(), 5));
                for _ in 0..n {
                    let (r, card) = cx.string(i, "card", RATECARD_ID_MAX)?;
                    let (r, active) = cx.bool(r, "active")?;
                    let (mut r, m) = cx.count_u16(r, "versions", RATECARD_VERSIONS_MAX)?;
                    // Smallest version: 4 + 8 + 2 * 3.
                    let mut versions = Vec::with_capacity(bounded_capacity(m, r.len(), 18));
                    for _ in 0..m {
                        let (q, version) = cx.u32(r, "version")?;
                        let (q, effective_from_ms) = cx.u64(q, "effective_from_ms")?;
                        let (q, charge_unit) = cx.unit(q, "charge_unit")?;
                        let (q, currency) = cx.unit(q, "currency")?;
                        versions.push(RateCardVersionInfo {
                            version,
                            effective_from_ms,
                            charge_unit,
                            currency,
                        });
                        r = q;
                    }
                    cards.push(RateCardInfo {
                        card,
                        active,
                        versions,
                    });
                    i = r;
                }
                (i, Message::RateCards(RateCards { cards }))
            }
            Kind::AlertSubscribe => {
                let (i, after) = cx.u64(i, "after")?;
                (i, Message::AlertSubscribe(AlertSubscribe { after }))
            }
            Kind::AlertSubscribed => {
                let (i, oldest_seq) = cx.u64(i, "oldest_seq")?;
                let (i, last_seq) = cx.u64(i, "last_seq")?;
                let m = AlertSubscribed {
                    oldest_seq,
                    last_seq,
                };
                if let Err(reason) = m.check() {
                    return fail(ProtocolError::InvalidValue {
                        request_id: cx.rid,
                        field: "oldest_seq",
                        reason,
                    });
                }
                (i, Message::AlertSubscribed(m))
            }
            Kind::Alert => {
                let (i, seq) = cx.u64(i, "seq")?;
                let (i, at_ms) = cx.u64(i, "at_ms")?;
                let (i, account) = cx.u64(i, "account")?;
                let (i, unit) = cx.unit(i, "unit")?;
                let (i, period_kind) = cx.u8(i, "period_kind")?;
                if !LimitPeriod::is_kind(period_kind) {
                    return fail(ProtocolError::InvalidEnum {
                        request_id: cx.rid,
                        field: "period_kind",
                        value: period_kind,
                    });
                }
                let (i, period_start_ms) = cx.u64(i, "period_start_ms")?;
                let (i, threshold_pct) = cx.u8(i, "threshold_pct")?;
                let (i, used) = cx.decimal(i, "used")?;
                let (i, cap) = cx.decimal(i, "cap")?;
                let (i, soft) = cx.bool(i, "soft")?;
                let m = Alert {
                    seq,
                    at_ms,
                    account,
                    unit,
                    period_kind,
                    period_start_ms,
                    threshold_pct,
                    used,
                    cap,
                    soft,
                };
                if let Err((field, reason)) = m.check() {
                    return fail(ProtocolError::InvalidValue {
                        request_id: cx.rid,
                        field,
                        reason,
                    });
                }
                (i, Message::Alert(m))
            }
            Kind::Error => {
                let (i, code) = cx.u16(i, "code")?;
                let (i, message) = cx.string(i, "message", ERROR_MESSAGE_MAX)?;
                let m = ErrorReply {
                    code: ErrorCode(code),
                    message,
                };
                (i, Message::Error(m))
            }
        })
    }
}

fn max_frame_error(request_id: u64) -> ProtocolError {
    ProtocolError::InvalidValue {
        request_id,
        field: "max_frame",
        reason: "must be between 65536 and 16777216",
    }
}

/// Writes `count u16` then each entry as `u32 len | u8 kind | body`.
fn encode_entries(
    dst: &mut BytesMut,
    entries: &[Message],
    allowed: fn(Kind) -> bool,
    version: u16,
) -> Result<(), ProtocolError> {
    if entries.len() > BATCH_MAX {
        return Err(ProtocolError::BatchTooLarge {
            request_id: 0,
            count: entries.len(),
        });
    }
    dst.put_u16_le(entries.len() as u16);
    for (index, entry) in entries.iter().enumerate() {
        let kind = entry.kind();
        if !allowed(kind) {
            return Err(ProtocolError::BatchEntryNotAllowed {
                request_id: 0,
                index,
                kind: kind as u8,
            });
        }
        let at = dst.len();
        dst.put_u32_le(0);
        dst.put_u8(kind as u8);
        entry.encode_body_version(dst, version)?;
        let len = (dst.len() - at - 4) as u32;
        dst[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// Reads `count u16` then each entry as `u32 len | u8 kind | body`.
fn parse_entries(cx: Cx, i: &[u8], allowed: fn(Kind) -> bool) -> PResult<'_, Vec<Message>> {
    let (mut i, count) = cx.u16(i, "batch count")?;
    let count = count as usize;
    if count > BATCH_MAX {
        return fail(ProtocolError::BatchTooLarge {
            request_id: cx.rid,
            count,
        });
    }
    // Smallest entry: 4 (len) + 1 (kind) + 8 (BALANCE_QUERY, the smallest allowed body).
    let mut entries = Vec::with_capacity(bounded_capacity(count, i.len(), 13));
    for index in 0..count {
        let (r, len) = cx.u32(i, "batch entry length")?;
        let (r, entry) = cx.bytes(r, len as usize, "batch entry")?;
        let (body, kind_byte) = cx.u8(entry, "batch entry kind")?;
        let Some(kind) = Kind::from_code(kind_byte) else {
            return fail(ProtocolError::UnknownKind {
                request_id: cx.rid,
                kind: kind_byte,
            });
        };
        if !allowed(kind) {
            return fail(ProtocolError::BatchEntryNotAllowed {
                request_id: cx.rid,
                index,
                kind: kind_byte,
            });
        }
        let (rest, message) = Message::parse(cx, kind, body)?;
        if !rest.is_empty() {
            return fail(ProtocolError::TrailingBytes {
                request_id: cx.rid,
                field: "batch entry",
                extra: rest.len(),
            });
        }
        entries.push(message);
        i = r;
    }
    Ok((i, entries))
}
