//! `server.properties`: Kafka's broker keys mapped onto runnel's configuration. Unknown keys are
//! warned about, never silently accepted; keys runnel reads but does not act on yet (the quorum
//! keys of a single node) are reported as such.

use anyhow::{bail, Context};
use runnel_actors::broker::config::{broker_key_to_topic, validate_topic_config, BrokerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything needed to run one node.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The broker actor's configuration.
    pub broker: BrokerConfig,
    /// Address the Kafka listener binds.
    pub listener: SocketAddr,
    /// `log.dirs`: the data directory.
    pub data_dir: PathBuf,
    /// `socket.request.max.bytes`.
    pub max_request_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            broker: BrokerConfig::default(),
            listener: "127.0.0.1:9092".parse().expect("literal address"),
            data_dir: PathBuf::from("./runnel-data"),
            max_request_bytes: 100 * 1024 * 1024,
        }
    }
}

fn parse_listener(value: &str) -> anyhow::Result<SocketAddr> {
    let first = value.split(',').next().unwrap_or("").trim();
    let addr = first.split_once("://").map(|(_, a)| a).unwrap_or(first);
    let addr = if let Some(port) = addr.strip_prefix(':') { format!("127.0.0.1:{port}") } else { addr.to_string() };
    let addr = addr.replacen("localhost", "127.0.0.1", 1);
    addr.parse().with_context(|| format!("listener {value:?} is not host:port"))
}

impl ServerConfig {
    /// Parse the text of a `server.properties` file.
    pub fn parse(text: &str) -> anyhow::Result<ServerConfig> {
        let mut c = ServerConfig::default();
        let mut advertised = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((key, value)) = line.split_once('=').or_else(|| line.split_once(':')) else {
                bail!("line {}: expected key=value, got {line:?}", n + 1);
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |what: &str| anyhow::anyhow!("line {}: {key}={value}: {what}", n + 1);
            match key {
                "node.id" | "broker.id" => c.broker.node_id = value.parse().map_err(|_| bad("not an integer"))?,
                "listeners" => c.listener = parse_listener(value)?,
                "advertised.listeners" => advertised = Some(parse_listener(value)?),
                "log.dirs" | "log.dir" => c.data_dir = PathBuf::from(value.split(',').next().unwrap_or(value)),
                "num.partitions" => c.broker.num_partitions = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| bad("must be a positive integer"))?,
                "default.replication.factor" => {
                    c.broker.default_replication_factor = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| bad("must be a positive integer"))?
                }
                "auto.create.topics.enable" => c.broker.auto_create_topics = value.parse().map_err(|_| bad("must be true or false"))?,
                "socket.request.max.bytes" => c.max_request_bytes = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| bad("must be a positive integer"))?,
                "log.retention.check.interval.ms" => c.broker.retention_check_interval_ms = value.parse().map_err(|_| bad("not an integer"))?,
                "broker.rack" => c.broker.rack = Some(value.to_string()),
                "cluster.id" => c.broker.cluster_id = value.to_string(),
                "process.roles"
                | "controller.quorum.voters"
                | "controller.listener.names"
                | "inter.broker.listener.name"
                | "listener.security.protocol.map" => {
                    tracing::warn!("{key}={value}: read, but this build runs a single combined broker+controller node");
                }
                _ => match broker_key_to_topic(key, value) {
                    Some((topic_key, converted)) => {
                        validate_topic_config(topic_key, &converted).map_err(|e| bad(&e))?;
                        c.broker.topic_defaults.insert(topic_key.to_string(), converted);
                    }
                    None => tracing::warn!("unknown configuration key {key} (line {}) ignored", n + 1),
                },
            }
        }
        let adv = advertised.unwrap_or(c.listener);
        c.broker.advertised_host = adv.ip().to_string();
        c.broker.advertised_port = adv.port() as i32;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka keys land in the right fields, hour aliases convert, bad values are rejected.
    #[test]
    fn parses_kafka_keys() {
        let c = ServerConfig::parse("node.id=3\nlisteners=PLAINTEXT://127.0.0.1:19092\nlog.dirs=/tmp/x\nlog.retention.hours=1\nnum.partitions=4\nfoo.bar=1\n")
            .unwrap();
        assert_eq!(c.broker.node_id, 3);
        assert_eq!(c.listener.port(), 19092);
        assert_eq!(c.broker.advertised_port, 19092);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.broker.num_partitions, 4);
        assert_eq!(c.broker.topic_defaults.get("retention.ms").map(String::as_str), Some("3600000"));
        assert!(ServerConfig::parse("num.partitions=0").is_err());
        assert!(ServerConfig::parse("log.segment.bytes=abc").is_err());
    }
}
