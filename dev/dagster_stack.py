"""Production-style Dagster on this machine: code server, daemon and webserver (`dev/dagster`).

The same three processes a deployment runs (see README, "Running in production"), so what
the demo and the benchmarks show is what production shows; `dagster dev` differs (it owns a
code server per process, warns about `dg dev` and ignores a dagster.yaml in the current
folder). Each process gets its own session, so a Ctrl-C in the terminal reaches only this
supervisor, which then stops them in an order that leaves no run behind: the daemon first
(no new runs), then every in-progress run is cancelled through Dagster and awaited (they
end CANCELED), then the code server and the webserver.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import DagsterInstance

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCATION = "backup_pipeline"
# Leaves room for the services and the demo's own cleanup inside Ctrl-C's 10 s budget.
STOP_BUDGET_SECONDS = 8.0


def log(message: str) -> None:
    print(f"dev/dagster: {message}", file=sys.stderr, flush=True)


class Stack:
    def __init__(self, home: Path, host: str, port: int, code_port: int) -> None:
        self.home = home
        self.host = host
        self.port = port
        self.code_port = code_port
        # Not "logs": Dagster moves and deletes a folder of that name in DAGSTER_HOME.
        self.logs = home / "process-logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._instance: DagsterInstance | None = None
        self._instance_ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def prepare(self) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dagster.yaml", self.home / "dagster.yaml")
        workspace = self.home / "workspace.yaml"
        workspace.write_text(
            "# Written by dev/dagster: the webserver and daemon load the code server's location.\n"
            "load_from:\n"
            f"  - grpc_server: {{host: 127.0.0.1, port: {self.code_port}, "
            f"location_name: {LOCATION}}}\n"
        )
        return workspace

    def spawn(self, name: str, args: list[str]) -> None:
        out = (self.logs / f"{name}.log").open("ab")
        # A new session: the terminal's Ctrl-C must not hit these (nor the run workers the
        # code server starts) before the supervisor has stopped them in order.
        self.procs[name] = subprocess.Popen(
            args,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def start(self) -> None:
        workspace = self.prepare()
        # Loading the instance (and importing dagster) takes seconds on 2 cores: do it now,
        # so that stopping does not pay for it.
        threading.Thread(target=self._load_instance, daemon=True).start()
        self.spawn(
            "code-server",
            [
                str(BIN / "dagster"),
                "code-server",
                "start",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.code_port),
                "-m",
                "backup_pipeline.definitions",
                "--location-name",
                LOCATION,
                "--log-level",
                "warning",
            ],
        )
        self.wait_until(self._code_server_ready, 300, "the code server to load")
        self.spawn("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])
        self.spawn(
            "webserver",
            [
                str(BIN / "dagster-webserver"),
                "-w",
                str(workspace),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "--uvicorn-log-level",
                "warning",
            ],
        )
        self.wait_until(self._webserver_ready, 300, "the webserver to answer")

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode}; see {self.logs / name}.log"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; see {self.logs}")
            time.sleep(0.5)

    def _code_server_ready(self) -> bool:
        check = subprocess.run(
            [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(self.code_port)],
            capture_output=True,
            check=False,
        )
        return check.returncode == 0

    def _webserver_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as response:  # noqa: S310 - our own loopback URL
                return bool(response.status == 200)
        except OSError:
            return False

    def _load_instance(self) -> None:
        try:
            from dagster import DagsterInstance

            self._instance = DagsterInstance.from_config(str(self.home))
        except Exception as exc:  # reported; stopping then skips cancelling runs
            log(f"cannot open the Dagster instance ({type(exc).__name__}); runs are not cancelled")
        finally:
            self._instance_ready.set()

    def first_exit(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        deadline = time.monotonic() + STOP_BUDGET_SECONDS
        self.terminate("daemon", deadline - 3)
        cancelled = self.cancel_runs(deadline - 1.5)
        self.terminate("webserver", deadline, wait=False)
        self.terminate("code-server", deadline)
        self.terminate("webserver", deadline)
        if cancelled:
            log(f"cancelled {cancelled} in-progress run(s)")

    def terminate(self, name: str, deadline: float, wait: bool = True) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        if not wait:
            return
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def cancel_runs(self, deadline: float) -> int:
        """Cancel every queued or running run the way the UI's Terminate button does, and
        wait until each has ended; return how many there were."""
        self._instance_ready.wait(max(0.0, deadline - time.monotonic()))
        instance = self._instance
        if instance is None:
            return 0
        from dagster import DagsterRunStatus, RunsFilter

        waiting = [
            DagsterRunStatus.QUEUED,
            DagsterRunStatus.NOT_STARTED,
            DagsterRunStatus.STARTING,
            DagsterRunStatus.STARTED,
            DagsterRunStatus.CANCELING,
        ]
        cancellable = {DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED}
        asked: set[str] = set()
        while True:
            runs = instance.get_runs(filters=RunsFilter(statuses=waiting))
            if not runs:
                return len(asked)
            for run in runs:
                if run.run_id not in asked and run.status in cancellable:
                    asked.add(run.run_id)
                    try:
                        instance.run_coordinator.cancel_run(run.run_id)
                    except Exception as exc:  # the run is force-marked below
                        log(f"run {run.run_id}: cancel failed ({type(exc).__name__})")
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # A run that did not end in time would otherwise stay STARTED and hold its writer
        # slot: mark it cancelled, as the UI's "force termination" does.
        for run in instance.get_runs(filters=RunsFilter(statuses=waiting)):
            log(f"run {run.run_id} did not stop in time; marking it CANCELED")
            instance.report_run_canceled(run, message="Stopped with dev/dagster.")
            asked.add(run.run_id)
        return len(asked)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="DAGSTER_HOME")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DAGSTER_PORT", "3000")))
    parser.add_argument(
        "--code-port", type=int, default=int(os.environ.get("DAGSTER_CODE_SERVER_PORT", "4000"))
    )
    args = parser.parse_args()
    if not os.environ.get("DAGSTER_PG_URL"):
        log("DAGSTER_PG_URL is not set (run under dev/with-services or eval dev/services up)")
        return 2
    state = Path(os.environ.get("BACKUP_DEV_STATE", REPO / ".dev"))
    home = (args.home or Path(os.environ.get("DAGSTER_HOME") or state / "dagster-home")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)

    stack = Stack(home, args.host, args.port, args.code_port)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return  # already stopping, in order; a second Ctrl-C must not leave orphans
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        log(f"starting code server, daemon and webserver (logs in {stack.logs})")
        stack.start()
        # stdout carries only the URL, so callers can wait for the line that says it answers.
        print(stack.url, flush=True)
        log(f"Dagster UI on {stack.url} (Ctrl-C stops)")
        while (exited := stack.first_exit()) is None:
            time.sleep(0.5)
        log(f"{exited} exited unexpectedly; see {stack.logs / exited}.log")
        code = 1
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        log(str(exc))
        code = 1
    started = time.monotonic()
    log("stopping")
    stack.stop()
    log(f"stopped in {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
