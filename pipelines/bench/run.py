"""Run the scale benchmark: generate (or reuse) a world, a full cycle, an incremental one,
the floors, and print one table per size.

Every stage runs in this process through the same step functions `needseg run` and the
DAGs call (pipelines/cycle.py). Per stage: wall seconds, CPU seconds (all of the
process's threads, DuckDB's included), peak resident memory (the kernel's high-water mark,
reset before each stage) and rows per second. Progress (pipelines.progress) prints a line at
least every 10 s.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import clock
from pipelines.bench import floors
from pipelines.bench.quality import BenchQuality, score
from pipelines.bench.world import BenchSpec, BenchWorld, generate
from pipelines.config import load_config
from pipelines.files import write_file_atomically
from pipelines.cycle import STAGES, STEP_FUNCTIONS
from pipelines.progress import Progress
from pipelines.settings import Settings, load_settings

# What "rows" means per stage in the table: the rows the stage works through.
ROWS_OF = {"ingest": "rows read", "features": "order lines"}


@dataclass
class StageFigures:
    name: str
    wall: float
    cpu: float
    peak_rss: int
    rows: int
    note: str = ""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall if self.wall > 0 else 0.0


@dataclass
class BenchResult:
    accounts: int
    world: BenchWorld
    full: list[StageFigures] = field(default_factory=list)
    incremental: list[StageFigures] = field(default_factory=list)
    floors: list[floors.Measured] = field(default_factory=list)
    quality: BenchQuality | None = None

    @staticmethod
    def total(stages: list[StageFigures], name: str) -> StageFigures:
        return StageFigures(
            name,
            sum(s.wall for s in stages),
            sum(s.cpu for s in stages),
            max((s.peak_rss for s in stages), default=0),
            0,
        )


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB"


def _link_tree(source: Path, target: Path) -> None:
    """Deliver files into a landing folder: hard links (cheap), copies across file systems."""
    for path in sorted(source.rglob("*.*")):
        if path.name.startswith(".") or not path.is_file():
            continue
        dest = target / path.relative_to(source)
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def _stage_rows(stage: str, detail: dict, lines: int, accounts: int) -> int:
    if stage == "ingest":
        return int(detail.get("rows_read") or 0)
    if stage == "features":
        return lines
    return accounts


def _run_cycle(settings: Settings, as_of: dt.date, lines: int, accounts: int, progress: Progress, label: str) -> list[StageFigures]:
    figures = []
    for stage in STAGES:
        floors.reset_peak_rss()
        cpu, wall = time.process_time(), time.monotonic()
        progress.stage(f"{accounts:,} accounts, {label} {stage}")
        detail = STEP_FUNCTIONS[stage](as_of, settings)
        figures.append(
            StageFigures(
                stage,
                time.monotonic() - wall,
                time.process_time() - cpu,
                floors.peak_rss(),
                _stage_rows(stage, detail, lines, accounts),
            )
        )
        progress.log(f"bench: {label} {stage} done in {figures[-1].wall:.1f} s, peak RSS {_gb(figures[-1].peak_rss)}")
    return figures


def _measure_floors(world: BenchWorld, settings: Settings, peer: bool, progress: Progress) -> list[floors.Measured]:
    spec = world.spec
    fx_rates = load_config(settings.config_path)["fx_rates"]
    lines = world.rows["order_lines"]
    landing = world.landing
    measured = []
    progress.stage("floor: DuckDB scan")
    measured.append(floors.run_duckdb("DuckDB scan of the order lines", floors.duckdb_scan_sql(landing, spec.file_format), lines))
    progress.stage("floor: DuckDB features")
    sql = floors.duckdb_features_sql(landing, spec.file_format, spec.as_of, fx_rates)
    measured.append(floors.run_duckdb("DuckDB per-account features", sql, lines))
    if peer:
        progress.stage("floor: pandas + scikit-learn peer")
        measured.append(floors.run_peer(landing, spec.file_format, spec.as_of, fx_rates, lines))
    return measured


def run_one(
    accounts: int,
    out: Path,
    *,
    file_format: str = "csv",
    seed: int = 7,
    peer: bool = True,
    incremental: bool = True,
    quality: bool = False,
    progress: Progress,
) -> BenchResult:
    """Generate (or reuse) a world of `accounts`, run a full and an incremental cycle on a
    fresh data folder, then the floors on the same files; with `quality`, score the last
    run against the world's truth (pipelines/bench/quality.py) and keep the figures in
    <run>/quality.json."""
    spec = BenchSpec(accounts=accounts, seed=seed, file_format=file_format)
    world_dir = out / f"world-{accounts}-{file_format}-seed{seed}"
    progress.stage(f"generating {accounts:,} accounts")
    world = generate(world_dir, spec, progress=progress.log)
    progress.log(
        f"bench: world of {accounts:,} accounts: {world.rows['order_lines']:,} order lines, "
        f"{world.bytes / 2**20:,.0f} MB of {file_format} ({world.seconds:.0f} s to generate) in {world_dir}"
    )
    run_dir = out / f"run-{accounts}-{file_format}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    settings = load_settings(data_dir=run_dir)
    _link_tree(world.landing, settings.landing_dir)
    result = BenchResult(accounts, world)
    result.full = _run_cycle(settings, spec.as_of, world.rows["order_lines"], accounts, progress, "full cycle")
    if incremental:
        _link_tree(world.next_month, settings.landing_dir)
        lines = world.rows["order_lines"] + world.next_rows.get("order_lines", 0)
        result.incremental = _run_cycle(settings, spec.next_as_of, lines, accounts, progress, "incremental cycle")
    if quality:
        as_of = spec.next_as_of if incremental else spec.as_of
        progress.stage(f"{accounts:,} accounts, quality of the run as of {as_of}")
        result.quality = score(settings, world, as_of)
        write_file_atomically(run_dir / "quality.json", json.dumps(result.quality.as_dict(), indent=1, default=str))
    result.floors = _measure_floors(world, settings, peer, progress)
    return result


# --- the table ----------------------------------------------------------------------------


def _row(label: str, f: StageFigures | floors.Measured, rows: bool = True) -> str:
    rate = f"{f.rows / f.wall:>12,.0f}" if rows and f.wall > 0 and f.rows else f"{'':>12}"
    return f"| {label:<40} | {f.wall:>8.1f} | {f.cpu:>8.1f} | {f.peak_rss / 2**30:>8.2f} | {rate} |"


def machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = 0.0
    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return f"{platform.system()} {platform.machine()}, {cpus} CPUs, {memory:.0f} GB RAM, Python {sys.version.split()[0]}, {load}"


def format_result(result: BenchResult) -> str:
    w = result.world
    head = "| stage                                    |   wall s |    CPU s | peak GB  |       rows/s |"
    rule = "| ---------------------------------------- | -------: | -------: | -------: | -----------: |"
    out = [
        f"needseg bench: {result.accounts:,} accounts, {w.rows['order_lines']:,} order lines "
        f"({w.spec.months} months, {w.spec.file_format}, {w.bytes / 2**20:,.0f} MB); "
        f"{clock.utc_now():%Y-%m-%d %H:%M} UTC; {machine()}",
        "",
        head,
        rule,
    ]
    full = BenchResult.total(result.full, "full cycle")
    out.extend(_row(f"full: {s.name}", s) for s in result.full)
    out.append(_row("full cycle", full, rows=False))
    if result.incremental:
        inc = BenchResult.total(result.incremental, "incremental cycle")
        out.extend(_row(f"incremental: {s.name}", s) for s in result.incremental)
        out.append(_row(f"incremental cycle ({inc.wall / full.wall:.0%} of full)", inc, rows=False))
    out.extend(_row(f"floor: {f.name}", f) for f in result.floors)
    out.append("")
    out.append("rows/s: rows read for ingest, order lines for features and the floors, accounts for the other stages.")
    for f in result.floors:
        ratio = full.wall / f.wall if f.wall > 0 else float("inf")
        out.append(f"needseg full cycle / {f.name}: {ratio:,.1f}x wall" + (f"  ({f.note})" if f.note else ""))
    if result.quality:
        out += ["", *result.quality.lines()]
    return "\n".join(out)


def run_bench(
    sizes: list[int],
    out: Path,
    *,
    file_format: str = "csv",
    seed: int = 7,
    peer: bool = True,
    incremental: bool = True,
    quality: bool = False,
) -> list[BenchResult]:
    """Every size in turn, each size's table printed when it is done."""
    results = []
    with Progress("needseg bench") as progress:
        for accounts in sizes:
            result = run_one(
                accounts, out, file_format=file_format, seed=seed, peer=peer, incremental=incremental, quality=quality, progress=progress
            )
            progress.log(format_result(result))
            results.append(result)
    return results
