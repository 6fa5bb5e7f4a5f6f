"""The stated-needs test of the drift detector (pipelines/drift/needs.py), on the hand-made
population of tests/test_drift_detector.py plus survey answers in two waves:

- an account whose buying mix did not move but whose answers now put price first (its needs
  moved from its segment's profile towards the price-focused one) is flagged as drifting
  towards price, and the evidence cites its answers and the two waves;
- answers that moved towards service (not a risky direction) raise an early warning, not a flag;
- accounts whose answers only wobble from wave to wave (the usual noise) are not flagged;
- an account that answered once has no stated-needs evidence.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.demo.world import PROTOTYPES, SEGMENTS
from pipelines.drift.detect import OTHER_KIND, PRICE_KIND, DriftSettings, detect
from pipelines.drift.needs import ITEMS
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import CONFIG_DIR
from tests.test_drift_detector import HISTORY, PROFILES, _features, _population


def _relative(scores: np.ndarray) -> np.ndarray:
    """Each row as relative importance: centred on its mean, over its spread (int_survey_needs)."""
    return (scores - scores.mean(axis=1, keepdims=True)) / np.maximum(scores.std(axis=1, keepdims=True), 0.5)


def _answers(accounts: pd.Index, segment_of: pd.Series, seed: int = 3) -> pd.DataFrame:
    """need_<item> (latest wave) and need_<item>_change for every account, two waves each;
    `said_price` now answers like a price-focused customer, `said_service` like a
    service-focused one; `once` answered one wave only."""
    rng = np.random.default_rng(seed)
    proto = {s: PROTOTYPES[SEGMENTS.index(s)] for s in SEGMENTS}
    before = np.vstack([proto[segment_of[a]] for a in accounts]) + rng.normal(0, 0.35, (len(accounts), len(ITEMS)))
    after = np.vstack([proto[segment_of[a]] for a in accounts]) + rng.normal(0, 0.35, (len(accounts), len(ITEMS)))
    at = {a: i for i, a in enumerate(accounts)}
    after[at["said_price"]] = proto["price_focused"] + rng.normal(0, 0.35, len(ITEMS))
    after[at["said_service"]] = proto["service_focused"] + rng.normal(0, 0.35, len(ITEMS))
    now, then = _relative(after), _relative(before)
    f = pd.DataFrame(index=accounts)
    for j, item in enumerate(ITEMS):
        f[f"need_{item}"] = now[:, j]
        f[f"need_{item}_change"] = now[:, j] - then[:, j]
    f.loc["once", [f"need_{i}_change" for i in ITEMS]] = np.nan
    f["survey_wave"] = "2026h1"
    f["previous_survey_wave"] = np.where(accounts == "once", None, "2025h2")
    f["survey_respondents"] = 1
    return f


@pytest.fixture(scope="module")
def run():
    monthly, segment_of = _population()
    now = HISTORY + 1
    # more quality & brand accounts that buy as before (and still order: a drift shows in
    # what an account still buys): two change their answers, one answered once
    extra = _population(seed=11, per_segment=6)[0]
    extra = extra[extra["account_id"].str.startswith("qual")].copy()
    ordering = extra[(extra["month"] > now - 3) & (extra["month"] <= now) & (extra["orders"] > 0)]["account_id"].unique()
    names = dict(zip(ordering[:3], ["said_price", "said_service", "once"], strict=True))
    extra["account_id"] = extra["account_id"].map(names)
    extra = extra[extra["account_id"].notna()]
    monthly = pd.concat([monthly, extra], ignore_index=True)
    segment_of = pd.concat([segment_of, pd.Series("quality_brand", index=list(names.values()))])
    segment_of.name = "segment_id"
    seen = monthly[(monthly["month"] <= now) & (monthly["month"] > now - HISTORY)].copy()
    seen["months_ago"] = now - seen["month"]
    seen = seen.drop(columns="month")
    features = _features(seen, segment_of.index, pd.Series({"said_price": -0.4})).join(_answers(segment_of.index, segment_of))
    current = pd.DataFrame({"segment_id": segment_of})
    history = pd.DataFrame(columns=["account_id", "segment_id", "as_of", "behaviour_probability"])
    taxonomy = load_taxonomy(CONFIG_DIR / "taxonomy.yaml")
    return detect(features, seen, current, current, history, taxonomy, {s: s for s in PROFILES}, DriftSettings())


def test_answers_that_now_put_price_first_are_a_drift_towards_price_with_the_answers_as_evidence(run):
    said = run.loc["said_price"]
    assert said["drift_flag"] and said["drift_kind"] == PRICE_KIND and said["toward_segment_id"] == "price_focused", said
    evidence = json.loads(said["evidence"])
    stated = [line for line in evidence if "stated importance of price" in line]
    assert stated and "survey wave 2026h1 vs 2025h2" in stated[0] and not stated[0].startswith("against"), evidence
    # falling revenue with the drift: an account team hears of it
    assert said["is_churn_risk"]


def test_answers_that_moved_towards_service_warn_but_do_not_alert(run):
    said = run.loc["said_service"]
    assert said["early_warning"] and said["drift_kind"] == OTHER_KIND and said["toward_segment_id"] == "service_focused", said
    assert not said["drift_flag"] and not said["is_churn_risk"]


def test_answers_that_only_wobble_between_waves_are_not_a_drift(run):
    stable = run[~run.index.str.startswith(("mover_", "promo", "said_"))]
    assert stable["drift_flag"].sum() <= 0.02 * len(stable), stable[stable["drift_flag"]][["drift_kind", "drift_z", "evidence_text"]]
    assert not stable["is_churn_risk"].any()


def test_an_account_that_answered_once_has_no_stated_needs_evidence(run):
    assert "stated importance" not in str(run.loc["once", "evidence"])
