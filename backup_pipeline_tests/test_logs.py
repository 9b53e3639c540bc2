"""Structured logs: one JSON line per event with its fields, and no line per record."""

from __future__ import annotations

import json
import logging

from backup_pipeline import logs
from backup_pipeline.backup.run import backup_topic
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_kafka import good_records, produce


def test_json_lines_carry_extra_and_bound_fields(capsys):
    logs.configure(fmt="json")
    try:
        with logs.bind(run_id="r-123", version=2):
            logging.getLogger("backup_pipeline.test").info(
                "batch written", extra={"topic": "t", "partition": 1, "hwm": 41}
            )
        line = capsys.readouterr().err.strip().splitlines()[-1]
        event = json.loads(line)
        assert event["event"] == "batch written" and event["level"] == "info"
        assert (
            event["run_id"],
            event["version"],
            event["topic"],
            event["partition"],
            event["hwm"],
        ) == ("r-123", 2, "t", 1, 41)
        logging.getLogger("backup_pipeline.test").info("after")
        assert "run_id" not in json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        logging.getLogger().handlers = []


def test_a_pass_logs_a_few_lines_not_one_per_record(settings, producer, caplog):
    spec = spec_for_table("bekreftelser")
    produce(producer, settings.topic(spec), good_records(spec, 2000))
    with caplog.at_level(logging.DEBUG, logger="backup_pipeline"):
        report = backup_topic(settings.model_copy(update={"backup_batch_size": 500}), spec)
    assert report.rows == 2000
    lines = [r for r in caplog.records if r.name.startswith("backup_pipeline")]
    assert 1 <= len(lines) <= 20
