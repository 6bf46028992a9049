//! The Diameter front end end to end over 127.0.0.1.
//!
//! The main flow is driven by an independent Diameter stack (PyPI
//! python-diameter, installed by `charging/tests/diameter/install.sh`,
//! which `.ci/run` calls): CER → CCR-I → CCR-U → CCR-T, an EVENT and its
//! T-flag retransmission, CHECK_BALANCE, PRICE_ENQUIRY, an unknown
//! subscriber, a starved session re-authorised by RAR after a top-up, and
//! DPR; the balances are then read over the native protocol. Misbehaving
//! peers are played with raw sockets.

use bytes::BytesMut;
use reckon_charging::client::Client;
use reckon_charging::config::{Config, CredentialConfig};
use reckon_charging::diameter::{DiameterConfig, PeerConfig, SubscriberRangeConfig};
use reckon_charging::server;
use reckon_protocol::codes::AdminCode;
use reckon_protocol::diameter::avp::AvpWriter;
use reckon_protocol::diameter::dictionary as d;
use reckon_protocol::diameter::message::*;
use reckon_protocol::diameter::{self as dia, result, Header};
use reckon_protocol::message::{AccountCreate, BalanceQuery, Message, TopUp};
use reckon_protocol::types::{CreditKind, Unit};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "admin-token-0123456789abcdef0123456789abcdef";
const PGW: &str = "pgw.test.example";

fn config(dir: &std::path::Path, cer_timeout_s: u32, watchdog_s: u32) -> Config {
    let mut diameter = DiameterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        origin_host: "ocs.reckon.test".into(),
        origin_realm: "reckon.test".into(),
        cer_timeout_s,
        watchdog_s,
        ..DiameterConfig::default()
    };
    diameter.peers.push(PeerConfig {
        origin_host: PGW.into(),
        org: 1000,
    });
    diameter.free_rating_groups.push(99);
    diameter.subscriber_ranges.push(SubscriberRangeConfig {
        kind: "e164".into(),
        prefix: "4917".into(),
        account_base: 0,
    });
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        credential_list: vec![CredentialConfig {
            name: "admin".into(),
            token: ADMIN.into(),
            org: None,
        }],
        diameter: Some(diameter),
        ..Config::default()
    }
}

async fn admin(c: &Client, m: Message) {
    match c.call(m).await.unwrap() {
        Message::AdminResult(r) => assert_eq!(r.code, AdminCode::OK),
        other => panic!("{other:?}"),
    }
}

async fn create(c: &Client, account: u64, parent: Option<u64>) {
    let m = Message::AccountCreate(AccountCreate {
        op_id: c.new_op_id(),
        account,
        parent,
        draws_on_parent: false,
    });
    admin(c, m).await;
}

async fn topup(c: &Client, account: u64, seconds: u64) {
    let m = Message::TopUp(TopUp {
        op_id: c.new_op_id(),
        account,
        unit: Unit::SECONDS,
        amount: Decimal::from(seconds),
        bucket: None,
        kind: CreditKind::TopUp,
        reason: "test".into(),
    });
    admin(c, m).await;
}

async fn seconds(c: &Client, account: u64) -> Decimal {
    match c
        .call(Message::BalanceQuery(BalanceQuery { account }))
        .await
        .unwrap()
    {
        Message::Balance(b) => b
            .buckets
            .iter()
            .filter(|k| k.unit == Unit::SECONDS)
            .map(|k| k.amount)
            .sum(),
        other => panic!("{other:?}"),
    }
}

/// Where python-diameter is: the install script's folder, or the system.
fn python_diameter() -> Option<Option<PathBuf>> {
    let candidates = [
        std::env::var_os("RECKON_PYDIAMETER").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/diameter-pydeps")),
        None,
    ];
    for path in candidates.iter() {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", "import diameter.node"]);
        if let Some(p) = path {
            if !p.exists() {
                continue;
            }
            cmd.env("PYTHONPATH", p);
        }
        if cmd.output().is_ok_and(|o| o.status.success()) {
            return Some(path.clone());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gy_client_from_another_stack_runs_sessions_events_and_rar() {
    let Some(pythonpath) = python_diameter() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("python-diameter is not installed: .ci/run must call charging/tests/diameter/install.sh");
        }
        eprintln!("SKIPPED: python-diameter not installed (charging/tests/diameter/install.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(config(dir.path(), 10, 30)).await.unwrap();
    let port = running.diameter_addr.unwrap().port();
    let c = Client::connect(&running.addr.to_string(), ADMIN)
        .await
        .unwrap();
    create(&c, 1000, None).await;
    create(&c, 1, Some(1000)).await; // MSISDN 491700000001
    create(&c, 2, Some(1000)).await; // MSISDN 491700000002
    topup(&c, 1, 1000).await;
    topup(&c, 2, 5).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/diameter/gy_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(port.to_string());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(p) = &pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut steps: HashMap<String, serde_json::Value> = HashMap::new();
    loop {
        let Ok(Some(v)) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await else {
            break;
        };
        let step = v["step"].as_str().unwrap_or("").to_string();
        if step == "waiting" {
            // The starved session's account gets credit: RAR follows.
            topup(&c, 2, 100).await;
            writeln!(stdin, "go").unwrap();
            stdin.flush().unwrap();
        }
        let done = step == "stopped";
        steps.insert(step, v);
        if done {
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "client failed; steps so far: {steps:#?}");
    let step = |name: &str| {
        steps
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {steps:#?}"))
            .clone()
    };
    let code = |name: &str| step(name)["result_code"].as_u64().unwrap();

    let initial = step("initial");
    assert_eq!(code("initial"), 2001, "{initial}");
    assert_eq!(initial["mscc"][0]["rating_group"], 10);
    assert_eq!(initial["mscc"][0]["result_code"], 2001);
    assert_eq!(initial["mscc"][0]["granted_time"], 60);
    assert_eq!(initial["mscc"][0]["validity_time"], 300);
    assert_eq!(code("update"), 2001);
    assert_eq!(step("update")["mscc"][0]["granted_time"], 60);
    assert_eq!(code("terminate"), 2001);
    assert_eq!(code("event"), 2001);
    assert_eq!(step("event")["mscc"][0]["granted_time"], 10);
    let (first, again) = (step("event"), step("event_retransmitted"));
    assert_eq!(again["result_code"], 2001);
    assert_eq!(again["end_to_end"], first["end_to_end"]);
    assert_eq!(again["mscc"], first["mscc"]);
    assert_eq!(code("terminate_again"), 2001);
    assert_eq!(code("check_balance"), 2001);
    assert_eq!(
        step("check_balance")["check_balance_result"],
        0,
        "ENOUGH_CREDIT"
    );
    let price = step("price");
    assert_eq!(code("price"), 2001);
    assert_eq!(price["cost"]["value_digits"], 25);
    assert_eq!(price["cost"]["currency_code"], 999);
    assert_eq!(price["cost"]["cost_unit"], "seconds");
    assert_eq!(code("unknown_subscriber"), 5030);
    let starved = step("starved_initial");
    assert_eq!(code("starved_initial"), 2001);
    assert_eq!(starved["mscc"][0]["granted_time"], 5);
    assert_eq!(starved["mscc"][0]["final_unit_action"], 0, "TERMINATE");
    let rar = step("rar");
    assert_eq!(rar["received"], true, "{rar}");
    assert_eq!(rar["requests"][0]["command"], 258);
    assert_eq!(rar["requests"][0]["session_id"], format!("{PGW};1;6"));
    assert_eq!(code("reauthorised"), 2001);
    assert_eq!(step("reauthorised")["mscc"][0]["granted_time"], 60);
    assert_eq!(code("starved_terminate"), 2001);
    assert_eq!(step("stopped")["connections"], 0);

    // Charged once each: 30 + 45 + 10 of 1000; 5 + 20 of 105.
    assert_eq!(seconds(&c, 1).await, Decimal::from(915));
    assert_eq!(seconds(&c, 2).await, Decimal::from(80));
    running.shutdown().await.unwrap();
}

/// A minimal raw peer for the misbehaviour tests.
struct RawPeer {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawPeer {
    async fn connect(addr: std::net::SocketAddr) -> RawPeer {
        RawPeer {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next message, or None when the server closed the connection.
    async fn recv(&mut self) -> Option<BytesMut> {
        loop {
            if let Ok(Some(len)) = dia::frame_length(&self.buf, dia::MAX_MESSAGE_CAP) {
                if self.buf.len() >= len {
                    return Some(self.buf.split_to(len));
                }
            }
            let read =
                tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("the server neither answered nor closed");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn cer(&mut self, host: &str) -> BytesMut {
        let mut out = BytesMut::new();
        Cer {
            capabilities: Capabilities {
                origin_host: host,
                origin_realm: "test.example",
                host_ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                product_name: "raw",
                auth_application_ids: vec![4],
                ..Default::default()
            },
        }
        .encode(&mut out, 1, 1)
        .unwrap();
        self.send(&out).await;
        self.recv().await.expect("a CEA")
    }
}

fn ccr_bytes(session: &str, hop: u32, extra: impl FnOnce(&mut AvpWriter<'_>)) -> BytesMut {
    ccr_of(session, hop, 4, Some(2), extra)
}

/// A CCR of a type (and Requested-Action) for subscriber 491700000001.
fn ccr_of(
    session: &str,
    hop: u32,
    kind: u32,
    action: Option<u32>,
    extra: impl FnOnce(&mut AvpWriter<'_>),
) -> BytesMut {
    let mut out = BytesMut::new();
    let h = Header {
        length: 0,
        flags: dia::FLAG_REQUEST | dia::FLAG_PROXIABLE,
        code: dia::command::CREDIT_CONTROL,
        application_id: 4,
        hop_by_hop: hop,
        end_to_end: hop,
    };
    dia::avp::encode_message(&mut out, h, |w| {
        w.str(&d::SESSION_ID, session);
        w.str(&d::ORIGIN_HOST, PGW);
        w.str(&d::ORIGIN_REALM, "test.example");
        w.str(&d::DESTINATION_REALM, "reckon.test");
        w.u32(&d::AUTH_APPLICATION_ID, 4);
        w.u32(&d::CC_REQUEST_TYPE, kind);
        w.u32(&d::CC_REQUEST_NUMBER, 0);
        w.group(&d::SUBSCRIPTION_ID, |w| {
            w.u32(&d::SUBSCRIPTION_ID_TYPE, 0);
            w.str(&d::SUBSCRIPTION_ID_DATA, "491700000001");
        });
        if let Some(a) = action {
            w.u32(&d::REQUESTED_ACTION, a);
        }
        extra(w);
    })
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_dropped_alone_and_errors_follow_the_rfc() {
    let dir = tempfile::tempdir().unwrap();
    let running = server::start(config(dir.path(), 1, 1)).await.unwrap();
    let addr = running.diameter_addr.unwrap();
    let c = Client::connect(&running.addr.to_string(), ADMIN)
        .await
        .unwrap();
    create(&c, 1000, None).await;
    create(&c, 1, Some(1000)).await;
    topup(&c, 1, 100).await;

    // A good peer opens first and keeps working throughout.
    let mut good = RawPeer::connect(addr).await;
    let cea = good.cer(PGW).await;
    let cea = Cea::decode(&cea).unwrap();
    assert_eq!(cea.status.result_code, 2001);
    assert_eq!(cea.capabilities.origin_host, "ocs.reckon.test");
    assert!(cea.capabilities.supports(4));
    assert!(cea.capabilities.origin_state_id.is_some());

    // Silent after connecting: dropped after the CER timeout.
    let mut silent = RawPeer::connect(addr).await;
    // Garbage: dropped at once.
    let mut garbage = RawPeer::connect(addr).await;
    garbage.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(garbage.recv().await.is_none());
    // Unknown Origin-Host: CEA 3010 with the E bit, then closed.
    let mut stranger = RawPeer::connect(addr).await;
    let answer = stranger.cer("intruder.example").await;
    assert!(Header::parse(&answer).unwrap().is_error());
    assert_eq!(
        Cea::decode(&answer).unwrap().status.result_code,
        result::UNKNOWN_PEER
    );
    assert!(stranger.recv().await.is_none());
    // A CCR before CER: closed.
    let mut early = RawPeer::connect(addr).await;
    early.send(&ccr_bytes("early;1", 9, |_| {})).await;
    assert!(early.recv().await.is_none());

    // The good peer: a CHECK_BALANCE event works.
    good.send(&ccr_bytes("good;1", 10, |_| {})).await;
    let a = good.recv().await.unwrap();
    let cca = Cca::decode(&a).unwrap();
    assert_eq!(
        (cca.status.result_code, cca.check_balance_result),
        (2001, Some(0))
    );
    // Unknown command: 3001 with E.
    let mut unknown = BytesMut::new();
    dia::avp::encode_message(
        &mut unknown,
        Header {
            length: 0,
            flags: dia::FLAG_REQUEST,
            code: 9999,
            application_id: 4,
            hop_by_hop: 11,
            end_to_end: 11,
        },
        |w| {
            w.str(&d::ORIGIN_HOST, PGW);
            w.str(&d::ORIGIN_REALM, "test.example");
        },
    )
    .unwrap();
    good.send(&unknown).await;
    let a = good.recv().await.unwrap();
    let h = Header::parse(&a).unwrap();
    assert!(h.is_error() && h.hop_by_hop == 11);
    assert_eq!(GenericResult::of(&a), result::COMMAND_UNSUPPORTED);
    // An unknown AVP with the M bit: 5001 naming it, no E bit.
    good.send(&ccr_bytes("good;2", 12, |w| w.raw(77777, 0x40, 0, b"????")))
        .await;
    let a = good.recv().await.unwrap();
    assert!(!Header::parse(&a).unwrap().is_error());
    assert_eq!(GenericResult::of(&a), result::AVP_UNSUPPORTED);
    let g = dia::avp::GenericMessage::decode(&a).unwrap();
    assert!(g.find(&d::FAILED_AVP).is_some());
    // A zero-rated rating group: 4011, nothing charged.
    let free = ccr_of("good;3", 14, 1, None, |w| {
        w.group(&d::MULTIPLE_SERVICES_CREDIT_CONTROL, |w| {
            w.group(&d::REQUESTED_SERVICE_UNIT, |w| w.u32(&d::CC_TIME, 60));
            w.u32(&d::RATING_GROUP, 99);
        })
    });
    good.send(&free).await;
    let cca = good.recv().await.unwrap();
    let cca = Cca::decode(&cca).unwrap();
    assert_eq!(
        cca.status.result_code,
        result::CREDIT_CONTROL_NOT_APPLICABLE
    );
    assert_eq!(
        cca.mscc[0].result_code,
        Some(result::CREDIT_CONTROL_NOT_APPLICABLE)
    );
    assert_eq!(cca.mscc[0].rating_group, Some(99));
    assert!(cca.mscc[0].granted.is_none());

    // A direct debit, then the same request with the T flag on another
    // hop-by-hop id: the same answer on the new id, debited once.
    let debit = |hop| {
        let mut m = ccr_of("good;4", hop, 4, Some(0), |w| {
            w.group(&d::MULTIPLE_SERVICES_CREDIT_CONTROL, |w| {
                w.group(&d::REQUESTED_SERVICE_UNIT, |w| w.u32(&d::CC_TIME, 7));
                w.u32(&d::RATING_GROUP, 10);
            })
        });
        m[16..20].copy_from_slice(&777u32.to_be_bytes()); // one End-to-End-Id
        m
    };
    good.send(&debit(15)).await;
    let first = good.recv().await.unwrap();
    let mut again = debit(16);
    again[4] |= dia::FLAG_RETRANSMIT;
    good.send(&again).await;
    let second = good.recv().await.unwrap();
    assert_eq!(Header::parse(&second).unwrap().hop_by_hop, 16);
    assert_eq!(first[16..], second[16..]);
    assert_eq!(first[..12], second[..12]);
    assert_eq!(Cca::decode(&first).unwrap().status.result_code, 2001);
    assert_eq!(seconds(&c, 1).await, Decimal::from(93));

    // A direct debit beyond the balance: DIAMETER_CREDIT_LIMIT_REACHED
    // (4012), nothing debited.
    let beyond = ccr_of("good;5", 17, 4, Some(0), |w| {
        w.group(&d::MULTIPLE_SERVICES_CREDIT_CONTROL, |w| {
            w.group(&d::REQUESTED_SERVICE_UNIT, |w| w.u32(&d::CC_TIME, 5000));
            w.u32(&d::RATING_GROUP, 10);
        })
    });
    good.send(&beyond).await;
    let answer = good.recv().await.unwrap();
    let cca = Cca::decode(&answer).unwrap();
    let codes: Vec<u32> = std::iter::once(cca.status.result_code)
        .chain(cca.mscc.iter().filter_map(|m| m.result_code))
        .collect();
    assert!(codes.contains(&result::CREDIT_LIMIT_REACHED), "{codes:?}");
    assert!(cca.mscc.iter().all(|m| m.granted.is_none()));
    assert_eq!(seconds(&c, 1).await, Decimal::from(93));

    // A DWR is answered.
    let mut dwr = BytesMut::new();
    Dwr {
        origin: Origin {
            host: PGW,
            realm: "test.example",
            state_id: None,
        },
    }
    .encode(&mut dwr, 13, 13)
    .unwrap();
    good.send(&dwr).await;
    let a = good.recv().await.unwrap();
    assert_eq!(Dwa::decode(&a).unwrap().status.result_code, 2001);

    // The silent peer was dropped meanwhile.
    assert!(silent.recv().await.is_none());
    // The good peer now goes quiet: the server asks with DWR, then drops it.
    let a = good.recv().await.expect("a DWR from the server");
    let h = Header::parse(&a).unwrap();
    assert!(h.is_request() && h.code == dia::command::DEVICE_WATCHDOG);
    assert!(
        good.recv().await.is_none(),
        "dropped after an unanswered DWR"
    );

    // And the server is fine: a new peer works.
    let mut next = RawPeer::connect(addr).await;
    let code = |m: &[u8]| Cca::decode(m).unwrap().status.result_code;
    assert_eq!(
        Cea::decode(&next.cer(PGW).await)
            .unwrap()
            .status
            .result_code,
        2001
    );
    next.send(&ccr_bytes("next;1", 20, |_| {})).await;
    assert_eq!(code(&next.recv().await.unwrap()), 2001);

    // A session on account 1, then the account is suspended: ASR for it.
    next.send(&ccr_of("next;2", 21, 1, None, |w| {
        w.group(&d::MULTIPLE_SERVICES_CREDIT_CONTROL, |w| {
            w.group(&d::REQUESTED_SERVICE_UNIT, |w| w.u32(&d::CC_TIME, 10));
            w.u32(&d::RATING_GROUP, 10);
        })
    }))
    .await;
    assert_eq!(code(&next.recv().await.unwrap()), 2001);
    let suspend = Message::AccountStatus(reckon_protocol::message::AccountStatusChange {
        op_id: c.new_op_id(),
        account: 1,
        status: reckon_protocol::types::AccountStatus::Suspended,
    });
    admin(&c, suspend).await;
    let asr = next.recv().await.expect("an ASR");
    let h = Header::parse(&asr).unwrap();
    assert!(h.is_request() && h.code == dia::command::ABORT_SESSION);
    let asr = Asr::decode(&asr).unwrap();
    assert_eq!(asr.session.session_id, "next;2");
    assert_eq!(asr.session.destination_host, PGW);

    // Shutdown: the peer gets DPR; after its DPA the connection closes.
    let stopping = tokio::spawn(running.shutdown());
    let dpr = next.recv().await.expect("a DPR");
    let h = Header::parse(&dpr).unwrap();
    assert!(h.is_request() && h.code == dia::command::DISCONNECT_PEER);
    let mut dpa = BytesMut::new();
    Dpa {
        status: AnswerStatus {
            result_code: 2001,
            ..Default::default()
        },
        origin: Origin {
            host: PGW,
            realm: "test.example",
            state_id: None,
        },
    }
    .encode(&mut dpa, &h)
    .unwrap();
    next.send(&dpa).await;
    assert!(next.recv().await.is_none());
    stopping.await.unwrap().unwrap();
}

/// The Result-Code of any answer.
struct GenericResult;

impl GenericResult {
    fn of(msg: &[u8]) -> u32 {
        let g = dia::avp::GenericMessage::decode(msg).unwrap();
        match &g.find(&d::RESULT_CODE).unwrap().value {
            dia::avp::GenericValue::Data(v) => u32::from_be_bytes(v[..4].try_into().unwrap()),
            other => panic!("{other:?}"),
        }
    }
}
