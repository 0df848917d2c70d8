//! `runnel topic|produce|consume`: the command-line tools, shaped like kafka-topics.sh and the
//! console producer/consumer, speaking the Kafka protocol to any broker.

use crate::client::{check, Client};
use anyhow::{bail, Context};
use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use runnel_actors::log::batch::{build_batch, PlainRecord};
use std::collections::BTreeMap;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Records waiting to be sent, by partition: `(key, value)`.
type Pending = BTreeMap<i32, Vec<(Option<Vec<u8>>, Vec<u8>)>>;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn parse_kv(items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items.iter().map(|i| i.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).with_context(|| format!("--config {i}: expected key=value"))).collect()
}

/// `topic create`.
pub async fn topic_create(bootstrap: &str, name: &str, partitions: i32, replication_factor: i16, configs: &[String]) -> anyhow::Result<()> {
    let mut c = Client::connect(bootstrap).await?;
    let topic = create_topics_request::CreatableTopic::default()
        .with_name(TopicName(s(name)))
        .with_num_partitions(partitions)
        .with_replication_factor(replication_factor)
        .with_configs(
            parse_kv(configs)?
                .into_iter()
                .map(|(k, v)| create_topics_request::CreatableTopicConfig::default().with_name(s(&k)).with_value(Some(s(&v))))
                .collect(),
        );
    let r = c.send(CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(30_000), 7).await?;
    for t in r.topics {
        check(t.error_code, &format!("create topic {name}"), t.error_message.as_ref())?;
    }
    println!("Created topic {name}.");
    Ok(())
}

/// `topic list`.
pub async fn topic_list(bootstrap: &str) -> anyhow::Result<()> {
    let mut c = Client::connect(bootstrap).await?;
    let r = c.send(MetadataRequest::default().with_topics(None), 12).await?;
    let mut names: Vec<String> = r.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect();
    names.sort();
    for n in names {
        println!("{n}");
    }
    Ok(())
}

/// `quorum`: the metadata quorum as the active controller describes it (DescribeQuorum through
/// a broker), in the form of `kafka-metadata-quorum.sh describe --status`, or with
/// `replication` one line per replica as `describe --replication` prints it.
pub async fn quorum(bootstrap: &str, replication: bool) -> anyhow::Result<()> {
    use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
    let mut c = Client::connect(bootstrap).await?;
    let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    let r = c.send(request, 2).await?;
    check(r.error_code, "DescribeQuorum", r.error_message.as_ref())?;
    let p = r.topics.first().and_then(|t| t.partitions.first()).context("DescribeQuorum: no partition in the answer")?;
    check(p.error_code, "DescribeQuorum", p.error_message.as_ref())?;
    let leader_end = p.current_voters.iter().find(|v| v.replica_id == p.leader_id).map_or(p.high_watermark, |v| v.log_end_offset);
    if replication {
        println!("{:<8} {:<14} {:<6} {:<20} {:<22} Status", "NodeId", "LogEndOffset", "Lag", "LastFetchTimestamp", "LastCaughtUpTimestamp");
        let mut rows: Vec<(&describe_quorum_response::ReplicaState, &str)> = Vec::new();
        rows.extend(p.current_voters.iter().filter(|v| v.replica_id == p.leader_id).map(|v| (v, "Leader")));
        rows.extend(p.current_voters.iter().filter(|v| v.replica_id != p.leader_id).map(|v| (v, "Follower")));
        rows.extend(p.observers.iter().map(|v| (v, "Observer")));
        for (v, status) in rows {
            let lag = if v.log_end_offset < 0 { "-".to_string() } else { (leader_end - v.log_end_offset).max(0).to_string() };
            println!("{:<8} {:<14} {:<6} {:<20} {:<22} {status}", v.replica_id.0, v.log_end_offset, lag, v.last_fetch_timestamp, v.last_caught_up_timestamp);
        }
        return Ok(());
    }
    // As kafka-metadata-quorum.sh: the follower with the lowest log end; its lag in offsets, and
    // the leader's catch-up time (now, on the leader's clock) minus its own (-1 if unknown).
    let leader = p.current_voters.iter().find(|v| v.replica_id == p.leader_id);
    let furthest = p.current_voters.iter().filter(|v| v.replica_id != p.leader_id).min_by_key(|v| v.log_end_offset);
    let (max_lag, max_lag_ms) = match (leader, furthest) {
        (Some(l), Some(f)) => {
            let ms =
                if l.last_caught_up_timestamp < 0 || f.last_caught_up_timestamp < 0 { -1 } else { l.last_caught_up_timestamp - f.last_caught_up_timestamp };
            (l.log_end_offset - f.log_end_offset, ms)
        }
        _ => (0, 0),
    };
    let list = |r: &[describe_quorum_response::ReplicaState]| format!("[{}]", r.iter().map(|v| v.replica_id.0.to_string()).collect::<Vec<_>>().join(","));
    println!("LeaderId:               {}", p.leader_id.0);
    println!("LeaderEpoch:            {}", p.leader_epoch);
    println!("HighWatermark:          {}", p.high_watermark);
    println!("MaxFollowerLag:         {max_lag}");
    println!("MaxFollowerLagTimeMs:   {max_lag_ms}");
    println!("CurrentVoters:          {}", list(&p.current_voters));
    println!("CurrentObservers:       {}", list(&p.observers));
    Ok(())
}

/// `topic describe`.
pub async fn topic_describe(bootstrap: &str, name: Option<&str>) -> anyhow::Result<()> {
    let mut c = Client::connect(bootstrap).await?;
    let topics = name.map(|n| vec![metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s(n))))]);
    let r = c.send(MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(false), 12).await?;
    for t in r.topics {
        let tname = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        check(t.error_code, &format!("describe {tname}"), None)?;
        let cfg = c
            .send(
                DescribeConfigsRequest::default().with_resources(vec![describe_configs_request::DescribeConfigsResource::default()
                    .with_configuration_keys(None)
                    .with_resource_type(2)
                    .with_resource_name(s(&tname))]),
                4,
            )
            .await?;
        let overrides: Vec<String> = cfg
            .results
            .iter()
            .flat_map(|r| r.configs.iter())
            .filter(|c| c.config_source == 1)
            .map(|c| format!("{}={}", c.name.as_str(), c.value.as_ref().map(|v| v.as_str()).unwrap_or("")))
            .collect();
        println!(
            "Topic: {tname}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}",
            t.topic_id,
            t.partitions.len(),
            t.partitions.first().map_or(0, |p| p.replica_nodes.len()),
            overrides.join(",")
        );
        for p in &t.partitions {
            let list = |v: &Vec<BrokerId>| v.iter().map(|b| b.0.to_string()).collect::<Vec<_>>().join(",");
            println!(
                "\tTopic: {tname}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}",
                p.partition_index,
                p.leader_id.0,
                list(&p.replica_nodes),
                list(&p.isr_nodes)
            );
        }
    }
    Ok(())
}

/// `topic delete`.
pub async fn topic_delete(bootstrap: &str, name: &str) -> anyhow::Result<()> {
    let mut c = Client::connect(bootstrap).await?;
    let r = c.send(DeleteTopicsRequest::default().with_topic_names(vec![TopicName(s(name))]).with_timeout_ms(30_000), 5).await?;
    for t in r.responses {
        check(t.error_code, &format!("delete topic {name}"), t.error_message.as_ref())?;
    }
    println!("Deleted topic {name}.");
    Ok(())
}

/// `topic alter`: set/delete configs and/or raise the partition count.
pub async fn topic_alter(bootstrap: &str, name: &str, partitions: Option<i32>, set: &[String], delete: &[String]) -> anyhow::Result<()> {
    let mut c = Client::connect(bootstrap).await?;
    if let Some(count) = partitions {
        let r = c
            .send(
                CreatePartitionsRequest::default()
                    .with_topics(vec![create_partitions_request::CreatePartitionsTopic::default()
                        .with_name(TopicName(s(name)))
                        .with_count(count)
                        .with_assignments(None)])
                    .with_timeout_ms(30_000),
                3,
            )
            .await?;
        for t in r.results {
            check(t.error_code, &format!("add partitions to {name}"), t.error_message.as_ref())?;
        }
    }
    if !set.is_empty() || !delete.is_empty() {
        let mut configs: Vec<_> = parse_kv(set)?
            .into_iter()
            .map(|(k, v)| incremental_alter_configs_request::AlterableConfig::default().with_name(s(&k)).with_config_operation(0).with_value(Some(s(&v))))
            .collect();
        configs.extend(delete.iter().map(|k| incremental_alter_configs_request::AlterableConfig::default().with_name(s(k)).with_config_operation(1)));
        let r = c
            .send(
                IncrementalAlterConfigsRequest::default().with_resources(vec![incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(name))
                    .with_configs(configs)]),
                1,
            )
            .await?;
        for res in r.responses {
            check(res.error_code, &format!("alter configs of {name}"), res.error_message.as_ref())?;
        }
    }
    println!("Altered topic {name}.");
    Ok(())
}

/// Partition errors after which a request is sent again once the leaders are looked up anew
/// (LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER, NOT_ENOUGH_REPLICAS, FENCED_LEADER_EPOCH,
/// UNKNOWN_LEADER_EPOCH, OFFSET_NOT_AVAILABLE): the request did nothing, leadership moved or is
/// settling.
const RETRIABLE: &[i16] = &[5, 6, 19, 74, 75, 78];
/// Rounds of "look up the leaders, send again" before the CLI gives up.
const ATTEMPTS: u32 = 50;

/// A topic's partition leaders and a connection to each, as a Kafka client keeps them: requests
/// for a partition go to its leader, and the leaders are looked up again when one moves.
struct TopicLeaders {
    bootstrap: String,
    topic: String,
    partitions: i32,
    topic_id: uuid::Uuid,
    /// Partition → leader node.
    leaders: BTreeMap<i32, i32>,
    /// Node → `host:port`.
    addresses: BTreeMap<i32, String>,
    conns: BTreeMap<i32, Client>,
}

impl TopicLeaders {
    /// Look the topic up (creating it if the brokers auto-create topics), waiting until every
    /// partition has a leader.
    async fn new(bootstrap: &str, topic: &str) -> anyhow::Result<TopicLeaders> {
        let mut t = TopicLeaders {
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            partitions: 0,
            topic_id: uuid::Uuid::nil(),
            leaders: BTreeMap::new(),
            addresses: BTreeMap::new(),
            conns: BTreeMap::new(),
        };
        t.refresh().await?;
        Ok(t)
    }

    /// Ask any broker (the bootstrap servers, then the known brokers) for the topic's leaders.
    async fn refresh(&mut self) -> anyhow::Result<()> {
        for _ in 0..ATTEMPTS {
            let mut candidates = vec![self.bootstrap.clone()];
            candidates.extend(self.addresses.values().cloned());
            let mut answer = None;
            for addr in candidates {
                let Ok(mut c) = Client::connect(&addr).await else { continue };
                let request = MetadataRequest::default()
                    .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s(&self.topic))))]))
                    .with_allow_auto_topic_creation(true);
                if let Ok(r) = c.send(request, 12).await {
                    answer = Some(r);
                    break;
                }
            }
            let r = answer.with_context(|| format!("no broker of {} answers", self.bootstrap))?;
            let t = r.topics.into_iter().next().context("empty metadata response")?;
            match t.error_code {
                0 if !t.partitions.is_empty() && t.partitions.iter().all(|p| p.error_code == 0 && p.leader_id.0 >= 0) => {
                    self.addresses = r.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
                    self.leaders = t.partitions.iter().map(|p| (p.partition_index, p.leader_id.0)).collect();
                    self.partitions = t.partitions.len() as i32;
                    self.topic_id = t.topic_id;
                    self.conns.retain(|node, _| self.addresses.contains_key(node));
                    return Ok(());
                }
                0 | 5 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                code => check(code, &format!("topic {}", self.topic), None)?,
            }
        }
        bail!("topic {} has no leader", self.topic)
    }

    /// `partitions` grouped by their leader.
    fn by_leader(&self, partitions: impl IntoIterator<Item = i32>) -> BTreeMap<i32, Vec<i32>> {
        let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in partitions {
            out.entry(self.leaders.get(&p).copied().unwrap_or(-1)).or_default().push(p);
        }
        out
    }

    /// Send `request` to `node`, connecting first if needed; a connection that fails is dropped
    /// (the caller looks the leaders up again and retries).
    async fn send<R: kafka_protocol::protocol::Request>(&mut self, node: i32, request: R, max_version: i16) -> anyhow::Result<R::Response> {
        if !self.conns.contains_key(&node) {
            let addr = self.addresses.get(&node).with_context(|| format!("no address for node {node}"))?;
            let c = Client::connect(addr).await?;
            self.conns.insert(node, c);
        }
        let result = self.conns.get_mut(&node).expect("connected above").send(request, max_version).await;
        if result.is_err() {
            self.conns.remove(&node);
        }
        result
    }
}

async fn backoff() {
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
}

/// `produce`: one record per stdin line; `key_separator` splits key and value.
pub async fn produce(bootstrap: &str, topic: &str, key_separator: Option<&str>, partition: Option<i32>, acks: i16) -> anyhow::Result<()> {
    if acks == 0 {
        bail!("--acks 0 is not supported by the CLI producer (it waits for answers)");
    }
    let mut leaders = TopicLeaders::new(bootstrap, topic).await?;
    let partitions = leaders.partitions;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut pending: Pending = BTreeMap::new();
    let mut count = 0usize;
    let mut round_robin = 0i32;
    let mut eof = false;
    while !eof {
        match lines.next_line().await? {
            Some(line) => {
                let (key, value): (Option<Vec<u8>>, Vec<u8>) = match key_separator.and_then(|sep| line.split_once(sep)) {
                    Some((k, v)) => (Some(k.as_bytes().to_vec()), v.as_bytes().to_vec()),
                    None => (None, line.into_bytes()),
                };
                let p = partition.unwrap_or_else(|| match key.as_deref() {
                    Some(k) => (crc32fast_hash(k) % partitions as u32) as i32,
                    None => {
                        round_robin = (round_robin + 1) % partitions;
                        round_robin
                    }
                });
                pending.entry(p).or_default().push((key, value));
                count += 1;
            }
            None => eof = true,
        }
        if eof || count % 1000 == 0 {
            send_batches(&mut leaders, std::mem::take(&mut pending), acks).await?;
        }
    }
    eprintln!("produced {count} records to {topic}");
    Ok(())
}

fn crc32fast_hash(b: &[u8]) -> u32 {
    // Any stable hash will do for the CLI's key partitioning.
    b.iter().fold(2166136261u32, |h, x| (h ^ *x as u32).wrapping_mul(16777619))
}

/// Send each partition's records to its leader; partitions refused for a retriable reason (or
/// whose leader's connection failed) are sent again once the leaders are looked up anew. As
/// Kafka's producer without idempotence, a batch whose answer was lost may be written twice.
async fn send_batches(leaders: &mut TopicLeaders, pending: Pending, acks: i16) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let topic = leaders.topic.clone();
    let mut todo: BTreeMap<i32, Bytes> = BTreeMap::new();
    for (p, records) in pending {
        let refs: Vec<PlainRecord<'_>> = records.iter().map(|(k, v)| (k.as_deref(), Some(v.as_slice()), now)).collect();
        todo.insert(p, build_batch(&refs, (-1, -1, -1)));
    }
    for attempt in 0..ATTEMPTS {
        if todo.is_empty() {
            return Ok(());
        }
        if attempt > 0 {
            backoff().await;
            leaders.refresh().await?;
        }
        for (node, ps) in leaders.by_leader(todo.keys().copied().collect::<Vec<_>>()) {
            let data = ps.iter().map(|p| produce_request::PartitionProduceData::default().with_index(*p).with_records(Some(todo[p].clone()))).collect();
            let request = ProduceRequest::default()
                .with_acks(acks)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![produce_request::TopicProduceData::default().with_name(TopicName(s(&topic))).with_partition_data(data)]);
            let Ok(r) = leaders.send(node, request, 9).await else { continue };
            for t in r.responses {
                for p in t.partition_responses {
                    if p.error_code == 0 {
                        todo.remove(&p.index);
                    } else if !RETRIABLE.contains(&p.error_code) {
                        check(p.error_code, &format!("produce to {topic}-{}", p.index), p.error_message.as_ref())?;
                    }
                }
            }
        }
    }
    bail!("produce to {topic}: partitions {:?} still refused after {ATTEMPTS} attempts", todo.keys().collect::<Vec<_>>())
}

/// The offsets of `partitions` at `timestamp` (-1 latest, -2 earliest), asked of their leaders.
async fn list_offsets(leaders: &mut TopicLeaders, partitions: &[i32], timestamp: i64) -> anyhow::Result<BTreeMap<i32, i64>> {
    let topic = leaders.topic.clone();
    let mut offsets = BTreeMap::new();
    for attempt in 0..ATTEMPTS {
        let todo: Vec<i32> = partitions.iter().copied().filter(|p| !offsets.contains_key(p)).collect();
        if todo.is_empty() {
            return Ok(offsets);
        }
        if attempt > 0 {
            backoff().await;
            leaders.refresh().await?;
        }
        for (node, ps) in leaders.by_leader(todo) {
            let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(s(&topic)))
                .with_partitions(
                    ps.iter().map(|p| list_offsets_request::ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(timestamp)).collect(),
                )]);
            let Ok(r) = leaders.send(node, request, 7).await else { continue };
            for p in r.topics.into_iter().flat_map(|t| t.partitions) {
                if p.error_code == 0 {
                    offsets.insert(p.partition_index, p.offset);
                } else if !RETRIABLE.contains(&p.error_code) {
                    check(p.error_code, &format!("list offsets of {topic}-{}", p.partition_index), None)?;
                }
            }
        }
    }
    bail!("list offsets of {topic}: no answer from the leaders after {ATTEMPTS} attempts")
}

/// `consume`: print records as they arrive; stops after `max_messages` or `idle_timeout_ms`
/// without a record.
#[allow(clippy::too_many_arguments)]
pub async fn consume(
    bootstrap: &str,
    topic: &str,
    from_beginning: bool,
    partition: Option<i32>,
    max_messages: Option<usize>,
    print_key: bool,
    key_separator: &str,
    idle_timeout_ms: Option<u64>,
) -> anyhow::Result<()> {
    let mut leaders = TopicLeaders::new(bootstrap, topic).await?;
    let wanted: Vec<i32> = match partition {
        Some(p) => vec![p],
        None => (0..leaders.partitions).collect(),
    };
    let mut offsets = list_offsets(&mut leaders, &wanted, if from_beginning { -2 } else { -1 }).await?;
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    let mut seen = 0usize;
    let mut idle_since = std::time::Instant::now();
    let mut failures = 0u32;
    loop {
        // One fetch per leader in turn, each waiting its share of half a second for records.
        let groups = leaders.by_leader(offsets.keys().copied().collect::<Vec<_>>());
        let wait_ms = (500 / groups.len().max(1) as i32).max(50);
        let mut got = false;
        let mut moved = false;
        for (node, ps) in groups {
            let fetch = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(wait_ms)
                .with_min_bytes(1)
                .with_max_bytes(50 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![fetch_request::FetchTopic::default().with_topic(TopicName(s(topic))).with_topic_id(leaders.topic_id).with_partitions(
                    ps.iter()
                        .map(|p| {
                            fetch_request::FetchPartition::default()
                                .with_partition(*p)
                                .with_fetch_offset(offsets[p])
                                .with_partition_max_bytes(1 << 20)
                                .with_current_leader_epoch(-1)
                        })
                        .collect(),
                )]);
            let Ok(r) = leaders.send(node, fetch, 12).await else {
                moved = true;
                continue;
            };
            for t in r.responses {
                for p in t.partitions {
                    if RETRIABLE.contains(&p.error_code) {
                        moved = true;
                        continue;
                    }
                    check(p.error_code, &format!("fetch {topic}-{}", p.partition_index), None)?;
                    let Some(mut records) = p.records.filter(|r| !r.is_empty()) else { continue };
                    let end_of_batches = runnel_actors::log::batch::end_of_batches(&records);
                    let sets = RecordBatchDecoder::decode_all(&mut records).map_err(|e| anyhow::anyhow!("cannot decode records: {e}"))?;
                    let next = offsets.get_mut(&p.partition_index).context("a partition the fetch did not ask for")?;
                    for set in sets {
                        for rec in set.records {
                            if rec.offset < *next {
                                continue;
                            }
                            *next = rec.offset + 1;
                            got = true;
                            if print_key {
                                out.write_all(rec.key.as_deref().unwrap_or(b"null")).await?;
                                out.write_all(key_separator.as_bytes()).await?;
                            }
                            out.write_all(rec.value.as_ref().map(Bytes::as_ref).unwrap_or(b"null")).await?;
                            out.write_all(b"\n").await?;
                            seen += 1;
                            if max_messages.is_some_and(|m| seen >= m) {
                                out.flush().await?;
                                return Ok(());
                            }
                        }
                    }
                    // Past batches the cleaner emptied or left with a gap at their end.
                    *next = (*next).max(end_of_batches.unwrap_or(0));
                }
            }
        }
        out.flush().await?;
        if moved {
            // A leader moved or went away: look the leaders up again (and give up if they stay
            // unreachable).
            failures += 1;
            if failures > ATTEMPTS {
                bail!("fetch {topic}: the partitions' leaders stayed unreachable");
            }
            backoff().await;
            leaders.refresh().await?;
        } else {
            failures = 0;
        }
        if got {
            idle_since = std::time::Instant::now();
        } else if idle_timeout_ms.is_some_and(|t| idle_since.elapsed().as_millis() as u64 >= t) {
            return Ok(());
        }
    }
}
