//! The suite must be able to fail: against a planted-bugs build of `runnel` whose brokers serve
//! Fetch above the high watermark (`RUNNEL_PLANTED_BUGS=fetch-above-high-watermark`), leader
//! kills make consumers read records that are then truncated and written again elsewhere, and
//! the checker has to say so.
//!
//! Ignored by default: it needs that binary, which `.ci/run` builds and passes in
//! `RUNNEL_JEPSEN_PLANTED_BINARY` before running this test with `--ignored`.

use runnel_jepsen::nemesis::Fault;
use runnel_jepsen::{run, RunOptions};
use std::path::PathBuf;
use std::time::Duration;

#[test]
#[ignore = "needs a planted-bugs runnel binary in RUNNEL_JEPSEN_PLANTED_BINARY (see .ci/run)"]
fn jepsen_catches_reads_above_the_high_watermark() {
    let binary = PathBuf::from(std::env::var("RUNNEL_JEPSEN_PLANTED_BINARY").expect("RUNNEL_JEPSEN_PLANTED_BINARY names a planted-bugs runnel binary"));
    // The nodes inherit the environment.
    std::env::set_var("RUNNEL_PLANTED_BUGS", "fetch-above-high-watermark");
    let dir = std::env::temp_dir().join(format!("runnel-jepsen-planted-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut o = RunOptions::new(binary, dir.clone());
    o.time_limit = Duration::from_secs(30);
    o.faults = vec![Fault::Partition, Fault::Kill];
    o.fault_interval = Duration::from_secs(3);
    let outcome = run(&o).expect("the run itself works");
    eprintln!("{}\n{}", outcome.summary, outcome.report);
    let log = std::fs::read_to_string(dir.join("node-1.log")).unwrap_or_default();
    assert!(log.contains("planted bugs active"), "the nodes did not activate the planted bug");
    assert!(!outcome.report.valid, "the checker passed a history from brokers that serve uncommitted reads: {}", outcome.summary);
    let _ = std::fs::remove_dir_all(&dir);
}
