//! `runnel group list|describe|delete|reset-offsets`: consumer groups from the command line,
//! shaped like kafka-consumer-groups.sh. Groups live on their coordinators, so `list` asks every
//! broker and the other commands find the group's coordinator first; log-end offsets for the lag
//! come from each partition's leader.

use crate::client::{check, Client};
use anyhow::{bail, Context};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use runnel_actors::client::group_consumer::assignment_partitions;
use std::collections::BTreeMap;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// The cluster as Metadata describes it: brokers by id, and the leader of each partition of the
/// topics asked for.
struct Cluster {
    brokers: BTreeMap<i32, String>,
    leaders: BTreeMap<(String, i32), i32>,
    partitions: BTreeMap<String, i32>,
}

async fn cluster(c: &mut Client, topics: Option<Vec<String>>) -> anyhow::Result<Cluster> {
    let wanted = topics.map(|ts| ts.into_iter().map(|t| metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s(&t))))).collect());
    let r = c.send(MetadataRequest::default().with_topics(wanted).with_allow_auto_topic_creation(false), 12).await?;
    let brokers = r.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
    let mut leaders = BTreeMap::new();
    let mut partitions = BTreeMap::new();
    for t in &r.topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        partitions.insert(name.clone(), t.partitions.len() as i32);
        for p in &t.partitions {
            leaders.insert((name.clone(), p.partition_index), p.leader_id.0);
        }
    }
    Ok(Cluster { brokers, leaders, partitions })
}

/// A connection to `group`'s coordinator (retrying while the coordinator is being created or
/// moves).
async fn coordinator(bootstrap: &str, group: &str) -> anyhow::Result<Client> {
    let mut c = Client::connect(bootstrap).await?;
    for _ in 0..100 {
        let r = c.send(FindCoordinatorRequest::default().with_key(s(group)), 3).await?;
        match r.error_code {
            0 => return Client::connect(&format!("{}:{}", r.host.as_str(), r.port)).await,
            14 | 15 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            code => check(code, &format!("find the coordinator of {group}"), r.error_message.as_ref())?,
        }
    }
    bail!("no coordinator for group {group}")
}

/// Log-end offsets (`timestamp` -1) or earliest offsets (-2) of `partitions`, asked of their
/// leaders.
async fn offsets_at(bootstrap: &str, partitions: &[(String, i32)], timestamp: i64) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut c = Client::connect(bootstrap).await?;
    let topics: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let cl = cluster(&mut c, Some(topics)).await?;
    let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for tp in partitions {
        let leader = cl.leaders.get(tp).copied().unwrap_or(-1);
        by_leader.entry(leader).or_default().push(tp.clone());
    }
    let mut out = BTreeMap::new();
    for (leader, tps) in by_leader {
        let Some(addr) = cl.brokers.get(&leader) else { continue };
        let mut lc = Client::connect(addr).await?;
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in &tps {
            by_topic.entry(t.as_str()).or_default().push(*p);
        }
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(
            by_topic
                .iter()
                .map(|(t, ps)| {
                    list_offsets_request::ListOffsetsTopic::default().with_name(TopicName(s(t))).with_partitions(
                        ps.iter().map(|p| list_offsets_request::ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(timestamp)).collect(),
                    )
                })
                .collect(),
        );
        let r = lc.send(request, 7).await?;
        for t in r.topics {
            for p in t.partitions {
                if p.error_code == 0 {
                    out.insert((t.name.to_string(), p.partition_index), p.offset);
                }
            }
        }
    }
    Ok(out)
}

/// `group list`: every group on every broker, optionally only those in `state`.
pub async fn group_list(bootstrap: &str, state: Option<&str>) -> anyhow::Result<()> {
    let mut c = Client::connect(bootstrap).await?;
    let cl = cluster(&mut c, Some(Vec::new())).await?;
    let mut groups = BTreeMap::new();
    for addr in cl.brokers.values() {
        let mut bc = Client::connect(addr).await?;
        let filter = state.map(|st| vec![s(st)]).unwrap_or_default();
        let r = bc.send(ListGroupsRequest::default().with_states_filter(filter), 4).await?;
        check(r.error_code, &format!("list groups on {addr}"), None)?;
        for g in r.groups {
            groups.insert(g.group_id.to_string(), (g.protocol_type.to_string(), g.group_state.to_string()));
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    println!("{:<40} {:<12} STATE", "GROUP", "TYPE");
    for (g, (t, st)) in groups {
        println!("{g:<40} {:<12} {st}", if t.is_empty() { "(offsets)" } else { &t });
    }
    Ok(())
}

/// What `describe` learns about one group.
struct Described {
    state: String,
    protocol: String,
    /// (topic, partition) -> (member id, host, client id).
    owners: BTreeMap<(String, i32), (String, String, String)>,
    /// (member id, host, client id, partitions, member epoch of a KIP-848 member).
    members: Vec<(String, String, String, usize, Option<i32>)>,
    committed: BTreeMap<(String, i32), i64>,
}

async fn describe(bootstrap: &str, group: &str) -> anyhow::Result<Described> {
    let mut c = coordinator(bootstrap, group).await?;
    let mut owners = BTreeMap::new();
    let mut members = Vec::new();
    // A KIP-848 group answers ConsumerGroupDescribe; a classic one (GROUP_ID_NOT_FOUND there)
    // answers DescribeGroups, as kafka-consumer-groups.sh tries them.
    let r = c.send(ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(s(group))]), 0).await?;
    let cd = r.groups.into_iter().next().context("empty ConsumerGroupDescribe response")?;
    let (state, protocol) = if cd.error_code == 0 {
        for m in &cd.members {
            let assigned: Vec<(String, i32)> =
                m.assignment.topic_partitions.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic_name.to_string(), *p))).collect();
            members.push((m.member_id.to_string(), m.client_host.to_string(), m.client_id.to_string(), assigned.len(), Some(m.member_epoch)));
            for tp in assigned {
                owners.insert(tp, (m.member_id.to_string(), m.client_host.to_string(), m.client_id.to_string()));
            }
        }
        (cd.group_state.to_string(), cd.assignor_name.to_string())
    } else {
        let r = c.send(DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]), 5).await?;
        let d = r.groups.into_iter().next().context("empty DescribeGroups response")?;
        check(d.error_code, &format!("describe group {group}"), d.error_message.as_ref())?;
        for m in &d.members {
            let assigned =
                if d.protocol_type.as_str() == "consumer" { assignment_partitions(m.member_assignment.clone()).unwrap_or_default() } else { Vec::new() };
            members.push((m.member_id.to_string(), m.client_host.to_string(), m.client_id.to_string(), assigned.len(), None));
            for tp in assigned {
                owners.insert(tp, (m.member_id.to_string(), m.client_host.to_string(), m.client_id.to_string()));
            }
        }
        (d.group_state.to_string(), d.protocol_data.to_string())
    };
    let f = c.send(OffsetFetchRequest::default().with_group_id(GroupId(s(group))).with_topics(None), 7).await?;
    check(f.error_code, &format!("fetch the offsets of {group}"), None)?;
    let mut committed = BTreeMap::new();
    for t in f.topics {
        for p in t.partitions {
            if p.committed_offset >= 0 {
                committed.insert((t.name.to_string(), p.partition_index), p.committed_offset);
            }
        }
    }
    Ok(Described { state, protocol, owners, members, committed })
}

/// `group describe`: state, members, and per partition the committed offset, log end and lag.
pub async fn group_describe(bootstrap: &str, group: &str, show_members: bool) -> anyhow::Result<()> {
    let d = describe(bootstrap, group).await?;
    println!(
        "Consumer group '{group}' is {} ({} member{}{}).",
        d.state,
        d.members.len(),
        if d.members.len() == 1 { "" } else { "s" },
        if d.protocol.is_empty() { String::new() } else { format!(", assignor {}", d.protocol) }
    );
    if show_members {
        println!("\n{:<60} {:<16} {:<24} {:<11} EPOCH", "CONSUMER-ID", "HOST", "CLIENT-ID", "#PARTITIONS");
        for (id, host, client, n, epoch) in &d.members {
            let epoch = epoch.map_or("-".to_string(), |e| e.to_string());
            println!("{id:<60} {:<16} {client:<24} {n:<11} {epoch}", if host.is_empty() { "-" } else { host });
        }
        return Ok(());
    }
    let mut partitions: Vec<(String, i32)> = d.committed.keys().chain(d.owners.keys()).cloned().collect();
    partitions.sort();
    partitions.dedup();
    let ends = offsets_at(bootstrap, &partitions, -1).await?;
    println!(
        "\n{:<24} {:<24} {:>9} {:>14} {:>14} {:>8} {:<40} {:<16} CLIENT-ID",
        "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST"
    );
    for tp in &partitions {
        let current = d.committed.get(tp).copied();
        let end = ends.get(tp).copied();
        let lag = match (current, end) {
            (Some(c), Some(e)) => (e - c).max(0).to_string(),
            _ => "-".into(),
        };
        let (member, host, client) = d.owners.get(tp).cloned().unwrap_or(("-".into(), "-".into(), "-".into()));
        let host = if host.is_empty() { "-".to_string() } else { host };
        let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        println!("{group:<24} {:<24} {:>9} {:>14} {:>14} {lag:>8} {member:<40} {host:<16} {client}", tp.0, tp.1, show(current), show(end));
    }
    Ok(())
}

/// `group delete`.
pub async fn group_delete(bootstrap: &str, group: &str) -> anyhow::Result<()> {
    let mut c = coordinator(bootstrap, group).await?;
    let r = c.send(DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]), 2).await?;
    for g in r.results {
        check(g.error_code, &format!("delete group {group}"), None)?;
    }
    println!("Deleted consumer group '{group}'.");
    Ok(())
}

/// Where `reset-offsets` moves a group.
#[derive(Clone, Debug)]
pub enum ResetTo {
    /// The log start.
    Earliest,
    /// The log end.
    Latest,
    /// This offset (clamped into the log).
    Offset(i64),
    /// The current committed offset plus this (clamped into the log).
    ShiftBy(i64),
    /// The first record with a timestamp at or after this (ms since the epoch); the log end if
    /// there is none.
    Datetime(i64),
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:mm:SS[.sss]` (UTC, as kafka-consumer-groups.sh
/// takes it; a trailing `Z` is accepted), or of a plain integer (already milliseconds).
pub fn parse_datetime(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || anyhow::anyhow!("cannot read {text:?} as a date-time: use YYYY-MM-DDTHH:mm:SS.sss (UTC) or milliseconds since the epoch");
    let t = text.trim_end_matches('Z');
    let (date, time) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().map_err(|_| bad())).collect::<anyhow::Result<_>>()?;
    let (hms, millis) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<i64> = hms.split(':').map(|x| x.parse().map_err(|_| bad())).collect::<anyhow::Result<_>>()?;
    let millis: i64 = format!("{millis:0<3}")[..3].parse().map_err(|_| bad())?;
    let [y, m, day] = d[..] else { return Err(bad()) };
    let [hh, mm, ss] = h[..] else { return Err(bad()) };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || !(0..24).contains(&hh) || !(0..60).contains(&mm) || !(0..61).contains(&ss) {
        return Err(bad());
    }
    // Days from 1970-01-01 to the date (proleptic Gregorian; Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis)
}

/// `group reset-offsets`: move the committed offsets of `topic` (all its partitions), or with no
/// topic of every topic the group has committed offsets on, for an inactive group; without
/// `execute` only print the plan, as kafka-consumer-groups.sh does.
pub async fn group_reset_offsets(bootstrap: &str, group: &str, topic: Option<&str>, to: ResetTo, execute: bool) -> anyhow::Result<()> {
    let d = describe(bootstrap, group).await;
    let (state, committed) = match d {
        Ok(d) => (d.state, d.committed),
        Err(_) => ("Dead".to_string(), BTreeMap::new()),
    };
    if state != "Empty" && state != "Dead" {
        bail!("offsets can only be reset while the group is inactive (no members), but group {group} is {state}");
    }
    let topics: Vec<String> = match topic {
        Some(t) => vec![t.to_string()],
        None => committed.keys().map(|(t, _)| t.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
    };
    if topics.is_empty() {
        bail!("group {group} has no committed offsets: name a topic with --topic");
    }
    let mut c = Client::connect(bootstrap).await?;
    let cl = cluster(&mut c, Some(topics.clone())).await?;
    let mut partitions: Vec<(String, i32)> = Vec::new();
    for t in &topics {
        let count = cl.partitions.get(t).copied().filter(|n| *n > 0).with_context(|| format!("topic {t} does not exist"))?;
        partitions.extend((0..count).map(|p| (t.clone(), p)));
    }
    let starts = offsets_at(bootstrap, &partitions, -2).await?;
    let ends = offsets_at(bootstrap, &partitions, -1).await?;
    let at_time = match to {
        ResetTo::Datetime(ms) => offsets_at(bootstrap, &partitions, ms).await?,
        _ => BTreeMap::new(),
    };
    let mut plan = Vec::new();
    for tp in &partitions {
        let (lo, hi) = (starts.get(tp).copied().unwrap_or(0), ends.get(tp).copied().unwrap_or(0));
        let target = match to {
            ResetTo::Earliest => lo,
            ResetTo::Latest => hi,
            ResetTo::Offset(o) => o.clamp(lo, hi),
            ResetTo::ShiftBy(n) => committed.get(tp).copied().unwrap_or(lo).saturating_add(n).clamp(lo, hi),
            ResetTo::Datetime(_) => at_time.get(tp).copied().filter(|o| *o >= 0).unwrap_or(hi).clamp(lo, hi),
        };
        plan.push((tp.clone(), target));
    }
    println!("{:<24} {:<24} {:>9} {:>11}", "GROUP", "TOPIC", "PARTITION", "NEW-OFFSET");
    for ((t, p), o) in &plan {
        println!("{group:<24} {t:<24} {p:>9} {o:>11}");
    }
    if !execute {
        println!("(dry run: add --execute to commit these offsets)");
        return Ok(());
    }
    let mut coord = coordinator(bootstrap, group).await?;
    let r = coord
        .send(
            OffsetCommitRequest::default().with_group_id(GroupId(s(group))).with_generation_id_or_member_epoch(-1).with_member_id(s("")).with_topics(
                topics
                    .iter()
                    .map(|t| {
                        offset_commit_request::OffsetCommitRequestTopic::default().with_name(TopicName(s(t))).with_partitions(
                            plan.iter()
                                .filter(|((pt, _), _)| pt == t)
                                .map(|((_, p), o)| {
                                    offset_commit_request::OffsetCommitRequestPartition::default().with_partition_index(*p).with_committed_offset(*o)
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            ),
            8,
        )
        .await?;
    for t in r.topics {
        for p in t.partitions {
            check(p.error_code, &format!("commit the new offset of {}-{}", t.name.as_str(), p.partition_index), None)?;
        }
    }
    println!("Reset the offsets of group '{group}' on {}.", topics.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_datetime;

    /// Kafka's CLI format in UTC, with or without millis and `Z`, and plain milliseconds; a
    /// malformed or out-of-range time is an error.
    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00.000").unwrap(), 0);
        assert_eq!(parse_datetime("2001-09-09T01:46:40Z").unwrap(), 1_000_000_000_000);
        assert_eq!(parse_datetime("2024-02-29T12:00:00.5").unwrap(), 1_709_208_000_500);
        assert_eq!(parse_datetime("1700000000000").unwrap(), 1_700_000_000_000);
        for bad in ["yesterday", "2024-13-01T00:00:00", "2024-01-01", "2024-01-01T25:00:00", "2024-01-01T00:00"] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
    }
}
