//! Client actors: the producer and consumer the simulator's workload runs. They speak the Kafka
//! protocol as bytes — the same frames a real client sends — so the broker's codec is exercised
//! under faults too, and they record what they did as history events for the checker.
//!
//! Connection model: a client sends `ClientMsg::Request(frame)` to the broker's address; the
//! driver carries it on the client's connection (opening one if needed) and delivers responses
//! in order as `ClientMsg::Response`. If the connection breaks, the client gets
//! `ClientMsg::Disconnected`, every request in flight is lost, and the next request opens a new
//! connection.

pub mod consumer;
pub mod group_consumer;
pub mod producer;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    fetch_request, metadata_request, BrokerId, FetchRequest, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use std::collections::BTreeMap;

/// Messages to and from a client actor.
#[derive(Clone, Debug)]
pub enum ClientMsg {
    /// A request frame for the broker (sent by the client, carried by the driver).
    Request(Bytes),
    /// A response frame from the broker.
    Response(Bytes),
    /// The connection broke; requests in flight are lost.
    Disconnected,
}

/// What a client observed, in the shape of a Jepsen history (see runnel-checker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A send of `value` to `key` (a partition) was invoked.
    InvokeSend {
        /// Virtual ms.
        time_ms: u64,
        /// Process id.
        process: u64,
        /// Key (partition index).
        key: u64,
        /// Unique value.
        value: u64,
    },
    /// A send completed: `Ok(offset)` acknowledged, `Err(reason)` unknown outcome (info).
    CompleteSend {
        /// Virtual ms.
        time_ms: u64,
        /// Process id.
        process: u64,
        /// Key.
        key: u64,
        /// Value.
        value: u64,
        /// Offset if acknowledged, else why the outcome is unknown.
        outcome: Result<i64, String>,
    },
    /// Partitions assigned (keys), reading from the beginning.
    Assign {
        /// Virtual ms.
        time_ms: u64,
        /// Process id.
        process: u64,
        /// Keys.
        keys: Vec<u64>,
    },
    /// A poll was invoked.
    InvokePoll {
        /// Virtual ms.
        time_ms: u64,
        /// Process id.
        process: u64,
    },
    /// A poll completed: reads per key as `(offset, value)`; `ok` false if it failed.
    CompletePoll {
        /// Virtual ms.
        time_ms: u64,
        /// Process id.
        process: u64,
        /// Reads per key.
        reads: BTreeMap<u64, Vec<(i64, u64)>>,
        /// Whether the poll succeeded.
        ok: bool,
    },
    /// A group member received its assignment for a generation (SyncGroup answered).
    GroupAssign {
        /// Virtual ms.
        time_ms: u64,
        /// Process id.
        process: u64,
        /// Group.
        group: String,
        /// Generation.
        generation: i32,
        /// Member id.
        member: String,
        /// Assigned keys (partitions).
        keys: Vec<u64>,
    },
    /// The coordinator acknowledged a commit of `offset` for `key`.
    GroupCommit {
        /// Virtual ms.
        time_ms: u64,
        /// Process id.
        process: u64,
        /// Group.
        group: String,
        /// Generation the commit was made in.
        generation: i32,
        /// Key (partition).
        key: u64,
        /// Committed offset (the next to read).
        offset: i64,
    },
    /// Something the client can tell is wrong on its own (records above the high watermark,
    /// a batch failing its CRC, an impossible error).
    Violation {
        /// Virtual ms.
        time_ms: u64,
        /// Process id.
        process: u64,
        /// What.
        what: String,
    },
}

/// Correlation ids and request encoding for one client.
#[derive(Debug, Default)]
pub struct Wire {
    next_correlation_id: i32,
    /// Outstanding requests: correlation id -> (api key, version, node it went to).
    pub in_flight: BTreeMap<i32, (i16, i16, i32)>,
    /// The correlation id of the request encoded last.
    pub last_sent: i32,
    /// The correlation id of the response matched last.
    pub last_matched: i32,
}

impl Wire {
    /// Encode `request` at `version`, remembering it as in flight (to an unnamed node).
    pub fn encode<R: Request>(&mut self, request: &R, version: i16) -> Bytes {
        self.encode_for(-1, request, version)
    }

    /// Encode `request` at `version` for `node`, remembering it as in flight.
    pub fn encode_for<R: Request>(&mut self, node: i32, request: &R, version: i16) -> Bytes {
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1).max(1);
        let correlation_id = self.next_correlation_id;
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("runnel-sim")))
            .encode(&mut buf, R::header_version(version))
            .expect("request header encodes");
        request.encode(&mut buf, version).expect("request encodes");
        self.in_flight.insert(correlation_id, (R::KEY, version, node));
        self.last_sent = correlation_id;
        buf.freeze()
    }

    /// Split a response frame into (api key, version, body) by its correlation id.
    pub fn match_response(&mut self, mut frame: Bytes) -> Result<(i16, i16, Bytes), String> {
        if frame.len() < 4 {
            return Err(format!("response frame of {} bytes", frame.len()));
        }
        let correlation_id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let (key, version, _) = self.in_flight.remove(&correlation_id).ok_or_else(|| format!("response to unknown correlation id {correlation_id}"))?;
        self.last_matched = correlation_id;
        let api = kafka_protocol::messages::ApiKey::try_from(key).map_err(|_| "bad api key".to_string())?;
        ResponseHeader::decode(&mut frame, api.response_header_version(version)).map_err(|e| e.to_string())?;
        Ok((key, version, frame))
    }

    /// Forget everything in flight (the connection broke).
    pub fn disconnected(&mut self) {
        self.in_flight.clear();
    }

    /// Forget what was in flight to `node` (its connection broke).
    pub fn disconnected_from(&mut self, node: i32) {
        self.in_flight.retain(|_, (_, _, n)| *n != node);
    }

    /// Whether a request with `key` is in flight to `node`.
    pub fn pending_to(&self, node: i32, key: i16) -> bool {
        self.in_flight.values().any(|(k, _, n)| *n == node && *k == key)
    }
}

/// Partition leaders from a Metadata response for one topic: (partition count, leader by
/// partition for those with one).
pub fn leaders(m: &MetadataResponse) -> Option<(i32, BTreeMap<i32, i32>)> {
    let t = m.topics.first().filter(|t| t.error_code == 0 && !t.partitions.is_empty())?;
    let leaders = t.partitions.iter().filter(|p| p.error_code == 0 && p.leader_id.0 >= 0).map(|p| (p.partition_index, p.leader_id.0)).collect();
    Some((t.partitions.len() as i32, leaders))
}

/// A Metadata request for `topic` that lets the broker auto-create it.
pub fn topic_metadata_request(topic: &str) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]))
        .with_allow_auto_topic_creation(true)
}

/// The requested topic, if it exists and every partition has a leader.
pub fn ready_topic(m: &MetadataResponse) -> Option<&MetadataResponseTopic> {
    m.topics.first().filter(|t| t.error_code == 0 && !t.partitions.is_empty() && t.partitions.iter().all(|p| p.error_code == 0))
}

/// A Fetch (v12 fields) of `partitions` (`(partition, offset)`) of `topic`, each with the leader
/// epoch the client knows (KIP-320), as a consumer sends it.
pub fn fetch_request(
    topic: &str,
    topic_id: uuid::Uuid,
    partitions: &[(i32, i64)],
    epochs: &BTreeMap<i32, i32>,
    max_wait_ms: i32,
    min_bytes: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_topic_id(topic_id)
            .with_partitions(
                partitions
                    .iter()
                    .map(|(p, o)| {
                        fetch_request::FetchPartition::default()
                            .with_partition(*p)
                            .with_fetch_offset(*o)
                            .with_partition_max_bytes(64 << 10)
                            .with_current_leader_epoch(epochs.get(p).copied().unwrap_or(-1))
                    })
                    .collect(),
            )])
}

/// Decode a response body.
pub fn decode<T: Decodable>(mut body: Bytes, version: i16) -> Result<T, String> {
    T::decode(&mut body, version).map_err(|e| e.to_string())
}

/// The record key written for partition `key`, and the value bytes for `value`.
pub fn record_bytes(value: u64) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// Parse a value written by [`record_bytes`].
pub fn parse_value(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}
