"""Churn-risk alerts as episodes: one open alert per account and reason.

Each run stores a snapshot of the accounts at churn risk (`alerts.risk_snapshots`). The
alerts themselves are derived from all snapshots in run order, so they are a pure function
of the runs: re-running a date replaces its snapshot and gives the same alerts, never a
second one.

- an alert opens the first run an (account, reason) is at risk; its id comes from account,
  reason and that run's date, so it stays the same for as long as it is open;
- it stays open while the account keeps showing up, and is resolved after it has been
  absent for `resolve_after_runs` consecutive runs (the account recovered);
- after a resolution the same account and reason do not open again within `cooldown_days`
  (the account team just dealt with it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.config import DriftConfig

# Defaults come from the typed configuration (pipelines/config.py): one place per key.
_DEFAULTS = DriftConfig()


@dataclass(frozen=True)
class EpisodeRules:
    resolve_after_runs: int = _DEFAULTS.resolve_after_runs
    cooldown_days: int = _DEFAULTS.cooldown_days


def alert_id(account_id: str, reason: str, opened_as_of: dt.date) -> str:
    digest = hashlib.sha256(f"{account_id}|{reason}|{opened_as_of.isoformat()}".encode()).hexdigest()[:16]
    return f"alert-{digest}"


COLUMNS = [
    "alert_id",
    "account_id",
    "reason",
    "status",
    "opened_run_id",
    "opened_as_of",
    "last_seen_run_id",
    "last_seen_as_of",
    "resolved_as_of",
    "runs_flagged",
    "score",
    "peak_score",
    "account_name",
    "account_owner",
    "from_segment",
    "to_segment",
    "evidence",
    "action",
]
SNAPSHOT_FIELDS = ["account_name", "account_owner", "from_segment", "to_segment", "evidence", "action"]


def episodes(snapshots: pd.DataFrame, runs: list[tuple[str, dt.date]], rules: EpisodeRules) -> pd.DataFrame:
    """All alert episodes from the risk snapshots of `runs` (run_id, as_of), oldest first.

    One pass over the runs, every (account, reason) at once (arrays of their state): the
    cost grows with runs times flagged keys, with no Python step per account.
    """
    if snapshots.empty or not runs:
        return pd.DataFrame(columns=COLUMNS)
    position = {run_id: r for r, (run_id, _) in enumerate(runs)}
    snaps = snapshots.reset_index(drop=True)
    run_of = snaps["run_id"].map(position)
    keys = snaps.groupby(["account_id", "reason"], sort=True).ngroup().to_numpy()
    n = int(keys.max()) + 1
    # which snapshot row (if any) flags each key in each run
    row_at = np.full((n, len(runs)), -1, dtype=np.int64)
    known = run_of.notna().to_numpy()
    row_at[keys[known], run_of[known].astype(int).to_numpy()] = np.flatnonzero(known)
    score = snaps["score"].to_numpy(float)

    is_open = np.zeros(n, dtype=bool)
    misses = np.zeros(n, dtype=np.int64)
    opened = np.zeros(n, dtype=np.int64)
    last_seen = np.zeros(n, dtype=np.int64)
    last_row = np.zeros(n, dtype=np.int64)
    flagged_runs = np.zeros(n, dtype=np.int64)
    peak = np.zeros(n)
    resolved_day = np.full(n, np.iinfo(np.int64).min // 2, dtype=np.int64)  # days since 1970; never
    closed: list[tuple[np.ndarray, int]] = []  # (keys, run index) of the episodes resolved then
    state = (opened, last_seen, last_row, flagged_runs, peak)
    for r, (_, as_of) in enumerate(runs):
        rows = row_at[:, r]
        flagged = rows >= 0
        day = (as_of - dt.date(1970, 1, 1)).days
        opening = flagged & ~is_open & ((day - resolved_day) >= rules.cooldown_days)
        is_open |= opening
        opened[opening], flagged_runs[opening], peak[opening] = r, 0, 0.0
        seen = flagged & is_open
        misses[seen] = 0
        last_seen[seen], last_row[seen] = r, rows[seen]
        flagged_runs[seen] += 1
        peak[seen] = np.maximum(peak[seen], score[rows[seen]])
        missing = ~flagged & is_open
        misses[missing] += 1
        resolving = missing & (misses >= rules.resolve_after_runs)
        if resolving.any():
            which = np.flatnonzero(resolving)
            closed.append((which, r, *(a[which].copy() for a in state)))
            is_open[which], misses[which], resolved_day[which] = False, 0, day
    which = np.flatnonzero(is_open)
    parts = [_frame(snaps, runs, k, resolved, *arrays) for k, resolved, *arrays in closed]
    parts.append(_frame(snaps, runs, which, None, *(a[which] for a in state)))
    frame = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame(columns=COLUMNS)
    return frame[COLUMNS].sort_values(["opened_as_of", "account_id", "reason"]).reset_index(drop=True)


def _frame(snaps, runs, keys, resolved, opened, last_seen, last_row, flagged_runs, peak) -> pd.DataFrame:
    """The episodes of `keys` (their state arrays), resolved at run `resolved` or still open."""
    if not len(keys):
        return pd.DataFrame(columns=COLUMNS)
    latest = snaps.iloc[last_row]
    run_ids = [r[0] for r in runs]
    dates = [r[1] for r in runs]
    accounts = latest["account_id"].to_numpy(dtype=object)
    reasons = latest["reason"].to_numpy(dtype=object)
    opened_as_of = [dates[i] for i in opened]
    out = pd.DataFrame(
        {
            "alert_id": [alert_id(a, why, d) for a, why, d in zip(accounts, reasons, opened_as_of, strict=True)],
            "account_id": accounts,
            "reason": reasons,
            "status": "open" if resolved is None else "resolved",
            "opened_run_id": [run_ids[i] for i in opened],
            "opened_as_of": opened_as_of,
            "last_seen_run_id": [run_ids[i] for i in last_seen],
            "last_seen_as_of": [dates[i] for i in last_seen],
            "resolved_as_of": None if resolved is None else dates[resolved],
            "runs_flagged": flagged_runs.astype(int),
            "score": latest["score"].to_numpy(float),
            "peak_score": peak.astype(float),
        }
    )
    for column in SNAPSHOT_FIELDS:
        out[column] = latest[column].to_numpy(dtype=object)
    return out
