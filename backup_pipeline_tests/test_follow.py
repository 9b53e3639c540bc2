"""Follow runs against real Kafka and PostgreSQL: records that arrive while a run follows are
stored within seconds, and another writer takes the topic over between passes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
from confluent_kafka import Producer

from backup_pipeline.backup import pass_, run
from backup_pipeline.backup.report import PassReport
from backup_pipeline.settings import Settings
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_db import stored_offsets
from backup_pipeline_tests.fix_kafka import good_records, produce
from dev.harness.db import hwms
from dev.harness.waits import bounded, wait_until

SPEC = spec_for_table("bekreftelser")


def wait_for(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    wait_until(condition, seconds, "the follow run's progress", interval=0.1)


class Follower(threading.Thread):
    def __init__(self, settings: Settings, seconds: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.seconds = seconds
        self.stop = stop
        self.outcome = pass_.FollowOutcome()
        self.reports: list[PassReport] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for report in run.follow_topic(
                self.settings,
                SPEC,
                self.outcome,
                version=1,
                seconds=self.seconds,
                should_stop=self.stop.is_set,
            ):
                self.reports.append(report)
        except BaseException as exc:
            self.error = exc


def count(db: psycopg.Connection) -> int:
    return len(stored_offsets(db, SPEC.table))


def test_a_follow_run_stores_records_that_arrive_while_it_runs_exactly_once(
    settings: Settings, producer: Producer, topic_names: dict[str, str], db: psycopg.Connection
) -> None:
    topic = topic_names[SPEC.table]
    produce(producer, topic, good_records(SPEC, 10))
    stop = threading.Event()
    follower = Follower(settings, 300, stop)
    follower.start()
    wait_for(lambda: count(db) == 10)
    for round_ in range(3):
        produce(producer, topic, good_records(SPEC, 7, seed=10 + round_))
        wait_for(lambda r=round_: count(db) == 10 + 7 * (r + 1))  # type: ignore[misc]
    stop.set()
    follower.join(bounded(60))
    assert not follower.is_alive() and follower.error is None
    assert follower.outcome.ended_because == "it was asked to stop"
    assert follower.outcome.passes >= 4
    offsets = stored_offsets(db, SPEC.table)
    assert len(offsets) == len(set(offsets)) == 31
    assert sum(h + 1 for h in hwms(db, topic).values()) == 31


def test_a_waiting_writer_takes_the_topic_over_from_a_follow_run(
    settings: Settings, producer: Producer, topic_names: dict[str, str], db: psycopg.Connection
) -> None:
    topic = topic_names[SPEC.table]
    produce(producer, topic, good_records(SPEC, 5))
    follower = Follower(settings, 300, threading.Event())
    follower.start()
    wait_for(lambda: count(db) == 5)
    produce(producer, topic, good_records(SPEC, 4, seed=3))
    started = time.monotonic()
    # A CLI pass (or the Materialize button's run) waits for the lock: the follower, which
    # holds it, sees the request between passes and ends.
    report = run.backup_topic(settings, SPEC, lock_wait_seconds=60)
    assert report.skipped is None
    follower.join(bounded(60))
    assert not follower.is_alive() and follower.error is None
    assert follower.outcome.ended_because == "another writer asked for the topic"
    assert time.monotonic() - started < 30
    assert count(db) == 9 and report.lag == 0


def test_a_follow_run_ends_when_its_time_is_up(
    settings: Settings, producer: Producer, topic_names: dict[str, str], db: psycopg.Connection
) -> None:
    produce(producer, topic_names[SPEC.table], good_records(SPEC, 3))
    outcome = pass_.FollowOutcome()
    reports = list(run.follow_topic(settings, SPEC, outcome, version=1, seconds=2))
    assert outcome.ended_because == "its time is up"
    assert sum(r.rows for r in reports) == 3 and count(db) == 3
