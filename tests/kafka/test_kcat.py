"""Debian's kcat (librdkafka 2.0.2, old protocol versions) against sluice: -L, -P, -C."""

import shutil
import subprocess

import pytest

KCAT = shutil.which("kcat")


def kcat(broker, *args, input=None):
    assert KCAT, "kcat is required (apt-get install kcat)"
    return subprocess.run([KCAT, "-b", broker.bootstrap, *args], input=input,
                          capture_output=True, timeout=60, check=True)


def test_kcat_list_produce_consume(broker):
    lines = "".join(f"key{i % 3}:value {i}\n" for i in range(500)).encode()
    kcat(broker, "-P", "-t", "kc", "-K:", input=lines)
    md = kcat(broker, "-L").stdout.decode()
    assert 'topic "kc" with 1 partitions' in md
    assert "broker 0 at 127.0.0.1" in md
    out = kcat(broker, "-C", "-t", "kc", "-e", "-q", "-f", "%k|%s|%o\n").stdout.decode()
    rows = [l.split("|") for l in out.splitlines()]
    assert [r[1] for r in rows] == [f"value {i}" for i in range(500)]
    assert [int(r[2]) for r in rows] == list(range(500))
    # Start from an offset in the middle.
    out = kcat(broker, "-C", "-t", "kc", "-o", "490", "-e", "-q", "-f", "%o\n").stdout.decode()
    assert out.split() == [str(i) for i in range(490, 500)]


def test_kcat_unknown_topic_consume_reports_error(broker):
    r = subprocess.run([KCAT, "-b", broker.bootstrap, "-C", "-t", "nosuch", "-e", "-X",
                        "allow.auto.create.topics=false", "-m", "5"],
                       capture_output=True, timeout=60)
    assert r.returncode != 0 or b"Unknown topic" in r.stderr or b"UNKNOWN" in r.stderr.upper()
