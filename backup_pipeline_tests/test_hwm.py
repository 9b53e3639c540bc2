"""The writer lock and its handoff against real PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from backup_pipeline import hwm
from dev.harness.waits import bounded, wait_until

TOPIC = "t.writer-lock"
VERSION = 1


class Watched:
    """A real connection that tells when a writer lock's try on the handoff key failed."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self.handoff_key_was_busy = threading.Event()

    def execute(self, query: Any, params: Any = None) -> Any:
        cursor = self._conn.execute(query, params)
        if (
            "pg_try_advisory_lock" in str(query)
            and params
            and params[0].startswith("backup_pipeline:handoff:")
        ):
            row = cursor.fetchone()
            if row is not None and not row[0]:
                self.handoff_key_was_busy.set()
            # Hand the caller the row it would have fetched.
            return _Rows(row)
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _Rows:
    def __init__(self, row: Any) -> None:
        self._row = row

    def fetchone(self) -> Any:
        return self._row


def test_a_successor_that_arrives_while_the_handoff_key_is_busy_still_signals(database_url):
    # The running writer's handoff_requested() poll holds the handoff key for a moment; a
    # successor arriving in that moment must keep asking, not wait out its whole wait.
    wait_seconds = bounded(120)
    with (
        psycopg.connect(database_url, autocommit=True) as running_conn,
        psycopg.connect(database_url, autocommit=True) as poll_conn,
        psycopg.connect(database_url, autocommit=True) as successor_conn,
    ):
        running = hwm.WriterLock(running_conn, TOPIC, VERSION)
        assert running.acquire()
        # The window, held open deliberately: the handoff key taken as the poll takes it.
        poll_conn.execute(
            "SELECT pg_advisory_lock(hashtext(%s), %s)",
            (f"backup_pipeline:handoff:{TOPIC}", VERSION),
        )
        watched = Watched(successor_conn)
        successor = hwm.WriterLock(watched, TOPIC, VERSION)  # type: ignore[arg-type]
        outcome: list[bool] = []
        started = time.monotonic()
        thread = threading.Thread(target=lambda: outcome.append(successor.acquire(wait_seconds)))
        thread.start()
        try:
            assert watched.handoff_key_was_busy.wait(bounded(30)), "the successor never asked"
            poll_conn.execute(
                "SELECT pg_advisory_unlock(hashtext(%s), %s)",
                (f"backup_pipeline:handoff:{TOPIC}", VERSION),
            )
            # The running writer sees the request at its next poll and hands over.
            wait_until(running.handoff_requested, 30, "the successor to ask for a handover")
            running.release()
            thread.join(bounded(30))
        finally:
            running.release()
            thread.join(wait_seconds)
        assert outcome == [True]
        assert time.monotonic() - started < wait_seconds / 2
        assert successor.held
        successor.release()
