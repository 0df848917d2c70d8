//! `server.properties`: Kafka's broker keys mapped onto runnel's configuration. Unknown keys are
//! warned about, never silently accepted; keys runnel reads but does not act on yet (the quorum
//! keys of a single node) are reported as such.

use anyhow::{bail, Context};
use runnel_actors::broker::config::{broker_key_to_topic, validate_topic_config, BrokerConfig};
use runnel_actors::controller::ControllerConfig;
use std::collections::BTreeMap;
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
    /// `process.roles` contains `controller`: this node is a voter of the metadata quorum.
    pub controller_role: bool,
    /// The controller's settings.
    pub controller: ControllerConfig,
    /// The other nodes' node-to-node addresses (from `controller.quorum.voters`).
    pub peers: BTreeMap<i32, String>,
    /// Where this node listens for other nodes (the `CONTROLLER` listener).
    pub peer_listener: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            broker: BrokerConfig::default(),
            listener: "127.0.0.1:9092".parse().expect("literal address"),
            data_dir: PathBuf::from("./runnel-data"),
            max_request_bytes: 100 * 1024 * 1024,
            controller_role: true,
            controller: ControllerConfig::default(),
            peers: BTreeMap::new(),
            peer_listener: None,
        }
    }
}

fn parse_listener(value: &str) -> anyhow::Result<SocketAddr> {
    let first = value.split(',').next().unwrap_or("").trim();
    parse_addr(first)
}

/// `NAME://host:port` entries of a listener list, by name.
fn named_listeners(value: &str) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let name = l.split_once("://").map(|(n, _)| n.to_string()).unwrap_or_else(|| "PLAINTEXT".into());
            Ok((name, parse_addr(l)?))
        })
        .collect()
}

fn parse_addr(first: &str) -> anyhow::Result<SocketAddr> {
    let addr = first.split_once("://").map(|(_, a)| a).unwrap_or(first);
    let addr = if let Some(port) = addr.strip_prefix(':') { format!("127.0.0.1:{port}") } else { addr.to_string() };
    let addr = addr.replacen("localhost", "127.0.0.1", 1);
    addr.parse().with_context(|| format!("listener {first:?} is not host:port"))
}

impl ServerConfig {
    /// Parse the text of a `server.properties` file.
    pub fn parse(text: &str) -> anyhow::Result<ServerConfig> {
        let mut c = ServerConfig::default();
        let mut advertised = None;
        let mut listeners = None;
        let mut controller_names = vec!["CONTROLLER".to_string()];
        let mut voters: BTreeMap<i32, String> = BTreeMap::new();
        let mut roles = "broker,controller".to_string();
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
                "listeners" => listeners = Some(named_listeners(value)?),
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
                "process.roles" => roles = value.to_string(),
                "controller.listener.names" => controller_names = value.split(',').map(|s| s.trim().to_string()).collect(),
                "controller.quorum.voters" => {
                    for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                        let (id, addr) = v.split_once('@').ok_or_else(|| bad("expected id@host:port entries"))?;
                        let id: i32 = id.parse().map_err(|_| bad("voter ids must be integers"))?;
                        parse_addr(addr).map_err(|_| bad("voter address is not host:port"))?;
                        voters.insert(id, addr.to_string());
                    }
                }
                "controller.quorum.election.timeout.ms" => {
                    c.controller.election_timeout_ms = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| bad("must be a positive integer"))?
                }
                "metadata.log.max.record.bytes.between.snapshots" => {
                    c.controller.max_record_bytes_between_snapshots = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| bad("must be a positive integer"))?
                }
                "broker.session.timeout.ms" => {
                    c.controller.broker_session_timeout_ms = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| bad("must be a positive integer"))?
                }
                "broker.heartbeat.interval.ms" => {
                    c.broker.heartbeat_interval_ms = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| bad("must be a positive integer"))?
                }
                "replica.lag.time.max.ms" => {
                    c.broker.replica_lag_time_max_ms = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| bad("must be a positive integer"))?
                }
                "replica.fetch.wait.max.ms" => {
                    c.broker.replica_fetch_wait_max_ms = value.parse().ok().filter(|v| *v > 0).ok_or_else(|| bad("must be a positive integer"))?
                }
                "inter.broker.listener.name" | "listener.security.protocol.map" => {
                    if value.contains("SSL") || value.contains("SASL") {
                        tracing::warn!("{key}={value}: only PLAINTEXT listeners are supported");
                    }
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
        if let Some(list) = listeners {
            let kafka =
                list.iter().find(|(n, _)| !controller_names.contains(n)).ok_or_else(|| anyhow::anyhow!("listeners has no Kafka (non-controller) listener"))?;
            c.listener = kafka.1;
            c.peer_listener = list.iter().find(|(n, _)| controller_names.contains(n)).map(|(_, a)| *a);
        }
        if let Some(v) = c.broker.topic_defaults.get("unclean.leader.election.enable") {
            c.controller.unclean_leader_election = v == "true";
        }
        let node = c.broker.node_id;
        c.controller.node_id = node;
        c.controller_role = roles.split(',').any(|r| r.trim() == "controller");
        if !roles.split(',').any(|r| r.trim() == "broker") {
            bail!("process.roles={roles}: a controller-only node is not supported yet; use broker,controller");
        }
        if voters.is_empty() {
            voters.insert(node, c.peer_listener.map(|a| a.to_string()).unwrap_or_default());
        }
        if c.controller_role && !voters.contains_key(&node) {
            bail!("process.roles includes controller but node.id {node} is not in controller.quorum.voters");
        }
        c.controller.voters = voters.keys().copied().collect();
        c.broker.voters = c.controller.voters.clone();
        c.peers = voters.into_iter().filter(|(id, _)| *id != node).collect();
        c.broker.peer_address = c.peer_listener.map(|a| a.to_string()).unwrap_or_default();
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
        assert_eq!(c.controller.max_record_bytes_between_snapshots, 20 * 1024 * 1024, "Kafka's default");
        let c = ServerConfig::parse("metadata.log.max.record.bytes.between.snapshots=4096").unwrap();
        assert_eq!(c.controller.max_record_bytes_between_snapshots, 4096);
        assert!(ServerConfig::parse("metadata.log.max.record.bytes.between.snapshots=0").is_err());
        assert!(ServerConfig::parse("num.partitions=0").is_err());
        assert!(ServerConfig::parse("log.segment.bytes=abc").is_err());
    }
}
