//! Translation between protocol messages and engine requests/responses.
//!
//! Bytes stay in `protocol`; domain rules stay in the engine. This module
//! only maps fields, and refuses up front what cannot be expressed in the
//! ledger (too many decimal places, out-of-range amounts) so that such a
//! request changes nothing and never reaches the writer.

use crate::engine::{
    self, Caller, CreditControlAnswer, CreditControlRequest, EngineRequest, EngineResponse,
    ServiceRequest,
};
use reckon_balances::machine::{LedgerRequest, LedgerResponse};
use reckon_balances::{
    AccountId, AccountStatus, Amount, AmountError, BucketId, BucketSpec, Command, CreditKind,
    InvalidInput, LedgerError, OpId, Operation, Outcome, Period, ReservationId, ServiceId,
    Timestamp, Unit,
};
use reckon_protocol::codes::{AdminCode, ErrorCode, ResultCode};
use reckon_protocol::message::{
    self as msg, AdminResult, Balance, BucketInfo, Message, ReservationInfo, Reservations,
};
use reckon_protocol::types::{self as wt, UnitAmount};
use rust_decimal::Decimal;
use std::sync::Arc;

/// How to turn the engine's response back into a message.
#[derive(Clone, Debug)]
pub enum ReplyShape {
    /// A CCA for this session and request number.
    Cca {
        /// Echoed session id.
        session_id: String,
        /// Echoed request number.
        request_number: u32,
    },
    /// An ADMIN_RESULT; `balance` fills its balance field when the outcome
    /// carries none (LIMIT_SET answers with the cap).
    Admin {
        /// Value for the balance field.
        balance: Option<Decimal>,
    },
    /// A BALANCE.
    Balance,
    /// A RATECARD_RESULT.
    RateCard,
    /// A RATECARDS listing.
    RateCards,
    /// A RESERVATIONS page of at most this many.
    Reservations {
        /// Page size asked for.
        limit: u32,
    },
}

/// A request ready for the writer, or an answer known without it.
#[derive(Clone, Debug)]
pub enum Prepared {
    /// Submit this to the engine, render its response with the shape.
    Submit(EngineRequest, ReplyShape),
    /// Answer at once.
    Immediate(Message),
}

fn unit(u: &wt::Unit) -> Unit {
    // Both crates admit exactly 1..=16 of [A-Za-z0-9_]: a protocol unit is
    // always a valid ledger unit.
    Unit::new(u.as_str()).unwrap_or(Unit::REQUESTS)
}

fn wire_unit(u: Unit) -> wt::Unit {
    wt::Unit::new(u.as_str()).unwrap_or(wt::Unit::REQUESTS)
}

fn amount_code(e: AmountError) -> AdminCode {
    match e {
        AmountError::TooPrecise => AdminCode::AMOUNT_TOO_PRECISE,
        AmountError::OutOfRange => AdminCode::AMOUNT_OUT_OF_RANGE,
    }
}

fn admin_error(code: AdminCode) -> Message {
    Message::AdminResult(AdminResult {
        code,
        bucket: 0,
        balance: Decimal::ZERO,
    })
}

fn quantities(list: &[UnitAmount]) -> Vec<engine::Quantity> {
    list.iter().map(|q| (unit(&q.unit), q.amount)).collect()
}

fn wire_quantities(list: &[engine::Quantity]) -> Vec<UnitAmount> {
    list.iter()
        .map(|(u, a)| UnitAmount::new(wire_unit(*u), *a))
        .collect()
}

/// Maps a request message to what the engine should do.
pub fn prepare(caller: Caller, message: Message) -> Prepared {
    let apply_with = |op_id: u128, command: Command, balance: Option<Decimal>| {
        Prepared::Submit(
            EngineRequest::Ledger(
                caller,
                LedgerRequest::Apply(Operation {
                    op: OpId(op_id),
                    command,
                }),
            ),
            ReplyShape::Admin { balance },
        )
    };
    let apply = |op_id: u128, command: Command| apply_with(op_id, command, None);
    macro_rules! amount {
        ($d:expr) => {
            match Amount::from_decimal($d) {
                Ok(a) => a,
                Err(e) => return Prepared::Immediate(admin_error(amount_code(e))),
            }
        };
    }
    match message {
        Message::Ccr(ccr) => {
            let shape = ReplyShape::Cca {
                session_id: ccr.session_id.clone(),
                request_number: ccr.request_number,
            };
            let request = CreditControlRequest {
                session_id: Arc::from(ccr.session_id.as_str()),
                request_type: match ccr.request_type {
                    wt::RequestType::Initial => engine::RequestType::Initial,
                    wt::RequestType::Update => engine::RequestType::Update,
                    wt::RequestType::Terminate => engine::RequestType::Terminate,
                    wt::RequestType::Event => engine::RequestType::Event,
                },
                request_number: ccr.request_number,
                account: AccountId(ccr.account),
                event_action: match ccr.event_action {
                    None => engine::EventAction::None,
                    Some(wt::EventAction::DirectDebit) => engine::EventAction::DirectDebit,
                    Some(wt::EventAction::Refund) => engine::EventAction::Refund,
                    Some(wt::EventAction::CheckBalance) => engine::EventAction::CheckBalance,
                    Some(wt::EventAction::PriceEnquiry) => engine::EventAction::PriceEnquiry,
                },
                timestamp_ms: ccr.timestamp_ms,
                services: ccr
                    .services
                    .iter()
                    .map(|s| ServiceRequest {
                        service: ServiceId(s.service_id),
                        requested: quantities(&s.requested),
                        used: quantities(&s.used),
                        report_only: false,
                    })
                    .collect(),
                attributes: ccr.attributes,
            };
            Prepared::Submit(EngineRequest::CreditControl(caller, request), shape)
        }
        Message::AccountCreate(m) => apply(
            m.op_id,
            Command::CreateAccount {
                account: AccountId(m.account),
                parent: m.parent.map(AccountId),
                draws_on_parent: m.draws_on_parent,
            },
        ),
        Message::AccountStatus(m) => apply(
            m.op_id,
            Command::SetStatus {
                account: AccountId(m.account),
                status: match m.status {
                    wt::AccountStatus::Active => AccountStatus::Active,
                    wt::AccountStatus::Suspended => AccountStatus::Suspended,
                    wt::AccountStatus::Closed => AccountStatus::Closed,
                },
            },
        ),
        Message::TopUp(m) => apply(
            m.op_id,
            Command::Credit {
                account: AccountId(m.account),
                unit: unit(&m.unit),
                amount: amount!(m.amount),
                bucket: m.bucket.map(BucketId),
                kind: match m.kind {
                    wt::CreditKind::TopUp => CreditKind::TopUp,
                    wt::CreditKind::Refund => CreditKind::Refund,
                },
                reason: Arc::from(m.reason.as_str()),
            },
        ),
        Message::Adjust(m) => apply(
            m.op_id,
            Command::Adjust {
                account: AccountId(m.account),
                bucket: BucketId(m.bucket),
                delta: amount!(m.delta),
                reason: Arc::from(m.reason.as_str()),
            },
        ),
        // SPEC 8.2: a new bucket is answered with its amount.
        Message::BucketGrant(m) => apply_with(
            m.op_id,
            Command::GrantBucket {
                account: AccountId(m.account),
                spec: BucketSpec {
                    unit: unit(&m.unit),
                    amount: amount!(m.amount),
                    valid_from: Timestamp(m.valid_from_ms),
                    valid_until: Timestamp(m.valid_until_ms),
                    priority: m.priority,
                    services: m.services.iter().map(|s| ServiceId(*s)).collect(),
                    credit_limit: amount!(m.credit_limit),
                },
            },
            Some(m.amount),
        ),
        Message::LimitSet(m) => {
            let cap = match m.cap {
                Some(c) => Some(amount!(c)),
                None => None,
            };
            // SPEC 8.2: answered with the cap (0 when removed).
            apply_with(
                m.op_id,
                Command::SetLimit {
                    account: AccountId(m.account),
                    unit: unit(&m.unit),
                    cap,
                    period: ledger_period(&m.period),
                    soft: m.soft,
                    alerts: m.alerts,
                },
                Some(m.cap.unwrap_or(Decimal::ZERO)),
            )
        }
        Message::BalanceQuery(m) => Prepared::Submit(
            EngineRequest::Ledger(caller, LedgerRequest::Account(AccountId(m.account))),
            ReplyShape::Balance,
        ),
        Message::ReservationList(m) => {
            // SPEC 6.5: 0, or more than the maximum, means the maximum.
            let max = reckon_protocol::limits::RESERVATIONS_MAX as u32;
            let limit = if m.limit == 0 { max } else { m.limit.min(max) };
            Prepared::Submit(
                EngineRequest::Ledger(
                    caller,
                    LedgerRequest::Reservations {
                        account: AccountId(m.account),
                        after: ReservationId(m.after),
                        // One more than asked tells whether another page follows.
                        limit: limit as usize + 1,
                    },
                ),
                ReplyShape::Reservations { limit },
            )
        }
        Message::RateCardApply(m) => {
            if m.op_id == 0 {
                return Prepared::Immediate(Message::RateCardResult(msg::RateCardResult {
                    code: AdminCode::INVALID_OP_ID,
                    card: String::new(),
                    versions_added: 0,
                    message: "op id 0 is reserved".into(),
                }));
            }
            Prepared::Submit(
                EngineRequest::ApplyRateCard {
                    caller,
                    op: m.op_id,
                    name: Arc::from(m.name.as_str()),
                    text: Arc::from(m.text.as_str()),
                },
                ReplyShape::RateCard,
            )
        }
        Message::RateCardShow(m) => {
            Prepared::Submit(EngineRequest::ShowRateCards(m.card), ReplyShape::RateCards)
        }
        other => Prepared::Immediate(Message::Error(msg::ErrorReply {
            code: ErrorCode::UNEXPECTED_KIND,
            message: format!(
                "{} is not a request this server accepts here",
                other.kind().name()
            ),
        })),
    }
}

/// The admin code of a ledger refusal.
pub fn admin_code(e: &LedgerError) -> AdminCode {
    match e {
        LedgerError::InvalidOpId => AdminCode::INVALID_OP_ID,
        LedgerError::OpIdReused => AdminCode::OP_ID_REUSED,
        LedgerError::AccountExists(_) => AdminCode::ACCOUNT_EXISTS,
        LedgerError::AccountNotFound(_) => AdminCode::ACCOUNT_NOT_FOUND,
        LedgerError::AccountNotActive { .. } => AdminCode::ACCOUNT_NOT_ACTIVE,
        LedgerError::HierarchyTooDeep(_) => AdminCode::HIERARCHY_TOO_DEEP,
        LedgerError::TooManyBuckets(_) => AdminCode::TOO_MANY_BUCKETS,
        LedgerError::BucketNotFound(_) => AdminCode::BUCKET_NOT_FOUND,
        LedgerError::UnitMismatch { .. } => AdminCode::UNIT_MISMATCH,
        LedgerError::InsufficientFunds { .. } => AdminCode::INSUFFICIENT_FUNDS,
        LedgerError::LimitExceeded { .. } => AdminCode::LIMIT_EXCEEDED,
        LedgerError::BalanceOverflow => AdminCode::BALANCE_OVERFLOW,
        LedgerError::ReservationNotFound(_)
        | LedgerError::ReservationExpired(_)
        | LedgerError::CommitExceedsReservation { .. } => AdminCode::INVALID_INPUT,
        LedgerError::Invalid(i) => match i {
            InvalidInput::AmountNotPositive => AdminCode::AMOUNT_NOT_POSITIVE,
            InvalidInput::MinAmount => AdminCode::MIN_AMOUNT,
            InvalidInput::ExpiryNotAfterNow => AdminCode::EXPIRY_NOT_AFTER_NOW,
            InvalidInput::ValidityWindow => AdminCode::VALIDITY_WINDOW,
            InvalidInput::AmountNegative => AdminCode::AMOUNT_NEGATIVE,
            InvalidInput::CreditLimitNegative => AdminCode::CREDIT_LIMIT_NEGATIVE,
            InvalidInput::TooManyServices => AdminCode::TOO_MANY_SERVICES,
            InvalidInput::ReasonTooLong => AdminCode::REASON_TOO_LONG,
            InvalidInput::DeltaZero => AdminCode::DELTA_ZERO,
            InvalidInput::UsedNegative => AdminCode::USED_NEGATIVE,
            InvalidInput::CapNegative => AdminCode::CAP_NEGATIVE,
            InvalidInput::OwnParent => AdminCode::OWN_PARENT,
            InvalidInput::ClosingIsFinal => AdminCode::CLOSING_IS_FINAL,
            InvalidInput::WindowTooLong => AdminCode::WINDOW_TOO_LONG,
            InvalidInput::SweepOpId => AdminCode::SWEEP_OP_ID,
            InvalidInput::CloseWithOpenReservations => AdminCode::CLOSE_WITH_OPEN_RESERVATIONS,
            InvalidInput::WindowZero => AdminCode::WINDOW_ZERO,
            InvalidInput::Period => AdminCode::PERIOD_INVALID,
            InvalidInput::TooManyLimits => AdminCode::TOO_MANY_LIMITS,
            InvalidInput::Thresholds => AdminCode::THRESHOLDS_INVALID,
        },
    }
}

fn forbidden() -> Message {
    Message::Error(msg::ErrorReply {
        code: ErrorCode::FORBIDDEN,
        message: "this credential may not act on that account".into(),
    })
}

/// The ledger's period for a protocol one (the codec checked its range;
/// the ledger checks it again and refuses with PERIOD_INVALID).
fn ledger_period(p: &wt::LimitPeriod) -> Period {
    match *p {
        wt::LimitPeriod::Lifetime => Period::Lifetime,
        wt::LimitPeriod::Months {
            months,
            anchor_ms,
            offset_min,
        } => Period::Months {
            months,
            anchor: Timestamp(anchor_ms),
            offset_min,
        },
        wt::LimitPeriod::Fixed {
            anchor_ms,
            length_ms,
        } => Period::Fixed {
            anchor: Timestamp(anchor_ms),
            length_ms,
        },
    }
}

/// A ledger alert as the protocol pushes it.
pub fn wire_alert(a: &reckon_balances::Alert) -> Message {
    Message::Alert(msg::Alert {
        seq: a.seq,
        at_ms: a.at.0,
        account: a.account.0,
        unit: wire_unit(a.unit),
        period_kind: a.period,
        period_start_ms: a.period_start.0,
        threshold_pct: a.threshold_pct,
        used: a.used.to_decimal(),
        cap: a.cap.to_decimal(),
        soft: a.soft,
    })
}

/// The protocol's period for a ledger one.
fn wire_period(p: &Period) -> wt::LimitPeriod {
    match *p {
        Period::Lifetime => wt::LimitPeriod::Lifetime,
        Period::Months {
            months,
            anchor,
            offset_min,
        } => wt::LimitPeriod::Months {
            months,
            anchor_ms: anchor.0,
            offset_min,
        },
        Period::Fixed { anchor, length_ms } => wt::LimitPeriod::Fixed {
            anchor_ms: anchor.0,
            length_ms,
        },
    }
}

fn cca(shape_session: String, request_number: u32, a: CreditControlAnswer) -> Message {
    Message::Cca(msg::Cca {
        result_code: ResultCode(a.result_code),
        session_id: shape_session,
        request_number,
        services: a
            .services
            .iter()
            .map(|s| msg::ServiceAnswer {
                service_id: s.service.0,
                result_code: ResultCode(s.result_code),
                granted: wire_quantities(&s.granted),
                validity_time_s: s.validity_time_s,
                final_unit_action: match s.final_unit_action {
                    engine::FinalUnitAction::None => None,
                    engine::FinalUnitAction::Terminate => Some(wt::FinalUnitAction::Terminate),
                    engine::FinalUnitAction::Redirect => Some(wt::FinalUnitAction::Redirect),
                    engine::FinalUnitAction::RestrictAccess => {
                        Some(wt::FinalUnitAction::RestrictAccess)
                    }
                },
                redirect: String::new(),
                denial: s.denial.map(|d| match d {
                    engine::Denial::NoCredit => wt::Denial::NoCredit,
                    engine::Denial::SpendControl { account, period } => wt::Denial::SpendControl {
                        account: account.0,
                        period_kind: period,
                    },
                }),
            })
            .collect(),
        balance: wire_quantities(&a.balance),
        price: wire_quantities(&a.price),
    })
}

/// A CCA answering TOO_BUSY (the request was not applied).
pub fn busy_reply(shape: &ReplyShape) -> Message {
    match shape {
        ReplyShape::Cca {
            session_id,
            request_number,
        } => cca(
            session_id.clone(),
            *request_number,
            CreditControlAnswer {
                result_code: engine::result_code::TOO_BUSY,
                services: Vec::new(),
                balance: Vec::new(),
                price: Vec::new(),
            },
        ),
        _ => Message::Error(msg::ErrorReply {
            code: ErrorCode::BUSY,
            message: "server busy; retry with backoff".into(),
        }),
    }
}

/// Renders the engine's response as the message the shape calls for.
pub fn render(shape: &ReplyShape, response: EngineResponse) -> Message {
    match (shape, response) {
        (_, EngineResponse::Forbidden) => forbidden(),
        (_, EngineResponse::NotFound) => admin_error(AdminCode::ACCOUNT_NOT_FOUND),
        (_, EngineResponse::UnknownUnit(_)) => admin_error(AdminCode::UNKNOWN_UNIT),
        (ReplyShape::RateCard, EngineResponse::RateCard(outcome)) => {
            Message::RateCardResult(match outcome {
                engine::RateCardOutcome::Applied {
                    card,
                    versions_added,
                    notice,
                } => msg::RateCardResult {
                    code: AdminCode::OK,
                    card,
                    versions_added,
                    message: notice
                        .chars()
                        .take(reckon_protocol::limits::RATECARD_MESSAGE_MAX / 4)
                        .collect(),
                },
                engine::RateCardOutcome::Refused { card, message } => msg::RateCardResult {
                    code: AdminCode::INVALID_INPUT,
                    card,
                    versions_added: 0,
                    message: message
                        .chars()
                        .take(reckon_protocol::limits::RATECARD_MESSAGE_MAX / 4)
                        .collect(),
                },
            })
        }
        (ReplyShape::RateCards, EngineResponse::RateCards(cards)) => {
            Message::RateCards(msg::RateCards {
                cards: cards
                    .into_iter()
                    .take(reckon_protocol::limits::RATECARDS_MAX)
                    .map(|c| msg::RateCardInfo {
                        card: c.card,
                        active: c.active,
                        versions: c
                            .versions
                            .into_iter()
                            .take(reckon_protocol::limits::RATECARD_VERSIONS_MAX)
                            .map(|v| msg::RateCardVersionInfo {
                                version: v.version,
                                effective_from_ms: v.effective_from_ms,
                                charge_unit: wt::Unit::new(&v.charge_unit)
                                    .unwrap_or(wt::Unit::CREDITS),
                                currency: wt::Unit::new(&v.currency).unwrap_or(wt::Unit::USD),
                            })
                            .collect(),
                    })
                    .collect(),
            })
        }
        (
            ReplyShape::Cca {
                session_id,
                request_number,
            },
            EngineResponse::CreditControl(a),
        ) => cca(session_id.clone(), *request_number, a),
        (
            ReplyShape::Admin { balance: hint },
            EngineResponse::Ledger(LedgerResponse::Applied(result)),
        ) => match result {
            Ok(outcome) => {
                let (bucket, balance) = match outcome {
                    Outcome::BucketGranted { bucket } => (bucket.0, hint.unwrap_or(Decimal::ZERO)),
                    Outcome::BalanceChanged { bucket, balance } => (bucket.0, balance.to_decimal()),
                    _ => (0, hint.unwrap_or(Decimal::ZERO)),
                };
                Message::AdminResult(AdminResult {
                    code: AdminCode::OK,
                    bucket,
                    balance,
                })
            }
            Err(e) => {
                let balance = match &e {
                    LedgerError::InsufficientFunds { available } => available.to_decimal(),
                    LedgerError::LimitExceeded { headroom, .. } => headroom.to_decimal(),
                    _ => Decimal::ZERO,
                };
                Message::AdminResult(AdminResult {
                    code: admin_code(&e),
                    bucket: 0,
                    balance,
                })
            }
        },
        (ReplyShape::Balance, EngineResponse::Ledger(LedgerResponse::Account(view))) => {
            match view {
                None => admin_error(AdminCode::ACCOUNT_NOT_FOUND),
                Some(v) => Message::Balance(Balance {
                    account: v.id.0,
                    parent: v.parent.map(|p| p.0),
                    status: match v.status {
                        AccountStatus::Active => wt::AccountStatus::Active,
                        AccountStatus::Suspended => wt::AccountStatus::Suspended,
                        AccountStatus::Closed => wt::AccountStatus::Closed,
                    },
                    draws_on_parent: v.draws_on_parent,
                    buckets: v
                        .buckets
                        .iter()
                        .map(|b| BucketInfo {
                            bucket: b.id.0,
                            unit: wire_unit(b.unit),
                            amount: b.amount.to_decimal(),
                            held: b.held.to_decimal(),
                            available: b.available.to_decimal(),
                            credit_limit: b.credit_limit.to_decimal(),
                            valid_from_ms: b.valid_from.0,
                            valid_until_ms: b.valid_until.0,
                            priority: b.priority,
                            expired: b.expired,
                            services: b.services.iter().map(|s| s.0).collect(),
                        })
                        .collect(),
                    limits: v
                        .limits
                        .iter()
                        .map(|l| msg::LimitInfo {
                            unit: wire_unit(l.unit),
                            cap: l.cap.to_decimal(),
                            used: l.used.to_decimal(),
                            held: l.held.to_decimal(),
                            period: wire_period(&l.period),
                            soft: l.soft,
                            period_start_ms: l.period_start.0,
                            period_end_ms: l.period_end.0,
                            alerts: l.alerts.clone(),
                        })
                        .collect(),
                }),
            }
        }
        (
            ReplyShape::Reservations { limit },
            EngineResponse::Ledger(LedgerResponse::Reservations(list)),
        ) => {
            let more = list.len() > *limit as usize;
            Message::Reservations(Reservations {
                more,
                reservations: list
                    .iter()
                    .take(*limit as usize)
                    .map(|r| ReservationInfo {
                        reservation: r.id.0,
                        account: r.account.0,
                        unit: wire_unit(r.unit),
                        remaining: r.remaining.to_decimal(),
                        expires_at_ms: r.expires_at.0,
                    })
                    .collect(),
            })
        }
        (_, other) => Message::Error(msg::ErrorReply {
            code: ErrorCode::INTERNAL,
            message: format!("unexpected engine response {other:?}"),
        }),
    }
}
