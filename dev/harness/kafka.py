"""The Kafka probes tests and tools share: fill a topic, read its end offsets, delete it."""

from __future__ import annotations

import random

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from backup_pipeline.demo.data import awkward_record, good_record
from backup_pipeline.topics import TopicSpec
from dev.harness.waits import wait_until


def produce_many(brokers: str, topic: str, spec: TopicSpec, n: int, seed: int = 1) -> None:
    """``n`` realistic records, one in twenty awkward (they go to quarantine)."""
    rng = random.Random(seed)
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "enable.idempotence": True})
    for _ in range(n):
        make = awkward_record if rng.random() < 0.05 else good_record
        record = make(rng, spec.value_format, spec.table)
        while True:
            try:
                producer.produce(
                    topic, key=record.key, value=record.value, headers=list(record.headers)
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0


def delete_topic(admin: AdminClient, topic: str) -> None:
    """Delete ``topic`` and wait until it has left the cluster's metadata."""
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result()
    wait_until(
        lambda: topic not in admin.list_topics(timeout=10).topics,
        30,
        f"the deleted topic {topic} to leave the metadata",
        interval=0.2,
    )


def end_offsets(brokers: str, topic: str) -> dict[int, int]:
    """Per partition of ``topic``, the offset after the last committed record."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "test-probe",
            "isolation.level": "read_committed",
        }
    )
    try:
        return consumer_end_offsets(consumer, topic)
    finally:
        consumer.close()


def consumer_end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    """``end_offsets`` through a consumer one keeps (a monitor that asks every second)."""
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
        for p in sorted(partitions)
    }
