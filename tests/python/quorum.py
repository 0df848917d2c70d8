#!/usr/bin/env python3
"""DescribeQuorum on a running runnel cluster with separate roles, asked through a broker by
kafka-python's KafkaAdminClient.describe_metadata_quorum() (the request kafka-metadata-quorum.sh
sends; the broker forwards it to the active controller).

Checks the answer against what the test knows: the voters, the broker-only nodes (observers),
and which voter is the active controller. With --killed N, voter N was killed with SIGKILL
after a first run; the new leader must not have heard from it in its epoch.

Usage: quorum.py --bootstrap HOST:PORT[,...] --voters 1,2,3 --observers 4,5 --leader N
                 [--killed N] [--min-epoch E]
Prints one PASS/FAIL line per check and a summary; exits non-zero if any check failed.
"""

import argparse
import sys
import time

from kafka.admin import KafkaAdminClient

from clients import Checks, expect

TIMEOUT_S = 60


def ids(replicas):
    return sorted(r["replica_id"] for r in replicas)


def describe(admin):
    answer = admin.describe_metadata_quorum()
    topics = answer["topics"]
    expect(len(topics) == 1 and topics[0]["topic_name"] == "__cluster_metadata", f"topics: {topics}")
    partitions = topics[0]["partitions"]
    expect(len(partitions) == 1 and partitions[0]["partition_index"] == 0, f"partitions: {partitions}")
    p = partitions[0]
    expect(p["error"] is None, f"partition error: {p['error']}")
    return p


def settled(admin, args):
    """Poll until the answer names the expected leader with every voter caught up (the leader has
    heard from each live voter and every observer has fetched): a quorum that just changed
    leader needs a moment for that."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            p = describe(admin)
            live = [v for v in p["current_voters"] if v["replica_id"] != args.killed]
            if (
                p["leader_id"] == args.leader
                and p["high_watermark"] > 0
                and all(v["last_fetch_timestamp"] > 0 for v in live)
                and ids(p["observers"]) == args.observers
            ):
                return p
            last = p
        except Exception as e:  # noqa: BLE001 - a moving quorum answers errors for a while
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise AssertionError(f"no settled DescribeQuorum answer within {TIMEOUT_S}s; last: {last}")
        time.sleep(0.2)


def check_quorum(admin, args):
    p = settled(admin, args)
    now_ms = time.time() * 1000
    voters = {v["replica_id"]: v for v in p["current_voters"]}
    expect(sorted(voters) == args.voters, f"voters {sorted(voters)}, expected {args.voters}")
    expect(p["leader_epoch"] >= args.min_epoch, f"leader epoch {p['leader_epoch']} below {args.min_epoch}")
    leader = voters[args.leader]
    hw = p["high_watermark"]
    expect(leader["log_end_offset"] >= hw, f"the leader's log end {leader['log_end_offset']} is below the high watermark {hw}")
    expect(all(v["log_end_offset"] <= leader["log_end_offset"] for v in voters.values()), f"a voter past the leader: {voters}")
    majority = len(voters) // 2 + 1
    reached = [i for i, v in voters.items() if v["log_end_offset"] >= hw]
    expect(len(reached) >= majority, f"high watermark {hw} reached only by {reached}")
    # The leader reports itself as fetching and caught up now; live voters fetched recently.
    for i, v in voters.items():
        if i == args.killed:
            continue
        expect(abs(v["last_fetch_timestamp"] - now_ms) < 30_000, f"voter {i} last fetched at {v['last_fetch_timestamp']}, now {now_ms:.0f}")
        expect(v["last_caught_up_timestamp"] > 0, f"voter {i} never caught up: {v}")
    if args.killed is not None:
        dead = voters[args.killed]
        expect(dead["last_fetch_timestamp"] == -1, f"the killed voter {args.killed} fetched from the new leader: {dead}")
    observers = {o["replica_id"]: o for o in p["observers"]}
    expect(sorted(observers) == args.observers, f"observers {sorted(observers)}, expected {args.observers}")
    for i, o in observers.items():
        expect(0 <= o["log_end_offset"] <= hw, f"observer {i} at {o['log_end_offset']}, high watermark {hw}")
        expect(abs(o["last_fetch_timestamp"] - now_ms) < 30_000, f"observer {i} last fetched at {o['last_fetch_timestamp']}")
    return f"leader {args.leader} epoch {p['leader_epoch']} high watermark {hw}, voters {sorted(voters)}, observers {sorted(observers)}"


def check_other_partition(admin):
    """Anything but __cluster_metadata partition 0 is answered UNKNOWN_TOPIC_OR_PARTITION."""
    answer = admin._manager.run(admin._async_describe_quorum, "__cluster_metadata", 1)
    p = answer["topics"][0]["partitions"][0]
    expect(p["error"] is not None and "UnknownTopicOrPartition" in p["error"], f"partition 1 answered {p}")
    return p["error"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--voters", required=True, type=lambda s: sorted(int(x) for x in s.split(",")))
    parser.add_argument("--observers", required=True, type=lambda s: sorted(int(x) for x in s.split(",")))
    parser.add_argument("--leader", required=True, type=int)
    parser.add_argument("--killed", type=int, default=None)
    parser.add_argument("--min-epoch", type=int, default=1)
    args = parser.parse_args()
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap.split(","), request_timeout_ms=30_000)
    checks = Checks()
    checks.run("kafka-python describe_metadata_quorum", check_quorum, admin, args)
    checks.run("kafka-python DescribeQuorum of another partition", check_other_partition, admin)
    admin.close()
    print(f"{len(checks.passed)} passed, {len(checks.failed)} failed")
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
