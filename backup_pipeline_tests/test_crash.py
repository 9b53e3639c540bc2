"""A pass killed with SIGKILL at any moment, then run again, stores every offset once; a
Dagster run killed mid-pass is marked failed and a later run completes the backup."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backup_pipeline.demo.data import awkward_record, good_record
from backup_pipeline.topics import TopicSpec, spec_for_table
from backup_pipeline_tests.fix_kafka import produce
from dev.harness import db as harness_db
from dev.harness.dagster import DagsterServer, run_events, run_process_pid
from dev.harness.db import hwms
from dev.harness.kafka import end_offsets, produce_many
from dev.harness.waits import bounded, scaled

BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")


def _pass_process(settings_env: dict[str, str], failpoint: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env, "BACKUP_BATCH_SIZE": "40"}
    env.pop("BACKUP_PIPELINE_FAILPOINT", None)
    if failpoint:
        env["BACKUP_PIPELINE_FAILPOINT"] = failpoint
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backup_pipeline.cli",
            "backup",
            "--table",
            HENDELSER.table,
            "--no-migrate",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_killed_passes_at_many_points_still_store_every_offset_exactly_once(
    services, database_url, topic_names, db, producer
):
    topic = topic_names[HENDELSER.table]
    rng = random.Random(7)
    records = [
        (awkward_record if rng.random() < 0.1 else good_record)(
            rng, HENDELSER.value_format, HENDELSER.table
        )
        for _ in range(1500)
    ]
    produce(producer, topic, records)
    env = {
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        HENDELSER.topic_env_var: topic,
    }

    # Kill at named points: after the rows are copied but before the quarantine/HWM,
    # just before COMMIT, and just after it; each at a different batch.
    failpoints = [
        "rows_copied:1",
        "before_commit:1",
        "after_commit:1",
        "rows_copied:3",
        "before_commit:4",
        "after_commit:6",
    ]
    for failpoint in failpoints:
        proc = _pass_process(env, failpoint)
        proc.communicate(timeout=bounded(120))
        assert proc.returncode == -signal.SIGKILL, failpoint
    # And at arbitrary moments (mid-COPY, mid-fetch, mid-commit), from outside.
    for delay in (0.9, 1.3, 1.7, 2.2):
        proc = _pass_process(env, None)
        time.sleep(scaled(delay))  # not a synchronisation: a moment the pass cannot choose
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=bounded(60))

    final = _pass_process(env, None)
    _out, err = final.communicate(timeout=bounded(180))
    assert final.returncode == 0, err.decode()

    assert_exactly_once(db, services["KAFKA_BROKERS"], HENDELSER, topic, len(records))


def assert_exactly_once(
    db: psycopg.Connection, brokers: str, spec: TopicSpec, topic: str, produced: int
) -> None:
    """Every offset of the topic stored once and the HWMs at the end offsets."""
    accounted = harness_db.accounted(db, spec, topic)
    assert len(accounted) == len(set(accounted)) == produced
    ends = end_offsets(brokers, topic)
    assert hwms(db, topic) == {p: end - 1 for p, end in ends.items()}
    for partition, end in ends.items():
        assert [o for p, o in accounted if p == partition] == list(range(end))


# A Dagster run killed the same way: the run executes in a process of its own.


@pytest.fixture
def dagster_server(new_dagster_server: Callable[..., DagsterServer]) -> DagsterServer:
    # Follow runs hand over to a successor every 10 s, so later runs finish.
    return new_dagster_server(BACKUP_BATCH_SIZE="20", BACKUP_RUN_FOLLOW_SECONDS="10")


def test_a_run_killed_with_sigkill_is_marked_failed_and_the_topic_recovers(
    services, topic_names, db, dagster_server
):
    """SIGKILL of the process that executes a sensor-launched run, mid-pass: Dagster marks
    the run FAILURE, the topic is free again (a retry or the next sensor tick follows it),
    and every offset is stored exactly once."""
    server = dagster_server
    brokers = services["KAFKA_BROKERS"]
    topic = topic_names[BEKREFTELSER.table]
    records = 50_000
    produce_many(brokers, topic, BEKREFTELSER, records)
    server.start()
    job = f"backup_{BEKREFTELSER.table}"

    def committed() -> int:
        return sum(mark + 1 for mark in hwms(db, topic).values())

    def started_run() -> dict[str, Any] | None:
        return next(
            (r for r in server.runs() if r["jobName"] == job and r["status"] == "STARTED"), None
        )

    run = server.wait_for(started_run, 180, "a sensor-launched backup run to start")
    pid = server.wait_for(lambda: run_process_pid(server, run["runId"]), 60, "the run's pid")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "python" in cmdline, cmdline
    server.wait_for(lambda: committed() >= 1000, 60, "the run to commit batches")
    os.kill(pid, signal.SIGKILL)
    killed_at = committed()
    assert killed_at < records, "the run finished before it was killed"

    def failed() -> list[str] | None:
        status, messages = run_events(server, run["runId"])
        return messages if status == "FAILURE" else None

    messages = server.wait_for(failed, 90, "Dagster to mark the killed run failed")
    assert any("signal 9" in m for m in messages), messages

    def recovered() -> list[dict[str, Any]] | None:
        later = [
            r
            for r in server.runs()
            if r["jobName"] == job and r["runId"] != run["runId"] and r["status"] == "SUCCESS"
        ]
        return later if later and committed() == records else None

    later = server.wait_for(recovered, 180, "a later run to finish the backup")
    print(
        f"killed run {run['runId']} at {killed_at} of {records} offsets; later runs: "
        + ", ".join(f"{r['runId']} {r['tags']}" for r in later)
    )
    assert_exactly_once(db, brokers, BEKREFTELSER, topic, records)
