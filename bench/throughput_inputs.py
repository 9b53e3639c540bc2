"""The inputs and baselines of bench/backup_throughput.py: realistic records produced to a topic
and read back as mapped rows, and the two other ways of writing them (one raw COPY, one
transaction per record), timed."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_dumps

from backup_pipeline.backup.records import (
    JsonbWire,
    KafkaMessage,
    columns,
    map_messages,
)
from backup_pipeline.backup.writer import copy_rows
from backup_pipeline.demo.data import good_record
from backup_pipeline.topics import TopicSpec
from dev.harness.kafka import end_offsets

VERSION = 1


# ------------------------------------------------------------------ producing ----


def produce(brokers: str, topic: str, spec: TopicSpec, count: int, seed: int) -> int:
    """Produce ``count`` good records as fast as librdkafka allows; return payload bytes."""
    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "batch.num.messages": 100_000,
            "compression.type": "none",
            "acks": "all",
            "enable.idempotence": False,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err.str())

    rng = random.Random(seed)
    payload = 0
    for i in range(count):
        record = good_record(rng, spec.value_format, spec.table)
        payload += len(record.key or b"") + len(record.value or b"")
        while True:
            try:
                producer.produce(
                    topic,
                    record.value,
                    record.key,
                    headers=cast(Any, record.headers),
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
    left = producer.flush(300)
    if left or failures:
        raise RuntimeError(f"producing to {topic}: {left} undelivered, errors: {failures[:3]}")
    return payload


def read_rows(brokers: str, topic: str, spec: TopicSpec) -> list[tuple[Any, ...]]:
    """Every record of the topic, mapped exactly as the backup maps it (not timed)."""
    ends = end_offsets(brokers, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "bench-read-back",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    rows: list[tuple[Any, ...]] = []
    remaining = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, 0) for p in sorted(remaining)])
    idle_since = time.monotonic()
    try:
        while remaining:
            polled = consumer.consume(num_messages=10_000, timeout=1.0)
            messages: list[KafkaMessage] = []
            for message in polled:
                error = message.error()
                if error is None:
                    messages.append(cast(KafkaMessage, message))
                elif error.code() == KafkaError._PARTITION_EOF:
                    partition = cast(int, message.partition())
                    if cast(int, message.offset()) >= ends[partition]:
                        remaining.discard(partition)
                else:
                    raise RuntimeError(f"reading {topic}: {error.str()}")
            if messages:
                mapped = map_messages(messages, spec.value_format, VERSION, topic)
                if mapped.quarantine:
                    raise RuntimeError(f"{len(mapped.quarantine)} good records were quarantined")
                rows.extend(mapped.rows)
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 60:
                raise RuntimeError(f"reading {topic} back: no progress for 60s")
    finally:
        consumer.close()
    return rows


# ------------------------------------------------------------------ baselines ----


def time_copy(url: str, spec: TopicSpec, rows: Sequence[tuple[Any, ...]]) -> float:
    """Seconds for one binary COPY of ``rows`` plus its commit (rows are built already)."""
    cols = columns(spec.value_format)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        # The writer's own COPY, so the baseline is the fastest COPY this code knows.
        copy_rows(cur, spec.table, cols, rows)
        conn.commit()
        elapsed = time.perf_counter() - started
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.table)))
        stored = cur.fetchone()
    if not stored or stored[0] != len(rows):
        raise RuntimeError(f"COPY stored {stored} rows, expected {len(rows)}")
    return elapsed


def time_per_record(
    url: str, spec: TopicSpec, topic: str, rows: Sequence[tuple[Any, ...]]
) -> float:
    """Seconds for "UPDATE hwm; INSERT row; COMMIT" once per row, on a fresh connection."""
    cols = columns(spec.value_format)
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(spec.table),
        sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols),
        sql.SQL(", ").join(sql.SQL("%s::") + sql.SQL(t) for _, t in cols),
    )
    # Parameters go as text: the JSON text of each jsonb value (rows carry jsonb's wire
    # format), passed through by the json dumps below.
    params = [tuple(Jsonb(v.json) if isinstance(v, JsonbWire) else v for v in row) for row in rows]
    update = (
        "UPDATE bekreftelse_hwm SET kafka_offset = %s "
        "WHERE version = %s AND kafka_topic = %s AND kafka_partition = %s"
    )
    with psycopg.connect(url) as conn:
        set_json_dumps(lambda obj: obj if isinstance(obj, bytes) else json.dumps(obj), context=conn)
        conn.execute(
            "INSERT INTO bekreftelse_hwm (version, kafka_partition, kafka_offset, kafka_topic) "
            "SELECT %s, p, -1, %s FROM generate_series(0, 2) AS p",
            (VERSION, topic),
        )
        conn.commit()
        started = time.perf_counter()
        for row in params:
            conn.execute(update, (row[2], VERSION, topic, row[1]))
            conn.execute(insert, row)
            conn.commit()
        return time.perf_counter() - started
