"""``backup-pipeline metrics``: a small long-lived process serving the backup's live numbers
to Prometheus (docs/operations.md)."""

from __future__ import annotations

import signal
import threading

import click

from backup_pipeline.cli.common import friendly_errors
from backup_pipeline.settings import load_settings


@click.command("metrics")
@click.option(
    "--host", default=None, help="Address to bind (default BACKUP_METRICS_HOST, 0.0.0.0)."
)
@click.option(
    "--port", type=int, default=None, help="Port to listen on (default BACKUP_METRICS_PORT, 9108)."
)
@friendly_errors
def metrics_command(host: str | None, port: int | None) -> None:
    """Serve per table, version and partition: HWM, end offset, lag in records and seconds,
    rows stored, quarantined records, retention gaps, failed runs; at /metrics, read at
    each scrape. Runs until stopped (SIGTERM or Ctrl-C)."""
    # Imported on use: `backup-pipeline --help` should not wait for prometheus_client.
    from backup_pipeline.metrics import server

    settings = load_settings()
    bind_host = host or settings.metrics_host
    bind_port = settings.metrics_port if port is None else port
    running, first = server.start(settings, bind_host, bind_port)
    problems = "; ".join(f"{name}: {why}" for name, why in sorted(first.errors.items()))
    click.echo(
        f"serving metrics on http://{bind_host}:{running.port}/metrics "
        f"({len(first.partitions)} partitions, first reading {first.duration_seconds:.2f}s"
        + (f"; {problems}" if problems else "")
        + ")"
    )
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    running.stop()
    click.echo("metrics server stopped")
