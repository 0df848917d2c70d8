//! The KIP-848 consumer group protocol: ConsumerGroupHeartbeat and ConsumerGroupDescribe.
//!
//! Members send heartbeats only; the coordinator computes the assignment with a server-side
//! assignor (`uniform`, the default, or `range`) whenever membership or subscriptions change
//! (the group epoch), and leads each member from its current assignment to its target one:
//! first it takes away what the member must give up (the member epoch stays until the member
//! reports, in a later heartbeat, that it no longer owns those partitions), then it bumps the
//! member epoch and gives it what the target adds — but never a partition that another member
//! still owns or is still revoking, which it hands over on a later heartbeat once released. So
//! a partition never has two owners, at any moment.
//!
//! Member ids come from the client (v1) or from the coordinator (v0 with an empty id). Epoch 0
//! joins, -1 leaves, -2 leaves a static member's place for its return; a heartbeat with an epoch
//! other than the member's (or the previous one, when the member may have missed the answer)
//! is fenced (FENCED_MEMBER_EPOCH) and the member must rejoin with epoch 0. Members that miss
//! `group.consumer.session.timeout.ms`, or do not revoke within their rebalance timeout, are
//! removed.
//!
//! The whole group — members, epochs, assignments, target — is written to `__consumer_offsets`
//! before any member is told of a change to it (see [`ConsumerGroup`]; refusals such as
//! UNKNOWN_MEMBER_ID or FENCED_MEMBER_EPOCH grant nothing and are answered at once), so a
//! coordinator that takes over after a failover carries on where the members are: they keep
//! their ids, epochs and partitions, and only their session timers start again.

use super::{sb, Coordinator, Group, Lookup, Now, Responder, State};
use crate::broker::error;
use kafka_protocol::messages::consumer_group_describe_response as describe;
use kafka_protocol::messages::consumer_group_heartbeat_response as hb;
use kafka_protocol::messages::*;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

pub(crate) use super::records::Parts;
use super::records::{ConsumerMemberValue, ConsumerState};
use bytes::Bytes;

/// The assignors a member may name.
pub const ASSIGNORS: &[&str] = &["uniform", "range"];

/// The member epoch of a static member that left and may come back (KIP-848).
const LEFT_STATIC: i32 = -2;

/// The longest id, rack, pattern or topic name a heartbeat may carry (bytes): the group's
/// record stores them whole.
const MAX_FIELD_BYTES: usize = 4096;

/// A group whose stored state is this large takes no new members (GROUP_MAX_SIZE_REACHED): the
/// state is one record, and must stay below `max.message.bytes` (1 MiB by default).
const STATE_BUDGET_BYTES: usize = 768 << 10;

/// A member of a consumer-protocol group.
#[derive(Debug, Clone)]
pub(crate) struct CMember {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) rack_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) epoch: i32,
    pub(crate) previous_epoch: i32,
    pub(crate) subscribed: BTreeSet<String>,
    /// A subscription by regular expression (its pattern, compiled to match whole names), and
    /// the topics it matched when last resolved.
    pub(crate) regex: Option<(String, regex::Regex)>,
    pub(crate) matched: BTreeSet<String>,
    pub(crate) assignor: Option<String>,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) deadline_ms: u64,
    /// What the member was told it owns.
    pub(crate) assigned: Parts,
    /// What it was told to give up and has not yet confirmed.
    pub(crate) revoking: Parts,
    pub(crate) revoke_deadline_ms: u64,
    /// Loaded from `__consumer_offsets` and not heard from since.
    pub(crate) restored: bool,
}

/// The consumer-protocol state of a group.
///
/// Everything but the timers is written to `__consumer_offsets` as one record whenever it
/// changes ([`ConsumerState`]), and no heartbeat is answered before a record holding the state
/// its answer was taken from is committed. So whatever a member has been told, a coordinator
/// that takes over loads that state or a later one — as if the old coordinator had gone on and
/// its later answers were lost, which the protocol already survives. A write that fails leaves
/// the in-memory state as it is (it may still commit, being in the leader's log); the next
/// change or tick writes the whole state again, and the answers that waited get the error.
#[derive(Debug, Default)]
pub(crate) struct ConsumerGroup {
    pub(crate) group_epoch: i32,
    pub(crate) assignment_epoch: i32,
    pub(crate) members: BTreeMap<String, CMember>,
    pub(crate) target: BTreeMap<String, Parts>,
    pub(crate) assignor: String,
    /// The subscribed topics' ids and partition counts when the target was last computed.
    pub(crate) fingerprint: Topics,
    /// Counts changes of what is stored; `encoded` is the record of the state at `seq`.
    pub(crate) seq: u64,
    encoded: Bytes,
    /// The newest `seq` written (and not failed), and the newest committed.
    pub(crate) written_seq: u64,
    pub(crate) durable_seq: u64,
    pub(crate) in_flight: usize,
    /// Answers waiting for the state they were taken from to be durable.
    pub(crate) parked: Vec<Parked>,
    /// Which life of the group this is (a write of an earlier life, before the group was
    /// deleted or turned classic, is ignored when it completes).
    pub(crate) incarnation: u64,
    /// The topic names the members' patterns were last resolved against.
    resolved_against: BTreeSet<String>,
}

/// A heartbeat answer sent once the state it was taken from (`seq`) is durable.
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) responder: Responder,
    response: ConsumerGroupHeartbeatResponse,
    seq: u64,
}

impl ConsumerGroup {
    /// A group loaded from its epoch record; with `state`, its members come back with fresh
    /// session timers.
    pub(crate) fn loaded(epoch: i32, state: Option<ConsumerState>, session_ms: u64, now: Now, incarnation: u64) -> ConsumerGroup {
        let mut cg = ConsumerGroup { group_epoch: epoch, assignment_epoch: epoch, assignor: "uniform".into(), incarnation, ..Default::default() };
        if let Some(s) = state {
            cg.assignment_epoch = s.assignment_epoch;
            cg.assignor = s.assignor;
            cg.fingerprint = s.topics.into_iter().map(|(t, id, n)| (t, (id, n))).collect();
            for m in s.members {
                cg.target.insert(m.id.clone(), m.target);
                let revoke_deadline_ms = now.mono_ms + m.rebalance_timeout_ms.max(1) as u64;
                cg.members.insert(
                    m.id.clone(),
                    CMember {
                        id: m.id,
                        instance_id: m.instance_id,
                        rack_id: m.rack_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        epoch: m.epoch,
                        previous_epoch: m.previous_epoch,
                        subscribed: m.subscribed,
                        regex: m.regex.and_then(|p| compile(&p).ok().map(|r| (p, r))),
                        matched: m.matched,
                        assignor: m.assignor,
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        deadline_ms: now.mono_ms + session_ms,
                        assigned: m.assigned,
                        revoking: m.revoking,
                        revoke_deadline_ms,
                        restored: true,
                    },
                );
            }
        }
        cg.encoded = super::records::encode_consumer_group(cg.group_epoch, Some(&cg.stored()));
        cg
    }

    /// What `__consumer_offsets` keeps of the group (everything but timers and waiting answers).
    fn stored(&self) -> ConsumerState {
        ConsumerState {
            assignment_epoch: self.assignment_epoch,
            assignor: self.assignor.clone(),
            topics: self.fingerprint.iter().map(|(t, (id, n))| (t.clone(), *id, *n)).collect(),
            members: self
                .members
                .values()
                .map(|m| ConsumerMemberValue {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    epoch: m.epoch,
                    previous_epoch: m.previous_epoch,
                    subscribed: m.subscribed.clone(),
                    regex: m.regex.as_ref().map(|(p, _)| p.clone()),
                    matched: m.matched.clone(),
                    assignor: m.assignor.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    assigned: m.assigned.clone(),
                    revoking: m.revoking.clone(),
                    target: self.target.get(&m.id).cloned().unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Note the subscribed topics' metadata; true if it changed since last time.
    pub(crate) fn track_metadata(&mut self, topics: &Topics) -> bool {
        let subscribed: BTreeSet<String> = self.members.values().flat_map(|m| m.subscription()).collect();
        let now: Topics = topics.iter().filter(|(t, _)| subscribed.contains(*t)).map(|(t, v)| (t.clone(), *v)).collect();
        if now == self.fingerprint {
            return false;
        }
        self.fingerprint = now;
        true
    }

    /// Kafka's state names for a consumer group.
    pub(crate) fn state(&self) -> &'static str {
        let active = || self.members.values().filter(|m| m.epoch != LEFT_STATIC);
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.group_epoch {
            "Assigning"
        } else if active().any(|m| m.epoch < self.assignment_epoch || !m.revoking.is_empty() || self.target.get(&m.id) != Some(&m.assigned)) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// Every member's assigned and revoking partitions, for the ownership check.
    pub(crate) fn owners(&self) -> Vec<(String, i32, String)> {
        let mut out = Vec::new();
        for m in self.members.values() {
            for parts in [&m.assigned, &m.revoking] {
                for (t, ps) in parts {
                    out.extend(ps.iter().map(|p| (t.clone(), *p, m.id.clone())));
                }
            }
        }
        out
    }
}

impl CMember {
    /// The topics the member subscribes to, by name and by its regular expression.
    pub(crate) fn subscription(&self) -> BTreeSet<String> {
        self.subscribed.union(&self.matched).cloned().collect()
    }
}

/// Compile a KIP-848 subscription pattern. Like RE2/J's `matches()` on Kafka brokers, it must
/// match a topic's whole name (`topic` does not match `topic-1`; `topic.*` does).
fn compile(pattern: &str) -> Result<regex::Regex, String> {
    // On its own first, so a pattern cannot close the group that anchors it (`a)|(b`).
    regex::RegexBuilder::new(pattern).size_limit(1 << 20).build().map_err(|e| e.to_string())?;
    regex::RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(1 << 20).build().map_err(|e| e.to_string())
}

/// The topics `re` matches (internal topics never do).
fn matching(re: &regex::Regex, topics: &Topics) -> BTreeSet<String> {
    topics.keys().filter(|t| !super::is_internal(t) && re.is_match(t)).cloned().collect()
}

/// Resolve the members' regular expressions against the topics; true if some member's matches
/// changed (a matching topic was created or deleted).
fn resolve(cg: &mut ConsumerGroup, topics: &Topics) -> bool {
    // A member's matches are computed when it sends a pattern; after that only new or deleted
    // topics change them.
    if topics.keys().eq(cg.resolved_against.iter()) {
        return false;
    }
    cg.resolved_against = topics.keys().cloned().collect();
    let mut changed = false;
    for m in cg.members.values_mut() {
        let Some((_, re)) = &m.regex else { continue };
        let now = matching(re, topics);
        if now != m.matched {
            m.matched = now;
            changed = true;
        }
    }
    changed
}

/// Topics as the metadata describes them: name -> (id, partition count).
pub type Topics = BTreeMap<String, (Uuid, i32)>;

/// Compute the target assignment of `members` (id -> subscribed topics; current assignment).
pub(crate) fn assign(assignor: &str, members: &BTreeMap<String, (BTreeSet<String>, Parts)>, topics: &Topics) -> BTreeMap<String, Parts> {
    let mut out: BTreeMap<String, Parts> = members.keys().map(|m| (m.clone(), Parts::new())).collect();
    let all_topics: BTreeSet<&String> = members.values().flat_map(|(s, _)| s.iter()).collect();
    if assignor == "range" {
        for t in all_topics {
            let Some((_, n)) = topics.get(t) else { continue };
            let subs: Vec<&String> = members.iter().filter(|(_, (s, _))| s.contains(t)).map(|(m, _)| m).collect();
            let k = subs.len().max(1) as i32;
            let (per, extra) = (n / k, n % k);
            let mut next = 0;
            for (i, m) in subs.iter().enumerate() {
                let count = per + i32::from((i as i32) < extra);
                out.get_mut(*m).expect("member").entry(t.clone()).or_default().extend(next..next + count);
                next += count;
            }
        }
        return out;
    }
    // Uniform: spread every subscribed partition evenly over the members subscribed to its
    // topic, keeping partitions where they are while that stays balanced (sticky).
    let mut load: BTreeMap<&String, usize> = members.keys().map(|m| (m, 0)).collect();
    let mut unassigned = Vec::new();
    let total: usize = all_topics.iter().filter_map(|t| topics.get(*t)).map(|(_, n)| *n as usize).sum();
    let quota = total.div_ceil(members.len().max(1));
    for t in &all_topics {
        let Some((_, n)) = topics.get(*t) else { continue };
        for p in 0..*n {
            let keeper = members.iter().find(|(_, (s, cur))| s.contains(*t) && cur.get(*t).is_some_and(|ps| ps.contains(&p))).map(|(m, _)| m);
            match keeper {
                Some(m) if load[m] < quota => {
                    *load.get_mut(m).expect("member") += 1;
                    out.get_mut(m).expect("member").entry((*t).clone()).or_default().insert(p);
                }
                _ => unassigned.push(((*t).clone(), p)),
            }
        }
    }
    for (t, p) in unassigned {
        let least = members.iter().filter(|(_, (s, _))| s.contains(&t)).map(|(m, _)| m).min_by_key(|m| (load[m], (*m).clone()));
        if let Some(m) = least {
            *load.get_mut(m).expect("member") += 1;
            out.get_mut(m).expect("member").entry(t).or_default().insert(p);
        }
    }
    out
}

fn minus(a: &Parts, b: &Parts) -> Parts {
    let mut out = Parts::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = ps.iter().filter(|p| !b.get(t).is_some_and(|q| q.contains(p))).copied().collect();
        if !rest.is_empty() {
            out.insert(t.clone(), rest);
        }
    }
    out
}

fn union(a: &Parts, b: &Parts) -> Parts {
    let mut out = a.clone();
    for (t, ps) in b {
        out.entry(t.clone()).or_default().extend(ps);
    }
    out.retain(|_, ps| !ps.is_empty());
    out
}

pub(crate) fn hb_error(code: i16, message: &str) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default().with_error_code(code).with_error_message(Some(sb(message))).with_member_epoch(-1)
}

fn to_wire(parts: &Parts, topics: &Topics) -> Vec<hb::TopicPartitions> {
    parts
        .iter()
        .filter_map(|(t, ps)| topics.get(t).map(|(id, _)| hb::TopicPartitions::default().with_topic_id(*id).with_partitions(ps.iter().copied().collect())))
        .collect()
}

impl Coordinator {
    /// ConsumerGroupHeartbeat.
    pub fn on_consumer_heartbeat(&mut self, r: Responder, req: ConsumerGroupHeartbeatRequest, topics: &Topics, now: Now, rng: &mut crate::core::Rng) {
        let group_id = req.group_id.0.to_string();
        let session = self.settings.consumer_session_timeout_ms;
        let interval = self.settings.consumer_heartbeat_interval_ms;
        let incarnation = self.fresh_id();
        let max_size = self.settings.max_size;
        if group_id.is_empty() {
            return self.reply(r, &hb_error(error::INVALID_GROUP_ID, "the group id is empty"));
        }
        let fields = [Some(&req.member_id), req.instance_id.as_ref(), req.rack_id.as_ref(), req.subscribed_topic_regex.as_ref(), req.server_assignor.as_ref()];
        let names = req.subscribed_topic_names.iter().flatten().map(|t| &t.0);
        if fields.into_iter().flatten().chain(names).any(|f| f.len() > MAX_FIELD_BYTES) {
            return self.reply(r, &hb_error(error::INVALID_REQUEST, &format!("an id, pattern or topic name is longer than {MAX_FIELD_BYTES} bytes")));
        }
        if let Some(a) = req.server_assignor.as_ref().filter(|a| !ASSIGNORS.contains(&a.as_str())) {
            let message = format!("assignor {} is not one of {ASSIGNORS:?}", a.as_str());
            return self.reply(r, &hb_error(error::UNSUPPORTED_ASSIGNOR, &message));
        }
        tracing::debug!(group = group_id, member = req.member_id.as_str(), epoch = req.member_epoch, topics = ?req.subscribed_topic_names, regex = ?req.subscribed_topic_regex, owned = ?req.topic_partitions.as_ref().map(|t| t.len()), "ConsumerGroupHeartbeat");
        // A pattern is sent when it changes; an empty one drops the member's pattern.
        let regex = match req.subscribed_topic_regex.as_ref().map(|p| p.as_str()) {
            None => None,
            Some("") => Some(None),
            Some(p) => match compile(p) {
                Ok(re) => Some(Some((p.to_string(), re))),
                Err(e) => return self.reply(r, &hb_error(error::INVALID_REGULAR_EXPRESSION, &format!("invalid regular expression {p:?}: {e}"))),
            },
        };
        let shard = match self.lookup(&group_id) {
            Lookup::Error(code) => return self.reply(r, &hb_error(code, "not the coordinator")),
            Lookup::Here(s) => s,
        };
        let g = shard.groups.entry(group_id.clone()).or_insert_with(|| Group::new(&group_id, now));
        if g.state == State::Dead {
            return self.reply(r, &hb_error(error::COORDINATOR_NOT_AVAILABLE, "the group is being deleted"));
        }
        if g.consumer.is_none() {
            if !g.members.is_empty() || g.state != State::Empty {
                return self.reply(r, &hb_error(error::GROUP_ID_NOT_FOUND, "the group is a classic group with members"));
            }
            // An empty (or new) group becomes a consumer-protocol group; its offsets stay.
            g.consumer = Some(ConsumerGroup { assignor: "uniform".into(), incarnation, ..Default::default() });
            g.protocol_type = Some("consumer".into());
        }
        g.state_timestamp = now.wall_ms;
        let cg = g.consumer.as_mut().expect("set above");
        let mut member_id = req.member_id.to_string();
        let epoch = req.member_epoch;
        let (mut continued, mut returned) = (false, false);
        if epoch == -1 || epoch == LEFT_STATIC {
            let instance = req.instance_id.as_ref().map(|i| i.as_str());
            match cg.members.get_mut(&member_id) {
                None => return self.reply(r, &hb_error(error::UNKNOWN_MEMBER_ID, "unknown member id")),
                Some(m) if instance.is_some() && m.instance_id.as_deref() != instance => {
                    return self.reply(r, &hb_error(error::FENCED_INSTANCE_ID, "the instance id belongs to another member"));
                }
                // Already left (a retried leave): nothing changes.
                Some(m) if m.epoch == LEFT_STATIC => {}
                // A static member leaving for a while keeps its place and assignment until its
                // session times out; its return under the same instance id takes them over.
                Some(m) if epoch == LEFT_STATIC && m.instance_id.is_some() => {
                    // `previous_epoch` keeps the epoch it held, for its return.
                    (m.previous_epoch, m.epoch) = (m.epoch, LEFT_STATIC);
                    m.revoking.clear();
                    m.deadline_ms = now.mono_ms + session;
                }
                Some(_) => {
                    cg.members.remove(&member_id);
                    cg.target.remove(&member_id);
                    cg.group_epoch += 1;
                    refresh_target(cg, topics);
                }
            }
            let response =
                ConsumerGroupHeartbeatResponse::default().with_member_id(Some(sb(&member_id))).with_member_epoch(epoch).with_heartbeat_interval_ms(interval);
            return self.settle_and_answer(&group_id, r, response);
        }
        if epoch == 0 {
            let ((Some(_), _) | (_, Some(Some(_)))) = (req.subscribed_topic_names.as_ref(), regex.as_ref()) else {
                return self.reply(r, &hb_error(error::INVALID_REQUEST, "a joining member must send its subscription (topic names or a regular expression)"));
            };
            if member_id.is_empty() {
                member_id = uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64()).to_string();
            }
            let subscribed: BTreeSet<String> = req.subscribed_topic_names.iter().flatten().map(|t| t.to_string()).collect();
            let mut m = CMember {
                id: member_id.clone(),
                instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
                rack_id: req.rack_id.as_ref().map(|s| s.to_string()),
                client_id: r.request.client_id.clone().unwrap_or_default(),
                client_host: r.client_host.clone(),
                epoch: 0,
                previous_epoch: -1,
                subscribed,
                matched: regex.as_ref().and_then(|r| r.as_ref()).map(|(_, re)| matching(re, topics)).unwrap_or_default(),
                regex: regex.clone().flatten(),
                assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
                rebalance_timeout_ms: req.rebalance_timeout_ms.max(0),
                deadline_ms: now.mono_ms + session,
                assigned: Parts::new(),
                revoking: Parts::new(),
                revoke_deadline_ms: 0,
                restored: false,
            };
            let old = req.instance_id.as_ref().and_then(|i| cg.members.values().find(|o| o.instance_id.as_deref() == Some(i.as_str())));
            let known = cg.members.contains_key(&member_id);
            if !known && old.is_none() && (cg.encoded.len() > STATE_BUDGET_BYTES || cg.members.len() >= max_size) {
                return self.reply(r, &hb_error(error::GROUP_MAX_SIZE_REACHED, "the group has reached its maximum size"));
            }
            match old {
                // The instance id belongs to another member still in the group.
                Some(o) if o.epoch != LEFT_STATIC && o.id != member_id => {
                    let message = format!("static member {} still holds instance id {}", o.id, o.instance_id.as_deref().unwrap_or_default());
                    return self.reply(r, &hb_error(error::UNRELEASED_INSTANCE_ID, &message));
                }
                // A static member returns (under a new member id, or its old one): it takes over
                // its old place and what it owned that is still its target, with no rebalance
                // unless its subscription changed. (It released everything when it left, so
                // nothing is revoked.)
                Some(o) if o.epoch == LEFT_STATIC => {
                    let old_id = o.id.clone();
                    let o = cg.members.remove(&old_id).expect("found above");
                    if let Some(t) = cg.target.remove(&old_id) {
                        cg.target.insert(member_id.clone(), t);
                    }
                    if o.subscribed != m.subscribed || o.regex.as_ref().map(|r| &r.0) != m.regex.as_ref().map(|r| &r.0) {
                        cg.group_epoch += 1;
                    }
                    let target = cg.target.get(&member_id).cloned().unwrap_or_default();
                    (m.assigned, m.epoch) = (minus(&o.assigned, &minus(&o.assigned, &target)), o.previous_epoch.max(0));
                    cg.members.insert(member_id.clone(), m);
                    returned = true;
                }
                _ => {
                    // A rejoin after fencing starts over: whatever it had is released.
                    cg.members.insert(member_id.clone(), m);
                    cg.group_epoch += 1;
                }
            }
        } else {
            let Some(m) = cg.members.get_mut(&member_id) else {
                return self.reply(r, &hb_error(error::UNKNOWN_MEMBER_ID, "unknown member id"));
            };
            if m.epoch < 0 || (epoch != m.epoch && !(epoch == m.previous_epoch && epoch >= 0)) {
                let message = format!("member epoch {epoch} is fenced: the member's epoch is {}", m.epoch);
                return self.reply(r, &hb_error(error::FENCED_MEMBER_EPOCH, &message));
            }
            m.deadline_ms = now.mono_ms + session;
            // A member loaded after a failover carries on at its epoch.
            continued = std::mem::take(&mut m.restored);
            if req.rebalance_timeout_ms > 0 {
                m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            }
            if let Some(subscribed) = req.subscribed_topic_names.as_ref() {
                let s: BTreeSet<String> = subscribed.iter().map(|t| t.to_string()).collect();
                if s != m.subscribed {
                    m.subscribed = s;
                    cg.group_epoch += 1;
                }
            }
            if let Some(re) = regex {
                if re.as_ref().map(|r| &r.0) != m.regex.as_ref().map(|r| &r.0) {
                    m.matched = re.as_ref().map(|(_, r)| matching(r, topics)).unwrap_or_default();
                    m.regex = re;
                    cg.group_epoch += 1;
                }
            }
            if let Some(a) = req.server_assignor.as_ref() {
                m.assignor = Some(a.to_string());
            }
        }
        // What the member says it owns confirms revocations.
        let names: BTreeMap<Uuid, String> = topics.iter().map(|(n, (id, _))| (*id, n.clone())).collect();
        let owned: Option<Parts> = req.topic_partitions.as_ref().map(|tps| {
            let mut p = Parts::new();
            for tp in tps {
                if let Some(n) = names.get(&tp.topic_id) {
                    p.entry(n.clone()).or_default().extend(tp.partitions.iter().copied());
                }
            }
            p
        });
        // Subscribed topics created, deleted or grown, or matched by a pattern, move the group
        // epoch too.
        if resolve(cg, topics) | cg.track_metadata(topics) {
            cg.group_epoch += 1;
        }
        let (before, before_epoch) = (cg.members[&member_id].assigned.clone(), epoch);
        refresh_target(cg, topics);
        reconcile(cg, &member_id, owned.as_ref(), now);
        let m = &cg.members[&member_id];
        let mut response =
            ConsumerGroupHeartbeatResponse::default().with_member_id(Some(sb(&member_id))).with_member_epoch(m.epoch).with_heartbeat_interval_ms(interval);
        // A full request (a join, or after a lost answer) gets the whole assignment back.
        let subscription_sent = req.subscribed_topic_names.is_some() || req.subscribed_topic_regex.is_some();
        let full = epoch == 0 || (req.rebalance_timeout_ms != -1 && subscription_sent && req.topic_partitions.is_some());
        if full || m.assigned != before || m.epoch != before_epoch {
            response.assignment = Some(hb::Assignment::default().with_topic_partitions(to_wire(&m.assigned, topics)));
        }
        self.stats.members_continued += u64::from(continued);
        self.stats.static_returns += u64::from(returned);
        self.settle_and_answer(&group_id, r, response);
    }

    /// Write the group's state if it changed, then answer `r` once what it was taken from is
    /// durable.
    fn settle_and_answer(&mut self, group: &str, r: Responder, response: ConsumerGroupHeartbeatResponse) {
        self.settle_consumer(group);
        let Some(cg) = self.group_mut(group).and_then(|g| g.consumer.as_mut()) else { return };
        if cg.durable_seq >= cg.seq || crate::planted!("kip848-answer-before-durable") {
            return self.reply(r, &response);
        }
        let seq = cg.seq;
        cg.parked.push(Parked { responder: r, response, seq });
    }

    /// If the group's stored state changed (or its last write failed), write it.
    pub(crate) fn settle_consumer(&mut self, group: &str) {
        let Some(cg) = self.group_mut(group).and_then(|g| g.consumer.as_mut()) else { return };
        let value = super::records::encode_consumer_group(cg.group_epoch, Some(&cg.stored()));
        if value != cg.encoded {
            cg.seq += 1;
            cg.encoded = value;
        }
        if cg.written_seq >= cg.seq {
            return;
        }
        cg.written_seq = cg.seq;
        cg.in_flight += 1;
        let (seq, value, incarnation) = (cg.seq, cg.encoded.clone(), cg.incarnation);
        let key = super::records::encode_key(&super::records::Key::ConsumerGroup { group: group.to_string() });
        self.append(group, vec![(key, Some(value))], super::WriteKind::ConsumerState { group: group.to_string(), incarnation, seq });
    }

    /// A write of the group's state is uncertain (see [`Coordinator::write_uncertain`]): the
    /// answers that waited for it get `code`; it stays in flight until it commits or fails.
    pub(crate) fn consumer_state_uncertain(&mut self, group: &str, incarnation: u64, seq: u64, code: i16) {
        if self.group_mut(group).and_then(|g| g.consumer.as_ref()).is_some_and(|c| c.incarnation == incarnation) {
            self.fail_parked(group, seq, code, "the group's state is not committed yet");
        }
    }

    /// Answer the heartbeats waiting on states up to `seq` with `code`.
    fn fail_parked(&mut self, group: &str, seq: u64, code: i16, message: &str) {
        let Some(cg) = self.group_mut(group).and_then(|g| g.consumer.as_mut()) else { return };
        let (failed, later): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut cg.parked).into_iter().partition(|p| p.seq <= seq);
        cg.parked = later;
        for p in failed {
            self.reply(p.responder, &hb_error(code, message));
        }
    }

    /// A write of the group's state committed (answer what waited for it), or failed (what
    /// waited for it gets the error; the state is written again with the next change or tick).
    pub(crate) fn consumer_state_done(&mut self, group: &str, incarnation: u64, seq: u64, result: Result<(), i16>) {
        let Some(cg) = self.group_mut(group).and_then(|g| g.consumer.as_mut()).filter(|c| c.incarnation == incarnation) else { return };
        cg.in_flight = cg.in_flight.saturating_sub(1);
        match result {
            Ok(()) => {
                cg.durable_seq = cg.durable_seq.max(seq);
                let durable = cg.durable_seq;
                let (ready, later): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut cg.parked).into_iter().partition(|p| p.seq <= durable);
                cg.parked = later;
                for p in ready {
                    self.reply(p.responder, &p.response);
                }
            }
            Err(code) => self.fail_parked(group, seq, code, "the group's state could not be written"),
        }
        // With nothing in flight, what is not durable yet must be written again: at once if
        // answers wait for it, else with the next change or tick.
        let Some(cg) = self.group_mut(group).and_then(|g| g.consumer.as_mut()) else { return };
        if cg.in_flight == 0 && cg.durable_seq < cg.seq {
            cg.written_seq = cg.durable_seq;
            if !cg.parked.is_empty() {
                self.settle_consumer(group);
            }
        }
    }

    /// ConsumerGroupDescribe.
    pub fn on_consumer_describe(&mut self, r: Responder, req: ConsumerGroupDescribeRequest, topics: &Topics) {
        let mut response = ConsumerGroupDescribeResponse::default();
        for id in &req.group_ids {
            let mut d = describe::DescribedGroup::default().with_group_id(id.clone()).with_authorized_operations(i32::MIN);
            match self.lookup(id.as_str()) {
                Lookup::Error(code) => d.error_code = code,
                Lookup::Here(s) => match s.groups.get(id.as_str()).and_then(|g| g.consumer.as_ref()) {
                    None => {
                        d.error_code = error::GROUP_ID_NOT_FOUND;
                        d.error_message = Some(sb(&format!("Group {} is not a consumer group.", id.as_str())));
                        d.group_state = sb("Dead");
                    }
                    Some(cg) => {
                        d.group_state = sb(cg.state());
                        d.group_epoch = cg.group_epoch;
                        d.assignment_epoch = cg.assignment_epoch;
                        d.assignor_name = sb(&cg.assignor);
                        let wire = |parts: &Parts| {
                            describe::Assignment::default().with_topic_partitions(
                                parts
                                    .iter()
                                    .filter_map(|(t, ps)| {
                                        topics.get(t).map(|(tid, _)| {
                                            describe::TopicPartitions::default()
                                                .with_topic_id(*tid)
                                                .with_topic_name(TopicName(sb(t)))
                                                .with_partitions(ps.iter().copied().collect())
                                        })
                                    })
                                    .collect(),
                            )
                        };
                        d.members = cg
                            .members
                            .values()
                            .map(|m| {
                                describe::Member::default()
                                    .with_member_id(sb(&m.id))
                                    .with_instance_id(m.instance_id.as_deref().map(sb))
                                    .with_rack_id(m.rack_id.as_deref().map(sb))
                                    .with_member_epoch(m.epoch)
                                    .with_client_id(sb(&m.client_id))
                                    .with_client_host(sb(&m.client_host))
                                    .with_subscribed_topic_names(m.subscribed.iter().map(|t| TopicName(sb(t))).collect())
                                    .with_subscribed_topic_regex(m.regex.as_ref().map(|(p, _)| sb(p)))
                                    .with_assignment(wire(&m.assigned))
                                    .with_target_assignment(wire(cg.target.get(&m.id).unwrap_or(&Parts::new())))
                                    .with_member_type(1)
                            })
                            .collect();
                    }
                },
            }
            response.groups.push(d);
        }
        self.reply(r, &response);
    }

    /// Expire consumer-protocol members that stopped heartbeating or did not revoke in time,
    /// follow topic changes, and write again a state whose last write failed.
    pub(crate) fn tick_consumer_group(&mut self, group: &str, topics: &Topics, now: Now) {
        let Some(cg) = self.group_mut(group).and_then(|g| g.consumer.as_mut()) else { return };
        let mut changed = false;
        if (resolve(cg, topics) | cg.track_metadata(topics)) && !cg.members.is_empty() {
            cg.group_epoch += 1;
            changed = true;
        }
        let gone: Vec<String> = cg
            .members
            .values()
            .filter(|m| m.deadline_ms <= now.mono_ms || (!m.revoking.is_empty() && m.revoke_deadline_ms <= now.mono_ms))
            .map(|m| m.id.clone())
            .collect();
        for id in &gone {
            tracing::debug!(group, member = id, "consumer group member expired");
            cg.members.remove(id);
            cg.target.remove(id);
        }
        if !gone.is_empty() {
            cg.group_epoch += 1;
            changed = true;
        }
        refresh_target(cg, topics);
        if changed || (cg.in_flight == 0 && cg.written_seq < cg.seq) {
            self.settle_consumer(group);
        }
    }
}

/// Recompute the target assignment if the group epoch moved past it.
fn refresh_target(cg: &mut ConsumerGroup, topics: &Topics) {
    if cg.assignment_epoch >= cg.group_epoch {
        return;
    }
    // The assignor most members ask for (the default if none).
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for m in cg.members.values() {
        if let Some(a) = &m.assignor {
            *votes.entry(a.as_str()).or_default() += 1;
        }
    }
    cg.assignor = votes.into_iter().max_by_key(|(_, n)| *n).map_or("uniform", |(a, _)| a).to_string();
    let input: BTreeMap<String, (BTreeSet<String>, Parts)> = cg.members.values().map(|m| (m.id.clone(), (m.subscription(), m.assigned.clone()))).collect();
    cg.target = assign(&cg.assignor, &input, topics);
    if crate::planted!("assignment-misrouted") && cg.target.len() > 1 {
        let first = cg.target.values().next().cloned().unwrap_or_default();
        if let Some(second) = cg.target.values_mut().nth(1) {
            *second = union(second, &first);
        }
    }
    cg.assignment_epoch = cg.group_epoch;
}

/// Move `member` toward its target: revoke first, then (at the new epoch) add what is free.
fn reconcile(cg: &mut ConsumerGroup, member: &str, owned: Option<&Parts>, now: Now) {
    let target = cg.target.get(member).cloned().unwrap_or_default();
    // Partitions held (assigned or being revoked) by the other members.
    let mut held = Parts::new();
    for m in cg.members.values().filter(|m| m.id != member) {
        held = union(&held, &union(&m.assigned, &m.revoking));
    }
    let assignment_epoch = cg.assignment_epoch;
    let m = cg.members.get_mut(member).expect("member");
    if !m.revoking.is_empty() {
        let confirmed = owned.is_some_and(|o| minus(&m.revoking, &minus(&m.revoking, o)).is_empty());
        if !confirmed {
            return;
        }
        m.revoking.clear();
    }
    let take = minus(&m.assigned, &target);
    if !take.is_empty() {
        m.assigned = minus(&m.assigned, &take);
        m.revoking = take;
        m.revoke_deadline_ms = now.mono_ms + m.rebalance_timeout_ms.max(1) as u64;
        return;
    }
    if m.epoch < assignment_epoch {
        m.previous_epoch = m.epoch;
        m.epoch = assignment_epoch;
    }
    let add = minus(&minus(&target, &m.assigned), &held);
    if !add.is_empty() {
        m.assigned = union(&m.assigned, &add);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(t: &str, ps: &[i32]) -> Parts {
        let mut p = Parts::new();
        p.insert(t.to_string(), ps.iter().copied().collect());
        p
    }

    #[test]
    fn assignors_cover_every_partition_once() {
        let topics: Topics = [("a".to_string(), (Uuid::nil(), 6)), ("b".to_string(), (Uuid::nil(), 3))].into_iter().collect();
        let subs: BTreeSet<String> = ["a".to_string(), "b".to_string()].into_iter().collect();
        let members: BTreeMap<String, (BTreeSet<String>, Parts)> =
            ["m1", "m2", "m3", "m4"].iter().map(|m| (m.to_string(), (subs.clone(), Parts::new()))).collect();
        for assignor in ASSIGNORS {
            let out = assign(assignor, &members, &topics);
            let mut seen = BTreeSet::new();
            for parts in out.values() {
                for (t, ps) in parts {
                    for p in ps {
                        assert!(seen.insert((t.clone(), *p)), "{assignor}: {t}-{p} twice");
                    }
                }
            }
            assert_eq!(seen.len(), 9, "{assignor}: every partition assigned");
            let sizes: Vec<usize> = out.values().map(|p| p.values().map(|s| s.len()).sum()).collect();
            if *assignor == "uniform" {
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "uniform is balanced: {sizes:?}");
            }
        }
    }

    #[test]
    fn uniform_is_sticky() {
        let topics: Topics = [("a".to_string(), (Uuid::nil(), 4))].into_iter().collect();
        let subs: BTreeSet<String> = ["a".to_string()].into_iter().collect();
        let mut members: BTreeMap<String, (BTreeSet<String>, Parts)> = BTreeMap::new();
        members.insert("x".into(), (subs.clone(), parts("a", &[0, 1, 2, 3])));
        members.insert("y".into(), (subs, Parts::new()));
        let out = assign("uniform", &members, &topics);
        assert_eq!(out["x"], parts("a", &[0, 1]), "x keeps what it can");
        assert_eq!(out["y"], parts("a", &[2, 3]));
    }

    /// A partition moves only after its old owner confirmed the revocation.
    #[test]
    fn revocation_before_assignment() {
        let now = Now { mono_ms: 0, wall_ms: 0 };
        let topics: Topics = [("a".to_string(), (Uuid::nil(), 2))].into_iter().collect();
        let member = |id: &str| CMember {
            id: id.into(),
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            epoch: 0,
            previous_epoch: -1,
            subscribed: ["a".to_string()].into_iter().collect(),
            regex: None,
            matched: BTreeSet::new(),
            assignor: None,
            rebalance_timeout_ms: 1000,
            deadline_ms: u64::MAX,
            assigned: Parts::new(),
            revoking: Parts::new(),
            revoke_deadline_ms: 0,
            restored: false,
        };
        let mut cg = ConsumerGroup { assignor: "uniform".into(), ..Default::default() };
        cg.members.insert("x".into(), member("x"));
        cg.group_epoch = 1;
        refresh_target(&mut cg, &topics);
        reconcile(&mut cg, "x", None, now);
        assert_eq!(cg.members["x"].assigned, parts("a", &[0, 1]));
        cg.members.insert("y".into(), member("y"));
        cg.group_epoch = 2;
        refresh_target(&mut cg, &topics);
        reconcile(&mut cg, "y", None, now);
        assert!(cg.members["y"].assigned.is_empty(), "x still owns everything");
        reconcile(&mut cg, "x", Some(&parts("a", &[0, 1])), now);
        assert_eq!((cg.members["x"].assigned.clone(), cg.members["x"].revoking.clone()), (parts("a", &[0]), parts("a", &[1])));
        reconcile(&mut cg, "y", None, now);
        assert!(cg.members["y"].assigned.is_empty(), "partition 1 is still being revoked");
        reconcile(&mut cg, "x", Some(&parts("a", &[0])), now);
        assert!(cg.members["x"].revoking.is_empty());
        assert_eq!(cg.members["x"].epoch, 2);
        reconcile(&mut cg, "y", None, now);
        assert_eq!(cg.members["y"].assigned, parts("a", &[1]));
        assert_eq!(cg.members["y"].epoch, 2);
    }
}
