//! Many seeds: swarm runs across worker threads, with a progress line, a summary of violations
//! (each with its replay command), a fault-coverage table and throughput numbers.

use crate::scenario::{Scenario, SCENARIOS};
use crate::{run, RunConfig, RunResult};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// First seed.
    pub first_seed: u64,
    /// How many seeds.
    pub seeds: u64,
    /// One scenario, or every scenario in turn.
    pub scenario: Option<&'static Scenario>,
    /// Forced fault kinds (None = swarm).
    pub faults: Option<Vec<String>>,
    /// Planted bugs.
    pub bugs: Vec<String>,
    /// Worker threads.
    pub jobs: usize,
    /// Stop at the first violation.
    pub stop_on_first: bool,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

/// What a swarm found.
#[derive(Debug, Default)]
pub struct SwarmSummary {
    /// Seeds run.
    pub runs: u64,
    /// Failing runs (their violations and replay commands).
    pub failures: Vec<RunResult>,
    /// Per fault kind: seeds that enabled it, and how often it fired in total.
    pub coverage: BTreeMap<String, (u64, u64)>,
    /// Per protocol path (see `Outcome::protocol`): seeds that reached it, and how often.
    pub protocol: BTreeMap<String, (u64, u64)>,
    /// Wall time.
    pub wall: Duration,
    /// Total simulated time, ms.
    pub sim_ms: u64,
    /// Runs that did not complete their workload.
    pub incomplete: u64,
    /// Errors that stopped a run from starting (bad configuration).
    pub errors: Vec<String>,
}

impl SwarmSummary {
    /// Seeds per second of wall time.
    pub fn seeds_per_second(&self) -> f64 {
        self.runs as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Simulated time over wall time.
    pub fn speedup(&self) -> f64 {
        self.sim_ms as f64 / 1000.0 / self.wall.as_secs_f64().max(1e-9)
    }

    /// The lowest failing seed, if any.
    pub fn first_failure(&self) -> Option<u64> {
        self.failures.iter().map(|r| r.config.seed).min()
    }
}

/// The scenario seed `seed` runs when none is forced.
pub fn scenario_for(seed: u64, forced: Option<&'static Scenario>) -> &'static Scenario {
    forced.unwrap_or(&SCENARIOS[(seed % SCENARIOS.len() as u64) as usize])
}

/// Run the swarm.
pub fn swarm(config: &SwarmConfig) -> SwarmSummary {
    let start = Instant::now();
    let next = AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let summary = Mutex::new(SwarmSummary::default());
    let jobs = config.jobs.max(1);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= config.seeds {
                    return;
                }
                let seed = config.first_seed + i;
                let rc = RunConfig { seed, scenario: scenario_for(seed, config.scenario), faults: config.faults.clone(), bugs: config.bugs.clone() };
                let result = run(&rc);
                let mut s = summary.lock().expect("summary lock");
                match result {
                    Err(e) => {
                        s.errors.push(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        s.runs += 1;
                        s.sim_ms += r.outcome.sim_time_ms;
                        if !r.outcome.completed {
                            s.incomplete += 1;
                        }
                        for kind in r.plan.split(',').filter(|k| *k != "none") {
                            s.coverage.entry(kind.to_string()).or_default().0 += 1;
                        }
                        for (kind, n) in &r.outcome.faults_fired {
                            s.coverage.entry(kind.clone()).or_default().1 += n;
                        }
                        for (path, n) in &r.outcome.protocol {
                            let e = s.protocol.entry(path.clone()).or_default();
                            e.0 += 1;
                            e.1 += n;
                        }
                        if r.failed() {
                            if config.stop_on_first {
                                stop.store(true, Ordering::Relaxed);
                            }
                            s.failures.push(r);
                        }
                    }
                }
                if config.progress {
                    let done = s.runs;
                    let width = 40;
                    let filled = (done * width / config.seeds.max(1)) as usize;
                    eprint!("\r[{}{}] {done}/{} seeds, {} failing", "#".repeat(filled), " ".repeat(width as usize - filled), config.seeds, s.failures.len());
                    let _ = std::io::stderr().flush();
                }
            });
        }
    });
    if config.progress {
        eprintln!();
    }
    let mut s = summary.into_inner().expect("summary lock");
    s.failures.sort_by_key(|r| r.config.seed);
    s.wall = start.elapsed();
    s
}
