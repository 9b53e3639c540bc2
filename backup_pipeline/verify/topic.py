"""The topic side of verify: a partition's records in offset order, mapped to the backup.

For the live source topic a record's offset is its backup offset. For a restored topic the
backup offset comes from the record's origin headers or, when the restore wrote none,
from the restore's offset map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import psycopg
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from backup_pipeline.backup import source
from backup_pipeline.errors import KafkaUnavailableError
from backup_pipeline.readback import Headers, message_headers, split_origin


@dataclass(frozen=True)
class TopicRecord:
    offset: int  # offset in the topic being verified
    source_offset: int | None  # offset in the backup; None when it cannot be mapped
    key: bytes | None
    value: bytes | None
    headers: Headers  # origin headers removed


def stream(
    consumer: Consumer, topic: str, partition: int, start: int, end: int, batch_bytes: int
) -> Iterator[Message]:
    """Records of one partition in [start, end), read_committed, a batch at a time."""
    plan = source.ReadPlan(start={partition: start}, end={partition: end})
    for batch in source.read(
        consumer, topic, plan, batch_size=500, batch_bytes=batch_bytes, idle_timeout=30.0
    ):
        yield from batch.messages


def read_at(
    consumer: Consumer, topic: str, partition: int, offset: int, end: int, timeout: float = 10.0
) -> Message | None:
    """The first record at ``offset`` or later (below ``end``), or None."""
    if offset >= end:
        return None
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        while True:
            polled = consumer.consume(num_messages=1, timeout=timeout)
            if not polled:
                raise KafkaUnavailableError(f"no answer reading {topic}[{partition}]@{offset}")
            message = polled[0]
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return None
                if error.fatal() or not error.retriable():
                    raise KafkaUnavailableError(f"reading {topic}: {error.str()}")
                continue
            return message if cast(int, message.offset()) < end else None
    finally:
        consumer.unassign()


class OffsetMapLookup:
    """Target offset -> source offset from restore_offset_map, walked forward in pages."""

    def __init__(
        self, conn: psycopg.Connection, run_ids: list[int], partition: int, page: int = 1000
    ) -> None:
        self._conn = conn
        self._runs = run_ids
        self._partition = partition
        self._page = page
        self._rows: list[tuple[int, int, int]] = []  # (target offset, source partition, offset)
        self._after = -1
        self._done = not run_ids

    def _fetch(self) -> None:
        self._rows = [
            (int(t), int(sp), int(so))
            for t, sp, so in self._conn.execute(
                "SELECT target_offset, source_partition, source_offset FROM restore_offset_map "
                "WHERE run_id = ANY(%s) AND target_partition = %s AND target_offset > %s "
                "ORDER BY target_offset LIMIT %s",
                (self._runs, self._partition, self._after, self._page),
            ).fetchall()
        ]
        self._done = len(self._rows) < self._page
        if self._rows:
            self._after = self._rows[-1][0]
        self._rows.reverse()  # pop() from the end walks forward

    def lookup(self, target_offset: int) -> tuple[int, int] | None:
        while True:
            while self._rows and self._rows[-1][0] < target_offset:
                self._rows.pop()
            if self._rows:
                t, sp, so = self._rows[-1]
                return (sp, so) if t == target_offset else None
            if self._done:
                return None
            self._after = max(self._after, target_offset - 1)
            self._fetch()


def mapped(
    messages: Iterator[Message], partition: int, lookup: OffsetMapLookup | None
) -> Iterator[TopicRecord]:
    """Topic records with their backup offsets (direct when ``lookup`` is None)."""
    for message in messages:
        offset = cast(int, message.offset())
        headers = message_headers(message)
        source_offset: int | None = offset
        if lookup is not None:
            headers, origin = split_origin(headers)
            origin = origin or lookup.lookup(offset)
            source_offset = origin[1] if origin and origin[0] == partition else None
        yield TopicRecord(offset, source_offset, message.key(), message.value(), headers)
