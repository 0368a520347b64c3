"""kill -9 the broker in the middle of an idempotent acks=all produce, restart it on the same
data dir: every acknowledged message is there, exactly once, in order per partition."""

import multiprocessing as mp
import os
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker

TOTAL = 200_000


def producer_proc(bootstrap, topic, acked_path, stop_at):
    """Produces until killed or done; appends every acknowledged sequence number to a file
    (flushed per delivery report batch) so the test knows exactly what was acknowledged."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "compression.type": "lz4", "linger.ms": 5, "message.timeout.ms": 120_000,
                  "retry.backoff.ms": 100})
    out = open(acked_path, "a", buffering=1)

    def on_delivery(err, msg):
        if err is None:
            out.write(f"{int(msg.value()[:12])}\n")

    body = os.urandom(1000)
    for i in range(stop_at):
        key = f"k{i % 64}".encode()
        while True:
            try:
                p.produce(topic, key=key, value=f"{i:012d}".encode() + body, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    p.flush(120)
    out.close()


def test_kill9_mid_produce_loses_nothing_acknowledged(workdir):
    broker = Broker(workdir / "data").start()
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic("durable", num_partitions=6, replication_factor=1)])["durable"].result(15)
    acked_path = workdir / "acked.txt"
    proc = mp.get_context("spawn").Process(
        target=producer_proc, args=(broker.bootstrap, "durable", str(acked_path), TOTAL))
    proc.start()
    # Let a good part of the produce be acknowledged, then pull the plug.
    deadline = time.time() + 60
    while time.time() < deadline:
        if acked_path.exists() and sum(1 for _ in open(acked_path)) > TOTAL // 4:
            break
        time.sleep(0.05)
    broker.kill9()
    acked_before_kill = sum(1 for _ in open(acked_path))
    assert acked_before_kill > 0, "nothing was acknowledged before the kill"
    time.sleep(1.0)
    broker.start()  # same port, same data dir: the producer reconnects and finishes
    proc.join(180)
    assert proc.exitcode == 0, "producer did not finish after the restart"
    acked = [int(l) for l in open(acked_path)]
    assert len(acked) == len(set(acked)), "a message was acknowledged twice"

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    c.assign([TopicPartition("durable", p, 0) for p in range(6)])
    seen, last_per_key = {}, {}
    idle_since = time.time()
    while time.time() - idle_since < 5:
        msgs = c.consume(10000, 0.5)
        if msgs:
            idle_since = time.time()
        for m in msgs:
            assert not m.error(), m.error()
            seq = int(m.value()[:12])
            assert seq not in seen, f"message {seq} stored twice"
            seen[seq] = (m.partition(), m.offset())
            k = m.key()
            assert last_per_key.get(k, -1) < seq, f"key {k} out of order at {seq}"
            last_per_key[k] = seq
    c.close()
    missing = [s for s in acked if s not in seen]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    assert broker.stop() == 0
