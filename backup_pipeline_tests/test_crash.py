"""A pass killed with SIGKILL at any moment, then run again, stores every offset once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from backup_pipeline.demo.data import awkward_record, good_record
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests import support
from backup_pipeline_tests.support import end_offsets, hwms, produce
from backup_pipeline_tests.waits import bounded, scaled

HENDELSER = spec_for_table("bekreftelse_hendelser")


def _pass_process(settings_env: dict[str, str], failpoint: str | None) -> subprocess.Popen:
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

    accounted = support.accounted(db, HENDELSER, topic)
    assert len(accounted) == len(set(accounted)) == len(records)  # exactly once
    ends = end_offsets(services["KAFKA_BROKERS"], topic)
    assert hwms(db, topic) == {p: end - 1 for p, end in ends.items()}
    for partition, end in ends.items():
        assert [o for p, o in accounted if p == partition] == list(range(end))
