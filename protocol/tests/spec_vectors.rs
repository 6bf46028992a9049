//! The test vectors of `SPEC.md`, read from the spec itself: every valid
//! vector decodes and re-encodes byte for byte, every invalid one is
//! refused with the stated `ERROR` code.

mod common;

use common::{dec, ua};
use reckon_protocol::*;
use rust_decimal::Decimal;

const SPEC: &str = include_str!("../SPEC.md");

/// A vector from the spec: its info-string words and its bytes.
struct Vector {
    tag: String,
    words: Vec<String>,
    bytes: Vec<u8>,
    /// The connection's protocol version: N when the info string ends in
    /// `vN` (2 or 3), else 1.
    version: u16,
}

/// Decodes a whole frame as a connection of `version` does.
fn decode_v(bytes: &[u8], version: u16) -> Result<Option<(Frame, usize)>, ProtocolError> {
    decode_frame_version(bytes, limits::DEFAULT_MAX_FRAME, version)
}

fn parse_hex(block: &str, name: &str) -> Vec<u8> {
    let mut digits = String::new();
    for line in block.lines() {
        let data = line.split('#').next().unwrap_or("");
        digits.extend(data.chars().filter(|c| !c.is_whitespace()));
    }
    assert!(
        digits.len() & 1 == 0,
        "vector {name}: odd number of hex digits"
    );
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .unwrap_or_else(|_| panic!("vector {name}: bad hex"))
        })
        .collect()
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    let mut lines = SPEC.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace().map(str::to_owned);
        let Some(tag) = words.next() else { continue };
        if tag != "hex-vector" && tag != "hex-invalid" {
            continue;
        }
        let mut words: Vec<String> = words.collect();
        let version = match words.last().map(String::as_str) {
            Some("v2") => 2,
            Some("v3") => 3,
            _ => 1,
        };
        if version > 1 {
            words.pop();
        }
        let mut block = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            block.push_str(l);
            block.push('\n');
        }
        let bytes = parse_hex(&block, &words.join(" "));
        out.push(Vector {
            tag,
            words,
            bytes,
            version,
        });
    }
    out
}

fn valid() -> Vec<(String, Vec<u8>, u16)> {
    vectors()
        .into_iter()
        .filter(|v| v.tag == "hex-vector")
        .map(|v| (v.words[0].clone(), v.bytes, v.version))
        .collect()
}

fn vector(name: &str) -> Frame {
    let (_, bytes, version) = valid()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no vector {name}"));
    decode_v(&bytes, version).unwrap().unwrap().0
}

#[test]
fn the_spec_has_the_required_vectors() {
    let names: Vec<String> = valid().into_iter().map(|(n, _, _)| n).collect();
    for required in [
        "HELLO",
        "HELLO_OK",
        "PING",
        "CCR_INITIAL",
        "CCA_INITIAL",
        "TOPUP",
        "BATCH",
        "ERROR",
        "CCR_ATTRIBUTES",
        "HELLO_V2",
        "LIMIT_SET_MONTHLY",
        "CCA_SPEND_CONTROL",
        "BALANCE_LIMITS",
        "ALERT_SUBSCRIBE",
        "ALERT_SUBSCRIBED",
        "ALERT",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "SPEC.md lacks vector {required}"
        );
    }
    // One valid vector of every kind.
    for kind in Kind::ALL {
        let covered = valid()
            .iter()
            .any(|(_, b, v)| decode_v(b, *v).unwrap().unwrap().0.kind() == *kind);
        assert!(covered, "no vector of kind {}", kind.name());
    }
}

#[test]
fn every_valid_vector_decodes_and_reencodes_byte_for_byte() {
    let all = valid();
    assert!(all.len() >= 20);
    for (name, bytes, version) in all {
        let (frame, used) = decode_v(&bytes, version)
            .unwrap_or_else(|e| panic!("vector {name}: {e}"))
            .unwrap_or_else(|| panic!("vector {name}: incomplete"));
        assert_eq!(used, bytes.len(), "vector {name}: length");
        let mut again = bytes::BytesMut::new();
        frame
            .encode_version(&mut again, limits::MAX_FRAME_CAP, version)
            .unwrap();
        assert_eq!(&again[..], &bytes[..], "vector {name}: re-encoding differs");
        // Version 2 changes only the CCR: every other version-1 frame reads
        // the same on a version-2 connection. Version 3 changes the CCA,
        // LIMIT_SET and BALANCE too.
        if version == 1 && !has(&frame.body, &[Kind::Ccr]) {
            let (v2, _) = decode_v(&bytes, 2).unwrap().unwrap();
            assert_eq!(v2, frame, "vector {name}: differs in version 2");
            if !has(&frame.body, &[Kind::Cca, Kind::LimitSet, Kind::Balance]) {
                let (v3, _) = decode_v(&bytes, 3).unwrap().unwrap();
                assert_eq!(v3, frame, "vector {name}: differs in version 3");
            }
        }
        // Every frame of an older version means the same in version 3.
        if version < 3 {
            let mut v3 = bytes::BytesMut::new();
            frame
                .encode_version(&mut v3, limits::MAX_FRAME_CAP, 3)
                .unwrap();
            let (back, _) = decode_v(&v3, 3).unwrap().unwrap();
            assert_eq!(back, frame, "vector {name}: not the same in version 3");
        }
        // The kind name in the vector name matches the decoded kind.
        assert!(
            name.starts_with(frame.kind().name()),
            "vector {name} decoded as {}",
            frame.kind().name()
        );
    }
}

/// Whether a message is of one of `kinds` or a batch (result) holding one.
fn has(m: &Message, kinds: &[Kind]) -> bool {
    match m {
        Message::Batch(b) => b.entries.iter().any(|e| has(e, kinds)),
        Message::BatchResult(b) => b.entries.iter().any(|e| has(e, kinds)),
        m => kinds.contains(&m.kind()),
    }
}

#[test]
fn every_invalid_vector_is_refused_with_its_code() {
    let mut count = 0;
    for v in vectors().into_iter().filter(|v| v.tag == "hex-invalid") {
        let (name, code) = (&v.words[0], &v.words[1]);
        let err = match decode_v(&v.bytes, v.version) {
            Err(e) => e,
            Ok(r) => panic!("invalid vector {name} decoded: {r:?}"),
        };
        assert_eq!(
            err.code().name(),
            Some(code.as_str()),
            "vector {name}: {err}"
        );
        // Through the codec too: same code, and the frame is skipped when not fatal.
        let mut codec = TolerantCodec::default();
        codec.inner.set_version(v.version);
        let mut buf = bytes::BytesMut::from(&v.bytes[..]);
        use tokio_util::codec::Decoder;
        match codec.decode(&mut buf) {
            Ok(Some(Err(e))) => {
                assert!(!e.is_fatal());
                assert_eq!(e.code().name(), Some(code.as_str()));
                assert!(buf.is_empty(), "vector {name}: frame not skipped");
            }
            Err(e) => {
                assert!(e.is_fatal(), "vector {name}");
                assert_eq!(e.code().name(), Some(code.as_str()));
            }
            other => panic!("vector {name}: {other:?}"),
        }
        count += 1;
    }
    assert!(count >= 10);
}

#[test]
fn invalid_vectors_map_to_their_error_variants() {
    use ProtocolError as E;
    let by_name: Vec<(String, ProtocolError)> = vectors()
        .into_iter()
        .filter(|v| v.tag == "hex-invalid")
        .map(|v| {
            let e = decode_v(&v.bytes, v.version).unwrap_err();
            (v.words[0].clone(), e)
        })
        .collect();
    let get = |n: &str| &by_name.iter().find(|(name, _)| name == n).unwrap().1;
    assert!(matches!(
        get("TOO_LARGE"),
        E::FrameTooLarge {
            length: 16_777_217,
            max: 1_048_576
        }
    ));
    assert!(matches!(get("TOO_SHORT"), E::FrameTooShort { length: 6 }));
    assert!(matches!(
        get("UNKNOWN_KIND"),
        E::UnknownKind {
            request_id: 21,
            kind: 0x42
        }
    ));
    assert!(matches!(
        get("BAD_FLAGS"),
        E::BadFlags {
            request_id: 22,
            kind: 0x02,
            flags: 1
        }
    ));
    assert!(matches!(
        get("TRAILING_BYTES"),
        E::TrailingBytes {
            request_id: 23,
            field: "body",
            extra: 1
        }
    ));
    assert!(matches!(
        get("TRUNCATED_BODY"),
        E::Truncated {
            request_id: 24,
            field: "account"
        }
    ));
    assert!(matches!(
        get("DECIMAL_SCALE"),
        E::DecimalScale {
            request_id: 25,
            field: "balance",
            scale: 29
        }
    ));
    assert!(matches!(
        get("DECIMAL_RANGE"),
        E::DecimalOutOfRange {
            request_id: 26,
            field: "balance"
        }
    ));
    assert!(matches!(
        get("BAD_UNIT"),
        E::InvalidUnit {
            request_id: 27,
            field: "unit"
        }
    ));
    assert!(matches!(
        get("BAD_BOOL"),
        E::InvalidBool {
            request_id: 28,
            field: "has_parent",
            value: 2
        }
    ));
    assert!(matches!(
        get("NON_CANONICAL"),
        E::NonCanonical {
            request_id: 29,
            field: "parent"
        }
    ));
    assert!(matches!(
        get("BAD_ENUM"),
        E::InvalidEnum {
            request_id: 30,
            field: "status",
            value: 3
        }
    ));
    assert!(matches!(
        get("STRING_TOO_LONG"),
        E::StringTooLong {
            request_id: 31,
            field: "credential",
            len: 300,
            max: 256
        }
    ));
    assert!(matches!(
        get("BAD_UTF8"),
        E::InvalidUtf8 {
            request_id: 32,
            field: "message"
        }
    ));
    assert!(matches!(
        get("COUNT_TOO_LARGE"),
        E::CountTooLarge {
            request_id: 33,
            field: "services",
            count: 33,
            max: 32
        }
    ));
    assert!(matches!(
        get("BATCH_TOO_LARGE"),
        E::BatchTooLarge {
            request_id: 34,
            count: 1025
        }
    ));
    assert!(matches!(
        get("BATCH_WITH_PING"),
        E::BatchEntryNotAllowed {
            request_id: 35,
            index: 0,
            kind: 0x02
        }
    ));
    assert!(matches!(
        get("CCR_ATTRIBUTES_IN_V1"),
        E::TrailingBytes {
            request_id: 41,
            field: "body",
            extra: 21
        }
    ));
    assert!(matches!(
        get("ATTRIBUTES_TOO_MANY"),
        E::CountTooLarge {
            request_id: 42,
            field: "attributes",
            count: 9,
            max: 8
        }
    ));
    assert!(matches!(
        get("ATTRIBUTE_KEY_TOO_LONG"),
        E::StringTooLong {
            request_id: 43,
            field: "attribute key",
            len: 33,
            max: 32
        }
    ));
    assert!(matches!(
        get("ATTRIBUTE_VALUE_TOO_LONG"),
        E::StringTooLong {
            request_id: 44,
            field: "attribute value",
            len: 65,
            max: 64
        }
    ));
    assert!(matches!(
        get("ATTRIBUTE_KEY_TWICE"),
        E::InvalidValue {
            request_id: 45,
            field: "attributes",
            ..
        }
    ));
    assert!(matches!(
        get("LIMIT_PERIOD_KIND"),
        E::InvalidEnum {
            request_id: 46,
            field: "period kind",
            value: 14
        }
    ));
    assert!(matches!(
        get("LIMIT_PERIOD_OFFSET"),
        E::InvalidValue {
            request_id: 47,
            field: "period",
            ..
        }
    ));
    assert!(matches!(
        get("LIMIT_PERIOD_IN_V2"),
        E::TrailingBytes {
            request_id: 48,
            field: "body",
            extra: 13
        }
    ));
    assert!(matches!(
        get("ALERT_THRESHOLD"),
        E::InvalidValue {
            request_id: 0,
            field: "threshold_pct",
            ..
        }
    ));
    assert!(matches!(
        get("ALERT_PERIOD_KIND"),
        E::InvalidEnum {
            request_id: 0,
            field: "period_kind",
            value: 14
        }
    ));
    assert!(matches!(
        get("ALERT_SUBSCRIBED_OLDEST"),
        E::InvalidValue {
            request_id: 52,
            field: "oldest_seq",
            ..
        }
    ));
    assert!(matches!(
        get("LIMIT_ALERTS_ORDER"),
        E::InvalidValue {
            request_id: 50,
            field: "alerts",
            ..
        }
    ));
    assert!(matches!(
        get("DENIAL_REASON"),
        E::InvalidEnum {
            request_id: 49,
            field: "denial reason",
            value: 3
        }
    ));
    assert!(matches!(
        get("BAD_HELLO_OK_MAX_FRAME"),
        E::InvalidValue {
            request_id: 36,
            field: "max_frame",
            ..
        }
    ));
}

#[test]
fn decoded_content_of_some_vectors() {
    let hello = vector("HELLO");
    assert_eq!(hello.request_id, 1);
    assert_eq!(
        hello.body,
        Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            credential: "k_live_4f9a".into(),
            client_name: "acme-gw/1.0".into(),
        })
    );

    let ok = vector("HELLO_OK");
    let Message::HelloOk(ok) = ok.body else {
        panic!()
    };
    assert_eq!(
        (
            ok.version,
            ok.org_id,
            ok.is_admin,
            ok.max_frame,
            ok.keepalive_s
        ),
        (1, 1000, false, 1 << 20, 30)
    );

    let ccr = vector("CCR_INITIAL");
    assert_eq!(ccr.request_id, 3);
    let Message::Ccr(ccr) = ccr.body else {
        panic!()
    };
    assert_eq!(ccr.request_type, RequestType::Initial);
    assert_eq!(ccr.account, 1001);
    assert_eq!(ccr.services.len(), 2);
    assert_eq!(
        ccr.services[0].requested,
        vec![ua("tokens_in", 1200, 0), ua("tokens_out", 4096, 0)]
    );
    assert_eq!(ccr.services[1].service_id, 20);
    assert_eq!(ccr.services[1].requested[0].unit, Unit::GPU_SECONDS);

    // Version 1 frames carry no attributes; version 2 ones as sent.
    assert!(ccr.attributes.is_empty());
    let Message::Ccr(attr) = vector("CCR_ATTRIBUTES").body else {
        panic!()
    };
    assert_eq!(
        attr.attributes,
        vec![
            ("model".to_string(), "gpt-4o-mini".to_string()),
            ("region".to_string(), "eu".to_string())
        ]
    );
    assert_eq!(attr.services[0].requested[1], ua("tokens_out", 256, 0));
    // The same CCR cannot be written on a version-1 connection.
    let err = Frame::new(40, Message::Ccr(attr)).to_bytes().unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::InvalidValue {
                request_id: 40,
                field: "attributes",
                ..
            }
        ),
        "{err}"
    );
    let Message::Hello(h2) = vector("HELLO_V2").body else {
        panic!()
    };
    assert_eq!((h2.min_version, h2.max_version), (1, 2));
    let Message::HelloOk(ok2) = vector("HELLO_OK_V2").body else {
        panic!()
    };
    assert_eq!(ok2.version, 2);

    let Message::Cca(cca) = vector("CCA_INITIAL").body else {
        panic!()
    };
    assert_eq!(cca.result_code, ResultCode::SUCCESS);
    assert_eq!(cca.services[0].validity_time_s, 600);
    assert_eq!(
        cca.services[1].result_code,
        ResultCode::CREDIT_LIMIT_REACHED
    );
    assert_eq!(
        cca.services[1].final_unit_action,
        Some(FinalUnitAction::Redirect)
    );
    assert_eq!(cca.services[1].redirect, "https://pay.example/topup");

    let Message::Ccr(term) = vector("CCR_TERMINATE").body else {
        panic!()
    };
    assert_eq!(term.termination_cause, Some(TerminationCause::Logout));
    assert_eq!(term.timestamp_ms, 1_700_000_123_456);

    let Message::Cca(price) = vector("CCA_PRICE").body else {
        panic!()
    };
    assert_eq!(price.price, vec![ua("USD", 123, 4)]);
    assert_eq!(price.price[0].amount.to_string(), "0.0123");

    let Message::Cca(bal) = vector("CCA_BALANCE").body else {
        panic!()
    };
    assert_eq!(bal.balance[1].amount, dec(-15, 1));

    let Message::TopUp(topup) = vector("TOPUP").body else {
        panic!()
    };
    assert_eq!(topup.op_id, 0x0123456789abcdef0011223344556677);
    assert_eq!(topup.amount.to_string(), "25.00");
    assert_eq!(topup.bucket, None);
    assert_eq!(topup.kind, CreditKind::TopUp);

    let Message::BucketGrant(grant) = vector("BUCKET_GRANT").body else {
        panic!()
    };
    assert_eq!(grant.valid_until_ms, u64::MAX);
    assert_eq!(grant.services, vec![10, 20]);

    let Message::LimitSet(remove) = vector("LIMIT_SET_REMOVE").body else {
        panic!()
    };
    assert_eq!(remove.cap, None);

    let batch = vector("BATCH");
    let Message::Batch(batch) = batch.body else {
        panic!()
    };
    assert_eq!(batch.entries.len(), 2);
    assert_eq!(
        batch.entries[0],
        Message::BalanceQuery(BalanceQuery { account: 1001 })
    );
    assert!(matches!(
        &batch.entries[1],
        Message::AccountStatus(AccountStatusChange {
            account: 1002,
            status: AccountStatus::Suspended,
            ..
        })
    ));

    let Message::BatchResult(result) = vector("BATCH_RESULT").body else {
        panic!()
    };
    assert_eq!(result.entries.len(), 2);
    assert_eq!(result.entries[0].kind(), Kind::Balance);

    let error = vector("ERROR");
    assert_eq!(error.flags(), 1);
    assert_eq!(
        error.body,
        Message::Error(ErrorReply {
            code: ErrorCode::UNKNOWN_KIND,
            message: "unknown kind 0x42".into(),
        })
    );
}

#[test]
fn decoded_content_of_the_version_3_vectors() {
    let monthly = LimitPeriod::Months {
        months: 1,
        anchor_ms: 1_767_222_000_000,
        offset_min: 60,
    };
    let set = vector("LIMIT_SET_MONTHLY");
    assert_eq!(set.request_id, 18);
    assert_eq!(
        set.body,
        Message::LimitSet(LimitSet {
            op_id: 8,
            account: 7,
            unit: Unit::USD,
            cap: Some(dec(50000, 2)),
            period: monthly,
            soft: false,
            alerts: vec![80, 100],
        })
    );
    // Its thresholds alone cannot be written on an older connection either.
    let Message::LimitSet(ref monthly_set) = set.body else {
        panic!()
    };
    let lifetime = Frame::new(
        18,
        Message::LimitSet(LimitSet {
            period: LimitPeriod::Lifetime,
            ..monthly_set.clone()
        }),
    );
    let err = lifetime
        .encode_version(&mut bytes::BytesMut::new(), limits::MAX_FRAME_CAP, 2)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::InvalidValue {
                field: "alerts",
                reason: "need protocol version 3",
                ..
            }
        ),
        "{err}"
    );
    // The monthly cap cannot be written on an older connection.
    for older in [1, 2] {
        let err = set
            .encode_version(&mut bytes::BytesMut::new(), limits::MAX_FRAME_CAP, older)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::InvalidValue {
                    request_id: 18,
                    field: "period",
                    reason: "need protocol version 3"
                }
            ),
            "{err}"
        );
    }

    let cca = vector("CCA_SPEND_CONTROL");
    let Message::Cca(ref answer) = cca.body else {
        panic!()
    };
    assert_eq!(answer.result_code, ResultCode::SUCCESS);
    assert_eq!(answer.services.len(), 1);
    let service = &answer.services[0];
    assert_eq!(service.result_code, ResultCode::CREDIT_LIMIT_REACHED);
    assert_eq!(
        service.denial,
        Some(Denial::SpendControl {
            account: 7,
            period_kind: 1
        })
    );
    // On a version-2 connection the same answer says only 4012.
    let mut v2 = bytes::BytesMut::new();
    cca.encode_version(&mut v2, limits::MAX_FRAME_CAP, 2)
        .unwrap();
    let Message::Cca(old) = decode_v(&v2, 2).unwrap().unwrap().0.body else {
        panic!()
    };
    assert_eq!(
        old.services[0].result_code,
        ResultCode::CREDIT_LIMIT_REACHED
    );
    assert_eq!(old.services[0].denial, None);
    assert_eq!(v2.len() + 10, valid_bytes("CCA_SPEND_CONTROL").len());

    let Message::Balance(balance) = vector("BALANCE_LIMITS").body else {
        panic!()
    };
    assert_eq!((balance.account, balance.parent), (7, Some(1000)));
    assert!(balance.buckets.is_empty());
    assert_eq!(
        balance.limits,
        vec![LimitInfo {
            unit: Unit::USD,
            cap: dec(50000, 2),
            used: dec(48025, 2),
            held: dec(1975, 2),
            period: monthly,
            soft: false,
            period_start_ms: 1_772_319_600_000,
            period_end_ms: 1_774_998_000_000,
            alerts: vec![80, 100],
        }]
    );
    let limit = &balance.limits[0];
    assert_eq!(limit.cap - limit.used - limit.held, dec(0, 2));
}

fn valid_bytes(name: &str) -> Vec<u8> {
    valid()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no vector {name}"))
        .1
}

#[test]
fn decoded_content_of_the_alert_vectors() {
    let subscribe = vector("ALERT_SUBSCRIBE");
    assert_eq!(subscribe.request_id, 51);
    assert_eq!(
        subscribe.body,
        Message::AlertSubscribe(AlertSubscribe { after: 4000 })
    );
    let subscribed = vector("ALERT_SUBSCRIBED");
    assert_eq!(subscribed.request_id, 51);
    let Message::AlertSubscribed(answer) = subscribed.body else {
        panic!()
    };
    assert_eq!((answer.oldest_seq, answer.last_seq), (4201, 8296));
    // Kept: the newest 4096; missed: 4001 ..= 4200.
    assert_eq!(
        answer.last_seq - answer.oldest_seq + 1,
        limits::ALERTS_KEPT as u64
    );
    assert_eq!(answer.missed(4000), 200);

    let pushed = vector("ALERT");
    assert_eq!(pushed.request_id, 0, "pushed, answering nothing");
    assert_eq!(
        pushed.body,
        Message::Alert(Alert {
            seq: 8297,
            at_ms: 1_773_306_900_000,
            account: 7,
            unit: Unit::USD,
            period_kind: 1,
            period_start_ms: 1_772_319_600_000,
            threshold_pct: 80,
            used: dec(40025, 2),
            cap: dec(50000, 2),
            soft: false,
        })
    );
    // The alert is of the control LIMIT_SET_MONTHLY sets and BALANCE_LIMITS
    // shows: same account, unit, period kind and current period, and one of
    // its thresholds, reached.
    let Message::LimitSet(set) = vector("LIMIT_SET_MONTHLY").body else {
        panic!()
    };
    let Message::Balance(balance) = vector("BALANCE_LIMITS").body else {
        panic!()
    };
    let Message::Alert(alert) = pushed.body else {
        panic!()
    };
    assert_eq!(
        (alert.account, alert.unit, alert.period_kind),
        (set.account, set.unit, set.period.kind())
    );
    assert_eq!(alert.period_start_ms, balance.limits[0].period_start_ms);
    assert!(set.alerts.contains(&alert.threshold_pct));
    assert!(alert.used * dec(100, 0) >= alert.cap * Decimal::from(alert.threshold_pct));
    // Every alert kind is version 3's.
    for name in ["ALERT_SUBSCRIBE", "ALERT_SUBSCRIBED", "ALERT"] {
        assert_eq!(vector(name).kind().since_version(), 3, "{name}");
    }
}
