//! The load generator against a scripted server on 127.0.0.1 that counts
//! what arrives: BATCH frames are answered entry by entry and each request
//! is counted once however often it was sent (BUSY retries, answers that
//! did not fit a BATCH_RESULT resent alone); the throughput series sums to
//! the total; open-loop latency is timed from scheduled arrivals, so a
//! server stall shows in the percentiles (no coordinated omission), across
//! several threads and connections.

use reckon_protocol::codes::{ErrorCode, ResultCode};
use reckon_protocol::frame::{decode_frame_with_limit, Frame};
use reckon_protocol::message::{
    BatchResult, Cca, Ccr, ErrorReply, HelloOk, Message, ServiceAnswer,
};
use reckon_sim::load::{self, LoadConfig};
use reckon_sim::report;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the scripted server does and saw.
#[derive(Default)]
struct Script {
    /// Answer the first sending of every k-th CCR with ERROR BUSY (0: never).
    busy_every: u64,
    /// Inside a BATCH, answer the first sending of every k-th CCR with
    /// ERROR FRAME_TOO_LARGE, as a server whose BATCH_RESULT overflowed does
    /// (it applied the request; 0: never).
    too_large_every: u64,
    /// Stop answering from this long after the first CCR, for `stall_for`.
    stall_at: Option<Duration>,
    stall_for: Duration,
    seen: Seen,
}

#[derive(Default)]
struct Seen {
    first_ccr: Option<Instant>,
    ccrs: u64,
    frames: u64,
    batches: u64,
    largest_batch: usize,
    busy_sent: u64,
    too_large: HashSet<(String, u32)>,
    resent_alone: HashSet<(String, u32)>,
    answered: HashMap<(String, u32), u32>,
}

type Shared = Arc<parking_lot::Mutex<Script>>;

fn answer(script: &Shared, c: &Ccr, in_batch: bool) -> Message {
    let mut s = script.lock();
    s.seen.ccrs += 1;
    let key = (c.session_id.clone(), c.request_number);
    let n = s.seen.ccrs;
    let sent_before = s.seen.answered.contains_key(&key)
        || s.seen.too_large.contains(&key)
        || s.seen.resent_alone.contains(&key);
    if !in_batch && s.seen.too_large.contains(&key) {
        s.seen.resent_alone.insert(key.clone());
    }
    if !sent_before && s.busy_every > 0 && n.is_multiple_of(s.busy_every) {
        s.seen.busy_sent += 1;
        // Not applied: the retry is the request's first application.
        return Message::Error(ErrorReply {
            code: ErrorCode::BUSY,
            message: "busy".into(),
        });
    }
    let applied_before = s.seen.too_large.contains(&key);
    if in_batch && !applied_before && s.too_large_every > 0 && n.is_multiple_of(s.too_large_every) {
        s.seen.too_large.insert(key);
        return Message::Error(ErrorReply {
            code: ErrorCode::FRAME_TOO_LARGE,
            message: "answer did not fit".into(),
        });
    }
    *s.seen.answered.entry(key).or_insert(0) += 1;
    let service = &c.services[0];
    Message::Cca(Cca {
        result_code: ResultCode::SUCCESS,
        session_id: c.session_id.clone(),
        request_number: c.request_number,
        services: vec![ServiceAnswer {
            service_id: service.service_id,
            result_code: ResultCode::SUCCESS,
            granted: service.requested.clone(),
            validity_time_s: 0,
            final_unit_action: None,
            redirect: String::new(),
            denial: None,
        }],
        balance: Vec::new(),
        price: Vec::new(),
    })
}

/// Serves the scripted answers on 127.0.0.1; returns the address.
async fn scripted_server(script: Shared) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let mut input = bytes::BytesMut::new();
                loop {
                    let mut out = bytes::BytesMut::new();
                    while let Ok(Some((frame, used))) = decode_frame_with_limit(&input, 1 << 20) {
                        let _ = input.split_to(used);
                        let stall = {
                            let s = script.lock();
                            match (s.stall_at, s.seen.first_ccr) {
                                (Some(at), Some(first)) => {
                                    let from = first + at;
                                    let now = Instant::now();
                                    (now >= from && now < from + s.stall_for)
                                        .then(|| from + s.stall_for - now)
                                }
                                _ => None,
                            }
                        };
                        if let Some(d) = stall {
                            tokio::time::sleep(d).await;
                        }
                        let body = match frame.body {
                            Message::Hello(_) => Message::HelloOk(HelloOk {
                                version: 1,
                                org_id: 0,
                                is_admin: true,
                                max_frame: 1 << 20,
                                keepalive_s: 30,
                                server_name: "scripted".into(),
                            }),
                            Message::Ccr(c) => {
                                {
                                    let mut s = script.lock();
                                    s.seen.frames += 1;
                                    s.seen.first_ccr.get_or_insert_with(Instant::now);
                                }
                                answer(&script, &c, false)
                            }
                            Message::Batch(b) => {
                                {
                                    let mut s = script.lock();
                                    s.seen.frames += 1;
                                    s.seen.batches += 1;
                                    s.seen.largest_batch =
                                        s.seen.largest_batch.max(b.entries.len());
                                    s.seen.first_ccr.get_or_insert_with(Instant::now);
                                }
                                let entries = b
                                    .entries
                                    .iter()
                                    .map(|e| match e {
                                        Message::Ccr(c) => answer(&script, c, true),
                                        _ => Message::Error(ErrorReply {
                                            code: ErrorCode::FORBIDDEN,
                                            message: "scripted".into(),
                                        }),
                                    })
                                    .collect();
                                Message::BatchResult(BatchResult { entries })
                            }
                            Message::Pong => continue,
                            other => panic!("the scripted server got {:?}", other.kind()),
                        };
                        Frame::new(frame.request_id, body).encode(&mut out).unwrap();
                    }
                    if !out.is_empty() && sock.write_all(&out).await.is_err() {
                        return;
                    }
                    match sock.read_buf(&mut input).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

fn config(addr: &str) -> LoadConfig {
    LoadConfig {
        server: addr.to_string(),
        token: "t".into(),
        accounts: 100,
        account_base: 1,
        connections: 3,
        depth: 40,
        duration: Duration::from_secs(1),
        mix: "reserve-commit=3,event=1".parse().unwrap(),
        skip_provision: true,
        verify: false,
        progress: false,
        threads: 2,
        batch: 16,
        ..LoadConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_entries_are_answered_in_order_and_each_request_counted_once() {
    let script: Shared = Arc::new(parking_lot::Mutex::new(Script {
        busy_every: 37,
        too_large_every: 53,
        ..Script::default()
    }));
    let addr = scripted_server(script.clone()).await;
    let r = load::run(&config(&addr)).await.unwrap().report;
    print!("{}", report::summary(&r));
    let s = script.lock();
    let seen = &s.seen;
    // Counted once: every request the server applied once and answered.
    assert_eq!(r.requests, seen.answered.len() as u64);
    assert!(
        seen.answered.values().all(|n| *n == 1),
        "a request answered twice"
    );
    assert_eq!(r.succeeded, r.requests);
    // Every sending reached the server, in the frames the report counts.
    assert_eq!(r.generator.requests_sent, seen.ccrs);
    assert_eq!(r.generator.frames, seen.frames);
    assert!(seen.batches > 0 && seen.largest_batch <= 16 && seen.largest_batch > 1);
    assert!(r.generator.requests_per_frame > 1.0, "{:?}", r.generator);
    // BUSY answers were retried and counted as such, not as requests.
    assert!(seen.busy_sent > 0);
    assert_eq!(r.errors.get("BUSY").copied(), Some(seen.busy_sent));
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    // Answers that did not fit were fetched by resending the request alone.
    assert!(!seen.too_large.is_empty());
    assert_eq!(seen.too_large, seen.resent_alone);
    // The answers went to their own flows: every reserve-commit pair and
    // event completed, terminates only after their initial.
    let flows = r.flows_completed["reserve-commit"] * 2 + r.flows_completed["event"];
    assert_eq!(flows, r.requests);
    // The series over time sums to the total.
    assert_eq!(r.throughput.requests.iter().sum::<u64>(), r.requests);
    assert_eq!(r.generator.threads, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_counts_a_stall_from_the_scheduled_arrivals() {
    // 1,000 events/s over 4 connections on 2 threads for 2 s; the server
    // stops answering for 500 ms after 0.8 s. With 8 in flight per
    // connection, a generator that timed requests from when it sent them
    // would see 32 slow requests (p99 fast); timed from their arrivals,
    // the ~500 that arrived during the stall are slow.
    let script: Shared = Arc::new(parking_lot::Mutex::new(Script {
        stall_at: Some(Duration::from_millis(800)),
        stall_for: Duration::from_millis(500),
        ..Script::default()
    }));
    let addr = scripted_server(script.clone()).await;
    let c = LoadConfig {
        rate: 1000,
        connections: 4,
        depth: 8,
        duration: Duration::from_secs(2),
        mix: "event=1".parse().unwrap(),
        batch: 1,
        ..config(&addr)
    };
    let r = load::run(&c).await.unwrap().report;
    print!("{}", report::summary(&r));
    assert!(
        (1700..=2300).contains(&r.requests),
        "{} requests at 1,000/s for 2 s",
        r.requests
    );
    assert_eq!(r.dropped_arrivals, 0);
    let l = &r.latency_us["EVENT"];
    assert!(
        l.p50 < 100_000,
        "p50 {} µs: most requests were not in the stall",
        l.p50
    );
    assert!(l.p90 >= 50_000, "p90 {} µs: the stall must show", l.p90);
    assert!(
        l.p99 >= 300_000,
        "p99 {} µs: arrivals early in the stall waited ~0.5 s",
        l.p99
    );
    let lag = r
        .generator
        .schedule_lag_us
        .as_ref()
        .expect("open loop reports its lag");
    assert!(
        lag.p50 < 20_000,
        "the generator itself kept to its schedule: {lag:?}"
    );
    // Per-interval latency shows when it happened.
    let worst = r
        .throughput
        .max_us
        .iter()
        .enumerate()
        .max_by_key(|(_, v)| **v)
        .map(|(i, _)| i)
        .unwrap();
    assert!(
        (1..=2).contains(&worst),
        "slowest interval {worst}: {:?}",
        r.throughput.max_us
    );
    assert_eq!(r.throughput.requests.iter().sum::<u64>(), r.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_answers_everything_and_the_generator_measures_itself() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(reckon_sim::sink::serve(listener));
    let c = LoadConfig {
        mix: "telco=1,inference=1,gpu=1,event=1,reserve-commit=1"
            .parse()
            .unwrap(),
        batch: 32,
        ..config(&addr)
    };
    let r = load::run(&c).await.unwrap().report;
    print!("{}", report::summary(&r));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.succeeded, r.requests);
    assert_eq!(r.flows_completed.len(), 5);
    assert!(r.flows_completed.values().all(|n| *n > 0));
    assert!(r.generator.cpu_s > 0.0 && r.generator.cpu_us_per_request > 0.0);
    assert_eq!(r.throughput.requests.iter().sum::<u64>(), r.requests);
}
