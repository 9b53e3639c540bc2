"""Verify against real Kafka and PostgreSQL: every difference is found, by offset."""

from __future__ import annotations

from confluent_kafka import Producer, TopicPartition

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.restore.run import RestoreRequest, restore
from backup_pipeline.selection import Selection
from backup_pipeline.settings import Settings
from backup_pipeline.topics import spec_for_table
from backup_pipeline.verify.compare import verify
from backup_pipeline.verify.digest import digest
from backup_pipeline_tests.fix_kafka import good_records, key
from dev.harness.kafka import end_offsets
from dev.harness.waits import wait_until

BEKREFTELSER = spec_for_table("bekreftelser")


def backed_up(settings: Settings, producer: Producer, per_partition: int = 6) -> str:
    """``per_partition`` records in each of the three partitions, all backed up."""
    topic = settings.topic(BEKREFTELSER)
    records = good_records(BEKREFTELSER, 3 * per_partition, seed=21)
    for i, r in enumerate(records):
        headers: list[tuple[str, str | bytes | None]] = list(r.headers)
        producer.produce(topic, key=key(i), value=r.value, headers=headers, partition=i % 3)
    assert producer.flush(30) == 0
    report = backup_topic(settings, BEKREFTELSER)
    assert report.rows == 3 * per_partition
    return topic


def test_a_faithful_backup_verifies_clean(settings, producer):
    backed_up(settings, producer)
    report = verify(settings, "bekreftelser")
    assert report.ok and report.compared == 18, report.summary()
    assert "no differences" in report.summary()


def test_a_record_changed_in_the_database_is_reported_by_offset(settings, db, producer):
    backed_up(settings, producer)
    db.execute(
        "UPDATE bekreftelser SET data = 'tampered'::bytea "
        "WHERE kafka_partition = 0 AND kafka_offset = 3"
    )
    db.execute(
        'UPDATE bekreftelser SET headers = \'[["traceparent", "eA=="]]\' '
        "WHERE kafka_partition = 2 AND kafka_offset = 1"
    )
    report = verify(settings, "bekreftelser")
    assert report.findings() == {
        "missing": [],
        "extra": [],
        "different": [(0, 3), (2, 1)],
        "unmapped": [],
    }
    assert "different (1): 3" in report.summary()


def test_a_row_deleted_from_the_database_is_reported_missing_by_offset(settings, db, producer):
    backed_up(settings, producer)
    db.execute("DELETE FROM bekreftelser WHERE kafka_partition = 1 AND kafka_offset = 2")
    report = verify(settings, "bekreftelser")
    assert report.findings()["missing"] == [(1, 2)]
    assert not report.ok and report.compared == 17


def test_a_record_missing_from_the_topic_is_reported_extra_by_offset(
    settings, db, producer, services
):
    topic = settings.topic(BEKREFTELSER)
    # A committed transaction leaves a marker at offset 3, an offset with no record.
    txn = Producer(
        {"bootstrap.servers": services["KAFKA_BROKERS"], "transactional.id": f"v-{topic}"}
    )
    txn.init_transactions(30)
    txn.begin_transaction()
    for r in good_records(BEKREFTELSER, 3, seed=2):
        txn.produce(topic, key=r.key, value=r.value, partition=0)
    txn.commit_transaction(30)
    # The coordinator writes the marker after commit_transaction returns: until it is in
    # the log, the next record could take offset 3 itself.
    brokers = services["KAFKA_BROKERS"]
    wait_until(lambda: end_offsets(brokers, topic)[0] == 4, 30, "the commit marker at offset 3")
    producer.produce(topic, key=key(5), value=b"after the marker", partition=0)
    producer.flush(30)
    backup_topic(settings, BEKREFTELSER)
    assert verify(settings, "bekreftelser").ok
    # The backup claims a record the topic never had at that offset.
    db.execute(
        "INSERT INTO bekreftelser (version, kafka_partition, kafka_offset, record_key, data) "
        "SELECT version, kafka_partition, 3, record_key, data FROM bekreftelser "
        "WHERE kafka_partition = 0 AND kafka_offset = 0"
    )
    report = verify(settings, "bekreftelser")
    assert report.findings()["extra"] == [(0, 3)] and report.compared == 4


def test_records_a_restore_wrote_that_left_the_topic_are_reported_by_source_offset(
    settings, producer, admin
):
    backed_up(settings, producer)
    report = restore(settings, RestoreRequest("bekreftelser"))
    # Retention (or anyone) removes the first two restored records of partition 1.
    target = report.target_topic
    for future in admin.delete_records([TopicPartition(target, 1, 2)]).values():
        future.result()
    check = verify(settings, "bekreftelser", topic=target)
    assert check.findings()["extra"] == [(1, 0), (1, 1)] and check.compared == 16
    assert check.restored and not check.ok


def test_a_record_the_restore_did_not_select_is_excluded_not_extra(settings, producer):
    backed_up(settings, producer)
    # Leave key 7 (partition 1, offset 2) out of the restore.
    keys = tuple(key(i) for i in range(18) if i != 7)
    report = restore(settings, RestoreRequest("bekreftelser", selection=Selection(keys=keys)))
    check = verify(settings, "bekreftelser", topic=report.target_topic)
    assert check.ok and check.compared == 17, check.summary()
    assert [(p.partition, p.excluded) for p in check.partitions] == [(0, 0), (1, 1), (2, 0)]
    assert "17 keys" in check.summary() and "1 backed-up record excluded" in check.summary()


def test_restore_then_verify_the_target_finds_zero_differences_even_by_sample(settings, producer):
    backed_up(settings, producer)
    report = restore(settings, RestoreRequest("bekreftelser", origin_headers=False))
    full = verify(settings, "bekreftelser", topic=report.target_topic)
    assert full.ok and full.compared == 18, full.summary()
    sampled = verify(settings, "bekreftelser", topic=report.target_topic, sample=3, seed=1)
    assert sampled.ok and 0 < sampled.compared <= 9


def test_records_deleted_from_the_topic_live_only_in_the_backup(settings, producer, admin):
    topic = backed_up(settings, producer)
    for future in admin.delete_records([TopicPartition(topic, 0, 4)]).values():
        future.result()
    producer.produce(topic, key=key(99), value=b"new", partition=0)
    producer.flush(30)
    report = verify(settings, "bekreftelser")
    part = next(p for p in report.partitions if p.partition == 0)
    assert part.only_in_backup == (0, 3, 4)
    assert part.not_backed_up == (6, 6)
    assert part.compared_range == (4, 5) and part.compared == 2
    assert report.ok
    assert "live only in the backup" in report.summary()


def test_sample_mode_checks_random_offsets_and_finds_a_change(settings, db, producer):
    backed_up(settings, producer, per_partition=4)
    clean = verify(settings, "bekreftelser", sample=2, seed=3)
    assert clean.ok and 0 < clean.compared <= 6
    db.execute(
        "UPDATE bekreftelser SET data = 'x'::bytea WHERE kafka_partition = 2 AND kafka_offset = 1"
    )
    # Enough draws over four offsets to hit every one of them.
    sampled = verify(settings, "bekreftelser", sample=60, seed=4, partitions=(2,))
    assert sampled.findings()["different"] == [(2, 1)] and sampled.compared == 4


def test_the_digest_tells_apart_what_a_restore_must_keep():
    base = digest(b"k", b"v", [("a", b"1"), ("a", None)])
    assert base == digest(b"k", b"v", [("a", b"1"), ("a", None)])
    for other in (
        digest(b"k", b"v", [("a", None), ("a", b"1")]),  # header order
        digest(b"k", b"v", [("a", b"1"), ("a", b"")]),  # null vs empty
        digest(b"kv", b"", [("a", b"1"), ("a", None)]),  # boundaries
        digest(None, b"v", [("a", b"1"), ("a", None)]),
    ):
        assert other != base


def test_a_quarantined_record_after_the_last_restored_one_is_excluded_not_extra(settings, producer):
    topic = backed_up(settings, producer)
    producer.produce(topic, key=b"\x01", value=b"two-byte key", partition=0)
    assert producer.flush(30) == 0
    assert backup_topic(settings, BEKREFTELSER).quarantined == 1
    report = restore(settings, RestoreRequest("bekreftelser"))
    check = verify(settings, "bekreftelser", topic=report.target_topic)
    part = check.partitions[0]
    assert check.ok and (part.excluded, part.excluded_quarantined) == (1, 1), check.summary()
    assert "1 of them quarantined (left out unless --include-quarantined)" in check.summary()
