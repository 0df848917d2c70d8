//! From client events to a Jepsen-style history (the checker runs over it in `lib.rs`).
//!
//! The producer keeps one send in flight per partition, so each (producer, partition) pair is its
//! own history process: Jepsen's model allows one outstanding operation per process.

use runnel_actors::client::ClientEvent;
use runnel_checker::{History, Mop, OpType, Value, F};
use std::collections::BTreeMap;

/// History process of a producer's sends to one partition.
fn send_process(process: u64, key: u64) -> u64 {
    1_000_000 + process * 10_000 + key
}

/// Build the checker's history from the client events of a run (in the order they happened).
pub fn history(events: &[ClientEvent]) -> History {
    let mut h = History::new();
    let mut sends = BTreeMap::new();
    let mut polls = BTreeMap::new();
    let ns = |ms: u64| ms * 1_000_000;
    for e in events {
        match e {
            ClientEvent::InvokeSend { time_ms, process, key, value } => {
                let handle = h.invoke(send_process(*process, *key), F::Send, Value::Mops(vec![Mop::send(*key, *value)]), ns(*time_ms));
                sends.insert(*value, handle);
            }
            ClientEvent::CompleteSend { time_ms, key, value, outcome, .. } => {
                let Some(handle) = sends.remove(value) else { continue };
                match outcome {
                    Ok(offset) => h.complete(handle, ns(*time_ms), OpType::Ok, Value::Mops(vec![Mop::sent(*key, *offset, *value)]), None),
                    Err(why) => h.complete(handle, ns(*time_ms), OpType::Info, Value::Mops(vec![Mop::send(*key, *value)]), Some(why.clone())),
                };
            }
            ClientEvent::Assign { time_ms, process, keys } => {
                let value = Value::Keys { keys: keys.clone(), seek_to_beginning: true };
                let handle = h.invoke(*process, F::Assign, value.clone(), ns(*time_ms));
                h.complete(handle, ns(*time_ms), OpType::Ok, value, None);
            }
            ClientEvent::InvokePoll { time_ms, process } => {
                let handle = h.invoke(*process, F::Poll, Value::Mops(vec![Mop::poll()]), ns(*time_ms));
                polls.insert(*process, handle);
            }
            ClientEvent::CompletePoll { time_ms, process, reads, ok } => {
                let Some(handle) = polls.remove(process) else { continue };
                let kind = if *ok { OpType::Ok } else { OpType::Fail };
                let mops = vec![Mop::polled(reads.iter().map(|(k, v)| (*k, v.iter().copied())))];
                h.complete(handle, ns(*time_ms), kind, Value::Mops(mops), None);
            }
            // Checked by the world as they happen (ownership per generation, commit order).
            ClientEvent::Violation { .. } | ClientEvent::GroupAssign { .. } | ClientEvent::GroupCommit { .. } => {}
        }
    }
    let end = events.iter().map(event_time).max().unwrap_or(0);
    h.complete_pending_as_info(ns(end), "run ended");
    h
}

fn event_time(e: &ClientEvent) -> u64 {
    match e {
        ClientEvent::InvokeSend { time_ms, .. }
        | ClientEvent::CompleteSend { time_ms, .. }
        | ClientEvent::Assign { time_ms, .. }
        | ClientEvent::InvokePoll { time_ms, .. }
        | ClientEvent::CompletePoll { time_ms, .. }
        | ClientEvent::Violation { time_ms, .. }
        | ClientEvent::GroupAssign { time_ms, .. }
        | ClientEvent::GroupCommit { time_ms, .. } => *time_ms,
    }
}
