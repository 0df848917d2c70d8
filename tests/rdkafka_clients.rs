//! librdkafka (through the `rdkafka` crate) against the real `runnel` binary: codecs, the
//! idempotent producer, ListOffsets, crash recovery under load, the admin API and the CLI.
//!
//! Consumers use `assign()` with explicit offsets and never commit: runnel has no group
//! coordinator yet (librdkafka still wants a `group.id` for `assign`; it is never used).
//!
//! Knobs: `RUNNEL_TEST_RECORDS` (records per codec, default 100000).

mod common;

use common::{run_cli, TestBroker};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for any single wait on the broker in these tests.
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `RUNNEL_TEST_RDKAFKA_DEBUG=eos,protocol,...` turns on librdkafka's debug contexts (printed by
/// the producers' context to stderr).
fn client_config(broker: &TestBroker) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap()).set("broker.address.family", "v4");
    if let Ok(debug) = std::env::var("RUNNEL_TEST_RDKAFKA_DEBUG") {
        c.set("debug", debug);
    }
    c
}

/// Run an admin future to completion (the admin client polls on its own thread).
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(future)
}

fn admin(broker: &TestBroker) -> AdminClient<DefaultClientContext> {
    client_config(broker).create().expect("admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(Duration::from_secs(30))).operation_timeout(Some(Duration::from_secs(30)))
}

/// Create `name` with `partitions` partitions and `configs`, asserting success.
fn create_topic(broker: &TestBroker, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = block_on(admin(broker).create_topics([&topic], &admin_options())).expect("CreateTopics request");
    assert_eq!(results, vec![Ok(name.to_string())], "create topic {name}");
}

/// An assign()-only consumer. librdkafka refuses `assign` without a `group.id` ("Unknown
/// group"), so one is set; it is never used to join or commit.
fn consumer(broker: &TestBroker) -> BaseConsumer {
    client_config(broker)
        .set("group.id", "runnel-test-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("check.crcs", "true")
        .create()
        .expect("consumer")
}

/// Every delivery report of a producer: which record (the opaque id) landed where, or why not.
#[derive(Clone, Default)]
struct DeliveryLog(Arc<DeliveryState>);

#[derive(Default)]
struct DeliveryState {
    /// (record id, partition, offset) in the order the reports arrived.
    acked: Mutex<Vec<(usize, i32, i64)>>,
    /// (record id, error).
    failed: Mutex<Vec<(usize, String)>>,
    acked_count: AtomicUsize,
}

impl DeliveryLog {
    fn acked_count(&self) -> usize {
        self.0.acked_count.load(Ordering::Relaxed)
    }
    fn acked(&self) -> Vec<(usize, i32, i64)> {
        self.0.acked.lock().expect("lock").clone()
    }
    fn failed(&self) -> Vec<(usize, String)> {
        self.0.failed.lock().expect("lock").clone()
    }
}

impl ClientContext for DeliveryLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        eprintln!("librdkafka {level:?} {fac}: {log_message}");
    }
}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        match result {
            Ok(m) => {
                self.0.acked.lock().expect("lock").push((id, m.partition(), m.offset()));
                self.0.acked_count.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => self.0.failed.lock().expect("lock").push((id, e.to_string())),
        }
    }
}

type TrackedProducer = BaseProducer<DeliveryLog>;

fn producer(config: &ClientConfig) -> TrackedProducer {
    config.create_with_context(DeliveryLog::default()).expect("producer")
}

/// `send`, waiting (and serving delivery reports) while the local queue is full.
fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(producer: &TrackedProducer, mut record: BaseRecord<'_, K, P, usize>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("produce failed locally: {e}"),
        }
    }
}

/// Sets its flag when dropped, also while unwinding from a failed assertion.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Poll until `condition` holds; fail with `what` after `WAIT`.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// (low, high) watermarks of every partition of `topic`.
fn watermarks(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(30)).unwrap_or_else(|e| panic!("watermarks of {topic}-{p}: {e}"))).collect()
}

/// Read every partition of `topic` from the beginning up to its high watermark at the time of
/// the call, handing each record to `visit`; asserts offsets come back contiguous per partition.
fn consume_to_end(broker: &TestBroker, topic: &str, partitions: i32, mut visit: impl FnMut(&BorrowedMessage<'_>)) -> Vec<(i64, i64)> {
    let consumer = consumer(broker);
    let marks = watermarks(&consumer, topic, partitions);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("add partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut next: Vec<i64> = marks.iter().map(|(low, _)| *low).collect();
    let deadline = Instant::now() + WAIT;
    while next.iter().zip(&marks).any(|(n, (_, high))| n < high) {
        assert!(Instant::now() < deadline, "consuming {topic}: reached {next:?} of {marks:?} within {WAIT:?}");
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            Some(Ok(m)) => {
                let p = m.partition() as usize;
                assert_eq!(m.offset(), next[p], "{topic}-{p}: offsets must be contiguous");
                next[p] += 1;
                visit(&m);
            }
        }
    }
    marks
}

// ---------------------------------------------------------------------------------------------
// Codecs
// ---------------------------------------------------------------------------------------------

fn records_per_codec() -> usize {
    std::env::var("RUNNEL_TEST_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// Record `i` of a codec run: a mix of keys, values (binary, empty, null) and headers (none,
/// several, empty and null values), deterministic so the consumer can recompute it.
struct Generated {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn generated(i: usize, codec: &str) -> Generated {
    let key = (i % 1000 != 2).then(|| format!("key-{i}").into_bytes());
    let value = match i % 1000 {
        0 => Some(Vec::new()),
        1 => None,
        _ => {
            let len = 1 + (i * 7919) % 400;
            Some((0..len).map(|j| ((i * 31 + j * j) % 251) as u8).collect())
        }
    };
    let headers = match i % 5 {
        0 => Vec::new(),
        1 => vec![("seq".to_string(), Some(i.to_string().into_bytes()))],
        _ => vec![
            ("seq".to_string(), Some(i.to_string().into_bytes())),
            ("codec".to_string(), Some(codec.as_bytes().to_vec())),
            ("empty".to_string(), Some(Vec::new())),
            ("null".to_string(), None),
            ("binary".to_string(), Some(vec![0, 255, (i % 256) as u8])),
        ],
    };
    Generated { key, value, headers }
}

fn codec_round_trip(codec: &str) {
    let started = Instant::now();
    let broker = TestBroker::start();
    let topic = format!("codec-{codec}");
    create_topic(&broker, &topic, 3, &[]);
    let n = records_per_codec();
    let producer = producer(client_config(&broker).set("compression.type", codec).set("acks", "all").set("linger.ms", "5").set("batch.size", "1000000"));
    for i in 0..n {
        let g = generated(i, codec);
        let mut headers = OwnedHeaders::new_with_capacity(g.headers.len());
        for (k, v) in &g.headers {
            headers = headers.insert(Header { key: k, value: v.as_deref() });
        }
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&topic, i).partition((i % 3) as i32).headers(headers);
        if let Some(k) = &g.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &g.value {
            record = record.payload(v.as_slice());
        }
        send(&producer, record);
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(WAIT).expect("flush");
    let produced = started.elapsed();
    let log = producer.context();
    assert_eq!(log.failed(), vec![], "{codec}: every record must be acknowledged");
    // (partition, offset) -> record id, and per partition the ids in offset order.
    let mut location: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for (id, p, offset) in log.acked() {
        assert_eq!(p, (id % 3) as i32, "{codec}: record {id} went to the wrong partition");
        assert!(location.insert((p, offset), id).is_none(), "{codec}: two records acknowledged at {p}/{offset}");
    }
    assert_eq!(location.len(), n, "{codec}: acknowledgements");
    for p in 0..3 {
        let ids: Vec<usize> = location.range((p, i64::MIN)..=(p, i64::MAX)).map(|(_, id)| *id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{codec}: partition {p} does not keep the send order");
    }

    let mut seen = 0usize;
    let marks = consume_to_end(&broker, &topic, 3, |m| {
        let id = *location.get(&(m.partition(), m.offset())).unwrap_or_else(|| panic!("{codec}: unexpected record at {}/{}", m.partition(), m.offset()));
        let want = generated(id, codec);
        assert_eq!(m.key(), want.key.as_deref(), "{codec}: key of record {id}");
        assert_eq!(m.payload(), want.value.as_deref(), "{codec}: value of record {id}");
        let got: Vec<(String, Option<Vec<u8>>)> =
            m.headers().map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect()).unwrap_or_default();
        assert_eq!(got, want.headers, "{codec}: headers of record {id}");
        seen += 1;
    });
    assert_eq!(seen, n, "{codec}: records consumed");
    assert_eq!(marks.iter().map(|(low, high)| high - low).sum::<i64>(), n as i64, "{codec}: watermarks {marks:?}");
    eprintln!("codec {codec}: {n} records produced (acks=all) in {produced:?}, consumed and checked in {:?}", started.elapsed() - produced);
}

/// Records compressed with no codec come back byte-for-byte: keys, values, headers, order.
#[test]
fn codec_none_round_trip() {
    codec_round_trip("none");
}

/// gzip-compressed batches are stored as sent and decoded by the consumer unchanged.
#[test]
fn codec_gzip_round_trip() {
    codec_round_trip("gzip");
}

/// snappy-compressed batches (librdkafka's framing) are stored as sent and read back unchanged.
#[test]
fn codec_snappy_round_trip() {
    codec_round_trip("snappy");
}

/// lz4-compressed batches are stored as sent and read back unchanged.
#[test]
fn codec_lz4_round_trip() {
    codec_round_trip("lz4");
}

/// zstd-compressed batches (which need Produce v7+/Fetch v10+) are stored and read back unchanged.
#[test]
fn codec_zstd_round_trip() {
    codec_round_trip("zstd");
}

// ---------------------------------------------------------------------------------------------
// Idempotent producer
// ---------------------------------------------------------------------------------------------

/// Produce `per_partition` records to each of 3 partitions with an idempotent producer; with
/// `crash`, SIGKILL and restart the broker twice mid-load. Returns the producer's delivery log.
fn idempotent_run(broker: &mut TestBroker, topic: &str, per_partition: usize, crash: bool) -> Arc<DeliveryLog> {
    create_topic(broker, topic, 3, &[]);
    let producer = producer(
        client_config(broker)
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("batch.num.messages", "500")
            .set("message.timeout.ms", "120000")
            .set("reconnect.backoff.ms", "20")
            .set("reconnect.backoff.max.ms", "500"),
    );
    let log = producer.context().clone();
    let total = per_partition * 3;
    let sent = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..total {
                let (p, seq) = (i % 3, i / 3);
                let value = format!("{topic}-{p}-{seq}");
                send(&producer, BaseRecord::<str, str, usize>::with_opaque_to(topic, i).partition(p as i32).key(&value).payload(&value));
                sent.store(i + 1, Ordering::Relaxed);
                if i % 256 == 0 {
                    producer.poll(Duration::ZERO);
                }
            }
            producer.flush(Duration::from_secs(120)).expect("flush");
            done.store(true, Ordering::Relaxed);
        });
        if crash {
            for round in 1..=2 {
                wait_for("acknowledgements before the crash", || done.load(Ordering::Relaxed) || log.acked_count() >= round * total / 4);
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let before = sent.load(Ordering::Relaxed);
                broker.kill();
                // Let the producer queue more while the broker is down (bounded wait).
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until && sent.load(Ordering::Relaxed) < before + 5_000 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                eprintln!("round {round}: killed with {} acknowledged of {} sent; restarting", log.acked_count(), sent.load(Ordering::Relaxed));
                broker.restart();
            }
        }
    });
    log
}

/// Check that `topic`'s 3 partitions hold exactly `topic-p-0 .. topic-p-(n-1)`, in order, once.
fn assert_exactly_once_in_order(broker: &TestBroker, topic: &str, per_partition: usize) {
    let mut next_seq = [0usize; 3];
    let marks = consume_to_end(broker, topic, 3, |m| {
        let p = m.partition() as usize;
        let value = std::str::from_utf8(m.payload().expect("value")).expect("utf-8");
        let expected = format!("{topic}-{p}-{}", next_seq[p]);
        assert_eq!(value, expected, "partition {p} offset {}: duplicate, gap or reordering", m.offset());
        next_seq[p] += 1;
    });
    assert_eq!(next_seq, [per_partition; 3], "records per partition (watermarks {marks:?})");
}

/// An idempotent producer under load (300k records, 3 partitions, 5 requests in flight) lands
/// every record exactly once and in order: no duplicates, no gaps.
#[test]
fn idempotent_producer_exactly_once_in_order() {
    let mut broker = TestBroker::start();
    let per_partition = 100_000;
    let log = idempotent_run(&mut broker, "idempotent", per_partition, false);
    assert_eq!(log.failed(), vec![], "every record must be acknowledged");
    assert_eq!(log.acked_count(), per_partition * 3);
    assert_exactly_once_in_order(&broker, "idempotent", per_partition);
}

/// The idempotent producer's retries across two SIGKILL/restart cycles of the broker neither
/// duplicate nor lose nor reorder records: the broker restores producer state on recovery.
#[test]
fn idempotent_producer_survives_kill_9() {
    let data = tempfile::tempdir().expect("data dir");
    let mut broker = TestBroker::start_in(data.path());
    let per_partition = 50_000;
    let log = idempotent_run(&mut broker, "idempotent-crash", per_partition, true);
    assert_eq!(log.failed().first(), None, "every record must be acknowledged ({} failed)", log.failed().len());
    assert_eq!(log.acked_count(), per_partition * 3);
    assert_exactly_once_in_order(&broker, "idempotent-crash", per_partition);
}

// ---------------------------------------------------------------------------------------------
// ListOffsets
// ---------------------------------------------------------------------------------------------

/// ListOffsets by timestamp returns the first offset whose timestamp is >= the target (also
/// inside batches and with out-of-order timestamps), -1/end past the last one, the log start
/// after DeleteRecords; the earliest/latest watermarks track produce and DeleteRecords.
#[test]
fn list_offsets_by_time_and_watermarks() {
    let broker = TestBroker::start();
    let topic = "timed";
    create_topic(&broker, topic, 2, &[]);
    let base: i64 = 1_700_000_000_000;
    let n = 2_000usize;
    // Mostly increasing by 10 ms, every 7th record 25 ms in the past: non-monotonic in a batch.
    let timestamp = |i: usize| base + 10 * i as i64 - if i % 7 == 3 { 25 } else { 0 };
    let producer = producer(client_config(&broker).set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "20"));
    for i in 0..n {
        let value = i.to_string();
        send(&producer, BaseRecord::<str, str, usize>::with_opaque_to(topic, i).partition(0).payload(&value).timestamp(timestamp(i)));
        // Flush now and then so the log has many batches of different sizes.
        if i % 333 == 332 {
            producer.flush(WAIT).expect("flush");
        }
    }
    producer.flush(WAIT).expect("flush");
    let log = producer.context();
    assert_eq!(log.failed(), vec![]);
    let mut ts_at: BTreeMap<i64, i64> = BTreeMap::new();
    for (id, _, offset) in log.acked() {
        ts_at.insert(offset, timestamp(id));
    }
    assert_eq!(ts_at.keys().copied().collect::<Vec<_>>(), (0..n as i64).collect::<Vec<_>>(), "offsets 0..n");

    let consumer = consumer(&broker);
    assert_eq!(watermarks(&consumer, topic, 2), vec![(0, n as i64), (0, 0)], "watermarks after produce");
    let first_at_or_after = |target: i64, log_start: i64| ts_at.iter().find(|(o, ts)| **o >= log_start && **ts >= target).map(|(o, _)| *o);
    let lookup = |target: i64| -> (Offset, Offset) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(target)).expect("add");
        tpl.add_partition_offset(topic, 1, Offset::Offset(target)).expect("add");
        let answer = consumer.offsets_for_times(tpl, Duration::from_secs(30)).unwrap_or_else(|e| panic!("offsets_for_times({target}): {e}"));
        let get = |p: i32| {
            let e = answer.find_partition(topic, p).expect("partition in answer");
            assert!(e.error().is_ok(), "offsets_for_times({target}) partition {p}: {:?}", e.error());
            e.offset()
        };
        (get(0), get(1))
    };
    let as_offset = |o: Option<i64>| o.map_or(Offset::End, Offset::Offset);
    let last_ts = *ts_at.values().max().expect("records");
    let mut targets: Vec<i64> = vec![0, base - 1_000_000, base - 25, base, base + 1, last_ts, last_ts + 1, last_ts + 1_000_000];
    targets.extend((0..n as i64 * 10).step_by(37).map(|d| base + d));
    for &target in &targets {
        let (p0, p1) = lookup(target);
        assert_eq!(p0, as_offset(first_at_or_after(target, 0)), "first offset with timestamp >= {target} (base + {})", target - base);
        assert_eq!(p1, Offset::End, "empty partition 1 has no offset for {target}");
    }

    // DeleteRecords moves the log start; lookups before it answer the log start.
    let cut = 500i64;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(cut)).expect("add");
    let deleted = block_on(admin(&broker).delete_records(&tpl, &admin_options())).expect("DeleteRecords");
    let entry = deleted.find_partition(topic, 0).expect("partition 0 in answer");
    assert!(entry.error().is_ok(), "DeleteRecords: {:?}", entry.error());
    assert_eq!(entry.offset(), Offset::Offset(cut), "low watermark after DeleteRecords");
    assert_eq!(watermarks(&consumer, topic, 2), vec![(cut, n as i64), (0, 0)], "watermarks after DeleteRecords");
    for target in [0, base, base + 10 * cut - 100, base + 10 * cut + 5, last_ts] {
        assert_eq!(lookup(target).0, as_offset(first_at_or_after(target, cut)), "after DeleteRecords: first offset >= log start with timestamp >= {target}");
    }
}

// ---------------------------------------------------------------------------------------------
// Crash recovery under load
// ---------------------------------------------------------------------------------------------

/// Every record acknowledged with acks=all before, between and after three SIGKILLs of the
/// broker is found after recovery at the partition and offset its acknowledgement named, and
/// each partition's offsets stay contiguous.
#[test]
fn acknowledged_records_survive_kill_9_mid_load() {
    kill_9_mid_load("all");
}

/// The same with acks=1: an acknowledged write has reached the page cache, so a process kill
/// (not a power loss) cannot take it back.
#[test]
fn acks_1_records_survive_kill_9_mid_load() {
    kill_9_mid_load("1");
}

fn kill_9_mid_load(acks: &str) {
    let data = tempfile::tempdir().expect("data dir");
    let mut broker = TestBroker::start_in(data.path());
    let topic = &format!("crash-acks-{acks}");
    create_topic(&broker, topic, 3, &[]);
    let producer = producer(
        client_config(&broker)
            .set("acks", acks)
            .set("linger.ms", "2")
            .set("message.timeout.ms", "120000")
            .set("reconnect.backoff.ms", "20")
            .set("reconnect.backoff.max.ms", "500")
            .set("retry.backoff.ms", "20")
            .set("queue.buffering.max.messages", "20000"),
    );
    let log = producer.context().clone();
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let value = |i: usize| format!("crash-{i}-{}", "x".repeat(i % 200));
    std::thread::scope(|s| {
        // Stops the producer thread however this scope ends, so a failed wait cannot hang the test.
        let _stop_producer = SetOnDrop(&stop);
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (i.to_string(), value(i));
                send(&producer, BaseRecord::<str, str, usize>::with_opaque_to(topic, i).key(&k).payload(&v));
                i += 1;
                sent.store(i, Ordering::Relaxed);
                producer.poll(Duration::ZERO);
            }
            producer.flush(Duration::from_secs(120)).expect("flush");
        });
        for round in 1..=3 {
            let target = log.acked_count() + 20_000;
            wait_for("acknowledgements before the crash", || log.acked_count() >= target);
            let before = sent.load(Ordering::Relaxed);
            broker.kill();
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until && sent.load(Ordering::Relaxed) < before + 5_000 {
                std::thread::sleep(Duration::from_millis(5));
            }
            eprintln!("round {round}: killed with {} acknowledged of {} sent; restarting", log.acked_count(), sent.load(Ordering::Relaxed));
            broker.restart();
        }
        let target = log.acked_count() + 20_000;
        wait_for("acknowledgements after the last restart", || log.acked_count() >= target);
    });
    let acked = log.acked();
    let failed = log.failed();
    eprintln!("{} acknowledged, {} failed, {} sent", acked.len(), failed.len(), sent.load(Ordering::Relaxed));

    let mut stored: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    consume_to_end(&broker, topic, 3, |m| {
        stored.insert((m.partition(), m.offset()), m.payload().unwrap_or_default().to_vec());
    });
    let mut missing = Vec::new();
    for (id, p, offset) in &acked {
        match stored.get(&(*p, *offset)) {
            Some(v) if v == value(*id).as_bytes() => {}
            Some(v) => missing.push(format!("record {id} at {p}/{offset}: found {:?}", String::from_utf8_lossy(&v[..v.len().min(40)]))),
            None => missing.push(format!("record {id} at {p}/{offset}: absent")),
        }
    }
    assert!(missing.is_empty(), "{} acknowledged records lost, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
    let ids: BTreeSet<usize> = acked.iter().map(|a| a.0).collect();
    assert_eq!(ids.len(), acked.len(), "a record was acknowledged twice");
}

// ---------------------------------------------------------------------------------------------
// Admin API
// ---------------------------------------------------------------------------------------------

/// The admin client describes and alters topic configs (retention.ms), adds partitions, deletes
/// a topic, and gets Kafka's error codes for invalid values, duplicate topics, bad replication
/// factors and partition counts that shrink.
#[test]
fn admin_client_configs_partitions_and_errors() {
    let broker = TestBroker::start();
    let admin = admin(&broker);
    let opts = admin_options();
    let topic = "admin-demo";
    create_topic(&broker, topic, 1, &[("retention.ms", "86400000")]);

    let describe = |name: &str| {
        let mut results = block_on(admin.describe_configs([&ResourceSpecifier::Topic(name)], &opts)).expect("DescribeConfigs request");
        assert_eq!(results.len(), 1);
        results.remove(0)
    };
    let config = describe(topic).expect("describe topic configs");
    let retention = config.get("retention.ms").expect("retention.ms described");
    assert_eq!(retention.value.as_deref(), Some("86400000"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    assert!(!retention.is_default);
    let segment = config.get("segment.bytes").expect("segment.bytes described");
    assert_eq!(segment.value.as_deref(), Some("1073741824"));
    assert_eq!(segment.source, ConfigSource::Default);
    assert!(segment.is_default);

    // AlterConfigs (replaces the topic's overrides).
    let alter = |name: &str, key: &str, value: &str| {
        let mut r = block_on(admin.alter_configs([&AlterConfig::new(ResourceSpecifier::Topic(name)).set(key, value)], &opts)).expect("AlterConfigs request");
        assert_eq!(r.len(), 1);
        r.remove(0)
    };
    alter(topic, "retention.ms", "3600000").expect("alter retention.ms");
    let config = describe(topic).expect("describe after alter");
    assert_eq!(config.get("retention.ms").and_then(|e| e.value.as_deref()), Some("3600000"));

    // Invalid values are refused and change nothing. rdkafka 0.39 drops AlterConfigs'
    // per-resource error codes (it reports every resource as Ok), so the refusal shows here as
    // the unchanged value; the INVALID_CONFIG code itself is checked through CreateTopics below,
    // the CLI test (IncrementalAlterConfigs) and the confluent-kafka check in tests/python.
    for (key, value) in
        [("retention.ms", "abc"), ("retention.ms", "-5"), ("cleanup.policy", "bogus"), ("min.cleanable.dirty.ratio", "1.5"), ("no.such.config", "1")]
    {
        if let Err((_, code)) = alter(topic, key, value) {
            assert_eq!(code, RDKafkaErrorCode::InvalidConfig, "AlterConfigs {key}={value}");
        }
        let config = describe(topic).expect("describe");
        assert_eq!(
            config.get("retention.ms").and_then(|e| e.value.as_deref()),
            Some("3600000"),
            "AlterConfigs {key}={value} must be refused and change nothing"
        );
        assert_eq!(
            config.get("cleanup.policy").and_then(|e| e.value.as_deref()),
            Some("delete"),
            "AlterConfigs {key}={value} must be refused and change nothing"
        );
    }
    let bad = NewTopic::new("bad-config", 1, TopicReplication::Fixed(1)).set("retention.ms", "not-a-number");
    let r = block_on(admin.create_topics([&bad], &opts)).expect("CreateTopics request");
    assert_eq!(r, vec![Err(("bad-config".to_string(), RDKafkaErrorCode::InvalidConfig))]);
    let bad = NewTopic::new("bad-config", 1, TopicReplication::Fixed(1)).set("no.such.config", "1");
    let r = block_on(admin.create_topics([&bad], &opts)).expect("CreateTopics request");
    assert_eq!(r, vec![Err(("bad-config".to_string(), RDKafkaErrorCode::InvalidConfig))]);

    // Other refusals with Kafka's codes.
    let r = block_on(admin.create_topics([&NewTopic::new(topic, 1, TopicReplication::Fixed(1))], &opts)).expect("CreateTopics request");
    assert_eq!(r, vec![Err((topic.to_string(), RDKafkaErrorCode::TopicAlreadyExists))]);
    let r = block_on(admin.create_topics([&NewTopic::new("rf3", 1, TopicReplication::Fixed(3))], &opts)).expect("CreateTopics request");
    assert_eq!(r, vec![Err(("rf3".to_string(), RDKafkaErrorCode::InvalidReplicationFactor))]);

    // CreatePartitions: grow to 4, shrinking is refused; the new partitions take records.
    let r = block_on(admin.create_partitions([&NewPartitions::new(topic, 4)], &opts)).expect("CreatePartitions request");
    assert_eq!(r, vec![Ok(topic.to_string())]);
    let r = block_on(admin.create_partitions([&NewPartitions::new(topic, 2)], &opts)).expect("CreatePartitions request");
    assert_eq!(r, vec![Err((topic.to_string(), RDKafkaErrorCode::InvalidPartitions))]);
    let consumer = consumer(&broker);
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30)).expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 4, "partitions after CreatePartitions");
    let producer = producer(client_config(&broker).set("acks", "all"));
    send(&producer, BaseRecord::<str, str, usize>::with_opaque_to(topic, 0).partition(3).payload("in a new partition"));
    producer.flush(WAIT).expect("flush");
    assert_eq!(producer.context().acked().iter().map(|a| (a.1, a.2)).collect::<Vec<_>>(), vec![(3, 0)]);

    // DeleteTopics: gone from metadata and from DescribeConfigs; deleting again is an error.
    let r = block_on(admin.delete_topics(&[topic], &opts)).expect("DeleteTopics request");
    assert_eq!(r, vec![Ok(topic.to_string())]);
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30)).expect("metadata");
    assert!(metadata.topics().iter().all(|t| t.name() != topic), "deleted topic still listed");
    // rdkafka 0.39 drops DescribeConfigs' per-resource error codes: a failed resource comes
    // back without entries.
    match block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts)) {
        Err(_) => {}
        Ok(results) => assert!(
            results.iter().all(|r| match r {
                Err(_) => true,
                Ok(c) => c.entries.is_empty(),
            }),
            "describe configs of a deleted topic: {results:?}"
        ),
    }
    let r = block_on(admin.delete_topics(&[topic], &opts)).expect("DeleteTopics request");
    assert_eq!(r, vec![Err((topic.to_string(), RDKafkaErrorCode::UnknownTopicOrPartition))]);
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

/// `runnel topic create/list/describe/alter/delete`, `produce` from stdin and `consume
/// --from-beginning` work against a live broker and print what kafka-topics.sh users expect.
#[test]
fn cli_round_trip() {
    let broker = TestBroker::start();
    let b = broker.bootstrap();
    let t = Duration::from_secs(60);
    let cli = |args: &[&str], stdin: &str| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--bootstrap-server", &b]);
        run_cli(&all, stdin.as_bytes(), t)
    };
    let out = cli(&["topic", "create", "cli-demo", "--partitions", "3", "--config", "retention.ms=3600000"], "").success("topic create");
    assert!(out.stdout.contains("Created topic cli-demo"), "{out:?}");
    let out = cli(&["topic", "create", "cli-other", "--partitions", "1"], "").success("topic create");
    assert!(out.stdout.contains("Created topic cli-other"), "{out:?}");
    let out = cli(&["topic", "create", "cli-demo", "--partitions", "3"], "");
    assert!(!out.status.success(), "creating an existing topic must fail: {out:?}");

    let out = cli(&["topic", "list"], "").success("topic list");
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), vec!["cli-demo", "cli-other"]);

    let out = cli(&["topic", "describe", "cli-demo"], "").success("topic describe");
    assert!(out.stdout.contains("PartitionCount: 3"), "{}", out.stdout);
    assert!(out.stdout.contains("retention.ms=3600000"), "{}", out.stdout);
    assert_eq!(out.stdout.lines().filter(|l| l.contains("Partition: ")).count(), 3, "{}", out.stdout);

    // Keyed records: a key always lands in one partition, so per key the order is kept.
    let lines: Vec<String> = (0..300).map(|i| format!("k{}:value {i} ünïcode", i % 7)).collect();
    let out = cli(&["produce", "--topic", "cli-demo", "--key-separator", ":"], &(lines.join("\n") + "\n")).success("produce");
    assert!(out.stderr.contains("produced 300"), "{out:?}");
    let out = cli(
        &["consume", "--topic", "cli-demo", "--from-beginning", "--max-messages", "300", "--print-key", "--key-separator", ":", "--timeout-ms", "30000"],
        "",
    )
    .success("consume");
    let printed: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(printed.len(), 300, "{}", out.stdout);
    let mut sorted_printed = printed.clone();
    sorted_printed.sort_unstable();
    let mut sorted_lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    sorted_lines.sort_unstable();
    assert_eq!(sorted_printed, sorted_lines, "consume prints every produced line");
    for k in 0..7 {
        let prefix = format!("k{k}:");
        let sent: Vec<&str> = lines.iter().map(String::as_str).filter(|l| l.starts_with(&prefix)).collect();
        let got: Vec<&str> = printed.iter().copied().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(got, sent, "order of key k{k}");
    }

    // Unkeyed lines to one partition, then stop after fewer records than exist.
    let out = cli(&["produce", "--topic", "cli-other"], "one\ntwo\nthree\n").success("produce");
    assert!(out.stderr.contains("produced 3"), "{out:?}");
    let out = cli(&["consume", "--topic", "cli-other", "--from-beginning", "--max-messages", "2", "--timeout-ms", "30000"], "").success("consume");
    assert_eq!(out.stdout, "one\ntwo\n");
    let out = cli(&["consume", "--topic", "cli-other", "--from-beginning", "--timeout-ms", "1500"], "").success("consume with idle timeout");
    assert_eq!(out.stdout, "one\ntwo\nthree\n");

    // Alter: more partitions and a config.
    cli(&["topic", "alter", "cli-other", "--partitions", "2", "--config", "retention.ms=60000"], "").success("topic alter");
    let out = cli(&["topic", "describe", "cli-other"], "").success("topic describe");
    assert!(out.stdout.contains("PartitionCount: 2") && out.stdout.contains("retention.ms=60000"), "{}", out.stdout);
    let out = cli(&["topic", "alter", "cli-other", "--config", "retention.ms=banana"], "");
    assert!(!out.status.success(), "an invalid config must be refused: {out:?}");

    let out = cli(&["topic", "delete", "cli-demo"], "").success("topic delete");
    assert!(out.stdout.contains("Deleted topic cli-demo"), "{out:?}");
    let out = cli(&["topic", "list"], "").success("topic list");
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), vec!["cli-other"]);
    let out = cli(&["topic", "describe", "cli-demo"], "");
    assert!(!out.status.success(), "describing a deleted topic must fail: {out:?}");
    let out = cli(&["topic", "delete", "cli-demo"], "");
    assert!(!out.status.success(), "deleting a deleted topic must fail: {out:?}");
}
