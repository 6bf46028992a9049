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
    }
    // The sweep exercised what it claims to.
    // The sweep exercised what it claims to (a crash is ~5 % of steps).
    assert!(
        crashes >= seeds * steps / 50,
        "only {crashes} crashes in the sweep"
    );
    assert!(
        acknowledged >= seeds * steps / 10,
        "only {acknowledged} acknowledged answers"
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

#[test]
fn replying_before_the_sync_is_caught() {
    // Plant the bug: acknowledge before the record is durable. Some seed in
    // a short sweep must expose it, and rerunning that seed up to the
    // reported step must reproduce it exactly.
    let caught = (0..50).find_map(|seed| {
        run(DstConfig {
            seed,
            steps: 300,
            mutation: Some(Mutation::ReplyBeforeSync),
        })
        .err()
    });
    let violation = caught.expect("the simulator missed a reply sent before fsync");
    let again = run(DstConfig {
        seed: violation.seed,
        steps: violation.step,
        mutation: Some(Mutation::ReplyBeforeSync),
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
