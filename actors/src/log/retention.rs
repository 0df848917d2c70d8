//! Choosing which segments to delete: `retention.ms`, `retention.bytes` and DeleteRecords.
//!
//! Pure functions over the segment list; the log issues the deletions. Only a prefix of the log
//! (the oldest segments) is ever deleted, and never the active (last) segment: the log rolls first
//! when the active segment itself has to go.
//!
//! Choices: a segment whose records carry no timestamp (max timestamp -1) never expires by time
//! (Kafka falls back to the file's mtime, which an actor cannot read); the size rule is Kafka's:
//! delete the oldest segment only while the log stays at or above `retention.bytes` without it.

use super::segment::Segment;
use super::LogConfig;

/// How many of the oldest segments (never the last) are expired by `retention.ms` and
/// `retention.bytes` at `now_wall_ms`, among those wholly below `upper_bound` (the high
/// watermark: as in Kafka, a segment holding records the ISR has not committed is kept, so the
/// log start offset never passes the high watermark).
pub fn expired_segments(segments: &[Segment], config: &LogConfig, now_wall_ms: i64, upper_bound: i64) -> usize {
    let candidates = segments[..segments.len().saturating_sub(1)].iter().take_while(|s| s.next_offset <= upper_bound).count();
    let mut count = 0;
    if config.retention_ms >= 0 {
        let cutoff = now_wall_ms.saturating_sub(config.retention_ms);
        count = segments[..candidates].iter().take_while(|s| s.max_timestamp >= 0 && s.max_timestamp < cutoff).count();
    }
    if config.retention_bytes >= 0 {
        let total: u64 = segments[count..].iter().map(|s| s.size_bytes).sum();
        let mut excess = total as i64 - config.retention_bytes;
        for segment in &segments[count..candidates] {
            if excess - (segment.size_bytes as i64) < 0 {
                break;
            }
            excess -= segment.size_bytes as i64;
            count += 1;
        }
    }
    count
}

/// How many of the oldest segments lie entirely below `log_start_offset` (all of their offsets
/// are deleted). Includes the last segment when it is non-empty and wholly below: the caller must
/// roll before deleting it.
pub fn segments_below(segments: &[Segment], log_start_offset: i64) -> usize {
    segments.iter().take_while(|s| !s.is_empty() && s.next_offset <= log_start_offset).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(base: i64, next: i64, size_bytes: u64, max_timestamp: i64) -> Segment {
        let mut s = Segment::new(base, &LogConfig::default());
        s.next_offset = next;
        s.size_bytes = size_bytes;
        s.max_timestamp = max_timestamp;
        s
    }

    /// Time retention deletes the expired prefix but never the active segment, and stops at the
    /// first young (or timestamp-less) segment.
    #[test]
    fn by_time() {
        let config = LogConfig { retention_ms: 100, ..LogConfig::default() };
        let segs = vec![segment(0, 10, 10, 50), segment(10, 20, 10, 60), segment(20, 30, 10, 500), segment(30, 40, 10, 40)];
        assert_eq!(expired_segments(&segs, &config, 200, i64::MAX), 2);
        assert_eq!(expired_segments(&segs, &config, 10_000, i64::MAX), 3);
        let segs = vec![segment(0, 10, 10, -1), segment(10, 20, 10, 60), segment(20, 30, 10, 70)];
        assert_eq!(expired_segments(&segs, &config, 10_000, i64::MAX), 0);
    }

    /// Neither rule deletes a segment with records at or above the high watermark.
    #[test]
    fn bounded_by_the_high_watermark() {
        let segs = vec![segment(0, 10, 10, 1), segment(10, 20, 10, 1), segment(20, 30, 10, 1), segment(30, 40, 10, 1)];
        let by_time = LogConfig { retention_ms: 100, ..LogConfig::default() };
        assert_eq!(expired_segments(&segs, &by_time, 10_000, 20), 2);
        assert_eq!(expired_segments(&segs, &by_time, 10_000, 19), 1);
        assert_eq!(expired_segments(&segs, &by_time, 10_000, 0), 0);
        let by_size = LogConfig { retention_ms: -1, retention_bytes: 0, ..LogConfig::default() };
        assert_eq!(expired_segments(&segs, &by_size, 0, 25), 2);
    }

    /// Size retention deletes oldest segments only while the remainder stays >= retention.bytes.
    #[test]
    fn by_size() {
        let config = LogConfig { retention_ms: -1, retention_bytes: 25, ..LogConfig::default() };
        let segs = vec![segment(0, 10, 10, 1), segment(10, 20, 10, 1), segment(20, 30, 10, 1), segment(30, 40, 10, 1)];
        assert_eq!(expired_segments(&segs, &config, 0, i64::MAX), 1);
        let config = LogConfig { retention_bytes: 0, ..config };
        assert_eq!(expired_segments(&segs, &config, 0, i64::MAX), 3);
    }

    /// DeleteRecords selects segments whose next offset is at or below the new log start.
    #[test]
    fn below_log_start() {
        let segs = vec![segment(0, 10, 10, 1), segment(10, 20, 10, 1), segment(20, 20, 0, -1)];
        assert_eq!(segments_below(&segs, 9), 0);
        assert_eq!(segments_below(&segs, 10), 1);
        assert_eq!(segments_below(&segs, 20), 2);
    }
}
