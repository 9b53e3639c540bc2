"""Dagster for tests and soak/, talked to through its GraphQL API: start, stop, runs,
materializations, and a run worker's pid."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dev.harness.processes import REPO, free_port, stop_process
from dev.harness.waits import wait_until


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
