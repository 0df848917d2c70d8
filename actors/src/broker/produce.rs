//! Produce: validate, append, and answer according to `acks`.
//!
//! acks=0 answers nothing (the sequence still advances), acks=1 answers once the batch is
//! written to the leader's log (it then survives a crash of the process), acks=all once the batch
//! is below the high watermark — with the fsync policy that means durable on disk,
//! group-committed with every other produce in flight.

use super::{codec, error, Broker, BrokerMsg};
use crate::broker::codec::Request;
use crate::core::{ConnId, Cx};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

/// A produce waiting for its records to reach the high watermark.
pub(crate) struct PendingProduce {
    conn: ConnId,
    seq: u64,
    request: Box<Request>,
    response: ProduceResponse,
    /// (partition uid, last offset, topic slot, partition slot, needs the high watermark rather
    /// than just the write) still waiting.
    waiting: Vec<(u64, i64, usize, usize, bool)>,
    deadline_ms: u64,
}

impl Broker {
    pub(crate) fn on_produce(&mut self, cx: &mut Cx<BrokerMsg>, conn: ConnId, seq: u64, request: Box<Request>, r: ProduceRequest) {
        let acks = r.acks;
        let mut response = ProduceResponse::default();
        let mut waiting = Vec::new();
        let now_ms = cx.now_ms();
        let wall = cx.wall_clock_ms();
        for (topic_slot, topic_data) in r.topic_data.into_iter().enumerate() {
            let name = topic_data.name.0.to_string();
            let mut topic_response = TopicProduceResponse::default().with_name(topic_data.name.clone());
            for (part_slot, pd) in topic_data.partition_data.into_iter().enumerate() {
                let mut pr =
                    PartitionProduceResponse::default().with_index(pd.index).with_base_offset(-1).with_log_append_time_ms(-1).with_log_start_offset(-1);
                let outcome = if !matches!(acks, -1..=1) {
                    Err(error::INVALID_REQUIRED_ACKS)
                } else if crate::buggify!(cx) {
                    // A leader that is briefly unsure of itself: clients must retry.
                    Err(error::NOT_LEADER_OR_FOLLOWER)
                } else if r.transactional_id.is_some() {
                    Err(error::INVALID_REQUEST)
                } else if crate::group::is_internal(&name) {
                    // Internal topics are written by their coordinators only, as in Kafka.
                    Err(error::INVALID_TOPIC_EXCEPTION)
                } else {
                    match (self.ready_partition(&name, pd.index), pd.records.as_ref()) {
                        (Err(e), _) => Err(e),
                        (Ok(_), None) => Err(error::CORRUPT_MESSAGE),
                        (Ok(p), Some(_)) if acks == -1 && p.isr.len() < p.min_insync_replicas => Err(error::NOT_ENOUGH_REPLICAS),
                        (Ok(p), Some(records)) => {
                            let uid = p.uid;
                            let records = records.clone();
                            self.with_partition(cx, &name, pd.index as usize, |p, io| {
                                p.append(io, &records, now_ms, wall).map(|a| (a, uid, p.log.log_start_offset()))
                            })
                            .unwrap_or(Err(error::UNKNOWN_TOPIC_OR_PARTITION))
                        }
                    }
                };
                match outcome {
                    Ok((appended, uid, log_start)) => {
                        pr.base_offset = appended.first_offset;
                        pr.log_append_time_ms = appended.log_append_time_ms;
                        pr.log_start_offset = log_start;
                        if acks != 0 {
                            let committed = acks == -1 && !crate::planted!("ack-before-fsync");
                            waiting.push((uid, appended.last_offset, topic_slot, part_slot, committed));
                        }
                    }
                    Err(code) => pr.error_code = code,
                }
                topic_response.partition_responses.push(pr);
            }
            response.responses.push(topic_response);
        }
        if acks == 0 {
            return cx.reply(conn, seq, None);
        }
        let id = self.fresh_id();
        let deadline_ms = now_ms + r.timeout_ms.max(0) as u64;
        self.produces.insert(id, PendingProduce { conn, seq, request, response, waiting, deadline_ms });
        self.complete_produces(cx, None);
    }

    /// Answer every pending produce whose records are all below their high watermarks (those
    /// touching `uid` only, if given).
    pub(crate) fn complete_produces(&mut self, cx: &mut Cx<BrokerMsg>, uid: Option<u64>) {
        let mut done = Vec::new();
        for (id, p) in self.produces.iter_mut() {
            if uid.is_some_and(|u| !p.waiting.iter().any(|w| w.0 == u)) {
                continue;
            }
            let (topics, locations) = (&self.topics, &self.locations);
            let response = &mut p.response;
            p.waiting.retain(|(u, last_offset, t, s, committed)| {
                let partition = locations.get(u).and_then(|(t, i)| topics.get(t)?.partitions.get(*i));
                match partition {
                    Some(q) if *committed => {
                        let waiting = q.high_watermark <= *last_offset;
                        if !waiting && q.isr.len() < q.min_insync_replicas {
                            response.responses[*t].partition_responses[*s].error_code = error::NOT_ENOUGH_REPLICAS_AFTER_APPEND;
                        }
                        waiting
                    }
                    Some(q) => q.written_offset <= *last_offset,
                    None => false,
                }
            });
            if p.waiting.is_empty() {
                done.push(*id);
            }
        }
        for id in done {
            let p = self.produces.remove(&id).expect("listed above");
            let frame = codec::respond(&p.request, &p.response);
            self.send(cx, p.conn, p.seq, frame);
        }
    }

    /// Fail the parts of pending produces that wait on `uid` with `code` (leadership moved:
    /// the offsets they were given may be truncated away).
    pub(crate) fn fail_waiting_produces(&mut self, cx: &mut Cx<BrokerMsg>, uid: u64, code: i16) {
        for p in self.produces.values_mut() {
            let response = &mut p.response;
            p.waiting.retain(|(u, _, t, s, _)| {
                if *u == uid {
                    response.responses[*t].partition_responses[*s].error_code = code;
                    response.responses[*t].partition_responses[*s].base_offset = -1;
                    false
                } else {
                    true
                }
            });
        }
        self.complete_produces(cx, None);
    }

    /// Fail produces whose timeout passed (the disk stalled): REQUEST_TIMED_OUT for the
    /// partitions still waiting.
    pub(crate) fn expire_produces(&mut self, cx: &mut Cx<BrokerMsg>) {
        let now = cx.now_ms();
        let expired: Vec<u64> = self.produces.iter().filter(|(_, p)| p.deadline_ms <= now).map(|(id, _)| *id).collect();
        for id in expired {
            let mut p = self.produces.remove(&id).expect("listed above");
            for (_, _, t, q, _) in &p.waiting {
                p.response.responses[*t].partition_responses[*q].error_code = error::REQUEST_TIMED_OUT;
            }
            let frame = codec::respond(&p.request, &p.response);
            self.send(cx, p.conn, p.seq, frame);
        }
    }
}
