//! Committed offsets (OffsetCommit, OffsetFetch, OffsetDelete, `offsets.retention.minutes`) and
//! the group admin APIs (ListGroups, DescribeGroups, DeleteGroups).
//!
//! An OffsetCommit with generation -1 and no member id is a simple commit: allowed while the
//! group has no members, creating it if needed (as `kafka-consumer-groups.sh --reset-offsets`
//! and consumers using `assign` do). Otherwise the member and generation must match, and commits
//! are refused (REBALANCE_IN_PROGRESS) only while the group waits for the leader's assignment;
//! during PreparingRebalance a member of the current generation may still commit what it
//! processed, as cooperative consumers do (KIP-429).
//!
//! Retention (KIP-211): the offsets of a group expire `offsets.retention.minutes` after the group
//! became empty; those of a group that never had members (simple commits) expire that long after
//! their own commit. A group left with neither members nor offsets is removed.

use super::{records, sb, Coordinator, DeleteBatch, Group, Lookup, Now, Responder, Response, State, WriteKind};
use crate::broker::error;
use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use records::{Key, OffsetValue};
use std::collections::{BTreeMap, BTreeSet};

/// `ConsumerProtocolSubscription`'s topics (any version: the topic array comes first).
pub(crate) fn subscribed_topics(metadata: &[u8]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let read_i16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|s| i16::from_be_bytes([s[0], s[1]]));
    let Some(count) = metadata.get(2..6).map(|s| i32::from_be_bytes([s[0], s[1], s[2], s[3]])) else { return out };
    let mut at = 6;
    for _ in 0..count.max(0) {
        let Some(n) = read_i16(metadata, at) else { break };
        let Some(name) = metadata.get(at + 2..at + 2 + n.max(0) as usize) else { break };
        out.insert(String::from_utf8_lossy(name).into_owned());
        at += 2 + n.max(0) as usize;
    }
    out
}

/// Set `code` on the partitions of `response` named in `failed`.
pub(crate) fn fail_partitions(response: &mut OffsetCommitResponse, failed: &BTreeSet<&(String, i32)>, code: i16) {
    for t in &mut response.topics {
        for p in &mut t.partitions {
            if failed.contains(&(t.name.to_string(), p.partition_index)) {
                p.error_code = code;
            }
        }
    }
}

impl Coordinator {
    /// OffsetCommit. `known(topic, partition)` says whether the partition exists.
    pub fn on_commit(&mut self, r: Responder, req: OffsetCommitRequest, now: Now, known: impl Fn(&str, i32) -> bool) {
        let group_id = req.group_id.0.to_string();
        let member = req.member_id.to_string();
        let generation = req.generation_id_or_member_epoch;
        let max_metadata = self.settings.offset_metadata_max_bytes;
        let mut response = OffsetCommitResponse::default();
        for t in &req.topics {
            let mut topic = OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_topic_id(t.topic_id);
            for p in &t.partitions {
                topic.partitions.push(OffsetCommitResponsePartition::default().with_partition_index(p.partition_index));
            }
            response.topics.push(topic);
        }
        let fail_all = |response: &mut OffsetCommitResponse, code: i16| {
            for t in &mut response.topics {
                for p in &mut t.partitions {
                    p.error_code = code;
                }
            }
        };
        if group_id.is_empty() {
            fail_all(&mut response, error::INVALID_GROUP_ID);
            return self.reply(r, &response);
        }
        let check = match self.lookup(&group_id) {
            Lookup::Error(code) => Err(code),
            Lookup::Here(s) => {
                let simple = generation < 0 && member.is_empty();
                match s.groups.get_mut(&group_id) {
                    None if simple => {
                        s.groups.insert(group_id.clone(), Group::new(&group_id, now));
                        Ok(())
                    }
                    None => Err(error::ILLEGAL_GENERATION),
                    Some(g) if g.state == State::Dead => Err(error::COORDINATOR_NOT_AVAILABLE),
                    Some(g) if simple && !g.has_members() => Ok(()),
                    Some(g) if g.consumer.is_some() => {
                        // KIP-848: the member and its current member epoch.
                        let c = g.consumer.as_ref().expect("checked");
                        match c.members.get(&member) {
                            _ if crate::planted!("stale-generation-commit") => Ok(()),
                            None => Err(error::UNKNOWN_MEMBER_ID),
                            Some(m) if generation > m.epoch => Err(error::FENCED_MEMBER_EPOCH),
                            Some(m) if generation < m.epoch => Err(error::STALE_MEMBER_EPOCH),
                            Some(_) => Ok(()),
                        }
                    }
                    Some(g) => {
                        let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
                        let fenced = instance.as_ref().is_some_and(|i| g.statics.get(i).is_some_and(|id| *id != member));
                        if crate::planted!("stale-generation-commit") {
                            Ok(())
                        } else if fenced {
                            Err(error::FENCED_INSTANCE_ID)
                        } else if !g.members.contains_key(&member) {
                            Err(error::UNKNOWN_MEMBER_ID)
                        } else if generation != g.generation {
                            Err(error::ILLEGAL_GENERATION)
                        } else if g.state == State::CompletingRebalance {
                            Err(error::REBALANCE_IN_PROGRESS)
                        } else {
                            let m = g.members.get_mut(&member).expect("checked");
                            m.deadline_ms = now.mono_ms + m.session_timeout_ms.max(0) as u64;
                            Ok(())
                        }
                    }
                }
            }
        };
        if let Err(code) = check {
            fail_all(&mut response, code);
            return self.reply(r, &response);
        }
        tracing::debug!(group = group_id, member, generation, offsets = ?req.topics.iter().map(|t| t.partitions.iter().map(|p| (p.partition_index, p.committed_offset)).collect::<Vec<_>>()).collect::<Vec<_>>(), "OffsetCommit accepted");
        let mut offsets = Vec::new();
        let mut batch = Vec::new();
        for (ti, t) in req.topics.iter().enumerate() {
            for (pi, p) in t.partitions.iter().enumerate() {
                let metadata = p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default();
                let code = if metadata.len() > max_metadata {
                    error::OFFSET_METADATA_TOO_LARGE
                } else if !known(t.name.as_str(), p.partition_index) {
                    error::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    let value = OffsetValue { offset: p.committed_offset, leader_epoch: p.committed_leader_epoch, metadata, commit_timestamp: now.wall_ms };
                    let key = Key::Offset { group: group_id.clone(), topic: t.name.to_string(), partition: p.partition_index };
                    batch.push((records::encode_key(&key), Some(records::encode_offset(&value))));
                    offsets.push(((t.name.to_string(), p.partition_index), value));
                    error::NONE
                };
                response.topics[ti].partitions[pi].error_code = code;
            }
        }
        if batch.is_empty() {
            return self.reply(r, &response);
        }
        self.append(&group_id, batch, WriteKind::Commit { responder: Some(r), response, group: group_id.clone(), offsets });
    }

    pub(crate) fn commit_done(
        &mut self,
        r: Option<Responder>,
        mut response: OffsetCommitResponse,
        group: &str,
        offsets: Vec<((String, i32), OffsetValue)>,
        result: Result<(), i16>,
        now: Now,
    ) {
        match result {
            Ok(()) => {
                // The group may have been expired meanwhile; the commit is in the log, so it is
                // in the group again, as a reload would have it.
                let shard = self.shard_of(group);
                let g = self.shards.get_mut(&shard).filter(|s| s.active).map(|s| s.groups.entry(group.to_string()).or_insert_with(|| Group::new(group, now)));
                if let Some(g) = g {
                    tracing::debug!(group, offsets = ?offsets.iter().map(|(k, v)| (k.1, v.offset)).collect::<Vec<_>>(), "offsets committed");
                    for (k, v) in offsets {
                        g.offsets.insert(k, v);
                    }
                }
            }
            Err(code) => {
                let failed: BTreeSet<&(String, i32)> = offsets.iter().map(|(k, _)| k).collect();
                fail_partitions(&mut response, &failed, code);
            }
        }
        if let Some(r) = r {
            self.reply(r, &response);
        }
    }

    /// OffsetFetch (one group before v8, a list of groups from v8).
    pub fn on_offset_fetch(&mut self, r: Responder, req: OffsetFetchRequest) {
        let version = r.request.version;
        if version < 8 {
            let topics = req.topics.as_ref().map(|ts| ts.iter().map(|t| (t.name.to_string(), t.partition_indexes.clone())).collect());
            let (code, mut found) = self.fetch_group(req.group_id.as_str(), topics);
            if code != error::NONE && version < 2 {
                // v0-1 have no group error: every requested partition carries it.
                found = req.topics.iter().flatten().map(|t| (t.name.to_string(), t.partition_indexes.iter().map(|p| (*p, None)).collect())).collect();
            }
            let mut response = OffsetFetchResponse::default().with_error_code(code);
            for (topic, parts) in found {
                let mut t = OffsetFetchResponseTopic::default().with_name(kafka_protocol::messages::TopicName(sb(&topic)));
                for (partition, v) in parts {
                    t.partitions.push(
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(partition)
                            .with_committed_offset(v.as_ref().map_or(-1, |v| v.offset))
                            .with_committed_leader_epoch(v.as_ref().map_or(-1, |v| v.leader_epoch))
                            .with_metadata(Some(sb(v.as_ref().map_or("", |v| v.metadata.as_str()))))
                            .with_error_code(if version < 2 { code } else { error::NONE }),
                    );
                }
                response.topics.push(t);
            }
            return self.reply(r, &response);
        }
        let mut response = OffsetFetchResponse::default();
        for g in &req.groups {
            let topics = g.topics.as_ref().map(|ts| ts.iter().map(|t| (t.name.to_string(), t.partition_indexes.clone())).collect());
            let (code, found) = self.fetch_group(g.group_id.as_str(), topics);
            let mut group = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone()).with_error_code(code);
            for (topic, parts) in found {
                let mut t = OffsetFetchResponseTopics::default().with_name(kafka_protocol::messages::TopicName(sb(&topic)));
                for (partition, v) in parts {
                    t.partitions.push(
                        OffsetFetchResponsePartitions::default()
                            .with_partition_index(partition)
                            .with_committed_offset(v.as_ref().map_or(-1, |v| v.offset))
                            .with_committed_leader_epoch(v.as_ref().map_or(-1, |v| v.leader_epoch))
                            .with_metadata(Some(sb(v.as_ref().map_or("", |v| v.metadata.as_str())))),
                    );
                }
                group.topics.push(t);
            }
            response.groups.push(group);
        }
        self.reply(r, &response);
    }

    /// The committed offsets of `group` for `topics` (all if `None`), with the group error.
    #[allow(clippy::type_complexity)]
    fn fetch_group(&mut self, group: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> (i16, Vec<(String, Vec<(i32, Option<OffsetValue>)>)>) {
        let g = match self.lookup(group) {
            Lookup::Error(code) => return (code, Vec::new()),
            Lookup::Here(s) => s.groups.get(group),
        };
        match topics {
            Some(topics) => {
                let found = topics
                    .into_iter()
                    .map(|(t, parts)| {
                        let values = parts.into_iter().map(|p| (p, g.and_then(|g| g.offsets.get(&(t.clone(), p)).cloned()))).collect();
                        (t, values)
                    })
                    .collect();
                (error::NONE, found)
            }
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<OffsetValue>)>> = BTreeMap::new();
                if let Some(g) = g {
                    for ((t, p), v) in &g.offsets {
                        by_topic.entry(t.clone()).or_default().push((*p, Some(v.clone())));
                    }
                }
                (error::NONE, by_topic.into_iter().collect())
            }
        }
    }

    /// OffsetDelete.
    pub fn on_offset_delete(&mut self, r: Responder, req: OffsetDeleteRequest) {
        let group_id = req.group_id.0.to_string();
        let mut body = OffsetDeleteResponse::default();
        let g = match self.lookup(&group_id) {
            Lookup::Error(code) => return self.reply(r, &body.with_error_code(code)),
            Lookup::Here(s) => s.groups.get(&group_id),
        };
        let Some(g) = g.filter(|g| g.state != State::Dead) else {
            return self.reply(r, &body.with_error_code(error::GROUP_ID_NOT_FOUND));
        };
        let consumer = g.protocol_type.as_deref() == Some("consumer");
        if !g.members.is_empty() && !consumer {
            return self.reply(r, &body.with_error_code(error::NON_EMPTY_GROUP));
        }
        let mut subscribed: BTreeSet<String> = match &g.protocol {
            Some(p) => g.members.values().flat_map(|m| subscribed_topics(&m.metadata_for(p))).collect(),
            None => BTreeSet::new(),
        };
        if let Some(c) = &g.consumer {
            subscribed.extend(c.members.values().flat_map(|m| m.subscription()));
        }
        let mut partitions = Vec::new();
        let mut batch = Vec::new();
        for t in &req.topics {
            let mut topic = OffsetDeleteResponseTopic::default().with_name(t.name.clone());
            let busy = subscribed.contains(t.name.as_str());
            for p in &t.partitions {
                let code = if busy { error::GROUP_SUBSCRIBED_TO_TOPIC } else { error::NONE };
                let k = (t.name.to_string(), p.partition_index);
                if !busy && g.offsets.contains_key(&k) {
                    let key = Key::Offset { group: group_id.clone(), topic: k.0.clone(), partition: k.1 };
                    batch.push((records::encode_key(&key), None));
                    partitions.push(k);
                }
                topic.partitions.push(OffsetDeleteResponsePartition::default().with_partition_index(p.partition_index).with_error_code(code));
            }
            body.topics.push(topic);
        }
        if batch.is_empty() {
            return self.reply(r, &body);
        }
        self.append(&group_id, batch, WriteKind::OffsetDelete { responder: Response { responder: r, body }, group: group_id.clone(), partitions });
    }

    pub(crate) fn offset_delete_done(&mut self, r: Response, group: &str, partitions: Vec<(String, i32)>, result: Result<(), i16>) {
        let Response { responder, mut body } = r;
        match result {
            Ok(()) => {
                if let Some(g) = self.group_mut(group) {
                    for k in &partitions {
                        g.offsets.remove(k);
                    }
                }
            }
            Err(code) => body.error_code = code,
        }
        self.reply(responder, &body);
    }

    /// ListGroups (v4 state filter, v5 type filter: "classic" or "consumer").
    pub fn on_list_groups(&mut self, r: Responder, req: ListGroupsRequest) {
        let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
        let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
        let mut response = ListGroupsResponse::default();
        if self.shards.values().any(|s| !s.active) {
            response.error_code = error::COORDINATOR_LOAD_IN_PROGRESS;
        }
        for s in self.shards.values().filter(|s| s.active) {
            for g in s.groups.values().filter(|g| g.state != State::Dead) {
                let (state, kind) = (g.state_name(), g.group_type());
                if !states.is_empty() && !states.contains(&state.to_lowercase()) {
                    continue;
                }
                if !types.is_empty() && !types.iter().any(|t| t == kind) {
                    continue;
                }
                response.groups.push(
                    ListedGroup::default()
                        .with_group_id(kafka_protocol::messages::GroupId(sb(&g.id)))
                        .with_protocol_type(sb(g.protocol_type.as_deref().unwrap_or("")))
                        .with_group_state(sb(state))
                        .with_group_type(sb(kind)),
                );
            }
        }
        self.reply(r, &response);
    }

    /// DescribeGroups.
    pub fn on_describe_groups(&mut self, r: Responder, req: DescribeGroupsRequest) {
        let version = r.request.version;
        let mut response = DescribeGroupsResponse::default();
        for id in &req.groups {
            let mut d = DescribedGroup::default().with_group_id(id.clone()).with_authorized_operations(i32::MIN);
            match self.lookup(id.as_str()) {
                Lookup::Error(code) => d.error_code = code,
                Lookup::Here(s) => match s.groups.get(id.as_str()) {
                    None => {
                        d.group_state = sb(State::Dead.name());
                        if version >= 6 {
                            d.error_code = error::GROUP_ID_NOT_FOUND;
                            d.error_message = Some(sb(&format!("Group {} not found.", id.as_str())));
                        }
                    }
                    Some(g) => {
                        d.group_state = sb(g.state_name());
                        d.protocol_type = sb(g.protocol_type.as_deref().unwrap_or(""));
                        let stable = g.state == State::Stable;
                        d.protocol_data = sb(if stable { g.protocol.as_deref().unwrap_or("") } else { "" });
                        let protocol = g.protocol.clone().unwrap_or_default();
                        d.members = g
                            .members
                            .values()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(sb(&m.id))
                                    .with_group_instance_id(m.instance_id.as_deref().map(sb))
                                    .with_client_id(sb(&m.client_id))
                                    .with_client_host(sb(&m.client_host))
                                    .with_member_metadata(if stable { m.metadata_for(&protocol) } else { Bytes::new() })
                                    .with_member_assignment(if stable { m.assignment.clone() } else { Bytes::new() })
                            })
                            .collect();
                    }
                },
            }
            response.groups.push(d);
        }
        self.reply(r, &response);
    }

    /// DeleteGroups: only groups without members; their offsets go with them.
    pub fn on_delete_groups(&mut self, r: Responder, req: DeleteGroupsRequest) {
        let mut response = DeleteGroupsResponse::default();
        let mut inflight: BTreeMap<String, Vec<(String, i32)>> = BTreeMap::new();
        for w in self.writes.values() {
            if let WriteKind::Commit { group, offsets, .. } = &w.kind {
                inflight.entry(group.clone()).or_default().extend(offsets.iter().map(|(k, _)| k.clone()));
            }
        }
        let mut writes = Vec::new();
        for (slot, id) in req.groups_names.iter().enumerate() {
            let name = id.to_string();
            let code = match self.lookup(&name) {
                Lookup::Error(code) => code,
                Lookup::Here(s) => match s.groups.get_mut(&name) {
                    None => error::GROUP_ID_NOT_FOUND,
                    Some(g) if g.state == State::Dead => error::GROUP_ID_NOT_FOUND,
                    Some(g) if g.has_members() || g.state != State::Empty => error::NON_EMPTY_GROUP,
                    Some(g) => {
                        g.state = State::Dead;
                        let mut batch: Vec<(Bytes, Option<Bytes>)> = g
                            .offsets
                            .keys()
                            .map(|(t, p)| (records::encode_key(&Key::Offset { group: name.clone(), topic: t.clone(), partition: *p }), None))
                            .collect();
                        batch.push((records::encode_key(&Key::Group { group: name.clone() }), None));
                        // Commits still being written go too (they are in the log before these).
                        for (t, p) in inflight.get(&name).into_iter().flatten() {
                            batch.push((records::encode_key(&Key::Offset { group: name.clone(), topic: t.clone(), partition: *p }), None));
                        }
                        if g.consumer.is_some() {
                            batch.push((records::encode_key(&Key::ConsumerGroup { group: name.clone() }), None));
                        }
                        writes.push((slot, name.clone(), batch));
                        error::NONE
                    }
                },
            };
            response.results.push(DeletableGroupResult::default().with_group_id(id.clone()).with_error_code(code));
        }
        if writes.is_empty() {
            return self.reply(r, &response);
        }
        let batch = self.fresh_id();
        self.deletes.insert(batch, DeleteBatch { responder: r, response, outstanding: writes.len() });
        for (slot, group, records) in writes {
            self.append(&group.clone(), records, WriteKind::Delete { batch, slot, group });
        }
    }

    pub(crate) fn delete_done(&mut self, batch: u64, slot: usize, group: &str, result: Result<(), i16>) {
        let shard = self.shard_of(group);
        match result {
            Ok(()) => {
                if let Some(s) = self.shards.get_mut(&shard) {
                    if s.groups.get(group).is_some_and(|g| g.state == State::Dead) {
                        s.groups.remove(group);
                    }
                }
            }
            Err(code) => {
                if let Some(g) = self.group_mut(group).filter(|g| g.state == State::Dead) {
                    g.state = State::Empty;
                }
                if let Some(b) = self.deletes.get_mut(&batch) {
                    b.response.results[slot].error_code = code;
                }
            }
        }
        let Some(b) = self.deletes.get_mut(&batch) else { return };
        b.outstanding -= 1;
        if b.outstanding == 0 {
            let b = self.deletes.remove(&batch).expect("present");
            self.reply(b.responder, &b.response);
        }
    }

    /// Write tombstones for offsets past retention (KIP-211).
    pub(crate) fn expire_offsets(&mut self, now: Now) {
        let retention = self.settings.offsets_retention_ms;
        let mut work = Vec::new();
        for s in self.shards.values().filter(|s| s.active) {
            for g in s.groups.values() {
                if g.state != State::Empty || g.has_members() {
                    continue;
                }
                let simple = g.protocol_type.is_none();
                let expired: Vec<(String, i32)> = g
                    .offsets
                    .iter()
                    .filter(|(_, v)| {
                        let since = if simple { v.commit_timestamp } else { g.state_timestamp.max(v.commit_timestamp) };
                        now.wall_ms - since >= retention
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let group_too = expired.len() == g.offsets.len();
                if !expired.is_empty() {
                    work.push((g.id.clone(), expired, group_too));
                }
            }
        }
        for (group, partitions, group_too) in work {
            let mut batch: Vec<(Bytes, Option<Bytes>)> =
                partitions.iter().map(|(t, p)| (records::encode_key(&Key::Offset { group: group.clone(), topic: t.clone(), partition: *p }), None)).collect();
            if group_too {
                batch.push((records::encode_key(&Key::Group { group: group.clone() }), None));
            }
            tracing::info!(group, offsets = partitions.len(), "expiring committed offsets past offsets.retention.minutes");
            self.append(&group.clone(), batch, WriteKind::Expire { group, partitions, group_too });
        }
    }

    pub(crate) fn expire_done(&mut self, group: &str, partitions: Vec<(String, i32)>, group_too: bool, result: Result<(), i16>) {
        if result.is_err() {
            return;
        }
        let shard = self.shard_of(group);
        let Some(s) = self.shards.get_mut(&shard) else { return };
        let Some(g) = s.groups.get_mut(group) else { return };
        for k in &partitions {
            g.offsets.remove(k);
        }
        if group_too && g.offsets.is_empty() && g.state == State::Empty && !g.has_members() {
            let parked = s.groups.remove(group).and_then(|g| g.consumer).map(|c| c.parked).unwrap_or_default();
            for p in parked {
                self.reply(p.responder, &super::consumer::hb_error(error::COORDINATOR_NOT_AVAILABLE, "the group expired"));
            }
        }
    }
}
