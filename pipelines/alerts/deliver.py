"""One call per segmentation run: queue the run's churn-risk digests on every configured
channel, then deliver everything that is due, including messages of earlier runs still
waiting for a retry.

    with open_warehouse(settings.warehouse_path) as con:
        report = deliver_run(con, open_alerts, run_id, config=load_config(settings.config_path))
    log.info(report.summary())
    report.raise_for_undelivered()   # optional: let Airflow retry, and tell the data team

Re-running it for the same run sends nothing new (see pipelines/alerts/outbox.py).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipelines.alerts.channels import Sender, configured_senders
from pipelines.alerts.digest import AlertInputError
from pipelines.alerts.outbox import AlertOptions, DeliveryReport, deliver_pending, enqueue, requeue_failed, utc_naive

log = logging.getLogger("needseg.alerts")


def deliver_run(
    con: Any,
    alerts_df: pd.DataFrame | None,
    run_id: str,
    now: dt.datetime | None = None,
    senders: Mapping[str, Sender] | None = None,
    config: AlertOptions | Mapping[str, Any] | None = None,
    *,
    retry_failed: bool = False,
    environ: Mapping[str, str] | None = None,
) -> DeliveryReport:
    """Enqueue `alerts_df` (this run's open alerts; None or empty: nothing new) for every
    channel in `senders` (default: configured_senders()), then deliver all due messages.

    `config` is the pipeline configuration (its `alerts` section is used) or AlertOptions.
    `retry_failed` first puts this run's messages that failed for good back in the queue:
    for the operator who fixed a channel and re-runs the task.
    """
    options = AlertOptions.from_config(config)
    now = utc_naive(now)
    senders = configured_senders(environ) if senders is None else senders
    has_alerts = alerts_df is not None and len(alerts_df) > 0
    if has_alerts:
        if "run_id" not in alerts_df.columns:
            raise AlertInputError("the alerts to deliver lack the run_id column")
        other_runs = sorted({str(r) for r in alerts_df["run_id"].dropna().unique()} - {run_id})
        if other_runs:
            raise AlertInputError(f"delivering run {run_id}, but the alerts belong to run(s) {', '.join(other_runs)}")
    requeued = requeue_failed(con, now, run_id) if retry_failed else []
    created = enqueue(con, alerts_df, list(senders), now, options=options, environ=environ) if has_alerts else []
    report = deliver_pending(con, senders, now, options=options)
    report.run_id = run_id
    report.alerts_in_run = int(alerts_df["alert_id"].nunique()) if has_alerts else 0
    report.created = created
    report.requeued = requeued
    log.info("%s", report.summary())
    if report.failed:
        log.error("%s", report.details())
    return report
