//! Decoding never allocates beyond a bound set by the frame: a counting
//! global allocator measures the peak memory held during each decode.

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reckon_protocol::limits::*;
use reckon_protocol::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use tokio_util::codec::Decoder;

struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            let now = CURRENT.with(|c| {
                c.set(c.get() + delta);
                c.get()
            });
            PEAK.with(|p| p.set(p.get().max(now)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns the peak bytes it held (on this thread) and its result.
fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    CURRENT.with(|c| c.set(0));
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    let out = f();
    MEASURING.with(|m| m.set(false));
    (PEAK.with(|p| p.get()).max(0) as usize, out)
}

/// The bound: a constant multiple of the input plus a small constant.
fn bound(len: usize) -> usize {
    16 * len + 4096
}

fn check(bytes: &[u8]) -> usize {
    let (peak, result) = peak_of(|| decode_frame_with_limit(bytes, MAX_FRAME_CAP));
    assert!(
        peak <= bound(bytes.len()),
        "decoding {} bytes held {peak} bytes ({result:?})",
        bytes.len()
    );
    drop(result);
    peak
}

#[test]
fn decoding_allocates_within_a_bound_of_the_frame() {
    let mut runner = TestRunner::new(Config::default());

    // Arbitrary bytes, and arbitrary bodies under a valid header of every kind.
    let arbitrary = proptest::collection::vec(any::<u8>(), 0..4096);
    let bodies = (
        proptest::sample::select(Kind::ALL),
        proptest::collection::vec(any::<u8>(), 0..4096),
    );
    for _ in 0..300 {
        check(&arbitrary.new_tree(&mut runner).unwrap().current());
        let (kind, body) = bodies.new_tree(&mut runner).unwrap().current();
        let mut v = (10 + body.len() as u32).to_le_bytes().to_vec();
        v.push(kind.code());
        v.push(kind.flags());
        v.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&body);
        check(&v);
    }

    // Valid frames, and claims of many entries backed by few bytes.
    for _ in 0..300 {
        check(&bytes_of(
            &arb_frame().new_tree(&mut runner).unwrap().current(),
        ));
    }
    for (kind, count) in [
        (0x03u8, [0x00u8, 0x04]),
        (0x83, [0x00, 0x04]),
        (0xa1, [0x00, 0x04]),
    ] {
        let mut body = Vec::new();
        if kind == 0xa1 {
            body.extend_from_slice(&[0u8; 8 + 9 + 1 + 1]);
        }
        body.extend_from_slice(&count);
        body.extend_from_slice(&[0u8; 40]);
        let mut v = (10 + body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(&[kind, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&body);
        check(&v);
    }

    // The largest legal batch: 1024 minimal entries.
    let batch = Frame::new(
        1,
        Message::Batch(Batch {
            entries: vec![Message::BalanceQuery(BalanceQuery { account: 1 }); BATCH_MAX],
        }),
    );
    let wire = bytes_of(&batch);
    let peak = check(&wire);
    // The allocator is really counting: a decoded batch holds its entries.
    assert!(peak >= BATCH_MAX * std::mem::size_of::<Message>(), "{peak}");
    eprintln!(
        "largest batch: {} bytes on the wire, {peak} bytes decoded",
        wire.len()
    );

    // A length above the maximum: refused with no allocation at all.
    let mut codec = ReckonCodec::with_max_frame(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::with_capacity(16);
    buf.put_u32_le(u32::MAX);
    let (peak, result) = peak_of(|| codec.decode(&mut buf));
    assert!(result.is_err());
    assert_eq!(peak, 0);
    let (peak, result) = peak_of(|| decode_frame(&u32::MAX.to_le_bytes()));
    assert!(result.is_err());
    assert_eq!(peak, 0);

    // An acceptable length: the codec holds at most one maximal frame.
    let mut buf = BytesMut::new();
    buf.put_u32_le(DEFAULT_MAX_FRAME);
    let (peak, result) = peak_of(|| codec.decode(&mut buf));
    assert!(result.unwrap().is_none());
    assert!(peak <= 4 + DEFAULT_MAX_FRAME as usize + 64, "{peak}");
}

#[test]
fn a_version_2_ccr_without_attributes_allocates_as_in_version_1() {
    let Some(ccr) = samples().into_iter().find(|m| m.kind() == Kind::Ccr) else {
        panic!("no CCR sample")
    };
    let frame = Frame::new(5, ccr);
    let v1 = bytes_of(&frame);
    let mut v2 = BytesMut::new();
    frame.encode_version(&mut v2, MAX_FRAME_CAP, 2).unwrap();
    assert_eq!(v2.len(), v1.len() + 1, "one count byte more");
    let (peak1, one) = peak_of(|| decode_frame_version(&v1, MAX_FRAME_CAP, 1));
    let (peak2, two) = peak_of(|| decode_frame_version(&v2, MAX_FRAME_CAP, 2));
    assert_eq!(one.unwrap().unwrap().0, two.unwrap().unwrap().0);
    assert_eq!(peak1, peak2);
    assert!(peak1 > 0, "the allocator is counting");
    // Attributes are bounded like everything else: a full list decodes
    // within the frame's bound.
    let Message::Ccr(mut full) = frame.body else {
        unreachable!()
    };
    full.attributes = (0..ATTRIBUTES_MAX)
        .map(|i| (format!("{i:0>32}"), "v".repeat(ATTRIBUTE_VALUE_MAX)))
        .collect();
    let mut wire = BytesMut::new();
    Frame::new(6, Message::Ccr(full))
        .encode_version(&mut wire, MAX_FRAME_CAP, 2)
        .unwrap();
    let (peak, result) = peak_of(|| decode_frame_version(&wire, MAX_FRAME_CAP, 2));
    assert!(result.is_ok());
    assert!(peak <= bound(wire.len()), "{peak}");
}

#[test]
fn version_3_spend_controls_decode_within_the_bound() {
    let mut runner = TestRunner::new(Config::default());
    let check_v3 = |bytes: &[u8]| {
        let (peak, result) = peak_of(|| decode_frame_version(bytes, MAX_FRAME_CAP, 3));
        assert!(
            peak <= bound(bytes.len()),
            "decoding {} bytes held {peak} bytes ({result:?})",
            bytes.len()
        );
        result.is_ok()
    };
    // Valid frames with every version-3 field, the fullest BALANCE included.
    for m in samples_v3() {
        let mut wire = BytesMut::new();
        Frame::new(1, m)
            .encode_version(&mut wire, MAX_FRAME_CAP, 3)
            .unwrap();
        assert!(check_v3(&wire));
    }
    for _ in 0..200 {
        let frame = arb_frame_v3().new_tree(&mut runner).unwrap().current();
        let mut wire = BytesMut::new();
        frame.encode_version(&mut wire, MAX_FRAME_CAP, 3).unwrap();
        assert!(check_v3(&wire));
    }
    // A BALANCE claiming 64 spend controls backed by a few bytes.
    let mut body = vec![0u8; 8 + 9 + 1 + 1];
    body.extend_from_slice(&[0, 0, LIMITS_MAX as u8]);
    body.extend_from_slice(&[0u8; 40]);
    let mut v = (10 + body.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&[0xa1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&body);
    assert!(!check_v3(&v));
}
