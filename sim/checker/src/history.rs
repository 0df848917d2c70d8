//! The history: what Kafka clients asked for and what they were told, in the order it happened.
//!
//! A history is a flat list of [`Op`]s. Every operation appears twice: once as an
//! [`OpType::Invoke`] when the client starts it, and once as a completion ([`OpType::Ok`],
//! [`OpType::Info`] or [`OpType::Fail`]) when it learns the outcome. A process runs one
//! operation at a time, so an invocation is paired with the next completion by the same
//! process. This is Jepsen's model (`jepsen.history`), kept close so that histories from the
//! deterministic simulator and from a Jepsen-style suite over real processes look alike.
//!
//! Invariants [`History`] keeps: `ops[i].index == i` for ops it appends, and a process never
//! has two invocations outstanding. `Info` means "may or may not have happened": a process
//! that got one should be retired and replaced by a fresh process id, as Jepsen does, though
//! the checker does not require it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A key: one Kafka topic-partition. The recorder maps `(topic, partition)` to keys bijectively.
pub type Key = u64;

/// A Kafka offset within one topic-partition. Negative offsets are "unknown" and are ignored.
pub type Offset = i64;

/// Whether an entry is the start of an operation or one of its three possible outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The client started the operation.
    Invoke,
    /// The operation definitely happened.
    Ok,
    /// The outcome is unknown (timeout, lost connection, crash): it may or may not have happened.
    Info,
    /// The operation definitely did not happen.
    Fail,
}

/// The function a client performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum F {
    /// Produce only: every mop is a [`Mop::Send`].
    Send,
    /// Consume only: every mop is a [`Mop::Poll`].
    Poll,
    /// A transaction mixing sends and polls.
    Txn,
    /// `KafkaConsumer.assign`: the value is [`Value::Keys`].
    Assign,
    /// `KafkaConsumer.subscribe`: the value is [`Value::Keys`].
    Subscribe,
    /// The client tore itself down on purpose.
    Crash,
    /// A debugging probe of topic-partition state; ignored by the checker.
    DebugTopicPartitions,
}

/// One micro-operation of a send/poll/txn operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mop {
    /// Produce `value` to `key`. `offset` is `None` in the invocation and whenever the client
    /// never learned where the record landed (typically `Info` completions).
    Send {
        /// The topic-partition written.
        key: Key,
        /// The message; unique per key across the whole history.
        value: u64,
        /// Where the broker put it, if the client knows.
        offset: Option<Offset>,
    },
    /// One `poll()` call. Empty in the invocation; in the completion, the `(offset, value)`
    /// records returned for each key, in the order returned.
    Poll {
        /// Key -> records returned for that key, in order.
        reads: BTreeMap<Key, Vec<(Offset, u64)>>,
    },
}

impl Mop {
    /// A send as invoked: no offset yet.
    pub fn send(key: Key, value: u64) -> Self {
        Mop::Send { key, value, offset: None }
    }

    /// A send that completed at a known offset.
    pub fn sent(key: Key, offset: Offset, value: u64) -> Self {
        Mop::Send { key, value, offset: Some(offset) }
    }

    /// A poll as invoked: nothing read yet.
    pub fn poll() -> Self {
        Mop::Poll { reads: BTreeMap::new() }
    }

    /// A poll that returned `reads`: `(key, [(offset, value), ...])` pairs.
    pub fn polled<I, R>(reads: I) -> Self
    where
        I: IntoIterator<Item = (Key, R)>,
        R: IntoIterator<Item = (Offset, u64)>,
    {
        let mut map: BTreeMap<Key, Vec<(Offset, u64)>> = BTreeMap::new();
        for (key, records) in reads {
            map.entry(key).or_default().extend(records);
        }
        Mop::Poll { reads: map }
    }
}

/// The value of an operation: micro-operations for send/poll/txn, keys for assign/subscribe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// Send/poll/txn: micro-operations in the order the client performed them.
    Mops(Vec<Mop>),
    /// Assign/subscribe: the keys the consumer now owns.
    Keys {
        /// The keys assigned or subscribed to.
        keys: Vec<Key>,
        /// Assign only: the consumer then seeked to the beginning of every key.
        seek_to_beginning: bool,
    },
    /// Crash, debug-topic-partitions, and anything else without a value.
    #[default]
    None,
}

impl Value {
    /// The micro-operations, or an empty slice for non-mop values.
    pub fn mops(&self) -> &[Mop] {
        match self {
            Value::Mops(mops) => mops,
            _ => &[],
        }
    }

    /// The assigned/subscribed keys, or `None` for other values.
    pub fn keys(&self) -> Option<&[Key]> {
        match self {
            Value::Keys { keys, .. } => Some(keys),
            _ => None,
        }
    }
}

/// Which way a consumer-group rebalance moved partitions, in `ConsumerRebalanceListener`'s words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebalanceKind {
    /// `onPartitionsAssigned`.
    Assigned,
    /// `onPartitionsRevoked`.
    Revoked,
    /// `onPartitionsLost`.
    Lost,
}

/// A rebalance the consumer observed while an operation ran. Keys in any rebalance exempt
/// that operation from internal poll-order checks on those keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebalance {
    /// What happened.
    pub kind: RebalanceKind,
    /// The topic-partitions involved.
    pub keys: Vec<Key>,
}

/// One history entry: an invocation or a completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history; errors name operations by this index.
    pub index: usize,
    /// When it happened, in nanoseconds (simulated or monotonic); only reported, never ordered on.
    pub time_ns: u64,
    /// The logical client that performed it. One operation at a time per process.
    pub process: u64,
    /// Invocation or outcome.
    pub kind: OpType,
    /// What the client did.
    pub f: F,
    /// Mops or keys.
    pub value: Value,
    /// Why an `Info`/`Fail` happened (client exception text), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Rebalances observed during this operation (completions only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebalance_log: Vec<Rebalance>,
}

impl Op {
    /// Whether this is a send, poll or txn: the operations that touch logs.
    pub fn is_log_op(&self) -> bool {
        matches!(self.f, F::Send | F::Poll | F::Txn)
    }
}

/// A started, not yet completed, operation returned by [`History::invoke`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "complete the operation with History::complete"]
pub struct Handle {
    process: u64,
    index: usize,
}

impl Handle {
    /// The index of the invocation in the history.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The process that invoked it.
    pub fn process(&self) -> u64 {
        self.process
    }
}

/// Why [`History::push`] refused an op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// An invocation by a process that already has one outstanding.
    AlreadyInvoked {
        /// The process.
        process: u64,
        /// Index of its outstanding invocation.
        pending: usize,
    },
    /// A completion by a process with nothing outstanding.
    NotInvoked {
        /// The process.
        process: u64,
    },
    /// A completion whose `f` differs from its invocation's.
    FunctionMismatch {
        /// Index of the invocation.
        invoke: usize,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::AlreadyInvoked { process, pending } => {
                write!(out, "process {process} invoked again while op {pending} is outstanding")
            }
            HistoryError::NotInvoked { process } => write!(out, "process {process} completed an op it never invoked"),
            HistoryError::FunctionMismatch { invoke } => write!(out, "completion's f differs from invocation {invoke}'s"),
        }
    }
}

impl std::error::Error for HistoryError {}

/// A history under construction or loaded from disk.
///
/// Recording as operations happen:
/// ```
/// use runnel_checker::{History, F, Mop, OpType, Value};
/// let mut history = History::new();
/// let send = history.invoke(0, F::Send, Value::Mops(vec![Mop::send(1, 10)]), 100);
/// history.complete(send, 200, OpType::Ok, Value::Mops(vec![Mop::sent(1, 0, 10)]), None);
/// assert_eq!(history.ops().len(), 2);
/// ```
///
/// Serialised as the plain sequence of ops (like Jepsen's `history.edn`); deserialising
/// re-validates the pairing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(into = "Vec<Op>", try_from = "Vec<Op>")]
pub struct History {
    ops: Vec<Op>,
    /// Process -> index of its outstanding invocation; derived from `ops`.
    pending: BTreeMap<u64, usize>,
}

impl From<History> for Vec<Op> {
    fn from(history: History) -> Self {
        history.ops
    }
}

impl TryFrom<Vec<Op>> for History {
    type Error = HistoryError;

    fn try_from(ops: Vec<Op>) -> Result<Self, HistoryError> {
        History::from_ops(ops)
    }
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a history from ops already in order (e.g. loaded from a Jepsen-style file),
    /// validating invoke/complete pairing. Indexes are kept as given.
    pub fn from_ops(ops: impl IntoIterator<Item = Op>) -> Result<Self, HistoryError> {
        let mut history = History::new();
        for op in ops {
            history.push_keeping_index(op)?;
        }
        Ok(history)
    }

    /// All ops in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Records the start of an operation at `time_ns`. Panics if `process` already has an
    /// operation outstanding: that is a bug in the recorder, not in the system under test.
    pub fn invoke(&mut self, process: u64, f: F, value: Value, time_ns: u64) -> Handle {
        let index = self.ops.len();
        let op = Op { index, time_ns, process, kind: OpType::Invoke, f, value, error: None, rebalance_log: Vec::new() };
        if let Err(error) = self.push(op) {
            panic!("recorder bug: {error}");
        }
        Handle { process, index }
    }

    /// Notes a rebalance observed while `handle`'s operation runs; it is attached to the completion.
    pub fn record_rebalance(&mut self, handle: &Handle, rebalance: Rebalance) {
        assert!(self.pending.get(&handle.process) == Some(&handle.index), "handle {handle:?} is not outstanding");
        self.ops[handle.index].rebalance_log.push(rebalance);
    }

    /// Records the outcome of `handle`'s operation at `time_ns` and returns the completion's index.
    pub fn complete(&mut self, handle: Handle, time_ns: u64, kind: OpType, value: Value, error: Option<String>) -> usize {
        assert!(kind != OpType::Invoke, "complete({handle:?}) with OpType::Invoke");
        assert!(self.pending.get(&handle.process) == Some(&handle.index), "handle {handle:?} is not outstanding");
        let index = self.ops.len();
        let invocation = &mut self.ops[handle.index];
        let rebalance_log = std::mem::take(&mut invocation.rebalance_log);
        let op = Op { index, time_ns, process: handle.process, kind, f: invocation.f, value, error, rebalance_log };
        match self.push(op) {
            Ok(index) => index,
            Err(error) => panic!("recorder bug: {error}"),
        }
    }

    /// Completes every outstanding operation as `Info` with `error`, as Jepsen does when a
    /// test ends with clients mid-operation. Their sends keep the invocation's values, without
    /// offsets, so values they may have written still have a writer.
    pub fn complete_pending_as_info(&mut self, time_ns: u64, error: &str) {
        let pending: Vec<(u64, usize)> = self.pending.iter().map(|(&process, &index)| (process, index)).collect();
        for (process, index) in pending {
            let value = self.ops[index].value.clone();
            self.complete(Handle { process, index }, time_ns, OpType::Info, value, Some(error.to_string()));
        }
    }

    /// Appends `op` with `index` set to its position; returns that index.
    pub fn push(&mut self, mut op: Op) -> Result<usize, HistoryError> {
        op.index = self.ops.len();
        self.push_keeping_index(op)
    }

    fn push_keeping_index(&mut self, op: Op) -> Result<usize, HistoryError> {
        let position = self.ops.len();
        if op.kind == OpType::Invoke {
            if let Some(&pending) = self.pending.get(&op.process) {
                return Err(HistoryError::AlreadyInvoked { process: op.process, pending });
            }
            self.pending.insert(op.process, position);
        } else {
            let Some(invoke) = self.pending.remove(&op.process) else {
                return Err(HistoryError::NotInvoked { process: op.process });
            };
            if self.ops[invoke].f != op.f {
                self.pending.insert(op.process, invoke);
                return Err(HistoryError::FunctionMismatch { invoke: self.ops[invoke].index });
            }
        }
        let index = op.index;
        self.ops.push(op);
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_indexes_pairs_and_carries_rebalances() {
        // Proves invoke/complete assign consecutive indexes, copy f to the completion, and move
        // rebalances recorded mid-operation onto the completion.
        let mut history = History::new();
        let poll = history.invoke(7, F::Poll, Value::Mops(vec![Mop::poll()]), 10);
        let send = history.invoke(8, F::Send, Value::Mops(vec![Mop::send(1, 5)]), 11);
        history.record_rebalance(&poll, Rebalance { kind: RebalanceKind::Revoked, keys: vec![1] });
        assert_eq!(history.complete(poll, 20, OpType::Ok, Value::Mops(vec![Mop::polled([(1, vec![(0, 4)])])]), None), 2);
        let completion = &history.ops()[2];
        assert_eq!((completion.process, completion.f, completion.time_ns), (7, F::Poll, 20));
        assert_eq!(completion.rebalance_log, vec![Rebalance { kind: RebalanceKind::Revoked, keys: vec![1] }]);
        assert!(history.ops()[0].rebalance_log.is_empty());

        assert_eq!(send.index(), 1);
        history.complete_pending_as_info(30, "test ended");
        let info = &history.ops()[3];
        assert_eq!((info.kind, info.process, info.error.as_deref()), (OpType::Info, 8, Some("test ended")));
        assert_eq!(info.value, Value::Mops(vec![Mop::send(1, 5)]));
    }

    #[test]
    fn from_ops_rejects_broken_pairing() {
        // Proves a loaded history must pair invocations and completions per process.
        let op = |process, kind| Op { index: 0, time_ns: 0, process, kind, f: F::Poll, value: Value::None, error: None, rebalance_log: Vec::new() };
        assert_eq!(History::from_ops([op(1, OpType::Ok)]).unwrap_err(), HistoryError::NotInvoked { process: 1 });
        assert_eq!(History::from_ops([op(1, OpType::Invoke), op(1, OpType::Invoke)]).unwrap_err(), HistoryError::AlreadyInvoked { process: 1, pending: 0 });
        let mismatched = Op { f: F::Send, ..op(1, OpType::Ok) };
        assert_eq!(History::from_ops([op(1, OpType::Invoke), mismatched]).unwrap_err(), HistoryError::FunctionMismatch { invoke: 0 });
        assert_eq!(History::from_ops([op(1, OpType::Invoke), op(2, OpType::Invoke), op(1, OpType::Fail)]).unwrap().ops().len(), 3);
    }
}
