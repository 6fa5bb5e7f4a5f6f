"""The steps of one needseg cycle, as the DAGs and the `needseg` CLI call them.

Each step opens the working warehouse, does one thing, closes it and returns a small
JSON-able summary (Airflow keeps it as the task's XCom; the CLI prints it). A step re-run
for the same as-of date gives the same tables. Stage timings go to `meta.cycle_runs`.

    ingest    landing files -> raw (quality gate, quarantine)
    features  dbt build, tag:features -> marts.customer_features
    segment   segmentation run -> segments.*
    drift     migrations, early warnings, population changes, churn-risk alerts -> drift.*, alerts.*
    serving   dbt build, tag:serving -> the published marts
    publish   serving database + Parquet exports + the HTML segment report, swapped in atomically
    alerts    churn-risk digests to account owners (e-mail, webhook; the outbox table always)

One writer at a time: the `needseg` commands that write (ingest, build, segment, drift,
publish, run) hold `data_dir_lock` on the data directory for their whole run. A second one
exits at once with exit 1 and a message naming the holder (pid, host, command, since), or
queues behind it with --wait. The lock is an OS file lock (flock): it dies with its process,
so the lock of a killed run is simply taken over. In Airflow the `needseg_warehouse` pool
serialises the tasks; the steps themselves take no lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pipelines import clock, transform
from pipelines.config import load_config
from pipelines.drift.run import run_drift
from pipelines.errors import NeedsegError
from pipelines.ingest.loader import IngestIncomplete, ingest
from pipelines.publish import publish
from pipelines.report import write_report
from pipelines.segmentation.run import segment
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import Settings, load_settings, release_process_memory
from pipelines.warehouse import open_warehouse

log = logging.getLogger("needseg")

STAGES = ("ingest", "features", "segment", "drift", "serving", "publish", "alerts")


LOCK_FILE = ".needseg.lock"


class DataDirBusy(NeedsegError):
    """Another needseg command is writing to the same data directory."""

    exit_code = 1


def _holder_text(handle) -> str:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        return "another process (its lock file names no holder)"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, `{holder.get('command', '?')}`, since {holder.get('since', '?')}"


def _pid_alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


@contextmanager
def data_dir_lock(data_dir, command: str, wait: bool = False) -> Iterator[None]:
    """Hold the data directory's writer lock for the block; `command` is what a second
    writer is told holds it. Without `wait` a held lock raises `DataDirBusy` at once."""
    data_dir = os.fspath(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, LOCK_FILE)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(handle)
            if not wait:
                raise DataDirBusy(
                    f"another needseg command is writing to {data_dir}: {holder}. Nothing was done; run this again when it "
                    "has finished, or add --wait to start as soon as it has"
                ) from None
            log.warning("waiting for the data directory %s, held by %s", data_dir, holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        previous = handle.read()
        if previous.strip():
            try:
                stale = json.loads(previous)
            except ValueError:
                stale = {}
            if stale.get("host") == socket.gethostname() and not _pid_alive(stale.get("pid")):
                log.info("taking over the lock of %s: pid %s is no longer running", data_dir, stale.get("pid"))
        handle.seek(0)
        handle.truncate()
        since = clock.utc_now().isoformat(timespec="seconds")
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": since}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def cycle_id(as_of: dt.date) -> str:
    return f"cycle-{as_of.isoformat()}"


def parse_date(value: str | dt.date) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def _releases_memory(step: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A step that hands its freed memory back when it returns (`release_process_memory`),
    so that the steps after it in the same process start from the process's baseline."""

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return step(*args, **kwargs)
        finally:
            release_process_memory()

    return wrapper


@contextmanager
def _timed(settings: Settings, as_of: dt.date, stage: str, detail: dict[str, Any]) -> Iterator[None]:
    started_at = clock.utc_naive_now()
    started = time.monotonic()
    yield
    seconds = round(time.monotonic() - started, 3)
    detail["seconds"] = seconds
    with open_warehouse(settings.warehouse_path) as con:
        con.execute(
            "insert or replace into meta.cycle_runs values (?, ?, ?, ?, ?, ?)",
            [cycle_id(as_of), as_of, stage, started_at, seconds, json.dumps(detail, default=str)],
        )


@_releases_memory
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


@_releases_memory
def features_step(as_of: dt.date, settings: Settings | None = None, run_tests: bool = True) -> dict[str, Any]:
    return _dbt_step(as_of, settings, "features", transform.FEATURES, "build" if run_tests else "run")


@_releases_memory
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


@_releases_memory
def segment_step(as_of: dt.date, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or load_settings()
    config = load_config(settings.config_path)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    detail: dict[str, Any] = {}
    with _timed(settings, as_of, "segment", detail):
        with open_warehouse(settings.warehouse_path) as con:
            result = segment(con, as_of, taxonomy, config)
        detail.update(
            summary=result.summary(),
            run_id=result.run_id,
            k=result.k,
            segments=result.segments,
            surveyed=result.surveyed,
            inferred=result.inferred,
            prospects=result.prospects,
        )
    log.info("segment: %s", detail["summary"])
    return detail


@_releases_memory
def drift_step(as_of: dt.date, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or load_settings()
    config = load_config(settings.config_path)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    detail: dict[str, Any] = {}
    with _timed(settings, as_of, "drift", detail):
        with open_warehouse(settings.warehouse_path) as con:
            result = run_drift(con, as_of, taxonomy, config)
        detail.update(
            summary=result.summary(),
            run_id=result.run_id,
            early_warnings=result.early_warnings,
            migrations=result.migrations,
            churn_risks=result.churn_risks,
            new_alerts=result.new_alerts,
            open_alerts=result.open_alerts,
        )
    log.info("drift: %s", detail["summary"])
    return detail


@_releases_memory
def publish_step(as_of: dt.date, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or load_settings()
    config = load_config(settings.config_path)
    detail: dict[str, Any] = {}
    with _timed(settings, as_of, "publish", detail):
        with open_warehouse(settings.warehouse_path) as con:
            result = publish(settings, con, as_of, keep_export_versions=int(config["publish"]["keep_export_versions"]))
        detail.update(summary=result.summary(), serving_path=result.serving_path, tables=result.tables, run_id=result.run_id)
        if not result.skipped:
            detail["report"] = write_report(settings).path
    log.info("publish: %s", detail["summary"])
    return detail


UNDELIVERED_LISTED = 10  # in the step's summary; `needseg status` and alerts.outbox have them all


@_releases_memory
def alerts_step(
    as_of: dt.date | None,
    settings: Settings | None = None,
    raise_if_undelivered: bool = False,
    *,
    pending_only: bool = False,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Deliver the churn-risk alerts of the run as of `as_of` (None: the latest segmentation
    run), and anything still pending and due from earlier.

    `pending_only` composes nothing: it only sends what is pending and due (the alerts DAG's
    timed runs, `needseg alerts --pending-only`), so the outbox's backoff has something
    driving it between monthly runs. `retry_failed` first puts messages that failed for good
    back in the queue. With `raise_if_undelivered` a channel outage fails the step after
    recording what was sent, so Airflow retries it; nothing is sent twice
    (pipelines/alerts/outbox.py).
    """
    from pipelines.alerts.deliver import alerts_to_deliver, deliver_due, deliver_run
    from pipelines.alerts.outbox import requeue_failed
    from pipelines.segmentation.run import run_id_for

    settings = settings or load_settings()
    config = load_config(settings.config_path)
    detail: dict[str, Any] = {}
    if pending_only:
        if not settings.warehouse_path.exists():
            detail["summary"] = f"alert delivery: no warehouse at {settings.warehouse_path} yet, nothing pending"
            log.info("alerts: %s", detail["summary"])
            return detail
        with open_warehouse(settings.warehouse_path) as con:
            report = deliver_due(con, config=config, retry_failed=retry_failed)
    else:
        with open_warehouse(settings.warehouse_path) as con:
            run_as_of = _segmentation_run_as_of(con, as_of)
        run_id = run_id_for(run_as_of)
        with _timed(settings, run_as_of, "alerts", detail):
            with open_warehouse(settings.warehouse_path) as con:
                # A date given: that run's failed digests; none: every run's.
                requeued = requeue_failed(con, run_id=run_id if as_of is not None else None) if retry_failed else []
                report = deliver_run(con, alerts_to_deliver(con, run_id, run_as_of), run_id, config=config)
                report.requeued = requeued
    detail.update(
        summary=report.summary(),
        run_id=report.run_id,
        messages_created=len(report.created),
        messages_requeued=len(report.requeued),
        messages_sent=len(report.sent),
        messages_pending=len(report.pending),
        messages_failed=len(report.failed),
        failures_reported=len(report.failures_reported),
        alerts_delivered=report.alerts_delivered,
        undelivered=[m.describe() for m in (*report.failed, *report.pending)][:UNDELIVERED_LISTED],
        undelivered_total=len(report.failed) + len(report.pending),
    )
    log.info("alerts: %s", detail["summary"])
    if raise_if_undelivered:
        report.raise_for_undelivered()
    return detail


def _segmentation_run_as_of(con: Any, as_of: dt.date | None) -> dt.date:
    """`as_of` if a segmentation run exists for it; None: the latest run's date."""
    dates = [r[0] for r in con.execute("select as_of from segments.segment_runs order by as_of").fetchall()]
    if not dates:
        raise NeedsegError(
            "no segmentation run yet, so no alerts to compose: run a cycle first (needseg run); "
            "needseg alerts --pending-only still sends what is pending"
        )
    if as_of is None:
        return dates[-1]
    if as_of not in dates:
        raise NeedsegError(
            f"no segmentation run as of {as_of}: the alerts of a run are composed after it "
            f"(needseg segment --as-of {as_of}); the latest run is as of {dates[-1]}"
        )
    return as_of


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


def run_cycle(
    as_of: dt.date,
    settings: Settings | None = None,
    stages: tuple[str, ...] = STAGES,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
) -> CycleReport:
    """One full cycle as of a date, stage by stage; a failing stage stops the rest."""
    settings = settings or load_settings()
    report = CycleReport(as_of.isoformat())
    for stage in stages:
        detail = STEP_FUNCTIONS[stage](as_of, settings)
        report.stages[stage] = detail
        if on_stage:
            on_stage(stage, detail)
    return report
