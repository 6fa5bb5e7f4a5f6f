"""How far an account's buying mix has moved lately, against its own past, with standard errors.

For every account the recent window (default the last 6 months) is compared with the 12
months before it, component by component, using pooled counts so an account that bought
two order lines last month gets a small z and one that bought two hundred a large one:

- discount: mean line discount, a two-sample z with the account's own line-level spread
  (floored, so an account that always got exactly 5 % is not infinitely sure);
- list_price / premium / service: share of order lines, two-proportion z;
- lost_on_price: share of decided quotes lost on price, two-proportion z;
- price_tickets / critical_tickets: share of tickets, two-proportion z;
- ordering_months: share of months with at least one order - the regularity that marks a
  partnership (a customer that orders every month vs one that comes and goes).

Volumes (orders, revenue) are deliberately not components: an account that buys less has
not changed what it needs, and falling revenue is weighed separately, in the churn risk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# component -> (customer_features column describing the same behaviour over 12 months,
#               label for evidence, how to show the rates)
COMPONENTS: dict[str, tuple[str, str, str]] = {
    "discount": ("discount_depth_12m", "average discount", "pct"),
    "list_price": ("list_price_share_12m", "lines bought at list price", "pct"),
    "premium": ("premium_share_12m", "premium-category lines", "pct"),
    "service": ("service_revenue_share_12m", "service lines", "pct"),
    "lost_on_price": ("lost_on_price_share_12m", "quotes lost on price", "pct"),
    "price_tickets": ("price_ticket_share_12m", "price-related tickets", "pct"),
    "critical_tickets": ("critical_ticket_share_12m", "critical tickets", "pct"),
    "ordering_months": ("active_months_12m", "months with an order", "pct"),
}
# customer_features levels on another scale than the component's rate
LEVEL_SCALE = {"ordering_months": 1 / 12}

# numerator, denominator columns of customer_monthly_behaviour per share component
SHARES = {
    "list_price": ("list_price_lines", "order_lines"),
    "premium": ("premium_lines", "order_lines"),
    "service": ("service_lines", "order_lines"),
    "lost_on_price": ("quotes_lost_on_price", "quotes_decided"),
    "price_tickets": ("price_tickets", "tickets"),
    "critical_tickets": ("critical_tickets", "tickets"),
}
MIN_DISCOUNT_SD = 0.03
# what `mix_change` reads of customer_monthly_behaviour: the drift step selects these, not
# every column (at 100k accounts the whole table is ~0.7 GB in pandas, these a third of it)
MONTHLY_COLUMNS = (
    "account_id",
    "months_ago",
    "orders",
    "discounted_lines",
    "discount_sum",
    "discount_square_sum",
    *dict.fromkeys(column for pair in SHARES.values() for column in pair),
)


@dataclass(frozen=True)
class Windows:
    recent_months: int = 6
    baseline_months: int = 12


@dataclass
class MixChange:
    """Per account: recent and baseline rate, z and evidence size for every component."""

    recent: pd.DataFrame  # account x component
    baseline: pd.DataFrame
    z: pd.DataFrame
    # standard error of recent - baseline, at least the account's own month-to-month swing
    # (NaN: not both windows observed); `z` is the count-based two-sample z
    se: pd.DataFrame
    n_recent: pd.DataFrame
    n_baseline: pd.DataFrame
    last_order_months_ago: pd.Series  # months since the latest month with an order (NaN: none in the history)


def _two_proportion(x_r, n_r, x_b, n_b) -> tuple[np.ndarray, np.ndarray]:
    """z of the difference of two proportions, and its standard error (NaN unless both observed)."""
    p_r = np.divide(x_r, n_r, out=np.zeros_like(x_r, dtype=float), where=n_r > 0)
    p_b = np.divide(x_b, n_b, out=np.zeros_like(x_b, dtype=float), where=n_b > 0)
    pooled = np.clip(np.divide(x_r + x_b, n_r + n_b, out=np.full_like(x_r, 0.5, dtype=float), where=(n_r + n_b) > 0), 0.03, 0.97)
    se = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(n_r, 1) + 1 / np.maximum(n_b, 1)))
    both = (n_r > 0) & (n_b > 0)
    return np.where(both, (p_r - p_b) / se, 0.0), np.where(both, se, np.nan)


def _month_to_month(recent: pd.DataFrame, base: pd.DataFrame, accounts: pd.Index) -> dict[str, np.ndarray]:
    """Per rate component, the standard error of (recent - baseline) rate from the account's
    own month-to-month variation in its baseline: the variance of its monthly rates (months
    with a denominator) over the months seen in each window. An account whose mix swings
    from month to month (promotions, lumpy projects) needs a larger move than a binomial
    count would say; 0 where fewer than three baseline months show the component."""
    rates = {"discount": ("discount_sum", "discounted_lines"), **SHARES}
    counted = pd.DataFrame({"account_id": recent["account_id"], **{name: recent[den] > 0 for name, (_, den) in rates.items()}})
    months_recent = counted.groupby("account_id").sum().reindex(accounts, fill_value=0)
    out = {}
    for name, (num, den) in rates.items():
        # one component's sums at a time: each column's sums are the same whichever columns
        # are grouped with it, and only three baseline columns are copied at once
        seen = base[den] > 0
        rate = (base[num] / base[den].where(seen)).where(seen, 0.0)
        columns = {"account_id": base["account_id"], "m": seen.astype(float), "s": rate, "s2": rate**2}
        stats = pd.DataFrame(columns).groupby("account_id").sum().reindex(accounts, fill_value=0.0)
        m_b = stats["m"].to_numpy(float)
        mean = np.divide(stats["s"].to_numpy(float), m_b, out=np.zeros_like(m_b), where=m_b > 0)
        var = np.divide(stats["s2"].to_numpy(float) - m_b * mean**2, m_b - 1, out=np.zeros_like(m_b), where=m_b > 1)
        m_r = months_recent[name].to_numpy(float)
        ok = (m_b >= 3) & (m_r > 0)
        out[name] = np.where(ok, np.sqrt(np.maximum(var, 0) * (1 / np.maximum(m_r, 1) + 1 / np.maximum(m_b, 1))), 0.0)
    return out


def _widened(se: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """The standard error, at least the month-to-month one (`floor`); NaN stays NaN."""
    return np.where(np.isfinite(se), np.fmax(se, floor), np.nan)


def by_position(monthly: pd.DataFrame) -> tuple[pd.DataFrame, pd.Index]:
    """`monthly` with each account id replaced by its position among the sorted ids, and
    those ids: `mix_change` groups integers instead of text (once per scanned window), and
    the positions keep the ids' order, so every group holds the same rows in the same order."""
    positions, ids = pd.factorize(monthly["account_id"], sort=True)
    coded = monthly.copy(deep=False)  # the other columns shared, not copied (~0.3 GB at 100k)
    coded["account_id"] = positions
    if (positions < 0).any():  # a row without an account: grouping by id left it out too
        coded = coded[positions >= 0]
    return coded, pd.Index(ids, name="account_id")


def mix_change(monthly: pd.DataFrame, windows: Windows = Windows(), ids: pd.Index | None = None) -> MixChange:
    """Compare each account's recent window with its baseline window (pooled counts).

    With `ids`, `monthly`'s account_id holds positions in `ids` (`by_position`); the result
    is indexed by the ids themselves either way."""
    change = _mix_change(monthly, windows)
    if ids is None:
        return change
    index = ids.take(change.z.index.to_numpy())
    for frame in (change.recent, change.baseline, change.z, change.se, change.n_recent, change.n_baseline):
        frame.index = index
    change.last_order_months_ago.index = index
    return change


def _mix_change(monthly: pd.DataFrame, windows: Windows) -> MixChange:
    recent = monthly[monthly["months_ago"] < windows.recent_months]
    base = monthly[
        (monthly["months_ago"] >= windows.recent_months) & (monthly["months_ago"] < windows.recent_months + windows.baseline_months)
    ]
    sums_r = recent.groupby("account_id").sum(numeric_only=True)
    sums_b = base.groupby("account_id").sum(numeric_only=True)
    accounts = sums_r.index.union(sums_b.index)
    sums_r = sums_r.reindex(accounts, fill_value=0)
    sums_b = sums_b.reindex(accounts, fill_value=0)
    rate_r, rate_b, z, se, n_r, n_b = {}, {}, {}, {}, {}, {}

    nr, nb = sums_r["discounted_lines"].to_numpy(float), sums_b["discounted_lines"].to_numpy(float)
    mr = np.divide(sums_r["discount_sum"].to_numpy(float), nr, out=np.zeros_like(nr), where=nr > 0)
    mb = np.divide(sums_b["discount_sum"].to_numpy(float), nb, out=np.zeros_like(nb), where=nb > 0)
    vr = np.divide(sums_r["discount_square_sum"].to_numpy(float), nr, out=np.zeros_like(nr), where=nr > 0) - mr**2
    vb = np.divide(sums_b["discount_square_sum"].to_numpy(float), nb, out=np.zeros_like(nb), where=nb > 0) - mb**2
    var = np.maximum(np.divide(vr * nr + vb * nb, nr + nb, out=np.zeros_like(nr), where=(nr + nb) > 0), MIN_DISCOUNT_SD**2)
    se_discount = np.sqrt(var * (1 / np.maximum(nr, 1) + 1 / np.maximum(nb, 1)))
    z["discount"] = np.where((nr > 0) & (nb > 0), (mr - mb) / se_discount, 0.0)
    se["discount"] = np.where((nr > 0) & (nb > 0), se_discount, np.nan)
    month_to_month = _month_to_month(recent, base, accounts)
    se["discount"] = _widened(se["discount"], month_to_month["discount"])
    rate_r["discount"], rate_b["discount"] = np.where(nr > 0, mr, np.nan), np.where(nb > 0, mb, np.nan)
    n_r["discount"], n_b["discount"] = nr, nb

    for name, (num, den) in SHARES.items():
        xr, dr = sums_r[num].to_numpy(float), sums_r[den].to_numpy(float)
        xb, db = sums_b[num].to_numpy(float), sums_b[den].to_numpy(float)
        z[name], se[name] = _two_proportion(xr, dr, xb, db)
        se[name] = _widened(se[name], month_to_month[name])
        rate_r[name] = np.divide(xr, dr, out=np.full_like(xr, np.nan), where=dr > 0)
        rate_b[name] = np.divide(xb, db, out=np.full_like(xb, np.nan), where=db > 0)
        n_r[name], n_b[name] = dr, db

    # regularity: months with an order out of the months in each window
    active = monthly.loc[monthly["orders"] > 0, ["account_id", "months_ago"]]
    act_r = (
        active[active["months_ago"] < windows.recent_months].groupby("account_id").size().reindex(accounts, fill_value=0).to_numpy(float)
    )
    act_b = active[
        (active["months_ago"] >= windows.recent_months) & (active["months_ago"] < windows.recent_months + windows.baseline_months)
    ]
    act_b = act_b.groupby("account_id").size().reindex(accounts, fill_value=0).to_numpy(float)
    months_r = np.full(len(accounts), float(windows.recent_months))
    months_b = np.full(len(accounts), float(windows.baseline_months))
    # only for accounts that ordered in the baseline: a new customer has no pattern to break
    z_ordering, se_ordering = _two_proportion(act_r, months_r, act_b, months_b)
    z["ordering_months"] = np.where(act_b > 0, z_ordering, 0.0)
    se["ordering_months"] = np.where(act_b > 0, se_ordering, np.nan)
    rate_r["ordering_months"], rate_b["ordering_months"] = act_r / months_r, np.where(act_b > 0, act_b / months_b, np.nan)
    n_r["ordering_months"], n_b["ordering_months"] = months_r, months_b
    last_order = active.groupby("account_id")["months_ago"].min().reindex(accounts)

    frame = lambda d: pd.DataFrame(d, index=accounts)[list(COMPONENTS)]  # noqa: E731
    return MixChange(frame(rate_r), frame(rate_b), frame(z), frame(se), frame(n_r), frame(n_b), last_order)
