"""A backup pass or follow run with connections made from settings: opened, retried when
they fail, closed afterwards (the pass itself is ``backup.pass_``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager

import psycopg
from confluent_kafka import Consumer

from backup_pipeline import db, versions
from backup_pipeline.backup.options import PassOptions
from backup_pipeline.backup.pass_ import FollowOutcome, follow, run_pass
from backup_pipeline.backup.report import PassReport
from backup_pipeline.errors import BackupError, ConfigError
from backup_pipeline.kafka import client
from backup_pipeline.retry import DatabaseUnavailableError, pass_retrying
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TopicSpec


def backup_topic(
    settings: Settings,
    spec: TopicSpec,
    *,
    version: int | None = None,
    max_records: int | None = None,
    lock_wait_seconds: float = 0.0,
    allow_retired: bool = False,
) -> PassReport:
    """One pass with connections made from settings, closed afterwards.

    ``version`` defaults to BACKUP_VERSION, else the version recorded as serving
    (versions.resolve_write_version); the Dagster layer passes the previous version while a
    new one is still being re-ingested. A retired version raises versions.RetiredVersionError
    unless ``allow_retired``. A version written for the first time is recorded in
    backup_versions. A pass whose PostgreSQL or Kafka connection failed is run again
    (BACKUP_PASS_ATTEMPTS in all, default 3): it resumes from the HWMs its committed
    batches left, so nothing is stored twice. The report is that of the last attempt.
    """
    topic = settings.topic(spec)
    requested = settings.backup_version if version is None else version
    options = PassOptions.from_settings(
        settings, max_records=max_records, lock_wait_seconds=lock_wait_seconds
    )
    for attempt in pass_retrying(f"backup of {topic}", settings.backup_pass_attempts):
        with attempt:
            with closing(_connect(settings)) as conn:
                version = versions.resolve_write_version(
                    conn, spec.table, requested, allow_retired=allow_retired
                )
                versions.ensure_recorded(
                    conn,
                    spec.table,
                    topic,
                    version,
                    allow_downgrade=settings.backup_allow_downgrade,
                )
            with _connections(settings, topic, version) as (conn, consumer, more):
                return run_pass(
                    conn, consumer, spec, topic, version, options, more_connections=more
                )
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def follow_topic(
    settings: Settings,
    spec: TopicSpec,
    outcome: FollowOutcome,
    *,
    version: int,
    seconds: float,
    should_stop: Callable[[], bool] = lambda: False,
    lock_wait_seconds: float = 0.0,
) -> Iterator[PassReport]:
    """:func:`follow` for ``seconds`` with connections made from settings, closed afterwards.

    A lost PostgreSQL or Kafka connection is retried like a pass (BACKUP_PASS_ATTEMPTS);
    the retry resumes from the committed HWMs and keeps the same end time.
    """
    topic = settings.topic(spec)
    until = time.monotonic() + seconds
    options = PassOptions.from_settings(
        settings,
        max_records=settings.backup_follow_pass_records,
        lock_wait_seconds=lock_wait_seconds,
    )
    retrying = pass_retrying(
        f"follow run of {topic} version {version}", settings.backup_pass_attempts
    )
    for attempt in retrying:
        with attempt, _connections(settings, topic, version) as (conn, consumer, more):
            yield from follow(
                conn,
                consumer,
                spec,
                topic,
                version,
                outcome,
                options,
                until=until,
                should_stop=should_stop,
                more_connections=more,
            )


_Connections = tuple[psycopg.Connection, Consumer, Callable[[], Sequence[psycopg.Connection]]]


@contextmanager
def _connections(settings: Settings, topic: str, version: int) -> Iterator[_Connections]:
    """A consumer and a writer connection (more on demand), closed afterwards; a PostgreSQL
    error becomes one readable line."""
    consumer = client.open_consumer(settings)
    try:
        with ExitStack() as stack:
            connections = [stack.enter_context(closing(_connect(settings)))]

            def more_connections() -> list[psycopg.Connection]:
                for _ in range(settings.backup_writer_connections - 1):
                    connections.append(stack.enter_context(closing(_connect(settings))))
                return connections[1:]

            try:
                yield connections[0], consumer, more_connections
            except psycopg.OperationalError as exc:
                raise _database_error(exc, connections, settings, topic, version) from None
    finally:
        consumer.close()


def _connect(settings: Settings) -> psycopg.Connection:
    try:
        return db.connect(settings, autocommit=True)
    except ConfigError:
        raise
    except BackupError as exc:  # the server is down or refuses connections: retry
        raise DatabaseUnavailableError(str(exc)) from None


def _database_error(
    exc: psycopg.OperationalError,
    connections: list[psycopg.Connection],
    settings: Settings,
    topic: str,
    version: int,
) -> BackupError:
    """One readable line instead of a driver traceback; never the connection string.

    A lost connection (server restarted, network cut) is worth another attempt; a lock
    or statement timeout is not: the batch was rolled back and the same wait would follow.
    """
    reason = db.redact(" ".join(str(exc).split()), settings).rstrip(".")
    lost = any(conn.broken or conn.closed for conn in connections)
    cls = DatabaseUnavailableError if lost else BackupError
    what = "lost the connection" if lost else "refused a statement"
    return cls(
        f"PostgreSQL {db.describe(settings)} {what} during the backup of {topic} version "
        f"{version}: {reason}. The batches in flight were rolled back; batches committed "
        "before them are kept and the next pass resumes from their HWM"
    )
