//! Hostile and careless clients, over the real protocol on 127.0.0.1: each
//! test is written as the attack or the mistake, and asserts the refusal
//! and that no balance moved.

mod common;

use common::*;
use reckon_charging::client::{Client, ClientError};
use reckon_charging::server;
use reckon_protocol::codes::{AdminCode, ErrorCode, ResultCode};
use reckon_protocol::message::{
    AccountStatusChange, BalanceQuery, Batch, BucketGrant, LimitSet, Message, RateCardApply,
    RateCardShow, ReservationList,
};
use reckon_protocol::types::{AccountStatus, EventAction, RequestType, Unit};
use rust_decimal::Decimal;
use std::time::Duration;

const TOKENS: Unit = Unit::TOKENS_OUT;

async fn start(dir: &std::path::Path) -> (server::RunningServer, Client, Client, Client) {
    let running = server::start(config(dir)).await.unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    let acme = Client::connect(&addr, ACME).await.unwrap();
    let globex = Client::connect(&addr, GLOBEX).await.unwrap();
    two_tenants(&admin, "1000").await;
    (running, admin, acme, globex)
}

/// Case 1: one organisation can never receive, replay, block or skip
/// another's request, whatever ids it picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_read_replay_block_or_skip_another_tenants_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (running, admin, acme, globex) = start(dir.path()).await;

    // ACME debits under "s1"; GLOBEX uses the same id for its own debit:
    // it is applied to GLOBEX, answered for GLOBEX, and skips nothing.
    let a = acme.call(debit("s1", ACME_KEY, "10")).await.unwrap();
    ok(&a);
    let g = globex.call(debit("s1", GLOBEX_KEY, "7")).await.unwrap();
    ok(&g);
    assert_eq!(cca(&g).services[0].granted[0].amount, d("7"));
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("990"));
    assert_eq!(balance(&admin, GLOBEX_ORG, TOKENS).await, d("993"));

    // GLOBEX replays ACME's exact request: ACME's account looks absent,
    // and the remembered answer is not GLOBEX's to read.
    let replay = globex.call(debit("s1", ACME_KEY, "10")).await.unwrap();
    assert_eq!(code(&replay), ResultCode::USER_UNKNOWN);

    // A CHECK_BALANCE under an id another tenant used answers with the
    // caller's own balance; a debit under an id another tenant used for a
    // CHECK_BALANCE is applied to the caller.
    ok(&acme.call(debit("s2", ACME_KEY, "0")).await.unwrap());
    let acme_check = Message::Ccr(ccr(
        "cb",
        RequestType::Event,
        0,
        ACME_KEY,
        Some(EventAction::CheckBalance),
        "",
        "",
    ));
    assert_eq!(
        cca(&acme.call(acme_check).await.unwrap()).balance[0].amount,
        d("990")
    );
    let g2 = globex.call(debit("cb", GLOBEX_KEY, "3")).await.unwrap();
    ok(&g2);
    assert_eq!(cca(&g2).services[0].granted[0].amount, d("3"));
    assert_eq!(balance(&admin, GLOBEX_ORG, TOKENS).await, d("990"));
    let check = Message::Ccr(ccr(
        "s2",
        RequestType::Event,
        0,
        GLOBEX_KEY,
        Some(EventAction::CheckBalance),
        "",
        "",
    ));
    let check = globex.call(check).await.unwrap();
    assert_eq!(code(&check), ResultCode::SUCCESS, "{check:?}");
    assert_eq!(cca(&check).balance[0].amount, d("990"), "{check:?}");

    // ACME opens a session; GLOBEX tries to end it, then opens its own
    // session under the same id, which neither blocks nor ends ACME's.
    ok(&acme
        .call(Message::Ccr(ccr(
            "sess",
            RequestType::Initial,
            0,
            ACME_KEY,
            None,
            "100",
            "",
        )))
        .await
        .unwrap());
    let stop = globex
        .call(Message::Ccr(ccr(
            "sess",
            RequestType::Terminate,
            1,
            GLOBEX_KEY,
            None,
            "",
            "0",
        )))
        .await
        .unwrap();
    assert_eq!(code(&stop), ResultCode::UNKNOWN_SESSION_ID);
    let stop_theirs = globex
        .call(Message::Ccr(ccr(
            "sess",
            RequestType::Terminate,
            1,
            ACME_KEY,
            None,
            "",
            "0",
        )))
        .await
        .unwrap();
    assert_eq!(code(&stop_theirs), ResultCode::USER_UNKNOWN);
    ok(&globex
        .call(Message::Ccr(ccr(
            "sess",
            RequestType::Initial,
            0,
            GLOBEX_KEY,
            None,
            "50",
            "",
        )))
        .await
        .unwrap());
    assert_eq!(
        balance_held(&admin, ACME_ORG, TOKENS).await,
        (d("990"), d("100"))
    );
    let end = acme
        .call(Message::Ccr(ccr(
            "sess",
            RequestType::Terminate,
            1,
            ACME_KEY,
            None,
            "",
            "40",
        )))
        .await
        .unwrap();
    ok(&end);
    assert_eq!(
        balance_held(&admin, ACME_ORG, TOKENS).await,
        (d("950"), d("0"))
    );
    assert_eq!(
        balance_held(&admin, GLOBEX_ORG, TOKENS).await,
        (d("990"), d("50"))
    );

    // Reads of the other tenant's accounts and reservations: absent.
    for m in [
        Message::BalanceQuery(BalanceQuery { account: ACME_ORG }),
        Message::ReservationList(ReservationList {
            account: ACME_KEY,
            after: 0,
            limit: 0,
        }),
    ] {
        assert_eq!(
            admin_code(&globex.call(m).await.unwrap()),
            AdminCode::ACCOUNT_NOT_FOUND
        );
    }
    running.shutdown().await.unwrap();
}

/// Case 2: an organisation can move its own money only through what it
/// was charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_never_create_money() {
    let dir = tempfile::tempdir().unwrap();
    let (running, admin, acme, globex) = start(dir.path()).await;

    // A refund with nothing charged behind it: refused, nothing credited.
    let mint = acme
        .call(refund("r0", 0, ACME_KEY, "1000000"))
        .await
        .unwrap();
    assert_eq!(code(&mint), ResultCode::REFUND_NOT_COVERED);
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("1000"));

    // Charged 100: at most 100 comes back, in as many refunds as wanted.
    ok(&acme.call(debit("d1", ACME_KEY, "100")).await.unwrap());
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("900"));
    let too_much = acme.call(refund("d1", 1, ACME_KEY, "150")).await.unwrap();
    assert_eq!(code(&too_much), ResultCode::REFUND_NOT_COVERED);
    let part = acme.call(refund("d1", 2, ACME_KEY, "60")).await.unwrap();
    ok(&part);
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("960"));
    // A retransmitted refund: the same answer, nothing more.
    assert_eq!(
        acme.call(refund("d1", 2, ACME_KEY, "60")).await.unwrap(),
        part
    );
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("960"));
    let beyond = acme.call(refund("d1", 3, ACME_KEY, "41")).await.unwrap();
    assert_eq!(code(&beyond), ResultCode::REFUND_NOT_COVERED);
    ok(&acme.call(refund("d1", 4, ACME_KEY, "40")).await.unwrap());
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("1000"));
    let again = acme.call(refund("d1", 5, ACME_KEY, "1")).await.unwrap();
    assert_eq!(code(&again), ResultCode::REFUND_NOT_COVERED);

    // GLOBEX naming ACME's charge: not in its namespace, or not its account.
    ok(&acme.call(debit("d2", ACME_KEY, "100")).await.unwrap());
    let theirs = globex
        .call(refund("d2", 1, GLOBEX_KEY, "100"))
        .await
        .unwrap();
    assert_eq!(code(&theirs), ResultCode::REFUND_NOT_COVERED);
    let theirs = globex.call(refund("d2", 1, ACME_KEY, "100")).await.unwrap();
    assert_eq!(code(&theirs), ResultCode::USER_UNKNOWN);
    assert_eq!(balance(&admin, GLOBEX_ORG, TOKENS).await, d("1000"));
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("900"));

    // A session: refundable once ended, for what it collected.
    let open = |n: u32, kind: RequestType, req: &str, used: &str| {
        Message::Ccr(ccr("sess", kind, n, ACME_KEY, None, req, used))
    };
    ok(&acme
        .call(open(0, RequestType::Initial, "100", ""))
        .await
        .unwrap());
    let early = acme.call(refund("sess", 1, ACME_KEY, "1")).await.unwrap();
    assert_eq!(code(&early), ResultCode::REFUND_NOT_COVERED);
    ok(&acme
        .call(open(2, RequestType::Terminate, "", "30"))
        .await
        .unwrap());
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("870"));
    let late = acme.call(refund("sess", 3, ACME_KEY, "31")).await.unwrap();
    assert_eq!(code(&late), ResultCode::REFUND_NOT_COVERED);
    ok(&acme.call(refund("sess", 4, ACME_KEY, "30")).await.unwrap());
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("900"));

    // Only an admin may credit without a recorded charge (goodwill).
    ok(&admin.call(refund("gw", 0, ACME_KEY, "5")).await.unwrap());
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("905"));
    // An organisation credential may not top up at all.
    let topped = acme
        .call(topup(&acme, ACME_ORG, TOKENS, "1000000"))
        .await
        .unwrap();
    assert!(
        matches!(&topped, Message::Error(e) if e.code == ErrorCode::FORBIDDEN),
        "{topped:?}"
    );
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("905"));
    running.shutdown().await.unwrap();
}

/// Case 3: a reused request id with other content is refused, never
/// answered with the old result; a retransmission older than the window is
/// refused rather than applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_ids_and_late_retransmissions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retransmission_window_s = 60;
    let running = server::start(cfg).await.unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    let acme = Client::connect(&addr, ACME).await.unwrap();
    two_tenants(&admin, "1000").await;

    ok(&acme.call(debit("x", ACME_KEY, "10")).await.unwrap());
    let other = acme.call(debit("x", ACME_KEY, "20")).await.unwrap();
    assert_eq!(code(&other), ResultCode::REQUEST_ID_REUSED);
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("990"));
    // Resent unchanged (a client may stamp it anew): the original answer.
    let resent = acme.call(debit("x", ACME_KEY, "10")).await.unwrap();
    ok(&resent);
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("990"));

    // An UPDATE that forgot its number (0, the INITIAL's) is not answered
    // with the INITIAL's grant while its usage goes uncharged.
    let session = |n: u32, kind: RequestType, req: &str, used: &str| {
        Message::Ccr(ccr("y", kind, n, ACME_KEY, None, req, used))
    };
    ok(&acme
        .call(session(0, RequestType::Initial, "100", ""))
        .await
        .unwrap());
    let forgot = acme
        .call(session(0, RequestType::Update, "100", "50"))
        .await
        .unwrap();
    assert_eq!(code(&forgot), ResultCode::REQUEST_ID_REUSED);
    ok(&acme
        .call(session(1, RequestType::Update, "100", "50"))
        .await
        .unwrap());
    let changed = acme
        .call(session(1, RequestType::Update, "100", "70"))
        .await
        .unwrap();
    assert_eq!(code(&changed), ResultCode::REQUEST_ID_REUSED);
    assert_eq!(
        balance_held(&admin, ACME_ORG, TOKENS).await,
        (d("940"), d("100"))
    );

    // A request stamped outside the window: refused, whether it is a late
    // retransmission or stamped by a clock far ahead.
    for stamp in [now_ms() - 61_000, now_ms() + 61_000] {
        let mut late = ccr(
            &format!("z{stamp}"),
            RequestType::Event,
            0,
            ACME_KEY,
            Some(EventAction::DirectDebit),
            "10",
            "",
        );
        late.timestamp_ms = stamp;
        let answer = acme.call(Message::Ccr(late)).await.unwrap();
        assert_eq!(code(&answer), ResultCode::REQUEST_TOO_OLD);
    }
    assert_eq!(
        balance_held(&admin, ACME_ORG, TOKENS).await,
        (d("940"), d("100"))
    );
    running.shutdown().await.unwrap();
}

/// The server's memory of answers grows while requests keep coming (a
/// full table hands its entries to a larger one a few per request): a
/// retransmission of an answer not yet moved, or already moved, still gets
/// the original answer; a reused id with other content is still refused;
/// another tenant's same ids stay its own. No balance moves but by the
/// debits applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmissions_are_recognised_while_the_answer_memory_grows() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    let acme = Client::connect(&addr, ACME).await.unwrap();
    let globex = Client::connect(&addr, GLOBEX).await.unwrap();
    two_tenants(&admin, "10000").await;
    // The first table holds 1792 answers; the next ~250 requests move them.
    let n = 2_500;
    for i in 0..n {
        ok(&acme
            .call(debit(&format!("d{i}"), ACME_KEY, "1"))
            .await
            .unwrap());
        if i >= 1_700 {
            let old = i - 1_700 + (i % 7) * 200;
            let again = acme
                .call(debit(&format!("d{old}"), ACME_KEY, "1"))
                .await
                .unwrap();
            ok(&again);
            let reused = acme
                .call(debit(&format!("d{old}"), ACME_KEY, "5"))
                .await
                .unwrap();
            assert_eq!(code(&reused), ResultCode::REQUEST_ID_REUSED, "d{old}");
        }
        if i % 500 == 0 {
            // The same ids under another tenant are that tenant's own.
            ok(&globex
                .call(debit(&format!("d{i}"), GLOBEX_KEY, "2"))
                .await
                .unwrap());
        }
    }
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("7500"));
    assert_eq!(balance(&admin, GLOBEX_ORG, TOKENS).await, d("9990"));
    running.shutdown().await.unwrap();
}

/// A card pricing output tokens of service 5 at a million credits each.
const DEAR_CARD: &str = r#"
card = "dear"
[[versions]]
version = 1
effective_from = 2020-01-01T00:00:00Z
currency = "USD"
charge_in = "credits"
credit_value = "0.001"
decimals = 6
[[versions.services]]
id = 5
name = "dear"
[[versions.services.rules]]
name = "output"
unit = "tokens_out"
price = { model = "per_unit", price = "1000000", per = 1 }
"#;

/// Case 4: usage is never free by accident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_never_free_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let (running, admin, acme, _globex) = start(dir.path()).await;

    // Finer than the ledger's 10^-9: refused, never rounded up.
    let fine = acme
        .call(debit("f1", ACME_KEY, "0.0000000001"))
        .await
        .unwrap();
    assert_eq!(code(&fine), ResultCode::INVALID_AVP_VALUE);
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("1000"));

    // A card that prices finer than the ledger holds is refused whole.
    let fine_card = DEAR_CARD
        .replace("decimals = 6", "decimals = 10")
        .replace("\"dear\"\n[[", "\"fine\"\n[[");
    let applied = admin
        .call(Message::RateCardApply(RateCardApply {
            op_id: admin.new_op_id(),
            name: "fine.toml".into(),
            text: fine_card,
        }))
        .await
        .unwrap();
    match &applied {
        Message::RateCardResult(r) => {
            assert_eq!(r.code, AdminCode::INVALID_INPUT, "{r:?}");
            assert!(r.message.contains("decimals"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }

    // Usage that cannot be priced takes the whole grant: a grant of 10
    // tokens at 10^6 credits each, then 10^13 tokens reported (a price
    // beyond the ledger's range).
    let applied = admin
        .call(Message::RateCardApply(RateCardApply {
            op_id: admin.new_op_id(),
            name: "dear.toml".into(),
            text: DEAR_CARD.into(),
        }))
        .await
        .unwrap();
    assert!(
        matches!(&applied, Message::RateCardResult(r) if r.code == AdminCode::OK),
        "{applied:?}"
    );
    ok(&admin
        .call(topup(&admin, ACME_ORG, Unit::CREDITS, "100000000"))
        .await
        .unwrap());
    let mut open = ccr("g", RequestType::Initial, 0, ACME_KEY, None, "10", "");
    open.services[0].service_id = 5;
    let granted = acme.call(Message::Ccr(open)).await.unwrap();
    ok(&granted);
    assert_eq!(cca(&granted).services[0].granted[0].amount, d("10"));
    let mut close = ccr(
        "g",
        RequestType::Terminate,
        1,
        ACME_KEY,
        None,
        "",
        "10000000000000",
    );
    close.services[0].service_id = 5;
    let closed = acme.call(Message::Ccr(close)).await.unwrap();
    assert_eq!(
        cca(&closed).services[0].result_code,
        ResultCode::RATING_FAILED
    );
    assert_eq!(
        balance_held(&admin, ACME_ORG, Unit::CREDITS).await,
        (d("90000000"), d("0")),
        "the whole grant (10 x 10^6 credits) is charged"
    );
    running.shutdown().await.unwrap();
}

/// A raw connection speaking the protocol by hand.
struct Raw {
    stream: std::net::TcpStream,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Raw { stream }
    }

    /// Writes a frame; false when the socket would block (the server
    /// stopped reading) or failed.
    fn send(&mut self, frame: &reckon_protocol::frame::Frame) -> bool {
        use std::io::Write;
        let bytes = frame.to_bytes().unwrap();
        self.stream.write_all(&bytes).is_ok()
    }

    fn hello(&mut self, token: &str, min: u16) {
        let hello = reckon_protocol::frame::Frame::new(
            1,
            Message::Hello(reckon_protocol::message::Hello {
                min_version: min,
                max_version: 1,
                credential: token.into(),
                client_name: "raw".into(),
            }),
        );
        assert!(self.send(&hello));
    }

    /// The next frame from the server, or None when it closed.
    fn read(&mut self) -> Option<reckon_protocol::frame::Frame> {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some((frame, _))) = reckon_protocol::frame::decode_frame(&buf) {
                return Some(frame);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Case 5: a client that pipelines and never reads, and a flood of idle
/// unauthenticated connections, keep server memory bounded and other
/// clients served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_and_idle_floods_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server_with(
        dir.path(),
        &dir.path().join("data"),
        &format!(
            "max_pending_connections = 64\nhello_timeout_ms = 1000\n[[credential]]\nname = \"acme\"\ntoken = \"{ACME}\"\norg = {ACME_ORG}\n"
        ),
        &[],
    );
    let addr = server.addr.clone();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    two_tenants(&admin, "1000000000").await;
    let baseline = server.rss_bytes();
    assert!(baseline > 0);

    // The slow reader: pipelines balance queries (each answer ~200 bytes)
    // and never reads. The server stops reading it once its in-flight
    // answers wait to be written.
    let slow_addr = addr.clone();
    let slow = std::thread::spawn(move || {
        let mut raw = Raw::connect(&slow_addr);
        raw.hello(ADMIN, 1);
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(4) {
            let frame = reckon_protocol::frame::Frame::new(
                2 + sent,
                Message::BalanceQuery(BalanceQuery { account: ACME_ORG }),
            );
            if raw.send(&frame) {
                sent += 1;
            }
        }
        (raw, sent)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Meanwhile another client is served promptly.
    let t = std::time::Instant::now();
    let _ = balance(&admin, ACME_ORG, TOKENS).await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "another client waited {:?}",
        t.elapsed()
    );
    let (raw, sent) = slow.join().unwrap();
    let grown = server.rss_bytes().saturating_sub(baseline);
    eprintln!(
        "slow reader: {sent} requests written, server RSS {} MB -> +{} KB",
        baseline >> 20,
        grown >> 10
    );
    // 4096 answers in flight of ~200 bytes each, plus socket buffers: far
    // below this bound; without backpressure it grew without limit.
    assert!(
        grown < 64 << 20,
        "server grew by {} MB for a client that never reads ({sent} requests written)",
        grown >> 20
    );
    drop(raw);

    // A flood of idle connections that never say HELLO.
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = std::net::TcpStream::connect(&addr) {
            idle.push(s);
        }
    }
    let t = std::time::Instant::now();
    let _ = balance(&admin, ACME_ORG, TOKENS).await;
    assert!(t.elapsed() < Duration::from_secs(1));
    let grown = server.rss_bytes().saturating_sub(baseline);
    eprintln!(
        "{} idle connections: server RSS +{} KB",
        idle.len(),
        grown >> 10
    );
    assert!(grown < 64 << 20, "grew by {} MB", grown >> 20);
    // Past the HELLO deadline every idle connection has been closed, and a
    // new client connects.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for s in idle.iter_mut() {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "an idle connection was kept past the HELLO deadline"
        );
    }
    let fresh = Client::connect(&addr, ACME).await.unwrap();
    let _ = balance(&fresh, ACME_KEY, TOKENS).await;
    server.kill();
}

/// Case 6: a forward clock step does not age out every remembered answer
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_step_does_not_erase_idempotency() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let wall = Arc::new(AtomicU64::new(now_ms()));
    let read = wall.clone();
    let clock: reckon_balances::journal::Clock =
        Arc::new(move || reckon_balances::Timestamp(read.load(Ordering::SeqCst)));
    let running = server::start_with_clock(config(dir.path()), clock)
        .await
        .unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    let acme = Client::connect(&addr, ACME).await.unwrap();
    two_tenants(&admin, "1000").await;
    let first = acme.call(debit("c1", ACME_KEY, "10")).await.unwrap();
    ok(&first);
    let mut open = ccr("c2", RequestType::Initial, 0, ACME_KEY, None, "100", "");
    open.timestamp_ms = 0;
    ok(&acme.call(Message::Ccr(open)).await.unwrap());
    // The wall clock jumps two hours ahead (NTP, a paused VM).
    wall.fetch_add(2 * 3600 * 1000, Ordering::SeqCst);
    let mut again = match debit("c1", ACME_KEY, "10") {
        Message::Ccr(c) => c,
        _ => unreachable!(),
    };
    again.timestamp_ms = 0;
    assert_eq!(acme.call(Message::Ccr(again)).await.unwrap(), first);
    assert_eq!(
        balance_held(&admin, ACME_ORG, TOKENS).await,
        (d("990"), d("100")),
        "no second debit, and the open grant did not lapse at once"
    );
    running.shutdown().await.unwrap();
}

/// Case 8: credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_duplicate_or_exposed_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.credential_list[1].token = "short-token".into();
    let err = server::start(cfg).await.err().expect("a short token");
    assert!(err.to_string().contains("32"), "{err}");
    let mut cfg = config(dir.path());
    cfg.credential_list[2].token = cfg.credential_list[1].token.clone();
    let err = server::start(cfg).await.err().expect("a repeated token");
    assert!(err.to_string().contains("twice"), "{err}");

    // The generated admin token file may not be readable by others.
    let generated = tempfile::tempdir().unwrap();
    let mut cfg = config(generated.path());
    cfg.credential_list.clear();
    let running = server::start(cfg.clone()).await.unwrap();
    running.shutdown().await.unwrap();
    let token_file = generated.path().join("admin.token");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let err = server::start(cfg)
        .await
        .err()
        .expect("an exposed token file");
    assert!(err.to_string().contains("chmod 600"), "{err}");

    // An empty credential never authenticates; HELLO with version 0 is
    // refused.
    let running = server::start(config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();
    let mut raw = Raw::connect(&addr);
    raw.hello("", 1);
    match raw.read().map(|f| f.body) {
        Some(Message::Error(e)) => assert_eq!(e.code, ErrorCode::AUTH_FAILED),
        other => panic!("{other:?}"),
    }
    let mut raw = Raw::connect(&addr);
    raw.hello(ADMIN, 0);
    match raw.read().map(|f| f.body) {
        Some(Message::Error(e)) => assert_eq!(e.code, ErrorCode::UNSUPPORTED_VERSION),
        other => panic!("{other:?}"),
    }
    running.shutdown().await.unwrap();
}

/// Case 9: the rest of what careless clients run into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_requests_get_clear_answers_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (running, admin, acme, _globex) = start(dir.path()).await;

    // An organisation cannot be closed while an account below it has a
    // session open: the usage owed would be lost.
    ok(&acme
        .call(Message::Ccr(ccr(
            "open",
            RequestType::Initial,
            0,
            ACME_KEY,
            None,
            "100",
            "",
        )))
        .await
        .unwrap());
    let close = |account: u64| {
        Message::AccountStatus(AccountStatusChange {
            op_id: admin.new_op_id(),
            account,
            status: AccountStatus::Closed,
        })
    };
    assert_eq!(
        admin_code(&admin.call(close(ACME_ORG)).await.unwrap()),
        AdminCode::CLOSE_WITH_OPEN_RESERVATIONS
    );
    assert_eq!(
        admin_code(&admin.call(close(ACME_KEY)).await.unwrap()),
        AdminCode::CLOSE_WITH_OPEN_RESERVATIONS
    );
    ok(&acme
        .call(Message::Ccr(ccr(
            "open",
            RequestType::Terminate,
            1,
            ACME_KEY,
            None,
            "",
            "60",
        )))
        .await
        .unwrap());
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("940"));

    // A suspended account is denied events too.
    ok(&admin
        .call(Message::AccountStatus(AccountStatusChange {
            op_id: admin.new_op_id(),
            account: ACME_KEY,
            status: AccountStatus::Suspended,
        }))
        .await
        .unwrap());
    let denied = acme.call(debit("sus", ACME_KEY, "1")).await.unwrap();
    assert_eq!(code(&denied), ResultCode::END_USER_SERVICE_DENIED);
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, d("940"));
    ok(&admin
        .call(Message::AccountStatus(AccountStatusChange {
            op_id: admin.new_op_id(),
            account: ACME_KEY,
            status: AccountStatus::Active,
        }))
        .await
        .unwrap());

    // A typo in a unit opens no bucket.
    let typo = admin
        .call(topup(
            &admin,
            ACME_ORG,
            Unit::new("tokens_ot").unwrap(),
            "100",
        ))
        .await
        .unwrap();
    assert_eq!(admin_code(&typo), AdminCode::UNKNOWN_UNIT);
    match admin
        .call(Message::BalanceQuery(BalanceQuery { account: ACME_ORG }))
        .await
        .unwrap()
    {
        Message::Balance(b) => assert_eq!(b.buckets.len(), 1, "{b:?}"),
        other => panic!("{other:?}"),
    }

    // BUCKET_GRANT and LIMIT_SET answers carry the amount and the cap.
    let grant = admin
        .call(Message::BucketGrant(BucketGrant {
            op_id: admin.new_op_id(),
            account: ACME_KEY,
            unit: TOKENS,
            amount: d("250"),
            valid_from_ms: 0,
            valid_until_ms: u64::MAX,
            priority: 1,
            credit_limit: Decimal::ZERO,
            services: vec![],
        }))
        .await
        .unwrap();
    match &grant {
        Message::AdminResult(r) => {
            assert_eq!(r.code, AdminCode::OK);
            assert_eq!(r.balance, d("250"));
        }
        other => panic!("{other:?}"),
    }
    let limit = admin
        .call(Message::LimitSet(LimitSet {
            op_id: admin.new_op_id(),
            account: ACME_KEY,
            unit: TOKENS,
            cap: Some(d("500")),
            period: reckon_protocol::LimitPeriod::Lifetime,
            soft: false,
            alerts: Vec::new(),
        }))
        .await
        .unwrap();
    match &limit {
        Message::AdminResult(r) => assert_eq!((r.code, r.balance), (AdminCode::OK, d("500"))),
        other => panic!("{other:?}"),
    }

    // RESERVATION_LIST with limit 0 means the maximum.
    for i in 0..3 {
        ok(&acme
            .call(Message::Ccr(ccr(
                &format!("l{i}"),
                RequestType::Initial,
                0,
                ACME_KEY,
                None,
                "1",
                "",
            )))
            .await
            .unwrap());
    }
    match acme
        .call(Message::ReservationList(ReservationList {
            account: ACME_KEY,
            after: 0,
            limit: 0,
        }))
        .await
        .unwrap()
    {
        Message::Reservations(r) => assert_eq!(r.reservations.len(), 3, "{r:?}"),
        other => panic!("{other:?}"),
    }

    // A BATCH entry of a kind the SPEC excludes: the whole batch refused,
    // nothing applied.
    let batch = Message::Batch(Batch {
        entries: vec![
            debit("b1", ACME_KEY, "1"),
            Message::RateCardShow(RateCardShow {
                card: String::new(),
            }),
        ],
    });
    let mut raw = Raw::connect(&running.addr.to_string());
    raw.hello(ACME, 1);
    assert!(matches!(
        raw.read().map(|f| f.body),
        Some(Message::HelloOk(_))
    ));
    // The codec itself refuses to encode it, so build the bytes by hand.
    let mut body = bytes::BytesMut::new();
    assert!(batch.encode(&mut body).is_err());
    let entry_ccr = {
        let mut b = bytes::BytesMut::new();
        debit("b1", ACME_KEY, "1").encode(&mut b).unwrap();
        b
    };
    let mut payload = Vec::new();
    payload.extend_from_slice(&2u16.to_le_bytes());
    payload.extend_from_slice(&((entry_ccr.len() + 1) as u32).to_le_bytes());
    payload.push(0x10);
    payload.extend_from_slice(&entry_ccr);
    payload.extend_from_slice(&2u32.to_le_bytes());
    payload.push(0x29);
    payload.push(0);
    let mut frame = Vec::new();
    frame.extend_from_slice(&((10 + payload.len()) as u32).to_le_bytes());
    frame.push(0x03);
    frame.push(0);
    frame.extend_from_slice(&7u64.to_le_bytes());
    frame.extend_from_slice(&payload);
    {
        use std::io::Write;
        raw.stream.write_all(&frame).unwrap();
    }
    match raw.read().map(|f| f.body) {
        Some(Message::Error(e)) => assert_eq!(e.code, ErrorCode::MALFORMED_FRAME, "{e:?}"),
        other => panic!("{other:?}"),
    }
    // The batch's debit was not applied: a fresh debit under b1 succeeds.
    ok(&acme.call(debit("b1", ACME_KEY, "1")).await.unwrap());

    // Applying a second card that takes over the active one's pairs says so.
    for (name, card) in [("a", "one"), ("b", "two")] {
        let text = DEAR_CARD.replace("card = \"dear\"", &format!("card = \"{card}\""));
        let result = admin
            .call(Message::RateCardApply(RateCardApply {
                op_id: admin.new_op_id(),
                name: format!("{name}.toml"),
                text,
            }))
            .await
            .unwrap();
        match result {
            Message::RateCardResult(r) => {
                assert_eq!(r.code, AdminCode::OK);
                if card == "two" {
                    assert!(r.message.contains("replaces one"), "{}", r.message);
                } else {
                    assert!(r.message.is_empty(), "{}", r.message);
                }
            }
            other => panic!("{other:?}"),
        }
    }
    running.shutdown().await.unwrap();
}

/// The client library never hangs: not on a server that accepts and says
/// nothing, not on a connection that closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_times_out_and_notices_a_closed_connection() {
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            kept.push(s);
        }
    });
    let t = std::time::Instant::now();
    let r = Client::connect_with_timeout(&mute_addr, ADMIN, Duration::from_millis(300)).await;
    assert!(matches!(r, Err(ClientError::Timeout(_))), "{:?}", r.err());
    assert!(t.elapsed() < Duration::from_secs(2));
    hold.abort();

    let dir = tempfile::tempdir().unwrap();
    let running = server::start(config(dir.path())).await.unwrap();
    let admin = Client::connect(&running.addr.to_string(), ADMIN)
        .await
        .unwrap();
    running.shutdown().await.unwrap();
    // The server closed the connection: a call fails at once.
    let mut failed = false;
    for _ in 0..50 {
        let t = std::time::Instant::now();
        let r = admin
            .call(Message::BalanceQuery(BalanceQuery { account: 1 }))
            .await;
        assert!(t.elapsed() < Duration::from_secs(5));
        if matches!(r, Err(ClientError::Closed)) {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed, "calls on a closed connection never failed");
}

/// A shared library that makes `fdatasync` fail with EIO after a number of
/// calls (environment variable RECKON_TEST_FDATASYNC_FAIL_AFTER), loaded
/// into the real server with LD_PRELOAD: a disk that fails under load. With
/// RECKON_TEST_FDATASYNC_FAIL_PATH, only calls on files whose path holds
/// that text count and fail (e.g. the snapshot store's).
const FAILING_FDATASYNC: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdatomic.h>
static atomic_long calls;
static int matches(int fd) {
    const char *want = getenv("RECKON_TEST_FDATASYNC_FAIL_PATH");
    if (!want) return 1;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strstr(path, want) != NULL;
}
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *limit = getenv("RECKON_TEST_FDATASYNC_FAIL_AFTER");
    if (limit && matches(fd) && atomic_fetch_add(&calls, 1) >= atol(limit)) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}
"#;

/// Case 7: a failed fdatasync ends the process with a non-zero exit and a
/// clear log line (never a server answering errors forever), and the
/// restart recovers every acknowledged request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_ends_the_process_and_recovery_keeps_every_acknowledged_request() {
    failing_disk_ends_the_process(
        &[("RECKON_TEST_FDATASYNC_FAIL_AFTER", "300")],
        "journal failed",
    )
    .await;
}

/// A checkpoint that cannot be written (the snapshot store's fdatasync
/// fails) ends the process too: the server must not go on without
/// checkpoints while its log grows without bound. The log still holds every
/// acknowledged request, so the restart recovers them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_checkpoint_ends_the_process_and_recovery_keeps_every_acknowledged_request() {
    failing_disk_ends_the_process(
        &[
            ("RECKON_TEST_FDATASYNC_FAIL_AFTER", "0"),
            ("RECKON_TEST_FDATASYNC_FAIL_PATH", "/snapshot/"),
        ],
        "checkpoint failed",
    )
    .await;
}

/// Runs debits against a server whose `fdatasync` fails as `fault` says
/// until it exits; checks it exits non-zero logging `why`, and that a
/// restart without the fault holds every acknowledged debit.
async fn failing_disk_ends_the_process(fault: &[(&str, &str)], why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("failing_fdatasync.c");
    let shim = dir.path().join("failing_fdatasync.so");
    std::fs::write(&source, FAILING_FDATASYNC).unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) builds the fault-injection shim");
    assert!(built.success());
    let data = dir.path().join("data");
    let mut env = vec![("LD_PRELOAD", shim.to_str().unwrap())];
    env.extend_from_slice(fault);
    let mut server = spawn_server_with(dir.path(), &data, "", &env);
    let admin = Client::connect(&server.addr, ADMIN).await.unwrap();
    ok(&admin.call(create(&admin, ACME_ORG, None)).await.unwrap());
    ok(&admin
        .call(topup(&admin, ACME_ORG, TOKENS, "100000000"))
        .await
        .unwrap());
    // Debit until the disk fails; keep every acknowledged answer.
    let mut acked: Vec<(String, Message)> = Vec::new();
    let mut refused = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    let mut i = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        while inflight.len() < 32 {
            let c = admin.clone();
            let session = format!("f{i}");
            i += 1;
            inflight.spawn(async move {
                let answer = c.call(debit(&session, ACME_ORG, "1")).await;
                (session, answer)
            });
        }
        match inflight.join_next().await {
            Some(Ok((session, Ok(answer @ Message::Cca(_))))) => acked.push((session, answer)),
            Some(Ok((_, Ok(_)))) => refused += 1,
            _ => break,
        }
        if admin.is_closed() || std::time::Instant::now() > deadline {
            break;
        }
    }
    while let Some(r) = inflight.join_next().await {
        if let Ok((session, Ok(answer @ Message::Cca(_)))) = r {
            acked.push((session, answer));
        }
    }
    // The process exits by itself, non-zero, saying why.
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = server.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.expect("the server kept running after its fdatasync failed");
    assert!(!status.success(), "exit status {status:?}");
    std::thread::sleep(Duration::from_millis(100));
    let log = server.stderr.lock().join("\n");
    assert!(log.contains(why), "{log}");
    assert!(acked.len() > 50, "{} acknowledged", acked.len());
    for (_, a) in &acked {
        ok(a);
    }
    let _ = refused;

    // Restarted without the fault: every acknowledged debit is there, and
    // each one's retransmission gets the same answer and moves nothing.
    let mut server = spawn_server_with(dir.path(), &data, "", &[]);
    let admin = Client::connect(&server.addr, ADMIN).await.unwrap();
    let left = balance(&admin, ACME_ORG, TOKENS).await;
    let debited = d("100000000") - left;
    assert!(
        debited >= Decimal::from(acked.len() as u64),
        "acknowledged debits lost: {} acknowledged, {debited} found",
        acked.len()
    );
    for (session, answer) in &acked {
        assert_eq!(
            &admin.call(debit(session, ACME_ORG, "1")).await.unwrap(),
            answer
        );
    }
    assert_eq!(balance(&admin, ACME_ORG, TOKENS).await, left);
    server.kill();
}

/// Case 7: no configuration that starts can make the data directory
/// unrecoverable, and rate-card files beyond the limit are refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configurations_are_checked_before_they_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.products = (0..5000)
        .map(|i| reckon_charging::config::ProductConfig {
            service: i,
            attributes: [("model".to_string(), "m".to_string())].into(),
        })
        .collect();
    let err = server::start(cfg).await.err().expect("too many products");
    assert!(err.to_string().contains("at most"), "{err}");
    let mut cfg = config(dir.path());
    cfg.products = vec![reckon_charging::config::ProductConfig {
        service: 1,
        attributes: (0..9).map(|i| (format!("k{i}"), "v".to_string())).collect(),
    }];
    let err = server::start(cfg).await.err().expect("too many attributes");
    assert!(err.to_string().contains("attributes"), "{err}");

    // A server that started restarts: its configuration was valid.
    let running = server::start(config(dir.path())).await.unwrap();
    let admin = Client::connect(&running.addr.to_string(), ADMIN)
        .await
        .unwrap();
    let mut results = Vec::new();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..reckon_charging::engine::RATE_FILES_MAX + 1 {
        let c = admin.clone();
        let text = DEAR_CARD.replace("card = \"dear\"", &format!("card = \"c{i}\""));
        let op = c.new_op_id();
        calls.spawn(async move {
            c.call(Message::RateCardApply(RateCardApply {
                op_id: op,
                name: format!("c{i}.toml"),
                text,
            }))
            .await
            .unwrap()
        });
    }
    while let Some(r) = calls.join_next().await {
        results.push(r.unwrap());
    }
    let refused: Vec<_> = results
        .iter()
        .filter(|m| matches!(m, Message::RateCardResult(r) if r.code != AdminCode::OK))
        .collect();
    assert_eq!(refused.len(), 1, "exactly the file beyond the limit");
    running.shutdown().await.unwrap();
    let running = server::start(config(dir.path())).await.unwrap();
    let admin = Client::connect(&running.addr.to_string(), ADMIN)
        .await
        .unwrap();
    match admin
        .call(Message::RateCardShow(RateCardShow {
            card: String::new(),
        }))
        .await
        .unwrap()
    {
        Message::RateCards(list) => {
            assert_eq!(list.cards.len(), reckon_protocol::limits::RATECARDS_MAX);
        }
        other => panic!("{other:?}"),
    }
    running.shutdown().await.unwrap();
}
