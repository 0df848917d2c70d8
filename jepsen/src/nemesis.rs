//! The nemesis: one fault at a time against the running cluster, each held for a while and then
//! healed, chosen with the run's seeded generator among the kinds the run enables.
//!
//! The kinds are dealt from a shuffled deck: every enabled kind comes up once before any kind
//! comes up again.
//!
//! - `kill`: SIGKILL a node (nothing flushed, unsynced writes lost), then restart it over the
//!   same data directory and wait until it serves again. While it is down the links to it do
//!   not listen, so its peers get refused connects, as they would dialing it directly.
//! - `pause`: SIGSTOP a node and SIGCONT it later: a frozen process whose connections stay open,
//!   the fault that catches leases and timeouts trusted too far.
//! - `partition`: cut the node-to-node links between two sides, silently (see [`crate::proxy`]):
//!   one node isolated from the rest, or (with 5 nodes) a random minority from the majority.
//!   Clients still reach every node, so an isolated leader keeps receiving produce requests.
//!
//! Every fault is logged with its time since the start of the run, in the run's `nemesis.log`.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, START_DEADLINE};
use crate::rng::Rng;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL a node and restart it.
    Kill,
    /// SIGSTOP a node and SIGCONT it.
    Pause,
    /// Cut the links between two sides of the cluster.
    Partition,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 3] = [Fault::Kill, Fault::Pause, Fault::Partition];
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
        })
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL.into_iter().find(|f| f.to_string() == s).ok_or_else(|| format!("unknown fault {s:?} (kill, pause, partition)"))
    }
}

/// What the nemesis did: one line per fault and heal.
#[derive(Clone, Debug, Default)]
pub struct NemesisLog {
    /// `(seconds since start, what happened)`.
    pub events: Vec<(f64, String)>,
    /// How many faults of each kind were injected.
    pub injected: Vec<(Fault, usize)>,
}

impl NemesisLog {
    fn event(&mut self, start: Instant, what: String) {
        eprintln!("[{:7.2}s] nemesis: {what}", start.elapsed().as_secs_f64());
        self.events.push((start.elapsed().as_secs_f64(), what));
    }

    fn count(&mut self, fault: Fault) {
        match self.injected.iter_mut().find(|(f, _)| *f == fault) {
            Some((_, n)) => *n += 1,
            None => self.injected.push((fault, 1)),
        }
    }
}

/// Wait `d`, or less if `stop` is set meanwhile; true if the whole time passed.
fn wait(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
    true
}

/// Inject faults from `kinds` until `stop`: a calm `interval`, then a fault held for
/// `interval`, then its heal. Returns with every fault healed.
pub fn run(cluster: &Mutex<Cluster>, kinds: &[Fault], interval: Duration, mut rng: Rng, stop: &Arc<AtomicBool>, start: Instant) -> NemesisLog {
    let mut log = NemesisLog::default();
    if kinds.is_empty() {
        return log;
    }
    let mut deck: Vec<Fault> = Vec::new();
    loop {
        if !wait(interval, stop) {
            return log;
        }
        // Kinds are dealt from a shuffled deck, so every enabled kind comes up once before any
        // comes up twice.
        if deck.is_empty() {
            deck = kinds.to_vec();
            for i in (1..deck.len()).rev() {
                deck.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let fault = deck.pop().expect("dealt");
        let n = cluster.lock().expect("cluster lock").nodes.len();
        let victim = rng.below(n as u64) as usize;
        log.count(fault);
        match fault {
            Fault::Kill => {
                let mut c = cluster.lock().expect("cluster lock");
                c.nodes[victim].kill();
                c.set_node_down(victim as i32 + 1, true);
                log.event(start, format!("kill node {}", victim + 1));
            }
            Fault::Pause => {
                let mut c = cluster.lock().expect("cluster lock");
                c.nodes[victim].pause();
                log.event(start, format!("pause node {}", victim + 1));
            }
            Fault::Partition => {
                let c = cluster.lock().expect("cluster lock");
                let mut ids: Vec<i32> = (1..=n as i32).collect();
                // A random minority: one node, or up to half of a larger cluster.
                for i in (1..ids.len()).rev() {
                    ids.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let minority = 1 + rng.below(((n - 1) / 2) as u64) as usize;
                let (a, b) = ids.split_at(minority);
                c.partition(a, b);
                log.event(start, format!("partition {a:?} from {b:?}"));
            }
        }
        // Hold the fault; the heal happens even when the run is stopping.
        let _ = wait(interval, stop);
        heal(cluster, &mut log, start);
    }
}

/// Heal everything: links, paused and killed nodes (restarted and waited for).
pub fn heal(cluster: &Mutex<Cluster>, log: &mut NemesisLog, start: Instant) {
    let mut c = cluster.lock().expect("cluster lock");
    c.heal_links();
    for node in c.nodes.iter_mut() {
        node.resume();
    }
    for i in 0..c.nodes.len() {
        if !c.nodes[i].is_running() {
            let id = c.nodes[i].id;
            // Its peers reach it again as soon as it listens: it registers through them.
            c.set_node_down(id, false);
            match c.nodes[i].start(Instant::now() + START_DEADLINE) {
                Ok(()) => log.event(start, format!("node {id} restarted and serving")),
                Err(e) => log.event(start, format!("node {id} failed to restart: {e:#}")),
            }
        }
    }
    log.event(start, "healed".into());
}
