//! `server.properties`: Kafka's broker keys mapped onto runnel's configuration. Unknown keys are
//! warned about, never silently accepted.
//!
//! # Process roles and listeners
//! `process.roles` is `broker,controller` (a combined node, the default), `controller` (a
//! controller-only node: a quorum voter that serves no clients and never appears in Metadata) or
//! `broker` (a broker-only node, which finds the controllers through `controller.quorum.voters`).
//! Node ids are unique across controllers and brokers, so a controller's id is in the voters and
//! a broker-only node's is not.
//!
//! Every node of a cluster listens on one *node-to-node* address, where runnel's own framed
//! protocol (`src/transport.rs`) carries Raft, broker ↔ controller RPCs and replication:
//! - on a voter (combined or controller-only) it is the controller listener, the entry of
//!   `listeners` named in `controller.listener.names` (default `CONTROLLER`), whose address the
//!   other nodes know from `controller.quorum.voters`;
//! - on a broker-only node it is the listener named by `inter.broker.listener.name` (e.g.
//!   `REPLICATION://127.0.0.1:9094`). It speaks runnel's node protocol, not Kafka's, so it is a
//!   listener of its own, never the one clients use. The broker registers its address (the
//!   `advertised.listeners` entry of that name if there is one) with the controller, and every
//!   other node learns it from the metadata.
//!
//! The Kafka client listener is the first other entry of `listeners`; a controller-only node has
//! none.

use anyhow::{bail, Context};
use runnel_actors::broker::config::{broker_key_to_topic, validate_topic_config, BrokerConfig};
use runnel_actors::controller::ControllerConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Which actors a node runs (`process.roles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessRoles {
    /// Runs the broker: serves clients, hosts partitions.
    pub broker: bool,
    /// Runs a controller: a voter of the metadata quorum.
    pub controller: bool,
}

impl ProcessRoles {
    /// `broker,controller`.
    pub const COMBINED: ProcessRoles = ProcessRoles { broker: true, controller: true };

    fn parse(value: &str) -> anyhow::Result<ProcessRoles> {
        let mut roles = ProcessRoles { broker: false, controller: false };
        for role in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "broker" => roles.broker = true,
                "controller" => roles.controller = true,
                other => bail!("process.roles={value}: unknown role {other:?}; the roles are broker and controller"),
            }
        }
        if !roles.broker && !roles.controller {
            bail!("process.roles is empty; use broker, controller or broker,controller");
        }
        Ok(roles)
    }
}

impl std::fmt::Display for ProcessRoles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.broker, self.controller) {
            (true, true) => write!(f, "broker,controller"),
            (true, false) => write!(f, "broker"),
            _ => write!(f, "controller"),
        }
    }
}

/// Everything needed to run one node.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The broker actor's configuration (also holds `node.id` on a controller-only node).
    pub broker: BrokerConfig,
    /// Address the Kafka listener binds; `None` on a controller-only node.
    pub listener: Option<SocketAddr>,
    /// `log.dirs`: the data directory.
    pub data_dir: PathBuf,
    /// `socket.request.max.bytes`.
    pub max_request_bytes: usize,
    /// `process.roles`.
    pub roles: ProcessRoles,
    /// The controller's settings.
    pub controller: ControllerConfig,
    /// The other quorum voters' node-to-node addresses (from `controller.quorum.voters`). The
    /// node-to-node addresses of broker-only nodes are learned from the metadata at run time.
    pub peers: BTreeMap<i32, String>,
    /// Where this node listens for other nodes: the controller listener on a voter, the
    /// `inter.broker.listener.name` listener on a broker-only node. `None`: a single node.
    pub peer_listener: Option<SocketAddr>,
    /// `num.network.threads`: the threads of the node's runtime, which do the network IO and run
    /// the actors; `None`: one per CPU. Several nodes sharing a small machine do better with one
    /// each (fewer threads waking one another).
    pub network_threads: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            broker: BrokerConfig::default(),
            listener: Some("127.0.0.1:9092".parse().expect("literal address")),
            data_dir: PathBuf::from("./runnel-data"),
            max_request_bytes: 100 * 1024 * 1024,
            roles: ProcessRoles::COMBINED,
            controller: ControllerConfig::default(),
            peers: BTreeMap::new(),
            peer_listener: None,
            network_threads: None,
        }
    }
}

/// `NAME://host:port` entries of a listener list, in order; a bare `host:port` is `PLAINTEXT`.
fn named_listeners(key: &str, value: &str) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let mut out: Vec<(String, SocketAddr)> = Vec::new();
    for l in value.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        let name = l.split_once("://").map(|(n, _)| n.to_string()).unwrap_or_else(|| "PLAINTEXT".into());
        if out.iter().any(|(n, _)| *n == name) {
            bail!("{key}: listener name {name} appears twice");
        }
        out.push((name, parse_addr(l)?));
    }
    Ok(out)
}

/// `value` as a number above zero.
fn positive<T: std::str::FromStr + PartialOrd + Default>(value: &str) -> Option<T> {
    value.parse().ok().filter(|v| *v > T::default())
}

fn parse_addr(first: &str) -> anyhow::Result<SocketAddr> {
    let addr = first.split_once("://").map(|(_, a)| a).unwrap_or(first);
    let addr = if let Some(port) = addr.strip_prefix(':') { format!("127.0.0.1:{port}") } else { addr.to_string() };
    let addr = addr.replacen("localhost", "127.0.0.1", 1);
    addr.parse().with_context(|| format!("listener {first:?} is not host:port"))
}

/// The listeners and keys that decide where a node listens, as read from the file.
struct ListenerKeys {
    listeners: Option<Vec<(String, SocketAddr)>>,
    advertised: Option<Vec<(String, SocketAddr)>>,
    controller_names: Vec<String>,
    inter_broker: Option<String>,
}

/// Where a node listens, once its roles are known.
struct Listening {
    kafka: Option<SocketAddr>,
    node: Option<(String, SocketAddr)>,
}

impl ListenerKeys {
    fn is_controller(&self, name: &str) -> bool {
        self.controller_names.iter().any(|n| n == name)
    }

    /// Choose the Kafka listener and the node-to-node listener for `roles` (see the module
    /// documentation), with an error a user can act on for every inconsistent combination.
    fn resolve(&self, roles: ProcessRoles) -> anyhow::Result<Listening> {
        // Without `listeners`, a broker listens on Kafka's default address; a controller has none.
        let default = if roles.broker { vec![("PLAINTEXT".to_string(), ServerConfig::default().listener.expect("a default listener"))] } else { Vec::new() };
        let list = self.listeners.as_ref().unwrap_or(&default);
        let controller = list.iter().find(|(n, _)| self.is_controller(n)).cloned();
        let names = self.controller_names.join(",");
        match (roles.broker, roles.controller) {
            (false, true) => {
                if let Some((name, addr)) = list.iter().find(|(n, _)| !self.is_controller(n)) {
                    bail!(
                        "process.roles=controller: listener {name}://{addr} is not named in controller.listener.names ({names}); a controller-only node serves no clients, so listeners holds only its controller listener"
                    );
                }
                if self.inter_broker.is_some() {
                    tracing::warn!("inter.broker.listener.name is ignored on a controller-only node");
                }
                let node = controller.ok_or_else(|| {
                    anyhow::anyhow!("process.roles=controller needs a controller listener in listeners, e.g. listeners=CONTROLLER://127.0.0.1:9093")
                })?;
                Ok(Listening { kafka: None, node: Some(node) })
            }
            (true, false) => {
                if let Some((name, addr)) = &controller {
                    bail!("process.roles=broker: listener {name}://{addr} is a controller listener (controller.listener.names={names}), but a broker-only node runs no controller; remove it from listeners");
                }
                let Some(inter) = &self.inter_broker else {
                    bail!(
                        "process.roles=broker needs a listener for node-to-node traffic (replication and controller requests): add one to listeners, e.g. REPLICATION://127.0.0.1:9094, and set inter.broker.listener.name=REPLICATION"
                    );
                };
                let node = list
                    .iter()
                    .find(|(n, _)| n == inter)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("inter.broker.listener.name={inter} names no entry of listeners"))?;
                let kafka = list.iter().find(|(n, _)| n != inter).ok_or_else(|| {
                    anyhow::anyhow!(
                        "inter.broker.listener.name={inter} is the only listener: runnel's brokers replicate over their own node-to-node protocol, not Kafka's, so that listener cannot also serve clients; add a client listener such as PLAINTEXT://127.0.0.1:9092 and give node-to-node traffic a listener of its own"
                    )
                })?;
                Ok(Listening { kafka: Some(kafka.1), node: Some(node) })
            }
            _ => {
                let clients: Vec<&(String, SocketAddr)> = list.iter().filter(|(n, _)| !self.is_controller(n)).collect();
                let kafka = clients.first().ok_or_else(|| anyhow::anyhow!("listeners has no Kafka (non-controller) listener"))?;
                if let Some(inter) = self.inter_broker.as_ref().filter(|n| !self.is_controller(n)) {
                    if clients.len() > 1 && clients.iter().any(|(n, _)| n == inter) {
                        bail!(
                            "process.roles=broker,controller: a combined node carries all node-to-node traffic, replication included, on its controller listener, so listener {inter} named by inter.broker.listener.name would never be used; remove it from listeners (or run separate broker and controller nodes)"
                        );
                    }
                    tracing::warn!("inter.broker.listener.name={inter} ignored: a combined node replicates over its controller listener");
                }
                Ok(Listening { kafka: Some(kafka.1), node: controller })
            }
        }
    }

    /// The address other parties should use for listener `name`: its `advertised.listeners`
    /// entry if there is one.
    fn advertised(&self, name: &str, bound: SocketAddr) -> SocketAddr {
        self.advertised.as_ref().and_then(|a| a.iter().find(|(n, _)| n == name)).map(|(_, a)| *a).unwrap_or(bound)
    }
}

impl ServerConfig {
    /// Parse the text of a `server.properties` file.
    pub fn parse(text: &str) -> anyhow::Result<ServerConfig> {
        let mut c = ServerConfig::default();
        let mut keys = ListenerKeys { listeners: None, advertised: None, controller_names: vec!["CONTROLLER".to_string()], inter_broker: None };
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
                "listeners" => keys.listeners = Some(named_listeners(key, value).map_err(|e| bad(&e.to_string()))?),
                "advertised.listeners" => keys.advertised = Some(named_listeners(key, value).map_err(|e| bad(&e.to_string()))?),
                "log.dirs" | "log.dir" => c.data_dir = PathBuf::from(value.split(',').next().unwrap_or(value)),
                "num.partitions" => c.broker.num_partitions = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "default.replication.factor" => c.broker.default_replication_factor = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "auto.create.topics.enable" => c.broker.auto_create_topics = value.parse().map_err(|_| bad("must be true or false"))?,
                "num.network.threads" => c.network_threads = Some(positive(value).ok_or_else(|| bad("must be a positive integer"))?),
                "socket.request.max.bytes" => c.max_request_bytes = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "log.retention.check.interval.ms" => c.broker.retention_check_interval_ms = value.parse().map_err(|_| bad("not an integer"))?,
                "broker.rack" => c.broker.rack = Some(value.to_string()),
                "cluster.id" => c.broker.cluster_id = value.to_string(),
                "process.roles" => roles = value.to_string(),
                "controller.listener.names" => keys.controller_names = value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
                "inter.broker.listener.name" => keys.inter_broker = Some(value.to_string()).filter(|v| !v.is_empty()),
                "controller.quorum.voters" => {
                    for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                        let (id, addr) = v.split_once('@').ok_or_else(|| bad("expected id@host:port entries"))?;
                        let id: i32 = id.parse().map_err(|_| bad("voter ids must be integers"))?;
                        parse_addr(addr).map_err(|_| bad("voter address is not host:port"))?;
                        if voters.insert(id, addr.to_string()).is_some() {
                            return Err(bad(&format!("voter {id} is listed twice")));
                        }
                    }
                }
                "controller.quorum.election.timeout.ms" => {
                    c.controller.election_timeout_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?
                }
                "metadata.log.max.snapshot.interval.ms" => {
                    c.controller.max_snapshot_interval_ms = value.parse().map_err(|_| bad("must be a non-negative integer (0: snapshots by size only)"))?
                }
                "metadata.log.max.record.bytes.between.snapshots" => {
                    c.controller.max_record_bytes_between_snapshots = positive(value).ok_or_else(|| bad("must be a positive integer"))?
                }
                "broker.session.timeout.ms" => c.controller.broker_session_timeout_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "broker.heartbeat.interval.ms" => c.broker.heartbeat_interval_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "replica.lag.time.max.ms" => c.broker.replica_lag_time_max_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "replica.fetch.wait.max.ms" => c.broker.replica_fetch_wait_max_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "group.initial.rebalance.delay.ms" => {
                    c.broker.groups.initial_rebalance_delay_ms = value.parse().map_err(|_| bad("must be a non-negative integer"))?
                }
                "group.min.session.timeout.ms" => c.broker.groups.min_session_timeout_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "group.max.session.timeout.ms" => c.broker.groups.max_session_timeout_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "group.max.size" => c.broker.groups.max_size = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "offset.metadata.max.bytes" => c.broker.groups.offset_metadata_max_bytes = value.parse().map_err(|_| bad("must be a non-negative integer"))?,
                "offsets.retention.minutes" => {
                    let minutes: i64 = positive(value).ok_or_else(|| bad("must be a positive integer"))?;
                    c.broker.groups.offsets_retention_ms = minutes.saturating_mul(60_000);
                }
                "offsets.retention.check.interval.ms" => {
                    c.broker.groups.offsets_retention_check_interval_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?
                }
                "group.consumer.session.timeout.ms" => {
                    c.broker.groups.consumer_session_timeout_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?
                }
                "group.consumer.heartbeat.interval.ms" => {
                    c.broker.groups.consumer_heartbeat_interval_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?
                }
                "offsets.commit.timeout.ms" => c.broker.groups.commit_timeout_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "offsets.topic.segment.bytes" => c.broker.groups.offsets_segment_bytes = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "log.cleaner.backoff.ms" => c.broker.cleaner_backoff_ms = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "offsets.topic.num.partitions" => c.broker.groups.offsets_partitions = positive(value).ok_or_else(|| bad("must be a positive integer"))?,
                "offsets.topic.replication.factor" => {
                    c.broker.groups.offsets_replication_factor = positive(value).ok_or_else(|| bad("must be a positive integer"))?
                }
                "transaction.state.log.num.partitions" => {
                    c.broker.groups.transaction_partitions = positive(value).ok_or_else(|| bad("must be a positive integer"))?
                }
                "transaction.state.log.replication.factor" => {
                    c.broker.groups.transaction_replication_factor = positive(value).ok_or_else(|| bad("must be a positive integer"))?
                }
                "listener.security.protocol.map" | "security.inter.broker.protocol" => {
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
        if let Some(v) = c.broker.topic_defaults.get("unclean.leader.election.enable") {
            c.controller.unclean_leader_election = v == "true";
        }
        let node = c.broker.node_id;
        if node < 0 {
            bail!("node.id={node}: node ids are non-negative integers");
        }
        c.controller.node_id = node;
        c.roles = ProcessRoles::parse(&roles)?;
        let listening = keys.resolve(c.roles)?;
        c.peer_listener = listening.node.as_ref().map(|(_, a)| *a);
        if c.roles.controller {
            if voters.is_empty() {
                // A quorum of one: this node.
                voters.insert(node, c.peer_listener.map(|a| a.to_string()).unwrap_or_default());
            }
            if !voters.contains_key(&node) {
                bail!("process.roles={} includes controller but node.id {node} is not in controller.quorum.voters", c.roles);
            }
            if voters.len() > 1 && c.peer_listener.is_none() {
                bail!("a multi-node quorum needs a controller listener in listeners (e.g. CONTROLLER://127.0.0.1:9093) for node-to-node traffic");
            }
        } else {
            if voters.is_empty() {
                bail!("process.roles=broker needs controller.quorum.voters: the controllers this broker registers with");
            }
            if voters.contains_key(&node) {
                bail!(
                    "process.roles=broker, but node.id {node} is in controller.quorum.voters: node ids are unique across controllers and brokers, so give this broker an id no voter has (or make it broker,controller)"
                );
            }
        }
        // The node-to-node address this node registers as a broker: on a voter, the address the
        // other nodes have for it in the voters; on a broker-only node, its inter-broker listener.
        c.broker.peer_address = match (&listening.node, c.roles.controller) {
            (_, true) => voters.get(&node).cloned().unwrap_or_default(),
            (Some((name, bound)), false) => {
                let addr = keys.advertised(name, *bound);
                if addr.ip().is_unspecified() {
                    bail!(
                        "listener {name}://{addr} has no address other nodes can dial: give one in advertised.listeners, e.g. {name}://10.0.0.5:{}",
                        addr.port()
                    );
                }
                addr.to_string()
            }
            (None, false) => unreachable!("a broker-only node always has a node-to-node listener"),
        };
        c.controller.voters = voters.keys().copied().collect();
        c.broker.voters = c.controller.voters.clone();
        c.peers = voters.into_iter().filter(|(id, _)| *id != node).collect();
        c.listener = listening.kafka;
        if let Some(kafka) = c.listener {
            let name = keys.listeners.as_ref().and_then(|l| l.iter().find(|(_, a)| *a == kafka)).map(|(n, _)| n.clone()).unwrap_or_else(|| "PLAINTEXT".into());
            // The advertised entry of the client listener's name, else the first advertised
            // entry that is no node-to-node listener, else the listener itself.
            let adv = keys
                .advertised
                .as_ref()
                .and_then(|a| {
                    a.iter().find(|(n, _)| *n == name).or_else(|| a.iter().find(|(n, _)| !keys.is_controller(n) && Some(n) != keys.inter_broker.as_ref()))
                })
                .map(|(_, a)| *a)
                .unwrap_or(kafka);
            c.broker.advertised_host = adv.ip().to_string();
            c.broker.advertised_port = adv.port() as i32;
        }
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
        assert_eq!(c.listener.map(|a| a.port()), Some(19092));
        assert_eq!(c.broker.advertised_port, 19092);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.broker.num_partitions, 4);
        assert_eq!(c.broker.topic_defaults.get("retention.ms").map(String::as_str), Some("3600000"));
        assert_eq!(c.controller.max_record_bytes_between_snapshots, 20 * 1024 * 1024, "Kafka's default");
        let c = ServerConfig::parse("metadata.log.max.record.bytes.between.snapshots=4096").unwrap();
        assert_eq!(c.controller.max_record_bytes_between_snapshots, 4096);
        assert!(ServerConfig::parse("metadata.log.max.record.bytes.between.snapshots=0").is_err());
        assert_eq!(c.controller.max_snapshot_interval_ms, 3_600_000, "Kafka's default");
        let c = ServerConfig::parse("metadata.log.max.snapshot.interval.ms=0").unwrap();
        assert_eq!(c.controller.max_snapshot_interval_ms, 0, "0: by size only");
        assert!(ServerConfig::parse("metadata.log.max.snapshot.interval.ms=-5").is_err());
        assert!(ServerConfig::parse("num.partitions=0").is_err());
        assert!(ServerConfig::parse("log.segment.bytes=abc").is_err());
        assert_eq!(c.network_threads, None, "one thread per CPU unless asked");
        assert_eq!(ServerConfig::parse("num.network.threads=1").unwrap().network_threads, Some(1));
        assert!(ServerConfig::parse("num.network.threads=0").is_err());
    }

    const VOTERS: &str = "controller.quorum.voters=1@127.0.0.1:19091,2@127.0.0.1:19092,3@127.0.0.1:19093\ncontroller.listener.names=CONTROLLER\n";

    fn parse_err(text: &str) -> String {
        format!("{:#}", ServerConfig::parse(text).expect_err("the configuration is refused"))
    }

    /// A controller-only node: a voter with its controller listener as the node-to-node address
    /// and no Kafka listener.
    #[test]
    fn controller_only_node() {
        let c = ServerConfig::parse(&format!("node.id=2\nprocess.roles=controller\nlisteners=CONTROLLER://127.0.0.1:19092\n{VOTERS}")).unwrap();
        assert_eq!(c.roles, ProcessRoles { broker: false, controller: true });
        assert_eq!(c.listener, None);
        assert_eq!(c.peer_listener, Some("127.0.0.1:19092".parse().unwrap()));
        assert_eq!(c.controller.node_id, 2);
        assert_eq!(c.controller.voters, vec![1, 2, 3]);
        assert_eq!(c.peers.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    }

    /// A broker-only node: the inter-broker listener is its node-to-node address (advertised if
    /// given), the other listener serves clients, every voter is a peer.
    #[test]
    fn broker_only_node() {
        let text = format!(
            "node.id=4\nprocess.roles=broker\nlisteners=REPLICATION://0.0.0.0:19094,PLAINTEXT://127.0.0.1:9094\ninter.broker.listener.name=REPLICATION\n\
             advertised.listeners=PLAINTEXT://127.0.0.2:9094,REPLICATION://127.0.0.3:19094\n{VOTERS}"
        );
        let c = ServerConfig::parse(&text).unwrap();
        assert_eq!(c.roles, ProcessRoles { broker: true, controller: false });
        assert_eq!(c.listener, Some("127.0.0.1:9094".parse().unwrap()));
        assert_eq!(c.peer_listener, Some("0.0.0.0:19094".parse().unwrap()));
        assert_eq!(c.broker.peer_address, "127.0.0.3:19094");
        assert_eq!((c.broker.advertised_host.as_str(), c.broker.advertised_port), ("127.0.0.2", 9094));
        assert_eq!(c.broker.voters, vec![1, 2, 3]);
        assert_eq!(c.peers.len(), 3);
    }

    /// Combined nodes keep working as before, and a Kafka-style `inter.broker.listener.name`
    /// naming the client listener is tolerated.
    #[test]
    fn combined_node() {
        let text = format!("node.id=1\nlisteners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:19091\ninter.broker.listener.name=PLAINTEXT\n{VOTERS}");
        let c = ServerConfig::parse(&text).unwrap();
        assert_eq!(c.roles, ProcessRoles::COMBINED);
        assert_eq!(c.listener, Some("127.0.0.1:9092".parse().unwrap()));
        assert_eq!(c.peer_listener, Some("127.0.0.1:19091".parse().unwrap()));
        assert_eq!(c.broker.peer_address, "127.0.0.1:19091", "the address the voters list");
        let single = ServerConfig::parse("node.id=1\n").unwrap();
        assert_eq!((single.controller.voters.clone(), single.peer_listener), (vec![1], None));
    }

    /// Every inconsistent role, id or listener combination is refused with a message that
    /// names the problem.
    #[test]
    fn role_errors_are_explained() {
        let broker = "process.roles=broker\nlisteners=PLAINTEXT://127.0.0.1:9094,REPLICATION://127.0.0.1:19094\ninter.broker.listener.name=REPLICATION\n";
        let cases: Vec<(String, &str)> = vec![
            ("process.roles=zookeeper\n".into(), "unknown role"),
            ("process.roles=\n".into(), "process.roles is empty"),
            (format!("node.id=4\nprocess.roles=controller\nlisteners=CONTROLLER://127.0.0.1:19094\n{VOTERS}"), "is not in controller.quorum.voters"),
            (format!("node.id=1\nprocess.roles=controller\nlisteners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:19091\n{VOTERS}"), "serves no clients"),
            (format!("node.id=1\nprocess.roles=controller\n{VOTERS}"), "needs a controller listener"),
            (format!("node.id=2\n{broker}{VOTERS}"), "node ids are unique across controllers and brokers"),
            (format!("node.id=4\n{broker}"), "needs controller.quorum.voters"),
            (format!("node.id=4\nprocess.roles=broker\nlisteners=PLAINTEXT://127.0.0.1:9094\n{VOTERS}"), "inter.broker.listener.name=REPLICATION"),
            (
                format!("node.id=4\nprocess.roles=broker\nlisteners=PLAINTEXT://127.0.0.1:9094\ninter.broker.listener.name=PLAINTEXT\n{VOTERS}"),
                "cannot also serve clients",
            ),
            (
                format!("node.id=4\nprocess.roles=broker\nlisteners=PLAINTEXT://127.0.0.1:9094\ninter.broker.listener.name=INTERNAL\n{VOTERS}"),
                "names no entry of listeners",
            ),
            (
                format!("node.id=4\nprocess.roles=broker\nlisteners=PLAINTEXT://127.0.0.1:9094,REPLICATION://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095\ninter.broker.listener.name=REPLICATION\n{VOTERS}"),
                "a broker-only node runs no controller",
            ),
            (
                format!("node.id=4\nprocess.roles=broker\nlisteners=PLAINTEXT://127.0.0.1:9094,REPLICATION://0.0.0.0:19094\ninter.broker.listener.name=REPLICATION\n{VOTERS}"),
                "advertised.listeners",
            ),
            (
                format!("node.id=1\nlisteners=PLAINTEXT://127.0.0.1:9092,REPLICATION://127.0.0.1:19094,CONTROLLER://127.0.0.1:19091\ninter.broker.listener.name=REPLICATION\n{VOTERS}"),
                "combined node carries all node-to-node traffic",
            ),
            (format!("node.id=1\nlisteners=PLAINTEXT://127.0.0.1:9092\n{VOTERS}"), "multi-node quorum needs a controller listener"),
            ("controller.quorum.voters=1@127.0.0.1:1,1@127.0.0.1:2\n".into(), "listed twice"),
            ("listeners=PLAINTEXT://127.0.0.1:1,PLAINTEXT://127.0.0.1:2\n".into(), "appears twice"),
            ("node.id=-1\n".into(), "non-negative"),
        ];
        for (text, want) in cases {
            let got = parse_err(&text);
            assert!(got.contains(want), "config {text:?}\nwanted an error containing {want:?}, got: {got}");
        }
    }
}
