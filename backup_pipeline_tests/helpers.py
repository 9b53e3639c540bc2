"""Helpers for tests against the real services: produce records, read what was stored."""

from __future__ import annotations

import random
import struct

import psycopg
from confluent_kafka import Producer

from backup_pipeline.demo.data import DemoRecord, good_record
from backup_pipeline.topics import TopicSpec


def produce(
    producer: Producer, topic: str, records: list[DemoRecord], partition: int | None = None
) -> None:
    for record in records:
        kwargs = {} if partition is None else {"partition": partition}
        producer.produce(
            topic, key=record.key, value=record.value, headers=list(record.headers), **kwargs
        )
        producer.poll(0)
    assert producer.flush(30) == 0


def good_records(spec: TopicSpec, n: int, seed: int = 1) -> list[DemoRecord]:
    rng = random.Random(seed)
    return [good_record(rng, spec.value_format, spec.table) for _ in range(n)]


def key(n: int) -> bytes:
    return struct.pack(">q", n)


def stored_offsets(conn: psycopg.Connection, table: str, version: int = 1) -> list[tuple[int, int]]:
    return [
        tuple(r)
        for r in conn.execute(
            f"SELECT kafka_partition, kafka_offset FROM {table} WHERE version = %s ORDER BY 1, 2",
            (version,),
        ).fetchall()
    ]


def quarantined(
    conn: psycopg.Connection, topic: str, version: int = 1
) -> list[tuple[int, int, str]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT kafka_partition, kafka_offset, reason FROM backup_quarantine "
            "WHERE kafka_topic = %s AND version = %s ORDER BY 1, 2",
            (topic, version),
        ).fetchall()
    ]


def hwms(conn: psycopg.Connection, topic: str, version: int = 1) -> dict[int, int]:
    return dict(
        conn.execute(
            "SELECT kafka_partition, kafka_offset FROM bekreftelse_hwm "
            "WHERE kafka_topic = %s AND version = %s",
            (topic, version),
        ).fetchall()
    )


def end_offsets(consumer_settings_brokers: str, topic: str, partitions: int = 3) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": consumer_settings_brokers,
            "group.id": "test-probe",
            "isolation.level": "read_committed",
        }
    )
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()
