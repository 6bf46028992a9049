//! Round trips of every message kind, the encoder's refusals, the codecs'
//! framing behaviour, and one test producing every error variant.

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use reckon_protocol::limits::*;
use reckon_protocol::*;
use tokio_util::codec::{Decoder, Encoder};

fn roundtrip(frame: &Frame) {
    let bytes = frame.to_bytes().unwrap();
    let (decoded, used) = decode_frame_with_limit(&bytes, MAX_FRAME_CAP)
        .unwrap()
        .unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(&decoded, frame);
    assert_eq!(decoded.to_bytes().unwrap(), bytes);
}

#[test]
fn every_kind_round_trips() {
    let samples = samples();
    for kind in Kind::ALL {
        assert!(
            samples.iter().any(|m| m.kind() == *kind),
            "no sample of {}",
            kind.name()
        );
    }
    for (i, m) in samples.into_iter().enumerate() {
        roundtrip(&Frame::new(i as u64 + 1, m));
    }
}

#[test]
fn message_bodies_round_trip_without_a_frame() {
    for m in samples() {
        let mut body = BytesMut::new();
        m.encode(&mut body).unwrap();
        assert_eq!(Message::decode(m.kind(), &body, 9).unwrap(), m);
    }
}

#[test]
fn kinds_flags_and_names_are_consistent() {
    for kind in Kind::ALL {
        assert_eq!(Kind::from_code(kind.code()), Some(*kind));
        assert_eq!(kind.flags(), u8::from(*kind == Kind::Error));
        assert_eq!(kind.is_response(), kind.code() & 0x80 != 0);
        assert!(!(kind.allowed_in_batch() && kind.allowed_in_batch_result()));
        if kind.allowed_in_batch() {
            assert!(!kind.is_response());
        }
        if kind.allowed_in_batch_result() {
            assert!(kind.is_response());
        }
    }
    assert_eq!(
        (0..=255u8).filter_map(Kind::from_code).count(),
        Kind::ALL.len()
    );
}

#[test]
fn codes_have_names_and_classes() {
    assert_eq!(ResultCode::SUCCESS.name(), Some("SUCCESS"));
    assert!(ResultCode::SUCCESS.is_success());
    assert!(ResultCode::CREDIT_LIMIT_REACHED.is_transient());
    assert!(ResultCode::USER_UNKNOWN.is_permanent());
    assert_eq!(ResultCode(4242).name(), None);
    assert_eq!(format!("{}", ResultCode(4242)), "ResultCode(4242)");
    assert_eq!(
        format!("{:?}", ResultCode::RATING_FAILED),
        "RATING_FAILED(5031)"
    );
    assert!(AdminCode::OK.is_ok());
    assert_eq!(AdminCode::CLOSE_WITH_OPEN_RESERVATIONS.0, 116);
    assert_eq!(ErrorCode::UNEXPECTED_KIND.0, 12);
    assert_eq!(ErrorCode::ALL.len(), 12);
    // Every table is free of duplicate values.
    for (i, a) in AdminCode::ALL.iter().enumerate() {
        assert!(!AdminCode::ALL[i + 1..].contains(a));
    }
    for (i, a) in ResultCode::ALL.iter().enumerate() {
        assert!(!ResultCode::ALL[i + 1..].contains(a));
    }
}

#[test]
fn units_are_validated() {
    assert_eq!(Unit::new("gpu_seconds").unwrap(), Unit::GPU_SECONDS);
    assert_eq!("USD".parse::<Unit>().unwrap().as_str(), "USD");
    assert_eq!(Unit::try_from("x_1").unwrap().to_string(), "x_1");
    assert_eq!(
        Unit::new("a".repeat(16).as_str()).unwrap().as_bytes().len(),
        16
    );
    for bad in ["", "a".repeat(17).as_str(), "US$", "tokens-in", "é", "a b"] {
        assert!(Unit::new(bad).is_err(), "{bad:?}");
    }
    assert_ne!(Unit::new("usd").unwrap(), Unit::USD);
}

#[test]
fn decimals_keep_their_scale() {
    let f = |d| {
        Frame::new(
            1,
            Message::AdminResult(AdminResult {
                code: AdminCode::OK,
                bucket: 0,
                balance: d,
            }),
        )
    };
    for d in [
        dec(250, 2),
        dec(25, 1),
        dec(0, 5),
        dec(-MANTISSA_MAX, 28),
        dec(MANTISSA_MAX, 0),
    ] {
        roundtrip(&f(d));
    }
    assert_ne!(bytes_of(&f(dec(250, 2))), bytes_of(&f(dec(25, 1))));
    // Negative zero encodes as plain zero.
    let neg_zero = -dec(0, 2);
    assert_eq!(bytes_of(&f(neg_zero)), bytes_of(&f(dec(0, 2))));
}

#[test]
fn encoder_refuses_what_a_decoder_would_refuse() {
    let long_hello = Frame::new(
        7,
        Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            credential: "k".repeat(CREDENTIAL_MAX + 1),
            client_name: String::new(),
        }),
    );
    let mut dst = BytesMut::from(&b"keep"[..]);
    let err = long_hello.encode(&mut dst).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::StringTooLong {
            request_id: 7,
            field: "credential",
            ..
        }
    ));
    assert_eq!(
        &dst[..],
        b"keep",
        "a refused frame leaves the buffer unchanged"
    );

    let too_many = Message::BucketGrant(BucketGrant {
        op_id: 1,
        account: 1,
        unit: Unit::USD,
        amount: dec(1, 0),
        valid_from_ms: 0,
        valid_until_ms: u64::MAX,
        priority: 0,
        credit_limit: dec(0, 0),
        services: vec![1; BUCKET_SERVICES_MAX + 1],
    });
    let mut body = BytesMut::new();
    assert!(matches!(
        too_many.encode(&mut body).unwrap_err(),
        ProtocolError::CountTooLarge {
            request_id: 0,
            field: "services",
            count: 33,
            max: 32
        }
    ));
    assert!(body.is_empty());

    let nested = Frame::new(
        3,
        Message::Batch(Batch {
            entries: vec![Message::Batch(Batch { entries: vec![] })],
        }),
    );
    assert!(matches!(
        nested.to_bytes().unwrap_err(),
        ProtocolError::BatchEntryNotAllowed {
            request_id: 3,
            index: 0,
            kind: 0x03
        }
    ));
    let answer_in_batch = Frame::new(
        3,
        Message::Batch(Batch {
            entries: vec![Message::Pong],
        }),
    );
    assert!(answer_in_batch.to_bytes().is_err());
    let request_in_result = Frame::new(
        3,
        Message::BatchResult(BatchResult {
            entries: vec![Message::BalanceQuery(BalanceQuery { account: 1 })],
        }),
    );
    assert!(request_in_result.to_bytes().is_err());

    let huge = Frame::new(
        4,
        Message::Batch(Batch {
            entries: vec![Message::BalanceQuery(BalanceQuery { account: 1 }); BATCH_MAX + 1],
        }),
    );
    assert!(matches!(
        huge.to_bytes().unwrap_err(),
        ProtocolError::BatchTooLarge {
            request_id: 4,
            count: 1025
        }
    ));

    let bad_max = Frame::new(
        5,
        Message::HelloOk(HelloOk {
            version: 1,
            org_id: 0,
            is_admin: false,
            max_frame: 1024,
            keepalive_s: 0,
            server_name: String::new(),
        }),
    );
    assert!(matches!(
        bad_max.to_bytes().unwrap_err(),
        ProtocolError::InvalidValue {
            request_id: 5,
            field: "max_frame",
            ..
        }
    ));
}

#[test]
fn encoder_enforces_the_frame_limit() {
    let error = Frame::new(
        9,
        Message::Error(ErrorReply {
            code: ErrorCode::INTERNAL,
            message: "x".repeat(1000),
        }),
    );
    let mut dst = BytesMut::new();
    let err = error.encode_with_limit(&mut dst, 100).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::FrameTooLarge {
            length: 1014,
            max: 100
        }
    ));
    assert!(err.is_fatal());
    assert!(dst.is_empty());
    let mut codec = ReckonCodec::with_max_frame(1014);
    codec.encode(&error, &mut dst).unwrap();
    assert_eq!(dst.len(), 1018);
    codec.set_max_frame(1013);
    assert!(codec.encode(error, &mut BytesMut::new()).is_err());
}

#[test]
fn codec_max_frame_is_clamped() {
    assert_eq!(ReckonCodec::new().max_frame(), DEFAULT_MAX_FRAME);
    assert_eq!(ReckonCodec::default().max_frame(), DEFAULT_MAX_FRAME);
    assert_eq!(
        ReckonCodec::with_max_frame(u32::MAX).max_frame(),
        MAX_FRAME_CAP
    );
    assert_eq!(
        ReckonCodec::with_max_frame(0).max_frame(),
        HEADER_LEN as u32
    );
}

fn stream_of(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(bytes_of).collect()
}

#[test]
fn codec_decodes_a_pipelined_stream_fed_byte_by_byte() {
    let frames: Vec<Frame> = samples()
        .into_iter()
        .enumerate()
        .map(|(i, m)| Frame::new(i as u64, m))
        .collect();
    let wire = stream_of(&frames);
    let mut codec = ReckonCodec::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for b in &wire {
        buf.put_u8(*b);
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
    }
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    assert_eq!(out, frames);

    // All at once, and with the encoder.
    let mut buf = BytesMut::new();
    for f in &frames {
        codec.encode(f.clone(), &mut buf).unwrap();
    }
    assert_eq!(&buf[..], &wire[..]);
    let mut out = Vec::new();
    while let Some(f) = codec.decode(&mut buf).unwrap() {
        out.push(f);
    }
    assert_eq!(out, frames);
}

#[test]
fn decode_frame_reports_incomplete_input_and_frame_size() {
    let wire = bytes_of(&Frame::new(1, Message::Ping));
    assert!(decode_frame(&[]).unwrap().is_none());
    assert_eq!(frame_size(&wire[..3]), None);
    assert_eq!(frame_size(&wire[..4]), Some(14));
    for n in 0..wire.len() {
        assert!(decode_frame(&wire[..n]).unwrap().is_none());
    }
    let mut two = wire.clone();
    two.extend_from_slice(&wire);
    assert_eq!(decode_frame(&two).unwrap().unwrap().1, 14);
}

/// A stream with a malformed-but-delimited frame between two good ones.
fn stream_with_bad_frame() -> (Vec<u8>, Frame, Frame) {
    let a = Frame::new(1, Message::BalanceQuery(BalanceQuery { account: 5 }));
    let b = Frame::new(3, Message::Ping);
    let mut wire = bytes_of(&a);
    let mut bad = bytes_of(&Frame::new(2, Message::Ping));
    bad[5] = 1; // flags
    wire.extend_from_slice(&bad);
    wire.extend_from_slice(&bytes_of(&b));
    (wire, a, b)
}

#[test]
fn reckon_codec_skips_a_malformed_frame_and_goes_on() {
    let (wire, a, b) = stream_with_bad_frame();
    let mut codec = ReckonCodec::new();
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(a));
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::BadFlags {
            request_id: 2,
            kind: 0x02,
            flags: 1
        }
    ));
    assert!(!err.is_fatal());
    assert_eq!(err.request_id(), Some(2));
    assert_eq!(err.code(), ErrorCode::MALFORMED_FRAME);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(b));
}

#[test]
fn tolerant_codec_yields_non_fatal_errors_as_items() {
    let (wire, a, b) = stream_with_bad_frame();
    let mut codec = TolerantCodec::with_max_frame(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().unwrap(), a);
    let err = codec.decode(&mut buf).unwrap().unwrap().unwrap_err();
    assert_eq!(err.request_id(), Some(2));
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().unwrap(), b);
    assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    let mut out = BytesMut::new();
    codec.encode(b.clone(), &mut out).unwrap();
    codec.encode(&b, &mut out).unwrap();
    assert_eq!(out.len(), 28);

    // Fatal errors are still errors.
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    assert!(codec.decode(&mut buf).unwrap_err().is_fatal());
    // A stream ending inside a frame.
    let mut buf = BytesMut::from(&wire[..28]);
    codec.decode(&mut buf).unwrap().unwrap().unwrap();
    assert!(matches!(
        codec.decode_eof(&mut buf).unwrap_err(),
        ProtocolError::UnexpectedEof { buffered: 6 }
    ));
}

#[test]
fn oversized_frames_are_refused_before_buffering() {
    let mut codec = ReckonCodec::with_max_frame(4096);
    let mut buf = BytesMut::with_capacity(8);
    buf.put_u32_le(4097);
    let cap = buf.capacity();
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::FrameTooLarge {
            length: 4097,
            max: 4096
        }
    ));
    assert_eq!(err.code(), ErrorCode::FRAME_TOO_LARGE);
    assert_eq!(err.request_id(), None);
    assert_eq!(buf.capacity(), cap, "nothing reserved for a refused frame");

    // At the limit: waits, reserving exactly one frame.
    let mut buf = BytesMut::new();
    buf.put_u32_le(4096);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(
        buf.capacity() >= 4100 && buf.capacity() <= 4100 + 64,
        "{}",
        buf.capacity()
    );
}

/// The name of an error variant; exhaustive, so a new variant must be
/// added here (and produced below).
fn variant(e: &ProtocolError) -> &'static str {
    use ProtocolError::*;
    match e {
        Io(_) => "Io",
        UnexpectedEof { .. } => "UnexpectedEof",
        FrameTooLarge { .. } => "FrameTooLarge",
        FrameTooShort { .. } => "FrameTooShort",
        UnknownKind { .. } => "UnknownKind",
        BadFlags { .. } => "BadFlags",
        Truncated { .. } => "Truncated",
        TrailingBytes { .. } => "TrailingBytes",
        StringTooLong { .. } => "StringTooLong",
        InvalidUtf8 { .. } => "InvalidUtf8",
        InvalidUnit { .. } => "InvalidUnit",
        DecimalScale { .. } => "DecimalScale",
        DecimalOutOfRange { .. } => "DecimalOutOfRange",
        CountTooLarge { .. } => "CountTooLarge",
        BatchTooLarge { .. } => "BatchTooLarge",
        BatchEntryNotAllowed { .. } => "BatchEntryNotAllowed",
        InvalidEnum { .. } => "InvalidEnum",
        InvalidBool { .. } => "InvalidBool",
        NonCanonical { .. } => "NonCanonical",
        InvalidValue { .. } => "InvalidValue",
    }
}

const ALL_VARIANTS: [&str; 20] = [
    "Io",
    "UnexpectedEof",
    "FrameTooLarge",
    "FrameTooShort",
    "UnknownKind",
    "BadFlags",
    "Truncated",
    "TrailingBytes",
    "StringTooLong",
    "InvalidUtf8",
    "InvalidUnit",
    "DecimalScale",
    "DecimalOutOfRange",
    "CountTooLarge",
    "BatchTooLarge",
    "BatchEntryNotAllowed",
    "InvalidEnum",
    "InvalidBool",
    "NonCanonical",
    "InvalidValue",
];

/// A frame of `kind` with this raw body.
fn raw(kind: u8, flags: u8, rid: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(10 + body.len() as u32).to_le_bytes());
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&rid.to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// A BATCH frame with these raw entries (`kind`, body).
fn raw_batch(rid: u64, entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = (entries.len() as u16).to_le_bytes().to_vec();
    for (kind, b) in entries {
        body.extend_from_slice(&(1 + b.len() as u32).to_le_bytes());
        body.push(*kind);
        body.extend_from_slice(b);
    }
    raw(0x03, 0, rid, &body)
}

#[test]
fn every_error_variant_is_produced() {
    let mut errors: Vec<ProtocolError> = Vec::new();
    let mut dec = |bytes: &[u8]| errors.push(decode_frame(bytes).unwrap_err());

    let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
    let io_err: ProtocolError = io.into();
    assert!(io_err.is_fatal() && io_err.code() == ErrorCode::INTERNAL);

    // Exactly 1 MiB is allowed (incomplete here); one more byte is too large.
    assert!(decode_frame(&[0, 0, 0x10, 0]).unwrap().is_none());
    dec(&[1, 0, 0x10, 0]); // FrameTooLarge
    dec(&[9, 0, 0, 0]); // FrameTooShort
    dec(&raw(0x7f, 0, 1, &[])); // UnknownKind
    dec(&raw(0x02, 1, 1, &[])); // BadFlags
    dec(&raw(0xff, 0, 1, &[1, 0, 0, 0])); // BadFlags: ERROR without its flag
    dec(&raw(0x26, 0, 1, &[1, 2, 3])); // Truncated
    dec(&raw(0x82, 0, 1, &[0])); // TrailingBytes
    dec(&raw(0xff, 1, 1, &[1, 0, 0x01, 0x04])); // StringTooLong (1025)
    dec(&raw(0xff, 1, 1, &[1, 0, 1, 0, 0xff])); // InvalidUtf8
                                                // InvalidUnit: TOPUP with a 17-byte unit.
    let mut topup = vec![0u8; 24];
    topup.extend_from_slice(&17u16.to_le_bytes());
    topup.extend_from_slice(&[b'a'; 17]);
    dec(&raw(0x22, 0, 1, &topup));
    dec(&raw(
        0xa0,
        0,
        1,
        &[&[0u8; 12][..], &[0u8; 16], &[200]].concat(),
    )); // DecimalScale
    dec(&raw(
        0xa0,
        0,
        1,
        &[&[0u8; 12][..], &(-(1i128 << 96)).to_le_bytes(), &[0]].concat(),
    )); // DecimalOutOfRange
    dec(&raw(0xa2, 0, 1, &[0, 0x01, 0x10])); // CountTooLarge: 4097 reservations
    dec(&raw(0x03, 0, 1, &[0x01, 0x04])); // BatchTooLarge
    dec(&raw_batch(1, &[(0x01, &[])])); // BatchEntryNotAllowed: HELLO in a batch
    dec(&raw(0x10, 0, 1, &[0, 0, 9])); // InvalidEnum: request_type 9
    dec(&raw(0x81, 0, 1, &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7])); // InvalidBool: is_admin 7
    let mut limit = vec![0u8; 24];
    limit.extend_from_slice(&[3, 0, b'U', b'S', b'D', 0, 1]);
    limit.extend_from_slice(&[0u8; 16]);
    dec(&raw(0x25, 0, 1, &limit)); // NonCanonical: absent cap with a non-zero byte
    dec(&raw(
        0x81,
        0,
        1,
        &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )); // InvalidValue: max_frame 0

    // Inside batches: unknown kind, trailing bytes, truncated entry, malformed body.
    let query = 5u64.to_le_bytes();
    dec(&raw_batch(1, &[(0x26, &query), (0x55, &[])]));
    dec(&raw_batch(1, &[(0x26, &[&query[..], &[0]].concat())]));
    dec(&raw(0x03, 0, 1, &[1, 0, 100, 0, 0, 0, 0x26]));
    dec(&raw(0x03, 0, 1, &[1, 0, 0, 0, 0, 0]));
    dec(&raw_batch(1, &[(0x21, &[&[0u8; 24][..], &[9]].concat())]));

    let mut codec = ReckonCodec::new();
    let mut partial = BytesMut::from(&raw(0x02, 0, 1, &[])[..5]);
    assert!(codec.decode(&mut partial).unwrap().is_none());
    errors.push(codec.decode_eof(&mut partial).unwrap_err());
    errors.push(io_err);

    for e in &errors {
        // Every error displays, and request ids are reported when known.
        assert!(!e.to_string().is_empty());
        assert_eq!(e.is_fatal(), e.request_id().is_none());
        if let Some(id) = e.request_id() {
            assert_eq!(id, 1, "{e}");
        }
    }
    // Non-fatal errors can be relabelled; fatal ones have no id to set.
    let relabelled = ProtocolError::Truncated {
        request_id: 1,
        field: "x",
    }
    .with_request_id(99);
    assert_eq!(relabelled.request_id(), Some(99));
    assert_eq!(
        ProtocolError::FrameTooShort { length: 3 }
            .with_request_id(99)
            .request_id(),
        None
    );

    let produced: std::collections::BTreeSet<&str> = errors.iter().map(variant).collect();
    let all: std::collections::BTreeSet<&str> = ALL_VARIANTS.into_iter().collect();
    assert_eq!(produced, all);
}

/// A CCR with these attributes (inside a BATCH too).
fn ccr_with(attributes: Vec<(String, String)>) -> Message {
    let Some(Message::Ccr(mut c)) = samples().into_iter().find(|m| m.kind() == Kind::Ccr) else {
        panic!("no CCR sample")
    };
    c.attributes = attributes;
    Message::Ccr(c)
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn version_2_carries_attributes_and_version_1_refuses_them() {
    let full: Vec<(String, String)> = (0..ATTRIBUTES_MAX)
        .map(|i| (format!("{i:0>32}"), "v".repeat(ATTRIBUTE_VALUE_MAX)))
        .collect();
    for list in [attrs(&[("model", "gpt-4o")]), full, Vec::new()] {
        let ccr = ccr_with(list.clone());
        let batch = Message::Batch(Batch {
            entries: vec![ccr.clone(), ccr.clone()],
        });
        for m in [ccr, batch] {
            let frame = Frame::new(7, m);
            let mut bytes = BytesMut::new();
            frame.encode_version(&mut bytes, MAX_FRAME_CAP, 2).unwrap();
            let (back, used) = decode_frame_version(&bytes, MAX_FRAME_CAP, 2)
                .unwrap()
                .unwrap();
            assert_eq!((back, used), (frame.clone(), bytes.len()));
            // Through the codec switched to version 2 as well.
            let mut codec = ReckonCodec::new();
            codec.set_version(2);
            let mut out = BytesMut::new();
            codec.encode(&frame, &mut out).unwrap();
            assert_eq!(out, bytes);
            assert_eq!(codec.decode(&mut out).unwrap(), Some(frame.clone()));
            // Version 1: without attributes the v1 bytes are one byte
            // shorter per CCR; with them the encoder refuses.
            match frame.to_bytes() {
                Ok(v1) => {
                    assert!(list.is_empty());
                    let ccrs = if frame.kind() == Kind::Batch { 2 } else { 1 };
                    assert_eq!(v1.len() + ccrs, bytes.len());
                }
                Err(e) => {
                    assert!(!list.is_empty());
                    assert!(matches!(
                        e,
                        ProtocolError::InvalidValue {
                            request_id: 7,
                            field: "attributes",
                            ..
                        }
                    ));
                }
            }
        }
    }
}

#[test]
fn the_encoder_refuses_attributes_a_decoder_would_refuse() {
    let too_many: Vec<(String, String)> = (0..=ATTRIBUTES_MAX)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    let cases = [
        too_many,
        attrs(&[(&"k".repeat(ATTRIBUTE_KEY_MAX + 1), "v")]),
        attrs(&[("model", &"v".repeat(ATTRIBUTE_VALUE_MAX + 1))]),
        attrs(&[("", "v")]),
        attrs(&[("model", "a"), ("region", "eu"), ("model", "a")]),
    ];
    for list in cases {
        let mut out = BytesMut::from(&b"kept"[..]);
        let err = Frame::new(3, ccr_with(list.clone()))
            .encode_version(&mut out, MAX_FRAME_CAP, 2)
            .unwrap_err();
        assert_eq!(&out[..], b"kept", "{list:?}: output changed");
        assert!(!err.is_fatal(), "{err}");
        assert_eq!(err.request_id(), Some(3));
    }
}

/// `m` as a version-1 or -2 connection carries it: no CCA denials, no
/// `BALANCE` limits (a `LIMIT_SET` cannot lose its period: it is refused).
fn without_v3_fields(m: &Message) -> Message {
    match m {
        Message::Cca(c) => {
            let mut c = c.clone();
            for s in &mut c.services {
                s.denial = None;
            }
            Message::Cca(c)
        }
        Message::Balance(b) => Message::Balance(Balance {
            limits: Vec::new(),
            ..b.clone()
        }),
        Message::BatchResult(b) => Message::BatchResult(BatchResult {
            entries: b.entries.iter().map(without_v3_fields).collect(),
        }),
        other => other.clone(),
    }
}

/// Whether `m` is (or a batch holds) a `LIMIT_SET` only version 3 can carry.
fn has_v3_limit_set(m: &Message) -> bool {
    match m {
        Message::LimitSet(l) => l.period != LimitPeriod::Lifetime || l.soft || !l.alerts.is_empty(),
        Message::Batch(b) => b.entries.iter().any(has_v3_limit_set),
        _ => false,
    }
}

fn encode_v(frame: &Frame, version: u16) -> Result<BytesMut, ProtocolError> {
    let mut out = BytesMut::from(&b"kept"[..]);
    match frame.encode_version(&mut out, MAX_FRAME_CAP, version) {
        Ok(()) => Ok(out.split_off(4)),
        Err(e) => {
            assert_eq!(
                &out[..],
                b"kept",
                "a refused frame leaves the buffer unchanged"
            );
            Err(e)
        }
    }
}

fn decode_v(bytes: &[u8], version: u16) -> Result<Frame, ProtocolError> {
    let (frame, used) = decode_frame_version(bytes, MAX_FRAME_CAP, version)?.unwrap();
    assert_eq!(used, bytes.len());
    Ok(frame)
}

#[test]
fn version_3_carries_spend_controls_and_denials() {
    for (i, m) in samples_v3().into_iter().enumerate() {
        let frame = Frame::new(i as u64 + 1, m);
        let v3 = encode_v(&frame, 3).unwrap();
        assert_eq!(decode_v(&v3, 3).unwrap(), frame);
        // Through a codec switched to version 3 as well.
        let mut codec = ReckonCodec::new();
        codec.set_version(3);
        let mut out = BytesMut::new();
        codec.encode(&frame, &mut out).unwrap();
        assert_eq!(out, v3);
        assert_eq!(codec.decode(&mut out).unwrap(), Some(frame.clone()));
        // Version 3 bytes are not a version-2 frame of the same kind.
        assert!(decode_v(&v3, 2).map_or(true, |f| f != frame));

        for older in [1, 2] {
            match encode_v(&frame, older) {
                Ok(bytes) => {
                    assert!(!has_v3_limit_set(&frame.body), "{:?}", frame.body);
                    let back = decode_v(&bytes, older).unwrap();
                    assert_eq!(back.body, without_v3_fields(&frame.body));
                    assert!(bytes.len() < v3.len());
                }
                Err(e) => {
                    assert!(has_v3_limit_set(&frame.body), "{e}");
                    assert!(
                        matches!(
                            e,
                            ProtocolError::InvalidValue {
                                field: "period" | "soft" | "alerts",
                                reason: "need protocol version 3",
                                ..
                            }
                        ),
                        "{e}"
                    );
                    assert_eq!(e.request_id(), Some(i as u64 + 1));
                }
            }
        }
    }
}

#[test]
fn older_versions_drop_denials_and_refuse_periodic_limits() {
    let samples = samples_v3();
    // A CCA with a spend-control denial, written on a version-2 connection:
    // the client sees 4012 and no denial.
    let cca = samples.iter().find(|m| m.kind() == Kind::Cca).unwrap();
    let Message::Cca(back) = decode_v(&encode_v(&Frame::new(1, cca.clone()), 2).unwrap(), 2)
        .unwrap()
        .body
    else {
        panic!()
    };
    assert_eq!(
        back.services[0].result_code,
        ResultCode::CREDIT_LIMIT_REACHED
    );
    assert!(back.services.iter().all(|s| s.denial.is_none()));

    // A monthly LIMIT_SET cannot be written in version 2 (it would become a
    // hard lifetime cap), nor a soft lifetime one, nor one with alerts.
    let monthly = LimitSet {
        op_id: 1,
        account: 7,
        unit: Unit::USD,
        cap: Some(dec(100, 0)),
        period: monthly(),
        soft: false,
        alerts: Vec::new(),
    };
    for (m, field) in [
        (monthly.clone(), "period"),
        (
            LimitSet {
                period: LimitPeriod::Lifetime,
                soft: true,
                ..monthly.clone()
            },
            "soft",
        ),
        (
            LimitSet {
                period: LimitPeriod::Lifetime,
                alerts: vec![80, 100],
                ..monthly.clone()
            },
            "alerts",
        ),
    ] {
        let err = encode_v(&Frame::new(2, Message::LimitSet(m)), 2).unwrap_err();
        assert!(
            matches!(err, ProtocolError::InvalidValue { request_id: 2, field: f, .. } if f == field),
            "{err}"
        );
    }
    // A lifetime, hard LIMIT_SET without alerts is version 1's: three bytes shorter.
    let plain = Frame::new(
        3,
        Message::LimitSet(LimitSet {
            period: LimitPeriod::Lifetime,
            ..monthly
        }),
    );
    let (v2, v3) = (encode_v(&plain, 2).unwrap(), encode_v(&plain, 3).unwrap());
    assert_eq!(v2.len() + 3, v3.len());
    assert_eq!(
        &v3[v3.len() - 3..],
        &[0, 0, 0],
        "kind 0 (lifetime), soft 0, no alerts"
    );
    assert_eq!(decode_v(&v2, 2).unwrap(), plain);
    assert_eq!(decode_v(&v3, 3).unwrap(), plain);
    // Read in the wrong version, the layouts do not line up.
    assert!(matches!(
        decode_v(&v3, 2),
        Err(ProtocolError::TrailingBytes { extra: 3, .. })
    ));
    assert!(matches!(
        decode_v(&v2, 3),
        Err(ProtocolError::Truncated {
            field: "period kind",
            ..
        })
    ));
}

#[test]
fn version_1_messages_mean_the_same_in_version_3() {
    for (i, m) in samples().into_iter().enumerate() {
        let frame = Frame::new(i as u64 + 1, m);
        let v3 = encode_v(&frame, 3).unwrap();
        assert_eq!(decode_v(&v3, 3).unwrap(), frame);
        let v2 = encode_v(&frame, 2).unwrap();
        // Only LIMIT_SET, BALANCE and CCA (alone or in batches) grow.
        let grows = |m: &Message| {
            matches!(
                m.kind(),
                Kind::LimitSet | Kind::Balance | Kind::Cca | Kind::Batch | Kind::BatchResult
            )
        };
        if !grows(&frame.body) {
            assert_eq!(v2, v3, "{}", frame.kind().name());
        }
    }
}

#[test]
fn limit_period_kinds() {
    assert_eq!(LimitPeriod::Lifetime.kind(), 0);
    assert_eq!(monthly().kind(), 1);
    let year = LimitPeriod::Months {
        months: 12,
        anchor_ms: 0,
        offset_min: 0,
    };
    assert_eq!(year.kind(), 12);
    let fixed = LimitPeriod::Fixed {
        anchor_ms: 0,
        length_ms: 86_400_000,
    };
    assert_eq!(fixed.kind(), LimitPeriod::KIND_FIXED);
    assert!((0..=13).all(LimitPeriod::is_kind));
    assert!((14..=255).all(|k| !LimitPeriod::is_kind(k)));
    assert_eq!(Denial::NoCredit.reason(), 1);
    let control = Denial::SpendControl {
        account: 7,
        period_kind: 1,
    };
    assert_eq!(control.reason(), 2);
}

/// A version-3 LIMIT_SET body: op_id 1, account 7, unit USD, no cap, then `tail`.
fn limit_set_body(tail: &[u8]) -> Vec<u8> {
    let mut b = 1u128.to_le_bytes().to_vec();
    b.extend_from_slice(&7u64.to_le_bytes());
    b.extend_from_slice(&[3, 0, b'U', b'S', b'D', 0]);
    b.extend_from_slice(&[0u8; 17]);
    b.extend_from_slice(tail);
    b
}

/// A version-3 CCA body with one service answer ending in `denial`.
fn cca_body(denial: &[u8]) -> Vec<u8> {
    let mut b = 2001u32.to_le_bytes().to_vec();
    b.extend_from_slice(&[1, 0, b's']);
    b.extend_from_slice(&0u32.to_le_bytes());
    b.push(1);
    b.extend_from_slice(&10u32.to_le_bytes());
    b.extend_from_slice(&4012u32.to_le_bytes());
    b.push(0);
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(denial);
    b.extend_from_slice(&[0, 0]);
    b
}

/// A calendar period, `soft` and no alert thresholds.
fn months_tail(months: u8, offset_min: i16, soft: u8) -> Vec<u8> {
    let mut t = vec![months];
    t.extend_from_slice(&1_767_222_000_000u64.to_le_bytes());
    t.extend_from_slice(&offset_min.to_le_bytes());
    t.extend_from_slice(&[soft, 0]);
    t
}

/// A fixed-length period, hard, no alert thresholds.
fn fixed_tail(length_ms: u64) -> Vec<u8> {
    let mut t = vec![13];
    t.extend_from_slice(&0u64.to_le_bytes());
    t.extend_from_slice(&length_ms.to_le_bytes());
    t.extend_from_slice(&[0, 0]);
    t
}

/// A lifetime period, hard, then these alert bytes (count included).
fn alerts_tail(alerts: &[u8]) -> Vec<u8> {
    let mut t = vec![0, 0];
    t.extend_from_slice(alerts);
    t
}

fn denial_bytes(reason: u8, account: u64, period: u8) -> Vec<u8> {
    let mut d = vec![reason];
    d.extend_from_slice(&account.to_le_bytes());
    d.push(period);
    d
}

#[test]
fn version_3_decoding_refuses_out_of_range_periods_and_denials() {
    use ProtocolError as E;
    let dec3 = |kind: u8, body: Vec<u8>| decode_v(&raw(kind, 0, 9, &body), 3);
    let limit = |tail: Vec<u8>| dec3(0x25, limit_set_body(&tail));
    let cca = |d: Vec<u8>| dec3(0x90, cca_body(&d));

    // The edges are accepted.
    for tail in [
        vec![0, 0, 0],
        vec![0, 1, 0],
        alerts_tail(&[1, 1]),
        alerts_tail(&[2, 80, 100]),
        alerts_tail(&[8, 1, 2, 3, 4, 5, 6, 7, 250]),
        months_tail(1, 1080, 0),
        months_tail(12, -1080, 1),
        fixed_tail(PERIOD_LENGTH_MIN_MS),
        fixed_tail(PERIOD_LENGTH_MAX_MS),
    ] {
        limit(tail.clone()).unwrap_or_else(|e| panic!("{tail:?}: {e}"));
    }
    for d in [
        denial_bytes(0, 0, 0),
        denial_bytes(1, 0, 0),
        denial_bytes(2, 0, 0),
        denial_bytes(2, u64::MAX, 13),
    ] {
        cca(d.clone()).unwrap_or_else(|e| panic!("{d:?}: {e}"));
    }

    let is_period = |r: Result<Frame, E>| {
        matches!(
            r,
            Err(E::InvalidValue {
                request_id: 9,
                field: "period",
                ..
            })
        )
    };
    assert!(matches!(
        limit(vec![14, 0, 0]),
        Err(E::InvalidEnum {
            request_id: 9,
            field: "period kind",
            value: 14
        })
    ));
    assert!(matches!(
        limit(vec![255]),
        Err(E::InvalidEnum { value: 255, .. })
    ));
    assert!(is_period(limit(months_tail(1, 1081, 0))));
    assert!(is_period(limit(months_tail(3, -1081, 0))));
    assert!(is_period(limit(months_tail(1, i16::MIN, 0))));
    assert!(is_period(limit(fixed_tail(PERIOD_LENGTH_MIN_MS - 1))));
    assert!(is_period(limit(fixed_tail(PERIOD_LENGTH_MAX_MS + 1))));
    assert!(is_period(limit(fixed_tail(0))));
    assert!(matches!(
        limit(months_tail(1, 60, 2)),
        Err(E::InvalidBool {
            field: "soft",
            value: 2,
            ..
        })
    ));
    assert!(matches!(
        limit(vec![0]),
        Err(E::Truncated { field: "soft", .. })
    ));
    assert!(matches!(
        limit(vec![1, 0, 0]),
        Err(E::Truncated {
            field: "anchor_ms",
            ..
        })
    ));
    // Alert thresholds: at most 8, each 1 ..= 250, strictly increasing.
    assert!(matches!(
        limit(vec![0, 0]),
        Err(E::Truncated {
            field: "alerts",
            ..
        })
    ));
    assert!(matches!(
        limit(alerts_tail(&[2, 80])),
        Err(E::Truncated {
            field: "alerts",
            ..
        })
    ));
    assert!(matches!(
        limit(alerts_tail(&[9, 1, 2, 3, 4, 5, 6, 7, 8, 9])),
        Err(E::CountTooLarge {
            request_id: 9,
            field: "alerts",
            count: 9,
            max: 8
        })
    ));
    for bad in [
        &[1, 0][..],
        &[1, 251],
        &[1, 255],
        &[2, 100, 80],
        &[2, 80, 80],
        &[3, 50, 100, 99],
    ] {
        assert!(
            matches!(
                limit(alerts_tail(bad)),
                Err(E::InvalidValue {
                    request_id: 9,
                    field: "alerts",
                    ..
                })
            ),
            "{bad:?}"
        );
    }

    assert!(matches!(
        cca(denial_bytes(3, 0, 0)),
        Err(E::InvalidEnum {
            request_id: 9,
            field: "denial reason",
            value: 3
        })
    ));
    assert!(matches!(
        cca(denial_bytes(2, 7, 14)),
        Err(E::InvalidEnum {
            field: "control_period",
            value: 14,
            ..
        })
    ));
    assert!(matches!(
        cca(denial_bytes(0, 7, 0)),
        Err(E::NonCanonical {
            field: "control_account",
            ..
        })
    ));
    assert!(matches!(
        cca(denial_bytes(1, 0, 1)),
        Err(E::NonCanonical {
            field: "control_period",
            ..
        })
    ));

    // A BALANCE with more spend controls than the limit.
    let mut balance = 7u64.to_le_bytes().to_vec();
    balance.extend_from_slice(&[0; 9]);
    balance.extend_from_slice(&[0, 0, 0, 0]);
    balance.push(LIMITS_MAX as u8 + 1);
    assert!(matches!(
        dec3(0xa1, balance),
        Err(E::CountTooLarge {
            field: "limits",
            count: 65,
            max: 64,
            ..
        })
    ));
}

#[test]
fn version_3_encoding_refuses_what_a_decoder_would_refuse() {
    let set = |period| {
        Frame::new(
            4,
            Message::LimitSet(LimitSet {
                op_id: 1,
                account: 7,
                unit: Unit::USD,
                cap: None,
                period,
                soft: false,
                alerts: Vec::new(),
            }),
        )
    };
    for period in [
        LimitPeriod::Months {
            months: 0,
            anchor_ms: 0,
            offset_min: 0,
        },
        LimitPeriod::Months {
            months: 13,
            anchor_ms: 0,
            offset_min: 0,
        },
        LimitPeriod::Months {
            months: 1,
            anchor_ms: 0,
            offset_min: 1081,
        },
        LimitPeriod::Fixed {
            anchor_ms: 0,
            length_ms: PERIOD_LENGTH_MIN_MS - 1,
        },
        LimitPeriod::Fixed {
            anchor_ms: 0,
            length_ms: PERIOD_LENGTH_MAX_MS + 1,
        },
    ] {
        assert!(period.check().is_err(), "{period:?}");
        let err = encode_v(&set(period), 3).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::InvalidValue {
                    request_id: 4,
                    field: "period",
                    ..
                }
            ),
            "{period:?}: {err}"
        );
        // The same period inside a BALANCE's limits.
        let balance = Frame::new(
            5,
            Message::Balance(Balance {
                account: 7,
                parent: None,
                status: AccountStatus::Active,
                draws_on_parent: false,
                buckets: Vec::new(),
                limits: vec![limit_info(period, false)],
            }),
        );
        assert!(encode_v(&balance, 3).is_err());
        // Older versions leave the limits out, so there is nothing to refuse.
        assert!(encode_v(&balance, 2).is_ok());
    }

    // Alert thresholds a decoder would refuse, on a LIMIT_SET and in a BALANCE.
    for bad in [
        vec![0],
        vec![251],
        vec![100, 80],
        vec![80, 80],
        (1..=9).collect::<Vec<u8>>(),
    ] {
        let frame = Frame::new(
            8,
            Message::LimitSet(LimitSet {
                op_id: 1,
                account: 7,
                unit: Unit::USD,
                cap: Some(dec(1, 0)),
                period: LimitPeriod::Lifetime,
                soft: false,
                alerts: bad.clone(),
            }),
        );
        let err = encode_v(&frame, 3).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::InvalidValue {
                    request_id: 8,
                    field: "alerts",
                    ..
                } | ProtocolError::CountTooLarge {
                    request_id: 8,
                    field: "alerts",
                    count: 9,
                    max: 8
                }
            ),
            "{bad:?}: {err}"
        );
        let balance = Frame::new(
            9,
            Message::Balance(Balance {
                account: 7,
                parent: None,
                status: AccountStatus::Active,
                draws_on_parent: false,
                buckets: Vec::new(),
                limits: vec![LimitInfo {
                    alerts: bad.clone(),
                    ..limit_info(LimitPeriod::Lifetime, false)
                }],
            }),
        );
        assert_eq!(
            encode_v(&balance, 3).unwrap_err().request_id(),
            Some(9),
            "{bad:?}"
        );
    }

    let bad_denial = Frame::new(
        6,
        Message::Cca(Cca {
            result_code: ResultCode::SUCCESS,
            session_id: "s".into(),
            request_number: 0,
            services: vec![ServiceAnswer {
                service_id: 1,
                result_code: ResultCode::CREDIT_LIMIT_REACHED,
                granted: Vec::new(),
                validity_time_s: 0,
                final_unit_action: None,
                redirect: String::new(),
                denial: Some(Denial::SpendControl {
                    account: 7,
                    period_kind: 14,
                }),
            }],
            balance: Vec::new(),
            price: Vec::new(),
        }),
    );
    assert!(matches!(
        encode_v(&bad_denial, 3).unwrap_err(),
        ProtocolError::InvalidValue {
            request_id: 6,
            field: "control_period",
            ..
        }
    ));

    let too_many = Frame::new(
        7,
        Message::Balance(Balance {
            account: 7,
            parent: None,
            status: AccountStatus::Active,
            draws_on_parent: false,
            buckets: Vec::new(),
            limits: vec![limit_info(LimitPeriod::Lifetime, false); LIMITS_MAX + 1],
        }),
    );
    assert!(matches!(
        encode_v(&too_many, 3).unwrap_err(),
        ProtocolError::CountTooLarge {
            request_id: 7,
            field: "limits",
            count: 65,
            max: 64
        }
    ));
}

/// An `ALERT` body: seq, at 1, account 7, unit USD, these period kind and
/// threshold, period start 2, used 400.00, cap 500.00, then the soft byte.
fn alert_body(seq: u64, period_kind: u8, threshold_pct: u8, soft: u8) -> Vec<u8> {
    let mut b = seq.to_le_bytes().to_vec();
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&7u64.to_le_bytes());
    b.extend_from_slice(&[3, 0, b'U', b'S', b'D', period_kind]);
    b.extend_from_slice(&2u64.to_le_bytes());
    b.push(threshold_pct);
    for mantissa in [40000i128, 50000] {
        b.extend_from_slice(&mantissa.to_le_bytes());
        b.push(2);
    }
    b.push(soft);
    b
}

/// An `ALERT_SUBSCRIBED` body.
fn subscribed_body(oldest_seq: u64, last_seq: u64) -> Vec<u8> {
    [oldest_seq.to_le_bytes(), last_seq.to_le_bytes()].concat()
}

#[test]
fn alert_kinds_are_version_3_and_travel_alone() {
    for kind in [Kind::AlertSubscribe, Kind::AlertSubscribed, Kind::Alert] {
        assert_eq!(kind.since_version(), 3, "{}", kind.name());
        assert!(!kind.allowed_in_batch() && !kind.allowed_in_batch_result());
        assert!(!kind.is_mutating_admin());
    }
    assert!(!Kind::AlertSubscribe.is_response());
    assert!(Kind::AlertSubscribed.is_response() && Kind::Alert.is_response());
    assert_eq!(
        Kind::ALL.iter().filter(|k| k.since_version() == 3).count(),
        3,
        "version 3 adds exactly the alert kinds"
    );
    // Not a BATCH entry, nor a BATCH_RESULT one: both sides refuse.
    let subscribe = Message::AlertSubscribe(AlertSubscribe { after: 0 });
    let batch = Frame::new(
        1,
        Message::Batch(Batch {
            entries: vec![subscribe],
        }),
    );
    assert!(matches!(
        encode_v(&batch, 3),
        Err(ProtocolError::BatchEntryNotAllowed {
            request_id: 1,
            index: 0,
            kind: 0x2c
        })
    ));
    assert!(matches!(
        decode_v(&raw_batch(1, &[(0x2c, &0u64.to_le_bytes())]), 3),
        Err(ProtocolError::BatchEntryNotAllowed { kind: 0x2c, .. })
    ));
    let pushed = Message::Alert(common::alert());
    let result = Frame::new(
        2,
        Message::BatchResult(BatchResult {
            entries: vec![pushed.clone()],
        }),
    );
    assert!(matches!(
        encode_v(&result, 3),
        Err(ProtocolError::BatchEntryNotAllowed { kind: 0xa8, .. })
    ));
    // A pushed alert carries request id 0 and round-trips.
    let frame = Frame::new(0, pushed);
    let bytes = encode_v(&frame, 3).unwrap();
    assert_eq!(&bytes[6..14], &[0; 8]);
    assert_eq!(decode_v(&bytes, 3).unwrap(), frame);
}

#[test]
fn alert_decoding_refuses_out_of_range_values() {
    use ProtocolError as E;
    let alert = |body: Vec<u8>| decode_v(&raw(0xa8, 0, 9, &body), 3);
    let subscribed = |o, l| decode_v(&raw(0xa7, 0, 9, &subscribed_body(o, l)), 3);

    // The edges are accepted.
    for (seq, kind, pct, soft) in [
        (1, 0, 1, 0),
        (u64::MAX, 13, ALERT_PCT_MAX, 1),
        (2, 12, 100, 0),
    ] {
        let Message::Alert(a) = alert(alert_body(seq, kind, pct, soft)).unwrap().body else {
            panic!()
        };
        assert_eq!(
            (a.seq, a.period_kind, a.threshold_pct, a.soft),
            (seq, kind, pct, soft == 1)
        );
        assert_eq!((a.used, a.cap), (dec(40000, 2), dec(50000, 2)));
    }
    for (oldest, last) in [(1, 0), (1, 1), (4, 3), (4, 4096), (u64::MAX, u64::MAX)] {
        subscribed(oldest, last).unwrap_or_else(|e| panic!("{oldest}, {last}: {e}"));
    }

    for kind in [14, 255] {
        assert!(matches!(
            alert(alert_body(1, kind, 80, 0)),
            Err(E::InvalidEnum {
                request_id: 9,
                field: "period_kind",
                value,
            }) if value == kind
        ));
    }
    for pct in [0, 251, 255] {
        assert!(
            matches!(
                alert(alert_body(1, 1, pct, 0)),
                Err(E::InvalidValue {
                    request_id: 9,
                    field: "threshold_pct",
                    ..
                })
            ),
            "{pct}"
        );
    }
    assert!(matches!(
        alert(alert_body(0, 1, 80, 0)),
        Err(E::InvalidValue {
            request_id: 9,
            field: "seq",
            ..
        })
    ));
    assert!(matches!(
        alert(alert_body(1, 1, 80, 2)),
        Err(E::InvalidBool {
            field: "soft",
            value: 2,
            ..
        })
    ));
    let mut cut = alert_body(1, 1, 80, 0);
    cut.pop();
    assert!(matches!(
        alert(cut),
        Err(E::Truncated { field: "soft", .. })
    ));
    let mut long = alert_body(1, 1, 80, 0);
    long.push(0);
    assert!(matches!(
        alert(long),
        Err(E::TrailingBytes { extra: 1, .. })
    ));

    for (oldest, last) in [(0, 0), (0, 5), (2, 0), (5, 3), (u64::MAX, u64::MAX - 2)] {
        assert!(
            matches!(
                subscribed(oldest, last),
                Err(E::InvalidValue {
                    request_id: 9,
                    field: "oldest_seq",
                    ..
                })
            ),
            "{oldest}, {last}"
        );
    }
    assert!(matches!(
        decode_v(&raw(0x2c, 0, 9, &[0; 7]), 3),
        Err(E::Truncated { field: "after", .. })
    ));
}

#[test]
fn alert_encoding_refuses_what_a_decoder_would_refuse() {
    let base = common::alert();
    for (bad, field) in [
        (
            Alert {
                seq: 0,
                ..base.clone()
            },
            "seq",
        ),
        (
            Alert {
                period_kind: 14,
                ..base.clone()
            },
            "period_kind",
        ),
        (
            Alert {
                threshold_pct: 0,
                ..base.clone()
            },
            "threshold_pct",
        ),
        (
            Alert {
                threshold_pct: 251,
                ..base.clone()
            },
            "threshold_pct",
        ),
    ] {
        let err = encode_v(&Frame::new(0, Message::Alert(bad)), 3).unwrap_err();
        assert!(
            matches!(err, ProtocolError::InvalidValue { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
    for (oldest_seq, last_seq) in [(0, 0), (3, 1)] {
        let m = Message::AlertSubscribed(AlertSubscribed {
            oldest_seq,
            last_seq,
        });
        let err = encode_v(&Frame::new(3, m), 3).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::InvalidValue {
                request_id: 3,
                field: "oldest_seq",
                ..
            }
        ));
    }
}

#[test]
fn alert_subscribed_says_how_many_alerts_were_missed() {
    let answer = |oldest_seq, last_seq| AlertSubscribed {
        oldest_seq,
        last_seq,
    };
    // Nothing raised yet, or everything after `after` still kept.
    assert_eq!(answer(1, 0).missed(0), 0);
    assert_eq!(answer(1, 4096).missed(0), 0);
    assert_eq!(answer(50, 4145).missed(49), 0);
    assert_eq!(answer(50, 4145).missed(4145), 0);
    assert_eq!(answer(50, 4145).missed(u64::MAX), 0);
    // Alerts 11 ..= 49 are gone.
    assert_eq!(answer(50, 4145).missed(10), 39);
    assert_eq!(answer(50, 4145).missed(0), 49);
    // None kept at all: everything after `after` up to last_seq is gone.
    assert_eq!(answer(101, 100).missed(60), 40);
}
