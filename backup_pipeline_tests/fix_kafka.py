"""Fixture plugin: Kafka clients and topics of a test's own, and the records tests write
and read back (the probes bench/ and soak/ use too are in dev.harness.kafka)."""

from __future__ import annotations

import random
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from backup_pipeline.demo.data import DemoRecord, good_record
from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.readback import split_origin
from backup_pipeline.topics import TOPICS, TopicSpec
from dev.harness.waits import bounded, wait_until


@pytest.fixture
def admin(services: dict[str, str]) -> AdminClient:
    return AdminClient({"bootstrap.servers": services["KAFKA_BROKERS"]})


@pytest.fixture
def topic_names(admin: AdminClient) -> dict[str, str]:
    """Three fresh topics (3 partitions each) named for this test only: table -> topic."""
    suffix = uuid.uuid4().hex[:10]
    names = {spec.table: f"test.{spec.table}.{suffix}" for spec in TOPICS}
    create_topics(admin, list(names.values()), partitions=3)
    return names


@pytest.fixture
def producer(services: dict[str, str]) -> Iterator[Producer]:
    producer = Producer(
        {"bootstrap.servers": services["KAFKA_BROKERS"], "linger.ms": 5, "enable.idempotence": True}
    )
    yield producer
    producer.flush(30)


def add_partitions(admin: AdminClient, topic: str, total: int) -> None:
    for future in admin.create_partitions([NewPartitions(topic, total)]).values():
        future.result()
    wait_until(
        lambda: len(admin.list_topics(topic, timeout=10).topics[topic].partitions) >= total,
        30,
        "the new partitions to show in metadata",
        interval=0.2,
    )


def produce(
    producer: Producer, topic: str, records: list[DemoRecord], partition: int | None = None
) -> None:
    for record in records:
        headers: list[tuple[str, str | bytes | None]] = list(record.headers)
        if partition is None:
            producer.produce(topic, key=record.key, value=record.value, headers=headers)
        else:
            producer.produce(
                topic, key=record.key, value=record.value, headers=headers, partition=partition
            )
        producer.poll(0)
    assert producer.flush(30) == 0


def good_records(spec: TopicSpec, n: int, seed: int = 1) -> list[DemoRecord]:
    rng = random.Random(seed)
    return [good_record(rng, spec.value_format, spec.table) for _ in range(n)]


def key(n: int) -> bytes:
    return struct.pack(">q", n)


Record = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]], int]


def read_topic(brokers: str, topic: str) -> dict[int, list[Record]]:
    """Every readable record per partition: (offset, key, value, headers, timestamp ms)."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"test-read-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            for p in meta.partitions
        }
        result: dict[int, list[Record]] = {p: [] for p in meta.partitions}
        todo = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        # consume() returns early only with a full batch: short polls, one overall deadline.
        deadline = time.monotonic() + bounded(30)
        while todo:
            assert time.monotonic() < deadline, f"{topic}: partitions {sorted(todo)} never ended"
            for m in consumer.consume(500, timeout=0.1):
                partition = cast(int, m.partition())
                if error := m.error():
                    if error.code() == KafkaError._PARTITION_EOF:
                        todo.discard(partition)
                    continue
                offset = cast(int, m.offset())
                headers = cast(list[tuple[str, bytes | None]], list(m.headers() or []))
                result[partition].append((offset, m.key(), m.value(), headers, m.timestamp()[1]))
                if offset >= ends[partition][1] - 1:
                    todo.discard(partition)
        return result
    finally:
        consumer.close()


def without_offsets(records: dict[int, list[Record]]) -> dict[int, list[tuple[Any, ...]]]:
    """What a restore must reproduce: per partition, in order, everything but the offset."""
    out = {}
    for p, recs in records.items():
        out[p] = [(k, v, split_origin(h)[0], ts) for _, k, v, h, ts in recs]
    return out
