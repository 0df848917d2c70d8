//! Log compaction against a real 3-node cluster with librdkafka clients.
//!
//! - A compacted RF=3 topic with small segments: every record a consumer reads is the one
//!   produced at its offset, the latest value (or tombstone) of every key is there, and the
//!   cleaner shrinks the log to a fraction of what was written. The same holds when the
//!   partition's leader is killed and another replica, which cleaned its own copy, serves it.
//! - A record without a key is refused with INVALID_RECORD.
//! - `__consumer_offsets` is compacted: a group that committed hundreds of times occupies a few
//!   KiB on disk, and its last committed offsets survive the loss of its coordinator's node,
//!   loaded by the next coordinator from the compacted log.

mod common;

use common::load::{block_on, client_config, leader_of};
use common::TestCluster;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const TOPIC: &str = "profiles";
const KEYS: usize = 30;
const ROUNDS: usize = 40;
const GROUP: &str = "committer";
const COMMITS: i64 = 400;

/// What was produced at an offset: key and value (`None`: a tombstone).
type Produced = BTreeMap<i64, (String, Option<String>)>;

fn produce(bootstrap: &str) -> Produced {
    let producer: FutureProducer = client_config(bootstrap).set("acks", "all").set("enable.idempotence", "true").create().expect("producer");
    let mut produced = Produced::new();
    block_on(async {
        for round in 0..ROUNDS {
            for key in 0..KEYS {
                let key_text = format!("user-{key}");
                // The last round deletes the first five keys.
                let value = (round + 1 < ROUNDS || key >= 5).then(|| format!("round {round} of {key_text}"));
                let mut record = FutureRecord::to(TOPIC).key(&key_text).partition(0);
                if let Some(v) = &value {
                    record = record.payload(v);
                }
                let offset = producer.send(record, Duration::from_secs(30)).await.expect("produce").offset;
                produced.insert(offset, (key_text, value));
            }
        }
        // A compacted topic refuses a record without a key.
        let keyless = producer.send(FutureRecord::<(), str>::to(TOPIC).payload("no key").partition(0), Duration::from_secs(30)).await;
        match keyless {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord), _)) => {}
            other => panic!("a keyless record on a compacted topic: {other:?}"),
        }
    });
    produced
}

/// Read the whole partition from `bootstrap`: offset -> (key, value). Checks every record against
/// what was produced at its offset.
fn read_all(bootstrap: &str, produced: &Produced) -> BTreeMap<i64, (String, Option<String>)> {
    let consumer: BaseConsumer = client_config(bootstrap).set("group.id", "reader").set("enable.partition.eof", "true").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning).expect("offset");
    consumer.assign(&tpl).expect("assign");
    let mut read = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "reading {TOPIC} did not reach its end");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let key = String::from_utf8(m.key().expect("a key").to_vec()).expect("utf-8");
                let value = m.payload().map(|v| String::from_utf8(v.to_vec()).expect("utf-8"));
                let record = (key, value);
                assert_eq!(produced.get(&m.offset()), Some(&record), "record at offset {} is not what was produced there", m.offset());
                read.insert(m.offset(), record);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return read,
            // The killed node is still in the client's metadata for a moment.
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown))) => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
}

/// The latest record of every key is among `read` (tombstones included: the default
/// `delete.retention.ms` is a day).
fn assert_latest_present(produced: &Produced, read: &BTreeMap<i64, (String, Option<String>)>) {
    let mut latest = BTreeMap::new();
    for (offset, (key, _)) in produced {
        latest.insert(key.clone(), *offset);
    }
    for (key, offset) in latest {
        assert!(read.contains_key(&offset), "the latest record of {key} (offset {offset}) is gone");
    }
}

/// Bytes of the `.log` files of every `__consumer_offsets` partition under a node's data dir.
fn offsets_log_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("data dir").flatten() {
        if entry.file_name().to_string_lossy().starts_with("__consumer_offsets-") {
            for file in std::fs::read_dir(entry.path()).expect("partition dir").flatten() {
                if file.file_name().to_string_lossy().ends_with(".log") {
                    total += file.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
    }
    total
}

#[test]
fn compacted_topic_and_consumer_offsets() {
    let mut cluster = TestCluster::start(3, "log.cleaner.backoff.ms=200\noffsets.topic.num.partitions=10\noffsets.topic.segment.bytes=4096");
    let bootstrap = cluster.bootstrap();
    let admin: AdminClient<DefaultClientContext> = client_config(&bootstrap).create().expect("admin");
    let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(3))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "2048")
        .set("min.cleanable.dirty.ratio", "0.01");
    let created = block_on(admin.create_topics(&[topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))).expect("create");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    let produced = produce(&bootstrap);
    let written = produced.len();
    // The cleaner runs every 200 ms on each replica; wait until a reader sees it.
    let started = Instant::now();
    let read = loop {
        let read = read_all(&bootstrap, &produced);
        assert_latest_present(&produced, &read);
        if read.len() * 4 < written {
            break read;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "after 60 s a reader still sees {} of {written} records", read.len());
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{TOPIC}: {written} records written, {} left after compaction ({:.1} s)", read.len(), started.elapsed().as_secs_f64());

    // Another replica, cleaned on its own, serves the same latest records once the leader dies.
    let leader = leader_of(&bootstrap, TOPIC, 0);
    cluster.nodes[(leader - 1) as usize].kill();
    let others: Vec<String> = cluster.nodes.iter().enumerate().filter(|(i, _)| *i as i32 != leader - 1).map(|(_, n)| n.bootstrap()).collect();
    let read = read_all(&others.join(","), &produced);
    assert_latest_present(&produced, &read);
    eprintln!("after killing leader {leader}: {} records read from the new leader", read.len());
    cluster.nodes[(leader - 1) as usize].restart();

    // A group commits many times; its __consumer_offsets partition is compacted.
    let consumer: BaseConsumer = client_config(&bootstrap).set("group.id", GROUP).set("enable.auto.commit", "false").create().expect("consumer");
    for i in 1..=COMMITS {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Offset(i)).expect("offset");
        consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    }
    let coordinator = leader_of(&bootstrap, "__consumer_offsets", runnel_actors::group::records::partition_for(GROUP, 10));
    let dir = cluster.nodes[(coordinator - 1) as usize].data_dir().to_path_buf();
    let started = Instant::now();
    loop {
        let bytes = offsets_log_bytes(&dir);
        // Uncompacted, 400 commits take about 60 KiB; compacted, the active segment and little else.
        if bytes < 16 << 10 {
            eprintln!("__consumer_offsets on node {coordinator}: {bytes} bytes after {COMMITS} commits");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "__consumer_offsets still holds {bytes} bytes on node {coordinator}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(consumer);
    // The next coordinator loads the compacted partition and knows the last commit.
    cluster.nodes[(coordinator - 1) as usize].kill();
    let others: Vec<String> = cluster.nodes.iter().enumerate().filter(|(i, _)| *i as i32 != coordinator - 1).map(|(_, n)| n.bootstrap()).collect();
    let consumer: BaseConsumer = client_config(&others.join(",")).set("group.id", GROUP).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, 0);
    // While the coordinator moves, a broker that does not lead the group's partition yet (its
    // metadata a moment behind another's) answers NOT_COORDINATOR, a retriable error that
    // librdkafka hands back from this call: ask again, as an application would.
    let deadline = Instant::now() + Duration::from_secs(30);
    let committed = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(30)) {
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::NotCoordinator | RDKafkaErrorCode::CoordinatorNotAvailable | RDKafkaErrorCode::CoordinatorLoadInProgress,
            )) if Instant::now() < deadline => {}
            other => break other.expect("committed offsets after failover"),
        }
    };
    let offset = committed.find_partition(TOPIC, 0).expect("partition").offset();
    assert_eq!(offset, Offset::Offset(COMMITS), "the last commit after the coordinator failed over");
}
