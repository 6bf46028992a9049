//! Every size limit of the protocol, as listed in `SPEC.md` § Limits.

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes of the frame header after the length prefix: kind, flags, request id.
pub const HEADER_LEN: usize = 10;
/// Maximum frame length (bytes after the length prefix) before negotiation.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;
/// Absolute cap on any frame length; no negotiation goes above it.
pub const MAX_FRAME_CAP: u32 = 16 << 20;
/// Smallest `max_frame` a server may announce in `HELLO_OK`.
pub const MIN_NEGOTIATED_MAX_FRAME: u32 = 64 << 10;
/// Maximum frame length a server accepts before `HELLO` has succeeded.
pub const PRE_AUTH_MAX_FRAME: u32 = 4096;

/// Longest `HELLO.credential`, in bytes.
pub const CREDENTIAL_MAX: usize = 256;
/// Longest `HELLO.client_name`, in bytes.
pub const CLIENT_NAME_MAX: usize = 64;
/// Longest `HELLO_OK.server_name`, in bytes.
pub const SERVER_NAME_MAX: usize = 64;
/// Longest `BACKUP.dir`, in bytes.
pub const BACKUP_DIR_MAX: usize = 4096;
/// Longest session id, in bytes.
pub const SESSION_ID_MAX: usize = 128;
/// Longest redirect address in a CCA service, in bytes.
pub const REDIRECT_MAX: usize = 256;
/// Longest reason on a top-up or adjustment, in bytes.
pub const REASON_MAX: usize = 256;
/// Longest `ERROR.message`, in bytes.
pub const ERROR_MESSAGE_MAX: usize = 1024;
/// Shortest unit name, in bytes.
pub const UNIT_LEN_MIN: usize = 1;
/// Longest unit name, in bytes.
pub const UNIT_LEN_MAX: usize = 16;
/// Largest decimal scale (digits after the point).
pub const DECIMAL_SCALE_MAX: u8 = 28;
/// Largest decimal mantissa magnitude: 2^96 - 1.
pub const DECIMAL_MANTISSA_MAX: u128 = (1 << 96) - 1;

/// Most entries in a `BATCH` or `BATCH_RESULT`.
pub const BATCH_MAX: usize = 1024;
/// Most services in a CCR or CCA.
pub const SERVICES_MAX: usize = 32;
/// Most attributes on one CCR (protocol version 2). With the at most 8 a
/// server binds to a product, a usage never carries more than the 16 the
/// rating crate matches.
pub const ATTRIBUTES_MAX: usize = 8;
/// Longest attribute key, in bytes (at least 1): the longest name a rate
/// card condition can test.
pub const ATTRIBUTE_KEY_MAX: usize = 32;
/// Longest attribute value, in bytes: the longest value a rate card
/// condition can test.
pub const ATTRIBUTE_VALUE_MAX: usize = 64;
/// Most (unit, amount) pairs in a requested, used, granted or price list.
pub const UNIT_AMOUNTS_MAX: usize = 8;
/// Most (unit, amount) pairs in a CCA balance list.
pub const BALANCE_ENTRIES_MAX: usize = 32;
/// Most services a bucket may be restricted to.
pub const BUCKET_SERVICES_MAX: usize = 32;
/// Most buckets in a `BALANCE` answer.
pub const BUCKETS_MAX: usize = 1024;
/// Most reservations in a `RESERVATIONS` answer.
pub const RESERVATIONS_MAX: usize = 4096;
/// Longest rate card name (file name) in `RATECARD_APPLY`.
pub const RATECARD_NAME_MAX: usize = 256;
/// Longest rate card text in `RATECARD_APPLY`, in bytes.
pub const RATECARD_TEXT_MAX: usize = 60_000;
/// Longest rate card id.
pub const RATECARD_ID_MAX: usize = 64;
/// Longest `RATECARD_RESULT.message` (validation errors).
pub const RATECARD_MESSAGE_MAX: usize = 8192;
/// Most cards in `RATECARDS`.
pub const RATECARDS_MAX: usize = 64;
/// Most versions per card in `RATECARDS`.
pub const RATECARD_VERSIONS_MAX: usize = 1024;
/// Most spend controls in a `BALANCE` answer (protocol version 3).
pub const LIMITS_MAX: usize = 64;
/// Most months in a calendar spend-control period (12: a contract year).
pub const PERIOD_MONTHS_MAX: u8 = 12;
/// Largest |UTC offset| of a calendar period's local time, in minutes:
/// ±18 h, the widest offset ISO 8601 tools accept.
pub const PERIOD_OFFSET_MIN_MAX: i16 = 1080;
/// Shortest fixed-length spend-control period: one minute.
pub const PERIOD_LENGTH_MIN_MS: u64 = 60_000;
/// Longest fixed-length spend-control period: 3653 days (ten years).
pub const PERIOD_LENGTH_MAX_MS: u64 = 3653 * 86_400_000;
/// Most alert thresholds on one spend control (protocol version 3).
pub const ALERT_THRESHOLDS_MAX: usize = 8;
/// Highest alert threshold, percent of the cap: a soft cap can be passed,
/// so thresholds above 100 % are meaningful.
pub const ALERT_PCT_MAX: u8 = 250;
/// Alerts a Reckon server keeps, the newest, for subscribers that resume
/// (SPEC 6.11); the ledger keeps exactly this many.
pub const ALERTS_KEPT: usize = 4096;
/// Most alerts a server holds for one connection without having written
/// them to its socket; a subscriber further behind is disconnected
/// rather than buffered for without bound (SPEC 6.11).
pub const ALERT_QUEUE_MAX: usize = 1024;
