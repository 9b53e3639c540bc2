"""The PostgreSQL probes tests and tools share: name a database, read what a backup stored."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipeline.topics import TopicSpec


def with_dbname(url: str, dbname: str) -> str:
    if "://" in url:  # keep URLs as URLs: DAGSTER_PG_URL must be one
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def accounted(
    conn: psycopg.Connection, spec: TopicSpec, topic: str, version: int = 1
) -> list[tuple[int, int]]:
    """Every (partition, offset) stored: rows of the table plus quarantined records."""
    return [
        (int(p), int(o))
        for p, o in conn.execute(
            f"SELECT kafka_partition, kafka_offset FROM {spec.table} WHERE version = %s "
            "UNION ALL SELECT kafka_partition, kafka_offset FROM backup_quarantine "
            "WHERE version = %s AND kafka_topic = %s ORDER BY 1, 2",
            (version, version, topic),
        ).fetchall()
    ]


def hwms(conn: psycopg.Connection, topic: str, version: int = 1) -> dict[int, int]:
    return dict(
        conn.execute(
            "SELECT kafka_partition, kafka_offset FROM bekreftelse_hwm "
            "WHERE kafka_topic = %s AND version = %s",
            (topic, version),
        ).fetchall()
    )
