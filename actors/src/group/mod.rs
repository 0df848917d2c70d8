//! Group coordinators: consumer groups and committed offsets, sharded by the partitions of
//! `__consumer_offsets`.
//!
//! A group belongs to partition `partition_for(group, partitions)` of `__consumer_offsets`, and
//! the broker that leads that partition is its coordinator. The [`Coordinator`] here holds the
//! shards this node leads; it is a plain state machine owned by the broker actor, which feeds it
//! requests, the records of a shard's log when it becomes leader ([`Coordinator::replay`]),
//! write completions and the passage of time, and carries out what it asks in [`Out`]: responses
//! and appends to `__consumer_offsets`.
//!
//! Nothing is acknowledged before it is durable: an offset commit, a completed rebalance (the
//! leader's assignment) and a group deletion are appended to the shard's partition and answered
//! only once the high watermark passes them (acks=all, so `min.insync.replicas` applies). The
//! in-memory state changes at the same moment, so what OffsetFetch shows has always been
//! committed, and a coordinator that takes over after a failover rebuilds exactly that state from
//! the log. A write that times out (or commits after the ISR fell below `min.insync.replicas`)
//! is answered with an error but stays in the leader's log: an offset commit or KIP-848 state in
//! it still applies if it commits in the same tenure, so the coordinator never serves less than
//! its committed log holds.
//!
//! The classic protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) lives in `classic.rs`,
//! offsets and the admin APIs in `offsets.rs`; the record layouts in `records.rs`.

mod classic;
pub mod consumer;
mod offsets;
pub mod records;

use crate::broker::codec::{self, Request};
use crate::broker::error;
use crate::core::{ConnId, Rng};
use bytes::Bytes;
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
use records::{Key, OffsetValue};
use std::collections::BTreeMap;

/// The internal topic holding offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// The internal topic of the transaction coordinators.
pub const TRANSACTION_TOPIC: &str = "__transaction_state";

/// Whether `topic` is one of the coordinators' internal topics (clients cannot produce to it; no
/// subscription pattern matches it).
pub fn is_internal(topic: &str) -> bool {
    topic == OFFSETS_TOPIC || topic == TRANSACTION_TOPIC
}

/// Coordinator settings (Kafka's broker keys).
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: u64,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.max.size`.
    pub max_size: usize,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`, in ms.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: u64,
    /// `offsets.commit.timeout.ms`: how long a write may wait for the ISR.
    pub commit_timeout_ms: u64,
    /// `offsets.topic.num.partitions`.
    pub offsets_partitions: i32,
    /// `offsets.topic.replication.factor`.
    pub offsets_replication_factor: i16,
    /// `offsets.topic.segment.bytes`: small segments let the cleaner compact sooner.
    pub offsets_segment_bytes: u64,
    /// `transaction.state.log.num.partitions`.
    pub transaction_partitions: i32,
    /// `transaction.state.log.replication.factor`.
    pub transaction_replication_factor: i16,
    /// `group.consumer.session.timeout.ms` (KIP-848 groups).
    pub consumer_session_timeout_ms: u64,
    /// `group.consumer.heartbeat.interval.ms` (KIP-848 groups).
    pub consumer_heartbeat_interval_ms: i32,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_size: i32::MAX as usize,
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 3_600_000,
            offsets_retention_check_interval_ms: 600_000,
            commit_timeout_ms: 5_000,
            offsets_partitions: 50,
            offsets_replication_factor: 3,
            offsets_segment_bytes: 100 << 20,
            transaction_partitions: 50,
            transaction_replication_factor: 3,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
        }
    }
}

/// Where a delayed response goes.
#[derive(Debug)]
pub struct Responder {
    /// Connection.
    pub conn: ConnId,
    /// Position of the request on its connection.
    pub seq: u64,
    /// The request (its body already taken).
    pub request: Box<Request>,
    /// Where the client connects from (`/address`; empty if the driver did not say).
    pub client_host: String,
}

/// What the coordinator asks the broker to do.
#[derive(Debug)]
pub enum Out {
    /// Send this response frame (an encoding failure closes the connection).
    Reply {
        /// Connection.
        conn: ConnId,
        /// Request position.
        seq: u64,
        /// Encoded response.
        frame: Result<Bytes, String>,
    },
    /// Append these records to partition `shard` of `__consumer_offsets` as leader, and call
    /// [`Coordinator::write_done`] with `write` once they are below the high watermark (or failed);
    /// [`Coordinator::write_uncertain`] first if that takes longer than
    /// `offsets.commit.timeout.ms`, or the ISR fell below `min.insync.replicas` meanwhile.
    Append {
        /// Write id.
        write: u64,
        /// Partition.
        shard: i32,
        /// (key, value) records; `None` is a tombstone.
        records: Vec<(Bytes, Option<Bytes>)>,
    },
}

/// The times a request or tick happens at.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic ms (timeouts).
    pub mono_ms: u64,
    /// Wall-clock ms (stored timestamps, retention).
    pub wall_ms: i64,
}

/// A group's state, in Kafka's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No members (possibly offsets).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Assigned.
    Stable,
    /// Being deleted.
    Dead,
}

impl State {
    /// Kafka's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

/// One member of a classic group.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) protocols: Vec<(String, Bytes)>,
    pub(crate) assignment: Bytes,
    /// Expires unless heard from before this (monotonic ms).
    pub(crate) deadline_ms: u64,
    /// A JoinGroup waiting for the rebalance to complete.
    pub(crate) join: Option<Responder>,
    /// A SyncGroup waiting for the leader's assignment.
    pub(crate) sync: Option<Responder>,
}

impl Member {
    pub(crate) fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

/// A group: classic membership plus committed offsets.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) state: State,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) generation: i32,
    pub(crate) leader: Option<String>,
    pub(crate) members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED (KIP-394), until they join or expire.
    pub(crate) pending: BTreeMap<String, u64>,
    /// `group.instance.id` → member id of static members.
    pub(crate) statics: BTreeMap<String, String>,
    pub(crate) offsets: BTreeMap<(String, i32), OffsetValue>,
    pub(crate) rebalance_deadline_ms: u64,
    /// The initial rebalance delay of a group that was empty: (deadline, rebalance time left).
    pub(crate) initial_delay: Option<(u64, u64)>,
    /// A member joined during the current initial delay.
    pub(crate) new_member_added: bool,
    /// Wall-clock time of the last state change.
    pub(crate) state_timestamp: i64,
    /// The write persisting the leader's assignment, and that assignment.
    pub(crate) sync_write: Option<(u64, BTreeMap<String, Bytes>)>,
    /// Set when the group uses the KIP-848 consumer protocol.
    pub(crate) consumer: Option<consumer::ConsumerGroup>,
}

impl Group {
    fn new(id: &str, now: Now) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            statics: BTreeMap::new(),
            offsets: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            initial_delay: None,
            new_member_added: false,
            state_timestamp: now.wall_ms,
            sync_write: None,
            consumer: None,
        }
    }

    /// Whether any member (classic or consumer protocol) belongs to the group.
    pub(crate) fn has_members(&self) -> bool {
        !self.members.is_empty() || self.consumer.as_ref().is_some_and(|c| !c.members.is_empty())
    }

    /// Kafka's name of the group's state, for either protocol.
    pub(crate) fn state_name(&self) -> &'static str {
        match &self.consumer {
            Some(c) if self.state != State::Dead => c.state(),
            _ => self.state.name(),
        }
    }

    /// "classic" or "consumer" (ListGroups v5).
    pub(crate) fn group_type(&self) -> &'static str {
        if self.consumer.is_some() {
            "consumer"
        } else {
            "classic"
        }
    }

    /// The group's metadata record value.
    pub(crate) fn record(&self, assignments: Option<&BTreeMap<String, Bytes>>) -> Bytes {
        let protocol = self.protocol.clone();
        let members = self
            .members
            .values()
            .map(|m| records::MemberValue {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                subscription: protocol.as_deref().map(|p| m.metadata_for(p)).unwrap_or_default(),
                assignment: assignments.map_or_else(|| m.assignment.clone(), |a| a.get(&m.id).cloned().unwrap_or_default()),
            })
            .collect();
        records::encode_group(&records::GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol,
            leader: self.leader.clone(),
            state_timestamp: self.state_timestamp,
            members,
        })
    }
}

/// One `__consumer_offsets` partition this node coordinates.
#[derive(Debug)]
pub(crate) struct Shard {
    /// False while the log is being replayed.
    pub(crate) active: bool,
    /// Changes each time the shard is loaded, so writes of an earlier tenure are not applied.
    pub(crate) tenure: u64,
    pub(crate) groups: BTreeMap<String, Group>,
}

/// What to do when a write is committed (or fails).
#[derive(Debug)]
pub(crate) enum WriteKind {
    /// Offsets of an OffsetCommit: apply and answer (unless already answered, see
    /// [`Coordinator::write_uncertain`]).
    Commit { responder: Option<Responder>, response: kafka_protocol::messages::OffsetCommitResponse, group: String, offsets: Vec<((String, i32), OffsetValue)> },
    /// The leader's assignment: complete the rebalance.
    Sync { group: String, generation: i32 },
    /// A group's metadata (e.g. it became empty); nothing waits.
    GroupState,
    /// Tombstones of a DeleteGroups entry.
    Delete { batch: u64, slot: usize, group: String },
    /// Tombstones of an OffsetDelete.
    OffsetDelete { responder: Response, group: String, partitions: Vec<(String, i32)> },
    /// Tombstones of expired offsets (and maybe the group).
    Expire { group: String, partitions: Vec<(String, i32)>, group_too: bool },
    /// A KIP-848 group's state (the `seq`th change): answers taken from it wait for it.
    ConsumerState { group: String, incarnation: u64, seq: u64 },
    /// A static member took over its old place: answer once the new member id is durable.
    StaticRejoin { responder: Responder, response: kafka_protocol::messages::JoinGroupResponse },
}

/// A response waiting on a write.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) responder: Responder,
    pub(crate) body: kafka_protocol::messages::OffsetDeleteResponse,
}

#[derive(Debug)]
pub(crate) struct Write {
    shard: i32,
    tenure: u64,
    kind: WriteKind,
}

/// A DeleteGroups waiting on one write per group.
#[derive(Debug)]
pub(crate) struct DeleteBatch {
    responder: Responder,
    response: kafka_protocol::messages::DeleteGroupsResponse,
    outstanding: usize,
}

/// The coordinator of the shards this node leads. See the module documentation.
#[derive(Debug)]
pub struct Coordinator {
    pub(crate) settings: GroupSettings,
    pub(crate) shards: BTreeMap<i32, Shard>,
    pub(crate) writes: BTreeMap<u64, Write>,
    pub(crate) deletes: BTreeMap<u64, DeleteBatch>,
    next_id: u64,
    next_tenure: u64,
    last_retention_ms: u64,
    out: Vec<Out>,
    pub(crate) stats: CoordinatorStats,
    /// Partitions of `__consumer_offsets` (from the metadata once the topic exists).
    pub partitions: i32,
}

/// Counts of what the coordinator did (for the simulator's protocol paths).
#[derive(Clone, Copy, Debug, Default)]
pub struct CoordinatorStats {
    /// KIP-848 members brought back by a shard load.
    pub members_restored: u64,
    /// Restored members whose next heartbeat carried on at their epoch.
    pub members_continued: u64,
    /// Static members that came back (under a new member id) to the place they left with -2.
    pub static_returns: u64,
}

/// Where a group's requests stand on this node.
pub(crate) enum Lookup<'a> {
    Here(&'a mut Shard),
    Error(i16),
}

impl Coordinator {
    /// A coordinator with no shards.
    pub fn new(settings: GroupSettings) -> Self {
        let partitions = settings.offsets_partitions;
        Coordinator {
            settings,
            shards: BTreeMap::new(),
            writes: BTreeMap::new(),
            deletes: BTreeMap::new(),
            next_id: 1,
            next_tenure: 1,
            last_retention_ms: 0,
            out: Vec::new(),
            stats: CoordinatorStats::default(),
            partitions,
        }
    }

    /// What the coordinator did so far.
    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    /// The settings.
    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    /// What the broker should do now.
    pub fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// The shard a group belongs to.
    pub fn shard_of(&self, group: &str) -> i32 {
        records::partition_for(group, self.partitions)
    }

    /// Whether this node coordinates `shard` (loaded or loading).
    pub fn owns(&self, shard: i32) -> bool {
        self.shards.contains_key(&shard)
    }

    /// Shards this node coordinates, with whether they are loaded.
    pub fn owned(&self) -> Vec<(i32, bool)> {
        self.shards.iter().map(|(s, sh)| (*s, sh.active)).collect()
    }

    /// Which loading of `shard` this is (changes on every load).
    pub fn tenure(&self, shard: i32) -> Option<u64> {
        self.shards.get(&shard).map(|s| s.tenure)
    }

    pub(crate) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn lookup(&mut self, group: &str) -> Lookup<'_> {
        let shard = self.shard_of(group);
        match self.shards.get_mut(&shard) {
            None => Lookup::Error(error::NOT_COORDINATOR),
            Some(s) if !s.active => Lookup::Error(error::COORDINATOR_LOAD_IN_PROGRESS),
            Some(s) => Lookup::Here(s),
        }
    }

    pub(crate) fn group_mut(&mut self, group: &str) -> Option<&mut Group> {
        let shard = self.shard_of(group);
        self.shards.get_mut(&shard).filter(|s| s.active)?.groups.get_mut(group)
    }

    /// Encode `body` as the answer to `r`.
    pub(crate) fn reply<R: Encodable + HeaderVersion>(&mut self, r: Responder, body: &R) {
        let frame = codec::respond(&r.request, body);
        self.out.push(Out::Reply { conn: r.conn, seq: r.seq, frame });
    }

    /// Ask for `records` to be appended to `group`'s shard; `kind` runs when they commit.
    pub(crate) fn append(&mut self, group: &str, records: Vec<(Bytes, Option<Bytes>)>, kind: WriteKind) -> u64 {
        let shard = self.shard_of(group);
        let tenure = self.shards.get(&shard).map_or(0, |s| s.tenure);
        let write = self.fresh_id();
        self.writes.insert(write, Write { shard, tenure, kind });
        self.out.push(Out::Append { write, shard, records });
        write
    }

    // ---- loading ----

    /// This node became leader of `shard`: start afresh (the broker replays its log next).
    pub fn load_begin(&mut self, shard: i32) {
        let tenure = self.next_tenure;
        self.next_tenure += 1;
        tracing::debug!(shard, "loading group coordinator shard");
        self.shards.insert(shard, Shard { active: false, tenure, groups: BTreeMap::new() });
    }

    /// One record of `shard`'s log, in log order.
    pub fn replay(&mut self, shard: i32, key: &[u8], value: Option<&[u8]>, now: Now) {
        let Some(s) = self.shards.get_mut(&shard) else { return };
        let Some(key) = records::decode_key(key) else {
            tracing::warn!(shard, "skipping a record of {OFFSETS_TOPIC} whose key is not a known layout");
            return;
        };
        match key {
            Key::Offset { group, topic, partition } => match value {
                None => {
                    if let Some(g) = s.groups.get_mut(&group) {
                        g.offsets.remove(&(topic, partition));
                    }
                }
                Some(v) => match records::decode_offset(v) {
                    Some(o) => {
                        let g = s.groups.entry(group.clone()).or_insert_with(|| Group::new(&group, now));
                        g.offsets.insert((topic, partition), o);
                    }
                    None => tracing::warn!(shard, group, "skipping an offset record that does not parse"),
                },
            },
            Key::ConsumerGroup { group } => match value.map(records::decode_consumer_group) {
                None => {
                    if let Some(g) = s.groups.get_mut(&group) {
                        g.consumer = None;
                    }
                }
                Some(Some((epoch, state))) => {
                    // The latest record is the whole group (members come back with fresh session
                    // timers); an epoch alone (an older record) brings back no members.
                    let g = s.groups.entry(group.clone()).or_insert_with(|| Group::new(&group, now));
                    g.protocol_type = Some("consumer".into());
                    self.next_id += 1;
                    g.consumer = Some(consumer::ConsumerGroup::loaded(epoch, state, self.settings.consumer_session_timeout_ms, now, self.next_id));
                }
                Some(None) => tracing::warn!(shard, group, "skipping a consumer group record that does not parse"),
            },
            Key::Group { group } => match value {
                None => {
                    // The group's metadata is gone; its offsets go only with their own tombstones.
                    let keep = s.groups.get(&group).is_some_and(|g| !g.offsets.is_empty() || g.consumer.is_some());
                    if keep {
                        let g = s.groups.get_mut(&group).expect("present");
                        g.members.clear();
                        g.statics.clear();
                        g.generation = 0;
                        g.protocol = None;
                        g.leader = None;
                        g.state = State::Empty;
                    } else {
                        s.groups.remove(&group);
                    }
                }
                Some(v) => match records::decode_group(v) {
                    Some(v) => {
                        let g = s.groups.entry(group.clone()).or_insert_with(|| Group::new(&group, now));
                        g.protocol_type = Some(v.protocol_type).filter(|t| !t.is_empty());
                        g.generation = v.generation;
                        g.protocol = v.protocol.clone();
                        g.leader = v.leader;
                        g.state_timestamp = v.state_timestamp;
                        g.members.clear();
                        g.statics.clear();
                        for m in v.members {
                            if let Some(i) = &m.instance_id {
                                g.statics.insert(i.clone(), m.member_id.clone());
                            }
                            let protocols = v.protocol.iter().map(|p| (p.clone(), m.subscription.clone())).collect();
                            g.members.insert(
                                m.member_id.clone(),
                                Member {
                                    id: m.member_id,
                                    instance_id: m.instance_id,
                                    client_id: m.client_id,
                                    client_host: m.client_host,
                                    session_timeout_ms: m.session_timeout_ms,
                                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                                    protocols,
                                    assignment: m.assignment,
                                    deadline_ms: now.mono_ms + m.session_timeout_ms.max(0) as u64,
                                    join: None,
                                    sync: None,
                                },
                            );
                        }
                        g.state = if g.members.is_empty() { State::Empty } else { State::Stable };
                        if !g.members.is_empty() {
                            g.consumer = None;
                        }
                    }
                    None => tracing::warn!(shard, group, "skipping a group record that does not parse"),
                },
            },
        }
    }

    /// The log of `shard` is replayed up to what was committed: serve its groups.
    pub fn load_done(&mut self, shard: i32) {
        if let Some(s) = self.shards.get_mut(&shard) {
            s.active = true;
            self.stats.members_restored += s.groups.values().filter_map(|g| g.consumer.as_ref()).map(|c| c.members.len() as u64).sum::<u64>();
            tracing::debug!(shard, groups = s.groups.len(), "group coordinator shard loaded");
        }
    }

    /// This node no longer leads `shard`: drop its groups; whoever waits gets NOT_COORDINATOR.
    pub fn unload(&mut self, shard: i32) {
        let Some(s) = self.shards.remove(&shard) else { return };
        tracing::debug!(shard, "unloading group coordinator shard");
        for g in s.groups.into_values() {
            for p in g.consumer.map(|c| c.parked).unwrap_or_default() {
                self.reply(p.responder, &consumer::hb_error(error::NOT_COORDINATOR, "the coordinator moved"));
            }
            for m in g.members.into_values() {
                if let Some(r) = m.join {
                    self.reply(r, &classic::join_error(error::NOT_COORDINATOR));
                }
                if let Some(r) = m.sync {
                    self.reply(r, &kafka_protocol::messages::SyncGroupResponse::default().with_error_code(error::NOT_COORDINATOR));
                }
            }
        }
    }

    /// A write is in the shard's log but its outcome is not known yet: it took longer than
    /// `offsets.commit.timeout.ms`, or the high watermark passed it while the ISR was below
    /// `min.insync.replicas`. Whoever waits gets `code` now; an offset commit or a KIP-848 state
    /// still applies if the high watermark passes it later in this tenure (call
    /// [`Coordinator::write_done`] then, or with an error if the leadership ends), so what this
    /// coordinator serves stays what its committed log says. Other writes end here, as failed.
    pub fn write_uncertain(&mut self, write: u64, code: i16, now: Now) {
        let Some(w) = self.writes.get(&write) else { return };
        if !self.shards.get(&w.shard).is_some_and(|s| s.active && s.tenure == w.tenure) {
            return self.write_done(write, Err(code), now);
        }
        let Some(w) = self.writes.get_mut(&write) else { return };
        let code = client_code(code);
        match &mut w.kind {
            WriteKind::Commit { responder, response, offsets, .. } => {
                if let Some(r) = responder.take() {
                    let mut response = response.clone();
                    let failed: std::collections::BTreeSet<&(String, i32)> = offsets.iter().map(|(k, _)| k).collect();
                    offsets::fail_partitions(&mut response, &failed, code);
                    self.reply(r, &response);
                }
            }
            WriteKind::ConsumerState { group, incarnation, seq } => {
                let (group, incarnation, seq) = (group.clone(), *incarnation, *seq);
                self.consumer_state_uncertain(&group, incarnation, seq, code);
            }
            _ => self.write_done(write, Err(code), now),
        }
    }

    /// A write finished: `Ok` once committed, `Err(code)` with the produce error otherwise.
    pub fn write_done(&mut self, write: u64, result: Result<(), i16>, now: Now) {
        let Some(w) = self.writes.remove(&write) else { return };
        let current = self.shards.get(&w.shard).is_some_and(|s| s.active && s.tenure == w.tenure);
        // A write that outlived its tenure is not applied: the next coordinator decides from the log.
        let result = if current { result } else { Err(error::NOT_COORDINATOR) };
        let result = result.map_err(client_code);
        match w.kind {
            WriteKind::Commit { responder, response, group, offsets } => self.commit_done(responder, response, &group, offsets, result, now),
            WriteKind::StaticRejoin { responder, response } => match result {
                Ok(()) => self.reply(responder, &response),
                Err(code) => self.reply(responder, &classic::join_error(code)),
            },
            WriteKind::Sync { group, generation } => self.sync_done(&group, generation, result, now),
            WriteKind::GroupState => {}
            WriteKind::Delete { batch, slot, group } => self.delete_done(batch, slot, &group, result),
            WriteKind::OffsetDelete { responder, group, partitions } => self.offset_delete_done(responder, &group, partitions, result),
            WriteKind::Expire { group, partitions, group_too } => self.expire_done(&group, partitions, group_too, result),
            WriteKind::ConsumerState { group, incarnation, seq } => self.consumer_state_done(&group, incarnation, seq, result),
        }
    }

    /// Time passed: complete delayed joins, expire sessions, expire offsets.
    pub fn tick(&mut self, now: Now, topics: &consumer::Topics) {
        let shards: Vec<i32> = self.shards.iter().filter(|(_, s)| s.active).map(|(k, _)| *k).collect();
        for shard in &shards {
            let ids: Vec<String> = self.shards[shard].groups.keys().cloned().collect();
            for id in ids {
                self.tick_group(&id, now);
                self.tick_consumer_group(&id, topics, now);
            }
        }
        if now.mono_ms >= self.last_retention_ms + self.settings.offsets_retention_check_interval_ms {
            self.last_retention_ms = now.mono_ms;
            self.expire_offsets(now);
        }
    }

    /// Groups on this node with their state and protocol type (for ListGroups and the checkers).
    pub fn group_states(&self) -> Vec<(String, State, String, i32)> {
        let mut out = Vec::new();
        for s in self.shards.values().filter(|s| s.active) {
            for g in s.groups.values() {
                out.push((g.id.clone(), g.state, g.protocol_type.clone().unwrap_or_default(), g.generation));
            }
        }
        out
    }

    /// KIP-848 groups' epochs, members and targets (for `RUNNEL_SIM_DEBUG`).
    pub fn debug_consumer_groups(&self) -> String {
        let mut out = String::new();
        for s in self.shards.values().filter(|s| s.active) {
            for g in s.groups.values() {
                if let Some(c) = &g.consumer {
                    let members: Vec<_> = c.members.values().map(|m| (&m.id, m.epoch, &m.assigned, &m.revoking)).collect();
                    out.push_str(&format!(
                        "{}: epoch {} seq {} written {} durable {} assignment {} parked {} target {:?} members {members:?}; ",
                        g.id,
                        c.group_epoch,
                        c.seq,
                        c.written_seq,
                        c.durable_seq,
                        c.assignment_epoch,
                        c.parked.len(),
                        c.target
                    ));
                }
            }
        }
        out
    }

    /// KIP-848 groups: every (group, topic, partition, member) a member owns or is revoking
    /// (the simulator checks that no partition has two).
    pub fn consumer_owners(&self) -> Vec<(String, String, i32, String)> {
        let mut out = Vec::new();
        for s in self.shards.values().filter(|s| s.active) {
            for g in s.groups.values() {
                if let Some(c) = &g.consumer {
                    out.extend(c.owners().into_iter().map(|(t, p, m)| (g.id.clone(), t, p, m)));
                }
            }
        }
        out
    }

    /// Committed offsets of `group` as this node holds them (for the simulator's checkers).
    pub fn committed(&self, group: &str) -> Option<BTreeMap<(String, i32), i64>> {
        let shard = self.shard_of(group);
        let g = self.shards.get(&shard).filter(|s| s.active)?.groups.get(group)?;
        Some(g.offsets.iter().map(|(k, v)| (k.clone(), v.offset)).collect())
    }
}

/// Kafka's mapping of append errors to what group clients understand.
fn client_code(code: i16) -> i16 {
    match code {
        error::NOT_ENOUGH_REPLICAS | error::NOT_ENOUGH_REPLICAS_AFTER_APPEND | error::REQUEST_TIMED_OUT | error::UNKNOWN_TOPIC_OR_PARTITION => {
            error::COORDINATOR_NOT_AVAILABLE
        }
        error::NOT_LEADER_OR_FOLLOWER | error::KAFKA_STORAGE_ERROR => error::NOT_COORDINATOR,
        error::MESSAGE_TOO_LARGE | error::RECORD_LIST_TOO_LARGE => error::INVALID_COMMIT_OFFSET_SIZE,
        other => other,
    }
}

/// A `StrBytes` from a `&str`.
pub(crate) fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A fresh member id: `<client id>-<uuid>` as Kafka makes them.
pub(crate) fn member_id(client_id: &str, rng: &mut Rng) -> String {
    let uuid = uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64());
    format!("{client_id}-{uuid}")
}
