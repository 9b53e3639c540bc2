"""Security against the real services: TLS to Kafka (client certificates, SCRAM) and to
PostgreSQL. Secrets that never show are in test_security_secrets.py, the least privileges a
backup pass needs in test_security_privileges.py; their fixtures in fix_security.py.

dev/services gives Kafka an SSL listener that requires a client certificate and a SASL_SSL
(SCRAM) listener, PostgreSQL ssl=on, and the certificates of dev/tls/make-certs.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from backup_pipeline import db as db_module
from backup_pipeline.backup.run import backup_topic
from backup_pipeline.errors import BackupError, ConfigError, KafkaUnavailableError
from backup_pipeline.kafka.config import consumer_config
from backup_pipeline.migrate import migrate
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_kafka import good_records, produce
from backup_pipeline_tests.fix_security import (
    count,
    create_scram_user,
    load_settings,
    mtls_env,
    one_line_error,
    scram_env,
    secret,
    topic_env,
    verify_full,
    with_params,
    with_user,
)
from dev.harness.db import hwms

# Refusals are what these tests are about: don't retry them (backup_pipeline.retry).

BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")


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
