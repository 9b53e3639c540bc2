"""Verify: compare the backup with a topic, per partition, record by record.

Both sides are streamed in offset order and merge-joined, comparing a digest of key,
value and headers, so a partition of any size is checked in constant memory. The topic is
either the live source topic (offsets compare directly) or a restored topic (its records
are mapped back to backup offsets through their origin headers or the offset map).

Findings, by backup offset:
- missing: the topic holds the record, the backup does not;
- extra: the backup holds it, the topic does not, inside the range the topic holds;
- different: both hold it, the digests differ.
Offsets below the topic's log start are only in the backup now (the point of a backup);
offsets above the backup's HWM are not backed up yet. Both are reported as ranges.

A topic that restore runs wrote into (a new topic, or the source topic itself after it was
deleted and restored with force) is compared with what those runs were asked to restore:
their stored selection, up to the last source offset they recorded, over the target
offsets they wrote. Backed-up records the selection left out (quarantined ones, by
default) are counted as excluded, with the reason, not reported as extra.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import replace

from confluent_kafka import Consumer

from backup_pipeline import db, hwm, readback, versions
from backup_pipeline.kafka import client
from backup_pipeline.kafka.config import consumer_config
from backup_pipeline.progress import ProgressCallback
from backup_pipeline.readback import resolve_spec
from backup_pipeline.restore import bookkeeping
from backup_pipeline.selection import Selection
from backup_pipeline.settings import Settings
from backup_pipeline.verify import topic
from backup_pipeline.verify.merge import (
    Context,
    chain,
    compare_one,
    cut_selection,
    in_source_order,
    merge,
)
from backup_pipeline.verify.report import PartitionVerify, VerifyError, VerifyReport
from backup_pipeline.verify.topic import OffsetMapLookup, TopicRecord


def verify(
    settings: Settings,
    table: str | None = None,
    *,
    source_topic: str | None = None,
    topic: str | None = None,
    version: int | None = None,
    partitions: tuple[int, ...] | None = None,
    sample: int = 0,
    seed: int | None = None,
    max_listed: int = 1000,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Compare the backup of ``table`` with ``topic`` (default: the live source topic).

    ``sample`` > 0 checks that many random offsets per partition instead of all of them.
    """
    spec = resolve_spec(settings, table, source_topic)
    source_name = source_topic or settings.topic(spec)
    target = topic or source_name
    with ExitStack() as stack:
        conn = stack.enter_context(closing(db.connect(settings, autocommit=True)))
        # Sample mode seeks to many single offsets: without a short fetch wait each read
        # waits out librdkafka's 500 ms long poll (measured: 0.4 s vs 8 ms per offset).
        consumer = Consumer(consumer_config(settings, **{"fetch.wait.max.ms": 10}))
        stack.callback(consumer.close)
        ctx = Context(
            conn=conn,
            consumer=consumer,
            spec=spec,
            source_topic=source_name,
            topic=target,
            version=versions.resolve_read_version(conn, spec.table, version),
            batch_bytes=settings.backup_batch_bytes,
            timeout=settings.kafka_timeout_seconds,
            run_ids=[],
            max_listed=max_listed,
            progress=progress,
        )
        runs = [
            r
            for r in bookkeeping.runs_into(conn, target)
            if r.source_topic == source_name and r.version == ctx.version
        ]
        # The source topic itself counts as restored once a restore wrote into it (deleted
        # and restored under its own name): its offsets are no longer the backup's.
        ctx.restored = target != source_name or bool(runs)
        ctx.run_ids = [r.run_id for r in runs]
        basis = ""
        if runs:
            ctx.selection = _common_selection(runs)
            basis = _basis(runs, ctx.selection)
        report = VerifyReport(
            spec.table, source_name, target, ctx.version, ctx.restored, sample, basis=basis
        )
        rng = random.Random(seed)
        hwms = hwm.read(conn, ctx.version, source_name)
        for partition in client.partitions(consumer, target, ctx.timeout):
            if partitions is not None and partition not in partitions:
                continue
            marks = client.watermarks(consumer, target, partition, ctx.timeout)
            part = PartitionVerify(partition, marks.log_start, marks.end)
            if ctx.restored:
                _verify_restored(ctx, part, sample, rng)
            else:
                _verify_live(ctx, part, hwms.get(partition, hwm.NOTHING_YET), sample, rng)
            report.partitions.append(part)
        return report


def _verify_live(
    ctx: Context, part: PartitionVerify, hwm_offset: int, sample: int, rng: random.Random
) -> None:
    p = part.partition
    low, high = part.log_start, min(part.end_offset, hwm_offset + 1)
    if part.end_offset > hwm_offset + 1:
        part.not_backed_up = (hwm_offset + 1, part.end_offset - 1)
    _only_in_backup(ctx, part)
    if low >= high:
        return
    part.compared_range = (low, high - 1)
    # A sample as large as the range costs more than reading the range: compare it all.
    if sample and sample < high - low:
        seen: set[int] = set()
        for offset in sorted(rng.sample(range(low, high), sample)):
            message = topic.read_at(ctx.consumer, ctx.topic, p, offset, high)
            stored = next(ctx.backup(p, offset - 1, high - 1), None)
            found = None if message is None else next(topic.mapped(iter([message]), p, None))
            candidates = [r.offset for r in (stored, found) if r is not None]
            if candidates and min(candidates) not in seen:
                seen.add(min(candidates))
                compare_one(ctx, part, stored, found)
        return
    messages = topic.stream(ctx.consumer, ctx.topic, p, low, high, ctx.batch_bytes)
    total = _count(ctx, p, None, low - 1, high - 1)
    topic_records = topic.mapped(messages, p, None)
    merge(ctx, part, topic_records, ctx.backup(p, low - 1, high - 1), total=total)


def _only_in_backup(ctx: Context, part: PartitionVerify) -> None:
    if part.log_start == 0:
        return
    below = Selection(
        offsets={part.partition: (None, part.log_start - 1)}, include_quarantined=True
    )
    records = readback.count(
        ctx.conn, ctx.spec, ctx.source_topic, ctx.version, part.partition, below
    )
    if records:
        first = readback.first_at_or_after(
            ctx.conn, ctx.spec, ctx.source_topic, ctx.version, part.partition, 0
        )
        assert first is not None
        part.only_in_backup = (first.offset, part.log_start - 1, records)


def _common_selection(runs: list[bookkeeping.RunRow]) -> Selection | None:
    selections = {json.dumps(r.selection.to_json(), sort_keys=True) for r in runs}
    return runs[0].selection if len(selections) == 1 else None


def _basis(runs: list[bookkeeping.RunRow], selection: Selection | None) -> str:
    which = ", ".join(f"{r.run_id} ({r.status})" for r in runs)
    if selection is None:
        return (
            f"restored by runs {which} with different selections: compared with every "
            "backed-up record in the range they wrote"
        )
    noun = "run" if len(runs) == 1 else "runs"
    return (
        f"compared with what restore {noun} {which} asked for ({selection.describe()}), up "
        "to the last record it recorded; records it did not ask for are excluded"
    )


def _verify_restored(ctx: Context, part: PartitionVerify, sample: int, rng: random.Random) -> None:
    if ctx.run_ids:
        _verify_restore_runs(ctx, part, sample, rng)
        return
    p = part.partition
    if part.log_start >= part.end_offset:
        return
    if sample:
        _sample_restored(ctx, part, sample, rng)
        return
    lookup = OffsetMapLookup(ctx.conn, ctx.run_ids, p)
    messages = topic.stream(
        ctx.consumer, ctx.topic, p, part.log_start, part.end_offset, ctx.batch_bytes
    )
    records = in_source_order(part, topic.mapped(messages, p, lookup))
    first = next(records, None)
    if first is None:
        return
    assert first.source_offset is not None
    # The restored topic holds the backup's offsets between its first and last record;
    # the backup stream starts at the first and the merge stops with the topic's last.
    stored = ctx.backup(p, first.source_offset - 1, None)
    merge(ctx, part, chain(first, records), stored, bounded=False)


def _verify_restore_runs(
    ctx: Context, part: PartitionVerify, sample: int, rng: random.Random
) -> None:
    """A topic restore runs wrote into: the target offsets they wrote against the backup
    records they were asked for, up to the last one they recorded."""
    p = part.partition
    written = bookkeeping.written_range(ctx.conn, ctx.run_ids, p)
    selected = ctx.selection is None or ctx.selection.wants(p)
    first_target, next_target, last_source = written or (part.end_offset, part.end_offset, -1)
    low = max(part.log_start, first_target)
    high = min(part.end_offset, next_target)
    if part.log_start < min(first_target, part.end_offset):
        part.outside_restore.append((part.log_start, min(first_target, part.end_offset) - 1))
    if part.end_offset > max(next_target, part.log_start):
        part.outside_restore.append((max(next_target, part.log_start), part.end_offset - 1))
    # Over the whole backup, not only up to the last source offset: a quarantined record
    # after the last restored one is left out by the selection all the same.
    _excluded(ctx, part, None)
    if not selected or last_source < 0:
        return
    if sample:
        _sample_restored(ctx, part, sample, rng)
        return
    lookup = OffsetMapLookup(ctx.conn, ctx.run_ids, p)
    found: Iterator[TopicRecord] = iter(())
    if low < high:
        messages = topic.stream(ctx.consumer, ctx.topic, p, low, high, ctx.batch_bytes)
        found = _recorded(
            part, in_source_order(part, topic.mapped(messages, p, lookup)), last_source
        )
    # Every record the runs restored must be there: restored records that retention (or
    # anything else) removed from the target show as extra.
    total = _count(ctx, p, ctx.selection, -1, last_source)
    merge(ctx, part, found, ctx.backup(p, -1, last_source), bounded=True, total=total)


def _recorded(
    part: PartitionVerify, records: Iterator[TopicRecord], last_source: int
) -> Iterator[TopicRecord]:
    for record in records:
        if record.source_offset is not None and record.source_offset > last_source:
            part.unrecorded += 1
            continue
        yield record


def _count(
    ctx: Context, partition: int, selection: Selection | None, after: int, last: int | None
) -> int:
    """How many backed-up records a merge will walk: the total its progress counts to."""
    if ctx.progress is None:
        return 0
    bounded = cut_selection(selection, partition, last)
    return readback.count(
        ctx.conn, ctx.spec, ctx.source_topic, ctx.version, partition, bounded, after=after
    )


def _excluded(ctx: Context, part: PartitionVerify, last_source: int | None) -> None:
    """Count the backed-up records (up to ``last_source``; None: all) the selection left out."""
    if ctx.selection is None:
        return
    p = part.partition

    def count(selection: Selection) -> int:
        return readback.count(ctx.conn, ctx.spec, ctx.source_topic, ctx.version, p, selection)

    everything = count(cut_selection(None, p, last_source))
    if not ctx.selection.wants(p):
        part.excluded = everything
        part.excluded_quarantined = everything - count(
            Selection(offsets={p: (None, None)}, include_quarantined=False)
        )
        return
    chosen = cut_selection(ctx.selection, p, last_source)
    selected = count(chosen)
    part.excluded = everything - selected
    if not ctx.selection.include_quarantined:
        part.excluded_quarantined = count(replace(chosen, include_quarantined=True)) - selected


def _sample_restored(ctx: Context, part: PartitionVerify, sample: int, rng: random.Random) -> None:
    p = part.partition
    bounds = ctx.conn.execute(
        "SELECT min(source_offset), max(source_offset) FROM restore_offset_map "
        "WHERE run_id = ANY(%s) AND target_partition = %s AND source_partition = %s",
        (ctx.run_ids, p, p),
    ).fetchone()
    if bounds is None or bounds[0] is None:
        raise VerifyError(
            f"sample mode needs the offset map of a restore into {ctx.topic}; there is none "
            f"for partition {p}"
        )
    low, high = int(bounds[0]), int(bounds[1])
    part.compared_range = (low, high)
    for offset in sorted(rng.randint(low, high) for _ in range(sample)):
        stored = next(ctx.backup(p, offset - 1, high), None)
        target = ctx.conn.execute(
            "SELECT target_offset FROM restore_offset_map WHERE run_id = ANY(%s) "
            "AND source_partition = %s AND source_offset >= %s "
            "ORDER BY source_offset LIMIT 1",
            (ctx.run_ids, p, offset),
        ).fetchone()
        found = None
        if target is not None:
            message = topic.read_at(ctx.consumer, ctx.topic, p, int(target[0]), part.end_offset)
            if message is not None:
                lookup = OffsetMapLookup(ctx.conn, ctx.run_ids, p)
                found = next(topic.mapped(iter([message]), p, lookup))
        compare_one(ctx, part, stored, found)
