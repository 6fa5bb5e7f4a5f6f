"""Calibrate the drift detector offline on the evaluation suite's worlds (issue 14, item 3).

A suite world costs ~110 CPU s to replay, the drift detector a fraction of a second per
run. So: replay a handful of worlds once, recording what `detect` is given at every run
(features, monthly buying mix, assignments, probabilities), then score any detector
setting on those records in seconds, with the suite's own scoring rules
(pipelines/drift/evaluation.py: drift flags against the planted drifters moving towards
price or away from partnership; drifters moving elsewhere neither positive nor false).

    # once: record one seed of every variant (7 worlds, ~800 CPU s)
    nice -n 10 .venv/bin/python benchmarks/drift_calibration.py record /tmp/drift-cal --seed 1
    # then, in seconds per setting: the configured detector, and any overrides
    .venv/bin/python benchmarks/drift_calibration.py score /tmp/drift-cal
    .venv/bin/python benchmarks/drift_calibration.py score /tmp/drift-cal --set early_warning_z=4 --set min_shift=0.3

The thresholds in config/needseg.yaml were chosen this way (docs/evaluation.md,
"Calibrating the drift detector"); confirm a choice with real suite runs
(`needseg evaluate --suite full --variant ...`), which also score the alerts.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import pipelines.drift.run as drift_run
from pipelines.config import load_config
from pipelines.drift.detect import DriftSettings, detect
from pipelines.evaluate_suite import replay_world, suite_worlds
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import load_settings


def record(out: Path, seeds: list[int], variants: list[str] | None) -> None:
    """Replay the worlds with `detect` wrapped to pickle its inputs, run by run."""
    base = load_settings(out)
    for world in [w for w in suite_worlds("full", variants) if w.seed in seeds]:
        folder = out / world.name
        if (folder / "done").exists():
            print(f"{world.name}: recorded already")
            continue
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "runs").mkdir(parents=True)
        started = time.process_time()

        def recording(features, monthly, current, previous, history, taxonomy, names, settings, _folder=folder):
            as_of = pd.Timestamp(features["as_of"].iloc[0]).date()
            inputs = dict(features=features, monthly=monthly, current=current, previous=previous, history=history, names=names)
            (_folder / "runs" / f"{as_of}.pkl").write_bytes(pickle.dumps(inputs))
            return detect(features, monthly, current, previous, history, taxonomy, names, settings)

        drift_run.detect = recording
        try:
            replay_world(world, base, folder)
        finally:
            drift_run.detect = detect
        shutil.copy(folder / "world" / "truth" / "accounts.csv", folder / "truth.csv")
        shutil.rmtree(folder / "world")
        shutil.rmtree(folder / "data")
        (folder / "done").write_text("")
        print(f"{world.name}: recorded in {time.process_time() - started:.0f} CPU s (this process)")


def score_world(folder: Path, settings: DriftSettings, taxonomy) -> dict[str, float | None]:
    """The replay's drift flags under `settings`, scored as pipelines/drift/evaluation.py does."""
    flags = []
    for path in sorted((folder / "runs").glob("*.pkl")):
        r = pickle.loads(path.read_bytes())
        out = detect(r["features"], r["monthly"], r["current"], r["previous"], r["history"], taxonomy, r["names"], settings)
        flags.append(pd.DataFrame({"account_id": out.index, "as_of": path.stem, "flag": out["drift_flag"].to_numpy()}))
    flags = pd.concat(flags, ignore_index=True)
    truth = pd.read_csv(folder / "truth.csv", keep_default_na=False, dtype={"drift_start": str})
    customers = set(flags["account_id"])
    drifters = truth[truth["drifter"] & truth["account_id"].isin(customers)]
    risky = drifters["drift_to"].eq("price_focused") | drifters["base_segment"].eq("loyalty_partnership")
    positives, elsewhere = set(drifters.loc[risky, "account_id"]), set(drifters.loc[~risky, "account_id"])
    first = flags[flags["flag"]].groupby("account_id")["as_of"].min()
    flagged = set(first.index) - elsewhere
    tp = len(flagged & positives)
    precision = tp / len(flagged) if flagged else 0.0
    recall = tp / len(positives) if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    starts = truth.set_index("account_id")["drift_start"]
    lag = [(pd.Period(on, "M") - pd.Period(starts[a], "M")).n for a, on in first.items() if a in positives]
    return {"precision": precision, "recall": recall, "f1": f1, "lag": float(np.median(lag)) if lag else None}


def score(out: Path, overrides: list[str]) -> None:
    base = load_settings(out)
    section = dict(load_config(base.config_path).get("drift") or {})
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in DriftSettings.__dataclass_fields__:
            raise SystemExit(
                f"--set {item}: unknown drift setting {key!r}; expected one of {', '.join(DriftSettings.__dataclass_fields__)}"
            )
        section[key] = value
    settings = DriftSettings.from_config(section)
    taxonomy = load_taxonomy(base.taxonomy_path)
    started = time.process_time()
    worlds = sorted(p for p in out.iterdir() if (p / "done").exists())
    results = {w.name: score_world(w, settings, taxonomy) for w in worlds}
    print(f"{'world':<22}{'precision':>10}{'recall':>8}{'F1':>7}{'lag':>6}")
    for name, r in results.items():
        lag = "-" if r["lag"] is None else f"{r['lag']:.1f}"
        print(f"{name:<22}{r['precision']:>10.2f}{r['recall']:>8.2f}{r['f1']:>7.2f}{lag:>6}")
    f1 = [r["f1"] for r in results.values()]
    lags = [r["lag"] for r in results.values() if r["lag"] is not None]
    if f1:
        print(
            f"F1 median {np.median(f1):.3f}, worst {min(f1):.3f}; flag lag median {np.median(lags) if lags else '-'} months; "
            f"{len(results)} worlds in {time.process_time() - started:.0f} CPU s"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="replay suite worlds once, recording detect's inputs per run")
    rec.add_argument("out", type=Path)
    rec.add_argument("--seed", type=int, action="append", help="suite seeds to record (default: 1)")
    rec.add_argument("--variant", action="append", help="suite variants to record (default: all)")
    sc = sub.add_parser("score", help="score the recorded worlds under the configured detector (and overrides)")
    sc.add_argument("out", type=Path)
    sc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a drift setting (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "record":
        args.out.mkdir(parents=True, exist_ok=True)
        record(args.out, args.seed or [1], args.variant)
    else:
        score(args.out, args.set)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
