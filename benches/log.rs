//! Micro-benchmarks of the partition log over the in-memory disk: appends of 100-record batches
//! of 100-byte values (alone, and with a group-commit flush every 10 appends), and reads of
//! whole batches at random offsets (one batch, and up to 1 MiB). The disk executes every
//! operation synchronously, so the numbers are the log's own CPU cost plus a memcpy per write.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use runnel_actors::core::mem_disk::{MemDisk, QueuedIo};
use runnel_actors::core::Rng;
use runnel_actors::log::{batch, LogConfig, LogEvent, PartitionLog, ReadStart};
use std::hint::black_box;

const RECORDS_PER_BATCH: usize = 100;
const VALUE_BYTES: usize = 100;

fn batch_of_100() -> Bytes {
    let value = [b'x'; VALUE_BYTES];
    let records: Vec<_> = (0..RECORDS_PER_BATCH).map(|i| (None, Some(&value[..]), 1_700_000_000_000 + i as i64)).collect();
    batch::build_batch(&records, (-1, -1, -1))
}

/// A recovered, empty log whose retention keeps memory bounded during long runs.
fn open() -> (MemDisk, QueuedIo, PartitionLog) {
    let config = LogConfig { segment_bytes: 16 << 20, retention_bytes: 64 << 20, retention_ms: -1, ..LogConfig::default() };
    let mut disk = MemDisk::new();
    disk.durable_delete = true;
    let mut io = QueuedIo::default();
    let mut log = PartitionLog::new("bench-0", config);
    log.start(&mut io);
    disk.run(&mut io, &mut log);
    assert!(log.is_ready());
    (disk, io, log)
}

fn append(c: &mut Criterion) {
    let batch = batch_of_100();
    let mut group = c.benchmark_group("log_append");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    group.bench_function("100x100B", |b| {
        let (mut disk, mut io, mut log) = open();
        let mut n = 0u64;
        b.iter(|| {
            let info = log.append(&mut io, black_box(&batch), 0, None, 0);
            disk.run(&mut io, &mut log);
            n += 1;
            if n % 1000 == 0 {
                log.apply_retention(&mut io, 0, i64::MAX);
                disk.run(&mut io, &mut log);
            }
            info.last_offset
        });
    });
    group.bench_function("100x100B_flush_every_10", |b| {
        let (mut disk, mut io, mut log) = open();
        let mut n = 0u64;
        b.iter(|| {
            let info = log.append(&mut io, black_box(&batch), 0, None, 0);
            n += 1;
            if n % 10 == 0 {
                log.flush(&mut io, None);
            }
            if n % 1000 == 0 {
                log.apply_retention(&mut io, 0, i64::MAX);
            }
            disk.run(&mut io, &mut log);
            info.last_offset
        });
    });
    group.finish();
}

fn read(c: &mut Criterion) {
    let batch = batch_of_100();
    let (mut disk, mut io, mut log) = open();
    for _ in 0..5_000 {
        log.append(&mut io, &batch, 0, None, 0);
    }
    disk.run(&mut io, &mut log);
    let end = log.log_end_offset();
    let start = log.log_start_offset();
    let mut group = c.benchmark_group("log_read");
    for (name, max_bytes) in [("one_batch", 1u64), ("1MiB", 1 << 20)] {
        let mut rng = Rng::new(7);
        group.throughput(Throughput::Bytes(max_bytes.max(batch.len() as u64)));
        group.bench_function(name, |b| {
            b.iter(|| {
                let offset = start + rng.below((end - start) as u64) as i64;
                assert_eq!(log.read(&mut io, 1, offset, max_bytes, end), ReadStart::Pending);
                let events = disk.run(&mut io, &mut log);
                match events.first() {
                    Some(LogEvent::ReadDone { records, .. }) => black_box(records.len()),
                    other => panic!("no read answer: {other:?}"),
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
