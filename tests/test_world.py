"""The demo world: deterministic, heavy-tailed, Nordic, with truth kept apart."""

from __future__ import annotations

import hashlib

import pandas as pd

from pipelines.demo.world import WorldSpec, deliver, extract_months, generate


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.csv")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_identical_extracts_and_another_seed_does_not(tmp_path):
    spec = WorldSpec(
        seed=3, customers=120, prospects=10, start_month="2026-01", end_month="2026-06", drift_window_start="2026-02", drift_min_visible=2
    )
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    generate(tmp_path / "c", WorldSpec(**{**spec.__dict__, "seed": 4}))
    assert _digest(tmp_path / "a" / "extracts") == _digest(tmp_path / "b" / "extracts")
    assert _digest(tmp_path / "a" / "extracts") != _digest(tmp_path / "c" / "extracts")


def test_world_has_the_contract_tables_as_monthly_extracts(small_world):
    months = extract_months(small_world)
    assert months[0] == "2025-01" and months[-1] == "2026-10" and len(months) == 22
    first = small_world / "extracts" / "2025-01"
    for table in ("accounts", "order_lines", "support_tickets", "quotes"):
        assert list((first / "crm" / table).glob("*.csv")), table
    waves = sorted(p.name for p in (small_world / "extracts").glob("*/survey/survey_responses/*.csv"))
    assert waves and all(w.startswith("wave_") for w in waves)
    # the pipeline's input never contains the ground truth
    assert not list((small_world / "extracts").rglob("*truth*"))
    truth = pd.read_csv(small_world / "truth" / "accounts.csv")
    assert {"base_segment", "drifter", "churn_month"} <= set(truth.columns)


def test_accounts_are_heavy_tailed_nordic_and_include_prospects(small_world):
    accounts = pd.concat(pd.read_csv(p, keep_default_na=False) for p in (small_world / "extracts").glob("*/crm/accounts/*.csv"))
    latest = accounts.sort_values("updated_at").groupby("account_id").tail(1)
    assert set(latest["status"]) == {"customer", "prospect", "churned"}
    assert latest["account_name"].str.contains("[åäöÅÄÖøæ]").mean() > 0.2
    assert set(latest["country"]) >= {"SE", "FI", "NO", "DK"}
    lines = pd.concat(pd.read_csv(p) for p in (small_world / "extracts").glob("2026-*/crm/order_lines/*.csv"))
    eur = {"SEK": 0.087, "NOK": 0.085, "DKK": 0.134, "EUR": 1.0, "GBP": 1.17}
    revenue = (
        (lines["quantity"] * lines["net_price"] * lines["currency"].map(eur))
        .groupby(lines["account_id"])
        .sum()
        .sort_values(ascending=False)
    )
    top_fifth = revenue.head(len(revenue) // 5).sum() / revenue.sum()
    assert 0.65 < top_fifth < 0.92, top_fifth


def test_planted_drift_is_gradual_and_some_churn_without_drift(small_world):
    truth = pd.read_csv(small_world / "truth" / "accounts.csv", keep_default_na=False)
    monthly = pd.read_parquet(small_world / "truth" / "segments_monthly.parquet")
    drifters = truth[truth["drifter"]]
    assert len(drifters) > 10
    weights = (
        monthly[monthly["account_id"].isin(drifters["account_id"])]
        .groupby("account_id")["drift_weight"]
        .apply(lambda w: (w.diff().dropna() > 0).sum())
    )
    assert (weights >= 3).mean() > 0.8  # the move takes several months, not one step
    assert (truth["churn_kind"] == "random").sum() > 0
    assert ((truth["churn_kind"] == "after_drift") & truth["drifter"]).sum() > 0


def test_deliver_copies_months_up_to_the_given_one_only(small_world, tmp_path):
    landing = tmp_path / "landing"
    assert deliver(small_world, landing, "2025-03") > 0
    delivered = {p.name for p in landing.rglob("*.csv")}
    assert "order_lines_2025-03.csv" in delivered and "order_lines_2025-04.csv" not in delivered
    assert deliver(small_world, landing, "2025-03") == 0  # nothing new the second time
