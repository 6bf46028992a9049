//! Request attributes over the real protocol (version 2): one service
//! priced per model by rate-card rules, version-1 clients unchanged,
//! oversized lists refused with nothing debited, and a retransmission with
//! other attributes refused as a reused id — before and after a restart.

mod common;

use common::*;
use reckon_charging::client::Client;
use reckon_charging::config::ProductConfig;
use reckon_charging::server;
use reckon_protocol::codes::{AdminCode, ErrorCode, ResultCode};
use reckon_protocol::frame::Frame;
use reckon_protocol::message::{Hello, Message, RateCardApply};
use reckon_protocol::types::{EventAction, RequestType, Unit};
use rust_decimal::Decimal;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Service 1 priced per model (default for any other); service 2 is bound
/// to model "large" by the configuration.
const MODELS_CARD: &str = r#"
card = "models"
[[versions]]
version = 1
effective_from = 2020-01-01T00:00:00Z
currency = "USD"
decimals = 6
[[versions.services]]
id = 1
name = "chat"
[[versions.services.rules]]
unit = "tokens_out"
price = { model = "per_unit", price = "0.001", per = 1 }
[[versions.services.rules]]
unit = "tokens_out"
when = { model = "gpt-4o" }
price = { model = "per_unit", price = "0.01", per = 1 }
[[versions.services.rules]]
unit = "tokens_out"
when = { model = "mini" }
price = { model = "per_unit", price = "0.0001", per = 1 }
[[versions.services]]
id = 2
name = "bound"
[[versions.services.rules]]
unit = "tokens_out"
when = { model = "large" }
price = { model = "per_unit", price = "0.1", per = 1 }
[[versions.services.rules]]
unit = "tokens_out"
when = { model = "gpt-4o" }
price = { model = "per_unit", price = "0.01", per = 1 }
"#;

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A DIRECT_DEBIT of `tokens` output tokens on `service` with attributes.
fn debit_with(session: &str, service: u32, tokens: &str, a: &[(&str, &str)]) -> Message {
    let mut c = ccr(
        session,
        RequestType::Event,
        0,
        ACME_KEY,
        Some(EventAction::DirectDebit),
        tokens,
        "",
    );
    c.services[0].service_id = service;
    c.attributes = attrs(a);
    Message::Ccr(c)
}

async fn usd(admin: &Client) -> (Decimal, Decimal) {
    balance_held(admin, ACME_ORG, Unit::USD).await
}

fn server_config(dir: &std::path::Path) -> reckon_charging::config::Config {
    let mut cfg = config(dir);
    cfg.products = vec![ProductConfig {
        service: 2,
        attributes: [("model".to_string(), "large".to_string())].into(),
    }];
    cfg
}

/// A server with the card applied and ACME holding 100 USD.
async fn start(dir: &std::path::Path) -> (server::RunningServer, Client, Client) {
    let running = server::start(server_config(dir)).await.unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    let acme = Client::connect(&addr, ACME).await.unwrap();
    assert_eq!(
        acme.hello.version,
        reckon_protocol::PROTOCOL_VERSION,
        "a current client speaks the newest version"
    );
    ok(&admin.call(create(&admin, ACME_ORG, None)).await.unwrap());
    ok(&admin
        .call(create(&admin, ACME_KEY, Some(ACME_ORG)))
        .await
        .unwrap());
    ok(&admin
        .call(topup(&admin, ACME_ORG, Unit::USD, "100"))
        .await
        .unwrap());
    let applied = admin
        .call(Message::RateCardApply(RateCardApply {
            op_id: admin.new_op_id(),
            name: "models.toml".into(),
            text: MODELS_CARD.into(),
        }))
        .await
        .unwrap();
    assert!(
        matches!(&applied, Message::RateCardResult(r) if r.code == AdminCode::OK),
        "{applied:?}"
    );
    (running, admin, acme)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_prices_each_model_by_its_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (running, admin, acme) = start(dir.path()).await;
    // 100 output tokens on service 1, by model: 0.01, 0.0001, and the
    // default 0.001 for an unknown model or none.
    let cases = [
        ("gpt-4o", "1.00"),
        ("mini", "0.01"),
        ("unknown", "0.10"),
        ("", "0.10"),
    ];
    let mut expected = d("100");
    for (i, (model, cost)) in cases.iter().enumerate() {
        let a: &[(&str, &str)] = if model.is_empty() {
            &[]
        } else {
            &[("model", model), ("region", "eu")]
        };
        let answer = acme
            .call(debit_with(&format!("d{i}"), 1, "100", a))
            .await
            .unwrap();
        ok(&answer);
        expected -= d(cost);
        assert_eq!(usd(&admin).await, (expected, Decimal::ZERO), "{model}");
    }

    // A session: INITIAL reserves at the model's price, TERMINATE (same
    // attributes) commits the real usage and releases the rest.
    let mut open = ccr("s", RequestType::Initial, 0, ACME_KEY, None, "1000", "");
    open.attributes = attrs(&[("model", "gpt-4o")]);
    let answer = acme.call(Message::Ccr(open.clone())).await.unwrap();
    ok(&answer);
    assert_eq!(cca(&answer).services[0].granted[0].amount, d("1000"));
    assert_eq!(usd(&admin).await, (expected, d("10.00")));
    let mut close = ccr("s", RequestType::Terminate, 1, ACME_KEY, None, "", "250");
    close.attributes = open.attributes.clone();
    ok(&acme.call(Message::Ccr(close)).await.unwrap());
    expected -= d("2.50");
    assert_eq!(usd(&admin).await, (expected, Decimal::ZERO));

    // A bound key wins: service 2 is "large" whatever the request says;
    // repeating the bound value is fine, another value is refused and
    // changes nothing.
    ok(&acme
        .call(debit_with("b1", 2, "10", &[("model", "large")]))
        .await
        .unwrap());
    expected -= d("1.0");
    assert_eq!(usd(&admin).await, (expected, Decimal::ZERO));
    let relabel = acme
        .call(debit_with("b2", 2, "10", &[("model", "gpt-4o")]))
        .await
        .unwrap();
    assert_eq!(code(&relabel), ResultCode::INVALID_AVP_VALUE);
    ok(&acme.call(debit_with("b3", 2, "10", &[])).await.unwrap());
    expected -= d("1.0");
    assert_eq!(usd(&admin).await, (expected, Decimal::ZERO));

    // Inside a BATCH too.
    let results = acme
        .batch(vec![
            debit_with("t1", 1, "100", &[("model", "gpt-4o")]),
            debit_with("t2", 1, "100", &[("model", "mini")]),
        ])
        .await
        .unwrap();
    results.iter().for_each(ok);
    expected -= d("1.01");
    assert_eq!(usd(&admin).await, (expected, Decimal::ZERO));
    running.shutdown().await.unwrap();
}

/// A raw connection that speaks whatever version it is told to.
struct Raw {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    version: u16,
}

impl Raw {
    async fn connect(addr: &str, token: &str, max_version: u16) -> (Raw, Message) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
            version: 1,
        };
        raw.send_bytes(
            &Frame::new(
                1,
                Message::Hello(Hello {
                    min_version: 1,
                    max_version,
                    credential: token.into(),
                    client_name: "raw".into(),
                }),
            )
            .to_bytes()
            .unwrap(),
        )
        .await;
        let answer = raw.read().await.body;
        if let Message::HelloOk(ok) = &answer {
            raw.version = ok.version;
        }
        (raw, answer)
    }

    /// The frame's bytes as `version` lays them out.
    fn bytes(frame: &Frame, version: u16) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        frame
            .encode_version(&mut out, reckon_protocol::limits::MAX_FRAME_CAP, version)
            .unwrap();
        out.to_vec()
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn read(&mut self) -> Frame {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((frame, used)) = reckon_protocol::frame::decode_frame_version(
                &self.buf,
                reckon_protocol::limits::MAX_FRAME_CAP,
                self.version,
            )
            .unwrap()
            {
                self.buf.drain(..used);
                return frame;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `bytes` and expects an ERROR with `code` for request `id`.
    async fn refused(&mut self, bytes: &[u8], id: u64, code: ErrorCode) {
        self.send_bytes(bytes).await;
        let answer = self.read().await;
        assert_eq!(answer.request_id, id);
        match answer.body {
            Message::Error(e) => assert_eq!(e.code, code, "{}", e.message),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_clients_are_unchanged_and_oversized_lists_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (running, admin, acme) = start(dir.path()).await;
    let addr = running.addr.to_string();

    // A version-1 client: HELLO_OK says 1, its CCRs work as before (priced
    // by the default rule), and it cannot send attributes.
    let old = Client::connect_version(&addr, ACME, Duration::from_secs(10), 1)
        .await
        .unwrap();
    assert_eq!(old.hello.version, 1);
    ok(&old.call(debit_with("v1a", 1, "100", &[])).await.unwrap());
    assert_eq!(usd(&admin).await, (d("99.90"), Decimal::ZERO));
    let refused = old
        .call(debit_with("v1b", 1, "100", &[("model", "mini")]))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Message::Error(e) if e.code == ErrorCode::MALFORMED_FRAME),
        "{refused:?}"
    );
    ok(&old.call(debit_with("v1c", 1, "100", &[])).await.unwrap());
    assert_eq!(usd(&admin).await, (d("99.80"), Decimal::ZERO));

    // On the wire: a version-1 connection reads a CCR as version 1 lays it
    // out, so version-2 bytes are malformed (trailing bytes), answered and
    // skipped; the connection goes on.
    let (mut v1, hello) = Raw::connect(&addr, ACME, 1).await;
    assert!(
        matches!(hello, Message::HelloOk(ref ok) if ok.version == 1),
        "{hello:?}"
    );
    let with = Frame::new(7, debit_with("w1", 1, "100", &[("model", "mini")]));
    v1.refused(&Raw::bytes(&with, 2), 7, ErrorCode::MALFORMED_FRAME)
        .await;
    let without = Frame::new(8, debit_with("w2", 1, "100", &[]));
    v1.send_bytes(&Raw::bytes(&without, 1)).await;
    let answer = v1.read().await;
    assert_eq!(answer.request_id, 8);
    ok(&answer.body);
    assert_eq!(usd(&admin).await, (d("99.70"), Decimal::ZERO));

    // A client offering only a version the server lacks is refused.
    let (_, refused) = Raw::connect(&addr, ACME, 0).await;
    assert!(
        matches!(&refused, Message::Error(e) if e.code == ErrorCode::UNSUPPORTED_VERSION
            && e.message.contains(&format!("1..={}", reckon_protocol::PROTOCOL_VERSION))),
        "{refused:?}"
    );

    // Version 2: lists beyond the limits are malformed, refused with a
    // typed error, and nothing is debited; the connection goes on.
    let (mut v2, _) = Raw::connect(&addr, ACME, 2).await;
    assert_eq!(v2.version, 2);
    let base = Raw::bytes(&Frame::new(9, debit_with("o1", 1, "100", &[])), 2);
    let oversized = |tail: &[u8]| {
        // Replace the empty attribute list (the last byte) and fix the length.
        let mut b = base[..base.len() - 1].to_vec();
        b.extend_from_slice(tail);
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b
    };
    let mut nine = vec![9u8];
    for i in 0..9u8 {
        nine.extend_from_slice(&[1, 0, b'a' + i, 1, 0, b'v']);
    }
    let mut long_key = vec![1u8, 33, 0];
    long_key.extend_from_slice(&[b'k'; 33]);
    long_key.extend_from_slice(&[1, 0, b'v']);
    let mut long_value = vec![1u8, 5, 0];
    long_value.extend_from_slice(b"model");
    long_value.extend_from_slice(&[65, 0]);
    long_value.extend_from_slice(&[b'v'; 65]);
    let twice = [2u8, 1, 0, b'm', 1, 0, b'a', 1, 0, b'm', 1, 0, b'b'];
    for tail in [&nine[..], &long_key, &long_value, &twice] {
        v2.refused(&oversized(tail), 9, ErrorCode::MALFORMED_FRAME)
            .await;
    }
    assert_eq!(usd(&admin).await, (d("99.70"), Decimal::ZERO));
    // The Rust client refuses to encode them at all, and keeps its connection.
    let mut c = ccr(
        "o2",
        RequestType::Event,
        0,
        ACME_KEY,
        Some(EventAction::DirectDebit),
        "100",
        "",
    );
    c.attributes = (0..9).map(|i| (format!("k{i}"), "v".into())).collect();
    let refused = acme.call(Message::Ccr(c)).await.unwrap();
    assert!(
        matches!(&refused, Message::Error(e) if e.code == ErrorCode::MALFORMED_FRAME),
        "{refused:?}"
    );
    assert!(!acme.is_closed());
    // The same request within the limits goes through.
    v2.send_bytes(&Raw::bytes(
        &Frame::new(10, debit_with("o3", 1, "100", &[("model", "mini")])),
        2,
    ))
    .await;
    let answer = v2.read().await;
    assert_eq!(answer.request_id, 10);
    ok(&answer.body);
    assert_eq!(usd(&admin).await, (d("99.69"), Decimal::ZERO));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmission_with_other_attributes_is_a_reused_id() {
    let dir = tempfile::tempdir().unwrap();
    let (running, admin, acme) = start(dir.path()).await;
    let first = debit_with("r1", 1, "100", &[("model", "mini"), ("region", "eu")]);
    let answer = acme.call(first.clone()).await.unwrap();
    ok(&answer);
    let mut open = ccr("r2", RequestType::Initial, 0, ACME_KEY, None, "100", "");
    open.attributes = attrs(&[("model", "mini")]);
    let opened = acme.call(Message::Ccr(open.clone())).await.unwrap();
    ok(&opened);
    let after = usd(&admin).await;
    assert_eq!(after, (d("99.99"), d("0.01")));

    let with = |m: &Message, a: &[(&str, &str)]| {
        let Message::Ccr(mut c) = m.clone() else {
            panic!()
        };
        c.attributes = attrs(a);
        Message::Ccr(c)
    };
    let check = |acme: Client, admin: Client, answer: Message, opened: Message| {
        let first = first.clone();
        let open = Message::Ccr(open.clone());
        async move {
            // The same request again: the original answer, nothing moves.
            assert_eq!(acme.call(first.clone()).await.unwrap(), answer);
            assert_eq!(acme.call(open.clone()).await.unwrap(), opened);
            // Same ids, other attributes (another model, one left out, or
            // the same ones in another order): reused, nothing moves.
            for other in [
                with(&first, &[("model", "gpt-4o"), ("region", "eu")]),
                with(&first, &[("model", "mini")]),
                with(&first, &[]),
                with(&first, &[("region", "eu"), ("model", "mini")]),
                with(&open, &[("model", "gpt-4o")]),
                with(&open, &[]),
            ] {
                let r = acme.call(other).await.unwrap();
                assert_eq!(code(&r), ResultCode::REQUEST_ID_REUSED, "{r:?}");
            }
            assert_eq!(usd(&admin).await, (d("99.99"), d("0.01")));
        }
    };
    check(acme.clone(), admin.clone(), answer.clone(), opened.clone()).await;

    // After a restart the requests are read back from the log, attributes
    // and all.
    running.shutdown().await.unwrap();
    let running = server::start(server_config(dir.path())).await.unwrap();
    let addr = running.addr.to_string();
    let admin = Client::connect(&addr, ADMIN).await.unwrap();
    let acme = Client::connect(&addr, ACME).await.unwrap();
    check(acme, admin, answer, opened).await;
    running.shutdown().await.unwrap();
}
