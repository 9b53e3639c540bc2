"""Progress of long restores and verifies, per partition: on a terminal or in a run's log.

The engine calls a ``ProgressCallback`` with (partition, records done, records to do) for
that partition, every ``PROGRESS_EVERY`` records and once when the partition is done.
``TerminalProgress`` draws one rich bar per partition (done/total, records/s, ETA) and
draws nothing unless both stdout and stderr are terminals; ``LogProgress`` writes a line
per partition every 10% (Dagster's run log).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress, Task, TaskID
    from rich.text import Text

# (partition, records done in it, records to do in it)
ProgressCallback = Callable[[int, int, int], None]

# Often enough for a smooth bar, rare enough that a callback per record costs nothing.
PROGRESS_EVERY = 500


def tick(progress: ProgressCallback | None, partition: int, done: int, total: int) -> None:
    """Report every PROGRESS_EVERY records and at the partition's end (not at all for a
    partition with nothing to do)."""
    if progress is not None and total and (done % PROGRESS_EVERY == 0 or done >= total):
        progress(partition, done, total)


class TerminalProgress:
    """A rich progress bar per partition, on stderr, only when attached to a terminal."""

    def __init__(self, label: str, *, enabled: bool | None = None) -> None:
        self._label = label
        self._enabled = sys.stdout.isatty() and sys.stderr.isatty() if enabled is None else enabled
        self._progress: Progress | None = None
        self._tasks: dict[int, TaskID] = {}

    def __enter__(self) -> TerminalProgress:
        if self._enabled:
            # Imported here: commands that draw no bar do not pay for rich's import.
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _rate_column(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
        return self

    def __call__(self, partition: int, done: int, total: int) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(partition)
        if task is None:
            task = self._progress.add_task(f"{self._label} partition {partition}", total=total)
            self._tasks[partition] = task
        self._progress.update(task, completed=min(done, total), total=total)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _rate_column() -> Any:
    # A function, so that rich is imported only when a bar is drawn.
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Records per second (rich's own speed column counts bytes)."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("- rec/s" if speed is None else f"{speed:,.0f} rec/s")

    return RateColumn()


class _Log(Protocol):
    def info(self, msg: str) -> Any: ...


class LogProgress:
    """A log line per partition at each ``1/steps`` of it (and when it is done), with the
    rate and the time left: progress in a Dagster run's log without flooding it."""

    def __init__(
        self,
        log: _Log,
        label: str,
        steps: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._label = label
        self._steps = steps
        self._clock = clock
        self._started: dict[int, tuple[float, int]] = {}
        self._logged: dict[int, int] = {}

    def __call__(self, partition: int, done: int, total: int) -> None:
        now = self._clock()
        started_at, started_done = self._started.setdefault(partition, (now, done))
        # Whole steps, counted in integers so that 30% - 20% is never less than 10%.
        step = self._steps if done >= total else done * self._steps // max(total, 1)
        if step <= self._logged.get(partition, -1):
            return
        self._logged[partition] = step
        elapsed = now - started_at
        rate = (done - started_done) / elapsed if elapsed > 0 else 0.0
        speed = f", {rate:,.0f} records/s" if rate > 0 else ""
        eta = f", {(total - done) / rate:,.0f}s left" if rate > 0 and done < total else ""
        share = done / total if total else 1.0
        self._log.info(
            f"{self._label} partition {partition}: {done:,} of {total:,} records "
            f"({share:.0%}){speed}{eta}"
        )
