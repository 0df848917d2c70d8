//! The sparse time index of one segment (Kafka's `TimeIndex`, the `.timeindex` file), and the
//! record-level timestamp walk used to answer ListOffsets by timestamp precisely.
//!
//! An entry `(timestamp T, relative offset O)` says: when it was written, the largest timestamp in
//! the segment so far was `T`, carried by the record at offset `base + O`. Every batch appended
//! before the entry therefore has a max timestamp `<= T`, so a search for the first record with
//! timestamp `>= target` may start at the batch containing the offset of the largest entry with
//! `T < target`. Entries are 12 bytes on disk, big-endian: `[timestamp i64][relative offset u32]`.
//!
//! Invariants: timestamps and relative offsets strictly increase (an entry is only added when the
//! segment's max timestamp grew). When a segment stops being active, a final entry carrying the
//! segment's max timestamp is added, so a loaded index gives the segment's max timestamp.
//!
//! Faults survived: like the offset index, a file read back at recovery is validated and a
//! failed validation makes the caller rebuild it from the log.

use super::batch::{BatchHeader, ATTR_LOG_APPEND_TIME, BATCH_HEADER_LEN};

/// Size of one entry on disk.
pub const TIME_INDEX_ENTRY_LEN: usize = 12;

/// One time index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeIndexEntry {
    /// The segment's largest timestamp when the entry was written.
    pub timestamp: i64,
    /// Offset of the record carrying it, minus the segment's base offset.
    pub relative_offset: u32,
}

impl TimeIndexEntry {
    /// The 12 bytes this entry occupies on disk.
    pub fn encode(&self) -> [u8; TIME_INDEX_ENTRY_LEN] {
        let mut out = [0u8; TIME_INDEX_ENTRY_LEN];
        out[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..].copy_from_slice(&self.relative_offset.to_be_bytes());
        out
    }
}

/// The in-memory image of a segment's `.timeindex` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<TimeIndexEntry>,
    /// `segment.index.bytes / 12`.
    max_entries: usize,
}

impl TimeIndex {
    /// An empty index holding at most `max_entries` entries.
    pub fn new(max_entries: usize) -> Self {
        TimeIndex { entries: Vec::new(), max_entries }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether no further regular entry can be added (the segment must roll). The last slot is
    /// kept for the final entry written when the segment stops being active.
    pub fn is_full(&self) -> bool {
        self.entries.len() + 1 >= self.max_entries
    }

    /// All entries, in order.
    pub fn entries(&self) -> &[TimeIndexEntry] {
        &self.entries
    }

    /// The last entry: the largest timestamp indexed.
    pub fn last(&self) -> Option<TimeIndexEntry> {
        self.entries.last().copied()
    }

    /// Add an entry if its timestamp is larger than the last one's (and the index has room; the
    /// `last` entry of a segment may use the reserved slot); returns the file position and bytes
    /// to write.
    pub fn maybe_append(&mut self, entry: TimeIndexEntry, last: bool) -> Option<(u64, [u8; TIME_INDEX_ENTRY_LEN])> {
        let full = if last { self.entries.len() >= self.max_entries } else { self.is_full() };
        if full || entry.timestamp < 0 {
            return None;
        }
        if let Some(last) = self.entries.last() {
            if entry.timestamp <= last.timestamp {
                return None;
            }
            assert!(entry.relative_offset > last.relative_offset, "time index entry {entry:?} does not follow {last:?}");
        }
        let file_position = (self.entries.len() * TIME_INDEX_ENTRY_LEN) as u64;
        self.entries.push(entry);
        Some((file_position, entry.encode()))
    }

    /// Drop the entries pointing at relative offsets `>= relative_offset` (the segment was
    /// truncated there; the remaining entries still hold for the batches left); returns the new
    /// file length.
    pub fn truncate_from(&mut self, relative_offset: u32) -> u64 {
        self.entries.retain(|e| e.relative_offset < relative_offset);
        (self.entries.len() * TIME_INDEX_ENTRY_LEN) as u64
    }

    /// The largest entry whose timestamp is `< timestamp`: every batch before the one containing
    /// its offset has only smaller timestamps. `None`: search from the segment start.
    pub fn lookup_before(&self, timestamp: i64) -> Option<TimeIndexEntry> {
        let after = self.entries.partition_point(|e| e.timestamp < timestamp);
        if crate::planted!("time-index-one-late") && after < self.entries.len() {
            return Some(self.entries[after]);
        }
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// The whole file image.
    pub fn encode(&self) -> Vec<u8> {
        self.entries.iter().flat_map(|e| e.encode()).collect()
    }

    /// Decode and validate a file read back from disk; `relative_offset_end` is the segment's next
    /// offset minus its base offset. An error means: rebuild from the log.
    pub fn parse(data: &[u8], relative_offset_end: u64, max_entries: usize) -> Result<Self, String> {
        if data.len() % TIME_INDEX_ENTRY_LEN != 0 {
            return Err(format!("time index length {} is not a multiple of {TIME_INDEX_ENTRY_LEN}", data.len()));
        }
        let mut entries: Vec<TimeIndexEntry> = Vec::new();
        for chunk in data.chunks_exact(TIME_INDEX_ENTRY_LEN) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&chunk[..8]);
            let entry = TimeIndexEntry { timestamp: i64::from_be_bytes(ts), relative_offset: u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]) };
            if !entries.is_empty() && entry.timestamp == 0 && entry.relative_offset == 0 {
                break; // preallocated tail
            }
            if let Some(last) = entries.last() {
                if entry.timestamp <= last.timestamp || entry.relative_offset <= last.relative_offset {
                    return Err(format!("time index entry {entry:?} does not follow {last:?}"));
                }
            }
            if entry.timestamp < 0 || entry.relative_offset as u64 >= relative_offset_end {
                return Err(format!("time index entry {entry:?} invalid for {relative_offset_end} offsets"));
            }
            entries.push(entry);
        }
        Ok(TimeIndex { max_entries: max_entries.max(entries.len()), entries })
    }
}

/// Iterate `(offset, timestamp)` over the records of one whole, uncompressed, CreateTime batch
/// (`batch` starts at the batch header). Returns `None` for compressed or LogAppendTime batches
/// (every LogAppendTime record carries the batch's max timestamp). Iteration stops at the first
/// malformed record; lengths are never trusted beyond the batch.
pub fn record_timestamps<'a>(batch: &'a [u8], header: &BatchHeader) -> Option<impl Iterator<Item = (i64, i64)> + 'a> {
    if header.compression() != 0 || header.attributes & ATTR_LOG_APPEND_TIME != 0 {
        return None;
    }
    let end = header.total_len().min(batch.len());
    let base_offset = header.base_offset;
    let base_timestamp = header.base_timestamp;
    let mut at = BATCH_HEADER_LEN;
    let mut remaining = header.records_count.max(0);
    Some(std::iter::from_fn(move || {
        if remaining == 0 || at >= end {
            return None;
        }
        remaining -= 1;
        let mut cursor = at;
        let length = read_varint(batch, &mut cursor, end)?;
        let record_end = cursor.checked_add(usize::try_from(length).ok()?)?;
        if record_end > end {
            return None;
        }
        cursor += 1; // attributes
        let timestamp_delta = read_varint(batch, &mut cursor, record_end)?;
        let offset_delta = read_varint(batch, &mut cursor, record_end)?;
        at = record_end;
        Some((base_offset.checked_add(offset_delta)?, base_timestamp.checked_add(timestamp_delta)?))
    }))
}

/// Offset of the first record carrying the batch's max timestamp. LogAppendTime batches: the
/// base offset (every record has the append time). Compressed batches cannot be walked without
/// decompressing: the last offset, Kafka's historical "shallow" answer. A record offset outside the
/// batch (a producer's lie the batch CRC does not catch) also falls back to the last offset.
pub fn offset_of_max_timestamp(batch: &[u8], header: &BatchHeader) -> i64 {
    if header.attributes & ATTR_LOG_APPEND_TIME != 0 {
        return header.base_offset;
    }
    let found =
        record_timestamps(batch, header).and_then(|mut records| records.find(|&(_, timestamp)| timestamp == header.max_timestamp)).map(|(offset, _)| offset);
    match found {
        Some(offset) if (header.base_offset..=header.last_offset()).contains(&offset) => offset,
        _ => header.last_offset(),
    }
}

/// `(offset, timestamp)` of the first record of a whole batch (whose max timestamp is `>=
/// target`) with timestamp `>= target` and offset `>= min_offset`; `None` if the batch has none
/// (its qualifying records lie below `min_offset`): the search goes on with the next batch.
/// LogAppendTime and compressed batches are answered at batch granularity: the first offset
/// `>= min_offset` with the batch's max timestamp.
pub fn first_record_at_or_after(batch: &[u8], header: &BatchHeader, target: i64, min_offset: i64) -> Option<(i64, i64)> {
    let Some(mut records) = record_timestamps(batch, header) else {
        return Some((header.base_offset.max(min_offset), header.max_timestamp));
    };
    let in_batch = header.base_offset..=header.last_offset();
    records.find(|&(offset, timestamp)| timestamp >= target && offset >= min_offset && in_batch.contains(&offset))
}

/// A zigzag varint (Kafka's varint/varlong) at `*at`, not reading at or past `end`.
pub(crate) fn read_varint(b: &[u8], at: &mut usize, end: usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        if *at >= end || shift > 63 {
            return None;
        }
        let byte = b[*at];
        *at += 1;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::build_batch;

    /// Only growing timestamps are indexed, and lookup_before returns the last entry strictly
    /// below the target, checked against a linear scan.
    #[test]
    fn append_only_when_growing_and_lookup() {
        let mut index = TimeIndex::new(100);
        assert!(index.maybe_append(TimeIndexEntry { timestamp: 10, relative_offset: 1 }, false).is_some());
        assert!(index.maybe_append(TimeIndexEntry { timestamp: 10, relative_offset: 2 }, false).is_none());
        assert!(index.maybe_append(TimeIndexEntry { timestamp: 30, relative_offset: 5 }, false).is_some());
        assert!(index.maybe_append(TimeIndexEntry { timestamp: 50, relative_offset: 9 }, true).is_some());
        for target in 0..60 {
            let linear = index.entries().iter().rev().find(|e| e.timestamp < target).copied();
            assert_eq!(index.lookup_before(target), linear, "target {target}");
        }
        let bytes = index.encode();
        assert_eq!(TimeIndex::parse(&bytes, 10, 100).unwrap(), index);
        assert!(TimeIndex::parse(&bytes, 9, 100).is_err());
        assert!(TimeIndex::parse(&bytes[..13], 10, 100).is_err());
    }

    /// The record walk recovers each record's offset and timestamp from a built batch, and is
    /// refused for LogAppendTime batches.
    #[test]
    fn record_walk() {
        let batch = build_batch(&[(None, Some(b"a"), 100), (Some(b"k"), Some(b"bb"), 90), (None, None, 120)], (-1, -1, -1));
        let mut bytes = batch.to_vec();
        bytes[0..8].copy_from_slice(&40i64.to_be_bytes());
        let header = BatchHeader::parse(&bytes).unwrap();
        let records: Vec<_> = record_timestamps(&bytes, &header).unwrap().collect();
        assert_eq!(records, vec![(40, 100), (41, 90), (42, 120)]);
        let mut truncated = bytes.clone();
        truncated.truncate(bytes.len() - 2);
        assert!(record_timestamps(&truncated, &header).unwrap().count() < 3);
        let mut append_time = header;
        append_time.attributes |= ATTR_LOG_APPEND_TIME;
        assert!(record_timestamps(&bytes, &append_time).is_none());
    }
}
