"""Keep Dagster's instance database bounded: delete old runless asset events.

Dagster (1.13) keeps every runless observation and check evaluation forever: its
``retention:`` block covers sensor and schedule ticks only, ``wipe_assets`` hides rows but
frees nothing (dagster-io/dagster#33785), and deleting a run deletes that run's events but
leaves its rows in ``asset_check_executions``. The sensors report asset events without a
run, so nothing else would ever delete them. This module deletes them by SQL on Dagster's
own tables, which ties it to their layout in the locked Dagster minor version:
:func:`check_dagster_version` refuses any other.

Why the UI keeps its current state (dagster/_core/storage/event_log/sql_event_log.py):

- An asset's latest observation is its ``ASSET_OBSERVATION`` row in ``event_logs`` with the
  highest id: the newest one per asset (and per partition) is never deleted.
- A check's state is its ``asset_check_executions`` row with the highest id, and the
  highest-id completed one (``get_asset_check_summary_records``); both are kept per
  (asset, check, partition), with the ``event_logs`` row they point at.
- ``asset_keys`` holds a *copy* of the last materialization (no pointer into ``event_logs``)
  and the time of the last event; materializations are never deleted here, so it stays
  consistent.

Rows go in batches of their own short transaction (index-ordered by id, oldest first), so
no lock is held for long and a stopped job loses nothing: the next one goes on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import metadata
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from backup_pipeline.db import one_line, redact
from backup_pipeline.errors import BackupError, UnsupportedDagsterError

# The Dagster minor version the SQL below was written for and tested against (its pin in
# requirements.lock; test_dagster_storage.py fails when the lock moves to another minor).
LOCKED_DAGSTER_MINOR = (1, 13)
# Rows per transaction: a batch takes well under a second, so Dagster's writers never wait
# long on a row it holds, and autovacuum can reuse the space as the job goes.
BATCH_ROWS = 5_000
# How long a statement of the job waits for a lock held elsewhere before it gives up.
LOCK_TIMEOUT = "10s"
APPLICATION_NAME = "backup_pipeline maintenance"

# Session advisory lock: one maintenance run deletes at a time (a run by hand from the
# Launchpad may meet the scheduled one); its batches would otherwise contend for rows.
LOCK_KEY = 0x6270_6D61_696E_7401  # "bpmaint" + 1

# The tables and columns the SQL below reads or deletes from.
REQUIRED_COLUMNS: dict[str, frozenset[str]] = {
    "event_logs": frozenset({"id", "run_id", "dagster_event_type", "asset_key", "timestamp"}),
    "asset_check_executions": frozenset(
        {
            "id",
            "asset_key",
            "check_name",
            "partition",
            "run_id",
            "execution_status",
            "evaluation_event_timestamp",
            "evaluation_event_storage_id",
        }
    ),
    "asset_event_tags": frozenset({"event_id"}),
    "asset_keys": frozenset({"asset_key"}),
    "runs": frozenset({"run_id"}),
}
# What the instance database is made of, for the size figures (bench/, docs/).
SIZED_TABLES = ("event_logs", "asset_check_executions", "asset_event_tags", "runs", "job_ticks")


def installed_dagster_version() -> str:
    return metadata.version("dagster")


def check_dagster_version(installed: str) -> None:
    """Refuse, with the reason, any Dagster whose minor version is not the locked one."""
    parts = installed.split(".")
    try:
        found = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        found = None
    if found != LOCKED_DAGSTER_MINOR:
        locked = ".".join(map(str, LOCKED_DAGSTER_MINOR))
        raise UnsupportedDagsterError(
            f"storage maintenance refused: it deletes rows from Dagster's internal tables "
            f"(event_logs, asset_check_executions, asset_event_tags) as laid out in Dagster "
            f"{locked}.x, the locked version, but Dagster {installed} is installed; check "
            f"backup_pipeline/dagster_storage.py against that version's schema, then update "
            f"LOCKED_DAGSTER_MINOR"
        )


@dataclass(frozen=True)
class PruneCounts:
    """Rows deleted, per table and kind."""

    observations: int = 0  # event_logs rows of runless ASSET_OBSERVATION events
    check_evaluations: int = 0  # event_logs rows of runless ASSET_CHECK_EVALUATION events
    check_executions: int = 0  # asset_check_executions rows of runless evaluations
    run_check_executions: int = 0  # asset_check_executions rows of runs deleted since
    event_tags: int = 0  # asset_event_tags rows of the deleted events

    @property
    def event_logs(self) -> int:
        return self.observations + self.check_evaluations

    @property
    def asset_check_executions(self) -> int:
        return self.check_executions + self.run_check_executions

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def connect(url: str) -> psycopg.Connection:
    """A connection to the instance database (autocommit: every batch is its own
    transaction), bounded in how long it waits for locks."""
    try:
        conn = psycopg.connect(
            url, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=10
        )
    except psycopg.Error as exc:
        raise BackupError(
            f"cannot connect to Dagster's instance database: {one_line(redact(str(exc)))}"
        ) from None
    # A SET rather than a startup option: connection poolers such as PgBouncer refuse those.
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
    return conn


def check_schema(conn: psycopg.Connection) -> None:
    """Refuse when a table or column the deletes rely on is missing."""
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ANY(%s)",
        [list(REQUIRED_COLUMNS)],
    ).fetchall()
    found: dict[str, set[str]] = {}
    for table, column in rows:
        found.setdefault(table, set()).add(column)
    missing = [
        f"{table}.{column}" if table in found else f"table {table}"
        for table, columns in REQUIRED_COLUMNS.items()
        for column in sorted(columns - found.get(table, set()))[: None if table in found else 1]
    ]
    if missing:
        raise UnsupportedDagsterError(
            "storage maintenance refused: Dagster's instance database lacks "
            + ", ".join(missing)
            + " (not the schema this code was written for; run `dagster instance migrate`?)"
        )


# The newest observation per asset, and per partition of a partitioned asset: what the
# asset page shows as its latest observation. Through asset_keys, so each is one backward
# step in idx_events_by_asset instead of a scan of every observation.
_KEEP_OBSERVATIONS = """
SELECT latest.id
FROM asset_keys AS k
CROSS JOIN LATERAL (
    SELECT max(e.id) AS id FROM event_logs AS e
    WHERE e.asset_key = k.asset_key AND e.dagster_event_type = 'ASSET_OBSERVATION'
) AS latest
WHERE latest.id IS NOT NULL
UNION
SELECT max(id) FROM event_logs
WHERE dagster_event_type = 'ASSET_OBSERVATION' AND asset_key IS NOT NULL
  AND partition IS NOT NULL
GROUP BY asset_key, partition
"""

# A check's latest execution and its latest completed one (the latest may be PLANNED while
# a run is under way), per partition: what the asset page and the check's page show.
_KEEP_CHECK_EXECUTIONS = """
SELECT max(id) FROM asset_check_executions GROUP BY asset_key, check_name, partition
UNION
SELECT max(id) FROM asset_check_executions WHERE execution_status <> 'PLANNED'
GROUP BY asset_key, check_name, partition
"""

_DELETE_OBSERVATIONS = """
WITH doomed AS (
    SELECT id FROM event_logs
    WHERE dagster_event_type = 'ASSET_OBSERVATION' AND run_id = ''
      AND timestamp < %(cutoff)s AND id <> ALL(%(keep)s::bigint[])
    ORDER BY id
    LIMIT %(batch)s
), events AS (
    DELETE FROM event_logs WHERE id IN (SELECT id FROM doomed) RETURNING id
), tags AS (
    DELETE FROM asset_event_tags WHERE event_id IN (SELECT id FROM doomed) RETURNING id
)
SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM tags)
"""

# A runless evaluation's execution row and the event it was made from go together.
_DELETE_RUNLESS_CHECK_EVALUATIONS = """
WITH doomed AS (
    SELECT id, evaluation_event_storage_id AS event_id FROM asset_check_executions
    WHERE run_id = '' AND evaluation_event_timestamp < %(cutoff)s
      AND id <> ALL(%(keep)s::bigint[])
    ORDER BY id
    LIMIT %(batch)s
), executions AS (
    DELETE FROM asset_check_executions WHERE id IN (SELECT id FROM doomed) RETURNING id
), events AS (
    DELETE FROM event_logs
    WHERE id IN (SELECT event_id FROM doomed)
      AND run_id = '' AND dagster_event_type = 'ASSET_CHECK_EVALUATION'
    RETURNING id
), tags AS (
    DELETE FROM asset_event_tags WHERE event_id IN (SELECT event_id FROM doomed) RETURNING id
)
SELECT (SELECT count(*) FROM executions), (SELECT count(*) FROM events),
       (SELECT count(*) FROM tags)
"""

# Dagster's delete_run deletes a run's events but not its check executions; once the run is
# gone (purge_old_runs_job), they are history nobody can open.
_DELETE_RUN_CHECK_EXECUTIONS = """
WITH doomed AS (
    SELECT c.id FROM asset_check_executions AS c
    WHERE c.run_id <> '' AND c.evaluation_event_timestamp < %(cutoff)s
      AND c.id <> ALL(%(keep)s::bigint[])
      AND NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.run_id = c.run_id)
    ORDER BY c.id
    LIMIT %(batch)s
), executions AS (
    DELETE FROM asset_check_executions WHERE id IN (SELECT id FROM doomed) RETURNING id
)
SELECT (SELECT count(*) FROM executions)
"""


def prune_asset_events(
    conn: psycopg.Connection, cutoff: datetime, batch_rows: int = BATCH_ROWS
) -> PruneCounts | None:
    """Delete runless observations and check evaluations from before ``cutoff`` (naive UTC,
    as Dagster stores its timestamps), and check executions of runs deleted since, keeping
    the newest per asset and per check. ``conn`` must be in autocommit mode. None: another
    maintenance run holds the lock, nothing was done."""
    if cutoff.tzinfo is not None:
        raise ValueError("cutoff must be naive UTC, as Dagster's timestamp columns are")
    check_schema(conn)
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]).fetchone()
    if not (row and row[0]):
        return None
    try:
        return _prune(conn, cutoff, batch_rows)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])


def _prune(conn: psycopg.Connection, cutoff: datetime, batch_rows: int) -> PruneCounts:
    keep_observations = _ids(conn, _KEEP_OBSERVATIONS)
    keep_executions = _ids(conn, _KEEP_CHECK_EXECUTIONS)

    params: dict[str, Any] = {"cutoff": cutoff, "batch": batch_rows, "keep": keep_observations}
    observations = tags = 0
    for events, event_tags in _batches(conn, _DELETE_OBSERVATIONS, params, batch_rows):
        observations += events
        tags += event_tags

    params["keep"] = keep_executions
    executions = evaluations = 0
    for deleted, events, event_tags in _batches(
        conn, _DELETE_RUNLESS_CHECK_EVALUATIONS, params, batch_rows
    ):
        executions += deleted
        evaluations += events
        tags += event_tags

    run_executions = sum(
        deleted for (deleted,) in _batches(conn, _DELETE_RUN_CHECK_EXECUTIONS, params, batch_rows)
    )
    return PruneCounts(
        observations=observations,
        check_evaluations=evaluations,
        check_executions=executions,
        run_check_executions=run_executions,
        event_tags=tags,
    )


def _ids(conn: psycopg.Connection, query: LiteralString) -> list[int]:
    return [row[0] for row in conn.execute(query).fetchall() if row[0] is not None]


def _batches(
    conn: psycopg.Connection, statement: LiteralString, params: dict[str, Any], batch_rows: int
) -> list[tuple[int, ...]]:
    """Run ``statement`` (its first count: the rows it chose) until a batch comes up short."""
    done: list[tuple[int, ...]] = []
    while True:
        row = conn.execute(statement, params).fetchone()
        counts = tuple(int(n) for n in row) if row else (0,)
        done.append(counts)
        if counts[0] < batch_rows:
            return done


@dataclass(frozen=True)
class TableSize:
    rows: int
    bytes: int  # with its indexes and TOAST (pg_total_relation_size)

    @property
    def bytes_per_row(self) -> float:
        return self.bytes / self.rows if self.rows else 0.0


def table_sizes(conn: psycopg.Connection) -> dict[str, TableSize]:
    """Rows and bytes on disk of the instance database's growing tables."""
    sizes = {}
    for table in SIZED_TABLES:
        query = sql.SQL("SELECT (SELECT count(*) FROM {}), pg_total_relation_size(%s::regclass)")
        row = conn.execute(query.format(sql.Identifier(table)), [table]).fetchone()
        rows, size = row if row else (0, 0)
        sizes[table] = TableSize(rows=int(rows), bytes=int(size))
    return sizes
