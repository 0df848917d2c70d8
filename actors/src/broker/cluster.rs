//! The broker as a member of the cluster: registration, heartbeats and fencing, following the
//! metadata log, forwarding admin operations to the active controller, and replication —
//! fetching from partition leaders as a follower, serving followers and managing the ISR as a
//! leader.
//!
//! Controller RPCs go to the voter believed to lead the quorum; a NOT_CONTROLLER answer names the
//! leader or makes the broker try the next voter. Every RPC has a timeout after which it is
//! forgotten and retried by the housekeeping tick, so a lost message only costs time.
//!
//! Replication (Kafka's KIP-101/KIP-279/KIP-320 rules): a follower sends one [`ReplicaFetch`]
//! per leader with, per partition, its log end, its durable offset, the epoch of its last batch
//! and the leader epoch it believes current. The leader answers FENCED_LEADER_EPOCH /
//! UNKNOWN_LEADER_EPOCH on an epoch mismatch, a diverging (epoch, end offset) when the follower's
//! log does not match its own — the follower truncates and asks again — and otherwise the
//! batches after the fetch offset. The leader's high watermark is the minimum durable offset over
//! the ISR; a follower that has not caught up for `replica.lag.time.max.ms` is shrunk out of the
//! ISR, one that has caught up is added back, both through AlterPartition.

use super::admin::AdminResponse;
use super::{error, Broker, BrokerMsg};
use crate::broker::codec::Request;
use crate::controller::image::{MetadataImage, MetadataRecord, PartitionInfo, NO_LEADER};
use crate::controller::rpc::{
    AdminOp, ControllerRequest, ControllerResponse, ImageChunk, PeerMsg, ReplicaFetch, ReplicaFetchPartition, ReplicaFetchPartitionResponse,
    ReplicaFetchResponse, BROKER_ACTOR, CONTROLLER_ACTOR,
};
use crate::core::{Addr, ConnId, Cx, TimerId};
use crate::log::ReadStart;
use crate::partition::{FollowerState, Role};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use uuid::Uuid;

/// How long a controller RPC may stay unanswered.
const RPC_TIMEOUT_MS: u64 = 800;
/// How long a broker waits before registering again after DUPLICATE_BROKER_REGISTRATION.
const REGISTER_RETRY_MS: u64 = 250;
/// A broker still unregistered this long after it began says so (again every as long).
const REGISTER_WARN_MS: u64 = 5_000;
/// How long a replica fetch may stay unanswered before it is sent again.
const REPLICA_FETCH_TIMEOUT_MS: u64 = 2_000;
/// Bytes per partition in one replica fetch.
const REPLICA_FETCH_PARTITION_BYTES: u64 = 1 << 20;
/// Timer ids at and above this are replica-fetch deadlines (below: client fetch deadlines).
pub(crate) const REPLICA_TIMER_BASE: u64 = 1 << 62;

#[derive(Clone, Debug)]
enum Rpc {
    Register,
    Heartbeat,
    FetchMetadata,
    AlterPartition(String, i32),
    ProducerIds,
    Admin(u64, usize),
    /// A DescribeQuorum forwarded to the active controller (its key in `quorum_waiting`).
    DescribeQuorum(u64),
    Forget,
}

/// A client's DescribeQuorum, forwarded to the active controller.
pub(crate) struct QuorumWait {
    conn: ConnId,
    seq: u64,
    request: Box<Request>,
    /// Forwards sent so far: a voter that is not the controller names the one that is, and the
    /// request goes there, a few times at most.
    attempts: u32,
}

/// Forwards of one DescribeQuorum before the broker answers the controller's error itself.
const QUORUM_ATTEMPTS: u32 = 4;

/// A response waiting for controller answers and for the metadata they produce.
pub(crate) struct AdminBatch {
    conn: ConnId,
    seq: u64,
    request: Box<Request>,
    response: AdminResponse,
    outstanding: usize,
    /// The highest metadata offset the controller reported for these operations.
    min_offset: u64,
    /// Names of created topics whose ids go into the response.
    created: Vec<(usize, String)>,
}

/// Whether a replica fetch's answer for a partition is settled: records, an error, a truncation
/// or out-of-range. A settled partition is not read again, answers a parked fetch at once, and
/// is always in the answer.
fn settled(r: &ReplicaFetchPartitionResponse) -> bool {
    r.error != error::NONE || r.diverging.is_some() || r.out_of_range || !r.records.is_empty()
}

/// Follower side: the fetch session with one leader.
#[derive(Default)]
struct OutSession {
    /// The leader's id for it; 0 until a full fetch is answered.
    id: u64,
    /// The epoch of the next incremental fetch.
    next_epoch: u32,
    /// Every partition's entry as last sent, by partition uid: (topic, index, entry).
    sent: BTreeMap<u64, (String, i32, FetchState)>,
}

/// A follower's replica fetches, counted (see [`crate::broker::Broker::fetch_session_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchSessionStats {
    /// Full fetches (every partition named): a session's first, and each start-over.
    pub full: u64,
    /// Incremental fetches.
    pub incremental: u64,
    /// Partitions the incremental fetches named (changed entries).
    pub incremental_partitions: u64,
    /// Partitions their sessions held (what full fetches would have named).
    pub session_partitions: u64,
    /// Sessions a leader refused (a fetch of the session lost or reordered, or the leader
    /// restarted): each costs a full fetch.
    pub refused: u64,
}

/// A follower's fetch entry for one partition, without its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FetchState {
    leader_epoch: i32,
    fetch_offset: i64,
    durable_offset: i64,
    log_start_offset: i64,
    last_fetched_epoch: i32,
    high_watermark: i64,
    leader_log_start_offset: i64,
}

impl FetchState {
    fn entry(&self, topic: &str, index: i32) -> ReplicaFetchPartition {
        ReplicaFetchPartition {
            topic: topic.to_string(),
            index,
            leader_epoch: self.leader_epoch,
            fetch_offset: self.fetch_offset,
            durable_offset: self.durable_offset,
            log_start_offset: self.log_start_offset,
            last_fetched_epoch: self.last_fetched_epoch,
            high_watermark: self.high_watermark,
            leader_log_start_offset: self.leader_log_start_offset,
        }
    }
}

/// Leader side: a follower's fetch session.
struct InSession {
    id: u64,
    /// The follower's broker epoch when the session began.
    broker_epoch: i64,
    /// The epoch the next fetch must carry.
    next_epoch: u32,
    /// The follower's entry for each partition of the session.
    parts: BTreeMap<(String, i32), Arc<ReplicaFetchPartition>>,
}

/// Leader side: a follower's fetch being served.
struct ServingFetch {
    from: Addr,
    id: u64,
    /// The session it belongs to (0: refused, answered empty).
    session_id: u64,
    /// Each partition of the session and its answer (named only if it is sent).
    parts: Vec<(Arc<ReplicaFetchPartition>, ReplicaFetchPartitionResponse)>,
    outstanding: usize,
    deadline_ms: u64,
    parked: bool,
}

/// The broker's cluster state.
pub(crate) struct Cluster {
    pub(crate) image: MetadataImage,
    /// An image arriving from the controller in chunks (`bytes` holds its first part).
    image_transfer: Option<ImageChunk>,
    /// Image chunks taken from the controller.
    pub(crate) image_chunks: u64,
    /// The controller's committed offset as of the last metadata answer.
    controller_offset: u64,
    pub(crate) epoch: i64,
    incarnation: u64,
    /// No registration before this (monotonic ms): the last one was refused as a duplicate.
    register_after_ms: u64,
    /// When this broker last had no registration and began to seek one, and when it last
    /// warned that it still has none (monotonic ms).
    unregistered_since_ms: Option<u64>,
    register_warned_ms: u64,
    pub(crate) controller: Option<i32>,
    rotate: usize,
    next_rpc: u64,
    rpcs: BTreeMap<u64, (Rpc, u64, i32)>,
    last_heartbeat_ms: u64,
    pub(crate) fenced: bool,
    pub(crate) admin: BTreeMap<u64, AdminBatch>,
    /// Follower side: the fetch in flight to each leader (id, sent at).
    fetching: BTreeMap<i32, (u64, u64)>,
    /// Follower side: the fetch session with each leader.
    out_sessions: BTreeMap<i32, OutSession>,
    /// Leader side: the newest (broker epoch, fetch id) seen from each follower.
    fetch_seen: BTreeMap<i32, (i64, u64)>,
    /// Leader side: each follower's fetch session.
    in_sessions: BTreeMap<i32, InSession>,
    /// Follower side: what the fetch sessions saved.
    pub(crate) session_stats: FetchSessionStats,
    /// Leader side.
    serving: BTreeMap<u64, ServingFetch>,
    serving_reads: BTreeMap<u64, (u64, usize)>,
    serving_watch: super::watch::Watches,
    pid_requested: bool,
    /// Shut down gracefully: leadership moved away.
    pub(crate) shutdown_requested: bool,
    pub(crate) shutdown_ready: bool,
    /// Became serving once (clients are answered from then on).
    pub(crate) started_serving: bool,
    /// Admin batches answered by the controller, waiting for their metadata offset.
    admin_waiting: Vec<(u64, u64)>,
    quorum_waiting: BTreeMap<u64, QuorumWait>,
    /// The registration epoch whose node-to-node address was last given to the driver, per
    /// broker.
    announced: BTreeMap<i32, i64>,
    /// Replicas whose data was deleted because the metadata moved them away.
    pub(crate) strays_deleted: u64,
}

impl Cluster {
    pub(crate) fn new() -> Self {
        Cluster {
            image: MetadataImage::default(),
            image_transfer: None,
            image_chunks: 0,
            controller_offset: 0,
            epoch: -1,
            incarnation: 0,
            register_after_ms: 0,
            unregistered_since_ms: None,
            register_warned_ms: 0,
            controller: None,
            rotate: 0,
            next_rpc: 1,
            rpcs: BTreeMap::new(),
            last_heartbeat_ms: 0,
            fenced: true,
            admin: BTreeMap::new(),
            fetching: BTreeMap::new(),
            out_sessions: BTreeMap::new(),
            fetch_seen: BTreeMap::new(),
            in_sessions: BTreeMap::new(),
            session_stats: FetchSessionStats::default(),
            serving: BTreeMap::new(),
            serving_reads: BTreeMap::new(),
            serving_watch: super::watch::Watches::default(),
            pid_requested: false,
            shutdown_requested: false,
            shutdown_ready: false,
            started_serving: false,
            admin_waiting: Vec::new(),
            quorum_waiting: BTreeMap::new(),
            announced: BTreeMap::new(),
            strays_deleted: 0,
        }
    }

    /// Whether the broker has applied everything the controller had committed when it last
    /// answered.
    pub(crate) fn caught_up(&self) -> bool {
        self.image_caught_up(&self.image)
    }
}

impl Broker {
    /// Whether this node is also a voter of the metadata quorum (a combined node).
    fn is_voter(&self) -> bool {
        self.config.voters.contains(&self.config.node_id)
    }

    fn controller_addr(&self) -> Addr {
        let voters = &self.config.voters;
        // Without a known controller, start the search at this node's own voter (on a combined
        // node it answers at once, naming the leader Raft knows), then go round the others. A
        // broker-only node starts at a voter chosen by its id, so brokers spread their first
        // attempts over the quorum.
        let start = match voters.iter().position(|v| *v == self.config.node_id) {
            Some(own) => own,
            None => self.config.node_id.rem_euclid(voters.len() as i32) as usize,
        };
        let node = self.cluster.controller.unwrap_or_else(|| voters[(start + self.cluster.rotate) % voters.len()]);
        Addr { node, actor: CONTROLLER_ACTOR }
    }

    fn rpc(&mut self, cx: &mut Cx<BrokerMsg>, kind: Rpc, request: ControllerRequest) -> u64 {
        let id = self.cluster.next_rpc;
        self.cluster.next_rpc += 1;
        let to = self.controller_addr();
        tracing::trace!(node = self.config.node_id, ?kind, to = to.node, id, "controller rpc");
        self.cluster.rpcs.insert(id, (kind, cx.now_ms(), to.node));
        cx.send(to, BrokerMsg::Peer(PeerMsg::ToController { id, request }));
        id
    }

    fn rpc_in_flight(&self, f: impl Fn(&Rpc) -> bool) -> bool {
        self.cluster.rpcs.values().any(|(k, _, _)| f(k))
    }

    /// Start: a fresh incarnation, so the controller can tell a restart from a retry. The ids
    /// this incarnation gives its requests (controller RPCs, replica fetches, reads) start at a
    /// point of their own drawn from it: an answer to the previous incarnation's request (still
    /// in flight, or parked at a controller) carries one of its ids and must not match a request
    /// of this one (simulator seed 401817 of groups-3-node-lost: a restarted broker's first
    /// FetchMetadata, from offset 0, took the answer to its previous incarnation's, from offset
    /// 134, as complete, and never learned the topics before it; metadata answers now also echo
    /// the offset they answer from, and one that is not from here is dropped). The base stays below 2^56,
    /// far under the replica-fetch timer ids ([`REPLICA_TIMER_BASE`]) and above the fixed ones.
    pub(crate) fn cluster_start(&mut self, cx: &mut Cx<BrokerMsg>) {
        self.cluster = Cluster::new();
        self.cluster.incarnation = cx.rng().next_u64();
        let base = 1000 + ((self.cluster.incarnation >> 24) << 16);
        self.cluster.next_rpc = base;
        self.next_id = self.next_id.max(base);
    }

    /// Begin a controlled shutdown: heartbeats ask the controller to move leadership away; the
    /// broker stops once it leads nothing.
    pub(crate) fn begin_shutdown(&mut self, cx: &mut Cx<BrokerMsg>) {
        if self.cluster.epoch < 0 || self.phase_is_not_ready() {
            return cx.stop();
        }
        self.cluster.shutdown_requested = true;
        self.cluster.last_heartbeat_ms = 0;
        self.cluster_tick(cx);
    }

    /// Periodic cluster work (from housekeeping).
    pub(crate) fn cluster_tick(&mut self, cx: &mut Cx<BrokerMsg>) {
        let now = cx.now_ms();
        // Forget RPCs that went unanswered; try another voter.
        let expired: Vec<u64> = self
            .cluster
            .rpcs
            .iter()
            .filter(|(_, (k, at, _))| now.saturating_sub(*at) > if matches!(k, Rpc::FetchMetadata) { RPC_TIMEOUT_MS + 1000 } else { RPC_TIMEOUT_MS })
            .map(|(id, _)| *id)
            .collect();
        if !expired.is_empty() {
            self.cluster.controller = None;
            // A combined node asks its own voter again (it always answers); a broker-only node
            // moves on to the next voter, since the silent one may be down. Before it is
            // registered, only a Register going unanswered moves it on: the metadata fetches it
            // sends meanwhile time out on another schedule, and rotating for both could make
            // every Register land on the same voters while the active one only ever gets fetches
            // (found by the simulator: a broker that came back at a new address, whose answers
            // the other voters could not send, stayed unregistered for 30 s).
            let registering = self.cluster.epoch < 0;
            let rotates = !registering || expired.iter().any(|id| matches!(self.cluster.rpcs.get(id), Some((Rpc::Register, _, _))));
            if self.is_voter() {
                self.cluster.rotate = 0;
            } else if rotates {
                self.cluster.rotate += 1;
            }
        }
        for id in expired {
            let (kind, _, _) = self.cluster.rpcs.remove(&id).expect("listed");
            self.rpc_failed(cx, kind, error::REQUEST_TIMED_OUT, "The controller did not answer in time.");
        }
        if self.cluster.epoch < 0 {
            self.warn_if_long_unregistered(now);
            if !self.rpc_in_flight(|k| matches!(k, Rpc::Register)) && now >= self.cluster.register_after_ms {
                let c = &self.config;
                let request = ControllerRequest::Register {
                    broker: c.node_id,
                    incarnation: self.cluster.incarnation,
                    host: c.advertised_host.clone(),
                    port: c.advertised_port,
                    peer: c.peer_address.clone(),
                    rack: c.rack.clone(),
                };
                self.rpc(cx, Rpc::Register, request);
            }
        } else if now >= self.cluster.last_heartbeat_ms + self.config.heartbeat_interval_ms && !self.rpc_in_flight(|k| matches!(k, Rpc::Heartbeat)) {
            self.cluster.last_heartbeat_ms = now;
            let request = ControllerRequest::Heartbeat {
                broker: self.config.node_id,
                epoch: self.cluster.epoch,
                metadata_offset: self.cluster.image.offset,
                shutdown: self.cluster.shutdown_requested,
            };
            self.rpc(cx, Rpc::Heartbeat, request);
        }
        if !self.rpc_in_flight(|k| matches!(k, Rpc::FetchMetadata)) {
            self.fetch_metadata(cx);
        }
        // InitProducerIds waiting on a block whose request failed or went unanswered: ask again.
        if !self.pending_init_producer.is_empty() {
            self.answer_init_producer_ids(cx);
        }
        self.replica_fetch_all(cx, false);
        self.maintain_isr(cx);
        self.expire_serving(cx);
    }

    /// Node `node` refused a connect: its process is gone. Requests waiting on it as the
    /// controller fail now instead of at their timeout (up to 1.8 s for a metadata fetch), and
    /// the next ones go to another voter, so a broker follows a new active controller as soon
    /// as one is elected.
    pub(crate) fn controller_refused(&mut self, cx: &mut Cx<BrokerMsg>, node: i32) {
        let waiting: Vec<u64> = self.cluster.rpcs.iter().filter(|(_, (_, _, to))| *to == node).map(|(id, _)| *id).collect();
        tracing::debug!(node = self.config.node_id, refused = node, waiting = waiting.len(), controller = ?self.cluster.controller, "controller refused");
        if waiting.is_empty() && self.cluster.controller != Some(node) {
            return;
        }
        self.cluster.controller = None;
        if self.is_voter() {
            self.cluster.rotate = 0;
        } else {
            self.cluster.rotate += 1;
        }
        for id in waiting {
            let (kind, _, _) = self.cluster.rpcs.remove(&id).expect("listed");
            self.rpc_failed(cx, kind, error::NOT_CONTROLLER, "The controller's node is down.");
        }
        self.cluster_tick(cx);
    }

    fn rpc_failed(&mut self, cx: &mut Cx<BrokerMsg>, kind: Rpc, code: i16, message: &str) {
        match kind {
            Rpc::Admin(batch, slot) => self.admin_result(cx, batch, slot, code, Some(message.to_string()), 0),
            Rpc::AlterPartition(_, _) => {
                // Unanswered (lost, timed out, or a controller that lost leadership): the change
                // may or may not have committed. Keep the maximal ISR — the high watermark keeps
                // waiting for members being added — and send the same change again; metadata
                // with a newer partition epoch settles it.
            }
            Rpc::ProducerIds => self.cluster.pid_requested = false,
            Rpc::DescribeQuorum(key) => {
                let Some(mut wait) = self.cluster.quorum_waiting.remove(&key) else { return };
                wait.attempts += 1;
                if code == error::NOT_CONTROLLER && wait.attempts < QUORUM_ATTEMPTS {
                    self.forward_describe_quorum(cx, key, wait);
                } else {
                    let response = super::admin::describe_quorum_error(code, message);
                    super::admin::reply_describe_quorum(cx, wait.conn, wait.seq, &wait.request, &response);
                }
            }
            _ => {}
        }
    }

    /// Send a client's DescribeQuorum on to the active controller (as Kafka's brokers forward it).
    pub(crate) fn forward_describe_quorum(&mut self, cx: &mut Cx<BrokerMsg>, key: u64, wait: QuorumWait) {
        self.cluster.quorum_waiting.insert(key, wait);
        self.rpc(cx, Rpc::DescribeQuorum(key), ControllerRequest::DescribeQuorum);
    }

    /// A client's DescribeQuorum for the metadata log: forwarded (`key` must be fresh).
    pub(crate) fn describe_quorum(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>) {
        let key = self.fresh_id();
        self.forward_describe_quorum(cx, key, QuorumWait { conn, seq, request, attempts: 0 });
    }

    pub(crate) fn partition_mut(&mut self, topic: &str, index: i32) -> Option<&mut crate::partition::Partition> {
        self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(usize::try_from(index).ok()?))
    }

    /// A message from another node or from this node's controller.
    pub(crate) fn on_peer(&mut self, cx: &mut Cx<BrokerMsg>, from: Addr, msg: PeerMsg) {
        match msg {
            PeerMsg::FromController { id, response } => self.on_controller_response(cx, id, response),
            PeerMsg::ReplicaFetch(f) => self.on_replica_fetch(cx, from, f),
            PeerMsg::ReplicaFetchResponse(r) => self.on_replica_fetch_response(cx, from, r),
            PeerMsg::Raft(_) | PeerMsg::ToController { .. } => {}
        }
    }

    fn on_controller_response(&mut self, cx: &mut Cx<BrokerMsg>, id: u64, response: ControllerResponse) {
        self.on_controller_response_inner(cx, id, response);
        self.maybe_start_serving(cx);
    }

    fn on_controller_response_inner(&mut self, cx: &mut Cx<BrokerMsg>, id: u64, response: ControllerResponse) {
        let Some((kind, _, node)) = self.cluster.rpcs.remove(&id) else { return };
        if !matches!(response, ControllerResponse::NotController { .. }) {
            self.cluster.controller = Some(node);
        }
        if let ControllerResponse::NotController { leader } = response {
            tracing::debug!(node = self.config.node_id, ?kind, from = node, ?leader, "controller rpc: not the controller");
            match leader {
                // Follow the voter's hint unless it names itself (elected, not yet active) or
                // nobody. Several requests in flight get the same answer: the second one naming
                // the leader the first already pointed at is no reason to move on (it did, and
                // a combined node then circled between its own voter and a dead one forever).
                Some(l) if l != node => self.cluster.controller = Some(l),
                _ => {
                    self.cluster.controller = None;
                    self.cluster.rotate += 1;
                }
            }
            return self.rpc_failed(cx, kind, error::NOT_CONTROLLER, "This is not the correct controller for this cluster.");
        }
        match (kind, response) {
            (Rpc::Register, ControllerResponse::Registered { epoch }) => {
                tracing::info!(node = self.config.node_id, epoch, "registered with the controller");
                self.cluster.epoch = epoch;
                self.cluster.unregistered_since_ms = None;
                self.cluster.last_heartbeat_ms = 0;
                self.reconcile(cx);
            }
            (Rpc::Register, ControllerResponse::RegisterRefused { error }) => {
                // Another live broker holds this node id (or this node's previous incarnation's
                // session has not ended yet): try again later, as Kafka's brokers do.
                tracing::warn!(
                    node = self.config.node_id,
                    error,
                    "registration refused: another live broker is registered with this node.id (DUPLICATE_BROKER_REGISTRATION); retrying"
                );
                self.cluster.register_after_ms = cx.now_ms() + REGISTER_RETRY_MS;
            }
            (Rpc::Heartbeat, ControllerResponse::Heartbeat { fenced, shutdown_ready, stale }) => {
                if stale {
                    tracing::info!(node = self.config.node_id, "broker epoch is stale: registering again");
                    self.cluster.epoch = -1;
                    self.cluster.incarnation = cx.rng().next_u64();
                    return;
                }
                if self.cluster.fenced != fenced {
                    tracing::info!(node = self.config.node_id, fenced, "fencing state changed");
                }
                self.cluster.fenced = fenced;
                self.cluster.shutdown_ready = shutdown_ready;
                if self.cluster.shutdown_requested && shutdown_ready {
                    tracing::info!(node = self.config.node_id, "controlled shutdown: leadership moved away, stopping");
                    cx.stop();
                }
            }
            (Rpc::FetchMetadata, ControllerResponse::Metadata { image: Some(chunk), last, .. }) => {
                self.cluster.controller_offset = last;
                if let Some(image) = self.take_image_chunk(chunk) {
                    let through = (image.offset == last).then_some(last);
                    self.apply_metadata(cx, Some(image), Vec::new(), through);
                }
                if self.cluster.image_transfer.is_some() || !self.cluster.caught_up() {
                    self.fetch_metadata(cx);
                }
            }
            (Rpc::FetchMetadata, ControllerResponse::Metadata { from, image: None, .. }) if from != self.cluster.image.offset => {
                // Not the answer to a fetch from here (ids make that unlikely, this makes it
                // impossible): its records and `last` would skip what lies between.
                tracing::debug!(node = self.config.node_id, from, at = self.cluster.image.offset, "metadata answer for another offset dropped");
                if !self.rpc_in_flight(|k| matches!(k, Rpc::FetchMetadata)) {
                    self.fetch_metadata(cx);
                }
            }
            (Rpc::FetchMetadata, ControllerResponse::Metadata { image: None, records, last, .. }) => {
                self.cluster.controller_offset = last;
                self.cluster.image_transfer = None;
                let complete = records.len() < 500;
                self.apply_metadata(cx, None, records, complete.then_some(last));
                if !self.cluster.caught_up() {
                    self.fetch_metadata(cx);
                }
            }
            (Rpc::AlterPartition(topic, index), ControllerResponse::AlterPartition { error: code, info }) => {
                let now = cx.now_ms();
                let me = self.config.node_id;
                let Some(p) = self.partition_mut(&topic, index) else { return };
                if code != error::NONE {
                    tracing::debug!(topic, index, code, "AlterPartition refused");
                    // A refused member never joined; any other refusal means the partition moved
                    // on (or this change already committed): the maximal ISR stays until the
                    // metadata with the newer partition epoch arrives.
                    if code == error::INELIGIBLE_REPLICA {
                        p.pending_isr = None;
                    }
                }
                if let Some(info) = info {
                    let role = role_of(&info, me);
                    // The answer may complete a reassignment that moved leadership away, or this
                    // replica out.
                    let changed = p.set_role(role, info.leader_epoch, info.replicas, info.isr, info.partition_epoch, now);
                    let uid = p.uid;
                    self.role_applied(cx, &topic, index, uid, changed);
                }
            }
            (Rpc::ProducerIds, ControllerResponse::ProducerIds { start, len }) => {
                self.cluster.pid_requested = false;
                self.next_producer_id = start;
                self.producer_id_block_end = start + len;
                self.answer_init_producer_ids(cx);
            }
            (Rpc::Admin(batch, slot), ControllerResponse::Admin { error: code, message, offset }) => self.admin_result(cx, batch, slot, code, message, offset),
            (Rpc::DescribeQuorum(key), ControllerResponse::Quorum(d)) => {
                if let Some(wait) = self.cluster.quorum_waiting.remove(&key) {
                    let response = super::admin::describe_quorum_response(&d);
                    super::admin::reply_describe_quorum(cx, wait.conn, wait.seq, &wait.request, &response);
                }
            }
            (Rpc::DescribeQuorum(key), response) => {
                tracing::warn!(?response, "unexpected controller answer to DescribeQuorum");
                if let Some(wait) = self.cluster.quorum_waiting.remove(&key) {
                    let response = super::admin::describe_quorum_error(error::UNKNOWN_SERVER_ERROR, "The controller gave an unexpected answer.");
                    super::admin::reply_describe_quorum(cx, wait.conn, wait.seq, &wait.request, &response);
                }
            }
            (Rpc::Forget, _) => {}
            (kind, response) => tracing::warn!(?kind, ?response, "unexpected controller answer"),
        }
    }

    /// Ask the controller for the metadata after this broker's image (or for the next chunk of
    /// the image arriving).
    fn fetch_metadata(&mut self, cx: &mut Cx<BrokerMsg>) {
        let from = self.cluster.image.offset;
        let image = self.cluster.image_transfer.as_ref().map(|t| (t.offset, t.bytes.len() as u64));
        self.rpc(cx, Rpc::FetchMetadata, ControllerRequest::FetchMetadata { from, image });
    }

    /// Add a chunk to the image arriving (a chunk of another image, or at position 0, starts
    /// over; one not at the end of what is held is dropped, and the next fetch says where to go
    /// on). Returns the image once whole, if it is newer than this broker's.
    fn take_image_chunk(&mut self, chunk: ImageChunk) -> Option<MetadataImage> {
        let fresh = self.cluster.image_transfer.as_ref().is_none_or(|t| (t.offset, t.total) != (chunk.offset, chunk.total));
        if fresh || chunk.position == 0 {
            self.cluster.image_transfer = Some(ImageChunk { offset: chunk.offset, position: 0, total: chunk.total, bytes: Vec::new() });
        }
        let t = self.cluster.image_transfer.as_mut().expect("set above");
        if chunk.position == t.bytes.len() as u64 {
            t.bytes.extend_from_slice(&chunk.bytes);
            self.cluster.image_chunks += 1;
        }
        if (t.bytes.len() as u64) < t.total {
            return None;
        }
        let t = self.cluster.image_transfer.take().expect("set above");
        match MetadataImage::decode(&t.bytes) {
            Some(image) if image.offset > self.cluster.image.offset => Some(image),
            Some(_) => None,
            None => {
                tracing::warn!(node = self.config.node_id, offset = t.offset, "a metadata image from the controller does not decode; fetching it again");
                None
            }
        }
    }

    /// Apply committed metadata and bring local partitions in line with it.
    fn apply_metadata(&mut self, cx: &mut Cx<BrokerMsg>, snapshot: Option<MetadataImage>, records: Vec<(u64, Vec<MetadataRecord>)>, through: Option<u64>) {
        if let Some(s) = snapshot {
            tracing::debug!(node = self.config.node_id, from = self.cluster.image.offset, to = s.offset, "metadata image from the controller's snapshot");
            self.cluster.image = s;
        }
        for (offset, batch) in records {
            if offset <= self.cluster.image.offset {
                continue;
            }
            for r in &batch {
                self.cluster.image.apply(offset, r);
            }
        }
        if let Some(last) = through {
            // Everything up to `last` was sent: the entries after the last record held none.
            self.cluster.image.offset = self.cluster.image.offset.max(last);
        }
        self.announce_peers(cx);
        self.reconcile(cx);
    }

    /// Give the driver the node-to-node address of every broker whose registration changed, so
    /// replica fetches and their answers reach brokers that are not quorum voters.
    fn announce_peers(&mut self, cx: &mut Cx<BrokerMsg>) {
        let me = self.config.node_id;
        for b in self.cluster.image.brokers.values() {
            if self.cluster.announced.get(&b.id) != Some(&b.epoch) {
                self.cluster.announced.insert(b.id, b.epoch);
                crate::controller::announce_peer(cx, me, b);
            }
        }
    }

    /// Make local topics, partitions, configs and roles match the image.
    pub(crate) fn reconcile(&mut self, cx: &mut Cx<BrokerMsg>) {
        let image = std::mem::take(&mut self.cluster.image);
        let mut meta_dirty = false;
        if image.dynamic_broker != self.dynamic_broker {
            self.dynamic_broker = image.dynamic_broker.clone();
            let names: Vec<String> = self.topics.keys().cloned().collect();
            for n in names {
                self.reconfigure_topic(&n);
            }
            meta_dirty = true;
        }
        // Deletions only once caught up: a partial history may not have created them yet.
        if self.cluster.image_caught_up(&image) {
            let gone: Vec<String> =
                self.topics.iter().filter(|(n, t)| image.topics.get(*n).is_none_or(|i| Uuid::from_u128(i.id) != t.id)).map(|(n, _)| n.clone()).collect();
            for n in gone {
                tracing::info!(topic = n, "deleting topic");
                self.remove_topic(cx, &n);
                meta_dirty = true;
            }
        }
        let now = cx.now_ms();
        let me = self.config.node_id;
        // Until this incarnation's registration is applied, the image describes the previous
        // incarnation's roles (leading an epoch whose unsynced tail this one may have lost):
        // take no role before then.
        let registered = self.cluster.epoch >= 0 && image.offset >= self.cluster.epoch as u64;
        // Strays (below) are deleted only from a complete image, in which this broker's own
        // registration is applied.
        let deletes_strays = registered && self.cluster.image_caught_up(&image);
        let mut roles_changed = false;
        let mut strays = Vec::new();
        for (name, t) in &image.topics {
            let id = Uuid::from_u128(t.id);
            match self.topics.get(name) {
                Some(local) if local.id != id => continue,
                Some(_) => {}
                None => {
                    let version = self.meta_version + 1;
                    self.add_topic(name, id, t.partitions.len() as i32, t.configs.clone(), version);
                    meta_dirty = true;
                }
            }
            if self.topics[name].partitions.len() < t.partitions.len() {
                self.grow_topic(name, t.partitions.len() as i32);
                meta_dirty = true;
            }
            if self.topics[name].configs != t.configs {
                self.topics.get_mut(name).expect("present").configs = t.configs.clone();
                self.reconfigure_topic(name);
                meta_dirty = true;
            }
            for (i, info) in t.partitions.iter().enumerate() {
                // A broker holds a log only for the partitions it is a replica of.
                if info.replicas.contains(&me) {
                    self.host_partition(cx, name, i);
                }
                let Some(p) = self.topics.get_mut(name).and_then(|x| x.partitions.get_mut(i)) else { continue };
                if !p.is_ready() {
                    continue;
                }
                let role = if registered { role_of(info, me) } else { Role::None };
                let changed = p.set_role(role, info.leader_epoch, info.replicas.clone(), info.isr.clone(), info.partition_epoch, now);
                let uid = p.uid;
                if deletes_strays && role == Role::None {
                    strays.push((name.clone(), i, info.replicas.clone()));
                }
                if changed {
                    roles_changed = true;
                    tracing::debug!(node = me, topic = name, partition = i, ?role, epoch = info.leader_epoch, isr = ?info.isr, "partition role");
                }
                self.role_applied(cx, name, i as i32, uid, changed);
            }
        }
        self.cluster.image = image;
        // A replica the metadata no longer assigns here (a reassignment moved it away while this
        // broker was up or down, or it was never assigned and only had a directory) is deleted,
        // directory and all, as Kafka deletes a stray replica.
        for (name, index, replicas) in strays {
            tracing::info!(node = me, topic = name, partition = index, ?replicas, "deleting a replica moved away");
            self.unhost_partition(cx, &name, index);
            self.cluster.strays_deleted += 1;
        }
        if meta_dirty {
            self.meta_changed(cx);
        }
        let offset = self.cluster.image.offset;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.cluster.admin_waiting).into_iter().partition(|(_, o)| *o <= offset);
        self.cluster.admin_waiting = waiting;
        for (batch, _) in done {
            self.finish_admin(cx, batch);
        }
        // A partition that now follows another leader must not wait for a fetch already parked
        // at that leader (up to replica.fetch.wait.max.ms) to be included: fetch anew.
        self.replica_fetch_all(cx, roles_changed);
        self.groups_after_metadata(cx);
    }

    /// After `set_role` on a partition, from the metadata log or an AlterPartition answer: a new
    /// leader or epoch fails the produces waiting on the old term and wakes the fetches parked
    /// on it; then the high watermark is recomputed and the produces it covers are answered.
    fn role_applied(&mut self, cx: &mut Cx<BrokerMsg>, topic: &str, index: i32, uid: u64, changed: bool) {
        if changed {
            self.fail_waiting_produces(cx, uid, error::NOT_LEADER_OR_FOLLOWER);
            self.fail_waiting_deletes(cx, uid);
            self.wake_fetches(cx, uid);
            self.wake_serving(cx, uid);
        }
        let Some(p) = self.partition_mut(topic, index) else { return };
        if p.update_high_watermark() {
            self.on_high_watermark(cx, uid);
        } else {
            self.complete_produces(cx, Some(uid));
        }
    }

    /// Partitions recovered after the image arrived get their roles now.
    pub(crate) fn on_partition_ready(&mut self, cx: &mut Cx<BrokerMsg>) {
        if self.cluster.image.offset > 0 {
            self.reconcile(cx);
        }
    }

    // ---- admin forwarding ----

    /// Send `ops` (each with the response slot it fills) to the controller; answer once all are
    /// answered and their metadata applied. With no ops, answer at once.
    #[allow(clippy::too_many_arguments)] // the pieces of one pending response
    pub(crate) fn submit_admin(
        &mut self,
        cx: &mut Cx<BrokerMsg>,
        conn: ConnId,
        seq: u64,
        request: Box<Request>,
        response: AdminResponse,
        ops: Vec<(usize, AdminOp)>,
        created: Vec<(usize, String)>,
    ) {
        let batch = self.fresh_id();
        let n = ops.len();
        self.cluster.admin.insert(batch, AdminBatch { conn, seq, request, response, outstanding: n, min_offset: 0, created });
        for (slot, op) in ops {
            self.rpc(cx, Rpc::Admin(batch, slot), ControllerRequest::Admin(op));
        }
        if n == 0 {
            self.finish_admin(cx, batch);
        }
    }

    /// Fire-and-forget admin (auto topic creation).
    pub(crate) fn admin_forget(&mut self, cx: &mut Cx<BrokerMsg>, op: AdminOp) {
        self.rpc(cx, Rpc::Forget, ControllerRequest::Admin(op));
    }

    fn admin_result(&mut self, cx: &mut Cx<BrokerMsg>, batch: u64, slot: usize, code: i16, message: Option<String>, offset: u64) {
        let Some(b) = self.cluster.admin.get_mut(&batch) else { return };
        if code != error::NONE {
            b.response.set_error(slot, code, message);
        }
        b.min_offset = b.min_offset.max(offset);
        b.outstanding -= 1;
        if b.outstanding == 0 {
            // Answer once the metadata the operations produced is applied here, so the client's
            // next request sees it.
            let wait = b.min_offset;
            if self.cluster.image.offset >= wait {
                self.finish_admin(cx, batch);
            } else {
                self.cluster.admin_waiting.push((batch, wait));
                if !self.rpc_in_flight(|k| matches!(k, Rpc::FetchMetadata)) {
                    self.fetch_metadata(cx);
                }
            }
        }
    }

    fn finish_admin(&mut self, cx: &mut Cx<BrokerMsg>, batch: u64) {
        let Some(mut b) = self.cluster.admin.remove(&batch) else { return };
        for (slot, name) in &b.created {
            let id = self.cluster.image.topics.get(name).map(|t| Uuid::from_u128(t.id));
            b.response.set_created_id(*slot, id);
        }
        let frame = b.response.encode(&b.request);
        let version = self.meta_version;
        match frame {
            Ok(f) => self.reply_when_durable(cx, version, b.conn, b.seq, Some(f)),
            Err(e) => self.send(cx, b.conn, b.seq, Err(e)),
        }
    }

    /// Ask the controller for a block of producer ids (once at a time).
    pub(crate) fn request_producer_ids(&mut self, cx: &mut Cx<BrokerMsg>) {
        if self.cluster.pid_requested {
            return;
        }
        self.cluster.pid_requested = true;
        let broker = self.config.node_id;
        self.rpc(cx, Rpc::ProducerIds, ControllerRequest::AllocateProducerIds { broker });
    }

    /// Registration can go unanswered for good: no voter reachable, or another live process
    /// registered with this node.id (the controller's refusal, addressed to the node id, reaches
    /// that process, not this one). Say so every [`REGISTER_WARN_MS`] while it lasts.
    fn warn_if_long_unregistered(&mut self, now: u64) {
        let since = *self.cluster.unregistered_since_ms.get_or_insert(now);
        if now.saturating_sub(since) < REGISTER_WARN_MS || now.saturating_sub(self.cluster.register_warned_ms) < REGISTER_WARN_MS {
            return;
        }
        self.cluster.register_warned_ms = now;
        tracing::warn!(
            node = self.config.node_id,
            seconds = now.saturating_sub(since) / 1000,
            "still no registration: either no voter in controller.quorum.voters answers, or another live process uses node.id {} (the controller refuses this one with DUPLICATE_BROKER_REGISTRATION and answers that process)",
            self.config.node_id
        );
    }

    // ---- follower side ----

    /// Send a fetch to every leader this broker follows (when none is in flight, or `force`).
    pub(crate) fn replica_fetch_all(&mut self, cx: &mut Cx<BrokerMsg>, force: bool) {
        if self.cluster.epoch < 0 {
            return;
        }
        // The leaders followed, and those that get a fetch now: none in flight, or the one in
        // flight is overdue (or `force`).
        let mut followed = BTreeSet::new();
        for t in self.topics.values() {
            for p in &t.partitions {
                if let Role::Follower { leader } = p.role {
                    if leader != NO_LEADER && p.is_ready() {
                        followed.insert(leader);
                    }
                }
            }
        }
        let now = cx.now_ms();
        self.cluster.fetching.retain(|l, _| followed.contains(l));
        self.cluster.out_sessions.retain(|l, _| followed.contains(l));
        let mut due = BTreeMap::new();
        for &leader in &followed {
            if let Some((_, at)) = self.cluster.fetching.get(&leader) {
                if !force && now.saturating_sub(*at) < REPLICA_FETCH_TIMEOUT_MS {
                    continue;
                }
                // Sent again while one is in flight: that one or its answer may be lost, and
                // with it what the leader knows of this session. Start over with a full fetch.
                self.cluster.out_sessions.remove(&leader);
            }
            due.insert(leader, (self.fresh_id(), BTreeMap::new()));
        }
        if due.is_empty() {
            return;
        }
        // The entries of the partitions of those leaders, by uid.
        for (name, t) in &self.topics {
            for p in &t.partitions {
                let Role::Follower { leader } = p.role else { continue };
                let Some((_, current)) = due.get_mut(&leader) else { continue };
                if !p.is_ready() {
                    continue;
                }
                let state = FetchState {
                    leader_epoch: p.leader_epoch,
                    fetch_offset: p.log.log_end_offset(),
                    durable_offset: p.local_committable(),
                    log_start_offset: p.log.durable_log_start_offset(),
                    last_fetched_epoch: p.log.latest_epoch().unwrap_or(-1),
                    high_watermark: p.leader_high_watermark,
                    leader_log_start_offset: p.log.log_start_offset(),
                };
                current.insert(p.uid, (name.as_str(), p.index, state));
            }
        }
        let me = self.config.node_id;
        let broker_epoch = self.cluster.epoch;
        for (leader, (id, current)) in due {
            self.cluster.fetching.insert(leader, (id, now));
            let session = self.cluster.out_sessions.entry(leader).or_default();
            let full = session.id == 0 || crate::buggify!(cx);
            let f = if full {
                // buggify: a follower may start over at any time.
                session.id = 0;
                session.sent = current.iter().map(|(uid, (topic, index, state))| (*uid, (topic.to_string(), *index, *state))).collect();
                let partitions = current.values().map(|(topic, index, state)| state.entry(topic, *index)).collect();
                self.cluster.session_stats.full += 1;
                ReplicaFetch { id, broker: me, broker_epoch, session_id: 0, session_epoch: 0, partitions, forgotten: Vec::new() }
            } else {
                let mut partitions = Vec::new();
                for (uid, (topic, index, state)) in &current {
                    match session.sent.get_mut(uid) {
                        Some((_, _, sent)) if sent == state => {}
                        Some((_, _, sent)) => {
                            *sent = *state;
                            partitions.push(state.entry(topic, *index));
                        }
                        None => {
                            session.sent.insert(*uid, (topic.to_string(), *index, *state));
                            partitions.push(state.entry(topic, *index));
                        }
                    }
                }
                let gone: Vec<u64> = session.sent.keys().filter(|uid| !current.contains_key(uid)).copied().collect();
                let forgotten = gone.iter().filter_map(|uid| session.sent.remove(uid)).map(|(topic, index, _)| (topic, index)).collect();
                let epoch = session.next_epoch;
                session.next_epoch += 1;
                let stats = &mut self.cluster.session_stats;
                stats.incremental += 1;
                stats.incremental_partitions += partitions.len() as u64;
                stats.session_partitions += current.len() as u64;
                ReplicaFetch { id, broker: me, broker_epoch, session_id: session.id, session_epoch: epoch, partitions, forgotten }
            };
            cx.send(Addr { node: leader, actor: BROKER_ACTOR }, BrokerMsg::Peer(PeerMsg::ReplicaFetch(f)));
        }
    }

    fn on_replica_fetch_response(&mut self, cx: &mut Cx<BrokerMsg>, from: Addr, r: ReplicaFetchResponse) {
        if self.cluster.fetching.get(&from.node).map(|(id, _)| *id) != Some(r.id) {
            return;
        }
        self.cluster.fetching.remove(&from.node);
        let Some(session) = self.cluster.out_sessions.get_mut(&from.node) else { return };
        if r.session_id == 0 {
            // The leader refused the session: fetch everything again, at once.
            self.cluster.session_stats.refused += 1;
            self.cluster.out_sessions.remove(&from.node);
            self.replica_fetch_all(cx, false);
            return;
        }
        if session.id == 0 {
            session.id = r.session_id;
            session.next_epoch = 1;
        }
        let fetched = session.sent.len();
        let now = cx.now_ms();
        let wall = cx.wall_clock_ms();
        // Errors (stale epochs, a leader that moved) back off until the next tick, as Kafka's
        // replica.fetch.backoff.ms does; progress fetches again at once. The partitions left out
        // of the answer had nothing new: no error.
        let failed = r.partitions.iter().filter(|p| p.error != error::NONE).count();
        let progress = failed < fetched;
        for part in r.partitions {
            let (topic, index) = (part.topic.clone(), part.index);
            let Some(p) = self.partition_mut(&topic, index) else { continue };
            if !p.is_ready() || p.role != (Role::Follower { leader: from.node }) {
                continue;
            }
            if part.error != error::NONE {
                continue;
            }
            let uid = p.uid;
            if part.out_of_range {
                let start = part.log_start_offset;
                self.with_partition(cx, &topic, index as usize, |p, io| p.restart_at(io, start, now));
                continue;
            }
            if let Some((epoch, end)) = part.diverging {
                self.with_partition(cx, &topic, index as usize, |p, io| {
                    let (mine_epoch, mine_end) = p.log.end_offset_for_epoch(epoch);
                    // An undefined answer (the leader knows no such epoch): fall back to the
                    // high watermark, as Kafka's followers do — what is below it is committed.
                    let mut cut = if end < 0 { p.high_watermark } else { end };
                    if mine_epoch >= 0 && mine_end >= 0 {
                        cut = cut.min(mine_end);
                    }
                    tracing::debug!(
                        node = p.me,
                        topic,
                        index,
                        epoch,
                        end,
                        cut,
                        leo = p.log.log_end_offset(),
                        hw = p.high_watermark,
                        "follower truncates to the leader's log"
                    );
                    p.truncate_to(io, cut);
                });
                continue;
            }
            p.leader_high_watermark = part.high_watermark;
            if !part.records.is_empty() {
                let records = part.records.clone();
                let result = self.with_partition(cx, &topic, index as usize, |p, io| {
                    // An answer to an older fetch (our log has moved on) is dropped. The first
                    // batch may start below our log end only if the leader's cleaner merged
                    // emptied batches across it (`append_replicated` keeps our part).
                    if !first_batch_continues(&records, p.log.log_end_offset()) {
                        return Ok(());
                    }
                    p.append_replicated(io, &records, now, wall)
                });
                if let Some(Err(e)) = result {
                    tracing::warn!(topic, index, "replicated batches refused: {e}");
                }
            }
            if let Some(p) = self.partition_mut(&topic, index) {
                if p.update_high_watermark() {
                    self.on_high_watermark(cx, uid);
                }
            }
            // The leader's log start (DeleteRecords, retention) is the follower's too, as far as
            // its own high watermark: records deleted there must not come back if this replica
            // becomes leader.
            self.with_partition(cx, &topic, index as usize, |p, io| p.follow_log_start(io, part.log_start_offset));
        }
        if progress {
            self.replica_fetch_all(cx, false);
        }
    }

    /// A follower partition made more durable: tell its leader at once (acks=all waits on it).
    pub(crate) fn follower_progress(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64) {
        let Some((topic, index)) = self.locations.get(&uid).cloned() else { return };
        let Some(p) = self.topics.get(&topic).and_then(|t| t.partitions.get(index)) else { return };
        if let Role::Follower { leader } = p.role {
            if leader != NO_LEADER {
                // Supersede the fetch in flight: the leader answers the newest one.
                self.cluster.fetching.remove(&leader);
                self.replica_fetch_all(cx, false);
            }
        }
    }

    // ---- leader side ----

    fn on_replica_fetch(&mut self, cx: &mut Cx<BrokerMsg>, from: Addr, f: ReplicaFetch) {
        let now = cx.now_ms();
        // A fetch carries the follower's position as of when it was sent: a late or duplicated
        // one would move the leader's view of the follower backwards (or forwards over a
        // truncation). Only fetches newer than the newest seen from that follower count.
        let key = (f.broker_epoch, f.id);
        if self.cluster.fetch_seen.get(&f.broker).is_some_and(|seen| *seen >= key) {
            return;
        }
        self.cluster.fetch_seen.insert(f.broker, key);
        // A newer fetch from the same follower supersedes a parked one.
        let old: Vec<u64> = self.cluster.serving.iter().filter(|(_, s)| s.from == from).map(|(id, _)| *id).collect();
        for id in old {
            self.cluster.serving.remove(&id);
            self.cluster.serving_watch.unwatch(id);
            cx.cancel_timer(TimerId(REPLICA_TIMER_BASE + id));
        }
        // The session: a full fetch starts one; an incremental one updates it, if it is the
        // session's next fetch. Anything else is refused (an empty answer with session 0).
        let session_id = if f.session_id == 0 {
            let id = self.fresh_id();
            let parts = f.partitions.into_iter().map(|p| ((p.topic.clone(), p.index), Arc::new(p))).collect();
            self.cluster.in_sessions.insert(f.broker, InSession { id, broker_epoch: f.broker_epoch, next_epoch: 1, parts });
            id
        } else {
            match self.cluster.in_sessions.get_mut(&f.broker) {
                Some(s) if s.id == f.session_id && s.broker_epoch == f.broker_epoch && s.next_epoch == f.session_epoch => {
                    s.next_epoch += 1;
                    for k in &f.forgotten {
                        s.parts.remove(k);
                    }
                    for p in f.partitions {
                        s.parts.insert((p.topic.clone(), p.index), Arc::new(p));
                    }
                    s.id
                }
                other => {
                    tracing::debug!(
                        node = self.config.node_id,
                        follower = f.broker,
                        session = f.session_id,
                        epoch = f.session_epoch,
                        known = ?other.map(|s| (s.id, s.next_epoch, s.broker_epoch)),
                        broker_epoch = f.broker_epoch,
                        "replica fetch session refused"
                    );
                    self.cluster.in_sessions.remove(&f.broker);
                    let response = ReplicaFetchResponse { id: f.id, session_id: 0, partitions: Vec::new() };
                    cx.send(from, BrokerMsg::Peer(PeerMsg::ReplicaFetchResponse(response)));
                    return;
                }
            }
        };
        let fetched: Vec<Arc<ReplicaFetchPartition>> = self.cluster.in_sessions.get(&f.broker).map(|s| s.parts.values().cloned().collect()).unwrap_or_default();
        let mut parts = Vec::new();
        for q in fetched {
            let mut resp = ReplicaFetchPartitionResponse {
                topic: String::new(),
                index: q.index,
                error: error::NONE,
                high_watermark: -1,
                log_start_offset: -1,
                diverging: None,
                out_of_range: false,
                records: Bytes::new(),
            };
            let follower = f.broker;
            match self.partition_mut(&q.topic, q.index) {
                None => resp.error = error::UNKNOWN_TOPIC_OR_PARTITION,
                Some(p) if !p.is_ready() || p.role != Role::Leader => resp.error = error::NOT_LEADER_OR_FOLLOWER,
                Some(p) if q.leader_epoch < p.leader_epoch => resp.error = error::FENCED_LEADER_EPOCH,
                Some(p) if q.leader_epoch > p.leader_epoch => resp.error = error::UNKNOWN_LEADER_EPOCH,
                Some(p) if !p.replicas.contains(&follower) => resp.error = error::NOT_LEADER_OR_FOLLOWER,
                Some(p) => {
                    resp.log_start_offset = p.log.log_start_offset();
                    let leo = p.log.log_end_offset();
                    let diverging = if q.last_fetched_epoch >= 0 {
                        let (e, end) = p.leader_end_offset_for_epoch(q.last_fetched_epoch);
                        (e != q.last_fetched_epoch || end < q.fetch_offset).then_some((e, end))
                    } else {
                        None
                    };
                    if let Some(d) = diverging {
                        resp.diverging = Some(d);
                    } else if q.fetch_offset < p.log.log_start_offset() {
                        resp.out_of_range = true;
                    } else if q.fetch_offset > leo {
                        // Ahead of the leader without a diverging epoch: cut to the leader's end.
                        resp.diverging = Some((p.log.latest_epoch().unwrap_or(-1), leo));
                    } else {
                        let fs = p.followers.entry(follower).or_insert(FollowerState::new(now));
                        fs.log_end_offset = q.fetch_offset;
                        fs.durable_offset = q.durable_offset.min(q.fetch_offset);
                        let log_start_moved = q.log_start_offset > fs.log_start_offset;
                        fs.log_start_offset = q.log_start_offset;
                        if q.fetch_offset >= leo {
                            fs.last_caught_up_ms = now;
                        }
                        let uid = p.uid;
                        // The high watermark first: a follower joins against the one it will be
                        // held to. Judged against an older one, a follower exactly at it could
                        // be proposed after this recomputation had moved past it (cluster-split
                        // seed 944).
                        let moved = p.update_high_watermark();
                        // Joining the ISR promises everything below the high watermark is as
                        // safe on the follower as the high watermark requires: durable under the
                        // fsync policy (a follower whose unsynced tail is lost must not be a
                        // member the high watermark already passed).
                        // It also holds the leader's deletions (DeleteRecords, retention) durably: a
                        // member elected leader must not serve records deleted here.
                        let vouched = p.follower_committable(follower);
                        let expand = !p.isr.contains(&follower)
                            && p.pending_isr.is_none()
                            && vouched >= p.high_watermark
                            && vouched >= epoch_start(p)
                            && q.log_start_offset >= p.log.log_start_offset();
                        if moved {
                            self.on_high_watermark(cx, uid);
                        }
                        if expand {
                            self.propose_isr(cx, &q.topic, q.index, Some(follower), None);
                        }
                        if log_start_moved {
                            self.complete_deletes(cx, Some(uid));
                        }
                    }
                    if let Some(p) = self.partition_mut(&q.topic, q.index) {
                        resp.high_watermark = p.high_watermark;
                    }
                }
            }
            parts.push((q, resp));
        }
        let id = self.fresh_id();
        let state = ServingFetch { from, id: f.id, session_id, parts, outstanding: 0, deadline_ms: now + self.config.replica_fetch_wait_max_ms, parked: false };
        self.cluster.serving.insert(id, state);
        self.evaluate_serving(cx, id);
    }

    fn evaluate_serving(&mut self, cx: &mut Cx<BrokerMsg>, id: u64) {
        let Some(mut state) = self.cluster.serving.remove(&id) else { return };
        state.parked = false;
        for slot in 0..state.parts.len() {
            let (q, resp) = &mut state.parts[slot];
            if settled(resp) {
                continue;
            }
            let Ok(p) = self.ready_partition(&q.topic, q.index) else { continue };
            let leo = p.log.log_end_offset();
            resp.high_watermark = p.high_watermark;
            resp.log_start_offset = p.log.log_start_offset();
            if q.fetch_offset >= leo {
                continue;
            }
            let read_id = self.fresh_id();
            let offset = q.fetch_offset;
            let topic = q.topic.clone();
            let index = q.index as usize;
            match self.with_partition(cx, &topic, index, |p, io| p.log.read(io, read_id, offset, REPLICA_FETCH_PARTITION_BYTES, leo)) {
                Some(ReadStart::Pending) => {
                    self.cluster.serving_reads.insert(read_id, (id, slot));
                    state.outstanding += 1;
                }
                Some(ReadStart::OutOfRange) => state.parts[slot].1.out_of_range = true,
                _ => {}
            }
        }
        let waiting = state.outstanding > 0;
        self.cluster.serving.insert(id, state);
        if !waiting {
            self.finish_serving(cx, id);
        }
    }

    /// A log read for a replica fetch finished. Returns false if the read was not one.
    pub(crate) fn on_serving_read(&mut self, cx: &mut Cx<BrokerMsg>, read_id: u64, records: &Result<Bytes, String>) -> bool {
        let Some((id, slot)) = self.cluster.serving_reads.remove(&read_id) else { return false };
        let Some(state) = self.cluster.serving.get_mut(&id) else { return true };
        match records {
            Ok(r) => state.parts[slot].1.records = r.clone(),
            Err(_) => state.parts[slot].1.error = error::KAFKA_STORAGE_ERROR,
        }
        state.outstanding -= 1;
        if state.outstanding == 0 {
            self.finish_serving(cx, id);
        }
        true
    }

    fn finish_serving(&mut self, cx: &mut Cx<BrokerMsg>, id: u64) {
        let now = cx.now_ms();
        let Some(state) = self.cluster.serving.get_mut(&id) else { return };
        let has_data = state.parts.iter().any(|(_, r)| settled(r));
        if has_data || now >= state.deadline_ms || state.parts.is_empty() {
            let state = self.cluster.serving.remove(&id).expect("present");
            self.cluster.serving_watch.unwatch(id);
            cx.cancel_timer(TimerId(REPLICA_TIMER_BASE + id));
            // Only what the follower does not have yet.
            let partitions = state
                .parts
                .into_iter()
                .filter(|(q, r)| settled(r) || r.high_watermark != q.high_watermark || r.log_start_offset > q.leader_log_start_offset)
                .map(|(q, mut r)| {
                    r.topic = q.topic.clone();
                    r
                })
                .collect();
            let response = ReplicaFetchResponse { id: state.id, session_id: state.session_id, partitions };
            cx.send(state.from, BrokerMsg::Peer(PeerMsg::ReplicaFetchResponse(response)));
            return;
        }
        state.parked = true;
        let delay = state.deadline_ms.saturating_sub(now);
        let uids: Vec<u64> =
            state.parts.iter().filter_map(|(q, _)| self.topics.get(&q.topic).and_then(|t| t.partitions.get(q.index as usize)).map(|p| p.uid)).collect();
        self.cluster.serving_watch.watch(id, uids);
        cx.set_timer(TimerId(REPLICA_TIMER_BASE + id), delay);
    }

    /// Registrations of parked replica fetches on their partitions.
    pub(crate) fn serving_watch_size(&self) -> usize {
        self.cluster.serving_watch.size().1
    }

    /// New data or a new high watermark on `uid`: answer parked replica fetches watching it.
    pub(crate) fn wake_serving(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64) {
        for id in self.cluster.serving_watch.take(uid) {
            if self.cluster.serving.get(&id).is_some_and(|s| s.parked) {
                self.evaluate_serving(cx, id);
            }
        }
    }

    /// The leader's log start moved (DeleteRecords): parked replica fetches on `uid` are
    /// answered now, data or not, so the followers learn the new log start at once.
    pub(crate) fn answer_serving_now(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64) {
        for id in self.cluster.serving_watch.take(uid) {
            if let Some(s) = self.cluster.serving.get_mut(&id).filter(|s| s.parked) {
                s.deadline_ms = 0;
                self.evaluate_serving(cx, id);
            }
        }
    }

    pub(crate) fn on_serving_deadline(&mut self, cx: &mut Cx<BrokerMsg>, id: u64) {
        if let Some(s) = self.cluster.serving.get_mut(&id) {
            s.deadline_ms = 0;
            if s.parked {
                self.evaluate_serving(cx, id);
            }
        }
    }

    fn expire_serving(&mut self, cx: &mut Cx<BrokerMsg>) {
        let now = cx.now_ms();
        let due: Vec<u64> = self.cluster.serving.iter().filter(|(_, s)| s.parked && now >= s.deadline_ms).map(|(id, _)| *id).collect();
        for id in due {
            self.evaluate_serving(cx, id);
        }
    }

    /// Shrink followers that fell behind out of the ISR.
    fn maintain_isr(&mut self, cx: &mut Cx<BrokerMsg>) {
        let now = cx.now_ms();
        let lag = self.config.replica_lag_time_max_ms;
        // Resend ISR changes whose answer never came.
        let mut resend = Vec::new();
        for (name, t) in &self.topics {
            for p in &t.partitions {
                if p.role == Role::Leader && p.pending_isr.is_some() {
                    resend.push((name.clone(), p.index));
                }
            }
        }
        for (name, index) in resend {
            if !self.rpc_in_flight(|k| matches!(k, Rpc::AlterPartition(t, i) if *t == name && *i == index)) {
                self.resend_isr(cx, &name, index);
            }
        }
        let mut shrink = Vec::new();
        for (name, t) in &self.topics {
            for p in &t.partitions {
                if p.role != Role::Leader || p.pending_isr.is_some() {
                    continue;
                }
                let out: Vec<i32> = p
                    .isr
                    .iter()
                    .copied()
                    .filter(|r| {
                        *r != p.me
                            && p.followers.get(r).is_none_or(|f| now.saturating_sub(f.last_caught_up_ms) > lag && f.log_end_offset < p.log.log_end_offset())
                    })
                    .collect();
                if !out.is_empty() {
                    shrink.push((name.clone(), p.index, out));
                }
            }
        }
        for (name, index, out) in shrink {
            tracing::info!(node = self.config.node_id, topic = name, index, ?out, "shrinking ISR: followers lagging beyond replica.lag.time.max.ms");
            self.propose_isr(cx, &name, index, None, Some(out));
        }
    }

    /// Send the partition's pending ISR change to the controller (again).
    fn resend_isr(&mut self, cx: &mut Cx<BrokerMsg>, topic: &str, index: i32) {
        let epoch = self.cluster.epoch;
        let broker = self.config.node_id;
        let Some(p) = self.partition_mut(topic, index) else { return };
        let Some(isr) = p.pending_isr.clone() else { return };
        let request = ControllerRequest::AlterPartition {
            broker,
            epoch,
            topic: topic.to_string(),
            index,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr,
        };
        self.rpc(cx, Rpc::AlterPartition(topic.to_string(), index), request);
    }

    fn propose_isr(&mut self, cx: &mut Cx<BrokerMsg>, topic: &str, index: i32, add: Option<i32>, remove: Option<Vec<i32>>) {
        let Some(p) = self.partition_mut(topic, index) else { return };
        let mut isr = p.isr.clone();
        if let Some(a) = add {
            isr.push(a);
        }
        if let Some(r) = remove {
            if crate::planted!("isr-shrink-not-persisted") {
                // The shrink is applied locally only, never committed by the controller.
                p.isr.retain(|x| !r.contains(x));
                return;
            }
            isr.retain(|x| !r.contains(x));
        }
        p.pending_isr = Some(isr);
        self.resend_isr(cx, topic, index);
    }
}

/// This broker's role in `info`.
pub(crate) fn role_of(info: &PartitionInfo, me: i32) -> Role {
    if info.leader == me {
        Role::Leader
    } else if info.replicas.contains(&me) {
        Role::Follower { leader: info.leader }
    } else {
        Role::None
    }
}

/// The start offset of the leader's current epoch (a follower joins the ISR only past it).
fn epoch_start(p: &crate::partition::Partition) -> i64 {
    p.log.epoch_entries().iter().rev().find(|(e, _)| *e == p.leader_epoch).map(|(_, s)| *s).unwrap_or(0)
}

/// Whether the first batch of `records` starts at `log_end`, or is an empty batch a cleaner
/// merged across it (a shorter answer goes to `append_replicated`, which reports it corrupt).
fn first_batch_continues(records: &Bytes, log_end: i64) -> bool {
    match crate::log::batch::BatchHeader::parse(records) {
        Ok(h) => h.base_offset == log_end || crate::log::cleaner::straddles(&h, log_end),
        Err(_) => records.len() >= 8 && i64::from_be_bytes(records[0..8].try_into().expect("8 bytes")) == log_end,
    }
}

impl Cluster {
    /// Whether `image` (the cluster's own, possibly taken out while reconciling) has everything
    /// the controller had committed at its last answer.
    fn image_caught_up(&self, image: &MetadataImage) -> bool {
        image.offset >= self.controller_offset && self.controller_offset > 0
    }
}
