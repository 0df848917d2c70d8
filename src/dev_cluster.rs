//! `runnel dev-cluster --nodes N`: a local cluster for trying things out. It writes one
//! `server.properties` per node under the chosen directory (combined broker+controller nodes,
//! Kafka on 127.0.0.1:9092.., node-to-node on 127.0.0.1:19092..), starts one `runnel server`
//! process per node, and stops them all on Ctrl-C or when one exits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The `server.properties` text of node `id` (1-based) of an `n`-node dev cluster.
pub fn node_properties(id: usize, n: usize, dir: &Path, kafka_port: u16, peer_port: u16) -> String {
    let voters: Vec<String> = (1..=n).map(|i| format!("{i}@127.0.0.1:{}", peer_port + i as u16 - 1)).collect();
    format!(
        "# runnel dev-cluster node {id} of {n}\n\
         node.id={id}\n\
         process.roles=broker,controller\n\
         listeners=PLAINTEXT://127.0.0.1:{k},CONTROLLER://127.0.0.1:{c}\n\
         controller.listener.names=CONTROLLER\n\
         controller.quorum.voters={voters}\n\
         log.dirs={data}\n\
         default.replication.factor={rf}\n\
         min.insync.replicas={isr}\n\
         num.partitions=3\n",
        k = kafka_port + id as u16 - 1,
        c = peer_port + id as u16 - 1,
        voters = voters.join(","),
        data = dir.join(format!("node-{id}")).join("data").display(),
        rf = n.min(3),
        isr = if n >= 3 { 2 } else { 1 },
    )
}

/// Start the cluster and supervise it until Ctrl-C.
pub async fn run(nodes: usize, dir: PathBuf, kafka_port: u16, peer_port: u16) -> anyhow::Result<()> {
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
    let exe = std::env::current_exe()?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for id in 1..=nodes {
        let node_dir = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir)?;
        let path = node_dir.join("server.properties");
        std::fs::write(&path, node_properties(id, nodes, &dir, kafka_port, peer_port))?;
        let child = Command::new(&exe).arg("server").arg("--config").arg(&path).spawn()?;
        children.push((id, child));
    }
    let bootstrap: Vec<String> = (0..nodes).map(|i| format!("127.0.0.1:{}", kafka_port + i as u16)).collect();
    eprintln!("runnel dev-cluster: {nodes} nodes, bootstrap servers {}", bootstrap.join(","));
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
    use crate::config::ServerConfig;

    /// What dev-cluster writes is a valid three-voter configuration for each node.
    #[test]
    fn node_properties_parse_into_a_cluster() {
        for id in 1..=3 {
            let c = ServerConfig::parse(&node_properties(id, 3, Path::new("/tmp/dc"), 9092, 19092)).unwrap();
            assert_eq!(c.broker.node_id, id as i32);
            assert_eq!(c.listener.port(), 9092 + id as u16 - 1);
            assert_eq!(c.peer_listener.map(|a| a.port()), Some(19092 + id as u16 - 1));
            assert_eq!(c.controller.voters, vec![1, 2, 3]);
            assert_eq!(c.peers.len(), 2, "the other two voters are peers");
            assert!(c.controller_role);
            assert_eq!(c.broker.default_replication_factor, 3);
            assert_eq!(c.broker.topic_defaults.get("min.insync.replicas").map(String::as_str), Some("2"));
        }
    }
}
