"""Throughput of a full backup pass against the two ways of writing the same rows.

For each table: produce N realistic records to a fresh 3-partition topic, then in the same
run and on the same machine time

- the backup pass (``backup_pipeline.backup.run.backup_topic``) into a fresh migrated database,
  in a child process so its peak RSS is its own;
- a raw binary COPY of the very same rows (read back from the topic and mapped with
  ``records.map_messages`` before the clock starts) into an identical empty table, one
  transaction;
- the naive "UPDATE hwm; INSERT row; COMMIT" per record on a sample, extrapolated;

and, as a memory check, the peak RSS of a pass over 50,000 records against that of the pass
over N. See bench/README.md for how to read the output.

    python bench/backup_throughput.py [--records N] [--tables T ...] [--batch-size B]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Run as a script from a checkout: use this checkout's engine, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from throughput_inputs import VERSION, produce, read_rows, time_copy, time_per_record
from throughput_report import (
    MB,
    MEMORY_REFERENCE_RECORDS,
    PassResult,
    TableResult,
    print_profiles,
    print_report,
)

from backup_pipeline.topics import TOPICS, TopicSpec, spec_for_table
from dev.harness.kafka import end_offsets


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ services ----


def _with_dbname(url: str, dbname: str) -> str:
    params: dict[str, Any] = dict(conninfo_to_dict(url))
    params["dbname"] = dbname
    return make_conninfo("", **params)


class Resources:
    """Topics and databases this run created, removed at the end whatever happens."""

    def __init__(self, brokers: str, admin_url: str, run_id: str) -> None:
        self.brokers = brokers
        self.admin_url = admin_url
        self.run_id = run_id
        self.admin = AdminClient({"bootstrap.servers": brokers})
        self.topics: list[str] = []
        self.databases: list[str] = []
        self._seq = 0

    def new_topic(self, table: str, suffix: str = "") -> str:
        from backup_pipeline.kafka.admin import create_topics

        name = f"bench.{table}.{self.run_id}{suffix}"
        self.topics.append(name)
        create_topics(self.admin, [name], partitions=3)
        return name

    def new_database(self, purpose: str) -> str:
        """A fresh database with every migration applied; returns its URL."""
        from backup_pipeline.migrate import migrate
        from backup_pipeline.settings import load_settings

        self._seq += 1
        name = f"bench_{self.run_id}_{self._seq}_{purpose}"[:63]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.databases.append(name)
        url = _with_dbname(self.admin_url, name)
        migrate(load_settings({"KAFKA_BROKERS": self.brokers, "DATABASE_URL": url}))
        return url

    def drop_database(self, url: str) -> None:
        name = str(conninfo_to_dict(url)["dbname"])
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        with suppress(ValueError):
            self.databases.remove(name)

    def checkpoint(self) -> None:
        """Flush dirty buffers so one measurement does not pay for the previous one."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def cleanup(self) -> None:
        for name in list(self.databases):
            try:
                self.drop_database(_with_dbname(self.admin_url, name))
            except psycopg.Error as exc:
                log(f"could not drop database {name}: {exc}")
        if self.topics:
            futures = self.admin.delete_topics(self.topics, operation_timeout=30)
            for name, future in futures.items():
                try:
                    future.result()
                except Exception as exc:
                    log(f"could not delete topic {name}: {exc}")
            self.topics.clear()


# ------------------------------------------------------------------ the pass ----


def _vm_kb(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def child_main(job_path: str) -> None:
    """Entry of the child process: one backup pass, figures written as JSON."""
    job = json.loads(Path(job_path).read_text())
    from backup_pipeline.backup.run import backup_topic
    from backup_pipeline.settings import load_settings

    settings = load_settings(job["env"])
    spec = spec_for_table(job["table"])
    rss_start = _vm_kb("VmRSS")
    profiler = cProfile.Profile() if job.get("profile") else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    report = backup_topic(settings, spec)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.dump_stats(job["profile"])
    result = PassResult(
        records=report.records,
        rows=report.rows,
        quarantined=report.quarantined,
        lag_after=report.lag,
        payload_bytes=report.bytes_read,
        seconds=elapsed,
        # VmHWM, not getrusage: after exec, ru_maxrss also carries the peak of the parent
        # that spawned us (it holds the baseline's rows), VmHWM is this process's own.
        rss_start_mb=rss_start / 1024,
        peak_rss_mb=_vm_kb("VmHWM") / 1024,
        batches=report.batches,
    )
    Path(job["out"]).write_text(json.dumps(asdict(result)))


def run_pass(
    brokers: str,
    url: str,
    spec: TopicSpec,
    topic: str,
    batch_size: int | None,
    profile: str | None = None,
) -> PassResult:
    """One backup pass in a child process; checks what it committed to PostgreSQL."""
    env = {"KAFKA_BROKERS": brokers, "DATABASE_URL": url, spec.topic_env_var: topic}
    if batch_size:
        env["BACKUP_BATCH_SIZE"] = str(batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        job = Path(tmp, "job.json")
        out = Path(tmp, "out.json")
        job.write_text(
            json.dumps({"env": env, "table": spec.table, "out": str(out), "profile": profile})
        )
        with subprocess.Popen([sys.executable, __file__, "--child", str(job)]) as child:
            try:
                code = child.wait()
            finally:
                if child.poll() is None:
                    child.kill()
        if code != 0:
            raise RuntimeError(f"backup pass of {topic} failed (exit {code})")
        result = PassResult(**json.loads(out.read_text()))
    ends = end_offsets(brokers, topic)
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE version = %s").format(
                sql.Identifier(spec.table)
            ),
            (VERSION,),
        ).fetchone()
        hwms: dict[int, int] = dict(
            conn.execute(
                "SELECT kafka_partition, kafka_offset FROM bekreftelse_hwm "
                "WHERE version = %s AND kafka_topic = %s",
                (VERSION, topic),
            ).fetchall()
        )
    if not stored or stored[0] != result.rows or result.lag_after != 0:
        raise RuntimeError(f"pass of {topic}: {stored} rows committed, report {result}")
    if hwms != {p: end - 1 for p, end in ends.items()}:
        raise RuntimeError(f"pass of {topic}: HWMs {hwms}, end offsets {ends}")
    return result


# ------------------------------------------------------------------ one table ----


@contextmanager
def fresh_database(resources: Resources, purpose: str) -> Iterator[str]:
    url = resources.new_database(purpose)
    try:
        resources.checkpoint()
        yield url
    finally:
        resources.drop_database(url)


def bench_table(args: argparse.Namespace, resources: Resources, spec: TopicSpec) -> TableResult:
    brokers = resources.brokers
    result = TableResult(table=spec.table, records=args.records)
    short = spec.table.removeprefix("bekreftelse_").removeprefix("bekreftelse")[:8] or "b"

    topic = resources.new_topic(spec.table)
    log(f"{spec.table}: producing {args.records:,} records to {topic}")
    started = time.perf_counter()
    result.payload_bytes = produce(brokers, topic, spec, args.records, seed=args.seed)
    log(
        f"{spec.table}: produced in {time.perf_counter() - started:.1f}s "
        f"({result.payload_bytes / MB:.1f} MB of keys+values)"
    )
    small_topic = medium_topic = None
    small_count = min(args.records, MEMORY_REFERENCE_RECORDS)
    medium_count = max(1, args.records // 10)
    if not args.skip_memory_check:
        small_topic = resources.new_topic(spec.table, ".small")
        produce(brokers, small_topic, spec, small_count, seed=args.seed + 1)
        medium_topic = resources.new_topic(spec.table, ".medium")
        produce(brokers, medium_topic, spec, medium_count, seed=args.seed + 2)

    log(f"{spec.table}: reading the topic back and mapping the rows for the COPY baseline")
    rows = read_rows(brokers, topic, spec)
    if len(rows) != args.records:
        raise RuntimeError(f"read back {len(rows)} rows, produced {args.records}")

    for attempt in range(1, args.repeat + 1):
        with fresh_database(resources, f"pass_{short}") as url:
            log(f"{spec.table}: backup pass {attempt}/{args.repeat} (child process)")
            profile = None
            if args.profile:
                profile = str(Path(args.profile) / f"{spec.table}.{attempt}.prof")
            passed = run_pass(brokers, url, spec, topic, args.batch_size, profile)
            result.passes.append(passed)
            log(
                f"{spec.table}: pass {passed.seconds:.1f}s, {passed.rate:,.0f} records/s, "
                f"peak RSS {passed.peak_rss_mb:.0f} MB"
            )
        with fresh_database(resources, f"copy_{short}") as url:
            log(f"{spec.table}: raw binary COPY {attempt}/{args.repeat}, one transaction")
            seconds = time_copy(url, spec, rows)
            result.copy_seconds.append(seconds)
            log(f"{spec.table}: COPY {seconds:.1f}s, {len(rows) / seconds:,.0f} records/s")

    sample = rows[: min(args.per_record_sample, len(rows))]
    with fresh_database(resources, f"perrec_{short}") as url:
        log(f"{spec.table}: one transaction per record, {len(sample):,} records")
        result.per_record_sample = len(sample)
        result.per_record_seconds = time_per_record(url, spec, topic, sample)
        log(f"{spec.table}: per record {result.per_record_rate:,.0f} records/s")
    del rows, sample

    if small_topic is not None:
        with fresh_database(resources, f"small_{short}") as url:
            log(f"{spec.table}: memory check, pass over {small_count:,} records")
            result.small_pass = run_pass(brokers, url, spec, small_topic, args.batch_size)
            log(f"{spec.table}: small pass peak RSS {result.small_pass.peak_rss_mb:.0f} MB")
    if medium_topic is not None:
        with fresh_database(resources, f"medium_{short}") as url:
            log(f"{spec.table}: memory check, pass over {medium_count:,} records")
            result.medium_pass = run_pass(brokers, url, spec, medium_topic, args.batch_size)
            log(f"{spec.table}: medium pass peak RSS {result.medium_pass.peak_rss_mb:.0f} MB")
    return result


# ------------------------------------------------------------------ main ----


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records per table")
    parser.add_argument(
        "--tables",
        nargs="+",
        default=[t.table for t in TOPICS],
        choices=[t.table for t in TOPICS],
        metavar="TABLE",
        help="tables to benchmark (default: all three)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="BACKUP_BATCH_SIZE for the passes"
    )
    parser.add_argument(
        "--skip-memory-check", action="store_true", help="skip the 50k and N/10 memory-check passes"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="passes and COPYs per table; medians are shown"
    )
    parser.add_argument(
        "--per-record-sample", type=int, default=5000, help="records for the per-record path"
    )
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument(
        "--profile", metavar="DIR", help="run each pass under cProfile, write DIR/<table>.N.prof"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.records < 100 or args.repeat < 1:
        parser.error("--records must be >= 100 and --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    brokers = os.environ.get("KAFKA_BROKERS")
    admin_url = os.environ.get("DATABASE_URL")
    if not brokers or not admin_url:
        print(
            'KAFKA_BROKERS and DATABASE_URL must be set: eval "$(dev/services up)" first, '
            "or run `make bench`",
            file=sys.stderr,
        )
        return 2
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    resources = Resources(brokers, admin_url, uuid.uuid4().hex[:8])
    results: list[TableResult] = []
    try:
        for table in args.tables:
            results.append(bench_table(args, resources, spec_for_table(table)))
    finally:
        log("cleaning up: dropping bench databases, deleting bench topics")
        resources.cleanup()
    all_ok = print_report(args, results)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        **asdict(r),
                        "pass_records_per_s": r.pass_rate,
                        "copy_records_per_s": r.copy_rate,
                        "per_record_records_per_s": r.per_record_rate,
                        "backup_over_copy": r.pass_rate / r.copy_rate,
                        "backup_over_per_record": r.pass_rate / r.per_record_rate,
                        "memory_ratio": r.memory_ratio,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    if args.profile:
        print_profiles(args.profile)
    return 1 if args.strict and not all_ok else 0


if __name__ == "__main__":
    sys.exit(main())
