//! The engine's public vocabulary: requests, answers, callers, codes,
//! configuration and limits.

#[allow(unused_imports)]
use super::*;

/// Diameter-style result codes used in answers.
pub mod result_code {
    /// The request succeeded.
    pub const SUCCESS: u32 = 2001;
    /// Too busy: retry later (another server or after a pause).
    pub const TOO_BUSY: u32 = 3004;
    /// The service is not allowed for this user.
    pub const END_USER_SERVICE_DENIED: u32 = 4010;
    /// Credit control does not apply to this service.
    pub const CREDIT_CONTROL_NOT_APPLICABLE: u32 = 4011;
    /// No credit left for this service.
    pub const CREDIT_LIMIT_REACHED: u32 = 4012;
    /// The session id is not known (UPDATE/TERMINATE without INITIAL).
    pub const UNKNOWN_SESSION_ID: u32 = 5002;
    /// The caller may not act on this account.
    pub const AUTHORIZATION_REJECTED: u32 = 5003;
    /// A field has a value the server cannot accept.
    pub const INVALID_AVP_VALUE: u32 = 5004;
    /// A required field is missing.
    pub const MISSING_AVP: u32 = 5005;
    /// The request cannot be processed (e.g. out-of-order request number).
    pub const UNABLE_TO_COMPLY: u32 = 5012;
    /// No such account.
    pub const USER_UNKNOWN: u32 = 5030;
    /// The usage could not be priced.
    pub const RATING_FAILED: u32 = 5031;
    /// The session id and request number were used before for a request
    /// with other content; nothing applied (Reckon-specific).
    pub const REQUEST_ID_REUSED: u32 = 5040;
    /// The request's timestamp lies outside the retransmission window
    /// (too old, or too far ahead of the server's clock); nothing applied
    /// (Reckon-specific).
    pub const REQUEST_TOO_OLD: u32 = 5041;
    /// A refund not covered by what the named session was charged and has
    /// not had refunded; nothing applied (Reckon-specific).
    pub const REFUND_NOT_COVERED: u32 = 5042;
}

/// The phase of a credit-control request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Opens a session and asks for first grants.
    Initial = 1,
    /// Reports usage and asks for more.
    Update = 2,
    /// Reports final usage and closes the session.
    Terminate = 3,
    /// A one-shot event (see [`EventAction`]).
    Event = 4,
}

/// What an EVENT request asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventAction {
    /// Not an event (session requests).
    None = 0,
    /// Debit the used units now.
    DirectDebit = 1,
    /// Credit the used units' price back.
    Refund = 2,
    /// Report what the account could spend.
    CheckBalance = 3,
    /// Report what the requested units would cost.
    PriceEnquiry = 4,
}

/// What the client must do when the granted units are the last ones.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FinalUnitAction {
    /// Not the final grant.
    None = 0,
    /// End the service when the grant is used.
    Terminate = 1,
    /// Redirect the user (e.g. to a top-up page).
    Redirect = 2,
    /// Restrict access (e.g. to free services).
    RestrictAccess = 3,
}

/// Units of one kind and how many.
pub type Quantity = (Unit, Decimal);

/// One service (rating group) within a credit-control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    /// The rating group or service id.
    pub service: ServiceId,
    /// Units asked for (empty: the service's default grant).
    pub requested: Vec<Quantity>,
    /// Units used since the last report.
    pub used: Vec<Quantity>,
    /// An UPDATE that reports usage and asks for no new grant (Diameter: an
    /// MSCC without Requested-Service-Unit). Otherwise an empty `requested`
    /// means the service's default grant.
    pub report_only: bool,
}

/// A credit-control request (the native form of a Diameter CCR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditControlRequest {
    /// The session's id, unique per client.
    pub session_id: Arc<str>,
    /// INITIAL / UPDATE / TERMINATE / EVENT.
    pub request_type: RequestType,
    /// Increases by one per request of the session.
    pub request_number: u32,
    /// The account charged.
    pub account: AccountId,
    /// For EVENT requests.
    pub event_action: EventAction,
    /// When the client first sent it, ms since the epoch (0: not given). A
    /// retransmission carries the original's; the engine refuses a request
    /// whose timestamp lies outside the retransmission window.
    pub timestamp_ms: u64,
    /// The services.
    pub services: Vec<ServiceRequest>,
    /// Usage attributes (model, region, ...) rate-card conditions match, on
    /// top of those the configuration binds to each service: at most
    /// [`REQUEST_ATTRIBUTES_MAX`] distinct keys. A bound key wins: a request
    /// naming it with another value is refused as `INVALID_AVP_VALUE`.
    /// Empty (no allocation) for most requests.
    pub attributes: Vec<(String, String)>,
}

/// One service's part of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAnswer {
    /// The rating group or service id.
    pub service: ServiceId,
    /// Per-service result code.
    pub result_code: u32,
    /// Units granted.
    pub granted: Vec<Quantity>,
    /// Seconds the grant is valid (0: no limit).
    pub validity_time_s: u32,
    /// Set when this grant is the last one.
    pub final_unit_action: FinalUnitAction,
    /// Why nothing was granted, when credit or a spend control refused.
    pub denial: Option<Denial>,
}

/// Why a service got no credit: so a gateway can tell its user "department
/// budget reached" rather than "no credit".
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The account and what it draws on have no credit left.
    NoCredit,
    /// A hard spend control refused.
    SpendControl {
        /// The account the control is on (the user's or an ancestor's).
        account: AccountId,
        /// The control's period kind (`Period::kind`: 0 lifetime, 1
        /// monthly, 12 yearly, 13 a fixed length).
        period: u8,
    },
}

impl Denial {
    /// Why nothing could be reserved: the spend control that bounded what
    /// was available (`Availability::bound_by`), else no credit.
    pub fn bounded_by(bound_by: Option<(AccountId, u8)>) -> Denial {
        match bound_by {
            Some((account, period)) => Denial::SpendControl { account, period },
            None => Denial::NoCredit,
        }
    }

    /// The denial a refused ledger reservation stands for, if it is one.
    pub fn of(e: &LedgerError) -> Option<Denial> {
        match e {
            LedgerError::InsufficientFunds { .. } => Some(Denial::NoCredit),
            LedgerError::LimitExceeded {
                account, period, ..
            } => Some(Denial::SpendControl {
                account: *account,
                period: *period,
            }),
            _ => None,
        }
    }
}

/// A credit-control answer (the native form of a Diameter CCA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditControlAnswer {
    /// Overall result code.
    pub result_code: u32,
    /// Per-service answers, in request order.
    pub services: Vec<ServiceAnswer>,
    /// For CHECK_BALANCE: what could be spent, per unit.
    pub balance: Vec<Quantity>,
    /// For PRICE_ENQUIRY: the price of the requested units.
    pub price: Vec<Quantity>,
}

impl CreditControlAnswer {
    pub(super) fn error(code: u32) -> Self {
        CreditControlAnswer {
            result_code: code,
            services: Vec::new(),
            balance: Vec::new(),
            price: Vec::new(),
        }
    }
}

/// Who is asking: the organisation a credential belongs to, or an admin.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// May act on every account.
    Admin,
    /// May act only on accounts under this organisation (root account).
    Org(AccountId),
}

/// A request to the engine.
#[derive(Clone, Debug)]
pub enum EngineRequest {
    /// Credit control.
    CreditControl(Caller, CreditControlRequest),
    /// A ledger operation or read (admin and account management).
    Ledger(Caller, LedgerRequest),
    /// Server-issued: release the grants of silent sessions.
    Supervise,
    /// Replaces prices and policies. Logged, so a replay prices every
    /// request with the configuration in force when it was first applied.
    Configure(EngineConfig),
    /// Validates a rate card file and activates its versions (admin only).
    /// Logged with its text, so a replay rebuilds the same rate book.
    ApplyRateCard {
        /// Who asks.
        caller: Caller,
        /// Idempotency key.
        op: u128,
        /// File name (format and error messages).
        name: Arc<str>,
        /// The file's text.
        text: Arc<str>,
    },
    /// Lists rate cards (one by id, or all when empty).
    ShowRateCards(String),
    /// Reads the spend-control alerts after a sequence number (never
    /// logged), those of the caller's organisation only.
    Alerts {
        /// Who asks.
        caller: Caller,
        /// Alerts with a sequence number above this.
        after: u64,
        /// At most this many.
        max: usize,
    },
    /// Reads the engine's gauges at its place in the order (never logged);
    /// with `digest`, also the state digest (walks the whole state).
    Gauges {
        /// Whether to compute the state digest.
        digest: bool,
    },
}

/// What the engine holds, read in the writer's order (see
/// [`EngineRequest::Gauges`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineGauges {
    /// Log position of the last request applied before this read.
    pub last_lsn: u64,
    /// Open charging sessions.
    pub sessions: u64,
    /// Open ledger reservations.
    pub reservations: u64,
    /// Accounts.
    pub accounts: u64,
    /// Answers remembered for retransmissions.
    pub answers: u64,
    /// Approximate memory those answers take, in bytes (index entries and
    /// the records not yet durable).
    pub answer_bytes: u64,
    /// [`crate::engine::Engine::state_digest`], when asked for.
    pub digest: Option<u64>,
}

/// The engine's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineResponse {
    /// Answer to credit control.
    CreditControl(CreditControlAnswer),
    /// Answer from the ledger.
    Ledger(LedgerResponse),
    /// The caller may not touch that account (or create a root account).
    Forbidden,
    /// The configuration was replaced.
    Configured,
    /// The configuration breaks a limit; nothing changed.
    ConfigRefused(String),
    /// The account does not exist, or is not visible to the caller.
    NotFound,
    /// The result of applying a rate card.
    RateCard(RateCardOutcome),
    /// The rate cards.
    RateCards(Vec<RateCardSummary>),
    /// An admin operation named a unit nobody declared; nothing changed.
    UnknownUnit(Unit),
    /// The engine's gauges.
    Gauges(EngineGauges),
    /// Alerts after the sequence number asked, oldest first.
    Alerts {
        /// The alerts (of the caller's organisation).
        alerts: Vec<reckon_balances::Alert>,
        /// The oldest sequence number still kept (a subscriber that asked
        /// for less than it one missed alerts).
        oldest: u64,
        /// Where the next read resumes: the last sequence number scanned,
        /// whosever alert it was (or the newest raised, when none was).
        resume_after: u64,
        /// The newest sequence number raised (0: none yet).
        last: u64,
    },
}

/// The price of one unit of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    /// Service it applies to; `None` for every service.
    pub service: Option<ServiceId>,
    /// The unit priced (e.g. `tokens_out`).
    pub unit: Unit,
    /// The unit charged (e.g. `USD`).
    pub charge_unit: Unit,
    /// Charge units per unit (at most 9 decimal places).
    pub per_unit: Decimal,
}

/// Grant sizing and validity for a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePolicy {
    /// Service it applies to; `None` for every service.
    pub service: Option<ServiceId>,
    /// Unit granted when a request asks for nothing specific.
    pub default_unit: Unit,
    /// Units granted when a request asks for nothing specific.
    pub default_grant: Decimal,
    /// Most units one grant may carry.
    pub max_grant: Decimal,
    /// Seconds a grant is valid.
    pub validity_s: u32,
}

/// The engine's configuration: prices and service policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Prices, most specific (service set) first when matching.
    pub prices: Vec<Price>,
    /// Service policies, most specific first when matching.
    pub policies: Vec<ServicePolicy>,
    /// Extra seconds a silent session is kept after its grant's validity.
    pub supervision_grace_s: u32,
    /// What a final grant tells the client to do.
    pub final_unit_action: FinalUnitAction,
    /// How long answers of finished sessions and events are kept for
    /// retransmissions, in milliseconds.
    pub answer_window_ms: u64,
    /// Rate-card attributes per service (e.g. service 11 is model "large").
    pub service_attributes: Vec<(ServiceId, Vec<(String, String)>)>,
    /// Units accepted beyond the built-in ones ([`BUILTIN_UNITS`]) and those
    /// the prices, policies and rate cards name: a unit nobody declared is
    /// refused, so a typo never opens a new bucket.
    pub units: Vec<Unit>,
    /// Most answers remembered at once, whatever the window (about 36
    /// bytes of memory each); past it the oldest are forgotten early.
    pub answers_max: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            prices: Vec::new(),
            policies: vec![ServicePolicy {
                service: None,
                default_unit: Unit::SECONDS,
                default_grant: Decimal::from(60),
                max_grant: Decimal::from(1_000_000_000u64),
                validity_s: 300,
            }],
            supervision_grace_s: 30,
            final_unit_action: FinalUnitAction::Terminate,
            answer_window_ms: ANSWER_WINDOW_MS_DEFAULT,
            service_attributes: Vec::new(),
            units: Vec::new(),
            answers_max: ANSWERS_MAX_DEFAULT as u64,
        }
    }
}

/// Units every server knows: service units and common currencies.
pub const BUILTIN_UNITS: &[&str] = &[
    "credits",
    "gpu_seconds",
    "gpu_hours",
    "tokens_in",
    "tokens_out",
    "requests",
    "octets",
    "seconds",
    "USD",
    "EUR",
    "GBP",
    "JPY",
    "CHF",
    "CAD",
    "AUD",
    "NZD",
    "CNY",
    "HKD",
    "SGD",
    "INR",
    "KRW",
    "BRL",
    "MXN",
    "ZAR",
    "SEK",
    "NOK",
    "DKK",
    "PLN",
];

/// Most prices, policies, products or extra units in a configuration.
pub const CONFIG_ENTRIES_MAX: usize = 4096;
/// Most attributes bound to one product (service).
pub const ATTRIBUTES_MAX: usize = 8;
/// Longest attribute name, in bytes.
pub const ATTRIBUTE_NAME_LEN_MAX: usize = 64;
/// Longest attribute value, in bytes.
pub const ATTRIBUTE_VALUE_LEN_MAX: usize = 128;
/// The retransmission window unless configured: 90 s, nine times
/// Diameter's recommended Tx timer (10 s), three times its watchdog Tw
/// (30 s, after which a peer fails over and retransmits), and longer than
/// a gateway's retry schedule. The log is kept for the window plus the
/// 30 s a request may be stamped ahead, so at full speed memory and disk
/// stop growing after two minutes (measured: at 2 minutes plus 30 s they
/// settled only at 155 s).
pub const ANSWER_WINDOW_MS_DEFAULT: u64 = 90_000;
/// How far ahead of the server's clock a request may be stamped: its answer
/// is kept until its own time plus the window, so this bounds how long the
/// log must keep records beyond the window.
pub const FUTURE_SKEW_MS_MAX: u64 = 30_000;

/// The future skew allowed with a window of `window_ms`.
pub fn future_skew_ms(window_ms: u64) -> u64 {
    window_ms.min(FUTURE_SKEW_MS_MAX)
}

/// Shortest retransmission window, in ms.
pub const ANSWER_WINDOW_MS_MIN: u64 = 1_000;
/// Longest retransmission window, in ms (the ledger's op-id window limit).
pub const ANSWER_WINDOW_MS_MAX: u64 = reckon_balances::ledger::WINDOW_MS_MAX;

impl EngineConfig {
    /// Checks every limit the log and snapshot encodings rely on, so a
    /// configuration that is accepted can always be logged and recovered.
    pub fn validate(&self) -> Result<(), String> {
        if self.prices.len() > CONFIG_ENTRIES_MAX
            || self.policies.len() > CONFIG_ENTRIES_MAX
            || self.service_attributes.len() > CONFIG_ENTRIES_MAX
            || self.units.len() > CONFIG_ENTRIES_MAX
        {
            return Err(format!(
                "at most {CONFIG_ENTRIES_MAX} prices, services, products and units"
            ));
        }
        for (i, p) in self.prices.iter().enumerate() {
            if p.per_unit.is_sign_negative() || p.per_unit.normalize().scale() > Amount::SCALE {
                return Err(format!(
                    "price[{i}].per_unit: must be >= 0 with at most {} decimal places",
                    Amount::SCALE
                ));
            }
            if Amount::from_decimal(p.per_unit).is_err() {
                return Err(format!("price[{i}].per_unit: beyond the ledger's range"));
            }
        }
        for (i, p) in self.policies.iter().enumerate() {
            for (field, v) in [
                ("default_grant", p.default_grant),
                ("max_grant", p.max_grant),
            ] {
                if v.is_sign_negative() || v.normalize().scale() > Amount::SCALE {
                    return Err(format!(
                        "service[{i}].{field}: must be >= 0 with at most {} decimal places",
                        Amount::SCALE
                    ));
                }
                if Amount::from_decimal(v).is_err() {
                    return Err(format!("service[{i}].{field}: beyond the ledger's range"));
                }
            }
            if p.validity_s == 0 {
                return Err(format!("service[{i}].validity_s: must be at least 1"));
            }
        }
        for (i, (_, attributes)) in self.service_attributes.iter().enumerate() {
            if attributes.len() > ATTRIBUTES_MAX
                || attributes.iter().any(|(k, v)| {
                    k.is_empty()
                        || k.len() > ATTRIBUTE_NAME_LEN_MAX
                        || v.len() > ATTRIBUTE_VALUE_LEN_MAX
                })
            {
                return Err(format!(
                    "product[{i}].attributes: at most {ATTRIBUTES_MAX}, names 1..={ATTRIBUTE_NAME_LEN_MAX} bytes, values at most {ATTRIBUTE_VALUE_LEN_MAX}"
                ));
            }
        }
        if !(ANSWER_WINDOW_MS_MIN..=ANSWER_WINDOW_MS_MAX).contains(&self.answer_window_ms) {
            return Err(format!(
                "retransmission window: must be between {} and {} seconds",
                ANSWER_WINDOW_MS_MIN / 1000,
                ANSWER_WINDOW_MS_MAX / 1000
            ));
        }
        if self.answers_max == 0 || self.answers_max > ANSWERS_MAX_LIMIT {
            return Err(format!(
                "retransmission_entries_max: must be between 1 and {ANSWERS_MAX_LIMIT}"
            ));
        }
        if self.supervision_grace_s > 24 * 3600 {
            return Err("supervision_grace_s: at most 86400".into());
        }
        Ok(())
    }
}

/// Where a charging session (or event) lives: its organisation (the root of
/// the account it charges) and its id. Ids are the client's choice, so two
/// organisations may use the same one without ever meeting.
pub type SessionKey = (AccountId, Arc<str>);

/// Most sessions kept at once; more INITIALs get TOO_BUSY.
pub const SESSIONS_MAX: usize = 10_000_000;
/// Most attributes on one request (the protocol's limit).
pub const REQUEST_ATTRIBUTES_MAX: usize = reckon_protocol::limits::ATTRIBUTES_MAX;
/// Longest request attribute key, in bytes (the protocol's limit).
pub const REQUEST_ATTRIBUTE_KEY_MAX: usize = reckon_protocol::limits::ATTRIBUTE_KEY_MAX;
/// Longest request attribute value, in bytes (the protocol's limit).
pub const REQUEST_ATTRIBUTE_VALUE_MAX: usize = reckon_protocol::limits::ATTRIBUTE_VALUE_MAX;
/// Most services in one request (the protocol's limit).
pub const SERVICES_MAX: usize = reckon_protocol::limits::SERVICES_MAX;
/// Most unit kinds per service in one request (the protocol's limit).
pub const UNITS_PER_SERVICE_MAX: usize = reckon_protocol::limits::UNIT_AMOUNTS_MAX;
/// Longest session id in bytes (the protocol's limit).
pub const SESSION_ID_LEN_MAX: usize = reckon_protocol::limits::SESSION_ID_MAX;
