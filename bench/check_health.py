"""How often the Dagster UI shows every asset check as settled and passing (issue 10, point 1).

Samples, through the webserver's GraphQL API, what the asset graph and the asset page show
for each check: the check's execution for the asset's latest materialization
(`AssetCheck.executionForLatestMaterialization`, the field the UI's check status tags read).
A sample counts as settled-and-passing only when that execution SUCCEEDED; IN_PROGRESS,
FAILED (warning or error), EXECUTION_FAILED, SKIPPED and "none for the latest
materialization" do not. Every asset that has checks is sampled (the table assets), so the
tool assumes nothing about how the project reports its checks.

    .venv/bin/python bench/check_health.py http://127.0.0.1:3000 --minutes 5 --interval 10
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import requests

QUERY = """
{
  assetNodes {
    assetKey { path }
    assetChecksOrError {
      __typename
      ... on AssetChecks {
        checks {
          name
          executionForLatestMaterialization { status evaluation { success severity } }
        }
      }
    }
  }
}
"""
PASSING = "SUCCEEDED"


def check_states(url: str, timeout: float = 30) -> dict[str, str]:
    """``{"<asset>/<check>": state}`` for every check of every asset, as the UI shows it now.

    The state is the execution's status, FAILED split by severity (FAILED_WARN is yellow in
    the UI, FAILED_ERROR red), or NONE when there is no execution for the latest
    materialization."""
    response = requests.post(f"{url.rstrip('/')}/graphql", json={"query": QUERY}, timeout=timeout)
    response.raise_for_status()
    payload = response.json()
    if payload.get("errors"):
        raise RuntimeError(f"GraphQL errors: {payload['errors']}")
    states: dict[str, str] = {}
    for node in payload["data"]["assetNodes"]:
        checks = node["assetChecksOrError"]
        if checks["__typename"] != "AssetChecks":
            continue
        asset = "/".join(node["assetKey"]["path"])
        for check in checks["checks"]:
            execution = check["executionForLatestMaterialization"]
            if execution is None:
                state = "NONE"
            elif execution["status"] == "FAILED" and execution["evaluation"]:
                state = f"FAILED_{execution['evaluation']['severity']}"
            else:
                state = execution["status"]
            states[f"{asset}/{check['name']}"] = state
    return states


@dataclass
class HealthSamples:
    """Counts of states per check over the samples taken so far."""

    by_check: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    samples: int = 0
    errors: int = 0

    def add(self, states: dict[str, str]) -> None:
        self.samples += 1
        for check, state in states.items():
            self.by_check[check][state] += 1

    def share_passing(self, checks: list[str] | None = None) -> float:
        counters = [self.by_check[c] for c in (checks or list(self.by_check))]
        total = sum(sum(c.values()) for c in counters)
        return sum(c[PASSING] for c in counters) / total if total else 0.0

    def report(self) -> str:
        lines = [
            f"asset check health: {self.samples} samples"
            + (f" ({self.errors} failed requests not counted)" if self.errors else ""),
        ]
        width = max([58, *(len(c) for c in self.by_check)])
        lines.append(f"  {'check':<{width}} {'passing':>8}  states")
        for check in sorted(self.by_check):
            counter = self.by_check[check]
            states = ", ".join(f"{s} {n}" for s, n in counter.most_common())
            lines.append(f"  {check:<{width}} {self.share_passing([check]):>8.1%}  {states}")
        lines.append(f"  {'overall (target >= 95%)':<{width}} {self.share_passing():>8.1%}")
        # A check that only runs on a schedule (e.g. a sample verify) may show nothing
        # for the latest materialization through no fault of its own: say what the share is
        # without checks that never had a result in the window.
        ran = [c for c, counter in self.by_check.items() if set(counter) != {"NONE"}]
        if len(ran) < len(self.by_check):
            lines.append(
                f"  {'overall, checks with a result in the window only':<{width}} "
                f"{self.share_passing(ran):>8.1%}"
            )
        return "\n".join(lines)


def sample(
    url: str,
    seconds: float,
    interval: float,
    stop: threading.Event | None = None,
    verbose: bool = False,
    into: HealthSamples | None = None,
) -> HealthSamples:
    """Sample every ``interval`` seconds for ``seconds`` (or until ``stop`` is set)."""
    stop = stop or threading.Event()
    health = into if into is not None else HealthSamples()
    started = time.monotonic()
    while not stop.is_set() and time.monotonic() - started < seconds:
        tick = time.monotonic()
        try:
            states = check_states(url)
        except (requests.RequestException, RuntimeError, KeyError) as exc:
            health.errors += 1
            print(f"check_health: sample failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            health.add(states)
            if verbose:
                passing = sum(s == PASSING for s in states.values())
                print(f"check_health: {passing}/{len(states)} passing", file=sys.stderr)
        stop.wait(max(0.0, interval - (time.monotonic() - tick)))
    return health


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="Dagster webserver, e.g. http://127.0.0.1:3000")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    args = parser.parse_args()
    health = HealthSamples()
    # Ctrl-C ends sampling early; what was sampled is still reported.
    with contextlib.suppress(KeyboardInterrupt):
        sample(args.url, args.minutes * 60, args.interval, verbose=args.verbose, into=health)
    print(health.report())
    return 0 if health.samples else 1


if __name__ == "__main__":
    sys.exit(main())
