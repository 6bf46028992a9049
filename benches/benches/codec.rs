//! Native protocol codec: encode and decode a CCR frame and a BATCH of 64.
//!
//! Run: `cargo bench -p reckon-benches --bench codec`

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reckon_protocol::frame::{decode_frame, Frame};
use reckon_protocol::message::{Batch, Ccr, Message, ServiceRequest};
use reckon_protocol::types::{RequestType, Unit, UnitAmount};
use rust_decimal::Decimal;
use std::hint::black_box;

fn ccr(i: u64) -> Message {
    Message::Ccr(Ccr {
        session_id: format!("gw-eu-1;{i};0"),
        request_type: RequestType::Update,
        request_number: 3,
        account: 1_000_000 + i,
        event_action: None,
        termination_cause: None,
        timestamp_ms: 0,
        services: vec![ServiceRequest {
            service_id: 10,
            requested: vec![UnitAmount::new(Unit::TOKENS_OUT, Decimal::from(4096))],
            used: vec![UnitAmount::new(Unit::TOKENS_OUT, Decimal::new(1213, 0))],
        }],
        attributes: Vec::new(),
    })
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let frame = Frame::new(7, ccr(1));
    let bytes = frame.to_bytes().unwrap();
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_ccr", |b| {
        let mut buf = BytesMut::with_capacity(256);
        b.iter(|| {
            buf.clear();
            black_box(&frame).encode(&mut buf).unwrap();
            black_box(buf.len())
        })
    });
    group.bench_function("decode_ccr", |b| {
        b.iter(|| decode_frame(black_box(&bytes)).unwrap().unwrap())
    });
    let batch = Frame::new(
        8,
        Message::Batch(Batch {
            entries: (0..64).map(ccr).collect(),
        }),
    );
    let batch_bytes = batch.to_bytes().unwrap();
    group.throughput(Throughput::Elements(64));
    group.bench_function("encode_batch_64", |b| {
        let mut buf = BytesMut::with_capacity(16 << 10);
        b.iter(|| {
            buf.clear();
            black_box(&batch).encode(&mut buf).unwrap();
            black_box(buf.len())
        })
    });
    group.bench_function("decode_batch_64", |b| {
        b.iter(|| decode_frame(black_box(&batch_bytes)).unwrap().unwrap())
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
