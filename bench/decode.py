"""Decoding against the raw backup, in the same run: rows/s of each, and decoding's memory.

For each Avro table: produce N demo records (real Avro, one in ten with the older writer
schema) to a fresh 3-partition topic; in a fresh migrated database, time

- the **raw pass** (``backup.backup_topic``) over them, end to end;
- the **decode pass** over the resulting backlog of N raw rows
  (``decode.run.decode_once``: read raw rows, resolve schema ids, decode, COPY, watermark),
  in a child process so its peak RSS (VmHWM) is its own.

The goal (issue 18): decoding costs less per record than the raw backup, i.e. decode
rows/s > raw rows/s, and memory stays flat for a large backlog (batches of
BACKUP_DECODE_BATCH_SIZE).

    dev/with-services .venv/bin/python bench/decode.py [--records N] [--tables T ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from backup_pipeline.settings import load_settings
from backup_pipeline.topics import spec_for_table

AVRO = ("bekreftelser", "bekreftelse_paa_vegne_av")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def with_dbname(url: str, name: str) -> str:
    from dev.harness.db import with_dbname as impl

    return impl(url, name)


def produce(brokers: str, topic: str, table: str, n: int) -> None:
    from backup_pipeline.demo.data import good_record

    spec = spec_for_table(table)
    rng = random.Random(1)
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 50, "batch.size": 1 << 20})
    for _ in range(n):
        record = good_record(rng, spec.value_format, table)
        while True:
            try:
                producer.produce(topic, key=record.key, value=record.value)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(120) == 0


def child(env_json: str, table: str) -> None:
    """Decode the backlog of one table; print rows/s and VmHWM as JSON."""
    from backup_pipeline.decode.catalog import avro_table
    from backup_pipeline.decode.run import decode_once

    settings = load_settings(json.loads(env_json))
    started, cpu = time.perf_counter(), time.process_time()
    [report] = decode_once(settings, [avro_table(table)])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    hwm_kb = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm_kb = int(line.split()[1])
    print(
        json.dumps(
            {
                "decoded": report.decoded,
                "undecodable": report.undecodable,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_mb": hwm_kb / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--tables", nargs="*", default=list(AVRO))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from backup_pipeline.backup.run import backup_topic
    from backup_pipeline.migrate import migrate

    brokers = os.environ["KAFKA_BROKERS"]
    admin_url = os.environ["DATABASE_URL"]
    run_id = uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": brokers})
    rows: list[tuple[str, float, float, dict[str, Any]]] = []  # table, raw rows/s, raw CPU s
    for table in args.tables:
        topic = f"bench.decode.{table}.{run_id}"
        db_name = f"bench_decode_{run_id}_{table}"
        admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        url = with_dbname(admin_url, db_name)
        env = {
            "KAFKA_BROKERS": brokers,
            "DATABASE_URL": url,
            spec_for_table(table).topic_env_var: topic,
        }
        try:
            settings = load_settings(env)
            migrate(settings)
            log(f"{table}: producing {args.records} records")
            produce(brokers, topic, table, args.records)
            log(f"{table}: raw pass")
            started, cpu = time.perf_counter(), time.process_time()
            report = backup_topic(settings, spec_for_table(table))
            raw_seconds, raw_cpu = time.perf_counter() - started, time.process_time() - cpu
            assert report.records == args.records, report.summary()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
            log(f"{table}: decode pass over the backlog of {args.records} raw rows")
            out = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(env), table],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            decoded = json.loads(out.strip().splitlines()[-1])
            assert decoded["decoded"] == args.records, decoded
            rows.append((table, args.records / raw_seconds, raw_cpu, decoded))
        finally:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            admin.delete_topics([topic])
    load = os.getloadavg()
    print(
        f"records per table: {args.records}; load average {load[0]:.1f} {load[1]:.1f} "
        f"{load[2]:.1f} on {os.cpu_count()} cores"
    )
    # CPU: this process and its threads only (librdkafka's included for the raw pass), per
    # record; PostgreSQL's and Kafka's own processes are not counted.
    header = f"{'table':<26}{'raw rows/s':>12}{'decode rows/s':>15}{'ratio':>8}"
    print(f"{header}{'raw CPU us':>12}{'decode CPU us':>15}{'decode peak RSS MB':>20}")
    for table, raw_rate, raw_cpu, decoded in rows:
        rate = decoded["decoded"] / decoded["seconds"]
        print(
            f"{table:<26}{raw_rate:>12,.0f}{rate:>15,.0f}{rate / raw_rate:>8.2f}"
            f"{raw_cpu / args.records * 1e6:>12.1f}"
            f"{decoded['cpu_seconds'] / args.records * 1e6:>15.1f}"
            f"{decoded['peak_rss_mb']:>20.0f}"
        )


if __name__ == "__main__":
    main()
