"""PostgreSQL connections. One place decides how a connection string is built."""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

from backup_pipeline.errors import BackupError, ConfigError
from backup_pipeline.settings import Settings

APPLICATION_NAME = "backup_pipeline"


def conninfo(settings: Settings) -> str:
    """The libpq connection string; empty means libpq's PG* environment variables."""
    return settings.database_url.get_secret_value()


def connect(
    settings: Settings, *, autocommit: bool = False, connect_timeout: int = 10
) -> psycopg.Connection:
    """Open a connection, turning libpq's errors into one line without the password."""
    try:
        conninfo_to_dict(conninfo(settings))
    except psycopg.ProgrammingError as exc:
        # libpq quotes the part it could not parse, which may well hold the password.
        raw = conninfo(settings)
        reason = _QUOTED.sub(lambda m: '"..."' if len(m[1]) > 1 and m[1] in raw else m[0], str(exc))
        reason = one_line(redact(reason))
        raise ConfigError(
            "DATABASE_URL is not a valid libpq connection string (a postgresql:// URL or "
            f"key=value pairs): {reason}"
        ) from None
    try:
        return psycopg.connect(
            conninfo(settings),
            autocommit=autocommit,
            application_name=APPLICATION_NAME,
            connect_timeout=connect_timeout,
        )
    except psycopg.Error as exc:
        raise BackupError(
            f"cannot connect to PostgreSQL {describe(settings)}: "
            f"{one_line(redact(str(exc), settings))}"
        ) from None


def end_read(conn: psycopg.Connection) -> None:
    """End the transaction a read opened, unless the connection is in autocommit mode.

    Read helpers take either kind of connection; on one that is not autocommit, a read
    left open would hold its snapshot (and keep VACUUM from cleaning up behind it) and
    make the caller's next statement part of the same transaction.
    """
    if not conn.autocommit:
        conn.commit()


def one_line(text: str) -> str:
    """libpq reports each attempt (host, SSL then plain...) on its own line: join them."""
    lines: list[str] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines)


def describe(settings: Settings) -> str:
    """host:port/dbname for messages and metadata; never user or password."""
    try:
        params = conninfo_to_dict(conninfo(settings))
    except psycopg.ProgrammingError:
        return "(unparseable DATABASE_URL)"
    host = params.get("host") or "(PGHOST)"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or "(PGDATABASE)"
    return f"{host}:{port}/{dbname}"


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"]*)"')


def redact(text: str, settings: Settings | None = None) -> str:
    """Remove anything password-like from a message before it is shown or logged."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    if settings is not None:
        try:
            secret = conninfo_to_dict(conninfo(settings)).get("password")
        except psycopg.ProgrammingError:
            secret = None
        if secret:
            text = text.replace(str(secret), "***")
    return text
