//! Log cleaner throughput over the in-memory disk, and what it buys a reader of the whole log
//! (a coordinator loading its `__consumer_offsets` partition reads exactly that way).
//!
//! For a few key counts: append 100,000 keyed records (100-byte values, 10 per batch, 1 MiB
//! segments), run one cleaning pass to completion, and read the whole log from its start before
//! and after. Prints bytes and records before and after, the pass's time and throughput (MB/s of
//! log cleaned), and the full-read times. The disk executes operations synchronously, so the
//! numbers are the cleaner's own CPU cost plus memcpys.
//!
//! `cargo bench --bench compaction`

use runnel_actors::core::mem_disk::{MemDisk, QueuedIo};
use runnel_actors::log::{batch, cleaner, LogConfig, LogEvent, PartitionLog, ReadStart};
use std::time::Instant;

const RECORDS: usize = 100_000;
const PER_BATCH: usize = 10;
const VALUE_BYTES: usize = 100;

fn open(disk: &mut MemDisk) -> (QueuedIo, PartitionLog) {
    let config = LogConfig { segment_bytes: 1 << 20, retention_ms: -1, compact: true, min_cleanable_dirty_ratio: 0.0, ..LogConfig::default() };
    let mut io = QueuedIo::default();
    let mut log = PartitionLog::new("bench-compacted-0", config);
    log.start(&mut io);
    disk.run(&mut io, &mut log);
    assert!(log.is_ready());
    (io, log)
}

/// Read the whole log from its start; returns (records, batches, seconds).
fn read_all(disk: &mut MemDisk, io: &mut QueuedIo, log: &mut PartitionLog) -> (usize, usize, f64) {
    let started = Instant::now();
    let (mut offset, end) = (log.log_start_offset(), log.log_end_offset());
    let (mut records, mut batches) = (0, 0);
    let mut id = 0;
    while offset < end {
        id += 1;
        assert_eq!(log.read(io, id, offset, 1 << 20, end), ReadStart::Pending);
        let events = disk.run(io, log);
        let Some(LogEvent::ReadDone { records: data, .. }) = events.into_iter().find(|e| matches!(e, LogEvent::ReadDone { .. })) else {
            panic!("no read answer")
        };
        for (header, range) in batch::iter_headers(&data) {
            batches += 1;
            records += cleaner::records(&data[range], &header).map_or(0, |r| r.len());
        }
        offset = batch::end_of_batches(&data).expect("a batch");
    }
    (records, batches, started.elapsed().as_secs_f64())
}

fn main() {
    println!("compaction: {RECORDS} records of {VALUE_BYTES} B values, {PER_BATCH} per batch, 1 MiB segments");
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>9} {:>8} {:>9} {:>10} {:>10}",
        "keys", "bytes", "cleaned", "records", "left", "pass ms", "MB/s", "read ms", "read' ms"
    );
    let value = [b'v'; VALUE_BYTES];
    for keys in [100usize, 1_000, 10_000, 100_000] {
        let mut disk = MemDisk::new();
        disk.durable_delete = true;
        let (mut io, mut log) = open(&mut disk);
        let key_names: Vec<Vec<u8>> = (0..keys).map(|k| format!("key-{k:08}").into_bytes()).collect();
        for b in 0..RECORDS / PER_BATCH {
            let recs: Vec<batch::PlainRecord<'_>> =
                (0..PER_BATCH).map(|i| (Some(&key_names[(b * PER_BATCH + i) % keys][..]), Some(&value[..]), 1_700_000_000_000)).collect();
            log.append(&mut io, &batch::build_batch(&recs, (-1, -1, -1)), 0, None, 1_700_000_000_000);
        }
        log.flush(&mut io, None);
        disk.run(&mut io, &mut log);
        let before = log.size_bytes();
        let (records_before, _, read_before) = read_all(&mut disk, &mut io, &mut log);
        let end = log.log_end_offset();
        let started = Instant::now();
        assert!(log.maybe_clean(&mut io, end, 1_700_000_000_000), "a dirty log starts a pass");
        disk.run(&mut io, &mut log);
        let pass = started.elapsed().as_secs_f64();
        assert!(log.cleaned_to() > 0, "the pass completed");
        let after = log.size_bytes();
        let (records_after, _, read_after) = read_all(&mut disk, &mut io, &mut log);
        println!(
            "{keys:>6} {before:>10} {after:>10} {records_before:>9} {records_after:>9} {:>8.1} {:>9.1} {:>10.1} {:>10.1}",
            pass * 1e3,
            before as f64 / pass / 1e6,
            read_before * 1e3,
            read_after * 1e3
        );
    }
}
