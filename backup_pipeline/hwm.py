"""The high-water-mark table: the only record of progress, and the writer lock.

``bekreftelse_hwm`` holds, per (version, topic, partition), the offset up to which every
offset is accounted for (stored, quarantined, known lost, or carrying no record);
-1 means nothing yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import psycopg

from backup_pipeline.errors import ConcurrentWriterError

HWM_TABLE = "bekreftelse_hwm"
NOTHING_YET = -1


def ensure_rows(
    conn: psycopg.Connection, version: int, topic: str, partitions: Iterable[int]
) -> None:
    """Give every partition a HWM row (-1 when new); existing rows are left alone."""
    parts = sorted(partitions)
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO bekreftelse_hwm (version, kafka_partition, kafka_offset, kafka_topic)
            SELECT %s, p, %s, %s FROM unnest(%s::int[]) AS p
            ON CONFLICT (version, kafka_partition, kafka_topic) DO NOTHING
            """,
            (version, NOTHING_YET, topic, parts),
        )


def read(conn: psycopg.Connection, version: int, topic: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT kafka_partition, kafka_offset FROM bekreftelse_hwm "
        "WHERE version = %s AND kafka_topic = %s",
        (version, topic),
    ).fetchall()
    if not conn.autocommit:
        conn.commit()
    return {partition: offset for partition, offset in rows}


def advance(
    conn: psycopg.Connection, version: int, topic: str, moves: dict[int, tuple[int, int]]
) -> None:
    """Move HWMs from old to new inside the caller's transaction (compare-and-set).

    The writer lock already keeps passes apart; the compare-and-set makes a second writer
    that somehow got past it fail loudly instead of writing a duplicate.
    """
    if not moves:
        return
    parts = list(moves)
    olds = [moves[p][0] for p in parts]
    news = [moves[p][1] for p in parts]
    cur = conn.execute(
        """
        UPDATE bekreftelse_hwm h SET kafka_offset = m.new
        FROM unnest(%s::int[], %s::bigint[], %s::bigint[]) AS m(partition, old, new)
        WHERE h.version = %s AND h.kafka_topic = %s
          AND h.kafka_partition = m.partition AND h.kafka_offset = m.old
        """,
        (parts, olds, news, version, topic),
    )
    if cur.rowcount != len(moves):
        raise ConcurrentWriterError(
            f"HWM of topic {topic} version {version} changed under this pass "
            "(another writer?); the batch was rolled back"
        )


class WriterLock:
    """A session advisory lock per (topic, version), held for the whole pass.

    Session-level, so it spans the pass's many batch transactions, and PostgreSQL drops it
    by itself when the holder's connection dies (a killed process never blocks a topic).
    Other versions of the same topic use other keys and run freely beside it.
    """

    def __init__(self, conn: psycopg.Connection, topic: str, version: int) -> None:
        self._conn = conn
        self._topic = topic
        self._version = version
        self.held = False

    def acquire(self, wait_seconds: float = 0.0) -> bool:
        deadline = time.monotonic() + wait_seconds
        while True:
            got = self._conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s), %s)",
                (f"backup_pipeline:{self._topic}", self._version),
            ).fetchone()
            if not self._conn.autocommit:
                self._conn.commit()
            if got and got[0]:
                self.held = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def release(self) -> None:
        if self.held and not self._conn.closed:
            self._conn.execute(
                "SELECT pg_advisory_unlock(hashtext(%s), %s)",
                (f"backup_pipeline:{self._topic}", self._version),
            )
            if not self._conn.autocommit:
                self._conn.commit()
        self.held = False
