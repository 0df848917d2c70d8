//! ListOffsets (earliest, latest, max timestamp, by timestamp) and OffsetForLeaderEpoch.

use super::{codec, error, Broker, BrokerMsg};
use crate::broker::codec::Request;
use crate::core::{ConnId, Cx};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

/// ListOffsets special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub(crate) struct ListOffsetsState {
    conn: ConnId,
    seq: u64,
    request: Box<Request>,
    response: ListOffsetsResponse,
    outstanding: usize,
}

impl Broker {
    pub(crate) fn on_list_offsets(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: ListOffsetsRequest) {
        let id = self.fresh_id();
        let mut response = ListOffsetsResponse::default();
        let mut outstanding = 0;
        for (t_slot, t) in r.topics.iter().enumerate() {
            let name = t.name.0.to_string();
            let mut tr = ListOffsetsTopicResponse::default().with_name(t.name.clone());
            for (p_slot, q) in t.partitions.iter().enumerate() {
                let mut pr =
                    ListOffsetsPartitionResponse::default().with_partition_index(q.partition_index).with_timestamp(-1).with_offset(-1).with_leader_epoch(-1);
                match self.ready_partition(&name, q.partition_index) {
                    Err(e) => pr.error_code = e,
                    Ok(p) if q.current_leader_epoch >= 0 && q.current_leader_epoch != p.leader_epoch => {
                        pr.error_code = if q.current_leader_epoch < p.leader_epoch { error::FENCED_LEADER_EPOCH } else { error::UNKNOWN_LEADER_EPOCH };
                    }
                    Ok(p) => {
                        if request.version >= 4 {
                            pr.leader_epoch = p.leader_epoch;
                        }
                        match q.timestamp {
                            LATEST if high_watermark_lags(p) => pr.error_code = error::OFFSET_NOT_AVAILABLE,
                            LATEST => pr.offset = p.high_watermark,
                            EARLIEST => pr.offset = p.log.log_start_offset(),
                            MAX_TIMESTAMP => {
                                let (ts, offset) = p.log.max_timestamp();
                                set_answer(&mut pr, fetchable_answer(p, Some((offset, ts))));
                            }
                            ts if ts >= 0 => {
                                let query_id = self.next_id + 1;
                                self.next_id += 1;
                                let answer =
                                    self.with_partition(cx, &name, q.partition_index as usize, |p, io| p.log.offset_for_timestamp(io, query_id, ts)).flatten();
                                match answer {
                                    Some(found) => {
                                        set_answer(&mut pr, self.ready_partition(&name, q.partition_index).and_then(|p| fetchable_answer(p, found)));
                                    }
                                    None => {
                                        self.timestamp_queries.insert(query_id, (id, t_slot, p_slot));
                                        outstanding += 1;
                                    }
                                }
                            }
                            _ => pr.error_code = error::INVALID_REQUEST,
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            response.topics.push(tr);
        }
        self.list_offsets.insert(id, ListOffsetsState { conn, seq, request, response, outstanding });
        self.maybe_finish_list_offsets(cx, id);
    }

    pub(crate) fn on_timestamp_found(&mut self, cx: &mut Cx<BrokerMsg>, query_id: u64, found: Result<Option<(i64, i64)>, String>) {
        let Some((id, t, p)) = self.timestamp_queries.remove(&query_id) else { return };
        let Some(state) = self.list_offsets.get(&id) else { return };
        let topic = state.response.topics[t].name.0.to_string();
        let index = state.response.topics[t].partitions[p].partition_index;
        // Judged against the partition as it is now; one no longer led here says so.
        let answer = match (self.ready_partition(&topic, index), found) {
            (Err(code), _) => Err(code),
            (Ok(p), Ok(found)) => fetchable_answer(p, found),
            // The segment read back damaged every time: say so rather than "no such record".
            (Ok(_), Err(why)) => {
                tracing::warn!(query_id, "ListOffsets by timestamp failed: {why}");
                Err(error::KAFKA_STORAGE_ERROR)
            }
        };
        let Some(state) = self.list_offsets.get_mut(&id) else { return };
        set_answer(&mut state.response.topics[t].partitions[p], answer);
        state.outstanding -= 1;
        self.maybe_finish_list_offsets(cx, id);
    }

    fn maybe_finish_list_offsets(&mut self, cx: &mut Cx<BrokerMsg>, id: u64) {
        if self.list_offsets.get(&id).is_some_and(|s| s.outstanding == 0) {
            let s = self.list_offsets.remove(&id).expect("present");
            let frame = codec::respond(&s.request, &s.response);
            self.send(cx, s.conn, s.seq, frame);
        }
    }

    /// One node, one leader epoch: the end offset of the current epoch is the log end; an epoch
    /// newer than ours is unknown.
    pub(crate) fn on_offset_for_leader_epoch(&mut self, r: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
        let mut response = OffsetForLeaderEpochResponse::default();
        for t in r.topics {
            let name = t.topic.0.to_string();
            let mut tr = OffsetForLeaderTopicResult::default().with_topic(t.topic.clone());
            for q in t.partitions {
                let mut e = EpochEndOffset::default().with_partition(q.partition).with_leader_epoch(-1).with_end_offset(-1);
                match self.ready_partition(&name, q.partition) {
                    Err(code) => e.error_code = code,
                    Ok(p) if q.current_leader_epoch >= 0 && q.current_leader_epoch != p.leader_epoch => {
                        e.error_code = if q.current_leader_epoch < p.leader_epoch { error::FENCED_LEADER_EPOCH } else { error::UNKNOWN_LEADER_EPOCH };
                    }
                    Ok(p) => {
                        // KIP-101/KIP-279: the end offset of the largest epoch <= the one asked.
                        let (epoch, end) = if q.leader_epoch > p.leader_epoch {
                            (-1, -1)
                        } else if p.log.latest_epoch().is_none_or(|l| l <= q.leader_epoch) {
                            (p.leader_epoch, p.log.log_end_offset())
                        } else {
                            p.log.end_offset_for_epoch(q.leader_epoch)
                        };
                        e.leader_epoch = epoch;
                        e.end_offset = end;
                    }
                }
                tr.partitions.push(e);
            }
            response.topics.push(tr);
        }
        response
    }
}

/// What a record found in the log (`(offset, timestamp)`) answers: as in Kafka, only an offset
/// a consumer may fetch, below the high watermark (runnel has no transactions, so the last stable
/// offset is the same), since a record not yet committed may still be truncated away; none while
/// the high watermark lags behind the epoch's start is OFFSET_NOT_AVAILABLE.
fn fetchable_answer(p: &crate::partition::Partition, found: Option<(i64, i64)>) -> Result<Option<(i64, i64)>, i16> {
    match found.filter(|&(offset, _)| offset < p.high_watermark) {
        None if high_watermark_lags(p) => Err(error::OFFSET_NOT_AVAILABLE),
        answer => Ok(answer),
    }
}

/// Fill a partition's answer in: an offset and its timestamp, nothing (-1, -1), or an error.
fn set_answer(pr: &mut ListOffsetsPartitionResponse, answer: Result<Option<(i64, i64)>, i16>) {
    match answer {
        Ok(Some((offset, timestamp))) => (pr.offset, pr.timestamp) = (offset, timestamp),
        Ok(None) => {}
        Err(code) => pr.error_code = code,
    }
}

/// Whether a leader's high watermark still lags behind the start of its own epoch (it took over
/// with records its old ISR may have committed, and has not yet learned how far): Kafka then
/// answers OFFSET_NOT_AVAILABLE, a retriable error, for the latest offset and for a timestamp
/// search that found nothing below the high watermark, rather than an offset lower than one a
/// client may already have been given.
/// The epoch starts where the leader's log ended when it was elected: at its first batch of the
/// epoch, or, before it has written one, at its log end.
fn high_watermark_lags(p: &crate::partition::Partition) -> bool {
    let start = p.log.epoch_entries().iter().rev().find(|(e, _)| *e == p.leader_epoch).map_or(p.log.log_end_offset(), |&(_, start)| start);
    start > p.high_watermark
}
