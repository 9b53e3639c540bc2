"""The operator CLI against the real services, and its error messages."""

from __future__ import annotations

from click.testing import CliRunner

from backup_pipeline.cli import main
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline_tests.helpers import good_records, produce

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
    lag_before = [line for line in status.output.splitlines() if "test.bekreftelser." in line]
    assert sum(int(line.split()[6]) for line in lag_before) == 30

    result = runner.invoke(main, ["backup", "--table", "bekreftelser"], env=env)
    assert result.exit_code == 0, result.output
    assert "30 rows, 0 quarantined" in result.output

    status = runner.invoke(main, ["status"], env=env)
    rows = [line.split() for line in status.output.splitlines() if "test.bekreftelser." in line]
    assert len(rows) == 3 and all(row[6] == "0" for row in rows)


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
