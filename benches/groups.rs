//! Consumer-group benchmark against a 3-node runnel cluster on 127.0.0.1 with Kafka's default
//! group settings (`group.initial.rebalance.delay.ms` 3 s, librdkafka's defaults on the client).
//!
//! Phases:
//! 1. first record: a fresh consumer subscribes to a topic that has records; the time from
//!    creating it to its first record, `GROUP_BENCH_ROUNDS` times (default 3), each with a new
//!    group. The first round also creates `__consumer_offsets`.
//! 2. rebalance on leave: two consumers share a 6-partition topic; one closes (LeaveGroup);
//!    the time from the close until the other owns all six partitions.
//! 3. KIP-848 (`group.protocol=consumer`): first record of a fresh consumer in a new group; then
//!    the node coordinating its group is killed -9 and records are produced to every partition:
//!    the time from the kill to the first of them read (the member carries on with its
//!    partitions; partitions led by the killed node wait for their own leader election).
//!
//! Run: `cargo bench --bench groups`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::TestCluster;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The partitions a consumer owns after each rebalance, with when.
#[derive(Clone)]
struct Owned(Arc<Mutex<(usize, Instant)>>);

impl Default for Owned {
    fn default() -> Self {
        Owned(Arc::new(Mutex::new((0, Instant::now()))))
    }
}

struct Ctx(Owned);
impl ClientContext for Ctx {}
impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let n = match rebalance {
            Rebalance::Assign(tpl) => tpl.count(),
            _ => 0,
        };
        *(self.0).0.lock().expect("lock") = (n, Instant::now());
    }
}

fn consumer(bootstrap: &str, group: &str, owned: Owned) -> BaseConsumer<Ctx> {
    consumer_with(bootstrap, group, owned, "classic")
}

fn consumer_with(bootstrap: &str, group: &str, owned: Owned, protocol: &str) -> BaseConsumer<Ctx> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", group)
        .set("group.protocol", protocol)
        .set("auto.offset.reset", "earliest")
        .create_with_context(Ctx(owned))
        .expect("consumer")
}

fn main() {
    let rounds: usize = std::env::var("GROUP_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut cluster = TestCluster::start(3, "min.insync.replicas=2\ndefault.replication.factor=3\noffsets.topic.replication.factor=3");
    let bootstrap = cluster.bootstrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("admin");
    let topics = [NewTopic::new("g6", 6, TopicReplication::Fixed(3))];
    let created = rt.block_on(admin.create_topics(&topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))).expect("create");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).set("acks", "all").create().expect("producer");
    rt.block_on(async {
        for i in 0..600 {
            let v = i.to_string();
            producer.send(FutureRecord::<(), String>::to("g6").payload(&v).partition(i % 6), Duration::from_secs(30)).await.expect("produce");
        }
    });

    println!("\n{:<52} {:>10}", "phase", "seconds");
    for round in 0..rounds {
        let started = Instant::now();
        let c = consumer(&bootstrap, &format!("bench-first-{round}"), Owned::default());
        c.subscribe(&["g6"]).expect("subscribe");
        loop {
            if let Some(Ok(_)) = c.poll(Duration::from_millis(10)) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no record within a minute");
        }
        let what = if round == 0 { "first record, new group (creates __consumer_offsets)" } else { "first record, new group" };
        println!("{what:<52} {:>10.2}", started.elapsed().as_secs_f64());
    }

    let (a_owned, b_owned) = (Owned::default(), Owned::default());
    let a = consumer(&bootstrap, "bench-leave", a_owned.clone());
    let b = consumer(&bootstrap, "bench-leave", b_owned.clone());
    a.subscribe(&["g6"]).expect("subscribe");
    b.subscribe(&["g6"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a_owned.0.lock().expect("lock").0 == 3 && b_owned.0.lock().expect("lock").0 == 3) {
        assert!(Instant::now() < deadline, "the two consumers never split the topic");
        let _ = a.poll(Duration::from_millis(5));
        let _ = b.poll(Duration::from_millis(5));
    }
    let left = Instant::now();
    drop(a); // close: LeaveGroup
    let deadline = left + Duration::from_secs(60);
    loop {
        let _ = b.poll(Duration::from_millis(5));
        let (n, at) = *b_owned.0.lock().expect("lock");
        if n == 6 && at > left {
            println!("{:<52} {:>10.2}", "rebalance after a member leaves (other owns all 6)", (at - left).as_secs_f64());
            break;
        }
        assert!(Instant::now() < deadline, "the other consumer never took over");
    }

    drop(b);

    // KIP-848: a new group's first record, then its coordinator's node dies.
    let started = Instant::now();
    let k = consumer_with(&bootstrap, "bench-848", Owned::default(), "consumer");
    k.subscribe(&["g6"]).expect("subscribe");
    let mut read = 0;
    loop {
        if let Some(Ok(_)) = k.poll(Duration::from_millis(10)) {
            if read == 0 {
                println!("{:<52} {:>10.2}", "KIP-848 first record, new group", started.elapsed().as_secs_f64());
            }
            read += 1;
            if read == 600 {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "KIP-848 consumer read {read} of 600 within a minute");
    }
    let shard = runnel_actors::group::records::partition_for("bench-848", 50);
    let coordinator = common::load::leader_of(&bootstrap, "__consumer_offsets", shard);
    let killed = Instant::now();
    cluster.nodes[(coordinator - 1) as usize].kill();
    let others: Vec<String> = cluster.nodes.iter().enumerate().filter(|(i, _)| *i as i32 != coordinator - 1).map(|(_, n)| n.bootstrap()).collect();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", others.join(",")).set("acks", "1").create().expect("producer");
    for i in 0..60 {
        let v = i.to_string();
        // Queued; partitions whose leader died are sent once a new one is elected.
        let _ = producer.send_result(FutureRecord::<(), String>::to("g6").payload(&v).partition(i % 6));
    }
    loop {
        if let Some(Ok(_)) = k.poll(Duration::from_millis(10)) {
            println!("{:<52} {:>10.2}", "KIP-848 coordinator killed: next record read", killed.elapsed().as_secs_f64());
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "the KIP-848 member read nothing within a minute of the kill");
    }
}
