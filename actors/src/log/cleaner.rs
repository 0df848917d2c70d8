//! Log compaction (Kafka's log cleaner, `cleanup.policy=compact`): keep the latest record of
//! every key, drop the records it supersedes.
//!
//! Pure functions over the bytes of whole segments decide what stays; the cleaning job at the end
//! of this file reads the segments of a [`PartitionLog`] through disk effects, runs them through
//! those functions and swaps the cleaned files in ([`PartitionLog::maybe_clean`]).
//!
//! A pass covers a *region*: the oldest non-active segments, all below the high watermark. It
//! first indexes every key of the region with the offset of its latest record ([`OffsetMap`]),
//! then rewrites each segment of the region ([`clean_segment`]):
//! - a record whose key has a later record in the region is dropped;
//! - the latest record of a key stays, unless it is a tombstone (null value) whose batch is older
//!   than `delete.retention.ms` (runnel dates a tombstone by its batch's max timestamp; Kafka by
//!   when the cleaner first saw it) and the region holds no batch the cleaner cannot walk (an
//!   older value of the key could hide in it and come back);
//! - records without a key stay (producers cannot add them to a compacted topic; ones already
//!   there are kept rather than guessed at);
//! - compressed and control batches stay whole: runnel does not decompress, so their records
//!   neither supersede nor are superseded (more is kept, never less).
//!
//! Offsets never change, and batches stay *dense*: every batch keeps its base offset and its
//! last offset delta (as Kafka's cleaner does), so a batch that lost records has gaps inside it
//! but the next batch still starts right after it. A batch that lost all its records stays as an
//! empty batch when it is its producer's last one in the region (idempotent producer state, as
//! in Kafka); the other emptied batches are merged, per run of one leader epoch, into one empty
//! batch spanning their offsets. Every recovery, replication and read rule of the log (dense
//! batches, the leader epoch cache) therefore holds for cleaned segments unchanged.

use super::batch::{self, BatchHeader, ATTR_LOG_APPEND_TIME, BATCH_HEADER_LEN, LOG_OVERHEAD};
use super::leader_epoch::EpochCache;
use super::segment::{Segment, SegmentFile, DELETED_SUFFIX};
use super::time_index::read_varint;
use super::{account_batch, epoch_checks_out, IndexBuffer, PartitionLog, Pending, State};
use crate::core::{DiskIo, DiskOp, IoOutput};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::ops::Range;

/// One record of an uncompressed batch, located in the batch's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's bytes within the batch, its length prefix included.
    pub range: Range<usize>,
    /// Its offset.
    pub offset: i64,
    /// Its key's bytes within the batch; `None` for a null key.
    pub key: Option<Range<usize>>,
    /// Its value's bytes within the batch; `None` for a null value (a tombstone).
    pub value: Option<Range<usize>>,
}

/// The records of a whole batch, `None` if the batch is compressed or a control batch (not
/// walked), or its records are malformed. Never trusts a length beyond the batch.
pub fn records(batch: &[u8], header: &BatchHeader) -> Option<Vec<Record>> {
    if header.compression() != 0 || header.is_control() || batch.len() < header.total_len() {
        return None;
    }
    let end = header.total_len();
    let mut at = BATCH_HEADER_LEN;
    let mut out = Vec::new();
    for _ in 0..header.records_count.max(0) {
        let start = at;
        let length = usize::try_from(read_varint(batch, &mut at, end)?).ok()?;
        let record_end = at.checked_add(length).filter(|&e| e <= end)?;
        at += 1; // attributes
        read_varint(batch, &mut at, record_end)?; // timestamp delta
        let offset_delta = read_varint(batch, &mut at, record_end)?;
        let field = |at: &mut usize| -> Option<Option<Range<usize>>> {
            let len = read_varint(batch, at, record_end)?;
            if len < 0 {
                return Some(None);
            }
            let range = *at..at.checked_add(len as usize).filter(|&e| e <= record_end)?;
            *at = range.end;
            Some(Some(range))
        };
        let key = field(&mut at)?;
        let value = field(&mut at)?;
        let offset = header.base_offset.checked_add(offset_delta)?;
        if !(header.base_offset..=header.last_offset()).contains(&offset) {
            return None;
        }
        out.push(Record { range: start..record_end, offset, key, value });
        at = record_end;
    }
    (at == end).then_some(out)
}

/// Key -> offset of its latest record, over a region, plus each idempotent producer's last batch.
#[derive(Debug, Default)]
pub struct OffsetMap {
    latest: BTreeMap<Vec<u8>, i64>,
    /// Producer id -> base offset of its last batch in the region.
    last_batch_of: BTreeMap<i64, i64>,
    /// The region holds a batch with records that cannot be walked (compressed, control,
    /// malformed): an older value of any key may hide in it, so no tombstone may expire.
    opaque: bool,
}

impl OffsetMap {
    /// Account for one whole, checked batch (batches in offset order).
    pub fn add(&mut self, batch: &[u8], header: &BatchHeader) {
        if header.producer_id >= 0 {
            self.last_batch_of.insert(header.producer_id, header.base_offset);
        }
        match records(batch, header) {
            Some(records) => {
                for record in records {
                    if let Some(key) = record.key {
                        self.latest.insert(batch[key].to_vec(), record.offset);
                    }
                }
            }
            None => self.opaque |= header.records_count > 0,
        }
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether no key was seen.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// What one segment's batches become.
enum Outcome {
    /// Kept byte for byte.
    Same,
    /// Some records kept (or none, for a producer's last batch): the rebuilt batch.
    Rebuilt(Vec<u8>),
    /// Emptied: may merge with its neighbours into one empty batch.
    Empty,
}

/// Clean one segment: `data` is its whole `.log` file, `batches` its checked batches (header and
/// byte range, dense). Records dropped per the module rules against `map`; tombstones in batches
/// whose max timestamp is below `tombstone_horizon_ms` (and not -1) are dropped too. Returns the
/// cleaned file, or `None` when nothing would change.
pub fn clean_segment(data: &[u8], batches: &[(BatchHeader, Range<usize>)], map: &OffsetMap, tombstone_horizon_ms: i64) -> Option<BytesMut> {
    let mut outcomes = Vec::with_capacity(batches.len());
    let mut changed = false;
    for (header, range) in batches {
        let bytes = &data[range.clone()];
        let outcome = match records(bytes, header) {
            None => Outcome::Same,
            Some(records) => {
                let keep: Vec<&Record> = records
                    .iter()
                    .filter(|r| {
                        let Some(key) = &r.key else { return true };
                        let latest = map.latest.get(&bytes[key.clone()]).copied().unwrap_or(r.offset);
                        if latest > r.offset || (crate::planted!("cleaner-drops-latest") && latest == r.offset) {
                            return false;
                        }
                        let expired = !map.opaque && header.max_timestamp >= 0 && header.max_timestamp < tombstone_horizon_ms;
                        r.value.is_some() || !expired
                    })
                    .collect();
                let producer_last = header.producer_id >= 0 && map.last_batch_of.get(&header.producer_id) == Some(&header.base_offset);
                if keep.len() == records.len() {
                    // An already empty batch that is not a producer's last may merge with others.
                    if records.is_empty() && !producer_last {
                        Outcome::Empty
                    } else {
                        Outcome::Same
                    }
                } else if keep.is_empty() && !producer_last {
                    Outcome::Empty
                } else {
                    Outcome::Rebuilt(rebuild(bytes, &keep))
                }
            }
        };
        changed |= matches!(outcome, Outcome::Rebuilt(_));
        outcomes.push(outcome);
    }
    let mut out = BytesMut::with_capacity(data.len());
    let mut i = 0;
    while i < batches.len() {
        match &outcomes[i] {
            Outcome::Same => out.put_slice(&data[batches[i].1.clone()]),
            Outcome::Rebuilt(b) => out.put_slice(b),
            Outcome::Empty => {
                let first = &batches[i].0;
                let mut last = i;
                while last + 1 < batches.len()
                    && matches!(outcomes[last + 1], Outcome::Empty)
                    && batches[last + 1].0.partition_leader_epoch == first.partition_leader_epoch
                    && batches[last + 1].0.last_offset() - first.base_offset <= i32::MAX as i64
                {
                    last += 1;
                }
                let run = &batches[i..=last];
                let already = run.len() == 1 && first.records_count == 0 && first.producer_id < 0;
                if already {
                    out.put_slice(&data[batches[i].1.clone()]);
                } else {
                    changed = true;
                    let last_offset = run.last().expect("a run").0.last_offset();
                    let max_timestamp = run.iter().map(|(h, _)| h.max_timestamp).max().unwrap_or(-1);
                    out.put_slice(&empty_batch(first, first.base_offset, last_offset, max_timestamp));
                }
                i = last;
            }
        }
        i += 1;
    }
    changed.then_some(out)
}

/// Whether `header` is an empty batch, merged by a cleaner, that starts below `log_end` and
/// covers it: a follower whose log ends there keeps the part from `log_end` on
/// ([`empty_batch_from`]).
pub fn straddles(header: &BatchHeader, log_end: i64) -> bool {
    header.records_count == 0 && header.compression() == 0 && header.base_offset < log_end && log_end <= header.last_offset()
}

/// The part from `from` on of an empty batch that starts below `from` and ends at or after it.
///
/// Replicas clean on their own schedules, so a leader may have merged emptied batches into one
/// that begins below a follower's log end (which is always the end of some original batch, so
/// only a merged empty batch can straddle it); the follower keeps the part it lacks.
pub fn empty_batch_from(header: &BatchHeader, from: i64) -> Bytes {
    assert!(straddles(header, from), "trimming {header:?} at {from}");
    Bytes::from(empty_batch(header, from, header.last_offset(), header.max_timestamp))
}

/// The batch `batch` with only `keep` of its records: same header (offsets, epoch, producer,
/// timestamps), new length, count and CRC.
fn rebuild(batch: &[u8], keep: &[&Record]) -> Vec<u8> {
    let body: usize = keep.iter().map(|r| r.range.len()).sum();
    let mut out = Vec::with_capacity(BATCH_HEADER_LEN + body);
    out.extend_from_slice(&batch[..BATCH_HEADER_LEN]);
    for r in keep {
        out.extend_from_slice(&batch[r.range.clone()]);
    }
    let batch_length = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[57..61].copy_from_slice(&(keep.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// An empty batch (no records, no producer) covering `base_offset..=last_offset` in `first`'s
/// leader epoch: what a run of emptied batches becomes.
fn empty_batch(first: &BatchHeader, base_offset: i64, last_offset: i64, max_timestamp: i64) -> Vec<u8> {
    assert!((0..=i32::MAX as i64).contains(&(last_offset - base_offset)), "empty batch from {base_offset} to {last_offset} (first {first:?})");
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN);
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&((BATCH_HEADER_LEN - LOG_OVERHEAD) as i32).to_be_bytes());
    b.extend_from_slice(&first.partition_leader_epoch.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&(first.attributes & ATTR_LOG_APPEND_TIME).to_be_bytes());
    b.extend_from_slice(&((last_offset - base_offset) as i32).to_be_bytes());
    b.extend_from_slice(&first.base_timestamp.to_be_bytes());
    b.extend_from_slice(&max_timestamp.to_be_bytes());
    b.extend_from_slice(&batch::NO_PRODUCER_ID.to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

// ---- The cleaning job: reading, rewriting and swapping segments through disk effects ----

/// A disk operation of a cleaning pass, tagged with the pass's id (completions of an abandoned
/// pass are ignored).
#[derive(Clone, Copy, Debug)]
pub(super) enum CleanOp {
    /// A whole-segment read.
    Read { job: u64, base: i64 },
    /// A write or deletion of a cleaned file: only a failure matters.
    Write { job: u64 },
    /// An fsync of a staged cleaned file.
    Synced { job: u64 },
}

impl CleanOp {
    fn job(self) -> u64 {
        match self {
            CleanOp::Read { job, .. } | CleanOp::Write { job } | CleanOp::Synced { job } => job,
        }
    }
}

/// A cleaning pass in progress.
#[derive(Debug)]
pub(super) struct CleanJob {
    id: u64,
    /// Base offsets of the region's segments, oldest first.
    bases: Vec<i64>,
    /// Exclusive end of the region.
    end: i64,
    /// Indexing the region's keys (then rewriting its segments).
    mapping: bool,
    /// The segment of `bases` being read.
    next: usize,
    map: OffsetMap,
    tombstone_horizon_ms: i64,
    /// The log's truncation count when the pass started: any truncation abandons it.
    truncations: u64,
    /// The cleaned segment whose files are being fsynced, with the fsyncs outstanding.
    staged: Option<(Segment, usize)>,
    bytes_before: u64,
    bytes_after: u64,
}

/// Suffix of a segment's cleaned files until they are swapped in.
pub const CLEANED_SUFFIX: &str = ".cleaned";

impl PartitionLog {
    /// Start a cleaning pass if the topic is compacted, none is running, and enough of the
    /// cleanable region is dirty. The region is the oldest non-active segments that end at or below
    /// `clean_bound` (the high watermark: nothing a truncation may still remove is cleaned) and the
    /// durable offset, and
    /// whose newest record is older than `min.compaction.lag.ms`; it is dirty from the end of the
    /// previous pass on, and a pass starts once the dirty bytes reach `min.cleanable.dirty.ratio`
    /// of the region's. Returns whether a pass started.
    ///
    /// The pass reads each segment of the region twice (keys first, then the rewrite; one segment
    /// in memory at a time), checking every batch (CRC, dense offsets, leader epoch against the
    /// cache) and giving up on a damaged read. A segment that changes is written to `.cleaned`
    /// files, fsynced, and swapped in: the old index files are renamed away, the cleaned log
    /// renamed over the old one, the cleaned indexes renamed in (the old time index stays valid
    /// meanwhile). A crash at any point leaves either segment whole (an offset index missing only
    /// means reads walk that segment from its start), and leftover `.cleaned`
    /// files are deleted by recovery. Reads in flight on a swapped segment start again on the new
    /// file. A truncation, a deleted segment or a failure abandons the pass.
    pub fn maybe_clean(&mut self, io: &mut impl DiskIo, clean_bound: i64, now_wall_ms: i64) -> bool {
        if !self.config.compact || self.cleaning.is_some() || !self.is_ready() {
            return false;
        }
        // Never past what is durable here either: a crash cannot then take away a record that
        // superseded one the cleaner dropped.
        let clean_bound = clean_bound.min(self.durable_offset);
        let lag_cutoff = now_wall_ms.saturating_sub(self.config.min_compaction_lag_ms);
        let candidates = self.segments.len() - 1;
        let region: Vec<&Segment> = self.segments[..candidates]
            .iter()
            .take_while(|s| s.next_offset <= clean_bound && (self.config.min_compaction_lag_ms <= 0 || s.max_timestamp < lag_cutoff))
            .collect();
        let total: u64 = region.iter().map(|s| s.size_bytes).sum();
        let dirty: u64 = region.iter().filter(|s| s.next_offset > self.cleaned_to).map(|s| s.size_bytes).sum();
        if dirty == 0 || (dirty as f64) < self.config.min_cleanable_dirty_ratio * total as f64 {
            return false;
        }
        self.clean_jobs += 1;
        let job = CleanJob {
            id: self.clean_jobs,
            bases: region.iter().map(|s| s.base_offset).collect(),
            end: region.last().expect("a dirty region").next_offset,
            mapping: true,
            next: 0,
            map: OffsetMap::default(),
            tombstone_horizon_ms: now_wall_ms.saturating_sub(self.config.delete_retention_ms),
            truncations: self.truncations,
            staged: None,
            bytes_before: 0,
            bytes_after: 0,
        };
        tracing::debug!(dir = %self.dir, end = job.end, segments = job.bases.len(), dirty, total, "cleaning");
        self.cleaning = Some(job);
        self.clean_read_next(io);
        true
    }

    /// Offsets below this were covered by the last completed cleaning pass.
    pub fn cleaned_to(&self) -> i64 {
        self.cleaned_to
    }

    /// Segments rewritten by the cleaner since the log was opened.
    pub fn segments_cleaned(&self) -> u64 {
        self.segments_cleaned
    }

    /// Whether the pass can go on: nothing it covers was truncated or deleted meanwhile.
    fn clean_valid(&self, job: &CleanJob) -> bool {
        self.is_ready() && job.truncations == self.truncations && {
            let active = self.active().base_offset;
            job.bases.iter().all(|&b| b < active && self.segment(b).is_some())
        }
    }

    fn clean_read_next(&mut self, io: &mut impl DiskIo) {
        loop {
            let Some(job) = self.cleaning.as_mut() else { return };
            if job.next == job.bases.len() {
                if job.mapping {
                    job.mapping = false;
                    job.next = 0;
                    continue;
                }
                return self.clean_finish(io);
            }
            let (id, base) = (job.id, job.bases[job.next]);
            let Some(segment) = self.segment(base) else { return self.clean_abort(io, "a segment was deleted") };
            if segment.size_bytes == 0 {
                self.cleaning.as_mut().expect("checked").next += 1;
                continue;
            }
            let (path, len) = (segment.path(&self.dir, SegmentFile::Log), segment.size_bytes);
            return self.issue(io, DiskOp::Read { path, position: 0, len }, Pending::Clean(CleanOp::Read { job: id, base }));
        }
    }

    /// A completion of one of the cleaner's operations.
    pub(super) fn on_clean_io(&mut self, io: &mut impl DiskIo, op: CleanOp, result: Result<IoOutput, crate::core::IoError>) {
        if self.cleaning.as_ref().is_none_or(|j| j.id != op.job()) {
            return; // an abandoned pass
        }
        match (op, result) {
            (CleanOp::Read { base, .. }, Ok(IoOutput::Read(data))) => self.on_clean_read(io, base, data),
            (CleanOp::Write { .. }, Ok(_)) => {}
            (CleanOp::Synced { .. }, Ok(_)) => {
                let job = self.cleaning.as_mut().expect("checked");
                let staged = job.staged.as_mut().expect("fsyncs of a staged segment");
                staged.1 -= 1;
                if staged.1 == 0 {
                    self.clean_swap(io);
                }
            }
            (op, result) => self.clean_abort(io, &format!("{op:?} answered {result:?}")),
        }
    }

    fn on_clean_read(&mut self, io: &mut impl DiskIo, base: i64, data: Bytes) {
        let job = self.cleaning.as_ref().expect("checked by the caller");
        if !self.clean_valid(job) {
            return self.clean_abort(io, "the log changed");
        }
        let segment = self.segment(base).expect("checked by clean_valid");
        let batches = match checked_batches(&data, segment, &self.epochs) {
            Ok(batches) => batches,
            // A damaged read: try again on a later pass rather than write damage back.
            Err(why) => return self.clean_abort(io, &why),
        };
        let job = self.cleaning.as_mut().expect("checked");
        if job.mapping {
            for (header, range) in &batches {
                job.map.add(&data[range.clone()], header);
            }
            job.next += 1;
            return self.clean_read_next(io);
        }
        match clean_segment(&data, &batches, &job.map, job.tombstone_horizon_ms) {
            None => {
                job.next += 1;
                self.clean_read_next(io)
            }
            Some(cleaned) => self.clean_stage(io, base, cleaned.freeze()),
        }
    }

    /// Write the cleaned segment's files and fsync them.
    fn clean_stage(&mut self, io: &mut impl DiskIo, base: i64, cleaned: Bytes) {
        let old = self.segment(base).expect("checked by the caller");
        let mut segment = Segment::new(base, &self.config);
        segment.created_ms = old.created_ms;
        let (mut offset_index, mut time_index) = (IndexBuffer::default(), IndexBuffer::default());
        for (header, range) in batch::iter_headers(&cleaned) {
            account_batch(&mut segment, &cleaned[range], &header, self.config.index_interval_bytes, &mut offset_index, &mut time_index);
        }
        time_index.add(segment.seal());
        assert_eq!(
            (segment.next_offset, segment.size_bytes),
            (old.next_offset, cleaned.len() as u64),
            "log {}: cleaning segment {base} changed its offsets",
            self.dir
        );
        let id = self.cleaning.as_ref().expect("a pass").id;
        let mut fsyncs = 0;
        let base_path = |dir: &str, kind| format!("{dir}/{}{CLEANED_SUFFIX}", super::segment::file_name(base, kind));
        let mut stage = |log: &mut PartitionLog, kind: SegmentFile, op: Option<DiskOp>| {
            let path = base_path(&log.dir, kind);
            log.issue(io, DiskOp::Delete { path: path.clone() }, Pending::Clean(CleanOp::Write { job: id }));
            if let Some(op) = op {
                log.issue(io, op, Pending::Clean(CleanOp::Write { job: id }));
                log.issue(io, DiskOp::Fsync { path }, Pending::Clean(CleanOp::Synced { job: id }));
                fsyncs += 1;
            }
        };
        let cleaned_path = |kind| base_path(&self.dir, kind);
        let log_op = DiskOp::Append { path: cleaned_path(SegmentFile::Log), data: cleaned };
        let index_op = |kind, buffer: IndexBuffer| {
            buffer.position.map(|position| DiskOp::IndexWrite { path: cleaned_path(kind), position, data: Bytes::from(buffer.data) })
        };
        let offset_op = index_op(SegmentFile::OffsetIndex, offset_index);
        let time_op = index_op(SegmentFile::TimeIndex, time_index);
        segment.index_files_exist = (offset_op.is_some(), time_op.is_some());
        stage(self, SegmentFile::Log, Some(log_op));
        stage(self, SegmentFile::OffsetIndex, offset_op);
        stage(self, SegmentFile::TimeIndex, time_op);
        self.cleaning.as_mut().expect("a pass").staged = Some((segment, fsyncs));
    }

    /// The staged segment's files are durable: swap them in (see [`PartitionLog::maybe_clean`]).
    fn clean_swap(&mut self, io: &mut impl DiskIo) {
        let job = self.cleaning.as_ref().expect("a pass");
        if !self.clean_valid(job) {
            return self.clean_abort(io, "the log changed");
        }
        let (new, _) = self.cleaning.as_mut().expect("a pass").staged.take().expect("a staged segment");
        let at = self.segments.binary_search_by_key(&new.base_offset, |s| s.base_offset).expect("checked by clean_valid");
        let old = &self.segments[at];
        let old_exist = old.index_files_exist;
        let (old_size, base) = (old.size_bytes, old.base_offset);
        // Ops take effect in issue order. The old offset index (byte positions in the old file) is
        // gone before the new log is in place; a crash before the new one is renamed in leaves
        // none, which reads treat as "walk from the start". The time index maps timestamps to
        // offsets, which cleaning keeps: the old one stays valid until the new one replaces it.
        let offset_index = new.path(&self.dir, SegmentFile::OffsetIndex);
        if old_exist.0 {
            self.issue(io, DiskOp::Rename { from: offset_index.clone(), to: format!("{offset_index}{DELETED_SUFFIX}") }, Pending::Write);
        }
        let path = new.path(&self.dir, SegmentFile::Log);
        self.issue(io, DiskOp::Rename { from: format!("{path}{CLEANED_SUFFIX}"), to: path }, Pending::Write);
        if new.index_files_exist.0 {
            self.issue(io, DiskOp::Rename { from: format!("{offset_index}{CLEANED_SUFFIX}"), to: offset_index.clone() }, Pending::Write);
        }
        if old_exist.0 {
            self.issue(io, DiskOp::Delete { path: format!("{offset_index}{DELETED_SUFFIX}") }, Pending::Write);
        }
        let time_index = new.path(&self.dir, SegmentFile::TimeIndex);
        if new.index_files_exist.1 {
            self.issue(io, DiskOp::Rename { from: format!("{time_index}{CLEANED_SUFFIX}"), to: time_index }, Pending::Write);
        } else if old_exist.1 {
            // Nothing to replace it with (no timestamps): the old one goes.
            self.issue(io, DiskOp::Delete { path: time_index }, Pending::Write);
        }
        let new_size = new.size_bytes;
        self.segments[at] = new;
        for pending in self.pending.values_mut() {
            match pending {
                Pending::Read(job) if job.segment_base == base => job.restart = true,
                Pending::Timestamp(job) if job.segment_base == base => job.stale = true,
                _ => {}
            }
        }
        tracing::debug!(dir = %self.dir, base, old_size, new_size, "cleaned segment swapped in");
        self.segments_cleaned += 1;
        let job = self.cleaning.as_mut().expect("a pass");
        job.bytes_before += old_size;
        job.bytes_after += new_size;
        job.next += 1;
        self.check_invariants();
        self.clean_read_next(io);
    }

    fn clean_finish(&mut self, io: &mut impl DiskIo) {
        let job = self.cleaning.take().expect("a pass");
        self.cleaned_to = self.cleaned_to.max(job.end);
        if job.bytes_before > 0 {
            tracing::info!(dir = %self.dir, end = job.end, keys = job.map.len(), before = job.bytes_before, after = job.bytes_after, "log cleaned");
            // The batch at the recovery point may have been rewritten: record its new identity.
            self.write_checkpoint(io, Vec::new());
        }
    }

    fn clean_abort(&mut self, io: &mut impl DiskIo, why: &str) {
        let Some(job) = self.cleaning.take() else { return };
        tracing::debug!(dir = %self.dir, why, "cleaning pass abandoned");
        if job.bytes_before > 0 && self.is_ready() {
            // Segments already swapped may hold the batch at the recovery point: record it anew.
            self.write_checkpoint(io, Vec::new());
        }
        if let Some((segment, _)) = job.staged {
            if !matches!(self.state, State::Deleted) {
                for kind in SegmentFile::ALL {
                    let path = format!("{}{CLEANED_SUFFIX}", segment.path(&self.dir, kind));
                    self.issue(io, DiskOp::Delete { path }, Pending::Clean(CleanOp::Write { job: job.id }));
                }
            }
        }
    }
}

/// The batches of a whole segment's bytes, checked as a read would check them: each CRC-valid,
/// dense from the segment's base offset to its end, with the leader epoch the cache gives.
fn checked_batches(data: &Bytes, segment: &Segment, epochs: &EpochCache) -> Result<Vec<(BatchHeader, Range<usize>)>, String> {
    if data.len() as u64 != segment.size_bytes {
        return Err(format!("read {} bytes of a {} byte segment", data.len(), segment.size_bytes));
    }
    let mut out = Vec::new();
    let (mut at, mut expected) = (0usize, segment.base_offset);
    while at < data.len() {
        let header = batch::check_one(&data[at..]).map_err(|e| format!("batch at position {at}: {e}"))?;
        if header.base_offset != expected || !epoch_checks_out(&header, epochs) {
            return Err(format!("batch at position {at}: offset {} epoch {}", header.base_offset, header.partition_leader_epoch));
        }
        expected = header.next_offset();
        out.push((header, at..at + header.total_len()));
        at += header.total_len();
    }
    if expected != segment.next_offset {
        return Err(format!("segment ends at {expected}, not {}", segment.next_offset));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{assign, build_batch, validate_batches};

    /// A batch to build: `(key, value)` records, timestamp, producer `(id, epoch, sequence)`.
    type TestBatch<'a> = (&'a [(Option<&'a str>, Option<&'a str>)], i64, (i64, i16, i32));
    /// What a reader sees of a record: offset, key, value.
    type Seen = (i64, Option<String>, Option<String>);

    /// Batches of `(key, value)` records at dense offsets from 0, with timestamp `ts` and leader
    /// epoch 0, concatenated like a segment.
    fn segment(batches: &[TestBatch<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = 0;
        for (records, ts, producer) in batches {
            let plain: Vec<_> = records.iter().map(|(k, v)| (k.map(str::as_bytes), v.map(str::as_bytes), *ts)).collect();
            let mut b = BytesMut::from(&build_batch(&plain, *producer)[..]);
            assign(&mut b, offset, 0, None);
            offset += records.len() as i64;
            out.extend_from_slice(&b);
        }
        out
    }

    /// What a reader sees: `(offset, key, value)` of every record, and the offset after the last
    /// batch; also checks the batches are dense and CRC-valid.
    fn read(data: &[u8]) -> (Vec<Seen>, i64) {
        let batches = validate_batches(data).expect("valid batches");
        let mut next = batches[0].0.base_offset;
        let mut out = Vec::new();
        for (h, range) in &batches {
            assert_eq!(h.base_offset, next, "batches dense");
            next = h.next_offset();
            let bytes = &data[range.clone()];
            for r in records(bytes, h).expect("walkable") {
                let s = |r: Option<Range<usize>>| r.map(|r| String::from_utf8(bytes[r].to_vec()).unwrap());
                out.push((r.offset, s(r.key), s(r.value)));
            }
        }
        (out, next)
    }

    fn clean(data: &[u8], horizon: i64) -> Option<Vec<u8>> {
        let batches = validate_batches(data).unwrap();
        let mut map = OffsetMap::default();
        for (h, r) in &batches {
            map.add(&data[r.clone()], h);
        }
        clean_segment(data, &batches, &map, horizon).map(|b| b.to_vec())
    }

    const NO_PRODUCER: (i64, i16, i32) = (-1, -1, -1);

    /// The latest record of each key survives at its offset; superseded ones go; keyless
    /// records stay; the log end and batch density are unchanged; a second pass changes nothing.
    #[test]
    fn keeps_latest_per_key() {
        let data = segment(&[
            (&[(Some("a"), Some("1")), (Some("b"), Some("1")), (None, Some("x"))], 10, NO_PRODUCER),
            (&[(Some("a"), Some("2"))], 10, NO_PRODUCER),
            (&[(Some("c"), Some("1")), (Some("b"), Some("2"))], 10, NO_PRODUCER),
        ]);
        let cleaned = clean(&data, 0).expect("something to clean");
        let (records, end) = read(&cleaned);
        assert_eq!(end, 6);
        let expect = |o, k: &str, v: &str| (o, Some(k.to_string()), Some(v.to_string()));
        assert_eq!(records, vec![(2, None, Some("x".into())), expect(3, "a", "2"), expect(4, "c", "1"), expect(5, "b", "2")]);
        assert!(cleaned.len() < data.len());
        assert_eq!(clean(&cleaned, 0), None, "cleaning is idempotent");
    }

    /// Emptied batches of one epoch merge into one empty batch spanning them; a producer's last
    /// batch stays (empty) for its sequence numbers.
    #[test]
    fn emptied_batches_merge_but_a_producers_last_stays() {
        let data = segment(&[
            (&[(Some("a"), Some("1"))], 10, NO_PRODUCER),
            (&[(Some("a"), Some("2"))], 10, (7, 0, 0)),
            (&[(Some("a"), Some("3"))], 10, NO_PRODUCER),
            (&[(Some("a"), Some("4"))], 10, NO_PRODUCER),
        ]);
        let cleaned = clean(&data, 0).unwrap();
        let batches = validate_batches(&cleaned).unwrap();
        let shape: Vec<_> = batches.iter().map(|(h, _)| (h.base_offset, h.last_offset(), h.records_count, h.producer_id)).collect();
        assert_eq!(shape, vec![(0, 0, 0, -1), (1, 1, 0, 7), (2, 2, 0, -1), (3, 3, 1, -1)]);
        let data = segment(&[
            (&[(Some("a"), Some("1")), (Some("b"), Some("1"))], 10, NO_PRODUCER),
            (&[(Some("a"), Some("2"))], 10, NO_PRODUCER),
            (&[(Some("b"), Some("2"))], 10, NO_PRODUCER),
            (&[(Some("a"), Some("3")), (Some("b"), Some("3"))], 10, NO_PRODUCER),
        ]);
        let cleaned = clean(&data, 0).unwrap();
        let batches = validate_batches(&cleaned).unwrap();
        let shape: Vec<_> = batches.iter().map(|(h, _)| (h.base_offset, h.last_offset(), h.records_count)).collect();
        assert_eq!(shape, vec![(0, 3, 0), (4, 5, 2)]);
        assert_eq!(read(&cleaned).1, 6);
    }

    /// A tombstone supersedes older values, and is itself dropped only once older than the
    /// horizon.
    #[test]
    fn tombstones_expire_after_the_horizon() {
        let data = segment(&[(&[(Some("a"), Some("1"))], 10, NO_PRODUCER), (&[(Some("a"), None), (Some("b"), Some("1"))], 20, NO_PRODUCER)]);
        let (records, _) = read(&clean(&data, 20).unwrap());
        assert_eq!(records, vec![(1, Some("a".into()), None), (2, Some("b".into()), Some("1".into()))]);
        let (records, end) = read(&clean(&data, 21).unwrap());
        assert_eq!(records, vec![(2, Some("b".into()), Some("1".into()))]);
        assert_eq!(end, 3);
    }

    /// A tombstone does not expire while the region holds a batch the cleaner cannot walk (here
    /// one marked compressed): the key's older value may hide in it.
    #[test]
    fn no_tombstone_expires_next_to_an_opaque_batch() {
        let mut data = segment(&[(&[(Some("a"), Some("1"))], 10, NO_PRODUCER), (&[(Some("a"), None)], 20, NO_PRODUCER)]);
        data[22] |= 0x03; // the first batch's attributes: lz4
        let crc = crc32c::crc32c(&data[21..BatchHeader::parse(&data).unwrap().total_len()]);
        data[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(clean(&data, 1_000), None, "the tombstone stays, and the opaque batch is kept whole");
        let plain = segment(&[(&[(Some("a"), Some("1"))], 10, NO_PRODUCER), (&[(Some("a"), None)], 20, NO_PRODUCER)]);
        assert_eq!(read(&clean(&plain, 1_000).unwrap()).0, vec![], "walkable: both go once the tombstone expired");
    }

    /// A malformed record list (a length pointing past the batch) is not walked, and a batch
    /// that cannot be walked is kept whole.
    #[test]
    fn hostile_records_are_kept_whole() {
        let data = segment(&[(&[(Some("a"), Some("1"))], 10, NO_PRODUCER)]);
        let header = BatchHeader::parse(&data).unwrap();
        assert!(records(&data, &header).is_some());
        let mut bad = data.clone();
        bad[BATCH_HEADER_LEN] = 0x7e; // record length 63: past the batch
        assert_eq!(records(&bad, &header), None);
        let mut bad = data.clone();
        bad[57..61].copy_from_slice(&5i32.to_be_bytes()); // five records claimed, one present
        assert_eq!(records(&bad, &BatchHeader::parse(&bad).unwrap()), None);
    }
}
