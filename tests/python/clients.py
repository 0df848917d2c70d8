#!/usr/bin/env python3
"""Two Python Kafka clients nobody here wrote, against a running runnel broker.

kafka-python is an independent pure-Python implementation of the protocol (it negotiates its
own API versions); confluent-kafka wraps librdkafka 2.16 (newer than the Rust crate's 2.12).
Most consumers use assign() with explicit offsets; the group checks subscribe through runnel's
group coordinator (two kafka-python consumers sharing a topic; confluent-kafka committing and
reading its offsets back through the admin API).

Usage: clients.py --bootstrap 127.0.0.1:PORT
Prints one PASS/FAIL line per check and a summary; exits non-zero if any check failed.
"""

import argparse
import sys
import time
import traceback

TIMEOUT_S = 60


class Checks:
    """Runs named checks independently so one failure does not hide the others."""

    def __init__(self):
        self.passed = []
        self.failed = []

    def run(self, name, fn, *args):
        started = time.monotonic()
        try:
            detail = fn(*args)
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            self.failed.append(name)
            print(f"FAIL {name} ({time.monotonic() - started:.1f}s): {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            return
        self.passed.append(name)
        print(f"PASS {name} ({time.monotonic() - started:.1f}s){': ' + detail if detail else ''}", flush=True)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def record(i, tag):
    """Record i of a run: key, value and headers the consumer can recompute."""
    key = f"key-{i}".encode()
    value = (f"{tag}-{i}-" + "v" * (i % 97)).encode() + bytes([i % 256, 0, 255])
    headers = [("seq", str(i).encode()), ("tag", tag.encode())] if i % 3 else []
    return key, value, headers


# ---------------------------------------------------------------------------------------------
# kafka-python
# ---------------------------------------------------------------------------------------------


def kp_admin_create(bootstrap, topics):
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=TIMEOUT_S * 1000)
    try:
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1, "configs": {"retention.ms": "3600000"}} for name, partitions in topics},
            timeout_ms=TIMEOUT_S * 1000,
        )
        listed = set(admin.list_topics())
        missing = [name for name, _ in topics if name not in listed]
        expect(not missing, f"created topics missing from list_topics: {missing}")
        return f"created and listed {len(topics)} topics"
    finally:
        admin.close()


def kp_consume(bootstrap, topic, partitions, count):
    """assign + seek_to_beginning; returns {partition: [records in offset order]}."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, check_crcs=True, request_timeout_ms=TIMEOUT_S * 1000)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got = {p: [] for p in range(partitions)}
        deadline = time.monotonic() + TIMEOUT_S
        while sum(len(v) for v in got.values()) < count:
            expect(time.monotonic() < deadline, f"{topic}: consumed {sum(len(v) for v in got.values())} of {count} in {TIMEOUT_S}s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                got[tp.partition].extend(records)
        return got
    finally:
        consumer.close()


def kp_codec_round_trip(bootstrap, topic, codec, count):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type=codec, linger_ms=5, request_timeout_ms=TIMEOUT_S * 1000)
    try:
        futures = []
        for i in range(count):
            key, value, headers = record(i, codec or "none")
            futures.append((i, producer.send(topic, key=key, value=value, headers=headers, partition=i % 2)))
        producer.flush(timeout=TIMEOUT_S)
        placed = {}
        for i, f in futures:
            md = f.get(timeout=TIMEOUT_S)
            expect(md.partition == i % 2, f"record {i} acknowledged in partition {md.partition}")
            placed[(md.partition, md.offset)] = i
    finally:
        producer.close(timeout=TIMEOUT_S)
    got = kp_consume(bootstrap, topic, 2, count)
    for p, records in got.items():
        ids = []
        for r in records:
            i = placed.get((p, r.offset))
            expect(i is not None, f"unexpected record at {p}/{r.offset}")
            key, value, headers = record(i, codec or "none")
            expect(r.key == key and r.value == value, f"record {i}: key/value differ: {r.key!r} {r.value[:40]!r}")
            expect(list(r.headers) == headers, f"record {i}: headers {r.headers!r} != {headers!r}")
            ids.append(i)
        expect(ids == sorted(ids), f"partition {p} out of order")
    expect(sum(len(v) for v in got.values()) == count, "record count")
    return f"{count} records, keys/values/headers and per-partition order intact"


# ---------------------------------------------------------------------------------------------
# confluent-kafka
# ---------------------------------------------------------------------------------------------


def ck_consumer(bootstrap):
    from confluent_kafka import Consumer

    # group.id is required by the client; these consumers assign and never commit.
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "runnel-unused", "enable.auto.commit": False, "enable.auto.offset.store": False, "check.crcs": True})


def ck_admin(bootstrap, topics):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1) for name, partitions in topics], operation_timeout=TIMEOUT_S)
    for name, f in futures.items():
        f.result(timeout=TIMEOUT_S)
    metadata = admin.list_topics(timeout=TIMEOUT_S)
    for name, partitions in topics:
        expect(name in metadata.topics, f"{name} not listed")
        expect(len(metadata.topics[name].partitions) == partitions, f"{name}: {len(metadata.topics[name].partitions)} partitions")
    # A duplicate is refused with TOPIC_ALREADY_EXISTS.
    from confluent_kafka import KafkaError, KafkaException

    dup = admin.create_topics([NewTopic(topics[0][0], num_partitions=1, replication_factor=1)], operation_timeout=TIMEOUT_S)
    try:
        dup[topics[0][0]].result(timeout=TIMEOUT_S)
        raise AssertionError("duplicate topic creation accepted")
    except KafkaException as e:
        expect(e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, f"duplicate create: {e}")
    return f"created {len(topics)} topics, listed them, duplicate refused"


def ck_idempotent(bootstrap, topic, per_partition):
    from confluent_kafka import OFFSET_BEGINNING, Producer, TopicPartition

    acked, failed = [], []

    def on_delivery(err, msg):
        (failed if err else acked).append((err, msg.partition(), msg.offset(), msg.value()))

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4"})
    for i in range(per_partition * 3):
        p, seq = i % 3, i // 3
        while True:
            try:
                producer.produce(topic, key=str(seq).encode(), value=f"{p}-{seq}".encode(), partition=p, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(TIMEOUT_S)
    expect(remaining == 0, f"{remaining} records not delivered")
    expect(not failed, f"{len(failed)} deliveries failed, e.g. {failed[:3]}")
    expect(len(acked) == per_partition * 3, f"{len(acked)} acknowledged")

    consumer = ck_consumer(bootstrap)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
        next_seq = [0, 0, 0]
        deadline = time.monotonic() + TIMEOUT_S
        while sum(next_seq) < per_partition * 3:
            expect(time.monotonic() < deadline, f"consumed {next_seq} in {TIMEOUT_S}s")
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                expect(m.error() is None, f"consume error: {m.error()}")
                p = m.partition()
                expect(m.offset() == next_seq[p], f"partition {p}: offset {m.offset()}, expected {next_seq[p]}")
                expect(m.value() == f"{p}-{next_seq[p]}".encode(), f"partition {p} offset {m.offset()}: {m.value()!r} (duplicate, gap or reordering)")
                next_seq[p] += 1
        for p in range(3):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)
            expect((low, high) == (0, per_partition), f"partition {p} watermarks {(low, high)}")
    finally:
        consumer.close()
    return f"{per_partition * 3} records exactly once and in order, watermarks right"


def ck_offsets_for_times(bootstrap, topic):
    from confluent_kafka import Producer, TopicPartition

    base = 1_700_000_000_000
    n = 500
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(n):
        producer.produce(topic, value=str(i).encode(), partition=0, timestamp=base + 10 * i)
        if i % 100 == 99:
            producer.flush(TIMEOUT_S)
    expect(producer.flush(TIMEOUT_S) == 0, "undelivered records")
    consumer = ck_consumer(bootstrap)
    try:
        cases = [(0, 0), (base - 1, 0), (base, 0), (base + 1, 1), (base + 10 * 250, 250), (base + 10 * 250 - 3, 250), (base + 10 * (n - 1), n - 1), (base + 10 * n, -1)]
        for target, want in cases:
            [answer] = consumer.offsets_for_times([TopicPartition(topic, 0, target)], timeout=TIMEOUT_S)
            expect(answer.error is None, f"offsets_for_times({target}): {answer.error}")
            expect(answer.offset == want, f"offsets_for_times(base + {target - base}) = {answer.offset}, expected {want}")
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT_S)
        expect((low, high) == (0, n), f"watermarks {(low, high)}")
    finally:
        consumer.close()
    return f"{len(cases)} timestamp lookups and watermarks right"


def ck_configs(bootstrap, topic):
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def describe():
        [f] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        return {name: entry.value for name, entry in f.result(timeout=TIMEOUT_S).items()}

    def alter(key, value):
        entry = ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
        [f] = admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])]).values()
        return f.result(timeout=TIMEOUT_S)

    expect(describe().get("segment.bytes") == "1073741824", "segment.bytes default not described")
    alter("retention.ms", "7200000")
    expect(describe().get("retention.ms") == "7200000", f"retention.ms after alter: {describe().get('retention.ms')}")
    for key, value in [("retention.ms", "abc"), ("cleanup.policy", "bogus"), ("no.such.config", "1")]:
        try:
            alter(key, value)
            raise AssertionError(f"incremental_alter_configs {key}={value} accepted")
        except KafkaException as e:
            expect(e.args[0].code() == KafkaError.INVALID_CONFIG, f"{key}={value}: {e}")
    expect(describe().get("retention.ms") == "7200000", "a refused alter changed retention.ms")
    return "describe, incremental alter, INVALID_CONFIG for bad values"


def kp_offsets(bootstrap, topic, partitions, count):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        expect(all(begin[tp] == 0 for tp in tps), f"beginning_offsets {begin}")
        expect(sum(end.values()) == count, f"end_offsets {end} do not add up to {count}")
        found = consumer.offsets_for_times({tp: 0 for tp in tps})
        expect(all(found[tp] is not None and found[tp].offset == 0 for tp in tps), f"offsets_for_times(0) {found}")
        future = int(time.time() * 1000) + 3_600_000
        found = consumer.offsets_for_times({tp: future for tp in tps})
        expect(all(found[tp] is None for tp in tps), f"offsets_for_times(future) {found}")
    finally:
        consumer.close()
    return f"beginning/end offsets and offsets_for_times right for {topic}"


def kp_group(bootstrap, topic, run):
    """Two kafka-python consumers in one group split a 4-partition topic and commit."""
    import threading

    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

    partitions, per_partition = 4, 50
    kp_admin_create(bootstrap, [(topic, partitions)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(partitions * per_partition):
        producer.send(topic, value=str(i).encode(), partition=i % partitions)
    producer.flush()
    producer.close()
    group = f"kp-group-{run}"
    stop = threading.Event()
    seen = set()
    lock = threading.Lock()
    consumers = [
        KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
                      session_timeout_ms=6000, heartbeat_interval_ms=1000, request_timeout_ms=TIMEOUT_S * 1000)
        for _ in range(2)
    ]
    errors = []

    def poll(c):
        try:
            while not stop.is_set():
                for tp, records in c.poll(timeout_ms=200).items():
                    with lock:
                        seen.update((tp.partition, r.offset) for r in records)
                if c.assignment():
                    c.commit()
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=poll, args=(c,)) for c in consumers]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            owned = [{tp.partition for tp in c.assignment()} for c in consumers]
            with lock:
                done = len(seen) == partitions * per_partition
            if done and all(owned) and not (owned[0] & owned[1]) and owned[0] | owned[1] == set(range(partitions)):
                break
            expect(not errors, f"a consumer failed: {errors}")
            expect(time.monotonic() < deadline, f"no disjoint split of {partitions} partitions with every record read: owned {owned}, read {len(seen)}")
            time.sleep(0.1)
        # Let each commit what it read, then leave the group.
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for c in consumers:
            c.close()
    expect(not errors, f"a consumer failed: {errors}")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=TIMEOUT_S * 1000)
    try:
        # kafka-python 3's group admin API (list_groups, list_group_offsets, describe_groups).
        listed = [g["group_id"] for g in admin.list_groups()]
        expect(group in listed, f"{group} missing from list_groups: {listed}")
        committed = admin.list_group_offsets(group)[group]
        got = {tp.partition: m.offset for tp, m in committed.items() if tp.topic == topic}
        expect(got == {p: per_partition for p in range(partitions)}, f"committed offsets {got}, expected {per_partition} on each partition")
        state = admin.describe_groups([group])[group]["group_state"]
        expect(state == "Empty", f"both members left, yet the group is {state}")
    finally:
        admin.close()
    return f"owned {owned}, read {len(seen)} records, committed {got}"


def ck_topic_with_records(bootstrap, topic, partitions, count):
    """Create `topic` and write `count` records, record i to partition i % partitions."""
    from confluent_kafka import Producer

    ck_admin(bootstrap, [(topic, partitions)])
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        producer.produce(topic, value=str(i).encode(), partition=i % partitions)
    expect(producer.flush(TIMEOUT_S) == 0, "produce did not finish")


def ck_read(consumer, count):
    """Poll until `count` records were read; a consumer error fails the check."""
    got = 0
    deadline = time.monotonic() + TIMEOUT_S
    while got < count:
        expect(time.monotonic() < deadline, f"read {got} of {count} records")
        m = consumer.poll(0.5)
        if m is not None:
            expect(not m.error(), f"consumer error {m.error()}")
            got += 1


def ck_group(bootstrap, topic, run):
    """confluent-kafka subscribes, commits, and reads its offsets back through the AdminClient."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    ck_topic_with_records(bootstrap, topic, 3, 30)
    group = f"ck-group-{run}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        consumer.subscribe([topic])
        ck_read(consumer, 30)
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=TIMEOUT_S)
        expect([tp.offset for tp in committed] == [10, 10, 10], f"committed {committed}")
    finally:
        consumer.close()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result()
    by_partition = {tp.partition: tp.offset for tp in offsets.topic_partitions if tp.topic == topic}
    expect(by_partition == {0: 10, 1: 10, 2: 10}, f"admin sees {by_partition}")
    described = admin.describe_consumer_groups([group])[group].result()
    expect(str(described.state).endswith("EMPTY"), f"group state {described.state} after close")
    return f"read 30, committed and listed {by_partition}"


def ck_group_cooperative(bootstrap, topic, run):
    """confluent-kafka with the cooperative-sticky assignor (KIP-429): two members split a topic
    by incremental rebalances, and when one leaves the other is given its partitions."""
    from confluent_kafka import Consumer

    ck_topic_with_records(bootstrap, topic, 4, 40)
    config = {"bootstrap.servers": bootstrap, "group.id": f"ck-coop-{run}", "partition.assignment.strategy": "cooperative-sticky",
              "auto.offset.reset": "earliest", "enable.auto.commit": True, "auto.commit.interval.ms": 100}
    a, b = Consumer(config), Consumer(config)
    revoked = []
    for c in (a, b):
        c.subscribe([topic], on_revoke=lambda consumer, parts: revoked.extend(p.partition for p in parts))
    seen = set()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            for c in (a, b):
                m = c.poll(0.1)
                if m is not None and not m.error():
                    seen.add((m.partition(), m.offset()))
            owned = [{tp.partition for tp in c.assignment()} for c in (a, b)]
            if len(seen) == 40 and all(owned) and not (owned[0] & owned[1]) and owned[0] | owned[1] == {0, 1, 2, 3}:
                break
            expect(time.monotonic() < deadline, f"no disjoint split: owned {owned}, read {len(seen)}")
        # Eager rebalancing would have revoked all four partitions to split them; cooperative
        # rebalancing revokes only the two that move.
        split_revoked = list(revoked)
        expect(len(split_revoked) < 4, f"revoked {split_revoked} while splitting: not incremental")
        a.close()
        deadline = time.monotonic() + TIMEOUT_S
        while {tp.partition for tp in b.assignment()} != {0, 1, 2, 3}:
            b.poll(0.1)
            expect(time.monotonic() < deadline, f"the remaining member owns {b.assignment()}")
    finally:
        b.close()
    return f"split {owned} revoking only {split_revoked}; the remaining member took over"


def ck_group_kip848(bootstrap, topic, run):
    """confluent-kafka (librdkafka 2.16) with group.protocol=consumer: the coordinator assigns."""
    from confluent_kafka import Consumer, TopicPartition

    ck_topic_with_records(bootstrap, topic, 4, 40)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ck-kip848-{run}", "group.protocol": "consumer",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        consumer.subscribe([topic])
        ck_read(consumer, 40)
        owned = sorted(tp.partition for tp in consumer.assignment())
        expect(owned == [0, 1, 2, 3], f"the only member owns {owned}")
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(4)], timeout=TIMEOUT_S)
        expect([tp.offset for tp in committed] == [10] * 4, f"committed {committed}")
    finally:
        consumer.close()
    return f"read 40 through a KIP-848 group, owned {owned}, committed 10 on each partition"


def compacted(bootstrap, topic):
    """A compacted topic with small segments: keyed records and tombstones from kafka-python; a
    keyless record refused; once the cleaner ran, kafka-python and confluent-kafka both read back
    only records produced at their offsets, the latest of every key among them, across the gaps
    and emptied batches compaction leaves."""
    from confluent_kafka import Consumer, KafkaError as CkError, TopicPartition as CkTp, OFFSET_BEGINNING
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=TIMEOUT_S * 1000)
    try:
        configs = {"cleanup.policy": "compact", "segment.bytes": "1024", "min.cleanable.dirty.ratio": "0.01"}
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)], timeout_ms=TIMEOUT_S * 1000)
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=TIMEOUT_S * 1000)
    produced = {}
    rounds, keys = 30, 10
    for r in range(rounds):
        for k in range(keys):
            key = f"k{k}".encode()
            value = None if (r == rounds - 1 and k < 3) else f"round {r} of k{k}".encode()
            produced[producer.send(topic, key=key, value=value, partition=0).get(timeout=TIMEOUT_S).offset] = (key, value)
    try:
        producer.send(topic, value=b"no key", partition=0).get(timeout=TIMEOUT_S)
        raise AssertionError("a keyless record was accepted by a compacted topic")
    except KafkaError as e:
        expect("InvalidRecord" in type(e).__name__, f"keyless record refused with {type(e).__name__}, not InvalidRecordError")
    finally:
        producer.close()
    latest = {}
    for offset, (key, _) in sorted(produced.items()):
        latest[key] = offset

    def check(read, who):
        for offset, rec in read.items():
            expect(produced.get(offset) == rec, f"{who}: record at offset {offset} is {rec}, produced {produced.get(offset)}")
        missing = [o for o in latest.values() if o not in read]
        expect(not missing, f"{who}: latest records of keys missing at offsets {missing}")

    tp = TopicPartition(topic, 0)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, request_timeout_ms=TIMEOUT_S * 1000)
        try:
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            read = {}
            while consumer.position(tp) < end:
                expect(time.monotonic() < deadline, f"kafka-python stuck at offset {consumer.position(tp)} of {end}")
                for records in consumer.poll(timeout_ms=500).values():
                    read.update({m.offset: (m.key, m.value) for m in records})
        finally:
            consumer.close()
        check(read, "kafka-python")
        if len(read) * 2 < len(produced):
            break
        expect(time.monotonic() < deadline, f"no compaction after {TIMEOUT_S}s: {len(read)} of {len(produced)} records left")
        time.sleep(0.5)

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader", "enable.partition.eof": True})
    try:
        consumer.assign([CkTp(topic, 0, OFFSET_BEGINNING)])
        ck_read = {}
        while True:
            expect(time.monotonic() < deadline, "confluent-kafka did not reach the end of the compacted partition")
            m = consumer.poll(0.5)
            if m is None:
                continue
            if m.error():
                expect(m.error().code() == CkError._PARTITION_EOF, f"consumer error {m.error()}")
                break
            ck_read[m.offset()] = (m.key(), m.value())
    finally:
        consumer.close()
    check(ck_read, "confluent-kafka")
    return f"{len(produced)} records written, {len(read)} read back by kafka-python and {len(ck_read)} by confluent-kafka"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of a running runnel broker")
    parser.add_argument("--records", type=int, default=3000, help="records per kafka-python codec run")
    parser.add_argument("--run-id", default=str(int(time.time())), help="suffix of topic names (default: now), so reruns on one broker do not collide")
    args = parser.parse_args()
    b = args.bootstrap
    checks = Checks()
    codecs = [None, "gzip", "lz4", "zstd"]
    run = args.run_id
    kp_topics = [(f"kp-{c or 'none'}-{run}", 2) for c in codecs]
    checks.run("kafka-python: KafkaAdminClient create_topics + list_topics", kp_admin_create, b, kp_topics)
    for codec, (topic, _) in zip(codecs, kp_topics):
        checks.run(f"kafka-python: produce acks=all compression={codec or 'none'}, consume with assign + seek_to_beginning", kp_codec_round_trip, b, topic, codec, args.records)
    checks.run("kafka-python: beginning_offsets, end_offsets, offsets_for_times", kp_offsets, b, kp_topics[0][0], 2, args.records)
    ck_topics = [(f"ck-idempotent-{run}", 3), (f"ck-timed-{run}", 1), (f"ck-configs-{run}", 1)]
    checks.run("confluent-kafka: AdminClient create_topics + list_topics", ck_admin, b, ck_topics)
    checks.run("confluent-kafka: idempotent producer, consumer with assign", ck_idempotent, b, ck_topics[0][0], 10_000)
    checks.run("confluent-kafka: offsets_for_times and watermarks", ck_offsets_for_times, b, ck_topics[1][0])
    checks.run("confluent-kafka: describe_configs, incremental_alter_configs, invalid values refused", ck_configs, b, ck_topics[2][0])
    checks.run("kafka-python: two consumers in one group split a topic, commit, admin lists offsets", kp_group, b, f"kp-group-{run}", run)
    checks.run("confluent-kafka: subscribe in a group, commit, admin lists and describes the group", ck_group, b, f"ck-group-{run}", run)
    checks.run("confluent-kafka: cooperative-sticky (KIP-429) incremental rebalances", ck_group_cooperative, b, f"ck-coop-{run}", run)
    checks.run("confluent-kafka: group.protocol=consumer (KIP-848) subscribe, commit", ck_group_kip848, b, f"ck-kip848-{run}", run)
    checks.run("kafka-python + confluent-kafka: compacted topic read back across the cleaner's gaps", compacted, b, f"compacted-{run}")
    print(f"python clients: {len(checks.passed)} passed, {len(checks.failed)} failed" + (f" ({'; '.join(checks.failed)})" if checks.failed else ""), flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
