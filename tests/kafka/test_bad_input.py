"""Garbage on the Kafka port: oversized and malformed frames close only their own connection,
bad batches get Kafka's error codes, and other clients are undisturbed."""

import socket
import struct

import pytest

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient


def raw(broker):
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
    return s


def closed(s) -> bool:
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return True


def api_versions_ok(broker):
    s = raw(broker)
    body = struct.pack(">hhih", 18, 0, 42, -1)
    s.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", s.recv(4))[0]
    data = b""
    while len(data) < size:
        data += s.recv(size - len(data))
    corr, err = struct.unpack(">ih", data[:6])
    s.close()
    return corr == 42 and err == 0


def test_garbage_frames_close_only_their_connection(broker):
    healthy = AdminClient({"bootstrap.servers": broker.bootstrap})
    for payload in [
        struct.pack(">i", 2_000_000_000),               # over socket.request.max.bytes
        struct.pack(">i", -5),                           # negative size
        struct.pack(">i", 12) + b"\xff" * 12,            # unknown api key
        struct.pack(">i", 10) + struct.pack(">hhih", 3, 99, 1, -1),   # Metadata v99
        struct.pack(">i", 14) + struct.pack(">hhih", 0, 7, 1, -1) + b"\x00" * 4,  # truncated Produce
    ]:
        s = raw(broker)
        s.sendall(payload)
        assert closed(s), f"connection survived {payload!r}"
        s.close()
    assert api_versions_ok(broker)
    assert healthy.list_topics(timeout=10).brokers


def test_unsupported_api_versions_version_gets_error_and_list(broker):
    s = raw(broker)
    body = struct.pack(">hhih", 18, 99, 7, -1)
    s.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", s.recv(4))[0]
    data = s.recv(size)
    corr, err = struct.unpack(">ih", data[:6])
    assert (corr, err) == (7, 35)  # UNSUPPORTED_VERSION, answered as v0
    s.close()


def produce_v3(topic: bytes, records: bytes, acks=-1) -> bytes:
    body = struct.pack(">hhi", 0, 3, 9) + struct.pack(">h", 4) + b"tester"[:4]
    body += struct.pack(">h", -1)                      # transactional id
    body += struct.pack(">hi", acks, 5000)
    body += struct.pack(">i", 1) + struct.pack(">h", len(topic)) + topic
    body += struct.pack(">i", 1) + struct.pack(">i", 0) + struct.pack(">i", len(records)) + records
    return struct.pack(">i", len(body)) + body


def produce_error_code(broker, topic, records):
    s = raw(broker)
    s.sendall(produce_v3(topic, records))
    size = struct.unpack(">i", s.recv(4))[0]
    data = b""
    while len(data) < size:
        data += s.recv(size - len(data))
    s.close()
    # corr(4) topics(4) name(2+n) partitions(4) index(4) error(2)
    n = struct.unpack(">h", data[8:10])[0]
    at = 10 + n + 4 + 4
    return struct.unpack(">h", data[at:at + 2])[0]


def test_corrupt_batches_and_unknown_topics_get_error_codes(broker):
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce("exists", b"x")
    assert p.flush(10) == 0
    batch = bytearray(61 + 10)
    struct.pack_into(">qiib", batch, 0, 0, len(batch) - 12, -1, 2)
    struct.pack_into(">i", batch, 57, 1)
    assert produce_error_code(broker, b"exists", bytes(batch)) == 2      # CORRUPT_MESSAGE (crc)
    assert produce_error_code(broker, b"nosuchtopic", bytes(batch)) == 3  # UNKNOWN_TOPIC_OR_PARTITION
    assert api_versions_ok(broker)


UNSERVED = {
    # EndTxn v0: transactional_id "t", producer_id 1, epoch 0, committed true
    "EndTxn": struct.pack(">hhih", 26, 0, 77, -1) + struct.pack(">h", 1) + b"t"
    + struct.pack(">qhb", 1, 0, 1),
    # DescribeAcls v1: any resource, any name, pattern ANY, any principal/host/op/permission
    "DescribeAcls": struct.pack(">hhih", 29, 1, 77, -1) + struct.pack(">bhbhhbb", 1, -1, 1, -1, -1, 1, 1),
}


@pytest.mark.parametrize("api", sorted(UNSERVED))
def test_unserved_apis_are_refused_cleanly(broker, api):
    """Transactions and ACLs come later; until then their requests get UNSUPPORTED_VERSION
    rather than a dropped connection."""
    s = raw(broker)
    body = UNSERVED[api]
    s.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", s.recv(4))[0]
    data = s.recv(size)
    corr, throttle, err = struct.unpack(">iih", data[:10])
    assert (corr, err) == (77, 35)
    s.close()
    assert api_versions_ok(broker)
