"""Consumer groups, classic protocol and KIP-848 (`group.protocol=consumer`): three
confluent-kafka members share a 6-partition topic; one is killed with SIGKILL and its partitions
move to the survivors within session timeout + 3 s; a consumer that joins later resumes at the
committed offsets; kafka-python's group consumer."""

import json
import multiprocessing as mp
import os
import signal
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
import pytest

from conftest import Broker

TOTAL = 60_000
SESSION_MS = 6000


# KIP-848 members get their session and heartbeat interval from the broker.
BROKER_FLAGS = ["--group-consumer-session-timeout-ms", str(SESSION_MS),
                "--group-consumer-heartbeat-interval-ms", "500"]


def consumer_config(protocol, **extra):
    conf = {"group.id": "workers", "auto.offset.reset": "earliest", **extra}
    if protocol == "consumer":
        conf["group.protocol"] = "consumer"
    else:
        conf.update({"session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500})
    return conf


def member(bootstrap, name, state_dir, protocol):
    c = Consumer(consumer_config(protocol, **{
        "bootstrap.servers": bootstrap, "enable.auto.commit": True,
        "auto.commit.interval.ms": 200, "client.id": name}))
    c.subscribe(["work"])
    seen = open(os.path.join(state_dir, f"{name}.seen"), "a", buffering=1)
    stop = os.path.join(state_dir, "stop")
    while not os.path.exists(stop):
        for m in c.consume(500, 0.2):
            if m.error() is None:
                seen.write(f"{m.partition()} {m.offset()}\n")
        with open(os.path.join(state_dir, f"{name}.assign.tmp"), "w") as f:
            json.dump(sorted(tp.partition for tp in c.assignment()), f)
        os.replace(os.path.join(state_dir, f"{name}.assign.tmp"),
                   os.path.join(state_dir, f"{name}.assign"))
    c.close()  # commits and leaves the group


def assignment(state_dir, name):
    try:
        return json.load(open(os.path.join(state_dir, f"{name}.assign")))
    except (OSError, ValueError):
        return []


def seen_offsets(state_dir, names):
    out = set()
    for n in names:
        try:
            for line in open(os.path.join(state_dir, f"{n}.seen")):
                # A line without its newline is still being written (or its writer was
                # killed mid-line): skip it, the next poll reads it whole.
                if not line.endswith("\n"):
                    continue
                p, o = line.split()
                out.add((int(p), int(o)))
        except OSError:
            pass
    return out


def committed(broker):
    """The group's committed offsets of the six partitions (an OffsetFetch; it does not join)."""
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "workers"})
    try:
        tps = c.committed([TopicPartition("work", p) for p in range(6)], timeout=10)
        return [tp.offset for tp in sorted(tps, key=lambda tp: tp.partition)]
    finally:
        c.close()


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_group_rebalances_on_member_death_and_resumes_from_commits(workdir, protocol):
    broker = Broker(workdir / "data", extra=BROKER_FLAGS).start()
    try:
        run_group_scenario(broker, workdir, protocol)
    finally:
        rc = broker.stop()
    assert rc == 0, broker.log_tail()


def run_group_scenario(broker, workdir, protocol):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic("work", num_partitions=6, replication_factor=1)])["work"].result(15)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(TOTAL):
        p.produce("work", value=str(i).encode(), partition=i % 6)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(30) == 0

    state = str(workdir)
    ctx = mp.get_context("spawn")
    names = ["m1", "m2", "m3"]
    procs = {n: ctx.Process(target=member, args=(broker.bootstrap, n, state, protocol))
             for n in names}
    for proc in procs.values():
        proc.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        if all(len(assignment(state, n)) == 2 for n in names):
            break
        time.sleep(0.1)
    assert all(len(assignment(state, n)) == 2 for n in names), \
        [assignment(state, n) for n in names]
    # The broker agrees: which protocol the group runs and who owns what.
    d = a.describe_consumer_groups(["workers"])["workers"].result(15)
    assert d.type.name == protocol.upper(), d.type
    assert sorted(m.client_id for m in d.members) == names
    owned = sorted(tp.partition for m in d.members for tp in m.assignment.topic_partitions)
    assert owned == list(range(6)), owned

    os.kill(procs["m3"].pid, signal.SIGKILL)
    killed_at = time.time()
    survivors = ["m1", "m2"]
    while time.time() - killed_at < 30:
        owned = sorted(sum((assignment(state, n) for n in survivors), []))
        if owned == list(range(6)):
            break
        time.sleep(0.05)
    took = time.time() - killed_at
    assert owned == list(range(6)), owned
    print(f"{protocol}: survivors owned all 6 partitions {took:.2f}s after the kill")
    assert took <= SESSION_MS / 1000 + 3, f"survivors took {took:.1f}s to own every partition"

    # Every message consumed, and committed by the survivors: m3 may have read its partitions
    # and died before its first auto-commit, so what it saw does not count as done.
    want = {(i % 6, i // 6) for i in range(TOTAL)}
    deadline = time.time() + 60
    while time.time() < deadline and not (want <= seen_offsets(state, names)
                                          and committed(broker) == [TOTAL // 6] * 6):
        time.sleep(0.2)
    assert want <= seen_offsets(state, names), "not every message was consumed"
    assert committed(broker) == [TOTAL // 6] * 6, committed(broker)

    open(os.path.join(state, "stop"), "w").close()
    for n in survivors:
        procs[n].join(30)
        assert procs[n].exitcode == 0

    # Committed offsets survive a broker restart, and a new member starts from them.
    assert broker.stop() == 0
    broker.start()
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(600):
        p.produce("work", value=f"late-{i}".encode(), partition=i % 6)
    assert p.flush(15) == 0
    c = Consumer(consumer_config(protocol, **{"bootstrap.servers": broker.bootstrap,
                                              "enable.auto.commit": False}))
    c.subscribe(["work"])
    got = []
    deadline = time.time() + 30
    while len(got) < 600 and time.time() < deadline:
        for m in c.consume(1000, 0.5):
            if m.error() is None:
                got.append(m.value())
    time.sleep(1)
    got += [m.value() for m in c.consume(1000, 1.0) if m.error() is None]
    c.close()
    assert sorted(got) == sorted(f"late-{i}".encode() for i in range(600)), \
        f"{len(got)} messages; the first: {got[:3]}"


def test_kafka_python_group_consumer(broker):
    from kafka import KafkaConsumer, KafkaProducer
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(500):
        producer.send("kpg", value=f"{i}".encode())
    producer.flush()
    producer.close()
    c = KafkaConsumer("kpg", bootstrap_servers=broker.bootstrap, group_id="kp-group",
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=8000)
    values = [m.value for m in c]
    assert sorted(int(v) for v in values) == list(range(500))
    c.commit()
    tp = next(iter(c.assignment()))
    assert c.committed(tp) == 500
    c.close()
