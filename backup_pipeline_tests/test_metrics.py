"""The metrics endpoint: exact numbers at scrape time, bounded scrapes, no secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from backup_pipeline.cli import main
from backup_pipeline.demo.data import DemoRecord
from backup_pipeline.metrics import server
from backup_pipeline.metrics.scrape import PartitionReading
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_db import scratch_database
from backup_pipeline_tests.fix_kafka import good_records, produce
from backup_pipeline_tests.fix_services import make_settings, service_env
from dev.harness.db import hwms
from dev.harness.kafka import delete_topic, end_offsets
from dev.harness.processes import REPO, free_port, stop_process
from dev.harness.waits import bounded, scaled, wait_until

BEKREFTELSER = spec_for_table("bekreftelser")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=bounded(30)) as response:  # noqa: S310
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def per_partition(samples: Samples, name: str, table: str, version: int = 1) -> dict[int, float]:
    found = {}
    for (sample, labels), value in samples.items():
        label = dict(labels)
        if sample == name and label["table"] == table and label["version"] == str(version):
            found[int(label["partition"])] = value
    return found


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def stored_per_partition(db: psycopg.Connection, table: str) -> dict[int, int]:
    return dict(
        db.execute(
            f"SELECT kafka_partition, count(*) FROM {table} WHERE version = 1 GROUP BY 1"
        ).fetchall()
    )


def newest_stored_time(db: psycopg.Connection, table: str, partition: int) -> float:
    row = db.execute(
        f"SELECT kafka_timestamp FROM {table} WHERE version = 1 AND kafka_partition = %s "
        "ORDER BY kafka_offset DESC LIMIT 1",
        (partition,),
    ).fetchone()
    assert row is not None
    return float(row[0].timestamp())


def test_a_scrape_reports_exact_offsets_lag_and_counts_and_follows_the_next_pass(
    services, settings, topic_names, producer: Producer, db: psycopg.Connection
):
    topic = topic_names["bekreftelser"]
    produce(producer, topic, good_records(BEKREFTELSER, 40))
    # Keys that are not 8 bytes cannot go into record_key: quarantined, one per partition.
    bad = [DemoRecord(key=b"bad", value=b"x", headers=[]) for _ in range(3)]
    for partition in range(3):
        produce(producer, topic, bad[:1], partition=partition)
    env = service_env(services, settings.database_url.get_secret_value(), topic_names)
    runner = CliRunner()
    first = runner.invoke(
        main, ["backup", "--table", "bekreftelser", "--max-records", "20"], env=env
    )
    assert first.exit_code == 0, first.output
    db.execute(
        "INSERT INTO backup_gaps (version, kafka_topic, kafka_partition, first_lost_offset, "
        "last_lost_offset, kind) VALUES (1, %s, 2, 100, 104, 'retention')",
        (topic,),
    )

    with server.start(settings, "127.0.0.1", 0)[0] as running:
        url = f"http://127.0.0.1:{running.port}/metrics"
        before = time.time()
        samples = scrape(url)
        ends = end_offsets(services["KAFKA_BROKERS"], topic)
        marks = hwms(db, topic)
        assert per_partition(samples, "backup_pipeline_end_offset", "bekreftelser") == ends
        assert per_partition(samples, "backup_pipeline_hwm_offset", "bekreftelser") == {
            p: marks.get(p, -1) for p in ends
        }
        lag = per_partition(samples, "backup_pipeline_lag_records", "bekreftelser")
        assert lag == {p: ends[p] - (marks.get(p, -1) + 1) for p in ends}
        assert sum(lag.values()) == 43 - 20
        assert per_partition(samples, "backup_pipeline_rows_stored_total", "bekreftelser") == {
            p: stored_per_partition(db, "bekreftelser").get(p, 0) for p in ends
        }
        quarantined: dict[int, float] = dict(
            db.execute(
                "SELECT kafka_partition, count(*) FROM backup_quarantine GROUP BY 1"
            ).fetchall()
        )
        assert per_partition(samples, "backup_pipeline_quarantined_records", "bekreftelser") == {
            p: quarantined.get(p, 0) for p in ends
        }
        assert per_partition(samples, "backup_pipeline_gaps", "bekreftelser") == {0: 0, 1: 0, 2: 1}
        assert per_partition(samples, "backup_pipeline_lost_records", "bekreftelser")[2] == 5
        # Lag in seconds: now minus the newest stored record's time where records wait.
        seconds = per_partition(samples, "backup_pipeline_lag_seconds", "bekreftelser")
        last = per_partition(
            samples, "backup_pipeline_last_stored_record_timestamp_seconds", "bekreftelser"
        )
        behind = [p for p, records in lag.items() if records and p in last]
        assert behind, lag
        for p, records in lag.items():
            if records == 0:
                assert seconds[p] == 0
            elif p in last:
                assert last[p] == pytest.approx(newest_stored_time(db, "bekreftelser", p))
                assert before - last[p] <= seconds[p] <= time.time() - last[p]
        assert one(samples, "backup_pipeline_up", source="kafka") == 1
        assert one(samples, "backup_pipeline_up", source="postgres") == 1
        info = one(
            samples,
            "backup_pipeline_version_info",
            table="bekreftelser",
            topic=topic,
            version="1",
            state="serving",
        )
        assert info == 1

        # The next pass (and new records) show in the next scrape, counted exactly.
        produce(producer, topic, good_records(BEKREFTELSER, 9, seed=7))
        second = runner.invoke(main, ["backup", "--table", "bekreftelser"], env=env)
        assert second.exit_code == 0, second.output
        samples = scrape(url)
        ends = end_offsets(services["KAFKA_BROKERS"], topic)
        assert per_partition(samples, "backup_pipeline_hwm_offset", "bekreftelser") == {
            p: e - 1 for p, e in ends.items()
        }
        assert set(
            per_partition(samples, "backup_pipeline_lag_records", "bekreftelser").values()
        ) == {0}
        assert set(
            per_partition(samples, "backup_pipeline_lag_seconds", "bekreftelser").values()
        ) == {0}
        rows = per_partition(samples, "backup_pipeline_rows_stored_total", "bekreftelser")
        assert rows == stored_per_partition(db, "bekreftelser")
        assert sum(rows.values()) == 49
        quarantined = per_partition(samples, "backup_pipeline_quarantined_records", "bekreftelser")
        assert quarantined == {0: 1, 1: 1, 2: 1}


def test_a_scrape_with_kafka_unreachable_returns_within_its_time_with_the_error_shown(
    services, settings, topic_names, producer: Producer, database_url: str
):
    topic = topic_names["bekreftelser"]
    produce(producer, topic, good_records(BEKREFTELSER, 12))
    env = service_env(services, database_url, topic_names)
    assert CliRunner().invoke(main, ["backup", "--table", "bekreftelser"], env=env).exit_code == 0
    # Nothing listens there: every Kafka request waits for its timeout.
    unreachable = make_settings(
        {**services, "KAFKA_BROKERS": f"127.0.0.1:{free_port()}"},
        database_url,
        topic_names,
        KAFKA_TIMEOUT_SECONDS="3",
        BACKUP_METRICS_SCRAPE_TIMEOUT_SECONDS="2",
    )
    with server.start(unreachable, "127.0.0.1", 0)[0] as running:
        url = f"http://127.0.0.1:{running.port}/metrics"
        for scrapes in (1, 2):
            started = time.monotonic()
            samples = scrape(url)
            took = time.monotonic() - started
            # Bounded by BACKUP_METRICS_SCRAPE_TIMEOUT_SECONDS, not by 3 s per partition.
            assert took < 2 + scaled(2), took
            assert one(samples, "backup_pipeline_up", source="kafka") == 0
            assert one(samples, "backup_pipeline_up", source="postgres") == 1
            assert one(samples, "backup_pipeline_scrape_errors_total", source="kafka") == scrapes
            # What PostgreSQL knows is still reported; what only Kafka knows is left out.
            assert (
                sum(
                    per_partition(
                        samples, "backup_pipeline_rows_stored_total", "bekreftelser"
                    ).values()
                )
                == 12
            )
            assert per_partition(samples, "backup_pipeline_hwm_offset", "bekreftelser")
            assert per_partition(samples, "backup_pipeline_lag_records", "bekreftelser") == {}
            assert per_partition(samples, "backup_pipeline_end_offset", "bekreftelser") == {}


def test_a_deleted_topic_is_reported_as_a_kafka_error_without_hiding_the_other_topics(
    services, settings, topic_names, producer: Producer, database_url: str, admin
):
    produce(producer, topic_names["bekreftelser"], good_records(BEKREFTELSER, 5))
    env = service_env(services, database_url, topic_names)
    assert CliRunner().invoke(main, ["backup"], env=env).exit_code == 0
    delete_topic(admin, topic_names["bekreftelse_hendelser"])
    with server.start(settings, "127.0.0.1", 0)[0] as running:
        samples = scrape(f"http://127.0.0.1:{running.port}/metrics")
    assert one(samples, "backup_pipeline_up", source="kafka") == 0
    assert per_partition(samples, "backup_pipeline_end_offset", "bekreftelse_hendelser") == {}
    assert per_partition(samples, "backup_pipeline_hwm_offset", "bekreftelse_hendelser")
    ends = end_offsets(services["KAFKA_BROKERS"], topic_names["bekreftelser"])
    assert per_partition(samples, "backup_pipeline_end_offset", "bekreftelser") == ends
    assert per_partition(samples, "backup_pipeline_end_offset", "bekreftelse_paa_vegne_av")


def test_a_scrape_with_postgresql_unreachable_says_so_and_asks_nothing_else(services, topic_names):
    down = make_settings(
        services,
        f"postgresql://backup:secret-pw@127.0.0.1:{free_port()}/backup",
        topic_names,
        BACKUP_METRICS_SCRAPE_TIMEOUT_SECONDS="2",
    )
    with server.start(down, "127.0.0.1", 0)[0] as running:
        url = f"http://127.0.0.1:{running.port}/metrics"
        with urllib.request.urlopen(url, timeout=bounded(30)) as response:
            text = response.read().decode()
    assert 'backup_pipeline_up{source="postgres"} 0.0' in text
    assert 'backup_pipeline_scrape_errors_total{source="postgres"} 1.0' in text
    assert "backup_pipeline_hwm_offset{" not in text
    assert "secret-pw" not in text


def test_failed_runs_are_counted_per_table_and_version_from_dagster_run_storage(
    services, database_url, topic_names, producer: Producer, tmp_path
):
    import dagster as dg

    topic = topic_names["bekreftelser"]
    produce(producer, topic, good_records(BEKREFTELSER, 6))
    env = service_env(services, database_url, topic_names)
    # Every table, so the two others have HWMs (and metrics) too.
    assert CliRunner().invoke(main, ["backup"], env=env).exit_code == 0
    with scratch_database(services, "bp_dagster") as storage_url:
        overrides = {"storage": {"postgres": {"postgres_url": storage_url}}}
        with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
            runs = [
                ("bekreftelser", "1", dg.DagsterRunStatus.FAILURE),
                ("bekreftelser", "1", dg.DagsterRunStatus.FAILURE),
                ("bekreftelser", "1", dg.DagsterRunStatus.SUCCESS),
                ("bekreftelser", "2", dg.DagsterRunStatus.FAILURE),
                ("bekreftelse_hendelser", "1", dg.DagsterRunStatus.CANCELED),
            ]
            for table, version, status in runs:
                instance.add_run(
                    dg.DagsterRun(
                        job_name=f"backup_{table}",
                        run_id=str(uuid.uuid4()),
                        status=status,
                        tags={"backup_pipeline/table": table, "backup_pipeline/version": version},
                    )
                )
        port = free_port()
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "backup-pipeline"), "metrics", "--host", "127.0.0.1"],
            env={
                **os.environ,
                **env,
                "DAGSTER_PG_URL": storage_url,
                "BACKUP_METRICS_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            samples = wait_until(lambda: _try_scrape(url), 60, "the metrics command to serve")
            assert (
                one(samples, "backup_pipeline_runs_failed", table="bekreftelser", version="1") == 2
            )
            assert (
                one(samples, "backup_pipeline_runs_failed", table="bekreftelser", version="2") == 1
            )
            # A table with no failed run reports 0, so an alert can compare.
            zero = one(
                samples, "backup_pipeline_runs_failed", table="bekreftelse_hendelser", version="1"
            )
            assert zero == 0
            assert one(samples, "backup_pipeline_up", source="dagster") == 1
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=bounded(30))
            assert proc.returncode == 0, output
            text = output.decode()
            assert f"serving metrics on http://127.0.0.1:{port}/metrics" in text
            assert "backup:backup" not in text
        finally:
            stop_process(proc)


def _try_scrape(url: str) -> Samples | None:
    try:
        return scrape(url)
    except OSError:
        return None


def test_lag_in_seconds_is_zero_when_caught_up_and_the_newest_stored_records_age_otherwise():
    stored_at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    part = PartitionReading(
        table="bekreftelser",
        topic="t",
        version=1,
        state="serving",
        partition=0,
        hwm=9,
        rows_stored=10,
        quarantined=0,
        gaps=0,
        lost=0,
        last_stored_at=stored_at,
        log_start=0,
        end_offset=10,
    )
    now = stored_at.timestamp() + 600
    assert part.lag == 0 and part.lag_seconds(now) == 0
    behind = PartitionReading(**{**part.__dict__, "end_offset": 15})
    assert behind.lag == 5 and behind.lag_seconds(now) == 600
    unknown = PartitionReading(**{**part.__dict__, "end_offset": None, "log_start": None})
    assert unknown.lag is None and unknown.lag_seconds(now) is None
    never = PartitionReading(**{**behind.__dict__, "hwm": None, "last_stored_at": None})
    assert never.lag == 15 and never.lag_seconds(now) is None
