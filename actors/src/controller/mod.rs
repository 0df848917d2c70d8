//! The controller: a voter of the metadata quorum (Raft over `__cluster_metadata`) and, while it
//! is the Raft leader, the active controller that decides every metadata change.
//!
//! Every voter applies committed entries (each a batch of [`image::MetadataRecord`]s) to its
//! [`image::MetadataImage`]. The active controller additionally keeps a *pending* image — the
//! committed one plus its proposals not yet committed — and makes every decision against it, so
//! two proposals in flight never contradict each other. It becomes active only once its own
//! term's first entry is applied (everything earlier leaders committed is then in its image).
//!
//! What it decides: broker registration (a broker starts fenced, is unfenced once its metadata
//! has caught up with its registration, is fenced when heartbeats stop for
//! `broker.session.timeout.ms`), partition leaders and ISRs (a fenced or shutting-down broker is
//! removed from every ISR it is not the last member of and loses its leaderships; a partition
//! whose only ISR member is gone has no leader until that member returns, unless unclean leader
//! election is enabled), ISR changes asked by leaders (AlterPartition, fenced by broker epoch,
//! leader epoch and partition epoch), topics, partitions, configs, producer-id blocks, preferred
//! and unclean elections, and reassignments.
//!
//! Answers to brokers are sent only once the records they report are committed; a voter that
//! loses leadership answers every waiting request NOT_CONTROLLER and brokers retry elsewhere.

pub mod image;
pub mod raft;
pub mod rpc;
pub mod store;

use crate::broker::error;
use crate::broker::BrokerMsg;
use crate::core::{Actor, Addr, Cx, IoDone, TimerId};
use image::{place_replicas, BrokerInfo, MetadataImage, MetadataRecord, PartitionInfo, NO_LEADER};
use raft::{Raft, RaftConfig, Snapshot};
use rpc::{AdminOp, ControllerRequest, ControllerResponse, ImageChunk, PeerMsg, QuorumDescription, ReplicaDescription, CONTROLLER_ACTOR};
use std::collections::{BTreeMap, VecDeque};
use store::{RaftStore, StoreEvent};

const TICK: TimerId = TimerId(1);
const TICK_MS: u64 = 25;
/// Committed record batches kept in memory for brokers that fetch metadata; older ones are
/// served as a snapshot of the image.
const HISTORY: usize = 20_000;
/// How long a metadata fetch waits for new records.
const FETCH_WAIT_MS: u64 = 500;
/// Producer ids per AllocateProducerIds.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// Static controller settings.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This node.
    pub node_id: i32,
    /// `controller.quorum.voters` ids.
    pub voters: Vec<i32>,
    /// `controller.quorum.election.timeout.ms`: the minimum; elections wait a random time in
    /// [t, 2t).
    pub election_timeout_ms: u64,
    /// Raft heartbeat interval.
    pub raft_heartbeat_ms: u64,
    /// `broker.session.timeout.ms`.
    pub broker_session_timeout_ms: u64,
    /// `unclean.leader.election.enable` default.
    pub unclean_leader_election: bool,
    /// `metadata.log.max.record.bytes.between.snapshots`: a voter writes a snapshot of its image
    /// (and compacts the metadata log) after this many bytes of committed records.
    pub max_record_bytes_between_snapshots: u64,
    /// `metadata.log.max.snapshot.interval.ms`: a voter also writes a snapshot once this long
    /// has passed since its last one if any record was committed meanwhile (0: only by size).
    pub max_snapshot_interval_ms: u64,
    /// The most snapshot bytes one message to a lagging voter carries (Kafka's FetchSnapshot
    /// fetches at most 8 MiB at a time too).
    pub snapshot_chunk_bytes: usize,
}

/// Kafka's default for `metadata.log.max.snapshot.interval.ms`: one hour.
pub const DEFAULT_MAX_SNAPSHOT_INTERVAL_MS: u64 = 3_600_000;

/// Snapshot bytes per message to a lagging voter (the node transport's frames hold 64 MiB).
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Kafka's default for `metadata.log.max.record.bytes.between.snapshots`: 20 MiB.
pub const DEFAULT_MAX_RECORD_BYTES_BETWEEN_SNAPSHOTS: u64 = 20 * 1024 * 1024;

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_id: 1,
            voters: vec![1],
            election_timeout_ms: 500,
            raft_heartbeat_ms: 100,
            broker_session_timeout_ms: 1500,
            unclean_leader_election: false,
            max_record_bytes_between_snapshots: DEFAULT_MAX_RECORD_BYTES_BETWEEN_SNAPSHOTS,
            max_snapshot_interval_ms: DEFAULT_MAX_SNAPSHOT_INTERVAL_MS,
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
        }
    }
}

/// What to answer once a proposal commits.
#[derive(Debug)]
enum Reply {
    Registered(i64),
    AlterPartition(String, i32),
    ProducerIds(i64),
    Admin,
    Nothing,
}

struct Waiter {
    term: u64,
    to: Addr,
    id: u64,
    reply: Reply,
}

/// How a voter's snapshots came about, for tests and the simulator's coverage report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots of its own image this voter wrote (and compacted its log to).
    pub taken: u64,
    /// Snapshots received from the leader and installed.
    pub installed: u64,
    /// The index of the snapshot this incarnation started from (0: none).
    pub loaded_index: u64,
    /// Of `taken`, those written because `metadata.log.max.snapshot.interval.ms` passed
    /// (fewer bytes than the size threshold had been committed).
    pub taken_on_interval: u64,
    /// Snapshot chunks received from the leader (a snapshot larger than
    /// [`ControllerConfig::snapshot_chunk_bytes`] takes several).
    pub chunks_received: u64,
}

struct ParkedFetch {
    to: Addr,
    id: u64,
    from: u64,
    deadline_ms: u64,
}

/// The controller actor. See the module documentation.
pub struct Controller {
    config: ControllerConfig,
    store: RaftStore,
    raft: Option<Raft>,
    /// Committed state.
    image: MetadataImage,
    /// Committed state plus this leader's proposals in flight.
    pending: MetadataImage,
    history: VecDeque<(u64, Vec<MetadataRecord>)>,
    /// `history` holds every batch committed after this index.
    trimmed_through: u64,
    /// The term of the entry at `image.offset`.
    applied_term: u64,
    /// Bytes of committed entries applied since the last snapshot (taken, installed or loaded).
    bytes_since_snapshot: u64,
    /// When this voter last wrote a snapshot (or started).
    last_snapshot_ms: u64,
    /// The snapshot being written was due to the interval, not the size.
    snapshot_on_interval: bool,
    /// A snapshot of our own being written; Raft is compacted to it once it is durable.
    compacting: Option<Snapshot>,
    snapshot_stats: SnapshotStats,
    /// Brokers fenced because their address refused connections (see [`Controller::fenced_on_refusal`]).
    fenced_on_refusal: u64,
    /// Brokers whose node-to-node address refused a connect, with the broker epoch of the
    /// registration it was about (see [`Controller::on_peer_refused`]).
    refused: BTreeMap<i32, i64>,
    persisting: Option<Vec<(i32, raft::RaftMsg)>>,
    was_leader: bool,
    term_start: u64,
    active: bool,
    waiters: BTreeMap<u64, Waiter>,
    parked: Vec<ParkedFetch>,
    /// Per (broker, topic, partition): the broker epoch and request id of the newest
    /// AlterPartition handled. A copy delivered late (or a request overtaken by its retry) is
    /// dropped: judged now, it could add a member against a high watermark that has moved on
    /// since (sim seed 803526: a refused expansion's duplicate arrived after the member was
    /// unfenced and was committed, putting a member behind the high watermark in the ISR).
    alter_partition_seen: BTreeMap<(i32, String, i32), (i64, u64)>,
    /// An encoded image and its offset, kept for brokers fetching it in chunks.
    image_cache: Option<(u64, Vec<u8>)>,
    heartbeats: BTreeMap<i32, u64>,
    /// Nodes that fetch metadata without voting, while this node is the active controller
    /// (DescribeQuorum's observers).
    observers: BTreeMap<i32, Observer>,
    /// Registrations refused because another live broker held the id.
    duplicate_registrations: u64,
    failed: bool,
}

/// A broker fetching metadata from the active controller, as DescribeQuorum reports it.
#[derive(Clone, Copy, Debug)]
struct Observer {
    /// The offset its last fetch started from (what it has applied).
    offset: u64,
    /// When it last fetched (this node's clock).
    fetched_ms: u64,
    /// When it last held everything committed (this node's clock), if it has.
    caught_up_ms: Option<u64>,
    /// The committed offset when it last fetched.
    committed_at_fetch: u64,
}

/// Observers that have not fetched for this long are left out of DescribeQuorum, as Kafka's
/// leader drops them.
const OBSERVER_TIMEOUT_MS: u64 = 300_000;

impl Controller {
    /// A voter with the given settings.
    pub fn new(config: ControllerConfig) -> Self {
        Controller {
            config,
            store: RaftStore::new(),
            raft: None,
            image: MetadataImage::default(),
            pending: MetadataImage::default(),
            history: VecDeque::new(),
            trimmed_through: 0,
            applied_term: 0,
            bytes_since_snapshot: 0,
            last_snapshot_ms: 0,
            snapshot_on_interval: false,
            compacting: None,
            snapshot_stats: SnapshotStats::default(),
            fenced_on_refusal: 0,
            refused: BTreeMap::new(),
            persisting: None,
            was_leader: false,
            term_start: 0,
            active: false,
            waiters: BTreeMap::new(),
            parked: Vec::new(),
            alter_partition_seen: BTreeMap::new(),
            image_cache: None,
            heartbeats: BTreeMap::new(),
            observers: BTreeMap::new(),
            duplicate_registrations: 0,
            failed: false,
        }
    }

    /// The committed metadata image.
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Whether this voter is the active controller.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Raft term and leader as this voter sees them.
    pub fn raft_view(&self) -> Option<(u64, Option<i32>, u64)> {
        self.raft.as_ref().map(|r| (r.term(), r.leader(), r.commit_index()))
    }

    /// Entries in this voter's log beyond its commit index: records a leader proposed that a
    /// later leader may still commit.
    pub fn uncommitted_entries(&self) -> u64 {
        self.raft.as_ref().map_or(0, |r| r.last_index().saturating_sub(r.commit_index()))
    }

    /// How this voter's snapshots came about.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        SnapshotStats { chunks_received: self.raft.as_ref().map_or(0, |r| r.snapshot_chunks_received()), ..self.snapshot_stats }
    }

    /// Registrations this node refused as active controller (DUPLICATE_BROKER_REGISTRATION).
    pub fn duplicate_registrations(&self) -> u64 {
        self.duplicate_registrations
    }

    /// The committed record batches this voter still holds, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &(u64, Vec<MetadataRecord>)> {
        self.history.iter()
    }

    fn peer(node: i32) -> Addr {
        Addr { node, actor: CONTROLLER_ACTOR }
    }

    fn fail(&mut self, cx: &mut Cx<BrokerMsg>, why: &str) {
        tracing::error!(node = self.config.node_id, "controller failed: {why}");
        self.failed = true;
        cx.stop();
    }

    /// Take Raft's output: install a snapshot, apply what committed, persist what must be
    /// durable, then send; snapshot the image when enough records were applied.
    fn drive(&mut self, cx: &mut Cx<BrokerMsg>) {
        loop {
            if self.persisting.is_some() || self.failed {
                return;
            }
            let Some(raft) = self.raft.as_mut() else { return };
            let mut ready = raft.take_ready();
            if let Some(snapshot) = &ready.snapshot {
                // Committed state from the leader: apply it now, like committed entries; the
                // store makes it durable before Raft's answer goes out.
                if let Err(why) = self.install_image(cx, snapshot) {
                    return self.fail(cx, &why);
                }
                self.snapshot_stats.installed += 1;
                tracing::info!(node = self.config.node_id, index = snapshot.last_index, term = snapshot.last_term, "installing the leader's metadata snapshot");
            }
            let committed = std::mem::take(&mut ready.committed);
            for entry in committed {
                self.apply_entry(cx, entry);
            }
            self.leadership_changed(cx);
            let needs_disk = ready.hard_state.is_some() || ready.snapshot.is_some() || ready.truncate_after.is_some() || !ready.entries.is_empty();
            if needs_disk {
                if self.store.persist(cx, &ready) {
                    self.persisting = Some(ready.messages);
                    return;
                }
                // Nothing had to change on disk: it is as durable as it was.
                let last = self.store.last_index();
                if let Some(raft) = self.raft.as_mut() {
                    raft.on_persisted(last);
                }
            }
            let idle = ready.messages.is_empty();
            for (to, msg) in ready.messages {
                cx.send(Self::peer(to), BrokerMsg::Peer(PeerMsg::Raft(msg)));
            }
            if self.maybe_snapshot(cx) || idle {
                return;
            }
        }
    }

    /// Replace the image by a snapshot's (loaded or received from the leader); the batches
    /// before it are no longer held, so brokers behind it get the image. The registrations it
    /// holds are announced to the driver, as applying them would have (a controller-only voter
    /// reaches broker-only nodes only at the addresses they registered).
    fn install_image(&mut self, cx: &mut Cx<BrokerMsg>, snapshot: &Snapshot) -> Result<(), String> {
        let image = MetadataImage::decode(&snapshot.data).ok_or_else(|| format!("metadata snapshot at {} does not decode", snapshot.last_index))?;
        if image.offset != snapshot.last_index {
            return Err(format!("metadata snapshot at {} holds an image at offset {}", snapshot.last_index, image.offset));
        }
        for b in image.brokers.values() {
            announce_peer(cx, self.config.node_id, b);
        }
        self.image = image;
        self.applied_term = snapshot.last_term;
        self.history.clear();
        self.trimmed_through = snapshot.last_index;
        self.bytes_since_snapshot = 0;
        Ok(())
    }

    /// Start writing a snapshot of the image if enough records were applied since the last one
    /// and the store is idle; true if started (the store reports `Persisted` when done).
    fn maybe_snapshot(&mut self, cx: &mut Cx<BrokerMsg>) -> bool {
        let now = cx.now_ms();
        let by_size = self.bytes_since_snapshot >= self.config.max_record_bytes_between_snapshots;
        let interval = self.config.max_snapshot_interval_ms;
        let by_time = interval > 0 && self.bytes_since_snapshot > 0 && now.saturating_sub(self.last_snapshot_ms) >= interval;
        if !(by_size || by_time) || self.persisting.is_some() || self.failed {
            return false;
        }
        let Some(raft) = self.raft.as_ref() else { return false };
        let index = self.image.offset;
        if index <= self.store.snapshot_index() {
            return false;
        }
        self.bytes_since_snapshot = 0;
        self.last_snapshot_ms = now;
        let Some(entries) = raft.entries_after(self.store.snapshot_index()) else {
            tracing::warn!(
                node = self.config.node_id,
                raft = raft.snapshot_index(),
                store = self.store.snapshot_index(),
                "snapshot skipped: Raft and the store disagree on the newest snapshot"
            );
            return false;
        };
        let snapshot = Snapshot { last_index: index, last_term: self.applied_term, data: self.image.encode() };
        match self.store.save_snapshot(cx, &snapshot, entries) {
            Ok(()) => {
                tracing::debug!(
                    node = self.config.node_id,
                    index,
                    term = self.applied_term,
                    bytes = snapshot.data.len(),
                    by_size,
                    "writing a metadata snapshot"
                );
                self.snapshot_on_interval = !by_size;
                self.compacting = Some(snapshot);
                self.persisting = Some(Vec::new());
                true
            }
            Err(why) => {
                tracing::warn!(node = self.config.node_id, "snapshot skipped: {why}");
                false
            }
        }
    }

    /// Our snapshot is durable and the log compacted: let Raft drop the entries it covers (and
    /// send it to followers that need them), and forget batches the log no longer holds.
    fn snapshot_saved(&mut self, snapshot: Snapshot) {
        self.snapshot_stats.taken += 1;
        if std::mem::take(&mut self.snapshot_on_interval) {
            self.snapshot_stats.taken_on_interval += 1;
        }
        let floor = self.store.first_index() - 1;
        while self.history.front().is_some_and(|(o, _)| *o <= floor) {
            self.history.pop_front();
        }
        self.trimmed_through = self.trimmed_through.max(floor);
        if let Some(raft) = self.raft.as_mut() {
            raft.compact(snapshot);
        }
    }

    fn apply_entry(&mut self, cx: &mut Cx<BrokerMsg>, entry: raft::Entry) {
        let records: Vec<MetadataRecord> = if entry.data.is_empty() {
            Vec::new()
        } else {
            match bincode::deserialize(&entry.data) {
                Ok(r) => r,
                Err(e) => return self.fail(cx, &format!("undecodable metadata entry {}: {e}", entry.index)),
            }
        };
        for r in &records {
            tracing::trace!(node = self.config.node_id, index = entry.index, term = entry.term, ?r, "apply");
            self.image.apply(entry.index, r);
            if let MetadataRecord::RegisterBroker(b) = r {
                // Answers to this broker (the registration's own, just below) go to its new address.
                announce_peer(cx, self.config.node_id, b);
            }
        }
        self.image.offset = entry.index;
        self.applied_term = entry.term;
        self.bytes_since_snapshot += entry.data.len() as u64;
        if !records.is_empty() {
            self.history.push_back((entry.index, records));
            if self.history.len() > HISTORY {
                if let Some((o, _)) = self.history.pop_front() {
                    self.trimmed_through = o;
                }
            }
        }
        if let Some(w) = self.waiters.remove(&entry.index) {
            let response =
                if w.term == entry.term { self.reply_for(w.reply, entry.index) } else { Some(ControllerResponse::NotController { leader: self.leader() }) };
            if let Some(response) = response {
                cx.send(w.to, BrokerMsg::Peer(PeerMsg::FromController { id: w.id, response }));
            }
        }
        self.answer_parked(cx, false);
    }

    fn reply_for(&self, reply: Reply, offset: u64) -> Option<ControllerResponse> {
        Some(match reply {
            Reply::Registered(epoch) => ControllerResponse::Registered { epoch },
            Reply::AlterPartition(topic, index) => {
                ControllerResponse::AlterPartition { error: error::NONE, info: self.image.partition(&topic, index).cloned() }
            }
            Reply::ProducerIds(start) => ControllerResponse::ProducerIds { start, len: PRODUCER_ID_BLOCK },
            Reply::Admin => ControllerResponse::Admin { error: error::NONE, message: None, offset },
            Reply::Nothing => return None,
        })
    }

    fn leader(&self) -> Option<i32> {
        self.raft.as_ref().and_then(|r| r.leader())
    }

    /// A metadata fetch from a node that does not vote, starting at `offset`.
    fn note_observer(&mut self, node: i32, offset: u64, now: u64) {
        let committed = self.image.offset;
        let o = self.observers.entry(node).or_insert(Observer { offset, fetched_ms: now, caught_up_ms: None, committed_at_fetch: 0 });
        if offset >= committed {
            o.caught_up_ms = Some(now);
        } else if o.committed_at_fetch > 0 && offset >= o.committed_at_fetch {
            // It holds what was committed at its previous fetch: caught up as of then.
            o.caught_up_ms = o.caught_up_ms.max(Some(o.fetched_ms));
        }
        o.offset = offset;
        o.fetched_ms = now;
        o.committed_at_fetch = committed;
    }

    /// DescribeQuorum, if this node leads the quorum: the leader's view of every voter and of
    /// the observers, with times turned to wall clock (`now` on the node's clock is `wall_ms`).
    fn describe_quorum(&mut self, now: u64, wall_ms: i64) -> Option<QuorumDescription> {
        let raft = self.raft.as_ref()?;
        let voters = raft.voter_states()?;
        let wall = |t: Option<u64>| t.map_or(-1, |t| wall_ms - now.saturating_sub(t) as i64);
        let voters = voters
            .into_iter()
            .map(|v| ReplicaDescription { id: v.id, log_end: v.log_end, last_fetch_ms: wall(v.last_fetch_ms), last_caught_up_ms: wall(v.last_caught_up_ms) })
            .collect();
        self.observers.retain(|_, o| now.saturating_sub(o.fetched_ms) < OBSERVER_TIMEOUT_MS);
        let observers = self
            .observers
            .iter()
            .map(|(id, o)| ReplicaDescription {
                id: *id,
                log_end: o.offset as i64,
                last_fetch_ms: wall(Some(o.fetched_ms)),
                last_caught_up_ms: wall(o.caught_up_ms),
            })
            .collect();
        Some(QuorumDescription {
            leader: self.config.node_id,
            epoch: i32::try_from(raft.term()).unwrap_or(i32::MAX),
            high_watermark: if crate::planted!("quorum-reports-uncommitted") { raft.last_index() } else { raft.commit_index() } as i64,
            voters,
            observers,
        })
    }

    fn leadership_changed(&mut self, cx: &mut Cx<BrokerMsg>) {
        let Some(raft) = self.raft.as_ref() else { return };
        let is_leader = raft.is_leader();
        if is_leader && !self.was_leader {
            self.term_start = raft.last_index();
            self.active = false;
            // What another leader saw of the observers is not this one's to report.
            self.observers.clear();
            tracing::info!(node = self.config.node_id, term = raft.term(), "elected metadata quorum leader");
        }
        if !is_leader && self.was_leader {
            self.active = false;
            let leader = raft.leader();
            for (_, w) in std::mem::take(&mut self.waiters) {
                cx.send(w.to, BrokerMsg::Peer(PeerMsg::FromController { id: w.id, response: ControllerResponse::NotController { leader } }));
            }
            self.answer_parked(cx, true);
        }
        self.was_leader = is_leader;
        if is_leader && !self.active && self.image.offset >= self.term_start {
            self.active = true;
            self.pending = self.image.clone();
            let now = cx.now_ms();
            // Every broker gets a full session from the moment this controller takes over.
            self.heartbeats = self.pending.brokers.keys().map(|id| (*id, now)).collect();
            tracing::info!(node = self.config.node_id, offset = self.image.offset, "active controller");
        }
    }

    /// Propose `records` (built knowing the index they will land at); apply them to the
    /// pending image; answer `reply` to `to` once committed.
    fn propose(&mut self, to: Addr, id: u64, reply: Reply, build: impl FnOnce(u64) -> Vec<MetadataRecord>) -> Result<u64, ()> {
        let raft = self.raft.as_mut().ok_or(())?;
        let index = raft.last_index() + 1;
        let records = build(index);
        let data = bincode::serialize(&records).expect("records serialise");
        let got = raft.propose(data).map_err(|_| ())?;
        debug_assert_eq!(got, index, "a proposal lands right after the last entry");
        for r in &records {
            self.pending.apply(got, r);
        }
        let term = raft.term();
        self.waiters.insert(got, Waiter { term, to, id, reply });
        Ok(got)
    }

    fn answer(cx: &mut Cx<BrokerMsg>, to: Addr, id: u64, response: ControllerResponse) {
        cx.send(to, BrokerMsg::Peer(PeerMsg::FromController { id, response }));
    }

    fn answer_parked(&mut self, cx: &mut Cx<BrokerMsg>, all: bool) {
        let now = cx.now_ms();
        let newest = self.history.back().map(|(o, _)| *o).unwrap_or(0);
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.parked) {
            if all || !self.active {
                Self::answer(cx, p.to, p.id, ControllerResponse::NotController { leader: self.leader() });
            } else if newest > p.from || now >= p.deadline_ms {
                let response = self.metadata_since(p.from, None);
                Self::answer(cx, p.to, p.id, response);
            } else {
                keep.push(p);
            }
        }
        self.parked = keep;
    }

    /// What a broker at `from` (and, while an image arrives in chunks, holding `image`) gets:
    /// the next chunk of an image if the records after `from` are no longer held (or a transfer
    /// is under way), otherwise the records after `from`.
    fn metadata_since(&mut self, from: u64, image: Option<(u64, u64)>) -> ControllerResponse {
        if from >= self.trimmed_through && image.is_none() {
            let records: Vec<(u64, Vec<MetadataRecord>)> = self.history.iter().filter(|(o, _)| *o > from).take(500).cloned().collect();
            return ControllerResponse::Metadata { from, image: None, records, last: self.image.offset };
        }
        // The encoded image is kept while transfers go on, so that a broker's chunks all come
        // from one image however the image moves meanwhile; a new transfer starts from it too
        // while the records after it are still held, or else from the image as it is now.
        let cached = self.image_cache.as_ref().map(|(o, _)| *o);
        let (offset, position) = match image {
            Some((offset, held)) if cached == Some(offset) => (offset, held),
            _ => {
                if cached.is_none_or(|o| o < self.trimmed_through) {
                    self.image_cache = Some((self.image.offset, self.image.encode()));
                }
                (self.image_cache.as_ref().map_or(0, |(o, _)| *o), 0)
            }
        };
        let encoded = &self.image_cache.as_ref().expect("cached above").1;
        let start = (position as usize).min(encoded.len());
        let end = (start + self.config.snapshot_chunk_bytes.max(1)).min(encoded.len());
        let chunk = ImageChunk { offset, position: start as u64, total: encoded.len() as u64, bytes: encoded[start..end].to_vec() };
        ControllerResponse::Metadata { from, image: Some(chunk), records: Vec::new(), last: self.image.offset }
    }

    fn on_request(&mut self, cx: &mut Cx<BrokerMsg>, from: Addr, id: u64, request: ControllerRequest) {
        if !self.active {
            return Self::answer(cx, from, id, ControllerResponse::NotController { leader: self.leader() });
        }
        let now = cx.now_ms();
        match request {
            ControllerRequest::Register { broker, incarnation, host, port, peer, rack } => {
                if let Some(b) = self.image.brokers.get(&broker).filter(|b| b.incarnation == incarnation) {
                    return Self::answer(cx, from, id, ControllerResponse::Registered { epoch: b.epoch });
                }
                if self.pending.brokers.get(&broker).is_some_and(|b| b.incarnation == incarnation) {
                    // The registration is in flight; the broker retries and gets the committed answer.
                    return;
                }
                // Another process (a different incarnation) holds this id while its session lasts:
                // unfenced, not shutting down, heard from within `broker.session.timeout.ms`. As in
                // Kafka, a restarted broker waits for its old session to end.
                let live = self.pending.brokers.get(&broker).is_some_and(|b| !b.fenced && !b.shutting_down)
                    && self.heartbeats.get(&broker).is_some_and(|t| now.saturating_sub(*t) <= self.config.broker_session_timeout_ms);
                if live {
                    self.duplicate_registrations += 1;
                    tracing::warn!(broker, "refusing a registration: another live broker is registered with this id");
                    return Self::answer(cx, from, id, ControllerResponse::RegisterRefused { error: crate::broker::error::DUPLICATE_BROKER_REGISTRATION });
                }
                self.heartbeats.insert(broker, now);
                let moves = self.fence_changes(broker);
                let proposed = self.propose(from, id, Reply::Registered(0), |index| {
                    let info = BrokerInfo { id: broker, epoch: index as i64, incarnation, host, port, peer, rack, fenced: true, shutting_down: false };
                    let mut records = vec![MetadataRecord::RegisterBroker(info)];
                    records.extend(moves);
                    records
                });
                // The broker epoch is the index the registration lands at.
                if let Some(w) = proposed.ok().and_then(|index| self.waiters.get_mut(&index).map(|w| (index, w))) {
                    w.1.reply = Reply::Registered(w.0 as i64);
                }
            }
            ControllerRequest::Heartbeat { broker, epoch, metadata_offset, shutdown } => {
                let Some(b) = self.pending.brokers.get(&broker).cloned() else {
                    return Self::answer(cx, from, id, ControllerResponse::Heartbeat { fenced: true, shutdown_ready: false, stale: true });
                };
                if b.epoch != epoch {
                    return Self::answer(cx, from, id, ControllerResponse::Heartbeat { fenced: true, shutdown_ready: false, stale: true });
                }
                self.heartbeats.insert(broker, now);
                if shutdown && !b.shutting_down {
                    let moves = self.fence_changes(broker);
                    let _ = self.propose(from, 0, Reply::Nothing, |_| {
                        let mut r = vec![MetadataRecord::ShutdownBroker { id: broker, epoch }];
                        r.extend(moves);
                        r
                    });
                } else if !shutdown && b.fenced && metadata_offset >= epoch as u64 {
                    let mut records = vec![MetadataRecord::FenceBroker { id: broker, epoch, fenced: false }];
                    let mut after = self.pending.clone();
                    after.apply(0, &records[0]);
                    records.extend(Self::unfence_changes(&after, broker));
                    let _ = self.propose(from, 0, Reply::Nothing, |_| records);
                }
                let b = &self.pending.brokers[&broker];
                let leads = self.pending.topics.values().any(|t| t.partitions.iter().any(|p| p.leader == broker));
                Self::answer(
                    cx,
                    from,
                    id,
                    ControllerResponse::Heartbeat { fenced: b.fenced, shutdown_ready: shutdown && b.shutting_down && !leads, stale: false },
                );
            }
            ControllerRequest::FetchMetadata { from: offset, image } => {
                if !self.config.voters.contains(&from.node) {
                    self.note_observer(from.node, offset, now);
                }
                let response = self.metadata_since(offset, image);
                match &response {
                    ControllerResponse::Metadata { image: None, records, .. } if records.is_empty() => {
                        self.parked.push(ParkedFetch { to: from, id, from: offset, deadline_ms: now + FETCH_WAIT_MS });
                    }
                    _ => Self::answer(cx, from, id, response),
                }
            }
            ControllerRequest::DescribeQuorum => {
                let response = match self.describe_quorum(now, cx.wall_clock_ms()) {
                    Some(d) => ControllerResponse::Quorum(d),
                    None => ControllerResponse::NotController { leader: self.leader() },
                };
                Self::answer(cx, from, id, response);
            }
            ControllerRequest::AlterPartition { broker, epoch, topic, index, leader_epoch, partition_epoch, isr } => {
                let key = (broker, topic.clone(), index);
                if self.alter_partition_seen.get(&key).is_some_and(|&(e, last)| e == epoch && id <= last) {
                    tracing::debug!(broker, topic, index, id, "AlterPartition already handled or overtaken: dropped");
                    return;
                }
                self.alter_partition_seen.insert(key, (epoch, id));
                let reject = |cx: &mut Cx<BrokerMsg>, code: i16| Self::answer(cx, from, id, ControllerResponse::AlterPartition { error: code, info: None });
                if self.pending.brokers.get(&broker).is_none_or(|b| b.epoch != epoch) {
                    return reject(cx, error::STALE_BROKER_EPOCH);
                }
                let Some(p) = self.pending.partition(&topic, index).cloned() else { return reject(cx, error::UNKNOWN_TOPIC_OR_PARTITION) };
                if p.leader != broker {
                    return reject(cx, error::NOT_LEADER_OR_FOLLOWER);
                }
                if leader_epoch != p.leader_epoch {
                    return reject(cx, error::FENCED_LEADER_EPOCH);
                }
                if partition_epoch != p.partition_epoch {
                    return reject(cx, error::INVALID_UPDATE_VERSION);
                }
                let eligible = |r: &i32| p.replicas.contains(r) && (p.isr.contains(r) || self.pending.is_active(*r));
                if !isr.contains(&broker) || !isr.iter().all(eligible) {
                    return reject(cx, error::INELIGIBLE_REPLICA);
                }
                let mut info = p.clone();
                info.isr = isr;
                info.partition_epoch += 1;
                let mut records = vec![MetadataRecord::ChangePartition { topic: topic.clone(), index, info: info.clone() }];
                if let Some(done) = Self::finish_reassignment(&info) {
                    records = vec![MetadataRecord::ChangePartition { topic: topic.clone(), index, info: done }];
                }
                let _ = self.propose(from, id, Reply::AlterPartition(topic, index), |_| records);
            }
            ControllerRequest::AllocateProducerIds { broker: _ } => {
                let start = self.pending.next_producer_id.max(1);
                let _ = self.propose(from, id, Reply::ProducerIds(start), |_| vec![MetadataRecord::ProducerIds { next: start + PRODUCER_ID_BLOCK }]);
            }
            ControllerRequest::Admin(op) => self.on_admin(cx, from, id, op),
        }
        self.drive(cx);
    }

    fn admin_error(cx: &mut Cx<BrokerMsg>, to: Addr, id: u64, code: i16, message: impl Into<String>) {
        Self::answer(cx, to, id, ControllerResponse::Admin { error: code, message: Some(message.into()), offset: 0 });
    }

    fn on_admin(&mut self, cx: &mut Cx<BrokerMsg>, from: Addr, id: u64, op: AdminOp) {
        match op {
            AdminOp::CreateTopic { name, partitions, replication_factor, assignments, configs, validate_only } => {
                if self.pending.topics.contains_key(&name) {
                    return Self::admin_error(cx, from, id, error::TOPIC_ALREADY_EXISTS, format!("Topic '{name}' already exists."));
                }
                let placed = if assignments.is_empty() {
                    let start = cx.rng().below(1 << 16) as usize;
                    match place_replicas(&self.pending, partitions, replication_factor.max(1) as usize, 0, start) {
                        Ok(p) => p,
                        Err(m) => return Self::admin_error(cx, from, id, error::INVALID_REPLICATION_FACTOR, m),
                    }
                } else {
                    for a in &assignments {
                        let mut d = a.clone();
                        d.sort();
                        d.dedup();
                        if a.is_empty() || d.len() != a.len() || a.len() != assignments[0].len() || !a.iter().all(|b| self.pending.brokers.contains_key(b)) {
                            return Self::admin_error(cx, from, id, error::INVALID_REPLICA_ASSIGNMENT, format!("Invalid replica assignment {a:?}."));
                        }
                    }
                    assignments
                };
                if validate_only {
                    return Self::answer(cx, from, id, ControllerResponse::Admin { error: error::NONE, message: None, offset: 0 });
                }
                let topic_id = ((cx.rng().next_u64() as u128) << 64 | cx.rng().next_u64() as u128) & !(0xf000u128 << 64) | (0x4000u128 << 64);
                let parts: Vec<PartitionInfo> = placed.into_iter().map(|r| self.initial_partition(r)).collect();
                let _ = self.propose(from, id, Reply::Admin, |_| vec![MetadataRecord::CreateTopic { name, id: topic_id, partitions: parts, configs }]);
            }
            AdminOp::DeleteTopic { name } => {
                if !self.pending.topics.contains_key(&name) {
                    return Self::admin_error(cx, from, id, error::UNKNOWN_TOPIC_OR_PARTITION, "This server does not host this topic-partition.");
                }
                let _ = self.propose(from, id, Reply::Admin, |_| vec![MetadataRecord::DeleteTopic { name }]);
            }
            AdminOp::CreatePartitions { name, count, validate_only } => {
                let Some(t) = self.pending.topics.get(&name) else {
                    return Self::admin_error(cx, from, id, error::UNKNOWN_TOPIC_OR_PARTITION, "This server does not host this topic-partition.");
                };
                let current = t.partitions.len() as i32;
                if count <= current {
                    return Self::admin_error(
                        cx,
                        from,
                        id,
                        error::INVALID_PARTITIONS,
                        format!("Topic currently has {current} partitions, which is higher than the requested {count}."),
                    );
                }
                let rf = t.partitions.first().map(|p| p.replicas.len()).unwrap_or(1);
                let start = cx.rng().below(1 << 16) as usize;
                let placed = match place_replicas(&self.pending, count - current, rf, current, start) {
                    Ok(p) => p,
                    Err(m) => return Self::admin_error(cx, from, id, error::INVALID_REPLICATION_FACTOR, m),
                };
                if validate_only {
                    return Self::answer(cx, from, id, ControllerResponse::Admin { error: error::NONE, message: None, offset: 0 });
                }
                let parts: Vec<PartitionInfo> = placed.into_iter().map(|r| self.initial_partition(r)).collect();
                let _ = self.propose(from, id, Reply::Admin, |_| vec![MetadataRecord::AddPartitions { name, partitions: parts }]);
            }
            AdminOp::TopicConfig { name, configs } => {
                if !self.pending.topics.contains_key(&name) {
                    return Self::admin_error(cx, from, id, error::UNKNOWN_TOPIC_OR_PARTITION, "This server does not host this topic-partition.");
                }
                let _ = self.propose(from, id, Reply::Admin, |_| vec![MetadataRecord::TopicConfig { name, configs }]);
            }
            AdminOp::BrokerConfig { configs } => {
                let _ = self.propose(from, id, Reply::Admin, |_| vec![MetadataRecord::BrokerConfig { configs }]);
            }
            AdminOp::ElectLeader { topic, index, preferred } => {
                let Some(p) = self.pending.partition(&topic, index).cloned() else {
                    return Self::admin_error(cx, from, id, error::UNKNOWN_TOPIC_OR_PARTITION, "This server does not host this topic-partition.");
                };
                let mut info = p.clone();
                if preferred {
                    let want = p.replicas[0];
                    if p.leader == want {
                        return Self::admin_error(cx, from, id, error::ELECTION_NOT_NEEDED, "Leader election not needed for topic partition.");
                    }
                    if !p.isr.contains(&want) || !self.pending.is_active(want) {
                        return Self::admin_error(
                            cx,
                            from,
                            id,
                            error::PREFERRED_LEADER_NOT_AVAILABLE,
                            format!("Failed to elect leader for partition {topic}-{index} under strategy PreferredReplicaPartitionLeaderElectionStrategy"),
                        );
                    }
                    info.leader = want;
                } else {
                    if p.leader != NO_LEADER {
                        return Self::admin_error(cx, from, id, error::ELECTION_NOT_NEEDED, "Leader election not needed for topic partition.");
                    }
                    let Some(r) = p.replicas.iter().copied().find(|r| self.pending.is_active(*r)) else {
                        return Self::admin_error(cx, from, id, error::ELIGIBLE_LEADERS_NOT_AVAILABLE, "No eligible replica is alive.");
                    };
                    info.leader = r;
                    info.isr = vec![r];
                }
                info.leader_epoch += 1;
                info.partition_epoch += 1;
                let _ = self.propose(from, id, Reply::Admin, |_| vec![MetadataRecord::ChangePartition { topic, index, info }]);
            }
            AdminOp::Reassign { topic, index, replicas } => {
                let Some(p) = self.pending.partition(&topic, index).cloned() else {
                    return Self::admin_error(cx, from, id, error::UNKNOWN_TOPIC_OR_PARTITION, "This server does not host this topic-partition.");
                };
                let mut info = p.clone();
                match replicas {
                    None => {
                        if p.adding.is_empty() && p.removing.is_empty() {
                            return Self::admin_error(cx, from, id, error::NO_REASSIGNMENT_IN_PROGRESS, "No reassignment in progress.");
                        }
                        // Cancel: drop the replicas being added, keep the ones being removed.
                        info.replicas.retain(|r| !p.adding.contains(r));
                        info.isr.retain(|r| !p.adding.contains(r));
                        info.adding.clear();
                        info.removing.clear();
                        self.lead_from_isr(&mut info);
                        if info.isr.is_empty() {
                            info.isr = vec![p.replicas[0]];
                        }
                    }
                    Some(target) => {
                        let mut d = target.clone();
                        d.sort();
                        d.dedup();
                        if target.is_empty() || d.len() != target.len() || !target.iter().all(|b| self.pending.brokers.contains_key(b)) {
                            return Self::admin_error(cx, from, id, error::INVALID_REPLICA_ASSIGNMENT, format!("Invalid replica assignment {target:?}."));
                        }
                        let current: Vec<i32> = p.replicas.iter().copied().filter(|r| !p.adding.contains(r)).collect();
                        info.adding = target.iter().copied().filter(|r| !current.contains(r)).collect();
                        info.removing = current.iter().copied().filter(|r| !target.contains(r)).collect();
                        let mut all = target.clone();
                        all.extend(current.iter().copied().filter(|r| !target.contains(r)));
                        info.replicas = all;
                        info.isr.retain(|r| info.replicas.contains(r));
                        if info.isr.is_empty() {
                            return Self::admin_error(
                                cx,
                                from,
                                id,
                                error::INVALID_REPLICA_ASSIGNMENT,
                                format!("Replica assignment {target:?} would leave no in-sync replica."),
                            );
                        }
                        self.lead_from_isr(&mut info);
                    }
                }
                info.partition_epoch += 1;
                let info = Self::finish_reassignment(&info).unwrap_or(info);
                let _ = self.propose(from, id, Reply::Admin, |_| vec![MetadataRecord::ChangePartition { topic, index, info }]);
            }
        }
    }

    /// After a reassignment (cancelled, or superseded by another) dropped the replicas being
    /// added, the leader may have been one of them (elected while it was being added): lead from
    /// the first active ISR member in replica order, or leave the partition without a leader.
    fn lead_from_isr(&self, info: &mut PartitionInfo) {
        if !info.isr.contains(&info.leader) {
            info.leader = info.replicas.iter().copied().find(|r| info.isr.contains(r) && self.pending.is_active(*r)).unwrap_or(NO_LEADER);
            info.leader_epoch += 1;
        }
    }

    fn initial_partition(&self, replicas: Vec<i32>) -> PartitionInfo {
        let mut p = PartitionInfo::new(replicas);
        p.isr.retain(|r| self.pending.is_active(*r));
        if p.isr.is_empty() {
            p.isr = vec![p.replicas[0]];
        }
        p.leader = p.replicas.iter().copied().find(|r| p.isr.contains(r) && self.pending.is_active(*r)).unwrap_or(NO_LEADER);
        p
    }

    /// A reassignment completes once every added replica is in the ISR: the removed replicas
    /// leave the replica set and the ISR, and leadership moves if the leader was removed.
    fn finish_reassignment(p: &PartitionInfo) -> Option<PartitionInfo> {
        if p.adding.is_empty() && p.removing.is_empty() {
            return None;
        }
        if !p.adding.iter().all(|r| p.isr.contains(r)) {
            return None;
        }
        let mut n = p.clone();
        n.replicas.retain(|r| !p.removing.contains(r));
        n.isr.retain(|r| !p.removing.contains(r));
        n.adding.clear();
        n.removing.clear();
        if n.isr.is_empty() {
            return None;
        }
        if !n.isr.contains(&n.leader) {
            n.leader = n.isr[0];
            n.leader_epoch += 1;
        }
        Some(n)
    }

    /// The partition changes that take `broker` out of service: out of every ISR it is not the
    /// last member of, and out of every leadership (to another live ISR member, or none).
    fn fence_changes(&self, broker: i32) -> Vec<MetadataRecord> {
        let mut out = Vec::new();
        for (name, t) in &self.pending.topics {
            for (i, p) in t.partitions.iter().enumerate() {
                if !p.isr.contains(&broker) && p.leader != broker {
                    continue;
                }
                let mut n = p.clone();
                if n.isr.len() > 1 {
                    n.isr.retain(|r| *r != broker);
                }
                if n.leader == broker {
                    n.leader = n.replicas.iter().copied().find(|r| *r != broker && n.isr.contains(r) && self.pending.is_active(*r)).unwrap_or(NO_LEADER);
                    n.leader_epoch += 1;
                }
                if n != *p {
                    n.partition_epoch += 1;
                    out.push(MetadataRecord::ChangePartition { topic: name.clone(), index: i as i32, info: n });
                }
            }
        }
        out
    }

    /// Leaderless partitions whose ISR holds `broker` get it as leader.
    fn unfence_changes(image: &MetadataImage, broker: i32) -> Vec<MetadataRecord> {
        let mut out = Vec::new();
        for (name, t) in &image.topics {
            for (i, p) in t.partitions.iter().enumerate() {
                if p.leader == NO_LEADER && p.isr.contains(&broker) {
                    let mut n = p.clone();
                    n.leader = broker;
                    n.leader_epoch += 1;
                    n.partition_epoch += 1;
                    out.push(MetadataRecord::ChangePartition { topic: name.clone(), index: i as i32, info: n });
                }
            }
        }
        out
    }

    fn unclean_allowed(&self, topic: &str) -> bool {
        let key = "unclean.leader.election.enable";
        let v = self.pending.topics.get(topic).and_then(|t| t.configs.get(key)).or_else(|| self.pending.dynamic_broker.get(key));
        v.map(|v| v == "true").unwrap_or(self.config.unclean_leader_election)
    }

    /// Propose fencing `broker` (registered at `epoch`): the fence and the moves of its
    /// leaderships and ISR places, in one batch.
    fn fence(&mut self, broker: i32, epoch: i64) {
        let me = Addr { node: self.config.node_id, actor: CONTROLLER_ACTOR };
        let fence = MetadataRecord::FenceBroker { id: broker, epoch, fenced: true };
        let mut after = self.pending.clone();
        after.apply(0, &fence);
        let saved = std::mem::replace(&mut self.pending, after);
        let moves = self.fence_changes(broker);
        self.pending = saved;
        let _ = self.propose(me, 0, Reply::Nothing, |_| {
            let mut r = vec![fence];
            r.extend(moves);
            r
        });
    }

    /// The driver could not connect to `node`: nothing listens at its node-to-node address, so
    /// its process is gone. The active controller fences it now rather than at the end of its
    /// session; a live broker's next heartbeat would unfence it as after any fence, so a wrong
    /// report costs availability only.
    ///
    /// Every voter remembers the refusal with the broker epoch it was about, so a voter that
    /// becomes active later (the refused node may have been the active controller) still acts
    /// on it; a restart registers anew, with another epoch, and voids it.
    fn on_peer_refused(&mut self, node: i32) {
        if node == self.config.node_id {
            return;
        }
        if let Some(raft) = self.raft.as_mut() {
            raft.leader_gone(node);
        }
        let image = if self.active { &self.pending } else { &self.image };
        let Some(b) = image.brokers.get(&node).filter(|b| !b.fenced) else { return };
        self.refused.insert(node, b.epoch);
        self.fence_refused();
    }

    /// While active: fence every broker whose current registration refused connections.
    fn fence_refused(&mut self) {
        if !self.active {
            return;
        }
        // A refusal is only recorded for a registered broker, and registrations are never
        // removed, so each entry is acted on (or found void: fenced already, or registered
        // again since) now.
        for (node, epoch) in std::mem::take(&mut self.refused) {
            if self.pending.brokers.get(&node).is_some_and(|b| b.epoch == epoch && !b.fenced) {
                tracing::info!(broker = node, "fencing broker: its node-to-node address refuses connections (the process is gone)");
                self.fenced_on_refusal += 1;
                self.fence(node, epoch);
            }
        }
    }

    /// Brokers this voter fenced, while active, because their address refused connections.
    pub fn fenced_on_refusal(&self) -> u64 {
        self.fenced_on_refusal
    }

    /// Times this voter campaigned early because its leader's address refused connections.
    pub fn campaigns_on_refusal(&self) -> u64 {
        self.raft.as_ref().map_or(0, |r| r.leader_gone_count())
    }

    fn on_tick(&mut self, cx: &mut Cx<BrokerMsg>) {
        let now = cx.now_ms();
        if let Some(raft) = self.raft.as_mut() {
            raft.tick(now);
        }
        if self.active {
            let me = Addr { node: self.config.node_id, actor: CONTROLLER_ACTOR };
            let expired: Vec<(i32, i64)> = self
                .pending
                .brokers
                .values()
                .filter(|b| !b.fenced && now.saturating_sub(*self.heartbeats.get(&b.id).unwrap_or(&now)) > self.config.broker_session_timeout_ms)
                .map(|b| (b.id, b.epoch))
                .collect();
            for (broker, epoch) in expired {
                tracing::info!(broker, "fencing broker: no heartbeat within broker.session.timeout.ms");
                self.fence(broker, epoch);
            }
            self.fence_refused();
            // Unclean elections where enabled: a leaderless partition whose ISR is all gone.
            let mut unclean = Vec::new();
            for (name, t) in &self.pending.topics {
                for (i, p) in t.partitions.iter().enumerate() {
                    if p.leader == NO_LEADER && !p.isr.iter().any(|r| self.pending.is_active(*r)) && self.unclean_allowed(name) {
                        if let Some(r) = p.replicas.iter().copied().find(|r| self.pending.is_active(*r)) {
                            let mut n = p.clone();
                            n.leader = r;
                            n.isr = vec![r];
                            n.leader_epoch += 1;
                            n.partition_epoch += 1;
                            unclean.push(MetadataRecord::ChangePartition { topic: name.clone(), index: i as i32, info: n });
                        }
                    }
                }
            }
            if !unclean.is_empty() {
                tracing::warn!(count = unclean.len(), "unclean leader election");
                let _ = self.propose(me, 0, Reply::Nothing, |_| unclean);
            }
        }
        self.answer_parked(cx, false);
        self.drive(cx);
        cx.set_timer(TICK, TICK_MS);
    }
}

/// Tell the driver where a registered broker listens for node-to-node traffic.
pub(crate) fn announce_peer(cx: &mut Cx<BrokerMsg>, me: i32, b: &BrokerInfo) {
    if b.id != me && !b.peer.is_empty() {
        cx.peer_address(b.id, b.peer.clone(), b.epoch);
    }
}

impl Actor for Controller {
    type Msg = BrokerMsg;

    fn on_start(&mut self, cx: &mut Cx<BrokerMsg>) {
        self.store.start(cx);
    }

    fn on_message(&mut self, cx: &mut Cx<BrokerMsg>, from: Addr, msg: BrokerMsg) {
        if let BrokerMsg::PeerRefused { node } = msg {
            return self.on_peer_refused(node);
        }
        let BrokerMsg::Peer(msg) = msg else { return };
        if self.raft.is_none() {
            // Still loading: Raft peers and brokers retry.
            return;
        }
        match msg {
            PeerMsg::Raft(m) => {
                let now = cx.now_ms();
                if let Some(raft) = self.raft.as_mut() {
                    raft.step(now, from.node, m);
                }
                self.drive(cx);
            }
            PeerMsg::ToController { id, request } => {
                if let ControllerRequest::Register { broker, peer, .. } = &request {
                    // A broker this node has no committed address for (a broker-only node that
                    // just started) still gets its answer, NOT_CONTROLLER included.
                    if !peer.is_empty() && *broker != self.config.node_id {
                        cx.peer_address(*broker, peer.clone(), -1);
                    }
                }
                self.on_request(cx, from, id, request)
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<BrokerMsg>, timer: TimerId) {
        if timer == TICK {
            self.on_tick(cx);
        }
    }

    fn on_io(&mut self, cx: &mut Cx<BrokerMsg>, done: IoDone) {
        match self.store.on_io(cx, done) {
            StoreEvent::Pending => {}
            StoreEvent::Failed(why) => self.fail(cx, &why),
            StoreEvent::Loaded { hard_state, snapshot, entries } => {
                if let Some(s) = &snapshot {
                    if let Err(why) = self.install_image(cx, s) {
                        return self.fail(cx, &why);
                    }
                    self.snapshot_stats.loaded_index = s.last_index;
                }
                let c = &self.config;
                let config = RaftConfig {
                    me: c.node_id,
                    voters: c.voters.clone(),
                    election_timeout_min_ms: c.election_timeout_ms,
                    election_timeout_max_ms: c.election_timeout_ms * 2,
                    heartbeat_interval_ms: c.raft_heartbeat_ms,
                    max_entries_per_append: 256,
                    snapshot_chunk_bytes: c.snapshot_chunk_bytes,
                };
                tracing::info!(node = c.node_id, term = hard_state.term, snapshot = self.image.offset, entries = entries.len(), "metadata log loaded");
                let seed = cx.rng().next_u64();
                self.raft = Some(Raft::new(config, hard_state, snapshot, entries, cx.now_ms(), seed));
                self.last_snapshot_ms = cx.now_ms();
                cx.set_timer(TICK, TICK_MS);
                self.drive(cx);
            }
            StoreEvent::Persisted { last_index } => {
                if let Some(raft) = self.raft.as_mut() {
                    raft.on_persisted(last_index);
                }
                if let Some(snapshot) = self.compacting.take() {
                    self.snapshot_saved(snapshot);
                }
                for (to, msg) in self.persisting.take().unwrap_or_default() {
                    cx.send(Self::peer(to), BrokerMsg::Peer(PeerMsg::Raft(msg)));
                }
                self.drive(cx);
            }
        }
    }
}
