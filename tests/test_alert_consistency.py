"""Every open alert of a generated world is supported by its own evidence (the small world
run through three full cycles: tests/conftest.py `cycled_small_world`).

- a drift reason (towards price sensitivity, away from partnership) lists at least one
  buying-mix signal that moves its way, names its target segment, and nothing in its
  evidence that argues against it unless marked "against:" - and a falling model
  probability for the target stops the alert;
- a revenue collapse without a needs signal is not a drift: it is a lapsing alert, whose
  evidence is the churn model's probability and reasons, with its own playbook action;
- no drift row without a target and evidence.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.drift.run import LAPSING_ACTION
from pipelines.warehouse import connect

DRIFT_REASONS = {"drift_to_price_sensitive": "toward_price_sensitive", "leaving_partnership": "away_from_partnership"}
BUYING_MIX = ("average discount", "lines bought at list price", "premium-category lines", "service lines", "quotes lost on price")


@pytest.fixture(scope="module")
def published(cycled_small_world):
    settings, _ = cycled_small_world
    with connect(settings.serving_path, read_only=True) as con:
        alerts = con.execute("select * from churn_risk_alerts where status = 'open'").df()
        drift = con.execute("select * from customer_drift").df()
    return alerts, drift.set_index("account_id")


def test_the_world_has_open_alerts_of_both_kinds_to_check(published):
    alerts, _ = published
    assert len(alerts) > 0
    assert "lapsing" in set(alerts["reason"])


def test_every_drift_alert_argues_its_own_way(published):
    alerts, drift = published
    latest = drift["run_id"].iloc[0]
    for alert in alerts[alerts["reason"].isin(DRIFT_REASONS)].itertuples():
        evidence = json.loads(alert.evidence)
        supporting = [line for line in evidence if not line.startswith("against:")]
        assert alert.to_segment, alert
        assert any(line.startswith(BUYING_MIX) or line.startswith("months with an order") for line in supporting), alert
        # never "drifting towards price sensitivity" beside a falling probability of that segment
        assert not any(line.startswith("against: model probability") for line in evidence), alert
        # the evidence never stops at revenue: that is a lapse, not a drift
        assert not all(line.startswith("revenue run-rate") for line in supporting), alert
        if alert.last_seen_run_id == latest:
            row = drift.loc[alert.account_id]
            assert row["drift_flag"] and row["is_churn_risk"] and row["drift_kind"] == DRIFT_REASONS[alert.reason], alert


def test_every_lapsing_alert_carries_the_churn_model_and_its_own_action(published):
    alerts, drift = published
    latest = drift["run_id"].iloc[0]
    lapsing = alerts[alerts["reason"] == "lapsing"]
    for alert in lapsing.itertuples():
        evidence = json.loads(alert.evidence)
        assert evidence[0].startswith("churn probability "), alert
        assert "alert threshold" in evidence[0] and len(evidence) >= 2, alert
        assert pd.isna(alert.to_segment), alert  # no target segment: the account is expected to stop
        assert alert.action == LAPSING_ACTION
        if alert.last_seen_run_id == latest:
            row = drift.loc[alert.account_id]
            assert row["lapsing"] and not row["is_churn_risk"], alert
            assert row["churn_probability"] == pytest.approx(alert.score, abs=1e-6)


def test_no_drift_row_without_a_target_and_evidence(published):
    _, drift = published
    flagged = drift[drift["drift_flag"]]
    assert flagged["toward_segment_id"].notna().all()
    assert (flagged["evidence"].fillna("").str.len() > 0).all()
    risky = drift[drift["is_churn_risk"]]
    assert risky["drift_flag"].all()
    # an account at risk from a drift still orders: one that stopped is lapsing instead
    assert not (risky["evidence"].str.contains("against: model probability")).any()
