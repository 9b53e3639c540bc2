"""Child processes and loopback ports: stop a process and all it started, find free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from dev.harness.waits import scaled

REPO = Path(__file__).resolve().parent.parent.parent


def alive(pid: int) -> bool:
    """Alive and not a zombie (a killed daemon may wait a while for PID 1 to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[-1].split(" ", 1)[0] != "Z"


def descendants(pid: int) -> list[int]:
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
    started = descendants(proc.pid)

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
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def free_ports(names: tuple[str, ...]) -> dict[str, str]:
    """A free loopback port for each of ``names`` (environment variables), at once."""
    sockets = [socket.socket() for _ in names]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return {n: str(s.getsockname()[1]) for n, s in zip(names, sockets, strict=True)}
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_dev_dagster(
    repo: Path, home: Path, port: int, code_port: int, **extra: str
) -> tuple[subprocess.Popen[str], str]:
    """``repo``'s dev/dagster (code server, daemon, webserver) on ``home``, with this
    process's environment minus its BACKUP_SENSOR_* settings, plus ``extra``; returns the
    process and the UI's URL once it answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_SENSOR_")}
    env.update(
        DAGSTER_HOME=str(home), DAGSTER_PORT=str(port), DAGSTER_CODE_SERVER_PORT=str(code_port)
    )
    env.update(extra)
    stack = subprocess.Popen(
        [str(repo / "dev" / "dagster")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # stopped in order with SIGTERM, not by our Ctrl-C
    )
    assert stack.stdout is not None
    url = stack.stdout.readline().strip()  # dev/dagster prints the URL once the UI answers
    if not url:
        raise RuntimeError(f"dev/dagster exited with {stack.wait()} before the UI answered")
    return stack, url
