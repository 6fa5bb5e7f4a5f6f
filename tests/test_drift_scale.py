"""Alert episodes at scale: one pass over the runs with every (account, reason) at once gives
exactly the episodes of the account-by-account state machine it replaced (kept here as the
reference), on random snapshot histories with resolutions, cooldowns and re-openings."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipelines.drift.episodes import COLUMNS, EpisodeRules, alert_id, episodes


def reference_episodes(snapshots: pd.DataFrame, runs: list[tuple[str, dt.date]], rules: EpisodeRules) -> pd.DataFrame:
    """All alert episodes from the risk snapshots of `runs` (run_id, as_of), oldest first."""
    columns = COLUMNS
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


def _history(seed: int, runs: int = 14, accounts: int = 60) -> tuple[pd.DataFrame, list[tuple[str, dt.date]]]:
    rng = np.random.default_rng(seed)
    dates = [(pd.Timestamp("2025-01-31") + pd.offsets.MonthEnd(i)).date() for i in range(runs)]
    run_list = [(f"seg-{d}", d) for d in dates]
    rows = []
    for a in range(accounts):
        for reason in ("lapsing", "drift_to_price_sensitive"):
            p = rng.uniform(0.1, 0.8)
            for run_id, d in run_list:
                if rng.random() < p:
                    rows.append(
                        {
                            "run_id": run_id,
                            "as_of": d,
                            "account_id": f"acc-{a:03d}",
                            "reason": reason,
                            "score": round(float(rng.random()), 3),
                            "account_name": f"Account {a}",
                            "account_owner": None if a % 7 == 0 else f"owner{a % 5}@example.com",
                            "from_segment": "S1",
                            "to_segment": None if reason == "lapsing" else "S2",
                            "evidence": f'["run {run_id}"]',
                            "action": "call",
                        }
                    )
    # a snapshot of a run that is not in the list is ignored
    rows.append({**rows[0], "run_id": "seg-other", "as_of": dt.date(2030, 1, 1)})
    return pd.DataFrame(rows).sort_values(["as_of", "account_id", "reason"], ignore_index=True), run_list


@pytest.mark.parametrize(
    ("seed", "rules"), [(1, EpisodeRules()), (2, EpisodeRules(1, 0)), (3, EpisodeRules(3, 90)), (4, EpisodeRules(2, 31))]
)
def test_vectorised_episodes_equal_the_account_by_account_state_machine(seed, rules):
    snaps, runs = _history(seed)
    got = episodes(snaps, runs, rules)
    want = reference_episodes(snaps, runs, rules)
    assert (got["status"] == "resolved").any() and (got["status"] == "open").any()
    assert got.groupby(["account_id", "reason"]).size().max() > 1  # re-opened after a resolution
    # (values equal; a column of only None may be object on one side and str on the other)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    # a prefix of the runs gives the episodes as they were then
    pd.testing.assert_frame_equal(episodes(snaps, runs[:5], rules), reference_episodes(snaps, runs[:5], rules), check_dtype=False)


def test_no_snapshots_no_episodes():
    assert episodes(pd.DataFrame(), [("r", dt.date(2025, 1, 31))], EpisodeRules()).empty
