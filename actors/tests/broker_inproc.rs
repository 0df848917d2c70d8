//! The broker actor driven in-process over an in-memory disk: every supported API at every
//! supported version gets an answer (never a closed connection), so no response sets a field its
//! version cannot carry; and acknowledged records survive a crash that loses unsynced writes.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use runnel_actors::broker::codec::SUPPORTED_APIS;
use runnel_actors::broker::config::BrokerConfig;
use runnel_actors::broker::{Broker, BrokerMsg};
use runnel_actors::controller::rpc::{ControllerRequest, ControllerResponse, PeerMsg};
use runnel_actors::controller::{Controller, ControllerConfig};
use runnel_actors::core::mem_disk::MemDisk;
use runnel_actors::core::{Actor, Addr, ConnId, Cx, Effect, IoDone, Rng, TimerId};
use runnel_actors::log::batch::build_batch;
use runnel_actors::partition::Role;
use std::collections::{BTreeMap, VecDeque};

/// A one-node cluster — broker (actor 0) and controller (actor 1) — on an in-memory disk,
/// with effects executed synchronously and timers fired in virtual time.
struct Harness {
    broker: Broker,
    controller: Controller,
    cx: Cx<BrokerMsg>,
    ccx: Cx<BrokerMsg>,
    disk: MemDisk,
    now: u64,
    timers: BTreeMap<(u32, TimerId), u64>,
    mail: VecDeque<(u32, Addr, BrokerMsg)>,
    replies: Vec<(u64, Option<Bytes>)>,
    closed: bool,
    /// The broker stopped itself (controlled shutdown).
    broker_stopped: bool,
    seq: u64,
    /// Every metadata fetch the broker sent the controller: `(rpc id, from)`.
    metadata_fetches: Vec<(u64, u64)>,
}

impl Harness {
    fn start(disk: MemDisk) -> Harness {
        let mut h = Harness {
            broker: Broker::new(test_config()),
            controller: Controller::new(ControllerConfig::default()),
            cx: Cx::new(Addr { node: 1, actor: 0 }, 1),
            ccx: Cx::new(Addr { node: 1, actor: 1 }, 2),
            disk,
            now: 1,
            timers: BTreeMap::new(),
            mail: VecDeque::new(),
            replies: Vec::new(),
            closed: false,
            broker_stopped: false,
            seq: 0,
            metadata_fetches: Vec::new(),
        };
        h.set_time();
        h.controller.on_start(&mut h.ccx);
        h.broker.on_start(&mut h.cx);
        h.run_until(|h| h.broker.is_ready() && h.broker.partition_views().iter().all(|v| v.role == Role::Leader) && h.broker_caught_up());
        h
    }

    fn broker_caught_up(&self) -> bool {
        self.controller.is_active() && self.broker.is_serving()
    }

    fn set_time(&mut self) {
        let wall = 1_700_000_000_000 + self.now as i64;
        self.cx.set_time(self.now, wall);
        self.ccx.set_time(self.now, wall);
    }

    /// Execute effects until nothing is left to do right now.
    fn pump(&mut self) {
        loop {
            let mut effects: Vec<(u32, Effect<BrokerMsg>)> = self.cx.take_effects().into_iter().map(|e| (0, e)).collect();
            effects.extend(self.ccx.take_effects().into_iter().map(|e| (1, e)));
            if effects.is_empty() && self.mail.is_empty() {
                return;
            }
            for (actor, effect) in effects {
                match effect {
                    Effect::Disk { token, op } => {
                        let result = self.disk.apply(op);
                        let done = IoDone { token, result };
                        if actor == 0 {
                            self.broker.on_io(&mut self.cx, done);
                        } else {
                            self.controller.on_io(&mut self.ccx, done);
                        }
                    }
                    Effect::Reply { seq, frame, .. } => self.replies.push((seq, frame)),
                    Effect::Close { .. } => self.closed = true,
                    Effect::Send { to, msg } => {
                        if let BrokerMsg::Peer(PeerMsg::ToController { id, request: ControllerRequest::FetchMetadata { from, .. } }) = &msg {
                            self.metadata_fetches.push((*id, *from));
                        }
                        self.mail.push_back((to.actor, Addr { node: 1, actor }, msg))
                    }
                    Effect::SetTimer { id, after_ms } => {
                        self.timers.insert((actor, id), self.now + after_ms);
                    }
                    Effect::CancelTimer { id } => {
                        self.timers.remove(&(actor, id));
                    }
                    Effect::PeerAddress { .. } => {}
                    Effect::Stop if actor == 0 => self.broker_stopped = true,
                    Effect::Stop => panic!("the controller stopped"),
                }
            }
            if let Some((to, from, msg)) = self.mail.pop_front() {
                if to == 0 {
                    self.broker.on_message(&mut self.cx, from, msg);
                } else {
                    self.controller.on_message(&mut self.ccx, from, msg);
                }
            }
        }
    }

    /// Pump and fire timers (advancing virtual time) until `done` holds.
    fn run_until(&mut self, done: impl Fn(&Harness) -> bool) {
        for _ in 0..100_000 {
            self.pump();
            if done(self) {
                return;
            }
            let Some((&(actor, id), &due)) = self.timers.iter().min_by_key(|(_, due)| **due) else { panic!("stuck: no timers") };
            self.timers.remove(&(actor, id));
            self.now = self.now.max(due);
            self.set_time();
            if actor == 0 {
                self.broker.on_timer(&mut self.cx, id);
            } else {
                self.controller.on_timer(&mut self.ccx, id);
            }
        }
        panic!("condition not reached in virtual time {} ms", self.now);
    }

    /// Send one request and return its decoded response, panicking if the broker closed.
    fn call<R: Request>(&mut self, r: &R, version: i16) -> R::Response {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(9)
            .with_client_id(Some(StrBytes::from_static_str("t")))
            .encode(&mut buf, R::header_version(version))
            .expect("header");
        r.encode(&mut buf, version).expect("body");
        self.seq += 1;
        self.replies.clear();
        self.broker.on_message(&mut self.cx, Addr { node: -1, actor: 0 }, BrokerMsg::Request { conn: ConnId(1), seq: self.seq, frame: buf.freeze() });
        self.run_until(|h| h.closed || !h.replies.is_empty());
        assert!(!self.closed, "api {} v{version} closed the connection", R::KEY);
        let (_, frame) = self.replies.pop().unwrap_or_else(|| panic!("api {} v{version}: no answer", R::KEY));
        let mut frame = frame.expect("a response frame");
        let header = ResponseHeader::decode(&mut frame, <R::Response as HeaderVersion>::header_version(version)).expect("response header");
        assert_eq!(header.correlation_id, 9);
        R::Response::decode(&mut frame, version).expect("response body")
    }
}

/// One node: the internal topics get one replica (and few partitions, to load quickly).
fn test_config() -> BrokerConfig {
    let mut c = BrokerConfig::default();
    c.groups.offsets_replication_factor = 1;
    c.groups.transaction_replication_factor = 1;
    c.groups.offsets_partitions = 3;
    c
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn produce_request(topic: &str, value: &[u8]) -> ProduceRequest {
    let batch = build_batch(&[(Some(b"k".as_slice()), Some(value), 1_700_000_000_000)], (-1, -1, -1));
    ProduceRequest::default().with_acks(-1).with_timeout_ms(1000).with_topic_data(vec![produce_request::TopicProduceData::default()
        .with_name(name(topic))
        .with_partition_data(vec![produce_request::PartitionProduceData::default().with_index(0).with_records(Some(batch))])])
}

fn create(h: &mut Harness, topic: &str) -> uuid::Uuid {
    let r = h.call(
        &CreateTopicsRequest::default()
            .with_topics(vec![create_topics_request::CreatableTopic::default().with_name(name(topic)).with_num_partitions(1).with_replication_factor(1)]),
        7,
    );
    assert_eq!(r.topics[0].error_code, 0);
    r.topics[0].topic_id
}

/// Every API the broker advertises answers at every version it advertises.
#[test]
fn every_supported_version_answers() {
    let mut h = Harness::start(MemDisk::new());
    let id = create(&mut h, "t");
    assert_eq!(h.call(&produce_request("t", b"v"), 9).responses[0].partition_responses[0].error_code, 0);
    for (key, min, max) in SUPPORTED_APIS {
        for v in *min..=*max {
            if GROUP_APIS.contains(key) {
                continue; // group_apis_answer_at_every_version
            }
            match key {
                ApiKey::Produce => {
                    let r = h.call(&produce_request("t", b"x"), v);
                    assert_eq!(r.responses[0].partition_responses[0].error_code, 0, "produce v{v}");
                }
                ApiKey::Fetch => {
                    let r = h.call(
                        &FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![fetch_request::FetchTopic::default()
                            .with_topic(name("t"))
                            .with_topic_id(id)
                            .with_partitions(vec![fetch_request::FetchPartition::default().with_fetch_offset(0).with_partition_max_bytes(1 << 20)])]),
                        v,
                    );
                    let p = &r.responses[0].partitions[0];
                    assert_eq!(p.error_code, 0, "fetch v{v}");
                    assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()), "fetch v{v} returned no records");
                }
                ApiKey::ListOffsets => {
                    let r = h.call(
                        &ListOffsetsRequest::default().with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                            .with_name(name("t"))
                            .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1)])]),
                        v,
                    );
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "list offsets v{v}");
                    assert!(r.topics[0].partitions[0].offset >= 1);
                }
                ApiKey::Metadata => {
                    let r = h.call(&MetadataRequest::default().with_topics(if v == 0 { Some(vec![]) } else { None }), v);
                    assert!(r.topics.iter().any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "t")), "metadata v{v}");
                }
                ApiKey::OffsetForLeaderEpoch => {
                    let r = h.call(
                        &OffsetForLeaderEpochRequest::default().with_topics(vec![offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                            .with_topic(name("t"))
                            .with_partitions(vec![offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                                .with_current_leader_epoch(-1)
                                .with_leader_epoch(0)])]),
                        v,
                    );
                    assert_eq!(r.topics[0].partitions[0].error_code, 0);
                }
                ApiKey::ApiVersions => assert_eq!(h.call(&ApiVersionsRequest::default(), v).error_code, 0),
                ApiKey::CreateTopics => {
                    let topic = format!("c{v}");
                    let r = h.call(
                        &CreateTopicsRequest::default().with_topics(vec![create_topics_request::CreatableTopic::default()
                            .with_name(name(&topic))
                            .with_num_partitions(2)
                            .with_replication_factor(-1)]),
                        v,
                    );
                    assert_eq!(r.topics[0].error_code, 0, "create topics v{v}");
                }
                ApiKey::DeleteTopics => {
                    // CreateTopics made c2..=c7 above; DeleteTopics v1..=v6 removes them.
                    let topic = format!("c{}", v + 1);
                    let mut r = DeleteTopicsRequest::default();
                    if v >= 6 {
                        r.topics = vec![delete_topics_request::DeleteTopicState::default().with_name(Some(name(&topic)))];
                    } else {
                        r.topic_names = vec![name(&topic)];
                    }
                    assert_eq!(h.call(&r, v).responses[0].error_code, 0, "delete topics v{v}");
                }
                ApiKey::DeleteRecords => {
                    let r = h.call(
                        &DeleteRecordsRequest::default().with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
                            .with_name(name("t"))
                            .with_partitions(vec![delete_records_request::DeleteRecordsPartition::default().with_offset(0)])]),
                        v,
                    );
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "delete records v{v}");
                }
                ApiKey::InitProducerId => {
                    let r = h.call(&InitProducerIdRequest::default().with_transactional_id(None).with_producer_id(ProducerId(-1)).with_producer_epoch(-1), v);
                    assert_eq!(r.error_code, 0);
                    assert!(r.producer_id.0 >= 0);
                }
                ApiKey::DescribeConfigs => {
                    let r = h.call(
                        &DescribeConfigsRequest::default().with_resources(vec![describe_configs_request::DescribeConfigsResource::default()
                            .with_configuration_keys(None)
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("t"))]),
                        v,
                    );
                    assert_eq!(r.results[0].error_code, 0);
                    assert!(r.results[0].configs.iter().any(|c| c.name.as_str() == "retention.ms"));
                }
                ApiKey::AlterConfigs => {
                    let r = h.call(
                        &AlterConfigsRequest::default().with_resources(vec![alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("t"))
                            .with_configs(vec![alter_configs_request::AlterableConfig::default()
                                .with_name(StrBytes::from_static_str("retention.ms"))
                                .with_value(Some(StrBytes::from_static_str("1000000")))])]),
                        v,
                    );
                    assert_eq!(r.responses[0].error_code, 0);
                }
                ApiKey::CreatePartitions => {
                    let count = 2 + v as i32;
                    let r = h.call(
                        &CreatePartitionsRequest::default().with_topics(vec![create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(name("t"))
                            .with_count(count)
                            .with_assignments(None)]),
                        v,
                    );
                    assert_eq!(r.results[0].error_code, 0, "create partitions v{v}");
                }
                ApiKey::IncrementalAlterConfigs => {
                    let r = h.call(
                        &IncrementalAlterConfigsRequest::default().with_resources(vec![incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("t"))
                            .with_configs(vec![incremental_alter_configs_request::AlterableConfig::default()
                                .with_name(StrBytes::from_static_str("segment.bytes"))
                                .with_value(Some(StrBytes::from_static_str("1000000")))])]),
                        v,
                    );
                    assert_eq!(r.responses[0].error_code, 0);
                }
                ApiKey::DescribeCluster => {
                    let r = h.call(&DescribeClusterRequest::default(), v);
                    assert_eq!(r.brokers.len(), 1);
                    assert_eq!(r.controller_id.0, 1, "the active controller is node 1");
                }
                ApiKey::ElectLeaders => {
                    // The only replica already leads: a preferred election is not needed.
                    let r = h.call(
                        &ElectLeadersRequest::default().with_election_type(0).with_topic_partitions(Some(vec![
                            elect_leaders_request::TopicPartitions::default().with_topic(name("t")).with_partitions(vec![0]),
                        ])),
                        v,
                    );
                    assert_eq!(r.replica_election_results[0].partition_result[0].error_code, 84, "ELECTION_NOT_NEEDED v{v}");
                }
                ApiKey::AlterPartitionReassignments => {
                    // Cancelling when nothing is in progress: NO_REASSIGNMENT_IN_PROGRESS.
                    let r = h.call(
                        &AlterPartitionReassignmentsRequest::default().with_topics(vec![alter_partition_reassignments_request::ReassignableTopic::default()
                            .with_name(name("t"))
                            .with_partitions(vec![alter_partition_reassignments_request::ReassignablePartition::default()
                                .with_partition_index(0)
                                .with_replicas(None)])]),
                        v,
                    );
                    assert_eq!(r.responses[0].partitions[0].error_code, 85);
                    // Reassigning to the replica it already has completes at once.
                    let r = h.call(
                        &AlterPartitionReassignmentsRequest::default().with_topics(vec![alter_partition_reassignments_request::ReassignableTopic::default()
                            .with_name(name("t"))
                            .with_partitions(vec![alter_partition_reassignments_request::ReassignablePartition::default()
                                .with_partition_index(0)
                                .with_replicas(Some(vec![BrokerId(1)]))])]),
                        v,
                    );
                    assert_eq!(r.responses[0].partitions[0].error_code, 0);
                    // A replica that does not exist is refused.
                    let r = h.call(
                        &AlterPartitionReassignmentsRequest::default().with_topics(vec![alter_partition_reassignments_request::ReassignableTopic::default()
                            .with_name(name("t"))
                            .with_partitions(vec![alter_partition_reassignments_request::ReassignablePartition::default()
                                .with_partition_index(0)
                                .with_replicas(Some(vec![BrokerId(7)]))])]),
                        v,
                    );
                    assert_eq!(r.responses[0].partitions[0].error_code, 39, "INVALID_REPLICA_ASSIGNMENT");
                }
                ApiKey::ListPartitionReassignments => {
                    let r = h.call(&ListPartitionReassignmentsRequest::default().with_topics(None), v);
                    assert_eq!(r.error_code, 0);
                    assert!(r.topics.is_empty(), "nothing is being reassigned");
                }
                ApiKey::DescribeQuorum => {
                    let quorum = |partition: i32| {
                        DescribeQuorumRequest::default().with_topics(vec![describe_quorum_request::TopicData::default()
                            .with_topic_name(name("__cluster_metadata"))
                            .with_partitions(vec![describe_quorum_request::PartitionData::default().with_partition_index(partition)])])
                    };
                    // The single node leads the quorum, is its only voter, and has no observer
                    // (its broker is the voter's own node).
                    let r = h.call(&quorum(0), v);
                    assert_eq!(r.error_code, 0, "v{v}");
                    let p = &r.topics[0].partitions[0];
                    assert_eq!((p.error_code, p.leader_id.0), (0, 1), "v{v}");
                    assert!(p.leader_epoch >= 1 && p.high_watermark >= 1, "v{v}: {p:?}");
                    assert_eq!(p.current_voters.iter().map(|r| (r.replica_id.0, r.log_end_offset >= p.high_watermark)).collect::<Vec<_>>(), vec![(1, true)]);
                    assert!(p.observers.is_empty(), "v{v}: {p:?}");
                    let r = h.call(&quorum(1), v);
                    assert_eq!(r.topics[0].partitions[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION v{v}");
                }
                other => panic!("no test for advertised api {other:?}"),
            }
        }
    }
}

/// Records acknowledged with acks=all (fsynced) survive a crash that drops every unsynced write;
/// topics whose creation was acknowledged survive too.
/// A metadata answer carries the offset its fetch was from, and the broker takes one only as
/// the answer to a fetch from where it is: an answer meant for an earlier fetch (its previous
/// incarnation's, say, with an id that happens to match) would otherwise make it skip the
/// records in between, and never learn the topics they created.
#[test]
fn a_metadata_answer_for_another_offset_is_dropped() {
    let mut h = Harness::start(MemDisk::new());
    create(&mut h, "before");
    // The next fetch, from where the broker is now, waits at the controller for news.
    h.run_until(|h| h.metadata_fetches.last().is_some_and(|&(_, from)| from == h.broker.metadata_offset()));
    let at = h.broker.metadata_offset();
    let &(id, _) = h.metadata_fetches.last().expect("the broker fetches metadata");
    let forged = ControllerResponse::Metadata { from: at + 100, image: None, records: Vec::new(), last: at + 100 };
    h.broker.on_message(&mut h.cx, Addr { node: 1, actor: 1 }, BrokerMsg::Peer(PeerMsg::FromController { id, response: forged }));
    h.pump();
    assert_eq!(h.broker.metadata_offset(), at, "an answer from another offset moved the broker's metadata");
    let &(_, again) = h.metadata_fetches.last().expect("fetches");
    assert_eq!(again, at, "the broker asks again from where it is");
    // It still follows the metadata: a topic created now reaches it.
    create(&mut h, "after");
    h.run_until(|h| h.broker.partition_views().iter().any(|v| v.topic == "after"));
    assert!(h.broker.metadata_offset() > at);
}

#[test]
fn acknowledged_records_survive_a_crash() {
    let mut h = Harness::start(MemDisk::new());
    let id = create(&mut h, "durable");
    for i in 0..20 {
        let r = h.call(&produce_request("durable", format!("v{i}").as_bytes()), 9);
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        assert_eq!(r.responses[0].partition_responses[0].base_offset, i);
    }
    let mut disk = std::mem::take(&mut h.disk);
    disk.crash(&mut Rng::new(3), true);
    let mut h = Harness::start(disk);
    let r = h.call(
        &FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name("durable"))
            .with_topic_id(id)
            .with_partitions(vec![fetch_request::FetchPartition::default().with_fetch_offset(0).with_partition_max_bytes(1 << 20)])]),
        12,
    );
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 20, "acknowledged records lost");
    let mut records = p.records.clone().expect("records");
    let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).expect("decode");
    let values: Vec<Bytes> = sets.iter().flat_map(|s| s.records.iter().map(|r| r.value.clone().expect("value"))).collect();
    assert_eq!(values.len(), 20);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.as_ref(), format!("v{i}").as_bytes());
    }
}

fn session_fetch(h: &mut Harness, id: uuid::Uuid, session_id: i32, epoch: i32, partitions: &[(i32, i64)]) -> FetchResponse {
    let topics = if partitions.is_empty() {
        vec![]
    } else {
        vec![fetch_request::FetchTopic::default().with_topic(name("s")).with_topic_id(id).with_partitions(
            partitions
                .iter()
                .map(|(p, o)| fetch_request::FetchPartition::default().with_partition(*p).with_fetch_offset(*o).with_partition_max_bytes(1 << 20))
                .collect(),
        )]
    };
    h.call(&FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_session_id(session_id).with_session_epoch(epoch).with_topics(topics), 12)
}

/// KIP-227: epoch 0 creates a session; incremental fetches omit unchanged partitions and carry
/// changed ones; a wrong epoch or unknown id is a top-level error; epoch -1 closes the session.
#[test]
fn fetch_sessions_are_incremental() {
    let mut h = Harness::start(MemDisk::new());
    let id = create(&mut h, "s");
    assert_eq!(h.call(&produce_request("s", b"a"), 9).responses[0].partition_responses[0].error_code, 0);
    let full = session_fetch(&mut h, id, 0, 0, &[(0, 0)]);
    assert_eq!(full.error_code, 0);
    let session = full.session_id;
    assert_ne!(session, 0, "a session was created");
    assert_eq!(full.responses[0].partitions.len(), 1);
    // The client moved its position to the end: nothing changed, so nothing is returned.
    let quiet = session_fetch(&mut h, id, session, 1, &[(0, 1)]);
    assert_eq!((quiet.error_code, quiet.session_id), (0, session));
    assert!(quiet.responses.is_empty(), "unchanged partitions are omitted: {:?}", quiet.responses);
    // New data: the partition comes back with its records although the request names nothing.
    assert_eq!(h.call(&produce_request("s", b"b"), 9).responses[0].partition_responses[0].error_code, 0);
    let changed = session_fetch(&mut h, id, session, 2, &[]);
    assert_eq!(changed.responses.len(), 1);
    assert_eq!(changed.responses[0].partitions[0].high_watermark, 2);
    assert!(changed.responses[0].partitions[0].records.as_ref().is_some_and(|r| !r.is_empty()));
    assert_eq!(session_fetch(&mut h, id, session, 7, &[]).error_code, 71, "INVALID_FETCH_SESSION_EPOCH");
    assert_eq!(session_fetch(&mut h, id, 12345, 1, &[]).error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
    let closed = session_fetch(&mut h, id, session, -1, &[(0, 0)]);
    assert_eq!((closed.error_code, closed.session_id), (0, 0));
    assert_eq!(session_fetch(&mut h, id, session, 3, &[]).error_code, 70, "closed session is gone");
}

/// Controlled shutdown (what SIGTERM starts in the real driver): the broker asks the controller
/// through its heartbeat to move leadership away and stops only once it leads nothing; the
/// committed metadata shows it shutting down and its partition without a leader.
#[test]
fn controlled_shutdown_moves_leadership_then_stops() {
    let mut h = Harness::start(MemDisk::new());
    create(&mut h, "c");
    assert_eq!(h.call(&produce_request("c", b"v"), 9).responses[0].partition_responses[0].error_code, 0);
    assert_eq!(h.controller.image().partition("c", 0).map(|p| p.leader), Some(1));
    h.broker.on_message(&mut h.cx, Addr { node: 1, actor: 0 }, BrokerMsg::Shutdown);
    h.run_until(|h| h.broker_stopped);
    let image = h.controller.image();
    assert!(image.brokers[&1].shutting_down, "the shutdown is committed");
    assert_eq!(image.partition("c", 0).map(|p| p.leader), Some(-1), "leadership moved away before the stop");
}

const GROUP_APIS: &[ApiKey] = &[
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::OffsetDelete,
    ApiKey::ListGroups,
    ApiKey::DescribeGroups,
    ApiKey::DeleteGroups,
    ApiKey::ConsumerGroupHeartbeat,
    ApiKey::ConsumerGroupDescribe,
];

fn group(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_string()))
}

fn sbytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// FindCoordinator until the internal topic exists and has a leader.
fn find_coordinator(h: &mut Harness, key: &str, v: i16) -> (i16, i32) {
    for _ in 0..50 {
        let req = if v >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![sbytes(key)])
        } else {
            FindCoordinatorRequest::default().with_key(sbytes(key))
        };
        let r = h.call(&req, v);
        let (code, node) = if v >= 4 { (r.coordinators[0].error_code, r.coordinators[0].node_id.0) } else { (r.error_code, r.node_id.0) };
        if code != 15 {
            return (code, node);
        }
        // COORDINATOR_NOT_AVAILABLE while the topic is created: let time pass.
        let until = h.now + 200;
        h.run_until(|h| h.now >= until);
    }
    panic!("no coordinator for {key}");
}

/// Join `g` as a new member (handling MEMBER_ID_REQUIRED) and return the response.
fn join(h: &mut Harness, g: &str, v: i16) -> JoinGroupResponse {
    let req = JoinGroupRequest::default()
        .with_group_id(group(g))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(sbytes("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default().with_name(sbytes("range")).with_metadata(Bytes::from_static(b"meta"))]);
    let first = h.call(&req, v);
    if v >= 4 {
        assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED v{v}");
        assert!(!first.member_id.is_empty());
        let r = h.call(&req.with_member_id(first.member_id.clone()), v);
        assert_eq!(r.member_id, first.member_id);
        r
    } else {
        first
    }
}

/// A one-member group, joined and synced at the newest versions: (member id, generation).
fn stable_group(h: &mut Harness, g: &str) -> (StrBytes, i32) {
    let j = join(h, g, 9);
    assert_eq!(j.error_code, 0);
    let s = h.call(
        &SyncGroupRequest::default().with_group_id(group(g)).with_generation_id(j.generation_id).with_member_id(j.member_id.clone()).with_assignments(vec![
            sync_group_request::SyncGroupRequestAssignment::default().with_member_id(j.member_id.clone()).with_assignment(Bytes::from_static(b"mine")),
        ]),
        5,
    );
    assert_eq!(s.error_code, 0);
    assert_eq!(s.assignment.as_ref(), b"mine");
    (j.member_id, j.generation_id)
}

fn commit(h: &mut Harness, g: &str, member: &str, generation: i32, offset: i64, v: i16) -> i16 {
    let r = h.call(
        &OffsetCommitRequest::default().with_group_id(group(g)).with_generation_id_or_member_epoch(generation).with_member_id(sbytes(member)).with_topics(
            vec![offset_commit_request::OffsetCommitRequestTopic::default().with_name(name("t")).with_partitions(vec![
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)
                    .with_committed_metadata(Some(sbytes("m"))),
            ])],
        ),
        v,
    );
    r.topics[0].partitions[0].error_code
}

fn fetch_offset(h: &mut Harness, g: &str, v: i16) -> i64 {
    let topics = Some(vec![offset_fetch_request::OffsetFetchRequestTopic::default().with_name(name("t")).with_partition_indexes(vec![0])]);
    if v < 8 {
        let r = h.call(&OffsetFetchRequest::default().with_group_id(group(g)).with_topics(topics), v);
        assert_eq!(r.error_code, 0);
        r.topics[0].partitions[0].committed_offset
    } else {
        let r = h.call(
            &OffsetFetchRequest::default().with_groups(vec![offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(group(g))
                .with_topics(Some(vec![offset_fetch_request::OffsetFetchRequestTopics::default().with_name(name("t")).with_partition_indexes(vec![0])]))]),
            v,
        );
        assert_eq!(r.groups[0].error_code, 0);
        r.groups[0].topics[0].partitions[0].committed_offset
    }
}

/// Every group API answers at every version it advertises, with the semantics of a real flow:
/// join (with KIP-394 member ids), sync, heartbeat, commits with generation checks, fetch,
/// delete, list, describe, leave.
#[test]
fn group_apis_answer_at_every_version() {
    let mut h = Harness::start(MemDisk::new());
    create(&mut h, "t");
    // The first FindCoordinator creates __consumer_offsets and waits for it rather than sending
    // the client into its retry backoff with COORDINATOR_NOT_AVAILABLE.
    let first = h.call(&FindCoordinatorRequest::default().with_key(sbytes("first")), 3);
    assert_eq!((first.error_code, first.node_id.0), (0, 1), "{:?}", first.error_message);
    for (key, min, max) in SUPPORTED_APIS.iter().filter(|(k, _, _)| GROUP_APIS.contains(k)) {
        for v in *min..=*max {
            match key {
                ApiKey::FindCoordinator => {
                    assert_eq!(find_coordinator(&mut h, &format!("fc{v}"), v), (0, 1), "FindCoordinator v{v}");
                    if v >= 1 {
                        let req = FindCoordinatorRequest::default().with_key_type(5);
                        let req = if v >= 4 { req.with_coordinator_keys(vec![sbytes("x")]) } else { req.with_key(sbytes("x")) };
                        let r = h.call(&req, v);
                        let code = if v >= 4 { r.coordinators[0].error_code } else { r.error_code };
                        assert_eq!(code, 42, "INVALID_REQUEST for key type 5, v{v}");
                    }
                }
                ApiKey::JoinGroup => {
                    find_coordinator(&mut h, "x", 3);
                    let g = format!("join{v}");
                    let r = join(&mut h, &g, v);
                    assert_eq!(r.error_code, 0, "JoinGroup v{v}");
                    assert_eq!(r.generation_id, 1);
                    assert_eq!(r.leader, r.member_id, "the only member leads");
                    assert_eq!(r.members.len(), 1);
                    assert_eq!(r.members[0].metadata.as_ref(), b"meta");
                    let bad =
                        h.call(&JoinGroupRequest::default().with_group_id(group(&g)).with_session_timeout_ms(1).with_protocol_type(sbytes("consumer")), v);
                    assert_eq!(bad.error_code, 26, "INVALID_SESSION_TIMEOUT v{v}");
                }
                ApiKey::SyncGroup => {
                    let g = format!("sync{v}");
                    let j = join(&mut h, &g, 5);
                    let wrong = h.call(
                        &SyncGroupRequest::default().with_group_id(group(&g)).with_generation_id(j.generation_id + 1).with_member_id(j.member_id.clone()),
                        v,
                    );
                    assert_eq!(wrong.error_code, 22, "ILLEGAL_GENERATION v{v}");
                    let mut req = SyncGroupRequest::default()
                        .with_group_id(group(&g))
                        .with_generation_id(j.generation_id)
                        .with_member_id(j.member_id.clone())
                        .with_assignments(vec![sync_group_request::SyncGroupRequestAssignment::default()
                            .with_member_id(j.member_id.clone())
                            .with_assignment(Bytes::from_static(b"a"))]);
                    if v >= 5 {
                        req = req.with_protocol_type(Some(sbytes("consumer"))).with_protocol_name(Some(sbytes("range")));
                    }
                    let r = h.call(&req, v);
                    assert_eq!(r.error_code, 0, "SyncGroup v{v}");
                    assert_eq!(r.assignment.as_ref(), b"a");
                }
                ApiKey::Heartbeat => {
                    let g = format!("hb{v}");
                    let (m, generation) = stable_group(&mut h, &g);
                    let ok = h.call(&HeartbeatRequest::default().with_group_id(group(&g)).with_generation_id(generation).with_member_id(m.clone()), v);
                    assert_eq!(ok.error_code, 0, "Heartbeat v{v}");
                    let stale = h.call(&HeartbeatRequest::default().with_group_id(group(&g)).with_generation_id(generation - 1).with_member_id(m), v);
                    assert_eq!(stale.error_code, 22, "ILLEGAL_GENERATION v{v}");
                    let unknown =
                        h.call(&HeartbeatRequest::default().with_group_id(group(&g)).with_generation_id(generation).with_member_id(sbytes("nobody")), v);
                    assert_eq!(unknown.error_code, 25, "UNKNOWN_MEMBER_ID v{v}");
                }
                ApiKey::LeaveGroup => {
                    let g = format!("leave{v}");
                    let (m, _) = stable_group(&mut h, &g);
                    let req = if v < 3 {
                        LeaveGroupRequest::default().with_group_id(group(&g)).with_member_id(m)
                    } else {
                        LeaveGroupRequest::default()
                            .with_group_id(group(&g))
                            .with_members(vec![leave_group_request::MemberIdentity::default().with_member_id(m)])
                    };
                    let r = h.call(&req, v);
                    assert_eq!(r.error_code, 0, "LeaveGroup v{v}");
                    if v >= 3 {
                        assert_eq!(r.members[0].error_code, 0);
                    }
                    let d = h.call(&DescribeGroupsRequest::default().with_groups(vec![group(&g)]), 5);
                    assert_eq!(d.groups[0].group_state.as_str(), "Empty", "the last member left");
                }
                ApiKey::OffsetCommit => {
                    // A simple commit (no group membership), then one by a member with checks.
                    assert_eq!(commit(&mut h, &format!("simple{v}"), "", -1, 10 + v as i64, v), 0, "simple OffsetCommit v{v}");
                    assert_eq!(fetch_offset(&mut h, &format!("simple{v}"), 7), 10 + v as i64);
                    let g = format!("commit{v}");
                    let (m, generation) = stable_group(&mut h, &g);
                    assert_eq!(commit(&mut h, &g, m.as_str(), generation, 5, v), 0);
                    assert_eq!(commit(&mut h, &g, m.as_str(), generation + 1, 6, v), 22, "ILLEGAL_GENERATION v{v}");
                    assert_eq!(commit(&mut h, &g, "nobody", generation, 6, v), 25, "UNKNOWN_MEMBER_ID v{v}");
                    assert_eq!(commit(&mut h, &g, "", -1, 6, v), 25, "a simple commit to a group with members");
                    assert_eq!(fetch_offset(&mut h, &g, 8), 5, "refused commits changed nothing");
                }
                ApiKey::OffsetFetch => {
                    let g = format!("fetch{v}");
                    assert_eq!(fetch_offset(&mut h, &g, v), -1, "nothing committed yet");
                    assert_eq!(commit(&mut h, &g, "", -1, 77, 8), 0);
                    assert_eq!(fetch_offset(&mut h, &g, v), 77, "OffsetFetch v{v}");
                }
                ApiKey::OffsetDelete => {
                    let g = format!("odel{v}");
                    assert_eq!(commit(&mut h, &g, "", -1, 3, 8), 0);
                    let r = h.call(
                        &OffsetDeleteRequest::default().with_group_id(group(&g)).with_topics(vec![offset_delete_request::OffsetDeleteRequestTopic::default()
                            .with_name(name("t"))
                            .with_partitions(vec![offset_delete_request::OffsetDeleteRequestPartition::default().with_partition_index(0)])]),
                        v,
                    );
                    assert_eq!((r.error_code, r.topics[0].partitions[0].error_code), (0, 0), "OffsetDelete v{v}");
                    assert_eq!(fetch_offset(&mut h, &g, 8), -1);
                    let r = h.call(&OffsetDeleteRequest::default().with_group_id(group("never-existed")), v);
                    assert_eq!(r.error_code, 69, "GROUP_ID_NOT_FOUND");
                }
                ApiKey::ListGroups => {
                    stable_group(&mut h, "listed");
                    let r = h.call(&ListGroupsRequest::default(), v);
                    assert_eq!(r.error_code, 0, "ListGroups v{v}");
                    let listed = r.groups.iter().find(|g| g.group_id.as_str() == "listed").expect("the group is listed");
                    assert_eq!(listed.protocol_type.as_str(), "consumer");
                    if v >= 4 {
                        let r = h.call(&ListGroupsRequest::default().with_states_filter(vec![sbytes("Empty")]), v);
                        assert!(r.groups.iter().all(|g| g.group_state.as_str() == "Empty"), "state filter v{v}");
                        assert!(!r.groups.iter().any(|g| g.group_id.as_str() == "listed"));
                    }
                }
                ApiKey::DescribeGroups => {
                    let g = format!("desc{v}");
                    let (m, _) = stable_group(&mut h, &g);
                    let r = h.call(&DescribeGroupsRequest::default().with_groups(vec![group(&g), group("nope")]), v);
                    let d = &r.groups[0];
                    assert_eq!((d.error_code, d.group_state.as_str(), d.protocol_data.as_str()), (0, "Stable", "range"), "DescribeGroups v{v}");
                    assert_eq!(d.members.len(), 1);
                    assert_eq!(d.members[0].member_id, m);
                    assert_eq!(d.members[0].member_assignment.as_ref(), b"mine");
                    assert_eq!(r.groups[1].group_state.as_str(), "Dead");
                }
                ApiKey::DeleteGroups => {
                    let g = format!("del{v}");
                    assert_eq!(commit(&mut h, &g, "", -1, 1, 8), 0);
                    stable_group(&mut h, "busy");
                    let r = h.call(&DeleteGroupsRequest::default().with_groups_names(vec![group(&g), group("busy"), group("nope")]), v);
                    let codes: Vec<i16> = r.results.iter().map(|x| x.error_code).collect();
                    assert_eq!(codes, vec![0, 68, 69], "DeleteGroups v{v}: deleted, NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND");
                    assert_eq!(fetch_offset(&mut h, &g, 8), -1, "its offsets went with it");
                }
                ApiKey::ConsumerGroupHeartbeat => {
                    let g = group(&format!("kip848-{v}"));
                    let join = kip848_join(&g, if v >= 1 { "client-chosen-id" } else { "" }, "t");
                    let r = h.call(&join, v);
                    assert_eq!(r.error_code, 0, "ConsumerGroupHeartbeat v{v}: {:?}", r.error_message);
                    let member = r.member_id.clone().expect("a member id");
                    if v >= 1 {
                        assert_eq!(member.as_str(), "client-chosen-id");
                    }
                    assert!(r.member_epoch >= 1);
                    let assigned = r.assignment.expect("an assignment");
                    assert_eq!(assigned.topic_partitions.len(), 1);
                    assert_eq!(assigned.topic_partitions[0].partitions, vec![0], "the only member gets partition 0");
                    let beat = |epoch: i32| {
                        ConsumerGroupHeartbeatRequest::default()
                            .with_group_id(g.clone())
                            .with_member_id(member.clone())
                            .with_member_epoch(epoch)
                            .with_rebalance_timeout_ms(-1)
                    };
                    let ok = h.call(&beat(r.member_epoch), v);
                    assert_eq!((ok.error_code, ok.member_epoch), (0, r.member_epoch));
                    assert!(ok.assignment.is_none(), "unchanged assignments are not repeated");
                    assert_eq!(h.call(&beat(r.member_epoch + 5), v).error_code, 110, "FENCED_MEMBER_EPOCH v{v}");
                    let stranger = beat(1).with_member_id(sbytes("stranger"));
                    assert_eq!(h.call(&stranger, v).error_code, 25, "UNKNOWN_MEMBER_ID v{v}");
                    let bad = join.clone().with_server_assignor(Some(sbytes("nonsense")));
                    assert_eq!(h.call(&bad, v).error_code, 112, "UNSUPPORTED_ASSIGNOR v{v}");
                    let left = h.call(&beat(-1), v);
                    assert_eq!((left.error_code, left.member_epoch), (0, -1));
                }
                ApiKey::ConsumerGroupDescribe => {
                    let g = group(&format!("kip848-describe-{v}"));
                    let r = h.call(&kip848_join(&g, "m1", "t"), 1);
                    assert_eq!(r.error_code, 0);
                    let d = h.call(&ConsumerGroupDescribeRequest::default().with_group_ids(vec![g, group("nope")]), v);
                    let got = &d.groups[0];
                    assert_eq!((got.error_code, got.group_state.as_str(), got.assignor_name.as_str()), (0, "Stable", "uniform"), "ConsumerGroupDescribe v{v}");
                    assert_eq!(got.members.len(), 1);
                    assert_eq!(got.members[0].assignment.topic_partitions[0].partitions, vec![0]);
                    assert_eq!(d.groups[1].error_code, 69, "GROUP_ID_NOT_FOUND");
                }
                other => panic!("no test for group api {other:?}"),
            }
        }
    }
}

/// Committed offsets and a stable group's generation survive a crash that loses every unsynced
/// write: the restarted coordinator loads them from `__consumer_offsets`.
#[test]
fn committed_offsets_survive_a_crash() {
    let mut h = Harness::start(MemDisk::new());
    create(&mut h, "t");
    find_coordinator(&mut h, "g", 3);
    let (m, generation) = stable_group(&mut h, "g");
    assert_eq!(commit(&mut h, "g", m.as_str(), generation, 42, 8), 0);
    assert_eq!(commit(&mut h, "simple", "", -1, 7, 8), 0);
    let mut disk = std::mem::take(&mut h.disk);
    disk.crash(&mut Rng::new(5), true);
    let mut h = Harness::start(disk);
    find_coordinator(&mut h, "g", 3);
    assert_eq!(fetch_offset(&mut h, "g", 8), 42, "an acknowledged commit was lost");
    assert_eq!(fetch_offset(&mut h, "simple", 8), 7);
    // The member's session restarted with the load: it still belongs to its generation.
    let hb = h.call(&HeartbeatRequest::default().with_group_id(group("g")).with_generation_id(generation).with_member_id(m), 4);
    assert_eq!(hb.error_code, 0, "the stable group was restored");
}

/// A KIP-848 join (member epoch 0) of `member` subscribing to `topic`.
fn kip848_join(g: &GroupId, member: &str, topic: &str) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest::default()
        .with_group_id(g.clone())
        .with_member_id(sbytes(member))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![name(topic)]))
        .with_topic_partitions(Some(vec![]))
}

/// KIP-848: a subscribed topic that grows moves the group epoch, and the member is given the new
/// partitions on its next heartbeat; a full heartbeat (as after a lost answer) gets the whole
/// assignment again.
#[test]
fn kip848_members_follow_new_partitions() {
    let mut h = Harness::start(MemDisk::new());
    create(&mut h, "grow");
    find_coordinator(&mut h, "grower", 3);
    let g = group("grower");
    let r = h.call(&kip848_join(&g, "m", "grow"), 1);
    assert_eq!(r.error_code, 0);
    let topic_id = r.assignment.as_ref().expect("assignment").topic_partitions[0].topic_id;
    let grown = h.call(
        &CreatePartitionsRequest::default()
            .with_topics(vec![create_partitions_request::CreatePartitionsTopic::default().with_name(name("grow")).with_count(3).with_assignments(None)])
            .with_timeout_ms(5_000),
        3,
    );
    assert_eq!(grown.results[0].error_code, 0);
    let owned = |ps: Vec<i32>| Some(vec![consumer_group_heartbeat_request::TopicPartitions::default().with_topic_id(topic_id).with_partitions(ps)]);
    let beat = h.call(
        &ConsumerGroupHeartbeatRequest::default()
            .with_group_id(g.clone())
            .with_member_id(sbytes("m"))
            .with_member_epoch(r.member_epoch)
            .with_rebalance_timeout_ms(-1)
            .with_topic_partitions(owned(vec![0])),
        1,
    );
    assert_eq!(beat.error_code, 0);
    assert!(beat.member_epoch > r.member_epoch, "the group epoch moved with the topic");
    let parts = beat.assignment.expect("a new assignment").topic_partitions[0].partitions.clone();
    assert_eq!(parts, vec![0, 1, 2]);
    // A full heartbeat: subscription, rebalance timeout and owned partitions all present.
    let full = h.call(&kip848_join(&g, "m", "grow").with_member_epoch(beat.member_epoch).with_topic_partitions(owned(vec![0])), 1);
    assert_eq!(full.assignment.expect("a full request gets the assignment").topic_partitions[0].partitions, vec![0, 1, 2]);
}

/// KIP-848 membership survives a crash that loses every unsynced write: the restarted
/// coordinator loads the members, their epochs and assignments from `__consumer_offsets`, so
/// they carry on without rejoining. A static member that leaves with epoch -2 keeps its place:
/// its return under the same instance id (with a new member id) gets its old partitions at the
/// same group epoch, while the instance id of a member still in the group is refused.
#[test]
fn kip848_membership_survives_a_crash() {
    let mut h = Harness::start(MemDisk::new());
    create(&mut h, "t");
    let grown = h.call(
        &CreatePartitionsRequest::default()
            .with_topics(vec![create_partitions_request::CreatePartitionsTopic::default().with_name(name("t")).with_count(4).with_assignments(None)])
            .with_timeout_ms(5_000),
        3,
    );
    assert_eq!(grown.results[0].error_code, 0);
    find_coordinator(&mut h, "members", 3);
    let g = group("members");
    let a = h.call(&kip848_join(&g, "a", "t"), 1);
    assert_eq!(a.error_code, 0);
    let b = h.call(&kip848_join(&g, "b", "t").with_instance_id(Some(sbytes("static-b"))), 1);
    assert_eq!(b.error_code, 0);
    let topic_id = a.assignment.as_ref().expect("assignment").topic_partitions[0].topic_id;
    let owned = |ps: Vec<i32>| Some(vec![consumer_group_heartbeat_request::TopicPartitions::default().with_topic_id(topic_id).with_partitions(ps)]);
    let beat = |m: &str, epoch: i32, ps: Vec<i32>| {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(g.clone())
            .with_member_id(sbytes(m))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(-1)
            .with_topic_partitions(owned(ps))
    };
    // `a` owned everything; it gives up part of it, then `b` gets that part.
    let mine =
        |r: &ConsumerGroupHeartbeatResponse| r.assignment.as_ref().map(|x| x.topic_partitions.iter().flat_map(|t| t.partitions.clone()).collect::<Vec<i32>>());
    let all = mine(&a).expect("a's assignment");
    let a1 = h.call(&beat("a", a.member_epoch, all.clone()), 1);
    let a_keeps = mine(&a1).expect("a is told what to keep");
    assert!(a_keeps.len() < all.len(), "a must revoke some partitions");
    let a2 = h.call(&beat("a", a1.member_epoch, a_keeps.clone()), 1);
    assert_eq!(a2.error_code, 0);
    let b1 = h.call(&beat("b", b.member_epoch, vec![]), 1);
    let b_owns = mine(&b1).expect("b gets the released partitions");
    assert!(!b_owns.is_empty());
    let (a_epoch, b_epoch) = (a2.member_epoch, b1.member_epoch);

    let mut disk = std::mem::take(&mut h.disk);
    disk.crash(&mut Rng::new(9), true);
    let mut h = Harness::start(disk);
    find_coordinator(&mut h, "members", 3);
    let d = h.call(&ConsumerGroupDescribeRequest::default().with_group_ids(vec![g.clone()]), 0);
    assert_eq!(d.groups[0].members.len(), 2, "both members were restored: {:?}", d.groups[0]);
    let a3 = h.call(&beat("a", a_epoch, a_keeps.clone()), 1);
    assert_eq!((a3.error_code, a3.member_epoch), (0, a_epoch), "a carries on at its epoch");
    let b2 = h.call(&beat("b", b_epoch, b_owns.clone()), 1);
    assert_eq!((b2.error_code, b2.member_epoch), (0, b_epoch), "b carries on at its epoch");
    let full = h.call(&kip848_join(&g, "b", "t").with_member_epoch(b_epoch).with_topic_partitions(owned(b_owns.clone())), 1);
    assert_eq!(mine(&full), Some(b_owns.clone()), "a full heartbeat returns b's restored assignment");

    // The instance id of a member still in the group is refused (UNRELEASED_INSTANCE_ID).
    let intruder = h.call(&kip848_join(&g, "b2", "t").with_instance_id(Some(sbytes("static-b"))), 1);
    assert_eq!(intruder.error_code, 111);
    // A static leave keeps b's place; its next incarnation takes its partitions over at once.
    let left = h.call(&beat("b", b_epoch, b_owns.clone()).with_member_epoch(-2), 1);
    assert_eq!((left.error_code, left.member_epoch), (0, -2));
    // A retried leave changes nothing; a leave of a member the group does not know is refused.
    assert_eq!(h.call(&beat("b", b_epoch, b_owns.clone()).with_member_epoch(-2), 1).error_code, 0);
    assert_eq!(h.call(&beat("nobody", 1, vec![]).with_member_epoch(-1), 1).error_code, 25, "UNKNOWN_MEMBER_ID");
    let back = h.call(&kip848_join(&g, "b3", "t").with_instance_id(Some(sbytes("static-b"))), 1);
    assert_eq!(back.error_code, 0);
    assert_eq!((back.member_epoch, mine(&back)), (b_epoch, Some(b_owns)), "the returning static member gets its old place without a rebalance");
    let d = h.call(&ConsumerGroupDescribeRequest::default().with_group_ids(vec![g.clone()]), 0);
    let ids: Vec<&str> = d.groups[0].members.iter().map(|m| m.member_id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b3"]);
}

/// KIP-848 subscriptions by regular expression: the pattern must match a topic's whole name,
/// a topic created later that matches it joins the member's assignment on its next heartbeat,
/// internal topics never match, and a pattern that does not compile is refused with
/// INVALID_REGULAR_EXPRESSION.
#[test]
fn kip848_regex_subscriptions() {
    let mut h = Harness::start(MemDisk::new());
    let a = create(&mut h, "re-a");
    create(&mut h, "other");
    find_coordinator(&mut h, "regexes", 3);
    // Clients cannot produce to an internal topic (INVALID_TOPIC_EXCEPTION).
    assert_eq!(h.call(&produce_request("__consumer_offsets", b"x"), 9).responses[0].partition_responses[0].error_code, 17);
    let g = group("regexes");
    let join = |pattern: &str| {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(g.clone())
            .with_member_id(sbytes("m"))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_regex(Some(sbytes(pattern)))
            .with_topic_partitions(Some(vec![]))
    };
    let bad = h.call(&join("re-(["), 1);
    assert_eq!(bad.error_code, 128, "INVALID_REGULAR_EXPRESSION: {:?}", bad.error_message);
    // A pattern may not close the group that anchors it to whole names.
    assert_eq!(h.call(&join("re-a)|(other"), 1).error_code, 128);
    let huge = h.call(&join("re-.*").with_member_id(sbytes(&"x".repeat(5000))), 1);
    assert_eq!(huge.error_code, 42, "INVALID_REQUEST for a 5000-byte member id");
    let ids =
        |r: &ConsumerGroupHeartbeatResponse| -> Vec<uuid::Uuid> { r.assignment.iter().flat_map(|x| x.topic_partitions.iter().map(|t| t.topic_id)).collect() };
    // `re-` names no whole topic: nothing to own.
    let prefix = h.call(&join("re-").with_member_id(sbytes("p")), 1);
    assert_eq!((prefix.error_code, ids(&prefix)), (0, vec![]));
    let leave = h.call(&join("re-").with_member_id(sbytes("p")).with_member_epoch(-1), 1);
    assert_eq!(leave.error_code, 0);
    let r = h.call(&join("re-.*|__consumer_offsets"), 1);
    assert_eq!((r.error_code, ids(&r)), (0, vec![a]), "only re-a matches: {r:?}");
    let b = create(&mut h, "re-b");
    let beat = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(g.clone())
        .with_member_id(sbytes("m"))
        .with_member_epoch(r.member_epoch)
        .with_rebalance_timeout_ms(-1)
        .with_topic_partitions(Some(vec![consumer_group_heartbeat_request::TopicPartitions::default().with_topic_id(a).with_partitions(vec![0])]));
    let grown = h.call(&beat, 1);
    assert!(grown.member_epoch > r.member_epoch, "a new matching topic moves the group epoch");
    let mut got = ids(&grown);
    got.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(got, want, "re-b joined the assignment");
    let d = h.call(&ConsumerGroupDescribeRequest::default().with_group_ids(vec![g.clone()]), 0);
    assert_eq!(d.groups[0].members[0].subscribed_topic_regex.as_deref(), Some("re-.*|__consumer_offsets"));
}
