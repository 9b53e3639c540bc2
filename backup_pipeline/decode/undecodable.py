"""The undecodable rows: listing them, retrying those that may decode now, and their
review (``status`` for the Dagster asset and its check, ``acknowledge`` for an operator).

A row that does not decode is listed in ``backup_undecodable`` in the transaction of its
batch; it stays listed (open) until a later pass decodes it, whether acknowledged or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from backup_pipeline.decode.catalog import AvroTable
from backup_pipeline.decode.decoder import WAITING_FOR_SCHEMA, Undecodable, as_python, schema_id_of
from backup_pipeline.decode.report import DecodeReport
from backup_pipeline.decode.resolver import Resolver


def list_undecodable(conn: psycopg.Connection[Any], failed: list[tuple[Any, ...]]) -> None:
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
            list_undecodable(conn, still)
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
