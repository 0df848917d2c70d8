//! Durable Raft state of a voter, in the node's `__cluster_metadata-0/` directory:
//! - `quorum-state`: the current term and vote, one frame, replaced atomically (tmp, fsync, rename);
//! - `log`: Raft entries, one frame each, contiguous from the file's first entry (index 1 until
//!   the first compaction), appended and fsynced before the voter answers;
//! - `<20-digit index>-<10-digit term>.checkpoint`: a [`Snapshot`] of the metadata image through
//!   Raft index `index`, whose entry has term `term` (Kafka's snapshot naming: with Raft's 1-based
//!   indexes, `index` is Kafka's exclusive end offset and `term` its epoch), one frame, written to
//!   `checkpoint.tmp`, fsynced, then renamed (a rename is durable when it completes).
//!
//! A frame is `[u32 length][u32 crc32fast of the payload][payload = bincode]`.
//!
//! # Compaction
//! The two newest checkpoints are kept, and the log from the older one on, so a newest checkpoint
//! found damaged can be replaced by the older one plus the log. Taking a snapshot
//! ([`RaftStore::save_snapshot`]) is, one step after another: (1) write the checkpoint (tmp,
//! fsync, rename); (2) if the log still holds entries up to the previous checkpoint, write the
//! entries after it to `log.tmp`, fsync, rename it over `log`; (3) delete older checkpoints.
//! Installing the leader's snapshot (`Ready::snapshot`) is (1), then, unless the log holds the
//! snapshot's last entry with the snapshot's term (then the log continues it), replacing `log` by
//! an empty file the same way; the entries after the snapshot come from the leader.
//!
//! Crash safety: whatever operation a crash interrupts, the newest checkpoint on disk plus the log
//! hold every entry that was durable before: until (1)'s rename the old checkpoints and the old
//! log are untouched; after it, the new checkpoint is complete (it was fsynced before it got its
//! name) and the log is either the old one (which holds the new checkpoint's last entry) or the
//! rewritten one (which starts right after the previous checkpoint, at or before the new one). A
//! deleted file may come back after a crash (deletes are not synced): old checkpoints and `.tmp`
//! files are harmless and cleaned up again.
//!
//! # Loading
//! List the directory, read every file, then:
//! - the log's frames up to the first one that is short, fails its CRC, does not decode or does
//!   not follow its predecessor's index (a torn tail: never acknowledged, because answers wait for
//!   the fsync) — the file is cut there;
//! - the newest checkpoint that verifies (CRC, decode, name matching its contents). An older one is
//!   used only if the log holds every entry after it through the newest checkpoint's index;
//!   otherwise the store fails rather than forget committed metadata. If the log does not continue
//!   the newest checkpoint (a crash during an install left the old, diverging log) its entries are
//!   not committed ones and it is emptied;
//! - a read that finds damage is repeated, and the damage believed only when two reads in a row
//!   find exactly the same bytes (latent sector errors are transient);
//! - a corrupt `quorum-state` stops the node: forgetting a vote could elect two leaders in a term.
//!
//! Everything read is fsynced again before Raft treats it as durable (it may have come from the
//! page cache of a process that died before its own fsync).

use super::raft::{Entry, HardState, Ready, Snapshot};
use crate::core::{DiskIo, DiskOp, IoDone, IoOutput, IoToken};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};

/// The directory of the metadata log.
pub const DIR: &str = "__cluster_metadata-0";
const LOG: &str = "__cluster_metadata-0/log";
const LOG_TMP: &str = "__cluster_metadata-0/log.tmp";
const STATE: &str = "__cluster_metadata-0/quorum-state";
const STATE_TMP: &str = "__cluster_metadata-0/quorum-state.tmp";
const CHECKPOINT_TMP: &str = "__cluster_metadata-0/checkpoint.tmp";
const CHECKPOINT_SUFFIX: &str = ".checkpoint";
/// Checkpoints kept on disk (the log is kept from the oldest of them on).
const CHECKPOINTS_KEPT: usize = 2;
/// How many times a load that found damage reads everything again.
const REREADS_MAX: u32 = 10;
/// Lanes of disk operations that run side by side (see [`Lane`]).
const STATE_LANE: usize = 0;
const LOG_LANE: usize = 1;

/// Encode one frame.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 8);
    b.put_u32(payload.len() as u32);
    b.put_u32(crc32fast::hash(payload));
    b.put_slice(payload);
    b.freeze()
}

/// Decode the frame at the start of `bytes`: (payload, frame length), or None if torn/corrupt.
pub fn unframe(bytes: &[u8]) -> Option<(&[u8], usize)> {
    if bytes.len() < 8 {
        return None;
    }
    let len = u32::from_be_bytes(bytes[0..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(bytes[4..8].try_into().ok()?);
    let payload = bytes.get(8..8usize.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some((payload, 8 + len))
}

/// Which snapshot a checkpoint file holds: the index and term of its last entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CheckpointId {
    /// The last Raft index the snapshot covers.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
}

impl CheckpointId {
    /// The file name: `<20-digit index>-<10-digit term>.checkpoint`.
    pub fn file_name(&self) -> String {
        format!("{:020}-{:010}{CHECKPOINT_SUFFIX}", self.index, self.term)
    }

    /// Parse a file name written by [`CheckpointId::file_name`].
    pub fn parse(name: &str) -> Option<CheckpointId> {
        let (index, term) = name.strip_suffix(CHECKPOINT_SUFFIX)?.split_once('-')?;
        let digits = |s: &str, len: usize| s.len() >= len && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(index, 20) || !digits(term, 10) {
            return None;
        }
        Some(CheckpointId { index: index.parse().ok()?, term: term.parse().ok()? })
    }

    fn path(&self) -> String {
        format!("{DIR}/{}", self.file_name())
    }

    fn of(snapshot: &Snapshot) -> CheckpointId {
        CheckpointId { index: snapshot.last_index, term: snapshot.last_term }
    }
}

/// What the store reports.
#[derive(Debug)]
pub enum StoreEvent {
    /// Nothing to report yet.
    Pending,
    /// Startup finished: the recovered state.
    Loaded {
        /// Term and vote.
        hard_state: HardState,
        /// The newest usable snapshot, if any.
        snapshot: Option<Snapshot>,
        /// The entries after the snapshot (after index 0 without one), contiguous.
        entries: Vec<Entry>,
    },
    /// Every operation of the last `persist` or `save_snapshot` completed: durable through
    /// `last_index`.
    Persisted {
        /// Last index in the log.
        last_index: u64,
    },
    /// A disk operation failed, or what is on disk cannot be trusted: the voter must stop.
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Listing,
    Reading,
    Repairing,
    Ready,
}

#[derive(Clone, Copy, Debug)]
enum ReadTarget {
    State,
    Log,
    Checkpoint(CheckpointId),
}

/// What a load found damaged, down to the bytes: two reads in a row finding the same damage is
/// believed; anything else is read again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Damage {
    /// CRC of the unreadable `quorum-state` bytes.
    state: Option<u32>,
    /// Where the log stops being readable, and the CRC of the bytes after that.
    log_cut: Option<(usize, u32)>,
    /// Checkpoints that do not verify, with the CRC of their bytes.
    checkpoints: Vec<(CheckpointId, u32)>,
}

/// Disk operations that run one step after another: a step's operations are issued together (a
/// driver starts them in order) and the next step waits until all of them completed. Used where
/// an operation must not start before an earlier one is durable (a rename after its fsync).
#[derive(Debug, Default)]
struct Lane {
    steps: VecDeque<Vec<DiskOp>>,
    outstanding: usize,
}

/// The voter's Raft storage. See the module documentation.
pub struct RaftStore {
    phase: Phase,
    reads: BTreeMap<IoToken, ReadTarget>,
    state_bytes: Option<Bytes>,
    log_bytes: Option<Bytes>,
    checkpoint_bytes: BTreeMap<CheckpointId, Bytes>,
    /// `.tmp` files found while listing, deleted once loaded.
    leftovers: Vec<String>,
    rereads: u32,
    last_damage: Option<Damage>,
    loaded: Option<(HardState, Option<Snapshot>, Vec<Entry>)>,
    /// The index of the log file's first entry (of the next one appended, if it is empty).
    first_index: u64,
    /// Byte position of each entry's frame, from `first_index` on.
    positions: Vec<u64>,
    /// Term of each entry, from `first_index` on.
    terms: Vec<u64>,
    log_len: u64,
    /// Checkpoint files on disk, oldest first.
    checkpoints: Vec<CheckpointId>,
    lanes: [Lane; 2],
    lane_of: BTreeMap<IoToken, usize>,
    /// A request the store could not honour; reported at the next completion.
    error: Option<String>,
}

impl Default for RaftStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RaftStore {
    /// A store; call [`RaftStore::start`].
    pub fn new() -> Self {
        RaftStore {
            phase: Phase::Listing,
            reads: BTreeMap::new(),
            state_bytes: None,
            log_bytes: None,
            checkpoint_bytes: BTreeMap::new(),
            leftovers: Vec::new(),
            rereads: 0,
            last_damage: None,
            loaded: None,
            first_index: 1,
            positions: Vec::new(),
            terms: Vec::new(),
            log_len: 0,
            checkpoints: Vec::new(),
            lanes: [Lane::default(), Lane::default()],
            lane_of: BTreeMap::new(),
            error: None,
        }
    }

    /// Begin loading.
    pub fn start(&mut self, io: &mut impl DiskIo) {
        self.phase = Phase::Listing;
        self.reads.clear();
        self.state_bytes = None;
        self.log_bytes = None;
        self.checkpoint_bytes.clear();
        self.leftovers.clear();
        io.disk(DiskOp::List { path: DIR.into() });
    }

    /// The last index stored (the newest checkpoint's, if the log holds nothing after it).
    pub fn last_index(&self) -> u64 {
        self.first_index - 1 + self.positions.len() as u64
    }

    /// The index of the first entry the log file holds (or will hold).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The last index covered by the newest checkpoint on disk (0 without one).
    pub fn snapshot_index(&self) -> u64 {
        self.checkpoints.last().map_or(0, |c| c.index)
    }

    /// The checkpoints on disk, oldest first.
    pub fn checkpoints(&self) -> &[CheckpointId] {
        &self.checkpoints
    }

    /// Whether operations are in flight.
    pub fn busy(&self) -> bool {
        self.lanes.iter().any(|l| l.outstanding > 0 || !l.steps.is_empty())
    }

    /// Persist what `ready` asks for: the hard state, an installed snapshot, a truncation and new
    /// entries. Returns false if there was nothing to write; otherwise completes with
    /// [`StoreEvent::Persisted`].
    pub fn persist(&mut self, io: &mut impl DiskIo, ready: &Ready) -> bool {
        assert_eq!(self.phase, Phase::Ready, "persist before the store is loaded");
        assert!(!self.busy(), "persist while the previous one is in flight");
        if let Some(hs) = ready.hard_state {
            let data = frame(&bincode::serialize(&hs).expect("hard state serialises"));
            let lane = &mut self.lanes[STATE_LANE].steps;
            lane.push_back(vec![
                DiskOp::Delete { path: STATE_TMP.into() },
                DiskOp::Append { path: STATE_TMP.into(), data },
                DiskOp::Fsync { path: STATE_TMP.into() },
            ]);
            // Issued once the fsync completed: an fsync may finish after later operations, and
            // the rename must not publish an unsynced file.
            lane.push_back(vec![DiskOp::Rename { from: STATE_TMP.into(), to: STATE.into() }]);
        }
        if let Some(snapshot) = &ready.snapshot {
            self.write_checkpoint(snapshot);
            let index = snapshot.last_index;
            // The log continues the snapshot if it holds its last entry (log matching: then it
            // holds every committed entry before it too) and keeps it through this Ready.
            let continues = self.holds(index, snapshot.last_term) && ready.truncate_after.is_none_or(|t| t >= index);
            if !continues {
                self.replace_log(index + 1, Vec::new());
            }
        }
        let mut log_ops = Vec::new();
        if let Some(after) = ready.truncate_after {
            self.cut_after(after, &mut log_ops);
        }
        if !ready.entries.is_empty() {
            let mut buf = BytesMut::new();
            for e in &ready.entries {
                let next = self.last_index() + 1;
                if e.index < next {
                    // A conflicting suffix handed out again after a truncation.
                    if !buf.is_empty() {
                        self.error = Some(format!("entries handed to the store are not contiguous at {}", e.index));
                    }
                    self.cut_after(e.index - 1, &mut log_ops);
                } else if e.index > next {
                    self.error = Some(format!("entry {} handed to the store after index {}: a gap", e.index, next - 1));
                }
                self.positions.push(self.log_len + buf.len() as u64);
                self.terms.push(e.term);
                buf.extend_from_slice(&frame(&bincode::serialize(e).expect("entry serialises")));
            }
            self.log_len += buf.len() as u64;
            log_ops.push(DiskOp::Append { path: LOG.into(), data: buf.freeze() });
        }
        if !log_ops.is_empty() {
            log_ops.push(DiskOp::Fsync { path: LOG.into() });
            self.lanes[LOG_LANE].steps.push_back(log_ops);
        }
        if ready.snapshot.is_some() {
            self.delete_old_checkpoints();
        }
        let started = self.busy();
        self.kick(io);
        started
    }

    /// Save `snapshot`, the state machine at an applied index this store holds, and compact: see
    /// the module documentation. `entries` are the entries after the current newest checkpoint as
    /// Raft holds them (they are what the rewritten log keeps); they must match the log. Completes
    /// with [`StoreEvent::Persisted`]; an `Err` means nothing was started.
    pub fn save_snapshot(&mut self, io: &mut impl DiskIo, snapshot: &Snapshot, entries: &[Entry]) -> Result<(), String> {
        assert_eq!(self.phase, Phase::Ready, "snapshot before the store is loaded");
        assert!(!self.busy(), "snapshot while a persist is in flight");
        let index = snapshot.last_index;
        if index <= self.snapshot_index() || !self.holds(index, snapshot.last_term) {
            return Err(format!(
                "snapshot at {index} (term {}) is not ahead of checkpoint {} within the log {}..={}",
                snapshot.last_term,
                self.snapshot_index(),
                self.first_index,
                self.last_index()
            ));
        }
        let previous = self.checkpoints.last().copied();
        let mut rewrite = None;
        if let Some(previous) = previous.filter(|p| self.first_index <= p.index) {
            // Keep the log from just after the previous checkpoint: with it, that checkpoint can
            // stand in for the new one if the new one is ever found damaged.
            let keep: Vec<Entry> = entries.iter().filter(|e| e.index > previous.index && e.index <= self.last_index()).cloned().collect();
            for (k, e) in keep.iter().enumerate() {
                let index = previous.index + 1 + k as u64;
                if e.index != index || !self.holds(index, e.term) {
                    return Err(format!("entry {} handed for the rewritten log does not match the stored entry {index}", e.index));
                }
            }
            if previous.index + keep.len() as u64 != self.last_index() {
                return Err(format!("entries after {} handed for the rewritten log stop before {}", previous.index, self.last_index()));
            }
            rewrite = Some((previous.index + 1, keep));
        }
        self.write_checkpoint(snapshot);
        if let Some((first, keep)) = rewrite {
            self.replace_log(first, keep);
        }
        self.delete_old_checkpoints();
        self.kick(io);
        Ok(())
    }

    /// A disk completion.
    pub fn on_io(&mut self, io: &mut impl DiskIo, done: IoDone) -> StoreEvent {
        let output = match done.result {
            Ok(o) => o,
            Err(e) => return StoreEvent::Failed(format!("metadata log IO failed: {e}")),
        };
        match self.phase {
            Phase::Listing => {
                let IoOutput::List(entries) = output else { return StoreEvent::Failed("unexpected completion while listing".into()) };
                for e in entries.into_iter().filter(|e| !e.is_dir) {
                    let (path, target) = match e.name.as_str() {
                        "quorum-state" => (STATE.to_string(), ReadTarget::State),
                        "log" => (LOG.to_string(), ReadTarget::Log),
                        "quorum-state.tmp" | "log.tmp" | "checkpoint.tmp" => {
                            self.leftovers.push(format!("{DIR}/{}", e.name));
                            continue;
                        }
                        name => match CheckpointId::parse(name) {
                            Some(id) => (id.path(), ReadTarget::Checkpoint(id)),
                            None => continue,
                        },
                    };
                    let t = io.disk(DiskOp::Read { path, position: 0, len: e.len.max(1) });
                    self.reads.insert(t, target);
                }
                self.phase = Phase::Reading;
                if self.reads.is_empty() {
                    return self.finish_load(io);
                }
                StoreEvent::Pending
            }
            Phase::Reading => {
                let IoOutput::Read(bytes) = output else { return StoreEvent::Failed("unexpected completion while reading".into()) };
                match self.reads.remove(&done.token) {
                    Some(ReadTarget::State) => self.state_bytes = Some(bytes),
                    Some(ReadTarget::Log) => self.log_bytes = Some(bytes),
                    Some(ReadTarget::Checkpoint(id)) => {
                        self.checkpoint_bytes.insert(id, bytes);
                    }
                    None => return StoreEvent::Failed("unknown read completion".into()),
                }
                if self.reads.is_empty() {
                    return self.finish_load(io);
                }
                StoreEvent::Pending
            }
            Phase::Repairing => {
                if !self.step_done(io, done.token) {
                    return StoreEvent::Pending;
                }
                self.phase = Phase::Ready;
                let (hard_state, snapshot, entries) = self.loaded.take().expect("loaded before repair");
                StoreEvent::Loaded { hard_state, snapshot, entries }
            }
            Phase::Ready => {
                let idle = self.step_done(io, done.token);
                if let Some(why) = self.error.take() {
                    return StoreEvent::Failed(why);
                }
                if idle {
                    return StoreEvent::Persisted { last_index: self.last_index() };
                }
                StoreEvent::Pending
            }
        }
    }

    // ---- internals ----

    /// Whether the log holds entry `index` with term `term`.
    fn holds(&self, index: u64, term: u64) -> bool {
        index >= self.first_index && self.terms.get((index - self.first_index) as usize) == Some(&term)
    }

    /// Cut the log after `index` (no-op if it holds nothing after it).
    fn cut_after(&mut self, index: u64, ops: &mut Vec<DiskOp>) {
        let keep = (index + 1).saturating_sub(self.first_index) as usize;
        if keep >= self.positions.len() {
            return;
        }
        if index + 1 < self.first_index {
            // Below the log's start: entries a checkpoint covers, which are committed.
            self.error = Some(format!("truncation after {index} reaches below the log's first entry {}", self.first_index));
        }
        let pos = self.positions[keep];
        self.positions.truncate(keep);
        self.terms.truncate(keep);
        self.log_len = pos;
        ops.push(DiskOp::Truncate { path: LOG.into(), len: pos });
    }

    /// Queue writing `snapshot` as a checkpoint: tmp, fsync, then (once durable) rename.
    fn write_checkpoint(&mut self, snapshot: &Snapshot) {
        let id = CheckpointId::of(snapshot);
        let data = frame(&bincode::serialize(snapshot).expect("snapshot serialises"));
        let lane = &mut self.lanes[LOG_LANE].steps;
        lane.push_back(vec![
            DiskOp::Delete { path: CHECKPOINT_TMP.into() },
            DiskOp::Append { path: CHECKPOINT_TMP.into(), data },
            DiskOp::Fsync { path: CHECKPOINT_TMP.into() },
        ]);
        lane.push_back(vec![DiskOp::Rename { from: CHECKPOINT_TMP.into(), to: id.path() }]);
        if let Err(at) = self.checkpoints.binary_search(&id) {
            self.checkpoints.insert(at, id);
        }
    }

    /// Queue replacing the log by `entries`, which start at `first` (possibly none): tmp, fsync,
    /// then rename.
    fn replace_log(&mut self, first: u64, entries: Vec<Entry>) {
        let mut buf = BytesMut::new();
        self.first_index = first;
        self.positions.clear();
        self.terms.clear();
        for e in &entries {
            debug_assert_eq!(e.index, first + self.positions.len() as u64);
            self.positions.push(buf.len() as u64);
            self.terms.push(e.term);
            buf.extend_from_slice(&frame(&bincode::serialize(e).expect("entry serialises")));
        }
        self.log_len = buf.len() as u64;
        let lane = &mut self.lanes[LOG_LANE].steps;
        lane.push_back(vec![
            DiskOp::Delete { path: LOG_TMP.into() },
            DiskOp::Append { path: LOG_TMP.into(), data: buf.freeze() },
            DiskOp::Fsync { path: LOG_TMP.into() },
        ]);
        lane.push_back(vec![DiskOp::Rename { from: LOG_TMP.into(), to: LOG.into() }]);
    }

    /// Queue deleting all but the newest checkpoints.
    fn delete_old_checkpoints(&mut self) {
        let excess = self.checkpoints.len().saturating_sub(CHECKPOINTS_KEPT);
        let old: Vec<DiskOp> = self.checkpoints.drain(..excess).map(|c| DiskOp::Delete { path: c.path() }).collect();
        if !old.is_empty() {
            self.lanes[LOG_LANE].steps.push_back(old);
        }
    }

    /// Issue the next step of every idle lane.
    fn kick(&mut self, io: &mut impl DiskIo) {
        for lane in [STATE_LANE, LOG_LANE] {
            if self.lanes[lane].outstanding == 0 {
                self.issue_next(io, lane);
            }
        }
    }

    fn issue_next(&mut self, io: &mut impl DiskIo, lane: usize) {
        while let Some(step) = self.lanes[lane].steps.pop_front() {
            if step.is_empty() {
                continue;
            }
            for op in step {
                let token = io.disk(op);
                self.lane_of.insert(token, lane);
                self.lanes[lane].outstanding += 1;
            }
            return;
        }
    }

    /// One operation completed; true once every lane is idle.
    fn step_done(&mut self, io: &mut impl DiskIo, token: IoToken) -> bool {
        match self.lane_of.remove(&token) {
            Some(lane) => {
                self.lanes[lane].outstanding -= 1;
                if self.lanes[lane].outstanding == 0 {
                    self.issue_next(io, lane);
                }
            }
            None => self.error = Some("unknown disk completion".into()),
        }
        !self.busy()
    }

    fn finish_load(&mut self, io: &mut impl DiskIo) -> StoreEvent {
        let state_bytes = self.state_bytes.take();
        let hard_state = state_bytes.as_ref().map(|b| unframe(b).and_then(|(p, _)| bincode::deserialize::<HardState>(p).ok()));
        let log = self.log_bytes.take().unwrap_or_default();
        let (entries, positions, cut) = parse_log(&log);
        let mut valid: Vec<Snapshot> = Vec::new();
        let mut damaged: Vec<(CheckpointId, u32)> = Vec::new();
        for (id, bytes) in std::mem::take(&mut self.checkpoint_bytes) {
            let snapshot = unframe(&bytes).and_then(|(p, _)| bincode::deserialize::<Snapshot>(p).ok()).filter(|s| CheckpointId::of(s) == id);
            match snapshot {
                Some(s) => valid.push(s),
                None => damaged.push((id, crc32fast::hash(&bytes))),
            }
        }
        let damage = Damage {
            state: match (&hard_state, &state_bytes) {
                (Some(None), Some(b)) => Some(crc32fast::hash(b)),
                _ => None,
            },
            log_cut: (cut < log.len()).then(|| (cut, crc32fast::hash(&log[cut..]))),
            checkpoints: damaged.clone(),
        };
        if damage != Damage::default() && self.last_damage.as_ref() != Some(&damage) && self.rereads < REREADS_MAX {
            // A damaged read (a latent sector error) must not cost fsynced data: read again, and
            // believe only damage that two reads in a row find identical.
            self.rereads += 1;
            tracing::warn!(?damage, "metadata log directory damaged; reading it again");
            self.last_damage = Some(damage);
            self.start(io);
            return StoreEvent::Pending;
        }
        let hard_state = match hard_state {
            None => HardState::default(),
            Some(Some(hs)) => hs,
            Some(None) => return StoreEvent::Failed(format!("{STATE} is corrupt: refusing to forget a vote")),
        };
        if cut < log.len() {
            tracing::warn!(kept = cut, found = log.len(), "cutting the torn tail of the metadata log");
        }
        let recovered = match choose_snapshot(&valid, &damaged, &entries) {
            Ok(r) => r,
            Err(why) => return StoreEvent::Failed(why),
        };
        let snapshot_index = recovered.snapshot.as_ref().map_or(0, |s| s.last_index);
        let mut repair = Vec::new();
        if recovered.empty_log {
            tracing::warn!(
                checkpoint = snapshot_index,
                log_first = entries.first().map(|e| e.index),
                log_last = entries.last().map(|e| e.index),
                "the metadata log does not continue the newest checkpoint; emptying it"
            );
            self.first_index = snapshot_index + 1;
            self.log_len = 0;
            repair.push(DiskOp::Truncate { path: LOG.into(), len: 0 });
        } else {
            self.first_index = entries.first().map_or(snapshot_index + 1, |e| e.index);
            self.terms = entries.iter().map(|e| e.term).collect();
            self.positions = positions;
            self.log_len = cut as u64;
            if cut < log.len() {
                repair.push(DiskOp::Truncate { path: LOG.into(), len: cut as u64 });
            }
        }
        if !log.is_empty() {
            repair.push(DiskOp::Fsync { path: LOG.into() });
        }
        let mut deletes: Vec<DiskOp> = std::mem::take(&mut self.leftovers).into_iter().map(|path| DiskOp::Delete { path }).collect();
        for (id, _) in &damaged {
            tracing::warn!(checkpoint = id.file_name(), "deleting a damaged checkpoint");
            deletes.push(DiskOp::Delete { path: id.path() });
        }
        self.checkpoints = valid.iter().map(CheckpointId::of).filter(|c| c.index <= snapshot_index).collect();
        let excess = self.checkpoints.len().saturating_sub(CHECKPOINTS_KEPT);
        deletes.extend(self.checkpoints.drain(..excess).map(|c| DiskOp::Delete { path: c.path() }));
        let lane = &mut self.lanes[LOG_LANE].steps;
        lane.push_back(repair);
        lane.push_back(deletes);
        let entries: Vec<Entry> = if recovered.empty_log { Vec::new() } else { entries.into_iter().filter(|e| e.index > snapshot_index).collect() };
        tracing::info!(checkpoint = snapshot_index, first = self.first_index, last = self.last_index(), term = hard_state.term, "metadata log loaded");
        self.loaded = Some((hard_state, recovered.snapshot, entries));
        self.phase = Phase::Repairing;
        self.kick(io);
        if self.busy() {
            return StoreEvent::Pending;
        }
        self.phase = Phase::Ready;
        let (hard_state, snapshot, entries) = self.loaded.take().expect("just set");
        StoreEvent::Loaded { hard_state, snapshot, entries }
    }
}

/// The log's readable entries, their byte positions, and where reading stopped.
fn parse_log(log: &[u8]) -> (Vec<Entry>, Vec<u64>, usize) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut positions = Vec::new();
    let mut pos = 0usize;
    while let Some((payload, len)) = unframe(&log[pos..]) {
        let Ok(e) = bincode::deserialize::<Entry>(payload) else { break };
        let expected = entries.last().map_or(e.index.max(1), |p| p.index + 1);
        if e.index != expected {
            break;
        }
        positions.push(pos as u64);
        entries.push(e);
        pos += len;
    }
    (entries, positions, pos)
}

/// The outcome of choosing what to recover from.
#[derive(Debug)]
struct Recovered {
    snapshot: Option<Snapshot>,
    /// The log does not continue the snapshot: empty it.
    empty_log: bool,
}

/// Choose the snapshot to recover from, given the checkpoints that verify (`valid`), those that
/// do not, and the log's entries. See the module documentation.
fn choose_snapshot(valid: &[Snapshot], damaged: &[(CheckpointId, u32)], log: &[Entry]) -> Result<Recovered, String> {
    let first = log.first().map(|e| e.index);
    let last = log.last().map(|e| e.index);
    let term_at = |index: u64| first.filter(|f| index >= *f).and_then(|f| log.get((index - f) as usize)).map(|e| e.term);
    let newest = valid.iter().map(|s| s.last_index).chain(damaged.iter().map(|(id, _)| id.index)).max();
    let Some(newest) = newest else {
        return match first {
            Some(f) if f != 1 => Err(format!("the metadata log starts at index {f} but no checkpoint covers the entries before it")),
            _ => Ok(Recovered { snapshot: None, empty_log: false }),
        };
    };
    let mut candidates: Vec<&Snapshot> = valid.iter().collect();
    candidates.sort_by_key(|s| std::cmp::Reverse(s.last_index));
    for s in candidates {
        let term = term_at(s.last_index);
        if s.last_index == newest {
            return match (term, first) {
                (Some(t), _) if t == s.last_term => Ok(Recovered { snapshot: Some(s.clone()), empty_log: false }),
                (None, None) => Ok(Recovered { snapshot: Some(s.clone()), empty_log: false }),
                (None, Some(f)) if f == s.last_index + 1 => Ok(Recovered { snapshot: Some(s.clone()), empty_log: false }),
                (None, Some(f)) if f > s.last_index + 1 => {
                    Err(format!("the metadata log starts at index {f} but the newest checkpoint ends at {}: entries are missing", s.last_index))
                }
                // The log ends before the snapshot or holds a different entry at its index: what
                // it holds after the snapshot was never committed.
                _ => Ok(Recovered { snapshot: Some(s.clone()), empty_log: true }),
            };
        }
        // The newest checkpoint is damaged: an older one will do if the log holds everything
        // from just after it through the damaged one.
        let covers = first.is_some_and(|f| f <= s.last_index + 1) && last.is_some_and(|l| l >= newest) && term.is_none_or(|t| t == s.last_term);
        if covers {
            tracing::warn!(damaged = newest, using = s.last_index, "the newest metadata checkpoint is damaged; recovering from an older one and the log");
            return Ok(Recovered { snapshot: Some(s.clone()), empty_log: false });
        }
    }
    Err(format!("metadata checkpoint {newest} is damaged and no older checkpoint is continued by the log through it: refusing to lose committed metadata"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mem_disk::{MemDisk, QueuedIo};
    use crate::core::Rng;

    type Applied = Vec<(u64, Vec<u8>)>;

    /// Execute at most `limit` queued operations on `disk`, feeding completions to `store`
    /// (reads of `corrupt` come back with a flipped byte, once); the events it reported.
    fn run_with(disk: &mut MemDisk, io: &mut QueuedIo, store: &mut RaftStore, limit: usize, mut corrupt: Option<&str>) -> Vec<StoreEvent> {
        let mut events = Vec::new();
        let mut done = 0;
        while !io.queue.is_empty() && done < limit {
            let (token, op) = io.queue.remove(0);
            let read_of = match &op {
                DiskOp::Read { path, .. } => Some(path.clone()),
                _ => None,
            };
            let mut result = disk.apply(op);
            if let (Some(path), Some(target), Ok(IoOutput::Read(bytes))) = (&read_of, corrupt, &result) {
                if path.ends_with(target) && bytes.len() > 20 {
                    let mut damaged = bytes.to_vec();
                    damaged[bytes.len() / 2] ^= 0x10;
                    result = Ok(IoOutput::Read(Bytes::from(damaged)));
                    corrupt = None;
                }
            }
            done += 1;
            match store.on_io(io, IoDone { token, result }) {
                StoreEvent::Pending => {}
                e => events.push(e),
            }
        }
        events
    }

    fn run(disk: &mut MemDisk, io: &mut QueuedIo, store: &mut RaftStore) -> Vec<StoreEvent> {
        run_with(disk, io, store, usize::MAX, None)
    }

    type LoadResult = Result<(HardState, Option<Snapshot>, Vec<Entry>), String>;

    fn load_with(disk: &mut MemDisk, corrupt: Option<&str>) -> (RaftStore, LoadResult) {
        let mut store = RaftStore::new();
        let mut io = QueuedIo::default();
        store.start(&mut io);
        let events = run_with(disk, &mut io, &mut store, usize::MAX, corrupt);
        let result = match events.into_iter().last() {
            Some(StoreEvent::Loaded { hard_state, snapshot, entries }) => Ok((hard_state, snapshot, entries)),
            Some(StoreEvent::Failed(why)) => Err(why),
            other => panic!("load ended with {other:?}"),
        };
        (store, result)
    }

    fn load(disk: &mut MemDisk) -> (RaftStore, LoadResult) {
        load_with(disk, None)
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry { term, index, data: format!("entry {index} of term {term}").into_bytes() }
    }

    /// The state machine of these tests is the list of applied (term, data): a snapshot through
    /// `i` must hold exactly the first `i` entries.
    fn snapshot_of(entries: &[Entry], through: u64) -> Snapshot {
        let applied: Applied = entries[..through as usize].iter().map(|e| (e.term, e.data.clone())).collect();
        Snapshot { last_index: through, last_term: entries[through as usize - 1].term, data: bincode::serialize(&applied).unwrap() }
    }

    /// Everything a load recovered, as applied (term, data) from index 1.
    fn recovered(snapshot: &Option<Snapshot>, entries: &[Entry]) -> Applied {
        let mut applied: Applied = snapshot.as_ref().map_or(Vec::new(), |s| bincode::deserialize(&s.data).unwrap());
        for e in entries {
            assert_eq!(e.index, applied.len() as u64 + 1, "entries do not continue the snapshot");
            applied.push((e.term, e.data.clone()));
        }
        applied
    }

    fn as_applied(entries: &[Entry]) -> Applied {
        entries.iter().map(|e| (e.term, e.data.clone())).collect()
    }

    fn persist(disk: &mut MemDisk, store: &mut RaftStore, ready: &Ready) {
        let mut io = QueuedIo::default();
        assert!(store.persist(&mut io, ready));
        let events = run(disk, &mut io, store);
        assert!(matches!(events.last(), Some(StoreEvent::Persisted { .. })), "{events:?}");
    }

    fn save(disk: &mut MemDisk, store: &mut RaftStore, snapshot: &Snapshot, raft_entries: &[Entry]) {
        let mut io = QueuedIo::default();
        let after: Vec<Entry> = raft_entries.iter().filter(|e| e.index > store.snapshot_index()).cloned().collect();
        store.save_snapshot(&mut io, snapshot, &after).unwrap();
        let events = run(disk, &mut io, store);
        assert!(matches!(events.last(), Some(StoreEvent::Persisted { .. })), "{events:?}");
    }

    /// Our history: 1..=10 in term 1, 11..=30 in term 2.
    fn ours() -> Vec<Entry> {
        (1..=30).map(|i| entry(i, if i <= 10 { 1 } else { 2 })).collect()
    }

    /// A disk holding `ours()` durably, with checkpoints at 10 and 20 (the log from 11 on).
    fn compacted_disk() -> MemDisk {
        let mut disk = MemDisk::new();
        let (mut store, loaded) = load(&mut disk);
        assert_eq!(loaded.unwrap().2, vec![]);
        let entries = ours();
        let hs = HardState { term: 2, voted_for: Some(1) };
        persist(&mut disk, &mut store, &Ready { hard_state: Some(hs), entries: entries.clone(), ..Ready::default() });
        save(&mut disk, &mut store, &snapshot_of(&entries, 10), &entries);
        assert_eq!(store.first_index(), 1, "the first checkpoint keeps the whole log");
        save(&mut disk, &mut store, &snapshot_of(&entries, 20), &entries);
        assert_eq!(store.first_index(), 11);
        disk
    }

    fn checkpoint_path(index: u64, term: u64) -> String {
        format!("{DIR}/{}", CheckpointId { index, term }.file_name())
    }

    /// Checkpoint files are named like Kafka's and the name parses back.
    #[test]
    fn checkpoint_names() {
        let id = CheckpointId { index: 100, term: 3 };
        assert_eq!(id.file_name(), "00000000000000000100-0000000003.checkpoint");
        assert_eq!(CheckpointId::parse(&id.file_name()), Some(id));
        assert_eq!(CheckpointId::parse("100-3.checkpoint"), None);
        assert_eq!(CheckpointId::parse("00000000000000000100-0000000003.checkpoint.tmp"), None);
    }

    /// Snapshots keep the two newest checkpoints and the log from the older one on; a reload
    /// starts from the newest checkpoint and the entries after it, and recovers every entry.
    #[test]
    fn snapshots_compact_the_log_and_reload() {
        let mut disk = compacted_disk();
        let (mut store, loaded) = load(&mut disk);
        let (hs, snapshot, entries) = loaded.unwrap();
        assert_eq!(hs, HardState { term: 2, voted_for: Some(1) });
        assert_eq!(snapshot.as_ref().map(|s| s.last_index), Some(20));
        assert_eq!(entries.first().map(|e| e.index), Some(21));
        assert_eq!(recovered(&snapshot, &entries), as_applied(&ours()));
        // A third snapshot drops the first checkpoint and rewrites the log from 21 on.
        let all = ours();
        save(&mut disk, &mut store, &snapshot_of(&all, 25), &all);
        assert_eq!(store.checkpoints(), &[CheckpointId { index: 20, term: 2 }, CheckpointId { index: 25, term: 2 }]);
        assert_eq!(store.first_index(), 21);
        let more: Vec<Entry> = (31..=35).map(|i| entry(i, 3)).collect();
        persist(&mut disk, &mut store, &Ready { entries: more.clone(), ..Ready::default() });
        let mut paths = disk.paths();
        paths.sort();
        assert_eq!(paths, vec![checkpoint_path(20, 2), checkpoint_path(25, 2), LOG.to_string(), STATE.to_string()]);
        disk.crash(&mut Rng::new(1), false);
        let (store, loaded) = load(&mut disk);
        let (_, snapshot, entries) = loaded.unwrap();
        assert_eq!(snapshot.as_ref().map(|s| s.last_index), Some(25));
        let mut want = ours();
        want.extend(more);
        assert_eq!(recovered(&snapshot, &entries), as_applied(&want));
        assert_eq!((store.first_index(), store.last_index()), (21, 35));
    }

    /// One job of the crash test: what to do to the store, and every history a reload may find.
    struct Job {
        name: &'static str,
        start: fn(&mut RaftStore, &mut QueuedIo),
        outcomes: Vec<Applied>,
    }

    /// The leader's history for the install jobs: ours through 20, then term 3.
    fn leaders() -> Vec<Entry> {
        (1..=45).map(|i| if i <= 20 { entry(i, if i <= 10 { 1 } else { 2 }) } else { entry(i, 3) }).collect()
    }

    fn jobs() -> Vec<Job> {
        let before = as_applied(&ours());
        let after = as_applied(&leaders());
        vec![
            Job {
                name: "own snapshot with a log rewrite",
                start: |store, io| {
                    let all = ours();
                    let after: Vec<Entry> = all[20..].to_vec();
                    store.save_snapshot(io, &snapshot_of(&all, 25), &after).unwrap();
                },
                outcomes: vec![before.clone()],
            },
            Job {
                name: "install a snapshot the log continues",
                start: |store, io| {
                    assert!(store.persist(io, &Ready { snapshot: Some(snapshot_of(&ours(), 25)), ..Ready::default() }));
                },
                outcomes: vec![before.clone()],
            },
            Job {
                name: "install a snapshot beyond the log, then its successors",
                start: |store, io| {
                    let l = leaders();
                    let ready = Ready { snapshot: Some(snapshot_of(&l, 40)), entries: l[40..42].to_vec(), ..Ready::default() };
                    assert!(store.persist(io, &ready));
                },
                outcomes: vec![before.clone(), after[..40].to_vec(), after[..42].to_vec()],
            },
            Job {
                name: "install a snapshot the log diverges from",
                start: |store, io| {
                    let l = leaders();
                    let ready = Ready { snapshot: Some(snapshot_of(&l, 25)), truncate_after: Some(25), entries: l[25..27].to_vec(), ..Ready::default() };
                    assert!(store.persist(io, &ready));
                },
                outcomes: vec![before.clone(), after[..25].to_vec(), after[..27].to_vec()],
            },
            Job {
                name: "install a snapshot after truncating a conflicting suffix below it",
                start: |store, io| {
                    let l = leaders();
                    let ready = Ready { snapshot: Some(snapshot_of(&l, 25)), truncate_after: Some(22), entries: l[25..27].to_vec(), ..Ready::default() };
                    assert!(store.persist(io, &ready));
                },
                outcomes: vec![before.clone(), after[..25].to_vec(), after[..27].to_vec()],
            },
        ]
    }

    /// A crash after any operation of a snapshot, a compaction or an install (with or without
    /// torn writes) leaves a directory that loads, and recovers a history that is either the
    /// one before or the one after the job: nothing durable is lost, nothing stale comes back.
    /// The jobs run on a copy of a compacted disk and are cut after k operations, for every k.
    #[test]
    fn a_crash_at_any_step_loses_nothing() {
        let base = compacted_disk();
        for job in jobs() {
            let mut total = None;
            let mut seen = BTreeMap::new();
            for k in 0.. {
                if total.is_some_and(|t| k > t) {
                    break;
                }
                for (seed, tear) in [(1, false), (2, true), (3, true), (4, true)] {
                    let mut disk = base.clone();
                    let (mut store, loaded) = load(&mut disk);
                    loaded.unwrap();
                    let mut io = QueuedIo::default();
                    (job.start)(&mut store, &mut io);
                    let before = disk.ops_applied;
                    let events = run_with(&mut disk, &mut io, &mut store, k, None);
                    if io.queue.is_empty() {
                        assert!(matches!(events.last(), Some(StoreEvent::Persisted { .. })), "{}: {events:?}", job.name);
                        total.get_or_insert((disk.ops_applied - before) as usize);
                    }
                    disk.crash(&mut Rng::new(seed * 1000 + k as u64), tear);
                    let (_, loaded) = load(&mut disk);
                    let (hs, snapshot, entries) = loaded.unwrap_or_else(|e| panic!("{}: crash after {k} operations: {e}", job.name));
                    assert_eq!(hs.term, 2, "{}", job.name);
                    let got = recovered(&snapshot, &entries);
                    let which = job.outcomes.iter().position(|o| *o == got);
                    assert!(which.is_some(), "{}: crash after {k} operations recovered {} entries that are not an expected history", job.name, got.len());
                    *seen.entry(which.unwrap()).or_insert(0) += 1;
                    // A reload of what the reload left behind finds the same.
                    let (_, again) = load(&mut disk);
                    let (_, s2, e2) = again.unwrap();
                    assert_eq!(recovered(&s2, &e2), got, "{}: second reload after {k} operations", job.name);
                }
            }
            assert!(total.unwrap_or(0) >= 4, "{}: the job is too short to be interesting", job.name);
            // The last outcome (everything durable) is always reached; with several outcomes
            // the first (nothing happened) is too.
            assert!(seen.contains_key(&(job.outcomes.len() - 1)), "{}: {seen:?}", job.name);
        }
    }

    /// The newest checkpoint found damaged on disk is replaced by the older one plus the log
    /// (and deleted); with both damaged, the store refuses to start instead of forgetting
    /// committed entries.
    #[test]
    fn a_damaged_checkpoint_falls_back_or_fails_loudly() {
        let mut disk = compacted_disk();
        let (mut store, loaded) = load(&mut disk);
        loaded.unwrap();
        let all = ours();
        save(&mut disk, &mut store, &snapshot_of(&all, 25), &all);
        let damage = |disk: &mut MemDisk, path: &str| {
            disk.apply(DiskOp::WriteAt { path: path.into(), position: 30, data: Bytes::from_static(&[0xee]) }).unwrap();
            disk.apply(DiskOp::Fsync { path: path.into() }).unwrap();
        };
        let mut one = disk.clone();
        damage(&mut one, &checkpoint_path(25, 2));
        let (_, loaded) = load(&mut one);
        let (_, snapshot, entries) = loaded.unwrap();
        assert_eq!(snapshot.as_ref().map(|s| s.last_index), Some(20));
        assert_eq!(recovered(&snapshot, &entries), as_applied(&all));
        assert_eq!(one.file(&checkpoint_path(25, 2)), None, "the damaged checkpoint is deleted");
        let mut both = disk.clone();
        damage(&mut both, &checkpoint_path(25, 2));
        damage(&mut both, &checkpoint_path(20, 2));
        let (_, loaded) = load(&mut both);
        let why = loaded.unwrap_err();
        assert!(why.contains("refusing to lose committed metadata"), "{why}");
        // After an install beyond the log, the log starts after the new checkpoint: the older
        // one cannot stand in for it.
        let mut installed = disk.clone();
        let (mut store, loaded) = load(&mut installed);
        loaded.unwrap();
        persist(&mut installed, &mut store, &Ready { snapshot: Some(snapshot_of(&leaders(), 40)), ..Ready::default() });
        assert_eq!(store.first_index(), 41);
        damage(&mut installed, &checkpoint_path(40, 3));
        let (_, loaded) = load(&mut installed);
        assert!(loaded.is_err());
    }

    /// A checkpoint read that comes back corrupted once (a latent sector error) is read again
    /// and used, not mistaken for damage.
    #[test]
    fn a_transient_read_error_is_read_again() {
        let mut disk = compacted_disk();
        let (_, loaded) = load_with(&mut disk, Some(&CheckpointId { index: 20, term: 2 }.file_name()));
        let (_, snapshot, _) = loaded.unwrap();
        assert_eq!(snapshot.map(|s| s.last_index), Some(20));
        assert!(disk.file(&checkpoint_path(20, 2)).is_some());
        let (_, loaded) = load_with(&mut disk, Some("log"));
        let (_, snapshot, entries) = loaded.unwrap();
        assert_eq!(recovered(&snapshot, &entries), as_applied(&ours()));
    }

    /// A torn tail of the log is cut and the entries before it kept; a log that starts after
    /// index 1 with no checkpoint in front of it is refused.
    #[test]
    fn torn_tail_and_missing_checkpoint() {
        let mut disk = compacted_disk();
        disk.apply(DiskOp::Append { path: LOG.into(), data: Bytes::from_static(b"\x00\x00\x00\x30torn") }).unwrap();
        disk.apply(DiskOp::Fsync { path: LOG.into() }).unwrap();
        let (store, loaded) = load(&mut disk);
        let (_, snapshot, entries) = loaded.unwrap();
        assert_eq!(recovered(&snapshot, &entries), as_applied(&ours()));
        assert_eq!(store.last_index(), 30);
        let (_, loaded) = load(&mut disk);
        assert!(loaded.is_ok());
        for c in [checkpoint_path(10, 1), checkpoint_path(20, 2)] {
            disk.apply(DiskOp::DeleteDir { path: "none".into() }).unwrap();
            let mut files = disk.clone();
            files.durable_delete = true;
            files.apply(DiskOp::Delete { path: c }).unwrap();
            disk = files;
        }
        let (_, loaded) = load(&mut disk);
        assert!(loaded.unwrap_err().contains("no checkpoint covers"));
    }
}
