//! Power loss never keeps Reckon down: the real server's log with its last
//! write group (pretended in flight) landed page by page in any order is
//! cut, never refused, and every earlier acknowledged request is there;
//! damage inside acknowledged data is refused with a clear message; and
//! `reckon check` reports both without changing a byte.

mod common;

use common::*;
use reckon_charging::client::Client;
use reckon_protocol::message::{Batch, Message};
use reckon_protocol::types::Unit;
use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::process::Command;

const PAGE: usize = 4096;

fn last_segment(data: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// (start, end, record count) of each write group of a segment.
fn groups(bytes: &[u8]) -> Vec<(usize, usize, u32)> {
    let mut out = Vec::new();
    let mut off = reckon_balances::wal::SEGMENT_HEADER_LEN;
    while off + reckon_balances::wal::GROUP_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        let count = u32::from_le_bytes(bytes[off + 16..off + 20].try_into().unwrap());
        let end = off + reckon_balances::wal::GROUP_HEADER_LEN + len;
        out.push((off, end, count));
        off = end;
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn tree_digest(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree_digest(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

fn check(data: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(["check", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_group_is_cut_and_acknowledged_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = spawn_server_with(dir.path(), &data, "", &[]);
    let admin = Client::connect(&server.addr, ADMIN).await.unwrap();
    ok(&admin.call(create(&admin, ACME_ORG, None)).await.unwrap());
    ok(&admin
        .call(topup(&admin, ACME_ORG, Unit::TOKENS_OUT, "1000000"))
        .await
        .unwrap());
    // Twenty debits, each its own write group, then one BATCH of 300: one
    // write group spanning several pages, which the test pretends was in
    // flight when the power went.
    let mut acked = Vec::new();
    for i in 0..20 {
        let answer = admin
            .call(debit(&format!("p{i}"), ACME_ORG, "1"))
            .await
            .unwrap();
        ok(&answer);
        acked.push((format!("p{i}"), answer));
    }
    let entries = (0..300)
        .map(|i| debit(&format!("b{i}"), ACME_ORG, "1"))
        .collect();
    let batch = admin.call(Message::Batch(Batch { entries })).await.unwrap();
    assert!(matches!(batch, Message::BatchResult(_)));
    server.kill();

    let seg = last_segment(&data);
    let bytes = std::fs::read(&seg).unwrap();
    let layout = groups(&bytes);
    let (start, end, count) = *layout.last().unwrap();
    assert_eq!(end, bytes.len());
    assert!(count >= 300, "the batch is one group ({count} records)");
    let pages = reckon_balances::wal::pages_in_flight(start, end, PAGE);
    assert!(pages >= 3, "the group spans {pages} pages");
    let all = (1u64 << pages) - 1;
    // None landed, all landed, holes (every other page, only the last,
    // all but the first, all but one in the middle).
    let patterns = [
        0,
        all,
        0b0101_0101_0101_0101 & all,
        0b1010_1010_1010_1010 & all,
        1 << (pages - 1),
        all & !1,
        all & !(1 << (pages / 2)),
    ];
    for mask in patterns {
        let copy = dir.path().join(format!("lost-{mask:b}"));
        copy_tree(&data, &copy);
        let disk = reckon_balances::wal::after_power_loss(&bytes[..end], start, PAGE, |i| {
            mask & (1 << i) != 0
        });
        let copied_seg = copy.join("wal").join(seg.file_name().unwrap());
        std::fs::write(&copied_seg, &disk).unwrap();
        // `reckon check` says what a start would do and changes nothing.
        let before = tree_digest(&copy);
        let (fine, report) = check(&copy);
        assert!(fine, "pages {mask:b}: {report}");
        if mask != all && disk.len() > start {
            assert!(report.contains("torn tail"), "pages {mask:b}: {report}");
        }
        assert!(before == tree_digest(&copy), "reckon check changed files");
        // The server starts, and every acknowledged debit before the
        // in-flight group is there: its retransmission gets the same
        // answer and debits nothing.
        let mut server = spawn_server_with(dir.path(), &copy, "", &[]);
        let admin = Client::connect(&server.addr, ADMIN).await.unwrap();
        let expected = if mask == all {
            1_000_000 - 320
        } else {
            1_000_000 - 20
        };
        assert_eq!(
            balance(&admin, ACME_ORG, Unit::TOKENS_OUT).await,
            Decimal::from(expected),
            "pages {mask:b}"
        );
        for (session, answer) in &acked {
            assert_eq!(
                &admin.call(debit(session, ACME_ORG, "1")).await.unwrap(),
                answer
            );
        }
        assert_eq!(
            balance(&admin, ACME_ORG, Unit::TOKENS_OUT).await,
            Decimal::from(expected)
        );
        server.kill();
    }

    // A byte flipped inside an acknowledged group that later groups follow:
    // refused, by `reckon check` and by a start, naming file and offset.
    let copy = dir.path().join("damaged");
    copy_tree(&data, &copy);
    let copied_seg = copy.join("wal").join(seg.file_name().unwrap());
    let mut damaged = bytes.clone();
    let (victim, _, _) = layout[layout.len() - 2];
    damaged[victim + 30] ^= 0x40;
    std::fs::write(&copied_seg, &damaged).unwrap();
    let (fine, report) = check(&copy);
    assert!(!fine, "{report}");
    assert!(report.contains(&format!("offset {victim}")), "{report}");
    assert!(report.contains("Restore the data directory"), "{report}");
    let started = Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&copy)
        .env("RECKON_LOG", "error")
        .output()
        .unwrap();
    assert!(!started.status.success());
    let said = String::from_utf8_lossy(&started.stderr);
    assert!(said.contains("corrupt segment"), "{said}");
    assert!(said.contains(&format!("offset {victim}")), "{said}");
}
