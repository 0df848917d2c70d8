//! Administrators acting while the faults run.
//!
//! - [`Reassigner`]: every so often it asks one broker, with AlterPartitionReassignments, to move
//!   a partition of the workload topic to a seeded set of brokers. The producers and consumers
//!   must not notice beyond retries; the checkers judge the result (no acknowledged record lost,
//!   replicas identical after the heal, one leader per epoch).
//! - [`RecordDeleter`]: every so often it asks a partition's leader, with DeleteRecords, to
//!   delete the records below an offset a little past the last low watermark it was told. What
//!   it was acknowledged must stay deleted (no leader of the current epoch has a lower log
//!   start, whatever crashed or failed over), and the consumers move past it.
//! - [`QuorumWatcher`]: every so often it asks a broker to describe the metadata quorum
//!   (DescribeQuorum, forwarded to the active controller) and keeps every answer; the world
//!   checks them against the quorum it observed (see `World::check_quorum_answers`).
//! - [`TimestampProbe`]: every so often it asks a partition's leader, within one leader epoch,
//!   for its high watermark (ListOffsets, latest), the first offset at or after a seeded
//!   timestamp of the last 20 s of its clock, and its log start (earliest); the world checks
//!   every answer against the log the partition ends with (see
//!   `World::check_timestamp_answers`).

use bytes::Bytes;
use kafka_protocol::messages::alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
use kafka_protocol::messages::describe_quorum_request::{PartitionData as QuorumPartition, TopicData as QuorumTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, BrokerId, DeleteRecordsRequest, DeleteRecordsResponse,
    DescribeQuorumRequest, DescribeQuorumResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use runnel_actors::broker::error;
use runnel_actors::client::{leaders, topic_metadata_request, ClientMsg, Wire};
use runnel_actors::core::{Actor, Addr, Cx, IoDone, TimerId};
use std::collections::BTreeMap;

const TICK: TimerId = TimerId(1);

/// How long an administrator waits for an answer before it counts the request as lost (a link
/// cut without a reset, or a broker that never answers).
const ANSWER_WITHIN_MS: u64 = 30_000;

/// What every administrator shares: one request at a time, sent to a broker of a rotating list
/// (or to a partition's leader), given up after a broken connection or [`ANSWER_WITHIN_MS`] of
/// silence; the next round starts `interval_ms` later, until `until_ms`.
struct Turns {
    brokers: Vec<Addr>,
    interval_ms: u64,
    until_ms: u64,
    /// The broker asked next.
    target: usize,
    /// When the request in flight was sent (virtual ms).
    since: Option<u64>,
    wire: Wire,
}

impl Turns {
    fn new(brokers: Vec<Addr>, interval_ms: u64, until_ms: u64) -> Self {
        Turns { brokers, interval_ms, until_ms, target: 0, since: None, wire: Wire::default() }
    }

    /// The broker asked next.
    fn broker(&self) -> Addr {
        self.brokers[self.target]
    }

    /// How long the request in flight may still take to be answered; `None` if none is in
    /// flight or its time is up.
    fn time_left(&self, now_ms: u64) -> Option<u64> {
        self.since.filter(|since| now_ms < since + ANSWER_WITHIN_MS).map(|since| since + ANSWER_WITHIN_MS - now_ms)
    }

    /// Whether the faults are over (no new round starts).
    fn over(&self, now_ms: u64) -> bool {
        now_ms >= self.until_ms
    }

    /// Send `frame` to `to` as the request in flight.
    fn send(&mut self, cx: &mut Cx<ClientMsg>, to: Addr, frame: Bytes) {
        self.since = Some(cx.now_ms());
        cx.send(to, ClientMsg::Request(frame));
    }

    /// The next round goes to the next broker, `interval_ms` from now.
    fn next_round(&mut self, cx: &mut Cx<ClientMsg>) {
        self.target = (self.target + 1) % self.brokers.len();
        cx.set_timer(TICK, self.interval_ms);
    }

    /// Stop waiting for the request in flight, forget the connection's requests and start the
    /// next round; whether a request was in flight.
    fn give_up(&mut self, cx: &mut Cx<ClientMsg>) -> bool {
        let in_flight = self.since.take().is_some();
        self.wire.disconnected();
        self.next_round(cx);
        in_flight
    }
}

/// What the reassigner was answered, per partition request.
#[derive(Clone, Debug, Default)]
pub struct ReassignOutcomes {
    /// Requests sent.
    pub sent: u64,
    /// Partitions whose reassignment the controller accepted.
    pub accepted: u64,
    /// Partitions refused (with any error code).
    pub refused: u64,
    /// Requests whose connection broke before the answer.
    pub lost: u64,
    /// Requests not answered within 30 s on a connection that stayed up (a link cut without a
    /// reset, or a broker that never answers).
    pub timed_out: u64,
}

/// Sends one partition reassignment at a time until `until_ms`.
pub struct Reassigner {
    turns: Turns,
    topic: String,
    partitions: i32,
    replication_factor: usize,
    /// What happened so far.
    pub outcomes: ReassignOutcomes,
}

impl Reassigner {
    /// A reassigner of `topic` over `brokers` (their node ids are their addresses' nodes).
    pub fn new(brokers: Vec<Addr>, topic: &str, partitions: i32, replication_factor: usize, interval_ms: u64, until_ms: u64) -> Self {
        Reassigner {
            turns: Turns::new(brokers, interval_ms, until_ms),
            topic: topic.to_string(),
            partitions,
            replication_factor,
            outcomes: ReassignOutcomes::default(),
        }
    }

    fn send(&mut self, cx: &mut Cx<ClientMsg>) {
        if self.turns.since.is_some() {
            if self.turns.time_left(cx.now_ms()).is_some() {
                return;
            }
            // Never answered: give up on it and its broker.
            self.give_up(cx, true);
        }
        if self.turns.over(cx.now_ms()) {
            return;
        }
        let partition = (cx.rng().next_u64() % self.partitions as u64) as i32;
        // A seeded choice of `replication_factor` distinct brokers, in a seeded order (the first
        // is the preferred leader).
        let mut ids: Vec<i32> = self.turns.brokers.iter().map(|a| a.node).collect();
        for i in (1..ids.len()).rev() {
            let j = (cx.rng().next_u64() % (i as u64 + 1)) as usize;
            ids.swap(i, j);
        }
        ids.truncate(self.replication_factor);
        let request = AlterPartitionReassignmentsRequest::default().with_timeout_ms(30_000).with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(Some(ids.into_iter().map(BrokerId).collect()))])]);
        let frame = self.turns.wire.encode(&request, 0);
        self.outcomes.sent += 1;
        self.turns.send(cx, self.turns.broker(), frame);
    }

    /// Stop waiting for the request in flight (its connection broke, or `timed_out`) and move on
    /// to the next broker.
    fn give_up(&mut self, cx: &mut Cx<ClientMsg>, timed_out: bool) {
        if self.turns.give_up(cx) {
            if timed_out {
                self.outcomes.timed_out += 1;
            } else {
                self.outcomes.lost += 1;
            }
        }
    }

    fn on_response(&mut self, frame: Bytes) {
        let Ok((_, version, mut body)) = self.turns.wire.match_response(frame) else { return };
        let Ok(response) = AlterPartitionReassignmentsResponse::decode(&mut body, version) else { return };
        for p in response.responses.iter().flat_map(|t| &t.partitions) {
            if p.error_code == 0 && response.error_code == 0 {
                self.outcomes.accepted += 1;
            } else {
                self.outcomes.refused += 1;
            }
        }
    }
}

impl Actor for Reassigner {
    type Msg = ClientMsg;
    fn on_start(&mut self, cx: &mut Cx<ClientMsg>) {
        cx.set_timer(TICK, self.turns.interval_ms);
    }
    fn on_message(&mut self, cx: &mut Cx<ClientMsg>, _from: Addr, msg: ClientMsg) {
        match msg {
            ClientMsg::Response(frame) => {
                self.turns.since = None;
                self.on_response(frame);
                cx.set_timer(TICK, self.turns.interval_ms);
            }
            ClientMsg::Disconnected => self.give_up(cx, false),
            ClientMsg::Request(_) => {}
        }
    }
    fn on_timer(&mut self, cx: &mut Cx<ClientMsg>, _timer: TimerId) {
        self.send(cx);
        if self.turns.since.is_some() {
            // Look again when the request in flight would count as lost.
            cx.set_timer(TICK, ANSWER_WITHIN_MS);
        }
    }
    fn on_io(&mut self, _cx: &mut Cx<ClientMsg>, _done: IoDone) {}
}

/// What the record deleter was answered.
#[derive(Clone, Debug, Default)]
pub struct DeleteOutcomes {
    /// DeleteRecords requests sent.
    pub sent: u64,
    /// Acknowledged deletions: (partition, low watermark, virtual ms of the answer).
    pub acknowledged: Vec<(i32, i64, u64)>,
    /// Refused as beyond the high watermark (OFFSET_OUT_OF_RANGE).
    pub out_of_range: u64,
    /// Answered REQUEST_TIMED_OUT (a live replica did not follow in time).
    pub timed_out: u64,
    /// Refused by a broker that does not lead the partition (any more).
    pub not_leader: u64,
    /// Requests whose connection broke before the answer, or that stayed unanswered for 30 s.
    pub lost: u64,
}

impl DeleteOutcomes {
    /// The highest low watermark acknowledged, per partition.
    pub fn low_watermarks(&self) -> BTreeMap<i32, i64> {
        let mut lows = BTreeMap::new();
        for &(partition, low, _) in &self.acknowledged {
            let l = lows.entry(partition).or_insert(low);
            *l = (*l).max(low);
        }
        lows
    }
}

/// Deletes records of the workload topic now and then until `until_ms`: asks one broker for
/// the partitions' leaders, then the leader of a seeded partition to delete the records below
/// the last low watermark it was told for it plus a seeded step.
pub struct RecordDeleter {
    turns: Turns,
    topic: String,
    partitions: i32,
    /// Leaders from the last metadata answer.
    leaders: BTreeMap<i32, i32>,
    /// What happened so far.
    pub outcomes: DeleteOutcomes,
}

impl RecordDeleter {
    /// A deleter of `topic` over `brokers`.
    pub fn new(brokers: Vec<Addr>, topic: &str, partitions: i32, interval_ms: u64, until_ms: u64) -> Self {
        RecordDeleter {
            turns: Turns::new(brokers, interval_ms, until_ms),
            topic: topic.to_string(),
            partitions,
            leaders: BTreeMap::new(),
            outcomes: DeleteOutcomes::default(),
        }
    }

    /// Start a round: ask for the leaders (unless a request is in flight or the faults are over).
    fn tick(&mut self, cx: &mut Cx<ClientMsg>) {
        if let Some(left) = self.turns.time_left(cx.now_ms()) {
            return cx.set_timer(TICK, left);
        }
        if self.turns.since.is_some() {
            // Never answered: give up on it.
            self.give_up(cx);
        }
        if self.turns.over(cx.now_ms()) {
            return;
        }
        let to = self.turns.broker();
        let frame = self.turns.wire.encode_for(to.node, &topic_metadata_request(&self.topic), 12);
        self.turns.send(cx, to, frame);
    }

    /// Send a DeleteRecords to the leader of a seeded partition, if it has one.
    fn delete(&mut self, cx: &mut Cx<ClientMsg>) -> bool {
        let partition = (cx.rng().next_u64() % self.partitions as u64) as i32;
        let Some(&leader) = self.leaders.get(&partition) else { return false };
        let offset = self.outcomes.low_watermarks().get(&partition).copied().unwrap_or(0) + 1 + (cx.rng().next_u64() % 40) as i64;
        let request = DeleteRecordsRequest::default().with_timeout_ms(5_000).with_topics(vec![DeleteRecordsTopic::default()
            .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
            .with_partitions(vec![DeleteRecordsPartition::default().with_partition_index(partition).with_offset(offset)])]);
        let frame = self.turns.wire.encode_for(leader, &request, 2);
        self.outcomes.sent += 1;
        self.turns.send(cx, Addr { node: leader, actor: 0 }, frame);
        true
    }

    /// The request in flight is lost (its connection broke, or it stayed unanswered): forget
    /// the leaders and ask the next broker next time.
    fn give_up(&mut self, cx: &mut Cx<ClientMsg>) {
        self.leaders.clear();
        if self.turns.give_up(cx) {
            self.outcomes.lost += 1;
        }
    }

    fn on_response(&mut self, cx: &mut Cx<ClientMsg>, frame: Bytes) {
        self.turns.since = None;
        let Ok((key, version, mut body)) = self.turns.wire.match_response(frame) else { return cx.set_timer(TICK, self.turns.interval_ms) };
        if key == ApiKey::Metadata as i16 {
            if let Some((_, leaders)) = MetadataResponse::decode(&mut body, version).ok().as_ref().and_then(leaders) {
                self.leaders = leaders;
                if self.delete(cx) {
                    return;
                }
            }
            return self.turns.next_round(cx);
        }
        if let Ok(response) = DeleteRecordsResponse::decode(&mut body, version) {
            for p in response.topics.iter().flat_map(|t| &t.partitions) {
                match p.error_code {
                    error::NONE => self.outcomes.acknowledged.push((p.partition_index, p.low_watermark, cx.now_ms())),
                    error::OFFSET_OUT_OF_RANGE => self.outcomes.out_of_range += 1,
                    error::REQUEST_TIMED_OUT => self.outcomes.timed_out += 1,
                    _ => self.outcomes.not_leader += 1,
                }
            }
        }
        cx.set_timer(TICK, self.turns.interval_ms);
    }
}

impl Actor for RecordDeleter {
    type Msg = ClientMsg;
    fn on_start(&mut self, cx: &mut Cx<ClientMsg>) {
        cx.set_timer(TICK, self.turns.interval_ms);
    }
    fn on_message(&mut self, cx: &mut Cx<ClientMsg>, _from: Addr, msg: ClientMsg) {
        match msg {
            ClientMsg::Response(frame) => self.on_response(cx, frame),
            ClientMsg::Disconnected => {
                if self.turns.since.is_some() {
                    self.give_up(cx);
                }
            }
            ClientMsg::Request(_) => {}
        }
    }
    fn on_timer(&mut self, cx: &mut Cx<ClientMsg>, _timer: TimerId) {
        self.tick(cx);
    }
    fn on_io(&mut self, _cx: &mut Cx<ClientMsg>, _done: IoDone) {}
}

/// One DescribeQuorum answer: when it came, and the metadata log's partition as described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumAnswer {
    /// Virtual ms of its arrival.
    pub at_ms: u64,
    /// Top-level error code (NOT_CONTROLLER and REQUEST_TIMED_OUT while the quorum moves).
    pub error: i16,
    /// Leader id, epoch and high watermark.
    pub leader: i32,
    /// The leader's epoch (Raft term).
    pub epoch: i32,
    /// The high watermark (commit index).
    pub high_watermark: i64,
    /// Voters: (id, log end, last fetch timestamp, last caught-up timestamp).
    pub voters: Vec<(i32, i64, i64, i64)>,
    /// Observers: (id, log end).
    pub observers: Vec<(i32, i64)>,
}

/// Asks a broker to describe the metadata quorum every `interval_ms` until `until_ms`, one
/// request at a time, moving to the next broker when a connection breaks or an answer does not
/// come within 30 s.
pub struct QuorumWatcher {
    turns: Turns,
    /// Requests sent.
    pub sent: u64,
    /// Requests whose connection broke, or that went unanswered for 30 s.
    pub lost: u64,
    /// Every answer, in arrival order.
    pub answers: Vec<QuorumAnswer>,
}

impl QuorumWatcher {
    /// A watcher asking `brokers` in turn.
    pub fn new(brokers: Vec<Addr>, interval_ms: u64, until_ms: u64) -> Self {
        QuorumWatcher { turns: Turns::new(brokers, interval_ms, until_ms), sent: 0, lost: 0, answers: Vec::new() }
    }

    fn tick(&mut self, cx: &mut Cx<ClientMsg>) {
        if let Some(left) = self.turns.time_left(cx.now_ms()) {
            return cx.set_timer(TICK, left);
        }
        if self.turns.since.is_some() {
            self.give_up(cx);
        }
        if self.turns.over(cx.now_ms()) {
            return;
        }
        let request = DescribeQuorumRequest::default().with_topics(vec![QuorumTopic::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
            .with_partitions(vec![QuorumPartition::default().with_partition_index(0)])]);
        let frame = self.turns.wire.encode(&request, 2);
        self.sent += 1;
        self.turns.send(cx, self.turns.broker(), frame);
        // Look again when the request would count as lost (an answer sets the next tick).
        cx.set_timer(TICK, ANSWER_WITHIN_MS);
    }

    fn give_up(&mut self, cx: &mut Cx<ClientMsg>) {
        if self.turns.give_up(cx) {
            self.lost += 1;
        }
    }

    fn on_response(&mut self, cx: &mut Cx<ClientMsg>, frame: Bytes) {
        // Only the answer to the request in flight ends the wait: one request at a time, so the
        // answers are recorded in the order the controller computed them.
        let Ok((_, version, mut body)) = self.turns.wire.match_response(frame) else { return };
        self.turns.since = None;
        cx.set_timer(TICK, self.turns.interval_ms);
        let Ok(r) = DescribeQuorumResponse::decode(&mut body, version) else { return };
        let partition = r.topics.first().and_then(|t| t.partitions.first());
        let answer = match partition {
            Some(p) if r.error_code == error::NONE => QuorumAnswer {
                at_ms: cx.now_ms(),
                error: p.error_code,
                leader: p.leader_id.0,
                epoch: p.leader_epoch,
                high_watermark: p.high_watermark,
                voters: p.current_voters.iter().map(|v| (v.replica_id.0, v.log_end_offset, v.last_fetch_timestamp, v.last_caught_up_timestamp)).collect(),
                observers: p.observers.iter().map(|o| (o.replica_id.0, o.log_end_offset)).collect(),
            },
            _ => QuorumAnswer {
                at_ms: cx.now_ms(),
                error: if r.error_code != error::NONE { r.error_code } else { -1 },
                leader: -1,
                epoch: -1,
                high_watermark: -1,
                voters: Vec::new(),
                observers: Vec::new(),
            },
        };
        self.answers.push(answer);
    }
}

impl Actor for QuorumWatcher {
    type Msg = ClientMsg;
    fn on_start(&mut self, cx: &mut Cx<ClientMsg>) {
        cx.set_timer(TICK, self.turns.interval_ms);
    }
    fn on_message(&mut self, cx: &mut Cx<ClientMsg>, from: Addr, msg: ClientMsg) {
        match msg {
            ClientMsg::Response(frame) => self.on_response(cx, frame),
            // Only the connection the request in flight went on matters.
            ClientMsg::Disconnected if from.node == self.turns.broker().node && self.turns.since.is_some() => self.give_up(cx),
            ClientMsg::Disconnected | ClientMsg::Request(_) => {}
        }
    }
    fn on_timer(&mut self, cx: &mut Cx<ClientMsg>, _timer: TimerId) {
        self.tick(cx);
    }
    fn on_io(&mut self, _cx: &mut Cx<ClientMsg>, _done: IoDone) {}
}

/// One answer to a ListOffsets by timestamp, with the high watermark the same leader gave just
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimestampAnswer {
    /// Virtual ms of its arrival.
    pub at_ms: u64,
    /// Partition.
    pub partition: i32,
    /// The timestamp asked for.
    pub target: i64,
    /// The high watermark answered just before (ListOffsets, latest): every record below it was
    /// committed before the search began.
    pub committed_before: i64,
    /// The log start the leader gave just after, in the same leader epoch: the search saw every
    /// record from here on (a leader's log start only moves up within its epoch).
    pub log_start_after: i64,
    /// The answered offset (-1: no record at or after `target`).
    pub offset: i64,
    /// The answered timestamp.
    pub timestamp: i64,
}

/// What the probe is waiting for.
#[derive(Clone, Copy, Debug)]
enum ProbeStep {
    Leaders,
    Latest { partition: i32, leader: i32 },
    Search { partition: i32, leader: i32, epoch: i32, committed_before: i64, target: i64 },
    Earliest { partition: i32, leader: i32, committed_before: i64, target: i64, offset: i64, timestamp: i64 },
}

/// Asks, every `interval_ms` until `until_ms`, one broker for the partitions' leaders, then the
/// leader of a seeded partition for its high watermark, for the first offset whose record's
/// timestamp is at or after a seeded timestamp of the last 20 s (of the probe's clock), and for
/// its log start, the last two in the leader epoch of the first answer. One request at a time;
/// an error, a broken connection or 30 s without an answer ends the round.
pub struct TimestampProbe {
    turns: Turns,
    topic: String,
    partitions: i32,
    /// What the request in flight asks (`Some` exactly while `turns` has one in flight).
    step: Option<ProbeStep>,
    /// Searches sent.
    pub sent: u64,
    /// Rounds ended by a broken connection or silence.
    pub lost: u64,
    /// Answers with an error code (NOT_LEADER_OR_FOLLOWER while leadership moves, say).
    pub errors: u64,
    /// Every answered search.
    pub answers: Vec<TimestampAnswer>,
    /// Every answered high watermark (ListOffsets, latest): `(virtual ms, partition, the
    /// answering leader's epoch, offset)`.
    pub latest: Vec<(u64, i32, i32, i64)>,
    /// Answers OFFSET_NOT_AVAILABLE (a new leader's high watermark still below its epoch start).
    pub not_available: u64,
}

impl TimestampProbe {
    /// A probe of `topic` over `brokers`.
    pub fn new(brokers: Vec<Addr>, topic: &str, partitions: i32, interval_ms: u64, until_ms: u64) -> Self {
        TimestampProbe {
            turns: Turns::new(brokers, interval_ms, until_ms),
            topic: topic.to_string(),
            partitions,
            step: None,
            sent: 0,
            lost: 0,
            errors: 0,
            answers: Vec::new(),
            latest: Vec::new(),
            not_available: 0,
        }
    }

    fn tick(&mut self, cx: &mut Cx<ClientMsg>) {
        if let Some(left) = self.turns.time_left(cx.now_ms()) {
            return cx.set_timer(TICK, left);
        }
        if self.step.is_some() {
            self.give_up(cx);
        }
        if self.turns.over(cx.now_ms()) {
            return;
        }
        let to = self.turns.broker();
        let frame = self.turns.wire.encode_for(to.node, &topic_metadata_request(&self.topic), 12);
        self.step = Some(ProbeStep::Leaders);
        self.turns.send(cx, to, frame);
        cx.set_timer(TICK, ANSWER_WITHIN_MS);
    }

    fn list_offsets(&mut self, cx: &mut Cx<ClientMsg>, step: ProbeStep, partition: i32, leader: i32, timestamp: i64, epoch: i32) {
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)
                .with_current_leader_epoch(epoch)])]);
        let frame = self.turns.wire.encode_for(leader, &request, 7);
        self.step = Some(step);
        self.turns.send(cx, Addr { node: leader, actor: 0 }, frame);
    }

    fn give_up(&mut self, cx: &mut Cx<ClientMsg>) {
        self.step = None;
        if self.turns.give_up(cx) {
            self.lost += 1;
        }
    }

    fn on_response(&mut self, cx: &mut Cx<ClientMsg>, frame: Bytes) {
        let Ok((key, version, mut body)) = self.turns.wire.match_response(frame) else { return };
        let Some(step) = self.step.take() else { return };
        self.turns.since = None;
        let next_round = |p: &mut Self, cx: &mut Cx<ClientMsg>| p.turns.next_round(cx);
        match step {
            ProbeStep::Leaders if key == ApiKey::Metadata as i16 => {
                let leaders = MetadataResponse::decode(&mut body, version).ok().as_ref().and_then(leaders).map(|(_, l)| l).unwrap_or_default();
                let partition = (cx.rng().next_u64() % self.partitions as u64) as i32;
                match leaders.get(&partition) {
                    Some(&leader) => self.list_offsets(cx, ProbeStep::Latest { partition, leader }, partition, leader, -1, -1),
                    None => next_round(self, cx),
                }
            }
            ProbeStep::Latest { partition, leader } => match Self::answer(&mut body, version) {
                Some((0, committed_before, _, epoch)) => {
                    self.latest.push((cx.now_ms(), partition, epoch, committed_before));
                    let target = cx.wall_clock_ms() - (cx.rng().next_u64() % 20_000) as i64;
                    self.sent += 1;
                    let step = ProbeStep::Search { partition, leader, epoch, committed_before, target };
                    self.list_offsets(cx, step, partition, leader, target, epoch);
                }
                answer => {
                    if answer.is_some_and(|a| a.0 == error::OFFSET_NOT_AVAILABLE) {
                        self.not_available += 1;
                    }
                    self.errors += 1;
                    next_round(self, cx);
                }
            },
            ProbeStep::Search { partition, leader, epoch, committed_before, target } => match Self::answer(&mut body, version) {
                Some((0, offset, timestamp, _)) => {
                    let step = ProbeStep::Earliest { partition, leader, committed_before, target, offset, timestamp };
                    self.list_offsets(cx, step, partition, leader, -2, epoch);
                }
                _ => {
                    self.errors += 1;
                    next_round(self, cx);
                }
            },
            ProbeStep::Earliest { partition, committed_before, target, offset, timestamp, .. } => {
                match Self::answer(&mut body, version) {
                    Some((0, log_start_after, _, _)) => {
                        self.answers.push(TimestampAnswer { at_ms: cx.now_ms(), partition, target, committed_before, log_start_after, offset, timestamp })
                    }
                    _ => self.errors += 1,
                }
                next_round(self, cx);
            }
            ProbeStep::Leaders => next_round(self, cx),
        }
    }

    /// `(error code, offset, timestamp, leader epoch)` of the one partition asked.
    fn answer(body: &mut Bytes, version: i16) -> Option<(i16, i64, i64, i32)> {
        let r = ListOffsetsResponse::decode(body, version).ok()?;
        let p = r.topics.first()?.partitions.first()?;
        Some((p.error_code, p.offset, p.timestamp, p.leader_epoch))
    }
}

impl Actor for TimestampProbe {
    type Msg = ClientMsg;
    fn on_start(&mut self, cx: &mut Cx<ClientMsg>) {
        cx.set_timer(TICK, self.turns.interval_ms);
    }
    fn on_message(&mut self, cx: &mut Cx<ClientMsg>, from: Addr, msg: ClientMsg) {
        match msg {
            ClientMsg::Response(frame) => self.on_response(cx, frame),
            ClientMsg::Disconnected if self.step.is_some() => {
                let node = match self.step {
                    Some(ProbeStep::Latest { leader, .. } | ProbeStep::Search { leader, .. } | ProbeStep::Earliest { leader, .. }) => leader,
                    _ => self.turns.broker().node,
                };
                if from.node == node {
                    self.give_up(cx);
                }
            }
            ClientMsg::Disconnected | ClientMsg::Request(_) => {}
        }
    }
    fn on_timer(&mut self, cx: &mut Cx<ClientMsg>, _timer: TimerId) {
        self.tick(cx);
    }
    fn on_io(&mut self, _cx: &mut Cx<ClientMsg>, _done: IoDone) {}
}
