//! Backup under load and restore (`reckon backup`, `reckon restore`), over
//! the real binary: the restored state equals the live state at the
//! backup's log position.

mod common;

use common::*;
use reckon_charging::client::Client;
use reckon_protocol::codes::{AdminCode, ErrorCode};
use reckon_protocol::message::{Backup, Message};
use reckon_protocol::types::{RequestType, Unit};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn reckon(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_to_the_live_state_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let acme = format!("[[credential]]\nname = \"acme\"\ntoken = \"{ACME}\"\norg = {ACME_ORG}\n");
    let mut first = spawn_server_with(dir.path(), &dir.path().join("data"), &acme, &[]);
    let admin = Client::connect(&first.addr, ADMIN).await.unwrap();
    ok(&admin.call(create(&admin, ACME_ORG, None)).await.unwrap());
    ok(&admin
        .call(topup(&admin, ACME_ORG, Unit::TOKENS_OUT, "100000000"))
        .await
        .unwrap());
    for i in 0..50 {
        ok(&admin
            .call(debit(&format!("pre{i}"), ACME_ORG, "1"))
            .await
            .unwrap());
    }
    drop(admin);
    // A clean stop checkpoints: the backup then has a snapshot and the log
    // records the server keeps after it for remembered answers.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(first.child.wait().unwrap().success());
    let server = spawn_server_with(dir.path(), &dir.path().join("data"), &acme, &[]);

    // Load: debits and sessions left open (reservations), until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let org = Client::connect(&server.addr, ACME).await.unwrap();
        let (stop, sent) = (stop.clone(), sent.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let message = if i.is_multiple_of(3) {
                    Message::Ccr(ccr(
                        &format!("s{worker}-{i}"),
                        RequestType::Initial,
                        0,
                        ACME_ORG,
                        None,
                        "5",
                        "",
                    ))
                } else {
                    debit(&format!("d{worker}-{i}"), ACME_ORG, "1")
                };
                ok(&org.call(message).await.unwrap());
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    while sent.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let v2 = Client::connect(&server.addr, ADMIN).await.unwrap();
    // Refusals change nothing and write nothing.
    let relative = v2
        .call(Message::Backup(Backup {
            dir: "relative/dir".into(),
        }))
        .await
        .unwrap();
    assert!(
        matches!(&relative, Message::BackupResult(r) if r.code == AdminCode::INVALID_INPUT),
        "{relative:?}"
    );
    assert!(!std::path::Path::new("relative/dir").exists());
    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep"), b"x").unwrap();
    let refused = v2
        .call(Message::Backup(Backup {
            dir: full.to_string_lossy().into(),
        }))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Message::BackupResult(r) if r.code == AdminCode::INVALID_INPUT),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"x");
    let org_v2 = Client::connect(&server.addr, ACME).await.unwrap();
    let forbidden = org_v2
        .call(Message::Backup(Backup {
            dir: dir.path().join("org").to_string_lossy().into(),
        }))
        .await
        .unwrap();
    assert!(
        matches!(&forbidden, Message::Error(e) if e.code == ErrorCode::FORBIDDEN),
        "{forbidden:?}"
    );
    assert!(!dir.path().join("org").exists());
    // Nor may a tenant read the server's status (every tenant's sessions
    // and reservations, disk use).
    let status = org_v2.call(Message::Status).await.unwrap();
    assert!(
        matches!(&status, Message::Error(e) if e.code == ErrorCode::FORBIDDEN),
        "{status:?}"
    );

    // The backup, through the CLI, while the load goes on.
    let before = sent.load(Ordering::Relaxed);
    let target = dir.path().join("backup");
    let out = reckon(&[
        "backup",
        "--to",
        target.to_str().unwrap(),
        "--server",
        &server.addr,
        "--token",
        ADMIN,
    ]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = reckon_charging::backup::read_manifest(&target).unwrap();
    assert!(
        said.contains(&format!("log position {}", manifest.lsn)),
        "{said}"
    );
    // Let the load run on past the backup, then stop it.
    while sent.load(Ordering::Relaxed) < before + 300 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let after = match v2.call(Message::Status).await.unwrap() {
        Message::StatusResult(s) => s.durable_lsn,
        other => panic!("{other:?}"),
    };
    assert!(
        after > manifest.lsn,
        "the load went on past the backup ({after} <= {})",
        manifest.lsn
    );
    assert!(manifest.snapshot_lsn > 50, "{manifest:?}");
    assert!(
        manifest.first_lsn > 0 && manifest.first_lsn <= manifest.snapshot_lsn,
        "{manifest:?}"
    );

    // Restore into a new directory: the CLI recovers it and checks the
    // digest; the test recomputes it too.
    let restored = dir.path().join("restored");
    let out = reckon(&[
        "restore",
        "--from",
        target.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (lsn, digest) = reckon_charging::backup::recovered_digest(&restored).unwrap();
    assert_eq!((lsn, digest), (manifest.lsn, manifest.digest));

    // Restoring again into a non-empty directory is refused; a backup
    // without its manifest is refused.
    let again = reckon(&[
        "restore",
        "--from",
        target.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    let torn = dir.path().join("torn");
    std::fs::create_dir_all(&torn).unwrap();
    let out = reckon(&[
        "restore",
        "--from",
        torn.to_str().unwrap(),
        "--data-dir",
        dir.path().join("r2").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("manifest"));
    assert!(!dir.path().join("r2").exists());

    // The live state moved on from there: its digest differs.
    drop(server);
    let (live_lsn, live_digest) =
        reckon_charging::backup::recovered_digest(&dir.path().join("data")).unwrap();
    assert!(live_lsn >= after);
    assert_ne!(live_digest, manifest.digest);

    // The restored directory serves, with the backup's balances.
    let restored_server = spawn_server_with(dir.path(), &restored, "", &[]);
    let c = Client::connect(&restored_server.addr, ADMIN).await.unwrap();
    let (amount, held) = balance_held(&c, ACME_ORG, Unit::TOKENS_OUT).await;
    assert!(
        amount > rust_decimal::Decimal::ZERO && held > rust_decimal::Decimal::ZERO,
        "{amount} {held}"
    );
}

/// Stops a server cleanly (SIGTERM: drain, checkpoint, exit 0).
fn stop(mut server: ServerProcess) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.child.wait().unwrap().success());
}

fn export(data: &std::path::Path, out: &std::path::Path) -> String {
    let done = reckon(&[
        "export",
        "accounts",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    std::fs::read_to_string(out).unwrap()
}

fn import(server: &ServerProcess, file: &std::path::Path) -> std::process::Output {
    reckon(&[
        "import",
        "accounts",
        file.to_str().unwrap(),
        "--server",
        &server.addr,
        "--token",
        ADMIN,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_export_and_import_round_trip() {
    use reckon_protocol::message::{AccountStatusChange, Adjust, BucketGrant, LimitSet};
    use reckon_protocol::types::AccountStatus;
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_server_with(dir.path(), &dir.path().join("a"), "", &[]);
    let c = Client::connect(&a.addr, ADMIN).await.unwrap();
    ok(&c.call(create(&c, 1000, None)).await.unwrap());
    ok(&c.call(create(&c, 1001, Some(1000))).await.unwrap());
    ok(&c.call(create(&c, 1002, Some(1000))).await.unwrap());
    ok(&c
        .call(topup(&c, 1000, Unit::TOKENS_OUT, "1234.5"))
        .await
        .unwrap());
    let grant = BucketGrant {
        op_id: c.new_op_id(),
        account: 1001,
        unit: Unit::TOKENS_OUT,
        amount: d("0"),
        valid_from_ms: 1_000,
        valid_until_ms: 4_102_444_800_000,
        priority: 3,
        credit_limit: d("10"),
        services: vec![1, 7],
    };
    let bucket = match c.call(Message::BucketGrant(grant)).await.unwrap() {
        Message::AdminResult(r) => r.bucket,
        other => panic!("{other:?}"),
    };
    // Overdrawn within its credit limit.
    ok(&c
        .call(Message::Adjust(Adjust {
            op_id: c.new_op_id(),
            account: 1001,
            bucket,
            delta: d("-2.000000001"),
            reason: "test".into(),
        }))
        .await
        .unwrap());
    ok(&c
        .call(Message::LimitSet(LimitSet {
            op_id: c.new_op_id(),
            account: 1000,
            unit: Unit::TOKENS_OUT,
            cap: Some(d("500")),
            period: reckon_protocol::LimitPeriod::Lifetime,
            soft: false,
            alerts: Vec::new(),
        }))
        .await
        .unwrap());
    ok(&c
        .call(Message::AccountStatus(AccountStatusChange {
            op_id: c.new_op_id(),
            account: 1002,
            status: AccountStatus::Suspended,
        }))
        .await
        .unwrap());
    drop(c);
    stop(a);
    let exported = export(&dir.path().join("a"), &dir.path().join("a.jsonl"));
    assert_eq!(exported.lines().count(), 3, "{exported}");
    assert!(
        exported.contains("\"amount\":\"-2.000000001\""),
        "{exported}"
    );
    assert!(exported.contains("\"status\":\"suspended\""), "{exported}");

    let b = spawn_server_with(dir.path(), &dir.path().join("b"), "", &[]);
    let done = import(&b, &dir.path().join("a.jsonl"));
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // Again: every account exists now; refused, nothing changed.
    let again = import(&b, &dir.path().join("a.jsonl"));
    assert!(!again.status.success());
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(why.contains("line 1: account 1000 exists already"), "{why}");
    assert!(why.contains("nothing changed"), "{why}");
    stop(b);
    let round_trip = export(&dir.path().join("b"), &dir.path().join("b.jsonl"));
    assert_eq!(round_trip, exported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_import_file_is_refused_by_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_server_with(dir.path(), &dir.path().join("data"), "", &[]);
    let good = r#"{"account":500,"buckets":[{"unit":"USD","amount":"10.50"}]}"#;
    let bad = [
        good,
        r#"{"account":501,"buckets":[{"unit":"USD","amount":"0.0000000001"}]}"#,
        r#"{"account":502,"colour":"blue"}"#,
        "",
        r#"{"account":500}"#,
        r#"{"account":503,"status":"asleep"}"#,
        r#"{"account":504,"buckets":[{"unit":"USD","amount":10}]}"#,
        "not json",
    ]
    .join("\n");
    let file = dir.path().join("bad.jsonl");
    std::fs::write(&file, bad).unwrap();
    let done = import(&server, &file);
    assert!(!done.status.success());
    let why = String::from_utf8_lossy(&done.stderr).to_string();
    for line in [2, 3, 5, 6, 7, 8] {
        assert!(
            why.contains(&format!("\n  line {line}: ")),
            "line {line} not named: {why}"
        );
    }
    for line in [1, 4] {
        assert!(
            !why.contains(&format!("\n  line {line}: ")),
            "line {line} named: {why}"
        );
    }
    assert!(why.contains("6 bad line(s)"), "{why}");
    assert!(why.contains("more than 9 decimal places"), "{why}");

    // Good on its own, bad against the server: a parent that does not exist.
    let orphan = format!("{good}\n{}", r#"{"account":505,"parent":9999}"#);
    std::fs::write(&file, orphan).unwrap();
    let done = import(&server, &file);
    assert!(!done.status.success());
    let why = String::from_utf8_lossy(&done.stderr).to_string();
    assert!(why.contains("line 2: parent 9999 does not exist"), "{why}");

    // Nothing changed: not even the good line's account.
    let c = Client::connect(&server.addr, ADMIN).await.unwrap();
    match c
        .call(Message::BalanceQuery(
            reckon_protocol::message::BalanceQuery { account: 500 },
        ))
        .await
        .unwrap()
    {
        Message::AdminResult(r) => assert_eq!(r.code, AdminCode::ACCOUNT_NOT_FOUND),
        other => panic!("account 500 exists: {other:?}"),
    }
    drop(c);
    stop(server);
    let exported = export(&dir.path().join("data"), &dir.path().join("after.jsonl"));
    assert_eq!(exported, "");
}
