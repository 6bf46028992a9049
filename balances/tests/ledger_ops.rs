//! Unit tests of every ledger operation and every error `Ledger::apply` can
//! return, with exact amounts, exact error variants and the audit trail.

use reckon_balances::ledger::{BUCKETS_PER_ACCOUNT_MAX, DEPTH_MAX, SWEEP_ITEMS_MAX, WINDOW_MS_MAX};
use reckon_balances::{
    AccountId, AccountStatus, Amount, AmountError, AuditEntry, AuditKind, BucketId, BucketSpec,
    BucketView, Command, CreditKind, Hold, InvalidInput, Ledger, LedgerError, LimitView, OpId,
    OpResult, Operation, Outcome, Period, ReservationId, ServiceId, Timestamp, Unit,
};
use rust_decimal::Decimal;
use std::str::FromStr;
use std::sync::Arc;

const T0: Timestamp = Timestamp(1_000_000);
const ROOT: AccountId = AccountId(1);
const CHILD: AccountId = AccountId(2);
const OTHER: AccountId = AccountId(3);
const GPU: Unit = Unit::GPU_SECONDS;
const USD: Unit = Unit::USD;

fn u(units: i64) -> Amount {
    Amount::from_units(units)
}

fn n(nanos: i128) -> Amount {
    Amount::from_nanos(nanos)
}

fn reason(text: &str) -> Arc<str> {
    Arc::from(text)
}

/// A ledger with a clock and an op-id counter, plus helpers that unwrap the
/// expected outcome of each command.
struct Fixture {
    ledger: Ledger,
    now: Timestamp,
    next_op: u128,
}

struct Reserved {
    id: ReservationId,
    granted: Amount,
    holds: Vec<Hold>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            ledger: Ledger::new(),
            now: T0,
            next_op: 0,
        }
    }

    /// A root account (1) with a plain 100 USD wallet.
    fn with_wallet() -> (Fixture, BucketId) {
        let mut f = Fixture::new();
        f.create(ROOT, None, false);
        let b = f.topup(ROOT, USD, u(100));
        f.ledger.drain_audit();
        (f, b)
    }

    fn fresh_op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    fn apply(&mut self, command: Command) -> OpResult {
        let op = self.fresh_op();
        self.apply_as(op, command)
    }

    fn apply_as(&mut self, op: OpId, command: Command) -> OpResult {
        self.ledger.apply(self.now, &Operation { op, command })
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
    }

    fn create(&mut self, account: AccountId, parent: Option<AccountId>, draws_on_parent: bool) {
        let r = self.apply(Command::CreateAccount {
            account,
            parent,
            draws_on_parent,
        });
        assert_eq!(r, Ok(Outcome::AccountCreated));
    }

    fn grant(&mut self, account: AccountId, spec: BucketSpec) -> BucketId {
        match self.apply(Command::GrantBucket { account, spec }) {
            Ok(Outcome::BucketGranted { bucket }) => bucket,
            other => panic!("grant failed: {other:?}"),
        }
    }

    fn credit_cmd(account: AccountId, unit: Unit, amount: Amount) -> Command {
        Command::Credit {
            account,
            unit,
            amount,
            bucket: None,
            kind: CreditKind::TopUp,
            reason: reason("top-up"),
        }
    }

    fn topup(&mut self, account: AccountId, unit: Unit, amount: Amount) -> BucketId {
        match self.apply(Self::credit_cmd(account, unit, amount)) {
            Ok(Outcome::BalanceChanged { bucket, .. }) => bucket,
            other => panic!("top-up failed: {other:?}"),
        }
    }

    fn reserve_cmd(
        &self,
        account: AccountId,
        unit: Unit,
        amount: Amount,
        min_amount: Amount,
        service: Option<ServiceId>,
    ) -> Command {
        Command::Reserve {
            account,
            unit,
            amount,
            min_amount,
            service,
            expires_at: self.now.plus_ms(60_000),
        }
    }

    fn try_reserve(
        &mut self,
        account: AccountId,
        unit: Unit,
        amount: Amount,
        min_amount: Amount,
        service: Option<ServiceId>,
    ) -> OpResult {
        let cmd = self.reserve_cmd(account, unit, amount, min_amount, service);
        self.apply(cmd)
    }

    fn reserve(
        &mut self,
        account: AccountId,
        unit: Unit,
        amount: Amount,
        min_amount: Amount,
        service: Option<ServiceId>,
    ) -> Reserved {
        match self.try_reserve(account, unit, amount, min_amount, service) {
            Ok(Outcome::Reserved {
                reservation,
                granted,
                holds,
            }) => {
                let sum: i128 = holds.iter().map(|h| h.amount.nanos()).sum();
                assert_eq!(sum, granted.nanos(), "holds must add up to the grant");
                Reserved {
                    id: reservation,
                    granted,
                    holds: holds.to_vec(),
                }
            }
            other => panic!("reserve failed: {other:?}"),
        }
    }

    fn commit(&mut self, reservation: ReservationId, used: Amount, release_rest: bool) -> OpResult {
        self.apply(Command::Commit {
            reservation,
            used,
            release_rest,
        })
    }

    fn release(&mut self, reservation: ReservationId) -> OpResult {
        self.apply(Command::Release { reservation })
    }

    fn sweep(&mut self) -> OpResult {
        self.apply_as(OpId::SERVER, Command::Sweep)
    }

    fn bucket(&self, account: AccountId, id: BucketId) -> BucketView {
        self.ledger
            .account(account)
            .expect("account exists")
            .buckets
            .into_iter()
            .find(|b| b.id == id)
            .unwrap_or_else(|| panic!("bucket {id:?} missing on {account:?}"))
    }

    fn has_bucket(&self, account: AccountId, id: BucketId) -> bool {
        self.ledger
            .account(account)
            .expect("account exists")
            .buckets
            .iter()
            .any(|b| b.id == id)
    }

    /// (amount, held, available) of a bucket.
    fn bal(&self, account: AccountId, id: BucketId) -> (Amount, Amount, Amount) {
        let b = self.bucket(account, id);
        (b.amount, b.held, b.available)
    }

    fn limit(&self, account: AccountId, unit: Unit) -> LimitView {
        self.ledger
            .account(account)
            .expect("account exists")
            .limits
            .into_iter()
            .find(|l| l.unit == unit)
            .expect("limit exists")
    }

    fn total(&self, unit: Unit) -> Amount {
        self.ledger.totals().get(&unit).copied().unwrap_or_default()
    }

    fn check(&self) {
        self.ledger.check_invariants().unwrap();
    }
}

fn hold(account: AccountId, bucket: BucketId, amount: Amount) -> Hold {
    Hold {
        account,
        bucket,
        amount,
    }
}

/// Builds an outcome's hold list, whatever collection type it uses.
fn to_holds<T: From<Vec<Hold>>>(holds: Vec<Hold>) -> T {
    holds.into()
}

fn spec(unit: Unit, amount: Amount) -> BucketSpec {
    BucketSpec::plain(unit, amount)
}

fn expiring(unit: Unit, amount: Amount, valid_until: Timestamp) -> BucketSpec {
    BucketSpec {
        valid_until,
        ..BucketSpec::plain(unit, amount)
    }
}

/// (kind, account, bucket, delta, balance_after) of audit entries.
fn audit_summary(entries: &[AuditEntry]) -> Vec<(AuditKind, AccountId, BucketId, Amount, Amount)> {
    entries
        .iter()
        .map(|e| (e.kind, e.account, e.bucket, e.delta, e.balance_after))
        .collect()
}

// ---------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------

#[test]
fn create_account_builds_the_hierarchy() {
    let mut f = Fixture::new();
    f.create(ROOT, None, true);
    f.create(CHILD, Some(ROOT), true);
    f.create(OTHER, Some(ROOT), false);

    let root = f.ledger.account(ROOT).unwrap();
    assert_eq!(root.parent, None);
    assert_eq!(root.status, AccountStatus::Active);
    // A root has no parent to draw on, whatever it asked for.
    assert!(!root.draws_on_parent);
    assert!(root.buckets.is_empty() && root.limits.is_empty());
    let child = f.ledger.account(CHILD).unwrap();
    assert_eq!(child.parent, Some(ROOT));
    assert!(child.draws_on_parent);
    assert!(!f.ledger.account(OTHER).unwrap().draws_on_parent);
    assert_eq!(f.ledger.account_count(), 3);
    assert!(f.ledger.account(AccountId(99)).is_none());
    f.check();
}

#[test]
fn create_account_errors() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let create = |account, parent| Command::CreateAccount {
        account,
        parent,
        draws_on_parent: false,
    };
    assert_eq!(
        f.apply(create(ROOT, None)),
        Err(LedgerError::AccountExists(ROOT))
    );
    assert_eq!(
        f.apply(create(CHILD, Some(CHILD))),
        Err(LedgerError::Invalid(InvalidInput::OwnParent))
    );
    assert_eq!(
        f.apply(create(CHILD, Some(AccountId(77)))),
        Err(LedgerError::AccountNotFound(AccountId(77)))
    );

    // DEPTH_MAX levels are fine, one more is not.
    let mut parent = ROOT;
    for level in 2..=DEPTH_MAX as u64 {
        let id = AccountId(100 + level);
        f.create(id, Some(parent), true);
        parent = id;
    }
    assert_eq!(
        f.apply(create(AccountId(999), Some(parent))),
        Err(LedgerError::HierarchyTooDeep(DEPTH_MAX))
    );

    // No children under a closed account; a suspended one is fine.
    f.create(OTHER, None, false);
    assert_eq!(
        f.apply(Command::SetStatus {
            account: OTHER,
            status: AccountStatus::Suspended
        }),
        Ok(Outcome::StatusSet)
    );
    f.create(AccountId(50), Some(OTHER), false);
    assert_eq!(
        f.apply(Command::SetStatus {
            account: OTHER,
            status: AccountStatus::Closed
        }),
        Ok(Outcome::StatusSet)
    );
    assert_eq!(
        f.apply(create(AccountId(51), Some(OTHER))),
        Err(LedgerError::AccountNotActive {
            account: OTHER,
            status: AccountStatus::Closed
        })
    );
    assert!(f.ledger.account(CHILD).is_none());
    assert!(f.ledger.account(AccountId(999)).is_none());
    assert!(f.ledger.account(AccountId(51)).is_none());
    f.check();
}

#[test]
fn set_status_transitions_and_closing_is_final() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let status = |s| Command::SetStatus {
        account: ROOT,
        status: s,
    };
    for s in [
        AccountStatus::Suspended,
        AccountStatus::Active,
        AccountStatus::Active,
        AccountStatus::Closed,
    ] {
        assert_eq!(f.apply(status(s)), Ok(Outcome::StatusSet));
        assert_eq!(f.ledger.account(ROOT).unwrap().status, s);
    }
    for s in [
        AccountStatus::Active,
        AccountStatus::Suspended,
        AccountStatus::Closed,
    ] {
        assert_eq!(
            f.apply(status(s)),
            Err(LedgerError::Invalid(InvalidInput::ClosingIsFinal))
        );
    }
    assert_eq!(
        f.apply(Command::SetStatus {
            account: AccountId(9),
            status: AccountStatus::Active
        }),
        Err(LedgerError::AccountNotFound(AccountId(9)))
    );
    f.check();
}

#[test]
fn set_limit_sets_updates_and_removes() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let limit = |unit, cap| Command::SetLimit {
        account: ROOT,
        unit,
        cap,
        period: Period::Lifetime,
        soft: false,
        alerts: Vec::new(),
    };
    assert_eq!(f.apply(limit(USD, Some(u(50)))), Ok(Outcome::LimitSet));
    assert_eq!(f.apply(limit(GPU, Some(u(7)))), Ok(Outcome::LimitSet));
    assert_eq!(f.apply(limit(USD, Some(u(60)))), Ok(Outcome::LimitSet));
    assert_eq!(
        f.ledger.account(ROOT).unwrap().limits,
        vec![
            LimitView {
                unit: USD,
                cap: u(60),
                used: u(0),
                held: u(0),
                period: Period::Lifetime,
                soft: false,
                period_start: Timestamp(0),
                period_end: Timestamp::NEVER,
                alerts: Vec::new(),
            },
            LimitView {
                unit: GPU,
                cap: u(7),
                used: u(0),
                held: u(0),
                period: Period::Lifetime,
                soft: false,
                period_start: Timestamp(0),
                period_end: Timestamp::NEVER,
                alerts: Vec::new(),
            },
        ]
    );
    assert_eq!(f.apply(limit(USD, None)), Ok(Outcome::LimitSet));
    // Removing an absent cap is not an error.
    assert_eq!(f.apply(limit(Unit::EUR, None)), Ok(Outcome::LimitSet));
    assert_eq!(f.ledger.account(ROOT).unwrap().limits.len(), 1);
    assert_eq!(
        f.apply(limit(USD, Some(n(-1)))),
        Err(LedgerError::Invalid(InvalidInput::CapNegative))
    );
    // Zero is a valid cap.
    assert_eq!(f.apply(limit(USD, Some(u(0)))), Ok(Outcome::LimitSet));
    assert_eq!(
        f.apply(Command::SetLimit {
            account: AccountId(9),
            unit: USD,
            cap: Some(u(1)),
            period: Period::Lifetime,
            soft: false,
            alerts: Vec::new(),
        }),
        Err(LedgerError::AccountNotFound(AccountId(9)))
    );
    f.check();
}

// ---------------------------------------------------------------------------
// Buckets and credits
// ---------------------------------------------------------------------------

#[test]
fn grant_bucket_creates_a_bucket_with_its_terms_and_audits_it() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let s = BucketSpec {
        unit: GPU,
        amount: u(3600),
        valid_from: Timestamp(500),
        valid_until: T0.plus_ms(10_000),
        priority: 7,
        services: vec![ServiceId(9), ServiceId(2), ServiceId(9)],
        credit_limit: u(10),
    };
    let b = f.grant(ROOT, s);
    assert_eq!(b, BucketId(1));
    assert_eq!(
        f.bucket(ROOT, b),
        BucketView {
            id: b,
            unit: GPU,
            amount: u(3600),
            held: u(0),
            available: u(3610),
            credit_limit: u(10),
            valid_from: Timestamp(500),
            valid_until: T0.plus_ms(10_000),
            priority: 7,
            // Sorted and deduplicated.
            services: vec![ServiceId(2), ServiceId(9)],
            expired: false,
        }
    );
    let audit = f.ledger.drain_audit();
    assert_eq!(audit.len(), 1);
    let e = &audit[0];
    assert_eq!(
        (e.seq, e.at, e.op, e.account, e.bucket, e.unit, e.kind),
        (1, T0, OpId(2), ROOT, b, GPU, AuditKind::Grant)
    );
    assert_eq!((e.delta, e.balance_after), (u(3600), u(3600)));
    assert_eq!((e.reservation, e.reason.clone()), (None, None));

    // An empty bucket is granted without an audit entry; ids keep counting.
    assert_eq!(f.grant(ROOT, spec(GPU, u(0))), BucketId(2));
    assert!(f.ledger.drain_audit().is_empty());
    assert_eq!(f.total(GPU), u(3600));
    f.check();
}

#[test]
fn grant_bucket_errors() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let grant = |s: BucketSpec| Command::GrantBucket {
        account: ROOT,
        spec: s,
    };
    let cases = [
        (
            BucketSpec {
                amount: n(-1),
                ..spec(USD, u(0))
            },
            InvalidInput::AmountNegative,
        ),
        (
            BucketSpec {
                credit_limit: n(-1),
                ..spec(USD, u(1))
            },
            InvalidInput::CreditLimitNegative,
        ),
        (
            BucketSpec {
                valid_from: Timestamp(2_000_000),
                valid_until: Timestamp(2_000_000),
                ..spec(USD, u(1))
            },
            InvalidInput::ValidityWindow,
        ),
        (expiring(USD, u(1), T0), InvalidInput::ExpiryNotAfterNow),
        (
            BucketSpec {
                services: (0..33).map(ServiceId).collect(),
                ..spec(USD, u(1))
            },
            InvalidInput::TooManyServices,
        ),
    ];
    for (s, why) in cases {
        assert_eq!(f.apply(grant(s)), Err(LedgerError::Invalid(why)));
    }
    // 32 services is the maximum and fine.
    let b = f.grant(
        ROOT,
        BucketSpec {
            services: (0..32).map(ServiceId).collect(),
            ..spec(USD, u(1))
        },
    );
    assert_eq!(f.bucket(ROOT, b).services.len(), 32);
    assert_eq!(
        f.apply(Command::GrantBucket {
            account: AccountId(9),
            spec: spec(USD, u(1))
        }),
        Err(LedgerError::AccountNotFound(AccountId(9)))
    );
    for _ in 1..BUCKETS_PER_ACCOUNT_MAX {
        f.grant(ROOT, spec(USD, u(1)));
    }
    assert_eq!(
        f.apply(grant(spec(USD, u(1)))),
        Err(LedgerError::TooManyBuckets(BUCKETS_PER_ACCOUNT_MAX))
    );
    // A top-up needing a new default bucket hits the same bound; one in a
    // unit with a plain bucket credits the first plain bucket (id 2).
    assert_eq!(
        f.apply(Fixture::credit_cmd(ROOT, GPU, u(1))),
        Err(LedgerError::TooManyBuckets(BUCKETS_PER_ACCOUNT_MAX))
    );
    assert_eq!(f.topup(ROOT, USD, u(1)), BucketId(2));

    f.create(OTHER, None, false);
    assert_eq!(
        f.apply(Command::SetStatus {
            account: OTHER,
            status: AccountStatus::Closed
        }),
        Ok(Outcome::StatusSet)
    );
    assert_eq!(
        f.apply(Command::GrantBucket {
            account: OTHER,
            spec: spec(USD, u(1))
        }),
        Err(LedgerError::AccountNotActive {
            account: OTHER,
            status: AccountStatus::Closed
        })
    );
    assert_eq!(f.total(USD), u(65));
    f.check();
}

#[test]
fn top_up_and_refund_credit_the_default_bucket_and_audit() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    // A bucket with terms is never the default bucket.
    let promo = f.grant(ROOT, expiring(USD, u(5), T0.plus_ms(1_000)));
    f.ledger.drain_audit();

    let r = f.apply(Command::Credit {
        account: ROOT,
        unit: USD,
        amount: Amount::from_str("12.5").unwrap(),
        bucket: None,
        kind: CreditKind::TopUp,
        reason: reason("card payment"),
    });
    let wallet = BucketId(2);
    assert_eq!(
        r,
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: n(12_500_000_000)
        })
    );
    let r = f.apply(Command::Credit {
        account: ROOT,
        unit: USD,
        amount: u(3),
        bucket: None,
        kind: CreditKind::Refund,
        reason: reason("failed job"),
    });
    assert_eq!(
        r,
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: n(15_500_000_000)
        })
    );
    // An explicit bucket.
    let r = f.apply(Command::Credit {
        account: ROOT,
        unit: USD,
        amount: u(1),
        bucket: Some(promo),
        kind: CreditKind::TopUp,
        reason: reason(""),
    });
    assert_eq!(
        r,
        Ok(Outcome::BalanceChanged {
            bucket: promo,
            balance: u(6)
        })
    );
    assert_eq!(f.ledger.account(ROOT).unwrap().buckets.len(), 2);
    assert_eq!(
        f.bal(ROOT, wallet),
        (n(15_500_000_000), u(0), n(15_500_000_000))
    );

    let audit = f.ledger.drain_audit();
    assert_eq!(
        audit_summary(&audit),
        vec![
            (
                AuditKind::TopUp,
                ROOT,
                wallet,
                n(12_500_000_000),
                n(12_500_000_000)
            ),
            (AuditKind::Refund, ROOT, wallet, u(3), n(15_500_000_000)),
            (AuditKind::TopUp, ROOT, promo, u(1), u(6)),
        ]
    );
    assert_eq!(audit[0].reason.as_deref(), Some("card payment"));
    assert_eq!(audit[1].reason.as_deref(), Some("failed job"));
    assert_eq!(audit[0].op, OpId(3));
    assert_eq!(audit[0].seq + 1, audit[1].seq);
    assert_eq!(audit[0].reservation, None);
    assert_eq!(f.total(USD), n(21_500_000_000));
    f.check();
}

#[test]
fn credit_errors() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    f.create(OTHER, None, false);
    let gpu = f.grant(ROOT, spec(GPU, u(1)));
    let foreign = f.grant(OTHER, spec(USD, u(1)));
    let credit = |account, amount, bucket, text: &str| Command::Credit {
        account,
        unit: USD,
        amount,
        bucket,
        kind: CreditKind::TopUp,
        reason: reason(text),
    };
    assert_eq!(
        f.apply(credit(ROOT, u(0), None, "")),
        Err(LedgerError::Invalid(InvalidInput::AmountNotPositive))
    );
    assert_eq!(
        f.apply(credit(ROOT, n(-5), None, "")),
        Err(LedgerError::Invalid(InvalidInput::AmountNotPositive))
    );
    assert_eq!(
        f.apply(credit(ROOT, u(1), None, &"x".repeat(257))),
        Err(LedgerError::Invalid(InvalidInput::ReasonTooLong))
    );
    // 256 bytes is the maximum.
    assert!(f.apply(credit(ROOT, u(1), None, &"x".repeat(256))).is_ok());
    assert_eq!(
        f.apply(credit(AccountId(9), u(1), None, "")),
        Err(LedgerError::AccountNotFound(AccountId(9)))
    );
    assert_eq!(
        f.apply(credit(ROOT, u(1), Some(BucketId(99)), "")),
        Err(LedgerError::BucketNotFound(BucketId(99)))
    );
    // Another account's bucket is not found on this one.
    assert_eq!(
        f.apply(credit(ROOT, u(1), Some(foreign), "")),
        Err(LedgerError::BucketNotFound(foreign))
    );
    assert_eq!(
        f.apply(credit(ROOT, u(1), Some(gpu), "")),
        Err(LedgerError::UnitMismatch {
            bucket: GPU,
            request: USD
        })
    );
    // Overflow past Amount::MAX.
    let big = f.grant(ROOT, spec(USD, Amount::MAX));
    assert_eq!(
        f.apply(credit(ROOT, n(1), Some(big), "")),
        Err(LedgerError::BalanceOverflow)
    );
    assert_eq!(f.bal(ROOT, big).0, Amount::MAX);
    f.check();
}

#[test]
fn closed_account_rejects_credits_suspended_accepts_them() {
    let (mut f, wallet) = Fixture::with_wallet();
    let set = |status| Command::SetStatus {
        account: ROOT,
        status,
    };
    assert_eq!(
        f.apply(set(AccountStatus::Suspended)),
        Ok(Outcome::StatusSet)
    );
    assert_eq!(
        f.apply(Fixture::credit_cmd(ROOT, USD, u(1))),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(101)
        })
    );
    assert_eq!(f.apply(set(AccountStatus::Closed)), Ok(Outcome::StatusSet));
    let closed = Err(LedgerError::AccountNotActive {
        account: ROOT,
        status: AccountStatus::Closed,
    });
    assert_eq!(f.apply(Fixture::credit_cmd(ROOT, USD, u(1))), closed);
    assert_eq!(
        f.apply(Command::Credit {
            account: ROOT,
            unit: USD,
            amount: u(1),
            bucket: Some(wallet),
            kind: CreditKind::Refund,
            reason: reason("r"),
        }),
        closed
    );
    assert_eq!(
        f.apply(Command::Adjust {
            account: ROOT,
            bucket: wallet,
            delta: u(-1),
            reason: reason("r"),
        }),
        closed
    );
    assert_eq!(f.bal(ROOT, wallet).0, u(101));
    f.check();
}

#[test]
fn adjust_changes_a_bucket_and_audits_it() {
    let (mut f, wallet) = Fixture::with_wallet();
    let adjust = |delta, text: &str| Command::Adjust {
        account: ROOT,
        bucket: wallet,
        delta,
        reason: reason(text),
    };
    assert_eq!(
        f.apply(adjust(n(2_500_000_000), "goodwill")),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: n(102_500_000_000)
        })
    );
    assert_eq!(
        f.apply(adjust(n(-500_000_000), "correction")),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(102)
        })
    );
    let audit = f.ledger.drain_audit();
    assert_eq!(
        audit_summary(&audit),
        vec![
            (
                AuditKind::Adjust,
                ROOT,
                wallet,
                n(2_500_000_000),
                n(102_500_000_000)
            ),
            (AuditKind::Adjust, ROOT, wallet, n(-500_000_000), u(102)),
        ]
    );
    assert_eq!(audit[0].reason.as_deref(), Some("goodwill"));
    assert_eq!(audit[1].reason.as_deref(), Some("correction"));
    assert_eq!(audit[1].unit, USD);
    assert_eq!(f.total(USD), u(102));
    f.check();
}

#[test]
fn adjust_errors() {
    let (mut f, wallet) = Fixture::with_wallet();
    f.create(OTHER, None, false);
    let adjust = |account, bucket, delta, text: &str| Command::Adjust {
        account,
        bucket,
        delta,
        reason: reason(text),
    };
    assert_eq!(
        f.apply(adjust(ROOT, wallet, u(0), "")),
        Err(LedgerError::Invalid(InvalidInput::DeltaZero))
    );
    assert_eq!(
        f.apply(adjust(ROOT, wallet, u(1), &"é".repeat(129))),
        Err(LedgerError::Invalid(InvalidInput::ReasonTooLong))
    );
    assert_eq!(
        f.apply(adjust(AccountId(9), wallet, u(1), "")),
        Err(LedgerError::AccountNotFound(AccountId(9)))
    );
    assert_eq!(
        f.apply(adjust(OTHER, wallet, u(1), "")),
        Err(LedgerError::BucketNotFound(wallet))
    );
    // A negative adjustment may not take what is held.
    let r = f.reserve(ROOT, USD, u(30), u(30), None);
    assert_eq!(f.bal(ROOT, wallet), (u(100), u(30), u(70)));
    assert_eq!(
        f.apply(adjust(ROOT, wallet, n(-70_000_000_001), "")),
        Err(LedgerError::InsufficientFunds { available: u(70) })
    );
    assert_eq!(
        f.apply(adjust(ROOT, wallet, u(-70), "")),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(30)
        })
    );
    assert_eq!(
        f.apply(adjust(ROOT, wallet, n(-1), "")),
        Err(LedgerError::InsufficientFunds { available: u(0) })
    );
    assert_eq!(f.release(r.id), Ok(Outcome::Released { released: u(30) }));
    // Overflow.
    assert_eq!(
        f.apply(adjust(ROOT, wallet, Amount::MAX, "")),
        Err(LedgerError::BalanceOverflow)
    );
    assert_eq!(f.bal(ROOT, wallet), (u(30), u(0), u(30)));
    f.check();
}

// ---------------------------------------------------------------------------
// Reservations
// ---------------------------------------------------------------------------

#[test]
fn reserve_holds_credit_without_debiting() {
    let (mut f, wallet) = Fixture::with_wallet();
    let cmd = f.reserve_cmd(ROOT, USD, u(40), u(10), None);
    assert_eq!(
        f.apply(cmd),
        Ok(Outcome::Reserved {
            reservation: ReservationId(1),
            granted: u(40),
            holds: to_holds(vec![hold(ROOT, wallet, u(40))]),
        })
    );
    assert_eq!(f.bal(ROOT, wallet), (u(100), u(40), u(60)));
    assert_eq!(f.total(USD), u(100));
    let view = f.ledger.reservation(ReservationId(1)).unwrap();
    assert_eq!(view.account, ROOT);
    assert_eq!(view.unit, USD);
    assert_eq!(view.remaining, u(40));
    assert_eq!(view.expires_at, T0.plus_ms(60_000));
    assert_eq!(view.holds[..], [hold(ROOT, wallet, u(40))]);
    assert_eq!(f.ledger.available(f.now, ROOT, USD, None), Ok(u(60)));
    let second = f.reserve(ROOT, USD, u(1), u(1), None);
    assert_eq!(second.id, ReservationId(2));
    assert_eq!(f.ledger.reservation_count(), 2);
    assert_eq!(
        f.ledger.reservations_of(ROOT, ReservationId(0), 10).len(),
        2
    );
    // Reserving debits nothing, so it is not audited.
    assert!(f.ledger.drain_audit().is_empty());
    f.check();
}

#[test]
fn reserve_with_min_amount_grants_what_is_left() {
    let (mut f, wallet) = Fixture::with_wallet();
    let first = f.reserve(ROOT, USD, u(80), u(80), None);
    assert_eq!(first.granted, u(80));
    // 20 left: asking 50 with min 5 grants 20.
    let second = f.reserve(ROOT, USD, u(50), u(5), None);
    assert_eq!(second.granted, u(20));
    assert_eq!(second.holds[..], [hold(ROOT, wallet, u(20))]);
    assert_eq!(f.bal(ROOT, wallet), (u(100), u(100), u(0)));
    // Nothing left: even the minimum fails, reporting what was available.
    assert_eq!(
        f.try_reserve(ROOT, USD, u(5), n(1), None),
        Err(LedgerError::InsufficientFunds { available: u(0) })
    );
    f.release(second.id).unwrap();
    assert_eq!(
        f.try_reserve(ROOT, USD, u(50), u(21), None),
        Err(LedgerError::InsufficientFunds { available: u(20) })
    );
    // min == available is enough.
    assert_eq!(f.reserve(ROOT, USD, u(50), u(20), None).granted, u(20));
    f.check();
}

#[test]
fn reserve_errors() {
    let (mut f, _wallet) = Fixture::with_wallet();
    let expires_at = f.now.plus_ms(1);
    let reserve = |account, amount, min_amount, expires_at| Command::Reserve {
        account,
        unit: USD,
        amount,
        min_amount,
        service: None,
        expires_at,
    };
    let invalid = |why| Err(LedgerError::Invalid(why));
    assert_eq!(
        f.apply(reserve(ROOT, u(0), u(0), expires_at)),
        invalid(InvalidInput::AmountNotPositive)
    );
    assert_eq!(
        f.apply(reserve(ROOT, u(-1), u(-1), expires_at)),
        invalid(InvalidInput::AmountNotPositive)
    );
    assert_eq!(
        f.apply(reserve(ROOT, u(5), u(0), expires_at)),
        invalid(InvalidInput::MinAmount)
    );
    assert_eq!(
        f.apply(reserve(ROOT, u(5), n(5_000_000_001), expires_at)),
        invalid(InvalidInput::MinAmount)
    );
    assert_eq!(
        f.apply(reserve(ROOT, u(5), u(1), f.now)),
        invalid(InvalidInput::ExpiryNotAfterNow)
    );
    assert_eq!(
        f.apply(reserve(AccountId(9), u(5), u(1), expires_at)),
        Err(LedgerError::AccountNotFound(AccountId(9)))
    );
    // No bucket of that unit at all.
    assert_eq!(
        f.try_reserve(ROOT, GPU, u(1), u(1), None),
        Err(LedgerError::InsufficientFunds { available: u(0) })
    );
    assert_eq!(
        f.try_reserve(ROOT, USD, u(101), u(101), None),
        Err(LedgerError::InsufficientFunds { available: u(100) })
    );
    assert_eq!(f.ledger.reservation_count(), 0);
    f.check();
}

#[test]
fn draw_order_restricted_then_priority_then_expiry_then_id() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let svc = ServiceId(7);
    let never = Timestamp::NEVER;
    let mk = |priority, valid_until, services: Vec<ServiceId>| BucketSpec {
        unit: GPU,
        amount: u(10),
        valid_from: Timestamp(0),
        valid_until,
        priority,
        services,
        credit_limit: u(0),
    };
    let general_low = f.grant(ROOT, mk(0, never, vec![]));
    let general_high_late = f.grant(ROOT, mk(5, T0.plus_ms(900_000), vec![]));
    let general_high_early = f.grant(ROOT, mk(5, T0.plus_ms(100_000), vec![]));
    let restricted_low = f.grant(ROOT, mk(-3, never, vec![svc]));
    let restricted_other = f.grant(ROOT, mk(9, never, vec![ServiceId(8)]));
    let general_high_early_2 = f.grant(ROOT, mk(5, T0.plus_ms(100_000), vec![]));
    let restricted_high = f.grant(ROOT, mk(1, never, vec![svc, ServiceId(1)]));

    // For the service: restricted (by priority) first, then general by
    // priority, earliest expiry, lowest id; the other service's bucket never.
    let r = f.reserve(ROOT, GPU, u(65), u(1), Some(svc));
    assert_eq!(r.granted, u(60));
    assert_eq!(
        r.holds[..],
        [
            hold(ROOT, restricted_high, u(10)),
            hold(ROOT, restricted_low, u(10)),
            hold(ROOT, general_high_early, u(10)),
            hold(ROOT, general_high_early_2, u(10)),
            hold(ROOT, general_high_late, u(10)),
            hold(ROOT, general_low, u(10)),
        ]
    );
    assert_eq!(f.bal(ROOT, restricted_other), (u(10), u(0), u(10)));
    f.release(r.id).unwrap();

    // Without a service only unrestricted buckets pay.
    let r = f.reserve(ROOT, GPU, u(25), u(1), None);
    assert_eq!(
        r.holds[..],
        [
            hold(ROOT, general_high_early, u(10)),
            hold(ROOT, general_high_early_2, u(10)),
            hold(ROOT, general_high_late, u(5)),
        ]
    );
    // A partly held bucket is drawn for its remainder next time.
    let r2 = f.reserve(ROOT, GPU, u(8), u(8), None);
    assert_eq!(
        r2.holds[..],
        [
            hold(ROOT, general_high_late, u(5)),
            hold(ROOT, general_low, u(3)),
        ]
    );
    // Commit debits holds in draw order.
    assert_eq!(
        f.commit(r.id, u(22), true),
        Ok(Outcome::Committed {
            debited: to_holds(vec![
                hold(ROOT, general_high_early, u(10)),
                hold(ROOT, general_high_early_2, u(10)),
                hold(ROOT, general_high_late, u(2)),
            ]),
            released: u(3),
            remaining: u(0),
        })
    );
    assert_eq!(f.bal(ROOT, general_high_late), (u(8), u(5), u(3)));
    f.check();
}

#[test]
fn buckets_outside_their_validity_window_do_not_pay() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let later = f.grant(
        ROOT,
        BucketSpec {
            valid_from: T0.plus_ms(1_000),
            ..spec(USD, u(10))
        },
    );
    assert_eq!(
        f.try_reserve(ROOT, USD, u(1), u(1), None),
        Err(LedgerError::InsufficientFunds { available: u(0) })
    );
    f.advance(1_000);
    let r = f.reserve(ROOT, USD, u(1), u(1), None);
    assert_eq!(r.holds[..], [hold(ROOT, later, u(1))]);
    // A bucket past its end but not yet swept does not pay either.
    let ending = f.grant(ROOT, expiring(USD, u(10), f.now.plus_ms(10)));
    assert_eq!(f.ledger.available(f.now, ROOT, USD, None), Ok(u(19)));
    f.advance(10);
    assert_eq!(f.ledger.available(f.now, ROOT, USD, None), Ok(u(9)));
    let r = f.reserve(ROOT, USD, u(20), u(1), None);
    assert_eq!(r.holds[..], [hold(ROOT, later, u(9))]);
    assert_eq!(f.bal(ROOT, ending), (u(10), u(0), u(10)));
    f.check();
}

#[test]
fn credit_limit_lets_a_bucket_go_below_zero() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let postpaid = f.grant(
        ROOT,
        BucketSpec {
            credit_limit: u(50),
            ..spec(USD, u(10))
        },
    );
    assert_eq!(f.bal(ROOT, postpaid), (u(10), u(0), u(60)));
    let r = f.reserve(ROOT, USD, u(100), u(1), None);
    assert_eq!(r.granted, u(60));
    assert_eq!(
        f.commit(r.id, u(45), true),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(ROOT, postpaid, u(45))]),
            released: u(15),
            remaining: u(0),
        })
    );
    assert_eq!(f.bal(ROOT, postpaid), (u(-35), u(0), u(15)));
    assert_eq!(f.total(USD), u(-35));
    assert_eq!(
        f.apply(Command::Adjust {
            account: ROOT,
            bucket: postpaid,
            delta: u(-16),
            reason: reason("fee"),
        }),
        Err(LedgerError::InsufficientFunds { available: u(15) })
    );
    assert_eq!(
        f.apply(Command::Adjust {
            account: ROOT,
            bucket: postpaid,
            delta: u(-15),
            reason: reason("fee"),
        }),
        Ok(Outcome::BalanceChanged {
            bucket: postpaid,
            balance: u(-50)
        })
    );
    assert_eq!(
        f.try_reserve(ROOT, USD, u(1), n(1), None),
        Err(LedgerError::InsufficientFunds { available: u(0) })
    );
    // Paying the debt back restores headroom.
    f.apply(Command::Credit {
        account: ROOT,
        unit: USD,
        amount: u(20),
        bucket: Some(postpaid),
        kind: CreditKind::TopUp,
        reason: reason("payment"),
    })
    .unwrap();
    assert_eq!(f.bal(ROOT, postpaid), (u(-30), u(0), u(20)));
    f.check();
}

#[test]
fn draws_on_parent_uses_own_buckets_first_then_the_parents() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    f.create(CHILD, Some(ROOT), true);
    f.create(OTHER, Some(ROOT), false);
    let grandchild = AccountId(4);
    f.create(grandchild, Some(CHILD), true);
    let org = f.topup(ROOT, USD, u(100));
    // Even a high-priority parent bucket comes after the child's own.
    let org_promo = f.grant(
        ROOT,
        BucketSpec {
            priority: 100,
            ..spec(USD, u(10))
        },
    );
    let dept = f.topup(CHILD, USD, u(5));
    let user = f.topup(grandchild, USD, u(1));

    let r = f.reserve(grandchild, USD, u(20), u(20), None);
    assert_eq!(
        r.holds[..],
        [
            hold(grandchild, user, u(1)),
            hold(CHILD, dept, u(5)),
            hold(ROOT, org_promo, u(10)),
            hold(ROOT, org, u(4)),
        ]
    );
    assert_eq!(
        f.commit(r.id, u(16), true),
        Ok(Outcome::Committed {
            debited: to_holds(vec![
                hold(grandchild, user, u(1)),
                hold(CHILD, dept, u(5)),
                hold(ROOT, org_promo, u(10)),
            ]),
            released: u(4),
            remaining: u(0),
        })
    );
    let audit = f.ledger.drain_audit();
    let debits: Vec<_> = audit
        .iter()
        .filter(|e| e.kind == AuditKind::Debit)
        .map(|e| (e.account, e.bucket, e.delta, e.balance_after, e.reservation))
        .collect();
    assert_eq!(
        debits,
        vec![
            (grandchild, user, u(-1), u(0), Some(r.id)),
            (CHILD, dept, u(-5), u(0), Some(r.id)),
            (ROOT, org_promo, u(-10), u(0), Some(r.id)),
        ]
    );
    assert_eq!(f.bal(ROOT, org), (u(100), u(0), u(100)));

    // An account that does not draw on its parent only has its own buckets.
    assert_eq!(
        f.try_reserve(OTHER, USD, u(1), u(1), None),
        Err(LedgerError::InsufficientFunds { available: u(0) })
    );
    // The chain stops where an account does not draw on its own parent.
    let site = AccountId(5);
    f.create(site, Some(OTHER), true);
    assert_eq!(
        f.try_reserve(site, USD, u(1), u(1), None),
        Err(LedgerError::InsufficientFunds { available: u(0) })
    );
    f.check();
}

#[test]
fn suspended_ancestor_blocks_reserving_in_the_subtree() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    f.create(CHILD, Some(ROOT), false);
    f.topup(CHILD, USD, u(10));
    f.apply(Command::SetStatus {
        account: ROOT,
        status: AccountStatus::Suspended,
    })
    .unwrap();
    // Even though the child does not draw on the parent.
    assert_eq!(
        f.try_reserve(CHILD, USD, u(1), u(1), None),
        Err(LedgerError::AccountNotActive {
            account: ROOT,
            status: AccountStatus::Suspended
        })
    );
    assert_eq!(f.ledger.available(f.now, CHILD, USD, None), Ok(u(0)));
    f.apply(Command::SetStatus {
        account: ROOT,
        status: AccountStatus::Active,
    })
    .unwrap();
    assert_eq!(f.reserve(CHILD, USD, u(1), u(1), None).granted, u(1));
    f.check();
}

#[test]
fn caps_on_an_ancestor_bound_the_subtree_and_are_freed_on_settle() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    f.create(CHILD, Some(ROOT), false);
    f.create(OTHER, Some(ROOT), false);
    let wallet = f.topup(CHILD, USD, u(100));
    f.topup(OTHER, USD, u(100));
    f.apply(Command::SetLimit {
        account: ROOT,
        unit: USD,
        cap: Some(u(30)),
        period: Period::Lifetime,
        soft: false,
        alerts: Vec::new(),
    })
    .unwrap();

    let a = f.reserve(CHILD, USD, u(50), u(1), None);
    assert_eq!(a.granted, u(30));
    assert_eq!(a.holds[..], [hold(CHILD, wallet, u(30))]);
    assert_eq!(
        f.limit(ROOT, USD),
        LimitView {
            unit: USD,
            cap: u(30),
            used: u(0),
            held: u(30),
            period: Period::Lifetime,
            soft: false,
            period_start: Timestamp(0),
            period_end: Timestamp::NEVER,
            alerts: Vec::new(),
        }
    );
    // The sibling shares the cap: nothing left, and the cap is the reason.
    assert_eq!(
        f.try_reserve(OTHER, USD, u(1), u(1), None),
        Err(LedgerError::LimitExceeded {
            account: ROOT,
            headroom: u(0),
            period: 0,
        })
    );
    assert_eq!(f.ledger.available(f.now, OTHER, USD, None), Ok(u(0)));

    // A partial commit moves held to used; the rest stays held.
    assert_eq!(
        f.commit(a.id, u(10), false),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(CHILD, wallet, u(10))]),
            released: u(0),
            remaining: u(20),
        })
    );
    assert_eq!(
        (f.limit(ROOT, USD).used, f.limit(ROOT, USD).held),
        (u(10), u(20))
    );
    // A final commit frees what is released.
    assert_eq!(
        f.commit(a.id, u(5), true),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(CHILD, wallet, u(5))]),
            released: u(15),
            remaining: u(0),
        })
    );
    assert_eq!(
        (f.limit(ROOT, USD).used, f.limit(ROOT, USD).held),
        (u(15), u(0))
    );

    // 15 of headroom: min above it fails with the cap, min below is granted 15.
    assert_eq!(
        f.try_reserve(OTHER, USD, u(20), u(16), None),
        Err(LedgerError::LimitExceeded {
            account: ROOT,
            headroom: u(15),
            period: 0,
        })
    );
    let b = f.reserve(OTHER, USD, u(20), u(2), None);
    assert_eq!(b.granted, u(15));
    assert_eq!(f.limit(ROOT, USD).held, u(15));
    assert_eq!(f.release(b.id), Ok(Outcome::Released { released: u(15) }));
    assert_eq!(
        (f.limit(ROOT, USD).used, f.limit(ROOT, USD).held),
        (u(15), u(0))
    );

    // The tightest cap on the way up wins: a cap on the child itself.
    f.apply(Command::SetLimit {
        account: CHILD,
        unit: USD,
        cap: Some(u(4)),
        period: Period::Lifetime,
        soft: false,
        alerts: Vec::new(),
    })
    .unwrap();
    assert_eq!(
        f.try_reserve(CHILD, USD, u(10), u(5), None),
        Err(LedgerError::LimitExceeded {
            account: CHILD,
            headroom: u(4),
            period: 0,
        })
    );
    let c = f.reserve(CHILD, USD, u(10), u(1), None);
    assert_eq!(c.granted, u(4));
    assert_eq!(f.limit(ROOT, USD).held, u(4));
    assert_eq!(f.limit(CHILD, USD).held, u(4));
    // Expiry frees the caps too.
    f.advance(60_000);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 1,
            buckets: 0,
            more: false
        })
    );
    assert_eq!(f.limit(ROOT, USD).held, u(0));
    assert_eq!(f.limit(CHILD, USD).held, u(0));
    // Balance, not the cap, binds when it is the smaller: funds are reported.
    f.apply(Command::SetLimit {
        account: ROOT,
        unit: USD,
        cap: Some(u(1_000)),
        period: Period::Lifetime,
        soft: false,
        alerts: Vec::new(),
    })
    .unwrap();
    f.apply(Command::SetLimit {
        account: CHILD,
        unit: USD,
        cap: None,
        period: Period::Lifetime,
        soft: false,
        alerts: Vec::new(),
    })
    .unwrap();
    assert_eq!(
        f.try_reserve(CHILD, USD, u(200), u(200), None),
        Err(LedgerError::InsufficientFunds { available: u(85) })
    );
    f.check();
}

#[test]
fn partial_commit_keeps_the_rest_held_and_final_commit_releases() {
    let (mut f, wallet) = Fixture::with_wallet();
    let r = f.reserve(ROOT, USD, u(50), u(50), None);
    assert_eq!(
        f.commit(r.id, u(12), false),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(ROOT, wallet, u(12))]),
            released: u(0),
            remaining: u(38),
        })
    );
    assert_eq!(f.bal(ROOT, wallet), (u(88), u(38), u(50)));
    assert_eq!(f.ledger.reservation(r.id).unwrap().remaining, u(38));
    // A zero partial commit is a no-op that keeps the reservation.
    assert_eq!(
        f.commit(r.id, u(0), false),
        Ok(Outcome::Committed {
            debited: to_holds(vec![]),
            released: u(0),
            remaining: u(38),
        })
    );
    assert_eq!(
        f.commit(r.id, n(38_000_000_001), true),
        Err(LedgerError::CommitExceedsReservation { remaining: u(38) })
    );
    assert_eq!(
        f.commit(r.id, n(-1), true),
        Err(LedgerError::Invalid(InvalidInput::UsedNegative))
    );
    assert_eq!(
        f.commit(r.id, u(8), true),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(ROOT, wallet, u(8))]),
            released: u(30),
            remaining: u(0),
        })
    );
    assert_eq!(f.bal(ROOT, wallet), (u(80), u(0), u(80)));
    assert!(f.ledger.reservation(r.id).is_none());
    assert_eq!(
        f.commit(r.id, u(1), true),
        Err(LedgerError::ReservationNotFound(r.id))
    );
    assert_eq!(f.release(r.id), Err(LedgerError::ReservationNotFound(r.id)));

    let audit = f.ledger.drain_audit();
    assert_eq!(
        audit_summary(&audit),
        vec![
            (AuditKind::Debit, ROOT, wallet, u(-12), u(88)),
            (AuditKind::Debit, ROOT, wallet, u(-8), u(80)),
        ]
    );
    assert!(audit.iter().all(|e| e.reservation == Some(r.id)));
    assert_eq!(audit[0].op, OpId(4));
    assert_eq!(audit[1].op, OpId(8));

    // A partial commit of everything resolves the reservation too.
    let r = f.reserve(ROOT, USD, u(5), u(5), None);
    assert_eq!(
        f.commit(r.id, u(5), false),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(ROOT, wallet, u(5))]),
            released: u(0),
            remaining: u(0),
        })
    );
    assert!(f.ledger.reservation(r.id).is_none());
    assert_eq!(f.release(r.id), Err(LedgerError::ReservationNotFound(r.id)));
    // A final commit of zero is a release.
    let r = f.reserve(ROOT, USD, u(5), u(5), None);
    assert_eq!(
        f.commit(r.id, u(0), true),
        Ok(Outcome::Committed {
            debited: to_holds(vec![]),
            released: u(5),
            remaining: u(0),
        })
    );
    assert_eq!(f.bal(ROOT, wallet), (u(75), u(0), u(75)));
    assert_eq!(f.total(USD), u(75));
    assert_eq!(f.ledger.reservation_count(), 0);
    f.check();
}

#[test]
fn release_gives_everything_back() {
    let (mut f, wallet) = Fixture::with_wallet();
    let r = f.reserve(ROOT, USD, u(50), u(50), None);
    f.commit(r.id, u(20), false).unwrap();
    assert_eq!(f.release(r.id), Ok(Outcome::Released { released: u(30) }));
    assert_eq!(f.bal(ROOT, wallet), (u(80), u(0), u(80)));
    assert_eq!(f.release(r.id), Err(LedgerError::ReservationNotFound(r.id)));
    assert_eq!(
        f.release(ReservationId(999)),
        Err(LedgerError::ReservationNotFound(ReservationId(999)))
    );
    assert_eq!(
        f.commit(ReservationId(999), u(1), true),
        Err(LedgerError::ReservationNotFound(ReservationId(999)))
    );
    f.check();
}

#[test]
fn commit_after_expiry_fails_and_sweep_expires_the_reservation() {
    let (mut f, wallet) = Fixture::with_wallet();
    let r = f.reserve(ROOT, USD, u(10), u(10), None);
    let expires_at = T0.plus_ms(60_000);
    f.now = Timestamp(expires_at.0 - 1);
    assert_eq!(
        f.commit(r.id, u(1), false),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(ROOT, wallet, u(1))]),
            released: u(0),
            remaining: u(9),
        })
    );
    assert!(!f.ledger.sweep_due(f.now));
    f.now = expires_at;
    assert!(f.ledger.sweep_due(f.now));
    assert_eq!(
        f.commit(r.id, u(1), true),
        Err(LedgerError::ReservationExpired(r.id))
    );
    assert_eq!(f.bal(ROOT, wallet), (u(99), u(9), u(90)));
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 1,
            buckets: 0,
            more: false
        })
    );
    assert_eq!(f.bal(ROOT, wallet), (u(99), u(0), u(99)));
    assert_eq!(
        f.commit(r.id, u(1), true),
        Err(LedgerError::ReservationNotFound(r.id))
    );
    assert_eq!(f.release(r.id), Err(LedgerError::ReservationNotFound(r.id)));
    // A second sweep finds nothing.
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 0,
            buckets: 0,
            more: false
        })
    );
    // Expiry forfeits nothing of the reservation's bucket: only Debit audited.
    let kinds: Vec<_> = f.ledger.drain_audit().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![AuditKind::Debit]);
    f.check();
}

#[test]
fn release_after_expiry_but_before_the_sweep_still_works() {
    let (mut f, wallet) = Fixture::with_wallet();
    let r = f.reserve(ROOT, USD, u(10), u(10), None);
    f.advance(60_000);
    assert_eq!(f.release(r.id), Ok(Outcome::Released { released: u(10) }));
    assert_eq!(f.bal(ROOT, wallet), (u(100), u(0), u(100)));
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 0,
            buckets: 0,
            more: false
        })
    );
    f.check();
}

#[test]
fn sweep_expires_buckets_forfeiting_their_free_amount() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let wallet = f.topup(ROOT, USD, u(100));
    let promo = f.grant(ROOT, expiring(USD, u(30), T0.plus_ms(1_000)));
    let pool = f.grant(ROOT, expiring(GPU, u(5), T0.plus_ms(2_000)));
    f.ledger.drain_audit();
    // A reservation holds 20 of the promo bucket and outlives it.
    let r = f.reserve(ROOT, USD, u(20), u(20), None);
    assert_eq!(r.holds[..], [hold(ROOT, promo, u(20))]);

    f.advance(999);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 0,
            buckets: 0,
            more: false
        })
    );
    f.advance(1);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 0,
            buckets: 1,
            more: false
        })
    );
    // The free 10 are forfeited; the held 20 stay until the reservation ends.
    let b = f.bucket(ROOT, promo);
    assert!(b.expired);
    assert_eq!((b.amount, b.held, b.available), (u(20), u(20), u(0)));
    let audit = f.ledger.drain_audit();
    assert_eq!(
        audit_summary(&audit),
        vec![(AuditKind::Expire, ROOT, promo, u(-10), u(20))]
    );
    assert_eq!(audit[0].op, OpId::SERVER);
    assert_eq!(audit[0].at, T0.plus_ms(1_000));
    assert_eq!(f.total(USD), u(120));
    // An expired bucket takes no credit and no adjustment.
    assert_eq!(
        f.apply(Command::Credit {
            account: ROOT,
            unit: USD,
            amount: u(1),
            bucket: Some(promo),
            kind: CreditKind::TopUp,
            reason: reason(""),
        }),
        Err(LedgerError::BucketNotFound(promo))
    );
    assert_eq!(
        f.apply(Command::Adjust {
            account: ROOT,
            bucket: promo,
            delta: u(1),
            reason: reason(""),
        }),
        Err(LedgerError::BucketNotFound(promo))
    );

    // Using part of the reservation debits the expired bucket; releasing the
    // rest onto it forfeits it, and the empty bucket disappears.
    assert_eq!(
        f.commit(r.id, u(6), true),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(ROOT, promo, u(6))]),
            released: u(14),
            remaining: u(0),
        })
    );
    let audit = f.ledger.drain_audit();
    assert_eq!(
        audit_summary(&audit),
        vec![
            (AuditKind::Debit, ROOT, promo, u(-6), u(14)),
            (AuditKind::Expire, ROOT, promo, u(-14), u(0)),
        ]
    );
    assert!(!f.has_bucket(ROOT, promo));
    assert_eq!(f.total(USD), u(100));
    assert_eq!(f.bal(ROOT, wallet), (u(100), u(0), u(100)));

    // The GPU pool expires with nothing held and vanishes at once.
    f.advance(1_000);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 0,
            buckets: 1,
            more: false
        })
    );
    assert!(!f.has_bucket(ROOT, pool));
    assert_eq!(f.total(GPU), u(0));
    assert_eq!(
        audit_summary(&f.ledger.drain_audit()),
        vec![(AuditKind::Expire, ROOT, pool, u(-5), u(0))]
    );
    f.check();
}

#[test]
fn releasing_onto_an_expired_bucket_forfeits_it() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let promo = f.grant(ROOT, expiring(USD, u(30), T0.plus_ms(1_000)));
    f.ledger.drain_audit();
    let r = f.reserve(ROOT, USD, u(30), u(30), None);
    f.advance(1_000);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 0,
            buckets: 1,
            more: false
        })
    );
    // Nothing free to forfeit yet.
    assert!(f.ledger.drain_audit().is_empty());
    assert_eq!(f.bal(ROOT, promo), (u(30), u(30), u(0)));
    assert_eq!(f.release(r.id), Ok(Outcome::Released { released: u(30) }));
    assert_eq!(
        audit_summary(&f.ledger.drain_audit()),
        vec![(AuditKind::Expire, ROOT, promo, u(-30), u(0))]
    );
    assert!(!f.has_bucket(ROOT, promo));
    assert_eq!(f.total(USD), u(0));
    f.check();
}

#[test]
fn reservation_expiry_onto_an_expired_bucket_forfeits_in_the_same_sweep() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let promo = f.grant(ROOT, expiring(USD, u(30), T0.plus_ms(1_000)));
    f.ledger.drain_audit();
    let r = f.apply(Command::Reserve {
        account: ROOT,
        unit: USD,
        amount: u(10),
        min_amount: u(10),
        service: None,
        expires_at: T0.plus_ms(500),
    });
    assert!(r.is_ok());
    f.advance(5_000);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 1,
            buckets: 1,
            more: false
        })
    );
    assert_eq!(
        audit_summary(&f.ledger.drain_audit()),
        vec![(AuditKind::Expire, ROOT, promo, u(-30), u(0))]
    );
    assert!(!f.has_bucket(ROOT, promo));
    f.check();
}

#[test]
fn sweep_work_is_bounded_and_reports_more() {
    let (mut f, wallet) = Fixture::with_wallet();
    let count = SWEEP_ITEMS_MAX + 3;
    for _ in 0..count {
        f.reserve(ROOT, USD, n(1), n(1), None);
    }
    f.advance(60_000);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: SWEEP_ITEMS_MAX as u32,
            buckets: 0,
            more: true
        })
    );
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 3,
            buckets: 0,
            more: false
        })
    );
    assert_eq!(f.bal(ROOT, wallet), (u(100), u(0), u(100)));
    f.check();
}

#[test]
fn suspended_account_cannot_reserve_but_can_settle() {
    let (mut f, wallet) = Fixture::with_wallet();
    let a = f.reserve(ROOT, USD, u(10), u(10), None);
    let b = f.reserve(ROOT, USD, u(10), u(10), None);
    f.apply(Command::SetStatus {
        account: ROOT,
        status: AccountStatus::Suspended,
    })
    .unwrap();
    assert_eq!(
        f.try_reserve(ROOT, USD, u(1), u(1), None),
        Err(LedgerError::AccountNotActive {
            account: ROOT,
            status: AccountStatus::Suspended
        })
    );
    assert_eq!(f.ledger.available(f.now, ROOT, USD, None), Ok(u(0)));
    assert_eq!(
        f.commit(a.id, u(4), true),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(ROOT, wallet, u(4))]),
            released: u(6),
            remaining: u(0),
        })
    );
    assert_eq!(f.release(b.id), Ok(Outcome::Released { released: u(10) }));
    assert_eq!(f.bal(ROOT, wallet), (u(96), u(0), u(96)));
    f.check();
}

#[test]
fn closing_waits_for_open_reservations_and_then_freezes_the_account() {
    let (mut f, wallet) = Fixture::with_wallet();
    let a = f.reserve(ROOT, USD, u(10), u(10), None);
    let close = Command::SetStatus {
        account: ROOT,
        status: AccountStatus::Closed,
    };
    assert_eq!(
        f.apply(close.clone()),
        Err(LedgerError::Invalid(
            InvalidInput::CloseWithOpenReservations
        ))
    );
    assert_eq!(f.release(a.id), Ok(Outcome::Released { released: u(10) }));
    assert_eq!(f.apply(close), Ok(Outcome::StatusSet));
    assert_eq!(
        f.apply(Command::Reserve {
            account: ROOT,
            unit: USD,
            amount: u(1),
            min_amount: u(1),
            service: None,
            expires_at: f.now.plus_ms(1_000),
        }),
        Err(LedgerError::AccountNotActive {
            account: ROOT,
            status: AccountStatus::Closed
        })
    );
    assert_eq!(f.bal(ROOT, wallet), (u(100), u(0), u(100)));
    f.check();
}

// ---------------------------------------------------------------------------
// Idempotency and op ids
// ---------------------------------------------------------------------------

#[test]
fn retry_returns_the_stored_result_without_applying_again() {
    let (mut f, wallet) = Fixture::with_wallet();
    let credit = Fixture::credit_cmd(ROOT, USD, u(5));
    let first = f.apply_as(OpId(1_000), credit.clone());
    assert_eq!(
        first,
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(105)
        })
    );
    f.advance(1_000);
    assert_eq!(f.apply_as(OpId(1_000), credit.clone()), first);
    assert_eq!(f.bal(ROOT, wallet).0, u(105));
    assert_eq!(f.ledger.drain_audit().len(), 1);

    let reserve = f.reserve_cmd(ROOT, USD, u(10), u(10), None);
    let reserved = f.apply_as(OpId(1_001), reserve.clone());
    assert!(reserved.is_ok());
    assert_eq!(f.apply_as(OpId(1_001), reserve), reserved);
    assert_eq!(f.ledger.reservation_count(), 1);
    let commit = Command::Commit {
        reservation: ReservationId(1),
        used: u(3),
        release_rest: true,
    };
    let committed = f.apply_as(OpId(1_002), commit.clone());
    assert_eq!(
        committed,
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(ROOT, wallet, u(3))]),
            released: u(7),
            remaining: u(0),
        })
    );
    // The retry does not see "not found": it gets the original answer.
    assert_eq!(f.apply_as(OpId(1_002), commit), committed);
    assert_eq!(f.bal(ROOT, wallet), (u(102), u(0), u(102)));
    assert!(f.ledger.is_known_op(OpId(1_002)));
    assert!(!f.ledger.is_known_op(OpId(1_003)));
    f.check();
}

#[test]
fn a_remembered_failure_is_returned_even_once_it_would_succeed() {
    let (mut f, wallet) = Fixture::with_wallet();
    let reserve = f.reserve_cmd(ROOT, USD, u(150), u(150), None);
    let refused = Err(LedgerError::InsufficientFunds { available: u(100) });
    assert_eq!(f.apply_as(OpId(7), reserve.clone()), refused);
    f.topup(ROOT, USD, u(100));
    assert_eq!(f.apply_as(OpId(7), reserve.clone()), refused);
    assert_eq!(f.ledger.reservation_count(), 0);
    assert_eq!(f.bal(ROOT, wallet), (u(200), u(0), u(200)));
    // Same for a validation error.
    let bad = Fixture::credit_cmd(ROOT, USD, u(0));
    let invalid = Err(LedgerError::Invalid(InvalidInput::AmountNotPositive));
    assert_eq!(f.apply_as(OpId(8), bad.clone()), invalid);
    assert_eq!(f.apply_as(OpId(8), bad), invalid);
    f.check();
}

#[test]
fn same_op_id_with_other_content_is_refused() {
    let (mut f, wallet) = Fixture::with_wallet();
    let credit = Fixture::credit_cmd(ROOT, USD, u(5));
    f.apply_as(OpId(42), credit).unwrap();
    // Different amount, different reason, different command kind.
    assert_eq!(
        f.apply_as(OpId(42), Fixture::credit_cmd(ROOT, USD, u(6))),
        Err(LedgerError::OpIdReused)
    );
    assert_eq!(
        f.apply_as(
            OpId(42),
            Command::Credit {
                account: ROOT,
                unit: USD,
                amount: u(5),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: reason("other reason"),
            }
        ),
        Err(LedgerError::OpIdReused)
    );
    let reserve = f.reserve_cmd(ROOT, USD, u(1), u(1), None);
    assert_eq!(f.apply_as(OpId(42), reserve), Err(LedgerError::OpIdReused));
    assert_eq!(f.ledger.reservation_count(), 0);
    assert_eq!(f.bal(ROOT, wallet).0, u(105));
    // The stored entry is unchanged: the original still retries fine.
    assert_eq!(
        f.apply_as(OpId(42), Fixture::credit_cmd(ROOT, USD, u(5))),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(105)
        })
    );
    f.check();
}

#[test]
fn op_ids_are_forgotten_after_the_window() {
    let (mut f, wallet) = Fixture::with_wallet();
    assert_eq!(
        f.apply(Command::SetIdempotencyWindow { window_ms: 1_000 }),
        Ok(Outcome::WindowSet)
    );
    let credit = Fixture::credit_cmd(ROOT, USD, u(5));
    f.apply_as(OpId(500), credit.clone()).unwrap();
    let remembered = f.ledger.remembered_ops();
    f.advance(999);
    assert_eq!(
        f.apply_as(OpId(500), Fixture::credit_cmd(ROOT, USD, u(6))),
        Err(LedgerError::OpIdReused)
    );
    assert_eq!(
        f.apply_as(OpId(500), credit.clone()),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(105)
        })
    );
    f.advance(1);
    // The window has passed: the same id is a new operation now.
    assert_eq!(
        f.apply_as(OpId(500), credit),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(110)
        })
    );
    assert!(f.ledger.remembered_ops() <= remembered);
    f.advance(1_000);
    assert_eq!(
        f.apply_as(OpId(500), Fixture::credit_cmd(ROOT, USD, u(6))),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(116)
        })
    );
    // The window may be at most 7 days.
    assert_eq!(
        f.apply(Command::SetIdempotencyWindow {
            window_ms: WINDOW_MS_MAX + 1
        }),
        Err(LedgerError::Invalid(InvalidInput::WindowTooLong))
    );
    assert_eq!(
        f.apply(Command::SetIdempotencyWindow {
            window_ms: WINDOW_MS_MAX
        }),
        Ok(Outcome::WindowSet)
    );
    // And at least 1 ms: a window of 0 would forget, in the same
    // millisecond, ops a restore could not tell from those recorded after.
    assert_eq!(
        f.apply(Command::SetIdempotencyWindow { window_ms: 0 }),
        Err(LedgerError::Invalid(InvalidInput::WindowZero))
    );
    assert_eq!(
        f.apply_as(OpId(500), Fixture::credit_cmd(ROOT, USD, u(6))),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(116)
        }),
        "the window of 7 days still holds: a retry gets its first answer"
    );
    f.check();
}

#[test]
fn default_window_is_ten_minutes() {
    let (mut f, wallet) = Fixture::with_wallet();
    let credit = Fixture::credit_cmd(ROOT, USD, u(1));
    f.apply_as(OpId(9), credit.clone()).unwrap();
    f.advance(10 * 60 * 1000 - 1);
    assert_eq!(
        f.apply_as(OpId(9), credit.clone()),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(101)
        })
    );
    f.advance(1);
    assert_eq!(
        f.apply_as(OpId(9), credit),
        Ok(Outcome::BalanceChanged {
            bucket: wallet,
            balance: u(102)
        })
    );
    f.check();
}

#[test]
fn op_id_zero_is_only_for_sweeps() {
    let (mut f, wallet) = Fixture::with_wallet();
    assert_eq!(
        f.apply_as(OpId::SERVER, Fixture::credit_cmd(ROOT, USD, u(1))),
        Err(LedgerError::InvalidOpId)
    );
    assert_eq!(
        f.apply_as(
            OpId(0),
            Command::CreateAccount {
                account: AccountId(9),
                parent: None,
                draws_on_parent: false
            }
        ),
        Err(LedgerError::InvalidOpId)
    );
    assert_eq!(
        f.apply_as(OpId(77), Command::Sweep),
        Err(LedgerError::Invalid(InvalidInput::SweepOpId))
    );
    // Neither refusal is remembered.
    assert!(!f.ledger.is_known_op(OpId(77)));
    assert!(!f.ledger.is_known_op(OpId::SERVER));
    assert!(f.ledger.account(AccountId(9)).is_none());
    assert_eq!(f.bal(ROOT, wallet).0, u(100));
    // Sweeps are not deduplicated: each runs.
    let r = f.reserve(ROOT, USD, u(1), u(1), None);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 0,
            buckets: 0,
            more: false
        })
    );
    f.advance(60_000);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 1,
            buckets: 0,
            more: false
        })
    );
    assert!(f.ledger.reservation(r.id).is_none());
    f.check();
}

// ---------------------------------------------------------------------------
// Amounts
// ---------------------------------------------------------------------------

#[test]
fn amount_precision_is_nine_decimals_and_never_rounded() {
    let d = |s: &str| Decimal::from_str(s).unwrap();
    assert_eq!(
        Amount::from_decimal(d("0.000000001")),
        Ok(Amount::from_nanos(1))
    );
    assert_eq!(
        Amount::from_decimal(d("0.0000000001")),
        Err(AmountError::TooPrecise)
    );
    assert_eq!(
        Amount::from_decimal(d("12.3456789012")),
        Err(AmountError::TooPrecise)
    );
    assert_eq!(
        Amount::from_decimal(d("-1.000000000500")),
        Err(AmountError::TooPrecise)
    );
    // Trailing zeros are not precision.
    assert_eq!(
        Amount::from_decimal(d("2.5000000000000")),
        Ok(Amount::from_nanos(2_500_000_000))
    );
    assert_eq!(
        Amount::from_decimal(d("-0.123456789")),
        Ok(Amount::from_nanos(-123_456_789))
    );
    assert_eq!(
        Amount::from_decimal(d("1000000000000000000")),
        Ok(Amount::MAX)
    );
    assert_eq!(
        Amount::from_decimal(d("1000000000000000000.000000001")),
        Err(AmountError::OutOfRange)
    );
    assert_eq!("0.1".parse::<Amount>(), Ok(Amount::from_nanos(100_000_000)));
    assert_eq!("abc".parse::<Amount>(), Err(AmountError::OutOfRange));
    assert_eq!(Amount::from_nanos(1_500_000_001).to_string(), "1.500000001");

    // Exact to the nano through the ledger: a thousand nano-commits add up.
    let (mut f, wallet) = Fixture::with_wallet();
    let r = f.reserve(ROOT, USD, u(1), u(1), None);
    for _ in 0..1_000 {
        f.commit(r.id, n(1), false).unwrap();
    }
    f.commit(r.id, n(1), true).unwrap();
    assert_eq!(
        f.bal(ROOT, wallet),
        (n(99_999_998_999), u(0), n(99_999_998_999))
    );
    assert_eq!(f.ledger.drain_audit().len(), 1_001);
    f.check();
}

// ---------------------------------------------------------------------------
// Conservation over one scenario, end to end
// ---------------------------------------------------------------------------

#[test]
fn audit_deltas_add_up_to_the_totals() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    f.create(CHILD, Some(ROOT), true);
    let wallet = f.topup(ROOT, USD, u(100));
    f.grant(CHILD, expiring(USD, u(20), T0.plus_ms(5_000)));
    f.apply(Command::Adjust {
        account: ROOT,
        bucket: wallet,
        delta: u(-7),
        reason: reason("fee"),
    })
    .unwrap();
    let a = f.reserve(CHILD, USD, u(50), u(1), None);
    f.commit(a.id, u(33), false).unwrap();
    let b = f.reserve(CHILD, USD, u(10), u(1), None);
    f.advance(5_000);
    f.sweep().unwrap();
    f.commit(a.id, u(2), true).unwrap();
    f.release(b.id).unwrap();
    f.apply(Command::Credit {
        account: CHILD,
        unit: USD,
        amount: u(4),
        bucket: None,
        kind: CreditKind::Refund,
        reason: reason("sorry"),
    })
    .unwrap();
    let audit = f.ledger.drain_audit();
    let sum: i128 = audit.iter().map(|e| e.delta.nanos()).sum();
    assert_eq!(n(sum), f.total(USD));
    let by_kind = |k| -> i128 {
        audit
            .iter()
            .filter(|e| e.kind == k)
            .map(|e| e.delta.nanos())
            .sum()
    };
    assert_eq!(by_kind(AuditKind::TopUp), u(100).nanos());
    assert_eq!(by_kind(AuditKind::Grant), u(20).nanos());
    assert_eq!(by_kind(AuditKind::Adjust), u(-7).nanos());
    assert_eq!(by_kind(AuditKind::Debit), u(-35).nanos());
    assert_eq!(by_kind(AuditKind::Refund), u(4).nanos());
    // The child's own promo bucket paid first, and a's first commit used all
    // of it, so its expiry forfeited nothing.
    assert_eq!(by_kind(AuditKind::Expire), 0);
    assert_eq!(f.total(USD), u(82));
    f.check();
}

// ---------------------------------------------------------------------------
// Regressions: defects found in the first version of the ledger
// ---------------------------------------------------------------------------

/// A reservation that outlives its bucket and then uses all of it must not
/// leave an expired, empty bucket behind (it would count towards
/// BUCKETS_PER_ACCOUNT_MAX for ever).
#[test]
fn expired_bucket_fully_used_by_a_commit_is_dropped() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let promo = f.grant(ROOT, expiring(USD, u(10), T0.plus_ms(1_000)));
    let wallet = f.topup(ROOT, USD, u(1));
    let r = f.reserve(ROOT, USD, u(10), u(10), None);
    assert_eq!(r.holds[..], [hold(ROOT, promo, u(10))]);
    f.advance(1_000);
    assert_eq!(
        f.sweep(),
        Ok(Outcome::Swept {
            reservations: 0,
            buckets: 1,
            more: false
        })
    );
    assert_eq!(
        f.commit(r.id, u(10), true),
        Ok(Outcome::Committed {
            debited: to_holds(vec![hold(ROOT, promo, u(10))]),
            released: u(0),
            remaining: u(0),
        })
    );
    assert!(!f.has_bucket(ROOT, promo));
    assert_eq!(f.ledger.account(ROOT).unwrap().buckets.len(), 1);
    assert_eq!(f.total(USD), u(1));
    assert_eq!(f.bal(ROOT, wallet), (u(1), u(0), u(1)));
    f.check();
}

/// "Bad input gets a clear error and changes nothing": a credit beyond
/// Amount::MAX is refused without creating the default bucket first.
#[test]
fn refused_credit_creates_no_bucket() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let too_big = n(Amount::MAX.nanos() + 1);
    assert_eq!(
        f.apply(Fixture::credit_cmd(ROOT, USD, too_big)),
        Err(LedgerError::BalanceOverflow)
    );
    assert_eq!(f.ledger.account(ROOT).unwrap().buckets, vec![]);
    // The next bucket still gets the first id.
    assert_eq!(f.topup(ROOT, USD, u(1)), BucketId(1));
    f.check();
}

/// GrantBucket checks its amounts against ±Amount::MAX like every other
/// path (beyond it, sums of free amounts could overflow and panic).
#[test]
fn grant_bucket_rejects_amounts_beyond_max() {
    let mut f = Fixture::new();
    f.create(ROOT, None, false);
    let too_big = n(Amount::MAX.nanos() + 1);
    assert_eq!(
        f.apply(Command::GrantBucket {
            account: ROOT,
            spec: spec(USD, too_big),
        }),
        Err(LedgerError::BalanceOverflow)
    );
    assert_eq!(
        f.apply(Command::GrantBucket {
            account: ROOT,
            spec: BucketSpec {
                credit_limit: n(i128::MAX),
                ..spec(USD, u(1))
            },
        }),
        Err(LedgerError::BalanceOverflow)
    );
    // Exactly MAX is fine, for both.
    let b = f.grant(
        ROOT,
        BucketSpec {
            credit_limit: Amount::MAX,
            ..spec(USD, Amount::MAX)
        },
    );
    assert_eq!(
        f.bal(ROOT, b),
        (Amount::MAX, u(0), n(2 * Amount::MAX.nanos()))
    );
    assert_eq!(f.reserve(ROOT, USD, u(1), u(1), None).granted, u(1));
    f.check();
}

/// Midnight UTC of a date, plus hours.
fn at(y: i64, m: u32, d: u32, hours: u64) -> Timestamp {
    let days = reckon_balances::period::days_from_civil(y, m, d) as u64;
    Timestamp(days * 86_400_000 + hours * 3_600_000)
}

impl Fixture {
    fn control(&mut self, account: AccountId, cap: Option<i64>, period: Period, soft: bool) {
        let r = self.apply(Command::SetLimit {
            account,
            unit: USD,
            cap: cap.map(u),
            period,
            soft,
            alerts: Vec::new(),
        });
        assert_eq!(r, Ok(Outcome::LimitSet));
    }

    fn control_of(&self, account: AccountId, kind: u8) -> LimitView {
        self.ledger
            .account_at(account, self.now)
            .expect("account exists")
            .limits
            .into_iter()
            .find(|l| l.unit == USD && l.period.kind() == kind)
            .unwrap_or_else(|| panic!("no control of kind {kind} on {account:?}"))
    }

    fn spend(&mut self, account: AccountId, amount: Amount) {
        let r = self.reserve(account, USD, amount, amount, None);
        self.commit(r.id, amount, true).expect("commit");
    }
}

#[test]
fn a_department_budget_denies_its_users_while_a_sibling_department_carries_on() {
    let mut f = Fixture::new();
    f.now = at(2026, 11, 10, 12);
    f.create(ROOT, None, false);
    f.topup(ROOT, USD, u(1000));
    f.create(CHILD, Some(ROOT), true);
    f.create(OTHER, Some(ROOT), true);
    let (alice, bob) = (AccountId(10), AccountId(11));
    f.create(alice, Some(CHILD), true);
    f.create(bob, Some(OTHER), true);
    // The department's budget: 50 USD per calendar month in UTC+01:00.
    let monthly = Period::calendar_month(60);
    f.control(CHILD, Some(50), monthly, false);
    f.spend(alice, u(50));
    assert_eq!(
        f.try_reserve(alice, USD, u(1), u(1), None),
        Err(LedgerError::LimitExceeded {
            account: CHILD,
            headroom: u(0),
            period: 1,
        })
    );
    assert_eq!(f.ledger.available(f.now, alice, USD, None), Ok(u(0)));
    // The sibling department is not bound by it.
    assert_eq!(f.reserve(bob, USD, u(100), u(100), None).granted, u(100));
    // 23:00 UTC on 30 November is December in UTC+01:00: the budget
    // starts over.
    f.now = at(2026, 11, 30, 23);
    let budget = f.control_of(CHILD, 1);
    assert_eq!(
        (budget.used, budget.period_start, budget.period_end),
        (u(0), at(2026, 11, 30, 23), at(2026, 12, 31, 23))
    );
    assert_eq!(f.reserve(alice, USD, u(80), u(1), None).granted, u(50));
    assert_eq!(f.control_of(CHILD, 1).held, u(50));
    f.ledger.check_invariants().unwrap();
}

#[test]
fn a_reservation_open_across_a_period_end_counts_where_it_is_committed() {
    let mut f = Fixture::new();
    f.now = Timestamp(at(2026, 12, 1, 0).0 - 30_000);
    f.create(ROOT, None, false);
    f.topup(ROOT, USD, u(1000));
    f.control(ROOT, Some(100), Period::calendar_month(0), false);
    let open = f.reserve(ROOT, USD, u(60), u(60), None);
    f.commit(open.id, u(30), false).unwrap();
    assert_eq!(
        (f.control_of(ROOT, 1).used, f.control_of(ROOT, 1).held),
        (u(30), u(30))
    );
    // Into December with 30 still held: November's usage no longer
    // counts, the open hold does.
    f.advance(40_000);
    let december = f.control_of(ROOT, 1);
    assert_eq!((december.used, december.held), (u(0), u(30)));
    assert_eq!(december.period_start, at(2026, 12, 1, 0));
    assert_eq!(f.reserve(ROOT, USD, u(100), u(1), None).granted, u(70));
    // The rest of the November reservation is committed in December.
    f.commit(open.id, u(30), true).unwrap();
    let december = f.control_of(ROOT, 1);
    assert_eq!((december.used, december.held), (u(30), u(70)));
    f.ledger.check_invariants().unwrap();
}

#[test]
fn a_soft_cap_never_refuses_but_counts() {
    let (mut f, _) = Fixture::with_wallet();
    f.control(ROOT, Some(10), Period::calendar_month(0), true);
    assert_eq!(f.reserve(ROOT, USD, u(50), u(50), None).granted, u(50));
    let soft = f.control_of(ROOT, 1);
    assert!(soft.soft);
    assert_eq!((soft.cap, soft.held), (u(10), u(50)));
    assert_eq!(f.ledger.available(f.now, ROOT, USD, None), Ok(u(50)));
}

#[test]
fn an_annual_cap_spans_monthly_periods() {
    let mut f = Fixture::new();
    f.now = at(2026, 1, 20, 9);
    f.create(ROOT, None, false);
    f.topup(ROOT, USD, u(1000));
    f.create(CHILD, Some(ROOT), true);
    f.control(CHILD, Some(100), Period::calendar_month(0), false);
    let contract_year = Period::Months {
        months: 12,
        anchor: at(2026, 1, 15, 0),
        offset_min: 0,
    };
    f.control(CHILD, Some(150), contract_year, false);
    f.spend(CHILD, u(100));
    // January: the monthly budget is the tighter one.
    assert_eq!(
        f.try_reserve(CHILD, USD, u(1), u(1), None),
        Err(LedgerError::LimitExceeded {
            account: CHILD,
            headroom: u(0),
            period: 1,
        })
    );
    // February: 100 left this month, but only 50 this contract year.
    f.now = at(2026, 2, 20, 9);
    assert_eq!(f.reserve(CHILD, USD, u(80), u(1), None).granted, u(50));
    assert_eq!(
        f.try_reserve(CHILD, USD, u(1), u(1), None),
        Err(LedgerError::LimitExceeded {
            account: CHILD,
            headroom: u(0),
            period: 12,
        })
    );
    // The next contract year starts over, the monthly budget with it.
    f.now = at(2027, 1, 15, 0);
    let year = f.control_of(CHILD, 12);
    assert_eq!(year.period_start, at(2027, 1, 15, 0));
    assert_eq!(year.used, u(0));
    f.ledger.check_invariants().unwrap();
}

#[test]
fn controls_are_kept_one_per_unit_and_period_kind() {
    let (mut f, _) = Fixture::with_wallet();
    f.now = at(2026, 5, 10, 0);
    let monthly = Period::calendar_month(0);
    f.control(ROOT, Some(40), monthly, false);
    f.spend(ROOT, u(30));
    // Raised mid-month: what the month used still counts.
    f.control(ROOT, Some(60), monthly, false);
    assert_eq!(
        (f.control_of(ROOT, 1).cap, f.control_of(ROOT, 1).used),
        (u(60), u(30))
    );
    // Moved to another month's boundary (another time zone): starts over.
    f.control(ROOT, Some(60), Period::calendar_month(-300), false);
    assert_eq!(f.control_of(ROOT, 1).used, u(0));
    // A lifetime cap beside it, with what an open reservation holds.
    let open = f.reserve(ROOT, USD, u(5), u(5), None);
    f.control(ROOT, Some(1000), Period::Lifetime, false);
    assert_eq!(f.control_of(ROOT, 0).held, u(5));
    assert_eq!(f.control_of(ROOT, 1).held, u(5));
    f.release(open.id).unwrap();
    assert_eq!(
        (f.control_of(ROOT, 0).held, f.control_of(ROOT, 1).held),
        (u(0), u(0))
    );
    // Removing the monthly one leaves the lifetime cap.
    f.control(ROOT, None, monthly, false);
    let limits = f.ledger.account(ROOT).unwrap().limits;
    assert_eq!(limits.len(), 1);
    assert_eq!(limits[0].period, Period::Lifetime);
    // A period out of range is refused and changes nothing.
    for bad in [
        Period::Months {
            months: 13,
            anchor: T0,
            offset_min: 0,
        },
        Period::Fixed {
            anchor: T0,
            length_ms: 1_000,
        },
    ] {
        assert_eq!(
            f.apply(Command::SetLimit {
                account: ROOT,
                unit: USD,
                cap: Some(u(1)),
                period: bad,
                soft: false,
                alerts: Vec::new(),
            }),
            Err(LedgerError::Invalid(InvalidInput::Period))
        );
    }
    assert_eq!(f.ledger.account(ROOT).unwrap().limits, limits);
    f.ledger.check_invariants().unwrap();
}

#[test]
fn alert_thresholds_fire_once_per_period() {
    let mut f = Fixture::new();
    f.now = at(2026, 11, 3, 9);
    f.create(ROOT, None, false);
    f.topup(ROOT, USD, u(1000));
    f.create(CHILD, Some(ROOT), true);
    let r = f.apply(Command::SetLimit {
        account: CHILD,
        unit: USD,
        cap: Some(u(100)),
        period: Period::calendar_month(0),
        soft: true,
        alerts: vec![50, 80, 100],
    });
    assert_eq!(r, Ok(Outcome::LimitSet));
    let fired = |f: &Fixture| -> Vec<u8> {
        f.ledger
            .alerts_after(0, 100)
            .iter()
            .map(|a| a.threshold_pct)
            .collect()
    };
    f.spend(CHILD, u(49));
    assert!(fired(&f).is_empty());
    // One commit across two thresholds raises both, in order.
    f.spend(CHILD, u(32));
    assert_eq!(fired(&f), [50, 80]);
    f.spend(CHILD, u(1));
    assert_eq!(fired(&f), [50, 80]);
    // A soft cap passed: the alert, and no refusal.
    f.spend(CHILD, u(40));
    assert_eq!(fired(&f), [50, 80, 100]);
    let last = f.ledger.alerts_after(2, 100);
    assert_eq!(last.len(), 1);
    let a = &last[0];
    assert_eq!(
        (a.seq, a.account, a.period, a.used, a.cap, a.soft),
        (3, CHILD, 1, u(122), u(100), true)
    );
    assert_eq!(a.period_start, at(2026, 11, 1, 0));
    // Sending the same terms again does not fire them again.
    f.apply(Command::SetLimit {
        account: CHILD,
        unit: USD,
        cap: Some(u(100)),
        period: Period::calendar_month(0),
        soft: true,
        alerts: vec![50, 80, 100],
    })
    .unwrap();
    f.spend(CHILD, u(1));
    assert_eq!(f.ledger.last_alert(), 3);
    // December: each fires again.
    f.now = at(2026, 12, 2, 0);
    f.spend(CHILD, u(60));
    assert_eq!(fired(&f), [50, 80, 100, 50]);
    assert_eq!(
        f.ledger.alerts_after(3, 100)[0].period_start,
        at(2026, 12, 1, 0)
    );
    // Thresholds out of range are refused and change nothing.
    for bad in [
        vec![0],
        vec![80, 50],
        vec![251],
        (1..=9).collect::<Vec<u8>>(),
    ] {
        assert_eq!(
            f.apply(Command::SetLimit {
                account: CHILD,
                unit: USD,
                cap: Some(u(1)),
                period: Period::calendar_month(0),
                soft: false,
                alerts: bad,
            }),
            Err(LedgerError::Invalid(InvalidInput::Thresholds))
        );
    }
    assert_eq!(f.control_of(CHILD, 1).cap, u(100));
}
