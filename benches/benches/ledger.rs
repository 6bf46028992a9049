//! Ledger benchmarks: in-memory reserve+commit pairs on one core, and
//! durable operations through the journal with group commit.
//!
//! Run: `cargo bench -p reckon-benches --bench ledger`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reckon_balances::journal::{system_clock, Journal, JournalConfig};
use reckon_balances::machine::{LedgerMachine, LedgerRequest};
use reckon_balances::snapshot::CheckpointState;
use reckon_balances::{
    AccountId, Amount, Command, CreditKind, Ledger, OpId, Operation, Outcome, Timestamp, Unit,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCOUNTS: u64 = 10_000;
const NOW: Timestamp = Timestamp(1_800_000_000_000);

fn funded_ledger() -> Ledger {
    let mut ledger = Ledger::new();
    for a in 1..=ACCOUNTS {
        let op = |n: u64| OpId((a as u128) << 64 | n as u128);
        ledger
            .apply(
                NOW,
                &Operation {
                    op: op(1),
                    command: Command::CreateAccount {
                        account: AccountId(a),
                        parent: None,
                        draws_on_parent: false,
                    },
                },
            )
            .unwrap();
        ledger
            .apply(
                NOW,
                &Operation {
                    op: op(2),
                    command: Command::Credit {
                        account: AccountId(a),
                        unit: Unit::USD,
                        amount: Amount::from_units(1_000_000_000),
                        bucket: None,
                        kind: CreditKind::TopUp,
                        reason: "bench".into(),
                    },
                },
            )
            .unwrap();
    }
    ledger.drain_audit();
    ledger
}

fn reserve(account: u64, op: u128) -> Operation {
    Operation {
        op: OpId(op),
        command: Command::Reserve {
            account: AccountId(account),
            unit: Unit::USD,
            amount: Amount::from_units(4),
            min_amount: Amount::from_nanos(1),
            service: None,
            expires_at: NOW.plus_ms(60_000),
        },
    }
}

fn in_memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger");
    const PAIRS: u64 = 100_000;
    group.throughput(Throughput::Elements(PAIRS));
    group.sample_size(20);
    let mut ledger = funded_ledger();
    // A 10 s idempotency window; each iteration advances the clock by the
    // 50 ms that 100k pairs take at the 2M/s goal, so the table holds the
    // steady-state 400k pairs' ids.
    ledger
        .apply(
            NOW,
            &Operation {
                op: OpId(u128::MAX),
                command: Command::SetIdempotencyWindow { window_ms: 1 },
            },
        )
        .unwrap();
    let mut next_op: u128 = 1 << 100;
    let mut now = NOW;
    let mut checkpoints = CheckpointState::default();
    group.bench_function("reserve_commit_pairs_in_memory", |b| {
        b.iter(|| {
            for i in 0..PAIRS {
                next_op += 2;
                let reserved = ledger.apply(now, &reserve(1 + i % ACCOUNTS, next_op));
                let Ok(Outcome::Reserved { reservation, .. }) = reserved else {
                    panic!("{reserved:?}")
                };
                let commit = Operation {
                    op: OpId(next_op + 1),
                    command: Command::Commit {
                        reservation,
                        used: Amount::from_nanos(1_213_000_000),
                        release_rest: true,
                    },
                };
                ledger.apply(now, &commit).unwrap();
            }
            // The journal's checkpoint runs on this same writer thread: it
            // encodes the changed state and drains the audit buffer, so its
            // cost is part of the measured throughput.
            criterion::black_box(ledger.checkpoint(&mut checkpoints, now));
            now = now.plus_ms(50);
        })
    });
    group.finish();
}

fn durable(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    const OPS: u64 = 100_000;
    const SUBMITTERS: u64 = 64;
    const PER_SUBMISSION: u64 = 64;
    group.throughput(Throughput::Elements(OPS));
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) =
        Journal::<LedgerMachine>::open(JournalConfig::new(dir.path()), system_clock()).unwrap();
    let journal = Arc::new(journal);
    let setup: Vec<LedgerRequest> = (1..=ACCOUNTS)
        .flat_map(|a| {
            let op = |n: u64| OpId((a as u128) << 64 | n as u128);
            [
                LedgerRequest::Apply(Operation {
                    op: op(1),
                    command: Command::CreateAccount {
                        account: AccountId(a),
                        parent: None,
                        draws_on_parent: false,
                    },
                }),
                LedgerRequest::Apply(Operation {
                    op: op(2),
                    command: Command::Credit {
                        account: AccountId(a),
                        unit: Unit::USD,
                        amount: Amount::from_units(1_000_000_000),
                        bucket: None,
                        kind: CreditKind::TopUp,
                        reason: "bench".into(),
                    },
                }),
            ]
        })
        .collect();
    for chunk in setup.chunks(4096) {
        journal.call_batch(chunk.to_vec()).unwrap();
    }
    let mut next_op: u128 = 1 << 100;
    group.bench_function("durable_topups_pipelined", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Many clients with submissions in flight at once, as network
                // tasks would have: the writer forms big batches from them.
                let (tx, rx) = crossbeam_channel::unbounded::<()>();
                let started = Instant::now();
                let submissions = OPS / PER_SUBMISSION;
                let mut sent = 0;
                let mut done = 0;
                while done < submissions {
                    while sent < submissions && sent - done < SUBMITTERS {
                        let requests = (0..PER_SUBMISSION)
                            .map(|k| {
                                next_op += 1;
                                LedgerRequest::Apply(Operation {
                                    op: OpId(next_op),
                                    command: Command::Credit {
                                        account: AccountId(
                                            1 + (sent * PER_SUBMISSION + k) % ACCOUNTS,
                                        ),
                                        unit: Unit::USD,
                                        amount: Amount::from_nanos(1),
                                        bucket: None,
                                        kind: CreditKind::TopUp,
                                        reason: "".into(),
                                    },
                                })
                            })
                            .collect();
                        let tx = tx.clone();
                        journal
                            .submit(
                                requests,
                                Box::new(move |r| {
                                    assert!(r.is_ok());
                                    let _ = tx.send(());
                                }),
                            )
                            .unwrap();
                        sent += 1;
                    }
                    rx.recv().unwrap();
                    done += 1;
                }
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
    let s = journal.stats();
    let syncs = s.syncs.load(Ordering::Relaxed).max(1);
    println!(
        "journal: {} records in {} fdatasyncs: {:.0} records per sync on average, {} at most",
        s.records.load(Ordering::Relaxed),
        syncs,
        s.records.load(Ordering::Relaxed) as f64 / syncs as f64,
        s.records_per_sync_max.load(Ordering::Relaxed)
    );
    if let Ok(journal) = Arc::try_unwrap(journal) {
        journal.shutdown();
    }
}

criterion_group!(benches, in_memory, durable);
criterion_main!(benches);
