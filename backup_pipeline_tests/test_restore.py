"""Restore against real Kafka and PostgreSQL: records come back byte for byte, once.

Partial restores are in test_restore_selection.py, restore with verify in
test_restore_verify.py (both use the helpers here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.errors import RestoreError
from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.readback import ORIGIN_HEADERS, split_origin
from backup_pipeline.restore import target_topic
from backup_pipeline.restore.bookkeeping import offset_map
from backup_pipeline.restore.run import RestoreRequest, restore, resume
from backup_pipeline.selection import Selection
from backup_pipeline.topics import spec_for_table
from backup_pipeline.verify.compare import verify
from backup_pipeline_tests.fix_kafka import good_records, key, read_topic, without_offsets
from dev.harness.kafka import delete_topic
from dev.harness.waits import bounded

BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")
# A day ago: well inside the broker's default retention (7 days), which the dev broker
# enforces every 2 s; older records are for test_restore_target.py, which sets retention.
BASE_MS = (int(time.time()) - 86_400) * 1000


def delete_all(admin: Any, brokers: str, topic: str) -> None:
    held = read_topic(brokers, topic)
    ends = [TopicPartition(topic, p, recs[-1][0] + 1) for p, recs in held.items() if recs]
    for future in admin.delete_records(ends).values():
        future.result()


def produce_all_kinds(brokers: str, topic: str) -> int:
    """Awkward records of every kind, with explicit CreateTime timestamps; returns count."""
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    good = good_records(BEKREFTELSER, 12, seed=11)
    big = bytes(range(256)) * 2000  # 512 000 bytes, incompressible enough
    kinds: list[tuple[int, bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]] = [
        (0, key(-1), good[0].value, [("traceparent", b"00-aa-bb-01")]),
        (0, key(-(2**63)), good[1].value, [("h", b"1"), ("h", b"2"), ("h", b"1")]),
        (0, key(2**63 - 1), good[2].value, [("bin", b"\x00\xff\x80"), ("nul", None)]),
        (0, key(7), big, [("size", b"big")]),
        (1, key(8), None, [("why", b"tombstone")]),  # quarantined: null value
        (1, b"\x01\x02", good[3].value, []),  # quarantined: 2-byte key
        (1, None, good[4].value, [("traceparent", b"x")]),  # quarantined: null key
        (1, key(9), good[5].value, []),
        (2, key(-12345), good[6].value, [("", b""), ("empty", b"")]),
    ]
    for i, (partition, k, v, headers) in enumerate(kinds):
        producer.produce(
            topic, key=k, value=v, headers=headers, partition=partition, timestamp=BASE_MS + i
        )
    assert producer.flush(30) == 0
    txn = Producer({"bootstrap.servers": brokers, "transactional.id": f"restore-{topic}"})
    txn.init_transactions(30)
    for commit, records in ((True, good[7:10]), (False, good[10:12])):
        txn.begin_transaction()
        for j, r in enumerate(records):
            txn.produce(
                topic,
                key=r.key,
                value=r.value,
                headers=list[tuple[str, str | bytes | None]](r.headers),
                partition=2,
                timestamp=BASE_MS + 100 + j,
            )
        if commit:
            txn.commit_transaction(30)
        else:
            txn.flush(30)
            txn.abort_transaction(30)
    return len(kinds) + 3


def test_round_trip_after_deleting_the_records_restores_every_byte(settings, db, admin, services):
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(BEKREFTELSER)
    produced = produce_all_kinds(brokers, topic)
    original = read_topic(brokers, topic)
    assert sum(len(r) for r in original.values()) == produced
    backup = backup_topic(settings, BEKREFTELSER)
    assert (backup.rows, backup.quarantined) == (produced - 3, 3)

    delete_all(admin, brokers, topic)
    assert all(not r for r in read_topic(brokers, topic).values())
    seen: dict[int, tuple[int, int]] = {}
    report = restore(
        settings,
        RestoreRequest(table="bekreftelser", selection=Selection(include_quarantined=True)),
        progress=lambda partition, done, total: seen.__setitem__(partition, (done, total)),
    )

    assert report.status == "completed" and report.created_topic
    assert report.target_topic.startswith(f"{topic}.restored-")
    assert report.restored == produced and report.quarantined == 3 and report.not_exact == 0
    assert report.by_partition == {p: len(r) for p, r in original.items()}
    assert seen == {p: (len(r), len(r)) for p, r in original.items()}  # per partition
    restored = read_topic(brokers, report.target_topic)
    assert without_offsets(restored) == without_offsets(original)
    for p, records in restored.items():
        for (target_offset, *_, headers, _), source in zip(records, original[p], strict=True):
            origin = dict(headers[-len(ORIGIN_HEADERS) :])
            assert origin["backup.source.topic"] == topic.encode()
            assert origin["backup.source.partition"] == str(p).encode()
            assert origin["backup.source.offset"] == str(source[0]).encode()
            assert origin["backup.version"] == b"1"
            assert (p, source[0], p, target_offset) in offset_map(db, report.run_id)
    assert len(offset_map(db, report.run_id)) == produced

    check = verify(settings, "bekreftelser", topic=report.target_topic)
    assert check.ok and check.compared == produced, check.summary()


def test_without_quarantine_and_origin_headers_only_seed_rows_come_back(settings, services):
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(BEKREFTELSER)
    produce_all_kinds(brokers, topic)
    original = read_topic(brokers, topic)
    backup_topic(settings, BEKREFTELSER)
    target = f"{topic}.plain"
    report = restore(
        settings,
        RestoreRequest(table="bekreftelser", target_topic=target, origin_headers=False),
    )
    assert report.quarantined == 0 and report.by_partition[1] == 1
    restored = read_topic(brokers, target)
    assert restored[1][0][1:] == original[1][3][1:]  # the one good record, no extra headers
    assert verify(settings, "bekreftelser", topic=target).ok  # mapped by the offset map


def test_rows_from_before_the_restore_columns_come_back_as_far_as_they_can(
    settings, db, producer, services
):
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(HENDELSER)
    records = good_records(HENDELSER, 4, seed=3)
    for r in records:
        producer.produce(topic, key=r.key, value=r.value, headers=r.headers, partition=0)
    producer.flush(30)
    backup_topic(settings, HENDELSER)
    db.execute(
        "UPDATE bekreftelse_hendelser SET headers = NULL, kafka_timestamp = NULL, "
        "kafka_timestamp_type = NULL, kafka_value = NULL WHERE kafka_offset IN (1, 2)"
    )
    report = restore(settings, RestoreRequest(table="bekreftelse_hendelser"))
    assert report.restored == 4 and report.not_exact == 2
    restored = read_topic(brokers, report.target_topic)[0]
    data = db.execute(
        "SELECT data::text FROM bekreftelse_hendelser WHERE kafka_offset = 1"
    ).fetchone()[0]
    _, k, v, headers, _ = restored[1]
    own, _ = split_origin(headers)
    assert k == records[1].key and v == data.encode()
    assert own == [("traceparent", dict(records[1].headers)["traceparent"])]
    assert restored[0][2] == records[0].value and split_origin(restored[0][3])[0] == list(
        records[0].headers
    )
    assert verify(settings, "bekreftelse_hendelser").ok  # legacy rows compare by meaning
    assert verify(settings, "bekreftelse_hendelser", topic=report.target_topic).ok


def _backed_up_sequence(settings, producer, n: int = 10) -> list[Any]:
    topic = settings.topic(BEKREFTELSER)
    records = good_records(BEKREFTELSER, n, seed=4)
    for i, r in enumerate(records):
        producer.produce(
            topic, key=key(i - 3), value=r.value, partition=0, timestamp=BASE_MS + 1000 * i
        )
    producer.flush(30)
    backup_topic(settings, BEKREFTELSER)
    return records


def _source_offsets(brokers: str, topic: str) -> list[int]:
    return [
        int(dict(split_origin_pairs(h))["backup.source.offset"])
        for _, _, _, h, _ in read_topic(brokers, topic)[0]
    ]


def split_origin_pairs(headers: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    return [(n, v or b"") for n, v in headers[-len(ORIGIN_HEADERS) :]]


def test_a_stopped_restore_resumes_where_it_stopped_without_duplicates(
    settings, db, producer, services
):
    brokers = services["KAFKA_BROKERS"]
    _backed_up_sequence(settings, producer, n=25)
    target = f"{settings.topic(BEKREFTELSER)}.resumed"
    first = restore(
        settings,
        RestoreRequest("bekreftelser", target_topic=target),
        max_records=7,
        checkpoint_every=3,
    )
    assert first.status == "stopped" and first.restored == 7
    assert _source_offsets(brokers, target) == list(range(7))
    second = resume(settings, first.run_id, checkpoint_every=3)
    assert second.status == "completed" and second.restored == 18 and second.skipped == 0
    assert _source_offsets(brokers, target) == list(range(25))
    assert [r[1] for r in offset_map(db, first.run_id)] == list(range(25))
    assert resume(settings, first.run_id).restored == 0  # a completed run does nothing


def test_a_restore_killed_between_delivery_and_checkpoint_resumes_without_duplicates(
    settings, db, producer, services, database_url
):
    brokers = services["KAFKA_BROKERS"]
    _backed_up_sequence(settings, producer, n=40)
    source_topic = settings.topic(BEKREFTELSER)
    target = f"{source_topic}.killed"
    script = (
        "from backup_pipeline.restore.run import restore, RestoreRequest\n"
        "from backup_pipeline.settings import load_settings\n"
        f"restore(load_settings(), RestoreRequest('bekreftelser', target_topic={target!r}),"
        " max_records=25)\n"
    )
    env = {
        **os.environ,
        "KAFKA_BROKERS": brokers,
        "DATABASE_URL": database_url,
        BEKREFTELSER.topic_env_var: source_topic,
        "BACKUP_PIPELINE_FAILPOINT": "restore_before_checkpoint:1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, timeout=bounded(120), check=False
    )
    # Killed after Kafka acknowledged 25 records, before their checkpoint was committed.
    assert done.returncode == -9
    run_id, status = db.execute("SELECT run_id, status FROM restore_runs").fetchone()
    assert status == "running"
    saved = db.execute(
        "SELECT last_source_offset FROM restore_progress WHERE run_id = %s AND kafka_partition = 0",
        (run_id,),
    ).fetchone()[0]
    in_target = len(read_topic(brokers, target)[0])
    assert (saved, in_target) == (-1, 25)  # delivered records the checkpoint does not know of

    report = resume(settings, run_id)
    assert report.status == "completed"
    assert report.skipped == 25 and report.restored == 15
    assert _source_offsets(brokers, target) == list(range(40))
    assert [r[1] for r in offset_map(db, run_id)] == list(range(40))
    assert verify(settings, "bekreftelser", topic=target).ok


def test_writing_into_the_source_or_a_non_empty_topic_is_refused_unless_forced(
    settings, producer, admin, services
):
    _backed_up_sequence(settings, producer, n=3)
    topic = settings.topic(BEKREFTELSER)
    with pytest.raises(RestoreError, match="source topic"):
        restore(settings, RestoreRequest("bekreftelser", target_topic=topic))
    busy = f"{topic}.busy"
    create_topics(admin, [busy], partitions=3)
    producer.produce(busy, value=b"someone else's", partition=2)
    producer.flush(30)
    with pytest.raises(RestoreError, match="already holds records"):
        restore(settings, RestoreRequest("bekreftelser", target_topic=busy))
    small = f"{topic}.small"
    create_topics(admin, [small], partitions=1)
    with pytest.raises(RestoreError, match="partitions"):
        restore(settings, RestoreRequest("bekreftelser", target_topic=small, force=True))
    forced = restore(settings, RestoreRequest("bekreftelser", target_topic=busy, force=True))
    assert forced.restored == 3

    delete_all(admin, services["KAFKA_BROKERS"], topic)
    back = restore(settings, RestoreRequest("bekreftelser", target_topic=topic, force=True))
    assert back.restored == 3
    assert _source_offsets(services["KAFKA_BROKERS"], topic) == [0, 1, 2]


def test_a_deleted_source_topic_is_restored_with_the_backups_partition_count(
    settings, producer, admin, services, monkeypatch
):
    topic = settings.topic(BEKREFTELSER)
    _backed_up_sequence(settings, producer, n=3)
    producer.produce(topic, key=key(1), value=b"v", partition=2)
    producer.flush(30)
    backup_topic(settings, BEKREFTELSER)
    delete_topic(admin, topic)
    # Right after a deletion the metadata may still list the topic while the broker
    # already answers "unknown topic" for its configuration: still a deleted source.
    real_partition_count = target_topic.partition_count

    def stale_metadata(admin, name, timeout):
        return 3 if name == topic else real_partition_count(admin, name, timeout)

    monkeypatch.setattr(target_topic, "partition_count", stale_metadata)
    report = restore(settings, RestoreRequest(source_topic=topic, target_topic=f"{topic}.new"))
    assert report.by_partition == {0: 3, 1: 0, 2: 1}
    assert len(read_topic(services["KAFKA_BROKERS"], f"{topic}.new")) == 3
