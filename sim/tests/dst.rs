//! The deterministic simulation: a sweep of seeds finds no violation, the
//! same seed gives the same run, and a planted bug is caught.

use reckon_sim::dst::{run, DstConfig, Mutation};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 200 seeds by default; `RECKON_DST_SEEDS` and `RECKON_DST_STEPS` make it
/// a long sweep (see README).
#[test]
fn a_sweep_of_seeds_finds_no_violation() {
    let mut crashes = 0;
    let mut acknowledged = 0;
    let mut hostile = 0;
    let mut clock_steps = 0;
    let mut checkpoints = 0;
    let first = env("RECKON_DST_FIRST_SEED", 0);
    let seeds = env("RECKON_DST_SEEDS", 200);
    let steps = env("RECKON_DST_STEPS", 300);
    for seed in first..first + seeds {
        let report = run(DstConfig {
            seed,
            steps,
            mutation: None,
        })
        .unwrap_or_else(|v| panic!("{v}"));
        crashes += report.crashes;
        acknowledged += report.acknowledged;
        hostile += report.hostile;
        clock_steps += report.clock_steps;
        checkpoints += report.checkpoints;
    }
    // The sweep exercised what it claims to (a crash is ~5 % of steps; a
    // checkpoint, encoded over several steps, lands about once per 100).
    assert!(
        crashes >= seeds * steps / 50,
        "only {crashes} crashes in the sweep"
    );
    assert!(
        acknowledged >= seeds * steps / 10,
        "only {acknowledged} acknowledged answers"
    );
    assert!(
        hostile >= seeds * steps / 50,
        "only {hostile} hostile requests"
    );
    assert!(clock_steps >= seeds / 2, "only {clock_steps} clock steps");
    assert!(
        checkpoints >= seeds * steps / 300,
        "only {checkpoints} checkpoints landed"
    );
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run(DstConfig {
        seed: 42,
        steps: 500,
        mutation: None,
    })
    .unwrap();
    let b = run(DstConfig {
        seed: 42,
        steps: 500,
        mutation: None,
    })
    .unwrap();
    assert_eq!(a, b);
    let c = run(DstConfig {
        seed: 43,
        steps: 500,
        mutation: None,
    })
    .unwrap();
    assert_ne!(a.run_digest, c.run_digest);
}

/// Plants a bug: some seed of a 100-seed sweep must expose it, the printed
/// command must name everything needed to reproduce it, and rerunning that
/// seed up to the reported step must reproduce it exactly.
fn planted_bug_is_caught(mutation: Mutation) {
    let caught = (0..100).find_map(|seed| {
        run(DstConfig {
            seed,
            steps: 300,
            mutation: Some(mutation),
        })
        .err()
    });
    let violation = caught.unwrap_or_else(|| panic!("the simulator missed {mutation:?}"));
    let printed = violation.to_string();
    assert!(
        printed.contains(&format!(
            "reckon-sim dst --seed {} --steps {} --mutation {}",
            violation.seed,
            violation.step,
            mutation.name()
        )),
        "{printed}"
    );
    let again = run(DstConfig {
        seed: violation.seed,
        steps: violation.step,
        mutation: Some(mutation),
    })
    .expect_err("the shortened run reproduces it");
    assert_eq!(again, violation);
    // Without the bug the same seed and steps pass.
    run(DstConfig {
        seed: violation.seed,
        steps: violation.step,
        mutation: None,
    })
    .unwrap();
}

#[test]
fn replying_before_the_sync_is_caught() {
    planted_bug_is_caught(Mutation::ReplyBeforeSync);
}

#[test]
fn looking_answers_up_before_authorising_is_caught() {
    planted_bug_is_caught(Mutation::AnswersBeforeAuthorisation);
}

#[test]
fn a_refund_without_a_recorded_debit_is_caught() {
    planted_bug_is_caught(Mutation::RefundWithoutCharge);
}

#[test]
fn a_checkpoint_that_does_not_save_entries_before_they_change_is_caught() {
    planted_bug_is_caught(Mutation::CheckpointWithoutCopy);
}
