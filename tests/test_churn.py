"""The churn model on a small hand-made order history in DuckDB: no label from an open
window, nothing after the scoring date changes a score, the cold-start fallback, the
backtest against recency and BG/NBD, reasons that argue the way the probability does."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from pipelines.churn import history
from tests.conftest import account_order_days
from pipelines.churn.run import COLD_START, LIGHTGBM, ChurnSettings, _threshold, load, predict_at, score_run

START = dt.date(2024, 1, 1)
SETTINGS = ChurnSettings(training_cutoffs=8, min_training_rows=300, min_training_positives=30, top_k=50, backtest_runs=3)


def _orders(seed: int, accounts: int = 400, end: dt.date = dt.date(2025, 6, 30)) -> pd.DataFrame:
    """Accounts buying at their own rate; a third stop for good at a random date."""
    rng = np.random.default_rng(seed)
    days = (end - START).days
    rows = []
    for i in range(accounts):
        rate = rng.gamma(1.5, 1 / 40)  # purchases per day
        first = int(rng.integers(0, 200))
        stop = int(rng.integers(first + 30, days + 200)) if rng.random() < 0.35 else days + 1
        n = rng.poisson(rate * (min(stop, days) - first)) + 1
        rows.extend(
            (f"a{i:03d}", f"o{i}-{d}", START + dt.timedelta(days=int(d)), float(rng.gamma(2, 50)))
            for d in np.sort(rng.integers(first, min(stop, days) + 1, size=n))
        )
    return pd.DataFrame(rows, columns=["account_id", "order_id", "order_date", "revenue"])


def _warehouse(orders: pd.DataFrame) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("o", orders)
    con.execute("create schema intermediate; create schema staging; create schema segments")
    con.execute(
        """create table intermediate.int_order_lines__priced as
        select order_id, account_id, order_date, revenue::decimal(38, 6) as revenue, false as is_return,
               0.05 as discount, null::varchar as category_class from o"""
    )
    account_order_days(con)
    con.execute(
        """create table staging.stg_crm__accounts as
        select account_id, 'customer' as status, min(order_date) as customer_since, min(order_date) as updated_at,
               now() as loaded_at from o group by all"""
    )
    con.execute("create table segments.segment_runs (run_id varchar, as_of date)")
    return con


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    return _orders(seed=3)


def test_a_label_whose_window_has_not_closed_is_never_used(orders):
    con = _warehouse(orders)
    as_of = dt.date(2025, 6, 30)
    cutoffs = [dt.date(2025, 2, 28), dt.date(2025, 3, 31), dt.date(2025, 4, 30)]
    labelled = history.labels(con, cutoffs, as_of, 3)
    # 2025-03-31 + 3 months = 2025-06-30: closed on the day; 2025-04-30's runs to July
    assert sorted(set(labelled["cutoff"])) == [dt.date(2025, 2, 28), dt.date(2025, 3, 31)]
    # the training set of a model for a date holds only windows closed by that date
    data = load(con, as_of, [], SETTINGS, None)
    when = dt.date(2025, 3, 31)
    closed = [c for c in data.loc[data["churned"].notna(), "cutoff"].unique() if history.window_closed(c, when, 3)]
    assert closed and max(closed) <= dt.date(2024, 12, 31)


def test_nothing_after_the_scoring_date_changes_its_scores(orders):
    """Two histories equal up to 2025-03-31 and different afterwards give the same scores
    for that date: the model never learns from an outcome that was not over yet."""
    when = dt.date(2025, 3, 31)
    other = orders[orders["order_date"] <= when]
    # the second history: everyone that bought before keeps buying after the date
    later = other.drop_duplicates("account_id").assign(order_date=dt.date(2025, 5, 15), order_id=lambda f: f["order_id"] + "-x")
    scores = []
    for frame in (orders, pd.concat([other, later], ignore_index=True)):
        con = _warehouse(frame)
        data = load(con, dt.date(2025, 6, 30), [when], SETTINGS, None)
        pred = predict_at(data, when, SETTINGS)
        assert pred.kind == LIGHTGBM
        scores.append(pd.Series(pred.probability, index=data.loc[data["cutoff"] == when, "account_id"]).sort_index())
    pd.testing.assert_series_equal(scores[0], scores[1])


def test_too_little_history_falls_back_to_bgnbd_and_says_so(orders):
    con = _warehouse(orders[orders["order_date"] <= dt.date(2024, 4, 30)])
    result = score_run(con, "seg-2024-04-30", dt.date(2024, 4, 30), SETTINGS)
    scores = result.scores
    assert set(scores["model"]) == {COLD_START}
    assert result.summary["model"] == COLD_START and "cold start" in result.line()
    assert scores["churn_probability"].between(0, 1).all()
    np.testing.assert_allclose(scores["churn_probability"], scores["bgnbd_p_no_purchase"], atol=1e-4)
    assert scores["reasons"].str.startswith("cold start, too little history to learn from: BG/NBD").all()


def test_the_backtest_scores_earlier_runs_against_recency_and_bgnbd_and_sets_the_threshold(orders):
    con = _warehouse(orders)
    runs = [dt.date(2024, 12, 31), dt.date(2025, 1, 31), dt.date(2025, 2, 28), dt.date(2025, 5, 31)]
    con.executemany("insert into segments.segment_runs values (?, ?)", [[f"seg-{d}", d] for d in runs])
    result = score_run(con, "seg-2025-06-30", dt.date(2025, 6, 30), SETTINGS)
    q = result.quality
    # 2025-05-31's window is still open: not evaluated
    assert sorted(set(q["evaluated_as_of"])) == runs[:3]
    assert set(q["metric"]) == {"precision_at_50", "auc", "brier"}
    auc = q[q["metric"] == "auc"]
    assert (auc["needseg"] > 0.6).all() and auc["recency"].notna().all() and auc["bgnbd"].notna().all()
    assert q.loc[q["metric"] == "brier", "recency"].isna().all()
    s = result.summary
    assert s["model"] == LIGHTGBM and s["backtest_runs"] == 3
    if s["alert_threshold"] is not None:
        assert s["threshold_precision"] >= SETTINGS.target_precision
        lapsing = result.scores[result.scores["lapsing"]]
        assert (lapsing["churn_probability"] >= s["alert_threshold"]).all() and lapsing["eligible"].all()
    ranked = result.scores.sort_values("rank")
    assert ranked["churn_probability"].is_monotonic_decreasing and ranked["rank"].tolist() == list(range(1, len(ranked) + 1))


def test_reasons_only_name_what_raises_the_risk(orders):
    con = _warehouse(orders)
    data = load(con, dt.date(2025, 6, 30), [], SETTINGS, None)
    pred = predict_at(data, dt.date(2025, 6, 30), SETTINGS)
    target = data[data["cutoff"] == dt.date(2025, 6, 30)]
    contributions = pred.model.contributions(target)
    from pipelines.churn.model import FEATURES
    from pipelines.churn.reasons import model_reasons

    reasons = model_reasons(contributions, target, 3)
    groups = contributions.T.groupby(pd.Series(FEATURES)).sum().T
    riskiest = int(np.argmax(pred.probability))
    safest = int(np.argmin(pred.probability))
    assert (
        "no order for" in reasons.iloc[riskiest] or "purchase days" in reasons.iloc[riskiest] or "usually orders" in reasons.iloc[riskiest]
    )
    if groups.iloc[safest].max() < 0.05:
        assert reasons.iloc[safest].startswith("nothing raises the risk")


def test_the_threshold_is_the_lowest_probability_that_still_reaches_the_precision():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    y = np.array([1, 1, 1, 0, 1, 0])
    settings = ChurnSettings(target_precision=0.75, min_alerts_for_threshold=2)
    assert _threshold(p, y, settings) == (0.5, 0.8)
    assert _threshold(p, y, ChurnSettings(target_precision=0.99, min_alerts_for_threshold=4)) == (None, None)


def test_a_run_scores_the_same_whatever_happened_after_its_date(orders):
    """The whole churn step for a date (features, BG/NBD, training, threshold, reasons) on a
    warehouse that already holds later orders equals the one on the history up to that date:
    an outcome window still open on the date never reaches a label."""
    when = dt.date(2025, 3, 31)
    results = [score_run(_warehouse(frame), "seg-2025-03-31", when, SETTINGS) for frame in (orders, orders[orders["order_date"] <= when])]
    assert results[0].summary["model"] == LIGHTGBM
    pd.testing.assert_frame_equal(results[0].scores, results[1].scores)
    assert results[0].summary == results[1].summary


def test_cold_start_without_enough_accounts_for_bgnbd_uses_the_purchase_rhythm_and_says_so(orders):
    few = orders[orders["account_id"].isin(sorted(orders["account_id"].unique())[:12])]
    result = score_run(_warehouse(few), "seg-2025-06-30", dt.date(2025, 6, 30), SETTINGS)
    scores = result.scores
    assert result.summary["model"] == COLD_START and "cold start" in result.line()
    assert scores["bgnbd_p_no_purchase"].isna().all()  # too few accounts to fit BG/NBD
    assert scores["churn_probability"].between(0, 1).all() and len(scores) == 12
    assert scores["reasons"].str.startswith("cold start, too little history to learn from").all()


def test_kept_bgnbd_fits_give_the_same_figures_and_a_changed_history_fits_afresh(orders):
    from pipelines.churn import bgnbd

    con = _warehouse(orders)
    cutoffs = [dt.date(2024, 12, 31), dt.date(2025, 3, 31)]
    data = history.features(con, cutoffs)
    fresh = bgnbd.per_cutoff(data, 91.3)
    first = bgnbd.per_cutoff(data, 91.3, con)
    kept = con.execute("select cutoff, converged from churn.bgnbd_fits order by cutoff").fetchall()
    assert kept == [(c, True) for c in cutoffs]
    again = bgnbd.per_cutoff(data, 91.3, con)
    pd.testing.assert_frame_equal(fresh, first)
    pd.testing.assert_frame_equal(fresh, again)
    assert con.execute("select count(*) from churn.bgnbd_fits").fetchone()[0] == 2  # reused, not refitted
    # a late-loaded order changes one cutoff's history: that cutoff is fitted again
    changed = data.copy()
    changed.loc[changed["cutoff"] == cutoffs[1], "purchase_days"] += 1
    pd.testing.assert_frame_equal(bgnbd.per_cutoff(changed, 91.3, con), bgnbd.per_cutoff(changed, 91.3))
    assert con.execute("select cutoff, count(*) from churn.bgnbd_fits group by all order by all").fetchall() == [
        (cutoffs[0], 1),
        (cutoffs[1], 2),
    ]
