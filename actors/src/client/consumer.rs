//! The workload's consumer: assigns every partition of the topic from offset 0 and fetches in a
//! loop, recording each poll. It checks on its own what a client can see directly: no record at
//! or above the high watermark of the response that carried it, every batch passes its CRC,
//! and offsets only move forward.
//!
//! In a cluster, a position out of range sends it to the metadata again (a deposed leader may be
//! behind) and asks the leader for the partition's earliest offset (ListOffsets), as a client
//! with `auto.offset.reset=earliest` does: a position below it (records deleted by DeleteRecords
//! or retention) moves up to it; one above it stays.

use super::{decode, parse_value, ready_topic, topic_metadata_request, ClientEvent, ClientMsg, Wire};
use crate::broker::error;
use crate::core::{Actor, Addr, Cx, IoDone, TimerId};
use crate::log::batch;
use kafka_protocol::messages::*;
use kafka_protocol::records::RecordBatchDecoder;
use std::collections::{BTreeMap, BTreeSet};

const RETRY_TIMER: TimerId = TimerId(1);

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// History process id.
    pub process: u64,
    /// The nodes to ask for metadata, in turn.
    pub bootstrap: Vec<Addr>,
    /// Topic.
    pub topic: String,
    /// Fetch `max_wait_ms`.
    pub max_wait_ms: i32,
    /// Fetch `min_bytes`.
    pub min_bytes: i32,
}

/// See the module documentation.
pub struct Consumer {
    config: ConsumerConfig,
    wire: Wire,
    topic_id: uuid::Uuid,
    /// Next offset to read, per partition.
    positions: BTreeMap<i32, i64>,
    leaders: BTreeMap<i32, i32>,
    /// Leader epochs from metadata, sent with fetches (KIP-320) so a stale leader refuses.
    epochs: BTreeMap<i32, i32>,
    boot: usize,
    /// The node of the fetch in flight.
    polling_node: Option<i32>,
    next_leader: usize,
    polling: bool,
    setup_pending: bool,
    events: Vec<ClientEvent>,
    /// Every value read, per key (for liveness checks).
    pub seen: BTreeMap<u64, std::collections::BTreeSet<u64>>,
    /// Partitions whose position was out of range: their earliest offset is asked for.
    resets: BTreeSet<i32>,
    /// A ListOffsets is in flight.
    listing: bool,
    /// Positions moved up to a partition's earliest offset.
    pub reset_count: u64,
}

impl Consumer {
    /// A consumer with the given settings.
    pub fn new(config: ConsumerConfig) -> Self {
        Consumer {
            config,
            wire: Wire::default(),
            topic_id: uuid::Uuid::nil(),
            positions: BTreeMap::new(),
            leaders: BTreeMap::new(),
            epochs: BTreeMap::new(),
            boot: 0,
            polling_node: None,
            next_leader: 0,
            polling: false,
            setup_pending: false,
            events: Vec::new(),
            seen: BTreeMap::new(),
            resets: BTreeSet::new(),
            listing: false,
            reset_count: 0,
        }
    }

    /// Take the events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.events)
    }

    fn next(&mut self, cx: &mut Cx<ClientMsg>) {
        if self.positions.is_empty() || self.leaders.len() < self.positions.len() {
            if !self.setup_pending {
                self.setup_pending = true;
                let to = self.config.bootstrap[self.boot % self.config.bootstrap.len()];
                let frame = self.wire.encode_for(to.node, &topic_metadata_request(&self.config.topic), 12);
                cx.send(to, ClientMsg::Request(frame));
            }
            return;
        }
        if let Some(&first) = self.resets.first() {
            if let Some(node) = self.leaders.get(&first).copied().filter(|n| *n >= 0 && !self.listing) {
                // The earliest offsets of the partitions out of range that `first`'s leader leads.
                let mine: Vec<i32> = self.resets.iter().copied().filter(|p| self.leaders.get(p) == Some(&node)).collect();
                let request = list_earliest_request(&self.config.topic, &mine, &self.epochs);
                let frame = self.wire.encode_for(node, &request, 4);
                self.listing = true;
                cx.send(Addr { node, actor: 0 }, ClientMsg::Request(frame));
            }
        }
        if self.polling {
            return;
        }
        // One fetch at a time (a poll), to each leader in turn, for the partitions it leads.
        let mut nodes: Vec<i32> = self.leaders.values().copied().collect();
        nodes.sort();
        nodes.dedup();
        let node = nodes[self.next_leader % nodes.len()];
        self.next_leader += 1;
        // (Not those waiting for their earliest offset.)
        let mine: BTreeMap<i32, i64> =
            self.positions.iter().filter(|(p, _)| self.leaders.get(p) == Some(&node) && !self.resets.contains(p)).map(|(p, o)| (*p, *o)).collect();
        self.polling = true;
        self.polling_node = Some(node);
        self.events.push(ClientEvent::InvokePoll { time_ms: cx.now_ms(), process: self.config.process });
        let mine: Vec<(i32, i64)> = mine.into_iter().collect();
        let r = super::fetch_request(&self.config.topic, self.topic_id, &mine, &self.epochs, self.config.max_wait_ms, self.config.min_bytes);
        let frame = self.wire.encode_for(node, &r, 12);
        cx.send(Addr { node, actor: 0 }, ClientMsg::Request(frame));
    }

    fn violation(&mut self, cx: &mut Cx<ClientMsg>, what: String) {
        self.events.push(ClientEvent::Violation { time_ms: cx.now_ms(), process: self.config.process, what });
    }

    fn on_fetch(&mut self, cx: &mut Cx<ClientMsg>, r: FetchResponse) {
        let mut reads: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
        let mut retry = false;
        for t in r.responses {
            for p in t.partitions {
                match p.error_code {
                    error::NONE => {}
                    error::OFFSET_OUT_OF_RANGE if self.config.bootstrap.len() > 1 => {
                        // In a cluster a deposed leader that has not heard yet (a zombie) may be
                        // behind: ask for metadata again. Below the log start, the position moves
                        // up to it. Records that really vanished show up in the history check as
                        // lost or skipped (unless deleted).
                        self.leaders.clear();
                        self.boot += 1;
                        self.resets.insert(p.partition_index);
                        retry = true;
                        continue;
                    }
                    error::OFFSET_OUT_OF_RANGE => {
                        // Without retention nothing is ever deleted: a position past the log end
                        // means this consumer read records that are gone.
                        let position = self.positions.get(&p.partition_index).copied().unwrap_or(-1);
                        self.violation(cx, format!("offset {position} of partition {} is out of range: records read earlier vanished", p.partition_index));
                        retry = true;
                        continue;
                    }
                    _ => {
                        // Leadership moved (or the partition is not ready here): ask again.
                        self.leaders.clear();
                        self.boot += 1;
                        retry = true;
                        continue;
                    }
                }
                let Some(mut records) = p.records.filter(|r| !r.is_empty()) else { continue };
                for (header, range) in batch::iter_headers(&records) {
                    if let Err(e) = batch::check_one(&records[range]) {
                        self.violation(cx, format!("partition {} batch at offset {} is corrupt: {e}", p.partition_index, header.base_offset));
                    }
                }
                let end_of_batches = batch::end_of_batches(&records);
                let sets = match RecordBatchDecoder::decode_all(&mut records) {
                    Ok(s) => s,
                    Err(e) => {
                        self.violation(cx, format!("cannot decode records of partition {}: {e}", p.partition_index));
                        continue;
                    }
                };
                let position = self.positions.entry(p.partition_index).or_insert(0);
                for record in sets.into_iter().flat_map(|s| s.records) {
                    if record.offset < *position {
                        continue;
                    }
                    if record.offset >= p.high_watermark {
                        let what =
                            format!("partition {} returned offset {} at or above the high watermark {}", p.partition_index, record.offset, p.high_watermark);
                        self.events.push(ClientEvent::Violation { time_ms: cx.now_ms(), process: self.config.process, what });
                    }
                    let Some(value) = record.value.as_deref().and_then(parse_value) else {
                        let what = format!("unparseable value at offset {} of partition {}", record.offset, p.partition_index);
                        self.events.push(ClientEvent::Violation { time_ms: cx.now_ms(), process: self.config.process, what });
                        continue;
                    };
                    *position = record.offset + 1;
                    reads.entry(p.partition_index as u64).or_default().push((record.offset, value));
                    self.seen.entry(p.partition_index as u64).or_default().insert(value);
                }
                // Past batches the cleaner emptied or left with a gap at their end.
                *position = (*position).max(end_of_batches.unwrap_or(0));
            }
        }
        self.events.push(ClientEvent::CompletePoll { time_ms: cx.now_ms(), process: self.config.process, reads, ok: true });
        self.polling = false;
        if retry {
            cx.set_timer(RETRY_TIMER, 50);
        } else {
            self.next(cx);
        }
    }
}

impl Consumer {
    /// The earliest offsets asked for after an out-of-range fetch: a position below one moves up
    /// to it; a partition whose leader could not answer is asked again after a metadata refresh.
    fn on_earliest(&mut self, r: ListOffsetsResponse) {
        for p in r.topics.iter().flat_map(|t| &t.partitions) {
            if p.error_code != error::NONE {
                self.leaders.clear();
                self.boot += 1;
                continue;
            }
            self.resets.remove(&p.partition_index);
            let position = self.positions.entry(p.partition_index).or_insert(0);
            if p.offset > *position {
                *position = p.offset;
                self.reset_count += 1;
            }
        }
    }
}

/// A ListOffsets (v4) asking for the earliest offset of `partitions` of `topic`, with the
/// leader epochs the client knows.
fn list_earliest_request(topic: &str, partitions: &[i32], epochs: &BTreeMap<i32, i32>) -> ListOffsetsRequest {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::protocol::StrBytes;
    ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![ListOffsetsTopic::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partitions(
            partitions
                .iter()
                .map(|p| {
                    ListOffsetsPartition::default().with_partition_index(*p).with_current_leader_epoch(epochs.get(p).copied().unwrap_or(-1)).with_timestamp(-2)
                })
                .collect(),
        )])
}

impl Actor for Consumer {
    type Msg = ClientMsg;

    fn on_start(&mut self, cx: &mut Cx<ClientMsg>) {
        self.next(cx);
    }

    fn on_message(&mut self, cx: &mut Cx<ClientMsg>, from: Addr, msg: ClientMsg) {
        match msg {
            ClientMsg::Response(frame) => {
                let (key, version, body) = match self.wire.match_response(frame) {
                    Ok(x) => x,
                    Err(e) => return self.violation(cx, format!("unreadable response: {e}")),
                };
                match ApiKey::try_from(key) {
                    Ok(ApiKey::Metadata) => {
                        self.setup_pending = false;
                        match decode::<MetadataResponse>(body, version) {
                            Ok(m) => {
                                if let Some(t) = ready_topic(&m) {
                                    self.topic_id = t.topic_id;
                                    if self.positions.is_empty() {
                                        let keys: Vec<u64> = t.partitions.iter().map(|p| p.partition_index as u64).collect();
                                        for k in &keys {
                                            self.positions.insert(*k as i32, 0);
                                        }
                                        self.events.push(ClientEvent::Assign { time_ms: cx.now_ms(), process: self.config.process, keys });
                                    }
                                    self.leaders = t.partitions.iter().map(|p| (p.partition_index, p.leader_id.0)).collect();
                                    self.epochs = t.partitions.iter().map(|p| (p.partition_index, p.leader_epoch)).collect();
                                } else {
                                    self.boot += 1;
                                }
                            }
                            Err(e) => self.violation(cx, format!("bad metadata response: {e}")),
                        }
                        cx.set_timer(RETRY_TIMER, 50);
                    }
                    Ok(ApiKey::Fetch) => match decode::<FetchResponse>(body, version) {
                        Ok(r) => self.on_fetch(cx, r),
                        Err(e) => self.violation(cx, format!("bad fetch response: {e}")),
                    },
                    Ok(ApiKey::ListOffsets) => {
                        self.listing = false;
                        match decode::<ListOffsetsResponse>(body, version) {
                            Ok(r) => self.on_earliest(r),
                            Err(e) => self.violation(cx, format!("bad list offsets response: {e}")),
                        }
                        cx.set_timer(RETRY_TIMER, 50);
                    }
                    _ => self.violation(cx, format!("unexpected response to api {key}")),
                }
            }
            ClientMsg::Disconnected => {
                self.wire.disconnected_from(from.node);
                self.setup_pending = false;
                self.listing = self.listing && self.wire.in_flight.values().any(|(k, _, _)| *k == ApiKey::ListOffsets as i16);
                self.leaders.clear();
                self.boot += 1;
                if self.polling && self.polling_node == Some(from.node) {
                    self.polling = false;
                    self.events.push(ClientEvent::CompletePoll { time_ms: cx.now_ms(), process: self.config.process, reads: BTreeMap::new(), ok: false });
                }
                cx.set_timer(RETRY_TIMER, 100);
            }
            ClientMsg::Request(_) => {}
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<ClientMsg>, _timer: TimerId) {
        self.next(cx);
    }

    fn on_io(&mut self, _cx: &mut Cx<ClientMsg>, _done: IoDone) {}
}
