//! Fetch: long polling over the partition logs.
//!
//! A fetch is evaluated by issuing one log read per partition that has data below its high
//! watermark; when the reads complete, the response is sent if it holds at least `min_bytes`, if
//! any partition has an error, or if `max_wait_ms` has passed. Otherwise the fetch parks until a
//! high watermark it watches moves or its deadline timer fires, and is evaluated again.
//!
//! Fetch sessions (KIP-227): the broker declines to create sessions (it answers session id 0),
//! which the protocol allows and every client handles by sending full fetch requests.

use super::{codec, error, Broker, BrokerMsg};
use crate::broker::codec::Request;
use crate::core::{ConnId, Cx, TimerId};
use crate::log::ReadStart;
use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use uuid::Uuid;

pub(crate) struct FetchPart {
    topic: Option<String>,
    topic_slot: usize,
    partition: i32,
    fetch_offset: i64,
    current_leader_epoch: i32,
    max_bytes: u64,
    error: i16,
    records: Option<Bytes>,
}

pub(crate) struct FetchState {
    pub(crate) conn: ConnId,
    seq: u64,
    request: Box<Request>,
    topics: Vec<(TopicName, Uuid)>,
    parts: Vec<FetchPart>,
    min_bytes: u64,
    max_bytes: u64,
    deadline_ms: u64,
    pub(crate) outstanding: usize,
    parked: bool,
    expired: bool,
}

impl Broker {
    pub(crate) fn on_fetch(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: FetchRequest) {
        let by_id = request.version >= 13;
        let mut topics = Vec::new();
        let mut parts = Vec::new();
        for (slot, t) in r.topics.into_iter().enumerate() {
            let name = if by_id { self.topic_names.get(&t.topic_id).cloned() } else { Some(t.topic.0.to_string()) };
            let missing = if by_id { error::UNKNOWN_TOPIC_ID } else { error::UNKNOWN_TOPIC_OR_PARTITION };
            for p in t.partitions {
                parts.push(FetchPart {
                    topic: name.clone(),
                    topic_slot: slot,
                    partition: p.partition,
                    fetch_offset: p.fetch_offset,
                    current_leader_epoch: p.current_leader_epoch,
                    max_bytes: p.partition_max_bytes.max(0) as u64,
                    error: if name.is_some() { error::NONE } else { missing },
                    records: None,
                });
            }
            topics.push((t.topic, t.topic_id));
        }
        let id = self.fresh_id();
        let deadline_ms = cx.now_ms() + r.max_wait_ms.max(0) as u64;
        let state = FetchState {
            conn,
            seq,
            request,
            topics,
            parts,
            min_bytes: r.min_bytes.max(0) as u64,
            max_bytes: if r.max_bytes <= 0 { i32::MAX as u64 } else { r.max_bytes as u64 },
            deadline_ms,
            outstanding: 0,
            parked: false,
            expired: r.max_wait_ms <= 0,
        };
        self.fetches.insert(id, state);
        self.evaluate_fetch(cx, id);
    }

    /// Issue reads for every partition of fetch `id` that has data to give.
    fn evaluate_fetch(&mut self, cx: &mut Cx<BrokerMsg>, id: u64) {
        let Some(mut state) = self.fetches.remove(&id) else { return };
        state.parked = false;
        for slot in 0..state.parts.len() {
            let part = &mut state.parts[slot];
            part.records = None;
            if part.error != error::NONE && part.error != error::OFFSET_OUT_OF_RANGE {
                continue;
            }
            part.error = error::NONE;
            let Some(topic) = part.topic.clone() else { continue };
            let p = match self.ready_partition(&topic, part.partition) {
                Ok(p) => p,
                Err(e) => {
                    part.error = e;
                    continue;
                }
            };
            if part.current_leader_epoch >= 0 && part.current_leader_epoch != p.leader_epoch {
                part.error = if part.current_leader_epoch < p.leader_epoch { error::FENCED_LEADER_EPOCH } else { error::UNKNOWN_LEADER_EPOCH };
                continue;
            }
            let (log_start, log_end, hw) = (p.log.log_start_offset(), p.log.log_end_offset(), p.high_watermark);
            if part.fetch_offset < log_start || part.fetch_offset > log_end {
                part.error = error::OFFSET_OUT_OF_RANGE;
                continue;
            }
            if part.fetch_offset >= hw {
                continue;
            }
            let read_id = self.next_id + 1;
            self.next_id += 1;
            let (offset, max_bytes) = (part.fetch_offset, part.max_bytes.max(1));
            let start = self.with_partition(cx, &topic, part.partition as usize, |p, io| p.log.read(io, read_id, offset, max_bytes, hw));
            match start {
                Some(ReadStart::Pending) => {
                    self.reads.insert(read_id, (id, slot));
                    state.outstanding += 1;
                }
                Some(ReadStart::OutOfRange) => part.error = error::OFFSET_OUT_OF_RANGE,
                Some(ReadStart::Empty) | None => {}
            }
        }
        let ready = state.outstanding == 0;
        self.fetches.insert(id, state);
        if ready {
            self.finish_fetch(cx, id);
        }
    }

    pub(crate) fn on_read_done(&mut self, cx: &mut Cx<BrokerMsg>, read_id: u64, records: Bytes) {
        let Some((id, slot)) = self.reads.remove(&read_id) else { return };
        let Some(state) = self.fetches.get_mut(&id) else { return };
        state.parts[slot].records = (!records.is_empty()).then_some(records);
        state.outstanding -= 1;
        if state.outstanding == 0 {
            self.finish_fetch(cx, id);
        }
    }

    /// All reads are in: answer, or park until more data or the deadline.
    fn finish_fetch(&mut self, cx: &mut Cx<BrokerMsg>, id: u64) {
        let now = cx.now_ms();
        let Some(state) = self.fetches.get_mut(&id) else { return };
        let bytes: u64 = state.parts.iter().map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64)).sum();
        let has_error = state.parts.iter().any(|p| p.error != error::NONE);
        if bytes >= state.min_bytes.max(1) || has_error || state.expired || now >= state.deadline_ms || state.parts.is_empty() {
            let state = self.fetches.remove(&id).expect("present");
            cx.cancel_timer(TimerId(id));
            self.respond_fetch(cx, state);
            return;
        }
        state.parked = true;
        let watched: Vec<u64> = state
            .parts
            .iter()
            .filter_map(|p| p.topic.as_ref().and_then(|t| self.topics.get(t)).and_then(|t| t.partitions.get(p.partition as usize)).map(|q| q.uid))
            .collect();
        let delay = state.deadline_ms.saturating_sub(now);
        for uid in watched {
            self.watchers.entry(uid).or_default().insert(id);
        }
        cx.set_timer(TimerId(id), delay);
    }

    /// A high watermark moved: re-evaluate parked fetches watching it.
    pub(crate) fn wake_fetches(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64) {
        let Some(ids) = self.watchers.remove(&uid) else { return };
        for id in ids {
            if self.fetches.get(&id).is_some_and(|f| f.parked) {
                self.evaluate_fetch(cx, id);
            }
        }
    }

    pub(crate) fn on_fetch_deadline(&mut self, cx: &mut Cx<BrokerMsg>, id: u64) {
        let Some(state) = self.fetches.get_mut(&id) else { return };
        state.expired = true;
        if state.parked {
            self.evaluate_fetch(cx, id);
        }
    }

    fn respond_fetch(&mut self, cx: &mut Cx<BrokerMsg>, state: FetchState) {
        let mut response = FetchResponse::default().with_session_id(0);
        for (name, topic_id) in &state.topics {
            response.responses.push(FetchableTopicResponse::default().with_topic(name.clone()).with_topic_id(*topic_id));
        }
        let mut budget = state.max_bytes;
        let mut any = false;
        for part in state.parts {
            let mut data = PartitionData::default()
                .with_partition_index(part.partition)
                .with_error_code(part.error)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1);
            if let Some(p) = part.topic.as_ref().and_then(|t| self.ready_partition(t, part.partition).ok()) {
                data.high_watermark = p.high_watermark;
                data.last_stable_offset = p.high_watermark;
                data.log_start_offset = p.log.log_start_offset();
                if state.request.version >= 12 {
                    data.current_leader.leader_id = self.config.node_id.into();
                    data.current_leader.leader_epoch = p.leader_epoch;
                }
            }
            if let Some(records) = part.records {
                // KIP-74: the first non-empty partition is returned whole even above max_bytes.
                if !any || (records.len() as u64) <= budget {
                    budget = budget.saturating_sub(records.len() as u64);
                    any = true;
                    data.records = Some(records);
                }
            }
            if data.records.is_none() {
                data.records = Some(Bytes::new());
            }
            response.responses[part.topic_slot].partitions.push(data);
        }
        let frame = codec::respond(&state.request, &response);
        self.send(cx, state.conn, state.seq, frame);
    }
}
