"""Where the backup stands: per topic and partition, HWM, end offset, lag, problems; per
table, which versions exist, how far a re-ingestion is, what nobody acknowledged yet."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer

from backup_pipeline import acknowledge, db, hwm, versions
from backup_pipeline.kafka import client
from backup_pipeline.topics import TopicSpec
from backup_pipeline.versions import VersionState


@dataclass
class PartitionStatus:
    table: str
    topic: str
    version: int
    partition: int
    hwm: int | None
    log_start: int
    end_offset: int
    quarantined: int
    lost: int

    @property
    def lag(self) -> int:
        done = -1 if self.hwm is None else self.hwm
        return max(0, self.end_offset - (done + 1))


def snapshot(consumer: Consumer, topic: str, timeout: float) -> dict[int, client.Watermarks]:
    """Every partition's log start and end offset, asked once per caller."""
    return {
        p: client.watermarks(consumer, topic, p, timeout)
        for p in client.partitions(consumer, topic, timeout)
    }


def topic_status(
    conn: psycopg.Connection,
    consumer: Consumer,
    spec: TopicSpec,
    topic: str,
    version: int,
    timeout: float = 10.0,
    marks: dict[int, client.Watermarks] | None = None,
) -> list[PartitionStatus]:
    hwms = hwm.read(conn, version, topic)
    quarantined: dict[int, int] = dict(
        conn.execute(
            "SELECT kafka_partition, count(*) FROM backup_quarantine "
            "WHERE version = %s AND kafka_topic = %s GROUP BY kafka_partition",
            (version, topic),
        ).fetchall()
    )
    lost: dict[int, int] = dict(
        conn.execute(
            "SELECT kafka_partition, sum(last_lost_offset - first_lost_offset + 1) "
            "FROM backup_gaps WHERE version = %s AND kafka_topic = %s AND kind = 'retention' "
            "GROUP BY kafka_partition",
            (version, topic),
        ).fetchall()
    )
    db.end_read(conn)
    if marks is None:
        marks = snapshot(consumer, topic, timeout)
    result = []
    for partition, mark in sorted(marks.items()):
        result.append(
            PartitionStatus(
                table=spec.table,
                topic=topic,
                version=version,
                partition=partition,
                hwm=hwms.get(partition),
                log_start=mark.log_start,
                end_offset=mark.end,
                quarantined=int(quarantined.get(partition, 0)),
                lost=int(lost.get(partition, 0)),
            )
        )
    return result


@dataclass(frozen=True)
class TableStatus:
    table: str
    state: VersionState
    # The serving version's partitions, then those of the version being re-ingested (or
    # only those of the version asked for).
    partitions: list[PartitionStatus]
    unacknowledged: acknowledge.Unacknowledged


def table_status(
    conn: psycopg.Connection,
    consumer: Consumer,
    spec: TopicSpec,
    topic: str,
    target: int | None,
    *,
    caught_up_max_lag: int,
    timeout: float = 10.0,
    version: int | None = None,
    promote: bool = True,
    allow_downgrade: bool = False,
) -> TableStatus:
    """Reconcile the table's versions (versions.reconcile, with ``promote`` and
    ``allow_downgrade``), then its status: by default the serving version and the one
    being re-ingested; ``version`` shows that one instead."""
    # PostgreSQL first: an unmigrated database is told to migrate before Kafka is asked
    # about topics that may not exist yet either.
    versions.recorded_versions(conn, spec.table)
    marks = snapshot(consumer, topic, timeout)
    state = versions.reconcile(
        conn,
        spec,
        topic,
        target,
        marks,
        caught_up_max_lag=caught_up_max_lag,
        promote=promote,
        allow_downgrade=allow_downgrade,
    )
    shown = [version] if version is not None else state.live_versions
    partitions = [
        part for v in shown for part in topic_status(conn, consumer, spec, topic, v, timeout, marks)
    ]
    unacknowledged = acknowledge.unacknowledged(conn, topic, shown[0])
    return TableStatus(spec.table, state, partitions, unacknowledged)


STATUS_COLUMNS = (
    "table",
    "topic",
    "version",
    "state",
    "partition",
    "hwm",
    "end_offset",
    "lag",
    "quarantined",
    "lost",
)


def render(statuses: list[TableStatus]) -> str:
    """A plain text table, then a line per table. Integers print as integers (a DataFrame
    turned a column with a missing HWM into floats: 2517.0, NaN); no HWM yet prints -."""
    rows: list[tuple[str, ...]] = []
    for table in statuses:
        lifecycle = {v.version: v.state.value for v in table.state.versions}
        for p in table.partitions:
            rows.append(
                (
                    p.table,
                    p.topic,
                    str(p.version),
                    lifecycle.get(p.version, "unrecorded"),
                    str(p.partition),
                    "-" if p.hwm is None else str(p.hwm),
                    str(p.end_offset),
                    str(p.lag),
                    str(p.quarantined),
                    str(p.lost),
                )
            )
    lines = [_aligned(STATUS_COLUMNS, rows)] if rows else ["no partitions"]
    lines.append("")
    for table in statuses:
        lines.append(f"{table.table}: {table.state.summary()}; {table.unacknowledged.describe()}")
    return "\n".join(lines)


def _aligned(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    # Text left, numbers right, as a person reads a table.
    numeric = [i >= 2 and i != 3 for i in range(len(headers))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])
