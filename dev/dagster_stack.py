"""`dev/dagster`: production-style Dagster on this machine (code server, daemon, webserver)
until Ctrl-C or SIGTERM, which stop it in order. The stack itself is dev/harness/stack.py
(``Stack``), the one the tests and soak/ start too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

# Run as a script (dev/dagster): the harness is imported from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dev.harness.processes import REPO
from dev.harness.stack import Stack, log


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
