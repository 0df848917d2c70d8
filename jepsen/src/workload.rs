//! The workload: Jepsen's Kafka queue test, with librdkafka clients against the real cluster.
//!
//! Keys are the partitions of one topic (key `k` is partition `k`); values are unique across the
//! run. Each worker thread is one logical process at a time, owning an idempotent acks=all
//! producer and a consumer assigned every partition from the beginning, and it alternates at
//! random between:
//! - **send**: produce one value to one key and wait for its delivery report. Acknowledged with
//!   an offset: `ok`. Refused before it left the client: `fail`. Any other error, or no report:
//!   `info` (it may or may not be in the log), and the process is retired, as Jepsen does — the
//!   worker goes on as a new process with new clients, so that no later operation of the
//!   process can be ordered after an outcome nobody knows.
//! - **poll**: one consumer poll, continued while records are ready (up to a batch), recorded
//!   with each record's offset and value. Reads are always `ok`: a consumer must only ever see
//!   committed data, whatever state the cluster is in.
//!
//! After the run ([`final_reads`]), a fresh process reads every key from the beginning until it
//! has read up to the highest offset any send was acknowledged at, so that the checker can tell
//! lost writes from late ones.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use runnel_checker::{History, Key, Mop, OpType, Value, F};

use crate::rng::Rng;

/// Records one poll operation may gather before it completes.
const POLL_BATCH: usize = 200;
/// How long a send waits for its delivery report before calling the outcome unknown (longer
/// than `message.timeout.ms`, so librdkafka reports first).
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// What the workers share: where to go, and the history they all write.
pub struct Workload {
    /// The topic whose partitions are the keys.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Every operation, in the order they were invoked and completed.
    pub history: Mutex<History>,
    start: Instant,
    next_value: AtomicU64,
    next_process: AtomicU64,
}

impl Workload {
    /// A workload over `topic` (keys `0..partitions`), timed from `start`.
    pub fn new(topic: &str, partitions: i32, bootstrap: String, start: Instant) -> Workload {
        Workload {
            topic: topic.to_string(),
            partitions,
            bootstrap,
            history: Mutex::new(History::new()),
            start,
            next_value: AtomicU64::new(0),
            next_process: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn keys(&self) -> Vec<Key> {
        (0..self.partitions as Key).collect()
    }

    fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("broker.address.family", "v4")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .set("socket.connection.setup.timeout.ms", "5000")
            .set("reconnect.backoff.max.ms", "1000");
        c
    }

    /// Invoke `f` with `value` as `process`, run `body`, and record its outcome.
    fn op(&self, process: u64, f: F, value: Value, body: impl FnOnce() -> (OpType, Value, Option<String>)) -> OpType {
        let handle = self.history.lock().expect("history lock").invoke(process, f, value, self.now());
        let (kind, value, error) = body();
        self.history.lock().expect("history lock").complete(handle, self.now(), kind, value, error);
        kind
    }
}

/// The delivery report of the one send a process has in flight.
type Delivered = Arc<Mutex<Option<Result<i64, String>>>>;

struct DeliveryCtx(Delivered);

impl ClientContext for DeliveryCtx {}

impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let outcome = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.to_string()),
        };
        *self.0.lock().expect("delivery lock") = Some(outcome);
    }
}

/// One logical process: its id and its clients.
struct Process {
    id: u64,
    producer: BaseProducer<DeliveryCtx>,
    delivered: Delivered,
    consumer: BaseConsumer,
}

impl Process {
    fn new(w: &Workload) -> anyhow::Result<Process> {
        let id = w.next_process.fetch_add(1, Ordering::SeqCst);
        let delivered: Delivered = Arc::default();
        let producer = w
            .base_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "10000")
            .set("request.timeout.ms", "5000")
            .set("retry.backoff.ms", "50")
            .create_with_context(DeliveryCtx(delivered.clone()))?;
        let consumer = w
            .base_config()
            .set("group.id", format!("jepsen-{id}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create()?;
        let p = Process { id, producer, delivered, consumer };
        p.assign(w);
        Ok(p)
    }

    /// Assign every key, from the beginning.
    fn assign(&self, w: &Workload) {
        let keys = w.keys();
        let value = Value::Keys { keys: keys.clone(), seek_to_beginning: true };
        w.op(self.id, F::Assign, value.clone(), || {
            let mut tpl = TopicPartitionList::new();
            for &k in &keys {
                if let Err(e) = tpl.add_partition_offset(&w.topic, k as i32, Offset::Beginning) {
                    return (OpType::Fail, value.clone(), Some(e.to_string()));
                }
            }
            match self.consumer.assign(&tpl) {
                Ok(()) => (OpType::Ok, value.clone(), None),
                Err(e) => (OpType::Fail, value.clone(), Some(e.to_string())),
            }
        });
    }

    /// Produce `value` to `key`; returns the outcome's type.
    fn send(&self, w: &Workload, key: Key, value: u64) -> OpType {
        w.op(self.id, F::Send, Value::Mops(vec![Mop::send(key, value)]), || {
            *self.delivered.lock().expect("delivery lock") = None;
            let payload = value.to_string();
            let record_key = format!("k{key}");
            let record = BaseRecord::to(&w.topic).partition(key as i32).payload(&payload).key(&record_key);
            if let Err((e, _)) = self.producer.send(record) {
                // Never left the client.
                return (OpType::Fail, Value::Mops(vec![Mop::send(key, value)]), Some(e.to_string()));
            }
            let deadline = Instant::now() + DELIVERY_WAIT;
            loop {
                self.producer.poll(Duration::from_millis(20));
                if let Some(outcome) = self.delivered.lock().expect("delivery lock").take() {
                    return match outcome {
                        Ok(offset) => (OpType::Ok, Value::Mops(vec![Mop::Send { key, value, offset: (offset >= 0).then_some(offset) }]), None),
                        Err(e) => (OpType::Info, Value::Mops(vec![Mop::send(key, value)]), Some(e)),
                    };
                }
                if Instant::now() >= deadline {
                    return (OpType::Info, Value::Mops(vec![Mop::send(key, value)]), Some("no delivery report".into()));
                }
            }
        })
    }

    /// One poll: wait up to `wait` for a first record, then take what is ready, up to a batch.
    fn poll(&self, w: &Workload, wait: Duration) -> BTreeMap<Key, Vec<(i64, u64)>> {
        let mut reads: BTreeMap<Key, Vec<(i64, u64)>> = BTreeMap::new();
        w.op(self.id, F::Poll, Value::Mops(vec![Mop::poll()]), || {
            let mut timeout = wait;
            let mut n = 0;
            while n < POLL_BATCH {
                let Some(result) = self.consumer.poll(timeout) else { break };
                timeout = Duration::ZERO;
                // Errors (a broker down, a fetch refused) are the consumer's to retry.
                let Ok(m) = result else { continue };
                let value = m.payload().and_then(|p| std::str::from_utf8(p).ok()).and_then(|s| s.parse::<u64>().ok());
                match value {
                    Some(v) if m.topic() == w.topic => reads.entry(m.partition() as Key).or_default().push((m.offset(), v)),
                    // Not ours: the checker would report it as a value nobody wrote.
                    _ => reads.entry(m.partition() as Key).or_default().push((m.offset(), u64::MAX)),
                }
                n += 1;
            }
            (OpType::Ok, Value::Mops(vec![Mop::polled(reads.clone())]), None)
        });
        reads
    }
}

/// One worker: sends and polls at random until `stop`, as a new process after every `info`.
pub fn worker(w: &Workload, mut rng: Rng, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut p = Process::new(w)?;
    while !stop.load(Ordering::SeqCst) {
        if rng.chance(0.5) {
            let key = rng.below(w.partitions as u64);
            let value = w.next_value.fetch_add(1, Ordering::SeqCst);
            if p.send(w, key, value) == OpType::Info {
                p = Process::new(w)?;
            }
        } else {
            p.poll(w, Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The highest acknowledged offset of every key, from the history.
fn acknowledged_ends(w: &Workload) -> BTreeMap<Key, i64> {
    let mut ends = BTreeMap::new();
    for op in w.history.lock().expect("history lock").ops() {
        if op.kind == OpType::Ok && op.f == F::Send {
            for mop in op.value.mops() {
                if let Mop::Send { key, offset: Some(o), .. } = mop {
                    let e = ends.entry(*key).or_insert(*o);
                    *e = (*e).max(*o);
                }
            }
        }
    }
    ends
}

/// The final read: a fresh process polls every key from the beginning until it has read every
/// key's highest acknowledged offset, or `deadline`. Returns whether it got there.
pub fn final_reads(w: &Workload, deadline: Instant) -> anyhow::Result<bool> {
    let targets = acknowledged_ends(w);
    let p = Process::new(w)?;
    let mut reached: BTreeMap<Key, i64> = BTreeMap::new();
    loop {
        for (k, records) in p.poll(w, Duration::from_millis(500)) {
            if let Some((o, _)) = records.last() {
                reached.insert(k, *o);
            }
        }
        if targets.iter().all(|(k, t)| reached.get(k).is_some_and(|r| r >= t)) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            eprintln!("final reads reached {reached:?} of {targets:?}");
            return Ok(false);
        }
    }
}
