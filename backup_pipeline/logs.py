"""Structured logs: one line per event, with the fields an operator filters on.

The engine logs through the standard library (so Dagster captures it too) with ``extra``
fields; this module renders those lines as JSON (``BACKUP_LOG_FORMAT=json``, for log
shippers) or as readable key=value text (the default). Fields bound with ``bind`` (the
Dagster run id, topic, version) are added to every line logged until they are unbound.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from backup_pipeline.errors import ConfigError
from backup_pipeline.settings import env_setting

# structlog is imported where it is used: `import structlog` pulls in its dev renderer and,
# with it, rich and pygments (~0.1 s), which `backup-pipeline --help` should not pay for.


def configure(level: int = logging.INFO, fmt: str | None = None) -> None:
    """Route the root logger through structlog's formatter (idempotent)."""
    import structlog

    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt is None:
        try:
            fmt = env_setting("backup_log_format", str)
        except ConfigError:
            # Logging is set up before a command loads its settings; that load reports the
            # bad BACKUP_LOG_FORMAT in one line, so log readable text until then.
            fmt = "text"
    fmt = fmt.lower()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # librdkafka and psycopg are quiet at WARNING; their INFO is not for operators.
    # backup_pipeline.librdkafka: the client's reconnect chatter (kafka/config.py); the
    # command's own one-line error says what failed, Dagster's run log keeps the detail.
    for noisy in (
        "confluent_kafka",
        "backup_pipeline.librdkafka",
        "psycopg",
        "alembic.runtime.migration",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line of this thread/context while the block runs."""
    import structlog

    tokens = structlog.contextvars.bind_contextvars(**fields)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
