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
from dataclasses import dataclass, field, replace

import psycopg
from confluent_kafka import Consumer

from backup_pipeline import db, hwm, readback, versions
from backup_pipeline.errors import BackupError
from backup_pipeline.kafka import client
from backup_pipeline.kafka.config import consumer_config
from backup_pipeline.progress import ProgressCallback, tick
from backup_pipeline.readback import BackedUpRecord, Selection, resolve_spec
from backup_pipeline.restore import bookkeeping
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TopicSpec, ValueFormat
from backup_pipeline.verify import topic
from backup_pipeline.verify.digest import digest, legacy_digest
from backup_pipeline.verify.topic import OffsetMapLookup, TopicRecord


class VerifyError(BackupError):
    """The comparison itself could not be made."""


@dataclass
class PartitionVerify:
    partition: int
    log_start: int
    end_offset: int
    compared: int = 0
    missing: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    different: list[int] = field(default_factory=list)
    # Topic records that carry no origin and are not in the offset map (restored topics).
    unmapped: list[int] = field(default_factory=list)
    # Backup offsets below the topic's log start: (first, last, records).
    only_in_backup: tuple[int, int, int] | None = None
    # Topic offsets above the backup's HWM: (first, last).
    not_backed_up: tuple[int, int] | None = None
    # The backup offsets that were compared: (first, last).
    compared_range: tuple[int, int] | None = None
    # Restored topics: backed-up records the restore's selection left out, and how many
    # of those are quarantined records.
    excluded: int = 0
    excluded_quarantined: int = 0
    # Restored topics: target offsets the restore runs did not write (first, last).
    outside_restore: list[tuple[int, int]] = field(default_factory=list)
    # Restored topics: records delivered after the run's last checkpoint (a run that was
    # killed and not resumed yet); resuming the run records them.
    unrecorded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different or self.unmapped)


@dataclass
class VerifyReport:
    table: str
    source_topic: str
    topic: str
    version: int
    restored: bool
    sample: int = 0
    partitions: list[PartitionVerify] = field(default_factory=list)
    # What a restored topic was compared against (restore runs and their selection).
    basis: str = ""

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.partitions)

    @property
    def compared(self) -> int:
        return sum(p.compared for p in self.partitions)

    def findings(self) -> dict[str, list[tuple[int, int]]]:
        """kind -> [(partition, offset)] for every finding listed."""
        kinds = ("missing", "extra", "different", "unmapped")
        return {
            kind: [(p.partition, o) for p in self.partitions for o in getattr(p, kind)]
            for kind in kinds
        }

    def summary(self) -> str:
        mode = f"sample of {self.sample}/partition" if self.sample else "full"
        lines = [
            f"verify {self.table} v{self.version} against {self.topic} ({mode}): "
            f"{self.compared} records compared, "
            + ("no differences" if self.ok else "DIFFERENCES FOUND")
        ]
        if self.basis:
            lines.append(f"  {self.basis}")
        for p in self.partitions:
            lines.append(f"  partition {p.partition}: compared {p.compared}" + _ranges(p))
            for kind in ("missing", "extra", "different", "unmapped"):
                offsets = getattr(p, kind)
                if offsets:
                    shown = ", ".join(map(str, offsets[:20]))
                    more = f" (+{len(offsets) - 20} more)" if len(offsets) > 20 else ""
                    lines.append(f"    {kind} ({len(offsets)}): {shown}{more}")
        return "\n".join(lines)


def _ranges(p: PartitionVerify) -> str:
    text = ""
    if p.compared_range:
        text += f" over offsets {p.compared_range[0]}..{p.compared_range[1]}"
    if p.only_in_backup:
        first, last, n = p.only_in_backup
        text += f"; {n} records at {first}..{last} live only in the backup"
    if p.not_backed_up:
        text += f"; offsets {p.not_backed_up[0]}..{p.not_backed_up[1]} not backed up yet"
    if p.excluded:
        why = (
            f", {p.excluded_quarantined} of them quarantined (left out unless "
            "--include-quarantined)"
            if p.excluded_quarantined
            else ""
        )
        noun = "record" if p.excluded == 1 else "records"
        text += f"; {p.excluded} backed-up {noun} excluded by the restore's selection{why}"
    for first, last in p.outside_restore:
        text += f"; topic offsets {first}..{last} not written by the restore, not compared"
    if p.unrecorded:
        text += f"; {p.unrecorded} records after the run's last checkpoint (resume the run)"
    return text


@dataclass
class _Context:
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
        selection = _bounded(self.selection, partition, last)
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
        ctx = _Context(
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
    ctx: _Context, part: PartitionVerify, hwm_offset: int, sample: int, rng: random.Random
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
                _compare_one(ctx, part, stored, found)
        return
    messages = topic.stream(ctx.consumer, ctx.topic, p, low, high, ctx.batch_bytes)
    total = _count(ctx, p, None, low - 1, high - 1)
    topic_records = topic.mapped(messages, p, None)
    _merge(ctx, part, topic_records, ctx.backup(p, low - 1, high - 1), total=total)


def _only_in_backup(ctx: _Context, part: PartitionVerify) -> None:
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


def _bounded(selection: Selection | None, partition: int, last: int | None) -> Selection:
    """``selection`` (None: everything) for one partition, cut at backup offset ``last``."""
    if selection is None:
        return Selection(offsets={partition: (None, last)}, include_quarantined=True)
    first, until = selection.bounds(partition)
    if last is not None:
        until = last if until is None else min(until, last)
    return replace(selection, partitions=None, offsets={partition: (first, until)})


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


def _verify_restored(ctx: _Context, part: PartitionVerify, sample: int, rng: random.Random) -> None:
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
    records = _in_source_order(part, topic.mapped(messages, p, lookup))
    first = next(records, None)
    if first is None:
        return
    assert first.source_offset is not None
    # The restored topic holds the backup's offsets between its first and last record;
    # the backup stream starts at the first and the merge stops with the topic's last.
    stored = ctx.backup(p, first.source_offset - 1, None)
    _merge(ctx, part, _chain(first, records), stored, bounded=False)


def _verify_restore_runs(
    ctx: _Context, part: PartitionVerify, sample: int, rng: random.Random
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
            part, _in_source_order(part, topic.mapped(messages, p, lookup)), last_source
        )
    # Every record the runs restored must be there: restored records that retention (or
    # anything else) removed from the target show as extra.
    total = _count(ctx, p, ctx.selection, -1, last_source)
    _merge(ctx, part, found, ctx.backup(p, -1, last_source), bounded=True, total=total)


def _recorded(
    part: PartitionVerify, records: Iterator[TopicRecord], last_source: int
) -> Iterator[TopicRecord]:
    for record in records:
        if record.source_offset is not None and record.source_offset > last_source:
            part.unrecorded += 1
            continue
        yield record


def _count(
    ctx: _Context, partition: int, selection: Selection | None, after: int, last: int | None
) -> int:
    """How many backed-up records a merge will walk: the total its progress counts to."""
    if ctx.progress is None:
        return 0
    bounded = _bounded(selection, partition, last)
    return readback.count(
        ctx.conn, ctx.spec, ctx.source_topic, ctx.version, partition, bounded, after=after
    )


def _excluded(ctx: _Context, part: PartitionVerify, last_source: int | None) -> None:
    """Count the backed-up records (up to ``last_source``; None: all) the selection left out."""
    if ctx.selection is None:
        return
    p = part.partition

    def count(selection: Selection) -> int:
        return readback.count(ctx.conn, ctx.spec, ctx.source_topic, ctx.version, p, selection)

    everything = count(_bounded(None, p, last_source))
    if not ctx.selection.wants(p):
        part.excluded = everything
        part.excluded_quarantined = everything - count(
            Selection(offsets={p: (None, None)}, include_quarantined=False)
        )
        return
    chosen = _bounded(ctx.selection, p, last_source)
    selected = count(chosen)
    part.excluded = everything - selected
    if not ctx.selection.include_quarantined:
        part.excluded_quarantined = count(replace(chosen, include_quarantined=True)) - selected


def _in_source_order(
    part: PartitionVerify, records: Iterator[TopicRecord]
) -> Iterator[TopicRecord]:
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


def _chain(first: TopicRecord, rest: Iterator[TopicRecord]) -> Iterator[TopicRecord]:
    yield first
    yield from rest


def _merge(
    ctx: _Context,
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
        _compare_one(
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


def _compare_one(
    ctx: _Context, part: PartitionVerify, stored: BackedUpRecord | None, found: TopicRecord | None
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


def _sample_restored(ctx: _Context, part: PartitionVerify, sample: int, rng: random.Random) -> None:
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
        _compare_one(ctx, part, stored, found)
