#!/usr/bin/env python3
"""Partition reassignment and leader election on a running 3-node runnel cluster, driven by
kafka-python's KafkaAdminClient (AlterPartitionReassignments, ListPartitionReassignments,
ElectLeaders, Metadata) and confluent-kafka's AdminClient (ElectLeaders).

The topic must exist with two partitions and the replicas [1, 2] and [2, 3] (the Rust test
creates it and keeps an idempotent producer writing to it meanwhile). The script moves
partition 0 to [3, 1] (adds 3, removes 2; leader 1 stays though 3 is now preferred) and
partition 1 to [1, 3] (removes the leader 2), waits until no reassignment is listed, checks the
replicas in Metadata, runs a preferred election so each partition is led by its first replica,
and checks the refusals: an unknown broker, a repeated broker, an unknown topic, cancelling with
nothing in progress, and a second preferred election.

Usage: reassign.py --bootstrap HOST:PORT[,...] --topic NAME
Prints one PASS/FAIL line per check and a summary; exits non-zero if any check failed.
"""

import argparse
import sys
import time

from kafka import TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import (
    ElectionNotNeededError,
    InvalidReplicationAssignmentError,
    NoReassignmentInProgressError,
    UnknownTopicOrPartitionError,
)

from clients import Checks, expect

TIMEOUT_S = 60
TARGETS = {0: [3, 1], 1: [1, 3]}


def partitions_of(admin, topic):
    """{partition: (leader, replicas, isr)} from Metadata."""
    described = admin.describe_topics([topic])
    expect(len(described) == 1 and described[0]["error_code"] == 0, f"describe_topics: {described}")
    # kafka-python names the fields as the Metadata response schema does.
    return {p["partition_index"]: (p["leader_id"], list(p["replica_nodes"]), sorted(p["isr_nodes"])) for p in described[0]["partitions"]}


def wait_for(what, probe):
    """Poll `probe` until it returns something truthy; fail after TIMEOUT_S with the last value."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        got, last = probe()
        if got:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {TIMEOUT_S}s; last seen: {last}")
        time.sleep(0.2)


def reassign(admin, topic):
    before = partitions_of(admin, topic)
    expect(before[0][1] == [1, 2] and before[1][1] == [2, 3], f"unexpected starting replicas {before}")
    answer = admin.alter_partition_reassignments({TopicPartition(topic, p): r for p, r in TARGETS.items()}, timeout_ms=30_000)
    expect(set(answer) == {TopicPartition(topic, p) for p in TARGETS}, f"not every partition answered: {answer}")
    expect(all(e is None for e in answer.values()), f"a reassignment was refused: {answer}")

    def done():
        ongoing = {tp: r for tp, r in admin.list_partition_reassignments({topic: list(TARGETS)}).items()}
        return not ongoing, ongoing

    wait_for("the reassignments did not complete", done)

    def replicas_moved():
        now = partitions_of(admin, topic)
        ok = all(now[p][1] == r and sorted(now[p][2]) == sorted(r) and now[p][0] in r for p, r in TARGETS.items())
        return ok, now

    now = wait_for("Metadata did not show the new replicas with a full ISR", replicas_moved)
    return f"replicas, ISR and leaders now {now}"


def elect_preferred(admin, topic):
    tps = [TopicPartition(topic, p) for p in TARGETS]
    response = admin.elect_leaders(0, {topic: list(TARGETS)}, timeout_ms=30_000, raise_errors=False)
    errors = {}
    for t in response.replica_election_results:
        for p in t.partition_result:
            errors[p.partition_id] = p.error_code
    expect(set(errors) == set(TARGETS), f"not every partition answered: {errors}")
    # Partition 0's leader (1) is not its preferred replica (3): the election must move it.
    # Partition 1's leader after the move may already be its preferred replica (1).
    expect(errors[0] == 0, f"preferred election of partition 0 failed with error {errors[0]}")
    expect(errors[1] in (0, ElectionNotNeededError.errno), f"preferred election of partition 1 failed with error {errors[1]}")

    def led_by_preferred():
        now = partitions_of(admin, topic)
        return all(now[p][0] == r[0] for p, r in TARGETS.items()), now

    now = wait_for("the preferred replicas did not become leaders", led_by_preferred)
    # A second election has nothing to do.
    again = admin.elect_leaders(0, {topic: list(TARGETS)}, timeout_ms=30_000, raise_errors=False)
    codes = sorted(p.error_code for t in again.replica_election_results for p in t.partition_result)
    expect(codes == [ElectionNotNeededError.errno] * len(tps), f"a second preferred election should need nothing: {codes}")
    return f"leaders now {({p: v[0] for p, v in now.items()})}"


def ck_elect_preferred(bootstrap, topic):
    """confluent-kafka (librdkafka 2.16) ElectLeaders: nothing to do once preferred leaders lead."""
    from confluent_kafka import ElectionType, KafkaException
    from confluent_kafka import TopicPartition as CkTopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    # (2.16's binding refuses the documented request_timeout keyword: defaults only.)
    future = admin.elect_leaders(ElectionType.PREFERRED, [CkTopicPartition(topic, p) for p in TARGETS])
    try:
        results = future.result(timeout=TIMEOUT_S)
    except KafkaException as e:
        raise AssertionError(f"elect_leaders failed as a whole: {e}") from e
    names = {tp.partition: (e.name() if e is not None else None) for tp, e in results.items()}
    expect(set(names) == set(TARGETS), f"not every partition answered: {names}")
    expect(all(n == "ELECTION_NOT_NEEDED" for n in names.values()), f"expected ELECTION_NOT_NEEDED for every partition: {names}")
    return f"{names}"


def refusals(admin, topic):
    cases = [
        ("an unknown broker", {TopicPartition(topic, 0): [3, 99]}, InvalidReplicationAssignmentError),
        ("a repeated broker", {TopicPartition(topic, 0): [3, 3]}, InvalidReplicationAssignmentError),
        ("an unknown topic", {TopicPartition(topic + "-missing", 0): [1, 2]}, UnknownTopicOrPartitionError),
        ("cancelling with nothing in progress", {TopicPartition(topic, 1): None}, NoReassignmentInProgressError),
    ]
    seen = []
    for what, request, error in cases:
        answer = admin.alter_partition_reassignments(request, timeout_ms=30_000)
        (tp,) = request
        got = answer.get(tp)
        expect(got is error, f"{what}: expected {error.__name__}, got {got!r} ({answer})")
        seen.append(f"{what}: {error.__name__}")
    # Nothing moved.
    now = partitions_of(admin, topic)
    expect(all(now[p][1] == r for p, r in TARGETS.items()), f"a refused request changed the replicas: {now}")
    return "; ".join(seen)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap.split(","), request_timeout_ms=30_000)
    checks = Checks()
    checks.run("kafka-python: alter_partition_reassignments moves two partitions, list_partition_reassignments empties", reassign, admin, args.topic)
    checks.run("kafka-python: elect_leaders(PREFERRED) hands leadership to the first replica", elect_preferred, admin, args.topic)
    checks.run("confluent-kafka: elect_leaders(PREFERRED) answers ELECTION_NOT_NEEDED", ck_elect_preferred, args.bootstrap, args.topic)
    checks.run("kafka-python: refused reassignments get Kafka's error codes", refusals, admin, args.topic)
    admin.close()
    print(f"reassign: {len(checks.passed)} passed, {len(checks.failed)} failed" + (f" ({'; '.join(checks.failed)})" if checks.failed else ""), flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
