//! Durable Raft state of a voter, in the node's `__cluster_metadata-0/` directory:
//! - `quorum-state`: the current term and vote, one frame, replaced atomically (tmp, fsync, rename);
//! - `log`: the Raft entries, one frame each, appended and fsynced before the voter answers.
//!
//! A frame is `[u32 length][u32 crc32fast of the payload][payload = bincode]`. On start the log
//! is read whole; the first frame that is short, fails its CRC, does not decode, or does not
//! follow its predecessor's index ends the log, and the file is cut there (a torn tail: it was
//! never acknowledged, because answers wait for the fsync). A corrupt `quorum-state` stops the
//! node: forgetting a vote could elect two leaders in one term.

use super::raft::{Entry, HardState, Ready};
use crate::core::{DiskIo, DiskOp, IoDone, IoOutput, IoToken};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

/// The directory of the metadata log.
pub const DIR: &str = "__cluster_metadata-0";
const LOG: &str = "__cluster_metadata-0/log";
const STATE: &str = "__cluster_metadata-0/quorum-state";
const STATE_TMP: &str = "__cluster_metadata-0/quorum-state.tmp";

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
    let payload = bytes.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, 8 + len))
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
        /// Entries, contiguous from index 1.
        entries: Vec<Entry>,
    },
    /// Every operation of the last `persist` completed: durable through `last_index`.
    Persisted {
        /// Last index in the log.
        last_index: u64,
    },
    /// A disk operation failed: the voter must stop.
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Listing,
    Reading,
    Repairing,
    Ready,
}

/// The voter's Raft storage. See the module documentation.
pub struct RaftStore {
    phase: Phase,
    reads: BTreeMap<IoToken, &'static str>,
    state_bytes: Option<Bytes>,
    log_bytes: Option<Bytes>,
    loaded: Option<(HardState, Vec<Entry>)>,
    /// Byte position of each entry's frame, by index (entries are contiguous from 1).
    positions: Vec<u64>,
    log_len: u64,
    outstanding: usize,
    failed: bool,
    state_fsync: Option<IoToken>,
    rereads: u32,
    last_cut: Option<usize>,
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
            loaded: None,
            positions: Vec::new(),
            log_len: 0,
            outstanding: 0,
            failed: false,
            state_fsync: None,
            rereads: 0,
            last_cut: None,
        }
    }

    /// Begin loading.
    pub fn start(&mut self, io: &mut impl DiskIo) {
        self.phase = Phase::Listing;
        io.disk(DiskOp::List { path: DIR.into() });
    }

    /// Persist what `ready` asks for: the hard state, a truncation and new entries. Completes
    /// with [`StoreEvent::Persisted`].
    pub fn persist(&mut self, io: &mut impl DiskIo, ready: &Ready) {
        if let Some(hs) = ready.hard_state {
            let data = frame(&bincode::serialize(&hs).expect("hard state serialises"));
            io.disk(DiskOp::Delete { path: STATE_TMP.into() });
            io.disk(DiskOp::Append { path: STATE_TMP.into(), data });
            // The rename is issued once this fsync completes: an fsync may finish after later
            // operations, and the rename must not publish an unsynced file.
            self.state_fsync = Some(io.disk(DiskOp::Fsync { path: STATE_TMP.into() }));
            self.outstanding += 4;
        }
        let mut log_changed = false;
        if let Some(after) = ready.truncate_after {
            if (after as usize) < self.positions.len() {
                let pos = self.positions[after as usize];
                self.positions.truncate(after as usize);
                self.log_len = pos;
                io.disk(DiskOp::Truncate { path: LOG.into(), len: pos });
                self.outstanding += 1;
                log_changed = true;
            }
        }
        if !ready.entries.is_empty() {
            let mut buf = BytesMut::new();
            for e in &ready.entries {
                let idx = e.index as usize;
                // The entries continue the log (Raft hands them out contiguous after a truncation).
                if idx <= self.positions.len() {
                    let pos = self.positions[idx - 1];
                    self.positions.truncate(idx - 1);
                    if !buf.is_empty() {
                        // Cannot happen: a Ready's entries are contiguous.
                        self.failed = true;
                    }
                    self.log_len = pos;
                    io.disk(DiskOp::Truncate { path: LOG.into(), len: pos });
                    self.outstanding += 1;
                }
                self.positions.push(self.log_len + buf.len() as u64);
                buf.extend_from_slice(&frame(&bincode::serialize(e).expect("entry serialises")));
            }
            self.log_len += buf.len() as u64;
            io.disk(DiskOp::Append { path: LOG.into(), data: buf.freeze() });
            self.outstanding += 1;
            log_changed = true;
        }
        if log_changed {
            io.disk(DiskOp::Fsync { path: LOG.into() });
            self.outstanding += 1;
        }
    }

    /// The last index stored.
    pub fn last_index(&self) -> u64 {
        self.positions.len() as u64
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
                for e in entries {
                    if e.name == "quorum-state" {
                        let t = io.disk(DiskOp::Read { path: STATE.into(), position: 0, len: e.len.max(1) });
                        self.reads.insert(t, "state");
                    } else if e.name == "log" {
                        let t = io.disk(DiskOp::Read { path: LOG.into(), position: 0, len: e.len.max(1) });
                        self.reads.insert(t, "log");
                    }
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
                    Some("state") => self.state_bytes = Some(bytes),
                    Some(_) => self.log_bytes = Some(bytes),
                    None => return StoreEvent::Failed("unknown read completion".into()),
                }
                if self.reads.is_empty() {
                    return self.finish_load(io);
                }
                StoreEvent::Pending
            }
            Phase::Repairing => {
                self.outstanding -= 1;
                if self.outstanding == 0 {
                    self.phase = Phase::Ready;
                    let (hard_state, entries) = self.loaded.take().expect("loaded before repair");
                    return StoreEvent::Loaded { hard_state, entries };
                }
                StoreEvent::Pending
            }
            Phase::Ready => {
                if self.state_fsync == Some(done.token) {
                    self.state_fsync = None;
                    io.disk(DiskOp::Rename { from: STATE_TMP.into(), to: STATE.into() });
                }
                self.outstanding -= 1;
                if self.failed {
                    return StoreEvent::Failed("non-contiguous entries handed to the store".into());
                }
                if self.outstanding == 0 {
                    return StoreEvent::Persisted { last_index: self.last_index() };
                }
                StoreEvent::Pending
            }
        }
    }

    fn finish_load(&mut self, io: &mut impl DiskIo) -> StoreEvent {
        let hard_state = match self.state_bytes.take() {
            None => HardState::default(),
            Some(b) => match unframe(&b).and_then(|(p, _)| bincode::deserialize::<HardState>(p).ok()) {
                Some(hs) => hs,
                None => return StoreEvent::Failed(format!("{STATE} is corrupt: refusing to forget a vote")),
            },
        };
        let log = self.log_bytes.take().unwrap_or_default();
        let mut entries = Vec::new();
        let mut pos = 0usize;
        while let Some((payload, len)) = unframe(&log[pos..]) {
            let Ok(e) = bincode::deserialize::<Entry>(payload) else { break };
            if e.index != entries.len() as u64 + 1 {
                break;
            }
            self.positions.push(pos as u64);
            entries.push(e);
            pos += len;
        }
        if pos < log.len() && self.last_cut != Some(pos) && self.rereads < 10 {
            // A damaged read (a latent sector error) must not cut fsynced entries: read again,
            // and cut only a tail that two reads in a row find damaged at the same place.
            self.rereads += 1;
            self.last_cut = Some(pos);
            tracing::warn!(kept = pos, found = log.len(), "metadata log damaged at the tail; reading it again");
            self.positions.clear();
            self.start(io);
            return StoreEvent::Pending;
        }
        self.log_len = pos as u64;
        if log.is_empty() {
            self.phase = Phase::Ready;
            return StoreEvent::Loaded { hard_state, entries };
        }
        self.loaded = Some((hard_state, entries));
        self.outstanding = 1;
        if pos < log.len() {
            tracing::warn!(kept = pos, found = log.len(), "cutting the torn tail of the metadata log");
            io.disk(DiskOp::Truncate { path: LOG.into(), len: pos as u64 });
            self.outstanding = 2;
        }
        // What was read may have come from the page cache of a process that died before its
        // fsync: make it durable before Raft treats it as acknowledged.
        io.disk(DiskOp::Fsync { path: LOG.into() });
        self.phase = Phase::Repairing;
        StoreEvent::Pending
    }
}
