//! Kafka error codes, as numbered by the protocol (clients map them to exceptions and retries).

/// The server hit an unexpected error.
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
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
/// OFFSET_NOT_AVAILABLE: a new leader's high watermark still lags behind its epoch's start.
pub const OFFSET_NOT_AVAILABLE: i16 = 78;
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
/// KRaft: another live broker is registered with this node id.
pub const DUPLICATE_BROKER_REGISTRATION: i16 = 101;
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
/// OffsetCommit metadata longer than `offset.metadata.max.bytes`.
pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
/// The coordinator is loading its shard of `__consumer_offsets`.
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
/// No coordinator can serve the key yet (its internal topic or leader is missing).
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// This broker is not the coordinator of the group.
pub const NOT_COORDINATOR: i16 = 16;
/// The request's generation is not the group's.
pub const ILLEGAL_GENERATION: i16 = 22;
/// The member's protocol type or protocols do not fit the group's.
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
/// Empty or otherwise unusable group id.
pub const INVALID_GROUP_ID: i16 = 24;
/// The member id is not in the group.
pub const UNKNOWN_MEMBER_ID: i16 = 25;
/// Session timeout outside `group.min/max.session.timeout.ms`.
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
/// The group is rebalancing: rejoin.
pub const REBALANCE_IN_PROGRESS: i16 = 27;
/// DeleteGroups of a group that still has members.
pub const NON_EMPTY_GROUP: i16 = 68;
/// The group does not exist.
pub const GROUP_ID_NOT_FOUND: i16 = 69;
/// KIP-394: join again with the member id in this response.
pub const MEMBER_ID_REQUIRED: i16 = 79;
/// `group.max.size` reached.
pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
/// Another member holds this `group.instance.id` with a different member id.
pub const FENCED_INSTANCE_ID: i16 = 82;
/// OffsetDelete of a topic the group is subscribed to.
pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
/// KIP-848: the member epoch is fenced; rejoin with epoch 0.
pub const FENCED_MEMBER_EPOCH: i16 = 110;
/// KIP-848: the instance id is still held by another member.
pub const UNRELEASED_INSTANCE_ID: i16 = 111;
/// KIP-848: no such server-side assignor.
pub const UNSUPPORTED_ASSIGNOR: i16 = 112;
/// KIP-848: the member epoch is stale.
pub const STALE_MEMBER_EPOCH: i16 = 113;
/// KIP-848: a subscription's regular expression does not compile.
pub const INVALID_REGULAR_EXPRESSION: i16 = 128;
/// The offsets of a commit do not fit in one `__consumer_offsets` batch.
pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
