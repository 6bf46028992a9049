//! The in-memory ledger: a sans-IO, single-writer state machine.
//!
//! [`Ledger::apply`] takes the time and one [`Operation`] and returns its
//! result. It never reads a clock, a file or a socket, so replaying the same
//! operations with the same times rebuilds the same state, byte for byte.
//!
//! Draw order when reserving: the account's own eligible buckets first, then
//! (for accounts that draw on their parent) the parent's, and so on up. Within
//! one account: buckets restricted to the request's service before
//! unrestricted ones, then higher priority, then earliest expiry, then lowest
//! bucket id.

use crate::amount::Amount;
use crate::command::{
    BucketSpec, Command, CreditKind, Hold, Holds, InvalidInput, LedgerError, OpResult, Operation,
    Outcome, BUCKET_SERVICES_MAX, REASON_LEN_MAX,
};
use crate::period::Period;
use crate::types::{
    AccountId, AccountStatus, BucketId, OpId, ReservationId, ServiceId, Timestamp, Unit,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Most levels in an account hierarchy (organisation is level 1).
pub const DEPTH_MAX: usize = 8;
/// Most buckets one account may hold.
pub const BUCKETS_PER_ACCOUNT_MAX: usize = 64;
/// Most spend controls one account may hold (units × period kinds).
pub const LIMITS_PER_ACCOUNT_MAX: usize = 64;
/// Most holds one reservation may have (every bucket on every level).
pub const HOLDS_MAX: usize = DEPTH_MAX * BUCKETS_PER_ACCOUNT_MAX;
/// Most items one sweep expires, so one operation's work stays bounded.
pub const SWEEP_ITEMS_MAX: usize = 4096;
/// Longest idempotency window: 7 days.
pub const WINDOW_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Most op ids [`Ledger::reserve_ops`] sizes the table for at once (about
/// 1.3 GB of table; more grows as usual).
pub const OPS_RESERVE_MAX: u64 = 16 << 20;
/// Audit entries per chunk of the in-memory audit buffer.
const AUDIT_CHUNK: usize = 4096;
/// Default idempotency window: 10 minutes, longer than any client's retry
/// schedule (Diameter Tx timers are seconds).
pub const WINDOW_MS_DEFAULT: u64 = 10 * 60 * 1000;

/// A fast, deterministic hasher for the ledger's integer keys. Keys are ids
/// issued by operators and the ledger, not attacker-chosen strings.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
}

/// Hash maps keyed by ledger ids.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
/// Hash sets of ledger ids.
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Rarely-set bucket terms, boxed so a plain bucket stays small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Terms {
    pub valid_from: Timestamp,
    pub valid_until: Timestamp,
    pub services: Box<[ServiceId]>,
    pub credit_limit: Amount,
}

/// A balance in one unit on one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    pub id: BucketId,
    pub unit: Unit,
    pub amount: Amount,
    pub held: Amount,
    pub priority: i16,
    pub expired: bool,
    pub terms: Option<Box<Terms>>,
}

impl Bucket {
    fn credit_limit(&self) -> Amount {
        self.terms.as_ref().map_or(Amount::ZERO, |t| t.credit_limit)
    }
    fn valid_from(&self) -> Timestamp {
        self.terms.as_ref().map_or(Timestamp(0), |t| t.valid_from)
    }
    fn valid_until(&self) -> Timestamp {
        self.terms
            .as_ref()
            .map_or(Timestamp::NEVER, |t| t.valid_until)
    }
    fn services(&self) -> &[ServiceId] {
        self.terms.as_ref().map_or(&[], |t| &t.services)
    }
    /// What may still be reserved: amount − held + credit limit.
    fn free(&self) -> Amount {
        Amount::from_nanos(self.amount.nanos() - self.held.nanos() + self.credit_limit().nanos())
    }
    fn is_plain(&self) -> bool {
        self.terms.is_none() && self.priority == 0
    }
    /// Draw-order rank for a request, or `None` when the bucket cannot pay.
    fn rank(&self, unit: Unit, service: Option<ServiceId>, now: Timestamp) -> Option<DrawKey> {
        if self.unit != unit || self.expired {
            return None;
        }
        let mut restricted = false;
        if let Some(t) = &self.terms {
            if now < t.valid_from || now >= t.valid_until {
                return None;
            }
            if !t.services.is_empty() {
                match service {
                    Some(s) if t.services.contains(&s) => restricted = true,
                    _ => return None,
                }
            }
        }
        if !self.free().is_positive() {
            return None;
        }
        Some(DrawKey {
            general: !restricted,
            priority: -(self.priority as i32),
            valid_until: self.valid_until(),
            id: self.id,
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DrawKey {
    general: bool,
    priority: i32,
    valid_until: Timestamp,
    id: BucketId,
}

/// A spend control: a cap on what an account's subtree may hold plus
/// spend in one unit, per period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    pub unit: Unit,
    pub cap: Amount,
    /// Debited in the subtree during the period from `period_start`.
    pub used: Amount,
    /// Held by the open reservations that count against it: the same for
    /// every control of one account and unit.
    pub held: Amount,
    pub period: Period,
    /// Soft: reported, never refusing.
    pub soft: bool,
    /// The period `used` counts: rolled into the current one lazily, by
    /// the first operation at or after `period_end` that touches it.
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    /// Alert thresholds, percent of the cap, increasing.
    pub alerts: Box<[u8]>,
    /// Bit i set: `alerts[i]` has fired in this period.
    pub fired: u8,
}

impl Limit {
    /// Debited in the period that contains `now`.
    fn used_at(&self, now: Timestamp) -> Amount {
        if now >= self.period_end {
            Amount::ZERO
        } else {
            self.used
        }
    }
    fn headroom_at(&self, now: Timestamp) -> Amount {
        let left = self.cap.nanos() - self.used_at(now).nanos() - self.held.nanos();
        Amount::from_nanos(left.max(0))
    }
    /// Starts the period that contains `now` if the stored one has ended:
    /// usage committed from then on counts in the new period, whenever its
    /// reservation was made.
    fn roll(&mut self, now: Timestamp) {
        if now >= self.period_end {
            let (start, end) = self.period.bounds(now);
            self.used = Amount::ZERO;
            self.period_start = start;
            self.period_end = end;
            self.fired = 0;
        }
    }
    /// Whether the period's usage has reached `pct` percent of the cap
    /// (anything used reaches every threshold of a zero cap).
    fn reached(&self, pct: u8) -> bool {
        self.used.is_positive() && self.used.nanos() * 100 >= self.cap.nanos() * pct as i128
    }
    /// Marks the thresholds newly reached and returns them as a bit set
    /// over `alerts` (no allocation: this runs on every commit).
    fn newly_reached(&mut self) -> u8 {
        let mut fresh = 0u8;
        for (i, pct) in self.alerts.iter().enumerate() {
            if self.fired & (1 << i) == 0 && self.reached(*pct) {
                fresh |= 1 << i;
            }
        }
        self.fired |= fresh;
        fresh
    }
}

/// An account: its place in the hierarchy, status, buckets and caps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub parent: Option<AccountId>,
    pub status: AccountStatus,
    pub draws_on_parent: bool,
    pub depth: u8,
    pub buckets: Vec<Bucket>,
    /// Boxed because few accounts have caps: an idle account carries one
    /// pointer instead of an empty `Vec`'s three words.
    #[allow(clippy::box_collection)]
    pub limits: Option<Box<Vec<Limit>>>,
    /// The checkpoint epoch this account was last changed in
    /// ([`Dirty::epoch`]); 0 when clean. An account marked with the epoch of
    /// the checkpoint being encoded still holds the state that checkpoint
    /// must write.
    pub mark: u32,
}

impl Account {
    fn bucket_mut(&mut self, id: BucketId) -> Option<&mut Bucket> {
        self.buckets.iter_mut().find(|b| b.id == id)
    }
    /// Adds a bucket growing the list by exactly one: most accounts hold
    /// one or two buckets, and `Vec`'s default growth would reserve four.
    fn push_bucket(&mut self, bucket: Bucket) {
        self.buckets.reserve_exact(1);
        self.buckets.push(bucket);
    }

    pub(crate) fn limits(&self) -> &[Limit] {
        self.limits.as_deref().map_or(&[], |v| v.as_slice())
    }
    /// Every control of the account in `unit`.
    fn limits_mut(&mut self, unit: Unit) -> impl Iterator<Item = &mut Limit> {
        self.limits
            .iter_mut()
            .flat_map(|v| v.iter_mut())
            .filter(move |l| l.unit == unit)
    }
}

/// Credit set aside for an in-flight session or request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub account: AccountId,
    pub unit: Unit,
    pub remaining: Amount,
    pub expires_at: Timestamp,
    pub holds: Holds,
    pub limit_accounts: Vec<AccountId>,
}

/// A remembered result, so a retry gets the original answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpEntry {
    pub digest: u64,
    pub at: Timestamp,
    pub result: OpResult,
    /// The checkpoint epoch it was recorded in ([`Dirty::epoch`]; 0 when
    /// restored): a checkpoint writes only the entries of its own epoch,
    /// not one recorded again (after it was forgotten) since it began.
    pub epoch: u32,
}

/// What kind of change an audit entry records.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// A bucket was created with an opening amount.
    Grant,
    /// A top-up credit.
    TopUp,
    /// A refund credit.
    Refund,
    /// A manual adjustment.
    Adjust,
    /// A committed debit.
    Debit,
    /// Credit forfeited because its bucket expired.
    Expire,
}

/// One change to one bucket's amount, in ledger order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the ledger's audit sequence (1, 2, ...).
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// The operation that caused it ([`OpId::SERVER`] for sweeps).
    pub op: OpId,
    /// The account owning the bucket.
    pub account: AccountId,
    /// The bucket.
    pub bucket: BucketId,
    /// The bucket's unit.
    pub unit: Unit,
    /// What happened.
    pub kind: AuditKind,
    /// The signed change of the bucket's amount.
    pub delta: Amount,
    /// The bucket's amount afterwards.
    pub balance_after: Amount,
    /// The reservation debited, for debits.
    pub reservation: Option<ReservationId>,
    /// The operator's reason, for credits and adjustments.
    pub reason: Option<Arc<str>>,
}

/// A bucket as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketView {
    /// Its id.
    pub id: BucketId,
    /// Its unit.
    pub unit: Unit,
    /// Its amount (negative only within the credit limit).
    pub amount: Amount,
    /// What reservations hold of it.
    pub held: Amount,
    /// What may still be reserved: amount − held + credit limit (0 once expired).
    pub available: Amount,
    /// The overdraft allowed.
    pub credit_limit: Amount,
    /// Start of its validity.
    pub valid_from: Timestamp,
    /// End of its validity.
    pub valid_until: Timestamp,
    /// Its draw priority (higher first).
    pub priority: i16,
    /// Services it may pay for (empty: any).
    pub services: Vec<ServiceId>,
    /// True once swept as expired.
    pub expired: bool,
}

/// Alerts kept for subscribers to read after a reconnect or a restart.
pub const ALERTS_KEPT: usize = 4096;

/// A spend control's usage crossed one of its alert thresholds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Position in the ledger's alert sequence (1, 2, ...).
    pub seq: u64,
    /// When the commit that crossed it happened.
    pub at: Timestamp,
    /// The account the control is on.
    pub account: AccountId,
    /// The control's unit.
    pub unit: Unit,
    /// The control's period kind ([`Period::kind`]).
    pub period: u8,
    /// The period it was crossed in.
    pub period_start: Timestamp,
    /// The threshold crossed, percent of the cap.
    pub threshold_pct: u8,
    /// The period's usage after the commit.
    pub used: Amount,
    /// The cap.
    pub cap: Amount,
    /// Whether the control is soft (alerts only).
    pub soft: bool,
}

/// A spend control as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitView {
    /// Unit capped.
    pub unit: Unit,
    /// The cap.
    pub cap: Amount,
    /// Debited in the subtree in the current period (since the cap was
    /// set, for a lifetime cap).
    pub used: Amount,
    /// Held by open reservations in the subtree.
    pub held: Amount,
    /// When the count starts over.
    pub period: Period,
    /// Soft: reported, never refusing.
    pub soft: bool,
    /// The current period: start (inclusive) and end (exclusive).
    pub period_start: Timestamp,
    /// See `period_start`.
    pub period_end: Timestamp,
    /// Alert thresholds, percent of the cap.
    pub alerts: Vec<u8>,
}

/// What a reservation could get, and what bounds it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Availability {
    /// What could be reserved.
    pub amount: Amount,
    /// The hard spend control (its account and [`Period::kind`]) that
    /// bounds `amount` below the credit, if one does.
    pub bound_by: Option<(AccountId, u8)>,
}

/// An account as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountView {
    /// Its id.
    pub id: AccountId,
    /// Its parent.
    pub parent: Option<AccountId>,
    /// Its status.
    pub status: AccountStatus,
    /// Whether it draws on its parent's buckets.
    pub draws_on_parent: bool,
    /// Its buckets.
    pub buckets: Vec<BucketView>,
    /// Its caps.
    pub limits: Vec<LimitView>,
}

/// A reservation as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationView {
    /// Its id.
    pub id: ReservationId,
    /// The reserving account.
    pub account: AccountId,
    /// Its unit.
    pub unit: Unit,
    /// What it still holds.
    pub remaining: Amount,
    /// When it lapses.
    pub expires_at: Timestamp,
    /// Where it holds it.
    pub holds: Holds,
}

/// Reservation expiry times, earliest first.
///
/// Resolved reservations are dropped lazily: reserve pushes in O(1) when
/// expiries arrive in order, commit does not search. The head is kept live
/// (stale heads are popped as reservations resolve) so "is a sweep due" and
/// the sweep's order depend only on live reservations, and the heap is
/// rebuilt when stale entries outnumber live ones, so memory stays O(live).
#[derive(Debug, Default)]
pub(crate) struct ExpiryQueue {
    heap: BinaryHeap<Reverse<(Timestamp, ReservationId)>>,
}

impl ExpiryQueue {
    pub(crate) fn push(&mut self, at: Timestamp, id: ReservationId) {
        self.heap.push(Reverse((at, id)));
    }

    /// The earliest live expiry.
    pub(crate) fn head(&self) -> Option<(Timestamp, ReservationId)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    /// Restores "head is live" after reservations resolved; compacts when
    /// mostly stale.
    pub(crate) fn settle(&mut self, live: &IdMap<ReservationId, Reservation>) {
        if self.heap.len() > 2 * live.len() + 4096 {
            self.heap = live
                .iter()
                .map(|(id, r)| Reverse((r.expires_at, *id)))
                .collect();
            return;
        }
        while let Some(Reverse((at, id))) = self.heap.peek() {
            if live.get(id).is_some_and(|r| r.expires_at == *at) {
                break;
            }
            self.heap.pop();
        }
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (Timestamp, ReservationId)> + '_ {
        self.heap.iter().map(|Reverse(e)| *e)
    }
}

/// What changed since the last checkpoint, for incremental snapshots.
///
/// Accounts carry a dirty flag and are listed once. Reservations issued
/// since the last checkpoint are not tracked at all (they are found by id
/// range at checkpoint time), so a reservation that opens and closes between
/// two checkpoints costs nothing here.
///
/// A checkpoint is taken in two parts so the writer never stalls on it:
/// [`Ledger::checkpoint_begin`] swaps the change lists out (O(1)) and the
/// epoch on; [`Ledger::checkpoint_step`] encodes a slice of them at a time
/// between batches. Until an entry is encoded, the first change to it
/// encodes its old state first (copy on write, in [`touch`] and
/// [`Dirty::reservation_changing`]), so the checkpoint is the state exactly
/// as it was when it began.
#[derive(Debug)]
pub(crate) struct Dirty {
    pub accounts: Vec<AccountId>,
    pub reservations: IdSet<ReservationId>,
    /// Op ids recorded since the last checkpoint began, with when.
    pub ops: Vec<(Timestamp, OpId)>,
    /// Reservation ids from here on were issued after the last checkpoint.
    pub fresh_reservations_from: u64,
    /// Accounts changed since the last checkpoint began carry this mark.
    pub epoch: u32,
    /// The checkpoint being encoded, if any.
    pub pending: Option<Box<crate::snapshot::PendingCheckpoint>>,
    /// Planted bug for the simulator's mutation runs: no copy on write.
    pub no_copy: bool,
}

impl Default for Dirty {
    fn default() -> Self {
        Dirty {
            accounts: Vec::new(),
            reservations: IdSet::default(),
            ops: Vec::new(),
            fresh_reservations_from: 0,
            epoch: 1,
            pending: None,
            no_copy: false,
        }
    }
}

impl Dirty {
    /// Call before a reservation is changed or removed: saves its state for
    /// the checkpoint being encoded if that one still needs it, and marks it
    /// for the next.
    fn reservation_changing(
        &mut self,
        reservations: &IdMap<ReservationId, Reservation>,
        id: ReservationId,
    ) {
        let current = reservations.get(&id);
        if let Some(pending) = self.pending.as_mut() {
            if !self.no_copy {
                pending.save_reservation(id, current);
            }
        }
        if current.is_some() && id.0 < self.fresh_reservations_from {
            self.reservations.insert(id);
        }
    }
}

/// Looks up an account for change and marks it for the next checkpoint
/// (saving its state first for the checkpoint being encoded, if that one
/// still needs it).
fn touch<'a>(
    accounts: &'a mut IdMap<AccountId, Account>,
    dirty: &mut Dirty,
    id: &AccountId,
) -> Option<&'a mut Account> {
    let account = accounts.get_mut(id)?;
    if account.mark != dirty.epoch {
        if let Some(pending) = dirty.pending.as_mut() {
            if account.mark == pending.epoch && !dirty.no_copy {
                pending.save_account(*id, account);
            }
        }
        account.mark = dirty.epoch;
        dirty.accounts.push(*id);
    }
    Some(account)
}

/// The ledger state machine. See the module docs.
#[derive(Debug)]
pub struct Ledger {
    pub(crate) accounts: IdMap<AccountId, Account>,
    pub(crate) reservations: IdMap<ReservationId, Reservation>,
    /// Open reservations by the account that made them, so one account's
    /// list is a range read, never a scan of every tenant's reservations.
    pub(crate) by_account: BTreeSet<(AccountId, ReservationId)>,
    pub(crate) reservation_expiry: ExpiryQueue,
    pub(crate) bucket_expiry: BTreeSet<(Timestamp, AccountId, BucketId)>,
    pub(crate) ops: IdMap<OpId, OpEntry>,
    pub(crate) op_order: VecDeque<(Timestamp, OpId)>,
    pub(crate) window_ms: u64,
    /// Op ids recorded before this time are forgotten (see `evict_ops`).
    pub(crate) ops_forgotten_below: Timestamp,
    pub(crate) next_bucket: u64,
    pub(crate) next_reservation: u64,
    pub(crate) audit_seq: u64,
    /// Audit entries since the last drain, in chunks so that growing never
    /// copies what is already there (a replay may produce millions).
    pub(crate) audit: Vec<Vec<AuditEntry>>,
    /// The most recent alerts, oldest first, at most [`ALERTS_KEPT`].
    pub(crate) alerts: VecDeque<Alert>,
    /// Sequence number of the next alert (1, 2, ...).
    pub(crate) next_alert: u64,
    pub(crate) dirty: Dirty,
    scratch: Vec<(AccountId, usize, DrawKey)>,
    digest_buf: Vec<u8>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

/// Where a reservation would draw from, before anything changes.
struct DrawPlan {
    total_free: Amount,
    /// The tightest hard control: its account, headroom and period kind.
    headroom: Option<(AccountId, Amount, u8)>,
    limit_accounts: Vec<AccountId>,
}

impl Ledger {
    /// An empty ledger with the default idempotency window.
    pub fn new() -> Ledger {
        Ledger {
            accounts: IdMap::default(),
            reservations: IdMap::default(),
            by_account: BTreeSet::new(),
            reservation_expiry: ExpiryQueue::default(),
            bucket_expiry: BTreeSet::new(),
            ops: IdMap::default(),
            op_order: VecDeque::new(),
            window_ms: WINDOW_MS_DEFAULT,
            ops_forgotten_below: Timestamp(0),
            next_bucket: 1,
            next_reservation: 1,
            audit_seq: 0,
            audit: Vec::new(),
            alerts: VecDeque::new(),
            next_alert: 1,
            dirty: Dirty::default(),
            scratch: Vec::new(),
            digest_buf: Vec::with_capacity(256),
        }
    }

    /// Applies one operation at time `now` and returns its result.
    ///
    /// A retry (same op id, same content) returns the stored result without
    /// changing anything; the same op id with other content gets
    /// [`LedgerError::OpIdReused`]. A refused operation changes nothing except
    /// that its refusal is remembered for retries.
    pub fn apply(&mut self, now: Timestamp, op: &Operation) -> OpResult {
        self.evict_ops(now);
        if matches!(op.command, Command::Sweep) {
            if op.op != OpId::SERVER {
                return Err(LedgerError::Invalid(InvalidInput::SweepOpId));
            }
            return Ok(self.sweep(now));
        }
        if op.op == OpId::SERVER {
            return Err(LedgerError::InvalidOpId);
        }
        // Encoding into a reused buffer and hashing it in one pass is much
        // cheaper than hashing field by field.
        let mut encoded = std::mem::take(&mut self.digest_buf);
        encoded.clear();
        op.command.encode(&mut encoded);
        let digest = crate::codec::digest_of(&encoded);
        self.digest_buf = encoded;
        if let Some(entry) = self.ops.get(&op.op) {
            return if entry.digest == digest {
                entry.result.clone()
            } else {
                Err(LedgerError::OpIdReused)
            };
        }
        let result = self.execute(now, op.op, &op.command);
        self.ops.insert(
            op.op,
            OpEntry {
                digest,
                at: now,
                result: result.clone(),
                epoch: self.dirty.epoch,
            },
        );
        self.op_order.push_back((now, op.op));
        self.dirty.ops.push((now, op.op));
        result
    }

    /// Applies a command without recording an op id: for a caller that
    /// deduplicates at its own level (the charging engine answers
    /// retransmissions from its stored answers and replays deterministically),
    /// so the ledger's idempotency table need not hold its internal steps.
    /// `cause` identifies the caller's request in the audit entries the
    /// command writes.
    pub fn apply_unrecorded(&mut self, now: Timestamp, cause: OpId, command: &Command) -> OpResult {
        self.evict_ops(now);
        if matches!(command, Command::Sweep) {
            return Ok(self.sweep(now));
        }
        self.execute(now, cause, command)
    }

    /// Sizes the idempotency table for `n` more op ids (at most
    /// [`OPS_RESERVE_MAX`]), so recording them never grows it by doubling.
    pub fn reserve_ops(&mut self, n: u64) {
        let n = n.min(OPS_RESERVE_MAX) as usize;
        self.ops.reserve(n);
        self.op_order.reserve(n);
    }

    /// True when `op` would be answered from the idempotency table (a retry
    /// or a reused id) and so changes nothing.
    pub fn is_known_op(&self, op: OpId) -> bool {
        op != OpId::SERVER && self.ops.contains_key(&op)
    }

    /// Forgets op ids older than the idempotency window. A pure function of
    /// time, so running it early (before deciding whether to log) is safe.
    pub fn forget_expired_ops(&mut self, now: Timestamp) {
        self.evict_ops(now);
    }

    pub(crate) fn evict_ops(&mut self, now: Timestamp) {
        // Everything at or before now − window is forgotten: remember the
        // bound, so a restore never brings back an id forgotten under a
        // shorter window than the one in force at the checkpoint.
        if let Some(bound) = now.0.checked_sub(self.window_ms) {
            self.ops_forgotten_below = self.ops_forgotten_below.max(Timestamp(bound + 1));
        }
        let due = self
            .op_order
            .front()
            .is_some_and(|(at, _)| at.plus_ms(self.window_ms) <= now);
        if let Some(pending) = self.dirty.pending.as_mut().filter(|_| due) {
            pending.save_ops_before_eviction(&self.ops, self.window_ms, now);
        }
        while let Some(&(at, op)) = self.op_order.front() {
            if at.plus_ms(self.window_ms) > now {
                break;
            }
            self.op_order.pop_front();
            self.ops.remove(&op);
        }
    }

    fn execute(&mut self, now: Timestamp, op: OpId, command: &Command) -> OpResult {
        match command {
            Command::CreateAccount {
                account,
                parent,
                draws_on_parent,
            } => self.create_account(*account, *parent, *draws_on_parent),
            Command::SetStatus { account, status } => self.set_status(*account, *status),
            Command::SetLimit {
                account,
                unit,
                cap,
                period,
                soft,
                alerts,
            } => self.set_limit(now, *account, *unit, *cap, (*period, *soft, alerts)),
            Command::GrantBucket { account, spec } => self.grant_bucket(now, op, *account, spec),
            Command::Credit {
                account,
                unit,
                amount,
                bucket,
                kind,
                reason,
            } => self.credit(now, op, *account, *unit, *amount, *bucket, *kind, reason),
            Command::Adjust {
                account,
                bucket,
                delta,
                reason,
            } => self.adjust(now, op, *account, *bucket, *delta, reason),
            Command::Reserve {
                account,
                unit,
                amount,
                min_amount,
                service,
                expires_at,
            } => self.reserve(
                now,
                *account,
                *unit,
                *amount,
                *min_amount,
                *service,
                *expires_at,
            ),
            Command::Commit {
                reservation,
                used,
                release_rest,
            } => self.commit(now, op, *reservation, *used, *release_rest),
            Command::Release { reservation } => self.release(now, *reservation),
            Command::Sweep => Ok(self.sweep(now)),
            Command::SetIdempotencyWindow { window_ms } => {
                if *window_ms > WINDOW_MS_MAX {
                    return Err(LedgerError::Invalid(InvalidInput::WindowTooLong));
                }
                if *window_ms == 0 {
                    return Err(LedgerError::Invalid(InvalidInput::WindowZero));
                }
                self.window_ms = *window_ms;
                Ok(Outcome::WindowSet)
            }
        }
    }

    fn account_ref(&self, id: AccountId) -> Result<&Account, LedgerError> {
        self.accounts
            .get(&id)
            .ok_or(LedgerError::AccountNotFound(id))
    }

    fn account_mut(&mut self, id: AccountId) -> Result<&mut Account, LedgerError> {
        touch(&mut self.accounts, &mut self.dirty, &id).ok_or(LedgerError::AccountNotFound(id))
    }

    fn create_account(
        &mut self,
        id: AccountId,
        parent: Option<AccountId>,
        draws_on_parent: bool,
    ) -> OpResult {
        if self.accounts.contains_key(&id) {
            return Err(LedgerError::AccountExists(id));
        }
        let depth = match parent {
            None => 1,
            Some(p) if p == id => return Err(LedgerError::Invalid(InvalidInput::OwnParent)),
            Some(p) => {
                let parent = self.account_ref(p)?;
                if parent.status == AccountStatus::Closed {
                    return Err(LedgerError::AccountNotActive {
                        account: p,
                        status: parent.status,
                    });
                }
                if parent.depth as usize >= DEPTH_MAX {
                    return Err(LedgerError::HierarchyTooDeep(DEPTH_MAX));
                }
                parent.depth + 1
            }
        };
        self.accounts.insert(
            id,
            Account {
                parent,
                status: AccountStatus::Active,
                draws_on_parent: draws_on_parent && parent.is_some(),
                depth,
                buckets: Vec::new(),
                limits: None,
                mark: self.dirty.epoch,
            },
        );
        self.dirty.accounts.push(id);
        Ok(Outcome::AccountCreated)
    }

    fn set_status(&mut self, id: AccountId, status: AccountStatus) -> OpResult {
        let account = self.account_ref(id)?;
        if account.status == AccountStatus::Closed {
            return Err(LedgerError::Invalid(InvalidInput::ClosingIsFinal));
        }
        // A closed account's balances never change again, so it may not be
        // closed while reservations (its own or a child's) hold its credit,
        // nor while it or an account below it has a reservation open: the
        // usage owed on it could no longer be collected.
        if status == AccountStatus::Closed
            && (account.buckets.iter().any(|b| b.held.is_positive())
                || self.subtree_has_reservations(id))
        {
            return Err(LedgerError::Invalid(
                InvalidInput::CloseWithOpenReservations,
            ));
        }
        self.account_mut(id)?.status = status;
        Ok(Outcome::StatusSet)
    }

    /// Whether `root` or an account below it made a reservation still
    /// open. Closing is rare: this walks the open reservations once, each
    /// up at most [`DEPTH_MAX`] levels.
    fn subtree_has_reservations(&self, root: AccountId) -> bool {
        if self
            .by_account
            .range((root, ReservationId(0))..=(root, ReservationId(u64::MAX)))
            .next()
            .is_some()
        {
            return true;
        }
        let mut last = None;
        for (account, _) in &self.by_account {
            if last == Some(*account) {
                continue;
            }
            last = Some(*account);
            let mut current = self.accounts.get(account).and_then(|a| a.parent);
            for _ in 0..DEPTH_MAX {
                match current {
                    Some(a) if a == root => return true,
                    Some(a) => current = self.accounts.get(&a).and_then(|x| x.parent),
                    None => break,
                }
            }
        }
        false
    }

    fn set_limit(
        &mut self,
        now: Timestamp,
        id: AccountId,
        unit: Unit,
        cap: Option<Amount>,
        (period, soft, alerts): (Period, bool, &[u8]),
    ) -> OpResult {
        self.account_ref(id)?;
        if cap.is_some_and(|c| c.is_negative()) {
            return Err(LedgerError::Invalid(InvalidInput::CapNegative));
        }
        period.validate().map_err(LedgerError::Invalid)?;
        if !crate::command::thresholds_valid(alerts) {
            return Err(LedgerError::Invalid(InvalidInput::Thresholds));
        }
        let account = self.account_mut(id)?;
        let kind = period.kind();
        let (start, end) = period.bounds(now);
        // Every control of an account and unit counts the same open
        // reservations, so a new one starts with what its siblings hold.
        let held = account
            .limits()
            .iter()
            .find(|l| l.unit == unit)
            .map_or(Amount::ZERO, |l| l.held);
        let same = account.limits_mut(unit).find(|l| l.period.kind() == kind);
        match (cap, same) {
            (Some(cap), Some(limit)) => {
                limit.roll(now);
                // New terms for the same period keep what it has counted
                // (a budget raised mid-month); another period starts over.
                if (limit.period_start, limit.period_end) != (start, end) {
                    limit.used = Amount::ZERO;
                }
                limit.cap = cap;
                limit.period = period;
                limit.soft = soft;
                limit.period_start = start;
                limit.period_end = end;
                // A threshold that fired this period and is still reached
                // under the new terms does not fire again.
                let mut fired = 0u8;
                for (i, pct) in alerts.iter().enumerate() {
                    let before = limit.alerts.iter().position(|p| p == pct);
                    if before.is_some_and(|j| limit.fired & (1 << j) != 0) && limit.reached(*pct) {
                        fired |= 1 << i;
                    }
                }
                limit.alerts = alerts.into();
                limit.fired = fired;
            }
            (Some(cap), None) => {
                let limits = account.limits.get_or_insert_with(Default::default);
                if limits.len() >= LIMITS_PER_ACCOUNT_MAX {
                    return Err(LedgerError::Invalid(InvalidInput::TooManyLimits));
                }
                limits.push(Limit {
                    unit,
                    cap,
                    used: Amount::ZERO,
                    held,
                    period,
                    soft,
                    period_start: start,
                    period_end: end,
                    alerts: alerts.into(),
                    fired: 0,
                })
            }
            (None, _) => {
                if let Some(limits) = account.limits.as_mut() {
                    limits.retain(|l| !(l.unit == unit && l.period.kind() == kind));
                }
                if account.limits.as_ref().is_some_and(|l| l.is_empty()) {
                    account.limits = None;
                }
            }
        }
        Ok(Outcome::LimitSet)
    }

    fn raise_alert(&mut self, now: Timestamp, account: AccountId, pct: u8, limit: &Limit) {
        if self.alerts.len() == ALERTS_KEPT {
            self.alerts.pop_front();
        }
        self.alerts.push_back(Alert {
            seq: self.next_alert,
            at: now,
            account,
            unit: limit.unit,
            period: limit.period.kind(),
            period_start: limit.period_start,
            threshold_pct: pct,
            used: limit.used,
            cap: limit.cap,
            soft: limit.soft,
        });
        self.next_alert += 1;
    }

    /// Alerts with a sequence number above `after`, oldest first, at most
    /// `max` (the last [`ALERTS_KEPT`] are kept).
    pub fn alerts_after(&self, after: u64, max: usize) -> Vec<Alert> {
        let skip = after.saturating_add(1).saturating_sub(self.oldest_alert()) as usize;
        self.alerts.iter().skip(skip).take(max).cloned().collect()
    }

    /// Sequence number of the oldest alert kept (the next one's when none
    /// is kept).
    pub fn oldest_alert(&self) -> u64 {
        self.alerts.front().map_or(self.next_alert, |a| a.seq)
    }

    /// Sequence number of the newest alert (0: none yet).
    pub fn last_alert(&self) -> u64 {
        self.next_alert - 1
    }

    fn writable_account(&self, id: AccountId) -> Result<&Account, LedgerError> {
        let account = self.account_ref(id)?;
        if account.status == AccountStatus::Closed {
            return Err(LedgerError::AccountNotActive {
                account: id,
                status: account.status,
            });
        }
        Ok(account)
    }

    fn grant_bucket(
        &mut self,
        now: Timestamp,
        op: OpId,
        id: AccountId,
        spec: &BucketSpec,
    ) -> OpResult {
        if spec.amount.is_negative() {
            return Err(LedgerError::Invalid(InvalidInput::AmountNegative));
        }
        if spec.credit_limit.is_negative() {
            return Err(LedgerError::Invalid(InvalidInput::CreditLimitNegative));
        }
        if !spec.amount.in_range() || !spec.credit_limit.in_range() {
            return Err(LedgerError::BalanceOverflow);
        }
        if spec.valid_until <= spec.valid_from {
            return Err(LedgerError::Invalid(InvalidInput::ValidityWindow));
        }
        if spec.valid_until <= now {
            return Err(LedgerError::Invalid(InvalidInput::ExpiryNotAfterNow));
        }
        if spec.services.len() > BUCKET_SERVICES_MAX {
            return Err(LedgerError::Invalid(InvalidInput::TooManyServices));
        }
        let account = self.writable_account(id)?;
        if account.buckets.len() >= BUCKETS_PER_ACCOUNT_MAX {
            return Err(LedgerError::TooManyBuckets(BUCKETS_PER_ACCOUNT_MAX));
        }
        let bucket_id = BucketId(self.next_bucket);
        self.next_bucket += 1;
        let plain = spec.valid_from == Timestamp(0)
            && spec.valid_until == Timestamp::NEVER
            && spec.services.is_empty()
            && spec.credit_limit.is_zero();
        let mut services = spec.services.clone();
        services.sort_unstable();
        services.dedup();
        let bucket = Bucket {
            id: bucket_id,
            unit: spec.unit,
            amount: spec.amount,
            held: Amount::ZERO,
            priority: spec.priority,
            expired: false,
            terms: (!plain).then(|| {
                Box::new(Terms {
                    valid_from: spec.valid_from,
                    valid_until: spec.valid_until,
                    services: services.into_boxed_slice(),
                    credit_limit: spec.credit_limit,
                })
            }),
        };
        if spec.valid_until != Timestamp::NEVER {
            self.bucket_expiry.insert((spec.valid_until, id, bucket_id));
        }
        self.account_mut(id)?.push_bucket(bucket);
        if spec.amount.is_positive() {
            self.audit_push(
                now,
                op,
                id,
                bucket_id,
                spec.unit,
                AuditKind::Grant,
                spec.amount,
                spec.amount,
                None,
                None,
            );
        }
        Ok(Outcome::BucketGranted { bucket: bucket_id })
    }

    #[allow(clippy::too_many_arguments)]
    fn credit(
        &mut self,
        now: Timestamp,
        op: OpId,
        id: AccountId,
        unit: Unit,
        amount: Amount,
        bucket: Option<BucketId>,
        kind: CreditKind,
        reason: &Arc<str>,
    ) -> OpResult {
        if !amount.is_positive() {
            return Err(LedgerError::Invalid(InvalidInput::AmountNotPositive));
        }
        // Checked before a default bucket may be created, so a refusal
        // leaves nothing behind.
        if !amount.in_range() {
            return Err(LedgerError::BalanceOverflow);
        }
        if reason.len() > REASON_LEN_MAX {
            return Err(LedgerError::Invalid(InvalidInput::ReasonTooLong));
        }
        let account = self.writable_account(id)?;
        let target = match bucket {
            Some(b) => {
                let found = account
                    .buckets
                    .iter()
                    .find(|x| x.id == b && !x.expired)
                    .ok_or(LedgerError::BucketNotFound(b))?;
                if found.unit != unit {
                    return Err(LedgerError::UnitMismatch {
                        bucket: found.unit,
                        request: unit,
                    });
                }
                Some(b)
            }
            None => account
                .buckets
                .iter()
                .find(|x| x.unit == unit && x.is_plain() && !x.expired)
                .map(|x| x.id),
        };
        let bucket_id = match target {
            Some(b) => {
                let current = account
                    .buckets
                    .iter()
                    .find(|x| x.id == b)
                    .map(|x| x.amount)
                    .unwrap_or_default();
                current
                    .checked_add(amount)
                    .ok_or(LedgerError::BalanceOverflow)?;
                b
            }
            None => {
                if account.buckets.len() >= BUCKETS_PER_ACCOUNT_MAX {
                    return Err(LedgerError::TooManyBuckets(BUCKETS_PER_ACCOUNT_MAX));
                }
                let b = BucketId(self.next_bucket);
                self.next_bucket += 1;
                self.account_mut(id)?.push_bucket(Bucket {
                    id: b,
                    unit,
                    amount: Amount::ZERO,
                    held: Amount::ZERO,
                    priority: 0,
                    expired: false,
                    terms: None,
                });
                b
            }
        };
        let bucket = self
            .account_mut(id)?
            .bucket_mut(bucket_id)
            .ok_or(LedgerError::BucketNotFound(bucket_id))?;
        bucket.amount = bucket
            .amount
            .checked_add(amount)
            .ok_or(LedgerError::BalanceOverflow)?;
        let balance = bucket.amount;
        let audit_kind = match kind {
            CreditKind::TopUp => AuditKind::TopUp,
            CreditKind::Refund => AuditKind::Refund,
        };
        self.audit_push(
            now,
            op,
            id,
            bucket_id,
            unit,
            audit_kind,
            amount,
            balance,
            None,
            Some(reason.clone()),
        );
        Ok(Outcome::BalanceChanged {
            bucket: bucket_id,
            balance,
        })
    }

    fn adjust(
        &mut self,
        now: Timestamp,
        op: OpId,
        id: AccountId,
        bucket_id: BucketId,
        delta: Amount,
        reason: &Arc<str>,
    ) -> OpResult {
        if delta.is_zero() {
            return Err(LedgerError::Invalid(InvalidInput::DeltaZero));
        }
        if reason.len() > REASON_LEN_MAX {
            return Err(LedgerError::Invalid(InvalidInput::ReasonTooLong));
        }
        let account = self.writable_account(id)?;
        let bucket = account
            .buckets
            .iter()
            .find(|b| b.id == bucket_id && !b.expired)
            .ok_or(LedgerError::BucketNotFound(bucket_id))?;
        let new_amount = bucket
            .amount
            .checked_add(delta)
            .ok_or(LedgerError::BalanceOverflow)?;
        if delta.is_negative() && -delta > bucket.free() {
            return Err(LedgerError::InsufficientFunds {
                available: bucket.free().max(Amount::ZERO),
            });
        }
        let unit = bucket.unit;
        if let Some(b) = self.account_mut(id)?.bucket_mut(bucket_id) {
            b.amount = new_amount;
        }
        self.audit_push(
            now,
            op,
            id,
            bucket_id,
            unit,
            AuditKind::Adjust,
            delta,
            new_amount,
            None,
            Some(reason.clone()),
        );
        Ok(Outcome::BalanceChanged {
            bucket: bucket_id,
            balance: new_amount,
        })
    }

    /// Chain of account ids from `id` up to its root (inclusive), checked
    /// active, with the tightest cap in `unit` along it.
    fn plan(
        &mut self,
        now: Timestamp,
        id: AccountId,
        unit: Unit,
        service: Option<ServiceId>,
        need_active: bool,
    ) -> Result<DrawPlan, LedgerError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut plan = DrawPlan {
            total_free: Amount::ZERO,
            headroom: None,
            limit_accounts: Vec::new(),
        };
        let mut current = Some(id);
        let mut drawing = true;
        let mut levels = 0;
        let mut total: i128 = 0;
        let result = (|| {
            while let Some(acct_id) = current {
                levels += 1;
                if levels > DEPTH_MAX {
                    break;
                }
                let account = self.account_ref(acct_id)?;
                if need_active && account.status != AccountStatus::Active {
                    return Err(LedgerError::AccountNotActive {
                        account: acct_id,
                        status: account.status,
                    });
                }
                let mut counted = false;
                for limit in account.limits().iter().filter(|l| l.unit == unit) {
                    if !counted {
                        plan.limit_accounts.push(acct_id);
                        counted = true;
                    }
                    if limit.soft {
                        continue;
                    }
                    let headroom = limit.headroom_at(now);
                    if plan.headroom.is_none_or(|(_, h, _)| headroom < h) {
                        plan.headroom = Some((acct_id, headroom, limit.period.kind()));
                    }
                }
                if drawing {
                    let start = scratch.len();
                    for (index, bucket) in account.buckets.iter().enumerate() {
                        if let Some(key) = bucket.rank(unit, service, now) {
                            total += bucket.free().nanos();
                            scratch.push((acct_id, index, key));
                        }
                    }
                    scratch[start..].sort_unstable_by_key(|(_, _, key)| *key);
                    drawing = account.draws_on_parent;
                }
                current = account.parent;
            }
            Ok(())
        })();
        self.scratch = scratch;
        result?;
        plan.total_free = Amount::from_nanos(total.min(Amount::MAX.nanos()));
        Ok(plan)
    }

    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &mut self,
        now: Timestamp,
        id: AccountId,
        unit: Unit,
        amount: Amount,
        min_amount: Amount,
        service: Option<ServiceId>,
        expires_at: Timestamp,
    ) -> OpResult {
        if !amount.is_positive() {
            return Err(LedgerError::Invalid(InvalidInput::AmountNotPositive));
        }
        if !min_amount.is_positive() || min_amount > amount {
            return Err(LedgerError::Invalid(InvalidInput::MinAmount));
        }
        if expires_at <= now {
            return Err(LedgerError::Invalid(InvalidInput::ExpiryNotAfterNow));
        }
        let plan = self.plan(now, id, unit, service, true)?;
        let mut grant = amount.min(plan.total_free);
        if let Some((capped, headroom, period)) = plan.headroom {
            if headroom < min_amount && headroom < plan.total_free {
                return Err(LedgerError::LimitExceeded {
                    account: capped,
                    headroom,
                    period,
                });
            }
            grant = grant.min(headroom);
        }
        if grant < min_amount {
            return Err(LedgerError::InsufficientFunds { available: grant });
        }
        let reservation_id = ReservationId(self.next_reservation);
        self.next_reservation += 1;
        let mut holds = Holds::new();
        let mut left = grant;
        let scratch = std::mem::take(&mut self.scratch);
        for &(owner, index, _) in &scratch {
            if left.is_zero() {
                break;
            }
            let Some(bucket) = touch(&mut self.accounts, &mut self.dirty, &owner)
                .and_then(|a| a.buckets.get_mut(index))
            else {
                continue;
            };
            let take = bucket.free().min(left);
            bucket.held = Amount::from_nanos(bucket.held.nanos() + take.nanos());
            left = Amount::from_nanos(left.nanos() - take.nanos());
            holds.push(Hold {
                account: owner,
                bucket: bucket.id,
                amount: take,
            });
        }
        self.scratch = scratch;
        debug_assert!(left.is_zero(), "plan promised more than the buckets hold");
        for capped in &plan.limit_accounts {
            if let Some(account) = touch(&mut self.accounts, &mut self.dirty, capped) {
                for limit in account.limits_mut(unit) {
                    limit.held = Amount::from_nanos(limit.held.nanos() + grant.nanos());
                }
            }
        }
        self.reservations.insert(
            reservation_id,
            Reservation {
                account: id,
                unit,
                remaining: grant,
                expires_at,
                holds: holds.clone(),
                limit_accounts: plan.limit_accounts,
            },
        );
        self.reservation_expiry.push(expires_at, reservation_id);
        self.by_account.insert((id, reservation_id));
        Ok(Outcome::Reserved {
            reservation: reservation_id,
            granted: grant,
            holds,
        })
    }

    fn commit(
        &mut self,
        now: Timestamp,
        op: OpId,
        id: ReservationId,
        used: Amount,
        release_rest: bool,
    ) -> OpResult {
        let reservation = self
            .reservations
            .get(&id)
            .ok_or(LedgerError::ReservationNotFound(id))?;
        if now >= reservation.expires_at {
            return Err(LedgerError::ReservationExpired(id));
        }
        if used.is_negative() {
            return Err(LedgerError::Invalid(InvalidInput::UsedNegative));
        }
        if used > reservation.remaining {
            return Err(LedgerError::CommitExceedsReservation {
                remaining: reservation.remaining,
            });
        }
        let owner = self.account_ref(reservation.account)?;
        if owner.status == AccountStatus::Closed {
            return Err(LedgerError::AccountNotActive {
                account: reservation.account,
                status: owner.status,
            });
        }
        self.dirty.reservation_changing(&self.reservations, id);
        let mut reservation = self
            .reservations
            .remove(&id)
            .ok_or(LedgerError::ReservationNotFound(id))?;
        let mut debited = Holds::new();
        let mut left = used;
        for hold in reservation.holds.iter_mut() {
            if left.is_zero() {
                break;
            }
            let take = hold.amount.min(left);
            if take.is_zero() {
                continue;
            }
            left = Amount::from_nanos(left.nanos() - take.nanos());
            hold.amount = Amount::from_nanos(hold.amount.nanos() - take.nanos());
            if let Some(bucket) = touch(&mut self.accounts, &mut self.dirty, &hold.account)
                .and_then(|a| a.bucket_mut(hold.bucket))
            {
                bucket.held = Amount::from_nanos(bucket.held.nanos() - take.nanos());
                bucket.amount = Amount::from_nanos(bucket.amount.nanos() - take.nanos());
                let after = bucket.amount;
                let unit = bucket.unit;
                let expired = bucket.expired;
                self.audit_push(
                    now,
                    op,
                    hold.account,
                    hold.bucket,
                    unit,
                    AuditKind::Debit,
                    -take,
                    after,
                    Some(id),
                    None,
                );
                if expired {
                    // Drops the bucket once nothing is in or held on it.
                    self.forfeit(now, hold.account, hold.bucket);
                }
            }
            debited.push(Hold {
                account: hold.account,
                bucket: hold.bucket,
                amount: take,
            });
        }
        reservation.remaining = Amount::from_nanos(reservation.remaining.nanos() - used.nanos());
        let mut released = Amount::ZERO;
        if release_rest {
            released = reservation.remaining;
            for hold in &reservation.holds {
                if hold.amount.is_positive() {
                    self.unhold(now, hold.account, hold.bucket, hold.amount);
                }
            }
            reservation.remaining = Amount::ZERO;
        }
        let mut crossed = Vec::new();
        for capped in &reservation.limit_accounts {
            if let Some(account) = touch(&mut self.accounts, &mut self.dirty, capped) {
                for limit in account.limits_mut(reservation.unit) {
                    limit.roll(now);
                    let freed = used.nanos() + released.nanos();
                    limit.held = Amount::from_nanos((limit.held.nanos() - freed).max(0));
                    limit.used = Amount::from_nanos(limit.used.nanos() + used.nanos());
                    let fresh = limit.newly_reached();
                    if fresh != 0 {
                        for (i, pct) in limit.alerts.iter().enumerate() {
                            if fresh & (1 << i) != 0 {
                                crossed.push((*capped, *pct, limit.clone()));
                            }
                        }
                    }
                }
            }
        }
        for (account, pct, limit) in crossed {
            self.raise_alert(now, account, pct, &limit);
        }
        let remaining = reservation.remaining;
        if remaining.is_zero() {
            self.by_account.remove(&(reservation.account, id));
            self.reservation_expiry.settle(&self.reservations);
        } else {
            reservation.holds.retain(|h| h.amount.is_positive());
            self.reservations.insert(id, reservation);
        }
        Ok(Outcome::Committed {
            debited,
            released,
            remaining,
        })
    }

    /// Returns `amount` held on a bucket; credit released onto an expired
    /// bucket is forfeited at once.
    fn unhold(&mut self, now: Timestamp, owner: AccountId, bucket_id: BucketId, amount: Amount) {
        let Some(account) = touch(&mut self.accounts, &mut self.dirty, &owner) else {
            return;
        };
        let Some(bucket) = account.bucket_mut(bucket_id) else {
            return;
        };
        bucket.held = Amount::from_nanos(bucket.held.nanos() - amount.nanos());
        if bucket.expired {
            self.forfeit(now, owner, bucket_id);
        }
    }

    /// Forfeits the free positive amount of an expired bucket and drops the
    /// bucket once nothing is left in or held on it.
    fn forfeit(&mut self, now: Timestamp, owner: AccountId, bucket_id: BucketId) {
        let Some(account) = touch(&mut self.accounts, &mut self.dirty, &owner) else {
            return;
        };
        let Some(index) = account.buckets.iter().position(|b| b.id == bucket_id) else {
            return;
        };
        let bucket = &mut account.buckets[index];
        let free = bucket.amount.nanos() - bucket.held.nanos();
        let unit = bucket.unit;
        let mut entry = None;
        if free > 0 {
            bucket.amount = Amount::from_nanos(bucket.amount.nanos() - free);
            entry = Some((Amount::from_nanos(-free), bucket.amount));
        }
        if bucket.amount.is_zero() && bucket.held.is_zero() {
            account.buckets.remove(index);
        }
        if let Some((delta, after)) = entry {
            self.audit_push(
                now,
                OpId::SERVER,
                owner,
                bucket_id,
                unit,
                AuditKind::Expire,
                delta,
                after,
                None,
                None,
            );
        }
    }

    fn release(&mut self, now: Timestamp, id: ReservationId) -> OpResult {
        self.dirty.reservation_changing(&self.reservations, id);
        let reservation = self
            .reservations
            .remove(&id)
            .ok_or(LedgerError::ReservationNotFound(id))?;
        Ok(Outcome::Released {
            released: self.drop_reservation(now, id, reservation),
        })
    }

    /// Undoes the holds of a reservation just removed (after
    /// [`Dirty::reservation_changing`]).
    fn drop_reservation(
        &mut self,
        now: Timestamp,
        id: ReservationId,
        reservation: Reservation,
    ) -> Amount {
        self.by_account.remove(&(reservation.account, id));
        self.reservation_expiry.settle(&self.reservations);
        for hold in &reservation.holds {
            self.unhold(now, hold.account, hold.bucket, hold.amount);
        }
        for capped in &reservation.limit_accounts {
            if let Some(account) = touch(&mut self.accounts, &mut self.dirty, capped) {
                for limit in account.limits_mut(reservation.unit) {
                    limit.held = Amount::from_nanos(
                        (limit.held.nanos() - reservation.remaining.nanos()).max(0),
                    );
                }
            }
        }
        reservation.remaining
    }

    fn sweep(&mut self, now: Timestamp) -> Outcome {
        let mut reservations = 0u32;
        let mut buckets = 0u32;
        let mut budget = SWEEP_ITEMS_MAX;
        // Only live reservations count against the budget (the queue's head
        // is always live), so a replay expires exactly the same ones.
        while budget > 0 {
            let Some((at, id)) = self.reservation_expiry.head() else {
                break;
            };
            if at > now {
                break;
            }
            budget -= 1;
            self.dirty.reservation_changing(&self.reservations, id);
            if let Some(reservation) = self.reservations.remove(&id) {
                self.drop_reservation(now, id, reservation);
                reservations += 1;
            }
        }
        while budget > 0 {
            let Some(&(at, owner, bucket_id)) = self.bucket_expiry.first() else {
                break;
            };
            if at > now {
                break;
            }
            budget -= 1;
            self.bucket_expiry.remove(&(at, owner, bucket_id));
            let found = touch(&mut self.accounts, &mut self.dirty, &owner)
                .and_then(|a| a.bucket_mut(bucket_id))
                .map(|b| b.expired = true);
            if found.is_some() {
                buckets += 1;
                self.forfeit(now, owner, bucket_id);
            }
        }
        let more = self
            .reservation_expiry
            .head()
            .is_some_and(|(at, _)| at <= now)
            || self
                .bucket_expiry
                .first()
                .is_some_and(|(at, _, _)| *at <= now);
        Outcome::Swept {
            reservations,
            buckets,
            more,
        }
    }

    /// True when a sweep at `now` would expire something.
    pub fn sweep_due(&self, now: Timestamp) -> bool {
        self.reservation_expiry
            .head()
            .is_some_and(|(at, _)| at <= now)
            || self
                .bucket_expiry
                .first()
                .is_some_and(|(at, _, _)| *at <= now)
    }

    #[allow(clippy::too_many_arguments)]
    fn audit_push(
        &mut self,
        at: Timestamp,
        op: OpId,
        account: AccountId,
        bucket: BucketId,
        unit: Unit,
        kind: AuditKind,
        delta: Amount,
        balance_after: Amount,
        reservation: Option<ReservationId>,
        reason: Option<Arc<str>>,
    ) {
        self.audit_seq += 1;
        if self.audit.last().is_none_or(|c| c.len() == AUDIT_CHUNK) {
            self.audit.push(Vec::with_capacity(AUDIT_CHUNK));
        }
        let chunk = self.audit.last_mut().expect("a chunk was just ensured");
        chunk.push(AuditEntry {
            seq: self.audit_seq,
            at,
            op,
            account,
            bucket,
            unit,
            kind,
            delta,
            balance_after,
            reservation,
            reason,
        });
    }

    /// Takes the audit entries produced since the last call, oldest first.
    pub fn drain_audit(&mut self) -> Vec<AuditEntry> {
        std::mem::take(&mut self.audit)
            .into_iter()
            .flatten()
            .collect()
    }

    /// An account with its buckets and caps, as the last operation that
    /// touched it left them (see [`Ledger::account_at`]).
    pub fn account(&self, id: AccountId) -> Option<AccountView> {
        self.account_at(id, Timestamp(0))
    }

    /// An account with its buckets and caps at `now`: a control whose
    /// period has ended shows the current period, with nothing used yet.
    pub fn account_at(&self, id: AccountId, now: Timestamp) -> Option<AccountView> {
        let a = self.accounts.get(&id)?;
        Some(AccountView {
            id,
            parent: a.parent,
            status: a.status,
            draws_on_parent: a.draws_on_parent,
            buckets: a
                .buckets
                .iter()
                .map(|b| BucketView {
                    id: b.id,
                    unit: b.unit,
                    amount: b.amount,
                    held: b.held,
                    available: if b.expired {
                        Amount::ZERO
                    } else {
                        b.free().max(Amount::ZERO)
                    },
                    credit_limit: b.credit_limit(),
                    valid_from: b.valid_from(),
                    valid_until: b.valid_until(),
                    priority: b.priority,
                    services: b.services().to_vec(),
                    expired: b.expired,
                })
                .collect(),
            limits: a
                .limits()
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    l.roll(now);
                    LimitView {
                        unit: l.unit,
                        cap: l.cap,
                        used: l.used,
                        held: l.held,
                        period: l.period,
                        soft: l.soft,
                        period_start: l.period_start,
                        period_end: l.period_end,
                        alerts: l.alerts.to_vec(),
                    }
                })
                .collect(),
        })
    }

    /// What a reservation by `id` in `unit` for `service` could get at `now`:
    /// its drawable buckets (and its ancestors' where it draws on them),
    /// bounded by every cap on the way up. Zero when the account or an
    /// ancestor is not active.
    pub fn available(
        &mut self,
        now: Timestamp,
        id: AccountId,
        unit: Unit,
        service: Option<ServiceId>,
    ) -> Result<Amount, LedgerError> {
        self.availability(now, id, unit, service).map(|a| a.amount)
    }

    /// [`Ledger::available`], and the spend control that bounds it when a
    /// hard control, not the credit, is what limits it.
    pub fn availability(
        &mut self,
        now: Timestamp,
        id: AccountId,
        unit: Unit,
        service: Option<ServiceId>,
    ) -> Result<Availability, LedgerError> {
        match self.plan(now, id, unit, service, true) {
            Ok(plan) => Ok(match plan.headroom {
                Some((account, h, period)) if h < plan.total_free => Availability {
                    amount: h,
                    bound_by: Some((account, period)),
                },
                _ => Availability {
                    amount: plan.total_free,
                    bound_by: None,
                },
            }),
            Err(LedgerError::AccountNotActive { .. }) => Ok(Availability {
                amount: Amount::ZERO,
                bound_by: None,
            }),
            Err(e) => Err(e),
        }
    }

    /// One open reservation.
    pub fn reservation(&self, id: ReservationId) -> Option<ReservationView> {
        self.reservations.get(&id).map(|r| ReservationView {
            id,
            account: r.account,
            unit: r.unit,
            remaining: r.remaining,
            expires_at: r.expires_at,
            holds: r.holds.clone(),
        })
    }

    /// Open reservations of an account with ids above `after`, oldest
    /// first, at most `limit` (pages through a long list).
    pub fn reservations_of(
        &self,
        account: AccountId,
        after: ReservationId,
        limit: usize,
    ) -> Vec<ReservationView> {
        let Some(first) = after.0.checked_add(1) else {
            return Vec::new();
        };
        self.by_account
            .range((account, ReservationId(first))..=(account, ReservationId(u64::MAX)))
            .take(limit)
            .filter_map(|(_, id)| self.reservation(*id))
            .collect()
    }

    /// The first account on the way from `id` up to its root that is not
    /// active (and so blocks new reservations), if any.
    pub fn inactive_ancestor(&self, id: AccountId) -> Option<(AccountId, AccountStatus)> {
        let mut current = Some(id);
        for _ in 0..DEPTH_MAX {
            let account = self.accounts.get(&current?)?;
            if account.status != AccountStatus::Active {
                return Some((current?, account.status));
            }
            current = account.parent;
        }
        None
    }

    /// The root (organisation) of an account's hierarchy.
    pub fn root_of(&self, id: AccountId) -> Option<AccountId> {
        let mut current = id;
        for _ in 0..DEPTH_MAX {
            match self.accounts.get(&current)?.parent {
                Some(parent) => current = parent,
                None => return Some(current),
            }
        }
        None
    }

    /// Every account's id, ascending.
    pub fn account_ids(&self) -> Vec<AccountId> {
        let mut ids: Vec<AccountId> = self.accounts.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Number of accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Number of open reservations.
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// Number of op ids remembered for idempotency.
    pub fn remembered_ops(&self) -> usize {
        self.ops.len()
    }

    /// Sum of all bucket amounts per unit (what conservation checks compare
    /// against credits − debits − forfeits).
    pub fn totals(&self) -> BTreeMap<Unit, Amount> {
        let mut totals: BTreeMap<Unit, i128> = BTreeMap::new();
        for account in self.accounts.values() {
            for b in &account.buckets {
                *totals.entry(b.unit).or_default() += b.amount.nanos();
            }
        }
        totals
            .into_iter()
            .map(|(u, n)| (u, Amount::from_nanos(n)))
            .collect()
    }

    /// Checks every structural invariant; returns the first violation.
    ///
    /// Buckets: held ≥ 0 and amount − held ≥ −credit limit. Holds: each
    /// bucket's held equals the sum of reservation holds on it; a
    /// reservation's remaining equals its holds. Caps: held equals the
    /// reservations counted against them. Expiry index matches reservations.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut held_by_bucket: HashMap<(AccountId, BucketId), i128> = HashMap::new();
        let mut held_by_limit: HashMap<(AccountId, Unit), i128> = HashMap::new();
        let queued: HashSet<(Timestamp, ReservationId)> =
            self.reservation_expiry.entries().collect();
        for (id, r) in &self.reservations {
            let sum: i128 = r.holds.iter().map(|h| h.amount.nanos()).sum();
            if sum != r.remaining.nanos() {
                return Err(format!(
                    "reservation {id:?}: holds {sum} != remaining {}",
                    r.remaining.nanos()
                ));
            }
            if !r.remaining.is_positive() {
                return Err(format!("reservation {id:?} open with nothing remaining"));
            }
            if !queued.contains(&(r.expires_at, *id)) {
                return Err(format!("reservation {id:?} missing from the expiry queue"));
            }
            if !self.by_account.contains(&(r.account, *id)) {
                return Err(format!(
                    "reservation {id:?} missing from its account's index"
                ));
            }
            for h in &r.holds {
                *held_by_bucket.entry((h.account, h.bucket)).or_default() += h.amount.nanos();
            }
            for a in &r.limit_accounts {
                *held_by_limit.entry((*a, r.unit)).or_default() += r.remaining.nanos();
            }
        }
        if self.by_account.len() != self.reservations.len() {
            return Err(format!(
                "account index lists {} reservations, {} are open",
                self.by_account.len(),
                self.reservations.len()
            ));
        }
        if let Some((at, id)) = self.reservation_expiry.head() {
            if self.reservations.get(&id).map(|r| r.expires_at) != Some(at) {
                return Err(format!(
                    "expiry queue head {id:?} is not a live reservation"
                ));
            }
        }
        for (id, a) in &self.accounts {
            if let Some(p) = a.parent {
                if !self.accounts.contains_key(&p) {
                    return Err(format!("account {id:?} has missing parent {p:?}"));
                }
            }
            for b in &a.buckets {
                if b.held.is_negative() {
                    return Err(format!("bucket {:?} held negative", b.id));
                }
                if b.free().is_negative() {
                    return Err(format!("bucket {:?} below its credit limit", b.id));
                }
                let expected = held_by_bucket.remove(&(*id, b.id)).unwrap_or(0);
                if expected != b.held.nanos() {
                    return Err(format!(
                        "bucket {:?}: held {} != holds {}",
                        b.id,
                        b.held.nanos(),
                        expected
                    ));
                }
            }
            for l in a.limits() {
                let expected = held_by_limit.get(&(*id, l.unit)).copied().unwrap_or(0);
                // A cap re-created while reservations were open counts only
                // later ones, so its held may be below the sum but never above.
                if l.held.nanos() > expected || l.held.is_negative() {
                    return Err(format!(
                        "limit {id:?}/{}: held {} vs {}",
                        l.unit,
                        l.held.nanos(),
                        expected
                    ));
                }
            }
        }
        if let Some(((a, b), n)) = held_by_bucket.into_iter().find(|(_, n)| *n != 0) {
            return Err(format!("holds of {n} on missing bucket {a:?}/{b:?}"));
        }
        if self.ops.len() != self.op_order.len() {
            return Err("idempotency table and its order differ".into());
        }
        Ok(())
    }
}
