"""Which version of each table is serving, which one is being re-ingested, which are retired.

Setting BACKUP_VERSION to a new value (the *target*) starts a re-ingestion of the whole
topic under that version. Until the target has caught up, the previous version (the
*serving* version) keeps being backed up, so new records are never unprotected; once the
target's lag is small, the target becomes the serving version and the old one is retired.

The lifecycle is recorded in ``backup_versions`` (migration 0005), so the CLI, Dagster and
analysts (``<table>_current`` views) read one fact. ``reconcile`` is the only place that
moves a version from one state to the next; sensor ticks and CLI commands call it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import psycopg

from backup_pipeline import CURRENT_VERSION, hwm
from backup_pipeline.errors import BackupError
from backup_pipeline.kafka import client
from backup_pipeline.topics import TopicSpec

log = logging.getLogger(__name__)


class RetiredVersionError(BackupError):
    """A writer was asked to write into a retired version without allow_retired."""


class DowngradeError(BackupError):
    """A new version below the serving one, without BACKUP_ALLOW_DOWNGRADE."""


class VersionLifecycle(StrEnum):
    SERVING = "serving"
    REINGESTING = "reingesting"
    RETIRED = "retired"


@dataclass(frozen=True)
class RecordedVersion:
    table: str
    version: int
    kafka_topic: str
    state: VersionLifecycle
    state_since: datetime


@dataclass(frozen=True)
class VersionState:
    topic: str
    target: int
    serving: int
    target_lag: int
    records_total: int  # records Kafka holds now (end - log start, summed)
    records_done: int  # of those, how many the target version has accounted for
    serving_lag: int = 0
    versions: tuple[RecordedVersion, ...] = ()  # all recorded versions of the table
    # The target has caught up, but reconcile was told not to promote it (a CLI one-shot
    # without --promote): it is still re-ingesting.
    promotion_due: bool = False

    @property
    def reingesting(self) -> bool:
        return self.serving != self.target

    @property
    def live_versions(self) -> list[int]:
        """The versions a backup writes: the serving one, and the target while it catches
        up, so new records are never unprotected during a re-ingestion."""
        return [self.serving] + ([self.target] if self.reingesting else [])

    @property
    def progress(self) -> float:
        return 1.0 if self.records_total == 0 else self.records_done / self.records_total

    def describe(self) -> str:
        if not self.reingesting:
            return f"{self.topic}: version {self.target} is current (lag {self.target_lag})"
        return (
            f"{self.topic}: re-ingesting version {self.target}: {self.records_done:,} of "
            f"{self.records_total:,} records ({self.progress:.0%}); version {self.serving} "
            "is still backed up until it has caught up"
        )

    def summary(self) -> str:
        """``versions: 1 retired, 2 serving, 3 re-ingesting 45%`` (integers only)."""
        parts = []
        for v in self.versions:
            if v.state is VersionLifecycle.REINGESTING:
                done = self.records_done if v.version == self.target else 0
                parts.append(
                    f"{v.version} re-ingesting {_percent(done, self.records_total)}% "
                    f"({done:,} of {self.records_total:,} records)"
                )
            else:
                parts.append(f"{v.version} {v.state}")
        return "versions: " + (", ".join(parts) or "none recorded")


def describe_recorded(conn: psycopg.Connection, table: str) -> str:
    """``versions: 1 retired, 2 serving, 3 re-ingesting``: what is recorded, without asking
    Kafka for progress (VersionState.summary has it)."""
    recorded = recorded_versions(conn, table)
    names = {VersionLifecycle.REINGESTING: "re-ingesting"}
    return "versions: " + (
        ", ".join(f"{v.version} {names.get(v.state, v.state.value)}" for v in recorded)
        or "none recorded"
    )


def _percent(done: int, total: int) -> int:
    # Floor, so 99.9% never reads as 100% while records are still missing.
    return 100 if total == 0 else done * 100 // total


_SELECT = (
    "SELECT table_name, version, kafka_topic, state, state_since FROM backup_versions "
    "WHERE table_name = %s ORDER BY version"
)


def recorded_versions(conn: psycopg.Connection, table: str) -> list[RecordedVersion]:
    rows = conn.execute(_SELECT, (table,)).fetchall()
    return [
        RecordedVersion(t, v, topic, VersionLifecycle(s), since) for t, v, topic, s, since in rows
    ]


def serving_version(conn: psycopg.Connection, table: str) -> int | None:
    row = conn.execute(
        "SELECT version FROM backup_versions WHERE table_name = %s AND state = 'serving'",
        (table,),
    ).fetchone()
    return None if row is None else int(row[0])


def _lock(conn: psycopg.Connection, table: str) -> None:
    """Serialise decisions about one table's versions until the transaction ends.

    A row lock cannot cover a version that is not recorded yet; this transaction-level
    advisory lock does, and PostgreSQL drops it with the transaction (or a dead client).
    """
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext(%s), 0)", (f"backup_pipeline:versions:{table}",)
    )


def _adopt(conn: psycopg.Connection, table: str, topic: str) -> None:
    """Record the versions a table already has HWMs for, when none are recorded yet.

    Migration 0005 does this for the topics configured when it ran; this covers a topic
    configured differently since. Same rule: one version is serving; of several, the
    highest is re-ingesting (the lag check below promotes it once it has caught up), the
    next one serving, older ones retired.
    """
    conn.execute(
        """
        INSERT INTO backup_versions (table_name, version, kafka_topic, state)
        SELECT %(table)s, version, %(topic)s,
               CASE WHEN count(*) OVER () = 1 THEN 'serving'
                    WHEN rank() OVER (ORDER BY version DESC) = 1 THEN 'reingesting'
                    WHEN rank() OVER (ORDER BY version DESC) = 2 THEN 'serving'
                    ELSE 'retired' END
        FROM (SELECT DISTINCT version FROM bekreftelse_hwm WHERE kafka_topic = %(topic)s) AS v
        WHERE NOT EXISTS (SELECT 1 FROM backup_versions WHERE table_name = %(table)s)
        ON CONFLICT (table_name, version) DO NOTHING
        """,
        {"table": table, "topic": topic},
    )


def _set_state(conn: psycopg.Connection, table: str, version: int, state: VersionLifecycle) -> None:
    conn.execute(
        "UPDATE backup_versions SET state = %s, state_since = now() "
        "WHERE table_name = %s AND version = %s AND state <> %s",
        (state.value, table, version, state.value),
    )
    log.info("%s: version %d is now %s", table, version, state)


def _record_new(
    conn: psycopg.Connection,
    table: str,
    topic: str,
    version: int,
    recorded: list[RecordedVersion],
    *,
    allow_downgrade: bool,
) -> VersionLifecycle:
    """A version written or targeted for the first time: serving if nothing serves yet,
    otherwise the table's one re-ingestion (an unfinished earlier one is abandoned:
    retired, its rows kept). One below the serving version is a downgrade, refused unless
    ``allow_downgrade``: a mistyped BACKUP_VERSION would otherwise re-ingest everything."""
    serving = next((v.version for v in recorded if v.state is VersionLifecycle.SERVING), None)
    if serving is not None and version < serving and not allow_downgrade:
        raise DowngradeError(
            f"version {version} of {table} is below the serving version {serving}: a "
            f"downgrade, refused; set BACKUP_ALLOW_DOWNGRADE=true to re-ingest under "
            f"{version}, or a version above {serving} (unset BACKUP_VERSION keeps {serving})"
        )
    state = VersionLifecycle.SERVING
    if serving is not None:
        state = VersionLifecycle.REINGESTING
        for v in recorded:
            if v.state is VersionLifecycle.REINGESTING:
                _set_state(conn, table, v.version, VersionLifecycle.RETIRED)
    conn.execute(
        "INSERT INTO backup_versions (table_name, version, kafka_topic, state) "
        "VALUES (%s, %s, %s, %s)",
        (table, version, topic, state.value),
    )
    log.info("%s: version %d recorded as %s", table, version, state)
    return state


def ensure_recorded(
    conn: psycopg.Connection,
    table: str,
    topic: str,
    version: int,
    *,
    allow_downgrade: bool = False,
) -> VersionLifecycle:
    """The state of ``version``, recording it first if a writer is about to fill it (a new
    one below the serving version only with ``allow_downgrade``)."""
    with conn.transaction():
        _lock(conn, table)
        _adopt(conn, table, topic)
        recorded = recorded_versions(conn, table)
        for v in recorded:
            if v.version == version:
                return v.state
        return _record_new(conn, table, topic, version, recorded, allow_downgrade=allow_downgrade)


def resolve_write_version(
    conn: psycopg.Connection, table: str, requested: int | None, *, allow_retired: bool
) -> int:
    """The version a writer writes into: ``requested``, or else the serving version (on a
    database where nothing is recorded yet: CURRENT_VERSION). A retired version is refused
    unless ``allow_retired``: its rows are history, and appending to it silently is how a
    backup ends up in a table nobody reads."""
    recorded = recorded_versions(conn, table)
    serving = next((v.version for v in recorded if v.state is VersionLifecycle.SERVING), None)
    if requested is None:
        if serving is not None:
            return serving
        if not recorded:
            return CURRENT_VERSION
        raise BackupError(
            f"{table} has no serving version (recorded: "
            f"{', '.join(f'{v.version} {v.state}' for v in recorded)}); set BACKUP_VERSION"
        )
    retired = any(v.version == requested and v.state is VersionLifecycle.RETIRED for v in recorded)
    if retired and not allow_retired:
        raise RetiredVersionError(
            f"version {requested} of {table} is retired (serving: {serving}); write into the "
            f"serving version {serving}, or pass --allow-retired to write into {requested}"
        )
    return requested


def resolve_read_version(conn: psycopg.Connection, table: str, requested: int | None) -> int:
    """The version a reader (verify, restore, status) reads: ``requested``, else the serving
    one (on a database where nothing is recorded yet: CURRENT_VERSION)."""
    if requested is not None:
        return requested
    serving = serving_version(conn, table)
    if serving is not None:
        return serving
    if not recorded_versions(conn, table):
        return CURRENT_VERSION
    raise BackupError(f"{table} has no serving version; give --version")


def _lags(hwms: dict[int, int], snapshot: dict[int, client.Watermarks]) -> tuple[int, int, int]:
    """(lag, records Kafka holds, of those accounted for) of one version's HWMs."""
    lag = total = done = 0
    for partition, marks in snapshot.items():
        position = hwms.get(partition, hwm.NOTHING_YET) + 1
        lag += max(0, marks.end - position)
        total += marks.end - marks.log_start
        done += max(0, min(position, marks.end) - marks.log_start)
    return lag, total, done


def _hwms(conn: psycopg.Connection, version: int, topic: str) -> dict[int, int]:
    # Not hwm.read: that one commits, and this runs inside reconcile's transaction.
    rows = conn.execute(
        "SELECT kafka_partition, kafka_offset FROM bekreftelse_hwm "
        "WHERE version = %s AND kafka_topic = %s",
        (version, topic),
    ).fetchall()
    return {int(p): int(o) for p, o in rows}


def reconcile(
    conn: psycopg.Connection,
    spec: TopicSpec,
    topic: str,
    target: int | None,
    snapshot: dict[int, client.Watermarks],
    *,
    caught_up_max_lag: int,
    promote: bool = True,
    allow_downgrade: bool = False,
) -> VersionState:
    """Bring ``backup_versions`` of ``spec.table`` in line with ``target`` and Kafka.

    ``target`` is BACKUP_VERSION; None keeps the recorded one (the version being
    re-ingested, else the serving one; on a fresh database CURRENT_VERSION). A new target
    is recorded as serving when nothing serves yet, otherwise as re-ingesting (one below
    the serving version only with ``allow_downgrade``); it is promoted to serving, and the
    previous serving version retired, once every partition in ``snapshot`` has a HWM row
    and its lag is at most ``caught_up_max_lag`` — unless ``promote`` is False (a CLI
    one-shot without --promote), which only reports it as ``promotion_due``. A target set
    back to the serving version abandons (retires) an unfinished re-ingestion. One
    transaction under a per-table lock: idempotent, and safe when processes call it at once.
    """
    table = spec.table
    with conn.transaction():
        _lock(conn, table)
        _adopt(conn, table, topic)
        recorded = recorded_versions(conn, table)
        by_version = {v.version: v for v in recorded}
        serving = next((v.version for v in recorded if v.state is VersionLifecycle.SERVING), None)
        reingesting = next(
            (v.version for v in recorded if v.state is VersionLifecycle.REINGESTING), None
        )
        if target is None:
            target = next(
                (v for v in (reingesting, serving) if v is not None),
                None if recorded else CURRENT_VERSION,
            )
            if target is None:
                raise BackupError(
                    f"{table} has no serving or re-ingesting version (all retired); "
                    "set BACKUP_VERSION to a new version"
                )
        existing = by_version.get(target)
        if existing is None:
            state = _record_new(
                conn, table, topic, target, recorded, allow_downgrade=allow_downgrade
            )
        elif existing.state is VersionLifecycle.RETIRED:
            raise BackupError(
                f"BACKUP_VERSION={target}, but version {target} of {table} is retired "
                f"(serving: {serving}); set a new version to re-ingest, or unset "
                f"BACKUP_VERSION to keep version {serving}"
            )
        else:
            state = existing.state
            if state is VersionLifecycle.SERVING and reingesting is not None:
                _set_state(conn, table, reingesting, VersionLifecycle.RETIRED)

        target_hwms = _hwms(conn, target, topic)
        lag, total, done = _lags(target_hwms, snapshot)
        caught_up = (
            bool(snapshot) and all(p in target_hwms for p in snapshot) and lag <= caught_up_max_lag
        )
        due = state is VersionLifecycle.REINGESTING and (caught_up or serving is None)
        # With nothing serving, making the target serve moves nothing: always done.
        if due and (promote or serving is None):
            if serving is not None:
                _set_state(conn, table, serving, VersionLifecycle.RETIRED)
            _set_state(conn, table, target, VersionLifecycle.SERVING)
            state = VersionLifecycle.SERVING
            due = False
        if state is VersionLifecycle.SERVING:
            serving = target
        assert serving is not None  # recorded above, or the target was just promoted
        serving_lag = lag if serving == target else _lags(_hwms(conn, serving, topic), snapshot)[0]
        versions = tuple(recorded_versions(conn, table))
    return VersionState(topic, target, serving, lag, total, done, serving_lag, versions, due)
