"""The typed view of the JSON events as an asset downstream of its raw table.

A view needs no materialization to be current: materializing it takes a snapshot of what
an analyst finds there (rows, event types, values that did not parse) and records the
column lineage, back to the raw table's columns, with the materialization.
"""

import dagster as dg

from backup_pipeline import typed_views
from backup_pipeline.orchestration.assets import GROUP
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.typed_views import TypedView


def column_schema(view: TypedView) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(c.name, c.pg_type, description=c.description) for c in view.columns]
    )


def column_lineage(view: TypedView) -> dg.TableColumnLineage:
    raw = dg.AssetKey(view.raw_table)
    return dg.TableColumnLineage(
        deps_by_column={
            c.name: [dg.TableColumnDep(asset_key=raw, column_name=c.source)] for c in view.columns
        }
    )


def typed_view_asset(view: TypedView) -> dg.AssetsDefinition:
    @dg.asset(
        name=view.name,
        deps=[dg.AssetKey(view.raw_table)],
        kinds={"postgres"},
        group_name=GROUP,
        description=f"{view.description}\n\nQuery `{view.current}` (the serving version; "
        f"`{view.name}` has every version), e.g. `SELECT hendelse_type, count(*) FROM "
        f"{view.current} GROUP BY 1`, or from Python `backup_pipeline.analysts.read_frame("
        f'conn, "{view.name}", start=..., end=...)`. See docs/analysts.md. Materialize '
        "to record a snapshot of its rows; the view itself is always current.",
        metadata={
            "dagster/table_name": f"public.{view.current}",
            "dagster/column_schema": column_schema(view),
            "dagster/column_lineage": column_lineage(view),
        },
    )
    def _view(engine: BackupEngine) -> dg.MaterializeResult:
        engine.prepare()
        with engine.connection() as conn:
            summary = typed_views.summarize(conn, view)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": summary.rows,
                "dagster/column_lineage": column_lineage(view),
                "serving_version": dg.MetadataValue.text(
                    "none" if summary.serving_version is None else f"v{summary.serving_version}"
                ),
                "rows_with_unparsed_values": summary.unparsed_rows,
                "rows_of_unknown_event_types": summary.unknown_type_rows,
                "rows_by_event_type": dg.MetadataValue.json(summary.by_type),
            }
        )

    return _view


analyst_view_assets = [typed_view_asset(typed_views.JSON_TYPED)]
