"""The churn model: LightGBM on point-in-time features, Platt-calibrated, with its own attributions.

- `fit` trains a gradient-boosted classifier on the labelled (closed-window) rows and
  calibrates its margin with a logistic (Platt) map fitted on out-of-fold margins, folds
  grouped by cutoff so a fold never sees its own period; the ranking is the booster's, the
  probability the calibrated one.
- `reasons` turns LightGBM's per-account contributions (`pred_contrib`, in log-odds) into
  words: the feature groups that push this account's probability up most, each said with
  the account's own figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedKFold

# feature -> reason group (the words come per group, from the account's own figures)
FEATURES: dict[str, str] = {
    "recency_days": "recency",
    "overdue_ratio": "rhythm",
    "recency_vs_last_gap": "rhythm",
    "mean_gap_days": "rhythm",
    "median_gap_days": "rhythm",
    "gap_sd_days": "rhythm",
    "last_gap_days": "rhythm",
    "purchase_days": "frequency",
    "purchase_days_3m": "frequency",
    "purchase_days_6m": "frequency",
    "purchase_days_12m": "frequency",
    "active_months_12m": "frequency",
    "purchase_rate_12m": "frequency",
    "orders": "frequency",
    "purchase_days_trend": "trend",
    "revenue_trend": "trend",
    "revenue_3m": "trend",
    "revenue_prior_3m": "trend",
    "revenue": "value",
    "revenue_12m": "value",
    "order_value": "value",
    "lines_per_order": "value",
    "value_percentile": "value",
    "first_purchase_age_days": "tenure",
    "tenure_days": "tenure",
    "return_share": "returns",
    "discount_depth": "price",
    "discount_trend": "price",
    "lost_on_price_share_12m": "price",
    "price_tickets_12m": "price",
    "premium_share": "mix",
    "service_share": "mix",
    "tickets_12m": "service",
    "tickets_3m": "service",
    "critical_tickets_12m": "service",
    "satisfaction": "satisfaction",
    "nps": "satisfaction",
    "satisfaction_change": "satisfaction",
    "drift_z": "drift",
    "drift_shift": "drift",
    "early_warning": "drift",
    "drift_flag": "drift",
    "migration_confirmed": "drift",
    "migrations_6m": "drift",
    "bgnbd_p_alive": "bgnbd",
    "bgnbd_expected": "bgnbd",
    "bgnbd_p_no_purchase": "bgnbd",
}
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "num_threads": 1,
    "deterministic": True,
    "force_col_wise": True,
    "verbose": -1,
}
ROUNDS = 300


def design(frame: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns (absent sources: all missing, which LightGBM handles)."""
    return frame.reindex(columns=list(FEATURES)).apply(pd.to_numeric, errors="coerce").astype(float)


@dataclass
class ChurnModel:
    booster: lgb.Booster
    platt: LogisticRegression
    oof_probability: np.ndarray  # calibrated out-of-fold predictions of the training rows
    oof_y: np.ndarray

    def margin(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(design(frame), raw_score=True)

    def probability(self, frame: pd.DataFrame) -> np.ndarray:
        return self.platt.predict_proba(self.margin(frame).reshape(-1, 1))[:, 1]

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        contrib = self.booster.predict(design(frame), pred_contrib=True)
        return pd.DataFrame(contrib[:, :-1], columns=list(FEATURES), index=frame.index)


def _booster(X: pd.DataFrame, y: np.ndarray, seed: int) -> lgb.Booster:
    params = dict(PARAMS, seed=seed)
    return lgb.train(params, lgb.Dataset(X, label=y, free_raw_data=True), num_boost_round=ROUNDS)


def fit(train: pd.DataFrame, y: np.ndarray, seed: int) -> ChurnModel:
    X = design(train)
    groups = train["cutoff"].to_numpy()
    folds = (
        GroupKFold(n_splits=3).split(X, y, groups)
        if len(set(groups)) >= 3
        else StratifiedKFold(3, shuffle=True, random_state=seed).split(X, y)
    )
    oof = np.zeros(len(X))
    for fit_idx, held_idx in folds:
        oof[held_idx] = _booster(X.iloc[fit_idx], y[fit_idx], seed).predict(X.iloc[held_idx], raw_score=True)
    platt = LogisticRegression(C=1e6).fit(oof.reshape(-1, 1), y)
    return ChurnModel(_booster(X, y, seed), platt, platt.predict_proba(oof.reshape(-1, 1))[:, 1], y)
