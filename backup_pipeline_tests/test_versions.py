"""The version lifecycle in backup_versions against real Kafka and PostgreSQL: a new target is
re-ingested, then served, the old one retired; views and writers follow the serving one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka import Consumer

from backup_pipeline import versions
from backup_pipeline.backup.run import backup_topic
from backup_pipeline.errors import BackupError, KafkaUnavailableError
from backup_pipeline.kafka import client
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline.versions import VersionLifecycle, VersionState
from backup_pipeline_tests.fix_db import stored_offsets
from backup_pipeline_tests.fix_kafka import good_records, produce
from dev.harness.waits import bounded, scaled

BEKREFTELSER = spec_for_table("bekreftelser")
SERVING, REINGESTING, RETIRED = (
    VersionLifecycle.SERVING,
    VersionLifecycle.REINGESTING,
    VersionLifecycle.RETIRED,
)


@pytest.fixture
def consumer(settings: Settings) -> Iterator[Consumer]:
    consumer = client.open_consumer(settings)
    yield consumer
    consumer.close()


def snapshot(consumer: Consumer, topic: str) -> dict[int, client.Watermarks]:
    # A topic created a moment ago may not have elected its partition leaders yet.
    deadline = time.monotonic() + scaled(30)
    while True:
        try:
            return {
                p: client.watermarks(consumer, topic, p, 10)
                for p in client.partitions(consumer, topic, 10)
            }
        except KafkaUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def reconcile(
    conn: psycopg.Connection,
    consumer: Consumer,
    topic: str,
    target: int | None,
    max_lag: int = 0,
) -> VersionState:
    return versions.reconcile(
        conn, BEKREFTELSER, topic, target, snapshot(consumer, topic), caught_up_max_lag=max_lag
    )


def states(conn: psycopg.Connection, table: str = "bekreftelser") -> dict[int, VersionLifecycle]:
    return {v.version: v.state for v in versions.recorded_versions(conn, table)}


def test_a_fresh_database_serves_version_1(settings, db, consumer):
    topic = settings.topic(BEKREFTELSER)
    state = reconcile(db, consumer, topic, None)
    assert (state.target, state.serving, state.reingesting) == (1, 1, False)
    assert states(db) == {1: SERVING}
    assert versions.serving_version(db, "bekreftelser") == 1
    recorded = versions.recorded_versions(db, "bekreftelser")
    assert recorded[0].kafka_topic == topic and recorded[0].table == "bekreftelser"
    assert state.summary() == "versions: 1 serving"


def test_a_new_target_is_reingested_then_serves_and_the_old_version_is_retired(
    settings, db, consumer, producer
):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 30))
    assert backup_topic(settings, BEKREFTELSER).rows == 30
    old_rows = stored_offsets(db, "bekreftelser", 1)

    state = reconcile(db, consumer, topic, 2)
    assert states(db) == {1: SERVING, 2: REINGESTING}
    assert (state.target, state.serving, state.reingesting) == (2, 1, True)
    assert (state.records_done, state.records_total, state.target_lag) == (0, 30, 30)
    assert state.serving_lag == 0
    assert state.summary() == "versions: 1 serving, 2 re-ingesting 0% (0 of 30 records)"

    # Part of it: still re-ingesting, progress moves, version 1 keeps serving.
    assert backup_topic(settings, BEKREFTELSER, version=2, max_records=12).rows == 12
    state = reconcile(db, consumer, topic, 2)
    assert states(db) == {1: SERVING, 2: REINGESTING}
    assert state.records_done == 12 and state.target_lag == 18
    assert "2 re-ingesting 40% (12 of 30 records)" in state.summary()

    # New records meanwhile: the serving version is still backed up by default.
    produce(producer, topic, good_records(BEKREFTELSER, 3, seed=2))
    assert backup_topic(settings, BEKREFTELSER).rows == 3
    assert backup_topic(settings, BEKREFTELSER, version=2).rows == 21
    state = reconcile(db, consumer, topic, 2)
    assert (state.target, state.serving, state.reingesting) == (2, 2, False)
    assert states(db) == {1: RETIRED, 2: SERVING}
    assert state.summary() == "versions: 1 retired, 2 serving"
    # Nothing of the old version was touched.
    assert set(old_rows) <= set(stored_offsets(db, "bekreftelser", 1))
    assert stored_offsets(db, "bekreftelser", 2) == stored_offsets(db, "bekreftelser", 1)


def test_reconcile_is_idempotent(settings, db, consumer, producer):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 5))
    backup_topic(settings, BEKREFTELSER)
    first = reconcile(db, consumer, topic, 2)
    since = {v.version: v.state_since for v in versions.recorded_versions(db, "bekreftelser")}
    for _ in range(3):
        assert reconcile(db, consumer, topic, 2) == first
    assert reconcile(db, consumer, topic, None) == first  # None keeps the recorded target
    after = {v.version: v.state_since for v in versions.recorded_versions(db, "bekreftelser")}
    assert after == since


def test_the_switch_waits_for_the_lag_to_be_within_the_limit(settings, db, consumer, producer):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 30))
    backup_topic(settings, BEKREFTELSER)
    reconcile(db, consumer, topic, 2)
    backup_topic(settings, BEKREFTELSER, version=2, max_records=25)
    assert reconcile(db, consumer, topic, 2, max_lag=4).serving == 1
    assert reconcile(db, consumer, topic, 2, max_lag=5).serving == 2
    assert states(db) == {1: RETIRED, 2: SERVING}


def test_a_target_set_back_to_the_serving_version_abandons_the_reingestion(
    settings, db, consumer, producer
):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 5))
    backup_topic(settings, BEKREFTELSER)
    reconcile(db, consumer, topic, 2)
    state = reconcile(db, consumer, topic, 1)
    assert (state.target, state.serving, state.reingesting) == (1, 1, False)
    assert states(db) == {1: SERVING, 2: RETIRED}
    # And a third target while another is re-ingesting replaces it.
    reconcile(db, consumer, topic, 3)
    reconcile(db, consumer, topic, 4)
    assert states(db) == {1: SERVING, 2: RETIRED, 3: RETIRED, 4: REINGESTING}


def test_a_retired_target_is_refused_naming_the_serving_version(settings, db, consumer, producer):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 5))
    backup_topic(settings, BEKREFTELSER)
    reconcile(db, consumer, topic, 2)
    backup_topic(settings, BEKREFTELSER, version=2)
    assert reconcile(db, consumer, topic, 2).serving == 2
    with pytest.raises(BackupError, match="version 1 of bekreftelser is retired \\(serving: 2\\)"):
        reconcile(db, consumer, topic, 1)
    assert states(db) == {1: RETIRED, 2: SERVING}


def test_concurrent_reconciles_agree_on_one_serving_version(
    settings, database_url, db, consumer, producer
):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 20))
    backup_topic(settings, BEKREFTELSER)
    backup_topic(settings, BEKREFTELSER, version=2)  # caught up: the first call promotes it
    marks = snapshot(consumer, topic)
    barrier = threading.Barrier(6)
    results: list[VersionState] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                barrier.wait(timeout=bounded(30))
                results.append(
                    versions.reconcile(conn, BEKREFTELSER, topic, 2, marks, caught_up_max_lag=0)
                )
        except BaseException as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {(r.target, r.serving) for r in results} == {(2, 2)}
    assert states(db) == {1: RETIRED, 2: SERVING}


def test_concurrent_first_reconciles_on_a_fresh_database_record_one_version(
    settings, database_url, db, consumer
):
    topic = settings.topic(BEKREFTELSER)
    marks = snapshot(consumer, topic)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def call(target: int | None) -> None:
        try:
            with psycopg.connect(database_url) as conn:  # not autocommit: a caller's choice
                barrier.wait(timeout=bounded(30))
                versions.reconcile(conn, BEKREFTELSER, topic, target, marks, caught_up_max_lag=0)
                conn.commit()
        except BaseException as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(t,)) for t in (None, 1, None, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert states(db) == {1: SERVING}


def test_resolve_write_version_follows_the_serving_version(settings, db, consumer, producer):
    topic = settings.topic(BEKREFTELSER)
    # Nothing recorded: the seed's version.
    assert versions.resolve_write_version(db, "bekreftelser", None, allow_retired=False) == 1
    produce(producer, topic, good_records(BEKREFTELSER, 5))
    backup_topic(settings, BEKREFTELSER)
    reconcile(db, consumer, topic, 2)
    backup_topic(settings, BEKREFTELSER, version=2)
    reconcile(db, consumer, topic, 2)
    assert versions.resolve_write_version(db, "bekreftelser", None, allow_retired=False) == 2
    assert versions.resolve_write_version(db, "bekreftelser", 7, allow_retired=False) == 7
    with pytest.raises(versions.RetiredVersionError) as raised:
        versions.resolve_write_version(db, "bekreftelser", 1, allow_retired=False)
    message = str(raised.value)
    assert "serving: 2" in message and "--allow-retired" in message and "\n" not in message
    assert versions.resolve_write_version(db, "bekreftelser", 1, allow_retired=True) == 1
    assert versions.resolve_read_version(db, "bekreftelser", None) == 2
    assert versions.resolve_read_version(db, "bekreftelser", 1) == 1


def test_a_pass_without_a_version_writes_the_serving_version_not_a_retired_one(
    settings, db, consumer, producer
):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 10))
    backup_topic(settings, BEKREFTELSER)
    reconcile(db, consumer, topic, 2)
    backup_topic(settings, BEKREFTELSER, version=2)
    reconcile(db, consumer, topic, 2)
    produce(producer, topic, good_records(BEKREFTELSER, 4, seed=3))

    report = backup_topic(settings, BEKREFTELSER)  # BACKUP_VERSION unset
    assert (report.version, report.rows) == (2, 4)
    assert len(stored_offsets(db, "bekreftelser", 1)) == 10
    with pytest.raises(versions.RetiredVersionError):
        backup_topic(settings, BEKREFTELSER, version=1)
    assert backup_topic(settings, BEKREFTELSER, version=1, allow_retired=True).rows == 4
    assert states(db) == {1: RETIRED, 2: SERVING}  # writing into it did not revive it


def test_a_version_written_for_the_first_time_is_recorded(settings, db, producer):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 3))
    backup_topic(settings, BEKREFTELSER)
    assert states(db) == {1: SERVING}
    backup_topic(settings.model_copy(update={"backup_version": 5}), BEKREFTELSER)
    assert states(db) == {1: SERVING, 5: REINGESTING}


def test_current_views_show_only_the_serving_version(db):
    for spec in TOPICS:
        for version in (1, 2):
            columns = "version, kafka_partition, kafka_offset, record_key, data"
            if spec.table == "bekreftelse_hendelser":
                db.execute(
                    f"INSERT INTO {spec.table} ({columns}, arbeidssoeker_id) "
                    "VALUES (%s, 0, %s, 1, '{}'::jsonb, 1)",
                    (version, version * 10),
                )
            else:
                db.execute(
                    f"INSERT INTO {spec.table} ({columns}) VALUES (%s, 0, %s, 1, 'x')",
                    (version, version * 10),
                )

    def current(table: str) -> list[tuple[int, int]]:
        return [
            (r[0], r[1])
            for r in db.execute(f"SELECT version, kafka_offset FROM {table}_current").fetchall()
        ]

    # Nothing recorded: no version serves, the views are empty rather than mixed.
    assert all(current(spec.table) == [] for spec in TOPICS)
    for spec in TOPICS:
        versions.ensure_recorded(db, spec.table, f"t.{spec.table}", 1)
    assert all(current(spec.table) == [(1, 10)] for spec in TOPICS)
    db.execute(
        "UPDATE backup_versions SET state = CASE version WHEN 1 THEN 'retired' END "
        "WHERE table_name = 'bekreftelser'"
    )
    db.execute(
        "INSERT INTO backup_versions (table_name, version, kafka_topic, state) "
        "VALUES ('bekreftelser', 2, 't', 'serving')"
    )
    assert current("bekreftelser") == [(2, 20)]
    assert current("bekreftelse_hendelser") == [(1, 10)]


def test_at_most_one_serving_version_per_table(db):
    versions.ensure_recorded(db, "bekreftelser", "t", 1)
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            "INSERT INTO backup_versions (table_name, version, kafka_topic, state) "
            "VALUES ('bekreftelser', 2, 't', 'serving')"
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO backup_versions (table_name, version, kafka_topic, state) "
            "VALUES ('bekreftelser', 3, 't', 'current')"
        )


def test_existing_hwms_are_adopted_when_nothing_is_recorded(settings, db, consumer, producer):
    # A database that had versions 1..3 before backup_versions existed (or whose topic was
    # configured differently when it was migrated).
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 6))
    backup_topic(settings, BEKREFTELSER, version=2, max_records=2)
    backup_topic(settings, BEKREFTELSER, version=3)
    db.execute("DELETE FROM backup_versions")
    db.execute(
        "INSERT INTO bekreftelse_hwm (version, kafka_partition, kafka_offset, kafka_topic) "
        "VALUES (1, 0, -1, %s)",
        (topic,),
    )
    state = reconcile(db, consumer, topic, None)
    # Version 3 had caught up: promoted at once; 2 served until then.
    assert states(db) == {1: RETIRED, 2: RETIRED, 3: SERVING}
    assert (state.target, state.serving) == (3, 3)
