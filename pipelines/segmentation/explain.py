"""Why an account is in its segment, in words an account team can use.

Two kinds of account, two kinds of driver, each true to how the segment was decided:

- A clustered account (surveyed, or every account of a behaviour taxonomy) is in its
  segment because of the dimensions it was clustered on. Its drivers are the dimensions
  where it differs from everyone in the same direction as its segment does (account's
  deviation in standard deviations times the segment's), e.g. "price importance +1.4
  (segment +1.1, all +0.0)".
- An inferred account is in its segment because the classifier said so. Its drivers are
  the classifier's own local attribution: for each of the forest's trees, the account's
  path from the root to its leaf changes the probability of the segment at every split;
  each change is credited to the feature split on (Saabas' decomposition, as in
  `treeinterpreter`). The base rate plus every feature's credit is exactly the forest's
  probability, so a driver's weight says how many probability points that feature added.
  A model input derived from a column (its log, its missing-value flag, a category
  indicator) is credited to the column. Only features that raised the probability are
  shown, largest first, with the account's value, the segment's typical value and
  everyone's among the surveyed accounts the model learnt from. A value the account does
  not have (missing, imputed for the model) is never cited as a driver, for either kind.

  With `segmentation.classifier: lightgbm` the attributions are LightGBM's own
  (`pred_contrib`, TreeSHAP) in log-odds, turned into probability points to first order
  (times p (1 - p) of the account's segment); the order of the drivers is TreeSHAP's.

  Why this and not a profile comparison or importance x deviation: those describe how the
  account resembles its segment, not what the model used; the forest's splits can rely on
  a feature an account is unremarkable on. Why not SHAP: it needs a new dependency; on
  trees Saabas' attribution is the exact path decomposition, deterministic and cheap
  (its known bias towards features split near the root is acceptable for a top-3 list).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pipelines.segmentation.inference import Inference

# column: (label, format) for behaviour drivers; needs are labelled from the dimension name.
LABELS = {
    "discount_depth_12m": ("discount depth", "pct"),
    "discount_depth_trend": ("discount depth trend", "pp"),
    "list_price_share_12m": ("revenue at list price", "pct"),
    "lost_on_price_share_12m": ("quotes lost on price", "pct"),
    "lost_on_price_share_trend": ("quotes lost on price, trend", "pp"),
    "quote_win_rate_12m": ("quote win rate", "pct"),
    "price_ticket_share_12m": ("price-related tickets", "pct"),
    "price_tickets_trend": ("price-related tickets, trend", "num"),
    "tickets_per_order_12m": ("tickets per order", "num"),
    "critical_ticket_share_12m": ("critical tickets", "pct"),
    "service_ticket_share_12m": ("technical & delivery tickets", "pct"),
    "service_revenue_share_12m": ("service revenue share", "pct"),
    "premium_share_12m": ("premium-category share", "pct"),
    "premium_share_trend": ("premium-category share, trend", "pp"),
    "return_share_12m": ("returns", "pct"),
    "order_regularity_12m": ("order regularity", "num"),
    "category_breadth_12m": ("category breadth", "pct"),
    "category_breadth_trend": ("category breadth, trend", "pp"),
    "active_months_12m": ("months with orders (of 12)", "int"),
    "web_order_share_12m": ("web orders", "pct"),
    "tenure_months": ("tenure (months)", "int"),
    "revenue_trend": ("revenue trend", "pct"),
    "revenue_12m": ("revenue, last 12 months", "amount"),
    "orders_12m": ("orders, last 12 months", "int"),
    "employees": ("employees", "int"),
    "annual_revenue": ("annual revenue", "amount"),
    "tickets_12m": ("tickets, last 12 months", "int"),
    "quotes_12m": ("quotes, last 12 months", "int"),
    "price_tickets_12m": ("price-related tickets, last 12 months", "int"),
    "critical_tickets_12m": ("critical tickets, last 12 months", "int"),
    "quotes_lost_on_price_12m": ("quotes lost on price, last 12 months", "int"),
    "average_order_value_12m": ("average order value", "amount"),
}


def _fmt(value: float, kind: str) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if kind == "pct":
        return f"{value * 100:.0f} %"
    if kind == "pp":
        return f"{value * 100:+.0f} pp"
    if kind == "int":
        return f"{value:.0f}"
    if kind == "amount":
        return f"{value:,.0f}"
    if kind in ("need", "sd"):
        value = round(value, 1) + 0.0  # no "-0.0"
        return f"{value:+.1f}" + (" sd" if kind == "sd" else "")
    return f"{value:.2f}"


def drivers(values: pd.DataFrame, segments: pd.Series, kind: str, top: int = 3) -> tuple[pd.Series, pd.Series]:
    """Clustered accounts: top dimensions as JSON and as one line of text.

    `values`: the accounts' clustering dimensions (kind "need": per-respondent normalised
    survey items; kind "dimension": a behaviour taxonomy's standardised dimensions);
    `segments`: their segment ids. Profiles come from the same accounts."""
    cols = [c for c in values.columns if values[c].notna().any()]
    mean = values[cols].mean()
    sd = values[cols].std().replace(0, np.nan)
    seg_mean = values[cols].groupby(segments).mean()
    profile = (seg_mean - mean) / sd  # segment's direction per dimension, in sd
    z = ((values[cols] - mean) / sd).to_numpy()
    rows = profile.reindex(segments).to_numpy()
    score = np.nan_to_num(z * rows, nan=-np.inf)
    order = np.argsort(-score, axis=1)[:, :top]
    raw = values[cols].to_numpy()
    seg_values = seg_mean.reindex(segments).to_numpy()
    overall = mean.to_numpy()
    labels = [f"{c.replace('_', ' ')} importance" if kind == "need" else c.replace("_", " ") for c in cols]
    # vectorised over accounts: one pass per driver rank, strings built column-wise
    n = len(values)
    at = np.arange(n)
    quoted_dims = np.array([json.dumps(c) for c in cols], dtype=object)
    quoted_labels = np.array([json.dumps(x) for x in labels], dtype=object)
    plain_labels = np.array(labels, dtype=object)
    unit = "" if kind == "need" else " sd"
    as_json = np.full(n, "[", dtype=object)
    as_text = np.full(n, "", dtype=object)
    alive = np.ones(n, dtype=bool)
    for rank in range(order.shape[1]):
        j = order[:, rank]
        weight = score[at, j]
        alive &= weight > 0
        if not alive.any():
            break
        v, s_, a = raw[at, j], seg_values[at, j], overall[j]
        item = (
            '{"dimension": '
            + quoted_dims[j]
            + ', "label": '
            + quoted_labels[j]
            + ', "value": '
            + _numbers(v, 4)
            + ', "segment_typical": '
            + _numbers(s_, 4)
            + ', "overall": '
            + _numbers(a, 4)
            + ', "weight": '
            + _numbers(np.where(alive, weight, 0.0), 3)
            + f', "kind": "{kind}"}}'
        )
        words = plain_labels[j] + " " + _signed(v, unit) + " (segment " + _signed(s_, unit) + ", all " + _signed(a, unit) + ")"
        separator = "" if rank == 0 else "; "
        as_json = np.where(alive, as_json + ("" if rank == 0 else ", ") + item, as_json)
        as_text = np.where(alive, as_text + separator + words, as_text)
    return pd.Series(as_json + "]", index=values.index), pd.Series(as_text, index=values.index)


def _numbers(x: np.ndarray, decimals: int) -> np.ndarray:
    """JSON numbers, rounded (a value not cited may be missing: written as 0, never shown)."""
    x = np.nan_to_num(np.asarray(x, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    return np.char.mod(f"%.{decimals}f", np.round(x, decimals) + 0.0).astype(object)


def _signed(x: np.ndarray, unit: str) -> np.ndarray:
    """As `_fmt` for kind need/sd, for arrays: +1.2, never -0.0."""
    x = np.nan_to_num(np.asarray(x, dtype=float), nan=0.0)
    return (np.char.mod("%+.1f", np.round(x, 1) + 0.0)).astype(object) + unit


def tree_contributions(forest, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Saabas' decomposition of a fitted forest classifier's probabilities.

    Returns `bias` (n x classes: the trees' root class shares, averaged) and
    `contributions` (n x features x classes) with
    bias + contributions.sum(axis=1) == forest.predict_proba(X)."""
    X = np.asarray(X, dtype=np.float32)
    n, n_features = X.shape
    n_classes = len(forest.classes_)
    bias = np.zeros(n_classes)
    total = np.zeros((n, n_features * n_classes))
    for tree_model in forest.estimators_:
        tree = tree_model.tree_
        value = tree.value[:, 0, :]
        value = value / value.sum(axis=1, keepdims=True)
        parent = np.full(tree.node_count, -1)
        for children in (tree.children_left, tree.children_right):
            has = children >= 0
            parent[children[has]] = np.nonzero(has)[0]
        nodes = np.nonzero(parent >= 0)[0]
        # entering a node changes the class shares by (node - parent), credited to the parent's split feature
        delta = np.zeros((tree.node_count, n_features, n_classes))
        delta[nodes, tree.feature[parent[nodes]], :] = value[nodes] - value[parent[nodes]]
        total += tree_model.decision_path(X) @ delta.reshape(tree.node_count, -1)
        bias += value[0]
    trees = len(forest.estimators_)
    return np.tile(bias / trees, (n, 1)), (total / trees).reshape(n, n_features, n_classes)


def _source_column(feature: str, categorical: list[str]) -> str:
    """The customer_features column a model input comes from."""
    name = feature.removeprefix("missingindicator_")
    for c in categorical:
        if name.startswith(f"{c}="):
            return c
    return name.removeprefix("log_")


def model_drivers(
    inference: Inference,
    frame: pd.DataFrame,
    segments: pd.Series,
    reference: pd.DataFrame,
    reference_segments: pd.Series,
    top: int = 3,
) -> tuple[pd.Series, pd.Series]:
    """Inferred accounts: the features that raised the classifier's probability of each
    account's segment most, as JSON and as one line of text (see the module docstring).

    `frame`: the accounts' customer_features rows; `segments`: their assigned segment
    ids; `reference`/`reference_segments`: the surveyed accounts the model learnt from,
    for the segment's typical value and everyone's."""
    from pipelines.segmentation.inference import CATEGORICAL_COLUMNS

    forest = inference.model[-1]
    X = inference.design(frame)
    if len(inference.model) == 1:
        # LightGBM: the library's own per-account attributions (TreeSHAP), per class, in
        # log-odds; the last column of each class is the expected value
        names = list(X.columns)
        raw = forest.predict(X, pred_contrib=True)
        n_classes = len(forest.classes_)
        contrib = np.asarray(raw).reshape(len(X), n_classes, len(names) + 1)[:, :, :-1].transpose(0, 2, 1)
        if forest.get_params().get("boosting_type") == "rf":
            contrib = contrib / forest.n_estimators_  # random-forest mode sums its trees' scores; the model averages them
        # to probability points, to first order: dp = p (1 - p) dz for a class's own score
        p = forest.predict_proba(X)
        contrib = contrib * (p * (1 - p))[:, None, :]
    else:
        prep = inference.model[:-1]
        inputs = prep.transform(X)
        names = list(prep.get_feature_names_out())
        _, contrib = tree_contributions(forest, inputs)
    class_index = {c: i for i, c in enumerate(forest.classes_)}
    sources = [_source_column(f, CATEGORICAL_COLUMNS) for f in names]
    columns = list(dict.fromkeys(sources))
    to_column = np.zeros((len(names), len(columns)))
    to_column[np.arange(len(names)), [columns.index(s) for s in sources]] = 1.0

    numeric = [c for c in columns if c not in CATEGORICAL_COLUMNS]
    ref_values = reference[numeric].apply(pd.to_numeric, errors="coerce")
    seg_typical = ref_values.groupby(reference_segments).mean()
    overall = ref_values.mean()
    values = frame[numeric].apply(pd.to_numeric, errors="coerce")
    blank = np.zeros((len(frame), len(columns)), dtype=bool)
    for j, column in enumerate(columns):
        blank[:, j] = (values[column] if column in values else frame[column]).isna().to_numpy()

    as_json, as_text = [], []
    for r, (account, seg) in enumerate(segments.items()):
        if seg not in class_index:
            as_json.append("[]")
            as_text.append("")
            continue
        per_column = contrib[r, :, class_index[seg]] @ to_column
        # a driver is never a missing value (nor the fact that it is missing)
        per_column[blank[r]] = -np.inf
        items, words = [], []
        for j in np.argsort(-per_column)[:top]:
            weight = float(per_column[j])
            if not weight > 0.0005:
                break
            column = columns[j]
            if column in CATEGORICAL_COLUMNS:
                value = str(frame.at[account, column]) if pd.notna(frame.at[account, column]) else "unknown"
                in_segment = reference.loc[reference_segments == seg, column].astype(str)
                seg_share = float((in_segment == value).mean()) if len(in_segment) else float("nan")
                all_share = float((reference[column].astype(str) == value).mean())
                items.append(
                    {
                        "dimension": column,
                        "label": column,
                        "value": value,
                        "segment_typical": round(seg_share, 4),
                        "overall": round(all_share, 4),
                        "weight": round(weight, 4),
                        "kind": "model",
                    }
                )
                words.append(f"{column} {value} ({_fmt(seg_share, 'pct')} of the segment, {_fmt(all_share, 'pct')} of all)")
                continue
            label, fmt = LABELS.get(column, (column.replace("_", " "), "num"))
            v = float(values.at[account, column])
            s_ = float(seg_typical.at[seg, column]) if seg in seg_typical.index else float("nan")
            a = float(overall[column])
            items.append(
                {
                    "dimension": column,
                    "label": label,
                    "value": None if np.isnan(v) else round(v, 4),
                    "segment_typical": None if np.isnan(s_) else round(s_, 4),
                    "overall": None if np.isnan(a) else round(a, 4),
                    "weight": round(weight, 4),
                    "kind": "model",
                }
            )
            words.append(f"{label} {_fmt(v, fmt)} (segment {_fmt(s_, fmt)}, all {_fmt(a, fmt)})")
        as_json.append(json.dumps(items))
        as_text.append("; ".join(words))
    return pd.Series(as_json, index=frame.index), pd.Series(as_text, index=frame.index)
