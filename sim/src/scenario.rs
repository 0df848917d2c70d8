//! Scenarios: the cluster shape, the workload and the timeline of a run. A run is
//! `(seed, scenario)`; the seed picks faults, latencies and the workload's choices.

/// One scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name used on the command line.
    pub name: &'static str,
    /// What it exercises.
    pub description: &'static str,
    /// Cluster nodes.
    pub nodes: usize,
    /// Producer clients.
    pub producers: usize,
    /// Consumer clients.
    pub consumers: usize,
    /// Partitions of the workload topic.
    pub partitions: i32,
    /// Milliseconds between sends of one producer.
    pub send_interval_ms: u64,
    /// Faults are injected until this virtual time; then everything heals and sends stop.
    pub faults_until_ms: u64,
    /// By this virtual time every acknowledged record must have been read (liveness).
    pub deadline_ms: u64,
    /// Broker settings (`server.properties` keys).
    pub broker_settings: &'static [(&'static str, &'static str)],
}

/// Every scenario.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "single-node",
        description: "one broker, 2 idempotent acks=all producers, 2 consumers, 3 partitions",
        nodes: 1,
        producers: 2,
        consumers: 2,
        partitions: 3,
        send_interval_ms: 40,
        faults_until_ms: 40_000,
        deadline_ms: 60_000,
        broker_settings: &[],
    },
    Scenario {
        name: "small-segments",
        description: "one broker with 4 KiB segments and dense indexes: rolls, index lookups and recovery across many segments",
        nodes: 1,
        producers: 2,
        consumers: 1,
        partitions: 2,
        send_interval_ms: 10,
        faults_until_ms: 40_000,
        deadline_ms: 60_000,
        broker_settings: &[("log.segment.bytes", "4096"), ("log.index.interval.bytes", "128")],
    },
    Scenario {
        name: "many-clients",
        description: "one broker, 6 producers and 4 consumers on 6 partitions",
        nodes: 1,
        producers: 6,
        consumers: 4,
        partitions: 6,
        send_interval_ms: 60,
        faults_until_ms: 40_000,
        deadline_ms: 60_000,
        broker_settings: &[],
    },
];

/// Look a scenario up by name.
pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
