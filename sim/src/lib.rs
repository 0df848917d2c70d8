//! runnel's deterministic simulator.
//!
//! A run is `(seed, scenario)`: the seed chooses which faults are on and how often (swarm
//! testing), every latency, every fault's timing and every random choice of the workload. The
//! real actors of `runnel-actors` — the broker with its partition logs, and Kafka clients
//! speaking the wire protocol as bytes — run on simulated nodes, disks ([`disk`]) and a network
//! ([`net`]) in virtual time ([`world`]). After every step, invariants are checked on the
//! broker's state; at the end, the client history goes through the Jepsen-style checker
//! (`runnel-checker`) and liveness is checked. The same inputs give the same trace hash, so any
//! failing seed replays exactly.

#![warn(missing_docs)]

pub mod admin;
pub mod check;
pub mod conformance;
pub mod disk;
pub mod faults;
pub mod net;
pub mod report;
pub mod scenario;
pub mod swarm;
pub mod world;

use faults::FaultPlan;
use runnel_actors::core::Rng;
use scenario::Scenario;
use world::{Outcome, Violation, World};

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The seed.
    pub seed: u64,
    /// The scenario.
    pub scenario: &'static Scenario,
    /// Fault kinds to enable; `None` lets the seed choose (swarm).
    pub faults: Option<Vec<String>>,
    /// Planted bugs to activate (needs the `planted-bugs` feature).
    pub bugs: Vec<String>,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// What ran.
    pub config: RunConfig,
    /// The faults the seed enabled.
    pub plan: String,
    /// Everything the world reported, with the checker's findings added to its violations.
    pub outcome: Outcome,
    /// The history checker's one-line verdict.
    pub checker_summary: String,
    /// Operations in the checked history.
    pub history_ops: usize,
}

impl RunResult {
    /// Whether any checker found a problem.
    pub fn failed(&self) -> bool {
        !self.outcome.violations.is_empty()
    }
}

impl RunConfig {
    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!("runnel sim run --seed {} --scenario {}", self.seed, self.scenario.name);
        if let Some(f) = &self.faults {
            cmd.push_str(&format!(" --faults {}", if f.is_empty() { "none".to_string() } else { f.join(",") }));
        }
        for b in &self.bugs {
            cmd.push_str(&format!(" --bug {b}"));
        }
        cmd
    }
}

/// Run one seed.
pub fn run(config: &RunConfig) -> Result<RunResult, String> {
    activate_bugs(&config.bugs)?;
    // The plan draws from its own stream so that forcing faults does not shift the world's draws.
    let mut plan_rng = Rng::new(config.seed ^ 0x5eed_fa17);
    let plan = match &config.faults {
        None => FaultPlan::swarm(&mut plan_rng),
        Some(list) => FaultPlan::from_list(list)?,
    };
    let description = plan.describe();
    // An actor's own assertion failing (a broken invariant it checks itself) is a finding like
    // any other, reported with the seed that replays it, not a crash of the whole swarm.
    let world = World::new(config.seed, config.scenario, plan);
    let mut outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run())) {
        Ok(o) => o,
        Err(panic) => {
            let what =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "panic".into());
            runnel_actors::core::bugs::set_buggify(false);
            Outcome {
                trace_hash: 0,
                events: 0,
                sim_time_ms: 0,
                violations: vec![Violation { time_ms: 0, checker: "panic".into(), what }],
                faults_fired: Default::default(),
                history: Vec::new(),
                fault_log: Vec::new(),
                produce_latencies: Vec::new(),
                completed: false,
                protocol: Default::default(),
                deleted_below: Default::default(),
            }
        }
    };
    activate_bugs(&[])?;
    let history = check::history(&outcome.history);
    let options = runnel_checker::Options { deleted_below: outcome.deleted_below.clone(), ..Default::default() };
    let report = runnel_checker::check(&history, &options);
    if !report.valid {
        outcome.violations.push(Violation { time_ms: outcome.sim_time_ms, checker: "history".into(), what: report.to_string() });
    }
    Ok(RunResult { config: config.clone(), plan: description, outcome, checker_summary: report.to_string(), history_ops: history.ops().len() })
}

#[cfg(feature = "planted-bugs")]
fn activate_bugs(bugs: &[String]) -> Result<(), String> {
    runnel_actors::core::bugs::set_planted(bugs)
}

#[cfg(not(feature = "planted-bugs"))]
fn activate_bugs(bugs: &[String]) -> Result<(), String> {
    if bugs.is_empty() {
        Ok(())
    } else {
        Err("planted bugs need a build with `--features planted-bugs`".into())
    }
}
