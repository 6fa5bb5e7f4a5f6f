"""`needseg demo`: generate a world and let Airflow's scheduler run needseg's DAGs over monthly cycles.

Time passes month by month: each cycle delivers that month's extracts to the landing
folder, then asks Airflow for a backfill of the ingest DAG and of the segmentation DAG
over the first day of the next month. The scheduler runs them with the logical dates the
DAGs' timetables make (ingest 00:00, segmentation 03:00), the ingest's `needseg_raw`
asset triggers the features DAG and the published `needseg_segments` asset triggers the
alerts DAG, as in production; `make airflow` shows those runs afterwards. The DAGs' end
date is the end of the world (NEEDSEG_SCHEDULE_END), so the scheduler never runs a month
the world has no data for; ingest and segmentation are paused when the demo ends.

Airflow's console output goes to a log file; the terminal gets progress (stage, tasks
done, elapsed) at least every 10 s and one line per finished DAG run. A month already
published, whose extracts were all delivered before, is skipped, and the demo says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import pandas as pd

from pipelines import clock
from pipelines.demo.world import WorldSpec, deliver, extract_months, generate
from pipelines.errors import NeedsegError
from pipelines.progress import Progress, elapsed
from pipelines.settings import Settings
from pipelines.warehouse import open_serving

DEMO_DAGS = ("needseg_ingest", "needseg_features", "needseg_segmentation", "needseg_alerts")
# Scheduled DAGs paused when the demo ends: unpaused, they would run today's schedule on a
# world whose data ends months ago.
PAUSED_AFTER = ("needseg_ingest", "needseg_segmentation")


def month_end(month: str) -> dt.date:
    return pd.Period(month, "M").end_time.date()


def ensure_world(settings: Settings, spec: WorldSpec, say: Callable[[str], None]) -> Path:
    """The demo world under <data>/world, generated again only when the spec changed."""
    world = settings.data_dir / "world"
    meta = world / "world.json"
    if meta.exists() and json.loads(meta.read_text()).get("spec") == spec.as_json():
        say(f"world: {world} (already generated, seed {spec.seed})")
        return world
    started = time.monotonic()
    summary = generate(world, spec)
    say(
        f"world: {summary.accounts - spec.prospects} customers + {spec.prospects} prospects over {summary.months} months "
        f"(seed {spec.seed}), {summary.order_lines:,} order lines, {summary.survey_responses:,} survey responses, "
        f"top 20 % of customers = {summary.key_account_revenue_share:.0%} of revenue -> {world} ({time.monotonic() - started:.1f} s)"
    )
    return world


@contextlib.contextmanager
def _quiet(log_path: Path) -> Iterator[TextIO]:
    """Send everything written to stdout/stderr (Airflow's and dbt's own logging) to a log
    file; yield a stream that still writes to the terminal (or wherever stdout went)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Exclude what is loaded so far (Airflow, dbt, the DAGs) from garbage collection
    while the block runs.

    dag.test runs every task in this process, and cosmos collects garbage after each dbt
    task: with Airflow and dbt on the heap that took 0.5 s a task, a quarter of the
    features DAG's time. The heap is unfrozen afterwards: objects left frozen are never
    freed at exit, and DuckDB's bindings then print pages of "leaked instance" warnings.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def published_as_ofs(settings: Settings) -> set[dt.date]:
    """The as-of dates of the segmentation runs in the published serving database."""
    if not settings.serving_path.exists():
        return set()
    try:
        with open_serving(settings.serving_path, user_sql=False) as con:
            return {row[0] for row in con.execute("select as_of from segment_runs").fetchall()}
    except Exception:  # noqa: BLE001 - an unreadable or older serving database: publish again
        return set()


def _describe(run) -> str:
    when = f", logical date {run.logical_date:%Y-%m-%d %H:%M}" if run.logical_date else ""
    state = "ok" if run.state == "success" else run.state.upper()
    return f"{run.dag_id.removeprefix('needseg_')} {state} in {elapsed(run.seconds)} ({run.run_type.replace('_', '-')}{when}, {run.tasks_total} tasks)"


def _run_dag(airflow, progress: Progress, label: str, find) -> object:
    """Wait for one DAG run, showing its tasks as they go; raise if it failed."""
    from pipelines.airflow import scheduler

    def show(run) -> None:
        if run is None:
            progress.update(detail="waiting for the scheduler")
            return
        progress.update(done=run.tasks_done, total=run.tasks_total or None, detail=", ".join(run.running)[:70] or run.state)

    run = scheduler.wait_for_run(find, show, airflow)
    progress.log(f"  {label}  {_describe(run)}")
    if run.state != "success":
        raise NeedsegError(f"{run.dag_id} run {run.run_id} failed; see the task logs in make airflow, or {airflow.log_path}")
    return run


def _cycle(airflow, progress: Progress, label: str, as_of: dt.date) -> dict:
    """One month: ingest (backfill) -> features (asset) -> segmentation (backfill) -> alerts (asset)."""
    from pipelines.airflow import scheduler

    day = as_of + dt.timedelta(days=1)
    runs = {}
    for dag_id, triggered in (("needseg_ingest", "needseg_features"), ("needseg_segmentation", "needseg_alerts")):
        asked = clock.utc_now()
        progress.stage(f"{label} {dag_id.removeprefix('needseg_')}", unit="tasks")
        scheduler.backfill(dag_id, day)
        run = _run_dag(airflow, progress, label, lambda d=dag_id, t=asked: scheduler.latest_run(d, "backfill", after=t))
        runs[dag_id] = run
        progress.stage(f"{label} {triggered.removeprefix('needseg_')}", unit="tasks")
        runs[triggered] = _run_dag(
            airflow, progress, label, lambda d=triggered, t=asked: scheduler.latest_run(d, "asset_triggered", after=t)
        )
    return {dag_id: {"state": r.state, "seconds": round(r.seconds, 1), "run_id": r.run_id} for dag_id, r in runs.items()}


def run_demo(settings: Settings, spec: WorldSpec, cycles: int, say: Callable[[str], None] = print) -> dict:
    from pipelines.airflow import env as airflow_env

    os.environ["NEEDSEG_DATA_DIR"] = str(settings.data_dir)
    os.environ.setdefault("NEEDSEG_TASK_RETRIES", "0")  # a demo should fail at once, not retry
    world = ensure_world(settings, spec, say)
    months = extract_months(world)
    if cycles < 1 or cycles > len(months) - 12:
        raise NeedsegError(f"--cycles must be between 1 and {len(months) - 12} for a world of {len(months)} months")
    chosen = months[-cycles:]
    # The scheduler makes runs up to the end of the world, never for months it has no data for.
    os.environ["NEEDSEG_SCHEDULE_END"] = f"{month_end(chosen[-1]) + dt.timedelta(days=1)}T23:59"
    airflow_env.configure()
    log_path = settings.data_dir / "airflow-demo.log"
    started = time.monotonic()
    timings: list[dict] = []
    published = published_as_ofs(settings)
    if {month_end(m) for m in chosen} <= published and deliver(world, settings.landing_dir, chosen[-1]) == 0:
        for number, month in enumerate(chosen, start=1):
            say(f"  cycle {number}/{len(chosen)} as of {month_end(month)}  already published, its extracts unchanged: skipped")
        say("nothing new to run: every month is published (make clean starts afresh)")
        return {"world": str(world), "cycles": [{"as_of": month_end(m).isoformat(), "skipped": True} for m in chosen]}
    with _quiet(log_path) as terminal, Progress("demo", stream=terminal) as progress:
        from pipelines.transform import ensure_manifest

        progress.stage("dbt manifest (the features DAG's tasks are rendered from it)")
        ensure_manifest()
        progress.stage("Airflow metadata database (airflow db migrate)")
        airflow_env.ensure_metadata_db()
        progress.log(f"Airflow: metadata database ready in {os.environ['AIRFLOW_HOME']}; Airflow's and dbt's output go to {log_path}")
        from pipelines.airflow import scheduler

        with contextlib.suppress(Exception):  # a first run has no DAGs stored yet
            scheduler.set_paused(DEMO_DAGS, True)
            if closed := scheduler.close_unfinished_backfills(DEMO_DAGS):
                progress.log(f"Airflow: {closed} backfill(s) an interrupted demo left open were closed")
        since = clock.utc_now()
        with scheduler.local_airflow(log_path) as airflow:
            progress.stage(
                "starting Airflow (API server, scheduler with " + os.environ["AIRFLOW__CORE__PARALLELISM"] + " task slots, DAG processor)"
            )
            airflow.wait_ready(DEMO_DAGS, lambda text: progress.update(detail=text), since=since)
            scheduler.set_paused(DEMO_DAGS, False)
            progress.log(
                f"Airflow: scheduler running (LocalExecutor, {os.environ['AIRFLOW__CORE__PARALLELISM']} task slots); API on port {airflow.port}"
            )
            published = published_as_ofs(settings)
            try:
                for number, month in enumerate(chosen, start=1):
                    as_of = month_end(month)
                    label = f"cycle {number}/{len(chosen)} as of {as_of}"
                    delivered = deliver(world, settings.landing_dir, month)
                    if delivered == 0 and as_of in published:
                        progress.log(f"  {label}  already published (run seg-{as_of}), its extracts unchanged: skipped")
                        timings.append({"as_of": as_of.isoformat(), "skipped": True})
                        continue
                    progress.log(f"  {label}  {delivered} new file(s) delivered to {settings.landing_dir}")
                    t0 = time.monotonic()
                    cycle = {"as_of": as_of.isoformat(), "files": delivered, **_cycle(airflow, progress, label, as_of)}
                    cycle["seconds"] = round(time.monotonic() - t0, 1)
                    timings.append(cycle)
            finally:
                with contextlib.suppress(Exception):
                    scheduler.set_paused(PAUSED_AFTER, True)
            progress.stage("stopping Airflow")
    ran = sum(1 for c in timings if not c.get("skipped"))
    say(f"{ran} cycle(s) run by Airflow's scheduler, {len(timings) - ran} skipped, in {elapsed(time.monotonic() - started)}")
    return {"world": str(world), "cycles": timings}


def summary_lines(settings: Settings) -> list[str]:
    """What the demo produced, read from the published serving database."""
    with open_serving(settings.serving_path) as con:
        run_id, as_of = con.execute("select run_id, as_of from publication").fetchone()
        k, _reason, jaccard, verdict, reasons = con.execute(
            "select k, k_reason, min_jaccard, verdict, verdict_reasons from segment_runs where is_latest"
        ).fetchone()
        runs = con.execute("select count(*) from segment_runs").fetchone()[0]
        rows = con.execute(
            "select segment, count(*) as n, count(*) filter (where segment_source = 'surveyed') as surveyed, "
            "count(*) filter (where segment_source = 'inferred') as inferred, count(*) filter (where is_key_account) as key "
            "from customer_segments group by segment order by n desc"
        ).fetchall()
        prospects = con.execute("select count(*) from prospect_segments").fetchone()[0]
        drifting = con.execute(
            "select count(*) filter (where drift_flag), count(*) filter (where early_warning), count(*) filter (where migrated) from customer_drift"
        ).fetchone()
        alerts = con.execute(
            "select count(*) filter (where status = 'open'), count(*) filter (where status = 'resolved') from churn_risk_alerts"
        ).fetchone()
        example = con.execute(
            "select account_name, segment, toward_segment, evidence from customer_drift where is_churn_risk order by churn_risk_score desc limit 1"
        ).fetchone()

    total = sum(r[1] for r in rows)
    lines = [
        "",
        f"Segments as of {as_of} (run {run_id}, {runs} runs so far): k={k}, every segment's bootstrap Jaccard >= {jaccard:.2f}",
        f"  verdict: {verdict}" + "".join(f"\n    - {r['text']}" for r in json.loads(reasons or "[]")),
        f"  {'segment':<24}{'customers':>10}{'surveyed':>10}{'inferred':>10}{'key':>6}",
    ]
    for segment, n, surveyed, inferred, key in rows:
        lines.append(f"  {segment:<24}{n:>10}{surveyed:>10}{inferred:>10}{key:>6}")
    lines += [
        f"  {'total':<24}{total:>10}{sum(r[2] for r in rows):>10}{sum(r[3] for r in rows):>10}{sum(r[4] for r in rows):>6}",
        f"  + {prospects} prospects with a predicted segment (prospect_segments)",
        "",
        f"Drift in the latest run: {drifting[0]} customers drifting towards price-sensitivity or away from partnership "
        f"({drifting[1]} early warnings), {drifting[2]} segment changes; churn-risk alerts: {alerts[0]} open, {alerts[1]} resolved",
    ]
    if example:
        lines.append(f"  e.g. {example[0]} ({example[1]} -> {example[2]}): {example[3]}")
    cli = ".venv/bin/needseg"
    lines += [
        "",
        f"Serving database: {settings.serving_path}   Parquet: {settings.exports_dir}/",
        f"Segment report (charts, open in a browser): {settings.report_dir / 'segment_report.html'}",
        "Try:",
        f'  {cli} query "select segment, segment_source, count(*) from customer_segments group by all order by all"',
        f'  {cli} query "select account_name, segment, drivers from customer_segments where is_key_account limit 5"',
        f'  {cli} query "select account_name, toward_segment, churn_risk_score, evidence from customer_drift where drift_flag order by 3 desc limit 5"',
        f"dbt docs of every table and column: {cli} dbt-docs",
        "See the DAG runs in the Airflow UI: make airflow",
    ]
    return lines
