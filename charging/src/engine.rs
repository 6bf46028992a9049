//! The credit-control engine: sessions, grants, validity, final units and
//! result codes, on top of the ledger. Sans-IO: `apply(now, request)`.
//!
//! One charging session is keyed by its session id. Each (service, unit) of
//! a session holds at most one ledger reservation: the current grant. An
//! UPDATE or TERMINATE reporting used units commits their cost against that
//! reservation and releases the rest; an UPDATE asking for more then
//! reserves the next grant. Retransmissions (same session id and request
//! number) get the stored answer and change nothing.
//!
//! Pricing: the active rate card (applied through the log, so a replay
//! prices alike) prices every (service, unit) it has a rule for, with the
//! card's own rounding rules; usage under a grant is rated over the time
//! since the grant, so it splits across tariff changes. Otherwise the
//! configuration's fixed [`Price`] table maps (service, unit) to a price
//! per unit in a charge unit (e.g. USD per token), and a unit with no price
//! is drawn 1:1 from buckets of that unit (e.g. `gpu_seconds`). Rounding on
//! the fixed table: the cost of used units is rounded up to the ledger's
//! 10^-9 (never undercharge a fraction). Grants are whole units, as many as
//! the available credit buys.

use reckon_balances::codec::{DecodeError, Reader, Sink};
use reckon_balances::journal::{Machine, SnapshotPair};
use reckon_balances::machine::{LedgerMachine, LedgerRequest, LedgerResponse};
use reckon_balances::snapshot::SnapshotWrite;
use reckon_balances::{
    AccountId, Amount, Command, CreditKind, LedgerError, OpId, Operation, Outcome, ReservationId,
    ServiceId, Timestamp, Unit,
};
use rust_decimal::{Decimal, RoundingStrategy};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

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
    /// The services.
    pub services: Vec<ServiceRequest>,
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
    fn error(code: u32) -> Self {
        CreditControlAnswer {
            result_code: code,
            services: Vec::new(),
            balance: Vec::new(),
            price: Vec::new(),
        }
    }
}

/// How one (service, unit) is priced: a fixed price per unit, or a rule of
/// the active rate card at a time.
#[derive(Clone, Debug)]
enum Rate {
    Fixed(Decimal),
    Card {
        card: String,
        service: u32,
        unit: reckon_rating::Unit,
        /// Start of the usage.
        at: u64,
        /// Length of the usage in ms (0: an instant); a usage that spans a
        /// tariff change is priced on each side.
        span_ms: u64,
    },
}

/// A rate card file as applied: kept so a restore rebuilds the rate book
/// exactly (the book itself has no serialised form) and a retried apply
/// gets its original result.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RateFile {
    at: Timestamp,
    op: u128,
    name: Arc<str>,
    text: Arc<str>,
    result: RateCardOutcome,
}

/// What applying a rate card did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateCardOutcome {
    /// Accepted: the card's id and how many versions were added.
    Applied {
        /// The card's id.
        card: String,
        /// Versions added (0 when the file was applied before).
        versions_added: u16,
    },
    /// Refused, nothing changed: the card's id (if read) and the errors.
    Refused {
        /// The card's id, or empty.
        card: String,
        /// One error per line, `file:line:col: field: message`.
        message: String,
    },
}

/// One version of a card, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardVersionSummary {
    /// Version number.
    pub version: u32,
    /// When it takes effect, ms since the epoch.
    pub effective_from_ms: u64,
    /// Unit charged.
    pub charge_unit: String,
    /// Reporting currency.
    pub currency: String,
}

/// One card, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardSummary {
    /// Its id.
    pub card: String,
    /// True for the card the engine prices with.
    pub active: bool,
    /// Its versions, oldest first.
    pub versions: Vec<RateCardVersionSummary>,
}

/// Longest rate card text accepted, in bytes.
pub const RATE_CARD_TEXT_MAX: usize = 60_000;
/// Most rate card files kept (each apply adds one).
pub const RATE_FILES_MAX: usize = 1_000;

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
    /// The account does not exist, or is not visible to the caller.
    NotFound,
    /// The result of applying a rate card.
    RateCard(RateCardOutcome),
    /// The rate cards.
    RateCards(Vec<RateCardSummary>),
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
            answer_window_ms: 10 * 60 * 1000,
            service_attributes: Vec::new(),
        }
    }
}

/// One (service, unit) grant of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    service: ServiceId,
    unit: Unit,
    reservation: Option<ReservationId>,
    /// When the grant was made: usage reported against it is rated over
    /// [granted_at, report time], so a tariff change in between splits it.
    granted_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    account: AccountId,
    last_number: u32,
    grants: Vec<Grant>,
    expires_at: Timestamp,
    dirty: bool,
}

/// Most sessions kept at once; more INITIALs get TOO_BUSY.
pub const SESSIONS_MAX: usize = 10_000_000;
/// Most services in one request.
pub const SERVICES_MAX: usize = 32;
/// Most unit kinds per service in one request.
pub const UNITS_PER_SERVICE_MAX: usize = 8;
/// Longest session id in bytes.
pub const SESSION_ID_LEN_MAX: usize = 128;

/// The credit-control engine with its ledger.
#[derive(Debug)]
pub struct Engine {
    /// The ledger (and its checkpoint bookkeeping).
    pub ledger: LedgerMachine,
    config: EngineConfig,
    sessions: HashMap<Arc<str>, Session>,
    supervision: BinaryHeap<Reverse<(Timestamp, Arc<str>)>>,
    answers: HashMap<(Arc<str>, u32), (Timestamp, CreditControlAnswer)>,
    answer_order: VecDeque<(Timestamp, Arc<str>, u32)>,
    dirty_sessions: Vec<Arc<str>>,
    config_dirty: bool,
    /// Rate cards (pure pricing, rebuilt from the applied files on restore).
    rates: reckon_rating::RateBook,
    /// The card the engine prices with.
    active_card: Option<String>,
    /// Every rate card file applied, in order: (time, op id, name, text, result).
    rate_files: Vec<RateFile>,
    rates_dirty: bool,
    /// Set when the request being handled changed the ledger.
    changed: bool,
    /// Answers recorded before this time are forgotten.
    answers_forgotten_below: Timestamp,
    answers_added: Vec<(Arc<str>, u32)>,
    answer_blobs: Vec<(u64, Timestamp)>,
    checkpoint_seq: u64,
}

/// First byte of the engine's log records.
pub const ENGINE_TAG: u8 = b'E';

impl Engine {
    /// An engine over a ledger.
    pub fn new(ledger: LedgerMachine, config: EngineConfig) -> Engine {
        Engine {
            ledger,
            config,
            sessions: HashMap::new(),
            supervision: BinaryHeap::new(),
            answers: HashMap::new(),
            answer_order: VecDeque::new(),
            dirty_sessions: Vec::new(),
            config_dirty: true,
            rates: reckon_rating::RateBook::new(),
            active_card: None,
            rate_files: Vec::new(),
            rates_dirty: false,
            changed: false,
            answers_forgotten_below: Timestamp(0),
            answers_added: Vec::new(),
            answer_blobs: Vec::new(),
            checkpoint_seq: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn price(&self, service: ServiceId, unit: Unit) -> Option<&Price> {
        self.config
            .prices
            .iter()
            .find(|p| p.unit == unit && p.service == Some(service))
            .or_else(|| {
                self.config
                    .prices
                    .iter()
                    .find(|p| p.unit == unit && p.service.is_none())
            })
    }

    fn policy(&self, service: ServiceId, unit: Option<Unit>) -> ServicePolicy {
        let matches = |p: &&ServicePolicy| unit.is_none_or(|u| p.default_unit == u);
        self.config
            .policies
            .iter()
            .filter(matches)
            .find(|p| p.service == Some(service))
            .or_else(|| {
                self.config
                    .policies
                    .iter()
                    .filter(matches)
                    .find(|p| p.service.is_none())
            })
            .or_else(|| {
                self.config
                    .policies
                    .iter()
                    .find(|p| p.service == Some(service))
            })
            .or_else(|| self.config.policies.iter().find(|p| p.service.is_none()))
            .cloned()
            .unwrap_or_else(|| EngineConfig::default().policies[0].clone())
    }

    /// How (service, unit) is priced at `now`, and in which ledger unit it
    /// is charged: the active rate card when it has a rule for the pair,
    /// else the fixed price table, else one-for-one in the unit itself.
    fn tariff(&self, service: ServiceId, unit: Unit, now: Timestamp) -> (Unit, Rate) {
        if let Some(card_id) = &self.active_card {
            if let (Some(card), Ok(runit)) = (
                self.rates.card(card_id),
                reckon_rating::Unit::new(unit.as_str()),
            ) {
                if let Some(version) = card.version_at(now.0) {
                    if version.units_of(service.0).contains(&runit) {
                        if let Ok(charge) = Unit::new(version.charge_unit().as_str()) {
                            return (
                                charge,
                                Rate::Card {
                                    card: card_id.clone(),
                                    service: service.0,
                                    unit: runit,
                                    at: now.0,
                                    span_ms: 0,
                                },
                            );
                        }
                    }
                }
            }
        }
        match self.price(service, unit) {
            Some(p) => (p.charge_unit, Rate::Fixed(p.per_unit)),
            None => (unit, Rate::Fixed(Decimal::ONE)),
        }
    }

    /// Usage attributes (model, region, ...) configured for a service: the
    /// native protocol names the service (rating group), the configuration
    /// says which product it is.
    fn attributes_of(&self, service: ServiceId) -> &[(String, String)] {
        self.config
            .service_attributes
            .iter()
            .find(|(s, _)| *s == service)
            .map_or(&[], |(_, a)| a.as_slice())
    }

    /// Price of `units` at a rate, in ledger amounts.
    fn cost(&self, rate: &Rate, units: Decimal) -> Result<Amount, u32> {
        match rate {
            Rate::Fixed(per_unit) => Self::fixed_cost(*per_unit, units),
            Rate::Card {
                card,
                service,
                unit,
                at,
                span_ms,
            } => {
                let attributes = self.attributes_of(ServiceId(*service));
                let pairs: Vec<(&str, &str)> = attributes
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let usage = reckon_rating::Usage::new(*service, *unit, units, *at)
                    .with_attributes(&pairs)
                    .spanning(*span_ms);
                let rated = self
                    .rates
                    .rate(card, &usage)
                    .map_err(|_| result_code::RATING_FAILED)?;
                Amount::from_decimal(rated.price).map_err(|_| result_code::RATING_FAILED)
            }
        }
    }

    /// Whole units `money` buys at a rate.
    fn units_for(&self, rate: &Rate, money: Amount) -> Decimal {
        match rate {
            Rate::Fixed(per_unit) => Self::fixed_units_for(*per_unit, money),
            Rate::Card {
                card,
                service,
                unit,
                at,
                ..
            } => {
                let attributes = self.attributes_of(ServiceId(*service));
                let pairs: Vec<(&str, &str)> = attributes
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let usage = reckon_rating::Usage::new(*service, *unit, Decimal::ZERO, *at)
                    .with_attributes(&pairs);
                let mut units = self
                    .rates
                    .units_for(card, &usage, money.to_decimal())
                    .unwrap_or(Decimal::ZERO)
                    .floor();
                // Grants are whole units; never more than the money pays for.
                while units.is_sign_positive() && self.cost(rate, units).map_or(true, |c| c > money)
                {
                    units -= Decimal::ONE;
                }
                units.max(Decimal::ZERO)
            }
        }
    }

    /// Cost of `units` at a fixed price, rounded up to the ledger's precision.
    fn fixed_cost(per_unit: Decimal, units: Decimal) -> Result<Amount, u32> {
        let raw = per_unit
            .checked_mul(units)
            .ok_or(result_code::RATING_FAILED)?;
        let rounded = raw.round_dp_with_strategy(Amount::SCALE, RoundingStrategy::AwayFromZero);
        Amount::from_decimal(rounded).map_err(|_| result_code::RATING_FAILED)
    }

    /// Whole units that `money` buys at a fixed `per_unit`.
    fn fixed_units_for(per_unit: Decimal, money: Amount) -> Decimal {
        if per_unit.is_zero() {
            return Decimal::MAX;
        }
        let mut units = (money.to_decimal() / per_unit).floor();
        while units.is_sign_positive() && Self::fixed_cost(per_unit, units).is_ok_and(|c| c > money)
        {
            units -= Decimal::ONE;
        }
        units.max(Decimal::ZERO)
    }

    fn authorise(&self, caller: Caller, account: AccountId) -> Result<(), ()> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::Org(org) => match self.ledger.ledger.root_of(account) {
                Some(root) if root == org => Ok(()),
                _ => Err(()),
            },
        }
    }

    /// Applies one ledger step of the request being handled. The engine
    /// deduplicates whole requests itself (and replays them
    /// deterministically), so its steps carry no ledger op ids.
    fn ledger_apply(&mut self, now: Timestamp, command: Command) -> Result<Outcome, LedgerError> {
        let result = self.ledger.ledger.apply_unrecorded(now, &command);
        self.changed |= result.is_ok();
        result
    }

    /// Applies one request at `now`.
    pub fn handle(&mut self, now: Timestamp, request: EngineRequest) -> EngineResponse {
        match request {
            EngineRequest::Ledger(caller, request) => self.handle_ledger(now, caller, request),
            EngineRequest::CreditControl(caller, ccr) => {
                EngineResponse::CreditControl(self.credit_control(now, caller, &ccr))
            }
            EngineRequest::Supervise => {
                self.supervise(now);
                EngineResponse::CreditControl(CreditControlAnswer::error(result_code::SUCCESS))
            }
            EngineRequest::Configure(config) => {
                self.config = config;
                self.config_dirty = true;
                EngineResponse::Configured
            }
            EngineRequest::ApplyRateCard {
                caller,
                op,
                name,
                text,
            } => {
                if caller != Caller::Admin {
                    return EngineResponse::Forbidden;
                }
                EngineResponse::RateCard(self.apply_rate_card(now, op, name, text))
            }
            EngineRequest::ShowRateCards(card) => EngineResponse::RateCards(self.rate_cards(&card)),
        }
    }

    fn handle_ledger(
        &mut self,
        now: Timestamp,
        caller: Caller,
        request: LedgerRequest,
    ) -> EngineResponse {
        if let Caller::Org(org) = caller {
            // Organisation credentials read their own subtree; changes need
            // an admin credential. Accounts outside the subtree look absent.
            let target = match &request {
                LedgerRequest::Apply(_) | LedgerRequest::Totals | LedgerRequest::StateDigest => {
                    return EngineResponse::Forbidden
                }
                LedgerRequest::Account(a) => Some(*a),
                LedgerRequest::Available { account, .. } => Some(*account),
                LedgerRequest::Reservation(r) => {
                    self.ledger.ledger.reservation(*r).map(|v| v.account)
                }
                LedgerRequest::Reservations { account, .. } => Some(*account),
            };
            match target {
                Some(a) if self.ledger.ledger.root_of(a) == Some(org) => {}
                _ => return EngineResponse::NotFound,
            }
        }
        match request {
            // The engine logs the whole request itself; the ledger's own
            // log encoding of the operation would be thrown away.
            LedgerRequest::Apply(op) => {
                EngineResponse::Ledger(LedgerResponse::Applied(self.ledger.ledger.apply(now, &op)))
            }
            read => {
                let mut reads_log_nothing = Vec::new();
                EngineResponse::Ledger(self.ledger.apply(now, read, &mut reads_log_nothing))
            }
        }
    }

    /// The consistency rules of the protocol (SPEC 7.3): a request that
    /// breaks one is refused whole and changes nothing.
    fn validate(&self, ccr: &CreditControlRequest) -> Result<(), u32> {
        use result_code::{INVALID_AVP_VALUE, MISSING_AVP};
        if ccr.session_id.is_empty() {
            return Err(MISSING_AVP);
        }
        if ccr.session_id.len() > SESSION_ID_LEN_MAX || ccr.services.len() > SERVICES_MAX {
            return Err(INVALID_AVP_VALUE);
        }
        if (ccr.request_type == RequestType::Event) != (ccr.event_action != EventAction::None) {
            return Err(INVALID_AVP_VALUE);
        }
        if matches!(ccr.request_type, RequestType::Initial | RequestType::Event)
            && ccr.request_number != 0
        {
            return Err(INVALID_AVP_VALUE);
        }
        let needs_service = matches!(ccr.request_type, RequestType::Initial)
            || matches!(
                ccr.event_action,
                EventAction::DirectDebit | EventAction::Refund | EventAction::PriceEnquiry
            );
        if needs_service && ccr.services.is_empty() {
            return Err(MISSING_AVP);
        }
        for (i, s) in ccr.services.iter().enumerate() {
            if ccr.services[..i].iter().any(|o| o.service == s.service) {
                return Err(INVALID_AVP_VALUE);
            }
            if s.requested.len() > UNITS_PER_SERVICE_MAX || s.used.len() > UNITS_PER_SERVICE_MAX {
                return Err(INVALID_AVP_VALUE);
            }
            for list in [&s.requested, &s.used] {
                for (j, (unit, q)) in list.iter().enumerate() {
                    if q.is_sign_negative() || list[..j].iter().any(|(u, _)| u == unit) {
                        return Err(INVALID_AVP_VALUE);
                    }
                }
            }
            if ccr.request_type == RequestType::Initial && !s.used.is_empty() {
                return Err(INVALID_AVP_VALUE);
            }
            if ccr.request_type == RequestType::Terminate && !s.requested.is_empty() {
                return Err(INVALID_AVP_VALUE);
            }
        }
        Ok(())
    }

    fn credit_control(
        &mut self,
        now: Timestamp,
        caller: Caller,
        ccr: &CreditControlRequest,
    ) -> CreditControlAnswer {
        self.forget_answers(now);
        // Retransmission of an answered request: the stored answer.
        if let Some((_, answer)) = self
            .answers
            .get(&(ccr.session_id.clone(), ccr.request_number))
        {
            return answer.clone();
        }
        if let Some(session) = self.sessions.get(&ccr.session_id) {
            if session.last_number == ccr.request_number {
                // The session's last request again, but its answer has aged
                // out of the window: refuse rather than apply it twice.
                return CreditControlAnswer::error(result_code::UNABLE_TO_COMPLY);
            }
        }
        if let Err(code) = self.validate(ccr) {
            return CreditControlAnswer::error(code);
        }
        self.changed = false;
        if self.ledger.ledger.account(ccr.account).is_none()
            || self.authorise(caller, ccr.account).is_err()
        {
            // Another organisation's account is reported as unknown: its
            // existence is not the caller's business.
            return CreditControlAnswer::error(result_code::USER_UNKNOWN);
        }
        let answer = match ccr.request_type {
            RequestType::Initial => self.initial(now, ccr),
            RequestType::Update => self.update(now, ccr),
            RequestType::Terminate => self.terminate(now, ccr),
            RequestType::Event => self.event(now, ccr),
        };
        // Every answer is kept for the window, so a retransmission of any
        // earlier request of a session (not only the last) gets its answer.
        self.remember_answer(now, ccr, &answer);
        answer
    }

    fn remember_answer(
        &mut self,
        now: Timestamp,
        ccr: &CreditControlRequest,
        answer: &CreditControlAnswer,
    ) {
        let key = (ccr.session_id.clone(), ccr.request_number);
        self.answers.insert(key.clone(), (now, answer.clone()));
        self.answer_order
            .push_back((now, ccr.session_id.clone(), ccr.request_number));
        self.answers_added.push(key);
    }

    fn forget_answers(&mut self, now: Timestamp) {
        // Remember the bound, so a restore never brings back an answer the
        // live engine had already forgotten.
        if let Some(bound) = now.0.checked_sub(self.config.answer_window_ms) {
            self.answers_forgotten_below = self.answers_forgotten_below.max(Timestamp(bound + 1));
        }
        while let Some((at, _, _)) = self.answer_order.front() {
            if at.plus_ms(self.config.answer_window_ms) > now {
                break;
            }
            if let Some((_, session, number)) = self.answer_order.pop_front() {
                self.answers.remove(&(session, number));
            }
        }
    }

    fn mark(&mut self, session_id: &Arc<str>) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            if !s.dirty {
                s.dirty = true;
                self.dirty_sessions.push(session_id.clone());
            }
        }
    }

    fn initial(&mut self, now: Timestamp, ccr: &CreditControlRequest) -> CreditControlAnswer {
        if self.sessions.contains_key(&ccr.session_id) {
            return CreditControlAnswer::error(result_code::UNABLE_TO_COMPLY);
        }
        if self.sessions.len() >= SESSIONS_MAX {
            return CreditControlAnswer::error(result_code::TOO_BUSY);
        }
        let mut session = Session {
            account: ccr.account,
            last_number: ccr.request_number,
            grants: Vec::new(),
            expires_at: now,
            dirty: true,
        };
        let mut answers = Vec::with_capacity(ccr.services.len());
        let mut validity_max = 0u32;
        for service in &ccr.services {
            let answer = self.grant(now, ccr, &mut session, service);
            validity_max = validity_max.max(answer.validity_time_s);
            answers.push(answer);
        }
        let answer = self.finish_answer(answers);
        if answer.result_code != result_code::SUCCESS {
            // Refused as a whole: nothing was applied, so no session opens
            // (a retransmission gets this answer from the answer store).
            return answer;
        }
        session.expires_at =
            now.plus_ms((validity_max as u64 + self.config.supervision_grace_s as u64) * 1000);
        self.supervision
            .push(Reverse((session.expires_at, ccr.session_id.clone())));
        self.sessions.insert(ccr.session_id.clone(), session);
        self.dirty_sessions.push(ccr.session_id.clone());
        answer
    }

    fn finish_answer(&self, services: Vec<ServiceAnswer>) -> CreditControlAnswer {
        // A request that changed anything succeeded as a request; the
        // per-service codes tell how each service fared. Only a request
        // that changed nothing carries a failure code of its own.
        let code = if self.changed
            || services.is_empty()
            || services
                .iter()
                .any(|s| s.result_code == result_code::SUCCESS)
        {
            result_code::SUCCESS
        } else {
            services[0].result_code
        };
        CreditControlAnswer {
            result_code: code,
            services,
            balance: Vec::new(),
            price: Vec::new(),
        }
    }

    /// Reserves the next grant of every unit a service asks for.
    fn grant(
        &mut self,
        now: Timestamp,
        ccr: &CreditControlRequest,
        session: &mut Session,
        service: &ServiceRequest,
    ) -> ServiceAnswer {
        let wanted: Vec<Quantity> = if service.requested.is_empty() {
            let p = self.policy(service.service, None);
            vec![(p.default_unit, p.default_grant)]
        } else {
            service.requested.clone()
        };
        let mut granted = Vec::with_capacity(wanted.len());
        let mut result = result_code::SUCCESS;
        let mut final_units = false;
        let mut validity = u32::MAX;
        for (unit, asked) in wanted {
            let policy = self.policy(service.service, Some(unit));
            let asked = asked.min(policy.max_grant).trunc();
            validity = validity.min(policy.validity_s);
            let (charge_unit, per_unit) = self.tariff(service.service, unit, now);
            let want_money = match self.cost(&per_unit, asked) {
                Ok(m) => m,
                Err(code) => {
                    result = code;
                    continue;
                }
            };
            if self.ledger.ledger.inactive_ancestor(ccr.account).is_some() {
                result = result_code::END_USER_SERVICE_DENIED;
                continue;
            }
            // Size the grant from what the account can spend now, so a low
            // balance yields a smaller grant rather than a refusal.
            let available = match self.ledger.ledger.available(
                now,
                ccr.account,
                charge_unit,
                Some(service.service),
            ) {
                Ok(a) => a,
                Err(_) => Amount::ZERO,
            };
            let units = self
                .units_for(&per_unit, available.min(want_money))
                .min(asked);
            if units < asked {
                final_units = true;
            }
            let money = self.cost(&per_unit, units).unwrap_or(Amount::ZERO);
            if units.is_zero() || money.is_zero() {
                if units.is_zero() && result == result_code::SUCCESS {
                    result = result_code::CREDIT_LIMIT_REACHED;
                }
                if units.is_zero() {
                    continue;
                }
            }
            let reserve = Command::Reserve {
                account: ccr.account,
                unit: charge_unit,
                amount: money.max(Amount::from_nanos(1)),
                min_amount: money.max(Amount::from_nanos(1)),
                service: Some(service.service),
                expires_at: now.plus_ms(
                    (policy.validity_s as u64 + self.config.supervision_grace_s as u64) * 1000,
                ),
            };
            match self.ledger_apply(now, reserve) {
                Ok(Outcome::Reserved { reservation, .. }) => {
                    granted.push((unit, units));
                    session
                        .grants
                        .retain(|g| !(g.service == service.service && g.unit == unit));
                    session.grants.push(Grant {
                        service: service.service,
                        unit,
                        reservation: Some(reservation),
                        granted_at: now,
                    });
                }
                Ok(_) => result = result_code::UNABLE_TO_COMPLY,
                Err(LedgerError::InsufficientFunds { .. })
                | Err(LedgerError::LimitExceeded { .. }) => {
                    if result == result_code::SUCCESS {
                        result = result_code::CREDIT_LIMIT_REACHED;
                    }
                }
                Err(LedgerError::AccountNotActive { .. }) => {
                    result = result_code::END_USER_SERVICE_DENIED
                }
                Err(LedgerError::AccountNotFound(_)) => result = result_code::USER_UNKNOWN,
                Err(_) => result = result_code::UNABLE_TO_COMPLY,
            }
        }
        if result != result_code::SUCCESS && !granted.is_empty() {
            // Some units granted, some not: the grant stands, the client is
            // told the rest of the credit is gone.
            final_units = true;
            result = result_code::SUCCESS;
        }
        ServiceAnswer {
            service: service.service,
            result_code: result,
            granted,
            validity_time_s: if validity == u32::MAX { 0 } else { validity },
            final_unit_action: if final_units {
                self.config.final_unit_action
            } else {
                FinalUnitAction::None
            },
        }
    }

    /// Debits the cost of used units from a service's grants; returns the
    /// per-service result (CREDIT_LIMIT_REACHED when usage exceeded what
    /// could be collected).
    fn settle(
        &mut self,
        now: Timestamp,
        ccr: &CreditControlRequest,
        session: &mut Session,
        service: &ServiceRequest,
    ) -> u32 {
        let mut result = result_code::SUCCESS;
        for (unit, used) in &service.used {
            let (charge_unit, mut per_unit) = self.tariff(service.service, *unit, now);
            // Usage under a grant is rated over the time since the grant, so
            // a tariff change in between prices each side at its own rate.
            let granted_at = session
                .grants
                .iter()
                .find(|g| g.service == service.service && g.unit == *unit)
                .map(|g| g.granted_at);
            if let (Some(since), Rate::Card { at, span_ms, .. }) = (granted_at, &mut per_unit) {
                if since < now {
                    *at = since.0;
                    *span_ms = now.0 - since.0;
                }
            }
            let cost = match self.cost(&per_unit, *used) {
                Ok(c) => c,
                Err(code) => {
                    result = code;
                    continue;
                }
            };
            let reservation = session
                .grants
                .iter_mut()
                .find(|g| g.service == service.service && g.unit == *unit)
                .and_then(|g| g.reservation.take());
            let mut left = cost;
            if let Some(r) = reservation {
                let remaining = self
                    .ledger
                    .ledger
                    .reservation(r)
                    .map(|v| v.remaining)
                    .unwrap_or(Amount::ZERO);
                let covered = left.min(remaining);
                if self
                    .ledger_apply(
                        now,
                        Command::Commit {
                            reservation: r,
                            used: covered,
                            release_rest: true,
                        },
                    )
                    .is_ok()
                {
                    left = Amount::from_nanos(left.nanos() - covered.nanos());
                }
            }
            if left.is_positive() {
                // Usage beyond the grant (or after the grant lapsed) is still
                // charged: debit what the account can pay now.
                let reserved = self.ledger_apply(
                    now,
                    Command::Reserve {
                        account: ccr.account,
                        unit: charge_unit,
                        amount: left,
                        min_amount: Amount::from_nanos(1),
                        service: Some(service.service),
                        expires_at: now.plus_ms(60_000),
                    },
                );
                if let Ok(Outcome::Reserved {
                    reservation,
                    granted,
                    ..
                }) = reserved
                {
                    let _ = self.ledger_apply(
                        now,
                        Command::Commit {
                            reservation,
                            used: granted,
                            release_rest: true,
                        },
                    );
                    left = Amount::from_nanos(left.nanos() - granted.nanos());
                }
                if left.is_positive() {
                    tracing::warn!(session = %ccr.session_id, uncollected = %left, unit = %charge_unit, "usage exceeded available credit");
                    result = result_code::CREDIT_LIMIT_REACHED;
                }
            }
        }
        result
    }

    fn release_grants(&mut self, now: Timestamp, grants: &mut [Grant]) {
        for g in grants.iter_mut() {
            if let Some(r) = g.reservation.take() {
                let _ = self.ledger_apply(now, Command::Release { reservation: r });
            }
        }
    }

    fn check_sequence(&self, ccr: &CreditControlRequest) -> Result<(), CreditControlAnswer> {
        match self.sessions.get(&ccr.session_id) {
            None => Err(CreditControlAnswer::error(result_code::UNKNOWN_SESSION_ID)),
            Some(s) if s.account != ccr.account => {
                Err(CreditControlAnswer::error(result_code::INVALID_AVP_VALUE))
            }
            // Older than the last answered request: out of order.
            Some(s) if ccr.request_number < s.last_number => {
                Err(CreditControlAnswer::error(result_code::UNABLE_TO_COMPLY))
            }
            Some(_) => Ok(()),
        }
    }

    fn update(&mut self, now: Timestamp, ccr: &CreditControlRequest) -> CreditControlAnswer {
        if let Err(a) = self.check_sequence(ccr) {
            return a;
        }
        let Some(mut session) = self.sessions.remove(&ccr.session_id) else {
            return CreditControlAnswer::error(result_code::UNKNOWN_SESSION_ID);
        };
        let mut answers = Vec::with_capacity(ccr.services.len());
        let mut validity_max = 0u32;
        for service in &ccr.services {
            let settled = self.settle(now, ccr, &mut session, service);
            let mut answer = self.grant(now, ccr, &mut session, service);
            if settled != result_code::SUCCESS && answer.result_code == result_code::SUCCESS {
                answer.result_code = settled;
                answer.final_unit_action = self.config.final_unit_action;
            }
            validity_max = validity_max.max(answer.validity_time_s);
            answers.push(answer);
        }
        let answer = self.finish_answer(answers);
        session.last_number = ccr.request_number;
        // Supervision never comes earlier than before: services this UPDATE
        // did not mention keep their grants and their validity.
        session.expires_at =
            session.expires_at.max(now.plus_ms(
                (validity_max.max(1) as u64 + self.config.supervision_grace_s as u64) * 1000,
            ));
        self.supervision
            .push(Reverse((session.expires_at, ccr.session_id.clone())));
        session.dirty = false;
        self.sessions.insert(ccr.session_id.clone(), session);
        self.mark(&ccr.session_id);
        answer
    }

    fn terminate(&mut self, now: Timestamp, ccr: &CreditControlRequest) -> CreditControlAnswer {
        if let Err(a) = self.check_sequence(ccr) {
            return a;
        }
        let Some(mut session) = self.sessions.remove(&ccr.session_id) else {
            return CreditControlAnswer::error(result_code::UNKNOWN_SESSION_ID);
        };
        self.dirty_sessions.push(ccr.session_id.clone());
        let mut answers = Vec::with_capacity(ccr.services.len());
        for service in &ccr.services {
            let code = self.settle(now, ccr, &mut session, service);
            answers.push(ServiceAnswer {
                service: service.service,
                result_code: code,
                granted: Vec::new(),
                validity_time_s: 0,
                final_unit_action: FinalUnitAction::None,
            });
        }
        self.release_grants(now, &mut session.grants);
        let mut answer = self.finish_answer(answers);
        // Terminating always succeeds as a request; per-service codes say
        // whether all usage could be collected.
        answer.result_code = result_code::SUCCESS;
        answer
    }

    fn event(&mut self, now: Timestamp, ccr: &CreditControlRequest) -> CreditControlAnswer {
        let mut answer = CreditControlAnswer::error(result_code::SUCCESS);
        match ccr.event_action {
            EventAction::DirectDebit => {
                let mut session = Session {
                    account: ccr.account,
                    last_number: ccr.request_number,
                    grants: Vec::new(),
                    expires_at: now,
                    dirty: false,
                };
                // All services or none: check every cost first.
                let mut need: Vec<(Unit, Option<ServiceId>, Amount)> = Vec::new();
                for service in &ccr.services {
                    for (unit, units) in event_units(service) {
                        let (charge_unit, per_unit) = self.tariff(service.service, *unit, now);
                        let Ok(cost) = self.cost(&per_unit, *units) else {
                            return CreditControlAnswer::error(result_code::RATING_FAILED);
                        };
                        need.push((charge_unit, Some(service.service), cost));
                    }
                }
                let mut total: Vec<(Unit, i128)> = Vec::new();
                for (unit, service, cost) in &need {
                    let available = self
                        .ledger
                        .ledger
                        .available(now, ccr.account, *unit, *service)
                        .unwrap_or(Amount::ZERO);
                    let sum = match total.iter_mut().find(|(u, _)| u == unit) {
                        Some((_, n)) => {
                            *n += cost.nanos();
                            *n
                        }
                        None => {
                            total.push((*unit, cost.nanos()));
                            cost.nanos()
                        }
                    };
                    if *cost > available || sum > available.nanos() {
                        return CreditControlAnswer::error(result_code::CREDIT_LIMIT_REACHED);
                    }
                }
                let mut services = Vec::new();
                for service in &ccr.services {
                    let debit = ServiceRequest {
                        service: service.service,
                        requested: Vec::new(),
                        used: event_units(service).to_vec(),
                    };
                    let code = self.settle(now, ccr, &mut session, &debit);
                    services.push(ServiceAnswer {
                        service: service.service,
                        result_code: code,
                        granted: debit.used,
                        validity_time_s: 0,
                        final_unit_action: FinalUnitAction::None,
                    });
                }
                answer = self.finish_answer(services);
            }
            EventAction::Refund => {
                let mut services = Vec::new();
                for service in &ccr.services {
                    let mut code = result_code::SUCCESS;
                    for (unit, units) in event_units(service) {
                        let (charge_unit, per_unit) = self.tariff(service.service, *unit, now);
                        let Ok(amount) = self.cost(&per_unit, *units) else {
                            code = result_code::RATING_FAILED;
                            continue;
                        };
                        if amount.is_zero() {
                            continue;
                        }
                        let target = self.refund_target(ccr.account, charge_unit);
                        let credited = self.ledger_apply(
                            now,
                            Command::Credit {
                                account: target,
                                unit: charge_unit,
                                amount,
                                bucket: None,
                                kind: CreditKind::Refund,
                                reason: Arc::from(format!("refund for session {}", ccr.session_id)),
                            },
                        );
                        if credited.is_err() {
                            code = result_code::UNABLE_TO_COMPLY;
                        }
                    }
                    services.push(ServiceAnswer {
                        service: service.service,
                        result_code: code,
                        granted: event_units(service).to_vec(),
                        validity_time_s: 0,
                        final_unit_action: FinalUnitAction::None,
                    });
                }
                answer = self.finish_answer(services);
            }
            EventAction::CheckBalance => {
                let mut units: Vec<Unit> = Vec::new();
                for service in &ccr.services {
                    for (unit, _) in service.requested.iter().chain(&service.used) {
                        let (charge_unit, _) = self.tariff(service.service, *unit, now);
                        if !units.contains(&charge_unit) {
                            units.push(charge_unit);
                        }
                    }
                }
                if units.is_empty() {
                    // Every unit the account can spend: its own buckets and
                    // those up the chain it draws on.
                    let mut current = Some(ccr.account);
                    for _ in 0..reckon_balances::ledger::DEPTH_MAX {
                        let Some(view) = current.and_then(|a| self.ledger.ledger.account(a)) else {
                            break;
                        };
                        for b in &view.buckets {
                            if !units.contains(&b.unit) {
                                units.push(b.unit);
                            }
                        }
                        current = if view.draws_on_parent {
                            view.parent
                        } else {
                            None
                        };
                    }
                }
                for unit in units {
                    let available = self
                        .ledger
                        .ledger
                        .available(now, ccr.account, unit, None)
                        .unwrap_or(Amount::ZERO);
                    answer.balance.push((unit, available.to_decimal()));
                }
            }
            EventAction::PriceEnquiry => {
                for service in &ccr.services {
                    for (unit, units) in &service.requested {
                        let (charge_unit, per_unit) = self.tariff(service.service, *unit, now);
                        match self.cost(&per_unit, *units) {
                            Ok(c) => answer.price.push((charge_unit, c.to_decimal())),
                            Err(code) => answer.result_code = code,
                        }
                    }
                }
            }
            EventAction::None => answer.result_code = result_code::INVALID_AVP_VALUE,
        }
        answer
    }

    fn apply_rate_card(
        &mut self,
        now: Timestamp,
        op: u128,
        name: Arc<str>,
        text: Arc<str>,
    ) -> RateCardOutcome {
        if let Some(earlier) = self.rate_files.iter().find(|f| f.op == op) {
            // A retry: the original result, whether it succeeded or not.
            if earlier.name == name && earlier.text == text {
                return earlier.result.clone();
            }
            return RateCardOutcome::Refused {
                card: String::new(),
                message: "op id already used for a different rate card".into(),
            };
        }
        let result = self.load_rate_card(now, &name, &text);
        if self.rate_files.len() < RATE_FILES_MAX {
            self.rate_files.push(RateFile {
                at: now,
                op,
                name,
                text,
                result: result.clone(),
            });
            self.rates_dirty = true;
        }
        result
    }

    fn load_rate_card(&mut self, now: Timestamp, name: &str, text: &str) -> RateCardOutcome {
        if text.len() > RATE_CARD_TEXT_MAX {
            return RateCardOutcome::Refused {
                card: String::new(),
                message: format!("{name}: rate card larger than {RATE_CARD_TEXT_MAX} bytes"),
            };
        }
        let parsed = if name.ends_with(".json") || text.trim_start().starts_with('{') {
            reckon_rating::parse_json(name, text)
        } else {
            reckon_rating::parse_toml(name, text)
        };
        let card = match parsed {
            Ok(card) => card,
            Err(errors) => {
                return RateCardOutcome::Refused {
                    card: String::new(),
                    message: errors.to_string(),
                }
            }
        };
        let id = card.id().to_string();
        match self.rates.apply(card, now.0) {
            Ok(applied) => {
                self.active_card = Some(id.clone());
                RateCardOutcome::Applied {
                    card: id,
                    versions_added: applied.added.min(u16::MAX as usize) as u16,
                }
            }
            Err(e) => RateCardOutcome::Refused {
                card: id,
                message: e.to_string(),
            },
        }
    }

    fn rate_cards(&self, only: &str) -> Vec<RateCardSummary> {
        self.rates
            .cards()
            .filter(|c| only.is_empty() || c.id() == only)
            .map(|c| RateCardSummary {
                card: c.id().to_string(),
                active: self.active_card.as_deref() == Some(c.id()),
                versions: c
                    .versions()
                    .iter()
                    .map(|v| RateCardVersionSummary {
                        version: v.version(),
                        effective_from_ms: v.effective_from_ms(),
                        charge_unit: v.charge_unit().as_str().to_string(),
                        currency: v.currency().as_str().to_string(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Where a refund goes: back up the draw chain to the first account
    /// holding a bucket of that unit (a user who draws on its organisation's
    /// wallet is refunded into that wallet), else the account itself.
    fn refund_target(&self, account: AccountId, unit: Unit) -> AccountId {
        let mut current = account;
        for _ in 0..reckon_balances::ledger::DEPTH_MAX {
            let Some(view) = self.ledger.ledger.account(current) else {
                break;
            };
            if view.buckets.iter().any(|b| b.unit == unit && !b.expired) {
                return current;
            }
            match (view.draws_on_parent, view.parent) {
                (true, Some(parent)) => current = parent,
                _ => break,
            }
        }
        account
    }

    /// Releases the grants of sessions silent past their supervision time.
    fn supervise(&mut self, now: Timestamp) -> usize {
        let mut expired = 0;
        while let Some(Reverse((at, id))) = self.supervision.peek().cloned() {
            if at > now || expired >= 4096 {
                break;
            }
            self.supervision.pop();
            let silent = self.sessions.get(&id).is_some_and(|s| s.expires_at == at);
            if !silent {
                continue;
            }
            if let Some(mut session) = self.sessions.remove(&id) {
                self.release_grants(now, &mut session.grants);
                self.dirty_sessions.push(id.clone());
                expired += 1;
                tracing::info!(session = %id, "session supervision expired; grants released");
            }
        }
        expired
    }

    fn supervision_due(&self, now: Timestamp) -> bool {
        self.supervision
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
    }

    /// A digest of everything the engine's behaviour depends on: the
    /// ledger, the open sessions, the remembered answers and the
    /// configuration. Two engines with equal digests answer alike.
    pub fn state_digest(&self) -> u64 {
        self.state_digest_at(Timestamp(0))
    }

    /// The parts of [`Engine::state_digest_at`] — ledger, sessions,
    /// answers, configuration — so a difference can be located.
    pub fn digest_parts_at(&self, horizon: Timestamp) -> [u64; 4] {
        let ledger = self.ledger.ledger.state_digest_at(horizon);
        let mut d = reckon_balances::codec::Digest::default();
        let mut ids: Vec<&Arc<str>> = self.sessions.keys().collect();
        ids.sort_unstable();
        for id in ids {
            d.bytes16(id.as_bytes());
            encode_session(&mut d, &self.sessions[id]);
        }
        let sessions = d.finish();
        let mut d = reckon_balances::codec::Digest::default();
        let window = self.config.answer_window_ms;
        let mut answers: Vec<_> = self
            .answers
            .iter()
            .filter(|(_, (at, _))| at.plus_ms(window) > horizon)
            .collect();
        answers.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for ((id, number), (at, answer)) in answers {
            d.bytes16(id.as_bytes());
            d.u32(*number);
            d.time(*at);
            encode_answer(&mut d, answer);
        }
        let answers = d.finish();
        let mut d = reckon_balances::codec::Digest::default();
        encode_config(&mut d, &self.config);
        d.bytes16(self.active_card.as_deref().unwrap_or("").as_bytes());
        for f in &self.rate_files {
            encode_rate_file(&mut d, f.at, f.op, &f.name, &f.text);
        }
        [ledger, sessions, answers, d.finish()]
    }

    /// [`Engine::state_digest`] leaving out remembered answers and op ids
    /// already past their window at `horizon`: when they are forgotten
    /// (a pure function of time) cannot change any answer, so two states
    /// that differ only there behave the same from `horizon` on.
    pub fn state_digest_at(&self, horizon: Timestamp) -> u64 {
        let mut d = reckon_balances::codec::Digest::default();
        for part in self.digest_parts_at(horizon) {
            d.u64(part);
        }
        d.finish()
    }
}

/// The units an EVENT acts on: `requested` (RFC 4006's Requested-Service-
/// Unit for direct debiting), or `used` when a client reports those.
fn event_units(service: &ServiceRequest) -> &[Quantity] {
    if service.requested.is_empty() {
        &service.used
    } else {
        &service.requested
    }
}

// ---------------------------------------------------------------------------
// Log encoding of engine requests
// ---------------------------------------------------------------------------

const REC_CCR: u8 = 1;
const REC_LEDGER: u8 = 2;
const REC_SUPERVISE: u8 = 3;
const REC_CONFIG: u8 = 4;
const REC_RATECARD: u8 = 5;

fn encode_rate_file<S: Sink>(s: &mut S, at: Timestamp, op: u128, name: &str, text: &str) {
    s.time(at);
    s.u128(op);
    s.bytes16(name.as_bytes());
    s.u32(text.len() as u32);
    s.put(text.as_bytes());
}

fn decode_rate_file(
    r: &mut Reader<'_>,
) -> Result<(Timestamp, u128, Arc<str>, Arc<str>), DecodeError> {
    let at = r.time()?;
    let op = r.u128()?;
    let name =
        std::str::from_utf8(r.bytes16(256)?).map_err(|_| DecodeError::Invalid("rate card name"))?;
    let len = r.u32()? as usize;
    if len > RATE_CARD_TEXT_MAX {
        return Err(DecodeError::Invalid("rate card too long"));
    }
    let text =
        std::str::from_utf8(r.take(len)?).map_err(|_| DecodeError::Invalid("rate card text"))?;
    Ok((at, op, Arc::from(name), Arc::from(text)))
}

fn encode_config<S: Sink>(s: &mut S, c: &EngineConfig) {
    s.u16(c.prices.len() as u16);
    for p in &c.prices {
        s.bool(p.service.is_some());
        s.u32(p.service.map_or(0, |v| v.0));
        s.unit(p.unit);
        s.unit(p.charge_unit);
        encode_decimal(s, p.per_unit);
    }
    s.u16(c.policies.len() as u16);
    for p in &c.policies {
        s.bool(p.service.is_some());
        s.u32(p.service.map_or(0, |v| v.0));
        s.unit(p.default_unit);
        encode_decimal(s, p.default_grant);
        encode_decimal(s, p.max_grant);
        s.u32(p.validity_s);
    }
    s.u32(c.supervision_grace_s);
    s.u8(c.final_unit_action as u8);
    s.u64(c.answer_window_ms);
    s.u16(c.service_attributes.len() as u16);
    for (service, attributes) in &c.service_attributes {
        s.service(*service);
        s.u8(attributes.len() as u8);
        for (k, v) in attributes {
            s.bytes16(k.as_bytes());
            s.bytes16(v.as_bytes());
        }
    }
}

/// Most prices or policies in a configuration.
pub const CONFIG_ENTRIES_MAX: usize = 4096;

fn decode_config(r: &mut Reader<'_>) -> Result<EngineConfig, DecodeError> {
    let n = r.u16()? as usize;
    if n > CONFIG_ENTRIES_MAX {
        return Err(DecodeError::Invalid("too many prices"));
    }
    let mut prices = Vec::with_capacity(n);
    for _ in 0..n {
        let has = r.bool()?;
        let service = r.service()?;
        prices.push(Price {
            service: has.then_some(service),
            unit: r.unit()?,
            charge_unit: r.unit()?,
            per_unit: decode_decimal(r)?,
        });
    }
    let n = r.u16()? as usize;
    if n > CONFIG_ENTRIES_MAX {
        return Err(DecodeError::Invalid("too many policies"));
    }
    let mut policies = Vec::with_capacity(n);
    for _ in 0..n {
        let has = r.bool()?;
        let service = r.service()?;
        policies.push(ServicePolicy {
            service: has.then_some(service),
            default_unit: r.unit()?,
            default_grant: decode_decimal(r)?,
            max_grant: decode_decimal(r)?,
            validity_s: r.u32()?,
        });
    }
    let supervision_grace_s = r.u32()?;
    let final_unit_action = match r.u8()? {
        0 => FinalUnitAction::None,
        1 => FinalUnitAction::Terminate,
        2 => FinalUnitAction::Redirect,
        3 => FinalUnitAction::RestrictAccess,
        _ => return Err(DecodeError::Invalid("final unit action")),
    };
    let answer_window_ms = r.u64()?;
    let n = r.u16()? as usize;
    if n > CONFIG_ENTRIES_MAX {
        return Err(DecodeError::Invalid("too many service attributes"));
    }
    let mut service_attributes = Vec::with_capacity(n);
    for _ in 0..n {
        let service = r.service()?;
        let m = r.u8()? as usize;
        let mut attributes = Vec::with_capacity(m);
        for _ in 0..m {
            let k = std::str::from_utf8(r.bytes16(64)?)
                .map_err(|_| DecodeError::Invalid("attribute"))?
                .to_string();
            let v = std::str::from_utf8(r.bytes16(128)?)
                .map_err(|_| DecodeError::Invalid("attribute"))?
                .to_string();
            attributes.push((k, v));
        }
        service_attributes.push((service, attributes));
    }
    Ok(EngineConfig {
        prices,
        policies,
        supervision_grace_s,
        final_unit_action,
        answer_window_ms,
        service_attributes,
    })
}

fn encode_caller<S: Sink>(s: &mut S, caller: Caller) {
    match caller {
        Caller::Admin => {
            s.u8(0);
            s.u64(0);
        }
        Caller::Org(a) => {
            s.u8(1);
            s.account(a);
        }
    }
}

fn decode_caller(r: &mut Reader<'_>) -> Result<Caller, DecodeError> {
    let kind = r.u8()?;
    let id = r.account()?;
    match kind {
        0 => Ok(Caller::Admin),
        1 => Ok(Caller::Org(id)),
        _ => Err(DecodeError::Invalid("caller")),
    }
}

fn encode_decimal<S: Sink>(s: &mut S, d: Decimal) {
    s.i128(d.mantissa());
    s.u8(d.scale() as u8);
}

fn decode_decimal(r: &mut Reader<'_>) -> Result<Decimal, DecodeError> {
    let m = i128::from_le_bytes(r.take(16)?.try_into().map_err(|_| DecodeError::Truncated)?);
    let scale = r.u8()? as u32;
    Decimal::try_from_i128_with_scale(m, scale).map_err(|_| DecodeError::Invalid("decimal"))
}

fn encode_quantities<S: Sink>(s: &mut S, q: &[Quantity]) {
    s.u8(q.len() as u8);
    for (unit, amount) in q {
        s.unit(*unit);
        encode_decimal(s, *amount);
    }
}

fn decode_quantities(r: &mut Reader<'_>) -> Result<Vec<Quantity>, DecodeError> {
    let n = r.u8()? as usize;
    if n > UNITS_PER_SERVICE_MAX {
        return Err(DecodeError::Invalid("too many units"));
    }
    (0..n)
        .map(|_| Ok((r.unit()?, decode_decimal(r)?)))
        .collect()
}

fn encode_ccr<S: Sink>(s: &mut S, ccr: &CreditControlRequest) {
    s.bytes16(ccr.session_id.as_bytes());
    s.u8(ccr.request_type as u8);
    s.u32(ccr.request_number);
    s.account(ccr.account);
    s.u8(ccr.event_action as u8);
    s.u8(ccr.services.len() as u8);
    for service in &ccr.services {
        s.service(service.service);
        encode_quantities(s, &service.requested);
        encode_quantities(s, &service.used);
    }
}

fn decode_ccr(r: &mut Reader<'_>) -> Result<CreditControlRequest, DecodeError> {
    let session_id = std::str::from_utf8(r.bytes16(SESSION_ID_LEN_MAX)?)
        .map_err(|_| DecodeError::Invalid("session id"))?;
    let request_type = match r.u8()? {
        1 => RequestType::Initial,
        2 => RequestType::Update,
        3 => RequestType::Terminate,
        4 => RequestType::Event,
        _ => return Err(DecodeError::Invalid("request type")),
    };
    let request_number = r.u32()?;
    let account = r.account()?;
    let event_action = match r.u8()? {
        0 => EventAction::None,
        1 => EventAction::DirectDebit,
        2 => EventAction::Refund,
        3 => EventAction::CheckBalance,
        4 => EventAction::PriceEnquiry,
        _ => return Err(DecodeError::Invalid("event action")),
    };
    let n = r.u8()? as usize;
    if n > SERVICES_MAX {
        return Err(DecodeError::Invalid("too many services"));
    }
    let services = (0..n)
        .map(|_| {
            Ok(ServiceRequest {
                service: r.service()?,
                requested: decode_quantities(r)?,
                used: decode_quantities(r)?,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(CreditControlRequest {
        session_id: Arc::from(session_id),
        request_type,
        request_number,
        account,
        event_action,
        services,
    })
}

fn encode_answer<S: Sink>(s: &mut S, a: &CreditControlAnswer) {
    s.u32(a.result_code);
    s.u8(a.services.len() as u8);
    for service in &a.services {
        s.service(service.service);
        s.u32(service.result_code);
        encode_quantities(s, &service.granted);
        s.u32(service.validity_time_s);
        s.u8(service.final_unit_action as u8);
    }
    encode_quantities(s, &a.balance);
    encode_quantities(s, &a.price);
}

fn decode_answer(r: &mut Reader<'_>) -> Result<CreditControlAnswer, DecodeError> {
    let result_code = r.u32()?;
    let n = r.u8()? as usize;
    if n > SERVICES_MAX {
        return Err(DecodeError::Invalid("too many services"));
    }
    let services = (0..n)
        .map(|_| {
            Ok(ServiceAnswer {
                service: r.service()?,
                result_code: r.u32()?,
                granted: decode_quantities(r)?,
                validity_time_s: r.u32()?,
                final_unit_action: match r.u8()? {
                    0 => FinalUnitAction::None,
                    1 => FinalUnitAction::Terminate,
                    2 => FinalUnitAction::Redirect,
                    3 => FinalUnitAction::RestrictAccess,
                    _ => return Err(DecodeError::Invalid("final unit action")),
                },
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(CreditControlAnswer {
        result_code,
        services,
        balance: decode_quantities(r)?,
        price: decode_quantities(r)?,
    })
}

fn encode_session<S: Sink>(s: &mut S, v: &Session) {
    s.account(v.account);
    s.u32(v.last_number);
    s.time(v.expires_at);
    s.u8(v.grants.len() as u8);
    for g in &v.grants {
        s.service(g.service);
        s.unit(g.unit);
        s.u64(g.reservation.map_or(0, |r| r.0));
        s.time(g.granted_at);
    }
}

fn decode_session(r: &mut Reader<'_>) -> Result<Session, DecodeError> {
    let account = r.account()?;
    let last_number = r.u32()?;
    let expires_at = r.time()?;
    let n = r.u8()? as usize;
    let grants = (0..n)
        .map(|_| {
            let service = r.service()?;
            let unit = r.unit()?;
            let id = r.u64()?;
            let granted_at = r.time()?;
            Ok(Grant {
                service,
                unit,
                reservation: (id != 0).then_some(ReservationId(id)),
                granted_at,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(Session {
        account,
        last_number,
        grants,
        expires_at,
        dirty: false,
    })
}

/// Encodes an engine request as a log payload (without its timestamp).
fn encode_request(request: &EngineRequest, out: &mut Vec<u8>) -> bool {
    match request {
        EngineRequest::CreditControl(caller, ccr) => {
            out.u8(ENGINE_TAG);
            out.u8(REC_CCR);
            encode_caller(out, *caller);
            encode_ccr(out, ccr);
            true
        }
        EngineRequest::Ledger(caller, LedgerRequest::Apply(op)) => {
            out.u8(ENGINE_TAG);
            out.u8(REC_LEDGER);
            encode_caller(out, *caller);
            op.encode(out);
            true
        }
        // Reads change nothing and are not logged.
        EngineRequest::Ledger(_, _) => false,
        EngineRequest::Supervise => {
            out.u8(ENGINE_TAG);
            out.u8(REC_SUPERVISE);
            true
        }
        EngineRequest::Configure(config) => {
            out.u8(ENGINE_TAG);
            out.u8(REC_CONFIG);
            encode_config(out, config);
            true
        }
        EngineRequest::ApplyRateCard {
            caller,
            op,
            name,
            text,
        } => {
            out.u8(ENGINE_TAG);
            out.u8(REC_RATECARD);
            encode_caller(out, *caller);
            // The time is the record's own; encode_rate_file's slot is unused here.
            encode_rate_file(out, Timestamp(0), *op, name, text);
            true
        }
        EngineRequest::ShowRateCards(_) => false,
    }
}

impl Machine for Engine {
    type Request = EngineRequest;
    type Response = EngineResponse;

    fn apply(
        &mut self,
        now: Timestamp,
        request: EngineRequest,
        log: &mut Vec<u8>,
    ) -> EngineResponse {
        if let EngineRequest::Ledger(_, LedgerRequest::Apply(op)) = &request {
            if op.op == OpId::SERVER && matches!(op.command, Command::Sweep) {
                // Server-issued expiry sweep.
                log.u8(ENGINE_TAG);
                log.u8(REC_LEDGER);
                encode_caller(log, Caller::Admin);
                op.encode(log);
                return EngineResponse::Ledger(LedgerResponse::Applied(
                    self.ledger.ledger.apply(now, op),
                ));
            }
        }
        encode_request(&request, log);
        self.handle(now, request)
    }

    fn replay(&mut self, now: Timestamp, payload: &[u8]) -> Result<(), String> {
        let mut r = Reader::new(payload);
        let tag = r.u8().map_err(|e| e.to_string())?;
        if tag == reckon_balances::machine::LEDGER_TAG {
            return self.ledger.replay_payload(now, payload);
        }
        if tag != ENGINE_TAG {
            return Err(format!("unknown log record tag {tag}"));
        }
        match r.u8().map_err(|e| e.to_string())? {
            REC_CCR => {
                let caller = decode_caller(&mut r).map_err(|e| e.to_string())?;
                let ccr = decode_ccr(&mut r).map_err(|e| e.to_string())?;
                self.handle(now, EngineRequest::CreditControl(caller, ccr));
            }
            REC_LEDGER => {
                let caller = decode_caller(&mut r).map_err(|e| e.to_string())?;
                let op = Operation::decode(&mut r).map_err(|e| e.to_string())?;
                if op.op == OpId::SERVER {
                    let _ = self.ledger.ledger.apply(now, &op);
                } else {
                    self.handle(now, EngineRequest::Ledger(caller, LedgerRequest::Apply(op)));
                }
            }
            REC_SUPERVISE => {
                self.supervise(now);
            }
            REC_CONFIG => {
                let config = decode_config(&mut r).map_err(|e| e.to_string())?;
                self.handle(now, EngineRequest::Configure(config));
            }
            REC_RATECARD => {
                let caller = decode_caller(&mut r).map_err(|e| e.to_string())?;
                let (_, op, name, text) = decode_rate_file(&mut r).map_err(|e| e.to_string())?;
                self.handle(
                    now,
                    EngineRequest::ApplyRateCard {
                        caller,
                        op,
                        name,
                        text,
                    },
                );
            }
            other => return Err(format!("unknown engine record {other}")),
        }
        r.finish().map_err(|e| e.to_string())
    }

    fn checkpoint(&mut self, now: Timestamp) -> Vec<SnapshotWrite> {
        self.forget_answers(now);
        let mut writes = self.ledger.checkpoint_writes(now);
        let session_key = |id: &str| {
            let mut k = vec![ENGINE_TAG, b's'];
            k.extend_from_slice(id.as_bytes());
            k
        };
        for id in std::mem::take(&mut self.dirty_sessions) {
            match self.sessions.get_mut(&id) {
                Some(session) => {
                    session.dirty = false;
                    let mut v = Vec::new();
                    encode_session(&mut v, session);
                    writes.push((session_key(&id), Some(v)));
                }
                None => writes.push((session_key(&id), None)),
            }
        }
        let mut blob = Vec::new();
        let mut newest = Timestamp(0);
        for key in std::mem::take(&mut self.answers_added) {
            if let Some((at, answer)) = self.answers.get(&key) {
                blob.bytes16(key.0.as_bytes());
                blob.u32(key.1);
                blob.time(*at);
                encode_answer(&mut blob, answer);
                newest = newest.max(*at);
            }
        }
        let blob_key = |seq: u64| {
            let mut k = vec![ENGINE_TAG, b'a'];
            k.extend_from_slice(&seq.to_be_bytes());
            k
        };
        if !blob.is_empty() {
            writes.push((blob_key(self.checkpoint_seq), Some(blob)));
            self.answer_blobs.push((self.checkpoint_seq, newest));
        }
        let window = self.config.answer_window_ms;
        self.answer_blobs.retain(|(seq, newest)| {
            let keep = newest.plus_ms(window) > now;
            if !keep {
                writes.push((blob_key(*seq), None));
            }
            keep
        });
        if self.rates_dirty {
            self.rates_dirty = false;
            let mut v = Vec::new();
            v.u32(self.rate_files.len() as u32);
            for f in &self.rate_files {
                encode_rate_file(&mut v, f.at, f.op, &f.name, &f.text);
            }
            writes.push((vec![ENGINE_TAG, b'r'], Some(v)));
        }
        if self.config_dirty {
            self.config_dirty = false;
            let mut v = Vec::new();
            encode_config(&mut v, &self.config);
            writes.push((vec![ENGINE_TAG, b'c'], Some(v)));
        }
        self.checkpoint_seq += 1;
        let mut meta = Vec::new();
        meta.u64(self.checkpoint_seq);
        meta.time(self.answers_forgotten_below);
        writes.push((vec![ENGINE_TAG, b'0'], Some(meta)));
        writes
    }

    fn checkpoint_background(&mut self) -> Option<reckon_balances::journal::Deferred> {
        Some(self.ledger.audit_encoder())
    }

    fn restore(pairs: &mut dyn Iterator<Item = SnapshotPair>) -> Result<Self, String> {
        let mut engine_pairs = Vec::new();
        let mut ledger_pairs = pairs.filter_map(|(k, v)| {
            if k.first() == Some(&ENGINE_TAG) {
                engine_pairs.push((k, v));
                None
            } else {
                Some((k, v))
            }
        });
        let ledger = LedgerMachine::restore_pairs(&mut ledger_pairs)?;
        drop(ledger_pairs);
        let mut engine = Engine::new(ledger, EngineConfig::default());
        let mut answers: Vec<(Timestamp, Arc<str>, u32, CreditControlAnswer)> = Vec::new();
        for (k, v) in engine_pairs {
            let mut r = Reader::new(&v);
            match k.get(1) {
                Some(b's') => {
                    let id: Arc<str> =
                        Arc::from(std::str::from_utf8(&k[2..]).map_err(|e| e.to_string())?);
                    let session = decode_session(&mut r).map_err(|e| e.to_string())?;
                    engine
                        .supervision
                        .push(Reverse((session.expires_at, id.clone())));
                    engine.sessions.insert(id, session);
                }
                Some(b'a') => {
                    let seq = u64::from_be_bytes(k[2..].try_into().map_err(|_| "answer blob key")?);
                    let mut newest = Timestamp(0);
                    while !r.is_empty() {
                        let id = std::str::from_utf8(
                            r.bytes16(SESSION_ID_LEN_MAX).map_err(|e| e.to_string())?,
                        )
                        .map_err(|e| e.to_string())?;
                        let number = r.u32().map_err(|e| e.to_string())?;
                        let at = r.time().map_err(|e| e.to_string())?;
                        let answer = decode_answer(&mut r).map_err(|e| e.to_string())?;
                        newest = newest.max(at);
                        answers.push((at, Arc::from(id), number, answer));
                    }
                    engine.answer_blobs.push((seq, newest));
                }
                Some(b'0') => {
                    engine.checkpoint_seq = r.u64().map_err(|e| e.to_string())?;
                    engine.answers_forgotten_below = r.time().map_err(|e| e.to_string())?;
                }
                Some(b'c') => {
                    engine.config = decode_config(&mut r).map_err(|e| e.to_string())?;
                    engine.config_dirty = false;
                }
                Some(b'r') => {
                    let n = r.u32().map_err(|e| e.to_string())? as usize;
                    if n > RATE_FILES_MAX {
                        return Err("too many rate card files".into());
                    }
                    for _ in 0..n {
                        let (at, op, name, text) =
                            decode_rate_file(&mut r).map_err(|e| e.to_string())?;
                        // Re-applying each file at its own time rebuilds the
                        // book, the active card and the stored results.
                        engine.apply_rate_card(at, op, name, text);
                    }
                    engine.rates_dirty = false;
                }
                _ => return Err("unknown engine snapshot key".into()),
            }
        }
        answers.sort_by_key(|(at, id, n, _)| (*at, id.clone(), *n));
        for (at, id, number, answer) in answers {
            if at < engine.answers_forgotten_below {
                continue;
            }
            engine.answers.insert((id.clone(), number), (at, answer));
            engine.answer_order.push_back((at, id, number));
        }
        Ok(engine)
    }

    fn check(&self) -> Result<(), String> {
        self.ledger.ledger.check_invariants()?;
        for (id, session) in &self.sessions {
            for g in &session.grants {
                if let Some(r) = g.reservation {
                    if self.ledger.ledger.reservation(r).is_none() {
                        // A grant whose reservation lapsed is harmless (the
                        // ledger expired it); note it rather than refuse.
                        tracing::debug!(session = %id, reservation = r.0, "grant's reservation already expired");
                    }
                }
            }
        }
        Ok(())
    }

    fn due(&self, now: Timestamp) -> Option<EngineRequest> {
        if self.supervision_due(now) {
            return Some(EngineRequest::Supervise);
        }
        self.ledger
            .due_sweep(now)
            .map(|op| EngineRequest::Ledger(Caller::Admin, LedgerRequest::Apply(op)))
    }
}
