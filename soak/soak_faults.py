"""The faults the soak test injects at random into its own dev/services instance and Dagster:
PostgreSQL restarted or crashed, Kafka killed or stopped, a backup run's process killed.
Imported by soak.py (soak/ is on sys.path as it runs)."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

from dev.harness.dagster import DagsterServer, run_process_pid
from dev.harness.services import DevServices

log = logging.getLogger("soak")


FAULT_KINDS = (
    "postgres_restart",  # fast shutdown (SIGINT), down a few seconds, start again
    "postgres_crash",  # SIGKILL of the postmaster, crash recovery on start
    "kafka_kill",  # SIGKILL of the broker, down a few seconds, start again
    "kafka_stop",  # SIGTERM (clean shutdown), down a few seconds, start again
    "run_kill",  # SIGKILL of the process executing a Dagster backup run
)


# ------------------------------------------------------------------- faults ----


class Faults:
    def __init__(
        self, services: DevServices, server: DagsterServer, rng: random.Random, max_down: float
    ) -> None:
        self.services, self.server, self.rng, self.max_down = services, server, rng, max_down
        self.injected: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.restart_seconds: dict[str, list[float]] = {}

    def inject(self, kind: str) -> None:
        if kind == "run_kill":
            self._kill_a_run()
            return
        server, sig = {
            "postgres_restart": ("postgres", signal.SIGINT),
            "postgres_crash": ("postgres", signal.SIGKILL),
            "kafka_kill": ("kafka", signal.SIGKILL),
            "kafka_stop": ("kafka", signal.SIGTERM),
        }[kind]
        self.services.signal(server, sig)
        down = self.rng.uniform(0, self.max_down)
        log.info("fault %s: %s stopped with %s, down for %.1fs", kind, server, sig.name, down)
        time.sleep(down)
        took = self.services.up()
        self.restart_seconds.setdefault(server, []).append(took)
        self.injected[kind] += 1
        log.info("fault %s: %s back after %.1fs", kind, server, took)

    def _kill_a_run(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                running = [r for r in self.server.runs() if r["status"] == "STARTED"]
                for run in running:
                    pid = run_process_pid(self.server, run["runId"])
                    if pid and _is_python(pid):
                        os.kill(pid, signal.SIGKILL)
                        self.injected["run_kill"] += 1
                        log.info(
                            "fault run_kill: run %s (%s), pid %d", run["runId"], run["jobName"], pid
                        )
                        return
            except Exception as exc:  # the webserver may be busy: try again
                log.debug("looking for a run to kill: %s", exc)
            time.sleep(0.3)
        self.skipped["run_kill"] += 1
        log.info("fault run_kill: no run was running within 30s, skipped")


def _is_python(pid: int) -> bool:
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
