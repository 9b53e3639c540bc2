"""Faults production brings, injected into real services: PostgreSQL restarted or crashed
mid-pass, the Kafka broker killed or stopped mid-pass, a lock held by someone else and a
statement timeout (a Dagster run killed with SIGKILL is in test_crash.py). After each, every
offset is in the backup exactly once and the HWMs sit at the end offsets.

These tests stop and start servers, so they run a dev/services instance of their own
(own state dir and ports): the services the other tests share are never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from backup_pipeline import db
from backup_pipeline.backup import pass_
from backup_pipeline.backup.options import PassOptions
from backup_pipeline.backup.report import PassReport
from backup_pipeline.backup.run import backup_topic
from backup_pipeline.errors import BackupError, KafkaUnavailableError
from backup_pipeline.kafka import client
from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.kafka.config import consumer_config
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.topics import TOPICS, TopicSpec, spec_for_table
from dev.harness.db import accounted, hwms
from dev.harness.kafka import end_offsets, produce_many
from dev.harness.services import DevServices
from dev.harness.waits import bounded, scaled, wait_until

BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")

# librdkafka prefetches up to 100k records / 32 MB per partition, so a backlog of a few
# thousand records is read from memory even with the broker gone. A small prefetch makes
# a small topic behave like a big backlog: the pass really needs the broker mid-way.
SMALL_PREFETCH = {"queued.max.messages.kbytes": 256, "queued.min.messages": 100}

# Under pytest-xdist (`make test`) the whole module runs on one worker, so the fault
# services start once and no two tests stop or kill the same servers at the same time.
pytestmark = pytest.mark.xdist_group("fault_services")


# ------------------------------------------------------------------ services ----


@pytest.fixture(scope="module")
def fault_services() -> Iterator[DevServices]:
    # Not under pytest's basetemp: as root, PostgreSQL runs as another user that must
    # traverse the path, and every pytest session resets /tmp/pytest-of-<user> to 0700.
    state = Path(tempfile.mkdtemp(prefix="bp-fault-services-"))
    services = DevServices(state)
    try:
        services.up()
        yield services
    finally:
        try:
            services.down()
        finally:
            shutil.rmtree(state, ignore_errors=True)


@dataclass
class Target:
    """One test's world on the fault services: a migrated database and three topics."""

    services: DevServices
    database_url: str
    topics: dict[str, str]  # table -> topic

    def env(self, **extra: str) -> dict[str, str]:
        env = {"KAFKA_BROKERS": self.services.brokers, "DATABASE_URL": self.database_url}
        for spec in TOPICS:
            env[spec.topic_env_var] = self.topics[spec.table]
        env.update(extra)
        return env

    def settings(self, **extra: str) -> Settings:
        return load_settings(self.env(**extra))

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.database_url, autocommit=True, connect_timeout=10)


@pytest.fixture
def target(fault_services: DevServices) -> Target:
    fault_services.up()  # a test that failed half-way may have left a server down
    suffix = uuid.uuid4().hex[:10]
    topics = {spec.table: f"fault.{spec.table}.{suffix}" for spec in TOPICS}
    create_topics(AdminClient({"bootstrap.servers": fault_services.brokers}), list(topics.values()))
    return Target(fault_services, fault_services.create_database(), topics)


# ------------------------------------------------------------------- helpers ----


def assert_consistent(conn: psycopg.Connection, spec: TopicSpec, topic: str) -> dict[int, int]:
    """No partial batch: what is stored is exactly the offsets up to each HWM."""
    stored = accounted(conn, spec, topic)
    assert len(stored) == len(set(stored)), "an offset is stored twice"
    marks = hwms(conn, topic)
    for partition, mark in marks.items():
        assert [o for p, o in stored if p == partition] == list(range(mark + 1)), partition
    return marks


def assert_exactly_once(target: Target, spec: TopicSpec, produced: int) -> None:
    topic = target.topics[spec.table]
    ends = end_offsets(target.services.brokers, topic)
    assert sum(ends.values()) == produced
    with closing(target.connect()) as conn:
        marks = assert_consistent(conn, spec, topic)
        assert marks == {p: end - 1 for p, end in ends.items()}


def progress(target: Target, topic: str) -> int:
    """Offsets committed so far (sum of HWM+1); 0 while PostgreSQL cannot answer."""
    try:
        with closing(target.connect()) as conn:
            return sum(mark + 1 for mark in hwms(conn, topic).values())
    except psycopg.OperationalError:
        return 0


def cli_pass(target: Target, spec: TopicSpec, **extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, **target.env(**extra)}
    env.pop("BACKUP_PIPELINE_FAILPOINT", None)
    return subprocess.Popen(
        [sys.executable, "-m", "backup_pipeline.cli", "backup", "--table", spec.table],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def engine_pass(
    target: Target, spec: TopicSpec, no_progress_seconds: float = 300.0, **consumer_overrides: Any
) -> PassReport:
    """One pass through the engine's run_pass, with its own consumer configuration."""
    settings = target.settings(BACKUP_BATCH_SIZE="20")
    options = replace(PassOptions.from_settings(settings), no_progress_seconds=no_progress_seconds)
    consumer = Consumer(consumer_config(settings, **consumer_overrides))
    try:
        with closing(db.connect(settings, autocommit=True)) as conn:
            return pass_.run_pass(conn, consumer, spec, target.topics[spec.table], 1, options)
    finally:
        consumer.close()


def in_thread(fn: Callable[[], Any]) -> Future[Any]:
    """Run ``fn`` in a daemon thread (a failed test must not leave pytest waiting on it)."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


# ------------------------------------------------------------- 7: PostgreSQL ----

RECORDS = 30_000


def test_postgres_restarted_mid_pass_the_pass_reconnects_and_stores_every_offset_once(target):
    """A fast shutdown (SIGINT) and restart of PostgreSQL while a pass writes: the pass's
    connection is lost, the engine runs the pass again from the committed HWMs."""
    topic = target.topics[BEKREFTELSER.table]
    produce_many(target.services.brokers, topic, BEKREFTELSER, RECORDS)
    proc = cli_pass(target, BEKREFTELSER, BACKUP_BATCH_SIZE="20")
    wait_until(lambda: progress(target, topic) >= 1000, 60, "the pass to commit batches")
    target.services.signal("postgres", signal.SIGINT)
    restart = target.services.up()
    _out, err = proc.communicate(timeout=bounded(120))

    assert proc.returncode == 0, err
    assert "attempt 1 of 3 failed" in err and "lost the connection" in err, err
    assert "Traceback" not in err
    assert restart < scaled(15), f"PostgreSQL took {restart:.1f}s to come back"
    assert_exactly_once(target, BEKREFTELSER, RECORDS)


def test_postgres_crash_mid_pass_fails_cleanly_and_the_next_pass_completes(target):
    """PostgreSQL killed with SIGKILL (crash recovery on restart) and retries disabled:
    the pass stops with one readable line, what it committed is whole, the next pass
    finishes the job."""
    topic = target.topics[HENDELSER.table]
    produce_many(target.services.brokers, topic, HENDELSER, RECORDS)
    proc = cli_pass(target, HENDELSER, BACKUP_BATCH_SIZE="20", BACKUP_PASS_ATTEMPTS="1")
    wait_until(lambda: progress(target, topic) >= 1000, 60, "the pass to commit batches")
    target.services.signal("postgres", signal.SIGKILL)
    out, err = proc.communicate(timeout=bounded(60))
    target.services.up()

    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: PostgreSQL 127.0.0.1:"), err
    assert "lost the connection during the backup of" in last
    assert "backup:backup" not in err  # no credentials in the message
    with closing(target.connect()) as conn:
        done = sum(m + 1 for m in assert_consistent(conn, HENDELSER, topic).values())
    assert 1000 <= done < RECORDS

    again = cli_pass(target, HENDELSER)
    out, err = again.communicate(timeout=bounded(120))
    assert again.returncode == 0, err
    assert_exactly_once(target, HENDELSER, RECORDS)


# ------------------------------------------------------------------ 8: Kafka ----


def test_kafka_killed_and_restarted_mid_pass_the_pass_waits_and_completes(target):
    """SIGKILL of the broker and a restart (~10 s): the consumer reconnects and the same
    pass reads on to the end offsets it captured."""
    topic = target.topics[BEKREFTELSER.table]
    produce_many(target.services.brokers, topic, BEKREFTELSER, RECORDS)
    started = time.monotonic()
    future = in_thread(lambda: engine_pass(target, BEKREFTELSER, **SMALL_PREFETCH))
    wait_until(lambda: progress(target, topic) >= 1000, 60, "the pass to commit batches")
    target.services.signal("kafka", signal.SIGKILL)
    killed_at = progress(target, topic)
    restart = target.services.up()
    report = future.result(timeout=bounded(120))
    took = time.monotonic() - started

    print(f"the pass took {took:.0f}s, the broker's restart {restart:.0f}s")

    assert killed_at < RECORDS, "the pass ended before the broker was killed"
    # The same pass read on to the end (a pass that gave up would have raised): how long
    # that took is the machine's business, bounded by the wait above.
    assert report.records == RECORDS and report.lag == 0
    assert_exactly_once(target, BEKREFTELSER, RECORDS)


def test_a_slow_broker_restart_within_the_no_progress_limit_the_pass_completes(target):
    """A restart that takes longer than the old fixed 30 s bound (a managed Kafka's rolling
    restart): with the default KAFKA_NO_PROGRESS_SECONDS (300) the pass waits it out and
    completes, exactly once."""
    topic = target.topics[BEKREFTELSER.table]
    produce_many(target.services.brokers, topic, BEKREFTELSER, RECORDS)
    future = in_thread(lambda: engine_pass(target, BEKREFTELSER, **SMALL_PREFETCH))
    wait_until(lambda: progress(target, topic) >= 1000, 60, "the pass to commit batches")
    target.services.signal("kafka", signal.SIGTERM)
    time.sleep(40)  # the fault itself: the broker stays away longer than 30 s
    assert not future.done(), "the pass gave up while the broker was away"
    target.services.up()
    report = future.result(timeout=bounded(180))
    assert report.records == RECORDS and report.lag == 0
    assert_exactly_once(target, BEKREFTELSER, RECORDS)


def test_kafka_down_longer_than_the_idle_bound_fails_the_pass_then_the_next_completes(target):
    """The broker stopped (SIGTERM) and kept down: the pass gives up after its no-progress
    limit (30 s here) with KafkaUnavailableError instead of hanging; after the restart the
    next pass completes."""
    topic = target.topics[BEKREFTELSER.table]
    produce_many(target.services.brokers, topic, BEKREFTELSER, RECORDS)
    future = in_thread(
        lambda: engine_pass(target, BEKREFTELSER, no_progress_seconds=30, **SMALL_PREFETCH)
    )
    wait_until(lambda: progress(target, topic) >= 1000, 60, "the pass to commit batches")
    target.services.signal("kafka", signal.SIGTERM)
    stopped = time.monotonic()
    with pytest.raises(KafkaUnavailableError, match="no progress reading"):
        future.result(timeout=bounded(90))
    gave_up = time.monotonic() - stopped
    assert gave_up < scaled(45), f"the pass needed {gave_up:.0f}s to give up"
    with closing(target.connect()) as conn:
        done = sum(m + 1 for m in assert_consistent(conn, BEKREFTELSER, topic).values())
    assert 1000 <= done < RECORDS

    target.services.up()
    report = backup_topic(target.settings(), BEKREFTELSER)
    assert report.lag == 0 and report.records == RECORDS - done
    assert_exactly_once(target, BEKREFTELSER, RECORDS)


# ------------------------------------------------- 10: locks and timeouts ----


def test_a_table_lock_held_by_someone_else_fails_the_pass_after_the_lock_timeout(target):
    """LOCK TABLE ... ACCESS EXCLUSIVE in another session's open transaction: without a
    bound the pass would wait forever; with BACKUP_LOCK_TIMEOUT_SECONDS it fails with a
    clear error (not retried), and once the lock is gone the next pass completes."""
    topic = target.topics[BEKREFTELSER.table]
    produce_many(target.services.brokers, topic, BEKREFTELSER, RECORDS)
    settings = target.settings(BACKUP_BATCH_SIZE="20", BACKUP_LOCK_TIMEOUT_SECONDS="2")
    future = in_thread(lambda: backup_topic(settings, BEKREFTELSER))
    wait_until(lambda: progress(target, topic) >= 1000, 60, "the pass to commit batches")
    locker = target.connect()
    try:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE bekreftelser IN ACCESS EXCLUSIVE MODE")
        locked = time.monotonic()
        with pytest.raises(BackupError) as failed:
            future.result(timeout=bounded(60))
        waited = time.monotonic() - locked
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    message = str(failed.value)
    assert "refused a statement during the backup of" in message
    assert "lock timeout" in message and "rolled back" in message
    assert waited < scaled(10), f"the pass waited {waited:.1f}s behind the lock"
    with closing(target.connect()) as conn:
        done = sum(m + 1 for m in assert_consistent(conn, BEKREFTELSER, topic).values())
    assert 1000 <= done < RECORDS

    report = backup_topic(target.settings(), BEKREFTELSER)
    assert report.lag == 0 and report.records == RECORDS - done
    assert_exactly_once(target, BEKREFTELSER, RECORDS)


def test_a_statement_timeout_rolls_back_the_whole_batch_and_the_next_pass_completes(target):
    """statement_timeout from DATABASE_URL, and another session holding the HWM rows
    (SELECT ... FOR UPDATE): a batch COPYs its rows, then waits to move the HWM and is
    cancelled. Its rows must vanish with it: rows and HWMs stay consistent."""
    topic = target.topics[HENDELSER.table]
    produce_many(target.services.brokers, topic, HENDELSER, RECORDS)
    timeout_url = target.database_url + "?options=-c%20statement_timeout%3D1500"
    settings = target.settings(DATABASE_URL=timeout_url, BACKUP_BATCH_SIZE="20")
    future = in_thread(lambda: backup_topic(settings, HENDELSER))
    wait_until(lambda: progress(target, topic) >= 1000, 60, "the pass to commit batches")
    locker = target.connect()
    try:
        locker.execute("BEGIN")
        locker.execute("SELECT * FROM bekreftelse_hwm WHERE kafka_topic = %s FOR UPDATE", (topic,))
        with pytest.raises(BackupError) as failed:
            future.result(timeout=bounded(60))
        # While the lock is still held: the cancelled batch left nothing behind.
        with closing(target.connect()) as conn:
            done = sum(m + 1 for m in assert_consistent(conn, HENDELSER, topic).values())
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert "statement timeout" in str(failed.value)
    assert 1000 <= done < RECORDS
    report = backup_topic(target.settings(), HENDELSER)
    assert report.lag == 0 and report.records == RECORDS - done
    assert_exactly_once(target, HENDELSER, RECORDS)


def test_the_pass_bounds_lock_waits_by_default_and_keeps_a_lock_timeout_from_the_url(target):
    seen = {}
    for label, url in (
        ("default", target.database_url),
        ("from_url", target.database_url + "?options=-c%20lock_timeout%3D1500"),
    ):
        settings = target.settings(DATABASE_URL=url)
        consumer = client.open_consumer(settings)
        try:
            with closing(db.connect(settings, autocommit=True)) as conn:
                pass_.run_pass(conn, consumer, BEKREFTELSER, target.topics["bekreftelser"], 1)
                seen[label] = conn.execute("SHOW lock_timeout").fetchall()[0][0]
        finally:
            consumer.close()
    assert seen == {"default": "1min", "from_url": "1500ms"}
