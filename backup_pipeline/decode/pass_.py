"""The decode pass: raw Avro rows past the decode watermark -> typed rows, incrementally.

Per (table, version, partition) and batch, one transaction: lock the watermark row, read
the raw rows after it, write their decoded rows (COPY) and list the undecodable ones, move
the watermark to the last raw offset read, commit. A crash anywhere rolls the whole batch
back, so the next pass starts from the same watermark: nothing lost, nothing twice. Two
decoders on the same partition queue on the watermark row lock (the second then reads the
first's new watermark), so they cannot write a row twice either.

Before the new rows, the pass retries the undecodable rows waiting for a schema whose id
has become known (or can be resolved now: registry back); ``retry_all`` retries every
open one (after a new vendored schema, ``backup-pipeline decode --retry-undecodable``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from backup_pipeline import failpoints
from backup_pipeline.decode.catalog import AvroTable
from backup_pipeline.decode.decoder import (
    WAITING_FOR_SCHEMA,
    Undecodable,
    as_python,
    copy_types,
    schema_id_of,
)
from backup_pipeline.decode.resolver import Resolver

log = logging.getLogger(__name__)


@dataclass
class DecodeReport:
    table: str
    decoded: int = 0
    undecodable: int = 0  # newly listed in this pass
    redecoded: int = 0  # listed earlier, decoded now
    raw_rows: int = 0
    batches: int = 0
    schema_ids: set[int] = field(default_factory=set)
    by_kind: dict[str, int] = field(default_factory=dict)


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
) -> DecodeReport:
    """Decode everything after the watermarks (up to ``max_rows`` raw rows) and retry the
    undecodable rows that may decode now. ``conn`` must not be in autocommit mode."""
    report = DecodeReport(table.raw_table)
    resolver.load(conn)
    conn.commit()
    retry_undecodable(conn, table, resolver, report, retry_all=retry_all, batch_size=batch_size)
    for version, partition in versions_and_partitions(conn, topic):
        while max_rows is None or report.raw_rows < max_rows:
            limit = batch_size if max_rows is None else min(batch_size, max_rows - report.raw_rows)
            if not _batch(conn, table, resolver, version, partition, limit, report):
                break
    return report


def _batch(
    conn: psycopg.Connection[Any],
    table: AvroTable,
    resolver: Resolver,
    version: int,
    partition: int,
    limit: int,
    report: DecodeReport,
) -> bool:
    """One transaction; False when the partition had nothing after its watermark."""
    key = (table.raw_table, version, partition)
    conn.execute(
        "INSERT INTO backup_decode_hwm (table_name, version, kafka_partition, kafka_offset) "
        "VALUES (%s, %s, %s, -1) ON CONFLICT DO NOTHING",
        key,
    )
    row = conn.execute(
        "SELECT kafka_offset FROM backup_decode_hwm "
        "WHERE table_name = %s AND version = %s AND kafka_partition = %s FOR UPDATE",
        key,
    ).fetchone()
    assert row is not None
    watermark = int(row[0])
    # Binary results: bytea arrives as bytes, without the hex text round trip.
    raw = (
        conn.cursor(binary=True)
        .execute(
            sql.SQL(
                "SELECT kafka_offset, data FROM {} WHERE version = %s AND kafka_partition = %s "
                "AND kafka_offset > %s ORDER BY kafka_offset LIMIT %s"
            ).format(sql.Identifier(table.raw_table)),
            (version, partition, watermark, limit),
        )
        .fetchall()
    )
    if not raw:
        conn.commit()
        return False
    decoded: list[tuple[Any, ...]] = []
    failed: list[tuple[Any, ...]] = []
    for offset, value in raw:
        schema_id: int | None = None
        try:
            schema_id = schema_id_of(value)
            report.schema_ids.add(schema_id)
            columns = resolver.decode(conn, table, schema_id, value)
            decoded.append((version, partition, offset, schema_id, *columns))
        except Undecodable as exc:
            failed.append(
                (table.raw_table, version, partition, offset, schema_id, exc.kind, exc.reason)
            )
            report.by_kind[exc.kind] = report.by_kind.get(exc.kind, 0) + 1
    if decoded:
        names = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
        # Binary COPY: about 3.5x the text format's rows/s for these columns (bench/decode.py).
        with conn.cursor().copy(
            sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(table.decoded_table), names
            )
        ) as copy:
            copy.set_types(copy_types(table))
            for values in decoded:
                copy.write_row(values)
    failpoints.hit("decode_after_copy")
    if failed:
        _list_undecodable(conn, failed)
    conn.execute(
        "UPDATE backup_decode_hwm SET kafka_offset = %s "
        "WHERE table_name = %s AND version = %s AND kafka_partition = %s",
        (raw[-1][0], *key),
    )
    failpoints.hit("decode_before_commit")
    conn.commit()
    report.decoded += len(decoded)
    report.undecodable += len(failed)
    report.raw_rows += len(raw)
    report.batches += 1
    return True


def _list_undecodable(conn: psycopg.Connection[Any], failed: list[tuple[Any, ...]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO backup_undecodable (table_name, version, kafka_partition,
                kafka_offset, schema_id, reason_kind, reason)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (table_name, version, kafka_partition, kafka_offset) DO UPDATE SET
                schema_id = EXCLUDED.schema_id, reason_kind = EXCLUDED.reason_kind,
                reason = EXCLUDED.reason, last_tried_at = now(),
                attempts = backup_undecodable.attempts + 1, resolved_at = NULL
            """,
            failed,
        )


def retry_undecodable(
    conn: psycopg.Connection[Any],
    table: AvroTable,
    resolver: Resolver,
    report: DecodeReport,
    *,
    retry_all: bool = False,
    batch_size: int = 5000,
) -> None:
    """Decode the open undecodable rows that may decode now; a row that still fails keeps
    its listing with the new reason and one more attempt."""
    # Per pass this reads only the ids of open rows (a partial index), so a pile of rows
    # that cannot decode yet costs nothing until something changed for their id:
    # - its schema was kept or re-attributed since the row was last tried (another row,
    #   another process, the registry back);
    # - it waits for the registry and the resolver's backoff says: ask again.
    ids = conn.execute(
        """
        SELECT u.schema_id, bool_or(s.resolved_at > u.last_tried_at),
               bool_or(s.schema_id IS NULL AND u.reason_kind = ANY(%s))
        FROM backup_undecodable u LEFT JOIN backup_schemas s USING (schema_id)
        WHERE u.table_name = %s AND u.resolved_at IS NULL AND u.schema_id IS NOT NULL
        GROUP BY u.schema_id
        """,
        (list(WAITING_FOR_SCHEMA), table.raw_table),
    ).fetchall()
    conn.commit()
    candidates = [
        int(schema_id)
        for schema_id, changed, waiting in ids
        if changed or (waiting and resolver.may_ask_registry(int(schema_id)))
    ]
    if not candidates and not retry_all:
        return
    after = 0
    while True:
        rows = conn.execute(
            sql.SQL(
                """
                SELECT u.id, u.version, u.kafka_partition, u.kafka_offset, r.data
                FROM backup_undecodable u
                JOIN {} r USING (version, kafka_partition, kafka_offset)
                WHERE u.table_name = %s AND u.resolved_at IS NULL AND u.id > %s
                  AND (%s OR u.schema_id = ANY(%s))
                ORDER BY u.id LIMIT %s
                FOR UPDATE OF u SKIP LOCKED
                """
            ).format(sql.Identifier(table.raw_table)),
            (table.raw_table, after, retry_all, candidates, batch_size),
        ).fetchall()
        if not rows:
            conn.commit()
            return
        done: list[int] = []
        still: list[tuple[Any, ...]] = []
        inserts: list[tuple[Any, ...]] = []
        for row_id, version, partition, offset, data in rows:
            value = bytes(data)
            schema_id: int | None = None
            try:
                schema_id = schema_id_of(value)
                columns = resolver.decode(conn, table, schema_id, value)
                inserts.append((version, partition, offset, schema_id, *as_python(table, columns)))
                done.append(row_id)
            except Undecodable as exc:
                still.append(
                    (table.raw_table, version, partition, offset, schema_id, exc.kind, exc.reason)
                )
        if inserts:
            names = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
            marks = sql.SQL(", ").join(sql.Placeholder() * len(table.columns))
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
                        sql.Identifier(table.decoded_table), names, marks
                    ),
                    inserts,
                )
            conn.execute(
                "UPDATE backup_undecodable SET resolved_at = now(), last_tried_at = now(), "
                "attempts = attempts + 1 WHERE id = ANY(%s)",
                (done,),
            )
        if still:
            _list_undecodable(conn, still)
        conn.commit()
        report.redecoded += len(done)
        after = int(rows[-1][0])


@dataclass(frozen=True)
class DecodeStatus:
    decoded_rows: int
    open_undecodable: int  # not decoded since, whether acknowledged or not
    unacknowledged: int
    schema_ids: list[int]
    by_kind: dict[str, int]


def status(conn: psycopg.Connection[Any], table: AvroTable) -> DecodeStatus:
    """What the Dagster asset shows and its check judges."""
    decoded = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.decoded_table))
    ).fetchone()
    kinds = conn.execute(
        "SELECT reason_kind, count(*), count(*) FILTER (WHERE acknowledged_at IS NULL) "
        "FROM backup_undecodable WHERE table_name = %s AND resolved_at IS NULL "
        "GROUP BY reason_kind",
        (table.raw_table,),
    ).fetchall()
    ids = conn.execute(
        "SELECT schema_id FROM backup_schemas WHERE record_name = %s "
        "UNION SELECT schema_id FROM backup_undecodable WHERE table_name = %s "
        "AND resolved_at IS NULL AND schema_id IS NOT NULL ORDER BY 1",
        (table.record_name, table.raw_table),
    ).fetchall()
    conn.commit()
    return DecodeStatus(
        decoded_rows=int(decoded[0]) if decoded else 0,
        open_undecodable=sum(int(k[1]) for k in kinds),
        unacknowledged=sum(int(k[2]) for k in kinds),
        schema_ids=[int(i[0]) for i in ids],
        by_kind={str(k[0]): int(k[1]) for k in kinds},
    )


def acknowledge(
    conn: psycopg.Connection[Any], table: AvroTable, up_to_id: int, by: str, note: str
) -> int:
    """Mark the open undecodable rows up to ``up_to_id`` as reviewed; returns how many."""
    count = conn.execute(
        "UPDATE backup_undecodable SET acknowledged_at = now(), acknowledged_by = %s, "
        "acknowledged_note = %s WHERE table_name = %s AND id <= %s "
        "AND resolved_at IS NULL AND acknowledged_at IS NULL",
        (by, note, table.raw_table, up_to_id),
    ).rowcount
    conn.commit()
    return count
