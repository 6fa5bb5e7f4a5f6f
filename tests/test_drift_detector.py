"""The drift detector on a hand-made population (pipelines.drift.detect.detect, run for real):

- a planted step drift towards price is flagged within three runs of its start (three
  months of the new mix), and alerted once revenue falls with it;
- stable accounts whose buying mix is noisy from month to month are hardly ever flagged
  (at most 2 % of them in any run - the sustained test's count-based z does not allow for
  month-to-month swings, the change-point scan does - and none alerted), and a two-month
  promotion (deeper discounts, nothing else moving) is not a drift;
- a move in a direction that is not risky (quality & brand -> service) is flagged as an
  early warning towards service but is neither a drift flag nor an alert;
- every flag's evidence names the window it was read over.

Each account buys from its segment's profile (per-line shares, discounts, tickets, quotes)
with binomial noise and a month-to-month swing; runs are replayed by shifting `months_ago`.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.drift.detect import OTHER_KIND, PRICE_KIND, DriftSettings, detect
from pipelines.drift.signals import COMPONENTS, LEVEL_SCALE
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import CONFIG_DIR

# per segment: discount, list-price share, premium share, service share, lost-on-price share,
# price-ticket share, critical-ticket share, chance of ordering in a month
PROFILES = {
    "price_focused": (0.14, 0.10, 0.06, 0.05, 0.55, 0.45, 0.10, 0.7),
    "service_focused": (0.05, 0.40, 0.15, 0.35, 0.15, 0.10, 0.45, 0.75),
    "quality_brand": (0.04, 0.55, 0.45, 0.08, 0.12, 0.05, 0.20, 0.65),
    "loyalty_partnership": (0.06, 0.45, 0.22, 0.18, 0.08, 0.05, 0.12, 0.95),
}
HISTORY = 18  # months of monthly behaviour a run sees
RUNS = 6


def _month(rng: np.random.Generator, account: str, months_ago: int, profile, swing: float, promo: float = 0.0, size: int = 1) -> dict:
    discount, list_share, premium, service, lost, price_t, critical, ordering = profile
    wobble = lambda p: float(np.clip(p * np.exp(rng.normal(0, swing)), 0.005, 0.95))  # noqa: E731
    orders = int(rng.random() < ordering) * (1 + int(rng.poisson(1.5)))
    lines = orders * 8 * size
    list_lines = int(rng.binomial(lines, wobble(list_share)))
    line_discounts = np.clip(rng.normal(wobble(discount) + promo, 0.03, lines - list_lines), 0, 0.6)
    tickets = int(rng.poisson(1.5)) if orders else 0
    quotes = int(rng.poisson(1.0))
    return {
        "account_id": account,
        "months_ago": months_ago,
        "orders": orders,
        "order_lines": lines,
        "discounted_lines": lines,
        "discount_sum": float(line_discounts.sum()),
        "discount_square_sum": float((line_discounts**2).sum()),
        "list_price_lines": list_lines,
        "premium_lines": int(rng.binomial(lines, wobble(premium))),
        "service_lines": int(rng.binomial(lines, wobble(service))),
        "quotes_decided": quotes,
        "quotes_lost_on_price": int(rng.binomial(quotes, wobble(lost))),
        "tickets": tickets,
        "price_tickets": int(rng.binomial(tickets, wobble(price_t))),
        "critical_tickets": int(rng.binomial(tickets, wobble(critical))),
    }


def _population(seed: int = 7, per_segment: int = 40, swing: float = 0.1):
    """Calendar months 0 .. HISTORY + RUNS - 1 of every account; the planted movers step to
    their target's profile at calendar month HISTORY (the first replayed run's month)."""
    rng = np.random.default_rng(seed)
    segment_of, rows = {}, []
    movers = {"mover_price": ("quality_brand", "price_focused"), "mover_service": ("quality_brand", "service_focused")}
    accounts = [(f"{seg[:4]}_{i:02d}", seg, seg) for seg in PROFILES for i in range(per_segment)]
    accounts += [(name, base, target) for name, (base, target) in movers.items()]
    accounts += [("promo", "quality_brand", "quality_brand")]
    for account, base, target in accounts:
        segment_of[account] = base
        for month in range(HISTORY + RUNS):
            profile = PROFILES[target if month >= HISTORY else base]
            # the promotion: ten points more discount in the first two replayed months
            promo = 0.10 if account == "promo" and HISTORY <= month < HISTORY + 2 else 0.0
            # the movers and the promotion are larger accounts (three times the lines)
            size = 3 if account.startswith(("mover_", "promo")) else 1
            rows.append({**_month(rng, account, month, profile, swing, promo, size), "month": month})
    return pd.DataFrame(rows), pd.Series(segment_of, name="segment_id")


def _features(monthly: pd.DataFrame, accounts: pd.Index, revenue_trend: pd.Series) -> pd.DataFrame:
    """What detect reads of customer_features: 12-month levels of each component and the rest."""
    last12 = monthly[monthly["months_ago"] < 12].groupby("account_id").sum(numeric_only=True).reindex(accounts, fill_value=0)
    lines = last12["order_lines"].replace(0, np.nan)
    f = pd.DataFrame(index=accounts)
    f["discount_depth_12m"] = last12["discount_sum"] / lines
    f["list_price_share_12m"] = last12["list_price_lines"] / lines
    f["premium_share_12m"] = last12["premium_lines"] / lines
    f["service_revenue_share_12m"] = last12["service_lines"] / lines
    f["lost_on_price_share_12m"] = last12["quotes_lost_on_price"] / last12["quotes_decided"].replace(0, np.nan)
    f["price_ticket_share_12m"] = last12["price_tickets"] / last12["tickets"].replace(0, np.nan)
    f["critical_ticket_share_12m"] = last12["critical_tickets"] / last12["tickets"].replace(0, np.nan)
    active = monthly[(monthly["months_ago"] < 12) & (monthly["orders"] > 0)].groupby("account_id").size()
    f["active_months_12m"] = active.reindex(accounts, fill_value=0)
    assert set(c for c, *_ in COMPONENTS.values()) <= set(f.columns) and set(LEVEL_SCALE) <= set(COMPONENTS)
    f["as_of"] = pd.Timestamp("2026-06-30")
    f["first_order_date"] = pd.Timestamp("2024-01-15")
    last = monthly[monthly["orders"] > 0].groupby("account_id")["months_ago"].min().reindex(accounts)
    f["days_since_last_order"] = last * 30 + 10
    f["revenue_trend"] = revenue_trend.reindex(accounts).fillna(0.0)
    f["satisfaction_change"] = np.nan
    f["nps"] = np.nan
    return f


@pytest.fixture(scope="module")
def replay():
    """detect() run by run over the replayed months (run r sees calendar months up to HISTORY + r)."""
    monthly, segment_of = _population()
    taxonomy = load_taxonomy(CONFIG_DIR / "taxonomy.yaml")
    names = {s: s for s in PROFILES}
    current = pd.DataFrame({"segment_id": segment_of})
    # the mover towards price also buys less (the revenue pressure that makes a drift a churn risk)
    revenue_trend = pd.Series({"mover_price": -0.4})
    history = pd.DataFrame(columns=["account_id", "segment_id", "as_of", "behaviour_probability"])
    out = []
    for run in range(RUNS):
        now = HISTORY + run
        seen = monthly[(monthly["month"] <= now) & (monthly["month"] > now - HISTORY)].copy()
        seen["months_ago"] = now - seen["month"]
        seen = seen.drop(columns="month")
        features = _features(seen, segment_of.index, revenue_trend)
        result = detect(features, seen, current, current, history, taxonomy, names, DriftSettings())
        out.append(result.assign(run=run))
    return pd.concat(out)


def test_a_step_drift_towards_price_is_flagged_within_three_runs_and_alerted(replay):
    mover = replay.loc["mover_price"].set_index("run")
    flagged = mover.index[mover["drift_flag"]]
    assert len(flagged) and flagged.min() <= 2, mover[["drift_z", "drift_shift", "drift_flag"]]
    first = mover.loc[flagged.min()]
    assert first["drift_kind"] == PRICE_KIND and first["toward_segment_id"] == "price_focused"
    assert mover["is_churn_risk"].any()


def test_stable_noisy_accounts_are_hardly_ever_flagged_and_never_alerted(replay):
    stable = replay[~replay.index.str.startswith(("mover_", "promo"))]
    flagged = stable.index[stable["drift_flag"]].unique()
    accounts = stable.index.unique()
    assert len(flagged) <= 0.02 * len(accounts), stable[stable["drift_flag"]][["run", "drift_kind", "drift_z", "drift_shift"]]
    assert not stable["is_churn_risk"].any()
    # early warnings in any direction: at most 1 % of the account-runs
    assert stable["early_warning"].mean() <= 0.01


def test_a_promotion_alone_is_not_a_drift(replay):
    promo = replay.loc["promo"].set_index("run")
    # the discounts did move, strongly ...
    assert promo["evidence"].str.contains("average discount").any()
    # ... but nothing else did: no drift, no early warning towards price
    assert not promo["drift_flag"].any(), promo[["drift_kind", "drift_z", "drift_shift"]]
    assert not (promo["early_warning"] & (promo["drift_kind"] == PRICE_KIND)).any()


def test_a_move_that_is_not_risky_is_flagged_but_not_alerted(replay):
    mover = replay.loc["mover_service"].set_index("run")
    warned = mover[mover["early_warning"]]
    assert len(warned) and warned.index.min() <= 4, mover[["drift_kind", "toward_segment_id", "drift_z", "drift_shift"]]
    # never a risky kind (towards price), and towards service once the move is clear
    assert (warned["drift_kind"] == OTHER_KIND).all(), warned[["drift_kind", "toward_segment_id", "drift_z"]]
    assert "service_focused" in set(warned["toward_segment_id"])
    assert not mover["drift_flag"].any() and not mover["is_churn_risk"].any()


def test_the_evidence_names_the_window_it_was_read_over(replay):
    mover = replay.loc["mover_price"].set_index("run")
    evidence = json.loads(mover[mover["drift_flag"]].iloc[0]["evidence"])
    assert any("months vs the 12 before" in line for line in evidence), evidence
    assert any(line.startswith("average discount") for line in evidence), evidence


def test_evidence_built_in_chunks_of_accounts_equals_one_query(monkeypatch):
    """At 1M accounts the evidence query is run per chunk of accounts (bounded memory): the
    published evidence is the same whatever the chunk."""
    import pipelines.drift.detect as detect_module

    monthly, segment_of = _population()
    taxonomy = load_taxonomy(CONFIG_DIR / "taxonomy.yaml")
    current = pd.DataFrame({"segment_id": segment_of})
    history = pd.DataFrame(columns=["account_id", "segment_id", "as_of", "behaviour_probability"])
    now = HISTORY + RUNS - 1
    seen = monthly[(monthly["month"] <= now) & (monthly["month"] > now - HISTORY)].copy()
    seen["months_ago"] = now - seen["month"]
    seen = seen.drop(columns="month")
    features = _features(seen, segment_of.index, pd.Series({"mover_price": -0.4}))

    def run():
        return detect(features, seen, current, current, history, taxonomy, {s: s for s in PROFILES}, DriftSettings())

    whole = run()
    monkeypatch.setattr(detect_module, "EVIDENCE_CHUNK", 7)
    assert len(segment_of) > 3 * 7
    pd.testing.assert_frame_equal(run(), whole)
    assert whole["evidence"].notna().all() and whole["drift_flag"].any()
