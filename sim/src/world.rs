//! The discrete-event world: nodes running the broker actor, clients running producer and
//! consumer actors, one seeded RNG, one event queue in virtual time, and a trace hash over every
//! event so a run is identified by `(seed, scenario, faults, bugs)` and replays exactly.
//!
//! Everything happens on one thread. An event is taken from the queue (ordered by time, then by
//! the order it was scheduled), delivered to its actor, and the actor's effects are turned into
//! new events: replies travel the network, disk operations complete after their latency, timers
//! fire. Faults are events too.
//!
//! Nodes have the roles of their scenario: combined broker+controller voters, broker-only nodes
//! and controller-only voters. Like the real node transport, a node reaches a voter at its
//! configured address and any other node only at an address its process learned from a broker
//! registration (`Effect::PeerAddress`); a broker-only node may come back from a restart at a new
//! address, and messages sent to an address nobody listens on any more are lost.

use crate::disk::{Issued, SimDisk};
use crate::faults::FaultPlan;
use crate::net::{Endpoint, Network};
use crate::scenario::Scenario;
use bytes::Bytes;
use runnel_actors::broker::config::{broker_key_to_topic, BrokerConfig};
use runnel_actors::broker::{Broker, BrokerMsg};
use runnel_actors::client::consumer::{Consumer, ConsumerConfig};
use runnel_actors::client::group_consumer::{GroupConsumer, GroupConsumerConfig};
use runnel_actors::client::producer::{Producer, ProducerConfig};
use runnel_actors::client::{ClientEvent, ClientMsg};
use runnel_actors::controller::rpc::{BROKER_ACTOR, CONTROLLER_ACTOR};
use runnel_actors::controller::{Controller, ControllerConfig};
use runnel_actors::core::{peer_address_replaces, Actor, Addr, ConnId, Cx, Effect, IoDone, Rng, TimerId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

/// Wall-clock origin of every run (virtual time 0), so timestamps look real.
pub const EPOCH_MS: i64 = 1_767_225_600_000;
const TOPIC: &str = "sim";
/// The group the group consumers share.
const GROUP: &str = "sim-group";

thread_local! {
    /// The simulated time of the event this thread's world is handling (for log timestamps).
    static SIM_NOW_US: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The simulated time, in µs, of the event the current thread's simulation is handling.
pub fn sim_now_us() -> u64 {
    SIM_NOW_US.with(|t| t.get())
}

/// A problem found during a run.
#[derive(Clone, Debug, PartialEq, Eq)]

pub struct Violation {
    /// Virtual ms when it was found.
    pub time_ms: u64,
    /// Which checker found it.
    pub checker: String,
    /// What.
    pub what: String,
}

/// FNV-1a over u64 words: the run's identity.
#[derive(Clone, Copy, Debug)]
pub struct Trace {
    hash: u64,
    /// Events hashed.
    pub events: u64,
}

impl Trace {
    fn new() -> Self {
        Trace { hash: 0xcbf2_9ce4_8422_2325, events: 0 }
    }
    fn add(&mut self, words: &[u64]) {
        for w in words {
            for b in w.to_le_bytes() {
                self.hash ^= b as u64;
                self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    /// Eight bytes at a time: frames are hashed whole, so this must be cheap.
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.hash = (self.hash ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
        }
        for x in chunks.remainder() {
            self.hash = (self.hash ^ *x as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    /// The hash so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

#[derive(Debug)]
enum Ev {
    NodeRequest { conn: u64, frame: Bytes },
    NodeDisconnected { node: usize, incarnation: u64, conn: u64 },
    NodeTimer { node: usize, incarnation: u64, actor: u32, id: TimerId, generation: u64 },
    NodeMessage { node: usize, incarnation: u64, actor: u32, from: Addr, msg: BrokerMsg },
    NodeIo { node: usize, incarnation: u64, actor: u32, done: IoDone },
    NodeFsync { node: usize, incarnation: u64, actor: u32, token: runnel_actors::core::IoToken, ticket: crate::disk::FsyncTicket },
    ClientResponse { conn: u64, frame: Bytes },
    ClientDisconnected { client: usize, node: usize, conn: u64 },
    ClientTimer { client: usize, id: TimerId, generation: u64 },
    ClientRestart(usize),
    Fault(Fault),
    Restart(usize),
    // Node `from`'s transport dials node `to` again (it holds messages for it).
    Redial { from: usize, incarnation: u64, to: usize },
    Heal,
    Check,
}

/// A fault action.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Power loss of a node.
    Crash(usize),
    /// Stop processing on a node for `ms`.
    Pause(usize, u64),
    /// Reset a client's connections.
    ResetClient(usize),
    /// A group consumer process dies (no LeaveGroup) and a new one starts later.
    CrashClient(usize),
    /// Clog `from -> to`; reset streams if `reset`.
    Clog(Endpoint, Endpoint),
    /// Heal `from -> to`.
    Unclog(Endpoint, Endpoint),
    /// Shift a node's wall clock.
    ClockJump(usize, i64),
    /// Note that a compound fault (swizzle-clog) begins.
    Begins(&'static str),
}

struct Node {
    /// `None` on a controller-only node.
    config: Option<BrokerConfig>,
    controller_config: Option<ControllerConfig>,
    /// Where the node listens for node-to-node traffic now.
    endpoint: String,
    /// Restarts that moved a broker-only node to a new address.
    moves: u32,
    /// Node-to-node addresses this node's process learned: node → (registration epoch, address).
    learned: BTreeMap<i32, (i64, String)>,
    addr: Addr,
    broker: Option<Broker>,
    controller: Option<Controller>,
    cx: Cx<BrokerMsg>,
    ccx: Cx<BrokerMsg>,
    disk: SimDisk,
    incarnation: u64,
    timers: BTreeMap<(u32, TimerId), u64>,
    timer_generation: u64,
    paused_until_us: u64,
    disk_busy_us: u64,
    fsync_busy_us: u64,
    wall_offset_ms: i64,
    drift_ppm: i64,
    was_ready: bool,
    restart_pending: bool,
    /// Lost for good when the faults healed (`Scenario::lost_at_heal`): never restarts.
    lost: bool,
    /// Metadata history offsets up to this were compared against `committed_meta`.
    meta_checked: u64,
    /// The controller's image was compared against `committed_images` up to this offset.
    image_checked: u64,
}

impl Node {
    /// Whether the node's process runs (it is not crashed or waiting for a restart).
    fn is_up(&self) -> bool {
        self.broker.is_some() || self.controller.is_some()
    }
}

enum ClientActor {
    Producer(Producer),
    Consumer(Consumer),
    Group(Box<GroupConsumer>),
    Scripted(crate::conformance::Scripted),
    Reassigner(crate::admin::Reassigner),
    Deleter(crate::admin::RecordDeleter),
    Quorum(crate::admin::QuorumWatcher),
    Probe(crate::admin::TimestampProbe),
}

struct Client {
    actor: ClientActor,
    cx: Cx<ClientMsg>,
    timers: BTreeMap<TimerId, u64>,
    timer_generation: u64,
    /// Open connection to each node.
    conns: BTreeMap<usize, u64>,
}

struct Conn {
    client: usize,
    node: usize,
    node_incarnation: u64,
    alive: bool,
    next_request_seq: u64,
    to_node_at_us: u64,
    to_client_at_us: u64,
    replies: BTreeMap<u64, Option<Bytes>>,
    next_reply_seq: u64,
    held_to_node: VecDeque<Bytes>,
    held_to_client: VecDeque<Bytes>,
}

/// Everything a finished run reports.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Trace hash.
    pub trace_hash: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time at the end, ms.
    pub sim_time_ms: u64,
    /// Problems found.
    pub violations: Vec<Violation>,
    /// How often each fault kind fired.
    pub faults_fired: BTreeMap<String, u64>,
    /// The client history, in order.
    pub history: Vec<ClientEvent>,
    /// Timeline of faults: (virtual ms, description).
    pub fault_log: Vec<(u64, String)>,
    /// Produce latencies: (virtual ms at ack, latency ms).
    pub produce_latencies: Vec<(u64, u64)>,
    /// Whether the workload completed (everything acknowledged was read) before the deadline.
    pub completed: bool,
    /// Protocol paths the run exercised, with counts (metadata snapshots taken, installed from
    /// the leader, loaded at start), so a swarm can show that faults reached them.
    pub protocol: BTreeMap<String, u64>,
    /// Per workload partition, the offset below which records were deleted by the end
    /// (DeleteRecords, retention): the history checker does not ask for them to be read.
    pub deleted_below: BTreeMap<u64, i64>,
}

/// Bounds of the wait between two refused-connect reports from one node about another: the
/// real transport's `reconnect_backoff_min_ms` and `reconnect_backoff_max_ms` defaults.
const REFUSAL_BACKOFF_MIN_US: u64 = 50_000;
const REFUSAL_BACKOFF_MAX_US: u64 = 1_000_000;

/// The real transport's redial backoff after `failures` (≥ 1) refused connects: exponential
/// between the bounds, jittered into its upper half.
fn refusal_backoff_us(failures: u32, rng: &mut Rng) -> u64 {
    let exp = REFUSAL_BACKOFF_MIN_US.saturating_mul(1 << failures.saturating_sub(1).min(20)).min(REFUSAL_BACKOFF_MAX_US);
    exp - exp / 2 + rng.below(exp / 2 + 1)
}

/// The simulated world of one run.
pub struct World {
    now_us: u64,
    rng: Rng,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    pending: BTreeMap<u64, Ev>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    net: Network,
    plan: FaultPlan,
    scenario: Scenario,
    trace: Trace,
    violations: Vec<Violation>,
    history: Vec<ClientEvent>,
    acked: BTreeMap<u64, i64>,
    invoked_at: BTreeMap<u64, u64>,
    faults_fired: BTreeMap<String, u64>,
    /// Refused connects of node `i` to node `j`, `(i, j)` -> how many in a row. As in the real
    /// transport, a message to a crashed node waits for the next dial, redials come after a
    /// backoff that grows with every refusal and go on while the node is down (the messages
    /// are never dropped), and each refused dial is reported. An entry means redials are
    /// scheduled; a restart of either node ends them.
    refusals: BTreeMap<(usize, usize), u32>,
    fault_log: Vec<(u64, String)>,
    produce_latencies: Vec<(u64, u64)>,
    /// `RUNNEL_SIM_WATCH_KEY`: print every client event touching this key (debugging).
    watch_key: Option<u64>,
    healed: bool,
    /// The scenario's `lost_at_heal` nodes were lost.
    lost_done: bool,
    completed: bool,
    /// (topic, partition, leader epoch) -> the node that led it.
    epoch_leaders: BTreeMap<(String, i32, i32), i32>,
    /// Raft term -> its leader.
    term_leaders: BTreeMap<u64, i32>,
    /// Committed metadata batches by offset (a digest), as first seen on any voter.
    committed_meta: BTreeMap<u64, u64>,
    /// Voters' metadata images by offset (a digest, and the node it was first seen on).
    committed_images: BTreeMap<u64, (u64, i32)>,
    protocol: BTreeMap<String, u64>,
    /// The quorum voters: every node knows their addresses from its configuration.
    voters: Vec<i32>,
    /// Nodes 0..this are controller-only; the brokers follow.
    controller_only: usize,
    /// (group, generation) -> key -> the member it was assigned to.
    group_owners: BTreeMap<(String, i32), BTreeMap<u64, String>>,
    /// The highest high watermark seen per workload partition.
    hw_high: BTreeMap<u64, i64>,
    /// (node, group, topic, partition) -> (shard tenure, committed offset) as that node's
    /// coordinator last showed it.
    coord_seen: BTreeMap<(usize, String, String, i32), (u64, i64)>,
    /// The highest offset any coordinator applied, per (group, topic, partition): applied means
    /// committed to `__consumer_offsets`, so every later coordinator must know it.
    offsets_applied: BTreeMap<OffsetKey, i64>,
    /// (node, shard, tenure) -> `offsets_applied` of that shard's groups when the load began.
    load_floors: BTreeMap<(usize, i32, u64), BTreeMap<OffsetKey, i64>>,
}

/// A committed offset's (group, topic, partition).
type OffsetKey = (String, String, i32);

/// The settings of group consumer `process` (what every incarnation of it uses).
fn group_config(process: u64, bootstrap: &[Addr], consumer_protocol: bool) -> GroupConsumerConfig {
    GroupConsumerConfig {
        process,
        bootstrap: bootstrap.to_vec(),
        topic: TOPIC.into(),
        group: GROUP.into(),
        session_timeout_ms: 3_000,
        heartbeat_interval_ms: 500,
        leave_per_mille: 10,
        consumer_protocol,
        // Every other KIP-848 consumer is a static member.
        instance_id: (consumer_protocol && process % 2 == 0).then(|| format!("static-{process}")),
        // Every third subscribes by a pattern the coordinator resolves.
        regex: (consumer_protocol && process % 3 == 0).then(|| format!("{TOPIC}|{TOPIC}-never-.*")),
    }
}

/// The node-to-node address of node `id` after `moves` moves.
fn endpoint(id: i32, voter: bool, moves: u32) -> String {
    if voter {
        format!("node-{id}:9093")
    } else {
        format!("node-{id}-{moves}:9094")
    }
}

fn node_addr(i: usize) -> Addr {
    Addr { node: i as i32 + 1, actor: 0 }
}

impl World {
    /// Build the world for `scenario` under `plan`, seeded with `seed`.
    pub fn new(seed: u64, scenario: &Scenario, plan: FaultPlan) -> World {
        let mut rng = Rng::new(seed);
        let mut nodes = Vec::new();
        let controller_only = scenario.controller_only;
        let voters: Vec<i32> = if controller_only > 0 { (1..=controller_only as i32).collect() } else { (1..=scenario.nodes.min(3) as i32).collect() };
        for i in 0..controller_only + scenario.nodes {
            let id = i as i32 + 1;
            let voter = voters.contains(&id);
            let config = (i >= controller_only).then(|| {
                let mut config = BrokerConfig {
                    node_id: id,
                    num_partitions: scenario.partitions,
                    default_replication_factor: scenario.replication_factor,
                    voters: voters.clone(),
                    replica_lag_time_max_ms: 5_000,
                    ..Default::default()
                };
                // Small and quick: few coordinator shards, a short initial rebalance delay.
                config.groups.offsets_replication_factor = scenario.replication_factor;
                config.groups.offsets_partitions = 4;
                config.groups.initial_rebalance_delay_ms = 500;
                config.groups.min_session_timeout_ms = 1_000;
                config.groups.consumer_session_timeout_ms = 3_000;
                config.groups.consumer_heartbeat_interval_ms = 500;
                // Small coordinator segments and a quick cleaner: compaction runs within a run.
                config.groups.offsets_segment_bytes = 2048;
                config.cleaner_backoff_ms = 1_000;
                for (k, v) in scenario.broker_settings {
                    if let Some((tk, tv)) = broker_key_to_topic(k, v) {
                        config.topic_defaults.insert(tk.to_string(), tv);
                    }
                }
                config
            });
            let mut controller_config = voter.then(|| ControllerConfig { node_id: id, voters: voters.clone(), ..Default::default() });
            for (k, v) in scenario.broker_settings {
                if let Some(c) = controller_config.as_mut() {
                    match *k {
                        "metadata.log.max.record.bytes.between.snapshots" => {
                            c.max_record_bytes_between_snapshots = v.parse().expect("a scenario's snapshot size is a number");
                            // Tiny snapshots travel in tiny chunks: every transfer to a lagging
                            // voter takes many InstallSnapshot messages under the faults.
                            c.snapshot_chunk_bytes = 64;
                        }
                        "metadata.log.max.snapshot.interval.ms" => c.max_snapshot_interval_ms = v.parse().expect("a scenario's snapshot interval is a number"),
                        _ => {}
                    }
                }
            }
            let drift_ppm = if plan.has("clock-drift") { rng.below(2_001) as i64 - 1_000 } else { 0 };
            nodes.push(Node {
                config,
                controller_config,
                endpoint: endpoint(id, voter, 0),
                moves: 0,
                learned: BTreeMap::new(),
                addr: node_addr(i),
                broker: None,
                controller: None,
                cx: Cx::new(node_addr(i), rng.next_u64()),
                ccx: Cx::new(Addr { node: i as i32 + 1, actor: CONTROLLER_ACTOR }, rng.next_u64()),
                disk: SimDisk::new(plan.disk()),
                incarnation: 0,
                timers: BTreeMap::new(),
                timer_generation: 0,
                paused_until_us: 0,
                disk_busy_us: 0,
                fsync_busy_us: 0,
                wall_offset_ms: 0,
                drift_ppm,
                was_ready: false,
                restart_pending: false,
                lost: false,
                meta_checked: 0,
                image_checked: 0,
            });
        }
        let mut clients = Vec::new();
        let bootstrap: Vec<Addr> = (controller_only..controller_only + scenario.nodes).map(node_addr).collect();
        for p in 0..scenario.producers {
            let config = ProducerConfig {
                process: p as u64,
                bootstrap: bootstrap.clone(),
                topic: TOPIC.into(),
                send_interval_ms: scenario.send_interval_ms,
                // With nodes to lose after the heal, sends go on long enough to run into the loss.
                stop_at_ms: scenario.faults_until_ms + if scenario.lost_at_heal > 0 { 10_000 } else { 0 },
            };
            clients.push(Client {
                actor: ClientActor::Producer(Producer::new(config)),
                cx: Cx::new(Addr { node: 1000 + p as i32, actor: 0 }, rng.next_u64()),
                timers: BTreeMap::new(),
                timer_generation: 0,
                conns: BTreeMap::new(),
            });
        }
        for c in 0..scenario.consumers {
            let process = (scenario.producers + c) as u64;
            // Like a real consumer, wait for some bytes rather than waking on every record.
            let config = ConsumerConfig { process, bootstrap: bootstrap.clone(), topic: TOPIC.into(), max_wait_ms: 250, min_bytes: 512 };
            clients.push(Client {
                actor: ClientActor::Consumer(Consumer::new(config)),
                cx: Cx::new(Addr { node: 2000 + c as i32, actor: 0 }, rng.next_u64()),
                timers: BTreeMap::new(),
                timer_generation: 0,
                conns: BTreeMap::new(),
            });
        }
        for g in 0..scenario.group_consumers {
            let process = (scenario.producers + scenario.consumers + g) as u64;
            clients.push(Client {
                actor: ClientActor::Group(Box::new(GroupConsumer::new(group_config(process, &bootstrap, scenario.consumer_protocol)))),
                cx: Cx::new(Addr { node: 4000 + g as i32, actor: 0 }, rng.next_u64()),
                timers: BTreeMap::new(),
                timer_generation: 0,
                conns: BTreeMap::new(),
            });
        }
        if scenario.reassign_every_ms > 0 {
            let reassigner = crate::admin::Reassigner::new(
                bootstrap.clone(),
                TOPIC,
                scenario.partitions,
                scenario.replication_factor as usize,
                scenario.reassign_every_ms,
                scenario.faults_until_ms,
            );
            clients.push(Client {
                actor: ClientActor::Reassigner(reassigner),
                cx: Cx::new(Addr { node: 5000, actor: 0 }, rng.next_u64()),
                timers: BTreeMap::new(),
                timer_generation: 0,
                conns: BTreeMap::new(),
            });
        }
        if scenario.delete_records_every_ms > 0 {
            let deleter =
                crate::admin::RecordDeleter::new(bootstrap.clone(), TOPIC, scenario.partitions, scenario.delete_records_every_ms, scenario.faults_until_ms);
            clients.push(Client {
                actor: ClientActor::Deleter(deleter),
                cx: Cx::new(Addr { node: 5001, actor: 0 }, rng.next_u64()),
                timers: BTreeMap::new(),
                timer_generation: 0,
                conns: BTreeMap::new(),
            });
        }
        if scenario.describe_quorum_every_ms > 0 {
            let watcher = crate::admin::QuorumWatcher::new(bootstrap.clone(), scenario.describe_quorum_every_ms, scenario.faults_until_ms);
            clients.push(Client {
                actor: ClientActor::Quorum(watcher),
                cx: Cx::new(Addr { node: 5002, actor: 0 }, rng.next_u64()),
                timers: BTreeMap::new(),
                timer_generation: 0,
                conns: BTreeMap::new(),
            });
        }
        if scenario.list_offsets_every_ms > 0 {
            let probe =
                crate::admin::TimestampProbe::new(bootstrap.clone(), TOPIC, scenario.partitions, scenario.list_offsets_every_ms, scenario.faults_until_ms);
            clients.push(Client {
                actor: ClientActor::Probe(probe),
                cx: Cx::new(Addr { node: 5003, actor: 0 }, rng.next_u64()),
                timers: BTreeMap::new(),
                timer_generation: 0,
                conns: BTreeMap::new(),
            });
        }
        let net = Network::new(plan.net());
        let mut world = World {
            now_us: 0,
            rng,
            seq: 0,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            nodes,
            clients,
            conns: BTreeMap::new(),
            next_conn: 1,
            net,
            plan,
            scenario: scenario.clone(),
            trace: Trace::new(),
            violations: Vec::new(),
            history: Vec::new(),
            acked: BTreeMap::new(),
            invoked_at: BTreeMap::new(),
            faults_fired: BTreeMap::new(),
            refusals: BTreeMap::new(),
            fault_log: Vec::new(),
            produce_latencies: Vec::new(),
            watch_key: std::env::var("RUNNEL_SIM_WATCH_KEY").ok().and_then(|k| k.parse::<u64>().ok()),
            healed: false,
            lost_done: false,
            completed: false,
            epoch_leaders: BTreeMap::new(),
            term_leaders: BTreeMap::new(),
            committed_meta: BTreeMap::new(),
            committed_images: BTreeMap::new(),
            protocol: BTreeMap::new(),
            voters,
            controller_only,
            group_owners: BTreeMap::new(),
            hw_high: BTreeMap::new(),
            coord_seen: BTreeMap::new(),
            offsets_applied: BTreeMap::new(),
            load_floors: BTreeMap::new(),
        };
        world.schedule_faults();
        world.schedule_client_crashes();
        world.at(scenario.faults_until_ms * 1000, Ev::Heal);
        world
    }

    /// A world whose only client sends `frames` one by one; returns the responses.
    pub fn scripted(seed: u64, scenario: &Scenario, plan: FaultPlan, frames: Vec<Bytes>) -> Vec<Bytes> {
        let mut world = World::new(seed, scenario, plan);
        let cx = Cx::new(Addr { node: 3000, actor: 0 }, world.rng.next_u64());
        let script = crate::conformance::Scripted::new(node_addr(0), frames);
        world.clients.push(Client { actor: ClientActor::Scripted(script), cx, timers: BTreeMap::new(), timer_generation: 0, conns: BTreeMap::new() });
        let index = world.clients.len() - 1;
        let mut world = world.run_keep();
        match std::mem::replace(
            &mut world.clients[index].actor,
            ClientActor::Consumer(Consumer::new(ConsumerConfig {
                process: 0,
                bootstrap: vec![node_addr(0)],
                topic: String::new(),
                max_wait_ms: 0,
                min_bytes: 0,
            })),
        ) {
            ClientActor::Scripted(s) => s.responses,
            _ => unreachable!("the scripted client is where it was put"),
        }
    }

    fn at(&mut self, time_us: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((time_us.max(self.now_us), self.seq)));
        self.pending.insert(self.seq, ev);
    }

    fn after(&mut self, delay_us: u64, ev: Ev) {
        self.at(self.now_us + delay_us, ev);
    }

    fn violation(&mut self, checker: &str, what: String) {
        // One report per distinct finding, and a bounded number overall: the first ones matter.
        if self.violations.len() >= 50 || self.violations.iter().any(|v| v.checker == checker && v.what == what) {
            return;
        }
        self.violations.push(Violation { time_ms: self.now_us / 1000, checker: checker.into(), what });
    }

    /// Lay out the discrete faults of the fault phase as a Poisson-ish schedule.
    fn schedule_faults(&mut self) {
        let end_us = self.scenario.faults_until_ms * 1000;
        let start_us = 2_000_000;
        let kinds: Vec<(&'static str, f64)> = self.plan.enabled.iter().map(|(k, r)| (*k, *r)).collect();
        for (kind, rate) in kinds {
            if !matches!(kind, "crash" | "pause" | "conn-reset" | "partition" | "partition-one-way" | "swizzle-clog" | "clock-jump") || rate <= 0.0 {
                continue;
            }
            let mean_gap_us = (1_000_000.0 / rate) as u64;
            let mut t = start_us + self.rng.below(mean_gap_us.max(1));
            while t < end_us {
                self.schedule_fault(kind, t, end_us);
                t += mean_gap_us / 2 + self.rng.below(mean_gap_us.max(1));
            }
        }
    }

    /// Group consumer processes crash at the rate of node crashes (group scenarios only, so the
    /// other scenarios' seeds keep their runs).
    fn schedule_client_crashes(&mut self) {
        let (first, count) = (self.scenario.producers + self.scenario.consumers, self.scenario.group_consumers);
        let Some(rate) = self.plan.enabled.get("crash").copied().filter(|r| *r > 0.0 && count > 0) else { return };
        let end_us = self.scenario.faults_until_ms * 1000;
        let mean_gap_us = (1_000_000.0 / rate) as u64;
        let mut t = 2_000_000 + self.rng.below(mean_gap_us.max(1));
        while t < end_us {
            let c = first + self.rng.below(count as u64) as usize;
            self.at(t, Ev::Fault(Fault::CrashClient(c)));
            t += mean_gap_us / 2 + self.rng.below(mean_gap_us.max(1));
        }
    }

    fn schedule_fault(&mut self, kind: &'static str, t: u64, end_us: u64) {
        let n = self.nodes.len();
        let c = self.clients.len();
        let node = self.rng.below(n as u64) as usize;
        let client = self.rng.below(c as u64) as usize;
        // Faults on a client's links hit a node that serves clients (same draws as without
        // controller-only nodes, so those scenarios' seeds are unchanged).
        let k = self.controller_only;
        let serving = if k == 0 { node } else { k + node % (n - k) };
        match kind {
            "crash" => self.at(t, Ev::Fault(Fault::Crash(node))),
            "pause" => {
                let ms = 100 + self.rng.below(3_000);
                self.at(t, Ev::Fault(Fault::Pause(node, ms)))
            }
            "conn-reset" => self.at(t, Ev::Fault(Fault::ResetClient(client))),
            "partition" | "partition-one-way" => {
                // With several nodes, half the partitions cut a node off from another node.
                let other = (node + 1 + self.rng.below(n.max(2) as u64 - 1) as usize) % n;
                let (a, b) = if n > 1 && self.rng.below(2) == 0 {
                    (Endpoint::Node(other), Endpoint::Node(node))
                } else {
                    (Endpoint::Client(client), Endpoint::Node(serving))
                };
                let heal = (t + 200_000 + self.rng.below(5_000_000)).min(end_us);
                let both = kind == "partition";
                let (from, to) = if self.rng.below(2) == 0 { (a, b) } else { (b, a) };
                self.at(t, Ev::Fault(Fault::Clog(from, to)));
                self.at(heal, Ev::Fault(Fault::Unclog(from, to)));
                if both {
                    self.at(t, Ev::Fault(Fault::Clog(to, from)));
                    self.at(heal, Ev::Fault(Fault::Unclog(to, from)));
                }
            }
            "swizzle-clog" => {
                // Clog every client link one by one, then heal them in a random order.
                let step = 100_000 + self.rng.below(400_000);
                self.at(t, Ev::Fault(Fault::Begins("swizzle-clog")));
                let mut order: Vec<usize> = (0..c).collect();
                for (i, cl) in order.iter().enumerate() {
                    let e = Endpoint::Client(*cl);
                    self.at(t + i as u64 * step, Ev::Fault(Fault::Clog(e, Endpoint::Node(serving))));
                    self.at(t + i as u64 * step, Ev::Fault(Fault::Clog(Endpoint::Node(serving), e)));
                }
                for i in (1..order.len()).rev() {
                    let j = self.rng.below(i as u64 + 1) as usize;
                    order.swap(i, j);
                }
                let heal_start = t + c as u64 * step;
                for (i, cl) in order.iter().enumerate() {
                    let e = Endpoint::Client(*cl);
                    let when = (heal_start + i as u64 * step).min(end_us);
                    self.at(when, Ev::Fault(Fault::Unclog(e, Endpoint::Node(serving))));
                    self.at(when, Ev::Fault(Fault::Unclog(Endpoint::Node(serving), e)));
                }
            }
            "clock-jump" => {
                let jump = self.rng.below(600_000) as i64 - 300_000;
                self.at(t, Ev::Fault(Fault::ClockJump(node, jump)))
            }
            _ => {}
        }
    }

    fn fired(&mut self, kind: &str, what: String) {
        *self.faults_fired.entry(kind.to_string()).or_default() += 1;
        self.fault_log.push((self.now_us / 1000, what));
    }

    /// Run until the workload completes or the deadline passes.
    pub fn run(self) -> Outcome {
        self.run_keep().into_outcome()
    }

    fn run_keep(mut self) -> World {
        runnel_actors::core::bugs::set_buggify(self.plan.has("buggify"));
        runnel_actors::core::bugs::take_buggify_count();
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        for i in 0..self.clients.len() {
            self.client_step(i, |actor, cx| match actor {
                ClientActor::Producer(p) => p.on_start(cx),
                ClientActor::Scripted(s) => s.on_start(cx),
                ClientActor::Reassigner(r) => r.on_start(cx),
                ClientActor::Deleter(d) => d.on_start(cx),
                ClientActor::Quorum(q) => q.on_start(cx),
                ClientActor::Probe(p) => p.on_start(cx),
                ClientActor::Consumer(c) => c.on_start(cx),
                ClientActor::Group(g) => g.on_start(cx),
            });
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].drift_ppm != 0 {
                let ppm = self.nodes[i].drift_ppm;
                self.fired("clock-drift", format!("node {} clock drifts {ppm} ppm", i + 1));
            }
        }
        self.at(500_000, Ev::Check);
        let deadline_us = self.scenario.deadline_ms * 1000;
        while let Some(Reverse((time, seq))) = self.queue.pop() {
            if time > deadline_us || self.completed {
                break;
            }
            self.now_us = time;
            SIM_NOW_US.with(|t| t.set(time));
            let ev = self.pending.remove(&seq).expect("queued event");
            self.handle(ev);
        }
        runnel_actors::core::bugs::set_buggify(false);
        let buggified = runnel_actors::core::bugs::take_buggify_count();
        if buggified > 0 {
            *self.faults_fired.entry("buggify".into()).or_default() += buggified;
        }
        if !self.completed && std::env::var_os("RUNNEL_SIM_DEBUG").is_some() {
            for (i, c) in self.clients.iter().enumerate() {
                if let ClientActor::Producer(p) = &c.actor {
                    eprintln!("producer client {i}: {}", p.debug_state());
                }
                if let ClientActor::Group(g) = &c.actor {
                    eprintln!("group consumer client {i}: {}", g.debug_state());
                }
                for (node, conn) in &c.conns {
                    let state = self.conns.get(conn).map(|k| {
                        (k.alive, k.node_incarnation, k.held_to_node.len(), k.held_to_client.len(), k.replies.len(), k.next_reply_seq, k.next_request_seq)
                    });
                    eprintln!("  conn {conn} to node {}: {state:?} (node incarnation {})", node + 1, self.nodes[*node].incarnation);
                }
            }
            for (i, n) in self.nodes.iter().enumerate() {
                match &n.broker {
                    None if !n.is_up() => eprintln!("node {}: down (restart pending: {})", i + 1, n.restart_pending),
                    None => eprintln!("node {}: controller-only at {}", i + 1, n.endpoint),
                    Some(b) => {
                        eprintln!(
                            "node {}: at {} ready {} fetches {:?} partitions {:?}",
                            i + 1,
                            n.endpoint,
                            b.is_ready(),
                            b.debug_fetches(),
                            b.partition_views()
                        );
                        eprintln!("  groups: {}", b.groups().debug_consumer_groups());
                    }
                }
                if let Some(c) = &n.controller {
                    eprintln!("  controller: active {} raft {:?} image {:?}", c.is_active(), c.raft_view(), c.image());
                }
                for (path, bytes) in n.disk.snapshot() {
                    eprintln!("  {path}: {} bytes", bytes.len());
                }
            }
        }
        if self.completed && self.nodes.len() > 1 {
            self.check_replicas_identical();
        }
        self.check_quorum_answers();
        if self.completed {
            self.check_timestamp_answers();
        }
        if !self.completed {
            let missing = self.missing_reads();
            self.violation(
                "liveness",
                format!("workload incomplete {} ms after faults healed: {missing}", self.scenario.deadline_ms - self.scenario.faults_until_ms),
            );
        }
        for n in &self.nodes {
            self.faults_fired.entry("torn-write".into()).or_default();
            let c = &n.disk.counts;
            for (k, v) in [
                ("torn-write", c.torn),
                ("misdirected-write", c.misdirected),
                ("latent-read", c.latent_reads),
                ("fsync-eio", c.fsync_eio),
                ("enospc", c.enospc),
                ("disk-latency", c.spikes),
            ] {
                *self.faults_fired.entry(k.into()).or_default() += v;
            }
        }
        *self.faults_fired.entry("net-latency".into()).or_default() += self.net.spikes;
        self.faults_fired.retain(|_, v| *v > 0);
        self
    }

    fn into_outcome(mut self) -> Outcome {
        let deleted_below = self.deleted_below();
        for i in 0..self.nodes.len() {
            self.count_snapshots(i);
        }
        for c in &self.clients {
            if let ClientActor::Deleter(d) = &c.actor {
                let o = &d.outcomes;
                for (k, v) in [
                    ("delete-records-acknowledged", o.acknowledged.len() as u64),
                    ("delete-records-out-of-range", o.out_of_range),
                    ("delete-records-timed-out", o.timed_out),
                    ("delete-records-not-leader", o.not_leader),
                    ("delete-records-lost", o.lost),
                ] {
                    *self.protocol.entry(k.to_string()).or_default() += v;
                }
            }
            if let ClientActor::Consumer(consumer) = &c.actor {
                *self.protocol.entry("consumer-reset-to-log-start".to_string()).or_default() += consumer.reset_count;
            }
            if let ClientActor::Probe(p) = &c.actor {
                let found = p.answers.iter().filter(|a| a.offset >= 0).count() as u64;
                for (k, v) in [
                    ("list-offsets-by-time-sent", p.sent),
                    ("list-offsets-by-time-found", found),
                    ("list-offsets-by-time-none", p.answers.len() as u64 - found),
                    ("list-offsets-by-time-errors", p.errors),
                    ("list-offsets-by-time-lost", p.lost),
                    ("list-offsets-not-available", p.not_available),
                ] {
                    *self.protocol.entry(k.to_string()).or_default() += v;
                }
            }
            if let ClientActor::Quorum(q) = &c.actor {
                let answered = q.answers.iter().filter(|a| a.error == 0).count() as u64;
                let observed = q.answers.iter().filter(|a| a.error == 0 && !a.observers.is_empty()).count() as u64;
                for (k, v) in [
                    ("describe-quorum-sent", q.sent),
                    ("describe-quorum-answered", answered),
                    ("describe-quorum-with-observers", observed),
                    ("describe-quorum-errors", q.answers.len() as u64 - answered),
                    ("describe-quorum-lost", q.lost),
                ] {
                    *self.protocol.entry(k.to_string()).or_default() += v;
                }
            }
            if let ClientActor::Reassigner(r) = &c.actor {
                let o = &r.outcomes;
                for (k, v) in [
                    ("reassignment-accepted", o.accepted),
                    ("reassignment-refused", o.refused),
                    ("reassignment-connection-lost", o.lost),
                    ("reassignment-unanswered", o.timed_out),
                ] {
                    *self.protocol.entry(k.to_string()).or_default() += v;
                }
            }
        }
        self.protocol.retain(|_, v| *v > 0);
        Outcome {
            trace_hash: self.trace.hash(),
            events: self.trace.events,
            sim_time_ms: self.now_us / 1000,
            violations: self.violations,
            faults_fired: self.faults_fired,
            history: self.history,
            fault_log: self.fault_log,
            produce_latencies: self.produce_latencies,
            completed: self.completed,
            protocol: self.protocol,
            deleted_below,
        }
    }

    /// Add the snapshot counts of node `i`'s controller (before it is replaced, and at the end).
    fn count_snapshots(&mut self, i: usize) {
        if let Some(b) = self.nodes[i].broker.as_ref() {
            let cleaned: u64 = b.partition_views().iter().map(|v| v.segments_cleaned).sum();
            *self.protocol.entry("log-segments-cleaned".to_string()).or_default() += cleaned;
            *self.protocol.entry("stray-replica-deleted".to_string()).or_default() += b.stray_replicas_deleted();
            *self.protocol.entry("metadata-image-chunk-received".to_string()).or_default() += b.metadata_image_chunks();
            *self.protocol.entry("parked-fetch-watches".to_string()).or_default() += b.parked_watch_registrations() as u64;
            let f = b.fetch_session_stats();
            for (k, v) in [
                ("replica-fetch-full", f.full),
                ("replica-fetch-incremental", f.incremental),
                ("replica-fetch-incremental-partitions", f.incremental_partitions),
                ("replica-fetch-session-partitions", f.session_partitions),
                ("replica-fetch-session-refused", f.refused),
            ] {
                *self.protocol.entry(k.to_string()).or_default() += v;
            }
            let g = b.groups().stats();
            for (k, v) in [
                ("kip848-members-restored", g.members_restored),
                ("kip848-members-continued", g.members_continued),
                ("kip848-static-returns", g.static_returns),
            ] {
                if v > 0 {
                    *self.protocol.entry(k.to_string()).or_default() += v;
                }
            }
        }
        if let Some(c) = self.nodes[i].controller.as_ref() {
            *self.protocol.entry("broker-fenced-on-refusal".to_string()).or_default() += c.fenced_on_refusal();
            *self.protocol.entry("controller-campaign-on-refusal".to_string()).or_default() += c.campaigns_on_refusal();
            if c.duplicate_registrations() > 0 {
                // A restarted broker waited for its previous incarnation's session to end.
                *self.protocol.entry("duplicate-registration-refused".to_string()).or_default() += c.duplicate_registrations();
            }
            let s = c.snapshot_stats();
            for (k, v) in [
                ("metadata-snapshot-taken", s.taken),
                ("metadata-snapshot-on-interval", s.taken_on_interval),
                ("metadata-snapshot-installed", s.installed),
                ("metadata-snapshot-chunk-received", s.chunks_received),
                ("metadata-snapshot-loaded", (s.loaded_index > 0) as u64),
            ] {
                *self.protocol.entry(k.to_string()).or_default() += v;
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        self.trace.events += 1;
        let t = self.now_us;
        match ev {
            Ev::NodeRequest { conn, frame } => {
                self.trace.add(&[t, 1, conn, frame.len() as u64]);
                self.trace.bytes(&frame);
                let Some((alive, node, seq, incarnation)) = self.conns.get(&conn).map(|c| (c.alive, c.node, c.next_request_seq, c.node_incarnation)) else {
                    return;
                };
                if !alive {
                    return;
                }
                if let Some(until) = self.paused(node) {
                    return self.at(until, Ev::NodeRequest { conn, frame });
                }
                if incarnation != self.nodes[node].incarnation || self.nodes[node].broker.is_none() {
                    return;
                }
                self.conns.get_mut(&conn).expect("conn").next_request_seq += 1;
                let from = Addr { node: -1, actor: 0 };
                if seq == 0 {
                    // The connection's first frame: the broker learns where the client is.
                    let host = format!("/10.0.{}.1", self.conns[&conn].client);
                    self.node_step(node, BROKER_ACTOR, |b, cx| b.on_message(cx, from, BrokerMsg::Connected { conn: ConnId(conn), host }));
                }
                if runnel_actors::broker::names_brokers(&frame) {
                    // As the real driver does: the peers whose connection the kernel knows
                    // closed. A crashed node's sockets close at once, unless the link is cut
                    // (the close does not get through).
                    let nodes: Vec<i32> = (0..self.nodes.len())
                        .filter(|j| *j != node && !self.nodes[*j].is_up() && self.reachable(node, *j))
                        .filter(|j| !self.net.is_clogged(Endpoint::Node(*j), Endpoint::Node(node)))
                        .map(|j| j as i32 + 1)
                        .collect();
                    if !nodes.is_empty() {
                        *self.protocol.entry("metadata-after-link-closed".to_string()).or_default() += 1;
                    }
                    self.node_step(node, BROKER_ACTOR, |b, cx| b.on_message(cx, from, BrokerMsg::LinksClosed { nodes }));
                }
                self.node_step(node, BROKER_ACTOR, |b, cx| b.on_message(cx, from, BrokerMsg::Request { conn: ConnId(conn), seq, frame }));
            }
            Ev::NodeDisconnected { node, incarnation, conn } => {
                self.trace.add(&[t, 2, conn]);
                if incarnation != self.nodes[node].incarnation {
                    return;
                }
                if let Some(until) = self.paused(node) {
                    return self.at(until, Ev::NodeDisconnected { node, incarnation, conn });
                }
                self.node_step(node, BROKER_ACTOR, |b, cx| b.on_message(cx, Addr { node: -1, actor: 0 }, BrokerMsg::Disconnected { conn: ConnId(conn) }));
            }
            Ev::NodeTimer { node, incarnation, actor, id, generation } => {
                self.trace.add(&[t, 3, node as u64, actor as u64, id.0]);
                if incarnation != self.nodes[node].incarnation || self.nodes[node].timers.get(&(actor, id)) != Some(&generation) {
                    return;
                }
                if let Some(until) = self.paused(node) {
                    return self.at(until, Ev::NodeTimer { node, incarnation, actor, id, generation });
                }
                self.nodes[node].timers.remove(&(actor, id));
                self.node_step(node, actor, |b, cx| b.on_timer(cx, id));
            }
            Ev::NodeMessage { node, incarnation, actor, from, msg } => {
                self.trace.add(&[t, 12, node as u64, actor as u64, from.node as u64]);
                if incarnation != self.nodes[node].incarnation {
                    return;
                }
                if let Some(until) = self.paused(node) {
                    return self.at(until, Ev::NodeMessage { node, incarnation, actor, from, msg });
                }
                self.node_step(node, actor, |b, cx| b.on_message(cx, from, msg));
            }
            Ev::NodeIo { node, incarnation, actor, done } => {
                self.trace.add(&[t, 4, node as u64, actor as u64, done.token.0, done.result.is_ok() as u64]);
                if incarnation != self.nodes[node].incarnation {
                    return;
                }
                if let Some(until) = self.paused(node) {
                    return self.at(until, Ev::NodeIo { node, incarnation, actor, done });
                }
                self.node_step(node, actor, |b, cx| b.on_io(cx, done));
            }
            Ev::NodeFsync { node, incarnation, actor, token, ticket } => {
                self.trace.add(&[t, 5, node as u64, actor as u64, token.0]);
                if incarnation != self.nodes[node].incarnation {
                    return;
                }
                if let Some(until) = self.paused(node) {
                    return self.at(until, Ev::NodeFsync { node, incarnation, actor, token, ticket });
                }
                let result = self.nodes[node].disk.complete_fsync(ticket, &mut self.rng);
                self.node_step(node, actor, |b, cx| b.on_io(cx, IoDone { token, result }));
            }
            Ev::ClientResponse { conn, frame } => {
                self.trace.add(&[t, 6, conn, frame.len() as u64]);
                self.trace.bytes(&frame);
                let Some(c) = self.conns.get(&conn) else { return };
                if !c.alive {
                    return;
                }
                let (client, node) = (c.client, c.node);
                self.client_step(client, |a, cx| client_message(a, cx, node_addr(node), ClientMsg::Response(frame)));
            }
            Ev::ClientDisconnected { client, node, conn } => {
                self.trace.add(&[t, 7, conn]);
                // Until this notice arrives the client keeps writing into the dead connection
                // (those requests vanish, as on a reset socket); then it learns, forgets what was
                // in flight and reconnects.
                if self.clients[client].conns.get(&node) != Some(&conn) {
                    return;
                }
                self.clients[client].conns.remove(&node);
                self.client_step(client, |a, cx| client_message(a, cx, node_addr(node), ClientMsg::Disconnected));
            }
            Ev::ClientTimer { client, id, generation } => {
                self.trace.add(&[t, 8, client as u64, id.0]);
                if self.clients[client].timers.get(&id) != Some(&generation) {
                    return;
                }
                self.clients[client].timers.remove(&id);
                self.client_step(client, |a, cx| match a {
                    ClientActor::Producer(p) => p.on_timer(cx, id),
                    ClientActor::Scripted(s) => s.on_timer(cx, id),
                    ClientActor::Reassigner(r) => r.on_timer(cx, id),
                    ClientActor::Deleter(d) => d.on_timer(cx, id),
                    ClientActor::Quorum(q) => q.on_timer(cx, id),
                    ClientActor::Probe(p) => p.on_timer(cx, id),
                    ClientActor::Consumer(c) => c.on_timer(cx, id),
                    ClientActor::Group(g) => g.on_timer(cx, id),
                });
            }
            Ev::ClientRestart(client) => {
                // A supervisor starting the consumer process again (also after the heal).
                self.trace.add(&[t, 12, client as u64]);
                self.fault_log.push((self.now_us / 1000, format!("client {client} restarts")));
                self.client_step(client, |a, cx| {
                    if let ClientActor::Group(g) = a {
                        g.on_start(cx)
                    }
                });
            }
            Ev::Fault(f) => {
                self.trace.add(&[t, 9]);
                if !self.healed {
                    self.apply_fault(f);
                }
            }
            Ev::Restart(node) => {
                // A supervisor bringing a downed node back: recovery, not a fault, so it happens
                // after the heal too.
                self.trace.add(&[t, 11, node as u64]);
                if !self.nodes[node].is_up() && !self.nodes[node].lost {
                    self.fault_log.push((self.now_us / 1000, format!("node {} restarts", node + 1)));
                    self.start_node(node);
                }
            }
            Ev::Redial { from, incarnation, to } => self.redial(from, incarnation, to),
            Ev::Heal => {
                self.trace.add(&[t, 10]);
                self.heal();
            }
            Ev::Check => {
                if self.nodes.len() > 1 {
                    self.check_isr();
                }
                self.maybe_lose_nodes();
                self.check_completion();
                self.after(500_000, Ev::Check);
            }
        }
    }

    /// Node `from`'s transport dials node `to`, which crashed, again: refused unless the link is
    /// cut (then the connect times out), and reported to `from`'s controller and broker.
    fn redial(&mut self, from: usize, incarnation: u64, to: usize) {
        let Some(failures) = self.refusals.get(&(from, to)).copied() else { return };
        if self.nodes[from].incarnation != incarnation || !self.nodes[from].is_up() || self.nodes[to].is_up() {
            self.refusals.remove(&(from, to));
            return;
        }
        self.trace.add(&[self.now_us, 13, from as u64, to as u64]);
        if !self.net.is_clogged(Endpoint::Node(from), Endpoint::Node(to)) {
            let me = Addr { node: from as i32 + 1, actor: BROKER_ACTOR };
            let n = &self.nodes[from];
            let actors = [(n.controller.is_some(), CONTROLLER_ACTOR), (n.broker.is_some(), BROKER_ACTOR)];
            for (_, actor) in actors.into_iter().filter(|(on, _)| *on) {
                let msg = BrokerMsg::PeerRefused { node: to as i32 + 1 };
                self.after(0, Ev::NodeMessage { node: from, incarnation, actor, from: me, msg });
            }
        }
        self.refusals.insert((from, to), failures + 1);
        let wait = refusal_backoff_us(failures + 1, &mut self.rng);
        self.after(wait, Ev::Redial { from, incarnation, to });
    }

    /// Hold an event for a paused node until it resumes.
    /// When a paused node resumes, if it is paused now: its events wait until then.
    fn paused(&self, node: usize) -> Option<u64> {
        let until = self.nodes[node].paused_until_us;
        (until > self.now_us).then_some(until)
    }

    fn start_node(&mut self, i: usize) {
        self.count_snapshots(i);
        // Its peers' transports connect again; its own transport is a new one.
        self.refusals.retain(|(from, to), _| *from != i && *to != i);
        let id = i as i32 + 1;
        let voter = self.voters.contains(&id);
        if !voter && self.nodes[i].incarnation > 0 && self.rng.below(2) == 0 {
            // A broker-only node comes back somewhere else (another host or port): it registers
            // the new address, and the other nodes must learn it from the metadata.
            let n = &mut self.nodes[i];
            n.moves += 1;
            n.endpoint = endpoint(id, false, n.moves);
            let moved = n.endpoint.clone();
            self.fault_log.push((self.now_us / 1000, format!("node {id} restarts at {moved}")));
        }
        let n = &mut self.nodes[i];
        n.learned.clear();
        if let Some(config) = n.config.as_mut().filter(|_| !voter) {
            // Voters are reached at their configured addresses; what a combined node registers
            // is never dialed, so it registers none (as before separate roles existed, which
            // keeps those scenarios' traces unchanged).
            config.peer_address = n.endpoint.clone();
        }
        n.broker = n.config.clone().map(Broker::new);
        n.controller = n.controller_config.clone().map(Controller::new);
        n.cx = Cx::new(n.addr, self.rng.next_u64());
        n.ccx = Cx::new(Addr { node: n.addr.node, actor: CONTROLLER_ACTOR }, self.rng.next_u64());
        n.timers.clear();
        n.was_ready = false;
        n.restart_pending = false;
        n.meta_checked = 0;
        n.image_checked = 0;
        if self.nodes[i].controller.is_some() {
            self.node_step(i, CONTROLLER_ACTOR, |c, cx| c.on_start(cx));
        }
        self.node_step(i, BROKER_ACTOR, |b, cx| b.on_start(cx));
    }

    fn node_clock(&self, i: usize) -> (u64, i64) {
        let n = &self.nodes[i];
        let local_us = (self.now_us as i128 * (1_000_000 + n.drift_ppm as i128) / 1_000_000) as u64;
        let local_ms = local_us / 1000;
        (local_ms, EPOCH_MS + local_ms as i64 + n.wall_offset_ms)
    }

    fn node_step(&mut self, i: usize, actor: u32, f: impl FnOnce(&mut dyn Actor<Msg = BrokerMsg>, &mut Cx<BrokerMsg>)) {
        // Log lines an actor writes (RUST_LOG) name the node they come from.
        let _node = tracing::info_span!("node", id = i + 1).entered();
        let (now_ms, wall) = self.node_clock(i);
        let n = &mut self.nodes[i];
        let (a, cx): (&mut dyn Actor<Msg = BrokerMsg>, &mut Cx<BrokerMsg>) = match actor {
            BROKER_ACTOR => match n.broker.as_mut() {
                Some(b) => (b, &mut n.cx),
                None => return,
            },
            _ => match n.controller.as_mut() {
                Some(c) => (c, &mut n.ccx),
                None => return,
            },
        };
        cx.set_time(now_ms, wall);
        f(a, cx);
        let effects = cx.take_effects();
        for e in effects {
            self.node_effect(i, actor, e);
            if !self.nodes[i].is_up() {
                break;
            }
        }
        self.check_node(i);
    }

    fn node_effect(&mut self, i: usize, actor: u32, e: Effect<BrokerMsg>) {
        let incarnation = self.nodes[i].incarnation;
        let me = Addr { node: i as i32 + 1, actor };
        match e {
            Effect::Send { to, msg } => {
                let j = (to.node - 1) as usize;
                if to.node == me.node {
                    // Between actors of one node: in order, at once.
                    self.after(0, Ev::NodeMessage { node: i, incarnation, actor: to.actor, from: me, msg });
                } else if to.node < 1 || j >= self.nodes.len() {
                    self.violation("driver", format!("node {} sent to {to:?}, which does not exist", i + 1));
                } else if !self.reachable(i, j) {
                    // No address for it, or an address it no longer listens on: the transport
                    // drops the message (the sender retries).
                } else if !self.nodes[j].is_up() {
                    // A crashed node's address refuses connections (unless the link is cut, when
                    // connects time out): the sender's driver tells its controller and broker.
                    if let std::collections::btree_map::Entry::Vacant(e) = self.refusals.entry((i, j)) {
                        e.insert(0);
                        let latency = self.net.latency_us(&mut self.rng);
                        self.after(latency, Ev::Redial { from: i, incarnation, to: j });
                    }
                } else {
                    // Between nodes: a datagram, lost while the link is clogged, and subject to
                    // loss, duplication and reordering.
                    if self.net.is_clogged(Endpoint::Node(i), Endpoint::Node(j)) {
                        return;
                    }
                    let (copies, extra) = self.net.datagram_fate(&mut self.rng);
                    if copies == 0 {
                        *self.faults_fired.entry("net-loss".into()).or_default() += 1;
                    }
                    if copies == 2 {
                        *self.faults_fired.entry("net-duplicate".into()).or_default() += 1;
                    }
                    if extra > 0 {
                        *self.faults_fired.entry("net-reorder".into()).or_default() += 1;
                    }
                    let target = self.nodes[j].incarnation;
                    if std::env::var_os("RUNNEL_SIM_PEER_DEBUG").is_some() {
                        let d = format!("{msg:?}");
                        eprintln!("[{} ms] {} -> {} {}", self.now_us / 1000, me.node, to.node, &d[..d.len().min(160)]);
                    }
                    for c in 0..copies {
                        let latency = self.net.latency_us(&mut self.rng) + extra + c as u64 * 100;
                        self.after(latency, Ev::NodeMessage { node: j, incarnation: target, actor: to.actor, from: me, msg: msg.clone() });
                    }
                }
            }
            Effect::Reply { conn, seq, frame } => {
                let Some(c) = self.conns.get_mut(&conn.0) else { return };
                if !c.alive {
                    return;
                }
                c.replies.insert(seq, frame);
                loop {
                    let next = {
                        let Some(c) = self.conns.get_mut(&conn.0) else { return };
                        match c.replies.remove(&c.next_reply_seq) {
                            Some(f) => {
                                c.next_reply_seq += 1;
                                f
                            }
                            None => break,
                        }
                    };
                    if let Some(frame) = next {
                        self.send_to_client(conn.0, frame);
                    }
                }
            }
            Effect::Close { conn } => self.reset_conn(conn.0, false, true),
            Effect::SetTimer { id, after_ms } => {
                let n = &mut self.nodes[i];
                n.timer_generation += 1;
                let generation = n.timer_generation;
                n.timers.insert((actor, id), generation);
                self.after(after_ms * 1000, Ev::NodeTimer { node: i, incarnation, actor, id, generation });
            }
            Effect::CancelTimer { id } => {
                self.nodes[i].timers.remove(&(actor, id));
            }
            Effect::Disk { token, op } => {
                self.trace.add(&[self.now_us, 20, token.0]);
                let latency = self.nodes[i].disk.latency_us(&op, &mut self.rng);
                let issued = self.nodes[i].disk.issue(op, &mut self.rng);
                let n = &mut self.nodes[i];
                match issued {
                    Issued::Done(result) => {
                        n.disk_busy_us = n.disk_busy_us.max(self.now_us) + latency;
                        let when = n.disk_busy_us;
                        self.at(when, Ev::NodeIo { node: i, incarnation, actor, done: IoDone { token, result } });
                    }
                    Issued::Fsync(ticket) => {
                        // Like the real driver: an fsync starts after every earlier operation.
                        n.fsync_busy_us = n.fsync_busy_us.max(n.disk_busy_us).max(self.now_us) + latency;
                        let when = n.fsync_busy_us;
                        self.at(when, Ev::NodeFsync { node: i, incarnation, actor, token, ticket });
                    }
                }
            }
            Effect::PeerAddress { node, address, epoch } => {
                if node == me.node || address.is_empty() || self.voters.contains(&node) {
                    return;
                }
                let learned = &mut self.nodes[i].learned;
                if peer_address_replaces(learned.get(&node).map(|(e, a)| (*e, a.as_str())), epoch, &address) {
                    learned.insert(node, (epoch, address));
                }
            }
            Effect::Stop => {
                // An actor exits on a fatal error (fsync EIO, ENOSPC): the process dies, the
                // page cache survives; a supervisor restarts it.
                self.node_down(i, false);
                let delay = 200_000 + self.rng.below(1_000_000);
                self.nodes[i].restart_pending = true;
                self.after(delay, Ev::Restart(i));
                self.fault_log.push((self.now_us / 1000, format!("node {} broker exited on a fatal error", i + 1)));
            }
        }
    }

    /// Whether node `i` can send to node `j`: a voter is always at its configured address; any
    /// other node only at the address `i` learned, if `j` still listens there.
    fn reachable(&self, i: usize, j: usize) -> bool {
        let id = j as i32 + 1;
        self.voters.contains(&id) || self.nodes[i].learned.get(&id).is_some_and(|(_, a)| *a == self.nodes[j].endpoint)
    }

    /// Invariants on the broker's state, checked after every step.
    fn check_node(&mut self, i: usize) {
        self.check_quorum(i);
        if self.scenario.group_consumers > 0 {
            self.check_group_offsets(i);
        }
        let Some(b) = self.nodes[i].broker.as_ref() else { return };
        let mut leaders = Vec::new();
        for v in b.partition_views() {
            if v.role == runnel_actors::partition::Role::Leader {
                leaders.push((v.topic.to_string(), v.index, v.leader_epoch));
            }
        }
        for key in leaders {
            let node = i as i32 + 1;
            let prev = *self.epoch_leaders.entry(key.clone()).or_insert(node);
            if prev != node {
                self.violation("one-leader-per-epoch", format!("{}-{} epoch {}: led by node {prev} and node {node}", key.0, key.1, key.2));
            }
        }
        if self.scenario.delete_records_every_ms > 0 {
            self.check_deletions_kept(i);
        }
        let Some(b) = self.nodes[i].broker.as_ref() else { return };
        if !b.is_ready() {
            return;
        }
        for v in b.partition_views().into_iter().filter(|v| v.topic == TOPIC) {
            let h = self.hw_high.entry(v.index as u64).or_insert(0);
            *h = (*h).max(v.high_watermark);
        }
        let first_ready = !self.nodes[i].was_ready;
        let mut found: Vec<(&'static str, String)> = Vec::new();
        for v in b.partition_views() {
            if !(v.log_start_offset <= v.high_watermark && v.high_watermark <= v.log_end_offset) {
                found.push((
                    "offsets",
                    format!(
                        "{}-{}: log start {} / high watermark {} / log end {} out of order",
                        v.topic, v.index, v.log_start_offset, v.high_watermark, v.log_end_offset
                    ),
                ));
            }
            // (Records below the log start are not exposed: a log restarted empty at a later
            // start, behind a leader's deletions, is not durable there until its checkpoint is.)
            if v.high_watermark > v.durable_offset.max(v.log_start_offset) {
                found.push((
                    "durability",
                    format!("{}-{}: high watermark {} above the durable offset {}", v.topic, v.index, v.high_watermark, v.durable_offset),
                ));
            }
            // Acknowledgements are known for the workload topic (the producers' sends).
            if first_ready && v.ready && self.scenario.replication_factor == 1 && v.topic == TOPIC {
                if let Some(acked) = self.acked.get(&(v.index as u64)) {
                    if v.log_end_offset <= *acked {
                        found.push((
                            "acknowledged-survives-recovery",
                            format!("{}-{}: offset {} was acknowledged but the log ends at {} after recovery", v.topic, v.index, acked, v.log_end_offset),
                        ));
                    }
                }
            }
        }
        self.nodes[i].was_ready = true;
        for (checker, what) in found {
            self.violation(checker, what);
        }
    }

    /// The highest low watermark DeleteRecords acknowledged, per workload partition.
    fn acknowledged_deletions(&self) -> BTreeMap<i32, i64> {
        let deleter = self.clients.iter().find_map(|c| if let ClientActor::Deleter(d) = &c.actor { Some(d) } else { None });
        deleter.map(|d| d.outcomes.low_watermarks()).unwrap_or_default()
    }

    /// Records DeleteRecords acknowledged as deleted stay deleted: the leader of a partition's
    /// newest epoch (as far as any node has seen) never starts its log below an acknowledged
    /// low watermark, across crashes, restarts and failovers. (A deposed leader of an older
    /// epoch, fenced while it was deleted, may still hold them, as in Kafka.)
    fn check_deletions_kept(&mut self, i: usize) {
        let Some(b) = self.nodes[i].broker.as_ref().filter(|b| b.is_ready()) else { return };
        let lows = self.acknowledged_deletions();
        let mut found = Vec::new();
        for v in b.partition_views().into_iter().filter(|v| v.topic == TOPIC && v.ready && v.role == runnel_actors::partition::Role::Leader) {
            let Some(&low) = lows.get(&v.index) else { continue };
            let newest =
                self.epoch_leaders.range((TOPIC.to_string(), v.index, i32::MIN)..=(TOPIC.to_string(), v.index, i32::MAX)).next_back().map(|(k, _)| k.2);
            if newest == Some(v.leader_epoch) && v.log_start_offset < low {
                found.push(format!(
                    "{TOPIC}-{}: node {} leads epoch {} from log start {}, below the acknowledged DeleteRecords low watermark {low}",
                    v.index,
                    i + 1,
                    v.leader_epoch,
                    v.log_start_offset
                ));
            }
        }
        for what in found {
            self.violation("deleted-records-stay-deleted", what);
        }
    }

    /// Per workload partition, the offset below which records are gone: the highest log start
    /// any ready replica has, and at least every acknowledged DeleteRecords.
    fn deleted_below(&self) -> BTreeMap<u64, i64> {
        let mut below: BTreeMap<u64, i64> = self.acknowledged_deletions().into_iter().map(|(p, low)| (p as u64, low)).collect();
        for b in self.nodes.iter().filter_map(|n| n.broker.as_ref()).filter(|b| b.is_ready()) {
            for v in b.partition_views().into_iter().filter(|v| v.topic == TOPIC && v.ready && v.log_start_offset > 0) {
                let l = below.entry(v.index as u64).or_insert(0);
                *l = (*l).max(v.log_start_offset);
            }
        }
        below
    }

    /// The metadata quorum: one Raft leader per term, committed entries never change.
    fn check_quorum(&mut self, i: usize) {
        let Some(c) = self.nodes[i].controller.as_ref() else { return };
        let node = i as i32 + 1;
        let mut found = Vec::new();
        if let Some((term, Some(leader), _)) = c.raft_view() {
            if leader == node && c.is_active() {
                let prev = *self.term_leaders.entry(term).or_insert(node);
                if prev != node {
                    found.push(("one-controller-per-term", format!("term {term}: active controllers {prev} and {node}")));
                }
            }
        }
        if let Err(e) = c.image().check() {
            found.push(("metadata-image", format!("node {node}: {e}")));
        }
        // Every voter's image at an offset is the same, whether it was built by applying
        // entries, loaded from a checkpoint or installed from the leader's snapshot.
        let offset = c.image().offset;
        let image_digest = (offset > self.nodes[i].image_checked).then(|| {
            let mut t = Trace::new();
            t.bytes(&c.image().encode());
            t.hash()
        });
        let checked = self.nodes[i].meta_checked;
        let fresh: Vec<(u64, u64)> = c
            .history()
            .rev()
            .take_while(|(o, _)| *o > checked)
            .map(|(o, r)| {
                let mut t = Trace::new();
                t.bytes(&bincode::serialize(r).expect("records serialise"));
                (*o, t.hash())
            })
            .collect();
        if let Some((newest, _)) = fresh.first() {
            self.nodes[i].meta_checked = *newest;
        }
        if let Some(h) = image_digest {
            let (digest, first) = *self.committed_images.entry(offset).or_insert((h, node));
            if digest != h {
                found.push(("metadata-image-agrees", format!("node {node}'s metadata image at offset {offset} differs from node {first}'s")));
            }
            self.nodes[i].image_checked = offset;
        }
        for (o, h) in fresh {
            let prev = *self.committed_meta.entry(o).or_insert(h);
            if prev != h {
                found.push(("metadata-log", format!("committed metadata entry {o} differs on node {node}")));
            }
        }
        for (checker, what) in found {
            self.violation(checker, what);
        }
    }

    /// DescribeQuorum answers describe the quorum that was: the leader named for an epoch is the
    /// node that was active controller in that term; the voters are the configured ones, the
    /// leader's own log end is the largest and reaches the high watermark, and a majority of
    /// voters reach it as far as the leader knows (a voter not heard from in the epoch is at -1);
    /// observers are non-voters and hold only committed metadata; and within an epoch the high
    /// watermark never goes back.
    fn check_quorum_answers(&mut self) {
        let Some(answers) = self.clients.iter().find_map(|c| if let ClientActor::Quorum(q) = &c.actor { Some(q.answers.clone()) } else { None }) else {
            return;
        };
        let voters: Vec<i32> =
            if self.controller_only > 0 { (1..=self.controller_only as i32).collect() } else { (1..=self.nodes.len().min(3) as i32).collect() };
        let majority = voters.len() / 2 + 1;
        let mut found = Vec::new();
        let mut last_hw: BTreeMap<i32, i64> = BTreeMap::new();
        for a in answers.iter().filter(|a| a.error == 0) {
            let at = a.at_ms;
            if let Some(&active) = self.term_leaders.get(&(a.epoch as u64)) {
                if active != a.leader {
                    found.push(format!("at {at} ms: epoch {} described as led by node {}, but node {active} was its active controller", a.epoch, a.leader));
                }
            }
            let ids: Vec<i32> = a.voters.iter().map(|v| v.0).collect();
            if ids != voters {
                found.push(format!("at {at} ms: voters {ids:?}, configured {voters:?}"));
            }
            let Some(&(_, leader_end, _, _)) = a.voters.iter().find(|v| v.0 == a.leader) else {
                found.push(format!("at {at} ms: the leader {} is not among the voters {ids:?}", a.leader));
                continue;
            };
            if a.high_watermark > leader_end || a.voters.iter().any(|v| v.1 > leader_end) {
                found.push(format!("at {at} ms: high watermark {} or a voter's log end past the leader's {leader_end}: {:?}", a.high_watermark, a.voters));
            }
            if a.voters.iter().filter(|v| v.1 >= a.high_watermark).count() < majority {
                found.push(format!("at {at} ms: high watermark {} reached by fewer than {majority} voters: {:?}", a.high_watermark, a.voters));
            }
            for &(id, end) in &a.observers {
                if voters.contains(&id) || end > a.high_watermark {
                    found.push(format!("at {at} ms: observer {id} (a voter: {}) at {end}, high watermark {}", voters.contains(&id), a.high_watermark));
                }
            }
            let prev = last_hw.insert(a.epoch, a.high_watermark).unwrap_or(i64::MIN);
            if a.high_watermark < prev {
                found.push(format!("at {at} ms: epoch {}'s high watermark went back from {prev} to {}", a.epoch, a.high_watermark));
            }
        }
        for what in found {
            self.violation("describe-quorum", what);
        }
    }

    /// Every ListOffsets-by-timestamp answer agrees with the log the partition ends with (the
    /// final leader's, from its log start: committed records never change, deleted ones are not
    /// judged): no record from the log start the leader gave just after (in the same epoch) to
    /// the answered offset has a timestamp at or after the target, the record at the answer has
    /// the answered timestamp, at or after the target; and "no such record" means none of those
    /// below the high watermark the leader gave just before has one.
    fn check_timestamp_answers(&mut self) {
        let Some((answers, latest)) =
            self.clients.iter().find_map(|c| if let ClientActor::Probe(p) = &c.actor { Some((p.answers.clone(), p.latest.clone())) } else { None })
        else {
            return;
        };
        let mut found = Vec::new();
        for p in 0..self.scenario.partitions {
            let dir = format!("{TOPIC}-{p}/");
            let leader = self.nodes.iter().find_map(|n| {
                let b = n.broker.as_ref().filter(|b| b.is_ready())?;
                let v = b
                    .partition_views()
                    .into_iter()
                    .find(|v| v.topic == TOPIC && v.index == p && v.ready && v.role == runnel_actors::partition::Role::Leader)?;
                Some((n, v.log_start_offset, v.log_end_offset))
            });
            let Some((node, log_start, log_end)) = leader else { continue };
            let bytes = segment_bytes(&node.disk, &dir);
            let mut log = bytes::Bytes::copy_from_slice(batches_from(&bytes, log_start).0);
            // Where each leader epoch began (its leader's log end at election: its first batch),
            // for the epochs whose first batch is still in the log after another epoch's.
            let mut epoch_starts: BTreeMap<i32, i64> = BTreeMap::new();
            let mut previous: Option<i32> = None;
            for (h, _) in runnel_actors::log::batch::iter_headers(&log) {
                if previous.is_some_and(|e| e != h.partition_leader_epoch) {
                    epoch_starts.entry(h.partition_leader_epoch).or_insert(h.base_offset);
                }
                previous = Some(h.partition_leader_epoch);
            }
            for &(at, _, epoch, offset) in latest.iter().filter(|l| l.1 == p) {
                if let Some(&start) = epoch_starts.get(&epoch).filter(|&&start| offset < start) {
                    found.push(format!(
                        "at {at} ms: {TOPIC}-{p}'s leader in epoch {epoch} answered high watermark {offset}, below its epoch's start {start} (OFFSET_NOT_AVAILABLE expected)"
                    ));
                }
            }
            let records: BTreeMap<i64, i64> = match kafka_protocol::records::RecordBatchDecoder::decode_all(&mut log) {
                Ok(sets) => sets
                    .iter()
                    .flat_map(|s| s.records.iter())
                    .filter(|r| r.offset >= log_start && r.offset < log_end)
                    .map(|r| (r.offset, r.timestamp))
                    .collect(),
                Err(e) => {
                    found.push(format!("{TOPIC}-{p}: the final leader's log does not decode: {e}"));
                    continue;
                }
            };
            for a in answers.iter().filter(|a| a.partition == p) {
                let bound = if a.offset >= 0 { a.offset } else { a.committed_before };
                if let Some((offset, ts)) = records.range(a.log_start_after..bound.max(a.log_start_after)).find(|(_, ts)| **ts >= a.target) {
                    found.push(format!(
                        "at {} ms: {TOPIC}-{p} answered offset {} for timestamp {}, but the record at offset {offset} (timestamp {ts}) comes first",
                        a.at_ms, a.offset, a.target
                    ));
                }
                if a.offset >= 0 {
                    match records.get(&a.offset) {
                        Some(&ts) if ts != a.timestamp || ts < a.target => found.push(format!(
                            "at {} ms: {TOPIC}-{p} answered offset {} with timestamp {} for {}, but that record's timestamp is {ts}",
                            a.at_ms, a.offset, a.timestamp, a.target
                        )),
                        None if a.offset >= log_end => {
                            found.push(format!("at {} ms: {TOPIC}-{p} answered offset {}, past the log end {log_end}", a.at_ms, a.offset))
                        }
                        _ => {}
                    }
                }
            }
        }
        for what in found {
            self.violation("list-offsets-by-time", what);
        }
    }

    /// Every ISR member holds at least what the leader exposes (checked every 500 ms).
    fn check_isr(&mut self) {
        let mut found = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(b) = n.broker.as_ref().filter(|b| b.is_ready()) else { continue };
            for v in b.partition_views().into_iter().filter(|v| v.role == runnel_actors::partition::Role::Leader && v.ready) {
                for m in v.isr.iter().filter(|m| **m != i as i32 + 1) {
                    let Some(other) = self.nodes.get((*m - 1) as usize).and_then(|o| o.broker.as_ref()).filter(|o| o.is_ready()) else { continue };
                    if let Some(f) = other
                        .partition_views()
                        .into_iter()
                        .find(|f| f.topic == v.topic && f.index == v.index && f.ready && f.role != runnel_actors::partition::Role::None)
                        // A member that knows a newer leader epoch answers to a newer leader: this
                        // one is deposed and its ISR stale (say, the member was moved away,
                        // deleted its copy, and was moved back since).
                        .filter(|f| f.leader_epoch <= v.leader_epoch)
                    {
                        if f.log_end_offset < v.high_watermark {
                            found.push(format!(
                                "{}-{}: leader {} exposes up to {} but ISR member {m} ends at {}",
                                v.topic,
                                v.index,
                                i + 1,
                                v.high_watermark,
                                f.log_end_offset
                            ));
                        }
                    }
                }
            }
        }
        for what in found {
            self.violation("high-watermark-within-isr", what);
        }
    }

    /// After the workload completes: every replica's log is a byte-identical prefix of the
    /// others', and a broker that is not a replica holds none of it.
    fn check_replicas_identical(&mut self) {
        let (mut found, mut strays, mut windows) = (Vec::new(), Vec::new(), Vec::new());
        let mut partitions: Vec<(&str, i32)> = (0..self.scenario.partitions).map(|p| (TOPIC, p)).collect();
        if self.scenario.group_consumers > 0 {
            // The coordinators' records are replicated like any other.
            partitions.extend((0..4).map(|p| (runnel_actors::group::OFFSETS_TOPIC, p)));
        }
        for (topic, p) in partitions {
            let dir = format!("{topic}-{p}/");
            let mut logs: Vec<(usize, Vec<u8>)> = Vec::new();
            // Only in-sync replicas (as the leader sees them) that caught up with the leader's
            // log end are compared: a replica outside the ISR may still hold a suffix it will
            // truncate on its next fetch.
            let leader = self
                .nodes
                .iter()
                .filter_map(|n| n.broker.as_ref())
                .flat_map(|b| b.partition_views())
                .find(|v| v.topic == topic && v.index == p && v.role == runnel_actors::partition::Role::Leader)
                .map(|v| (v.log_end_offset, v.isr.to_vec()));
            // A serving broker the metadata does not list as a replica has no file of it: a
            // replica moved away is deleted, directory and all, and one never assigned never had
            // a directory. Judged on the metadata the active controller has committed: a broker
            // whose image is behind it (a reassignment's completion it has only seen in an
            // AlterPartition answer, say) deletes the data once that metadata reaches it.
            let image = self.active_image();
            let committed = image.map(|i| i.offset).unwrap_or(u64::MAX);
            let assigned: Option<Vec<i32>> =
                image.and_then(|im| im.topics.get(topic)).and_then(|t| t.partitions.get(p as usize)).map(|info| info.replicas.clone());
            for (i, n) in self.nodes.iter().enumerate() {
                let Some(assigned) = &assigned else { break };
                if assigned.contains(&(i as i32 + 1)) || !n.broker.as_ref().is_some_and(|b| b.is_serving() && b.metadata_offset() >= committed) {
                    continue;
                }
                let files: Vec<String> =
                    n.disk.snapshot().iter().filter(|(path, _)| path.starts_with(&dir)).map(|(path, f)| format!("{path} ({} bytes)", f.len())).collect();
                if !files.is_empty() {
                    strays.push(format!("{topic}-{p}: node {} is not a replica (replicas {assigned:?}) but holds {}", i + 1, files.join(", ")));
                }
            }
            let Some((leader_end, isr)) = leader else { continue };
            for (i, n) in self.nodes.iter().enumerate() {
                let Some(b) = n.broker.as_ref().filter(|b| b.is_ready()) else { continue };
                let caught_up = b
                    .partition_views()
                    .iter()
                    .any(|v| v.topic == topic && v.index == p && v.role != runnel_actors::partition::Role::None && v.log_end_offset == leader_end);
                if !isr.contains(&(i as i32 + 1)) || !caught_up {
                    continue;
                }
                let bytes = segment_bytes(&n.disk, &dir);
                if topic == TOPIC {
                    if let Some(v) = b.partition_views().iter().find(|v| v.topic == topic && v.index == p) {
                        // The log is what lies at and above the log start: batches below it that
                        // a segment still holds are deleted, and so is their producer state (as
                        // in Kafka), which recovery does not replay.
                        if let Err(what) = producer_windows_match_log(batches_from(&bytes, v.log_start_offset).0, v.producers) {
                            windows.push(format!("{topic}-{p} on node {}: {what}", i + 1));
                        }
                    }
                }
                logs.push((i, bytes));
            }
            if topic == runnel_actors::group::OFFSETS_TOPIC {
                // Compacted: each replica's cleaner runs on its own schedule, so the bytes differ.
                // What must agree is every record both still hold, and the latest of every key.
                for w in logs.windows(2) {
                    if let Err(what) = same_compacted_log(&w[0].1, &w[1].1) {
                        found.push(format!("{topic}-{p}: compacted logs of nodes {} and {} disagree: {what}", w[0].0 + 1, w[1].0 + 1));
                    }
                }
                continue;
            }
            // Deletions (DeleteRecords, retention) remove whole segments from the start, on each
            // replica on its own schedule: compare from the first batch every replica still has.
            let common = logs.iter().map(|(_, bytes)| batches_from(bytes, i64::MIN).1).max().unwrap_or(0);
            let logs: Vec<(usize, &[u8])> = logs.iter().map(|(i, bytes)| (*i, batches_from(bytes, common).0)).collect();
            for w in logs.windows(2) {
                let len = w[0].1.len().min(w[1].1.len());
                if w[0].1[..len] != w[1].1[..len] {
                    let at = (0..len).find(|k| w[0].1[*k] != w[1].1[*k]).unwrap_or(len);
                    let around = |b: &[u8]| b[at.saturating_sub(12)..(at + 8).min(b.len())].to_vec();
                    found.push(format!(
                        "{topic}-{p}: logs of nodes {} and {} differ at byte {at} ({:?} vs {:?})",
                        w[0].0 + 1,
                        w[1].0 + 1,
                        around(w[0].1),
                        around(w[1].1)
                    ));
                }
            }
        }
        for what in found {
            self.violation("replicas-identical", what);
        }
        for what in strays {
            self.violation("stray-replica-deleted", what);
        }
        for what in windows {
            self.violation("producer-state-matches-log", what);
        }
    }

    fn client_step(&mut self, i: usize, f: impl FnOnce(&mut ClientActor, &mut Cx<ClientMsg>)) {
        let now_ms = self.now_us / 1000;
        let c = &mut self.clients[i];
        c.cx.set_time(now_ms, EPOCH_MS + now_ms as i64);
        f(&mut c.actor, &mut c.cx);
        let effects = c.cx.take_effects();
        let events = match &mut c.actor {
            ClientActor::Producer(p) => p.take_events(),
            ClientActor::Scripted(_) | ClientActor::Reassigner(_) | ClientActor::Deleter(_) | ClientActor::Quorum(_) | ClientActor::Probe(_) => Vec::new(),
            ClientActor::Consumer(c) => c.take_events(),
            ClientActor::Group(g) => g.take_events(),
        };
        for e in effects {
            match e {
                Effect::Send { to, msg: ClientMsg::Request(frame) } => {
                    let node = (to.node - 1) as usize;
                    let conn = self.client_conn(i, node);
                    self.send_to_node(conn, frame);
                }
                Effect::SetTimer { id, after_ms } => {
                    let c = &mut self.clients[i];
                    c.timer_generation += 1;
                    let generation = c.timer_generation;
                    c.timers.insert(id, generation);
                    self.after(after_ms * 1000, Ev::ClientTimer { client: i, id, generation });
                }
                Effect::CancelTimer { id } => {
                    self.clients[i].timers.remove(&id);
                }
                _ => {}
            }
        }
        let watch = self.watch_key;
        for ev in events {
            if let Some(k) = watch {
                let hit = match &ev {
                    ClientEvent::InvokeSend { key, .. } | ClientEvent::CompleteSend { key, .. } => *key == k,
                    ClientEvent::CompletePoll { reads, .. } => reads.contains_key(&k),
                    ClientEvent::GroupAssign { keys, .. } | ClientEvent::Assign { keys, .. } => keys.contains(&k) || keys.is_empty(),
                    ClientEvent::GroupCommit { key, .. } => *key == k,
                    _ => false,
                };
                if hit {
                    eprintln!("[{} ms] {ev:?}", self.now_us / 1000);
                }
            }
            match &ev {
                ClientEvent::InvokeSend { value, .. } => {
                    self.invoked_at.insert(*value, now_ms);
                }
                ClientEvent::CompleteSend { key, value, outcome: Ok(offset), .. } => {
                    let a = self.acked.entry(*key).or_insert(-1);
                    *a = (*a).max(*offset);
                    if let Some(start) = self.invoked_at.remove(value) {
                        self.produce_latencies.push((now_ms, now_ms - start));
                    }
                }
                ClientEvent::CompleteSend { outcome: Err(e), .. } if *e == format!("error {}", runnel_actors::broker::error::OUT_OF_ORDER_SEQUENCE_NUMBER) => {
                    // OUT_OF_ORDER_SEQUENCE_NUMBER: the leader's producer state does not follow
                    // this producer's last batch in its log.
                    *self.protocol.entry("produce-out-of-order-sequence".into()).or_default() += 1;
                }
                ClientEvent::Violation { what, process, .. } => self.violation("client", format!("process {process}: {what}")),
                ClientEvent::GroupAssign { group, generation, member, keys, .. } => self.check_group_assign(group, *generation, member, keys),
                ClientEvent::GroupCommit { group, key, offset, generation, process, .. } => {
                    self.check_group_commit(group, *key, *offset, *generation, *process)
                }
                _ => {}
            }
            self.history.push(ev);
        }
    }

    /// One owner per partition per generation: no two members of a generation were handed the
    /// same partition.
    fn check_group_assign(&mut self, group: &str, generation: i32, member: &str, keys: &[u64]) {
        *self.protocol.entry("group-assignments".into()).or_default() += 1;
        let newest = self.protocol.entry("group-generations".into()).or_default();
        *newest = (*newest).max(generation.max(0) as u64);
        let owners = self.group_owners.entry((group.to_string(), generation)).or_default();
        let mut clashes = Vec::new();
        for k in keys {
            match owners.get(k) {
                Some(m) if m != member => clashes.push(format!("partition {k}: {m} and {member}")),
                _ => {
                    owners.insert(*k, member.to_string());
                }
            }
        }
        if !clashes.is_empty() {
            self.violation(
                "one-owner-per-generation",
                format!("group {group} generation {generation} gave a partition to two members: {}", clashes.join("; ")),
            );
        }
    }

    /// An acknowledged commit never names an offset past what the partition ever exposed.
    fn check_group_commit(&mut self, group: &str, key: u64, offset: i64, generation: i32, process: u64) {
        *self.protocol.entry("group-commits".into()).or_default() += 1;
        let high = self.hw_high.get(&key).copied().unwrap_or(0);
        if offset > high {
            self.violation(
                "commit-within-high-watermark",
                format!("group {group} partition {key}: process {process} (generation {generation}) committed offset {offset}, above every high watermark so far ({high})"),
            );
        }
    }

    /// The coordinators on node `i`: within one loading of a shard committed offsets only move
    /// forward (members start from what is committed, so a lower commit is a zombie's), and a
    /// freshly loaded shard knows every offset any coordinator applied before it began loading.
    fn check_group_offsets(&mut self, i: usize) {
        let Some(b) = self.nodes[i].broker.as_ref() else { return };
        let c = b.groups();
        let mut found = Vec::new();
        let groups: Vec<String> = c.group_states().into_iter().map(|(g, ..)| g).collect();
        for (shard, active) in c.owned() {
            let Some(tenure) = c.tenure(shard) else { continue };
            if !active {
                if !self.load_floors.contains_key(&(i, shard, tenure)) {
                    let floor = self.offsets_applied.iter().filter(|((g, _, _), _)| c.shard_of(g) == shard).map(|(k, v)| (k.clone(), *v)).collect();
                    self.load_floors.insert((i, shard, tenure), floor);
                }
                continue;
            }
            let floor = self.load_floors.remove(&(i, shard, tenure));
            // KIP-848: at no moment do two members own (or revoke) one partition.
            let mut owner: BTreeMap<(String, String, i32), String> = BTreeMap::new();
            for (g, t, p, m) in c.consumer_owners().into_iter().filter(|(g, ..)| c.shard_of(g) == shard) {
                if let Some(other) = owner.insert((g.clone(), t.clone(), p), m.clone()) {
                    found.push(("one-owner-at-a-time", format!("node {} group {g}: {t}-{p} is held by {other} and {m}", i + 1)));
                }
            }
            let mut loaded: BTreeMap<OffsetKey, i64> = BTreeMap::new();
            for g in groups.iter().filter(|g| c.shard_of(g) == shard) {
                for ((topic, p), offset) in c.committed(g).unwrap_or_default() {
                    loaded.insert((g.clone(), topic, p), offset);
                }
            }
            if let Some(floor) = floor {
                for (k, v) in floor {
                    match loaded.get(&k) {
                        Some(o) if *o >= v => {}
                        got => found.push((
                            "committed-offsets-durable",
                            format!("node {} loaded {}-{} of group {} as {got:?}, but offset {v} was committed before", i + 1, k.1, k.2, k.0),
                        )),
                    }
                }
            }
            for (k, offset) in loaded {
                let seen = self.coord_seen.insert((i, k.0.clone(), k.1.clone(), k.2), (tenure, offset));
                if let Some((t, prev)) = seen.filter(|(t, prev)| *t == tenure && offset < *prev) {
                    found.push((
                        "committed-offsets-monotonic",
                        format!("node {} group {} {}-{}: committed offset went from {prev} to {offset} (tenure {t})", i + 1, k.0, k.1, k.2),
                    ));
                }
                let high = self.offsets_applied.entry(k).or_insert(offset);
                *high = (*high).max(offset);
            }
        }
        for (checker, what) in found {
            self.violation(checker, what);
        }
    }

    fn client_conn(&mut self, client: usize, node: usize) -> u64 {
        if let Some(c) = self.clients[client].conns.get(&node) {
            return *c;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let incarnation = self.nodes[node].incarnation;
        self.conns.insert(
            id,
            Conn {
                client,
                node,
                node_incarnation: incarnation,
                alive: true,
                next_request_seq: 0,
                to_node_at_us: 0,
                to_client_at_us: 0,
                replies: BTreeMap::new(),
                next_reply_seq: 0,
                held_to_node: VecDeque::new(),
                held_to_client: VecDeque::new(),
            },
        );
        self.clients[client].conns.insert(node, id);
        if self.nodes[node].broker.is_none() {
            // Connection refused: the client learns at once.
            self.reset_conn(id, true, false);
        }
        id
    }

    fn send_to_node(&mut self, conn: u64, frame: Bytes) {
        let latency = self.net.latency_us(&mut self.rng);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.alive {
            return;
        }
        if self.net.is_clogged(Endpoint::Client(c.client), Endpoint::Node(c.node)) {
            c.held_to_node.push_back(frame);
            return;
        }
        c.to_node_at_us = c.to_node_at_us.max(self.now_us + latency);
        let when = c.to_node_at_us;
        self.at(when, Ev::NodeRequest { conn, frame });
    }

    fn send_to_client(&mut self, conn: u64, frame: Bytes) {
        let latency = self.net.latency_us(&mut self.rng);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if self.net.is_clogged(Endpoint::Node(c.node), Endpoint::Client(c.client)) {
            c.held_to_client.push_back(frame);
            return;
        }
        c.to_client_at_us = c.to_client_at_us.max(self.now_us + latency);
        let when = c.to_client_at_us;
        self.at(when, Ev::ClientResponse { conn, frame });
    }

    /// Break a connection; tell the client and/or the broker after a network delay.
    fn reset_conn(&mut self, conn: u64, tell_client: bool, tell_node: bool) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.alive {
            return;
        }
        c.alive = false;
        let (client, node, incarnation) = (c.client, c.node, c.node_incarnation);
        let delay = self.net.latency_us(&mut self.rng);
        if tell_client {
            self.after(delay, Ev::ClientDisconnected { client, node, conn });
        } else {
            // Closed by the broker: the client sees the close after the replies sent before it.
            let at = self.conns[&conn].to_client_at_us.max(self.now_us) + delay;
            self.at(at, Ev::ClientDisconnected { client, node, conn });
        }
        if tell_node {
            self.after(delay, Ev::NodeDisconnected { node, incarnation, conn });
        }
        self.conns.remove(&conn);
    }

    fn node_down(&mut self, i: usize, power_loss: bool) {
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        n.broker = None;
        // The whole process is gone: its controller must not answer what is sent meanwhile.
        n.controller = None;
        n.timers.clear();
        n.paused_until_us = 0;
        if power_loss {
            n.disk.crash(&mut self.rng);
        }
        let conns: Vec<u64> = self.conns.iter().filter(|(_, c)| c.node == i).map(|(id, _)| *id).collect();
        for c in conns {
            self.reset_conn(c, true, false);
        }
    }

    fn apply_fault(&mut self, f: Fault) {
        match f {
            Fault::Crash(i) => {
                if !self.nodes[i].is_up() {
                    return;
                }
                self.fired("crash", format!("node {} crashes", i + 1));
                self.node_down(i, true);
                self.nodes[i].restart_pending = true;
                let delay = 100_000 + self.rng.below(3_000_000);
                self.after(delay, Ev::Restart(i));
            }
            Fault::Pause(i, ms) => {
                if self.nodes[i].is_up() && self.nodes[i].paused_until_us <= self.now_us {
                    self.fired("pause", format!("node {} pauses for {ms} ms", i + 1));
                    self.nodes[i].paused_until_us = self.now_us + ms * 1000;
                }
            }
            Fault::CrashClient(c) => {
                let ClientActor::Group(old) = &mut self.clients[c].actor else { return };
                let seen = std::mem::take(&mut old.seen);
                let last_words = old.crash(self.now_us / 1000);
                self.history.extend(last_words);
                let process = (self.scenario.producers + self.scenario.consumers) as u64 + (c - self.scenario.producers - self.scenario.consumers) as u64;
                self.fired("client-crash", format!("group consumer {c} crashes"));
                let conns: Vec<u64> = std::mem::take(&mut self.clients[c].conns).into_values().collect();
                for conn in conns {
                    self.reset_conn(conn, false, true);
                }
                let bootstrap: Vec<Addr> = (self.controller_only..self.controller_only + self.scenario.nodes).map(node_addr).collect();
                let mut fresh = GroupConsumer::new(group_config(process, &bootstrap, self.scenario.consumer_protocol));
                fresh.seen = seen;
                let cl = &mut self.clients[c];
                cl.actor = ClientActor::Group(Box::new(fresh));
                cl.timers.clear();
                cl.timer_generation += 1;
                let delay = 200_000 + self.rng.below(3_000_000);
                self.after(delay, Ev::ClientRestart(c));
            }
            Fault::ResetClient(c) => {
                let conns: Vec<u64> = self.clients[c].conns.values().copied().filter(|id| self.conns.contains_key(id)).collect();
                if let Some(conn) = conns.first() {
                    self.fired("conn-reset", format!("client {c} connection reset"));
                    self.reset_conn(*conn, true, true);
                }
            }
            Fault::Clog(from, to) => {
                let kind = if self.net.is_clogged(to, from) { "partition" } else { "partition-one-way" };
                self.fired(kind, format!("link {from:?} -> {to:?} clogged"));
                self.net.clog(from, to);
            }
            Fault::Unclog(from, to) => {
                self.fault_log.push((self.now_us / 1000, format!("link {from:?} -> {to:?} healed")));
                self.unclog(from, to);
            }
            Fault::Begins(kind) => self.fired(kind, format!("{kind} begins")),
            Fault::ClockJump(i, ms) => {
                self.fired("clock-jump", format!("node {} wall clock jumps {ms} ms", i + 1));
                self.nodes[i].wall_offset_ms += ms;
            }
        }
    }

    fn unclog(&mut self, from: Endpoint, to: Endpoint) {
        self.net.unclog(from, to);
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let c = &self.conns[&id];
            let (client, node) = (Endpoint::Client(c.client), Endpoint::Node(c.node));
            if (from, to) == (client, node) {
                let held: Vec<Bytes> = self.conns.get_mut(&id).expect("conn").held_to_node.drain(..).collect();
                for f in held {
                    self.send_to_node(id, f);
                }
            } else if (from, to) == (node, client) {
                let held: Vec<Bytes> = self.conns.get_mut(&id).expect("conn").held_to_client.drain(..).collect();
                for f in held {
                    self.send_to_client(id, f);
                }
            }
        }
    }

    /// Faults end: links heal, paused nodes resume, downed nodes restart, disks and the network
    /// stop misbehaving. From here on the workload must complete (liveness).
    fn heal(&mut self) {
        self.healed = true;
        self.fault_log.push((self.now_us / 1000, "faults heal".into()));
        let clogged: Vec<(Endpoint, Endpoint)> = self.net.clogged().copied().collect();
        for (from, to) in clogged {
            self.unclog(from, to);
        }
        self.net.faults = Default::default();
        for i in 0..self.nodes.len() {
            self.nodes[i].disk.faults = Default::default();
            self.nodes[i].paused_until_us = self.nodes[i].paused_until_us.min(self.now_us);
            if !self.nodes[i].is_up() && !self.nodes[i].restart_pending {
                self.start_node(i);
            }
        }
        runnel_actors::core::bugs::set_buggify(false);
    }

    /// The metadata image of the active controller, if one is active (of the newest term, if an
    /// old leader cut off from the quorum still thinks it is active).
    fn active_image(&self) -> Option<&runnel_actors::controller::image::MetadataImage> {
        self.nodes
            .iter()
            .filter_map(|n| n.controller.as_ref())
            .filter(|c| c.is_active())
            .max_by_key(|c| c.raft_view().map_or(0, |(term, _, _)| term))
            .map(|c| c.image())
    }

    /// After the heal, once the cluster has recovered (an active controller whose image has every
    /// partition's whole replica set in sync, and the workload's topics exist), the scenario's `lost_at_heal` broker nodes, chosen
    /// by the seed, crash and never come back: the others must carry on without them. Losing a
    /// node while it is a partition's only in-sync replica takes that partition offline, as in
    /// Kafka without unclean election, so the loss waits for full ISRs, and for no voter to hold
    /// uncommitted metadata records: an ISR shrink an old leader proposed, committed by the next
    /// one after the loss, would otherwise leave the lost node a partition's only in-sync
    /// replica after all (cluster-3-node-lost seed 1107251).
    fn maybe_lose_nodes(&mut self) {
        if !self.healed || self.lost_done || self.scenario.lost_at_heal == 0 {
            return;
        }
        if self.nodes.iter().filter_map(|n| n.controller.as_ref()).any(|c| c.uncommitted_entries() > 0) {
            return;
        }
        let Some(image) = self.active_image() else { return };
        let all_in_sync = image.topics.values().flat_map(|t| &t.partitions).all(|p| p.isr.len() == p.replicas.len());
        // Group scenarios also wait for the offsets topic: created after the loss, it would need
        // more live brokers than its replication factor leaves (Kafka refuses that too, and the
        // group could never form; groups-3-node-lost seed 3091).
        let workload_topic =
            image.topics.contains_key(TOPIC) && (self.scenario.group_consumers == 0 || image.topics.contains_key(runnel_actors::group::OFFSETS_TOPIC));
        if !all_in_sync || !workload_topic || !self.nodes.iter().all(|n| n.is_up()) {
            return;
        }
        self.lost_done = true;
        let brokers: Vec<usize> = (self.controller_only..self.controller_only + self.scenario.nodes).collect();
        for _ in 0..self.scenario.lost_at_heal.min(brokers.len()) {
            let left: Vec<usize> = brokers.iter().copied().filter(|i| !self.nodes[*i].lost).collect();
            let i = left[self.rng.below(left.len() as u64) as usize];
            self.fired("node-lost", format!("node {} is lost for good", i + 1));
            *self.protocol.entry("node-lost-for-good".to_string()).or_default() += 1;
            if self.nodes[i].is_up() {
                self.node_down(i, true);
            }
            self.nodes[i].lost = true;
        }
    }

    /// Every acknowledged value, per key, but those deleted since (below the log start).
    fn all_acked(&self) -> BTreeMap<u64, Vec<u64>> {
        let deleted_below = self.deleted_below();
        let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for e in &self.history {
            if let ClientEvent::CompleteSend { key, value, outcome: Ok(offset), .. } = e {
                if deleted_below.get(key).is_none_or(|below| offset >= below) {
                    out.entry(*key).or_default().push(*value);
                }
            }
        }
        out
    }

    fn missing_reads(&self) -> String {
        let acked = self.all_acked();
        let mut parts = Vec::new();
        for c in &self.clients {
            match &c.actor {
                ClientActor::Consumer(consumer) => {
                    let missing: usize = acked.iter().map(|(k, vs)| vs.iter().filter(|v| !consumer.seen.get(k).is_some_and(|s| s.contains(v))).count()).sum();
                    if missing > 0 {
                        parts.push(format!("a consumer has not read {missing} acknowledged records"));
                    }
                }
                ClientActor::Producer(p) => {
                    if !p.is_done(self.now_us / 1000) {
                        parts.push("a producer still has unanswered sends".into());
                    }
                }
                ClientActor::Scripted(s) => {
                    if !s.is_done() {
                        parts.push("the script is not finished".into());
                    }
                }
                ClientActor::Group(_) | ClientActor::Reassigner(_) | ClientActor::Deleter(_) | ClientActor::Quorum(_) | ClientActor::Probe(_) => {}
            }
        }
        let groups: Vec<&GroupConsumer> =
            self.clients.iter().filter_map(|c| if let ClientActor::Group(g) = &c.actor { Some(g.as_ref()) } else { None }).collect();
        if !groups.is_empty() {
            // Together the group's members read everything, and the newest generation owns
            // every partition.
            let unread: Vec<(u64, u64)> = acked
                .iter()
                .flat_map(|(k, vs)| vs.iter().filter(|v| !groups.iter().any(|g| g.seen.get(k).is_some_and(|s| s.contains(v)))).map(move |v| (*k, *v)))
                .collect();
            if !unread.is_empty() {
                parts.push(format!("the group has not read {} acknowledged records (first: value {} of partition {})", unread.len(), unread[0].1, unread[0].0));
            }
            let newest = groups.iter().map(|g| g.owned().0).max().unwrap_or(-1);
            let owned: BTreeSet<i32> = groups.iter().filter(|g| g.owned().0 == newest).flat_map(|g| g.owned().1.iter().copied()).collect();
            if owned.len() != self.scenario.partitions as usize {
                parts.push(format!("generation {newest} of the group owns partitions {owned:?} of {}", self.scenario.partitions));
            }
        }
        if self.scenario.lost_at_heal > 0 && !self.lost_done {
            parts.push("the cluster never had every replica in sync again to lose a node".into());
        }
        // Every node serves again, but those lost for good: as it sees itself, and unfenced as
        // the active controller sees it (a broker that lost its way to the controller keeps an
        // old, unfenced image of itself).
        let active = self.active_image();
        let cluster = self.nodes.len() > 1;
        let down = |(i, n): &(usize, &Node)| {
            !n.lost
                && match &n.config {
                    Some(_) => {
                        n.broker.as_ref().is_none_or(|b| !b.is_serving())
                            || (cluster && active.is_none_or(|image| image.brokers.get(&(*i as i32 + 1)).is_none_or(|b| b.fenced)))
                    }
                    None => n.controller.is_none(),
                }
        };
        let which: Vec<usize> = self.nodes.iter().enumerate().filter(down).map(|(i, _)| i + 1).collect();
        if !which.is_empty() {
            parts.push(format!("nodes {which:?} are not up, or fenced"));
        }
        parts.join("; ")
    }

    fn check_completion(&mut self) {
        if !self.healed {
            return;
        }
        if self.missing_reads().is_empty() {
            self.completed = true;
        }
    }
}

fn client_message(a: &mut ClientActor, cx: &mut Cx<ClientMsg>, from: Addr, msg: ClientMsg) {
    match a {
        ClientActor::Producer(p) => p.on_message(cx, from, msg),
        ClientActor::Scripted(s) => s.on_message(cx, from, msg),
        ClientActor::Reassigner(r) => r.on_message(cx, from, msg),
        ClientActor::Deleter(d) => d.on_message(cx, from, msg),
        ClientActor::Quorum(q) => q.on_message(cx, from, msg),
        ClientActor::Probe(p) => p.on_message(cx, from, msg),
        ClientActor::Consumer(c) => c.on_message(cx, from, msg),
        ClientActor::Group(g) => g.on_message(cx, from, msg),
    }
}

/// A record of a compacted log: key, value (`None`: a tombstone).
type KeyedRecord = (Vec<u8>, Option<Vec<u8>>);

/// The records of a log's bytes by offset, and the offset after its last batch.
fn compacted_records(bytes: &[u8]) -> Result<(BTreeMap<i64, KeyedRecord>, i64), String> {
    let data = bytes::Bytes::copy_from_slice(bytes);
    let mut out = BTreeMap::new();
    let mut end = None;
    for (header, range) in runnel_actors::log::batch::iter_headers(&data) {
        if end.is_some_and(|e| e != header.base_offset) {
            return Err(format!("batch at {} does not follow {end:?}", header.base_offset));
        }
        end = Some(header.next_offset());
        let batch = &data[range];
        let records = runnel_actors::log::cleaner::records(batch, &header).ok_or_else(|| format!("batch at {} cannot be walked", header.base_offset))?;
        for r in records {
            let key = r.key.map(|k| batch[k].to_vec()).unwrap_or_default();
            out.insert(r.offset, (key, r.value.map(|v| batch[v].to_vec())));
        }
    }
    Ok((out, end.unwrap_or(0)))
}

/// Two caught-up replicas of a compacted log agree: same end, the same record wherever both hold
/// one, and the same latest record of every key (a tombstone and no record are the same).
/// An in-sync replica's idempotent-producer windows agree with its log: for every producer, the
/// window ends with the producer's last batches in the log (up to five, of its latest epoch), so
/// a retry is recognised and the next sequence accepted wherever leadership goes. (Kafka
/// rebuilds this state from the log; runnel keeps it in memory, through truncations.)
fn producer_windows_match_log(log: &[u8], windows: &BTreeMap<i64, runnel_actors::partition::ProducerEntry>) -> Result<(), String> {
    // Per producer: the epoch of its newest batches and their (first, last sequence, first, last offset).
    type Batches = (i16, Vec<(i32, i32, i64, i64)>);
    let mut in_log: BTreeMap<i64, Batches> = BTreeMap::new();
    let mut at = 0;
    while at < log.len() {
        let Ok(h) = runnel_actors::log::batch::check_one(&log[at..]) else { break };
        at += h.total_len();
        if h.producer_id < 0 {
            continue;
        }
        let entry = in_log.entry(h.producer_id).or_insert((h.producer_epoch, Vec::new()));
        if entry.0 != h.producer_epoch {
            *entry = (h.producer_epoch, Vec::new());
        }
        entry.1.push((h.base_sequence, h.last_sequence(), h.base_offset, h.last_offset()));
    }
    for (pid, (epoch, batches)) in in_log {
        let expected = &batches[batches.len().saturating_sub(runnel_actors::partition::PRODUCER_BATCH_WINDOW)..];
        let Some(window) = windows.get(&pid) else {
            return Err(format!("producer {pid} has batches in the log but no window"));
        };
        let actual: Vec<(i32, i32, i64, i64)> = window.batches.iter().map(|b| (b.first_sequence, b.last_sequence, b.first_offset, b.last_offset)).collect();
        if window.epoch != epoch || !actual.ends_with(expected) {
            return Err(format!("producer {pid}: the log ends with epoch {epoch} batches {expected:?}, the window is epoch {} {actual:?}", window.epoch));
        }
    }
    Ok(())
}

/// The `.log` files under `dir` on `disk`, concatenated in offset order (the snapshot is sorted
/// by path, and segment names are zero-padded base offsets): the partition's log.
fn segment_bytes(disk: &SimDisk, dir: &str) -> Vec<u8> {
    disk.snapshot().into_iter().filter(|(path, _)| path.starts_with(dir) && path.ends_with(".log")).flat_map(|(_, f)| f).collect()
}

/// The bytes of `log` (concatenated batches) from its first batch that ends at or above offset
/// `from`, and the base offset of its first batch (0 for an empty log).
fn batches_from(log: &[u8], from: i64) -> (&[u8], i64) {
    let mut at = 0;
    let mut first = None;
    while at < log.len() {
        let Ok(h) = runnel_actors::log::batch::check_one(&log[at..]) else { break };
        first.get_or_insert(h.base_offset);
        if h.last_offset() >= from {
            break;
        }
        at += h.total_len();
    }
    (&log[at..], first.unwrap_or(0))
}

fn same_compacted_log(a: &[u8], b: &[u8]) -> Result<(), String> {
    let (a, a_end) = compacted_records(a)?;
    let (b, b_end) = compacted_records(b)?;
    if a_end != b_end {
        return Err(format!("ends {a_end} and {b_end}"));
    }
    for (offset, record) in &a {
        if b.get(offset).is_some_and(|other| other != record) {
            return Err(format!("different records at offset {offset}"));
        }
    }
    let latest = |log: &BTreeMap<i64, KeyedRecord>| {
        let mut latest: BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> = BTreeMap::new();
        for (offset, (key, value)) in log {
            latest.insert(key.clone(), (*offset, value.clone()));
        }
        latest.retain(|_, (_, value)| value.is_some());
        latest
    };
    let (la, lb) = (latest(&a), latest(&b));
    if la != lb {
        let key = la.keys().chain(lb.keys()).find(|k| la.get(*k) != lb.get(*k)).cloned().unwrap_or_default();
        return Err(format!("latest record of key {key:?}: {:?} vs {:?}", la.get(&key).map(|l| l.0), lb.get(&key).map(|l| l.0)));
    }
    Ok(())
}
