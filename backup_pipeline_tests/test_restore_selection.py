"""Partial restores: by offset range, time range, key and person; offset ranges restore only
their partitions unless others are named; a selection that matches nothing fails in one
line and creates nothing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import cast

import pytest
from click.testing import CliRunner

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.cli.restore import restore_command
from backup_pipeline.demo.data import event_value
from backup_pipeline.errors import RestoreError
from backup_pipeline.restore.run import RestoreRequest, restore
from backup_pipeline.selection import Selection
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_kafka import good_records, key, read_topic
from backup_pipeline_tests.test_restore import BASE_MS, _backed_up_sequence, _source_offsets

BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")


def test_partial_restores_by_offset_range_time_range_and_key(settings, producer, services):
    brokers = services["KAFKA_BROKERS"]
    _backed_up_sequence(settings, producer)
    topic = settings.topic(BEKREFTELSER)

    def run(name: str, selection: Selection) -> list[int]:
        target = f"{topic}.{name}"
        restore(settings, RestoreRequest("bekreftelser", target_topic=target, selection=selection))
        return _source_offsets(brokers, target)

    assert run("offsets", Selection(offsets={0: (2, 5)})) == [2, 3, 4, 5]
    since = datetime.fromtimestamp((BASE_MS + 3000) / 1000, UTC)
    until = datetime.fromtimestamp((BASE_MS + 6000) / 1000, UTC)
    assert run("time", Selection(since=since, until=until)) == [3, 4, 5]
    assert run("keys", Selection(keys=(key(-3), key(4)))) == [0, 7]


def test_offset_ranges_select_only_their_partitions_unless_others_are_named(
    settings, producer, services
):
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(BEKREFTELSER)
    for i, r in enumerate(good_records(BEKREFTELSER, 30, seed=8)):
        producer.produce(topic, key=key(i), value=r.value, partition=i % 3)
    producer.flush(30)
    backup_topic(settings, BEKREFTELSER)

    def restored(name: str, selection: Selection) -> dict[int, list[int]]:
        report = restore(
            settings,
            RestoreRequest("bekreftelser", target_topic=f"{topic}.{name}", selection=selection),
        )
        by_partition = {
            p: [int(cast(bytes, dict(h)["backup.source.offset"])) for *_, h, _ in records]
            for p, records in read_topic(brokers, f"{topic}.{name}").items()
        }
        assert report.restored == sum(len(o) for o in by_partition.values())
        return by_partition

    assert restored("two", Selection(offsets={0: (0, 3), 1: (0, 1)})) == {
        0: [0, 1, 2, 3],
        1: [0, 1],
        2: [],
    }
    assert restored("plus", Selection(partitions=(2,), offsets={0: (8, None)})) == {
        0: [8, 9],
        1: [],
        2: list(range(10)),
    }
    assert restored("within", Selection(partitions=(0,), offsets={0: (None, 1)})) == {
        0: [0, 1],
        1: [],
        2: [],
    }


def test_a_selection_that_matches_nothing_fails_in_one_line_and_creates_nothing(
    settings, db, producer, admin, services, database_url
):
    _backed_up_sequence(settings, producer)
    topic = settings.topic(BEKREFTELSER)

    def restore_topics() -> set[str]:
        return {t for t in admin.list_topics(timeout=10).topics if t.startswith(topic)}

    before = restore_topics()
    env = {
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        BEKREFTELSER.topic_env_var: topic,
    }
    result = CliRunner().invoke(
        restore_command, ["--table", "bekreftelser", "--version", "99"], env=env
    )
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: nothing to restore") and "version 99" in result.output
    # Partitions 1 and 2 hold nothing of this backup (all ten records are in partition 0).
    with pytest.raises(RestoreError, match=r"nothing to restore.*partitions 1,2"):
        restore(settings, RestoreRequest("bekreftelser", selection=Selection(partitions=(1, 2))))
    with pytest.raises(RestoreError, match="nothing to restore"):
        restore(settings, RestoreRequest("bekreftelser", selection=Selection(keys=(key(999),))))
    assert restore_topics() == before == {topic}
    assert db.execute("SELECT count(*) FROM restore_runs").fetchone()[0] == 0


def test_a_person_filter_restores_only_their_events(settings, producer, services):
    topic = settings.topic(HENDELSER)
    rng = random.Random(5)
    for i in range(6):
        producer.produce(topic, key=key(i), value=event_value(rng, person=100 + i % 2), partition=1)
    producer.flush(30)
    backup_topic(settings, HENDELSER)
    report = restore(
        settings,
        RestoreRequest("bekreftelse_hendelser", selection=Selection(arbeidssoeker_ids=(101,))),
    )
    restored = read_topic(services["KAFKA_BROKERS"], report.target_topic)[1]
    assert [k for _, k, *_ in restored] == [key(1), key(3), key(5)]
    with pytest.raises(RestoreError, match="no arbeidssoeker_id"):
        restore(
            settings, RestoreRequest("bekreftelser", selection=Selection(arbeidssoeker_ids=(1,)))
        )
