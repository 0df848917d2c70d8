//! Every planted bug is caught by the simulator within its budget of 1,000 seeds. Built only with
//! `--features planted-bugs` (CI runs `cargo test -p runnel-sim --features planted-bugs`).
#![cfg(feature = "planted-bugs")]

use runnel_actors::core::bugs::PLANTED_BUGS;
use runnel_sim::swarm::{swarm, SwarmConfig};

const BUDGET: u64 = 1000;

/// For each planted bug, a swarm stops at its first failing seed, which must come within budget.
#[test]
fn every_planted_bug_is_found_within_budget() {
    let mut report = Vec::new();
    for (bug, _) in PLANTED_BUGS {
        let config = SwarmConfig {
            first_seed: 1,
            seeds: BUDGET,
            scenario: None,
            faults: None,
            bugs: vec![bug.to_string()],
            jobs: 2,
            stop_on_first: true,
            progress: false,
        };
        let s = swarm(&config);
        assert!(s.errors.is_empty(), "{bug}: {:?}", s.errors);
        let first = s.first_failure();
        let how = s
            .failures
            .first()
            .map(|r| format!("{}: {}", r.outcome.violations[0].checker, r.outcome.violations[0].what.lines().next().unwrap_or("")))
            .unwrap_or_default();
        println!("{bug}: first caught at seed {first:?} ({} seeds run) — {how}", s.runs);
        report.push((bug, first));
    }
    let missed: Vec<_> = report.iter().filter(|(_, f)| f.is_none()).map(|(b, _)| *b).collect();
    assert!(missed.is_empty(), "planted bugs not caught within {BUDGET} seeds: {missed:?}");
}
