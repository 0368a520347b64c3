"""`sluice group ls` / `sluice group describe` (text and --json) against groups run by real
confluent-kafka consumers, classic and KIP-848; OffsetDelete through confluent-kafka's admin
client; static membership over the classic protocol."""

import json
import subprocess
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
import pytest

from conftest import Broker, sluice_bin

TOPIC = "lagtopic"


def sluice(*args, check=True):
    p = subprocess.run([sluice_bin(), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def produce(bootstrap, n=100):
    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)])[TOPIC].result(15)
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        p.produce(TOPIC, value=str(i).encode(), partition=i % 3)
    assert p.flush(15) == 0


def joined(conf):
    c = Consumer(conf)
    c.subscribe([TOPIC])
    deadline = time.time() + 30
    while time.time() < deadline and len(c.assignment()) < 3:
        c.poll(0.2)
    assert len(c.assignment()) == 3, c.assignment()
    return c


@pytest.fixture
def kip848_broker(workdir):
    b = Broker(workdir / "data", extra=["--group-consumer-heartbeat-interval-ms", "500"]).start()
    yield b
    assert b.stop() == 0, b.log_tail()


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_describe_shows_members_offsets_and_lag(kip848_broker, protocol):
    broker = kip848_broker
    produce(broker.bootstrap)
    conf = {"bootstrap.servers": broker.bootstrap, "group.id": f"g-{protocol}",
            "client.id": f"cli-{protocol}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest"}
    if protocol == "consumer":
        conf["group.protocol"] = "consumer"
    c = joined(conf)
    c.commit(offsets=[TopicPartition(TOPIC, 0, 10), TopicPartition(TOPIC, 1, 20)],
             asynchronous=False)

    out = json.loads(sluice("group", "describe", f"g-{protocol}", "--bootstrap",
                            broker.bootstrap, "--json").stdout)
    assert out["group"] == f"g-{protocol}"
    assert out["type"] == protocol
    assert out["state"] == "Stable"
    assert len(out["members"]) == 1
    assert out["members"][0]["client_id"] == f"cli-{protocol}"
    assert sorted(p["partition"] for p in out["members"][0]["partitions"]) == [0, 1, 2]
    rows = {p["partition"]: p for p in out["partitions"]}
    assert (rows[0]["committed_offset"], rows[0]["log_end_offset"], rows[0]["lag"]) == (10, 34, 24)
    assert (rows[1]["committed_offset"], rows[1]["log_end_offset"], rows[1]["lag"]) == (20, 33, 13)
    assert (rows[2]["committed_offset"], rows[2]["log_end_offset"], rows[2]["lag"]) == \
        (None, 33, None)
    assert all(r["client_id"] == f"cli-{protocol}" for r in rows.values())
    assert out["total_lag"] == 37

    text = sluice("group", "describe", f"g-{protocol}", "--bootstrap", broker.bootstrap).stdout
    assert "LOG-END-OFFSET" in text and "total lag 37" in text
    line = next(ln for ln in text.splitlines() if ln.startswith(f"g-{protocol}  {TOPIC}  0"))
    assert line.split()[3:6] == ["10", "34", "24"], line

    listed = json.loads(sluice("group", "ls", "--bootstrap", broker.bootstrap, "--json").stdout)
    assert {"group": f"g-{protocol}", "type": protocol, "state": "Stable",
            "protocol_type": "consumer"} in listed
    assert f"g-{protocol}" in sluice("group", "ls", "--bootstrap", broker.bootstrap).stdout

    # Offsets of a topic the group consumes cannot be deleted; once it is empty they can.
    # (kafka-python's admin client: confluent-kafka's has no OffsetDelete.)
    from kafka import KafkaAdminClient
    from kafka.structs import TopicPartition as KTP
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    res = admin.delete_group_offsets(f"g-{protocol}", [KTP(TOPIC, 0)])
    assert res[KTP(TOPIC, 0)].__name__ == "GroupSubscribedToTopicError", res
    c.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        out = json.loads(sluice("group", "describe", f"g-{protocol}", "--bootstrap",
                                broker.bootstrap, "--json").stdout)
        if out["state"] == "Empty":
            break
        time.sleep(0.2)
    assert out["state"] == "Empty" and out["members"] == []
    res = admin.delete_group_offsets(f"g-{protocol}", [KTP(TOPIC, 0)])
    assert res[KTP(TOPIC, 0)].__name__ == "NoError", res
    admin.close()
    out = json.loads(sluice("group", "describe", f"g-{protocol}", "--bootstrap",
                            broker.bootstrap, "--json").stdout)
    assert sorted(p["partition"] for p in out["partitions"]) == [1]


def test_describe_errors_are_plain(broker):
    p = sluice("group", "describe", "no-such-group", "--bootstrap", broker.bootstrap, check=False)
    assert p.returncode == 1
    assert "does not exist" in p.stderr
    p = sluice("group", "ls", "--bootstrap", "127.0.0.1:1", "--timeout", "2", check=False)
    assert p.returncode == 1 and "cannot connect" in p.stderr


def test_static_member_keeps_partitions_across_restart(workdir):
    """A static member (group.instance.id) that restarts within the session timeout gets its
    partitions back without a rebalance of the others (generation unchanged)."""
    broker = Broker(workdir / "data", extra=["--group-min-session-timeout-ms", "1000"]).start()
    try:
        produce(broker.bootstrap)
        base = {"bootstrap.servers": broker.bootstrap, "group.id": "static",
                "session.timeout.ms": 10000, "heartbeat.interval.ms": 500,
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky"}
        c1 = Consumer({**base, "group.instance.id": "one", "client.id": "one"})
        c2 = Consumer({**base, "group.instance.id": "two", "client.id": "two"})
        for c in (c1, c2):
            c.subscribe([TOPIC])
        deadline = time.time() + 30
        while time.time() < deadline and len(c1.assignment()) + len(c2.assignment()) != 3:
            c1.poll(0.1)
            c2.poll(0.1)
        a1 = sorted(tp.partition for tp in c1.assignment())
        a2 = sorted(tp.partition for tp in c2.assignment())
        assert sorted(a1 + a2) == [0, 1, 2] and a1 and a2, (a1, a2)
        before = json.loads(sluice("group", "describe", "static", "--bootstrap",
                                   broker.bootstrap, "--json").stdout)
        ids = {m["instance_id"] for m in before["members"]}
        assert ids == {"one", "two"}
        # A static member leaving (close) does not send LeaveGroup: it comes back as itself.
        c2.close()
        c2 = Consumer({**base, "group.instance.id": "two", "client.id": "two"})
        c2.subscribe([TOPIC])
        deadline = time.time() + 30
        while time.time() < deadline and sorted(tp.partition for tp in c2.assignment()) != a2:
            c1.poll(0.1)
            c2.poll(0.1)
        assert sorted(tp.partition for tp in c2.assignment()) == a2
        assert sorted(tp.partition for tp in c1.assignment()) == a1
        c1.close()
        c2.close()
    finally:
        assert broker.stop() == 0, broker.log_tail()
