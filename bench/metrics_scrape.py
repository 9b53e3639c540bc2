"""What one scrape of `backup-pipeline metrics` costs, against `backup-pipeline status`.

Three tables of ``--records`` records each (one in twenty awkward, so quarantine is
non-empty), backed up, then ``--more`` records produced and half of them backed up, so every
table has lag. Then, in the same run and on the same data:

- **scrape**: an HTTP GET of /metrics from the in-process server (connections kept, rows
  counted incrementally), ``--scrapes`` times;
- **status**: what `backup-pipeline status` does for the three tables (a consumer and a
  connection opened, `status.table_status` per table, both closed), ``--scrapes`` times;
  its Python start-up (~1 s) is left out, so the comparison favours it;
- **full count**: `count(*)` of each table's rows per version and partition, the query the
  endpoint avoids on every scrape (it runs once, in the warm-up before the port opens).

    eval "$(dev/services up)"
    .venv/bin/python bench/metrics_scrape.py [--records 100000] [--scrapes 50]

Needs a PostgreSQL role that may CREATE DATABASE (the dev server's). Drops its database
and topics afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql

from backup_pipeline import db, status
from backup_pipeline.backup import run as backup_run
from backup_pipeline.kafka import client
from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.metrics import server
from backup_pipeline.migrate import migrate
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.topics import TOPICS
from dev.harness.db import with_dbname
from dev.harness.kafka import produce_many


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(action: Callable[[], object], times: int) -> list[float]:
    result = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        result.append((time.perf_counter() - started) * 1000)
    return result


def status_like_the_cli(settings: Settings) -> None:
    consumer = client.open_consumer(settings)
    try:
        with closing(db.connect(settings, autocommit=True)) as conn:
            for spec in TOPICS:
                status.table_status(
                    conn,
                    consumer,
                    spec,
                    settings.topic(spec),
                    None,
                    caught_up_max_lag=settings.backup_caught_up_max_lag,
                    timeout=settings.kafka_timeout_seconds,
                )
    finally:
        consumer.close()


def full_count(settings: Settings) -> None:
    with closing(db.connect(settings, autocommit=True)) as conn:
        for spec in TOPICS:
            conn.execute(
                sql.SQL("SELECT version, kafka_partition, count(*) FROM {} GROUP BY 1, 2").format(
                    sql.Identifier(spec.table)
                )
            ).fetchall()


def summary(name: str, ms: list[float], baseline: list[float] | None = None) -> str:
    median = statistics.median(ms)
    p95 = sorted(ms)[max(0, int(len(ms) * 0.95) - 1)]
    ratio = f"{median / statistics.median(baseline):6.2f}x" if baseline else "      -"
    return f"{name:<38} {median:9.1f} {p95:9.1f} {ratio}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per table")
    parser.add_argument("--more", type=int, default=2_000, help="records produced after")
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args(argv)

    base_url = os.environ["DATABASE_URL"]
    brokers = os.environ["KAFKA_BROKERS"]
    run = uuid.uuid4().hex[:8]
    dbname = f"bench_metrics_{run}"
    topics = {spec.table: f"bench.{spec.table}.{run}" for spec in TOPICS}
    env = {"KAFKA_BROKERS": brokers, "DATABASE_URL": with_dbname(base_url, dbname)}
    env.update({spec.topic_env_var: topics[spec.table] for spec in TOPICS})
    admin = AdminClient({"bootstrap.servers": brokers})
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        settings = load_settings(env)
        migrate(settings)
        create_topics(admin, list(topics.values()), partitions=3)
        for spec in TOPICS:
            log(f"producing {args.records:,} records to {topics[spec.table]}")
            produce_many(brokers, topics[spec.table], spec, args.records)
            backup_run.backup_topic(settings, spec)
            produce_many(brokers, topics[spec.table], spec, args.more, seed=2)
            backup_run.backup_topic(settings, spec, max_records=args.more // 2)

        started = time.perf_counter()
        running, first = server.start(settings, "127.0.0.1", 0)
        warm_up_ms = (time.perf_counter() - started) * 1000
        url = f"http://127.0.0.1:{running.port}/metrics"
        with running:

            def scrape() -> None:
                with urllib.request.urlopen(url, timeout=30) as response:
                    response.read()

            scrape()  # the first scrape of a server counts nothing more than the next
            log(f"timing {args.scrapes} scrapes, status runs and full counts (interleaved)")
            scrapes: list[float] = []
            statuses: list[float] = []
            counts: list[float] = []
            for _ in range(args.scrapes):
                scrapes += timed(scrape, 1)
                statuses += timed(lambda: status_like_the_cli(settings), 1)
                counts += timed(lambda: full_count(settings), 1)
            with urllib.request.urlopen(url, timeout=30) as response:
                lines = [
                    line
                    for line in response.read().decode().splitlines()
                    if line.startswith("backup_pipeline_") and 'partition="0"' in line
                ]
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
        for future in admin.delete_topics(list(topics.values())).values():
            future.result()

    rows = sum(p.rows_stored for p in first.partitions)
    print(
        f"3 tables, {rows:,} rows stored, {len(first.partitions)} partitions, "
        f"{args.scrapes} samples each; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores (busy machine: compare the ratios, not the ms)"
    )
    print(f"warm-up (first reading, full counts, before the port opens): {warm_up_ms:.0f} ms")
    print(f"{'':<38} {'median ms':>9} {'p95 ms':>9} {'/status':>7}")
    print(summary("scrape GET /metrics", scrapes, statuses))
    print(summary("status (as `backup-pipeline status`)", statuses, statuses))
    print(summary("full count(*) per partition", counts, statuses))
    print("\nsample (partition 0 of each table):")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
