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


def test_a_backup_and_a_reingest_sensor_per_table_both_running():
    sensors = {s.name: s for s in defs.sensors or []}
    for table in TABLES:
        for kind in ("backup", "reingest"):
            sensor = sensors[f"{table}_{kind}_sensor"]
            assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_the_materialize_button_runs_in_process():
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "in_process"


def test_the_sample_verify_check_sits_on_the_topic_so_materialize_leaves_it_out():
    from backup_pipeline.orchestration import checks

    keys = defs.resolve_asset_graph().asset_check_keys
    for table in TABLES:
        on_table = {k.name for k in keys if k.asset_key == dg.AssetKey(table)}
        assert on_table == set(checks.CHECKS)
    assert {k.name for k in keys if k.asset_key.path[0] == "kafka"} == {"matches_topic"}
