//! Property tests: valid frames round-trip; arbitrary or corrupted bytes
//! never panic and give incomplete / a frame / a typed error; truncation
//! is incomplete; oversized lengths are refused without buffering.

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use proptest::prelude::*;
use reckon_protocol::limits::*;
use reckon_protocol::*;
use tokio_util::codec::Decoder;

/// Decoding must never panic; whatever decodes must re-encode to the same
/// bytes (canonical encoding), and errors must be consistent.
fn check_decode(bytes: &[u8], max: u32) {
    match decode_frame_with_limit(bytes, max) {
        Ok(None) => {}
        Ok(Some((frame, used))) => {
            assert!(used <= bytes.len());
            assert_eq!(&frame.to_bytes().unwrap()[..], &bytes[..used]);
        }
        Err(e) => {
            assert_eq!(e.is_fatal(), e.request_id().is_none());
            let _ = e.code();
            let _ = e.to_string();
        }
    }
}

/// [`check_decode`] on a connection of `version`: same rules, that version's encoding.
fn check_decode_version(bytes: &[u8], version: u16) {
    match decode_frame_version(bytes, MAX_FRAME_CAP, version) {
        Ok(None) => {}
        Ok(Some((frame, used))) => {
            let mut again = BytesMut::new();
            frame
                .encode_version(&mut again, MAX_FRAME_CAP, version)
                .unwrap();
            assert_eq!(&again[..], &bytes[..used]);
        }
        Err(e) => assert_eq!(e.is_fatal(), e.request_id().is_none()),
    }
}

fn check_decode_v2(bytes: &[u8]) {
    check_decode_version(bytes, 2);
}

/// Distinct attribute keys of 1..=32 bytes and values of at most 64.
fn arb_attributes() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map(
        arb_string(ATTRIBUTE_KEY_MAX).prop_filter("non-empty key", |k| !k.is_empty()),
        arb_string(ATTRIBUTE_VALUE_MAX),
        0..=ATTRIBUTES_MAX,
    )
    .prop_map(|m| m.into_iter().collect())
}

/// A frame whose CCRs (alone or in a BATCH) carry arbitrary attributes.
fn arb_frame_v2() -> impl Strategy<Value = Frame> {
    with_attributes(arb_frame())
}

/// A frame with every version-3 field and CCR attributes arbitrary.
fn arb_frame_v3_full() -> impl Strategy<Value = Frame> {
    with_attributes(arb_frame_v3())
}

fn with_attributes(frames: impl Strategy<Value = Frame>) -> impl Strategy<Value = Frame> {
    (frames, arb_attributes()).prop_map(|(mut f, attrs)| {
        match &mut f.body {
            Message::Ccr(c) => c.attributes = attrs,
            Message::Batch(b) => {
                for e in &mut b.entries {
                    if let Message::Ccr(c) = e {
                        c.attributes = attrs.clone();
                    }
                }
            }
            _ => {}
        }
        f
    })
}

/// `m` as version 2 carries it: CCA denials and `BALANCE` limits left out.
fn strip_v3(m: &Message) -> Message {
    let mut m = m.clone();
    match &mut m {
        Message::Cca(c) => c.services.iter_mut().for_each(|s| s.denial = None),
        Message::Balance(b) => b.limits.clear(),
        Message::BatchResult(b) => b.entries = b.entries.iter().map(strip_v3).collect(),
        _ => {}
    }
    m
}

/// Whether `m` holds a `LIMIT_SET` with a period, a soft cap or alert thresholds.
fn needs_v3(m: &Message) -> bool {
    match m {
        Message::LimitSet(l) => l.period != LimitPeriod::Lifetime || l.soft || !l.alerts.is_empty(),
        Message::Batch(b) => b.entries.iter().any(needs_v3),
        _ => false,
    }
}

fn frame_with(kind: u8, flags: u8, rid: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + body.len());
    v.extend_from_slice(&(10 + body.len() as u32).to_le_bytes());
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&rid.to_le_bytes());
    v.extend_from_slice(body);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_frames_round_trip(frame in arb_frame()) {
        let bytes = frame.to_bytes().unwrap();
        let (decoded, used) = decode_frame_with_limit(&bytes, MAX_FRAME_CAP).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&decoded, &frame);
        prop_assert_eq!(decoded.to_bytes().unwrap(), bytes);
    }

    #[test]
    fn version_2_frames_round_trip_and_survive_corruption(
        frame in arb_frame_v2(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = BytesMut::new();
        frame.encode_version(&mut bytes, MAX_FRAME_CAP, 2).unwrap();
        let (decoded, used) = decode_frame_version(&bytes, MAX_FRAME_CAP, 2).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&decoded, &frame);
        let mut bytes = bytes.to_vec();
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            if i >= 4 {
                bytes[i] = *value;
            }
        }
        check_decode_v2(&bytes);
        check_decode(&bytes, MAX_FRAME_CAP);
    }

    #[test]
    fn version_3_frames_round_trip_and_survive_corruption(
        frame in arb_frame_v3_full(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = BytesMut::new();
        frame.encode_version(&mut bytes, MAX_FRAME_CAP, 3).unwrap();
        let (decoded, used) = decode_frame_version(&bytes, MAX_FRAME_CAP, 3).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&decoded, &frame);
        let mut bytes = bytes.to_vec();
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            if i >= 4 {
                bytes[i] = *value;
            }
        }
        for version in 1..=3 {
            check_decode_version(&bytes, version);
        }
    }

    #[test]
    fn version_3_fields_are_dropped_or_refused_below_version_3(frame in arb_frame_v3()) {
        let mut v2 = BytesMut::new();
        match frame.encode_version(&mut v2, MAX_FRAME_CAP, 2) {
            Ok(()) => {
                let (back, _) = decode_frame_version(&v2, MAX_FRAME_CAP, 2).unwrap().unwrap();
                prop_assert_eq!(back.body, strip_v3(&frame.body));
            }
            Err(e) => {
                prop_assert!(v2.is_empty());
                let is_version_error = matches!(
                    e,
                    ProtocolError::InvalidValue { reason: "need protocol version 3", .. }
                );
                prop_assert!(is_version_error, "{}", e);
                prop_assert!(needs_v3(&frame.body));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_decode(&bytes, DEFAULT_MAX_FRAME);
        check_decode(&bytes, 64);
    }

    #[test]
    fn arbitrary_bodies_of_every_kind_never_panic(
        kind in prop_oneof![3 => proptest::sample::select(Kind::ALL).prop_map(Kind::code), 1 => any::<u8>()],
        flags in prop_oneof![5 => Just(0u8), 1 => Just(1u8), 1 => any::<u8>()],
        rid in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        check_decode(&frame_with(kind, flags, rid, &body), DEFAULT_MAX_FRAME);
        check_decode_v2(&frame_with(kind, flags, rid, &body));
        check_decode_version(&frame_with(kind, flags, rid, &body), 3);
    }

    #[test]
    fn corrupted_valid_frames_never_panic(
        frame in arb_frame(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = bytes_of(&frame);
        // Keep the length honest sometimes, so body parsers see the damage.
        let keep_length = edits[0].1 % 2 == 0;
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            if keep_length && i < 4 {
                continue;
            }
            bytes[i] = *value;
        }
        check_decode(&bytes, MAX_FRAME_CAP);
    }

    #[test]
    fn truncated_frames_are_incomplete(frame in arb_frame(), cut in any::<prop::sample::Index>()) {
        let bytes = bytes_of(&frame);
        let n = cut.index(bytes.len());
        prop_assert!(decode_frame_with_limit(&bytes[..n], MAX_FRAME_CAP).unwrap().is_none());
        let mut codec = ReckonCodec::with_max_frame(MAX_FRAME_CAP);
        let mut buf = BytesMut::from(&bytes[..n]);
        prop_assert!(codec.decode(&mut buf).unwrap().is_none());
        prop_assert_eq!(buf.len(), n, "incomplete input is not consumed");
        buf.extend_from_slice(&bytes[n..]);
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
    }

    #[test]
    fn streams_decode_the_same_in_any_chunking(
        frames in proptest::collection::vec(arb_frame(), 1..6),
        chunk in 1usize..64,
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(bytes_of).collect();
        let mut codec = ReckonCodec::with_max_frame(MAX_FRAME_CAP);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn lengths_above_the_maximum_are_refused_without_reserving(
        max in (HEADER_LEN as u32)..=MAX_FRAME_CAP,
        excess in 1u64..=u32::MAX as u64,
        extra in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let length = (max as u64 + excess).min(u32::MAX as u64) as u32;
        prop_assume!(length > max);
        let mut codec = ReckonCodec::with_max_frame(max);
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u32_le(length);
        buf.extend_from_slice(&extra);
        let cap = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        let is_too_large = matches!(err, ProtocolError::FrameTooLarge { .. });
        prop_assert!(is_too_large);
        prop_assert!(err.is_fatal());
        prop_assert_eq!(buf.capacity(), cap);
        prop_assert!(decode_frame_with_limit(&buf, max).is_err());
    }

    #[test]
    fn the_codec_reserves_at_most_one_maximal_frame(
        max in 64u32..=(256 << 10),
        length in any::<prop::sample::Index>(),
    ) {
        let length = HEADER_LEN as u32 + length.index((max - HEADER_LEN as u32 + 1) as usize) as u32;
        let mut codec = ReckonCodec::with_max_frame(max);
        let mut buf = BytesMut::new();
        buf.put_u32_le(length);
        prop_assert!(codec.decode(&mut buf).unwrap().is_none());
        prop_assert!(buf.capacity() >= 4 + length as usize);
        prop_assert!(buf.capacity() <= 4 + max as usize + 64, "capacity {} for max {}", buf.capacity(), max);
    }
}
