//! The ledger's operations, their results and errors, and their log encoding.

use crate::amount::Amount;
use crate::codec::{DecodeError, Reader, Sink};
use crate::period::Period;
use crate::types::{
    AccountId, AccountStatus, BucketId, OpId, ReservationId, ServiceId, Timestamp, Unit,
};
use std::sync::Arc;

/// Longest reason text on a credit or adjustment, in bytes.
pub const REASON_LEN_MAX: usize = 256;
/// Most services a bucket may be restricted to.
pub const BUCKET_SERVICES_MAX: usize = 32;

/// A mutating request to the ledger: the client's op id and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Idempotency key; [`OpId::SERVER`] only for server-issued sweeps.
    pub op: OpId,
    /// What to do.
    pub command: Command,
}

/// Whether a credit is a top-up (new money in) or a refund (money given back).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CreditKind {
    /// Money paid in.
    TopUp,
    /// Money returned, e.g. for a failed service.
    Refund,
}

/// The terms of a new bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketSpec {
    /// What the bucket counts.
    pub unit: Unit,
    /// Opening amount (≥ 0).
    pub amount: Amount,
    /// First instant the bucket may be drawn on.
    pub valid_from: Timestamp,
    /// First instant it may no longer be drawn on ([`Timestamp::NEVER`] for none).
    pub valid_until: Timestamp,
    /// Higher priority is drawn first.
    pub priority: i16,
    /// Services it may pay for; empty means any.
    pub services: Vec<ServiceId>,
    /// How far below zero the bucket may go (postpaid overdraft, ≥ 0).
    pub credit_limit: Amount,
}

impl BucketSpec {
    /// A plain, unrestricted, non-expiring bucket with this opening amount.
    pub fn plain(unit: Unit, amount: Amount) -> BucketSpec {
        BucketSpec {
            unit,
            amount,
            valid_from: Timestamp(0),
            valid_until: Timestamp::NEVER,
            priority: 0,
            services: Vec::new(),
            credit_limit: Amount::ZERO,
        }
    }
}

/// Everything the ledger can be asked to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Opens an account under an optional parent.
    CreateAccount {
        /// The new account's id.
        account: AccountId,
        /// Its parent (organisation, department, ...), which must exist.
        parent: Option<AccountId>,
        /// When its own buckets run short, draw on the parent's buckets too.
        draws_on_parent: bool,
    },
    /// Suspends, re-activates or closes an account.
    SetStatus {
        /// The account.
        account: AccountId,
        /// Its new status; closing is final.
        status: AccountStatus,
    },
    /// Sets (or with `None` removes) a spend control: a cap on what the
    /// account's whole subtree may hold plus spend in a unit, per period.
    /// An account has at most one control per unit and period kind
    /// ([`Period::kind`]); setting one of the same kind replaces its terms.
    SetLimit {
        /// The account whose subtree is capped.
        account: AccountId,
        /// The unit capped.
        unit: Unit,
        /// The cap, or `None` to remove it.
        cap: Option<Amount>,
        /// When the count starts over ([`Period::Lifetime`]: never).
        period: Period,
        /// A soft cap never refuses: it is only reported (alerts); a hard
        /// cap refuses what would pass it.
        soft: bool,
        /// Percentages of the cap (1..=250, increasing, at most
        /// [`ALERTS_PER_LIMIT_MAX`]) whose crossing by the period's usage
        /// raises an alert, once per period.
        alerts: Vec<u8>,
    },
    /// Adds a bucket with its own terms (promo credits, a committed pool).
    GrantBucket {
        /// The account receiving the bucket.
        account: AccountId,
        /// The bucket's terms.
        spec: BucketSpec,
    },
    /// Credits an amount: a top-up or a refund.
    Credit {
        /// The account credited.
        account: AccountId,
        /// The unit credited.
        unit: Unit,
        /// How much (> 0).
        amount: Amount,
        /// A specific bucket, or `None` for the account's default bucket of
        /// that unit (created if absent).
        bucket: Option<BucketId>,
        /// Top-up or refund.
        kind: CreditKind,
        /// Why, for the audit trail.
        reason: Arc<str>,
    },
    /// Changes a bucket by a signed amount, with a reason.
    Adjust {
        /// The account owning the bucket.
        account: AccountId,
        /// The bucket.
        bucket: BucketId,
        /// Signed change; may not take the bucket below its credit limit.
        delta: Amount,
        /// Why, for the audit trail.
        reason: Arc<str>,
    },
    /// Sets credit aside for an in-flight session or request.
    Reserve {
        /// The account reserving.
        account: AccountId,
        /// The unit reserved.
        unit: Unit,
        /// The most to reserve (> 0).
        amount: Amount,
        /// The least that is useful (0 < min ≤ amount); less fails.
        min_amount: Amount,
        /// The service it pays for, matched against bucket restrictions.
        service: Option<ServiceId>,
        /// When the reservation lapses if neither committed nor released.
        expires_at: Timestamp,
    },
    /// Debits used units from a reservation.
    Commit {
        /// The reservation.
        reservation: ReservationId,
        /// Units used (≤ what the reservation still holds).
        used: Amount,
        /// Release what is left (final commit) or keep holding it (partial).
        release_rest: bool,
    },
    /// Gives a reservation back without debiting anything.
    Release {
        /// The reservation.
        reservation: ReservationId,
    },
    /// Expires due reservations and buckets (server-issued, time-driven).
    Sweep,
    /// Sets how long op ids are remembered for idempotency.
    SetIdempotencyWindow {
        /// Window in milliseconds.
        window_ms: u64,
    },
}

/// One (bucket, amount) pair a reservation holds or a commit debited.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Account that owns the bucket (the reserving account or an ancestor).
    pub account: AccountId,
    /// The bucket.
    pub bucket: BucketId,
    /// The amount.
    pub amount: Amount,
}

/// A reservation's or commit's (bucket, amount) list; inline up to two
/// buckets, the common case, so the hot path does not allocate.
pub type Holds = smallvec::SmallVec<[Hold; 2]>;

/// What a successful operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The account exists now.
    AccountCreated,
    /// The status changed.
    StatusSet,
    /// The limit changed.
    LimitSet,
    /// A bucket was created.
    BucketGranted {
        /// Its id.
        bucket: BucketId,
    },
    /// A bucket was credited or adjusted.
    BalanceChanged {
        /// The bucket.
        bucket: BucketId,
        /// Its amount afterwards.
        balance: Amount,
    },
    /// Credit is held.
    Reserved {
        /// The reservation's id.
        reservation: ReservationId,
        /// How much was reserved (between min and the amount asked).
        granted: Amount,
        /// Which buckets hold it, in draw order.
        holds: Holds,
    },
    /// Units were debited.
    Committed {
        /// Exactly what was debited from which bucket.
        debited: Holds,
        /// What was released back (0 for a partial commit).
        released: Amount,
        /// What the reservation still holds (0 when resolved).
        remaining: Amount,
    },
    /// The reservation was released.
    Released {
        /// The amount released.
        released: Amount,
    },
    /// A sweep ran.
    Swept {
        /// Reservations expired.
        reservations: u32,
        /// Buckets expired.
        buckets: u32,
        /// True when more items are due and another sweep should follow.
        more: bool,
    },
    /// The idempotency window changed.
    WindowSet,
}

/// Why an operation was refused. A refused operation changes nothing but
/// its idempotency entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The op id is zero, or zero was used for a client operation.
    #[error("invalid operation id: clients must use a non-zero id; sweeps use zero")]
    InvalidOpId,
    /// The op id was used before with different content.
    #[error("operation id already used for a different request")]
    OpIdReused,
    /// An account with that id exists already.
    #[error("account {0:?} already exists")]
    AccountExists(AccountId),
    /// No such account.
    #[error("account {0:?} not found")]
    AccountNotFound(AccountId),
    /// The account (or an ancestor) is not active.
    #[error("account {account:?} is {status:?}")]
    AccountNotActive {
        /// The account that blocks.
        account: AccountId,
        /// Its status.
        status: AccountStatus,
    },
    /// The hierarchy would exceed [`crate::ledger::DEPTH_MAX`] levels.
    #[error("account hierarchy deeper than {0} levels")]
    HierarchyTooDeep(usize),
    /// The account has reached its bucket count limit.
    #[error("account has the maximum of {0} buckets")]
    TooManyBuckets(usize),
    /// No such bucket on that account.
    #[error("bucket {0:?} not found on the account")]
    BucketNotFound(BucketId),
    /// The bucket counts another unit.
    #[error("bucket counts {bucket} but the request is in {request}")]
    UnitMismatch {
        /// The bucket's unit.
        bucket: Unit,
        /// The request's unit.
        request: Unit,
    },
    /// An amount, time window or count is out of its allowed range.
    #[error("invalid input: {0}")]
    Invalid(InvalidInput),
    /// Not enough available credit.
    #[error("insufficient funds: {available} available")]
    InsufficientFunds {
        /// What could have been reserved.
        available: Amount,
    },
    /// A hard spend control on the account or an ancestor would be
    /// exceeded.
    #[error("limit on account {account:?} (period kind {period}) leaves {headroom} of headroom")]
    LimitExceeded {
        /// The capped account.
        account: AccountId,
        /// What the cap still allows.
        headroom: Amount,
        /// Which of the account's controls in the unit refused
        /// ([`Period::kind`]: 0 the lifetime cap, 1 monthly, 12 yearly, ...).
        period: u8,
    },
    /// No such reservation, or it was already committed, released or expired.
    #[error("reservation {0:?} not found or already resolved")]
    ReservationNotFound(ReservationId),
    /// The reservation's expiry time has passed.
    #[error("reservation {0:?} has expired")]
    ReservationExpired(ReservationId),
    /// A commit asked for more than the reservation holds.
    #[error("used amount exceeds the {remaining} still reserved")]
    CommitExceedsReservation {
        /// What the reservation still holds.
        remaining: Amount,
    },
    /// A balance would leave ±[`Amount::MAX`].
    #[error("balance would overflow")]
    BalanceOverflow,
}

/// Which input was out of range, for [`LedgerError::Invalid`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InvalidInput {
    /// An amount that must be positive was not.
    AmountNotPositive = 1,
    /// `min_amount` was zero, negative or above `amount`.
    MinAmount = 2,
    /// An expiry was not after now.
    ExpiryNotAfterNow = 3,
    /// `valid_until` was not after `valid_from`.
    ValidityWindow = 4,
    /// An amount that must not be negative was.
    AmountNegative = 5,
    /// A credit limit was negative.
    CreditLimitNegative = 6,
    /// More than [`BUCKET_SERVICES_MAX`] services.
    TooManyServices = 7,
    /// A reason longer than [`REASON_LEN_MAX`] bytes.
    ReasonTooLong = 8,
    /// An adjustment of zero.
    DeltaZero = 9,
    /// A negative used amount.
    UsedNegative = 10,
    /// A negative cap.
    CapNegative = 11,
    /// An account named as its own parent.
    OwnParent = 12,
    /// A closed account cannot be reopened.
    ClosingIsFinal = 13,
    /// An idempotency window above the maximum.
    WindowTooLong = 14,
    /// A sweep with a client op id, or a client command with the server's.
    SweepOpId = 15,
    /// Closing an account whose buckets reservations still hold.
    CloseWithOpenReservations = 16,
    /// An idempotency window of 0 ms.
    WindowZero = 17,
    /// A spend control's period is out of range (months 1..=12, offset
    /// within ±18:00, a fixed length from a minute to ten years).
    Period = 18,
    /// The account already has [`crate::ledger::LIMITS_PER_ACCOUNT_MAX`]
    /// spend controls.
    TooManyLimits = 19,
    /// Alert thresholds out of range (1..=250 %, increasing, at most 8).
    Thresholds = 20,
}

impl InvalidInput {
    fn from_code(code: u8) -> Option<InvalidInput> {
        use InvalidInput::*;
        Some(match code {
            1 => AmountNotPositive,
            2 => MinAmount,
            3 => ExpiryNotAfterNow,
            4 => ValidityWindow,
            5 => AmountNegative,
            6 => CreditLimitNegative,
            7 => TooManyServices,
            8 => ReasonTooLong,
            9 => DeltaZero,
            10 => UsedNegative,
            11 => CapNegative,
            12 => OwnParent,
            13 => ClosingIsFinal,
            14 => WindowTooLong,
            15 => SweepOpId,
            16 => CloseWithOpenReservations,
            17 => WindowZero,
            18 => Period,
            19 => TooManyLimits,
            20 => Thresholds,
            _ => return None,
        })
    }
}

impl std::fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use InvalidInput::*;
        f.write_str(match self {
            AmountNotPositive => "amount must be positive",
            MinAmount => "min_amount must be positive and at most amount",
            ExpiryNotAfterNow => "expiry must be after now",
            ValidityWindow => "valid_until must be after valid_from",
            AmountNegative => "amount must not be negative",
            CreditLimitNegative => "credit_limit must not be negative",
            TooManyServices => "too many services on a bucket",
            ReasonTooLong => "reason too long",
            DeltaZero => "adjustment must not be zero",
            UsedNegative => "used must not be negative",
            CapNegative => "cap must not be negative",
            OwnParent => "account cannot be its own parent",
            ClosingIsFinal => "a closed account cannot change status",
            WindowTooLong => "idempotency window must be at most 7 days",
            TooManyLimits => "the account has the maximum number of spend controls",
            Thresholds => "alert thresholds must be 1 to 250 percent, increasing, at most 8",
            Period => "period out of range: 1 to 12 months, a UTC offset within ±18:00, or a fixed length from one minute to ten years",
            SweepOpId => "sweeps use op id 0 and client operations a non-zero id",
            // An op recorded in the same millisecond as a window of 0
            // forgot everything up to it could not be told apart, on
            // restore, from the ops that window forgot.
            WindowZero => "idempotency window must be at least 1 ms",
            CloseWithOpenReservations => {
                "an account cannot be closed while reservations hold its credit; settle or release them first"
            }
        })
    }
}

/// The result of one operation, as stored for idempotent retries.
pub type OpResult = Result<Outcome, LedgerError>;

impl Command {
    const TAG_CREATE: u8 = 1;
    const TAG_STATUS: u8 = 2;
    const TAG_LIMIT: u8 = 3;
    const TAG_GRANT: u8 = 4;
    const TAG_CREDIT: u8 = 5;
    const TAG_ADJUST: u8 = 6;
    const TAG_RESERVE: u8 = 7;
    const TAG_COMMIT: u8 = 8;
    const TAG_RELEASE: u8 = 9;
    const TAG_SWEEP: u8 = 10;
    const TAG_WINDOW: u8 = 11;
    const TAG_CONTROL: u8 = 12;

    /// Writes the canonical encoding.
    pub fn encode<S: Sink>(&self, s: &mut S) {
        match self {
            Command::CreateAccount {
                account,
                parent,
                draws_on_parent,
            } => {
                s.u8(Self::TAG_CREATE);
                s.account(*account);
                s.u64(parent.map_or(0, |p| p.0));
                s.bool(parent.is_some());
                s.bool(*draws_on_parent);
            }
            Command::SetStatus { account, status } => {
                s.u8(Self::TAG_STATUS);
                s.account(*account);
                s.u8(status.code());
            }
            Command::SetLimit {
                account,
                unit,
                cap,
                period,
                soft,
                alerts,
            } => {
                // The lifetime hard cap keeps its original encoding, so
                // logs written before periods existed read the same.
                let plain = *period == Period::Lifetime && !soft && alerts.is_empty();
                s.u8(if plain {
                    Self::TAG_LIMIT
                } else {
                    Self::TAG_CONTROL
                });
                s.account(*account);
                s.unit(*unit);
                s.bool(cap.is_some());
                s.amount(cap.unwrap_or_default());
                if !plain {
                    encode_period(s, period);
                    s.bool(*soft);
                    s.u8(alerts.len() as u8);
                    for a in alerts {
                        s.u8(*a);
                    }
                }
            }
            Command::GrantBucket { account, spec } => {
                s.u8(Self::TAG_GRANT);
                s.account(*account);
                s.unit(spec.unit);
                s.amount(spec.amount);
                s.time(spec.valid_from);
                s.time(spec.valid_until);
                s.u16(spec.priority as u16);
                s.amount(spec.credit_limit);
                s.u16(spec.services.len() as u16);
                for service in &spec.services {
                    s.service(*service);
                }
            }
            Command::Credit {
                account,
                unit,
                amount,
                bucket,
                kind,
                reason,
            } => {
                s.u8(Self::TAG_CREDIT);
                s.account(*account);
                s.unit(*unit);
                s.amount(*amount);
                s.bool(bucket.is_some());
                s.u64(bucket.map_or(0, |b| b.0));
                s.u8(match kind {
                    CreditKind::TopUp => 0,
                    CreditKind::Refund => 1,
                });
                s.bytes16(reason.as_bytes());
            }
            Command::Adjust {
                account,
                bucket,
                delta,
                reason,
            } => {
                s.u8(Self::TAG_ADJUST);
                s.account(*account);
                s.bucket(*bucket);
                s.amount(*delta);
                s.bytes16(reason.as_bytes());
            }
            Command::Reserve {
                account,
                unit,
                amount,
                min_amount,
                service,
                expires_at,
            } => {
                s.u8(Self::TAG_RESERVE);
                s.account(*account);
                s.unit(*unit);
                s.amount(*amount);
                s.amount(*min_amount);
                s.bool(service.is_some());
                s.u32(service.map_or(0, |v| v.0));
                s.time(*expires_at);
            }
            Command::Commit {
                reservation,
                used,
                release_rest,
            } => {
                s.u8(Self::TAG_COMMIT);
                s.reservation(*reservation);
                s.amount(*used);
                s.bool(*release_rest);
            }
            Command::Release { reservation } => {
                s.u8(Self::TAG_RELEASE);
                s.reservation(*reservation);
            }
            Command::Sweep => s.u8(Self::TAG_SWEEP),
            Command::SetIdempotencyWindow { window_ms } => {
                s.u8(Self::TAG_WINDOW);
                s.u64(*window_ms);
            }
        }
    }

    /// Stable digest of the content (not the op id), for idempotency checks.
    pub fn digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(128);
        self.encode(&mut bytes);
        crate::codec::digest_of(&bytes)
    }

    /// Reads a command written by [`Command::encode`].
    pub fn decode(r: &mut Reader<'_>) -> Result<Command, DecodeError> {
        let tag = r.u8()?;
        Ok(match tag {
            Self::TAG_CREATE => {
                let account = r.account()?;
                let parent = r.u64()?;
                let has_parent = r.bool()?;
                let draws_on_parent = r.bool()?;
                Command::CreateAccount {
                    account,
                    parent: has_parent.then_some(AccountId(parent)),
                    draws_on_parent,
                }
            }
            Self::TAG_STATUS => Command::SetStatus {
                account: r.account()?,
                status: AccountStatus::from_code(r.u8()?).ok_or(DecodeError::Invalid("status"))?,
            },
            tag @ (Self::TAG_LIMIT | Self::TAG_CONTROL) => {
                let account = r.account()?;
                let unit = r.unit()?;
                let has_cap = r.bool()?;
                let cap = r.amount()?;
                let (period, soft, alerts) = if tag == Self::TAG_CONTROL {
                    (decode_period(r)?, r.bool()?, decode_thresholds(r)?)
                } else {
                    (Period::Lifetime, false, Vec::new())
                };
                Command::SetLimit {
                    account,
                    unit,
                    cap: has_cap.then_some(cap),
                    period,
                    soft,
                    alerts,
                }
            }
            Self::TAG_GRANT => {
                let account = r.account()?;
                let unit = r.unit()?;
                let amount = r.amount()?;
                let valid_from = r.time()?;
                let valid_until = r.time()?;
                let priority = r.u16()? as i16;
                let credit_limit = r.amount()?;
                let count = r.u16()? as usize;
                if count > BUCKET_SERVICES_MAX {
                    return Err(DecodeError::Invalid("too many services"));
                }
                let services = (0..count).map(|_| r.service()).collect::<Result<_, _>>()?;
                Command::GrantBucket {
                    account,
                    spec: BucketSpec {
                        unit,
                        amount,
                        valid_from,
                        valid_until,
                        priority,
                        services,
                        credit_limit,
                    },
                }
            }
            Self::TAG_CREDIT => {
                let account = r.account()?;
                let unit = r.unit()?;
                let amount = r.amount()?;
                let has_bucket = r.bool()?;
                let bucket = r.bucket()?;
                let kind = match r.u8()? {
                    0 => CreditKind::TopUp,
                    1 => CreditKind::Refund,
                    _ => return Err(DecodeError::Invalid("credit kind")),
                };
                let reason = decode_reason(r)?;
                Command::Credit {
                    account,
                    unit,
                    amount,
                    bucket: has_bucket.then_some(bucket),
                    kind,
                    reason,
                }
            }
            Self::TAG_ADJUST => Command::Adjust {
                account: r.account()?,
                bucket: r.bucket()?,
                delta: r.amount()?,
                reason: decode_reason(r)?,
            },
            Self::TAG_RESERVE => {
                let account = r.account()?;
                let unit = r.unit()?;
                let amount = r.amount()?;
                let min_amount = r.amount()?;
                let has_service = r.bool()?;
                let service = r.service()?;
                let expires_at = r.time()?;
                Command::Reserve {
                    account,
                    unit,
                    amount,
                    min_amount,
                    service: has_service.then_some(service),
                    expires_at,
                }
            }
            Self::TAG_COMMIT => Command::Commit {
                reservation: r.reservation()?,
                used: r.amount()?,
                release_rest: r.bool()?,
            },
            Self::TAG_RELEASE => Command::Release {
                reservation: r.reservation()?,
            },
            Self::TAG_SWEEP => Command::Sweep,
            Self::TAG_WINDOW => Command::SetIdempotencyWindow {
                window_ms: r.u64()?,
            },
            _ => return Err(DecodeError::Invalid("command tag")),
        })
    }
}

/// Writes a period: kind 0 lifetime, 1..=12 months (anchor, offset), 13
/// fixed (anchor, length).
pub(crate) fn encode_period<S: Sink>(s: &mut S, p: &Period) {
    s.u8(p.kind());
    match *p {
        Period::Lifetime => {}
        Period::Months {
            anchor, offset_min, ..
        } => {
            s.time(anchor);
            s.u16(offset_min as u16);
        }
        Period::Fixed { anchor, length_ms } => {
            s.time(anchor);
            s.u64(length_ms);
        }
    }
}

/// Reads what [`encode_period`] wrote, refusing a period out of range.
pub(crate) fn decode_period(r: &mut Reader<'_>) -> Result<Period, DecodeError> {
    let p = match r.u8()? {
        0 => Period::Lifetime,
        months @ 1..=12 => Period::Months {
            months,
            anchor: r.time()?,
            offset_min: r.u16()? as i16,
        },
        crate::period::PERIOD_KIND_FIXED => Period::Fixed {
            anchor: r.time()?,
            length_ms: r.u64()?,
        },
        _ => return Err(DecodeError::Invalid("period kind")),
    };
    p.validate()
        .map_err(|_| DecodeError::Invalid("period out of range"))?;
    Ok(p)
}

/// Most alert thresholds on one spend control.
pub const ALERTS_PER_LIMIT_MAX: usize = 8;
/// Highest alert threshold, percent of the cap (soft caps are passed).
pub const ALERT_PCT_MAX: u8 = 250;

/// Whether alert thresholds are in range: 1..=250 %, strictly increasing,
/// at most [`ALERTS_PER_LIMIT_MAX`].
pub fn thresholds_valid(alerts: &[u8]) -> bool {
    alerts.len() <= ALERTS_PER_LIMIT_MAX
        && alerts.iter().all(|a| (1..=ALERT_PCT_MAX).contains(a))
        && alerts.windows(2).all(|w| w[0] < w[1])
}

/// Reads a count and that many alert thresholds, refusing any out of range.
pub(crate) fn decode_thresholds(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let n = r.u8()? as usize;
    if n > ALERTS_PER_LIMIT_MAX {
        return Err(DecodeError::Invalid("too many alert thresholds"));
    }
    let alerts = (0..n).map(|_| r.u8()).collect::<Result<Vec<u8>, _>>()?;
    if !thresholds_valid(&alerts) {
        return Err(DecodeError::Invalid("alert thresholds"));
    }
    Ok(alerts)
}

fn decode_reason(r: &mut Reader<'_>) -> Result<Arc<str>, DecodeError> {
    let bytes = r.bytes16(REASON_LEN_MAX)?;
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid("reason utf-8"))?;
    Ok(Arc::from(text))
}

impl Operation {
    /// Writes the operation (op id, then command).
    pub fn encode<S: Sink>(&self, s: &mut S) {
        s.op(self.op);
        self.command.encode(s);
    }

    /// Reads an operation written by [`Operation::encode`].
    pub fn decode(r: &mut Reader<'_>) -> Result<Operation, DecodeError> {
        let op = r.op()?;
        let command = Command::decode(r)?;
        Ok(Operation { op, command })
    }
}

fn encode_holds<S: Sink>(s: &mut S, holds: &[Hold]) {
    s.u16(holds.len() as u16);
    for h in holds {
        s.account(h.account);
        s.bucket(h.bucket);
        s.amount(h.amount);
    }
}

fn decode_holds(r: &mut Reader<'_>) -> Result<Holds, DecodeError> {
    let count = r.u16()? as usize;
    if count > crate::ledger::HOLDS_MAX {
        return Err(DecodeError::Invalid("too many holds"));
    }
    (0..count)
        .map(|_| {
            Ok(Hold {
                account: r.account()?,
                bucket: r.bucket()?,
                amount: r.amount()?,
            })
        })
        .collect()
}

/// Writes an operation's result (for snapshots of the idempotency table).
pub(crate) fn encode_result<S: Sink>(s: &mut S, result: &OpResult) {
    match result {
        Ok(outcome) => {
            s.u8(0);
            match outcome {
                Outcome::AccountCreated => s.u8(1),
                Outcome::StatusSet => s.u8(2),
                Outcome::LimitSet => s.u8(3),
                Outcome::BucketGranted { bucket } => {
                    s.u8(4);
                    s.bucket(*bucket);
                }
                Outcome::BalanceChanged { bucket, balance } => {
                    s.u8(5);
                    s.bucket(*bucket);
                    s.amount(*balance);
                }
                Outcome::Reserved {
                    reservation,
                    granted,
                    holds,
                } => {
                    s.u8(6);
                    s.reservation(*reservation);
                    s.amount(*granted);
                    encode_holds(s, holds);
                }
                Outcome::Committed {
                    debited,
                    released,
                    remaining,
                } => {
                    s.u8(7);
                    encode_holds(s, debited);
                    s.amount(*released);
                    s.amount(*remaining);
                }
                Outcome::Released { released } => {
                    s.u8(8);
                    s.amount(*released);
                }
                Outcome::Swept {
                    reservations,
                    buckets,
                    more,
                } => {
                    s.u8(9);
                    s.u32(*reservations);
                    s.u32(*buckets);
                    s.bool(*more);
                }
                Outcome::WindowSet => s.u8(10),
            }
        }
        Err(e) => {
            s.u8(1);
            match e {
                LedgerError::InvalidOpId => s.u8(1),
                LedgerError::OpIdReused => s.u8(2),
                LedgerError::AccountExists(a) => {
                    s.u8(3);
                    s.account(*a);
                }
                LedgerError::AccountNotFound(a) => {
                    s.u8(4);
                    s.account(*a);
                }
                LedgerError::AccountNotActive { account, status } => {
                    s.u8(5);
                    s.account(*account);
                    s.u8(status.code());
                }
                LedgerError::HierarchyTooDeep(n) => {
                    s.u8(6);
                    s.u32(*n as u32);
                }
                LedgerError::TooManyBuckets(n) => {
                    s.u8(7);
                    s.u32(*n as u32);
                }
                LedgerError::BucketNotFound(b) => {
                    s.u8(8);
                    s.bucket(*b);
                }
                LedgerError::UnitMismatch { bucket, request } => {
                    s.u8(9);
                    s.unit(*bucket);
                    s.unit(*request);
                }
                LedgerError::Invalid(what) => {
                    s.u8(10);
                    s.u8(*what as u8);
                }
                LedgerError::InsufficientFunds { available } => {
                    s.u8(11);
                    s.amount(*available);
                }
                LedgerError::LimitExceeded {
                    account,
                    headroom,
                    period,
                } => {
                    // Code 12 is the lifetime cap's, as stored before
                    // periods existed.
                    s.u8(if *period == 0 { 12 } else { 17 });
                    s.account(*account);
                    s.amount(*headroom);
                    if *period != 0 {
                        s.u8(*period);
                    }
                }
                LedgerError::ReservationNotFound(r) => {
                    s.u8(13);
                    s.reservation(*r);
                }
                LedgerError::ReservationExpired(r) => {
                    s.u8(14);
                    s.reservation(*r);
                }
                LedgerError::CommitExceedsReservation { remaining } => {
                    s.u8(15);
                    s.amount(*remaining);
                }
                LedgerError::BalanceOverflow => s.u8(16),
            }
        }
    }
}

pub(crate) fn decode_result(r: &mut Reader<'_>) -> Result<OpResult, DecodeError> {
    Ok(match r.u8()? {
        0 => Ok(match r.u8()? {
            1 => Outcome::AccountCreated,
            2 => Outcome::StatusSet,
            3 => Outcome::LimitSet,
            4 => Outcome::BucketGranted {
                bucket: r.bucket()?,
            },
            5 => Outcome::BalanceChanged {
                bucket: r.bucket()?,
                balance: r.amount()?,
            },
            6 => Outcome::Reserved {
                reservation: r.reservation()?,
                granted: r.amount()?,
                holds: decode_holds(r)?,
            },
            7 => Outcome::Committed {
                debited: decode_holds(r)?,
                released: r.amount()?,
                remaining: r.amount()?,
            },
            8 => Outcome::Released {
                released: r.amount()?,
            },
            9 => Outcome::Swept {
                reservations: r.u32()?,
                buckets: r.u32()?,
                more: r.bool()?,
            },
            10 => Outcome::WindowSet,
            _ => return Err(DecodeError::Invalid("outcome tag")),
        }),
        1 => Err(match r.u8()? {
            1 => LedgerError::InvalidOpId,
            2 => LedgerError::OpIdReused,
            3 => LedgerError::AccountExists(r.account()?),
            4 => LedgerError::AccountNotFound(r.account()?),
            5 => LedgerError::AccountNotActive {
                account: r.account()?,
                status: AccountStatus::from_code(r.u8()?).ok_or(DecodeError::Invalid("status"))?,
            },
            6 => LedgerError::HierarchyTooDeep(r.u32()? as usize),
            7 => LedgerError::TooManyBuckets(r.u32()? as usize),
            8 => LedgerError::BucketNotFound(r.bucket()?),
            9 => LedgerError::UnitMismatch {
                bucket: r.unit()?,
                request: r.unit()?,
            },
            10 => LedgerError::Invalid(
                InvalidInput::from_code(r.u8()?)
                    .ok_or(DecodeError::Invalid("invalid-input code"))?,
            ),
            11 => LedgerError::InsufficientFunds {
                available: r.amount()?,
            },
            12 => LedgerError::LimitExceeded {
                account: r.account()?,
                headroom: r.amount()?,
                period: 0,
            },
            17 => LedgerError::LimitExceeded {
                account: r.account()?,
                headroom: r.amount()?,
                period: r.u8()?,
            },
            13 => LedgerError::ReservationNotFound(r.reservation()?),
            14 => LedgerError::ReservationExpired(r.reservation()?),
            15 => LedgerError::CommitExceedsReservation {
                remaining: r.amount()?,
            },
            16 => LedgerError::BalanceOverflow,
            _ => return Err(DecodeError::Invalid("error tag")),
        }),
        _ => return Err(DecodeError::Invalid("result tag")),
    })
}
