"""The deployable shape: the Dockerfile's own command serves the code location over gRPC,
its health check answers, and a webserver loads the location from it.

No Docker engine runs here, so the test runs the image's CMD directly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from dev.harness.dagster import DagsterServer
from dev.harness.processes import REPO, free_port, stop_process
from dev.harness.waits import wait_until

BIN = Path(sys.executable).parent


def dockerfile_cmd() -> list[str]:
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*?\])\s*$", text.replace("\\\n", " "), re.MULTILINE | re.DOTALL)
    assert match, "Dockerfile has no exec-form CMD"
    return cast(list[str], json.loads(match.group(1)))


def test_the_image_runs_as_a_non_root_user_with_a_health_check():
    text = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "grpc-health-check" in text


@pytest.fixture
def code_server(services, database_url, tmp_path) -> Iterator[int]:
    port = free_port()
    command = [str(BIN / c) if i == 0 else c for i, c in enumerate(dockerfile_cmd())]
    command = [("127.0.0.1" if c == "0.0.0.0" else c) for c in command]  # noqa: S104
    command[command.index("-p") + 1] = str(port)
    env = {
        **os.environ,
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(tmp_path),
    }
    log = (tmp_path / "code-server.log").open("wb")
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "code-server.log").read_text()
            check = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port)]
            return subprocess.run(check, capture_output=True).returncode == 0

        wait_until(healthy, 120, "the code server to be healthy", interval=1)
        yield port
    finally:
        stop_process(proc, grace=10)


def test_a_webserver_loads_the_location_from_the_code_server(code_server, tmp_path, services):
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {code_server}\n      location_name: backup_pipeline\n"
    )
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=(tmp_path / "webserver.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = DagsterServer(home, {}, port)
    try:

        def assets() -> list[str]:
            assert proc.poll() is None, (tmp_path / "webserver.log").read_text()
            try:
                data = server.graphql("{ assetNodes { assetKey { path } } }")
            except OSError:
                return []
            return ["/".join(n["assetKey"]["path"]) for n in data["assetNodes"]]

        found = wait_until(
            assets,
            120,
            "the webserver to list the location's assets",
            interval=1,
            describe=(tmp_path / "webserver.log").read_text,
        )
        assert {"bekreftelse_hendelser", "bekreftelser", "bekreftelse_paa_vegne_av"} <= set(found)
    finally:
        stop_process(proc, grace=10)
