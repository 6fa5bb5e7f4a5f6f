"""The churn history reads days, not order lines: `intermediate.int_account_order_days`, kept
incrementally by the features build, gives the order features, return shares, labels and
training sample of the per-line queries it replaced (kept here as the reference), to the
bit, on a generated world built by dbt:

- after a first build (as of 2026-09-30), for every account and for a training sample;
- after the next month built incrementally, with order lines re-sent into older months (one
  turned into a return, one moved to another month) - and the table then equals a
  `--full-refresh` of it;
- as of a date that is not a month end (the table holds every day; a cutoff picks its own).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import pandas as pd
import pytest

from pipelines import cycle, transform
from pipelines.churn import history
from pipelines.churn.run import ChurnSettings, cutoffs_for
from pipelines.config import load_config
from pipelines.demo.world import WorldSpec, deliver, generate
from pipelines.settings import load_settings
from pipelines.warehouse import open_warehouse

# The queries of the churn history before the per-day table: every order line grouped per
# order and day, per run (pipelines/churn/history.py until 2026-12-07).
REFERENCE_ORDER_FEATURES = history.ORDER_FEATURES.split("buying_days as materialized (")[0] + (
    """per_order as (
    select account_id, order_date::date as day, order_id,
           sum(revenue) filter (where not is_return) as revenue,
           count(*) filter (where not is_return) as lines,
           sum(discount::decimal(18, 6)) filter (where not is_return) as discount_sum,
           count(discount) filter (where not is_return) as discounted,
           count(*) filter (where not is_return and category_class = 'premium') as premium_lines,
           count(*) filter (where not is_return and category_class = 'service') as service_lines
    from intermediate.int_order_lines__priced
    where order_date::date <= (select max(cutoff) from cutoffs)
      and order_date::date > (select min(cutoff) from cutoffs) - interval 24 month
    group by all
),
per_day as (
    select account_id, day, sum(revenue) as revenue, count(*) filter (where lines > 0) as orders, sum(lines) as lines,
           sum(discount_sum) as discount_sum, sum(discounted) as discounted,
           sum(premium_lines) as premium_lines, sum(service_lines) as service_lines
    from per_order
    group by all
),
buying_days as materialized (
    select *, lag(day) over (partition by account_id order by day) as previous_day
    from per_day where orders > 0
),
sampled_days as materialized ("""
    + history.ORDER_FEATURES.split("sampled_days as materialized (", 1)[1]
)
# ... and the months of the last 365 days with a purchase by a distinct count
ACTIVE_MONTHS = re.compile(r"count\(\*\) filter \(where age < 365 and \(previous_day is null.*?as active_months_12m,", re.S)
assert ACTIVE_MONTHS.search(REFERENCE_ORDER_FEATURES)
REFERENCE_ORDER_FEATURES = ACTIVE_MONTHS.sub(
    "count(distinct date_trunc('month', day)) filter (where age < 365) as active_months_12m,", REFERENCE_ORDER_FEATURES
)

REFERENCE_RETURNS = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id),
per_day as (
    select account_id, order_date::date as day, count(*) filter (where is_return) as returns, count(*) as lines
    from intermediate.int_order_lines__priced
    where order_date::date <= (select max(cutoff) from cutoffs)
      and order_date::date > (select min(cutoff) from cutoffs) - interval 12 month
    group by all
)
select c.cutoff, l.account_id, sum(l.returns) / sum(l.lines) as return_share
from per_day as l join cutoffs as c on l.day <= c.cutoff and l.day > c.cutoff - interval 12 month
  and (c.every_account or l.account_id in (select account_id from sample))
group by all
"""

REFERENCE_LABELS = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id),
buying as (
    select distinct account_id, order_date::date as day from intermediate.int_order_lines__priced where not is_return
),
known as (
    select c.cutoff, f.account_id
    from (select account_id, min(day) as first_day from buying group by all) as f
    join cutoffs as c on f.first_day <= c.cutoff
    where c.every_account or f.account_id in (select account_id from sample)
),
churned as (
    select account_id, min(updated_at::date) as churned_on
    from staging.stg_crm__accounts where status = 'churned' group by all
)
select k.cutoff, k.account_id,
       coalesce(n.day > k.cutoff + to_months(?), true)
       or coalesce(ch.churned_on > k.cutoff and ch.churned_on <= k.cutoff + to_months(?), false) as churned
from known as k
asof left join buying as n on n.account_id = k.account_id and n.day > k.cutoff
left join churned as ch on ch.account_id = k.account_id
"""

REFERENCE_BUYERS = "select distinct account_id from intermediate.int_order_lines__priced where not is_return and order_date::date <= ?"

SETTINGS = ChurnSettings()
KEY = ["cutoff", "account_id"]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEY, ignore_index=True)


def _assert_history_equals_the_line_queries(con, as_of: dt.date) -> None:
    earlier = [dt.date(2026, 3, 31), dt.date(2026, 6, 30)]
    cutoffs = cutoffs_for(as_of, earlier, SETTINGS)
    scored = {as_of, *earlier}
    learnt = [c for c in cutoffs if c not in scored]
    # the training sample, from days and from lines (a cap small enough to sample)
    sample = history.training_sample(con, max(learnt), len(learnt), 1200)
    buyers = con.execute(REFERENCE_BUYERS, [max(learnt)]).df()["account_id"]
    assert sample is not None and 0 < len(sample) < len(buyers)
    assert set(
        con.execute(
            "select distinct account_id from intermediate.int_account_order_days where purchase_lines > 0 and order_day <= ?", [max(learnt)]
        ).df()["account_id"]
    ) == set(buyers)
    for chosen in (None, sample):
        full = [chosen is None or c in scored for c in cutoffs]
        params = [cutoffs, full, chosen or []]
        for new, old in ((history.ORDER_FEATURES, REFERENCE_ORDER_FEATURES), (history.RETURNS, REFERENCE_RETURNS)):
            got, want = _sorted(con.execute(new, params).df()), _sorted(con.execute(old, params).df())
            assert len(got) > 1000
            pd.testing.assert_frame_equal(got, want, check_exact=True)
        closed = [c for c in cutoffs if history.window_closed(c, as_of, SETTINGS.horizon_months)]
        got = _sorted(history.labels(con, cutoffs, as_of, SETTINGS.horizon_months, chosen, scored))
        h = SETTINGS.horizon_months
        want = con.execute(REFERENCE_LABELS, [closed, [chosen is None or c in scored for c in closed], chosen or [], h, h]).df()
        want["churned"] = want["churned"].astype(bool)
        want["cutoff"] = pd.to_datetime(want["cutoff"]).dt.date
        assert 0 < got["churned"].sum() < len(got)
        pd.testing.assert_frame_equal(got, _sorted(want), check_exact=True)


def _resend(landing: Path) -> list[str]:
    """A later extract re-sending two old lines: one now a return (the same month), one
    dated into the next month (leaving its month)."""
    folder = landing / "crm" / "order_lines"
    with open(folder / "order_lines_2026-07.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    purchases = [r for r in rows if int(r["quantity"]) > 0]
    returned, moved = dict(purchases[0]), dict(purchases[-1])
    returned["quantity"] = str(-int(returned["quantity"]))
    moved["order_date"] = "2026-08-14"
    with open(folder / "order_lines_2026-10-resent.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([returned, moved])
    return [returned["order_id"], moved["order_id"]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("churn-days")
    generate(root / "world", WorldSpec(seed=11, customers=300, prospects=10, start_month="2025-01", end_month="2026-10"))
    settings = load_settings(root / "data")
    return root / "world", settings, load_config(settings.config_path)


def test_the_churn_history_from_days_equals_the_line_queries_first_build_next_month_and_resent_lines(world):
    world_dir, settings, config = world
    deliver(world_dir, settings.landing_dir, "2026-09")
    as_of = dt.date(2026, 9, 30)
    cycle.ingest_step(as_of, settings)
    cycle.features_step(as_of, settings, run_tests=False)
    with open_warehouse(settings.warehouse_path) as con:
        _assert_history_equals_the_line_queries(con, as_of)
        classes = con.execute("select distinct premium_service from intermediate.int_account_order_days").fetchall()

    # the next month, with two lines of July re-sent: the build recomputes what changed
    deliver(world_dir, settings.landing_dir, "2026-10")
    resent = _resend(settings.landing_dir)
    as_of = dt.date(2026, 10, 31)
    cycle.ingest_step(as_of, settings)
    cycle.features_step(as_of, settings, run_tests=False)
    with open_warehouse(settings.warehouse_path) as con:
        con.execute("create table kept as select * from intermediate.int_account_order_days")
        # the same classes and rates: the build recomputed the changed months only
        assert con.execute("select distinct premium_service from kept").fetchall() == classes
        moved = con.execute(
            "select order_date from staging.stg_crm__order_lines where order_id = ? order by loaded_at desc limit 1", [resent[1]]
        ).fetchone()[0]
        assert moved == dt.date(2026, 8, 14)
        _assert_history_equals_the_line_queries(con, as_of)

    # incremental equals a rebuild from every line
    transform.build(settings, config, as_of, "int_account_order_days", command="run", flags=("--full-refresh",))
    with open_warehouse(settings.warehouse_path) as con:
        for a, b in (("kept", "intermediate.int_account_order_days"), ("intermediate.int_account_order_days", "kept")):
            assert con.execute(f"select count(*) from (select * from {a} except all select * from {b})").fetchone()[0] == 0
        assert con.execute("select count(*) from kept").fetchone()[0] > 1000

    # a date that is not a month end: the table is not tied to it, the cutoffs pick their days
    as_of = dt.date(2026, 10, 15)
    cycle.features_step(as_of, settings, run_tests=False)
    with open_warehouse(settings.warehouse_path) as con:
        _assert_history_equals_the_line_queries(con, as_of)
