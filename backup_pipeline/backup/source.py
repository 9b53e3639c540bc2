"""Read a bounded range of a topic: from each partition's HWM+1 to its captured end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, cast

from confluent_kafka import KafkaError, Message, TopicPartition

from backup_pipeline.errors import KafkaUnavailableError


class ReadConsumer(Protocol):
    """The part of a ``confluent_kafka.Consumer`` that ``read`` uses.

    ``read``'s bookkeeping (EOF, markers, caps, idle partitions) is the hard part of a pass;
    this seam lets the tests drive it with a fake in milliseconds instead of a broker.
    """

    def assign(self, partitions: list[TopicPartition]) -> None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def unassign(self) -> None: ...


@dataclass
class Batch:
    messages: list[Message]
    # New HWM of every partition whose HWM moves with this batch (position - 1).
    hwms: dict[int, int]
    size_bytes: int = 0
    # Per partition: offsets passed in this batch that carried no record (transaction
    # markers, aborted or compacted records) -- the "offsets accounted for" check uses it.
    no_record: dict[int, int] = field(default_factory=dict)


@dataclass
class ReadPlan:
    """Where to start reading each partition and where to stop (exclusive)."""

    start: dict[int, int] = field(default_factory=dict)
    end: dict[int, int] = field(default_factory=dict)


def read(
    consumer: ReadConsumer,
    topic: str,
    plan: ReadPlan,
    *,
    batch_size: int,
    batch_bytes: int,
    max_records: int = 0,
    idle_timeout: float = 30.0,
) -> Iterator[Batch]:
    """Yield batches until every planned partition reached its end (or max_records).

    A partition is done when a record at or beyond its captured end arrives, or when the
    consumer reports partition EOF at or beyond it; offsets below that are then all
    accounted for, including transaction markers that carry no record.
    """
    remaining = {p for p in plan.start if plan.start[p] < plan.end[p]}
    if not remaining:
        return
    assigned = [TopicPartition(topic, p, plan.start[p]) for p in sorted(remaining)]
    consumer.assign(assigned)
    # librdkafka keeps a partition's pause across unassign/assign: a follow run reads with
    # the same consumer pass after pass, and the previous pass paused what it finished.
    consumer.resume(assigned)
    messages: list[Message] = []
    moved: dict[int, int] = {}
    no_record: dict[int, int] = {}
    last_seen = {p: plan.start[p] - 1 for p in remaining}
    size = 0
    total = 0
    total_bytes = 0
    last_progress = time.monotonic()

    def skipped(partition: int, upto: int) -> None:
        # Offsets between the last one seen and ``upto`` carried no readable record.
        if upto > last_seen[partition] + 1:
            no_record[partition] = no_record.get(partition, 0) + upto - last_seen[partition] - 1
        last_seen[partition] = max(last_seen[partition], upto)

    def finish(partition: int, new_hwm: int) -> None:
        skipped(partition, new_hwm + 1)
        last_seen[partition] = new_hwm
        moved[partition] = max(moved.get(partition, -1), new_hwm)
        remaining.discard(partition)
        consumer.pause([TopicPartition(topic, partition)])

    try:
        while remaining:
            want = min(1000, batch_size - len(messages))
            if total_bytes:
                # Take no more records than fit in what is left of batch_bytes at the
                # average size so far: with 200 KB values, 1000 records at once would
                # overshoot a 16 MB batch twelvefold (measured: 1.4 GB peak RSS).
                average = total_bytes / total
                want = min(want, max(1, int((batch_bytes - size) / average)))
            if max_records:
                want = min(want, max_records - total)
            # Take only what librdkafka has queued already (its queue is bounded by
            # queued.max.messages.kbytes); wait only when it is empty, and then for one
            # record. A blocking consume() of N records keeps fetching while it waits
            # and handed back 200 MB at once with 200 KB values.
            polled = consumer.consume(num_messages=want, timeout=0)
            if not polled:
                polled = consumer.consume(num_messages=1, timeout=0.5)
            for message in polled:
                # Not typing.cast: that is a Python call, and this runs per record.
                partition: int = message.partition()  # type: ignore[assignment]
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        # Everything below the EOF position has been delivered or is a
                        # marker; if the broker's "end" was a high watermark above an
                        # open transaction, EOF at the stable offset still ends the read.
                        if partition in remaining:
                            finish(partition, cast(int, message.offset()) - 1)
                        continue
                    if error.fatal() or not error.retriable():
                        raise KafkaUnavailableError(f"reading {topic}: {error.str()}")
                    continue
                if partition not in remaining:
                    continue  # beyond the end captured for this pass; the next pass reads it
                offset: int = message.offset()  # type: ignore[assignment]
                end = plan.end[partition]
                if offset >= end:
                    finish(partition, end - 1)
                    continue
                messages.append(message)
                if offset != last_seen[partition] + 1:  # inline: this runs per record
                    skipped(partition, offset)
                last_seen[partition] = offset
                moved[partition] = offset
                record_bytes = len(message.value() or b"") + len(message.key() or b"")
                size += record_bytes
                total_bytes += record_bytes
                total += 1
                if offset >= end - 1:
                    finish(partition, offset)
            if polled:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > idle_timeout:
                stuck = ", ".join(str(p) for p in sorted(remaining))
                raise KafkaUnavailableError(
                    f"no progress reading {topic} partitions {stuck} for {idle_timeout:.0f}s"
                )
            capped = bool(max_records) and total >= max_records
            if messages and (
                len(messages) >= batch_size or size >= batch_bytes or not remaining or capped
            ):
                yield Batch(messages, dict(moved), size, dict(no_record))
                messages, moved, size, no_record = [], {}, 0, {}
            elif moved and not remaining:
                # Only markers were left (no records): still move those HWMs.
                yield Batch([], dict(moved), 0, dict(no_record))
                moved, no_record = {}, {}
            if capped:
                return
        if moved:
            yield Batch(messages, dict(moved), size, dict(no_record))
    finally:
        consumer.unassign()
