//! End to end over 127.0.0.1: the server, the client, tenancy, pipelining,
//! batches, bad input, and kill -9 under load with every acknowledged
//! commit found after restart.

use reckon_charging::client::Client;
use reckon_charging::config::{Config, CredentialConfig};
use reckon_charging::server;
use reckon_protocol::codes::{AdminCode, ErrorCode, ResultCode};
use reckon_protocol::message::{AccountCreate, BalanceQuery, Ccr, Message, ServiceRequest, TopUp};
use reckon_protocol::types::{CreditKind, EventAction, RequestType, Unit, UnitAmount};
use rust_decimal::Decimal;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ADMIN: &str = "admin-token-0123456789abcdef0123456789abcdef";
const ACME: &str = "acme-token-0123456789abcdef0123456789abcdef";
const GLOBEX: &str = "globex-token-0123456789abcdef0123456789abcdef";

fn config(dir: &std::path::Path) -> Config {
    let credential = |name: &str, token: &str, org: Option<u64>| CredentialConfig {
        name: name.into(),
        token: token.into(),
        org,
    };
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        credential_list: vec![
            credential("admin", ADMIN, None),
            credential("acme", ACME, Some(1000)),
            credential("globex", GLOBEX, Some(2000)),
        ],
        ..Config::default()
    }
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn create(c: &Client, account: u64, parent: Option<u64>) -> Message {
    Message::AccountCreate(AccountCreate {
        op_id: c.new_op_id(),
        account,
        parent,
        draws_on_parent: true,
    })
}

fn topup(c: &Client, account: u64, unit: Unit, amount: &str) -> Message {
    Message::TopUp(TopUp {
        op_id: c.new_op_id(),
        account,
        unit,
        amount: d(amount),
        bucket: None,
        kind: CreditKind::TopUp,
        reason: "test".into(),
    })
}

fn debit(session: &str, account: u64, tokens: &str) -> Message {
    Message::Ccr(Ccr {
        session_id: session.into(),
        request_type: RequestType::Event,
        request_number: 0,
        account,
        event_action: Some(EventAction::DirectDebit),
        termination_cause: None,
        timestamp_ms: 0,
        services: vec![ServiceRequest {
            service_id: 1,
            requested: vec![],
            used: vec![UnitAmount::new(Unit::TOKENS_OUT, d(tokens))],
        }],
        attributes: Vec::new(),
    })
}

async fn balance(c: &Client, account: u64, unit: Unit) -> Decimal {
    match c
        .call(Message::BalanceQuery(BalanceQuery { account }))
        .await
        .unwrap()
    {
        Message::Balance(b) => b
            .buckets
            .iter()
            .filter(|k| k.unit == unit)
            .map(|k| k.amount)
            .sum(),
        other => panic!("{other:?}"),
    }
}

fn ok(m: &Message) {
    match m {
        Message::AdminResult(r) => assert_eq!(r.code, AdminCode::OK, "{m:?}"),
        Message::Cca(a) => assert_eq!(a.result_code, ResultCode::SUCCESS, "{m:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_pipelining_batches_and_bad_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();

    // A wrong credential is refused at the handshake.
    let refused = Client::connect(&addr, "nope").await;
    assert!(refused.is_err(), "a bad credential was accepted");

    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    assert!(admin.hello.is_admin);
    for m in [create(&admin, 1000, None), create(&admin, 2000, None)] {
        ok(&admin.call(m).await.unwrap());
    }
    ok(&admin.call(create(&admin, 1001, Some(1000))).await.unwrap());
    ok(&admin
        .call(topup(&admin, 1001, Unit::TOKENS_OUT, "100000"))
        .await
        .unwrap());
    let acme = Client::connect(&addr, ACME).await.unwrap();
    assert_eq!(acme.hello.org_id, 1000);
    assert!(!acme.hello.is_admin);
    // An organisation credential may not change balances, even its own.
    match acme
        .call(topup(&acme, 1001, Unit::TOKENS_OUT, "5"))
        .await
        .unwrap()
    {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::FORBIDDEN),
        other => panic!("{other:?}"),
    }

    // Globex may not see or touch Acme's accounts, nor create organisations.
    let globex = Client::connect(&addr, GLOBEX).await.unwrap();
    match globex
        .call(Message::BalanceQuery(BalanceQuery { account: 1001 }))
        .await
        .unwrap()
    {
        // Another organisation's account looks absent.
        Message::AdminResult(r) => assert_eq!(r.code, AdminCode::ACCOUNT_NOT_FOUND),
        other => panic!("{other:?}"),
    }
    match globex
        .call(topup(&globex, 1001, Unit::TOKENS_OUT, "5"))
        .await
        .unwrap()
    {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::FORBIDDEN),
        other => panic!("{other:?}"),
    }
    match globex.call(debit("g1", 1001, "1")).await.unwrap() {
        Message::Cca(a) => assert_eq!(a.result_code, ResultCode::USER_UNKNOWN),
        other => panic!("{other:?}"),
    }
    match globex.call(create(&globex, 3000, None)).await.unwrap() {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::FORBIDDEN),
        other => panic!("{other:?}"),
    }
    assert_eq!(balance(&acme, 1001, Unit::TOKENS_OUT).await, d("100000"));

    // 500 pipelined direct debits on one connection, answered out of order.
    let mut calls = Vec::new();
    for i in 0..500 {
        let c = acme.clone();
        calls.push(tokio::spawn(async move {
            c.call(debit(&format!("p{i}"), 1001, "10")).await
        }));
    }
    for call in calls {
        ok(&call.await.unwrap().unwrap());
    }
    assert_eq!(balance(&acme, 1001, Unit::TOKENS_OUT).await, d("95000"));

    // A batch: debits and a query in one frame, answers in order.
    let entries = vec![
        debit("b1", 1001, "1"),
        debit("b2", 1001, "2"),
        Message::BalanceQuery(BalanceQuery { account: 1001 }),
    ];
    let answers = acme.batch(entries).await.unwrap();
    assert_eq!(answers.len(), 3);
    ok(&answers[0]);
    ok(&answers[1]);
    match &answers[2] {
        Message::Balance(b) => assert_eq!(b.buckets[0].amount, d("94997")),
        other => panic!("{other:?}"),
    }

    // Bad input: too precise an amount is refused and changes nothing.
    let precise = topup(&admin, 1001, Unit::TOKENS_OUT, "0.0000000001");
    match admin.call(precise).await.unwrap() {
        Message::AdminResult(r) => assert_eq!(r.code, AdminCode::AMOUNT_TOO_PRECISE),
        other => panic!("{other:?}"),
    }
    assert_eq!(balance(&acme, 1001, Unit::TOKENS_OUT).await, d("94997"));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_answers_retransmissions() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    ok(&admin.call(create(&admin, 1000, None)).await.unwrap());
    ok(&admin
        .call(topup(&admin, 1000, Unit::TOKENS_OUT, "1000"))
        .await
        .unwrap());
    let first = admin.call(debit("r1", 1000, "100")).await.unwrap();
    ok(&first);
    running.shutdown().await.unwrap();

    let running = server::start(config(dir.path())).await.unwrap();
    let admin = Client::connect(&running.addr.to_string(), ADMIN)
        .await
        .unwrap();
    assert_eq!(balance(&admin, 1000, Unit::TOKENS_OUT).await, d("900"));
    // The retransmitted event gets the original answer and no second debit.
    assert_eq!(admin.call(debit("r1", 1000, "100")).await.unwrap(), first);
    assert_eq!(balance(&admin, 1000, Unit::TOKENS_OUT).await, d("900"));
    running.shutdown().await.unwrap();
}

struct ServerProcess {
    child: Child,
    addr: String,
}

fn spawn_server(dir: &std::path::Path) -> ServerProcess {
    let config_path = dir.join("test.toml");
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[[credential]]\nname = \"admin\"\ntoken = \"{ADMIN}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RECKON_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting reckon serve");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(addr) = line.strip_prefix("reckon listening on ") {
            break addr.trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ServerProcess { child, addr }
}

/// Clients debit as fast as they can; the server is killed with SIGKILL;
/// after a restart every acknowledged debit is there, and nothing beyond
/// the requests that were in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_under_load_loses_no_acknowledged_debit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(dir.path());
    let admin = Client::connect(&server.addr, ADMIN).await.unwrap();
    ok(&admin.call(create(&admin, 1000, None)).await.unwrap());
    ok(&admin
        .call(topup(&admin, 1000, Unit::TOKENS_OUT, "100000000"))
        .await
        .unwrap());

    let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<(String, Message)>::new()));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let client = Client::connect(&server.addr, ADMIN).await.unwrap();
        let acked = acked.clone();
        let sent = sent.clone();
        workers.push(tokio::spawn(async move {
            let mut inflight = tokio::task::JoinSet::new();
            for i in 0..100_000u64 {
                let c = client.clone();
                let session = format!("k{w}-{i}");
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                inflight.spawn(async move {
                    let answer = c.call(debit(&session, 1000, "1")).await;
                    (session, answer)
                });
                while inflight.len() >= 64 {
                    match inflight.join_next().await {
                        Some(Ok((session, Ok(answer)))) => acked.lock().push((session, answer)),
                        _ => return,
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    for w in workers {
        let _ = w.await;
    }
    let acked = acked.lock().clone();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        acked.len() > 100,
        "the load ran ({} acknowledged)",
        acked.len()
    );
    for (_, answer) in &acked {
        ok(answer);
    }

    let mut server = spawn_server(dir.path());
    let admin = Client::connect(&server.addr, ADMIN).await.unwrap();
    let left = balance(&admin, 1000, Unit::TOKENS_OUT).await;
    let debited = d("100000000") - left;
    assert!(
        debited >= Decimal::from(acked.len() as u64),
        "acknowledged debits lost: {} acknowledged, {} found",
        acked.len(),
        debited
    );
    assert!(
        debited <= Decimal::from(sent),
        "more debited ({debited}) than sent ({sent})"
    );
    // Every acknowledged debit is known after the restart: its
    // retransmission gets the identical answer, and not one unit moves.
    let mut checks = tokio::task::JoinSet::new();
    for chunk in acked.chunks(acked.len().div_ceil(8)) {
        let chunk = chunk.to_vec();
        let c = admin.clone();
        checks.spawn(async move {
            for (session, answer) in chunk {
                assert_eq!(
                    c.call(debit(&session, 1000, "1")).await.unwrap(),
                    answer,
                    "{session}"
                );
            }
        });
    }
    while let Some(r) = checks.join_next().await {
        r.unwrap();
    }
    assert_eq!(balance(&admin, 1000, Unit::TOKENS_OUT).await, left);
    server.child.kill().unwrap();
    let _ = server.child.wait();
}

#[test]
fn the_example_configuration_loads_and_bad_ones_name_the_field() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/reckon.toml");
    let config = Config::load(&path).expect("the README's example configuration loads");
    let engine = config.engine_config().unwrap();
    assert_eq!(engine.prices.len(), 2);
    assert_eq!(engine.prices[0].per_unit, d("0.00002"));
    assert_eq!(engine.service_attributes.len(), 1);
    assert_eq!(
        engine.service_attributes[0].1,
        vec![("model".to_string(), "draw-1".to_string())]
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[price]]\nunit = \"tokens_out\"\ncharge_unit = \"USD\"\nper_unit = \"cheap\"\n",
    )
    .unwrap();
    let err = Config::load(&bad)
        .unwrap()
        .engine_config()
        .unwrap_err()
        .to_string();
    assert!(err.contains("price[0].per_unit"), "{err}");
    std::fs::write(&bad, "retransmission_window_s = 0\n").unwrap();
    let err = Config::load(&bad)
        .unwrap()
        .engine_config()
        .unwrap_err()
        .to_string();
    assert!(err.contains("retransmission_window_s"), "{err}");
    for bad_retention in [
        "history_retention_mb = 0\n",
        "history_retention_mb = 1048577\n",
    ] {
        std::fs::write(&bad, bad_retention).unwrap();
        let err = Config::load(&bad)
            .unwrap()
            .engine_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("history_retention_mb"), "{err}");
    }
    std::fs::write(&bad, "retransmission_window_s = 30\n").unwrap();
    assert_eq!(
        Config::load(&bad)
            .unwrap()
            .engine_config()
            .unwrap()
            .answer_window_ms,
        30_000
    );
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\nunknown_key = 1\n").unwrap();
    let err = Config::load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml") && err.contains("unknown_key"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "[[price]]\nunit = \"tokens_out\"\ncharge_unit = \"USD\"\nper_unit = \"0.0000000001\"\n",
    )
    .unwrap();
    let err = Config::load(&bad)
        .unwrap()
        .engine_config()
        .unwrap_err()
        .to_string();
    assert!(err.contains("9 decimal places"), "{err}");
}

/// A writer queue that is full answers BUSY (TOO_BUSY for credit control)
/// at once; what was refused was not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_busy_and_refused_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        queue_capacity: 1,
        ..config(dir.path())
    };
    let running = server::start(cfg).await.unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    ok(&admin.call(create(&admin, 1000, None)).await.unwrap());
    ok(&admin
        .call(topup(&admin, 1000, Unit::TOKENS_OUT, "1000000"))
        .await
        .unwrap());
    let mut calls = Vec::new();
    for i in 0..2000 {
        let c = admin.clone();
        calls.push(tokio::spawn(async move {
            c.call(debit(&format!("o{i}"), 1000, "1")).await
        }));
    }
    let (mut applied, mut busy) = (0u64, 0u64);
    for call in calls {
        match call.await.unwrap().unwrap() {
            Message::Cca(a) if a.result_code == ResultCode::SUCCESS => applied += 1,
            Message::Cca(a) if a.result_code == ResultCode::TOO_BUSY => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        busy > 0,
        "a one-slot queue under 2000 concurrent requests refused none"
    );
    assert!(applied > 0);
    assert_eq!(
        balance(&admin, 1000, Unit::TOKENS_OUT).await,
        d("1000000") - Decimal::from(applied),
        "refused requests must not be applied"
    );
    running.shutdown().await.unwrap();
}
