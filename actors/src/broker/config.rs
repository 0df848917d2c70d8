//! Broker and topic configuration: Kafka's keys, their defaults, validation, and how a topic's
//! effective value is resolved (topic override, then dynamic broker default, then the static
//! broker config, then Kafka's default).

use crate::log::LogConfig;
use crate::partition::FlushPolicy;
use std::collections::BTreeMap;

/// Static broker settings (from `server.properties` or the standalone defaults).
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// Host advertised in Metadata (`advertised.listeners` or `listeners`).
    pub advertised_host: String,
    /// Port advertised in Metadata.
    pub advertised_port: i32,
    /// Cluster id reported to clients.
    pub cluster_id: String,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// `num.partitions`: default partition count for new topics.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// `log.cleaner.backoff.ms`: how often compacted logs are checked for a cleaning pass.
    pub cleaner_backoff_ms: u64,
    /// `controller.quorum.voters` ids (the standalone default: this node alone).
    pub voters: Vec<i32>,
    /// This node's node-to-node address, registered with the controller.
    pub peer_address: String,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: u64,
    /// `replica.fetch.wait.max.ms`.
    pub replica_fetch_wait_max_ms: u64,
    /// Broker-level defaults of topic configs, keyed by the *topic* config name
    /// (e.g. `log.retention.ms` is stored as `retention.ms`).
    pub topic_defaults: BTreeMap<String, String>,
    /// Group coordinator settings (`group.*`, `offsets.*`, `offset.*`).
    pub groups: crate::group::GroupSettings,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            cluster_id: "runnel-cluster".into(),
            rack: None,
            num_partitions: 1,
            default_replication_factor: 1,
            auto_create_topics: true,
            retention_check_interval_ms: 300_000,
            cleaner_backoff_ms: 15_000,
            voters: vec![1],
            peer_address: String::new(),
            heartbeat_interval_ms: 200,
            replica_lag_time_max_ms: 30_000,
            replica_fetch_wait_max_ms: 500,
            topic_defaults: BTreeMap::new(),
            groups: crate::group::GroupSettings::default(),
        }
    }
}

/// Topic configs runnel understands: (topic key, broker key, Kafka default).
pub const TOPIC_CONFIGS: &[(&str, &str, &str)] = &[
    ("cleanup.policy", "log.cleanup.policy", "delete"),
    ("compression.type", "compression.type", "producer"),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms", "86400000"),
    ("flush.messages", "log.flush.interval.messages", "9223372036854775807"),
    ("flush.ms", "log.flush.interval.ms", "9223372036854775807"),
    ("index.interval.bytes", "log.index.interval.bytes", "4096"),
    ("max.message.bytes", "message.max.bytes", "1048588"),
    ("message.timestamp.after.max.ms", "log.message.timestamp.after.max.ms", "9223372036854775807"),
    ("message.timestamp.before.max.ms", "log.message.timestamp.before.max.ms", "9223372036854775807"),
    ("message.timestamp.type", "log.message.timestamp.type", "CreateTime"),
    ("min.cleanable.dirty.ratio", "log.cleaner.min.cleanable.ratio", "0.5"),
    ("min.compaction.lag.ms", "log.cleaner.min.compaction.lag.ms", "0"),
    ("min.insync.replicas", "min.insync.replicas", "1"),
    ("retention.bytes", "log.retention.bytes", "-1"),
    ("retention.ms", "log.retention.ms", "604800000"),
    ("segment.bytes", "log.segment.bytes", "1073741824"),
    ("segment.index.bytes", "log.index.size.max.bytes", "10485760"),
    ("segment.ms", "log.roll.ms", "604800000"),
    ("unclean.leader.election.enable", "unclean.leader.election.enable", "false"),
];

/// The topic key for a broker key (`log.retention.ms` -> `retention.ms`), with Kafka's
/// hours/minutes aliases converted to milliseconds.
pub fn broker_key_to_topic(key: &str, value: &str) -> Option<(&'static str, String)> {
    let scaled = |factor: i64| value.trim().parse::<i64>().ok().map(|v| (v * factor).to_string());
    match key {
        "log.retention.hours" => Some(("retention.ms", scaled(3_600_000)?)),
        "log.retention.minutes" => Some(("retention.ms", scaled(60_000)?)),
        "log.roll.hours" => Some(("segment.ms", scaled(3_600_000)?)),
        _ => TOPIC_CONFIGS.iter().find(|c| c.1 == key).map(|c| (c.0, value.trim().to_string())),
    }
}

/// Check one topic config; the error is the message for INVALID_CONFIG.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), String> {
    let long = |min: i64| -> Result<(), String> {
        match value.parse::<i64>() {
            Ok(v) if v >= min => Ok(()),
            _ => Err(format!("Invalid value {value} for configuration {key}: must be an integer >= {min}")),
        }
    };
    match key {
        "cleanup.policy" => match value {
            "delete" | "compact" | "compact,delete" | "delete,compact" => Ok(()),
            _ => Err(format!("Invalid value {value} for configuration cleanup.policy: String must be one of: compact, delete")),
        },
        "min.cleanable.dirty.ratio" => match value.parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(()),
            _ => Err(format!("Invalid value {value} for configuration {key}: Value must be between 0 and 1")),
        },
        "compression.type" => match value {
            "producer" => Ok(()),
            _ => Err(format!("compression.type={value} is not supported: runnel stores batches as the producer compressed them (use 'producer')")),
        },
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(format!("Invalid value {value} for configuration message.timestamp.type")),
        },
        "unclean.leader.election.enable" => match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("Invalid value {value} for configuration {key}: must be true or false")),
        },
        "retention.ms" | "retention.bytes" => long(-1),
        "segment.bytes" => long(14),
        "segment.index.bytes" => long(4),
        "segment.ms" | "flush.ms" | "message.timestamp.after.max.ms" | "message.timestamp.before.max.ms" | "delete.retention.ms" | "min.compaction.lag.ms" => {
            long(0)
        }
        "flush.messages" | "min.insync.replicas" => long(1),
        "index.interval.bytes" | "max.message.bytes" => long(0),
        _ => Err(format!("Unknown topic config name: {key}")),
    }
}

/// A topic's effective configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicSettings {
    /// The log's settings.
    pub log: LogConfig,
    /// Flush policy.
    pub flush_policy: FlushPolicy,
    /// LogAppendTime?
    pub log_append_time: bool,
    /// `max.message.bytes`.
    pub max_message_bytes: usize,
    /// `message.timestamp.before.max.ms`.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`.
    pub timestamp_after_max_ms: i64,
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
}

/// Where a config value came from (Kafka's DescribeConfigs `config_source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic.
    DynamicTopic = 1,
    /// Dynamic broker default.
    DynamicDefaultBroker = 3,
    /// `server.properties`.
    StaticBroker = 4,
    /// Kafka's default.
    Default = 5,
}

/// Resolve `key` for a topic: override, dynamic broker default, static broker, default.
pub fn resolve<'a>(key: &str, topic: &'a BTreeMap<String, String>, dynamic: &'a BTreeMap<String, String>, broker: &'a BrokerConfig) -> (String, ConfigSource) {
    if let Some(v) = topic.get(key) {
        return (v.clone(), ConfigSource::DynamicTopic);
    }
    if let Some(v) = dynamic.get(key) {
        return (v.clone(), ConfigSource::DynamicDefaultBroker);
    }
    if let Some(v) = broker.topic_defaults.get(key) {
        return (v.clone(), ConfigSource::StaticBroker);
    }
    let default = TOPIC_CONFIGS.iter().find(|c| c.0 == key).map(|c| c.2).unwrap_or("");
    (default.to_string(), ConfigSource::Default)
}

/// Compute a topic's settings from its overrides and the broker's defaults. Whether the flush
/// policy is Kafka's page-cache one is decided by whether `flush.messages`/`flush.ms` were set
/// anywhere (the built-in default is runnel's fsync-before-ack).
pub fn topic_settings(topic: &BTreeMap<String, String>, dynamic: &BTreeMap<String, String>, broker: &BrokerConfig) -> TopicSettings {
    let get = |k: &str| resolve(k, topic, dynamic, broker);
    let long = |k: &str| get(k).0.parse::<i64>().unwrap_or(i64::MAX);
    let (flush_messages, messages_source) = get("flush.messages");
    let (flush_ms, ms_source) = get("flush.ms");
    let flush_policy = if messages_source == ConfigSource::Default && ms_source == ConfigSource::Default {
        FlushPolicy::Fsync
    } else {
        FlushPolicy::PageCache { messages: flush_messages.parse().unwrap_or(i64::MAX), ms: flush_ms.parse().unwrap_or(i64::MAX) }
    };
    let policy = get("cleanup.policy").0;
    // Without `delete` in the policy, time and size retention do not apply.
    let delete = policy.contains("delete");
    TopicSettings {
        log: LogConfig {
            segment_bytes: long("segment.bytes").max(14) as u64,
            segment_ms: long("segment.ms"),
            retention_ms: if delete { long("retention.ms") } else { -1 },
            retention_bytes: if delete { long("retention.bytes") } else { -1 },
            index_interval_bytes: long("index.interval.bytes").max(0) as u64,
            segment_index_bytes: long("segment.index.bytes").max(8) as u64,
            compact: policy.contains("compact"),
            delete_retention_ms: long("delete.retention.ms").max(0),
            min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio").0.parse::<f64>().unwrap_or(0.5).clamp(0.0, 1.0),
            min_compaction_lag_ms: long("min.compaction.lag.ms").max(0),
        },
        flush_policy,
        log_append_time: get("message.timestamp.type").0 == "LogAppendTime",
        max_message_bytes: long("max.message.bytes").clamp(0, i32::MAX as i64) as usize,
        timestamp_before_max_ms: long("message.timestamp.before.max.ms"),
        timestamp_after_max_ms: long("message.timestamp.after.max.ms"),
        min_insync_replicas: long("min.insync.replicas").clamp(1, 1 << 16) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overrides win over broker defaults, which win over Kafka defaults; setting a flush key
    /// anywhere switches to the page-cache policy.
    #[test]
    fn resolution_order_and_flush_policy() {
        let mut broker = BrokerConfig::default();
        broker.topic_defaults.insert("retention.ms".into(), "1000".into());
        let mut topic = BTreeMap::new();
        let s = topic_settings(&topic, &BTreeMap::new(), &broker);
        assert_eq!(s.log.retention_ms, 1000);
        assert_eq!(s.flush_policy, FlushPolicy::Fsync);
        topic.insert("retention.ms".into(), "5".into());
        topic.insert("flush.messages".into(), "1".into());
        let s = topic_settings(&topic, &BTreeMap::new(), &broker);
        assert_eq!(s.log.retention_ms, 5);
        assert_eq!(s.flush_policy, FlushPolicy::PageCache { messages: 1, ms: i64::MAX });
        assert!(validate_topic_config("retention.ms", "abc").is_err());
        assert!(validate_topic_config("no.such", "1").is_err());
        assert_eq!(broker_key_to_topic("log.retention.hours", "2"), Some(("retention.ms", "7200000".into())));
        // `log.flush.interval.messages` in server.properties gives every topic Kafka's policy.
        let mut kafka_like = BrokerConfig::default();
        let (key, value) = broker_key_to_topic("log.flush.interval.messages", "9223372036854775807").expect("a topic default");
        kafka_like.topic_defaults.insert(key.into(), value);
        let s = topic_settings(&BTreeMap::new(), &BTreeMap::new(), &kafka_like);
        assert_eq!(s.flush_policy, FlushPolicy::PageCache { messages: i64::MAX, ms: i64::MAX });
    }
}
