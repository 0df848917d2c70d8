//! Model-based test of log compaction: random keyed appends (values and tombstones, with and
//! without a producer id), flushes, partial progress of the disk queue, cleaning passes with
//! random bounds and dirty ratios, reads left in flight across segment swaps, clock jumps (for
//! the tombstone horizon) and crashes with torn writes, run over `MemDisk` against a model: every
//! record ever appended at its offset.
//!
//! Properties checked:
//! - the log stays a dense sequence of CRC-valid batches from its start to its end, and every
//!   record a read returns (also a read in flight while its segment was swapped) is the record
//!   appended at that offset, unchanged;
//! - the latest record of every key is always there, unless it is a tombstone (which may expire);
//! - after a completed pass, no record below the end of its region has a later record of the same
//!   key below that end (the pass did its work);
//! - after a crash, everything durable is there (the log end is at least the durable offset) and
//!   the properties above hold: cleaning never outruns durability.

use bytes::Bytes;
use proptest::prelude::*;
use runnel_actors::core::mem_disk::{MemDisk, QueuedIo};
use runnel_actors::core::Rng;
use runnel_actors::log::batch::{self, BatchHeader};
use runnel_actors::log::cleaner;
use runnel_actors::log::{LogConfig, LogEvent, PartitionLog, ReadStart};
use std::collections::BTreeMap;

const DIR: &str = "compacted-0";

#[derive(Clone, Debug)]
enum Op {
    /// Batches of records `(key, tombstone?)`, from producer 7 if `producer`.
    Append {
        batches: Vec<Vec<(u8, bool)>>,
        producer: bool,
    },
    Flush,
    Step(usize),
    Run,
    /// A cleaning pass bounded at an offset picked in [log start, log end].
    Clean {
        pick: u64,
    },
    /// A read left in flight.
    Read {
        pick: u64,
    },
    Advance {
        ms: i64,
    },
    Crash {
        steps: usize,
        tear: bool,
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec(prop::collection::vec((0u8..6, prop::bool::weighted(0.15)), 1..5), 1..4), any::<bool>())
            .prop_map(|(batches, producer)| Op::Append { batches, producer }),
        3 => Just(Op::Flush),
        3 => (0usize..10).prop_map(Op::Step),
        2 => Just(Op::Run),
        4 => any::<u64>().prop_map(|pick| Op::Clean { pick }),
        3 => any::<u64>().prop_map(|pick| Op::Read { pick }),
        1 => (0i64..3000).prop_map(|ms| Op::Advance { ms }),
        1 => (0usize..12, any::<bool>(), any::<u64>()).prop_map(|(steps, tear, seed)| Op::Crash { steps, tear, seed }),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (150u64..1200, 0u64..300, prop_oneof![Just(0.0f64), Just(0.3), Just(0.5)], 0i64..4000).prop_map(
        |(segment_bytes, index_interval_bytes, min_cleanable_dirty_ratio, delete_retention_ms)| LogConfig {
            segment_bytes,
            index_interval_bytes,
            retention_ms: -1,
            compact: true,
            min_cleanable_dirty_ratio,
            delete_retention_ms,
            ..LogConfig::default()
        },
    )
}

/// A record as appended: key, value (`None`: a tombstone).
type Rec = (Vec<u8>, Option<Vec<u8>>);

struct Harness {
    config: LogConfig,
    disk: MemDisk,
    io: QueuedIo,
    log: PartitionLog,
    /// Every record appended and not lost in a crash, by offset.
    records: BTreeMap<i64, Rec>,
    durable: i64,
    now_ms: i64,
    next_value: u64,
    next_id: u64,
    /// Reads in flight: id -> offset.
    reads: BTreeMap<u64, i64>,
    /// Passes that completed, and bytes before/after, for the summary.
    passes: u64,
}

impl Harness {
    fn new(config: LogConfig) -> Self {
        let mut h = Harness {
            log: PartitionLog::new(DIR, config.clone()),
            config,
            disk: MemDisk::new(),
            io: QueuedIo::default(),
            records: BTreeMap::new(),
            durable: 0,
            now_ms: 1_000_000,
            next_value: 0,
            next_id: 0,
            reads: BTreeMap::new(),
            passes: 0,
        };
        h.restart();
        h
    }

    fn restart(&mut self) {
        self.io = QueuedIo::default();
        self.log = PartitionLog::new(DIR, self.config.clone());
        self.log.start(&mut self.io);
        let events = self.disk.run(&mut self.io, &mut self.log);
        assert!(self.log.is_ready(), "recovery failed: {events:?}");
        let end = self.log.log_end_offset();
        assert!(end >= self.durable, "recovered log ends at {end}, below the durable offset {}", self.durable);
        // Unsynced records are lost from the end, or (a first segment lost whole) from the start.
        let start = self.log.log_start_offset();
        self.records.retain(|&offset, _| start <= offset && offset < end);
        self.durable = self.log.durable_offset();
    }

    fn handle(&mut self, events: Vec<LogEvent>) {
        for event in events {
            match event {
                LogEvent::Written { .. } | LogEvent::LogStartDurable { .. } => {}
                LogEvent::Durable { offset } => {
                    assert!(offset >= self.durable, "durable offset went back");
                    self.durable = offset;
                }
                LogEvent::ReadDone { read_id, records } => {
                    let offset = self.reads.remove(&read_id).expect("known read");
                    if records.is_empty() {
                        assert!(offset >= self.log.log_end_offset() || offset < self.log.log_start_offset(), "empty read at {offset}");
                    } else {
                        let first = BatchHeader::parse(&records).expect("a batch");
                        assert!(first.base_offset <= offset && offset < first.next_offset(), "read at {offset} starts at batch {}", first.base_offset);
                        self.check_records(&records);
                    }
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
    }

    /// Dense, CRC-valid batches whose every record is the one appended at its offset. Returns the
    /// records read and the offset after the last batch.
    fn check_records(&self, data: &Bytes) -> (Vec<(i64, Rec)>, i64) {
        let batches = batch::validate_batches(data).expect("CRC-valid whole batches");
        let mut next = batches[0].0.base_offset;
        let mut out = Vec::new();
        for (header, range) in &batches {
            assert_eq!(header.base_offset, next, "batches not dense");
            next = header.next_offset();
            let bytes = &data[range.clone()];
            for r in cleaner::records(bytes, header).expect("uncompressed records walk") {
                let rec: Rec = (bytes[r.key.clone().expect("keyed")].to_vec(), r.value.clone().map(|v| bytes[v].to_vec()));
                let model = self.records.get(&r.offset).unwrap_or_else(|| panic!("record at {} was never appended", r.offset));
                assert_eq!(&rec, model, "record at {} changed", r.offset);
                out.push((r.offset, rec));
            }
        }
        (out, next)
    }

    /// Read the whole log and check every property.
    fn check_whole_log(&mut self) {
        let events = self.disk.run(&mut self.io, &mut self.log);
        self.handle(events);
        let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
        let mut offset = start;
        let mut present = BTreeMap::new();
        while offset < end {
            let id = self.next_id;
            self.next_id += 1;
            assert_eq!(self.log.read(&mut self.io, id, offset, 2000, end), ReadStart::Pending);
            let events = self.disk.run(&mut self.io, &mut self.log);
            let Some(LogEvent::ReadDone { records, .. }) = events.iter().find(|e| matches!(e, LogEvent::ReadDone { .. })) else {
                panic!("no read answer: {events:?}")
            };
            assert!(!records.is_empty(), "empty read at {offset} of [{start}, {end})");
            let (found, next) = self.check_records(records);
            present.extend(found);
            offset = next;
        }
        assert_eq!(offset, end, "the batches end at the log end");
        // The latest record of every key is there (tombstones may expire).
        let mut latest: BTreeMap<&[u8], i64> = BTreeMap::new();
        for (offset, (key, _)) in &self.records {
            latest.insert(key, *offset);
        }
        for (key, offset) in &latest {
            if self.records[offset].1.is_some() {
                assert!(present.contains_key(offset), "latest record of key {:?} at {offset} is gone", String::from_utf8_lossy(key));
            }
        }
        // Below the last pass's region end, no record is superseded by another one still there.
        // (Only by one still there: a follower may have copied the leader's log after the
        // leader dropped a record that superseded it in favour of one past the region.)
        let cleaned_to = self.log.cleaned_to();
        let mut seen_after: BTreeMap<&[u8], i64> = BTreeMap::new();
        for (offset, (key, _)) in present.range(..cleaned_to).rev() {
            if let Some(later) = seen_after.get(&key[..]) {
                panic!("record at {offset} survived a pass though {later} supersedes it (cleaned to {cleaned_to})");
            }
            seen_after.insert(key, *offset);
        }
    }

    fn apply(&mut self, op: Op) {
        self.now_ms += 5;
        match op {
            Op::Append { batches, producer } => {
                let mut data = Vec::new();
                let mut offset = self.log.log_end_offset();
                let mut sequence = 0;
                for records in batches {
                    let recs: Vec<Rec> = records
                        .iter()
                        .map(|&(key, tombstone)| {
                            self.next_value += 1;
                            (format!("k{key}").into_bytes(), (!tombstone).then(|| format!("v{}", self.next_value).into_bytes()))
                        })
                        .collect();
                    let plain: Vec<batch::PlainRecord<'_>> = recs.iter().map(|(k, v)| (Some(&k[..]), v.as_deref(), self.now_ms)).collect();
                    let producer = if producer { (7, 0, sequence) } else { (-1, -1, -1) };
                    sequence += recs.len() as i32;
                    data.extend_from_slice(&batch::build_batch(&plain, producer));
                    for rec in recs {
                        self.records.insert(offset, rec);
                        offset += 1;
                    }
                }
                let info = self.log.append(&mut self.io, &data, 1, None, self.now_ms);
                assert_eq!(info.last_offset + 1, offset);
            }
            Op::Flush => self.log.flush(&mut self.io, None),
            Op::Step(n) => {
                for _ in 0..n {
                    let Some(events) = self.disk.step(&mut self.io, &mut self.log) else { break };
                    self.handle(events);
                }
            }
            Op::Run => {
                let before = self.log.cleaned_to();
                self.check_whole_log();
                self.passes += (self.log.cleaned_to() > before) as u64;
            }
            Op::Clean { pick } => {
                let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
                let bound = start + (pick % (end - start + 1) as u64) as i64;
                self.log.maybe_clean(&mut self.io, bound, self.now_ms);
            }
            Op::Read { pick } => {
                let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
                if end > start {
                    let offset = start + (pick % (end - start) as u64) as i64;
                    let id = self.next_id;
                    self.next_id += 1;
                    assert_eq!(self.log.read(&mut self.io, id, offset, 500, end), ReadStart::Pending);
                    self.reads.insert(id, offset);
                }
            }
            Op::Advance { ms } => self.now_ms += ms,
            Op::Crash { steps, tear, seed } => {
                for _ in 0..steps {
                    let Some(events) = self.disk.step(&mut self.io, &mut self.log) else { break };
                    self.handle(events);
                }
                self.disk.crash(&mut Rng::new(seed), tear);
                self.reads.clear();
                self.restart();
                self.check_whole_log();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if std::env::var("CI").is_ok() { 400 } else { 150 }, ..ProptestConfig::default() })]

    #[test]
    fn compaction_keeps_the_latest_of_every_key(config in config(), ops in prop::collection::vec(op(), 1..120)) {
        let mut h = Harness::new(config);
        for op in ops {
            h.apply(op);
        }
        // Settle: flush, clean everything durable, and check.
        h.log.flush(&mut h.io, None);
        h.check_whole_log();
        let end = h.log.log_end_offset();
        h.log.maybe_clean(&mut h.io, end, h.now_ms);
        h.check_whole_log();
        if std::env::var("COMPACTION_DEBUG").is_ok() {
            eprintln!("passes {} cleaned_to {} end {} records {}", h.passes, h.log.cleaned_to(), h.log.log_end_offset(), h.records.len());
        }
    }
}

/// A pass over several segments of repeated keys shrinks them, the log reads back only the
/// latest value of each key at its offset, and a restart recovers the cleaned log.
#[test]
fn a_pass_shrinks_the_log_and_survives_a_restart() {
    let config = LogConfig { segment_bytes: 400, compact: true, retention_ms: -1, ..LogConfig::default() };
    let mut h = Harness::new(config);
    for _ in 0..60 {
        h.apply(Op::Append { batches: vec![vec![(0, false), (1, false)], vec![(2, false)]], producer: false });
    }
    h.apply(Op::Flush);
    h.check_whole_log();
    let before = h.log.size_bytes();
    let segments = h.log.segments().len();
    assert!(segments > 5, "the test needs several segments, got {segments}");
    let end = h.log.log_end_offset();
    assert!(h.log.maybe_clean(&mut h.io, end, h.now_ms), "a dirty log starts a pass");
    h.check_whole_log();
    let after = h.log.size_bytes();
    assert!(h.log.cleaned_to() > 0 && after * 3 < before, "cleaning shrank {before} bytes only to {after}");
    assert!(!h.log.maybe_clean(&mut h.io, end, h.now_ms), "a clean log starts no pass");
    h.disk.crash(&mut Rng::new(1), false);
    h.restart();
    h.check_whole_log();
    assert_eq!(h.log.size_bytes(), after);
}

#[derive(Clone, Debug)]
enum FollowerOp {
    /// An operation on the leader.
    Leader(Op),
    /// One fetch of the follower from its log end, of at most this many bytes.
    Copy(u64),
    /// A cleaning pass on the follower, bounded at its log end.
    CleanFollower,
}

fn follower_op() -> impl Strategy<Value = FollowerOp> {
    prop_oneof![
        6 => op().prop_filter("no crashes or reads on the leader", |o| !matches!(o, Op::Crash { .. } | Op::Read { .. })).prop_map(FollowerOp::Leader),
        4 => (0u64..1500).prop_map(FollowerOp::Copy),
        2 => Just(FollowerOp::CleanFollower),
    ]
}

/// The follower fetches once from its log end: what the leader's read returns must append.
fn copy(leader: &mut Harness, follower: &mut Harness, max_bytes: u64) {
    let events = leader.disk.run(&mut leader.io, &mut leader.log);
    leader.handle(events);
    let (from, end) = (follower.log.log_end_offset(), leader.log.log_end_offset());
    if from >= end {
        return;
    }
    let id = leader.next_id;
    leader.next_id += 1;
    assert_eq!(leader.log.read(&mut leader.io, id, from, max_bytes, end), ReadStart::Pending);
    let events = leader.disk.run(&mut leader.io, &mut leader.log);
    let Some(LogEvent::ReadDone { records, .. }) = events.into_iter().find(|e| matches!(e, LogEvent::ReadDone { .. })) else { panic!("no read answer") };
    let result = follower.log.append_replicated(&mut follower.io, &records, follower.now_ms);
    let first = BatchHeader::parse(&records).expect("a batch");
    result.unwrap_or_else(|e| panic!("a follower at {from} refused the leader's batches from {}: {e}", first.base_offset));
    follower.records = leader.records.range(..follower.log.log_end_offset()).map(|(o, r)| (*o, r.clone())).collect();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if std::env::var("CI").is_ok() { 300 } else { 100 }, ..ProptestConfig::default() })]

    /// A follower copying a compacted leader at random moments always continues from its log
    /// end (also when the leader merged emptied batches across it), cleans on its own, and once
    /// caught up holds the leader's records: every record it has is the one appended at that
    /// offset, and the latest record of every key is there.
    #[test]
    fn a_follower_keeps_up_with_a_cleaned_leader(config in config(), ops in prop::collection::vec(follower_op(), 1..150)) {
        let mut leader = Harness::new(config.clone());
        let mut follower = Harness::new(config);
        for op in ops {
            match op {
                FollowerOp::Leader(op) => {
                    leader.apply(op);
                    leader.log.flush(&mut leader.io, None);
                }
                FollowerOp::Copy(max_bytes) => copy(&mut leader, &mut follower, max_bytes),
                FollowerOp::CleanFollower => {
                    follower.log.flush(&mut follower.io, None);
                    let events = follower.disk.run(&mut follower.io, &mut follower.log);
                    follower.handle(events);
                    let end = follower.log.log_end_offset();
                    follower.log.maybe_clean(&mut follower.io, end, follower.now_ms);
                }
            }
        }
        while follower.log.log_end_offset() < leader.log.log_end_offset() {
            copy(&mut leader, &mut follower, 4000);
        }
        follower.log.flush(&mut follower.io, None);
        follower.check_whole_log();
        leader.check_whole_log();
    }
}
