"""The decode sensor keeps exactly one decode follow run alive, and none when switched off."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from backup_pipeline.orchestration.decoded import JOB, decode_sensor


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", "127.0.0.1:9")
    monkeypatch.setenv("BACKUP_RUN_FOLLOW_SECONDS", "120")
    monkeypatch.delenv("BACKUP_DECODE", raising=False)


def test_no_decode_run_active_starts_a_follow_run(env: None) -> None:
    with dg.instance_for_test() as instance:
        result = decode_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.RunRequest)
    assert result.run_config == {"ops": {"decoded_avro": {"config": {"follow_seconds": 120.0}}}}


def test_an_active_decode_run_is_left_alone(env: None) -> None:
    with dg.instance_for_test() as instance:
        create_run_for_test(instance, job_name=JOB, status=dg.DagsterRunStatus.STARTED)
        result = decode_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason)


def test_backup_decode_false_starts_nothing(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_DECODE", "false")
    with dg.instance_for_test() as instance:
        result = decode_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "BACKUP_DECODE" in str(result.skip_message)
