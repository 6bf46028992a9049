//! The admin listener of `reckon serve` (`/metrics`, `/healthz`,
//! `/readyz`) and its logs, over the real binary (and the real server
//! in-process where recovery has to be held open).

mod common;

use common::*;
use reckon_balances::journal::Clock;
use reckon_balances::Timestamp;
use reckon_charging::client::Client;
use reckon_charging::server;
use reckon_protocol::codes::ResultCode;
use reckon_protocol::message::{BalanceQuery, Message};
use reckon_protocol::types::Unit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` on a new connection and reads until the server closes:
/// the status and body, or `None` when the connection ended without an
/// HTTP answer.
async fn http(addr: &str, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(request).await.ok()?;
    // Nothing more will come: a cut request is seen as cut at once.
    stream.shutdown().await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: reckon\r\n\r\n");
    http(addr, request.as_bytes())
        .await
        .unwrap_or_else(|| panic!("no HTTP answer to GET {path}"))
}

/// The value of one series (name and labels exactly as exposed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn requests(metrics: &str, kind: &str, result: &str) -> f64 {
    let series = format!("reckon_requests_total{{kind=\"{kind}\",result=\"{result}\"}}");
    sample(metrics, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_request_answered() {
    let dir = tempfile::tempdir().unwrap();
    let acme = format!("[[credential]]\nname = \"acme\"\ntoken = \"{ACME}\"\norg = {ACME_ORG}\n");
    let server = spawn_server_with(dir.path(), &dir.path().join("data"), &acme, &[]);
    let admin = server
        .admin
        .clone()
        .expect("the admin listener is on by default");
    assert_eq!(get(&admin, "/healthz").await.0, 200);
    assert_eq!(get(&admin, "/readyz").await, (200, "ready\n".into()));

    let client = Client::connect(&server.addr, ADMIN).await.unwrap();
    ok(&client.call(create(&client, 1000, None)).await.unwrap());
    ok(&client
        .call(topup(&client, 1000, Unit::TOKENS_OUT, "1000000"))
        .await
        .unwrap());
    // Pipelined one by one, then in a batch, then refused.
    const SINGLE: usize = 300;
    const BATCHED: usize = 50;
    let mut calls = Vec::new();
    for i in 0..SINGLE {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            c.call(debit(&format!("p{i}"), 1000, "1")).await
        }));
    }
    for call in calls {
        ok(&call.await.unwrap().unwrap());
    }
    let mut entries: Vec<Message> = (0..BATCHED)
        .map(|i| debit(&format!("b{i}"), 1000, "1"))
        .collect();
    entries.push(Message::BalanceQuery(BalanceQuery { account: 1000 }));
    let answers = client.batch(entries).await.unwrap();
    answers[..BATCHED].iter().for_each(ok);
    for i in 0..3 {
        let answer = client.call(debit(&format!("u{i}"), 4242, "1")).await;
        assert_eq!(code(&answer.unwrap()), ResultCode::USER_UNKNOWN);
    }

    // An organisation's own requests, some refused.
    const ORG_OK: usize = 20;
    const ORG_DENIED: usize = 4;
    let org = Client::connect(&server.addr, ACME).await.unwrap();
    for i in 0..ORG_OK {
        ok(&org
            .call(debit(&format!("o{i}"), ACME_ORG, "1"))
            .await
            .unwrap());
    }
    for i in 0..ORG_DENIED {
        let answer = org.call(debit(&format!("x{i}"), 4242, "1")).await.unwrap();
        assert!(!matches!(&answer, Message::Cca(a) if a.result_code.is_success()));
    }

    let (status, metrics) = get(&admin, "/metrics").await;
    assert_eq!(status, 200);
    let org_series = |name: &str, org: &str| {
        sample(&metrics, &format!("{name}_total{{org=\"{org}\"}}")).unwrap_or(0.0)
    };
    let admin_requests = 2 + SINGLE + BATCHED + 1 + 3;
    assert_eq!(
        org_series("reckon_org_requests", "admin"),
        admin_requests as f64,
        "{metrics}"
    );
    assert_eq!(org_series("reckon_org_denials", "admin"), 3.0, "{metrics}");
    assert_eq!(
        org_series("reckon_org_requests", "acme"),
        (ORG_OK + ORG_DENIED) as f64,
        "{metrics}"
    );
    assert_eq!(
        org_series("reckon_org_denials", "acme"),
        ORG_DENIED as f64,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "reckon_request_latency_seconds_count{kind=\"CCR\"}"
        ),
        Some((SINGLE + BATCHED + 3 + ORG_OK + ORG_DENIED) as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "reckon_request_latency_seconds_bucket{kind=\"CCR\",le=\"+Inf\"}"
        ),
        Some((SINGLE + BATCHED + 3 + ORG_OK + ORG_DENIED) as f64),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE reckon_requests_total counter\n"),
        "{metrics}"
    );
    assert_eq!(
        requests(&metrics, "CCR", "SUCCESS"),
        (SINGLE + BATCHED + ORG_OK) as f64,
        "{metrics}"
    );
    assert_eq!(requests(&metrics, "BALANCE_QUERY", "OK"), 1.0, "{metrics}");
    assert_eq!(requests(&metrics, "ACCOUNT_CREATE", "OK"), 1.0, "{metrics}");
    assert_eq!(requests(&metrics, "TOPUP", "OK"), 1.0, "{metrics}");
    assert_eq!(requests(&metrics, "HELLO", "OK"), 2.0, "{metrics}");
    assert_eq!(sample(&metrics, "reckon_connections_open"), Some(2.0));
    assert_eq!(sample(&metrics, "reckon_ready"), Some(1.0));

    // The journal's counters are copied every 50 ms: they catch up with
    // every request applied (the server's own two at start included).
    // The engine's gauges and the disk use are read every second.
    let applied = (2 + admin_requests + ORG_OK + ORG_DENIED) as f64;
    let written = sample(&metrics, "reckon_journal_durable_lsn").unwrap_or(0.0);
    let mut journal = 0.0;
    for _ in 0..100 {
        let (_, metrics) = get(&admin, "/metrics").await;
        journal = sample(&metrics, "reckon_journal_requests_total").unwrap_or(0.0);
        // Every successful debit is remembered for retransmissions.
        let remembered = sample(&metrics, "reckon_retransmission_entries").unwrap_or(0.0)
            >= (SINGLE + BATCHED + ORG_OK) as f64;
        let read_after = sample(&metrics, "reckon_applied_lsn").unwrap_or(0.0) >= written;
        if journal >= applied && read_after && remembered {
            assert_eq!(sample(&metrics, "reckon_accounts"), Some(1.0));
            assert!(sample(&metrics, "reckon_journal_syncs_total").unwrap() >= 1.0);
            assert!(sample(&metrics, "reckon_journal_durable_lsn").unwrap() >= 1.0);
            assert!(sample(&metrics, "reckon_journal_sync_seconds_count").unwrap() >= 1.0);
            assert_eq!(
                sample(&metrics, "reckon_journal_sync_seconds_count"),
                sample(&metrics, "reckon_journal_records_per_sync_count"),
            );
            assert!(
                sample(&metrics, "reckon_journal_records_per_sync_sum").unwrap()
                    >= (SINGLE + BATCHED + ORG_OK) as f64,
                "{metrics}"
            );
            assert!(sample(&metrics, "reckon_retransmission_bytes").unwrap() > 0.0);
            assert!(
                sample(&metrics, "reckon_wal_bytes").unwrap() > 0.0,
                "{metrics}"
            );
            assert!(
                sample(&metrics, "reckon_data_dir_bytes").unwrap()
                    >= sample(&metrics, "reckon_wal_bytes").unwrap()
            );
            assert_eq!(sample(&metrics, "reckon_sessions_open"), Some(0.0));
            assert!(sample(&metrics, "reckon_writer_queue_depth").is_some());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        journal >= applied,
        "journal requests {journal} < {applied}, or the gauges never showed the remembered answers"
    );

    drop(client);
    drop(org);
    let mut open = None;
    for _ in 0..100 {
        let (_, metrics) = get(&admin, "/metrics").await;
        open = sample(&metrics, "reckon_connections_open");
        if open == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, Some(0.0), "a closed connection is still counted open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_admin_port_is_refused_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_server(dir.path());
    let admin = server.admin.clone().unwrap();

    // Silent connections hold a slot for at most the request timeout and
    // never block others.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(&admin).await.unwrap());
    }
    assert_eq!(get(&admin, "/healthz").await.0, 200);

    let not_http = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n";
    assert_eq!(http(&admin, not_http).await.map(|a| a.0), Some(400));
    assert_eq!(
        http(&admin, b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
            .await
            .map(|a| a.0),
        Some(400)
    );
    let post = b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    assert_eq!(http(&admin, post).await.map(|a| a.0), Some(405));
    assert_eq!(get(&admin, "/nowhere").await.0, 404);

    // An oversized request line, and oversized headers: refused without
    // reading them to the end.
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
    assert_eq!(
        http(&admin, long_line.as_bytes()).await.map(|a| a.0),
        Some(414)
    );
    let long_headers = format!(
        "GET /metrics HTTP/1.1\r\nX-Padding: {}\r\n\r\n",
        "b".repeat(10_000)
    );
    assert_eq!(
        http(&admin, long_headers.as_bytes()).await.map(|a| a.0),
        Some(431)
    );
    // A request cut short: closed without an answer.
    assert_eq!(http(&admin, b"GET /metr").await, None);

    // The silent connections were closed by the server.
    for mut s in silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent admin connection was kept open: {read:?}"
        );
    }

    // Both listeners still serve.
    assert_eq!(get(&admin, "/readyz").await.0, 200);
    let client = Client::connect(&server.addr, ADMIN).await.unwrap();
    ok(&client.call(create(&client, 7, None)).await.unwrap());
    let (_, metrics) = get(&admin, "/metrics").await;
    assert_eq!(requests(&metrics, "ACCOUNT_CREATE", "OK"), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_until_recovery_ends() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // Recovery is held open by a clock that waits for the test: the
    // journal reads it once recovery has replayed the log, before the
    // server accepts anything.
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let clock: Clock = Arc::new(move || {
        while !gate.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Timestamp(now_ms())
    });
    let admin = server::bind_admin(&config).await.unwrap();
    let admin_addr = admin.addr.unwrap().to_string();
    let starting = tokio::spawn(server::start_with(config, clock, admin));

    assert_eq!(get(&admin_addr, "/healthz").await.0, 200);
    let (status, body) = get(&admin_addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("recovering"), "{body}");
    let (_, metrics) = get(&admin_addr, "/metrics").await;
    assert_eq!(sample(&metrics, "reckon_ready"), Some(0.0), "{metrics}");
    assert!(!starting.is_finished());

    open.store(true, Ordering::Release);
    let running = starting.await.unwrap().unwrap();
    assert_eq!(
        running.admin_addr.map(|a| a.to_string()),
        Some(admin_addr.clone())
    );
    assert_eq!(get(&admin_addr, "/readyz").await, (200, "ready\n".into()));
    let (_, metrics) = get(&admin_addr, "/metrics").await;
    assert_eq!(sample(&metrics, "reckon_ready"), Some(1.0), "{metrics}");
    assert!(
        sample(&metrics, "reckon_recovery_seconds").is_some(),
        "{metrics}"
    );

    running.shutdown().await.unwrap();
    // Stopped: the admin listener goes with the server.
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&admin_addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the admin listener outlived the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_can_be_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.admin_listen = "off".into();
    let running = server::start(config).await.unwrap();
    assert_eq!(running.admin_addr, None);
    running.shutdown().await.unwrap();

    let mut config = common::config(dir.path());
    config.admin_listen = "localhost".into();
    match server::start(config).await {
        Err(e) => assert!(e.to_string().contains("admin_listen"), "{e}"),
        Ok(_) => panic!("an admin address without a port was accepted"),
    }
}

#[test]
fn logs_have_no_colour_codes_off_a_terminal_and_can_be_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = spawn_server_with(
        dir.path(),
        &dir.path().join("text"),
        "",
        &[("RECKON_LOG", "info")],
    );
    let lines = text.stderr.lock().clone();
    text.kill();
    assert!(
        lines.iter().any(|l| l.contains("reckon serving")),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\x1b')),
        "colour codes in a piped log: {lines:?}"
    );

    let mut json = spawn_server_with(
        dir.path(),
        &dir.path().join("json"),
        "",
        &[("RECKON_LOG", "info"), ("RECKON_LOG_FORMAT", "json")],
    );
    let lines = json.stderr.lock().clone();
    json.kill();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let serving = events
        .iter()
        .find(|e| e["message"] == "reckon serving")
        .unwrap_or_else(|| panic!("no JSON line says it is serving: {lines:?}"));
    assert_eq!(serving["level"], "INFO");
    assert!(serving["addr"].is_string(), "{serving}");
    // Only the plain lines meant for a person are not JSON.
    assert!(
        lines
            .iter()
            .filter(|l| !l.starts_with('{'))
            .all(|l| l.starts_with("reckon ") || l.starts_with("admin token")),
        "{lines:?}"
    );
}

/// A headless Chromium, when installed (`charging/tests/browser/install.sh`).
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The text of the element with `id` in a dumped DOM.
fn element_text<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[start..];
    let open = rest.find('>')? + 1;
    let close = rest[open..].find('<')?;
    Some(&rest[open..open + close])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_the_figures_in_a_real_browser() {
    let Some(browser) = chromium() else {
        // CI installs Chromium (.ci/run); elsewhere the test needs it too.
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing in CI: charging/tests/browser/install.sh should have installed it"
        );
        eprintln!("skipped: no chromium (run charging/tests/browser/install.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_server(dir.path());
    let admin = server.admin.clone().unwrap();
    let client = Client::connect(&server.addr, ADMIN).await.unwrap();
    for account in [1000, 1001, 1002] {
        ok(&client.call(create(&client, account, None)).await.unwrap());
    }
    ok(&client
        .call(topup(&client, 1000, Unit::TOKENS_OUT, "100"))
        .await
        .unwrap());
    const DEBITS: usize = 7;
    for i in 0..DEBITS {
        ok(&client
            .call(debit(&format!("d{i}"), 1000, "1"))
            .await
            .unwrap());
    }
    // The engine's figures are read every second.
    for _ in 0..100 {
        let (_, json) = get(&admin, "/status.json").await;
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        if status["accounts"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let profile = dir.path().join("chromium-profile");
    let url = format!("http://{admin}/");
    let dumped = tokio::task::spawn_blocking(move || {
        std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                // Lets the page's fetch of /status.json finish before the dump.
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running chromium")
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&dumped.stdout);
    assert!(dumped.status.success(), "chromium failed: {dom}");
    assert_eq!(element_text(&dom, "state"), Some("ready"), "{dom}");
    assert_eq!(
        element_text(&dom, "version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(element_text(&dom, "v-accounts"), Some("3"), "{dom}");
    assert_eq!(element_text(&dom, "v-connections_open"), Some("1"), "{dom}");
    // The requests so far: 3 creates, a top-up, the debits (and the HELLO).
    assert_eq!(
        element_text(&dom, "v-requests"),
        Some((3 + 1 + DEBITS + 1).to_string().as_str()),
        "{dom}"
    );
    assert!(dom.contains("<td>CCR</td><td class=\"n\">7</td>"), "{dom}");
    assert!(
        dom.contains("<td>admin</td><td class=\"n\">11</td><td class=\"n\">0</td>"),
        "{dom}"
    );
    let wal: u64 = element_text(&dom, "v-wal_bytes").unwrap().parse().unwrap();
    assert!(wal > 0, "{dom}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_over_the_native_protocol_version_2_for_an_admin_only() {
    use reckon_protocol::codes::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let acme = format!("[[credential]]\nname = \"acme\"\ntoken = \"{ACME}\"\norg = {ACME_ORG}\n");
    let server = spawn_server_with(dir.path(), &dir.path().join("data"), &acme, &[]);

    // Version 1 stays as it was: STATUS does not exist there.
    let v1 = Client::connect_version(
        &server.addr,
        ADMIN,
        reckon_charging::client::DEFAULT_TIMEOUT,
        1,
    )
    .await
    .unwrap();
    assert_eq!(v1.hello.version, 1);
    match v1.call(Message::Status).await.unwrap() {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::UNKNOWN_KIND),
        other => panic!("{other:?}"),
    }
    ok(&v1.call(create(&v1, ACME_ORG, None)).await.unwrap());
    ok(&v1
        .call(topup(&v1, ACME_ORG, Unit::TOKENS_OUT, "1000"))
        .await
        .unwrap());

    let org = Client::connect(&server.addr, ACME).await.unwrap();
    assert_eq!(org.hello.version, reckon_protocol::PROTOCOL_VERSION);
    match org.call(Message::Status).await.unwrap() {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::FORBIDDEN),
        other => panic!("{other:?}"),
    }
    // An open session holds a reservation.
    let open = Message::Ccr(ccr(
        "s1",
        reckon_protocol::types::RequestType::Initial,
        0,
        ACME_ORG,
        None,
        "10",
        "",
    ));
    ok(&org.call(open).await.unwrap());

    let admin = Client::connect(&server.addr, ADMIN).await.unwrap();
    let mut status = None;
    for _ in 0..100 {
        match admin.call(Message::Status).await.unwrap() {
            Message::StatusResult(s) if s.sessions == 1 => {
                status = Some(s);
                break;
            }
            Message::StatusResult(_) => {}
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = status.expect("STATUS never showed the open session");
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    assert!(s.ready);
    assert_eq!(s.reservations, 1);
    assert_eq!(s.connections, 3);
    assert!(s.durable_lsn >= 4, "{s:?}");
    assert!(s.wal_bytes > 0 && s.data_dir_bytes >= s.wal_bytes, "{s:?}");
    assert!(s.queue_capacity > 0);

    // The CLI prints the same over the real binary.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(["status", "--server", &server.addr, "--token", ADMIN])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "version               {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.contains("open sessions         1\n"), "{text}");
    assert!(text.contains("ready                 yes\n"), "{text}");
    assert!(text.contains("recovered position    0\n"), "{text}");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(["status", "--server", &server.addr, "--token", ACME])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("FORBIDDEN"));
}
