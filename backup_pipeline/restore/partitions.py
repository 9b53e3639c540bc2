"""The partitions of one restore run, one after the other: first reconcile what a crash
left in the target after the last checkpoint (entered in the map, not produced again), then
produce the rest in source offset order, saving checkpoints as deliveries are reported."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import psycopg
from confluent_kafka import Consumer, KafkaError, Message, Producer

from backup_pipeline import readback
from backup_pipeline.backup import source
from backup_pipeline.errors import RestoreError
from backup_pipeline.kafka import client
from backup_pipeline.progress import ProgressCallback, tick
from backup_pipeline.readback import (
    BackedUpRecord,
    Headers,
    message_headers,
    origin_headers,
    split_origin,
)
from backup_pipeline.restore import bookkeeping, target_topic
from backup_pipeline.restore.bookkeeping import Checkpoint, RunRow
from backup_pipeline.restore.report import RestoreReport
from backup_pipeline.settings import Settings
from backup_pipeline.topics import spec_for_table


@dataclass
class Budget:
    """How many records a call may still produce, and how far it got (for progress)."""

    total: int
    max_records: int
    checkpoint_every: int = 1000
    produced: int = 0
    delivered: int = 0
    # The partition being restored: records it holds for this call, and done of those.
    partition_total: int = 0
    partition_done: int = 0

    @property
    def exhausted(self) -> bool:
        return bool(self.max_records) and self.produced >= self.max_records


def restore_partitions(
    settings: Settings,
    conn: psycopg.Connection,
    consumer: Consumer,
    producer: Producer,
    run: RunRow,
    report: RestoreReport,
    progress: ProgressCallback | None,
    max_records: int,
    checkpoint_every: int,
) -> None:
    spec = spec_for_table(run.source_table)
    marks = target_topic.end_offsets(consumer, run.target_topic, settings.kafka_timeout_seconds)
    saved = bookkeeping.checkpoints(conn, run.run_id)
    plan: dict[int, Checkpoint] = {}
    for partition in sorted(marks):
        if not run.selection.wants(partition):
            continue
        # A partition added to the target after the run began starts where it ends now.
        plan[partition] = saved.get(partition) or bookkeeping.add_partition(
            conn, run.run_id, partition, marks[partition].end
        )
    totals = {
        p: readback.count(
            conn,
            spec,
            run.source_topic,
            run.version,
            p,
            run.selection,
            after=cp.last_source_offset,
        )
        for p, cp in plan.items()
    }
    budget = Budget(
        total=sum(totals.values()), max_records=max_records, checkpoint_every=checkpoint_every
    )
    for partition, checkpoint in plan.items():
        records = readback.read_partition(
            conn,
            spec,
            run.source_topic,
            run.version,
            partition,
            run.selection,
            after=checkpoint.last_source_offset,
        )
        before = checkpoint.restored
        skipped = _reconcile(settings, consumer, run, checkpoint, records, marks[partition])
        bookkeeping.save(conn, run.run_id, checkpoint)
        report.skipped += skipped
        budget.delivered += skipped
        budget.partition_total, budget.partition_done = totals[partition], skipped
        tick(progress, partition, skipped, totals[partition])
        _produce_partition(conn, producer, run, checkpoint, records, budget, progress, report)
        report.by_partition[partition] = checkpoint.restored - before - skipped
        if budget.exhausted:
            report.status = "stopped"
            return
    report.status = "completed"


def _reconcile(
    settings: Settings,
    consumer: Consumer,
    run: RunRow,
    checkpoint: Checkpoint,
    records: Iterator[BackedUpRecord],
    marks: client.Watermarks,
) -> int:
    """Enter records delivered after the last checkpoint in the map; return how many."""
    start = checkpoint.next_target_offset
    found = 0
    # Every offset of the tail holds a record this run produced (idempotent, not
    # transactional), so a read that ends short of the end offset was cut off early (a
    # partition-EOF event seen once in CI): read the rest again. Still short, the first
    # delivery lands at an unexpected offset and the run stops without a duplicate.
    for _ in range(3):
        if marks.end <= start + found:
            break
        plan = source.ReadPlan(
            start={checkpoint.partition: start + found}, end={checkpoint.partition: marks.end}
        )
        for batch in source.read(
            consumer,
            run.target_topic,
            plan,
            batch_size=500,
            batch_bytes=settings.backup_batch_bytes,
        ):
            for message in batch.messages:
                record = next(records, None)
                _check_tail(run, checkpoint, message, record)
                assert record is not None
                checkpoint.pending.append((record.offset, cast(int, message.offset())))
                checkpoint.pending_not_exact += not record.exact
                checkpoint.pending_quarantined += record.quarantined
                found += 1
    return found


def _check_tail(
    run: RunRow, checkpoint: Checkpoint, message: Message, record: BackedUpRecord | None
) -> None:
    expected = checkpoint.next_target_offset + len(checkpoint.pending)
    where = f"{run.target_topic}[{checkpoint.partition}] offset {message.offset()}"
    if record is None or message.offset() != expected:
        raise RestoreError(
            f"{where} holds a record this run did not write; the target was written by "
            "someone else since the run began, so it cannot be resumed safely"
        )
    _, origin = split_origin(message_headers(message))
    if run.origin_headers and origin != (record.partition, record.offset):
        raise RestoreError(
            f"{where} has origin {origin}, expected ({record.partition}, {record.offset}): "
            "the target was written by someone else, so the run cannot be resumed safely"
        )


def _produce_partition(
    conn: psycopg.Connection,
    producer: Producer,
    run: RunRow,
    checkpoint: Checkpoint,
    records: Iterator[BackedUpRecord],
    budget: Budget,
    progress: ProgressCallback | None,
    report: RestoreReport,
) -> None:
    errors: list[str] = []

    def delivery(record: BackedUpRecord) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if errors:
                return  # nothing after a failure counts as delivered in order
            expected = checkpoint.next_target_offset + len(checkpoint.pending)
            if error is not None:
                errors.append(f"offset {record.offset}: {error.str()}")
            elif message.offset() != expected:
                errors.append(
                    f"offset {record.offset} landed at {message.offset()}, not {expected}: "
                    "someone else is writing into the target"
                )
            else:
                checkpoint.pending.append((record.offset, expected))
                checkpoint.pending_not_exact += not record.exact
                checkpoint.pending_quarantined += record.quarantined
                report.not_exact += not record.exact
                report.quarantined += record.quarantined
                budget.delivered += 1
                budget.partition_done += 1
                tick(progress, checkpoint.partition, budget.partition_done, budget.partition_total)

        return on_delivery

    for record in records:
        if budget.exhausted or errors:
            break
        headers = list(record.headers)
        if run.origin_headers:
            headers += origin_headers(run.source_topic, record, run.version)
        _produce(producer, run.target_topic, record, headers, delivery(record))
        budget.produced += 1
        producer.poll(0)
        if len(checkpoint.pending) >= budget.checkpoint_every:
            bookkeeping.save(conn, run.run_id, checkpoint)
    remaining = producer.flush(60)
    bookkeeping.save(conn, run.run_id, checkpoint)
    if errors or remaining:
        problem = errors[0] if errors else f"{remaining} records still undelivered after 60s"
        raise RestoreError(
            f"restoring {run.source_topic}[{checkpoint.partition}] into {run.target_topic} "
            f"failed at {problem}; what was delivered is recorded, resume run {run.run_id}"
        )


def _produce(
    producer: Producer,
    topic: str,
    record: BackedUpRecord,
    headers: Headers,
    on_delivery: Callable[[KafkaError | None, Message], None],
) -> None:
    while True:
        try:
            producer.produce(
                topic,
                value=record.value,
                key=record.key,
                partition=record.partition,
                headers=cast(list[tuple[str, str | bytes | None]], headers),
                timestamp=record.timestamp_ms or 0,  # 0: let the producer stamp it
                on_delivery=on_delivery,
            )
            return
        except BufferError:
            producer.poll(0.5)  # the local queue is full: let deliveries drain it
