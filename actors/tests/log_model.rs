//! Model-based test of the partition log: random sequences of leader appends (with growing
//! leader epochs), follower appends (valid and invalid), truncations, full truncations, reads,
//! flushes, timestamp lookups, retention, DeleteRecords, partial progress of the disk queue and
//! crashes (unsynced writes lost, last appends torn) with recovery, run over `MemDisk` and
//! compared after every step with a model: a map from base offset to the exact bytes each batch
//! must have on disk (the current history), plus the older histories a crash may still bring
//! back (a truncation not yet durable).
//!
//! Properties checked:
//! - every batch acknowledged `Durable` before a crash is present after recovery, byte-identical
//!   (`log_end_offset` after recovery >= the durable offset acknowledged before the crash, clamped
//!   by truncations since);
//! - the recovered log is a dense prefix of one history: the current one, or one a truncation not
//!   yet durable replaced; never a mix;
//! - the log end offset, the leader epoch cache and every OffsetsForLeaderEpoch answer agree with
//!   the model (the cache is a fold over the history's batches) after every step;
//! - a refused follower append writes nothing;
//! - truncation ends the log at the requested offset, or at the base of the batch containing it
//!   (of the segment, for a segment recovered without batch marks);
//! - reads return CRC-valid whole batches, starting with the batch containing the offset, below
//!   the upper bound, within `max_bytes` unless a single batch, byte-identical to the model;
//! - offset index lookups agree with a linear scan of each segment's file;
//! - timestamp lookups agree with a linear scan of the model's records.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use runnel_actors::core::mem_disk::{MemDisk, QueuedIo};
use runnel_actors::core::Rng;
use runnel_actors::log::batch::{self, BatchHeader};
use runnel_actors::log::segment::SegmentFile;
use runnel_actors::log::{LogConfig, LogEvent, PartitionLog, ReadStart, ReplicaAppendError};
use std::collections::BTreeMap;

const DIR: &str = "topic-0";

#[derive(Clone, Debug)]
enum Op {
    /// Batches of (record count, value length, first timestamp); LogAppendTime if Some.
    Append {
        batches: Vec<(usize, usize, i64)>,
        append_time: Option<i64>,
        bump_epoch: bool,
    },
    /// Follower append of batches built at the log end with the current epoch plus `epoch_delta`,
    /// spoiled by `fault` (0: none, 1: wrong first offset, 2: gap between batches, 3: bad CRC,
    /// 4: cut short).
    Replicate {
        batches: Vec<(usize, usize, i64)>,
        epoch_delta: i32,
        fault: u8,
    },
    /// Truncate to an offset picked in [log start, log end].
    Truncate {
        pick: u64,
    },
    /// Truncate fully and restart at log start + `pick` % (length + 40).
    TruncateFully {
        pick: u64,
    },
    Read {
        pick: u64,
        max_bytes: u64,
        upper_pick: u64,
    },
    Flush {
        blob: bool,
    },
    /// Execute this many queued disk operations (completions delivered).
    Step(usize),
    /// Execute every queued disk operation.
    Run,
    Timestamp {
        target: i64,
    },
    Retention {
        advance_ms: i64,
    },
    DeleteRecords {
        pick: u64,
    },
    /// Execute this many queued operations, then crash (tearing unsynced appends if set), restart.
    Crash {
        steps: usize,
        tear: bool,
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec((1usize..12, 0usize..200, 0i64..10_000), 1..4), prop::option::weighted(0.15, 0i64..20_000))
            .prop_map(|(batches, append_time)| Op::Append { batches, append_time, bump_epoch: false }),
        2 => (prop::collection::vec((1usize..12, 0usize..200, 0i64..10_000), 1..3))
            .prop_map(|batches| Op::Append { batches, append_time: None, bump_epoch: true }),
        4 => (prop::collection::vec((1usize..12, 0usize..200, 0i64..10_000), 1..4), -1i32..3, prop_oneof![6 => Just(0u8), 1 => 1u8..5])
            .prop_map(|(batches, epoch_delta, fault)| Op::Replicate { batches, epoch_delta, fault }),
        2 => any::<u64>().prop_map(|pick| Op::Truncate { pick }),
        1 => prop::option::weighted(0.3, any::<u64>()).prop_map(|pick| match pick {
            Some(pick) => Op::TruncateFully { pick },
            None => Op::Truncate { pick: 0 },
        }),
        4 => (any::<u64>(), 0u64..4000, any::<u64>()).prop_map(|(pick, max_bytes, upper_pick)| Op::Read { pick, max_bytes, upper_pick }),
        3 => any::<bool>().prop_map(|blob| Op::Flush { blob }),
        3 => (0usize..8).prop_map(Op::Step),
        2 => Just(Op::Run),
        2 => (0i64..21_000).prop_map(|target| Op::Timestamp { target }),
        1 => (0i64..5_000).prop_map(|advance_ms| Op::Retention { advance_ms }),
        1 => any::<u64>().prop_map(|pick| Op::DeleteRecords { pick }),
        1 => (0usize..12, any::<bool>(), any::<u64>()).prop_map(|(steps, tear, seed)| Op::Crash { steps, tear, seed }),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (
        200u64..3000,
        0u64..600,
        prop_oneof![Just(-1i64), 500i64..8000],
        prop_oneof![Just(-1i64), 1000i64..20_000],
        prop_oneof![Just(1_000_000i64), 1000i64..5000],
        prop_oneof![Just(1u64 << 20), 24u64..100],
    )
        .prop_map(|(segment_bytes, index_interval_bytes, retention_bytes, retention_ms, segment_ms, segment_index_bytes)| LogConfig {
            segment_bytes,
            segment_ms,
            retention_ms,
            retention_bytes,
            index_interval_bytes,
            segment_index_bytes,
            ..LogConfig::default()
        })
}

/// One batch as it must be on disk, with its records' (offset, timestamp).
struct ModelBatch {
    bytes: Bytes,
    header: BatchHeader,
    records: Vec<(i64, i64)>,
}

/// The epoch cache of a history: `prefix` stands for the batches below its offset, then an epoch
/// above every earlier one starts an entry.
fn fold_epochs(prefix: &(Vec<(i32, i64)>, i64), batches: &BTreeMap<i64, ModelBatch>) -> Vec<(i32, i64)> {
    let mut expected = prefix.0.clone();
    for b in batches.range(prefix.1..).map(|(_, b)| b) {
        let epoch = b.header.partition_leader_epoch;
        if epoch >= 0 && expected.last().is_none_or(|&(e, _)| epoch > e) {
            expected.push((epoch, b.header.base_offset));
        }
    }
    expected
}

/// A history a crash may bring back: the log as it was before a truncation that is not known
/// durable yet.
struct Lineage {
    batches: BTreeMap<i64, ModelBatch>,
    epoch_prefix: (Vec<(i32, i64)>, i64),
    log_start_offset: i64,
    /// It agrees with the current history below this offset; once the durable offset passes it,
    /// the truncation is durable and this history cannot come back.
    diverges_at: i64,
    /// The log end a recovery into this history must reach at least.
    durable: i64,
}

struct Harness {
    config: LogConfig,
    /// Histories replaced by truncations not known durable.
    lineages: Vec<Lineage>,
    /// The current leader epoch.
    epoch: i32,
    disk: MemDisk,
    io: QueuedIo,
    log: PartitionLog,
    /// Every batch that may be in the log, by base offset.
    batches: BTreeMap<i64, ModelBatch>,
    /// What recovery remembered of the epochs below the log start: these entries stand for the
    /// batches below the offset (a crash may lose batches below the log start, and with them
    /// their epochs, or keep the epochs in the checkpoint without the batches).
    epoch_prefix: (Vec<(i32, i64)>, i64),
    /// Every epoch cache entry any history had: what recovery may remember below the log start.
    seen_epochs: std::collections::BTreeSet<(i32, i64)>,
    log_start_offset: i64,
    /// Largest log start offset acknowledged LogStartDurable: no recovery may go below it.
    durable_log_start: i64,
    /// Largest offset acknowledged Durable.
    durable: i64,
    now_ms: i64,
    next_id: u64,
    /// In-flight reads: id -> (offset, max_bytes, upper bound, truncated since issued).
    reads: BTreeMap<u64, (i64, u64, i64, bool)>,
    /// In-flight timestamp lookups: id -> (target, answer when issued).
    lookups: BTreeMap<u64, (i64, Option<(i64, i64)>)>,
}

impl Harness {
    fn new(config: LogConfig) -> Self {
        let mut h = Harness {
            log: PartitionLog::new(DIR, config.clone()),
            config,
            lineages: Vec::new(),
            epoch: 3,
            disk: MemDisk::new(),
            io: QueuedIo::default(),
            batches: BTreeMap::new(),
            epoch_prefix: (Vec::new(), i64::MIN),
            seen_epochs: Default::default(),
            log_start_offset: 0,
            durable_log_start: 0,
            durable: 0,
            now_ms: 0,
            next_id: 0,
            reads: BTreeMap::new(),
            lookups: BTreeMap::new(),
        };
        h.restart();
        h
    }

    fn log_end(&self) -> i64 {
        self.batches.values().next_back().map_or(self.log_start_offset, |b| b.header.next_offset()).max(self.log_start_offset)
    }

    fn restart(&mut self) {
        self.io = QueuedIo::default();
        self.log = PartitionLog::new(DIR, self.config.clone());
        self.log.start(&mut self.io);
        let events = self.disk.run(&mut self.io, &mut self.log);
        assert!(self.log.is_ready(), "recovery failed: {events:?}");
        let Some(LogEvent::Recovered { checkpoint, replay }) = events.last() else { panic!("{events:?}") };
        let end = self.log.log_end_offset();
        let start = self.log.log_start_offset();
        // Which history did the disk keep? Compare every batch in the segment files.
        let mut on_disk = Vec::new();
        for segment in self.log.segments() {
            let path = format!("{DIR}/{}", runnel_actors::log::segment::file_name(segment.base_offset, SegmentFile::Log));
            let data = Bytes::copy_from_slice(self.disk.file(&path).expect("segment file exists"));
            for (header, range) in batch::iter_headers(&data) {
                on_disk.push((header.base_offset, data.slice(range)));
            }
        }
        // Below the log start, the recovered epoch cache may hold entries of any history seen,
        // possibly with their start moved up (to the first batch left, as Kafka's
        // truncateFromStart moves it to the log start), or forget them: a checkpoint of an older
        // history can survive next to unsynced segments of a newer one. At and above the log
        // start it must be exact.
        let remembered: Vec<(i32, i64)> = self.log.epoch_entries().iter().copied().filter(|e| e.1 < start).collect();
        let mut known = self.seen_epochs.clone();
        known.extend(fold_epochs(&self.epoch_prefix, &self.batches));
        for lineage in &self.lineages {
            known.extend(fold_epochs(&lineage.epoch_prefix, &lineage.batches));
        }
        assert!(
            remembered.iter().all(|&(e, s)| known.iter().any(|&(k, t)| k == e && t <= s)),
            "epochs below the start {remembered:?} not in any history: {known:?}"
        );
        // The blob was taken on this log, at most at its end; the replay covers every batch after it.
        let mut replay_from = start;
        if !checkpoint.is_empty() {
            let text = std::str::from_utf8(checkpoint).expect("a blob of this test");
            let (at, crc) = text.strip_prefix("blob@").and_then(|t| t.split_once(':')).expect("blob@end:crc");
            let (at, crc): (i64, u32) = (at.parse().unwrap(), crc.parse().unwrap());
            assert!(at <= end, "blob taken at {at} beyond the recovered end {end}");
            if at > start {
                let ending = on_disk.iter().find(|(_, bytes)| BatchHeader::parse(bytes).unwrap().next_offset() == at);
                let (_, bytes) = ending.unwrap_or_else(|| panic!("blob taken at {at}, where no recovered batch ends"));
                assert_eq!(BatchHeader::parse(bytes).unwrap().crc, crc, "blob taken at {at} on another history");
            }
            replay_from = replay_from.max(at);
        }
        let expected_replay: Vec<i64> = on_disk.iter().map(|b| b.0).filter(|&base| base >= replay_from).collect();
        assert_eq!(replay.iter().map(|h| h.base_offset).collect::<Vec<_>>(), expected_replay, "replay after the blob");
        assert!(start >= self.durable_log_start, "log start {start} went back below the durable log start {}", self.durable_log_start);
        assert!(self.log.durable_log_start_offset() <= start, "durable log start {} past the start {start}", self.log.durable_log_start_offset());
        let max_start = self.lineages.iter().map(|l| l.log_start_offset).max().unwrap_or(i64::MIN).max(self.log_start_offset);
        assert!(start <= max_start.max(end), "log start {start} beyond the model's {}", self.log_start_offset);
        // Every batch on disk comes from some history, byte for byte. (Where an unsynced
        // truncation was undone, a segment of the new history created later may survive next to
        // the old data and continue it densely, as in Kafka: the epoch cache then describes that
        // log, and a follower's OffsetsForLeaderEpoch exchange truncates the divergence again.)
        let mut histories: Vec<(&BTreeMap<i64, ModelBatch>, i64)> = vec![(&self.batches, self.durable)];
        histories.extend(self.lineages.iter().map(|l| (&l.batches, l.durable)));
        let mut recovered = BTreeMap::new();
        for (base, bytes) in &on_disk {
            let model = histories.iter().find_map(|(batches, _)| batches.get(base).filter(|b| b.bytes == *bytes));
            let model = model.unwrap_or_else(|| panic!("recovered batch at {base} is in no history"));
            recovered.insert(*base, ModelBatch { bytes: model.bytes.clone(), header: model.header, records: model.records.clone() });
        }
        // The durable prefix of one history survived whole.
        let floor = histories
            .iter()
            .find(|(batches, floor)| {
                end >= *floor && on_disk.iter().filter(|(base, _)| base < floor).all(|(base, bytes)| batches.get(base).is_some_and(|b| b.bytes == *bytes))
            })
            .map(|(_, floor)| *floor)
            .unwrap_or_else(|| {
                panic!(
                    "recovered log [{start}, {end}) keeps no history's durable prefix (durable {}): {:?}",
                    self.durable,
                    on_disk.iter().map(|b| b.0).collect::<Vec<_>>()
                )
            });
        self.durable = floor;
        self.batches = recovered;
        self.lineages.clear();
        self.log_start_offset = start;
        self.durable_log_start = self.log.durable_log_start_offset();
        self.epoch_prefix = (remembered, start);
        self.durable = self.durable.max(self.log.durable_offset());
        self.check_whole_log();
        self.check_epochs();
    }

    /// The epoch cache and OffsetsForLeaderEpoch answers against the model: the cache is the fold
    /// of the history's batches (an epoch above every earlier one starts an entry).
    fn check_epochs(&mut self) {
        let expected = fold_epochs(&self.epoch_prefix, &self.batches);
        self.seen_epochs.extend(expected.iter().copied());
        assert_eq!(self.log.epoch_entries(), &expected[..], "epoch cache");
        assert_eq!(self.log.latest_epoch(), expected.last().map(|e| e.0));
        let end = self.log.log_end_offset();
        for epoch in -1..=self.epoch + 2 {
            let answer = if epoch == -1 || expected.is_empty() {
                (-1, -1)
            } else if epoch == expected.last().unwrap().0 {
                (epoch, end)
            } else {
                match expected.iter().find(|e| e.0 > epoch) {
                    None => (-1, -1),
                    Some(next) => (expected.iter().rev().find(|e| e.0 <= epoch).map_or(epoch, |e| e.0), next.1),
                }
            };
            assert_eq!(self.log.end_offset_for_epoch(epoch), answer, "end offset for epoch {epoch} of {expected:?}, log end {end}");
        }
    }

    /// A truncation replaced the current history from `diverges_at` (floor: the durable offset a
    /// recovery into the old history still reaches).
    fn fork(&mut self, diverges_at: i64, durable: i64) {
        for lineage in &mut self.lineages {
            lineage.diverges_at = lineage.diverges_at.min(diverges_at);
        }
        let batches = self.batches.iter().map(|(k, b)| (*k, ModelBatch { bytes: b.bytes.clone(), header: b.header, records: b.records.clone() })).collect();
        self.lineages.push(Lineage { batches, epoch_prefix: self.epoch_prefix.clone(), log_start_offset: self.log_start_offset, diverges_at, durable });
        for read in self.reads.values_mut() {
            read.3 = true;
        }
    }

    fn handle(&mut self, events: Vec<LogEvent>) {
        for event in events {
            match event {
                LogEvent::Written { offset } => {
                    assert!(offset <= self.log.log_end_offset(), "written offset {offset} past the log end {}", self.log.log_end_offset());
                }
                LogEvent::Durable { offset } => {
                    assert!(offset >= self.durable, "durable offset went back: {} -> {offset}", self.durable);
                    self.durable = offset;
                    // Data past a divergence point is durable: that truncation is durable.
                    self.lineages.retain(|l| l.diverges_at >= offset);
                }
                LogEvent::LogStartDurable { offset } => {
                    assert!(offset > self.durable_log_start, "durable log start did not move up: {} -> {offset}", self.durable_log_start);
                    assert!(offset <= self.log.log_start_offset(), "durable log start {offset} past the log start {}", self.log.log_start_offset());
                    self.durable_log_start = offset;
                }
                LogEvent::ReadDone { read_id, records } => {
                    let (offset, max_bytes, upper, truncated) = self.reads.remove(&read_id).expect("known read id");
                    if !(truncated && records.is_empty()) {
                        self.check_read(offset, max_bytes, upper, &records);
                    }
                }
                LogEvent::TimestampFound { query_id, found } => {
                    let (target, when_issued) = self.lookups.remove(&query_id).expect("known lookup id");
                    let now = self.expected_timestamp(target);
                    let found = found.expect("the model's disk damages no read");
                    assert!(found == when_issued || found == now, "lookup {target}: got {found:?}, expected {when_issued:?} or {now:?}");
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
    }

    fn check_read(&self, offset: i64, max_bytes: u64, upper: i64, records: &Bytes) {
        if records.is_empty() {
            assert!(self.log.log_start_offset() > offset, "empty read at {offset} (log start {})", self.log.log_start_offset());
            return;
        }
        let batches = batch::validate_batches(records).expect("reads return CRC-valid whole batches");
        let first = batches[0].0;
        assert!(first.base_offset <= offset && offset < first.next_offset(), "read at {offset} starts with batch {}", first.base_offset);
        assert!(batches.len() == 1 || records.len() as u64 <= max_bytes, "{} batches, {} bytes > max {max_bytes}", batches.len(), records.len());
        let mut expected_next = first.base_offset;
        for (header, range) in &batches {
            assert_eq!(header.base_offset, expected_next, "read not dense");
            assert!(header.base_offset < upper, "batch {} at or past upper bound {upper}", header.base_offset);
            let model = self.batches.get(&header.base_offset).expect("read batch exists in the model");
            assert_eq!(&records[range.clone()], &model.bytes[..], "batch {} differs from what was appended", header.base_offset);
            expected_next = header.next_offset();
        }
    }

    fn expected_timestamp(&self, target: i64) -> Option<(i64, i64)> {
        self.batches.values().flat_map(|b| b.records.iter().copied()).find(|&(offset, timestamp)| offset >= self.log.log_start_offset() && timestamp >= target)
    }

    /// Read the whole log back and compare it with the model; check every segment's offset
    /// index against a linear scan of its file.
    fn check_whole_log(&mut self) {
        let events = self.disk.run(&mut self.io, &mut self.log);
        self.handle(events);
        let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
        let mut offset = start;
        while offset < end {
            let id = self.next_id;
            self.next_id += 1;
            assert_eq!(self.log.read(&mut self.io, id, offset, 3000, end), ReadStart::Pending);
            self.reads.insert(id, (offset, 3000, end, false));
            let events = self.disk.run(&mut self.io, &mut self.log);
            let Some(LogEvent::ReadDone { records, .. }) = events.iter().find(|e| matches!(e, LogEvent::ReadDone { .. })) else {
                panic!("no read answer: {events:?}")
            };
            let records = records.clone();
            assert!(!records.is_empty(), "empty read at {offset} of [{start}, {end})");
            self.handle(events);
            let last = batch::iter_headers(&records).last().expect("a batch").0;
            offset = last.next_offset();
        }
        assert_eq!(offset, end);
        for segment in self.log.segments() {
            let path = format!("{DIR}/{}", runnel_actors::log::segment::file_name(segment.base_offset, SegmentFile::Log));
            let data = Bytes::copy_from_slice(self.disk.file(&path).expect("segment file exists"));
            assert_eq!(data.len() as u64, segment.size_bytes, "segment {} size", segment.base_offset);
            let starts: Vec<(i64, i64, u64)> = batch::iter_headers(&data).map(|(h, r)| (h.base_offset, h.next_offset(), r.start as u64)).collect();
            for &(base, next, _) in &starts {
                for target in [base, next - 1] {
                    let position = segment.position_for(target);
                    let indexed = starts.iter().find(|s| s.2 == position).expect("index points at a batch start");
                    assert!(indexed.0 <= target, "index for {target} points at batch {} (past it)", indexed.0);
                }
            }
        }
    }

    fn apply(&mut self, op: Op) {
        self.now_ms += 7;
        match op {
            Op::Append { batches, append_time, bump_epoch } => {
                if bump_epoch {
                    self.epoch += 1;
                }
                let mut records = Vec::new();
                let mut models = Vec::new();
                for (count, value_len, timestamp) in batches {
                    let value = vec![b'x'; value_len];
                    let recs: Vec<_> = (0..count).map(|i| (None, Some(&value[..]), timestamp + (i as i64 * 37) % 101)).collect();
                    let built = batch::build_batch(&recs, (-1, -1, -1));
                    records.extend_from_slice(&built);
                    models.push((built, recs.iter().map(|r| r.2).collect::<Vec<_>>()));
                }
                let epoch = self.epoch;
                let info = self.log.append(&mut self.io, &records, epoch, append_time, self.now_ms);
                let mut offset = self.log_end();
                assert_eq!(info.first_offset, offset, "offsets dense from the log end");
                for ((built, timestamps), header) in models.into_iter().zip(&info.headers) {
                    let mut bytes = BytesMut::from(&built[..]);
                    batch::assign(&mut bytes, offset, epoch, append_time);
                    let expected = BatchHeader::parse(&bytes).expect("header");
                    assert_eq!(&expected, header);
                    let records = timestamps.iter().enumerate().map(|(i, &ts)| (offset + i as i64, append_time.unwrap_or(ts))).collect();
                    self.batches.insert(offset, ModelBatch { bytes: bytes.freeze(), header: expected, records });
                    offset = expected.next_offset();
                }
                assert_eq!(info.last_offset, offset - 1);
                assert_eq!(self.log.log_end_offset(), offset);
            }
            Op::Replicate { batches, epoch_delta, fault } => self.replicate(batches, epoch_delta, fault),
            Op::Truncate { pick } => {
                let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
                let offset = start + (pick % (end - start + 1) as u64) as i64;
                let expected = if offset == end {
                    end
                } else {
                    let segment = self.log.segments().iter().rev().find(|s| s.base_offset <= offset).expect("segment");
                    match &segment.batches {
                        Some(_) => *self.batches.range(..=offset).next_back().expect("batch containing the offset").0,
                        None => segment.base_offset,
                    }
                };
                let result = self.log.truncate_to(&mut self.io, offset);
                if expected < start {
                    assert_eq!(result, start, "truncate_to({offset}) below the start: restarts empty at it");
                    self.truncate_fully(start);
                } else {
                    assert_eq!(result, expected, "truncate_to({offset})");
                    if expected < end {
                        // Emptying the log deletes the first segment: a crash may then recover an
                        // empty old history whose start only that segment's name recorded.
                        let first = self.log.segments()[0].base_offset;
                        let floor = if expected == first { 0 } else { self.durable.min(expected) };
                        self.fork(expected, floor);
                        self.batches.retain(|&base, _| base < expected);
                        self.durable = floor;
                    }
                }
            }
            Op::TruncateFully { pick } => {
                let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
                let offset = start + (pick % (end - start + 40) as u64) as i64;
                self.log.truncate_fully_and_start_at(&mut self.io, offset);
                self.truncate_fully(offset);
            }
            Op::Read { pick, max_bytes, upper_pick } => {
                let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
                let offset = start + (pick % (end - start + 2) as u64) as i64 - (pick % 7 == 0) as i64;
                let upper = start + (upper_pick % (end - start + 1) as u64) as i64;
                let id = self.next_id;
                self.next_id += 1;
                match self.log.read(&mut self.io, id, offset, max_bytes, upper) {
                    ReadStart::Pending => {
                        assert!(start <= offset && offset < upper, "pending read at {offset} of [{start}, {upper})");
                        self.reads.insert(id, (offset, max_bytes, upper, false));
                    }
                    ReadStart::Empty => assert!(start <= offset && offset <= end && offset >= upper, "empty read at {offset}"),
                    ReadStart::OutOfRange => assert!(offset < start || offset > end, "out of range at {offset} of [{start}, {end}]"),
                }
            }
            Op::Flush { blob } => {
                // The blob names the log end and the CRC of the batch ending there: a recovery
                // handing back a blob taken on another history is caught.
                let end = self.log.log_end_offset();
                let crc = self.batches.values().find(|b| b.header.next_offset() == end).map_or(0, |b| b.header.crc);
                let blob = blob.then(|| Bytes::from(format!("blob@{end}:{crc}")));
                self.log.flush(&mut self.io, blob);
            }
            Op::Step(n) => {
                for _ in 0..n {
                    let Some(events) = self.disk.step(&mut self.io, &mut self.log) else { break };
                    self.handle(events);
                }
            }
            Op::Run => {
                let events = self.disk.run(&mut self.io, &mut self.log);
                self.handle(events);
            }
            Op::Timestamp { target } => {
                let id = self.next_id;
                self.next_id += 1;
                let expected = self.expected_timestamp(target);
                match self.log.offset_for_timestamp(&mut self.io, id, target) {
                    Some(found) => assert_eq!(found, expected, "immediate lookup {target}"),
                    None => {
                        self.lookups.insert(id, (target, expected));
                    }
                }
            }
            Op::Retention { advance_ms } => {
                self.now_ms += advance_ms;
                let before = self.log.log_start_offset();
                self.log.apply_retention(&mut self.io, self.now_ms, i64::MAX);
                assert!(self.log.log_start_offset() >= before);
                self.log_start_offset = self.log.log_start_offset();
            }
            Op::DeleteRecords { pick } => {
                let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
                let offset = start + (pick % (end - start + 2) as u64) as i64;
                match self.log.delete_records(&mut self.io, offset) {
                    Ok(new_start) => {
                        assert!(offset <= end);
                        assert_eq!(new_start, offset.max(start));
                        self.log_start_offset = new_start;
                    }
                    Err(()) => assert!(offset > end, "delete_records({offset}) refused with log end {end}"),
                }
            }
            Op::Crash { steps, tear, seed } => {
                for _ in 0..steps {
                    let Some(events) = self.disk.step(&mut self.io, &mut self.log) else { break };
                    self.handle(events);
                }
                self.disk.crash(&mut Rng::new(seed), tear);
                self.reads.clear();
                self.lookups.clear();
                self.restart();
            }
        }
        assert_eq!(self.log.log_end_offset(), self.log_end(), "log end");
        assert_eq!(self.log.log_start_offset(), self.log_start_offset, "log start");
        self.check_epochs();
    }

    fn truncate_fully(&mut self, offset: i64) {
        self.fork(offset, 0);
        self.batches.clear();
        self.epoch_prefix = (Vec::new(), i64::MIN);
        self.log_start_offset = offset;
        self.durable = self.durable.min(offset);
    }

    /// A follower append of batches as the leader would send them, possibly spoiled.
    fn replicate(&mut self, batches: Vec<(usize, usize, i64)>, epoch_delta: i32, fault: u8) {
        let epoch = (self.epoch + epoch_delta).max(0);
        self.epoch = self.epoch.max(epoch);
        let end = self.log.log_end_offset();
        let mut offset = end;
        let mut data = BytesMut::new();
        let mut models = Vec::new();
        for (i, (count, value_len, timestamp)) in batches.iter().copied().enumerate() {
            let value = vec![b'r'; value_len];
            let recs: Vec<_> = (0..count).map(|j| (None, Some(&value[..]), timestamp + (j as i64 * 13) % 71)).collect();
            let mut bytes = BytesMut::from(&batch::build_batch(&recs, (-1, -1, -1))[..]);
            let base = match fault {
                1 if i == 0 => offset + 1,
                2 if i == 1 => offset + 1,
                _ => offset,
            };
            batch::assign(&mut bytes, base, epoch, None);
            let header = BatchHeader::parse(&bytes).expect("header");
            let records = recs.iter().enumerate().map(|(j, r)| (base + j as i64, r.2)).collect();
            offset = header.next_offset();
            data.extend_from_slice(&bytes);
            models.push(ModelBatch { bytes: bytes.freeze(), header, records });
        }
        let len = data.len();
        match fault {
            3 => data[len - 1] ^= 0x55,
            4 => data.truncate(len - 3),
            _ => {}
        }
        let queued = self.io.queue.len();
        let result = self.log.append_replicated(&mut self.io, &data.freeze(), self.now_ms);
        let latest = fold_epochs(&self.epoch_prefix, &self.batches).last().map(|e| e.0);
        let goes_back = latest.is_some_and(|latest| epoch < latest);
        let fails = fault == 1 || (fault == 2 && models.len() > 1) || fault >= 3 || goes_back;
        if fails {
            let error = result.expect_err("spoiled follower append refused");
            match fault {
                _ if goes_back && fault < 3 && !matches!(error, ReplicaAppendError::OffsetMismatch { .. } | ReplicaAppendError::NotContiguous { .. }) => {
                    assert!(matches!(error, ReplicaAppendError::EpochGoesBack { .. }), "{error:?}")
                }
                1 => assert_eq!(error, ReplicaAppendError::OffsetMismatch { expected: end, found: end + 1 }),
                2 => assert!(matches!(error, ReplicaAppendError::NotContiguous { .. }), "{error:?}"),
                _ => assert!(matches!(error, ReplicaAppendError::Corrupt(_)), "{error:?}"),
            }
            assert_eq!(self.io.queue.len(), queued, "a refused append issued disk operations");
            assert_eq!(self.log.log_end_offset(), end);
            return;
        }
        let info = result.expect("valid follower append");
        assert_eq!((info.first_offset, info.last_offset), (end, offset - 1));
        assert_eq!(info.headers, models.iter().map(|m| m.header).collect::<Vec<_>>(), "headers stored as received");
        for model in models {
            self.batches.insert(model.header.base_offset, model);
        }
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=n runs more.
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)))]

    /// The log agrees with the model through random operations, partial disk progress and crashes.
    #[test]
    fn log_matches_model(config in config(), ops in prop::collection::vec(op(), 1..80)) {
        let mut harness = Harness::new(config);
        for op in ops {
            harness.apply(op);
        }
        let events = harness.disk.run(&mut harness.io, &mut harness.log);
        harness.handle(events);
        assert!(harness.reads.is_empty() && harness.lookups.is_empty(), "unanswered requests");
        harness.check_whole_log();
        harness.disk.crash(&mut Rng::new(0), false);
        harness.restart();
    }
}
