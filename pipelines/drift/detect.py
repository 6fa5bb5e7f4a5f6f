"""Drift per account and run: migrations, early warnings, and the churn-risk score.

(docs/design.md, "Drift".) After each segmentation run:

1. **Migration**: the account's segment differs from the previous run's (segment ids are
   aligned across runs, so a changed id is a real move). A migration is *confirmed* when
   the account's recent buying mix really moved along the direction from its previous
   segment to its new one (the same test as an early warning, with `confirm_migration_z`):
   an inferred account near a boundary can flip between runs on noise, and only confirmed
   migrations to price-sensitivity or away from partnership count as drift.
2. **Early warning**: the account's recent buying mix has moved away from its own segment
   towards another one (above all the taxonomy's `price_sensitive` segment; for accounts
   in the `partnership` segment, towards any other), before it has switched. The
   direction comes from this run's segment profiles: the behaviours that set the target
   segment apart from the account's segment (e.g. for quality & brand -> price: higher
   discounts, fewer list-price and premium lines). Two figures decide, both configurable:
   the evidence (a z-score: the components' two-sample z, signed along the direction,
   combined) and the size of the move (the share of the way from the account's segment's
   profile to the target's that its recent mix has gone). The behavioural model's
   probability for the target segment over recent runs is shown alongside.
3. **Churn risk**: drift towards price-sensitivity or away from partnership, combined with
   falling revenue or worsening satisfaction, scored 0-1 with its reasons.
4. **Lapse risk**, beside the alerts: the chance that the account places no order in the
   next `lapse_horizon_months`, at its own buying rhythm. It ranks every customer (with
   or without needs signals) for whoever works a list; alerts stay drift-based.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.drift.signals import COMPONENTS, LEVEL_SCALE, MixChange, Windows, mix_change
from pipelines.segmentation.taxonomy import Taxonomy

PRICE_KIND = "toward_price_sensitive"
AWAY_KIND = "away_from_partnership"
OTHER_KIND = "toward_other_segment"


@dataclass(frozen=True)
class DriftSettings:
    recent_months: int = 6
    baseline_months: int = 12
    early_warning_z: float = 3.5
    min_shift: float = 0.25
    confirm_migration_z: float = 2.5
    active_within_months: int = 4
    min_profile_gap: float = 0.7
    revenue_drop: float = 0.2
    satisfaction_drop: float = 1.0
    low_nps: float = 6.0
    alert_min_score: float = 0.35
    lapse_horizon_months: float = 3.0
    lapse_silence_months: float = 6.0

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> DriftSettings:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: type(getattr(cls, k))(v) for k, v in section.items() if k in known})


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


def _score_towards(
    change: MixChange, levels: pd.DataFrame, spread: pd.Series, accounts: pd.Index, current: str, target: str, min_gap: float
) -> pd.DataFrame:
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
        {"z": composite, "shift": np.nan_to_num(shift), "target": target, "components": [comps] * len(accounts)}, index=accounts
    )


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


def _fmt_rate(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v * 100:.0f} %"


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


def evidence_lines(account: str, comps: list[str], change: MixChange, windows: Windows) -> list[dict[str, Any]]:
    rows = []
    for c in comps:
        label = COMPONENTS[c][1]
        before, after = change.baseline.at[account, c], change.recent.at[account, c]
        z = float(change.z.at[account, c])
        n_recent, n_before = change.n_recent.at[account, c], change.n_baseline.at[account, c]
        if not (np.isfinite(before) and np.isfinite(after)):
            continue
        rows.append(
            {
                "signal": c,
                "label": label,
                "before": round(float(before), 4),
                "recent": round(float(after), 4),
                "z": round(z, 2),
                "recent_count": int(n_recent),
                "before_count": int(n_before),
                "text": (
                    f"{label} {_fmt_rate(before)} -> {_fmt_rate(after)} (last {windows.recent_months} months vs the "
                    f"{windows.baseline_months} before; {int(n_recent)} vs {int(n_before)} {UNITS[c]})"
                ),
            }
        )
    return sorted(rows, key=lambda r: -abs(r["z"]))


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
    windows = Windows(settings.recent_months, settings.baseline_months)
    segment_of = current["segment_id"]
    change = mix_change(monthly, windows)
    # customers with nothing in the window (no orders, quotes or tickets) have no evidence
    change = MixChange(
        recent=change.recent.reindex(segment_of.index),
        baseline=change.baseline.reindex(segment_of.index),
        z=change.z.reindex(segment_of.index).fillna(0.0),
        n_recent=change.n_recent.reindex(segment_of.index).fillna(0.0),
        n_baseline=change.n_baseline.reindex(segment_of.index).fillna(0.0),
        last_order_months_ago=change.last_order_months_ago.reindex(segment_of.index),
    )
    levels, spread = segment_profiles(features.reindex(segment_of.index), segment_of)
    price = taxonomy.role("price_sensitive")
    partnership = taxonomy.role("partnership")
    segments = list(levels.index)
    parts = []
    for seg in segments:
        members = segment_of.index[segment_of == seg]
        if members.empty:
            continue
        candidates = []
        if price and seg != price and price in segments:
            candidates.append((PRICE_KIND, price))
        if partnership and seg == partnership:
            candidates += [(AWAY_KIND, s) for s in segments if s not in (seg, price)]
        if not price and not partnership:
            candidates += [(OTHER_KIND, s) for s in segments if s != seg]
        if not candidates:
            continue
        best = None
        for kind, target in candidates:
            scored = _score_towards(change, levels, spread, members, seg, target, settings.min_profile_gap).assign(kind=kind)
            if best is None:
                best = scored
            else:
                # for a partnership account, the strongest move away counts; price first on ties
                better = scored["z"] > best["z"]
                best = best.where(~better, scored)
        parts.append(best)
    drift = pd.concat(parts) if parts else pd.DataFrame(columns=["z", "shift", "target", "components", "kind"])
    drift = drift.reindex(segment_of.index)

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
    out["ordering_recently"] = change.last_order_months_ago < settings.active_within_months
    out["early_warning"] = (
        (out["drift_z"] >= settings.early_warning_z) & (out["drift_shift"] >= settings.min_shift) & out["ordering_recently"]
    )

    def migration_kind(row) -> str | None:
        if not row["migrated"]:
            return None
        if price and row["segment_id"] == price:
            return PRICE_KIND
        if partnership and row["previous_segment_id"] == partnership:
            return AWAY_KIND
        return OTHER_KIND

    out["migration_kind"] = out.apply(migration_kind, axis=1)
    out["migration_z"] = np.nan
    out["migration_confirmed"] = False
    moved = out[out["migrated"] & out["previous_segment_id"].isin(levels.index) & out["segment_id"].isin(levels.index)]
    for (before, after), group in moved.groupby(["previous_segment_id", "segment_id"]):
        scored = _score_towards(change, levels, spread, group.index, before, after, settings.min_profile_gap)
        out.loc[group.index, "migration_z"] = scored["z"].round(3)
        out.loc[group.index, "migration_confirmed"] = (scored["z"] >= settings.confirm_migration_z) & (
            scored["shift"] >= settings.min_shift
        )
    out["drift_flag"] = (out["early_warning"] & out["drift_kind"].isin([PRICE_KIND, AWAY_KIND])) | (
        out["migration_confirmed"] & out["migration_kind"].isin([PRICE_KIND, AWAY_KIND])
    )

    # The behavioural model's probability for the target segment, now and 3 runs before.
    hist = probability_history
    runs = sorted(hist["as_of"].unique()) if len(hist) else []
    now_p = hist[hist["as_of"] == runs[-1]] if runs else hist
    before_p = hist[hist["as_of"] == runs[max(0, len(runs) - 4)]] if runs else hist
    key = lambda frame: frame.set_index(["account_id", "segment_id"])["behaviour_probability"]  # noqa: E731
    now_map, before_map = key(now_p), key(before_p)
    targets = list(zip(out.index, out["toward_segment_id"], strict=True))
    out["behaviour_probability_now"] = [now_map.get(t, np.nan) for t in targets]
    out["behaviour_probability_before"] = [before_map.get(t, np.nan) for t in targets]

    f = features.reindex(out.index)
    out["revenue_trend"] = pd.to_numeric(f["revenue_trend"], errors="coerce")
    out["satisfaction_change"] = pd.to_numeric(f["satisfaction_change"], errors="coerce")
    out["nps"] = pd.to_numeric(f["nps"], errors="coerce")
    out["lapse_risk"] = lapse_risk(f, settings.lapse_horizon_months, settings.lapse_silence_months)

    evidence, components, risk, reasons = [], [], [], []
    for account, row in out.iterrows():
        comps = drift.at[account, "components"] if isinstance(drift.at[account, "components"], list) else []
        lines = evidence_lines(account, comps, change, windows)
        text = [line["text"] for line in lines[:3]]
        target = row["toward_segment_id"]
        if np.isfinite(row["behaviour_probability_now"]) and np.isfinite(row["behaviour_probability_before"]):
            text.append(
                f"model probability of {names.get(target, target)} {row['behaviour_probability_before']:.2f} -> {row['behaviour_probability_now']:.2f} over recent runs"
            )
        # churn risk: a risky drift or migration, with falling revenue or satisfaction
        drift_strength = 0.0
        why = []
        if row["early_warning"] and row["drift_kind"] in (PRICE_KIND, AWAY_KIND):
            drift_strength = float(np.clip(row["drift_shift"], 0, 1))
            why.append(row["drift_kind"])
        if row["migration_confirmed"] and row["migration_kind"] in (PRICE_KIND, AWAY_KIND):
            drift_strength = max(drift_strength, 0.5)
            why.append("migration_" + row["migration_kind"])
        revenue_drop = (
            float(np.clip(-row["revenue_trend"], 0, 1))
            if np.isfinite(row["revenue_trend"]) and row["revenue_trend"] <= -settings.revenue_drop
            else 0.0
        )
        satisfaction_drop = 0.0
        if np.isfinite(row["satisfaction_change"]) and row["satisfaction_change"] <= -settings.satisfaction_drop:
            satisfaction_drop = float(np.clip(-row["satisfaction_change"] / 2, 0, 1))
        if np.isfinite(row["nps"]) and row["nps"] <= settings.low_nps:
            satisfaction_drop = max(satisfaction_drop, 0.5)
        if revenue_drop:
            why.append("falling_revenue")
            text.append(f"revenue run-rate {row['revenue_trend'] * 100:+.0f} % (last 3 months vs the 12 before)")
        if satisfaction_drop:
            why.append("worsening_satisfaction")
            if np.isfinite(row["satisfaction_change"]):
                text.append(f"satisfaction {row['satisfaction_change']:+.1f} since the previous survey wave")
        score = (
            0.5 * drift_strength + 0.5 * max(revenue_drop, satisfaction_drop)
            if drift_strength and (revenue_drop or satisfaction_drop)
            else 0.0
        )
        evidence.append(text)
        components.append(json.dumps(lines))
        risk.append(round(score, 3))
        reasons.append(json.dumps(why))
    out["evidence"] = [json.dumps(e, ensure_ascii=False) for e in evidence]
    out["evidence_text"] = ["; ".join(e) for e in evidence]
    out["components"] = components
    out["churn_risk_score"] = risk
    out["churn_risk_reasons"] = reasons
    out["is_churn_risk"] = out["churn_risk_score"] >= settings.alert_min_score
    return out
