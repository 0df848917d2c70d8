//! A 3-node cluster of real `runnel server` processes on 127.0.0.1 (combined broker+controller
//! nodes, node-to-node traffic over the bincode/crc32fast transport), driven by librdkafka.
//!
//! The failover test runs an idempotent acks=all producer (RF=3, min.insync.replicas=2) while
//! the leader of partition 0 is killed with SIGKILL and restarted, and then the active controller
//! is killed and restarted. Afterwards every acknowledged record must be consumed exactly once,
//! at the offset it was acknowledged with, in order per partition. It prints the failover time:
//! from the kill to the first acknowledgement of a record sent to the killed leader's partition,
//! and checks that the killed node was fenced because its address refused connections, not at
//! the end of its session.
//!
//! The snapshot test runs the quorum with a tiny `metadata.log.max.record.bytes.between.snapshots`:
//! the voters write checkpoints and compact the metadata log while one node is down, and the
//! node comes back through the leader's snapshot and, restarted again, from its own checkpoint.

mod common;

use common::load::{assert_consumed_exactly_once, block_on, client_config, Load};
use common::TestCluster;
use kafka_protocol::messages::{DescribeClusterRequest, MetadataRequest};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::{Duration, Instant};

const TOPIC: &str = "failover";
const PARTITIONS: i32 = 3;

fn config(cluster: &TestCluster) -> ClientConfig {
    client_config(&cluster.bootstrap())
}

/// Create `topic` with `partitions` partitions, three replicas each.
fn create_rf3_topic(cluster: &TestCluster, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = config(cluster).create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = block_on(admin.create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(3))], &options)).expect("create topics");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
}

/// The leader of `partition` as the cluster reports it.
fn leader_of(cluster: &TestCluster, partition: i32) -> i32 {
    leader_of_topic(cluster, TOPIC, partition)
}

/// The leader of `topic`'s `partition` as the cluster reports it.
fn leader_of_topic(cluster: &TestCluster, topic: &str, partition: i32) -> i32 {
    let consumer: BaseConsumer = config(cluster).set("group.id", "unused").create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(p) = m.topics().first().and_then(|t| t.partitions().iter().find(|p| p.id() == partition)) {
                if p.leader() > 0 {
                    return p.leader();
                }
            }
        }
        assert!(Instant::now() < deadline, "partition {partition} has no leader");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The active controller, from DescribeCluster on a live node.
fn active_controller(cluster: &TestCluster, skip: Option<usize>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, n) in cluster.nodes.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let addr = n.bootstrap();
            let got = block_on(async move {
                let mut c = runnel::client::Client::connect(&addr).await?;
                c.send(DescribeClusterRequest::default(), 1).await
            });
            if let Ok(r) = got {
                if r.controller_id.0 > 0 {
                    return r.controller_id.0;
                }
            }
        }
        assert!(Instant::now() < deadline, "no active controller reported");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Leader kill -9 and restart, then controller kill -9 and restart, under an idempotent acks=all
/// producer: every acknowledged record is consumed exactly once, at its offset, in order.
#[test]
fn failover_loses_no_acknowledged_record() {
    let mut cluster = TestCluster::start(3, "min.insync.replicas=2\ndefault.replication.factor=3");
    create_rf3_topic(&cluster, TOPIC, PARTITIONS);

    let load = Load::start(&cluster.bootstrap(), TOPIC, PARTITIONS);
    let wait_acks = |n: usize| load.wait_acks(n);
    wait_acks(500);

    // 1. Kill the leader of partition 0.
    let leader = leader_of(&cluster, 0);
    eprintln!("killing the leader of partition 0: node {leader}");
    let killed_at = Instant::now();
    cluster.nodes[(leader - 1) as usize].kill();
    let before = load.acked();
    let deadline = Instant::now() + Duration::from_secs(30);
    let failover = loop {
        if let Some(at) = load.first_ack_after(0, killed_at) {
            break at - killed_at;
        }
        assert!(Instant::now() < deadline, "partition 0 never accepted a produce after its leader died");
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("FAILOVER leader kill -> first acknowledged produce on its partition: {} ms", failover.as_millis());
    // The controller did not wait out the dead broker's session: the refused reconnect fenced it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.nodes.iter().any(|n| n.log().contains("its node-to-node address refuses connections")) {
        assert!(Instant::now() < deadline, "no controller fenced the killed node on a refused connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_acks(before + 500);
    cluster.nodes[(leader - 1) as usize].restart();

    // 2. Kill the active controller.
    let controller = active_controller(&cluster, None);
    eprintln!("killing the active controller: node {controller}");
    cluster.nodes[(controller - 1) as usize].kill();
    let n = load.acked();
    wait_acks(n + 500);
    let other = active_controller(&cluster, Some((controller - 1) as usize));
    assert_ne!(other, controller, "a new controller took over");
    cluster.nodes[(controller - 1) as usize].restart();
    let n = load.acked();
    wait_acks(n + 300);

    let acked = load.finish();
    assert_consumed_exactly_once(&cluster.bootstrap(), TOPIC, PARTITIONS, &acked);
}

/// Topic names a node reports in Metadata (all topics), asking that node only.
fn topics_on(node: &common::TestBroker) -> Option<Vec<String>> {
    let addr = node.bootstrap();
    let response = block_on(async move {
        let mut c = runnel::client::Client::connect(&addr).await?;
        c.send(MetadataRequest::default().with_topics(None), 12).await
    })
    .ok()?;
    Some(response.topics.iter().filter(|t| t.error_code == 0).filter_map(|t| t.name.as_ref().map(|n| n.to_string())).collect())
}

/// The checkpoint files in a node's metadata log directory.
fn checkpoints(node: &common::TestBroker) -> Vec<String> {
    let dir = node.data_dir().join("__cluster_metadata-0");
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
    names.retain(|n| n.ends_with(".checkpoint"));
    names.sort();
    names
}

/// Metadata snapshots on real processes and files: with a snapshot every 1 KiB of committed
/// metadata, topics are created while node 3 is down; the live voters keep at most two
/// checkpoints; node 3, restarted, catches up (through the leader's snapshot, which it persists)
/// and reports every topic; killed and restarted again, it starts from its checkpoint.
#[test]
fn metadata_snapshots_catch_up_a_restarted_node() {
    const TOPICS: usize = 40;
    let mut cluster = TestCluster::start(3, "metadata.log.max.record.bytes.between.snapshots=1024\ndefault.replication.factor=2");
    cluster.nodes[2].kill();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", format!("{},{}", cluster.nodes[0].bootstrap(), cluster.nodes[1].bootstrap())).set("broker.address.family", "v4");
    let admin: AdminClient<DefaultClientContext> = c.create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let names: Vec<String> = (0..TOPICS).map(|i| format!("snap-{i:02}")).collect();
    for chunk in names.chunks(5) {
        let new: Vec<NewTopic> = chunk.iter().map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(2))).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let created = block_on(admin.create_topics(&new, &options)).expect("create topics");
            // A retry after a controller change may find the topic already made.
            if created.iter().all(|r| r.is_ok() || matches!(r, Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)))) {
                break;
            }
            assert!(Instant::now() < deadline, "topics not created: {created:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for node in &cluster.nodes[..2] {
        // Two are kept; a third exists between a new checkpoint's rename and the old one's
        // deletion.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let cps = checkpoints(node);
            if !cps.is_empty() && cps.len() <= 2 {
                break;
            }
            assert!(Instant::now() < deadline, "node data {}: checkpoints {cps:?}", node.data_dir().display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    cluster.nodes[2].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = topics_on(&cluster.nodes[2]).unwrap_or_default();
        if names.iter().all(|n| seen.contains(n)) {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 reports {} of {TOPICS} topics", names.iter().filter(|n| seen.contains(n)).count());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!checkpoints(&cluster.nodes[2]).is_empty(), "node 3 persisted no checkpoint");
    assert!(cluster.nodes[2].log().contains("installing the leader's metadata snapshot"), "node 3 was not caught up by a snapshot");

    cluster.nodes[2].restart();
    let log = cluster.nodes[2].log();
    let last_run = &log[log.rfind("==== test harness: starting").unwrap_or(0)..];
    let loaded_from = last_run.split("metadata log loaded checkpoint=").nth(1).and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok());
    assert!(loaded_from.is_some_and(|i| i > 0), "node 3 did not start from a checkpoint: {loaded_from:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = topics_on(&cluster.nodes[2]).unwrap_or_default();
        if names.iter().all(|n| seen.contains(n)) {
            break;
        }
        assert!(Instant::now() < deadline, "after a restart from its checkpoint node 3 reports {} of {TOPICS} topics", seen.len());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `metadata.log.max.snapshot.interval.ms` on real processes: far below the size threshold
/// (Kafka's 20 MiB), every voter writes a checkpoint once the interval has passed with records
/// committed (the registrations, a topic).
#[test]
fn metadata_snapshots_on_interval() {
    let cluster = TestCluster::start(3, "metadata.log.max.snapshot.interval.ms=1000\nmin.insync.replicas=1");
    create_rf3_topic(&cluster, "interval", 1);
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        while checkpoints(node).is_empty() {
            assert!(Instant::now() < deadline, "node data {}: no checkpoint within 30 s", node.data_dir().display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A broker stops sending clients to a broker whose process is gone. Two of three nodes are
/// killed, so the quorum cannot fence them; but the survivor's connects to both are refused,
/// and its Metadata leaves them out and reports the partitions they led without a leader
/// (LEADER_NOT_AVAILABLE), so clients keep asking instead of waiting on a dead leader.
#[test]
fn metadata_leaves_out_brokers_that_refuse_connections() {
    const TOPIC: &str = "refused";
    let mut cluster = TestCluster::start(3, "min.insync.replicas=1");
    create_rf3_topic(&cluster, TOPIC, 6);
    let leaders: Vec<i32> = (0..6).map(|p| common::load::leader_of(&cluster.bootstrap(), TOPIC, p)).collect();
    assert!(leaders.iter().any(|l| *l != 1), "node 1 leads every partition ({leaders:?}): nothing to check");
    let addr = cluster.nodes[0].bootstrap();
    // Node 1's Metadata: brokers, and (leader, error) of each partition of the topic.
    let ask = || {
        let a = addr.clone();
        block_on(async move {
            let mut c = runnel::client::Client::connect(&a).await?;
            let topic = kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(kafka_protocol::messages::TopicName(kafka_protocol::protocol::StrBytes::from_static_str(TOPIC))));
            c.send(MetadataRequest::default().with_topics(Some(vec![topic])), 12).await
        })
        .map(|m| {
            let brokers: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
            let parts: Vec<(i32, i16)> = m.topics.first().map(|t| t.partitions.iter().map(|p| (p.leader_id.0, p.error_code)).collect()).unwrap_or_default();
            (brokers, parts)
        })
    };
    // Node 1 has applied the topic and its leaders before the others die (with them, the quorum).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ask().is_ok_and(|(_, parts)| parts.iter().map(|(l, _)| *l).collect::<Vec<_>>() == leaders) {
        assert!(Instant::now() < deadline, "node 1 does not know the topic's leaders {leaders:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = ask();
        if let Ok((brokers, parts)) = answer {
            let hidden = parts.len() == 6 && parts.iter().zip(&leaders).all(|((l, e), was)| if *was == 1 { (*l, *e) == (1, 0) } else { (*l, *e) == (-1, 5) });
            if brokers == [1] && hidden {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node 1 still names dead brokers: brokers {brokers:?}, partitions (leader, error) {parts:?}, leaders before {leaders:?}"
            );
        } else {
            assert!(Instant::now() < deadline, "node 1 does not answer Metadata: {answer:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The brokers node `node` lists in DescribeCluster (sorted) and the controller it names.
fn describe_cluster(node: &common::TestBroker) -> Option<(Vec<i32>, i32)> {
    let addr = node.bootstrap();
    let r = block_on(async move {
        let mut c = runnel::client::Client::connect(&addr).await?;
        c.send(DescribeClusterRequest::default(), 1).await
    })
    .ok()?;
    let mut brokers: Vec<i32> = r.brokers.iter().map(|b| b.broker_id.0).collect();
    brokers.sort_unstable();
    Some((brokers, r.controller_id.0))
}

/// The active controller dies, three times over (restarted in between): the two survivors
/// elect one of them and both keep their registration. Neither is fenced for missed heartbeats
/// while it looks for the new controller; a broker that circled between its own voter and the
/// dead one did not find it and was fenced 1.5 s after the election, for good.
#[test]
fn survivors_stay_registered_when_the_controller_dies() {
    let mut cluster = TestCluster::start(3, "");
    for round in 1..=3 {
        // Settled: every node lists all three brokers and names the same active controller.
        let deadline = Instant::now() + Duration::from_secs(30);
        let dead = loop {
            let views: Vec<Option<(Vec<i32>, i32)>> = cluster.nodes.iter().map(describe_cluster).collect();
            if let Some(Some((brokers, controller))) = views.first() {
                if *brokers == [1, 2, 3] && *controller > 0 && views.iter().all(|v| v.as_ref() == Some(&(vec![1, 2, 3], *controller))) {
                    break *controller;
                }
            }
            assert!(Instant::now() < deadline, "round {round}: the cluster did not settle: {views:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!("round {round}: killing the active controller, node {dead}");
        let killed = Instant::now();
        cluster.nodes[(dead - 1) as usize].kill();
        let survivors: Vec<i32> = (1..=3).filter(|n| *n != dead).collect();
        // The new active controller, as it says itself.
        let deadline = Instant::now() + Duration::from_secs(30);
        let new = loop {
            let named = survivors.iter().copied().find(|s| describe_cluster(&cluster.nodes[(*s - 1) as usize]).is_some_and(|(_, c)| c == *s));
            if let Some(c) = named {
                break c;
            }
            assert!(Instant::now() < deadline, "round {round}: no survivor became the active controller");
            std::thread::sleep(Duration::from_millis(10));
        };
        eprintln!("round {round}: node {new} is the active controller {} ms after the kill", killed.elapsed().as_millis());
        // Through more than two sessions (broker.session.timeout.ms is 1.5 s) after the election,
        // the new controller lists both survivors: neither was fenced.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let listed = describe_cluster(&cluster.nodes[(new - 1) as usize]).map(|(b, _)| b);
            assert_eq!(listed, Some(survivors.clone()), "round {round}: the new controller, node {new}, lists these brokers");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.nodes[(dead - 1) as usize].restart();
    }
}

/// `request` as a size-prefixed frame (request header with client id).
fn request_frame<R: kafka_protocol::protocol::Request>(request: R, version: i16, correlation_id: i32) -> Vec<u8> {
    use kafka_protocol::protocol::Encodable;
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_static_str("crash-test")));
    let mut body = bytes::BytesMut::new();
    header.encode(&mut body, R::header_version(version)).expect("encode header");
    request.encode(&mut body, version).expect("encode request");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Read one response to a request `R` at `version` from a blocking stream.
fn read_response<R: kafka_protocol::protocol::Request>(stream: &mut std::net::TcpStream, version: i16) -> R::Response {
    use kafka_protocol::protocol::{Decodable, HeaderVersion};
    use std::io::Read;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("response size");
    let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).expect("response body");
    let mut body = bytes::Bytes::from(body);
    kafka_protocol::messages::ResponseHeader::decode(&mut body, <R::Response as HeaderVersion>::header_version(version)).expect("response header");
    R::Response::decode(&mut body, version).expect("response")
}

/// Send a signal (`-STOP`, `-CONT`) to process `pid`.
fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill").arg(which).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill {which} {pid}: {status}");
}

/// Whether process `pid` is stopped (state `T` in /proc).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T')))
}

/// A Metadata request that a node finds together with the closure of its connection to a
/// broker that was just SIGKILLed (the node is stopped meanwhile, so both wait for it) is
/// answered without that broker: the node checks which node-to-node connections the kernel
/// knows closed before it answers, instead of racing its own transport. librdkafka asks for
/// Metadata the moment it loses its connection to a leader and keeps the first leader it is
/// told, so an answer naming the dead one cost it a second or two.
#[test]
fn metadata_answered_at_the_moment_of_a_crash_leaves_the_dead_broker_out() {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{ApiVersionsRequest, TopicName};
    use std::io::Write;
    const TOPIC: &str = "crash-instant";
    let mut cluster = TestCluster::start(3, "");
    create_rf3_topic(&cluster, TOPIC, 3);
    let observer = cluster.nodes[0].pid().expect("node 1 runs");
    for round in 0..4 {
        let victim = 2 + round % 2;
        let deadline = Instant::now() + Duration::from_secs(30);
        while describe_cluster(&cluster.nodes[0]).map(|(b, _)| b) != Some(vec![1, 2, 3]) {
            assert!(Instant::now() < deadline, "round {round}: node 1 does not list all three brokers");
            std::thread::sleep(Duration::from_millis(50));
        }
        // A connection node 1 has accepted and answered on.
        let mut stream = std::net::TcpStream::connect(cluster.nodes[0].bootstrap()).expect("connect to node 1");
        stream.write_all(&request_frame(ApiVersionsRequest::default(), 0, 1)).expect("api versions");
        read_response::<ApiVersionsRequest>(&mut stream, 0);

        signal(observer, "-STOP");
        while !is_stopped(observer) {
            std::thread::yield_now();
        }
        cluster.nodes[victim - 1].kill();
        let topic = MetadataRequestTopic::default().with_name(Some(TopicName(kafka_protocol::protocol::StrBytes::from_static_str(TOPIC))));
        stream.write_all(&request_frame(MetadataRequest::default().with_topics(Some(vec![topic])), 12, 2)).expect("metadata request");
        signal(observer, "-CONT");
        let m = read_response::<MetadataRequest>(&mut stream, 12);
        let brokers: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
        let leaders: Vec<i32> = m.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.leader_id.0)).collect();
        assert!(!brokers.contains(&(victim as i32)), "round {round}: node 1 names broker {victim}, killed a moment ago: brokers {brokers:?}");
        assert!(!leaders.contains(&(victim as i32)), "round {round}: node 1 names broker {victim}, killed a moment ago, as a leader: {leaders:?}");
        cluster.nodes[victim - 1].restart();
    }
}

/// Bytes in the `.log` segment files of `topic`'s `partition` on `node` (0 without a directory).
fn log_bytes(node: &common::TestBroker, topic: &str, partition: i32) -> u64 {
    let dir = node.data_dir().join(format!("{topic}-{partition}"));
    std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".log")).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
        })
        .unwrap_or(0)
}

/// Whether `node` has a directory for `topic`'s `partition`.
fn has_dir(node: &common::TestBroker, topic: &str, partition: i32) -> bool {
    node.data_dir().join(format!("{topic}-{partition}")).is_dir()
}

/// Partition reassignment and preferred leader election on real processes, driven by real admin
/// clients (`tests/python/reassign.py`: kafka-python's AlterPartitionReassignments,
/// ListPartitionReassignments and ElectLeaders, confluent-kafka's ElectLeaders) while a
/// librdkafka idempotent acks=all producer writes: partition 0 moves from [1, 2] to [3, 1] and
/// partition 1 from [2, 3] to [1, 3] (its leader is removed). Every acknowledged record is then
/// consumed exactly once, and node 2, a replica of neither partition any more, deletes its copies
/// (their directories). A broker never creates a directory for a partition it is not a replica of.
#[test]
fn reassignment_and_preferred_election_lose_no_record() {
    const MOVED: &str = "reassigned";
    let Some(python) = common::python("reassignment_and_preferred_election_lose_no_record") else { return };
    let cluster = TestCluster::start(3, "");
    let admin: AdminClient<DefaultClientContext> = config(&cluster).create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let assignment: [&[i32]; 2] = [&[1, 2], &[2, 3]];
    let topic = NewTopic::new(MOVED, 2, TopicReplication::Variable(&assignment)).set("min.insync.replicas", "2");
    let created = block_on(admin.create_topics(&[topic], &options)).expect("create topics");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let load = Load::start(&cluster.bootstrap(), MOVED, 2);
    load.wait_acks(500);
    assert!(log_bytes(&cluster.nodes[1], MOVED, 0) > 0, "node 2 holds partition 0 before the move");
    assert!(!has_dir(&cluster.nodes[2], MOVED, 0), "node 3 has a directory for partition 0, which it is not a replica of");
    assert!(!has_dir(&cluster.nodes[0], MOVED, 1), "node 1 has a directory for partition 1, which it is not a replica of");
    common::run_python_script(
        &python,
        "reassign.py",
        &["--bootstrap".to_string(), cluster.bootstrap(), "--topic".to_string(), MOVED.to_string()],
        Duration::from_secs(240),
    );
    // Writes go on to the new leaders.
    let after = load.acked() + 500;
    load.wait_acks(after);
    let acked = load.finish();
    assert_consumed_exactly_once(&cluster.bootstrap(), MOVED, 2, &acked);
    for partition in 0..2 {
        assert!(log_bytes(&cluster.nodes[2], MOVED, partition) > 0, "node 3, a replica of partition {partition} now, holds its records");
        assert!(log_bytes(&cluster.nodes[0], MOVED, partition) > 0, "node 1, a replica of partition {partition} now, holds its records");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..2).any(|p| has_dir(&cluster.nodes[1], MOVED, p)) {
        assert!(Instant::now() < deadline, "node 2 still holds data of partitions it is no longer a replica of");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// DeleteRecords is answered only once every live replica has the new log start offset on disk
/// (Kafka's DelayedDeleteRecords): the leader is killed with SIGKILL as soon as the answer comes,
/// and the new leader's low watermark is the one acknowledged. (Answered at once, as before, the
/// idle followers learned it only from the next fetch answer, and the new leader's low watermark
/// went back to 0.)
#[test]
fn deleted_records_stay_deleted_after_failover() {
    const DELETED: &str = "deleted";
    const CUT: i64 = 100;
    let mut cluster = TestCluster::start(3, "min.insync.replicas=2");
    create_rf3_topic(&cluster, DELETED, 1);
    let load = Load::start(&cluster.bootstrap(), DELETED, 1);
    load.wait_acks(CUT as usize + 50);
    load.finish();
    let admin: AdminClient<DefaultClientContext> = config(&cluster).create().expect("admin");
    let mut cut = rdkafka::TopicPartitionList::new();
    cut.add_partition_offset(DELETED, 0, rdkafka::Offset::Offset(CUT)).expect("offset");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let deleted = block_on(admin.delete_records(&cut, &options)).expect("DeleteRecords");
    let low = deleted.find_partition(DELETED, 0).expect("partition 0");
    assert!(low.error().is_ok(), "DeleteRecords failed: {:?}", low.error());
    assert_eq!(low.offset(), rdkafka::Offset::Offset(CUT), "the low watermark after DeleteRecords");
    // The answer came once every live replica had the new log start on disk: the leader dies
    // right away, before any further fetch could tell its followers.
    let leader = leader_of_topic(&cluster, DELETED, 0);
    cluster.nodes[(leader - 1) as usize].kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader_of_topic(&cluster, DELETED, 0) == leader {
        assert!(Instant::now() < deadline, "no new leader after the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
    let consumer: BaseConsumer = config(&cluster).set("group.id", "watermarks").create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (low, high) = loop {
        match consumer.fetch_watermarks(DELETED, 0, Duration::from_secs(5)) {
            Ok(w) => break w,
            Err(e) => assert!(Instant::now() < deadline, "no watermarks from the new leader: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(low, CUT, "the new leader's low watermark: records deleted on the old leader came back (high watermark {high})");
    assert!(high > CUT, "the new leader kept the records after the cut (high watermark {high})");
}

/// Threads named `name` in process `pid`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task list")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// `num.network.threads` sizes a node's runtime, and a cluster of single-threaded nodes (what
/// dev-cluster writes on a small machine) replicates an acks=all load without losing a record.
#[test]
fn network_threads_size_each_nodes_runtime() {
    let cluster = TestCluster::start(3, "min.insync.replicas=2\ndefault.replication.factor=3\nnum.network.threads=1");
    for node in &cluster.nodes {
        assert_eq!(threads_named(node.pid().expect("running"), "tokio-rt-worker"), 1, "one runtime thread per node");
    }
    create_rf3_topic(&cluster, "one-thread", PARTITIONS);
    let load = Load::start(&cluster.bootstrap(), "one-thread", PARTITIONS);
    load.wait_acks(1000);
    let acked = load.finish();
    assert_consumed_exactly_once(&cluster.bootstrap(), "one-thread", PARTITIONS, &acked);
}

/// `runnel produce` and `runnel consume` follow leadership as a Kafka client does: each
/// partition's records go to, and are fetched from, its leader, whichever node the bootstrap
/// server is; after a leader is killed they look the leaders up again.
#[test]
fn cli_produce_and_consume_follow_the_leaders() {
    const CLI: &str = "cli";
    let mut cluster = TestCluster::start(3, "min.insync.replicas=2");
    create_rf3_topic(&cluster, CLI, 6);
    let lines = |range: std::ops::Range<u32>| range.map(|i| format!("k{i}:v{i}\n")).collect::<String>();
    let one = cluster.nodes[0].bootstrap();
    let timeout = Duration::from_secs(60);
    common::run_cli(&["produce", "--topic", CLI, "--key-separator", ":", "--bootstrap-server", &one], lines(0..600).as_bytes(), timeout)
        .success("runnel produce through node 1");
    let consume = |bootstrap: &str, count: u32| {
        let out = common::run_cli(
            &["consume", "--topic", CLI, "--from-beginning", "--max-messages", &count.to_string(), "--bootstrap-server", bootstrap],
            b"",
            timeout,
        )
        .success("runnel consume");
        let mut got: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        got.sort();
        let mut want: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
        want.sort();
        assert_eq!(got, want, "runnel consume read other records than were produced");
    };
    consume(&one, 600);
    // Kill a node other than node 1 that leads a partition; the CLI must find the new leader.
    let victim = (0..6).map(|p| leader_of_topic(&cluster, CLI, p)).find(|&l| l != 1).expect("the leaders spread over the nodes");
    cluster.nodes[(victim - 1) as usize].kill();
    common::run_cli(&["produce", "--topic", CLI, "--key-separator", ":", "--bootstrap-server", &one], lines(600..1200).as_bytes(), timeout)
        .success("runnel produce after a leader was killed");
    consume(&one, 1200);
}
