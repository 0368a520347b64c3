"""Topic configs that change what the broker does: message.timestamp.type, max.message.bytes,
and auto.create.topics.enable switched off."""

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition, TIMESTAMP_LOG_APPEND_TIME
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker


def test_log_append_time_and_max_message_bytes(broker):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic("lat", num_partitions=1, replication_factor=1,
                              config={"message.timestamp.type": "LogAppendTime",
                                      "max.message.bytes": "2000"})])["lat"].result(15)
    p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": "none",
                  "batch.num.messages": 1})
    errors = []
    p.produce("lat", value=b"small", timestamp=1_000, on_delivery=lambda e, m: errors.append(e))
    p.produce("lat", value=b"x" * 5000, on_delivery=lambda e, m: errors.append(e))
    p.flush(15)
    assert errors[0] is None
    assert errors[1] is not None and errors[1].name() == "MSG_SIZE_TOO_LARGE"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    c.assign([TopicPartition("lat", 0, 0)])
    m = c.poll(10)
    assert m is not None and m.value() == b"small"
    ts_type, ts = m.timestamp()
    assert ts_type == TIMESTAMP_LOG_APPEND_TIME and ts > 1_000_000_000_000
    c.close()


def test_auto_create_can_be_disabled(workdir):
    b = Broker(workdir / "data", extra=["--auto-create-topics", "false"]).start()
    try:
        p = Producer({"bootstrap.servers": b.bootstrap, "message.timeout.ms": 3000})
        errors = []
        p.produce("never-created", b"v", on_delivery=lambda e, m: errors.append(e))
        p.flush(10)
        assert errors and errors[0] is not None
        md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10)
        assert "never-created" not in md.topics
    finally:
        assert b.stop() == 0
