"""The merge join of a verify: the backup's and the topic's records of one partition, both
in backup-offset order, compared record by record in constant memory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import psycopg
from confluent_kafka import Consumer

from backup_pipeline import readback
from backup_pipeline.progress import ProgressCallback, tick
from backup_pipeline.readback import BackedUpRecord
from backup_pipeline.selection import Selection
from backup_pipeline.topics import TopicSpec, ValueFormat
from backup_pipeline.verify.digest import digest, legacy_digest
from backup_pipeline.verify.report import PartitionVerify, VerifyError
from backup_pipeline.verify.topic import TopicRecord


@dataclass
class Context:
    """One verify's connections, tables and limits, shared by the partitions it compares."""

    conn: psycopg.Connection
    consumer: Consumer
    spec: TopicSpec
    source_topic: str
    topic: str
    version: int
    batch_bytes: int
    timeout: float
    run_ids: list[int]
    max_listed: int
    restored: bool = False
    progress: ProgressCallback | None = None
    # The restore runs' selection; None: every backed-up record (no bookkeeping, or runs
    # with different selections).
    selection: Selection | None = None

    def backup(self, partition: int, after: int, last: int | None) -> Iterator[BackedUpRecord]:
        selection = cut_selection(self.selection, partition, last)
        return readback.read_partition(
            self.conn,
            self.spec,
            self.source_topic,
            self.version,
            partition,
            selection,
            after=after,
        )

    def same(self, stored: BackedUpRecord, found: TopicRecord) -> bool:
        if stored.exact or self.restored:
            # A restore writes what the backup renders, so even old rows compare exactly.
            return digest(stored.key, stored.value, stored.headers) == digest(
                found.key, found.value, found.headers
            )
        is_json = self.spec.value_format is ValueFormat.JSON_EVENT
        return legacy_digest(
            stored.key, stored.value, stored.headers, json_value=is_json
        ) == legacy_digest(found.key, found.value, found.headers, json_value=is_json)

    def note(self, offsets: list[int], offset: int) -> None:
        if len(offsets) < self.max_listed:
            offsets.append(offset)


def cut_selection(selection: Selection | None, partition: int, last: int | None) -> Selection:
    """``selection`` (None: everything) for one partition, cut at backup offset ``last``."""
    if selection is None:
        return Selection(offsets={partition: (None, last)}, include_quarantined=True)
    first, until = selection.bounds(partition)
    if last is not None:
        until = last if until is None else min(until, last)
    return replace(selection, partitions=None, offsets={partition: (first, until)})


def in_source_order(part: PartitionVerify, records: Iterator[TopicRecord]) -> Iterator[TopicRecord]:
    last = -1
    for record in records:
        if record.source_offset is None:
            part.unmapped.append(record.offset)
            continue
        if record.source_offset <= last:
            raise VerifyError(
                f"partition {part.partition}: target offset {record.offset} maps to backup "
                f"offset {record.source_offset}, not after {last}; the topic is not in backup "
                "order (several restores into it?), so it cannot be merged with the backup"
            )
        last = record.source_offset
        yield record


def chain(first: TopicRecord, rest: Iterator[TopicRecord]) -> Iterator[TopicRecord]:
    yield first
    yield from rest


def merge(
    ctx: Context,
    part: PartitionVerify,
    found: Iterator[TopicRecord],
    stored: Iterator[BackedUpRecord],
    *,
    bounded: bool = True,
    total: int = 0,
) -> None:
    """Merge join on backup offset. ``bounded``: backup records after the topic's last one
    are extras (live topic, the backup stream is cut at the compared range); otherwise they
    lie outside what the topic holds (a restored topic) and are not compared."""
    record = next(found, None)
    row = next(stored, None)
    first: int | None = None
    last: int | None = None
    steps = 0
    while record is not None or row is not None:
        steps += 1
        tick(ctx.progress, part.partition, min(steps, total), total)
        if record is None and not bounded:
            break
        assert record is None or record.source_offset is not None
        here = min(
            x
            for x in (
                None if record is None else record.source_offset,
                None if row is None else row.offset,
            )
            if x is not None
        )
        first = here if first is None else first
        last = here
        compare_one(
            ctx,
            part,
            row if row is not None and row.offset == here else None,
            record if record is not None and record.source_offset == here else None,
        )
        if record is not None and record.source_offset == here:
            record = next(found, None)
        if row is not None and row.offset == here:
            row = next(stored, None)
    if ctx.progress is not None and total and steps < total:
        ctx.progress(part.partition, total, total)
    if first is not None and last is not None and part.compared_range is None:
        part.compared_range = (first, last)


def compare_one(
    ctx: Context, part: PartitionVerify, stored: BackedUpRecord | None, found: TopicRecord | None
) -> None:
    """Compare the backup's and the topic's first record at or after the same offset."""
    if stored is None and found is None:
        return
    found_at = None if found is None else found.source_offset
    if stored is not None and (found_at is None or stored.offset < found_at):
        ctx.note(part.extra, stored.offset)
    elif found_at is not None and (stored is None or found_at < stored.offset):
        ctx.note(part.missing, found_at)
    else:
        assert stored is not None and found is not None
        part.compared += 1
        if not ctx.same(stored, found):
            ctx.note(part.different, stored.offset)
