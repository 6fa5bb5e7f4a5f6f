"""Long work never goes quiet: in logs and CI (no terminal) the progress reporter repeats
the stage, its counts and the elapsed time whenever nothing was printed for a while."""

from __future__ import annotations

import io
import time

from pipelines.progress import Progress, elapsed, use_rich


class Log(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_plain_progress_repeats_stage_counts_and_elapsed_while_quiet():
    log = Log()
    with Progress("demo", stream=log, interval=0.2) as progress:
        progress.stage("cycle 1/3 features", total=21, unit="tasks")
        progress.update(done=7, detail="build_features.stg_crm__quotes")
        progress.log("  cycle 1/3  ingest ok in 12 s")
        deadline = time.monotonic() + 30
        while "7/21 tasks" not in log.getvalue() and time.monotonic() < deadline:
            time.sleep(0.1)
    lines = log.getvalue().splitlines()
    assert lines[0] == "  cycle 1/3  ingest ok in 12 s"
    heartbeat = [line for line in lines if line.startswith("  ... demo: cycle 1/3 features 7/21 tasks")]
    assert heartbeat and "build_features.stg_crm__quotes" in heartbeat[0] and "in all" in heartbeat[0]


def test_a_log_gets_plain_lines_and_a_terminal_the_live_display(monkeypatch):
    monkeypatch.delenv("NEEDSEG_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert use_rich(Log()) is False

    class Terminal(Log):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm")
    assert use_rich(Terminal()) is True
    monkeypatch.setenv("NEEDSEG_PROGRESS", "plain")
    assert use_rich(Terminal()) is False
    assert [elapsed(s) for s in (5, 185, 3725)] == ["5 s", "3m05s", "1h02m"]
