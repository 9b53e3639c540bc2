"""Acknowledging reviewed quarantine rows and gaps, against real PostgreSQL: recorded, never
deleted, and only what was not acknowledged yet counts."""

from __future__ import annotations

import psycopg
import pytest

from backup_pipeline.acknowledge import acknowledge_rows, unacknowledged
from backup_pipeline.errors import BackupError

TOPIC = "t.bekreftelser"


def quarantine(db: psycopg.Connection, offset: int, version: int = 1, topic: str = TOPIC) -> int:
    row = db.execute(
        "INSERT INTO backup_quarantine (version, kafka_topic, kafka_partition, kafka_offset, "
        "reason) VALUES (%s, %s, 0, %s, 'bad json') RETURNING id",
        (version, topic, offset),
    ).fetchone()
    assert row is not None
    return int(row[0])


def gap(db: psycopg.Connection, first: int, last: int, kind: str = "retention") -> None:
    db.execute(
        "INSERT INTO backup_gaps (version, kafka_topic, kafka_partition, first_lost_offset, "
        "last_lost_offset, kind) VALUES (1, %s, 0, %s, %s, %s)",
        (TOPIC, first, last, kind),
    )


def test_nothing_to_acknowledge_on_a_clean_backup(db):
    left = unacknowledged(db, TOPIC, 1)
    assert (left.quarantined, left.lost_offsets, left.any) == (0, 0, False)
    assert left.oldest_quarantined_at is None and left.oldest_gap_detected_at is None
    assert left.describe() == "unacknowledged: 0 quarantined, 0 lost offsets"


def test_acknowledging_quarantine_up_to_an_id_leaves_later_rows_open(db):
    ids = [quarantine(db, offset) for offset in (1, 2, 3)]
    quarantine(db, 4, version=2)  # another version: not touched
    quarantine(db, 5, topic="other")  # another topic: not touched
    assert unacknowledged(db, TOPIC, 1).quarantined == 3

    done = acknowledge_rows(db, "bekreftelser", TOPIC, 1, "quarantine", "kari", "seen", ids[1])
    assert (done.ids, done.records) == (ids[:2], 2)
    left = unacknowledged(db, TOPIC, 1)
    assert left.quarantined == 1 and left.any
    assert unacknowledged(db, TOPIC, 2).quarantined == 1
    assert unacknowledged(db, "other", 1).quarantined == 1

    assert (
        acknowledge_rows(db, "bekreftelser", TOPIC, 1, "quarantine", "ola", "the rest").count == 1
    )
    assert acknowledge_rows(db, "bekreftelser", TOPIC, 1, "quarantine", "ola", "again").count == 0
    rows = db.execute(
        "SELECT acknowledged_by, acknowledged_note FROM backup_quarantine "
        "WHERE kafka_topic = %s AND version = 1 ORDER BY id",
        (TOPIC,),
    ).fetchall()
    # The first acknowledgement of a row is kept; nothing was deleted.
    assert rows == [("kari", "seen"), ("kari", "seen"), ("ola", "the rest")]


def test_acknowledging_gaps_counts_lost_offsets_of_retention_gaps_only(db):
    gap(db, 10, 14)
    gap(db, 20, 21)
    gap(db, 0, 9, kind="before_start")  # gone before this version began: not a loss
    left = unacknowledged(db, TOPIC, 1)
    assert left.lost_offsets == 7 and left.oldest_gap_detected_at is not None
    done = acknowledge_rows(db, "bekreftelser", TOPIC, 1, "gaps", "kari", "retention was 1d")
    assert done.count == 3 and done.records == 17
    assert unacknowledged(db, TOPIC, 1).lost_offsets == 0
    assert db.execute("SELECT count(*) FROM backup_gaps").fetchone() == (3,)


def test_an_acknowledgement_needs_who_and_why(db):
    quarantine(db, 1)
    with pytest.raises(BackupError, match="--by"):
        acknowledge_rows(db, "bekreftelser", TOPIC, 1, "quarantine", " ", "note")
    with pytest.raises(BackupError, match="--note"):
        acknowledge_rows(db, "bekreftelser", TOPIC, 1, "quarantine", "kari", "")
    assert unacknowledged(db, TOPIC, 1).quarantined == 1


def test_acknowledge_works_inside_a_callers_transaction_too(database_url):
    with psycopg.connect(database_url) as conn:  # not autocommit
        quarantine(conn, 1)
        conn.commit()
        assert (
            acknowledge_rows(conn, "bekreftelser", TOPIC, 1, "quarantine", "kari", "ok").count == 1
        )
    with psycopg.connect(database_url) as conn:
        assert unacknowledged(conn, TOPIC, 1).quarantined == 0
