"""Churn risk for one run: learn from history, score every customer, backtest, choose the threshold.

1. **Cutoffs**: monthly dates back from the run's as-of date (and the earlier runs' dates).
   At each, every customer that had bought gets its point-in-time features
   (`pipelines.churn.history`) and BG/NBD's figures fitted on that date's history (each
   cutoff's fit kept in `churn.bgnbd_fits` and reused while that history is unchanged).
2. **Training** reads only labels whose outcome window has closed by the date the model is
   for: for the run on date D, cutoffs c with c + horizon <= D. Above `max_training_rows`
   it learns from a fixed sample of accounts (`account_order`, a hash of the id): the
   cutoffs only learnt from are built for the sample alone (`history.training_sample`), the
   dates scored for every account. Too few closed labels
   (`min_training_rows`, `min_training_positives`): the churn probability is BG/NBD's
   chance of no purchase in the horizon, marked `bgnbd_cold_start`.
3. **Backtest**: every earlier run whose window has closed by now (the latest
   `backtest_runs`) is scored again exactly as it would have been then (trained only on
   what was closed on its date) and compared with what happened, on the customers who
   could stop (bought within the horizon before it): precision of the top k, AUC and Brier,
   each beside recency and BG/NBD on the same customers.
4. **Threshold**: the lowest probability at which the backtest's pooled precision still
   reaches `target_precision` (at least `min_alerts_for_threshold` accounts above it);
   without any closed earlier run, the out-of-fold predictions of the training cutoffs.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipelines.churn import bgnbd, history
from pipelines.churn.model import ChurnModel, fit
from pipelines.churn.reasons import cold_start_reasons, model_reasons
from pipelines.config import ChurnConfig
from pipelines.warehouse import release_buffers

log = logging.getLogger("needseg")

LIGHTGBM = "lightgbm"
COLD_START = "bgnbd_cold_start"
DRIFT_COLUMNS = ("drift_z", "drift_shift", "early_warning", "drift_flag", "migration_confirmed")


# Defaults come from the typed configuration (pipelines/config.py): one place per key.
_DEFAULTS = ChurnConfig()


@dataclass(frozen=True)
class ChurnSettings:
    horizon_months: int = _DEFAULTS.horizon_months
    training_cutoffs: int = _DEFAULTS.training_cutoffs
    min_training_rows: int = _DEFAULTS.min_training_rows
    min_training_positives: int = _DEFAULTS.min_training_positives
    max_training_rows: int = _DEFAULTS.max_training_rows
    bgnbd_max_accounts: int = _DEFAULTS.bgnbd_max_accounts
    top_k: int = _DEFAULTS.top_k
    target_precision: float = _DEFAULTS.target_precision
    min_alerts_for_threshold: int = _DEFAULTS.min_alerts_for_threshold
    backtest_runs: int = _DEFAULTS.backtest_runs
    seed: int = 42
    lapsing_action: str = _DEFAULTS.lapsing_action or ""

    @classmethod
    def from_config(cls, section: dict[str, Any], seed: int = 42) -> ChurnSettings:
        known = set(cls.__dataclass_fields__)
        values = {k: type(getattr(cls, k))(v) for k, v in section.items() if k in known and v is not None}
        return cls(**{"seed": seed, **values})


@dataclass
class Prediction:
    probability: np.ndarray
    margin: np.ndarray
    kind: str
    model: ChurnModel | None
    training_rows: int
    training_positives: int
    training_cutoffs: int


@dataclass
class ChurnResult:
    scores: pd.DataFrame  # one row per scored customer of this run
    quality: pd.DataFrame  # one row per earlier run and metric
    summary: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        s = self.summary
        if s["model"] == COLD_START:
            head = f"churn: BG/NBD only (cold start: {s['training_rows']} closed outcomes, {s['training_positives']} churned; too little history to learn from)"
        else:
            head = f"churn: LightGBM on {s['training_rows']} closed outcomes from {s['training_cutoffs']} cutoffs"
        if s.get("alert_threshold") is None:
            tail = f"no alert threshold reaches precision {s['target_precision']:.2f}: no lapsing alerts"
        else:
            tail = f"alert threshold {s['alert_threshold']:.2f} (precision {s['threshold_precision']:.2f}, {s['threshold_source']})"
        return f"{head}; {tail}; {s['lapsing']} lapsing"


def _month_back(as_of: dt.date, months: int) -> dt.date:
    day = pd.Timestamp(as_of) - pd.DateOffset(months=months)
    if pd.Timestamp(as_of).is_month_end:
        day = day + pd.offsets.MonthEnd(0)
    return day.date()


def cutoffs_for(as_of: dt.date, earlier_runs: list[dt.date], settings: ChurnSettings) -> list[dt.date]:
    """The run's date, its training cutoffs, and each earlier run's date and training cutoffs."""
    span = settings.horizon_months + settings.training_cutoffs
    dates = {as_of, *(_month_back(as_of, m) for m in range(settings.horizon_months, span))}
    for run in earlier_runs:
        dates |= {run, *(_month_back(run, m) for m in range(settings.horizon_months, span))}
    return sorted(dates)


def _eligible(frame: pd.DataFrame, horizon_months: int) -> pd.Series:
    """Customers who can stop: they bought within the horizon before the cutoff."""
    start = pd.to_datetime(frame["cutoff"]) - pd.DateOffset(months=horizon_months)
    return frame["recency_days"] < (pd.to_datetime(frame["cutoff"]) - start).dt.days


def predict_at(data: pd.DataFrame, when: dt.date, settings: ChurnSettings) -> Prediction:
    """Scores for the customers at cutoff `when`, from a model trained on what was closed then."""
    # one test per cutoff date, not per row
    closed = data["cutoff"].map({c: history.window_closed(c, when, settings.horizon_months) for c in data["cutoff"].unique()})
    closed = closed.to_numpy(dtype=bool)
    in_sample = data["training_sample"].to_numpy(bool) if "training_sample" in data else True
    train = sample_accounts(data[closed & in_sample & data["churned"].notna().to_numpy()], settings.max_training_rows)
    target = data[data["cutoff"] == when]
    y = train["churned"].astype(int).to_numpy()
    rows, positives, cutoffs = len(train), int(y.sum()), train["cutoff"].nunique()
    if rows < settings.min_training_rows or positives < settings.min_training_positives or rows == positives:
        p = target["bgnbd_p_no_purchase"].to_numpy(float)
        fallback = _rhythm_probability(target, settings.horizon_months)
        p = np.where(np.isfinite(p), p, fallback)
        return Prediction(p, np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1)), COLD_START, None, rows, positives, cutoffs)
    model = fit(train, y, settings.seed)
    return Prediction(model.probability(target), model.margin(target), LIGHTGBM, model, rows, positives, cutoffs)


def account_order(account_ids: pd.Series) -> np.ndarray:
    """A fixed pseudo-random rank per account (a hash of its id): the same account keeps its
    place whatever else is in the population, so a sample is the same accounts every month."""
    return pd.util.hash_array(account_ids.astype(str).to_numpy(dtype=object))


def sample_accounts(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """All rows of the accounts first in `account_order` while they fit in `max_rows`
    (every row when they all fit); the frame's row order is kept."""
    if len(frame) <= max_rows:
        return frame
    ids = frame["account_id"]
    per_account = ids.value_counts()
    ranked = per_account.iloc[np.argsort(account_order(per_account.index.to_series()), kind="stable")]
    keep = ranked.index[np.cumsum(ranked.to_numpy()) <= max_rows]
    return frame[ids.isin(keep).to_numpy()]


def _rhythm_probability(frame: pd.DataFrame, horizon_months: int) -> np.ndarray:
    """Where BG/NBD could not be fitted: P(no order) at the account's monthly rate, fading with silence."""
    rate = frame["purchase_rate_12m"].to_numpy(float)
    silence = frame["recency_days"].to_numpy(float)
    return 1 - (1 - np.exp(-horizon_months * rate)) * np.exp(-silence / (6 * 30.44))


def _precision_at(y: np.ndarray, score: np.ndarray, k: int) -> float:
    order = np.lexsort((np.arange(len(score)), -score))[:k]
    return float(y[order].mean()) if len(order) else float("nan")


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def _quality_rows(run_id: str, as_of: dt.date, when: dt.date, frame: pd.DataFrame, pred: Prediction, k: int) -> list[dict[str, Any]]:
    y = frame["churned"].astype(int).to_numpy()
    p = pred.probability
    recency = frame["recency_days"].to_numpy(float)
    bg = frame["bgnbd_p_no_purchase"].to_numpy(float)
    bg_rank = np.where(np.isfinite(bg), bg, -1.0)
    base = {
        "run_id": run_id,
        "as_of": as_of,
        "evaluated_as_of": when,
        "model": pred.kind,
        "accounts": len(y),
        "churned": int(y.sum()),
        "k": k,
    }
    metrics = {
        f"precision_at_{k}": (_precision_at(y, p, k), _precision_at(y, recency, k), _precision_at(y, bg_rank, k)),
        "auc": (_auc(y, p), _auc(y, recency), _auc(y, bg_rank)),
        "brier": (float(np.mean((p - y) ** 2)), None, float(np.nanmean((bg - y) ** 2)) if np.isfinite(bg).any() else None),
    }
    return [dict(base, metric=m, needseg=v[0], recency=v[1], bgnbd=v[2]) for m, v in metrics.items()]


def _threshold(probability: np.ndarray, y: np.ndarray, settings: ChurnSettings) -> tuple[float | None, float | None]:
    """Lowest probability whose accounts above it reach the target precision (pooled)."""
    if len(y) == 0:
        return None, None
    order = np.lexsort((np.arange(len(probability)), -probability))
    hits = np.cumsum(y[order])
    counts = np.arange(1, len(y) + 1)
    precision = hits / counts
    ok = np.flatnonzero((precision >= settings.target_precision) & (counts >= settings.min_alerts_for_threshold))
    if not len(ok):
        return None, None
    n = ok[-1]
    return float(probability[order][n]), float(precision[n])


def load(
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    earlier_runs: list[dt.date],
    settings: ChurnSettings,
    current_drift: pd.DataFrame | None,
    label_dates: tuple[dt.date, ...] | list[dt.date] = (),
) -> pd.DataFrame:
    """Features, BG/NBD and (closed) labels for every cutoff the run needs: its own, the
    training cutoffs of `earlier_runs` (scored again) and the dates of `label_dates`."""
    cutoffs = sorted(set(cutoffs_for(as_of, earlier_runs, settings)) | set(label_dates))
    # the dates scored (this run, earlier runs) hold every account; the cutoffs only learnt
    # from hold the training sample when the whole population would not fit the cap
    scored = {as_of, *earlier_runs, *label_dates}
    learnt = [c for c in cutoffs if c not in scored]
    sample = history.training_sample(con, max(learnt), settings.training_cutoffs, settings.max_training_rows) if learnt else None
    data = history.features(con, cutoffs, sample, scored)
    data["training_sample"] = data["account_id"].isin(sample) if sample is not None else True
    if current_drift is not None and len(current_drift):
        now = data["cutoff"] == as_of
        drift = current_drift.reindex(data.loc[now, "account_id"])
        for column in DRIFT_COLUMNS:
            if column in drift:
                values = pd.to_numeric(drift[column], errors="coerce").astype(float)
                data[column] = pd.to_numeric(data[column], errors="coerce").astype(float) if column in data else np.nan
                data.loc[now, column] = values.to_numpy()
    horizon_days = settings.horizon_months * 30.44
    data[["bgnbd_p_alive", "bgnbd_expected", "bgnbd_p_no_purchase"]] = bgnbd.per_cutoff(
        data, horizon_days, con, max_accounts=settings.bgnbd_max_accounts
    )
    outcomes = history.labels(con, cutoffs, as_of, settings.horizon_months, sample, scored)
    data = data.merge(outcomes, on=["cutoff", "account_id"], how="left")
    data["eligible"] = _eligible(data, settings.horizon_months)
    return data


def _stored(con: duckdb.DuckDBPyConnection, runs: list[dt.date]) -> pd.DataFrame:
    """What earlier runs predicted, as they stored it (churn.risk_history)."""
    columns = ["as_of", "account_id", "churn_probability", "model", "recency_days", "bgnbd_p_no_purchase", "eligible"]
    if not runs or not history._exists(con, "churn", "risk_history"):
        return pd.DataFrame(columns=columns)
    frame = con.execute(
        f"select {', '.join(columns)} from churn.risk_history where as_of in (select unnest(?::date[])) order by as_of, account_id", [runs]
    ).df()
    frame["as_of"] = pd.to_datetime(frame["as_of"]).dt.date
    return frame


def _earlier_run(
    data: pd.DataFrame, stored: pd.DataFrame, when: dt.date, settings: ChurnSettings
) -> tuple[pd.DataFrame, Prediction] | None:
    """An earlier run's predictions against what happened: as that run stored them, or,
    for a run from before the churn model existed, scored again with what was closed then."""
    target = data[data["cutoff"] == when]
    kept = stored[stored["as_of"] == when]
    if len(kept):
        frame = kept.drop(columns="as_of").merge(target[["account_id", "churned"]], on="account_id", how="inner")
        frame = frame[frame["eligible"].astype(bool) & frame["churned"].notna()]
        if frame.empty:
            return None
        p = frame["churn_probability"].to_numpy(float)
        return frame, Prediction(p, p, str(frame["model"].iloc[0]), None, 0, 0, 0)
    pred = predict_at(data, when, settings)
    keep = (target["eligible"] & target["churned"].notna()).to_numpy()
    if keep.sum() == 0:
        return None
    sub = Prediction(
        pred.probability[keep], pred.margin[keep], pred.kind, None, pred.training_rows, pred.training_positives, pred.training_cutoffs
    )
    return target[keep], sub


def score_run(
    con: duckdb.DuckDBPyConnection, run_id: str, as_of: dt.date, settings: ChurnSettings, current_drift: pd.DataFrame | None = None
) -> ChurnResult:
    earlier = [
        r[0]
        for r in con.execute("select distinct as_of from segments.segment_runs where as_of < ? order by as_of desc", [as_of]).fetchall()
        if history.window_closed(r[0], as_of, settings.horizon_months)
    ][: settings.backtest_runs]
    stored = _stored(con, earlier)
    replay = [d for d in earlier if d not in set(stored["as_of"])]
    data = load(con, as_of, replay, settings, current_drift, label_dates=earlier)
    release_buffers(con)  # the history's queries are done: DuckDB's kept buffers go back

    quality, pooled_p, pooled_y = [], [], []
    for when in sorted(earlier):
        scored = _earlier_run(data, stored, when, settings)
        if scored is None:
            continue
        frame, sub = scored
        quality += _quality_rows(run_id, as_of, when, frame, sub, settings.top_k)
        pooled_p.append(sub.probability)
        pooled_y.append(frame["churned"].astype(int).to_numpy())

    pred = predict_at(data, as_of, settings)
    current = data[data["cutoff"] == as_of].reset_index(drop=True)
    source = "backtest of earlier runs"
    y_pool = np.concatenate(pooled_y) if pooled_y else np.array([], dtype=int)
    threshold, reached = _threshold(np.concatenate(pooled_p) if pooled_p else np.array([]), y_pool, settings)
    if not pooled_y and pred.model is not None:
        source = "out-of-fold on the training cutoffs (no earlier run has closed yet)"
        threshold, reached = _threshold(pred.model.oof_probability, pred.model.oof_y, settings)

    scores = _scores(run_id, as_of, current, pred, settings)
    scores["lapsing"] = (threshold is not None) & scores["eligible"] & (scores["churn_probability"] >= (threshold or 0))
    summary = {
        "model": pred.kind,
        "training_rows": pred.training_rows,
        "training_positives": pred.training_positives,
        "training_cutoffs": pred.training_cutoffs,
        "alert_threshold": threshold,
        "threshold_precision": reached,
        "threshold_source": source if threshold is not None else None,
        "target_precision": settings.target_precision,
        "backtest_runs": len(pooled_y),
        "lapsing": int(scores["lapsing"].sum()),
    }
    return ChurnResult(scores, pd.DataFrame(quality, columns=QUALITY_COLUMNS), summary)


QUALITY_COLUMNS = ["run_id", "as_of", "evaluated_as_of", "model", "accounts", "churned", "k", "metric", "needseg", "recency", "bgnbd"]


def _scores(run_id: str, as_of: dt.date, current: pd.DataFrame, pred: Prediction, settings: ChurnSettings) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "run_id": run_id,
            "as_of": as_of,
            "account_id": current["account_id"],
            "churn_probability": np.round(pred.probability, 4),
            "model": pred.kind,
            "recency_days": current["recency_days"],
            "bgnbd_p_no_purchase": current["bgnbd_p_no_purchase"].round(4),
            "eligible": current["eligible"].astype(bool),
        }
    )
    order = np.lexsort((out["account_id"].to_numpy(), -pred.margin))
    rank = np.empty(len(out), dtype=int)
    rank[order] = np.arange(1, len(out) + 1)
    out["rank"] = rank
    if pred.model is None:
        out["reasons"] = cold_start_reasons(current, settings.horizon_months)
    else:
        out["reasons"] = model_reasons(pred.model.contributions(current), current, settings.horizon_months)
    return out


QUALITY_SQL = """
select metric, count(*) as runs, avg(needseg) as needseg, avg(recency) as recency, avg(bgnbd) as bgnbd
from {table} where as_of = (select max(as_of) from {table}) group by metric order by metric
"""


def quality_summary(quality: pd.DataFrame) -> str:
    """The backtest in one sentence (means over the evaluated runs), weak results said out loud."""
    if quality.empty:
        return "churn model backtest: no earlier run has a closed outcome window yet"
    by = quality.set_index("metric")
    runs = int(by["runs"].max())

    def fmt(v: Any) -> str:
        return "-" if v is None or pd.isna(v) else f"{v:.3f}"

    parts = [
        f"{metric.replace('_', ' ')}: needseg {fmt(row.needseg)}, recency {fmt(row.recency)}, BG/NBD {fmt(row.bgnbd)}"
        for metric, row in by.iterrows()
    ]
    text = f"churn model backtest over {runs} earlier run(s) with a closed outcome window: " + "; ".join(parts)
    auc = by["needseg"].get("auc")
    if auc is not None and pd.notna(auc) and pd.notna(by["bgnbd"].get("auc")) and auc < by["bgnbd"]["auc"]:
        text += " - WEAK: the model ranks worse than BG/NBD alone here"
    return text


def quality_lines(con: duckdb.DuckDBPyConnection) -> list[str]:
    """For `needseg status`: the latest run's churn model and its backtest."""
    if not history._exists(con, "churn", "model_runs"):
        return []
    latest = con.execute("select summary from churn.model_runs order by as_of desc limit 1").fetchone()
    if not latest:
        return []
    quality = con.execute(QUALITY_SQL.format(table="churn.model_quality")).df()
    return [latest[0], quality_summary(quality)]
