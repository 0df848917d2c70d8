//! Kafka error codes, as numbered by the protocol (clients map them to exceptions and retries).

/// No error.
pub const NONE: i16 = 0;
/// The requested offset is outside the log.
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
/// A batch failed its CRC or could not be parsed.
pub const CORRUPT_MESSAGE: i16 = 2;
/// The topic or partition does not exist on this broker.
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// The partition has no leader yet (retriable).
pub const LEADER_NOT_AVAILABLE: i16 = 5;
/// This broker is not the partition's leader (retriable).
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// The request timed out.
pub const REQUEST_TIMED_OUT: i16 = 7;
/// A batch is larger than `max.message.bytes`.
pub const MESSAGE_TOO_LARGE: i16 = 10;
/// The topic name is not legal.
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
/// A batch is larger than the segment size.
pub const RECORD_LIST_TOO_LARGE: i16 = 18;
/// acks other than -1, 0, 1.
pub const INVALID_REQUIRED_ACKS: i16 = 21;
/// A timestamp outside the allowed window.
pub const INVALID_TIMESTAMP: i16 = 32;
/// The API version is not supported.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// CreateTopics on an existing topic.
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Bad partition count.
pub const INVALID_PARTITIONS: i16 = 37;
/// Bad replication factor.
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
/// Bad replica assignment.
pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
/// Bad config key or value.
pub const INVALID_CONFIG: i16 = 40;
/// The request is malformed or not supported in this form.
pub const INVALID_REQUEST: i16 = 42;
/// Magic other than 2.
pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
/// A sequence gap for an idempotent producer.
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// A duplicate sequence older than the cached window.
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
/// The producer epoch is older than the partition's.
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
/// The log directory failed.
pub const KAFKA_STORAGE_ERROR: i16 = 56;
/// The client's leader epoch is older than the broker's.
pub const FENCED_LEADER_EPOCH: i16 = 74;
/// The client's leader epoch is newer than the broker's.
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
/// The producer id is not known.
pub const UNKNOWN_PRODUCER_ID: i16 = 59;
/// A record inside a batch is invalid.
pub const INVALID_RECORD: i16 = 87;
/// The topic id is not known.
pub const UNKNOWN_TOPIC_ID: i16 = 100;
/// An incremental fetch named a session this broker does not have.
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// An incremental fetch's epoch is not the one the session expects.
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
/// Fewer in-sync replicas than `min.insync.replicas` (before the append).
pub const NOT_ENOUGH_REPLICAS: i16 = 19;
/// The ISR shrank below `min.insync.replicas` after the append.
pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
/// This node is not the active controller.
pub const NOT_CONTROLLER: i16 = 41;
/// The broker epoch in a broker's request is stale.
pub const STALE_BROKER_EPOCH: i16 = 77;
/// Preferred leader is not available for election.
pub const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
/// The partition is already led by the requested leader.
pub const ELECTION_NOT_NEEDED: i16 = 84;
/// No reassignment in progress.
pub const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;
/// Eligible leaders are not available for the election.
pub const ELIGIBLE_LEADERS_NOT_AVAILABLE: i16 = 83;
/// The partition epoch in an AlterPartition is stale.
pub const INVALID_UPDATE_VERSION: i16 = 96;
/// A proposed ISR member is not eligible (fenced or not a replica).
pub const INELIGIBLE_REPLICA: i16 = 107;
