//! Snapshot encoding of the ledger: what a checkpoint writes and recovery
//! reads back.
//!
//! A snapshot is a set of key → value pairs in one keyspace (so that one
//! checkpoint is one write group of the snapshot store). Keys start with a one-byte
//! kind and the namespace of the state machine that owns them:
//!
//! | key | value |
//! | --- | --- |
//! | `L a <account id BE>` | one account with its buckets and caps |
//! | `L r <reservation id BE>` | one open reservation |
//! | `L o <checkpoint seq BE>` | the op ids (with results) remembered since the previous checkpoint |
//! | `L l <alert seq BE>` | one of the last [`crate::ledger::ALERTS_KEPT`] alerts |
//! | `L 0` | counters (next bucket and reservation ids, audit seq, window, ...) and map sizes; sorts first so the maps are sized before they fill |
//!
//! Op-id blobs are dropped once every entry in them is older than the
//! idempotency window. Audit entries are not part of the snapshot: they go
//! to the history store ([`crate::snapstore::HistoryStore`]).

use crate::codec::{DecodeError, Reader, Sink};
use crate::command::Hold;
use crate::command::{
    decode_period, decode_result, decode_thresholds, encode_period, encode_result,
};
use crate::ledger::{
    Account, Alert, AuditEntry, AuditKind, Bucket, Ledger, Limit, OpEntry, Reservation, Terms,
};
use crate::period::Period;
use crate::types::{AccountId, AccountStatus, OpId, ReservationId, Timestamp};
use std::sync::Arc;

/// One change to the snapshot keyspace: a put, or a delete when `None`.
pub type SnapshotWrite = (Vec<u8>, Option<Vec<u8>>);

const NS: u8 = b'L';
const K_ACCOUNT: u8 = b'a';
const K_RESERVATION: u8 = b'r';
const K_OPS: u8 = b'o';
const K_AUDIT: u8 = b'u';
const K_ALERT: u8 = b'l';
const K_META: u8 = b'0'; // sorts before every other ledger key

fn key(kind: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(NS);
    k.push(kind);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The key prefix of the ledger's audit blobs (for readers of the trail).
pub fn audit_prefix() -> [u8; 2] {
    [NS, K_AUDIT]
}

/// What a checkpoint must also remember between calls (which op blobs
/// exist and until when they matter).
#[derive(Debug, Default, Clone)]
pub struct CheckpointState {
    /// Sequence number of the next checkpoint.
    pub seq: u64,
    /// (blob id, newest entry time) of each op blob in the snapshot.
    pub op_blobs: Vec<(u64, Timestamp)>,
    /// Alerts in the snapshot: sequence numbers `alerts_from..alerts_to`.
    pub alerts_from: u64,
    /// See `alerts_from`.
    pub alerts_to: u64,
}

/// A checkpoint begun and not yet fully encoded: what is left to encode,
/// and the writes so far (see [`Ledger::checkpoint_begin`]).
#[derive(Debug)]
pub(crate) struct PendingCheckpoint {
    /// Accounts still marked with this epoch hold the state to write.
    pub(crate) epoch: u32,
    /// Op ids recorded in the epoch, in the order recorded (so in time
    /// order), the next to encode, the id of the blob of the first part
    /// ([`OPS_PER_PART`] entries each) and the part so far.
    ops: Vec<(Timestamp, OpId)>,
    ops_next: usize,
    ops_base: u64,
    blob: Vec<u8>,
    accounts: Vec<AccountId>,
    /// Reservations issued before the previous checkpoint and changed
    /// since: the list to walk, and those not yet written.
    changed: Vec<ReservationId>,
    changed_left: crate::ledger::IdSet<ReservationId>,
    /// Reservations issued since the previous checkpoint not yet looked
    /// at, and those saved ahead of the walk.
    fresh_next: u64,
    fresh_end: u64,
    fresh_saved: crate::ledger::IdSet<ReservationId>,
    writes: Vec<SnapshotWrite>,
}

/// Op-id entries per blob: the largest entry (a result with
/// [`crate::ledger::HOLDS_MAX`] holds) is about 16 KB, so a part stays well
/// under the snapshot store's value limit however many ids a checkpoint
/// writes (a million accounts provisioned within the window made one blob
/// of 100 MB, and every checkpoint after it failed).
const OPS_PER_PART: usize = 1024;

/// Blob ids of one checkpoint's parts: its sequence number, then the part.
const OPS_PART_BITS: u32 = 24;

fn encode_op_entry(blob: &mut Vec<u8>, op: OpId, entry: &OpEntry) {
    blob.op(op);
    blob.u64(entry.digest);
    blob.time(entry.at);
    encode_result(blob, &entry.result);
}

impl PendingCheckpoint {
    /// Before op ids are forgotten at `now`: encodes those this checkpoint
    /// still needs (a prefix of its list, which is in time order).
    pub(crate) fn save_ops_before_eviction(
        &mut self,
        ops: &crate::ledger::IdMap<OpId, OpEntry>,
        window_ms: u64,
        now: Timestamp,
    ) {
        while let Some(&(at, op)) = self.ops.get(self.ops_next) {
            if at.plus_ms(window_ms) > now {
                break;
            }
            if let Some(entry) = ops.get(&op).filter(|e| self.owns(at, e)) {
                encode_op_entry(&mut self.blob, op, entry);
            }
            self.op_done();
        }
    }

    /// Moves past the op id encoded (or skipped); writes the part it
    /// completes (possibly empty: every part registered at the begin is
    /// written, so each id it keeps for deletion exists).
    fn op_done(&mut self) {
        self.ops_next += 1;
        if self.ops_next.is_multiple_of(OPS_PER_PART) || self.ops_next == self.ops.len() {
            let part = ((self.ops_next - 1) / OPS_PER_PART) as u64;
            let blob = std::mem::take(&mut self.blob);
            self.writes
                .push((key(K_OPS, self.ops_base + part), Some(blob)));
        }
    }

    /// True when `entry` is the one recorded at `at` in this epoch: an id
    /// forgotten and recorded again is listed once per recording, and only
    /// the recording still remembered is written.
    fn owns(&self, at: Timestamp, entry: &OpEntry) -> bool {
        entry.at == at && entry.epoch == self.epoch
    }

    /// Writes an account's state (as it was when the checkpoint began).
    pub(crate) fn save_account(&mut self, id: AccountId, a: &Account) {
        let mut v = Vec::with_capacity(96);
        encode_account(&mut v, a);
        self.writes.push((key(K_ACCOUNT, id.0), Some(v)));
    }

    /// Writes a reservation's state before it changes, if this checkpoint
    /// still needs it and has not written it.
    pub(crate) fn save_reservation(&mut self, id: ReservationId, current: Option<&Reservation>) {
        if self.changed_left.remove(&id) {
            self.push_reservation(id, current);
        } else if (self.fresh_next..self.fresh_end).contains(&id.0) && self.fresh_saved.insert(id) {
            if let Some(res) = current {
                self.push_reservation(id, Some(res));
            }
        }
    }

    fn push_reservation(&mut self, id: ReservationId, res: Option<&Reservation>) {
        let value = res.map(|res| {
            let mut v = Vec::with_capacity(96);
            encode_reservation(&mut v, res);
            v
        });
        self.writes.push((key(K_RESERVATION, id.0), value));
    }
}

/// Top bit of an account's control count: the controls carry periods.
const LIMITS_PERIODIC: u16 = 0x8000;

fn encode_alert<S: Sink>(s: &mut S, a: &Alert) {
    s.time(a.at);
    s.account(a.account);
    s.unit(a.unit);
    s.u8(a.period);
    s.time(a.period_start);
    s.u8(a.threshold_pct);
    s.amount(a.used);
    s.amount(a.cap);
    s.bool(a.soft);
}

fn decode_alert(r: &mut Reader<'_>, seq: u64) -> Result<Alert, DecodeError> {
    Ok(Alert {
        seq,
        at: r.time()?,
        account: r.account()?,
        unit: r.unit()?,
        period: r.u8()?,
        period_start: r.time()?,
        threshold_pct: r.u8()?,
        used: r.amount()?,
        cap: r.amount()?,
        soft: r.bool()?,
    })
}

fn encode_account<S: Sink>(s: &mut S, a: &Account) {
    s.bool(a.parent.is_some());
    s.u64(a.parent.map_or(0, |p| p.0));
    s.u8(a.status.code());
    s.bool(a.draws_on_parent);
    s.u8(a.depth);
    s.u16(a.buckets.len() as u16);
    for b in &a.buckets {
        s.bucket(b.id);
        s.unit(b.unit);
        s.amount(b.amount);
        s.amount(b.held);
        s.u16(b.priority as u16);
        s.bool(b.expired);
        match &b.terms {
            None => s.bool(false),
            Some(t) => {
                s.bool(true);
                s.time(t.valid_from);
                s.time(t.valid_until);
                s.amount(t.credit_limit);
                s.u16(t.services.len() as u16);
                for v in t.services.iter() {
                    s.service(*v);
                }
            }
        }
    }
    // The count's top bit says the controls carry periods: a snapshot
    // without any reads as written before periods existed.
    let periodic = a
        .limits()
        .iter()
        .any(|l| l.period != Period::Lifetime || l.soft || !l.alerts.is_empty());
    s.u16(a.limits().len() as u16 | if periodic { LIMITS_PERIODIC } else { 0 });
    for l in a.limits() {
        s.unit(l.unit);
        s.amount(l.cap);
        s.amount(l.used);
        s.amount(l.held);
        if periodic {
            encode_period(s, &l.period);
            s.bool(l.soft);
            s.time(l.period_start);
            s.time(l.period_end);
            s.u8(l.alerts.len() as u8);
            for a in l.alerts.iter() {
                s.u8(*a);
            }
            s.u8(l.fired);
        }
    }
}

fn decode_account(r: &mut Reader<'_>) -> Result<Account, DecodeError> {
    let has_parent = r.bool()?;
    let parent = r.account()?;
    let status = AccountStatus::from_code(r.u8()?).ok_or(DecodeError::Invalid("status"))?;
    let draws_on_parent = r.bool()?;
    let depth = r.u8()?;
    let count = r.u16()? as usize;
    if count > crate::ledger::BUCKETS_PER_ACCOUNT_MAX {
        return Err(DecodeError::Invalid("too many buckets"));
    }
    let mut buckets = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.bucket()?;
        let unit = r.unit()?;
        let amount = r.amount()?;
        let held = r.amount()?;
        let priority = r.u16()? as i16;
        let expired = r.bool()?;
        let terms = if r.bool()? {
            let valid_from = r.time()?;
            let valid_until = r.time()?;
            let credit_limit = r.amount()?;
            let n = r.u16()? as usize;
            if n > crate::command::BUCKET_SERVICES_MAX {
                return Err(DecodeError::Invalid("too many services"));
            }
            let services = (0..n).map(|_| r.service()).collect::<Result<Vec<_>, _>>()?;
            Some(Box::new(Terms {
                valid_from,
                valid_until,
                services: services.into_boxed_slice(),
                credit_limit,
            }))
        } else {
            None
        };
        buckets.push(Bucket {
            id,
            unit,
            amount,
            held,
            priority,
            expired,
            terms,
        });
    }
    let count = r.u16()?;
    let periodic = count & LIMITS_PERIODIC != 0;
    let n = (count & !LIMITS_PERIODIC) as usize;
    if n > crate::ledger::LIMITS_PER_ACCOUNT_MAX {
        return Err(DecodeError::Invalid("too many limits"));
    }
    let mut limits = Vec::with_capacity(n);
    for _ in 0..n {
        let (unit, cap, used, held) = (r.unit()?, r.amount()?, r.amount()?, r.amount()?);
        let (period, soft, period_start, period_end, alerts, fired) = if periodic {
            (
                decode_period(r)?,
                r.bool()?,
                r.time()?,
                r.time()?,
                decode_thresholds(r)?,
                r.u8()?,
            )
        } else {
            (
                Period::Lifetime,
                false,
                Timestamp(0),
                Timestamp::NEVER,
                Vec::new(),
                0,
            )
        };
        limits.push(Limit {
            unit,
            cap,
            used,
            held,
            period,
            soft,
            period_start,
            period_end,
            alerts: alerts.into(),
            fired,
        });
    }
    Ok(Account {
        mark: 0,
        parent: has_parent.then_some(parent),
        status,
        draws_on_parent,
        depth,
        buckets,
        limits: (!limits.is_empty()).then(|| Box::new(limits)),
    })
}

fn encode_reservation<S: Sink>(s: &mut S, v: &Reservation) {
    s.account(v.account);
    s.unit(v.unit);
    s.amount(v.remaining);
    s.time(v.expires_at);
    s.u16(v.holds.len() as u16);
    for h in &v.holds {
        s.account(h.account);
        s.bucket(h.bucket);
        s.amount(h.amount);
    }
    s.u16(v.limit_accounts.len() as u16);
    for a in &v.limit_accounts {
        s.account(*a);
    }
}

fn decode_reservation(r: &mut Reader<'_>) -> Result<Reservation, DecodeError> {
    let account = r.account()?;
    let unit = r.unit()?;
    let remaining = r.amount()?;
    let expires_at = r.time()?;
    let n = r.u16()? as usize;
    if n > crate::ledger::HOLDS_MAX {
        return Err(DecodeError::Invalid("too many holds"));
    }
    let holds = (0..n)
        .map(|_| {
            Ok(Hold {
                account: r.account()?,
                bucket: r.bucket()?,
                amount: r.amount()?,
            })
        })
        .collect::<Result<crate::command::Holds, DecodeError>>()?;
    let n = r.u16()? as usize;
    if n > crate::ledger::DEPTH_MAX {
        return Err(DecodeError::Invalid("too many capped accounts"));
    }
    let limit_accounts = (0..n).map(|_| r.account()).collect::<Result<Vec<_>, _>>()?;
    Ok(Reservation {
        account,
        unit,
        remaining,
        expires_at,
        holds,
        limit_accounts,
    })
}

fn audit_kind_code(k: AuditKind) -> u8 {
    match k {
        AuditKind::Grant => 1,
        AuditKind::TopUp => 2,
        AuditKind::Refund => 3,
        AuditKind::Adjust => 4,
        AuditKind::Debit => 5,
        AuditKind::Expire => 6,
    }
}

fn audit_kind_from(code: u8) -> Result<AuditKind, DecodeError> {
    Ok(match code {
        1 => AuditKind::Grant,
        2 => AuditKind::TopUp,
        3 => AuditKind::Refund,
        4 => AuditKind::Adjust,
        5 => AuditKind::Debit,
        6 => AuditKind::Expire,
        _ => return Err(DecodeError::Invalid("audit kind")),
    })
}

fn encode_audit<S: Sink>(s: &mut S, e: &AuditEntry) {
    s.u64(e.seq);
    s.time(e.at);
    s.op(e.op);
    s.account(e.account);
    s.bucket(e.bucket);
    s.unit(e.unit);
    s.u8(audit_kind_code(e.kind));
    s.amount(e.delta);
    s.amount(e.balance_after);
    s.u64(e.reservation.map_or(0, |r| r.0));
    s.bytes16(e.reason.as_deref().unwrap_or("").as_bytes());
}

fn decode_audit(r: &mut Reader<'_>) -> Result<AuditEntry, DecodeError> {
    let seq = r.u64()?;
    let at = r.time()?;
    let op = r.op()?;
    let account = r.account()?;
    let bucket = r.bucket()?;
    let unit = r.unit()?;
    let kind = audit_kind_from(r.u8()?)?;
    let delta = r.amount()?;
    let balance_after = r.amount()?;
    let reservation = r.u64()?;
    let reason = r.bytes16(crate::command::REASON_LEN_MAX)?;
    let reason = std::str::from_utf8(reason).map_err(|_| DecodeError::Invalid("reason utf-8"))?;
    Ok(AuditEntry {
        seq,
        at,
        op,
        account,
        bucket,
        unit,
        kind,
        delta,
        balance_after,
        reservation: (reservation != 0).then_some(ReservationId(reservation)),
        reason: (!reason.is_empty()).then(|| Arc::from(reason)),
    })
}

/// Decodes one audit blob (as stored under [`audit_prefix`]).
pub fn decode_audit_blob(bytes: &[u8]) -> Result<Vec<AuditEntry>, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(decode_audit(&mut r)?);
    }
    Ok(out)
}

impl Ledger {
    /// Encodes everything that changed since the last checkpoint as
    /// snapshot writes (the audit entries included), and resets the change
    /// tracking.
    pub fn checkpoint(
        &mut self,
        state: &mut CheckpointState,
        now: Timestamp,
    ) -> Vec<SnapshotWrite> {
        let writes = self.checkpoint_state(state, now);
        // The audit entries go to the history store, not the snapshot.
        drop(self.take_audit_encoder()());
        writes
    }

    /// Takes the audit entries since the last checkpoint and returns the
    /// work that encodes them for the history store, so it can run off the
    /// writer thread (the entries are moved, not copied). Each history
    /// record is one chunk of entries ([`decode_audit_blob`] reads it).
    pub fn take_audit_encoder(&mut self) -> crate::journal::Deferred {
        let audit = std::mem::take(&mut self.audit);
        Box::new(move || {
            let mut extra = crate::journal::CheckpointExtra::default();
            for chunk in &audit {
                if chunk.is_empty() {
                    continue;
                }
                let mut blob = Vec::with_capacity(chunk.len() * 120);
                for e in chunk {
                    encode_audit(&mut blob, e);
                }
                extra.history.push(blob);
            }
            extra
        })
    }

    /// [`Ledger::checkpoint`] without the audit entries (see
    /// [`Ledger::take_audit_encoder`]), begun and finished at once.
    pub fn checkpoint_state(
        &mut self,
        state: &mut CheckpointState,
        now: Timestamp,
    ) -> Vec<SnapshotWrite> {
        // One begun earlier is finished first; its writes come before.
        let mut writes = self.checkpoint_step(usize::MAX).unwrap_or_default();
        self.checkpoint_begin(state, now);
        writes.extend(self.checkpoint_step(usize::MAX).unwrap_or_default());
        writes
    }

    /// Begins a checkpoint of the state as it is now and resets the change
    /// tracking, in O(1) but for the op ids recorded since the last one
    /// (encoded now: they may be forgotten before a later step). The rest
    /// is encoded by [`Ledger::checkpoint_step`]; until then the first
    /// change to an entry not yet encoded saves its old state. Does nothing
    /// while another checkpoint is being encoded.
    pub fn checkpoint_begin(&mut self, state: &mut CheckpointState, now: Timestamp) {
        if self.dirty.pending.is_some() {
            return;
        }
        // Forgetting expired op ids is a pure function of time; doing it here
        // makes the snapshot hold exactly the ids the live ledger holds.
        self.evict_ops(now);
        let fresh_from = self.dirty.fresh_reservations_from;
        let epoch = self.dirty.epoch;
        let next_epoch = match epoch.wrapping_add(1) {
            0 => 1,
            e => e,
        };
        let no_copy = self.dirty.no_copy;
        let dirty = std::mem::replace(
            &mut self.dirty,
            crate::ledger::Dirty {
                fresh_reservations_from: self.next_reservation,
                epoch: next_epoch,
                no_copy,
                ..Default::default()
            },
        );
        // Sized for every entry it may write, so it never grows (a
        // reallocation copies megabytes while requests wait).
        let fresh = (self.next_reservation - fresh_from).min(1 << 20) as usize;
        let mut writes = Vec::with_capacity(
            dirty.accounts.len()
                + dirty.reservations.len()
                + fresh
                + dirty.ops.len().div_ceil(OPS_PER_PART)
                + 64,
        );
        // Op ids: blobs of the entries added since the previous checkpoint
        // that are still remembered, [`OPS_PER_PART`] listed entries each,
        // encoded by the steps (an entry about to be forgotten first, see
        // `evict_ops`). Each is kept for the window after now, the newest
        // an entry in it can be.
        let ops_base = state.seq << OPS_PART_BITS;
        for part in 0..dirty.ops.len().div_ceil(OPS_PER_PART) as u64 {
            state.op_blobs.push((ops_base + part, now));
        }
        let window = self.window_ms;
        state.op_blobs.retain(|(seq, newest)| {
            let keep = newest.plus_ms(window) > now;
            if !keep {
                writes.push((key(K_OPS, *seq), None));
            }
            keep
        });
        // Alerts: the new ones written (they never change), those fallen
        // out of the kept window deleted. Both are bounded by the window.
        let kept_from = self.oldest_alert();
        let written_to = state.alerts_to.max(kept_from);
        for a in self.alerts.iter().filter(|a| a.seq >= written_to) {
            let mut v = Vec::with_capacity(64);
            encode_alert(&mut v, a);
            writes.push((key(K_ALERT, a.seq), Some(v)));
        }
        for seq in state.alerts_from..state.alerts_to.min(kept_from) {
            writes.push((key(K_ALERT, seq), None));
        }
        state.alerts_from = kept_from;
        state.alerts_to = self.next_alert;
        let mut meta = Vec::new();
        meta.u64(self.next_bucket);
        meta.u64(self.next_reservation);
        meta.u64(self.audit_seq);
        meta.u64(self.window_ms);
        meta.u64(state.seq + 1);
        meta.time(self.ops_forgotten_below);
        meta.u64(self.accounts.len() as u64);
        meta.u64(self.reservations.len() as u64);
        meta.u64(self.next_alert);
        writes.push((vec![NS, K_META], Some(meta)));
        state.seq += 1;
        let changed: Vec<ReservationId> = dirty.reservations.iter().copied().collect();
        self.dirty.pending = Some(Box::new(PendingCheckpoint {
            epoch,
            ops: dirty.ops,
            ops_next: 0,
            ops_base,
            blob: Vec::new(),
            accounts: dirty.accounts,
            changed,
            changed_left: dirty.reservations,
            fresh_next: fresh_from,
            fresh_end: self.next_reservation,
            fresh_saved: Default::default(),
            writes,
        }));
    }

    /// Encodes up to about `budget` more entries of the checkpoint begun;
    /// returns all its writes once it is complete (at once when none was
    /// begun: an empty list).
    pub fn checkpoint_step(&mut self, budget: usize) -> Option<Vec<SnapshotWrite>> {
        let Some(mut p) = self.dirty.pending.take() else {
            return Some(Vec::new());
        };
        let mut left = budget;
        while left > 0 {
            let Some(id) = p.accounts.pop() else {
                break;
            };
            left -= 1;
            if let Some(a) = self.accounts.get_mut(&id) {
                // Marked with a later epoch: saved when it changed.
                if a.mark == p.epoch {
                    p.save_account(id, a);
                    a.mark = 0;
                }
            }
        }
        while left > 0 {
            let Some(id) = p.changed.pop() else {
                break;
            };
            left -= 1;
            let current = self.reservations.get(&id);
            p.save_reservation(id, current);
        }
        // Reservations issued since the last checkpoint: only those open
        // when this one began are stored (most never are).
        while left > 0 && p.fresh_next < p.fresh_end {
            let id = ReservationId(p.fresh_next);
            p.fresh_next += 1;
            if p.fresh_saved.remove(&id) {
                continue;
            }
            if let Some(res) = self.reservations.get(&id) {
                left -= 1;
                p.push_reservation(id, Some(res));
            } else if p.fresh_next % 8 == 0 {
                left -= 1;
            }
        }
        while left > 0 && p.ops_next < p.ops.len() {
            let (at, op) = p.ops[p.ops_next];
            left -= 1;
            if let Some(entry) = self.ops.get(&op).filter(|e| p.owns(at, e)) {
                encode_op_entry(&mut p.blob, op, entry);
            }
            p.op_done();
        }
        let done = p.accounts.is_empty()
            && p.changed.is_empty()
            && p.fresh_next >= p.fresh_end
            && p.ops_next >= p.ops.len();
        if done {
            Some(p.writes)
        } else {
            self.dirty.pending = Some(p);
            None
        }
    }

    /// True while a checkpoint begun is not yet fully encoded.
    pub fn checkpoint_pending(&self) -> bool {
        self.dirty.pending.is_some()
    }

    /// Planted bug for the simulator's mutation runs: changes during an
    /// incremental checkpoint no longer save the state it must write.
    #[doc(hidden)]
    pub fn plant_checkpoint_without_copy(&mut self) {
        self.dirty.no_copy = true;
    }

    /// Every key of a full snapshot of the current state (used by tests to
    /// compare a recovered ledger with a live one, and for a first snapshot).
    pub fn full_checkpoint(
        &mut self,
        state: &mut CheckpointState,
        now: Timestamp,
    ) -> Vec<SnapshotWrite> {
        // Finish a checkpoint begun first, so every account is marked anew.
        let earlier = self.checkpoint_step(usize::MAX).unwrap_or_default();
        let accounts: Vec<AccountId> = self.accounts.keys().copied().collect();
        let epoch = self.dirty.epoch;
        for id in &accounts {
            if let Some(a) = self.accounts.get_mut(id) {
                a.mark = epoch;
            }
        }
        self.dirty.accounts = accounts;
        let reservations: Vec<ReservationId> = self.reservations.keys().copied().collect();
        self.dirty.reservations.extend(reservations);
        self.dirty.ops = self.op_order.iter().copied().collect();
        for entry in self.ops.values_mut() {
            entry.epoch = epoch;
        }
        let mut writes = earlier;
        writes.extend(self.checkpoint(state, now));
        writes
    }

    /// Rebuilds a ledger from snapshot pairs (any order), returning it with
    /// the checkpoint state to continue from.
    pub fn restore<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(Ledger, CheckpointState), DecodeError> {
        let mut ledger = Ledger::new();
        let mut state = CheckpointState::default();
        let mut ops: Vec<(Timestamp, OpId, OpEntry)> = Vec::new();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            if k.first() != Some(&NS) || k.len() < 2 {
                continue;
            }
            let id = || -> Result<u64, DecodeError> {
                let raw: [u8; 8] = k
                    .get(2..10)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(DecodeError::Invalid("key"))?;
                Ok(u64::from_be_bytes(raw))
            };
            let mut r = Reader::new(v);
            match k[1] {
                K_ACCOUNT => {
                    ledger
                        .accounts
                        .insert(AccountId(id()?), decode_account(&mut r)?);
                    r.finish()?;
                }
                K_RESERVATION => {
                    let rid = ReservationId(id()?);
                    let res = decode_reservation(&mut r)?;
                    r.finish()?;
                    ledger.reservation_expiry.push(res.expires_at, rid);
                    ledger.by_account.insert((res.account, rid));
                    ledger.reservations.insert(rid, res);
                }
                K_OPS => {
                    let seq = id()?;
                    let mut newest = Timestamp(0);
                    while !r.is_empty() {
                        let op = r.op()?;
                        let digest = r.u64()?;
                        let at = r.time()?;
                        let result = decode_result(&mut r)?;
                        newest = newest.max(at);
                        ops.push((
                            at,
                            op,
                            OpEntry {
                                digest,
                                at,
                                result,
                                epoch: 0,
                            },
                        ));
                    }
                    state.op_blobs.push((seq, newest));
                }
                K_AUDIT => {}
                K_ALERT => {
                    let a = decode_alert(&mut r, id()?)?;
                    r.finish()?;
                    ledger.alerts.push_back(a);
                }
                K_META => {
                    ledger.next_bucket = r.u64()?;
                    ledger.next_reservation = r.u64()?;
                    ledger.audit_seq = r.u64()?;
                    ledger.window_ms = r.u64()?;
                    state.seq = r.u64()?;
                    ledger.ops_forgotten_below = r.time()?;
                    // Sizing the maps once avoids rehashing a million entries.
                    let accounts = r.u64()?.min(1 << 32) as usize;
                    let reservations = r.u64()?.min(1 << 32) as usize;
                    ledger.accounts.reserve(accounts);
                    ledger.reservations.reserve(reservations);
                    // Absent from snapshots written before alerts existed.
                    if !r.is_empty() {
                        ledger.next_alert = r.u64()?.max(1);
                    }
                    r.finish()?;
                }
                _ => return Err(DecodeError::Invalid("snapshot key kind")),
            }
        }
        ops.sort_by_key(|(at, op, _)| (*at, *op));
        for (at, op, entry) in ops {
            if at < ledger.ops_forgotten_below {
                continue;
            }
            // A later blob may hold a newer entry for the same id only if the
            // old one was evicted first, so the last one wins.
            if ledger.ops.insert(op, entry).is_some() {
                ledger.op_order.retain(|(_, o)| *o != op);
            }
            ledger.op_order.push_back((at, op));
        }
        for (id, account) in &ledger.accounts {
            for b in &account.buckets {
                if let Some(t) = &b.terms {
                    if t.valid_until != Timestamp::NEVER && !b.expired {
                        ledger.bucket_expiry.insert((t.valid_until, *id, b.id));
                    }
                }
            }
        }
        state.op_blobs.sort_unstable();
        ledger
            .alerts
            .make_contiguous()
            .sort_unstable_by_key(|a| a.seq);
        state.alerts_from = ledger.oldest_alert();
        state.alerts_to = ledger.next_alert;
        ledger.dirty.fresh_reservations_from = ledger.next_reservation;
        Ok((ledger, state))
    }

    /// A digest of the whole state that two ledgers share exactly when their
    /// balances, reservations, caps, counters and remembered ops are equal.
    pub fn state_digest(&self) -> u64 {
        self.state_digest_at(Timestamp(0))
    }

    /// [`Ledger::state_digest`] leaving out op ids already past the
    /// idempotency window at `horizon` (forgetting them is a pure function of
    /// time and changes no answer from `horizon` on).
    pub fn state_digest_at(&self, horizon: Timestamp) -> u64 {
        let mut d = crate::codec::Digest::default();
        let mut ids: Vec<&AccountId> = self.accounts.keys().collect();
        ids.sort_unstable();
        for id in ids {
            d.account(*id);
            encode_account(&mut d, &self.accounts[id]);
        }
        let mut ids: Vec<&ReservationId> = self.reservations.keys().collect();
        ids.sort_unstable();
        for id in ids {
            d.reservation(*id);
            encode_reservation(&mut d, &self.reservations[id]);
        }
        let window = self.window_ms;
        let mut ops: Vec<(&OpId, &OpEntry)> = self
            .ops
            .iter()
            .filter(|(_, e)| e.at.plus_ms(window) > horizon)
            .collect();
        ops.sort_unstable_by_key(|(op, _)| **op);
        for (op, entry) in ops {
            d.op(*op);
            d.u64(entry.digest);
            d.time(entry.at);
            encode_result(&mut d, &entry.result);
        }
        d.u64(self.next_bucket);
        d.u64(self.next_reservation);
        d.u64(self.audit_seq);
        d.u64(self.window_ms);
        d.u64(self.next_alert);
        for a in &self.alerts {
            d.u64(a.seq);
            encode_alert(&mut d, a);
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Operation};
    use std::collections::BTreeMap;

    fn op(id: u128, command: Command) -> Operation {
        Operation {
            op: OpId(id),
            command,
        }
    }

    fn create(account: u64) -> Command {
        Command::CreateAccount {
            account: AccountId(account),
            parent: None,
            draws_on_parent: false,
        }
    }

    /// Found by the ledger model: an op id forgotten and recorded again in
    /// the same epoch is listed twice; the checkpoint must still write an
    /// older entry that is forgotten while it is being encoded.
    #[test]
    fn an_op_recorded_twice_in_one_epoch_does_not_hide_older_ones() {
        let t = 1_000_000;
        let mut ledger = Ledger::new();
        let (a, b): (u128, u128) = (10, 11);
        let window = op(1, Command::SetIdempotencyWindow { window_ms: 1000 });
        assert!(ledger.apply(Timestamp(t), &window).is_ok());
        assert!(ledger.apply(Timestamp(t + 1), &op(a, create(1))).is_ok());
        assert!(ledger.apply(Timestamp(t + 500), &op(b, create(2))).is_ok());
        // `a` forgotten at t + 1001, then recorded again.
        assert!(ledger.apply(Timestamp(t + 1200), &op(a, create(3))).is_ok());
        let mut state = CheckpointState::default();
        ledger.checkpoint_begin(&mut state, Timestamp(t + 1300));
        // `b` is forgotten before the checkpoint is encoded.
        assert!(ledger
            .apply(Timestamp(t + 1600), &op(20, create(4)))
            .is_ok());
        assert!(!ledger.is_known_op(OpId(b)));
        let writes = ledger.checkpoint_step(usize::MAX).expect("complete");
        let store: BTreeMap<Vec<u8>, Vec<u8>> = writes
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let (restored, _) = Ledger::restore(store.iter()).expect("restore");
        // As of t + 1300, both were remembered.
        assert!(restored.is_known_op(OpId(b)));
        assert!(restored.is_known_op(OpId(a)));
        assert!(!restored.is_known_op(OpId(20)));
    }

    /// Many op ids in one checkpoint are written in parts of bounded size,
    /// all restored, and all deleted once the window has passed.
    #[test]
    fn op_ids_are_written_in_parts_and_forgotten_whole() {
        let t = 1_000_000;
        let mut ledger = Ledger::new();
        let window = op(1, Command::SetIdempotencyWindow { window_ms: 60_000 });
        assert!(ledger.apply(Timestamp(t), &window).is_ok());
        let n = 2 * OPS_PER_PART as u128 + 100;
        for a in 0..n {
            let created = ledger.apply(Timestamp(t), &op(10 + a, create(a as u64 + 1)));
            assert!(created.is_ok());
        }
        let mut state = CheckpointState::default();
        let writes = ledger.checkpoint(&mut state, Timestamp(t + 1));
        let blobs: Vec<&SnapshotWrite> = writes
            .iter()
            .filter(|(k, _)| k.len() > 1 && k[1] == K_OPS)
            .collect();
        assert_eq!(blobs.len(), 3);
        for (_, v) in &blobs {
            let len = v.as_ref().map_or(0, Vec::len);
            assert!(len > 0 && len < OPS_PER_PART * 64, "{len} bytes");
        }
        let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (k, v) in writes {
            if let Some(v) = v {
                store.insert(k, v);
            }
        }
        let (restored, mut restored_state) = Ledger::restore(store.iter()).expect("restore");
        for a in 0..n {
            assert!(restored.is_known_op(OpId(10 + a)), "op {a}");
        }
        // Past the window, the next checkpoint deletes every part, in the
        // live ledger and in the restored one alike.
        let mut restored = restored;
        for (ledger, state) in [
            (&mut ledger, &mut state),
            (&mut restored, &mut restored_state),
        ] {
            let later = ledger.checkpoint(state, Timestamp(t + 120_000));
            let deleted = later
                .iter()
                .filter(|(k, v)| k.len() > 1 && k[1] == K_OPS && v.is_none())
                .count();
            assert_eq!(deleted, 3);
        }
    }
}
