"""How much memory and time the analysts' DataFrame API takes for a large window.

    eval "$(dev/services up)"
    python bench/analysts_read.py [--records 500000] [--chunk-rows 50000]

Fills a fresh database (migrated, dropped afterwards) with N demo events
(``demo.data.event_value``, both instant shapes) by COPY, then reads the whole serving
version of ``bekreftelse_hendelser_typed`` in a child process each way, so each peak RSS
(``VmHWM``) is its own:

- **chunks**: ``analysts.read_chunks`` (one chunk alive at a time; rows counted);
- **frame**: ``analysts.read_frame`` (everything in one DataFrame), as the baseline;
- **SQL**: ``SELECT count(hendelse_tidspunkt)`` server-side, the cost of the view's parsing.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
import uuid

import psycopg

from backup_pipeline.demo import data
from backup_pipeline.migrate import migrate
from backup_pipeline.settings import load_settings

CHILD = """
import sys, time
from backup_pipeline import analysts
from backup_pipeline.settings import load_settings
mode, chunk_rows = sys.argv[1], int(sys.argv[2])
conn = analysts.connect(load_settings())
started = time.perf_counter()
if mode == "chunks":
    rows = sum(len(c) for c in analysts.read_chunks(
        conn, "bekreftelse_hendelser_typed", chunk_rows=chunk_rows))
else:
    rows = len(analysts.read_frame(conn, "bekreftelse_hendelser_typed", chunk_rows=chunk_rows))
seconds = time.perf_counter() - started
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
print(rows, seconds, int(hwm) // 1024)
"""


def child(url: str, mode: str, chunk_rows: int) -> tuple[int, float, int]:
    env = {**os.environ, "DATABASE_URL": url}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(chunk_rows)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), float(out[1]), int(out[2])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    args = parser.parse_args()
    base = os.environ["DATABASE_URL"]
    name = f"bench_analysts_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        migrate(load_settings({**os.environ, "DATABASE_URL": url}))
        rng = random.Random(18)
        with psycopg.connect(url) as conn:
            with conn.cursor().copy(
                "COPY bekreftelse_hendelser (version, kafka_partition, kafka_offset,"
                " record_key, arbeidssoeker_id, data) FROM STDIN"
            ) as copy:
                for i in range(args.records):
                    copy.write_row((1, i % 3, i, 1, 1, data.event_value(rng).decode()))
            conn.execute(
                "INSERT INTO backup_versions (table_name, version, kafka_topic, state)"
                " VALUES ('bekreftelse_hendelser', 1, 'bench', 'serving')"
            )
            conn.commit()
            conn.execute("ANALYZE bekreftelse_hendelser")
            started = time.perf_counter()
            conn.execute(
                "SELECT count(hendelse_tidspunkt) FROM bekreftelse_hendelser_typed_current"
            )
            sql_seconds = time.perf_counter() - started
        print(f"{args.records:,} events, chunk_rows {args.chunk_rows:,}, load {os.getloadavg()}")
        print(f"SQL parse only: {sql_seconds:.1f} s ({args.records / sql_seconds:,.0f} rows/s)")
        for mode in ("chunks", "frame"):
            rows, seconds, rss = child(url, mode, args.chunk_rows)
            assert rows == args.records, (mode, rows)
            print(f"{mode:6}: {seconds:.1f} s ({rows / seconds:,.0f} rows/s), peak RSS {rss} MB")
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
