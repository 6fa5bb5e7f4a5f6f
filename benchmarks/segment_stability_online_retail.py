"""How steady are behavioural segments month to month on real data? The UCI Online Retail
export replayed month by month (its example mapping and behavioural taxonomy, as the
backtest does): per pair of consecutive monthly runs, the share of customers in both runs
whose segment changed, and k per run.

    uv run python benchmarks/segment_stability_online_retail.py [--data PATH] [--out DIR] [--months 2011-02 ...]

Needs ../shared/data/uci_online_retail/online_retail.parquet (or NEEDSEG_SHARED_DATA, or --data).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from pipelines import cycle
from pipelines.backtest import prepare
from pipelines.segmentation.run import continued_assignments
from pipelines.settings import public_data_dir
from pipelines.warehouse import connect

DEFAULT = public_data_dir() / "uci_online_retail" / "online_retail.parquet"
DATA_END = dt.date(2011, 12, 9)


def replay(parquet: Path, data_dir: Path, months: list[str]) -> list[dict]:
    settings = prepare(parquet, data_dir)
    cycle.ingest_step(dt.date(2011, 12, 31), settings)
    rows = []
    for month in months:
        as_of = min(pd.Period(month, "M").end_time.date(), DATA_END)
        cycle.features_step(as_of, settings, run_tests=False)
        started = time.process_time()
        detail = cycle.segment_step(as_of, settings)
        with connect(settings.warehouse_path, read_only=True) as con:
            run = con.execute(
                "select k, k_preferred, verdict, accounts_held, previous_run_id from segments.segment_runs where run_id = ?",
                [detail["run_id"]],
            ).fetchone()
            # A customer changed segment when its segment now is not the one its previous
            # segment continues as: a cluster renamed (an emerging segment that now matches a
            # taxonomy prototype, segment_definitions.renamed_from) keeps its members. The
            # share of customers whose segment id changed is printed too.
            now = con.execute("select account_id, segment_id from segments.assignments where run_id = ?", [detail["run_id"]]).df()
            before = continued_assignments(con, detail["run_id"], run[4]) if run[4] else None
        if before is not None:
            both = now.set_index("account_id").join(before, how="inner", suffixes=("", "_before"))
            moved = (
                int((both["segment_id"] != both["segment_id_before"]).sum()),
                len(both),
                int((both["segment_id"] != both["stored_segment_id"]).sum()),
            )
        else:
            moved = (0, 0, 0)
        share = moved[0] / moved[1] if moved[1] else None
        rows.append(
            {
                "as_of": as_of.isoformat(),
                "k": run[0],
                "k_preferred": run[1],
                "verdict": run[2],
                "held": run[3],
                "moved": moved[0],
                "in_both": moved[1],
                "share": share,
                "id_changed": moved[2] / moved[1] if moved[1] else None,
                "cpu": time.process_time() - started,
            }
        )
        print(
            f"  {as_of}: k={run[0]} (preferred {run[1]}), {run[2]}; "
            + (
                f"{moved[0]} of {moved[1]} customers changed segment ({share:.1%}; segment id changed: {moved[2] / moved[1]:.1%}), {run[3]} held"
                if share is not None
                else "first run"
            )
            + f"; segment step {rows[-1]['cpu']:.1f} CPU s",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--out", type=Path, help="data dir to keep (default: a temporary one)")
    parser.add_argument("--months", nargs="*", default=[str(p) for p in pd.period_range("2011-02", "2011-12", freq="M")])
    args = parser.parse_args()
    if not args.data.exists():
        print(f"{args.data} not found: pass --data PATH to the Online Retail parquet (or set NEEDSEG_SHARED_DATA)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="needseg-stability-") as tmp:
        rows = replay(args.data, args.out or Path(tmp), args.months)
    shares = [r["share"] for r in rows if r["share"] is not None]
    if shares:
        print(
            f"median share of customers changing segment between consecutive monthly runs: {statistics.median(shares):.1%} "
            f"(max {max(shares):.1%}); k per run: {', '.join(str(r['k']) for r in rows)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
