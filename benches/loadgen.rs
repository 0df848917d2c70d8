//! End-to-end load generator: librdkafka (through `rdkafka`) producing to and consuming from a
//! runnel broker, printing a table of throughput and delivery latency.
//!
//! Phases: produce 100-byte records with acks=1 (records/s, MB/s, p50/p99/p99.9 latency from
//! send to delivery report), produce 1 KiB records with acks=1 (MB/s), produce 100-byte records
//! with acks=all (fsync before the answer: compare with acks=1), consume the first topic from
//! the beginning (records/s).
//!
//! By default it starts the release binary on a free port with a temporary data directory
//! (`$TMPDIR`), so build it first: `cargo build --release && cargo bench --bench loadgen`.
//! Settings (argument, or environment variable):
//!   --bootstrap H:P   LOADGEN_BOOTSTRAP  use a running broker instead of starting one
//!   --records N       LOADGEN_RECORDS    records in the 100-byte phases (default 1000000)
//!   --size B          LOADGEN_SIZE       size of the small records (default 100)
//!   --large-records N LOADGEN_LARGE_RECORDS  records in the 1 KiB phase (default records/4)
//!   --partitions N    LOADGEN_PARTITIONS partitions per topic (default 3)
//!   RUNNEL_BIN        the broker binary (default $CARGO_TARGET_DIR/release/runnel)
//! Unknown arguments (cargo passes `--bench`) are ignored.

#[path = "../tests/common/mod.rs"]
mod common;

use common::TestBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Settings {
    bootstrap: Option<String>,
    records: usize,
    size: usize,
    large_records: usize,
    partitions: i32,
}

fn settings() -> Settings {
    let mut args = std::env::args().skip(1);
    let mut flags: Vec<(String, String)> = Vec::new();
    while let Some(a) = args.next() {
        if let Some(name) = a.strip_prefix("--").filter(|n| ["bootstrap", "records", "size", "large-records", "partitions"].contains(n)) {
            let value = args.next().unwrap_or_else(|| panic!("--{name} needs a value"));
            flags.push((name.to_string(), value));
        } // anything else (`--bench`, filters) is ignored
    }
    let get = |flag: &str, env: &str| flags.iter().rev().find(|(f, _)| f == flag).map(|(_, v)| v.clone()).or_else(|| std::env::var(env).ok());
    let number = |flag: &str, env: &str, default: usize| {
        get(flag, env).map_or(default, |v| v.replace('_', "").parse().unwrap_or_else(|_| panic!("--{flag}/{env}: {v:?} is not a number")))
    };
    let records = number("records", "LOADGEN_RECORDS", 1_000_000);
    Settings {
        bootstrap: get("bootstrap", "LOADGEN_BOOTSTRAP"),
        records,
        size: number("size", "LOADGEN_SIZE", 100),
        large_records: number("large-records", "LOADGEN_LARGE_RECORDS", (records / 4).max(1)),
        partitions: number("partitions", "LOADGEN_PARTITIONS", 3) as i32,
    }
}

/// RUNNEL_BIN, else the release build in the target directory, else the one cargo built for us.
fn broker_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("RUNNEL_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let release = target.join("release/runnel");
    if release.exists() {
        return release;
    }
    let built = common::runnel_binary();
    assert!(built.exists(), "no runnel binary: run `cargo build --release` or set RUNNEL_BIN");
    built
}

/// Delivery reports of one phase: latency (send to report) in microseconds, and errors.
#[derive(Default)]
struct Latencies {
    start: Option<Instant>,
    micros: Mutex<Vec<u32>>,
    errors: AtomicU64,
    last_report_ns: AtomicU64,
}

impl ClientContext for Latencies {}

impl ProducerContext for Latencies {
    /// Nanoseconds from `start` to the send.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        let now_ns = self.start.expect("set before producing").elapsed().as_nanos() as u64;
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.micros.lock().expect("lock").push(((now_ns - sent_ns as u64) / 1_000).min(u32::MAX as u64) as u32);
        self.last_report_ns.fetch_max(now_ns, Ordering::Relaxed);
    }
}

/// One line of the table.
struct Row {
    phase: String,
    records: usize,
    bytes_per_record: usize,
    seconds: f64,
    /// p50, p99, p99.9 in milliseconds.
    latency_ms: Option<[f64; 3]>,
    errors: u64,
}

fn producer_config(bootstrap: &str, acks: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("acks", acks)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "1000000")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("message.timeout.ms", "300000");
    c
}

/// One produce phase of the run.
struct ProducePhase<'a> {
    name: &'a str,
    topic: &'a str,
    acks: &'a str,
    records: usize,
    size: usize,
    partitions: i32,
    /// Records per second to pace sends at (latency at a steady load); None floods.
    rate: Option<u64>,
}

fn produce_phase(bootstrap: &str, phase: ProducePhase<'_>) -> Row {
    let ProducePhase { name: phase, topic, acks, records, size, partitions, rate } = phase;
    let context = Latencies { start: Some(Instant::now()), ..Default::default() };
    let mut config = producer_config(bootstrap, acks);
    if rate.is_some() {
        // Paced: measure the broker's service time, not batching delay.
        config.set("linger.ms", "0");
    }
    let producer: ThreadedProducer<Latencies> = config.create_with_context(context).expect("producer");
    let start = producer.context().start.expect("set");
    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    // Warm up: metadata and connections are not part of the measurement.
    for p in 0..partitions {
        let warm = BaseRecord::with_opaque_to(topic, 0usize).partition(p).payload(&payload[..]);
        producer.send::<[u8], [u8]>(warm).map_err(|(e, _)| e).expect("warm-up record");
    }
    producer.flush(Duration::from_secs(60)).expect("warm-up flush");
    producer.context().micros.lock().expect("lock").clear();
    let first_send_ns = start.elapsed().as_nanos() as u64;
    let paced_from = Instant::now();
    for i in 0..records {
        if let Some(rate) = rate {
            let due = paced_from + Duration::from_nanos(i as u64 * 1_000_000_000 / rate.max(1));
            while Instant::now() < due {
                std::thread::sleep(due.saturating_duration_since(Instant::now()).min(Duration::from_micros(200)));
            }
        }
        let key = (i as u64).to_be_bytes();
        let mut record = BaseRecord::with_opaque_to(topic, 0usize).partition((i % partitions as usize) as i32).key(&key[..]).payload(&payload[..]);
        loop {
            record.delivery_opaque = start.elapsed().as_nanos() as usize;
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => panic!("{phase}: produce failed: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    let context = producer.context();
    let seconds = context.last_report_ns.load(Ordering::Relaxed).saturating_sub(first_send_ns) as f64 / 1e9;
    let mut micros = std::mem::take(&mut *context.micros.lock().expect("lock"));
    micros.sort_unstable();
    let pct = |q: f64| micros.get(((micros.len() as f64 * q) as usize).min(micros.len().saturating_sub(1))).map_or(0.0, |m| *m as f64 / 1000.0);
    Row {
        phase: phase.into(),
        records,
        bytes_per_record: size,
        seconds,
        latency_ms: Some([pct(0.50), pct(0.99), pct(0.999)]),
        errors: context.errors.load(Ordering::Relaxed) + records.saturating_sub(micros.len()) as u64,
    }
}

fn consume_phase(bootstrap: &str, topic: &str, partitions: i32, size: usize) -> Row {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "loadgen-unused") // librdkafka's assign() wants one; never joined or committed
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "1048576")
        // librdkafka's defaults (100k queued records, then a 1 s fetch back-off) cap a fast
        // consumer at ~100k records/s whatever the broker does.
        .set("queued.min.messages", "10000000")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("consumer");
    let ends: Vec<i64> = (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(30)).expect("watermarks").1).collect();
    let total: i64 = ends.iter().sum();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("add partition");
    }
    let start = Instant::now();
    consumer.assign(&tpl).expect("assign");
    let (mut seen, mut errors) = (0i64, 0u64);
    let deadline = start + Duration::from_secs(600);
    while seen < total && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                seen += 1;
                std::hint::black_box(m.payload());
            }
            Some(Err(e)) => {
                errors += 1;
                eprintln!("consume: {e}");
            }
            None => {}
        }
    }
    Row {
        phase: "consume from beginning".into(),
        records: seen as usize,
        bytes_per_record: size,
        seconds: start.elapsed().as_secs_f64(),
        latency_ms: None,
        errors: errors + (total - seen) as u64,
    }
}

/// The broker side of consuming, without a client library's per-record cost: Fetch requests
/// over one connection, records counted from batch headers (as a consumer's fetcher thread sees
/// them before handing records out one by one).
fn raw_fetch_phase(bootstrap: &str, topic: &str, partitions: i32, size: usize, total: i64) -> Row {
    use kafka_protocol::messages::{fetch_request, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(bootstrap).expect("connect");
    stream.set_nodelay(true).ok();
    let mut offsets = vec![0i64; partitions as usize];
    let (mut seen, mut errors) = (0i64, 0u64);
    let start = Instant::now();
    let mut correlation = 0;
    while seen < total && start.elapsed() < Duration::from_secs(120) {
        correlation += 1;
        let request = FetchRequest::default().with_max_wait_ms(500).with_min_bytes(1).with_max_bytes(64 << 20).with_session_epoch(-1).with_topics(vec![
            fetch_request::FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic.to_string()))).with_partitions(
                offsets
                    .iter()
                    .enumerate()
                    .map(|(p, o)| fetch_request::FetchPartition::default().with_partition(p as i32).with_fetch_offset(*o).with_partition_max_bytes(8 << 20))
                    .collect(),
            ),
        ]);
        let mut buf = bytes::BytesMut::new();
        RequestHeader::default().with_request_api_key(1).with_request_api_version(12).with_correlation_id(correlation).encode(&mut buf, 2).expect("header");
        request.encode(&mut buf, 12).expect("fetch");
        stream.write_all(&(buf.len() as u32).to_be_bytes()).expect("write");
        stream.write_all(&buf).expect("write");
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).expect("read");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).expect("read");
        let mut body = bytes::Bytes::from(body);
        ResponseHeader::decode(&mut body, 1).expect("response header");
        let response = FetchResponse::decode(&mut body, 12).expect("fetch response");
        for t in response.responses {
            for p in t.partitions {
                if p.error_code != 0 {
                    errors += 1;
                    continue;
                }
                let records = p.records.unwrap_or_default();
                for (header, _) in runnel_actors::log::batch::iter_headers(&records) {
                    let next = &mut offsets[p.partition_index as usize];
                    if header.next_offset() > *next {
                        seen += header.next_offset() - (*next).max(header.base_offset);
                        *next = header.next_offset();
                    }
                }
            }
        }
    }
    Row { phase: "fetch, broker side".into(), records: seen as usize, bytes_per_record: size, seconds: start.elapsed().as_secs_f64(), latency_ms: None, errors }
}

fn create_topics(bootstrap: &str, names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("broker.address.family", "v4").create().expect("admin client");
    let topics: Vec<NewTopic<'_>> = names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let results = runtime.block_on(admin.create_topics(&topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))).expect("CreateTopics");
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => panic!("create topic {name}: {code}"),
        }
    }
}

fn main() {
    let s = settings();
    let _broker; // keeps a broker we started alive until the end
    let bootstrap = match &s.bootstrap {
        Some(b) => b.clone(),
        None => {
            let binary = broker_binary();
            if !binary.to_string_lossy().contains("release") {
                eprintln!("warning: {} does not look like a release build; numbers will be poor", binary.display());
            }
            let broker = TestBroker::start_binary(&binary);
            eprintln!("started {} on {} (data {}, log {})", binary.display(), broker.bootstrap(), broker.data_dir().display(), broker.log_path().display());
            let b = broker.bootstrap();
            _broker = broker;
            b
        }
    };
    // Fresh names per run, so a long-running broker given by --bootstrap can be reused.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (small, large, durable) = (format!("loadgen-{run}-small"), format!("loadgen-{run}-large"), format!("loadgen-{run}-acks-all"));
    create_topics(&bootstrap, &[&small, &large, &durable], s.partitions);
    eprintln!("{} records of {} B, {} of 1 KiB, {} partitions per topic", s.records, s.size, s.large_records, s.partitions);

    let partitions = s.partitions;
    let rows = vec![
        produce_phase(&bootstrap, ProducePhase { name: "produce acks=1", topic: &small, acks: "1", records: s.records, size: s.size, partitions, rate: None }),
        produce_phase(
            &bootstrap,
            ProducePhase { name: "produce acks=1 (1 KiB)", topic: &large, acks: "1", records: s.large_records, size: 1024, partitions, rate: None },
        ),
        produce_phase(
            &bootstrap,
            ProducePhase { name: "produce acks=all", topic: &durable, acks: "all", records: s.records, size: s.size, partitions, rate: None },
        ),
        produce_phase(
            &bootstrap,
            ProducePhase { name: "acks=1 at 20k/s", topic: &durable, acks: "1", records: 40_000, size: s.size, partitions, rate: Some(20_000) },
        ),
        produce_phase(
            &bootstrap,
            ProducePhase { name: "acks=all at 20k/s", topic: &durable, acks: "all", records: 40_000, size: s.size, partitions, rate: Some(20_000) },
        ),
        consume_phase(&bootstrap, &small, partitions, s.size),
        raw_fetch_phase(&bootstrap, &small, partitions, s.size, s.records as i64),
    ];

    println!();
    println!(
        "{:<24} {:>10} {:>7} {:>8} {:>12} {:>9} {:>8} {:>8} {:>8} {:>7}",
        "phase", "records", "bytes", "seconds", "records/s", "MB/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    );
    for r in &rows {
        let per_second = r.records as f64 / r.seconds.max(1e-9);
        let mb = per_second * r.bytes_per_record as f64 / 1e6;
        let lat = |i: usize| r.latency_ms.map_or("-".to_string(), |l| format!("{:.2}", l[i]));
        println!(
            "{:<24} {:>10} {:>7} {:>8.2} {:>12.0} {:>9.1} {:>8} {:>8} {:>8} {:>7}",
            r.phase,
            r.records,
            r.bytes_per_record,
            r.seconds,
            per_second,
            mb,
            lat(0),
            lat(1),
            lat(2),
            r.errors
        );
    }
    let (one, all) = (&rows[0], &rows[2]);
    println!("\nacks=all / acks=1 throughput: {:.2}", (all.records as f64 / all.seconds) / (one.records as f64 / one.seconds));
    println!("(MB/s counts values only; latency is send() to delivery report, including time queued in the client)");
}
