//! Messages between nodes: Raft between voters, broker ↔ controller RPCs, and replication
//! between brokers. They cross the simulated network as values and the real one as bincode
//! frames checked with crc32fast (`src/transport.rs`).
//!
//! Every request that expects an answer carries an id the asker chose; answers echo it. A lost
//! message is retried by the asker's timer, so each handler is idempotent or fenced by epochs.

use super::image::{MetadataRecord, PartitionInfo};
use super::raft::RaftMsg;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The actor index of the broker on every node.
pub const BROKER_ACTOR: u32 = 0;
/// The actor index of the controller on a voter.
pub const CONTROLLER_ACTOR: u32 = 1;

/// A message from another node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Raft between voters.
    Raft(RaftMsg),
    /// A broker asks the controller.
    ToController {
        /// Chosen by the broker, echoed in the answer.
        id: u64,
        /// The request.
        request: ControllerRequest,
    },
    /// The controller answers a broker.
    FromController {
        /// The request's id.
        id: u64,
        /// The answer.
        response: ControllerResponse,
    },
    /// A follower fetches from the partition leader.
    ReplicaFetch(ReplicaFetch),
    /// The leader answers a follower.
    ReplicaFetchResponse(ReplicaFetchResponse),
}

/// Administrative operations brokers forward to the controller.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminOp {
    /// CreateTopics (one topic).
    CreateTopic {
        /// Name.
        name: String,
        /// Partitions.
        partitions: i32,
        /// Replication factor.
        replication_factor: i16,
        /// Manual assignment (replicas per partition), if given.
        assignments: Vec<Vec<i32>>,
        /// Config overrides.
        configs: BTreeMap<String, String>,
        /// Check only.
        validate_only: bool,
    },
    /// DeleteTopics (one topic).
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// CreatePartitions (one topic).
    CreatePartitions {
        /// Topic.
        name: String,
        /// New total.
        count: i32,
        /// Check only.
        validate_only: bool,
    },
    /// Replace a topic's overrides.
    TopicConfig {
        /// Topic.
        name: String,
        /// New overrides.
        configs: BTreeMap<String, String>,
    },
    /// Replace the dynamic broker defaults.
    BrokerConfig {
        /// New defaults.
        configs: BTreeMap<String, String>,
    },
    /// ElectLeaders for one partition (preferred = true, unclean = false).
    ElectLeader {
        /// Topic.
        topic: String,
        /// Partition.
        index: i32,
        /// Preferred (true) or unclean (false) election.
        preferred: bool,
    },
    /// AlterPartitionReassignments for one partition (`None` cancels).
    Reassign {
        /// Topic.
        topic: String,
        /// Partition.
        index: i32,
        /// Target replicas.
        replicas: Option<Vec<i32>>,
    },
}

/// A broker's request to the controller.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// BrokerRegistration.
    Register {
        /// Broker.
        broker: i32,
        /// Differs on every process start (a restarted broker re-registers).
        incarnation: u64,
        /// Kafka listener host.
        host: String,
        /// Kafka listener port.
        port: i32,
        /// Node-to-node address.
        peer: String,
        /// `broker.rack`.
        rack: Option<String>,
    },
    /// BrokerHeartbeat.
    Heartbeat {
        /// Broker.
        broker: i32,
        /// Its epoch.
        epoch: i64,
        /// Metadata applied so far.
        metadata_offset: u64,
        /// Asks for controlled shutdown.
        shutdown: bool,
    },
    /// Fetch committed metadata records after `from` (long poll).
    FetchMetadata {
        /// Last applied offset.
        from: u64,
        /// While an image arrives in chunks: `(its offset, bytes held)`, to go on from there.
        image: Option<(u64, u64)>,
    },
    /// AlterPartition (ISR change) from a partition leader.
    AlterPartition {
        /// Leader broker.
        broker: i32,
        /// Its epoch.
        epoch: i64,
        /// Topic.
        topic: String,
        /// Partition.
        index: i32,
        /// The leader epoch the change is based on.
        leader_epoch: i32,
        /// The partition epoch the change is based on.
        partition_epoch: i32,
        /// Proposed ISR.
        isr: Vec<i32>,
    },
    /// AllocateProducerIds.
    AllocateProducerIds {
        /// Broker.
        broker: i32,
    },
    /// An admin operation.
    Admin(AdminOp),
    /// DescribeQuorum: the metadata quorum as the active controller sees it.
    DescribeQuorum,
}

/// A chunk of an encoded [`MetadataImage`] ([`MetadataImage::encode`]): images travel in
/// chunks of at most the controller's `snapshot_chunk_bytes`, so their size is not bounded by
/// one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageChunk {
    /// The image's offset.
    pub offset: u64,
    /// Where `bytes` start in the encoded image.
    pub position: u64,
    /// The encoded image's size.
    pub total: u64,
    /// `encoded[position..position + bytes.len()]`.
    pub bytes: Vec<u8>,
}

/// The controller's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControllerResponse {
    /// This node is not the active controller; try `leader` if known.
    NotController {
        /// The known leader.
        leader: Option<i32>,
    },
    /// Registration committed.
    Registered {
        /// The broker epoch.
        epoch: i64,
    },
    /// Registration refused (DUPLICATE_BROKER_REGISTRATION: another live broker holds the id).
    RegisterRefused {
        /// Kafka error code.
        error: i16,
    },
    /// Heartbeat answer.
    Heartbeat {
        /// The broker is fenced.
        fenced: bool,
        /// Controlled shutdown may proceed (leads nothing).
        shutdown_ready: bool,
        /// The epoch is stale: register again.
        stale: bool,
    },
    /// Metadata since the asked offset: a snapshot if the log before it was compacted away, then
    /// records with their offsets.
    Metadata {
        /// The `from` of the fetch this answers: a broker takes `records` and `last` only as
        /// the answer to a fetch from where its image is now (an answer to an earlier fetch,
        /// say its previous incarnation's, would otherwise claim offsets it never sent).
        from: u64,
        /// A chunk of the full image to start from (the records after `from` are no longer held).
        image: Option<ImageChunk>,
        /// Committed records after the snapshot/offset, in order.
        records: Vec<(u64, Vec<MetadataRecord>)>,
        /// The controller's committed offset: the broker has caught up once it applied this.
        last: u64,
    },
    /// AlterPartition answer: an error code or the new state.
    AlterPartition {
        /// Kafka error code.
        error: i16,
        /// The committed state, when accepted.
        info: Option<PartitionInfo>,
    },
    /// A producer-id block.
    ProducerIds {
        /// First id.
        start: i64,
        /// Ids in the block.
        len: i64,
    },
    /// Admin result.
    Admin {
        /// Kafka error code.
        error: i16,
        /// Error message.
        message: Option<String>,
        /// The offset of the committed change (0 if nothing changed).
        offset: u64,
    },
    /// DescribeQuorum answer.
    Quorum(QuorumDescription),
}

/// The metadata quorum as its leader (the active controller) sees it: DescribeQuorum's
/// partition data for `__cluster_metadata`. Offsets are metadata log indexes; times are wall
/// clock milliseconds, -1 when unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumDescription {
    /// The leader (this controller).
    pub leader: i32,
    /// Its Raft term (Kafka's leader epoch of the metadata log).
    pub epoch: i32,
    /// The commit index (Kafka's high watermark of the metadata log).
    pub high_watermark: i64,
    /// Every voter, the leader included.
    pub voters: Vec<ReplicaDescription>,
    /// Brokers that fetch metadata without voting, seen in the last five minutes.
    pub observers: Vec<ReplicaDescription>,
}

/// One replica of the metadata log in a [`QuorumDescription`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDescription {
    /// Node id.
    pub id: i32,
    /// Its log end as far as the leader knows (-1 unknown).
    pub log_end: i64,
    /// When it last fetched from the leader.
    pub last_fetch_ms: i64,
    /// When it last held everything the leader had.
    pub last_caught_up_ms: i64,
}

/// A follower's fetch (Kafka's replica Fetch with KIP-320 epochs), in a fetch session
/// (KIP-227): a full fetch (`session_id` 0) names every partition the follower fetches from this
/// leader and asks for a new session; an incremental one names only the partitions whose entry
/// changed since the session's previous fetch, and those the follower stopped fetching. The
/// leader keeps the session's entries and serves all of them each time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaFetch {
    /// Id chosen by the follower.
    pub id: u64,
    /// Follower broker.
    pub broker: i32,
    /// Its broker epoch.
    pub broker_epoch: i64,
    /// The session the leader gave (0: a full fetch, asking for a new session).
    pub session_id: u64,
    /// This fetch's place in the session: 1 for the first after the full fetch, then 2, ... The
    /// leader refuses any other (a fetch of the session was lost) and the follower starts over.
    pub session_epoch: u32,
    /// Partitions fetched: all (full fetch) or those whose entry changed (incremental).
    pub partitions: Vec<ReplicaFetchPartition>,
    /// Partitions no longer fetched (incremental fetches).
    pub forgotten: Vec<(String, i32)>,
}

/// One partition of a replica fetch: the follower's state, which the leader's session keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetchPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub index: i32,
    /// Leader epoch the follower believes current.
    pub leader_epoch: i32,
    /// Next offset wanted (the follower's log end).
    pub fetch_offset: i64,
    /// Offset below which the follower's log is fsynced.
    pub durable_offset: i64,
    /// The follower's durable log start offset (what its checkpoint records): DeleteRecords
    /// is answered once every live replica's reaches the requested offset.
    pub log_start_offset: i64,
    /// Epoch of the last batch the follower has (-1 if none).
    pub last_fetched_epoch: i32,
    /// The leader's high watermark as far as the follower knows: the leader answers for the
    /// partition when its own differs, even with no records.
    pub high_watermark: i64,
    /// The follower's log start in memory (what it learned of the leader's): the leader answers
    /// for the partition when its own is higher.
    pub leader_log_start_offset: i64,
}

/// The leader's answer to a replica fetch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaFetchResponse {
    /// The fetch's id.
    pub id: u64,
    /// The fetch session: the one the fetch named, a new one for a full fetch, or 0 when the
    /// leader refused the fetch's session (unknown, or a fetch of it lost): fetch in full.
    pub session_id: u64,
    /// The partitions with something to say: records, an error, a truncation, a high watermark
    /// or log start the follower does not have yet. The others are left out.
    pub partitions: Vec<ReplicaFetchPartitionResponse>,
}

/// One partition's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaFetchPartitionResponse {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub index: i32,
    /// Kafka error code (FENCED_LEADER_EPOCH, NOT_LEADER_OR_FOLLOWER, ...).
    pub error: i16,
    /// Leader's high watermark.
    pub high_watermark: i64,
    /// Leader's log start.
    pub log_start_offset: i64,
    /// Set when the follower's log diverges: truncate to at most this end offset of this epoch.
    pub diverging: Option<(i32, i64)>,
    /// The follower is below the log start: restart the log at `log_start_offset`.
    pub out_of_range: bool,
    /// Record batches from `fetch_offset`.
    #[serde(with = "serde_bytes_compat")]
    pub records: bytes::Bytes,
}

mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    /// Read the bytes as one block (a `Vec<u8>` would be decoded byte by byte).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> serde::de::Visitor<'de> for BytesVisitor {
        type Value = bytes::Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<bytes::Bytes, E> {
            Ok(bytes::Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<bytes::Bytes, E> {
            Ok(bytes::Bytes::from(v))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bytes::Bytes, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(bytes::Bytes::from(v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicated_records_survive_bincode_byte_for_byte() {
        let records: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let r = ReplicaFetchPartitionResponse {
            topic: "t".into(),
            index: 3,
            error: 0,
            high_watermark: 7,
            log_start_offset: 0,
            diverging: Some((2, 5)),
            out_of_range: false,
            records: bytes::Bytes::from(records.clone()),
        };
        let wire = bincode::serialize(&r).expect("encodes");
        let back: ReplicaFetchPartitionResponse = bincode::deserialize(&wire).expect("decodes");
        assert_eq!(&back.records[..], &records[..]);
        assert_eq!((back.index, back.diverging), (3, Some((2, 5))));
        // A truncated frame is an error, not a short record set.
        assert!(bincode::deserialize::<ReplicaFetchPartitionResponse>(&wire[..wire.len() - 1]).is_err());
    }
}
