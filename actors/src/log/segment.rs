//! One log segment (Kafka's `LogSegment`): a `.log` file of whole v2 record batches stored as
//! received (base offset and leader epoch rewritten), its sparse offset and time indexes, and the
//! bookkeeping the log needs without reading the file: size, next offset, max timestamp, the
//! wall-clock time of its first append (for `segment.ms`), and which files have unsynced writes.
//!
//! Files are named after the base offset, zero-padded to 20 digits so a directory listing sorts
//! them: `00000000000000000042.log`, `.index`, `.timeindex`.
//!
//! Besides the sparse indexes, a segment written or scanned since the log started keeps one
//! [`BatchMark`] per batch (24 bytes each): where each batch starts and its max timestamp, so the
//! log can truncate at any batch boundary without reading the file. A segment recovered from its
//! index files without a scan has none (`batches == None`); a truncation inside it drops it whole.
//!
//! Invariants: batches are dense (`next_offset` of one is the `base_offset` of the next); the
//! in-memory indexes (and the batch marks, when kept) describe exactly the bytes the log has
//! issued to the file; `size_bytes` and `next_offset` count every batch issued, durable or not.
//!
//! Faults survived: none on its own; [`super::recovery`] rebuilds segments after a crash.

use super::batch::BatchHeader;
use super::offset_index::{OffsetIndex, OffsetIndexEntry, OFFSET_INDEX_ENTRY_LEN};
use super::time_index::{TimeIndex, TimeIndexEntry, TIME_INDEX_ENTRY_LEN};
use super::LogConfig;
use crate::core::DiskOp;

/// Which file of a segment a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentFile {
    /// `.log`: the batches.
    Log,
    /// `.index`: the offset index.
    OffsetIndex,
    /// `.timeindex`: the time index.
    TimeIndex,
}

impl SegmentFile {
    /// The file name extension, with the dot.
    pub fn extension(self) -> &'static str {
        match self {
            SegmentFile::Log => ".log",
            SegmentFile::OffsetIndex => ".index",
            SegmentFile::TimeIndex => ".timeindex",
        }
    }

    /// All three kinds.
    pub const ALL: [SegmentFile; 3] = [SegmentFile::Log, SegmentFile::OffsetIndex, SegmentFile::TimeIndex];
}

/// `00000000000000000042.log` for base offset 42.
pub fn file_name(base_offset: i64, kind: SegmentFile) -> String {
    format!("{base_offset:020}{}", kind.extension())
}

/// Parse a segment file name back into its base offset and kind; `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<(i64, SegmentFile)> {
    SegmentFile::ALL.into_iter().find_map(|kind| {
        let stem = name.strip_suffix(kind.extension())?;
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((stem.parse().ok()?, kind))
    })
}

/// Suffix of a file being deleted; recovery deletes leftovers.
pub const DELETED_SUFFIX: &str = ".deleted";

/// The operations deleting those of a segment's files that exist (`exists` in
/// [`SegmentFile::ALL`] order): each is renamed to `*.deleted` first, which is atomic and durable,
/// so the segment cannot reappear under its name after a crash, then deleted.
pub fn delete_ops(dir: &str, base_offset: i64, exists: [bool; 3]) -> Vec<DiskOp> {
    let mut ops = Vec::new();
    for (kind, exists) in SegmentFile::ALL.into_iter().zip(exists) {
        if exists {
            let path = format!("{dir}/{}", file_name(base_offset, kind));
            let deleted = format!("{path}{DELETED_SUFFIX}");
            ops.push(DiskOp::Rename { from: path, to: deleted.clone() });
            ops.push(DiskOp::Delete { path: deleted });
        }
    }
    ops
}

/// Index writes produced by accounting one batch: `(file position, bytes)` per index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IndexWrites {
    /// An offset index entry to write, if one was added.
    pub offset_index: Option<(u64, [u8; OFFSET_INDEX_ENTRY_LEN])>,
    /// A time index entry to write, if one was added.
    pub time_index: Option<(u64, [u8; TIME_INDEX_ENTRY_LEN])>,
}

/// Files of a segment with writes not yet covered by an fsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unsynced {
    /// The `.log` file.
    pub log: bool,
    /// The `.index` file.
    pub offset_index: bool,
    /// The `.timeindex` file.
    pub time_index: bool,
}

/// One batch of a segment, as the log remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMark {
    /// Base offset minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the `.log` file.
    pub position: u32,
    /// The batch's max timestamp.
    pub max_timestamp: i64,
    /// Offset of the first record carrying it, minus the segment's base offset.
    pub relative_offset_of_max: u32,
    /// [`batch_identity`] of the batch (identifies the batch at a recovery point, see
    /// [`super::recovery::Checkpoint::recovery_point_crc`]).
    pub crc: u32,
}

/// One segment of a partition log.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Offset of the first batch (also the file name).
    pub base_offset: i64,
    /// Offset after the last batch; equals `base_offset` when empty.
    pub next_offset: i64,
    /// Bytes issued to the `.log` file.
    pub size_bytes: u64,
    /// Largest batch max timestamp, -1 if none.
    pub max_timestamp: i64,
    /// Offset of the (first) record carrying `max_timestamp`, -1 if none.
    pub offset_of_max_timestamp: i64,
    /// Wall-clock ms of the first append (or the first batch's timestamp after recovery): the
    /// start of the `segment.ms` clock.
    pub created_ms: Option<i64>,
    /// The sparse offset index.
    pub offset_index: OffsetIndex,
    /// The sparse time index.
    pub time_index: TimeIndex,
    /// Log bytes appended since the last index entry.
    pub bytes_since_index_entry: u64,
    /// Files needing an fsync.
    pub unsynced: Unsynced,
    /// Whether the `.index` / `.timeindex` files exist (an fsync of a missing file would fail).
    pub index_files_exist: (bool, bool),
    /// Every batch of the segment, when known (see the module documentation).
    pub batches: Option<Vec<BatchMark>>,
}

impl Segment {
    /// An empty segment starting at `base_offset`.
    pub fn new(base_offset: i64, config: &LogConfig) -> Self {
        Segment {
            base_offset,
            next_offset: base_offset,
            size_bytes: 0,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            created_ms: None,
            offset_index: OffsetIndex::new(max_entries(config, OFFSET_INDEX_ENTRY_LEN)),
            time_index: TimeIndex::new(max_entries(config, TIME_INDEX_ENTRY_LEN)),
            bytes_since_index_entry: 0,
            unsynced: Unsynced::default(),
            index_files_exist: (false, false),
            batches: Some(Vec::new()),
        }
    }

    /// Which of the three files exist, in [`SegmentFile::ALL`] order.
    pub fn files_existing(&self) -> [bool; 3] {
        [true, self.index_files_exist.0, self.index_files_exist.1]
    }

    /// Path of one of this segment's files under the log directory `dir`.
    pub fn path(&self, dir: &str, kind: SegmentFile) -> String {
        // Built by hand: every append names its file, and `format!` with padding was a few
        // percent of a busy broker's CPU.
        let Ok(mut offset) = u64::try_from(self.base_offset) else { return format!("{dir}/{}", file_name(self.base_offset, kind)) };
        let mut digits = [b'0'; 20];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (offset % 10) as u8;
            offset /= 10;
        }
        let ext = kind.extension();
        let mut path = String::with_capacity(dir.len() + 1 + digits.len() + ext.len());
        path.push_str(dir);
        path.push('/');
        path.extend(digits.iter().map(|d| *d as char));
        path.push_str(ext);
        path
    }

    /// Whether the segment holds no batch.
    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// Whether the segment must roll before taking `incoming_bytes` more bytes whose last offset
    /// is `last_offset`: size (`segment.bytes`), full index (`segment.index.bytes`), age
    /// (`segment.ms`), or a relative offset that would not fit the index's 32 bits. An empty
    /// segment never rolls.
    pub fn should_roll(&self, config: &LogConfig, incoming_bytes: u64, last_offset: i64, now_wall_ms: i64) -> bool {
        if self.is_empty() {
            return false;
        }
        let too_big = self.size_bytes + incoming_bytes > config.segment_bytes.min(u32::MAX as u64);
        let index_full = self.offset_index.is_full() || self.time_index.is_full();
        let too_old = self.created_ms.is_some_and(|created| now_wall_ms.saturating_sub(created) > config.segment_ms);
        let offset_overflow = last_offset - self.base_offset > i32::MAX as i64;
        too_big || index_full || too_old || offset_overflow
    }

    /// Account for one whole batch written at the current end of the file; returns the index
    /// entries to write. `offset_of_max_timestamp` is the offset of the record carrying the
    /// batch's max timestamp. Kafka's rule: an index entry is added for a batch when more than
    /// `index.interval.bytes` were appended since the previous entry.
    pub fn on_batch(&mut self, header: &BatchHeader, offset_of_max_timestamp: i64, index_interval_bytes: u64) -> IndexWrites {
        assert_eq!(header.base_offset, self.next_offset, "batch at {} does not follow {}", header.base_offset, self.next_offset);
        let position = self.size_bytes;
        let relative_offset = self.relative(header.base_offset);
        let relative_offset_of_max = self.relative(offset_of_max_timestamp.clamp(header.base_offset, header.last_offset()));
        if let Some(batches) = &mut self.batches {
            batches.push(BatchMark {
                relative_offset,
                position: position as u32,
                max_timestamp: header.max_timestamp,
                relative_offset_of_max,
                crc: batch_identity(header),
            });
        }
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = offset_of_max_timestamp;
        }
        let mut writes = IndexWrites::default();
        if self.bytes_since_index_entry > index_interval_bytes {
            writes.offset_index = self.offset_index.append(OffsetIndexEntry { relative_offset, position: position as u32 });
            writes.time_index = self.time_index_entry(false);
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += header.total_len() as u64;
        self.size_bytes += header.total_len() as u64;
        self.next_offset = header.next_offset();
        writes
    }

    /// The batch boundary at or below `offset` (inside this segment) the segment can be cut at:
    /// `(offset of that batch, its index in the batch marks)`; `None` without batch marks.
    pub fn batch_at_or_below(&self, offset: i64) -> Option<(i64, usize)> {
        let batches = self.batches.as_ref()?;
        let relative = self.relative(offset.clamp(self.base_offset, self.next_offset));
        let at = batches.partition_point(|b| b.relative_offset <= relative).checked_sub(1)?;
        Some((self.base_offset + batches[at].relative_offset as i64, at))
    }

    /// The CRC of the batch ending exactly at `offset`, if this segment holds it and knows it.
    pub fn crc_of_batch_ending_at(&self, offset: i64) -> Option<u32> {
        let batches = self.batches.as_ref()?;
        let at = batches.partition_point(|b| self.base_offset + (b.relative_offset as i64) < offset).checked_sub(1)?;
        let next = batches.get(at + 1).map_or(self.next_offset, |b| self.base_offset + b.relative_offset as i64);
        (next == offset).then_some(batches[at].crc)
    }

    /// Cut the segment before its batch number `batch` (which must be above 0: a segment cut to
    /// nothing is deleted instead): forget the later batches and index entries and recompute the
    /// max timestamp. Returns the new lengths of the `.log`, `.index` and `.timeindex` files.
    pub fn truncate_before_batch(&mut self, batch: usize) -> (u64, u64, u64) {
        let batches = self.batches.as_mut().expect("truncating a segment with batch marks");
        assert!(batch > 0 && batch < batches.len(), "cutting segment {} before batch {batch} of {}", self.base_offset, batches.len());
        let cut = batches[batch];
        batches.truncate(batch);
        (self.max_timestamp, self.offset_of_max_timestamp) = (-1, -1);
        for mark in batches.iter() {
            if mark.max_timestamp > self.max_timestamp {
                self.max_timestamp = mark.max_timestamp;
                self.offset_of_max_timestamp = self.base_offset + mark.relative_offset_of_max as i64;
            }
        }
        self.next_offset = self.base_offset + cut.relative_offset as i64;
        self.size_bytes = cut.position as u64;
        self.bytes_since_index_entry = 0;
        let offset_index_len = self.offset_index.truncate_from(cut.relative_offset);
        let time_index_len = self.time_index.truncate_from(cut.relative_offset);
        (self.size_bytes, offset_index_len, time_index_len)
    }

    /// The final time index entry written when the segment stops being active (Kafka's
    /// `onBecomeInactiveSegment`), so a reloaded index yields the segment's max timestamp.
    pub fn seal(&mut self) -> Option<(u64, [u8; TIME_INDEX_ENTRY_LEN])> {
        self.time_index_entry(true)
    }

    fn time_index_entry(&mut self, last: bool) -> Option<(u64, [u8; TIME_INDEX_ENTRY_LEN])> {
        if self.max_timestamp < 0 {
            return None;
        }
        let relative_offset = self.relative(self.offset_of_max_timestamp);
        self.time_index.maybe_append(TimeIndexEntry { timestamp: self.max_timestamp, relative_offset }, last)
    }

    /// `offset - base_offset` as stored in the indexes.
    pub fn relative(&self, offset: i64) -> u32 {
        let relative = offset - self.base_offset;
        assert!((0..=u32::MAX as i64).contains(&relative), "offset {offset} outside segment {}", self.base_offset);
        relative as u32
    }

    /// Byte position to start reading at for `offset` (from the offset index).
    /// The index entry at or below `offset`: the base offset of the batch at that position, and
    /// the position. A read walking from there checks every header against it.
    pub fn entry_for(&self, offset: i64) -> (i64, u64) {
        let offset = offset.clamp(self.base_offset, self.base_offset + u32::MAX as i64);
        let e = self.offset_index.lookup(self.relative(offset));
        (self.base_offset + e.relative_offset as i64, e.position as u64)
    }

    /// The position of the index entry at or below `offset`.
    pub fn position_for(&self, offset: i64) -> u64 {
        let offset = offset.clamp(self.base_offset, self.base_offset + u32::MAX as i64);
        self.offset_index.lookup(self.relative(offset)).position as u64
    }
}

/// A batch's CRC-32C mixed with its partition leader epoch (which the CRC does not cover): what
/// tells two histories' batches at the same offsets apart.
pub fn batch_identity(header: &BatchHeader) -> u32 {
    header.crc ^ (header.partition_leader_epoch as u32).wrapping_mul(0x9e37_79b9)
}

fn max_entries(config: &LogConfig, entry_len: usize) -> usize {
    (config.segment_index_bytes as usize / entry_len).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::build_batch;
    use bytes::BytesMut;

    fn header_at(base_offset: i64, records: usize, timestamp: i64) -> BatchHeader {
        let recs: Vec<_> = (0..records).map(|_| (None, Some(&[7u8; 50][..]), timestamp)).collect();
        let mut b = BytesMut::from(&build_batch(&recs, (-1, -1, -1))[..]);
        crate::log::batch::assign(&mut b, base_offset, 0, None);
        BatchHeader::parse(&b).unwrap()
    }

    /// Names round-trip through parse_file_name and other files are not segments.
    #[test]
    fn file_names() {
        assert_eq!(file_name(42, SegmentFile::Log), "00000000000000000042.log");
        let config = LogConfig::default();
        for base in [0, 42, 1234567890123, i64::MAX] {
            for kind in SegmentFile::ALL {
                assert_eq!(Segment::new(base, &config).path("d/x", kind), format!("d/x/{}", file_name(base, kind)));
            }
        }
        for kind in SegmentFile::ALL {
            assert_eq!(parse_file_name(&file_name(1234, kind)), Some((1234, kind)));
        }
        assert_eq!(parse_file_name("partition.checkpoint"), None);
        assert_eq!(parse_file_name("00000000000000000042.log.deleted"), None);
        assert_eq!(parse_file_name("0000000000000000004x.log"), None);
    }

    /// Appending batches advances size and next offset and adds an index entry after every
    /// `index.interval.bytes`; the offset index then points at real batch starts.
    #[test]
    fn indexes_every_interval() {
        let config = LogConfig { index_interval_bytes: 500, ..LogConfig::default() };
        let mut segment = Segment::new(100, &config);
        let mut positions = Vec::new();
        let mut offset = 100;
        for i in 0..20 {
            let header = header_at(offset, 3, 1000 + i);
            positions.push((offset, segment.size_bytes));
            segment.on_batch(&header, offset, config.index_interval_bytes);
            offset = header.next_offset();
        }
        assert_eq!(segment.next_offset, 160);
        assert!(segment.offset_index.len() >= 3, "{} entries", segment.offset_index.len());
        for e in segment.offset_index.entries() {
            assert!(positions.contains(&(100 + e.relative_offset as i64, e.position as u64)), "{e:?}");
        }
        assert_eq!((segment.max_timestamp, segment.offset_of_max_timestamp), (1019, 157));
        assert!(segment.seal().is_some());
        assert_eq!(segment.time_index.last().unwrap().timestamp, 1019);
    }

    /// An empty segment never rolls; a full one rolls on size, age and relative offset overflow.
    #[test]
    fn roll_conditions() {
        let config = LogConfig { segment_bytes: 1000, segment_ms: 100, ..LogConfig::default() };
        let mut segment = Segment::new(0, &config);
        assert!(!segment.should_roll(&config, 5000, 0, 0));
        segment.on_batch(&header_at(0, 1, 5), 0, config.index_interval_bytes);
        segment.created_ms = Some(10);
        assert!(!segment.should_roll(&config, 10, 1, 50));
        assert!(segment.should_roll(&config, 1000, 1, 50));
        assert!(segment.should_roll(&config, 10, 1, 111));
        assert!(segment.should_roll(&config, 10, i32::MAX as i64 + 1, 50));
    }
}
