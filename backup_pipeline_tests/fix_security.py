"""Fixture plugin of the security tests: the TLS side of dev/services (certificates, the SSL
and SASL_SSL listeners), Kafka and PostgreSQL clients on it, SCRAM users, a PostgreSQL role
of a test's own, and the CLI run as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from psycopg import sql

from backup_pipeline.settings import Settings
from backup_pipeline.settings import load_settings as load_from
from backup_pipeline.topics import TOPICS
from dev.harness.processes import REPO
from dev.harness.waits import bounded, wait_until

TLS_EXPORTS = ("KAFKA_SSL_BROKERS", "KAFKA_SASL_SSL_BROKERS", "BACKUP_DEV_TLS_DIR")


def load_settings(env: Mapping[str, str]) -> Settings:
    """Settings from ``env`` with one attempt per pass: refusals are what the security tests
    are about, so they are not retried (backup_pipeline.retry)."""
    return load_from({"BACKUP_PASS_ATTEMPTS": "1", **env})


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
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def one_line_error(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


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
