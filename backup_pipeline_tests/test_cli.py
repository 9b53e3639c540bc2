"""The operator CLI against the real services, and its error messages."""

from __future__ import annotations

import re

import psycopg
from click.testing import CliRunner
from psycopg import sql

from backup_pipeline.cli import main
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline_tests.fix_kafka import good_records, produce

BEKREFTELSER = spec_for_table("bekreftelser")


def cli_env(services, database_url, topic_names) -> dict[str, str]:
    env = {"KAFKA_BROKERS": services["KAFKA_BROKERS"], "DATABASE_URL": database_url}
    for spec in TOPICS:
        env[spec.topic_env_var] = topic_names[spec.table]
    return env


def test_backup_then_status_shows_no_lag(services, database_url, topic_names, producer):
    produce(producer, topic_names["bekreftelser"], good_records(BEKREFTELSER, 30))
    env = cli_env(services, database_url, topic_names)
    runner = CliRunner()
    status = runner.invoke(main, ["status"], env=env)
    assert status.exit_code == 0, status.output
    lag_before = status_rows(status.output, "bekreftelser")
    assert sum(int(row[LAG]) for row in lag_before) == 30
    assert all(row[HWM] == "-" for row in lag_before)  # nothing yet, not NaN

    result = runner.invoke(main, ["backup", "--table", "bekreftelser"], env=env)
    assert result.exit_code == 0, result.output
    assert "30 rows, 0 quarantined" in result.output
    assert "bekreftelser: versions: 1 serving" in result.output

    status = runner.invoke(main, ["status"], env=env)
    rows = status_rows(status.output, "bekreftelser")
    assert len(rows) == 3 and all(row[LAG] == "0" for row in rows)
    assert "bekreftelser: versions: 1 serving; unacknowledged: 0 quarantined" in status.output


# Columns of `status`: table topic version state partition hwm end_offset lag quarantined lost
VERSION, STATE, PARTITION, HWM, END, LAG = 2, 3, 4, 5, 6, 7


def status_rows(output: str, table: str, version: int | None = None) -> list[list[str]]:
    rows = [line.split() for line in output.splitlines() if line.startswith(f"{table} ")]
    rows = [row for row in rows if len(row) == 10]
    for row in rows:
        # Every number an integer: no 2517.0, -1.0 or NaN.
        for cell in row[VERSION:STATE] + row[PARTITION:]:
            assert cell == "-" or re.fullmatch(r"-?\d+", cell), (cell, row)
    return [row for row in rows if version is None or row[VERSION] == str(version)]


def count(db: psycopg.Connection, table: str, version: int) -> int:
    row = db.execute(f"SELECT count(*) FROM {table} WHERE version = %s", (version,)).fetchone()
    assert row is not None
    return int(row[0])


def switch_to_version_2(runner: CliRunner, env: dict[str, str]) -> None:
    """Version 1 backed up, then version 2 re-ingested until it serves (BACKUP_VERSION=2)."""
    assert runner.invoke(main, ["backup", "--table", "bekreftelser"], env=env).exit_code == 0
    result = runner.invoke(
        main,
        ["backup", "--table", "bekreftelser", "--promote"],
        env={**env, "BACKUP_VERSION": "2"},
    )
    assert result.exit_code == 0, result.output
    assert "bekreftelser: versions: 1 retired, 2 serving" in result.output


def test_status_shows_versions_and_reingestion_progress_in_integers(
    services, database_url, topic_names, producer
):
    produce(producer, topic_names["bekreftelser"], good_records(BEKREFTELSER, 30))
    env = cli_env(services, database_url, topic_names)
    runner = CliRunner()
    assert runner.invoke(main, ["backup", "--table", "bekreftelser"], env=env).exit_code == 0
    v2 = {**env, "BACKUP_VERSION": "2", "BACKUP_CAUGHT_UP_MAX_LAG": "0"}

    status = runner.invoke(main, ["status", "--table", "bekreftelser"], env=v2)
    assert status.exit_code == 0, status.output
    assert "versions: 1 serving, 2 re-ingesting 0% (0 of 30 records)" in status.output
    assert [r[STATE] for r in status_rows(status.output, "bekreftelser", 2)] == ["reingesting"] * 3
    assert {r[STATE] for r in status_rows(status.output, "bekreftelser", 1)} == {"serving"}

    result = runner.invoke(
        main, ["backup", "--table", "bekreftelser", "--max-records", "12"], env=v2
    )
    assert result.exit_code == 0, result.output
    assert "versions: 1 serving, 2 re-ingesting 40% (12 of 30 records)" in result.output
    # Without BACKUP_VERSION the CLI follows what is recorded: still re-ingesting 2.
    strict = {**env, "BACKUP_CAUGHT_UP_MAX_LAG": "0"}
    status = runner.invoke(main, ["status"], env=strict)
    assert "bekreftelser: versions: 1 serving, 2 re-ingesting 40%" in status.output
    v2_rows = status_rows(status.output, "bekreftelser", 2)
    assert sum(int(r[LAG]) for r in v2_rows) == 18

    result = runner.invoke(main, ["backup", "--table", "bekreftelser", "--promote"], env=env)
    assert "bekreftelser: versions: 1 retired, 2 serving" in result.output
    status = runner.invoke(main, ["status", "--table", "bekreftelser"], env=env)
    assert [r[VERSION] for r in status_rows(status.output, "bekreftelser")] == ["2"] * 3
    # An explicit version shows that one.
    status = runner.invoke(main, ["status", "--table", "bekreftelser", "--version", "1"], env=env)
    assert {r[STATE] for r in status_rows(status.output, "bekreftelser", 1)} == {"retired"}


def test_backup_without_a_version_writes_the_serving_version_not_the_retired_one(
    services, database_url, topic_names, producer, db
):
    topic = topic_names["bekreftelser"]
    produce(producer, topic, good_records(BEKREFTELSER, 10))
    env = cli_env(services, database_url, topic_names)
    runner = CliRunner()
    switch_to_version_2(runner, env)
    produce(producer, topic, good_records(BEKREFTELSER, 4, seed=2))

    result = runner.invoke(main, ["backup", "--table", "bekreftelser"], env=env)
    assert result.exit_code == 0, result.output
    assert "-> bekreftelser (v2): 4 rows" in result.output
    assert (count(db, "bekreftelser", 1), count(db, "bekreftelser", 2)) == (10, 14)


def test_backup_into_a_retired_version_needs_allow_retired(
    services, database_url, topic_names, producer, db
):
    topic = topic_names["bekreftelser"]
    produce(producer, topic, good_records(BEKREFTELSER, 10))
    env = cli_env(services, database_url, topic_names)
    runner = CliRunner()
    switch_to_version_2(runner, env)
    produce(producer, topic, good_records(BEKREFTELSER, 4, seed=2))

    refused = runner.invoke(main, ["backup", "--table", "bekreftelser", "--version", "1"], env=env)
    assert refused.exit_code == 2
    assert "version 1 of bekreftelser is retired (serving: 2)" in refused.output
    assert "--allow-retired" in refused.output and "Traceback" not in refused.output
    assert count(db, "bekreftelser", 1) == 10

    allowed = runner.invoke(
        main, ["backup", "--table", "bekreftelser", "--version", "1", "--allow-retired"], env=env
    )
    assert allowed.exit_code == 0, allowed.output
    assert count(db, "bekreftelser", 1) == 14
    assert "versions: 1 retired, 2 serving" in allowed.output  # and it stays retired

    # BACKUP_VERSION naming a retired version is refused too, naming what serves.
    stale = runner.invoke(main, ["status"], env={**env, "BACKUP_VERSION": "1"})
    assert stale.exit_code == 2 and "serving: 2" in stale.output


def test_verify_and_restore_default_to_the_serving_version(
    services, database_url, topic_names, producer
):
    topic = topic_names["bekreftelser"]
    produce(producer, topic, good_records(BEKREFTELSER, 10))
    env = cli_env(services, database_url, topic_names)
    runner = CliRunner()
    switch_to_version_2(runner, env)

    verified = runner.invoke(main, ["verify", "--table", "bekreftelser"], env=env)
    assert verified.exit_code == 0, verified.output
    assert "verify bekreftelser v2 " in verified.output
    assert "bekreftelser: versions: 1 retired, 2 serving" in verified.output
    older = runner.invoke(main, ["verify", "--table", "bekreftelser", "--version", "1"], env=env)
    assert "verify bekreftelser v1 " in older.output

    target = f"{topic}.restored-cli"
    restored = runner.invoke(
        main, ["restore", "--table", "bekreftelser", "--target", target], env=env
    )
    assert restored.exit_code == 0, restored.output
    assert "bekreftelser v2 " in restored.output and "10 records restored" in restored.output
    assert "bekreftelser: versions: 1 retired, 2 serving" in restored.output


def test_a_missing_setting_is_one_line_naming_the_variable():
    result = CliRunner().invoke(main, ["status"], env={"KAFKA_BROKERS": ""})
    assert result.exit_code == 2
    assert "KAFKA_BROKERS" in result.output
    assert "Traceback" not in result.output


def test_an_unreachable_database_does_not_leak_the_password(services):
    env = {
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": "postgresql://backup:Sup3rS3cretPw@127.0.0.1:1/backup",
    }
    result = CliRunner().invoke(main, ["migrate"], env=env)
    assert result.exit_code == 2
    assert "cannot connect to PostgreSQL 127.0.0.1:1/backup" in result.output
    assert "Sup3rS3cretPw" not in result.output
    assert "Traceback" not in result.output


def test_migrate_twice_reports_up_to_date(services, empty_database_url):
    env = {"KAFKA_BROKERS": services["KAFKA_BROKERS"], "DATABASE_URL": empty_database_url}
    runner = CliRunner()
    first = runner.invoke(main, ["migrate"], env=env)
    assert first.exit_code == 0 and "from empty to" in first.output
    second = runner.invoke(main, ["migrate"], env=env)
    assert second.exit_code == 0 and "up to date" in second.output


def test_status_on_an_unmigrated_database_says_to_migrate(services, empty_database_url):
    env = {"KAFKA_BROKERS": services["KAFKA_BROKERS"], "DATABASE_URL": empty_database_url}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 2
    assert "backup-pipeline migrate" in result.output and "Traceback" not in result.output


def backed_up(
    services, database_url, topic_names, producer, **settings: str
) -> tuple[CliRunner, dict[str, str], str]:
    """10 records in bekreftelser's topic, backed up by `backup --table bekreftelser` with
    ``settings`` on top of the test's environment: (runner, environment, its output)."""
    produce(producer, topic_names["bekreftelser"], good_records(BEKREFTELSER, 10))
    env = cli_env(services, database_url, topic_names)
    runner = CliRunner()
    result = runner.invoke(main, ["backup", "--table", "bekreftelser"], env={**env, **settings})
    assert result.exit_code == 0, result.output
    return runner, env, result.output


def table_contents(db: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """Every table of the database: its row count and a digest of all its rows."""
    names = [
        name
        for (name,) in db.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
        ).fetchall()
    ]
    contents = {}
    for name in names:
        row = db.execute(
            sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                "FROM {} AS t"
            ).format(sql.Identifier(name))
        ).fetchone()
        assert row is not None
        contents[name] = (int(row[0]), str(row[1]))
    return contents


def test_a_typo_in_backup_version_is_refused_in_one_line_and_changes_nothing(
    services, database_url, topic_names, producer, db
):
    runner, env, _ = backed_up(services, database_url, topic_names, producer)
    # Work a pass would do.
    produce(producer, topic_names["bekreftelser"], good_records(BEKREFTELSER, 4, seed=2))
    before = table_contents(db)

    # Versions start at 1 (the seed's CURRENT_VERSION): 0 is a typo, not a version.
    for command in (["backup"], ["status"]):
        refused = runner.invoke(main, command, env={**env, "BACKUP_VERSION": "0"})
        assert refused.exit_code == 2, refused.output
        assert refused.output.strip().count("\n") == 0, refused.output
        assert "BACKUP_VERSION" in refused.output and "Traceback" not in refused.output
    assert table_contents(db) == before


def test_a_version_below_the_serving_one_is_a_downgrade_refused_without_the_flag(
    services, database_url, topic_names, producer, db
):
    runner, env, output = backed_up(
        services, database_url, topic_names, producer, BACKUP_VERSION="3"
    )
    assert "bekreftelser: versions: 3 serving" in output
    before = table_contents(db)

    v2 = {**env, "BACKUP_VERSION": "2"}
    for command, how in (
        (["backup", "--table", "bekreftelser"], v2),
        (["status", "--table", "bekreftelser"], v2),
        (["backup", "--table", "bekreftelser", "--version", "2"], env),
        (["backup", "--table", "bekreftelser", "--promote"], v2),
    ):
        refused = runner.invoke(main, command, env=how)
        assert refused.exit_code == 2, refused.output
        assert "version 2 of bekreftelser is below the serving version 3" in refused.output
        assert "BACKUP_ALLOW_DOWNGRADE=true" in refused.output
    assert table_contents(db) == before
    unclear = runner.invoke(main, ["status"], env={**v2, "BACKUP_ALLOW_DOWNGRADE": "perhaps"})
    assert unclear.exit_code == 2 and "BACKUP_ALLOW_DOWNGRADE" in unclear.output

    allowed = runner.invoke(
        main,
        ["backup", "--table", "bekreftelser", "--promote"],
        env={**v2, "BACKUP_ALLOW_DOWNGRADE": "true"},
    )
    assert allowed.exit_code == 0, allowed.output
    assert "bekreftelser: versions: 2 serving, 3 retired" in allowed.output
    assert count(db, "bekreftelser", 2) == 10


def test_a_cli_backup_of_a_new_version_moves_the_serving_version_only_with_promote(
    services, database_url, topic_names, producer, db
):
    runner, env, _ = backed_up(services, database_url, topic_names, producer)
    v2 = {**env, "BACKUP_VERSION": "2"}

    result = runner.invoke(main, ["backup", "--table", "bekreftelser"], env=v2)
    assert result.exit_code == 0, result.output
    assert count(db, "bekreftelser", 2) == 10  # backed up under the new version
    assert "bekreftelser: versions: 1 serving, 2 re-ingesting 100%" in result.output
    would = "bekreftelser: --promote would make version 2 serving and retire version 1"
    assert would in result.output
    status = runner.invoke(main, ["status", "--table", "bekreftelser"], env=v2)
    assert status.exit_code == 0 and would in status.output, status.output
    serving = db.execute(
        "SELECT version FROM backup_versions WHERE table_name = 'bekreftelser' "
        "AND state = 'serving'"
    ).fetchall()
    assert serving == [(1,)]

    promoted = runner.invoke(main, ["backup", "--table", "bekreftelser", "--promote"], env=v2)
    assert promoted.exit_code == 0, promoted.output
    assert "bekreftelser: versions: 1 retired, 2 serving" in promoted.output
    assert "would" not in promoted.output
