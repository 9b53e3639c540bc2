"""``backup-pipeline create-topics`` and ``demo-producer``: for the demo and local testing."""

from __future__ import annotations

import click

from backup_pipeline.cli.common import friendly_errors
from backup_pipeline.settings import load_settings
from backup_pipeline.topics import TOPICS


@click.command("create-topics")
@click.option("--partitions", default=3, show_default=True)
@friendly_errors
def create_topics_command(partitions: int) -> None:
    """Create the three topics if they don't exist (for the demo and local testing)."""
    from confluent_kafka.admin import AdminClient

    from backup_pipeline.kafka.admin import create_topics
    from backup_pipeline.kafka.config import admin_config

    settings = load_settings()
    admin = AdminClient(admin_config(settings))
    created = create_topics(admin, [settings.topic(s) for s in TOPICS], partitions)
    click.echo(f"created: {', '.join(created) or 'none (all exist)'}")


@click.command("demo-producer")
@click.option("--rate", default=20.0, show_default=True, help="Records per second in all.")
@click.option("--seconds", type=float, default=None, help="Stop after this long.")
@click.option(
    "--awkward-share",
    default=0.02,
    show_default=True,
    help="Share of awkward records (tombstones, bad JSON, short keys, ...).",
)
@friendly_errors
def demo_producer_command(rate: float, seconds: float | None, awkward_share: float) -> None:
    """Write realistic records to the three topics until stopped."""
    from backup_pipeline.demo import producer

    settings = load_settings()
    click.echo(f"producing {rate:g} records/s to {', '.join(settings.topic(s) for s in TOPICS)}")
    sent = producer.produce(settings, rate=rate, seconds=seconds, awkward_share=awkward_share)
    click.echo(f"produced {sent} records")
