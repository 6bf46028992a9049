//! A tiny canonical binary encoding for log records and snapshots.
//!
//! Little-endian fixed-width integers, length-prefixed byte strings. One
//! routine writes a value both into a buffer (for the log) and into a hasher
//! (for the idempotency digest), so the digest is exactly "same bytes on the
//! log".

use crate::amount::Amount;
use crate::types::{AccountId, BucketId, OpId, ReservationId, ServiceId, Timestamp, Unit};

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("record truncated")]
    Truncated,
    /// A tag, length or value is outside what the format allows.
    #[error("invalid record: {0}")]
    Invalid(&'static str),
    /// Bytes were left over after the value.
    #[error("trailing bytes after record")]
    Trailing,
}

/// Where encoded bytes go: a buffer or a digest.
pub trait Sink {
    /// Appends bytes.
    fn put(&mut self, bytes: &[u8]);

    /// Appends one byte.
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    /// Appends a bool as one byte.
    fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    /// Appends a u16.
    fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    /// Appends a u32.
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    /// Appends a u64.
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    /// Appends a u128.
    fn u128(&mut self, v: u128) {
        self.put(&v.to_le_bytes());
    }
    /// Appends an i128.
    fn i128(&mut self, v: i128) {
        self.put(&v.to_le_bytes());
    }
    /// Appends an amount.
    fn amount(&mut self, v: Amount) {
        self.i128(v.nanos());
    }
    /// Appends a unit.
    fn unit(&mut self, v: Unit) {
        self.put(&v.to_bytes());
    }
    /// Appends an account id.
    fn account(&mut self, v: AccountId) {
        self.u64(v.0);
    }
    /// Appends a bucket id.
    fn bucket(&mut self, v: BucketId) {
        self.u64(v.0);
    }
    /// Appends a reservation id.
    fn reservation(&mut self, v: ReservationId) {
        self.u64(v.0);
    }
    /// Appends an op id.
    fn op(&mut self, v: OpId) {
        self.u128(v.0);
    }
    /// Appends a time.
    fn time(&mut self, v: Timestamp) {
        self.u64(v.0);
    }
    /// Appends a service id.
    fn service(&mut self, v: ServiceId) {
        self.u32(v.0);
    }
    /// Appends a length-prefixed (u16) byte string; callers bound the length.
    fn bytes16(&mut self, v: &[u8]) {
        debug_assert!(v.len() <= u16::MAX as usize);
        self.u16(v.len() as u16);
        self.put(v);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A stable 64-bit digest of encoded bytes (FNV-1a over 8-byte words plus a
/// final avalanche). Stable across builds and platforms, which the idempotency
/// table needs because digests are persisted.
#[derive(Clone, Debug)]
pub struct Digest {
    state: u64,
    tail: [u8; 8],
    tail_len: usize,
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for Digest {
    fn default() -> Self {
        Digest {
            state: 0xcbf2_9ce4_8422_2325,
            tail: [0; 8],
            tail_len: 0,
        }
    }
}

impl Digest {
    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(FNV_PRIME).rotate_left(29);
    }

    /// The digest of everything put so far.
    pub fn finish(mut self) -> u64 {
        if self.tail_len > 0 {
            let mut word = [0u8; 8];
            word[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            self.mix(u64::from_le_bytes(word) ^ ((self.tail_len as u64) << 59));
        }
        // splitmix64 finaliser: spreads every input bit over the output.
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Sink for Digest {
    fn put(&mut self, mut bytes: &[u8]) {
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 8 {
                return;
            }
            let word = u64::from_le_bytes(self.tail);
            self.mix(word);
            self.tail_len = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }
}

/// The [`Digest`] of one byte string.
pub fn digest_of(bytes: &[u8]) -> u64 {
    let mut d = Digest::default();
    d.put(bytes);
    d.finish()
}

/// Reads values back from a byte slice, never panicking on short input.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over these bytes.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }

    /// True when no byte is left.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// Reads a bool (0 or 1).
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("bool")),
        }
    }
    /// Reads a u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Reads a u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Reads a u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Reads a u128.
    pub fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    /// Reads an amount, checking its range.
    pub fn amount(&mut self) -> Result<Amount, DecodeError> {
        let a = Amount::from_nanos(i128::from_le_bytes(self.array()?));
        if a.in_range() {
            Ok(a)
        } else {
            Err(DecodeError::Invalid("amount out of range"))
        }
    }
    /// Reads a unit, checking its name.
    pub fn unit(&mut self) -> Result<Unit, DecodeError> {
        Unit::from_bytes(self.array()?).map_err(|_| DecodeError::Invalid("unit"))
    }
    /// Reads an account id.
    pub fn account(&mut self) -> Result<AccountId, DecodeError> {
        Ok(AccountId(self.u64()?))
    }
    /// Reads a bucket id.
    pub fn bucket(&mut self) -> Result<BucketId, DecodeError> {
        Ok(BucketId(self.u64()?))
    }
    /// Reads a reservation id.
    pub fn reservation(&mut self) -> Result<ReservationId, DecodeError> {
        Ok(ReservationId(self.u64()?))
    }
    /// Reads an op id.
    pub fn op(&mut self) -> Result<OpId, DecodeError> {
        Ok(OpId(self.u128()?))
    }
    /// Reads a time.
    pub fn time(&mut self) -> Result<Timestamp, DecodeError> {
        Ok(Timestamp(self.u64()?))
    }
    /// Reads a service id.
    pub fn service(&mut self) -> Result<ServiceId, DecodeError> {
        Ok(ServiceId(self.u32()?))
    }
    /// Reads a u16-length-prefixed byte string of at most `max` bytes.
    pub fn bytes16(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(DecodeError::Invalid("string too long"));
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_chunking_independent_and_sensitive() {
        let data: Vec<u8> = (0u8..=40).collect();
        let mut whole = Digest::default();
        whole.put(&data);
        let mut parts = Digest::default();
        for piece in data.chunks(3) {
            parts.put(piece);
        }
        let (a, b) = (whole.finish(), parts.finish());
        assert_eq!(a, b);
        let mut other = Digest::default();
        let mut changed = data.clone();
        changed[17] ^= 1;
        other.put(&changed);
        assert_ne!(a, other.finish());
        // Length matters even when the extra bytes are zero.
        let mut short = Digest::default();
        short.put(&[0, 0]);
        let mut long = Digest::default();
        long.put(&[0, 0, 0]);
        assert_ne!(short.finish(), long.finish());
    }

    #[test]
    fn reader_rejects_short_and_trailing_input() {
        let mut buf = Vec::new();
        buf.u64(7);
        buf.bytes16(b"hi");
        let mut r = Reader::new(&buf);
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.bytes16(10).unwrap(), b"hi");
        r.finish().unwrap();
        let mut r = Reader::new(&buf[..5]);
        assert_eq!(r.u64(), Err(DecodeError::Truncated));
        let mut r = Reader::new(&buf);
        r.u64().unwrap();
        assert_eq!(r.bytes16(1), Err(DecodeError::Invalid("string too long")));
        assert_eq!(Reader::new(&buf).finish(), Err(DecodeError::Trailing));
    }
}
