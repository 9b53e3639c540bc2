"""Decode passes over the Avro tables with their own connection: once, or following."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager

import psycopg

from backup_pipeline import db
from backup_pipeline.decode.catalog import AVRO_TABLES, AvroTable
from backup_pipeline.decode.pass_ import decode_pass
from backup_pipeline.decode.report import DecodeReport
from backup_pipeline.decode.resolver import RegistryClient, Resolver
from backup_pipeline.settings import Settings
from backup_pipeline.topics import spec_for_table


def make_resolver(settings: Settings) -> Resolver:
    return Resolver(registry=RegistryClient.from_settings(settings))


@contextmanager
def _connections(
    settings: Settings,
) -> Iterator[tuple[psycopg.Connection, list[psycopg.Connection]]]:
    """The pass's reading connection, and the ones it writes on (none: it writes on the
    reading one)."""
    with ExitStack() as stack:
        conn = stack.enter_context(closing(db.connect(settings)))
        n = settings.decode_writer_connections
        writers = [
            stack.enter_context(closing(db.connect(settings))) for _ in range(n if n > 1 else 0)
        ]
        yield conn, writers


def decode_once(
    settings: Settings,
    tables: Sequence[AvroTable] = AVRO_TABLES,
    *,
    retry_all: bool = False,
    max_rows: int | None = None,
    resolver: Resolver | None = None,
) -> list[DecodeReport]:
    resolver = resolver or make_resolver(settings)
    reports = []
    with _connections(settings) as (conn, writers):
        for table in tables:
            reports.append(
                decode_pass(
                    conn,
                    table,
                    settings.topic(spec_for_table(table.raw_table)),
                    resolver,
                    batch_size=settings.decode_batch_size,
                    retry_all=retry_all,
                    max_rows=max_rows,
                    writers=writers,
                )
            )
    return reports


def lower_priority(niceness: int) -> None:
    """Run this process at ``niceness`` at least (0: leave it), threads it starts later
    included: the decode follow run shares the CPUs with the raw backup's runs, which must
    not slow down for it (issue 18), so the kernel gives them the CPU first. Idempotent: a
    second call (or a process already that nice) lowers nothing further."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness > current:
        os.nice(niceness - current)


def follow_iter(
    settings: Settings,
    tables: Sequence[AvroTable] = AVRO_TABLES,
    *,
    seconds: float,
    poll_seconds: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[list[DecodeReport]]:
    """Pass after pass for ``seconds``, yielding each round's reports: new raw rows are
    decoded within about ``poll_seconds`` of their commit. It reads only what the raw
    backup has committed, on its own connection, and takes no lock the raw backup takes,
    so the raw backup never waits for it. It runs at ``BACKUP_DECODE_NICE``, and waits
    ``poll_seconds`` after every round: a round decodes to the end, and polling again at
    once (rows arrive all the time) only spent CPU the raw backup wanted."""
    lower_priority(settings.decode_nice)
    resolver = make_resolver(settings)
    deadline = time.monotonic() + seconds
    with _connections(settings) as (conn, writers):
        while True:
            reports = [
                decode_pass(
                    conn,
                    table,
                    settings.topic(spec_for_table(table.raw_table)),
                    resolver,
                    batch_size=settings.decode_batch_size,
                    writers=writers,
                )
                for table in tables
            ]
            yield reports
            if time.monotonic() >= deadline or should_stop():
                return
            time.sleep(poll_seconds)


def add(total: DecodeReport, report: DecodeReport) -> None:
    total.decoded += report.decoded
    total.undecodable += report.undecodable
    total.redecoded += report.redecoded
    total.raw_rows += report.raw_rows
    total.batches += report.batches
    total.schema_ids |= report.schema_ids
    for kind, n in report.by_kind.items():
        total.by_kind[kind] = total.by_kind.get(kind, 0) + n


def follow(
    settings: Settings,
    tables: Sequence[AvroTable] = AVRO_TABLES,
    *,
    seconds: float,
    poll_seconds: float = 1.0,
) -> list[DecodeReport]:
    """``follow_iter`` to its end; the totals per table."""
    totals = {t.raw_table: DecodeReport(t.raw_table) for t in tables}
    for reports in follow_iter(settings, tables, seconds=seconds, poll_seconds=poll_seconds):
        for report in reports:
            add(totals[report.table], report)
    return list(totals.values())
