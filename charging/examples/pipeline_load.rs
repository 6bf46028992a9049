//! Load from one pipelining client over loopback, durability on: requests/s
//! and latency percentiles.
//!
//! Start a server (`cargo run --release --bin reckon -- serve --data-dir /tmp/reckon-load`),
//! then: `cargo run --release -p reckon-charging --example pipeline_load -- [SECONDS] [IN_FLIGHT] [BATCH]`
//! (defaults 10 s, 256 requests in flight, 1 request per frame; BATCH > 1
//! sends BATCH frames of that many requests). It provisions 1,000 accounts,
//! then sends direct-debit events (each a durable ledger debit).

use hdrhistogram::Histogram;
use reckon_charging::client::Client;
use reckon_protocol::codes::ResultCode;
use reckon_protocol::message::{AccountCreate, Ccr, Message, ServiceRequest, TopUp};
use reckon_protocol::types::{CreditKind, EventAction, RequestType, Unit, UnitAmount};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCOUNTS: u64 = 1_000;

fn event(session: String, account: u64) -> Message {
    Message::Ccr(Ccr {
        session_id: session,
        request_type: RequestType::Event,
        request_number: 0,
        account,
        event_action: Some(EventAction::DirectDebit),
        termination_cause: None,
        timestamp_ms: 0,
        services: vec![ServiceRequest {
            service_id: 1,
            requested: vec![UnitAmount::new(Unit::TOKENS_OUT, Decimal::from(1213))],
            used: vec![],
        }],
        attributes: Vec::new(),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(10);
    let in_flight = args.get(1).copied().unwrap_or(256) as usize;
    let batch = args.get(2).copied().unwrap_or(1).max(1) as usize;
    let server = std::env::var("RECKON_SERVER").unwrap_or_else(|_| "127.0.0.1:7878".into());
    let token = std::env::var("RECKON_TOKEN").unwrap_or_else(|_| {
        let dir = std::env::var("RECKON_DATA_DIR").unwrap_or_else(|_| "/tmp/reckon-load".into());
        std::fs::read_to_string(format!("{dir}/admin.token"))
            .expect("RECKON_TOKEN or RECKON_DATA_DIR/admin.token")
            .trim()
            .to_string()
    });
    let client = Client::connect(&server, &token).await.expect("connect");
    let run =
        std::process::id() as u64 * 1_000_000_000 + Instant::now().elapsed().as_nanos() as u64;
    let base = 1 + (run % 1_000_000) * ACCOUNTS;
    let mut setup = Vec::new();
    for a in base..base + ACCOUNTS {
        setup.push(Message::AccountCreate(AccountCreate {
            op_id: client.new_op_id(),
            account: a,
            parent: None,
            draws_on_parent: false,
        }));
        setup.push(Message::TopUp(TopUp {
            op_id: client.new_op_id(),
            account: a,
            unit: Unit::TOKENS_OUT,
            amount: Decimal::from(1_000_000_000u64),
            bucket: None,
            kind: CreditKind::TopUp,
            reason: "load".into(),
        }));
    }
    for chunk in setup.chunks(1000) {
        client.batch(chunk.to_vec()).await.expect("provisioning");
    }
    eprintln!("provisioned {ACCOUNTS} accounts; running {seconds} s with {in_flight} frames in flight, {batch} request(s) per frame");
    let histogram = Arc::new(parking_lot::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..in_flight {
        let client = client.clone();
        let histogram = histogram.clone();
        let done = done.clone();
        let failed = failed.clone();
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let mut requests = Vec::with_capacity(batch);
                for _ in 0..batch {
                    i += 1;
                    let account = base + (lane as u64 * 7919 + i) % ACCOUNTS;
                    requests.push(event(format!("load-{run}-{lane}-{i}"), account));
                }
                let answers = if batch == 1 {
                    client.call(requests.pop().unwrap()).await.map(|a| vec![a])
                } else {
                    client.batch(requests).await
                };
                let micros = sent.elapsed().as_micros() as u64;
                let Ok(answers) = answers else { return };
                for a in &answers {
                    match a {
                        Message::Cca(c) if c.result_code == ResultCode::SUCCESS => {}
                        _ => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                done.fetch_add(answers.len() as u64, std::sync::atomic::Ordering::Relaxed);
                histogram.lock().record(micros.max(1)).ok();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let h = histogram.lock();
    let n = done.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{n} requests in {elapsed:.1} s = {:.0} requests/s ({} failed); frame round-trip latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
        n as f64 / elapsed,
        failed.load(std::sync::atomic::Ordering::Relaxed),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}
