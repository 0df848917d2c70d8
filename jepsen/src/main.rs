//! `runnel-jepsen`: run the Jepsen-style suite against real runnel processes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use runnel_jepsen::nemesis::Fault;
use runnel_jepsen::{run, RunOptions};

/// Start a cluster of `runnel server` processes on 127.0.0.1, run an idempotent acks=all
/// librdkafka workload against it while a nemesis kills, pauses and partitions nodes, then
/// check the recorded history (lost, duplicated, reordered or phantom records). Exits 1 if
/// the history is invalid.
#[derive(Parser, Debug)]
#[command(name = "runnel-jepsen", version)]
struct Args {
    /// The runnel binary (default: `runnel` next to this binary).
    #[arg(long)]
    runnel: Option<PathBuf>,
    /// Directory for the run's files (default: ./jepsen-runs/<seed>-<unix time>).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Nodes, every one a broker and a voter.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds the workload and the nemesis run.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Partitions of the test topic (the keys).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Faults to inject, comma-separated: kill, pause, partition; `none` for no faults.
    #[arg(long, default_value = "kill,pause,partition")]
    nemesis: String,
    /// Seconds of calm between faults, and how long each fault is held.
    #[arg(long, default_value_t = 5.0)]
    nemesis_interval: f64,
    /// Seeds the suite's choices (keys, operations, faults, victims).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Extra server.properties line for every node, key=value (repeatable).
    #[arg(long = "config")]
    configs: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let faults: Result<Vec<Fault>, String> = if args.nemesis == "none" { Ok(Vec::new()) } else { args.nemesis.split(',').map(|s| s.trim().parse()).collect() };
    let faults = match faults {
        Ok(f) => f,
        Err(e) => {
            eprintln!("runnel-jepsen: --nemesis: {e}");
            return ExitCode::from(2);
        }
    };
    let runnel = args
        .runnel
        .unwrap_or_else(|| std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("runnel"))).unwrap_or_else(|| PathBuf::from("runnel")));
    let dir = args.dir.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        PathBuf::from("jepsen-runs").join(format!("{}-{now}", args.seed))
    });
    let mut o = RunOptions::new(runnel, dir);
    o.nodes = args.nodes;
    o.time_limit = Duration::from_secs(args.time_limit);
    o.concurrency = args.concurrency.max(1);
    o.partitions = args.partitions.max(1);
    o.faults = faults;
    o.fault_interval = Duration::from_secs_f64(args.nemesis_interval.max(0.1));
    o.seed = args.seed;
    o.extra_config = args.configs;
    match run(&o) {
        Ok(outcome) => {
            println!("{}", outcome.summary);
            println!("{}", outcome.report);
            println!("files: {}", outcome.dir.display());
            if outcome.report.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("runnel-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}
