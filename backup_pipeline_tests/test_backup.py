"""One backup pass against real Kafka and PostgreSQL: exactly once, nothing lost."""

from __future__ import annotations

import threading
from typing import cast

import psycopg
from confluent_kafka import Producer

from backup_pipeline import hwm
from backup_pipeline.backup.run import backup_topic
from backup_pipeline.demo.data import DemoRecord
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_db import quarantined, stored_offsets
from backup_pipeline_tests.fix_kafka import add_partitions, good_records, key, produce
from backup_pipeline_tests.fix_services import make_settings
from dev.harness.db import hwms
from dev.harness.kafka import end_offsets

BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")


def test_a_pass_stores_every_record_once_and_moves_the_hwm_to_the_end(
    settings, db, producer, services
):
    topic = settings.topic(BEKREFTELSER)
    records = good_records(BEKREFTELSER, 300)
    produce(producer, topic, records)
    report = backup_topic(settings, BEKREFTELSER)
    assert report.rows == 300 and report.quarantined == 0 and report.lag == 0
    ends = end_offsets(services["KAFKA_BROKERS"], topic)
    assert hwms(db, topic) == {p: end - 1 for p, end in ends.items()}
    assert len(stored_offsets(db, "bekreftelser")) == 300
    stored_values = {bytes(r[0]) for r in db.execute("SELECT data FROM bekreftelser")}
    assert stored_values == {r.value for r in records}

    again = backup_topic(settings, BEKREFTELSER)
    assert again.rows == 0 and again.batches == 0
    assert len(stored_offsets(db, "bekreftelser")) == 300


def test_json_events_are_stored_as_jsonb_with_their_person_and_exact_bytes(settings, db, producer):
    topic = settings.topic(HENDELSER)
    records = good_records(HENDELSER, 50)
    produce(producer, topic, records, partition=1)
    backup_topic(settings, HENDELSER)
    rows = db.execute(
        "SELECT kafka_offset, record_key, arbeidssoeker_id, traceparent, "
        "data->>'hendelseType', kafka_value, headers, kafka_timestamp "
        "FROM bekreftelse_hendelser WHERE kafka_partition = 1 "
        "ORDER BY kafka_offset"
    ).fetchall()
    assert len(rows) == 50
    import json

    for record, row in zip(records, rows, strict=True):
        assert record.value is not None and record.key is not None  # good records
        event = json.loads(record.value)
        assert row[1] == int.from_bytes(record.key, "big", signed=True)
        assert row[2] == event["arbeidssoekerId"]
        assert row[3] == cast(bytes, dict(record.headers)["traceparent"]).decode()
        assert row[4] == event["hendelseType"]
        assert bytes(row[5]) == record.value
        assert row[7] is not None


def test_bad_records_are_quarantined_raw_counted_and_passed(settings, db, producer):
    topic = settings.topic(HENDELSER)
    good = good_records(HENDELSER, 3)
    bad = [
        DemoRecord(key(1), None, []),
        DemoRecord(key(2), b"{not json", [("traceparent", b"t")]),
        DemoRecord(key(3), b'{"arbeidssoekerId":"x"}', []),
        DemoRecord(b"\x01\x02", good[0].value, []),
        DemoRecord(None, good[0].value, []),
    ]
    long_tp = DemoRecord(key(4), good[1].value, [("traceparent", b"0" * 80)])
    produce(producer, topic, [good[0], *bad, long_tp, good[2]], partition=0)
    report = backup_topic(settings, HENDELSER)
    assert (report.rows, report.quarantined, report.warnings) == (3, 5, 1)
    q = quarantined(db, topic)
    assert [o for _, o, _ in q] == [1, 2, 3, 4, 5]
    reasons = " | ".join(r for _, _, r in q)
    for expected in ("tombstone", "not valid JSON", "not an integer", "2 bytes", "key is null"):
        assert expected in reasons
    raw = db.execute(
        "SELECT record_key, kafka_value, headers FROM backup_quarantine WHERE kafka_offset = 2"
    ).fetchone()
    assert bytes(raw[0]) == key(2) and bytes(raw[1]) == b"{not json"
    assert raw[2] == [["traceparent", "dA=="]]
    assert hwms(db, topic)[0] == 7
    tp_row = db.execute(
        "SELECT traceparent, headers FROM bekreftelse_hendelser WHERE kafka_offset = 6"
    ).fetchone()
    assert tp_row[0] is None and tp_row[1][0][0] == "traceparent"


def test_aborted_transactions_are_not_stored_and_markers_leave_no_lag(settings, db, services):
    topic = settings.topic(BEKREFTELSER)
    txn = Producer(
        {"bootstrap.servers": services["KAFKA_BROKERS"], "transactional.id": f"test-{topic}"}
    )
    txn.init_transactions(30)
    committed = good_records(BEKREFTELSER, 10, seed=5)
    aborted = good_records(BEKREFTELSER, 7, seed=6)
    for records, commit in [(committed[:5], True), (aborted, False), (committed[5:], True)]:
        txn.begin_transaction()
        for record in records:
            txn.produce(topic, key=record.key, value=record.value, partition=0)
        if commit:
            txn.commit_transaction(30)
        else:
            txn.flush(30)  # make sure the aborted records reach the log first
            txn.abort_transaction(30)
    report = backup_topic(settings, BEKREFTELSER)
    assert report.rows == 10
    values = {bytes(r[0]) for r in db.execute("SELECT data FROM bekreftelser")}
    assert values == {r.value for r in committed}
    end = end_offsets(services["KAFKA_BROKERS"], topic)[0]
    assert end > 10 + 7  # markers and aborted records take offsets
    assert hwms(db, topic)[0] == end - 1 and report.lag == 0


def test_an_open_transaction_neither_stalls_the_pass_nor_gets_stored(
    settings, db, services, producer
):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 4), partition=0)
    txn = Producer(
        {"bootstrap.servers": services["KAFKA_BROKERS"], "transactional.id": f"open-{topic}"}
    )
    txn.init_transactions(30)
    txn.begin_transaction()
    txn.produce(topic, key=key(9), value=b"uncommitted", partition=0)
    txn.flush(10)
    try:
        report = backup_topic(settings, BEKREFTELSER)
        assert report.rows == 4
        assert hwms(db, topic)[0] == 3
    finally:
        txn.abort_transaction(30)


def test_records_deleted_by_retention_are_recorded_as_a_gap_and_the_pass_goes_on(
    settings, db, producer, admin
):
    from confluent_kafka import TopicPartition

    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 10), partition=2)
    backup_topic(settings, BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 10, seed=2), partition=2)
    futures = admin.delete_records([TopicPartition(topic, 2, 15)])
    for future in futures.values():
        future.result()
    report = backup_topic(settings, BEKREFTELSER)
    part = next(p for p in report.partitions if p.partition == 2)
    assert (part.lost_first, part.lost_last, part.lost_kind) == (10, 14, "retention")
    assert report.lost == 5 and part.rows == 5
    assert "no longer in Kafka" in report.summary()
    gaps = db.execute(
        "SELECT kafka_partition, first_lost_offset, last_lost_offset, kind "
        "FROM backup_gaps WHERE kafka_topic = %s",
        (topic,),
    ).fetchall()
    assert gaps == [(2, 10, 14, "retention")]
    assert [o for p, o in stored_offsets(db, "bekreftelser") if p == 2] == [
        *range(10),
        *range(15, 20),
    ]


def test_a_partition_added_between_passes_is_backed_up(settings, db, producer, admin, services):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 9))
    backup_topic(settings, BEKREFTELSER)
    add_partitions(admin, topic, 4)
    # A new producer sees the new partition in its first metadata request.
    fresh = Producer({"bootstrap.servers": services["KAFKA_BROKERS"]})
    produce(fresh, topic, good_records(BEKREFTELSER, 6, seed=3), partition=3)
    report = backup_topic(settings, BEKREFTELSER)
    assert report.rows == 6
    assert hwms(db, topic)[3] == 5


def table_digest(conn: psycopg.Connection, table: str, version: int) -> str:
    row = conn.execute(
        f"SELECT md5(string_agg(t::text, '|' ORDER BY kafka_partition, kafka_offset)) "
        f"FROM {table} t WHERE version = %s",
        (version,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_a_new_version_re_ingests_everything_without_touching_the_old_one(
    settings, db, producer, services, database_url, topic_names
):
    topic = settings.topic(HENDELSER)
    produce(producer, topic, good_records(HENDELSER, 40))
    backup_topic(settings, HENDELSER)
    old_digest = table_digest(db, "bekreftelse_hendelser", 1)
    old_hwms = hwms(db, topic, 1)

    v2 = make_settings(services, database_url, topic_names, BACKUP_VERSION="2")
    report = backup_topic(v2, HENDELSER)
    assert report.rows == 40 and report.version == 2
    assert all(p.hwm_before == -1 for p in report.partitions)
    assert table_digest(db, "bekreftelse_hendelser", 1) == old_digest
    assert hwms(db, topic, 1) == old_hwms
    assert stored_offsets(db, "bekreftelse_hendelser", 2) == stored_offsets(
        db, "bekreftelse_hendelser", 1
    )


def test_a_pass_skips_while_another_holds_the_writer_lock(settings, db, producer, database_url):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 5))
    with psycopg.connect(database_url, autocommit=True) as other:
        hwm.ensure_rows(other, 1, topic, [0, 1, 2])
        lock = hwm.WriterLock(other, topic, 1)
        assert lock.acquire()
        report = backup_topic(settings, BEKREFTELSER)
        assert report.skipped and "another pass" in report.skipped
        assert report.rows == 0
        # Another version of the same topic is not blocked by it.
        other_version = backup_topic(
            settings.model_copy(update={"backup_version": 3}), BEKREFTELSER
        )
        assert other_version.rows == 5
        lock.release()
    assert backup_topic(settings, BEKREFTELSER).rows == 5


def test_concurrent_passes_never_duplicate_or_fail(settings, db, producer):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 3000))
    small = settings.model_copy(update={"backup_batch_size": 100})
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(backup_topic(small, BEKREFTELSER, lock_wait_seconds=60))
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.rows for r in reports) == 3000
    assert len(stored_offsets(db, "bekreftelser")) == 3000


def test_max_records_caps_a_pass_and_the_next_pass_continues(settings, db, producer):
    topic = settings.topic(BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 500), partition=0)
    capped = settings.model_copy(update={"backup_batch_size": 100})
    first = backup_topic(capped, BEKREFTELSER, max_records=200)
    assert first.rows == 200 and first.lag == 300
    second = backup_topic(capped, BEKREFTELSER, max_records=0)
    assert second.rows == 300 and second.lag == 0
    assert [o for _, o in stored_offsets(db, "bekreftelser")] == list(range(500))


def test_large_values_are_stored(settings, db, services):
    import os as _os

    topic = settings.topic(BEKREFTELSER)
    big = Producer({"bootstrap.servers": services["KAFKA_BROKERS"]})
    value = _os.urandom(900_000)  # incompressible, near the broker's 1 MB default
    big.produce(topic, key=key(1), value=value, partition=0)
    big.flush(30)
    report = backup_topic(settings, BEKREFTELSER)
    assert report.rows == 1
    assert bytes(db.execute("SELECT data FROM bekreftelser").fetchone()[0]) == value


def test_batches_stay_within_batch_bytes_when_values_are_large(settings, db, services):
    # Memory is bounded by the batch size in bytes: 200 values of 50 KB with a 1 MB
    # limit must come as ~10 transactions, not as one chunk of whatever Kafka had ready.
    import os as _os

    topic = settings.topic(BEKREFTELSER)
    big = Producer({"bootstrap.servers": services["KAFKA_BROKERS"], "linger.ms": 50})
    for i in range(200):
        big.produce(topic, key=key(i), value=_os.urandom(50_000), partition=0)
    big.flush(30)
    limited = settings.model_copy(update={"backup_batch_bytes": 1_000_000})
    report = backup_topic(limited, BEKREFTELSER)
    assert report.rows == 200 and report.lag == 0
    assert report.bytes_read == 200 * (50_000 + 8)
    # At most one record over the limit per batch: 10 MB / (1 MB + 50 KB) > 9 batches.
    assert report.batches >= 10
    assert [o for _, o in stored_offsets(db, "bekreftelser")] == list(range(200))


def test_a_row_postgresql_refuses_is_quarantined_and_the_rest_of_its_batch_stored(
    settings, db, producer
):
    topic = settings.topic(HENDELSER)
    good = good_records(HENDELSER, 4)
    # Valid JSON that Python accepts but jsonb cannot hold: only the server knows.
    refused = DemoRecord(key(7), b'{"arbeidssoekerId":1,"x":1e1000000}', [("traceparent", b"t")])
    produce(producer, topic, [good[0], good[1], refused, good[2], good[3]], partition=0)
    report = backup_topic(settings, HENDELSER)
    assert (report.rows, report.quarantined) == (4, 1)
    (q,) = quarantined(db, topic)
    assert q[1] == 2 and "refused by PostgreSQL" in q[2] and "numeric" in q[2]
    assert [o for _, o in stored_offsets(db, "bekreftelse_hendelser")] == [0, 1, 3, 4]
    assert hwms(db, topic)[0] == 4
