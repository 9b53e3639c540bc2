"""The Dagster definitions load, and carry one asset per topic and per table."""

import dagster as dg

from backup_pipeline.definitions import defs
from backup_pipeline.topics import TABLES


def test_definitions_validate():
    dg.Definitions.validate_loadable(defs)


def test_every_table_asset_depends_on_its_topic_asset():
    graph = defs.resolve_asset_graph()
    for table in TABLES:
        key = dg.AssetKey(table)
        parents = graph.get(key).parent_keys
        assert len(parents) == 1
        (parent,) = parents
        assert parent.path[0] == "kafka"
        assert "postgres" in graph.get(key).kinds


def test_one_running_sensor_per_table():
    sensors = {s.name: s for s in defs.sensors or []}
    for table in TABLES:
        sensor = sensors[f"{table}_lag_sensor"]
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
