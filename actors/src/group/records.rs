//! The records group coordinators keep in `__consumer_offsets`, in Kafka's own layout so Kafka's
//! tools can read a runnel log and the other way round.
//!
//! Every key starts with an `i16` schema version: 0 and 1 name a committed offset
//! (group, topic, partition), 2 names a group's metadata (group), 3 a KIP-848 group's epoch
//! (group). A record without a value (a tombstone) deletes what its key names. Values start with
//! their own `i16` version; runnel writes version 3 of offsets and group metadata and reads
//! versions 0–3, and version 0 of the epoch record, whose membership rides in a tagged field. Strings are `i16`-length-prefixed, nullable
//! strings use length -1, byte fields are `i32`-length-prefixed, arrays `i32`-count-prefixed.
//!
//! Decoding never trusts a length: a record that does not parse is skipped by the loader (and
//! logged), never a reason to allocate or panic.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// What a `__consumer_offsets` key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A committed offset.
    Offset {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// A group's membership and generation.
    Group {
        /// Group.
        group: String,
    },
    /// A KIP-848 consumer group's epoch (Kafka's ConsumerGroupMetadata record), with runnel's
    /// record of its members in a tagged field.
    ConsumerGroup {
        /// Group.
        group: String,
    },
}

/// A committed offset as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    /// The next offset the group will read.
    pub offset: i64,
    /// The leader epoch of the record before `offset` (-1 if unknown).
    pub leader_epoch: i32,
    /// Client metadata.
    pub metadata: String,
    /// Wall-clock time of the commit (ms).
    pub commit_timestamp: i64,
}

/// One member as stored in a group record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberValue {
    /// Member id.
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Rebalance timeout (ms).
    pub rebalance_timeout_ms: i32,
    /// Session timeout (ms).
    pub session_timeout_ms: i32,
    /// The member's metadata for the chosen protocol.
    pub subscription: Bytes,
    /// The member's assignment.
    pub assignment: Bytes,
}

/// A group's metadata as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupValue {
    /// Protocol type (`consumer`, `connect`, ...); empty for a group that only stores offsets.
    pub protocol_type: String,
    /// Generation.
    pub generation: i32,
    /// Chosen protocol (assignor).
    pub protocol: Option<String>,
    /// Leader member id.
    pub leader: Option<String>,
    /// Wall-clock time of the last state change (ms).
    pub state_timestamp: i64,
    /// Members with their assignments.
    pub members: Vec<MemberValue>,
}

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(i16::MAX as usize)];
    b.put_i16(s.len() as i16);
    b.put_slice(s);
}

fn put_opt_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.put_slice(v);
}

/// Encode a key.
pub fn encode_key(key: &Key) -> Bytes {
    let mut b = BytesMut::new();
    match key {
        Key::Offset { group, topic, partition } => {
            b.put_i16(1);
            put_str(&mut b, group);
            put_str(&mut b, topic);
            b.put_i32(*partition);
        }
        Key::Group { group } => {
            b.put_i16(2);
            put_str(&mut b, group);
        }
        Key::ConsumerGroup { group } => {
            b.put_i16(3);
            put_str(&mut b, group);
        }
    }
    b.freeze()
}

/// The tagged field of a ConsumerGroupMetadataValue that carries runnel's [`ConsumerState`].
/// Kafka's readers skip tagged fields they do not know, so they still read the group's epoch.
pub const CONSUMER_STATE_TAG: u32 = 10_000;

/// Partitions by topic name.
pub type Parts = BTreeMap<String, BTreeSet<i32>>;

/// A KIP-848 group's membership as runnel stores it: the whole group in one record, so a write
/// is atomic and the latest record alone is the group (Kafka spreads the same facts over its
/// member, target-assignment and current-assignment records, types 5–8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerState {
    /// The group epoch the target assignment was computed at.
    pub assignment_epoch: i32,
    /// The assignor of the target assignment.
    pub assignor: String,
    /// The subscribed topics' (name, id, partition count) when the target was computed.
    pub topics: Vec<(String, Uuid, i32)>,
    /// The members.
    pub members: Vec<ConsumerMemberValue>,
}

/// One KIP-848 member as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerMemberValue {
    /// Member id.
    pub id: String,
    /// `group.instance.id` of a static member.
    pub instance_id: Option<String>,
    /// Rack.
    pub rack_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Member epoch (-2: a static member that left and may come back).
    pub epoch: i32,
    /// The member epoch before the last bump.
    pub previous_epoch: i32,
    /// Subscribed topic names.
    pub subscribed: BTreeSet<String>,
    /// Subscribed regular expression (KIP-848).
    pub regex: Option<String>,
    /// The topics `regex` matched.
    pub matched: BTreeSet<String>,
    /// The assignor the member asked for.
    pub assignor: Option<String>,
    /// Rebalance timeout (ms).
    pub rebalance_timeout_ms: i32,
    /// What the member was told it owns.
    pub assigned: Parts,
    /// What it was told to give up and has not confirmed.
    pub revoking: Parts,
    /// Its target assignment.
    pub target: Parts,
}

fn put_uvarint(b: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        b.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn put_parts(b: &mut BytesMut, parts: &Parts) {
    b.put_i32(parts.len() as i32);
    for (t, ps) in parts {
        put_str(b, t);
        b.put_i32(ps.len() as i32);
        for p in ps {
            b.put_i32(*p);
        }
    }
}

fn put_state(b: &mut BytesMut, s: &ConsumerState) {
    b.put_i32(s.assignment_epoch);
    put_str(b, &s.assignor);
    b.put_i32(s.topics.len() as i32);
    for (name, id, n) in &s.topics {
        put_str(b, name);
        b.put_slice(id.as_bytes());
        b.put_i32(*n);
    }
    b.put_i32(s.members.len() as i32);
    for m in &s.members {
        put_str(b, &m.id);
        put_opt_str(b, m.instance_id.as_deref());
        put_opt_str(b, m.rack_id.as_deref());
        put_str(b, &m.client_id);
        put_str(b, &m.client_host);
        b.put_i32(m.epoch);
        b.put_i32(m.previous_epoch);
        b.put_i32(m.subscribed.len() as i32);
        for t in &m.subscribed {
            put_str(b, t);
        }
        put_opt_str(b, m.assignor.as_deref());
        b.put_i32(m.rebalance_timeout_ms);
        put_parts(b, &m.assigned);
        put_parts(b, &m.revoking);
        put_parts(b, &m.target);
        put_opt_str(b, m.regex.as_deref());
        b.put_i32(m.matched.len() as i32);
        for t in &m.matched {
            put_str(b, t);
        }
    }
}

/// Encode a consumer group's epoch as Kafka's ConsumerGroupMetadataValue v0 (a flexible version:
/// the epoch, then tagged fields), with the membership in tagged field [`CONSUMER_STATE_TAG`].
pub fn encode_consumer_group(epoch: i32, state: Option<&ConsumerState>) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(epoch);
    match state {
        None => b.put_u8(0),
        Some(s) => {
            let mut body = BytesMut::new();
            put_state(&mut body, s);
            put_uvarint(&mut b, 1);
            put_uvarint(&mut b, CONSUMER_STATE_TAG);
            put_uvarint(&mut b, body.len() as u32);
            b.put_slice(&body);
        }
    }
    b.freeze()
}

/// Decode a consumer group's epoch and, if the record carries it, its membership. A record
/// without tagged fields (Kafka's, or runnel's before it kept members) has no membership.
pub fn decode_consumer_group(b: &[u8]) -> Option<(i32, Option<ConsumerState>)> {
    let mut r = Reader { b, at: 0 };
    (r.i16()? == 0).then_some(())?;
    let epoch = r.i32()?;
    if r.at == b.len() {
        return Some((epoch, None));
    }
    let mut state = None;
    for _ in 0..r.uvarint()? {
        let tag = r.uvarint()?;
        let size = r.uvarint()? as usize;
        let field = r.take(size)?;
        if tag == CONSUMER_STATE_TAG {
            let mut f = Reader { b: field, at: 0 };
            state = Some(f.state()?);
            (f.at == field.len()).then_some(())?;
        }
    }
    Some((epoch, state))
}

/// Encode an offset value (version 3).
pub fn encode_offset(v: &OffsetValue) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(3);
    b.put_i64(v.offset);
    b.put_i32(v.leader_epoch);
    put_str(&mut b, &v.metadata);
    b.put_i64(v.commit_timestamp);
    b.freeze()
}

/// Encode a group value (version 3).
pub fn encode_group(v: &GroupValue) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(3);
    put_str(&mut b, &v.protocol_type);
    b.put_i32(v.generation);
    put_opt_str(&mut b, v.protocol.as_deref());
    put_opt_str(&mut b, v.leader.as_deref());
    b.put_i64(v.state_timestamp);
    b.put_i32(v.members.len() as i32);
    for m in &v.members {
        put_str(&mut b, &m.member_id);
        put_opt_str(&mut b, m.instance_id.as_deref());
        put_str(&mut b, &m.client_id);
        put_str(&mut b, &m.client_host);
        b.put_i32(m.rebalance_timeout_ms);
        b.put_i32(m.session_timeout_ms);
        put_bytes(&mut b, &m.subscription);
        put_bytes(&mut b, &m.assignment);
    }
    b.freeze()
}

/// A bounds-checked reader.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        let n = self.i16()?;
        if n < 0 {
            return Some(None);
        }
        Some(Some(String::from_utf8(self.take(n as usize)?.to_vec()).ok()?))
    }
    fn str(&mut self) -> Option<String> {
        self.opt_str()?
    }
    fn uvarint(&mut self) -> Option<u32> {
        let mut v: u32 = 0;
        for shift in (0..35).step_by(7) {
            let byte = *self.take(1)?.first()?;
            v |= u32::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// A count, bounded by what is left to read (each element takes at least `min` bytes).
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = usize::try_from(self.i32()?).ok()?;
        (n.checked_mul(min)? <= self.b.len() - self.at).then_some(n)
    }
    fn parts(&mut self) -> Option<Parts> {
        let mut out = Parts::new();
        for _ in 0..self.count(6)? {
            let t = self.str()?;
            let mut ps = BTreeSet::new();
            for _ in 0..self.count(4)? {
                ps.insert(self.i32()?);
            }
            out.insert(t, ps);
        }
        Some(out)
    }
    fn state(&mut self) -> Option<ConsumerState> {
        let assignment_epoch = self.i32()?;
        let assignor = self.str()?;
        let mut topics = Vec::new();
        for _ in 0..self.count(22)? {
            let name = self.str()?;
            let id = Uuid::from_slice(self.take(16)?).ok()?;
            topics.push((name, id, self.i32()?));
        }
        let mut members = Vec::new();
        for _ in 0..self.count(46)? {
            let id = self.str()?;
            let instance_id = self.opt_str()?;
            let rack_id = self.opt_str()?;
            let client_id = self.str()?;
            let client_host = self.str()?;
            let epoch = self.i32()?;
            let previous_epoch = self.i32()?;
            let mut subscribed = BTreeSet::new();
            for _ in 0..self.count(2)? {
                subscribed.insert(self.str()?);
            }
            let assignor = self.opt_str()?;
            let rebalance_timeout_ms = self.i32()?;
            let (assigned, revoking, target) = (self.parts()?, self.parts()?, self.parts()?);
            let regex = self.opt_str()?;
            let mut matched = BTreeSet::new();
            for _ in 0..self.count(2)? {
                matched.insert(self.str()?);
            }
            members.push(ConsumerMemberValue {
                id,
                instance_id,
                rack_id,
                client_id,
                client_host,
                epoch,
                previous_epoch,
                subscribed,
                assignor,
                rebalance_timeout_ms,
                assigned,
                revoking,
                target,
                regex,
                matched,
            });
        }
        Some(ConsumerState { assignment_epoch, assignor, topics, members })
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.i32()?;
        if n < 0 {
            return Some(Bytes::new());
        }
        Some(Bytes::copy_from_slice(self.take(n as usize)?))
    }
}

/// Decode a key; `None` if it is not one of the known layouts.
pub fn decode_key(b: &[u8]) -> Option<Key> {
    let mut r = Reader { b, at: 0 };
    match r.i16()? {
        0 | 1 => Some(Key::Offset { group: r.str()?, topic: r.str()?, partition: r.i32()? }),
        2 => Some(Key::Group { group: r.str()? }),
        3 => Some(Key::ConsumerGroup { group: r.str()? }),
        _ => None,
    }
}

/// Decode an offset value, versions 0–3.
pub fn decode_offset(b: &[u8]) -> Option<OffsetValue> {
    let mut r = Reader { b, at: 0 };
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return None;
    }
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.str()?;
    let commit_timestamp = r.i64()?;
    if version == 1 {
        r.i64()?; // expire timestamp, superseded by offsets.retention.minutes (KIP-211)
    }
    Some(OffsetValue { offset, leader_epoch, metadata, commit_timestamp })
}

/// Decode a group value, versions 0–3.
pub fn decode_group(b: &[u8]) -> Option<GroupValue> {
    let mut r = Reader { b, at: 0 };
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return None;
    }
    let protocol_type = r.str()?;
    let generation = r.i32()?;
    let protocol = r.opt_str()?;
    let leader = r.opt_str()?;
    let state_timestamp = if version >= 2 { r.i64()? } else { -1 };
    let count = r.i32()?;
    let mut members = Vec::new();
    for _ in 0..count.max(0) {
        let member_id = r.str()?;
        let instance_id = if version >= 3 { r.opt_str()? } else { None };
        let client_id = r.str()?;
        let client_host = r.str()?;
        let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { -1 };
        let session_timeout_ms = r.i32()?;
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        members.push(MemberValue { member_id, instance_id, client_id, client_host, rebalance_timeout_ms, session_timeout_ms, subscription, assignment });
    }
    Some(GroupValue { protocol_type, generation, protocol, leader, state_timestamp, members })
}

/// Kafka's group-to-partition mapping: `Utils.abs` of Java's `String.hashCode` of the id (the
/// absolute value, 0 for `i32::MIN`), modulo the partition count — so a group lands on the
/// partition a Kafka cluster would use.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in key.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(unit as i32);
    }
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let k = Key::Offset { group: "g".into(), topic: "t".into(), partition: 7 };
        assert_eq!(decode_key(&encode_key(&k)), Some(k));
        let k = Key::Group { group: "grp".into() };
        assert_eq!(decode_key(&encode_key(&k)), Some(k));
        let o = OffsetValue { offset: 42, leader_epoch: 3, metadata: "m".into(), commit_timestamp: 99 };
        assert_eq!(decode_offset(&encode_offset(&o)), Some(o));
        let g = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("a".into()),
            state_timestamp: 10,
            members: vec![MemberValue {
                member_id: "a".into(),
                instance_id: Some("i".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 45_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        assert_eq!(decode_group(&encode_group(&g)), Some(g));
    }

    fn consumer_state() -> ConsumerState {
        let parts = |t: &str, ps: &[i32]| -> Parts { [(t.to_string(), ps.iter().copied().collect())].into_iter().collect() };
        ConsumerState {
            assignment_epoch: 7,
            assignor: "uniform".into(),
            topics: vec![("t".into(), Uuid::from_u64_pair(1, 2), 6)],
            members: vec![ConsumerMemberValue {
                id: "m1".into(),
                instance_id: Some("i1".into()),
                rack_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                epoch: 7,
                previous_epoch: 5,
                subscribed: ["t".to_string()].into_iter().collect(),
                assignor: Some("range".into()),
                rebalance_timeout_ms: 300_000,
                assigned: parts("t", &[0, 1]),
                revoking: parts("t", &[2]),
                target: parts("t", &[0, 1, 3]),
                regex: Some("t.*".into()),
                matched: ["t".to_string(), "tt".to_string()].into_iter().collect(),
            }],
        }
    }

    /// The epoch record carries the membership in a tagged field; one without it (Kafka's own
    /// v0) still reads, and every cut of the encoding is refused, never a panic.
    #[test]
    fn consumer_group_record() {
        let state = consumer_state();
        let v = encode_consumer_group(9, Some(&state));
        assert_eq!(decode_consumer_group(&v), Some((9, Some(state))));
        assert_eq!(decode_consumer_group(&encode_consumer_group(4, None)), Some((4, None)));
        // Kafka's layout: version 0, the epoch, an empty tagged-field section.
        assert_eq!(&encode_consumer_group(4, None)[..], &[0, 0, 0, 0, 0, 4, 0]);
        for cut in 7..v.len() {
            assert_eq!(decode_consumer_group(&v[..cut]), None, "cut at {cut}");
        }
        // An unknown tagged field is skipped, as Kafka's readers skip runnel's.
        let mut other = vec![0, 0, 0, 0, 0, 3, 1, 5, 2, 0xaa, 0xbb];
        assert_eq!(decode_consumer_group(&other), Some((3, None)));
        // A hostile member count is refused without allocating.
        other = v.to_vec();
        let at = other.len() - state_len_tail();
        other[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode_consumer_group(&other), None);
    }

    /// Bytes from the member count to the end of the encoding of `consumer_state()`.
    fn state_len_tail() -> usize {
        let mut b = BytesMut::new();
        put_state(&mut b, &ConsumerState { members: consumer_state().members, ..Default::default() });
        let mut empty = BytesMut::new();
        put_state(&mut empty, &ConsumerState::default());
        b.len() - empty.len() + 4
    }

    /// Every prefix of a valid encoding and a hostile count decode to `None`, never a panic.
    #[test]
    fn hostile_input() {
        let g = encode_group(&GroupValue {
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: None,
            leader: None,
            state_timestamp: 0,
            members: vec![MemberValue {
                member_id: "m".into(),
                instance_id: None,
                client_id: "c".into(),
                client_host: "h".into(),
                rebalance_timeout_ms: 1,
                session_timeout_ms: 1,
                subscription: Bytes::new(),
                assignment: Bytes::new(),
            }],
        });
        for cut in 0..g.len() {
            assert_eq!(decode_group(&g[..cut]), None);
        }
        let mut giant = g.to_vec();
        // version, "consumer", generation, null protocol, null leader, timestamp: the count follows.
        let at = 2 + 2 + 8 + 4 + 2 + 2 + 8;
        assert_eq!(&giant[at..at + 4], &1i32.to_be_bytes());
        giant[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode_group(&giant), None);
        assert_eq!(decode_key(&[0, 9]), None);
    }

    /// The mapping matches Java's `String.hashCode` (values computed with the JDK's definition).
    #[test]
    fn java_hash_partitioning() {
        // "abc".hashCode() == 96354; "" hashes to 0.
        assert_eq!(partition_for("abc", 50), 96354 % 50);
        assert_eq!(partition_for("", 50), 0);
        // A hash that overflows: "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        // A negative hash takes its absolute value: "my-group".hashCode() == -1906497762.
        assert_eq!(partition_for("my-group", 50), 1_906_497_762 % 50);
    }
}
