"""Churn reasons in words, from the model's own per-account attributions (vectorised).

LightGBM's `pred_contrib` splits every account's log-odds into one share per feature; the
shares are summed per reason group (recency, rhythm, frequency, ...) and the groups that
push this account's probability up most (at least `MIN_CONTRIBUTION`) are said with the
account's own figures, strongest first. A group that lowers the risk is never given as a
reason, so the words always argue the way the probability does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.churn.model import FEATURES

TOP = 3
MIN_CONTRIBUTION = 0.05
MONTH = 30.44


def _num(s: pd.Series, digits: int = 0) -> pd.Series:
    values = pd.to_numeric(s, errors="coerce").astype(float)
    text = values.round(digits).astype(str)
    if digits == 0:
        text = values.round(0).astype("Int64").astype(str)
    return text.where(values.notna(), "n/a")


def _pct(s: pd.Series) -> pd.Series:
    values = pd.to_numeric(s, errors="coerce").astype(float)
    return (values * 100).round(0).astype("Int64").astype(str).where(values.notna(), "n/a") + " %"


def phrases(frame: pd.DataFrame, horizon_months: int) -> pd.DataFrame:
    """One phrase per reason group for every account (columns: the groups)."""
    f = frame.reindex(columns=list(FEATURES))
    single = pd.to_numeric(f["purchase_days"], errors="coerce").fillna(0) <= 1
    rhythm = "usually orders every " + _num(f["median_gap_days"]) + " days; " + _num(f["recency_days"]) + " days since the last order"
    drift_flag = pd.to_numeric(f["drift_flag"], errors="coerce").fillna(0) > 0
    out = {
        "recency": "no order for " + _num(f["recency_days"]) + " days",
        "rhythm": rhythm.where(~single, "a single purchase day so far, no buying rhythm yet"),
        "frequency": _num(f["purchase_days_12m"]) + " purchase days in the last 12 months",
        "trend": "revenue " + _num(f["revenue_3m"]) + " in the last 3 months against " + _num(f["revenue_prior_3m"]) + " the 3 before",
        "value": "revenue " + _num(f["revenue_12m"]) + " over 12 months (percentile " + _num(f["value_percentile"] * 100) + ")",
        "tenure": "customer for " + _num(f["tenure_days"] / MONTH) + " months",
        "returns": _pct(f["return_share"]) + " of order lines returned",
        "price": "average discount " + _pct(f["discount_depth"]) + ", " + _pct(f["lost_on_price_share_12m"]) + " of quotes lost on price",
        "mix": "premium " + _pct(f["premium_share"]) + " and service " + _pct(f["service_share"]) + " of order lines",
        "service": _num(f["tickets_12m"]) + " tickets in 12 months (" + _num(f["critical_tickets_12m"]) + " critical)",
        "satisfaction": "satisfaction " + _num(f["satisfaction"], 1) + ", NPS " + _num(f["nps"]),
        "drift": ("buying mix drifting (z " + _num(f["drift_z"], 1) + ")").where(
            drift_flag, "buying mix starting to move (z " + _num(f["drift_z"], 1) + ", no drift alert)"
        ),
        "bgnbd": "BG/NBD: " + _pct(f["bgnbd_p_no_purchase"]) + f" chance of no purchase in {horizon_months} months",
    }
    return pd.DataFrame(out, index=frame.index)


def model_reasons(contributions: pd.DataFrame, frame: pd.DataFrame, horizon_months: int) -> pd.Series:
    """The strongest reasons that raise each account's churn probability, joined by '; '."""
    groups = contributions.T.groupby(pd.Series(FEATURES)).sum().T
    words = phrases(frame, horizon_months)[list(groups.columns)].to_numpy(dtype=object)
    values = groups.to_numpy(float)
    order = np.argsort(-values, axis=1, kind="stable")[:, :TOP]
    top_values = np.take_along_axis(values, order, axis=1)
    top_words = np.take_along_axis(words, order, axis=1)
    text = np.where(top_values[:, 0] >= MIN_CONTRIBUTION, top_words[:, 0], "nothing raises the risk above the average customer's")
    for i in range(1, TOP):
        text = np.where(top_values[:, i] >= MIN_CONTRIBUTION, text + "; " + top_words[:, i], text)
    return pd.Series(text, index=frame.index, dtype=object)


def cold_start_reasons(frame: pd.DataFrame, horizon_months: int) -> pd.Series:
    """Without a learned model: BG/NBD's figure with the account's recency and frequency."""
    words = phrases(frame, horizon_months)
    text = "cold start, too little history to learn from: " + words["bgnbd"] + "; " + words["recency"] + "; " + words["frequency"]
    return text.astype(object)
