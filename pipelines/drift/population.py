"""How the segments themselves changed between two runs (MONIC-style transitions).

Following Spiliopoulou et al.'s MONIC, a segment X of the previous run and a segment Y of
this one are compared by their overlap: the share of X's accounts (present in both runs)
that are now in Y. With thresholds `survive` (default 0.5) and `split` (0.25):

- survive: X's best match Y holds at least `survive` of X, no other Y holds `split` of
  it, and X is Y's main source;
- split: at least two Ys each hold >= `split` of X and together >= `survive`;
- absorbed (merge): X survives into a Y that another X' survives into too;
- disappear: no Y holds even `split` of X;
- emerge: a Y to which no previous segment contributed >= `split` of its members.

Every event row carries the sizes before and after, the size change and, for survivors,
how far the segment's centre moved. The full transition matrix (accounts from X to Y) is
returned too.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


def transitions(previous: pd.Series, current: pd.Series) -> pd.DataFrame:
    """Accounts per (from, to) segment, over accounts in both runs."""
    both = pd.concat([previous.rename("from_segment_id"), current.rename("to_segment_id")], axis=1, join="inner")
    matrix = both.groupby(["from_segment_id", "to_segment_id"]).size().rename("accounts").reset_index()
    totals = matrix.groupby("from_segment_id")["accounts"].transform("sum")
    matrix["share_of_from"] = (matrix["accounts"] / totals).round(4)
    return matrix


def population_changes(
    previous: pd.Series,
    current: pd.Series,
    previous_centres: dict[str, np.ndarray],
    current_centres: dict[str, np.ndarray],
    survive: float = 0.5,
    split: float = 0.25,
) -> pd.DataFrame:
    matrix = transitions(previous, current)
    overlap = matrix.pivot_table(index="from_segment_id", columns="to_segment_id", values="share_of_from", fill_value=0.0)
    counts = matrix.pivot_table(index="from_segment_id", columns="to_segment_id", values="accounts", fill_value=0)
    size_before = previous.value_counts()
    size_after = current.value_counts()
    rows = []
    survivors: dict[str, str] = {}
    for x in overlap.index:
        best_y = overlap.loc[x].idxmax()
        best = overlap.at[x, best_y]
        # share of best_y's members (present in both runs) that came from x
        source_share = counts.at[x, best_y] / max(counts[best_y].sum(), 1)
        main_source = counts[best_y].idxmax() == x
        big = overlap.loc[x][overlap.loc[x] >= split]
        if best >= survive and main_source and len(big) < 2:
            survivors[x] = best_y
            continue
        if len(big) >= 2 and big.sum() >= survive:
            rows.append(
                _row("split", [x], list(big.index), float(big.sum()), size_before, size_after, None, {"shares": big.round(3).to_dict()})
            )
        elif best >= split:
            # most of x went to a segment that is someone else's continuation
            rows.append(
                _row("absorbed", [x], [best_y], float(best), size_before, size_after, None, {"source_share": round(float(source_share), 3)})
            )
        else:
            rows.append(_row("disappear", [x], [], float(best), size_before, size_after, None, {}))
    # survivors into the same Y are merges
    by_target: dict[str, list[str]] = {}
    for x, y in survivors.items():
        by_target.setdefault(y, []).append(x)
    for y, xs in by_target.items():
        kind = "merge" if len(xs) > 1 else "survive"
        shift = None
        if len(xs) == 1 and xs[0] in previous_centres and y in current_centres:
            shift = float(np.linalg.norm(np.asarray(current_centres[y]) - np.asarray(previous_centres[xs[0]])))
        rows.append(_row(kind, xs, [y], float(overlap.loc[xs, y].mean()), size_before, size_after, shift, {}))
    contributed = counts.div(counts.sum(axis=0), axis=1)  # share of Y's members from each X
    rows += [
        _row("emerge", [], [y], 0.0, size_before, size_after, None, {})
        for y in size_after.index
        if y not in contributed.columns or contributed[y].max() < split
    ]
    return pd.DataFrame(rows), matrix


def _row(event, xs, ys, overlap, size_before, size_after, centre_shift, detail) -> dict:
    before = int(sum(size_before.get(x, 0) for x in xs))
    after = int(sum(size_after.get(y, 0) for y in ys))
    return {
        "event": event,
        "from_segments": xs,
        "to_segments": ys,
        "overlap": round(overlap, 4),
        "size_before": before,
        "size_after": after,
        "size_change": round((after - before) / before, 4) if before else None,
        "centre_shift": round(centre_shift, 4) if centre_shift is not None else None,
        "detail": json.dumps(detail),
    }
