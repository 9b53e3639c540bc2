"""The metrics endpoint: exact numbers at scrape time, bounded scrapes, no secrets."""

from __future__ import annotations

import time
import urllib.request

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from backup_pipeline.cli import main
from backup_pipeline.demo.data import DemoRecord
from backup_pipeline.metrics import server
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.support import (
    end_offsets,
    good_records,
    hwms,
    produce,
    service_env,
)
from backup_pipeline_tests.waits import bounded

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
        quarantined = dict(
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
