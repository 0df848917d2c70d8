//! Replication benchmark: a 3-node runnel cluster on 127.0.0.1 (separate processes, the node
//! transport between them), a topic with replication factor 3 and `min.insync.replicas=2`,
//! librdkafka producing with acks=all.
//!
//! Phases:
//! 1. unbounded 1 KiB produce: throughput (MB/s, records/s) and latency;
//! 2. paced 1 KiB produce at `CLUSTER_BENCH_MBPS` (default 50) MB/s: p50/p99/p99.9 latency from
//!    send to delivery report (records are sent in 1 ms steps, each timed from its own send);
//! 3. failover, `CLUSTER_BENCH_FAILOVERS` times (default 3): a paced producer on partition 0, the
//!    partition's leader killed with SIGKILL; the time from the kill to the first acknowledged
//!    record of partition 0 (the killed node is restarted before the next round).
//!
//! Every paced phase also reports the machine's own pauses: a probe thread sleeps 1 ms at a time
//! and counts each wake-up more than [`PAUSE_MS`] late, when nothing on the machine (brokers,
//! client, kernel) ran for that long. On a small virtual machine the host stops the guest's
//! CPUs now and then, and a record in flight then waits for as long as the pause lasts, whatever
//! the brokers do; the column says how much of a run's tail that can explain. Beside it, the
//! CPU the client and the three nodes used during the phase, in cores: client and cluster share
//! the machine's two.
//!
//! The paced phase runs with each durability — fsync (runnel's default; `CLUSTER_BENCH_FSYNC=0`
//! skips it), then page cache (Kafka's default) — and, for each, three producers: librdkafka
//! idempotent, librdkafka without idempotence (`CLUSTER_BENCH_PLAIN=0` skips it), and pipelined
//! requests without a client library (`CLUSTER_BENCH_RAW=0` skips it). librdkafka's idempotent
//! producer (2.12) counts the *messages* it has in flight to a partition against its limit of 5
//! *requests*: once a request of 5 or more records is out, it sends nothing more to that partition
//! until the answer, and its broker thread polls without sleeping meanwhile (its linger has
//! expired, so it asks to be woken at once). At 50 MB/s it therefore has one request in flight
//! per partition, each record waits for the one before, and the client's spinning threads take
//! CPU from the nodes on the same cores.
//!
//! `CLUSTER_BENCH_REPEAT` (default 1) runs each paced phase that many times, a row each, every
//! run on a fresh topic deleted afterwards; `CLUSTER_BENCH_LINGER_MS` (default 1) sets the
//! producer's `linger.ms`; `CLUSTER_BENCH_NETWORK_THREADS` (default 1) each node's
//! `num.network.threads`; `CLUSTER_BENCH_NODELAY` (default true) the producer's
//! `socket.nagle.disable`; `CLUSTER_BENCH_IDLE_PARTITIONS` (default 0) adds a topic of that many
//! idle RF=3 partitions, which every replica fetch carries along.
//!
//! Run: `cargo bench --bench cluster` (it builds and starts the release binary).

#[path = "../tests/common/mod.rs"]
mod common;

use common::TestCluster;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::BaseProducer;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Delivery reports: (partition, latency in µs, delivered at) and errors.
#[derive(Default)]
struct Reports {
    start: Mutex<Option<Instant>>,
    acks: Mutex<Vec<(i32, u64, Instant)>>,
    errors: AtomicU64,
}

struct Ctx(Arc<Reports>);
impl ClientContext for Ctx {
    /// librdkafka's own log (with `CLUSTER_BENCH_RDKAFKA_DEBUG=topic,metadata,...`), stamped with
    /// wall-clock time to line up with the nodes' logs.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        eprintln!("{}.{:06} rdkafka {level:?} {fac}: {message}", t.as_secs(), t.subsec_micros());
    }
}
impl ProducerContext for Ctx {
    /// Send time in µs since the start.
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        let now = Instant::now();
        let start = self.0.start.lock().expect("lock").expect("started");
        let now_us = (now - start).as_micros() as u64;
        match result {
            Ok(m) => {
                use rdkafka::message::Message;
                self.0.acks.lock().expect("lock").push((m.partition(), now_us.saturating_sub(sent_us as u64), now));
            }
            Err(_) => {
                self.0.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A librdkafka producer with acks=all, idempotent or not (without idempotence it keeps up to
/// `max.in.flight`, 1,000,000 by default, requests in flight per connection).
fn producer(bootstrap: &str, reports: Arc<Reports>, idempotent: bool) -> ThreadedProducer<Ctx> {
    let mut config = ClientConfig::new();
    if let Ok(debug) = std::env::var("CLUSTER_BENCH_RDKAFKA_DEBUG") {
        config.set("debug", debug).set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("acks", "all")
        .set("enable.idempotence", if idempotent { "true" } else { "false" })
        .set("linger.ms", std::env::var("CLUSTER_BENCH_LINGER_MS").unwrap_or_else(|_| "1".into()))
        .set("compression.type", "none")
        .set("socket.nagle.disable", std::env::var("CLUSTER_BENCH_NODELAY").unwrap_or_else(|_| "true".into()))
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("message.timeout.ms", "120000")
        .set("retry.backoff.ms", "20")
        // librdkafka backs retries off exponentially up to 1 s by default, which would measure
        // the client's backoff step rather than the cluster's failover.
        .set("retry.backoff.max.ms", "100")
        .set("topic.metadata.refresh.interval.ms", std::env::var("CLUSTER_BENCH_REFRESH_MS").unwrap_or_else(|_| "1000".into()))
        .create_with_context(Ctx(reports))
        .expect("producer")
}

fn percentiles(mut v: Vec<u64>) -> [f64; 3] {
    v.sort_unstable();
    let at = |q: f64| v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(0) as f64 / 1000.0;
    [at(0.5), at(0.99), at(0.999)]
}

/// A wake-up this much later than asked counts as a machine pause.
const PAUSE_MS: f64 = 4.0;

/// The nodes' process ids, for [`Probe`]'s CPU accounting (set once the cluster is up).
static NODE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// CPU time (user + system, every thread) process `pid` has used so far, in seconds; 0 if it
/// cannot be read. `/proc/<pid>/stat` counts it in USER_HZ ticks, 100 a second on Linux.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The command name (field 2) may hold spaces: the fields after it follow its closing ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// What a timed phase saw of the machine: its pauses (ms late each, see [`PAUSE_MS`]) and the
/// CPU the client (this process: the producer, its threads, the probe) and the nodes used, each
/// in cores (1.0 = one core busy the whole phase; the machine has 2).
struct Machine {
    pauses: Vec<f64>,
    client_cores: f64,
    node_cores: f64,
}

/// Watches the machine while it lives: a thread that sleeps 1 ms at a time (about a thousand
/// cheap wake-ups a second) and records by how much each wake-up was late, and the CPU time of
/// the client and of the nodes from start to finish.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<f64>>>,
    started: Instant,
    client_cpu: f64,
    node_cpu: f64,
}

fn nodes_cpu_seconds() -> f64 {
    NODE_PIDS.lock().expect("lock").iter().map(|pid| cpu_seconds(&pid.to_string())).sum()
}

impl Probe {
    fn start() -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut pauses = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let asked = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                let late = asked.elapsed().as_secs_f64() * 1e3 - 1.0;
                if late > PAUSE_MS {
                    pauses.push(late);
                }
            }
            pauses
        });
        Probe { stop, thread: Some(thread), started: Instant::now(), client_cpu: cpu_seconds("self"), node_cpu: nodes_cpu_seconds() }
    }

    /// Stop; what was seen.
    fn finish(mut self) -> Machine {
        let seconds = self.started.elapsed().as_secs_f64();
        let (client, nodes) = (cpu_seconds("self") - self.client_cpu, nodes_cpu_seconds() - self.node_cpu);
        self.stop.store(true, Ordering::Relaxed);
        let pauses = self.thread.take().map(|t| t.join().expect("pause probe")).unwrap_or_default();
        Machine { pauses, client_cores: client / seconds, node_cores: nodes / seconds }
    }
}

/// Produce `records` records of `size` bytes round-robin over `partitions`, at `rate` records/s
/// if given; returns (seconds, latencies in µs, errors, what the machine did).
fn produce(bootstrap: &str, topic: &str, records: usize, size: usize, partitions: i32, rate: Option<u64>, idempotent: bool) -> (f64, Vec<u64>, u64, Machine) {
    // Dirty pages left by the build or an earlier phase are written back first, so that their
    // writeback does not land in this phase's numbers.
    let _ = std::process::Command::new("sync").status();
    let reports = Arc::new(Reports::default());
    let p = producer(bootstrap, reports.clone(), idempotent);
    let payload = vec![b'x'; size];
    // Warm up: connections, metadata and the producer id are set up before the clock starts.
    *reports.start.lock().expect("lock") = Some(Instant::now());
    for i in 0..partitions {
        let record: BaseRecord<'_, [u8], Vec<u8>, usize> = BaseRecord::with_opaque_to(topic, 0).payload(&payload).partition(i);
        p.send(record).map_err(|(e, _)| e).expect("warm-up send");
    }
    p.flush(Duration::from_secs(60)).expect("warm-up flush");
    reports.acks.lock().expect("lock").clear();
    let probe = Probe::start();
    let start = Instant::now();
    *reports.start.lock().expect("lock") = Some(start);
    for i in 0..records {
        if let Some(rate) = rate {
            // Paced in 1 ms steps: every record due within the next millisecond goes out now (a
            // sleep per record, 50,000 a second, cost this 2-core machine most of a core in
            // system time, taken from the brokers being measured). Each record's latency is
            // still measured from its own send.
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        let sent_us = start.elapsed().as_micros() as usize;
        let mut record: BaseRecord<'_, [u8], Vec<u8>, usize> =
            BaseRecord::with_opaque_to(topic, sent_us).payload(&payload).partition((i % partitions as usize) as i32);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    let seconds = start.elapsed().as_secs_f64();
    let machine = probe.finish();
    let acks = reports.acks.lock().expect("lock");
    if let Ok(path) = std::env::var("CLUSTER_BENCH_DUMP") {
        // One line per acknowledged record: partition, delivered at (ms since start), latency (ms).
        let lines: Vec<String> = acks.iter().map(|(part, l, at)| format!("{part} {:.3} {:.3}", (*at - start).as_secs_f64() * 1e3, *l as f64 / 1e3)).collect();
        // The first line: the start in Unix milliseconds, to line up with the nodes' logs.
        let unix_start =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1e3 - start.elapsed().as_secs_f64() * 1e3;
        std::fs::write(format!("{path}.{topic}"), format!("# start {unix_start:.3}\n{}", lines.join("\n"))).expect("write latency dump");
    }
    let lat = acks.iter().map(|(_, l, _)| *l).collect();
    (seconds, lat, reports.errors.load(Ordering::Relaxed), machine)
}

/// One connection of [`raw_produce`]: requests written and not answered yet, oldest first
/// (correlation id, written at, records), in the order the broker answers them.
type InFlight = Arc<Mutex<std::collections::VecDeque<(i32, Instant, usize)>>>;

/// The cluster's side of acks=all latency, without a client library's batching and threads:
/// `records` records of `size` bytes round-robin over `partitions`, at `rate` records/s in 1 ms
/// steps, each step's records of a partition sent at once as one batch in one ProduceRequest
/// (acks=all, v9) on a connection to the partition's leader, requests pipelined. A record's
/// latency is its request's, from the write to the answer. Returns what [`produce`] does.
fn raw_produce(leaders: &[String], topic: &str, records: usize, size: usize, rate: u64) -> (f64, Vec<u64>, u64, Machine) {
    use kafka_protocol::messages::{produce_request, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use std::io::{Read, Write};
    let _ = std::process::Command::new("sync").status();
    let partitions = leaders.len();
    // One connection per partition (each to its leader), a reader thread each.
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(records)));
    let errors = Arc::new(AtomicU64::new(0));
    for leader in leaders {
        let stream = std::net::TcpStream::connect(leader).expect("connect to the leader");
        stream.set_nodelay(true).expect("nodelay");
        let in_flight: InFlight = Arc::default();
        let (mut read, queue, latencies, errors) = (stream.try_clone().expect("clone"), in_flight.clone(), latencies.clone(), errors.clone());
        readers.push(std::thread::spawn(move || loop {
            let mut len = [0u8; 4];
            if read.read_exact(&mut len).is_err() {
                return;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            read.read_exact(&mut body).expect("read a response");
            let answered = Instant::now();
            let mut body = bytes::Bytes::from(body);
            let header = ResponseHeader::decode(&mut body, 1).expect("response header");
            let response = ProduceResponse::decode(&mut body, 9).expect("produce response");
            let (id, written, count) = queue.lock().expect("lock").pop_front().expect("an answer to a request written");
            assert_eq!(header.correlation_id, id, "answers come in request order");
            if response.responses.iter().flat_map(|t| &t.partition_responses).any(|p| p.error_code != 0) {
                errors.fetch_add(count as u64, Ordering::Relaxed);
            } else {
                let us = (answered - written).as_micros() as u64;
                latencies.lock().expect("lock").extend(std::iter::repeat_n(us, count));
            }
        }));
        writers.push((stream, in_flight));
    }
    let payload = vec![b'x'; size];
    let topic_name = TopicName(StrBytes::from_string(topic.to_string()));
    let mut correlation = 0;
    let mut send = |partition: usize, count: usize| {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        let plain: Vec<runnel_actors::log::batch::PlainRecord<'_>> = (0..count).map(|_| (None, Some(&payload[..]), now_ms)).collect();
        let batch = runnel_actors::log::batch::build_batch(&plain, (-1, -1, -1));
        correlation += 1;
        let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(topic_name.clone())
            .with_partition_data(vec![produce_request::PartitionProduceData::default().with_index(partition as i32).with_records(Some(batch))])]);
        let mut buf = bytes::BytesMut::new();
        RequestHeader::default().with_request_api_key(0).with_request_api_version(9).with_correlation_id(correlation).encode(&mut buf, 2).expect("header");
        request.encode(&mut buf, 9).expect("produce request");
        let (stream, in_flight) = &mut writers[partition];
        // Queued before the write: the answer can arrive before `write_all` returns.
        in_flight.lock().expect("lock").push_back((correlation, Instant::now(), count));
        stream.write_all(&(buf.len() as u32).to_be_bytes()).expect("write");
        stream.write_all(&buf).expect("write");
    };
    let probe = Probe::start();
    let start = Instant::now();
    let mut sent = 0;
    while sent < records {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(records);
        let mut counts = vec![0; partitions];
        for i in sent..due {
            counts[i % partitions] += 1;
        }
        for (partition, count) in counts.into_iter().enumerate().filter(|(_, c)| *c > 0) {
            send(partition, count);
        }
        sent = due;
        let next = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        let now = Instant::now();
        if next > now {
            std::thread::sleep((next - now).max(Duration::from_millis(1)));
        }
    }
    // Every request answered, then the connections closed (which ends the readers).
    let deadline = Instant::now() + Duration::from_secs(120);
    while writers.iter().any(|(_, q)| !q.lock().expect("lock").is_empty()) {
        assert!(Instant::now() < deadline, "requests unanswered after 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = start.elapsed().as_secs_f64();
    let machine = probe.finish();
    for (stream, _) in &writers {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    for r in readers {
        r.join().expect("reader");
    }
    let latencies = std::mem::take(&mut *latencies.lock().expect("lock"));
    (seconds, latencies, errors.load(Ordering::Relaxed), machine)
}

/// Who produces in a paced phase.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    /// librdkafka, idempotent (as the failover test's producer).
    Idempotent,
    /// librdkafka without idempotence (its default): requests pipelined per connection.
    NotIdempotent,
    /// [`raw_produce`]: no client library, the cluster's side of the latency.
    Raw,
}

fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    // A producer, not a consumer: a consumer's group would have the cluster create
    // `__consumer_offsets` (50 more RF=3 partitions in every replica fetch).
    let c: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("metadata client");
    loop {
        if let Ok(m) = c.client().fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(p) = m.topics().first().and_then(|t| t.partitions().iter().find(|p| p.id() == partition)) {
                if p.leader() > 0 {
                    return p.leader();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let mbps: f64 = std::env::var("CLUSTER_BENCH_MBPS").ok().and_then(|v| v.parse().ok()).unwrap_or(50.0);
    let failovers: usize = std::env::var("CLUSTER_BENCH_FAILOVERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // Three nodes and the client share the machine: one runtime thread per node (on 2 cores,
    // a thread per core per node cost about 15% more broker CPU and a quarter more context
    // switches). `CLUSTER_BENCH_NETWORK_THREADS` changes it.
    let threads = std::env::var("CLUSTER_BENCH_NETWORK_THREADS").unwrap_or_else(|_| "1".into());
    let mut cluster = TestCluster::start(3, &format!("min.insync.replicas=2\ndefault.replication.factor=3\nnum.network.threads={threads}"));
    let bootstrap = cluster.bootstrap();
    eprintln!("cluster up: {bootstrap}");
    *NODE_PIDS.lock().expect("lock") = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // `rf3` uses runnel's default durability (acknowledged = fsynced on every ISR member);
    // a topic with `flush.messages` set selects Kafka's own default (acknowledged = written to
    // every ISR member's page cache, fsync left to the OS).
    let topics = [NewTopic::new("rf3", 3, TopicReplication::Fixed(3)), NewTopic::new("rf3-failover", 3, TopicReplication::Fixed(3))];
    let created = rt.block_on(admin.create_topics(&topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))).expect("create");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    println!(
        "\n{:<52} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6}  machine pauses >4 ms (count, sum, longest)",
        "phase", "records", "seconds", "records/s", "MB/s", "p50 ms", "p99 ms", "p999 ms", "errors", "client", "nodes"
    );
    // `client` and `nodes`: the CPU they used, in cores (the machine has 2).
    let row = |name: &str, records: usize, (secs, lat, errors, machine): (f64, Vec<u64>, u64, Machine)| {
        let [p50, p99, p999] = percentiles(lat);
        let pauses = &machine.pauses;
        let longest = pauses.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<52} {:>9} {:>8.2} {:>10.0} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>7.2} {:>6.2}  {}, {:.0} ms, {:.0} ms",
            name,
            records,
            secs,
            records as f64 / secs,
            records as f64 * 1024.0 / secs / 1e6,
            p50,
            p99,
            p999,
            errors,
            machine.client_cores,
            machine.node_cores,
            pauses.len(),
            pauses.iter().sum::<f64>(),
            longest
        );
    };
    // Idle partitions every follower fetches along with the busy ones (a cluster that uses
    // consumer groups has 50 for `__consumer_offsets`): what they cost the replication.
    let idle: i32 = std::env::var("CLUSTER_BENCH_IDLE_PARTITIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if idle > 0 {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let created = rt.block_on(admin.create_topics(&[NewTopic::new("idle", idle, TopicReplication::Fixed(3))], &opts)).expect("create");
        assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    }
    let n: usize = std::env::var("CLUSTER_BENCH_UNBOUNDED").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    if n > 0 {
        row("RF=3 acks=all 1 KiB, unbounded", n, produce(&bootstrap, "rf3", n, 1024, 3, None, true));
    }
    let rate = (mbps * 1e6 / 1024.0) as u64;
    let seconds: u64 = std::env::var("CLUSTER_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let n = (rate * seconds) as usize;
    let repeat: usize = std::env::var("CLUSTER_BENCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    // Every paced run writes a topic of its own, deleted after the run: a run neither inherits
    // the logs of the runs before it nor leaves them in the page cache.
    let paced = |topic: &str, pagecache: bool, client: Client| {
        let mut new = NewTopic::new(topic, 3, TopicReplication::Fixed(3));
        if pagecache {
            new = new.set("flush.messages", "9223372036854775807");
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let created = rt.block_on(admin.create_topics([&new], &opts)).expect("create");
        assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
        let result = if client == Client::Raw {
            let leaders: Vec<String> = (0..3).map(|p| cluster.nodes[(leader_of(&bootstrap, topic, p) - 1) as usize].bootstrap()).collect();
            // Warm-up until every leader accepts: connections and a new topic's partitions ready.
            let deadline = Instant::now() + Duration::from_secs(30);
            while raw_produce(&leaders, topic, 30, 1024, 1000).2 > 0 {
                assert!(Instant::now() < deadline, "the leaders of {topic} refuse produce requests");
                std::thread::sleep(Duration::from_millis(100));
            }
            raw_produce(&leaders, topic, n, 1024, rate)
        } else {
            produce(&bootstrap, topic, n, 1024, 3, Some(rate), client == Client::Idempotent)
        };
        let deleted = rt.block_on(admin.delete_topics(&[topic], &opts)).expect("delete");
        assert!(deleted.iter().all(|r| r.is_ok()), "{deleted:?}");
        result
    };
    // Every durability with every producer: fsync first (runnel's default), then page cache.
    let on = |var: &str| std::env::var(var).map_or(true, |v| v != "0");
    let clients = [
        (Client::Idempotent, true, "idem", "librdkafka idempotent"),
        (Client::NotIdempotent, on("CLUSTER_BENCH_PLAIN"), "plain", "librdkafka not idempotent"),
        (Client::Raw, on("CLUSTER_BENCH_RAW"), "raw", "pipelined requests, no client"),
    ];
    for (pagecache, enabled, durability) in [(false, on("CLUSTER_BENCH_FSYNC"), "fsync"), (true, true, "page cache")] {
        for &(client, wanted, tag, who) in &clients {
            if !(enabled && wanted) {
                continue;
            }
            for r in 0..repeat {
                let topic = format!("rf3-{}-{tag}-{r}", if pagecache { "pagecache" } else { "fsync" });
                row(&format!("{mbps} MB/s, {durability}, {who}"), n, paced(&topic, pagecache, client));
            }
        }
    }

    // Failover.
    let (mut times, mut moves) = (Vec::new(), Vec::new());
    for round in 0..failovers {
        let reports = Arc::new(Reports::default());
        let p = Arc::new(producer(&bootstrap, reports.clone(), true));
        let start = Instant::now();
        *reports.start.lock().expect("lock") = Some(start);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let payload = vec![b'y'; 100];
                while !stop.load(Ordering::Relaxed) {
                    let sent_us = start.elapsed().as_micros() as usize;
                    let _ = p.send(BaseRecord::<[u8], Vec<u8>, usize>::with_opaque_to("rf3-failover", sent_us).payload(&payload).partition(0));
                    std::thread::sleep(Duration::from_micros(500));
                }
            })
        };
        std::thread::sleep(Duration::from_secs(2));
        let leader = leader_of(&bootstrap, "rf3-failover", 0);
        // Watches Metadata for the new leader: the cluster's side of the failover, apart from
        // how soon the producer notices.
        let watcher: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("metadata client");
        let _ = watcher.client().fetch_metadata(Some("rf3-failover"), Duration::from_secs(5));
        let killed = Instant::now();
        cluster.nodes[(leader - 1) as usize].kill();
        let moved = loop {
            let now_leader = watcher
                .client()
                .fetch_metadata(Some("rf3-failover"), Duration::from_millis(500))
                .ok()
                .and_then(|m| m.topics().first().and_then(|t| t.partitions().iter().find(|p| p.id() == 0).map(|p| p.leader())));
            if now_leader.is_some_and(|l| l > 0 && l != leader) {
                break killed.elapsed();
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "no new leader within 60 s of the kill");
            std::thread::sleep(Duration::from_millis(10));
        };
        let deadline = killed + Duration::from_secs(60);
        let took = loop {
            // A record sent after the kill: an answer already on its way from the old leader
            // does not count.
            let first = reports
                .acks
                .lock()
                .expect("lock")
                .iter()
                .find(|(part, lat, at)| *part == 0 && *at - Duration::from_micros(*lat) > killed)
                .map(|(_, _, at)| *at);
            if let Some(at) = first {
                break at - killed;
            }
            assert!(Instant::now() < deadline, "no produce succeeded within 60 s of the leader kill");
            std::thread::sleep(Duration::from_millis(1));
        };
        stop.store(true, Ordering::Relaxed);
        sender.join().expect("sender");
        p.flush(Duration::from_secs(60)).expect("flush");
        println!(
            "failover {round}: leader node {leader} killed -> new leader in Metadata after {} ms, first acknowledged produce on its partition after {} ms",
            moved.as_millis(),
            took.as_millis()
        );
        times.push(took.as_millis());
        moves.push(moved.as_millis());
        cluster.nodes[(leader - 1) as usize].restart();
        std::thread::sleep(Duration::from_secs(3));
    }
    for (what, mut v) in [("new leader in Metadata", moves), ("first acknowledged produce", times)] {
        v.sort_unstable();
        if !v.is_empty() {
            println!("failover, {what}: min {} ms, median {} ms, max {} ms", v[0], v[v.len() / 2], v[v.len() - 1]);
        }
    }
}
