//! The protocol's code tables: CCA result codes, admin result codes and
//! `ERROR` codes.
//!
//! Each is an open newtype over its wire integer, so a peer that receives a
//! code it does not know still decodes the frame; `SPEC.md` says how a
//! client treats unknown codes.

use std::fmt;

macro_rules! code_table {
    (
        $(#[$meta:meta])*
        $name:ident($int:ty) {
            $( $(#[$cmeta:meta])* $konst:ident = $value:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $int);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: $name = $name($value); )*

            /// Every code this version of the protocol defines, in table order.
            pub const ALL: &'static [$name] = &[$($name::$konst),*];

            /// The code's name from `SPEC.md`, or `None` for an unknown code.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($konst)), )*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => write!(f, "{}({})", n, self.0),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

code_table! {
    /// A credit-control result code (CCA `result_code` and per-service
    /// `result_code`), using Diameter's values (RFC 6733 / RFC 4006).
    ResultCode(u32) {
        /// The request succeeded.
        SUCCESS = 2001,
        /// The server is overloaded; retry later (the request was not applied).
        TOO_BUSY = 3004,
        /// The service is denied to this user (e.g. the account is suspended
        /// or the bucket restrictions exclude the service).
        END_USER_SERVICE_DENIED = 4010,
        /// The service is not subject to credit control; deliver it unmetered.
        CREDIT_CONTROL_NOT_APPLICABLE = 4011,
        /// The credit is exhausted (or a limit is reached).
        CREDIT_LIMIT_REACHED = 4012,
        /// The session id is unknown (UPDATE/TERMINATE without INITIAL, or expired).
        UNKNOWN_SESSION_ID = 5002,
        /// The caller may not act on this account.
        AUTHORIZATION_REJECTED = 5003,
        /// A field's value is invalid (e.g. an inconsistent request type and event action).
        INVALID_AVP_VALUE = 5004,
        /// A required field is missing (e.g. an empty session id or no service).
        MISSING_AVP = 5005,
        /// The request cannot be carried out for another reason.
        UNABLE_TO_COMPLY = 5012,
        /// The account does not exist (or is not visible to the caller).
        USER_UNKNOWN = 5030,
        /// The usage could not be rated (no tariff for the service or unit).
        RATING_FAILED = 5031,
        /// The session id and request number were used before for a request
        /// with other content; nothing applied (Reckon-specific).
        REQUEST_ID_REUSED = 5040,
        /// `timestamp_ms` is outside the retransmission window; nothing
        /// applied (Reckon-specific).
        REQUEST_TOO_OLD = 5041,
        /// A refund that no recorded, unrefunded charge of the named session
        /// covers; nothing applied (Reckon-specific).
        REFUND_NOT_COVERED = 5042,
    }
}

impl ResultCode {
    /// True for 2xxx codes (success).
    pub fn is_success(self) -> bool {
        (2000..3000).contains(&self.0)
    }

    /// True for 4xxx codes (transient failure: may succeed later).
    pub fn is_transient(self) -> bool {
        (4000..5000).contains(&self.0)
    }

    /// True for 5xxx codes (permanent failure: do not retry unchanged).
    pub fn is_permanent(self) -> bool {
        (5000..6000).contains(&self.0)
    }
}

code_table! {
    /// The result of an admin operation (`ADMIN_RESULT.code`).
    AdminCode(u32) {
        /// The operation succeeded (or was an idempotent repeat of one that did).
        OK = 0,
        /// The op id is zero.
        INVALID_OP_ID = 1,
        /// The op id was used before for a different request.
        OP_ID_REUSED = 2,
        /// An account with that id exists already.
        ACCOUNT_EXISTS = 3,
        /// No such account (or the parent named does not exist).
        ACCOUNT_NOT_FOUND = 4,
        /// The account or an ancestor is suspended or closed.
        ACCOUNT_NOT_ACTIVE = 5,
        /// The hierarchy would become too deep.
        HIERARCHY_TOO_DEEP = 6,
        /// The account has the maximum number of buckets.
        TOO_MANY_BUCKETS = 7,
        /// No such bucket on the account.
        BUCKET_NOT_FOUND = 8,
        /// The bucket counts another unit than the request.
        UNIT_MISMATCH = 9,
        /// Not enough available credit; `balance` carries what is available.
        INSUFFICIENT_FUNDS = 10,
        /// A cap would be exceeded; `balance` carries the remaining headroom.
        LIMIT_EXCEEDED = 11,
        /// A balance would leave the ledger's range.
        BALANCE_OVERFLOW = 12,
        /// An amount has more decimal places than the ledger keeps (9).
        AMOUNT_TOO_PRECISE = 13,
        /// An amount is outside the ledger's range (±10^18).
        AMOUNT_OUT_OF_RANGE = 14,
        /// The unit is not one the server knows (built in, configured, or
        /// named by a price or rate card).
        UNKNOWN_UNIT = 15,
        /// An input is out of range, no more specific code applies.
        INVALID_INPUT = 100,
        /// An amount that must be positive was not.
        AMOUNT_NOT_POSITIVE = 101,
        /// A minimum amount was zero, negative or above the amount.
        MIN_AMOUNT = 102,
        /// An expiry was not after now.
        EXPIRY_NOT_AFTER_NOW = 103,
        /// `valid_until_ms` was not after `valid_from_ms`.
        VALIDITY_WINDOW = 104,
        /// An amount that must not be negative was.
        AMOUNT_NEGATIVE = 105,
        /// A credit limit was negative.
        CREDIT_LIMIT_NEGATIVE = 106,
        /// Too many services on a bucket.
        TOO_MANY_SERVICES = 107,
        /// A reason was too long.
        REASON_TOO_LONG = 108,
        /// An adjustment of zero.
        DELTA_ZERO = 109,
        /// A negative used amount.
        USED_NEGATIVE = 110,
        /// A negative cap.
        CAP_NEGATIVE = 111,
        /// An account named as its own parent.
        OWN_PARENT = 112,
        /// A closed account cannot change status.
        CLOSING_IS_FINAL = 113,
        /// An idempotency window above the maximum.
        WINDOW_TOO_LONG = 114,
        /// An op id reserved for the server.
        SWEEP_OP_ID = 115,
        /// Closing an account while reservations still hold its credit.
        CLOSE_WITH_OPEN_RESERVATIONS = 116,
        /// An idempotency window of 0 ms.
        WINDOW_ZERO = 117,
        /// A spend control's period is out of range (months 1 to 12, a UTC
        /// offset within ±18:00, a fixed length from a minute to ten years).
        PERIOD_INVALID = 118,
        /// The account has the maximum number of spend controls (64).
        TOO_MANY_LIMITS = 119,
        /// Alert thresholds out of range: 1 to 250 percent, increasing, at
        /// most 8.
        THRESHOLDS_INVALID = 120,
    }
}

impl AdminCode {
    /// True for [`AdminCode::OK`].
    pub fn is_ok(self) -> bool {
        self == AdminCode::OK
    }
}

code_table! {
    /// A protocol-level error code (`ERROR.code`).
    ErrorCode(u16) {
        /// The frame was malformed (bad flags, truncated or trailing body,
        /// bad string, unit, decimal, enum or count); nothing was applied.
        MALFORMED_FRAME = 1,
        /// The frame's length exceeds the maximum; the connection is closed.
        FRAME_TOO_LARGE = 2,
        /// The kind byte is not defined by the negotiated version.
        UNKNOWN_KIND = 3,
        /// No protocol version in the client's range is supported; the connection is closed.
        UNSUPPORTED_VERSION = 4,
        /// A request other than `HELLO` arrived before `HELLO` succeeded; the connection is closed.
        NOT_AUTHENTICATED = 5,
        /// The credential was not accepted; the connection is closed.
        AUTH_FAILED = 6,
        /// The credential may not perform this request.
        FORBIDDEN = 7,
        /// The server is overloaded and did not apply the request; retry with backoff.
        BUSY = 8,
        /// A `BATCH` has more than 1024 entries; nothing was applied.
        BATCH_TOO_LARGE = 9,
        /// The server failed internally; the outcome of a mutating request is unknown: retry with the same ids.
        INTERNAL = 10,
        /// The server is shutting down; reconnect later.
        SHUTTING_DOWN = 11,
        /// A known kind not valid in this direction or state (a response kind
        /// sent as a request, a second `HELLO`).
        UNEXPECTED_KIND = 12,
    }
}
