//! runnel's Jepsen-style suite: real `runnel server` processes on 127.0.0.1, a nemesis that
//! kills (-9), pauses (SIGSTOP) and partitions them (through per-link proxies), a librdkafka
//! workload that records every send and poll, and the history checker of `runnel-checker` (a
//! port of Jepsen's `jepsen.tests.kafka` checker) as the judge.
//!
//! [`run`] does one test: start the cluster, create the topic, run the workers and the nemesis
//! for the time limit, heal everything, read every key to the end, and check the history. The
//! run directory keeps what is needed to look into a failure: the history (`history.jsonl`, one
//! Jepsen-style op per line), the verdict (`report.txt`, `report.json`), the nemesis's log and
//! every node's configuration, data and log.
//!
//! The same checker judges the simulator's histories (`runnel sim`), so a history from either
//! world means the same thing.

pub mod cluster;
pub mod nemesis;
pub mod proxy;
pub mod rng;
pub mod workload;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use runnel_checker::{Mop, OpType, Options, Report, F};

use cluster::Cluster;
use nemesis::{Fault, NemesisLog};
use rng::Rng;
use workload::Workload;

/// The topic the workload writes.
pub const TOPIC: &str = "jepsen";

/// What one test run does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The `runnel` binary to run as the nodes.
    pub runnel: PathBuf,
    /// Where the run keeps its files (created; should not exist yet or be empty).
    pub dir: PathBuf,
    /// Cluster size (every node a broker and a voter).
    pub nodes: usize,
    /// How long the workload and the nemesis run.
    pub time_limit: Duration,
    /// Worker threads (processes at a time).
    pub concurrency: usize,
    /// Partitions of the topic: the keys.
    pub partitions: i32,
    /// The faults the nemesis may inject (none: a run without faults).
    pub faults: Vec<Fault>,
    /// Calm time between faults, and how long each fault is held.
    pub fault_interval: Duration,
    /// Seeds every choice the suite makes.
    pub seed: u64,
    /// Extra `server.properties` lines for every node.
    pub extra_config: Vec<String>,
    /// How long the final reads may take.
    pub final_read_timeout: Duration,
}

impl RunOptions {
    /// Defaults for `runnel` at `runnel`, keeping files in `dir`.
    pub fn new(runnel: PathBuf, dir: PathBuf) -> RunOptions {
        RunOptions {
            runnel,
            dir,
            nodes: 3,
            time_limit: Duration::from_secs(60),
            concurrency: 4,
            partitions: 4,
            faults: Fault::ALL.to_vec(),
            fault_interval: Duration::from_secs(5),
            seed: 1,
            extra_config: Vec::new(),
            final_read_timeout: Duration::from_secs(90),
        }
    }
}

/// Counts from the history and the nemesis.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Sends acknowledged.
    pub sends_ok: usize,
    /// Sends with an unknown outcome.
    pub sends_info: usize,
    /// Sends that definitely did not happen.
    pub sends_fail: usize,
    /// Poll operations.
    pub polls: usize,
    /// Records returned by polls (with repeats).
    pub records_read: usize,
    /// Processes that ran (workers start a new one after every unknown outcome).
    pub processes: u64,
    /// Faults injected, per kind.
    pub faults: Vec<(Fault, usize)>,
    /// Bytes the partitioned links dropped.
    pub dropped_bytes: u64,
    /// Whether the final reads got to every acknowledged offset.
    pub final_reads_complete: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k}={n}")).collect();
        write!(
            f,
            "sends ok={} info={} fail={}, polls={} (records read {}), processes={}, faults [{}], partitioned bytes dropped={}, final reads {}",
            self.sends_ok,
            self.sends_info,
            self.sends_fail,
            self.polls,
            self.records_read,
            self.processes,
            faults.join(" "),
            self.dropped_bytes,
            if self.final_reads_complete { "complete" } else { "INCOMPLETE" }
        )
    }
}

/// The result of a run.
pub struct Outcome {
    /// The checker's verdict.
    pub report: Report,
    /// What happened.
    pub summary: Summary,
    /// Where the run's files are.
    pub dir: PathBuf,
}

/// Create the topic with `runnel topic create`, retried while the cluster settles.
fn create_topic(o: &RunOptions, bootstrap: &str) -> anyhow::Result<()> {
    let rf = o.nodes.min(3).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(&o.runnel)
            .args(["topic", "create", TOPIC, "--partitions", &o.partitions.to_string(), "--replication-factor", &rf, "--bootstrap-server", bootstrap])
            .env("RUST_LOG", "warn")
            .output()
            .context("run runnel topic create")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains("TOPIC_ALREADY_EXISTS") || stderr.contains("already exists") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("topic create failed: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Run one test.
pub fn run(o: &RunOptions) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&o.dir).with_context(|| format!("create {}", o.dir.display()))?;
    let mut rng = Rng::new(o.seed);
    let mut extra = vec!["min.insync.replicas=2".to_string(), format!("default.replication.factor={}", o.nodes.min(3))];
    extra.extend(o.extra_config.iter().cloned());
    let cluster = Cluster::start(&o.runnel, &o.dir, o.nodes, &extra.join("\n"), &mut rng)?;
    let bootstrap = cluster.bootstrap();
    eprintln!("cluster of {} nodes serving at {bootstrap}; files in {}", o.nodes, o.dir.display());
    create_topic(o, &bootstrap)?;
    let cluster = Mutex::new(cluster);

    let start = Instant::now();
    let workload = Workload::new(TOPIC, o.partitions, bootstrap, start);
    let stop = Arc::new(AtomicBool::new(false));
    let nemesis_rng = rng.fork();
    let log: NemesisLog = std::thread::scope(|s| -> anyhow::Result<NemesisLog> {
        let workers: Vec<_> = (0..o.concurrency)
            .map(|_| {
                let r = rng.fork();
                let (w, stop) = (&workload, &stop);
                s.spawn(move || workload::worker(w, r, stop))
            })
            .collect();
        let nemesis = {
            let (c, stop) = (&cluster, &stop);
            s.spawn(move || nemesis::run(c, &o.faults, o.fault_interval, nemesis_rng, stop, start))
        };
        // The run's length: the workers and the nemesis work meanwhile.
        std::thread::sleep(o.time_limit);
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().expect("worker panicked")?;
        }
        Ok(nemesis.join().expect("nemesis panicked"))
    })?;

    eprintln!("[{:7.2}s] final reads", start.elapsed().as_secs_f64());
    let final_reads_complete = workload::final_reads(&workload, Instant::now() + o.final_read_timeout)?;
    let cluster = cluster.into_inner().expect("cluster lock");
    let history = workload.history.into_inner().expect("history lock");

    let report = runnel_checker::check(&history, &Options::default());
    let mut summary = Summary { faults: log.injected.clone(), dropped_bytes: cluster.dropped_bytes(), final_reads_complete, ..Summary::default() };
    for op in history.ops() {
        if op.kind == OpType::Invoke {
            summary.processes = summary.processes.max(op.process + 1);
            continue;
        }
        match (op.f, op.kind) {
            (F::Send, OpType::Ok) => summary.sends_ok += 1,
            (F::Send, OpType::Info) => summary.sends_info += 1,
            (F::Send, OpType::Fail) => summary.sends_fail += 1,
            (F::Poll, _) => {
                summary.polls += 1;
                for mop in op.value.mops() {
                    if let Mop::Poll { reads } = mop {
                        summary.records_read += reads.values().map(Vec::len).sum::<usize>();
                    }
                }
            }
            _ => {}
        }
    }

    let mut file = std::io::BufWriter::new(std::fs::File::create(o.dir.join("history.jsonl"))?);
    for op in history.ops() {
        serde_json::to_writer(&mut file, op)?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    std::fs::write(o.dir.join("report.txt"), format!("{report}\n{summary}\n"))?;
    std::fs::write(o.dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    let events: Vec<String> = log.events.iter().map(|(t, e)| format!("{t:8.2}s {e}")).collect();
    std::fs::write(o.dir.join("nemesis.log"), events.join("\n") + "\n")?;
    drop(cluster);
    Ok(Outcome { report, summary, dir: o.dir.clone() })
}
