//! Kafka v2 record batches as they sit on disk and on the wire.
//!
//! runnel stores batches exactly as the producer sent them, except for three header fields the
//! broker owns: the base offset, the partition leader epoch, and (for `LogAppendTime` topics) the
//! max timestamp. Whenever the CRC-covered part changes, the CRC-32C is recomputed.
//!
//! Layout (big-endian): baseOffset i64 @0, batchLength i32 @8 (bytes after this field),
//! partitionLeaderEpoch i32 @12, magic i8 @16, crc u32 @17 (CRC-32C of bytes 21..), attributes
//! i16 @21, lastOffsetDelta i32 @23, baseTimestamp i64 @27, maxTimestamp i64 @35, producerId i64
//! @43, producerEpoch i16 @51, baseSequence i32 @53, recordsCount i32 @57, records @61.

use bytes::{Bytes, BytesMut};

/// Size of the fixed batch header.
pub const BATCH_HEADER_LEN: usize = 61;
/// Offset of the `batchLength` field plus its size: total batch size = batchLength + 12.
pub const LOG_OVERHEAD: usize = 12;
/// Attribute bit: timestamps are LogAppendTime.
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit: the batch is a control batch (transaction marker).
pub const ATTR_CONTROL: i16 = 0x20;
/// No producer id.
pub const NO_PRODUCER_ID: i64 = -1;

/// Why a batch was rejected. Each maps onto a Kafka error code in the broker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than the header or the declared length (Kafka: CORRUPT_MESSAGE).
    #[error("truncated batch: {0}")]
    Truncated(String),
    /// A magic other than 2 (Kafka: UNSUPPORTED_FOR_MESSAGE_FORMAT / CORRUPT_MESSAGE).
    #[error("unsupported magic {0}")]
    Magic(i8),
    /// CRC mismatch (Kafka: CORRUPT_MESSAGE).
    #[error("crc mismatch: stored {stored:#x}, computed {computed:#x}")]
    Crc {
        /// CRC in the header.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
    /// Header fields that contradict each other (Kafka: INVALID_RECORD / CORRUPT_MESSAGE).
    #[error("invalid batch: {0}")]
    Invalid(String),
}

/// The decoded header of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the length field; the whole batch is `batch_length + 12` bytes.
    pub batch_length: i32,
    /// Leader epoch of the leader that appended it.
    pub partition_leader_epoch: i32,
    /// Must be 2.
    pub magic: i8,
    /// CRC-32C of bytes 21.. .
    pub crc: u32,
    /// Compression (bits 0-2), timestamp type, transactional, control.
    pub attributes: i16,
    /// last offset - base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch (or the append time).
    pub max_timestamp: i64,
    /// Idempotent/transactional producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

impl BatchHeader {
    /// Decode the header at the start of `b` (which must hold at least [`BATCH_HEADER_LEN`] bytes).
    pub fn parse(b: &[u8]) -> Result<BatchHeader, BatchError> {
        if b.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated(format!("{} bytes, header needs {BATCH_HEADER_LEN}", b.len())));
        }
        Ok(BatchHeader {
            base_offset: be_i64(b, 0),
            batch_length: be_i32(b, 8),
            partition_leader_epoch: be_i32(b, 12),
            magic: b[16] as i8,
            crc: u32::from_be_bytes(b[17..21].try_into().expect("4 bytes")),
            attributes: be_i16(b, 21),
            last_offset_delta: be_i32(b, 23),
            base_timestamp: be_i64(b, 27),
            max_timestamp: be_i64(b, 35),
            producer_id: be_i64(b, 43),
            producer_epoch: be_i16(b, 51),
            base_sequence: be_i32(b, 53),
            records_count: be_i32(b, 57),
        })
    }

    /// Total size of the batch in bytes.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Offset after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Sequence number of the last record (wrapping as Kafka does).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        ((self.base_sequence as i64 + self.last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32
    }

    /// Compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> i16 {
        self.attributes & 0x07
    }

    /// Whether this is a transactional batch.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Whether this is a control batch.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Split `data` into batches and check each one: a whole header, a sane length within `data`,
/// magic 2, a matching CRC-32C, consistent counts. Returns the headers with each batch's byte range.
/// Never allocates from a length or count it read.
pub fn validate_batches(data: &[u8]) -> Result<Vec<(BatchHeader, std::ops::Range<usize>)>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let header = check_one(&data[at..])?;
        let end = at + header.total_len();
        out.push((header, at..end));
        at = end;
    }
    if out.is_empty() {
        return Err(BatchError::Truncated("no batch".into()));
    }
    Ok(out)
}

/// Check the batch at the start of `b` (header, length, magic, CRC) and return its header.
pub fn check_one(b: &[u8]) -> Result<BatchHeader, BatchError> {
    check_one_with(b, true)
}

/// [`check_one`], optionally without the CRC (only the planted bug `recovery-skips-crc` does that).
pub fn check_one_with(b: &[u8], verify_crc: bool) -> Result<BatchHeader, BatchError> {
    if b.len() < 17 {
        return Err(BatchError::Truncated(format!("{} bytes before the magic byte", b.len())));
    }
    let magic = b[16] as i8;
    if magic != 2 {
        return Err(BatchError::Magic(magic));
    }
    let header = BatchHeader::parse(b)?;
    if (header.batch_length as i64) < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i64 {
        return Err(BatchError::Invalid(format!("batch length {} below header size", header.batch_length)));
    }
    if header.total_len() > b.len() {
        return Err(BatchError::Truncated(format!("batch declares {} bytes, {} present", header.total_len(), b.len())));
    }
    let computed = if verify_crc { crc32c::crc32c(&b[21..header.total_len()]) } else { header.crc };
    if computed != header.crc {
        return Err(BatchError::Crc { stored: header.crc, computed });
    }
    if header.records_count < 0 || header.last_offset_delta < 0 {
        return Err(BatchError::Invalid(format!("records count {} last offset delta {}", header.records_count, header.last_offset_delta)));
    }
    if header.records_count as i64 > header.last_offset_delta as i64 + 1 && header.compression() == 0 && !header.is_control() {
        // More records than offsets. (Fewer is fine: compaction leaves gaps inside batches.)
        return Err(BatchError::Invalid(format!("last offset delta {} for {} records", header.last_offset_delta, header.records_count)));
    }
    // Every record takes at least 7 bytes; a count beyond that is a lie (uncompressed only).
    if header.compression() == 0 && header.records_count as usize > (header.total_len() - BATCH_HEADER_LEN) / 7 + 1 {
        return Err(BatchError::Invalid(format!("{} records cannot fit in {} bytes", header.records_count, header.total_len())));
    }
    Ok(header)
}

/// Rewrite the broker-owned header fields of one batch in place and recompute its CRC.
/// `append_time` is `Some` for LogAppendTime topics: it becomes the max timestamp and the
/// timestamp-type bit is set.
pub fn assign(batch: &mut BytesMut, base_offset: i64, leader_epoch: i32, append_time: Option<i64>) {
    assert!(batch.len() >= BATCH_HEADER_LEN, "assign on a {} byte batch", batch.len());
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    let mut crc_changed = false;
    if let Some(ts) = append_time {
        let attributes = be_i16(batch, 21) | ATTR_LOG_APPEND_TIME;
        batch[21..23].copy_from_slice(&attributes.to_be_bytes());
        batch[35..43].copy_from_slice(&ts.to_be_bytes());
        crc_changed = true;
    }
    if crc_changed {
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Iterate over the whole batches at the start of `data`, stopping at the first incomplete one.
/// Yields `(header, byte range)`; does not check CRCs.
pub fn iter_headers(data: &Bytes) -> impl Iterator<Item = (BatchHeader, std::ops::Range<usize>)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let rest = &data[at..];
        let header = BatchHeader::parse(rest).ok()?;
        if header.batch_length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 || header.total_len() > rest.len() {
            return None;
        }
        let range = at..at + header.total_len();
        at = range.end;
        Some((header, range))
    })
}

/// The offset after the last whole batch at the start of `data` (where a consumer fetches
/// next), `None` if there is none. A consumer must move on by batches, not by the records it saw:
/// a cleaned batch may end with offsets whose records are gone, or hold no record at all.
pub fn end_of_batches(data: &Bytes) -> Option<i64> {
    iter_headers(data).last().map(|(header, _)| header.next_offset())
}

/// One record to put in a batch: `(key, value, timestamp)`.
pub type PlainRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, i64);

/// Build an uncompressed v2 batch (used by tests, benchmarks and the simulator's workload).
/// `producer` is `(id, epoch, base_sequence)`.
pub fn build_batch(records: &[PlainRecord<'_>], producer: (i64, i16, i32)) -> Bytes {
    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }
    let base_ts = records.first().map(|r| r.2).unwrap_or(0);
    let max_ts = records.iter().map(|r| r.2).max().unwrap_or(0);
    let mut body = Vec::new();
    for (i, (key, value, ts)) in records.iter().enumerate() {
        let mut rec = vec![0u8];
        varint(&mut rec, ts - base_ts);
        varint(&mut rec, i as i64);
        match key {
            Some(k) => {
                varint(&mut rec, k.len() as i64);
                rec.extend_from_slice(k);
            }
            None => varint(&mut rec, -1),
        }
        match value {
            Some(v) => {
                varint(&mut rec, v.len() as i64);
                rec.extend_from_slice(v);
            }
            None => varint(&mut rec, -1),
        }
        varint(&mut rec, 0);
        varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + body.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((BATCH_HEADER_LEN - LOG_OVERHEAD + body.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(records.len() as i32 - 1).max(0).to_be_bytes());
    b.extend_from_slice(&base_ts.to_be_bytes());
    b.extend_from_slice(&max_ts.to_be_bytes());
    b.extend_from_slice(&producer.0.to_be_bytes());
    b.extend_from_slice(&producer.1.to_be_bytes());
    b.extend_from_slice(&producer.2.to_be_bytes());
    b.extend_from_slice(&(records.len() as i32).to_be_bytes());
    b.extend_from_slice(&body);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A built batch validates; flipping any byte after the CRC field is caught.
    #[test]
    fn crc_catches_corruption() {
        let batch = build_batch(&[(Some(b"k"), Some(b"v"), 5), (None, Some(b"w"), 9)], (-1, -1, -1));
        let headers = validate_batches(&batch).unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].0.records_count, 2);
        assert_eq!(headers[0].0.max_timestamp, 9);
        for i in 21..batch.len() {
            let mut bad = batch.to_vec();
            bad[i] ^= 0x40;
            assert!(validate_batches(&bad).is_err(), "flip at {i} not caught");
        }
    }

    /// Assigning offsets keeps the CRC valid; LogAppendTime rewrites the max timestamp.
    #[test]
    fn assign_keeps_crc_valid() {
        let batch = build_batch(&[(None, Some(b"v"), 5)], (-1, -1, -1));
        let mut b = BytesMut::from(&batch[..]);
        assign(&mut b, 42, 3, Some(1000));
        let h = check_one(&b).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch, h.max_timestamp), (42, 3, 1000));
        assert_ne!(h.attributes & ATTR_LOG_APPEND_TIME, 0);
    }

    /// Truncated input and a giant declared length are errors, not panics or allocations.
    #[test]
    fn hostile_lengths() {
        let batch = build_batch(&[(None, Some(b"v"), 5)], (-1, -1, -1));
        for cut in 0..batch.len() {
            assert!(validate_batches(&batch[..cut]).is_err());
        }
        let mut giant = batch.to_vec();
        giant[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(validate_batches(&giant).is_err());
        giant[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(validate_batches(&giant).is_err());
    }
}
