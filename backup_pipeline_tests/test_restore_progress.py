"""Progress of restores and verifies: per partition on a terminal, quiet in a pipe,
and in Dagster's run log."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.orchestration.restore_jobs import restore_job
from backup_pipeline.progress import PROGRESS_EVERY, LogProgress
from backup_pipeline.restore.run import RestoreRequest, restore
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline.verify.compare import verify
from backup_pipeline_tests.fix_kafka import good_records, produce
from dev.harness.waits import bounded

BEKREFTELSER = spec_for_table("bekreftelser")
BIN = Path(sys.executable).parent


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)


def test_the_run_log_gets_a_line_per_tenth_with_rate_and_time_left() -> None:
    now = [0.0]
    log = Lines()
    progress = LogProgress(log, "restore", clock=lambda: now[0])
    for done in range(0, 1001, 50):
        now[0] = done / 100  # 100 records/s
        progress(0, done, 1000)
    assert len(log.lines) == 11  # 0%, 10%, ..., 100%
    assert log.lines[5] == (
        "restore partition 0: 500 of 1,000 records (50%), 100 records/s, 5s left"
    )
    assert log.lines[-1] == "restore partition 0: 1,000 of 1,000 records (100%), 100 records/s"


def backed_up(settings: Any, producer: Any, per_partition: int) -> str:
    topic = settings.topic(BEKREFTELSER)
    records = good_records(BEKREFTELSER, 3 * per_partition, seed=5)
    for p in range(3):
        produce(producer, topic, records[p::3], partition=p)
    backup_topic(settings, BEKREFTELSER)
    return str(topic)


def test_restore_and_verify_report_progress_per_partition(settings: Any, producer: Any) -> None:
    backed_up(settings, producer, per_partition=PROGRESS_EVERY + 20)
    seen: list[tuple[int, int, int]] = []
    report = restore(settings, RestoreRequest("bekreftelser"), progress=lambda *a: seen.append(a))
    total = PROGRESS_EVERY + 20
    # At each partition's start, every PROGRESS_EVERY records and at its end, in order.
    assert seen == [(p, n, total) for p in range(3) for n in (0, PROGRESS_EVERY, total)]
    checked: list[tuple[int, int, int]] = []
    result = verify(
        settings, "bekreftelser", topic=report.target_topic, progress=lambda *a: checked.append(a)
    )
    assert result.ok
    assert [c for c in checked if c[1] == c[2]] == [(p, total, total) for p in range(3)]


def run_in_terminal(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; return what it drew."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, env=env, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + bounded(timeout)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the terminal closed: the command ended
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, chunks
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_shows_bars_and_a_pipe_shows_none(
    settings: Any, producer: Any, services: dict[str, str], database_url: str, topic_names: Any
) -> None:
    topic = backed_up(settings, producer, per_partition=40)
    env = {
        **os.environ,
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        "TERM": "xterm",
        "COLUMNS": "140",
        **{spec.topic_env_var: topic_names[spec.table] for spec in TOPICS},
    }
    cli = str(BIN / "backup-pipeline")
    drawn = run_in_terminal(
        [cli, "restore", "--table", "bekreftelser", "--target", f"{topic}.tty", "--no-migrate"],
        env,
    )
    for p in range(3):
        assert f"restore partition {p}" in drawn
    assert "40/40" in drawn and "rec/s" in drawn and "120 records restored" in drawn
    drawn = run_in_terminal(
        [cli, "verify", "--table", "bekreftelser", "--against", f"{topic}.tty"], env
    )
    assert "verify partition 2" in drawn and "40/40" in drawn and "no differences" in drawn

    piped = subprocess.run(
        [cli, "restore", "--table", "bekreftelser", "--target", f"{topic}.pipe", "--no-migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=bounded(120),
        check=True,
    )
    # Only the log lines and the report: no bar, no carriage returns.
    for drawn in (piped.stdout, piped.stderr):
        assert "restore partition" not in drawn and "rec/s" not in drawn and "\r" not in drawn
    assert "120 records restored" in piped.stdout


def test_the_restore_job_logs_progress_per_partition(
    monkeypatch: Any,
    settings: Any,
    producer: Any,
    services: dict[str, str],
    database_url: str,
    topic_names: Any,
) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", services["KAFKA_BROKERS"])
    monkeypatch.setenv("DATABASE_URL", database_url)
    for spec in TOPICS:
        monkeypatch.setenv(spec.topic_env_var, topic_names[spec.table])
    topic = backed_up(settings, producer, per_partition=10)
    instance = dg.DagsterInstance.ephemeral()
    config = {
        "ops": {
            "restore_topic": {"config": {"table": "bekreftelser", "target_topic": f"{topic}.dg"}}
        }
    }
    result = restore_job.execute_in_process(run_config=config, instance=instance)
    assert result.success
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    for p in range(3):
        assert any(
            m.startswith(f"restore partition {p}: 10 of 10 records (100%)") for m in messages
        ), messages
