"""Progress for work that takes long (`make demo`, `needseg run`, `evaluate`, ingest,
benchmarks): the stage, counts and the elapsed time, never silent for long.

On a terminal it is a live line drawn by rich (spinner, counts, elapsed); in logs and CI
(no terminal, or NEEDSEG_PROGRESS=plain) it is plain lines: one per finished step, and a
"still working" line with the same figures whenever nothing was printed for `interval`
seconds (default 10, so a log never goes quiet for 15 s).

    with Progress("needseg run") as progress:
        progress.stage("ingest", total=12, unit="files")
        progress.advance()
        progress.log("ingest  3.1 s  12 files loaded")
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

PLAIN_INTERVAL = 10.0


def elapsed(seconds: float) -> str:
    """12 s, 3m05s, 1h02m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def use_rich(stream: TextIO) -> bool:
    mode = os.environ.get("NEEDSEG_PROGRESS", "auto").strip().lower()
    if mode in ("plain", "off", "none"):
        return False
    if mode == "rich":
        return True
    return stream.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


class Progress:
    """One long task's progress: a current stage with optional counts, and log lines."""

    def __init__(self, title: str, stream: TextIO | None = None, interval: float = PLAIN_INTERVAL, rich: bool | None = None):
        self.title = title
        self.stream = stream or sys.stdout
        self.interval = interval
        self.rich = use_rich(self.stream) if rich is None else rich
        self.started = time.monotonic()
        self._stage = ""
        self._detail = ""
        self._done = 0
        self._total: int | None = None
        self._unit = ""
        self._stage_started = self.started
        self._last_output = self.started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None
        self._task = None

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if self.rich:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._live = RichProgress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}", style="dim"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._live.start()
            self._task = self._live.add_task(self.title, total=None, detail="")
        else:
            self._thread = threading.Thread(target=self._heartbeat, name="needseg-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self._live is not None:
            self._live.stop()

    # -- reporting -------------------------------------------------------------------
    def stage(self, name: str, total: int | None = None, unit: str = "", detail: str = "") -> None:
        """Start a stage (resets its counts)."""
        with self._lock:
            self._stage, self._total, self._done, self._unit, self._detail = name, total, 0, unit, detail
            self._stage_started = time.monotonic()
        self._refresh()

    def update(self, done: int | None = None, total: int | None = None, detail: str | None = None) -> None:
        with self._lock:
            if done is not None:
                self._done = done
            if total is not None:
                self._total = total
            if detail is not None:
                self._detail = detail
        self._refresh()

    def advance(self, n: int = 1, detail: str | None = None) -> None:
        with self._lock:
            self._done += n
            if detail is not None:
                self._detail = detail
        self._refresh()

    def log(self, line: str) -> None:
        """A line that stays (a finished step, a result)."""
        with self._lock:
            self._last_output = time.monotonic()
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def status_line(self) -> str:
        """The current figures as one plain line."""
        with self._lock:
            counts = ""
            if self._total is not None:
                counts = f" {self._done}/{self._total}{' ' + self._unit if self._unit else ''}"
            elif self._done:
                counts = f" {self._done}{' ' + self._unit if self._unit else ''}"
            detail = f" · {self._detail}" if self._detail else ""
            now = time.monotonic()
            stage = f"{self._stage}{counts}{detail} ({elapsed(now - self._stage_started)})" if self._stage else "working"
            return f"  ... {self.title}: {stage}; {elapsed(now - self.started)} in all"

    # -- internals -------------------------------------------------------------------
    def _refresh(self) -> None:
        if self._live is None or self._task is None:
            return
        with self._lock:
            description = f"{self.title}: {self._stage}" if self._stage else self.title
            self._live.update(self._task, description=description, completed=self._done, total=self._total, detail=self._detail)

    def _heartbeat(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                quiet = time.monotonic() - self._last_output
            if quiet >= self.interval:
                self.log(self.status_line())
