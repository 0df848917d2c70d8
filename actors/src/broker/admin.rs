//! Metadata, DescribeCluster and the admin APIs: topics, partitions and configs.
//!
//! Every change to topics or configs is written to `meta/topics` before it is acknowledged, so
//! an acknowledged CreateTopics survives a crash and an unacknowledged one leaves no trace that
//! a client could observe.

use super::config::{self, ConfigSource, TOPIC_CONFIGS};
use super::{codec, error, Broker, BrokerMsg};
use crate::broker::codec::Request;
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

impl Broker {
    fn new_topic_id(&mut self, cx: &mut Cx<BrokerMsg>) -> Uuid {
        loop {
            let id = Uuid::from_u64_pair(cx.rng().next_u64(), cx.rng().next_u64());
            if !id.is_nil() && !self.topic_names.contains_key(&id) {
                return id;
            }
        }
    }

    /// Create a topic now; returns the metadata version that makes it durable.
    fn create_topic(&mut self, cx: &mut Cx<BrokerMsg>, name: &str, partitions: i32, configs: BTreeMap<String, String>) -> u64 {
        let id = self.new_topic_id(cx);
        let version = self.meta_version + 1;
        self.add_topic(cx, name, id, partitions, configs, version);
        let v = self.meta_changed(cx);
        assert_eq!(v, version, "metadata version moved during topic creation");
        tracing::info!(topic = name, partitions, "created topic");
        v
    }

    pub(crate) fn on_metadata(&mut self, cx: &mut Cx<BrokerMsg>, request: &Request, r: MetadataRequest) -> MetadataResponse {
        let mut response = MetadataResponse::default()
            .with_cluster_id(Some(s(self.config.cluster_id.clone())))
            .with_controller_id(self.config.node_id.into())
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(self.config.node_id.into())
                .with_host(s(self.config.advertised_host.clone()))
                .with_port(self.config.advertised_port)
                .with_rack(self.config.rack.clone().map(s))]);
        let requested: Option<Vec<(Option<String>, Uuid)>> = match r.topics {
            None => None,
            Some(t) if t.is_empty() && request.version == 0 => None,
            Some(t) => Some(t.into_iter().map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)).collect()),
        };
        let names: Vec<(Option<String>, Uuid)> = match requested {
            None => self.topics.keys().map(|n| (Some(n.clone()), Uuid::nil())).collect(),
            Some(list) => list,
        };
        let allow_create = (request.version < 4 || r.allow_auto_topic_creation) && self.config.auto_create_topics;
        for (name, id) in names {
            let name = name.or_else(|| self.topic_names.get(&id).cloned());
            let Some(name) = name else {
                response.topics.push(MetadataResponseTopic::default().with_error_code(error::UNKNOWN_TOPIC_ID).with_topic_id(id));
                continue;
            };
            let mut topic = MetadataResponseTopic::default().with_name(Some(TopicName(s(name.clone()))));
            if !self.topics.contains_key(&name) {
                topic.error_code = if !valid_topic_name(&name) {
                    error::INVALID_TOPIC_EXCEPTION
                } else if allow_create {
                    let partitions = self.config.num_partitions;
                    self.create_topic(cx, &name, partitions, BTreeMap::new());
                    error::LEADER_NOT_AVAILABLE
                } else {
                    error::UNKNOWN_TOPIC_OR_PARTITION
                };
                response.topics.push(topic);
                continue;
            }
            let t = &self.topics[&name];
            topic.topic_id = t.id;
            let durable = self.topic_durable(t);
            for p in &t.partitions {
                let ready = durable && p.is_ready();
                let node = self.config.node_id;
                topic.partitions.push(
                    MetadataResponsePartition::default()
                        .with_error_code(if ready { error::NONE } else { error::LEADER_NOT_AVAILABLE })
                        .with_partition_index(p.index)
                        .with_leader_id(if ready { node } else { -1 }.into())
                        .with_leader_epoch(p.leader_epoch)
                        .with_replica_nodes(vec![node.into()])
                        .with_isr_nodes(vec![node.into()]),
                );
            }
            response.topics.push(topic);
        }
        response
    }

    pub(crate) fn on_describe_cluster(&self) -> DescribeClusterResponse {
        DescribeClusterResponse::default().with_cluster_id(s(self.config.cluster_id.clone())).with_controller_id(self.config.node_id.into()).with_brokers(vec![
            DescribeClusterBroker::default()
                .with_broker_id(self.config.node_id.into())
                .with_host(s(self.config.advertised_host.clone()))
                .with_port(self.config.advertised_port)
                .with_rack(self.config.rack.clone().map(s)),
        ])
    }

    pub(crate) fn on_create_topics(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: &Request, r: CreateTopicsRequest) {
        let mut response = CreateTopicsResponse::default();
        let mut version = 0;
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
            } else if self.topics.contains_key(&name) {
                Some((error::TOPIC_ALREADY_EXISTS, format!("Topic '{name}' already exists.")))
            } else if !t.assignments.is_empty() && (t.num_partitions != -1 || t.replication_factor != -1) {
                Some((
                    error::INVALID_REQUEST,
                    "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
                ))
            } else if !t.assignments.is_empty() && t.assignments.iter().any(|a| a.broker_ids.len() != 1 || a.broker_ids[0].0 != self.config.node_id) {
                Some((
                    error::INVALID_REPLICA_ASSIGNMENT,
                    format!("Replica assignments must name broker {} exactly once: this cluster has one broker", self.config.node_id),
                ))
            } else if t.assignments.is_empty() && partitions < 1 {
                Some((error::INVALID_PARTITIONS, "Number of partitions must be larger than 0.".into()))
            } else if t.assignments.is_empty() && rf < 1 {
                Some((error::INVALID_REPLICATION_FACTOR, "Replication factor must be larger than 0.".into()))
            } else if t.assignments.is_empty() && rf > 1 {
                Some((error::INVALID_REPLICATION_FACTOR, format!("Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only 1 broker(s) are registered.")))
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
            result.num_partitions = partitions;
            result.replication_factor = 1;
            let mut described = Vec::new();
            for (k, _, _) in TOPIC_CONFIGS {
                let (v, source) = config::resolve(k, &configs, &self.dynamic_broker, &self.config);
                described.push(CreatableTopicConfigs::default().with_name(s(*k)).with_value(Some(s(v))).with_config_source(source as i8));
            }
            if request.version >= 5 {
                result.configs = Some(described);
            }
            if !r.validate_only {
                version = self.create_topic(cx, &name, partitions, configs);
                result.topic_id = self.topics[&name].id;
            }
            response.topics.push(result);
        }
        let frame = codec::respond(request, &response);
        self.reply_encoded_when_durable(cx, version, conn, seq, frame);
    }

    fn reply_encoded_when_durable(&mut self, cx: &mut Cx<BrokerMsg>, version: u64, conn: ConnId, seq: u64, frame: Result<bytes::Bytes, String>) {
        match frame {
            Ok(f) => self.reply_when_durable(cx, version, conn, seq, Some(f)),
            Err(e) => self.send(cx, conn, seq, Err(e)),
        }
    }

    pub(crate) fn on_delete_topics(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: &Request, r: DeleteTopicsRequest) {
        let mut response = DeleteTopicsResponse::default();
        let mut targets: Vec<(Option<String>, Uuid)> = r.topic_names.into_iter().map(|n| (Some(n.0.to_string()), Uuid::nil())).collect();
        targets.extend(r.topics.into_iter().map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)));
        let mut version = 0;
        for (name, id) in targets {
            let resolved = name.clone().or_else(|| self.topic_names.get(&id).cloned());
            let mut result = DeletableTopicResult::default().with_name(name.clone().map(|n| TopicName(s(n)))).with_topic_id(id);
            match resolved.filter(|n| self.topics.contains_key(n)) {
                None => result.error_code = if name.is_none() { error::UNKNOWN_TOPIC_ID } else { error::UNKNOWN_TOPIC_OR_PARTITION },
                Some(n) => {
                    result.topic_id = self.topics[&n].id;
                    result.name = Some(TopicName(s(n.clone())));
                    self.remove_topic(cx, &n);
                    version = self.meta_changed(cx);
                    tracing::info!(topic = n, "deleted topic");
                }
            }
            response.responses.push(result);
        }
        let frame = codec::respond(request, &response);
        self.reply_encoded_when_durable(cx, version, conn, seq, frame);
    }

    pub(crate) fn on_create_partitions(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: &Request, r: CreatePartitionsRequest) {
        let mut response = CreatePartitionsResponse::default();
        let mut version = 0;
        for t in r.topics {
            let name = t.name.0.to_string();
            let mut result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            let current = self.topics.get(&name).map(|t| t.partitions.len() as i32);
            match current {
                None => result.error_code = error::UNKNOWN_TOPIC_OR_PARTITION,
                Some(c) if t.count <= c => {
                    result.error_code = error::INVALID_PARTITIONS;
                    result.error_message = Some(s(format!("Topic currently has {c} partitions, which is higher than the requested {}.", t.count)));
                }
                Some(c)
                    if t.assignments
                        .as_ref()
                        .is_some_and(|a| a.len() as i32 != t.count - c || a.iter().any(|x| x.broker_ids.iter().any(|b| b.0 != self.config.node_id))) =>
                {
                    result.error_code = error::INVALID_REPLICA_ASSIGNMENT;
                    result.error_message = Some(s("Replica assignments must name only this broker, one per new partition"));
                }
                Some(_) if r.validate_only => {}
                Some(_) => {
                    self.grow_topic(cx, &name, t.count);
                    version = self.meta_changed(cx);
                }
            }
            response.results.push(result);
        }
        let frame = codec::respond(request, &response);
        self.reply_encoded_when_durable(cx, version, conn, seq, frame);
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
    ) -> Result<bool, (i16, String)> {
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
                if !validate_only {
                    self.topics.get_mut(resource_name).expect("checked").configs = configs;
                    self.reconfigure_topic(resource_name);
                }
                Ok(!validate_only)
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
                if !validate_only {
                    self.dynamic_broker = dynamic;
                    let names: Vec<String> = self.topics.keys().cloned().collect();
                    for n in names {
                        self.reconfigure_topic(&n);
                    }
                }
                Ok(!validate_only)
            }
            other => Err((error::INVALID_REQUEST, format!("Unsupported resource type {other}"))),
        }
    }

    pub(crate) fn on_alter_configs(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: &Request, r: AlterConfigsRequest) {
        let mut response = AlterConfigsResponse::default();
        let mut changed = false;
        for res in r.resources {
            let changes = res.configs.iter().map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))).collect();
            let mut out = alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            match self.alter_resource(res.resource_type, res.resource_name.as_str(), changes, true, r.validate_only) {
                Ok(c) => changed |= c,
                Err((code, message)) => {
                    out.error_code = code;
                    out.error_message = Some(s(message));
                }
            }
            response.responses.push(out);
        }
        let version = if changed { self.meta_changed(cx) } else { 0 };
        let frame = codec::respond(request, &response);
        self.reply_encoded_when_durable(cx, version, conn, seq, frame);
    }

    pub(crate) fn on_incremental_alter_configs(
        &mut self,
        cx: &mut Cx<BrokerMsg>,
        conn: ConnId,
        seq: u64,
        request: &Request,
        r: IncrementalAlterConfigsRequest,
    ) {
        let mut response = IncrementalAlterConfigsResponse::default();
        let mut changed = false;
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
                Ok(c) => changed |= c,
                Err((code, message)) => {
                    out.error_code = code;
                    out.error_message = Some(s(message));
                }
            }
            response.responses.push(out);
        }
        let version = if changed { self.meta_changed(cx) } else { 0 };
        let frame = codec::respond(request, &response);
        self.reply_encoded_when_durable(cx, version, conn, seq, frame);
    }
}

fn config_entry(name: &str, value: String, source: ConfigSource) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default().with_name(s(name)).with_value(Some(s(value))).with_config_source(source as i8)
}
