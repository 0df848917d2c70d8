//! Derived indices over a history: who wrote and read what, and each key's version order.
//!
//! Everything here is computed once per check and shared by the checks. Ops are named by
//! their position in `History::ops()` (a `usize` "pos"); records translate positions to
//! `Op::index` when they are built.
//!
//! The version order of a key is inferred from offsets. Sends count only when the op must
//! have committed (it was `Ok`, or it was `Info` and some `Ok` read saw one of its values);
//! polls always count, even in `Info`/`Fail` ops, because a Kafka consumer must never return
//! data that is not in the log, whatever happens to its transaction.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Key, Mop, Offset, Op, OpType, Value, F};

/// Key -> values, in the order the op sent or read them.
pub(crate) type KeyValues = BTreeMap<Key, Vec<u64>>;

/// Key -> set of values.
pub(crate) type KeySets = BTreeMap<Key, BTreeSet<u64>>;

/// What one key's log looks like, as far as the history can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionOrder {
    /// Offset -> every value seen or acknowledged at that offset. Offsets nobody observed
    /// (transaction markers, never-read records) are absent.
    pub log: BTreeMap<Offset, BTreeSet<u64>>,
    /// Dense index -> one value at the index-th non-empty offset (the smallest, if several).
    pub by_index: Vec<u64>,
    /// Dense index -> the Kafka offset it stands for.
    pub offsets: Vec<Offset>,
    /// Value -> dense index; when a value sits at several offsets, the last wins.
    pub by_value: BTreeMap<u64, usize>,
}

impl VersionOrder {
    /// The dense index of `value`, if known.
    pub fn index_of(&self, value: u64) -> Option<usize> {
        self.by_value.get(&value).copied()
    }

    /// The value just before `value` in the order, if `value` is known and not first.
    pub fn previous_value(&self, value: u64) -> Option<u64> {
        let index = self.index_of(value)?;
        index.checked_sub(1).map(|i| self.by_index[i])
    }
}

/// Offsets holding two or more different values: the log diverged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Divergence {
    pub key: Key,
    pub offset: Offset,
    pub index: usize,
    pub values: Vec<u64>,
}

/// Shared indices for one check.
pub(crate) struct Analysis<'h> {
    pub ops: &'h [Op],
    /// Per pos: completion pos of an invocation, or invocation pos of a completion.
    pub pair: Vec<Option<usize>>,
    /// Per pos: values sent (completed send/txn ops only).
    pub writes: Vec<KeyValues>,
    /// Per pos: values read, concatenated over all poll mops (completed poll/txn ops only).
    pub reads: Vec<KeyValues>,
    /// Values written by completed send/txn ops, by completion type. Only `Fail` is filled:
    /// it is the only type a check consults.
    pub writes_by_type: BTreeMap<OpType, KeySets>,
    /// Values read by completed poll/txn ops, by completion type. Only `Ok` is filled.
    pub reads_by_type: BTreeMap<OpType, KeySets>,
    /// Key -> value -> the last completion whose writes contain it.
    pub writer_of: BTreeMap<Key, BTreeMap<u64, usize>>,
    /// Key -> value -> the first completion that read it. (All readers: scan `reads`.)
    pub first_reader_of: BTreeMap<Key, BTreeMap<u64, usize>>,
    pub version_orders: BTreeMap<Key, VersionOrder>,
    pub divergences: Vec<Divergence>,
}

impl<'h> Analysis<'h> {
    pub fn new(ops: &'h [Op]) -> Self {
        let pair = pair_by_process(ops);
        // Invocations carry no outcome: their sends are intentions and their polls are empty.
        let completed = |op: &&Op| op.kind != OpType::Invoke;
        let writes: Vec<KeyValues> = ops.iter().map(|op| Some(op).filter(completed).map(op_writes).unwrap_or_default()).collect();
        let reads: Vec<KeyValues> = ops.iter().map(|op| Some(op).filter(completed).map(op_reads).unwrap_or_default()).collect();

        let mut writes_by_type: BTreeMap<OpType, KeySets> = BTreeMap::new();
        let mut reads_by_type: BTreeMap<OpType, KeySets> = BTreeMap::new();
        let mut writer_of: BTreeMap<Key, BTreeMap<u64, usize>> = BTreeMap::new();
        let mut first_reader_of: BTreeMap<Key, BTreeMap<u64, usize>> = BTreeMap::new();
        for (pos, op) in ops.iter().enumerate() {
            if op.kind == OpType::Invoke {
                continue;
            }
            for (&key, values) in &writes[pos] {
                if op.kind == OpType::Fail {
                    writes_by_type.entry(op.kind).or_default().entry(key).or_default().extend(values);
                }
                let writers = writer_of.entry(key).or_default();
                for &value in values {
                    writers.insert(value, pos);
                }
            }
            for (&key, values) in &reads[pos] {
                if op.kind == OpType::Ok {
                    reads_by_type.entry(op.kind).or_default().entry(key).or_default().extend(values);
                }
                let readers = first_reader_of.entry(key).or_default();
                for &value in values {
                    readers.entry(value).or_insert(pos);
                }
            }
        }

        let mut analysis = Analysis {
            ops,
            pair,
            writes,
            reads,
            writes_by_type,
            reads_by_type,
            writer_of,
            first_reader_of,
            version_orders: BTreeMap::new(),
            divergences: Vec::new(),
        };
        analysis.build_version_orders();
        analysis
    }

    /// An `Ok` op, or an `Info` op one of whose sent values some `Ok` op read.
    pub fn must_have_committed(&self, pos: usize) -> bool {
        match self.ops[pos].kind {
            OpType::Ok => true,
            OpType::Info => {
                let Some(ok_reads) = self.reads_by_type.get(&OpType::Ok) else { return false };
                self.writes[pos].iter().any(|(key, values)| ok_reads.get(key).is_some_and(|read| values.iter().any(|v| read.contains(v))))
            }
            OpType::Invoke | OpType::Fail => false,
        }
    }

    /// The version order of `key`, if anything about its log is known.
    pub fn order(&self, key: Key) -> Option<&VersionOrder> {
        self.version_orders.get(&key)
    }

    /// The dense index of `value` in `key`'s order.
    pub fn index_of(&self, key: Key, value: u64) -> Option<usize> {
        self.order(key).and_then(|order| order.index_of(value))
    }

    /// The last completion that sent `value` to `key`.
    pub fn writer(&self, key: Key, value: u64) -> Option<usize> {
        self.writer_of.get(&key).and_then(|writers| writers.get(&value)).copied()
    }

    /// `Op::index` of the op at `pos`.
    pub fn index(&self, pos: usize) -> usize {
        self.ops[pos].index
    }

    fn build_version_orders(&mut self) {
        let mut logs: BTreeMap<Key, BTreeMap<Offset, BTreeSet<u64>>> = BTreeMap::new();
        for (pos, op) in self.ops.iter().enumerate() {
            if !op.is_log_op() {
                continue;
            }
            let trust_sends = self.must_have_committed(pos);
            for mop in op.value.mops() {
                match mop {
                    Mop::Send { key, value, offset: Some(offset) } if trust_sends && *offset >= 0 => {
                        logs.entry(*key).or_default().entry(*offset).or_default().insert(*value);
                    }
                    Mop::Send { .. } => {}
                    Mop::Poll { reads } => {
                        for (key, records) in reads {
                            for &(offset, value) in records {
                                if offset >= 0 {
                                    logs.entry(*key).or_default().entry(offset).or_default().insert(value);
                                }
                            }
                        }
                    }
                }
            }
        }

        for (key, log) in logs {
            let mut order = VersionOrder::default();
            for (index, (&offset, values)) in log.iter().enumerate() {
                let first = *values.first().expect("log offsets hold at least one value");
                order.by_index.push(first);
                order.offsets.push(offset);
                for &value in values {
                    order.by_value.insert(value, index);
                }
                if values.len() >= 2 {
                    self.divergences.push(Divergence { key, offset, index, values: values.iter().copied().collect() });
                }
            }
            order.log = log;
            self.version_orders.insert(key, order);
        }
    }
}

/// Pairs each invocation with the next completion by the same process.
fn pair_by_process(ops: &[Op]) -> Vec<Option<usize>> {
    let mut pair = vec![None; ops.len()];
    let mut pending: BTreeMap<u64, usize> = BTreeMap::new();
    for (pos, op) in ops.iter().enumerate() {
        if op.kind == OpType::Invoke {
            pending.insert(op.process, pos);
        } else if let Some(invoke) = pending.remove(&op.process) {
            pair[invoke] = Some(pos);
            pair[pos] = Some(invoke);
        }
    }
    pair
}

/// Values an op sent, by key, in mop order. Only send/txn ops write.
pub(crate) fn op_writes(op: &Op) -> KeyValues {
    let mut writes = KeyValues::new();
    if matches!(op.f, F::Send | F::Txn) {
        for mop in op.value.mops() {
            if let Mop::Send { key, value, .. } = mop {
                writes.entry(*key).or_default().push(*value);
            }
        }
    }
    writes
}

/// Values an op read, by key, concatenated across its polls. Only poll/txn ops read.
pub(crate) fn op_reads(op: &Op) -> KeyValues {
    let mut reads = KeyValues::new();
    if matches!(op.f, F::Poll | F::Txn) {
        if let Value::Mops(mops) = &op.value {
            for mop in mops {
                if let Mop::Poll { reads: records } = mop {
                    for (key, records) in records {
                        reads.entry(*key).or_default().extend(records.iter().map(|&(_, value)| value));
                    }
                }
            }
        }
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    #[test]
    fn version_order_skips_holes_and_lets_the_last_index_win() {
        // Proves the dense index skips unobserved offsets, a divergent offset is reported, and an
        // info txn's sends count once an ok poll proves it committed (Jepsen's version-orders-test).
        let history = ops(vec![
            (0, OpType::Invoke, F::Txn, vec![Mop::poll()]),
            (0, OpType::Ok, F::Txn, vec![Mop::polled([(X, vec![(0, A), (1, B)])])]),
            (1, OpType::Invoke, F::Txn, vec![Mop::send(X, C), Mop::send(X, B), Mop::send(X, D)]),
            (1, OpType::Info, F::Txn, vec![Mop::sent(X, 1, C), Mop::sent(X, 3, B), Mop::sent(X, 4, D)]),
        ]);
        let analysis = Analysis::new(&history);
        let order = analysis.order(X).unwrap();
        assert_eq!(order.by_index, vec![A, B, B, D]);
        assert_eq!(order.offsets, vec![0, 1, 3, 4]);
        assert_eq!(order.index_of(B), Some(2));
        assert_eq!(order.index_of(C), Some(1));
        assert_eq!(analysis.divergences, vec![Divergence { key: X, offset: 1, index: 1, values: vec![B, C] }]);
    }

    #[test]
    fn unproven_info_sends_stay_out_of_the_version_order() {
        // Proves an info send nobody read contributes no offsets, so it cannot diverge the log.
        let history = ops(vec![
            (0, OpType::Invoke, F::Send, vec![Mop::send(X, A), Mop::send(Y, A)]),
            (0, OpType::Info, F::Send, vec![Mop::sent(X, 0, A), Mop::send(Y, A)]),
            (1, OpType::Invoke, F::Send, vec![Mop::send(X, B)]),
            (1, OpType::Ok, F::Send, vec![Mop::sent(X, 0, B)]),
        ]);
        let analysis = Analysis::new(&history);
        assert!(!analysis.must_have_committed(1));
        assert!(analysis.divergences.is_empty());
        assert_eq!(analysis.order(X).unwrap().by_index, vec![B]);
    }
}
