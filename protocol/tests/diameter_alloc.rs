//! The Diameter decoders never panic on arbitrary bytes and never hold
//! more memory than a bound set by the message: a counting global
//! allocator measures the peak held during each decode.

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reckon_protocol::diameter::avp::GenericMessage;
use reckon_protocol::diameter::codec::DiameterCodec;
use reckon_protocol::diameter::message::*;
use reckon_protocol::diameter::{frame_length, Header, DEFAULT_MAX_MESSAGE, MAX_MESSAGE_CAP};
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

fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    CURRENT.with(|c| c.set(0));
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    let out = f();
    MEASURING.with(|m| m.set(false));
    (PEAK.with(|p| p.get()).max(0) as usize, out)
}

/// The generic tree holds at most a constant per input byte; the typed
/// messages hold a bounded amount whatever the input (their lists are
/// capped), well under the default message-size limit.
fn bound(len: usize) -> usize {
    16 * len + DEFAULT_MAX_MESSAGE
}

/// Runs every decoder on `bytes`, checking the bound for each.
fn check(bytes: &[u8]) {
    macro_rules! measure {
        ($e:expr) => {{
            let (peak, result) = peak_of(|| $e);
            assert!(
                peak <= bound(bytes.len()),
                "{} on {} bytes held {peak} bytes",
                stringify!($e),
                bytes.len()
            );
            let _ = std::hint::black_box(result);
        }};
    }
    measure!(frame_length(bytes, MAX_MESSAGE_CAP));
    measure!(Header::parse(bytes));
    measure!(GenericMessage::decode(bytes));
    measure!(Cer::decode(bytes));
    measure!(Cea::decode(bytes));
    measure!(Dwr::decode(bytes));
    measure!(Dwa::decode(bytes));
    measure!(Dpr::decode(bytes));
    measure!(Dpa::decode(bytes));
    measure!(Ccr::decode(bytes));
    measure!(Cca::decode(bytes));
    measure!(Rar::decode(bytes));
    measure!(Asr::decode(bytes));
    measure!(SessionAnswer::decode(bytes));
    measure!(session_id_of(bytes));
}

/// A message header of the right length in front of `body`.
fn framed(flags: u8, code: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + body.len() + 3);
    let len = (20 + body.len()).div_ceil(4) * 4;
    v.extend_from_slice(&(0x0100_0000u32 | len as u32).to_be_bytes());
    v.extend_from_slice(&((flags as u32) << 24 | code).to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 2]);
    v.extend_from_slice(body);
    v.resize(len, 0);
    v
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A CCR-I from python-diameter (see `diameter_vectors.rs`).
const CCR_I: &str = include_str!("diameter/ccr_i.hex");

#[test]
fn decoders_never_panic_and_stay_within_a_bound() {
    let mut runner = TestRunner::new(Config::default());
    let arbitrary = proptest::collection::vec(any::<u8>(), 0..4096);
    let codes = proptest::sample::select(vec![257u32, 258, 272, 274, 280, 282, 999]);
    let bodies = (
        codes,
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..4096),
    );
    for _ in 0..300 {
        check(&arbitrary.new_tree(&mut runner).unwrap().current());
        let (code, flags, body) = bodies.new_tree(&mut runner).unwrap().current();
        check(&framed(flags, code, &body));
    }

    // A real CCR with bytes flipped, cut or repeated.
    let ccr = hex(CCR_I.trim());
    let (peak, decoded) = peak_of(|| GenericMessage::decode(&ccr));
    assert!(decoded.is_ok());
    assert!(peak > ccr.len(), "the allocator is counting: {peak}");
    let edits = (
        proptest::collection::vec((20usize..ccr.len(), any::<u8>()), 1..8),
        20usize..ccr.len(),
    );
    for _ in 0..300 {
        let (flips, cut) = edits.new_tree(&mut runner).unwrap().current();
        let mut v = ccr.clone();
        for (at, b) in flips {
            v[at] = b;
        }
        check(&v);
        check(&framed(0xc0, 272, &v[20..cut]));
    }

    // Deeply nested groups and many tiny AVPs: the worst shapes for memory.
    let mut nested = vec![0u8; 0];
    for _ in 0..64 {
        let len = 8 + nested.len();
        let mut outer = 456u32.to_be_bytes().to_vec();
        outer.extend_from_slice(&(0x4000_0000u32 | len as u32).to_be_bytes());
        outer.extend_from_slice(&nested);
        nested = outer;
    }
    check(&framed(0xc0, 272, &nested));
    let mut many = Vec::new();
    for _ in 0..4000 {
        many.extend_from_slice(&456u32.to_be_bytes());
        many.extend_from_slice(&0x4000_0008u32.to_be_bytes());
    }
    check(&framed(0xc0, 272, &many));
    let e = Ccr::decode(&framed(0xc0, 272, &many)).unwrap_err();
    assert!(e.result_code >= 5000, "{e:?}");

    // The codec refuses an oversized length without buffering it.
    let mut codec = DiameterCodec::new(DEFAULT_MAX_MESSAGE);
    let mut buf = BytesMut::from(&[1u8, 0xff, 0xff, 0xfc][..]);
    let (peak, result) = peak_of(|| codec.decode(&mut buf));
    assert!(result.is_err());
    assert_eq!(peak, 0);
    // An acceptable length: at most one message is reserved.
    let mut buf = BytesMut::from(&[1u8, 0x00, 0x10, 0x00][..]);
    let (peak, result) = peak_of(|| codec.decode(&mut buf));
    assert!(result.unwrap().is_none());
    assert!(peak <= 4096 + 64, "{peak}");
}
