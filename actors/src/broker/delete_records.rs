//! DeleteRecords: advance a partition's log start offset, and answer once the records below it
//! cannot come back (Kafka's DelayedDeleteRecords).
//!
//! The leader moves its own log start at once (reads below it are refused from then on) and
//! tells its followers through the answers to their replica fetches, waking the parked ones.
//! The answer waits until the partition's low watermark reaches the requested offset: the
//! minimum of the leader's durable log start offset (the one its checkpoint on disk records)
//! and the durable log start each ISR member and each other replica on a live broker reports in
//! its replica fetch. A replica outside the ISR on a fenced or unregistered broker is not waited
//! for, as in Kafka; it learns the log start from the leader before it can rejoin the ISR. So once acknowledged, neither a failover
//! nor a crash of any replica brings the deleted records back. The wait ends with
//! REQUEST_TIMED_OUT at the request's timeout, and with NOT_LEADER_OR_FOLLOWER when the
//! leadership moves.

use super::{codec, error, Broker, BrokerMsg};
use crate::broker::codec::Request;
use crate::core::{ConnId, Cx};
use crate::partition::Partition;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

/// A DeleteRecords request waiting for its partitions' low watermarks.
pub(crate) struct PendingDelete {
    conn: ConnId,
    seq: u64,
    request: Box<Request>,
    response: DeleteRecordsResponse,
    /// (partition uid, requested offset, topic slot, partition slot) still waiting.
    waiting: Vec<(u64, i64, usize, usize)>,
    deadline_ms: u64,
}

impl Broker {
    pub(crate) fn on_delete_records(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: DeleteRecordsRequest) {
        let mut response = DeleteRecordsResponse::default();
        let mut waiting = Vec::new();
        for (topic_slot, t) in r.topics.into_iter().enumerate() {
            let name = t.name.0.to_string();
            let mut tr = DeleteRecordsTopicResult::default().with_name(t.name.clone());
            for (part_slot, q) in t.partitions.into_iter().enumerate() {
                let mut pr = DeleteRecordsPartitionResult::default().with_partition_index(q.partition_index).with_low_watermark(-1);
                match self.ready_partition(&name, q.partition_index) {
                    Err(e) => pr.error_code = e,
                    Ok(p) => {
                        let (hw, uid) = (p.high_watermark, p.uid);
                        let target = if q.offset == -1 { hw } else { q.offset };
                        if target < 0 || target > hw {
                            pr.error_code = error::OFFSET_OUT_OF_RANGE;
                        } else {
                            let moved = p.log.log_start_offset() < target;
                            match self.with_partition(cx, &name, q.partition_index as usize, |p, io| p.log.delete_records(io, target)) {
                                Some(Ok(_)) => {
                                    waiting.push((uid, target, topic_slot, part_slot));
                                    if moved && !crate::planted!("delete-records-before-replicas") {
                                        // Parked replica fetches answer now, carrying the new
                                        // log start to the followers.
                                        self.answer_serving_now(cx, uid);
                                    }
                                }
                                _ => pr.error_code = error::OFFSET_OUT_OF_RANGE,
                            }
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            response.topics.push(tr);
        }
        if waiting.is_empty() {
            let frame = codec::respond(&request, &response);
            return self.send(cx, conn, seq, frame);
        }
        let id = self.fresh_id();
        let deadline_ms = cx.now_ms() + r.timeout_ms.max(0) as u64;
        self.deletes.insert(id, PendingDelete { conn, seq, request, response, waiting, deadline_ms });
        self.complete_deletes(cx, None);
    }

    /// The partition's low watermark, as its leader sees it: the lowest durable log start
    /// offset over itself, the members of its (maximal) ISR, and the other replicas on live
    /// brokers (-1 for a replica not heard from). An ISR member counts even if this leader's
    /// image has its broker fenced: it may have rejoined before the image says it is unfenced,
    /// and any member may be elected next.
    fn low_watermark(&self, p: &Partition) -> i64 {
        if crate::planted!("delete-records-before-replicas") {
            return p.log.log_start_offset();
        }
        let mut low = p.log.durable_log_start_offset();
        let isr = p.maximal_isr();
        for r in &p.replicas {
            if *r == p.me || (!isr.contains(r) && self.cluster.image.brokers.get(r).is_none_or(|b| b.fenced)) {
                continue;
            }
            low = low.min(p.followers.get(r).map_or(-1, |f| f.log_start_offset));
        }
        low
    }

    /// Answer every pending DeleteRecords whose partitions' low watermarks reached the requested
    /// offsets (only those waiting on `uid`, if given).
    pub(crate) fn complete_deletes(&mut self, cx: &mut Cx<BrokerMsg>, uid: Option<u64>) {
        let mut done = Vec::new();
        for (id, d) in &self.deletes {
            if uid.is_some_and(|u| !d.waiting.iter().any(|w| w.0 == u)) {
                continue;
            }
            let mut finished = Vec::new();
            for (slot, (u, target, _, _)) in d.waiting.iter().enumerate() {
                let partition = self.locations.get(u).and_then(|(t, i)| self.topics.get(t)?.partitions.get(*i));
                match partition {
                    Some(p) if p.role == crate::partition::Role::Leader => {
                        let low = self.low_watermark(p);
                        if low >= *target {
                            finished.push((slot, error::NONE, low));
                        }
                    }
                    _ => finished.push((slot, error::NOT_LEADER_OR_FOLLOWER, -1)),
                }
            }
            if !finished.is_empty() {
                done.push((*id, finished));
            }
        }
        for (id, finished) in done {
            let d = self.deletes.get_mut(&id).expect("listed above");
            for &(slot, code, low) in finished.iter().rev() {
                let (_, _, t, s) = d.waiting.remove(slot);
                let pr = &mut d.response.topics[t].partitions[s];
                pr.error_code = code;
                pr.low_watermark = low;
            }
            if d.waiting.is_empty() {
                self.answer_delete(cx, id);
            }
        }
    }

    /// Fail the partitions of pending DeleteRecords waiting on `uid` (leadership moved).
    pub(crate) fn fail_waiting_deletes(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64) {
        let ids: Vec<u64> = self.deletes.iter().filter(|(_, d)| d.waiting.iter().any(|w| w.0 == uid)).map(|(id, _)| *id).collect();
        for id in ids {
            let d = self.deletes.get_mut(&id).expect("listed above");
            d.waiting.retain(|&(u, _, t, s)| {
                if u == uid {
                    d.response.topics[t].partitions[s].error_code = error::NOT_LEADER_OR_FOLLOWER;
                }
                u != uid
            });
            if d.waiting.is_empty() {
                self.answer_delete(cx, id);
            }
        }
    }

    /// Answer DeleteRecords whose timeout passed: REQUEST_TIMED_OUT for the partitions still
    /// waiting (a live replica that cannot follow, say).
    pub(crate) fn expire_deletes(&mut self, cx: &mut Cx<BrokerMsg>) {
        let now = cx.now_ms();
        let expired: Vec<u64> = self.deletes.iter().filter(|(_, d)| d.deadline_ms <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.answer_delete(cx, id);
        }
    }

    /// Send the answer of pending DeleteRecords `id`; partitions still waiting are answered
    /// REQUEST_TIMED_OUT.
    fn answer_delete(&mut self, cx: &mut Cx<BrokerMsg>, id: u64) {
        let Some(mut d) = self.deletes.remove(&id) else { return };
        for &(_, _, t, s) in &d.waiting {
            d.response.topics[t].partitions[s].error_code = error::REQUEST_TIMED_OUT;
        }
        let frame = codec::respond(&d.request, &d.response);
        self.send(cx, d.conn, d.seq, frame);
    }
}
