//! Shared test helpers: one sample message of every kind, edge-case
//! messages, and proptest strategies for arbitrary valid messages.
#![allow(dead_code)]

use proptest::collection::vec;
use proptest::prelude::*;
use reckon_protocol::limits::*;
use reckon_protocol::*;
use rust_decimal::Decimal;

/// A decimal from mantissa and scale.
pub fn dec(m: i128, s: u32) -> Decimal {
    Decimal::from_i128_with_scale(m, s)
}

/// A unit by name.
pub fn unit(name: &str) -> Unit {
    Unit::new(name).unwrap()
}

/// A (unit, amount) pair.
pub fn ua(name: &str, m: i128, s: u32) -> UnitAmount {
    UnitAmount::new(unit(name), dec(m, s))
}

/// Largest mantissa a decimal may have.
pub const MANTISSA_MAX: i128 = (1 << 96) - 1;

pub fn bucket_info() -> BucketInfo {
    BucketInfo {
        bucket: 5,
        unit: Unit::USD,
        amount: dec(2500, 2),
        held: dec(50, 2),
        available: dec(2450, 2),
        credit_limit: Decimal::ZERO,
        valid_from_ms: 0,
        valid_until_ms: u64::MAX,
        priority: -3,
        expired: false,
        services: vec![10, 20],
    }
}

/// One typical message of every kind (batches included).
pub fn samples() -> Vec<Message> {
    let ccr = Message::Ccr(Ccr {
        session_id: "gw1;1700000000;42".into(),
        request_type: RequestType::Initial,
        request_number: 0,
        account: 1001,
        event_action: None,
        termination_cause: None,
        timestamp_ms: 0,
        services: vec![
            ServiceRequest {
                service_id: 10,
                requested: vec![ua("tokens_in", 1200, 0), ua("tokens_out", 4096, 0)],
                used: vec![],
            },
            ServiceRequest {
                service_id: 20,
                requested: vec![ua("gpu_seconds", 3600, 0)],
                used: vec![ua("gpu_seconds", 12345, 3)],
            },
        ],
        attributes: Vec::new(),
    });
    let cca = Message::Cca(Cca {
        result_code: ResultCode::SUCCESS,
        session_id: "gw1;1700000000;42".into(),
        request_number: 0,
        services: vec![ServiceAnswer {
            service_id: 10,
            result_code: ResultCode::CREDIT_LIMIT_REACHED,
            granted: vec![ua("tokens_out", 4096, 0)],
            validity_time_s: 600,
            final_unit_action: Some(FinalUnitAction::Redirect),
            redirect: "https://pay.example/topup".into(),
            denial: None,
        }],
        balance: vec![ua("USD", -15, 1)],
        price: vec![ua("credits", 123, 4)],
    });
    let topup = Message::TopUp(TopUp {
        op_id: u128::MAX,
        account: 1001,
        unit: Unit::USD,
        amount: dec(2500, 2),
        bucket: Some(7),
        kind: CreditKind::Refund,
        reason: "card payment".into(),
    });
    let balance = Message::Balance(Balance {
        account: 1001,
        parent: Some(1000),
        status: AccountStatus::Suspended,
        draws_on_parent: true,
        buckets: vec![bucket_info(), bucket_info()],
        limits: Vec::new(),
    });
    let admin_result = Message::AdminResult(AdminResult {
        code: AdminCode::INSUFFICIENT_FUNDS,
        bucket: 0,
        balance: dec(-1, 9),
    });
    let reservations = Message::Reservations(Reservations {
        more: true,
        reservations: vec![ReservationInfo {
            reservation: 77,
            account: 1001,
            unit: Unit::TOKENS_OUT,
            remaining: dec(4096, 0),
            expires_at_ms: 1_700_000_600_000,
        }],
    });
    let error = Message::Error(ErrorReply {
        code: ErrorCode::FORBIDDEN,
        message: "admin credential required".into(),
    });
    let account_create = Message::AccountCreate(AccountCreate {
        op_id: 1,
        account: 1001,
        parent: None,
        draws_on_parent: false,
    });
    let account_status = Message::AccountStatus(AccountStatusChange {
        op_id: 2,
        account: 1001,
        status: AccountStatus::Closed,
    });
    let adjust = Message::Adjust(Adjust {
        op_id: 3,
        account: 1001,
        bucket: 5,
        delta: dec(-MANTISSA_MAX, 28),
        reason: String::new(),
    });
    let grant = Message::BucketGrant(BucketGrant {
        op_id: 4,
        account: 1001,
        unit: Unit::GPU_SECONDS,
        amount: dec(MANTISSA_MAX, 0),
        valid_from_ms: 1,
        valid_until_ms: u64::MAX,
        priority: i16::MIN,
        credit_limit: dec(100, 0),
        services: (0..BUCKET_SERVICES_MAX as u32).collect(),
    });
    let limit = Message::LimitSet(LimitSet {
        op_id: 5,
        account: 1000,
        unit: Unit::CREDITS,
        cap: Some(dec(0, 3)),
        period: LimitPeriod::Lifetime,
        soft: false,
        alerts: Vec::new(),
    });
    let limit_none = Message::LimitSet(LimitSet {
        op_id: 6,
        account: 1000,
        unit: Unit::CREDITS,
        cap: None,
        period: LimitPeriod::Lifetime,
        soft: false,
        alerts: Vec::new(),
    });
    let query = Message::BalanceQuery(BalanceQuery { account: 1001 });
    let list = Message::ReservationList(ReservationList {
        account: 1001,
        after: 76,
        limit: 0,
    });
    let batch = Message::Batch(Batch {
        entries: vec![
            ccr.clone(),
            account_create.clone(),
            account_status.clone(),
            topup.clone(),
            adjust.clone(),
            grant.clone(),
            limit.clone(),
            query.clone(),
            list.clone(),
        ],
    });
    let batch_result = Message::BatchResult(BatchResult {
        entries: vec![
            cca.clone(),
            admin_result.clone(),
            balance.clone(),
            reservations.clone(),
            error.clone(),
        ],
    });
    vec![
        Message::Hello(Hello {
            min_version: 1,
            max_version: 3,
            credential: "k".repeat(CREDENTIAL_MAX),
            client_name: "é".repeat(CLIENT_NAME_MAX / 2),
        }),
        Message::HelloOk(HelloOk {
            version: 1,
            org_id: 1000,
            is_admin: true,
            max_frame: MIN_NEGOTIATED_MAX_FRAME,
            keepalive_s: 30,
            server_name: "reckon/0.1.0".into(),
        }),
        Message::Ping,
        Message::Pong,
        ccr,
        cca,
        account_create,
        account_status,
        topup,
        adjust,
        grant,
        limit,
        limit_none,
        query,
        list,
        admin_result,
        balance,
        reservations,
        error,
        batch,
        batch_result,
        Message::Batch(Batch { entries: vec![] }),
        Message::RateCardApply(RateCardApply {
            op_id: 9,
            name: "inference.toml".into(),
            text: "card = \"inference\"\n".into(),
        }),
        Message::RateCardShow(RateCardShow {
            card: String::new(),
        }),
        Message::RateCardResult(RateCardResult {
            code: AdminCode::INVALID_INPUT,
            card: "inference".into(),
            versions_added: 0,
            message: "inference.toml:3:1: versions[0].version: missing".into(),
        }),
        Message::Status,
        Message::Backup(Backup {
            dir: "/var/backups/r1".into(),
        }),
        Message::BackupResult(BackupResult {
            code: AdminCode::OK,
            lsn: 1500,
            digest: 0x1122_3344_5566_7788,
            bytes: 5 << 20,
            message: String::new(),
        }),
        Message::StatusResult(StatusResult {
            version: "0.1.0".into(),
            uptime_s: 3600,
            ready: true,
            recovered_lsn: 1000,
            durable_lsn: 1500,
            queue_depth: 2,
            queue_capacity: 65536,
            connections: 3,
            sessions: 12,
            reservations: 15,
            checkpoint_lsn: 1400,
            checkpoint_at_ms: 1_735_689_600_000,
            wal_bytes: 1 << 20,
            data_dir_bytes: 4 << 20,
        }),
        Message::RateCards(RateCards {
            cards: vec![RateCardInfo {
                card: "inference".into(),
                active: true,
                versions: vec![RateCardVersionInfo {
                    version: 2,
                    effective_from_ms: 1_740_787_200_000,
                    charge_unit: Unit::CREDITS,
                    currency: unit("USD"),
                }],
            }],
        }),
        Message::AlertSubscribe(AlertSubscribe { after: 0 }),
        Message::AlertSubscribed(AlertSubscribed {
            oldest_seq: 1,
            last_seq: 0,
        }),
        Message::Alert(alert()),
    ]
}

/// An alert: department 7's monthly USD budget reached 80 % (400.00 of 500.00).
pub fn alert() -> Alert {
    Alert {
        seq: 42,
        at_ms: 1_772_900_000_000,
        account: 7,
        unit: Unit::USD,
        period_kind: 1,
        period_start_ms: 1_772_319_600_000,
        threshold_pct: 80,
        used: dec(40000, 2),
        cap: dec(50000, 2),
        soft: false,
    }
}

/// Any valid `ALERT_SUBSCRIBE`, `ALERT_SUBSCRIBED` or `ALERT` (version 3).
pub fn arb_alert_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u64>().prop_map(|after| Message::AlertSubscribe(AlertSubscribe { after })),
        (any::<u64>(), any::<u64>()).prop_map(|(last_seq, pick)| {
            // oldest_seq in 1 ..= last_seq + 1: `span` values (no more than u64 holds).
            let span = last_seq.saturating_add(1);
            Message::AlertSubscribed(AlertSubscribed {
                oldest_seq: 1 + pick % span,
                last_seq,
            })
        }),
        (
            (1..=u64::MAX, any::<u64>(), any::<u64>()),
            arb_unit(),
            (0..=LimitPeriod::KIND_FIXED, any::<u64>(), 1..=ALERT_PCT_MAX),
            (arb_decimal(), arb_decimal(), any::<bool>()),
        )
            .prop_map(
                |(
                    (seq, at_ms, account),
                    unit,
                    (period_kind, period_start_ms, threshold_pct),
                    (used, cap, soft),
                )| {
                    Message::Alert(Alert {
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
                    })
                },
            ),
    ]
}

/// A calendar-month period in UTC+01:00 from 2026-01-01T00:00 local.
pub fn monthly() -> LimitPeriod {
    LimitPeriod::Months {
        months: 1,
        anchor_ms: 1_767_222_000_000,
        offset_min: 60,
    }
}

/// A spend control as `BALANCE` reports it (version 3), alerting at 80 and 100 %.
pub fn limit_info(period: LimitPeriod, soft: bool) -> LimitInfo {
    LimitInfo {
        unit: Unit::USD,
        cap: dec(50000, 2),
        used: dec(48025, 2),
        held: dec(1975, 2),
        period,
        soft,
        period_start_ms: 1_772_319_600_000,
        period_end_ms: 1_774_998_000_000,
        alerts: vec![80, 100],
    }
}

/// Messages whose version-3 fields are set: spend-control periods, soft
/// caps, alert thresholds, `BALANCE` limits and CCA denials, alone and in
/// batches. None of them can be written in version 1 or 2 without losing
/// something.
pub fn samples_v3() -> Vec<Message> {
    let limit = |op_id, period, soft| {
        Message::LimitSet(LimitSet {
            op_id,
            account: 1000,
            unit: Unit::USD,
            cap: Some(dec(50000, 2)),
            period,
            soft,
            alerts: Vec::new(),
        })
    };
    // Thresholds alone make a LIMIT_SET version 3's: the widest list.
    let alerting = Message::LimitSet(LimitSet {
        op_id: 5,
        account: 1000,
        unit: Unit::USD,
        cap: Some(dec(50000, 2)),
        period: LimitPeriod::Lifetime,
        soft: false,
        alerts: vec![1, 50, 80, 90, 100, 120, 200, ALERT_PCT_MAX],
    });
    let answer = |service_id, denial| ServiceAnswer {
        service_id,
        result_code: ResultCode::CREDIT_LIMIT_REACHED,
        granted: Vec::new(),
        validity_time_s: 0,
        final_unit_action: None,
        redirect: String::new(),
        denial,
    };
    let cca = Message::Cca(Cca {
        result_code: ResultCode::SUCCESS,
        session_id: "gw1;1700000000;43".into(),
        request_number: 0,
        services: vec![
            answer(
                10,
                Some(Denial::SpendControl {
                    account: 7,
                    period_kind: 1,
                }),
            ),
            answer(20, Some(Denial::NoCredit)),
            answer(
                30,
                Some(Denial::SpendControl {
                    account: u64::MAX,
                    period_kind: LimitPeriod::KIND_FIXED,
                }),
            ),
        ],
        balance: Vec::new(),
        price: Vec::new(),
    });
    let balance = Message::Balance(Balance {
        account: 7,
        parent: Some(1000),
        status: AccountStatus::Active,
        draws_on_parent: true,
        buckets: vec![bucket_info()],
        limits: vec![
            limit_info(monthly(), false),
            LimitInfo {
                alerts: Vec::new(),
                ..limit_info(LimitPeriod::Lifetime, true)
            },
            LimitInfo {
                period_end_ms: u64::MAX,
                alerts: vec![ALERT_PCT_MAX],
                ..limit_info(
                    LimitPeriod::Fixed {
                        anchor_ms: 0,
                        length_ms: PERIOD_LENGTH_MAX_MS,
                    },
                    false,
                )
            },
        ],
    });
    let many = Message::Balance(Balance {
        account: 8,
        parent: None,
        status: AccountStatus::Suspended,
        draws_on_parent: false,
        buckets: Vec::new(),
        limits: vec![limit_info(LimitPeriod::Lifetime, false); LIMITS_MAX],
    });
    let limits = vec![
        limit(1, monthly(), false),
        limit(
            2,
            LimitPeriod::Months {
                months: 12,
                anchor_ms: 0,
                offset_min: -PERIOD_OFFSET_MIN_MAX,
            },
            true,
        ),
        limit(
            3,
            LimitPeriod::Fixed {
                anchor_ms: u64::MAX,
                length_ms: PERIOD_LENGTH_MIN_MS,
            },
            false,
        ),
        limit(4, LimitPeriod::Lifetime, true),
        alerting,
    ];
    let mut out = limits.clone();
    out.extend([
        cca.clone(),
        balance.clone(),
        many,
        Message::Batch(Batch { entries: limits }),
        Message::BatchResult(BatchResult {
            entries: vec![cca, balance],
        }),
    ]);
    out
}

// ---------------------------------------------------------------- strategies

pub fn arb_unit() -> impl Strategy<Value = Unit> {
    "[A-Za-z0-9_]{1,16}".prop_map(|s| Unit::new(&s).unwrap())
}

pub fn arb_decimal() -> impl Strategy<Value = Decimal> {
    (-MANTISSA_MAX..=MANTISSA_MAX, 0u32..=28).prop_map(|(m, s)| dec(m, s))
}

pub fn arb_string(max: usize) -> impl Strategy<Value = String> {
    // Mixed-width characters; trimmed to `max` bytes on a char boundary.
    proptest::string::string_regex(&format!(".{{0,{max}}}"))
        .unwrap()
        .prop_map(move |s| {
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        })
}

pub fn arb_amounts(max: usize) -> impl Strategy<Value = Vec<UnitAmount>> {
    vec(
        (arb_unit(), arb_decimal()).prop_map(|(u, a)| UnitAmount::new(u, a)),
        0..=max,
    )
}

fn arb_services(max: usize) -> impl Strategy<Value = Vec<u32>> {
    vec(any::<u32>(), 0..=max)
}

fn pick<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

/// Any valid spend-control period.
pub fn arb_limit_period() -> impl Strategy<Value = LimitPeriod> {
    prop_oneof![
        Just(LimitPeriod::Lifetime),
        (
            1..=PERIOD_MONTHS_MAX,
            any::<u64>(),
            -PERIOD_OFFSET_MIN_MAX..=PERIOD_OFFSET_MIN_MAX
        )
            .prop_map(|(months, anchor_ms, offset_min)| LimitPeriod::Months {
                months,
                anchor_ms,
                offset_min
            }),
        (any::<u64>(), PERIOD_LENGTH_MIN_MS..=PERIOD_LENGTH_MAX_MS).prop_map(
            |(anchor_ms, length_ms)| LimitPeriod::Fixed {
                anchor_ms,
                length_ms
            }
        ),
    ]
}

/// Any valid alert thresholds: distinct percents 1 ..= 250, increasing, at most 8.
pub fn arb_thresholds() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::btree_set(1..=ALERT_PCT_MAX, 0..=ALERT_THRESHOLDS_MAX)
        .prop_map(|s| s.into_iter().collect())
}

/// A `LIMIT_SET`'s period, softness and thresholds: anything in version
/// 3, else the only values older versions can carry.
fn arb_period_soft(v3: bool) -> BoxedStrategy<(LimitPeriod, bool, Vec<u8>)> {
    if v3 {
        (arb_limit_period(), any::<bool>(), arb_thresholds()).boxed()
    } else {
        Just((LimitPeriod::Lifetime, false, Vec::new())).boxed()
    }
}

/// A CCA service's denial: any in version 3, else none.
fn arb_denial(v3: bool) -> BoxedStrategy<Option<Denial>> {
    if v3 {
        proptest::option::of(prop_oneof![
            Just(Denial::NoCredit),
            (any::<u64>(), 0..=LimitPeriod::KIND_FIXED).prop_map(|(account, period_kind)| {
                Denial::SpendControl {
                    account,
                    period_kind,
                }
            }),
        ])
        .boxed()
    } else {
        Just(None).boxed()
    }
}

/// A `BALANCE`'s spend controls: up to 3 in version 3, else none.
fn arb_limits(v3: bool) -> BoxedStrategy<Vec<LimitInfo>> {
    if !v3 {
        return Just(Vec::new()).boxed();
    }
    vec(
        (
            arb_unit(),
            (arb_decimal(), arb_decimal(), arb_decimal()),
            arb_limit_period(),
            (any::<bool>(), arb_thresholds()),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(
                    unit,
                    (cap, used, held),
                    period,
                    (soft, alerts),
                    period_start_ms,
                    period_end_ms,
                )| {
                    LimitInfo {
                        unit,
                        cap,
                        used,
                        held,
                        period,
                        soft,
                        period_start_ms,
                        period_end_ms,
                        alerts,
                    }
                },
            ),
        0..=3,
    )
    .boxed()
}

fn arb_ccr() -> impl Strategy<Value = Message> {
    (
        arb_string(SESSION_ID_MAX),
        pick(RequestType::ALL),
        any::<u32>(),
        any::<u64>(),
        proptest::option::of(pick(EventAction::ALL)),
        proptest::option::of(pick(TerminationCause::ALL)),
        any::<u64>(),
        vec(
            (
                any::<u32>(),
                arb_amounts(UNIT_AMOUNTS_MAX),
                arb_amounts(UNIT_AMOUNTS_MAX),
            )
                .prop_map(|(service_id, requested, used)| ServiceRequest {
                    service_id,
                    requested,
                    used,
                }),
            0..=4,
        ),
    )
        .prop_map(
            |(
                session_id,
                request_type,
                request_number,
                account,
                event_action,
                termination_cause,
                timestamp_ms,
                services,
            )| {
                Message::Ccr(Ccr {
                    session_id,
                    request_type,
                    request_number,
                    account,
                    event_action,
                    termination_cause,
                    timestamp_ms,
                    services,
                    attributes: Vec::new(),
                })
            },
        )
}

fn arb_cca(v3: bool) -> impl Strategy<Value = Message> {
    (
        any::<u32>(),
        arb_string(SESSION_ID_MAX),
        any::<u32>(),
        vec(
            (
                any::<u32>(),
                any::<u32>(),
                arb_amounts(UNIT_AMOUNTS_MAX),
                any::<u32>(),
                proptest::option::of(pick(FinalUnitAction::ALL)),
                arb_string(REDIRECT_MAX),
                arb_denial(v3),
            )
                .prop_map(
                    |(
                        service_id,
                        code,
                        granted,
                        validity_time_s,
                        final_unit_action,
                        redirect,
                        denial,
                    )| {
                        ServiceAnswer {
                            service_id,
                            result_code: ResultCode(code),
                            granted,
                            validity_time_s,
                            final_unit_action,
                            redirect,
                            denial,
                        }
                    },
                ),
            0..=4,
        ),
        arb_amounts(BALANCE_ENTRIES_MAX),
        arb_amounts(UNIT_AMOUNTS_MAX),
    )
        .prop_map(
            |(code, session_id, request_number, services, balance, price)| {
                Message::Cca(Cca {
                    result_code: ResultCode(code),
                    session_id,
                    request_number,
                    services,
                    balance,
                    price,
                })
            },
        )
}

fn arb_bucket_info() -> impl Strategy<Value = BucketInfo> {
    (
        any::<u64>(),
        arb_unit(),
        (arb_decimal(), arb_decimal(), arb_decimal(), arb_decimal()),
        any::<u64>(),
        any::<u64>(),
        any::<i16>(),
        any::<bool>(),
        arb_services(BUCKET_SERVICES_MAX),
    )
        .prop_map(
            |(
                bucket,
                unit,
                (amount, held, available, credit_limit),
                valid_from_ms,
                valid_until_ms,
                priority,
                expired,
                services,
            )| BucketInfo {
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
            },
        )
}

/// Any valid request that may be a `BATCH` entry, with version-3 fields
/// set when `v3`.
pub fn arb_batch_request(v3: bool) -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_ccr(),
        (
            any::<u128>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<bool>()
        )
            .prop_map(
                |(op_id, account, parent, draws_on_parent)| Message::AccountCreate(AccountCreate {
                    op_id,
                    account,
                    parent,
                    draws_on_parent
                })
            ),
        (any::<u128>(), any::<u64>(), pick(AccountStatus::ALL)).prop_map(
            |(op_id, account, status)| {
                Message::AccountStatus(AccountStatusChange {
                    op_id,
                    account,
                    status,
                })
            }
        ),
        (
            any::<u128>(),
            any::<u64>(),
            arb_unit(),
            arb_decimal(),
            proptest::option::of(any::<u64>()),
            pick(CreditKind::ALL),
            arb_string(REASON_MAX)
        )
            .prop_map(|(op_id, account, unit, amount, bucket, kind, reason)| {
                Message::TopUp(TopUp {
                    op_id,
                    account,
                    unit,
                    amount,
                    bucket,
                    kind,
                    reason,
                })
            }),
        (
            any::<u128>(),
            any::<u64>(),
            any::<u64>(),
            arb_decimal(),
            arb_string(REASON_MAX)
        )
            .prop_map(
                |(op_id, account, bucket, delta, reason)| Message::Adjust(Adjust {
                    op_id,
                    account,
                    bucket,
                    delta,
                    reason
                })
            ),
        (
            any::<u128>(),
            any::<u64>(),
            arb_unit(),
            arb_decimal(),
            any::<u64>(),
            any::<u64>(),
            any::<i16>(),
            arb_decimal(),
            arb_services(BUCKET_SERVICES_MAX)
        )
            .prop_map(
                |(
                    op_id,
                    account,
                    unit,
                    amount,
                    valid_from_ms,
                    valid_until_ms,
                    priority,
                    credit_limit,
                    services,
                )| {
                    Message::BucketGrant(BucketGrant {
                        op_id,
                        account,
                        unit,
                        amount,
                        valid_from_ms,
                        valid_until_ms,
                        priority,
                        credit_limit,
                        services,
                    })
                }
            ),
        (
            any::<u128>(),
            any::<u64>(),
            arb_unit(),
            proptest::option::of(arb_decimal()),
            arb_period_soft(v3)
        )
            .prop_map(|(op_id, account, unit, cap, (period, soft, alerts))| {
                Message::LimitSet(LimitSet {
                    op_id,
                    account,
                    unit,
                    cap,
                    period,
                    soft,
                    alerts,
                })
            }),
        any::<u64>().prop_map(|account| Message::BalanceQuery(BalanceQuery { account })),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(account, after, limit)| {
            Message::ReservationList(ReservationList {
                account,
                after,
                limit,
            })
        }),
    ]
}

/// Any valid answer that may be a `BATCH_RESULT` entry, with version-3
/// fields set when `v3`.
pub fn arb_batch_answer(v3: bool) -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_cca(v3),
        (any::<u32>(), any::<u64>(), arb_decimal()).prop_map(|(code, bucket, balance)| {
            Message::AdminResult(AdminResult {
                code: AdminCode(code),
                bucket,
                balance,
            })
        }),
        (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            pick(AccountStatus::ALL),
            any::<bool>(),
            vec(arb_bucket_info(), 0..=3),
            arb_limits(v3)
        )
            .prop_map(
                |(account, parent, status, draws_on_parent, buckets, limits)| {
                    Message::Balance(Balance {
                        account,
                        parent,
                        status,
                        draws_on_parent,
                        buckets,
                        limits,
                    })
                }
            ),
        (
            any::<bool>(),
            vec(
                (
                    any::<u64>(),
                    any::<u64>(),
                    arb_unit(),
                    arb_decimal(),
                    any::<u64>()
                )
                    .prop_map(
                        |(reservation, account, unit, remaining, expires_at_ms)| ReservationInfo {
                            reservation,
                            account,
                            unit,
                            remaining,
                            expires_at_ms
                        }
                    ),
                0..=5
            )
        )
            .prop_map(|(more, reservations)| Message::Reservations(Reservations {
                more,
                reservations
            })),
        (any::<u16>(), arb_string(ERROR_MESSAGE_MAX)).prop_map(|(code, message)| {
            Message::Error(ErrorReply {
                code: ErrorCode(code),
                message,
            })
        }),
    ]
}

/// Any valid message of any kind, with version-3 fields set (and version
/// 3's alert kinds among them) when `v3`.
pub fn arb_message(v3: bool) -> impl Strategy<Value = Message> {
    let alerts = if v3 {
        arb_alert_message().boxed()
    } else {
        Just(Message::Ping).boxed()
    };
    prop_oneof![
        1 => alerts,
        4 => arb_batch_request(v3),
        4 => arb_batch_answer(v3),
        1 => (any::<u16>(), any::<u16>(), arb_string(CREDENTIAL_MAX), arb_string(CLIENT_NAME_MAX)).prop_map(
            |(min_version, max_version, credential, client_name)| Message::Hello(Hello {
                min_version,
                max_version,
                credential,
                client_name
            })
        ),
        1 => (
            any::<u16>(),
            any::<u64>(),
            any::<bool>(),
            MIN_NEGOTIATED_MAX_FRAME..=MAX_FRAME_CAP,
            any::<u16>(),
            arb_string(SERVER_NAME_MAX)
        )
            .prop_map(|(version, org_id, is_admin, max_frame, keepalive_s, server_name)| Message::HelloOk(HelloOk {
                version,
                org_id,
                is_admin,
                max_frame,
                keepalive_s,
                server_name
            })),
        1 => Just(Message::Ping),
        1 => Just(Message::Pong),
        1 => vec(arb_batch_request(v3), 0..=4).prop_map(|entries| Message::Batch(Batch { entries })),
        1 => vec(arb_batch_answer(v3), 0..=4).prop_map(|entries| Message::BatchResult(BatchResult { entries })),
    ]
}

/// Any valid version-1 frame.
pub fn arb_frame() -> impl Strategy<Value = Frame> {
    (any::<u64>(), arb_message(false)).prop_map(|(id, m)| Frame::new(id, m))
}

/// Any valid frame whose version-3 fields (spend-control periods and soft
/// caps, `BALANCE` limits, CCA denials) may be set.
pub fn arb_frame_v3() -> impl Strategy<Value = Frame> {
    (any::<u64>(), arb_message(true)).prop_map(|(id, m)| Frame::new(id, m))
}

/// The frame's bytes.
pub fn bytes_of(frame: &Frame) -> Vec<u8> {
    frame.to_bytes().unwrap().to_vec()
}
