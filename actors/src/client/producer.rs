//! The workload's idempotent producer: one record per Produce request, acks=all, at most one
//! batch in flight per partition, retried with the same sequence number until it is answered —
//! the behaviour that makes duplicates impossible if the broker's sequence checks are right.
//!
//! It follows leadership like a real client: Metadata tells it each partition's leader; a
//! produce goes to that node; NOT_LEADER_OR_FOLLOWER and friends, or a broken connection, make
//! it refresh metadata (from the bootstrap nodes, in turn) and resend.

use super::{decode, leaders, ready_topic, record_bytes, topic_metadata_request, ClientEvent, ClientMsg, Wire};
use crate::broker::error;
use crate::core::{Actor, Addr, Cx, IoDone, TimerId};
use crate::log::batch::build_batch;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;

const SEND_TIMER: TimerId = TimerId(1);
const RETRY_TIMER: TimerId = TimerId(2);

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// History process id; values are `process * 1_000_000_000 + n`.
    pub process: u64,
    /// The nodes to ask for metadata, in turn.
    pub bootstrap: Vec<Addr>,
    /// Topic.
    pub topic: String,
    /// Milliseconds between sends.
    pub send_interval_ms: u64,
    /// Stop starting new sends at this virtual time — once a send has been acknowledged at or
    /// after it: a producer whose writes were all blocked keeps trying, so a cluster that never
    /// takes writes again after the faults heal shows up as a liveness failure.
    pub stop_at_ms: u64,
}

#[derive(Clone, Debug)]
struct InFlight {
    value: u64,
    sequence: i32,
    sent: bool,
    /// Sent at least once: it may be in the log under the current producer id.
    ever_sent: bool,
    node: i32,
    /// Correlation ids of the Produce requests carrying this batch under the current producer
    /// id: an answer to any other request (one sent before a producer-id reset) is not its.
    requests: Vec<i32>,
}

/// See the module documentation.
pub struct Producer {
    config: ProducerConfig,
    wire: Wire,
    partitions: i32,
    leaders: BTreeMap<i32, i32>,
    boot: usize,
    setup_node: i32,
    producer_id: i64,
    producer_epoch: i16,
    next_sequence: BTreeMap<i32, i32>,
    in_flight: BTreeMap<i32, InFlight>,
    /// A metadata or InitProducerId request is outstanding.
    setup_pending: bool,
    sent_values: u64,
    /// A send was acknowledged at or after `stop_at_ms`.
    acked_after_stop: bool,
    events: Vec<ClientEvent>,
}

impl Producer {
    /// A producer with the given settings.
    pub fn new(config: ProducerConfig) -> Self {
        Producer {
            config,
            wire: Wire::default(),
            partitions: 0,
            leaders: BTreeMap::new(),
            boot: 0,
            setup_node: -1,
            producer_id: -1,
            producer_epoch: -1,
            next_sequence: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            setup_pending: false,
            sent_values: 0,
            acked_after_stop: false,
            events: Vec::new(),
        }
    }

    /// Take the events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.events)
    }

    /// A one-line description of the producer's state (simulator debugging).
    pub fn debug_state(&self) -> String {
        format!(
            "pid {} epoch {} partitions {} leaders {:?} setup_pending {} in_flight {:?} requests {:?}",
            self.producer_id, self.producer_epoch, self.partitions, self.leaders, self.setup_pending, self.in_flight, self.wire.in_flight
        )
    }

    /// Whether the producer stopped sending and every send was answered.
    pub fn is_done(&self, now_ms: u64) -> bool {
        self.stopped(now_ms) && self.in_flight.is_empty()
    }

    fn topic(&self) -> TopicName {
        TopicName(StrBytes::from_string(self.config.topic.clone()))
    }

    fn bootstrap(&self) -> Addr {
        self.config.bootstrap[self.boot % self.config.bootstrap.len()]
    }

    fn setup(&mut self, cx: &mut Cx<ClientMsg>) {
        if self.setup_pending {
            return;
        }
        self.setup_pending = true;
        let to = self.bootstrap();
        self.setup_node = to.node;
        let frame = if self.partitions == 0 || self.leaders.len() < self.partitions as usize {
            self.wire.encode_for(to.node, &topic_metadata_request(&self.config.topic), 9)
        } else {
            let r = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            self.wire.encode_for(to.node, &r, 4)
        };
        cx.send(to, ClientMsg::Request(frame));
    }

    fn ready(&self) -> bool {
        self.partitions > 0 && self.producer_id >= 0 && self.leaders.len() == self.partitions as usize
    }

    /// Forget leadership (a leader error or a broken connection): metadata is fetched again.
    fn refresh(&mut self) {
        self.leaders.clear();
        self.boot += 1;
    }

    fn send_one(&mut self, cx: &mut Cx<ClientMsg>, partition: i32) {
        let Some(leader) = self.leaders.get(&partition).copied() else { return self.setup(cx) };
        let Some(f) = self.in_flight.get_mut(&partition) else { return };
        f.sent = true;
        f.ever_sent = true;
        f.node = leader;
        let value = f.value;
        let bytes = record_bytes(value);
        let key = partition.to_string().into_bytes();
        let batch = build_batch(&[(Some(&key), Some(&bytes), cx.wall_clock_ms())], (self.producer_id, self.producer_epoch, f.sequence));
        let r = ProduceRequest::default().with_acks(-1).with_timeout_ms(5_000).with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(self.topic())
            .with_partition_data(vec![produce_request::PartitionProduceData::default().with_index(partition).with_records(Some(batch))])]);
        let frame = self.wire.encode_for(leader, &r, 9);
        if let Some(f) = self.in_flight.get_mut(&partition) {
            f.requests.push(self.wire.last_sent);
        }
        cx.send(Addr { node: leader, actor: 0 }, ClientMsg::Request(frame));
    }

    fn on_send_timer(&mut self, cx: &mut Cx<ClientMsg>) {
        let now = cx.now_ms();
        if !self.stopped(now) {
            cx.set_timer(SEND_TIMER, self.config.send_interval_ms);
        }
        if !self.ready() {
            return self.setup(cx);
        }
        if self.stopped(now) {
            return;
        }
        let free: Vec<i32> = (0..self.partitions).filter(|p| !self.in_flight.contains_key(p)).collect();
        if free.is_empty() {
            return;
        }
        let partition = free[cx.rng().below(free.len() as u64) as usize];
        self.sent_values += 1;
        let value = self.config.process * 1_000_000_000 + self.sent_values;
        let sequence = *self.next_sequence.entry(partition).or_insert(0);
        self.events.push(ClientEvent::InvokeSend { time_ms: now, process: self.config.process, key: partition as u64, value });
        self.in_flight.insert(partition, InFlight { value, sequence, sent: false, ever_sent: false, node: -1, requests: Vec::new() });
        self.send_one(cx, partition);
    }

    /// Resend every batch that lost its request (after a disconnect or a retriable error).
    fn retry_all(&mut self, cx: &mut Cx<ClientMsg>) {
        if !self.ready() {
            return self.setup(cx);
        }
        let unsent: Vec<i32> = self.in_flight.iter().filter(|(_, f)| !f.sent).map(|(p, _)| *p).collect();
        for p in unsent {
            self.send_one(cx, p);
        }
    }

    /// Past the stop time with a send acknowledged since.
    fn stopped(&self, now_ms: u64) -> bool {
        now_ms >= self.config.stop_at_ms && self.acked_after_stop
    }

    fn complete(&mut self, cx: &mut Cx<ClientMsg>, partition: i32, outcome: Result<i64, String>) {
        let Some(f) = self.in_flight.remove(&partition) else { return };
        if outcome.is_ok() && cx.now_ms() >= self.config.stop_at_ms {
            self.acked_after_stop = true;
        }
        if outcome.is_ok() {
            self.next_sequence.insert(partition, f.sequence.wrapping_add(1));
        }
        self.events.push(ClientEvent::CompleteSend { time_ms: cx.now_ms(), process: self.config.process, key: partition as u64, value: f.value, outcome });
    }

    fn on_response(&mut self, cx: &mut Cx<ClientMsg>, frame: bytes::Bytes) {
        let (key, version, body) = match self.wire.match_response(frame) {
            Ok(x) => x,
            Err(e) => return self.violation(cx, format!("unreadable response: {e}")),
        };
        match ApiKey::try_from(key) {
            Ok(ApiKey::Metadata) => {
                self.setup_pending = false;
                match decode::<MetadataResponse>(body, version) {
                    Ok(m) => {
                        if let Some((count, leaders)) = leaders(&m) {
                            self.partitions = count;
                            self.leaders = leaders;
                        }
                        if ready_topic(&m).is_none() {
                            self.boot += 1;
                        }
                    }
                    Err(e) => self.violation(cx, format!("bad metadata response: {e}")),
                }
                cx.set_timer(RETRY_TIMER, 50);
            }
            Ok(ApiKey::InitProducerId) => {
                self.setup_pending = false;
                match decode::<InitProducerIdResponse>(body, version) {
                    Ok(r) if r.error_code == 0 => {
                        (self.producer_id, self.producer_epoch) = (r.producer_id.0, r.producer_epoch);
                        self.next_sequence.clear();
                        // A new producer id restarts sequences. A batch already sent under the old
                        // id may be in the log: its outcome is unknown, and sending it again under
                        // the new id could write it twice. Batches never sent go out as new.
                        let unknown: Vec<i32> = self.in_flight.iter().filter(|(_, f)| f.ever_sent).map(|(p, _)| *p).collect();
                        for p in unknown {
                            self.complete(cx, p, Err("unknown: the producer id was reset".into()));
                        }
                        for (p, f) in self.in_flight.iter_mut() {
                            f.sequence = 0;
                            f.requests.clear();
                            self.next_sequence.insert(*p, 0);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => self.violation(cx, format!("bad InitProducerId response: {e}")),
                }
                cx.set_timer(RETRY_TIMER, 50);
            }
            Ok(ApiKey::Produce) => {
                let r = match decode::<ProduceResponse>(body, version) {
                    Ok(r) => r,
                    Err(e) => return self.violation(cx, format!("bad produce response: {e}")),
                };
                let request = self.wire.last_matched;
                for t in r.responses {
                    for p in t.partition_responses {
                        if !self.in_flight.get(&p.index).is_some_and(|f| f.requests.contains(&request)) {
                            // A late answer to a request for a batch already completed (say, as
                            // unknown when the producer id was reset): not this batch's outcome.
                            continue;
                        }
                        match p.error_code {
                            error::NONE => self.complete(cx, p.index, Ok(p.base_offset)),
                            error::OUT_OF_ORDER_SEQUENCE_NUMBER | error::INVALID_PRODUCER_EPOCH | error::UNKNOWN_PRODUCER_ID => {
                                // The broker lost track of this producer (or we of it): the outcome of
                                // the batch is unknown; start over with a new producer id.
                                self.complete(cx, p.index, Err(format!("error {}", p.error_code)));
                                self.producer_id = -1;
                            }
                            error::CORRUPT_MESSAGE | error::INVALID_RECORD | error::MESSAGE_TOO_LARGE => {
                                self.violation(cx, format!("broker refused a valid batch with error {}", p.error_code));
                                self.complete(cx, p.index, Err(format!("error {}", p.error_code)));
                            }
                            code => {
                                if let Some(f) = self.in_flight.get_mut(&p.index) {
                                    f.sent = false;
                                }
                                if matches!(
                                    code,
                                    error::NOT_LEADER_OR_FOLLOWER
                                        | error::LEADER_NOT_AVAILABLE
                                        | error::UNKNOWN_TOPIC_OR_PARTITION
                                        | error::FENCED_LEADER_EPOCH
                                        | error::UNKNOWN_LEADER_EPOCH
                                        | error::REQUEST_TIMED_OUT
                                ) {
                                    self.refresh();
                                }
                                cx.set_timer(RETRY_TIMER, 100);
                            }
                        }
                    }
                }
            }
            _ => self.violation(cx, format!("unexpected response to api {key}")),
        }
    }

    fn violation(&mut self, cx: &mut Cx<ClientMsg>, what: String) {
        self.events.push(ClientEvent::Violation { time_ms: cx.now_ms(), process: self.config.process, what });
    }
}

impl Actor for Producer {
    type Msg = ClientMsg;

    fn on_start(&mut self, cx: &mut Cx<ClientMsg>) {
        cx.set_timer(SEND_TIMER, self.config.send_interval_ms);
        self.setup(cx);
    }

    fn on_message(&mut self, cx: &mut Cx<ClientMsg>, from: Addr, msg: ClientMsg) {
        match msg {
            ClientMsg::Response(frame) => self.on_response(cx, frame),
            ClientMsg::Disconnected => {
                self.wire.disconnected_from(from.node);
                if self.setup_node == from.node {
                    self.setup_pending = false;
                }
                for f in self.in_flight.values_mut().filter(|f| f.node == from.node) {
                    f.sent = false;
                }
                self.refresh();
                cx.set_timer(RETRY_TIMER, 100);
            }
            ClientMsg::Request(_) => {}
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<ClientMsg>, timer: TimerId) {
        match timer {
            SEND_TIMER => self.on_send_timer(cx),
            _ => self.retry_all(cx),
        }
    }

    fn on_io(&mut self, _cx: &mut Cx<ClientMsg>, _done: IoDone) {}
}
