"""The churn step at scale: the same figures from cheaper computations, and the samples it learns from.

- history's order features, returns and labels (per-day rows joined to the cutoffs, an
  as-of join for the next purchase) equal, to the bit, the straightforward queries that join
  every order line to every cutoff (kept here as the reference); the per-day rows are made
  from the hand-made lines here (`tests.conftest.account_order_days`), and
  tests/test_churn_days.py checks dbt's int_account_order_days against the lines;
- TreeSHAP per decision pattern equals LightGBM's `pred_contrib` on every row;
- the training sample and BG/NBD's fitting sample: whole accounts, a fixed hash order (the
  same accounts whatever else is in the population), nothing sampled below the caps.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from pipelines.churn import bgnbd, history
from pipelines.churn.model import tree_contributions
from pipelines.churn.run import ChurnSettings, account_order, cutoffs_for, predict_at, sample_accounts
from tests.conftest import account_order_days

AS_OF = dt.date(2025, 6, 30)

REFERENCE_ORDER_FEATURES = """
with cutoffs as (select unnest(?::date[]) as cutoff),
lines as (
    -- money stays DECIMAL and discounts become DECIMAL: sums are exact in any thread order,
    -- so the same history gives the same features, and the same model, to the bit
    select account_id, order_id, order_date::date as day, revenue, is_return,
           discount::decimal(18, 6) as discount, category_class
    from intermediate.int_order_lines__priced
),
per_day as (
    select c.cutoff, l.account_id, l.day,
           sum(l.revenue) filter (where not l.is_return) as revenue,
           count(distinct l.order_id) filter (where not l.is_return) as orders,
           count(*) filter (where not l.is_return) as lines,
           count(*) filter (where l.is_return) as returns,
           sum(l.discount) filter (where not l.is_return) as discount_sum,
           count(l.discount) filter (where not l.is_return) as discounted,
           count(*) filter (where not l.is_return and l.category_class = 'premium') as premium_lines,
           count(*) filter (where not l.is_return and l.category_class = 'service') as service_lines
    from lines as l join cutoffs as c on l.day <= c.cutoff and l.day > c.cutoff - interval 24 month
    group by all
),
buying as (
    select *, datediff('day', day, cutoff) as age,
           datediff('day', lag(day) over (partition by cutoff, account_id order by day), day) as gap
    from per_day where orders > 0
)
select cutoff, account_id,
    min(age) as recency_days,
    max(age) as first_purchase_age_days,
    count(*) as purchase_days,
    count(*) filter (where age < 91) as purchase_days_3m,
    count(*) filter (where age >= 91 and age < 182) as purchase_days_prior_3m,
    count(*) filter (where age < 182) as purchase_days_6m,
    count(*) filter (where age < 365) as purchase_days_12m,
    count(distinct date_trunc('month', day)) filter (where age < 365) as active_months_12m,
    sum(orders) as orders,
    sum(revenue)::double as revenue,
    coalesce(sum(revenue) filter (where age < 91), 0)::double as revenue_3m,
    coalesce(sum(revenue) filter (where age >= 91 and age < 182), 0)::double as revenue_prior_3m,
    coalesce(sum(revenue) filter (where age < 365), 0)::double as revenue_12m,
    (sum(revenue) / nullif(sum(orders), 0))::double as order_value,
    sum(lines) / nullif(sum(orders), 0) as lines_per_order,
    avg(gap) as mean_gap_days,
    -- the sample standard deviation from exact integer sums (stddev_samp adds doubles in thread order)
    sqrt((count(gap) * sum(gap * gap) - sum(gap) * sum(gap))::double / nullif(count(gap) * (count(gap) - 1), 0)) as gap_sd_days,
    median(gap) as median_gap_days,
    arg_min(gap, age) as last_gap_days,
    (sum(discount_sum) / nullif(sum(discounted), 0))::double as discount_depth,
    (sum(discount_sum) filter (where age < 91) / nullif(sum(discounted) filter (where age < 91), 0)
      - sum(discount_sum) filter (where age >= 91) / nullif(sum(discounted) filter (where age >= 91), 0))::double as discount_trend,
    sum(premium_lines) / nullif(sum(lines), 0) as premium_share,
    sum(service_lines) / nullif(sum(lines), 0) as service_share
from buying
group by all
"""

REFERENCE_RETURNS = """
with cutoffs as (select unnest(?::date[]) as cutoff)
select c.cutoff, l.account_id,
       count(*) filter (where l.is_return) / count(*) as return_share
from intermediate.int_order_lines__priced as l join cutoffs as c
  on l.order_date::date <= c.cutoff and l.order_date::date > c.cutoff - interval 12 month
group by all
"""

REFERENCE_LABELS = """
with cutoffs as (select unnest(?::date[]) as cutoff),
buying as (
    select distinct account_id, order_date::date as day from intermediate.int_order_lines__priced where not is_return
),
churned as (
    select account_id, min(updated_at::date) as churned_on
    from staging.stg_crm__accounts where status = 'churned' group by all
)
select c.cutoff, b.account_id,
       count(*) filter (where b.day > c.cutoff and b.day <= c.cutoff + to_months(?)) = 0
       or coalesce(bool_or(ch.churned_on > c.cutoff and ch.churned_on <= c.cutoff + to_months(?)), false) as churned
from cutoffs as c
join buying as b on b.day <= c.cutoff + to_months(?)
left join churned as ch on ch.account_id = b.account_id
group by all
having count(*) filter (where b.day <= c.cutoff) > 0
"""


def _lines(seed: int = 5, accounts: int = 300) -> pd.DataFrame:
    """Order lines with several lines a day, returns, discounts (some missing) and classes."""
    rng = np.random.default_rng(seed)
    start = dt.date(2023, 1, 1)
    rows = []
    for i in range(accounts):
        first = int(rng.integers(0, 500))
        stop = int(rng.integers(first + 20, 1000))
        for day in np.sort(rng.choice(np.arange(first, stop), size=int(rng.integers(1, 40)), replace=True)):
            rows.extend(
                (
                    f"a{i:03d}",
                    f"o{i}-{day}-{line % 2}",
                    start + dt.timedelta(days=int(day)),
                    round(float(rng.gamma(2, 50)), 2),
                    bool(rng.random() < 0.08),
                    None if rng.random() < 0.2 else round(float(rng.uniform(0, 0.3)), 4),
                    rng.choice(["premium", "service", "standard"]),
                )
                for line in range(int(rng.integers(1, 4)))
            )
    return pd.DataFrame(rows, columns=["account_id", "order_id", "order_date", "revenue", "is_return", "discount", "category_class"])


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    lines = _lines()
    con = duckdb.connect()
    con.register("o", lines)
    con.execute("create schema intermediate; create schema staging")
    con.execute(
        """create table intermediate.int_order_lines__priced as
        select order_id, account_id, order_date, revenue::decimal(38, 6) as revenue, is_return,
               discount::decimal(18, 9) as discount, category_class from o"""
    )
    account_order_days(con)
    # a tenth of the accounts are marked churned in the CRM on a date of their own
    con.execute(
        """create table staging.stg_crm__accounts as
        select account_id, 'customer' as status, min(order_date) as customer_since, min(order_date) as updated_at, now() as loaded_at
        from o group by all
        union all
        select account_id, 'churned', min(order_date), max(order_date) + interval 20 day, now()
        from o where hash(account_id) % 10 = 0 group by all"""
    )
    return con


def test_order_features_and_labels_equal_the_line_by_cutoff_queries(con):
    cutoffs = cutoffs_for(AS_OF, [dt.date(2024, 12, 31)], ChurnSettings(training_cutoffs=8))
    key = ["cutoff", "account_id"]
    for new, old in ((history.ORDER_FEATURES, REFERENCE_ORDER_FEATURES), (history.RETURNS, REFERENCE_RETURNS)):
        got = con.execute(new, [cutoffs, [True] * len(cutoffs), []]).df().sort_values(key, ignore_index=True)
        want = con.execute(old, [cutoffs]).df().sort_values(key, ignore_index=True)
        assert len(got) > 1000
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    closed = [c for c in cutoffs if history.window_closed(c, AS_OF, 3)]
    got = history.labels(con, cutoffs, AS_OF, 3).sort_values(key, ignore_index=True)
    want = con.execute(REFERENCE_LABELS, [closed, 3, 3, 3]).df()
    want["churned"] = want["churned"].astype(bool)
    want["cutoff"] = pd.to_datetime(want["cutoff"]).dt.date
    want = want.sort_values(key, ignore_index=True)
    assert 0 < got["churned"].sum() < len(got)
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_a_sampled_run_reads_the_same_figures_for_its_sample(con):
    """Cutoffs only learnt from hold the training sample; every side query (CRM records,
    returns, tickets) is limited the same way, and the sample's figures do not change."""
    con.execute(
        """create or replace table staging.stg_crm__support_tickets as
        select account_id, order_date as opened_at, if(hash(order_id) % 5 = 0, 'critical', 'normal') as priority,
               if(hash(order_id) % 3 = 0, 'price', 'delivery') as category
        from intermediate.int_order_lines__priced where is_return"""
    )
    try:
        cutoffs = cutoffs_for(AS_OF, [dt.date(2024, 12, 31)], ChurnSettings(training_cutoffs=8))
        scored = {max(cutoffs)}
        sample = history.training_sample(con, max(cutoffs), len(cutoffs), 400)
        assert sample is not None and 0 < len(sample) < 100
        whole = history.features(con, cutoffs)
        sampled = history.features(con, cutoffs, sample, scored)
        full = [c in scored for c in cutoffs]
        for sql, table in (
            (history.TICKETS, ("staging", "stg_crm__support_tickets")),
            (history.RETURNS, ("intermediate", "int_account_order_days")),
        ):
            read = history._frame(con, sql, cutoffs, full, sample, table).reset_index()
            learnt = pd.to_datetime(read["cutoff"]).ne(pd.Timestamp(max(cutoffs)))
            assert learnt.any() and set(read.loc[learnt, "account_id"]) <= set(sample)  # not every account, to be dropped
    finally:
        con.execute("drop table staging.stg_crm__support_tickets")
    learnt_only = sampled["cutoff"].ne(max(cutoffs))
    assert set(sampled.loc[learnt_only, "account_id"]) <= set(sample)
    assert sampled.loc[~learnt_only, "account_id"].nunique() == whole.loc[whole["cutoff"].eq(max(cutoffs)), "account_id"].nunique()
    assert sampled["tickets_12m"].notna().any() and sampled["return_share"].notna().any()
    keep = whole["cutoff"].eq(max(cutoffs)) | whole["account_id"].isin(sample)
    columns = [c for c in whole.columns if c != "value_percentile"]  # ranks among the cutoff's sample
    pd.testing.assert_frame_equal(sampled[columns], whole.loc[keep, columns].reset_index(drop=True), check_exact=True)


def _model(rows: int = 3000, seed: int = 1) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 6))
    X[rng.random(size=X.shape) < 0.15] = np.nan  # missing values take the split's default side
    X[:, 2] = np.where(rng.random(rows) < 0.3, 0.0, X[:, 2])
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) * 0.5 + rng.normal(size=rows) > 0.3).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 20, "verbose": -1, "num_threads": 1, "seed": 3}
    return lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=40), X


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_contributions_per_decision_pattern_equal_lightgbms_on_every_row(zero_as_missing):
    booster, X = _model()
    if zero_as_missing:
        params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 1, "zero_as_missing": True}
        booster = lgb.train(params, lgb.Dataset(X, label=(np.nan_to_num(X[:, 2]) > 0).astype(int)), num_boost_round=20)
    fast = tree_contributions(booster, X)
    assert np.allclose(fast, booster.predict(X, pred_contrib=True), rtol=0, atol=1e-12)
    assert np.allclose(fast.sum(axis=1), booster.predict(X, raw_score=True), atol=1e-12)


def test_a_wrongly_read_split_falls_back_to_lightgbm(monkeypatch):
    from pipelines.churn import model

    booster, X = _model()
    monkeypatch.setattr(model, "_goes_left", lambda split, X: np.ones(len(X), dtype=bool))
    assert np.array_equal(model.tree_contributions(booster, X), booster.predict(X, pred_contrib=True))


def test_the_training_sample_is_whole_accounts_in_a_fixed_order():
    frame = pd.DataFrame({"account_id": [f"a{i % 500}" for i in range(3000)], "x": np.arange(3000)})
    assert sample_accounts(frame, 3000) is frame
    sample = sample_accounts(frame, 1000)
    assert 990 <= len(sample) <= 1000 and sample["x"].is_monotonic_increasing
    assert frame[frame["account_id"].isin(sample["account_id"])].equals(sample)  # every row of a chosen account
    # the same accounts whatever else is in the population: a chosen account stays chosen
    more = pd.concat([frame, pd.DataFrame({"account_id": [f"b{i}" for i in range(500)], "x": -1})], ignore_index=True)
    again = sample_accounts(more, 1000)
    assert set(again["account_id"]) - set(sample["account_id"]) <= {f"b{i}" for i in range(500)}
    assert set(sample["account_id"]) - set(again["account_id"]) <= set(frame["account_id"])
    order = account_order(pd.Series(["a1", "a2"]))
    assert np.array_equal(order, account_order(pd.Series(["a1", "a2"])))


def test_the_model_learns_from_at_most_max_training_rows_and_bgnbd_fits_on_its_sample(con):
    settings = ChurnSettings(training_cutoffs=8, min_training_rows=100, min_training_positives=10)
    cutoffs = cutoffs_for(AS_OF, [], settings)
    data = history.features(con, cutoffs)
    data[["bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_no_purchase"]] = bgnbd.per_cutoff(data, 91.3)
    data = data.merge(history.labels(con, cutoffs, AS_OF, 3), on=["cutoff", "account_id"], how="left")
    full = predict_at(data, AS_OF, settings)
    capped = predict_at(data, AS_OF, ChurnSettings(**{**settings.__dict__, "max_training_rows": 600}))
    assert full.training_rows > 600 >= capped.training_rows > 500
    # below the cap nothing changes; above it, BG/NBD's parameters come from its sample
    now = data[data["cutoff"] == AS_OF]
    pd.testing.assert_frame_equal(bgnbd.fit_predict(now, 91.3, max_accounts=len(now)), bgnbd.fit_predict(now, 91.3))
    sampled = bgnbd.fit_predict(now, 91.3, max_accounts=100)
    assert sampled["bgnbd_p_alive"].notna().all() and not sampled.equals(bgnbd.fit_predict(now, 91.3))
    first = bgnbd._fit_sample(now, 100)
    assert len(first) == 100 and set(first["account_id"]) <= set(now["account_id"])


def test_cutoffs_only_learnt_from_hold_the_training_sample_when_the_population_is_over_the_cap(con):
    from pipelines.churn.run import load

    settings = ChurnSettings(training_cutoffs=6, min_training_rows=100, min_training_positives=10)
    full = load(con, AS_OF, [], settings, None)
    assert full["training_sample"].all()  # under the cap: everything, as before
    small = ChurnSettings(**{**settings.__dict__, "max_training_rows": 600})
    sampled = load(con, AS_OF, [], small, None)
    now = sampled["cutoff"] == AS_OF
    # the run's own date is scored for every account, with the same figures
    columns = [c for c in full.columns if c not in ("bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_no_purchase", "training_sample")]
    pd.testing.assert_frame_equal(
        sampled.loc[now, columns].reset_index(drop=True), full.loc[full["cutoff"] == AS_OF, columns].reset_index(drop=True)
    )
    learnt = sampled[~now]
    assert learnt["training_sample"].all() and learnt["account_id"].nunique() <= 600 // 6
    assert set(learnt["account_id"]) < set(full.loc[full["cutoff"] != AS_OF, "account_id"])
    # the figures of a sampled account are its own (the percentile aside: among the sample)
    keep = ["cutoff", "account_id", "recency_days", "revenue_12m", "median_gap_days", "churned"]
    merged = learnt[keep].merge(full[keep], on=["cutoff", "account_id"], suffixes=("", "_all"))
    assert len(merged) == len(learnt)
    for column in keep[2:]:
        pd.testing.assert_series_equal(merged[column], merged[f"{column}_all"], check_names=False)
    assert predict_at(sampled, AS_OF, small).training_rows <= 600


def test_order_features_read_per_chunk_of_accounts_equal_one_query(con, monkeypatch):
    """At 1M accounts the cutoffs that hold every account are read per chunk of accounts
    (bounded memory): the same rows as one query, with and without a training sample."""
    cutoffs = cutoffs_for(AS_OF, [dt.date(2024, 12, 31)], ChurnSettings(training_cutoffs=8))
    scored = {max(cutoffs), dt.date(2024, 12, 31)}
    sample = history.training_sample(con, max(cutoffs), len(cutoffs), 400)
    key = ["cutoff", "account_id"]
    whole = history.features(con, cutoffs)
    sampled = history.features(con, cutoffs, sample, scored)
    monkeypatch.setattr(history, "ORDER_FEATURES_CHUNK", 7)
    assert whole["account_id"].nunique() > 3 * 7
    pd.testing.assert_frame_equal(
        history.features(con, cutoffs).sort_values(key, ignore_index=True), whole.sort_values(key, ignore_index=True)
    )
    pd.testing.assert_frame_equal(
        history.features(con, cutoffs, sample, scored).sort_values(key, ignore_index=True), sampled.sort_values(key, ignore_index=True)
    )
