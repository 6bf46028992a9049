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

type Key = (u64, u32);

struct Inner {
    answers: HashMap<Key, (u64, Bytes)>,
    order: VecDeque<Key>,
}

/// A bounded cache of encoded answers.
pub struct DuplicateCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl DuplicateCache {
    /// A cache holding at most `capacity` answers (0: none).
    pub fn new(capacity: usize) -> DuplicateCache {
        DuplicateCache {
            inner: Mutex::new(Inner {
                answers: HashMap::new(),
                order: VecDeque::new(),
            }),
            capacity,
        }
    }

    /// Remembers the encoded answer to a request.
    pub fn insert(&self, origin_host: u64, end_to_end: u32, digest: u64, answer: Bytes) {
        if self.capacity == 0 {
            return;
        }
        let key = (origin_host, end_to_end);
        let mut inner = self.inner.lock();
        if inner.answers.insert(key, (digest, answer)).is_none() {
            inner.order.push_back(key);
        }
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.answers.remove(&old);
            }
        }
    }

    /// The answer to an earlier request with the same key and content.
    pub fn get(&self, origin_host: u64, end_to_end: u32, digest: u64) -> Option<Bytes> {
        let inner = self.inner.lock();
        match inner.answers.get(&(origin_host, end_to_end)) {
            Some((d, answer)) if *d == digest => Some(answer.clone()),
            _ => None,
        }
    }

    /// Answers held.
    pub fn len(&self) -> usize {
        self.inner.lock().answers.len()
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
        let c = DuplicateCache::new(2);
        c.insert(1, 10, 100, Bytes::from_static(b"a"));
        c.insert(1, 11, 101, Bytes::from_static(b"b"));
        assert_eq!(c.get(1, 10, 100).as_deref(), Some(&b"a"[..]));
        assert_eq!(c.get(1, 10, 999), None, "same id, other content");
        assert_eq!(c.get(2, 10, 100), None, "other origin host");
        c.insert(1, 12, 102, Bytes::from_static(b"c"));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(1, 10, 100), None, "oldest dropped");
        assert!(c.get(1, 12, 102).is_some());
        let none = DuplicateCache::new(0);
        none.insert(1, 1, 1, Bytes::new());
        assert!(none.is_empty());
    }
}
