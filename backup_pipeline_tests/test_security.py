"""Security against the real services: TLS to Kafka (client certificates, SCRAM) and to
PostgreSQL, secrets that never show, and the least privileges a backup pass needs.

dev/services gives Kafka an SSL listener that requires a client certificate and a SASL_SSL
(SCRAM) listener, PostgreSQL ssl=on, and the certificates of dev/tls/make-certs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import dagster as dg
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from dagster._serdes import serialize_value
from psycopg import sql

from backup_pipeline import db as db_module
from backup_pipeline.backup.pass_ import backup_topic
from backup_pipeline.demo.data import DemoRecord
from backup_pipeline.errors import BackupError, ConfigError, KafkaUnavailableError
from backup_pipeline.kafka_config import CONSUMER_GROUP_ID, consumer_config
from backup_pipeline.migrate import migrate
from backup_pipeline.orchestration import assets as asset_defs
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline_tests.fix_kafka import good_records, key, produce
from dev.harness.db import hwms
from dev.harness.processes import REPO
from dev.harness.waits import bounded, scaled, wait_until

BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")
TLS_EXPORTS = ("KAFKA_SSL_BROKERS", "KAFKA_SASL_SSL_BROKERS", "BACKUP_DEV_TLS_DIR")


@pytest.fixture(autouse=True)
def _one_attempt_per_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # Refusals are what these tests are about: don't retry them (backup_pipeline.retry).
    monkeypatch.setenv("BACKUP_PASS_ATTEMPTS", "1")


@dataclass(frozen=True)
class Tls:
    ssl_brokers: str  # requires a client certificate
    sasl_ssl_brokers: str  # SCRAM over TLS
    dir: Path

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.pem")

    @property
    def client_cert(self) -> str:
        return str(self.dir / "client.pem")

    @property
    def client_key(self) -> str:
        return str(self.dir / "client.key")

    def ca_key(self) -> str:
        return str(self.dir / "ca.key")


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def tls(services: dict[str, str]) -> Tls:
    """The TLS side of the dev services (export lines of `dev/services up`)."""
    values = {name: os.environ.get(name, "") for name in TLS_EXPORTS}
    if not all(values.values()):  # a shell that exported only the plain URLs
        out = subprocess.run(
            [str(REPO / "dev" / "services"), "env"], check=True, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if name in values and not values[name]:
                values[name] = value
    found = Tls(
        values["KAFKA_SSL_BROKERS"],
        values["KAFKA_SASL_SSL_BROKERS"],
        Path(values["BACKUP_DEV_TLS_DIR"]),
    )
    missing = [f"{found.dir}/ca.pem"] if not Path(found.ca).is_file() else []
    missing += [b for b in (found.ssl_brokers, found.sasl_ssl_brokers) if not _port_open(b)]
    with psycopg.connect(services["DATABASE_URL"]) as conn:
        if conn.execute("SHOW ssl").fetchone() != ("on",):
            missing.append("PostgreSQL ssl=on")
    if missing:
        pytest.fail(
            f"the dev services run without TLS ({', '.join(missing)} missing): they were "
            "started before dev/services had TLS; restart them (dev/services down; "
            "dev/services up)",
            pytrace=False,
        )
    return found


def with_params(url: str, **params: str) -> str:
    """``url`` with libpq query parameters added (URL form, as DATABASE_URL usually is)."""
    parts = urlsplit(url)
    query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in params.items())
    return urlunsplit(parts._replace(query="&".join(q for q in (parts.query, query) if q)))


def with_user(url: str, user: str, password: str | None = None) -> str:
    parts = urlsplit(url)
    auth = quote(user) + (f":{quote(password, safe='')}" if password is not None else "")
    return urlunsplit(parts._replace(netloc=f"{auth}@{parts.hostname}:{parts.port}"))


def verify_full(url: str, tls: Tls, **extra: str) -> str:
    return with_params(url, sslmode="verify-full", sslrootcert=tls.ca, **extra)


def topic_env(topic_names: dict[str, str]) -> dict[str, str]:
    return {spec.topic_env_var: topic_names[spec.table] for spec in TOPICS}


def mtls_env(tls: Tls) -> dict[str, str]:
    return {
        "KAFKA_BROKERS": tls.ssl_brokers,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_CA_PATH": tls.ca,
        "KAFKA_CERTIFICATE_PATH": tls.client_cert,
        "KAFKA_PRIVATE_KEY_PATH": tls.client_key,
    }


def scram_env(tls: Tls, user: str, password: str) -> dict[str, str]:
    return {
        "KAFKA_BROKERS": tls.sasl_ssl_brokers,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_CA_PATH": tls.ca,
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": user,
        "KAFKA_SASL_PASSWORD": password,
    }


def secret(label: str) -> str:
    """A password nobody could mistake for anything else in a log."""
    return f"Sekret-{label}-{uuid.uuid4().hex}"


def create_scram_user(admin: AdminClient, tls: Tls, user: str, password: str) -> None:
    credential = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    upsert = UserScramCredentialUpsertion(user, credential, password.encode())
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result()
    # The broker learns the credential from the metadata log a moment later.
    probe = AdminClient(
        {
            "bootstrap.servers": tls.sasl_ssl_brokers,
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": tls.ca,
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password,
        }
    )

    def usable() -> bool:
        try:
            probe.list_topics(timeout=2)
        except Exception:
            return False
        return True

    wait_until(usable, 15, f"SCRAM user {user} to become usable", interval=0)


def count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def one_line_error(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


# ------------------------------------------------------------------ Kafka TLS ----


def test_a_backup_pass_through_the_mutual_tls_listener(
    tls, services, database_url, topic_names, producer, db
):
    produce(producer, topic_names[BEKREFTELSER.table], good_records(BEKREFTELSER, 30))
    settings = load_settings(
        {**mtls_env(tls), "DATABASE_URL": database_url, **topic_env(topic_names)}
    )
    config = consumer_config(settings)
    assert config["ssl.certificate.location"] == tls.client_cert
    assert config["ssl.key.location"] == tls.client_key
    assert config["ssl.ca.location"] == tls.ca

    report = backup_topic(settings, BEKREFTELSER)

    assert report.rows == 30 and report.lag == 0 and not report.errors
    assert count(db, "bekreftelser") == 30
    assert sum(h + 1 for h in hwms(db, topic_names[BEKREFTELSER.table]).values()) == 30


def test_a_client_without_a_certificate_is_refused(tls, services, database_url, topic_names):
    env = mtls_env(tls)
    del env["KAFKA_CERTIFICATE_PATH"], env["KAFKA_PRIVATE_KEY_PATH"]
    settings = load_settings(
        {
            **env,
            "KAFKA_TIMEOUT_SECONDS": "2",
            "DATABASE_URL": database_url,
            **topic_env(topic_names),
        }
    )
    with pytest.raises(KafkaUnavailableError) as refused:
        backup_topic(settings, BEKREFTELSER)
    message = one_line_error(refused.value)
    assert topic_names[BEKREFTELSER.table] in message and "transport failure" in message


def test_scram_over_tls_backs_up_and_a_wrong_password_is_refused(
    tls, services, admin, database_url, topic_names, producer, db
):
    user, password = f"scram_{uuid.uuid4().hex[:8]}", secret("scram")
    create_scram_user(admin, tls, user, password)
    produce(producer, topic_names[HENDELSER.table], good_records(HENDELSER, 12))
    base = {"DATABASE_URL": database_url, **topic_env(topic_names)}

    report = backup_topic(load_settings({**scram_env(tls, user, password), **base}), HENDELSER)
    assert report.rows == 12 and count(db, "bekreftelse_hendelser") == 12

    wrong = load_settings(
        {**scram_env(tls, user, "not-" + password), "KAFKA_TIMEOUT_SECONDS": "3", **base}
    )
    with pytest.raises(KafkaUnavailableError) as refused:
        backup_topic(wrong, HENDELSER)
    assert password not in one_line_error(refused.value)


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"KAFKA_PRIVATE_KEY_PATH": "/nonexistent/client.key"}, "KAFKA_PRIVATE_KEY_PATH"),
        ({"KAFKA_CA_PATH": "/nonexistent/ca.pem"}, "KAFKA_CA_PATH"),
        ({"KAFKA_PRIVATE_KEY_PATH": ""}, "KAFKA_PRIVATE_KEY_PATH"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_kafka_tls_configuration_errors_name_the_variable(tls, change, variable):
    env = {**mtls_env(tls), **change}
    with pytest.raises(ConfigError) as bad:
        consumer_config(load_settings(env))
    assert variable in one_line_error(bad.value)


def test_sasl_needs_a_known_mechanism_and_both_credentials(tls):
    env = scram_env(tls, "someone", "pw-not-shown-123")
    with pytest.raises(ConfigError) as bad:
        load_settings({**env, "KAFKA_SASL_MECHANISM": "GSSAPI"})
    assert "KAFKA_SASL_MECHANISM" in one_line_error(bad.value)
    del env["KAFKA_SASL_PASSWORD"]
    with pytest.raises(ConfigError) as bad:
        consumer_config(load_settings(env))
    assert "KAFKA_SASL_PASSWORD" in one_line_error(bad.value)


# ------------------------------------------------------------- PostgreSQL TLS ----


def test_migrations_and_a_backup_over_verify_full_tls(
    tls, services, empty_database_url, topic_names, producer
):
    produce(producer, topic_names[BEKREFTELSER.table], good_records(BEKREFTELSER, 10))
    url = verify_full(empty_database_url, tls)
    settings = load_settings(
        {"KAFKA_BROKERS": services["KAFKA_BROKERS"], "DATABASE_URL": url, **topic_env(topic_names)}
    )
    before, after = migrate(settings)
    assert before is None and after
    report = backup_topic(settings, BEKREFTELSER)
    assert report.rows == 10
    with db_module.connect(settings) as conn:
        assert conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() == (True,)
        assert count(conn, "bekreftelser") == 10


def test_client_certificate_login_to_postgresql(tls, services, database_url):
    # dev/services lets the role backup_pipeline log in with the dev client certificate.
    url = verify_full(
        with_user(database_url, "backup_pipeline"),
        tls,
        sslcert=tls.client_cert,
        sslkey=tls.client_key,
    )
    settings = load_settings({"KAFKA_BROKERS": services["KAFKA_BROKERS"], "DATABASE_URL": url})
    with db_module.connect(settings) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("backup_pipeline",)
    no_cert = load_settings(
        {
            "KAFKA_BROKERS": services["KAFKA_BROKERS"],
            "DATABASE_URL": verify_full(with_user(database_url, "backup_pipeline"), tls),
        }
    )
    with pytest.raises(BackupError) as refused:
        db_module.connect(no_cert)
    assert "certificate" in one_line_error(refused.value)


def test_a_server_certificate_from_another_ca_is_refused(tls, services, database_url, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=not the dev CA", "-keyout", str(tmp_path / "k"), "-out", str(other_ca)],
        check=True, capture_output=True,
    )  # fmt: skip
    url = with_params(database_url, sslmode="verify-full", sslrootcert=str(other_ca))
    settings = load_settings({"KAFKA_BROKERS": services["KAFKA_BROKERS"], "DATABASE_URL": url})
    with pytest.raises(BackupError) as refused:
        db_module.connect(settings)
    message = one_line_error(refused.value)
    assert "certificate verify failed" in message and "backup:backup" not in message


# -------------------------------------------------------------------- secrets ----


@pytest.fixture
def db_role(services: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A login role with a recognisable password: (name, password)."""
    name, password = f"bp_role_{uuid.uuid4().hex[:8]}", secret("pg")
    with psycopg.connect(services["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    yield name, password
    with psycopg.connect(services["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def owned_database_url(services, db_role, empty_database_url) -> str:
    """An empty database owned by db_role (so it runs the migrations), its URL with the
    role's password. (db_role first: the role outlives the database it owns.)"""
    name, password = db_role
    dbname = urlsplit(empty_database_url).path.lstrip("/")
    with psycopg.connect(services["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" OWNER TO "{name}"')
    return with_user(empty_database_url, name, password)


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`backup-pipeline ARGS` with only ``env`` (plus PATH, HOME...) as its environment."""
    script = Path(sys.executable).with_name("backup-pipeline")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "backup_pipeline.cli"]
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    keep["BACKUP_PASS_ATTEMPTS"] = "1"
    return subprocess.Popen(
        [*command, *args],
        env={**keep, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = process.communicate(timeout=bounded(120))
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return finish(start_cli(*args, env=env))


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
        e.event_specific_data.error.message
        for r in failed
        for e in r.all_events
        if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
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


# ------------------------------------------------------------ least privilege ----

# What a backup pass (and status, and the asset checks) needs when migrations run
# separately -- the same list as docs/security.md.
RUNTIME_GRANTS = [
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT ON bekreftelse_hendelser, bekreftelser, bekreftelse_paa_vegne_av,"
    " backup_quarantine TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON bekreftelse_hwm, backup_gaps, backup_versions TO {role}",
    # Acknowledging reviewed quarantine: only the acknowledgement columns.
    "GRANT UPDATE (acknowledged_at, acknowledged_by, acknowledged_note)"
    " ON backup_quarantine TO {role}",
]


def test_a_backup_runs_with_only_the_runtime_grants_and_cannot_drop_or_truncate(
    tls, services, db_role, database_url, topic_names, producer, admin, db
):
    role, password = db_role
    dbname = urlsplit(database_url).path.lstrip("/")
    db.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM PUBLIC')
    db.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{role}"')
    for grant in RUNTIME_GRANTS:
        db.execute(grant.format(role=f'"{role}"'))
    for spec in TOPICS:
        produce(producer, topic_names[spec.table], good_records(spec, 6), partition=0)
    produce(producer, topic_names[HENDELSER.table], [DemoRecord(key(1), None, [])], partition=1)
    # Offsets deleted before the first pass: a gap row (INSERT ... ON CONFLICT DO UPDATE).
    lost = TopicPartition(topic_names[BEKREFTELSER.table], 0, 2)
    for future in admin.delete_records([lost]).values():
        future.result()
    url = verify_full(with_user(database_url, role, password), tls)
    settings = load_settings(
        {
            "KAFKA_BROKERS": services["KAFKA_BROKERS"],
            "DATABASE_URL": url,
            "BACKUP_AUTO_MIGRATE": "false",
            **topic_env(topic_names),
        }
    )

    reports = [backup_topic(settings, spec) for spec in TOPICS]

    assert {r.table: r.rows for r in reports} == {
        "bekreftelse_hendelser": 6,
        "bekreftelser": 4,
        "bekreftelse_paa_vegne_av": 6,
    }
    assert sum(r.quarantined for r in reports) == 1
    assert db.execute("SELECT first_lost_offset, last_lost_offset FROM backup_gaps").fetchall() == [
        (0, 1)
    ]
    assert status_cli_works(settings, topic_names)
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in (
            "DROP TABLE bekreftelser",
            "TRUNCATE bekreftelser",
            "DELETE FROM bekreftelse_hwm",
            "UPDATE bekreftelser SET data = NULL",
            "ALTER TABLE bekreftelser ADD COLUMN x int",
            "CREATE TABLE mine (x int)",
            "SELECT * FROM backup_pipeline_schema_version",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def status_cli_works(settings: Settings, topic_names: dict[str, str]) -> bool:
    env = {
        "KAFKA_BROKERS": settings.kafka_brokers,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "BACKUP_AUTO_MIGRATE": "false",
        **topic_env(topic_names),
    }
    run = cli("status", env=env)
    assert run.returncode == 0, run.stderr
    return "bekreftelser" in run.stdout


@pytest.fixture
def acl_cleanup(admin: AdminClient) -> Iterator[list[str]]:
    principals: list[str] = []
    yield principals
    for principal in principals:
        flt = AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
            AclOperation.ANY, AclPermissionType.ANY,
        )  # fmt: skip
        for future in admin.delete_acls([flt]).values():
            future.result()


def test_kafka_acls_read_and_describe_on_the_topic_and_describe_on_the_group(
    tls, services, admin, database_url, topic_names, producer, db, acl_cleanup
):
    """The broker authorizes (StandardAuthorizer). The backup's principal gets READ and
    DESCRIBE on its topic and DESCRIBE on the (never joined) group; every other group
    operation and the cluster are denied. A principal without DESCRIBE on the group fails:
    librdkafka looks up the group coordinator even for assign()-only consumers."""
    topic = topic_names[BEKREFTELSER.table]
    produce(producer, topic, good_records(BEKREFTELSER, 9))
    users = {
        name: (f"acl_{name}_{uuid.uuid4().hex[:6]}", secret(name)) for name in ("ok", "nogroup")
    }

    def acl(rtype, name, principal, op, permission=AclPermissionType.ALLOW) -> AclBinding:
        return AclBinding(rtype, name, ResourcePatternType.LITERAL, principal, "*", op, permission)

    # A resource with any ACL is closed to everyone not named (allow.everyone.if.no.acl.found
    # only opens resources without ACLs): keep the group and the cluster open to the other
    # tests' principals explicitly. The denials below win over these allows.
    bindings = [
        acl(ResourceType.GROUP, CONSUMER_GROUP_ID, "User:*", AclOperation.ALL),
        acl(ResourceType.BROKER, "kafka-cluster", "User:*", AclOperation.ALL),
    ]
    for label, (user, password) in users.items():
        create_scram_user(admin, tls, user, password)
        principal = f"User:{user}"
        acl_cleanup.append(principal)
        deny = AclPermissionType.DENY
        bindings += [
            acl(ResourceType.TOPIC, topic, principal, AclOperation.READ),
            acl(ResourceType.TOPIC, topic, principal, AclOperation.DESCRIBE),
            acl(ResourceType.BROKER, "kafka-cluster", principal, AclOperation.ALL, deny),
        ]
        bindings += [
            acl(ResourceType.GROUP, CONSUMER_GROUP_ID, principal, op, deny)
            for op in (
                AclOperation.READ,
                AclOperation.DELETE,
                AclOperation.DESCRIBE_CONFIGS,
                AclOperation.ALTER_CONFIGS,
                *([AclOperation.DESCRIBE] if label == "nogroup" else []),
            )
        ]
    for future in admin.create_acls(bindings).values():
        future.result()

    # ACLs reach the broker's authorizer through the metadata log: wait until it lists them.
    def acls_in_force() -> bool:
        found = set()
        for principal in [*acl_cleanup, "User:*"]:
            flt = AclBindingFilter(
                ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                AclOperation.ANY, AclPermissionType.ANY,
            )  # fmt: skip
            found.update(admin.describe_acls(flt).result())
        return set(bindings) <= found

    wait_until(acls_in_force, 10, "the new ACLs to be in force", interval=0.1)

    base = {"DATABASE_URL": database_url, **topic_env(topic_names), "KAFKA_TIMEOUT_SECONDS": "3"}
    report = backup_topic(load_settings({**scram_env(tls, *users["ok"]), **base}), BEKREFTELSER)
    assert report.rows == 9 and count(db, "bekreftelser") == 9

    # Without DESCRIBE on the group, the consumer reports GROUP_AUTHORIZATION_FAILED (a
    # fatal error for a pass) as soon as its coordinator lookup is answered.
    settings = load_settings({**scram_env(tls, *users["nogroup"]), **base})
    consumer = Consumer(consumer_config(settings))
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        errors: list[KafkaError] = []
        deadline = time.monotonic() + scaled(10)
        while not errors and time.monotonic() < deadline:
            errors += [
                m.error()
                for m in consumer.consume(100, 0.2)
                if m.error() and m.error().code() != KafkaError._PARTITION_EOF
            ]
    finally:
        consumer.close()
    assert [e.code() for e in errors] == [KafkaError.GROUP_AUTHORIZATION_FAILED]
