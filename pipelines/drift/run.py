"""The drift step of a cycle: per-account drift, population changes, churn-risk alerts.

Runs after the segmentation run for the same date and writes, replacing only that run's
rows (so a re-run gives the same tables):

- drift.customer_drift        one row per customer: migration, early warning, evidence, risk
- drift.segment_transitions   accounts from each previous segment to each current one
- drift.population_changes    survive / split / absorbed / merge / disappear / emerge events
- alerts.risk_snapshots       the accounts at churn risk in this run, with reason and evidence
- alerts.churn_risk_alerts    the alert episodes derived from all snapshots (replaced whole)

Delivery to account teams is a separate step (pipelines.alerts, the alerts DAG).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from pipelines.churn.run import ChurnResult, ChurnSettings, score_run
from pipelines.drift.detect import AWAY_KIND, FEATURE_COLUMNS, PRICE_KIND, DriftSettings, detect
from pipelines.drift.episodes import EpisodeRules, episodes
from pipelines.drift.population import population_changes
from pipelines.drift.signals import MONTHLY_COLUMNS
from pipelines.errors import NeedsegError
from pipelines.segmentation.run import continued_assignments, run_id_for
from pipelines.segmentation.taxonomy import Taxonomy
from pipelines.settings import release_process_memory
from pipelines.warehouse import ensure_schema, in_memory, insert_frame, release_buffers, transaction

RUN_TABLES = (
    "drift.customer_drift",
    "drift.segment_transitions",
    "drift.population_changes",
    "alerts.risk_snapshots",
    "churn.risk_history",
    "churn.model_quality",
    "churn.model_runs",
)

REASONS = {PRICE_KIND: "drift_to_price_sensitive", AWAY_KIND: "leaving_partnership"}
LAPSING = "lapsing"
LAPSING_ACTION = (
    "Call the account this week: its buying has slowed or stopped. Ask what changed (a competitor, a "
    "budget, a problem with us) and agree the next order or a review meeting."
)
SNAPSHOT_COLUMNS = [
    "run_id",
    "as_of",
    "account_id",
    "reason",
    "score",
    "account_name",
    "account_owner",
    "from_segment",
    "to_segment",
    "evidence",
    "action",
]


@dataclass
class DriftRunResult:
    run_id: str
    customers: int
    early_warnings: int
    migrations: int
    drift_flags: int
    churn_risks: int
    open_alerts: int
    new_alerts: int
    population_events: dict[str, int]
    seconds: float
    churn: str = ""

    def summary(self) -> str:
        events = ", ".join(f"{k} {v}" for k, v in sorted(self.population_events.items())) or "first run"
        return (
            f"{self.run_id}: {self.drift_flags} accounts drifting towards price-sensitivity or away from partnership "
            f"({self.early_warnings} early warnings, {self.migrations} segment changes), "
            f"{self.churn_risks} accounts at churn risk ({self.new_alerts} new alerts, {self.open_alerts} open); "
            f"segments: {events}; {self.churn}; {self.seconds:.1f} s"
        )


def drift_settings(config: dict[str, Any]) -> tuple[DriftSettings, EpisodeRules, dict[str, float]]:
    section = dict(config.get("drift") or {})
    rules = EpisodeRules(int(section.get("resolve_after_runs", 2)), int(section.get("cooldown_days", 60)))
    monic = {"survive": float(section.get("survive_overlap", 0.5)), "split": float(section.get("split_overlap", 0.25))}
    return DriftSettings.from_config(section), rules, monic


def run_drift(con: duckdb.DuckDBPyConnection, as_of: dt.date, taxonomy: Taxonomy, config: dict[str, Any]) -> DriftRunResult:
    started = time.monotonic()
    ensure_schema(con)
    settings, rules, monic = drift_settings(config)
    run_id = run_id_for(as_of)
    if not con.execute("select count(*) from segments.segment_runs where run_id = ?", [run_id]).fetchone()[0]:
        raise NeedsegError(f"no segmentation run as of {as_of}: segment first (needseg segment --as-of {as_of})")
    feature_columns = ", ".join(dict.fromkeys(("account_id", "account_name", "account_owner", *FEATURE_COLUMNS)))
    features = (
        con.execute(f"select {feature_columns} from marts.customer_features where status = 'customer' order by account_id")
        .df()
        .set_index("account_id")
    )
    if features.empty or pd.Timestamp(features["as_of"].iloc[0]).date() != as_of:
        raise NeedsegError(f"customer_features does not describe {as_of}: build the features for that date first")
    columns = ", ".join(MONTHLY_COLUMNS)
    monthly = con.execute(f"select {columns} from marts.customer_monthly_behaviour order by account_id, months_ago").df()
    current = (
        con.execute("select account_id, segment_id, segment_name from segments.assignments where run_id = ? order by account_id", [run_id])
        .df()
        .set_index("account_id")
    )
    # The run this one was aligned to, not merely the one before it: after a taxonomy change
    # segment ids mean something else, so there is nothing to migrate from or compare with.
    prev = con.execute(
        """
        select p.run_id, p.as_of from segments.segment_runs as r
        join segments.segment_runs as p on p.run_id = r.previous_run_id
        where r.run_id = ?
        """,
        [run_id],
    ).fetchone()
    previous = continued = None
    if prev:
        # a cluster that continues under another id keeps its members: not a change of segment
        continued = continued_assignments(con, run_id, prev[0])
        # the ids as the previous run stored them, for the population events (split, survive)
        previous = continued[["stored_segment_id"]].rename(columns={"stored_segment_id": "segment_id"})
    history = con.execute(
        """
        with lineage_runs as (
            select run_id, as_of from segments.segment_runs
            where as_of <= ? and lineage_id = (select lineage_id from segments.segment_runs where run_id = ?)
            order by as_of desc limit 4
        )
        -- detect reads the newest and the oldest of these runs only (now and 3 runs before)
        select account_id, segment_id, as_of, behaviour_probability from (
            select p.account_id, p.segment_id, r.as_of, p.behaviour_probability,
                   r.as_of in (max(r.as_of) over (), min(r.as_of) over ()) as used
            from segments.assignment_probabilities as p
            join lineage_runs as r using (run_id)
        )
        where used
        order by as_of, account_id, segment_id
        """,
        [as_of, run_id],
    ).df()
    # Every population's segments (key accounts may sit in a segment of their own fit);
    # where both name the same id, the main segmentation's entry wins.
    defs = con.execute(
        """
        select run_id, segment_id, segment_name, centre, action from segments.segment_definitions
        where run_id in (?, ?)
        order by run_id, segment_id, population = 'all'
        """,
        [run_id, prev[0] if prev else run_id],
    ).df()
    release_buffers(con)  # what DuckDB kept after reading the marts (pipelines.warehouse)
    names = dict(zip(defs["segment_id"], defs["segment_name"], strict=True))
    actions = {r.segment_id: r.action for r in defs[defs["run_id"] == run_id].itertuples()}

    drift = detect(features, monthly, current, continued, history, taxonomy, names, settings)
    # the monthly rows and the probabilities are detect's alone: hand their memory back
    # before the churn model reads the order history (at 100k accounts ~0.4 GB)
    del monthly, history
    release_process_memory()
    drift["segment_name"] = drift["segment_id"].map(names)
    drift["previous_segment_name"] = drift["previous_segment_id"].map(names)
    drift["toward_segment_name"] = drift["toward_segment_id"].map(names)
    drift["account_name"] = features["account_name"].reindex(drift.index)
    drift["account_owner"] = features["account_owner"].reindex(drift.index)
    drift = drift.reset_index().rename(columns={"index": "account_id"})
    drift.insert(0, "as_of", as_of)
    drift.insert(0, "run_id", run_id)

    churn_settings = ChurnSettings.from_config(
        dict(config.get("churn") or {}), seed=int((config.get("segmentation") or {}).get("seed", 42))
    )
    churn = score_run(con, run_id, as_of, churn_settings, current_drift=drift.set_index("account_id"))
    drift = _with_churn(drift, churn)
    snapshots = risk_snapshots(drift, names, actions, churn, churn_settings.lapsing_action or LAPSING_ACTION)

    transitions_frame = pd.DataFrame()
    events = pd.DataFrame()
    if previous is not None:
        centres = {(r.run_id, r.segment_id): json.loads(r.centre)["values"] for r in defs.itertuples()}
        events, transitions_frame = population_changes(
            previous["segment_id"],
            current["segment_id"],
            {s: c for (r, s), c in centres.items() if r == prev[0]},
            {s: c for (r, s), c in centres.items() if r == run_id},
            monic["survive"],
            monic["split"],
        )
        for frame in (events, transitions_frame):
            frame.insert(0, "as_of", as_of)
            frame.insert(0, "previous_run_id", prev[0])
            frame.insert(0, "run_id", run_id)

    with transaction(con):
        for table in RUN_TABLES:
            con.execute(f"delete from {table} where run_id = ?", [run_id])
        for table, frame in (
            ("drift.customer_drift", drift),
            ("drift.segment_transitions", transitions_frame),
            ("drift.population_changes", events),
            ("alerts.risk_snapshots", snapshots),
            (
                "churn.risk_history",
                churn.scores.drop(columns=["bgnbd_p_no_purchase"]).assign(bgnbd_p_no_purchase=churn.scores["bgnbd_p_no_purchase"]),
            ),
            ("churn.model_quality", churn.quality),
            ("churn.model_runs", _model_run(run_id, as_of, churn)),
        ):
            insert_frame(con, table, frame)
        all_snapshots = con.execute("select * from alerts.risk_snapshots order by as_of, account_id, reason").df()
        runs = [(r[0], r[1]) for r in con.execute("select run_id, as_of from segments.segment_runs order by as_of").fetchall()]
        alerts = episodes(all_snapshots, runs, rules)
        con.execute("delete from alerts.churn_risk_alerts")
        insert_frame(con, "alerts.churn_risk_alerts", alerts)
    open_now = alerts[(alerts["status"] == "open") & (alerts["last_seen_run_id"] == run_id)] if len(alerts) else alerts
    return DriftRunResult(
        run_id=run_id,
        customers=len(drift),
        early_warnings=int(drift["early_warning"].sum()),
        migrations=int(drift["migrated"].sum()),
        drift_flags=int(drift["drift_flag"].sum()),
        churn_risks=int(drift["is_churn_risk"].sum()),
        open_alerts=len(open_now),
        new_alerts=int((open_now["opened_run_id"] == run_id).sum()) if len(open_now) else 0,
        population_events=events["event"].value_counts().to_dict() if len(events) else {},
        seconds=round(time.monotonic() - started, 2),
        churn=churn.line(),
    )


def _with_churn(drift: pd.DataFrame, churn: ChurnResult) -> pd.DataFrame:
    """customer_drift carries the run's churn probability, rank, reasons and lapsing flag."""
    scores = churn.scores.set_index("account_id")
    keyed = drift.set_index("account_id")
    keyed["churn_probability"] = scores["churn_probability"]
    keyed["churn_rank"] = scores["rank"]
    keyed["churn_reasons"] = scores["reasons"]
    keyed["churn_model"] = scores["model"]
    keyed["lapsing"] = scores["lapsing"].reindex(keyed.index).fillna(False).astype(bool)
    return keyed.reset_index()


def risk_snapshots(
    drift: pd.DataFrame, names: dict[str, str], actions: dict[str, str], churn: ChurnResult, lapsing_action: str
) -> pd.DataFrame:
    """The accounts at churn risk this run, one row per reason (vectorised).

    A drift reason carries the drift's own evidence (detect only raises it when its signals
    move its way and nothing contradicts it). An account likely to stop buying, without a
    drift alert, is *lapsing*: its evidence is the churn model's reasons and probability.
    """
    risky = drift[drift["is_churn_risk"]]
    to_segment = risky["toward_segment_id"]
    moved_in = risky["drift_kind"].eq(risky["migration_kind"]) & risky["toward_segment_id"].eq(risky["segment_id"])
    from_segment = risky["previous_segment_id"].where(moved_in & risky["previous_segment_id"].notna(), risky["segment_id"])
    drift_rows = pd.DataFrame(
        {
            "account_id": risky["account_id"],
            "reason": risky["drift_kind"].map(REASONS),
            "score": risky["churn_risk_score"],
            "from_segment": from_segment.map(names).fillna(from_segment),
            "to_segment": to_segment.map(names).fillna(to_segment),
            "evidence": risky["evidence"],
            "action": to_segment.map(actions),
        }
    )
    lapsing = drift[drift["lapsing"] & ~drift["is_churn_risk"]]
    threshold = churn.summary.get("alert_threshold") or 0.0
    precision = churn.summary.get("threshold_precision") or 0.0
    probability = lapsing["churn_probability"].to_numpy(float)
    headline = (
        "churn probability "
        + np.char.mod("%.2f", probability)
        + f" (alert threshold {threshold:.2f}, precision {precision:.2f} in the backtest)"
    )
    evidence_frame = pd.DataFrame({"h": headline, "r": lapsing["churn_reasons"].fillna("").to_numpy()})
    with in_memory() as mem:
        mem.register("e", evidence_frame)
        evidence = mem.execute("select to_json(list_concat([h], string_split(r, '; '))) as evidence from e").df()["evidence"]
    lapse_rows = pd.DataFrame(
        {
            "account_id": lapsing["account_id"].to_numpy(),
            "reason": LAPSING,
            "score": probability,
            "from_segment": lapsing["segment_id"].map(names).fillna(lapsing["segment_id"]).to_numpy(),
            "to_segment": None,
            "evidence": evidence.to_numpy(),
            "action": lapsing_action,
        }
    )
    rows = pd.concat([drift_rows, lapse_rows], ignore_index=True)
    rows = rows[rows["reason"].notna()]
    rows = rows.merge(drift[["account_id", "account_name", "account_owner"]], on="account_id", how="left")
    rows.insert(0, "as_of", drift["as_of"].iloc[0] if len(drift) else None)
    rows.insert(0, "run_id", drift["run_id"].iloc[0] if len(drift) else None)
    return rows[SNAPSHOT_COLUMNS].sort_values(["account_id", "reason"]).reset_index(drop=True)


def _model_run(run_id: str, as_of: dt.date, churn: ChurnResult) -> pd.DataFrame:
    s = churn.summary
    row = {
        k: s.get(k)
        for k in (
            "model",
            "training_rows",
            "training_positives",
            "training_cutoffs",
            "backtest_runs",
            "alert_threshold",
            "threshold_precision",
            "threshold_source",
            "target_precision",
            "lapsing",
        )
    }
    return pd.DataFrame([{"run_id": run_id, "as_of": as_of, **row, "summary": churn.line()}])
