"""Least privilege: a backup pass runs with only the runtime grants of docs/security.md and
cannot drop or truncate; on Kafka it needs Read and Describe on the topic and Describe on the
group, nothing more."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

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
)

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.demo.data import DemoRecord
from backup_pipeline.kafka.config import CONSUMER_GROUP_ID, consumer_config
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline_tests.fix_kafka import good_records, key, produce
from backup_pipeline_tests.fix_security import (
    cli,
    count,
    create_scram_user,
    load_settings,
    scram_env,
    secret,
    topic_env,
    verify_full,
    with_user,
)
from dev.harness.waits import scaled, wait_until

# Refusals are what these tests are about: don't retry them (backup_pipeline.retry).


BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")


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
            ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,  # type: ignore[arg-type]  # None: any (the stubs say str)
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
                ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,  # type: ignore[arg-type]  # None: any (the stubs say str)
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
                error
                for m in consumer.consume(100, 0.2)
                if (error := m.error()) and error.code() != KafkaError._PARTITION_EOF
            ]
    finally:
        consumer.close()
    assert [e.code() for e in errors] == [KafkaError.GROUP_AUTHORIZATION_FAILED]
