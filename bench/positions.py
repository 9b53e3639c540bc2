"""Consumer-group positions on the worst day, timed: the runbook's steps on one topic.

Produces N records (default 1M, 3 partitions) into a fresh topic, lets a few groups
commit positions part-way, backs it up, records positions (several ticks: the cost of
one), deletes the topic, restores it under its own name, plans, applies and verifies
the groups' positions. Prints each step's time. Uses the dev services
(`source .dev/ports.env && eval "$(dev/services env)"`) and a scratch database.

    .venv/bin/python bench/positions.py [--records 1000000] [--groups 5]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from contextlib import closing

import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from backup_pipeline import db
from backup_pipeline.backup.run import backup_topic
from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.migrate import migrate
from backup_pipeline.positions import plan as positions
from backup_pipeline.positions.snapshot import take_snapshot
from backup_pipeline.restore.run import RestoreRequest, restore
from backup_pipeline.settings import load_settings
from backup_pipeline.topics import spec_for_table
from dev.harness.db import with_dbname
from dev.harness.kafka import delete_topic, end_offsets, produce_many

SPEC = spec_for_table("bekreftelser")


def timed(label: str, func, *args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = func(*args, **kwargs)
    print(f"{label:<44} {time.monotonic() - started:8.2f} s", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=5)
    parser.add_argument("--ticks", type=int, default=10)
    args = parser.parse_args()
    brokers = os.environ["KAFKA_BROKERS"]
    base_url = os.environ["DATABASE_URL"]
    suffix = uuid.uuid4().hex[:8]
    name = f"bench_positions_{suffix}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    topic = f"bench.positions.{suffix}"
    env = {
        "KAFKA_BROKERS": brokers,
        "DATABASE_URL": with_dbname(base_url, name),
        SPEC.topic_env_var: topic,
    }
    settings = load_settings(env)
    admin = AdminClient({"bootstrap.servers": brokers})
    try:
        migrate(settings)
        create_topics(admin, [topic], partitions=3, config={"retention.ms": "-1"})
        timed(f"produce {args.records} records", produce_many, brokers, topic, SPEC, args.records)
        ends = end_offsets(brokers, topic)
        groups = [f"bench-app-{i}" for i in range(args.groups)]
        for i, group in enumerate(groups):
            consumer = Consumer({"bootstrap.servers": brokers, "group.id": group})
            share = (i + 1) / (args.groups + 1)
            consumer.commit(
                offsets=[TopicPartition(topic, p, int(e * share)) for p, e in ends.items()],
                asynchronous=False,
            )
            consumer.close()
        timed("backup (backup_topic)", backup_topic, settings, SPEC)
        first = timed("positions snapshot, first tick", take_snapshot, settings)
        print(f"  {first.summary()}")
        costs = [take_snapshot(settings).seconds for _ in range(args.ticks)]
        print(
            f"positions snapshot, unchanged ticks: mean {sum(costs) / len(costs) * 1000:.1f} ms, "
            f"max {max(costs) * 1000:.1f} ms over {len(costs)} ticks"
        )
        timed("delete the topic", delete_topic, admin, topic)
        report = timed(
            "restore under its own name",
            restore,
            settings,
            RestoreRequest("bekreftelser", target_topic=topic, force=True),
        )
        print(f"  {report.summary().splitlines()[0]}")
        planned = timed("plan (all groups)", positions.plan, settings, report.run_id)
        print("\n".join(f"  {line}" for line in planned.lines()[:6]))
        count = timed("apply", positions.apply, settings, planned)
        print(f"  committed {count} partition positions")
        checks = timed("verify positions (check)", positions.check, settings, planned)
        print(f"  {sum(c.ok for c in checks)} of {len(checks)} groups at the translated positions")
        with closing(db.connect(settings, autocommit=True)) as conn:
            rows = conn.execute("SELECT count(*) FROM consumer_group_positions").fetchone()
        print(f"consumer_group_positions rows: {rows[0] if rows else 0}")
    finally:
        admin.delete_topics([topic])
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
