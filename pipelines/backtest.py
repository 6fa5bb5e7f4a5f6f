"""Backtest on real data: does needseg's churn probability pick the customers that really stop?

The UCI Online Retail export (order lines of a UK online wholesaler, 2010-12 to 2011-12)
is loaded through its mapping (config/sources/examples/online_retail.yaml), then needseg
runs a monthly cycle as of every month end (features, segmentation with the behavioural
taxonomy config/taxonomies/online_retail_engagement.yaml, drift, churn model and alerts).

The export covers 13 months, so drift compares the last 3 months with the 6 before
(`DRIFT_WINDOWS`, instead of the default 6 against 12, which needs 18 months of history);
the rest of the configuration is config/needseg.yaml as it is.

At each run, the customers who ordered in the last 3 months are the ones who can "stop";
a customer stopped when it made no purchase in the following 3 months (counted here from
the raw export, independently of needseg). On exactly those customers, four rankings are
scored by precision among their top `top_n` (default 100) and AUC:

- needseg: the run's churn probability (churn.risk_history, stored by that run);
- recency: days since the last order;
- BG/NBD: its probability of no purchase in 3 months (`lifetimes`, fitted at the run);
- a plain gradient-boosting peer: scikit-learn's HistGradientBoostingClassifier on RFM and
  purchase-gap features, trained like needseg only on outcomes already observable then.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

from pipelines import cycle
from pipelines.churn import history
from pipelines.churn.run import ChurnSettings
from pipelines.churn.run import score_run as score_run_churn
from pipelines.config import load_config
from pipelines.files import write_file_atomically
from pipelines.safe_yaml import load_yaml
from pipelines.segmentation.run import run_id_for
from pipelines.settings import CONFIG_DIR, Settings, load_settings
from pipelines.warehouse import connect, insert_frame, open_warehouse

MAPPING = CONFIG_DIR / "sources" / "examples" / "online_retail.yaml"
DRIFT_WINDOWS = {"recent_months": 3, "baseline_months": 6}
TAXONOMY = CONFIG_DIR / "taxonomies" / "online_retail_engagement.yaml"


PEER_FEATURES = [
    "recency_days",
    "purchase_days",
    "purchase_days_12m",
    "revenue",
    "revenue_12m",
    "order_value",
    "mean_gap_days",
    "gap_sd_days",
    "last_gap_days",
    "first_purchase_age_days",
]
RANKINGS = ("needseg", "recency", "bgnbd", "peer")


@dataclass
class RunScore:
    as_of: str
    eligible: int
    stopped: int
    alerts: int
    model: str
    precision: dict[str, float]
    auc: dict[str, float]
    needseg_brier: float
    needseg_precision_alerts: float | None


@dataclass
class BacktestResult:
    runs: list[RunScore] = field(default_factory=list)
    seconds: float = 0.0
    load_seconds: float = 0.0
    cpu_seconds: float = 0.0

    def mean(self, ranking: str, what: str = "precision", runs: list[RunScore] | None = None) -> float | None:
        values = [getattr(r, what)[ranking] for r in (runs if runs is not None else self.runs)]
        values = [v for v in values if v is not None and np.isfinite(v)]
        return round(float(np.mean(values)), 4) if values else None

    def lines(self, top_n: int) -> list[str]:
        out = [
            f"Online Retail backtest: {len(self.runs)} scored runs; churn = an active customer (ordered in the last 3 months) "
            f"makes no purchase in the following 3 months",
            f"  {'as of':<12}{'active':>7}{'stopped':>8}{'model':>18}{'lapsing':>8}"
            + "".join(f"{f'{r} p@{top_n}':>14}" for r in RANKINGS)
            + "".join(f"{f'{r} AUC':>13}" for r in RANKINGS),
        ]
        out.extend(
            f"  {r.as_of:<12}{r.eligible:>7}{r.stopped:>8}{r.model:>18}{r.alerts:>8}"
            + "".join(f"{r.precision[k]:>14.3f}" for k in RANKINGS)
            + "".join(f"{r.auc[k]:>13.3f}" for k in RANKINGS)
            for r in self.runs
        )
        later = [r for r in self.runs if r.as_of >= "2011-03"]
        out.extend(
            f"  mean {label:<13} " + ", ".join(f"{k} p@{top_n} {self.mean(k, runs=runs)} AUC {self.mean(k, 'auc', runs)}" for k in RANKINGS)
            for label, runs in (("all runs", self.runs), ("from 2011-03", later))
            if runs
        )
        out.extend(self.targets(top_n, later))
        alerts = [r.needseg_precision_alerts for r in self.runs if r.needseg_precision_alerts is not None]
        out.append(
            f"  lapsing alerts: precision {np.mean(alerts):.3f} over {len(alerts)} runs"
            if alerts
            else "  lapsing alerts: none (no threshold reached the target precision)"
        )
        out.append(f"  load {self.load_seconds:.0f} s, total {self.seconds:.0f} s wall, {self.cpu_seconds:.0f} s CPU")
        return out

    def targets(self, top_n: int, later: list[RunScore]) -> list[str]:
        """Issue 11's bar: over all runs needseg's precision >= BG/NBD's + 0.03 and >= recency's
        + 0.08; from 2011-03 precision >= 0.65 and AUC >= 0.73 (the plain gradient-boosting peer)."""
        mean_all = {k: self.mean(k) for k in RANKINGS}
        p_later, auc_later = self.mean("needseg", runs=later), self.mean("needseg", "auc", later)
        if None in (mean_all["needseg"], mean_all["bgnbd"], mean_all["recency"], p_later, auc_later):
            return ["  issue 11 targets: not enough scored runs to check"]
        checks = [
            (f"p@{top_n} {mean_all['needseg']} >= BG/NBD {mean_all['bgnbd']} + 0.03", mean_all["needseg"] >= mean_all["bgnbd"] + 0.03),
            (f">= recency {mean_all['recency']} + 0.08", mean_all["needseg"] >= mean_all["recency"] + 0.08),
            (f"from 2011-03 p@{top_n} {p_later} >= 0.65", p_later >= 0.65),
            (f"AUC {auc_later} >= 0.73", auc_later >= 0.73),
        ]
        return ["  issue 11 targets: " + "; ".join(f"{text} ({'met' if ok else 'NOT met'})" for text, ok in checks)]


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
    config = load_yaml(settings.config_path) or {}
    config.setdefault("drift", {}).update(DRIFT_WINDOWS)
    config_path = write_file_atomically(data_dir / "needseg.yaml", yaml.safe_dump(config, sort_keys=False))
    return settings.with_overrides(mappings_dir=mappings, taxonomy_path=TAXONOMY, config_path=config_path)


def _peer(con, as_of: dt.date, eligible: list[str], seed: int = 42) -> pd.Series:
    """The plain gradient-boosting peer's probability for `eligible` at `as_of` (closed outcomes only)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    cutoffs = [(pd.Timestamp(as_of) - pd.DateOffset(months=m) + pd.offsets.MonthEnd(0)).date() for m in range(0, 15)]
    data = history.features(con, cutoffs)
    outcomes = history.labels(con, cutoffs, as_of, 3)
    data = data.merge(outcomes, on=["cutoff", "account_id"], how="left")
    train = data[data["churned"].notna() & (data["cutoff"] < as_of)]
    target = data[data["cutoff"] == as_of].set_index("account_id").reindex(eligible)
    if train["churned"].nunique() < 2:
        return pd.Series(np.nan, index=eligible)
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=seed)
    model.fit(train[PEER_FEATURES], train["churned"].astype(int))
    return pd.Series(model.predict_proba(target[PEER_FEATURES])[:, 1], index=eligible)


def _precision(y: np.ndarray, score: np.ndarray, k: int) -> float:
    order = np.lexsort((np.arange(len(score)), -np.nan_to_num(score, nan=-np.inf)))[:k]
    return float(y[order].mean())


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    ok = np.isfinite(score)
    return float(roc_auc_score(y[ok], score[ok])) if 0 < y[ok].sum() < ok.sum() else float("nan")


def score_run(con, as_of: dt.date, run_id: str, orders: pd.DataFrame, top_n: int) -> RunScore:
    horizon = pd.Timestamp(as_of) + pd.DateOffset(months=3)
    before = orders[(orders["order_date"] > pd.Timestamp(as_of) - pd.DateOffset(months=3)) & (orders["order_date"] <= pd.Timestamp(as_of))]
    after = orders[(orders["order_date"] > pd.Timestamp(as_of)) & (orders["order_date"] <= horizon)]
    eligible = sorted(set(before["account_id"]))
    stopped = set(eligible) - set(after["account_id"])
    scores = (
        con.execute(
            "select account_id, churn_probability, model, lapsing, recency_days, bgnbd_p_no_purchase from churn.risk_history where run_id = ?",
            [run_id],
        )
        .df()
        .set_index("account_id")
        .reindex(eligible)
    )
    y = np.array([a in stopped for a in eligible], dtype=int)
    ranking = {
        "needseg": scores["churn_probability"].to_numpy(float),
        "recency": scores["recency_days"].to_numpy(float),
        "bgnbd": scores["bgnbd_p_no_purchase"].to_numpy(float),
        "peer": _peer(con, as_of, eligible).to_numpy(float),
    }
    lapsing = scores["lapsing"].fillna(False).astype(bool).to_numpy()
    p = np.nan_to_num(ranking["needseg"], nan=0.5)
    return RunScore(
        as_of=as_of.isoformat(),
        eligible=len(eligible),
        stopped=len(stopped),
        alerts=int(lapsing.sum()),
        model=str(scores["model"].dropna().iloc[0]) if scores["model"].notna().any() else "-",
        precision={k: round(_precision(y, v, top_n), 4) for k, v in ranking.items()},
        auc={k: round(_auc(y, v), 4) for k, v in ranking.items()},
        needseg_brier=round(float(np.mean((p - y) ** 2)), 4),
        needseg_precision_alerts=round(float(y[lapsing].mean()), 4) if lapsing.any() else None,
    )


def churn_only(
    parquet: Path, data_dir: Path, months: list[str] | None = None, top_n: int = 100, say: Callable[[str], None] = print
) -> BacktestResult:
    """The churn step alone at every cutoff, on one feature build as of the last cutoff.

    Leak-free all the same: at cutoff T the churn step reads features dated on or before
    each cutoff and only labels whose window closed by T (`pipelines.churn.history`), so
    lines after T in the warehouse change nothing (tests/test_churn.py). It is a quick
    look, not the replay issue 11 is judged on (`backtest`): it leaves out segmentation
    and drift, so the model has none of the drift inputs (drift z and shift, early
    warnings, confirmed migrations, which the behavioural taxonomy does produce on this
    export), and with no segmentation runs no run has earlier runs to backtest, so the
    lapsing threshold comes from out-of-fold predictions instead.
    """
    started, cpu_started = time.monotonic(), time.process_time()
    settings = prepare(parquet, data_dir)
    load_started = time.monotonic()
    cycle.ingest_step(dt.date(2011, 12, 31), settings)
    result = BacktestResult(load_seconds=time.monotonic() - load_started)
    months = months or [str(p) for p in pd.period_range("2011-02", "2011-08", freq="M")]
    cutoffs = [pd.Period(m, "M").end_time.date() for m in months]
    cycle.features_step(max(cutoffs), settings, run_tests=False)
    churn_settings = ChurnSettings.from_config(dict(load_config(settings.config_path).get("churn") or {}))
    with open_warehouse(settings.warehouse_path) as con:
        orders = con.execute("select account_id, cast(order_date as date) as order_date from raw.order_lines where quantity > 0").df()
        orders["order_date"] = pd.to_datetime(orders["order_date"])
        for as_of in cutoffs:
            run_id = run_id_for(as_of)
            churn = score_run_churn(con, run_id, as_of, churn_settings)
            con.execute("delete from churn.risk_history where run_id = ?", [run_id])
            insert_frame(con, "churn.risk_history", churn.scores)
            say(f"  {as_of}: {churn.line()}")
            result.runs.append(score_run(con, as_of, run_id, orders, top_n))
    result.seconds = time.monotonic() - started
    result.cpu_seconds = time.process_time() - cpu_started
    return result


def backtest(
    parquet: Path, data_dir: Path, months: list[str] | None = None, top_n: int = 100, say: Callable[[str], None] = print
) -> BacktestResult:
    started, cpu_started = time.monotonic(), time.process_time()
    settings = prepare(parquet, data_dir)
    load_started = time.monotonic()
    cycle.ingest_step(dt.date(2011, 12, 31), settings)
    result = BacktestResult(load_seconds=time.monotonic() - load_started)
    with connect(settings.warehouse_path, read_only=True) as con:
        orders = con.execute("select account_id, cast(order_date as date) as order_date from raw.order_lines where quantity > 0").df()
    orders["order_date"] = pd.to_datetime(orders["order_date"])
    data_end = pd.Timestamp(orders["order_date"].max()).date()
    months = months or [str(p) for p in pd.period_range("2011-02", "2011-08", freq="M")]
    scored = []
    for month in months:
        as_of = min(pd.Period(month, "M").end_time.date(), data_end)
        cycle.features_step(as_of, settings, run_tests=False)
        segmented = cycle.segment_step(as_of, settings)
        drift = cycle.drift_step(as_of, settings)
        say(f"  {as_of}: k={segmented['k']}, {drift['summary']}")
        if pd.Timestamp(as_of) + pd.DateOffset(months=3) <= pd.Timestamp(data_end):
            scored.append((as_of, segmented["run_id"]))
    # Scored after the replay, from what each run stored; the peer is trained on the
    # features of the last replayed date's warehouse, on outcomes closed by each run's date.
    with connect(settings.warehouse_path, read_only=True) as con:
        for as_of, run_id in scored:
            result.runs.append(score_run(con, as_of, run_id, orders, top_n))
    result.seconds = time.monotonic() - started
    result.cpu_seconds = time.process_time() - cpu_started
    return result
