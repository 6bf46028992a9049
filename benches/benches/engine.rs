//! Engine apply: a direct-debit EVENT and a session (INITIAL, UPDATE,
//! TERMINATE) through `Engine::apply`, including the log encoding the
//! journal's writer does, on one core, no I/O.
//!
//! Run: `cargo bench -p reckon-benches --bench engine`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reckon_balances::journal::Machine;
use reckon_balances::machine::{LedgerMachine, LedgerRequest};
use reckon_balances::{
    AccountId, Amount, Command, CreditKind, OpId, Operation, ServiceId, Timestamp, Unit,
};
use reckon_charging::engine::{
    Caller, CreditControlRequest, Engine, EngineConfig, EngineRequest, EventAction, RequestType,
    ServiceRequest,
};
use rust_decimal::Decimal;
use std::sync::Arc;

const ACCOUNTS: u64 = 10_000;

fn engine() -> Engine {
    let mut e = Engine::new(LedgerMachine::default(), EngineConfig::default());
    // As under the journal: recent records bounded, older ones in the log
    // (this bench never reads them back).
    e.attach_log(Arc::new(|_| None));
    let now = Timestamp(1_800_000_000_000);
    let mut log = Vec::new();
    for a in 1..=ACCOUNTS {
        for (n, command) in [
            Command::CreateAccount {
                account: AccountId(a),
                parent: None,
                draws_on_parent: false,
            },
            Command::Credit {
                account: AccountId(a),
                unit: Unit::TOKENS_OUT,
                amount: Amount::from_units(1_000_000_000),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: "".into(),
            },
        ]
        .into_iter()
        .enumerate()
        {
            let op = Operation {
                op: OpId(((a as u128) << 8) | (n as u128 + 1)),
                command,
            };
            e.apply(
                now,
                0,
                EngineRequest::Ledger(Caller::Admin, LedgerRequest::Apply(op)),
                &mut log,
            );
            log.clear();
        }
    }
    e
}

fn ccr(
    session: Arc<str>,
    kind: RequestType,
    number: u32,
    account: u64,
    requested: i64,
    used: i64,
) -> EngineRequest {
    let q = |v: i64| {
        if v == 0 {
            vec![]
        } else {
            vec![(Unit::TOKENS_OUT, Decimal::from(v))]
        }
    };
    EngineRequest::CreditControl(
        Caller::Admin,
        CreditControlRequest {
            session_id: session,
            request_type: kind,
            request_number: number,
            account: AccountId(account),
            timestamp_ms: 0,
            event_action: if kind == RequestType::Event {
                EventAction::DirectDebit
            } else {
                EventAction::None
            },
            services: vec![ServiceRequest {
                service: ServiceId(10),
                requested: q(requested),
                used: q(used),
                report_only: false,
            }],
            attributes: Vec::new(),
        },
    )
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.sample_size(20);
    const N: u64 = 20_000;
    let mut e = engine();
    let mut now = Timestamp(1_800_000_000_000);
    let mut next = 0u64;
    let mut log = Vec::with_capacity(256);
    group.throughput(Throughput::Elements(N));
    group.bench_function("direct_debit_events", |b| {
        b.iter(|| {
            for _ in 0..N {
                next += 1;
                let s: Arc<str> = Arc::from(format!("ev{next}"));
                log.clear();
                e.apply(
                    now,
                    next,
                    ccr(s, RequestType::Event, 0, 1 + next % ACCOUNTS, 1213, 0),
                    &mut log,
                );
            }
            now = now.plus_ms(100);
        })
    });
    let mut lsn = 1u64 << 40;
    group.throughput(Throughput::Elements(N * 3));
    group.bench_function("session_initial_update_terminate", |b| {
        b.iter(|| {
            for _ in 0..N {
                next += 1;
                let s: Arc<str> = Arc::from(format!("se{next}"));
                let account = 1 + next % ACCOUNTS;
                for (kind, number, requested, used) in [
                    (RequestType::Initial, 0, 4096, 0),
                    (RequestType::Update, 1, 4096, 1213),
                    (RequestType::Terminate, 2, 0, 500),
                ] {
                    log.clear();
                    lsn += 1;
                    e.apply(
                        now,
                        lsn,
                        ccr(s.clone(), kind, number, account, requested, used),
                        &mut log,
                    );
                }
            }
            now = now.plus_ms(100);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
