"""End to end: Dagster as production runs it (code server, webserver, daemon: the Stack of
dev/harness/stack.py, as `dev/dagster` starts it) on the repository's dagster.yaml, with
real Kafka and PostgreSQL. Sensors launch runs, runs materialize the tables, a version
change re-ingests everything while the old rows stay byte-identical."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backup_pipeline.orchestration import checks
from backup_pipeline.topics import TOPICS
from backup_pipeline_tests.browser import browser_page, dismiss_dialogs
from backup_pipeline_tests.fix_kafka import good_records, produce
from dev.harness.dagster import DagsterServer

RECORDS = 40


@pytest.fixture
def server(new_dagster_server: Callable[..., DagsterServer]) -> DagsterServer:
    return new_dagster_server(BACKUP_RUN_FOLLOW_SECONDS="20", BACKUP_MATERIALIZE_EVERY_SECONDS="1")


def tag(run: dict[str, Any], key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


def rows(db: psycopg.Connection, table: str, version: int) -> list[tuple[Any, ...]]:
    return db.execute(
        f"SELECT * FROM {table} WHERE version = %s ORDER BY kafka_partition, kafka_offset",
        (version,),
    ).fetchall()


def check_the_ui_in_a_browser(server: DagsterServer, screenshot_dir: Path) -> None:
    """Headless Chromium: the lineage shows tables and topics; a table's page shows its row
    count and settled, passing checks (the lag check with the lag), and its events the lag
    and serving version of every sensor tick and the stored rows of every materialization."""
    with browser_page() as page:
        page.goto(f"{server.url}/locations/backup_pipeline/asset-groups/kafka_backup")
        dismiss_dialogs(page)
        for spec in TOPICS:
            page.get_by_text(spec.table, exact=True).first.wait_for()
        page.get_by_text("paw_arbeidssoker_bekreftelse_v1").first.wait_for()
        page.screenshot(path=str(screenshot_dir / "ui-lineage.png"))

        page.goto(f"{server.url}/assets/bekreftelser")
        dismiss_dialogs(page)
        for text in ("Latest materialization", "Latest check results", "Row count"):
            page.get_by_text(text).first.wait_for()
        assert page.get_by_text("Never materialized").count() == 0
        page.screenshot(path=str(screenshot_dir / "ui-asset-bekreftelser.png"))

        page.goto(f"{server.url}/assets/bekreftelser?view=checks")
        dismiss_dialogs(page)
        for name in checks.CHECKS:
            page.get_by_text(name).first.wait_for()
        page.get_by_text("Succeeded").nth(len(checks.CHECKS) - 1).wait_for()
        page.get_by_text(checks.LAG).first.click()
        page.get_by_text("serving_version").first.wait_for()
        page.screenshot(path=str(screenshot_dir / "ui-asset-checks.png"))

        # The newest event may be a materialization; open the newest sensor observation.
        page.goto(
            f"{server.url}/assets/bekreftelser?view=events"
            f"&time={latest_observation_time(server, 'bekreftelser')}"
        )
        dismiss_dialogs(page)
        for text in ("lag", "serving_version", "versions"):
            page.get_by_text(text, exact=True).first.wait_for()
        page.screenshot(path=str(screenshot_dir / "ui-asset-events.png"))


def latest_observation_time(server: DagsterServer, table: str) -> str:
    data = server.graphql(
        """query ($path: [String!]!) { assetOrError(assetKey: {path: $path}) {
          ... on Asset { assetObservations(limit: 1) { timestamp } } } }""",
        {"path": [table]},
    )
    return str(data["assetOrError"]["assetObservations"][0]["timestamp"])


def screenshot_reingestion(server: DagsterServer, screenshot_dir: Path) -> None:
    with browser_page() as page:
        page.goto(
            f"{server.url}/assets/bekreftelser?view=events"
            f"&time={latest_observation_time(server, 'bekreftelser')}"
        )
        dismiss_dialogs(page)
        page.get_by_text("reingest_progress", exact=True).first.wait_for()
        page.screenshot(path=str(screenshot_dir / "ui-reingestion.png"))


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    path = Path(os.environ.get("BACKUP_SCREENSHOT_DIR") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def latest_checks(server: DagsterServer, table: str) -> dict[str, str]:
    """Each check's latest execution status (what the asset page shows)."""
    data = server.graphql(
        """query ($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
          ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks {
            name executionForLatestMaterialization { status } } } } } } }""",
        {"path": [table]},
    )["assetNodeOrError"]["assetChecksOrError"]["checks"]
    return {
        c["name"]: (c["executionForLatestMaterialization"] or {}).get("status", "NONE")
        for c in data
    }


def observations(server: DagsterServer, table: str, label: str) -> list[float]:
    data = server.graphql(
        """query ($path: [String!]!) { assetOrError(assetKey: {path: $path}) { ... on Asset {
          assetObservations(limit: 200) { metadataEntries { label __typename
            ... on IntMetadataEntry { intValue }
            ... on FloatMetadataEntry { floatValue } } } } } }""",
        {"path": [table]},
    )["assetOrError"]["assetObservations"]
    return [
        float(e.get("intValue", e.get("floatValue")) or 0)
        for o in data
        for e in o["metadataEntries"]
        if e["label"] == label
    ]


# The whole life of a deployment: three Dagster starts, a browser, two versions. About
# 100-160 s on an idle machine; the default 300 s is too tight on a busy one.
@pytest.mark.timeout(600)
def test_sensors_back_up_every_topic_and_a_new_version_reingests(
    server, producer, topic_names, db, screenshot_dir
):
    for spec in TOPICS:
        produce(producer, topic_names[spec.table], good_records(spec, RECORDS))
    server.start()

    def all_backed_up() -> bool:
        return all(len(rows(db, spec.table, 1)) == RECORDS for spec in TOPICS)

    server.wait_for(all_backed_up, 240, "the sensors' follow runs to back up every topic")
    # The follow runs are still running: records produced now are stored within seconds.
    for spec in TOPICS:
        produce(producer, topic_names[spec.table], good_records(spec, 10, seed=7))
    server.wait_for(
        lambda: all(len(rows(db, spec.table, 1)) == RECORDS + 10 for spec in TOPICS),
        60,
        "records produced while the runs follow to be stored",
    )

    def reported() -> bool:
        return all(
            sum(
                e.get("intValue", 0)
                for m in server.materializations(spec.table)
                for e in m["metadataEntries"]
                if e["label"] == "rows_written"
            )
            == RECORDS + 10
            for spec in TOPICS
        )

    server.wait_for(reported, 120, "materializations reporting every stored row")
    for spec in TOPICS:
        labels = {
            e["label"]: e for m in server.materializations(spec.table) for e in m["metadataEntries"]
        }
        assert {"dagster/row_count", "serving_version", "rows_written", "last_record_at"} <= set(
            labels
        )
        assert labels["serving_version"]["text"] == "v1"
        assert max(observations(server, spec.table, "lag")) >= 0

    # The sensors report the checks every tick: settled and passing.
    def settled() -> bool:
        statuses = {spec.table: latest_checks(server, spec.table) for spec in TOPICS}
        print(statuses)
        return all(set(s.values()) == {"SUCCEEDED"} for s in statuses.values())

    server.wait_for(settled, 60, "every check to be settled and passing")
    v1_before = {spec.table: rows(db, spec.table, 1) for spec in TOPICS}
    check_the_ui_in_a_browser(server, screenshot_dir)

    # A new version: the code location is redeployed with BACKUP_VERSION=2, first with a
    # backfill window that is not now: the re-ingestion waits (paused), its progress shows.
    hour = datetime.now(UTC).hour
    closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
    server.stop()
    server.start(
        {"BACKUP_VERSION": "2", "BACKUP_CAUGHT_UP_MAX_LAG": "0", "BACKUP_BACKFILL_WINDOW": closed}
    )
    server.wait_for(
        lambda: all(0.0 in observations(server, spec.table, "reingest_percent") for spec in TOPICS),
        120,
        "re-ingestion progress (0 %, waiting for its window) on every table",
    )
    screenshot_reingestion(server, screenshot_dir)
    assert not [r for r in server.runs() if r["jobName"].startswith("reingest_")]
    server.stop()
    server.start({"BACKUP_VERSION": "2", "BACKUP_CAUGHT_UP_MAX_LAG": "0"})

    def serving(table: str) -> int | None:
        row = db.execute(
            "SELECT version FROM backup_versions WHERE table_name = %s AND state = 'serving'",
            (table,),
        ).fetchone()
        return row[0] if row else None

    server.wait_for(
        lambda: all(serving(spec.table) == 2 for spec in TOPICS), 300, "version 2 to serve"
    )
    for spec in TOPICS:
        assert rows(db, spec.table, 1) == v1_before[spec.table]
        assert [r[:3] for r in rows(db, spec.table, 2)] == [
            (2, *r[1:3]) for r in v1_before[spec.table]
        ]
        assert db.execute(f"SELECT count(*) FROM {spec.table}_current").fetchone()[0] == (
            RECORDS + 10
        )
        # The re-ingestion's progress was reported while it ran (it moved: 0 % at first).
        percents = observations(server, spec.table, "reingest_percent")
        assert percents, spec.table
        reingest_runs = [r for r in server.runs() if r["jobName"] == f"reingest_{spec.table}"]
        assert reingest_runs and tag(reingest_runs[0], "backup_pipeline/version") == "2"
