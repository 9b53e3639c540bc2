"""Secrets never show: the CLI's backup and status output and Dagster's run records carry no
password (Kafka SCRAM, PostgreSQL), wherever they were configured."""

from __future__ import annotations

import uuid
from urllib.parse import quote, urlsplit

import dagster as dg
import psycopg
import pytest
from dagster._serdes import serialize_value

from backup_pipeline.demo.data import DemoRecord
from backup_pipeline.orchestration import assets as asset_defs
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline_tests.fix_kafka import good_records, key, produce
from backup_pipeline_tests.fix_security import (
    cli,
    create_scram_user,
    finish,
    scram_env,
    secret,
    start_cli,
    topic_env,
    verify_full,
    with_params,
    with_user,
)

# Refusals are what these tests are about: don't retry them (backup_pipeline.retry).


BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")


@pytest.fixture
def owned_database_url(services, db_role, empty_database_url) -> str:
    """An empty database owned by db_role (so it runs the migrations), its URL with the
    role's password. (db_role first: the role outlives the database it owns.)"""
    name, password = db_role
    dbname = urlsplit(empty_database_url).path.lstrip("/")
    with psycopg.connect(services["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" OWNER TO "{name}"')
    return with_user(empty_database_url, name, password)


def assert_never_shown(passwords: list[str], **outputs: str) -> None:
    for where, text in outputs.items():
        for password in passwords:
            assert password not in text, f"a password appears in {where}"
            assert quote(password, safe="") not in text, f"a password appears in {where}"


def test_cli_backup_and_status_never_show_the_passwords(
    tls, services, admin, owned_database_url, topic_names, producer
):
    user, kafka_password = f"scram_{uuid.uuid4().hex[:8]}", secret("kafka")
    create_scram_user(admin, tls, user, kafka_password)
    pg_password = urlsplit(owned_database_url).password or ""
    passwords = [pg_password, kafka_password]
    for spec in TOPICS:
        produce(producer, topic_names[spec.table], good_records(spec, 5))
    produce(producer, topic_names[HENDELSER.table], [DemoRecord(key(1), None, [])])  # quarantined
    env = {
        **scram_env(tls, user, kafka_password),
        "DATABASE_URL": verify_full(owned_database_url, tls),
        **topic_env(topic_names),
    }

    runs = {"backup": cli("-v", "backup", env=env)}  # migrates, then backs up
    started = {
        "status": start_cli("-v", "status", env=env),
        # Failure paths: nothing listens on port 1; a wrong password; an unparseable URL
        # holding the password; Kafka refusing the SCRAM password; a bad setting.
        "pg down": start_cli("backup", env={**env, "DATABASE_URL": with_params(
            with_user("postgresql://x@127.0.0.1:1/backup", "u", pg_password), sslmode="require")}),
        "pg auth": start_cli("status", env={**env, "DATABASE_URL": owned_database_url.replace(
            quote(pg_password, safe=""), "wrong" + kafka_password)}),
        "pg url": start_cli("backup", env={**env, "DATABASE_URL": f"pg//u:{pg_password}@h/db"}),
        "kafka auth": start_cli("status", env={**env, "KAFKA_SASL_PASSWORD": "x" + pg_password,
                                         "KAFKA_TIMEOUT_SECONDS": "2"}),
        "config": start_cli("backup", env={**env, "BACKUP_BATCH_SIZE": pg_password}),
    }  # fmt: skip
    runs.update({name: finish(process) for name, process in started.items()})

    assert runs["backup"].returncode == 0, runs["backup"].stderr
    assert "rows" in runs["backup"].stdout and "bekreftelser" in runs["status"].stdout
    for name, run in runs.items():
        if name not in ("backup", "status"):
            assert run.returncode == 2, (name, run.stdout, run.stderr)
            errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, (name, run.stderr)
            assert "Traceback" not in run.stderr, (name, run.stderr)
        assert_never_shown(
            passwords, **{f"{name} stdout": run.stdout, f"{name} stderr": run.stderr}
        )
    assert "BACKUP_BATCH_SIZE" in runs["config"].stderr


def test_dagster_runs_never_record_the_passwords(
    tls, services, admin, owned_database_url, topic_names, producer, monkeypatch, caplog, capfd
):
    user, kafka_password = f"scram_{uuid.uuid4().hex[:8]}", secret("kafka")
    create_scram_user(admin, tls, user, kafka_password)
    pg_password = urlsplit(owned_database_url).password or ""
    for name, value in {
        **scram_env(tls, user, kafka_password),
        "DATABASE_URL": verify_full(owned_database_url, tls),
        **topic_env(topic_names),
    }.items():
        monkeypatch.setenv(name, value)
    produce(producer, topic_names[BEKREFTELSER.table], good_records(BEKREFTELSER, 8))
    caplog.set_level("DEBUG")
    instance = dg.DagsterInstance.ephemeral()

    def run(raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        asset = asset_defs.table_asset(BEKREFTELSER)
        return dg.materialize(
            [asset],
            instance=instance,
            resources={"engine": BackupEngine()},
            raise_on_error=raise_on_error,
        )

    ok = run()
    assert ok.success
    (mat,) = ok.asset_materializations_for_node(BEKREFTELSER.table)
    assert mat.metadata["rows_written"].value == 8
    # Failures: PostgreSQL unreachable (its error message goes into the event log), then
    # an unparseable DATABASE_URL holding the password, then a wrong Kafka password.
    monkeypatch.setenv("DATABASE_URL", with_user("postgresql://x@127.0.0.1:1/b", "u", pg_password))
    failed = [run(raise_on_error=False)]
    monkeypatch.setenv("DATABASE_URL", f"postgres//u:{pg_password}@127.0.0.1/db")
    failed.append(run(raise_on_error=False))
    monkeypatch.setenv("DATABASE_URL", verify_full(owned_database_url, tls))
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "x" + kafka_password)
    monkeypatch.setenv("KAFKA_TIMEOUT_SECONDS", "2")
    failed.append(run(raise_on_error=False))
    assert not any(r.success for r in failed)

    recorded = {}
    for result in [ok, *failed]:
        run_id = result.run_id
        recorded[f"run {run_id}"] = serialize_value(instance.get_run_by_id(run_id))
        recorded[f"events {run_id}"] = "\n".join(
            serialize_value(entry) for entry in instance.all_logs(run_id)
        )
    failure_messages = [
        error.message
        for r in failed
        for e in r.all_events
        if e.is_step_failure and (error := e.step_failure_data.error)
    ]
    assert len(failure_messages) == 3, failure_messages
    out, err = capfd.readouterr()
    assert_never_shown(
        [pg_password, kafka_password],
        logging=caplog.text,
        stdout=out,
        stderr=err,
        failures="\n".join(failure_messages),
        **recorded,
    )
