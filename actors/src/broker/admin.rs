//! Metadata, DescribeCluster and the admin APIs: topics, partitions and configs.
//!
//! Every change to topics or configs is written to `meta/topics` before it is acknowledged, so
//! an acknowledged CreateTopics survives a crash and an unacknowledged one leaves no trace that
//! a client could observe.

use super::config::{self, ConfigSource, TOPIC_CONFIGS};
use super::{codec, error, Broker, BrokerMsg};
use crate::broker::codec::Request;
use crate::controller::image::NO_LEADER;
use crate::controller::rpc::{AdminOp, QuorumDescription, ReplicaDescription};
use crate::core::{ConnId, Cx};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use uuid::Uuid;

/// DescribeConfigs/AlterConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Kafka's topic name rule: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// An admin response being filled in by controller answers.
pub(crate) enum AdminResponse {
    CreateTopics(CreateTopicsResponse),
    DeleteTopics(DeleteTopicsResponse),
    CreatePartitions(CreatePartitionsResponse),
    AlterConfigs(AlterConfigsResponse),
    IncrementalAlterConfigs(IncrementalAlterConfigsResponse),
    ElectLeaders(ElectLeadersResponse),
    AlterPartitionReassignments(AlterPartitionReassignmentsResponse),
}

impl AdminResponse {
    /// Record an error for the item at `slot` (flattened over topics and partitions).
    pub(crate) fn set_error(&mut self, slot: usize, code: i16, message: Option<String>) {
        let message = message.map(s);
        match self {
            AdminResponse::CreateTopics(r) => {
                if let Some(t) = r.topics.get_mut(slot) {
                    t.error_code = code;
                    t.error_message = message;
                    t.num_partitions = -1;
                    t.replication_factor = -1;
                    t.configs = None;
                }
            }
            AdminResponse::DeleteTopics(r) => {
                if let Some(t) = r.responses.get_mut(slot) {
                    t.error_code = code;
                    t.error_message = message;
                }
            }
            AdminResponse::CreatePartitions(r) => {
                if let Some(t) = r.results.get_mut(slot) {
                    t.error_code = code;
                    t.error_message = message;
                }
            }
            AdminResponse::AlterConfigs(r) => {
                if let Some(t) = r.responses.get_mut(slot) {
                    t.error_code = code;
                    t.error_message = message;
                }
            }
            AdminResponse::IncrementalAlterConfigs(r) => {
                if let Some(t) = r.responses.get_mut(slot) {
                    t.error_code = code;
                    t.error_message = message;
                }
            }
            AdminResponse::ElectLeaders(r) => {
                if let Some(p) = r.replica_election_results.iter_mut().flat_map(|t| t.partition_result.iter_mut()).nth(slot) {
                    p.error_code = code;
                    p.error_message = message;
                }
            }
            AdminResponse::AlterPartitionReassignments(r) => {
                if let Some(p) = r.responses.iter_mut().flat_map(|t| t.partitions.iter_mut()).nth(slot) {
                    p.error_code = code;
                    p.error_message = message;
                }
            }
        }
    }

    /// Fill in the id of a topic created at `slot`.
    pub(crate) fn set_created_id(&mut self, slot: usize, id: Option<Uuid>) {
        if let (AdminResponse::CreateTopics(r), Some(id)) = (self, id) {
            if let Some(t) = r.topics.get_mut(slot).filter(|t| t.error_code == error::NONE) {
                t.topic_id = id;
            }
        }
    }

    pub(crate) fn encode(&self, request: &Request) -> Result<bytes::Bytes, String> {
        match self {
            AdminResponse::CreateTopics(r) => codec::respond(request, r),
            AdminResponse::DeleteTopics(r) => codec::respond(request, r),
            AdminResponse::CreatePartitions(r) => codec::respond(request, r),
            AdminResponse::AlterConfigs(r) => codec::respond(request, r),
            AdminResponse::IncrementalAlterConfigs(r) => codec::respond(request, r),
            AdminResponse::ElectLeaders(r) => codec::respond(request, r),
            AdminResponse::AlterPartitionReassignments(r) => codec::respond(request, r),
        }
    }
}

impl Broker {
    fn topic_by_id(&self, id: Uuid) -> Option<String> {
        self.cluster.image.topics.iter().find(|(_, t)| Uuid::from_u128(t.id) == id).map(|(n, _)| n.clone())
    }

    pub(crate) fn on_metadata(&mut self, cx: &mut Cx<BrokerMsg>, request: &Request, r: MetadataRequest) -> MetadataResponse {
        let image = &self.cluster.image;
        let brokers: Vec<MetadataResponseBroker> = image
            .brokers
            .values()
            .filter(|b| !b.fenced && !self.is_unreachable(b.id))
            .map(|b| {
                MetadataResponseBroker::default().with_node_id(b.id.into()).with_host(s(b.host.clone())).with_port(b.port).with_rack(b.rack.clone().map(s))
            })
            .collect();
        let mut response = MetadataResponse::default()
            .with_cluster_id(Some(s(self.config.cluster_id.clone())))
            .with_controller_id(self.config.node_id.into())
            .with_brokers(brokers);
        let requested: Option<Vec<(Option<String>, Uuid)>> = match r.topics {
            None => None,
            Some(t) if t.is_empty() && request.version == 0 => None,
            Some(t) => Some(t.into_iter().map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)).collect()),
        };
        let names: Vec<(Option<String>, Uuid)> = match requested {
            None => image.topics.keys().map(|n| (Some(n.clone()), Uuid::nil())).collect(),
            Some(list) => list,
        };
        let allow_create = (request.version < 4 || r.allow_auto_topic_creation) && self.config.auto_create_topics;
        let mut create = Vec::new();
        for (name, id) in names {
            let name = name.or_else(|| self.topic_by_id(id));
            let Some(name) = name else {
                response.topics.push(MetadataResponseTopic::default().with_error_code(error::UNKNOWN_TOPIC_ID).with_topic_id(id));
                continue;
            };
            let mut topic = MetadataResponseTopic::default().with_name(Some(TopicName(s(name.clone()))));
            let Some(t) = self.cluster.image.topics.get(&name) else {
                topic.error_code = if !valid_topic_name(&name) {
                    error::INVALID_TOPIC_EXCEPTION
                } else if allow_create {
                    create.push(name.clone());
                    error::LEADER_NOT_AVAILABLE
                } else {
                    error::UNKNOWN_TOPIC_OR_PARTITION
                };
                response.topics.push(topic);
                continue;
            };
            topic.topic_id = Uuid::from_u128(t.id);
            for (i, p) in t.partitions.iter().enumerate() {
                let offline: Vec<BrokerId> =
                    p.replicas.iter().filter(|r| !self.cluster.image.is_active(**r) || self.is_unreachable(**r)).map(|r| (*r).into()).collect();
                let leader = if self.is_unreachable(p.leader) { NO_LEADER } else { p.leader };
                topic.partitions.push(
                    MetadataResponsePartition::default()
                        .with_error_code(if leader < 0 { error::LEADER_NOT_AVAILABLE } else { error::NONE })
                        .with_partition_index(i as i32)
                        .with_leader_id(leader.into())
                        .with_leader_epoch(p.leader_epoch)
                        .with_replica_nodes(p.replicas.iter().map(|r| (*r).into()).collect())
                        .with_isr_nodes(p.isr.iter().map(|r| (*r).into()).collect())
                        .with_offline_replicas(offline),
                );
            }
            response.topics.push(topic);
        }
        for name in create {
            let op = AdminOp::CreateTopic {
                name,
                partitions: self.config.num_partitions,
                replication_factor: self.config.default_replication_factor,
                assignments: Vec::new(),
                configs: BTreeMap::new(),
                validate_only: false,
            };
            self.admin_forget(cx, op);
        }
        response
    }

    pub(crate) fn on_describe_cluster(&self) -> DescribeClusterResponse {
        let brokers = self
            .cluster
            .image
            .brokers
            .values()
            .filter(|b| !b.fenced && !self.is_unreachable(b.id))
            .map(|b| {
                DescribeClusterBroker::default().with_broker_id(b.id.into()).with_host(s(b.host.clone())).with_port(b.port).with_rack(b.rack.clone().map(s))
            })
            .collect();
        // The active controller as this broker last reached it when that node is a broker too (a
        // combined node). A controller-only node is not reachable by clients, so, like Kafka's
        // brokers in KRaft mode, name a live broker instead: this one, which forwards
        // controller-bound requests to the active controller.
        let controller = match self.cluster.controller {
            Some(c) if self.cluster.image.brokers.get(&c).is_some_and(|b| !b.fenced) => c,
            Some(_) => self.config.node_id,
            None => -1,
        };
        DescribeClusterResponse::default().with_cluster_id(s(self.config.cluster_id.clone())).with_controller_id(controller.into()).with_brokers(brokers)
    }

    /// DescribeQuorum: for `__cluster_metadata` partition 0 (and nothing else, as Kafka's raft
    /// client checks), forwarded to the active controller; anything else names each requested
    /// partition UNKNOWN_TOPIC_OR_PARTITION.
    pub(crate) fn on_describe_quorum(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: DescribeQuorumRequest) {
        let metadata_log = r.topics.len() == 1
            && r.topics[0].topic_name.0.as_str() == METADATA_TOPIC
            && r.topics[0].partitions.len() == 1
            && r.topics[0].partitions[0].partition_index == 0;
        if metadata_log {
            return self.describe_quorum(cx, conn, seq, request);
        }
        let topics = r
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        describe_quorum_response::PartitionData::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(error::UNKNOWN_TOPIC_OR_PARTITION)
                            .with_error_message(Some(s("DescribeQuorum describes only __cluster_metadata partition 0.")))
                            .with_leader_id((-1).into())
                            .with_leader_epoch(-1)
                            .with_high_watermark(-1)
                    })
                    .collect();
                describe_quorum_response::TopicData::default().with_topic_name(t.topic_name.clone()).with_partitions(partitions)
            })
            .collect();
        reply_describe_quorum(cx, conn, seq, &request, &DescribeQuorumResponse::default().with_topics(topics));
    }

    pub(crate) fn on_create_topics(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: CreateTopicsRequest) {
        let mut response = CreateTopicsResponse::default();
        let mut ops = Vec::new();
        let mut created = Vec::new();
        for t in r.topics {
            let name = t.name.0.to_string();
            let mut result = CreatableTopicResult::default().with_name(t.name.clone()).with_num_partitions(-1).with_replication_factor(-1);
            let partitions = if t.num_partitions == -1 { self.config.num_partitions } else { t.num_partitions };
            let rf = if t.replication_factor == -1 { self.config.default_replication_factor } else { t.replication_factor };
            let mut configs = BTreeMap::new();
            let mut bad_config = None;
            for c in &t.configs {
                let (k, v) = (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()).unwrap_or_default());
                if let Err(e) = config::validate_topic_config(&k, &v) {
                    bad_config = Some(e);
                }
                configs.insert(k, v);
            }
            let fail = if !valid_topic_name(&name) {
                Some((
                    error::INVALID_TOPIC_EXCEPTION,
                    format!("Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"),
                ))
            } else if self.cluster.image.topics.contains_key(&name) {
                Some((error::TOPIC_ALREADY_EXISTS, format!("Topic '{name}' already exists.")))
            } else if !t.assignments.is_empty() && (t.num_partitions != -1 || t.replication_factor != -1) {
                Some((
                    error::INVALID_REQUEST,
                    "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
                ))
            } else if t.assignments.is_empty() && partitions < 1 {
                Some((error::INVALID_PARTITIONS, "Number of partitions must be larger than 0.".into()))
            } else if t.assignments.is_empty() && rf < 1 {
                Some((error::INVALID_REPLICATION_FACTOR, "Replication factor must be larger than 0.".into()))
            } else {
                bad_config.map(|e| (error::INVALID_CONFIG, e))
            };
            if let Some((code, message)) = fail {
                result.error_code = code;
                result.error_message = Some(s(message));
                response.topics.push(result);
                continue;
            }
            let partitions = if t.assignments.is_empty() { partitions } else { t.assignments.len() as i32 };
            let assignments: Vec<Vec<i32>> = t.assignments.iter().map(|a| a.broker_ids.iter().map(|b| b.0).collect()).collect();
            let rf = if assignments.is_empty() { rf } else { assignments[0].len() as i16 };
            result.num_partitions = partitions;
            result.replication_factor = rf;
            let mut described = Vec::new();
            for (k, _, _) in TOPIC_CONFIGS {
                let (v, source) = config::resolve(k, &configs, &self.dynamic_broker, &self.config);
                described.push(CreatableTopicConfigs::default().with_name(s(*k)).with_value(Some(s(v))).with_config_source(source as i8));
            }
            if request.version >= 5 {
                result.configs = Some(described);
            }
            let slot = response.topics.len();
            ops.push((
                slot,
                AdminOp::CreateTopic { name: name.clone(), partitions, replication_factor: rf, assignments, configs, validate_only: r.validate_only },
            ));
            if !r.validate_only {
                created.push((slot, name));
            }
            response.topics.push(result);
        }
        self.submit_admin(cx, conn, seq, request, AdminResponse::CreateTopics(response), ops, created);
    }

    pub(crate) fn on_delete_topics(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: DeleteTopicsRequest) {
        let mut response = DeleteTopicsResponse::default();
        let mut targets: Vec<(Option<String>, Uuid)> = r.topic_names.into_iter().map(|n| (Some(n.0.to_string()), Uuid::nil())).collect();
        targets.extend(r.topics.into_iter().map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)));
        let mut ops = Vec::new();
        for (name, id) in targets {
            let resolved = name.clone().or_else(|| self.topic_by_id(id));
            let mut result = DeletableTopicResult::default().with_name(name.clone().map(|n| TopicName(s(n)))).with_topic_id(id);
            match resolved.filter(|n| self.cluster.image.topics.contains_key(n)) {
                None => result.error_code = if name.is_none() { error::UNKNOWN_TOPIC_ID } else { error::UNKNOWN_TOPIC_OR_PARTITION },
                Some(n) => {
                    result.topic_id = Uuid::from_u128(self.cluster.image.topics[&n].id);
                    result.name = Some(TopicName(s(n.clone())));
                    ops.push((response.responses.len(), AdminOp::DeleteTopic { name: n }));
                }
            }
            response.responses.push(result);
        }
        self.submit_admin(cx, conn, seq, request, AdminResponse::DeleteTopics(response), ops, Vec::new());
    }

    pub(crate) fn on_create_partitions(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: CreatePartitionsRequest) {
        let mut response = CreatePartitionsResponse::default();
        let mut ops = Vec::new();
        for t in r.topics {
            let name = t.name.0.to_string();
            let mut result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            let current = self.cluster.image.topics.get(&name).map(|t| t.partitions.len() as i32);
            match current {
                None => result.error_code = error::UNKNOWN_TOPIC_OR_PARTITION,
                Some(c) if t.count <= c => {
                    result.error_code = error::INVALID_PARTITIONS;
                    result.error_message = Some(s(format!("Topic currently has {c} partitions, which is higher than the requested {}.", t.count)));
                }
                Some(c) if t.assignments.as_ref().is_some_and(|a| a.len() as i32 != t.count - c) => {
                    result.error_code = error::INVALID_REPLICA_ASSIGNMENT;
                    result.error_message = Some(s("There must be one replica assignment per new partition"));
                }
                Some(_) if t.assignments.is_some() => {
                    result.error_code = error::INVALID_REPLICA_ASSIGNMENT;
                    result.error_message = Some(s("Manual replica assignments for new partitions are not supported: the controller places them"));
                }
                Some(_) => ops.push((response.results.len(), AdminOp::CreatePartitions { name, count: t.count, validate_only: r.validate_only })),
            }
            response.results.push(result);
        }
        self.submit_admin(cx, conn, seq, request, AdminResponse::CreatePartitions(response), ops, Vec::new());
    }

    pub(crate) fn on_describe_configs(&mut self, r: DescribeConfigsRequest) -> DescribeConfigsResponse {
        let mut response = DescribeConfigsResponse::default();
        let empty = BTreeMap::new();
        for res in r.resources {
            let mut result = DescribeConfigsResult::default().with_resource_type(res.resource_type).with_resource_name(res.resource_name.clone());
            // Kafka treats an empty key list like null: every config.
            let wanted = |k: &str| res.configuration_keys.as_ref().is_none_or(|keys| keys.is_empty() || keys.iter().any(|x| x.as_str() == k));
            match res.resource_type {
                RESOURCE_TOPIC => match self.topics.get(res.resource_name.as_str()) {
                    None => {
                        result.error_code = error::UNKNOWN_TOPIC_OR_PARTITION;
                        result.error_message = Some(s(format!("Topic {} does not exist", res.resource_name.as_str())));
                    }
                    Some(t) => {
                        for (k, _, _) in TOPIC_CONFIGS.iter().filter(|c| wanted(c.0)) {
                            let (v, source) = config::resolve(k, &t.configs, &self.dynamic_broker, &self.config);
                            result.configs.push(config_entry(k, v, source));
                        }
                    }
                },
                RESOURCE_BROKER if res.resource_name.is_empty() || res.resource_name.as_str() == self.config.node_id.to_string() => {
                    for (k, broker_key, _) in TOPIC_CONFIGS.iter().filter(|c| wanted(c.1)) {
                        let (v, source) = config::resolve(k, &empty, &self.dynamic_broker, &self.config);
                        result.configs.push(config_entry(broker_key, v, source));
                    }
                    for (k, v) in [
                        ("node.id", self.config.node_id.to_string()),
                        ("num.partitions", self.config.num_partitions.to_string()),
                        ("default.replication.factor", self.config.default_replication_factor.to_string()),
                        ("auto.create.topics.enable", self.config.auto_create_topics.to_string()),
                    ] {
                        if wanted(k) {
                            let mut e = config_entry(k, v, ConfigSource::StaticBroker);
                            e.read_only = true;
                            result.configs.push(e);
                        }
                    }
                }
                RESOURCE_BROKER => {
                    result.error_code = error::INVALID_REQUEST;
                    result.error_message = Some(s(format!("Unexpected broker id, expected {}", self.config.node_id)));
                }
                other => {
                    result.error_code = error::INVALID_REQUEST;
                    result.error_message = Some(s(format!("Unsupported resource type {other}")));
                }
            }
            response.results.push(result);
        }
        response
    }

    /// Apply a new set of values to a topic or to the broker's dynamic defaults. `changes` maps a
    /// key to `Some(value)` (set) or `None` (delete); `replace` drops keys not mentioned.
    fn alter_resource(
        &mut self,
        resource_type: i8,
        resource_name: &str,
        changes: Vec<(String, Option<String>)>,
        replace: bool,
        validate_only: bool,
    ) -> Result<Option<AdminOp>, (i16, String)> {
        match resource_type {
            RESOURCE_TOPIC => {
                let Some(t) = self.topics.get(resource_name) else {
                    return Err((error::UNKNOWN_TOPIC_OR_PARTITION, format!("Topic {resource_name} does not exist")));
                };
                let mut configs = if replace { BTreeMap::new() } else { t.configs.clone() };
                for (k, v) in changes {
                    match v {
                        Some(v) => {
                            config::validate_topic_config(&k, &v).map_err(|e| (error::INVALID_CONFIG, e))?;
                            configs.insert(k, v);
                        }
                        None => {
                            configs.remove(&k);
                        }
                    }
                }
                Ok((!validate_only).then(|| AdminOp::TopicConfig { name: resource_name.to_string(), configs }))
            }
            RESOURCE_BROKER => {
                if !resource_name.is_empty() && resource_name != self.config.node_id.to_string() {
                    return Err((error::INVALID_REQUEST, format!("Unexpected broker id, expected {}", self.config.node_id)));
                }
                let mut dynamic = if replace { BTreeMap::new() } else { self.dynamic_broker.clone() };
                for (k, v) in changes {
                    let topic_key = config::broker_key_to_topic(&k, v.as_deref().unwrap_or("0"))
                        .ok_or((error::INVALID_CONFIG, format!("Broker config {k} cannot be updated dynamically")))?
                        .0;
                    match v {
                        Some(v) => {
                            let (_, converted) = config::broker_key_to_topic(&k, &v).ok_or((error::INVALID_CONFIG, format!("Invalid value {v} for {k}")))?;
                            config::validate_topic_config(topic_key, &converted).map_err(|e| (error::INVALID_CONFIG, e))?;
                            dynamic.insert(topic_key.to_string(), converted);
                        }
                        None => {
                            dynamic.remove(topic_key);
                        }
                    }
                }
                Ok((!validate_only).then_some(AdminOp::BrokerConfig { configs: dynamic }))
            }
            other => Err((error::INVALID_REQUEST, format!("Unsupported resource type {other}"))),
        }
    }

    pub(crate) fn on_alter_configs(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: AlterConfigsRequest) {
        let mut response = AlterConfigsResponse::default();
        let mut ops = Vec::new();
        for res in r.resources {
            let changes = res.configs.iter().map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))).collect();
            let mut out = alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            match self.alter_resource(res.resource_type, res.resource_name.as_str(), changes, true, r.validate_only) {
                Ok(op) => ops.extend(op.map(|op| (response.responses.len(), op))),
                Err((code, message)) => {
                    out.error_code = code;
                    out.error_message = Some(s(message));
                }
            }
            response.responses.push(out);
        }
        self.submit_admin(cx, conn, seq, request, AdminResponse::AlterConfigs(response), ops, Vec::new());
    }

    pub(crate) fn on_incremental_alter_configs(
        &mut self,
        cx: &mut Cx<BrokerMsg>,
        conn: ConnId,
        seq: u64,
        request: Box<Request>,
        r: IncrementalAlterConfigsRequest,
    ) {
        let mut response = IncrementalAlterConfigsResponse::default();
        let mut ops = Vec::new();
        for res in r.resources {
            let mut out = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let mut changes = Vec::new();
            let mut bad = None;
            for c in &res.configs {
                let value = c.value.as_ref().map(|v| v.to_string());
                match c.config_operation {
                    0 => changes.push((c.name.to_string(), Some(value.unwrap_or_default()))),
                    1 => changes.push((c.name.to_string(), None)),
                    op => bad = Some(format!("Config operation {op} is not supported for {}: no list-valued configs exist here", c.name.as_str())),
                }
            }
            let result = match bad {
                Some(m) => Err((error::INVALID_CONFIG, m)),
                None => self.alter_resource(res.resource_type, res.resource_name.as_str(), changes, false, r.validate_only),
            };
            match result {
                Ok(op) => ops.extend(op.map(|op| (response.responses.len(), op))),
                Err((code, message)) => {
                    out.error_code = code;
                    out.error_message = Some(s(message));
                }
            }
            response.responses.push(out);
        }
        self.submit_admin(cx, conn, seq, request, AdminResponse::IncrementalAlterConfigs(response), ops, Vec::new());
    }
}

fn config_entry(name: &str, value: String, source: ConfigSource) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default().with_name(s(name)).with_value(Some(s(value))).with_config_source(source as i8)
}

impl Broker {
    /// ElectLeaders: preferred (0) or unclean (1) elections, decided by the controller.
    pub(crate) fn on_elect_leaders(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: ElectLeadersRequest) {
        use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
        let preferred = r.election_type == 0;
        let wanted: Vec<(String, Vec<i32>)> = match r.topic_partitions {
            Some(list) => list.into_iter().map(|t| (t.topic.0.to_string(), t.partitions)).collect(),
            // Null: every partition (preferred elections only where they are needed).
            None => self.cluster.image.topics.iter().map(|(n, t)| (n.clone(), (0..t.partitions.len() as i32).collect())).collect(),
        };
        let mut response = ElectLeadersResponse::default();
        let mut ops = Vec::new();
        let mut slot = 0;
        for (topic, partitions) in wanted {
            let mut tr = ReplicaElectionResult::default().with_topic(TopicName(s(topic.clone())));
            for index in partitions {
                let mut pr = PartitionResult::default().with_partition_id(index);
                match self.cluster.image.partition(&topic, index) {
                    None => {
                        pr.error_code = error::UNKNOWN_TOPIC_OR_PARTITION;
                        pr.error_message = Some(s("The partition does not exist."));
                    }
                    Some(_) if r.election_type > 1 => pr.error_code = error::INVALID_REQUEST,
                    Some(_) => ops.push((slot, AdminOp::ElectLeader { topic: topic.clone(), index, preferred })),
                }
                tr.partition_result.push(pr);
                slot += 1;
            }
            response.replica_election_results.push(tr);
        }
        self.submit_admin(cx, conn, seq, request, AdminResponse::ElectLeaders(response), ops, Vec::new());
    }

    /// AlterPartitionReassignments: start or cancel (null replicas) reassignments.
    pub(crate) fn on_alter_reassignments(
        &mut self,
        cx: &mut Cx<BrokerMsg>,
        conn: ConnId,
        seq: u64,
        request: Box<Request>,
        r: AlterPartitionReassignmentsRequest,
    ) {
        use kafka_protocol::messages::alter_partition_reassignments_response::{ReassignablePartitionResponse, ReassignableTopicResponse};
        let mut response = AlterPartitionReassignmentsResponse::default();
        let mut ops = Vec::new();
        let mut slot = 0;
        for t in r.topics {
            let topic = t.name.0.to_string();
            let mut tr = ReassignableTopicResponse::default().with_name(t.name.clone());
            for p in t.partitions {
                let mut pr = ReassignablePartitionResponse::default().with_partition_index(p.partition_index);
                match self.cluster.image.partition(&topic, p.partition_index) {
                    None => {
                        pr.error_code = error::UNKNOWN_TOPIC_OR_PARTITION;
                        pr.error_message = Some(s("The partition does not exist."));
                    }
                    Some(_) => {
                        let replicas = p.replicas.map(|r| r.into_iter().map(|b| b.0).collect());
                        ops.push((slot, AdminOp::Reassign { topic: topic.clone(), index: p.partition_index, replicas }));
                    }
                }
                tr.partitions.push(pr);
                slot += 1;
            }
            response.responses.push(tr);
        }
        self.submit_admin(cx, conn, seq, request, AdminResponse::AlterPartitionReassignments(response), ops, Vec::new());
    }

    /// ListPartitionReassignments, from the metadata image.
    pub(crate) fn on_list_reassignments(&self, r: ListPartitionReassignmentsRequest) -> ListPartitionReassignmentsResponse {
        use kafka_protocol::messages::list_partition_reassignments_response::{OngoingPartitionReassignment, OngoingTopicReassignment};
        let mut response = ListPartitionReassignmentsResponse::default();
        let filter: Option<BTreeMap<String, Vec<i32>>> = r.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
        for (name, t) in &self.cluster.image.topics {
            let mut tr = OngoingTopicReassignment::default().with_name(TopicName(s(name.clone())));
            for (i, p) in t.partitions.iter().enumerate() {
                let wanted = filter.as_ref().is_none_or(|f| f.get(name).is_some_and(|ps| ps.contains(&(i as i32))));
                if !wanted || (p.adding.is_empty() && p.removing.is_empty()) {
                    continue;
                }
                tr.partitions.push(
                    OngoingPartitionReassignment::default()
                        .with_partition_index(i as i32)
                        .with_replicas(p.replicas.iter().map(|r| (*r).into()).collect())
                        .with_adding_replicas(p.adding.iter().map(|r| (*r).into()).collect())
                        .with_removing_replicas(p.removing.iter().map(|r| (*r).into()).collect()),
                );
            }
            if !tr.partitions.is_empty() {
                response.topics.push(tr);
            }
        }
        response
    }
}

/// The metadata log's name, as DescribeQuorum names it.
pub(crate) const METADATA_TOPIC: &str = "__cluster_metadata";

/// DescribeQuorum's answer from the active controller's [`QuorumDescription`]: one topic, the
/// metadata log's partition 0. `nodes` (v2) stays empty, as Kafka's leaders sent it before they
/// reported controller endpoints; the directory ids (v2) are the zero uuid (unknown).
pub(crate) fn describe_quorum_response(d: &QuorumDescription) -> DescribeQuorumResponse {
    let replicas = |list: &[ReplicaDescription]| -> Vec<describe_quorum_response::ReplicaState> {
        list.iter()
            .map(|r| {
                describe_quorum_response::ReplicaState::default()
                    .with_replica_id(r.id.into())
                    .with_log_end_offset(r.log_end)
                    .with_last_fetch_timestamp(r.last_fetch_ms)
                    .with_last_caught_up_timestamp(r.last_caught_up_ms)
            })
            .collect()
    };
    let partition = describe_quorum_response::PartitionData::default()
        .with_partition_index(0)
        .with_leader_id(d.leader.into())
        .with_leader_epoch(d.epoch)
        .with_high_watermark(d.high_watermark)
        .with_current_voters(replicas(&d.voters))
        .with_observers(replicas(&d.observers));
    let topic = describe_quorum_response::TopicData::default().with_topic_name(TopicName(s(METADATA_TOPIC))).with_partitions(vec![partition]);
    DescribeQuorumResponse::default().with_topics(vec![topic])
}

/// Send a DescribeQuorum answer (a response that cannot be encoded closes the connection).
pub(crate) fn reply_describe_quorum(cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: &Request, response: &DescribeQuorumResponse) {
    match codec::respond(request, response) {
        Ok(frame) => cx.reply(conn, seq, Some(frame)),
        Err(e) => {
            tracing::warn!(conn = conn.0, "cannot encode DescribeQuorum response: {e}");
            cx.close(conn);
        }
    }
}

/// DescribeQuorum when the active controller could not be asked: the error at the top level.
pub(crate) fn describe_quorum_error(code: i16, message: &str) -> DescribeQuorumResponse {
    DescribeQuorumResponse::default().with_error_code(code).with_error_message(Some(s(message)))
}
