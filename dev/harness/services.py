"""A dev/services instance of one's own (state dir, ports, pid files), for the fault tests
and the soak test, which stop and kill its servers without disturbing anyone else's."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psycopg

from backup_pipeline.migrate import migrate
from backup_pipeline.settings import load_settings
from dev.harness.processes import REPO, alive, free_ports
from dev.harness.waits import scaled


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
        while alive(pid):
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
