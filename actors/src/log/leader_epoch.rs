//! The leader epoch cache of one partition log (Kafka's `LeaderEpochFileCache`, KIP-101/KIP-279):
//! for every leader epoch that wrote to the log, the offset of its first batch.
//!
//! The cache is a function of the batches in the log: walking them in offset order, a batch whose
//! partition leader epoch is larger than the latest cached one (and not negative) starts a new
//! entry `(epoch, base offset)`; a batch with an equal or smaller epoch adds nothing. The leader's
//! appends, the follower's appends and recovery's replay all use that one rule ([`EpochCache::assign`]),
//! so a cache rebuilt from the batch headers equals the one kept in memory. Truncating the log to
//! offset `T` removes the entries starting at or above `T` ([`EpochCache::truncate_from_end`]);
//! entries below the log start offset are kept (the log start does not change the cache).
//!
//! Persistence: the entries are stored in the partition checkpoint (see
//! [`super::recovery::Checkpoint`]) and recovery extends them from the batches it scans.
//!
//! Invariants: epochs strictly increase and start offsets strictly increase; no entry starts at or
//! above the log end offset except right after recovery has dropped them (it drops entries at or
//! beyond the recovered log end).

/// Kafka's UNDEFINED_EPOCH.
pub const UNDEFINED_EPOCH: i32 = -1;
/// Kafka's UNDEFINED_EPOCH_OFFSET.
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// Ordered `(epoch, start offset)` entries. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    /// An empty cache.
    pub fn new() -> Self {
        EpochCache::default()
    }

    /// A cache holding `entries`, keeping only those that follow the invariants (strictly growing
    /// epochs and offsets, no negative epoch): a checkpoint read back is not trusted blindly.
    pub fn from_entries(entries: impl IntoIterator<Item = (i32, i64)>) -> Self {
        let mut cache = EpochCache::new();
        for (epoch, start) in entries {
            if cache.entries.last().is_none_or(|&(e, s)| epoch > e && start > s) && epoch >= 0 {
                cache.entries.push((epoch, start));
            }
        }
        cache
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// The largest cached epoch.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// A batch of `epoch` starting at `start_offset` was added to the log end: start a new entry
    /// when the epoch is larger than the latest one. Returns whether an entry was added.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || self.latest_epoch().is_some_and(|latest| epoch <= latest) {
            return false;
        }
        debug_assert!(self.entries.last().is_none_or(|&(_, s)| s < start_offset), "epoch {epoch} at {start_offset} after {:?}", self.entries);
        self.entries.push((epoch, start_offset));
        true
    }

    /// The epoch the batch at `offset` must carry: that of the last entry starting at or below
    /// it (`None` below the first entry or in an empty cache).
    pub fn epoch_at(&self, offset: i64) -> Option<i32> {
        let n = self.entries.partition_point(|&(_, start)| start <= offset);
        n.checked_sub(1).map(|i| self.entries[i].0)
    }

    /// The log was truncated to `end_offset`: drop the entries starting at or above it.
    pub fn truncate_from_end(&mut self, end_offset: i64) {
        self.entries.retain(|&(_, start)| start < end_offset);
    }

    /// Forget everything (the log was emptied).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Kafka's OffsetsForLeaderEpoch answer `(epoch, end offset)` for `requested` on a log ending
    /// at `log_end_offset`:
    /// - `requested` is [`UNDEFINED_EPOCH`], the cache is empty, or `requested` is above every
    ///   cached epoch: `(UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)`;
    /// - `requested` is the latest cached epoch: `(requested, log_end_offset)`;
    /// - otherwise, with `next` the first cached epoch above `requested`: the largest cached epoch
    ///   `<= requested` and the start offset of `next`; when no cached epoch is `<= requested`
    ///   (older epochs were forgotten), Kafka answers `(requested, start of next)`, and so do we.
    pub fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        let undefined = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        if requested == UNDEFINED_EPOCH {
            return undefined;
        }
        match self.latest_epoch() {
            None => return undefined,
            Some(latest) if latest == requested => return (requested, log_end_offset),
            Some(_) => {}
        }
        let above = self.entries.partition_point(|&(epoch, _)| epoch <= requested);
        let Some(&(_, next_start)) = self.entries.get(above) else {
            return undefined;
        };
        match above.checked_sub(1) {
            Some(floor) => (self.entries[floor].0, next_start),
            None => (requested, next_start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only growing epochs start entries; truncation drops entries at or above the offset.
    #[test]
    fn assign_and_truncate() {
        let mut cache = EpochCache::new();
        assert!(cache.assign(2, 0));
        assert!(!cache.assign(2, 5));
        assert!(!cache.assign(1, 6));
        assert!(!cache.assign(-1, 7));
        assert!(cache.assign(4, 10));
        assert!(cache.assign(7, 20));
        assert_eq!(cache.entries(), &[(2, 0), (4, 10), (7, 20)]);
        cache.truncate_from_end(20);
        assert_eq!(cache.entries(), &[(2, 0), (4, 10)]);
        cache.truncate_from_end(11);
        assert_eq!(cache.entries(), &[(2, 0), (4, 10)]);
        cache.truncate_from_end(0);
        assert_eq!(cache.latest_epoch(), None);
    }

    /// Every edge case of the OffsetsForLeaderEpoch answer.
    #[test]
    fn end_offset_for_edge_cases() {
        let empty = EpochCache::new();
        assert_eq!(empty.end_offset_for(0, 10), (-1, -1), "empty cache");
        assert_eq!(empty.end_offset_for(UNDEFINED_EPOCH, 10), (-1, -1));
        let cache = EpochCache::from_entries([(2, 5), (4, 10), (7, 20)]);
        assert_eq!(cache.end_offset_for(UNDEFINED_EPOCH, 30), (-1, -1), "undefined epoch");
        assert_eq!(cache.end_offset_for(7, 30), (7, 30), "latest epoch: the log end");
        assert_eq!(cache.end_offset_for(8, 30), (-1, -1), "above the latest epoch");
        assert_eq!(cache.end_offset_for(4, 30), (4, 20), "a cached epoch ends where the next starts");
        assert_eq!(cache.end_offset_for(5, 30), (4, 20), "an uncached epoch: the floor epoch's end");
        assert_eq!(cache.end_offset_for(6, 30), (4, 20));
        assert_eq!(cache.end_offset_for(2, 30), (2, 10));
        assert_eq!(cache.end_offset_for(3, 30), (2, 10));
        assert_eq!(cache.end_offset_for(1, 30), (1, 5), "below the first epoch: Kafka answers the first start");
        assert_eq!(cache.end_offset_for(0, 30), (0, 5));
        let single = EpochCache::from_entries([(3, 0)]);
        assert_eq!(single.end_offset_for(3, 0), (3, 0));
        assert_eq!(single.end_offset_for(2, 9), (2, 0));
        assert_eq!(single.end_offset_for(4, 9), (-1, -1));
    }

    /// A cache read back from a checkpoint keeps only entries that follow the invariants.
    #[test]
    fn epoch_at_follows_entry_starts() {
        let cache = EpochCache::from_entries([(1, 0), (3, 5), (4, 9)]);
        let got: Vec<Option<i32>> = [0, 4, 5, 8, 9, 100].iter().map(|o| cache.epoch_at(*o)).collect();
        assert_eq!(got, vec![Some(1), Some(1), Some(3), Some(3), Some(4), Some(4)]);
        assert_eq!(EpochCache::from_entries([(2, 10)]).epoch_at(3), None, "below the first entry");
        assert_eq!(EpochCache::new().epoch_at(0), None);
    }

    #[test]
    fn from_entries_filters_garbage() {
        let cache = EpochCache::from_entries([(1, 0), (1, 4), (0, 8), (3, 2), (2, 9), (5, 9), (6, 7), (-2, 12)]);
        assert_eq!(cache.entries(), &[(1, 0), (3, 2), (5, 9)]);
    }
}
