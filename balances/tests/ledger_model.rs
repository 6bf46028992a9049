//! Property tests: random operation sequences against a reference model.
//!
//! Each case builds a small world (3 to 6 accounts in a shallow hierarchy,
//! two units, buckets with expiry / priority / service restrictions / credit
//! limits, some caps) and runs 50 to 200 random steps: credits, adjustments,
//! reserves, commits (partial, final, over-used), releases, sweeps, retries
//! of earlier operations, reuse of op ids with other content, status and cap
//! changes, new buckets, idempotency-window changes, time passing and
//! snapshot round trips. After every step it checks:
//!
//! * the result equals what the model predicts (so retries return the first
//!   result, resolved reservations are `ReservationNotFound`, ...);
//! * every bucket, cap and open reservation equals the model's;
//! * the audit entries of the step equal the model's, and per unit
//!   `totals == credited + granted + adjusted − debited − forfeited`, with the
//!   flows taken from the returned outcomes (forfeits from `Expire` entries);
//! * `check_invariants()`, and no bucket below its credit limit;
//! * per commit: debited == used ≤ what the reservation still held, and the
//!   total committed on a reservation never exceeds what was granted;
//! * snapshots (full, or incremental into a store) restore to an equal ledger;
//!   one encoded a slice at a time while operations go on restores to the
//!   ledger as it was when it began.
//!
//! The model is written from the documented semantics, independently of the
//! ledger's data structures (draw order by an explicit sort, flat maps).

use proptest::prelude::*;
use proptest::sample::Index;
use reckon_balances::ledger::{
    ALERTS_KEPT, BUCKETS_PER_ACCOUNT_MAX, DEPTH_MAX, WINDOW_MS_DEFAULT, WINDOW_MS_MAX,
};
use reckon_balances::snapshot::{CheckpointState, SnapshotWrite};
use reckon_balances::{
    AccountId, AccountStatus, Amount, AuditEntry, AuditKind, BucketId, BucketSpec, Command,
    CreditKind, Hold, InvalidInput, Ledger, LedgerError, OpId, OpResult, Operation, Outcome,
    Period, ReservationId, ServiceId, Timestamp, Unit,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

const UNITS: [Unit; 2] = [Unit::USD, Unit::GPU_SECONDS];
const T0: u64 = 1_000_000;
const REASON_LEN_MAX: usize = 256;
const SERVICES_MAX: usize = 32;

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct MBucket {
    id: BucketId,
    unit: Unit,
    amount: i128,
    held: i128,
    credit_limit: i128,
    valid_from: Timestamp,
    valid_until: Timestamp,
    priority: i16,
    services: Vec<ServiceId>,
    /// No terms and priority 0: may be the default bucket of a credit.
    plain: bool,
    expired: bool,
}

impl MBucket {
    fn free(&self) -> i128 {
        self.amount - self.held + self.credit_limit
    }
}

#[derive(Clone, Debug)]
struct MLimit {
    unit: Unit,
    cap: i128,
    used: i128,
    held: i128,
    period: Period,
    soft: bool,
    start: Timestamp,
    end: Timestamp,
    alerts: Vec<u8>,
    /// Thresholds that fired this period.
    fired: Vec<u8>,
}

impl MLimit {
    /// The model's reading of a period: usage counts until the stored
    /// period ends; the first commit after it starts the period of its time.
    fn used_at(&self, now: Timestamp) -> i128 {
        if now >= self.end {
            0
        } else {
            self.used
        }
    }
    fn roll(&mut self, now: Timestamp) {
        if now >= self.end {
            (self.start, self.end) = self.period.bounds(now);
            self.used = 0;
            self.fired.clear();
        }
    }
    fn reached(&self, pct: u8) -> bool {
        self.used > 0 && self.used * 100 >= self.cap * pct as i128
    }
}

#[derive(Clone, Debug)]
struct MAccount {
    parent: Option<AccountId>,
    draws_on_parent: bool,
    status: AccountStatus,
    depth: usize,
    buckets: Vec<MBucket>,
    limits: Vec<MLimit>,
}

#[derive(Clone, Debug)]
struct MReservation {
    account: AccountId,
    unit: Unit,
    remaining: i128,
    expires_at: Timestamp,
    holds: Vec<Hold>,
    limit_accounts: Vec<AccountId>,
    granted: i128,
    committed: i128,
}

#[derive(Clone, Debug)]
struct MOp {
    command: Command,
    at: Timestamp,
    result: OpResult,
}

/// Money flows of one unit, from outcomes.
#[derive(Clone, Copy, Debug, Default)]
struct Flows {
    credited: i128,
    granted: i128,
    adjusted: i128,
    debited: i128,
    forfeited: i128,
}

#[derive(Debug)]
struct Model {
    accounts: BTreeMap<AccountId, MAccount>,
    reservations: BTreeMap<ReservationId, MReservation>,
    /// Every reservation ever issued, with what was granted and committed.
    issued: Vec<ReservationId>,
    closed_reservations: BTreeMap<ReservationId, MReservation>,
    ops: HashMap<OpId, MOp>,
    op_order: VecDeque<(Timestamp, OpId)>,
    window_ms: u64,
    next_bucket: u64,
    next_reservation: u64,
    audit: Vec<AuditEntry>,
    audit_seq: u64,
    flows: BTreeMap<Unit, Flows>,
    /// Every alert raised: (account, unit, period kind, threshold, used, cap).
    alerts: Vec<(AccountId, Unit, u8, u8, i128, i128)>,
}

fn amt(n: i128) -> Amount {
    Amount::from_nanos(n)
}

impl Model {
    fn new() -> Model {
        Model {
            accounts: BTreeMap::new(),
            reservations: BTreeMap::new(),
            issued: Vec::new(),
            closed_reservations: BTreeMap::new(),
            ops: HashMap::new(),
            op_order: VecDeque::new(),
            window_ms: WINDOW_MS_DEFAULT,
            next_bucket: 1,
            next_reservation: 1,
            audit: Vec::new(),
            audit_seq: 0,
            flows: BTreeMap::new(),
            alerts: Vec::new(),
        }
    }

    /// Predicts `Ledger::apply`; the flag says whether the command ran (as
    /// opposed to an answer from the idempotency table or an op-id refusal).
    fn apply(&mut self, now: Timestamp, op: &Operation) -> (OpResult, bool) {
        while let Some(&(at, id)) = self.op_order.front() {
            if at.plus_ms(self.window_ms) > now {
                break;
            }
            self.op_order.pop_front();
            self.ops.remove(&id);
        }
        if matches!(op.command, Command::Sweep) {
            if op.op != OpId::SERVER {
                return (Err(LedgerError::Invalid(InvalidInput::SweepOpId)), false);
            }
            return (Ok(self.sweep(now)), true);
        }
        if op.op == OpId::SERVER {
            return (Err(LedgerError::InvalidOpId), false);
        }
        if let Some(entry) = self.ops.get(&op.op) {
            let result = if entry.command == op.command {
                entry.result.clone()
            } else {
                Err(LedgerError::OpIdReused)
            };
            return (result, false);
        }
        let result = self.execute(now, op.op, &op.command);
        self.ops.insert(
            op.op,
            MOp {
                command: op.command.clone(),
                at: now,
                result: result.clone(),
            },
        );
        self.op_order.push_back((now, op.op));
        (result, true)
    }

    fn is_remembered(&self, op: OpId, now: Timestamp) -> bool {
        self.ops
            .get(&op)
            .is_some_and(|e| e.at.plus_ms(self.window_ms) > now)
    }

    fn flows(&mut self, unit: Unit) -> &mut Flows {
        self.flows.entry(unit).or_default()
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
        delta: i128,
        balance_after: i128,
        reservation: Option<ReservationId>,
        reason: Option<Arc<str>>,
    ) {
        self.audit_seq += 1;
        self.audit.push(AuditEntry {
            seq: self.audit_seq,
            at,
            op,
            account,
            bucket,
            unit,
            kind,
            delta: amt(delta),
            balance_after: amt(balance_after),
            reservation,
            reason,
        });
    }

    fn execute(&mut self, now: Timestamp, op: OpId, command: &Command) -> OpResult {
        match command {
            Command::CreateAccount {
                account,
                parent,
                draws_on_parent,
            } => self.create_account(*account, *parent, *draws_on_parent),
            Command::SetStatus { account, status } => {
                // Reservations made by the account or any account below it.
                let below = |mut a: AccountId| loop {
                    if a == *account {
                        return true;
                    }
                    match self.accounts.get(&a).and_then(|x| x.parent) {
                        Some(p) => a = p,
                        None => return false,
                    }
                };
                let subtree_reserved = self.reservations.values().any(|r| below(r.account));
                let a = self
                    .accounts
                    .get_mut(account)
                    .ok_or(LedgerError::AccountNotFound(*account))?;
                if a.status == AccountStatus::Closed {
                    return Err(LedgerError::Invalid(InvalidInput::ClosingIsFinal));
                }
                if *status == AccountStatus::Closed
                    && (a.buckets.iter().any(|b| b.held > 0) || subtree_reserved)
                {
                    return Err(LedgerError::Invalid(
                        InvalidInput::CloseWithOpenReservations,
                    ));
                }
                a.status = *status;
                Ok(Outcome::StatusSet)
            }
            Command::SetLimit {
                account,
                unit,
                cap,
                period,
                soft,
                alerts,
            } => {
                let a = self
                    .accounts
                    .get_mut(account)
                    .ok_or(LedgerError::AccountNotFound(*account))?;
                let cap = cap.map(|c| c.nanos());
                if cap.is_some_and(|c| c < 0) {
                    return Err(LedgerError::Invalid(InvalidInput::CapNegative));
                }
                period.validate().map_err(LedgerError::Invalid)?;
                let valid = alerts.len() <= 8
                    && alerts.iter().all(|a| (1..=250).contains(a))
                    && alerts.windows(2).all(|w| w[0] < w[1]);
                if !valid {
                    return Err(LedgerError::Invalid(InvalidInput::Thresholds));
                }
                let (start, end) = period.bounds(now);
                let sibling_held = a
                    .limits
                    .iter()
                    .find(|l| l.unit == *unit)
                    .map_or(0, |l| l.held);
                let same = |l: &MLimit| l.unit == *unit && l.period.kind() == period.kind();
                match cap {
                    Some(cap) => match a.limits.iter_mut().find(|l| same(l)) {
                        Some(l) => {
                            l.roll(now);
                            if (l.start, l.end) != (start, end) {
                                l.used = 0;
                            }
                            (l.cap, l.period, l.soft, l.start, l.end) =
                                (cap, *period, *soft, start, end);
                            let fired = std::mem::take(&mut l.fired);
                            l.fired = alerts
                                .iter()
                                .copied()
                                .filter(|p| fired.contains(p) && l.reached(*p))
                                .collect();
                            l.alerts = alerts.clone();
                        }
                        None => a.limits.push(MLimit {
                            unit: *unit,
                            cap,
                            used: 0,
                            held: sibling_held,
                            period: *period,
                            soft: *soft,
                            start,
                            end,
                            alerts: alerts.clone(),
                            fired: Vec::new(),
                        }),
                    },
                    None => a.limits.retain(|l| !same(l)),
                }
                Ok(Outcome::LimitSet)
            }
            Command::GrantBucket { account, spec } => self.grant(now, op, *account, spec),
            Command::Credit {
                account,
                unit,
                amount,
                bucket,
                kind,
                reason,
            } => self.credit(
                now,
                op,
                *account,
                *unit,
                amount.nanos(),
                *bucket,
                *kind,
                reason,
            ),
            Command::Adjust {
                account,
                bucket,
                delta,
                reason,
            } => self.adjust(now, op, *account, *bucket, delta.nanos(), reason),
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
                amount.nanos(),
                min_amount.nanos(),
                *service,
                *expires_at,
            ),
            Command::Commit {
                reservation,
                used,
                release_rest,
            } => self.commit(now, op, *reservation, used.nanos(), *release_rest),
            Command::Release { reservation } => {
                let r = self
                    .reservations
                    .remove(reservation)
                    .ok_or(LedgerError::ReservationNotFound(*reservation))?;
                let released = r.remaining;
                self.drop_reservation(now, *reservation, r);
                Ok(Outcome::Released {
                    released: amt(released),
                })
            }
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
                let pa = self
                    .accounts
                    .get(&p)
                    .ok_or(LedgerError::AccountNotFound(p))?;
                if pa.status == AccountStatus::Closed {
                    return Err(LedgerError::AccountNotActive {
                        account: p,
                        status: pa.status,
                    });
                }
                if pa.depth >= DEPTH_MAX {
                    return Err(LedgerError::HierarchyTooDeep(DEPTH_MAX));
                }
                pa.depth + 1
            }
        };
        self.accounts.insert(
            id,
            MAccount {
                parent,
                draws_on_parent: draws_on_parent && parent.is_some(),
                status: AccountStatus::Active,
                depth,
                buckets: Vec::new(),
                limits: Vec::new(),
            },
        );
        Ok(Outcome::AccountCreated)
    }

    fn writable(&self, id: AccountId) -> Result<&MAccount, LedgerError> {
        let a = self
            .accounts
            .get(&id)
            .ok_or(LedgerError::AccountNotFound(id))?;
        if a.status == AccountStatus::Closed {
            return Err(LedgerError::AccountNotActive {
                account: id,
                status: a.status,
            });
        }
        Ok(a)
    }

    fn grant(&mut self, now: Timestamp, op: OpId, id: AccountId, spec: &BucketSpec) -> OpResult {
        let invalid = |w| Err(LedgerError::Invalid(w));
        if spec.amount.is_negative() {
            return invalid(InvalidInput::AmountNegative);
        }
        if spec.credit_limit.is_negative() {
            return invalid(InvalidInput::CreditLimitNegative);
        }
        if spec.valid_until <= spec.valid_from {
            return invalid(InvalidInput::ValidityWindow);
        }
        if spec.valid_until <= now {
            return invalid(InvalidInput::ExpiryNotAfterNow);
        }
        if spec.services.len() > SERVICES_MAX {
            return invalid(InvalidInput::TooManyServices);
        }
        if self.writable(id)?.buckets.len() >= BUCKETS_PER_ACCOUNT_MAX {
            return Err(LedgerError::TooManyBuckets(BUCKETS_PER_ACCOUNT_MAX));
        }
        let bucket = BucketId(self.next_bucket);
        self.next_bucket += 1;
        let mut services = spec.services.clone();
        services.sort_unstable();
        services.dedup();
        let has_terms = spec.valid_from != Timestamp(0)
            || spec.valid_until != Timestamp::NEVER
            || !spec.services.is_empty()
            || !spec.credit_limit.is_zero();
        let account = self.accounts.get_mut(&id).expect("checked");
        account.buckets.push(MBucket {
            id: bucket,
            unit: spec.unit,
            amount: spec.amount.nanos(),
            held: 0,
            credit_limit: spec.credit_limit.nanos(),
            valid_from: spec.valid_from,
            valid_until: spec.valid_until,
            priority: spec.priority,
            services,
            plain: !has_terms && spec.priority == 0,
            expired: false,
        });
        if spec.amount.is_positive() {
            let n = spec.amount.nanos();
            self.audit_push(
                now,
                op,
                id,
                bucket,
                spec.unit,
                AuditKind::Grant,
                n,
                n,
                None,
                None,
            );
            self.flows(spec.unit).granted += n;
        }
        Ok(Outcome::BucketGranted { bucket })
    }

    #[allow(clippy::too_many_arguments)]
    fn credit(
        &mut self,
        now: Timestamp,
        op: OpId,
        id: AccountId,
        unit: Unit,
        amount: i128,
        bucket: Option<BucketId>,
        kind: CreditKind,
        reason: &Arc<str>,
    ) -> OpResult {
        if amount <= 0 {
            return Err(LedgerError::Invalid(InvalidInput::AmountNotPositive));
        }
        if reason.len() > REASON_LEN_MAX {
            return Err(LedgerError::Invalid(InvalidInput::ReasonTooLong));
        }
        let account = self.writable(id)?;
        let index = match bucket {
            Some(b) => {
                let i = account
                    .buckets
                    .iter()
                    .position(|x| x.id == b && !x.expired)
                    .ok_or(LedgerError::BucketNotFound(b))?;
                if account.buckets[i].unit != unit {
                    return Err(LedgerError::UnitMismatch {
                        bucket: account.buckets[i].unit,
                        request: unit,
                    });
                }
                Some(i)
            }
            None => account
                .buckets
                .iter()
                .position(|x| x.unit == unit && x.plain && !x.expired),
        };
        let index = match index {
            Some(i) => i,
            None => {
                if account.buckets.len() >= BUCKETS_PER_ACCOUNT_MAX {
                    return Err(LedgerError::TooManyBuckets(BUCKETS_PER_ACCOUNT_MAX));
                }
                let b = BucketId(self.next_bucket);
                self.next_bucket += 1;
                let account = self.accounts.get_mut(&id).expect("checked");
                account.buckets.push(MBucket {
                    id: b,
                    unit,
                    amount: 0,
                    held: 0,
                    credit_limit: 0,
                    valid_from: Timestamp(0),
                    valid_until: Timestamp::NEVER,
                    priority: 0,
                    services: Vec::new(),
                    plain: true,
                    expired: false,
                });
                account.buckets.len() - 1
            }
        };
        let account = self.accounts.get_mut(&id).expect("checked");
        let b = &mut account.buckets[index];
        b.amount += amount;
        let (bucket_id, balance) = (b.id, b.amount);
        let kind = match kind {
            CreditKind::TopUp => AuditKind::TopUp,
            CreditKind::Refund => AuditKind::Refund,
        };
        self.audit_push(
            now,
            op,
            id,
            bucket_id,
            unit,
            kind,
            amount,
            balance,
            None,
            Some(reason.clone()),
        );
        self.flows(unit).credited += amount;
        Ok(Outcome::BalanceChanged {
            bucket: bucket_id,
            balance: amt(balance),
        })
    }

    fn adjust(
        &mut self,
        now: Timestamp,
        op: OpId,
        id: AccountId,
        bucket: BucketId,
        delta: i128,
        reason: &Arc<str>,
    ) -> OpResult {
        if delta == 0 {
            return Err(LedgerError::Invalid(InvalidInput::DeltaZero));
        }
        if reason.len() > REASON_LEN_MAX {
            return Err(LedgerError::Invalid(InvalidInput::ReasonTooLong));
        }
        let account = self.writable(id)?;
        let b = account
            .buckets
            .iter()
            .find(|b| b.id == bucket && !b.expired)
            .ok_or(LedgerError::BucketNotFound(bucket))?;
        if delta < 0 && -delta > b.free() {
            return Err(LedgerError::InsufficientFunds {
                available: amt(b.free().max(0)),
            });
        }
        let account = self.accounts.get_mut(&id).expect("checked");
        let b = account
            .buckets
            .iter_mut()
            .find(|b| b.id == bucket)
            .expect("checked");
        b.amount += delta;
        let (unit, balance) = (b.unit, b.amount);
        self.audit_push(
            now,
            op,
            id,
            bucket,
            unit,
            AuditKind::Adjust,
            delta,
            balance,
            None,
            Some(reason.clone()),
        );
        self.flows(unit).adjusted += delta;
        Ok(Outcome::BalanceChanged {
            bucket,
            balance: amt(balance),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &mut self,
        now: Timestamp,
        id: AccountId,
        unit: Unit,
        amount: i128,
        min_amount: i128,
        service: Option<ServiceId>,
        expires_at: Timestamp,
    ) -> OpResult {
        if amount <= 0 {
            return Err(LedgerError::Invalid(InvalidInput::AmountNotPositive));
        }
        if min_amount <= 0 || min_amount > amount {
            return Err(LedgerError::Invalid(InvalidInput::MinAmount));
        }
        if expires_at <= now {
            return Err(LedgerError::Invalid(InvalidInput::ExpiryNotAfterNow));
        }
        // Walk up: every level must be active; caps on every level count;
        // buckets of the levels reached through draws_on_parent pay, each
        // level's in its own draw order.
        let mut order: Vec<(AccountId, BucketId, i128)> = Vec::new();
        let mut headroom: Option<(AccountId, i128, u8)> = None;
        let mut limit_accounts = Vec::new();
        let mut drawing = true;
        let mut current = Some(id);
        while let Some(acct_id) = current {
            let a = self
                .accounts
                .get(&acct_id)
                .ok_or(LedgerError::AccountNotFound(acct_id))?;
            if a.status != AccountStatus::Active {
                return Err(LedgerError::AccountNotActive {
                    account: acct_id,
                    status: a.status,
                });
            }
            if a.limits.iter().any(|l| l.unit == unit) {
                limit_accounts.push(acct_id);
            }
            // Soft controls never refuse; the tightest hard one bounds.
            for l in a.limits.iter().filter(|l| l.unit == unit && !l.soft) {
                let h = (l.cap - l.used_at(now) - l.held).max(0);
                if headroom.is_none_or(|(_, best, _)| h < best) {
                    headroom = Some((acct_id, h, l.period.kind()));
                }
            }
            if drawing {
                let mut eligible: Vec<(bool, i32, Timestamp, BucketId, i128)> = a
                    .buckets
                    .iter()
                    .filter(|b| {
                        b.unit == unit
                            && !b.expired
                            && now >= b.valid_from
                            && now < b.valid_until
                            && b.free() > 0
                            && (b.services.is_empty()
                                || service.is_some_and(|s| b.services.contains(&s)))
                    })
                    .map(|b| {
                        let general = b.services.is_empty();
                        (general, -(b.priority as i32), b.valid_until, b.id, b.free())
                    })
                    .collect();
                eligible.sort();
                order.extend(eligible.into_iter().map(|e| (acct_id, e.3, e.4)));
                drawing = a.draws_on_parent;
            }
            current = a.parent;
        }
        let total: i128 = order.iter().map(|o| o.2).sum();
        let mut grant = amount.min(total);
        if let Some((capped, h, period)) = headroom {
            if h < min_amount && h < total {
                return Err(LedgerError::LimitExceeded {
                    account: capped,
                    headroom: amt(h),
                    period,
                });
            }
            grant = grant.min(h);
        }
        if grant < min_amount {
            return Err(LedgerError::InsufficientFunds {
                available: amt(grant),
            });
        }
        let mut holds = Vec::new();
        let mut left = grant;
        for (owner, bucket, free) in order {
            if left == 0 {
                break;
            }
            let take = free.min(left);
            left -= take;
            self.bucket_mut(owner, bucket).held += take;
            holds.push(Hold {
                account: owner,
                bucket,
                amount: amt(take),
            });
        }
        assert_eq!(left, 0, "model: plan promised more than the buckets hold");
        for a in &limit_accounts {
            for l in self.limits_mut(*a, unit) {
                l.held += grant;
            }
        }
        let rid = ReservationId(self.next_reservation);
        self.next_reservation += 1;
        self.issued.push(rid);
        self.reservations.insert(
            rid,
            MReservation {
                account: id,
                unit,
                remaining: grant,
                expires_at,
                holds: holds.clone(),
                limit_accounts,
                granted: grant,
                committed: 0,
            },
        );
        Ok(Outcome::Reserved {
            reservation: rid,
            granted: amt(grant),
            holds: holds.into(),
        })
    }

    fn bucket_mut(&mut self, owner: AccountId, bucket: BucketId) -> &mut MBucket {
        self.accounts
            .get_mut(&owner)
            .and_then(|a| a.buckets.iter_mut().find(|b| b.id == bucket))
            .expect("model: held bucket exists")
    }

    /// Every control of `owner` in `unit`.
    fn limits_mut(&mut self, owner: AccountId, unit: Unit) -> impl Iterator<Item = &mut MLimit> {
        self.accounts
            .get_mut(&owner)
            .into_iter()
            .flat_map(|a| a.limits.iter_mut())
            .filter(move |l| l.unit == unit)
    }

    fn commit(
        &mut self,
        now: Timestamp,
        op: OpId,
        id: ReservationId,
        used: i128,
        release_rest: bool,
    ) -> OpResult {
        let r = self
            .reservations
            .get(&id)
            .ok_or(LedgerError::ReservationNotFound(id))?;
        if now >= r.expires_at {
            return Err(LedgerError::ReservationExpired(id));
        }
        if used < 0 {
            return Err(LedgerError::Invalid(InvalidInput::UsedNegative));
        }
        if used > r.remaining {
            return Err(LedgerError::CommitExceedsReservation {
                remaining: amt(r.remaining),
            });
        }
        let status = self.accounts[&r.account].status;
        if status == AccountStatus::Closed {
            return Err(LedgerError::AccountNotActive {
                account: r.account,
                status,
            });
        }
        let mut r = self.reservations.remove(&id).expect("checked");
        let mut debited = Vec::new();
        let mut left = used;
        for h in r.holds.iter_mut() {
            if left == 0 {
                break;
            }
            let take = h.amount.nanos().min(left);
            if take == 0 {
                continue;
            }
            left -= take;
            h.amount = amt(h.amount.nanos() - take);
            let b = self.bucket_mut(h.account, h.bucket);
            b.held -= take;
            b.amount -= take;
            let (unit, after, expired) = (b.unit, b.amount, b.expired);
            self.audit_push(
                now,
                op,
                h.account,
                h.bucket,
                unit,
                AuditKind::Debit,
                -take,
                after,
                Some(id),
                None,
            );
            if expired {
                // An expired bucket goes once nothing is in or held on it.
                self.forfeit(now, h.account, h.bucket);
            }
            debited.push(Hold {
                account: h.account,
                bucket: h.bucket,
                amount: amt(take),
            });
        }
        self.flows(r.unit).debited += used;
        r.remaining -= used;
        r.committed += used;
        let mut released = 0;
        if release_rest {
            released = r.remaining;
            for h in r.holds.clone() {
                if h.amount.nanos() > 0 {
                    self.unhold(now, h.account, h.bucket, h.amount.nanos());
                }
            }
            r.remaining = 0;
        }
        let mut raised = Vec::new();
        for a in r.limit_accounts.clone() {
            for l in self.limits_mut(a, r.unit) {
                l.roll(now);
                l.held = (l.held - used - released).max(0);
                l.used += used;
                for pct in l.alerts.clone() {
                    if !l.fired.contains(&pct) && l.reached(pct) {
                        l.fired.push(pct);
                        raised.push((a, l.unit, l.period.kind(), pct, l.used, l.cap));
                    }
                }
            }
        }
        self.alerts.extend(raised);
        let remaining = r.remaining;
        if remaining == 0 {
            self.closed_reservations.insert(id, r);
        } else {
            r.holds.retain(|h| h.amount.is_positive());
            self.reservations.insert(id, r);
        }
        Ok(Outcome::Committed {
            debited: debited.into(),
            released: amt(released),
            remaining: amt(remaining),
        })
    }

    fn unhold(&mut self, now: Timestamp, owner: AccountId, bucket: BucketId, amount: i128) {
        let b = self.bucket_mut(owner, bucket);
        b.held -= amount;
        if b.expired {
            self.forfeit(now, owner, bucket);
        }
    }

    fn forfeit(&mut self, now: Timestamp, owner: AccountId, bucket: BucketId) {
        let account = self.accounts.get_mut(&owner).expect("owner exists");
        let Some(index) = account.buckets.iter().position(|b| b.id == bucket) else {
            return;
        };
        let b = &mut account.buckets[index];
        let free = b.amount - b.held;
        let unit = b.unit;
        let mut entry = None;
        if free > 0 {
            b.amount -= free;
            entry = Some(b.amount);
        }
        if b.amount == 0 && b.held == 0 {
            account.buckets.remove(index);
        }
        if let Some(after) = entry {
            self.audit_push(
                now,
                OpId::SERVER,
                owner,
                bucket,
                unit,
                AuditKind::Expire,
                -free,
                after,
                None,
                None,
            );
            self.flows(unit).forfeited += free;
        }
    }

    fn drop_reservation(&mut self, now: Timestamp, id: ReservationId, r: MReservation) {
        for h in &r.holds {
            self.unhold(now, h.account, h.bucket, h.amount.nanos());
        }
        for a in &r.limit_accounts {
            for l in self.limits_mut(*a, r.unit) {
                l.held = (l.held - r.remaining).max(0);
            }
        }
        self.closed_reservations.insert(id, r);
    }

    fn sweep(&mut self, now: Timestamp) -> Outcome {
        let mut due: Vec<(Timestamp, ReservationId)> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires_at <= now)
            .map(|(id, r)| (r.expires_at, *id))
            .collect();
        due.sort();
        for (_, id) in &due {
            let r = self.reservations.remove(id).expect("due");
            self.drop_reservation(now, *id, r);
        }
        let mut buckets: Vec<(Timestamp, AccountId, BucketId)> = self
            .accounts
            .iter()
            .flat_map(|(a, acct)| {
                acct.buckets
                    .iter()
                    .filter(|b| {
                        !b.expired && b.valid_until != Timestamp::NEVER && b.valid_until <= now
                    })
                    .map(move |b| (b.valid_until, *a, b.id))
            })
            .collect();
        buckets.sort();
        for (_, owner, bucket) in &buckets {
            self.bucket_mut(*owner, *bucket).expired = true;
            self.forfeit(now, *owner, *bucket);
        }
        Outcome::Swept {
            reservations: due.len() as u32,
            buckets: buckets.len() as u32,
            more: false,
        }
    }
}

// ---------------------------------------------------------------------------
// Comparing the ledger with the model
// ---------------------------------------------------------------------------

fn compare_state(ledger: &Ledger, model: &Model) -> Result<(), TestCaseError> {
    if let Err(e) = ledger.check_invariants() {
        return Err(TestCaseError::fail(format!("invariant: {e}")));
    }
    prop_assert_eq!(ledger.account_count(), model.accounts.len());
    for (id, m) in &model.accounts {
        let v = ledger
            .account(*id)
            .ok_or_else(|| TestCaseError::fail(format!("account {id:?} missing")))?;
        prop_assert_eq!(v.parent, m.parent);
        prop_assert_eq!(v.status, m.status);
        prop_assert_eq!(v.draws_on_parent, m.draws_on_parent);
        let got: Vec<_> = v
            .buckets
            .iter()
            .map(|b| {
                (
                    b.id,
                    b.unit,
                    b.amount.nanos(),
                    b.held.nanos(),
                    b.available.nanos(),
                    b.credit_limit.nanos(),
                    b.valid_from,
                    b.valid_until,
                    b.priority,
                    b.services.clone(),
                    b.expired,
                )
            })
            .collect();
        let want: Vec<_> = m
            .buckets
            .iter()
            .map(|b| {
                (
                    b.id,
                    b.unit,
                    b.amount,
                    b.held,
                    if b.expired { 0 } else { b.free().max(0) },
                    b.credit_limit,
                    b.valid_from,
                    b.valid_until,
                    b.priority,
                    b.services.clone(),
                    b.expired,
                )
            })
            .collect();
        prop_assert_eq!(got, want, "buckets of {:?}", id);
        for b in &v.buckets {
            // Never below the credit limit, never a negative hold.
            prop_assert!(b.held.nanos() >= 0);
            prop_assert!(b.amount.nanos() - b.held.nanos() + b.credit_limit.nanos() >= 0);
            prop_assert!(b.available.nanos() >= 0);
        }
        let got: Vec<_> = v
            .limits
            .iter()
            .map(|l| {
                (
                    (l.unit, l.cap.nanos(), l.used.nanos(), l.held.nanos()),
                    (
                        l.period,
                        l.soft,
                        l.period_start,
                        l.period_end,
                        l.alerts.clone(),
                    ),
                )
            })
            .collect();
        let want: Vec<_> = m
            .limits
            .iter()
            .map(|l| {
                (
                    (l.unit, l.cap, l.used, l.held),
                    (l.period, l.soft, l.start, l.end, l.alerts.clone()),
                )
            })
            .collect();
        prop_assert_eq!(got, want, "limits of {:?}", id);
    }
    // Alerts: the same crossings, in the same order, the last ones kept.
    let got: Vec<_> = ledger
        .alerts_after(0, usize::MAX)
        .iter()
        .map(|a| {
            (
                a.account,
                a.unit,
                a.period,
                a.threshold_pct,
                a.used.nanos(),
                a.cap.nanos(),
            )
        })
        .collect();
    let kept = model.alerts.len().saturating_sub(ALERTS_KEPT);
    prop_assert_eq!(&got[..], &model.alerts[kept..]);
    prop_assert_eq!(ledger.last_alert(), model.alerts.len() as u64);
    prop_assert_eq!(ledger.reservation_count(), model.reservations.len());
    for (id, r) in &model.reservations {
        let v = ledger
            .reservation(*id)
            .ok_or_else(|| TestCaseError::fail(format!("reservation {id:?} missing")))?;
        prop_assert_eq!(v.account, r.account);
        prop_assert_eq!(v.unit, r.unit);
        prop_assert_eq!(v.remaining.nanos(), r.remaining);
        prop_assert_eq!(v.expires_at, r.expires_at);
        prop_assert_eq!(&v.holds[..], &r.holds[..]);
    }
    for id in model.closed_reservations.keys() {
        prop_assert!(ledger.reservation(*id).is_none());
    }
    // (a) conservation per unit, from the outcomes' flows.
    let totals = ledger.totals();
    for unit in UNITS {
        let f = model.flows.get(&unit).copied().unwrap_or_default();
        let expected = f.credited + f.granted + f.adjusted - f.debited - f.forfeited;
        let total = totals.get(&unit).map_or(0, |a| a.nanos());
        prop_assert_eq!(total, expected, "conservation of {}: {:?}", unit, f);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generated worlds and steps
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct GrantPlan {
    account: Index,
    unit: usize,
    amount: i128,
    priority: i16,
    /// Starts this long after now (None: valid from the epoch).
    starts_in_ms: Option<u64>,
    /// Ends this long after now (None: never).
    ends_in_ms: Option<u64>,
    services: u8,
    credit_limit: i128,
}

#[derive(Clone, Debug)]
struct World {
    /// For each account after the first: (is another root, parent pick, draws).
    accounts: Vec<(bool, Index, bool)>,
    grants: Vec<GrantPlan>,
    top_ups: Vec<(Index, usize, i128)>,
    caps: Vec<(Index, usize, i128)>,
    window_ms: u64,
}

#[derive(Clone, Debug)]
enum Step {
    Credit {
        account: Index,
        unit: usize,
        amount: i128,
        bucket: Option<Index>,
        refund: bool,
    },
    Adjust {
        account: Index,
        bucket: Index,
        foreign: bool,
        delta: i128,
    },
    Reserve {
        account: Index,
        unit: usize,
        amount: i128,
        min_pct: u8,
        service: Option<u8>,
        ttl_ms: u64,
    },
    Commit {
        reservation: Index,
        used_pct: u8,
        release_rest: bool,
    },
    Release {
        reservation: Index,
    },
    Sweep,
    Retry {
        which: Index,
    },
    Reuse {
        which: Index,
        content_of: Index,
    },
    Advance {
        ms: u64,
    },
    Status {
        account: Index,
        status: u8,
    },
    Cap {
        account: Index,
        unit: usize,
        cap: Option<i128>,
        /// 0 lifetime, 1 calendar month, 2 a fixed 1–3 minutes from now.
        period: u8,
        length_min: u8,
        soft: bool,
        alerts: Vec<u8>,
    },
    Grant(GrantPlan),
    Window {
        ms: u64,
    },
    /// 0: a full snapshot; 1: an incremental one at once; 2: an
    /// incremental one begun now and encoded a few entries per later step
    /// while operations go on.
    Snapshot {
        mode: u8,
    },
}

fn amount() -> impl Strategy<Value = i128> {
    prop_oneof![
        6 => (1i128..=30_000).prop_map(|milli| milli * 1_000_000),
        1 => 1i128..=2_000,
    ]
}

fn grant_plan() -> impl Strategy<Value = GrantPlan> {
    (
        any::<Index>(),
        0..UNITS.len(),
        prop_oneof![1 => Just(0i128), 5 => amount()],
        -2i16..=2,
        prop_oneof![4 => Just(None), 1 => (1u64..=20_000).prop_map(Some)],
        prop_oneof![2 => Just(None), 3 => (1_000u64..=120_000).prop_map(Some)],
        prop_oneof![3 => Just(0u8), 1 => 1u8..=3],
        prop_oneof![4 => Just(0i128), 1 => amount()],
    )
        .prop_map(
            |(
                account,
                unit,
                amount,
                priority,
                starts_in_ms,
                ends_in_ms,
                services,
                credit_limit,
            )| {
                GrantPlan {
                    account,
                    unit,
                    amount,
                    priority,
                    starts_in_ms,
                    ends_in_ms,
                    services,
                    credit_limit,
                }
            },
        )
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(
            (prop::bool::weighted(0.15), any::<Index>(), any::<bool>()),
            2..=5,
        ),
        prop::collection::vec(grant_plan(), 2..=8),
        prop::collection::vec((any::<Index>(), 0..UNITS.len(), amount()), 1..=6),
        prop::collection::vec(
            (
                any::<Index>(),
                0..UNITS.len(),
                (0i128..=60_000).prop_map(|m| m * 1_000_000),
            ),
            0..=2,
        ),
        prop_oneof![Just(WINDOW_MS_DEFAULT), 2_000u64..=40_000],
    )
        .prop_map(|(accounts, grants, top_ups, caps, window_ms)| World {
            accounts,
            grants,
            top_ups,
            caps,
            window_ms,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<Index>(), 0..UNITS.len(), amount(), prop::option::weighted(0.3, any::<Index>()), prop::bool::weighted(0.3))
            .prop_map(|(account, unit, amount, bucket, refund)| Step::Credit { account, unit, amount, bucket, refund }),
        4 => (any::<Index>(), any::<Index>(), prop::bool::weighted(0.1), amount(), any::<bool>())
            .prop_map(|(account, bucket, foreign, delta, negative)| Step::Adjust {
                account, bucket, foreign, delta: if negative { -delta } else { delta },
            }),
        14 => (any::<Index>(), 0..UNITS.len(), amount(), 0u8..=104, prop::option::weighted(0.4, 1u8..=4),
               prop_oneof![1 => Just(0u64), 20 => 1u64..=30_000])
            .prop_map(|(account, unit, amount, min_pct, service, ttl_ms)| Step::Reserve {
                account, unit, amount, min_pct, service, ttl_ms,
            }),
        12 => (any::<Index>(), 0u8..=130, any::<bool>())
            .prop_map(|(reservation, used_pct, release_rest)| Step::Commit { reservation, used_pct, release_rest }),
        4 => any::<Index>().prop_map(|reservation| Step::Release { reservation }),
        3 => Just(Step::Sweep),
        5 => any::<Index>().prop_map(|which| Step::Retry { which }),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(which, content_of)| Step::Reuse { which, content_of }),
        6 => prop_oneof![3 => 1u64..=3_000, 1 => 3_000u64..=60_000].prop_map(|ms| Step::Advance { ms }),
        2 => (any::<Index>(), prop_oneof![5 => Just(0u8), 4 => Just(1u8), 1 => Just(2u8)])
            .prop_map(|(account, status)| Step::Status { account, status }),
        2 => (any::<Index>(), 0..UNITS.len(),
              prop::option::weighted(0.8, (0i128..=60_000).prop_map(|m| m * 1_000_000)),
              0u8..3, 1u8..=3, prop::bool::weighted(0.2),
              // Mostly valid thresholds; now and then out of order or zero.
              prop_oneof![4 => prop::sample::subsequence(vec![25u8, 50, 80, 100, 150], 0..=5),
                          1 => prop::collection::vec(0u8..=255, 0..=9)])
            .prop_map(|(account, unit, cap, period, length_min, soft, alerts)| Step::Cap {
                account, unit, cap, period, length_min, soft, alerts,
            }),
        2 => grant_plan().prop_map(Step::Grant),
        1 => prop_oneof![0u64..=60_000, Just(WINDOW_MS_MAX + 1)].prop_map(|ms| Step::Window { ms }),
        3 => (0u8..3).prop_map(|mode| Step::Snapshot { mode }),
    ]
}

// ---------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------

struct Run {
    ledger: Ledger,
    model: Model,
    now: Timestamp,
    next_op: u128,
    account_ids: Vec<AccountId>,
    /// Every client operation applied, for retries and reuse.
    history: Vec<Operation>,
    /// First result of each op id, while it is remembered.
    first_results: HashMap<OpId, OpResult>,
    /// Incremental snapshots: the store and its checkpoint state.
    store: BTreeMap<Vec<u8>, Vec<u8>>,
    checkpoint: CheckpointState,
    /// The idempotency window grew since the store was started.
    window_grew_since_store: bool,
    /// While an interleaved checkpoint is being encoded: the operations
    /// applied since it began (replayed onto its restore to check it).
    interleaved: Option<Vec<(Timestamp, Operation)>>,
    /// Sum of every audit delta so far, per unit.
    audit_totals: BTreeMap<Unit, i128>,
    checks: Counters,
}

#[derive(Debug, Default)]
struct Differences {
    state: Vec<String>,
    extra_ops: Vec<OpId>,
    missing_ops: Vec<OpId>,
}

#[derive(Default, Debug)]
struct Counters {
    interleaved: usize,
    reserved: usize,
    committed: usize,
    expired: usize,
    retries: usize,
    reused: usize,
    snapshots: usize,
}

impl Run {
    fn new() -> Run {
        Run {
            ledger: Ledger::new(),
            model: Model::new(),
            now: Timestamp(T0),
            next_op: 0,
            account_ids: Vec::new(),
            history: Vec::new(),
            first_results: HashMap::new(),
            store: BTreeMap::new(),
            checkpoint: CheckpointState::default(),
            window_grew_since_store: false,
            interleaved: None,
            audit_totals: BTreeMap::new(),
            checks: Counters::default(),
        }
    }

    fn fresh_op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    /// A client operation with a fresh op id, checked; the result is dropped.
    fn client(&mut self, command: Command) -> Result<(), TestCaseError> {
        self.client_result(command).map(drop)
    }

    /// A client operation with a fresh op id, checked.
    fn client_result(&mut self, command: Command) -> Result<OpResult, TestCaseError> {
        let op = Operation {
            op: self.fresh_op(),
            command,
        };
        self.history.push(op.clone());
        self.apply_result(op)
    }

    /// Applies to both, checked; the result is dropped.
    fn apply(&mut self, op: Operation) -> Result<(), TestCaseError> {
        self.apply_result(op).map(drop)
    }

    /// Applies to both, compares results, audit and state.
    fn apply_result(&mut self, op: Operation) -> Result<OpResult, TestCaseError> {
        let now = self.now;
        let remembered = self.model.is_remembered(op.op, now);
        let pending_reservation = match &op.command {
            Command::Commit { reservation, .. } | Command::Release { reservation } => {
                self.model.reservations.get(reservation).cloned()
            }
            _ => None,
        };
        let window_before = self.model.window_ms;
        let got = self.ledger.apply(now, &op);
        if let Some(since) = self.interleaved.as_mut() {
            since.push((now, op.clone()));
        }
        let (want, executed) = self.model.apply(now, &op);
        if self.model.window_ms > window_before {
            self.window_grew_since_store = true;
        }
        if std::env::var_os("LEDGER_MODEL_TRACE").is_some() {
            eprintln!("{now:?} {op:?}\n    -> {got:?}");
        }
        prop_assert_eq!(&got, &want, "op {:?} at {:?}", op, now);

        // (e) a retry within the window returns exactly the first result.
        if op.op != OpId::SERVER {
            if remembered {
                if let Some(first) = self.first_results.get(&op.op) {
                    let same = self
                        .model
                        .ops
                        .get(&op.op)
                        .is_some_and(|e| e.command == op.command);
                    if same {
                        prop_assert_eq!(&got, first, "retry of {:?}", op.op);
                    } else {
                        prop_assert_eq!(&got, &Err(LedgerError::OpIdReused));
                    }
                }
            } else if executed {
                self.first_results.insert(op.op, got.clone());
            }
        }

        // (c), (d): reservations resolve once; commits debit exactly `used`.
        if executed {
            match (&op.command, &got) {
                (
                    Command::Reserve {
                        amount, min_amount, ..
                    },
                    Ok(Outcome::Reserved { granted, holds, .. }),
                ) => {
                    self.checks.reserved += 1;
                    prop_assert!(granted >= min_amount && granted <= amount);
                    let sum: i128 = holds.iter().map(|h| h.amount.nanos()).sum();
                    prop_assert_eq!(sum, granted.nanos());
                }
                (
                    Command::Commit {
                        reservation,
                        used,
                        release_rest,
                    },
                    Ok(Outcome::Committed {
                        debited,
                        released,
                        remaining,
                    }),
                ) => {
                    self.checks.committed += 1;
                    let before = pending_reservation.ok_or_else(|| {
                        TestCaseError::fail("commit of a resolved reservation succeeded")
                    })?;
                    let sum: i128 = debited.iter().map(|h| h.amount.nanos()).sum();
                    prop_assert_eq!(sum, used.nanos());
                    prop_assert!(used.nanos() <= before.remaining);
                    prop_assert_eq!(
                        released.nanos() + remaining.nanos() + used.nanos(),
                        before.remaining
                    );
                    if *release_rest {
                        prop_assert!(remaining.is_zero());
                    }
                    let r = self
                        .model
                        .reservations
                        .get(reservation)
                        .or_else(|| self.model.closed_reservations.get(reservation))
                        .expect("model knows it");
                    prop_assert!(r.committed <= r.granted);
                }
                (Command::Commit { reservation, .. } | Command::Release { reservation }, _)
                    if pending_reservation.is_none()
                        && self.model.closed_reservations.contains_key(reservation) =>
                {
                    prop_assert_eq!(&got, &Err(LedgerError::ReservationNotFound(*reservation)));
                }
                (Command::Sweep, Ok(Outcome::Swept { reservations, .. })) => {
                    self.checks.expired += *reservations as usize;
                }
                _ => {}
            }
        }

        // Audit: exactly the model's entries, and (a) deltas sum to the change.
        let audit = self.ledger.drain_audit();
        let expected = std::mem::take(&mut self.model.audit);
        prop_assert_eq!(&audit, &expected, "audit of {:?}", op);
        for e in &audit {
            *self.audit_totals.entry(e.unit).or_default() += e.delta.nanos();
        }
        let totals = self.ledger.totals();
        for unit in UNITS {
            let total = totals.get(&unit).map_or(0, |a| a.nanos());
            let audited = self.audit_totals.get(&unit).copied().unwrap_or(0);
            prop_assert_eq!(total, audited, "audit deltas of {} vs totals", unit);
        }
        if let (Command::Commit { .. }, Ok(Outcome::Committed { debited, .. })) =
            (&op.command, &got)
        {
            if executed {
                let debit_sum: i128 = audit
                    .iter()
                    .filter(|e| e.kind == AuditKind::Debit)
                    .map(|e| e.delta.nanos())
                    .sum();
                let out_sum: i128 = debited.iter().map(|h| h.amount.nanos()).sum();
                prop_assert_eq!(-debit_sum, out_sum);
            }
        }
        compare_state(&self.ledger, &self.model)?;
        Ok(got)
    }

    fn account(&self, pick: &Index) -> AccountId {
        *pick.get(&self.account_ids)
    }

    fn reservation(&self, pick: &Index) -> ReservationId {
        let issued = &self.model.issued;
        let i = pick.index(issued.len() + 1);
        issued
            .get(i)
            .copied()
            .unwrap_or(ReservationId(self.model.next_reservation + 7))
    }

    fn grant_command(&self, g: &GrantPlan) -> Command {
        let services = match g.services {
            0 => vec![],
            1 => vec![ServiceId(1)],
            2 => vec![ServiceId(2), ServiceId(1)],
            _ => vec![ServiceId(3)],
        };
        Command::GrantBucket {
            account: self.account(&g.account),
            spec: BucketSpec {
                unit: UNITS[g.unit],
                amount: amt(g.amount),
                valid_from: g
                    .starts_in_ms
                    .map_or(Timestamp(0), |ms| self.now.plus_ms(ms)),
                valid_until: g
                    .ends_in_ms
                    .map_or(Timestamp::NEVER, |ms| self.now.plus_ms(ms)),
                priority: g.priority,
                services,
                credit_limit: amt(g.credit_limit),
            },
        }
    }

    fn setup(&mut self, w: &World) -> Result<(), TestCaseError> {
        let window = Command::SetIdempotencyWindow {
            window_ms: w.window_ms,
        };
        prop_assert_eq!(self.client_result(window)?, Ok(Outcome::WindowSet));
        let root = AccountId(10);
        prop_assert_eq!(
            self.client_result(Command::CreateAccount {
                account: root,
                parent: None,
                draws_on_parent: false,
            })?,
            Ok(Outcome::AccountCreated)
        );
        self.account_ids.push(root);
        let mut roots = vec![root];
        for (i, (another_root, parent, draws)) in w.accounts.iter().enumerate() {
            let id = AccountId(11 + i as u64);
            let parent = if *another_root {
                None
            } else {
                Some(*parent.get(&roots))
            };
            prop_assert_eq!(
                self.client_result(Command::CreateAccount {
                    account: id,
                    parent,
                    draws_on_parent: *draws,
                })?,
                Ok(Outcome::AccountCreated)
            );
            self.account_ids.push(id);
            // Two levels: roots and their children.
            if parent.is_none() {
                roots.push(id);
            }
        }
        for (account, unit, cap) in &w.caps {
            let cmd = Command::SetLimit {
                account: self.account(account),
                unit: UNITS[*unit],
                cap: Some(amt(*cap)),
                period: Period::Lifetime,
                soft: false,
                alerts: Vec::new(),
            };
            prop_assert_eq!(self.client_result(cmd)?, Ok(Outcome::LimitSet));
        }
        for g in &w.grants {
            let cmd = self.grant_command(g);
            self.client(cmd)?;
        }
        for (account, unit, amount) in &w.top_ups {
            let cmd = Command::Credit {
                account: self.account(account),
                unit: UNITS[*unit],
                amount: amt(*amount),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: Arc::from("opening balance"),
            };
            prop_assert!(self.client_result(cmd)?.is_ok());
        }
        Ok(())
    }

    fn step(&mut self, s: &Step) -> Result<(), TestCaseError> {
        if self.interleaved.is_some() {
            // A slice of the checkpoint being encoded, between operations.
            let budget = 1 + self.checks.snapshots % 3;
            if let Some(writes) = self.ledger.checkpoint_step(budget) {
                self.finish_interleaved(writes)?;
            }
        }
        match s {
            Step::Credit {
                account,
                unit,
                amount,
                bucket,
                refund,
            } => {
                let account = self.account(account);
                let bucket = bucket.as_ref().and_then(|pick| {
                    let buckets = &self.model.accounts[&account].buckets;
                    (!buckets.is_empty()).then(|| pick.get(buckets).id)
                });
                self.client(Command::Credit {
                    account,
                    unit: UNITS[*unit],
                    amount: amt(*amount),
                    bucket,
                    kind: if *refund {
                        CreditKind::Refund
                    } else {
                        CreditKind::TopUp
                    },
                    reason: Arc::from(if *refund { "refund" } else { "top-up" }),
                })?;
            }
            Step::Adjust {
                account,
                bucket,
                foreign,
                delta,
            } => {
                let account = self.account(account);
                let owner = if *foreign {
                    self.account(bucket)
                } else {
                    account
                };
                let buckets = &self.model.accounts[&owner].buckets;
                let bucket = if buckets.is_empty() {
                    BucketId(self.model.next_bucket + 3)
                } else {
                    bucket.get(buckets).id
                };
                self.client(Command::Adjust {
                    account,
                    bucket,
                    delta: amt(*delta),
                    reason: Arc::from("adjustment"),
                })?;
            }
            Step::Reserve {
                account,
                unit,
                amount,
                min_pct,
                service,
                ttl_ms,
            } => {
                let min_amount = if *min_pct == 0 {
                    0
                } else {
                    (amount * *min_pct as i128 / 100).max(1)
                };
                self.client(Command::Reserve {
                    account: self.account(account),
                    unit: UNITS[*unit],
                    amount: amt(*amount),
                    min_amount: amt(min_amount),
                    service: service.map(|s| ServiceId(s as u32)),
                    expires_at: self.now.plus_ms(*ttl_ms),
                })?;
            }
            Step::Commit {
                reservation,
                used_pct,
                release_rest,
            } => {
                let id = self.reservation(reservation);
                let remaining = self
                    .model
                    .reservations
                    .get(&id)
                    .map_or(1_000_000_000, |r| r.remaining);
                let used = match used_pct {
                    130 => -1,
                    121..=129 => remaining + 1,
                    p => remaining * *p as i128 / 100,
                };
                self.client(Command::Commit {
                    reservation: id,
                    used: amt(used),
                    release_rest: *release_rest,
                })?;
            }
            Step::Release { reservation } => {
                let id = self.reservation(reservation);
                self.client(Command::Release { reservation: id })?;
            }
            Step::Sweep => {
                self.apply(Operation {
                    op: OpId::SERVER,
                    command: Command::Sweep,
                })?;
            }
            Step::Retry { which } => {
                if !self.history.is_empty() {
                    self.checks.retries += 1;
                    let op = which.get(&self.history).clone();
                    self.apply(op)?;
                }
            }
            Step::Reuse { which, content_of } => {
                if !self.history.is_empty() {
                    self.checks.reused += 1;
                    let op = which.get(&self.history).op;
                    let command = content_of.get(&self.history).command.clone();
                    self.apply(Operation { op, command })?;
                }
            }
            Step::Advance { ms } => {
                self.now = self.now.plus_ms(*ms);
            }
            Step::Status { account, status } => {
                let status = AccountStatus::from_code(*status).expect("valid code");
                self.client(Command::SetStatus {
                    account: self.account(account),
                    status,
                })?;
            }
            Step::Cap {
                account,
                unit,
                cap,
                period,
                length_min,
                soft,
                alerts,
            } => {
                let period = match period {
                    0 => Period::Lifetime,
                    1 => Period::calendar_month(0),
                    _ => Period::Fixed {
                        anchor: self.now,
                        length_ms: *length_min as u64 * 60_000,
                    },
                };
                self.client(Command::SetLimit {
                    account: self.account(account),
                    unit: UNITS[*unit],
                    cap: cap.map(amt),
                    period,
                    soft: *soft,
                    alerts: alerts.clone(),
                })?;
            }
            Step::Grant(g) => {
                let cmd = self.grant_command(g);
                self.client(cmd)?;
            }
            Step::Window { ms } => {
                self.client(Command::SetIdempotencyWindow { window_ms: *ms })?;
            }
            Step::Snapshot { mode } => {
                if let Some(writes) = self
                    .interleaved
                    .is_some()
                    .then(|| self.ledger.checkpoint_step(usize::MAX))
                    .flatten()
                {
                    self.finish_interleaved(writes)?;
                }
                match mode {
                    0 | 1 => self.snapshot(*mode == 1)?,
                    _ => self.begin_interleaved()?,
                }
            }
        }
        Ok(())
    }

    /// What differs between the live ledger and `other`.
    fn differences(&self, other: &Ledger) -> Differences {
        let mut d = Differences::default();
        for id in &self.account_ids {
            let (a, b) = (self.ledger.account(*id), other.account(*id));
            if a != b {
                d.state
                    .push(format!("account {id:?}: live {a:?}\n restored {b:?}"));
            }
        }
        for i in 1..self.model.next_reservation + 1 {
            let id = ReservationId(i);
            let (a, b) = (self.ledger.reservation(id), other.reservation(id));
            if a != b {
                d.state
                    .push(format!("reservation {id:?}: live {a:?} restored {b:?}"));
            }
        }
        for op in &self.history {
            match (self.ledger.is_known_op(op.op), other.is_known_op(op.op)) {
                (false, true) => d.extra_ops.push(op.op),
                (true, false) => d.missing_ops.push(op.op),
                _ => {}
            }
        }
        d.extra_ops.dedup();
        d.missing_ops.dedup();
        d
    }

    /// Begins a checkpoint to be encoded a slice per step.
    fn begin_interleaved(&mut self) -> Result<(), TestCaseError> {
        self.checks.snapshots += 1;
        self.apply(Operation {
            op: OpId::SERVER,
            command: Command::Sweep,
        })?;
        self.ledger.checkpoint_begin(&mut self.checkpoint, self.now);
        self.interleaved = Some(Vec::new());
        Ok(())
    }

    /// Applies a checkpoint's writes to the store and restores a ledger
    /// from the whole store.
    fn store_and_restore(
        &mut self,
        writes: Vec<SnapshotWrite>,
    ) -> Result<(Ledger, CheckpointState), TestCaseError> {
        for (k, v) in writes {
            match v {
                Some(v) => self.store.insert(k, v),
                None => self.store.remove(&k),
            };
        }
        Ledger::restore(self.store.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .map_err(|e| TestCaseError::fail(format!("restore: {e}")))
    }

    /// (f') A checkpoint encoded while operations changed the ledger is the
    /// state as it was when it began: its restore, with the operations
    /// since replayed, equals the live ledger.
    fn finish_interleaved(&mut self, writes: Vec<SnapshotWrite>) -> Result<(), TestCaseError> {
        let since = self.interleaved.take().unwrap_or_default();
        let (mut restored, state) = self.store_and_restore(writes)?;
        prop_assert_eq!(state.seq, self.checkpoint.seq);
        for (at, op) in &since {
            let _ = restored.apply(*at, op);
        }
        if restored.state_digest() != self.ledger.state_digest() {
            let d = self.differences(&restored);
            return Err(TestCaseError::fail(format!(
                "checkpoint encoded while {} operations ran, restored and replayed, differs: {d:?}; operations since it began: {since:?}",
                since.len()
            )));
        }
        self.checks.interleaved += 1;
        Ok(())
    }

    /// (f) A snapshot restores to an equal ledger, which then carries on.
    fn snapshot(&mut self, incremental: bool) -> Result<(), TestCaseError> {
        self.checks.snapshots += 1;
        let restored = if incremental {
            // First evict what the window has forgotten, as any apply would:
            // the store drops op blobs by the same rule, so a ledger that had
            // not evicted yet would differ only by ops it can no longer use.
            self.apply(Operation {
                op: OpId::SERVER,
                command: Command::Sweep,
            })?;
            let writes = self.ledger.checkpoint(&mut self.checkpoint, self.now);
            let digest = self.ledger.state_digest();
            let (mut restored, state) = self.store_and_restore(writes)?;
            // Stale op entries in a blob that is still kept come back; the
            // next apply evicts them, as the live ledger did.
            let evicted = restored.apply(
                self.now,
                &Operation {
                    op: OpId::SERVER,
                    command: Command::Sweep,
                },
            );
            prop_assert_eq!(
                evicted,
                Ok(Outcome::Swept {
                    reservations: 0,
                    buckets: 0,
                    more: false
                })
            );
            prop_assert_eq!(state.seq, self.checkpoint.seq);
            if restored.state_digest() != digest {
                let d = self.differences(&restored);
                return Err(TestCaseError::fail(format!(
                    "incremental restore differs ({}window grew): {d:?}",
                    if self.window_grew_since_store {
                        ""
                    } else {
                        "no "
                    }
                )));
            }
            restored
        } else {
            let mut state = CheckpointState::default();
            let writes = self.ledger.full_checkpoint(&mut state, self.now);
            let (restored, _) = Ledger::restore(
                writes
                    .iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| (k.as_slice(), v.as_slice()))),
            )
            .map_err(|e| TestCaseError::fail(format!("restore: {e}")))?;
            // A checkpoint may forget expired op ids (as any apply would),
            // nothing else: compare with the live ledger after it.
            compare_state(&self.ledger, &self.model)?;
            prop_assert_eq!(
                restored.state_digest(),
                self.ledger.state_digest(),
                "full restore"
            );
            // A full checkpoint rewrote every key: the store starts afresh.
            self.store.clear();
            for (k, v) in writes {
                match v {
                    Some(v) => self.store.insert(k, v),
                    None => self.store.remove(&k),
                };
            }
            self.checkpoint = state;
            self.window_grew_since_store = false;
            restored
        };
        let mut restored = restored;
        prop_assert!(restored.drain_audit().is_empty());
        compare_state(&restored, &self.model)?;
        // Carry on with the restored ledger: it must behave the same.
        self.ledger = restored;
        Ok(())
    }
}

fn run(world: &World, steps: &[Step]) -> Result<Counters, TestCaseError> {
    let mut run = Run::new();
    run.setup(world)?;
    for s in steps {
        run.step(s)?;
    }
    Ok(run.checks)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("LEDGER_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1024),
        max_shrink_iters: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ledger_matches_the_model(
        world in world(),
        steps in prop::collection::vec(step(), 50..=200),
    ) {
        run(&world, &steps)?;
    }
}

/// The generated runs do reach every path the properties are about.
#[test]
fn generated_runs_exercise_every_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config::default());
    let mut total = Counters::default();
    for _ in 0..24 {
        let world = world().new_tree(&mut runner).unwrap().current();
        let steps = prop::collection::vec(step(), 150..=200)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let c = run(&world, &steps).unwrap();
        total.reserved += c.reserved;
        total.committed += c.committed;
        total.expired += c.expired;
        total.retries += c.retries;
        total.reused += c.reused;
        total.snapshots += c.snapshots;
        total.interleaved += c.interleaved;
    }
    assert!(total.reserved > 0, "{total:?}");
    assert!(total.committed > 0, "{total:?}");
    assert!(total.expired > 0, "{total:?}");
    assert!(total.retries > 0, "{total:?}");
    assert!(total.reused > 0, "{total:?}");
    assert!(total.snapshots > 0, "{total:?}");
    assert!(total.interleaved > 0, "{total:?}");
}

/// Op ids the live ledger has forgotten must stay forgotten after a restore,
/// also when the idempotency window grew in between: otherwise a reuse of
/// such an id that the live ledger executed (and acknowledged) is refused
/// with `OpIdReused` when the log is replayed onto the snapshot.
#[test]
fn restore_does_not_resurrect_op_ids_forgotten_before_the_window_grew() {
    let at = |ms: u64| Timestamp(T0 + ms);
    let account = AccountId(1);
    let credit = |units: i64| Command::Credit {
        account,
        unit: Unit::USD,
        amount: Amount::from_units(units),
        bucket: None,
        kind: CreditKind::TopUp,
        reason: Arc::from("top-up"),
    };
    let mut live = Ledger::new();
    let apply = |ledger: &mut Ledger, ms: u64, op: u128, command: Command| {
        ledger.apply(
            at(ms),
            &Operation {
                op: OpId(op),
                command,
            },
        )
    };
    let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut state = CheckpointState::default();
    let mut checkpoint = |ledger: &mut Ledger, ms: u64, store: &mut BTreeMap<_, _>| {
        for (k, v) in ledger.checkpoint(&mut state, at(ms)) {
            match v {
                Some(v) => store.insert(k, v),
                None => store.remove(&k),
            };
        }
    };
    assert!(apply(
        &mut live,
        0,
        1,
        Command::SetIdempotencyWindow { window_ms: 1_000 }
    )
    .is_ok());
    assert!(apply(
        &mut live,
        0,
        2,
        Command::CreateAccount {
            account,
            parent: None,
            draws_on_parent: false
        }
    )
    .is_ok());
    assert!(apply(&mut live, 0, 3, credit(10)).is_ok());
    assert!(apply(&mut live, 900, 4, credit(1)).is_ok());
    checkpoint(&mut live, 900, &mut store);
    // Evicts ops 1 to 3 (older than 1 s), then widens the window.
    assert!(apply(
        &mut live,
        1_000,
        5,
        Command::SetIdempotencyWindow { window_ms: 60_000 }
    )
    .is_ok());
    assert!(!live.is_known_op(OpId(3)));
    checkpoint(&mut live, 1_000, &mut store);
    let (mut restored, _) =
        Ledger::restore(store.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
    assert!(
        !restored.is_known_op(OpId(3)),
        "op 3 was forgotten by the live ledger but is remembered after restore"
    );
    assert_eq!(restored.state_digest(), live.state_digest());
    // Reusing the forgotten id is a new operation on both.
    let reuse = credit(5);
    let expected = Ok(Outcome::BalanceChanged {
        bucket: BucketId(1),
        balance: Amount::from_units(16),
    });
    assert_eq!(apply(&mut live, 1_001, 3, reuse.clone()), expected);
    assert_eq!(apply(&mut restored, 1_001, 3, reuse), expected);
}
