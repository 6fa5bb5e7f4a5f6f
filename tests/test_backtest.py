"""The Online Retail backtest harness, on the real data (skipped without ../shared)."""

from __future__ import annotations

import duckdb
import pytest

from pipelines.backtest import backtest
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def result(session_dir):
    parquet = shared_data("uci_online_retail", "online_retail.parquet")
    return parquet, backtest(parquet, session_dir / "backtest", months=["2011-07", "2011-08"], say=lambda _: None)


def test_churn_labels_match_an_independent_count_from_the_export(result):
    parquet, res = result
    assert [r.as_of for r in res.runs] == ["2011-07-31", "2011-08-31"]
    con = duckdb.connect()
    for run in res.runs:
        eligible, stopped = con.execute(
            f"""
            with lines as (
                select cast(CustomerID as bigint) as customer, cast(InvoiceDate as date) as day
                from read_parquet('{parquet}') where CustomerID is not null and Quantity > 0
            ),
            active as (select distinct customer from lines where day > date '{run.as_of}' - interval 3 month and day <= date '{run.as_of}'),
            later as (select distinct customer from lines where day > date '{run.as_of}' and day <= date '{run.as_of}' + interval 3 month)
            select count(*), count(*) filter (where customer not in (select customer from later)) from active
            """
        ).fetchone()
        assert (run.eligible, run.stopped) == (eligible, stopped)


def test_both_rankings_are_scored_on_the_same_customers(result):
    _, res = result
    for run in res.runs:
        assert 0 <= run.needseg_precision_top <= 1 and 0 <= run.baseline_precision_top <= 1
        assert run.alerts == 0 or run.needseg_precision_alerts is not None
    text = "\n".join(res.lines(100))
    assert "recency top 100" in text and "needseg top 100" in text


def test_needseg_ranks_who_stops_better_than_chance_and_no_worse_than_recency(result):
    # The export has no needs signals, so no drift alerts: the ranking is the lapse risk.
    # Measured: 0.55 and 0.48 (recency 0.52, 0.46; base rate 0.36, 0.32).
    _, res = result
    for run in res.runs:
        assert run.needseg_precision_top >= run.stopped / run.eligible + 0.1, run
        assert run.needseg_precision_top >= run.baseline_precision_top - 0.03, run
