//! Durability of the journaled ledger: restart, replay, checkpoints, and a
//! crash test that cuts the log at many byte offsets.

use reckon_balances::journal::{Clock, Journal, JournalConfig, RecoveryReport};
use reckon_balances::machine::{LedgerMachine, LedgerRequest, LedgerResponse};
use reckon_balances::{
    AccountId, Amount, BucketSpec, Command, CreditKind, OpId, Operation, Outcome, ReservationId,
    Timestamp, Unit,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const T0: u64 = 1_800_000_000_000;

fn manual_clock() -> (Clock, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(T0));
    let read = now.clone();
    (
        Arc::new(move || Timestamp(read.load(Ordering::SeqCst))),
        now,
    )
}

fn quiet_config(dir: &Path) -> JournalConfig {
    let mut c = JournalConfig::new(dir);
    c.checkpoint_interval_ms = 3_600_000;
    c.checkpoint_records = u64::MAX;
    c.checkpoint_on_shutdown = false;
    c.segment_bytes_max = 16 << 10;
    c
}

fn open(config: &JournalConfig, clock: Clock) -> (Journal<LedgerMachine>, RecoveryReport) {
    Journal::<LedgerMachine>::open(config.clone(), clock).expect("journal opens")
}

fn apply(
    j: &Journal<LedgerMachine>,
    op: u128,
    command: Command,
) -> Result<Outcome, reckon_balances::LedgerError> {
    match j
        .call(LedgerRequest::Apply(Operation {
            op: OpId(op),
            command,
        }))
        .unwrap()
    {
        LedgerResponse::Applied(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

fn digest(j: &Journal<LedgerMachine>) -> u64 {
    match j.call(LedgerRequest::StateDigest).unwrap() {
        LedgerResponse::StateDigest(d) => d,
        other => panic!("unexpected {other:?}"),
    }
}

/// A deterministic mixed workload: accounts, top-ups, reservations,
/// partial and final commits, releases, retries and refusals.
struct Workload {
    rng: u64,
    next_op: u128,
    open: Vec<ReservationId>,
    accounts: u64,
    issued: Vec<(u128, Command)>,
}

impl Workload {
    fn new(seed: u64) -> Self {
        Workload {
            rng: seed,
            next_op: 1,
            open: Vec::new(),
            accounts: 0,
            issued: Vec::new(),
        }
    }

    fn next(&mut self, bound: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    }

    /// The next operation (op id, command).
    fn step(&mut self) -> (u128, Command) {
        if self.accounts < 4 || self.next(20) == 0 {
            self.accounts += 1;
            let parent = (self.accounts > 1).then_some(AccountId(1));
            let account = AccountId(self.accounts);
            return self.fresh(Command::CreateAccount {
                account,
                parent,
                draws_on_parent: true,
            });
        }
        let account = AccountId(1 + self.next(self.accounts));
        let command = match self.next(10) {
            0 | 1 => Command::Credit {
                account,
                unit: Unit::USD,
                amount: Amount::from_nanos(1 + self.next(50_000_000_000) as i128),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: "test top-up".into(),
            },
            2 => Command::GrantBucket {
                account,
                spec: BucketSpec {
                    valid_until: Timestamp(T0 + 10_000_000_000),
                    priority: 1,
                    ..BucketSpec::plain(Unit::TOKENS_OUT, Amount::from_units(1_000))
                },
            },
            3..=5 => Command::Reserve {
                account,
                unit: if self.next(3) == 0 {
                    Unit::TOKENS_OUT
                } else {
                    Unit::USD
                },
                amount: Amount::from_units(1 + self.next(20) as i64),
                min_amount: Amount::from_nanos(1),
                service: None,
                expires_at: Timestamp(T0 + 10_000_000_000),
            },
            6 | 7 if !self.open.is_empty() => {
                let i = self.next(self.open.len() as u64) as usize;
                let reservation = self.open[i];
                let release_rest = self.next(3) != 0;
                if release_rest {
                    self.open.swap_remove(i);
                }
                Command::Commit {
                    reservation,
                    used: Amount::from_nanos(self.next(2_000_000_000) as i128),
                    release_rest,
                }
            }
            8 if !self.open.is_empty() => {
                let i = self.next(self.open.len() as u64) as usize;
                Command::Release {
                    reservation: self.open.swap_remove(i),
                }
            }
            _ if !self.issued.is_empty() => {
                // A retry of an earlier operation, same id and content.
                let i = self.next(self.issued.len() as u64) as usize;
                return self.issued[i].clone();
            }
            _ => Command::SetIdempotencyWindow { window_ms: 60_000 },
        };
        self.fresh(command)
    }

    fn fresh(&mut self, command: Command) -> (u128, Command) {
        let op = self.next_op;
        self.next_op += 1;
        self.issued.push((op, command.clone()));
        (op, command)
    }

    fn observe(&mut self, result: &Result<Outcome, reckon_balances::LedgerError>) {
        if let Ok(Outcome::Reserved { reservation, .. }) = result {
            if !self.open.contains(reservation) {
                self.open.push(*reservation);
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn last_segment(wal_dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

#[test]
fn restart_with_checkpoint_restores_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = manual_clock();
    let mut config = quiet_config(dir.path());
    config.checkpoint_on_shutdown = true;
    let (j, report) = open(&config, clock.clone());
    assert_eq!(report.replayed, 0);
    let mut w = Workload::new(7);
    for _ in 0..300 {
        let (op, cmd) = w.step();
        let r = apply(&j, op, cmd);
        w.observe(&r);
    }
    let before = digest(&j);
    j.shutdown();
    let (j, report) = open(&config, clock);
    assert!(report.snapshot_lsn > 0, "{report:?}");
    assert_eq!(
        report.replayed, 0,
        "a clean shutdown leaves nothing to replay"
    );
    assert_eq!(digest(&j), before);
    j.shutdown();
}

#[test]
fn replay_without_checkpoint_restores_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, now) = manual_clock();
    let config = quiet_config(dir.path());
    let (j, _) = open(&config, clock.clone());
    let mut w = Workload::new(11);
    let mut fresh = 0;
    for i in 0..400 {
        now.store(T0 + i * 10, Ordering::SeqCst);
        let (op, cmd) = w.step();
        let r = apply(&j, op, cmd);
        w.observe(&r);
        fresh = fresh.max(op);
    }
    let before = digest(&j);
    j.shutdown();
    let (j, report) = open(&config, clock);
    assert_eq!(report.snapshot_lsn, 0);
    // Retries answered from the idempotency table log nothing.
    assert_eq!(report.replayed as u128, fresh);
    assert_eq!(digest(&j), before);
    // The recovered journal goes on: a retry of op 1 gets its first answer.
    assert_eq!(
        apply(
            &j,
            1,
            Command::CreateAccount {
                account: AccountId(1),
                parent: None,
                draws_on_parent: true
            }
        ),
        Ok(Outcome::AccountCreated)
    );
    j.shutdown();
}

#[test]
fn checkpoints_plus_log_suffix_restore_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, now) = manual_clock();
    let mut config = quiet_config(dir.path());
    config.checkpoint_records = 40;
    let (j, _) = open(&config, clock.clone());
    let mut w = Workload::new(23);
    for i in 0..600 {
        now.store(T0 + i, Ordering::SeqCst);
        let (op, cmd) = w.step();
        let r = apply(&j, op, cmd);
        w.observe(&r);
    }
    let before = digest(&j);
    let checkpoints = j.stats().checkpoints.load(Ordering::Relaxed);
    j.shutdown();
    assert!(checkpoints > 0, "checkpoints ran");
    let (j, report) = open(&config, clock);
    assert!(report.snapshot_lsn > 0, "{report:?}");
    assert_eq!(digest(&j), before, "{report:?}");
    j.shutdown();
}

#[test]
fn expiry_sweeps_are_logged_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, now) = manual_clock();
    let mut config = quiet_config(dir.path());
    config.tick_ms = 5;
    let (j, _) = open(&config, clock.clone());
    apply(
        &j,
        1,
        Command::CreateAccount {
            account: AccountId(1),
            parent: None,
            draws_on_parent: false,
        },
    )
    .unwrap();
    apply(
        &j,
        2,
        Command::Credit {
            account: AccountId(1),
            unit: Unit::USD,
            amount: Amount::from_units(10),
            bucket: None,
            kind: CreditKind::TopUp,
            reason: "".into(),
        },
    )
    .unwrap();
    let reserved = apply(
        &j,
        3,
        Command::Reserve {
            account: AccountId(1),
            unit: Unit::USD,
            amount: Amount::from_units(4),
            min_amount: Amount::from_units(4),
            service: None,
            expires_at: Timestamp(T0 + 1_000),
        },
    )
    .unwrap();
    let Outcome::Reserved { reservation, .. } = reserved else {
        panic!()
    };
    now.store(T0 + 1_000, Ordering::SeqCst);
    // The writer's tick sweeps on its own; wait until the reservation is gone.
    let mut gone = false;
    for _ in 0..400 {
        if let LedgerResponse::Reservation(None) =
            j.call(LedgerRequest::Reservation(reservation)).unwrap()
        {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(gone, "the sweep expired the reservation");
    let before = digest(&j);
    j.shutdown();
    let (j, report) = open(&config, clock);
    assert_eq!(report.replayed, 4, "three operations and one sweep");
    assert_eq!(digest(&j), before);
    match j
        .call(LedgerRequest::Available {
            account: AccountId(1),
            unit: Unit::USD,
            service: None,
        })
        .unwrap()
    {
        LedgerResponse::Available(Ok(a)) => assert_eq!(a, Amount::from_units(10)),
        other => panic!("{other:?}"),
    }
    j.shutdown();
}

/// Acknowledged operations fill the log; then more records are written and
/// the log is cut at many byte offsets inside that unacknowledged tail.
/// Every recovery must hold every acknowledged operation and equal the live
/// state at exactly the log position it recovered to.
#[test]
fn crash_cut_at_any_offset_keeps_every_acknowledged_operation() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, now) = manual_clock();
    let mut config = quiet_config(dir.path());
    config.segment_bytes_max = 1 << 30;
    let (j, _) = open(&config, clock.clone());
    let mut w = Workload::new(99);
    let mut digest_at_lsn: HashMap<u64, u64> = HashMap::new();
    digest_at_lsn.insert(0, digest(&j));
    let mut step = |j: &Journal<LedgerMachine>, i: u64, digests: &mut HashMap<u64, u64>| {
        now.store(T0 + i * 3, Ordering::SeqCst);
        let (op, cmd) = w.step();
        let r = apply(j, op, cmd);
        w.observe(&r);
        let lsn = j.stats().durable_lsn.load(Ordering::Acquire);
        digests.insert(lsn, digest(j));
    };
    for i in 0..150 {
        step(&j, i, &mut digest_at_lsn);
    }
    let acknowledged_lsn = j.stats().durable_lsn.load(Ordering::Acquire);
    let segment = last_segment(&dir.path().join("wal"));
    let acknowledged_len = std::fs::metadata(&segment).unwrap().len();
    for i in 150..190 {
        step(&j, i, &mut digest_at_lsn);
    }
    j.shutdown();
    let full_len = std::fs::metadata(&segment).unwrap().len();
    assert!(full_len > acknowledged_len);

    let mut offsets: Vec<u64> = (acknowledged_len..=full_len).step_by(7).collect();
    offsets.extend([
        acknowledged_len,
        acknowledged_len + 1,
        full_len - 1,
        full_len,
    ]);
    let mut last_recovered = 0;
    let mut positions = std::collections::BTreeSet::new();
    for offset in offsets {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let cut = copy.path().join("wal").join(segment.file_name().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&cut)
            .unwrap()
            .set_len(offset)
            .unwrap();
        let mut c = config.clone();
        c.data_dir = copy.path().to_path_buf();
        let (j, report) = open(&c, clock.clone());
        let recovered = report.snapshot_lsn + report.replayed;
        assert!(
            recovered >= acknowledged_lsn,
            "offset {offset}: lost acknowledged records ({recovered} < {acknowledged_lsn})"
        );
        assert!(
            recovered >= last_recovered || offset < full_len,
            "recovery went backwards"
        );
        last_recovered = recovered;
        positions.insert(recovered);
        let expected = digest_at_lsn
            .get(&recovered)
            .copied()
            .expect("a recorded state for that position");
        assert_eq!(
            digest(&j),
            expected,
            "offset {offset}, recovered to lsn {recovered}"
        );
        // The recovered journal accepts new work after the cut.
        apply(
            &j,
            u128::MAX,
            Command::SetIdempotencyWindow { window_ms: 1 },
        )
        .unwrap();
        j.shutdown();
    }
    // The cuts landed inside many different records, not just at the ends.
    assert!(positions.len() > 20, "recovered positions {positions:?}");
    assert_eq!(positions.first(), Some(&acknowledged_lsn));
}

#[test]
fn a_data_directory_serves_one_journal_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = manual_clock();
    let config = quiet_config(dir.path());
    let (first, _) = open(&config, clock.clone());
    let second = Journal::<LedgerMachine>::open(config.clone(), clock.clone());
    let err = second
        .err()
        .expect("a second journal on the same directory is refused");
    assert!(err.to_string().contains("in use"), "{err}");
    first.shutdown();
    // Once the first is gone, the directory opens again.
    let (again, _) = open(&config, clock);
    again.shutdown();
}
