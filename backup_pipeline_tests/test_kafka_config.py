"""librdkafka's log: through Python logging, rate-limited; one line on the CLI."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from confluent_kafka import Consumer, KafkaException

from backup_pipeline.kafka.config import LIBRDKAFKA_LOGGER, RateLimitedLog, consumer_config
from backup_pipeline.orchestration.restore_jobs import restore_job
from backup_pipeline.settings import load_settings
from dev.harness.waits import bounded

BIN = Path(sys.executable).parent


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeated_librdkafka_lines_are_held_back_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("test.rdkafka"), interval=30, clock=clock)
    caplog.set_level(logging.DEBUG, "test.rdkafka")
    for i in range(200):
        clock.now = i * 0.05  # every 50 ms, as a refused connection is retried
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", f"refused {i}")
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-2", "refused")  # own client
    clock.now = 31.0
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "refused again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "librdkafka FAIL [rdkafka#consumer-1] refused 0",
        "librdkafka FAIL [rdkafka#producer-2] refused",
        "librdkafka FAIL [rdkafka#consumer-1] refused again (199 more like it held back)",
    ]
    # Detail, not an alarm: the command's own error says what failed.
    assert {r.levelno for r in caplog.records} == {logging.INFO}


def test_a_real_client_logs_through_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(
        {"KAFKA_BROKERS": f"127.0.0.1:{closed_port()}", "DATABASE_URL": "postgresql://x@y/z"}
    )
    caplog.set_level(logging.INFO, LIBRDKAFKA_LOGGER)
    consumer = Consumer(consumer_config(settings))
    try:
        with pytest.raises(KafkaException):
            consumer.list_topics(timeout=3)
    finally:
        consumer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == LIBRDKAFKA_LOGGER]
    assert lines and "Connection refused" in lines[0]
    # Three seconds of reconnecting: librdkafka tried many times, one line got through.
    assert len(lines) == 1


@pytest.mark.parametrize(
    "command",
    [
        ["restore", "--table", "bekreftelser", "--no-migrate"],
        ["verify", "--table", "bekreftelser"],
        ["backup", "--table", "bekreftelser", "--no-migrate"],
    ],
)
def test_an_unreachable_broker_is_one_line_on_the_terminal(
    command: list[str], database_url: str
) -> None:
    env = {
        **os.environ,
        "KAFKA_BROKERS": f"127.0.0.1:{closed_port()}",
        "DATABASE_URL": database_url,
        "KAFKA_TIMEOUT_SECONDS": "3",
        "BACKUP_PASS_ATTEMPTS": "1",
    }
    done = subprocess.run(
        [str(BIN / "backup-pipeline"), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=bounded(120),
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert output.count("\n") == 1 and output.startswith("error: "), output
    assert "%3|" not in output


def test_dagster_gets_the_librdkafka_detail_in_the_run_log(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", f"127.0.0.1:{closed_port()}")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("KAFKA_TIMEOUT_SECONDS", "3")
    # A CLI test earlier in the same process (CliRunner) set the CLI's levels, which keep
    # this logger at WARNING; a Dagster run process never runs the CLI's logging setup.
    monkeypatch.setattr(logging.getLogger("backup_pipeline.librdkafka"), "level", logging.NOTSET)
    instance = dg.DagsterInstance.ephemeral(
        settings={
            "python_logs": {
                "managed_python_loggers": ["backup_pipeline"],
                "python_log_level": "INFO",  # as in dagster.yaml
            }
        }
    )
    config: dict[str, Any] = {
        "ops": {"restore_topic": {"config": {"table": "bekreftelser", "target_topic": "t"}}}
    }
    result = restore_job.execute_in_process(
        run_config=config, instance=instance, raise_on_error=False
    )
    assert not result.success
    messages = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if e.user_message and "librdkafka" in e.user_message
    ]
    assert messages and "Connection refused" in messages[0]
    assert len(messages) <= 3  # one per client (consumer, admin) at most, not hundreds
