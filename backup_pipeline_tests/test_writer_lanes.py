"""Batches written on several connections still commit in order, against real PostgreSQL."""

from __future__ import annotations

import functools
import itertools
import threading
import time
from concurrent.futures import Future

import psycopg
import pytest

from backup_pipeline import hwm
from backup_pipeline.backup import writer
from backup_pipeline.backup.records import KafkaMessage, MappedBatch, columns, map_messages
from backup_pipeline.backup.writer_lanes import WriterLanes
from backup_pipeline.errors import BackupError
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fakes import FakeMessage
from backup_pipeline_tests.fix_db import stored_offsets
from backup_pipeline_tests.fix_kafka import key
from dev.harness.db import hwms
from dev.harness.waits import scaled, wait_until

BEKREFTELSER = spec_for_table("bekreftelser")
TOPIC = "lanes.bekreftelser"


def _job(conn: psycopg.Connection, offsets: range, old_hwm: int) -> functools.partial[MappedBatch]:
    """The pass's write of one batch of records at ``offsets`` of partition 0."""
    messages: list[KafkaMessage] = [
        FakeMessage(key(o), b"value %d" % o, offset_=o) for o in offsets
    ]
    mapped = map_messages(messages, BEKREFTELSER.value_format, 1, TOPIC)
    stream = writer.CopyEncoder(conn, columns(BEKREFTELSER.value_format)).encode(mapped.rows)
    mapped.rows = []
    return functools.partial(
        writer.write_batch,
        spec=BEKREFTELSER,
        topic=TOPIC,
        version=1,
        messages=messages,
        mapped=mapped,
        hwm_moves={0: (old_hwm, offsets[-1])},
        rows_stream=stream,
    )


@pytest.fixture
def connections(database_url):
    conns = [psycopg.connect(database_url, autocommit=True) for _ in range(2)]
    hwm.ensure_rows(conns[0], 1, TOPIC, [0])
    yield conns
    for conn in conns:
        conn.close()


def copied_and_waiting(db: psycopg.Connection, writer_conn: psycopg.Connection) -> bool:
    """The writer's session holds the table's lock from its COPY and sits in its open
    transaction: its rows are copied and it waits for the batch before it."""
    row = db.execute(
        "SELECT a.state = 'idle in transaction' AND EXISTS ("
        "  SELECT FROM pg_locks l WHERE l.pid = a.pid AND l.granted"
        "  AND l.relation = 'bekreftelser'::regclass)"
        " FROM pg_stat_activity a WHERE a.pid = %s",
        (writer_conn.info.backend_pid,),
    ).fetchone()
    return bool(row and row[0])


def test_a_batch_commits_only_after_the_batch_before_it(connections, db):
    # The first batch starts only once the second, on the other connection, has copied
    # its rows and waits. Had it moved the HWM then, its compare-and-set (9 -> 19) would
    # have failed against the HWM still at -1.
    first, second = _job(connections[0], range(0, 10), -1), _job(connections[1], range(10, 20), 9)

    def slow_first(conn, after):
        wait_until(lambda: copied_and_waiting(db, connections[1]), 10, "the second batch's COPY")
        return first(conn, after)

    settled: list[str] = []
    with WriterLanes[str](connections, lambda tag, _: settled.append(tag)) as lanes:
        lanes.submit(slow_first, "first")
        lanes.submit(second, "second")
        lanes.finish()
    assert settled == ["first", "second"]
    assert [o for _, o in stored_offsets(db, "bekreftelser")] == list(range(20))
    assert hwms(db, TOPIC) == {0: 19}


def test_a_batch_after_a_failed_one_rolls_back(connections, db):
    failed: Future[MappedBatch] = Future()
    failed.set_exception(psycopg.OperationalError("connection lost"))
    job = _job(connections[1], range(10, 20), 9)
    with pytest.raises(BackupError, match="previous batch was not stored"):
        job(connections[1], failed)
    assert stored_offsets(db, "bekreftelser") == []
    assert hwms(db, TOPIC) == {0: -1}


def test_lanes_report_the_first_failure_and_only_the_batches_that_committed(connections, db):
    # The batch after the broken one would pass the HWM compare-and-set on its own
    # (9 -> 19 with the HWM at 9): only the wait for its predecessor stops it.
    def broken(conn, after):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    settled: list[str] = []
    with (
        pytest.raises(psycopg.OperationalError, match="server closed"),
        WriterLanes[str](connections, lambda tag, _: settled.append(tag)) as lanes,
    ):
        lanes.submit(_job(connections[0], range(0, 10), -1), "first")
        lanes.submit(broken, "broken")
        lanes.submit(_job(connections[0], range(10, 20), 9), "after broken")
        lanes.finish()
    assert settled == ["first"]
    assert [o for _, o in stored_offsets(db, "bekreftelser")] == list(range(10))
    assert hwms(db, TOPIC) == {0: 9}


def test_a_batch_whose_predecessor_is_blocked_gives_up_its_locks_and_writes_later(
    connections, db, monkeypatch
):
    # PostgreSQL cannot see one of our threads waiting for another, so a batch must not
    # sit on its locks while the batch before it is blocked (maybe by a session that
    # waits for exactly those locks): it rolls back and writes again afterwards.
    monkeypatch.setattr(writer, "PREDECESSOR_PATIENCE_SECONDS", 0.2)
    # The batch gives up once its patience ran out: it rolls back, then waits (no timeout)
    # for its predecessor outside any transaction.
    gave_up = threading.Event()
    wait_for = writer._wait_for

    def watched_wait_for(previous, timeout=None):
        if timeout is None and previous is not None and not previous.done():
            gave_up.set()
        return wait_for(previous, timeout)

    monkeypatch.setattr(writer, "_wait_for", watched_wait_for)
    predecessor: Future[MappedBatch] = Future()
    second = _job(connections[1], range(10, 20), 9)
    result: list[MappedBatch] = []
    thread = threading.Thread(
        target=lambda: result.append(second(connections[1], predecessor)), daemon=True
    )
    thread.start()
    try:
        assert gave_up.wait(scaled(10)), "the second batch never gave up waiting in its transaction"
        # The second batch holds no lock on the table now: a strong lock is granted at once.
        with db.transaction():
            db.execute(f"SET LOCAL lock_timeout = '{scaled(1):g}s'")
            db.execute("LOCK TABLE bekreftelser IN ACCESS EXCLUSIVE MODE")
        assert thread.is_alive()
        # The predecessor commits (here by hand), then the second batch goes in.
        _job(connections[0], range(0, 10), -1)(connections[0], None)
        predecessor.set_result(MappedBatch())
    finally:
        if not predecessor.done():  # never leave the thread waiting when the test fails
            predecessor.set_exception(RuntimeError("test failed"))
        thread.join(scaled(10))
    assert result and result[0].per_partition == {0: [10, 0, 0]}
    assert [o for _, o in stored_offsets(db, "bekreftelser")] == list(range(20))
    assert hwms(db, TOPIC) == {0: 19}


def test_lanes_run_two_batches_at_once_and_settle_them_in_order():
    both_running = threading.Barrier(2, timeout=scaled(5))  # fails unless two lanes overlap
    calls = itertools.count()
    running = 0
    most = 0
    guard = threading.Lock()

    def job(conn, after):
        nonlocal running, most
        number = next(calls)
        with guard:
            running += 1
            most = max(most, running)
        if number < 2:
            both_running.wait()
        else:
            time.sleep(0.01 * (number % 3))  # later batches finish out of order
        with guard:
            running -= 1
        return MappedBatch()

    settled: list[int] = []
    with WriterLanes[int]([object(), object()], lambda tag, _: settled.append(tag)) as lanes:  # type: ignore[list-item]
        for number in range(10):
            lanes.submit(job, number)
        lanes.finish()
    assert settled == list(range(10))
    assert most == 2
