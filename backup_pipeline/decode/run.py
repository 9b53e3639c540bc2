"""Decode passes over the Avro tables with their own connection: once, or following."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import closing

from backup_pipeline import db
from backup_pipeline.decode.catalog import AVRO_TABLES, AvroTable
from backup_pipeline.decode.pass_ import DecodeReport, decode_pass
from backup_pipeline.decode.resolver import RegistryClient, Resolver
from backup_pipeline.settings import Settings
from backup_pipeline.topics import spec_for_table


def make_resolver(settings: Settings) -> Resolver:
    return Resolver(registry=RegistryClient.from_settings(settings))


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
    with closing(db.connect(settings)) as conn:
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
                )
            )
    return reports


def follow(
    settings: Settings,
    tables: Sequence[AvroTable] = AVRO_TABLES,
    *,
    seconds: float,
    poll_seconds: float = 1.0,
    on_reports: Callable[[list[DecodeReport]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[DecodeReport]:
    """Pass after pass for ``seconds``: new raw rows are decoded within about
    ``poll_seconds`` of their commit. Reads only what the raw backup has committed, in its
    own connection, so the raw backup never waits for it. Returns the totals."""
    resolver = make_resolver(settings)
    totals = {t.raw_table: DecodeReport(t.raw_table) for t in tables}
    deadline = time.monotonic() + seconds
    with closing(db.connect(settings)) as conn:
        while True:
            reports = [
                decode_pass(
                    conn,
                    table,
                    settings.topic(spec_for_table(table.raw_table)),
                    resolver,
                    batch_size=settings.decode_batch_size,
                )
                for table in tables
            ]
            for report in reports:
                total = totals[report.table]
                total.decoded += report.decoded
                total.undecodable += report.undecodable
                total.redecoded += report.redecoded
                total.raw_rows += report.raw_rows
                total.batches += report.batches
                total.schema_ids |= report.schema_ids
                for kind, n in report.by_kind.items():
                    total.by_kind[kind] = total.by_kind.get(kind, 0) + n
            if on_reports is not None:
                on_reports(reports)
            if time.monotonic() >= deadline or should_stop():
                return list(totals.values())
            if not any(r.raw_rows or r.redecoded for r in reports):
                time.sleep(poll_seconds)
