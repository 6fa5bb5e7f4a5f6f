"""How the drift detector's stated-needs test (pipelines/drift/needs.py) separates drifters
from everyone else on a run that is already in a warehouse: for every customer with two
usable survey waves, the best z of its answers' move towards any other segment (with the
share of the way >= drift.min_shift), split by the world's truth, and how many of each
clear a range of thresholds (`drift.needs_z`).

    .venv/bin/needseg evaluate --data-dir DIR      # or needseg bench --quality
    .venv/bin/python benchmarks/stated_needs_z.py DIR/warehouse.duckdb DIR/world/truth/accounts.csv [RUN_ID]

The truth is a demo world's accounts.csv or a bench world's truth/accounts.parquet; without
RUN_ID the latest run is read.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from pipelines.config import DriftConfig
from pipelines.drift import needs as stated
from pipelines.drift.detect import _rows, _stated_towards
from pipelines.warehouse import open_warehouse


def main(argv: list[str]) -> int:
    warehouse, truth_path = argv[0], argv[1]
    min_shift = DriftConfig().min_shift
    with open_warehouse(warehouse, read_only=True) as con:
        run = argv[2] if len(argv) > 2 else con.execute("select max(run_id) from segments.assignments").fetchone()[0]
        segment_of = con.execute("select account_id, segment_id from segments.assignments where run_id = ?", [run]).df()
        features = con.execute("select * from marts.customer_features").df().set_index("account_id")
    segment_of = segment_of.set_index("account_id")["segment_id"]
    truth = pd.read_parquet(truth_path) if truth_path.endswith(".parquet") else pd.read_csv(truth_path, keep_default_na=False)
    drifters = set(truth.loc[truth["drifter"].astype(str).eq("True"), "account_id"])
    change = stated.needs_change(features, segment_of.index)
    if change is None:
        print("no survey answers with two usable waves in these features")
        return 1
    levels, _ = stated.needs_profiles(features, segment_of)
    best = np.full(len(segment_of), -np.inf)
    for seg in levels.index:
        at = np.flatnonzero(segment_of.to_numpy() == seg)
        for target in levels.index.drop(seg):
            moved = _stated_towards(_rows(change, at), levels, segment_of.index[at], seg, target, 0)
            best[at] = np.maximum(best[at], np.where(moved["shift"] >= min_shift, moved["z"], -np.inf))
    two_waves = (change.z.abs().sum(axis=1) > 0).to_numpy()
    drifting = segment_of.index.isin(list(drifters))
    others, movers = best[two_waves & ~drifting], best[two_waves & drifting]
    print(f"run {run}: {two_waves.sum():,} customers with two usable waves, {len(movers):,} of them drifters")
    finite = others[np.isfinite(others)]
    if len(finite):
        print("everyone else's best z: " + ", ".join(f"{q:.1%} {np.quantile(finite, q):.2f}" for q in (0.5, 0.9, 0.99, 0.999)))
    for threshold in (2.5, 3.0, 3.5, 4.0, 4.5):
        print(f"  z >= {threshold}: {int((others >= threshold).sum())} others, {int((movers >= threshold).sum())} drifters")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
