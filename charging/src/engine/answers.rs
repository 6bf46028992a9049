//! Remembered answers, for retransmissions.
//!
//! An answer is remembered under (organisation, session id, request number)
//! with a digest of the request it answered, for the retransmission window.
//! A request arriving with a remembered key gets the remembered answer when
//! its digest matches (a retransmission), and `REQUEST_ID_REUSED` when it
//! does not (a client reusing an id for something else): never the old
//! answer to a different question. Keys carry the organisation, so one
//! tenant's ids never meet another's.
//!
//! Only requests that were authorised and could change state are remembered
//! (INITIAL, UPDATE, TERMINATE, DIRECT_DEBIT, REFUND), refusals included: a
//! refusal is an answer too, and a late retransmission of a refused request
//! must not succeed behind the client's back after a top-up. Reads
//! (CHECK_BALANCE, PRICE_ENQUIRY) and requests refused before they could be
//! keyed (inconsistent, unknown account) are answered afresh each time.

#[allow(unused_imports)]
use super::*;

/// What identifies one answered request.
pub(super) type AnswerKey = (AccountId, Arc<str>, u32);

/// One remembered answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Remembered {
    /// When it was answered; it is forgotten a window later.
    pub(super) at: Timestamp,
    /// [`request_digest`] of the request it answered.
    pub(super) digest: u64,
    /// The answer.
    pub(super) answer: CreditControlAnswer,
}

/// The digest that tells a retransmission (same content) from a reused id.
/// The timestamp is left out: it says when the client sent the request,
/// not what it asks, and a client may stamp a resent request anew.
pub(super) fn request_digest(ccr: &CreditControlRequest) -> u64 {
    let mut d = reckon_balances::codec::Digest::default();
    encode_ccr_with(&mut d, ccr, false);
    d.finish()
}

/// Answers kept for the retransmission window, and what their next
/// checkpoint must write.
#[derive(Debug, Default)]
pub(super) struct AnswerStore {
    map: HashMap<AnswerKey, Remembered>,
    /// Keys in the order remembered (times never decrease along it).
    order: VecDeque<(Timestamp, AnswerKey)>,
    /// Keys remembered at a time ahead of `order`'s (a request stamped
    /// later than the server's clock), earliest first.
    ahead: std::collections::BinaryHeap<Reverse<(Timestamp, AnswerKey)>>,
    /// Answers recorded before this time are forgotten; persisted, so a
    /// restore never brings back one the live engine had forgotten.
    forgotten_below: Timestamp,
    /// Keys remembered since the last checkpoint.
    added: Vec<AnswerKey>,
    /// Snapshot blobs holding answers: (sequence, newest answer's time).
    blobs: Vec<(u64, Timestamp)>,
    /// Answers remembered since start (tells whether a request added one).
    inserted: u64,
}

impl AnswerStore {
    /// The remembered answer under `key`, if any.
    pub(super) fn get(&self, key: &AnswerKey) -> Option<&Remembered> {
        self.map.get(key)
    }

    /// Number of answers remembered.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// How many answers were ever remembered by this process.
    pub(super) fn inserted(&self) -> u64 {
        self.inserted
    }

    /// Remembers an answer from `at`: the time it was answered, or the
    /// request's own timestamp when that is later, so that the answer is
    /// kept until a retransmission of it would be refused as too old.
    pub(super) fn insert(
        &mut self,
        at: Timestamp,
        key: AnswerKey,
        digest: u64,
        answer: CreditControlAnswer,
    ) {
        self.inserted += 1;
        if self.order.back().is_none_or(|(last, _)| *last <= at) {
            self.order.push_back((at, key.clone()));
        } else {
            self.ahead.push(Reverse((at, key.clone())));
        }
        self.added.push(key.clone());
        self.map.insert(key, Remembered { at, digest, answer });
    }

    /// Forgets answers a window old.
    pub(super) fn forget(&mut self, now: Timestamp, window_ms: u64) {
        if let Some(bound) = now.0.checked_sub(window_ms) {
            self.forgotten_below = self.forgotten_below.max(Timestamp(bound + 1));
        }
        loop {
            let front = self.order.front().map(|(at, _)| *at);
            let ahead = self.ahead.peek().map(|Reverse((at, _))| *at);
            let (at, key) = match (front, ahead) {
                (Some(f), a) if a.is_none_or(|a| f <= a) && f.plus_ms(window_ms) <= now => {
                    match self.order.pop_front() {
                        Some(e) => e,
                        None => break,
                    }
                }
                (_, Some(a)) if a.plus_ms(window_ms) <= now => match self.ahead.pop() {
                    Some(Reverse(e)) => e,
                    None => break,
                },
                _ => break,
            };
            // A key remembered again later (never, as ids are refused once
            // used; but be exact) keeps its newer answer.
            if self.map.get(&key).is_some_and(|r| r.at == at) {
                self.map.remove(&key);
            }
        }
    }

    /// Adds the answers remembered since the last checkpoint as one blob,
    /// and drops blobs whose answers are all past the window.
    pub(super) fn checkpoint(
        &mut self,
        now: Timestamp,
        window_ms: u64,
        seq: u64,
        writes: &mut Vec<SnapshotWrite>,
    ) {
        let mut blob = Vec::new();
        let mut newest = Timestamp(0);
        for key in std::mem::take(&mut self.added) {
            if let Some(r) = self.map.get(&key) {
                encode_remembered(&mut blob, &key, r);
                newest = newest.max(r.at);
            }
        }
        if !blob.is_empty() {
            writes.push((blob_key(seq), Some(blob)));
            self.blobs.push((seq, newest));
        }
        self.blobs.retain(|(seq, newest)| {
            let keep = newest.plus_ms(window_ms) > now;
            if !keep {
                writes.push((blob_key(*seq), None));
            }
            keep
        });
    }

    /// The bound below which answers are forgotten, for the snapshot.
    pub(super) fn forgotten_below(&self) -> Timestamp {
        self.forgotten_below
    }

    /// Restores the bound written by [`AnswerStore::forgotten_below`].
    pub(super) fn set_forgotten_below(&mut self, at: Timestamp) {
        self.forgotten_below = at;
    }

    /// Reads one snapshot blob back.
    pub(super) fn restore_blob(&mut self, seq: u64, bytes: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader::new(bytes);
        let mut newest = Timestamp(0);
        while !r.is_empty() {
            let (key, remembered) = decode_remembered(&mut r)?;
            newest = newest.max(remembered.at);
            if remembered.at >= self.forgotten_below {
                self.order.push_back((remembered.at, key.clone()));
                self.map.insert(key, remembered);
            }
        }
        self.blobs.push((seq, newest));
        Ok(())
    }

    /// Puts restored answers in time order (blobs may be read in any order).
    pub(super) fn finish_restore(&mut self) {
        let below = self.forgotten_below;
        self.map.retain(|_, r| r.at >= below);
        let mut order: Vec<_> = self
            .order
            .drain(..)
            .filter(|(at, _)| *at >= below)
            .collect();
        order.sort();
        self.order = order.into();
        self.added.clear();
    }

    /// A digest of the answers still inside the window at `horizon`.
    pub(super) fn digest_at(&self, horizon: Timestamp, window_ms: u64) -> u64 {
        let mut live: Vec<_> = self
            .map
            .iter()
            .filter(|(_, r)| r.at.plus_ms(window_ms) > horizon)
            .collect();
        live.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut d = reckon_balances::codec::Digest::default();
        for (key, r) in live {
            encode_remembered(&mut d, key, r);
        }
        d.finish()
    }
}

fn blob_key(seq: u64) -> Vec<u8> {
    let mut k = vec![ENGINE_TAG, b'a'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn encode_remembered<S: Sink>(s: &mut S, key: &AnswerKey, r: &Remembered) {
    s.account(key.0);
    s.bytes16(key.1.as_bytes());
    s.u32(key.2);
    s.time(r.at);
    s.u64(r.digest);
    encode_answer(s, &r.answer);
}

fn decode_remembered(r: &mut Reader<'_>) -> Result<(AnswerKey, Remembered), DecodeError> {
    let org = r.account()?;
    let id = std::str::from_utf8(r.bytes16(SESSION_ID_LEN_MAX)?)
        .map_err(|_| DecodeError::Invalid("session id"))?;
    let number = r.u32()?;
    let at = r.time()?;
    let digest = r.u64()?;
    let answer = decode_answer(r)?;
    Ok((
        (org, Arc::from(id), number),
        Remembered { at, digest, answer },
    ))
}
