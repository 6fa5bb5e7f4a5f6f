"""The segmentation's bounded and vectorised steps (issue 15, "segmentation that scales")
give what the direct computation gives: the classifier's training sample, chunked
scoring and drivers, per-class path credits, the lookalikes' blocked nearest search and
the JSON numbers written without a per-account loop."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from pipelines.segmentation import explain, inference, run
from pipelines.segmentation.explain import class_contributions, json_numbers, model_drivers, tree_contributions
from pipelines.segmentation.inference import fit_and_score


def _world(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "discount_depth_12m": rng.normal(0.1, 0.05, n),
            "premium_share_12m": rng.uniform(0, 1, n),
            "tickets_per_order_12m": rng.gamma(2, 0.2, n),
            "revenue_12m": rng.lognormal(10, 1, n),
            "annual_revenue": rng.lognormal(13, 1, n),
            "industry": rng.choice(["Construction", "Retail", "Energy"], n),
            "country": rng.choice(["DE", "FR"], n),
        },
        index=[f"A{i:04d}" for i in range(n)],
    )
    frame.loc[frame.index[::7], "tickets_per_order_12m"] = np.nan
    labels = pd.Series(
        np.where(frame["discount_depth_12m"] > 0.12, "price", np.where(frame["premium_share_12m"] > 0.5, "quality", "service")),
        index=frame.index,
    )
    return frame, labels


def test_the_classifier_learns_from_a_stratified_sample_and_scores_everyone_honestly():
    frame, labels = _world(900)
    train, score = frame.iloc[:600], frame
    full = fit_and_score(train, labels.iloc[:600], score, seed=1)
    sampled = fit_and_score(train, labels.iloc[:600], score, seed=1, sample=300)
    again = fit_and_score(train, labels.iloc[:600], score, seed=1, sample=300)
    assert full.training_accounts == 600 and sampled.training_accounts == 300
    assert sampled.probabilities.equals(again.probabilities)  # deterministic for a seed
    assert set(sampled.probabilities.index) == set(score.index)  # every account scored once
    assert len(sampled.probabilities) == len(score)
    # the sample keeps each segment's share (stratified)
    kept = inference.training_sample(labels.iloc[:600], 300, 1)
    assert len(kept) == 300
    share = labels.loc[kept].value_counts(normalize=True)
    assert (share - labels.iloc[:600].value_counts(normalize=True)).abs().max() < 0.01
    # labelled accounts left out of the sample are scored by the model that never saw them,
    # the sample's own accounts out of fold (not by the model that learnt them)
    left_out = train.index.difference(kept)
    direct = sampled.model.predict_proba(sampled.design(frame.loc[left_out]))
    assert np.allclose(sampled.probabilities.loc[left_out].to_numpy(), direct)
    in_sample = sampled.model.predict_proba(sampled.design(frame.loc[kept]))
    assert not np.allclose(sampled.probabilities.loc[kept].to_numpy(), in_sample)
    # a sample of the labels learns nearly as well as all of them, on this easy world
    assert sampled.cv_accuracy >= full.cv_accuracy - 0.05
    assert sampled.missing_share == full.missing_share


def test_scoring_in_chunks_gives_the_same_probabilities(monkeypatch):
    frame, labels = _world(700)
    whole = fit_and_score(frame.iloc[:400], labels.iloc[:400], frame, seed=3)
    monkeypatch.setattr(inference, "SCORE_CHUNK", 64)
    chunked = fit_and_score(frame.iloc[:400], labels.iloc[:400], frame, seed=3)
    assert chunked.probabilities.equals(whole.probabilities)
    assert chunked.missing_share == whole.missing_share


def test_per_class_credits_are_the_decompositions_own_and_add_up():
    frame, labels = _world(500)
    fitted = fit_and_score(frame.iloc[:300], labels.iloc[:300], frame.iloc[300:], seed=1)
    prep, forest = fitted.model[:-1], fitted.model[-1]
    inputs = prep.transform(fitted.design(frame.iloc[300:]))
    bias, contributions = tree_contributions(forest, inputs)
    assert np.allclose(bias + contributions.sum(axis=1), forest.predict_proba(inputs), atol=1e-9)
    own = np.random.default_rng(0).integers(0, len(forest.classes_), len(inputs))
    credits = class_contributions(forest, inputs, own)
    assert np.allclose(credits, contributions[np.arange(len(inputs)), :, own], atol=1e-12)


@pytest.mark.parametrize("classifier", ["forest", "lightgbm"])
def test_drivers_in_chunks_are_the_drivers_of_each_account(monkeypatch, classifier):
    frame, labels = _world(420)
    fitted = fit_and_score(frame.iloc[:300], labels.iloc[:300], frame.iloc[300:], seed=1, classifier=classifier)
    scored, segments = frame.iloc[300:], labels.iloc[300:].copy()
    segments.iloc[0] = "not_a_class"  # a segment the model does not know: no drivers
    whole = model_drivers(fitted, scored, segments, frame.iloc[:300], labels.iloc[:300])
    monkeypatch.setattr(explain, "DRIVER_CHUNK", 17)
    chunked = model_drivers(fitted, scored, segments, frame.iloc[:300], labels.iloc[:300])
    assert whole[0].equals(chunked[0]) and whole[1].equals(chunked[1])
    assert whole[0].iloc[0] == "[]" and whole[1].iloc[0] == ""
    parsed = [json.loads(j) for j in whole[0]]
    assert sum(1 for d in parsed if d) >= 0.9 * len(parsed)
    for drivers, text in zip(parsed, whole[1], strict=True):
        weights = [d["weight"] for d in drivers]
        assert weights == sorted(weights, reverse=True) and all(0 < w <= 1 for w in weights)
        assert all(d["label"] in text for d in drivers)
        for d in drivers:
            if d["dimension"] in ("industry", "country"):  # a category: its share in the segment and among all
                assert isinstance(d["value"], str) and 0 <= d["overall"] <= 1
                assert f"{d['label']} {d['value']} (" in text


def test_json_numbers_are_written_as_json_dumps_of_the_rounded_value():
    values = np.array([0.25, 12.0, -0.00001, 13673.35065, 0.0001, 5e-5, 1234567.123456, 0.1 + 0.2, -3.99996, 2.675, float("nan")])
    expected = ["null" if np.isnan(v) else json.dumps(round(float(v), 4)) for v in values]
    assert list(json_numbers(values, 4)) == expected


def test_lookalikes_found_in_blocks_are_the_nearest_key_accounts(monkeypatch):
    rng = np.random.default_rng(5)
    n = 600
    customers = pd.DataFrame(
        {c: rng.normal(0, 1, n) for c in run.LOOKALIKE_COLUMNS}
        | {
            "revenue_12m": rng.lognormal(9, 1, n),
            "account_name": [f"Account {i}" for i in range(n)],
            "account_owner": "owner",
        },
        index=[f"C{i:04d}" for i in range(n)],
    )
    assigned = pd.Series(rng.choice(["a", "b", "c"], n), index=customers.index)
    is_key = pd.Series(rng.uniform(size=n) < 0.2, index=customers.index)
    whole = run._lookalikes("r", dt.date(2026, 10, 31), customers, assigned, is_key, 10)
    monkeypatch.setattr(run, "NEAREST_BLOCK", 50)
    blocked = run._lookalikes("r", dt.date(2026, 10, 31), customers, assigned, is_key, 10)
    pd.testing.assert_frame_equal(whole, blocked)
    assert len(whole) == 30
    # against the direct computation: every lookalike's nearest key account and similarity
    values = customers[run.LOOKALIKE_COLUMNS]
    scaled = (values - values.mean()) / values.std(ddof=0)
    for row in whole.itertuples():
        keys = customers.index[(assigned == row.segment_id) & is_key]
        distance = np.sqrt(((scaled.loc[keys] - scaled.loc[row.account_id]) ** 2).sum(axis=1))
        assert row.nearest_key_account_id == distance.idxmin()
        assert row.similarity == pytest.approx(1 / (1 + distance.min()), abs=1e-4)
