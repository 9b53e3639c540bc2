"""`backup-pipeline acknowledge` against the real services: who and why recorded, status
counting what is left."""

from __future__ import annotations

import psycopg
from click.testing import CliRunner

from backup_pipeline.cli import main
from backup_pipeline_tests.test_cli import cli_env


def insert_problems(db: psycopg.Connection, topic: str) -> list[int]:
    """Three quarantined records and a gap of 5 lost offsets (version 1); their ids."""
    ids = [
        db.execute(
            "INSERT INTO backup_quarantine (version, kafka_topic, kafka_partition, "
            "kafka_offset, reason) VALUES (1, %s, 0, %s, 'bad json') RETURNING id",
            (topic, offset),
        ).fetchall()[0][0]
        for offset in (3, 7, 9)
    ]
    db.execute(
        "INSERT INTO backup_gaps (version, kafka_topic, kafka_partition, first_lost_offset, "
        "last_lost_offset, kind) VALUES (1, %s, 1, 10, 14, 'retention')",
        (topic,),
    )
    return ids


def test_acknowledge_records_who_and_why_and_status_counts_what_is_left(
    services, database_url, topic_names, db
):
    topic = topic_names["bekreftelser"]
    env = cli_env(services, database_url, topic_names)
    runner = CliRunner()
    ids = insert_problems(db, topic)
    status = runner.invoke(main, ["status", "--table", "bekreftelser"], env=env)
    assert "unacknowledged: 3 quarantined (oldest " in status.output
    assert ", 5 lost offsets (oldest " in status.output

    base = [
        "acknowledge",
        "--table",
        "bekreftelser",
        "--by",
        "kari",
        "--note",
        "known producer bug",
    ]
    first = runner.invoke(main, [*base, "--quarantine", "--up-to-id", str(ids[1])], env=env)
    assert first.exit_code == 0, first.output
    assert f"acknowledged 2 quarantine rows (ids {ids[0]}..{ids[1]})" in first.output
    assert (
        "of bekreftelser version 1" in first.output
        and "by kari: known producer bug" in first.output
    )
    assert "unacknowledged: 1 quarantined" in first.output

    gaps = runner.invoke(main, [*base, "--gaps"], env=env)
    assert gaps.exit_code == 0, gaps.output
    assert "acknowledged 1 gaps rows" in gaps.output and "5 lost offsets" in gaps.output
    status = runner.invoke(main, ["status", "--table", "bekreftelser"], env=env)
    assert "unacknowledged: 1 quarantined (oldest " in status.output
    assert ", 0 lost offsets" in status.output

    # Recorded, never deleted: every row is still there, with who and why.
    rows = db.execute(
        "SELECT id, acknowledged_by, acknowledged_note, acknowledged_at IS NOT NULL "
        "FROM backup_quarantine ORDER BY id"
    ).fetchall()
    assert rows == [
        (ids[0], "kari", "known producer bug", True),
        (ids[1], "kari", "known producer bug", True),
        (ids[2], None, None, False),
    ]


def test_acknowledge_needs_quarantine_or_gaps(services, database_url, topic_names):
    env = cli_env(services, database_url, topic_names)
    result = CliRunner().invoke(
        main, ["acknowledge", "--table", "bekreftelser", "--by", "kari", "--note", "x"], env=env
    )
    assert result.exit_code == 2 and "--quarantine or --gaps" in result.output
