//! Model-based test of the partition log: random sequences of appends, reads, flushes, timestamp
//! lookups, retention, DeleteRecords, partial progress of the disk queue and crashes (unsynced
//! writes lost, last appends torn) with recovery, run over `MemDisk` and compared after every
//! step with a model: a map from base offset to the exact bytes each batch must have on disk.
//!
//! Properties checked:
//! - every batch acknowledged `Durable` before a crash is present after recovery, byte-identical
//!   (`log_end_offset` after recovery >= the durable offset acknowledged before the crash);
//! - the recovered log is a dense prefix of what was appended, from the log start offset;
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
use runnel_actors::log::{LogConfig, LogEvent, PartitionLog, ReadStart};
use std::collections::BTreeMap;

const DIR: &str = "topic-0";

#[derive(Clone, Debug)]
enum Op {
    /// Batches of (record count, value length, first timestamp); LogAppendTime if Some.
    Append {
        batches: Vec<(usize, usize, i64)>,
        append_time: Option<i64>,
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
            .prop_map(|(batches, append_time)| Op::Append { batches, append_time }),
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
        })
}

/// One batch as it must be on disk, with its records' (offset, timestamp).
struct ModelBatch {
    bytes: Bytes,
    header: BatchHeader,
    records: Vec<(i64, i64)>,
}

struct Harness {
    config: LogConfig,
    disk: MemDisk,
    io: QueuedIo,
    log: PartitionLog,
    /// Every batch that may be in the log, by base offset.
    batches: BTreeMap<i64, ModelBatch>,
    log_start_offset: i64,
    /// Largest offset acknowledged Durable.
    durable: i64,
    now_ms: i64,
    next_id: u64,
    /// In-flight reads: id -> (offset, max_bytes, upper bound).
    reads: BTreeMap<u64, (i64, u64, i64)>,
    /// In-flight timestamp lookups: id -> (target, answer when issued).
    lookups: BTreeMap<u64, (i64, Option<(i64, i64)>)>,
}

impl Harness {
    fn new(config: LogConfig) -> Self {
        let mut h = Harness {
            log: PartitionLog::new(DIR, config.clone()),
            config,
            disk: MemDisk::new(),
            io: QueuedIo::default(),
            batches: BTreeMap::new(),
            log_start_offset: 0,
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
        assert!(matches!(events.last(), Some(LogEvent::Recovered { .. })), "{events:?}");
        let end = self.log.log_end_offset();
        assert!(end >= self.durable, "log end {end} after recovery below the acknowledged durable offset {}", self.durable);
        assert!(end <= self.log_end().max(self.log.log_start_offset()), "log end {end} beyond anything appended ({})", self.log_end());
        let start = self.log.log_start_offset();
        assert!(start <= self.log_start_offset.max(end), "log start {start} beyond the model's {}", self.log_start_offset);
        self.log_start_offset = start;
        self.batches.retain(|_, b| b.header.next_offset() <= end);
        self.durable = self.durable.max(self.log.durable_offset());
        self.check_whole_log();
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
                }
                LogEvent::ReadDone { read_id, records } => {
                    let (offset, max_bytes, upper) = self.reads.remove(&read_id).expect("known read id");
                    self.check_read(offset, max_bytes, upper, &records);
                }
                LogEvent::TimestampFound { query_id, found } => {
                    let (target, when_issued) = self.lookups.remove(&query_id).expect("known lookup id");
                    let now = self.expected_timestamp(target);
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
            self.reads.insert(id, (offset, 3000, end));
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
            Op::Append { batches, append_time } => {
                let mut records = Vec::new();
                let mut models = Vec::new();
                for (count, value_len, timestamp) in batches {
                    let value = vec![b'x'; value_len];
                    let recs: Vec<_> = (0..count).map(|i| (None, Some(&value[..]), timestamp + (i as i64 * 37) % 101)).collect();
                    let built = batch::build_batch(&recs, (-1, -1, -1));
                    records.extend_from_slice(&built);
                    models.push((built, recs.iter().map(|r| r.2).collect::<Vec<_>>()));
                }
                let epoch = 3;
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
            Op::Read { pick, max_bytes, upper_pick } => {
                let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
                let offset = start + (pick % (end - start + 2) as u64) as i64 - (pick % 7 == 0) as i64;
                let upper = start + (upper_pick % (end - start + 1) as u64) as i64;
                let id = self.next_id;
                self.next_id += 1;
                match self.log.read(&mut self.io, id, offset, max_bytes, upper) {
                    ReadStart::Pending => {
                        assert!(start <= offset && offset < upper, "pending read at {offset} of [{start}, {upper})");
                        self.reads.insert(id, (offset, max_bytes, upper));
                    }
                    ReadStart::Empty => assert!(start <= offset && offset <= end && offset >= upper, "empty read at {offset}"),
                    ReadStart::OutOfRange => assert!(offset < start || offset > end, "out of range at {offset} of [{start}, {end}]"),
                }
            }
            Op::Flush { blob } => {
                let blob = blob.then(|| Bytes::from(format!("blob@{}", self.log.log_end_offset())));
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
                self.log.apply_retention(&mut self.io, self.now_ms);
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
