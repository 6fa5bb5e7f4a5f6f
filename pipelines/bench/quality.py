"""`needseg bench --quality`: the bench run's segments and drift flags against the world's truth.

Speed must not be bought with quality, and quality measured on the demo world (1,650
customers) says nothing about 100,000. After the bench's cycles, the last run is scored
against the bench world's ground truth (`truth/`, pipelines/bench/world.py), with the same
measures `needseg evaluate` uses (pipelines/evaluate.py, docs/evaluation.md):

- segments: the adjusted Rand index (ARI) of surveyed and inferred customers against their
  true segments, each beside the supervised ceiling on the same world (needseg's classifier
  given the true labels), the naive baseline, the bootstrap Jaccard per segment, and which
  true segments were found (`evaluate_suite.segments_found`, over every customer). Above
  `evaluate.SCORE_SAMPLE` customers the ARIs and ceilings are computed on a random sample
  of that many (at 100k accounts the ceilings' cross-validation over every customer would
  cost more than the cycle), and the optimistic ceiling is left out;
- drift: the run's drift flags against the world's drifters. Every bench drifter moves
  towards price (its price need rises, its partnership need falls), so the positives are
  the drifters who did not start price-focused; the price-focused ones only become more so
  and are neither positives nor, when flagged, false flags. One run holds one flag per
  account: precision, recall and F1, with the drift's age at the run beside it (the bench
  world's drifts began 3-8 months before the last month; the replay's flag lag needs
  monthly runs and is `needseg evaluate`'s).

The bench world has no churn (its accounts keep buying), so alert lead times are
`needseg evaluate`'s alone.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.bench.world import DRIFT_TO, BenchWorld, ensure_truth
from pipelines.config import load_config
from pipelines.drift.evaluation import precision_recall_f1
from pipelines.drift.run import REASONS
from pipelines.evaluate import SCORE_SAMPLE, SegmentQuality, segment_quality
from pipelines.evaluate_suite import segments_found
from pipelines.segmentation.run import run_id_for
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import Settings
from pipelines.warehouse import open_warehouse


@dataclass
class BenchQuality:
    as_of: str
    segments: SegmentQuality
    found: dict[str, bool]
    drift: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def lines(self) -> list[str]:
        s, d = self.segments, self.drift
        out = [
            f"Quality of the run as of {self.as_of} against the world's truth ({self.seconds:.0f} s, {self.cpu_seconds:.0f} CPU s to score):"
        ]
        out.append(f"  k={s.k}; true segments found: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in sorted(self.found.items())))
        if s.sampled:
            out.append(f"  ARI on a random sample of {SCORE_SAMPLE:,} of the {s.population:,} customers (evaluate.SCORE_SAMPLE)")
        out.append(
            f"  {'group':<10}{'accounts':>9}{'needseg':>9}{'ceiling':>9}{'needseg/ceiling':>17}{'naive baseline':>16}{'strongest':>11}"
        )
        for name, g in (("surveyed", s.surveyed), ("inferred", s.inferred)):
            if g is not None:
                out.append(
                    f"  {name:<10}{g.accounts:>9,}{g.needseg_ari:>9.3f}{g.ceiling_ari:>9.3f}{g.ratio:>16.0%}{g.naive_ari:>16.3f}"
                    f"{g.strongest_ceiling_ari:>11.3f}"
                )
        out.append("  (ARI against the true segments; ceiling: needseg's classifier on the true labels, same inputs, cross-validated)")
        out.append("  bootstrap Jaccard per segment: " + ", ".join(f"{k} {v:.2f}" for k, v in s.jaccard.items()))
        n, e = d["needseg"], d["early_warnings_only"]
        out.append(
            f"  drift: {d['drifters']:,} drifters towards price among {d['customers']:,} customers "
            f"({d['drifters_elsewhere']:,} more already price-focused, not counted)"
        )
        out.append(f"  {'':<30}{'flagged':>9}{'precision':>11}{'recall':>8}{'F1':>7}")
        out.append(f"  {'needseg drift flags':<30}{n['flagged']:>9,}{n['precision']:>11.2f}{n['recall']:>8.2f}{n['f1']:>7.2f}")
        out.append(f"  {'  early warnings (risky kinds)':<30}{e['flagged']:>9,}{e['precision']:>11.2f}{e['recall']:>8.2f}{e['f1']:>7.2f}")
        out.append(
            "  recall by months since the drift began: "
            + ", ".join(f"{age} {share:.2f} ({count:,})" for age, (share, count) in d["recall_by_age"].items())
        )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "k": self.segments.k,
            "population": self.segments.population,
            "scored_sample": SCORE_SAMPLE if self.segments.sampled else None,
            "found": self.found,
            "surveyed": self.segments.surveyed.__dict__ if self.segments.surveyed else None,
            "inferred": self.segments.inferred.__dict__,
            "jaccard": self.segments.jaccard,
            "drift": self.drift,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
        }


def drift_quality(con, truth: pd.DataFrame, run_id: str, as_of: dt.date) -> dict[str, Any]:
    """One run's drift flags against the bench world's drifters (module docstring)."""
    drift = con.execute(
        "select account_id, early_warning, drift_kind, drift_flag from drift.customer_drift where run_id = ?", [run_id]
    ).df()
    customers = set(drift["account_id"])
    drifters = truth[truth["drifter"] & truth["account_id"].isin(customers)]
    towards = drifters["base_segment"].ne(DRIFT_TO)
    positives = set(drifters.loc[towards, "account_id"])
    elsewhere = set(drifters.loc[~towards, "account_id"])
    flagged = set(drift.loc[drift["drift_flag"], "account_id"]) - elsewhere
    early = drift["early_warning"] & drift["drift_kind"].isin(list(REASONS))
    month = pd.Period(as_of, "M")
    age = drifters.loc[towards].set_index("account_id")["drift_start"].map(lambda m: (month - pd.Period(m, "M")).n)
    recall_by_age = {
        int(a): (round(float(np.mean([x in flagged for x in ids])), 4), len(ids)) for a, ids in age.groupby(age).groups.items()
    }
    return {
        "customers": len(customers),
        "drifters": len(positives),
        "drifters_elsewhere": len(elsewhere),
        "needseg": precision_recall_f1(flagged, positives),
        "early_warnings_only": precision_recall_f1(set(drift.loc[early, "account_id"]) - elsewhere, positives),
        "recall_by_age": recall_by_age,
    }


def score(settings: Settings, world: BenchWorld, as_of: dt.date) -> BenchQuality:
    """Score the run as of `as_of` in `settings`' warehouse against `world`'s truth."""
    started, cpu = time.monotonic(), time.process_time()
    truth_dir = ensure_truth(world)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    seed = int(load_config(settings.config_path)["segmentation"]["seed"])
    truth = pd.read_parquet(truth_dir / "accounts.parquet")
    run_id = run_id_for(as_of)
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        segments = segment_quality(con, world.path, as_of, taxonomy, seed)
        assigned = con.execute("select account_id, segment_id from segments.assignments where run_id = ?", [run_id]).df()
        drift = drift_quality(con, truth, run_id, as_of)
    monthly = pd.read_parquet(truth_dir / "segments_monthly.parquet")
    true_now = monthly[monthly["month"] == f"{as_of:%Y-%m}"].set_index("account_id")["segment"]
    assigned = assigned.set_index("account_id")["segment_id"]
    found = segments_found(assigned, true_now.reindex(assigned.index))
    return BenchQuality(
        as_of=as_of.isoformat(),
        segments=segments,
        found=found,
        drift=drift,
        seconds=round(time.monotonic() - started, 1),
        cpu_seconds=round(time.process_time() - cpu, 1),
    )
