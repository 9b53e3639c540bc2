"""Freshness under production-style Dagster: Kafka acknowledgement -> row visible (issue 10, 7).

Starts `dev/dagster` (code server, daemon, webserver on the repo's dagster.yaml, default
settings: nothing here sets BACKUP_SENSOR_INTERVAL_SECONDS or any other backup setting),
produces `--rate` records/s to each topic for `--minutes`, notes when Kafka acknowledged
each record (delivery callback) and polls PostgreSQL every `--poll` seconds for rows past
the last (partition, offset) seen, to find when each record became visible. Prints
p50/p95/max per topic, the runs started per topic in the window and the runs per day that
makes, and the machine's load. It measures what is on disk: the run model, the sensors and
the checks are whatever the code is now.

    dev/with-services .venv/bin/python bench/freshness.py [--minutes 10] [--check-health]

Without KAFKA_BROKERS in the environment it re-runs itself under dev/with-services, which
starts Kafka and PostgreSQL and stops them afterwards if they were not running.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
# Run as a script from a checkout: this checkout's packages, installed or not.
sys.path.insert(0, str(BENCH.parent))

from freshness_report import (  # noqa: E402
    LoadSampler,
    Observations,
    Window,
    report,
    run_counts,
)

from dev.harness.processes import REPO, start_dev_dagster  # noqa: E402


def log(message: str) -> None:
    print(f"freshness: {message}", file=sys.stderr, flush=True)


def run_cli(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "backup-pipeline"), *args], check=True)


def produce(
    tables: list[str],
    rate: float,
    window: Window,
    stop: threading.Event,
    obs: Observations,
) -> None:
    """`rate` records/s to each table's topic until `stop`; acks inside `window` are kept."""
    from confluent_kafka import KafkaError, Message, Producer

    from backup_pipeline.demo.data import good_record
    from backup_pipeline.kafka.config import producer_config
    from backup_pipeline.settings import load_settings
    from backup_pipeline.topics import spec_for_table

    settings = load_settings()
    producer = Producer(producer_config(settings))
    specs = [spec_for_table(t) for t in tables]
    rng = random.Random(10)

    def delivered(err: KafkaError | None, msg: Message, *, table: str) -> None:
        acked_at = time.time()
        if err is not None:
            obs.produce_errors += 1
        elif window.contains(acked_at):
            with obs.lock:
                obs.acked[(table, msg.partition() or 0, msg.offset() or 0)] = acked_at

    sent = 0
    started = time.monotonic()
    total_rate = rate * len(specs)
    while not stop.is_set():
        spec = specs[sent % len(specs)]
        # Only good records: each one must become a row (awkward ones go to quarantine).
        record = good_record(rng, spec.value_format, spec.table)
        producer.produce(
            settings.topic(spec),
            key=record.key,
            value=record.value,
            headers=list(record.headers),
            on_delivery=functools.partial(delivered, table=spec.table),
        )
        sent += 1
        producer.poll(0)
        delay = started + sent / total_rate - time.monotonic()
        if delay > 0:
            producer.poll(delay)  # waits for delivery callbacks instead of sleeping
    producer.flush(30)


def partitions_of(tables: list[str]) -> dict[str, list[int]]:
    from confluent_kafka.admin import AdminClient

    from backup_pipeline.kafka.config import admin_config
    from backup_pipeline.settings import load_settings
    from backup_pipeline.topics import spec_for_table

    settings = load_settings()
    admin = AdminClient(admin_config(settings))
    found = {}
    for table in tables:
        topic = settings.topic(spec_for_table(table))
        found[table] = sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    return found


def watch_rows(
    partitions: dict[str, list[int]], interval: float, stop: threading.Event, obs: Observations
) -> None:
    """Every `interval` s, per table, fetch the rows past the last offset seen of each
    (version, partition): one index range scan each, so polling stays cheap on big tables.
    Every version counts (a row is visible once any version stored it); the versions are
    looked up again every 10 s, so one that starts meanwhile is seen too."""
    import psycopg
    from psycopg import sql

    last: dict[tuple[str, int, int], int] = {}  # (table, version, partition) -> offset
    versions: dict[str, list[int]] = {}
    looked_up = 0.0
    with psycopg.connect(os.environ.get("DATABASE_URL", ""), autocommit=True) as conn:
        while not stop.is_set():
            tick = time.monotonic()
            if tick - looked_up > 10:
                looked_up = tick
                for table in partitions:
                    rows = conn.execute(
                        sql.SQL(
                            "SELECT version, kafka_partition, max(kafka_offset) FROM {} "
                            "GROUP BY 1, 2"
                        ).format(sql.Identifier(table))
                    ).fetchall()
                    for version, partition, offset in rows:
                        last.setdefault((table, int(version), int(partition)), int(offset))
                    versions[table] = sorted({int(v) for v, _, _ in rows}) or [1]
            for table, parts in partitions.items():
                marks = [
                    (v, p, last.get((table, v, p), -1)) for v in versions[table] for p in parts
                ]
                rows = conn.execute(
                    sql.SQL(
                        "SELECT m.v, m.p, t.kafka_offset "
                        "FROM unnest(%s::int[], %s::int[], %s::bigint[]) AS m(v, p, o) "
                        "JOIN LATERAL (SELECT kafka_offset FROM {} WHERE version = m.v "
                        "AND kafka_partition = m.p AND kafka_offset > m.o) t ON true"
                    ).format(sql.Identifier(table)),
                    ([m[0] for m in marks], [m[1] for m in marks], [m[2] for m in marks]),
                ).fetchall()
                seen_at = time.time()
                with obs.lock:
                    for version, partition, offset in rows:
                        obs.seen.setdefault((table, int(partition), int(offset)), seen_at)
                        key = (table, int(version), int(partition))
                        last[key] = max(last.get(key, -1), int(offset))
            stop.wait(max(0.0, interval - (time.monotonic() - tick)))


def start_stack(home: Path, port: int, code_port: int) -> tuple[subprocess.Popen[str], str]:
    return start_dev_dagster(REPO, home, port, code_port)


def stop_stack(stack: subprocess.Popen[str]) -> None:
    if stack.poll() is None:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()


def location_error(url: str) -> str | None:
    import requests

    query = (
        "{ workspaceOrError { ... on Workspace { locationEntries { name "
        "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
    )
    data = requests.post(f"{url}/graphql", json={"query": query}, timeout=30).json()
    for entry in data["data"]["workspaceOrError"]["locationEntries"]:
        if entry["locationOrLoadError"]["__typename"] == "PythonError":
            return str(entry["locationOrLoadError"]["message"]).splitlines()[0]
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="measurement window")
    parser.add_argument("--rate", type=float, default=20.0, help="records/s per topic")
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds produced first, unjudged"
    )
    parser.add_argument("--grace", type=float, default=120.0, help="seconds to wait for stragglers")
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between PostgreSQL polls")
    parser.add_argument(
        "--check-health", action="store_true", help="sample the UI's asset checks meanwhile"
    )
    parser.add_argument("--health-interval", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=int(os.environ.get("DAGSTER_PORT", "3000")))
    parser.add_argument(
        "--code-port", type=int, default=int(os.environ.get("DAGSTER_CODE_SERVER_PORT", "4000"))
    )
    args = parser.parse_args()

    if not os.environ.get("KAFKA_BROKERS"):
        with_services = REPO / "dev" / "with-services"
        argv = [str(with_services), sys.executable, __file__, *sys.argv[1:]]
        os.execv(with_services, argv)  # noqa: S606 - our own script, no shell wanted

    from backup_pipeline.topics import TABLES

    tables = list(TABLES)
    state = Path(os.environ.get("BACKUP_DEV_STATE", REPO / ".dev"))
    home = (state / "freshness-dagster-home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)

    run_cli("migrate")
    run_cli("create-topics", "--partitions", "3")

    obs = Observations()
    window = Window()
    stop_producing, stop_watching, stop_sampling = (threading.Event() for _ in range(3))
    threads: list[threading.Thread] = []
    load = LoadSampler()
    health: Any = None
    stack: subprocess.Popen[str] | None = None
    load_before = os.getloadavg()[0]
    try:
        log(f"starting dev/dagster (DAGSTER_HOME={home}, default settings)")
        stack, url = start_stack(home, args.port, args.code_port)
        if error := location_error(url):
            raise RuntimeError(f"the code location failed to load: {error}")
        log(f"{url} answers; producing {args.rate:g} records/s per topic")
        threads = [
            threading.Thread(
                target=watch_rows, args=(partitions_of(tables), args.poll, stop_watching, obs)
            ),
            threading.Thread(target=produce, args=(tables, args.rate, window, stop_producing, obs)),
            threading.Thread(target=load.run, args=(stop_sampling,)),
        ]
        if args.check_health:
            sys.path.insert(0, str(BENCH))
            import check_health

            health = check_health.HealthSamples()
            threads.append(
                threading.Thread(
                    target=check_health.sample,
                    args=(url, float("inf"), args.health_interval, stop_sampling),
                    kwargs={"into": health},
                )
            )
        for thread in threads:
            thread.start()
        time.sleep(args.warmup)
        window.start = time.time()
        log(f"measuring for {args.minutes:g} min")
        time.sleep(args.minutes * 60)
        window.end = time.time()
        stop_producing.set()
        stop_sampling.set()
        deadline = time.monotonic() + args.grace
        while (pending := obs.pending()) and time.monotonic() < deadline:
            time.sleep(1)
        if pending:
            log(f"{pending} records still not visible after {args.grace:g} s")
        stop_watching.set()
        runs = run_counts(tables, window)
        print(report(tables, obs, window, runs, load_before, load))
        if health is not None:
            print(health.report())
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for event in (stop_producing, stop_sampling, stop_watching):
            event.set()
        for thread in threads:
            thread.join(35)
        if stack is not None:
            log("stopping dev/dagster")
            stop_stack(stack)


if __name__ == "__main__":
    sys.exit(main())
