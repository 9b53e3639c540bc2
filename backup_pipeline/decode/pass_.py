"""The decode pass: raw Avro rows past the decode watermark -> typed rows, incrementally.

Per (table, version, partition) and batch, one transaction: move the watermark row from
the offset the batch's raw rows were read after to the last of them (compare-and-set: it
takes the row lock and fails if another decoder moved it first), write their decoded rows
(COPY) and list the undecodable ones, commit. A crash anywhere rolls the whole batch back,
so the next pass starts from the same watermark: nothing lost, nothing twice. Two decoders
on the same partition queue on the watermark row lock; the second finds it moved, rolls
back and reads again from the first's new watermark, so they cannot write a row twice.

Before the new rows, the pass retries the undecodable rows waiting for a schema whose id
has become known (or can be resolved now: registry back); ``retry_all`` retries every
open one (after a new vendored schema, ``backup-pipeline decode --retry-undecodable``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import sql

from backup_pipeline.decode.catalog import AvroTable
from backup_pipeline.decode.decoder import (
    Decoder,
    Undecodable,
    decoder_for,
    schema_id_of,
)
from backup_pipeline.decode.report import DecodeReport
from backup_pipeline.decode.resolver import Executes, Resolver
from backup_pipeline.decode.undecodable import retry_undecodable
from backup_pipeline.decode.writer import After, Batch, Writer

log = logging.getLogger(__name__)


def versions_and_partitions(conn: psycopg.Connection[Any], topic: str) -> list[tuple[int, int]]:
    """Every (version, partition) the raw backup keeps for the topic, new versions included."""
    rows = conn.execute(
        "SELECT version, kafka_partition FROM bekreftelse_hwm WHERE kafka_topic = %s "
        "ORDER BY version, kafka_partition",
        (topic,),
    ).fetchall()
    conn.commit()
    return [(int(v), int(p)) for v, p in rows]


def decode_pass(
    conn: psycopg.Connection[Any],
    table: AvroTable,
    topic: str,
    resolver: Resolver,
    *,
    batch_size: int = 5000,
    retry_all: bool = False,
    max_rows: int | None = None,
    writers: Sequence[psycopg.Connection[Any]] = (),
) -> DecodeReport:
    """Decode everything after the watermarks (up to ``max_rows`` raw rows) and retry the
    undecodable rows that may decode now. ``conn`` must not be in autocommit mode.

    Batches are written on ``writers`` (connections of their own, several batches at
    once) when given, else on ``conn`` between its reads."""
    report = DecodeReport(table.raw_table)
    resolver.load(conn)
    conn.commit()
    retry_undecodable(conn, table, resolver, report, retry_all=retry_all, batch_size=batch_size)
    partitions = versions_and_partitions(conn, topic)
    with Writer(list(writers) or [conn], table, shared=not writers) as writer:
        # Another decoder moved a watermark under us: its batch stands, ours was rolled
        # back; start again from the watermarks as they are now.
        while not _decode_batches(
            conn, writer, table, resolver, partitions, batch_size, max_rows, report
        ):
            conn.rollback()
            resolver.load(conn)  # forgets ids kept by the rolled-back batches
            conn.commit()
    return report


def _decode_batches(
    conn: psycopg.Connection[Any],
    writer: Writer,
    table: AvroTable,
    resolver: Resolver,
    partitions: list[tuple[int, int]],
    batch_size: int,
    max_rows: int | None,
    report: DecodeReport,
) -> bool:
    """Read, decode and write batch after batch; False if another decoder moved a
    watermark meanwhile (then nothing of this call after that batch was committed).

    Batch k+1 is decoded (this thread) while batch k is written (writer threads), so
    PostgreSQL stores batches while Python decodes the next. Only a writer's transaction
    moves a watermark, and only from the offset its rows were read after (compare-and-set
    under the row lock), so rows read outside that transaction are never written twice,
    by this decoder or another. Partitions take turns, so that with several writers the
    batches in flight are of different partitions and do not queue on one watermark."""
    marks = _watermarks(conn, table, partitions)
    pending = list(partitions)
    turn = 0
    read = report.raw_rows

    def next_batch() -> Batch | None:
        nonlocal read, turn
        while pending:
            limit = batch_size if max_rows is None else min(batch_size, max_rows - read)
            if limit <= 0:
                return None
            turn %= len(pending)
            version, partition = pending[turn]
            after = marks[(version, partition)]
            raw = _read_raw(conn, table, version, partition, after, limit)
            if raw:
                marks[(version, partition)] = raw[-1][0]
                read += len(raw)
                turn += 1
                return Batch(version, partition, after, raw)
            pending.pop(turn)
        return None

    batch = next_batch()
    if writer.shared:
        while batch is not None:
            # The resolver may keep a schema: on the connection, once the writes are done,
            # in the transaction that then writes this batch.
            _decode_batch(After(conn, writer.wait), table, resolver, batch, report)
            batch.stream = writer.encode(batch.rows)
            if not writer.settle(report):
                return False
            following = next_batch()  # on the connection before the writer takes it
            if not writer.submit(batch, report):
                return False
            batch = following
    else:
        # The next batch is read (a thread of its own, on the reading connection) while
        # this one is decoded.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-reader") as reader:
            while batch is not None:
                ahead = reader.submit(next_batch)
                _decode_batch(After(conn, ahead.exception), table, resolver, batch, report)
                batch.stream = writer.encode(batch.rows)
                following = ahead.result()
                conn.commit()  # a schema the resolver kept, before any row that uses it
                if not writer.submit(batch, report):
                    writer.settle(report)
                    return False
                batch = following
    if not writer.settle(report):
        return False
    conn.commit()
    return True


def _watermarks(
    conn: psycopg.Connection[Any], table: AvroTable, partitions: list[tuple[int, int]]
) -> dict[tuple[int, int], int]:
    marks = {}
    for version, partition in partitions:
        key = (table.raw_table, version, partition)
        conn.execute(
            "INSERT INTO backup_decode_hwm (table_name, version, kafka_partition, kafka_offset) "
            "VALUES (%s, %s, %s, -1) ON CONFLICT DO NOTHING",
            key,
        )
        row = conn.execute(
            "SELECT kafka_offset FROM backup_decode_hwm "
            "WHERE table_name = %s AND version = %s AND kafka_partition = %s",
            key,
        ).fetchone()
        assert row is not None
        marks[(version, partition)] = int(row[0])
    conn.commit()
    return marks


def _read_raw(
    conn: psycopg.Connection[Any],
    table: AvroTable,
    version: int,
    partition: int,
    after: int,
    limit: int,
) -> list[tuple[int, bytes]]:
    # Binary results: bytea arrives as bytes, without the hex text round trip.
    return (
        conn.cursor(binary=True)
        .execute(
            sql.SQL(
                "SELECT kafka_offset, data FROM {} WHERE version = %s AND kafka_partition = %s "
                "AND kafka_offset > %s ORDER BY kafka_offset LIMIT %s"
            ).format(sql.Identifier(table.raw_table)),
            (version, partition, after, limit),
        )
        .fetchall()
    )


def _decode_batch(
    conn: Executes, table: AvroTable, resolver: Resolver, batch: Batch, report: DecodeReport
) -> None:
    version, partition, raw_table = batch.version, batch.partition, table.raw_table
    rows, failed, by_kind, seen = batch.rows, batch.failed, batch.by_kind, report.schema_ids
    # Per schema id of the batch, its decoding function while the resolver's schema
    # for the id stays the one it was made for.
    decoders: dict[int, Decoder] = {}
    for offset, value in batch.raw:
        schema_id: int | None = None
        try:
            schema_id = schema_id_of(value)
            decode_one = decoders.get(schema_id)
            if decode_one is None:
                seen.add(schema_id)
                writer = resolver.known.get(schema_id)
                if writer is not None:
                    decode_one = decoders[schema_id] = decoder_for(table, writer)
            try:
                columns = decode_one(value) if decode_one is not None else None
            except Undecodable:
                columns = None
            if columns is None:
                # A new id, or one whose kept schema does not read the value: the resolver
                # resolves, re-attributes or says why not.
                decoders.pop(schema_id, None)
                columns = resolver.decode(conn, table, schema_id, value)
            rows.append((version, partition, offset, schema_id, *columns))
        except Undecodable as exc:
            failed.append((raw_table, version, partition, offset, schema_id, exc.kind, exc.reason))
            by_kind[exc.kind] = by_kind.get(exc.kind, 0) + 1
