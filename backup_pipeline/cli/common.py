"""What every CLI command shares: readable errors and the optional migration step."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import closing
from functools import wraps
from typing import Any

import click
import psycopg

from backup_pipeline import migrate
from backup_pipeline.errors import BackupError
from backup_pipeline.settings import Settings


def tables_option(choices: tuple[str, ...], help: str) -> Callable[[Any], Any]:
    """``--table NAME`` (repeatable) into a ``tables`` tuple; none given means all."""
    return click.option("--table", "tables", multiple=True, type=click.Choice(choices), help=help)


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Our own errors are one readable line (no stack trace, no secrets) and exit 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BackupError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except psycopg.errors.UndefinedTable as exc:
            click.echo(
                f"error: {exc.diag.message_primary}: the database is not migrated; "
                "run `backup-pipeline migrate`",
                err=True,
            )
            sys.exit(2)

    return wrapper


def echo_versions(settings: Settings, table: str) -> None:
    """Which versions of ``table`` exist and their state, so an operator sees which one a
    command used among them (verify and restore default to the serving one)."""
    # Imported on use: every command imports this module, and versions pulls in Kafka.
    from backup_pipeline import db, versions

    with closing(db.connect(settings, autocommit=True)) as conn:
        click.echo(f"{table}: {versions.describe_recorded(conn, table)}")


def maybe_migrate(settings: Settings, skip: bool) -> None:
    """Apply pending migrations first, unless BACKUP_AUTO_MIGRATE=false or --no-migrate."""
    if settings.backup_auto_migrate and not skip:
        migrate.migrate(settings)
