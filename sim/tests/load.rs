//! `reckon-sim load` against an in-process server over 127.0.0.1: every
//! flow of the mix, closed and open loop, the report and chart files, the
//! command line, bad options, and conservation of money in the ledger.

use reckon_charging::client::Client;
use reckon_charging::config::{Config, CredentialConfig};
use reckon_charging::server;
use reckon_protocol::message::{BalanceQuery, Message};
use reckon_sim::load::{self, LoadConfig, LoadError};
use reckon_sim::report;
use rust_decimal::Decimal;
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-token-0123456789abcdef0123456789abcdef";

fn server_config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        credential_list: vec![CredentialConfig {
            name: "admin".into(),
            token: ADMIN.into(),
            org: None,
        }],
        ..Config::default()
    }
}

fn load_config(addr: &str) -> LoadConfig {
    LoadConfig {
        server: addr.to_string(),
        token: ADMIN.into(),
        accounts: 40,
        account_base: 5_000,
        connections: 2,
        depth: 16,
        rate: 0,
        duration: Duration::from_secs(2),
        mix: "telco=40,inference=40,gpu=10,event=10".parse().unwrap(),
        // Low enough that telco sessions run out of octets: grants shrink,
        // carry final units, and INITIALs are refused.
        balance: 20_000_000,
        think_ms: 0,
        seed: 7,
        skip_provision: false,
        verify: true,
        progress: false,
        ..LoadConfig::default()
    }
}

const EXPECTED_ERRORS: [&str; 3] = ["CREDIT_LIMIT_REACHED", "BUSY", "TOO_BUSY"];

fn check_report_files(r: &report::Report, dir: &std::path::Path) {
    let json_path = dir.join("report.json");
    let svg_path = dir.join("latency.svg");
    report::write_json(r, &json_path).unwrap();
    report::write_chart(r, &svg_path).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json["requests"].as_u64(), Some(r.requests));
    assert!(json["requests_per_s"].as_f64().unwrap() > 0.0);
    for t in ["INITIAL", "UPDATE", "TERMINATE", "EVENT"] {
        let l = &json["latency_us"][t];
        assert!(l["count"].as_u64().unwrap() > 0, "{t}: {l}");
        let mut last = 0;
        for p in ["min", "p50", "p90", "p99", "p99.9", "p99.99", "max"] {
            let v = l[p]
                .as_u64()
                .unwrap_or_else(|| panic!("{t} lacks {p}: {l}"));
            assert!(
                v >= last,
                "{t}: {p} {v} below the previous percentile {last}"
            );
            last = v;
        }
        assert!(l["curve"].as_array().unwrap().len() > 100);
    }
    assert!(json["errors"].is_object());
    assert!(json["config"]["mix"].as_str().unwrap().contains("gpu=10"));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let curves = doc.descendants().filter(|n| n.has_tag_name("path")).count();
    assert_eq!(curves, 4, "one curve per message type");
    assert!(svg.contains("99.9%") && svg.contains("INITIAL"));
}

async fn balances(client: &Client, account: u64) -> Vec<(String, Decimal, Decimal)> {
    match client
        .call(Message::BalanceQuery(BalanceQuery { account }))
        .await
        .unwrap()
    {
        Message::Balance(b) => b
            .buckets
            .iter()
            .map(|k| (k.unit.as_str().to_string(), k.amount, k.held))
            .collect(),
        other => panic!("account {account}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_loop_every_flow_conserves_money() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(server_config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();
    let config = load_config(&addr);
    let outcome = load::run(&config).await.unwrap();
    let r = &outcome.report;
    print!("{}", report::summary(r));

    assert!(r.requests > 0);
    assert!(r.succeeded > 0);
    for (flow, n) in &r.flows_completed {
        assert!(*n > 0, "no {flow} flow completed");
    }
    assert_eq!(r.flows_completed.len(), 4);
    assert!(
        !r.errors.contains_key("transport"),
        "transport errors: {:?}",
        r.errors
    );
    for code in r.errors.keys() {
        assert!(
            EXPECTED_ERRORS.contains(&code.as_str()),
            "unexpected error {code}: {:?}",
            r.errors
        );
    }
    // Telco sessions ran their accounts' octets down.
    assert!(
        r.final_unit_grants > 0 || r.errors.contains_key("CREDIT_LIMIT_REACHED"),
        "the low-credit path was not exercised: {r:?}"
    );
    let v = r.verification.as_ref().expect("verification was asked for");
    assert!(v.exact, "{:?}", v.examples);
    assert_eq!(
        v.held_after, 0,
        "credit still held after every session ended"
    );
    check_report_files(r, dir.path());

    // Independently of the generator's own check: for every account and
    // unit, top-up − balance = the debits acknowledged to the generator,
    // and nothing is held any more.
    let debits = outcome.debits.as_ref().unwrap();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    let mut total_debited = 0u64;
    for account in config.account_base..config.account_base + config.accounts {
        let buckets = balances(&admin, account).await;
        assert_eq!(buckets.len(), debits.units().len(), "account {account}");
        for unit in debits.units() {
            let (_, amount, held) = buckets
                .iter()
                .find(|(u, _, _)| u == unit.as_str())
                .unwrap_or_else(|| panic!("account {account} has no {unit} bucket"));
            let acked = debits.get(account, *unit);
            total_debited += acked;
            assert_eq!(
                Decimal::from(config.balance) - amount,
                Decimal::from(acked),
                "account {account} {unit}: balance {amount}, acknowledged debits {acked}"
            );
            assert!(held.is_zero(), "account {account} {unit}: {held} held");
        }
    }
    assert_eq!(total_debited, r.units_debited.values().sum::<u64>());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_loop_holds_its_rate_and_the_cli_writes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(server_config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();

    // Open loop: 1,000 requests/s for 2 s.
    let config = LoadConfig {
        rate: 1000,
        connections: 1,
        depth: 64,
        account_base: 9_000,
        balance: 1_000_000_000,
        ..load_config(&addr)
    };
    let r = load::run(&config).await.unwrap().report;
    print!("{}", report::summary(&r));
    assert_eq!(r.config.mode, "open");
    assert!(
        (1200..=2800).contains(&r.requests),
        "{} requests at 1,000/s for 2 s",
        r.requests
    );
    assert_eq!(r.dropped_arrivals, 0);
    assert!(r
        .errors
        .keys()
        .all(|k| EXPECTED_ERRORS.contains(&k.as_str())));
    assert!(r.verification.as_ref().unwrap().exact);

    // The command line: a short closed-loop run with an HTML chart.
    let report_path = dir.path().join("cli.json");
    let chart_path = dir.path().join("cli.html");
    let out_dir = dir.path().to_path_buf();
    let (addr2, rp, cp) = (addr.clone(), report_path.clone(), chart_path.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_reckon-sim"))
            .current_dir(out_dir)
            .args(["load", "--server", &addr2, "--token", ADMIN])
            .args(["--accounts", "20", "--account-base", "20000"])
            .args(["--connections", "1", "--depth", "8", "--duration", "1"])
            .args(["--mix", "inference=1,event=1", "--verify"])
            .arg("--report")
            .arg(&rp)
            .arg("--chart")
            .arg(&cp)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("requests/s"), "{stdout}");
    assert!(stdout.contains("ledger check: exact"), "{stdout}");
    assert!(stderr.contains("provisioning accounts"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert!(json["latency_us"]["INITIAL"]["p99"].as_u64().is_some());
    assert!(
        json["latency_us"].get("UPDATE").is_none(),
        "no sessions with UPDATEs in this mix"
    );
    let html = std::fs::read_to_string(&chart_path).unwrap();
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("<svg") && html.contains("</html>")
    );

    // A rerun on the same accounts reuses them.
    let again = LoadConfig {
        duration: Duration::from_secs(1),
        verify: false,
        ..config.clone()
    };
    let r = load::run(&again).await.unwrap().report;
    assert_eq!(r.provisioning.accounts_existing, config.accounts);
    assert_eq!(r.provisioning.accounts_created, 0);

    // Told to stop, a long closed-loop run ends early, terminates its
    // sessions and still balances.
    let long = LoadConfig {
        rate: 0,
        duration: Duration::from_secs(60),
        skip_provision: true,
        ..config.clone()
    };
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stopper.cancel();
    });
    let r = load::run_with_stop(&long, stop).await.unwrap().report;
    assert!(r.elapsed_s < 5.0, "{} s", r.elapsed_s);
    // First and last minute are compared over the load that ran, not the 60 s asked for.
    assert!(
        r.throughput.load_s > 0.3 && r.throughput.load_s < 5.0,
        "{}",
        r.throughput.load_s
    );
    assert!(r.requests > 0);
    let v = r.verification.unwrap();
    assert!(v.exact && v.held_after == 0, "{v:?}");
    running.shutdown().await.unwrap();
}

#[test]
fn bad_options_are_refused_clearly() {
    let ok = load_config("127.0.0.1:1");
    assert!(ok.validate().is_ok());
    let cases: Vec<(LoadConfig, &str)> = vec![
        (
            LoadConfig {
                accounts: 0,
                ..ok.clone()
            },
            "--accounts",
        ),
        (
            LoadConfig {
                accounts: 10_000_001,
                ..ok.clone()
            },
            "--accounts",
        ),
        (
            LoadConfig {
                account_base: u64::MAX - 5,
                ..ok.clone()
            },
            "--account-base",
        ),
        (
            LoadConfig {
                connections: 0,
                ..ok.clone()
            },
            "--connections",
        ),
        (
            LoadConfig {
                connections: 1025,
                ..ok.clone()
            },
            "--connections",
        ),
        (
            LoadConfig {
                depth: 4097,
                ..ok.clone()
            },
            "--depth",
        ),
        (
            LoadConfig {
                connections: 1024,
                depth: 4096,
                ..ok.clone()
            },
            "in flight",
        ),
        (
            LoadConfig {
                rate: 20_000_000,
                ..ok.clone()
            },
            "--rate",
        ),
        (
            LoadConfig {
                duration: Duration::ZERO,
                ..ok.clone()
            },
            "--duration",
        ),
        (
            LoadConfig {
                balance: 0,
                ..ok.clone()
            },
            "--balance",
        ),
        (
            LoadConfig {
                think_ms: 10_000_000,
                ..ok.clone()
            },
            "--think-ms",
        ),
        (
            LoadConfig {
                accounts: 2_000_000,
                ..ok.clone()
            },
            "--verify",
        ),
        (
            LoadConfig {
                token: String::new(),
                ..ok.clone()
            },
            "--token",
        ),
    ];
    for (config, needle) in cases {
        match config.validate() {
            Err(LoadError::Config(m)) => assert!(m.contains(needle), "{needle}: {m}"),
            other => panic!("{needle}: {other:?}"),
        }
    }
    // A server that is not there: a clear connection error, no panic.
    let rt = tokio::runtime::Runtime::new().unwrap();
    match rt.block_on(load::run(&ok)) {
        Err(LoadError::Connect { server, .. }) => assert_eq!(server, "127.0.0.1:1"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a run against no server succeeded"),
    }
}

#[test]
fn the_cli_refuses_bad_options() {
    for (args, needle) in [
        (vec!["--connections", "0"], "--connections"),
        (vec!["--depth", "100000"], "--depth"),
        (vec!["--mix", "voice=1"], "unknown flow"),
        (vec!["--mix", "telco=0"], "at least one flow"),
        (vec!["--chart", "x.png"], ".svg or .html"),
        (vec!["--accounts", "abc"], "--accounts"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_reckon-sim"))
            .args(["load", "--token", "t", "--server", "127.0.0.1:1"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_threads_conserve_money_and_the_cli_samples_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(server_config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();

    // BATCH frames on two generator threads, every flow: the ledger still
    // matches the acknowledged debits exactly, and each request is counted
    // once (the series over time sums to the total).
    let config = LoadConfig {
        account_base: 30_000,
        connections: 3,
        depth: 24,
        threads: 2,
        batch: 8,
        mix: "telco=20,inference=20,gpu=10,event=10,reserve-commit=40"
            .parse()
            .unwrap(),
        ..load_config(&addr)
    };
    let r = load::run(&config).await.unwrap().report;
    print!("{}", report::summary(&r));
    let v = r.verification.as_ref().unwrap();
    assert!(v.exact && v.held_after == 0, "{v:?}");
    assert_eq!(r.flows_completed.len(), 5);
    assert!(r.flows_completed["reserve-commit"] > 0);
    assert!(r.generator.requests_per_frame > 1.0, "{:?}", r.generator);
    assert!(r.generator.requests_per_frame <= 8.0);
    assert_eq!(r.generator.threads, 2);
    assert_eq!(r.throughput.requests.iter().sum::<u64>(), r.requests);
    assert!(r.generator.cpu_s > 0.0 && r.generator.cores_used > 0.0);

    // The command line: sampling this process (it is the server) by its
    // port, and the data directory; the chart shows throughput over time
    // and the samples.
    let report_path = dir.path().join("sampled.json");
    let chart_path = dir.path().join("sampled.svg");
    let (rp, cp, data) = (
        report_path.clone(),
        chart_path.clone(),
        dir.path().to_path_buf(),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_reckon-sim"))
            .args(["load", "--server", &addr, "--token", ADMIN])
            .args(["--accounts", "20", "--account-base", "40000"])
            .args(["--connections", "2", "--depth", "16", "--duration", "2"])
            .args([
                "--mix",
                "reserve-commit=1",
                "--batch",
                "4",
                "--threads",
                "2",
            ])
            .args([
                "--server-pid",
                "auto",
                "--sample-every",
                "1",
                "--flat-after",
                "0",
            ])
            .args(["--flat-tolerance", "1000"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--report")
            .arg(&rp)
            .arg("--chart")
            .arg(&cp)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for needle in [
        "throughput: first",
        "generator:",
        "generator verdict:",
        "server RSS: ",
        // The history store is judged against its retention, the rest of
        // the data directory for flatness.
        "data directory outside its history: ",
        "history store: at most",
        "WITHIN",
        "from 0 s on",
        "FLAT",
    ] {
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
    assert!(stderr.contains("sample: server RSS"), "{stderr}");
    assert!(stderr.contains("generator"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let samples = json["steady_state"]["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "{samples:?}");
    for s in samples {
        assert!(s["rss_bytes"].as_u64().unwrap() > 1 << 20, "{s}");
        assert!(s["disk_bytes"].as_u64().unwrap() > 0, "{s}");
        assert!(
            s["history_bytes"].as_u64().unwrap() <= s["disk_bytes"].as_u64().unwrap(),
            "{s}"
        );
    }
    assert_eq!(json["steady_state"]["history"]["within"], true);
    assert_eq!(
        json["steady_state"]["server_pid"].as_u64(),
        Some(std::process::id() as u64)
    );
    assert_eq!(json["steady_state"]["rss"]["verdict"], "flat");
    let series: u64 = json["throughput"]["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(Some(series), json["requests"].as_u64());
    assert_eq!(json["config"]["batch"], 4);
    let svg = std::fs::read_to_string(&chart_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert_eq!(
        lines, 6,
        "throughput, p99, p50, RSS, disk outside history, history"
    );
    assert!(svg.contains("throughput and latency over time") && svg.contains("server RSS"));
    assert!(svg.contains("history store: within retention"));
    running.shutdown().await.unwrap();
}
