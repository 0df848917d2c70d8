//! Parked requests (client fetches, replica fetches) waiting on partitions.
//!
//! A parked request watches every partition it reads. It is woken when any of them gets new
//! data or a new high watermark, and stops watching all of them when it is answered, dropped or
//! woken (it watches again if it parks again). Nothing is left behind for a partition that never
//! changes: an idle partition's set would otherwise gain an id with every parked fetch, a leak of
//! thousands of ids a second on a busy leader.

use std::collections::{BTreeMap, BTreeSet};

/// Partition uid → parked request ids, and each request's partitions.
#[derive(Default)]
pub(crate) struct Watches {
    by_partition: BTreeMap<u64, BTreeSet<u64>>,
    by_request: BTreeMap<u64, Vec<u64>>,
}

impl Watches {
    /// Request `id` waits on `uids` (replacing what it watched before).
    pub(crate) fn watch(&mut self, id: u64, uids: Vec<u64>) {
        self.unwatch(id);
        for &uid in &uids {
            self.by_partition.entry(uid).or_default().insert(id);
        }
        self.by_request.insert(id, uids);
    }

    /// Request `id` waits on nothing any more.
    pub(crate) fn unwatch(&mut self, id: u64) {
        for uid in self.by_request.remove(&id).unwrap_or_default() {
            if let Some(ids) = self.by_partition.get_mut(&uid) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_partition.remove(&uid);
                }
            }
        }
    }

    /// The requests waiting on `uid`, which stop watching anything.
    pub(crate) fn take(&mut self, uid: u64) -> Vec<u64> {
        let ids: Vec<u64> = self.by_partition.remove(&uid).map(|ids| ids.into_iter().collect()).unwrap_or_default();
        for &id in &ids {
            self.unwatch(id);
        }
        ids
    }

    /// (Partitions watched, registrations): both bounded by the parked requests.
    pub(crate) fn size(&self) -> (usize, usize) {
        (self.by_partition.len(), self.by_partition.values().map(BTreeSet::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_requests_leave_nothing_behind() {
        let mut w = Watches::default();
        // Request 1 watches a busy partition (7) and two idle ones (8, 9), again and again.
        for _ in 0..100 {
            w.watch(1, vec![7, 8, 9]);
            assert_eq!(w.take(7), vec![1]);
            assert_eq!(w.size(), (0, 0), "woken: it watches nothing until it parks again");
        }
        w.watch(1, vec![7, 8]);
        w.watch(2, vec![8, 9]);
        assert_eq!(w.size(), (3, 4));
        w.watch(1, vec![9]);
        assert_eq!(w.size(), (2, 3), "parking again replaces what it watched");
        assert_eq!(w.take(8), vec![2]);
        assert_eq!(w.take(9), vec![1]);
        w.watch(3, vec![5]);
        w.unwatch(3);
        w.unwatch(4);
        assert_eq!(w.size(), (0, 0));
    }
}
