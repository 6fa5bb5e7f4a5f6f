"""The stated-needs test: how a re-surveyed account's needs moved between its last two
usable survey waves, in the same terms as its buying mix (signals.MixChange).

needseg segments on needs; the buying mix is only a proxy for them. When an account
answers the survey again, the change of its relative importance per core item
(customer_features.need_<item>_change: the latest usable wave minus the one before) is
the most direct evidence of a drift there is: a customer that now rates price above
everything else says so. The behaviour tests (detect.py) miss drifts that show in one or
two buying signals only, e.g. deeper discounts with an unchanged product mix.

- Per item the change's noise is estimated from the population itself: the robust spread
  (1.4826 x the median absolute deviation) of that item's change over every account with
  two waves, most of which do not drift. An account's z per item is its change over it.
- The move towards a target segment is the weighted least-squares share of the way from
  the account's segment's needs profile (the mean latest needs of its surveyed members) to
  the target's, with its z (detect._along, the same fit as the change-point scan, each
  item's z capped the same way).
- It clears when the z reaches `drift.needs_z` and the share `drift.min_shift`; the
  evidence lists the items that set the two profiles apart, supporting or `against:`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.drift.signals import MixChange

ITEMS = ("price", "quality", "brand", "service", "delivery", "reliability", "partnership")
# customer_features columns the test reads
FEATURE_COLUMNS = (
    *(f"need_{item}" for item in ITEMS),
    *(f"need_{item}_change" for item in ITEMS),
    "survey_wave",
    "previous_survey_wave",
    "survey_respondents",
)
# no item's change is known more precisely than this (relative-importance units)
MIN_SE = 0.05


def _items(features: pd.DataFrame) -> list[str]:
    """The core items whose latest value and change the features carry."""
    return [i for i in ITEMS if f"need_{i}" in features.columns and f"need_{i}_change" in features.columns]


def needs_change(features: pd.DataFrame, accounts: pd.Index) -> MixChange | None:
    """Latest and previous needs per account of `accounts` (NaN without two usable waves),
    with each item's z and standard error; None when the features carry no change columns
    (no survey at all, or a taxonomy without survey items)."""
    items = _items(features)
    if not items:
        return None
    f = features.reindex(accounts)
    now = f[[f"need_{i}" for i in items]].apply(pd.to_numeric, errors="coerce").astype(float)
    delta = f[[f"need_{i}_change" for i in items]].apply(pd.to_numeric, errors="coerce").astype(float)
    now.columns = delta.columns = items
    delta = delta.where(now.notna())
    if not delta.notna().any().any():
        return None
    spread = 1.4826 * (delta - delta.median()).abs().median()
    se_item = spread.fillna(np.inf).clip(lower=MIN_SE)
    se = pd.DataFrame(np.broadcast_to(se_item.to_numpy(), delta.shape), index=accounts, columns=items).where(delta.notna())
    respondents = (
        pd.to_numeric(f.get("survey_respondents"), errors="coerce") if "survey_respondents" in f else pd.Series(np.nan, index=accounts)
    )
    counts = pd.DataFrame({i: respondents.to_numpy(float) for i in items}, index=accounts).where(delta.notna(), 0.0).fillna(0.0)
    return MixChange(
        recent=now.where(delta.notna()),
        baseline=now - delta,
        z=(delta / se).fillna(0.0),
        se=se,
        n_recent=counts,
        n_baseline=counts,
        last_order_months_ago=pd.Series(np.nan, index=accounts),
    )


def needs_profiles(features: pd.DataFrame, segment_of: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Mean latest needs per segment over its members that answered, and each item's spread."""
    items = _items(features)
    values = features.reindex(segment_of.index)[[f"need_{i}" for i in items]].apply(pd.to_numeric, errors="coerce").astype(float)
    values.columns = items
    levels = values.groupby(segment_of).mean()
    return levels, values.std().replace(0, np.nan)


def waves_text(features: pd.DataFrame, accounts: pd.Index) -> pd.Series:
    """'survey wave 2026h2 vs 2026h1' per account (the two waves its change compares)."""
    f = features.reindex(accounts)
    if "survey_wave" not in f or "previous_survey_wave" not in f:
        return pd.Series("the last two survey waves", index=accounts)
    both = f["survey_wave"].notna() & f["previous_survey_wave"].notna()
    text = "survey wave " + f["survey_wave"].astype(str) + " vs " + f["previous_survey_wave"].astype(str)
    return text.where(both, "the last two survey waves")
