//! The per-key and per-process checks: everything except dependency cycles.
//!
//! Each function reads the shared [`Analysis`] and returns its records in a deterministic
//! order (history order, then key, then value). Ordering rules use the "delta" of two values:
//! the difference of their dense indices in the key's version order. 1 means "next", above 1
//! means values were skipped, below 1 means the order went backwards or stood still. When
//! either index is unknown the delta is taken as 1: nothing can be said.

use std::collections::{BTreeMap, BTreeSet};

use crate::analysis::Analysis;
use crate::history::{Key, Offset, OpType, F};
use crate::report::{AbortedRead, Duplicate, InconsistentOffsets, InternalOrder, LostWrite, NoWriterOfValue, PrecommittedRead, ProcessOrder, Unseen};

/// Check: inconsistent-offsets. Offsets claimed by two or more values.
pub(crate) fn inconsistent_offsets(analysis: &Analysis) -> Vec<InconsistentOffsets> {
    analysis.divergences.iter().map(|d| InconsistentOffsets { key: d.key, offset: d.offset, index: d.index, values: d.values.clone() }).collect()
}

/// Check 1: duplicate. A value at more than one offset of its key.
pub(crate) fn duplicates(analysis: &Analysis) -> Vec<Duplicate> {
    let mut errors = Vec::new();
    for (&key, order) in &analysis.version_orders {
        let mut placements: Vec<(u64, i64)> = order.log.iter().flat_map(|(&offset, values)| values.iter().map(move |&value| (value, offset))).collect();
        if placements.len() == order.by_value.len() {
            continue; // every value sits at exactly one offset
        }
        placements.sort_unstable();
        for group in placements.chunk_by(|a, b| a.0 == b.0).filter(|group| group.len() > 1) {
            errors.push(Duplicate { key, value: group[0].0, count: group.len(), offsets: group.iter().map(|&(_, offset)| offset).collect() });
        }
    }
    errors
}

/// Check 2: G1a. An ok poll/txn read a value that a failed op wrote.
pub(crate) fn aborted_reads(analysis: &Analysis) -> Vec<AbortedRead> {
    let Some(failed) = analysis.writes_by_type.get(&OpType::Fail) else { return Vec::new() };
    let mut errors = Vec::new();
    for (pos, op) in analysis.ops.iter().enumerate() {
        if op.kind != OpType::Ok || !matches!(op.f, F::Poll | F::Txn) {
            continue;
        }
        for (&key, values) in &analysis.reads[pos] {
            let Some(failed) = failed.get(&key) else { continue };
            for &value in values.iter().filter(|v| failed.contains(v)) {
                let writer = analysis.writer(key, value).expect("a failed write has a writer");
                errors.push(AbortedRead { key, value, writer: analysis.index(writer), reader: analysis.index(pos) });
            }
        }
    }
    errors
}

/// Check 3: precommitted-read. An op read a value it sent itself. At read-committed, sends are
/// invisible to every consumer, the producing transaction's included, until it commits.
pub(crate) fn precommitted_reads(analysis: &Analysis) -> Vec<PrecommittedRead> {
    let mut errors = Vec::new();
    for (pos, writes) in analysis.writes.iter().enumerate() {
        let reads = &analysis.reads[pos];
        let first_bad = writes.iter().find_map(|(&key, sent)| {
            let read: BTreeSet<u64> = reads.get(&key)?.iter().copied().collect();
            sent.iter().copied().filter(|v| read.contains(v)).min().map(|value| (key, value))
        });
        if let Some((key, value)) = first_bad {
            errors.push(PrecommittedRead { key, value, op: analysis.index(pos) });
        }
    }
    errors
}

/// Check 4: lost-write. Find the highest index some ok op read; every committed value whose
/// last appearance is at or below it must have been read by some ok op.
///
/// "First" and "last" appearances matter when the log is inconsistent: a value seen at two
/// offsets bounds the read prefix by its first, and is owed by its last.
/// Whether the value at dense index `index` of `key` sits below the key's deletion bound.
fn deleted(analysis: &Analysis, deleted_below: &BTreeMap<Key, Offset>, key: Key, index: usize) -> bool {
    let Some(&below) = deleted_below.get(&key) else { return false };
    analysis.order(key).and_then(|order| order.offsets.get(index)).is_some_and(|&offset| offset < below)
}

pub(crate) fn lost_writes(analysis: &Analysis, deleted_below: &BTreeMap<Key, Offset>) -> Vec<LostWrite> {
    let Some(ok_reads) = analysis.reads_by_type.get(&OpType::Ok) else { return Vec::new() };
    let mut errors = Vec::new();
    for (&key, read) in ok_reads {
        let Some(order) = analysis.order(key) else { continue };
        // With no value at two offsets, first and last appearances coincide.
        let placements: usize = order.log.values().map(BTreeSet::len).sum();
        let mut first_index: BTreeMap<u64, usize>;
        let first_index = if placements == order.by_value.len() {
            &order.by_value
        } else {
            first_index = BTreeMap::new();
            for (index, values) in order.log.values().enumerate() {
                for &value in values {
                    first_index.entry(value).or_insert(index);
                }
            }
            &first_index
        };
        let mut last_index_values: Vec<Vec<u64>> = vec![Vec::new(); order.log.len()];
        for (&value, &index) in &order.by_value {
            last_index_values[index].push(value);
        }
        let Some(bound) = read.iter().filter_map(|v| first_index.get(v).copied()).max() else { continue };
        let max_read = last_index_values[bound].first().and_then(|value| analysis.first_reader_of.get(&key)?.get(value).copied());
        for &value in last_index_values[..=bound].iter().flatten() {
            if read.contains(&value) || deleted(analysis, deleted_below, key, first_index[&value]) {
                continue;
            }
            // Values known only from polls of unreadable ops have no writer; check 'no-writer' reports those.
            let Some(writer) = analysis.writer(key, value) else { continue };
            if analysis.must_have_committed(writer) {
                errors.push(LostWrite {
                    key,
                    value,
                    index: first_index[&value],
                    max_read_index: bound,
                    writer: analysis.index(writer),
                    max_read: max_read.map(|pos| analysis.index(pos)),
                });
            }
        }
    }
    errors
}

/// A read value no op sent. Jepsen aborts the analysis here; we report it and carry on.
pub(crate) fn no_writer_of_value(analysis: &Analysis) -> Vec<NoWriterOfValue> {
    let mut errors = Vec::new();
    for (&key, readers) in &analysis.first_reader_of {
        for (&value, &reader) in readers {
            if analysis.writer(key, value).is_none() {
                errors.push(NoWriterOfValue { key, value, reader: analysis.index(reader) });
            }
        }
    }
    errors
}

/// Ops of each process, in history order.
fn by_process(analysis: &Analysis) -> BTreeMap<u64, Vec<usize>> {
    let mut processes: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (pos, op) in analysis.ops.iter().enumerate() {
        processes.entry(op.process).or_default().push(pos);
    }
    processes
}

/// Delta of `v'` after `v` in `key`'s order; 1 when either index is unknown.
fn delta(analysis: &Analysis, key: Key, before: Option<u64>, after: Option<u64>) -> (i64, Option<(usize, usize)>) {
    let i = before.and_then(|v| analysis.index_of(key, v));
    let j = after.and_then(|v| analysis.index_of(key, v));
    match (i, j) {
        (Some(i), Some(j)) => (j as i64 - i as i64, Some((i, j))),
        _ => (1, None),
    }
}

/// Values strictly between dense indices `i` and `j` of `key`.
fn skipped(analysis: &Analysis, key: Key, i: usize, j: usize) -> Vec<u64> {
    analysis.order(key).map(|order| order.by_index[i + 1..j].to_vec()).unwrap_or_default()
}

/// Poll-skip and nonmonotonic-poll records.
#[derive(Default)]
pub(crate) struct PollOrder {
    pub skips: Vec<ProcessOrder>,
    pub nonmonotonic: Vec<ProcessOrder>,
}

/// Check 5: poll-skip / nonmonotonic-poll. Each process's polls of a key must continue exactly
/// where its last ok poll of that key stopped. Assign/subscribe (ok or info) forget keys no
/// longer owned. Info/fail polls are checked but do not move the position: a client that
/// aborts must rewind.
/// Moving past values below the key's deletion bound (to the log start, after they were
/// deleted) is no skip.
pub(crate) fn poll_order(analysis: &Analysis, deleted_below: &BTreeMap<Key, Offset>) -> PollOrder {
    let mut found = PollOrder::default();
    for ops in by_process(analysis).values() {
        let mut last_reads: BTreeMap<Key, usize> = BTreeMap::new();
        for &pos in ops {
            let op = &analysis.ops[pos];
            match op.f {
                F::Assign | F::Subscribe => {
                    if matches!(op.kind, OpType::Ok | OpType::Info) {
                        let keys = op.value.keys().unwrap_or(&[]);
                        last_reads.retain(|key, _| keys.contains(key));
                    }
                }
                F::Poll | F::Txn => {
                    let reads = &analysis.reads[pos];
                    for (&key, values) in reads {
                        let Some(&last) = last_reads.get(&key) else { continue };
                        let before = analysis.reads[last].get(&key).and_then(|vs| vs.last().copied());
                        let after = values.first().copied();
                        let (delta, indices) = delta(analysis, key, before, after);
                        let (Some((i, j)), Some(v), Some(w)) = (indices, before, after) else { continue };
                        let ops = [analysis.index(last), analysis.index(pos)];
                        if delta > 1 && !(i + 1..j).all(|index| deleted(analysis, deleted_below, key, index)) {
                            found.skips.push(ProcessOrder { key, values: [v, w], delta, skipped: skipped(analysis, key, i, j), ops });
                        } else if delta < 1 {
                            found.nonmonotonic.push(ProcessOrder { key, values: [v, w], delta, skipped: Vec::new(), ops });
                        }
                    }
                    if op.kind == OpType::Ok {
                        for &key in reads.keys() {
                            last_reads.insert(key, pos);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    found
}

/// Skip and nonmonotonic records within single ops.
#[derive(Default)]
pub(crate) struct InternalOrders {
    pub skips: Vec<InternalOrder>,
    pub nonmonotonic: Vec<InternalOrder>,
}

impl InternalOrders {
    fn scan(&mut self, analysis: &Analysis, pos: usize, key: Key, values: &[u64]) {
        for pair in values.windows(2) {
            let (delta, indices) = delta(analysis, key, Some(pair[0]), Some(pair[1]));
            let Some((i, j)) = indices else { continue };
            let op = analysis.index(pos);
            if delta > 1 {
                self.skips.push(InternalOrder { key, values: [pair[0], pair[1]], delta, skipped: skipped(analysis, key, i, j), op });
            } else if delta < 1 {
                self.nonmonotonic.push(InternalOrder { key, values: [pair[0], pair[1]], delta, skipped: Vec::new(), op });
            }
        }
    }
}

/// Check 6: int-poll-skip / int-nonmonotonic-poll. Within one op, consecutive reads of a key
/// must be consecutive in the log, unless a rebalance touched that key during the op.
pub(crate) fn internal_poll_order(analysis: &Analysis) -> InternalOrders {
    let mut found = InternalOrders::default();
    for (pos, op) in analysis.ops.iter().enumerate() {
        let rebalanced: BTreeSet<Key> = op.rebalance_log.iter().flat_map(|r| r.keys.iter().copied()).collect();
        for (&key, values) in &analysis.reads[pos] {
            if !rebalanced.contains(&key) {
                found.scan(analysis, pos, key, values);
            }
        }
    }
    found
}

/// Check 7: int-send-skip / int-nonmonotonic-send. Within one completed op, consecutive sends
/// to a key must land in order. Skips are normal (other producers interleave); going
/// backwards is not.
pub(crate) fn internal_send_order(analysis: &Analysis) -> InternalOrders {
    let mut found = InternalOrders::default();
    for (pos, op) in analysis.ops.iter().enumerate() {
        if op.kind == OpType::Invoke {
            continue;
        }
        for (&key, values) in &analysis.writes[pos] {
            found.scan(analysis, pos, key, values);
        }
    }
    found
}

/// Check 8: nonmonotonic-send. A process's sends to a key (ok or info ops) must land after
/// its previous sends to that key. There is no external send-skip check: other producers
/// interleave.
pub(crate) fn nonmonotonic_sends(analysis: &Analysis) -> Vec<ProcessOrder> {
    let mut errors = Vec::new();
    for ops in by_process(analysis).values() {
        let mut last_sends: BTreeMap<Key, usize> = BTreeMap::new();
        for &pos in ops {
            let op = &analysis.ops[pos];
            if !matches!(op.kind, OpType::Ok | OpType::Info) {
                continue;
            }
            match op.f {
                F::Assign | F::Subscribe => {
                    let keys = op.value.keys().unwrap_or(&[]);
                    last_sends.retain(|key, _| keys.contains(key));
                }
                F::Send | F::Txn => {
                    let writes = &analysis.writes[pos];
                    for (&key, values) in writes {
                        let Some(&last) = last_sends.get(&key) else { continue };
                        let before = analysis.writes[last].get(&key).and_then(|vs| vs.last().copied());
                        let after = values.first().copied();
                        let (delta, indices) = delta(analysis, key, before, after);
                        if let (true, Some(_), Some(v), Some(w)) = (delta < 1, indices, before, after) {
                            errors.push(ProcessOrder { key, values: [v, w], delta, skipped: Vec::new(), ops: [analysis.index(last), analysis.index(pos)] });
                        }
                    }
                    for &key in writes.keys() {
                        last_sends.insert(key, pos);
                    }
                }
                _ => {}
            }
        }
    }
    errors
}

/// Check 9: unseen. Values ok sends acknowledged that no ok poll/txn ever returned (but those
/// below their key's deletion bound).
pub(crate) fn unseen(analysis: &Analysis, deleted_below: &BTreeMap<Key, Offset>) -> Option<Unseen> {
    let mut sent: BTreeMap<Key, BTreeSet<u64>> = BTreeMap::new();
    let mut polled: BTreeMap<Key, BTreeSet<u64>> = BTreeMap::new();
    let mut time_ns = 0;
    for (pos, op) in analysis.ops.iter().enumerate() {
        if op.kind != OpType::Ok || !op.is_log_op() {
            continue;
        }
        time_ns = op.time_ns;
        for (&key, values) in &analysis.writes[pos] {
            sent.entry(key).or_default().extend(values);
        }
        for (&key, values) in &analysis.reads[pos] {
            polled.entry(key).or_default().extend(values);
        }
    }
    let mut unseen = Unseen { time_ns, unseen: BTreeMap::new(), messages: BTreeMap::new() };
    for (key, values) in sent {
        let missing: Vec<u64> = match polled.get(&key) {
            Some(polled) => values.difference(polled).copied().collect(),
            None => values.into_iter().collect(),
        };
        let missing: Vec<u64> =
            missing.into_iter().filter(|&v| analysis.index_of(key, v).is_none_or(|index| !deleted(analysis, deleted_below, key, index))).collect();
        if !missing.is_empty() {
            unseen.unseen.insert(key, missing.len());
            unseen.messages.insert(key, missing);
        }
    }
    (!unseen.unseen.is_empty()).then_some(unseen)
}

#[cfg(test)]
mod tests {
    use crate::history::OpType::{Fail, Info, Invoke, Ok};
    use crate::history::{Mop, F};
    use crate::report::*;
    use crate::test_support::*;
    use crate::{analyze, History};

    fn errors(history: &History) -> Errors {
        analyze(history, &Options::default()).errors
    }

    fn send(key: u64, value: u64) -> Mop {
        Mop::send(key, value)
    }

    fn sent(key: u64, offset: i64, value: u64) -> Mop {
        Mop::sent(key, offset, value)
    }

    fn polled(key: u64, records: &[(i64, u64)]) -> Mop {
        Mop::polled([(key, records.to_vec())])
    }

    #[test]
    fn inconsistent_offsets_need_proof_that_both_sends_committed() {
        // Proves an info send sharing an offset with an ok send is ignored until an ok poll reads
        // another of its values, at which point offset 0 holding two values is reported.
        let base = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A), send(Y, A)])
            .op(0, Info, F::Send, vec![sent(X, 0, A), send(Y, A)])
            .op(1, Invoke, F::Send, vec![send(X, B)])
            .op(1, Ok, F::Send, vec![sent(X, 0, B)]);
        assert!(errors(&base.ops_clone().history()).inconsistent_offsets.is_empty());

        let proven = base.op(2, Invoke, F::Poll, vec![Mop::poll()]).op(2, Ok, F::Poll, vec![polled(Y, &[(5, A)])]).history();
        let report = analyze(&proven, &Options::default());
        assert_eq!(report.errors.inconsistent_offsets.errs, vec![InconsistentOffsets { key: X, offset: 0, index: 0, values: vec![A, B] }]);
        assert!(report.bad_error_types.contains(&ErrorType::InconsistentOffsets));
    }

    #[test]
    fn duplicate_is_one_value_at_two_offsets() {
        // Proves a value acknowledged at offset 1 and polled at offset 3 is a duplicate, and that
        // without the second sighting it is not.
        let history = |second: &[(i64, u64)]| {
            Hb::new()
                .op(0, Invoke, F::Send, vec![send(X, A)])
                .op(0, Ok, F::Send, vec![sent(X, 1, A)])
                .op(1, Invoke, F::Send, vec![send(X, B)])
                .op(1, Info, F::Send, vec![send(X, B)])
                .op(2, Invoke, F::Poll, vec![Mop::poll()])
                .op(2, Ok, F::Poll, vec![polled(X, second)])
                .history()
        };
        assert_eq!(errors(&history(&[(2, B), (3, A)])).duplicate.errs, vec![Duplicate { key: X, value: A, count: 2, offsets: vec![1, 3] }]);
        assert!(errors(&history(&[(1, A), (2, B)])).duplicate.is_empty());
    }

    #[test]
    fn duplicates_are_found_in_failed_polls_but_not_failed_sends() {
        // Proves polls of a failed op feed the version order (a consumer must never return bad
        // data) while the offset of a failed send does not: only the committed value is duplicated.
        let history = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A)])
            .op(0, Ok, F::Send, vec![sent(X, 1, A)])
            .op(0, Invoke, F::Send, vec![send(X, B)])
            .op(0, Fail, F::Send, vec![sent(X, 2, B)])
            .op(1, Invoke, F::Poll, vec![Mop::poll()])
            .op(1, Fail, F::Poll, vec![polled(X, &[(11, A), (12, B)])])
            .history();
        assert_eq!(errors(&history).duplicate.errs, vec![Duplicate { key: X, value: A, count: 2, offsets: vec![1, 11] }]);
    }

    #[test]
    fn g1a_is_an_ok_read_of_a_failed_write() {
        // Proves reading a value whose send failed is an aborted read, and reading one whose send
        // is merely indefinite (info) is not.
        let history = |outcome| {
            Hb::new()
                .op(0, Invoke, F::Send, vec![send(X, B), send(Y, C)])
                .op(0, outcome, F::Send, vec![send(X, B), send(Y, C)])
                .op(1, Invoke, F::Poll, vec![Mop::poll()])
                .op(1, Ok, F::Poll, vec![polled(X, &[(0, B)])])
                .history()
        };
        let report = analyze(&history(Fail), &Options::default());
        assert_eq!(report.errors.g1a.errs, vec![AbortedRead { key: X, value: B, writer: 1, reader: 3 }]);
        assert!(!report.valid);
        assert!(errors(&history(Info)).g1a.is_empty());
    }

    #[test]
    fn precommitted_read_is_a_txn_seeing_its_own_send() {
        // Proves a transaction that polls the value it is itself sending is flagged, and one that
        // polls something else is not.
        let history = |read: u64| {
            Hb::new().op(0, Invoke, F::Txn, vec![send(X, A), Mop::poll()]).op(0, Ok, F::Txn, vec![sent(X, 0, A), polled(X, &[(0, read)])]).history()
        };
        assert_eq!(errors(&history(A)).precommitted_read.errs, vec![PrecommittedRead { key: X, value: A, op: 1 }]);
        assert!(errors(&history(B)).precommitted_read.is_empty());
    }

    #[test]
    fn lost_write_is_a_committed_value_below_the_highest_read() {
        // Proves that reading c at offset 2 makes a (offset 0) and b (offset 1) owed; the info
        // send of c itself is not owed; reading a and b as well clears the error.
        let history = |last_poll: &[(i64, u64)]| {
            Hb::new()
                .op(0, Invoke, F::Send, vec![send(X, A)])
                .op(0, Ok, F::Send, vec![sent(X, 0, A)])
                .op(0, Invoke, F::Send, vec![send(X, B), send(X, D)])
                .op(0, Ok, F::Send, vec![sent(X, 1, B), sent(X, 3, D)])
                .op(1, Invoke, F::Send, vec![send(X, C)])
                .op(1, Info, F::Send, vec![send(X, C)])
                .op(0, Invoke, F::Poll, vec![Mop::poll()])
                .op(0, Ok, F::Poll, vec![polled(X, last_poll)])
                .history()
        };
        let lost = errors(&history(&[(2, C)])).lost_write.errs;
        assert_eq!(
            lost,
            vec![
                LostWrite { key: X, value: A, index: 0, max_read_index: 2, writer: 1, max_read: Some(7) },
                LostWrite { key: X, value: B, index: 1, max_read_index: 2, writer: 3, max_read: Some(7) },
            ]
        );
        assert!(errors(&history(&[(0, A), (1, B), (2, C)])).lost_write.is_empty());
    }

    #[test]
    fn lost_write_bounds_by_first_appearance_when_offsets_conflict() {
        // Proves that when a and b both claim offset 0, reading b (and c above it) still owes a.
        let history = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A)])
            .op(0, Ok, F::Send, vec![sent(X, 0, A)])
            .op(0, Invoke, F::Send, vec![send(X, B), send(X, C)])
            .op(0, Ok, F::Send, vec![sent(X, 0, B), sent(X, 2, C)])
            .op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(0, B), (2, C)])])
            .history();
        assert_eq!(errors(&history).lost_write.errs, vec![LostWrite { key: X, value: A, index: 0, max_read_index: 1, writer: 1, max_read: Some(5) }]);
    }

    #[test]
    fn lost_write_counts_info_sends_once_a_sibling_value_was_read() {
        // Proves an info send is owed only when an ok read of another of its values proves it
        // committed (transactions are atomic).
        let base = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A), send(Y, B)])
            .op(0, Info, F::Send, vec![send(X, A), sent(Y, 0, B)])
            .op(1, Invoke, F::Send, vec![send(Y, C)])
            .op(1, Info, F::Send, vec![send(Y, C)]);
        let unproven = base.ops_clone().op(3, Invoke, F::Poll, vec![Mop::poll()]).op(3, Ok, F::Poll, vec![polled(Y, &[(1, C)])]).history();
        assert!(errors(&unproven).lost_write.is_empty());

        let proven = base
            .op(2, Invoke, F::Poll, vec![Mop::poll()])
            .op(2, Ok, F::Poll, vec![polled(X, &[(0, A)])])
            .op(3, Invoke, F::Poll, vec![Mop::poll()])
            .op(3, Ok, F::Poll, vec![polled(Y, &[(1, C)])])
            .history();
        assert_eq!(errors(&proven).lost_write.errs, vec![LostWrite { key: Y, value: B, index: 0, max_read_index: 1, writer: 1, max_read: Some(7) }]);
    }

    /// Process 0 reads a b, then d, then g; process 1 reads c, and offsets 5 and 6 are known
    /// from another send: so process 0 skipped c, then f. `between` goes after the first poll.
    fn poll_skip_history(between: Hb) -> History {
        let hb = Hb::new()
            .op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(1, A), (2, B)])])
            .op(1, Invoke, F::Poll, vec![Mop::poll()])
            .op(1, Ok, F::Poll, vec![polled(X, &[(3, C)])]);
        let hb = between.ops().into_iter().fold(hb, |hb, op| hb.value(op.process, op.kind, op.f, op.value));
        hb.op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(4, D)])])
            .op(2, Invoke, F::Send, vec![send(X, 6)])
            .op(2, Ok, F::Send, vec![sent(X, 6, 6)])
            .op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(7, G)])])
            .op(3, Invoke, F::Send, vec![send(X, A), send(X, B), send(X, C), send(X, D), send(X, G)])
            .op(3, Info, F::Send, vec![send(X, A), send(X, B), send(X, C), send(X, D), send(X, G)])
            .history()
    }

    #[test]
    fn poll_skip_is_a_process_jumping_over_known_values() {
        // Proves successive polls by one process that jump over c, then over 6, are poll-skips,
        // and that subscribing away from x in between forgets the position (only the later skip remains).
        let found = errors(&poll_skip_history(Hb::new())).poll_skip.errs;
        assert_eq!(
            found,
            vec![
                ProcessOrder { key: X, values: [B, D], delta: 2, skipped: vec![C], ops: [1, 5] },
                ProcessOrder { key: X, values: [D, G], delta: 2, skipped: vec![6], ops: [5, 9] },
            ]
        );
        let away = Hb::new().keys(0, Invoke, F::Subscribe, &[Y]).keys(0, Ok, F::Subscribe, &[Y]);
        let remaining: Vec<[u64; 2]> = errors(&poll_skip_history(away)).poll_skip.errs.iter().map(|e| e.values).collect();
        assert_eq!(remaining, vec![[D, G]]);
        let still_x = Hb::new().keys(0, Invoke, F::Assign, &[X, Y]).keys(0, Ok, F::Assign, &[X, Y]);
        assert_eq!(errors(&poll_skip_history(still_x)).poll_skip.count, 2);
    }

    #[test]
    fn values_below_the_deletion_bound_may_go_unread() {
        // Proves that with x deleted below offset 4 a consumer moving from b (2) to d (4) past
        // the unread c (3) is neither a poll skip nor a lost write nor unseen, while the same
        // history without the bound is all three; and that the skip from d to g over 6 (above
        // the bound) is still a poll skip.
        let history = poll_skip_history(Hb::new());
        let bounded = Options { deleted_below: [(X, 4)].into_iter().collect(), ..Options::default() };
        let plain = analyze(&history, &Options::default()).errors;
        assert_eq!(plain.poll_skip.count, 2);
        let kept = analyze(&history, &bounded).errors;
        assert_eq!(kept.poll_skip.errs.iter().map(|e| e.values).collect::<Vec<_>>(), vec![[D, G]]);
        assert!(kept.lost_write.errs.iter().all(|e| e.value != C), "c was deleted, not lost: {:?}", kept.lost_write.errs);

        let unread = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A), send(X, B)])
            .op(0, Ok, F::Send, vec![sent(X, 0, A), sent(X, 1, B)])
            .op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(1, B)])])
            .history();
        let plain = analyze(&unread, &Options::default()).errors;
        assert_eq!(plain.lost_write.count, 1, "a below the highest read is lost without a bound");
        assert!(plain.unseen.is_some());
        let bounded = analyze(&unread, &Options { deleted_below: [(X, 1)].into_iter().collect(), ..Options::default() }).errors;
        assert_eq!(bounded.lost_write.count, 0);
        assert!(bounded.unseen.is_none(), "a was deleted unread");
    }

    /// Sends 0..=5 to x, then process 1 polls 0, and runs `polls` as txns.
    fn rewind_history(polls: &[(crate::OpType, &[(i64, u64)])]) -> History {
        let sends: Vec<Mop> = (0..6).map(|v| send(X, v)).collect();
        let acks: Vec<Mop> = (0..6).map(|v| sent(X, v as i64, v)).collect();
        let mut hb = Hb::new().op(0, Invoke, F::Send, sends).op(0, Ok, F::Send, acks).op(1, Invoke, F::Txn, vec![Mop::poll()]).op(
            1,
            Ok,
            F::Txn,
            vec![polled(X, &[(0, 0)])],
        );
        for (outcome, records) in polls {
            hb = hb.op(1, Invoke, F::Txn, vec![Mop::poll()]).op(1, *outcome, F::Txn, vec![polled(X, records)]);
        }
        hb.history()
    }

    #[test]
    fn aborted_polls_must_rewind() {
        // Proves failed and info txns do not advance a consumer's position: re-reading 1 2 after
        // aborts is fine, but continuing at 3 after an abort skipped 1 2.
        let rewound = rewind_history(&[(Fail, &[(1, 1), (2, 2)]), (Info, &[(1, 1), (2, 2)]), (Ok, &[(1, 1), (2, 2)])]);
        let report = analyze(&rewound, &Options::default());
        assert!(report.errors.poll_skip.is_empty() && report.errors.nonmonotonic_poll.is_empty(), "{report}");

        let not_rewound = rewind_history(&[(Fail, &[(1, 1), (2, 2)]), (Fail, &[(3, 3), (4, 4)]), (Ok, &[(5, 5)])]);
        assert_eq!(
            errors(&not_rewound).poll_skip.errs,
            vec![
                ProcessOrder { key: X, values: [0, 3], delta: 3, skipped: vec![1, 2], ops: [3, 7] },
                ProcessOrder { key: X, values: [0, 5], delta: 5, skipped: vec![1, 2, 3, 4], ops: [3, 9] },
            ]
        );
        let crashed = rewind_history(&[(Fail, &[(1, 1), (2, 2)]), (Info, &[(3, 3), (4, 4)])]);
        assert_eq!(errors(&crashed).poll_skip.count, 1);
    }

    fn nonmonotonic_poll_history(between: Hb) -> History {
        let hb = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A), send(X, B), send(X, C), send(X, D)])
            .op(0, Ok, F::Send, vec![send(X, A), send(X, B), send(X, C), send(X, D)])
            .op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(1, A), (2, B), (3, C)])]);
        let hb = between.ops().into_iter().fold(hb, |hb, op| hb.value(op.process, op.kind, op.f, op.value));
        hb.op(0, Invoke, F::Poll, vec![Mop::poll()]).op(0, Ok, F::Poll, vec![polled(X, &[(2, B), (3, C), (4, D)])]).history()
    }

    #[test]
    fn nonmonotonic_poll_is_a_process_going_back() {
        // Proves a process that read up to c and then starts again at b is nonmonotonic, unless it
        // assigned away from x in between.
        let nonmonotonic = ProcessOrder { key: X, values: [C, B], delta: -1, skipped: vec![], ops: [3, 5] };
        assert_eq!(errors(&nonmonotonic_poll_history(Hb::new())).nonmonotonic_poll.errs, vec![nonmonotonic]);
        let away = Hb::new().keys(0, Invoke, F::Assign, &[Y]).keys(0, Ok, F::Assign, &[Y]);
        assert!(errors(&nonmonotonic_poll_history(away)).nonmonotonic_poll.is_empty());
        let still_x = Hb::new().keys(0, Invoke, F::Subscribe, &[X, Y]).keys(0, Ok, F::Subscribe, &[X, Y]);
        assert_eq!(errors(&nonmonotonic_poll_history(still_x)).nonmonotonic_poll.count, 1);
    }

    fn nonmonotonic_send_history(between: Hb) -> History {
        let hb = Hb::new().op(0, Invoke, F::Send, vec![send(X, C), send(X, D)]).op(0, Ok, F::Send, vec![sent(X, 3, C), sent(X, 4, D)]);
        let hb = between.ops().into_iter().fold(hb, |hb, op| hb.value(op.process, op.kind, op.f, op.value));
        hb.op(0, Invoke, F::Send, vec![send(X, A), send(X, B)]).op(0, Ok, F::Send, vec![sent(X, 1, A), sent(X, 2, B)]).history()
    }

    #[test]
    fn nonmonotonic_send_is_a_process_writing_behind_itself() {
        // Proves a process whose later sends land before its earlier ones is flagged, unless it
        // assigned away from the key in between (an info assign counts).
        let found = errors(&nonmonotonic_send_history(Hb::new())).nonmonotonic_send.errs;
        assert_eq!(found, vec![ProcessOrder { key: X, values: [D, A], delta: -3, skipped: vec![], ops: [1, 3] }]);
        let away = Hb::new().keys(0, Invoke, F::Assign, &[Y]).keys(0, Info, F::Assign, &[Y]);
        assert!(errors(&nonmonotonic_send_history(away)).nonmonotonic_send.is_empty());
    }

    #[test]
    fn int_poll_skip_is_a_gap_inside_one_op() {
        // Proves reading a then d within one op (one poll or two) skips b once another op shows b
        // sits between them, and that a rebalance of x during the op excuses it.
        let history = |rebalanced: bool| {
            let hb = Hb::new()
                .op(1, Invoke, F::Send, vec![send(X, A), send(X, B), send(X, D)])
                .op(1, Info, F::Send, vec![send(X, A), send(X, B), send(X, D)])
                .op(0, Invoke, F::Poll, vec![Mop::poll()])
                .op(0, Ok, F::Poll, vec![polled(X, &[(1, A), (4, D)])]);
            let hb = if rebalanced { hb.rebalanced(&[X]) } else { hb };
            hb.op(2, Invoke, F::Poll, vec![Mop::poll(), Mop::poll()])
                .op(2, Ok, F::Poll, vec![polled(X, &[(1, A)]), polled(X, &[(4, D)])])
                .op(3, Invoke, F::Poll, vec![Mop::poll()])
                .op(3, Ok, F::Poll, vec![polled(X, &[(2, B)])])
                .history()
        };
        let skip = |op| InternalOrder { key: X, values: [A, D], delta: 2, skipped: vec![B], op };
        assert_eq!(errors(&history(false)).int_poll_skip.errs, vec![skip(3), skip(5)]);
        assert_eq!(errors(&history(true)).int_poll_skip.errs, vec![skip(5)]);
    }

    #[test]
    fn int_send_skip_is_allowed_but_reported() {
        // Proves a send of a and c with b landing between them is an int-send-skip, which the
        // default options allow.
        let history = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A), send(X, C)])
            .op(0, Ok, F::Send, vec![sent(X, 1, A), send(X, C)])
            .op(1, Invoke, F::Send, vec![send(X, B)])
            .op(1, Info, F::Send, vec![send(X, B)])
            .op(2, Invoke, F::Poll, vec![Mop::poll()])
            .op(2, Ok, F::Poll, vec![polled(X, &[(1, A), (2, B), (3, C)])])
            .history();
        let report = analyze(&history, &Options::default());
        assert_eq!(report.errors.int_send_skip.errs, vec![InternalOrder { key: X, values: [A, C], delta: 2, skipped: vec![B], op: 1 }]);
        assert_eq!(report.error_types, vec![ErrorType::IntSendSkip]);
        assert!(report.valid, "{report}");
    }

    #[test]
    fn int_nonmonotonic_poll_is_a_read_going_back_inside_one_op() {
        // Proves reading c then a, or c twice, within one op is flagged with the index delta,
        // while reading b then c is not.
        let history = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A), send(X, B), send(X, C)])
            .op(0, Info, F::Send, vec![send(X, A), send(X, B), send(X, C)])
            .op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(3, C), (1, A)])])
            .op(0, Invoke, F::Poll, vec![Mop::poll(), Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(2, B), (3, C)]), polled(X, &[(3, C)])])
            .history();
        assert_eq!(
            errors(&history).int_nonmonotonic_poll.errs,
            vec![
                InternalOrder { key: X, values: [C, A], delta: -2, skipped: vec![], op: 3 },
                InternalOrder { key: X, values: [C, C], delta: 0, skipped: vec![], op: 5 },
            ]
        );
    }

    #[test]
    fn int_nonmonotonic_send_is_sends_landing_backwards() {
        // Proves sends landing in reverse order within one op are flagged, from their own offsets
        // or from offsets another op polled; sends landing in order are not.
        let history = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, C), send(X, A)])
            .op(0, Ok, F::Send, vec![sent(X, 3, C), sent(X, 1, A)])
            .op(0, Invoke, F::Send, vec![send(Y, D), send(Y, B)])
            .op(0, Info, F::Send, vec![send(Y, D), send(Y, B)])
            .op(1, Invoke, F::Send, vec![send(Y, C)])
            .op(1, Info, F::Send, vec![send(Y, C)])
            .op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(Y, &[(2, B), (3, C), (4, D)])])
            .op(0, Invoke, F::Send, vec![send(X, D), send(X, E)])
            .op(0, Ok, F::Send, vec![sent(X, 4, D), sent(X, 5, E)])
            .history();
        assert_eq!(
            errors(&history).int_nonmonotonic_send.errs,
            vec![
                InternalOrder { key: X, values: [C, A], delta: -1, skipped: vec![], op: 1 },
                InternalOrder { key: Y, values: [D, B], delta: -2, skipped: vec![], op: 3 },
            ]
        );
    }

    #[test]
    fn unseen_is_acknowledged_but_never_polled() {
        // Proves an ok send whose value no ok poll returns is unseen (and bad), and polling it clears it.
        let base = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A), send(X, B)])
            .op(0, Ok, F::Send, vec![sent(X, 0, A), sent(X, 1, B)])
            .op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(0, A)])]);
        let report = analyze(&base.ops_clone().history(), &Options::default());
        let unseen = report.errors.unseen.clone().expect("b is unseen");
        assert_eq!((unseen.time_ns, unseen.unseen.get(&X), unseen.messages.get(&X)), (3, Some(&1), Some(&vec![B])));
        assert_eq!(report.bad_error_types, vec![ErrorType::Unseen]);

        let seen = base.op(0, Invoke, F::Poll, vec![Mop::poll()]).op(0, Ok, F::Poll, vec![polled(X, &[(1, B)])]).history();
        assert!(errors(&seen).unseen.is_none());
    }

    #[test]
    fn a_read_without_writer_is_reported_not_fatal() {
        // Proves reading a value no op ever sent is reported as no-writer-of-value (Jepsen aborts).
        let history = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A)])
            .op(0, Ok, F::Send, vec![sent(X, 0, A)])
            .op(1, Invoke, F::Poll, vec![Mop::poll()])
            .op(1, Ok, F::Poll, vec![polled(X, &[(0, A), (1, B)])])
            .history();
        let report = analyze(&history, &Options::default());
        assert_eq!(report.errors.no_writer_of_value.errs, vec![NoWriterOfValue { key: X, value: B, reader: 3 }]);
        assert_eq!(report.bad_error_types, vec![ErrorType::NoWriterOfValue]);
    }

    #[test]
    fn a_history_without_dependencies_is_invalid() {
        // Proves an assign-only history (nothing to check) is invalid, as in Jepsen's empty-history-test,
        // while one send followed by a poll of it is valid.
        let empty = Hb::new().keys(0, Invoke, F::Assign, &[X]).keys(0, Ok, F::Assign, &[X]).history();
        let report = analyze(&empty, &Options::default());
        assert_eq!(report.bad_error_types, vec![ErrorType::EmptyTransactionGraph]);

        let some = Hb::new()
            .op(0, Invoke, F::Send, vec![send(X, A)])
            .op(0, Ok, F::Send, vec![sent(X, 0, A)])
            .op(0, Invoke, F::Poll, vec![Mop::poll()])
            .op(0, Ok, F::Poll, vec![polled(X, &[(0, A)])])
            .history();
        let report = analyze(&some, &Options::default());
        assert!(report.valid, "{report}");
        assert!(report.error_types.is_empty());
    }
}
