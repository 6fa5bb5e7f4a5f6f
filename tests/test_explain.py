"""Drivers say what decided an account's segment: for an inferred account the classifier's
own attribution (what raised its probability of that segment), for a surveyed one the
needs it was clustered on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipelines.segmentation.explain import model_drivers, tree_contributions
from pipelines.segmentation.inference import fit_and_score
from pipelines.warehouse import connect


def test_the_attributions_add_up_to_the_forests_probability():
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "discount_depth_12m": rng.normal(0.1, 0.05, n),
            "premium_share_12m": rng.uniform(0, 1, n),
            "tickets_per_order_12m": rng.gamma(2, 0.2, n),
            "revenue_12m": rng.lognormal(10, 1, n),
            "industry": rng.choice(["Construction", "Retail", "Energy"], n),
        },
        index=[f"A{i:03d}" for i in range(n)],
    )
    frame.loc[frame.index[::7], "tickets_per_order_12m"] = np.nan  # the model's missing-value flags count too
    labels = pd.Series(
        np.where(frame["discount_depth_12m"] > 0.12, "price", np.where(frame["premium_share_12m"] > 0.5, "quality", "service")),
        index=frame.index,
    )
    inference = fit_and_score(frame.iloc[:200], labels.iloc[:200], frame.iloc[200:], seed=1)
    prep, forest = inference.model[:-1], inference.model[-1]
    inputs = prep.transform(inference.design(frame.iloc[200:]))
    bias, contributions = tree_contributions(forest, inputs)
    assert np.allclose(bias + contributions.sum(axis=1), forest.predict_proba(inputs), atol=1e-9)
    # the feature that decides "price" carries most of the price-focused accounts' probability
    price = list(forest.classes_).index("price")
    mine = (labels.iloc[200:] == "price").to_numpy()
    names = list(prep.get_feature_names_out())
    assert names[int(np.abs(contributions[mine, :, price]).mean(axis=0).argmax())] == "discount_depth_12m"


def test_inferred_accounts_are_explained_by_what_the_model_used(cycled_small_world):
    settings, _ = cycled_small_world
    with connect(settings.warehouse_path, read_only=True) as con:
        found = con.execute(
            "select segment_source, drivers, drivers_text, probability from segments.assignments where run_id = 'seg-2026-10-31'"
        ).fetchall()
    inferred = [(json.loads(d), t) for s, d, t, _ in found if s == "inferred"]
    surveyed = [json.loads(d) for s, d, _, _ in found if s == "surveyed"]
    assert inferred and surveyed
    assert sum(1 for d, _ in inferred if d) >= 0.9 * len(inferred)
    for drivers, text in inferred:
        weights = [d["weight"] for d in drivers]
        assert all(d["kind"] == "model" for d in drivers)
        # probability points the input added to this account's segment: positive, largest first
        assert weights == sorted(weights, reverse=True) and all(0 < w <= 1 for w in weights)
        assert all(d["label"] in text for d in drivers)
    assert all(d["kind"] == "need" and d["label"].endswith(" importance") for drivers in surveyed for d in drivers)


def test_lightgbm_drivers_are_the_librarys_own_attributions_and_name_the_deciding_feature():
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "discount_depth_12m": rng.normal(0.1, 0.05, n),
            "premium_share_12m": rng.uniform(0, 1, n),
            "tickets_per_order_12m": rng.gamma(2, 0.2, n),
            "revenue_12m": rng.lognormal(10, 1, n),
        },
        index=[f"A{i:03d}" for i in range(n)],
    )
    frame.loc[frame.index[::5], "premium_share_12m"] = np.nan
    labels = pd.Series(
        np.where(frame["discount_depth_12m"] > 0.12, "price", np.where(frame["premium_share_12m"] > 0.5, "quality", "service")),
        index=frame.index,
    )
    inference = fit_and_score(frame.iloc[:200], labels.iloc[:200], frame.iloc[200:], seed=1, classifier="lightgbm")
    again = fit_and_score(frame.iloc[:200], labels.iloc[:200], frame.iloc[200:], seed=1, classifier="lightgbm")
    assert inference.probabilities.equals(again.probabilities)  # deterministic for a seed
    scored = frame.iloc[200:]
    as_json, _ = model_drivers(inference, scored, labels.iloc[200:], frame.iloc[:200], labels.iloc[:200])
    drivers = {a: json.loads(j) for a, j in as_json.items()}
    price = [a for a in scored.index if labels[a] == "price" and drivers[a]]
    assert price and sum(drivers[a][0]["dimension"] == "discount_depth_12m" for a in price) >= 0.8 * len(price)
    # an account without a premium share is never explained by it
    blank = scored.index[scored["premium_share_12m"].isna().to_numpy()]
    assert not any(d["dimension"] == "premium_share_12m" for a in blank for d in drivers[a])
    assert all(0 < d["weight"] <= 1 for ds in drivers.values() for d in ds)
