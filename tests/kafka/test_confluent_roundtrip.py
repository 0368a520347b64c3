"""The main produce/consume path with librdkafka (confluent-kafka): idempotent producers with
acks=all and lz4/zstd, consumers by assignment, ListOffsets by time, and kcat reading the same
data. Per-key order and exactly-once delivery of every acknowledged message are checked."""

import os
import shutil
import subprocess
import time
from collections import defaultdict

import pytest
from conftest import Broker
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

MESSAGES = int(os.environ.get("SLUICE_ROUNDTRIP_MESSAGES", "200000"))


def produce_keyed(bootstrap, topic, n, compression, value_bytes=1024, keys=1000):
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "compression.type": compression, "linger.ms": 10,
                  "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000})
    acked, errors = [], []

    def on_delivery(err, msg):
        if err:
            errors.append(err)
        else:
            acked.append((msg.partition(), msg.offset()))

    payload = bytearray(os.urandom(value_bytes))
    for i in range(n):
        key = f"k{i % keys}".encode()
        payload[0:12] = f"{i:012d}".encode()
        while True:
            try:
                p.produce(topic, key=key, value=bytes(payload), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(120) == 0, "messages still in flight"
    assert not errors, errors[:5]
    assert len(acked) == n
    return acked


def consume_all(bootstrap, topic, partitions, expected, timeout=120):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                  "enable.auto.commit": False, "fetch.max.bytes": 8_388_608})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    by_key = defaultdict(list)
    seen = set()
    deadline = time.time() + timeout
    while len(seen) < expected and time.time() < deadline:
        for m in c.consume(10000, 1.0):
            assert not m.error(), m.error()
            seq = int(m.value()[0:12])
            assert seq not in seen, f"message {seq} delivered twice"
            seen.add(seq)
            by_key[m.key()].append((m.partition(), m.offset(), seq))
    c.close()
    return seen, by_key


def check_order(by_key):
    for key, items in by_key.items():
        parts = {p for p, _, _ in items}
        assert len(parts) == 1, f"key {key} spread over partitions {parts}"
        seqs = [s for _, _, s in sorted(items, key=lambda t: t[1])]
        assert seqs == sorted(seqs), f"key {key} out of order"


def test_200k_keyed_idempotent_lz4_roundtrip_with_kcat(broker):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic("keyed", num_partitions=6, replication_factor=1)])["keyed"].result(15)
    acked = produce_keyed(broker.bootstrap, "keyed", MESSAGES, "lz4")
    offsets = defaultdict(list)
    for part, off in acked:
        offsets[part].append(off)
    for part, offs in offsets.items():
        assert sorted(offs) == list(range(len(offs))), f"partition {part}: offsets not dense"

    seen, by_key = consume_all(broker.bootstrap, "keyed", 6, MESSAGES)
    assert len(seen) == MESSAGES
    check_order(by_key)

    kcat = shutil.which("kcat")
    assert kcat, "kcat is required (apt-get install kcat)"
    out = subprocess.run([kcat, "-b", broker.bootstrap, "-C", "-t", "keyed", "-e", "-q",
                          "-f", "%k %p %o\n"], capture_output=True, timeout=300, check=True)
    lines = out.stdout.decode().splitlines()
    assert len(lines) == MESSAGES
    last = {}
    for line in lines:
        k, p, o = line.split()
        assert last.get((k, p), -1) < int(o)
        last[(k, p)] = int(o)


def test_zstd_roundtrip_and_offsets_by_time(broker):
    before = int(time.time() * 1000) - 1
    produce_keyed(broker.bootstrap, "zs", 5000, "zstd", value_bytes=300, keys=7)
    seen, by_key = consume_all(broker.bootstrap, "zs", 1, 5000)
    assert len(seen) == 5000
    check_order(by_key)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    lo, hi = c.get_watermark_offsets(TopicPartition("zs", 0), timeout=10)
    assert (lo, hi) == (0, 5000)
    [tp] = c.offsets_for_times([TopicPartition("zs", 0, before)], timeout=10)
    assert tp.offset == 0
    [tp] = c.offsets_for_times([TopicPartition("zs", 0, int(time.time() * 1000) + 60_000)], timeout=10)
    assert tp.offset in (-1, 5000)
    c.close()


def test_restart_serves_everything_acknowledged(broker):
    produce_keyed(broker.bootstrap, "again", 3000, "none", value_bytes=200, keys=10)
    assert broker.stop() == 0
    broker.start()
    seen, by_key = consume_all(broker.bootstrap, "again", 1, 3000)
    assert len(seen) == 3000
    check_order(by_key)
    # The restarted broker keeps idempotent-producer state and takes new appends at the end.
    produce_keyed(broker.bootstrap, "again", 10, "none", value_bytes=200, keys=10)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    assert c.get_watermark_offsets(TopicPartition("again", 0), timeout=10) == (0, 3010)
    c.close()


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_backlog_reads_from_disk_both_ways(workdir, zero_copy):
    """Reading a backlog far behind the in-memory tail (4 MiB) goes to the segment files: sent
    with sendfile through the page cache (`--fetch-zero-copy true`) or read with O_DIRECT and
    copied (the default). Both hand librdkafka every message, in order, from small fetches that
    end inside batches as well as large ones."""
    b = Broker(workdir / "data", extra=["--fetch-zero-copy", zero_copy]).start()
    try:
        a = AdminClient({"bootstrap.servers": b.bootstrap})
        a.create_topics([NewTopic("backlog", num_partitions=3,
                                  replication_factor=1)])["backlog"].result(15)
        n = 24_000
        produce_keyed(b.bootstrap, "backlog", n, "none", value_bytes=1024, keys=50)
        seen, by_key = consume_all(b.bootstrap, "backlog", 3, n)
        assert len(seen) == n
        check_order(by_key)
        # Fetches capped well below a batch's size still make progress (KIP-74).
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "unused",
                      "enable.auto.commit": False, "fetch.max.bytes": 1024, "message.max.bytes": 1000,
                      "max.partition.fetch.bytes": 1024})
        c.assign([TopicPartition("backlog", 0, 0)])
        got = []
        deadline = time.time() + 60
        while len(got) < 2000 and time.time() < deadline:
            for m in c.consume(500, 1.0):
                assert not m.error(), m.error()
                got.append(m.offset())
        c.close()
        assert got[:2000] == list(range(2000))
    finally:
        assert b.stop() == 0, b.log_tail()
