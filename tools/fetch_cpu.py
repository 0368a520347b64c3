#!/usr/bin/env python3
"""Broker CPU spent serving a consumer, zero-copy (sendfile) against read+copy, in one run.

Starts `sluice serve --fetch-zero-copy true|false` on a fresh data dir for each mode, produces
GIB of 100 KiB messages into a 6-partition topic, then consumes the whole backlog with a
confluent-kafka consumer and reads the broker's CPU time (utime+stime from /proc) before and
after the consume. Prints CPU seconds per GiB served for each mode and their ratio.

  .venv/bin/python tools/fetch_cpu.py --bin target/release/sluice --dir /path --gib 2
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def run(binary, base, gib, zero_copy, port):
    data = os.path.join(base, f"fetch-cpu-{zero_copy}")
    shutil.rmtree(data, ignore_errors=True)
    bootstrap = f"127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "serve", "--data-dir", data, "--kafka-listen", bootstrap,
                             "--native-listen", "off",
                             "--fetch-zero-copy", str(zero_copy).lower()],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline().startswith(b"sluice ready")
    try:
        a = AdminClient({"bootstrap.servers": bootstrap})
        a.create_topics([NewTopic("backlog", num_partitions=6, replication_factor=1)])["backlog"].result(15)
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1_000_000,
                      "queue.buffering.max.kbytes": 262144})
        value = os.urandom(100 * 1024)
        n = int(gib * (1 << 30) / len(value))
        for i in range(n):
            while True:
                try:
                    p.produce("backlog", value=value, partition=i % 6)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
        assert p.flush(300) == 0
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench",
                      "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 8_388_608})
        c.assign([TopicPartition("backlog", i, 0) for i in range(6)])
        before, t0 = cpu_seconds(proc.pid), time.time()
        got = 0
        while got < n:
            for m in c.consume(1000, 1.0):
                if m.error() is None:
                    got += 1
        cpu, wall = cpu_seconds(proc.pid) - before, time.time() - t0
        c.close()
        return cpu / gib, n * len(value) / wall / 1e6
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/sluice")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--port", type=int, default=19500)
    args = ap.parse_args()
    results = {}
    for zc in (True, False):
        results[zc] = run(args.bin, args.dir, args.gib, zc, args.port)
        print(f"zero_copy={zc}: broker {results[zc][0]:.3f} CPU s per GiB served, "
              f"consume {results[zc][1]:.0f} MB/s")
    print(f"broker CPU, sendfile / read+copy = {results[True][0] / results[False][0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
