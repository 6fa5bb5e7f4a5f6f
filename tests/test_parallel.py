"""Fits run on every core give the figures of one fit after another, to the bit
(pipelines/parallel.py): the bootstrap stability, the held-out likelihoods, the choice of
k and the churn model are the same with one thread and with several."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from pipelines.churn import model as churn_model
from pipelines.parallel import ordered_map
from pipelines.segmentation import clustering
from pipelines.segmentation.clustering import ClusterSettings, Prior


def _blobs(seed: int = 3, n: int = 1200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 2.0]])
    return np.vstack([c + rng.normal(0, 0.9, size=(n // 4, 4)) for c in centres])


def _with_threads(monkeypatch, threads: int, fn):
    monkeypatch.setenv("NEEDSEG_FIT_THREADS", str(threads))
    with threadpool_limits(limits=1):  # as a segmentation run holds them
        return fn()


def test_results_come_in_the_inputs_order_and_errors_reach_the_caller():
    names: set[str] = set()

    def slow_first(i: int) -> int:
        names.add(threading.current_thread().name)
        if i == 0:
            threading.Event().wait(0.2)
        return i * i

    assert ordered_map(slow_first, range(6), threads=2) == [0, 1, 4, 9, 16, 25]
    assert any(name.startswith("needseg-fit") for name in names)

    def boom(i: int) -> int:
        if i == 3:
            raise ValueError("fit 3 failed")
        return i

    with pytest.raises(ValueError, match="fit 3 failed"):
        ordered_map(boom, range(5), threads=2)


def test_bootstrap_and_held_out_figures_are_the_same_on_one_thread_and_on_two(monkeypatch):
    X = _blobs()
    settings = ClusterSettings(seed=7, bootstrap_samples=12)
    labels = clustering._kmeans(X, 4, 7, 5).labels_
    seeds = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 2.0]])

    def figures():
        return (
            clustering.bootstrap_jaccard(X, labels, 4, settings),
            clustering.bootstrap_jaccard(X, labels, 4, settings, init=seeds),
            clustering.held_out_loglik(X, [2, 3, 4, 5], settings, seeds),
        )

    one, two = _with_threads(monkeypatch, 1, figures), _with_threads(monkeypatch, 2, figures)
    for a, b in zip(one[:2], two[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert one[2] == two[2]
    assert 0.5 < one[0].min() <= 1.0 and np.isfinite(one[2][1])


def test_the_choice_of_k_is_the_same_on_one_thread_and_on_two(monkeypatch):
    X = _blobs(seed=11)
    settings = ClusterSettings(seed=5, bootstrap_samples=8)
    prototypes = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 2.0]])
    names = ["a", "b", "c", "d"]

    def match(centres: np.ndarray) -> list[str | None]:
        return [names[int(np.argmin(((prototypes - c) ** 2).sum(axis=1)))] for c in centres]

    prior = Prior(match=match, seeds=prototypes, names=names)

    def choose():
        return clustering.choose_k(X, 2, 6, settings, prior=prior)

    one, two = _with_threads(monkeypatch, 1, choose), _with_threads(monkeypatch, 2, choose)
    assert one.k == two.k == 4
    np.testing.assert_array_equal(one.centres, two.centres)
    np.testing.assert_array_equal(one.labels, two.labels)
    np.testing.assert_array_equal(one.jaccard, two.jaccard)
    assert one.candidates == two.candidates and one.reason == two.reason


def test_the_churn_model_is_the_same_on_one_thread_and_on_two(monkeypatch):
    rng = np.random.default_rng(2)
    n = 3000
    frame = pd.DataFrame({name: rng.normal(size=n) for name in churn_model.FEATURES})
    frame["cutoff"] = np.repeat(pd.date_range("2025-01-31", periods=6, freq="ME").date, n // 6)
    y = (frame[next(iter(churn_model.FEATURES))] + rng.normal(size=n) > 0.8).to_numpy().astype(int)

    def fitted():
        m = churn_model.fit(frame, y, seed=4)
        return m.margin(frame), m.oof_probability

    one, two = _with_threads(monkeypatch, 1, fitted), _with_threads(monkeypatch, 2, fitted)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_drivers_and_lookalikes_are_the_same_on_one_thread_and_on_two(monkeypatch):
    """The inferred accounts' drivers (per chunk of accounts) and the lookalike search (per
    segment) run on every core: chunk and segment order is kept, so the text is the same."""
    from pipelines.segmentation import explain
    from pipelines.segmentation.inference import fit_and_score
    from pipelines.segmentation.run import _lookalikes

    rng = np.random.default_rng(5)
    n = 600
    segment = rng.integers(0, 3, n)
    frame = pd.DataFrame(
        {
            "discount_depth_12m": rng.normal(0.1 + 0.1 * (segment == 0), 0.03),
            "service_revenue_share_12m": rng.normal(0.1 + 0.2 * (segment == 1), 0.05),
            "premium_share_12m": rng.normal(0.2 + 0.3 * (segment == 2), 0.05),
            "revenue_12m": rng.lognormal(10, 1, n),
            "orders_12m": rng.poisson(12, n).astype(float),
            "industry": rng.choice(["retail", "health", "energy"], n),
            "account_name": [f"Account {i}" for i in range(n)],
            "account_owner": "owner",
        },
        index=pd.Index([f"A{i:04d}" for i in range(n)], name="account_id"),
    )
    labels = pd.Series(np.array(["price", "service", "quality"])[segment], index=frame.index)
    train = frame.index[:300]
    inference = fit_and_score(frame, labels.loc[train], frame, seed=7)
    inferred = frame.index[300:]
    monkeypatch.setattr(explain, "DRIVER_CHUNK", 70)  # five chunks
    is_key = pd.Series(rng.random(n) < 0.2, index=frame.index)

    def outputs():
        drivers = explain.model_drivers(inference, frame.loc[inferred], labels.loc[inferred], frame.loc[train], labels.loc[train])
        return drivers, _lookalikes("run", None, frame, labels, is_key, 5)

    (json_one, text_one), look_one = _with_threads(monkeypatch, 1, outputs)
    (json_two, text_two), look_two = _with_threads(monkeypatch, 2, outputs)
    assert list(json_one.index) == list(inferred) and json_one.str.len().gt(2).all()
    pd.testing.assert_series_equal(json_one, json_two)
    pd.testing.assert_series_equal(text_one, text_two)
    assert look_one["segment_id"].nunique() == 3
    pd.testing.assert_frame_equal(look_one, look_two)
