//! Swarm testing: each seed turns on a random subset of the fault kinds, each at a random rate,
//! so that over many seeds every combination — including "almost no faults", where subtle bugs
//! hide behind noisy ones — gets explored.

use crate::disk::DiskFaults;
use crate::net::NetFaults;
use runnel_actors::core::Rng;
use std::collections::BTreeMap;

/// Every fault kind the simulator injects, with a one-line description.
pub const FAULT_KINDS: &[(&str, &str)] = &[
    ("net-latency", "packet latency spikes of 5-55 ms"),
    ("conn-reset", "client connections reset"),
    ("partition", "client<->node links clogged both ways, healed later"),
    ("partition-one-way", "one direction of a link clogged"),
    ("swizzle-clog", "links clogged one at a time, healed in random order"),
    ("net-loss", "datagrams between nodes lost"),
    ("net-duplicate", "datagrams between nodes duplicated"),
    ("net-reorder", "datagrams between nodes reordered"),
    ("crash", "a node loses power: unsynced writes lost, restarted later"),
    ("pause", "a node stops processing for a while"),
    ("clock-jump", "a node's wall clock jumps forward or back"),
    ("clock-drift", "node clocks run fast or slow"),
    ("torn-write", "crashes tear the last unsynced write"),
    ("misdirected-write", "crashes misplace an unsynced write"),
    ("latent-read", "reads return a corrupted byte (transiently)"),
    ("fsync-eio", "fsync fails; the broker exits and restarts"),
    ("enospc", "writes fail with ENOSPC; the broker exits and restarts"),
    ("disk-latency", "disk operations 100x slower"),
    ("buggify", "actors take rare paths at buggify! points"),
];

/// The faults of one run and their rates.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Enabled kinds with their rate: events per simulated second for discrete faults,
    /// probability per operation for per-operation faults.
    pub enabled: BTreeMap<&'static str, f64>,
}

fn base_rate(kind: &str) -> f64 {
    match kind {
        "conn-reset" => 0.3,
        "partition" | "partition-one-way" | "pause" | "clock-jump" => 0.15,
        "crash" => 0.1,
        "swizzle-clog" => 0.05,
        "net-latency" | "latent-read" | "disk-latency" => 0.01,
        "net-loss" | "net-duplicate" => 0.02,
        "net-reorder" => 0.05,
        "fsync-eio" => 0.002,
        "enospc" => 0.0005,
        "clock-drift" => 1.0,
        "torn-write" | "misdirected-write" | "buggify" => 1.0,
        _ => 0.0,
    }
}

impl FaultPlan {
    /// The swarm choice for a seed: each kind on with probability 1/2, its rate scaled by 0.25-4x.
    pub fn swarm(rng: &mut Rng) -> FaultPlan {
        let mut enabled = BTreeMap::new();
        for (kind, _) in FAULT_KINDS {
            if rng.below(2) == 0 {
                let scale = 0.25 * (1u64 << rng.below(5)) as f64;
                enabled.insert(*kind, base_rate(kind) * scale);
            }
        }
        FaultPlan { enabled }
    }

    /// Exactly the named kinds at their base rates.
    pub fn from_list(kinds: &[String]) -> Result<FaultPlan, String> {
        let mut enabled = BTreeMap::new();
        for k in kinds {
            let (name, _) = FAULT_KINDS.iter().find(|(n, _)| n == k).ok_or_else(|| format!("unknown fault kind {k} (see `runnel sim run --help`)"))?;
            enabled.insert(*name, base_rate(name));
        }
        Ok(FaultPlan { enabled })
    }

    /// The rate of `kind`, 0 if off.
    pub fn rate(&self, kind: &str) -> f64 {
        self.enabled.get(kind).copied().unwrap_or(0.0)
    }

    /// Whether `kind` is on.
    pub fn has(&self, kind: &str) -> bool {
        self.enabled.contains_key(kind)
    }

    /// The disk faults this plan calls for.
    pub fn disk(&self) -> DiskFaults {
        DiskFaults {
            torn_write: self.has("torn-write"),
            misdirected_write: self.has("misdirected-write"),
            latent_read: self.rate("latent-read"),
            fsync_eio: self.rate("fsync-eio"),
            enospc: self.rate("enospc"),
            latency_spike: self.rate("disk-latency"),
        }
    }

    /// The network faults this plan calls for.
    pub fn net(&self) -> NetFaults {
        NetFaults {
            latency_spike: self.rate("net-latency"),
            loss: self.rate("net-loss"),
            duplicate: self.rate("net-duplicate"),
            reorder: self.rate("net-reorder"),
        }
    }

    /// Names of the enabled kinds, comma-separated.
    pub fn describe(&self) -> String {
        if self.enabled.is_empty() {
            return "none".into();
        }
        self.enabled.keys().copied().collect::<Vec<_>>().join(",")
    }
}
