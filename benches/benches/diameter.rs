//! Diameter codec costs per message: decoding a CCR (the one
//! python-diameter writes in `protocol/tests/diameter_vectors.rs`),
//! encoding a CCA with two MSCCs, and the generic tree.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use reckon_protocol::diameter::avp::GenericMessage;
use reckon_protocol::diameter::message::{AnswerStatus, Cca, Ccr, Mscc, ServiceUnits};
use reckon_protocol::diameter::Header;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn diameter(c: &mut Criterion) {
    let ccr = hex(include_str!("../../protocol/tests/diameter/ccr_i.hex").trim());
    let mut g = c.benchmark_group("diameter");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode CCR-I (2 MSCC, 600 bytes)", |b| {
        b.iter(|| black_box(Ccr::decode(black_box(&ccr)).unwrap()))
    });
    g.bench_function("generic tree of the CCR-I", |b| {
        b.iter(|| black_box(GenericMessage::decode(black_box(&ccr)).unwrap()))
    });
    let request = Header::parse(&ccr).unwrap();
    let mut out = BytesMut::with_capacity(4096);
    g.bench_function("encode CCA (2 MSCC)", |b| {
        b.iter(|| {
            out.clear();
            let service = |rg, time| Mscc {
                granted: Some(ServiceUnits {
                    time: Some(time),
                    ..Default::default()
                }),
                rating_group: Some(rg),
                validity_time: Some(300),
                result_code: Some(2001),
                ..Default::default()
            };
            let cca = Cca {
                session_id: "pgw1.epc.mnc001.mcc001.3gppnetwork.org;1700000000;42;dedicated",
                status: AnswerStatus {
                    result_code: 2001,
                    ..Default::default()
                },
                origin_host: "ocs.example.net",
                origin_realm: "example.net",
                auth_application_id: 4,
                request_type: 1,
                request_number: 0,
                origin_state_id: Some(1),
                mscc: vec![service(10, 600), service(20, 60)],
                ..Default::default()
            };
            cca.encode(&mut out, &request).unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, diameter);
criterion_main!(benches);
