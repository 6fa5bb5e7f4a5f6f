"""Benchmark: the ingest stage alone on a world of `needseg bench`, as the bench runs it.

    python benchmarks/ingest_bench_world.py WORLD [--data DIR] [--profile OUT.prof]

WORLD is a folder `needseg bench` (pipelines.bench.world.generate) wrote; its landing files
are hard-linked into a fresh data folder (DIR, default: a temporary one, removed afterwards),
then `STEP_FUNCTIONS["ingest"]` runs on it once. Prints rows read, loaded and quarantined,
CPU seconds (all threads, DuckDB's included), wall seconds, peak RSS and rows per CPU second
and per wall second, and the time per ingest stage.

A command that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("world", type=Path, help="a world folder written by needseg bench")
    parser.add_argument("--data", type=Path, help="the data folder to ingest into (default: a temporary one)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the ingest here")
    args = parser.parse_args(argv)
    meta = json.loads((args.world / "world.json").read_text())

    from pipelines.bench import floors
    from pipelines.bench.run import _link_tree, machine
    from pipelines.bench.world import BenchSpec
    from pipelines.cycle import STEP_FUNCTIONS
    from pipelines.settings import load_settings

    spec = BenchSpec(**meta["spec"])
    root = args.data or Path(tempfile.mkdtemp(prefix="needseg-bench-ingest-"))
    if root.exists():
        shutil.rmtree(root)
    try:
        settings = load_settings(data_dir=root)
        _link_tree(args.world / "landing", settings.landing_dir)
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile(time.process_time)
        cpu_by_stage = _count_cpu_by_stage()
        floors.reset_peak_rss()
        cpu, wall = time.process_time(), time.monotonic()
        if profiler:
            profiler.enable()
        detail = STEP_FUNCTIONS["ingest"](spec.as_of, settings)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        peak = floors.peak_rss()
        rows = int(detail["rows_read"])
        print(f"ingest of {args.world} ({spec.accounts:,} accounts); {machine()}")
        print(f"rows read {rows:,}, loaded {detail['rows_loaded']:,}, quarantined {detail['rows_quarantined']:,}")
        print(f"CPU {cpu:.1f} s, wall {wall:.1f} s, peak RSS {peak / 2**30:.2f} GB")
        print(f"{rows / cpu:,.0f} rows per CPU second, {rows / wall:,.0f} rows per wall second")
        reports = sorted(settings.quality_dir.glob("*/ingest.json"))
        report = json.loads(reports[-1].read_text()) if reports else {}
        for stage, seconds in (report.get("stage_seconds") or {}).items():
            print(f"  {stage}: {seconds:.1f} s wall, ~{cpu_by_stage.get(stage, 0.0):.1f} CPU s")
    finally:
        if not args.data:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _count_cpu_by_stage() -> dict[str, float]:
    """CPU seconds per ingest stage, roughly: the process's CPU time between one stage's
    end (`IngestReport.timed`) and the next is given to the next."""
    from pipelines.ingest.report import IngestReport

    spent: dict[str, float] = {}
    last = [time.process_time()]
    timed = IngestReport.timed

    def counting(self, stage: str, started: float) -> float:
        now = time.process_time()
        spent[stage] = spent.get(stage, 0.0) + now - last[0]
        last[0] = now
        return timed(self, stage, started)

    IngestReport.timed = counting
    return spent


if __name__ == "__main__":
    raise SystemExit(main())
