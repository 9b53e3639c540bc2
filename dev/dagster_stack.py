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
import json
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
    from dagster import DagsterInstance, DagsterRun

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCATION = "backup_pipeline"
# Leaves room for the services and the demo's own cleanup inside Ctrl-C's 10 s budget.
STOP_BUDGET_SECONDS = 8.0
SERVER_EXIT_SECONDS = 2.0


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
        self.stopped_after: dict[str, float] = {}  # monotonic time each process was seen gone
        self.killed: set[str] = set()
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

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
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
            env={**os.environ, **(env or {})},
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
                # Import the project from this checkout, as the image's WORKDIR does.
                "-d",
                str(REPO),
                "--log-level",
                "warning",
            ],
            # Its gRPC server otherwise waits up to a minute for open calls when asked to
            # stop; it is stopped last, when no caller is left.
            env={"DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD": "0"},
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
        self.wait_until(lambda: self.location_error() is not None, 120, "the code location")

    def location_error(self) -> str | None:
        """None while the location loads, "" once loaded, else the first line of its error.

        The code server answers health checks even when the code failed to import (the UI
        then shows the error), so only the workspace says whether there is anything to run.
        """
        query = (
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        request = urllib.request.Request(  # noqa: S310 - our own loopback URL
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
        except (OSError, KeyError, TypeError, ValueError):
            return None
        for entry in entries:
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                return str(loaded["message"]).strip().splitlines()[0]
            if entry["loadStatus"] != "LOADED":
                return None
        return ""

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

    def stop(self) -> str:
        """Stop everything in order; return what took how long, for the log."""
        started = time.monotonic()
        deadline = started + STOP_BUDGET_SECONDS
        # The daemon first: it launches runs (sensors, the run queue). The webserver with
        # it, so that nothing is launched from the UI either. Runs are cancelled while the
        # daemon winds down; cancel_runs goes on until the daemon has exited too, so a run
        # it launched at the last moment is cancelled as well.
        daemon_log = self.logs / "daemon.log"
        log_offset = daemon_log.stat().st_size if daemon_log.exists() else 0
        self.signal_stop("daemon")
        self.signal_stop("webserver")
        cancelled = self.cancel_runs(deadline - 1.5, lambda: self.daemon_quiet(log_offset))
        # The code server last: cancelling a run goes through it, and it is the parent of
        # the run workers. The daemon's process takes seconds to exit after its threads
        # have stopped, which need not hold the code server up.
        self.signal_stop("code-server")
        # With every run ended nothing is left to lose in these processes, yet the code
        # server takes ~4 s to wind down its gRPC child and heartbeats: give each a moment
        # to exit cleanly, then kill it, so Ctrl-C stays well inside 10 s.
        servers_deadline = min(deadline, time.monotonic() + SERVER_EXIT_SECONDS)
        for name in ("daemon", "code-server", "webserver"):
            self.wait_stopped(name, servers_deadline)
        return f"{cancelled} run(s) cancelled; done after: " + ", ".join(
            f"{name} {at - started:.1f} s" + (" (killed)" if name in self.killed else "")
            for name, at in self.stopped_after.items()
        )

    def signal_stop(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)

    def wait_stopped(self, name: str, deadline: float) -> None:
        proc = self.procs.get(name)
        if proc is None:
            return
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self.killed.add(name)
        self.stopped_after.setdefault(name, time.monotonic())

    def daemon_quiet(self, log_offset: int) -> bool:
        """Whether the daemon can launch no more runs: it has exited, or it says that its
        threads (sensors, run queue) have stopped, seconds before the process ends."""
        if self.exited("daemon"):
            return True
        with (self.logs / "daemon.log").open("rb") as daemon_log:
            daemon_log.seek(log_offset)
            quiet = b"Daemon threads shut down" in daemon_log.read()
        if quiet:
            self.stopped_after.setdefault("daemon threads", time.monotonic())
        return quiet

    def exited(self, name: str) -> bool:
        proc = self.procs.get(name)
        done = proc is None or proc.poll() is not None
        if done:
            self.stopped_after.setdefault(name, time.monotonic())
        return done

    def ours(self, run: DagsterRun) -> bool:
        """Whether the run belongs to this stack's code server. The instance's storage may be
        shared (the tests, another stack on the same services): their runs are not ours to
        cancel."""
        origin = run.remote_job_origin
        location = origin.repository_origin.code_location_origin if origin else None
        return getattr(location, "port", None) == self.code_port

    def cancel_runs(self, deadline: float, launcher_gone: Callable[[], bool]) -> int:
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
            runs = [
                r for r in instance.get_runs(filters=RunsFilter(statuses=waiting)) if self.ours(r)
            ]
            if not runs:
                self.stopped_after.setdefault("runs", time.monotonic())
            if not runs and launcher_gone():
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
            if not self.ours(run):
                continue
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
        if error := stack.location_error():
            # Keep running: the UI shows the whole error and reloads the location once fixed.
            log(f"the code location failed to load: {error}")
            log(f"see {stack.logs / 'code-server.log'}; fix the code, then reload it in the UI")
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
    steps = stack.stop()
    log(f"stopped in {time.monotonic() - started:.1f} s ({steps})")
    return code


if __name__ == "__main__":
    sys.exit(main())
