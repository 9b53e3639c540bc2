"""Dagster for a test (or soak/): ``DagsterServer`` starts a ``Stack`` (dev/harness/stack.py,
the one dev/dagster runs) with the environment it is given, and talks to any webserver
through its GraphQL API: runs, materializations, a run worker's pid."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from dev.harness import waits
from dev.harness.processes import free_port
from dev.harness.stack import LOCATION_QUERY, Stack, graphql


class DagsterServer:
    """A ``Stack`` of a test's own (or soak's) on ``home`` with ``env`` (settings, its own
    DAGSTER_PG_URL), its UI on ``port``; or, never started, a GraphQL client of a webserver
    on ``port`` that something else runs."""

    def __init__(self, home: Path, env: dict[str, str], port: int | None = None) -> None:
        self.home = home
        self.env = env
        self.port = port or free_port()
        self.stack: Stack | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None, timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**self.env, **(extra_env or {}), "DAGSTER_HOME": str(self.home)}
        self.stack = Stack(self.home, "127.0.0.1", self.port, free_port(), env)
        try:
            self.stack.start()
        except RuntimeError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None
        self.wait_for(self._location_loaded, timeout, "code location to load")

    def stop(self, grace: float = 60) -> None:
        """Stop Dagster as a redeploy does (``Stack.stop``: the daemon, then every run is
        cancelled and awaited, then the servers); after ``grace`` (scaled) seconds, or at a
        fixture's teardown with a short one, what is left is marked cancelled and killed."""
        if self.stack:
            self.stack.stop(budget=waits.scaled(grace))
        self.stack = None

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return graphql(self.url, query, variables)

    def _location_loaded(self) -> bool:
        assert self.stack is not None
        if exited := self.stack.first_exit():
            raise AssertionError(f"{exited} exited:\n{self.tail()}")
        try:
            data = self.graphql(LOCATION_QUERY)
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

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` of each process's output."""
        parts = []
        for path in sorted((self.home / "process-logs").glob("*.log")):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """``waits.wait_until`` (scaled, within the test's timeout) with the server's log."""
        return waits.wait_until(condition, timeout, what, interval=1, describe=self.tail)

    def runs(self) -> list[dict[str, Any]]:
        data = self.graphql("""{ runsOrError(limit: 200) { ... on Runs { results {
            runId jobName status tags { key value } } } } }""")
        return cast(list[dict[str, Any]], data["runsOrError"]["results"])

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
        return cast(list[dict[str, Any]], data["assetOrError"]["assetMaterializations"])


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
