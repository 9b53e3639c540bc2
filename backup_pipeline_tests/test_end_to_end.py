"""End to end: `dagster dev` (webserver + daemon) on the repository's dagster.yaml, with
real Kafka and PostgreSQL. Sensors launch runs, runs materialize the tables, a version
change re-ingests everything while the old rows stay byte-identical."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backup_pipeline.topics import TOPICS
from backup_pipeline_tests.browser import browser_page, dismiss_dialogs
from backup_pipeline_tests.conftest import _admin_execute, _with_dbname
from backup_pipeline_tests.dagster_server import DagsterServer
from backup_pipeline_tests.helpers import good_records, produce

RECORDS = 40


@pytest.fixture
def dagster_storage_url(services) -> Iterator[str]:
    name = f"bp_dagster_{uuid.uuid4().hex[:10]}"
    _admin_execute(services, f'CREATE DATABASE "{name}"')
    yield _with_dbname(services["DATABASE_URL"], name)
    _admin_execute(services, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def server(
    tmp_path, services, database_url, topic_names, dagster_storage_url
) -> Iterator[DagsterServer]:
    env = {
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        "DAGSTER_PG_URL": dagster_storage_url,
        "BACKUP_SENSOR_INTERVAL_SECONDS": "5",
        "BACKUP_VERSION": "1",
    }
    for spec in TOPICS:
        env[spec.topic_env_var] = topic_names[spec.table]
    server = DagsterServer(tmp_path / "dagster_home", env)
    yield server
    server.stop()


def tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


def successful_runs(server: DagsterServer, version: str) -> dict[str, list[dict]]:
    by_table: dict[str, list[dict]] = {}
    for run in server.runs():
        if run["status"] == "SUCCESS" and tag(run, "backup_pipeline/version") == version:
            by_table.setdefault(tag(run, "backup_pipeline/table") or "", []).append(run)
    return by_table


def rows(db: psycopg.Connection, table: str, version: int) -> list[tuple]:
    return db.execute(
        f"SELECT * FROM {table} WHERE version = %s ORDER BY kafka_partition, kafka_offset",
        (version,),
    ).fetchall()


def check_the_ui_in_a_browser(server: DagsterServer, screenshot_dir: Path) -> None:
    """Headless Chromium finds the three table assets, their topics and a materialization."""
    with browser_page() as page:
        page.goto(f"{server.url}/locations/backup_pipeline/asset-groups/kafka_backup")
        dismiss_dialogs(page)
        for spec in TOPICS:
            page.get_by_text(spec.table, exact=True).first.wait_for(timeout=60_000)
        page.get_by_text("paw_arbeidssoker_bekreftelse_v1").first.wait_for(timeout=30_000)
        page.screenshot(path=str(screenshot_dir / "asset-lineage.png"))
        page.goto(f"{server.url}/assets/bekreftelser")
        dismiss_dialogs(page)
        page.get_by_text("Latest materialization").first.wait_for(timeout=30_000)
        page.get_by_text("rows_written").first.wait_for(timeout=60_000)
        assert page.get_by_text("Never materialized").count() == 0
        page.screenshot(path=str(screenshot_dir / "asset-bekreftelser.png"), full_page=True)


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    path = Path(os.environ.get("BACKUP_SCREENSHOT_DIR") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_sensors_back_up_every_topic_and_a_new_version_reingests(
    server, producer, topic_names, db, screenshot_dir
):
    for spec in TOPICS:
        produce(producer, topic_names[spec.table], good_records(spec, RECORDS))
    server.start()

    def all_backed_up() -> bool:
        return all(len(rows(db, spec.table, 1)) == RECORDS for spec in TOPICS) and set(
            successful_runs(server, "1")
        ) >= {spec.table for spec in TOPICS}

    server.wait_for(all_backed_up, 240, "the sensors' runs to back up every topic")
    runs = successful_runs(server, "1")
    assert set(runs) >= {spec.table for spec in TOPICS}
    for spec in TOPICS:
        mats = server.materializations(spec.table)
        assert mats, spec.table
        labels = {e["label"]: e for m in mats for e in m["metadataEntries"]}
        assert {
            "rows_written",
            "lag_after",
            "records_per_second",
            "quarantined",
            "partitions",
        } <= set(labels)
        assert (
            sum(
                e.get("intValue", 0)
                for m in mats
                for e in m["metadataEntries"]
                if e["label"] == "rows_written"
            )
            == RECORDS
        )
    v1_before = {spec.table: rows(db, spec.table, 1) for spec in TOPICS}
    check_the_ui_in_a_browser(server, screenshot_dir)

    # A new version: the code location is redeployed with BACKUP_VERSION=2.
    server.stop()
    server.start(
        {
            "BACKUP_VERSION": "2",
            "BACKUP_BACKFILL_RUN_RECORDS": "25",
            "BACKUP_CAUGHT_UP_MAX_LAG": "0",
        }
    )

    def reingested() -> bool:
        done = successful_runs(server, "2")
        return all(
            len(rows(db, spec.table, 2)) == RECORDS and len(done.get(spec.table, [])) >= 2
            for spec in TOPICS
        )

    server.wait_for(reingested, 300, "re-ingestion of version 2")
    runs_v2 = successful_runs(server, "2")
    for spec in TOPICS:
        # Capped runs: 40 records at 25 per run take at least two runs per table.
        reingest = [
            r for r in runs_v2.get(spec.table, []) if tag(r, "backup_pipeline/reingest") == "v2"
        ]
        assert len(reingest) >= 2, spec.table
        assert rows(db, spec.table, 1) == v1_before[spec.table]
        assert [r[:3] for r in rows(db, spec.table, 2)] == [
            (2, *r[1:3]) for r in v1_before[spec.table]
        ]
