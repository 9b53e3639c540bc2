"""Restore bookkeeping in PostgreSQL: runs, per-partition checkpoints, the offset map.

The offset map rows of delivered records and the checkpoint that covers them are written
in one transaction, so the map never claims more or less than the checkpoint says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from backup_pipeline import failpoints
from backup_pipeline.selection import Selection

RESTORE_LOCK_NAMESPACE = "backup_pipeline:restore"


@dataclass
class RunRow:
    run_id: int
    version: int
    source_table: str
    source_topic: str
    target_topic: str
    selection: Selection
    origin_headers: bool
    status: str


@dataclass
class Checkpoint:
    partition: int
    first_target_offset: int
    last_source_offset: int
    next_target_offset: int
    restored: int = 0
    not_exact: int = 0
    quarantined: int = 0
    # delivered since the last save: (source offset, target offset)
    pending: list[tuple[int, int]] = field(default_factory=list)
    pending_not_exact: int = 0
    pending_quarantined: int = 0


def create_run(
    conn: psycopg.Connection,
    *,
    version: int,
    source_table: str,
    source_topic: str,
    target_topic: str,
    selection: Selection,
    origin_headers: bool,
    target_ends: dict[int, int],
) -> int:
    with conn.transaction():
        row = conn.execute(
            """
            INSERT INTO restore_runs (version, source_table, source_topic, target_topic,
                                      selection, origin_headers)
            VALUES (%s, %s, %s, %s, %s, %s) RETURNING run_id
            """,
            (
                version,
                source_table,
                source_topic,
                target_topic,
                Jsonb(selection.to_json()),
                origin_headers,
            ),
        ).fetchone()
        assert row is not None
        run_id = int(row[0])
        conn.execute(
            """
            INSERT INTO restore_progress (run_id, kafka_partition, first_target_offset,
                                          next_target_offset)
            SELECT %s, p, e, e FROM unnest(%s::int[], %s::bigint[]) AS t(p, e)
            """,
            (run_id, list(target_ends), list(target_ends.values())),
        )
    return run_id


def load_run(conn: psycopg.Connection, run_id: int) -> RunRow | None:
    row = conn.execute(
        "SELECT run_id, version, source_table, source_topic, target_topic, selection, "
        "origin_headers, status FROM restore_runs WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    return RunRow(
        run_id=row[0],
        version=row[1],
        source_table=row[2],
        source_topic=row[3],
        target_topic=row[4],
        selection=Selection.from_json(row[5]),
        origin_headers=row[6],
        status=row[7],
    )


def runs_into(conn: psycopg.Connection, target_topic: str) -> list[RunRow]:
    ids = conn.execute(
        "SELECT run_id FROM restore_runs WHERE target_topic = %s ORDER BY run_id",
        (target_topic,),
    ).fetchall()
    return [run for (run_id,) in ids if (run := load_run(conn, run_id)) is not None]


def checkpoints(conn: psycopg.Connection, run_id: int) -> dict[int, Checkpoint]:
    rows = conn.execute(
        "SELECT kafka_partition, first_target_offset, last_source_offset, next_target_offset, "
        "restored, not_exact, quarantined FROM restore_progress WHERE run_id = %s",
        (run_id,),
    ).fetchall()
    return {row[0]: Checkpoint(*row) for row in rows}


def written_range(
    conn: psycopg.Connection, run_ids: list[int], partition: int
) -> tuple[int, int, int] | None:
    """What the runs wrote into one target partition: (first target offset, next target
    offset, last source offset recorded), or None when they have no checkpoint there."""
    row = conn.execute(
        "SELECT min(first_target_offset), max(next_target_offset), max(last_source_offset) "
        "FROM restore_progress WHERE run_id = ANY(%s) AND kafka_partition = %s",
        (run_ids, partition),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return int(row[0]), int(row[1]), int(row[2])


def add_partition(conn: psycopg.Connection, run_id: int, partition: int, end: int) -> Checkpoint:
    conn.execute(
        "INSERT INTO restore_progress (run_id, kafka_partition, first_target_offset, "
        "next_target_offset) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (run_id, partition, end, end),
    )
    return checkpoints(conn, run_id)[partition]


def save(conn: psycopg.Connection, run_id: int, checkpoint: Checkpoint) -> None:
    """Record the delivered-but-unsaved records of one partition: map rows + checkpoint."""
    if not checkpoint.pending:
        return
    partition = checkpoint.partition
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(
            "COPY restore_offset_map (run_id, source_partition, source_offset, "
            "target_partition, target_offset) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int4", "int8", "int4", "int8"])
            for source_offset, target_offset in checkpoint.pending:
                copy.write_row((run_id, partition, source_offset, partition, target_offset))
        last_source, last_target = checkpoint.pending[-1]
        cur.execute(
            """
            UPDATE restore_progress
            SET last_source_offset = %s, next_target_offset = %s,
                restored = restored + %s, not_exact = not_exact + %s,
                quarantined = quarantined + %s, updated_at = now()
            WHERE run_id = %s AND kafka_partition = %s
            """,
            (
                last_source,
                last_target + 1,
                len(checkpoint.pending),
                checkpoint.pending_not_exact,
                checkpoint.pending_quarantined,
                run_id,
                partition,
            ),
        )
        cur.execute("UPDATE restore_runs SET updated_at = now() WHERE run_id = %s", (run_id,))
        # Kill tests: the records are in Kafka, this checkpoint is not committed.
        failpoints.hit("restore_before_checkpoint")
    checkpoint.restored += len(checkpoint.pending)
    checkpoint.not_exact += checkpoint.pending_not_exact
    checkpoint.quarantined += checkpoint.pending_quarantined
    checkpoint.last_source_offset = last_source
    checkpoint.next_target_offset = last_target + 1
    checkpoint.pending.clear()
    checkpoint.pending_not_exact = checkpoint.pending_quarantined = 0


def finish(conn: psycopg.Connection, run_id: int, status: str, error: str | None = None) -> None:
    conn.execute(
        "UPDATE restore_runs SET status = %s, error = %s, updated_at = now(), "
        "finished_at = CASE WHEN %s = 'completed' THEN now() END WHERE run_id = %s",
        (status, error, status, run_id),
    )


def try_lock(conn: psycopg.Connection, run_id: int) -> bool:
    """A session advisory lock per run: one process restores a run at a time."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(hashtext(%s), %s)",
        (RESTORE_LOCK_NAMESPACE, _lock_key(run_id)),
    ).fetchone()
    return bool(row and row[0])


def unlock(conn: psycopg.Connection, run_id: int) -> None:
    if not conn.closed:
        conn.execute(
            "SELECT pg_advisory_unlock(hashtext(%s), %s)",
            (RESTORE_LOCK_NAMESPACE, _lock_key(run_id)),
        )


def _lock_key(run_id: int) -> int:
    # The two-int form of the advisory lock takes int4 keys.
    return run_id % (2**31)


def offset_map(conn: psycopg.Connection, run_id: int) -> list[tuple[Any, ...]]:
    """The whole map of one run (for tests and small runs)."""
    return conn.execute(
        "SELECT source_partition, source_offset, target_partition, target_offset "
        "FROM restore_offset_map WHERE run_id = %s ORDER BY 1, 2",
        (run_id,),
    ).fetchall()
