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
import pandas as pd

from pipelines.drift.detect import AWAY_KIND, PRICE_KIND, DriftSettings, detect
from pipelines.drift.episodes import EpisodeRules, episodes
from pipelines.drift.population import population_changes
from pipelines.errors import NeedsegError
from pipelines.segmentation.run import ensure_tables as ensure_segmentation_tables
from pipelines.segmentation.run import run_id_for
from pipelines.segmentation.taxonomy import Taxonomy
from pipelines.warehouse import ensure_table, insert_frame

DDL = [
    """create table if not exists drift.customer_drift (
        run_id varchar not null, as_of date not null, account_id varchar not null,
        account_name varchar, account_owner varchar,
        segment_id varchar not null, segment_name varchar, previous_segment_id varchar, previous_segment_name varchar,
        migrated boolean not null, migration_kind varchar, migration_z double, migration_confirmed boolean,
        drift_flag boolean,
        drift_kind varchar, toward_segment_id varchar, toward_segment_name varchar,
        drift_z double, drift_shift double, ordering_recently boolean, early_warning boolean not null,
        behaviour_probability_now double, behaviour_probability_before double,
        revenue_trend double, satisfaction_change double, nps double,
        churn_risk_score double not null, churn_risk_reasons json, is_churn_risk boolean not null,
        lapse_risk double,
        evidence json, evidence_text varchar, components json,
        primary key (run_id, account_id))""",
    """create table if not exists drift.segment_transitions (
        run_id varchar not null, previous_run_id varchar not null, as_of date not null,
        from_segment_id varchar not null, to_segment_id varchar not null,
        accounts integer not null, share_of_from double not null)""",
    """create table if not exists drift.population_changes (
        run_id varchar not null, previous_run_id varchar not null, as_of date not null,
        event varchar not null, from_segments varchar[], to_segments varchar[],
        overlap double, size_before integer, size_after integer, size_change double,
        centre_shift double, detail json)""",
    """create table if not exists alerts.risk_snapshots (
        run_id varchar not null, as_of date not null, account_id varchar not null, reason varchar not null,
        score double not null, account_name varchar, account_owner varchar,
        from_segment varchar, to_segment varchar, evidence json, action varchar,
        primary key (run_id, account_id, reason))""",
    """create table if not exists alerts.churn_risk_alerts (
        alert_id varchar primary key, account_id varchar not null, reason varchar not null, status varchar not null,
        opened_run_id varchar not null, opened_as_of date not null, last_seen_run_id varchar not null,
        last_seen_as_of date not null, resolved_as_of date, runs_flagged integer not null,
        score double, peak_score double, account_name varchar, account_owner varchar,
        from_segment varchar, to_segment varchar, evidence json, action varchar)""",
]
RUN_TABLES = ("drift.customer_drift", "drift.segment_transitions", "drift.population_changes", "alerts.risk_snapshots")

REASONS = {PRICE_KIND: "drift_to_price_sensitive", AWAY_KIND: "leaving_partnership"}


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists drift")
    con.execute("create schema if not exists alerts")
    for ddl in DDL:
        ensure_table(con, ddl)


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

    def summary(self) -> str:
        events = ", ".join(f"{k} {v}" for k, v in sorted(self.population_events.items())) or "first run"
        return (
            f"{self.run_id}: {self.drift_flags} accounts drifting towards price-sensitivity or away from partnership "
            f"({self.early_warnings} early warnings, {self.migrations} segment changes), "
            f"{self.churn_risks} accounts at churn risk ({self.new_alerts} new alerts, {self.open_alerts} open); "
            f"segments: {events}; {self.seconds:.1f} s"
        )


def drift_settings(config: dict[str, Any]) -> tuple[DriftSettings, EpisodeRules, dict[str, float]]:
    section = dict(config.get("drift") or {})
    rules = EpisodeRules(int(section.get("resolve_after_runs", 2)), int(section.get("cooldown_days", 60)))
    monic = {"survive": float(section.get("survive_overlap", 0.5)), "split": float(section.get("split_overlap", 0.25))}
    return DriftSettings.from_config(section), rules, monic


def run_drift(con: duckdb.DuckDBPyConnection, as_of: dt.date, taxonomy: Taxonomy, config: dict[str, Any]) -> DriftRunResult:
    started = time.monotonic()
    ensure_tables(con)
    ensure_segmentation_tables(con)
    settings, rules, monic = drift_settings(config)
    run_id = run_id_for(as_of)
    if not con.execute("select count(*) from segments.segment_runs where run_id = ?", [run_id]).fetchone()[0]:
        raise NeedsegError(f"no segmentation run as of {as_of}: segment first (needseg segment --as-of {as_of})")
    features = (
        con.execute("select * from marts.customer_features where status = 'customer' order by account_id").df().set_index("account_id")
    )
    if features.empty or pd.Timestamp(features["as_of"].iloc[0]).date() != as_of:
        raise NeedsegError(f"customer_features does not describe {as_of}: build the features for that date first")
    monthly = con.execute("select * from marts.customer_monthly_behaviour order by account_id, months_ago").df()
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
    previous = None
    if prev:
        previous = (
            con.execute("select account_id, segment_id from segments.assignments where run_id = ? order by account_id", [prev[0]])
            .df()
            .set_index("account_id")
        )
    history = con.execute(
        """
        with lineage_runs as (
            select run_id, as_of from segments.segment_runs
            where as_of <= ? and lineage_id = (select lineage_id from segments.segment_runs where run_id = ?)
            order by as_of desc limit 4
        )
        select p.account_id, p.segment_id, r.as_of, p.behaviour_probability
        from segments.assignment_probabilities as p
        join lineage_runs as r using (run_id)
        order by r.as_of, p.account_id, p.segment_id
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
    names = dict(zip(defs["segment_id"], defs["segment_name"], strict=True))
    actions = {r.segment_id: r.action for r in defs[defs["run_id"] == run_id].itertuples()}

    drift = detect(features, monthly, current, previous, history, taxonomy, names, settings)
    drift["segment_name"] = drift["segment_id"].map(names)
    drift["previous_segment_name"] = drift["previous_segment_id"].map(names)
    drift["toward_segment_name"] = drift["toward_segment_id"].map(names)
    drift["account_name"] = features["account_name"].reindex(drift.index)
    drift["account_owner"] = features["account_owner"].reindex(drift.index)
    drift = drift.reset_index().rename(columns={"index": "account_id"})
    drift.insert(0, "as_of", as_of)
    drift.insert(0, "run_id", run_id)

    # Accounts at churn risk this run: one snapshot per reason.
    snaps = []
    for row in drift[drift["is_churn_risk"]].itertuples():
        reasons = json.loads(row.churn_risk_reasons)
        kinds = [k for k in (PRICE_KIND, AWAY_KIND) if k in reasons or f"migration_{k}" in reasons]
        for kind in kinds:
            to_segment = row.toward_segment_id if kind in reasons else row.segment_id
            snaps.append(
                {
                    "run_id": run_id,
                    "as_of": as_of,
                    "account_id": row.account_id,
                    "reason": REASONS[kind],
                    "score": row.churn_risk_score,
                    "account_name": row.account_name,
                    "account_owner": row.account_owner,
                    "from_segment": names.get(
                        row.previous_segment_id if kind not in reasons and row.previous_segment_id else row.segment_id
                    ),
                    "to_segment": names.get(to_segment, to_segment),
                    "evidence": row.evidence,
                    "action": actions.get(to_segment),
                }
            )
    snapshots = pd.DataFrame(
        snaps,
        columns=[
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
        ],
    )

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

    con.execute("begin transaction")
    try:
        for table in RUN_TABLES:
            con.execute(f"delete from {table} where run_id = ?", [run_id])
        for table, frame in (
            ("drift.customer_drift", drift),
            ("drift.segment_transitions", transitions_frame),
            ("drift.population_changes", events),
            ("alerts.risk_snapshots", snapshots),
        ):
            insert_frame(con, table, frame)
        all_snapshots = con.execute("select * from alerts.risk_snapshots order by as_of, account_id, reason").df()
        runs = [(r[0], r[1]) for r in con.execute("select run_id, as_of from segments.segment_runs order by as_of").fetchall()]
        alerts = episodes(all_snapshots, runs, rules)
        con.execute("delete from alerts.churn_risk_alerts")
        insert_frame(con, "alerts.churn_risk_alerts", alerts)
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
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
    )
