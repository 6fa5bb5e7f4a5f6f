"""Backtest on real data: do needseg's churn-risk alerts pick customers that really stop?

The UCI Online Retail export (order lines of a UK online wholesaler, 2010-12 to 2011-12)
is loaded through its mapping (config/sources/examples/online_retail.yaml), then needseg
runs a monthly cycle as of every month end (features, segmentation with the behavioural
taxonomy config/taxonomies/online_retail_engagement.yaml, drift and churn risk).

The export covers 13 months, so drift compares the last 3 months with the 6 before
(`DRIFT_WINDOWS`, instead of the default 6 against 12, which needs 18 months of history);
the rest of the configuration is config/needseg.yaml as it is.

At each run, the customers who ordered in the last 3 months are the ones who can "stop";
a customer stopped when it made no purchase in the following 3 months. needseg ranks them
by churn-risk score (its alerts first), then by lapse risk; the recency-only baseline ranks
them by days since the last order. Both are scored by precision among their top `top_n` (default 100), for
the runs whose following 3 months are in the data.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import pandas as pd
import yaml

from pipelines import cycle
from pipelines.settings import CONFIG_DIR, Settings, load_settings
from pipelines.warehouse import connect

MAPPING = CONFIG_DIR / "sources" / "examples" / "online_retail.yaml"
DRIFT_WINDOWS = {"recent_months": 3, "baseline_months": 6}
TAXONOMY = CONFIG_DIR / "taxonomies" / "online_retail_engagement.yaml"


@dataclass
class RunScore:
    as_of: str
    eligible: int
    stopped: int
    alerts: int
    needseg_precision_alerts: float | None
    needseg_precision_top: float
    baseline_precision_top: float


@dataclass
class BacktestResult:
    runs: list[RunScore] = field(default_factory=list)
    seconds: float = 0.0
    load_seconds: float = 0.0

    def mean(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return round(sum(values) / len(values), 4) if values else None

    def lines(self, top_n: int) -> list[str]:
        out = [
            f"Online Retail backtest: {len(self.runs)} scored runs; churn = an active customer (ordered in the last 3 months) "
            f"makes no purchase in the following 3 months",
            f"  {'as of':<12}{'active':>8}{'stopped':>9}{'base rate':>10}{'alerts':>8}{'needseg alerts':>16}{f'needseg top {top_n}':>17}{f'recency top {top_n}':>17}",
        ]
        for r in self.runs:
            alerts = f"{r.needseg_precision_alerts:.2f}" if r.needseg_precision_alerts is not None else "-"
            out.append(
                f"  {r.as_of:<12}{r.eligible:>8}{r.stopped:>9}{r.stopped / r.eligible:>10.2f}{r.alerts:>8}{alerts:>16}"
                f"{r.needseg_precision_top:>17.2f}{r.baseline_precision_top:>17.2f}"
            )
        out.append(
            f"  mean precision: needseg alerts {self.mean('needseg_precision_alerts')}, needseg top {top_n} "
            f"{self.mean('needseg_precision_top')}, recency top {top_n} {self.mean('baseline_precision_top')}; "
            f"load {self.load_seconds:.0f} s, total {self.seconds:.0f} s"
        )
        return out


def prepare(parquet: Path, data_dir: Path) -> Settings:
    """A data dir with the export in landing, the retail mapping and taxonomy."""
    settings = load_settings(data_dir)
    mappings = data_dir / "mappings"
    mappings.mkdir(parents=True, exist_ok=True)
    shutil.copy(MAPPING, mappings / "retail.yaml")
    target = settings.landing_dir / "retail" / "order_lines" / "online_retail.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy(parquet, target)
    config = yaml.safe_load(settings.config_path.read_text())
    config.setdefault("drift", {}).update(DRIFT_WINDOWS)
    config_path = data_dir / "needseg.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return settings.with_overrides(mappings_dir=mappings, taxonomy_path=TAXONOMY, config_path=config_path)


def backtest(
    parquet: Path, data_dir: Path, months: list[str] | None = None, top_n: int = 100, say: Callable[[str], None] = print
) -> BacktestResult:
    started = time.monotonic()
    settings = prepare(parquet, data_dir)
    load_started = time.monotonic()
    cycle.ingest_step(dt.date(2011, 12, 31), settings)
    result = BacktestResult(load_seconds=time.monotonic() - load_started)
    with connect(settings.warehouse_path, read_only=True) as con:
        orders = con.execute("select account_id, cast(order_date as date) as order_date from raw.order_lines where quantity > 0").df()
    data_end = pd.Timestamp(orders["order_date"].max()).date()
    months = months or [str(p) for p in pd.period_range("2011-02", "2011-12", freq="M")]
    for month in months:
        as_of = pd.Period(month, "M").end_time.date()
        if as_of > data_end:
            as_of = data_end
        cycle.features_step(as_of, settings, run_tests=False)
        segmented = cycle.segment_step(as_of, settings)
        drift = cycle.drift_step(as_of, settings)
        say(f"  {as_of}: k={segmented['k']}, {drift['summary']}")
        horizon = pd.Timestamp(as_of) + pd.DateOffset(months=3)
        if pd.Timestamp(horizon) > pd.Timestamp(data_end):
            continue  # the following 3 months are not in the data: nothing to score
        before = orders[
            (orders["order_date"] > pd.Timestamp(as_of) - pd.DateOffset(months=3)) & (orders["order_date"] <= pd.Timestamp(as_of))
        ]
        after = orders[(orders["order_date"] > pd.Timestamp(as_of)) & (orders["order_date"] <= horizon)]
        eligible = set(before["account_id"])
        stopped = eligible - set(after["account_id"])
        with connect(settings.warehouse_path, read_only=True) as con:
            scores = con.execute(
                "select account_id, churn_risk_score, is_churn_risk, lapse_risk, drift_z from drift.customer_drift where run_id = ?",
                [segmented["run_id"]],
            ).df()
        scores = scores[scores["account_id"].isin(eligible)]
        last = before.groupby("account_id")["order_date"].max()
        ranked = scores.sort_values(["churn_risk_score", "lapse_risk", "drift_z", "account_id"], ascending=[False, False, False, True])
        alerts = ranked[ranked["is_churn_risk"]]
        top = list(ranked["account_id"].head(top_n))
        recency = list(last.sort_values().index[:top_n])
        result.runs.append(
            RunScore(
                as_of=as_of.isoformat(),
                eligible=len(eligible),
                stopped=len(stopped),
                alerts=len(alerts),
                needseg_precision_alerts=round(alerts["account_id"].isin(stopped).mean(), 4) if len(alerts) else None,
                needseg_precision_top=round(sum(a in stopped for a in top) / max(len(top), 1), 4),
                baseline_precision_top=round(sum(a in stopped for a in recency) / max(len(recency), 1), 4),
            )
        )
    result.seconds = time.monotonic() - started
    return result
