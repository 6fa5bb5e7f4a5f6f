"""Benchmark: ingest the real UCI Online Retail export (541,909 invoice lines) through its mapping.

    python benchmarks/ingest_online_retail.py [--source PATH] [--as-of 2011-12-09] [--keep]

Copies the export into a fresh landing folder under a temporary directory
(`<landing>/retail/order_lines/online_retail.parquet`), copies the example mapping
config/sources/examples/online_retail.yaml there as the source `retail`, runs the ingest
into a new warehouse, and prints what it did: rows read, rows in raw, rows in quarantine
by reason, the wall time of the load and the time per stage. Nothing outside the temporary
directory is touched (it is removed afterwards unless --keep).

A command that prints figures, not a test: tests/test_online_retail.py checks the counts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from pipelines.progress import Progress  # noqa: E402 - after the path is set
from pipelines.settings import public_data_dir  # noqa: E402 - after the path is set

DEFAULT_SOURCE = public_data_dir() / "uci_online_retail" / "online_retail.parquet"
MAPPING = PROJECT / "config" / "sources" / "examples" / "online_retail.yaml"
STAGES = ("discover", "read", "parse", "gate setup", "validate", "write", "replay")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the Online Retail Parquet file")
    parser.add_argument(
        "--as-of", type=dt.date.fromisoformat, default=dt.date(2011, 12, 9), help="the run's as-of day (default: the last invoice day)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder and print where it is")
    args = parser.parse_args(argv)
    if not args.source.exists():
        print(
            f"needs the public dataset {args.source} (../shared/data is not present on this machine; NEEDSEG_SHARED_DATA or --source can point to it)",
            file=sys.stderr,
        )
        return 2

    started = time.monotonic()
    import duckdb

    from pipelines.ingest.loader import ingest
    from pipelines.settings import load_settings
    from pipelines.warehouse import open_warehouse

    imported = time.monotonic() - started
    root = Path(tempfile.mkdtemp(prefix="needseg-bench-retail-"))
    try:
        settings = load_settings(root / "data").with_overrides(mappings_dir=root / "mappings")
        settings.mappings_dir.mkdir(parents=True)
        shutil.copy(MAPPING, settings.mappings_dir / "retail.yaml")
        target = settings.landing_dir / "retail" / "order_lines" / "online_retail.parquet"
        target.parent.mkdir(parents=True)
        shutil.copy(args.source, target)

        clock = time.monotonic()
        cpu = time.process_time()
        with open_warehouse(settings.warehouse_path) as con, Progress("ingest benchmark") as progress:
            progress.stage(f"loading {args.source.name}")
            report = ingest(settings, con, args.as_of, "benchmark")
        wall = time.monotonic() - clock
        cpu = time.process_time() - cpu

        con = duckdb.connect(str(settings.warehouse_path), read_only=True)
        batches = con.execute(
            "select table_name, rows_read, rows_loaded, rows_quarantined from meta.batches order by table_name"
        ).fetchall()
        in_raw = {t: con.execute(f"select count(*) from raw.{t}").fetchone()[0] for t in ("accounts", "order_lines")}
        reasons = con.execute(
            "select table_name, reason, count(*) from meta.quarantine group by all order by table_name, count(*) desc"
        ).fetchall()
        con.close()

        print(f"Online Retail ingest benchmark ({args.source.name}, {args.source.stat().st_size / 1e6:.1f} MB, as of {args.as_of})")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, DuckDB {duckdb.__version__}")
        print()
        print(f"{'table':<12} {'rows read':>10} {'in raw':>10} {'quarantined':>12}")
        for table, read, loaded, quarantined in batches:
            print(f"{table:<12} {read:>10,} {loaded:>10,} {quarantined:>12,}")
        print(f"(rows in the raw tables: accounts {in_raw['accounts']:,}, order_lines {in_raw['order_lines']:,})")
        print()
        print("quarantine by reason:")
        for table, reason, count in reasons or [("-", "(none)", 0)]:
            print(f"  {table:<12} {count:>8,}  {reason}")
        print()
        print(f"wall time of the load: {wall:.1f} s (ingest's own count: {report.seconds:.1f} s; imports before it: {imported:.1f} s)")
        # A busy machine stretches wall time; CPU seconds show the work done.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"CPU time of the load: {cpu:.1f} s (load average {os.getloadavg()[0]:.1f}); peak RSS of the process {peak:,.0f} MB")
        for stage in STAGES:
            print(f"  {stage:<10} {report.stage_seconds.get(stage, 0.0):6.1f} s")
        lines = next((f for f in report.files if f.table == "order_lines"), None)
        if lines is not None and wall > 0:
            print(f"throughput: {lines.rows_read / wall:,.0f} order lines per second ({lines.rows_read / cpu:,.0f} per CPU second)")
        if args.keep:
            print(f"\nkept: {root}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
