//! Realtime lag: a lower bound on how stale each poll was (Jepsen's `realtime-lag`).
//!
//! Once an ok/info op shows that offset `o` of a key exists, every record below `o` stopped
//! being the newest at that op's time at the latest. A poll invoked at `t` whose consumer had
//! reached offset `p` is at least `t - (time offset p+1 was known to exist)` behind. Only the
//! worst case is kept; the per-poll series is what Jepsen plots.
//!
//! Jepsen's `op->max-send-offsets` drops every offset of an op as soon as one of its sends
//! lacks an offset; here such sends are simply skipped.

use std::collections::BTreeMap;

use crate::analysis::Analysis;
use crate::history::{Key, Mop, Offset, Op, OpType, F};
use crate::report::RealtimeLag;

/// The highest offset per key an op sent to or polled from (-1 for a key polled empty).
fn max_offsets(op: &Op) -> BTreeMap<Key, Offset> {
    let mut offsets: BTreeMap<Key, Offset> = BTreeMap::new();
    if !matches!(op.kind, OpType::Ok | OpType::Info) {
        return offsets;
    }
    for mop in op.value.mops() {
        match mop {
            Mop::Poll { reads } if matches!(op.f, F::Poll | F::Txn) => {
                for (&key, records) in reads {
                    let max = records.iter().map(|&(offset, _)| offset).fold(-1, Offset::max);
                    let entry = offsets.entry(key).or_insert(max);
                    *entry = (*entry).max(max);
                }
            }
            Mop::Send { key, offset: Some(offset), .. } if matches!(op.f, F::Send | F::Txn) => {
                let entry = offsets.entry(*key).or_insert(*offset);
                *entry = (*entry).max(*offset);
            }
            _ => {}
        }
    }
    offsets
}

/// Per key, the time each offset was first known to exist. Known offsets only ever grow a
/// prefix `0..=o`, so this is a step function: `(highest offset covered, time)` ascending.
#[derive(Default)]
struct Expiry {
    steps: Vec<(Offset, u64)>,
}

impl Expiry {
    fn learn(&mut self, offset: Offset, time_ns: u64) {
        if offset >= 0 && self.steps.last().is_none_or(|&(covered, _)| offset > covered) {
            self.steps.push((offset, time_ns));
        }
    }

    /// When `offset` was first known to exist, if ever.
    fn known_at(&self, offset: Offset) -> Option<u64> {
        let step = self.steps.partition_point(|&(covered, _)| covered < offset);
        self.steps.get(step).map(|&(_, time)| time)
    }
}

/// The poll with the largest lag, if any ok poll/txn happened.
pub(crate) fn worst_realtime_lag(analysis: &Analysis) -> Option<RealtimeLag> {
    let mut expiry: BTreeMap<Key, Expiry> = BTreeMap::new();
    for op in analysis.ops {
        for (key, offset) in max_offsets(op) {
            expiry.entry(key).or_default().learn(offset, op.time_ns);
        }
    }

    let mut positions: BTreeMap<u64, BTreeMap<Key, Offset>> = BTreeMap::new();
    let mut worst: Option<RealtimeLag> = None;
    for (pos, op) in analysis.ops.iter().enumerate() {
        if op.kind != OpType::Ok {
            continue;
        }
        match op.f {
            F::Assign => {
                let keys = op.value.keys().unwrap_or(&[]);
                let position = positions.entry(op.process).or_default();
                position.retain(|key, _| keys.contains(key));
                for &key in keys {
                    position.entry(key).or_insert(-1);
                }
            }
            // A subscriber may get none of a topic's partitions, so forget everything.
            F::Subscribe => {
                positions.insert(op.process, BTreeMap::new());
            }
            F::Poll | F::Txn => {
                let invoked_ns = analysis.pair[pos].map_or(op.time_ns, |invoke| analysis.ops[invoke].time_ns);
                let position = positions.entry(op.process).or_default();
                for (key, offset) in max_offsets(op) {
                    let entry = position.entry(key).or_insert(offset);
                    *entry = (*entry).max(offset);
                }
                for (&key, &offset) in position.iter() {
                    let expired_ns = expiry.get(&key).and_then(|e| e.known_at(offset + 1));
                    let lag_ns = expired_ns.map_or(0, |expired| invoked_ns.saturating_sub(expired));
                    if worst.as_ref().is_none_or(|w| lag_ns > w.lag_ns) {
                        worst = Some(RealtimeLag { time_ns: invoked_ns, process: op.process, key, lag_ns });
                    }
                }
            }
            _ => {}
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Mop;
    use crate::test_support::*;

    #[test]
    fn worst_lag_is_the_stalest_poll() {
        // Proves the lag bound on Jepsen's realtime-lag-test history: after re-assigning away
        // from and back to x, a poll at t=22 is rewound to offset -1, known stale since t=5.
        let history = Hb::new()
            .keys(0, OpType::Invoke, F::Assign, &[X])
            .keys(0, OpType::Ok, F::Assign, &[X])
            .op(0, OpType::Invoke, F::Poll, vec![Mop::poll()])
            .op(0, OpType::Ok, F::Poll, vec![Mop::polled([(X, vec![])])])
            .op(0, OpType::Invoke, F::Send, vec![Mop::send(X, A)])
            .op(0, OpType::Ok, F::Send, vec![Mop::sent(X, 0, A)])
            .op(0, OpType::Invoke, F::Poll, vec![Mop::poll()])
            .op(0, OpType::Ok, F::Poll, vec![Mop::polled([(X, vec![])])])
            .op(1, OpType::Invoke, F::Send, vec![Mop::send(X, C), Mop::send(X, D)])
            .op(1, OpType::Ok, F::Send, vec![Mop::sent(X, 2, C), Mop::sent(X, 3, D)])
            .op(0, OpType::Invoke, F::Poll, vec![Mop::poll()])
            .op(0, OpType::Ok, F::Poll, vec![Mop::poll()])
            .op(0, OpType::Invoke, F::Poll, vec![Mop::poll()])
            .op(0, OpType::Ok, F::Poll, vec![Mop::polled([(X, vec![(0, A), (1, B)])])])
            .keys(0, OpType::Invoke, F::Assign, &[X, Y])
            .keys(0, OpType::Ok, F::Assign, &[X, Y])
            .op(0, OpType::Invoke, F::Poll, vec![Mop::poll()])
            .op(0, OpType::Ok, F::Poll, vec![Mop::poll()])
            .keys(0, OpType::Invoke, F::Assign, &[Y])
            .keys(0, OpType::Ok, F::Assign, &[Y])
            .keys(0, OpType::Invoke, F::Assign, &[X])
            .keys(0, OpType::Ok, F::Assign, &[X])
            .op(0, OpType::Invoke, F::Poll, vec![Mop::poll()])
            .op(0, OpType::Ok, F::Poll, vec![Mop::poll()])
            .op(0, OpType::Invoke, F::Poll, vec![Mop::poll(), Mop::poll()])
            .op(0, OpType::Ok, F::Poll, vec![Mop::polled([(X, vec![(0, A), (1, B)])]), Mop::polled([(X, vec![(2, C), (3, D)])])])
            .op(1, OpType::Invoke, F::Send, vec![Mop::send(X, B)])
            .op(1, OpType::Info, F::Send, vec![Mop::send(X, B)])
            .ops();
        let analysis = Analysis::new(&history);
        assert_eq!(worst_realtime_lag(&analysis), Some(RealtimeLag { time_ns: 22, process: 0, key: X, lag_ns: 17 }));
    }
}
