"""`needseg demo`: generate a world and let Airflow run needseg's DAGs over monthly cycles.

Time passes month by month: each cycle delivers that month's extracts to the landing
folder, then Airflow runs the DAGs for that month-end (`dag.test`, which executes the
real tasks and records the runs in the metadata database, so `make airflow` shows them).
Airflow's own console output goes to a log file; the terminal gets one line per DAG run.
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
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from pipelines.demo.world import WorldSpec, deliver, extract_months, generate
from pipelines.errors import NeedsegError
from pipelines.settings import Settings

DEMO_DAGS = ("needseg_ingest", "needseg_segmentation", "needseg_alerts")


def month_end(month: str) -> dt.date:
    return pd.Period(month, "M").end_time.date()


def ensure_world(settings: Settings, spec: WorldSpec, say: Callable[[str], None]) -> Path:
    """The demo world under <data>/world, generated again only when the spec changed."""
    world = settings.data_dir / "world"
    meta = world / "world.json"
    if meta.exists() and json.loads(meta.read_text()).get("spec") == asdict(spec):
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
def _quiet(log_path: Path) -> Iterator[Callable[[str], None]]:
    """Send everything written to stdout/stderr (Airflow, dbt) to a log file; yield a
    function that still prints to the terminal."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield lambda text: print(text, file=terminal, flush=True)
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


def run_demo(settings: Settings, spec: WorldSpec, cycles: int, say: Callable[[str], None] = print) -> dict:
    from pipelines import airflow_env

    os.environ["NEEDSEG_DATA_DIR"] = str(settings.data_dir)
    os.environ.setdefault("NEEDSEG_TASK_RETRIES", "0")  # a demo should fail at once, not retry
    airflow_env.configure()
    world = ensure_world(settings, spec, say)
    months = extract_months(world)
    if cycles < 1 or cycles > len(months) - 12:
        raise NeedsegError(f"--cycles must be between 1 and {len(months) - 12} for a world of {len(months)} months")
    chosen = months[-cycles:]
    log_path = settings.data_dir / "airflow-demo.log"
    started = time.monotonic()
    airflow_env.ensure_metadata_db()
    say(f"Airflow: metadata database ready in {os.environ['AIRFLOW_HOME']}; its console output goes to {log_path}")
    timings: list[dict] = []
    with _quiet(log_path) as tell:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        if bag.import_errors:
            raise NeedsegError("DAG import errors:\n" + "\n".join(f"- {f}: {e}" for f, e in bag.import_errors.items()))
        with frozen_heap():
            for number, month in enumerate(chosen, start=1):
                as_of = month_end(month)
                delivered = deliver(world, settings.landing_dir, month)
                line = f"cycle {number}/{len(chosen)}  as of {as_of}  ({delivered} new files)"
                cycle = {"as_of": as_of.isoformat(), "files": delivered}
                for dag_id in DEMO_DAGS:
                    dag = bag.get_dag(dag_id)
                    t0 = time.monotonic()
                    run = dag.test(
                        logical_date=dt.datetime.combine(as_of, dt.time(23, 0), tzinfo=dt.UTC),
                        run_conf={"as_of": as_of.isoformat()},
                    )
                    seconds = time.monotonic() - t0
                    state = str(getattr(run, "state", "unknown"))
                    cycle[dag_id] = {"state": state, "seconds": round(seconds, 1)}
                    line += f"  {dag_id.removeprefix('needseg_')} {'ok' if state == 'success' else state.upper()} {seconds:.0f} s"
                    if state != "success":
                        tell(line)
                        raise NeedsegError(f"{dag_id} failed for {as_of}; see {log_path} (search for 'Task failed')")
                timings.append(cycle)
                tell(line)
    say(f"{len(chosen)} cycles in {time.monotonic() - started:.0f} s")
    return {"world": str(world), "cycles": timings}


def summary_lines(settings: Settings) -> list[str]:
    """What the demo produced, read from the published serving database."""
    import duckdb

    con = duckdb.connect(str(settings.serving_path), read_only=True)
    try:
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
    finally:
        con.close()
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
