//! The workload's group consumer: subscribes to the topic through a consumer group (classic
//! protocol, eager "range" assignment computed by the elected leader, as Kafka's Java and C
//! clients do), reads from the committed offsets of the partitions it is given and commits what
//! it read after every poll.
//!
//! It finds its coordinator (FindCoordinator), joins (JoinGroup, with the KIP-394 member-id
//! round trip), syncs (SyncGroup; the leader sends the assignment), fetches the committed offsets
//! (OffsetFetch), then polls and commits while heartbeating. Any sign that its generation is over
//! — REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID from a heartbeat or commit —
//! revokes everything it owns and rejoins once no commit is in flight (eager rebalancing); a lost
//! coordinator is found again. Now and then it leaves the group on purpose (LeaveGroup) and
//! rejoins later.
//!
//! What the checkers need is recorded as history: `GroupAssign` for each assignment it receives
//! (its generation and partitions), `GroupCommit` for each commit the coordinator acknowledged,
//! and its reads as polls.

use super::{decode, parse_value, ClientEvent, ClientMsg, Wire};
use crate::broker::error;
use crate::core::{Actor, Addr, Cx, IoDone, TimerId};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use std::collections::{BTreeMap, BTreeSet};

const TICK: TimerId = TimerId(1);
const TICK_MS: u64 = 50;

/// Group consumer settings.
#[derive(Clone, Debug)]
pub struct GroupConsumerConfig {
    /// History process id.
    pub process: u64,
    /// Nodes to ask for metadata and the coordinator, in turn.
    pub bootstrap: Vec<Addr>,
    /// Topic.
    pub topic: String,
    /// Group id.
    pub group: String,
    /// `session.timeout.ms`.
    pub session_timeout_ms: i32,
    /// `heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    /// Chance per heartbeat (in 1/1000) of leaving the group and rejoining a little later.
    pub leave_per_mille: u64,
    /// Use the KIP-848 consumer protocol (ConsumerGroupHeartbeat, server-side assignment)
    /// instead of the classic one.
    pub consumer_protocol: bool,
    /// `group.instance.id` (KIP-848 static membership): such a member leaves with epoch -2,
    /// keeping its place, and each incarnation comes back under a new member id.
    pub instance_id: Option<String>,
    /// KIP-848: subscribe by this regular expression (resolved by the coordinator) instead of
    /// by the topic's name; it must match the topic.
    pub regex: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Looking for the coordinator.
    Discover,
    /// Needs to (re)join.
    Join,
    /// JoinGroup sent.
    Joining,
    /// SyncGroup sent.
    Syncing,
    /// Assigned; reading committed offsets, then polling.
    Stable,
    /// Left on purpose; rejoins at `rejoin_at`.
    Away,
}

/// See the module documentation.
pub struct GroupConsumer {
    config: GroupConsumerConfig,
    wire: Wire,
    phase: Phase,
    boot: usize,
    coordinator: Option<i32>,
    member_id: String,
    generation: i32,
    topic_id: uuid::Uuid,
    partitions: i32,
    leaders: BTreeMap<i32, i32>,
    epochs: BTreeMap<i32, i32>,
    owned: BTreeSet<i32>,
    /// Next offset to read, once the committed offsets are known.
    positions: BTreeMap<i32, i64>,
    /// What was last committed (acknowledged) per owned partition.
    committed: BTreeMap<i32, i64>,
    /// The offsets of the commit in flight.
    pending_commit: BTreeMap<i32, i64>,
    last_heartbeat_ms: u64,
    rejoin_at: u64,
    /// The fetch in flight, and the node it went to.
    polling: Option<i32>,
    /// KIP-848: an answer may have been lost; the next heartbeat is a full one.
    full_heartbeat: bool,
    /// The assignment changed while the poll was in flight: its records are not for us.
    poll_stale: bool,
    next_leader: usize,
    events: Vec<ClientEvent>,
    /// Assignment changes made while a poll was in flight, recorded once it completes (a
    /// history process has one operation outstanding at a time).
    deferred: Vec<ClientEvent>,
    /// Every value read, per key (for liveness checks); kept across restarts by the simulator.
    pub seen: BTreeMap<u64, BTreeSet<u64>>,
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// `ConsumerProtocolSubscription` v0 for one topic.
pub fn subscription(topic: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(1);
    b.put_i16(topic.len() as i16);
    b.put_slice(topic.as_bytes());
    b.put_i32(-1);
    b.freeze()
}

/// `ConsumerProtocolAssignment` v0 of `partitions` of one topic.
pub fn assignment(topic: &str, partitions: &[i32]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(1);
    b.put_i16(topic.len() as i16);
    b.put_slice(topic.as_bytes());
    b.put_i32(partitions.len() as i32);
    for p in partitions {
        b.put_i32(*p);
    }
    b.put_i32(-1);
    b.freeze()
}

/// Every (topic, partition) of a `ConsumerProtocolAssignment` (any version: the topic array
/// comes first), if it parses.
pub fn assignment_partitions(mut b: Bytes) -> Option<Vec<(String, i32)>> {
    if b.is_empty() {
        return Some(Vec::new());
    }
    let take = |b: &mut Bytes, n: usize| (b.remaining() >= n).then(|| b.split_to(n));
    take(&mut b, 2)?;
    let topics = take(&mut b, 4)?.get_i32();
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = take(&mut b, 2)?.get_i16();
        let name = String::from_utf8(take(&mut b, len.max(0) as usize)?.to_vec()).ok()?;
        let count = take(&mut b, 4)?.get_i32();
        for _ in 0..count.max(0) {
            out.push((name.clone(), take(&mut b, 4)?.get_i32()));
        }
    }
    Some(out)
}

/// The partitions of `topic` in a `ConsumerProtocolAssignment`, if it parses.
pub fn parse_assignment(b: Bytes, topic: &str) -> Option<Vec<i32>> {
    Some(assignment_partitions(b)?.into_iter().filter(|(t, _)| t == topic).map(|(_, p)| p).collect())
}

/// Kafka's range assignor for one topic: members in id order, partitions split into contiguous
/// ranges, the first `partitions % members` members getting one more.
pub fn range_assign(members: &[String], partitions: i32) -> BTreeMap<String, Vec<i32>> {
    let mut sorted: Vec<&String> = members.iter().collect();
    sorted.sort();
    let n = sorted.len().max(1) as i32;
    let (per, extra) = (partitions / n, partitions % n);
    let mut out = BTreeMap::new();
    let mut next = 0;
    for (i, m) in sorted.iter().enumerate() {
        let count = per + i32::from((i as i32) < extra);
        out.insert((*m).clone(), (next..next + count).collect());
        next += count;
    }
    out
}

impl GroupConsumer {
    /// A group consumer with the given settings.
    pub fn new(config: GroupConsumerConfig) -> Self {
        GroupConsumer {
            config,
            wire: Wire::default(),
            phase: Phase::Discover,
            boot: 0,
            coordinator: None,
            member_id: String::new(),
            generation: -1,
            topic_id: uuid::Uuid::nil(),
            partitions: 0,
            leaders: BTreeMap::new(),
            epochs: BTreeMap::new(),
            owned: BTreeSet::new(),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            pending_commit: BTreeMap::new(),
            last_heartbeat_ms: 0,
            rejoin_at: 0,
            polling: None,
            full_heartbeat: false,
            poll_stale: false,
            next_leader: 0,
            events: Vec::new(),
            deferred: Vec::new(),
            seen: BTreeMap::new(),
        }
    }

    /// Take the events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.events)
    }

    /// The process dies: a poll it had in flight ends without an answer.
    pub fn crash(&mut self, now_ms: u64) -> Vec<ClientEvent> {
        if self.polling.is_some() {
            self.poll_done(ClientEvent::CompletePoll { time_ms: now_ms, process: self.config.process, reads: BTreeMap::new(), ok: false });
        }
        // Its positions die with it: the next incarnation starts from what was committed.
        self.events.push(ClientEvent::Assign { time_ms: now_ms, process: self.config.process, keys: Vec::new() });
        if self.config.consumer_protocol {
            // It owns nothing any more (the coordinator frees its partitions after its session).
            self.events.push(ClientEvent::GroupAssign {
                time_ms: now_ms,
                process: self.config.process,
                group: self.config.group.clone(),
                generation: self.generation,
                member: self.owner(),
                keys: Vec::new(),
            });
        }
        self.take_events()
    }

    /// Its state, for `RUNNEL_SIM_DEBUG`.
    pub fn debug_state(&self) -> String {
        format!(
            "phase {:?} coordinator {:?} member {} generation {} owned {:?} positions {:?} committed {:?} polling {:?} leaders {:?} in flight {:?}",
            self.phase,
            self.coordinator,
            self.member_id,
            self.generation,
            self.owned,
            self.positions,
            self.committed,
            self.polling,
            self.leaders,
            self.wire.in_flight
        )
    }

    /// The partitions this consumer owns now.
    pub fn owned(&self) -> (i32, &BTreeSet<i32>) {
        (self.generation, &self.owned)
    }

    fn busy(&self, key: ApiKey) -> bool {
        self.wire.in_flight.values().any(|(k, _, _)| *k == key as i16)
    }

    fn bootstrap(&self) -> Addr {
        self.config.bootstrap[self.boot % self.config.bootstrap.len()]
    }

    fn send<R: kafka_protocol::protocol::Request>(&mut self, cx: &mut Cx<ClientMsg>, node: i32, r: &R, version: i16) {
        let frame = self.wire.encode_for(node, r, version);
        cx.send(Addr { node, actor: 0 }, ClientMsg::Request(frame));
    }

    fn group(&self) -> GroupId {
        GroupId(sb(&self.config.group))
    }

    /// Give up the current assignment (eager rebalancing) and join again.
    fn revoke(&mut self, cx: &mut Cx<ClientMsg>) {
        if !self.owned.is_empty() {
            self.record_assign(ClientEvent::Assign { time_ms: cx.now_ms(), process: self.config.process, keys: Vec::new() });
        }
        self.owned.clear();
        self.positions.clear();
        self.committed.clear();
        self.poll_stale = self.polling.is_some();
        if matches!(self.phase, Phase::Stable | Phase::Joining | Phase::Syncing) {
            self.phase = Phase::Join;
        }
    }

    fn lost_coordinator(&mut self, cx: &mut Cx<ClientMsg>) {
        self.coordinator = None;
        self.boot += 1;
        self.full_heartbeat = true;
        if self.phase != Phase::Away {
            // Keep the assignment until the new coordinator says otherwise (a heartbeat).
            if matches!(self.phase, Phase::Joining | Phase::Syncing | Phase::Join) {
                self.revoke(cx);
            }
            self.phase = if self.phase == Phase::Stable { Phase::Stable } else { Phase::Discover };
        }
    }

    fn step(&mut self, cx: &mut Cx<ClientMsg>) {
        let now = cx.now_ms();
        if self.partitions == 0 || self.leaders.len() < self.partitions as usize {
            if !self.busy(ApiKey::Metadata) {
                let to = self.bootstrap();
                let r = super::topic_metadata_request(&self.config.topic);
                self.send(cx, to.node, &r, 12);
            }
            if self.partitions == 0 {
                return;
            }
        }
        if self.phase == Phase::Away {
            if now < self.rejoin_at {
                return;
            }
            self.phase = Phase::Discover;
        }
        let Some(coordinator) = self.coordinator else {
            if !self.busy(ApiKey::FindCoordinator) {
                let to = self.bootstrap();
                let r = FindCoordinatorRequest::default().with_key(sb(&self.config.group));
                self.send(cx, to.node, &r, 3);
            }
            return;
        };
        if self.config.consumer_protocol {
            return self.step_consumer_protocol(cx, coordinator);
        }
        match self.phase {
            Phase::Discover | Phase::Join => {
                if self.busy(ApiKey::OffsetCommit) || self.busy(ApiKey::JoinGroup) {
                    return; // eager: commit what was read before giving it up
                }
                self.revoke(cx);
                self.phase = Phase::Joining;
                let r = JoinGroupRequest::default()
                    .with_group_id(self.group())
                    .with_session_timeout_ms(self.config.session_timeout_ms)
                    .with_rebalance_timeout_ms(self.config.session_timeout_ms)
                    .with_member_id(sb(&self.member_id))
                    .with_protocol_type(sb("consumer"))
                    .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(sb("range"))
                        .with_metadata(subscription(&self.config.topic))]);
                self.send(cx, coordinator, &r, 7);
            }
            Phase::Joining | Phase::Syncing | Phase::Away => {}
            Phase::Stable => {
                if now >= self.last_heartbeat_ms + self.config.heartbeat_interval_ms && !self.busy(ApiKey::Heartbeat) {
                    if cx.rng().below(1000) < self.config.leave_per_mille {
                        return self.leave(cx, coordinator);
                    }
                    self.last_heartbeat_ms = now;
                    let r = HeartbeatRequest::default().with_group_id(self.group()).with_generation_id(self.generation).with_member_id(sb(&self.member_id));
                    self.send(cx, coordinator, &r, 4);
                }
                if self.positions.len() < self.owned.len() {
                    if !self.busy(ApiKey::OffsetFetch) {
                        let r = OffsetFetchRequest::default().with_group_id(self.group()).with_topics(Some(vec![
                            offset_fetch_request::OffsetFetchRequestTopic::default()
                                .with_name(TopicName(sb(&self.config.topic)))
                                .with_partition_indexes(self.owned.iter().copied().collect()),
                        ]));
                        self.send(cx, coordinator, &r, 7);
                    }
                    return;
                }
                self.maybe_commit(cx, coordinator);
                self.poll(cx);
            }
        }
    }

    /// KIP-848: heartbeats carry the subscription (on joining) and what the member owns; the
    /// coordinator answers with the member epoch and, when it changed, the assignment.
    fn step_consumer_protocol(&mut self, cx: &mut Cx<ClientMsg>, coordinator: i32) {
        let now = cx.now_ms();
        if self.member_id.is_empty() {
            self.member_id = uuid::Uuid::from_u64_pair(cx.rng().next_u64(), cx.rng().next_u64()).to_string();
        }
        match self.phase {
            Phase::Discover | Phase::Join => {
                if self.busy(ApiKey::ConsumerGroupHeartbeat) {
                    return;
                }
                self.revoke(cx);
                self.phase = Phase::Joining;
                self.generation = 0;
                self.send_heartbeat(cx, coordinator, 0, true);
            }
            Phase::Joining | Phase::Syncing | Phase::Away => {}
            Phase::Stable => {
                // Never report a revocation while a commit of the revoked partitions may still be
                // in flight: the next owner must see that commit.
                let due = now >= self.last_heartbeat_ms + self.config.heartbeat_interval_ms;
                if due && !self.busy(ApiKey::ConsumerGroupHeartbeat) && !self.busy(ApiKey::OffsetCommit) {
                    if cx.rng().below(1000) < self.config.leave_per_mille {
                        // A static member leaves for a while (-2) and returns as a new member id.
                        let epoch = if self.config.instance_id.is_some() { -2 } else { -1 };
                        self.send_heartbeat(cx, coordinator, epoch, false);
                        if epoch == -2 {
                            self.member_id.clear();
                        }
                        self.revoke(cx);
                        self.phase = Phase::Away;
                        self.rejoin_at = now + 500 + cx.rng().below(3_000);
                        return;
                    }
                    self.last_heartbeat_ms = now;
                    self.send_heartbeat(cx, coordinator, self.generation, false);
                }
                self.fetch_positions(cx, coordinator);
                self.maybe_commit(cx, coordinator);
                self.poll(cx);
            }
        }
    }

    fn send_heartbeat(&mut self, cx: &mut Cx<ClientMsg>, coordinator: i32, epoch: i32, joining: bool) {
        // After a lost answer the heartbeat is a full one (rebalance timeout, subscription and
        // owned partitions), which makes the coordinator send the whole assignment again.
        let joining = joining || std::mem::take(&mut self.full_heartbeat);
        let owned: Vec<i32> = self.owned.iter().copied().collect();
        let r = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(self.group())
            .with_member_id(sb(&self.member_id))
            .with_member_epoch(epoch)
            .with_instance_id(self.config.instance_id.as_deref().map(sb))
            .with_rebalance_timeout_ms(if joining { self.config.session_timeout_ms } else { -1 })
            .with_subscribed_topic_names((joining && self.config.regex.is_none()).then(|| vec![TopicName(sb(&self.config.topic))]))
            .with_subscribed_topic_regex(self.config.regex.as_deref().filter(|_| joining).map(sb))
            .with_topic_partitions(Some(if owned.is_empty() {
                Vec::new()
            } else {
                vec![consumer_group_heartbeat_request::TopicPartitions::default().with_topic_id(self.topic_id).with_partitions(owned)]
            }));
        self.send(cx, coordinator, &r, 1);
    }

    /// Ask for the committed offsets of owned partitions that have no position yet.
    fn fetch_positions(&mut self, cx: &mut Cx<ClientMsg>, coordinator: i32) {
        let missing: Vec<i32> = self.owned.iter().filter(|p| !self.positions.contains_key(p)).copied().collect();
        if missing.is_empty() || self.busy(ApiKey::OffsetFetch) {
            return;
        }
        let r = OffsetFetchRequest::default().with_group_id(self.group()).with_topics(Some(vec![offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(TopicName(sb(&self.config.topic)))
            .with_partition_indexes(missing)]));
        self.send(cx, coordinator, &r, 7);
    }

    /// A ConsumerGroupHeartbeat answer.
    fn on_consumer_heartbeat(&mut self, cx: &mut Cx<ClientMsg>, r: ConsumerGroupHeartbeatResponse) {
        if self.phase == Phase::Away || r.member_epoch == -1 && r.error_code == error::NONE {
            return; // the answer to leaving
        }
        match r.error_code {
            error::NONE => {}
            error::UNKNOWN_MEMBER_ID | error::FENCED_MEMBER_EPOCH => {
                // Lost its place: everything it owned is gone; join again with epoch 0.
                self.revoke(cx);
                self.phase = Phase::Join;
                return;
            }
            error::NOT_COORDINATOR | error::COORDINATOR_NOT_AVAILABLE | error::COORDINATOR_LOAD_IN_PROGRESS => return self.lost_coordinator(cx),
            error::UNRELEASED_INSTANCE_ID if self.config.instance_id.is_some() => {
                // An earlier incarnation still holds the instance id (it crashed without
                // leaving): try again once its session may have ended.
                self.revoke(cx);
                self.phase = Phase::Away;
                self.rejoin_at = cx.now_ms() + 1_000;
                return;
            }
            code => return self.violation(cx, format!("ConsumerGroupHeartbeat failed with error {code}: {:?}", r.error_message)),
        }
        self.phase = Phase::Stable;
        let epoch_changed = r.member_epoch != self.generation;
        self.generation = r.member_epoch;
        let Some(assignment) = r.assignment else {
            if epoch_changed && !self.owned.is_empty() {
                self.report_assignment(cx);
            }
            return;
        };
        let now_owned: BTreeSet<i32> =
            assignment.topic_partitions.iter().filter(|tp| tp.topic_id == self.topic_id).flat_map(|tp| tp.partitions.iter().copied()).collect();
        let revoked: Vec<i32> = self.owned.difference(&now_owned).copied().collect();
        for p in &revoked {
            self.positions.remove(p);
            self.committed.remove(p);
        }
        self.owned = now_owned;
        self.report_assignment(cx);
        // Tell the coordinator about the revocation promptly.
        self.last_heartbeat_ms = 0;
    }

    /// Who owns what it is given: a static member's incarnations are one owner.
    fn owner(&self) -> String {
        self.config.instance_id.clone().unwrap_or_else(|| self.member_id.clone())
    }

    fn report_assignment(&mut self, cx: &mut Cx<ClientMsg>) {
        let keys: Vec<u64> = self.owned.iter().map(|p| *p as u64).collect();
        self.events.push(ClientEvent::GroupAssign {
            time_ms: cx.now_ms(),
            process: self.config.process,
            group: self.config.group.clone(),
            generation: self.generation,
            member: self.owner(),
            keys: keys.clone(),
        });
        self.record_assign(ClientEvent::Assign { time_ms: cx.now_ms(), process: self.config.process, keys });
    }

    fn leave(&mut self, cx: &mut Cx<ClientMsg>, coordinator: i32) {
        let r = LeaveGroupRequest::default()
            .with_group_id(self.group())
            .with_members(vec![leave_group_request::MemberIdentity::default().with_member_id(sb(&self.member_id))]);
        self.send(cx, coordinator, &r, 4);
        self.revoke(cx);
        self.member_id.clear();
        self.phase = Phase::Away;
        self.rejoin_at = cx.now_ms() + 500 + cx.rng().below(3_000);
    }

    fn maybe_commit(&mut self, cx: &mut Cx<ClientMsg>, coordinator: i32) {
        if self.busy(ApiKey::OffsetCommit) {
            return;
        }
        let changed: Vec<(i32, i64)> = self.positions.iter().filter(|(p, o)| self.committed.get(p) != Some(o)).map(|(p, o)| (*p, *o)).collect();
        if changed.is_empty() {
            return;
        }
        self.pending_commit = changed.iter().copied().collect();
        let r = OffsetCommitRequest::default()
            .with_group_id(self.group())
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(sb(&self.member_id))
            .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default().with_name(TopicName(sb(&self.config.topic))).with_partitions(
                changed
                    .iter()
                    .map(|(p, o)| offset_commit_request::OffsetCommitRequestPartition::default().with_partition_index(*p).with_committed_offset(*o))
                    .collect(),
            )]);
        self.send(cx, coordinator, &r, if self.config.consumer_protocol { 9 } else { 8 });
    }

    fn poll(&mut self, cx: &mut Cx<ClientMsg>) {
        if self.polling.is_some() || self.owned.is_empty() {
            return;
        }
        let mut nodes: Vec<i32> = self.owned.iter().filter_map(|p| self.leaders.get(p).copied()).collect();
        nodes.sort();
        nodes.dedup();
        if nodes.is_empty() {
            return;
        }
        // Each leader in turn.
        self.next_leader = self.next_leader.wrapping_add(1);
        let node = nodes[self.next_leader % nodes.len()];
        let mine: Vec<(i32, i64)> =
            self.positions.iter().filter(|(p, _)| self.owned.contains(p) && self.leaders.get(p) == Some(&node)).map(|(p, o)| (*p, *o)).collect();
        self.polling = Some(node);
        self.events.push(ClientEvent::InvokePoll { time_ms: cx.now_ms(), process: self.config.process });
        let r = super::fetch_request(&self.config.topic, self.topic_id, &mine, &self.epochs, 200, 1);
        self.send(cx, node, &r, 12);
    }

    fn record_assign(&mut self, ev: ClientEvent) {
        if self.polling.is_some() {
            self.deferred.push(ev);
        } else {
            self.events.push(ev);
        }
    }

    /// The poll in flight ended with `ev`: record it, then what waited for it.
    fn poll_done(&mut self, ev: ClientEvent) {
        self.polling = None;
        self.poll_stale = false;
        self.events.push(ev);
        self.events.append(&mut self.deferred);
    }

    fn violation(&mut self, cx: &mut Cx<ClientMsg>, what: String) {
        self.events.push(ClientEvent::Violation { time_ms: cx.now_ms(), process: self.config.process, what });
    }

    /// A heartbeat, commit or sync says the generation is over.
    fn generation_over(&mut self, cx: &mut Cx<ClientMsg>, code: i16) {
        match code {
            error::UNKNOWN_MEMBER_ID | error::FENCED_INSTANCE_ID => {
                self.member_id.clear();
                self.revoke(cx);
            }
            error::NOT_COORDINATOR | error::COORDINATOR_NOT_AVAILABLE | error::COORDINATOR_LOAD_IN_PROGRESS => self.lost_coordinator(cx),
            _ => self.revoke(cx),
        }
        if self.phase == Phase::Stable {
            self.phase = Phase::Join;
        }
    }

    fn on_response(&mut self, cx: &mut Cx<ClientMsg>, key: ApiKey, version: i16, body: Bytes) {
        match key {
            ApiKey::Metadata => {
                let Ok(m) = decode::<MetadataResponse>(body, version) else { return self.violation(cx, "bad metadata response".into()) };
                match m.topics.first().filter(|t| t.error_code == 0 && !t.partitions.is_empty()) {
                    Some(t) => {
                        self.topic_id = t.topic_id;
                        self.partitions = t.partitions.len() as i32;
                        self.leaders =
                            t.partitions.iter().filter(|p| p.error_code == 0 && p.leader_id.0 >= 0).map(|p| (p.partition_index, p.leader_id.0)).collect();
                        self.epochs = t.partitions.iter().map(|p| (p.partition_index, p.leader_epoch)).collect();
                    }
                    None => self.boot += 1,
                }
            }
            ApiKey::FindCoordinator => {
                let Ok(r) = decode::<FindCoordinatorResponse>(body, version) else { return self.violation(cx, "bad FindCoordinator response".into()) };
                if r.error_code == error::NONE && r.node_id.0 >= 0 {
                    self.coordinator = Some(r.node_id.0);
                } else {
                    self.boot += 1;
                }
            }
            ApiKey::JoinGroup => {
                let Ok(r) = decode::<JoinGroupResponse>(body, version) else { return self.violation(cx, "bad JoinGroup response".into()) };
                if self.phase != Phase::Joining {
                    return;
                }
                match r.error_code {
                    error::NONE => {
                        self.member_id = r.member_id.to_string();
                        self.generation = r.generation_id;
                        let mut assignments = Vec::new();
                        if r.leader == r.member_id {
                            let members: Vec<String> = r.members.iter().map(|m| m.member_id.to_string()).collect();
                            let mut ranges = range_assign(&members, self.partitions);
                            if crate::planted!("assignment-misrouted") && members.len() > 1 {
                                // Off by one when pairing members with their ranges.
                                let first = ranges.values().next().cloned().unwrap_or_default();
                                if let Some(second) = ranges.values_mut().nth(1) {
                                    second.extend(first);
                                }
                            }
                            assignments = ranges
                                .into_iter()
                                .map(|(m, ps)| {
                                    sync_group_request::SyncGroupRequestAssignment::default()
                                        .with_member_id(sb(&m))
                                        .with_assignment(assignment(&self.config.topic, &ps))
                                })
                                .collect();
                        }
                        self.phase = Phase::Syncing;
                        let Some(c) = self.coordinator else { return self.lost_coordinator(cx) };
                        let req = SyncGroupRequest::default()
                            .with_group_id(self.group())
                            .with_generation_id(self.generation)
                            .with_member_id(sb(&self.member_id))
                            .with_protocol_type(Some(sb("consumer")))
                            .with_protocol_name(r.protocol_name.clone())
                            .with_assignments(assignments);
                        self.send(cx, c, &req, 5);
                    }
                    error::MEMBER_ID_REQUIRED => {
                        self.member_id = r.member_id.to_string();
                        self.phase = Phase::Join;
                    }
                    code => {
                        self.phase = Phase::Join;
                        self.generation_over(cx, code);
                    }
                }
            }
            ApiKey::SyncGroup => {
                let Ok(r) = decode::<SyncGroupResponse>(body, version) else { return self.violation(cx, "bad SyncGroup response".into()) };
                if self.phase != Phase::Syncing {
                    return;
                }
                if r.error_code != error::NONE {
                    self.phase = Phase::Join;
                    return self.generation_over(cx, r.error_code);
                }
                let Some(parts) = parse_assignment(r.assignment, &self.config.topic) else { return self.violation(cx, "unparseable assignment".into()) };
                self.owned = parts.iter().copied().collect();
                self.positions.clear();
                self.committed.clear();
                self.phase = Phase::Stable;
                self.last_heartbeat_ms = cx.now_ms();
                self.report_assignment(cx);
            }
            ApiKey::Heartbeat => {
                let Ok(r) = decode::<HeartbeatResponse>(body, version) else { return self.violation(cx, "bad Heartbeat response".into()) };
                if r.error_code != error::NONE && self.phase == Phase::Stable {
                    self.generation_over(cx, r.error_code);
                }
            }
            ApiKey::LeaveGroup => {}
            ApiKey::ConsumerGroupHeartbeat => {
                let Ok(r) = decode::<ConsumerGroupHeartbeatResponse>(body, version) else {
                    return self.violation(cx, "bad ConsumerGroupHeartbeat response".into());
                };
                self.on_consumer_heartbeat(cx, r);
            }
            ApiKey::OffsetFetch => {
                let Ok(r) = decode::<OffsetFetchResponse>(body, version) else { return self.violation(cx, "bad OffsetFetch response".into()) };
                if self.phase != Phase::Stable || r.error_code != error::NONE {
                    if matches!(r.error_code, error::NOT_COORDINATOR | error::COORDINATOR_NOT_AVAILABLE) {
                        self.lost_coordinator(cx);
                    }
                    return;
                }
                for t in r.topics {
                    for p in t.partitions {
                        if self.owned.contains(&p.partition_index) && p.error_code == error::NONE && !self.positions.contains_key(&p.partition_index) {
                            let start = p.committed_offset.max(0);
                            self.positions.insert(p.partition_index, start);
                            self.committed.insert(p.partition_index, start);
                        }
                    }
                }
            }
            ApiKey::OffsetCommit => {
                let Ok(r) = decode::<OffsetCommitResponse>(body, version) else { return self.violation(cx, "bad OffsetCommit response".into()) };
                let mut failed = None;
                for t in r.topics {
                    for p in t.partitions {
                        if p.error_code == error::NONE {
                            // The request carried our position: find it again from the request's
                            // record of what changed (positions only move forward).
                            if let Some(o) = self.pending_commit.remove(&p.partition_index) {
                                self.committed.insert(p.partition_index, o);
                                self.events.push(ClientEvent::GroupCommit {
                                    time_ms: cx.now_ms(),
                                    process: self.config.process,
                                    group: self.config.group.clone(),
                                    generation: self.generation,
                                    key: p.partition_index as u64,
                                    offset: o,
                                });
                            }
                        } else {
                            failed = Some(p.error_code);
                        }
                    }
                }
                self.pending_commit.clear();
                if let Some(code) = failed {
                    if self.config.consumer_protocol {
                        // A stale epoch is corrected by the next heartbeat; a lost membership by
                        // rejoining.
                        match code {
                            error::UNKNOWN_MEMBER_ID | error::FENCED_MEMBER_EPOCH => {
                                self.revoke(cx);
                                self.phase = Phase::Join;
                            }
                            error::NOT_COORDINATOR | error::COORDINATOR_NOT_AVAILABLE => self.lost_coordinator(cx),
                            _ => {}
                        }
                    } else if self.phase == Phase::Stable {
                        self.generation_over(cx, code);
                    }
                }
            }
            ApiKey::Fetch => {
                let Ok(r) = decode::<FetchResponse>(body, version) else {
                    self.poll_done(ClientEvent::CompletePoll { time_ms: cx.now_ms(), process: self.config.process, reads: BTreeMap::new(), ok: false });
                    return self.violation(cx, "bad Fetch response".into());
                };
                self.on_fetch(cx, r);
            }
            _ => self.violation(cx, format!("unexpected response to api {key:?}")),
        }
    }

    fn on_fetch(&mut self, cx: &mut Cx<ClientMsg>, r: FetchResponse) {
        let mut reads: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
        let responses = if self.poll_stale { Vec::new() } else { r.responses };
        for t in responses {
            for p in t.partitions {
                if p.error_code != error::NONE {
                    self.leaders.clear();
                    self.boot += 1;
                    continue;
                }
                if !self.owned.contains(&p.partition_index) {
                    continue;
                }
                let Some(mut records) = p.records.filter(|r| !r.is_empty()) else { continue };
                let end_of_batches = crate::log::batch::end_of_batches(&records);
                let Ok(sets) = RecordBatchDecoder::decode_all(&mut records) else {
                    self.violation(cx, format!("cannot decode records of partition {}", p.partition_index));
                    continue;
                };
                let Some(position) = self.positions.get_mut(&p.partition_index) else { continue };
                for record in sets.into_iter().flat_map(|s| s.records) {
                    if record.offset < *position {
                        continue;
                    }
                    let Some(value) = record.value.as_deref().and_then(parse_value) else { continue };
                    *position = record.offset + 1;
                    reads.entry(p.partition_index as u64).or_default().push((record.offset, value));
                    self.seen.entry(p.partition_index as u64).or_default().insert(value);
                }
                // Past batches the cleaner emptied or left with a gap at their end.
                *position = (*position).max(end_of_batches.unwrap_or(0));
            }
        }
        self.poll_done(ClientEvent::CompletePoll { time_ms: cx.now_ms(), process: self.config.process, reads, ok: true });
    }
}

impl Actor for GroupConsumer {
    type Msg = ClientMsg;

    fn on_start(&mut self, cx: &mut Cx<ClientMsg>) {
        self.step(cx);
        cx.set_timer(TICK, TICK_MS);
    }

    fn on_message(&mut self, cx: &mut Cx<ClientMsg>, from: Addr, msg: ClientMsg) {
        match msg {
            ClientMsg::Response(frame) => {
                let (key, version, body) = match self.wire.match_response(frame) {
                    Ok(x) => x,
                    Err(e) => return self.violation(cx, format!("unreadable response: {e}")),
                };
                match ApiKey::try_from(key) {
                    Ok(k) => self.on_response(cx, k, version, body),
                    Err(_) => self.violation(cx, format!("response to unknown api {key}")),
                }
                self.step(cx);
            }
            ClientMsg::Disconnected => {
                let lost_commit = self.wire.in_flight.values().any(|(k, _, n)| *n == from.node && *k == ApiKey::OffsetCommit as i16);
                if self.wire.in_flight.values().any(|(k, _, n)| *n == from.node && *k == ApiKey::ConsumerGroupHeartbeat as i16) {
                    self.full_heartbeat = true;
                }
                self.wire.disconnected_from(from.node);
                if lost_commit {
                    self.pending_commit.clear();
                }
                if self.polling == Some(from.node) {
                    self.poll_done(ClientEvent::CompletePoll { time_ms: cx.now_ms(), process: self.config.process, reads: BTreeMap::new(), ok: false });
                }
                if self.coordinator == Some(from.node) {
                    self.lost_coordinator(cx);
                }
                self.leaders.clear();
                self.boot += 1;
            }
            ClientMsg::Request(_) => {}
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<ClientMsg>, _timer: TimerId) {
        self.step(cx);
        cx.set_timer(TICK, TICK_MS);
    }

    fn on_io(&mut self, _cx: &mut Cx<ClientMsg>, _done: IoDone) {}
}
