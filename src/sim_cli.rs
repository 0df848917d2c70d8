//! `runnel sim …`: run and replay seeds of the deterministic simulator, swarm over many seeds,
//! check determinism across processes, list planted bugs and scenarios.

use anyhow::{bail, Context};
use runnel_sim::faults::FAULT_KINDS;
use runnel_sim::scenario::{scenario, SCENARIOS};
use runnel_sim::swarm::{scenario_for, swarm, SwarmConfig};
use runnel_sim::{run, RunConfig, RunResult};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Parse `--faults`: a comma-separated list, `none`, or absent (swarm).
pub fn parse_faults(faults: Option<&str>) -> Option<Vec<String>> {
    faults.map(|f| if f == "none" { Vec::new() } else { f.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect() })
}

fn lookup_scenario(name: Option<&str>) -> anyhow::Result<Option<&'static runnel_sim::scenario::Scenario>> {
    match name {
        None => Ok(None),
        Some(n) => match scenario(n) {
            Some(s) => Ok(Some(s)),
            None => bail!("unknown scenario {n}; known: {}", SCENARIOS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")),
        },
    }
}

fn print_run(r: &RunResult, wall_s: f64) {
    let o = &r.outcome;
    println!("seed {} · scenario {} · faults enabled: {}", r.config.seed, r.config.scenario.name, r.plan);
    println!(
        "trace {:016x} · {} events · {:.1} s simulated in {:.3} s wall ({:.0}x)",
        o.trace_hash,
        o.events,
        o.sim_time_ms as f64 / 1000.0,
        wall_s,
        o.sim_time_ms as f64 / 1000.0 / wall_s.max(1e-9)
    );
    let fired: Vec<String> = o.faults_fired.iter().map(|(k, n)| format!("{k}x{n}")).collect();
    println!("faults fired: {}", if fired.is_empty() { "none".into() } else { fired.join(", ") });
    if !o.protocol.is_empty() {
        let paths: Vec<String> = o.protocol.iter().map(|(k, n)| format!("{k}x{n}")).collect();
        println!("protocol paths: {}", paths.join(", "));
    }
    println!("history: {} ops; workload {}", r.history_ops, if o.completed { "completed" } else { "did NOT complete" });
    if !o.produce_latencies.is_empty() {
        let mut l: Vec<u64> = o.produce_latencies.iter().map(|x| x.1).collect();
        l.sort_unstable();
        let at = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
        println!("produce latency (acks=all, simulated ms): p50 {} · p99 {} · max {}", at(0.5), at(0.99), l[l.len() - 1]);
    }
    if o.violations.is_empty() {
        println!("violations: none");
    } else {
        println!("VIOLATIONS ({}):", o.violations.len());
        for v in o.violations.iter().take(20) {
            // The first line says what; the checker's examples follow, indented.
            let mut lines = v.what.lines();
            println!("  [{} ms] {}: {}", v.time_ms, v.checker, lines.next().unwrap_or(""));
            for line in lines {
                println!("    {line}");
            }
        }
    }
    println!("replay: {}", r.config.replay_command());
}

/// Hashes of a range of seeds computed by a second process of this binary.
fn hashes_in_child(first: u64, seeds: u64, scenario: Option<&str>, faults: Option<&str>, bugs: &[String]) -> anyhow::Result<BTreeMap<u64, u64>> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["sim", "hashes", "--first-seed", &first.to_string(), "--seeds", &seeds.to_string()]);
    if let Some(s) = scenario {
        cmd.args(["--scenario", s]);
    }
    if let Some(f) = faults {
        cmd.args(["--faults", f]);
    }
    for b in bugs {
        cmd.args(["--bug", b]);
    }
    let out = cmd.output().context("cannot start the second process")?;
    if !out.status.success() {
        bail!("second process failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut w = line.split_whitespace();
        if let (Some(s), Some(h)) = (w.next(), w.next()) {
            map.insert(s.parse()?, u64::from_str_radix(h, 16)?);
        }
    }
    Ok(map)
}

/// `runnel sim run`.
pub fn cmd_run(
    seed: u64,
    scenario_name: Option<&str>,
    faults: Option<&str>,
    bugs: Vec<String>,
    check_determinism: bool,
    report: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let sc = lookup_scenario(scenario_name)?;
    let config = RunConfig { seed, scenario: scenario_for(seed, sc), faults: parse_faults(faults), bugs: bugs.clone() };
    let start = Instant::now();
    let result = run(&config).map_err(|e| anyhow::anyhow!(e))?;
    let wall = start.elapsed().as_secs_f64();
    print_run(&result, wall);
    let mut ok = !result.failed();
    if check_determinism {
        let again = run(&config).map_err(|e| anyhow::anyhow!(e))?;
        let child = hashes_in_child(seed, 1, Some(config.scenario.name), faults, &bugs)?;
        let other = child.get(&seed).copied();
        let same = again.outcome.trace_hash == result.outcome.trace_hash && other == Some(result.outcome.trace_hash);
        println!(
            "determinism: in-process {:016x}, second process {}: {}",
            again.outcome.trace_hash,
            other.map(|h| format!("{h:016x}")).unwrap_or("-".into()),
            if same { "identical" } else { "DIFFERENT" }
        );
        ok &= same;
    }
    if let Some(path) = report {
        std::fs::write(&path, runnel_sim::report::html(std::slice::from_ref(&result))).with_context(|| format!("cannot write {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(ok)
}

/// `runnel sim hashes` (used by --check-determinism): `seed hash` per line.
pub fn cmd_hashes(first: u64, seeds: u64, scenario_name: Option<&str>, faults: Option<&str>, bugs: Vec<String>) -> anyhow::Result<()> {
    let sc = lookup_scenario(scenario_name)?;
    for seed in first..first + seeds {
        let config = RunConfig { seed, scenario: scenario_for(seed, sc), faults: parse_faults(faults), bugs: bugs.clone() };
        let r = run(&config).map_err(|e| anyhow::anyhow!(e))?;
        println!("{seed} {:016x}", r.outcome.trace_hash);
    }
    Ok(())
}

/// `runnel sim swarm`.
#[allow(clippy::too_many_arguments)]
pub fn cmd_swarm(
    first_seed: u64,
    seeds: u64,
    jobs: usize,
    scenario_name: Option<&str>,
    faults: Option<&str>,
    bugs: Vec<String>,
    stop_on_first: bool,
    check_determinism: bool,
) -> anyhow::Result<bool> {
    let sc = lookup_scenario(scenario_name)?;
    let config = SwarmConfig {
        first_seed,
        seeds,
        scenario: sc,
        faults: parse_faults(faults),
        bugs: bugs.clone(),
        jobs,
        stop_on_first,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let s = swarm(&config);
    if let Some(e) = s.errors.first() {
        bail!("{e}");
    }
    println!("seeds run: {} ({}..{})", s.runs, first_seed, first_seed + seeds);
    println!(
        "wall time: {:.1} s · {:.1} seeds/s · simulated/wall: {:.0}x · {:.1} simulated seconds per seed",
        s.wall.as_secs_f64(),
        s.seeds_per_second(),
        s.speedup(),
        s.sim_ms as f64 / 1000.0 / s.runs.max(1) as f64
    );
    println!("fault coverage (seeds enabling it / times fired):");
    for (kind, _) in FAULT_KINDS {
        let (enabled, fired) = s.coverage.get(*kind).copied().unwrap_or((0, 0));
        println!("  {kind:<20} {enabled:>7} {fired:>9}");
    }
    if !s.protocol.is_empty() {
        println!("protocol paths (seeds reaching it / times):");
        for (path, (seeds, times)) in &s.protocol {
            println!("  {path:<28} {seeds:>7} {times:>9}");
        }
    }
    let mut ok = s.failures.is_empty();
    if s.failures.is_empty() {
        println!("violations: none");
    } else {
        println!("VIOLATIONS in {} seeds (first: {}):", s.failures.len(), s.first_failure().unwrap_or(0));
        for r in s.failures.iter().take(20) {
            let v = &r.outcome.violations[0];
            println!("  seed {}: {}: {}", r.config.seed, v.checker, v.what.lines().next().unwrap_or(""));
            println!("    replay: {}", r.config.replay_command());
        }
    }
    if check_determinism {
        let child = hashes_in_child(first_seed, seeds, scenario_name, faults, &bugs)?;
        let mut differ = 0;
        for seed in first_seed..first_seed + seeds {
            let config = RunConfig { seed, scenario: scenario_for(seed, sc), faults: parse_faults(faults), bugs: bugs.clone() };
            let h = run(&config).map_err(|e| anyhow::anyhow!(e))?.outcome.trace_hash;
            if child.get(&seed) != Some(&h) {
                differ += 1;
                println!("  seed {seed}: NOT deterministic ({h:016x} here, {:?} in the second process)", child.get(&seed));
            }
        }
        println!("determinism: {} of {seeds} seeds identical in-process and in a second process", seeds - differ);
        ok &= differ == 0;
    }
    Ok(ok)
}

/// `runnel sim bugs`.
pub fn cmd_bugs() -> anyhow::Result<()> {
    if !runnel_actors::core::bugs::planted_bugs_compiled() {
        bail!("this build has no planted bugs; build with `cargo build --features planted-bugs`");
    }
    for (name, what) in runnel_actors::core::bugs::PLANTED_BUGS {
        println!("{name:<30} {what}");
    }
    Ok(())
}

/// `runnel sim scenarios`.
pub fn cmd_scenarios() {
    for s in SCENARIOS {
        println!("{:<16} {}", s.name, s.description);
    }
    println!("\nfault kinds (--faults a,b,c | none; default: the seed chooses):");
    for (k, d) in FAULT_KINDS {
        println!("  {k:<20} {d}");
    }
}
