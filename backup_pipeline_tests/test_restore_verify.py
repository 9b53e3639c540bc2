"""Restore and verify together: the CLI's restore and verify commands, a verify that agrees
with a restore that left quarantine out, and a topic restored under its own name that
verifies through its origin headers."""

from __future__ import annotations

from click.testing import CliRunner

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.cli.restore import restore_command, verify_command
from backup_pipeline.restore.run import RestoreRequest, restore
from backup_pipeline.topics import spec_for_table
from backup_pipeline.verify.compare import verify
from backup_pipeline_tests.fix_kafka import key, read_topic
from backup_pipeline_tests.test_restore import _backed_up_sequence, produce_all_kinds
from dev.harness.kafka import delete_topic

BEKREFTELSER = spec_for_table("bekreftelser")


def test_the_cli_commands_restore_and_verify(settings, producer, services, database_url):
    _backed_up_sequence(settings, producer, n=5)
    topic = settings.topic(BEKREFTELSER)
    env = {
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        BEKREFTELSER.topic_env_var: topic,
    }
    runner = CliRunner()
    result = runner.invoke(
        restore_command,
        ["--table", "bekreftelser", "--target", f"{topic}.cli", "--offsets", "0:1-3"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "3 records restored" in result.output
    result = runner.invoke(
        verify_command, ["--table", "bekreftelser", "--against", f"{topic}.cli"], env=env
    )
    assert result.exit_code == 0 and "no differences" in result.output, result.output
    result = runner.invoke(restore_command, ["--table", "bekreftelser", "--target", topic], env=env)
    assert result.exit_code == 2 and "refusing" in result.output


def test_verify_agrees_with_a_restore_that_left_quarantine_out(settings, services, database_url):
    topic = settings.topic(BEKREFTELSER)
    produce_all_kinds(services["KAFKA_BROKERS"], topic)
    backup_topic(settings, BEKREFTELSER)
    env = {
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        BEKREFTELSER.topic_env_var: topic,
    }
    runner = CliRunner()
    target = f"{topic}.readme"
    # The README's steps: restore (quarantined records left out by default), then verify.
    result = runner.invoke(
        restore_command, ["--table", "bekreftelser", "--target", target], env=env
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        verify_command, ["--table", "bekreftelser", "--against", target], env=env
    )
    assert result.exit_code == 0, result.output
    assert "9 records compared, no differences" in result.output
    assert "quarantined left out" in result.output
    assert (
        "partition 1: compared 1 over offsets 3..3; 3 backed-up records excluded by the "
        "restore's selection, 3 of them quarantined" in result.output
    )


def test_a_topic_restored_under_its_own_name_verifies_through_its_origin(
    settings, db, admin, producer, services
):
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(BEKREFTELSER)
    produced = produce_all_kinds(brokers, topic)
    original = read_topic(brokers, topic)
    backup_topic(settings, BEKREFTELSER)
    assert verify(settings, "bekreftelser").ok
    delete_topic(admin, topic)
    report = restore(settings, RestoreRequest("bekreftelser", target_topic=topic, force=True))
    restored = read_topic(brokers, topic)
    # Quarantined records stayed out: partition 1's one good record moved from 3 to 0.
    assert [r[0] for r in original[1]] == [0, 1, 2, 3] and [r[0] for r in restored[1]] == [0]
    assert report.restored == produced - 3

    full = verify(settings, "bekreftelser")  # the source topic, now a restored one
    assert full.restored and full.ok and full.compared == produced - 3, full.summary()
    sampled = verify(settings, "bekreftelser", sample=5, seed=2)
    assert sampled.ok and sampled.compared > 0, sampled.summary()

    # Live records written after the restore are noted, not differences.
    producer.produce(topic, key=key(1), value=b"after the restore", partition=0)
    producer.flush(30)
    after = verify(settings, "bekreftelser")
    assert after.ok and after.partitions[0].outside_restore == [(4, 4)], after.summary()
    assert "not written by the restore" in after.summary()
    # A real difference still shows, by backup offset.
    db.execute(
        "UPDATE bekreftelser SET data = 'x'::bytea WHERE kafka_partition = 0 AND kafka_offset = 1"
    )
    changed = verify(settings, "bekreftelser")
    assert changed.findings()["different"] == [(0, 1)] and not changed.ok
