"""Inferred needs: a classifier that learns segments from surveyed accounts' behaviour.

Most accounts never answer a survey. A random forest learns the surveyed accounts'
segments from behaviour and firmographics and assigns everyone else, with a probability
per segment. Its held-out accuracy against the surveyed accounts' segments is kept with
the run: out of bag for the forest, cross-validated (5-fold) for LightGBM.

Why a forest: its training labels are clusters of noisy survey answers, so some are wrong.
Measured on worlds with more and less noise, the forest kept 93-100 % of what the best
classifier reaches with the TRUE labels, while gradient boosting (and ensembles with it)
fell to 80-88 % on the noisiest: it fits the wrong labels. The forest is also 3x faster.

The same model also scores surveyed accounts on data it did not learn them from (out of
bag: each account by the trees whose bootstrap left it out, ~74 of 200), so every account
has a behavioural probability per segment each run: drift detection watches those move.
Out of bag rather than 5-fold cross-validation since 2026-12-07: one forest instead of six,
and on the demo world (needseg evaluate) every segment, drift and churn figure stayed the
same, the accuracy moved 0.788 -> 0.791 (docs/scale.md).
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


def model(seed: int, classifier: str = "forest", oob: bool = False):
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
        OrderedForest(n_estimators=200, min_samples_leaf=3, max_features=0.3, random_state=seed, n_jobs=2, oob_score=oob),
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
    cv_recall: dict[str, float] = field(default_factory=dict)  # per class, held out (out of bag or fold)
    missing_share: dict[str, float] = field(default_factory=dict)  # per numeric input, among the scored accounts

    def design(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's inputs for `frame`, with the training columns."""
        numeric, logged = INPUTS[self.kind]
        X, _ = design_matrix(frame, numeric, logged, CATEGORICAL_COLUMNS, self.levels)
        return X.reindex(columns=self.features)


# Accounts scored (design matrix built and predicted) at a time: memory stays bounded
# whatever the population.
SCORE_CHUNK = 50_000


def training_sample(labels: pd.Series, cap: int | None, seed: int) -> pd.Index:
    """At most `cap` of the labelled accounts, each segment in proportion (at least one
    account per segment); every one of them when there are no more than `cap`. Seeded,
    in the accounts' own order."""
    from pipelines.segmentation.clustering import bounded_sample

    if cap is None or len(labels) <= cap:
        return labels.index
    return labels.index[bounded_sample(len(labels), cap, labels.astype(str).to_numpy(), seed)]


def _score(
    fitted, frame: pd.DataFrame, kind: str, levels: dict[str, list[str]], features: list[str], skip: np.ndarray | None = None
) -> tuple[pd.DataFrame, pd.Series]:
    """Probabilities for the rows of `frame` not in `skip` (a mask), SCORE_CHUNK rows at a
    time (no copy of the frame); and the count of missing values per model input among
    them (for the missing shares)."""
    numeric, logged = INPUTS[kind]
    parts, missing = [], pd.Series(0, index=features, dtype="int64")
    for start in range(0, len(frame), SCORE_CHUNK):
        chunk = frame.iloc[start : start + SCORE_CHUNK]
        if skip is not None:
            chunk = chunk[~skip[start : start + SCORE_CHUNK]]
        if not len(chunk):
            continue
        X, _ = design_matrix(chunk, numeric, logged, CATEGORICAL_COLUMNS, levels)
        X = X.reindex(columns=features)
        missing += X.isna().sum()
        parts.append(pd.DataFrame(fitted.predict_proba(X), index=chunk.index, columns=list(fitted.classes_)))
    if not parts:
        return pd.DataFrame(columns=list(fitted.classes_), dtype=float), missing
    return pd.concat(parts), missing


def fit_and_score(
    train: pd.DataFrame,
    labels: pd.Series,
    score: pd.DataFrame,
    seed: int,
    kind: str = "behaviour",
    classifier: str = "forest",
    sample: int | None = None,
) -> Inference:
    """Train on the rows of `train` that `labels` (their segments) names, score `score`.

    With kind="behaviour" the training accounts are scored on held-out data too - the
    forest's out-of-bag votes, LightGBM's 5-fold cross-validation - which also gives the
    held-out accuracy; prospects (kind="prospect") are never in the training set, so that
    model is fitted once.

    `sample` (segmentation.classifier_sample) bounds the training set: more labelled
    accounts than that and the model learns from a sample of them stratified by segment,
    held out on the same sample. Every account is still scored honestly: the
    sample's accounts out of bag (or fold), every other one - the labelled accounts left out
    included - by the model that never saw it. Accounts are scored in chunks.
    """
    numeric, logged = INPUTS[kind]
    keep = training_sample(labels, sample, seed)
    # `train` may hold more rows than the labels (e.g. every customer): the labels say which
    train, labels = train.loc[keep], labels.loc[keep]
    X_train, levels = design_matrix(train, numeric, logged, CATEGORICAL_COLUMNS)
    y = labels.to_numpy()
    classes = sorted(set(y))
    features = list(X_train.columns)
    base_rate = round(float(pd.Series(y).value_counts(normalize=True).max()), 4) if len(y) else None
    categorical = tuple(f"{cat}=" for cat in CATEGORICAL_COLUMNS)

    def missing_shares(counts: pd.Series, n: int) -> dict[str, float]:
        return {c: round(float(v) / n, 4) if n else 0.0 for c, v in counts.items() if not c.startswith(categorical)}

    if len(classes) == 1:
        X_score, _ = design_matrix(score, numeric, logged, CATEGORICAL_COLUMNS, levels)
        missing = missing_shares(X_score.reindex(columns=features).isna().sum(), len(score))
        probs = pd.DataFrame(1.0, index=score.index.append(train.index).unique(), columns=classes)
        return Inference(classes, probs, 1.0, len(train), features, None, kind, levels, base_rate, {}, missing)
    out_of_bag = kind == "behaviour" and classifier == "forest"
    fitted = model(seed, classifier, oob=out_of_bag).fit(X_train, y)
    classes = list(fitted.classes_)
    if kind != "behaviour":
        scored, counts = _score(fitted, score, kind, levels, features)
        return Inference(
            classes, scored, None, len(train), features, fitted, kind, levels, base_rate, {}, missing_shares(counts, len(score))
        )
    # the training accounts get out-of-fold probabilities below: score only the others
    in_train = score.index.isin(train.index)
    scored, counts = _score(fitted, score, kind, levels, features, skip=in_train)
    counts += X_train.reindex(index=score.index[in_train]).isna().sum()
    if out_of_bag:
        oof = fitted.steps[-1][1].oob_decision_function_
    else:
        folds = max(2, min(5, int(pd.Series(y).value_counts().min())))
        oof = cross_val_predict(
            model(seed, classifier), X_train, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), method="predict_proba"
        )
    predicted = np.array(classes)[oof.argmax(axis=1)]
    cv_accuracy = float((predicted == y).mean())
    recall = {c: round(float((predicted[y == c] == c).mean()), 4) for c in classes}
    in_fold = pd.DataFrame(oof, index=train.index, columns=classes)
    probs = pd.concat([scored, in_fold])
    return Inference(
        classes,
        probs,
        round(cv_accuracy, 4),
        len(train),
        features,
        fitted,
        kind,
        levels,
        base_rate,
        recall,
        missing_shares(counts, len(score)),
    )
