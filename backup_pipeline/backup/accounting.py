"""The "offsets accounted for" check, computed per pass over the range it covered.

Every offset between a partition's HWM before and after a pass must be a stored row, a
quarantined record, a recorded lost offset, or an offset the reader saw carry no record
(transaction marker, aborted or compacted record). Counting reads only that range through
the primary keys, never the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from backup_pipeline import db
from backup_pipeline.backup.report import PassReport


@dataclass(frozen=True)
class Discrepancy:
    partition: int
    first_offset: int
    last_offset: int
    expected: int
    stored: int
    quarantined: int
    lost: int
    no_record: int

    def describe(self) -> str:
        return (
            f"partition {self.partition} offsets {self.first_offset}..{self.last_offset}: "
            f"{self.expected} offsets, but {self.stored} rows + {self.quarantined} "
            f"quarantined + {self.lost} lost + {self.no_record} without record"
        )


def check_pass(conn: psycopg.Connection, report: PassReport) -> list[Discrepancy]:
    problems = []
    for part in report.partitions:
        first, last = part.hwm_before + 1, part.hwm_after
        if last < first:
            continue
        stored = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {} WHERE version = %s AND kafka_partition = %s "
                "AND kafka_offset BETWEEN %s AND %s"
            ).format(sql.Identifier(report.table)),
            (report.version, part.partition, first, last),
        ).fetchone()
        quarantined = conn.execute(
            "SELECT count(*) FROM backup_quarantine WHERE version = %s AND kafka_topic = %s "
            "AND kafka_partition = %s AND kafka_offset BETWEEN %s AND %s",
            (report.version, report.topic, part.partition, first, last),
        ).fetchone()
        n_stored = stored[0] if stored else 0
        n_quarantined = quarantined[0] if quarantined else 0
        expected = last - first + 1
        if n_stored + n_quarantined + part.lost + part.no_record != expected:
            problems.append(
                Discrepancy(
                    part.partition,
                    first,
                    last,
                    expected,
                    n_stored,
                    n_quarantined,
                    part.lost,
                    part.no_record,
                )
            )
    db.end_read(conn)
    return problems
