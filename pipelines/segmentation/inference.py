"""Inferred needs: a classifier that learns segments from surveyed accounts' behaviour.

Most accounts never answer a survey. A random forest learns the surveyed accounts'
segments from behaviour and firmographics and assigns everyone else, with a probability
per segment. Its cross-validated accuracy against the surveyed accounts' segments is kept
with the run.

Why a forest: its training labels are clusters of noisy survey answers, so some are wrong.
Measured on worlds with more and less noise, the forest kept 93-100 % of what the best
classifier reaches with the TRUE labels, while gradient boosting (and ensembles with it)
fell to 80-88 % on the noisiest: it fits the wrong labels. The forest is also 3x faster.

The same model also scores surveyed accounts, out of fold, so every account has a
behavioural probability per segment each run: drift detection watches those move.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import (
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline

# Behavioural proxies (docs/design.md) used as they are: shares, rates and trends.
BEHAVIOUR_COLUMNS = [
    "discount_depth_12m",
    "discount_depth_trend",
    "list_price_share_12m",
    "lost_on_price_share_12m",
    "lost_on_price_share_trend",
    "quote_win_rate_12m",
    "price_ticket_share_12m",
    "price_tickets_trend",
    "tickets_per_order_12m",
    "critical_ticket_share_12m",
    "service_ticket_share_12m",
    "service_revenue_share_12m",
    "premium_share_12m",
    "premium_share_trend",
    "return_share_12m",
    "order_regularity_12m",
    "category_breadth_12m",
    "category_breadth_trend",
    "active_months_12m",
    "web_order_share_12m",
    "revenue_trend",
]
# Counts and amounts are heavy-tailed: used on a log scale.
LOG_COLUMNS = [
    "revenue_12m",
    "orders_12m",
    "tenure_months",
    "employees",
    "annual_revenue",
    "tickets_12m",
    "quotes_12m",
    "price_tickets_12m",
    "critical_tickets_12m",
    "quotes_lost_on_price_12m",
    "average_order_value_12m",
]
# What is known of a prospect: firmographics and quotes.
PROSPECT_COLUMNS = ["quote_win_rate_12m", "lost_on_price_share_12m"]
PROSPECT_LOG_COLUMNS = ["employees", "annual_revenue", "quotes_12m", "quotes_lost_on_price_12m"]
CATEGORICAL_COLUMNS = ["industry", "country"]
INPUTS = {"behaviour": (BEHAVIOUR_COLUMNS, LOG_COLUMNS), "prospect": (PROSPECT_COLUMNS, PROSPECT_LOG_COLUMNS)}


def design_matrix(
    frame: pd.DataFrame, numeric: list[str], logged: list[str], categorical: list[str], levels: dict[str, list[str]] | None = None
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Model inputs from customer_features; `levels` fixes the categories seen in training."""
    parts = {c: pd.to_numeric(frame[c], errors="coerce").astype(float) for c in numeric if c in frame}
    for c in logged:
        if c in frame:
            parts[f"log_{c}"] = np.log1p(pd.to_numeric(frame[c], errors="coerce").astype(float).clip(lower=0))
    X = pd.DataFrame(parts, index=frame.index)
    if "revenue_trend" in X:
        X["revenue_trend"] = X["revenue_trend"].clip(-1, 3)
    levels = dict(levels or {})
    for c in categorical:
        if c not in frame:
            continue
        values = frame[c].fillna("unknown").astype(str)
        if c not in levels:
            counts = values.value_counts()
            levels[c] = sorted(counts[counts >= 5].index)
        for level in levels[c]:
            X[f"{c}={level}"] = (values == level).astype(float)
    return X, levels


CLASSIFIERS = ("lightgbm", "forest")


def model(seed: int, classifier: str = "forest"):
    """The classifier: scikit-learn's random forest, or LightGBM's random-forest mode
    (`segmentation.classifier: lightgbm`): the same bagged, decorrelated trees - robust to
    wrongly clustered training labels, see above - at a fraction of the cost, missing
    values handled by the trees themselves, and per-account attributions from the library
    (TreeSHAP, `pred_contrib`) for the drivers. Both are deterministic for a seed."""
    if classifier == "lightgbm":
        from lightgbm import LGBMClassifier

        return make_pipeline(
            LGBMClassifier(
                boosting_type="rf",
                n_estimators=200,
                num_leaves=31,
                min_child_samples=3,
                subsample=0.632,
                subsample_freq=1,
                colsample_bytree=0.3,
                random_state=seed,
                n_jobs=1,
                deterministic=True,
                force_col_wise=True,
                verbose=-1,
            )
        )
    if classifier != "forest":
        raise ValueError(f"segmentation.classifier must be one of {', '.join(CLASSIFIERS)}, not {classifier!r}")
    return make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        OrderedForest(n_estimators=200, min_samples_leaf=3, max_features=0.3, random_state=seed, n_jobs=2),
    )


class OrderedForest(RandomForestClassifier):
    """A random forest whose probabilities are the same to the bit on every run: it fits its
    trees in parallel (each tree has its own seed) but adds their votes in tree order. With
    n_jobs > 1 scikit-learn adds them in whatever order its threads finish, so the last bit
    of a probability, and every figure computed from it, could differ between two runs of the
    same inputs."""

    def predict_proba(self, X):
        n_jobs = self.n_jobs
        self.n_jobs = 1
        try:
            return super().predict_proba(X)
        finally:
            self.n_jobs = n_jobs


@dataclass
class Inference:
    classes: list[str]
    probabilities: pd.DataFrame  # every account scored (out of fold for training accounts)
    cv_accuracy: float | None
    training_accounts: int
    features: list[str]
    model: Pipeline | None = None  # fitted on every training account; None with a single class
    kind: str = "behaviour"
    levels: dict[str, list[str]] = field(default_factory=dict)
    base_rate: float | None = None  # share of the largest class among the training accounts
    cv_recall: dict[str, float] = field(default_factory=dict)  # per class, cross-validated
    missing_share: dict[str, float] = field(default_factory=dict)  # per numeric input, among the scored accounts

    def design(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's inputs for `frame`, with the training columns."""
        numeric, logged = INPUTS[self.kind]
        X, _ = design_matrix(frame, numeric, logged, CATEGORICAL_COLUMNS, self.levels)
        return X.reindex(columns=self.features)


def fit_and_score(
    train: pd.DataFrame, labels: pd.Series, score: pd.DataFrame, seed: int, kind: str = "behaviour", classifier: str = "forest"
) -> Inference:
    """Train on `train` (surveyed accounts with their segment), score `score`.

    With kind="behaviour" the training accounts are scored out of fold too (5-fold), which
    also gives the cross-validated accuracy; prospects (kind="prospect") are never in the
    training set, so that model is fitted once.
    """
    numeric, logged = INPUTS[kind]
    X_train, levels = design_matrix(train, numeric, logged, CATEGORICAL_COLUMNS)
    X_score, _ = design_matrix(score, numeric, logged, CATEGORICAL_COLUMNS, levels)
    X_score = X_score.reindex(columns=X_train.columns)
    y = labels.to_numpy()
    classes = sorted(set(y))
    features = list(X_train.columns)
    base_rate = round(float(pd.Series(y).value_counts(normalize=True).max()), 4) if len(y) else None
    missing = {
        c: round(float(v), 4) for c, v in X_score.isna().mean().items() if not c.startswith(tuple(f"{cat}=" for cat in CATEGORICAL_COLUMNS))
    }
    if len(classes) == 1:
        probs = pd.DataFrame(1.0, index=score.index.append(train.index).unique(), columns=classes)
        return Inference(classes, probs, 1.0, len(train), features, None, kind, levels, base_rate, {}, missing)
    fitted = model(seed, classifier).fit(X_train, y)
    classes = list(fitted.classes_)
    scored = pd.DataFrame(fitted.predict_proba(X_score), index=score.index, columns=classes)
    if kind != "behaviour":
        return Inference(classes, scored, None, len(train), features, fitted, kind, levels, base_rate, {}, missing)
    folds = max(2, min(5, int(pd.Series(y).value_counts().min())))
    oof = cross_val_predict(
        model(seed, classifier), X_train, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), method="predict_proba"
    )
    predicted = np.array(classes)[oof.argmax(axis=1)]
    cv_accuracy = float((predicted == y).mean())
    recall = {c: round(float((predicted[y == c] == c).mean()), 4) for c in classes}
    in_fold = pd.DataFrame(oof, index=train.index, columns=classes)
    probs = pd.concat([scored.drop(index=in_fold.index, errors="ignore"), in_fold])
    return Inference(classes, probs, round(cv_accuracy, 4), len(train), features, fitted, kind, levels, base_rate, recall, missing)
