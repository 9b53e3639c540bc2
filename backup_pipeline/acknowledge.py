"""A person has reviewed quarantined records or lost offsets: record it, delete nothing.

Quarantine and retention gaps are alarms. An alarm that can never stop is noise, so checks
judge only what is not acknowledged yet; the rows themselves stay (raw records can still
be restored, gaps stay on record), with who acknowledged them, when and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import psycopg
from psycopg import sql

from backup_pipeline import db
from backup_pipeline.errors import BackupError

log = logging.getLogger(__name__)

What = Literal["quarantine", "gaps"]
_TABLES: dict[str, str] = {"quarantine": "backup_quarantine", "gaps": "backup_gaps"}


@dataclass(frozen=True)
class Unacknowledged:
    quarantined: int  # quarantined records nobody acknowledged yet
    lost_offsets: int  # offsets lost to retention (kind 'retention') not acknowledged yet
    oldest_quarantined_at: datetime | None
    oldest_gap_detected_at: datetime | None

    @property
    def any(self) -> bool:
        return bool(self.quarantined or self.lost_offsets)

    def describe(self) -> str:
        text = (
            f"unacknowledged: {self.quarantined} quarantined{_oldest(self.oldest_quarantined_at)}"
        )
        return text + f", {self.lost_offsets} lost offsets{_oldest(self.oldest_gap_detected_at)}"


def _oldest(when: datetime | None) -> str:
    return "" if when is None else f" (oldest {when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"


@dataclass(frozen=True)
class Acknowledged:
    """What one call acknowledged: the rows' ids (ascending) and what they cover."""

    ids: list[int]
    records: int  # quarantined records, or lost offsets for gaps

    @property
    def count(self) -> int:
        return len(self.ids)


def acknowledge_rows(
    conn: psycopg.Connection,
    table: str,
    topic: str,
    version: int,
    what: What,
    by: str,
    note: str,
    up_to_id: int | None = None,
) -> Acknowledged:
    """Acknowledge the not yet acknowledged rows of ``topic`` and ``version`` (only those
    with ``id <= up_to_id`` if given, so a row that arrived after the review stays open).
    Already acknowledged rows keep their first acknowledgement."""
    if what not in _TABLES:
        raise BackupError(f"cannot acknowledge {what!r}; expected quarantine or gaps")
    if not by.strip() or not note.strip():
        raise BackupError("an acknowledgement needs who (--by) and why (--note)")
    covers = sql.SQL("1" if what == "quarantine" else "last_lost_offset - first_lost_offset + 1")
    rows = conn.execute(
        sql.SQL(
            """
            UPDATE {table}
            SET acknowledged_at = now(), acknowledged_by = %(by)s, acknowledged_note = %(note)s
            WHERE kafka_topic = %(topic)s AND version = %(version)s
              AND acknowledged_at IS NULL
              AND (%(up_to)s::bigint IS NULL OR id <= %(up_to)s::bigint)
            RETURNING id, {covers}
            """
        ).format(table=sql.Identifier(_TABLES[what]), covers=covers),
        {"by": by, "note": note, "topic": topic, "version": version, "up_to": up_to_id},
    ).fetchall()
    db.end_read(conn)
    done = Acknowledged(sorted(int(r[0]) for r in rows), sum(int(r[1]) for r in rows))
    log.info(
        "%s (topic %s, version %d): %d %s rows acknowledged by %s: %s",
        table,
        topic,
        version,
        done.count,
        what,
        by,
        note,
    )
    return done


def unacknowledged(conn: psycopg.Connection, topic: str, version: int) -> Unacknowledged:
    row = conn.execute(
        """
        SELECT
            (SELECT count(*) FROM backup_quarantine
             WHERE kafka_topic = %(t)s AND version = %(v)s AND acknowledged_at IS NULL),
            (SELECT coalesce(sum(last_lost_offset - first_lost_offset + 1), 0)
             FROM backup_gaps
             WHERE kafka_topic = %(t)s AND version = %(v)s AND kind = 'retention'
               AND acknowledged_at IS NULL),
            (SELECT min(quarantined_at) FROM backup_quarantine
             WHERE kafka_topic = %(t)s AND version = %(v)s AND acknowledged_at IS NULL),
            (SELECT min(detected_at) FROM backup_gaps
             WHERE kafka_topic = %(t)s AND version = %(v)s AND kind = 'retention'
               AND acknowledged_at IS NULL)
        """,
        {"t": topic, "v": version},
    ).fetchone()
    db.end_read(conn)
    assert row is not None
    return Unacknowledged(int(row[0]), int(row[1]), row[2], row[3])
