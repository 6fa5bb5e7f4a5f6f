"""Point-in-time churn features and labels, from the company's own history (DuckDB SQL).

Every figure of an account at a cutoff is computed from what was known on that date only:
order lines dated on or before it, read per account and day from
`intermediate.int_account_order_days` (the features build keeps it incrementally: the
priced lines of each day added up, in the reporting currency), tickets opened, quotes created and survey
answers submitted by then, and the drift step's stored row for a run on that date (drift
strength, migrations, segment). The label of an account at a cutoff is what happened in
the `horizon_months` after it: no order at all (lapsed), or a CRM record marking it
churned. A label is *closed* only when the whole window lies on or before the run's as-of
date; training and the backtest read closed labels only (see `labels`).
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd

ORDER_FEATURES = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id),
buying_days as materialized (
    -- one row per account and day with a purchase (intermediate.int_account_order_days, kept
    -- by the features build): what a cutoff reads of a day does not depend on the cutoff (the
    -- whole day is in its window or none of it), so the cutoffs add up days, not order lines
    select account_id, order_day as day, purchase_revenue as revenue, purchase_orders as orders,
           purchase_lines as lines, discount_sum, discounted_lines as discounted, premium_lines, service_lines,
           lag(order_day) over (partition by account_id order by order_day) as previous_day
    from intermediate.int_account_order_days
    where purchase_orders > 0
      and order_day <= (select max(cutoff) from cutoffs)
      and order_day > (select min(cutoff) from cutoffs) - interval 24 month
      -- with no cutoff for every account, the sample's days only (a chunk of accounts: `features`)
      and (coalesce((select bool_or(every_account) from cutoffs), false) or account_id in (select account_id from sample))
),
sampled_days as materialized (
    -- the sampled accounts' days, kept apart before the range join: otherwise DuckDB joins
    -- every account's days to every training cutoff and drops the others afterwards (at 100k
    -- accounts 38M joined rows for 3M kept: half the query's time)
    select * from buying_days where account_id in (select account_id from sample)
),
in_window as (
    -- a training-only cutoff of a sampled run reads the sampled accounts only (see `features`)
    select c.cutoff, b.* from buying_days as b
    join cutoffs as c on b.day <= c.cutoff and b.day > c.cutoff - interval 24 month
    where c.every_account
    union all
    select c.cutoff, b.* from sampled_days as b
    join cutoffs as c on b.day <= c.cutoff and b.day > c.cutoff - interval 24 month
    where not c.every_account
),
buying as (
    -- a cutoff's gaps are between its window's purchase days: the first day in the window
    -- has none (its previous purchase day, if any, is before the window)
    select *, datediff('day', day, cutoff) as age,
           case when previous_day > cutoff - interval 24 month then datediff('day', previous_day, day) end as gap
    from in_window
)
select cutoff, account_id,
    min(age) as recency_days,
    max(age) as first_purchase_age_days,
    count(*) as purchase_days,
    count(*) filter (where age < 91) as purchase_days_3m,
    count(*) filter (where age >= 91 and age < 182) as purchase_days_prior_3m,
    count(*) filter (where age < 182) as purchase_days_6m,
    count(*) filter (where age < 365) as purchase_days_12m,
    -- months with a purchase day in the last 365 days, without a distinct count: a month counts
    -- once, on its first purchase day in that window (the day before it is in another month or
    -- older than the window)
    count(*) filter (where age < 365 and (previous_day is null or date_trunc('month', previous_day) <> date_trunc('month', day)
                                          or datediff('day', previous_day, cutoff) >= 365)) as active_months_12m,
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

RETURNS = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id)
select c.cutoff, d.account_id, sum(d.return_lines) / sum(d.lines) as return_share
from intermediate.int_account_order_days as d join cutoffs as c on d.order_day <= c.cutoff and d.order_day > c.cutoff - interval 12 month
  and (c.every_account or d.account_id in (select account_id from sample))
group by all
"""

TICKETS = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id)
select c.cutoff, t.account_id,
       count(*) filter (where t.opened_at::date > c.cutoff - interval 12 month) as tickets_12m,
       count(*) filter (where t.opened_at::date > c.cutoff - interval 3 month) as tickets_3m,
       count(*) filter (where t.priority = 'critical' and t.opened_at::date > c.cutoff - interval 12 month) as critical_tickets_12m,
       count(*) filter (where t.category = 'price' and t.opened_at::date > c.cutoff - interval 12 month) as price_tickets_12m
from staging.stg_crm__support_tickets as t join cutoffs as c
  on t.opened_at::date <= c.cutoff and t.opened_at::date > c.cutoff - interval 12 month and (c.every_account or t.account_id in (select account_id from sample))
group by all
"""

QUOTES = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id)
select c.cutoff, q.account_id,
       count(*) filter (where q.status in ('won', 'lost')) as quotes_decided_12m,
       count(*) filter (where q.status = 'lost' and q.loss_reason = 'price')
         / nullif(count(*) filter (where q.status in ('won', 'lost')), 0) as lost_on_price_share_12m
from staging.stg_crm__quotes as q join cutoffs as c
  on q.created_at::date <= c.cutoff and q.created_at::date > c.cutoff - interval 12 month and (c.every_account or q.account_id in (select account_id from sample))
group by all
"""

SURVEY = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id),
waves as (
    select c.cutoff, s.account_id, s.wave, max(s.submitted_at) as submitted_at,
           avg(s.satisfaction::decimal(18, 6))::double as satisfaction, avg(s.nps::decimal(18, 6))::double as nps
    from staging.stg_survey__survey_responses as s join cutoffs as c on s.submitted_at::date <= c.cutoff and (c.every_account or s.account_id in (select account_id from sample))
    group by all
),
ranked as (
    select *, row_number() over (partition by cutoff, account_id order by submitted_at desc, wave desc) as n
    from waves
)
select cutoff, account_id,
       max(satisfaction) filter (where n = 1) as satisfaction,
       max(nps) filter (where n = 1) as nps,
       max(satisfaction) filter (where n = 1) - max(satisfaction) filter (where n = 2) as satisfaction_change
from ranked where n <= 2
group by all
"""

# Accounts known as customers at the cutoff: the latest CRM record on or before it.
ACCOUNTS = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id),
records as (
    select c.cutoff, a.account_id, a.status, a.customer_since, a.updated_at
    from staging.stg_crm__accounts as a join cutoffs as c on coalesce(a.updated_at::date, c.cutoff) <= c.cutoff and (c.every_account or a.account_id in (select account_id from sample))
    qualify row_number() over (partition by c.cutoff, a.account_id order by a.updated_at desc nulls last, a.loaded_at desc) = 1
)
select cutoff, account_id, status, datediff('day', customer_since::date, cutoff) as tenure_days
from records
"""

# The drift step's row for a run on the cutoff date, and the migrations before it.
DRIFT = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id),
migrations as (
    select c.cutoff, m.account_id, count(*) as migrations_6m
    from drift.customer_drift as m join cutoffs as c
      on m.migrated and m.as_of <= c.cutoff and m.as_of > c.cutoff - interval 6 month and (c.every_account or m.account_id in (select account_id from sample))
    group by all
)
select c.cutoff, d.account_id, d.segment_id, d.drift_z, d.drift_shift,
       d.early_warning::int as early_warning, d.drift_flag::int as drift_flag,
       d.migration_confirmed::int as migration_confirmed, coalesce(m.migrations_6m, 0) as migrations_6m
from drift.customer_drift as d join cutoffs as c on d.as_of = c.cutoff and (c.every_account or d.account_id in (select account_id from sample))
left join migrations as m on m.cutoff = c.cutoff and m.account_id = d.account_id
"""

LABELS = """
with cutoffs as (select unnest(?::date[]) as cutoff, unnest(?::boolean[]) as every_account),
sample as (select unnest(?::varchar[]) as account_id),
buying as (
    -- the days with a purchase up to the last outcome window's end: a later one cannot be the
    -- first purchase inside a window
    select account_id, order_day as day from intermediate.int_account_order_days
    where purchase_lines > 0 and order_day <= (select max(cutoff) from cutoffs) + to_months(?)
),
known as (
    -- the accounts that had bought by each cutoff (a cutoff only learnt from: the sample's)
    select c.cutoff, f.account_id
    from (select account_id, min(day) as first_day from buying group by all) as f
    join cutoffs as c on f.first_day <= c.cutoff
    where c.every_account or f.account_id in (select account_id from sample)
),
churned as (
    select account_id, min(updated_at::date) as churned_on
    from staging.stg_crm__accounts where status = 'churned' group by all
)
-- the first purchase day after the cutoff (an as-of join, not every day against every cutoff)
select k.cutoff, k.account_id,
       coalesce(n.day > k.cutoff + to_months(?), true)
       or coalesce(ch.churned_on > k.cutoff and ch.churned_on <= k.cutoff + to_months(?), false) as churned
from known as k
asof left join buying as n on n.account_id = k.account_id and n.day > k.cutoff
left join churned as ch on ch.account_id = k.account_id
"""


def _exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        con.execute("select count(*) from information_schema.tables where table_schema = ? and table_name = ?", [schema, table]).fetchone()[
            0
        ]
    )


def _frame(
    con: duckdb.DuckDBPyConnection, sql: str, cutoffs: list[dt.date], full: list[bool], sample: list[str], table: tuple[str, str]
) -> pd.DataFrame | None:
    """One of the side queries, its rows limited like the order features: every account at a
    cutoff in `full`, the `sample` at the others (the rest would be dropped by the join)."""
    if not _exists(con, *table):
        return None
    frame = con.execute(sql, [cutoffs, full, sample]).df()
    return frame.set_index(["cutoff", "account_id"]) if len(frame) else None


def training_sample(con: duckdb.DuckDBPyConnection, last_cutoff: dt.date, cutoffs: int, max_rows: int) -> list[str] | None:
    """The accounts a model learns from when every account's history would not fit in
    `max_rows` (`cutoffs` rows each): the first `max_rows // cutoffs` of the accounts that had
    bought by `last_cutoff`, in the fixed hash order of their ids; None when all fit."""
    from pipelines.churn.run import account_order

    buyers = con.execute(
        "select distinct account_id from intermediate.int_account_order_days where purchase_lines > 0 and order_day <= ?", [last_cutoff]
    ).df()["account_id"]
    if len(buyers) * cutoffs <= max_rows:
        return None
    order = np.argsort(account_order(buyers), kind="stable")[: max(max_rows // cutoffs, 1)]
    return sorted(buyers.iloc[order].astype(str))


def window_closed(cutoff: dt.date, as_of: dt.date, horizon_months: int) -> bool:
    """True when the whole outcome window (cutoff, cutoff + horizon] lies on or before `as_of`."""
    return (pd.Timestamp(cutoff) + pd.DateOffset(months=horizon_months)).date() <= as_of


# Accounts whose order features one query computes at the cutoffs that hold every account:
# the per-account gaps' median is held in memory whole, and at 1M accounts one query ran out
# of DuckDB's 1 GB limit.
ORDER_FEATURES_CHUNK = 200_000


def _order_features(con: duckdb.DuckDBPyConnection, cutoffs: list[dt.date], full: list[bool], sample: list[str] | None) -> pd.DataFrame:
    """ORDER_FEATURES, in one query for up to ORDER_FEATURES_CHUNK accounts; beyond, the
    cutoffs that hold every account are read per chunk of accounts (as if each chunk were
    their sample) and the others once with the training sample. An account's figures read
    its own days only, so the chunks give the rows of one query."""
    everyone = [c for c, f in zip(cutoffs, full, strict=True) if f]
    accounts = (
        con.execute(
            "select distinct account_id from intermediate.int_account_order_days "
            "where purchase_orders > 0 and order_day <= ? order by account_id",
            [max(everyone)],
        ).df()["account_id"]
        if everyone
        else pd.Series(dtype=object)
    )
    if len(accounts) <= ORDER_FEATURES_CHUNK:
        return con.execute(ORDER_FEATURES, [cutoffs, full, sample or []]).df()
    parts = [
        con.execute(
            ORDER_FEATURES, [everyone, [False] * len(everyone), accounts.iloc[start : start + ORDER_FEATURES_CHUNK].astype(str).tolist()]
        ).df()
        for start in range(0, len(accounts), ORDER_FEATURES_CHUNK)
    ]
    learnt = [c for c, f in zip(cutoffs, full, strict=True) if not f]
    if learnt:
        parts.append(con.execute(ORDER_FEATURES, [learnt, [False] * len(learnt), sample or []]).df())
    return pd.concat(parts, ignore_index=True)


def features(
    con: duckdb.DuckDBPyConnection, cutoffs: list[dt.date], sample: list[str] | None = None, every_account: set[dt.date] = frozenset()
) -> pd.DataFrame:
    """One row per (cutoff, account) that bought on or before the cutoff and is a customer then.

    With a `sample` of accounts, cutoffs not in `every_account` (those only learnt from) hold
    the sampled accounts only: their figures are the same, except `value_percentile`, which
    ranks an account among the cutoff's sampled customers instead of all of them.
    """
    cutoffs = sorted(set(cutoffs))
    full = [sample is None or c in every_account for c in cutoffs]
    frame = _order_features(con, cutoffs, full, sample).set_index(["cutoff", "account_id"])
    accounts = _frame(con, ACCOUNTS, cutoffs, full, sample or [], ("staging", "stg_crm__accounts"))
    if accounts is not None:
        frame = frame.join(accounts, how="left")
        frame = frame[frame["status"].fillna("customer").eq("customer")].drop(columns="status")
    for sql, table in (
        (RETURNS, ("intermediate", "int_account_order_days")),
        (TICKETS, ("staging", "stg_crm__support_tickets")),
        (QUOTES, ("staging", "stg_crm__quotes")),
        (SURVEY, ("staging", "stg_survey__survey_responses")),
        (DRIFT, ("drift", "customer_drift")),
    ):
        part = _frame(con, sql, cutoffs, full, sample or [], table)
        if part is not None:
            frame = frame.join(part, how="left")
    # a fixed row order: DuckDB returns rows in any order, and the model's bagging and folds follow it
    return _derived(frame.reset_index()).sort_values(["cutoff", "account_id"], ignore_index=True)


def _derived(frame: pd.DataFrame) -> pd.DataFrame:
    """Ratios that describe the account against its own rhythm and its peers."""
    f = frame
    f["cutoff"] = pd.to_datetime(f["cutoff"]).dt.date
    rhythm = f["mean_gap_days"].where(f["purchase_days"] > 1)
    f["overdue_ratio"] = f["recency_days"] / rhythm
    f["recency_vs_last_gap"] = f["recency_days"] / f["last_gap_days"]
    f["revenue_trend"] = (f["revenue_3m"] - f["revenue_prior_3m"]) / (f["revenue_3m"] + f["revenue_prior_3m"]).replace(0, np.nan)
    f["purchase_days_trend"] = f["purchase_days_3m"] - f["purchase_days_prior_3m"]
    observed_months = np.clip(f["first_purchase_age_days"] / 30.44, 1, 12)
    f["purchase_rate_12m"] = f["purchase_days_12m"] / observed_months
    # value tier: the account's revenue percentile among the customers at that cutoff
    f["value_percentile"] = f.groupby("cutoff")["revenue_12m"].rank(pct=True)
    if "tenure_days" not in f:
        f["tenure_days"] = f["first_purchase_age_days"]
    f["tenure_days"] = f["tenure_days"].fillna(f["first_purchase_age_days"])
    return f


def labels(
    con: duckdb.DuckDBPyConnection,
    cutoffs: list[dt.date],
    as_of: dt.date,
    horizon_months: int,
    sample: list[str] | None = None,
    every_account: set[dt.date] = frozenset(),
) -> pd.DataFrame:
    """The outcome of every account that had bought by each cutoff whose window has closed by `as_of`
    (with a `sample`, only its accounts at cutoffs not in `every_account`, as in `features`).

    A cutoff whose window (cutoff, cutoff + horizon] is not over on `as_of` gets no labels at
    all: an account that has not ordered *yet* has not lapsed, and reading it as lapsed
    would teach the model the future.
    """
    closed = [c for c in sorted(set(cutoffs)) if window_closed(c, as_of, horizon_months)]
    if not closed:
        return pd.DataFrame(columns=["cutoff", "account_id", "churned"])
    full = [sample is None or c in every_account for c in closed]
    frame = con.execute(LABELS, [closed, full, sample or [], horizon_months, horizon_months, horizon_months]).df()
    frame["churned"] = frame["churned"].astype(bool)
    frame["cutoff"] = pd.to_datetime(frame["cutoff"]).dt.date
    return frame
