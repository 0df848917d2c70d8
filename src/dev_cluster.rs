//! `runnel dev-cluster`: a local cluster for trying things out. It writes one
//! `server.properties` per node under the chosen directory, starts one `runnel server` process
//! per node, and stops them all on Ctrl-C or when one exits.
//!
//! Two layouts, as in Kafka:
//! - `--nodes N`: N combined `broker,controller` nodes, every one a quorum voter, Kafka on
//!   127.0.0.1:9092.., node-to-node on 127.0.0.1:19092..;
//! - `--controllers C --brokers B`: C controller-only nodes (ids 1..=C, node-to-node on
//!   127.0.0.1:19092..) and B broker-only nodes (ids C+1..=C+B, Kafka on 127.0.0.1:9092.., their
//!   `REPLICATION` node-to-node listener on the ports after the controllers').

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The shape of a dev cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `nodes` combined broker+controller nodes, every one a voter.
    Combined {
        /// Node count.
        nodes: usize,
    },
    /// Controller-only voters and broker-only nodes.
    Separate {
        /// Controller-only nodes (ids 1..=controllers).
        controllers: usize,
        /// Broker-only nodes (the ids after the controllers').
        brokers: usize,
    },
}

impl Layout {
    /// Every node id, in order.
    pub fn nodes(&self) -> usize {
        match *self {
            Layout::Combined { nodes } => nodes,
            Layout::Separate { controllers, brokers } => controllers + brokers,
        }
    }

    fn voters(&self) -> usize {
        match *self {
            Layout::Combined { nodes } => nodes,
            Layout::Separate { controllers, .. } => controllers,
        }
    }

    fn brokers(&self) -> usize {
        match *self {
            Layout::Combined { nodes } => nodes,
            Layout::Separate { brokers, .. } => brokers,
        }
    }

    /// The Kafka port of node `id`, if it runs a broker.
    pub fn kafka_port(&self, id: usize, kafka_port: u16) -> Option<u16> {
        let first_broker = self.nodes() - self.brokers() + 1;
        (id >= first_broker).then(|| kafka_port + (id - first_broker) as u16)
    }

    fn check(&self) -> anyhow::Result<()> {
        match *self {
            Layout::Combined { nodes } => anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9"),
            Layout::Separate { controllers, brokers } => {
                anyhow::ensure!((1..=9).contains(&controllers), "--controllers must be between 1 and 9");
                anyhow::ensure!((1..=9).contains(&brokers), "--brokers must be between 1 and 9");
            }
        }
        Ok(())
    }
}

/// The `server.properties` text of node `id` (1-based) of a dev cluster with `layout`: node `i`'s
/// node-to-node port is `peer_port + i - 1`, the brokers' Kafka ports count up from `kafka_port`.
pub fn node_properties(id: usize, layout: Layout, dir: &Path, kafka_port: u16, peer_port: u16) -> String {
    let n = layout.nodes();
    let peer = |i: usize| peer_port + i as u16 - 1;
    let voters: Vec<String> = (1..=layout.voters()).map(|i| format!("{i}@127.0.0.1:{}", peer(i))).collect();
    let data = dir.join(format!("node-{id}")).join("data");
    let brokers = layout.brokers();
    let broker_defaults =
        format!(
        "default.replication.factor={rf}\nmin.insync.replicas={isr}\nnum.partitions=3\noffsets.topic.replication.factor={rf}\ntransaction.state.log.replication.factor={rf}\n",
        rf = brokers.min(3),
        isr = if brokers >= 3 { 2 } else { 1 },
    );
    let (roles, listeners) = match (layout, layout.kafka_port(id, kafka_port)) {
        (Layout::Combined { .. }, Some(k)) => ("broker,controller", format!("PLAINTEXT://127.0.0.1:{k},CONTROLLER://127.0.0.1:{}", peer(id))),
        (Layout::Separate { .. }, Some(k)) => {
            ("broker", format!("PLAINTEXT://127.0.0.1:{k},REPLICATION://127.0.0.1:{}\ninter.broker.listener.name=REPLICATION", peer(id)))
        }
        (_, None) => ("controller", format!("CONTROLLER://127.0.0.1:{}", peer(id))),
    };
    // The nodes share this machine: their runtimes split its CPUs rather than each taking all.
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cpus / n).max(1);
    let mut text = format!(
        "# runnel dev-cluster node {id} of {n}\n\
         node.id={id}\n\
         num.network.threads={threads}\n\
         process.roles={roles}\n\
         listeners={listeners}\n\
         controller.listener.names=CONTROLLER\n\
         controller.quorum.voters={voters}\n\
         log.dirs={data}\n",
        voters = voters.join(","),
        data = data.display(),
    );
    if roles != "controller" {
        text.push_str(&broker_defaults);
    }
    text
}

/// Start the cluster and supervise it until Ctrl-C.
pub async fn run(layout: Layout, dir: PathBuf, kafka_port: u16, peer_port: u16) -> anyhow::Result<()> {
    layout.check()?;
    let exe = std::env::current_exe()?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for id in 1..=layout.nodes() {
        let node_dir = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir)?;
        let path = node_dir.join("server.properties");
        std::fs::write(&path, node_properties(id, layout, &dir, kafka_port, peer_port))?;
        let child = Command::new(&exe).arg("server").arg("--config").arg(&path).spawn()?;
        children.push((id, child));
    }
    let bootstrap: Vec<String> = (1..=layout.nodes()).filter_map(|id| layout.kafka_port(id, kafka_port)).map(|p| format!("127.0.0.1:{p}")).collect();
    match layout {
        Layout::Combined { nodes } => eprintln!("runnel dev-cluster: {nodes} combined broker+controller nodes"),
        Layout::Separate { controllers, brokers } => {
            eprintln!("runnel dev-cluster: {controllers} controller-only nodes (ids 1-{controllers}), {brokers} broker-only nodes")
        }
    }
    eprintln!("bootstrap servers {}", bootstrap.join(","));
    eprintln!("configs and data under {}; Ctrl-C stops the cluster", dir.display());
    let outcome = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if let Some((id, status)) = children.iter_mut().find_map(|(id, c)| c.try_wait().ok().flatten().map(|s| (*id, s))) {
            break Err(anyhow::anyhow!("node {id} exited ({status}); stopping the cluster"));
        }
    };
    for (_, c) in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProcessRoles, ServerConfig};

    /// What dev-cluster writes is a valid three-voter configuration for each node.
    #[test]
    fn node_properties_parse_into_a_cluster() {
        let layout = Layout::Combined { nodes: 3 };
        for id in 1..=3 {
            let c = ServerConfig::parse(&node_properties(id, layout, Path::new("/tmp/dc"), 9092, 19092)).unwrap();
            assert_eq!(c.broker.node_id, id as i32);
            assert_eq!(c.listener.map(|a| a.port()), Some(9092 + id as u16 - 1));
            assert_eq!(c.peer_listener.map(|a| a.port()), Some(19092 + id as u16 - 1));
            assert_eq!(c.controller.voters, vec![1, 2, 3]);
            assert_eq!(c.peers.len(), 2, "the other two voters are peers");
            assert_eq!(c.roles, ProcessRoles::COMBINED);
            assert_eq!(c.broker.default_replication_factor, 3);
            assert_eq!(c.broker.topic_defaults.get("min.insync.replicas").map(String::as_str), Some("2"));
            let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
            assert_eq!(c.network_threads, Some((cpus / 3).max(1)), "the nodes split the machine's CPUs");
        }
    }

    /// `--controllers 3 --brokers 3`: ids 1-3 are controller-only voters without a Kafka
    /// listener, ids 4-6 broker-only nodes with a Kafka and a replication listener each, and no
    /// two listeners share a port.
    #[test]
    fn separate_roles_parse_into_a_cluster() {
        let layout = Layout::Separate { controllers: 3, brokers: 3 };
        let mut ports = std::collections::BTreeSet::new();
        for id in 1..=6 {
            let c = ServerConfig::parse(&node_properties(id, layout, Path::new("/tmp/dc"), 9092, 19092)).unwrap();
            assert_eq!(c.broker.node_id, id as i32);
            assert_eq!(c.controller.voters, vec![1, 2, 3]);
            assert_eq!(c.peer_listener.map(|a| a.port()), Some(19092 + id as u16 - 1));
            assert!(ports.insert(c.peer_listener.unwrap().port()));
            if id <= 3 {
                assert_eq!(c.roles, ProcessRoles { broker: false, controller: true });
                assert_eq!(c.listener, None);
                assert_eq!(c.peers.len(), 2);
            } else {
                assert_eq!(c.roles, ProcessRoles { broker: true, controller: false });
                let kafka = c.listener.unwrap().port();
                assert_eq!(kafka, 9092 + id as u16 - 4);
                assert!(ports.insert(kafka));
                assert_eq!(c.peers.len(), 3, "every voter is a peer");
                assert_eq!(c.broker.peer_address, format!("127.0.0.1:{}", 19092 + id - 1));
                assert_eq!(c.broker.default_replication_factor, 3);
            }
        }
        assert!(Layout::Separate { controllers: 0, brokers: 3 }.check().is_err());
    }
}
