"""Dagster shell of consumer-group positions: a sensor that records them every tick.

It requests no run and reports no event: a tick is one admin pass and one statement
(positions/snapshot.py), and its result is the tick's skip reason, seen on the sensor's
page. Recording every 30 s as Dagster events would grow the event log by thousands of
rows a day for nothing a person reads.
"""

import dagster as dg

from backup_pipeline.errors import ConfigError
from backup_pipeline.positions.snapshot import take_snapshot
from backup_pipeline.settings import load_settings

SENSOR_NAME = "consumer_group_positions"


def positions_interval() -> int:
    """BACKUP_POSITIONS_INTERVAL_SECONDS at definition time; a bad value must not take the
    code location down: the default is used and every tick reports the error."""
    try:
        return load_settings().backup_positions_interval_seconds
    except ConfigError:
        return 30


def positions_tick() -> dg.SkipReason:
    try:
        report = take_snapshot(load_settings())
    except Exception as exc:  # a tick must say what failed, never take the sensor down
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        return dg.SkipReason(f"positions not recorded: {text}")
    return dg.SkipReason(report.summary())


@dg.sensor(
    name=SENSOR_NAME,
    minimum_interval_seconds=positions_interval(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records the committed offsets of the consumer groups reading the backed-up "
    "topics in consumer_group_positions (no run, no event), so a restore can put each group "
    "back where it was (backup-pipeline restore --consumer-groups).",
)
def positions_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    return positions_tick()
