//! The cluster under test: `runnel server` processes on 127.0.0.1, combined broker+controller
//! nodes that all vote, each with its own data directory, configuration file and log, and the
//! node-to-node links between them running through the suite's proxies ([`crate::proxy`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::proxy::Link;
use crate::rng::Rng;

/// How long a node may take to start serving clients (log recovery, registration, unfencing).
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// One `runnel server` process, running or not.
pub struct Node {
    /// `node.id`.
    pub id: i32,
    /// Its Kafka listener port.
    pub kafka_port: u16,
    /// Its node-to-node (controller listener) port, as it binds it.
    pub peer_port: u16,
    binary: PathBuf,
    config: PathBuf,
    /// Where its stdout and stderr go (appended across restarts).
    pub log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    /// `host:port` of its Kafka listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    fn note(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log_path) {
            let _ = writeln!(f, "==== jepsen: {what}");
        }
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.note("starting");
        let log = OpenOptions::new().create(true).append(true).open(&self.log_path).context("open node log")?;
        let child = Command::new(&self.binary)
            .arg("server")
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", std::env::var("RUNNEL_JEPSEN_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Start the process and wait until it answers ApiVersions (it serves once registered and
    /// unfenced). A restart whose port is still held by the killed process is tried again.
    pub fn start(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            self.spawn()?;
            if self.wait_ready(deadline)? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the spawned process answers ApiVersions (true), or exits because a port it
    /// listens on is still taken, with time left to try again (false). Any other exit, or the
    /// deadline, is an error.
    fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<bool> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.kafka_port));
        let mut pause = Duration::from_millis(5);
        loop {
            let child = self.child.as_mut().context("the node was not started")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                if Instant::now() < deadline && last_run(&self.log_path).contains("cannot listen") {
                    return Ok(false);
                }
                bail!("node {} exited during startup ({status}); see {}", self.id, self.log_path.display());
            }
            if api_versions_answered(&addr) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                bail!("node {} did not serve within its start deadline; see {}", self.id, self.log_path.display());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.note("SIGKILLed");
        }
        self.paused = false;
    }

    /// SIGSTOP: the process freezes (a long GC pause, a stalled VM); its sockets stay open.
    pub fn pause(&mut self) -> bool {
        match &self.child {
            Some(child) if !self.paused => {
                self.paused = signal("STOP", child.id());
                if self.paused {
                    self.note("SIGSTOPped");
                }
                self.paused
            }
            _ => false,
        }
    }

    /// SIGCONT a paused process.
    pub fn resume(&mut self) {
        if let (Some(child), true) = (&self.child, self.paused) {
            signal("CONT", child.id());
            self.note("SIGCONTinued");
        }
        self.paused = false;
    }

    /// Whether a process is running (paused counts as running).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Send a signal with kill(1): the workspace forbids `unsafe`, and std only sends SIGKILL.
fn signal(name: &str, pid: u32) -> bool {
    Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().is_ok_and(|s| s.success())
}

/// The log since the last start.
fn last_run(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    log[log.rfind("==== jepsen: starting").unwrap_or(0)..].to_string()
}

/// Whether a Kafka listener at `addr` answers an ApiVersions v0 request (correlation id 1)
/// without error: the readiness probe for a broker, which serves only once its log is recovered
/// and it is registered and unfenced. (The integration tests' harness uses it too.)
pub fn api_versions_answered(addr: &SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_millis(500)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let client_id = b"runnel-jepsen";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes()); // v0
    body.extend_from_slice(&1i32.to_be_bytes()); // correlation id
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    if stream.write_all(&frame).is_err() {
        return false;
    }
    let mut head = [0u8; 10];
    if stream.read_exact(&mut head).is_err() {
        return false;
    }
    i32::from_be_bytes([head[4], head[5], head[6], head[7]]) == 1 && i16::from_be_bytes([head[8], head[9]]) == 0
}

/// A port below the kernel's ephemeral range (32768 and up on Linux), so that no outgoing
/// connection of another node can hold it between our choice and the node's bind.
fn pick_port(rng: &mut Rng, taken: &mut BTreeSet<u16>) -> u16 {
    loop {
        let port = 20_000 + (rng.below(12_000) as u16);
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
}

/// The nodes and the links between them.
pub struct Cluster {
    /// Node `i + 1` is `nodes[i]`.
    pub nodes: Vec<Node>,
    /// `(from, to)` -> the proxy `from` dials `to` through.
    pub links: BTreeMap<(i32, i32), Link>,
}

impl Cluster {
    /// Write the configurations of `n` combined nodes under `dir` and start them all; returns
    /// once every node serves clients. `extra` is appended to every configuration.
    pub fn start(binary: &Path, dir: &Path, n: usize, extra: &str, rng: &mut Rng) -> anyhow::Result<Cluster> {
        if !binary.is_file() {
            bail!("no runnel binary at {} (build it: cargo build --release --bin runnel, or pass --runnel)", binary.display());
        }
        let mut taken = BTreeSet::new();
        let ids: Vec<i32> = (1..=n as i32).collect();
        let kafka: Vec<u16> = ids.iter().map(|_| pick_port(rng, &mut taken)).collect();
        let peer: Vec<u16> = ids.iter().map(|_| pick_port(rng, &mut taken)).collect();
        let mut links = BTreeMap::new();
        for &from in &ids {
            for &to in &ids {
                if from != to {
                    let target = SocketAddr::from(([127, 0, 0, 1], peer[(to - 1) as usize]));
                    links.insert((from, to), Link::start(from, to, target).context("start a link proxy")?);
                }
            }
        }
        let mut nodes = Vec::new();
        for &id in &ids {
            let i = (id - 1) as usize;
            let data = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&data)?;
            // This node reaches every other voter through its own link to it.
            let voters: Vec<String> =
                ids.iter().map(|&v| if v == id { format!("{v}@127.0.0.1:{}", peer[i]) } else { format!("{v}@{}", links[&(id, v)].address()) }).collect();
            let config = dir.join(format!("node-{id}.properties"));
            let text = format!(
                "node.id={id}\nprocess.roles=broker,controller\nlisteners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}\ncontroller.listener.names=CONTROLLER\ncontroller.quorum.voters={}\nlog.dirs={}\n{extra}\n",
                kafka[i],
                peer[i],
                voters.join(","),
                data.display()
            );
            std::fs::write(&config, text)?;
            nodes.push(Node {
                id,
                kafka_port: kafka[i],
                peer_port: peer[i],
                binary: binary.to_path_buf(),
                config,
                log_path: dir.join(format!("node-{id}.log")),
                child: None,
                paused: false,
            });
        }
        for node in &mut nodes {
            node.spawn()?;
        }
        // All at once (a node serves only once a quorum elected a controller), then each is
        // waited for, started again if its port was taken meanwhile.
        let deadline = Instant::now() + START_DEADLINE;
        for node in &mut nodes {
            if !node.wait_ready(deadline)? {
                node.start(deadline)?;
            }
        }
        Ok(Cluster { nodes, links })
    }

    /// Every node's Kafka address, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(Node::bootstrap).collect::<Vec<_>>().join(",")
    }

    /// Cut every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[i32], b: &[i32]) {
        for (&(from, to), link) in &self.links {
            if (a.contains(&from) && b.contains(&to)) || (b.contains(&from) && a.contains(&to)) {
                link.cut();
            }
        }
    }

    /// Node `id`'s process died (`true`) or is starting again (`false`): the links to it stop
    /// or start listening, so its peers see refused connects as they would dialing it directly.
    pub fn set_node_down(&self, id: i32, down: bool) {
        for (&(_, to), link) in &self.links {
            if to == id {
                link.set_target_down(down);
            }
        }
    }

    /// Heal every link.
    pub fn heal_links(&self) {
        for link in self.links.values() {
            link.heal();
        }
    }

    /// Bytes the cut links threw away over the run.
    pub fn dropped_bytes(&self) -> u64 {
        self.links.values().map(Link::dropped_bytes).sum()
    }
}
