"""Decode passes as they run: killed with SIGKILL at any point they decode every row exactly
once; under Dagster the decoded assets report rows, undecodables and schema ids and fail
their check; fed from Kafka through the raw backup, and by a follow run while rows arrive."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading

from backup_pipeline.decode.catalog import AVRO_TABLES, BEKREFTELSER, PAA_VEGNE_AV
from backup_pipeline.demo.data import SCHEMA_IDS, avro_record
from backup_pipeline_tests.test_decode import TOPIC, decoded, framed, store_raw
from dev.harness.waits import bounded

# ---------------------------------------------------------------- kill -9 ----


def test_decode_passes_killed_at_any_point_decode_every_row_exactly_once(
    db, database_url, services
):
    rng = random.Random(12)
    values = [
        framed(101, "bekreftelse-v1.avsc", avro_record(rng, "bekreftelser")) for _ in range(300)
    ] + [b"broken"] * 20
    rng.shuffle(values)
    store_raw(db, BEKREFTELSER, values[:160], partition=0)
    store_raw(db, BEKREFTELSER, values[160:], partition=1)
    env = {
        **os.environ,
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_TOPIC": TOPIC["bekreftelser"],
        "BACKUP_DECODE_BATCH_SIZE": "25",
    }
    command = [
        sys.executable,
        "-m",
        "backup_pipeline.cli",
        "decode",
        "--table",
        "bekreftelser",
        "--no-migrate",
    ]
    for failpoint in (
        "decode_after_copy:1",
        "decode_before_commit:2",
        "decode_after_copy:5",
        "decode_before_commit:9",
    ):
        proc = subprocess.run(
            command,
            env={**env, "BACKUP_PIPELINE_FAILPOINT": failpoint},
            capture_output=True,
            timeout=bounded(120),
        )
        assert proc.returncode == -signal.SIGKILL, (failpoint, proc.stderr.decode())
    final = subprocess.run(command, env=env, capture_output=True, timeout=bounded(120))
    assert final.returncode == 0, final.stderr.decode()

    raw = set(db.execute("SELECT kafka_partition, kafka_offset FROM bekreftelser").fetchall())
    good = db.execute("SELECT kafka_partition, kafka_offset FROM bekreftelser_decoded").fetchall()
    bad = db.execute(
        "SELECT kafka_partition, kafka_offset, attempts FROM backup_undecodable"
    ).fetchall()
    assert len(good) == 300 and len(bad) == 20
    assert set(good) | {(p, o) for p, o, _ in bad} == raw
    assert not set(good) & {(p, o) for p, o, _ in bad}
    assert {a for *_, a in bad} == {1}  # a killed batch listed nothing for good
    assert dict(
        db.execute(
            "SELECT kafka_partition, kafka_offset FROM backup_decode_hwm "
            "WHERE table_name = 'bekreftelser'"
        ).fetchall()
    ) == {0: 2 * 159, 1: 2 * 159}
    assert SCHEMA_IDS["bekreftelser"][0] == 101


# -------------------------------------------------------------------- Dagster ----


def decode_env(monkeypatch, services, database_url, **extra: str) -> None:
    """The environment an in-process Dagster decode run reads: this test's services,
    database and Avro topics, plus ``extra``."""
    for name, value in {
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_TOPIC": TOPIC["bekreftelser"],
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_PAAVEGNEAV_TOPIC": TOPIC["bekreftelse_paa_vegne_av"],
        **extra,
    }.items():
        monkeypatch.setenv(name, value)


def test_the_decoded_assets_report_rows_undecodables_schema_ids_and_fail_their_check(
    db, database_url, services, monkeypatch
):
    import dagster as dg

    from backup_pipeline.orchestration.decoded import CHECK, decoded_avro, decoded_checks
    from backup_pipeline.orchestration.resources import BackupEngine

    decode_env(monkeypatch, services, database_url)
    rng = random.Random(13)
    store_raw(
        db,
        BEKREFTELSER,
        [framed(101, "bekreftelse-v1.avsc", avro_record(rng, "bekreftelser")) for _ in range(4)]
        + [b"not avro"],
    )
    store_raw(
        db,
        PAA_VEGNE_AV,
        [framed(202, "paavegneav-v1.avsc", avro_record(rng, "bekreftelse_paa_vegne_av"))],
    )

    result = dg.materialize([decoded_avro, decoded_checks], resources={"engine": BackupEngine()})

    assert result.success
    events = {
        mat.asset_key.to_user_string(): mat.metadata
        for m in result.get_asset_materialization_events()
        for mat in [m.materialization]
    }
    bek = events["bekreftelser_decoded"]
    assert bek["dagster/row_count"].value == 4
    assert bek["undecodable"].value == 1
    assert bek["schema_ids_seen"].value == "101"
    assert events["bekreftelse_paa_vegne_av_decoded"]["dagster/row_count"].value == 1
    checks = {
        e.asset_key.to_user_string(): e.passed
        for e in result.get_asset_check_evaluations()
        if e.check_name == CHECK
    }
    assert checks == {"bekreftelser_decoded": False, "bekreftelse_paa_vegne_av_decoded": True}
    # The lineage an analyst reads: every decoded column back to the raw data column.
    spec = next(s for s in decoded_avro.specs if s.key.to_user_string() == "bekreftelser_decoded")
    lineage = spec.metadata["dagster/column_lineage"].deps_by_column
    assert [d.column_name for d in lineage["vil_fortsette_som_arbeidssoeker"]] == ["data"]
    assert [d.asset_key.to_user_string() for d in lineage["kafka_offset"]] == ["bekreftelser"]


# ------------------------------------------------------- from Kafka, end to end ----


def test_records_from_kafka_are_backed_up_raw_and_decoded_one_row_each(
    settings, db, producer, topic_names
):
    from backup_pipeline.backup.run import backup_topic
    from backup_pipeline.decode.run import decode_once
    from backup_pipeline.demo.data import good_record
    from backup_pipeline.topics import spec_for_table
    from backup_pipeline_tests.fix_kafka import produce

    for table in AVRO_TABLES:
        spec = spec_for_table(table.raw_table)
        rng = random.Random(14)
        records = [good_record(rng, spec.value_format, spec.table) for _ in range(120)]
        records[7] = type(records[7])(records[7].key, b"\x00\x00\x00\x03\x09garbage", [])
        produce(producer, topic_names[spec.table], records)
        assert backup_topic(settings, spec).records == 120

    reports = {r.table: r for r in decode_once(settings)}

    for table in AVRO_TABLES:
        assert (reports[table.raw_table].decoded, reports[table.raw_table].undecodable) == (119, 1)
        raw = db.execute(f"SELECT count(*) FROM {table.raw_table}").fetchone()[0]
        joined = db.execute(
            f"SELECT count(*) FROM {table.decoded_table} JOIN {table.raw_table} "
            "USING (version, kafka_partition, kafka_offset)"
        ).fetchone()[0]
        assert (raw, joined) == (120, 119)
        # Both writer versions of the demo producer were met and kept.
        assert set(reports[table.raw_table].schema_ids) == {*SCHEMA_IDS[table.raw_table], 0x0309}


def test_a_decode_follow_run_decodes_rows_that_arrive_while_it_runs_and_judges_its_check(
    db, database_url, services, monkeypatch
):
    import dagster as dg

    from backup_pipeline.orchestration.decoded import CHECK, decoded_avro
    from backup_pipeline.orchestration.resources import BackupEngine

    decode_env(
        monkeypatch,
        services,
        database_url,
        BACKUP_FOLLOW_POLL_SECONDS="0.2",
        BACKUP_DECODE_NICE="0",  # in-process: leave the test process's priority alone
    )
    rng = random.Random(16)
    store_raw(db, BEKREFTELSER, [b"junk"])

    def later() -> None:
        # Raw rows committed while the run follows: it must pick them up.
        threading.Event().wait(1.0)
        values = [framed(101, "bekreftelse-v1.avsc", avro_record(rng, "bekreftelser"))] * 3
        store_raw(db, BEKREFTELSER, values, first_offset=100)

    writer = threading.Thread(target=later)
    writer.start()
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [decoded_avro],
            resources={"engine": BackupEngine()},
            instance=instance,
            run_config={"ops": {"decoded_avro": {"config": {"follow_seconds": 4.0}}}},
        )
        writer.join()
        assert result.success
        key = dg.AssetCheckKey(dg.AssetKey("bekreftelser_decoded"), CHECK)
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])
        event = latest[key].event
        evaluation = event.asset_check_evaluation if event else None
        assert evaluation is not None and evaluation.passed is False  # the junk row
    assert len(decoded(db, BEKREFTELSER)) == 3


# ------------------------------------------------------------- CPU priority ----

NICENESS = """
import os
from backup_pipeline.decode import run
from backup_pipeline.settings import load_settings
before = os.getpriority(os.PRIO_PROCESS, 0)
run.follow(load_settings(), seconds=0)
once = os.getpriority(os.PRIO_PROCESS, 0)
run.follow(load_settings(), seconds=0)
print(before, once, os.getpriority(os.PRIO_PROCESS, 0))
"""


def test_a_decode_follow_run_lowers_its_own_cpu_priority_once_by_the_setting(
    db, database_url, services
):
    # In a child process: niceness cannot be raised back, and the test process keeps its.
    env = {
        **os.environ,
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_TOPIC": TOPIC["bekreftelser"],
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_PAAVEGNEAV_TOPIC": TOPIC["bekreftelse_paa_vegne_av"],
    }
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    for setting, expected in (("7", max(mine, 7)), ("0", mine)):
        proc = subprocess.run(
            [sys.executable, "-c", NICENESS],
            env={**env, "BACKUP_DECODE_NICE": setting},
            capture_output=True,
            text=True,
            timeout=bounded(120),
        )
        assert proc.returncode == 0, proc.stderr
        before, once, twice = map(int, proc.stdout.split())
        assert (before, once, twice) == (mine, expected, expected), setting
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine
