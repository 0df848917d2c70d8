//! Recovering a partition log from what reached the disk, and the checkpoint file that bounds the
//! work (Kafka's recovery point and log start offset checkpoints, in one file per partition).
//!
//! Steps, each a disk effect whose completion drives the next:
//! 1. `List` the directory. Leftover `*.tmp`, `*.deleted` and `*.cleaned` files, and index files
//!    without a `.log`, are deleted.
//! 2. `Read` the checkpoint: recovery point (everything below was fsynced), log start offset, the
//!    leader epoch cache of the durable batches and the caller's blob. A checkpoint failing its
//!    crc32 is ignored (recovery point = log start). Segments entirely below the log start offset
//!    are deleted. A checkpoint in the old `RNC1` format (no epoch cache) makes the scan start at
//!    the first segment.
//! 3. Segments below the one holding the last batch before the recovery point: `Read` their
//!    index files until two reads in a row agree (a latent sector error can turn an entry into
//!    another that passes validation) and validate them. The first one that fails validation, or
//!    whose reads never agree, moves the scan start back to it.
//! 4. From the scan start on: `Read` each segment in 1 MiB chunks, `batch::check_one` every batch
//!    (CRC-32C) and check that base offsets continue densely across batches and segments. At the
//!    first torn, corrupt or non-contiguous batch the segment is `Truncate`d there and every later
//!    segment deleted. Scanned segments get their indexes rebuilt and rewritten.
//! 5. If the checkpoint's recovery point lies beyond the recovered log end, or the batch ending
//!    there is not the one the checkpoint names (a truncation deleted or replaced data, then the
//!    node crashed before the checkpoint recording it was in place, while data written after the
//!    truncation survived unsynced), its blob describes records that are gone: it is dropped and every segment is scanned again from the
//!    log start, so the caller rebuilds its state from the whole log; the log then replaces the
//!    stale checkpoint before it fsyncs anything ([`Recovered::stale_checkpoint`]).
//! 6. The leader epoch cache: the checkpoint's entries starting below the first scanned segment,
//!    extended from every scanned batch header ([`EpochCache::assign`]), without the entries at or
//!    beyond the recovered log end. When the log restarts empty at its start offset, the
//!    checkpoint's entries below that offset.
//! 7. When every fix-up write has completed: report the segments (those scanned with their batch
//!    marks, the others without), the log start offset, the recovery point, the checkpoint blob,
//!    the epoch cache and the headers of the batches at or after the recovery point.
//!
//! Faults survived: lost or torn unsynced writes anywhere (log, indexes, checkpoint tmp), a crash
//! in the middle of a previous recovery (every step is idempotent, deletions go through an atomic
//! rename), stale or garbage index files, a checkpoint whose log start lies beyond the recovered
//! log end (the log restarts empty at the log start offset, as Kafka does). Not survived: loss of
//! fsynced data (a disk that lies about fsync) below the recovery point goes undetected unless it
//! breaks an index's validation.
//!
//! Invariant of the result: segments are sorted, dense (`next_offset` of one = `base_offset` of the
//! next), non-empty except possibly the last, and their log files exist.

use super::batch::{self, BatchError, BatchHeader, BATCH_HEADER_LEN, LOG_OVERHEAD};
use super::leader_epoch::EpochCache;
use super::offset_index::{OffsetIndex, OFFSET_INDEX_ENTRY_LEN};
use super::segment::{self, Segment, SegmentFile, DELETED_SUFFIX};
use super::time_index::{self, TimeIndex, TIME_INDEX_ENTRY_LEN};
use super::LogConfig;
use crate::core::{DiskIo, DiskOp, IoDone, IoOutput, IoToken};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet};

/// Name of the checkpoint file inside the log directory.
pub const CHECKPOINT_FILE: &str = "partition.checkpoint";
/// Suffix of a file being written before its atomic rename.
pub const TMP_SUFFIX: &str = ".tmp";
/// Size of the chunks a segment is scanned in.
pub const SCAN_CHUNK_BYTES: u64 = 1 << 20;

/// Reads of a checkpoint that fails its check before it is given up (a latent sector error is
/// transient; a checkpoint damaged on disk is ignored after the last).
const CHECKPOINT_READ_ATTEMPTS: u32 = 3;
/// Reads of an index file, at most, to get two in a row that agree.
const INDEX_READ_ATTEMPTS: u32 = 4;
const CHECKPOINT_MAGIC_V1: &[u8; 4] = b"RNC1";
const CHECKPOINT_MAGIC: &[u8; 4] = b"RNC2";
const CHECKPOINT_FIXED_LEN: usize = 4 + 8 + 8 + 4 + 4;
/// What `RNC2` adds to the fixed part: the recovery point's batch CRC and the epoch count.
const CHECKPOINT_V2_LEN: usize = 4 + 4;
const EPOCH_ENTRY_LEN: usize = 4 + 8;

/// The checkpoint file's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every batch below this offset was fsynced.
    pub recovery_point: i64,
    /// Kafka's log start offset (advanced by DeleteRecords and retention).
    pub log_start_offset: i64,
    /// Opaque state of the caller, stored with the recovery point it is consistent with.
    pub blob: Bytes,
    /// The leader epoch cache `(epoch, start offset)` of the durable batches when written;
    /// `None` when read from an `RNC1` checkpoint, which had none.
    pub epochs: Option<Vec<(i32, i64)>>,
    /// [`segment::batch_identity`] of the batch ending at the recovery point, 0 if unknown:
    /// recovery checks it, so a
    /// checkpoint of another history (a truncation undone by a crash while data written after
    /// it survived) is recognised as stale.
    pub recovery_point_crc: u32,
}

impl Checkpoint {
    /// Layout: magic `RNC2`, recovery point i64, log start offset i64, recovery point batch CRC
    /// u32, epoch entry count u32,
    /// entries (epoch i32, start offset i64), blob length u32, blob, crc32 (crc32fast) of
    /// everything before it. Big-endian. (`RNC1`, still read, had no entry count nor entries.)
    pub fn encode(&self) -> Bytes {
        let epochs = self.epochs.as_deref().unwrap_or_default();
        let mut out = BytesMut::with_capacity(CHECKPOINT_FIXED_LEN + CHECKPOINT_V2_LEN + epochs.len() * EPOCH_ENTRY_LEN + self.blob.len());
        out.put_slice(CHECKPOINT_MAGIC);
        out.put_i64(self.recovery_point);
        out.put_i64(self.log_start_offset);
        out.put_u32(self.recovery_point_crc);
        out.put_u32(epochs.len() as u32);
        for &(epoch, start) in epochs {
            out.put_i32(epoch);
            out.put_i64(start);
        }
        out.put_u32(self.blob.len() as u32);
        out.put_slice(&self.blob);
        out.put_u32(crc32fast::hash(&out));
        out.freeze()
    }

    /// Decode and verify a checkpoint; an error means it cannot be trusted.
    pub fn decode(data: &Bytes) -> Result<Checkpoint, String> {
        let v2 = data.len() >= 4 && &data[..4] == CHECKPOINT_MAGIC;
        if data.len() < CHECKPOINT_FIXED_LEN + if v2 { CHECKPOINT_V2_LEN } else { 0 } || !(v2 || &data[..4] == CHECKPOINT_MAGIC_V1) {
            return Err(format!("checkpoint of {} bytes without header", data.len()));
        }
        let body = &data[..data.len() - 4];
        let stored = u32::from_be_bytes([data[data.len() - 4], data[data.len() - 3], data[data.len() - 2], data[data.len() - 1]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(format!("checkpoint crc stored {stored:#x} computed {computed:#x}"));
        }
        let i64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let u32_at = |at: usize| u32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]) as usize;
        let mut at = 20;
        let mut recovery_point_crc = 0;
        let epochs = if v2 {
            recovery_point_crc = u32_at(at) as u32;
            at += 4;
            // The count is never trusted for allocation: it must fit the bytes present.
            let count = u32_at(at);
            at += 4;
            if count > (body.len() - at) / EPOCH_ENTRY_LEN {
                return Err(format!("checkpoint of {} bytes claims {count} epoch entries", data.len()));
            }
            let entries = (0..count).map(|i| {
                let e = at + i * EPOCH_ENTRY_LEN;
                (i32::from_be_bytes([body[e], body[e + 1], body[e + 2], body[e + 3]]), i64_at(e + 4))
            });
            let entries = entries.collect();
            at += count * EPOCH_ENTRY_LEN;
            Some(entries)
        } else {
            None
        };
        if body.len() < at + 4 {
            return Err(format!("checkpoint of {} bytes without blob length", data.len()));
        }
        let blob_len = u32_at(at);
        at += 4;
        if body.len() != at + blob_len {
            return Err(format!("checkpoint blob length {blob_len} in {} bytes", data.len()));
        }
        Ok(Checkpoint { recovery_point: i64_at(4), log_start_offset: i64_at(12), blob: data.slice(at..at + blob_len), epochs, recovery_point_crc })
    }
}

/// What recovery hands the log.
#[derive(Debug)]
pub struct Recovered {
    /// Sorted, dense segments; the last is active.
    pub segments: Vec<Segment>,
    /// The log start offset.
    pub log_start_offset: i64,
    /// The log start offset the checkpoint on disk records (0 without one), at most
    /// `log_start_offset`: what a crash cannot take back. (The recovered start may be higher,
    /// from the first segment found, without being recorded anywhere.)
    pub checkpointed_log_start_offset: i64,
    /// Everything below is known durable (clamped to the recovered log).
    pub recovery_point: i64,
    /// The checkpoint's blob (empty without a valid checkpoint).
    pub checkpoint: Bytes,
    /// Headers of the recovered batches at or after the recovery point.
    pub replay: Vec<BatchHeader>,
    /// The leader epoch cache of the recovered log.
    pub epochs: EpochCache,
    /// The checkpoint on disk describes a longer log (its blob was dropped): the log must
    /// replace it before any fsync, or a later recovery would trust it again.
    pub stale_checkpoint: bool,
}

/// Where recovery is after a completion.
#[derive(Debug)]
pub enum Progress {
    /// Waiting for more completions.
    Pending,
    /// Finished.
    Done(Recovered),
    /// A disk operation failed; the log cannot be opened.
    Failed(String),
}

/// A segment's files as listed.
#[derive(Clone, Copy, Debug, Default)]
struct Found {
    base_offset: i64,
    /// Lengths of the `.log`, `.index`, `.timeindex` files, if present.
    lens: [Option<u64>; 3],
}

impl Found {
    fn log_len(&self) -> u64 {
        self.lens[0].unwrap_or(0)
    }
    fn exists(&self) -> [bool; 3] {
        self.lens.map(|l| l.is_some())
    }
}

#[derive(Debug)]
enum Op {
    List,
    /// A read of the checkpoint (`len` bytes), its `attempt`-th.
    ReadCheckpoint {
        len: u64,
        attempt: u32,
    },
    /// A read of an index file of a segment below the scan start; `earlier` is what the
    /// previous read of it gave, `reads` how many were issued.
    LoadIndex {
        segment: usize,
        kind: SegmentFile,
        len: u64,
        earlier: Option<Bytes>,
        reads: u32,
    },
    ScanRead {
        position: u64,
        len: u64,
    },
    Write,
}

/// The segment being scanned.
#[derive(Debug)]
struct Scan {
    /// Index into `found`.
    index: usize,
    segment: Segment,
}

/// The recovery state machine of one partition log.
#[derive(Debug)]
pub struct Recovery {
    dir: String,
    config: LogConfig,
    pending: BTreeMap<IoToken, Op>,
    found: Vec<Found>,
    checkpoint: Option<Checkpoint>,
    log_start_offset: i64,
    recovery_point: i64,
    /// Index file contents read for segments below the scan start.
    loaded: BTreeMap<(usize, u8), Bytes>,
    /// Segments whose index file reads never agreed.
    unsettled: BTreeSet<usize>,
    loads_remaining: usize,
    /// Segments below the scan start, with their loaded indexes.
    scan_from: usize,
    segments: Vec<Segment>,
    scan: Option<Scan>,
    replay: Vec<BatchHeader>,
    /// Position of the last damaged-looking batch and how often it was re-read.
    reread: (u64, u32),
    /// A batch that would start a new leader epoch, `(segment index, position, epoch)`, read once
    /// and being read again: the epoch field is outside the CRC, and a misread one would poison
    /// the epoch cache. With how many re-reads so far.
    epoch_confirm: (Option<(usize, u64, i32)>, u32),
    /// Set once every decision is taken; the result waits for the fix-up writes to complete.
    finished: bool,
    /// The epoch cache being rebuilt: checkpoint entries below the scan, then scanned batches.
    epochs: EpochCache,
    /// The whole log was scanned again because the checkpoint pointed beyond its end.
    rescanned: bool,
    /// The checkpoint points beyond the recovered log end, or at a batch it does not know.
    stale_checkpoint: bool,
    /// Whether the scan met the batch ending at the checkpoint's recovery point with the CRC
    /// the checkpoint recorded (`None`: not met).
    recovery_point_batch: Option<bool>,
}

impl Recovery {
    /// A recovery of the log in `dir` (not started).
    pub fn new(dir: String, config: LogConfig) -> Self {
        Recovery {
            dir,
            config,
            pending: BTreeMap::new(),
            found: Vec::new(),
            checkpoint: None,
            log_start_offset: 0,
            recovery_point: 0,
            loaded: BTreeMap::new(),
            unsettled: BTreeSet::new(),
            loads_remaining: 0,
            scan_from: 0,
            segments: Vec::new(),
            scan: None,
            replay: Vec::new(),
            reread: (u64::MAX, 0),
            epoch_confirm: (None, 0),
            finished: false,
            epochs: EpochCache::new(),
            rescanned: false,
            stale_checkpoint: false,
            recovery_point_batch: None,
        }
    }

    /// Issue the first operation (List the directory).
    pub fn start(&mut self, io: &mut impl DiskIo) {
        let token = io.disk(DiskOp::List { path: self.dir.clone() });
        self.pending.insert(token, Op::List);
    }

    /// Whether `token` is one of recovery's operations.
    pub fn owns(&self, token: IoToken) -> bool {
        self.pending.contains_key(&token)
    }

    /// Advance with one of recovery's completions.
    pub fn on_io(&mut self, io: &mut impl DiskIo, done: IoDone) -> Progress {
        let Some(op) = self.pending.remove(&done.token) else {
            return Progress::Pending;
        };
        let output = match done.result {
            Ok(output) => output,
            Err(error) => return Progress::Failed(format!("recovery of {}: {op:?} failed: {error}", self.dir)),
        };
        match (op, output) {
            (Op::List, IoOutput::List(entries)) => self.on_list(io, entries),
            (Op::ReadCheckpoint { len, attempt }, IoOutput::Read(data)) => match Checkpoint::decode(&data) {
                Ok(checkpoint) => {
                    self.checkpoint = Some(checkpoint);
                    self.after_checkpoint(io);
                }
                // A read that came back damaged (a latent sector error) may read right again: the
                // log start offset is recorded nowhere else.
                Err(error) if attempt + 1 < CHECKPOINT_READ_ATTEMPTS => {
                    tracing::warn!(dir = %self.dir, %error, attempt = attempt + 1, "damaged checkpoint read, reading again");
                    self.read_checkpoint(io, len, attempt + 1);
                }
                Err(error) => {
                    tracing::warn!(dir = %self.dir, %error, "ignoring checkpoint");
                    self.after_checkpoint(io);
                }
            },
            (Op::LoadIndex { segment, kind, len, earlier, reads }, IoOutput::Read(data)) => {
                // Kept only once two reads agree: a latent sector error can turn an entry into
                // another that passes validation (offset 55 into 39 at the same position, sim seed
                // 200199), and nothing reads these files again while the node runs. Reads that
                // keep disagreeing leave the segment to be rebuilt from its log.
                let agreed = earlier.as_ref() == Some(&data);
                if !agreed && reads < INDEX_READ_ATTEMPTS {
                    self.load_index(io, segment, kind, len, Some(data), reads);
                } else {
                    if !agreed {
                        tracing::warn!(dir = %self.dir, base_offset = self.found[segment].base_offset, ?kind, "index file read differently {reads} times");
                        self.unsettled.insert(segment);
                    }
                    self.loaded.insert((segment, kind as u8), data);
                    self.loads_remaining -= 1;
                    if self.loads_remaining == 0 {
                        self.after_loads(io);
                    }
                }
            }
            (Op::ScanRead { position, len }, IoOutput::Read(data)) => self.on_scan_read(io, position, len, data),
            (Op::Write, _) => {}
            (op, output) => return Progress::Failed(format!("recovery of {}: {op:?} answered {output:?}", self.dir)),
        }
        if self.finished && self.pending.is_empty() {
            return Progress::Done(self.result());
        }
        Progress::Pending
    }

    fn write(&mut self, io: &mut impl DiskIo, op: DiskOp) {
        let token = io.disk(op);
        self.pending.insert(token, Op::Write);
    }

    fn delete_found(&mut self, io: &mut impl DiskIo, from: usize) {
        let doomed: Vec<Found> = self.found.drain(from..).collect();
        for found in doomed {
            tracing::warn!(dir = %self.dir, base_offset = found.base_offset, "deleting segment during recovery");
            for op in segment::delete_ops(&self.dir, found.base_offset, found.exists()) {
                self.write(io, op);
            }
        }
    }

    fn on_list(&mut self, io: &mut impl DiskIo, entries: Vec<crate::core::DirEntry>) {
        let mut found: BTreeMap<i64, Found> = BTreeMap::new();
        let mut checkpoint_len = None;
        for entry in entries.into_iter().filter(|e| !e.is_dir) {
            if entry.name == CHECKPOINT_FILE {
                checkpoint_len = Some(entry.len);
            } else if entry.name.ends_with(TMP_SUFFIX) || entry.name.ends_with(DELETED_SUFFIX) || entry.name.ends_with(super::cleaner::CLEANED_SUFFIX) {
                let path = format!("{}/{}", self.dir, entry.name);
                self.write(io, DiskOp::Delete { path });
            } else if let Some((base_offset, kind)) = segment::parse_file_name(&entry.name) {
                let f = found.entry(base_offset).or_insert(Found { base_offset, lens: [None; 3] });
                f.lens[kind as usize] = Some(entry.len);
            }
        }
        for orphan in found.values().filter(|f| f.lens[0].is_none()) {
            for op in segment::delete_ops(&self.dir, orphan.base_offset, orphan.exists()) {
                self.write(io, op);
            }
        }
        self.found = found.into_values().filter(|f| f.lens[0].is_some()).collect();
        match checkpoint_len {
            Some(len) => self.read_checkpoint(io, len, 0),
            None => self.after_checkpoint(io),
        }
    }

    fn read_checkpoint(&mut self, io: &mut impl DiskIo, len: u64, attempt: u32) {
        let path = format!("{}/{CHECKPOINT_FILE}", self.dir);
        let token = io.disk(DiskOp::Read { path, position: 0, len });
        self.pending.insert(token, Op::ReadCheckpoint { len, attempt });
    }

    fn after_checkpoint(&mut self, io: &mut impl DiskIo) {
        let first_base = self.found.first().map(|f| f.base_offset);
        let (checkpoint_start, checkpoint_point) = match &self.checkpoint {
            Some(c) => (c.log_start_offset, Some(c.recovery_point)),
            None => (first_base.unwrap_or(0), None),
        };
        self.log_start_offset = checkpoint_start.max(first_base.unwrap_or(i64::MIN));
        self.recovery_point = checkpoint_point.unwrap_or(self.log_start_offset).max(self.log_start_offset);
        // Segments entirely below the log start offset (their successor starts at or below it).
        let below = self.found.windows(2).take_while(|w| w[1].base_offset <= self.log_start_offset).count();
        if below > 0 {
            let doomed: Vec<Found> = self.found.drain(..below).collect();
            for found in doomed {
                for op in segment::delete_ops(&self.dir, found.base_offset, found.exists()) {
                    self.write(io, op);
                }
            }
        }
        if self.found.is_empty() {
            return self.finish(io);
        }
        // Scan from the segment holding the last batch below the recovery point: a segment that
        // starts exactly at the recovery point may have been rolled after that flush was issued,
        // so the previous segment's final time index entry may not be durable.
        self.scan_from = self.found.iter().rposition(|f| f.base_offset < self.recovery_point).unwrap_or(0);
        if self.checkpoint.as_ref().is_none_or(|c| c.epochs.is_none()) {
            // No epoch cache to start from: rebuild it from every batch.
            self.scan_from = 0;
        }
        for segment in 0..self.scan_from {
            for kind in [SegmentFile::OffsetIndex, SegmentFile::TimeIndex] {
                match self.found[segment].lens[kind as usize] {
                    Some(len) if len > 0 => {
                        self.load_index(io, segment, kind, len, None, 0);
                        self.loads_remaining += 1;
                    }
                    _ => {
                        self.loaded.insert((segment, kind as u8), Bytes::new());
                    }
                }
            }
        }
        if self.loads_remaining == 0 {
            self.after_loads(io);
        }
    }

    fn load_index(&mut self, io: &mut impl DiskIo, segment: usize, kind: SegmentFile, len: u64, earlier: Option<Bytes>, reads: u32) {
        let path = format!("{}/{}", self.dir, segment::file_name(self.found[segment].base_offset, kind));
        let token = io.disk(DiskOp::Read { path, position: 0, len });
        self.pending.insert(token, Op::LoadIndex { segment, kind, len, earlier, reads: reads + 1 });
    }

    /// Validate the loaded indexes of the segments below the scan start; the first failure moves
    /// the scan start back.
    fn after_loads(&mut self, io: &mut impl DiskIo) {
        for i in 0..self.scan_from {
            match self.load_segment(i) {
                Ok(segment) => self.segments.push(segment),
                Err(error) => {
                    tracing::warn!(dir = %self.dir, base_offset = self.found[i].base_offset, %error, "rebuilding segment");
                    self.scan_from = i;
                    break;
                }
            }
        }
        self.segments.truncate(self.scan_from);
        self.loaded.clear();
        self.unsettled.clear();
        self.start_epochs_below(self.found[self.scan_from].base_offset);
        self.begin_scan(io, self.scan_from);
    }

    /// Start the epoch cache with the checkpoint's entries below `offset` (the scan adds the rest).
    fn start_epochs_below(&mut self, offset: i64) {
        let entries = self.checkpoint.as_ref().and_then(|c| c.epochs.clone()).unwrap_or_default();
        self.epochs = EpochCache::from_entries(entries.into_iter().filter(|&(_, start)| start < offset));
    }

    fn load_segment(&self, i: usize) -> Result<Segment, String> {
        if self.unsettled.contains(&i) {
            return Err("its index files read differently every time".to_string());
        }
        let found = self.found[i];
        let next_offset = self.found[i + 1].base_offset;
        let relative_end = (next_offset - found.base_offset) as u64;
        if found.log_len() == 0 || relative_end > u32::MAX as u64 {
            return Err(format!("segment of {} bytes followed by offset {next_offset}", found.log_len()));
        }
        let empty = Bytes::new();
        let offset_data = self.loaded.get(&(i, SegmentFile::OffsetIndex as u8)).unwrap_or(&empty);
        let time_data = self.loaded.get(&(i, SegmentFile::TimeIndex as u8)).unwrap_or(&empty);
        let max_offset_entries = (self.config.segment_index_bytes as usize / OFFSET_INDEX_ENTRY_LEN).max(1);
        let max_time_entries = (self.config.segment_index_bytes as usize / TIME_INDEX_ENTRY_LEN).max(1);
        let mut segment = Segment::new(found.base_offset, &self.config);
        segment.offset_index = OffsetIndex::parse(offset_data, found.log_len(), relative_end, max_offset_entries)?;
        segment.time_index = TimeIndex::parse(time_data, relative_end, max_time_entries)?;
        segment.next_offset = next_offset;
        segment.size_bytes = found.log_len();
        if let Some(last) = segment.time_index.last() {
            segment.max_timestamp = last.timestamp;
            segment.offset_of_max_timestamp = found.base_offset + last.relative_offset as i64;
        }
        segment.index_files_exist = (found.lens[1].is_some(), found.lens[2].is_some());
        segment.batches = None; // not scanned: batch boundaries unknown
        Ok(segment)
    }

    fn begin_scan(&mut self, io: &mut impl DiskIo, index: usize) {
        let segment = Segment::new(self.found[index].base_offset, &self.config);
        self.scan = Some(Scan { index, segment });
        // Each segment has its own re-read budget: damage at position 0 of several segments in a
        // row (many small segments, e.g. after compaction) is not one position read again.
        self.reread = (u64::MAX, 0);
        self.scan_read(io, 0, SCAN_CHUNK_BYTES);
    }

    fn scan_read(&mut self, io: &mut impl DiskIo, position: u64, len_hint: u64) {
        let Some(scan) = &self.scan else { return };
        let file_len = self.found[scan.index].log_len();
        let len = len_hint.max(SCAN_CHUNK_BYTES).min(file_len - position);
        let path = scan.segment.path(&self.dir, SegmentFile::Log);
        let token = io.disk(DiskOp::Read { path, position, len });
        self.pending.insert(token, Op::ScanRead { position, len });
    }

    fn on_scan_read(&mut self, io: &mut impl DiskIo, position: u64, len: u64, data: Bytes) {
        let Some(mut scan) = self.scan.take() else { return };
        if (data.len() as u64) < len {
            // A short read: the file is shorter than listed (it ends here).
            self.found[scan.index].lens[0] = Some(position + data.len() as u64);
        }
        let file_len = self.found[scan.index].log_len();
        let mut at = 0usize;
        loop {
            let here = position + at as u64;
            if here >= file_len {
                return self.end_segment(io, scan, true);
            }
            let rest = &data[at..];
            let in_file = file_len - here;
            match batch::check_one_with(rest, !crate::planted!("recovery-skips-crc")) {
                Ok(header) if header.base_offset == scan.segment.next_offset => {
                    let epoch = header.partition_leader_epoch;
                    // The leader epoch is outside the batch's CRC, and a torn write can damage it
                    // behind an intact header: an epoch no batch can carry (below -1) is damage,
                    // as a bad CRC is (simulator seed 52339). An epoch below an earlier batch's
                    // is not judged here: the damaged one may be that earlier, higher epoch
                    // (seed 50003, where cutting at the lower one lost acknowledged records).
                    if epoch < -1 {
                        tracing::warn!(dir = %self.dir, offset = header.base_offset, epoch, "batch carries an impossible leader epoch");
                        return self.cut_or_reread(io, scan, here);
                    }
                    if epoch >= 0 && self.epochs.latest_epoch().is_none_or(|latest| epoch > latest) {
                        // A new epoch starts here only if a second read says so too.
                        const EPOCH_REREADS: u32 = 4;
                        let claim = Some((scan.index, here, epoch));
                        let (confirming, rereads) = self.epoch_confirm;
                        if confirming != claim && rereads < EPOCH_REREADS {
                            let same_batch = confirming.is_some_and(|(i, p, _)| (i, p) == (scan.index, here));
                            self.epoch_confirm = (claim, if same_batch { rereads + 1 } else { 1 });
                            self.scan = Some(scan);
                            return self.scan_read(io, here, 0);
                        }
                        self.epoch_confirm = (None, 0);
                    }
                    let bytes = &rest[..header.total_len()];
                    let offset_of_max = time_index::offset_of_max_timestamp(bytes, &header);
                    scan.segment.on_batch(&header, offset_of_max, self.config.index_interval_bytes);
                    if scan.segment.created_ms.is_none() && header.max_timestamp >= 0 {
                        scan.segment.created_ms = Some(header.max_timestamp);
                    }
                    if header.base_offset >= self.recovery_point {
                        self.replay.push(header);
                    }
                    self.epochs.assign(header.partition_leader_epoch, header.base_offset);
                    if let Some(c) = self.checkpoint.as_ref().filter(|c| c.recovery_point_crc != 0 && header.next_offset() == c.recovery_point) {
                        self.recovery_point_batch = Some(segment::batch_identity(&header) == c.recovery_point_crc);
                    }
                    at += header.total_len();
                }
                Ok(header) => {
                    tracing::warn!(dir = %self.dir, expected = scan.segment.next_offset, found = header.base_offset, "non-contiguous batch");
                    return self.cut_or_reread(io, scan, here);
                }
                Err(BatchError::Truncated(_)) if (rest.len() as u64) < in_file => {
                    // The chunk ended inside the batch but the file goes on: read the batch whole,
                    // unless its declared length runs past the end of the file (torn).
                    let declared = declared_len(rest);
                    if declared.is_some_and(|len| len > in_file) {
                        return self.cut_or_reread(io, scan, here);
                    }
                    self.scan = Some(scan);
                    return self.scan_read(io, here, declared.unwrap_or(0));
                }
                Err(error) => {
                    tracing::warn!(dir = %self.dir, position = here, %error, "torn or corrupt batch");
                    return self.cut_or_reread(io, scan, here);
                }
            }
        }
    }

    /// A batch at `position` looks torn or corrupt. A latent sector error looks the same but goes
    /// away on a second read, so re-read a few times before truncating: cutting a log because of
    /// a transient read error would throw away fsynced records.
    fn cut_or_reread(&mut self, io: &mut impl DiskIo, scan: Scan, position: u64) {
        const REREADS: u32 = 4;
        if self.reread.0 != position {
            self.reread = (position, 0);
        }
        if self.reread.1 < REREADS {
            self.reread.1 += 1;
            self.scan = Some(scan);
            return self.scan_read(io, position, 0);
        }
        self.cut(io, scan, position)
    }

    /// Truncate the scanned segment at `position`, delete every later segment, finish.
    fn cut(&mut self, io: &mut impl DiskIo, scan: Scan, position: u64) {
        let path = scan.segment.path(&self.dir, SegmentFile::Log);
        self.write(io, DiskOp::Truncate { path, len: position });
        self.found[scan.index].lens[0] = Some(position);
        self.end_segment(io, scan, false);
    }

    /// The scanned segment is complete: rewrite its indexes, then continue with the next segment
    /// if it follows densely, else delete the rest and finish.
    fn end_segment(&mut self, io: &mut impl DiskIo, mut scan: Scan, clean: bool) {
        let next = scan.index + 1;
        let continues = clean && next < self.found.len() && self.found[next].base_offset == scan.segment.next_offset;
        if clean && next < self.found.len() && !continues {
            tracing::warn!(dir = %self.dir, expected = scan.segment.next_offset, found = self.found[next].base_offset, "non-contiguous segment");
        }
        if continues {
            scan.segment.seal();
        }
        let found = self.found[scan.index];
        scan.segment.index_files_exist = (found.lens[1].is_some(), found.lens[2].is_some());
        self.rewrite_index(io, &mut scan.segment, SegmentFile::OffsetIndex);
        self.rewrite_index(io, &mut scan.segment, SegmentFile::TimeIndex);
        // Bytes found on disk are not known to be durable until the next fsync.
        scan.segment.unsynced.log = true;
        self.segments.push(scan.segment);
        if continues {
            self.begin_scan(io, next);
        } else {
            self.delete_found(io, next.min(self.found.len()));
            self.finish(io);
        }
    }

    fn rewrite_index(&mut self, io: &mut impl DiskIo, segment: &mut Segment, kind: SegmentFile) {
        let (image, exists) = match kind {
            SegmentFile::OffsetIndex => (segment.offset_index.encode(), &mut segment.index_files_exist.0),
            _ => (segment.time_index.encode(), &mut segment.index_files_exist.1),
        };
        let path = format!("{}/{}", self.dir, segment::file_name(segment.base_offset, kind));
        let len = image.len() as u64;
        if !image.is_empty() {
            self.write(io, DiskOp::IndexWrite { path: path.clone(), position: 0, data: Bytes::from(image) });
        }
        if *exists || len > 0 {
            if *exists {
                self.write(io, DiskOp::Truncate { path, len });
            }
            *exists = true;
            match kind {
                SegmentFile::OffsetIndex => segment.unsynced.offset_index = true,
                _ => segment.unsynced.time_index = true,
            }
        }
    }

    fn finish(&mut self, io: &mut impl DiskIo) {
        let scanned_end = self.segments.last().map_or(self.log_start_offset, |s| s.next_offset);
        let beyond = self.checkpoint.as_ref().is_some_and(|c| c.recovery_point > scanned_end);
        // The batch ending at the recovery point is another one than the checkpoint's, or none.
        let other = self.recovery_point_batch != Some(true)
            && self.checkpoint.as_ref().is_some_and(|c| c.recovery_point_crc != 0 && c.recovery_point > self.log_start_offset);
        if (beyond || other) && !self.found.is_empty() && !self.rescanned {
            // The checkpoint describes a longer log than what is left, or another history (an
            // interrupted truncation): its blob is stale, so the caller must replay everything.
            self.stale_checkpoint = true;
            tracing::warn!(dir = %self.dir, scanned_end, "checkpoint beyond the log end; scanning the whole log");
            self.rescanned = true;
            if let Some(c) = &mut self.checkpoint {
                c.blob = Bytes::new();
            }
            self.recovery_point = self.log_start_offset;
            self.segments.clear();
            self.replay.clear();
            self.reread = (u64::MAX, 0);
            self.start_epochs_below(self.found[0].base_offset);
            return self.begin_scan(io, 0);
        }
        let log_end = self.segments.last().map(|s| s.next_offset);
        if log_end.is_none_or(|end| end < self.log_start_offset) {
            if log_end.is_some() {
                tracing::warn!(dir = %self.dir, ?log_end, log_start_offset = self.log_start_offset, "log ends below its start; restarting it empty");
            }
            for segment in std::mem::take(&mut self.segments) {
                for op in segment::delete_ops(&self.dir, segment.base_offset, segment.files_existing()) {
                    self.write(io, op);
                }
            }
            let mut segment = Segment::new(self.log_start_offset, &self.config);
            let path = segment.path(&self.dir, SegmentFile::Log);
            self.write(io, DiskOp::Append { path, data: Bytes::new() });
            segment.unsynced.log = true;
            self.segments.push(segment);
            self.replay.clear();
            // Nothing scanned is kept: the epochs below the start are the checkpoint's.
            self.start_epochs_below(self.log_start_offset);
        }
        let log_end = self.segments.last().map_or(self.log_start_offset, |s| s.next_offset);
        self.recovery_point = self.recovery_point.clamp(self.log_start_offset, log_end);
        if let Some(c) = self.checkpoint.as_mut().filter(|c| c.recovery_point > log_end) {
            c.blob = Bytes::new(); // it describes records that are gone
            self.stale_checkpoint = true;
        }
        self.epochs.truncate_from_end(log_end);
        self.finished = true;
    }

    fn result(&mut self) -> Recovered {
        Recovered {
            segments: std::mem::take(&mut self.segments),
            log_start_offset: self.log_start_offset,
            checkpointed_log_start_offset: self.checkpoint.as_ref().map_or(0, |c| c.log_start_offset).min(self.log_start_offset),
            recovery_point: self.recovery_point,
            checkpoint: self.checkpoint.as_ref().map(|c| c.blob.clone()).unwrap_or_default(),
            replay: std::mem::take(&mut self.replay),
            epochs: std::mem::take(&mut self.epochs),
            stale_checkpoint: self.stale_checkpoint,
        }
    }
}

/// The total length a batch header at the start of `b` declares, if the length field is present
/// and sane; never trusted for more than bounding a read by the file size.
fn declared_len(b: &[u8]) -> Option<u64> {
    if b.len() < LOG_OVERHEAD {
        return None;
    }
    let batch_length = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    if batch_length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Some(u64::MAX);
    }
    Some(batch_length as u64 + LOG_OVERHEAD as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint round-trips, and any flipped byte or cut is detected by its crc32.
    #[test]
    fn checkpoint_round_trip_and_crc() {
        let checkpoint = Checkpoint {
            recovery_point: 1234,
            log_start_offset: 17,
            blob: Bytes::from_static(b"state"),
            epochs: Some(vec![(1, 0), (4, 100)]),
            recovery_point_crc: 0xdead_beef,
        };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), checkpoint);
        for i in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] ^= 1;
            assert!(Checkpoint::decode(&Bytes::from(bad)).is_err(), "flip at {i}");
        }
        for cut in 0..bytes.len() {
            assert!(Checkpoint::decode(&bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    /// An `RNC1` checkpoint (before the epoch cache) is still read, without epochs; a hostile
    /// epoch count is an error, not an allocation.
    #[test]
    fn old_checkpoint_format_and_hostile_count() {
        let mut v1 = BytesMut::new();
        v1.put_slice(b"RNC1");
        v1.put_i64(50);
        v1.put_i64(3);
        v1.put_u32(2);
        v1.put_slice(b"ab");
        let crc = crc32fast::hash(&v1);
        v1.put_u32(crc);
        let decoded = Checkpoint::decode(&v1.freeze()).unwrap();
        assert_eq!(decoded, Checkpoint { recovery_point: 50, log_start_offset: 3, blob: Bytes::from_static(b"ab"), epochs: None, recovery_point_crc: 0 });
        let mut hostile = BytesMut::new();
        hostile.put_slice(b"RNC2");
        hostile.put_i64(0);
        hostile.put_i64(0);
        hostile.put_u32(0);
        hostile.put_u32(u32::MAX);
        hostile.put_u32(0);
        let crc = crc32fast::hash(&hostile);
        hostile.put_u32(crc);
        assert!(Checkpoint::decode(&hostile.freeze()).is_err());
    }
}
