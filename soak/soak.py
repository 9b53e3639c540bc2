"""Soak test: producers write to all three topics while the pipeline runs under the Dagster
daemon, and faults are injected at random; at the end every produced record must be in
the backup exactly once.

    .venv/bin/python soak/soak.py --minutes 10

Not part of the test suite (it runs for minutes). It starts a dev/services instance of its
own (own state dir and ports) and injects the faults only there; Dagster's own storage is
a database on the shared dev instance (`dev/services up`) unless --dagster-storage-here.
See soak/README.md for what it does and what the figures mean.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

# Run as a script from a checkout: this checkout's packages, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak_faults import FAULT_KINDS, Faults
from soak_producers import Produced, producer_loop

from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.topics import TOPICS
from dev.harness.dagster import DagsterServer
from dev.harness.db import accounted, hwms
from dev.harness.kafka import consumer_end_offsets
from dev.harness.processes import REPO
from dev.harness.services import DevServices

log = logging.getLogger("soak")


# ------------------------------------------------------------------- probes ----


def lag(consumer: Consumer, database_url: str, topic: str) -> int:
    ends = consumer_end_offsets(consumer, topic)
    with psycopg.connect(database_url, connect_timeout=5, autocommit=True) as conn:
        marks = hwms(conn, topic)
    return sum(max(0, end - (marks.get(p, -1) + 1)) for p, end in ends.items())


class LagMonitor(threading.Thread):
    def __init__(self, brokers: str, database_url: str, topics: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.brokers, self.database_url, self.topics = brokers, database_url, topics
        self.max_lag: dict[str, int] = dict.fromkeys(topics.values(), 0)
        self.stop = threading.Event()

    def run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.brokers,
                "group.id": "soak-lag-probe",
                "isolation.level": "read_committed",
                "log_level": 0,
            }
        )
        try:
            while not self.stop.wait(2.0):
                for topic in self.topics.values():
                    try:
                        self.max_lag[topic] = max(
                            self.max_lag[topic], lag(consumer, self.database_url, topic)
                        )
                    except Exception as exc:  # a server is down: measure on the next round
                        log.debug("lag of %s: %s", topic, exc)
        finally:
            consumer.close()


# ------------------------------------------------------------------ checking ----


def wait_caught_up(
    brokers: str, database_url: str, topics: dict[str, str], timeout: float
) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "soak-probe",
            "log_level": 0,
            "isolation.level": "read_committed",
        }
    )
    started = time.monotonic()
    try:
        while True:
            try:
                if all(lag(consumer, database_url, t) == 0 for t in topics.values()):
                    return time.monotonic() - started
            except Exception as exc:
                log.info("waiting for catch-up: %s", exc)
            if time.monotonic() - started > timeout:
                raise SystemExit(f"the backup did not catch up within {timeout:.0f}s")
            time.sleep(2)
    finally:
        consumer.close()


UNFINISHED = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}


def unfinished_runs(server: DagsterServer, timeout: float) -> list[str]:
    """Runs that block their topic once ``timeout`` has passed. A follow run per job stays
    alive by design (it follows its topic until its successor takes over), so what counts
    is a second unfinished run of the same job (a handover that never completed) or any
    run that never got going (queued or starting)."""
    deadline = time.monotonic() + timeout
    while True:
        per_job: dict[str, list[dict[str, Any]]] = {}
        for run in server.runs():
            if run["status"] in UNFINISHED:
                per_job.setdefault(run["jobName"], []).append(run)
        left = [
            r["runId"]
            for runs in per_job.values()
            for i, r in enumerate(runs)
            if i > 0 or r["status"] not in {"STARTED", "CANCELING"}
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(2)


def run_counts(server: DagsterServer) -> dict[str, int]:
    return dict(Counter(r["status"] for r in server.runs()))


def failure_reasons(server: DagsterServer) -> dict[str, int]:
    """Why runs failed, roughly: the first line of each failed step's (or run's) error,
    with ids and numbers blanked so that alike failures count together."""
    reasons: Counter[str] = Counter()
    for run in server.runs():
        if run["status"] != "FAILURE":
            continue
        data = server.graphql(
            """query ($runId: ID!) { runOrError(runId: $runId) { ... on Run {
              eventConnection { events { __typename
                ... on ExecutionStepFailureEvent { error { message } }
                ... on MessageEvent { message } } } } } }""",
            {"runId": run["runId"]},
        )["runOrError"]
        events = data["eventConnection"]["events"]
        step = [e["error"]["message"] for e in events if e.get("error")]
        crash = [e["message"] for e in events if "terminated" in (e.get("message") or "")]
        text = (step or crash or ["(no error message)"])[0].strip().splitlines()[0]
        text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<run>", text)
        text = re.sub(r"\d+", "N", re.sub(r"soak\.[\w.]+", "<topic>", text))
        reasons[text[:160]] += 1
    return dict(reasons.most_common())


# ---------------------------------------------------------------------- main ----


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long producers write")
    parser.add_argument("--rate", type=float, default=40.0, help="records/s per topic")
    parser.add_argument("--awkward-share", type=float, default=0.05)
    parser.add_argument("--fault-interval", type=float, default=30.0, help="mean s between faults")
    parser.add_argument("--max-down", type=float, default=8.0, help="longest outage, seconds")
    parser.add_argument("--batch-size", type=int, default=200, help="BACKUP_BATCH_SIZE")
    parser.add_argument("--catch-up-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--faults", default=",".join(FAULT_KINDS), help="kinds to inject")
    parser.add_argument(
        "--dagster-storage-here",
        action="store_true",
        help="keep Dagster's storage on the faulty PostgreSQL too (default: shared dev one)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    parser.add_argument("--keep", action="store_true", help="keep the state dir afterwards")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rng = random.Random(args.seed)
    kinds = [k for k in args.faults.split(",") if k]
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {sorted(unknown)}")

    state = Path(tempfile.mkdtemp(prefix="bp-soak-"))
    services = DevServices(state)
    server: DagsterServer | None = None
    storage_admin: str | None = None
    storage_db = f"bp_soak_dagster_{uuid.uuid4().hex[:8]}"
    try:
        log.info("starting services in %s (seed %d)", state, args.seed)
        services.up()
        database_url = services.create_database()
        storage_admin = services.admin_url if args.dagster_storage_here else _shared_database_url()
        with psycopg.connect(storage_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{storage_db}"')
        storage_url = storage_admin.rsplit("/", 1)[0] + "/" + storage_db

        suffix = uuid.uuid4().hex[:8]
        topics = {spec.table: f"soak.{spec.table}.{suffix}" for spec in TOPICS}
        create_topics(AdminClient({"bootstrap.servers": services.brokers}), list(topics.values()))
        env = {
            "KAFKA_BROKERS": services.brokers,
            "DATABASE_URL": database_url,
            "DAGSTER_PG_URL": storage_url,
            "BACKUP_SENSOR_INTERVAL_SECONDS": "5",
            "BACKUP_BATCH_SIZE": str(args.batch_size),
            "BACKUP_VERSION": "1",
            **{spec.topic_env_var: topics[spec.table] for spec in TOPICS},
        }
        server = DagsterServer(state / "dagster_home", env)
        server.start()
        log.info("Dagster (dev/harness/dagster.py) on %s", server.url)

        produced = Produced()
        stop_producing = threading.Event()
        producers = [
            threading.Thread(
                target=producer_loop,
                args=(
                    services.brokers,
                    spec,
                    topics[spec.table],
                    args.rate,
                    args.awkward_share,
                    produced,
                    stop_producing,
                    args.seed + i,
                ),
                daemon=True,
            )
            for i, spec in enumerate(TOPICS)
        ]
        for thread in producers:
            thread.start()
        monitor = LagMonitor(services.brokers, database_url, topics)
        monitor.start()

        faults = Faults(services, server, rng, args.max_down)
        started = time.monotonic()
        deadline = started + args.minutes * 60
        rounds: list[str] = []
        while True:
            wait = rng.uniform(0.5, 1.5) * args.fault_interval
            if time.monotonic() + wait >= deadline - 10:
                break
            time.sleep(wait)
            if not rounds:  # every kind once per round, in random order
                rounds = rng.sample(kinds, len(kinds))
            faults.inject(rounds.pop())
        time.sleep(max(0.0, deadline - time.monotonic()))

        log.info("stopping the producers")
        stop_producing.set()
        for thread in producers:
            thread.join(360)
        services.up()  # in case the last fault left a server down (it never should)
        catch_up = wait_caught_up(services.brokers, database_url, topics, args.catch_up_timeout)
        monitor.stop.set()
        monitor.join(10)
        # No lag left: one follow run per job keeps going, nothing else may be left.
        stuck = unfinished_runs(server, 120)

        figures: dict[str, Any] = {
            "seed": args.seed,
            "minutes": args.minutes,
            "faults_injected": dict(faults.injected),
            "faults_skipped": dict(faults.skipped),
            "restart_seconds_max": {k: round(max(v), 1) for k, v in faults.restart_seconds.items()},
            "catch_up_seconds": round(catch_up, 1),
            "runs": run_counts(server),
            "runs_blocking_after_2_min": stuck,
            "run_failure_reasons": failure_reasons(server),
            "topics": {},
        }
        consumer = Consumer(
            {
                "bootstrap.servers": services.brokers,
                "group.id": "soak-final",
                "log_level": 0,
                "isolation.level": "read_committed",
            }
        )
        ok = True
        for spec in TOPICS:
            topic = topics[spec.table]
            delivered = produced.delivered.get(topic, set())
            with psycopg.connect(database_url, autocommit=True) as conn:
                rows = accounted(conn, spec, topic)
                marks = hwms(conn, topic)
            unique = set(rows)
            ends = consumer_end_offsets(consumer, topic)
            in_kafka = {(p, o) for p, end in ends.items() for o in range(end)}
            item: dict[str, Any] = {
                "produced": len(delivered),
                "delivery_failed": produced.failed[topic],
                "stored": len(rows),
                "lost": len(delivered - unique),
                "duplicated": len(rows) - len(unique),
                "stored_not_reported_delivered": len(unique - delivered),
                "kafka_offsets_not_stored": len(in_kafka - unique),
                "hwm_at_end": marks == {p: end - 1 for p, end in ends.items()},
                "max_lag": monitor.max_lag[topic],
            }
            figures["topics"][spec.table] = item
            ok = ok and bool(item["hwm_at_end"]) and item["lost"] == 0
            ok = ok and item["duplicated"] == 0 and item["kafka_offsets_not_stored"] == 0
        consumer.close()
        totals = {
            key: sum(t[key] for t in figures["topics"].values())
            for key in ("produced", "stored", "lost", "duplicated", "delivery_failed")
        }
        figures["totals"] = totals
        figures["max_lag"] = max(t["max_lag"] for t in figures["topics"].values())
        figures["ok"] = ok = ok and not stuck
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()
        if storage_admin:
            try:
                with psycopg.connect(storage_admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{storage_db}" WITH (FORCE)')
            except psycopg.Error as exc:
                log.warning("could not drop %s: %s", storage_db, exc)
        services.down()
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)


def _shared_database_url() -> str:
    """The shared dev instance's admin URL (``dev/services env``; it must be running)."""
    import subprocess

    out = subprocess.run(
        [str(REPO / "dev" / "services"), "env"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name == "DATABASE_URL":
            with closing(psycopg.connect(value, connect_timeout=5)):
                pass
            return value
    raise SystemExit("dev/services env printed no DATABASE_URL")


if __name__ == "__main__":
    sys.exit(main())
