"""The steps of one needseg cycle, as the DAGs and the `needseg` CLI call them.

Each step opens the working warehouse, does one thing, closes it and returns a small
JSON-able summary (Airflow keeps it as the task's XCom; the CLI prints it). A step re-run
for the same as-of date gives the same tables. Stage timings go to `meta.cycle_runs`.

    ingest    landing files -> raw (quality gate, quarantine)
    features  dbt build, tag:features -> marts.customer_features
    segment   segmentation run -> segments.*
    drift     migrations, early warnings, population changes, churn-risk alerts -> drift.*, alerts.*
    serving   dbt build, tag:serving -> the published marts
    publish   serving database + Parquet exports, swapped in atomically
    alerts    churn-risk digests to account owners (e-mail, webhook; the outbox table always)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pipelines import transform
from pipelines.config import load_config
from pipelines.drift.run import run_drift
from pipelines.ingest.loader import IngestIncomplete, ingest
from pipelines.publish import publish
from pipelines.segmentation.run import segment
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import Settings, load_settings
from pipelines.warehouse import open_warehouse

log = logging.getLogger("needseg")

STAGES = ("ingest", "features", "segment", "drift", "serving", "publish", "alerts")


def cycle_id(as_of: dt.date) -> str:
    return f"cycle-{as_of.isoformat()}"


def parse_date(value: str | dt.date) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


@contextmanager
def _timed(settings: Settings, as_of: dt.date, stage: str, detail: dict[str, Any]) -> Iterator[None]:
    started_at = dt.datetime.now()
    started = time.monotonic()
    yield
    seconds = round(time.monotonic() - started, 3)
    detail["seconds"] = seconds
    with open_warehouse(settings.warehouse_path) as con:
        con.execute(
            "insert or replace into meta.cycle_runs values (?, ?, ?, ?, ?, ?)",
            [cycle_id(as_of), as_of, stage, started_at, seconds, json.dumps(detail, default=str)],
        )


def ingest_step(as_of: dt.date, settings: Settings | None = None, accept_changed: bool = False) -> dict[str, Any]:
    """Pull the HTTP sources into the landing folder, then load every new landing file.

    A failing HTTP source does not keep the landing files from loading; the step still ends
    in an error then, as it does when a file is refused, held back, not loadable or changed
    after loading (`IngestIncomplete`, with the full report).
    """
    settings = settings or load_settings()
    detail: dict[str, Any] = {}
    with _timed(settings, as_of, "ingest", detail):
        with open_warehouse(settings.warehouse_path) as con:
            try:
                report = ingest(settings, con, as_of, cycle_id(as_of), accept_changed=accept_changed, fetch=True)
            except IngestIncomplete as incomplete:
                log.error("ingest: %s", incomplete.report.summary())
                raise
        detail.update(
            run_id=report.run_id,
            fetched=report.fetched,
            summary=report.summary(),
            files_loaded=report.count("loaded"),
            rows_read=report.rows_read,
            rows_loaded=report.rows_loaded,
            rows_quarantined=report.rows_quarantined,
        )
    log.info("ingest: %s", detail["summary"])
    return detail


def features_step(as_of: dt.date, settings: Settings | None = None, run_tests: bool = True) -> dict[str, Any]:
    return _dbt_step(as_of, settings, "features", transform.FEATURES, "build" if run_tests else "run")


def serving_step(as_of: dt.date, settings: Settings | None = None) -> dict[str, Any]:
    return _dbt_step(as_of, settings, "serving", transform.SERVING)


def _dbt_step(as_of: dt.date, settings: Settings | None, stage: str, select: str, command: str = "build") -> dict[str, Any]:
    settings = settings or load_settings()
    config = load_config(settings.config_path)
    detail: dict[str, Any] = {}
    with _timed(settings, as_of, stage, detail):
        result = transform.build(settings, config, as_of, select, command)
        detail.update(select=select, nodes=result.nodes, warnings=result.warnings)
    log.info("%s: dbt build %s, %d nodes in %.1f s", stage, select, result.nodes, detail["seconds"])
    return detail


def segment_step(as_of: dt.date, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or load_settings()
    config = load_config(settings.config_path)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    detail: dict[str, Any] = {}
    with _timed(settings, as_of, "segment", detail):
        with open_warehouse(settings.warehouse_path) as con:
            result = segment(con, as_of, taxonomy, config)
        detail.update(summary=result.summary(), run_id=result.run_id, k=result.k, segments=result.segments,
                      surveyed=result.surveyed, inferred=result.inferred, prospects=result.prospects)
    log.info("segment: %s", detail["summary"])
    return detail


def drift_step(as_of: dt.date, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or load_settings()
    config = load_config(settings.config_path)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    detail: dict[str, Any] = {}
    with _timed(settings, as_of, "drift", detail):
        with open_warehouse(settings.warehouse_path) as con:
            result = run_drift(con, as_of, taxonomy, config)
        detail.update(summary=result.summary(), run_id=result.run_id, early_warnings=result.early_warnings,
                      migrations=result.migrations, churn_risks=result.churn_risks, new_alerts=result.new_alerts,
                      open_alerts=result.open_alerts)
    log.info("drift: %s", detail["summary"])
    return detail


def publish_step(as_of: dt.date, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or load_settings()
    detail: dict[str, Any] = {}
    with _timed(settings, as_of, "publish", detail):
        with open_warehouse(settings.warehouse_path) as con:
            result = publish(settings, con, as_of)
        detail.update(summary=result.summary(), serving_path=result.serving_path, tables=result.tables, run_id=result.run_id)
    log.info("publish: %s", detail["summary"])
    return detail


def alerts_step(as_of: dt.date, settings: Settings | None = None, raise_if_undelivered: bool = False) -> dict[str, Any]:
    """Deliver the churn-risk alerts of the run as of `as_of` (and anything still pending).

    With `raise_if_undelivered` a channel outage fails the step after recording what was
    sent, so Airflow retries it later; nothing is sent twice (pipelines/alerts/outbox.py).
    """
    from pipelines.alerts.deliver import deliver_run
    from pipelines.drift.episodes import deliverable
    from pipelines.segmentation.run import run_id_for

    settings = settings or load_settings()
    config = load_config(settings.config_path)
    detail: dict[str, Any] = {}
    run_id = run_id_for(as_of)
    with _timed(settings, as_of, "alerts", detail):
        with open_warehouse(settings.warehouse_path) as con:
            from pipelines.drift.run import ensure_tables

            ensure_tables(con)
            alerts = con.execute("select * from alerts.churn_risk_alerts").df()
            report = deliver_run(con, deliverable(alerts, run_id, as_of), run_id, config=config)
        detail.update(
            summary=report.summary(),
            messages_created=len(report.created),
            messages_sent=len(report.sent),
            messages_pending=len(report.pending),
            messages_failed=len(report.failed),
            alerts_delivered=report.alerts_delivered,
        )
    log.info("alerts: %s", detail["summary"])
    if raise_if_undelivered:
        report.raise_for_undelivered()
    return detail


STEP_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "ingest": ingest_step,
    "features": features_step,
    "segment": segment_step,
    "drift": drift_step,
    "serving": serving_step,
    "publish": publish_step,
    "alerts": alerts_step,
}


@dataclass
class CycleReport:
    as_of: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return round(sum(s.get("seconds", 0.0) for s in self.stages.values()), 2)


def run_cycle(as_of: dt.date, settings: Settings | None = None, stages: tuple[str, ...] = STAGES, on_stage: Callable[[str, dict[str, Any]], None] | None = None) -> CycleReport:
    """One full cycle as of a date, stage by stage; a failing stage stops the rest."""
    settings = settings or load_settings()
    report = CycleReport(as_of.isoformat())
    for stage in stages:
        detail = STEP_FUNCTIONS[stage](as_of, settings)
        report.stages[stage] = detail
        if on_stage:
            on_stage(stage, detail)
    return report
