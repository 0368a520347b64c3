"""Broker memory stays bounded while data flows through it: the data lives on disk, not in RAM.
SLUICE_RSS_GIB sets how much is produced (the issue's figure is 5 GiB; CI uses 1 GiB)."""

import os
import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

GIB = float(os.environ.get("SLUICE_RSS_GIB", "1"))
RSS_LIMIT_KIB = 512 * 1024


def test_rss_stays_under_512_mib_while_producing(broker):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic("bulk", num_partitions=6, replication_factor=1)])["bulk"].result(15)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], broker.rss_kib())
            time.sleep(0.2)

    t = threading.Thread(target=sample)
    t.start()
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 1_000_000, "message.max.bytes": 2_000_000,
                  "queue.buffering.max.kbytes": 262144})
    value = os.urandom(100 * 1024)
    n = int(GIB * (1 << 30) / len(value))
    for i in range(n):
        while True:
            try:
                p.produce("bulk", value=value, partition=i % 6)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(300) == 0
    done.set()
    t.join()
    print(f"produced {n * len(value) / (1 << 30):.2f} GiB, broker peak RSS {peak[0] / 1024:.0f} MiB")
    assert 0 < peak[0] < RSS_LIMIT_KIB, f"peak RSS {peak[0]} KiB"
