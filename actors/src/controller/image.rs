//! The cluster metadata: the records of the `__cluster_metadata` log and the image they build.
//!
//! Every voter applies committed records to its own [`MetadataImage`]; brokers fetch the same
//! records from the active controller and apply them with the same code, so every node's view is
//! a prefix of one history. Records carry whole new states (a partition's replicas, ISR, leader
//! and epochs), never deltas, so applying one is a plain replacement and cannot drift.
//!
//! Invariants kept by the controller (checked by [`MetadataImage::check`]): a partition's leader
//! is `-1` or one of its ISR; the ISR is a non-empty subset of the replicas; leader epochs and
//! partition epochs only grow.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// No leader (Kafka's `-1`).
pub const NO_LEADER: i32 = -1;

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    /// `node.id`.
    pub id: i32,
    /// Broker epoch: the metadata offset of its latest registration.
    pub epoch: i64,
    /// Differs on every process start of the broker.
    pub incarnation: u64,
    /// Kafka listener host advertised to clients.
    pub host: String,
    /// Kafka listener port.
    pub port: i32,
    /// Node-to-node listener (`host:port`) other nodes dial.
    pub peer: String,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// Fenced brokers lead nothing and are in no ISR.
    pub fenced: bool,
    /// In controlled shutdown: leads nothing, is not chosen as a leader.
    pub shutting_down: bool,
}

/// One partition's replication state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Assigned replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// Leader broker, or [`NO_LEADER`].
    pub leader: i32,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// Bumped on every change of this record.
    pub partition_epoch: i32,
    /// Replicas being added by a reassignment (not yet in `replicas`' final set).
    pub adding: Vec<i32>,
    /// Replicas being removed by a reassignment.
    pub removing: Vec<i32>,
}

impl PartitionInfo {
    /// A new partition led by its first replica.
    pub fn new(replicas: Vec<i32>) -> Self {
        PartitionInfo { leader: replicas[0], isr: replicas.clone(), replicas, leader_epoch: 0, partition_epoch: 0, adding: Vec::new(), removing: Vec::new() }
    }
}

/// A topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Topic id (a UUID's bits).
    pub id: u128,
    /// Partitions by index.
    pub partitions: Vec<PartitionInfo>,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
}

/// One record of the metadata log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker (re-)registered; it starts fenced.
    RegisterBroker(BrokerInfo),
    /// A broker is fenced or unfenced.
    FenceBroker {
        /// Broker.
        id: i32,
        /// Its epoch (a stale epoch's record is ignored).
        epoch: i64,
        /// Fenced or not.
        fenced: bool,
    },
    /// A broker began a controlled shutdown.
    ShutdownBroker {
        /// Broker.
        id: i32,
        /// Its epoch.
        epoch: i64,
    },
    /// A topic was created.
    CreateTopic {
        /// Name.
        name: String,
        /// Id.
        id: u128,
        /// Partitions.
        partitions: Vec<PartitionInfo>,
        /// Config overrides.
        configs: BTreeMap<String, String>,
    },
    /// Partitions were added to a topic.
    AddPartitions {
        /// Topic.
        name: String,
        /// The new partitions, appended in order.
        partitions: Vec<PartitionInfo>,
    },
    /// A partition's new state (leader, ISR, replicas, epochs).
    ChangePartition {
        /// Topic.
        topic: String,
        /// Partition index.
        index: i32,
        /// The whole new state.
        info: PartitionInfo,
    },
    /// A topic was deleted.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// A topic's config overrides, replaced whole.
    TopicConfig {
        /// Topic.
        name: String,
        /// New overrides.
        configs: BTreeMap<String, String>,
    },
    /// Dynamic broker-level defaults, replaced whole.
    BrokerConfig {
        /// New defaults (topic config keys).
        configs: BTreeMap<String, String>,
    },
    /// A block of producer ids was handed out: ids below `next` are taken.
    ProducerIds {
        /// First id not yet handed out.
        next: i64,
    },
}

/// The state the metadata log builds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// Raft index of the last applied entry.
    pub offset: u64,
    /// Registered brokers.
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicInfo>,
    /// Dynamic broker-level topic defaults.
    pub dynamic_broker: BTreeMap<String, String>,
    /// First producer id not yet handed out.
    pub next_producer_id: i64,
}

impl MetadataImage {
    /// Apply one committed record at `offset`.
    pub fn apply(&mut self, offset: u64, record: &MetadataRecord) {
        self.offset = self.offset.max(offset);
        match record {
            MetadataRecord::RegisterBroker(b) => {
                self.brokers.insert(b.id, b.clone());
            }
            MetadataRecord::FenceBroker { id, epoch, fenced } => {
                if let Some(b) = self.brokers.get_mut(id).filter(|b| b.epoch == *epoch) {
                    b.fenced = *fenced;
                    if !*fenced {
                        b.shutting_down = false;
                    }
                }
            }
            MetadataRecord::ShutdownBroker { id, epoch } => {
                if let Some(b) = self.brokers.get_mut(id).filter(|b| b.epoch == *epoch) {
                    b.shutting_down = true;
                }
            }
            MetadataRecord::CreateTopic { name, id, partitions, configs } => {
                self.topics.insert(name.clone(), TopicInfo { id: *id, partitions: partitions.clone(), configs: configs.clone() });
            }
            MetadataRecord::AddPartitions { name, partitions } => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.partitions.extend(partitions.iter().cloned());
                }
            }
            MetadataRecord::ChangePartition { topic, index, info } => {
                if let Some(p) = self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(*index as usize)) {
                    *p = info.clone();
                }
            }
            MetadataRecord::DeleteTopic { name } => {
                self.topics.remove(name);
            }
            MetadataRecord::TopicConfig { name, configs } => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.configs = configs.clone();
                }
            }
            MetadataRecord::BrokerConfig { configs } => self.dynamic_broker = configs.clone(),
            MetadataRecord::ProducerIds { next } => self.next_producer_id = self.next_producer_id.max(*next),
        }
    }

    /// A broker that may lead and be in an ISR.
    pub fn is_active(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced && !b.shutting_down)
    }

    /// Partition `index` of `topic`.
    pub fn partition(&self, topic: &str, index: i32) -> Option<&PartitionInfo> {
        self.topics.get(topic).and_then(|t| t.partitions.get(usize::try_from(index).ok()?))
    }

    /// Structural invariants; the first one broken, described.
    pub fn check(&self) -> Result<(), String> {
        for (name, t) in &self.topics {
            for (i, p) in t.partitions.iter().enumerate() {
                if p.isr.is_empty() {
                    return Err(format!("{name}-{i}: empty ISR"));
                }
                if p.isr.iter().any(|r| !p.replicas.contains(r)) {
                    return Err(format!("{name}-{i}: ISR {:?} not within replicas {:?}", p.isr, p.replicas));
                }
                if p.leader != NO_LEADER && !p.isr.contains(&p.leader) {
                    return Err(format!("{name}-{i}: leader {} not in ISR {:?}", p.leader, p.isr));
                }
            }
        }
        Ok(())
    }

    /// Encode for a snapshot or a broker's cache file.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("the image serialises")
    }

    /// Decode what [`MetadataImage::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<MetadataImage> {
        bincode::deserialize(bytes).ok()
    }
}

/// Choose `rf` replicas for each of `count` new partitions starting at partition `first`, over
/// the active brokers: rack-aware round robin (Kafka's placement: brokers ordered by alternating
/// racks, each partition's replicas consecutive in that order from a shifting start, so leaders
/// spread and replicas of one partition land on different racks when racks allow).
pub fn place_replicas(image: &MetadataImage, count: i32, rf: usize, first: i32, start: usize) -> Result<Vec<Vec<i32>>, String> {
    let active: Vec<&BrokerInfo> = image.brokers.values().filter(|b| !b.fenced && !b.shutting_down).collect();
    if rf == 0 || rf > active.len() {
        return Err(format!(
            "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {} broker(s) are registered.",
            active.len()
        ));
    }
    // Group by rack, then interleave racks: r1b1, r2b1, r3b1, r1b2, ...
    let mut racks: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for b in &active {
        racks.entry(b.rack.as_deref().unwrap_or("")).or_default().push(b.id);
    }
    let mut order = Vec::new();
    let depth = racks.values().map(Vec::len).max().unwrap_or(0);
    for i in 0..depth {
        for ids in racks.values() {
            if let Some(id) = ids.get(i) {
                order.push(*id);
            }
        }
    }
    let n = order.len();
    let rack_of = |id: i32| image.brokers.get(&id).and_then(|b| b.rack.clone()).unwrap_or_default();
    let racks_total = racks.len();
    let mut out = Vec::new();
    for p in 0..count {
        let base = (start + (first + p) as usize) % n;
        // Followers walk the interleaved order after the leader (shifted per round, so
        // followers spread too), taking a broker on a rack not used yet while racks remain.
        let shift = ((first + p) as usize / n) % n.max(1);
        let mut replicas = vec![order[base]];
        let mut used = vec![rack_of(order[base])];
        let mut k = 1;
        while replicas.len() < rf && k < 2 * n + 1 {
            let candidate = order[(base + shift + k) % n];
            let fresh_rack = !used.contains(&rack_of(candidate)) || used.len() >= racks_total;
            if !replicas.contains(&candidate) && fresh_rack {
                replicas.push(candidate);
                used.push(rack_of(candidate));
            }
            k += 1;
        }
        // Fewer racks than replicas: fill with any brokers not chosen yet.
        for id in &order {
            if replicas.len() >= rf {
                break;
            }
            if !replicas.contains(id) {
                replicas.push(*id);
            }
        }
        out.push(replicas);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: i32, rack: &str) -> BrokerInfo {
        BrokerInfo {
            id,
            epoch: 1,
            incarnation: 1,
            host: "h".into(),
            port: 9092,
            peer: "p".into(),
            rack: Some(rack.into()),
            fenced: false,
            shutting_down: false,
        }
    }

    /// Placement uses distinct brokers per partition, spreads leaders, and spans racks.
    #[test]
    fn rack_aware_placement() {
        let mut image = MetadataImage::default();
        for (id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")] {
            image.apply(1, &MetadataRecord::RegisterBroker(broker(id, rack)));
        }
        let placed = place_replicas(&image, 12, 3, 0, 0).unwrap();
        let mut leaders = BTreeMap::new();
        for r in &placed {
            let mut d = r.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "{r:?}");
            let racks: std::collections::BTreeSet<_> = r.iter().map(|id| image.brokers[id].rack.clone()).collect();
            assert_eq!(racks.len(), 3, "replicas {r:?} should span three racks");
            *leaders.entry(r[0]).or_insert(0) += 1;
        }
        assert!(leaders.values().all(|c| *c == 2), "leaders spread evenly: {leaders:?}");
        assert!(place_replicas(&image, 1, 7, 0, 0).is_err());
    }

    /// Records replace whole states; stale-epoch fencing records are ignored; the image
    /// round-trips through its encoding.
    #[test]
    fn apply_and_encode() {
        let mut image = MetadataImage::default();
        image.apply(1, &MetadataRecord::RegisterBroker(BrokerInfo { fenced: true, ..broker(1, "a") }));
        image.apply(2, &MetadataRecord::FenceBroker { id: 1, epoch: 0, fenced: false });
        assert!(image.brokers[&1].fenced);
        image.apply(3, &MetadataRecord::FenceBroker { id: 1, epoch: 1, fenced: false });
        assert!(!image.brokers[&1].fenced);
        image.apply(4, &MetadataRecord::CreateTopic { name: "t".into(), id: 9, partitions: vec![PartitionInfo::new(vec![1])], configs: BTreeMap::new() });
        assert!(image.check().is_ok());
        let mut bad = PartitionInfo::new(vec![1]);
        bad.leader = 2;
        image.apply(5, &MetadataRecord::ChangePartition { topic: "t".into(), index: 0, info: bad });
        assert!(image.check().is_err());
        assert_eq!(MetadataImage::decode(&image.encode()), Some(image.clone()));
        assert_eq!(image.offset, 5);
    }
}
