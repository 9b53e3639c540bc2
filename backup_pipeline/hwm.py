"""The high-water-mark table: the only record of progress, and the writer lock.

``bekreftelse_hwm`` holds, per (version, topic, partition), the offset up to which every
offset is accounted for (stored, quarantined, known lost, or carrying no record);
-1 means nothing yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import psycopg

from backup_pipeline import db
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
    db.end_read(conn)
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

    A writer that waits for the lock holds a second, *handoff* key meanwhile. A long-running
    follow pass checks that key between passes and hands the topic over (ends) when someone
    holds it, so a manual run, a CLI pass or the next follow run takes over within about one
    pass instead of waiting for the follower's whole run.
    """

    def __init__(self, conn: psycopg.Connection, topic: str, version: int) -> None:
        self._conn = conn
        self._topic = topic
        self._version = version
        self.held = False

    def _call(self, function: str, key: str) -> bool:
        row = self._conn.execute(
            f"SELECT {function}(hashtext(%s), %s)",
            (key, self._version),
        ).fetchone()
        db.end_read(self._conn)
        return bool(row and row[0])

    @property
    def _key(self) -> str:
        return f"backup_pipeline:{self._topic}"

    @property
    def _handoff_key(self) -> str:
        return f"backup_pipeline:handoff:{self._topic}"

    def acquire(self, wait_seconds: float = 0.0) -> bool:
        if self._call("pg_try_advisory_lock", self._key):
            self.held = True
            return True
        if wait_seconds <= 0:
            return False
        deadline = time.monotonic() + wait_seconds
        asking = False
        try:
            while time.monotonic() < deadline:
                # Ask until it sticks: the holder's handoff_requested() takes the handoff
                # key for a moment at every poll, and one try that lands in that moment
                # would leave the holder unaware of us for our whole wait.
                asking = asking or self._call("pg_try_advisory_lock", self._handoff_key)
                time.sleep(0.2)
                if self._call("pg_try_advisory_lock", self._key):
                    self.held = True
                    return True
            return False
        finally:
            if asking and not self._conn.closed:
                self._call("pg_advisory_unlock", self._handoff_key)

    def handoff_requested(self) -> bool:
        """Whether another writer is waiting for this lock (it holds the handoff key)."""
        if self._call("pg_try_advisory_lock", self._handoff_key):
            self._call("pg_advisory_unlock", self._handoff_key)
            return False
        return True

    def release(self) -> None:
        if self.held and not self._conn.closed:
            self._call("pg_advisory_unlock", self._key)
        self.held = False
