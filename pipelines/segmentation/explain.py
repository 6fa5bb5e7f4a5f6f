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

  At scale: each tree's path credits are tabulated once per node (root to node, level
  by level), and an account's credits are the sum over trees of its leaf's row for its own
  segment (`class_contributions`): no n x features x classes array, accounts in chunks of
  DRIVER_CHUNK, the JSON and the text built column-wise. LightGBM's TreeSHAP costs ~4 ms
  of CPU per account, ~40x the forest's credits, which is one reason the forest stays
  the default (docs/scale.md).

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

from pipelines.parallel import ordered_map

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
    "active_month_share_12m": ("months with orders (of the months on record)", "pct"),
    "orders_per_month_12m": ("orders per month", "num"),
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


def _leaf_table(tree, n_features: int) -> np.ndarray:
    """Per node of a fitted tree: the Saabas credits summed along the path from the root to
    it, node_count x classes x features. Entering a node changes the class shares by
    (node - parent), credited to the parent's split feature; nodes are filled level by
    level (vectorised over the nodes of a level)."""
    value = tree.value[:, 0, :]
    value = value / value.sum(axis=1, keepdims=True)
    count, n_classes = value.shape
    parent = np.full(count, -1)
    for children in (tree.children_left, tree.children_right):
        has = children >= 0
        parent[children[has]] = np.nonzero(has)[0]
    level = np.array([0])
    table = np.zeros((count, n_classes, n_features))
    while True:
        children = np.concatenate([tree.children_left[level], tree.children_right[level]])
        children = children[children >= 0]
        if not len(children):
            break
        up = parent[children]
        table[children] = table[up]
        table[children, :, tree.feature[up]] += value[children] - value[up]
        level = children
    return table


def tree_contributions(forest, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Saabas' decomposition of a fitted forest classifier's probabilities.

    Returns `bias` (n x classes: the trees' root class shares, averaged) and
    `contributions` (n x features x classes) with
    bias + contributions.sum(axis=1) == forest.predict_proba(X). Memory n x features x
    classes: for many accounts use `class_contributions`."""
    X = np.asarray(X, dtype=np.float32)
    n, n_features = X.shape
    n_classes = len(forest.classes_)
    bias = np.zeros(n_classes)
    total = np.zeros((n, n_classes, n_features))
    for tree_model in forest.estimators_:
        tree = tree_model.tree_
        value = tree.value[0, 0, :]
        bias += value / value.sum()
        total += _leaf_table(tree, n_features)[tree.apply(X)]
    trees = len(forest.estimators_)
    return np.tile(bias / trees, (n, 1)), (total / trees).transpose(0, 2, 1)


def class_contributions(forest, X: np.ndarray, class_of_row: np.ndarray) -> np.ndarray:
    """Saabas credits of each row's own class (`class_of_row`: a class position per row),
    n x features: `tree_contributions(...)[1][rows, :, class_of_row]` without building
    the n x features x classes array. Each tree adds the path credits of the leaf a row
    lands in (one table per tree, looked up by leaf)."""
    X = np.asarray(X, dtype=np.float32)
    total = np.zeros(X.shape)
    for tree_model in forest.estimators_:
        tree = tree_model.tree_
        total += _leaf_table(tree, X.shape[1])[tree.apply(X), class_of_row]
    return total / len(forest.estimators_)


def _source_column(feature: str, categorical: list[str]) -> str:
    """The customer_features column a model input comes from."""
    name = feature.removeprefix("missingindicator_")
    for c in categorical:
        if name.startswith(f"{c}="):
            return c
    return name.removeprefix("log_")


# Inferred accounts explained at a time (the attributions of a chunk are chunk x inputs x classes).
DRIVER_CHUNK = 20_000


def _own_class_credits(inference: Inference, X: pd.DataFrame, class_of_row: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The model inputs' names and each row's credits towards its own class (n x inputs)."""
    forest = inference.model[-1]
    rows = np.arange(len(X))
    if len(inference.model) == 1:
        # LightGBM: the library's own per-account attributions (TreeSHAP), per class, in
        # log-odds; the last column of each class is the expected value
        names = list(X.columns)
        raw = forest.predict(X, pred_contrib=True)
        n_classes = len(forest.classes_)
        contrib = np.asarray(raw).reshape(len(X), n_classes, len(names) + 1)[rows, class_of_row, :-1]
        if forest.get_params().get("boosting_type") == "rf":
            contrib = contrib / forest.n_estimators_  # random-forest mode sums its trees' scores; the model averages them
        # to probability points, to first order: dp = p (1 - p) dz for a class's own score
        p = forest.predict_proba(X)[rows, class_of_row]
        return names, contrib * (p * (1 - p))[:, None]
    prep = inference.model[:-1]
    return list(prep.get_feature_names_out()), class_contributions(forest, prep.transform(X), class_of_row)


def _fmt_array(x: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """`_fmt` for arrays, a format kind per value (pct, pp, int, amount, else two decimals)."""
    x = np.asarray(x, dtype=float)
    out = np.full(len(x), "n/a", dtype=object)
    finite = np.isfinite(x)
    for kind, pattern, scale in (("pct", "%.0f %%", 100.0), ("pp", "%+.0f pp", 100.0), ("int", "%.0f", 1.0), ("amount", "%.0f", 1.0)):
        at = finite & (kinds == kind)
        if at.any():
            text = np.char.mod(pattern, x[at] * scale).astype(object)
            if kind == "amount":  # thousands separators, as "{:,.0f}"
                text = pd.Series(text).str.replace(r"(\d)(?=(\d{3})+$)", r"\1,", regex=True).to_numpy(dtype=object)
            out[at] = text
    other = finite & ~np.isin(kinds, ["pct", "pp", "int", "amount"])
    if other.any():
        out[other] = np.char.mod("%.2f", x[other]).astype(object)
    return out


def json_numbers(x: np.ndarray, decimals: int) -> np.ndarray:
    """JSON numbers as `json.dumps(round(v, decimals))` writes them (12.5, 0.0641, 3.0),
    null where missing; vectorised."""
    x = np.asarray(x, dtype=float)
    out = np.full(len(x), "null", dtype=object)
    finite = np.isfinite(x)
    if finite.any():
        fixed = pd.Series(np.char.mod(f"%.{decimals}f", x[finite]).astype(object))
        # the shortest form: trailing zeros dropped, one kept after the point
        out[finite] = fixed.str.replace(r"(\.\d*?)0+$", r"\1", regex=True).str.replace(r"\.$", ".0", regex=True).to_numpy(dtype=object)
    return out


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
    for the segment's typical value and everyone's. Vectorised over accounts, in chunks of
    DRIVER_CHUNK (memory bounded whatever the population), the chunks on every core
    (pipelines.parallel: one chunk per thread in memory at a time, results in chunk order)."""
    parts = ordered_map(
        lambda i: _model_drivers_chunk(
            inference, frame.iloc[i : i + DRIVER_CHUNK], segments.iloc[i : i + DRIVER_CHUNK], reference, reference_segments, top
        ),
        range(0, len(frame), DRIVER_CHUNK),
    )
    if not parts:
        return pd.Series([], index=frame.index, dtype=object), pd.Series([], index=frame.index, dtype=object)
    return pd.concat([j for j, _ in parts]), pd.concat([t for _, t in parts])


def _model_drivers_chunk(
    inference: Inference, frame: pd.DataFrame, segments: pd.Series, reference: pd.DataFrame, reference_segments: pd.Series, top: int
) -> tuple[pd.Series, pd.Series]:
    from pipelines.segmentation.inference import CATEGORICAL_COLUMNS

    forest = inference.model[-1]
    class_index = {c: i for i, c in enumerate(forest.classes_)}
    seg = segments.to_numpy()
    class_of_row = pd.Series(seg).map(class_index)
    known = class_of_row.notna().to_numpy()
    class_of_row = class_of_row.fillna(0).to_numpy(dtype=int)
    names, contrib = _own_class_credits(inference, inference.design(frame), class_of_row)
    sources = [_source_column(f, CATEGORICAL_COLUMNS) for f in names]
    columns = list(dict.fromkeys(sources))
    to_column = np.zeros((len(names), len(columns)))
    to_column[np.arange(len(names)), [columns.index(s) for s in sources]] = 1.0
    per_column = contrib @ to_column

    numeric = [c for c in columns if c not in CATEGORICAL_COLUMNS]
    ref_values = reference[numeric].apply(pd.to_numeric, errors="coerce")
    seg_typical = ref_values.groupby(reference_segments).mean().reindex(columns=columns)
    overall = ref_values.mean().reindex(columns).to_numpy(dtype=float)
    values = frame[numeric].apply(pd.to_numeric, errors="coerce").reindex(columns=columns).to_numpy(dtype=float)
    text_values = np.full((len(frame), len(columns)), "", dtype=object)
    quoted_values = np.full((len(frame), len(columns)), "null", dtype=object)
    blank = np.zeros((len(frame), len(columns)), dtype=bool)
    for j, column in enumerate(columns):
        if column in CATEGORICAL_COLUMNS:
            raw = frame[column]
            blank[:, j] = raw.isna().to_numpy()
            text = raw.astype(str).where(raw.notna(), "unknown")
            text_values[:, j] = text.to_numpy(dtype=object)
            quoted_values[:, j] = text.map({u: json.dumps(u) for u in text.unique()}).to_numpy(dtype=object)
        else:
            blank[:, j] = np.isnan(values[:, j])
    # a driver is never a missing value (nor the fact that it is missing)
    per_column[blank] = -np.inf
    order = np.argsort(-per_column, axis=1, kind="stable")[:, :top]
    typical = seg_typical.reindex(seg).to_numpy(dtype=float)  # the account's segment's typical values

    # categorical drivers: the share of the account's value in its segment and among all
    share_in_segment = np.full((len(frame), len(columns)), np.nan)
    share_overall = np.full((len(frame), len(columns)), np.nan)
    for j, column in enumerate(columns):
        if column not in CATEGORICAL_COLUMNS:
            continue
        ref = reference[column].astype(str)
        by_segment = ref.groupby(reference_segments).value_counts(normalize=True)
        keys = pd.MultiIndex.from_arrays([seg, text_values[:, j]])
        share_in_segment[:, j] = by_segment.reindex(keys).fillna(0.0).to_numpy()
        share_in_segment[~np.isin(seg, by_segment.index.get_level_values(0)), j] = np.nan
        share_overall[:, j] = ref.value_counts(normalize=True).reindex(text_values[:, j]).fillna(0.0).to_numpy()

    label_of = np.array([c if c in CATEGORICAL_COLUMNS else LABELS.get(c, (c.replace("_", " "), "num"))[0] for c in columns], dtype=object)
    kind_of = np.array(["categorical" if c in CATEGORICAL_COLUMNS else LABELS.get(c, (c, "num"))[1] for c in columns], dtype=object)
    is_categorical = np.array([c in CATEGORICAL_COLUMNS for c in columns])
    quoted_columns = np.array([json.dumps(c) for c in columns], dtype=object)
    quoted_labels = np.array([json.dumps(x) for x in label_of], dtype=object)

    n = len(frame)
    at = np.arange(n)
    as_json = np.full(n, "[", dtype=object)
    as_text = np.full(n, "", dtype=object)
    alive = known.copy()
    for rank in range(order.shape[1]):
        j = order[:, rank]
        weight = per_column[at, j]
        alive &= weight > 0.0005
        if not alive.any():
            break
        cat = is_categorical[j]
        kinds = kind_of[j]
        v, s_, a = values[at, j], typical[at, j], overall[j]
        seg_share, all_share = share_in_segment[at, j], share_overall[at, j]
        value_json = np.where(cat, quoted_values[at, j], json_numbers(v, 4))
        item = (
            '{"dimension": '
            + quoted_columns[j]
            + ', "label": '
            + quoted_labels[j]
            + ', "value": '
            + value_json
            + ', "segment_typical": '
            + json_numbers(np.where(cat, seg_share, s_), 4)
            + ', "overall": '
            + json_numbers(np.where(cat, all_share, a), 4)
            + ', "weight": '
            + json_numbers(np.where(alive, weight, 0.0), 4)
            + ', "kind": "model"}'
        )
        numeric_words = (
            label_of[j] + " " + _fmt_array(v, kinds) + " (segment " + _fmt_array(s_, kinds) + ", all " + _fmt_array(a, kinds) + ")"
        )
        pct = np.full(n, "pct", dtype=object)
        category_words = (
            label_of[j]
            + " "
            + text_values[at, j]
            + " ("
            + _fmt_array(seg_share, pct)
            + " of the segment, "
            + _fmt_array(all_share, pct)
            + " of all)"
        )
        words = np.where(cat, category_words, numeric_words)
        as_json = np.where(alive, as_json + ("" if rank == 0 else ", ") + item, as_json)
        as_text = np.where(alive, as_text + ("" if rank == 0 else "; ") + words, as_text)
    return pd.Series(as_json + "]", index=frame.index), pd.Series(as_text, index=frame.index)
