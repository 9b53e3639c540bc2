"""Consumer-group positions: recorded, translated through the offset map, committed, and
the group resumes exactly where it was, against real Kafka and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.cli.restore import restore_command, verify_command
from backup_pipeline.errors import RestoreError
from backup_pipeline.kafka.config import CONSUMER_GROUP_ID
from backup_pipeline.positions import plan as positions
from backup_pipeline.positions.snapshot import GroupFilter, take_snapshot, thin
from backup_pipeline.restore.run import RestoreRequest, restore
from backup_pipeline.selection import restore_time
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_kafka import add_partitions, good_records, read_topic
from dev.harness.kafka import delete_topic, end_offsets
from dev.harness.waits import bounded, wait_until

BEKREFTELSER = spec_for_table("bekreftelser")


def produce_with_holes(brokers: str, topic: str) -> None:
    """p0: 10 good, a quarantined record (null key), 4 good, an aborted transaction (3
    records and its marker), a committed one (2 and a marker), 4 good: offsets 0-25.
    p1: 12 good. p2: 5 good. p3: 7 good."""
    good = iter(good_records(BEKREFTELSER, 60, seed=5))
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})

    def put(partition: int, n: int, with_key: bool = True) -> None:
        for _ in range(n):
            r = next(good)
            producer.produce(
                topic, key=r.key if with_key else None, value=r.value, partition=partition
            )
        assert producer.flush(30) == 0

    put(0, 10)
    put(0, 1, with_key=False)
    put(0, 4)
    txn = Producer({"bootstrap.servers": brokers, "transactional.id": f"pos-{topic}"})
    txn.init_transactions(30)
    for commit, n in ((False, 3), (True, 2)):
        txn.begin_transaction()
        for _ in range(n):
            r = next(good)
            txn.produce(topic, key=r.key, value=r.value, partition=0)
        if commit:
            txn.commit_transaction(30)
        else:
            txn.flush(30)
            txn.abort_transaction(30)
    put(0, 4)
    put(1, 12)
    put(2, 5)
    put(3, 7)


def commit(brokers: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group})
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def resume_reading(brokers: str, group: str, topic: str) -> dict[int, list[tuple[Any, ...]]]:
    """What ``group`` reads on ``topic`` from its committed positions to the end."""
    ends = end_offsets(brokers, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    seen: dict[int, list[tuple[Any, ...]]] = {p: [] for p in ends}
    # Where each partition's next read starts: the committed offset (the log start when
    # there is none: auto.offset.reset=earliest), then after each record read.
    low = {p: 0 for p in ends}
    start = {
        tp.partition: tp.offset if tp.offset >= 0 else low[tp.partition]
        for tp in consumer.committed([TopicPartition(topic, p) for p in ends], timeout=10)
    }
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + bounded(60)
        while any(start[p] < e for p, e in ends.items()):
            assert time.monotonic() < deadline, f"the group never reached the end: {start}"
            for m in consumer.consume(100, timeout=0.2):
                if m.error() is None:
                    partition, offset = cast(int, m.partition()), cast(int, m.offset())
                    seen[partition].append((m.key(), m.value()))
                    start[partition] = offset + 1
        # Anything more would be read twice: there must be nothing.
        assert not [m for m in consumer.consume(100, timeout=1) if m.error() is None]
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return seen


def prepared(
    settings: Any, services: dict[str, str], admin: Any
) -> tuple[str, str, dict[int, Any]]:
    """A 4-partition source with holes and a deleted range; a group that read p0 up to the
    aborted transaction, p1 before the range later deleted, never p2, p3 to its end; backed
    up and its positions recorded. Returns (topic, group, what the group has still to read)."""
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(BEKREFTELSER)
    add_partitions(admin, topic, 4)
    produce_with_holes(brokers, topic)
    group = f"app-{uuid.uuid4().hex[:8]}"
    committed = {0: 16, 1: 4, 3: end_offsets(brokers, topic)[3]}
    commit(brokers, group, topic, committed)
    # A deleted range: p1's offsets 0-5 leave the log before the backup sees them.
    for future in admin.delete_records([TopicPartition(topic, 1, 6)]).values():
        future.result()
    original = read_topic(brokers, topic)
    backup_topic(settings, BEKREFTELSER)
    report = take_snapshot(settings)
    assert report.positions == 3 and report.changed == 3, report.summary()
    # What the group had not read: every record it would have read next, in order,
    # except those the backup does not restore (the quarantined one, without a key).
    unread = {
        p: [(k, v) for off, k, v, _, _ in recs if off >= committed.get(p, 0) and k is not None]
        for p, recs in original.items()
    }
    assert [len(unread[p]) for p in range(4)] == [6, 6, 5, 0]
    return topic, group, unread


def test_a_group_resumes_on_a_deleted_and_restored_topic_exactly_where_it_was(
    settings: Any, services: dict[str, str], admin: Any, db: Any
) -> None:
    brokers = services["KAFKA_BROKERS"]
    topic, group, unread = prepared(settings, services, admin)
    # Unchanged positions cost no row: the next tick only confirms them.
    again = take_snapshot(settings)
    assert (again.positions, again.changed) == (3, 0)

    delete_topic(admin, topic)
    report = restore(settings, RestoreRequest("bekreftelser", target_topic=topic, force=True))
    assert report.status == "completed" and report.created_topic

    planned = positions.plan(settings, report.run_id, [group])
    moves = {m.partition: m for m in planned.groups[0].moves}
    # p0: restored 0-9, 11-14, 19, 20, 22-25 -> target 0-17; 16 (aborted) -> 19's target 14.
    assert (moves[0].old_offset, moves[0].new_offset, moves[0].to_read) == (16, 14, 6)
    # p1: 4 was deleted with the range before the backup -> the first restored record.
    assert (moves[1].old_offset, moves[1].new_offset, moves[1].to_read) == (4, 0, 6)
    assert (moves[2].old_offset, moves[2].new_offset) == (None, None)  # never read
    assert (moves[3].old_offset, moves[3].new_offset, moves[3].to_read) == (7, 7, 0)
    assert positions.committed(admin, group, topic, 10) == {}  # a plan commits nothing

    # A live group on the target is refused, nothing committed.
    live = Consumer({"bootstrap.servers": brokers, "group.id": group})
    try:
        live.subscribe([topic])
        wait_until(
            lambda: bool(live.poll(0.2) or live.assignment()), 60, "the live consumer to join"
        )
        with pytest.raises(RestoreError, match=rf"group {group} is active.*stop its consumers"):
            positions.apply(settings, planned)
    finally:
        live.close()
    assert positions.committed(admin, group, topic, 10) == {}

    assert positions.apply(settings, planned) == 3
    checks = positions.check(settings, planned)
    assert [(c.group, c.ok) for c in checks] == [(group, True)]
    # None twice, none skipped, on every partition.
    assert resume_reading(brokers, group, topic) == unread
    # The backup's own group is never recorded, and the restored topic's offsets (in the
    # restore's numbering) are not taken for the source's.
    assert not GroupFilter().wants(CONSUMER_GROUP_ID)
    assert take_snapshot(settings).positions == 0
    rows = db.execute(
        "SELECT count(*) FROM consumer_group_positions WHERE group_id = %s", (group,)
    ).fetchone()
    assert rows == (3,)


def test_plan_apply_and_verify_through_the_cli_into_a_new_topic(
    settings: Any, services: dict[str, str], admin: Any, database_url: str
) -> None:
    brokers = services["KAFKA_BROKERS"]
    topic, group, unread = prepared(settings, services, admin)
    env = {
        "KAFKA_BROKERS": brokers,
        "DATABASE_URL": database_url,
        BEKREFTELSER.topic_env_var: topic,
    }
    runner = CliRunner()
    target = f"{topic}.restored"
    args = ["--table", "bekreftelser", "--target", target, "--no-migrate"]
    done = runner.invoke(restore_command, [*args, "--consumer-groups", group], env=env)
    assert done.exit_code == 0, done.output
    assert f"group {group}:" in done.output
    assert "p0: old offset 16 -> new offset 14, 6 still to read" in done.output
    assert "p2: old offset - -> new offset left as it is" in done.output
    assert "dry run: nothing committed" in done.output
    assert positions.committed(admin, group, target, 10) == {}
    run_id = positions.latest_run_into(settings, target)
    applied = runner.invoke(
        restore_command,
        ["--resume", str(run_id), "--consumer-groups", "all", "--apply", "--no-migrate"],
        env=env,
    )
    assert applied.exit_code == 0, applied.output
    assert "committed 3 partition positions of 1 groups" in applied.output
    verified = runner.invoke(
        verify_command,
        ["--table", "bekreftelser", "--against", target, "--consumer-groups", group],
        env=env,
    )
    assert verified.exit_code == 0, verified.output
    assert f"group {group} on {target}: OK: at the translated positions" in verified.output
    assert resume_reading(brokers, group, target) == unread

    # Bad input: one line each, exit 2, nothing committed.
    other = f"app-{uuid.uuid4().hex[:8]}"
    before = datetime.now(UTC) - timedelta(days=1)
    for extra, message in (
        (["--consumer-groups", other], f"unknown group {other}"),
        (
            ["--consumer-groups", group, "--as-of", before.strftime("%Y-%m-%dT%H:%M:%S")],
            f"group {group} has no snapshot",
        ),
    ):
        bad = runner.invoke(
            restore_command, ["--resume", str(run_id), *extra, "--apply", "--no-migrate"], env=env
        )
        assert bad.exit_code == 2, bad.output
        assert bad.output.count("\n") == 1 and message in bad.output, bad.output
    assert positions.committed(admin, other, target, 10) == {}


def test_bad_input_is_one_line_and_commits_nothing(
    settings: Any, services: dict[str, str], admin: Any, db: Any, database_url: str
) -> None:
    brokers = services["KAFKA_BROKERS"]
    topic, group, _ = prepared(settings, services, admin)
    env = {
        "KAFKA_BROKERS": brokers,
        "DATABASE_URL": database_url,
        BEKREFTELSER.topic_env_var: topic,
    }
    runner = CliRunner()
    # A target with more partitions than the source.
    wide = f"{topic}.wide"
    from backup_pipeline.kafka.admin import create_topics

    create_topics(admin, [wide], partitions=5, config={"retention.ms": "-1"})
    result = runner.invoke(
        restore_command,
        ["--table", "bekreftelser", "--target", wide, "--consumer-groups", group, "--apply"],
        env=env,
    )
    assert result.exit_code == 2, result.output
    assert "has 5 partitions but" in result.output and "4" in result.output
    assert positions.committed(admin, group, wide, 10) == {}
    # A run whose offset map is gone (an old run).
    narrow = restore(settings, RestoreRequest("bekreftelser", target_topic=f"{topic}.old"))
    db.execute("DELETE FROM restore_offset_map WHERE run_id = %s", (narrow.run_id,))
    with pytest.raises(RestoreError, match="offset map holds 0"):
        positions.plan(settings, narrow.run_id, [group])
    with pytest.raises(RestoreError, match="expected an ISO-8601"):
        restore_time("yesterday", "--as-of")


def test_history_is_thinned_to_one_position_per_hour(settings: Any, db: Any) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for minute in range(0, 180, 10):
        at = base + timedelta(minutes=minute)
        db.execute(
            "INSERT INTO consumer_group_positions VALUES (1, 't', 'g', 0, %s, 'empty', %s, %s)",
            (minute, at, at),
        )
    deleted = thin(db, base + timedelta(hours=2))
    kept = [
        r[0]
        for r in db.execute(
            "SELECT committed_offset FROM consumer_group_positions ORDER BY seen_at"
        ).fetchall()
    ]
    # Hours 0 and 1 keep their last row; hour 2 (not older than the cut) keeps all six.
    assert kept == [50, 110, 120, 130, 140, 150, 160, 170]
    assert deleted == 10


def test_the_sensor_records_and_the_restore_job_applies_with_the_plan_in_its_log(
    settings: Any,
    services: dict[str, str],
    admin: Any,
    db: Any,
    database_url: str,
    monkeypatch: Any,
) -> None:
    import dagster as dg

    from backup_pipeline.orchestration.positions import positions_sensor
    from backup_pipeline.orchestration.restore_jobs import restore_job

    brokers = services["KAFKA_BROKERS"]
    topic, group, unread = prepared(settings, services, admin)
    for name, value in {
        "KAFKA_BROKERS": brokers,
        "DATABASE_URL": database_url,
        BEKREFTELSER.topic_env_var: topic,
    }.items():
        monkeypatch.setenv(name, value)
    # The sensor's tick records (here: confirms) positions and requests no run.
    with dg.build_sensor_context() as context:
        tick = positions_sensor(context)
    assert isinstance(tick, dg.SkipReason)
    # Other tests' groups on the shared broker are read too; only this one reads the topic.
    assert (tick.skip_message or "").startswith("3 positions of ")
    assert "(0 changed" in (tick.skip_message or "")
    delete_topic(admin, topic)
    config = {
        "table": "bekreftelser",
        "target_topic": topic,
        "force": True,
        "consumer_groups": [group],
        "apply_positions": True,
    }
    instance = dg.DagsterInstance.ephemeral()
    result = restore_job.execute_in_process(
        run_config={"ops": {"restore_topic": {"config": config}}}, instance=instance
    )
    assert result.success
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = event.step_output_data.metadata
    assert metadata["positions_committed"].value == 3
    plan = str(metadata["positions_plan"].value)
    assert "p0: old offset 16 -> new offset 14, 6 still to read" in plan
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert any("p1: old offset 4 -> new offset 0, 6 still to read" in m for m in logs)
    assert resume_reading(brokers, group, topic) == unread


def test_in_place_a_group_resumes_on_the_restored_copies_after_its_records_were_deleted(
    settings: Any, services: dict[str, str], admin: Any
) -> None:
    """The topic survives, its records were deleted (delete-records to the end), the
    restore writes them back after the old end: the same group's old offsets move there."""
    brokers = services["KAFKA_BROKERS"]
    topic, group, unread = prepared(settings, services, admin)
    ends = end_offsets(brokers, topic)
    for future in admin.delete_records(
        [TopicPartition(topic, p, e) for p, e in ends.items()]
    ).values():
        future.result()
    report = restore(settings, RestoreRequest("bekreftelser", target_topic=topic, force=True))
    assert report.status == "completed" and not report.created_topic
    planned = positions.plan(settings, report.run_id, [group])
    moves = {m.partition: m for m in planned.groups[0].moves}
    assert (moves[0].old_offset, moves[0].new_offset) == (16, ends[0] + 14)
    assert (moves[3].old_offset, moves[3].new_offset, moves[3].to_read) == (7, ends[3] + 7, 0)
    assert positions.apply(settings, planned) == 3
    assert resume_reading(brokers, group, topic) == unread
