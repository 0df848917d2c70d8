//! A 3-node cluster of real `runnel server` processes on 127.0.0.1 (combined broker+controller
//! nodes, node-to-node traffic over the bincode/crc32fast transport), driven by librdkafka.
//!
//! The failover test runs an idempotent acks=all producer (RF=3, min.insync.replicas=2) while
//! the leader of partition 0 is killed with SIGKILL and restarted, and then the active controller
//! is killed and restarted. Afterwards every acknowledged record must be consumed exactly once,
//! at the offset it was acknowledged with, in order per partition. It prints the failover time:
//! from the kill to the first acknowledgement of a record sent to the killed leader's partition.
//!
//! The snapshot test runs the quorum with a tiny `metadata.log.max.record.bytes.between.snapshots`:
//! the voters write checkpoints and compact the metadata log while one node is down, and the
//! node comes back through the leader's snapshot and, restarted again, from its own checkpoint.

mod common;

use common::TestCluster;
use kafka_protocol::messages::{DescribeClusterRequest, MetadataRequest};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "failover";
const PARTITIONS: i32 = 3;

fn config(cluster: &TestCluster) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cluster.bootstrap()).set("broker.address.family", "v4").set("topic.metadata.refresh.interval.ms", "1000");
    c
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// Acknowledgements: (partition, offset, value, when).
#[derive(Default)]
struct Acks {
    acked: Mutex<Vec<(i32, i64, u64, Instant)>>,
    failed: Mutex<Vec<(u64, String)>>,
}

struct Ctx(Arc<Acks>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, value: Box<u64>) {
        match result {
            Ok(m) => self.0.acked.lock().expect("lock").push((m.partition(), m.offset(), *value, Instant::now())),
            Err((e, _)) => self.0.failed.lock().expect("lock").push((*value, e.to_string())),
        }
    }
}

/// The leader of `partition` as the cluster reports it.
fn leader_of(cluster: &TestCluster, partition: i32) -> i32 {
    let consumer: BaseConsumer = config(cluster).set("group.id", "unused").create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(5)) {
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
    let admin: AdminClient<DefaultClientContext> = config(&cluster).create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = block_on(admin.create_topics(&[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3))], &options)).expect("create topics");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    let acks = Arc::new(Acks::default());
    let producer: BaseProducer<Ctx> = config(&cluster)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "120000")
        .set("retry.backoff.ms", "50")
        .create_with_context(Ctx(acks.clone()))
        .expect("producer");
    let producer = Arc::new(producer);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (producer, stop) = (producer.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut value = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = value.to_string();
                let partition = (value % PARTITIONS as u64) as i32;
                let record = BaseRecord::with_opaque_to(TOPIC, Box::new(value)).partition(partition).payload(&payload).key("k");
                if producer.send(record).is_ok() {
                    value += 1;
                }
                producer.poll(Duration::ZERO);
                std::thread::sleep(Duration::from_micros(500));
            }
            value
        })
    };
    let wait_acks = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acks.acked.lock().expect("lock").len() < n {
            assert!(Instant::now() < deadline, "only {} records acknowledged", acks.acked.lock().expect("lock").len());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_acks(500);

    // 1. Kill the leader of partition 0.
    let leader = leader_of(&cluster, 0);
    eprintln!("killing the leader of partition 0: node {leader}");
    let killed_at = Instant::now();
    cluster.nodes[(leader - 1) as usize].kill();
    let before = acks.acked.lock().expect("lock").len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let failover = loop {
        let first = acks.acked.lock().expect("lock").iter().skip(before).find(|(p, _, _, at)| *p == 0 && *at > killed_at).map(|(_, _, _, at)| *at);
        if let Some(at) = first {
            break at - killed_at;
        }
        assert!(Instant::now() < deadline, "partition 0 never accepted a produce after its leader died");
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("FAILOVER leader kill -> first acknowledged produce on its partition: {} ms", failover.as_millis());
    wait_acks(before + 500);
    cluster.nodes[(leader - 1) as usize].restart();

    // 2. Kill the active controller.
    let controller = active_controller(&cluster, None);
    eprintln!("killing the active controller: node {controller}");
    cluster.nodes[(controller - 1) as usize].kill();
    let n = acks.acked.lock().expect("lock").len();
    wait_acks(n + 500);
    let other = active_controller(&cluster, Some((controller - 1) as usize));
    assert_ne!(other, controller, "a new controller took over");
    cluster.nodes[(controller - 1) as usize].restart();
    let n = acks.acked.lock().expect("lock").len();
    wait_acks(n + 300);

    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender");
    assert_eq!(producer.flush(Duration::from_secs(120)).map_err(|e| e.to_string()), Ok(()));
    let acked = acks.acked.lock().expect("lock").clone();
    let failed = acks.failed.lock().expect("lock").clone();
    eprintln!("sent {sent}, acknowledged {}, failed {}", acked.len(), failed.len());
    assert!(failed.is_empty(), "an idempotent producer with a long timeout should not fail: {:?}", &failed[..failed.len().min(5)]);

    // Consume everything and compare.
    let mut expected: BTreeMap<i32, BTreeMap<i64, u64>> = BTreeMap::new();
    for (p, o, v, _) in &acked {
        assert!(expected.entry(*p).or_default().insert(*o, *v).is_none(), "offset {o} of partition {p} acknowledged twice");
    }
    let consumer: BaseConsumer = config(&cluster).set("group.id", "unused").set("enable.auto.commit", "false").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut seen: BTreeMap<i32, Vec<(i64, u64)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let total: usize = expected.values().map(|m| m.len()).sum();
    let mut last_values: BTreeMap<i32, u64> = BTreeMap::new();
    while seen.values().map(|v| v.len()).sum::<usize>() < total {
        assert!(Instant::now() < deadline, "consumed {} of {total} acknowledged records", seen.values().map(|v| v.len()).sum::<usize>());
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.expect("consume");
        let value: u64 = std::str::from_utf8(m.payload().expect("payload")).expect("utf8").parse().expect("number");
        if let Some(prev) = last_values.insert(m.partition(), value) {
            assert!(value > prev, "partition {}: value {value} after {prev}: out of order or duplicated", m.partition());
        }
        seen.entry(m.partition()).or_default().push((m.offset(), value));
    }
    for (p, want) in &expected {
        let got: BTreeMap<i64, u64> = seen.get(p).cloned().unwrap_or_default().into_iter().collect();
        for (o, v) in want {
            assert_eq!(got.get(o), Some(v), "partition {p}: acknowledged value {v} at offset {o} not consumed there");
        }
    }
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
