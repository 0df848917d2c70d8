//! Consumer groups against real `runnel server` processes with librdkafka consumers that are
//! real processes too (this test binary started again as a child), so "kill a consumer" is a
//! kill -9 that sends no LeaveGroup.
//!
//! Three consumers in one group over a 6-partition topic own disjoint partitions covering all
//! six; when one is killed the other two take over its partitions once its session times out;
//! committed offsets survive the loss of the coordinator's node (the next leader of the group's
//! `__consumer_offsets` partition loads them) and its restart. A KIP-848 member
//! (`group.protocol=consumer`) keeps its id, epoch and partitions across the same failover.

mod common;

use common::load::{block_on, client_config, leader_of};
use common::TestCluster;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "work";
const PARTITIONS: i32 = 6;
const PER_PARTITION: i64 = 100;
const GROUP: &str = "workers";
const SESSION_MS: u64 = 6_000;
/// The environment variable that turns the `consumer_child` test into a consumer process.
const CHILD_ENV: &str = "RUNNEL_GROUP_CHILD";

/// What the parent learns from one child's stdout.
#[derive(Default)]
struct ChildView {
    assigned: BTreeSet<i32>,
    first_record: Option<Instant>,
}

#[derive(Default)]
struct Seen {
    children: BTreeMap<usize, ChildView>,
    /// Every (partition, offset) some child read.
    records: BTreeSet<(i32, i64)>,
    /// The highest offset some child reported committed, per partition.
    committed: BTreeMap<i32, i64>,
}

struct Consumers {
    children: Vec<Option<Child>>,
    seen: Arc<Mutex<Seen>>,
}

impl Consumers {
    fn spawn(bootstrap: &str, n: usize) -> Consumers {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut children = Vec::new();
        for i in 0..n {
            let mut child = Command::new(std::env::current_exe().expect("test binary"))
                .args(["--exact", "consumer_child", "--nocapture", "--include-ignored", "--test-threads=1"])
                .env(CHILD_ENV, format!("{bootstrap}|{GROUP}|{TOPIC}|{SESSION_MS}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a consumer process");
            let out = child.stdout.take().expect("piped");
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut s = seen.lock().expect("lock");
                    let mut words = line.split_whitespace();
                    match (words.next(), words.next(), words.next()) {
                        (Some("ASSIGNED"), list, _) => {
                            s.children.entry(i).or_default().assigned = list.unwrap_or("").split(',').filter_map(|p| p.parse().ok()).collect();
                        }
                        (Some("RECORD"), Some(p), Some(o)) => {
                            let (p, o) = (p.parse().expect("partition"), o.parse().expect("offset"));
                            s.records.insert((p, o));
                            s.children.entry(i).or_default().first_record.get_or_insert_with(Instant::now);
                        }
                        (Some("COMMITTED"), Some(p), Some(o)) => {
                            let (p, o): (i32, i64) = (p.parse().expect("partition"), o.parse().expect("offset"));
                            let c = s.committed.entry(p).or_insert(o);
                            *c = (*c).max(o);
                        }
                        _ => {}
                    }
                }
            });
            children.push(Some(child));
        }
        Consumers { children, seen }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Also from Drop after a failed assertion, which may have poisoned the lock.
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).children.remove(&i);
    }

    /// Wait until the live children own disjoint, non-empty partition sets covering the topic.
    fn wait_for_split(&self, what: &str, deadline: Duration) -> Duration {
        let started = Instant::now();
        loop {
            {
                let s = self.seen.lock().expect("lock");
                let live: Vec<&BTreeSet<i32>> =
                    self.children.iter().enumerate().filter(|(_, c)| c.is_some()).filter_map(|(i, _)| s.children.get(&i).map(|v| &v.assigned)).collect();
                let total: usize = live.iter().map(|a| a.len()).sum();
                let union: BTreeSet<i32> = live.iter().flat_map(|a| a.iter().copied()).collect();
                let live_count = self.children.iter().filter(|c| c.is_some()).count();
                if live.len() == live_count && live.iter().all(|a| !a.is_empty()) && total == PARTITIONS as usize && union.len() == PARTITIONS as usize {
                    return started.elapsed();
                }
                assert!(started.elapsed() < deadline, "{what}: no disjoint split of {PARTITIONS} partitions within {deadline:?}; assignments {live:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until every record was read and every partition's offset reported committed.
    fn wait_all_committed(&self, deadline: Duration) {
        let started = Instant::now();
        loop {
            {
                let s = self.seen.lock().expect("lock");
                let read = s.records.len() as i64;
                let done = read == PARTITIONS as i64 * PER_PARTITION && (0..PARTITIONS).all(|p| s.committed.get(&p) == Some(&PER_PARTITION));
                if done {
                    return;
                }
                assert!(started.elapsed() < deadline, "read {read} of {} records, committed {:?}", PARTITIONS as i64 * PER_PARTITION, s.committed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// Create `topic` and write `count` records to it with acks=all, record `i` to partition
/// `i % partitions`.
fn topic_with_records(bootstrap: &str, topic: &str, partitions: i32, replication_factor: i32, count: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created =
        block_on(admin.create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(replication_factor))], &options)).expect("create topics");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let producer: FutureProducer = client_config(bootstrap).set("acks", "all").create().expect("producer");
    block_on(async {
        for i in 0..count {
            let value = i.to_string();
            producer.send(FutureRecord::<(), String>::to(topic).payload(&value).partition(i % partitions), Duration::from_secs(30)).await.expect("produce");
        }
    });
}

/// The group's committed offsets, asked of whichever node coordinates it now (retrying while the
/// coordinator moves or loads).
fn committed(bootstrap: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = client_config(bootstrap).set("group.id", GROUP).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
            Ok(list) => return list.elements().iter().map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { -1 })).collect(),
            Err(e) => assert!(Instant::now() < deadline, "OffsetFetch kept failing: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_consumers_split_a_topic_take_over_and_keep_offsets_across_coordinator_failover() {
    let mut cluster = TestCluster::start(
        3,
        "min.insync.replicas=2\ndefault.replication.factor=3\noffsets.topic.replication.factor=3\noffsets.topic.num.partitions=10\ngroup.initial.rebalance.delay.ms=1000",
    );
    let bootstrap = cluster.bootstrap();
    topic_with_records(&bootstrap, TOPIC, PARTITIONS, 3, PARTITIONS * PER_PARTITION as i32);

    let started = Instant::now();
    let mut consumers = Consumers::spawn(&bootstrap, 3);
    let split = consumers.wait_for_split("three consumers", Duration::from_secs(60));
    let first = consumers.seen.lock().expect("lock").children.values().filter_map(|c| c.first_record).min().map(|t| t - started);
    eprintln!("three consumers own disjoint partitions {:.2}s after start (first record read after {first:?})", split.as_secs_f64());

    // Kill one consumer: no LeaveGroup, so the coordinator notices when its session expires.
    consumers.kill(0);
    let takeover = consumers.wait_for_split("after a kill", Duration::from_secs(30));
    eprintln!("the two others own all partitions {:.2}s after the kill (session.timeout.ms={SESSION_MS})", takeover.as_secs_f64());
    assert!(takeover < Duration::from_millis(SESSION_MS + 5_000), "takeover took {takeover:?}");
    consumers.wait_all_committed(Duration::from_secs(60));
    let reported = consumers.seen.lock().expect("lock").committed.clone();
    consumers.kill(1);
    consumers.kill(2);
    assert_eq!(committed(&bootstrap), reported, "the coordinator's offsets differ from what consumers were told was committed");

    // The coordinator's node dies: the next leader of the group's partition takes over.
    let shard = runnel_actors::group::records::partition_for(GROUP, 10);
    let coordinator = leader_of(&bootstrap, "__consumer_offsets", shard);
    eprintln!("killing node {coordinator}, the coordinator of {GROUP} (__consumer_offsets-{shard})");
    cluster.nodes[(coordinator - 1) as usize].kill();
    let others: Vec<String> = cluster.nodes.iter().enumerate().filter(|(i, _)| *i as i32 != coordinator - 1).map(|(_, n)| n.bootstrap()).collect();
    assert_eq!(committed(&others.join(",")), reported, "committed offsets lost when the coordinator failed over");
    cluster.nodes[(coordinator - 1) as usize].restart();
    assert_eq!(committed(&bootstrap), reported, "committed offsets lost across the restart");
}

/// Not a test on its own: the consumer process `Consumers::spawn` starts. It prints its
/// assignment after each rebalance, each record it reads, and each offset commit that succeeded.
#[test]
#[ignore = "a child process of the group tests"]
fn consumer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let (bootstrap, group, topic, session) = (parts[0], parts[1], parts[2], parts[3]);
    // The harness has printed "test consumer_child ... " without a newline: end that line.
    println!();

    /// Counts rebalances, so offsets read before one are never committed after it (another
    /// member may have moved them on meanwhile).
    struct Ctx(std::sync::atomic::AtomicU64);
    impl ClientContext for Ctx {}
    impl ConsumerContext for Ctx {
        fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let line = match rebalance {
                Rebalance::Assign(tpl) => tpl.elements().iter().map(|e| e.partition().to_string()).collect::<Vec<_>>().join(","),
                _ => String::new(),
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "ASSIGNED {line}");
            let _ = out.flush();
        }
    }
    let consumer: BaseConsumer<Ctx> = client_config(bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", session)
        .set("heartbeat.interval.ms", "500")
        .create_with_context(Ctx(std::sync::atomic::AtomicU64::new(0)))
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let mut rebalances = 0;
    loop {
        let now_rebalances = consumer.context().0.load(std::sync::atomic::Ordering::SeqCst);
        if now_rebalances != rebalances {
            rebalances = now_rebalances;
            next.clear();
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            next.insert(m.partition(), m.offset() + 1);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "RECORD {} {}", m.partition(), m.offset());
            let _ = out.flush();
        }
        if last_commit.elapsed() > Duration::from_millis(200) {
            last_commit = Instant::now();
            let owned: BTreeSet<i32> = consumer.assignment().map(|a| a.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default();
            let mut tpl = TopicPartitionList::new();
            for (p, o) in next.iter().filter(|(p, _)| owned.contains(p)) {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*o)).expect("offset");
            }
            if tpl.count() > 0 && consumer.commit(&tpl, CommitMode::Sync).is_ok() {
                let mut out = std::io::stdout().lock();
                for e in tpl.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        let _ = writeln!(out, "COMMITTED {} {o}", e.partition());
                    }
                }
                let _ = out.flush();
            }
        }
    }
}

/// `runnel group list|describe|reset-offsets|delete` against a real broker: a librdkafka
/// consumer commits, the CLI shows the group with its lag, refuses to reset it while it has a
/// member, resets it once it left, and deletes it.
#[test]
fn group_cli_lists_describes_resets_and_deletes() {
    use common::{run_cli, TestBroker};
    let broker = TestBroker::start();
    let b = broker.bootstrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["group"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--bootstrap-server", &b]);
        run_cli(&all, b"", Duration::from_secs(60))
    };
    topic_with_records(&b, "cli-t", 2, 1, 20);
    // A member that read and committed 6 records of each partition, then stays in the group.
    let consumer: BaseConsumer =
        client_config(&b).set("group.id", "cli-g").set("auto.offset.reset", "earliest").set("enable.auto.commit", "false").create().expect("consumer");
    consumer.subscribe(&["cli-t"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut read: BTreeMap<i32, i64> = BTreeMap::new();
    while read.values().filter(|o| **o >= 5).count() < 2 {
        assert!(Instant::now() < deadline, "read only {read:?}");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if m.offset() < 6 {
                read.insert(m.partition(), m.offset());
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("cli-t", p, Offset::Offset(6)).expect("offset");
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");

    let listed = cli(&["list"]).success("group list");
    assert!(listed.stdout.lines().any(|l| l.starts_with("cli-g") && l.contains("consumer") && l.contains("Stable")), "{}", listed.stdout);
    let described = cli(&["describe", "cli-g"]).success("group describe");
    let rows: Vec<Vec<&str>> = described.stdout.lines().filter(|l| l.starts_with("cli-g")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{}", described.stdout);
    for row in &rows {
        // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
        assert_eq!(&row[1..6], &["cli-t", row[2], "6", "10", "4"], "{}", described.stdout);
        assert_ne!(row[6], "-", "the partition has an owner: {}", described.stdout);
        assert_eq!(row[7], "/127.0.0.1", "the owner's host as the broker saw it: {}", described.stdout);
    }
    let refused = cli(&["reset-offsets", "cli-g", "--topic", "cli-t", "--to-earliest", "--execute"]);
    assert!(!refused.status.success() && refused.stderr.contains("inactive"), "{refused:?}");

    consumer.unsubscribe();
    drop(consumer); // closes: LeaveGroup
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(&["list", "--state", "Empty"]).success("group list").stdout.contains("cli-g") {
        assert!(Instant::now() < deadline, "the group never became Empty");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dry = cli(&["reset-offsets", "cli-g", "--topic", "cli-t", "--shift-by", "-4"]).success("dry run");
    assert!(dry.stdout.contains("dry run"), "{}", dry.stdout);
    assert_eq!(committed_of(&b, "cli-g", "cli-t"), vec![6, 6], "a dry run changed nothing");
    cli(&["reset-offsets", "cli-g", "--topic", "cli-t", "--shift-by", "-4", "--execute"]).success("reset");
    assert_eq!(committed_of(&b, "cli-g", "cli-t"), vec![2, 2]);
    cli(&["reset-offsets", "cli-g", "--topic", "cli-t", "--to-latest", "--execute"]).success("reset to latest");
    assert_eq!(committed_of(&b, "cli-g", "cli-t"), vec![10, 10]);
    // By time, on every topic the group has offsets on: the first record at or after it.
    cli(&["reset-offsets", "cli-g", "--all-topics", "--to-datetime", "1970-01-01T00:00:00.000", "--execute"]).success("reset to a datetime");
    assert_eq!(committed_of(&b, "cli-g", "cli-t"), vec![0, 0]);
    cli(&["reset-offsets", "cli-g", "--all-topics", "--to-datetime", "2999-01-01T00:00:00Z", "--execute"]).success("reset past every record");
    assert_eq!(committed_of(&b, "cli-g", "cli-t"), vec![10, 10], "no record that late: the log end");
    let bad = cli(&["reset-offsets", "cli-g", "--all-topics", "--to-datetime", "yesterday"]);
    assert!(!bad.status.success() && bad.stderr.contains("YYYY-MM-DDTHH:mm:SS.sss"), "{bad:?}");
    cli(&["delete", "cli-g"]).success("group delete");
    assert_eq!(committed_of(&b, "cli-g", "cli-t"), vec![-1, -1], "deleting a group deletes its offsets");
    let again = cli(&["delete", "cli-g"]);
    assert!(!again.status.success() && again.stderr.contains("GroupIdNotFound"), "{again:?}");
}

/// The committed offsets of `group` on both partitions of `topic` (-1: none).
fn committed_of(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = client_config(bootstrap).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition(topic, p);
    }
    let list = consumer.committed_offsets(tpl, Duration::from_secs(30)).expect("OffsetFetch");
    list.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { -1 }).collect()
}

/// librdkafka (2.12, the Rust crate's) with `group.protocol=consumer` (KIP-848): two members
/// split a topic through the server-side assignor, read every record once between them and
/// commit; when one closes, the other is given all partitions; the committed offsets read back.
#[test]
fn kip848_consumers_share_a_topic_and_take_over() {
    use common::TestBroker;
    let broker = TestBroker::start();
    let b = broker.bootstrap();
    topic_with_records(&b, "kip848", 6, 1, 300);
    let member = || -> BaseConsumer {
        let c: BaseConsumer = client_config(&b)
            .set("group.id", "kip848-group")
            .set("group.protocol", "consumer")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        c.subscribe(&["kip848"]).expect("subscribe");
        c
    };
    let owned = |c: &BaseConsumer| -> BTreeSet<i32> { c.assignment().map(|a| a.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default() };
    let (a, c) = (member(), member());
    let started = Instant::now();
    let mut seen: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    let mut first = None;
    let mut commit_failures = 0;
    loop {
        for m in [&a, &c] {
            if let Some(Ok(msg)) = m.poll(Duration::from_millis(20)) {
                first.get_or_insert_with(|| started.elapsed());
                *seen.entry((msg.partition(), msg.offset())).or_default() += 1;
                // Committed before the next poll, so a partition moved to the other member
                // continues where this one stopped (OffsetCommit with the member epoch).
                if m.commit_message(&msg, CommitMode::Sync).is_err() {
                    // STALE_MEMBER_EPOCH if the partition was just taken away: it is re-read.
                    commit_failures += 1;
                }
            }
        }
        let (x, y) = (owned(&a), owned(&c));
        if seen.len() == 300 && !x.is_empty() && !y.is_empty() && x.is_disjoint(&y) && x.len() + y.len() == 6 {
            eprintln!("KIP-848: first record after {first:?}; split {x:?} / {y:?} after {:?}", started.elapsed());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no split with every record read: {x:?} / {y:?}, read {}", seen.len());
    }
    if commit_failures == 0 {
        assert!(seen.values().all(|n| *n == 1), "a record was read twice although every read was committed at once");
    }
    drop(a); // leaves the group (member epoch -1)
    let left = Instant::now();
    while owned(&c).len() < 6 {
        let _ = c.poll(Duration::from_millis(20));
        assert!(left.elapsed() < Duration::from_secs(30), "the remaining member never got every partition: {:?}", owned(&c));
    }
    eprintln!("KIP-848: the remaining member owns all partitions {:?} after the other left", left.elapsed());
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition("kip848", p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(30)).expect("OffsetFetch");
    let offsets: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
    assert_eq!(offsets, vec![Offset::Offset(50); 6], "every partition committed at its end");
}

/// KIP-848 membership survives a coordinator failover: the coordinator's node of a librdkafka
/// consumer with `group.protocol=consumer` is killed -9, and the next coordinator, loading the
/// group from `__consumer_offsets`, keeps the member at its id and epoch with every partition —
/// it does not rejoin — while it goes on reading what is produced after the kill.
#[test]
fn kip848_membership_survives_coordinator_failover() {
    let mut cluster =
        TestCluster::start(3, "min.insync.replicas=2\ndefault.replication.factor=3\noffsets.topic.replication.factor=3\noffsets.topic.num.partitions=10");
    let b = cluster.bootstrap();
    let (topic, group) = ("kip848-fo", "kip848-fo-g");
    topic_with_records(&b, topic, 6, 3, 60);
    let consumer: BaseConsumer = client_config(&b)
        .set("group.id", group)
        .set("group.protocol", "consumer")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let owned = |c: &BaseConsumer| c.assignment().map(|a| a.count()).unwrap_or(0);
    let mut seen: BTreeSet<(i32, i64)> = BTreeSet::new();
    let mut read_until = |c: &BaseConsumer, n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < n || owned(c) < 6 {
            assert!(Instant::now() < deadline, "{what}: read {} of {n}, own {} partitions", seen.len(), owned(c));
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                seen.insert((m.partition(), m.offset()));
            }
        }
    };
    read_until(&consumer, 60, "before the failover");
    // (member id, epoch) as `runnel group describe --members` shows them.
    let member = |bootstrap: &str| -> Option<(String, String)> {
        let out = common::run_cli(&["group", "describe", group, "--members", "--bootstrap-server", bootstrap], b"", Duration::from_secs(30));
        let line = out.stdout.lines().skip_while(|l| !l.starts_with("CONSUMER-ID")).nth(1)?.to_string();
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() == 5 && cols[3] == "6").then(|| (cols[0].to_string(), cols[4].to_string()))
    };
    let before = member(&b).expect("the member and its epoch");

    let shard = runnel_actors::group::records::partition_for(group, 10);
    let coordinator = leader_of(&b, "__consumer_offsets", shard);
    eprintln!("KIP-848: killing node {coordinator}, the coordinator of {group}; member {before:?}");
    cluster.nodes[(coordinator - 1) as usize].kill();
    let others: Vec<String> = cluster.nodes.iter().enumerate().filter(|(i, _)| *i as i32 != coordinator - 1).map(|(_, n)| n.bootstrap()).collect();
    let others = others.join(",");
    let killed = Instant::now();
    let producer: FutureProducer = client_config(&others).set("acks", "all").create().expect("producer");
    block_on(async {
        for i in 0..30 {
            producer.send(FutureRecord::<(), String>::to(topic).payload(&i.to_string()).partition(i % 6), Duration::from_secs(30)).await.expect("produce");
        }
    });
    read_until(&consumer, 90, "after the failover");
    let caught_up = killed.elapsed();
    // Give the member more than its heartbeat interval (5 s) with the new coordinator: a member
    // the coordinator did not know would be told UNKNOWN_MEMBER_ID and rejoin at a new epoch.
    let heartbeats = Instant::now() + Duration::from_secs(7);
    while Instant::now() < heartbeats {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            seen.insert((m.partition(), m.offset()));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let _ = consumer.poll(Duration::from_millis(50));
        if let Some(m) = member(&others) {
            break m;
        }
        assert!(Instant::now() < deadline, "the new coordinator never described the member");
    };
    eprintln!("KIP-848: after the failover the member is {after:?}; the 30 records produced after the kill were read {caught_up:?} after it");
    assert_eq!(after, before, "the member rejoined (new id or epoch) instead of carrying on");
    assert_eq!(owned(&consumer), 6);
}

/// librdkafka with `group.protocol=consumer` subscribing by regular expression: the broker
/// resolves the pattern (KIP-848), so the member reads every record of the matching topics and
/// none of a topic the pattern does not match.
#[test]
fn kip848_regex_subscription() {
    use common::TestBroker;
    let broker = TestBroker::start();
    let b = broker.bootstrap();
    topic_with_records(&b, "kip848-re-a", 3, 1, 30);
    topic_with_records(&b, "kip848-re-b", 2, 1, 20);
    topic_with_records(&b, "kip848-other", 1, 1, 10);
    let c: BaseConsumer = client_config(&b)
        .set("group.id", "kip848-regex")
        .set("group.protocol", "consumer")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&["^kip848-re-.*"]).expect("subscribe");
    let mut seen: BTreeSet<(String, i32, i64)> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 50 {
        assert!(Instant::now() < deadline, "read {} of 50 records: {seen:?}", seen.len());
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                seen.insert((m.topic().to_string(), m.partition(), m.offset()));
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    let topics: BTreeSet<&str> = seen.iter().map(|(t, ..)| t.as_str()).collect();
    assert_eq!(topics, BTreeSet::from(["kip848-re-a", "kip848-re-b"]), "only the matching topics are read");
    let assigned: BTreeSet<String> = c.assignment().expect("assignment").elements().iter().map(|e| e.topic().to_string()).collect();
    assert_eq!(assigned, BTreeSet::from(["kip848-re-a".to_string(), "kip848-re-b".to_string()]));
}
