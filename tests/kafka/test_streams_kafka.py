"""A file stream is stored in the partition log of the topic of its name: Kafka clients read
what native publishers stored (the record key is the subject), and cannot write around the
stream (its subjects, dedup and limits)."""

import subprocess

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from conftest import sluice_bin


def sluice(broker, *args):
    p = subprocess.run([sluice_bin(), *args, "--server", f"127.0.0.1:{broker.native_port}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_kafka_consumers_read_a_stream(broker):
    sluice(broker, "stream", "add", "EVENTS", "--subjects", "events.>")
    sluice(broker, "pub", "events.eu.click", "e {{Count}}", "--count", "20", "--msg-id", "c")
    sluice(broker, "pub", "events.eu.click", "dup", "--msg-id", "c-3")  # dropped as duplicate
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "s",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("EVENTS", 0, 0)])
    got = []
    for _ in range(50):
        for m in c.consume(100, 0.2):
            assert m.error() is None, m.error()
            got.append((m.offset(), m.key(), m.value(), dict(m.headers() or [])))
        if len(got) >= 20:
            break
    c.close()
    assert [g[0] for g in got] == list(range(20)), "offset = stream sequence - 1"
    assert all(k == b"events.eu.click" for _, k, _, _ in got)
    assert [v for _, _, v, _ in got] == [f"e {i}".encode() for i in range(1, 21)]
    assert got[2][3]["Sluice-Msg-Id"] == b"c-3"

    p = Producer({"bootstrap.servers": broker.bootstrap})
    errors = []
    p.produce("EVENTS", value=b"sneaky", on_delivery=lambda e, m: errors.append(e))
    p.flush(10)
    assert errors and errors[0] is not None and errors[0].name() == "POLICY_VIOLATION", errors
