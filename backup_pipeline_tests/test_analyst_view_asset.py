"""The typed JSON view as a Dagster asset downstream of its raw table: column schema and
lineage in its definition, and a materialization that reports what analysts find."""

from __future__ import annotations

import json

import dagster as dg

from backup_pipeline import typed_views
from backup_pipeline.definitions import defs
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.topics import TOPICS

VIEW = typed_views.JSON_TYPED


def test_the_view_is_downstream_of_its_raw_table_with_column_lineage_to_its_columns():
    asset = defs.get_assets_def(VIEW.name)
    key = dg.AssetKey(VIEW.name)
    assert dg.AssetKey(VIEW.raw_table) in asset.asset_deps[key]
    metadata = asset.specs_by_key[key].metadata
    schema = metadata["dagster/column_schema"]
    assert [(c.name, c.type, c.description) for c in schema.columns] == [
        (c.name, c.pg_type, c.description) for c in VIEW.columns
    ]
    raw_schema = (
        defs.get_assets_def(VIEW.raw_table)
        .specs_by_key[dg.AssetKey(VIEW.raw_table)]
        .metadata["dagster/column_schema"]
    )
    raw_columns = {c.name for c in raw_schema.columns}
    lineage = metadata["dagster/column_lineage"].deps_by_column
    assert set(lineage) == {c.name for c in VIEW.columns}
    for column, deps in lineage.items():
        assert [d.asset_key for d in deps] == [dg.AssetKey(VIEW.raw_table)], column
        assert {d.column_name for d in deps} <= raw_columns, column
    assert lineage["hendelse_tidspunkt"][0].column_name == "data"
    assert VIEW.current in (asset.descriptions_by_key[key] or "")


def test_materializing_reports_rows_types_and_unparsed_values(
    monkeypatch, services, database_url, db
):
    monkeypatch.setenv("KAFKA_BROKERS", services["KAFKA_BROKERS"])
    monkeypatch.setenv("DATABASE_URL", database_url)
    for spec in TOPICS:
        monkeypatch.delenv(spec.topic_env_var, raising=False)
    events = [
        {"hendelseType": "bekreftelse.tilgjengelig", "hendelseTidspunkt": "2025-01-01T00:00:00Z"},
        {"hendelseType": "bekreftelse.tilgjengelig", "hendelseTidspunkt": "kl. 12"},
        {"hendelseType": "bekreftelse.noe_nytt", "hendelseTidspunkt": 1735689600.5},
    ]
    for offset, event in enumerate(events):
        db.execute(
            "INSERT INTO bekreftelse_hendelser (version, kafka_partition, kafka_offset,"
            " record_key, arbeidssoeker_id, data) VALUES (1, 0, %s, 1, 1, %s::jsonb)",
            (offset, json.dumps(event)),
        )
    db.execute(
        "INSERT INTO backup_versions (table_name, version, kafka_topic, state)"
        " VALUES ('bekreftelse_hendelser', 1, 't', 'serving')"
    )
    result = dg.materialize(
        [defs.get_assets_def(VIEW.name)],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"engine": BackupEngine()},
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node(VIEW.name)
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["dagster/row_count"] == 3
    assert metadata["rows_with_unparsed_values"] == 1
    assert metadata["rows_of_unknown_event_types"] == 1
    assert metadata["rows_by_event_type"] == {
        "bekreftelse.tilgjengelig": 2,
        "bekreftelse.noe_nytt": 1,
    }
    assert metadata["serving_version"] == "v1"
