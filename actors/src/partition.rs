//! One replica of one partition: its log, leader epoch, high watermark and idempotent-producer
//! state.
//!
//! Invariants: `high_watermark <= log.log_end_offset()`; with the fsync policy (the default) the
//! high watermark never passes the durable offset, so a consumer never sees a record that a crash
//! could take back. Producer state is rebuilt after a restart from the last checkpoint plus the
//! batch headers replayed by recovery, so sequence checks survive restarts.

use crate::broker::error;
use crate::core::DiskIo;
use crate::log::batch::{self, BatchHeader};
use crate::log::{AppendInfo, LogConfig, PartitionLog};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};

/// How many recent batches per producer are remembered for duplicate detection (Kafka's 5
/// in-flight requests).
pub const PRODUCER_BATCH_WINDOW: usize = 5;

/// One remembered batch of an idempotent producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    /// First sequence number.
    pub first_sequence: i32,
    /// Last sequence number.
    pub last_sequence: i32,
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// Max timestamp (returned again for a duplicate).
    pub max_timestamp: i64,
}

/// The state of one producer id on this partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    /// Current epoch.
    pub epoch: i16,
    /// The last few batches, oldest first.
    pub batches: VecDeque<ProducerBatch>,
}

impl ProducerEntry {
    /// Let go of batches below `high_watermark` beyond the last [`PRODUCER_BATCH_WINDOW`] of them
    /// (see [`Partition::remember`]).
    fn trim(&mut self, high_watermark: i64) {
        while self.batches.get(PRODUCER_BATCH_WINDOW).is_some_and(|b| b.last_offset < high_watermark) {
            self.batches.pop_front();
        }
    }
}

/// How long a requested checkpoint with a fresh producer-state blob may take before it is
/// requested again.
pub const CHECKPOINT_RETRY_MS: u64 = 1_000;

/// How the partition decides that an appended record may be acknowledged and exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Group-committed fsync before acks=all and before the high watermark moves (default).
    Fsync,
    /// Kafka's page-cache policy: acknowledge on write; fsync every `messages` records or `ms`.
    PageCache {
        /// `flush.messages` (`log.flush.interval.messages`), or `i64::MAX`.
        messages: i64,
        /// `flush.ms` (`log.flush.interval.ms`), or `i64::MAX`.
        ms: i64,
    },
}

/// Outcome of a successful produce to this partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset of the last record: acks=all waits until it is below the high watermark.
    pub last_offset: i64,
    /// The append time for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
}

/// This broker's part in a partition, as the controller decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not (yet) a replica: serves nothing.
    None,
    /// The leader: takes produces, serves consumers and followers.
    Leader,
    /// A follower of `leader` (-1: leaderless for now).
    Follower {
        /// The leader broker.
        leader: i32,
    },
}

/// What the leader knows of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerState {
    /// The follower's log end (its next fetch offset).
    pub log_end_offset: i64,
    /// Below this, the follower's log is fsynced.
    pub durable_offset: i64,
    /// Last time the follower had fetched up to the leader's log end.
    pub last_caught_up_ms: u64,
    /// The follower's durable log start offset, as its last fetch reported (-1: not heard).
    pub log_start_offset: i64,
}

impl FollowerState {
    /// A follower not heard from yet, given a full lag window from `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        FollowerState { log_end_offset: -1, durable_offset: -1, last_caught_up_ms: now_ms, log_start_offset: -1 }
    }
}

/// A replica of one partition.
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub index: i32,
    /// Broker-local unique id of this partition instance (survives nothing; routes IO).
    pub uid: u64,
    /// The log.
    pub log: PartitionLog,
    /// Leader epoch (0 on a single node until the controller arrives).
    pub leader_epoch: i32,
    /// Offset below which records are committed and visible to consumers.
    pub high_watermark: i64,
    /// Flush policy.
    pub flush_policy: FlushPolicy,
    /// `message.timestamp.type` is LogAppendTime.
    pub log_append_time: bool,
    /// `max.message.bytes`.
    pub max_message_bytes: usize,
    /// Allowed distance of a CreateTime timestamp before now (`message.timestamp.before.max.ms`).
    pub timestamp_before_max_ms: i64,
    /// Allowed distance of a CreateTime timestamp after now (`message.timestamp.after.max.ms`).
    pub timestamp_after_max_ms: i64,
    producers: BTreeMap<i64, ProducerEntry>,
    /// Leader, follower or neither.
    pub role: Role,
    /// This broker.
    pub me: i32,
    /// Assigned replicas.
    pub replicas: Vec<i32>,
    /// In-sync replicas, as committed by the controller.
    pub isr: Vec<i32>,
    /// The partition epoch of `isr`.
    pub partition_epoch: i32,
    /// An ISR change sent to the controller and not yet answered.
    pub pending_isr: Option<Vec<i32>>,
    /// Leader only: the followers' positions.
    pub followers: BTreeMap<i32, FollowerState>,
    /// Follower only: the leader's high watermark as last heard.
    pub leader_high_watermark: i64,
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// Recovered and not yet given a role: the high watermark recovery computed is only this
    /// replica's view.
    fresh: bool,
    /// Offset below which every record's write completed (it survives a process crash).
    pub written_offset: i64,
    ready: bool,
    unflushed_messages: i64,
    last_flush_ms: u64,
    last_checkpoint_ms: u64,
    /// When [`Partition::refresh_checkpoint_after_deletions`] last asked for a checkpoint (0:
    /// none outstanding).
    fresh_blob_requested_ms: u64,
}

impl Partition {
    /// Where epoch `requested` ends in this leader's log, as a Kafka leader answers a follower
    /// (KIP-101/KIP-279). A Kafka leader records the start of its own epoch (its log end) in its
    /// epoch cache when it is elected; this log's cache starts an epoch with its first batch. So
    /// while this leader has written nothing in its epoch, a request above every cached epoch
    /// (up to the leader's own) is answered as if that entry were there: the largest cached
    /// epoch (or the request itself in an empty cache) ending at the log end. Without this the
    /// answer is undefined, and the follower falls back to its high watermark, which may be
    /// below what is committed.
    pub fn leader_end_offset_for_epoch(&self, requested: i32) -> (i32, i64) {
        let latest = self.log.latest_epoch();
        if requested >= 0 && requested <= self.leader_epoch && latest.is_none_or(|l| l < requested) {
            return (latest.unwrap_or(requested), self.log.log_end_offset());
        }
        self.log.end_offset_for_epoch(requested)
    }

    /// A partition whose log lives in `dir`; call [`Partition::start`] to recover it.
    pub fn new(topic: &str, index: i32, uid: u64, dir: String, config: LogConfig) -> Self {
        Partition {
            topic: topic.to_string(),
            index,
            uid,
            log: PartitionLog::new(dir, config),
            leader_epoch: 0,
            high_watermark: 0,
            flush_policy: FlushPolicy::Fsync,
            log_append_time: false,
            max_message_bytes: 1_048_588,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: i64::MAX,
            producers: BTreeMap::new(),
            role: Role::None,
            me: -1,
            replicas: Vec::new(),
            isr: Vec::new(),
            partition_epoch: -1,
            pending_isr: None,
            followers: BTreeMap::new(),
            leader_high_watermark: 0,
            min_insync_replicas: 1,
            fresh: false,
            written_offset: 0,
            ready: false,
            unflushed_messages: 0,
            last_flush_ms: 0,
            last_checkpoint_ms: 0,
            fresh_blob_requested_ms: 0,
        }
    }

    /// Begin recovery.
    pub fn start(&mut self, io: &mut impl DiskIo) {
        self.log.start(io);
    }

    /// Each idempotent producer's remembered batches (its window), by producer id.
    pub fn producer_windows(&self) -> &BTreeMap<i64, ProducerEntry> {
        &self.producers
    }

    /// Whether this node holds the partition's log: started (recovering or recovered). A broker
    /// keeps a log only for the partitions it is a replica of (or, at startup, has a directory
    /// for); the others are known from the metadata but have nothing on disk.
    pub fn is_hosted(&self) -> bool {
        self.log.is_started()
    }

    /// A follower: advance the log start offset to the leader's `leader_log_start` (from a fetch
    /// answer), at most to this replica's high watermark, deleting the segments below it.
    pub fn follow_log_start(&mut self, io: &mut impl DiskIo, leader_log_start: i64) {
        if !matches!(self.role, Role::Follower { .. }) {
            return;
        }
        let target = leader_log_start.min(self.high_watermark);
        if target > self.log.log_start_offset() {
            let _ = self.log.delete_records(io, target);
        }
    }

    /// Whether recovery finished.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Recovery finished: rebuild producer state and the high watermark, and fsync what recovery
    /// kept beyond the recovery point.
    pub fn on_recovered(&mut self, io: &mut impl DiskIo, now_ms: u64, checkpoint: &Bytes, replay: &[BatchHeader]) {
        // What recovery found beyond the recovery point may sit only in the page cache (the
        // process died, the machine did not): expose it only once it is fsynced again.
        self.written_offset = self.log.log_end_offset();
        self.high_watermark = match self.flush_policy {
            FlushPolicy::Fsync => self.log.durable_offset().min(self.log.log_end_offset()),
            FlushPolicy::PageCache { .. } => self.log.log_end_offset(),
        };
        self.producers = decode_producers(checkpoint).unwrap_or_default();
        // The recovered high watermark is what this replica holds, not what its ISR committed: a
        // truncation after the restart may still cut below it. The replayed batches are kept
        // whole, as batches above a high watermark are; the first real one lets go of the old.
        for header in replay {
            self.remember(header, self.log.log_start_offset());
        }
        // Producers whose batches were all deleted (DeleteRecords, retention) keep their state,
        // as in Kafka since KIP-360: a retry of a deleted batch is still recognised. If the
        // blob predates deletions recovery cannot replay (a crash before the checkpoint that
        // `refresh_checkpoint_after_deletions` asks for), a window may lack the producer's
        // newest batches: its next batch is then refused as OUT_OF_ORDER_SEQUENCE_NUMBER and
        // the producer starts over, where dropping the window would have written a retry twice.
        self.ready = true;
        self.fresh = true;
        assert!(self.high_watermark <= self.log.log_end_offset());
        if self.high_watermark < self.log.log_end_offset() {
            self.flush(io, now_ms);
        }
    }

    /// The log finished writing everything below `offset`. Returns true if the high watermark
    /// moved (the page-cache policy exposes records once written).
    pub fn on_written(&mut self, offset: i64) -> bool {
        self.written_offset = self.written_offset.max(offset);
        self.update_high_watermark()
    }

    /// The log made everything below `offset` durable. Returns true if the high watermark moved.
    pub fn on_durable(&mut self, _offset: i64) -> bool {
        self.update_high_watermark()
    }

    /// What this replica itself can vouch for: durable (fsync policy) or written (page cache).
    pub fn local_committable(&self) -> i64 {
        let leo = self.log.log_end_offset();
        match self.flush_policy {
            FlushPolicy::Fsync => self.log.durable_offset().min(leo),
            FlushPolicy::PageCache { .. } => self.written_offset.min(leo),
        }
    }

    /// What a follower vouches for, as far as this leader knows: durable (fsync policy) or
    /// written (page cache); -1 if it has not fetched.
    pub fn follower_committable(&self, follower: i32) -> i64 {
        match (self.followers.get(&follower), self.flush_policy) {
            (Some(f), FlushPolicy::Fsync) => f.durable_offset,
            (Some(f), FlushPolicy::PageCache { .. }) => f.log_end_offset,
            (None, _) => -1,
        }
    }

    /// The ISR the high watermark must wait for: the committed one plus members being added.
    pub fn maximal_isr(&self) -> Vec<i32> {
        let mut isr = self.isr.clone();
        if let Some(p) = &self.pending_isr {
            for r in p {
                if !isr.contains(r) {
                    isr.push(*r);
                }
            }
        }
        isr
    }

    /// Recompute the high watermark: a leader's is the minimum over the (maximal) ISR of what
    /// each member has made durable (or written, under the page-cache policy); a follower's is
    /// the leader's, bounded by its own; a replica without a role keeps its own. It never moves
    /// backwards. Returns true if it moved.
    pub fn update_high_watermark(&mut self) -> bool {
        let mut target = self.local_committable();
        match self.role {
            Role::Leader => {
                // The maximal ISR, without building it (this runs for every partition of every
                // replica fetch): a member in both lists counts once, and min does not mind.
                for &r in self.isr.iter().chain(self.pending_isr.iter().flatten()) {
                    if r != self.me {
                        target = target.min(self.follower_committable(r));
                    }
                }
                if crate::planted!("hw-before-isr-ack") {
                    target = self.local_committable();
                }
            }
            Role::Follower { .. } => target = target.min(self.leader_high_watermark),
            // Not a replica (any more): nothing here is committed by its own say-so, and a
            // produce still waiting from its time as leader must not be acknowledged by it.
            Role::None => return false,
        }
        if target > self.high_watermark {
            tracing::trace!(node = self.me, topic = self.topic, index = self.index, role = ?self.role, isr = ?self.maximal_isr(), from = self.high_watermark, to = target, "high watermark");
            self.high_watermark = target;
            return true;
        }
        false
    }

    /// Take on a role decided by the controller. Returns true if leadership or the leader epoch
    /// changed (produces waiting on the old term must fail).
    pub fn set_role(&mut self, role: Role, leader_epoch: i32, replicas: Vec<i32>, isr: Vec<i32>, partition_epoch: i32, now_ms: u64) -> bool {
        let changed = role != self.role || leader_epoch != self.leader_epoch;
        if self.fresh && role != Role::None {
            self.fresh = false;
            if replicas.len() > 1 {
                // What this replica has durable may never have been committed by its ISR: start
                // from nothing and learn the high watermark from the leader or the followers.
                self.high_watermark = self.log.log_start_offset();
            }
        }
        if changed {
            self.followers.clear();
            self.pending_isr = None;
            if role == Role::Leader {
                // Every follower gets a full lag window from the moment this replica leads.
                for r in &replicas {
                    if *r != self.me {
                        self.followers.insert(*r, FollowerState::new(now_ms));
                    }
                }
            }
        }
        self.role = role;
        self.leader_epoch = leader_epoch;
        self.replicas = replicas;
        if partition_epoch >= self.partition_epoch || changed {
            if self.pending_isr.as_ref() == Some(&isr) || partition_epoch > self.partition_epoch {
                self.pending_isr = None;
            }
            self.isr = isr;
            self.partition_epoch = partition_epoch;
        }
        changed
    }

    /// Append batches replicated from the leader (offsets and epochs already assigned).
    pub fn append_replicated(&mut self, io: &mut impl DiskIo, records: &Bytes, now_ms: u64, wall_clock_ms: i64) -> Result<(), String> {
        let info = self.log.append_replicated(io, records, wall_clock_ms).map_err(|e| format!("{e:?}"))?;
        for header in &info.headers {
            self.remember(header, self.high_watermark);
        }
        self.unflushed_messages += info.last_offset - info.first_offset + 1;
        match self.flush_policy {
            FlushPolicy::Fsync => self.flush(io, now_ms),
            FlushPolicy::PageCache { messages, .. } => {
                if self.unflushed_messages >= messages {
                    self.flush(io, now_ms);
                }
            }
        }
        Ok(())
    }

    /// How far the log cleaner may compact: the high watermark, once this replica knows its
    /// role (right after recovery the high watermark is only this replica's durable offset,
    /// which its ISR may never have committed); `None` until then.
    pub fn clean_bound(&self) -> Option<i64> {
        (self.ready && !self.fresh && self.role != Role::None).then_some(self.high_watermark)
    }

    /// Cut the log to `offset` (a follower diverging from its new leader). Producer state
    /// forgets the batches that were cut; each window then ends with the producer's last batch
    /// left in the log, as [`Self::remember`] keeps the batches a truncation can cut.
    pub fn truncate_to(&mut self, io: &mut impl DiskIo, offset: i64) {
        if crate::planted!("skip-truncation") || !self.log.is_ready() {
            return;
        }
        let offset = offset.max(self.log.log_start_offset()).min(self.log.log_end_offset());
        if offset < self.high_watermark {
            tracing::warn!(offset, high_watermark = self.high_watermark, "truncating below the high watermark");
        }
        self.log.truncate_to(io, offset);
        let end = self.log.log_end_offset();
        self.written_offset = self.written_offset.min(end);
        self.high_watermark = self.high_watermark.min(end);
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.last_offset < end);
            entry.trim(self.high_watermark);
        }
    }

    /// Restart an empty log at `offset` (a follower behind the leader's log start). The
    /// producers' windows keep their committed batches (below the high watermark; those above
    /// may be another history's): a retry of one, should this replica lead, is still answered
    /// as a duplicate, and a producer whose later batches this replica never saw gets
    /// OUT_OF_ORDER_SEQUENCE_NUMBER rather than a second copy of a batch (Kafka clears the state
    /// here, and then accepts any sequence). A checkpoint with that state is requested at once.
    pub fn restart_at(&mut self, io: &mut impl DiskIo, offset: i64, now_ms: u64) {
        if !self.log.is_ready() {
            return;
        }
        let committed = self.high_watermark;
        self.log.truncate_fully_and_start_at(io, offset);
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.last_offset < committed);
        }
        self.written_offset = offset;
        self.high_watermark = offset;
        self.fresh_blob_requested_ms = 0;
        self.refresh_checkpoint_after_deletions(io, now_ms);
    }

    /// Validate and append a produce request's records. Errors are Kafka error codes.
    pub fn append(&mut self, io: &mut impl DiskIo, records: &Bytes, now_ms: u64, wall_clock_ms: i64) -> Result<Appended, i16> {
        if !self.ready || self.role != Role::Leader {
            return Err(error::NOT_LEADER_OR_FOLLOWER);
        }
        let batches = match batch::validate_batches(records) {
            Ok(b) => b,
            Err(batch::BatchError::Magic(_)) => return Err(error::UNSUPPORTED_FOR_MESSAGE_FORMAT),
            Err(batch::BatchError::Invalid(_)) => return Err(error::INVALID_RECORD),
            Err(_) => return Err(error::CORRUPT_MESSAGE),
        };
        for (header, range) in &batches {
            if range.len() > self.max_message_bytes {
                return Err(error::MESSAGE_TOO_LARGE);
            }
            if range.len() as u64 > self.log.config().segment_bytes {
                return Err(error::RECORD_LIST_TOO_LARGE);
            }
            if header.is_control() {
                return Err(error::INVALID_RECORD);
            }
            if header.is_transactional() {
                // Transactions arrive with their own issue; refusing beats pretending.
                return Err(error::INVALID_RECORD);
            }
            if header.compression() == 0 && header.records_count > 0 && header.last_offset_delta != header.records_count - 1 {
                // A producer's uncompressed batch has dense relative offsets (only the cleaner
                // leaves gaps).
                return Err(error::INVALID_RECORD);
            }
            if self.log.config().compact && header.compression() == 0 {
                // Kafka: "Compacted topic cannot accept message without key". (Compressed
                // batches are stored without being decompressed, so their keys go unchecked.)
                let bytes = &records[range.clone()];
                match crate::log::cleaner::records(bytes, header) {
                    Some(records) if records.iter().all(|r| r.key.is_some()) => {}
                    _ => return Err(error::INVALID_RECORD),
                }
            }
            if !self.log_append_time
                && (header.max_timestamp < wall_clock_ms.saturating_sub(self.timestamp_before_max_ms)
                    || header.max_timestamp > wall_clock_ms.saturating_add(self.timestamp_after_max_ms))
            {
                return Err(error::INVALID_TIMESTAMP);
            }
        }
        // Idempotence: all batches of one request come from one producer in practice; check each.
        if let Some(dup) = self.check_sequences(&batches)? {
            return Ok(dup);
        }
        let append_time = self.log_append_time.then_some(wall_clock_ms);
        let info: AppendInfo = self.log.append(io, records, self.leader_epoch, append_time, wall_clock_ms);
        for header in &info.headers {
            self.remember(header, self.high_watermark);
        }
        let count = info.last_offset - info.first_offset + 1;
        tracing::trace!(
            node = self.me,
            topic = self.topic,
            index = self.index,
            epoch = self.leader_epoch,
            first = info.first_offset,
            last = info.last_offset,
            "leader appended"
        );
        self.unflushed_messages += count;
        match self.flush_policy {
            FlushPolicy::Fsync => self.flush(io, now_ms),
            FlushPolicy::PageCache { messages, .. } => {
                if self.unflushed_messages >= messages {
                    self.flush(io, now_ms);
                }
            }
        }
        assert!(self.high_watermark <= self.log.log_end_offset(), "hw {} > leo {}", self.high_watermark, self.log.log_end_offset());
        Ok(Appended { first_offset: info.first_offset, last_offset: info.last_offset, log_append_time_ms: append_time.unwrap_or(-1) })
    }

    /// Request a flush (group commit); attach a producer-state checkpoint at most once a second.
    pub fn flush(&mut self, io: &mut impl DiskIo, now_ms: u64) {
        self.commit(io, now_ms, false);
    }

    /// A group commit, with a producer-state checkpoint if `checkpoint` or none for a second.
    fn commit(&mut self, io: &mut impl DiskIo, now_ms: u64, checkpoint: bool) {
        self.unflushed_messages = 0;
        self.last_flush_ms = now_ms;
        let checkpoint = if checkpoint || now_ms >= self.last_checkpoint_ms + 1000 || self.last_checkpoint_ms == 0 {
            self.last_checkpoint_ms = now_ms.max(1);
            Some(encode_producers(&self.producers))
        } else {
            None
        };
        self.log.flush(io, checkpoint);
    }

    /// Periodic work: time-based flush for the page-cache policy, and a fresh checkpoint after
    /// deletions.
    pub fn tick(&mut self, io: &mut impl DiskIo, now_ms: u64) {
        if let FlushPolicy::PageCache { ms, .. } = self.flush_policy {
            if self.unflushed_messages > 0 && ms != i64::MAX && now_ms >= self.last_flush_ms + ms.max(0) as u64 {
                self.flush(io, now_ms);
            }
        }
        self.refresh_checkpoint_after_deletions(io, now_ms);
    }

    /// Deletions (DeleteRecords, retention, a follower taking its leader's log start) moved the
    /// log start past the offset the checkpoint's producer-state blob describes, or a follower
    /// restarted its log empty: recovery replays only the batches left in the log, so after a
    /// restart the producers' windows would miss the deleted batches. A group commit carrying a
    /// fresh blob is requested (at most every [`CHECKPOINT_RETRY_MS`] while one is outstanding).
    pub fn refresh_checkpoint_after_deletions(&mut self, io: &mut impl DiskIo, now_ms: u64) {
        if !self.ready || !self.log.checkpoint_blob_outdated() {
            self.fresh_blob_requested_ms = 0;
            return;
        }
        if self.fresh_blob_requested_ms != 0 && now_ms < self.fresh_blob_requested_ms + CHECKPOINT_RETRY_MS {
            return;
        }
        self.fresh_blob_requested_ms = now_ms.max(1);
        self.commit(io, now_ms, true);
    }

    /// Kafka's sequence rules: a batch that repeats one of the last five is a duplicate (answered
    /// with the original offsets); otherwise the first sequence must follow the last one, a new
    /// epoch must start at 0, an older epoch is fenced.
    fn check_sequences(&self, batches: &[(BatchHeader, std::ops::Range<usize>)]) -> Result<Option<Appended>, i16> {
        for (header, _) in batches {
            if header.producer_id < 0 {
                continue;
            }
            // A producer this replica keeps no state for (all its batches deleted, or it never
            // wrote here) starts at any sequence, as Kafka has accepted since KIP-360.
            let Some(entry) = self.producers.get(&header.producer_id) else { continue };
            if header.producer_epoch < entry.epoch {
                return Err(error::INVALID_PRODUCER_EPOCH);
            }
            if header.producer_epoch > entry.epoch {
                if header.base_sequence != 0 {
                    return Err(error::OUT_OF_ORDER_SEQUENCE_NUMBER);
                }
                continue;
            }
            if let Some(b) = entry.batches.iter().find(|b| b.first_sequence == header.base_sequence && b.last_sequence == header.last_sequence()) {
                if crate::planted!("idempotent-accepts-duplicate") {
                    continue;
                }
                if batches.len() == 1 {
                    return Ok(Some(Appended {
                        first_offset: b.first_offset,
                        last_offset: b.last_offset,
                        log_append_time_ms: if self.log_append_time { b.max_timestamp } else { -1 },
                    }));
                }
                return Err(error::DUPLICATE_SEQUENCE_NUMBER);
            }
            let last = entry.batches.back().map(|b| b.last_sequence).unwrap_or(-1);
            let expected = if last == i32::MAX { 0 } else { last + 1 };
            if header.base_sequence != expected {
                tracing::debug!(
                    node = self.me,
                    topic = self.topic,
                    index = self.index,
                    producer = header.producer_id,
                    epoch = header.producer_epoch,
                    sequence = header.base_sequence,
                    expected,
                    window = ?entry.batches,
                    "out-of-order sequence"
                );
                return Err(error::OUT_OF_ORDER_SEQUENCE_NUMBER);
            }
        }
        Ok(None)
    }

    /// Add a batch to its producer's window. The window keeps the last
    /// [`PRODUCER_BATCH_WINDOW`] batches below `high_watermark` (what is committed, as far as
    /// this replica knows) and every batch above it: a truncation (never below the high watermark
    /// after a clean election) cuts only the latter, and the window must then still hold the
    /// producer's last five batches left in the log (Kafka rebuilds it from the log instead).
    fn remember(&mut self, header: &BatchHeader, high_watermark: i64) {
        if header.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(ProducerBatch {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            first_offset: header.base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
        });
        entry.trim(high_watermark);
    }
}

/// Serialise producer state for the log checkpoint: a count, then per producer its id, epoch and
/// batches (fixed-width big-endian fields).
pub fn encode_producers(producers: &BTreeMap<i64, ProducerEntry>) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(producers.len() as u32);
    for (id, entry) in producers {
        b.put_i64(*id);
        b.put_i16(entry.epoch);
        // The newest batches (at most 255; the window keeps more only while they are above the
        // high watermark).
        let skip = entry.batches.len().saturating_sub(u8::MAX as usize);
        b.put_u8((entry.batches.len() - skip) as u8);
        for pb in entry.batches.iter().skip(skip) {
            b.put_i32(pb.first_sequence);
            b.put_i32(pb.last_sequence);
            b.put_i64(pb.first_offset);
            b.put_i64(pb.last_offset);
            b.put_i64(pb.max_timestamp);
        }
    }
    b.freeze()
}

/// Inverse of [`encode_producers`]; `None` if the blob is malformed (an empty blob is no state).
pub fn decode_producers(blob: &Bytes) -> Option<BTreeMap<i64, ProducerEntry>> {
    let mut out = BTreeMap::new();
    if blob.is_empty() {
        return Some(out);
    }
    let mut b = blob.clone();
    if b.remaining() < 4 {
        return None;
    }
    let count = b.get_u32();
    for _ in 0..count {
        if b.remaining() < 11 {
            return None;
        }
        let id = b.get_i64();
        let epoch = b.get_i16();
        let n = b.get_u8() as usize;
        if b.remaining() < n * 32 {
            return None;
        }
        let mut batches = VecDeque::new();
        for _ in 0..n {
            batches.push_back(ProducerBatch {
                first_sequence: b.get_i32(),
                last_sequence: b.get_i32(),
                first_offset: b.get_i64(),
                last_offset: b.get_i64(),
                max_timestamp: b.get_i64(),
            });
        }
        out.insert(id, ProducerEntry { epoch, batches });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mem_disk::{MemDisk, QueuedIo};
    use crate::log::LogEvent;

    /// A recovered, empty partition on node 2 of replicas [1, 2].
    fn recovered(disk: &mut MemDisk, io: &mut QueuedIo) -> Partition {
        recovered_with(disk, io, FlushPolicy::Fsync)
    }

    fn recovered_with(disk: &mut MemDisk, io: &mut QueuedIo, policy: FlushPolicy) -> Partition {
        let mut p = Partition::new("t", 0, 1, "t-0".into(), LogConfig::default());
        p.me = 2;
        p.flush_policy = policy;
        p.start(io);
        let events = disk.run(io, &mut p.log);
        let Some(LogEvent::Recovered { checkpoint, replay }) = events.into_iter().find(|e| matches!(e, LogEvent::Recovered { .. })) else {
            panic!("not recovered")
        };
        p.on_recovered(io, 0, &checkpoint, &replay);
        p
    }

    /// A one-record batch of producer 7 (epoch 0) with `sequence`, placed at `offset` in leader
    /// epoch 1 as a leader would have (the CRC does not cover those fields).
    fn replicated(sequence: i32, offset: i64) -> Bytes {
        let mut b = batch::build_batch(&[(None, Some(&b"v"[..]), 1_000)], (7, 0, sequence)).to_vec();
        b[0..8].copy_from_slice(&offset.to_be_bytes());
        b[12..16].copy_from_slice(&1i32.to_be_bytes());
        Bytes::from(b)
    }

    /// A follower whose truncation cuts a producer's newest batches (four of them here, with
    /// the one before them its fifth-newest) still holds that producer's last five batches left
    /// in the log: promoted to leader, it answers retries of them as duplicates with their
    /// offsets and takes the next sequence, instead of refusing them as out of order. Batches
    /// below the high watermark are let go beyond the last five.
    #[test]
    fn truncation_keeps_the_producer_window_of_what_is_left() {
        let (mut disk, mut io) = (MemDisk::new(), QueuedIo::default());
        let mut p = recovered(&mut disk, &mut io);
        p.set_role(Role::Follower { leader: 1 }, 1, vec![1, 2], vec![1, 2], 0, 0);
        for sequence in 0..10 {
            p.append_replicated(&mut io, &replicated(sequence, sequence as i64), 0, 1_000).expect("append");
            disk.run(&mut io, &mut p.log);
            // The leader's high watermark, three batches behind.
            p.high_watermark = (sequence as i64 - 3).max(0);
        }
        // The new leader's log ends at the high watermark, 6: the last four batches go.
        p.truncate_to(&mut io, 6);
        disk.run(&mut io, &mut p.log);
        let window = |p: &Partition| -> Vec<i32> { p.producer_windows()[&7].batches.iter().map(|b| b.last_sequence).collect() };
        assert_eq!(window(&p), vec![1, 2, 3, 4, 5], "the window must hold the last five batches left in the log");
        p.set_role(Role::Leader, 2, vec![1, 2], vec![2], 1, 0);
        let batch_of = |sequence: i32| batch::build_batch(&[(None, Some(&b"v"[..]), 1_000)], (7, 0, sequence));
        for sequence in [5, 1] {
            let dup = p.append(&mut io, &batch_of(sequence), 0, 1_000).expect("a retry is a duplicate");
            assert_eq!((dup.first_offset, dup.last_offset), (sequence as i64, sequence as i64));
        }
        assert_eq!(p.append(&mut io, &batch_of(6), 0, 1_000).map(|a| a.first_offset), Ok(6));
        disk.run(&mut io, &mut p.log);
        p.high_watermark = 7;
        assert_eq!(p.append(&mut io, &batch_of(7), 0, 1_000).map(|a| a.first_offset), Ok(7));
        assert_eq!(window(&p), vec![2, 3, 4, 5, 6, 7], "five below the high watermark (7), and the one above it");
    }

    /// The same after a restart, under Kafka's page-cache policy: recovery replays a producer's
    /// batches and must not trim its window at the high watermark it recovers (its whole log, as
    /// far as it knows), since the ISR may not have committed that; a truncation right after the
    /// restart then still leaves the last five batches in the log in the window.
    #[test]
    fn a_restart_keeps_the_producer_window_of_what_a_truncation_leaves() {
        let page_cache = FlushPolicy::PageCache { messages: i64::MAX, ms: i64::MAX };
        let (mut disk, mut io) = (MemDisk::new(), QueuedIo::default());
        let mut p = recovered_with(&mut disk, &mut io, page_cache);
        p.set_role(Role::Follower { leader: 1 }, 1, vec![1, 2], vec![1, 2], 0, 0);
        for sequence in 0..10 {
            p.append_replicated(&mut io, &replicated(sequence, sequence as i64), 0, 1_000).expect("append");
            disk.run(&mut io, &mut p.log);
        }
        // The process restarts (the machine does not): all ten batches are replayed.
        let mut p = recovered_with(&mut disk, &mut io, page_cache);
        assert_eq!(p.high_watermark, 10, "recovery's own high watermark: the whole log");
        p.set_role(Role::Follower { leader: 1 }, 2, vec![1, 2], vec![1], 0, 0);
        // The new leader's log ends at 6: the last four batches go.
        p.truncate_to(&mut io, 6);
        disk.run(&mut io, &mut p.log);
        let window: Vec<i32> = p.producer_windows()[&7].batches.iter().map(|b| b.last_sequence).collect();
        assert!(window.ends_with(&[1, 2, 3, 4, 5]), "the window must hold the last five batches left in the log: {window:?}");
    }

    /// DeleteRecords moves the log start past a producer's batches, then the node restarts. With
    /// the checkpoint refreshed after the deletion, the producer's window survives: a retry of a
    /// deleted batch is answered with its offsets, not written again, and the next sequence is
    /// accepted. Restarted before that checkpoint, the window is the stale blob's: the retry is
    /// refused as out of order (the producer starts over), never written twice (simulator seed
    /// 205033 of cluster-3-delete-records, when recovery dropped such producers).
    #[test]
    fn deletions_keep_the_producer_window_across_a_restart() {
        let batch_of = |sequence: i32| batch::build_batch(&[(None, Some(&b"v"[..]), 1_000)], (7, 0, sequence));
        for refreshed in [true, false] {
            let (mut disk, mut io) = (MemDisk::new(), QueuedIo::default());
            let mut p = recovered(&mut disk, &mut io);
            p.set_role(Role::Leader, 1, vec![2], vec![2], 0, 0);
            // The first flush carries a blob (sequence 0 only); the next ones, within a second, none.
            for sequence in 0..5 {
                assert_eq!(p.append(&mut io, &batch_of(sequence), 1, 1_000).map(|a| a.first_offset), Ok(sequence as i64));
                disk.run(&mut io, &mut p.log);
            }
            assert_eq!(p.log.delete_records(&mut io, 5), Ok(5));
            disk.run(&mut io, &mut p.log);
            if refreshed {
                p.tick(&mut io, 2);
                disk.run(&mut io, &mut p.log);
                assert_eq!(p.log.checkpoint_offset(), 5, "the refresh wrote a checkpoint from the new log start");
            }
            let mut p = recovered(&mut disk, &mut io);
            assert_eq!(p.log.log_start_offset(), 5);
            p.set_role(Role::Leader, 2, vec![2], vec![2], 0, 0);
            let retry = p.append(&mut io, &batch_of(4), 1, 1_000).map(|a| a.first_offset);
            if refreshed {
                assert_eq!(retry, Ok(4), "a retry of a deleted batch is a duplicate: {:?}", p.producer_windows());
                assert_eq!(p.append(&mut io, &batch_of(5), 1, 1_000).map(|a| a.first_offset), Ok(5), "the next sequence");
            } else {
                assert_eq!(retry, Err(error::OUT_OF_ORDER_SEQUENCE_NUMBER), "stale window: refused, not written again");
                assert_eq!(p.log.log_end_offset(), 5);
            }
        }
    }

    /// A follower whose log ends below its leader's log start restarts it empty there. It keeps
    /// the producers' committed batches (so as a leader it answers a retry of one as a
    /// duplicate and refuses a sequence it cannot place), and the checkpoint it then writes
    /// carries them across a restart (simulator seed 205033 of cluster-3-delete-records: such a
    /// follower, elected, wrote two retried batches a second time).
    #[test]
    fn a_follower_restarted_at_the_leaders_log_start_keeps_committed_producer_windows() {
        let batch_of = |sequence: i32| batch::build_batch(&[(None, Some(&b"v"[..]), 1_000)], (7, 0, sequence));
        let (mut disk, mut io) = (MemDisk::new(), QueuedIo::default());
        let mut p = recovered(&mut disk, &mut io);
        p.set_role(Role::Leader, 1, vec![2], vec![2], 0, 0);
        for sequence in 0..5 {
            assert_eq!(p.append(&mut io, &batch_of(sequence), 1, 1_000).map(|a| a.first_offset), Ok(sequence as i64));
            let events = disk.run(&mut io, &mut p.log);
            for e in events {
                if let LogEvent::Durable { offset } = e {
                    p.on_durable(offset);
                }
            }
        }
        assert_eq!(p.high_watermark, 5);
        p.set_role(Role::Follower { leader: 3 }, 2, vec![2, 3], vec![3], 0, 0);
        p.restart_at(&mut io, 8, 10);
        disk.run(&mut io, &mut p.log);
        assert!(!p.log.checkpoint_blob_outdated(), "a checkpoint with the windows was written");
        let mut p = recovered(&mut disk, &mut io);
        assert_eq!((p.log.log_start_offset(), p.log.log_end_offset()), (8, 8));
        p.set_role(Role::Leader, 3, vec![2], vec![2], 0, 0);
        assert_eq!(p.append(&mut io, &batch_of(4), 1, 1_000).map(|a| a.first_offset), Ok(4), "a retry of a committed batch is a duplicate");
        assert_eq!(p.append(&mut io, &batch_of(6), 1, 1_000).map(|a| a.first_offset), Err(error::OUT_OF_ORDER_SEQUENCE_NUMBER), "batches it never saw");
        assert_eq!(p.log.log_end_offset(), 8);
    }

    /// Producer state survives an encode/decode round trip, and garbage decodes to None.
    #[test]
    fn producer_state_round_trip() {
        let mut m = BTreeMap::new();
        let mut e = ProducerEntry { epoch: 3, batches: VecDeque::new() };
        e.batches.push_back(ProducerBatch { first_sequence: 0, last_sequence: 9, first_offset: 100, last_offset: 109, max_timestamp: 7 });
        m.insert(42, e);
        assert_eq!(decode_producers(&encode_producers(&m)), Some(m));
        assert_eq!(decode_producers(&Bytes::from_static(&[0, 0, 0, 9, 1])), None);
    }
}
