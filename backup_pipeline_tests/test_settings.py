"""One way in from the environment: Settings, validated with one-line errors."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backup_pipeline import failpoints, logs, retry
from backup_pipeline.backup.options import PassOptions
from backup_pipeline.backup.run import backup_topic
from backup_pipeline.errors import ConfigError
from backup_pipeline.settings import Settings, env_setting, load_settings
from backup_pipeline.topics import TOPICS
from backup_pipeline_tests.test_kafka_config import closed_port

PACKAGE = Path(__file__).resolve().parent.parent / "backup_pipeline"
BROKERS = {"KAFKA_BROKERS": "127.0.0.1:9092"}


def test_nothing_but_settings_reads_the_environment() -> None:
    readers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"os\.environ|getenv\(", path.read_text())
    }
    assert readers == {"settings.py"}


BAD = [
    ("BACKUP_PASS_ATTEMPTS", "0", "backup_pass_attempts"),
    ("BACKUP_LOCK_TIMEOUT_SECONDS", "-1", "backup_lock_timeout_seconds"),
    ("BACKUP_LOG_FORMAT", "xml", "backup_log_format"),
    ("BACKUP_VERIFY_SAMPLE", "lots", "backup_verify_sample"),
    ("BACKUP_RUN_RETENTION_DAYS", "0", "backup_run_retention_days"),
    ("BACKUP_SENSOR_INTERVAL_SECONDS", "2", "sensor_interval_seconds"),
    ("BACKUP_PIPELINE_FAILPOINT", "after commit;3", "backup_pipeline_failpoint"),
]


@pytest.mark.parametrize(("variable", "value", "field"), BAD)
def test_a_bad_value_is_one_line_naming_the_variable_without_the_value(
    variable: str, value: str, field: str
) -> None:
    for read in (
        lambda: load_settings({**BROKERS, variable: value}),
        lambda: env_setting(field, object, {variable: value}),
    ):
        with pytest.raises(ConfigError) as caught:
            read()
        message = str(caught.value)
        assert message.startswith(f"invalid configuration: {variable}: ")
        assert "\n" not in message
        assert value not in message


def test_unset_variables_take_the_settings_defaults() -> None:
    settings = load_settings(BROKERS)
    assert settings.sensor_interval_seconds == 30
    for field in (
        "backup_pass_attempts",
        "backup_lock_timeout_seconds",
        "backup_log_format",
        "backup_verify_sample",
        "backup_run_retention_days",
        "sensor_interval_seconds",
        "backup_pipeline_failpoint",
    ):
        assert env_setting(field, object, {}) == getattr(settings, field)


def test_env_setting_applies_the_fields_own_conversion() -> None:
    assert env_setting("backup_log_format", str, {"BACKUP_LOG_FORMAT": " JSON "}) == "json"
    assert env_setting("backup_lock_timeout_seconds", float, {"BACKUP_LOCK_TIMEOUT_SECONDS": "2"})
    assert env_setting("sensor_interval_seconds", int, {"BACKUP_SENSOR_INTERVAL_SECONDS": "5"}) == 5


def test_a_pass_takes_attempts_and_lock_timeout_from_its_settings_not_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The environment says otherwise: only the Settings in hand count.
    monkeypatch.setenv("BACKUP_PASS_ATTEMPTS", "5")
    monkeypatch.setenv("BACKUP_LOCK_TIMEOUT_SECONDS", "0")
    settings = load_settings(
        {
            **BROKERS,
            "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{closed_port()}/nothing",
            "BACKUP_PASS_ATTEMPTS": "1",
            "BACKUP_LOCK_TIMEOUT_SECONDS": "7",
        }
    )
    assert PassOptions.from_settings(settings).lock_timeout == 7.0
    with (
        caplog.at_level(logging.WARNING, logger="backup_pipeline.retry"),
        pytest.raises(retry.DatabaseUnavailableError),
    ):
        backup_topic(settings, TOPICS[0])
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == []


def test_a_bad_log_format_leaves_readable_text_logs_until_settings_report_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_LOG_FORMAT", "xml")
    logs.configure()
    logging.getLogger("backup_pipeline.test").warning("still readable")
    assert "still readable" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="BACKUP_LOG_FORMAT"):
        load_settings({**BROKERS, "BACKUP_LOG_FORMAT": "xml"})


def test_an_unarmed_failpoint_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_PIPELINE_FAILPOINT", "some_other_point:1")
    failpoints.hit("after_commit")  # still alive: only the named point kills
    monkeypatch.delenv("BACKUP_PIPELINE_FAILPOINT")
    failpoints.hit("after_commit")


@pytest.mark.parametrize("window", ["22:00", "25:00-06:00", "22:00-xx", "-"])
def test_a_bad_backfill_window_is_refused_even_under_python_o(window: str) -> None:
    # Validation must not rely on assert, which python -O strips.
    code = (
        "from backup_pipeline.settings import load_settings\n"
        "from backup_pipeline.errors import ConfigError\n"
        "try:\n"
        f"    load_settings({{'KAFKA_BROKERS': 'h:1', 'BACKUP_BACKFILL_WINDOW': {window!r}}})\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("invalid configuration: BACKUP_BACKFILL_WINDOW: ")


def test_a_good_backfill_window_is_kept() -> None:
    settings = load_settings({**BROKERS, "BACKUP_BACKFILL_WINDOW": "22:00-06:00"})
    assert settings.backup_backfill_window == "22:00-06:00"


@pytest.mark.parametrize(
    "bad", [{"BACKUP_SENSOR_INTERVAL_SECONDS": "2"}, {"BACKUP_RUN_RETENTION_DAYS": "many"}]
)
def test_a_bad_value_does_not_take_the_code_location_down(bad: dict[str, str]) -> None:
    # Dagster imports the definitions to load the code location; nothing may parse there.
    result = subprocess.run(
        [sys.executable, "-c", "import backup_pipeline.definitions"],
        env={**BROKERS, **bad, "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_env_setting_field_keeps_its_rules_in_its_type() -> None:
    # env_setting validates a field alone: a field_validator method would be skipped there.
    decorated: set[str] = set()
    for validator in Settings.__pydantic_decorators__.field_validators.values():
        decorated.update(validator.info.fields)
    assert decorated.isdisjoint(field for _, _, field in BAD)
