//! The sparse offset index of one segment (Kafka's `OffsetIndex`, the `.index` file).
//!
//! An entry maps a batch's base offset, relative to the segment's base offset, to the byte
//! position of that batch in the `.log` file. Entries are 8 bytes on disk, big-endian:
//! `[relative offset u32][position u32]`. The index is sparse: an entry is added about every
//! `index.interval.bytes` of log data, so a lookup finds the largest entry at or below the target
//! and the reader scans forward from there. The first batch of a segment needs no entry: a
//! lookup below every entry answers position 0.
//!
//! Invariants: relative offsets and positions both strictly increase; the whole index is kept in
//! memory as a `Vec` and entry `i` lives at byte `8 * i` of the file (written with
//! `DiskOp::IndexWrite`).
//!
//! Faults survived: an index file read back at recovery is validated ([`OffsetIndex::parse`]):
//! a torn length, entries out of order or beyond the segment make the caller rebuild the index from
//! the log; trailing all-zero entries (a preallocated, memory-mapped file) mark the end.

/// Size of one entry on disk.
pub const OFFSET_INDEX_ENTRY_LEN: usize = 8;

/// One index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetIndexEntry {
    /// Base offset of the indexed batch minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of that batch in the segment's `.log` file.
    pub position: u32,
}

impl OffsetIndexEntry {
    /// The 8 bytes this entry occupies on disk.
    pub fn encode(&self) -> [u8; OFFSET_INDEX_ENTRY_LEN] {
        let mut out = [0u8; OFFSET_INDEX_ENTRY_LEN];
        out[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..].copy_from_slice(&self.position.to_be_bytes());
        out
    }
}

/// The in-memory image of a segment's `.index` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<OffsetIndexEntry>,
    /// `segment.index.bytes / 8`: the segment rolls when the index is full.
    max_entries: usize,
}

impl OffsetIndex {
    /// An empty index holding at most `max_entries` entries.
    pub fn new(max_entries: usize) -> Self {
        OffsetIndex { entries: Vec::new(), max_entries }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether no further entry can be added (the segment must roll).
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries
    }

    /// All entries, in order.
    pub fn entries(&self) -> &[OffsetIndexEntry] {
        &self.entries
    }

    /// Add an entry; returns the file position and bytes to write, or `None` when the index is
    /// full (the index stays correct, only sparser).
    pub fn append(&mut self, entry: OffsetIndexEntry) -> Option<(u64, [u8; OFFSET_INDEX_ENTRY_LEN])> {
        if self.is_full() {
            return None;
        }
        if let Some(last) = self.entries.last() {
            assert!(entry.relative_offset > last.relative_offset && entry.position > last.position, "offset index entry {entry:?} does not follow {last:?}");
        }
        let file_position = (self.entries.len() * OFFSET_INDEX_ENTRY_LEN) as u64;
        self.entries.push(entry);
        Some((file_position, entry.encode()))
    }

    /// Drop the entries for relative offsets `>= relative_offset` (the segment was truncated
    /// there); returns the new file length.
    pub fn truncate_from(&mut self, relative_offset: u32) -> u64 {
        self.entries.retain(|e| e.relative_offset < relative_offset);
        (self.entries.len() * OFFSET_INDEX_ENTRY_LEN) as u64
    }

    /// The largest entry whose relative offset is `<= relative_offset`, or `(0, 0)` (the start of
    /// the segment) when there is none.
    pub fn lookup(&self, relative_offset: u32) -> OffsetIndexEntry {
        let after = self.entries.partition_point(|e| e.relative_offset <= relative_offset);
        if crate::planted!("offset-index-off-by-one") && after < self.entries.len() && after > 0 {
            return self.entries[after];
        }
        match after {
            0 => OffsetIndexEntry { relative_offset: 0, position: 0 },
            n => self.entries[n - 1],
        }
    }

    /// The whole file image.
    pub fn encode(&self) -> Vec<u8> {
        self.entries.iter().flat_map(|e| e.encode()).collect()
    }

    /// Decode and validate a file read back from disk. `segment_size` bounds positions and
    /// `relative_offset_end` (next offset - base offset) bounds relative offsets. An error means
    /// the index cannot be trusted and must be rebuilt from the log.
    pub fn parse(data: &[u8], segment_size: u64, relative_offset_end: u64, max_entries: usize) -> Result<Self, String> {
        if data.len() % OFFSET_INDEX_ENTRY_LEN != 0 {
            return Err(format!("offset index length {} is not a multiple of {OFFSET_INDEX_ENTRY_LEN}", data.len()));
        }
        let mut entries: Vec<OffsetIndexEntry> = Vec::new();
        for chunk in data.chunks_exact(OFFSET_INDEX_ENTRY_LEN) {
            let entry = OffsetIndexEntry {
                relative_offset: u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                position: u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            };
            if !entries.is_empty() && entry.relative_offset == 0 && entry.position == 0 {
                break; // preallocated tail
            }
            if let Some(last) = entries.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position {
                    return Err(format!("offset index entry {entry:?} does not follow {last:?}"));
                }
            }
            if entry.position as u64 >= segment_size || entry.relative_offset as u64 >= relative_offset_end {
                return Err(format!("offset index entry {entry:?} beyond the segment ({segment_size} bytes, {relative_offset_end} offsets)"));
            }
            entries.push(entry);
        }
        Ok(OffsetIndex { max_entries: max_entries.max(entries.len()), entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(relative_offset: u32, position: u32) -> OffsetIndexEntry {
        OffsetIndexEntry { relative_offset, position }
    }

    /// Lookup returns the largest entry at or below the target, and the segment start below all
    /// entries; checked against a linear scan for every target.
    #[test]
    fn lookup_is_floor() {
        let mut index = OffsetIndex::new(100);
        for i in 1..20u32 {
            index.append(entry(i * 10, i * 1000)).unwrap();
        }
        for target in 0..250u32 {
            let linear = index.entries().iter().rev().find(|e| e.relative_offset <= target).copied().unwrap_or(entry(0, 0));
            assert_eq!(index.lookup(target), linear, "target {target}");
        }
    }

    /// Encoding then parsing gives the same index; a preallocated zero tail is ignored; a torn
    /// length, a backwards entry or a position past the segment end are rejected.
    #[test]
    fn parse_round_trip_and_rejects_garbage() {
        let mut index = OffsetIndex::new(10);
        index.append(entry(0, 0)).unwrap();
        index.append(entry(5, 700)).unwrap();
        index.append(entry(9, 1400)).unwrap();
        let mut bytes = index.encode();
        assert_eq!(OffsetIndex::parse(&bytes, 2000, 20, 10).unwrap(), index);
        bytes.extend_from_slice(&[0u8; 16]);
        assert_eq!(OffsetIndex::parse(&bytes, 2000, 20, 10).unwrap().entries(), index.entries());
        assert!(OffsetIndex::parse(&bytes[..bytes.len() - 3], 2000, 20, 10).is_err());
        assert!(OffsetIndex::parse(&index.encode(), 1000, 20, 10).is_err());
        assert!(OffsetIndex::parse(&index.encode(), 2000, 9, 10).is_err());
        let mut backwards = index.encode();
        backwards[8..16].copy_from_slice(&entry(12, 800).encode());
        assert!(OffsetIndex::parse(&backwards, 2000, 20, 10).is_err());
    }

    /// A full index refuses entries instead of growing past `segment.index.bytes`.
    #[test]
    fn full_index_refuses() {
        let mut index = OffsetIndex::new(2);
        assert!(index.append(entry(1, 1)).is_some());
        assert!(index.append(entry(2, 2)).is_some());
        assert!(index.is_full());
        assert!(index.append(entry(3, 3)).is_none());
        assert_eq!(index.len(), 2);
    }
}
