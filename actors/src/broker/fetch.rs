//! Fetch: long polling over the partition logs.
//!
//! A fetch is evaluated by issuing one log read per partition that has data below its high
//! watermark; when the reads complete, the response is sent if it holds at least `min_bytes`, if
//! any partition has an error, or if `max_wait_ms` has passed. Otherwise the fetch parks until a
//! high watermark it watches moves or its deadline timer fires, and is evaluated again.
//!
//! Fetch sessions (KIP-227, Fetch v7+): a request with epoch 0 creates a session holding its
//! partitions and gets a session id; later requests with that id and the next epoch carry only
//! the partitions whose fetch position changed (plus `forgotten_topics_data`), and the response
//! carries only partitions with records, an error, or a changed high watermark / log start
//! offset. Epoch -1 closes a session (a full, sessionless fetch). An unknown id answers
//! FETCH_SESSION_ID_NOT_FOUND and a wrong epoch INVALID_FETCH_SESSION_EPOCH, at top level, as
//! Kafka does; the client then starts a new session. At most [`MAX_FETCH_SESSIONS`] sessions are
//! kept; the least recently used is evicted.

use super::{codec, error, Broker, BrokerMsg};
use crate::broker::codec::Request;
use crate::core::{ConnId, Cx, TimerId};
use crate::log::ReadStart;
use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Sessions kept at most (Kafka's `max.incremental.fetch.session.cache.slots` default).
pub const MAX_FETCH_SESSIONS: usize = 1000;

/// One partition of a fetch session, with what the client was last told about it.
#[derive(Clone, Debug)]
struct SessionPartition {
    topic_id: Uuid,
    fetch_offset: i64,
    current_leader_epoch: i32,
    max_bytes: u64,
    sent_high_watermark: i64,
    sent_log_start_offset: i64,
}

/// A KIP-227 fetch session.
#[derive(Debug)]
pub(crate) struct FetchSession {
    /// The epoch the next incremental request must carry.
    next_epoch: i32,
    /// Partitions by (topic name, partition), in the order responses list them.
    partitions: BTreeMap<(String, i32), SessionPartition>,
    last_used_ms: u64,
}

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
    /// The session this fetch belongs to and whether its response is incremental.
    session: Option<(i32, bool)>,
    /// A top-level error (session errors); no partitions are fetched.
    top_error: i16,
}

impl Broker {
    /// Client fetches still waiting (for the simulator's `RUNNEL_SIM_DEBUG`).
    pub fn debug_fetches(&self) -> Vec<String> {
        self.fetches
            .iter()
            .map(|(id, f)| {
                format!(
                    "fetch {id} conn {} seq {} outstanding {} parked {} expired {} deadline {}",
                    f.conn.0, f.seq, f.outstanding, f.parked, f.expired, f.deadline_ms
                )
            })
            .collect()
    }

    pub(crate) fn on_fetch(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: FetchRequest) {
        let by_id = request.version >= 13;
        let now = cx.now_ms();
        // The partitions named in this request: ((topic name or None if unknown), id, partition,
        // offset, leader epoch, max bytes).
        let mut named = Vec::new();
        for t in &r.topics {
            let name = if by_id { self.topic_names.get(&t.topic_id).cloned() } else { Some(t.topic.0.to_string()) };
            for p in &t.partitions {
                named.push((name.clone(), t.topic_id, p.partition, p.fetch_offset, p.current_leader_epoch, p.partition_max_bytes.max(0) as u64));
            }
        }
        let missing = if by_id { error::UNKNOWN_TOPIC_ID } else { error::UNKNOWN_TOPIC_OR_PARTITION };
        let mut top_error = error::NONE;
        let mut session = None;
        let mut wanted: Vec<(Option<String>, Uuid, i32, i64, i32, u64)> = named.clone();
        if request.version >= 7 {
            match (r.session_id, r.session_epoch) {
                (0, -1) => {}
                (id, -1) => {
                    self.fetch_sessions.remove(&id);
                }
                (id, 0) => {
                    if id != 0 {
                        self.fetch_sessions.remove(&id);
                    }
                    let mut partitions = BTreeMap::new();
                    for (name, topic_id, partition, offset, epoch, max_bytes) in &named {
                        if let Some(n) = name {
                            partitions.insert((n.clone(), *partition), SessionPartition::new(*topic_id, *offset, *epoch, *max_bytes));
                        }
                    }
                    let new_id = self.new_fetch_session(cx, FetchSession { next_epoch: 1, partitions, last_used_ms: now });
                    session = Some((new_id, false));
                }
                (id, epoch) => match self.fetch_sessions.get_mut(&id) {
                    None => top_error = error::FETCH_SESSION_ID_NOT_FOUND,
                    Some(s) if s.next_epoch != epoch => top_error = error::INVALID_FETCH_SESSION_EPOCH,
                    Some(s) => {
                        s.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
                        s.last_used_ms = now;
                        for (name, topic_id, partition, offset, epoch, max_bytes) in &named {
                            let Some(n) = name else { continue };
                            let entry =
                                s.partitions.entry((n.clone(), *partition)).or_insert_with(|| SessionPartition::new(*topic_id, *offset, *epoch, *max_bytes));
                            (entry.fetch_offset, entry.current_leader_epoch, entry.max_bytes) = (*offset, *epoch, *max_bytes);
                        }
                        for t in &r.forgotten_topics_data {
                            let name = if by_id { self.topic_names.get(&t.topic_id).cloned() } else { Some(t.topic.0.to_string()) };
                            if let Some(n) = name {
                                for p in &t.partitions {
                                    s.partitions.remove(&(n.clone(), *p));
                                }
                            }
                        }
                        wanted = s
                            .partitions
                            .iter()
                            .map(|((n, p), e)| (Some(n.clone()), e.topic_id, *p, e.fetch_offset, e.current_leader_epoch, e.max_bytes))
                            .collect();
                        // Unknown topics named in this request still get their error back.
                        wanted.extend(named.iter().filter(|x| x.0.is_none()).cloned());
                        session = Some((id, true));
                    }
                },
            }
        }
        let mut topics: Vec<(TopicName, Uuid)> = Vec::new();
        let mut parts = Vec::new();
        if top_error == error::NONE {
            for (name, topic_id, partition, fetch_offset, current_leader_epoch, max_bytes) in wanted {
                let display = TopicName(kafka_protocol::protocol::StrBytes::from_string(name.clone().unwrap_or_default()));
                let topic_slot = match topics.iter().position(|(n, id)| *id == topic_id && (by_id || *n == display)) {
                    Some(i) => i,
                    None => {
                        topics.push((if by_id { TopicName::default() } else { display }, topic_id));
                        topics.len() - 1
                    }
                };
                parts.push(FetchPart {
                    error: if name.is_some() { error::NONE } else { missing },
                    topic: name,
                    topic_slot,
                    partition,
                    fetch_offset,
                    current_leader_epoch,
                    max_bytes,
                    records: None,
                });
            }
        }
        let id = self.fresh_id();
        let deadline_ms = now + r.max_wait_ms.max(0) as u64;
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
            session,
            top_error,
        };
        self.fetches.insert(id, state);
        self.evaluate_fetch(cx, id);
    }

    /// Store a new session under a fresh non-zero id, evicting the least recently used one when
    /// the cache is full.
    fn new_fetch_session(&mut self, cx: &mut Cx<BrokerMsg>, session: FetchSession) -> i32 {
        if self.fetch_sessions.len() >= MAX_FETCH_SESSIONS {
            if let Some(oldest) = self.fetch_sessions.iter().min_by_key(|(_, s)| s.last_used_ms).map(|(id, _)| *id) {
                self.fetch_sessions.remove(&oldest);
            }
        }
        loop {
            let id = (cx.rng().next_u64() & 0x7fff_ffff) as i32;
            if id != 0 && !self.fetch_sessions.contains_key(&id) {
                self.fetch_sessions.insert(id, session);
                return id;
            }
        }
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
            let (log_start, log_end, mut hw) = (p.log.log_start_offset(), p.log.log_end_offset(), p.high_watermark);
            if crate::planted!("fetch-above-high-watermark") {
                hw = log_end;
            }
            if part.fetch_offset < log_start || part.fetch_offset > log_end {
                part.error = error::OFFSET_OUT_OF_RANGE;
                continue;
            }
            if part.fetch_offset >= hw {
                continue;
            }
            let read_id = self.next_id + 1;
            self.next_id += 1;
            // buggify: a tiny partition budget (KIP-74 still returns one whole batch).
            let budget = if crate::buggify!(cx) { 1 } else { part.max_bytes.max(1) };
            let (offset, max_bytes) = (part.fetch_offset, budget);
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

    /// A log read finished; `Err` if its bytes kept coming back damaged.
    pub(crate) fn on_read_done(&mut self, cx: &mut Cx<BrokerMsg>, read_id: u64, records: Result<Bytes, String>) {
        let Some((id, slot)) = self.reads.remove(&read_id) else { return };
        let Some(state) = self.fetches.get_mut(&id) else { return };
        let part = &mut state.parts[slot];
        match records {
            Ok(records) => part.records = (!records.is_empty()).then_some(records),
            Err(_) => part.error = error::KAFKA_STORAGE_ERROR,
        }
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
        let has_error = state.top_error != error::NONE || state.parts.iter().any(|p| p.error != error::NONE);
        // buggify: answer early, as a broker under memory pressure may.
        let early = crate::buggify!(cx);
        let Some(state) = self.fetches.get_mut(&id) else { return };
        if bytes >= state.min_bytes.max(1) || has_error || state.expired || now >= state.deadline_ms || state.parts.is_empty() || early {
            let state = self.fetches.remove(&id).expect("present");
            self.watchers.unwatch(id);
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
        self.watchers.watch(id, watched);
        cx.set_timer(TimerId(id), delay);
    }

    /// A high watermark moved: re-evaluate parked fetches watching it.
    pub(crate) fn wake_fetches(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64) {
        for id in self.watchers.take(uid) {
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
        let (session_id, incremental) = state.session.unwrap_or((0, false));
        let mut response = FetchResponse::default().with_session_id(session_id).with_error_code(state.top_error);
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
            let now_ready = part.topic.as_ref().map(|t| self.ready_partition(t, part.partition).map(|_| ()));
            let mut part = part;
            if let Some(Err(code)) = now_ready {
                // Leadership moved while the read was in flight: what was read may be truncated.
                if part.error == error::NONE {
                    part.error = code;
                    data.error_code = code;
                }
                part.records = None;
            }
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
            if let Some(session) = self.fetch_sessions.get_mut(&session_id) {
                if let Some(entry) = part.topic.as_ref().and_then(|t| session.partitions.get_mut(&(t.clone(), part.partition))) {
                    let changed = entry.sent_high_watermark != data.high_watermark || entry.sent_log_start_offset != data.log_start_offset;
                    let has_records = data.records.as_ref().is_some_and(|r| !r.is_empty());
                    if incremental && !changed && !has_records && data.error_code == error::NONE {
                        continue;
                    }
                    (entry.sent_high_watermark, entry.sent_log_start_offset) = (data.high_watermark, data.log_start_offset);
                }
            }
            response.responses[part.topic_slot].partitions.push(data);
        }
        if incremental {
            response.responses.retain(|t| !t.partitions.is_empty());
        }
        let frame = codec::respond(&state.request, &response);
        self.send(cx, state.conn, state.seq, frame);
    }
}

impl SessionPartition {
    fn new(topic_id: Uuid, fetch_offset: i64, current_leader_epoch: i32, max_bytes: u64) -> Self {
        SessionPartition { topic_id, fetch_offset, current_leader_epoch, max_bytes, sent_high_watermark: -2, sent_log_start_offset: -2 }
    }
}
