//! An idempotent acks=all librdkafka load on one topic, and the exactly-once check of what it
//! acknowledged: the real cluster tests run it while they kill nodes.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// librdkafka settings every client of these tests shares.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("broker.address.family", "v4").set("topic.metadata.refresh.interval.ms", "1000");
    c
}

/// Run a future to completion on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// One acknowledged record: (partition, offset, value, when).
pub type Ack = (i32, i64, u64, Instant);

/// Delivery reports: acknowledgements and failures (value, error).
#[derive(Default)]
pub struct Acks {
    pub acked: Mutex<Vec<Ack>>,
    pub failed: Mutex<Vec<(u64, String)>>,
}

pub struct AckCtx(pub Arc<Acks>);

impl ClientContext for AckCtx {}

impl ProducerContext for AckCtx {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, value: Box<u64>) {
        match result {
            Ok(m) => self.0.acked.lock().expect("lock").push((m.partition(), m.offset(), *value, Instant::now())),
            Err((e, _)) => self.0.failed.lock().expect("lock").push((*value, e.to_string())),
        }
    }
}

/// A producer thread sending the values 0, 1, 2, ... round-robin over the partitions, one every
/// 0.5 ms, idempotent with acks=all and a long message timeout.
pub struct Load {
    pub acks: Arc<Acks>,
    producer: Arc<BaseProducer<AckCtx>>,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<u64>,
}

impl Load {
    pub fn start(bootstrap: &str, topic: &'static str, partitions: i32) -> Load {
        let acks = Arc::new(Acks::default());
        let producer: BaseProducer<AckCtx> = client_config(bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "120000")
            .set("retry.backoff.ms", "50")
            .create_with_context(AckCtx(acks.clone()))
            .expect("producer");
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let (producer, stop) = (producer.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut value = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let payload = value.to_string();
                    let partition = (value % partitions as u64) as i32;
                    let record = BaseRecord::with_opaque_to(topic, Box::new(value)).partition(partition).payload(&payload).key("k");
                    if producer.send(record).is_ok() {
                        value += 1;
                    }
                    producer.poll(Duration::ZERO);
                    std::thread::sleep(Duration::from_micros(500));
                }
                value
            })
        };
        Load { acks, producer, stop, sender }
    }

    /// How many records are acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acks.acked.lock().expect("lock").len()
    }

    /// Wait (at most a minute) until `n` records are acknowledged.
    pub fn wait_acks(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked() < n {
            assert!(Instant::now() < deadline, "only {} records acknowledged", self.acked());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// When the first record of `partition` acknowledged after `after` was acknowledged.
    pub fn first_ack_after(&self, partition: i32, after: Instant) -> Option<Instant> {
        self.acks.acked.lock().expect("lock").iter().find(|(p, _, _, at)| *p == partition && *at > after).map(|(_, _, _, at)| *at)
    }

    /// Stop sending, wait for every delivery report, and check that every record sent was
    /// acknowledged; returns the acknowledgements.
    pub fn finish(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.join().expect("sender");
        assert_eq!(self.producer.flush(Duration::from_secs(120)).map_err(|e| e.to_string()), Ok(()));
        let acked = self.acks.acked.lock().expect("lock").clone();
        let failed = self.acks.failed.lock().expect("lock").clone();
        eprintln!("sent {sent}, acknowledged {}, failed {}", acked.len(), failed.len());
        assert!(failed.is_empty(), "an idempotent producer with a long timeout should not fail: {:?}", &failed[..failed.len().min(5)]);
        assert_eq!(acked.len() as u64, sent, "every record sent was acknowledged");
        acked
    }
}

/// Consume `topic` from the beginning: every acknowledged record is there exactly once, at the
/// offset it was acknowledged with, values in order per partition, and nothing else.
pub fn assert_consumed_exactly_once(bootstrap: &str, topic: &str, partitions: i32, acked: &[Ack]) {
    // librdkafka can confirm a record without an offset (-1001, RD_KAFKA_OFFSET_INVALID): an
    // idempotent producer that learns from a later acknowledgement that a retried batch was
    // already persisted. Such records must still be consumed, once, in their partition.
    let mut expected: BTreeMap<i32, BTreeMap<i64, u64>> = BTreeMap::new();
    let mut without_offset: Vec<(i32, u64)> = Vec::new();
    for (p, o, v, _) in acked {
        if *o < 0 {
            without_offset.push((*p, *v));
            continue;
        }
        assert!(expected.entry(*p).or_default().insert(*o, *v).is_none(), "offset {o} of partition {p} acknowledged twice");
    }
    if !without_offset.is_empty() {
        eprintln!("{} records acknowledged without an offset", without_offset.len());
    }
    let consumer: BaseConsumer = client_config(bootstrap).set("group.id", "unused").set("enable.auto.commit", "false").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let total: usize = acked.len();
    let mut seen: BTreeMap<i32, Vec<(i64, u64)>> = BTreeMap::new();
    let mut last_values: BTreeMap<i32, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
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
    for (p, v) in &without_offset {
        let n = seen.get(p).map_or(0, |s| s.iter().filter(|(_, got)| got == v).count());
        assert_eq!(n, 1, "partition {p}: value {v}, acknowledged without an offset, consumed {n} times");
    }
    // Nothing beyond what was acknowledged, and nothing twice.
    assert!(consumer.poll(Duration::from_secs(1)).is_none(), "a record beyond the acknowledged ones");
}

/// The leader of `topic`-`partition` as the cluster reports it.
pub fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    let consumer: BaseConsumer = client_config(bootstrap).create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            let leader = m.topics().first().and_then(|t| t.partitions().iter().find(|p| p.id() == partition)).map(|p| p.leader());
            if let Some(l) = leader.filter(|l| *l > 0) {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no leader for {topic}-{partition}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
