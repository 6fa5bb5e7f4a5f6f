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


def episodes(snapshots: pd.DataFrame, runs: list[tuple[str, dt.date]], rules: EpisodeRules) -> pd.DataFrame:
    """All alert episodes from the risk snapshots of `runs` (run_id, as_of), oldest first."""
    columns = [
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
    if snapshots.empty:
        return pd.DataFrame(columns=columns)
    by_key = {key: frame.set_index("run_id") for key, frame in snapshots.groupby(["account_id", "reason"])}
    out = []
    for (account, reason), frame in by_key.items():
        open_episode = None
        misses = 0
        last_resolved: dt.date | None = None
        for run_id, as_of in runs:
            if run_id in frame.index:
                snap = frame.loc[run_id]
                if open_episode is None:
                    if last_resolved is not None and (as_of - last_resolved).days < rules.cooldown_days:
                        continue
                    open_episode = {
                        "alert_id": alert_id(account, reason, as_of),
                        "account_id": account,
                        "reason": reason,
                        "status": "open",
                        "opened_run_id": run_id,
                        "opened_as_of": as_of,
                        "resolved_as_of": None,
                        "runs_flagged": 0,
                        "peak_score": 0.0,
                    }
                misses = 0
                open_episode.update(
                    last_seen_run_id=run_id,
                    last_seen_as_of=as_of,
                    runs_flagged=open_episode["runs_flagged"] + 1,
                    score=float(snap["score"]),
                    peak_score=max(open_episode["peak_score"], float(snap["score"])),
                    account_name=snap["account_name"],
                    account_owner=snap["account_owner"],
                    from_segment=snap["from_segment"],
                    to_segment=snap["to_segment"],
                    evidence=snap["evidence"],
                    action=snap["action"],
                )
            elif open_episode is not None:
                misses += 1
                if misses >= rules.resolve_after_runs:
                    open_episode.update(status="resolved", resolved_as_of=as_of)
                    out.append(open_episode)
                    last_resolved = as_of
                    open_episode = None
                    misses = 0
        if open_episode is not None:
            out.append(open_episode)
    frame = pd.DataFrame(out, columns=columns)
    return frame.sort_values(["opened_as_of", "account_id", "reason"]).reset_index(drop=True)
