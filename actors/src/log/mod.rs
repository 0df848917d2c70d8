//! The partition log: an append-only sequence of segments holding Kafka v2 record batches,
//! driven entirely through disk effects (Kafka's `UnifiedLog` + `LocalLog`).
//!
//! [`PartitionLog`] performs no IO: it issues [`DiskOp`]s through [`DiskIo`] and learns of their
//! completions through [`PartitionLog::on_io`], which answers with [`LogEvent`]s. Appends return
//! their offsets at once (the bytes are issued, not durable); [`PartitionLog::flush`] asks for
//! durability and a later [`LogEvent::Durable`] reports it (group commit: at most one fsync in
//! flight plus one queued behind it).
//!
//! Replication (Kafka's `UnifiedLog` follower side, KIP-101/KIP-279): the leader epoch cache
//! ([`leader_epoch`]) records where each leader epoch starts and answers OffsetsForLeaderEpoch
//! ([`PartitionLog::end_offset_for_epoch`]); [`PartitionLog::append_replicated`] stores a
//! leader's batches as fetched; [`PartitionLog::truncate_to`] drops a divergent suffix and
//! [`PartitionLog::truncate_fully_and_start_at`] restarts an empty log at a later offset.
//!
//! Layout of the log directory: `{base_offset:020}.log/.index/.timeindex` per segment (see
//! [`segment`]) and `partition.checkpoint` (recovery point, log start offset, leader epoch cache
//! and the caller's blob, see [`recovery::Checkpoint`]), replaced atomically through
//! `partition.checkpoint.tmp`.
//!
//! Invariants: offsets are dense from `log_start_offset` to `log_end_offset`; segments are sorted,
//! contiguous, and their files exist; `durable_offset <= log_end_offset`; `Durable` offsets never
//! go backwards except across a truncation below them (the durable offset is clamped to the new
//! end); every batch below `durable_offset` was fsynced (log and index files); the epoch cache
//! holds strictly growing epochs and start offsets, every start below the log end offset, and
//! equals what walking the log's batches (and those below the log start) gives
//! ([`leader_epoch::EpochCache::assign`]); no fsync starts while a truncation is not recorded by
//! the checkpoint in place, so a durable truncation always comes with a checkpoint whose recovery
//! point, epoch cache and blob are at or below it.
//!
//! Faults survived: a crash at any point (unsynced writes lost or torn) is repaired by
//! [`recovery`] on the next [`PartitionLog::start`]; every batch reported `Durable` survives
//! unless truncated away since. A crash during or after a truncation leaves a dense log whose
//! epoch cache describes it: the truncated log, or the old one (an unsynced truncation may be
//! undone, as in Kafka). Appends after a truncation go to a new segment, so recovery drops new
//! data that does not continue the old data densely; a later segment of the new history that
//! survives a crash unsynced and happens to continue the old data is kept, and the follower's
//! OffsetsForLeaderEpoch exchange truncates that divergence again, as in Kafka. A
//! failed write or fsync takes the log offline ([`LogEvent::Failed`], `is_ready() == false`):
//! after a failed fsync the page cache cannot be trusted (fsyncgate), so only a restart, which
//! recovers from the disk, brings it back. A read racing a segment deletion answers empty.

pub mod batch;
pub mod cleaner;
pub mod leader_epoch;
pub mod offset_index;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod time_index;

use crate::core::{DiskIo, DiskOp, IoDone, IoOutput, IoToken};
use batch::{BatchError, BatchHeader, BATCH_HEADER_LEN, LOG_OVERHEAD};
use bytes::{Bytes, BytesMut};
use leader_epoch::EpochCache;
use recovery::{Checkpoint, Progress, Recovery, CHECKPOINT_FILE, SCAN_CHUNK_BYTES, TMP_SUFFIX};
use segment::{Segment, SegmentFile, Unsynced};
use std::collections::BTreeMap;

/// Per-topic log settings (Kafka's topic config names in the field docs).
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment when an append would exceed this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first append is older than this.
    pub segment_ms: i64,
    /// `retention.ms`: delete segments whose largest timestamp is older; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest segments while the log is larger; -1 means no limit.
    pub retention_bytes: i64,
    /// `index.interval.bytes`: add an offset/time index entry every this many bytes.
    pub index_interval_bytes: u64,
    /// `segment.index.bytes`: maximum size of an index file; roll when full.
    pub segment_index_bytes: u64,
    /// `cleanup.policy` includes `compact`: the cleaner keeps the latest record of each key.
    pub compact: bool,
    /// `delete.retention.ms`: how long a tombstone outlives the records it deleted.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`: clean once this share of the cleanable bytes is uncleaned.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a segment is cleaned only once its newest record is this old.
    pub min_compaction_lag_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 << 20,
            compact: false,
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
        }
    }
}

/// What a log reports back from [`PartitionLog::on_io`].
#[derive(Debug)]
pub enum LogEvent {
    /// Recovery finished; the log accepts appends and reads.
    Recovered {
        /// The blob last given to [`PartitionLog::flush`] whose fsync completed (empty if none).
        checkpoint: Bytes,
        /// Headers of the batches after the checkpoint's offset, in order (to rebuild state).
        replay: Vec<batch::BatchHeader>,
    },
    /// Every batch below `offset` has been written (to the page cache: it survives a process
    /// crash, not a power loss).
    Written {
        /// Exclusive upper bound of the written prefix.
        offset: i64,
    },
    /// Every batch below `offset` is durable.
    Durable {
        /// Exclusive upper bound of the durable prefix.
        offset: i64,
    },
    /// A checkpoint recording a higher log start offset is in place: a crash can no longer
    /// bring back the records below `offset` (DeleteRecords waits for this on every replica).
    LogStartDurable {
        /// The durable log start offset.
        offset: i64,
    },
    /// A read kept coming back damaged: the partition answers KAFKA_STORAGE_ERROR.
    ReadFailed {
        /// The id passed to [`PartitionLog::read`].
        read_id: u64,
        /// What was wrong with the bytes.
        error: String,
    },
    /// A read finished.
    ReadDone {
        /// The id passed to [`PartitionLog::read`].
        read_id: u64,
        /// Whole batches starting at the batch containing the requested offset.
        records: Bytes,
    },
    /// A timestamp lookup finished.
    TimestampFound {
        /// The id passed to [`PartitionLog::offset_for_timestamp`].
        query_id: u64,
        /// `(offset, timestamp)` of the first record with timestamp >= the target, if any; an
        /// error if the segment read back damaged every time.
        found: Result<Option<(i64, i64)>, String>,
    },
    /// A disk operation failed: the log is offline until restarted.
    Failed {
        /// What failed.
        error: String,
    },
}

/// ListOffsets' special timestamp: the log start offset.
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// ListOffsets' special timestamp: the log end offset (the broker substitutes the high watermark).
pub const LATEST_TIMESTAMP: i64 = -1;
/// ListOffsets' special timestamp (KIP-734): the record with the largest timestamp.
pub const MAX_TIMESTAMP: i64 = -3;

/// What [`PartitionLog::append`] assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub first_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
    /// Largest batch max timestamp among the appended batches (the append time for
    /// LogAppendTime), -1 if none.
    pub max_timestamp: i64,
    /// Offset of the first record carrying `max_timestamp`, -1 if none.
    pub offset_of_max_timestamp: i64,
    /// The appended batches' headers as written (offsets, leader epoch, timestamps assigned).
    pub headers: Vec<BatchHeader>,
}

/// Why [`PartitionLog::append_replicated`] refused a follower's batches. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaAppendError {
    /// The log is not recovered, or offline.
    #[error("log not ready")]
    NotReady,
    /// The records are not a sequence of whole, CRC-valid v2 batches (Kafka: CORRUPT_MESSAGE).
    #[error("corrupt records: {0}")]
    Corrupt(BatchError),
    /// The first batch does not start at the log end offset (Kafka's
    /// UnexpectedAppendOffsetException): the follower must fetch from `expected`.
    #[error("records start at offset {found}, the log ends at {expected}")]
    OffsetMismatch {
        /// The log end offset: where the next batch must start.
        expected: i64,
        /// Base offset of the first batch.
        found: i64,
    },
    /// A later batch does not start right after the previous one (Kafka:
    /// OffsetsOutOfOrderException).
    #[error("batch at offset {found} where {expected} was expected")]
    NotContiguous {
        /// The offset after the previous batch.
        expected: i64,
        /// Base offset of the batch.
        found: i64,
    },
    /// A batch's offsets do not fit the log (a negative base offset or an overflow).
    #[error("batch at offset {0} has invalid offsets")]
    InvalidOffsets(i64),
    /// A batch's partition leader epoch is below the latest epoch of the log (or of an earlier
    /// batch): the follower must first truncate its divergent suffix (KIP-101).
    #[error("batch at offset {offset} of epoch {epoch} below the latest epoch {latest}")]
    EpochGoesBack {
        /// Base offset of the batch.
        offset: i64,
        /// Its partition leader epoch.
        epoch: i32,
        /// The latest epoch before it.
        latest: i32,
    },
}

/// How [`PartitionLog::read`] started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStart {
    /// A [`LogEvent::ReadDone`] with the read's id will follow.
    Pending,
    /// Nothing to read: the offset is at (or past) the upper bound, or the log is not ready.
    Empty,
    /// The offset is below the log start offset or above the log end offset.
    OutOfRange,
}

#[derive(Debug)]
enum State {
    /// Constructed, `start` not called yet.
    Created,
    Recovering(Box<Recovery>),
    Ready,
    /// A disk operation failed; only a restart recovers.
    Failed,
    /// `delete_all` was called.
    Deleted,
}

/// A read in progress: the bytes at `position..position + len` of segment `segment_base`.
#[derive(Clone, Copy, Debug)]
struct ReadJob {
    read_id: u64,
    segment_base: i64,
    offset: i64,
    /// Base offset the batch at `position` must have (from the offset index): a header that
    /// disagrees is damaged (the base offset is outside Kafka's CRC).
    expected: i64,
    max_bytes: u64,
    /// Exclusive; lowered when the log is truncated below it while the read is in flight.
    upper_bound: i64,
    position: u64,
    len: u64,
    /// Damaged reads of this job retried so far.
    attempts: u32,
    /// The segment was swapped for its cleaned version while the read was in flight: start the
    /// read again on the new file.
    restart: bool,
    /// This job continues a read into the next segment (see [`PartitionLog::read`]): its first
    /// batch must fit `max_bytes` too.
    continued: bool,
    /// The read walks from the segment's start, not from where the offset index pointed (it
    /// came back damaged from there: the index may be what is damaged).
    unindexed: bool,
}

/// How often a read that comes back damaged is retried before the read fails.
const READ_ATTEMPTS: u32 = 3;

/// See [`PartitionLog::after_damage`].
enum AfterDamage {
    Again,
    FromStart,
    GiveUp,
}

/// A timestamp search in progress over segment `segment_base`.
#[derive(Clone, Copy, Debug)]
struct TimestampJob {
    query_id: u64,
    target: i64,
    segment_base: i64,
    position: u64,
    len: u64,
    /// The base offset the batch at `position` must have (offsets are dense in a segment).
    expected: i64,
    /// Damaged reads of this job retried so far.
    attempts: u32,
    /// The search walks from the segment's start, not from where the indexes pointed.
    unindexed: bool,
    /// The log was truncated while this search was in flight: start it again on completion.
    stale: bool,
}

#[derive(Debug)]
enum Pending {
    /// A write (append, index write, truncate, rename, delete): only a failure matters.
    Write,
    /// The append of records up to this (exclusive) offset.
    Appended(i64),
    /// One of the fsyncs of the in-flight flush.
    Fsync,
    /// The fsync of a checkpoint's tmp file: the rename may only start once it completed (an
    /// fsync may complete after operations issued later). Carries the deletions to release.
    CheckpointSynced(Vec<i64>),
    /// The rename completing a checkpoint write; then these deletions may start (a segment is
    /// only deleted once the log start offset past it is durable, so a crash cannot make the
    /// log end go back below offsets already handed out).
    Checkpointed(Vec<i64>),
    Read(ReadJob),
    Timestamp(TimestampJob),
    /// One of the cleaner's operations.
    Clean(cleaner::CleanOp),
}

/// The fsyncs of one flush.
#[derive(Debug)]
struct FsyncInFlight {
    /// Log end offset when issued: the durable offset once every fsync completes.
    covers: i64,
    /// Fsyncs not completed yet.
    remaining: usize,
    /// Blob to checkpoint once durable, with the log end offset it describes.
    checkpoint: Option<(Bytes, i64)>,
}

/// Outcome of walking the bytes of a read.
enum Walk {
    /// Answer with these bytes (possibly none).
    Done(Bytes),
    /// Read `len` bytes at `position` of the same segment and walk again; the batch there must
    /// have base offset `expected`.
    More { position: u64, len: u64, expected: i64 },
    /// The bytes cannot be what was written (corrupt header, a base offset the index
    /// contradicts, a CRC mismatch).
    Damaged(String),
}

/// One partition's log. See the module documentation.
#[derive(Debug)]
pub struct PartitionLog {
    dir: String,
    config: LogConfig,
    state: State,
    /// Sorted by base offset, contiguous; the last is the active segment. Empty until recovered.
    segments: Vec<Segment>,
    log_start_offset: i64,
    /// The log start offset of the last checkpoint in place: what a crash cannot take back.
    durable_log_start_offset: i64,
    /// The log start offset the checkpoint write in flight records.
    checkpoint_in_flight_log_start: i64,
    durable_offset: i64,
    /// Every operation issued and not completed, by token (a BTreeMap: no hash order can leak).
    pending: BTreeMap<IoToken, Pending>,
    fsync_in_flight: Option<FsyncInFlight>,
    /// A flush requested while an fsync was in flight, with the newest blob given meanwhile.
    flush_requested: Option<Option<(Bytes, i64)>>,
    /// The blob of the last checkpoint written (rewritten with a new log start offset).
    checkpoint_blob: Bytes,
    /// The log end offset `checkpoint_blob` describes: the checkpoint's recovery point.
    checkpoint_offset: i64,
    /// A full truncation dropped the blob, and no flush has given a new one since.
    blob_dropped: bool,
    /// A checkpoint write is in flight (they are serialised: they share the tmp file).
    checkpoint_in_flight: bool,
    /// Another checkpoint write is wanted after the one in flight, releasing these deletions.
    checkpoint_queued: Option<Vec<i64>>,
    /// Segments dropped from the log (below the log start offset) whose files wait for the
    /// checkpoint recording the new log start offset. Until then a flush still fsyncs them: a
    /// crash before that checkpoint must find them whole, or recovery would end the log below an
    /// offset already reported durable.
    doomed: Vec<Segment>,
    /// The leader epoch cache (see [`leader_epoch`]).
    epochs: EpochCache,
    /// Truncations so far (`truncate_to`, `truncate_fully_and_start_at`).
    truncations: u64,
    /// `truncations` when the checkpoint write in flight captured the log's state.
    checkpoint_in_flight_covers: u64,
    /// `truncations` covered by the last checkpoint in place. While it is below `truncations`, no
    /// fsync is issued: a truncation may only become durable once a checkpoint recording it (its
    /// recovery point, epoch cache and blob) is in place.
    checkpointed_truncations: u64,
    /// The cleaning pass in progress (see [`cleaner`]).
    cleaning: Option<cleaner::CleanJob>,
    /// Cleaning passes started so far (their ids).
    clean_jobs: u64,
    /// End of the region the last completed cleaning pass covered.
    cleaned_to: i64,
    /// Segments the cleaner swapped in.
    segments_cleaned: u64,
    /// Reads continued into a later segment: what the earlier segments gave, by read id.
    read_prefixes: BTreeMap<u64, Bytes>,
}

impl PartitionLog {
    /// A log over the directory `dir`, relative to the node's data directory (e.g. `"topic-0"`).
    /// Call [`PartitionLog::start`] to recover it.
    pub fn new(dir: impl Into<String>, config: LogConfig) -> Self {
        PartitionLog {
            dir: dir.into(),
            config,
            state: State::Created,
            segments: Vec::new(),
            log_start_offset: 0,
            durable_log_start_offset: 0,
            checkpoint_in_flight_log_start: 0,
            durable_offset: 0,
            pending: BTreeMap::new(),
            fsync_in_flight: None,
            flush_requested: None,
            checkpoint_blob: Bytes::new(),
            checkpoint_offset: 0,
            blob_dropped: false,
            checkpoint_in_flight: false,
            checkpoint_queued: None,
            doomed: Vec::new(),
            epochs: EpochCache::new(),
            truncations: 0,
            checkpoint_in_flight_covers: 0,
            checkpointed_truncations: 0,
            cleaning: None,
            clean_jobs: 0,
            cleaned_to: 0,
            segments_cleaned: 0,
            read_prefixes: BTreeMap::new(),
        }
    }

    /// The current settings.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Change the settings; they apply to the next append, roll and retention pass.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// Begin recovery: list the directory, read the checkpoint, scan from the recovery point.
    /// [`LogEvent::Recovered`] comes out of a later [`PartitionLog::on_io`].
    pub fn start(&mut self, io: &mut impl DiskIo) {
        assert!(matches!(self.state, State::Created), "log {} started twice ({:?})", self.dir, self.state);
        let mut recovery = Box::new(Recovery::new(self.dir.clone(), self.config.clone()));
        recovery.start(io);
        self.state = State::Recovering(recovery);
    }

    /// Whether [`start`](PartitionLog::start) was called: the log has (or is recovering) a
    /// directory on disk.
    pub fn is_started(&self) -> bool {
        !matches!(self.state, State::Created)
    }

    /// Whether operations this log issued are still waiting for their completions.
    pub fn has_pending_io(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the log is recovered and online (accepts appends and reads).
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    /// Offset of the first record still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The log start offset a checkpoint in place records: records below it stay deleted
    /// across a crash. At most [`PartitionLog::log_start_offset`].
    pub fn durable_log_start_offset(&self) -> i64 {
        self.durable_log_start_offset
    }

    /// Offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.segments.last().map_or(self.log_start_offset, |s| s.next_offset)
    }

    /// Every record below this offset is fsynced.
    pub fn durable_offset(&self) -> i64 {
        self.durable_offset
    }

    /// The log end offset the blob of the newest checkpoint written describes (its recovery
    /// point); a blob given with a flush still in flight does not count until it is written.
    pub fn checkpoint_offset(&self) -> i64 {
        self.checkpoint_offset
    }

    /// The checkpoint's blob no longer describes the log as recovery will find it: deletions
    /// moved the log start past the blob's offset (recovery replays only what is left), or a
    /// full truncation dropped the blob. A flush with a new blob brings it up to date.
    pub fn checkpoint_blob_outdated(&self) -> bool {
        self.blob_dropped || self.log_start_offset > self.checkpoint_offset
    }

    /// Total size of the segment files, unsynced bytes included.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size_bytes).sum()
    }

    /// The segments, oldest first (the last is active): for inspection by tests, metrics and
    /// DescribeLogDirs-style admin answers.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// `(timestamp, offset)` of the largest timestamp in the log (the first record carrying it;
    /// batch granularity for compressed batches), `(-1, -1)` if there is none.
    pub fn max_timestamp(&self) -> (i64, i64) {
        let mut best = (-1, -1);
        for segment in &self.segments {
            if segment.max_timestamp > best.0 {
                best = (segment.max_timestamp, segment.offset_of_max_timestamp);
            }
        }
        best
    }

    /// Append `records`: one or more whole batches already validated by
    /// [`batch::validate_batches`]. Rolls first if the active segment would exceed
    /// `segment.bytes`, an index is full or `segment.ms` elapsed (`now_wall_ms`). Assigns
    /// consecutive offsets from the log end offset ([`batch::assign`] with `leader_epoch` and
    /// `append_time`), issues the `Append` and index writes, and returns at once: the records are
    /// readable now and durable after a [`LogEvent::Durable`] covering them. A `leader_epoch`
    /// above the latest cached one starts a new epoch cache entry at the first offset.
    ///
    /// Panics if the log is not ready (the caller checks [`PartitionLog::is_ready`]) or `records`
    /// is not a sequence of whole batches.
    pub fn append(&mut self, io: &mut impl DiskIo, records: &[u8], leader_epoch: i32, append_time: Option<i64>, now_wall_ms: i64) -> AppendInfo {
        assert!(self.is_ready(), "append to log {} in state {:?}", self.dir, self.state);
        let mut lengths = Vec::new();
        let mut record_count = 0i64;
        let mut at = 0;
        while at < records.len() {
            let header = BatchHeader::parse(&records[at..]).unwrap_or_else(|e| panic!("append of unvalidated records to {}: {e}", self.dir));
            let total = header.total_len();
            assert!(
                header.batch_length >= (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 && at + total <= records.len(),
                "append to {}: batch of {total} bytes at {at} in {} bytes",
                self.dir,
                records.len()
            );
            lengths.push(total);
            record_count += header.last_offset_delta as i64 + 1;
            at += total;
        }
        assert!(!lengths.is_empty(), "append of no batch to {}", self.dir);
        let first_offset = self.log_end_offset();
        let mut rest = BytesMut::from(records);
        let mut assigned = BytesMut::with_capacity(records.len());
        let mut headers = Vec::with_capacity(lengths.len());
        let mut offset = first_offset;
        for len in lengths {
            let mut one = rest.split_to(len);
            batch::assign(&mut one, offset, leader_epoch, append_time);
            let header = BatchHeader::parse(&one).expect("assigned batch has a header");
            offset = header.next_offset();
            headers.push(header);
            assigned.unsplit(one);
        }
        assert_eq!(offset, first_offset + record_count, "log {} assigned past the records' count", self.dir);
        self.write_batches(io, assigned.freeze(), headers, now_wall_ms)
    }

    /// Follower append (Kafka's `appendAsFollower`): store `records`, batches fetched from the
    /// leader with their offsets and partition leader epochs already assigned, byte for byte
    /// (except a first batch that is empty and starts below the log end, which the leader's
    /// cleaner merged: only its part from the log end is stored, see
    /// [`cleaner::empty_batch_from`]).
    /// The first batch must start at the log end offset and every batch must follow the previous
    /// one densely, each a whole CRC-valid v2 batch, with partition leader epochs that never go
    /// below the log's latest epoch; otherwise nothing is written and the error says why. Rolls, index writes, the epoch cache (from the batches' partition leader epochs),
    /// `Written` and, after a [`PartitionLog::flush`], `Durable` work as for
    /// [`PartitionLog::append`].
    pub fn append_replicated(&mut self, io: &mut impl DiskIo, records: &Bytes, now_wall_ms: i64) -> Result<AppendInfo, ReplicaAppendError> {
        if !self.is_ready() {
            return Err(ReplicaAppendError::NotReady);
        }
        let mut batches = batch::validate_batches(records).map_err(ReplicaAppendError::Corrupt)?;
        let mut expected = self.log_end_offset();
        let (first, _) = batches[0];
        let trimmed;
        let records = if cleaner::straddles(&first, expected) {
            // The leader's cleaner merged emptied batches across our log end: keep our part.
            let mut rest = BytesMut::from(&cleaner::empty_batch_from(&first, expected)[..]);
            rest.extend_from_slice(&records[batches[0].1.end..]);
            trimmed = rest.freeze();
            batches = batch::validate_batches(&trimmed).map_err(ReplicaAppendError::Corrupt)?;
            &trimmed
        } else {
            records
        };
        let mut latest = self.epochs.latest_epoch();
        for (i, (header, _)) in batches.iter().enumerate() {
            if header.partition_leader_epoch < -1 {
                // Not a leader epoch at all: a field the CRC does not cover was damaged.
                return Err(ReplicaAppendError::Corrupt(BatchError::Invalid(format!(
                    "batch at offset {} carries leader epoch {}",
                    header.base_offset, header.partition_leader_epoch
                ))));
            }
            if let Some(latest) = latest.filter(|&latest| header.partition_leader_epoch < latest) {
                return Err(ReplicaAppendError::EpochGoesBack { offset: header.base_offset, epoch: header.partition_leader_epoch, latest });
            }
            if header.partition_leader_epoch >= 0 {
                latest = Some(header.partition_leader_epoch);
            }
            if header.base_offset != expected {
                return Err(if i == 0 {
                    ReplicaAppendError::OffsetMismatch { expected, found: header.base_offset }
                } else {
                    ReplicaAppendError::NotContiguous { expected, found: header.base_offset }
                });
            }
            expected = header.base_offset.checked_add(header.last_offset_delta as i64 + 1).ok_or(ReplicaAppendError::InvalidOffsets(header.base_offset))?;
        }
        let headers = batches.into_iter().map(|(header, _)| header).collect();
        Ok(self.write_batches(io, records.clone(), headers, now_wall_ms))
    }

    /// Write whole batches (`headers` describe `data`, dense from the log end offset) at the log
    /// end: roll if needed, account them in the active segment and the epoch cache, issue the
    /// `Append` and the index writes.
    fn write_batches(&mut self, io: &mut impl DiskIo, data: Bytes, headers: Vec<BatchHeader>, now_wall_ms: i64) -> AppendInfo {
        let first_offset = headers.first().expect("at least one batch").base_offset;
        let last_offset = headers.last().expect("at least one batch").last_offset();
        assert_eq!(first_offset, self.log_end_offset(), "log {}: batches do not start at the log end", self.dir);
        if self.active().should_roll(&self.config, data.len() as u64, last_offset, now_wall_ms) {
            self.roll(io);
        }
        let interval = self.config.index_interval_bytes;
        let active = self.segments.last_mut().expect("a ready log has an active segment");
        active.created_ms.get_or_insert(now_wall_ms);
        let (mut offset_writes, mut time_writes) = (IndexBuffer::default(), IndexBuffer::default());
        let (mut max_timestamp, mut offset_of_max_timestamp) = (-1, -1);
        let mut at = 0;
        for header in &headers {
            let bytes = &data[at..at + header.total_len()];
            let offset_of_max = account_batch(active, bytes, header, interval, &mut offset_writes, &mut time_writes);
            if header.max_timestamp > max_timestamp {
                (max_timestamp, offset_of_max_timestamp) = (header.max_timestamp, offset_of_max);
            }
            at += header.total_len();
        }
        assert_eq!(at, data.len(), "log {}: batches do not cover the data", self.dir);
        assert_eq!(active.next_offset, last_offset + 1, "log {}: batches not dense", self.dir);
        let base_offset = active.base_offset;
        active.unsynced.log = true;
        let log_path = active.path(&self.dir, SegmentFile::Log);
        for header in &headers {
            self.epochs.assign(header.partition_leader_epoch, header.base_offset);
        }
        self.issue(io, DiskOp::Append { path: log_path, data }, Pending::Appended(last_offset + 1));
        self.write_index(io, base_offset, SegmentFile::OffsetIndex, offset_writes);
        self.write_index(io, base_offset, SegmentFile::TimeIndex, time_writes);
        AppendInfo { first_offset, last_offset, max_timestamp, offset_of_max_timestamp, headers }
    }

    /// Group commit: request durability of everything appended so far. With no fsync in flight,
    /// the files with unsynced writes are fsynced now; otherwise the request is coalesced into at
    /// most one more flush issued when the current one completes. When a flush covering offset X
    /// completes, [`LogEvent::Durable`] `{ offset: X }` is emitted and, if a `checkpoint` blob was
    /// given (the newest one wins when coalescing), the checkpoint file (recovery point X, log start
    /// offset, blob) is rewritten atomically. A log that is not ready ignores the request.
    pub fn flush(&mut self, io: &mut impl DiskIo, checkpoint: Option<Bytes>) {
        if !self.is_ready() {
            return;
        }
        // The blob describes the log as it is now: its recovery point must be exactly this offset,
        // or recovery would replay too little (state for batches in between would be missing).
        let checkpoint = checkpoint.map(|blob| (blob, self.log_end_offset()));
        if self.fsync_in_flight.is_some() || self.truncation_unrecorded() {
            let earlier = self.flush_requested.take().flatten();
            self.flush_requested = Some(checkpoint.or(earlier));
        } else {
            self.issue_fsync(io, checkpoint);
        }
    }

    /// The largest epoch in the leader epoch cache.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    /// The leader epoch cache, `(epoch, start offset)`, oldest first.
    pub fn epoch_entries(&self) -> &[(i32, i64)] {
        self.epochs.entries()
    }

    /// OffsetsForLeaderEpoch: `(epoch, end offset)` for `epoch` (see
    /// [`EpochCache::end_offset_for`]): the latest epoch ends at the log end offset; an older one
    /// where the next cached epoch starts, answered with the largest cached epoch `<=` it; an
    /// epoch above the latest, [`leader_epoch::UNDEFINED_EPOCH`] or an empty cache give `(-1, -1)`;
    /// an epoch below the first cached one gives `(epoch, start of the first)`, as Kafka does.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// Truncate the log so that it ends at `offset` (Kafka's `truncateTo`, a follower dropping a
    /// divergent suffix) and return the new log end offset:
    /// - `offset` at or above the log end offset: nothing happens (the log end is returned);
    /// - `offset` inside a batch: the log ends at that batch's base offset (whole batches only);
    ///   likewise inside a segment recovered from its index files without a scan (no batch
    ///   marks, see [`segment`]): the log ends at that segment's base offset;
    /// - a result below the log start offset empties the log at the log start offset
    ///   ([`PartitionLog::truncate_fully_and_start_at`]).
    ///
    /// Segments wholly above are deleted, the one holding the point is cut (log file, offset and
    /// time indexes) and sealed, and appends continue in a new segment at the new end, so data of
    /// the new history never shares a file with data of the old one past the cut (after a crash
    /// the cut holds, or the old data is back and new data not continuing it is dropped). A
    /// truncation to the
    /// first segment's base deletes it too: if no checkpoint recorded the log start offset yet,
    /// a crash before the truncation's checkpoint may then recover an empty log at an older start. The epoch cache drops the
    /// entries at or above the new end; the durable offset, the `Written` offsets, an fsync in
    /// flight and the reads in flight are clamped to it (reads answer only what lies below it,
    /// empty if nothing). A checkpoint blob describing a longer log is dropped (the next
    /// [`LogEvent::Recovered`] then carries an empty blob and replays the whole log, unless the
    /// caller flushes a new one). A checkpoint recording the truncation is written at once, and
    /// no fsync starts before it is in place: a truncation becomes durable with the first flush
    /// after it, and a crash before that may undo it (as in Kafka), leaving the old log whole.
    ///
    /// Panics if the log is not ready or `offset` is below the log start offset.
    pub fn truncate_to(&mut self, io: &mut impl DiskIo, offset: i64) -> i64 {
        assert!(self.is_ready(), "truncate of log {} in state {:?}", self.dir, self.state);
        assert!(offset >= self.log_start_offset, "truncate of log {} to {offset} below its start {}", self.dir, self.log_start_offset);
        if offset >= self.log_end_offset() {
            return self.log_end_offset();
        }
        let index = self.segments.partition_point(|s| s.base_offset <= offset) - 1;
        let segment = &self.segments[index];
        let (target, cut_before) = match segment.batch_at_or_below(offset) {
            Some((target, batch)) if batch > 0 => (target, Some(batch)),
            _ => (segment.base_offset, None),
        };
        if target < self.log_start_offset {
            let start = self.log_start_offset;
            self.truncate_fully_and_start_at(io, start);
            return start;
        }
        tracing::info!(dir = %self.dir, offset, target, "truncating log");
        self.truncations += 1;
        let keep = if cut_before.is_some() { index + 1 } else { index };
        let removed: Vec<Segment> = self.segments.drain(keep..).collect();
        // Highest first: a crash in between leaves a prefix of the log.
        for segment in removed.iter().rev() {
            for op in segment::delete_ops(&self.dir, segment.base_offset, segment.files_existing()) {
                self.issue(io, op, Pending::Write);
            }
        }
        match cut_before {
            Some(batch) => {
                let segment = self.segments.last_mut().expect("the cut segment");
                let (log_len, offset_index_len, time_index_len) = segment.truncate_before_batch(batch);
                segment.unsynced.log = true;
                let mut ops = vec![DiskOp::Truncate { path: segment.path(&self.dir, SegmentFile::Log), len: log_len }];
                if segment.index_files_exist.0 {
                    segment.unsynced.offset_index = true;
                    ops.push(DiskOp::Truncate { path: segment.path(&self.dir, SegmentFile::OffsetIndex), len: offset_index_len });
                }
                if segment.index_files_exist.1 {
                    segment.unsynced.time_index = true;
                    ops.push(DiskOp::Truncate { path: segment.path(&self.dir, SegmentFile::TimeIndex), len: time_index_len });
                }
                for op in ops {
                    self.issue(io, op, Pending::Write);
                }
                self.roll(io);
            }
            None => self.open_segment(io, target),
        }
        self.clamp_to(target);
        self.check_invariants();
        self.write_checkpoint(io, Vec::new());
        target
    }

    /// Delete the whole log and start it empty at `offset`, which becomes its log start and end
    /// offset (Kafka's `truncateFullyAndStartAt`: a follower whose log ends below the leader's
    /// log start offset). The epoch cache is cleared and the checkpoint blob dropped; as with
    /// [`PartitionLog::truncate_to`], a checkpoint recording the new start is written at once and
    /// no fsync starts before it is in place. A crash before that may bring back the old log's
    /// start offset, with the old segments deleted (an empty or shorter old log).
    pub fn truncate_fully_and_start_at(&mut self, io: &mut impl DiskIo, offset: i64) {
        assert!(self.is_ready(), "truncate of log {} in state {:?}", self.dir, self.state);
        assert!(offset >= 0, "log {} restarted at {offset}", self.dir);
        tracing::info!(dir = %self.dir, offset, "truncating log fully");
        self.truncations += 1;
        // Segments waiting for a checkpoint before their deletion go now: the new segment may
        // have one's name, and nothing below the new start must survive anyway.
        let mut removed: Vec<Segment> = std::mem::take(&mut self.doomed);
        removed.append(&mut self.segments);
        for segment in removed.iter().rev() {
            for op in segment::delete_ops(&self.dir, segment.base_offset, segment.files_existing()) {
                self.issue(io, op, Pending::Write);
            }
        }
        self.open_segment(io, offset);
        self.log_start_offset = offset;
        self.epochs.clear();
        self.clamp_to(offset);
        if let Some(in_flight) = &mut self.fsync_in_flight {
            in_flight.checkpoint = None;
        }
        if let Some(requested) = &mut self.flush_requested {
            *requested = None;
        }
        self.checkpoint_blob = Bytes::new();
        self.checkpoint_offset = offset;
        self.blob_dropped = true;
        self.check_invariants();
        self.write_checkpoint(io, Vec::new());
    }

    /// A new empty active segment at `base_offset` (its file created now).
    fn open_segment(&mut self, io: &mut impl DiskIo, base_offset: i64) {
        let mut segment = Segment::new(base_offset, &self.config);
        segment.unsynced.log = true;
        let path = segment.path(&self.dir, SegmentFile::Log);
        self.segments.push(segment);
        self.issue(io, DiskOp::Append { path, data: Bytes::new() }, Pending::Write);
    }

    /// After a truncation to `end`: clamp every offset that may lie beyond it.
    fn clamp_to(&mut self, end: i64) {
        self.epochs.truncate_from_end(end);
        self.cleaned_to = self.cleaned_to.min(end);
        self.durable_offset = self.durable_offset.min(end);
        if let Some(in_flight) = &mut self.fsync_in_flight {
            in_flight.covers = in_flight.covers.min(end);
            if in_flight.checkpoint.as_ref().is_some_and(|(_, at)| *at > end) {
                in_flight.checkpoint = None;
            }
        }
        if let Some(Some((_, at))) = &self.flush_requested {
            if *at > end {
                self.flush_requested = Some(None);
            }
        }
        if self.checkpoint_offset > end {
            self.checkpoint_blob = Bytes::new();
            self.checkpoint_offset = self.log_start_offset.min(end);
        }
        for pending in self.pending.values_mut() {
            match pending {
                Pending::Appended(offset) => *offset = (*offset).min(end),
                Pending::Read(job) => job.upper_bound = job.upper_bound.min(end),
                Pending::Timestamp(job) => job.stale = true,
                _ => {}
            }
        }
    }

    /// Whether a truncation is not yet recorded by a checkpoint in place (fsyncs wait).
    fn truncation_unrecorded(&self) -> bool {
        self.checkpointed_truncations < self.truncations
    }

    /// Read whole batches starting with the batch containing `offset`, up to `max_bytes` (at least
    /// one whole batch even if larger, KIP-74), never including a batch whose base offset is
    /// `>= upper_bound` (exclusive, the high watermark), from one segment (from the next ones too
    /// while what was read holds only empty batches, as a cleaned log may). `Empty` if `offset`
    /// is at or past the upper bound (or the log is not ready); `OutOfRange` if it is below the
    /// log start offset or above the log end offset; `Pending`: a [`LogEvent::ReadDone`] follows.
    /// The sparse offset index gives the start position; a second `Read` is issued when the
    /// first did not hold the whole first batch. What is returned is checked first: every header
    /// continues densely from the offset the index names (the base offset is outside Kafka's CRC)
    /// and every batch passes its CRC-32C; a damaged read (a latent sector error) is read again,
    /// and after three tries [`LogEvent::ReadFailed`] follows instead.
    pub fn read(&mut self, io: &mut impl DiskIo, read_id: u64, offset: i64, max_bytes: u64, upper_bound: i64) -> ReadStart {
        if !self.is_ready() {
            return ReadStart::Empty;
        }
        if offset < self.log_start_offset || offset > self.log_end_offset() {
            return ReadStart::OutOfRange;
        }
        let upper_bound = upper_bound.min(self.log_end_offset());
        if offset >= upper_bound {
            return ReadStart::Empty;
        }
        let Some(segment) = self.segment_containing(offset) else {
            return ReadStart::OutOfRange;
        };
        let (expected, position) = segment.entry_for(offset);
        let len = (self.config.index_interval_bytes + max_bytes).max(BATCH_HEADER_LEN as u64).min(segment.size_bytes - position);
        let job = ReadJob {
            read_id,
            segment_base: segment.base_offset,
            offset,
            expected,
            max_bytes,
            upper_bound,
            position,
            len,
            attempts: 0,
            restart: false,
            continued: false,
            unindexed: false,
        };
        self.issue_read(io, job.segment_base, position, len, Pending::Read(job));
        ReadStart::Pending
    }

    /// ListOffsets by timestamp: `(offset, timestamp)` of the first record with timestamp
    /// `>= timestamp` and offset `>= log_start_offset`. Returns `Some(answer)` when answered at
    /// once (no such record; the special timestamps [`EARLIEST_TIMESTAMP`], [`LATEST_TIMESTAMP`]
    /// — the log end, which the broker must replace with its high watermark — and
    /// [`MAX_TIMESTAMP`]; a log that is not ready answers `Some(None)`), `None` when pending: a
    /// [`LogEvent::TimestampFound`] with `query_id` follows. The search starts at the segment whose
    /// max timestamp reaches the target, at the position the time and offset indexes give, and
    /// reads forward in chunks. Records are found exactly in uncompressed CreateTime batches, at
    /// batch granularity otherwise. What it walks is checked as a fetch checks it; a damaged
    /// read is read again, then walked from the segment's start, and the search fails (an `Err`
    /// answer) only if that is damaged too. The broker answers only offsets below the high
    /// watermark.
    pub fn offset_for_timestamp(&mut self, io: &mut impl DiskIo, query_id: u64, timestamp: i64) -> Option<Option<(i64, i64)>> {
        if !self.is_ready() {
            return Some(None);
        }
        match timestamp {
            EARLIEST_TIMESTAMP => return Some(Some((self.log_start_offset, -1))),
            LATEST_TIMESTAMP => return Some(Some((self.log_end_offset(), -1))),
            MAX_TIMESTAMP => {
                let (max_timestamp, offset) = self.max_timestamp();
                return Some((offset >= self.log_start_offset).then_some((offset, max_timestamp)));
            }
            t if t < 0 => return Some(None),
            _ => {}
        }
        let Some(index) = self.next_segment_reaching(timestamp, 0) else {
            return Some(None);
        };
        self.start_timestamp_search(io, query_id, timestamp, index);
        None
    }

    /// DeleteRecords: advance the log start offset to `offset` (at most the log end offset, else
    /// `Err`), delete the segments entirely below it (rolling first if that includes the active
    /// one), and persist the new log start offset by rewriting the checkpoint with the last blob;
    /// the segment files are deleted once that checkpoint is in place.
    /// Returns the log start offset (unchanged if `offset` is not above it).
    #[allow(clippy::result_unit_err)]
    pub fn delete_records(&mut self, io: &mut impl DiskIo, offset: i64) -> Result<i64, ()> {
        if !self.is_ready() || offset > self.log_end_offset() {
            return Err(());
        }
        if offset <= self.log_start_offset {
            return Ok(self.log_start_offset);
        }
        self.log_start_offset = offset;
        let below = retention::segments_below(&self.segments, offset);
        if below == self.segments.len() {
            self.roll(io);
        }
        self.delete_oldest(io, below);
        Ok(self.log_start_offset)
    }

    /// Retention: roll the active segment if `segment.ms` elapsed, then delete the oldest
    /// non-active segments expired by `retention.ms` or beyond `retention.bytes` and wholly below
    /// `high_watermark`, advancing the log start offset (see [`retention`]). The new log start
    /// offset is checkpointed before the files are deleted.
    pub fn apply_retention(&mut self, io: &mut impl DiskIo, now_wall_ms: i64, high_watermark: i64) {
        if !self.is_ready() {
            return;
        }
        let active = self.active();
        if !active.is_empty() && active.created_ms.is_some_and(|created| now_wall_ms.saturating_sub(created) > self.config.segment_ms) {
            self.roll(io);
        }
        let expired = retention::expired_segments(&self.segments, &self.config, now_wall_ms, high_watermark);
        if expired > 0 {
            self.delete_oldest(io, expired);
        }
    }

    /// Delete the whole log directory (topic deletion). The log is then unusable; completions of
    /// operations issued before are still answered (reads empty).
    pub fn delete_all(&mut self, io: &mut impl DiskIo) {
        let path = self.dir.clone();
        self.issue(io, DiskOp::DeleteDir { path }, Pending::Write);
        self.segments.clear();
        self.doomed.clear();
        self.fsync_in_flight = None;
        self.flush_requested = None;
        self.cleaning = None;
        self.state = State::Deleted;
    }

    /// A disk completion: pass every completion this log [`owns`](PartitionLog::owns).
    pub fn on_io(&mut self, io: &mut impl DiskIo, done: IoDone) -> Vec<LogEvent> {
        let mut events = Vec::new();
        if let State::Recovering(recovery) = &mut self.state {
            if recovery.owns(done.token) {
                match recovery.on_io(io, done) {
                    Progress::Pending => {}
                    Progress::Done(recovered) => {
                        self.segments = recovered.segments;
                        self.log_start_offset = recovered.log_start_offset;
                        self.durable_log_start_offset = recovered.checkpointed_log_start_offset;
                        self.durable_offset = recovered.recovery_point;
                        self.checkpoint_blob = recovered.checkpoint.clone();
                        self.checkpoint_offset = recovered.recovery_point;
                        self.epochs = recovered.epochs;
                        self.state = State::Ready;
                        self.check_invariants();
                        if recovered.stale_checkpoint {
                            // Like a truncation: no fsync before the stale checkpoint is replaced.
                            self.truncations += 1;
                            self.write_checkpoint(io, Vec::new());
                        }
                        events.push(LogEvent::Recovered { checkpoint: recovered.checkpoint, replay: recovered.replay });
                    }
                    Progress::Failed(error) => self.fail(error, &mut events),
                }
                return events;
            }
        }
        let Some(pending) = self.pending.remove(&done.token) else {
            return events;
        };
        match (pending, done.result) {
            (Pending::Read(job), Ok(IoOutput::Read(data))) => self.on_read(io, job, data, &mut events),
            (Pending::Timestamp(job), Ok(IoOutput::Read(data))) => self.on_timestamp_read(io, job, data, &mut events),
            (Pending::Read(job), result) => {
                self.read_prefixes.remove(&job.read_id);
                events.push(LogEvent::ReadDone { read_id: job.read_id, records: Bytes::new() });
                if self.segment(job.segment_base).is_some() {
                    self.fail(format!("read of {} segment {}: {result:?}", self.dir, job.segment_base), &mut events);
                }
            }
            (Pending::Timestamp(job), result) => {
                events.push(LogEvent::TimestampFound { query_id: job.query_id, found: Err(format!("read failed: {result:?}")) });
                if self.segment(job.segment_base).is_some() {
                    self.fail(format!("read of {} segment {}: {result:?}", self.dir, job.segment_base), &mut events);
                }
            }
            (Pending::Clean(op), result) => self.on_clean_io(io, op, result),
            (Pending::Fsync, Ok(_)) => self.on_fsync_done(io, &mut events),
            (Pending::Write, Ok(_)) => {}
            (Pending::Appended(offset), Ok(_)) => events.push(LogEvent::Written { offset }),
            (Pending::CheckpointSynced(deletions), Ok(_)) => {
                if !matches!(self.state, State::Deleted) {
                    let path = format!("{}/{CHECKPOINT_FILE}", self.dir);
                    let from = format!("{path}{TMP_SUFFIX}");
                    self.issue(io, DiskOp::Rename { from, to: path }, Pending::Checkpointed(deletions));
                }
            }
            (Pending::Checkpointed(deletions), Ok(_)) => {
                self.checkpoint_in_flight = false;
                self.checkpointed_truncations = self.checkpointed_truncations.max(self.checkpoint_in_flight_covers);
                if self.checkpoint_in_flight_log_start > self.durable_log_start_offset {
                    self.durable_log_start_offset = self.checkpoint_in_flight_log_start;
                    events.push(LogEvent::LogStartDurable { offset: self.durable_log_start_offset });
                }
                if !matches!(self.state, State::Deleted) {
                    for base_offset in deletions {
                        let Some(at) = self.doomed.iter().position(|s| s.base_offset == base_offset) else { continue };
                        let segment = self.doomed.remove(at);
                        for op in segment::delete_ops(&self.dir, segment.base_offset, segment.files_existing()) {
                            self.issue(io, op, Pending::Write);
                        }
                    }
                    if let Some(then) = self.checkpoint_queued.take() {
                        self.write_checkpoint(io, then);
                    }
                    // A flush held back until the truncations were recorded.
                    if self.is_ready() && self.fsync_in_flight.is_none() && !self.truncation_unrecorded() {
                        if let Some(checkpoint) = self.flush_requested.take() {
                            self.issue_fsync(io, checkpoint);
                        }
                    }
                }
            }
            (Pending::Fsync | Pending::Write | Pending::Appended(_) | Pending::CheckpointSynced(_) | Pending::Checkpointed(_), Err(error)) => {
                self.fail(format!("write to {} failed: {error}", self.dir), &mut events)
            }
        }
        events
    }

    // ---- internals ----

    fn active(&self) -> &Segment {
        self.segments.last().expect("a ready log has an active segment")
    }

    fn segment(&self, base_offset: i64) -> Option<&Segment> {
        self.segments.binary_search_by_key(&base_offset, |s| s.base_offset).ok().map(|i| &self.segments[i])
    }

    fn segment_mut(&mut self, base_offset: i64) -> Option<&mut Segment> {
        self.segments.binary_search_by_key(&base_offset, |s| s.base_offset).ok().map(|i| &mut self.segments[i])
    }

    fn segment_containing(&self, offset: i64) -> Option<&Segment> {
        let after = self.segments.partition_point(|s| s.base_offset <= offset);
        self.segments.get(after.checked_sub(1)?).filter(|s| offset < s.next_offset)
    }

    fn issue(&mut self, io: &mut impl DiskIo, op: DiskOp, pending: Pending) {
        let token = io.disk(op);
        self.pending.insert(token, pending);
    }

    fn issue_read(&mut self, io: &mut impl DiskIo, segment_base: i64, position: u64, len: u64, pending: Pending) {
        let path = format!("{}/{}", self.dir, segment::file_name(segment_base, SegmentFile::Log));
        self.issue(io, DiskOp::Read { path, position, len }, pending);
    }

    fn fail(&mut self, error: String, events: &mut Vec<LogEvent>) {
        if matches!(self.state, State::Failed | State::Deleted) {
            return;
        }
        tracing::error!(dir = %self.dir, %error, "partition log offline");
        self.state = State::Failed;
        self.cleaning = None;
        self.fsync_in_flight = None;
        self.flush_requested = None;
        events.push(LogEvent::Failed { error });
    }

    /// Close the active segment (final time index entry) and open an empty one at the log end,
    /// creating its file now so every segment's file exists.
    fn roll(&mut self, io: &mut impl DiskIo) {
        let active = self.segments.last_mut().expect("a ready log has an active segment");
        let base_offset = active.base_offset;
        let next_offset = active.next_offset;
        let mut seal = IndexBuffer::default();
        seal.add(active.seal());
        self.write_index(io, base_offset, SegmentFile::TimeIndex, seal);
        let mut segment = Segment::new(next_offset, &self.config);
        segment.unsynced.log = true;
        let path = segment.path(&self.dir, SegmentFile::Log);
        self.segments.push(segment);
        self.issue(io, DiskOp::Append { path, data: Bytes::new() }, Pending::Write);
    }

    fn write_index(&mut self, io: &mut impl DiskIo, base_offset: i64, kind: SegmentFile, buffer: IndexBuffer) {
        let Some(position) = buffer.position else { return };
        let segment = self.segments.iter_mut().rev().find(|s| s.base_offset == base_offset).expect("index write for a live segment");
        match kind {
            SegmentFile::OffsetIndex => (segment.unsynced.offset_index, segment.index_files_exist.0) = (true, true),
            _ => (segment.unsynced.time_index, segment.index_files_exist.1) = (true, true),
        }
        let path = segment.path(&self.dir, kind);
        self.issue(io, DiskOp::IndexWrite { path, position, data: Bytes::from(buffer.data) }, Pending::Write);
    }

    /// Drop the `count` oldest segments, advance the log start offset past them, and persist it
    /// with a checkpoint whose completion starts the files' deletion.
    fn delete_oldest(&mut self, io: &mut impl DiskIo, count: usize) {
        assert!(count < self.segments.len(), "deleting {count} of {} segments of {}", self.segments.len(), self.dir);
        let mut deletions = Vec::new();
        for segment in self.segments.drain(..count) {
            tracing::info!(dir = %self.dir, base_offset = segment.base_offset, "deleting segment");
            deletions.push(segment.base_offset);
            self.doomed.push(segment);
        }
        self.log_start_offset = self.log_start_offset.max(self.segments[0].base_offset);
        self.check_invariants();
        self.write_checkpoint(io, deletions);
    }

    fn issue_fsync(&mut self, io: &mut impl DiskIo, checkpoint: Option<(Bytes, i64)>) {
        let covers = self.log_end_offset();
        let mut paths = Vec::new();
        // The active segment's index files are fsynced only with a checkpoint: recovery rebuilds
        // the indexes of the segment holding the recovery point (and of every later one) from
        // the log, and the recovery point moves only when a checkpoint is written. Every other
        // segment's indexes are synced at the first flush after they change (a roll seals them).
        let active = self.segments.len() - 1;
        let with_indexes = checkpoint.is_some();
        for (i, segment) in self.segments.iter_mut().chain(self.doomed.iter_mut()).enumerate() {
            let unsynced = if i == active && !with_indexes {
                Unsynced { log: std::mem::take(&mut segment.unsynced.log), offset_index: false, time_index: false }
            } else {
                std::mem::take(&mut segment.unsynced)
            };
            for (kind, dirty) in SegmentFile::ALL.into_iter().zip([unsynced.log, unsynced.offset_index, unsynced.time_index]) {
                if dirty {
                    paths.push(segment.path(&self.dir, kind));
                }
            }
        }
        if paths.is_empty() {
            // Nothing unsynced: still complete through the disk so Durable comes out of on_io.
            paths.push(self.active().path(&self.dir, SegmentFile::Log));
        }
        self.fsync_in_flight = Some(FsyncInFlight { covers, remaining: paths.len(), checkpoint });
        for path in paths {
            self.issue(io, DiskOp::Fsync { path }, Pending::Fsync);
        }
    }

    fn on_fsync_done(&mut self, io: &mut impl DiskIo, events: &mut Vec<LogEvent>) {
        let Some(in_flight) = self.fsync_in_flight.as_mut() else {
            return; // the log failed or was deleted meanwhile
        };
        in_flight.remaining -= 1;
        if in_flight.remaining > 0 {
            return;
        }
        let FsyncInFlight { covers, checkpoint, .. } = self.fsync_in_flight.take().expect("checked above");
        assert!(covers >= self.durable_offset, "log {} durable offset going back from {} to {covers}", self.dir, self.durable_offset);
        assert!(covers <= self.log_end_offset(), "log {} durable offset {covers} past log end {}", self.dir, self.log_end_offset());
        self.durable_offset = covers;
        events.push(LogEvent::Durable { offset: covers });
        if let Some((blob, at)) = checkpoint {
            assert!(at <= covers, "log {} checkpoint at {at} beyond the fsynced offset {covers}", self.dir);
            self.checkpoint_blob = blob;
            self.checkpoint_offset = at;
            self.blob_dropped = false;
            self.write_checkpoint(io, Vec::new());
        }
        if !self.truncation_unrecorded() {
            if let Some(checkpoint) = self.flush_requested.take() {
                self.issue_fsync(io, checkpoint);
            }
        }
    }

    /// Rewrite the checkpoint atomically: write a tmp file, fsync it, once the fsync completed
    /// rename it over the real one, then issue `then` (segment deletions). One write at a time:
    /// a request during a write is queued and written, with the state of that time, after it.
    fn write_checkpoint(&mut self, io: &mut impl DiskIo, then: Vec<i64>) {
        if self.checkpoint_in_flight {
            self.checkpoint_queued.get_or_insert_with(Vec::new).extend(then);
            return;
        }
        self.checkpoint_in_flight = true;
        self.checkpoint_in_flight_covers = self.truncations;
        self.checkpoint_in_flight_log_start = self.log_start_offset;
        // The recovery point is where the blob was taken (never above the durable offset): recovery
        // replays every batch after it.
        let recovery_point = self.checkpoint_offset.min(self.durable_offset);
        let recovery_point_crc = match self.segments.partition_point(|s| s.base_offset < recovery_point).checked_sub(1) {
            Some(i) if recovery_point > self.log_start_offset => self.segments[i].crc_of_batch_ending_at(recovery_point).unwrap_or(0),
            _ => 0,
        };
        let checkpoint = Checkpoint {
            recovery_point,
            recovery_point_crc,
            log_start_offset: self.log_start_offset,
            blob: self.checkpoint_blob.clone(),
            // Only the epochs of durable batches: recovery trusts the checkpoint's entries below
            // the segments it scans, and finds the others in the batches.
            epochs: Some(self.epochs.entries().iter().copied().filter(|&(_, start)| start < self.durable_offset).collect()),
        };
        let path = format!("{}/{CHECKPOINT_FILE}", self.dir);
        let tmp = format!("{path}{TMP_SUFFIX}");
        self.issue(io, DiskOp::Delete { path: tmp.clone() }, Pending::Write);
        self.issue(io, DiskOp::Append { path: tmp.clone(), data: checkpoint.encode() }, Pending::Write);
        self.issue(io, DiskOp::Fsync { path: tmp }, Pending::CheckpointSynced(then));
    }

    fn on_read(&mut self, io: &mut impl DiskIo, job: ReadJob, data: Bytes, events: &mut Vec<LogEvent>) {
        if job.restart {
            // The segment was cleaned meanwhile: these bytes are from the old file.
            if job.continued {
                // From the start of the (new) segment, still within the remaining budget.
                return match self.segment(job.segment_base) {
                    Some(segment) => self.continue_read(io, ReadJob { restart: false, ..job }, segment.base_offset, segment.size_bytes),
                    None => self.read_done(io, ReadJob { restart: false, ..job }, Bytes::new(), events),
                };
            }
            if self.read(io, job.read_id, job.offset, job.max_bytes, job.upper_bound) != ReadStart::Pending {
                self.read_done(io, job, Bytes::new(), events);
            }
            return;
        }
        let walk = match self.segment(job.segment_base) {
            // Truncated below the offset meanwhile: nothing of what was read is in the log.
            _ if job.offset >= job.upper_bound => Walk::Done(Bytes::new()),
            Some(segment) => walk_read(&job, segment.size_bytes, &data, &self.epochs),
            None => Walk::Done(Bytes::new()), // deleted by retention or DeleteRecords meanwhile
        };
        match walk {
            Walk::Done(records) => self.read_done(io, job, records, events),
            Walk::More { position, len, expected } => {
                let job = ReadJob { position, len, expected, ..job };
                self.issue_read(io, job.segment_base, position, len, Pending::Read(job));
            }
            Walk::Damaged(why) => match self.after_damage(job.attempts, job.unindexed, job.segment_base) {
                AfterDamage::Again => {
                    tracing::warn!(dir = %self.dir, offset = job.offset, attempt = job.attempts + 1, "damaged read, reading again: {why}");
                    let job = ReadJob { attempts: job.attempts + 1, ..job };
                    self.issue_read(io, job.segment_base, job.position, job.len, Pending::Read(job));
                }
                // A sealed segment's index, which nothing appends to any more, is forgotten.
                AfterDamage::FromStart => {
                    tracing::warn!(dir = %self.dir, offset = job.offset, segment = job.segment_base, "damaged read from the offset index's position, reading the segment from its start: {why}");
                    let active = self.segments.last().map(|s| s.base_offset) == Some(job.segment_base);
                    let segment = self.segment_mut(job.segment_base).expect("after_damage checked it");
                    if !active {
                        segment.offset_index.truncate_from(0);
                    }
                    let len = job.len.max(BATCH_HEADER_LEN as u64).min(segment.size_bytes);
                    let job = ReadJob { position: 0, len, expected: job.segment_base, attempts: 0, unindexed: true, ..job };
                    self.issue_read(io, job.segment_base, 0, len, Pending::Read(job));
                }
                AfterDamage::GiveUp => {
                    self.read_prefixes.remove(&job.read_id);
                    tracing::error!(dir = %self.dir, offset = job.offset, "read damaged {READ_ATTEMPTS} times: {why}");
                    events.push(LogEvent::ReadFailed { read_id: job.read_id, error: why });
                }
            },
        }
    }

    /// What a read (a fetch's or a timestamp search's) that came back damaged does next: read the
    /// same bytes again (a latent sector error reads differently the next time); once that is
    /// damaged every time from where the indexes pointed, walk the segment from its start (the
    /// in-memory index may be what is wrong: a latent sector error when recovery read the file,
    /// which validation cannot tell from a good entry); damaged from there too, give up.
    fn after_damage(&self, attempts: u32, unindexed: bool, segment_base: i64) -> AfterDamage {
        if attempts + 1 < READ_ATTEMPTS {
            AfterDamage::Again
        } else if !unindexed && self.segment(segment_base).is_some() {
            AfterDamage::FromStart
        } else {
            AfterDamage::GiveUp
        }
    }

    /// A read job finished with `records` (whole batches from its segment). A cleaned log may
    /// hold segments of nothing but emptied batches; an answer of only those shows a reader no
    /// record (librdkafka then takes it for a batch cut short and grows its fetch size until it
    /// gives up). So while the answer so far holds no record and ends where the segment does,
    /// the read goes on into the next segment, within `max_bytes` and below the upper bound.
    fn read_done(&mut self, io: &mut impl DiskIo, job: ReadJob, records: Bytes, events: &mut Vec<LogEvent>) {
        let out = match self.read_prefixes.remove(&job.read_id) {
            None => records.clone(),
            Some(prefix) => {
                // A truncation since may have cut into what the earlier segments gave.
                let kept = batch::iter_headers(&prefix).take_while(|(h, _)| h.base_offset < job.upper_bound).last().map_or(0, |(_, r)| r.end);
                if kept < prefix.len() || records.is_empty() {
                    prefix.slice(..kept)
                } else {
                    let mut joined = BytesMut::with_capacity(prefix.len() + records.len());
                    joined.extend_from_slice(&prefix);
                    joined.extend_from_slice(&records);
                    joined.freeze()
                }
            }
        };
        let end = batch::end_of_batches(&out);
        let no_record = !out.is_empty() && batch::iter_headers(&out).all(|(h, _)| h.records_count == 0);
        let budget = job.max_bytes.saturating_sub(records.len() as u64);
        let next = end.and_then(|end| self.segment(end)).filter(|s| s.base_offset < job.upper_bound && !s.is_empty());
        match next {
            Some(segment) if no_record && budget >= BATCH_HEADER_LEN as u64 && self.segment(job.segment_base).is_some_and(|s| Some(s.next_offset) == end) => {
                let (base, size) = (segment.base_offset, segment.size_bytes);
                self.read_prefixes.insert(job.read_id, out);
                self.continue_read(io, ReadJob { max_bytes: budget, ..job }, base, size);
            }
            _ => events.push(LogEvent::ReadDone { read_id: job.read_id, records: out }),
        }
    }

    /// Go on with `job` (its id, budget and upper bound) from the start of the segment at `base`
    /// of `size` bytes, taking only batches that fit the budget.
    fn continue_read(&mut self, io: &mut impl DiskIo, job: ReadJob, base: i64, size: u64) {
        let len = (self.config.index_interval_bytes + job.max_bytes).max(BATCH_HEADER_LEN as u64).min(size);
        let job = ReadJob { segment_base: base, offset: base, expected: base, position: 0, len, attempts: 0, continued: true, unindexed: true, ..job };
        self.issue_read(io, base, 0, len, Pending::Read(job));
    }

    /// The first segment at or after `from` holding offsets at or above the log start offset and
    /// a max timestamp reaching `target`.
    fn next_segment_reaching(&self, target: i64, from: usize) -> Option<usize> {
        (from..self.segments.len()).find(|&i| {
            let s = &self.segments[i];
            s.next_offset > self.log_start_offset && s.max_timestamp >= target
        })
    }

    fn start_timestamp_search(&mut self, io: &mut impl DiskIo, query_id: u64, target: i64, index: usize) {
        let segment = &self.segments[index];
        let indexed = segment.time_index.lookup_before(target).map_or(segment.base_offset, |e| segment.base_offset + e.relative_offset as i64);
        let (expected, position) = segment.entry_for(indexed.max(self.log_start_offset));
        let len = SCAN_CHUNK_BYTES.min(segment.size_bytes - position);
        let job = TimestampJob { query_id, target, segment_base: segment.base_offset, position, len, expected, attempts: 0, unindexed: false, stale: false };
        self.issue_read(io, job.segment_base, position, len, Pending::Timestamp(job));
    }

    /// A timestamp search's read came back damaged: as a fetch's ([`PartitionLog::after_damage`]),
    /// failing the search if every read is damaged.
    fn timestamp_read_damaged(&mut self, io: &mut impl DiskIo, job: TimestampJob, why: String, events: &mut Vec<LogEvent>) {
        match self.after_damage(job.attempts, job.unindexed, job.segment_base) {
            AfterDamage::Again => {
                tracing::warn!(dir = %self.dir, segment = job.segment_base, position = job.position, attempt = job.attempts + 1, "damaged timestamp search read, reading again: {why}");
                let job = TimestampJob { attempts: job.attempts + 1, ..job };
                self.issue_read(io, job.segment_base, job.position, job.len, Pending::Timestamp(job));
            }
            AfterDamage::FromStart => {
                tracing::warn!(dir = %self.dir, segment = job.segment_base, "damaged timestamp search from the indexes' position, searching the segment from its start: {why}");
                let size = self.segment(job.segment_base).expect("after_damage checked it").size_bytes;
                let len = SCAN_CHUNK_BYTES.min(size);
                let job = TimestampJob { position: 0, len, expected: job.segment_base, attempts: 0, unindexed: true, ..job };
                self.issue_read(io, job.segment_base, 0, len, Pending::Timestamp(job));
            }
            AfterDamage::GiveUp => {
                tracing::error!(dir = %self.dir, segment = job.segment_base, "timestamp search read damaged {READ_ATTEMPTS} times: {why}");
                events.push(LogEvent::TimestampFound { query_id: job.query_id, found: Err(why) });
            }
        }
    }

    fn on_timestamp_read(&mut self, io: &mut impl DiskIo, job: TimestampJob, data: Bytes, events: &mut Vec<LogEvent>) {
        if job.stale {
            // The log was truncated meanwhile: search the log as it is now.
            return match self.next_segment_reaching(job.target, 0) {
                Some(first) => self.start_timestamp_search(io, job.query_id, job.target, first),
                None => events.push(LogEvent::TimestampFound { query_id: job.query_id, found: Ok(None) }),
            };
        }
        let Some(index) = self.segments.iter().position(|s| s.base_offset == job.segment_base) else {
            // Deleted meanwhile (retention, DeleteRecords): search again from the new log start.
            return match self.next_segment_reaching(job.target, 0) {
                Some(first) => self.start_timestamp_search(io, job.query_id, job.target, first),
                None => events.push(LogEvent::TimestampFound { query_id: job.query_id, found: Ok(None) }),
            };
        };
        let (segment_size, segment_end) = (self.segments[index].size_bytes, self.segments[index].next_offset);
        let mut at = 0usize;
        let mut expected = job.expected;
        loop {
            let here = job.position + at as u64;
            let rest = &data[at..];
            if here >= segment_size {
                if expected != segment_end {
                    let why = format!("segment {} walked to its end at offset {expected}, not {segment_end}", job.segment_base);
                    return self.timestamp_read_damaged(io, job, why, events);
                }
                // Not in this segment (the records reaching the target lie below the log start).
                return match self.next_segment_reaching(job.target, index + 1) {
                    Some(next) => self.start_timestamp_search(io, job.query_id, job.target, next),
                    None => events.push(LogEvent::TimestampFound { query_id: job.query_id, found: Ok(None) }),
                };
            }
            let Some(header) = sane_header(rest, here, segment_size) else {
                if rest.len() >= BATCH_HEADER_LEN || here + BATCH_HEADER_LEN as u64 > segment_size || (data.len() as u64) < job.len {
                    let why = format!("corrupt batch header at position {here} of segment {}", job.segment_base);
                    return self.timestamp_read_damaged(io, job, why, events);
                }
                let len = SCAN_CHUNK_BYTES.min(segment_size - here);
                let job = TimestampJob { position: here, len, expected, ..job };
                return self.issue_read(io, job.segment_base, here, len, Pending::Timestamp(job));
            };
            if header.base_offset != expected {
                let why = format!("batch at position {here} claims offset {} where {expected} was expected", header.base_offset);
                return self.timestamp_read_damaged(io, job, why, events);
            }
            let total = header.total_len();
            // Every batch walked is read whole and checked: the max timestamp that decides
            // whether the search stops here is covered by the CRC only (a damaged read that
            // lowered it made the search skip the answer, sim seed 809788).
            if rest.len() < total {
                if at == 0 && (data.len() as u64) < job.len {
                    let why = format!("short read at position {here} of segment {}", job.segment_base);
                    return self.timestamp_read_damaged(io, job, why, events);
                }
                let len = (total as u64).max(SCAN_CHUNK_BYTES).min(segment_size - here);
                let job = TimestampJob { position: here, len, expected, ..job };
                return self.issue_read(io, job.segment_base, here, len, Pending::Timestamp(job));
            }
            if let Err(e) = batch::check_one(&rest[..total]) {
                let why = format!("batch at offset {}: {e}", header.base_offset);
                return self.timestamp_read_damaged(io, job, why, events);
            }
            if header.next_offset() > self.log_start_offset && header.max_timestamp >= job.target {
                let found = time_index::first_record_at_or_after(&rest[..total], &header, job.target, self.log_start_offset);
                if found.is_some() {
                    return events.push(LogEvent::TimestampFound { query_id: job.query_id, found: Ok(found) });
                }
            }
            expected = header.next_offset();
            at += total;
        }
    }

    /// Assert the structural invariants (cheap: one pass over the segment list).
    fn check_invariants(&self) {
        let first = self.segments.first().expect("a recovered log has a segment");
        assert!(
            first.base_offset <= self.log_start_offset && self.log_start_offset <= self.log_end_offset(),
            "log {}: start {} outside [{}, {}]",
            self.dir,
            self.log_start_offset,
            first.base_offset,
            self.log_end_offset()
        );
        for pair in self.segments.windows(2) {
            assert_eq!(pair[0].next_offset, pair[1].base_offset, "log {}: segments not contiguous", self.dir);
        }
        assert!(self.durable_offset <= self.log_end_offset(), "log {}: durable {} > end {}", self.dir, self.durable_offset, self.log_end_offset());
        if let Some(&(epoch, start)) = self.epochs.entries().last() {
            assert!(start < self.log_end_offset(), "log {}: epoch {epoch} starts at {start}, at or past the end {}", self.dir, self.log_end_offset());
        }
    }
}

/// Index entries produced by one append, merged into one contiguous write per index file.
#[derive(Default)]
struct IndexBuffer {
    position: Option<u64>,
    data: Vec<u8>,
}

impl IndexBuffer {
    fn add<const N: usize>(&mut self, write: Option<(u64, [u8; N])>) {
        if let Some((position, bytes)) = write {
            let start = *self.position.get_or_insert(position);
            assert_eq!(start + self.data.len() as u64, position, "index entries not contiguous");
            self.data.extend_from_slice(&bytes);
        }
    }
}

/// Account for one whole batch (`bytes`) written at the end of `segment`, collecting its index
/// entries; returns the offset of the record carrying the batch's max timestamp.
fn account_batch(segment: &mut Segment, bytes: &[u8], header: &BatchHeader, interval: u64, offsets: &mut IndexBuffer, times: &mut IndexBuffer) -> i64 {
    let offset_of_max = time_index::offset_of_max_timestamp(bytes, header);
    let writes = segment.on_batch(header, offset_of_max, interval);
    offsets.add(writes.offset_index);
    times.add(writes.time_index);
    offset_of_max
}

/// The header at the start of `rest` (found at `position` in a segment of `segment_size` bytes)
/// if it is whole and its length is sane; `None` if incomplete or corrupt.
fn sane_header(rest: &[u8], position: u64, segment_size: u64) -> Option<BatchHeader> {
    let header = BatchHeader::parse(rest).ok()?;
    let sane = header.batch_length >= (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 && position + header.total_len() as u64 <= segment_size;
    sane.then_some(header)
}

/// Walk the bytes of a read (starting at `job.position`) to the batch containing `job.offset`,
/// and take whole batches from there within `job.max_bytes` (at least one) and below
/// `job.upper_bound`, or say what to read next.
/// Whether a batch's partition leader epoch — a field its CRC does not cover — is the one the
/// epoch cache says the batch at its offset was written in (`-1`, no epoch, is not checked).
fn epoch_checks_out(header: &BatchHeader, epochs: &EpochCache) -> bool {
    header.partition_leader_epoch == -1 || epochs.epoch_at(header.base_offset).is_none_or(|e| e == header.partition_leader_epoch)
}

fn walk_read(job: &ReadJob, segment_size: u64, data: &Bytes, epochs: &EpochCache) -> Walk {
    let mut at = 0usize;
    let mut expected = job.expected;
    loop {
        let here = job.position + at as u64;
        let rest = &data[at..];
        if here >= segment_size {
            // The segment holds the offset (offsets are dense): a header read wrongly (a batch
            // length or last offset delta, checked by the CRC only once the batch is returned)
            // walked past it.
            return Walk::Damaged(format!("offset {} not found in segment {} walking from position {}", job.offset, job.segment_base, job.position));
        }
        let Some(header) = sane_header(rest, here, segment_size) else {
            if rest.len() >= BATCH_HEADER_LEN || here + BATCH_HEADER_LEN as u64 > segment_size || (data.len() as u64) < job.len {
                return Walk::Damaged(format!("corrupt batch header at position {here} of segment {}", job.segment_base));
            }
            return Walk::More { position: here, len: job.len.min(segment_size - here), expected };
        };
        if header.base_offset != expected {
            return Walk::Damaged(format!("batch at position {here} claims offset {} where the index says {expected}", header.base_offset));
        }
        let total = header.total_len();
        if job.continued && header.next_offset() > job.offset && total as u64 > job.max_bytes {
            return Walk::Done(Bytes::new()); // a continued read only takes what fits
        }
        if header.next_offset() <= job.offset {
            if rest.len() < total {
                let position = here + total as u64;
                return Walk::More { position, len: job.len.min(segment_size.saturating_sub(position)).max(1), expected: header.next_offset() };
            }
            at += total;
            expected = header.next_offset();
            continue;
        }
        if rest.len() < total {
            if (data.len() as u64) < job.len {
                return Walk::Done(Bytes::new()); // the file ended early
            }
            let len = (total as u64).max(job.max_bytes).min(segment_size - here);
            return Walk::More { position: here, len, expected };
        }
        if let Err(e) = batch::check_one(&rest[..total]) {
            return Walk::Damaged(format!("batch at offset {}: {e}", header.base_offset));
        }
        if !epoch_checks_out(&header, epochs) {
            // A latent read error reads differently the next time: read again. A mismatch that
            // persists is what the disk holds (the cache itself may be the damaged party): it
            // is served as it is, as a CRC-less field always was.
            if job.attempts + 1 < READ_ATTEMPTS {
                return Walk::Damaged(format!(
                    "batch at offset {} carries leader epoch {}, not its epoch's",
                    header.base_offset, header.partition_leader_epoch
                ));
            }
            tracing::warn!(offset = header.base_offset, epoch = header.partition_leader_epoch, cache = ?epochs.entries(), "batch leader epoch disagrees with the epoch cache on every read");
        }
        let mut end = at + total;
        let mut next_expected = header.next_offset();
        while let Some(next) = sane_header(&data[end..], job.position + end as u64, segment_size) {
            let next_end = end + next.total_len();
            // A batch that does not check out ends the answer here; a fetch starting at it
            // meets it first and has it read again.
            if next.base_offset != next_expected
                || next.base_offset >= job.upper_bound
                || next_end > data.len()
                || (next_end - at) as u64 > job.max_bytes
                || batch::check_one(&data[end..next_end]).is_err()
                || !epoch_checks_out(&next, epochs)
            {
                break;
            }
            next_expected = next.next_offset();
            end = next_end;
        }
        return Walk::Done(data.slice(at..end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mem_disk::{MemDisk, QueuedIo};
    use crate::core::Rng;

    fn batch(records: usize, value_len: usize, timestamp: i64) -> Bytes {
        let value = vec![b'v'; value_len];
        let recs: Vec<_> = (0..records).map(|i| (None, Some(&value[..]), timestamp + i as i64)).collect();
        batch::build_batch(&recs, (-1, -1, -1))
    }

    fn open(disk: &mut MemDisk, config: LogConfig) -> (PartitionLog, QueuedIo, Vec<LogEvent>) {
        let mut log = PartitionLog::new("t-0", config);
        let mut io = QueuedIo::default();
        log.start(&mut io);
        let events = disk.run(&mut io, &mut log);
        assert!(log.is_ready(), "not recovered: {events:?}");
        (log, io, events)
    }

    fn read(disk: &mut MemDisk, io: &mut QueuedIo, log: &mut PartitionLog, offset: i64, max_bytes: u64, upper: i64) -> Vec<BatchHeader> {
        assert_eq!(log.read(io, 7, offset, max_bytes, upper), ReadStart::Pending);
        let events: Vec<LogEvent> =
            disk.run(io, log).into_iter().filter(|e| !matches!(e, LogEvent::Written { .. } | LogEvent::LogStartDurable { .. })).collect();
        let [LogEvent::ReadDone { read_id: 7, records }] = &events[..] else { panic!("{events:?}") };
        batch::validate_batches(records).map(|v| v.into_iter().map(|(h, _)| h).collect()).unwrap_or_default()
    }

    fn durable_events(events: &[LogEvent]) -> Vec<i64> {
        events.iter().filter_map(|e| if let LogEvent::Durable { offset } = e { Some(*offset) } else { None }).collect()
    }

    /// Bytes that do not check out are never served: a batch whose payload no longer matches its
    /// CRC, or whose base offset contradicts the index, makes the read fail after its retries.
    #[test]
    fn damaged_reads_fail_instead_of_serving_wrong_bytes() {
        for (position, byte) in [(70u64, 0x5a_u8), (7, 0x13)] {
            let mut disk = MemDisk::new();
            let (mut log, mut io, _) = open(&mut disk, LogConfig::default());
            log.append(&mut io, &batch(3, 10, 100), 0, None, 0);
            disk.run(&mut io, &mut log);
            // Damage the stored batch behind the log's back (payload, then base offset).
            disk.apply(DiskOp::WriteAt { path: "t-0/00000000000000000000.log".into(), position, data: Bytes::from(vec![byte]) }).unwrap();
            assert_eq!(log.read(&mut io, 9, 0, 1 << 20, 3), ReadStart::Pending);
            let events = disk.run(&mut io, &mut log);
            assert!(matches!(&events[..], [LogEvent::ReadFailed { read_id: 9, .. }]), "damage at {position}: {events:?}");
        }
    }

    /// An offset index entry that validates but points at the wrong batch (here damaged at rest;
    /// in the simulator a latent sector error when recovery read the file, kept in memory for
    /// good) does not make reads of the segment fail for ever: after its retries the read walks
    /// the segment from its start and serves the right batches (simulator seed 200199 of
    /// groups-3, where a consumer group stalled on such a read).
    #[test]
    fn a_wrong_offset_index_entry_is_walked_around() {
        let mut disk = MemDisk::new();
        let config = LogConfig { index_interval_bytes: 0, segment_bytes: 300, ..LogConfig::default() };
        let (mut log, mut io, _) = open(&mut disk, config.clone());
        for i in 0..10 {
            log.append(&mut io, &batch(2, 10, 100), 2 * i, None, 0);
            disk.run(&mut io, &mut log);
        }
        log.flush(&mut io, Some(Bytes::from_static(b"at 20")));
        disk.run(&mut io, &mut log);
        let path = "t-0/00000000000000000000.index";
        let index = disk.file(path).expect("index").to_vec();
        assert!(
            index.len() >= 2 * offset_index::OFFSET_INDEX_ENTRY_LEN && log.segments.len() >= 2,
            "layout: {} bytes, {} segments",
            index.len(),
            log.segments.len()
        );
        assert_eq!((&index[..4], &index[8..12]), (&[0, 0, 0, 2][..], &[0, 0, 0, 4][..]), "entries for offsets 2 and 4");
        // Offset 4 -> 3: still increasing, still inside the segment, so recovery accepts it.
        disk.apply(DiskOp::WriteAt { path: path.into(), position: 11, data: Bytes::from(vec![3]) }).unwrap();
        let (mut log, mut io, _) = open(&mut disk, config);
        assert_eq!(log.log_end_offset(), 20);
        for offset in [3, 4, 5, 1] {
            let got = read(&mut disk, &mut io, &mut log, offset, 1, 20);
            assert_eq!(got.first().map(|h| h.base_offset), Some(offset - offset % 2), "read at {offset}");
        }
    }

    /// Recover with `damage` applied to what each read returns (the read's path, how many reads
    /// of that path came before, the bytes).
    fn open_damaged(disk: &mut MemDisk, config: LogConfig, mut damage: impl FnMut(&str, u32, &mut Vec<u8>)) -> PartitionLog {
        let mut log = PartitionLog::new("t-0", config);
        let mut io = QueuedIo::default();
        log.start(&mut io);
        let mut reads: BTreeMap<String, u32> = BTreeMap::new();
        while !io.queue.is_empty() {
            let (token, op) = io.queue.remove(0);
            let path = match &op {
                DiskOp::Read { path, .. } => Some(path.clone()),
                _ => None,
            };
            let mut result = disk.apply(op);
            if let (Some(path), Ok(IoOutput::Read(data))) = (path, &result) {
                let n = reads.entry(path.clone()).or_default();
                let mut bytes = data.to_vec();
                damage(&path, *n, &mut bytes);
                *n += 1;
                result = Ok(IoOutput::Read(Bytes::from(bytes)));
            }
            log.on_io(&mut io, IoDone { token, result });
        }
        assert!(log.is_ready());
        log
    }

    /// Recovery keeps an index file of a segment below the recovery point only once two reads
    /// agree: a read damaged into other entries that still pass validation (offset 4 into 3, a
    /// timestamp lowered) is not what the segment's reads and timestamp searches are served
    /// from. An index whose reads never agree is rebuilt from the segment's log.
    #[test]
    fn recovery_reads_index_files_until_two_reads_agree() {
        let mut disk = MemDisk::new();
        let config = LogConfig { index_interval_bytes: 0, segment_bytes: 300, ..LogConfig::default() };
        let (mut log, mut io, _) = open(&mut disk, config.clone());
        for i in 0..10 {
            log.append(&mut io, &batch(2, 10, 100 + 10 * i), 2 * i as i32, None, 0);
            disk.run(&mut io, &mut log);
        }
        log.flush(&mut io, Some(Bytes::from_static(b"at 20")));
        disk.run(&mut io, &mut log);
        let (good, _, _) = open(&mut disk, config.clone());
        let first = &good.segments[0];
        assert!(first.offset_index.len() >= 2 && first.time_index.len() >= 2 && good.segments.len() >= 3, "layout");
        let offsets = disk.file("t-0/00000000000000000000.index").expect("index").to_vec();
        assert_eq!(&offsets[8..12], &[0, 0, 0, 4], "the second entry is for offset 4");
        // Offset 4 read as 3 and the first timestamp's low byte lowered, on the first read only.
        let log = open_damaged(&mut disk, config.clone(), |path, n, bytes| {
            if n == 0 && path.ends_with("0000.index") {
                bytes[11] = 3;
            }
            if n == 0 && path.ends_with("0000.timeindex") {
                bytes[7] = bytes[7].wrapping_sub(5);
            }
        });
        assert_eq!(log.segments[0].offset_index, first.offset_index, "a damaged read of the offset index was kept");
        assert_eq!(log.segments[0].time_index, first.time_index, "a damaged read of the time index was kept");
        assert!(log.segments[0].batches.is_none(), "two agreeing reads need no rebuild");
        // Every read different: the segment is scanned, its indexes rebuilt from the log.
        let log = open_damaged(&mut disk, config, |path, n, bytes| {
            if path.ends_with("0000.index") {
                bytes[11] = 3 + (n % 2) as u8;
            }
        });
        assert!(log.segments[0].batches.is_some(), "the segment was not rebuilt");
        assert_eq!(log.segments[0].offset_index, first.offset_index);
        assert_eq!(log.log_end_offset(), 20);
    }

    /// A batch's leader epoch is outside its CRC: a read that returns it damaged (a latent
    /// sector error, gone on the next read) is read again and the right bytes are served; an
    /// epoch that disagrees with the cache on every read is served as the disk holds it.
    #[test]
    fn a_misread_leader_epoch_is_read_again() {
        let mut disk = MemDisk::new();
        let (mut log, mut io, _) = open(&mut disk, LogConfig::default());
        log.append(&mut io, &batch(3, 10, 100), 0, None, 0);
        disk.run(&mut io, &mut log);
        assert_eq!(log.read(&mut io, 9, 0, 1 << 20, 3), ReadStart::Pending);
        // Execute the read by hand and flip the epoch's top byte in what it returns.
        let (token, op) = io.queue.remove(0);
        let Ok(IoOutput::Read(data)) = disk.apply(op) else { panic!("read failed") };
        let mut damaged = data.to_vec();
        damaged[12] ^= 0x80;
        let mut events = log.on_io(&mut io, IoDone { token, result: Ok(IoOutput::Read(Bytes::from(damaged))) });
        events.extend(disk.run(&mut io, &mut log));
        let [LogEvent::ReadDone { read_id: 9, records }] = &events[..] else { panic!("{events:?}") };
        assert_eq!(batch::validate_batches(records).expect("valid")[0].0.partition_leader_epoch, 0, "the re-read is served");
        // Damage at rest: every read disagrees with the cache; the read still completes.
        disk.apply(DiskOp::WriteAt { path: "t-0/00000000000000000000.log".into(), position: 15, data: Bytes::from(vec![7]) }).unwrap();
        let got = read(&mut disk, &mut io, &mut log, 0, 1 << 20, 3);
        assert_eq!(got[0].partition_leader_epoch, 7);
    }

    /// Recovery rebuilds the epoch cache from the batches it scans; a scan read that returns a
    /// batch's epoch damaged (outside the CRC) must not start a bogus epoch in the cache.
    #[test]
    fn recovery_reads_a_new_epoch_twice() {
        let mut disk = MemDisk::new();
        let (mut log, mut io, _) = open(&mut disk, LogConfig::default());
        let first = batch(3, 10, 100);
        log.append(&mut io, &first, 0, None, 0);
        log.append(&mut io, &batch(2, 10, 100), 3, None, 0);
        disk.run(&mut io, &mut log);
        // No checkpoint: recovery scans the segment. Damage the second batch's epoch (3 -> 0x83)
        // in the first scan read only.
        let mut log = PartitionLog::new("t-0", LogConfig::default());
        let mut io = QueuedIo::default();
        log.start(&mut io);
        let mut flipped = false;
        while !io.queue.is_empty() {
            let (token, op) = io.queue.remove(0);
            let scan = matches!(&op, DiskOp::Read { path, position: 0, .. } if path.ends_with(".log"));
            let mut result = disk.apply(op);
            if let (false, true, Ok(IoOutput::Read(data))) = (flipped, scan, &result) {
                let mut damaged = data.to_vec();
                damaged[first.len() + 15] ^= 0x80;
                result = Ok(IoOutput::Read(Bytes::from(damaged)));
                flipped = true;
            }
            log.on_io(&mut io, IoDone { token, result });
        }
        assert!(flipped && log.is_ready());
        assert_eq!(log.epoch_entries(), &[(0, 0), (3, 3)]);
    }

    /// A fresh log recovers empty, assigns dense offsets, serves reads from the batch containing
    /// the offset, and reports durability after a flush.
    #[test]
    fn append_read_flush() {
        let mut disk = MemDisk::new();
        let (mut log, mut io, events) = open(&mut disk, LogConfig::default());
        assert!(matches!(&events[..], [LogEvent::Recovered { replay, .. }] if replay.is_empty()));
        let info = log.append(&mut io, &batch(3, 10, 100), 5, None, 0);
        assert_eq!((info.first_offset, info.last_offset, info.max_timestamp, info.offset_of_max_timestamp), (0, 2, 102, 2));
        assert_eq!(info.headers[0].partition_leader_epoch, 5);
        let info = log.append(&mut io, &[batch(2, 10, 50), batch(1, 10, 60)].concat(), 5, Some(999), 0);
        assert_eq!((info.first_offset, info.last_offset, info.max_timestamp, info.offset_of_max_timestamp), (3, 5, 999, 3));
        assert_eq!(log.log_end_offset(), 6);
        let got = read(&mut disk, &mut io, &mut log, 4, 1 << 20, 6);
        assert_eq!(got.iter().map(|h| h.base_offset).collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(read(&mut disk, &mut io, &mut log, 1, 1 << 20, 5).len(), 2, "upper bound excludes the batch at 5");
        assert_eq!(log.read(&mut io, 1, 6, 100, 6), ReadStart::Empty);
        assert_eq!(log.read(&mut io, 1, 7, 100, 6), ReadStart::OutOfRange);
        log.flush(&mut io, Some(Bytes::from_static(b"blob")));
        let events = disk.run(&mut io, &mut log);
        assert_eq!(durable_events(&events), vec![6]);
        assert_eq!(log.durable_offset(), 6);
    }

    /// KIP-74: a first batch larger than max_bytes is still returned whole, alone; later batches
    /// only while they fit.
    #[test]
    fn max_bytes_and_oversized_first_batch() {
        let mut disk = MemDisk::new();
        let config = LogConfig { index_interval_bytes: 100, ..LogConfig::default() };
        let (mut log, mut io, _) = open(&mut disk, config);
        let big = batch(5, 2000, 1);
        for _ in 0..10 {
            log.append(&mut io, &big, 0, None, 0);
        }
        disk.run(&mut io, &mut log);
        let got = read(&mut disk, &mut io, &mut log, 27, 10, 50);
        assert_eq!(got.iter().map(|h| h.base_offset).collect::<Vec<_>>(), vec![25]);
        let got = read(&mut disk, &mut io, &mut log, 27, 3 * big.len() as u64, 50);
        assert_eq!(got.iter().map(|h| h.base_offset).collect::<Vec<_>>(), vec![25, 30, 35]);
    }

    /// Flushes requested while an fsync is in flight coalesce into exactly one more fsync round,
    /// and Durable offsets never go back.
    #[test]
    fn group_commit_coalesces() {
        let mut disk = MemDisk::new();
        let (mut log, mut io, _) = open(&mut disk, LogConfig::default());
        log.append(&mut io, &batch(1, 10, 1), 0, None, 0);
        log.flush(&mut io, None);
        log.append(&mut io, &batch(1, 10, 1), 0, None, 0);
        log.flush(&mut io, Some(Bytes::from_static(b"a")));
        log.append(&mut io, &batch(1, 10, 1), 0, None, 0);
        log.flush(&mut io, None);
        let fsyncs_queued = io.queue.iter().filter(|(_, op)| matches!(op, DiskOp::Fsync { .. })).count();
        assert_eq!(fsyncs_queued, 1, "only the first round is issued at once");
        let events = disk.run(&mut io, &mut log);
        assert_eq!(durable_events(&events), vec![1, 3]);
        assert!(disk.file("t-0/partition.checkpoint").is_some(), "the coalesced blob was checkpointed");
    }

    /// A crash loses unsynced batches but never durable ones; a torn tail is truncated; the
    /// checkpoint blob and the headers after the recovery point come back in Recovered.
    #[test]
    fn crash_recovery_keeps_durable_prefix() {
        for seed in 0..40 {
            let mut disk = MemDisk::new();
            let config = LogConfig { segment_bytes: 600, index_interval_bytes: 100, ..LogConfig::default() };
            let (mut log, mut io, _) = open(&mut disk, config.clone());
            for i in 0..10 {
                log.append(&mut io, &batch(2, 30, i), 0, None, 0);
            }
            log.flush(&mut io, Some(Bytes::from_static(b"state")));
            disk.run(&mut io, &mut log);
            for i in 0..5 {
                log.append(&mut io, &batch(2, 30, i), 0, None, 0);
            }
            let mut rng = Rng::new(seed);
            let steps = rng.below(io.queue.len() as u64 + 1);
            for _ in 0..steps {
                disk.step(&mut io, &mut log);
            }
            disk.crash(&mut rng, true);
            let (mut log, mut io, events) = open(&mut disk, config);
            let [LogEvent::Recovered { checkpoint, replay }] = &events[..] else { panic!("{events:?}") };
            assert_eq!(&checkpoint[..], b"state");
            assert!((20..=30).contains(&log.log_end_offset()), "seed {seed}: end {}", log.log_end_offset());
            assert_eq!(replay.len() as i64, (log.log_end_offset() - 20) / 2, "seed {seed}");
            let end = log.log_end_offset();
            let all = read(&mut disk, &mut io, &mut log, 0, u64::MAX / 4, end);
            assert!(!all.is_empty());
            log.append(&mut io, &batch(1, 5, 1), 0, None, 0);
            disk.run(&mut io, &mut log);
        }
    }

    /// Retention by size deletes the oldest segments; DeleteRecords advances the log start and
    /// deletes segments below it, rolling when needed; reads below the start are out of range.
    #[test]
    fn retention_and_delete_records() {
        let mut disk = MemDisk::new();
        let config = LogConfig { segment_bytes: 500, retention_ms: -1, retention_bytes: 1000, ..LogConfig::default() };
        let (mut log, mut io, _) = open(&mut disk, config.clone());
        for i in 0..20 {
            log.append(&mut io, &batch(1, 100, i), 0, None, 0);
        }
        disk.run(&mut io, &mut log);
        let segments_before = log.segments.len();
        log.apply_retention(&mut io, 0, i64::MAX);
        disk.run(&mut io, &mut log);
        assert!(log.segments.len() < segments_before);
        assert!(log.size_bytes() >= 1000);
        assert!(log.log_start_offset() > 0);
        assert_eq!(log.read(&mut io, 1, log.log_start_offset() - 1, 100, 20), ReadStart::OutOfRange);
        assert_eq!(log.delete_records(&mut io, 21), Err(()));
        assert_eq!(log.delete_records(&mut io, 17), Ok(17));
        // Durable once the checkpoint recording it is in place, and said so.
        assert!(log.durable_log_start_offset() < 17, "durable before its checkpoint: {}", log.durable_log_start_offset());
        let events = disk.run(&mut io, &mut log);
        assert!(events.iter().any(|e| matches!(e, LogEvent::LogStartDurable { offset: 17 })), "{events:?}");
        assert_eq!(log.durable_log_start_offset(), 17);
        assert_eq!(read(&mut disk, &mut io, &mut log, 17, 100, 20)[0].base_offset, 17);
        assert_eq!(log.delete_records(&mut io, 20), Ok(20));
        disk.run(&mut io, &mut log);
        assert_eq!((log.segments.len(), log.size_bytes()), (1, 0));
        log.append(&mut io, &batch(1, 1, 1), 0, None, 0);
        log.flush(&mut io, None);
        disk.run(&mut io, &mut log);
        let (log, _, _) = open(&mut disk, config);
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (20, 21));
    }

    /// A timestamp search checks what it walks as a fetch does (dense offsets from where the
    /// offset index pointed, the CRC of the batch it answers from): a read damaged once is read
    /// again, a wrong index entry is walked around from the segment's start, and a segment
    /// damaged on every read fails the search instead of answering "no such record".
    #[test]
    fn timestamp_searches_survive_damaged_reads_and_index_entries() {
        let mut disk = MemDisk::new();
        let config = LogConfig { index_interval_bytes: 0, segment_bytes: 300, ..LogConfig::default() };
        let (mut log, mut io, _) = open(&mut disk, config.clone());
        for i in 0..10 {
            log.append(&mut io, &batch(2, 10, 1000 + 10 * i), 0, None, 0); // offsets 2i, 2i+1 at 1000+10i, +1
            disk.run(&mut io, &mut log);
        }
        log.flush(&mut io, Some(Bytes::from_static(b"at 20")));
        disk.run(&mut io, &mut log);
        let search = |disk: &mut MemDisk, log: &mut PartitionLog, io: &mut QueuedIo, target: i64, damage: &mut dyn FnMut(u32, &mut Vec<u8>)| {
            assert_eq!(log.offset_for_timestamp(io, 3, target), None);
            let mut reads = 0;
            let mut events = Vec::new();
            while !io.queue.is_empty() {
                let (token, op) = io.queue.remove(0);
                let mut result = disk.apply(op);
                if let Ok(IoOutput::Read(data)) = &result {
                    let mut bytes = data.to_vec();
                    damage(reads, &mut bytes);
                    reads += 1;
                    result = Ok(IoOutput::Read(Bytes::from(bytes)));
                }
                events.extend(log.on_io(io, IoDone { token, result }));
            }
            match &events[..] {
                [LogEvent::TimestampFound { query_id: 3, found }] => found.clone(),
                other => panic!("{other:?}"),
            }
        };
        // The first read's batch header damaged (its base offset): read again, right answer.
        let found = search(&mut disk, &mut log, &mut io, 1011, &mut |n, bytes| {
            if n == 0 {
                bytes[7] ^= 0x40;
            }
        });
        assert_eq!(found, Ok(Some((3, 1011))));
        // The batch answered from damaged in its records on the first read: read again.
        let found = search(&mut disk, &mut log, &mut io, 1011, &mut |n, bytes| {
            let data = Bytes::from(bytes.clone());
            let answer = batch::iter_headers(&data).find(|(h, _)| h.base_offset == 2).map(|(_, r)| r.end);
            if let (0, Some(end)) = (n, answer) {
                bytes[end - 1] ^= 1;
            }
        });
        assert_eq!(found, Ok(Some((3, 1011))));
        // The answer batch's max timestamp (CRC-covered only) lowered below the target on the
        // first read: the walk must not skip the batch for it.
        let found = search(&mut disk, &mut log, &mut io, 1011, &mut |n, bytes| {
            let data = Bytes::from(bytes.clone());
            let answer = batch::iter_headers(&data).find(|(h, _)| h.base_offset == 2).map(|(_, r)| r.start);
            if let (0, Some(start)) = (n, answer) {
                bytes[start + 42] = bytes[start + 42].wrapping_sub(5);
            }
        });
        assert_eq!(found, Ok(Some((3, 1011))));
        // Damaged on every read: the search fails.
        let found = search(&mut disk, &mut log, &mut io, 1011, &mut |_, bytes| bytes[7] ^= 0x40);
        assert!(found.is_err(), "{found:?}");
        // A wrong offset index entry (offset 2's entry moved to offset 4's position) is walked
        // around from the segment's start.
        let first = log.segments[0].offset_index.lookup(2);
        assert_eq!(first.relative_offset, 2);
        let second = log.segments[0].offset_index.lookup(4);
        log.segments[0].offset_index.truncate_from(0);
        log.segments[0].offset_index.append(offset_index::OffsetIndexEntry { relative_offset: 2, position: second.position });
        let found = search(&mut disk, &mut log, &mut io, 1011, &mut |_, _| {});
        assert_eq!(found, Ok(Some((3, 1011))));
    }

    /// Timestamp lookups find the first record at or after the target, through the time index,
    /// across segments, and answer at once when nothing can match.
    #[test]
    fn offset_for_timestamp() {
        let mut disk = MemDisk::new();
        let config = LogConfig { segment_bytes: 2000, index_interval_bytes: 200, ..LogConfig::default() };
        let (mut log, mut io, _) = open(&mut disk, config);
        for i in 0..50 {
            log.append(&mut io, &batch(4, 20, 1000 + i * 10), 0, None, 0); // timestamps 1000+10i .. +3
        }
        disk.run(&mut io, &mut log);
        assert!(log.segments.len() > 2);
        for (target, expected) in [(0, (0, 1000)), (1000, (0, 1000)), (1002, (2, 1002)), (1004, (4, 1010)), (1491, (197, 1491))] {
            assert_eq!(log.offset_for_timestamp(&mut io, 3, target), None);
            let events = disk.run(&mut io, &mut log);
            assert!(matches!(&events[..], [LogEvent::TimestampFound { query_id: 3, found: Ok(Some(f)) }] if *f == expected), "target {target}: {events:?}");
        }
        assert_eq!(log.offset_for_timestamp(&mut io, 3, 5000), Some(None));
        assert_eq!(log.offset_for_timestamp(&mut io, 3, MAX_TIMESTAMP), Some(Some((199, 1493))));
        assert_eq!(log.offset_for_timestamp(&mut io, 3, EARLIEST_TIMESTAMP), Some(Some((0, -1))));
    }

    /// Recovery scans segments larger than its 1 MiB chunk, including a batch larger than a
    /// chunk, and a full scan (no checkpoint) finds every fsynced batch.
    #[test]
    fn recovery_scans_across_chunks() {
        let mut disk = MemDisk::new();
        let (mut log, mut io, _) = open(&mut disk, LogConfig::default());
        for i in 0..300 {
            log.append(&mut io, &batch(5, 1000, i), 0, None, 0);
        }
        log.append(&mut io, &batch(1, 3 << 20, 0), 0, None, 0);
        log.append(&mut io, &batch(2, 10, 0), 0, None, 0);
        log.flush(&mut io, None);
        disk.run(&mut io, &mut log);
        assert!(log.size_bytes() > 3 * SCAN_CHUNK_BYTES);
        disk.crash(&mut Rng::new(1), false);
        let (mut log, mut io, events) = open(&mut disk, LogConfig::default());
        assert!(matches!(&events[..], [LogEvent::Recovered { replay, .. }] if replay.len() == 302));
        assert_eq!(log.log_end_offset(), 1503);
        let got = read(&mut disk, &mut io, &mut log, 1500, 10, 1503);
        assert_eq!(got.iter().map(|h| h.base_offset).collect::<Vec<_>>(), vec![1500]);
    }

    /// An fsync failure takes the log offline: Failed is reported, no Durable, not ready.
    #[test]
    fn fsync_failure_goes_offline() {
        let mut disk = MemDisk::new();
        let (mut log, mut io, _) = open(&mut disk, LogConfig::default());
        log.append(&mut io, &batch(1, 10, 1), 0, None, 0);
        disk.fail_fsync = true;
        log.flush(&mut io, None);
        let events = disk.run(&mut io, &mut log);
        assert!(matches!(&events[..], [LogEvent::Written { .. }, LogEvent::Failed { .. }]), "{events:?}");
        assert!(!log.is_ready());
        assert_eq!(log.durable_offset(), 0);
    }

    /// A batch as a leader would send it: offsets and partition leader epoch assigned.
    fn leader_batch(base_offset: i64, records: usize, epoch: i32) -> Bytes {
        let mut b = BytesMut::from(&batch(records, 10, 100)[..]);
        batch::assign(&mut b, base_offset, epoch, None);
        b.freeze()
    }

    /// A follower append refuses records that do not start at the log end, leave a gap, fail
    /// their CRC or are cut short, writing nothing; valid records are stored byte for byte and
    /// feed the epoch cache.
    #[test]
    fn append_replicated_errors_and_bytes() {
        let mut disk = MemDisk::new();
        let mut log = PartitionLog::new("t-0", LogConfig::default());
        let mut io = QueuedIo::default();
        assert_eq!(log.append_replicated(&mut io, &leader_batch(0, 1, 1), 0), Err(ReplicaAppendError::NotReady));
        log.start(&mut io);
        disk.run(&mut io, &mut log);
        let good = [leader_batch(0, 2, 1), leader_batch(2, 3, 4)].concat();
        type Check = fn(&ReplicaAppendError) -> bool;
        let cases: Vec<(Bytes, Check)> = vec![
            (leader_batch(1, 2, 1), |e| *e == ReplicaAppendError::OffsetMismatch { expected: 0, found: 1 }),
            ([leader_batch(0, 2, 1), leader_batch(3, 1, 1)].concat().into(), |e| *e == ReplicaAppendError::NotContiguous { expected: 2, found: 3 }),
            (
                Bytes::from({
                    let mut b = good.clone();
                    let n = b.len();
                    b[n - 1] ^= 1;
                    b
                }),
                |e| matches!(e, ReplicaAppendError::Corrupt(BatchError::Crc { .. })),
            ),
            (Bytes::copy_from_slice(&good[..good.len() - 1]), |e| matches!(e, ReplicaAppendError::Corrupt(BatchError::Truncated(_)))),
            (Bytes::new(), |e| matches!(e, ReplicaAppendError::Corrupt(_))),
            ([leader_batch(0, 2, 4), leader_batch(2, 1, 3)].concat().into(), |e| *e == ReplicaAppendError::EpochGoesBack { offset: 2, epoch: 3, latest: 4 }),
        ];
        for (records, expected) in cases {
            let error = log.append_replicated(&mut io, &records, 0).unwrap_err();
            assert!(expected(&error), "{error:?}");
            assert!(io.queue.is_empty(), "a refused append issued {:?}", io.queue);
            assert_eq!((log.log_end_offset(), log.latest_epoch()), (0, None));
        }
        let info = log.append_replicated(&mut io, &Bytes::from(good.clone()), 0).unwrap();
        assert_eq!((info.first_offset, info.last_offset), (0, 4));
        assert_eq!(log.epoch_entries(), &[(1, 0), (4, 2)]);
        disk.run(&mut io, &mut log);
        assert_eq!(disk.file("t-0/00000000000000000000.log"), Some(&good[..]), "stored as received");
        let error = log.append_replicated(&mut io, &leader_batch(4, 1, 4), 0).unwrap_err();
        assert_eq!(error, ReplicaAppendError::OffsetMismatch { expected: 5, found: 4 });
    }

    /// Truncating inside a batch ends the log at its base; the cut segment and the epoch cache
    /// follow, a read in flight past the cut answers empty, the next flush waits for the
    /// checkpoint recording the truncation, and a crash afterwards recovers exactly the cut log.
    #[test]
    fn truncate_inside_batch_then_crash() {
        let mut disk = MemDisk::new();
        let config = LogConfig { index_interval_bytes: 0, ..LogConfig::default() };
        let (mut log, mut io, _) = open(&mut disk, config.clone());
        log.append(&mut io, &batch(3, 10, 100), 2, None, 0); // 0..3
        log.append(&mut io, &batch(3, 10, 100), 5, None, 0); // 3..6
        log.append(&mut io, &batch(3, 10, 100), 7, None, 0); // 6..9
        log.flush(&mut io, Some(Bytes::from_static(b"at 9")));
        disk.run(&mut io, &mut log);
        assert_eq!(log.epoch_entries(), &[(2, 0), (5, 3), (7, 6)]);
        assert_eq!(log.end_offset_for_epoch(5), (5, 6));
        assert_eq!(log.read(&mut io, 1, 6, 1 << 20, 9), ReadStart::Pending);
        assert_eq!(log.truncate_to(&mut io, 4), 3, "inside the batch 3..6: cut at its base");
        assert_eq!((log.log_end_offset(), log.durable_offset()), (3, 3));
        assert_eq!(log.epoch_entries(), &[(2, 0)]);
        assert_eq!(log.end_offset_for_epoch(2), (2, 3));
        assert_eq!(log.end_offset_for_epoch(5), (-1, -1));
        assert_eq!(log.segments().len(), 2, "cut segment sealed, new one at the cut");
        assert_eq!((log.segments()[0].next_offset, log.segments()[1].base_offset), (3, 3));
        log.flush(&mut io, None);
        let ops: Vec<String> = io.queue.iter().map(|(_, op)| format!("{op:?}")).collect();
        assert!(!ops.iter().any(|op| op.starts_with("Fsync") && op.contains(".log")), "fsync before the truncation is recorded: {ops:?}");
        let events = disk.run(&mut io, &mut log);
        assert!(events.iter().any(|e| matches!(e, LogEvent::ReadDone { read_id: 1, records } if records.is_empty())), "{events:?}");
        assert_eq!(durable_events(&events), vec![3]);
        log.append(&mut io, &leader_batch(0, 2, 9)[..], 9, None, 0); // 3..5 in epoch 9
        assert_eq!(log.epoch_entries(), &[(2, 0), (9, 3)]);
        log.flush(&mut io, None);
        disk.run(&mut io, &mut log);
        disk.crash(&mut Rng::new(5), true);
        let (mut log, mut io, events) = open(&mut disk, config);
        let [LogEvent::Recovered { checkpoint, .. }] = &events[..] else { panic!("{events:?}") };
        assert!(checkpoint.is_empty(), "the blob at 9 described a longer log");
        assert_eq!((log.log_end_offset(), log.epoch_entries()), (5, &[(2, 0), (9, 3)][..]));
        let mut got = read(&mut disk, &mut io, &mut log, 0, 1 << 20, 5);
        got.extend(read(&mut disk, &mut io, &mut log, 3, 1 << 20, 5));
        assert_eq!(got.iter().map(|h| (h.base_offset, h.partition_leader_epoch)).collect::<Vec<_>>(), vec![(0, 2), (3, 9)]);
    }

    /// A flush without a checkpoint fsyncs only the active segment's `.log` (its index files wait
    /// for the next checkpoint, as the recovery point does); one with a checkpoint, the indexes
    /// too. A crash that loses the index entries written since the checkpoint loses nothing:
    /// recovery rebuilds them, and a read in the middle of the unsynced part finds its batch.
    #[test]
    fn index_files_are_synced_with_checkpoints_only() {
        let mut disk = MemDisk::new();
        let config = LogConfig { index_interval_bytes: 0, ..LogConfig::default() };
        let (mut log, mut io, _) = open(&mut disk, config.clone());
        let fsyncs = |io: &QueuedIo| -> Vec<String> {
            let mut paths: Vec<String> = io
                .queue
                .iter()
                .filter_map(|(_, op)| if let DiskOp::Fsync { path } = op { path.rsplit('.').next().map(str::to_string) } else { None })
                .collect();
            paths.sort();
            paths
        };
        for _ in 0..5 {
            log.append(&mut io, &batch(2, 10, 100), 0, None, 0);
        }
        log.flush(&mut io, Some(Bytes::from_static(b"at 10")));
        assert_eq!(fsyncs(&io), vec!["index", "log", "timeindex"], "a checkpoint flush syncs the indexes");
        disk.run(&mut io, &mut log);
        for _ in 0..5 {
            log.append(&mut io, &batch(2, 10, 100), 0, None, 0);
        }
        log.flush(&mut io, None);
        assert_eq!(fsyncs(&io), vec!["log"], "a flush without a checkpoint syncs the log only");
        let events = disk.run(&mut io, &mut log);
        assert_eq!(durable_events(&events), vec![20]);
        disk.crash(&mut Rng::new(3), false);
        let index = disk.file("t-0/00000000000000000000.index").map(|f| f.len()).unwrap_or(0);
        assert!(index < 10 * offset_index::OFFSET_INDEX_ENTRY_LEN, "the crash kept every index entry ({index} bytes): nothing tested");
        let (mut log, mut io, _) = open(&mut disk, config);
        assert_eq!(log.log_end_offset(), 20);
        for offset in [0, 12, 15, 18] {
            let got = read(&mut disk, &mut io, &mut log, offset, 1, 20);
            assert_eq!(got.first().map(|h| h.base_offset), Some(offset - offset % 2), "read at {offset}");
        }
    }

    /// A follower behind the leader's log start restarts its log empty there.
    #[test]
    fn truncate_fully_and_start_at() {
        let mut disk = MemDisk::new();
        let (mut log, mut io, _) = open(&mut disk, LogConfig::default());
        log.append(&mut io, &batch(3, 10, 100), 2, None, 0);
        log.flush(&mut io, None);
        disk.run(&mut io, &mut log);
        log.truncate_fully_and_start_at(&mut io, 50);
        assert_eq!((log.log_start_offset(), log.log_end_offset(), log.latest_epoch()), (50, 50, None));
        log.append_replicated(&mut io, &leader_batch(50, 2, 6), 0).unwrap();
        log.flush(&mut io, None);
        disk.run(&mut io, &mut log);
        disk.crash(&mut Rng::new(1), false);
        let (log, _, _) = open(&mut disk, LogConfig::default());
        assert_eq!((log.log_start_offset(), log.log_end_offset(), log.epoch_entries()), (50, 52, &[(6, 50)][..]));
        assert!(disk.file("t-0/00000000000000000000.log").is_none());
    }
}
