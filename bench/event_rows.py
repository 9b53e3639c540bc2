"""Rows Dagster's own database gains per day from the backup (issue 17, points 1 and 2).

Starts what `make demo` starts, at the production defaults (nothing here sets a
BACKUP_SENSOR_* or any other backup setting): the demo producer (`--rate` records/s over the
three topics, a few awkward ones among them, so quarantine warns as in the demo) and
`dev/dagster` (code server, daemon, webserver on PostgreSQL storage, not `dagster dev`).
After `--warmup` minutes (follow runs started, first materializations written) it counts
`event_logs` rows by `dagster_event_type` (log lines have none), runless (`run_id = ''`)
and in-run, and `asset_check_executions` rows; again after `--minutes`; prints the growth
per type and extrapolated to a day.

    dev/with-services .venv/bin/python bench/event_rows.py [--minutes 15] [--warmup 2]

`--code PATH` runs another checkout's `dev/dagster` and package (with this checkout's
virtualenv), e.g. `git archive` of the commit before a change unpacked somewhere, for a
baseline on the same machine and services.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from freshness import location_error, run_cli, stop_stack  # noqa: E402

from dev.harness.processes import start_dev_dagster  # noqa: E402

Counts = Counter[str]


def log(message: str) -> None:
    print(f"event_rows: {message}", file=sys.stderr, flush=True)


def count_rows(url: str) -> Counts:
    """``{"<type> runless|in-run": rows, ..., "asset_check_executions": rows}`` now."""
    import psycopg

    counts: Counts = Counter()
    with psycopg.connect(url) as conn:
        for kind, runless, rows in conn.execute(
            "SELECT coalesce(dagster_event_type, 'log line'), run_id = '', count(*) "
            "FROM event_logs GROUP BY 1, 2"
        ):
            counts[f"{kind} {'runless' if runless else 'in-run'}"] += rows
        row = conn.execute("SELECT count(*) FROM asset_check_executions").fetchone()
        counts["asset_check_executions"] = row[0] if row else 0
    return counts


def report(before: Counts, after: Counts, seconds: float) -> str:
    per_day = 86_400 / seconds
    grown = {k: after[k] - before[k] for k in sorted(set(after) | set(before))}
    lines = [
        f"growth in {seconds / 60:.1f} min, and extrapolated per day "
        f"(machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, shared):",
        f"{'rows':>8} {'per day':>9}  kind",
    ]
    for kind, rows in sorted(grown.items(), key=lambda kv: -kv[1]):
        if rows and kind != "asset_check_executions":
            lines.append(f"{rows:>8} {rows * per_day:>9,.0f}  event_logs {kind}")
    events = sum(v for k, v in grown.items() if k != "asset_check_executions")
    runless = sum(v for k, v in grown.items() if k.endswith(" runless"))
    checks = grown.get("asset_check_executions", 0)
    lines += [
        f"{events:>8} {events * per_day:>9,.0f}  event_logs in all",
        f"{runless:>8} {runless * per_day:>9,.0f}  event_logs runless",
        f"{checks:>8} {checks * per_day:>9,.0f}  asset_check_executions",
    ]
    return "\n".join(lines)


def start_stack(
    repo: Path, home: Path, port: int, code_port: int
) -> tuple[subprocess.Popen[str], str]:
    """``repo``'s dev/dagster (its code server imports the package from ``repo``), with this
    checkout's virtualenv."""
    return start_dev_dagster(
        repo, home, port, code_port, VENV=str(Path(sys.executable).parent.parent)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes before counting")
    parser.add_argument("--rate", type=float, default=20.0, help="records/s over the 3 topics")
    parser.add_argument("--code", type=Path, help="checkout whose package Dagster runs")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DAGSTER_PORT", "3000")))
    parser.add_argument(
        "--code-port", type=int, default=int(os.environ.get("DAGSTER_CODE_SERVER_PORT", "4000"))
    )
    args = parser.parse_args()
    if not os.environ.get("KAFKA_BROKERS"):
        with_services = BENCH.parent / "dev" / "with-services"
        argv = [str(with_services), sys.executable, __file__, *sys.argv[1:]]
        os.execv(with_services, argv)  # noqa: S606 - our own script, no shell wanted

    state = Path(os.environ.get("BACKUP_DEV_STATE", BENCH.parent / ".dev"))
    home = (state / f"event-rows-home-{int(time.time())}").resolve()
    home.mkdir(parents=True)
    os.environ["DAGSTER_HOME"] = str(home)
    repo = (args.code or BENCH.parent).resolve()
    if args.code:
        log(f"Dagster runs the package of {repo}")
    for name in [k for k in os.environ if k.startswith("BACKUP_SENSOR_")]:
        del os.environ[name]  # production defaults
    run_cli("migrate")
    run_cli("create-topics", "--partitions", "3")
    bin_dir = Path(sys.executable).parent
    producer = subprocess.Popen(
        [str(bin_dir / "backup-pipeline"), "demo-producer", "--rate", f"{args.rate:g}"],
        stdout=subprocess.DEVNULL,
    )
    stack = None
    try:
        stack, url = start_stack(repo, home, args.port, args.code_port)
        if error := location_error(url):
            raise RuntimeError(f"the code location failed to load: {error}")
        log(f"{url} answers; warming up for {args.warmup:g} min")
        time.sleep(args.warmup * 60)  # a measurement window, not a wait for a condition
        dagster_url = os.environ["DAGSTER_PG_URL"]
        before, started = count_rows(dagster_url), time.monotonic()
        log(f"counting for {args.minutes:g} min")
        time.sleep(args.minutes * 60)
        after, seconds = count_rows(dagster_url), time.monotonic() - started
        print(report(before, after, seconds), flush=True)
        return 0
    finally:
        if stack is not None:
            stop_stack(stack)
        producer.terminate()
        producer.wait(30)


if __name__ == "__main__":
    sys.exit(main())
