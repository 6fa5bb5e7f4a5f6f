"""Drift building blocks on small, hand-made inputs: the mix-change test, MONIC events,
alert episodes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.drift.episodes import EpisodeRules, alert_id, episodes
from pipelines.drift.population import population_changes, transitions
from pipelines.drift.signals import Windows, mix_change


def _monthly(account: str, months: range, lines: int, discount: float, list_share: float) -> list[dict]:
    rows = []
    for m in months:
        list_lines = round(lines * list_share)
        rows.append(
            {
                "account_id": account,
                "months_ago": m,
                "order_lines": lines,
                "orders": 2,
                "discounted_lines": lines,
                "discount_sum": discount * (lines - list_lines),
                "discount_square_sum": discount**2 * (lines - list_lines),
                "list_price_lines": list_lines,
                "premium_lines": 0,
                "service_lines": 0,
                "categories": 2,
                "revenue": 100.0,
                "quotes_decided": 0,
                "quotes_lost_on_price": 0,
                "tickets": 0,
                "price_tickets": 0,
                "critical_tickets": 0,
            }
        )
    return rows


def test_a_real_change_in_buying_mix_scores_high_and_evidence_scales_with_volume():
    rows = (
        _monthly("steady", range(0, 18), 10, 0.05, 0.5)
        + _monthly("moved", range(6, 18), 10, 0.05, 0.5)
        + _monthly("moved", range(0, 6), 10, 0.15, 0.1)
        + _monthly("moved_small", range(6, 18), 1, 0.05, 0.5)
        + _monthly("moved_small", range(0, 6), 1, 0.15, 0.0)
    )
    change = mix_change(pd.DataFrame(rows), Windows(6, 12))
    assert abs(change.z.at["steady", "discount"]) < 0.5
    assert change.z.at["moved", "discount"] > 5 and change.z.at["moved", "list_price"] < -5
    # the same move seen in ten times fewer lines is far weaker evidence
    assert 0 < change.z.at["moved_small", "discount"] < change.z.at["moved", "discount"] / 2
    assert change.recent.at["moved", "list_price"] == 0.1 and change.baseline.at["moved", "list_price"] == 0.5


def test_monic_events_survive_split_disappear_emerge():
    ids = [f"a{i}" for i in range(100)]
    previous = pd.Series(["A"] * 40 + ["B"] * 40 + ["C"] * 20, index=ids)
    # A survives; B splits in half; C's accounts scatter, 4 to each of five segments (gone);
    # N is made of accounts the previous run did not have (emerges)
    current = pd.Series(["A"] * 38 + ["B1"] * 2 + ["B1"] * 20 + ["B2"] * 20 + ["A", "B1", "B2", "X", "Y"] * 4, index=ids)
    newcomers = pd.Series("N", index=[f"n{i}" for i in range(10)])
    current = pd.concat([current, newcomers])
    events, matrix = population_changes(previous, current, {"A": np.zeros(2)}, {"A": np.ones(2)})
    kinds = {(e["event"], tuple(e["from_segments"]), tuple(e["to_segments"])) for e in events.to_dict("records")}
    assert ("survive", ("A",), ("A",)) in kinds
    assert ("split", ("B",), ("B1", "B2")) in kinds
    assert ("disappear", ("C",), ()) in kinds
    assert ("emerge", (), ("N",)) in kinds
    survivor = events[events["event"] == "survive"].iloc[0]
    assert survivor["centre_shift"] == round(float(np.sqrt(2)), 4)
    assert matrix.loc[(matrix["from_segment_id"] == "A") & (matrix["to_segment_id"] == "A"), "accounts"].item() == 38
    assert transitions(previous, current)["accounts"].sum() == 100


def _snap(run: str, as_of: dt.date, account: str, score: float) -> dict:
    return {
        "run_id": run,
        "as_of": as_of,
        "account_id": account,
        "reason": "drift_to_price_sensitive",
        "score": score,
        "account_name": account.upper(),
        "account_owner": "owner@example.com",
        "from_segment": "Quality & brand",
        "to_segment": "Price-focused",
        "evidence": "[]",
        "action": "Call them",
    }


RUNS = [(f"seg-2026-{m:02d}", dt.date(2026, m, 28)) for m in range(1, 11)]


def test_one_open_alert_per_account_and_reason_resolved_after_recovery_with_cooldown():
    snaps = pd.DataFrame(
        [_snap(*RUNS[i], "a1", 0.5 + 0.1 * i) for i in (1, 2, 3)]  # at risk in Feb-Apr
        + [_snap(*RUNS[6], "a1", 0.9)]  # again in July: after resolution, but within 60 days? no: resolved Jun
        + [_snap(*RUNS[9], "a1", 0.8)]  # October: past the cooldown
    )
    alerts = episodes(snaps, RUNS, EpisodeRules(resolve_after_runs=2, cooldown_days=60))
    first = alerts.iloc[0]
    assert first["alert_id"] == alert_id("a1", "drift_to_price_sensitive", RUNS[1][1])
    assert first["status"] == "resolved" and first["resolved_as_of"] == RUNS[5][1] and first["runs_flagged"] == 3
    assert first["peak_score"] == 0.8
    # July is within 60 days of the June resolution: no new alert; October opens a new one
    assert len(alerts) == 2
    assert alerts.iloc[1]["opened_as_of"] == RUNS[9][1] and alerts.iloc[1]["status"] == "open"


def test_episodes_are_a_function_of_the_snapshots_so_a_rerun_changes_nothing():
    snaps = pd.DataFrame([_snap(*RUNS[i], a, 0.6) for i in range(3, 6) for a in ("a1", "a2")])
    once = episodes(snaps, RUNS[:6], EpisodeRules())
    twice = episodes(pd.concat([snaps, snaps]).drop_duplicates(["run_id", "account_id", "reason"]), RUNS[:6], EpisodeRules())
    pd.testing.assert_frame_equal(once, twice)
    assert once["alert_id"].is_unique and set(once["status"]) == {"open"}


def test_lapse_risk_ranks_rare_and_silent_buyers_above_regular_ones():
    from pipelines.drift.detect import lapse_risk

    as_of = dt.date(2026, 10, 31)
    features = pd.DataFrame(
        {
            "as_of": as_of,
            "first_order_date": [dt.date(2024, 1, 5)] * 4 + [dt.date(2026, 10, 2), None],
            "active_months_12m": [12, 2, 12, 12, 1, 0],
            "days_since_last_order": [5, 20, 150, 400, 29, None],
        },
        index=["monthly", "twice_a_year", "monthly_silent_5_months", "gone", "new_this_month", "never_ordered"],
    )
    risk = lapse_risk(features, horizon_months=3, silence_months=6)
    assert risk["monthly"] < 0.1
    assert risk["twice_a_year"] > 0.5
    assert risk["monthly"] < risk["monthly_silent_5_months"] < risk["gone"]
    # a first order this month is a monthly rhythm so far, not a rare buyer
    assert risk["new_this_month"] < risk["twice_a_year"]
    assert risk["never_ordered"] == 1.0
    assert risk.between(0, 1).all()
