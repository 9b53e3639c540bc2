"""The test infrastructure the tests, soak/ and bench/ share: produce records, read what
was stored, run a dev/services instance of one's own and a Dagster stack (`dagster dev` as
a subprocess, talked to through its GraphQL API)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipeline.demo.data import DemoRecord, awkward_record, good_record
from backup_pipeline.migrate import migrate
from backup_pipeline.readback import split_origin
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.topics import TOPICS, TopicSpec
from backup_pipeline_tests.waits import bounded, scaled, wait_until

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------- services ----


def with_dbname(url: str, dbname: str) -> str:
    if "://" in url:  # keep URLs as URLs: DAGSTER_PG_URL must be one
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def admin_execute(services: dict[str, str], statement: str) -> None:
    with psycopg.connect(services["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(statement)


def service_env(
    services: dict[str, str],
    database_url: str,
    topic_names: dict[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a backup of ``topic_names`` (table -> topic) into ``database_url``."""
    env = {"KAFKA_BROKERS": services["KAFKA_BROKERS"], "DATABASE_URL": database_url}
    for spec in TOPICS:
        if topic_names and spec.table in topic_names:
            env[spec.topic_env_var] = topic_names[spec.table]
    env.update(extra)
    return env


def make_settings(
    services: dict[str, str],
    database_url: str,
    topic_names: dict[str, str] | None = None,
    **extra: str,
) -> Settings:
    return load_settings(service_env(services, database_url, topic_names, **extra))


def add_partitions(admin: AdminClient, topic: str, total: int) -> None:
    for future in admin.create_partitions([NewPartitions(topic, total)]).values():
        future.result()
    wait_until(
        lambda: len(admin.list_topics(topic, timeout=10).topics[topic].partitions) >= total,
        30,
        "the new partitions to show in metadata",
        interval=0.2,
    )


# ------------------------------------------------------------------ records ----


def produce(
    producer: Producer, topic: str, records: list[DemoRecord], partition: int | None = None
) -> None:
    for record in records:
        kwargs = {} if partition is None else {"partition": partition}
        producer.produce(
            topic, key=record.key, value=record.value, headers=list(record.headers), **kwargs
        )
        producer.poll(0)
    assert producer.flush(30) == 0


def produce_many(brokers: str, topic: str, spec: TopicSpec, n: int, seed: int = 1) -> None:
    """``n`` realistic records, one in twenty awkward (they go to quarantine)."""
    rng = random.Random(seed)
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "enable.idempotence": True})
    for _ in range(n):
        make = awkward_record if rng.random() < 0.05 else good_record
        record = make(rng, spec.value_format, spec.table)
        while True:
            try:
                producer.produce(
                    topic, key=record.key, value=record.value, headers=list(record.headers)
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0


def good_records(spec: TopicSpec, n: int, seed: int = 1) -> list[DemoRecord]:
    rng = random.Random(seed)
    return [good_record(rng, spec.value_format, spec.table) for _ in range(n)]


def key(n: int) -> bytes:
    return struct.pack(">q", n)


def stored_offsets(conn: psycopg.Connection, table: str, version: int = 1) -> list[tuple[int, int]]:
    return [
        tuple(r)
        for r in conn.execute(
            f"SELECT kafka_partition, kafka_offset FROM {table} WHERE version = %s ORDER BY 1, 2",
            (version,),
        ).fetchall()
    ]


def quarantined(
    conn: psycopg.Connection, topic: str, version: int = 1
) -> list[tuple[int, int, str]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT kafka_partition, kafka_offset, reason FROM backup_quarantine "
            "WHERE kafka_topic = %s AND version = %s ORDER BY 1, 2",
            (topic, version),
        ).fetchall()
    ]


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


def delete_topic(admin: AdminClient, topic: str) -> None:
    """Delete ``topic`` and wait until it has left the cluster's metadata."""
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result()
    wait_until(
        lambda: topic not in admin.list_topics(timeout=10).topics,
        30,
        f"the deleted topic {topic} to leave the metadata",
        interval=0.2,
    )


def end_offsets(brokers: str, topic: str) -> dict[int, int]:
    """Per partition of ``topic``, the offset after the last committed record."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "test-probe",
            "isolation.level": "read_committed",
        }
    )
    try:
        return consumer_end_offsets(consumer, topic)
    finally:
        consumer.close()


def consumer_end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    """``end_offsets`` through a consumer one keeps (a monitor that asks every second)."""
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
        for p in sorted(partitions)
    }


# -------------------------------------------------------- own dev/services ----


def _alive(pid: int) -> bool:
    """Alive and not a zombie (a killed daemon may wait a while for PID 1 to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[-1].split(" ", 1)[0] != "Z"


class DevServices:
    """A dev/services instance of its own: state dir, ports, pid files.

    ``stop``/``kill`` signal one server by the pid in its pid file and wait until it is
    gone; ``up`` starts whatever is missing (and keeps what runs), as dev/services does.
    """

    PORT_VARS = (
        "BACKUP_DEV_KAFKA_PORT",
        "BACKUP_DEV_KAFKA_CONTROLLER_PORT",
        "BACKUP_DEV_KAFKA_SSL_PORT",
        "BACKUP_DEV_KAFKA_SASL_SSL_PORT",
        "BACKUP_DEV_PG_PORT",
    )

    def __init__(self, state: Path) -> None:
        self.state = state
        self.state.mkdir(parents=True, exist_ok=True)
        self.env = {"BACKUP_DEV_STATE": str(state)}
        self.env.update(free_ports(self.PORT_VARS))
        self.exports: dict[str, str] = {}
        # The Kafka jars of the shared instance, if present, spare a Maven run.
        shared = Path(os.environ.get("BACKUP_DEV_STATE") or REPO / ".dev") / "kafka-libs"
        if (shared / ".stamp").exists() and not (state / "kafka-libs").exists():
            shutil.copytree(shared, state / "kafka-libs", symlinks=True)

    def _run(self, command: str) -> str:
        env = {**os.environ, **self.env}
        done = subprocess.run(
            [str(REPO / "dev" / "services"), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(300),
        )
        if done.returncode != 0:
            raise AssertionError(f"dev/services {command} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def up(self) -> float:
        """Start what is missing; return how long it took."""
        started = time.monotonic()
        out = self._run("up")
        for line in out.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if value:
                self.exports[name] = value
        return time.monotonic() - started

    def down(self) -> None:
        self._run("down")

    def pid(self, server: str) -> int:
        return int((self.state / f"{server}.pid").read_text().split()[0])

    def signal(self, server: str, sig: int, timeout: float = 60) -> float:
        """Send ``sig`` to ``server`` ("postgres" or "kafka"), wait until it has exited."""
        pid = self.pid(server)
        started = time.monotonic()
        os.kill(pid, sig)
        while _alive(pid):
            assert time.monotonic() - started < scaled(timeout), (
                f"{server} (pid {pid}) did not exit"
            )
            time.sleep(0.05)
        return time.monotonic() - started

    @property
    def brokers(self) -> str:
        return self.exports["KAFKA_BROKERS"]

    @property
    def admin_url(self) -> str:
        return self.exports["DATABASE_URL"]

    def database_url(self, dbname: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + dbname

    def create_database(self, migrated: bool = True) -> str:
        name = f"bp_fault_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = self.database_url(name)
        if migrated:
            migrate(load_settings({"KAFKA_BROKERS": self.brokers, "DATABASE_URL": url}))
        return url


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(") ", 1)[-1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_process(proc: subprocess.Popen[Any], grace: float = 30, *, group: bool = False) -> None:
    """SIGTERM ``proc`` (its process group with ``group``), SIGKILL if it has not exited
    within ``grace`` (scaled) seconds, then SIGKILL whatever it started that outlived it:
    Dagster's gRPC code servers run in sessions of their own and would linger for hours.
    A server slow to shut down on a busy machine is not what a test is about."""
    if proc.poll() is not None:
        return
    started = _descendants(proc.pid)

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(scaled(grace))
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()
    for pid in started:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def free_ports(names: tuple[str, ...]) -> dict[str, str]:
    import socket

    sockets = [socket.socket() for _ in names]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return {n: str(s.getsockname()[1]) for n, s in zip(names, sockets, strict=True)}
    finally:
        for s in sockets:
            s.close()


# ---------------------------------------------------------------- dagster ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DagsterServer:
    def __init__(self, home: Path, env: dict[str, str], port: int | None = None) -> None:
        self.home = home
        self.env = env
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "dagster-dev.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None, timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dagster.yaml", self.home / "dagster.yaml")
        env = {**os.environ, **self.env, **(extra_env or {}), "DAGSTER_HOME": str(self.home)}
        dagster = str(Path(sys.executable).parent / "dagster")
        self.proc = subprocess.Popen(
            [
                dagster,
                "dev",
                "-w",
                str(REPO / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            cwd=REPO,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_for(lambda: self._location_loaded(), timeout, "code location to load")

    def stop(self, grace: float = 60) -> None:
        """Stop Dagster: runs end as they would on a redeploy; after ``grace`` seconds,
        or at a fixture's teardown with a short one, it is killed."""
        if self.proc:
            stop_process(self.proc, grace, group=True)
        self.proc = None

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(  # noqa: S310 - our own http URL
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise AssertionError(payload["errors"])
        return payload["data"]

    def _location_loaded(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"dagster dev exited: see {self.log}:\n{self.tail()}")
        try:
            data = self.graphql("""{ workspaceOrError { ... on Workspace {
                locationEntries { name loadStatus locationOrLoadError {
                  __typename ... on PythonError { message } } } } } }""")
        except OSError:
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        for entry in entries:
            if entry["locationOrLoadError"]["__typename"] == "PythonError":
                raise AssertionError(entry["locationOrLoadError"]["message"])
        return bool(entries) and all(
            e["loadStatus"] == "LOADED"
            and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """``waits.wait_until`` (scaled, within the test's timeout) with the server's log."""
        return wait_until(condition, timeout, what, interval=1, describe=self.tail)

    def runs(self) -> list[dict[str, Any]]:
        data = self.graphql("""{ runsOrError(limit: 200) { ... on Runs { results {
            runId jobName status tags { key value } } } } }""")
        return data["runsOrError"]["results"]

    def materializations(self, asset: str, limit: int = 50) -> list[dict[str, Any]]:
        data = self.graphql(
            """query ($path: [String!]!, $limit: Int) {
            assetOrError(assetKey: {path: $path}) { ... on Asset {
              assetMaterializations(limit: $limit) { runId
                metadataEntries { label __typename
                  ... on IntMetadataEntry { intValue }
                  ... on FloatMetadataEntry { floatValue }
                  ... on TextMetadataEntry { text } } } } } }""",
            {"path": [asset], "limit": limit},
        )
        return data["assetOrError"]["assetMaterializations"]


def run_events(server: DagsterServer, run_id: str) -> tuple[str, list[str]]:
    data = server.graphql(
        """query ($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run {
          status eventConnection { events { __typename ... on MessageEvent { message } } }
        } } }""",
        {"runId": run_id},
    )["runOrError"]
    messages = [e.get("message") or "" for e in data["eventConnection"]["events"]]
    return data["status"], messages


def run_process_pid(server: DagsterServer, run_id: str) -> int | None:
    """The run worker's pid, from the run's own "Started process for run (pid: N)." event."""
    _, messages = run_events(server, run_id)
    for message in messages:
        if found := re.search(r"Started process for run \(pid: (\d+)\)", message):
            return int(found[1])
    return None


Record = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]], int]


def read_topic(brokers: str, topic: str) -> dict[int, list[Record]]:
    """Every readable record per partition: (offset, key, value, headers, timestamp ms)."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"test-read-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            for p in meta.partitions
        }
        result: dict[int, list[Record]] = {p: [] for p in meta.partitions}
        todo = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        # consume() returns early only with a full batch: short polls, one overall deadline.
        deadline = time.monotonic() + bounded(30)
        while todo:
            assert time.monotonic() < deadline, f"{topic}: partitions {sorted(todo)} never ended"
            for m in consumer.consume(500, timeout=0.1):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(m.partition())
                    continue
                result[m.partition()].append(
                    (m.offset(), m.key(), m.value(), list(m.headers() or []), m.timestamp()[1])
                )
                if m.offset() >= ends[m.partition()][1] - 1:
                    todo.discard(m.partition())
        return result
    finally:
        consumer.close()


def without_offsets(records: dict[int, list[Record]]) -> dict[int, list[tuple[Any, ...]]]:
    """What a restore must reproduce: per partition, in order, everything but the offset."""
    out = {}
    for p, recs in records.items():
        out[p] = [(k, v, split_origin(h)[0], ts) for _, k, v, h, ts in recs]
    return out
