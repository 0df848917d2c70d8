//! Separate process roles over real processes on 127.0.0.1: three controller-only nodes
//! (`process.roles=controller`, ids 1-3, the quorum) and three broker-only nodes
//! (`process.roles=broker`, ids 4-6, each with a Kafka listener and a `REPLICATION` node-to-node
//! listener), driven by librdkafka.
//!
//! An idempotent acks=all producer writes to an RF=3 topic (min.insync.replicas=2) while the
//! leader of partition 0 — a broker — is killed with SIGKILL and restarted *on another
//! replication port*, so the other brokers and the controllers must learn its new address from
//! its new registration before it can catch up; then the active controller is killed and
//! restarted. Afterwards every acknowledged record is consumed exactly once, at the offset it
//! was acknowledged with, in order per partition, and every partition's ISR is whole again.

mod common;

use common::load::{assert_consumed_exactly_once, block_on, client_config, Load};
use common::{free_port, TestCluster};
use kafka_protocol::messages::DescribeClusterRequest;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const TOPIC: &str = "split";
const PARTITIONS: i32 = 3;
const CONTROLLERS: usize = 3;
const BROKERS: usize = 3;

fn config(cluster: &TestCluster) -> ClientConfig {
    client_config(&cluster.bootstrap())
}

/// Poll `f` every 100 ms until it gives a value or `what` has taken too long.
fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Partition → (leader, ISR).
type Leadership = BTreeMap<i32, (i32, Vec<i32>)>;

/// (broker ids listed, leadership of the topic) from a Metadata request.
fn metadata(cluster: &TestCluster) -> Option<(BTreeSet<i32>, Leadership)> {
    let consumer: BaseConsumer = config(cluster).set("group.id", "unused").create().expect("consumer");
    let m = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(5)).ok()?;
    let brokers = m.brokers().iter().map(|b| b.id()).collect();
    let parts = m.topics().first()?.partitions().iter().map(|p| (p.id(), (p.leader(), p.isr().to_vec()))).collect();
    Some((brokers, parts))
}

/// The controller-only node that most recently became the active controller, from the logs
/// (the brokers do not name it: clients cannot reach it).
fn active_controller(cluster: &TestCluster) -> usize {
    poll("a controller to report itself active", Duration::from_secs(30), || {
        (0..CONTROLLERS)
            .filter_map(|i| {
                let log = cluster.nodes[i].log();
                // The log of this process's latest start only.
                let run = &log[log.rfind("==== test harness: starting").unwrap_or(0)..];
                run.lines().rev().find(|l| l.contains("active controller")).map(|l| (l.split_whitespace().next().unwrap_or("").to_string(), i))
            })
            .max()
            .map(|(_, i)| i)
    })
}

/// Rewrite node `i`'s `REPLICATION` listener to a fresh port; returns the new port.
fn move_replication_listener(cluster: &TestCluster, i: usize) -> u16 {
    let path = cluster.nodes[i].config_file().expect("a cluster node").to_path_buf();
    let text = std::fs::read_to_string(&path).expect("read config");
    let port = free_port();
    let moved: String = text
        .lines()
        .map(|l| match l.strip_prefix("listeners=") {
            Some(list) => {
                let entries: Vec<String> =
                    list.split(',').map(|e| if e.starts_with("REPLICATION://") { format!("REPLICATION://127.0.0.1:{port}") } else { e.to_string() }).collect();
                format!("listeners={}\n", entries.join(","))
            }
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(moved, text, "the config has a REPLICATION listener");
    std::fs::write(&path, moved).expect("write config");
    port
}

/// Three controller-only and three broker-only processes: controllers never appear as brokers,
/// and an idempotent acks=all producer loses nothing and duplicates nothing across a broker
/// kill -9 (restarted at a new replication address) and an active-controller kill -9.
#[test]
fn separate_roles_survive_broker_and_controller_kills() {
    let mut cluster = TestCluster::start_split(CONTROLLERS, BROKERS, "min.insync.replicas=2\ndefault.replication.factor=3");
    let brokers: BTreeSet<i32> = ((CONTROLLERS + 1) as i32..=(CONTROLLERS + BROKERS) as i32).collect();

    let admin: AdminClient<DefaultClientContext> = config(&cluster).create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = block_on(admin.create_topics(&[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3))], &options)).expect("create topics");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    // Only brokers are listed; replicas and leaders are brokers; the controller a client is
    // told about is a broker too (it forwards to the controller-only quorum).
    let (listed, parts) = poll("the topic's leaders", Duration::from_secs(30), || {
        metadata(&cluster).filter(|(_, p)| p.len() == PARTITIONS as usize && p.values().all(|(l, _)| *l > 0))
    });
    assert_eq!(listed, brokers, "Metadata lists exactly the broker-only nodes");
    for (p, (leader, isr)) in &parts {
        assert!(brokers.contains(leader), "partition {p} led by {leader}");
        assert!(isr.iter().all(|r| brokers.contains(r)), "partition {p} ISR {isr:?}");
    }
    // Asked of one broker, whose metadata may be a moment behind the one that answered above
    // (the last broker's unfencing not applied yet): it must come to list exactly the brokers.
    let addr = cluster.nodes[CONTROLLERS].bootstrap();
    let described = poll("DescribeCluster to list every broker", Duration::from_secs(30), || {
        let addr = addr.clone();
        let d = block_on(async move {
            let mut c = runnel::client::Client::connect(&addr).await?;
            c.send(DescribeClusterRequest::default(), 1).await
        })
        .expect("DescribeCluster");
        let listed: BTreeSet<i32> = d.brokers.iter().map(|b| b.broker_id.0).collect();
        assert!(listed.is_subset(&brokers), "DescribeCluster lists {listed:?}, not only brokers {brokers:?}");
        (listed == brokers).then_some(d)
    });
    assert!(brokers.contains(&described.controller_id.0), "DescribeCluster names broker {} as the controller", described.controller_id.0);

    let load = Load::start(&cluster.bootstrap(), TOPIC, PARTITIONS);
    let acked = || load.acked();
    let wait_acks = |n: usize| poll(&format!("{n} acknowledgements"), Duration::from_secs(60), || (acked() >= n).then_some(()));
    wait_acks(500);

    // 1. Kill the broker leading partition 0; restart it on another replication port.
    let leader = parts[&0].0;
    let index = (leader - 1) as usize;
    eprintln!("killing broker {leader}, the leader of partition 0");
    let killed_at = Instant::now();
    cluster.nodes[index].kill();
    poll("a produce to partition 0 acknowledged after its leader died", Duration::from_secs(30), || load.first_ack_after(0, killed_at));
    eprintln!("partition 0 accepted produces again {} ms after the kill", killed_at.elapsed().as_millis());
    wait_acks(acked() + 500);
    let port = move_replication_listener(&cluster, index);
    eprintln!("restarting broker {leader} with its replication listener on port {port}");
    cluster.nodes[index].restart();
    // It catches up only if its leaders answer it at the new address.
    poll("broker back in every ISR", Duration::from_secs(60), || {
        metadata(&cluster).filter(|(_, p)| p.values().all(|(_, isr)| isr.contains(&leader))).map(|_| ())
    });
    wait_acks(acked() + 300);

    // 2. Kill the active controller (a controller-only node) and restart it.
    let controller = active_controller(&cluster);
    eprintln!("killing the active controller: node {}", controller + 1);
    cluster.nodes[controller].kill();
    wait_acks(acked() + 500);
    cluster.nodes[controller].restart();
    wait_acks(acked() + 300);

    let acked = load.finish();
    assert_consumed_exactly_once(&cluster.bootstrap(), TOPIC, PARTITIONS, &acked);
}

/// A second process started with a `node.id` a live broker already holds is refused by the
/// controller (Kafka's DUPLICATE_BROKER_REGISTRATION: another incarnation's session is live)
/// and keeps retrying; the cluster goes on listing the original broker, unfenced and at its own
/// address, through two broker sessions. (The refusal goes to the node id, which the node
/// transport routes to the registered original, so the intruder itself sees its registrations
/// go unanswered; the controller logs each refusal, and the intruder warns after 5 s that it is
/// still unregistered, naming a duplicate node.id as a cause.)
#[test]
fn a_duplicate_node_id_is_refused() {
    // Broker-only ids (a voter's id could not be reused by a broker-only node at all).
    let cluster = TestCluster::start_split(CONTROLLERS, 2, "");
    let original = cluster.nodes[CONTROLLERS].bootstrap();
    let text = std::fs::read_to_string(cluster.nodes[CONTROLLERS].config_file().expect("config")).expect("read config");
    let voters = text.lines().find(|l| l.starts_with("controller.quorum.voters=")).expect("voters line");
    let dir = tempfile::tempdir().expect("dir");
    let (kafka, replication) = (free_port(), free_port());
    let config_path = dir.path().join("intruder.properties");
    std::fs::write(
        &config_path,
        format!(
            "node.id={}\nprocess.roles=broker\nlisteners=PLAINTEXT://127.0.0.1:{kafka},REPLICATION://127.0.0.1:{replication}\ninter.broker.listener.name=REPLICATION\ncontroller.listener.names=CONTROLLER\n{voters}\nlog.dirs={}\n",
            CONTROLLERS + 1,
            dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let log_path = dir.path().join("intruder.log");
    let log = std::fs::File::create(&log_path).expect("log");
    /// Killed on drop, so a failing assertion leaks no process.
    struct Intruder(std::process::Child);
    impl Drop for Intruder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut intruder = Intruder(
        std::process::Command::new(common::runnel_binary())
            .args(["server", "--config"])
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the intruder"),
    );
    let refusals = |cluster: &TestCluster| cluster.nodes[..CONTROLLERS].iter().map(|n| n.log().matches("refusing a registration").count()).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while refusals(&cluster) == 0 {
        assert!(
            Instant::now() < deadline,
            "the intruder was not refused; its log:\n{}",
            common::tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two broker sessions (1.5 s each): the original keeps its registration throughout.
    let watched = Instant::now();
    let consumer: BaseConsumer = config(&cluster).create().expect("consumer");
    while watched.elapsed() < Duration::from_secs(3) {
        let m = consumer.fetch_metadata(None, Duration::from_secs(5)).expect("metadata");
        let listed = m.brokers().iter().find(|b| b.id() == CONTROLLERS as i32 + 1).map(|b| format!("{}:{}", b.host(), b.port()));
        assert_eq!(listed.as_deref(), Some(original.as_str()), "broker {} must stay the original node, unfenced", CONTROLLERS + 1);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(intruder.0.try_wait().expect("intruder status").is_none(), "the intruder keeps retrying rather than exiting");
    // The intruder tells its operator why it is stuck.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log_path).unwrap_or_default().contains("still no registration") {
        assert!(Instant::now() < deadline, "the intruder never warned that it has no registration");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(intruder);
    let intruder_log = std::fs::read_to_string(&log_path).expect("log");
    assert!(!intruder_log.contains("registered with the controller"), "the intruder registered:\n{}", common::tail(&intruder_log, 30));
    eprintln!("the controller refused the intruder {} times", refusals(&cluster));
}

/// DescribeQuorum through a broker (kafka-python's `describe_metadata_quorum`, the request
/// `kafka-metadata-quorum.sh describe` sends; `tests/python/quorum.py`): the broker forwards it
/// to the active controller, which names itself leader, the three voters with their log ends and
/// fetch times, and the two broker-only nodes as observers. After the active controller is
/// killed with SIGKILL, the new one answers, in a later epoch, with the dead voter not heard
/// from in it. Another partition than `__cluster_metadata`-0 is UNKNOWN_TOPIC_OR_PARTITION.
/// `runnel quorum` (with and without `--replication`) prints the same.
#[test]
fn describe_quorum_names_the_leader_voters_and_observers() {
    let Some(python) = common::python("describe_quorum_names_the_leader_voters_and_observers") else { return };
    let mut cluster = TestCluster::start_split(CONTROLLERS, 2, "");
    let voters = (1..=CONTROLLERS).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let observers = format!("{},{}", CONTROLLERS + 1, CONTROLLERS + 2);
    let run = |cluster: &TestCluster, leader: usize, extra: &[String]| {
        let mut args = vec![
            "--bootstrap".to_string(),
            cluster.bootstrap(),
            "--voters".to_string(),
            voters.clone(),
            "--observers".to_string(),
            observers.clone(),
            "--leader".to_string(),
            (leader + 1).to_string(),
        ];
        args.extend_from_slice(extra);
        common::run_python_script(&python, "quorum.py", &args, Duration::from_secs(120));
    };
    // `runnel quorum` prints what kafka-metadata-quorum.sh does.
    let cli = |cluster: &TestCluster, leader: usize| {
        let status = common::run_cli(&["quorum", "--bootstrap-server", &cluster.bootstrap()], b"", Duration::from_secs(30)).success("runnel quorum");
        for line in
            [format!("LeaderId:               {}", leader + 1), format!("CurrentVoters:          [{voters}]"), format!("CurrentObservers:       [{observers}]")]
        {
            assert!(status.stdout.lines().any(|l| l == line), "no line {line:?} in:\n{}", status.stdout);
        }
        let table = common::run_cli(&["quorum", "--replication", "--bootstrap-server", &cluster.bootstrap()], b"", Duration::from_secs(30))
            .success("runnel quorum --replication");
        let roles: Vec<(i32, String)> = table
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.first()?.parse().ok()?, cols.last()?.to_string()))
            })
            .collect();
        let mut expected = vec![(leader as i32 + 1, "Leader".to_string())];
        expected.extend((1..=CONTROLLERS as i32).filter(|i| *i != leader as i32 + 1).map(|i| (i, "Follower".to_string())));
        expected.extend([(CONTROLLERS as i32 + 1, "Observer".to_string()), (CONTROLLERS as i32 + 2, "Observer".to_string())]);
        assert_eq!(roles, expected, "{}", table.stdout);
    };
    let first = active_controller(&cluster);
    run(&cluster, first, &[]);
    cli(&cluster, first);
    eprintln!("killing the active controller: node {}", first + 1);
    cluster.nodes[first].kill();
    let second = poll("another controller to become active", Duration::from_secs(30), || {
        let now = active_controller(&cluster);
        (now != first).then_some(now)
    });
    run(&cluster, second, &["--killed".to_string(), (first + 1).to_string(), "--min-epoch".to_string(), "2".to_string()]);
    cli(&cluster, second);
}
