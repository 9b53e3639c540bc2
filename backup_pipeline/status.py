"""Where the backup stands: per topic and partition, HWM, end offset, lag, problems."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer

from backup_pipeline import hwm, source
from backup_pipeline.topics import TopicSpec


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


def snapshot(consumer: Consumer, topic: str, timeout: float) -> dict[int, source.Watermarks]:
    """Every partition's log start and end offset, asked once per caller."""
    return {
        p: source.watermarks(consumer, topic, p, timeout)
        for p in source.partitions(consumer, topic, timeout)
    }


def topic_status(
    conn: psycopg.Connection,
    consumer: Consumer,
    spec: TopicSpec,
    topic: str,
    version: int,
    timeout: float = 10.0,
    marks: dict[int, source.Watermarks] | None = None,
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
    if not conn.autocommit:
        conn.commit()
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
