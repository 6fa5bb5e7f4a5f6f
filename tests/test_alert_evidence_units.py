"""Drift evidence on a hand-made population: a drift alert argues its own way, a falling
model probability for the target stops it, an account that stopped buying is not drifting."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pandas as pd

from pipelines.drift.detect import PRICE_KIND, DriftSettings, detect
from tests.test_drift_units import _monthly

AS_OF = dt.date(2026, 10, 31)
NAMES = {"P": "Price-focused", "Q": "Quality & brand"}
TAXONOMY = SimpleNamespace(role=lambda name: {"price_sensitive": "P"}.get(name))


def _features(account: str, discount: float, list_share: float, revenue_trend: float, silent_days: int = 10) -> dict:
    return {
        "account_id": account,
        "as_of": AS_OF,
        "first_order_date": dt.date(2024, 1, 1),
        "days_since_last_order": silent_days,
        "active_months_12m": 12,
        "discount_depth_12m": discount,
        "list_price_share_12m": list_share,
        "premium_share_12m": 0.0,
        "service_revenue_share_12m": 0.0,
        "lost_on_price_share_12m": None,
        "price_ticket_share_12m": None,
        "critical_ticket_share_12m": None,
        "revenue_trend": revenue_trend,
        "satisfaction_change": None,
        "nps": None,
    }


def _world():
    features, monthly, segment, probabilities = [], [], {}, []
    for i in range(20):
        features.append(_features(f"p{i}", 0.15, 0.1, 0.0))
        monthly += _monthly(f"p{i}", range(0, 18), 10, 0.15, 0.1)
        segment[f"p{i}"] = "P"
        features.append(_features(f"q{i}", 0.02, 0.8, 0.0))
        monthly += _monthly(f"q{i}", range(0, 18), 10, 0.02, 0.8)
        segment[f"q{i}"] = "Q"
    # two quality accounts moving the price segment's way, with falling revenue
    for account, before, now in (("drifter", 0.05, 0.40), ("contradicted", 0.30, 0.19)):
        features.append(_features(account, 0.06, 0.6, -0.5))
        monthly += _monthly(account, range(6, 18), 10, 0.02, 0.8) + _monthly(account, range(0, 6), 10, 0.15, 0.1)
        segment[account] = "Q"
        for run, p in enumerate((before, before, before, now)):
            probabilities.append(
                {"account_id": account, "segment_id": "P", "as_of": AS_OF - dt.timedelta(days=30 * (3 - run)), "behaviour_probability": p}
            )
    # a quality account that stopped buying 8 months ago: revenue -100 %, no needs signal
    features.append(_features("lapsed", 0.02, 0.8, -1.0, silent_days=240))
    monthly += _monthly("lapsed", range(8, 18), 10, 0.02, 0.8)
    segment["lapsed"] = "Q"
    features = pd.DataFrame(features).set_index("account_id")
    current = pd.DataFrame({"segment_id": pd.Series(segment)})
    return features, pd.DataFrame(monthly), current, pd.DataFrame(probabilities)


def test_a_drift_alert_argues_its_own_way_and_a_contradiction_stops_it():
    features, monthly, current, probabilities = _world()
    out = detect(features, monthly, current, current, probabilities, TAXONOMY, NAMES, DriftSettings())
    drifter, contradicted, lapsed = out.loc["drifter"], out.loc["contradicted"], out.loc["lapsed"]

    assert drifter["drift_flag"] and drifter["is_churn_risk"] and drifter["drift_kind"] == PRICE_KIND
    assert drifter["toward_segment_id"] == "P" and drifter["supporting_signals"] >= 1
    evidence = json.loads(drifter["evidence"])
    assert evidence[0].startswith(("average discount", "lines bought at list price"))
    assert "model probability of Price-focused 0.05 -> 0.40 over recent runs" in evidence
    assert json.loads(drifter["churn_risk_reasons"]) == [PRICE_KIND, "falling_revenue"]

    # the same move, but the model's probability of the target fell: shown as such, no alert
    assert contradicted["drift_flag"] and not contradicted["is_churn_risk"] and contradicted["churn_risk_score"] == 0
    assert "against: model probability of Price-focused 0.30 -> 0.19 over recent runs" in json.loads(contradicted["evidence"])

    # stopped buying: a lapse for the churn model, not a drift towards price
    assert not lapsed["drift_flag"] and not lapsed["is_churn_risk"]


def test_every_drift_row_names_its_target_and_evidence_and_components_are_json():
    features, monthly, current, probabilities = _world()
    out = detect(features, monthly, current, current, probabilities, TAXONOMY, NAMES, DriftSettings())
    flagged = out[out["drift_flag"]]
    assert len(flagged) == 2
    assert flagged["toward_segment_id"].notna().all() and (flagged["evidence_text"].str.len() > 0).all()
    for components in out["components"]:
        for line in json.loads(components):
            assert {"signal", "before", "recent", "z", "supports", "text"} <= set(line)
    # steady accounts carry no evidence lines and no risk
    assert out.loc["q0", "evidence"] == "[]" and out.loc["q0", "churn_risk_score"] == 0
