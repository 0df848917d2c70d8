//! What the checker found: typed error records, the verdict, and a short human summary.
//!
//! Names follow Jepsen's (`lost-write`, `G1c-realtime`, ...) so results can be compared with
//! Jepsen's kafka checker line by line. Records name ops by `Op::index`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::{Key, Offset};

/// Every kind of error the checker can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ErrorType {
    /// A value at two or more offsets of one key.
    #[serde(rename = "duplicate")]
    Duplicate,
    /// Two or more values at one offset of one key.
    #[serde(rename = "inconsistent-offsets")]
    InconsistentOffsets,
    /// Aborted read: an ok read saw a value written by a failed op.
    G1a,
    /// A transaction read its own not-yet-committed send.
    #[serde(rename = "precommitted-read")]
    PrecommittedRead,
    /// A value below the highest value read was never read by any ok op.
    #[serde(rename = "lost-write")]
    LostWrite,
    /// A read value that no recorded op ever sent (Jepsen throws `:no-writer-of-value`).
    #[serde(rename = "no-writer-of-value")]
    NoWriterOfValue,
    /// One process's consecutive polls of a key jumped over values.
    #[serde(rename = "poll-skip")]
    PollSkip,
    /// One process's consecutive polls of a key went backwards or repeated.
    #[serde(rename = "nonmonotonic-poll")]
    NonmonotonicPoll,
    /// Within one op, consecutive reads of a key jumped over values.
    #[serde(rename = "int-poll-skip")]
    IntPollSkip,
    /// Within one op, consecutive reads of a key went backwards or repeated.
    #[serde(rename = "int-nonmonotonic-poll")]
    IntNonmonotonicPoll,
    /// Within one op, consecutive sends to a key landed with values between them (normal in Kafka).
    #[serde(rename = "int-send-skip")]
    IntSendSkip,
    /// Within one op, consecutive sends to a key landed out of order.
    #[serde(rename = "int-nonmonotonic-send")]
    IntNonmonotonicSend,
    /// One process's consecutive sends to a key landed out of order.
    #[serde(rename = "nonmonotonic-send")]
    NonmonotonicSend,
    /// Acknowledged sends no ok poll ever returned.
    #[serde(rename = "unseen")]
    Unseen,
    /// A cycle of write-write dependencies.
    G0,
    /// G0 with process-order edges.
    #[serde(rename = "G0-process")]
    G0Process,
    /// G0 with real-time edges.
    #[serde(rename = "G0-realtime")]
    G0Realtime,
    /// A cycle of write-write and write-read dependencies with at least one write-read.
    G1c,
    /// G1c with process-order edges.
    #[serde(rename = "G1c-process")]
    G1cProcess,
    /// G1c with real-time edges.
    #[serde(rename = "G1c-realtime")]
    G1cRealtime,
    /// A ww cycle exists but no concrete cycle was extracted (Elle timeout fallback).
    #[serde(rename = "PL-1-cycle-exists")]
    Pl1CycleExists,
    /// A ww+realtime cycle exists but no concrete cycle was extracted.
    #[serde(rename = "strong-PL-1-cycle-exists")]
    StrongPl1CycleExists,
    /// A ww+wr cycle exists but no concrete cycle was extracted.
    #[serde(rename = "PL-2-cycle-exists")]
    Pl2CycleExists,
    /// A ww+wr+realtime cycle exists but no concrete cycle was extracted.
    #[serde(rename = "strong-PL-2-cycle-exists")]
    StrongPl2CycleExists,
    /// No dependency edges at all: nothing was checked, so the history proves nothing.
    #[serde(rename = "empty-transaction-graph")]
    EmptyTransactionGraph,
}

impl ErrorType {
    /// Jepsen's name for this error type.
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::Duplicate => "duplicate",
            ErrorType::InconsistentOffsets => "inconsistent-offsets",
            ErrorType::G1a => "G1a",
            ErrorType::PrecommittedRead => "precommitted-read",
            ErrorType::LostWrite => "lost-write",
            ErrorType::NoWriterOfValue => "no-writer-of-value",
            ErrorType::PollSkip => "poll-skip",
            ErrorType::NonmonotonicPoll => "nonmonotonic-poll",
            ErrorType::IntPollSkip => "int-poll-skip",
            ErrorType::IntNonmonotonicPoll => "int-nonmonotonic-poll",
            ErrorType::IntSendSkip => "int-send-skip",
            ErrorType::IntNonmonotonicSend => "int-nonmonotonic-send",
            ErrorType::NonmonotonicSend => "nonmonotonic-send",
            ErrorType::Unseen => "unseen",
            ErrorType::G0 => "G0",
            ErrorType::G0Process => "G0-process",
            ErrorType::G0Realtime => "G0-realtime",
            ErrorType::G1c => "G1c",
            ErrorType::G1cProcess => "G1c-process",
            ErrorType::G1cRealtime => "G1c-realtime",
            ErrorType::Pl1CycleExists => "PL-1-cycle-exists",
            ErrorType::StrongPl1CycleExists => "strong-PL-1-cycle-exists",
            ErrorType::Pl2CycleExists => "PL-2-cycle-exists",
            ErrorType::StrongPl2CycleExists => "strong-PL-2-cycle-exists",
            ErrorType::EmptyTransactionGraph => "empty-transaction-graph",
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        out.write_str(self.name())
    }
}

/// Which histories count as valid: the test's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Infer write-write dependencies from log order (Jepsen's `--ww-deps`). With them, G1c is
    /// expected (writes are not isolated in Kafka), so G1c becomes allowed.
    pub ww_deps: bool,
    /// Consumers used `subscribe` (Jepsen's `--sub-via subscribe`): a rebalance between polls may
    /// legitimately move a consumer, so poll-skip and nonmonotonic-poll become allowed.
    pub sub_via_subscribe: bool,
    /// Per key, the offset below which records were deleted (DeleteRecords, retention; not in
    /// Jepsen): a value below it that nobody read is neither a lost write nor unseen, and a
    /// consumer moving past such values (to the log start) is no poll skip. Records deleted
    /// after they were read must still have been read in order.
    #[serde(default)]
    pub deleted_below: BTreeMap<Key, Offset>,
}

impl Options {
    /// Error types this configuration tolerates (Jepsen's `allowed-error-types`).
    pub fn allowed_error_types(&self) -> Vec<ErrorType> {
        use ErrorType::*;
        // Kafka transactions do not isolate writes: sends from concurrent transactions interleave
        // (int-send-skip) and can form write cycles (G0 and its imprecise fallbacks).
        let mut allowed = vec![IntSendSkip, G0, G0Process, G0Realtime, Pl1CycleExists, StrongPl1CycleExists];
        if self.sub_via_subscribe {
            allowed.extend([PollSkip, NonmonotonicPoll]);
        }
        if self.ww_deps {
            allowed.extend([G1c, G1cProcess, G1cRealtime, Pl2CycleExists, StrongPl2CycleExists]);
        }
        allowed
    }
}

/// Several values at one offset of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InconsistentOffsets {
    /// The key.
    pub key: Key,
    /// The Kafka offset.
    pub offset: Offset,
    /// The dense index of that offset in the key's version order.
    pub index: usize,
    /// The values claimed to be there, ascending.
    pub values: Vec<u64>,
}

/// One value at several offsets of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    /// The key.
    pub key: Key,
    /// The duplicated value.
    pub value: u64,
    /// How many offsets hold it.
    pub count: usize,
    /// Those Kafka offsets, ascending.
    pub offsets: Vec<Offset>,
}

/// An ok read of a value written by a failed op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedRead {
    /// The key.
    pub key: Key,
    /// The value.
    pub value: u64,
    /// The op that wrote it (its last writer).
    pub writer: usize,
    /// The ok op that read it.
    pub reader: usize,
}

/// A transaction that read a value it sent itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecommittedRead {
    /// The key.
    pub key: Key,
    /// The value (the smallest, if several).
    pub value: u64,
    /// The op.
    pub op: usize,
}

/// A committed value, before the highest value read, that no ok op ever read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrite {
    /// The key.
    pub key: Key,
    /// The lost value.
    pub value: u64,
    /// Its (first) dense index in the version order.
    pub index: usize,
    /// The highest dense index some ok op read.
    pub max_read_index: usize,
    /// The op that sent it.
    pub writer: usize,
    /// An op that read a value at `max_read_index`, proving readers got that far.
    pub max_read: Option<usize>,
}

/// A read value no recorded op sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoWriterOfValue {
    /// The key.
    pub key: Key,
    /// The value.
    pub value: u64,
    /// The first op that read it.
    pub reader: usize,
}

/// Two successive ops of one process whose reads (or sends) of a key do not follow each
/// other in the version order. `values` is `[last value of ops[0], first value of ops[1]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessOrder {
    /// The key.
    pub key: Key,
    /// `[v, v']`.
    pub values: [u64; 2],
    /// `index(v') - index(v)`: 1 is correct, above 1 a skip, below 1 backwards.
    pub delta: i64,
    /// Values jumped over (skips only), in log order.
    pub skipped: Vec<u64>,
    /// `[earlier op, later op]`.
    pub ops: [usize; 2],
}

/// Two consecutive reads (or sends) of a key within one op that do not follow each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalOrder {
    /// The key.
    pub key: Key,
    /// The consecutive pair.
    pub values: [u64; 2],
    /// `index(values[1]) - index(values[0])`.
    pub delta: i64,
    /// Values jumped over (skips only), in log order.
    pub skipped: Vec<u64>,
    /// The op.
    pub op: usize,
}

/// Acknowledged sends that no ok poll returned by the end of the history. Can be a lost
/// write or a very late one: the history cannot tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unseen {
    /// Time of the last ok send/poll/txn.
    pub time_ns: u64,
    /// Key -> how many values are unseen.
    pub unseen: BTreeMap<Key, usize>,
    /// Key -> the unseen values, ascending (at most 32 per key once condensed).
    pub messages: BTreeMap<Key, Vec<u64>>,
}

/// Why one op precedes the next in a cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dependency {
    /// `from` sent `value` to `key`, and `to` sent `next_value`, the value right after it.
    Ww {
        /// The key.
        key: Key,
        /// Sent by `from`.
        value: u64,
        /// Sent by `to`, next in the version order.
        next_value: u64,
    },
    /// `from` sent `value` to `key` and `to` read it.
    Wr {
        /// The key.
        key: Key,
        /// The value.
        value: u64,
    },
    /// `from` completed before `to` was invoked.
    Realtime,
    /// `from` and `to` are successive ok ops of one process.
    Process,
}

/// One edge of a cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleStep {
    /// Op index of the earlier op.
    pub from: usize,
    /// Op index of the later op.
    pub to: usize,
    /// Why.
    pub dependency: Dependency,
}

/// A dependency cycle: `ops` starts and ends with the same op, `steps[i]` links `ops[i]` to `ops[i+1]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cycle {
    /// Op indexes around the cycle, first repeated at the end.
    pub ops: Vec<usize>,
    /// The edges.
    pub steps: Vec<CycleStep>,
}

/// A strongly connected component in which a cycle of some kind exists but none was extracted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleExists {
    /// Op indexes of the component, ascending.
    pub scc: Vec<usize>,
}

/// Up to a few examples of one error type, and how many there were in all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condensed<T> {
    /// How many errors of this type the history has.
    pub count: usize,
    /// The examples kept (all of them before condensing).
    pub errs: Vec<T>,
}

impl<T> Default for Condensed<T> {
    fn default() -> Self {
        Condensed { count: 0, errs: Vec::new() }
    }
}

impl<T> Condensed<T> {
    pub(crate) fn all(errs: Vec<T>) -> Self {
        Condensed { count: errs.len(), errs }
    }

    /// Whether there were none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Keep the first `n` after a stable sort by `key` (Jepsen's `(take n (sort-by key errs))`).
    fn keep_first<K: Ord>(&mut self, n: usize, key: impl FnMut(&T) -> K) {
        self.errs.sort_by_key(key);
        self.errs.truncate(n);
    }

    /// Keep the last `n` after a stable sort by `key` (Jepsen's `take-last`).
    fn keep_last<K: Ord>(&mut self, n: usize, key: impl FnMut(&T) -> K) {
        self.errs.sort_by_key(key);
        let excess = self.errs.len().saturating_sub(n);
        self.errs.drain(..excess);
    }
}

/// Every error found, by type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// `inconsistent-offsets`.
    pub inconsistent_offsets: Condensed<InconsistentOffsets>,
    /// `duplicate`.
    pub duplicate: Condensed<Duplicate>,
    /// `G1a`.
    pub g1a: Condensed<AbortedRead>,
    /// `precommitted-read`.
    pub precommitted_read: Condensed<PrecommittedRead>,
    /// `lost-write`.
    pub lost_write: Condensed<LostWrite>,
    /// `no-writer-of-value`.
    pub no_writer_of_value: Condensed<NoWriterOfValue>,
    /// `poll-skip`.
    pub poll_skip: Condensed<ProcessOrder>,
    /// `nonmonotonic-poll`.
    pub nonmonotonic_poll: Condensed<ProcessOrder>,
    /// `int-poll-skip`.
    pub int_poll_skip: Condensed<InternalOrder>,
    /// `int-nonmonotonic-poll`.
    pub int_nonmonotonic_poll: Condensed<InternalOrder>,
    /// `int-send-skip`.
    pub int_send_skip: Condensed<InternalOrder>,
    /// `int-nonmonotonic-send`.
    pub int_nonmonotonic_send: Condensed<InternalOrder>,
    /// `nonmonotonic-send`.
    pub nonmonotonic_send: Condensed<ProcessOrder>,
    /// `unseen`, if any acknowledged send was never polled.
    pub unseen: Option<Unseen>,
    /// G0, G1c and their -process/-realtime variants.
    pub cycles: BTreeMap<ErrorType, Condensed<Cycle>>,
    /// The `*-cycle-exists` fallbacks.
    pub cycles_exist: BTreeMap<ErrorType, Condensed<CycleExists>>,
    /// Whether the dependency graph had no edges.
    pub empty_transaction_graph: bool,
}

impl Errors {
    /// The error types present, in `ErrorType` order.
    pub fn types(&self) -> Vec<ErrorType> {
        use ErrorType::*;
        let mut types = Vec::new();
        let fixed = [
            (Duplicate, self.duplicate.count),
            (InconsistentOffsets, self.inconsistent_offsets.count),
            (G1a, self.g1a.count),
            (PrecommittedRead, self.precommitted_read.count),
            (LostWrite, self.lost_write.count),
            (NoWriterOfValue, self.no_writer_of_value.count),
            (PollSkip, self.poll_skip.count),
            (NonmonotonicPoll, self.nonmonotonic_poll.count),
            (IntPollSkip, self.int_poll_skip.count),
            (IntNonmonotonicPoll, self.int_nonmonotonic_poll.count),
            (IntSendSkip, self.int_send_skip.count),
            (IntNonmonotonicSend, self.int_nonmonotonic_send.count),
            (NonmonotonicSend, self.nonmonotonic_send.count),
            (Unseen, usize::from(self.unseen.is_some())),
            (EmptyTransactionGraph, usize::from(self.empty_transaction_graph)),
        ];
        types.extend(fixed.into_iter().filter(|&(_, count)| count > 0).map(|(kind, _)| kind));
        types.extend(self.cycles.iter().filter(|(_, c)| !c.is_empty()).map(|(&kind, _)| kind));
        types.extend(self.cycles_exist.iter().filter(|(_, c)| !c.is_empty()).map(|(&kind, _)| kind));
        types.sort();
        types
    }

    /// Keeps a few telling examples per type, as Jepsen's `condense-error` does; counts stay whole.
    pub fn condense(mut self) -> Self {
        self.duplicate.keep_first(32, |e| e.count);
        self.inconsistent_offsets.keep_first(32, |e| e.values.len());
        self.int_nonmonotonic_poll.keep_first(8, |e| e.delta);
        self.int_nonmonotonic_send.keep_first(8, |e| e.delta);
        self.nonmonotonic_poll.keep_first(8, |e| e.delta);
        self.nonmonotonic_send.keep_first(8, |e| e.delta);
        self.int_poll_skip.keep_last(8, |e| e.delta);
        self.int_send_skip.keep_last(8, |e| e.delta);
        self.poll_skip.keep_last(8, |e| e.delta);
        for cycles in self.cycles.values_mut() {
            cycles.keep_first(8, |c| c.steps.len());
        }
        if let Some(unseen) = &mut self.unseen {
            for values in unseen.messages.values_mut() {
                values.truncate(32);
            }
        }
        self
    }
}

/// Worst observed consumer lag: how long after a record stopped being the newest in its log a
/// poll still had not reached it (a lower bound, as in Jepsen's `realtime-lag`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealtimeLag {
    /// Invocation time of the poll.
    pub time_ns: u64,
    /// Its process.
    pub process: u64,
    /// The key.
    pub key: Key,
    /// The lag.
    pub lag_ns: u64,
}

/// The checker's verdict on one history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// No error outside the allowed set.
    pub valid: bool,
    /// Every error type found.
    pub error_types: Vec<ErrorType>,
    /// The error types that make the history invalid under the given options.
    pub bad_error_types: Vec<ErrorType>,
    /// Examples per type (condensed by [`crate::check`], complete from [`crate::analyze`]).
    pub errors: Errors,
    /// Distinct `error` strings of info send/poll/txn ops: why outcomes were indefinite.
    pub info_txn_causes: Vec<String>,
    /// The worst consumer lag seen, if any poll happened.
    pub worst_realtime_lag: Option<RealtimeLag>,
}

impl Report {
    pub(crate) fn new(errors: Errors, options: &Options, info_txn_causes: Vec<String>, worst_realtime_lag: Option<RealtimeLag>) -> Self {
        let error_types = errors.types();
        let allowed = options.allowed_error_types();
        let bad_error_types: Vec<ErrorType> = error_types.iter().copied().filter(|kind| !allowed.contains(kind)).collect();
        Report { valid: bad_error_types.is_empty(), error_types, bad_error_types, errors, info_txn_causes, worst_realtime_lag }
    }
}

const EXAMPLES_SHOWN: usize = 3;

fn list<T>(out: &mut fmt::Formatter<'_>, kind: ErrorType, errors: &Condensed<T>, line: impl Fn(&T) -> String) -> fmt::Result {
    if errors.is_empty() {
        return Ok(());
    }
    writeln!(out, "  {kind} ({}):", errors.count)?;
    for error in errors.errs.iter().take(EXAMPLES_SHOWN) {
        writeln!(out, "    {}", line(error))?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |types: &[ErrorType]| types.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
        if self.valid {
            write!(out, "valid")?;
            if !self.error_types.is_empty() {
                write!(out, " (allowed: {})", names(&self.error_types))?;
            }
            writeln!(out)?;
        } else {
            writeln!(out, "INVALID: {}", names(&self.bad_error_types))?;
        }
        let e = &self.errors;
        list(out, ErrorType::Duplicate, &e.duplicate, |d| format!("key {} value {} at offsets {:?}", d.key, d.value, d.offsets))?;
        list(out, ErrorType::InconsistentOffsets, &e.inconsistent_offsets, |d| format!("key {} offset {} holds {:?}", d.key, d.offset, d.values))?;
        list(out, ErrorType::G1a, &e.g1a, |d| format!("key {} value {} written by failed op {}, read by op {}", d.key, d.value, d.writer, d.reader))?;
        list(out, ErrorType::PrecommittedRead, &e.precommitted_read, |d| format!("op {} read its own send of {} to key {}", d.op, d.value, d.key))?;
        list(out, ErrorType::LostWrite, &e.lost_write, |d| {
            format!(
                "key {} value {} (index {}, writer op {}) never read, though reads reached index {} (op {:?})",
                d.key, d.value, d.index, d.writer, d.max_read_index, d.max_read
            )
        })?;
        list(out, ErrorType::NoWriterOfValue, &e.no_writer_of_value, |d| format!("key {} value {} read by op {} but never sent", d.key, d.value, d.reader))?;
        let process =
            |d: &ProcessOrder| format!("key {} ops {:?}: {} then {} (delta {}, skipped {:?})", d.key, d.ops, d.values[0], d.values[1], d.delta, d.skipped);
        let internal =
            |d: &InternalOrder| format!("key {} op {}: {} then {} (delta {}, skipped {:?})", d.key, d.op, d.values[0], d.values[1], d.delta, d.skipped);
        list(out, ErrorType::PollSkip, &e.poll_skip, process)?;
        list(out, ErrorType::NonmonotonicPoll, &e.nonmonotonic_poll, process)?;
        list(out, ErrorType::NonmonotonicSend, &e.nonmonotonic_send, process)?;
        list(out, ErrorType::IntPollSkip, &e.int_poll_skip, internal)?;
        list(out, ErrorType::IntNonmonotonicPoll, &e.int_nonmonotonic_poll, internal)?;
        list(out, ErrorType::IntSendSkip, &e.int_send_skip, internal)?;
        list(out, ErrorType::IntNonmonotonicSend, &e.int_nonmonotonic_send, internal)?;
        if let Some(unseen) = &e.unseen {
            let total: usize = unseen.unseen.values().sum();
            writeln!(out, "  unseen: {total} acknowledged values never polled, by key {:?}", unseen.unseen)?;
        }
        for (kind, cycles) in &e.cycles {
            list(out, *kind, cycles, |c| format!("ops {:?}", c.ops))?;
        }
        for (kind, sccs) in &e.cycles_exist {
            list(out, *kind, sccs, |c| format!("component of {} ops", c.scc.len()))?;
        }
        if e.empty_transaction_graph {
            writeln!(out, "  empty-transaction-graph: no dependencies between ops; nothing was checked")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_sets_follow_the_options() {
        // Proves the verdict's allowed set: G0 and int-send-skip always, poll-order errors only
        // under subscribe, G1c only with ww deps, and never unseen or lost-write.
        let plain = Options::default().allowed_error_types();
        assert!(plain.contains(&ErrorType::G0) && plain.contains(&ErrorType::IntSendSkip) && plain.contains(&ErrorType::StrongPl1CycleExists));
        assert!(!plain.contains(&ErrorType::PollSkip) && !plain.contains(&ErrorType::G1c) && !plain.contains(&ErrorType::Unseen));

        let subscribe = Options { sub_via_subscribe: true, ..Options::default() }.allowed_error_types();
        assert!(subscribe.contains(&ErrorType::PollSkip) && subscribe.contains(&ErrorType::NonmonotonicPoll));
        assert!(!subscribe.contains(&ErrorType::G1cRealtime));

        let ww = Options { ww_deps: true, ..Options::default() }.allowed_error_types();
        for kind in [ErrorType::G1c, ErrorType::G1cProcess, ErrorType::G1cRealtime, ErrorType::Pl2CycleExists, ErrorType::StrongPl2CycleExists] {
            assert!(ww.contains(&kind), "{kind}");
        }
        assert!(!ww.contains(&ErrorType::LostWrite) && !ww.contains(&ErrorType::Unseen) && !ww.contains(&ErrorType::PollSkip));
    }

    #[test]
    fn verdict_is_invalid_iff_some_type_is_not_allowed() {
        // Proves valid == (error types − allowed) is empty, using an int-send-skip (allowed) and
        // a poll-skip (allowed only under subscribe).
        let skip = InternalOrder { key: 1, values: [1, 3], delta: 2, skipped: vec![2], op: 0 };
        let errors = Errors { int_send_skip: Condensed::all(vec![skip]), ..Errors::default() };
        let report = Report::new(errors.clone(), &Options::default(), Vec::new(), None);
        assert!(report.valid);
        assert_eq!(report.error_types, vec![ErrorType::IntSendSkip]);
        assert!(report.bad_error_types.is_empty());

        let poll_skip = ProcessOrder { key: 1, values: [1, 3], delta: 2, skipped: vec![2], ops: [0, 1] };
        let errors = Errors { poll_skip: Condensed::all(vec![poll_skip]), ..errors };
        let report = Report::new(errors.clone(), &Options::default(), Vec::new(), None);
        assert!(!report.valid);
        assert_eq!(report.bad_error_types, vec![ErrorType::PollSkip]);
        assert!(report.to_string().starts_with("INVALID: poll-skip"), "{report}");
        let report = Report::new(errors, &Options { sub_via_subscribe: true, ..Options::default() }, Vec::new(), None);
        assert!(report.valid, "{report}");
    }

    #[test]
    fn condensing_keeps_the_worst_examples_and_the_full_count() {
        // Proves skips keep the 8 largest deltas and nonmonotonic errors the 8 smallest, with counts intact.
        let order = |delta: i64| InternalOrder { key: 1, values: [0, 0], delta, skipped: Vec::new(), op: 0 };
        let errors = Errors {
            int_poll_skip: Condensed::all((2..20).map(order).collect()),
            int_nonmonotonic_poll: Condensed::all((-20..1).rev().map(order).collect()),
            ..Errors::default()
        }
        .condense();
        assert_eq!(errors.int_poll_skip.count, 18);
        assert_eq!(errors.int_poll_skip.errs.iter().map(|e| e.delta).collect::<Vec<_>>(), (12..20).collect::<Vec<_>>());
        assert_eq!(errors.int_nonmonotonic_poll.count, 21);
        assert_eq!(errors.int_nonmonotonic_poll.errs.iter().map(|e| e.delta).collect::<Vec<_>>(), (-20..-12).collect::<Vec<_>>());
    }
}
