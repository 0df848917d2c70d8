//! The records group coordinators keep in `__consumer_offsets`, in Kafka's own layout so Kafka's
//! tools can read a runnel log and the other way round.
//!
//! Every key starts with an `i16` schema version: 0 and 1 name a committed offset
//! (group, topic, partition), 2 names a group's metadata (group). A record without a value (a
//! tombstone) deletes what its key names. Values start with their own `i16` version; runnel writes
//! version 3 of both values and reads versions 0–3. Strings are `i16`-length-prefixed, nullable
//! strings use length -1, byte fields are `i32`-length-prefixed, arrays `i32`-count-prefixed.
//!
//! Decoding never trusts a length: a record that does not parse is skipped by the loader (and
//! logged), never a reason to allocate or panic.

use bytes::{BufMut, Bytes, BytesMut};

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
    /// A KIP-848 consumer group's epoch (Kafka's ConsumerGroupMetadata record).
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

/// Encode a consumer group's epoch (ConsumerGroupMetadataValue v0: the epoch, no tagged fields).
pub fn encode_consumer_group(epoch: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(epoch);
    b.put_u8(0);
    b.freeze()
}

/// Decode a consumer group's epoch.
pub fn decode_consumer_group(b: &[u8]) -> Option<i32> {
    let mut r = Reader { b, at: 0 };
    (r.i16()? == 0).then_some(())?;
    r.i32()
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
