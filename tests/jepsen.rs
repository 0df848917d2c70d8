//! The Jepsen-style suite (`jepsen/`, crate `runnel-jepsen`) against this build's `runnel`
//! binary: a 3-node cluster of real processes, an idempotent acks=all librdkafka workload, and a
//! nemesis dealing SIGKILLs, SIGSTOPs and silent network partitions (through per-link proxies);
//! the recorded history must pass the Jepsen Kafka checker. `runnel-jepsen --help` runs longer
//! and larger tests by hand.

mod common;

use runnel_jepsen::nemesis::Fault;
use runnel_jepsen::{run, RunOptions};
use std::time::Duration;

/// Every kind of fault, and the history is valid: no acknowledged record lost, none duplicated
/// or seen at two offsets, no consumer skipping or rewinding, every acknowledged record read.
#[test]
fn jepsen_kill_pause_partition_history_is_valid() {
    let dir = tempfile::Builder::new().prefix("runnel-jepsen-").tempdir().expect("run dir");
    let mut o = RunOptions::new(common::runnel_binary(), dir.path().to_path_buf());
    o.time_limit = Duration::from_secs(30);
    o.fault_interval = Duration::from_secs(3);
    o.seed = 7;
    let outcome = run(&o).expect("the run itself works");
    eprintln!("{}\n{}", outcome.summary, outcome.report);
    let s = &outcome.summary;
    for kind in Fault::ALL {
        assert!(s.faults.iter().any(|(k, n)| *k == kind && *n > 0), "no {kind} fault was injected: {s}");
    }
    assert!(s.dropped_bytes > 0, "a partition dropped nothing: {s}");
    assert!(s.sends_ok > 200 && s.polls > 200 && s.records_read > 200, "too little happened to check: {s}");
    assert!(s.final_reads_complete, "the final reads did not get to every acknowledged record: {s}");
    // A killed node's links refuse connections, as the node would: it was fenced on that.
    let logs: String = (1..=o.nodes).map(|n| std::fs::read_to_string(dir.path().join(format!("node-{n}.log"))).unwrap_or_default()).collect();
    assert!(logs.contains("its node-to-node address refuses connections"), "no killed node was fenced on a refused connect");
    if !outcome.report.valid {
        // Keep the evidence: the history, the report and every node's log.
        let kept = dir.keep();
        panic!("invalid history (files kept in {}):\n{}", kept.display(), outcome.report);
    }
}
