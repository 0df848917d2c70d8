//! The broker's side of group coordination: FindCoordinator, routing group requests to the
//! [`Coordinator`](crate::group::Coordinator), carrying out its appends to `__consumer_offsets`,
//! and loading or unloading a shard when this node gains or loses leadership of its partition.
//!
//! Loading replays the partition from its log start to the log end as it was when leadership
//! arrived; the shard serves once the high watermark has reached that end too, so nothing it
//! shows can be truncated away by a later leader change. Internal topics are created through the
//! controller on the first FindCoordinator, with `offsets.topic.num.partitions` partitions and
//! `offsets.topic.replication.factor` replicas (likewise for `__transaction_state`); until they
//! have leaders, FindCoordinator answers COORDINATOR_NOT_AVAILABLE and clients retry.

use super::{codec, error, Broker, BrokerMsg};
use crate::broker::codec::Request;
use crate::controller::rpc::AdminOp;
use crate::core::{ConnId, Cx};
use crate::group::{records, Now, Out, Responder, OFFSETS_TOPIC, TRANSACTION_TOPIC};
use crate::log::ReadStart;
use crate::partition::Role;
use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator as FoundCoordinator;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use std::collections::BTreeMap;

/// How much of a shard's log one load read asks for.
const LOAD_READ_BYTES: u64 = 1 << 20;
/// How long a FindCoordinator may wait for the coordinator topic to be created and led.
pub(crate) const FIND_COORDINATOR_WAIT_MS: u64 = 2_000;

/// A FindCoordinator waiting for its coordinator partitions to get leaders.
pub(crate) struct ParkedFind {
    conn: ConnId,
    seq: u64,
    request: Box<Request>,
    body: FindCoordinatorRequest,
    deadline_ms: u64,
}

/// An append to `__consumer_offsets` waiting for the high watermark.
pub(crate) struct GroupWrite {
    uid: u64,
    last_offset: i64,
    deadline_ms: u64,
    /// The coordinator was told the outcome is uncertain (its waiters were answered).
    uncertain: bool,
}

/// A shard being replayed.
pub(crate) struct Load {
    uid: u64,
    /// Next offset to read.
    next: i64,
    /// The log end when leadership arrived: replay up to here.
    end: i64,
    /// The read in flight.
    read: Option<u64>,
}

/// Group-coordination state the broker keeps next to the coordinator.
#[derive(Default)]
pub(crate) struct GroupIo {
    pub(crate) writes: BTreeMap<u64, GroupWrite>,
    pub(crate) loads: BTreeMap<i32, Load>,
    /// read id → shard.
    pub(crate) reads: BTreeMap<u64, i32>,
    /// When each internal topic's creation was last asked for (ms).
    create_asked: BTreeMap<&'static str, u64>,
    /// FindCoordinators waiting for a coordinator.
    pub(crate) finds: Vec<ParkedFind>,
}

impl Broker {
    fn group_now(cx: &Cx<BrokerMsg>) -> Now {
        Now { mono_ms: cx.now_ms(), wall_ms: cx.wall_clock_ms() }
    }

    /// Route a group request to the coordinator.
    pub(crate) fn on_group_request(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, body: RequestKind) {
        let now = Self::group_now(cx);
        let client_host = self.client_hosts.get(&conn).cloned().unwrap_or_default();
        let r = Responder { conn, seq, request, client_host };
        match body {
            RequestKind::JoinGroup(j) => self.group.on_join(r, j, now, cx.rng()),
            RequestKind::SyncGroup(s) => self.group.on_sync(r, s, now),
            RequestKind::Heartbeat(h) => self.group.on_heartbeat(r, h, now),
            RequestKind::LeaveGroup(l) => self.group.on_leave(r, l, now),
            RequestKind::OffsetCommit(c) => {
                let image = &self.cluster.image;
                let known = |t: &str, p: i32| p >= 0 && image.topics.get(t).is_some_and(|t| (p as usize) < t.partitions.len());
                self.group.on_commit(r, c, now, known);
            }
            RequestKind::OffsetFetch(f) => self.group.on_offset_fetch(r, f),
            RequestKind::OffsetDelete(d) => self.group.on_offset_delete(r, d),
            RequestKind::ListGroups(l) => self.group.on_list_groups(r, l),
            RequestKind::DescribeGroups(d) => self.group.on_describe_groups(r, d),
            RequestKind::DeleteGroups(d) => self.group.on_delete_groups(r, d),
            RequestKind::ConsumerGroupHeartbeat(h) => {
                let topics = self.topic_ids();
                self.group.on_consumer_heartbeat(r, h, &topics, now, cx.rng());
            }
            RequestKind::ConsumerGroupDescribe(d) => {
                let topics = self.topic_ids();
                self.group.on_consumer_describe(r, d, &topics);
            }
            other => {
                let frame = Err(format!("not a group request: {other:?}"));
                self.send(cx, r.conn, r.seq, frame);
            }
        }
        self.drive_groups(cx);
    }

    /// Topic names with their ids and partition counts, from the metadata.
    fn topic_ids(&self) -> crate::group::consumer::Topics {
        self.cluster.image.topics.iter().map(|(n, t)| (n.clone(), (uuid::Uuid::from_u128(t.id), t.partitions.len() as i32))).collect()
    }

    /// Carry out what the coordinator asked for.
    pub(crate) fn drive_groups(&mut self, cx: &mut Cx<BrokerMsg>) {
        loop {
            let out = self.group.take_out();
            if out.is_empty() {
                return;
            }
            for o in out {
                match o {
                    Out::Reply { conn, seq, frame } => self.send(cx, conn, seq, frame),
                    Out::Append { write, shard, records } => self.append_group_records(cx, write, shard, records),
                }
            }
        }
    }

    fn append_group_records(&mut self, cx: &mut Cx<BrokerMsg>, write: u64, shard: i32, records: Vec<(Bytes, Option<Bytes>)>) {
        let now = Self::group_now(cx);
        let plain: Vec<crate::log::batch::PlainRecord<'_>> = records.iter().map(|(k, v)| (Some(&k[..]), v.as_deref(), now.wall_ms)).collect();
        let batch = crate::log::batch::build_batch(&plain, (-1, -1, -1));
        let outcome = match self.ready_partition(OFFSETS_TOPIC, shard) {
            Err(code) => Err(code),
            Ok(p) if p.isr.len() < p.min_insync_replicas => Err(error::NOT_ENOUGH_REPLICAS),
            Ok(p) => {
                let uid = p.uid;
                self.with_partition(cx, OFFSETS_TOPIC, shard as usize, |p, io| p.append(io, &batch, now.mono_ms, now.wall_ms))
                    .unwrap_or(Err(error::UNKNOWN_TOPIC_OR_PARTITION))
                    .map(|a| (uid, a.last_offset))
            }
        };
        match outcome {
            Ok((uid, last_offset)) => {
                let deadline_ms = now.mono_ms + self.group.settings().commit_timeout_ms;
                self.group_io.writes.insert(write, GroupWrite { uid, last_offset, deadline_ms, uncertain: false });
                self.complete_group_writes(cx, Some(uid));
            }
            Err(code) => self.group.write_done(write, Err(code), now),
        }
    }

    /// Finish writes whose records reached the high watermark (of `uid` only, if given), and
    /// writes that timed out or lost their leader.
    pub(crate) fn complete_group_writes(&mut self, cx: &mut Cx<BrokerMsg>, uid: Option<u64>) {
        if self.group_io.writes.is_empty() {
            return;
        }
        let now = Self::group_now(cx);
        // Per write, in log order: answer now with a code (uncertain), then maybe finish it.
        type Step = (Option<i16>, Option<Result<(), i16>>);
        let mut due: Vec<(i64, u64, Step)> = Vec::new();
        for (id, w) in &self.group_io.writes {
            if uid.is_some_and(|u| u != w.uid) {
                continue;
            }
            let partition = self.locations.get(&w.uid).and_then(|(t, i)| self.topics.get(t)?.partitions.get(*i));
            let step = match partition {
                None => (None, Some(Err(error::NOT_LEADER_OR_FOLLOWER))),
                Some(p) if p.role != Role::Leader => (None, Some(Err(error::NOT_LEADER_OR_FOLLOWER))),
                // Committed, but with fewer in-sync replicas than asked for: applied, and whoever
                // waits is told it is not acknowledged.
                Some(p) if p.high_watermark > w.last_offset && p.isr.len() < p.min_insync_replicas && !w.uncertain => {
                    (Some(error::NOT_ENOUGH_REPLICAS_AFTER_APPEND), Some(Ok(())))
                }
                Some(p) if p.high_watermark > w.last_offset => (None, Some(Ok(()))),
                // In the log, not yet committed: answer now; the effect waits for the commit.
                Some(_) if now.mono_ms >= w.deadline_ms && !w.uncertain => (Some(error::REQUEST_TIMED_OUT), None),
                Some(_) => (None, None),
            };
            if step.0.is_some() || step.1.is_some() {
                due.push((w.last_offset, *id, step));
            }
        }
        due.sort();
        for (_, id, (uncertain, done)) in due {
            if let Some(code) = uncertain {
                if let Some(w) = self.group_io.writes.get_mut(&id) {
                    w.uncertain = true;
                }
                self.group.write_uncertain(id, code, now);
            }
            if let Some(result) = done {
                self.group_io.writes.remove(&id);
                self.group.write_done(id, result, now);
            }
        }
        self.drive_groups(cx);
    }

    /// New metadata was applied: coordinator shards follow the leadership of their
    /// `__consumer_offsets` partitions, writes of a lost leadership fail, and FindCoordinators
    /// waiting for a coordinator may have one now.
    pub(crate) fn groups_after_metadata(&mut self, cx: &mut Cx<BrokerMsg>) {
        self.complete_group_writes(cx, None);
        self.sync_group_shards(cx);
        if !self.group_io.finds.is_empty() {
            self.retry_finds(cx);
        }
    }

    /// Make the coordinator's shards match the `__consumer_offsets` partitions this node leads.
    pub(crate) fn sync_group_shards(&mut self, cx: &mut Cx<BrokerMsg>) {
        let Some(t) = self.topics.get(OFFSETS_TOPIC) else {
            for (shard, _) in self.group.owned() {
                self.group.unload(shard);
                self.group_io.loads.remove(&shard);
            }
            return self.drive_groups(cx);
        };
        let durable = self.topic_durable(t);
        self.group.partitions = t.partitions.len() as i32;
        let leading: BTreeMap<i32, (u64, i32)> =
            t.partitions.iter().filter(|p| durable && p.is_ready() && p.role == Role::Leader).map(|p| (p.index, (p.uid, p.leader_epoch))).collect();
        for (shard, _) in self.group.owned() {
            let same = leading.get(&shard).is_some_and(|(uid, _)| self.group_io.loads.get(&shard).is_none_or(|l| l.uid == *uid));
            if !same {
                self.group.unload(shard);
                self.group_io.loads.remove(&shard);
            }
        }
        for (shard, (uid, _)) in leading {
            if self.group.owns(shard) {
                continue;
            }
            let p = &self.topics[OFFSETS_TOPIC].partitions[shard as usize];
            let (next, end) = (p.log.log_start_offset(), p.log.log_end_offset());
            self.group.load_begin(shard);
            self.group_io.loads.insert(shard, Load { uid, next, end, read: None });
            self.continue_load(cx, shard);
        }
        self.drive_groups(cx);
    }

    /// Issue the next read of a load, or finish it.
    fn continue_load(&mut self, cx: &mut Cx<BrokerMsg>, shard: i32) {
        let Some(load) = self.group_io.loads.get(&shard) else { return };
        if load.read.is_some() {
            return;
        }
        let (next, end) = (load.next, load.end);
        if next >= end {
            // Replayed; serve once all of it is committed.
            let committed = self.topics.get(OFFSETS_TOPIC).and_then(|t| t.partitions.get(shard as usize)).is_some_and(|p| p.high_watermark >= end);
            if committed {
                self.group_io.loads.remove(&shard);
                self.group.load_done(shard);
            }
            return;
        }
        let read_id = self.fresh_id();
        let start = self.with_partition(cx, OFFSETS_TOPIC, shard as usize, |p, io| p.log.read(io, read_id, next, LOAD_READ_BYTES, end));
        match start {
            Some(ReadStart::Pending) => {
                self.group_io.reads.insert(read_id, shard);
                if let Some(l) = self.group_io.loads.get_mut(&shard) {
                    l.read = Some(read_id);
                }
            }
            Some(ReadStart::Empty) => {
                if let Some(l) = self.group_io.loads.get_mut(&shard) {
                    l.next = end;
                }
                self.continue_load(cx, shard);
            }
            Some(ReadStart::OutOfRange) | None => {
                // The log moved under us (retention, truncation): start over from its start.
                let restart =
                    self.topics.get(OFFSETS_TOPIC).and_then(|t| t.partitions.get(shard as usize)).map(|p| (p.log.log_start_offset(), p.log.log_end_offset()));
                match restart {
                    Some((start, end)) if start > next => {
                        tracing::warn!(shard, next, start, "{OFFSETS_TOPIC} shard load: log start moved; reloading");
                        self.group.load_begin(shard);
                        if let Some(l) = self.group_io.loads.get_mut(&shard) {
                            l.next = start;
                            l.end = end;
                        }
                        self.continue_load(cx, shard);
                    }
                    _ => tracing::warn!(shard, next, "{OFFSETS_TOPIC} shard load cannot read; retrying on the next tick"),
                }
            }
        }
    }

    /// A read of a shard load completed. Returns false if `read_id` is not one.
    pub(crate) fn on_group_load_read(&mut self, cx: &mut Cx<BrokerMsg>, read_id: u64, result: &Result<Bytes, String>) -> bool {
        let Some(shard) = self.group_io.reads.remove(&read_id) else { return false };
        let Some(load) = self.group_io.loads.get_mut(&shard).filter(|l| l.read == Some(read_id)) else { return true };
        load.read = None;
        let now = Self::group_now(cx);
        match result {
            Err(e) => tracing::warn!(shard, "{OFFSETS_TOPIC} shard load read failed ({e}); retrying on the next tick"),
            Ok(data) => {
                let load_next = load.next;
                let mut buf = data.clone();
                // Move on by batches: a cleaned batch may hold fewer records than offsets, or none.
                let next = load.next.max(crate::log::batch::end_of_batches(data).unwrap_or(0));
                match RecordBatchDecoder::decode_all(&mut buf) {
                    Err(e) => tracing::warn!(shard, "cannot decode {OFFSETS_TOPIC} batch at {next}: {e}; retrying on the next tick"),
                    Ok(sets) => {
                        for set in sets {
                            for rec in set.records {
                                if rec.offset < load_next || rec.control {
                                    continue;
                                }
                                if let Some(key) = rec.key.as_ref() {
                                    self.group.replay(shard, key, rec.value.as_deref(), now);
                                }
                            }
                        }
                        if next <= load_next {
                            // Nothing read below the end (the log moved, or a read came back
                            // empty): never skip what was not replayed; try again on the next tick.
                            tracing::warn!(shard, next, "{OFFSETS_TOPIC} shard load read nothing; retrying on the next tick");
                            return true;
                        }
                        if let Some(l) = self.group_io.loads.get_mut(&shard) {
                            l.next = next;
                        }
                        self.continue_load(cx, shard);
                    }
                }
            }
        }
        true
    }

    /// Periodic group work: coordinator timers, write timeouts, stalled loads.
    pub(crate) fn group_tick(&mut self, cx: &mut Cx<BrokerMsg>) {
        let now = Self::group_now(cx);
        let topics = self.topic_ids();
        self.group.tick(now, &topics);
        self.complete_group_writes(cx, None);
        let shards: Vec<i32> = self.group_io.loads.keys().copied().collect();
        for shard in shards {
            self.continue_load(cx, shard);
        }
        self.drive_groups(cx);
        if !self.group_io.finds.is_empty() {
            self.retry_finds(cx);
        }
    }

    /// The high watermark of `uid` moved: writes and loads waiting on it.
    pub(crate) fn group_high_watermark(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64) {
        self.complete_group_writes(cx, Some(uid));
        let loading: Vec<i32> = self.group_io.loads.iter().filter(|(_, l)| l.uid == uid).map(|(s, _)| *s).collect();
        for shard in loading {
            self.continue_load(cx, shard);
        }
        self.drive_groups(cx);
    }

    /// FindCoordinator (v0–3: one key; v4+: a batch of keys). While the coordinator topic is
    /// being created (or a partition has no leader yet), the answer waits up to
    /// [`FIND_COORDINATOR_WAIT_MS`] for it rather than sending the client into its retry backoff.
    pub(crate) fn on_find_coordinator(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: FindCoordinatorRequest) {
        let deadline_ms = cx.now_ms() + FIND_COORDINATOR_WAIT_MS;
        self.group_io.finds.push(ParkedFind { conn, seq, request, body: r, deadline_ms });
        self.retry_finds(cx);
    }

    /// Answer the FindCoordinators whose keys all have a coordinator now, or whose wait is over.
    pub(crate) fn retry_finds(&mut self, cx: &mut Cx<BrokerMsg>) {
        let now = cx.now_ms();
        for f in std::mem::take(&mut self.group_io.finds) {
            let keys: Vec<String> =
                if f.request.version >= 4 { f.body.coordinator_keys.iter().map(|k| k.to_string()).collect() } else { vec![f.body.key.to_string()] };
            let found: Vec<FoundCoordinator> = keys.iter().map(|k| self.find_coordinator(cx, f.body.key_type, k)).collect();
            let waiting = found.iter().any(|c| c.error_code == error::COORDINATOR_NOT_AVAILABLE);
            if waiting && now < f.deadline_ms {
                self.group_io.finds.push(f);
                continue;
            }
            let frame = Self::find_response(&f.request, found);
            self.send(cx, f.conn, f.seq, frame);
        }
    }

    fn find_response(request: &Request, found: Vec<FoundCoordinator>) -> Result<Bytes, String> {
        let mut response = FindCoordinatorResponse::default();
        if request.version >= 4 {
            response.coordinators = found;
        } else if let Some(c) = found.into_iter().next() {
            response.error_code = c.error_code;
            response.error_message = c.error_message;
            response.node_id = c.node_id;
            response.host = c.host;
            response.port = c.port;
        }
        codec::respond(request, &response)
    }

    fn find_coordinator(&mut self, cx: &mut Cx<BrokerMsg>, key_type: i8, key: &str) -> FoundCoordinator {
        let found = FoundCoordinator::default().with_key(StrBytes::from_string(key.to_string())).with_node_id((-1).into()).with_port(-1);
        let fail = |code: i16, message: &str| found.clone().with_error_code(code).with_error_message(Some(StrBytes::from_string(message.to_string())));
        let (topic, partitions, rf) = match key_type {
            0 => (OFFSETS_TOPIC, self.group.settings().offsets_partitions, self.group.settings().offsets_replication_factor),
            1 => (TRANSACTION_TOPIC, self.group.settings().transaction_partitions, self.group.settings().transaction_replication_factor),
            _ => return fail(error::INVALID_REQUEST, "key type must be 0 (group) or 1 (transaction)"),
        };
        let Some(t) = self.cluster.image.topics.get(topic) else {
            self.create_internal_topic(cx, topic, partitions, rf);
            return fail(error::COORDINATOR_NOT_AVAILABLE, "the coordinator topic is being created");
        };
        let shard = records::partition_for(key, t.partitions.len() as i32);
        let leader = t.partitions.get(shard as usize).map_or(-1, |p| p.leader);
        // A leader whose process is known gone (see `is_unreachable`) is not named either: the
        // client asks again instead of dialing a dead node.
        match self.cluster.image.brokers.get(&leader).filter(|b| !b.fenced && !self.is_unreachable(leader)) {
            Some(b) => found.with_node_id(leader.into()).with_host(StrBytes::from_string(b.host.clone())).with_port(b.port),
            None => fail(error::COORDINATOR_NOT_AVAILABLE, "the coordinator partition has no leader"),
        }
    }

    fn create_internal_topic(&mut self, cx: &mut Cx<BrokerMsg>, topic: &'static str, partitions: i32, rf: i16) {
        let now = cx.now_ms();
        if self.group_io.create_asked.get(topic).is_some_and(|at| now < at + 1_000) {
            return;
        }
        self.group_io.create_asked.insert(topic, now);
        let brokers = self.cluster.image.brokers.values().filter(|b| !b.fenced).count();
        if brokers < rf as usize {
            let key = if topic == OFFSETS_TOPIC { "offsets.topic.replication.factor" } else { "transaction.state.log.replication.factor" };
            tracing::warn!("cannot create {topic} yet: {key}={rf} needs {rf} live brokers and {brokers} are registered (set {key} lower on a smaller cluster)");
            return;
        }
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("compression.type".to_string(), "producer".to_string());
        // Compacted, never deleted by time or size: the latest record of every group and offset
        // key stays (`cleanup.policy=compact` without `delete`).
        let segment_bytes = if topic == OFFSETS_TOPIC { self.config.groups.offsets_segment_bytes } else { 100 << 20 };
        configs.insert("segment.bytes".to_string(), segment_bytes.to_string());
        tracing::info!(topic, partitions, rf, "creating internal topic");
        let op = AdminOp::CreateTopic { name: topic.to_string(), partitions, replication_factor: rf, assignments: Vec::new(), configs, validate_only: false };
        self.admin_forget(cx, op);
    }
}
