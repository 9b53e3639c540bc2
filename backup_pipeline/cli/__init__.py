"""The operator CLI: ``backup-pipeline migrate | backup | status | acknowledge | restore |
verify | metrics | ...``, one module per group of commands."""

from __future__ import annotations

import logging

import click

from backup_pipeline.cli.acknowledge import acknowledge_command
from backup_pipeline.cli.backup import backup_command, migrate_command, status_command
from backup_pipeline.cli.decode import decode_command
from backup_pipeline.cli.demo import create_topics_command, demo_producer_command
from backup_pipeline.cli.metrics import metrics_command
from backup_pipeline.cli.restore import restore_command, verify_command


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """Keep an exactly-once copy of Kafka topics in PostgreSQL."""
    from backup_pipeline import logs

    logs.configure(logging.DEBUG if verbose else logging.INFO)


for command in (
    migrate_command,
    backup_command,
    status_command,
    acknowledge_command,
    create_topics_command,
    demo_producer_command,
    restore_command,
    verify_command,
    decode_command,
    metrics_command,
):
    main.add_command(command)
