//! Recovery time and memory per account, measured end to end.
//!
//! Run: `cargo bench -p reckon-benches --bench recovery`
//! (environment: `RECKON_ACCOUNTS`, default 1,000,000; `RECKON_OPS`, default
//! 10,000,000; `RECKON_BENCH_DIR`, default a temporary directory).
//!
//! 1. Memory: resident bytes per idle account (one funded bucket each) in a
//!    bare in-memory ledger.
//! 2. Durable load: the accounts are created and funded through the journal,
//!    checkpointed, then `RECKON_OPS` reserve/commit operations are logged
//!    with checkpoints off, so recovery must load the snapshot and replay
//!    every one of them.
//! 3. Recovery: the time `Journal::open` takes.

use reckon_balances::journal::{system_clock, Journal, JournalConfig};
use reckon_balances::machine::{LedgerMachine, LedgerRequest, LedgerResponse};
use reckon_balances::{
    AccountId, Amount, Command, CreditKind, Ledger, OpId, Operation, Outcome, Timestamp, Unit,
};
use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn create(a: u64) -> Operation {
    Operation {
        op: OpId((a as u128) << 64 | 1),
        command: Command::CreateAccount {
            account: AccountId(a),
            parent: None,
            draws_on_parent: false,
        },
    }
}

fn fund(a: u64) -> Operation {
    Operation {
        op: OpId((a as u128) << 64 | 2),
        command: Command::Credit {
            account: AccountId(a),
            unit: Unit::USD,
            amount: Amount::from_units(1_000_000),
            bucket: None,
            kind: CreditKind::TopUp,
            reason: "".into(),
        },
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list` probes
    }
    let accounts = env_u64("RECKON_ACCOUNTS", 1_000_000);
    let ops = env_u64("RECKON_OPS", 10_000_000);
    let now = Timestamp(1_800_000_000_000);

    // 1. Memory per idle account (skipped when only timing a recovery).
    if std::env::var_os("RECKON_RECOVER_ONLY").is_none() {
        let before = rss_bytes();
        let mut ledger = Ledger::new();
        ledger
            .apply(
                now,
                &Operation {
                    op: OpId(u128::MAX),
                    command: Command::SetIdempotencyWindow { window_ms: 1 },
                },
            )
            .unwrap();
        let mut state = reckon_balances::snapshot::CheckpointState::default();
        for a in 1..=accounts {
            ledger.apply(now, &create(a)).unwrap();
            ledger.apply(now, &fund(a)).unwrap();
            if a % 10_000 == 0 {
                // As the journal's checkpoints do: drain the audit buffer and
                // the change list, which are not idle-account state.
                drop(ledger.checkpoint(&mut state, now.plus_ms(1)));
            }
        }
        drop(ledger.checkpoint(&mut state, now.plus_ms(1)));
        let after = rss_bytes();
        println!(
            "memory: {} accounts with one funded bucket: {} bytes resident, {} bytes per idle account",
            accounts,
            after.saturating_sub(before),
            after.saturating_sub(before) / accounts
        );
    }

    if std::env::var_os("RECKON_ONLY_MEMORY").is_some() {
        return;
    }
    // 2. Durable load.
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("RECKON_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let mut config = JournalConfig::new(&dir);
    config.checkpoint_records = u64::MAX;
    config.checkpoint_interval_ms = u64::MAX / 2;
    config.queue_capacity = 1 << 16;
    if std::env::var_os("RECKON_RECOVER_ONLY").is_some() {
        // Time recovery of a data directory a previous run left behind.
        config.checkpoint_on_shutdown = false;
        recover(config);
        return;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    let (journal, _) = Journal::<LedgerMachine>::open(config.clone(), system_clock()).unwrap();
    let setup: Vec<u64> = (1..=accounts).collect();
    for chunk in setup.chunks(4096) {
        let batch = chunk
            .iter()
            .flat_map(|a| {
                [
                    LedgerRequest::Apply(create(*a)),
                    LedgerRequest::Apply(fund(*a)),
                ]
            })
            .collect();
        journal.call_batch(batch).unwrap();
    }
    journal.shutdown(); // checkpoints: the accounts go into the snapshot
    println!(
        "setup: {accounts} accounts created and funded durably in {:.1?}",
        started.elapsed()
    );

    config.checkpoint_on_shutdown = false;
    let (journal, _) = Journal::<LedgerMachine>::open(config.clone(), system_clock()).unwrap();
    let started = Instant::now();
    let mut op: u128 = 1 << 120;
    let mut logged = 0u64;
    let submitter = journal.submitter();
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u64>>(64);
    let mut in_flight = 0;
    let mut open: Vec<u64> = Vec::new();
    let mut account = 0u64;
    let mut reported = 0;
    while logged < ops || in_flight > 0 {
        while logged < ops && in_flight < 32 {
            // Each submission: 1024 operations; commits for reservations
            // opened by earlier submissions, then new reservations.
            let mut batch = Vec::with_capacity(1024);
            while batch.len() < 1024 {
                op += 1;
                if let Some(r) = open.pop() {
                    batch.push(LedgerRequest::Apply(Operation {
                        op: OpId(op),
                        command: Command::Commit {
                            reservation: reckon_balances::ReservationId(r),
                            used: Amount::from_nanos(1_213_000_000),
                            release_rest: true,
                        },
                    }));
                } else {
                    account = account % accounts + 1;
                    batch.push(LedgerRequest::Apply(Operation {
                        op: OpId(op),
                        command: Command::Reserve {
                            account: AccountId(account),
                            unit: Unit::USD,
                            amount: Amount::from_units(4),
                            min_amount: Amount::from_nanos(1),
                            service: None,
                            expires_at: Timestamp(u64::MAX / 2),
                        },
                    }));
                }
            }
            logged += batch.len() as u64;
            let tx = tx.clone();
            submitter
                .submit(
                    batch,
                    Box::new(move |r| {
                        let reserved = r
                            .expect("durable")
                            .into_iter()
                            .filter_map(|resp| match resp {
                                LedgerResponse::Applied(Ok(Outcome::Reserved {
                                    reservation,
                                    ..
                                })) => Some(reservation.0),
                                _ => None,
                            })
                            .collect();
                        let _ = tx.send(reserved);
                    }),
                )
                .unwrap();
            in_flight += 1;
        }
        open.extend(rx.recv().unwrap());
        in_flight -= 1;
        if logged / 1_000_000 > reported {
            reported = logged / 1_000_000;
            eprintln!("  {logged} operations logged ({:.0?})", started.elapsed());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = journal.stats();
    let records = stats.records.load(std::sync::atomic::Ordering::Relaxed);
    let syncs = stats
        .syncs
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    println!(
        "durable: {logged} operations in {secs:.1} s = {:.0} ops/s; {records} records in {syncs} fdatasyncs ({} per sync on average, {} at most)",
        logged as f64 / secs,
        records / syncs,
        stats.records_per_sync_max.load(std::sync::atomic::Ordering::Relaxed)
    );
    journal.shutdown();

    recover(config);
}

/// 3. Recovery: time `Journal::open` on the directory.
fn recover(config: JournalConfig) {
    let started = Instant::now();
    let (journal, report) = Journal::<LedgerMachine>::open(config, system_clock()).unwrap();
    let elapsed = started.elapsed();
    println!(
        "recovery: {:.2} s: snapshot of {} keys at lsn {} loaded in {:.2} s, {} log records replayed in {:.2} s, invariants checked",
        elapsed.as_secs_f64(),
        report.snapshot_keys,
        report.snapshot_lsn,
        report.snapshot_ms as f64 / 1000.0,
        report.replayed,
        report.replay_ms as f64 / 1000.0
    );
    journal.shutdown();
}
