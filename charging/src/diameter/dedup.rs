//! Answers kept for retransmitted requests (T flag), keyed by the sender's
//! Origin-Host and End-to-End-Id (RFC 6733 6.1.5): a bounded map with the
//! oldest entries dropped first.
//!
//! A hit also needs the same request content (a digest of its AVPs), so an
//! End-to-End-Id reused for another request is never answered with the old
//! answer; it goes to the engine, which has its own duplicate detection on
//! (Session-Id, CC-Request-Number).

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

type Key = (u64, u32);

/// Keys are already well mixed (a hash of the Origin-Host and a counter):
/// one multiply is enough, and much cheaper than SipHash per request.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x100000001b3);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9e3779b97f4a7c15);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e3779b97f4a7c15);
    }
}

type Map = HashMap<Key, (u64, Bytes), BuildHasherDefault<KeyHasher>>;

struct Shard {
    answers: Map,
    order: VecDeque<Key>,
}

/// Shards: peers on different worker threads rarely wait for each other.
const SHARDS: usize = 16;

/// A bounded cache of encoded answers.
pub struct DuplicateCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl DuplicateCache {
    /// A cache holding at most about `capacity` answers (0: none).
    pub fn new(capacity: usize) -> DuplicateCache {
        DuplicateCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        answers: Map::default(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[(key.1 as usize ^ key.0 as usize) % SHARDS]
    }

    /// Remembers the encoded answer to a request.
    pub fn insert(&self, origin_host: u64, end_to_end: u32, digest: u64, answer: Bytes) {
        if self.per_shard == 0 {
            return;
        }
        let key = (origin_host, end_to_end);
        let mut shard = self.shard(&key).lock();
        if shard.answers.insert(key, (digest, answer)).is_none() {
            shard.order.push_back(key);
        }
        while shard.order.len() > self.per_shard {
            if let Some(old) = shard.order.pop_front() {
                shard.answers.remove(&old);
            }
        }
    }

    /// The answer to an earlier request with the same key and content.
    pub fn get(&self, origin_host: u64, end_to_end: u32, digest: u64) -> Option<Bytes> {
        let key = (origin_host, end_to_end);
        let shard = self.shard(&key).lock();
        match shard.answers.get(&key) {
            Some((d, answer)) if *d == digest => Some(answer.clone()),
            _ => None,
        }
    }

    /// Answers held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().answers.len()).sum()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_content_checked() {
        // One answer per shard: keys 16 apart land in the same shard.
        let c = DuplicateCache::new(SHARDS);
        c.insert(1, 16, 100, Bytes::from_static(b"a"));
        assert_eq!(c.get(1, 16, 100).as_deref(), Some(&b"a"[..]));
        assert_eq!(c.get(1, 16, 999), None, "same id, other content");
        assert_eq!(c.get(2, 16, 100), None, "other origin host");
        c.insert(1, 32, 102, Bytes::from_static(b"c"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(1, 16, 100), None, "oldest dropped");
        assert!(c.get(1, 32, 102).is_some());
        for i in 0..1000 {
            c.insert(7, i, 0, Bytes::new());
        }
        assert!(c.len() <= SHARDS);
        let none = DuplicateCache::new(0);
        none.insert(1, 1, 1, Bytes::new());
        assert!(none.is_empty());
    }
}
