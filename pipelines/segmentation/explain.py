"""Why an account is in its segment, in words an account team can use.

An account's drivers are the dimensions where it differs from the population in the same
direction as its segment does: for a surveyed account its stated needs, for an inferred
one the behaviour the classifier learnt from. Each driver carries the account's value,
the segment's typical value and everyone's, so the text can say "discount depth 18 %
(segment 12 %, all 7 %)".
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

# column: (label, format) for behaviour drivers; needs are labelled from the dimension name.
LABELS = {
    "discount_depth_12m": ("discount depth", "pct"),
    "discount_depth_trend": ("discount depth trend", "pp"),
    "list_price_share_12m": ("revenue at list price", "pct"),
    "lost_on_price_share_12m": ("quotes lost on price", "pct"),
    "lost_on_price_share_trend": ("quotes lost on price, trend", "pp"),
    "quote_win_rate_12m": ("quote win rate", "pct"),
    "price_ticket_share_12m": ("price-related tickets", "pct"),
    "tickets_per_order_12m": ("tickets per order", "num"),
    "critical_ticket_share_12m": ("critical tickets", "pct"),
    "service_ticket_share_12m": ("technical & delivery tickets", "pct"),
    "service_revenue_share_12m": ("service revenue share", "pct"),
    "premium_share_12m": ("premium-category share", "pct"),
    "return_share_12m": ("returns", "pct"),
    "order_regularity_12m": ("order regularity", "num"),
    "category_breadth_12m": ("category breadth", "pct"),
    "active_months_12m": ("months with orders (of 12)", "int"),
    "web_order_share_12m": ("web orders", "pct"),
    "tenure_months": ("tenure (months)", "int"),
    "revenue_trend": ("revenue trend", "pct"),
}


def _fmt(value: float, kind: str) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if kind == "pct":
        return f"{value * 100:.0f} %"
    if kind == "pp":
        return f"{value * 100:+.0f} pp"
    if kind == "int":
        return f"{value:.0f}"
    if kind == "need":
        return f"{value:+.1f}"
    return f"{value:.2f}"


def drivers(
    values: pd.DataFrame,
    segments: pd.Series,
    kind: str,
    top: int = 3,
    reference: pd.DataFrame | None = None,
    reference_segments: pd.Series | None = None,
) -> tuple[pd.Series, pd.Series]:
    """Per account, its top drivers as JSON and as one line of text.

    `values`: the accounts' dimensions (needs or behaviour columns); `segments`: their
    segment ids. Segment and population profiles come from `reference` (default: the same
    accounts), e.g. the surveyed accounts the classifier learnt from.
    """
    ref = values if reference is None else reference
    ref_seg = segments if reference_segments is None else reference_segments
    cols = [c for c in values.columns if ref[c].notna().any()]
    mean = ref[cols].mean()
    sd = ref[cols].std().replace(0, np.nan)
    seg_mean = ref[cols].groupby(ref_seg).mean()
    profile = (seg_mean - mean) / sd  # segment's direction per dimension, in sd
    z = ((values[cols] - mean) / sd).to_numpy()
    known = segments.isin(profile.index).to_numpy()
    rows = profile.reindex(segments.where(known, profile.index[0])).to_numpy()
    score = np.nan_to_num(z * rows, nan=-np.inf)
    order = np.argsort(-score, axis=1)[:, :top]
    raw = values[cols].to_numpy()
    seg_values = seg_mean.reindex(segments.where(known, profile.index[0])).to_numpy()
    overall = mean.to_numpy()
    labels = [
        (c.removeprefix("need_").replace("_", " ") + " importance", "need") if kind == "need" else LABELS.get(c, (c.replace("_", " "), "num"))
        for c in cols
    ]
    as_json, as_text = [], []
    for r in range(len(values)):
        items, words = [], []
        if known[r]:
            for j in order[r]:
                if not score[r, j] > 0:
                    break
                label, fmt = labels[j]
                v, s_, a = float(raw[r, j]), float(seg_values[r, j]), float(overall[j])
                items.append({"dimension": cols[j], "label": label, "value": round(v, 4), "segment_typical": round(s_, 4), "overall": round(a, 4), "weight": round(float(score[r, j]), 3)})
                words.append(f"{label} {_fmt(v, fmt)} (segment {_fmt(s_, fmt)}, all {_fmt(a, fmt)})")
        as_json.append(json.dumps(items))
        as_text.append("; ".join(words))
    return pd.Series(as_json, index=values.index), pd.Series(as_text, index=values.index)
