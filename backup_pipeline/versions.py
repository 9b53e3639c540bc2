"""Which version the steady backup writes while a new version is being re-ingested.

Setting BACKUP_VERSION to a new value (the *target*) starts a re-ingestion of the whole
topic under that version. Until the target has caught up, the previous version (the
*serving* version) keeps being backed up, so new records are never unprotected; once the
target's lag is small, the target becomes the serving version and the old one stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer

from backup_pipeline import hwm, source, status


@dataclass(frozen=True)
class VersionState:
    topic: str
    target: int
    serving: int
    target_lag: int
    records_total: int  # records Kafka holds now (end - log start, summed)
    records_done: int  # of those, how many the target version has accounted for

    @property
    def reingesting(self) -> bool:
        return self.serving != self.target

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


def known_versions(conn: psycopg.Connection, topic: str) -> list[int]:
    rows = conn.execute(
        "SELECT DISTINCT version FROM bekreftelse_hwm WHERE kafka_topic = %s ORDER BY 1",
        (topic,),
    ).fetchall()
    return [r[0] for r in rows]


def version_state(
    conn: psycopg.Connection,
    consumer: Consumer,
    topic: str,
    target: int,
    *,
    caught_up_max_lag: int,
    timeout: float = 10.0,
    snapshot: dict[int, source.Watermarks] | None = None,
) -> VersionState:
    if snapshot is None:
        snapshot = status.snapshot(consumer, topic, timeout)
    partitions = sorted(snapshot)
    target_hwms = hwm.read(conn, target, topic)
    lag = total = done = 0
    for partition in partitions:
        marks = snapshot[partition]
        position = target_hwms.get(partition, hwm.NOTHING_YET) + 1
        lag += max(0, marks.end - position)
        total += marks.end - marks.log_start
        done += max(0, min(position, marks.end) - marks.log_start)
    others = [v for v in known_versions(conn, topic) if v != target]
    caught_up = all(p in target_hwms for p in partitions) and lag <= caught_up_max_lag
    serving = target if caught_up or not others else max(others)
    return VersionState(topic, target, serving, lag, total, done)
