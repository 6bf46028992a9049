//! Remembered answers, for retransmissions: a compact index in memory, the
//! answers themselves in the log.
//!
//! A request that is remembered (see below) is logged with its answer (and,
//! when it ends a session or refunds one, what the session may still have
//! refunded). Memory keeps only where that record is: a keyed 64-bit hash
//! of (organisation, session id, request number) → the record's log
//! position, and a queue of expiry times — about 60 bytes per remembered
//! request. When a request arrives whose key is remembered, its record is
//! read back (from the log, or from the recent records not yet durable):
//! the same content (the timestamp aside) is a retransmission and gets the
//! logged answer; the same ids with other content are refused with
//! `REQUEST_ID_REUSED`; other ids under the same hash (a 64-bit collision,
//! practically never) get `TOO_BUSY` and change nothing. Keys carry the
//! organisation, so one tenant's ids never meet another's.
//!
//! Only requests that were authorised and could change state are
//! remembered (INITIAL, UPDATE, TERMINATE, DIRECT_DEBIT, REFUND), refusals
//! for lack of credit included: a late duplicate of a refused debit must
//! not succeed after a top-up behind the client's back. Reads and requests
//! refused before they could be keyed are answered afresh each time.
//!
//! Answers are forgotten a window after `max(answered, request timestamp)`,
//! oldest first, or earlier when the index is full (its entry cap); a
//! request stamped at or before the newest forgotten time is then refused
//! as too old, so forgetting never lets a retransmission apply twice. After
//! a restart the index is rebuilt from the log (the journal keeps log
//! records for the window), so nothing of it is in the snapshot.

#[allow(unused_imports)]
use super::*;
use std::hash::BuildHasher;

/// A remembered request's key: keyed hash of (organisation, session id,
/// request number).
pub(super) type AnswerKey = u64;

/// Hashes keys that are already hashes.
#[derive(Default, Clone, Copy)]
pub(super) struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | *b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The digest that tells a retransmission (same content) from a reused id.
/// The timestamp is left out: it says when the client sent the request,
/// not what it asks, and a client may stamp a resent request anew.
pub(super) fn request_digest(ccr: &CreditControlRequest) -> u64 {
    let mut d = reckon_balances::codec::Digest::default();
    encode_ccr_with(&mut d, ccr, false);
    d.finish()
}

/// Where remembered answers are, and until when.
#[derive(Debug)]
pub(super) struct AnswerIndex {
    hasher: std::collections::hash_map::RandomState,
    /// Key → log position of the record holding the answer.
    map: KeyMap,
    /// (time, key) in the order remembered: times never decrease along it.
    order: VecDeque<(Timestamp, AnswerKey)>,
    /// Keys remembered at a time ahead of `order`'s (a request stamped
    /// later than the server's clock), earliest first.
    ahead: BinaryHeap<Reverse<(Timestamp, AnswerKey)>>,
    /// Answers remembered at or before this time are forgotten; a request
    /// stamped at or before it is refused as too old.
    forgotten_up_to: Timestamp,
    /// Most entries kept, whatever the window.
    cap: usize,
}

impl Default for AnswerIndex {
    fn default() -> Self {
        AnswerIndex {
            hasher: std::collections::hash_map::RandomState::new(),
            map: KeyMap::default(),
            order: VecDeque::new(),
            ahead: BinaryHeap::new(),
            forgotten_up_to: Timestamp(0),
            cap: ANSWERS_MAX_DEFAULT,
        }
    }
}

type PlainMap = HashMap<AnswerKey, u64, std::hash::BuildHasherDefault<PassThrough>>;

/// Key → log position, grown without stopping the writer: a hash table
/// that grows rehashes every entry at once (measured: 1.34 s with no
/// answer at all, at 11M remembered answers). When the table is full, a
/// table four times its entries takes new entries and the full one's move
/// over a few per insert, in the order they were remembered. Four, not
/// two: a table left more than ~70 % full under constant insert and
/// forget fills with tombstones and must be rebuilt again (measured: 11M
/// entries in 16M buckets grew again at 200 s); one under half full does
/// not, so memory settles with the window.
#[derive(Debug, Default)]
struct KeyMap {
    map: PlainMap,
    /// The full table being emptied into `map`.
    old: PlainMap,
    /// Entries of the index's `order` from the front already looked at,
    /// then of its `ahead` heap (whose order may change meanwhile: an entry
    /// passed over stays in `old` and moves at the end).
    moved: usize,
    moved_ahead: usize,
}

/// Entries moved per insert while a table is emptied: it empties long
/// before the new table (four times its entries) can fill.
const MOVE_PER_INSERT: usize = 8;

/// A new table holds this many times the entries of the full one.
const GROWTH: usize = 4;

impl KeyMap {
    fn get(&self, key: &AnswerKey) -> Option<&u64> {
        self.map.get(key).or_else(|| self.old.get(key))
    }

    fn len(&self) -> usize {
        self.map.len() + self.old.len()
    }

    fn remove(&mut self, key: &AnswerKey) -> Option<u64> {
        self.map.remove(key).or_else(|| self.old.remove(key))
    }

    /// Inserts, first moving a few entries of a table being emptied (the
    /// keys of `order` from `moved` on, then those `ahead`).
    fn insert(
        &mut self,
        key: AnswerKey,
        lsn: u64,
        order: &VecDeque<(Timestamp, AnswerKey)>,
        ahead: &BinaryHeap<Reverse<(Timestamp, AnswerKey)>>,
    ) {
        if !self.old.is_empty() {
            self.move_some(order, ahead, MOVE_PER_INSERT);
        }
        if self.map.len() == self.map.capacity() {
            if !self.old.is_empty() {
                // Full again before the last one emptied (not at any rate
                // the window allows): finish it now.
                self.move_some(order, ahead, usize::MAX);
            }
            let full = std::mem::take(&mut self.map);
            self.map = PlainMap::with_capacity_and_hasher(
                (full.len() * GROWTH).max(1024),
                Default::default(),
            );
            self.old = full;
            self.moved = 0;
            self.moved_ahead = 0;
        }
        self.old.remove(&key);
        self.map.insert(key, lsn);
    }

    fn move_some(
        &mut self,
        order: &VecDeque<(Timestamp, AnswerKey)>,
        ahead: &BinaryHeap<Reverse<(Timestamp, AnswerKey)>>,
        mut n: usize,
    ) {
        while n > 0 && self.moved < order.len() {
            let (_, key) = order[self.moved];
            self.moved += 1;
            if let Some(lsn) = self.old.remove(&key) {
                self.map.insert(key, lsn);
                n -= 1;
            }
        }
        let ahead = ahead.as_slice();
        while n > 0 && self.moved_ahead < ahead.len() {
            let Reverse((_, key)) = ahead[self.moved_ahead];
            self.moved_ahead += 1;
            if let Some(lsn) = self.old.remove(&key) {
                self.map.insert(key, lsn);
                n -= 1;
            }
        }
        if self.moved >= order.len() && self.moved_ahead >= ahead.len() {
            self.map.extend(self.old.drain());
            self.old = PlainMap::default();
        }
    }

    /// `order` lost its front entry.
    fn popped_front(&mut self) {
        self.moved = self.moved.saturating_sub(1);
    }

    /// Whether a full table is still being emptied (for tests).
    #[cfg(test)]
    fn growing(&self) -> bool {
        !self.old.is_empty()
    }
}

/// Most answers remembered at once unless configured: about 2 GB.
pub const ANSWERS_MAX_DEFAULT: usize = 50_000_000;
/// The largest entry cap a configuration may set.
pub const ANSWERS_MAX_LIMIT: u64 = 1 << 32;

impl AnswerIndex {
    /// The key of a request.
    pub(super) fn key(&self, org: AccountId, session: &str, number: u32) -> AnswerKey {
        self.hasher.hash_one((org.0, session, number))
    }

    /// Log position of the record remembered under `key`.
    pub(super) fn get(&self, key: AnswerKey) -> Option<u64> {
        self.map.get(&key).copied()
    }

    /// Number of answers remembered.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Sets the entry cap.
    pub(super) fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
    }

    /// Remembers that the answer under `key` is in the record at `lsn`,
    /// from `at` on.
    pub(super) fn insert(&mut self, at: Timestamp, key: AnswerKey, lsn: u64) {
        if self.order.back().is_none_or(|(last, _)| *last <= at) {
            self.order.push_back((at, key));
        } else {
            self.ahead.push(Reverse((at, key)));
        }
        self.map.insert(key, lsn, &self.order, &self.ahead);
        while self.map.len() > self.cap {
            if !self.pop_oldest() {
                break;
            }
        }
    }

    /// The earliest time still remembered, whichever queue holds it.
    fn oldest(&self) -> Option<Timestamp> {
        let front = self.order.front().map(|(at, _)| *at);
        let ahead = self.ahead.peek().map(|Reverse((at, _))| *at);
        match (front, ahead) {
            (Some(f), Some(a)) => Some(f.min(a)),
            (f, a) => f.or(a),
        }
    }

    /// Forgets the oldest answer; false when there is none.
    fn pop_oldest(&mut self) -> bool {
        let front = self.order.front().map(|(at, _)| *at);
        let ahead = self.ahead.peek().map(|Reverse((at, _))| *at);
        let (at, key) = match (front, ahead) {
            (Some(f), a) if a.is_none_or(|a| f <= a) => match self.order.pop_front() {
                Some(e) => {
                    self.map.popped_front();
                    e
                }
                None => return false,
            },
            (_, Some(_)) => match self.ahead.pop() {
                Some(Reverse(e)) => e,
                None => return false,
            },
            _ => return false,
        };
        self.map.remove(&key);
        self.forgotten_up_to = self.forgotten_up_to.max(at);
        true
    }

    /// Forgets answers a window old.
    pub(super) fn forget(&mut self, now: Timestamp, window_ms: u64) {
        while self.oldest().is_some_and(|at| at.plus_ms(window_ms) <= now) {
            if !self.pop_oldest() {
                break;
            }
        }
    }

    /// Answers remembered at or before this time are forgotten.
    pub(super) fn forgotten_up_to(&self) -> Timestamp {
        self.forgotten_up_to
    }

    /// Restores [`AnswerIndex::forgotten_up_to`] (from the snapshot).
    pub(super) fn set_forgotten_up_to(&mut self, at: Timestamp) {
        self.forgotten_up_to = self.forgotten_up_to.max(at);
    }

    /// A digest of the answers still inside the window at `horizon`: the
    /// log positions remembered (keys are hashed with a per-process key,
    /// positions are the same in every process).
    pub(super) fn digest_at(&self, horizon: Timestamp, window_ms: u64) -> u64 {
        let mut live: Vec<(Timestamp, u64)> = self
            .order
            .iter()
            .copied()
            .chain(self.ahead.iter().map(|Reverse(e)| *e))
            .filter(|(at, _)| at.plus_ms(window_ms) > horizon)
            .filter_map(|(at, key)| self.map.get(&key).map(|lsn| (at, *lsn)))
            .collect();
        live.sort_unstable();
        let mut d = reckon_balances::codec::Digest::default();
        for (at, lsn) in live {
            d.time(at);
            d.u64(lsn);
        }
        d.finish()
    }
}

/// Remembered records not yet durable (or, with no log attached, all of
/// them): a retransmission may arrive before its original's group commit.
#[derive(Debug, Default)]
pub(super) struct RecentRecords {
    chunks: VecDeque<RecentChunk>,
    bytes: usize,
    /// Most bytes kept; `None` keeps everything (no log to read back from).
    limit: Option<usize>,
}

#[derive(Debug)]
struct RecentChunk {
    first_lsn: u64,
    data: Vec<u8>,
    /// (lsn, time, offset, length) of each record, in lsn order.
    records: Vec<(u64, Timestamp, u32, u32)>,
}

const RECENT_CHUNK_BYTES: usize = 1 << 20;
/// Memory one remembered answer takes in the index, about (see the module
/// documentation); for the retransmission-store gauge.
pub(super) const INDEX_BYTES_PER_ANSWER: u64 = 60;
/// Bytes of recent records kept when the log can be read back: several
/// group commits' worth at full speed.
pub(super) const RECENT_BYTES_MAX: usize = 32 << 20;

impl RecentRecords {
    /// Bytes of records kept.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps at most `limit` bytes (the rest is in the durable log).
    pub(super) fn bound(&mut self, limit: usize) {
        self.limit = Some(limit);
        self.trim();
    }

    /// Keeps a record.
    pub(super) fn push(&mut self, lsn: u64, at: Timestamp, record: &[u8]) {
        let fits = self
            .chunks
            .back()
            .is_some_and(|c| c.data.len() + record.len() <= RECENT_CHUNK_BYTES);
        if !fits {
            self.chunks.push_back(RecentChunk {
                first_lsn: lsn,
                data: Vec::with_capacity(RECENT_CHUNK_BYTES.max(record.len())),
                records: Vec::new(),
            });
        }
        if let Some(chunk) = self.chunks.back_mut() {
            chunk
                .records
                .push((lsn, at, chunk.data.len() as u32, record.len() as u32));
            chunk.data.extend_from_slice(record);
            self.bytes += record.len();
        }
        self.trim();
    }

    fn trim(&mut self) {
        let Some(limit) = self.limit else {
            return;
        };
        while self.bytes > limit && self.chunks.len() > 1 {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.data.len();
            }
        }
    }

    /// The record at `lsn`, if kept.
    pub(super) fn get(&self, lsn: u64) -> Option<(Timestamp, &[u8])> {
        let i = self.chunks.partition_point(|c| c.first_lsn <= lsn);
        let chunk = self.chunks.get(i.checked_sub(1)?)?;
        let j = chunk.records.binary_search_by_key(&lsn, |r| r.0).ok()?;
        let (_, at, off, len) = chunk.records[j];
        Some((
            at,
            chunk.data.get(off as usize..off as usize + len as usize)?,
        ))
    }
}

/// What a remembered record holds after its request.
#[derive(Debug)]
pub(super) struct RecordedAnswer {
    pub(super) answer: CreditControlAnswer,
    /// What the session may still have refunded after this request, when
    /// it ended a session or refunded one (`None` otherwise).
    pub(super) charges: Option<(AccountId, Vec<sessions::Charge>)>,
}

/// Appends what a remembered record holds after its request.
pub(super) fn encode_recorded<S: Sink>(
    s: &mut S,
    answer: &CreditControlAnswer,
    charges: Option<(AccountId, &[sessions::Charge])>,
) {
    s.u8(1);
    encode_answer(s, answer);
    match charges {
        None => s.bool(false),
        Some((account, lines)) => {
            s.bool(true);
            s.account(account);
            encode_charges(s, lines);
        }
    }
}

/// A logged credit-control record: who asked, what, and (when remembered)
/// the answer. `None` for records of other kinds.
pub(super) fn decode_ccr_record(
    payload: &[u8],
) -> Result<Option<(Caller, CreditControlRequest, Option<RecordedAnswer>)>, DecodeError> {
    let mut r = Reader::new(payload);
    if r.u8()? != ENGINE_TAG || r.u8()? != REC_CCR {
        return Ok(None);
    }
    let caller = decode_caller(&mut r)?;
    let ccr = decode_ccr(&mut r)?;
    if r.is_empty() {
        return Ok(Some((caller, ccr, None)));
    }
    if r.u8()? != 1 {
        return Err(DecodeError::Invalid("record marker"));
    }
    let answer = decode_answer(&mut r)?;
    let charges = if r.bool()? {
        let account = r.account()?;
        Some((account, decode_charges(&mut r)?))
    } else {
        None
    };
    r.finish()?;
    Ok(Some((
        caller,
        ccr,
        Some(RecordedAnswer { answer, charges }),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_forgotten_a_window_later_or_when_the_cap_is_reached() {
        let mut index = AnswerIndex::default();
        let k = |n: u32| index.key(AccountId(1), "s", n);
        let (k1, k2, k3, k4) = (k(1), k(2), k(3), k(4));
        index.insert(Timestamp(1_000), k1, 11);
        // Stamped ahead of the clock: kept until its own time + window.
        index.insert(Timestamp(9_000), k2, 12);
        index.insert(Timestamp(2_000), k3, 13);
        assert_eq!(index.len(), 3);
        index.forget(Timestamp(1_000 + 5_000), 5_000);
        assert_eq!(index.get(k1), None);
        assert_eq!(index.get(k3), Some(13));
        assert_eq!(index.forgotten_up_to(), Timestamp(1_000));
        index.forget(Timestamp(7_000), 5_000);
        assert_eq!((index.get(k2), index.get(k3)), (Some(12), None));
        index.forget(Timestamp(14_000), 5_000);
        assert_eq!(index.len(), 0);
        assert_eq!(index.forgotten_up_to(), Timestamp(9_000));
        // The cap forgets the oldest at once, and says so.
        index.set_cap(2);
        index.insert(Timestamp(20_000), k1, 21);
        index.insert(Timestamp(20_001), k2, 22);
        index.insert(Timestamp(20_002), k4, 24);
        assert_eq!(index.len(), 2);
        assert_eq!(index.get(k1), None);
        assert_eq!(index.forgotten_up_to(), Timestamp(20_000));
    }

    /// The index grows without rehashing everything at once, and finds
    /// exactly what a plain map would while it moves entries over: inserts
    /// in time order and some stamped ahead, forgetting as the clock runs.
    #[test]
    fn the_index_grows_a_few_entries_at_a_time_and_loses_nothing() {
        let mut index = AnswerIndex::default();
        let mut reference: std::collections::HashMap<AnswerKey, (Timestamp, u64)> =
            Default::default();
        let window = 50_000;
        let mut saw_growing = 0;
        for i in 0..300_000u64 {
            let now = Timestamp(1_000_000 + i);
            // Now and then stamped ahead: the next few go to `ahead`.
            let at = if i % 97 == 0 { now.plus_ms(7) } else { now };
            let key = index.key(AccountId(7), "s", i as u32);
            index.insert(at, key, i);
            reference.insert(key, (at, i));
            if i % 10 == 0 {
                index.forget(now, window);
                reference.retain(|_, (at, _)| at.plus_ms(window) > now);
            }
            if index.map.growing() {
                saw_growing += 1;
            }
            if i % 4_999 == 0 {
                assert_eq!(index.len(), reference.len(), "at {i}");
                for (k, (_, lsn)) in &reference {
                    assert_eq!(index.get(*k), Some(*lsn), "at {i}");
                }
            }
        }
        // Tables were emptied over many inserts, not at once.
        assert!(saw_growing > 1_000, "{saw_growing}");
        assert!(!index.map.growing() || index.map.old.len() < index.len());
        assert_eq!(index.len(), reference.len());
        for (k, (_, lsn)) in &reference {
            assert_eq!(index.get(*k), Some(*lsn));
        }
        let gone = index.key(AccountId(7), "s", 1);
        assert_eq!(index.get(gone), None);
    }

    #[test]
    fn recent_records_are_found_by_position_and_bounded() {
        let mut recent = RecentRecords::default();
        for lsn in 1..=5000u64 {
            recent.push(lsn, Timestamp(lsn), &vec![(lsn % 251) as u8; 700]);
        }
        assert_eq!(
            recent.get(77).map(|(at, b)| (at, b.len(), b[0])),
            Some((Timestamp(77), 700, 77))
        );
        assert_eq!(recent.get(0), None);
        assert_eq!(recent.get(5001), None);
        recent.bound(2 << 20);
        assert!(recent.get(1).is_none(), "the oldest went");
        assert_eq!(
            recent.get(5000).map(|(_, b)| b[0]),
            Some((5000 % 251) as u8)
        );
        assert!(recent.bytes <= 2 << 20);
    }
}
