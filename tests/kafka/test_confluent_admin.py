"""AdminClient against sluice: topics, partitions, configs, cluster description, and the
errors Kafka gives for bad requests."""

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewPartitions, NewTopic)


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def wait(futures):
    return {k: f.result(timeout=15) for k, f in futures.items()}


def test_create_list_describe_delete(broker):
    a = admin(broker)
    wait(a.create_topics([NewTopic("orders", num_partitions=6, replication_factor=1,
                                   config={"retention.ms": "3600000"})]))
    md = a.list_topics(timeout=10)
    assert "orders" in md.topics
    assert sorted(md.topics["orders"].partitions) == list(range(6))
    assert md.topics["orders"].partitions[3].leader == 0
    assert md.cluster_id

    res = ConfigResource(ConfigResource.Type.TOPIC, "orders")
    configs = wait(a.describe_configs([res]))[res]
    assert configs["retention.ms"].value == "3600000"
    assert configs["cleanup.policy"].value == "delete"

    wait(a.incremental_alter_configs([ConfigResource(
        ConfigResource.Type.TOPIC, "orders",
        incremental_configs=[ConfigEntry("retention.bytes", "1048576",
                                         incremental_operation=AlterConfigOpType.SET)])]))
    configs = wait(a.describe_configs([res]))[res]
    assert configs["retention.bytes"].value == "1048576"

    wait(a.create_partitions([NewPartitions("orders", 8)]))
    assert len(a.list_topics(timeout=10).topics["orders"].partitions) == 8

    wait(a.delete_topics(["orders"]))
    assert "orders" not in a.list_topics(timeout=10).topics

    cluster = a.describe_cluster().result(timeout=10)
    assert [n.id for n in cluster.nodes] == [0]


def test_metadata_survives_restart(broker):
    a = admin(broker)
    wait(a.create_topics([NewTopic("keep", num_partitions=3, replication_factor=1)]))
    assert broker.stop() == 0
    broker.start()
    md = admin(broker).list_topics(timeout=10)
    assert len(md.topics["keep"].partitions) == 3


@pytest.mark.parametrize("topic,kwargs,code", [
    ("bad/name", {"num_partitions": 1}, "TOPIC_EXCEPTION"),
    ("rf3", {"num_partitions": 1, "replication_factor": 3}, "INVALID_REPLICATION_FACTOR"),
    ("zero", {"num_partitions": 0}, "INVALID_PARTITIONS"),
    ("compacted", {"num_partitions": 1, "config": {"cleanup.policy": "compact"}}, "INVALID_CONFIG"),
    ("badconf", {"num_partitions": 1, "config": {"retention.ms": "soon"}}, "INVALID_CONFIG"),
])
def test_bad_topic_requests_get_kafka_errors(broker, topic, kwargs, code):
    kwargs.setdefault("replication_factor", 1)
    a = admin(broker)  # keep the client alive until its future completes
    fut = a.create_topics([NewTopic(topic, **kwargs)])[topic]
    with pytest.raises(KafkaException) as e:
        fut.result(timeout=15)
    assert e.value.args[0].name() == code


def test_duplicate_topic_and_unknown_delete(broker):
    a = admin(broker)
    wait(a.create_topics([NewTopic("dup", num_partitions=1, replication_factor=1)]))
    with pytest.raises(KafkaException) as e:
        a.create_topics([NewTopic("dup", num_partitions=1, replication_factor=1)])["dup"].result(15)
    assert e.value.args[0].name() == "TOPIC_ALREADY_EXISTS"
    with pytest.raises(KafkaException) as e:
        a.delete_topics(["nope"])["nope"].result(15)
    assert e.value.args[0].name() == "UNKNOWN_TOPIC_OR_PART"


def test_delete_records_moves_the_low_watermark(broker):
    from confluent_kafka import Consumer, Producer, TopicPartition
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(100):
        p.produce("trim", value=f"{i}".encode(), partition=0)
    assert p.flush(10) == 0
    a = admin(broker)
    res = a.delete_records([TopicPartition("trim", 0, 40)])
    [(tp, fut)] = list(res.items())
    assert fut.result(timeout=15).low_watermark == 40
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    assert c.get_watermark_offsets(TopicPartition("trim", 0), timeout=10) == (40, 100)
    c.close()
    assert broker.stop() == 0
    broker.start()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    assert c.get_watermark_offsets(TopicPartition("trim", 0), timeout=10) == (40, 100)
    c.close()
    with pytest.raises(KafkaException):
        list(a.delete_records([TopicPartition("trim", 0, 500)]).values())[0].result(timeout=15)
