//! The broker: one actor per node that owns the node's partitions and answers Kafka requests.
//!
//! Client frames arrive as [`BrokerMsg::Request`] (the driver strips the size prefix); responses
//! leave through `Cx::reply` with the request's per-connection sequence number, so pipelined
//! requests are answered in order even when a produce waits for fsync while a later Metadata is
//! answered at once.
//!
//! Startup: read `meta/topics`, delete directories of topics that no longer exist, recover every
//! partition log; requests that arrive meanwhile are queued. A topic accepts produce only once
//! its creation is durable in `meta/topics` and its logs are recovered.
//!
//! Disk completions are routed by token: every operation a partition's log issues goes through
//! a [`Tracked`] wrapper that records which partition owns the token.

pub mod cluster;
pub mod codec;
pub mod config;
pub mod error;
pub mod meta;
mod watch;

mod admin;
mod delete_records;
mod fetch;
mod groups;
mod offsets;
mod produce;

use crate::core::{Actor, Addr, ConnId, Cx, DiskIo, DiskOp, IoDone, IoOutput, IoToken, TimerId};
use crate::log::LogEvent;
use crate::partition::Partition;
use bytes::Bytes;
use codec::{Decoded, Request};
use config::BrokerConfig;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId, RequestKind};
use meta::{NodeMeta, META_PATH, META_TMP_PATH};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use uuid::Uuid;

/// One partition's offsets as the broker sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition index.
    pub index: i32,
    /// Recovered and durable in metadata.
    pub ready: bool,
    /// First offset in the log.
    pub log_start_offset: i64,
    /// Committed (visible) offset bound.
    pub high_watermark: i64,
    /// Next offset to be assigned.
    pub log_end_offset: i64,
    /// Everything below is fsynced.
    pub durable_offset: i64,
    /// Leader, follower or neither.
    pub role: crate::partition::Role,
    /// Leader epoch this replica knows.
    pub leader_epoch: i32,
    /// In-sync replicas this replica knows.
    pub isr: &'a [i32],
    /// Segments the log cleaner rewrote since this log was opened.
    pub segments_cleaned: u64,
    /// Each idempotent producer's remembered batches, by producer id.
    pub producers: &'a std::collections::BTreeMap<i64, crate::partition::ProducerEntry>,
}

/// Messages the broker (and controller) actors receive.
#[derive(Clone, Debug)]
pub enum BrokerMsg {
    /// A request frame (size prefix removed) from a client connection; `seq` orders responses.
    Request {
        /// Connection.
        conn: ConnId,
        /// Position of the request in the connection's stream.
        seq: u64,
        /// The frame.
        frame: Bytes,
    },
    /// A client connection opened from `host` (Kafka's `/address` form, shown as a group
    /// member's client host).
    Connected {
        /// Connection.
        conn: ConnId,
        /// Where the client connects from.
        host: String,
    },
    /// A client connection closed.
    Disconnected {
        /// Connection.
        conn: ConnId,
    },
    /// A message from another node (or between the broker and controller of one node).
    Peer(crate::controller::rpc::PeerMsg),
    /// The process was asked to stop: shut down in a controlled way (from the driver).
    Shutdown,
    /// From the driver to the node's controller and broker: a connect to node `node`'s
    /// node-to-node address was refused. Nothing listens there, so that node's process is gone:
    /// the active controller fences it at once instead of waiting out
    /// `broker.session.timeout.ms`, a voter whose quorum leader it was campaigns without waiting
    /// out its election timeout, and the broker stops naming it as a leader meanwhile and stops
    /// waiting on it as its controller.
    PeerRefused {
        /// The node that refused.
        node: i32,
    },
    /// From the driver, just before a request that names brokers (see [`names_brokers`]): the
    /// nodes whose node-to-node connection from this node the kernel already knows closed by
    /// the other side (a process that exits closes its sockets at once), which this node's
    /// transport may not have noticed yet. Until the next such list, the broker leaves them out
    /// of its answers as it does a broker that refused a connect.
    LinksClosed {
        /// The nodes, all of them each time (an empty list clears the previous one).
        nodes: Vec<i32>,
    },
}

/// Whether a client request frame (size prefix stripped) is one whose answer names brokers and
/// leaders: Metadata, FindCoordinator or DescribeCluster. Both drivers send
/// [`BrokerMsg::LinksClosed`] ahead of these.
pub fn names_brokers(frame: &[u8]) -> bool {
    use kafka_protocol::messages::ApiKey;
    let names = [ApiKey::Metadata, ApiKey::FindCoordinator, ApiKey::DescribeCluster];
    frame.len() >= 2 && names.iter().any(|k| *k as i16 == i16::from_be_bytes([frame[0], frame[1]]))
}

/// The timer that drives periodic work (flush.ms, retention, produce timeouts).
const HOUSEKEEPING: TimerId = TimerId(0);
const HOUSEKEEPING_INTERVAL_MS: u64 = 100;

/// A topic on this node.
pub(crate) struct Topic {
    pub(crate) id: Uuid,
    pub(crate) partitions: Vec<Partition>,
    pub(crate) configs: BTreeMap<String, String>,
    /// The metadata version whose durability makes this topic exist.
    pub(crate) created_version: u64,
}

/// Who a disk completion belongs to.
#[derive(Clone, Copy, Debug)]
enum Route {
    Partition(u64),
    StartupListMeta,
    StartupReadMeta,
    StartupListRoot,
    MetaAppend,
    MetaFsync,
    MetaRename,
    Cleanup,
}

/// A response that may be sent once a metadata version is durable.
struct MetaWaiter {
    version: u64,
    conn: ConnId,
    seq: u64,
    frame: Option<Bytes>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Loading,
    Recovering,
    Ready,
    Failed,
}

/// The broker actor. See the module documentation.
pub struct Broker {
    config: BrokerConfig,
    /// The host each open client connection comes from.
    pub(crate) client_hosts: BTreeMap<ConnId, String>,
    /// Brokers whose node-to-node address refused a connect from this node, with the broker
    /// epoch of the registration that was refused: gone, though the controller may not have
    /// fenced them yet. See [`Broker::is_unreachable`].
    unreachable: BTreeMap<i32, i64>,
    /// Nodes whose node-to-node connection from this node was closed by their side, as the
    /// driver last told ([`BrokerMsg::LinksClosed`]), with the registration epoch they had then.
    closed_links: BTreeMap<i32, i64>,
    phase: Phase,
    meta_loaded: NodeMeta,
    pub(crate) topics: BTreeMap<String, Topic>,
    pub(crate) dynamic_broker: BTreeMap<String, String>,
    pub(crate) topic_names: BTreeMap<Uuid, String>,
    pub(crate) locations: BTreeMap<u64, (String, usize)>,
    /// Partitions deleted (with their topic, or as a stray) while operations of their log were
    /// in flight, by uid: kept until those complete, so that the reads among them are answered.
    retired: BTreeMap<u64, Partition>,
    routes: BTreeMap<IoToken, Route>,
    queued: VecDeque<(ConnId, u64, Bytes)>,
    pub(crate) next_id: u64,
    next_uid: u64,
    // metadata file writing
    meta_version: u64,
    meta_durable_version: u64,
    meta_in_flight: Option<u64>,
    meta_waiters: Vec<MetaWaiter>,
    producer_id_block_end: i64,
    next_producer_id: i64,
    /// Requests for a fresh producer id waiting for the id block to be durable.
    pending_init_producer: VecDeque<(ConnId, u64, Box<Request>)>,
    // request state
    pub(crate) produces: BTreeMap<u64, produce::PendingProduce>,
    /// DeleteRecords requests waiting for their low watermarks.
    pub(crate) deletes: BTreeMap<u64, delete_records::PendingDelete>,
    pub(crate) fetches: BTreeMap<u64, fetch::FetchState>,
    pub(crate) fetch_sessions: BTreeMap<i32, fetch::FetchSession>,
    pub(crate) reads: BTreeMap<u64, (u64, usize)>,
    pub(crate) watchers: watch::Watches,
    pub(crate) list_offsets: BTreeMap<u64, offsets::ListOffsetsState>,
    pub(crate) timestamp_queries: BTreeMap<u64, (u64, usize, usize)>,
    last_retention_ms: u64,
    /// When compacted logs were last checked for a cleaning pass.
    last_cleaning_ms: u64,
    pub(crate) cluster: cluster::Cluster,
    pub(crate) group: crate::group::Coordinator,
    pub(crate) group_io: groups::GroupIo,
}

/// Issues disk operations for one partition and records the owner of each token.
pub(crate) struct Tracked<'a> {
    cx: &'a mut Cx<BrokerMsg>,
    routes: &'a mut BTreeMap<IoToken, Route>,
    uid: u64,
}

impl DiskIo for Tracked<'_> {
    fn disk(&mut self, op: DiskOp) -> IoToken {
        let token = self.cx.disk(op);
        self.routes.insert(token, Route::Partition(self.uid));
        token
    }
}

impl Broker {
    /// A broker with the given static configuration.
    pub fn new(config: BrokerConfig) -> Self {
        Broker {
            group: crate::group::Coordinator::new(config.groups.clone()),
            group_io: groups::GroupIo::default(),
            config,
            phase: Phase::Loading,
            meta_loaded: NodeMeta::default(),
            topics: BTreeMap::new(),
            dynamic_broker: BTreeMap::new(),
            topic_names: BTreeMap::new(),
            locations: BTreeMap::new(),
            retired: BTreeMap::new(),
            routes: BTreeMap::new(),
            queued: VecDeque::new(),
            next_id: 1000,
            next_uid: 1,
            meta_version: 0,
            meta_durable_version: 0,
            meta_in_flight: None,
            meta_waiters: Vec::new(),
            producer_id_block_end: 0,
            next_producer_id: 0,
            pending_init_producer: VecDeque::new(),
            produces: BTreeMap::new(),
            deletes: BTreeMap::new(),
            fetches: BTreeMap::new(),
            client_hosts: BTreeMap::new(),
            unreachable: BTreeMap::new(),
            closed_links: BTreeMap::new(),
            fetch_sessions: BTreeMap::new(),
            reads: BTreeMap::new(),
            watchers: watch::Watches::default(),
            list_offsets: BTreeMap::new(),
            timestamp_queries: BTreeMap::new(),
            last_retention_ms: 0,
            last_cleaning_ms: 0,
            cluster: cluster::Cluster::new(),
        }
    }

    /// The static configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Every partition's offsets (cheap: call it after every step for invariant checks).
    pub fn partition_views(&self) -> Vec<PartitionView<'_>> {
        let mut out = Vec::new();
        for (topic, t) in &self.topics {
            for p in &t.partitions {
                out.push(PartitionView {
                    topic: topic.as_str(),
                    index: p.index,
                    ready: p.is_ready() && self.topic_durable(t),
                    log_start_offset: p.log.log_start_offset(),
                    high_watermark: p.high_watermark,
                    log_end_offset: p.log.log_end_offset(),
                    durable_offset: p.log.durable_offset(),
                    role: p.role,
                    leader_epoch: p.leader_epoch,
                    isr: &p.isr,
                    segments_cleaned: p.log.segments_cleaned(),
                    producers: p.producer_windows(),
                });
            }
        }
        out
    }

    /// The group coordinator of the shards this node leads.
    pub fn groups(&self) -> &crate::group::Coordinator {
        &self.group
    }

    /// Whether startup recovery has finished.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    pub(crate) fn phase_is_not_ready(&self) -> bool {
        self.phase != Phase::Ready
    }

    /// Replicas whose data this broker deleted because a reassignment moved them away.
    pub fn stray_replicas_deleted(&self) -> u64 {
        self.cluster.strays_deleted
    }

    /// Registrations of parked fetches (client and replica) on the partitions they wait for:
    /// bounded by the fetches parked right now, whatever ran before.
    pub fn parked_watch_registrations(&self) -> usize {
        self.watchers.size().1 + self.serving_watch_size()
    }

    /// This broker's replica fetches as a follower: full and incremental (KIP-227 sessions).
    pub fn fetch_session_stats(&self) -> cluster::FetchSessionStats {
        self.cluster.session_stats
    }

    /// Metadata image chunks taken from the controller (an image larger than the controller's
    /// `snapshot_chunk_bytes` takes several).
    pub fn metadata_image_chunks(&self) -> u64 {
        self.cluster.image_chunks
    }

    /// The offset of the metadata image this broker applied.
    pub fn metadata_offset(&self) -> u64 {
        self.cluster.image.offset
    }

    /// Whether the broker is registered, unfenced and has applied the controller's metadata.
    pub fn is_serving(&self) -> bool {
        let me = self.cluster.image.brokers.get(&self.config.node_id);
        // Unfenced in the applied metadata, not just in the controller's answer: clients learn
        // the broker list from this image.
        let listed = me.is_some_and(|b| b.epoch == self.cluster.epoch && !b.fenced);
        self.phase == Phase::Ready && self.cluster.epoch >= 0 && !self.cluster.fenced && listed && self.cluster.caught_up()
    }

    pub(crate) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn disk(&mut self, cx: &mut Cx<BrokerMsg>, op: DiskOp, route: Route) {
        let token = cx.disk(op);
        self.routes.insert(token, route);
    }

    /// Run `f` on partition `uid` with a disk handle that routes its completions back to it.
    pub(crate) fn with_partition<R>(
        &mut self,
        cx: &mut Cx<BrokerMsg>,
        topic: &str,
        index: usize,
        f: impl FnOnce(&mut Partition, &mut Tracked<'_>) -> R,
    ) -> Option<R> {
        let partition = self.topics.get_mut(topic)?.partitions.get_mut(index)?;
        let mut io = Tracked { cx, routes: &mut self.routes, uid: partition.uid };
        Some(f(partition, &mut io))
    }

    /// Whether a topic's creation is durable.
    pub(crate) fn topic_durable(&self, topic: &Topic) -> bool {
        self.meta_durable_version >= topic.created_version
    }

    /// Partition `index` of `topic` if it exists, is durable and recovered.
    pub(crate) fn ready_partition(&self, topic: &str, index: i32) -> Result<&Partition, i16> {
        let t = self.topics.get(topic).ok_or(error::UNKNOWN_TOPIC_OR_PARTITION)?;
        let p = usize::try_from(index).ok().and_then(|i| t.partitions.get(i)).ok_or(error::UNKNOWN_TOPIC_OR_PARTITION)?;
        if !self.topic_durable(t) || !p.is_ready() || p.role != crate::partition::Role::Leader {
            return Err(error::NOT_LEADER_OR_FOLLOWER);
        }
        Ok(p)
    }

    /// Add a topic (creation or recovery). Its partitions' logs are started by
    /// [`host_partition`](Broker::host_partition), for the replicas this broker holds.
    pub(crate) fn add_topic(&mut self, name: &str, id: Uuid, partitions: i32, configs: BTreeMap<String, String>, created_version: u64) {
        self.topics.insert(name.to_string(), Topic { id, partitions: Vec::new(), configs, created_version });
        self.topic_names.insert(id, name.to_string());
        self.grow_topic(name, partitions);
    }

    /// Add partitions to `name` until it has `count` (not hosted yet).
    pub(crate) fn grow_topic(&mut self, name: &str, count: i32) {
        let existing = self.topics[name].partitions.len() as i32;
        for index in existing..count {
            let p = self.new_partition(name, index);
            self.topics.get_mut(name).expect("topic just checked").partitions.push(p);
        }
    }

    /// A partition of `name` with a fresh uid, configured from the topic, its log not started.
    fn new_partition(&mut self, name: &str, index: i32) -> Partition {
        let settings = {
            let t = &self.topics[name];
            config::topic_settings(&t.configs, &self.dynamic_broker, &self.config)
        };
        let uid = self.next_uid;
        self.next_uid += 1;
        let mut p = Partition::new(name, index, uid, format!("{name}-{index}"), settings.log.clone());
        p.me = self.config.node_id;
        apply_settings(&mut p, &settings);
        self.locations.insert(uid, (name.to_string(), index as usize));
        p
    }

    /// Start the log of partition `index` of `name` (recovering what its directory holds, or
    /// creating it) unless it is already hosted. Its role is applied once it is recovered.
    pub(crate) fn host_partition(&mut self, cx: &mut Cx<BrokerMsg>, name: &str, index: usize) {
        let Some(p) = self.topics.get_mut(name).and_then(|t| t.partitions.get_mut(index)) else { return };
        if p.is_hosted() {
            return;
        }
        let mut io = Tracked { cx, routes: &mut self.routes, uid: p.uid };
        p.start(&mut io);
    }

    /// Stop hosting partition `index` of `name`: delete its directory and forget its state (a
    /// replica moved away). It gets a new uid; the old one is [retired](Broker::retire).
    pub(crate) fn unhost_partition(&mut self, cx: &mut Cx<BrokerMsg>, name: &str, index: usize) {
        if !self.topics.get(name).is_some_and(|t| t.partitions.get(index).is_some_and(|p| p.is_hosted())) {
            return;
        }
        let fresh = self.new_partition(name, index as i32);
        let old = std::mem::replace(&mut self.topics.get_mut(name).expect("checked").partitions[index], fresh);
        self.retire(cx, old);
    }

    /// Forget a partition; if it is hosted, delete its directory and keep it while its log waits
    /// on completions.
    fn retire(&mut self, cx: &mut Cx<BrokerMsg>, mut p: Partition) {
        self.locations.remove(&p.uid);
        if !p.is_hosted() {
            return;
        }
        let mut io = Tracked { cx, routes: &mut self.routes, uid: p.uid };
        p.log.delete_all(&mut io);
        if p.log.has_pending_io() {
            self.retired.insert(p.uid, p);
        }
    }

    /// A completion for a retired partition's log: only answers to reads still matter.
    fn on_retired_io(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64, done: IoDone) {
        let Some(mut p) = self.retired.remove(&uid) else { return };
        let mut io = Tracked { cx, routes: &mut self.routes, uid };
        let events = p.log.on_io(&mut io, done);
        if p.log.has_pending_io() {
            self.retired.insert(uid, p);
        }
        for event in events {
            match event {
                LogEvent::ReadDone { read_id, records } => self.deliver_read(cx, read_id, Ok(records)),
                LogEvent::ReadFailed { read_id, error } => self.deliver_read(cx, read_id, Err(error)),
                LogEvent::TimestampFound { query_id, found } => self.on_timestamp_found(cx, query_id, found),
                LogEvent::Failed { error } => tracing::warn!(uid, "a deleted partition's log failed: {error}"),
                _ => {}
            }
        }
    }

    /// A log read finished: hand it to the replica fetch, group load or client fetch it was for.
    fn deliver_read(&mut self, cx: &mut Cx<BrokerMsg>, read_id: u64, records: Result<Bytes, String>) {
        if !self.on_serving_read(cx, read_id, &records) && !self.on_group_load_read(cx, read_id, &records) {
            self.on_read_done(cx, read_id, records);
        }
    }

    /// Re-apply configuration to every partition of `name` (after AlterConfigs).
    pub(crate) fn reconfigure_topic(&mut self, name: &str) {
        let Some(t) = self.topics.get_mut(name) else { return };
        let settings = config::topic_settings(&t.configs, &self.dynamic_broker, &self.config);
        for p in &mut t.partitions {
            p.log.set_config(settings.log.clone());
            apply_settings(p, &settings);
        }
    }

    /// Remove a topic and delete its data.
    pub(crate) fn remove_topic(&mut self, cx: &mut Cx<BrokerMsg>, name: &str) {
        let Some(t) = self.topics.remove(name) else { return };
        self.topic_names.remove(&t.id);
        for p in t.partitions {
            self.retire(cx, p);
        }
    }

    /// Record a metadata change; returns the version whose durability makes it permanent.
    pub(crate) fn meta_changed(&mut self, cx: &mut Cx<BrokerMsg>) -> u64 {
        self.meta_version += 1;
        self.maybe_write_meta(cx);
        self.meta_version
    }

    /// Send `frame` to `conn` once metadata `version` is durable.
    pub(crate) fn reply_when_durable(&mut self, cx: &mut Cx<BrokerMsg>, version: u64, conn: ConnId, seq: u64, frame: Option<Bytes>) {
        if self.meta_durable_version >= version {
            cx.reply(conn, seq, frame);
        } else {
            self.meta_waiters.push(MetaWaiter { version, conn, seq, frame });
        }
    }

    fn snapshot_meta(&self) -> NodeMeta {
        let mut m = NodeMeta { producer_id_block_end: 0, dynamic_broker: self.dynamic_broker.clone(), ..Default::default() };
        for (name, t) in &self.topics {
            m.topics.insert(name.clone(), meta::TopicMeta { id: t.id, partitions: t.partitions.len() as i32, configs: t.configs.clone() });
        }
        m
    }

    fn maybe_write_meta(&mut self, cx: &mut Cx<BrokerMsg>) {
        if self.meta_in_flight.is_some() || self.meta_version == self.meta_durable_version {
            return;
        }
        self.meta_in_flight = Some(self.meta_version);
        let data = Bytes::from(self.snapshot_meta().encode());
        self.disk(cx, DiskOp::Delete { path: META_TMP_PATH.into() }, Route::Cleanup);
        self.disk(cx, DiskOp::Append { path: META_TMP_PATH.into(), data }, Route::MetaAppend);
    }

    fn on_meta_durable(&mut self, cx: &mut Cx<BrokerMsg>) {
        let version = self.meta_in_flight.take().expect("meta write in flight");
        self.meta_durable_version = version;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.meta_waiters).into_iter().partition(|w| w.version <= version);
        self.meta_waiters = waiting;
        for w in ready {
            cx.reply(w.conn, w.seq, w.frame);
        }
        self.maybe_write_meta(cx);
        // A topic whose creation just became durable may be a coordinator shard this node leads.
        self.sync_group_shards(cx);
    }

    fn fail(&mut self, cx: &mut Cx<BrokerMsg>, why: &str) {
        tracing::error!(node = self.config.node_id, "broker failed: {why}");
        self.phase = Phase::Failed;
        cx.stop();
    }

    fn on_startup_io(&mut self, cx: &mut Cx<BrokerMsg>, route: Route, output: IoOutput) {
        match (route, output) {
            (Route::StartupListMeta, IoOutput::List(entries)) => {
                if entries.iter().any(|e| e.name == "topics") {
                    self.disk(cx, DiskOp::Read { path: META_PATH.into(), position: 0, len: 1 << 30 }, Route::StartupReadMeta);
                } else {
                    self.disk(cx, DiskOp::List { path: String::new() }, Route::StartupListRoot);
                }
            }
            (Route::StartupReadMeta, IoOutput::Read(bytes)) => match NodeMeta::decode(&bytes) {
                Some(m) => {
                    self.meta_loaded = m;
                    self.disk(cx, DiskOp::List { path: String::new() }, Route::StartupListRoot);
                }
                None => self.fail(cx, "meta/topics is corrupt (its CRC does not match); refusing to start rather than forget topics"),
            },
            (Route::StartupListRoot, IoOutput::List(entries)) => {
                let m = std::mem::take(&mut self.meta_loaded);
                self.dynamic_broker = m.dynamic_broker.clone();
                for e in entries.iter().filter(|e| e.is_dir && e.name != "meta" && e.name != crate::controller::store::DIR) {
                    let known = e
                        .name
                        .rsplit_once('-')
                        .is_some_and(|(topic, index)| m.topics.get(topic).is_some_and(|t| index.parse::<i32>().is_ok_and(|i| i >= 0 && i < t.partitions)));
                    if !known {
                        tracing::info!("deleting directory {} of a deleted topic", e.name);
                        self.disk(cx, DiskOp::DeleteDir { path: e.name.clone() }, Route::Cleanup);
                    }
                }
                // Every partition with a directory is recovered; whether it is still a replica
                // here is known once the metadata image arrives (a stray is deleted then).
                let dirs: BTreeSet<&str> = entries.iter().filter(|e| e.is_dir).map(|e| e.name.as_str()).collect();
                for (name, t) in &m.topics {
                    self.add_topic(name, t.id, t.partitions, t.configs.clone(), 0);
                    for index in 0..t.partitions.max(0) as usize {
                        if dirs.contains(format!("{name}-{index}").as_str()) {
                            self.host_partition(cx, name, index);
                        }
                    }
                }
                self.phase = Phase::Recovering;
                self.check_recovered(cx);
            }
            (route, output) => self.fail(cx, &format!("unexpected startup completion {route:?}: {output:?}")),
        }
    }

    fn check_recovered(&mut self, cx: &mut Cx<BrokerMsg>) {
        if self.phase != Phase::Recovering || !self.topics.values().all(|t| t.partitions.iter().all(|p| p.is_ready() || !p.is_hosted())) {
            return;
        }
        self.phase = Phase::Ready;
        tracing::info!(node = self.config.node_id, topics = self.topics.len(), "broker recovered its logs");
        self.maybe_start_serving(cx);
    }

    /// The first time the broker is registered, unfenced and caught up: answer what waited.
    pub(crate) fn maybe_start_serving(&mut self, cx: &mut Cx<BrokerMsg>) {
        if self.cluster.started_serving || !self.is_serving() {
            return;
        }
        self.cluster.started_serving = true;
        tracing::info!(node = self.config.node_id, epoch = self.cluster.epoch, "broker serving clients");
        while let Some((conn, seq, frame)) = self.queued.pop_front() {
            self.on_frame(cx, conn, seq, frame);
        }
    }

    fn on_partition_events(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64, events: Vec<LogEvent>) {
        let Some((topic, index)) = self.locations.get(&uid).cloned() else { return };
        for event in events {
            match event {
                LogEvent::Recovered { checkpoint, replay } => {
                    let now_ms = cx.now_ms();
                    self.with_partition(cx, &topic, index, |p, io| {
                        p.on_recovered(io, now_ms, &checkpoint, &replay);
                        tracing::debug!(topic, index, log_end_offset = p.log.log_end_offset(), "partition recovered");
                    });
                    self.check_recovered(cx);
                    self.on_partition_ready(cx);
                }
                LogEvent::Written { offset } => {
                    let moved = self.topics.get_mut(&topic).and_then(|t| t.partitions.get_mut(index)).is_some_and(|p| p.on_written(offset));
                    if moved {
                        self.on_high_watermark(cx, uid);
                    } else {
                        self.complete_produces(cx, Some(uid));
                    }
                    // New data for followers.
                    self.wake_serving(cx, uid);
                }
                LogEvent::Durable { offset } => {
                    let moved = self.topics.get_mut(&topic).and_then(|t| t.partitions.get_mut(index)).is_some_and(|p| p.on_durable(offset));
                    if moved {
                        self.on_high_watermark(cx, uid);
                    }
                    self.follower_progress(cx, uid);
                }
                LogEvent::LogStartDurable { .. } => {
                    // A follower reports it in its next fetch; a leader may answer DeleteRecords.
                    self.follower_progress(cx, uid);
                    self.complete_deletes(cx, Some(uid));
                }
                LogEvent::ReadDone { read_id, records } => self.deliver_read(cx, read_id, Ok(records)),
                LogEvent::ReadFailed { read_id, error } => self.deliver_read(cx, read_id, Err(error)),
                LogEvent::TimestampFound { query_id, found } => self.on_timestamp_found(cx, query_id, found),
                LogEvent::Failed { error } => {
                    tracing::error!(topic, index, "partition log failed: {error}");
                    self.fail(cx, &format!("log of {topic}-{index} failed: {error}"));
                }
            }
        }
    }

    /// The high watermark of `uid` moved: finish produces waiting on it and wake parked fetches.
    pub(crate) fn on_high_watermark(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64) {
        self.complete_produces(cx, Some(uid));
        self.wake_fetches(cx, uid);
        self.wake_serving(cx, uid);
        self.group_high_watermark(cx, uid);
    }

    fn on_frame(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, frame: Bytes) {
        // Like Kafka's broker, serve clients only once registered, unfenced and caught up with
        // the metadata log; until then requests wait.
        if self.phase != Phase::Ready || !self.cluster.started_serving {
            self.queued.push_back((conn, seq, frame));
            return;
        }
        let request = match codec::decode_frame(frame) {
            Decoded::Request(r) => r,
            Decoded::Respond(frame) => return cx.reply(conn, seq, Some(frame)),
            Decoded::Close(why) => {
                tracing::info!(conn = conn.0, "closing connection: {why}");
                return cx.close(conn);
            }
        };
        self.dispatch(cx, conn, seq, request);
    }

    fn dispatch(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, mut request: Box<Request>) {
        let body = std::mem::replace(&mut request.body, RequestKind::ApiVersions(Default::default()));
        let frame = match body {
            RequestKind::ApiVersions(_) => codec::respond(&request, &codec::api_versions_body(error::NONE)),
            RequestKind::Metadata(r) => codec::respond(&request, &self.on_metadata(cx, &request, r)),
            RequestKind::DescribeCluster(_) => codec::respond(&request, &self.on_describe_cluster()),
            RequestKind::Produce(r) => return self.on_produce(cx, conn, seq, request, r),
            RequestKind::Fetch(r) => return self.on_fetch(cx, conn, seq, request, r),
            RequestKind::ListOffsets(r) => return self.on_list_offsets(cx, conn, seq, request, r),
            RequestKind::OffsetForLeaderEpoch(r) => codec::respond(&request, &self.on_offset_for_leader_epoch(r)),
            RequestKind::CreateTopics(r) => return self.on_create_topics(cx, conn, seq, request, r),
            RequestKind::DeleteTopics(r) => return self.on_delete_topics(cx, conn, seq, request, r),
            RequestKind::CreatePartitions(r) => return self.on_create_partitions(cx, conn, seq, request, r),
            RequestKind::DeleteRecords(r) => return self.on_delete_records(cx, conn, seq, request, r),
            RequestKind::DescribeConfigs(r) => codec::respond(&request, &self.on_describe_configs(r)),
            RequestKind::AlterConfigs(r) => return self.on_alter_configs(cx, conn, seq, request, r),
            RequestKind::IncrementalAlterConfigs(r) => return self.on_incremental_alter_configs(cx, conn, seq, request, r),
            RequestKind::ElectLeaders(r) => return self.on_elect_leaders(cx, conn, seq, request, r),
            RequestKind::DescribeQuorum(r) => return self.on_describe_quorum(cx, conn, seq, request, r),
            RequestKind::AlterPartitionReassignments(r) => return self.on_alter_reassignments(cx, conn, seq, request, r),
            RequestKind::ListPartitionReassignments(r) => codec::respond(&request, &self.on_list_reassignments(r)),
            RequestKind::InitProducerId(r) => return self.on_init_producer_id(cx, conn, seq, request, r),
            RequestKind::FindCoordinator(r) => return self.on_find_coordinator(cx, conn, seq, request, r),
            body @ (RequestKind::JoinGroup(_)
            | RequestKind::SyncGroup(_)
            | RequestKind::Heartbeat(_)
            | RequestKind::LeaveGroup(_)
            | RequestKind::OffsetCommit(_)
            | RequestKind::OffsetFetch(_)
            | RequestKind::OffsetDelete(_)
            | RequestKind::ListGroups(_)
            | RequestKind::DescribeGroups(_)
            | RequestKind::DeleteGroups(_)
            | RequestKind::ConsumerGroupHeartbeat(_)
            | RequestKind::ConsumerGroupDescribe(_)) => return self.on_group_request(cx, conn, seq, request, body),
            other => Err(format!("no handler for {other:?}")),
        };
        self.send(cx, conn, seq, frame);
    }

    /// Send an encoded response, or close the connection if encoding failed.
    pub(crate) fn send(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, frame: Result<Bytes, String>) {
        match frame {
            Ok(f) => cx.reply(conn, seq, Some(f)),
            Err(e) => {
                tracing::warn!(conn = conn.0, "cannot encode response: {e}");
                cx.close(conn);
            }
        }
    }

    fn on_init_producer_id(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: InitProducerIdRequest) {
        let mut response = InitProducerIdResponse::default();
        if r.transactional_id.is_some() {
            // Transactions come with the transaction coordinator; refuse rather than pretend.
            response.error_code = error::INVALID_REQUEST;
            response.producer_id = ProducerId(-1);
            response.producer_epoch = -1;
        } else if r.producer_id.0 >= 0 && r.producer_epoch >= 0 {
            // KIP-360: an idempotent producer bumps its own epoch after a fatal sequence error.
            response.producer_id = r.producer_id;
            response.producer_epoch = if r.producer_epoch == i16::MAX { 0 } else { r.producer_epoch + 1 };
        } else {
            self.pending_init_producer.push_back((conn, seq, request));
            return self.answer_init_producer_ids(cx);
        }
        let frame = codec::respond(&request, &response);
        self.send(cx, conn, seq, frame);
    }

    /// Hand out fresh producer ids, in request order, from a block the controller allocated;
    /// when the block is spent, ask for the next one.
    pub(crate) fn answer_init_producer_ids(&mut self, cx: &mut Cx<BrokerMsg>) {
        while !self.pending_init_producer.is_empty() {
            if self.next_producer_id >= self.producer_id_block_end {
                return self.request_producer_ids(cx);
            }
            let (conn, seq, request) = self.pending_init_producer.pop_front().expect("not empty");
            let response = InitProducerIdResponse::default().with_producer_id(ProducerId(self.next_producer_id)).with_producer_epoch(0);
            self.next_producer_id += 1;
            let frame = codec::respond(&request, &response);
            self.send(cx, conn, seq, frame);
        }
    }

    fn on_housekeeping(&mut self, cx: &mut Cx<BrokerMsg>) {
        let now_ms = cx.now_ms();
        let wall = cx.wall_clock_ms();
        let retention_due = now_ms >= self.last_retention_ms + self.config.retention_check_interval_ms;
        if retention_due {
            self.last_retention_ms = now_ms;
        }
        let cleaning_due = now_ms >= self.last_cleaning_ms + self.config.cleaner_backoff_ms;
        if cleaning_due {
            self.last_cleaning_ms = now_ms;
        }
        let uids: Vec<(String, usize)> = self.locations.values().cloned().collect();
        for (topic, index) in uids {
            self.with_partition(cx, &topic, index, |p, io| {
                if !p.is_ready() {
                    return;
                }
                p.tick(io, now_ms);
                if crate::buggify!(io.cx) {
                    // An extra, unrequested group commit.
                    p.flush(io, now_ms);
                }
                if retention_due {
                    let high_watermark = p.high_watermark;
                    p.log.apply_retention(io, wall, high_watermark);
                }
                if cleaning_due {
                    // Only below the high watermark: nothing a truncation may still remove.
                    if let Some(bound) = p.clean_bound() {
                        p.log.maybe_clean(io, bound, wall);
                    }
                }
            });
        }
        self.expire_produces(cx);
        // Also answers those whose waits ended with a replica's broker fenced.
        self.complete_deletes(cx, None);
        self.expire_deletes(cx);
        if self.phase == Phase::Ready {
            self.cluster_tick(cx);
            self.group_tick(cx);
        }
        cx.set_timer(HOUSEKEEPING, HOUSEKEEPING_INTERVAL_MS);
    }
}

/// Copy a topic's settings onto a partition.
fn apply_settings(p: &mut Partition, s: &config::TopicSettings) {
    p.flush_policy = s.flush_policy;
    p.log_append_time = s.log_append_time;
    p.max_message_bytes = s.max_message_bytes;
    p.timestamp_before_max_ms = s.timestamp_before_max_ms;
    p.timestamp_after_max_ms = s.timestamp_after_max_ms;
    p.min_insync_replicas = s.min_insync_replicas;
}

impl Actor for Broker {
    type Msg = BrokerMsg;

    fn on_start(&mut self, cx: &mut Cx<BrokerMsg>) {
        self.phase = Phase::Loading;
        self.cluster_start(cx);
        self.disk(cx, DiskOp::List { path: "meta".into() }, Route::StartupListMeta);
        cx.set_timer(HOUSEKEEPING, HOUSEKEEPING_INTERVAL_MS);
    }

    fn on_message(&mut self, cx: &mut Cx<BrokerMsg>, _from: Addr, msg: BrokerMsg) {
        match msg {
            BrokerMsg::Request { conn, seq, frame } => self.on_frame(cx, conn, seq, frame),
            BrokerMsg::Connected { conn, host } => {
                self.client_hosts.insert(conn, host);
            }
            BrokerMsg::Disconnected { conn } => self.on_disconnected(conn),
            BrokerMsg::Peer(m) => {
                if self.phase == Phase::Ready {
                    self.on_peer(cx, _from, m);
                }
            }
            BrokerMsg::Shutdown => self.begin_shutdown(cx),
            BrokerMsg::LinksClosed { nodes } => {
                let mut closed = BTreeMap::new();
                for node in nodes {
                    // Kept with the registration it was about: a restart registers anew and is
                    // named again even if nothing has reconnected to it yet.
                    let Some(b) = self.cluster.image.brokers.get(&node).filter(|b| !b.fenced) else { continue };
                    let epoch = self.closed_links.get(&node).copied().unwrap_or(b.epoch);
                    if !self.closed_links.contains_key(&node) {
                        tracing::info!(broker = node, "a broker closed its node-to-node connection: not naming it as a leader while it stays closed");
                    }
                    closed.insert(node, epoch);
                }
                self.closed_links = closed;
            }
            BrokerMsg::PeerRefused { node } => {
                if let Some(b) = self.cluster.image.brokers.get(&node).filter(|b| !b.fenced) {
                    if self.unreachable.insert(node, b.epoch) != Some(b.epoch) {
                        tracing::info!(broker = node, "a broker's node-to-node address refuses connections: not naming it as a leader until it is fenced");
                    }
                }
                if self.phase == Phase::Ready {
                    self.controller_refused(cx, node);
                }
            }
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<BrokerMsg>, timer: TimerId) {
        if timer == HOUSEKEEPING {
            self.on_housekeeping(cx);
        } else if timer.0 >= cluster::REPLICA_TIMER_BASE {
            self.on_serving_deadline(cx, timer.0 - cluster::REPLICA_TIMER_BASE);
        } else {
            self.on_fetch_deadline(cx, timer.0);
        }
    }

    fn on_io(&mut self, cx: &mut Cx<BrokerMsg>, done: IoDone) {
        let Some(route) = self.routes.remove(&done.token) else {
            tracing::warn!("completion for unknown token {:?}", done.token);
            return;
        };
        match route {
            Route::Partition(uid) => {
                let Some((topic, index)) = self.locations.get(&uid).cloned() else { return self.on_retired_io(cx, uid, done) };
                let events = self.with_partition(cx, &topic, index, |p, io| p.log.on_io(io, done)).unwrap_or_default();
                self.on_partition_events(cx, uid, events);
            }
            Route::Cleanup => {
                if let Err(e) = done.result {
                    tracing::warn!("cleanup failed: {e}");
                }
            }
            Route::MetaAppend | Route::MetaFsync | Route::MetaRename => match done.result {
                Err(e) => self.fail(cx, &format!("writing {META_PATH} failed: {e}")),
                Ok(_) => match route {
                    Route::MetaAppend => self.disk(cx, DiskOp::Fsync { path: META_TMP_PATH.into() }, Route::MetaFsync),
                    Route::MetaFsync => self.disk(cx, DiskOp::Rename { from: META_TMP_PATH.into(), to: META_PATH.into() }, Route::MetaRename),
                    _ => self.on_meta_durable(cx),
                },
            },
            startup => match done.result {
                Ok(output) => self.on_startup_io(cx, startup, output),
                Err(e) => self.fail(cx, &format!("startup IO failed: {e}")),
            },
        }
    }
}

impl Broker {
    /// Whether `node` is a broker whose current registration refused a connect from this node,
    /// or closed its connection from this node (as the kernel told just before the request
    /// being answered): its process is gone and the controller is about to fence it. Metadata and
    /// DescribeCluster leave it out and report its partitions without a leader until then, so
    /// that clients keep asking (librdkafka stops its fast leader queries at the first answer
    /// naming a leader) and find the new leader as soon as it is chosen. A new registration
    /// (a restart) has another epoch and is not affected.
    pub(crate) fn is_unreachable(&self, node: i32) -> bool {
        let current = |epoch: &i64| self.cluster.image.brokers.get(&node).is_some_and(|b| !b.fenced && b.epoch == *epoch);
        self.closed_links.get(&node).is_some_and(current) || self.unreachable.get(&node).is_some_and(current)
    }

    fn on_disconnected(&mut self, conn: ConnId) {
        self.client_hosts.remove(&conn);
        // Parked fetches of a closed connection are dropped; their replies would go nowhere.
        let gone: Vec<u64> = self.fetches.iter().filter(|(_, f)| f.conn == conn && f.outstanding == 0).map(|(id, _)| *id).collect();
        for id in gone {
            self.fetches.remove(&id);
            self.watchers.unwatch(id);
        }
    }
}
