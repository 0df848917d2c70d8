//! Starting the real `runnel` binary for integration tests (and the load generator).
//!
//! A [`TestBroker`] is one `runnel standalone` process on a free 127.0.0.1 port with its own
//! data directory (a fresh `TempDir`, or a directory the caller owns so that a test can restart
//! the node over the same data). It is ready once it answers an ApiVersions request on its port,
//! polled with a bounded deadline, never a fixed sleep. Its stderr (the broker log) goes to a
//! file under the target directory that survives the test; when a test panics the log's tail is
//! printed next to the panic. `kill()` is SIGKILL — a crash, not a shutdown — and `Drop` kills
//! too, so a failed test never leaks a broker.

#![allow(dead_code)] // each test crate uses its own subset of these helpers

pub mod load;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a broker may take to start (or to recover its log after a crash) before the test
/// fails. Generous: debug builds on two shared cores are slow.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// The `runnel` binary cargo built for this test crate.
pub fn runnel_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runnel"))
}

/// Where broker logs are kept: cargo's per-target scratch directory, so they outlive the test.
fn log_directory() -> PathBuf {
    let dir = option_env!("CARGO_TARGET_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join("runnel-test-logs");
    std::fs::create_dir_all(&dir).expect("create log directory");
    dir
}

/// A port that was free a moment ago, below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, from 32768 by default). A port from that range (what binding
/// port 0 gives) can be taken, before the node that is to listen on it starts, as the local end
/// of some outgoing connection, and a node-to-node connection keeps it for the whole test: the
/// node could then never start. Ports below the range are only ever taken by listeners. Each
/// call in this process gives another port (a seeded walk over the range).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(32768);
    const LOW: u64 = 20_000;
    if ephemeral <= LOW + 1000 {
        return TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port();
    }
    let span = ephemeral - LOW;
    // One starting point per process, so that the calls walk the range without repeating.
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
        (std::process::id() as u64).wrapping_mul(2_654_435_761).wrapping_add(nanos)
    });
    loop {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        // Steps of a prime: unless the span is a multiple of it, the walk visits every port.
        let port = (LOW + (start.wrapping_add(n.wrapping_mul(7919))) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// When a started process counts as ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// It answers ApiVersions on `port` (a broker serving clients).
    Kafka,
    /// It accepts TCP connections on `port` (a controller-only node's node-to-node listener).
    Listening,
}

/// One running (or killed) `runnel standalone` or `runnel server` process.
pub struct TestBroker {
    child: Option<Child>,
    binary: PathBuf,
    /// The port clients connect to (a controller-only node: its controller port); the same
    /// across restarts.
    pub port: u16,
    /// What "started" means for this process.
    pub readiness: Readiness,
    data_dir: PathBuf,
    /// Owns the data directory when the broker made it itself.
    data_dir_guard: Option<tempfile::TempDir>,
    log_path: PathBuf,
    /// `runnel server --config FILE` instead of `standalone` (cluster nodes).
    config_file: Option<PathBuf>,
}

impl TestBroker {
    /// Start the test crate's binary on a free port with a fresh data directory.
    pub fn start() -> TestBroker {
        let temp = tempfile::Builder::new().prefix("runnel-data-").tempdir().expect("create data dir");
        let data = temp.path().to_path_buf();
        let mut broker = TestBroker::spawn(runnel_binary(), data, free_port());
        broker.data_dir_guard = Some(temp);
        broker
    }

    /// Start the test crate's binary on a free port over `data_dir`, which the caller owns.
    pub fn start_in(data_dir: &Path) -> TestBroker {
        TestBroker::spawn(runnel_binary(), data_dir.to_path_buf(), free_port())
    }

    /// Start `binary` (e.g. a release build) on a free port with a fresh data directory.
    pub fn start_binary(binary: &Path) -> TestBroker {
        let temp = tempfile::Builder::new().prefix("runnel-data-").tempdir().expect("create data dir");
        let mut broker = TestBroker::spawn(binary.to_path_buf(), temp.path().to_path_buf(), free_port());
        broker.data_dir_guard = Some(temp);
        broker
    }

    fn spawn(binary: PathBuf, data_dir: PathBuf, port: u16) -> TestBroker {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let log_path = log_directory().join(format!("runnel-{}-{}-{port}.log", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed)));
        let mut broker = TestBroker { child: None, binary, port, readiness: Readiness::Kafka, data_dir, data_dir_guard: None, log_path, config_file: None };
        broker.launch(true);
        broker
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file the broker's stderr goes to (appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The broker log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log of the latest start only.
    fn last_run_log(&self) -> String {
        let log = self.log();
        let start = log.rfind("==== test harness: starting").unwrap_or(0);
        log[start..].to_string()
    }

    /// Start the process and wait until it answers. If the port is taken, a first start moves
    /// to another free port and a restart (which must keep its port) tries again.
    fn launch(&mut self, fresh: bool) {
        assert!(self.child.is_none(), "broker on port {} is already running", self.port);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let mut log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open broker log");
            writeln!(log, "==== test harness: starting {} on port {} over {}", self.binary.display(), self.port, self.data_dir.display())
                .expect("write broker log");
            let mut command = Command::new(&self.binary);
            match &self.config_file {
                Some(f) => command.arg("server").arg("--config").arg(f),
                None => command.arg("standalone").arg("--data-dir").arg(&self.data_dir).arg("--listen").arg(self.bootstrap()),
            };
            let mut child = command
                .env("NO_COLOR", "1") // plain text in the log file
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
            match wait_until_ready(&mut child, self.port, self.readiness, deadline) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(Exit(status)) if Instant::now() < deadline && self.last_run_log().contains("cannot listen") => {
                    if fresh {
                        // Another process took the port between `free_port` and our bind.
                        self.port = free_port();
                    } else {
                        // A restart: the old process's socket may still be closing.
                        eprintln!("broker exited ({status}) because port {} is still held; retrying", self.port);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                Err(Exit(status)) => panic!("broker exited during startup ({status}); log {}:\n{}", self.log_path.display(), tail(&self.log(), 40)),
                Err(Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "broker did not answer on port {} within {START_DEADLINE:?}; log {}:\n{}",
                        self.port,
                        self.log_path.display(),
                        tail(&self.log(), 40)
                    );
                }
            }
        }
    }

    /// SIGKILL the process (a crash: nothing is flushed) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let mut log = OpenOptions::new().append(true).open(&self.log_path).expect("open broker log");
            let _ = writeln!(log, "==== test harness: SIGKILLed");
        }
    }

    /// Start again on the same port and data directory (after `kill`, or killing it first).
    pub fn restart(&mut self) {
        self.kill();
        self.launch(false);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- broker log {} (last 60 lines) ----\n{}", self.log_path.display(), tail(&self.log(), 60));
        }
        self.kill();
    }
}

/// Why a broker did not become ready.
enum NotReady {
    Exit(ExitStatus),
    Timeout,
}
use NotReady::{Exit, Timeout};

/// Poll until the process on `port` is ready, exits, or `deadline` passes. For a broker, a
/// bound listener alone is not enough: it must answer an ApiVersions v0 request (log recovery
/// may still be running, and it serves only once registered and unfenced).
fn wait_until_ready(child: &mut Child, port: u16, readiness: Readiness, deadline: Instant) -> Result<(), NotReady> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut pause = Duration::from_millis(5);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Exit(status));
        }
        let ready = match readiness {
            Readiness::Kafka => api_versions_answered(&addr),
            Readiness::Listening => TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok(),
        };
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Timeout);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

use runnel_jepsen::cluster::api_versions_answered;

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a finished CLI invocation printed.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Panic with both streams unless the command succeeded.
    pub fn success(self, what: &str) -> CliOutput {
        assert!(self.status.success(), "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}", self.status, self.stdout, self.stderr);
        self
    }
}

/// Run `runnel <args>` with `stdin` as standard input; killed (and the test failed) after
/// `timeout`, so a hanging command cannot hang the suite.
pub fn run_cli(args: &[&str], stdin: &[u8], timeout: Duration) -> CliOutput {
    let mut child = Command::new(runnel_binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runnel CLI");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin); // closing `input` is the EOF
    });
    let stdout = read_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_in_background(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for CLI") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`runnel {}` did not finish within {timeout:?}; stderr:\n{}", args.join(" "), stderr.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    CliOutput { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// Append a note to a broker log, so that its lines can be matched with the test's steps.
pub fn append_note(path: &Path, note: &str) {
    if let Ok(mut f) = OpenOptions::new().append(true).open(path) {
        let _ = writeln!(f, "==== test: {note}");
    }
}

impl TestBroker {
    /// The broker process id, while it runs.
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// A cluster of `runnel server` processes on 127.0.0.1, each with its own data directory under
/// one temporary root: combined broker+controller nodes, every one a voter ([`TestCluster::start`]),
/// or controller-only voters and broker-only nodes ([`TestCluster::start_split`]).
pub struct TestCluster {
    /// The nodes; node `i + 1` is `nodes[i]`.
    pub nodes: Vec<TestBroker>,
    _root: tempfile::TempDir,
}

/// Node `id` of a cluster, not started yet: `text` written to its `config` file, its log file
/// named after `kind`.
fn cluster_node(kind: &str, id: usize, config: PathBuf, text: &str, data: PathBuf, port: u16, readiness: Readiness) -> TestBroker {
    std::fs::write(&config, text).expect("write config");
    static SERIAL: AtomicUsize = AtomicUsize::new(0);
    let log_path = log_directory().join(format!("runnel-{kind}-{}-{}-node{id}.log", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed)));
    TestBroker { child: None, binary: runnel_binary(), port, readiness, data_dir: data, data_dir_guard: None, log_path, config_file: Some(config) }
}

impl TestCluster {
    /// Start `n` nodes with the extra `server.properties` lines `extra`, and wait until every
    /// node serves clients (a quorum elected a controller and every broker is unfenced).
    pub fn start(n: usize, extra: &str) -> TestCluster {
        let root = tempfile::Builder::new().prefix("runnel-cluster-").tempdir().expect("create cluster dir");
        let kafka: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peer: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let voters: Vec<String> = (0..n).map(|i| format!("{}@127.0.0.1:{}", i + 1, peer[i])).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let data = root.path().join(format!("node-{}", i + 1));
            std::fs::create_dir_all(&data).expect("node dir");
            let config = root.path().join(format!("node-{}.properties", i + 1));
            let text = format!(
                "node.id={}\nprocess.roles=broker,controller\nlisteners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}\ncontroller.listener.names=CONTROLLER\ncontroller.quorum.voters={}\nlog.dirs={}\n{extra}\n",
                i + 1,
                kafka[i],
                peer[i],
                voters.join(","),
                data.display()
            );
            nodes.push(cluster_node("cluster", i + 1, config, &text, data, kafka[i], Readiness::Kafka));
        }
        TestCluster::launch(nodes, root)
    }

    /// Start every node, then wait until each is ready.
    fn launch(mut nodes: Vec<TestBroker>, root: tempfile::TempDir) -> TestCluster {
        for node in &mut nodes {
            node.spawn_only();
        }
        let deadline = Instant::now() + START_DEADLINE;
        for node in &mut nodes {
            // A port picked by `free_port` can be taken meanwhile as the local end of another
            // node's outgoing connection: start again (same port, as every node's config names
            // it) until it is free or the deadline passes.
            while !node.wait_ready(deadline) {
                std::thread::sleep(Duration::from_millis(100));
                node.spawn_only();
            }
        }
        TestCluster { nodes, _root: root }
    }

    /// Start `controllers` controller-only nodes (ids 1..=controllers, the voters) and
    /// `brokers` broker-only nodes after them, each broker with a Kafka listener and a
    /// `REPLICATION` node-to-node listener, with the extra `server.properties` lines `extra` on
    /// the brokers; wait until every controller listens and every broker serves clients.
    pub fn start_split(controllers: usize, brokers: usize, extra: &str) -> TestCluster {
        let root = tempfile::Builder::new().prefix("runnel-cluster-").tempdir().expect("create cluster dir");
        let n = controllers + brokers;
        let peer: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let voters: Vec<String> = (0..controllers).map(|i| format!("{}@127.0.0.1:{}", i + 1, peer[i])).collect();
        let mut nodes = Vec::new();
        for (i, &node_port) in peer.iter().enumerate() {
            let id = i + 1;
            let data = root.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&data).expect("node dir");
            let config = root.path().join(format!("node-{id}.properties"));
            let common =
                format!("node.id={id}\ncontroller.listener.names=CONTROLLER\ncontroller.quorum.voters={}\nlog.dirs={}\n", voters.join(","), data.display());
            let (port, readiness, text) = if i < controllers {
                (node_port, Readiness::Listening, format!("{common}process.roles=controller\nlisteners=CONTROLLER://127.0.0.1:{node_port}\n"))
            } else {
                let kafka = free_port();
                let text = format!(
                    "{common}process.roles=broker\nlisteners=PLAINTEXT://127.0.0.1:{kafka},REPLICATION://127.0.0.1:{node_port}\ninter.broker.listener.name=REPLICATION\n{extra}\n"
                );
                (kafka, Readiness::Kafka, text)
            };
            nodes.push(cluster_node("split", id, config, &text, data, port, readiness));
        }
        TestCluster::launch(nodes, root)
    }

    /// Every broker's address, for `bootstrap.servers` (controller-only nodes serve no clients).
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().filter(|n| n.readiness == Readiness::Kafka).map(|n| n.bootstrap()).collect::<Vec<_>>().join(",")
    }
}

impl TestBroker {
    /// Start the process without waiting for it to serve.
    fn spawn_only(&mut self) {
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open broker log");
        writeln!(log, "==== test harness: starting node on port {}", self.port).expect("write broker log");
        let mut command = Command::new(&self.binary);
        command.arg("server").arg("--config").arg(self.config_file.as_ref().expect("a cluster node"));
        let child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// The `server.properties` file of a cluster node.
    pub fn config_file(&self) -> Option<&Path> {
        self.config_file.as_deref()
    }

    /// Wait until a process started by `spawn_only` is ready (see [`Readiness`]). False if it
    /// exited because a port it listens on was taken meanwhile (start it again, as `launch` does);
    /// any other failure panics.
    fn wait_ready(&mut self, deadline: Instant) -> bool {
        let port = self.port;
        let readiness = self.readiness;
        let child = self.child.as_mut().expect("started");
        match wait_until_ready(child, port, readiness, deadline) {
            Ok(()) => true,
            Err(Exit(_)) if Instant::now() < deadline && self.last_run_log().contains("cannot listen") => false,
            Err(Exit(status)) => panic!("node exited during startup ({status}); log {}:\n{}", self.log_path.display(), tail(&self.log(), 40)),
            Err(Timeout) => panic!("node on port {port} did not serve within {START_DEADLINE:?}; log {}:\n{}", self.log_path.display(), tail(&self.log(), 40)),
        }
    }
}

/// The repository's `.venv/bin/python` (made by `.ci/run`), or None when it is missing and `CI`
/// is not set: the caller then skips, saying so on stderr. With `CI` set a missing venv fails.
pub fn python(test: &str) -> Option<PathBuf> {
    let python = repository_root().join(".venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(std::env::var_os("CI").is_none(), "{} is missing and CI is set: run `bash .ci/run` (it creates the venv)", python.display());
    // Straight to the stderr handle, not eprintln!: the harness would capture (hide) that.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: {} is missing (create it with `bash .ci/run`, or python3 -m venv .venv && .venv/bin/pip install kafka-python confluent-kafka lz4 zstandard)",
        python.display()
    );
    None
}

/// The checkout running the test, as cargo tells it at run time: a test binary reused from a
/// shared target directory was compiled in another checkout, whose path env! would bake in.
pub fn repository_root() -> PathBuf {
    std::env::var("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Run `tests/python/<script>` with `python` and `args`; fail the test if it runs longer than
/// `deadline`, exits non-zero, or prints no `, 0 failed` summary. Its output is printed.
pub fn run_python_script(python: &Path, script: &str, args: &[String], deadline: Duration) {
    let started = Instant::now();
    let mut child = Command::new(python)
        .arg(repository_root().join("tests/python").join(script))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let stdout = read_in_background(child.stdout.take().expect("piped"));
    let stderr = read_in_background(child.stderr.take().expect("piped"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{script} did not finish within {deadline:?}:\n{}", stdout.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    println!("{stdout}");
    eprintln!("{script} took {:?}", started.elapsed());
    assert!(status.success(), "{script} failed ({status}):\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(", 0 failed"), "no summary line:\n{stdout}");
}

/// Read `r` to its end on a thread of its own (so a child's two pipes cannot block each other).
fn read_in_background(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}
