"""Drift detection scored against a generated world's planted drifters (`needseg evaluate`).

Over the replayed runs, an account counts as flagged by needseg when any run raised a
drift flag for it (an early warning, or a confirmed migration, towards price-sensitivity
or away from partnership); the naive baseline flags every account whose assigned segment
changed between two consecutive runs. Both are compared with the planted drifters that
were customers during the runs (precision, recall, F1). For drifters that went on to
churn, the lead time is the months from needseg's first flag to the churn month.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _prf(flagged: set[str], positives: set[str]) -> dict[str, float]:
    tp = len(flagged & positives)
    precision = tp / len(flagged) if flagged else 0.0
    recall = tp / len(positives) if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"flagged": len(flagged), "true_positives": tp, "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def drift_quality(con, world: Path, months: list[str]) -> dict[str, Any]:
    truth = pd.read_csv(world / "truth" / "accounts.csv", keep_default_na=False, dtype={"drift_start": str, "churn_month": str})
    first, last = months[0], months[-1]
    runs = con.execute(
        "select run_id, as_of from segments.segment_runs where strftime(as_of, '%Y-%m') between ? and ? order by as_of",
        [first, last],
    ).df()
    run_ids = list(runs["run_id"])
    drift = con.execute(
        "select run_id, as_of, account_id, early_warning, drift_flag, migrated, is_churn_risk, coalesce(lapsing, false) as lapsing "
        "from drift.customer_drift where run_id in (select unnest(?))",
        [run_ids],
    ).df()
    customers = set(drift["account_id"])
    positives = set(truth[truth["drifter"]]["account_id"]) & customers
    warnings = drift[drift["drift_flag"]]
    first_flag = warnings.groupby("account_id")["as_of"].min()
    early_only = _prf(set(drift[drift["early_warning"]]["account_id"]), positives)
    needseg = _prf(set(first_flag.index), positives)
    # the baseline: any change of assigned segment between consecutive runs (not the first)
    changed = drift[(drift["run_id"] != run_ids[0]) & drift["migrated"]]
    baseline = _prf(set(changed["account_id"]), positives)
    risk = drift[drift["is_churn_risk"]]
    risk_flags = _prf(set(risk["account_id"]), positives)

    churn = truth.set_index("account_id")["churn_month"]
    lead = []
    for account, flagged_on in first_flag.items():
        if account in positives and churn.get(account):
            lead.append((pd.Period(churn[account], "M") - pd.Period(flagged_on, "M")).n)
    random_churners = set(truth[truth["churn_kind"] == "random"]["account_id"]) & customers
    promo = set(truth[truth["promo_start"] != ""]["account_id"]) & customers - positives
    result = {
        "runs": len(run_ids),
        "drifters": len(positives),
        "customers": len(customers),
        "needseg": needseg,
        "early_warnings_only": early_only,
        "baseline": baseline,
        "churn_risk_flags": risk_flags,
        "f1_ratio_vs_baseline": round(needseg["f1"] / baseline["f1"], 3) if baseline["f1"] else None,
        "lead_time_months": {
            "median": float(np.median(lead)) if lead else None,
            "drifters_that_churned_and_were_flagged": len(lead),
            "values": sorted(lead),
        },
        "false_flags_on_random_churners": len(set(first_flag.index) & random_churners),
        "random_churners_flagged_lapsing": len(set(drift.loc[drift["lapsing"], "account_id"]) & random_churners),
        "false_flags_on_promotions": len(set(first_flag.index) & promo),
    }
    n, b = needseg, baseline
    result["lines"] = [
        f"Drift against {len(positives)} planted drifters among {len(customers)} customers over {len(run_ids)} runs ({first} .. {last}):",
        f"  {'':<44}{'flagged':>8}{'precision':>11}{'recall':>8}{'F1':>7}",
        f"  {'needseg drift flags':<44}{n['flagged']:>8}{n['precision']:>11.2f}{n['recall']:>8.2f}{n['f1']:>7.2f}",
        f"  {'  of which early warnings':<44}{early_only['flagged']:>8}{early_only['precision']:>11.2f}{early_only['recall']:>8.2f}{early_only['f1']:>7.2f}",
        f"  {'baseline: any segment change':<44}{b['flagged']:>8}{b['precision']:>11.2f}{b['recall']:>8.2f}{b['f1']:>7.2f}",
        f"  {'needseg churn risk (drift + revenue/satisf.)':<44}{risk_flags['flagged']:>8}{risk_flags['precision']:>11.2f}{risk_flags['recall']:>8.2f}{risk_flags['f1']:>7.2f}",
        f"  needseg F1 / baseline F1: {result['f1_ratio_vs_baseline']}",
        f"  lead time from first flag to churn (drifters that churned): median {result['lead_time_months']['median']} months over {len(lead)} accounts",
        f"  early warnings on random churners (no drift): {result['false_flags_on_random_churners']} of {len(random_churners)}; on promotion-only accounts: {result['false_flags_on_promotions']} of {len(promo)}",
        f"  random churners flagged as lapsing by the churn model: {result['random_churners_flagged_lapsing']} of {len(random_churners)}",
    ]
    return result
