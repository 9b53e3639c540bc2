"""What one scrape reads: per table, version and partition the backup's own numbers from
PostgreSQL, the topic's offsets from Kafka, and failed runs from Dagster's run storage.

Cheap on every scrape, whatever the tables' size:
- One query per table. Rows and quarantined records are counted *incrementally*: only the
  offsets between the HWM counted last time and the HWM now, through the primary keys.
  That is exact because a row or quarantined record at an offset is committed in the same
  transaction as the HWM that passes it, and neither is ever deleted. The first scrape of
  a process counts from the start (``Reader.warm_up`` does it before the port opens).
- One metadata request per topic and one offsets request per partition (status.py's
  watermarks), all inside one deadline; the first Kafka failure ends Kafka for that scrape.
- One query on Dagster's ``runs``/``run_tags`` when DAGSTER_PG_URL is set.
Nothing here writes: a scrape never changes a version's state or any Dagster event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import psycopg
from confluent_kafka import Consumer
from psycopg import sql

from backup_pipeline import db
from backup_pipeline.errors import BackupError, KafkaUnavailableError
from backup_pipeline.kafka import client
from backup_pipeline.metrics.scrape import PartitionReading, Reading
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TopicSpec

log = logging.getLogger(__name__)

# The tags the Dagster shell puts on every backup run (orchestration/jobs.py); repeated
# here because the engine imports nothing of Dagster's.
TABLE_TAG = "backup_pipeline/table"
VERSION_TAG = "backup_pipeline/version"


# Per (version, partition): rows and quarantined counted so far, up to which HWM.
_Counted = dict[tuple[int, int], tuple[int, int, int]]

_TABLE_QUERY = """
WITH counted AS (
    SELECT * FROM unnest(%(versions)s::int[], %(partitions)s::int[], %(upto)s::bigint[])
        AS c(version, kafka_partition, upto)
)
SELECT h.version, coalesce(v.state, 'unrecorded'), h.kafka_partition, h.kafka_offset,
       coalesce(c.upto, -1),
       (SELECT count(*) FROM {table} t
         WHERE t.version = h.version AND t.kafka_partition = h.kafka_partition
           AND t.kafka_offset > coalesce(c.upto, -1) AND t.kafka_offset <= h.kafka_offset),
       (SELECT count(*) FROM backup_quarantine q
         WHERE q.version = h.version AND q.kafka_topic = h.kafka_topic
           AND q.kafka_partition = h.kafka_partition
           AND q.kafka_offset > coalesce(c.upto, -1) AND q.kafka_offset <= h.kafka_offset),
       g.gaps, g.lost, last.kafka_timestamp
FROM bekreftelse_hwm h
LEFT JOIN backup_versions v ON v.table_name = %(table)s AND v.version = h.version
LEFT JOIN counted c ON c.version = h.version AND c.kafka_partition = h.kafka_partition
LEFT JOIN LATERAL (
    SELECT count(*) AS gaps, coalesce(sum(last_lost_offset - first_lost_offset + 1), 0) AS lost
    FROM backup_gaps b
    WHERE b.version = h.version AND b.kafka_topic = h.kafka_topic
      AND b.kafka_partition = h.kafka_partition AND b.kind = 'retention'
) g ON true
LEFT JOIN LATERAL (
    SELECT t.kafka_timestamp FROM {table} t
    WHERE t.version = h.version AND t.kafka_partition = h.kafka_partition
      AND t.kafka_offset <= h.kafka_offset
    ORDER BY t.kafka_offset DESC LIMIT 1
) last ON true
WHERE h.kafka_topic = %(topic)s AND coalesce(v.state, '') <> 'retired'
ORDER BY h.version, h.kafka_partition
"""

_RUNS_FAILED_QUERY = """
SELECT tt.value, tv.value, count(*)
FROM runs r
JOIN run_tags tt ON tt.run_id = r.run_id AND tt.key = %s
JOIN run_tags tv ON tv.run_id = r.run_id AND tv.key = %s
WHERE r.status = 'FAILURE'
GROUP BY tt.value, tv.value
"""


class Reader:
    """Reads a ``Reading`` per call, keeping its connections (and the incremental counts)
    between calls. Not thread-safe: the collector calls it under a lock."""

    def __init__(
        self,
        settings: Settings,
        specs: list[TopicSpec],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._specs = specs
        self._clock = clock
        self._timeout = settings.metrics_scrape_timeout_seconds
        self._conn: psycopg.Connection | None = None
        self._dagster: psycopg.Connection | None = None
        self._consumer: Consumer | None = None
        self._counted: dict[str, _Counted] = {spec.table: {} for spec in specs}

    # --------------------------------------------------------------- public ----

    def warm_up(self) -> Reading:
        """A first reading without the scrape's time bound, so the first full count of a
        big table happens once at start, not in a scrape that would time out on it."""
        return self.read(bounded=False)

    def read(self, *, bounded: bool = True) -> Reading:
        """One reading, all of it within BACKUP_METRICS_SCRAPE_TIMEOUT_SECONDS when
        ``bounded``. Each source that fails or runs out is reported, never raised."""
        started = self._clock()
        deadline = started + self._timeout if bounded else None
        reading = Reading()
        by_table = self._read_postgres(reading, deadline)
        self._read_kafka(reading, by_table, deadline)
        if self._settings.dagster_pg_url.get_secret_value():
            self._read_runs_failed(reading, deadline)
        reading.duration_seconds = self._clock() - started
        return reading

    def close(self) -> None:
        for conn in (self._conn, self._dagster):
            if conn is not None:
                conn.close()
        if self._consumer is not None:
            self._consumer.close()
        self._conn = self._dagster = None
        self._consumer = None

    # ----------------------------------------------------------- postgres ----

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._clock()

    def _postgres(self, deadline: float | None) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            left = self._left(deadline)
            self._conn = db.connect(
                self._settings, autocommit=True, connect_timeout=_whole_seconds(left)
            )
        return self._conn

    def _read_postgres(
        self, reading: Reading, deadline: float | None
    ) -> dict[str, list[PartitionReading]]:
        by_table: dict[str, list[PartitionReading]] = {}
        try:
            conn = self._postgres(deadline)
            for spec in self._specs:
                _bound_statements(conn, self._left(deadline))
                by_table[spec.table] = self._read_table(conn, spec)
        except (psycopg.Error, BackupError) as exc:
            reading.up["postgres"] = False
            reading.errors["postgres"] = _describe(exc, self._settings)
            log.warning("metrics: PostgreSQL: %s", reading.errors["postgres"])
            if self._conn is not None and not isinstance(exc, psycopg.errors.QueryCanceled):
                self._conn.close()
            return {}
        reading.up["postgres"] = True
        return by_table

    def _read_table(self, conn: psycopg.Connection, spec: TopicSpec) -> list[PartitionReading]:
        topic = self._settings.topic(spec)
        counted = self._counted[spec.table]
        keys = list(counted)
        rows = conn.execute(
            sql.SQL(_TABLE_QUERY).format(table=sql.Identifier(spec.table)),
            {
                "versions": [k[0] for k in keys],
                "partitions": [k[1] for k in keys],
                "upto": [counted[k][0] for k in keys],
                "table": spec.table,
                "topic": topic,
            },
        ).fetchall()
        result = []
        for (
            version,
            state,
            partition,
            hwm,
            upto,
            new_rows,
            new_quarantined,
            gaps,
            lost,
            last,
        ) in rows:
            _, rows_before, quarantined_before = counted.get((version, partition), (-1, 0, 0))
            if hwm < upto:
                # The HWM went back (an operator reset it): count that partition again.
                counted.pop((version, partition), None)
                continue
            stored = rows_before + int(new_rows)
            quarantined = quarantined_before + int(new_quarantined)
            counted[(version, partition)] = (hwm, stored, quarantined)
            result.append(
                PartitionReading(
                    table=spec.table,
                    topic=topic,
                    version=version,
                    state=state,
                    partition=partition,
                    hwm=None if hwm < 0 else hwm,
                    rows_stored=stored,
                    quarantined=quarantined,
                    gaps=int(gaps),
                    lost=int(lost),
                    last_stored_at=last,
                )
            )
        return result

    # -------------------------------------------------------------- kafka ----

    def _kafka(self) -> Consumer:
        if self._consumer is None:
            self._consumer = client.open_consumer(self._settings)
        return self._consumer

    def _read_kafka(
        self,
        reading: Reading,
        by_table: dict[str, list[PartitionReading]],
        deadline: float | None,
    ) -> None:
        if not by_table:
            # PostgreSQL did not answer: there is nothing to set the offsets beside, and
            # the scrape's time may be gone already.
            return
        problems: list[str] = []
        unreachable = False
        for spec in self._specs:
            known = by_table.get(spec.table, [])
            marks: dict[int, client.Watermarks] = {}
            if known and not unreachable:
                try:
                    marks = self._marks(self._settings.topic(spec), deadline)
                except (KafkaUnavailableError, _OutOfTime) as exc:
                    # Kafka (or the scrape's time) is gone: asking about the next topic
                    # would only wait again.
                    problems.append(str(exc))
                    unreachable = True
                except BackupError as exc:
                    # This topic alone (deleted, say): the others are still worth asking.
                    problems.append(str(exc))
            reading.partitions.extend(_joined(known, marks))
        reading.up["kafka"] = not problems
        if problems:
            reading.errors["kafka"] = "; ".join(problems)
            log.warning("metrics: Kafka: %s", reading.errors["kafka"])

    def _marks(self, topic: str, deadline: float | None) -> dict[int, client.Watermarks]:
        consumer = self._kafka()

        def left() -> float:
            remaining = self._left(deadline)
            if remaining is None:
                return self._settings.kafka_timeout_seconds
            if remaining <= 0:
                raise _OutOfTime(f"no time left in this scrape for {topic}'s offsets")
            return min(remaining, self._settings.kafka_timeout_seconds)

        return {
            p: client.watermarks(consumer, topic, p, left())
            for p in client.partitions(consumer, topic, left())
        }

    # ------------------------------------------------------------- dagster ----

    def _read_runs_failed(self, reading: Reading, deadline: float | None) -> None:
        try:
            if self._dagster is None or self._dagster.closed or self._dagster.broken:
                self._dagster = psycopg.connect(
                    self._settings.dagster_pg_url.get_secret_value(),
                    autocommit=True,
                    application_name=db.APPLICATION_NAME,
                    connect_timeout=_whole_seconds(self._left(deadline)),
                )
            _bound_statements(self._dagster, self._left(deadline))
            rows = self._dagster.execute(_RUNS_FAILED_QUERY, (TABLE_TAG, VERSION_TAG)).fetchall()
        except psycopg.Error as exc:
            reading.up["dagster"] = False
            # Never the URL or libpq's text verbatim: either may carry the password.
            reading.errors["dagster"] = db.redact(db.one_line(str(exc)))
            log.warning("metrics: Dagster's run storage: %s", reading.errors["dagster"])
            if self._dagster is not None:
                self._dagster.close()
                self._dagster = None
            return
        reading.up["dagster"] = True
        tables = {spec.table for spec in self._specs}
        for table, version, count in rows:
            if table in tables and str(version).isdigit():
                reading.runs_failed[(table, int(version))] = int(count)


class _OutOfTime(BackupError):
    """The scrape's deadline passed before Kafka was asked."""


def _joined(
    known: list[PartitionReading], marks: dict[int, client.Watermarks]
) -> list[PartitionReading]:
    """Each partition with its offsets; a partition Kafka has but a version has no HWM row
    for yet (added to the topic since its last pass) shows with all of it as lag."""
    result = []
    versions: dict[int, PartitionReading] = {}
    for part in known:
        versions.setdefault(part.version, part)
        mark = marks.get(part.partition)
        if mark is not None:
            part = replace(part, log_start=mark.log_start, end_offset=mark.end)
        result.append(part)
    have = {(p.version, p.partition) for p in known}
    for version, some in versions.items():
        for partition, mark in marks.items():
            if (version, partition) not in have:
                result.append(
                    replace(
                        some,
                        partition=partition,
                        hwm=None,
                        rows_stored=0,
                        quarantined=0,
                        gaps=0,
                        lost=0,
                        last_stored_at=None,
                        log_start=mark.log_start,
                        end_offset=mark.end,
                    )
                )
    return sorted(result, key=lambda p: (p.version, p.partition))


def _whole_seconds(left: float | None) -> int:
    # libpq's connect_timeout is whole seconds, and 1 is its least (0 means none).
    return 10 if left is None else max(1, min(10, int(left + 0.999)))


def _bound_statements(conn: psycopg.Connection, left: float | None) -> None:
    """Statements end with the scrape (0 = no bound, for the warm-up)."""
    millis = 0 if left is None else max(1, int(left * 1000))
    conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(millis)))


def _describe(exc: BaseException, settings: Settings) -> str:
    if isinstance(exc, BackupError):
        return str(exc)
    return db.redact(db.one_line(str(exc)), settings)
