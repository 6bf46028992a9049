//! Credit-control engine: every message type and result code, retransmissions,
//! ordering, supervision, tenancy, overspending, and durable replay.

use reckon_balances::journal::{Clock, Journal, JournalConfig, Machine};
use reckon_balances::machine::{LedgerMachine, LedgerRequest, LedgerResponse};
use reckon_balances::{
    AccountId, Amount, Command, CreditKind, OpId, Operation, ServiceId, Timestamp, Unit,
};
use reckon_charging::engine::{
    result_code as rc, Caller, CreditControlAnswer, CreditControlRequest, Engine, EngineConfig,
    EngineRequest, EngineResponse, EventAction, FinalUnitAction, Price, RequestType, ServicePolicy,
    ServiceRequest,
};
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const T0: u64 = 1_800_000_000_000;
const ORG: AccountId = AccountId(100);
const USER: AccountId = AccountId(101);
const OTHER_ORG: AccountId = AccountId(200);
const CHAT: ServiceId = ServiceId(10);
const DATA: ServiceId = ServiceId(20);

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        prices: vec![
            Price {
                service: Some(CHAT),
                unit: Unit::TOKENS_OUT,
                charge_unit: Unit::USD,
                per_unit: d("0.00002"),
            },
            Price {
                service: None,
                unit: Unit::OCTETS,
                charge_unit: Unit::USD,
                per_unit: d("0.000001"),
            },
        ],
        policies: vec![
            ServicePolicy {
                service: Some(CHAT),
                default_unit: Unit::TOKENS_OUT,
                default_grant: d("1000"),
                max_grant: d("8192"),
                validity_s: 60,
            },
            ServicePolicy {
                service: None,
                default_unit: Unit::OCTETS,
                default_grant: d("1000000"),
                max_grant: d("100000000"),
                validity_s: 600,
            },
        ],
        supervision_grace_s: 30,
        final_unit_action: FinalUnitAction::Terminate,
        answer_window_ms: 600_000,
        service_attributes: vec![],
        units: vec![],
        answers_max: 1_000_000,
    }
}

struct World {
    engine: Engine,
    now: Timestamp,
    op: u128,
}

impl World {
    fn new(usd: &str) -> World {
        let mut w = World {
            engine: Engine::new(LedgerMachine::default(), config()),
            now: Timestamp(T0),
            op: 1,
        };
        w.admin(Command::CreateAccount {
            account: ORG,
            parent: None,
            draws_on_parent: false,
        });
        w.admin(Command::CreateAccount {
            account: USER,
            parent: Some(ORG),
            draws_on_parent: true,
        });
        w.admin(Command::CreateAccount {
            account: OTHER_ORG,
            parent: None,
            draws_on_parent: false,
        });
        if usd != "0" {
            w.admin(Command::Credit {
                account: ORG,
                unit: Unit::USD,
                amount: Amount::from_decimal(d(usd)).unwrap(),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: "test".into(),
            });
        }
        w
    }

    fn admin(&mut self, command: Command) {
        self.op += 1;
        let r = self.engine.handle(
            self.now,
            EngineRequest::Ledger(
                Caller::Admin,
                LedgerRequest::Apply(Operation {
                    op: OpId(self.op),
                    command,
                }),
            ),
        );
        assert!(
            matches!(r, EngineResponse::Ledger(LedgerResponse::Applied(Ok(_)))),
            "{r:?}"
        );
    }

    fn ccr(&mut self, caller: Caller, ccr: CreditControlRequest) -> CreditControlAnswer {
        match self
            .engine
            .handle(self.now, EngineRequest::CreditControl(caller, ccr))
        {
            EngineResponse::CreditControl(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn usd(&mut self, account: AccountId) -> (Decimal, Decimal) {
        let view = self.engine.ledger.ledger.account(account).unwrap();
        let b = view.buckets.iter().find(|b| b.unit == Unit::USD).unwrap();
        (b.amount.to_decimal(), b.held.to_decimal())
    }
}

fn req(
    session: &str,
    kind: RequestType,
    number: u32,
    services: Vec<ServiceRequest>,
) -> CreditControlRequest {
    CreditControlRequest {
        session_id: Arc::from(session),
        request_type: kind,
        request_number: number,
        account: USER,
        event_action: if kind == RequestType::Event {
            EventAction::DirectDebit
        } else {
            EventAction::None
        },
        timestamp_ms: 0,
        services,
        attributes: Vec::new(),
    }
}

fn tokens(requested: &str, used: &str) -> ServiceRequest {
    let q = |v: &str| {
        if v.is_empty() {
            vec![]
        } else {
            vec![(Unit::TOKENS_OUT, d(v))]
        }
    };
    ServiceRequest {
        service: CHAT,
        requested: q(requested),
        used: q(used),
        report_only: false,
    }
}

#[test]
fn session_lifecycle_debits_exactly_what_was_used() {
    let mut w = World::new("10");
    let a = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Initial, 0, vec![tokens("4096", "")]),
    );
    assert_eq!(a.result_code, rc::SUCCESS);
    assert_eq!(a.services[0].granted, vec![(Unit::TOKENS_OUT, d("4096"))]);
    assert_eq!(a.services[0].validity_time_s, 60);
    assert_eq!(a.services[0].final_unit_action, FinalUnitAction::None);
    // 4096 tokens × 0.00002 = 0.08192 held on the organisation's wallet.
    assert_eq!(w.usd(ORG), (d("10"), d("0.08192")));

    let a = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Update, 1, vec![tokens("2000", "1213")]),
    );
    assert_eq!(a.result_code, rc::SUCCESS);
    assert_eq!(a.services[0].granted, vec![(Unit::TOKENS_OUT, d("2000"))]);
    // 1213 × 0.00002 = 0.02426 debited; the next grant holds 0.04.
    assert_eq!(w.usd(ORG), (d("9.97574"), d("0.04")));

    let a = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Terminate, 2, vec![tokens("", "500")]),
    );
    assert_eq!(a.result_code, rc::SUCCESS);
    assert_eq!(w.usd(ORG), (d("9.96574"), d("0")));
    assert_eq!(w.engine.session_count(), 0);
    w.engine.ledger.ledger.check_invariants().unwrap();
}

#[test]
fn an_update_that_only_reports_usage_gets_no_new_grant() {
    let mut w = World::new("10");
    let a = w.ccr(
        Caller::Org(ORG),
        req("r1", RequestType::Initial, 0, vec![tokens("4096", "")]),
    );
    assert_eq!(a.result_code, rc::SUCCESS);
    let mut report = tokens("", "1000");
    report.report_only = true;
    let a = w.ccr(
        Caller::Org(ORG),
        req("r1", RequestType::Update, 1, vec![report.clone()]),
    );
    assert_eq!(a.result_code, rc::SUCCESS);
    assert!(a.services[0].granted.is_empty(), "{a:?}");
    // 1000 tokens debited, the rest of the grant released, nothing held.
    assert_eq!(w.usd(ORG), (d("9.98"), d("0")));
    // Report-only is an UPDATE's: anywhere else it is inconsistent.
    let a = w.ccr(
        Caller::Org(ORG),
        req("r2", RequestType::Initial, 0, vec![report]),
    );
    assert_eq!(a.result_code, rc::INVALID_AVP_VALUE);
    assert_eq!(w.usd(ORG), (d("9.98"), d("0")));
}

#[test]
fn retransmissions_get_the_original_answer_and_never_debit_twice() {
    let mut w = World::new("10");
    let first = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Initial, 0, vec![tokens("1000", "")]),
    );
    assert_eq!(
        w.ccr(
            Caller::Org(ORG),
            req("s1", RequestType::Initial, 0, vec![tokens("1000", "")])
        ),
        first
    );
    let update = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Update, 1, vec![tokens("1000", "1000")]),
    );
    let after_update = w.usd(ORG);
    assert_eq!(
        w.ccr(
            Caller::Org(ORG),
            req("s1", RequestType::Update, 1, vec![tokens("1000", "1000")])
        ),
        update
    );
    assert_eq!(
        w.usd(ORG),
        after_update,
        "a retransmitted UPDATE debited again"
    );
    let term = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Terminate, 2, vec![tokens("", "10")]),
    );
    let after_term = w.usd(ORG);
    assert_eq!(
        w.ccr(
            Caller::Org(ORG),
            req("s1", RequestType::Terminate, 2, vec![tokens("", "10")])
        ),
        term
    );
    assert_eq!(
        w.usd(ORG),
        after_term,
        "a retransmitted TERMINATE debited again"
    );
    assert_eq!(after_term, (d("9.9798"), d("0")));
}

#[test]
fn out_of_order_and_unknown_sessions_are_refused_without_change() {
    let mut w = World::new("10");
    w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Initial, 0, vec![tokens("100", "")]),
    );
    w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Update, 5, vec![tokens("100", "50")]),
    );
    let before = w.usd(ORG);
    let late = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Update, 3, vec![tokens("100", "50")]),
    );
    assert_eq!(late.result_code, rc::UNABLE_TO_COMPLY);
    assert_eq!(w.usd(ORG), before);
    let unknown = w.ccr(
        Caller::Org(ORG),
        req("nope", RequestType::Update, 1, vec![tokens("100", "50")]),
    );
    assert_eq!(unknown.result_code, rc::UNKNOWN_SESSION_ID);
    let mut bad = req("s2", RequestType::Initial, 0, vec![tokens("-1", "")]);
    assert_eq!(
        w.ccr(Caller::Org(ORG), bad.clone()).result_code,
        rc::INVALID_AVP_VALUE
    );
    bad.account = AccountId(999);
    bad.services = vec![tokens("1", "")];
    assert_eq!(w.ccr(Caller::Org(ORG), bad).result_code, rc::USER_UNKNOWN);
    assert_eq!(w.usd(ORG), before);
}

#[test]
fn low_balance_gives_a_smaller_final_grant_then_credit_limit_reached() {
    // 0.01 USD buys 500 tokens at 0.00002.
    let mut w = World::new("0.01");
    let a = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Initial, 0, vec![tokens("4096", "")]),
    );
    assert_eq!(a.result_code, rc::SUCCESS);
    assert_eq!(a.services[0].granted, vec![(Unit::TOKENS_OUT, d("500"))]);
    assert_eq!(a.services[0].final_unit_action, FinalUnitAction::Terminate);
    // Using the whole grant and asking for more: the usage is debited (so
    // the request succeeded) and the new grant is refused for the service.
    let a = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Update, 1, vec![tokens("1000", "500")]),
    );
    assert_eq!(a.services[0].result_code, rc::CREDIT_LIMIT_REACHED);
    assert_eq!(a.result_code, rc::SUCCESS);
    assert!(a.services[0].granted.is_empty());
    assert_eq!(w.usd(ORG), (d("0"), d("0")));
    // A new session on an empty wallet is refused at once.
    let a = w.ccr(
        Caller::Org(ORG),
        req("s2", RequestType::Initial, 0, vec![tokens("10", "")]),
    );
    assert_eq!(a.result_code, rc::CREDIT_LIMIT_REACHED);
}

#[test]
fn usage_beyond_the_grant_is_still_debited_as_far_as_credit_goes() {
    let mut w = World::new("0.05");
    w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Initial, 0, vec![tokens("1000", "")]),
    );
    // 1000 granted (0.02), 3000 used (0.06): 0.05 collectable.
    let a = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Terminate, 1, vec![tokens("", "3000")]),
    );
    assert_eq!(a.services[0].result_code, rc::CREDIT_LIMIT_REACHED);
    assert_eq!(w.usd(ORG), (d("0"), d("0")));
}

#[test]
fn events_debit_refund_check_and_price() {
    let mut w = World::new("1");
    let mut ev = req("e1", RequestType::Event, 0, vec![tokens("", "1000")]);
    assert_eq!(w.ccr(Caller::Org(ORG), ev.clone()).result_code, rc::SUCCESS);
    assert_eq!(w.usd(ORG), (d("0.98"), d("0")));
    // Retransmitted event: same answer, no second debit.
    assert_eq!(w.ccr(Caller::Org(ORG), ev.clone()).result_code, rc::SUCCESS);
    assert_eq!(w.usd(ORG), (d("0.98"), d("0")));
    // A direct debit larger than the balance is refused whole.
    ev.session_id = Arc::from("e2");
    ev.services = vec![tokens("", "100000")];
    let a = w.ccr(Caller::Org(ORG), ev);
    assert_eq!(a.result_code, rc::CREDIT_LIMIT_REACHED);
    assert_eq!(w.usd(ORG), (d("0.98"), d("0")));

    // A refund with nothing charged behind it would mint money: refused.
    let mut refund = req("e3", RequestType::Event, 0, vec![tokens("", "500")]);
    refund.event_action = EventAction::Refund;
    assert_eq!(
        w.ccr(Caller::Org(ORG), refund).result_code,
        rc::REFUND_NOT_COVERED
    );
    assert_eq!(w.usd(ORG), (d("0.98"), d("0")));
    // A refund of half of event e1 (its next request number) gives back
    // half of what e1 collected; the rest can follow, but never more.
    let mut refund = req("e1", RequestType::Event, 1, vec![tokens("", "500")]);
    refund.event_action = EventAction::Refund;
    assert_eq!(
        w.ccr(Caller::Org(ORG), refund.clone()).result_code,
        rc::SUCCESS
    );
    assert_eq!(w.usd(ORG), (d("0.99"), d("0")));
    assert_eq!(w.ccr(Caller::Org(ORG), refund).result_code, rc::SUCCESS);
    assert_eq!(w.usd(ORG), (d("0.99"), d("0")));
    let mut more = req("e1", RequestType::Event, 2, vec![tokens("", "501")]);
    more.event_action = EventAction::Refund;
    assert_eq!(
        w.ccr(Caller::Org(ORG), more).result_code,
        rc::REFUND_NOT_COVERED
    );
    // A refused request keeps its number (ids are never reused): the next
    // refund takes the next one.
    let mut rest = req("e1", RequestType::Event, 3, vec![tokens("", "500")]);
    rest.event_action = EventAction::Refund;
    assert_eq!(w.ccr(Caller::Org(ORG), rest).result_code, rc::SUCCESS);
    assert_eq!(w.usd(ORG), (d("1.00"), d("0")));
    // Spend it again so the checks below see 0.99.
    let ev = req("e6", RequestType::Event, 0, vec![tokens("", "500")]);
    assert_eq!(w.ccr(Caller::Org(ORG), ev).result_code, rc::SUCCESS);
    assert_eq!(w.usd(ORG), (d("0.99"), d("0")));

    let mut check = req("e4", RequestType::Event, 0, vec![tokens("1", "")]);
    check.event_action = EventAction::CheckBalance;
    assert_eq!(
        w.ccr(Caller::Org(ORG), check).balance,
        vec![(Unit::USD, d("0.99"))]
    );

    let mut price = req("e5", RequestType::Event, 0, vec![tokens("1213", "")]);
    price.event_action = EventAction::PriceEnquiry;
    assert_eq!(
        w.ccr(Caller::Org(ORG), price).price,
        vec![(Unit::USD, d("0.02426"))]
    );
}

#[test]
fn several_services_per_session_are_granted_and_settled_separately() {
    let mut w = World::new("10");
    let data = ServiceRequest {
        service: DATA,
        requested: vec![],
        used: vec![],
        report_only: false,
    };
    let a = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Initial, 0, vec![tokens("100", ""), data]),
    );
    assert_eq!(a.services.len(), 2);
    assert_eq!(a.services[1].granted, vec![(Unit::OCTETS, d("1000000"))]);
    assert_eq!(a.services[1].validity_time_s, 600);
    // 100 tokens (0.002) + 1M octets (1.0) held.
    assert_eq!(w.usd(ORG), (d("10"), d("1.002")));
    let data_used = ServiceRequest {
        service: DATA,
        requested: vec![],
        used: vec![(Unit::OCTETS, d("250000"))],
        report_only: false,
    };
    w.ccr(
        Caller::Org(ORG),
        req(
            "s1",
            RequestType::Terminate,
            1,
            vec![tokens("", "100"), data_used],
        ),
    );
    assert_eq!(w.usd(ORG), (d("9.748"), d("0")));
}

#[test]
fn silent_sessions_are_released_by_supervision() {
    let mut w = World::new("10");
    w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Initial, 0, vec![tokens("1000", "")]),
    );
    assert_eq!(w.usd(ORG), (d("10"), d("0.02")));
    // Validity 60 s + grace 30 s.
    w.now = Timestamp(T0 + 89_000);
    assert!(w.engine.due(w.now).is_none());
    w.now = Timestamp(T0 + 90_000);
    let due = w.engine.due(w.now).expect("supervision due");
    let mut log = Vec::new();
    w.engine.apply(w.now, 0, due, &mut log);
    assert!(!log.is_empty(), "supervision is logged");
    assert_eq!(w.engine.session_count(), 0);
    assert_eq!(w.usd(ORG), (d("10"), d("0")));
    let late = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Update, 1, vec![tokens("10", "10")]),
    );
    assert_eq!(late.result_code, rc::UNKNOWN_SESSION_ID);
}

#[test]
fn supervision_memory_follows_open_sessions_not_updates() {
    let mut w = World::new("1000000");
    w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Initial, 0, vec![tokens("1", "")]),
    );
    for n in 1..=20_000u32 {
        w.now = Timestamp(w.now.0 + 1);
        let a = w.ccr(
            Caller::Org(ORG),
            req("s1", RequestType::Update, n, vec![tokens("1", "1")]),
        );
        assert_eq!(a.result_code, rc::SUCCESS);
    }
    assert_eq!(w.engine.session_count(), 1);
    let queued = w.engine.supervision_queue_len();
    assert!(
        queued <= 2 + 4096 + 1,
        "one open session keeps {queued} supervision entries"
    );
    // The rebuilt queue still supervises the session.
    w.now = Timestamp(w.now.0 + 90_000);
    let due = w.engine.due(w.now).expect("supervision due");
    let mut log = Vec::new();
    w.engine.apply(w.now, 0, due, &mut log);
    assert_eq!(w.engine.session_count(), 0);
}

#[test]
fn an_organisation_cannot_touch_another_organisations_accounts() {
    let mut w = World::new("10");
    let mut foreign = req("s1", RequestType::Initial, 0, vec![tokens("10", "")]);
    foreign.account = USER;
    assert_eq!(
        w.ccr(Caller::Org(OTHER_ORG), foreign).result_code,
        rc::USER_UNKNOWN
    );
    let r = w.engine.handle(
        w.now,
        EngineRequest::Ledger(Caller::Org(OTHER_ORG), LedgerRequest::Account(USER)),
    );
    assert_eq!(
        r,
        EngineResponse::NotFound,
        "another organisation's account looks absent"
    );
    let topup = Operation {
        op: OpId(9_999),
        command: Command::Credit {
            account: USER,
            unit: Unit::USD,
            amount: Amount::from_units(1),
            bucket: None,
            kind: CreditKind::TopUp,
            reason: "".into(),
        },
    };
    let r = w.engine.handle(
        w.now,
        EngineRequest::Ledger(Caller::Org(OTHER_ORG), LedgerRequest::Apply(topup.clone())),
    );
    assert_eq!(r, EngineResponse::Forbidden);
    let root = Operation {
        op: OpId(9_998),
        command: Command::CreateAccount {
            account: AccountId(5),
            parent: None,
            draws_on_parent: false,
        },
    };
    let r = w.engine.handle(
        w.now,
        EngineRequest::Ledger(Caller::Org(ORG), LedgerRequest::Apply(root)),
    );
    assert_eq!(
        r,
        EngineResponse::Forbidden,
        "only admins create organisations"
    );
    // Changes need an admin credential, even on the organisation's own accounts.
    let r = w.engine.handle(
        w.now,
        EngineRequest::Ledger(Caller::Org(ORG), LedgerRequest::Apply(topup.clone())),
    );
    assert_eq!(r, EngineResponse::Forbidden);
    let r = w.engine.handle(
        w.now,
        EngineRequest::Ledger(Caller::Admin, LedgerRequest::Apply(topup)),
    );
    assert!(matches!(
        r,
        EngineResponse::Ledger(LedgerResponse::Applied(Ok(_)))
    ));
    // It may read its own accounts.
    let r = w.engine.handle(
        w.now,
        EngineRequest::Ledger(Caller::Org(ORG), LedgerRequest::Account(USER)),
    );
    assert!(matches!(
        r,
        EngineResponse::Ledger(LedgerResponse::Account(Some(_)))
    ));
}

#[test]
fn concurrent_sessions_on_one_account_never_overspend() {
    let mut w = World::new("1");
    // 1 USD = 50,000 tokens. Fifty sessions each want 4,096.
    let mut granted = Decimal::ZERO;
    for i in 0..50 {
        let a = w.ccr(
            Caller::Org(ORG),
            req(
                &format!("s{i}"),
                RequestType::Initial,
                0,
                vec![tokens("4096", "")],
            ),
        );
        for (_, q) in a.services.iter().flat_map(|s| s.granted.iter()) {
            granted += *q;
        }
    }
    assert_eq!(granted, d("50000"));
    // Everyone uses their whole grant.
    for i in 0..50 {
        let a = w.ccr(
            Caller::Org(ORG),
            req(
                &format!("s{i}"),
                RequestType::Update,
                1,
                vec![tokens("", "4096")],
            ),
        );
        let _ = a;
    }
    let (amount, held) = w.usd(ORG);
    assert!(amount >= Decimal::ZERO, "overspent: {amount}");
    assert_eq!(held, d("0"));
    w.engine.ledger.ledger.check_invariants().unwrap();
}

#[test]
fn the_journaled_engine_replays_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(T0));
    let read = now.clone();
    let clock: Clock = Arc::new(move || Timestamp(read.load(Ordering::SeqCst)));
    let mut cfg = JournalConfig::new(dir.path());
    cfg.checkpoint_on_shutdown = false;
    cfg.checkpoint_records = 7;
    let call = |j: &Journal<Engine>, r: EngineRequest| j.call(r).unwrap();
    let (j, _) = Journal::<Engine>::open(cfg.clone(), clock.clone()).unwrap();
    assert_eq!(
        call(&j, EngineRequest::Configure(config())),
        EngineResponse::Configured
    );
    let mut op = 0u128;
    let mut admin = |j: &Journal<Engine>, command: Command| {
        op += 1;
        call(
            j,
            EngineRequest::Ledger(
                Caller::Admin,
                LedgerRequest::Apply(Operation {
                    op: OpId(op),
                    command,
                }),
            ),
        )
    };
    admin(
        &j,
        Command::CreateAccount {
            account: ORG,
            parent: None,
            draws_on_parent: false,
        },
    );
    admin(
        &j,
        Command::CreateAccount {
            account: USER,
            parent: Some(ORG),
            draws_on_parent: true,
        },
    );
    admin(
        &j,
        Command::Credit {
            account: ORG,
            unit: Unit::USD,
            amount: Amount::from_units(5),
            bucket: None,
            kind: CreditKind::TopUp,
            reason: "".into(),
        },
    );
    let mut answers = Vec::new();
    // Checkpoints every 7 records for the first half; then none, so the
    // last requests are replayed from the log whatever the timing.
    let mut quiet = cfg.clone();
    quiet.checkpoint_records = u64::MAX;
    quiet.checkpoint_interval_ms = u64::MAX;
    let mut j = j;
    for i in 0..20u32 {
        if i == 12 {
            j.shutdown();
            j = Journal::<Engine>::open(quiet.clone(), clock.clone())
                .unwrap()
                .0;
        }
        now.store(T0 + i as u64 * 1000, Ordering::SeqCst);
        let s = format!("s{}", i % 4);
        let kind = match i / 4 {
            0 => RequestType::Initial,
            4 => RequestType::Terminate,
            _ => RequestType::Update,
        };
        let used = if kind == RequestType::Initial {
            ""
        } else {
            "321"
        };
        answers.push(call(
            &j,
            EngineRequest::CreditControl(
                Caller::Org(ORG),
                req(
                    &s,
                    kind,
                    i / 4,
                    vec![tokens(
                        if kind == RequestType::Terminate {
                            ""
                        } else {
                            "1000"
                        },
                        used,
                    )],
                ),
            ),
        ));
    }
    for a in &answers {
        match a {
            EngineResponse::CreditControl(a) => assert_eq!(a.result_code, rc::SUCCESS, "{a:?}"),
            other => panic!("{other:?}"),
        }
    }
    let digest = |j: &Journal<Engine>| match call(
        j,
        EngineRequest::Ledger(Caller::Admin, LedgerRequest::StateDigest),
    ) {
        EngineResponse::Ledger(LedgerResponse::StateDigest(d)) => d,
        other => panic!("{other:?}"),
    };
    let before = digest(&j);
    j.shutdown();
    let (j, report) = Journal::<Engine>::open(cfg, clock).unwrap();
    assert!(report.replayed >= 8, "{report:?}");
    assert!(report.snapshot_lsn > 0, "{report:?}");
    assert_eq!(digest(&j), before);
    // A retransmission after the restart still gets the stored answer.
    let again = call(
        &j,
        EngineRequest::CreditControl(
            Caller::Org(ORG),
            req("s3", RequestType::Terminate, 4, vec![tokens("", "321")]),
        ),
    );
    assert_eq!(again, answers[19]);
    assert_eq!(digest(&j), before);
    j.shutdown();
}

#[test]
fn suspended_accounts_are_denied_and_unrateable_usage_is_refused() {
    let mut w = World::new("10");
    w.admin(Command::SetStatus {
        account: ORG,
        status: reckon_balances::AccountStatus::Suspended,
    });
    // A suspended organisation denies its users' new grants.
    let a = w.ccr(
        Caller::Org(ORG),
        req("s1", RequestType::Initial, 0, vec![tokens("100", "")]),
    );
    assert_eq!(a.result_code, rc::END_USER_SERVICE_DENIED);
    assert_eq!(a.services[0].result_code, rc::END_USER_SERVICE_DENIED);
    assert_eq!(w.usd(ORG), (d("10"), d("0")));
    w.admin(Command::SetStatus {
        account: ORG,
        status: reckon_balances::AccountStatus::Active,
    });
    // Quantities beyond the ledger's range are refused as invalid.
    let mut price = req(
        "e1",
        RequestType::Event,
        0,
        vec![tokens("100000000000000000000000000", "")],
    );
    price.event_action = EventAction::PriceEnquiry;
    assert_eq!(
        w.ccr(Caller::Org(ORG), price).result_code,
        rc::INVALID_AVP_VALUE
    );
    let debit = req(
        "e2",
        RequestType::Event,
        0,
        vec![tokens("100000000000000000000000000", "")],
    );
    assert_eq!(
        w.ccr(Caller::Org(ORG), debit).result_code,
        rc::INVALID_AVP_VALUE
    );

    assert_eq!(w.usd(ORG), (d("10"), d("0")));
}

#[test]
fn inconsistent_requests_are_refused_whole() {
    let mut w = World::new("10");
    let mut r = req("", RequestType::Initial, 0, vec![tokens("1", "")]);
    assert_eq!(
        w.ccr(Caller::Org(ORG), r.clone()).result_code,
        rc::MISSING_AVP
    );
    r.session_id = Arc::from("s1");
    r.services.clear();
    assert_eq!(
        w.ccr(Caller::Org(ORG), r.clone()).result_code,
        rc::MISSING_AVP
    );
    r.services = vec![tokens("1", ""), tokens("2", "")];
    assert_eq!(
        w.ccr(Caller::Org(ORG), r.clone()).result_code,
        rc::INVALID_AVP_VALUE,
        "duplicate service"
    );
    r.services = vec![tokens("1", "1")];
    assert_eq!(
        w.ccr(Caller::Org(ORG), r.clone()).result_code,
        rc::INVALID_AVP_VALUE,
        "used on INITIAL"
    );
    r.services = vec![tokens("1", "")];
    r.request_number = 3;
    assert_eq!(
        w.ccr(Caller::Org(ORG), r.clone()).result_code,
        rc::INVALID_AVP_VALUE,
        "INITIAL numbered 3"
    );
    r.request_number = 0;
    r.event_action = EventAction::DirectDebit;
    assert_eq!(
        w.ccr(Caller::Org(ORG), r).result_code,
        rc::INVALID_AVP_VALUE,
        "event action on INITIAL"
    );
    assert_eq!(w.usd(ORG), (d("10"), d("0")));
    assert_eq!(w.engine.session_count(), 0);
}

/// A rate card applied through the engine prices sessions (here in credits,
/// per started 1K output tokens), survives a restart by replay, and a bad
/// card is refused with its file, line and field, changing nothing.
#[test]
fn rate_cards_price_sessions_and_replay() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../rating/examples/inference.toml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock: Clock = Arc::new(|| Timestamp(T0));
    let mut cfg = JournalConfig::new(dir.path());
    cfg.checkpoint_on_shutdown = false;
    let (j, _) = Journal::<Engine>::open(cfg.clone(), clock.clone()).unwrap();
    let call = |j: &Journal<Engine>, r: EngineRequest| j.call(r).unwrap();
    let admin = |j: &Journal<Engine>, op: u128, command: Command| {
        call(
            j,
            EngineRequest::Ledger(
                Caller::Admin,
                LedgerRequest::Apply(Operation {
                    op: OpId(op),
                    command,
                }),
            ),
        )
    };
    admin(
        &j,
        1,
        Command::CreateAccount {
            account: ORG,
            parent: None,
            draws_on_parent: false,
        },
    );
    admin(
        &j,
        2,
        Command::Credit {
            account: ORG,
            unit: Unit::CREDITS,
            amount: Amount::from_units(1000),
            bucket: None,
            kind: CreditKind::TopUp,
            reason: "".into(),
        },
    );
    // An organisation may not apply rate cards.
    let apply = |caller, op: u128, name: &str, text: &str| EngineRequest::ApplyRateCard {
        caller,
        op,
        name: Arc::from(name),
        text: Arc::from(text),
    };
    assert_eq!(
        call(&j, apply(Caller::Org(ORG), 3, "inference.toml", &text)),
        EngineResponse::Forbidden
    );
    // A broken card names the file, line and field; nothing changes.
    match call(
        &j,
        apply(
            Caller::Admin,
            4,
            "broken.toml",
            "card = \"x\"\n[[versions]]\nversion = \"one\"\n",
        ),
    ) {
        EngineResponse::RateCard(reckon_charging::engine::RateCardOutcome::Refused {
            message,
            ..
        }) => {
            assert!(message.contains("broken.toml:3"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match call(&j, apply(Caller::Admin, 5, "inference.toml", &text)) {
        EngineResponse::RateCard(reckon_charging::engine::RateCardOutcome::Applied {
            card,
            versions_added,
            ..
        }) => {
            assert_eq!(card, "inference-acme");
            assert!(versions_added >= 2);
        }
        other => panic!("{other:?}"),
    }
    // Service 1 output tokens with no model attribute: the card's default
    // rule, 4 credits per started 1,000 tokens.
    let chat = |requested: &str, used: &str| {
        let q = |v: &str| {
            if v.is_empty() {
                vec![]
            } else {
                vec![(Unit::TOKENS_OUT, d(v))]
            }
        };
        vec![ServiceRequest {
            service: ServiceId(1),
            requested: q(requested),
            used: q(used),
            report_only: false,
        }]
    };
    let mut open = req("rc1", RequestType::Initial, 0, chat("4096", ""));
    open.account = ORG;
    let a = call(&j, EngineRequest::CreditControl(Caller::Admin, open));
    let EngineResponse::CreditControl(a) = a else {
        panic!("{a:?}")
    };
    assert_eq!(a.services[0].granted, vec![(Unit::TOKENS_OUT, d("4096"))]);
    let mut close = req("rc1", RequestType::Terminate, 1, chat("", "1213"));
    close.account = ORG;
    call(&j, EngineRequest::CreditControl(Caller::Admin, close));
    let credits = |j: &Journal<Engine>| match call(
        j,
        EngineRequest::Ledger(Caller::Admin, LedgerRequest::Account(ORG)),
    ) {
        EngineResponse::Ledger(LedgerResponse::Account(Some(v))) => v
            .buckets
            .iter()
            .find(|b| b.unit == Unit::CREDITS)
            .map(|b| (b.amount.to_decimal(), b.held.to_decimal()))
            .unwrap(),
        other => panic!("{other:?}"),
    };
    // 1,213 tokens are two started thousands: 8 credits.
    assert_eq!(credits(&j), (d("992"), d("0")));
    let mut price = req("rc2", RequestType::Event, 0, chat("1000000", ""));
    price.account = ORG;
    price.event_action = EventAction::PriceEnquiry;
    match call(&j, EngineRequest::CreditControl(Caller::Admin, price)) {
        EngineResponse::CreditControl(a) => assert_eq!(a.price, vec![(Unit::CREDITS, d("4000"))]),
        other => panic!("{other:?}"),
    }
    // Retrying the apply gets its original answer.
    match call(&j, apply(Caller::Admin, 5, "inference.toml", &text)) {
        EngineResponse::RateCard(reckon_charging::engine::RateCardOutcome::Applied {
            versions_added,
            ..
        }) => {
            assert!(versions_added >= 2)
        }
        other => panic!("{other:?}"),
    }
    j.shutdown();
    let (j, _) = Journal::<Engine>::open(cfg, clock).unwrap();
    assert_eq!(credits(&j), (d("992"), d("0")));
    match call(&j, EngineRequest::ShowRateCards(String::new())) {
        EngineResponse::RateCards(cards) => {
            assert_eq!(cards.len(), 1);
            assert!(cards[0].active);
        }
        other => panic!("{other:?}"),
    }
    j.shutdown();
}

/// A call that runs across a tariff change is priced on each side: the
/// usage reported at TERMINATE is rated over the time since its grant.
#[test]
fn usage_across_a_tariff_change_is_split() {
    let card = "card = \"voice\"\n\
[[versions]]\nversion = 1\neffective_from_ms = 1799999000000\ncurrency = \"USD\"\n\
[[versions.services]]\nid = 5\nname = \"voice\"\n\
[[versions.services.rules]]\nname = \"call\"\nunit = \"seconds\"\nprice = { model = \"per_unit\", price = \"0.01\" }\n\
[[versions]]\nversion = 2\neffective_from_ms = 1800000060000\ncurrency = \"USD\"\n\
[[versions.services]]\nid = 5\nname = \"voice\"\n\
[[versions.services.rules]]\nname = \"call\"\nunit = \"seconds\"\nprice = { model = \"per_unit\", price = \"0.02\" }\n";
    let mut w = World::new("10");
    let applied = w.engine.handle(
        w.now,
        EngineRequest::ApplyRateCard {
            caller: Caller::Admin,
            op: 77,
            name: Arc::from("voice.toml"),
            text: Arc::from(card),
        },
    );
    assert!(
        matches!(
            applied,
            EngineResponse::RateCard(reckon_charging::engine::RateCardOutcome::Applied { .. })
        ),
        "{applied:?}"
    );
    let call = |requested: &str, used: &str| {
        let q = |v: &str| {
            if v.is_empty() {
                vec![]
            } else {
                vec![(Unit::SECONDS, d(v))]
            }
        };
        vec![ServiceRequest {
            service: ServiceId(5),
            requested: q(requested),
            used: q(used),
            report_only: false,
        }]
    };
    let a = w.ccr(
        Caller::Admin,
        req("call-1", RequestType::Initial, 0, call("120", "")),
    );
    assert_eq!(a.services[0].granted, vec![(Unit::SECONDS, d("120"))]);
    // 120 s at the old 0.01 are held.
    assert_eq!(w.usd(ORG), (d("10"), d("1.2")));
    // The tariff changes 60 s into the call; it ends at 120 s.
    w.now = Timestamp(T0 + 120_000);
    w.ccr(
        Caller::Admin,
        req("call-1", RequestType::Terminate, 1, call("", "120")),
    );
    // 60 s × 0.01 + 60 s × 0.02 = 1.80.
    assert_eq!(w.usd(ORG), (d("8.2"), d("0")));
}

/// Request attributes the engine cannot carry are refused whole, however the
/// request arrived (the protocol decoder refuses them first on the wire); a
/// bound key may be repeated but not given another value.
#[test]
fn attributes_beyond_the_limits_or_against_a_bound_key_are_refused_whole() {
    let mut w = World::new("10");
    let mut cfg = config();
    cfg.service_attributes = vec![(CHAT, vec![("model".into(), "large".into())])];
    assert_eq!(
        w.engine.handle(w.now, EngineRequest::Configure(cfg)),
        EngineResponse::Configured
    );
    let before = w.engine.state_digest();
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    let too_many: Vec<(String, String)> = (0..9).map(|i| pair(&format!("k{i}"), "v")).collect();
    let bad = [
        too_many,
        vec![pair("", "v")],
        vec![pair(&"k".repeat(33), "v")],
        vec![pair("region", &"v".repeat(65))],
        vec![pair("region", "eu"), pair("region", "us")],
        vec![pair("model", "small")],
    ];
    for (i, attributes) in bad.into_iter().enumerate() {
        let mut r = req(
            &format!("a{i}"),
            RequestType::Initial,
            0,
            vec![tokens("10", "")],
        );
        r.attributes = attributes.clone();
        assert_eq!(
            w.ccr(Caller::Org(ORG), r).result_code,
            rc::INVALID_AVP_VALUE,
            "{attributes:?}"
        );
    }
    assert_eq!(w.engine.state_digest(), before, "nothing changed");
    assert_eq!(w.engine.session_count(), 0);
    // Within the limits, repeating the bound value: granted.
    let mut r = req("ok", RequestType::Initial, 0, vec![tokens("10", "")]);
    r.attributes = vec![pair("model", "large"), pair("region", "eu")];
    assert_eq!(w.ccr(Caller::Org(ORG), r).result_code, rc::SUCCESS);
    assert_eq!(w.engine.session_count(), 1);
}
