//! Spend controls over the protocol: department budgets with periods, hard
//! and soft, a contract-year cap beside a monthly budget, the denial that
//! names the control, a tenant that tries to budget another's accounts, and
//! budgets kept across a restart.

mod common;

use common::*;
use reckon_charging::client::Client;
use reckon_charging::server;
use reckon_protocol::codes::{AdminCode, ErrorCode, ResultCode};
use reckon_protocol::message::{Balance, BalanceQuery, LimitInfo, LimitSet, Message};
use reckon_protocol::types::{Denial, EventAction, LimitPeriod, RequestType, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const SALES: u64 = 1100;
const SALES_KEY: u64 = 1101;
const LAB: u64 = 1200;
const LAB_KEY: u64 = 1201;
const TOKENS: Unit = Unit::TOKENS_OUT;

/// Midnight UTC of a date plus hours, in ms.
fn utc(y: i64, m: u32, d: u32, hours: u64) -> u64 {
    reckon_balances::period::days_from_civil(y, m, d) as u64 * 86_400_000 + hours * 3_600_000
}

fn budget(c: &Client, account: u64, cap: &str, period: LimitPeriod, soft: bool) -> Message {
    Message::LimitSet(LimitSet {
        op_id: c.new_op_id(),
        account,
        unit: TOKENS,
        cap: Some(d(cap)),
        period,
        soft,
        alerts: Vec::new(),
    })
}

/// A calendar month in UTC+01:00.
fn month_cet() -> LimitPeriod {
    LimitPeriod::Months {
        months: 1,
        anchor_ms: utc(2026, 1, 1, 0) - 3_600_000,
        offset_min: 60,
    }
}

/// A direct debit that carries no client time (the test's clock is not
/// the machine's).
fn spend(account: u64, session: &str, tokens: &str) -> Message {
    let mut m = ccr(
        session,
        RequestType::Event,
        0,
        account,
        Some(EventAction::DirectDebit),
        tokens,
        "",
    );
    m.timestamp_ms = 0;
    Message::Ccr(m)
}

async fn limits(c: &Client, account: u64) -> Vec<LimitInfo> {
    match c
        .call(Message::BalanceQuery(BalanceQuery { account }))
        .await
        .unwrap()
    {
        Message::Balance(Balance { limits, .. }) => limits,
        other => panic!("{other:?}"),
    }
}

fn denial(m: &Message) -> Option<Denial> {
    let a = cca(m);
    assert_eq!(a.result_code, ResultCode::CREDIT_LIMIT_REACHED, "{a:?}");
    a.services.first().and_then(|s| s.denial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn department_budgets_deny_by_name_reset_by_period_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let wall = Arc::new(AtomicU64::new(utc(2026, 11, 10, 12)));
    let read = wall.clone();
    let clock: reckon_balances::journal::Clock =
        Arc::new(move || reckon_balances::Timestamp(read.load(Ordering::SeqCst)));
    let running = server::start_with_clock(config(dir.path()), clock.clone())
        .await
        .unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    let acme = Client::connect(&addr, ACME).await.unwrap();
    let globex = Client::connect(&addr, GLOBEX).await.unwrap();
    two_tenants(&admin, "1000000").await;
    for (account, parent) in [
        (SALES, ACME_ORG),
        (LAB, ACME_ORG),
        (SALES_KEY, SALES),
        (LAB_KEY, LAB),
    ] {
        ok(&admin
            .call(create(&admin, account, Some(parent)))
            .await
            .unwrap());
    }
    // The organisation budgets its own departments: Sales a hard 500 a
    // month and 700 a contract year (from 1 November), the lab a soft 100.
    let monthly = budget(&acme, SALES, "500", month_cet(), false);
    ok(&acme.call(monthly.clone()).await.unwrap());
    // The same op id again is a retransmission; with other content (a
    // budget a thousand times larger) it is refused and changes nothing.
    ok(&acme.call(monthly.clone()).await.unwrap());
    let Message::LimitSet(mut lifted) = monthly else {
        unreachable!()
    };
    lifted.cap = Some(d("500000"));
    let reused = acme.call(Message::LimitSet(lifted)).await.unwrap();
    assert_eq!(admin_code(&reused), AdminCode::OP_ID_REUSED, "{reused:?}");
    let sales = limits(&admin, SALES).await;
    assert_eq!((sales.len(), sales[0].cap), (1, d("500")));
    let contract_year = LimitPeriod::Months {
        months: 12,
        anchor_ms: utc(2026, 11, 1, 0),
        offset_min: 0,
    };
    ok(&acme
        .call(budget(&acme, SALES, "700", contract_year, false))
        .await
        .unwrap());
    ok(&acme
        .call(budget(&acme, LAB, "100", month_cet(), true))
        .await
        .unwrap());
    // Another tenant may not budget (or unbudget) Acme's departments.
    let refused = globex
        .call(budget(&globex, SALES, "1", month_cet(), false))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Message::Error(e) if e.code == ErrorCode::FORBIDDEN),
        "{refused:?}"
    );
    // Nor may an organisation lift or set a cap on its own root: that is
    // the operator's.
    let own_root = acme
        .call(budget(&acme, ACME_ORG, "1000000000", month_cet(), false))
        .await
        .unwrap();
    assert!(
        matches!(&own_root, Message::Error(e) if e.code == ErrorCode::FORBIDDEN),
        "{own_root:?}"
    );
    assert!(limits(&admin, ACME_ORG).await.is_empty());
    assert_eq!(limits(&admin, SALES).await.len(), 2);
    assert!(limits(&admin, SALES).await.iter().all(|l| l.cap != d("1")));

    ok(&acme.call(spend(SALES_KEY, "s1", "500")).await.unwrap());
    let before = balance(&admin, ACME_ORG, TOKENS).await;
    let denied = acme.call(spend(SALES_KEY, "s2", "1")).await.unwrap();
    assert_eq!(
        denial(&denied),
        Some(Denial::SpendControl {
            account: SALES,
            period_kind: 1
        }),
        "the department's monthly budget is named"
    );
    // A session is refused the same way, and nothing moved.
    let mut open = ccr("s3", RequestType::Initial, 0, SALES_KEY, None, "10", "");
    open.timestamp_ms = 0;
    let refused = acme.call(Message::Ccr(open)).await.unwrap();
    assert_eq!(
        cca(&refused).services[0].denial,
        Some(Denial::SpendControl {
            account: SALES,
            period_kind: 1
        })
    );
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, before);
    // The sibling department carries on past its soft budget.
    ok(&acme.call(spend(LAB_KEY, "l1", "300")).await.unwrap());
    let lab = limits(&acme, LAB).await;
    assert_eq!((lab[0].used, lab[0].soft), (d("300"), true));
    // No credit at all is told apart from a budget.
    ok(&admin.call(create(&admin, 1300, None)).await.unwrap());
    assert_eq!(
        denial(&admin.call(spend(1300, "n1", "1")).await.unwrap()),
        Some(Denial::NoCredit)
    );

    // The writer's clock never jumps (a stepped wall clock is caught up
    // slowly), so time moves across periods over restarts, which also
    // shows the budgets, their usage and refusals are kept.
    let kept = limits(&admin, SALES).await;
    let restart = |running: server::RunningServer, at: u64| {
        let (wall, clock, dir) = (wall.clone(), clock.clone(), dir.path().to_path_buf());
        async move {
            running.shutdown().await.unwrap();
            wall.store(at, Ordering::SeqCst);
            let running = server::start_with_clock(config(&dir), clock).await.unwrap();
            let addr = running.addr.to_string();
            let admin = Client::connect(&addr, ADMIN).await.unwrap();
            let acme = Client::connect(&addr, ACME).await.unwrap();
            (running, admin, acme)
        }
    };
    drop((admin, acme, globex));
    // December in UTC+01:00 (23:00 UTC on 30 November): the monthly budget
    // starts over; the contract year does not.
    let (running, admin, acme) = restart(running, utc(2026, 11, 30, 23)).await;
    let sales = limits(&admin, SALES).await;
    assert_eq!(sales.len(), kept.len());
    let monthly = sales.iter().find(|l| l.period.kind() == 1).unwrap();
    assert_eq!(
        (monthly.used, monthly.period_start_ms),
        (d("0"), utc(2026, 11, 30, 23))
    );
    let yearly = sales.iter().find(|l| l.period.kind() == 12).unwrap();
    assert_eq!(
        (yearly.used, yearly.cap, yearly.period_start_ms),
        (d("500"), d("700"), utc(2026, 11, 1, 0))
    );
    ok(&acme.call(spend(SALES_KEY, "s4", "200")).await.unwrap());
    assert_eq!(
        denial(&acme.call(spend(SALES_KEY, "s5", "1")).await.unwrap()),
        Some(Denial::SpendControl {
            account: SALES,
            period_kind: 12
        }),
        "the contract-year cap spans both months"
    );
    drop((admin, acme));
    // The next contract year starts over.
    let (running, _admin, acme) = restart(running, utc(2027, 11, 1, 0)).await;
    ok(&acme.call(spend(SALES_KEY, "s7", "1")).await.unwrap());
    running.shutdown().await.unwrap();
}

fn budget_with_alerts(c: &Client, account: u64, cap: &str, alerts: Vec<u8>) -> Message {
    Message::LimitSet(LimitSet {
        op_id: c.new_op_id(),
        account,
        unit: TOKENS,
        cap: Some(d(cap)),
        period: month_cet(),
        soft: false,
        alerts,
    })
}

async fn next_alert(
    feed: &mut tokio::sync::mpsc::UnboundedReceiver<reckon_protocol::message::Alert>,
) -> reckon_protocol::message::Alert {
    tokio::time::timeout(std::time::Duration::from_secs(10), feed.recv())
        .await
        .expect("an alert within 10 s")
        .expect("the feed is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_alerts_are_pushed_once_to_their_own_organisation_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    let acme = Client::connect(&addr, ACME).await.unwrap();
    let globex = Client::connect(&addr, GLOBEX).await.unwrap();
    two_tenants(&admin, "1000000").await;
    ok(&admin
        .call(create(&admin, SALES, Some(ACME_ORG)))
        .await
        .unwrap());
    ok(&admin
        .call(create(&admin, SALES_KEY, Some(SALES)))
        .await
        .unwrap());
    ok(&admin
        .call(create(&admin, 2100, Some(GLOBEX_ORG)))
        .await
        .unwrap());
    // Subscribed before anything is raised: each sees its own only.
    let (hello, mut acme_feed) = acme.subscribe_alerts(0).await.unwrap();
    assert_eq!((hello.oldest_seq, hello.last_seq), (1, 0));
    let (_, mut globex_feed) = globex.subscribe_alerts(0).await.unwrap();
    let (_, mut admin_feed) = admin.subscribe_alerts(0).await.unwrap();
    ok(&acme
        .call(budget_with_alerts(&acme, SALES, "1000", vec![50, 80, 100]))
        .await
        .unwrap());
    ok(&globex
        .call(budget_with_alerts(&globex, 2100, "10", vec![100]))
        .await
        .unwrap());
    // Thresholds out of order are refused and change nothing.
    let bad = acme
        .call(budget_with_alerts(&acme, SALES, "1", vec![80, 50]))
        .await
        .unwrap();
    assert!(matches!(bad, Message::Error(_)), "{bad:?}");
    assert_eq!(limits(&admin, SALES).await[0].alerts, vec![50, 80, 100]);

    ok(&acme.call(spend(SALES_KEY, "a1", "600")).await.unwrap());
    let first = next_alert(&mut acme_feed).await;
    assert_eq!(
        (
            first.seq,
            first.account,
            first.threshold_pct,
            first.used,
            first.cap,
            first.soft
        ),
        (1, SALES, 50, d("600"), d("1000"), false)
    );
    ok(&globex.call(spend(2100, "g1", "10")).await.unwrap());
    ok(&acme.call(spend(SALES_KEY, "a2", "400")).await.unwrap());
    let (second, third) = (
        next_alert(&mut acme_feed).await,
        next_alert(&mut acme_feed).await,
    );
    // Acme's sequence skips Globex's alert (seq 2): a gap that is not a loss.
    assert_eq!(
        (
            second.seq,
            second.threshold_pct,
            third.seq,
            third.threshold_pct
        ),
        (3, 80, 4, 100)
    );
    let theirs = next_alert(&mut globex_feed).await;
    assert_eq!((theirs.seq, theirs.account), (2, 2100));
    let seen: Vec<u64> = [
        next_alert(&mut admin_feed).await,
        next_alert(&mut admin_feed).await,
        next_alert(&mut admin_feed).await,
        next_alert(&mut admin_feed).await,
    ]
    .iter()
    .map(|a| a.seq)
    .collect();
    assert_eq!(seen, [1, 2, 3, 4], "the admin sees every alert, in order");
    // Nothing more for Globex, and each threshold fires once a period.
    denial(&acme.call(spend(SALES_KEY, "a3", "1")).await.unwrap());
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(600), globex_feed.recv())
            .await
            .is_err(),
        "no other organisation's alert reaches Globex"
    );
    assert!(acme_feed.try_recv().is_err());

    // After a restart a subscriber resumes where it stopped, and a new one
    // gets the backlog.
    drop((admin, acme, globex, acme_feed, globex_feed, admin_feed));
    running.shutdown().await.unwrap();
    let running = server::start(config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();
    let acme = Client::connect(&addr, ACME).await.unwrap();
    let (hello, mut resumed) = acme.subscribe_alerts(3).await.unwrap();
    assert_eq!((hello.oldest_seq, hello.last_seq), (1, 4));
    assert_eq!(next_alert(&mut resumed).await.seq, 4);
    let (_, mut backlog) = acme.subscribe_alerts(0).await.unwrap();
    let seqs = [
        next_alert(&mut backlog).await.seq,
        next_alert(&mut backlog).await.seq,
        next_alert(&mut backlog).await.seq,
    ];
    assert_eq!(seqs, [1, 3, 4]);
    running.shutdown().await.unwrap();
}
