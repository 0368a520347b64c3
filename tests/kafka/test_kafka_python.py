"""kafka-python (an independent, pure-Python client) against sluice."""

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic


def test_kafka_python_admin_produce_consume(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("kp", num_partitions=3, replication_factor=1)])
    assert "kp" in admin.list_topics()

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             compression_type="gzip", enable_idempotence=True)
    futures = [producer.send("kp", key=f"k{i % 5}".encode(), value=f"v{i}".encode())
               for i in range(3000)]
    producer.flush()
    metas = [f.get(timeout=10) for f in futures]
    assert {m.partition for m in metas} <= {0, 1, 2}
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    tps = [TopicPartition("kp", p) for p in range(3)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    values = [m.value for m in consumer]
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(3000))
    assert consumer.end_offsets(tps) == {tp: sum(1 for m in metas if m.partition == tp.partition)
                                         for tp in tps}
    consumer.close()
    admin.delete_topics(["kp"])
    admin.close()
