//! The classic group protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup.
//!
//! States follow Kafka's coordinator: Empty → PreparingRebalance (members join; an empty group
//! waits `group.initial.rebalance.delay.ms`, extended while new members keep arriving, up to the
//! rebalance timeout) → CompletingRebalance (the generation is bumped; the leader gets the
//! members and their metadata) → Stable (the leader's SyncGroup assignment is durable in
//! `__consumer_offsets`, then every member gets its share). A member that misses its session
//! timeout, leaves, or changes its protocols sends the group back to PreparingRebalance; a member
//! that does not rejoin within the rebalance timeout is removed.
//!
//! Member ids (KIP-394): a JoinGroup v4+ without one gets MEMBER_ID_REQUIRED and an id to join
//! with. Static members (KIP-345) keep their place across restarts through `group.instance.id`:
//! a rejoin under a known instance id takes over the old member's id and assignment, and an old
//! member id presented with that instance id is fenced (FENCED_INSTANCE_ID). Cooperative
//! rebalancing (KIP-429) is driven by the clients' assignors and needs nothing more here.

use super::{member_id, records, sb, Coordinator, Group, Lookup, Member, Now, Responder, State, WriteKind};
use crate::broker::error;
use crate::core::Rng;
use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::*;
use std::collections::BTreeMap;

pub(crate) fn join_error(code: i16) -> JoinGroupResponse {
    JoinGroupResponse::default().with_error_code(code).with_generation_id(-1)
}

fn sync_error(code: i16) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(code)
}

/// Protocol names every member (and the joining one) supports.
fn candidates(g: &Group, joining: &[(String, Bytes)], except: Option<&str>) -> Vec<String> {
    joining
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| g.members.values().filter(|m| Some(m.id.as_str()) != except).all(|m| m.protocols.iter().any(|(p, _)| p == n)))
        .collect()
}

impl Coordinator {
    /// JoinGroup.
    pub fn on_join(&mut self, r: Responder, req: JoinGroupRequest, now: Now, rng: &mut Rng) {
        let group_id = req.group_id.0.to_string();
        let client_host = r.client_host.clone();
        let client_host = client_host.as_str();
        let version = r.request.version;
        if group_id.is_empty() {
            return self.reply(r, &join_error(error::INVALID_GROUP_ID));
        }
        if req.session_timeout_ms < self.settings.min_session_timeout_ms || req.session_timeout_ms > self.settings.max_session_timeout_ms {
            return self.reply(r, &join_error(error::INVALID_SESSION_TIMEOUT));
        }
        let protocol_type = req.protocol_type.to_string();
        let protocols: Vec<(String, Bytes)> = req.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect();
        if protocol_type.is_empty() || protocols.is_empty() {
            return self.reply(r, &join_error(error::INCONSISTENT_GROUP_PROTOCOL));
        }
        let member = req.member_id.to_string();
        let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
        let shard = match self.lookup(&group_id) {
            Lookup::Error(code) => return self.reply(r, &join_error(code)),
            Lookup::Here(s) => s,
        };
        if !shard.groups.contains_key(&group_id) {
            if !member.is_empty() {
                return self.reply(r, &join_error(error::UNKNOWN_MEMBER_ID));
            }
            shard.groups.insert(group_id.clone(), Group::new(&group_id, now));
        }
        let g = shard.groups.get_mut(&group_id).expect("present");
        if g.state == State::Dead {
            return self.reply(r, &join_error(error::COORDINATOR_NOT_AVAILABLE));
        }
        if let Some(c) = &g.consumer {
            if !c.members.is_empty() {
                // A consumer-protocol group with members: classic members cannot join it.
                return self.reply(r, &join_error(error::INCONSISTENT_GROUP_PROTOCOL));
            }
            if c.in_flight > 0 || !c.parked.is_empty() {
                // Its last state is still being written (its last member's leave): try again.
                return self.reply(r, &join_error(error::COORDINATOR_LOAD_IN_PROGRESS));
            }
            // An empty consumer-protocol group becomes classic again, in the log too.
            g.consumer = None;
            let key = records::encode_key(&records::Key::ConsumerGroup { group: group_id.clone() });
            self.append(&group_id, vec![(key, None)], WriteKind::GroupState);
            return self.on_join(r, req, now, rng);
        }
        let existing = if member.is_empty() { instance.as_ref().and_then(|i| g.statics.get(i)).cloned() } else { Some(member.clone()) };
        let fits = match &g.protocol_type {
            _ if g.members.is_empty() || (g.members.len() == 1 && existing.as_ref().is_some_and(|e| g.members.contains_key(e))) => true,
            Some(t) => *t == protocol_type && !candidates(g, &protocols, existing.as_deref()).is_empty(),
            None => true,
        };
        if !fits {
            return self.reply(r, &join_error(error::INCONSISTENT_GROUP_PROTOCOL));
        }
        let session = req.session_timeout_ms;
        let rebalance = if req.rebalance_timeout_ms > 0 { req.rebalance_timeout_ms } else { session };
        let client_id = r.request.client_id.clone().unwrap_or_default();

        if member.is_empty() {
            let new_id = member_id(&client_id, rng);
            if let Some(i) = &instance {
                if let Some(old_id) = g.statics.get(i).cloned() {
                    // A static member restarted: it takes over its old identity.
                    let mut m = g.members.remove(&old_id).expect("statics name members");
                    let fenced_join = m.join.take();
                    let fenced_sync = m.sync.take();
                    let unchanged = m.protocols == protocols;
                    m.id = new_id.clone();
                    m.protocols = protocols;
                    (m.client_id, m.client_host) = (client_id.clone(), client_host.to_string());
                    m.session_timeout_ms = session;
                    m.rebalance_timeout_ms = rebalance;
                    m.deadline_ms = now.mono_ms + session as u64;
                    if g.leader.as_deref() == Some(old_id.as_str()) {
                        g.leader = Some(new_id.clone());
                    }
                    g.statics.insert(i.clone(), new_id.clone());
                    let stable = g.state == State::Stable;
                    let is_leader = g.leader.as_deref() == Some(new_id.as_str());
                    g.members.insert(new_id.clone(), m);
                    if let Some(f) = fenced_join {
                        self.reply(f, &join_error(error::FENCED_INSTANCE_ID));
                    }
                    if let Some(f) = fenced_sync {
                        self.reply(f, &sync_error(error::FENCED_INSTANCE_ID));
                    }
                    let g = self.group_mut(&group_id).expect("present");
                    if stable && unchanged && !is_leader {
                        // Nothing changed for the group: no rebalance (KIP-345). The new member id
                        // is written first, so the next coordinator knows it too.
                        let response = current_join_response(g, &new_id, false, version);
                        let record = g.record(None);
                        let key = records::encode_key(&records::Key::Group { group: group_id.clone() });
                        self.append(&group_id, vec![(key, Some(record))], WriteKind::StaticRejoin { responder: r, response });
                        return;
                    }
                    g.members.get_mut(&new_id).expect("inserted").join = Some(r);
                    return self.after_join(&group_id, now);
                }
            } else if version >= 4 {
                // KIP-394: hand out an id and make the client join with it.
                g.pending.insert(new_id.clone(), now.mono_ms + session as u64);
                let response = join_error(error::MEMBER_ID_REQUIRED).with_member_id(sb(&new_id));
                return self.reply(r, &response);
            }
            let m = new_member(new_id, instance, client_id, client_host, session, rebalance, protocols, now);
            return self.admit(&group_id, m, &protocol_type, r, now);
        }

        // A member id was given.
        if let Some(i) = &instance {
            match g.statics.get(i) {
                Some(id) if *id != member => return self.reply(r, &join_error(error::FENCED_INSTANCE_ID)),
                None if g.members.contains_key(&member) => return self.reply(r, &join_error(error::FENCED_INSTANCE_ID)),
                _ => {}
            }
        }
        if g.pending.remove(&member).is_some() {
            let m = new_member(member, instance, client_id, client_host, session, rebalance, protocols, now);
            return self.admit(&group_id, m, &protocol_type, r, now);
        }
        let Some(m) = g.members.get_mut(&member) else {
            return self.reply(r, &join_error(error::UNKNOWN_MEMBER_ID));
        };
        let changed = m.protocols != protocols;
        m.protocols = protocols;
        m.session_timeout_ms = session;
        m.rebalance_timeout_ms = rebalance;
        m.deadline_ms = now.mono_ms + session as u64;
        let is_leader = g.leader.as_deref() == Some(member.as_str());
        match g.state {
            State::CompletingRebalance if !changed => {
                // A retried join of this generation: the same answer again.
                let response = current_join_response(g, &member, true, version);
                self.reply(r, &response)
            }
            State::Stable if !changed && !is_leader => {
                let response = current_join_response(g, &member, false, version);
                self.reply(r, &response)
            }
            _ => {
                let m = g.members.get_mut(&member).expect("present");
                if let Some(old) = m.join.replace(r) {
                    self.reply(old, &join_error(error::REBALANCE_IN_PROGRESS));
                }
                self.after_join(&group_id, now)
            }
        }
    }

    /// A new member joins (unless the group is at `group.max.size`), waiting with `join` for the
    /// rebalance it starts.
    fn admit(&mut self, group: &str, mut m: Member, protocol_type: &str, join: Responder, now: Now) {
        let max_size = self.settings.max_size;
        let Some(g) = self.group_mut(group) else { return };
        if g.members.len() >= max_size {
            return self.reply(join, &join_error(error::GROUP_MAX_SIZE_REACHED));
        }
        if g.members.is_empty() {
            g.protocol_type = Some(protocol_type.to_string());
        }
        if g.initial_delay.is_some() {
            g.new_member_added = true;
        }
        if let Some(i) = &m.instance_id {
            g.statics.insert(i.clone(), m.id.clone());
        }
        m.join = Some(join);
        g.members.insert(m.id.clone(), m);
        self.after_join(group, now)
    }

    /// A member (re)joined: start a rebalance if none is under way, and complete it if everyone
    /// is in.
    fn after_join(&mut self, group: &str, now: Now) {
        let Some(g) = self.group_mut(group) else { return };
        if g.state != State::PreparingRebalance {
            self.prepare_rebalance(group, now);
        }
        self.maybe_complete_join(group, now);
    }

    /// Move `group` to PreparingRebalance.
    pub(crate) fn prepare_rebalance(&mut self, group: &str, now: Now) {
        let initial = self.settings.initial_rebalance_delay_ms;
        let Some(g) = self.group_mut(group) else { return };
        let mut waiting_syncs = Vec::new();
        if g.state == State::CompletingRebalance {
            for m in g.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(s) = m.sync.take() {
                    waiting_syncs.push(s);
                }
            }
        }
        g.sync_write = None;
        let rebalance = g.members.values().map(|m| m.rebalance_timeout_ms.max(0) as u64).max().unwrap_or(0);
        if g.state == State::Empty {
            let delay = initial.min(rebalance);
            g.initial_delay = Some((now.mono_ms + delay, rebalance - delay));
            g.new_member_added = false;
        }
        g.rebalance_deadline_ms = now.mono_ms + rebalance;
        g.state = State::PreparingRebalance;
        g.state_timestamp = now.wall_ms;
        tracing::debug!(group, generation = g.generation, members = g.members.len(), "preparing rebalance");
        for s in waiting_syncs {
            self.reply(s, &sync_error(error::REBALANCE_IN_PROGRESS));
        }
    }

    /// Complete the join phase once every member has rejoined (and no initial delay runs).
    fn maybe_complete_join(&mut self, group: &str, now: Now) {
        let Some(g) = self.group_mut(group) else { return };
        if g.state != State::PreparingRebalance || g.initial_delay.is_some() {
            return;
        }
        let all_in = g.members.values().all(|m| m.join.is_some()) && g.pending.is_empty();
        if all_in {
            self.complete_join(group, now);
        }
    }

    /// End the join phase: drop who did not rejoin, bump the generation, answer the joins.
    fn complete_join(&mut self, group: &str, now: Now) {
        let Some(g) = self.group_mut(group) else { return };
        let gone: Vec<String> = g.members.values().filter(|m| m.join.is_none()).map(|m| m.id.clone()).collect();
        let mut syncs = Vec::new();
        for id in gone {
            if let Some(m) = g.members.remove(&id) {
                if let Some(i) = &m.instance_id {
                    g.statics.remove(i);
                }
                syncs.extend(m.sync);
            }
        }
        g.pending.clear();
        g.generation += 1;
        g.state_timestamp = now.wall_ms;
        g.initial_delay = None;
        if g.members.is_empty() {
            g.state = State::Empty;
            g.protocol = None;
            g.leader = None;
            tracing::debug!(group, generation = g.generation, "group is empty");
            let record = g.record(None);
            for s in syncs {
                self.reply(s, &sync_error(error::UNKNOWN_MEMBER_ID));
            }
            self.append(group, vec![(records::encode_key(&records::Key::Group { group: group.to_string() }), Some(record))], WriteKind::GroupState);
            return;
        }
        // The protocol most members prefer among those all support.
        let first = g.members.values().next().expect("not empty");
        let all: Vec<String> =
            first.protocols.iter().map(|(n, _)| n.clone()).filter(|n| g.members.values().all(|m| m.protocols.iter().any(|(p, _)| p == n))).collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in g.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| all.contains(n)) {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        let protocol = all.iter().max_by_key(|n| (votes.get(n.as_str()).copied().unwrap_or(0), std::cmp::Reverse(all.iter().position(|x| x == *n)))).cloned();
        g.protocol = protocol;
        if !g.leader.as_ref().is_some_and(|l| g.members.contains_key(l)) {
            g.leader = g.members.keys().next().cloned();
        }
        g.state = State::CompletingRebalance;
        tracing::debug!(group, generation = g.generation, members = g.members.len(), protocol = ?g.protocol, "rebalance: joined");
        let ids: Vec<String> = g.members.keys().cloned().collect();
        let mut answers = Vec::new();
        for id in ids {
            let g = self.group_mut(group).expect("present");
            let (join, response) = {
                let response_version = g.members[&id].join.as_ref().map_or(0, |r| r.request.version);
                let response = current_join_response(g, &id, true, response_version);
                let m = g.members.get_mut(&id).expect("present");
                m.deadline_ms = now.mono_ms + m.session_timeout_ms.max(0) as u64;
                (m.join.take(), response)
            };
            if let Some(j) = join {
                answers.push((j, response));
            }
        }
        for s in syncs {
            self.reply(s, &sync_error(error::UNKNOWN_MEMBER_ID));
        }
        for (j, response) in answers {
            self.reply(j, &response);
        }
    }

    /// SyncGroup.
    pub fn on_sync(&mut self, r: Responder, req: SyncGroupRequest, now: Now) {
        let group_id = req.group_id.0.to_string();
        let member = req.member_id.to_string();
        let g = match self.lookup(&group_id) {
            Lookup::Error(code) => return self.reply(r, &sync_error(code)),
            Lookup::Here(s) => s.groups.get_mut(&group_id),
        };
        let Some(g) = g else { return self.reply(r, &sync_error(error::UNKNOWN_MEMBER_ID)) };
        if let Some(code) = check_member(g, &member, req.group_instance_id.as_ref().map(|s| s.as_str())) {
            return self.reply(r, &sync_error(code));
        }
        if req.generation_id != g.generation {
            return self.reply(r, &sync_error(error::ILLEGAL_GENERATION));
        }
        let type_mismatch = req.protocol_type.as_ref().is_some_and(|t| Some(t.as_str()) != g.protocol_type.as_deref());
        let name_mismatch = req.protocol_name.as_ref().is_some_and(|n| Some(n.as_str()) != g.protocol.as_deref());
        if type_mismatch || name_mismatch {
            return self.reply(r, &sync_error(error::INCONSISTENT_GROUP_PROTOCOL));
        }
        match g.state {
            State::Empty | State::Dead => self.reply(r, &sync_error(error::UNKNOWN_MEMBER_ID)),
            State::PreparingRebalance => self.reply(r, &sync_error(error::REBALANCE_IN_PROGRESS)),
            State::Stable => {
                let m = g.members.get_mut(&member).expect("checked");
                m.deadline_ms = now.mono_ms + m.session_timeout_ms.max(0) as u64;
                let response = sync_response(g, &member);
                self.reply(r, &response)
            }
            State::CompletingRebalance => {
                let is_leader = g.leader.as_deref() == Some(member.as_str());
                let m = g.members.get_mut(&member).expect("checked");
                m.deadline_ms = now.mono_ms + m.session_timeout_ms.max(0) as u64;
                let old = m.sync.replace(r);
                if is_leader && g.sync_write.is_none() {
                    let mut assignments: BTreeMap<String, Bytes> = g.members.keys().map(|id| (id.clone(), Bytes::new())).collect();
                    for a in &req.assignments {
                        if let Some(slot) = assignments.get_mut(a.member_id.as_str()) {
                            *slot = a.assignment.clone();
                        }
                    }
                    let record = g.record(Some(&assignments));
                    let generation = g.generation;
                    let key = records::encode_key(&records::Key::Group { group: group_id.clone() });
                    let write = self.append(&group_id, vec![(key, Some(record))], WriteKind::Sync { group: group_id.clone(), generation });
                    if let Some(g) = self.group_mut(&group_id) {
                        g.sync_write = Some((write, assignments));
                    }
                }
                if let Some(old) = old {
                    self.reply(old, &sync_error(error::REBALANCE_IN_PROGRESS));
                }
            }
        }
    }

    /// The leader's assignment is durable (or not).
    pub(crate) fn sync_done(&mut self, group: &str, generation: i32, result: Result<(), i16>, now: Now) {
        let Some(g) = self.group_mut(group) else { return };
        if g.state != State::CompletingRebalance || g.generation != generation {
            return;
        }
        let Some((_, assignments)) = g.sync_write.take() else { return };
        match result {
            Ok(()) => {
                for (id, a) in assignments {
                    if let Some(m) = g.members.get_mut(&id) {
                        m.assignment = a;
                    }
                }
                g.state = State::Stable;
                g.state_timestamp = now.wall_ms;
                tracing::debug!(group, generation, "rebalance: stable");
                let ids: Vec<String> = g.members.keys().cloned().collect();
                for id in ids {
                    let g = self.group_mut(group).expect("present");
                    let response = sync_response(g, &id);
                    if let Some(s) = g.members.get_mut(&id).and_then(|m| m.sync.take()) {
                        self.reply(s, &response);
                    }
                }
            }
            Err(code) => {
                let waiting: Vec<Responder> = g.members.values_mut().filter_map(|m| m.sync.take()).collect();
                for s in waiting {
                    self.reply(s, &sync_error(code));
                }
                self.prepare_rebalance(group, now);
            }
        }
    }

    /// Heartbeat.
    pub fn on_heartbeat(&mut self, r: Responder, req: HeartbeatRequest, now: Now) {
        let group_id = req.group_id.0.to_string();
        let member = req.member_id.to_string();
        let code = match self.lookup(&group_id) {
            Lookup::Error(code) => code,
            Lookup::Here(s) => match s.groups.get_mut(&group_id) {
                None => error::UNKNOWN_MEMBER_ID,
                Some(g) => match check_member(g, &member, req.group_instance_id.as_ref().map(|s| s.as_str())) {
                    Some(code) => code,
                    None if req.generation_id != g.generation => error::ILLEGAL_GENERATION,
                    None => {
                        let m = g.members.get_mut(&member).expect("checked");
                        m.deadline_ms = now.mono_ms + m.session_timeout_ms.max(0) as u64;
                        match g.state {
                            State::PreparingRebalance => error::REBALANCE_IN_PROGRESS,
                            State::Empty | State::Dead => error::UNKNOWN_MEMBER_ID,
                            State::CompletingRebalance | State::Stable => error::NONE,
                        }
                    }
                },
            },
        };
        self.reply(r, &HeartbeatResponse::default().with_error_code(code));
    }

    /// LeaveGroup (v0–2: one member; v3+: a batch, possibly by `group.instance.id`).
    pub fn on_leave(&mut self, r: Responder, req: LeaveGroupRequest, now: Now) {
        let group_id = req.group_id.0.to_string();
        let version = r.request.version;
        let identities: Vec<(String, Option<String>)> = if version < 3 {
            vec![(req.member_id.to_string(), None)]
        } else {
            req.members.iter().map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|s| s.to_string()))).collect()
        };
        let mut results = Vec::new();
        let mut top = error::NONE;
        let mut removed_any = false;
        let mut pending_removed = false;
        let (mut join_orphans, mut sync_orphans) = (Vec::new(), Vec::new());
        match self.lookup(&group_id) {
            Lookup::Error(code) => top = code,
            Lookup::Here(s) => match s.groups.get_mut(&group_id) {
                // v3+ answer per member; older versions have only the top-level code.
                None if version >= 3 => {
                    for (member, instance) in &identities {
                        results.push(
                            MemberResponse::default()
                                .with_member_id(sb(member))
                                .with_group_instance_id(instance.as_deref().map(sb))
                                .with_error_code(error::UNKNOWN_MEMBER_ID),
                        );
                    }
                }
                None => top = error::UNKNOWN_MEMBER_ID,
                Some(g) => {
                    for (member, instance) in identities {
                        let target = match &instance {
                            Some(i) => match g.statics.get(i) {
                                Some(id) if member.is_empty() || *id == member => Ok(id.clone()),
                                Some(_) => Err(error::FENCED_INSTANCE_ID),
                                None => Err(error::UNKNOWN_MEMBER_ID),
                            },
                            None => Ok(member.clone()),
                        };
                        let code = match target {
                            Err(code) => code,
                            Ok(id) if g.pending.remove(&id).is_some() => {
                                // Nobody waits for it any more: the rebalance may complete.
                                pending_removed = true;
                                error::NONE
                            }
                            Ok(id) => match g.members.remove(&id) {
                                None => error::UNKNOWN_MEMBER_ID,
                                Some(m) => {
                                    if let Some(i) = &m.instance_id {
                                        g.statics.remove(i);
                                    }
                                    join_orphans.extend(m.join);
                                    sync_orphans.extend(m.sync);
                                    removed_any = true;
                                    tracing::debug!(group = group_id, member = id, "member left");
                                    error::NONE
                                }
                            },
                        };
                        results
                            .push(MemberResponse::default().with_member_id(sb(&member)).with_group_instance_id(instance.map(|i| sb(&i))).with_error_code(code));
                    }
                }
            },
        }
        for o in join_orphans {
            self.reply(o, &join_error(error::UNKNOWN_MEMBER_ID));
        }
        for o in sync_orphans {
            self.reply(o, &sync_error(error::UNKNOWN_MEMBER_ID));
        }
        if removed_any {
            self.member_removed(&group_id, now);
        } else if pending_removed {
            self.maybe_complete_join(&group_id, now);
        }
        if version < 3 && top == error::NONE {
            top = results.first().map_or(error::NONE, |m| m.error_code);
        }
        let mut response = LeaveGroupResponse::default().with_error_code(top);
        if version >= 3 && top == error::NONE {
            response.members = results;
        }
        self.reply(r, &response);
    }

    /// A member is gone (left or expired): rebalance, or finish the one under way.
    fn member_removed(&mut self, group: &str, now: Now) {
        let Some(g) = self.group_mut(group) else { return };
        match g.state {
            State::Stable | State::CompletingRebalance => {
                self.prepare_rebalance(group, now);
                self.maybe_complete_join(group, now);
            }
            State::PreparingRebalance => self.maybe_complete_join(group, now),
            State::Empty | State::Dead => {}
        }
    }

    /// Timers of one group: initial delay, rebalance timeout, session and pending-member expiry.
    pub(crate) fn tick_group(&mut self, group: &str, now: Now) {
        let initial = self.settings.initial_rebalance_delay_ms;
        let Some(g) = self.group_mut(group) else { return };
        if let Some((deadline, remaining)) = g.initial_delay {
            if now.mono_ms >= deadline {
                if g.new_member_added && remaining > 0 {
                    let delay = initial.min(remaining);
                    g.initial_delay = Some((now.mono_ms + delay, remaining - delay));
                    g.new_member_added = false;
                } else {
                    g.initial_delay = None;
                    g.rebalance_deadline_ms = now.mono_ms + remaining;
                }
            }
        }
        g.pending.retain(|_, deadline| *deadline > now.mono_ms);
        if g.state == State::PreparingRebalance && g.initial_delay.is_none() && now.mono_ms >= g.rebalance_deadline_ms {
            return self.complete_join(group, now);
        }
        let g = self.group_mut(group).expect("present");
        let expired: Vec<String> = g.members.values().filter(|m| m.join.is_none() && m.deadline_ms <= now.mono_ms).map(|m| m.id.clone()).collect();
        let mut orphans = Vec::new();
        for id in &expired {
            if let Some(m) = g.members.remove(id) {
                tracing::debug!(group, member = id, "member session expired");
                if let Some(i) = &m.instance_id {
                    g.statics.remove(i);
                }
                orphans.extend(m.sync);
            }
        }
        for o in orphans {
            self.reply(o, &sync_error(error::UNKNOWN_MEMBER_ID));
        }
        if !expired.is_empty() {
            self.member_removed(group, now);
        } else {
            self.maybe_complete_join(group, now);
        }
    }
}

#[allow(clippy::too_many_arguments)] // a member's fields
fn new_member(
    id: String,
    instance_id: Option<String>,
    client_id: String,
    host: &str,
    session: i32,
    rebalance: i32,
    protocols: Vec<(String, Bytes)>,
    now: Now,
) -> Member {
    Member {
        id,
        instance_id,
        client_id,
        client_host: host.to_string(),
        session_timeout_ms: session,
        rebalance_timeout_ms: rebalance,
        protocols,
        assignment: Bytes::new(),
        deadline_ms: now.mono_ms + session as u64,
        join: None,
        sync: None,
    }
}

/// `None` if `member` may act in `g`, else the error.
fn check_member(g: &Group, member: &str, instance: Option<&str>) -> Option<i16> {
    if let Some(i) = instance {
        match g.statics.get(i) {
            Some(id) if id != member => return Some(error::FENCED_INSTANCE_ID),
            None if g.members.contains_key(member) => return Some(error::FENCED_INSTANCE_ID),
            _ => {}
        }
    }
    (!g.members.contains_key(member)).then_some(error::UNKNOWN_MEMBER_ID)
}

/// The JoinGroup answer for `member` in the current generation (the member list goes to the
/// leader only, and only when it must assign).
fn current_join_response(g: &Group, member: &str, with_members: bool, _version: i16) -> JoinGroupResponse {
    let protocol = g.protocol.clone().unwrap_or_default();
    let leader = g.leader.clone().unwrap_or_default();
    let mut response = JoinGroupResponse::default()
        .with_generation_id(g.generation)
        .with_protocol_type(g.protocol_type.as_deref().map(sb))
        .with_protocol_name(Some(sb(&protocol)))
        .with_leader(sb(&leader))
        .with_member_id(sb(member));
    if with_members && leader == member {
        response.members = g
            .members
            .values()
            .map(|m| {
                JoinGroupResponseMember::default()
                    .with_member_id(sb(&m.id))
                    .with_group_instance_id(m.instance_id.as_deref().map(sb))
                    .with_metadata(m.metadata_for(&protocol))
            })
            .collect();
    }
    response
}

fn sync_response(g: &Group, member: &str) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_protocol_type(g.protocol_type.as_deref().map(sb))
        .with_protocol_name(g.protocol.as_deref().map(sb))
        .with_assignment(g.members.get(member).map(|m| m.assignment.clone()).unwrap_or_default())
}
