"""Drift per account and run: migrations, early warnings, and the churn-risk score.

(docs/design.md, "Drift".) After each segmentation run:

1. **Migration**: the account's segment differs from the previous run's (segment ids are
   aligned across runs, so a changed id is a real move). A migration is *confirmed* when
   the account's recent buying mix really moved along the direction from its previous
   segment to its new one (the same test as an early warning, with `confirm_migration_z`):
   an inferred account near a boundary can flip between runs on noise, and only confirmed
   migrations to price-sensitivity or away from partnership count as drift.
2. **Early warning**: the account's recent buying mix has moved away from its own segment
   towards another one - any other one - before it has switched. The direction comes from
   this run's segment profiles: the behaviours that set the target segment apart from the
   account's segment (e.g. for quality & brand -> price: higher discounts, fewer list-price
   and premium lines). Two tests, either raises it (`_drift_targets`):
   - *sustained*: the full recent window (`recent_months`) against the baseline, each
     behaviour's count-based two-sample z signed along the direction and combined; the
     size of the move is the mean share of the way from the segment's profile to the
     target's (`early_warning_z`, `min_shift`);
   - *change-point scan*: every window from `shortest_recent_months` to `recent_months`,
     with standard errors that are at least the account's own month-to-month swing
     (signals.mix_change), the behaviours combined by weighted least squares along the
     direction (`_along`: the share of the way moved and its z), each behaviour's own z
     capped at `MAX_COMPONENT_Z` so one signal alone (a promotion's discounts) is not a
     drift; the strongest window counts, against a stricter `scan_z` (it looks in more
     places). It sees a move that began two months ago, undiluted by older months.
   Of the targets that clear a test, the one with the strongest evidence is shown
   (`drift_z`, `drift_shift`: the sustained test's unless only the scan cleared). Only
   moves towards the taxonomy's `price_sensitive` segment or away from its `partnership`
   segment are drift flags (and can alert); other moves stay early warnings (`drift_kind`
   toward_other_segment). The thresholds were calibrated on the evaluation suite and the
   default world together (docs/evaluation.md). The behavioural model's probability for
   the target segment over recent runs is shown alongside.
3. **Churn risk**: drift towards price-sensitivity or away from partnership, combined with
   falling revenue or worsening satisfaction, scored 0-1 with its reasons. A drift is
   flagged only with its own evidence: the account still orders, it has a target segment,
   and at least one of the move's buying-mix signals moves its way (signals moving the
   other way by more than `CONTRADICTING_Z` are listed as "against: ..."); a fall of the
   behavioural model's probability for the target (`contradicting_probability_drop`)
   stops the alert. A customer that stopped buying is lapsing, not drifting: the churn
   model (pipelines.churn) covers it.
4. **Lapse risk**, beside the alerts: the chance that the account places no order in the
   next `lapse_horizon_months`, at its own buying rhythm. It ranks every customer (with
   or without needs signals) for whoever works a list; alerts stay drift-based.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import DriftConfig
from pipelines.drift.signals import COMPONENTS, LEVEL_SCALE, MixChange, Windows, by_position, mix_change
from pipelines.drift import needs as stated
from pipelines.parallel import ordered_map
from pipelines.segmentation.taxonomy import Taxonomy
from pipelines.warehouse import in_memory

PRICE_KIND = "toward_price_sensitive"
AWAY_KIND = "away_from_partnership"
OTHER_KIND = "toward_other_segment"


# Defaults come from the typed configuration (pipelines/config.py): one place per key.
_DEFAULTS = DriftConfig()


@dataclass(frozen=True)
class DriftSettings:
    recent_months: int = _DEFAULTS.recent_months
    baseline_months: int = _DEFAULTS.baseline_months
    shortest_recent_months: int = _DEFAULTS.shortest_recent_months
    scan_z: float = _DEFAULTS.scan_z
    early_warning_z: float = _DEFAULTS.early_warning_z
    needs_z: float = _DEFAULTS.needs_z
    min_shift: float = _DEFAULTS.min_shift
    confirm_migration_z: float = _DEFAULTS.confirm_migration_z
    active_within_months: int = _DEFAULTS.active_within_months
    min_profile_gap: float = _DEFAULTS.min_profile_gap
    revenue_drop: float = _DEFAULTS.revenue_drop
    satisfaction_drop: float = _DEFAULTS.satisfaction_drop
    low_nps: float = _DEFAULTS.low_nps
    alert_min_score: float = _DEFAULTS.alert_min_score
    contradicting_probability_drop: float = _DEFAULTS.contradicting_probability_drop
    lapse_horizon_months: float = _DEFAULTS.lapse_horizon_months
    lapse_silence_months: float = _DEFAULTS.lapse_silence_months

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> DriftSettings:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: type(getattr(cls, k))(v) for k, v in section.items() if k in known})


# what `detect` reads of customer_features (the drift step selects these, not all ~80 columns)
FEATURE_COLUMNS = (
    "as_of",
    *(column for column, *_ in COMPONENTS.values()),
    "first_order_date",
    "days_since_last_order",
    "revenue_trend",
    "satisfaction_change",
    "nps",
    *stated.FEATURE_COLUMNS,
)


def segment_profiles(features: pd.DataFrame, segment_of: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Mean of each component's 12-month behaviour per segment, and its spread overall."""
    cols = [c for c, *_ in COMPONENTS.values()]
    values = features[cols].apply(pd.to_numeric, errors="coerce")
    for component, scale in LEVEL_SCALE.items():
        values[COMPONENTS[component][0]] = values[COMPONENTS[component][0]] * scale
    levels = values.groupby(segment_of.reindex(values.index)).mean()
    levels.columns = list(COMPONENTS)
    spread = values.std()
    spread.index = list(COMPONENTS)
    return levels, spread.replace(0, np.nan)


def _direction(levels: pd.DataFrame, spread: pd.Series, current: str, target: str, min_gap: float) -> dict[str, float]:
    """Components that set `target` apart from `current`: standardised profile gaps."""
    gap = ((levels.loc[target] - levels.loc[current]) / spread).dropna()
    chosen = gap[gap.abs() >= min_gap]
    if len(chosen) < 2:
        # too few clear differences: take the two largest, but never a behaviour that
        # hardly differs (it would only dilute the evidence of the ones that do)
        largest = gap.reindex(gap.abs().sort_values(ascending=False).index[:2])
        chosen = largest[largest.abs() >= min(min_gap, 0.2)]
        if chosen.empty:
            chosen = largest.iloc[:1]
    return chosen.to_dict()


def _measure(
    change: MixChange, levels: pd.DataFrame, accounts: pd.Index, current: str, target: str, comps: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(z, shift) of each account's move from `current` towards `target` in one window."""
    z, shift = _along(change, levels.loc[target, comps] - levels.loc[current, comps], accounts)
    return z, np.nan_to_num(shift)


def _sustained_towards(
    change: MixChange, levels: pd.DataFrame, spread: pd.Series, accounts: pd.Index, current: str, target: str, min_gap: float
) -> pd.DataFrame:
    """The sustained test: each account's move from `current` towards `target` in the full
    recent window (`change`): the components' count-based two-sample z, signed along the
    direction and combined, and the mean share of the way moved."""
    direction = _direction(levels, spread, current, target, min_gap)
    comps = list(direction)
    signs = np.sign(np.array([direction[c] for c in comps]))
    z = change.z.reindex(accounts).fillna(0.0)[comps].to_numpy()
    composite = (z * signs).sum(axis=1) / np.sqrt(len(comps))
    raw_gap = (levels.loc[target, comps] - levels.loc[current, comps]).to_numpy(float)
    moved = (change.recent.reindex(accounts)[comps] - change.baseline.reindex(accounts)[comps]).to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(np.isfinite(moved / raw_gap), np.clip(moved / raw_gap, -2, 3), 0.0)
    known = np.isfinite(moved).sum(axis=1)
    # no comparable window at all: no movement measured
    shift = np.divide(fraction.sum(axis=1), known, out=np.zeros(len(accounts)), where=known > 0)
    return pd.DataFrame(
        {
            "z": composite,
            "shift": np.nan_to_num(shift),
            "target": target,
            "components": [comps] * len(accounts),
            "signs": [list(signs)] * len(accounts),
        },
        index=accounts,
    )


def _scan_towards(
    changes: list[MixChange], levels: pd.DataFrame, spread: pd.Series, accounts: pd.Index, current: str, target: str, min_gap: float
) -> pd.DataFrame:
    """Each account's move from `current` towards `target` over every scanned window, with
    the window of the strongest evidence (column `window`: its position in `changes`; the
    longest on ties). A change-point scan: a move that began two months ago shows in the
    two-month window, undiluted by the older months of a longer one."""
    direction = _direction(levels, spread, current, target, min_gap)
    comps = list(direction)
    signs = [float(np.sign(direction[c])) for c in comps]
    measured = [_measure(change, levels, accounts, current, target, comps) for change in changes]
    z = np.vstack([m[0] for m in measured])
    shift = np.vstack([m[1] for m in measured])
    best = len(changes) - 1 - z[::-1].argmax(axis=0)
    at = np.arange(len(accounts))
    return pd.DataFrame(
        {
            "z": z[best, at],
            "shift": shift[best, at],
            "window": best,
            "target": target,
            "components": [comps] * len(accounts),
            "signs": [signs] * len(accounts),
        },
        index=accounts,
    )


# a component's own z counts up to this in a move's evidence: one signal alone (a
# promotion's discounts) does not make a drift
MAX_COMPONENT_Z = 4.0


def _along(change: MixChange, gap: pd.Series, accounts: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """How far each account moved along `gap` (target profile - current profile, per
    component): the weighted least-squares fit of its change (recent - baseline) as a share
    of the gap, alpha, and its z (alpha over its standard error). Each component weighs by
    how clearly it separates the two segments against how precisely the account's own
    change is measured, so a signal seen in few order lines counts for little."""
    g = gap.to_numpy(float)
    # the windows usually hold exactly `accounts` (drift targets take each segment's rows)
    rows = np.arange(len(accounts)) if change.z.index.equals(accounts) else change.z.index.get_indexer(accounts)
    cells = np.ix_(np.maximum(rows, 0), change.z.columns.get_indexer(list(gap.index)))
    known = (rows >= 0)[:, None]  # an account without figures has moved nowhere measurable
    delta = np.where(known, change.recent.to_numpy(float)[cells] - change.baseline.to_numpy(float)[cells], np.nan)
    se = np.where(known, change.se.to_numpy(float)[cells], np.nan)
    ok = np.isfinite(delta) & np.isfinite(se) & (se > 0)
    # no single signal carries a move on its own: each component's z counts up to MAX_COMPONENT_Z
    delta = np.clip(delta / np.where(ok, se, 1.0), -MAX_COMPONENT_Z, MAX_COMPONENT_Z) * se
    w = np.where(ok, 1.0 / np.where(ok, se, 1.0) ** 2, 0.0)
    info = (w * g**2).sum(axis=1)
    num = (w * g * np.where(ok, delta, 0.0)).sum(axis=1)
    alpha = np.divide(num, info, out=np.zeros(len(accounts)), where=info > 0)
    z = np.where(info > 0, alpha * np.sqrt(info), 0.0)
    return z, np.clip(alpha, -2, 3)


def lapse_risk(features: pd.DataFrame, horizon_months: float, silence_months: float) -> pd.Series:
    """P(no order in the next `horizon_months`) = 1 - P(still buying) * P(an order within
    the horizon at its monthly rate). The rate is the share of months with an order over
    the last 12 (or since the first order, if later); the chance it is still buying decays
    with its silence since the last order on a `silence_months` scale. No order at all: 1.

    Chosen on the Online Retail export (benchmarks/backtest_online_retail.py): frequency and recency together
    rank who stops better than recency alone, while "overdue against its own usual gap"
    ranks worse than either, as frequent buyers that pause mostly come back.
    """
    month = 30.44
    as_of = pd.to_datetime(features["as_of"])
    first = pd.to_datetime(features["first_order_date"], errors="coerce")
    observed = np.clip(np.ceil((as_of - first).dt.days / month), 1, 12)
    active = pd.to_numeric(features["active_months_12m"], errors="coerce").fillna(0)
    silence = pd.to_numeric(features["days_since_last_order"], errors="coerce")
    rate = (active / observed).clip(upper=1.0)
    p_order = 1 - np.exp(-horizon_months * rate)
    p_buying = np.exp(-silence / (silence_months * month))
    risk = (1 - p_buying * p_order).where(silence.notna() & first.notna(), 1.0)
    return risk.astype(float).clip(0, 1).round(4)


CONTRADICTING_Z = 1.0
UNITS = {
    "discount": "order lines",
    "list_price": "order lines",
    "premium": "order lines",
    "service": "order lines",
    "lost_on_price": "decided quotes",
    "price_tickets": "tickets",
    "critical_tickets": "tickets",
    "ordering_months": "months",
}


def scan_windows(settings: DriftSettings) -> list[Windows]:
    """The recent windows scanned, shortest first: `shortest_recent_months` .. `recent_months`
    months, each against the `baseline_months` before it."""
    shortest = min(settings.shortest_recent_months, settings.recent_months)
    return [Windows(r, settings.baseline_months) for r in range(shortest, settings.recent_months + 1)]


def _kind(seg: str, target: str, price: str | None, partnership: str | None) -> str:
    if price and target == price:
        return PRICE_KIND
    if partnership and seg == partnership:
        return AWAY_KIND
    return OTHER_KIND


def _stated_towards(
    needs: MixChange, needs_levels: pd.DataFrame, accounts: pd.Index, current: str, target: str, window: int
) -> pd.DataFrame:
    """The stated-needs test (pipelines/drift/needs.py): each account's needs move between its
    last two survey waves, as a share of the way from `current`'s needs profile to
    `target`'s, and its z."""
    if current in needs_levels.index and target in needs_levels.index:
        gap = (needs_levels.loc[target] - needs_levels.loc[current]).fillna(0.0)
        z, shift = _along(needs, gap, accounts)
    else:  # a segment none of whose members answered: no needs profile to move along
        z, shift = np.zeros(len(accounts)), np.zeros(len(accounts))
    return pd.DataFrame(
        {
            "z": z,
            "shift": np.nan_to_num(shift),
            "target": target,
            "components": [[]] * len(accounts),
            "signs": [[]] * len(accounts),
            "window": window,
        },
        index=accounts,
    )


def _drift_targets(
    changes: list[MixChange],
    levels: pd.DataFrame,
    spread: pd.Series,
    segment_of: pd.Series,
    taxonomy: Taxonomy,
    settings: DriftSettings,
    needs: MixChange | None = None,
    needs_levels: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per account: the move it is watched for (kind, target), its evidence (z, shift, the
    window read) and whether it clears a test (`clears`).

    Two tests, either raises an early warning:
    - sustained: the risky moves (towards price; for a partnership account, away from it
      to any other segment) over the full recent window, count-based z (`early_warning_z`);
    - change-point scan: a move towards ANY other segment (quality -> service too: only the
      risky kinds alert), over every scanned window, by weighted least squares with the
      month-to-month standard errors and capped per-signal z (`scan_z`, stricter: it looks
      in more places). Of the targets that clear it, the strongest evidence wins.
    - stated needs (`needs`, re-surveyed accounts only): the move of the account's answers
      between its last two survey waves towards any other segment's needs profile
      (`needs_z`); it raises a warning the buying mix does not (yet) show.
    The sustained test's move is shown when it clears or when neither does; a move raised
    by the stated needs alone keeps the buying-mix signals of its target as evidence (they
    support it or stand `against:` it)."""
    price = taxonomy.role("price_sensitive")
    partnership = taxonomy.role("partnership")
    segments = list(levels.index)
    parts = []
    assigned = segment_of.to_numpy()
    for seg in segments:
        at = np.flatnonzero(assigned == seg)
        members = segment_of.index[at]
        targets = [t for t in segments if t != seg]
        if members.empty or not targets:
            continue
        # the segment's own rows of every window, taken once by position (the windows are
        # aligned to segment_of), not looked up by account id for each target and window
        changes_of = [_rows(change, at) for change in changes]
        scan = _best(
            [_scan_towards(changes_of, levels, spread, members, seg, t, settings.min_profile_gap) for t in targets],
            [_kind(seg, t, price, partnership) for t in targets],
            settings.scan_z,
            settings.min_shift,
        )
        candidates = [
            _sustained_towards(changes_of[-1], levels, spread, members, seg, t, settings.min_profile_gap).assign(window=len(changes) - 1)
            for t in targets
        ]
        kinds = [_kind(seg, t, price, partnership) for t in targets]
        sustained = _best(candidates, kinds, settings.early_warning_z, settings.min_shift)
        use_scan = ~sustained["clears"] & scan["clears"]
        sustained.loc[use_scan] = scan.loc[use_scan]
        if needs is not None and needs_levels is not None:
            needs_of = _rows(needs, at)
            said = _best(
                [_stated_towards(needs_of, needs_levels, members, seg, t, len(changes) - 1) for t in targets],
                kinds,
                settings.needs_z,
                settings.min_shift,
            )
            use_needs = (~sustained["clears"] & said["clears"]).to_numpy()
            if use_needs.any():
                # the buying-mix signals of the stated target, as the sustained test reads them
                which = pd.Index(targets).get_indexer(said["target"].to_numpy()[use_needs])
                comps, signs = _per_frame(candidates, "components"), _per_frame(candidates, "signs")
                said = said.copy()
                said.loc[use_needs, "components"] = pd.Series(list(comps[which]), index=said.index[use_needs])
                said.loc[use_needs, "signs"] = pd.Series(list(signs[which]), index=said.index[use_needs])
                sustained.loc[use_needs] = said.loc[use_needs]
        parts.append(sustained)
    columns = ["z", "shift", "target", "components", "signs", "window", "kind", "clears"]
    drift = pd.concat(parts) if parts else pd.DataFrame(columns=columns)
    return drift.reindex(segment_of.index)


def _per_frame(scored: list[pd.DataFrame], column: str) -> np.ndarray:
    """The value `column` holds on every row of each candidate frame (None for an empty
    frame), as an object array (lists stay single elements, the same objects)."""
    values = np.empty(len(scored), dtype=object)
    for i, frame in enumerate(scored):
        values[i] = frame[column].iloc[0] if len(frame) else None
    return values


def _best(scored: list[pd.DataFrame], kinds: list[str], min_z: float, min_shift: float) -> pd.DataFrame:
    """Per account, of candidate moves `scored` (one frame per target, same accounts): the
    strongest that clears `min_z` and `min_shift`, else the strongest; column `clears`."""
    clears = np.vstack([((f["z"] >= min_z) & (f["shift"] >= min_shift)).to_numpy(bool) for f in scored])
    z = np.vstack([np.clip(f["z"].to_numpy(float), -999, 999) for f in scored])
    best = (clears * 2000.0 + z).argmax(axis=0)
    at = np.arange(z.shape[1])
    index = scored[0].index
    return pd.DataFrame(
        {
            "z": z[best, at],
            "shift": np.vstack([f["shift"].to_numpy(float) for f in scored])[best, at],
            "target": _per_frame(scored, "target")[best],
            # every row of a candidate frame holds the same list: pick it per account by
            # position, not with a frame lookup per account
            "components": _per_frame(scored, "components")[best],
            "signs": _per_frame(scored, "signs")[best],
            "window": np.vstack([f["window"].to_numpy() for f in scored])[best, at],
            "kind": np.array(kinds, dtype=object)[best],
            "clears": clears[best, at],
        },
        index=index,
    )


def _migrations(
    out: pd.DataFrame,
    changes: list[MixChange],
    levels: pd.DataFrame,
    spread: pd.Series,
    taxonomy: Taxonomy,
    settings: DriftSettings,
    needs: MixChange | None = None,
    needs_levels: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Kind, evidence and direction of every migration (vectorised per from -> to pair)."""
    price = taxonomy.role("price_sensitive")
    partnership = taxonomy.role("partnership")
    out["migration_kind"] = np.select(
        [~out["migrated"], (out["segment_id"] == price) & bool(price), (out["previous_segment_id"] == partnership) & bool(partnership)],
        [None, PRICE_KIND, AWAY_KIND],
        default=OTHER_KIND,
    )
    out["migration_kind"] = out["migration_kind"].where(out["migrated"], None)
    out["migration_z"] = np.nan
    out["migration_confirmed"] = False
    parts = []
    moved = out[out["migrated"] & out["previous_segment_id"].isin(levels.index) & out["segment_id"].isin(levels.index)]
    for (before, after), group in moved.groupby(["previous_segment_id", "segment_id"]):
        scored = _sustained_towards(changes[-1], levels, spread, group.index, before, after, settings.min_profile_gap)
        parts.append(scored.assign(window=len(changes) - 1))
    scored = pd.concat(parts) if parts else pd.DataFrame(columns=["z", "shift", "target", "components", "signs", "window"])
    scored = scored.reindex(out.index)
    out["migration_z"] = scored["z"].astype(float).round(3)
    out["migration_confirmed"] = (
        out["migrated"]
        & (scored["z"].astype(float) >= settings.confirm_migration_z)
        & (scored["shift"].astype(float) >= settings.min_shift)
    ).fillna(False)
    if needs is not None and needs_levels is not None:
        # or by the account's own answers: its needs moved from the old segment's profile to the new one's
        for (before, after), group in moved.groupby(["previous_segment_id", "segment_id"]):
            said = _stated_towards(needs, needs_levels, group.index, before, after, len(changes) - 1)
            confirmed = (said["z"] >= settings.needs_z) & (said["shift"] >= settings.min_shift)
            out.loc[confirmed.index[confirmed.to_numpy()], "migration_confirmed"] = True
    return scored


def _probabilities(out: pd.DataFrame, history: pd.DataFrame) -> None:
    """The behavioural model's probability for the target segment, now and 3 runs before."""
    out["behaviour_probability_now"] = np.nan
    out["behaviour_probability_before"] = np.nan
    if not len(history):
        return
    runs = sorted(history["as_of"].unique())
    key = pd.DataFrame({"account_id": out.index, "segment_id": out["toward_segment_id"].to_numpy()})
    for column, run in (("behaviour_probability_now", runs[-1]), ("behaviour_probability_before", runs[max(0, len(runs) - 4)])):
        at = history.loc[history["as_of"] == run, ["account_id", "segment_id", "behaviour_probability"]]
        merged = key.merge(at, on=["account_id", "segment_id"], how="left")
        out[column] = merged["behaviour_probability"].to_numpy(float)


def _fmt_rates(values: pd.Series) -> pd.Series:
    v = pd.to_numeric(values, errors="coerce").astype(float)
    return ((v * 100).round(0).astype("Int64").astype(str) + " %").where(v.notna(), "n/a")


def _evidence_long(
    accounts: pd.Index, comps: pd.Series, signs: pd.Series, change: MixChange, recent_months: pd.Series, baseline_months: int
) -> pd.DataFrame:
    """One row per account and buying-mix signal of its move, with the figures and words
    (each account's figures over its own scanned window, `recent_months`)."""
    listed = pd.DataFrame(
        {
            "account_id": accounts,
            "signal": comps.reindex(accounts).to_numpy(),
            "sign": signs.reindex(accounts).to_numpy(),
            "months": recent_months.reindex(accounts).to_numpy(),
        }
    )
    listed = listed[listed["signal"].str.len().fillna(0).to_numpy() > 0]
    long = listed.explode(["signal", "sign"], ignore_index=True)
    if long.empty:
        return pd.DataFrame(
            columns=["account_id", "signal", "label", "before", "recent", "z", "recent_count", "before_count", "supports", "text"]
        )
    pairs = pd.MultiIndex.from_frame(long[["account_id", "signal"]])
    for column, frame in (
        ("before", change.baseline),
        ("recent", change.recent),
        ("z", change.z),
        ("recent_count", change.n_recent),
        ("before_count", change.n_baseline),
    ):
        long[column] = frame.stack(future_stack=True).reindex(pairs).to_numpy(float)
    long = long[np.isfinite(long["before"]) & np.isfinite(long["recent"])].copy()
    long["label"] = long["signal"].map({c: v[1] for c, v in COMPONENTS.items()})
    along = long["z"] * long["sign"].astype(float)
    long["supports"] = along > 0
    # a signal that did not move (|z| <= 1 the other way) neither supports nor contradicts
    long = long[long["supports"] | (along < -CONTRADICTING_Z)].copy()
    counts = (
        long["recent_count"].astype(int).astype(str)
        + " vs "
        + long["before_count"].astype(int).astype(str)
        + " "
        + long["signal"].map(UNITS)
    )
    long["text"] = (
        np.where(long["supports"], "", "against: ")
        + long["label"]
        + " "
        + _fmt_rates(long["before"])
        + " -> "
        + _fmt_rates(long["recent"])
        + " (last "
        + long["months"].astype(int).astype(str)
        + f" months vs the {baseline_months} before; "
        + counts
        + ")"
    )
    long["before"] = long["before"].round(4)
    long["recent"] = long["recent"].round(4)
    long["z"] = long["z"].round(2)
    long["recent_count"] = long["recent_count"].astype(int)
    long["before_count"] = long["before_count"].astype(int)
    return long.drop(columns=["sign", "months"])


def _needs_evidence_long(
    frm: pd.Series, to: pd.Series, needs: MixChange, needs_levels: pd.DataFrame, needs_spread: pd.Series, waves: pd.Series, min_gap: float
) -> pd.DataFrame:
    """One row per re-surveyed account and needs item that sets its move's two segments
    apart (`frm` -> `to`, the segments of its drift or migration), as `_evidence_long`'s rows:
    the item's relative importance in the two waves, supporting the move or `against:` it."""
    parts = []
    known = to.notna() & frm.notna() & frm.isin(needs_levels.index) & to.isin(needs_levels.index)
    pairs = pd.DataFrame({"frm": frm[known], "to": to[known]})
    for (a, b), group in pairs.groupby(["frm", "to"]):
        if a == b:
            continue
        direction = _direction(needs_levels, needs_spread, a, b, min_gap)
        rows = needs.z.index.get_indexer(group.index)
        for item, gap in direction.items():
            parts.append(
                pd.DataFrame(
                    {
                        "account_id": group.index,
                        "signal": f"need_{item}",
                        "before": needs.baseline[item].to_numpy(float)[rows],
                        "recent": needs.recent[item].to_numpy(float)[rows],
                        "z": needs.z[item].to_numpy(float)[rows],
                        "recent_count": needs.n_recent[item].to_numpy(float)[rows],
                        "sign": float(np.sign(gap)),
                    }
                )
            )
    columns = ["account_id", "signal", "label", "before", "recent", "z", "recent_count", "before_count", "supports", "text"]
    if not parts:
        return pd.DataFrame(columns=columns)
    long = pd.concat(parts, ignore_index=True)
    long = long[np.isfinite(long["before"]) & np.isfinite(long["recent"])].copy()
    along = long["z"] * long["sign"]
    long["supports"] = along > 0
    long = long[long["supports"] | (along < -CONTRADICTING_Z)].copy()
    long["label"] = "stated importance of " + long["signal"].str.removeprefix("need_")
    # the respondents of the latest wave (the wave before is not counted per account)
    long["recent_count"] = long["recent_count"].fillna(0).astype(int)
    long["before_count"] = 0
    long["text"] = (
        np.where(long["supports"], "", "against: ")
        + long["label"]
        + " "
        + np.char.mod("%+.2f", long["before"].to_numpy(float))
        + " -> "
        + np.char.mod("%+.2f", long["recent"].to_numpy(float))
        + " ("
        + waves.reindex(long["account_id"]).to_numpy()
        + "; each answer against the respondent's own other answers)"
    )
    long["before"] = long["before"].round(4)
    long["recent"] = long["recent"].round(4)
    long["z"] = long["z"].round(2)
    return long[columns]


EVIDENCE_SQL = """
with agg as (
    select account_id,
           to_json(list(struct_pack(signal, label, before, recent, z, recent_count, before_count, supports, text)
                        order by abs(z) desc, signal)) as components,
           list(text order by abs(z) desc, signal) filter (where supports) as supporting,
           list(text order by abs(z) desc, signal) filter (where not supports) as against
    from long group by account_id
),
joined as (
    select acc.account_id, coalesce(agg.components, '[]') as components,
           list_concat(
               coalesce(agg.supporting[1:3], []::varchar[]),
               coalesce(agg.against, []::varchar[]),
               list_filter([acc.probability_text, acc.revenue_text, acc.satisfaction_text], lambda x: x is not null)
           ) as lines,
           list_filter([acc.early, acc.move, acc.revenue, acc.satisfaction], lambda x: x is not null) as why
    from acc left join agg using (account_id)
)
select account_id, components, to_json(lines) as evidence, array_to_string(lines, '; ') as evidence_text,
       to_json(why) as churn_risk_reasons
from joined
"""


def _fmt2(values: pd.Series) -> np.ndarray:
    v = values.to_numpy(float)
    return np.where(np.isfinite(v), np.char.mod("%.2f", np.nan_to_num(v)), "")


def _probability_text(out: pd.DataFrame, names: dict[str, str], settings: DriftSettings) -> pd.Series:
    """The behavioural model's probability of the target: support when it rose, `against:` when it fell."""
    target = out["toward_segment_id"].map(names).fillna(out["toward_segment_id"]).fillna("")
    now, before = out["behaviour_probability_now"], out["behaviour_probability_before"]
    known = np.isfinite(now) & np.isfinite(before)
    fell = known & (now <= before - settings.contradicting_probability_drop)
    out["probability_contradicts"] = fell
    text = "model probability of " + target + " " + _fmt2(before) + " -> " + _fmt2(now) + " over recent runs"
    return text.where(~fell, "against: " + text).where(known, None)


def _churn_risk(out: pd.DataFrame, settings: DriftSettings) -> pd.DataFrame:
    """A risky move (its own signals moving its way, nothing contradicting it) plus falling
    revenue or satisfaction; returns the reason codes and the words for revenue and satisfaction."""
    risky_early = out["early_warning"] & out["drift_kind"].isin([PRICE_KIND, AWAY_KIND])
    risky_move = out["migration_confirmed"] & out["migration_kind"].isin([PRICE_KIND, AWAY_KIND]) & out["ordering_recently"]
    strength = np.maximum(np.where(risky_early, out["drift_shift"].clip(0, 1), 0.0), np.where(risky_move, 0.5, 0.0))
    revenue = out["revenue_trend"]
    revenue_drop = np.where(np.isfinite(revenue) & (revenue <= -settings.revenue_drop), (-revenue).clip(0, 1), 0.0)
    sat = out["satisfaction_change"]
    satisfaction_drop = np.where(np.isfinite(sat) & (sat <= -settings.satisfaction_drop), (-sat / 2).clip(0, 1), 0.0)
    low_nps = np.isfinite(out["nps"]) & (out["nps"] <= settings.low_nps)
    satisfaction_drop = np.where(low_nps, np.maximum(satisfaction_drop, 0.5), satisfaction_drop)
    supported = out["drift_flag"] & ~out["probability_contradicts"]
    pressure = np.maximum(revenue_drop, satisfaction_drop)
    score = np.where((strength > 0) & (pressure > 0) & supported, 0.5 * strength + 0.5 * pressure, 0.0)
    out["churn_risk_score"] = np.round(score, 3)
    out["is_churn_risk"] = out["churn_risk_score"] >= settings.alert_min_score
    revenue_pct = (revenue * 100).round(0).astype("Int64").astype(str)
    return pd.DataFrame(
        {
            "account_id": out.index,
            "early": np.where(risky_early, out["drift_kind"], None),
            "move": np.where(risky_move, "migration_" + out["migration_kind"].fillna(""), None),
            "revenue": np.where(revenue_drop > 0, "falling_revenue", None),
            "satisfaction": np.where(satisfaction_drop > 0, "worsening_satisfaction", None),
            "revenue_text": np.where(revenue_drop > 0, "revenue run-rate " + revenue_pct + " % (last 3 months vs the 12 before)", None),
            "satisfaction_text": np.where(
                (satisfaction_drop > 0) & np.isfinite(sat),
                "satisfaction " + np.char.mod("%+.1f", np.nan_to_num(sat.to_numpy(float))) + " since the previous survey wave",
                None,
            ),
        }
    )


# Accounts whose evidence is built in one query: its list aggregates are held in memory
# whole, and at 1M accounts (~9M signal rows) one query ran out of DuckDB's 1 GB limit.
EVIDENCE_CHUNK = 200_000


def _evidence(out: pd.DataFrame, long: pd.DataFrame, acc: pd.DataFrame) -> None:
    """Evidence per account, EVIDENCE_CHUNK accounts per query: supporting signals first (the
    three strongest), contradicting ones marked `against:`, then model probability, revenue
    and satisfaction. Each account's evidence reads its own rows only, so the chunks give
    what one query over everyone gives."""
    position = pd.Index(acc["account_id"]).get_indexer(long["account_id"])
    parts = []
    with in_memory() as con:
        for start in range(0, max(len(acc), 1), EVIDENCE_CHUNK):
            rows = (position >= start) & (position < start + EVIDENCE_CHUNK)
            con.register("long", long[rows])
            con.register("acc", acc.iloc[start : start + EVIDENCE_CHUNK])
            parts.append(con.execute(EVIDENCE_SQL).df())
            con.unregister("long")
            con.unregister("acc")
    agg = pd.concat(parts, ignore_index=True).set_index("account_id").reindex(out.index)
    for column in ("components", "evidence", "evidence_text", "churn_risk_reasons"):
        out[column] = agg[column].to_numpy()


def _window_change(coded: pd.DataFrame, ids: pd.Index, accounts: pd.Index, window: Windows) -> MixChange:
    """One window's change (`mix_change` on the coded monthly rows), on exactly `accounts`."""
    return _aligned(mix_change(coded, window, ids), accounts)


def _rows(change: MixChange, at: np.ndarray) -> MixChange:
    """`change` on the rows at positions `at`."""
    return MixChange(
        **{f: getattr(change, f).iloc[at] for f in ("recent", "baseline", "z", "se", "n_recent", "n_baseline", "last_order_months_ago")}
    )


def _aligned(change: MixChange, accounts: pd.Index) -> MixChange:
    """`change` on exactly `accounts`: customers with nothing in the window (no orders,
    quotes or tickets) have no evidence (z 0, counts 0)."""
    return MixChange(
        recent=change.recent.reindex(accounts),
        baseline=change.baseline.reindex(accounts),
        z=change.z.reindex(accounts).fillna(0.0),
        se=change.se.reindex(accounts),
        n_recent=change.n_recent.reindex(accounts).fillna(0.0),
        n_baseline=change.n_baseline.reindex(accounts).fillna(0.0),
        last_order_months_ago=change.last_order_months_ago.reindex(accounts),
    )


def _picked(changes: list[MixChange], window: pd.Series) -> MixChange:
    """Per account the figures of its own window (`window`: position in `changes`)."""
    frames = {}
    for field in ("recent", "baseline", "z", "se", "n_recent", "n_baseline"):
        picked = getattr(changes[-1], field).copy()
        for w, change in enumerate(changes[:-1]):
            rows = window.index[window.to_numpy() == w]
            picked.loc[rows] = getattr(change, field).loc[rows]
        frames[field] = picked
    return MixChange(**frames, last_order_months_ago=changes[-1].last_order_months_ago)


def detect(
    features: pd.DataFrame,
    monthly: pd.DataFrame,
    current: pd.DataFrame,
    previous: pd.DataFrame | None,
    probability_history: pd.DataFrame,
    taxonomy: Taxonomy,
    names: dict[str, str],
    settings: DriftSettings,
) -> pd.DataFrame:
    """One row per current customer with its drift figures, evidence and churn risk.

    `current`/`previous`: assignments (index account_id; segment_id) of this run and the
    one before; `probability_history`: behaviour probability per account, segment and run
    (columns account_id, segment_id, as_of, behaviour_probability), oldest first.
    """
    windows = scan_windows(settings)
    segment_of = current["segment_id"]
    coded, ids = by_position(monthly)
    # the windows are independent: on every core (pipelines.parallel), in window order
    changes = ordered_map(partial(_window_change, coded, ids, segment_of.index), windows)
    del coded
    levels, spread = segment_profiles(features.reindex(segment_of.index), segment_of)
    # the stated-needs test: re-surveyed accounts' answers in their last two waves
    needs = stated.needs_change(features, segment_of.index)
    needs_levels, needs_spread = stated.needs_profiles(features, segment_of) if needs is not None else (None, None)
    drift = _drift_targets(changes, levels, spread, segment_of, taxonomy, settings, needs, needs_levels)

    out = pd.DataFrame(index=segment_of.index)
    out["segment_id"] = segment_of
    out["previous_segment_id"] = previous["segment_id"].reindex(out.index) if previous is not None else None
    out["migrated"] = out["previous_segment_id"].notna() & (out["previous_segment_id"] != out["segment_id"])
    out["drift_kind"] = drift["kind"]
    out["toward_segment_id"] = drift["target"]
    out["drift_z"] = drift["z"].astype(float).round(3)
    out["drift_shift"] = drift["shift"].astype(float).round(3)
    # An account that stopped ordering altogether has lapsed (a churn question), it is not
    # drifting: a drift shows in what it still buys.
    out["ordering_recently"] = (changes[-1].last_order_months_ago < settings.active_within_months).fillna(False).astype(bool)
    out["early_warning"] = drift["clears"].fillna(False).astype(bool) & out["ordering_recently"]
    moved = _migrations(out, changes, levels, spread, taxonomy, settings, needs, needs_levels)
    risky_move = out["migration_confirmed"] & out["migration_kind"].isin([PRICE_KIND, AWAY_KIND]) & out["ordering_recently"]
    risky_early = out["early_warning"] & out["drift_kind"].isin([PRICE_KIND, AWAY_KIND])
    # A confirmed risky migration without an early warning: the move is towards its new
    # segment, and its evidence is the migration's own signals.
    by_move = risky_move & ~risky_early
    out.loc[by_move, "drift_kind"] = out.loc[by_move, "migration_kind"]
    out.loc[by_move, "toward_segment_id"] = out.loc[by_move, "segment_id"]
    comps = drift["components"].where(~by_move, moved["components"])
    signs = drift["signs"].where(~by_move, moved["signs"])
    # the window each account's evidence is read over: its drift's, or its migration's
    window = drift["window"].where(~by_move, moved["window"]).fillna(len(windows) - 1).astype(int)
    window_months = window.map(lambda w: windows[w].recent_months).astype(int)
    _probabilities(out, probability_history)

    f = features.reindex(out.index)
    out["revenue_trend"] = pd.to_numeric(f["revenue_trend"], errors="coerce")
    out["satisfaction_change"] = pd.to_numeric(f["satisfaction_change"], errors="coerce")
    out["nps"] = pd.to_numeric(f["nps"], errors="coerce")
    out["lapse_risk"] = lapse_risk(f, settings.lapse_horizon_months, settings.lapse_silence_months)

    long = _evidence_long(out.index, comps, signs, _picked(changes, window), window_months, settings.baseline_months)
    if needs is not None:
        # the account's own answers, for the move shown: its drift's or its migration's segments
        frm = out["segment_id"].where(~by_move, out["previous_segment_id"])
        said = _needs_evidence_long(
            frm,
            out["toward_segment_id"],
            needs,
            needs_levels,
            needs_spread,
            stated.waves_text(features, out.index),
            settings.min_profile_gap,
        )
        if len(said):
            long = pd.concat([long, said], ignore_index=True) if len(long) else said
    supporting = long[long["supports"]].groupby("account_id").size() if len(long) else pd.Series(dtype=int)
    out["supporting_signals"] = supporting.reindex(out.index).fillna(0).astype(int)
    probability_text = _probability_text(out, names, settings)
    # a drift row always names its target and the signals that carry it
    out["drift_flag"] = (risky_early | risky_move) & out["toward_segment_id"].notna() & (out["supporting_signals"] > 0)
    acc = _churn_risk(out, settings)
    acc["probability_text"] = probability_text.to_numpy()
    _evidence(out, long, acc)
    return out
