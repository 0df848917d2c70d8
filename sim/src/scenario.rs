//! Scenarios: the cluster shape, the workload and the timeline of a run. A run is
//! `(seed, scenario)`; the seed picks faults, latencies and the workload's choices.

/// One scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name used on the command line.
    pub name: &'static str,
    /// What it exercises.
    pub description: &'static str,
    /// Nodes that run a broker (and serve the clients).
    pub nodes: usize,
    /// Controller-only nodes (`process.roles=controller`), node ids 1..=this, the quorum's
    /// voters; the `nodes` brokers are then broker-only nodes after them. With 0, the first
    /// min(3, `nodes`) nodes are combined broker+controller voters and the others broker-only.
    pub controller_only: usize,
    /// Producer clients.
    pub producers: usize,
    /// Consumer clients (assign every partition, read from the start).
    pub consumers: usize,
    /// Group consumers: members of one consumer group sharing the topic, reading from committed
    /// offsets; they crash (with node crashes on) and leave and rejoin now and then.
    pub group_consumers: usize,
    /// The group consumers use the KIP-848 consumer protocol instead of the classic one.
    pub consumer_protocol: bool,
    /// Partitions of the workload topic.
    pub partitions: i32,
    /// Replication factor of the workload topic.
    pub replication_factor: i16,
    /// Milliseconds between sends of one producer.
    pub send_interval_ms: u64,
    /// Faults are injected until this virtual time; then everything heals and sends stop.
    pub faults_until_ms: u64,
    /// By this virtual time every acknowledged record must have been read (liveness).
    pub deadline_ms: u64,
    /// Broker settings (`server.properties` keys).
    pub broker_settings: &'static [(&'static str, &'static str)],
    /// Broker nodes lost for good when the faults heal: chosen by the seed, they crash (or stay
    /// down) and never restart, and the workload must still complete on the others.
    pub lost_at_heal: usize,
    /// Milliseconds between partition reassignments of the workload topic while the faults run
    /// (an administrator's AlterPartitionReassignments to seeded replica sets); 0: none.
    pub reassign_every_ms: u64,
    /// Milliseconds between DeleteRecords of a seeded partition of the workload topic while the
    /// faults run (an administrator deleting a little past the last low watermark); 0: none.
    pub delete_records_every_ms: u64,
    /// Milliseconds between DescribeQuorum requests of an administrator watching the metadata
    /// quorum while the faults run (its answers are checked); 0: none.
    pub describe_quorum_every_ms: u64,
    /// Milliseconds between ListOffsets-by-timestamp searches of an administrator while the
    /// faults run (answers checked against the final log); 0: none.
    pub list_offsets_every_ms: u64,
}

/// Three combined broker+controller nodes, RF=3, min.insync.replicas=2: what the cluster
/// scenarios share unless they say otherwise.
const CLUSTER_3: Scenario = Scenario {
    name: "cluster-3",
    description: "three combined broker+controller nodes, RF=3 and min.insync.replicas=2, 2 idempotent acks=all producers, 2 consumers, 3 partitions",
    nodes: 3,
    controller_only: 0,
    producers: 2,
    consumers: 2,
    group_consumers: 0,
    consumer_protocol: false,
    partitions: 3,
    replication_factor: 3,
    send_interval_ms: 40,
    faults_until_ms: 40_000,
    deadline_ms: 70_000,
    // Time-based metadata snapshots (Kafka's default is an hour): a few per run, between the
    // size-based ones the snapshot scenarios take.
    broker_settings: &[("min.insync.replicas", "2"), ("metadata.log.max.snapshot.interval.ms", "8000")],
    lost_at_heal: 0,
    reassign_every_ms: 0,
    delete_records_every_ms: 0,
    describe_quorum_every_ms: 0,
    list_offsets_every_ms: 0,
};

/// Broker settings of the snapshot scenarios: a metadata snapshot every 256 bytes.
const SNAPSHOT_SETTINGS: &[(&str, &str)] = &[("min.insync.replicas", "2"), ("metadata.log.max.record.bytes.between.snapshots", "256")];

/// Every scenario.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "single-node",
        description: "one broker, 2 idempotent acks=all producers, 2 consumers, 3 partitions",
        nodes: 1,
        controller_only: 0,
        producers: 2,
        consumers: 2,
        group_consumers: 0,
        consumer_protocol: false,
        partitions: 3,
        replication_factor: 1,
        send_interval_ms: 40,
        faults_until_ms: 40_000,
        deadline_ms: 60_000,
        broker_settings: &[],
        lost_at_heal: 0,
        reassign_every_ms: 0,
        delete_records_every_ms: 0,
    describe_quorum_every_ms: 0,
    list_offsets_every_ms: 0,
    },
    Scenario {
        name: "small-segments",
        description: "one broker with 4 KiB segments and dense indexes: rolls, index lookups and recovery across many segments, and an administrator asking for the offset of a timestamp every 400 ms (ListOffsets through the time index)",
        nodes: 1,
        controller_only: 0,
        producers: 2,
        consumers: 1,
        group_consumers: 0,
        consumer_protocol: false,
        partitions: 2,
        replication_factor: 1,
        send_interval_ms: 10,
        faults_until_ms: 40_000,
        deadline_ms: 60_000,
        broker_settings: &[("log.segment.bytes", "4096"), ("log.index.interval.bytes", "128")],
        lost_at_heal: 0,
        reassign_every_ms: 0,
        delete_records_every_ms: 0,
    describe_quorum_every_ms: 0,
    list_offsets_every_ms: 400,
    },
    Scenario {
        name: "many-clients",
        description: "one broker, 6 producers and 4 consumers on 6 partitions",
        nodes: 1,
        controller_only: 0,
        producers: 6,
        consumers: 4,
        group_consumers: 0,
        consumer_protocol: false,
        partitions: 6,
        replication_factor: 1,
        send_interval_ms: 60,
        faults_until_ms: 40_000,
        deadline_ms: 60_000,
        broker_settings: &[],
        lost_at_heal: 0,
        reassign_every_ms: 0,
        delete_records_every_ms: 0,
    describe_quorum_every_ms: 0,
    list_offsets_every_ms: 0,
    },
    CLUSTER_3,
    Scenario {
        name: "cluster-5",
        description: "five nodes (three of them controller voters), RF=3, min.insync.replicas=2, 3 producers, 2 consumers, 5 partitions",
        nodes: 5,
        producers: 3,
        partitions: 5,
        send_interval_ms: 50,
        ..CLUSTER_3
    },
    Scenario {
        name: "cluster-5-reassign",
        description: "cluster-5, and an administrator moving a partition to a seeded set of three brokers every 3 s while the faults run (AlterPartitionReassignments)",
        nodes: 5,
        producers: 3,
        partitions: 5,
        send_interval_ms: 50,
        reassign_every_ms: 3_000,
        delete_records_every_ms: 0,
    describe_quorum_every_ms: 0,
        ..CLUSTER_3
    },
    Scenario {
        name: "cluster-split",
        description: "separate roles: three controller-only voters and three broker-only nodes (whose node-to-node address may change on restart), RF=3, min.insync.replicas=2, 2 producers, 2 consumers, 3 partitions, an administrator describing the metadata quorum every 700 ms",
        controller_only: 3,
        describe_quorum_every_ms: 700,
        ..CLUSTER_3
    },
    Scenario {
        name: "cluster-split-snapshots",
        description: "cluster-split with a metadata snapshot every 256 bytes of committed records: controller-only voters snapshot, compact and install snapshots, and must still reach broker-only nodes registered before a snapshot",
        controller_only: 3,
        broker_settings: SNAPSHOT_SETTINGS,
        ..CLUSTER_3
    },
    Scenario {
        name: "groups-single",
        description: "one broker, 2 producers and 3 group consumers (one consumer group over 6 partitions) that crash, leave and rejoin; the coordinator's node crashes too",
        nodes: 1,
        controller_only: 0,
        producers: 2,
        consumers: 0,
        group_consumers: 3,
        consumer_protocol: false,
        partitions: 6,
        replication_factor: 1,
        send_interval_ms: 40,
        faults_until_ms: 40_000,
        deadline_ms: 70_000,
        broker_settings: &[],
        lost_at_heal: 0,
        reassign_every_ms: 0,
        delete_records_every_ms: 0,
    describe_quorum_every_ms: 0,
    list_offsets_every_ms: 0,
    },
    Scenario {
        name: "groups-3",
        description: "cluster-3 with 3 group consumers in one group over 6 partitions: group coordinators fail over with the leadership of their __consumer_offsets partitions (RF=3)",
        consumers: 1,
        group_consumers: 3,
        partitions: 6,
        ..CLUSTER_3
    },
    Scenario {
        name: "groups-848",
        description: "cluster-3 with 3 KIP-848 group consumers (ConsumerGroupHeartbeat, server-side uniform assignor) over 6 partitions: revocation before assignment, member epochs, coordinator failover",
        consumers: 1,
        group_consumers: 3,
        consumer_protocol: true,
        partitions: 6,
        ..CLUSTER_3
    },
    Scenario {
        name: "cluster-3-node-lost",
        description: "cluster-3 whose faults end with one node lost for good: the other two must elect a controller, fence it, move its leaderships and finish the workload without it",
        lost_at_heal: 1,
        reassign_every_ms: 0,
        delete_records_every_ms: 0,
    describe_quorum_every_ms: 0,
        ..CLUSTER_3
    },
    Scenario {
        name: "groups-3-node-lost",
        description: "groups-3 whose faults end with one node lost for good: group coordinators move to the survivors for good and the group finishes reading there",
        consumers: 1,
        group_consumers: 3,
        partitions: 6,
        lost_at_heal: 1,
        reassign_every_ms: 0,
        delete_records_every_ms: 0,
    describe_quorum_every_ms: 0,
        ..CLUSTER_3
    },
    Scenario {
        name: "cluster-3-delete-records",
        description: "cluster-3 with 4 KiB segments, retention by size, and an administrator deleting records (DeleteRecords) of a seeded partition every 1.5 s while the faults run: deleted records stay deleted across failovers and crashes, consumers move past them; another asks leaders for the offset of a timestamp every 700 ms",
        delete_records_every_ms: 1_500,
        list_offsets_every_ms: 700,
        broker_settings: &[
            ("min.insync.replicas", "2"),
            ("log.segment.bytes", "4096"),
            ("log.retention.bytes", "24576"),
            ("log.retention.check.interval.ms", "2000"),
        ],
        ..CLUSTER_3
    },
    Scenario {
        name: "cluster-3-snapshots",
        description: "cluster-3 with a metadata snapshot every 256 bytes of committed records: checkpoints, log compaction and InstallSnapshot under crashes, partitions and disk faults",
        broker_settings: SNAPSHOT_SETTINGS,
        ..CLUSTER_3
    },
];

/// Look a scenario up by name.
pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
