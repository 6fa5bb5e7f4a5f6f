"""Delivery passes: what the alerts step, the alerts DAG and `needseg alerts` call.

    with open_warehouse(settings.warehouse_path) as con:
        # after a segmentation run: compose its digests, then send everything due
        report = deliver_run(con, alerts_to_deliver(con, run_id, as_of), run_id, config=config)
        # on a timer, between runs: send what is pending and due, compose nothing
        report = deliver_due(con, config=config)
    log.info(report.summary())
    report.raise_for_undelivered()   # optional: let Airflow retry, and tell the data team

Which alerts a run delivers: every alert that is open as of the run and opened at or before
it, not only those flagged again in it. So an alert that opened but was not flagged again
the next run still reaches its owner if no digest carried it yet (a re-run added it, or the
alerts step did not run in between); the outbox (pipelines/alerts/outbox.py) leaves out
whatever a channel already delivered or is still delivering. An alert that resolved before
any delivery pass ran is not sent: the account recovered, and its episode is in
`churn_risk_alerts` for the record.

Both passes end by telling the data team, once per message, about digests that failed for
good (all attempts used): through the same channels as the DAG failure notices
(pipelines/notify.py), with the command that puts them back in the queue. Re-running a pass
for the same run sends nothing new.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipelines.alerts.channels import Sender, configured_senders
from pipelines.alerts.digest import ALERT_COLUMNS, AlertInputError
from pipelines.alerts.outbox import (
    AlertOptions,
    DeliveryReport,
    MessageState,
    deliver_pending,
    enqueue,
    mark_failures_reported,
    requeue_failed,
    unreported_failures,
    utc_naive,
)
from pipelines.warehouse import ensure_schema

log = logging.getLogger("needseg.alerts")


def alerts_to_deliver(con: Any, run_id: str, as_of: dt.date) -> pd.DataFrame:
    """The alerts a run as of `as_of` delivers: every open alert opened at or before it
    (from alerts.churn_risk_alerts, written by the drift step), shaped for `deliver_run`."""
    alerts = con.execute(
        """
        select alert_id, account_id, account_name, account_owner, reason, score, from_segment, to_segment,
               evidence, action, opened_run_id, opened_as_of, last_seen_as_of
        from alerts.churn_risk_alerts
        where status = 'open' and opened_as_of <= ?
        order by opened_as_of, account_id, reason
        """,
        [as_of],
    ).df()
    frame = pd.DataFrame(
        {
            "alert_id": alerts["alert_id"],
            "run_id": run_id,
            "as_of": as_of,
            "account_id": alerts["account_id"],
            "account_name": alerts["account_name"],
            "account_owner": alerts["account_owner"],
            "reason": alerts["reason"],
            "score": alerts["score"],
            "from_segment": alerts["from_segment"],
            "to_segment": alerts["to_segment"],
            "evidence": alerts["evidence"].map(lambda e: json.loads(e) if isinstance(e, str) else e),
            "action": alerts["action"],
            "is_new": alerts["opened_run_id"] == run_id,
            "first_flagged_as_of": alerts["opened_as_of"],
            "last_seen_as_of": alerts["last_seen_as_of"],
        },
        columns=[*ALERT_COLUMNS, "last_seen_as_of"],
    )
    return frame.reset_index(drop=True)


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
    """Enqueue `alerts_df` (the run's alerts; None or empty: nothing new) for every channel
    in `senders` (default: configured_senders()), then deliver all due messages.

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
    report.failures_reported = report_failures(con, senders, now, environ=environ)
    _log(report)
    return report


def deliver_due(
    con: Any,
    now: dt.datetime | None = None,
    senders: Mapping[str, Sender] | None = None,
    config: AlertOptions | Mapping[str, Any] | None = None,
    *,
    retry_failed: bool = False,
    environ: Mapping[str, str] | None = None,
) -> DeliveryReport:
    """Between runs: send the pending messages that are due (any run), compose nothing.
    `retry_failed` first puts every message that failed for good back in the queue."""
    options = AlertOptions.from_config(config)
    now = utc_naive(now)
    senders = configured_senders(environ) if senders is None else senders
    requeued = requeue_failed(con, now) if retry_failed else []
    report = deliver_pending(con, senders, now, options=options)
    report.requeued = requeued
    report.failures_reported = report_failures(con, senders, now, environ=environ)
    _log(report)
    return report


def _log(report: DeliveryReport) -> None:
    log.info("%s", report.summary())
    if report.failed:
        log.error("%s", report.details())


def failure_notice(failed: list[MessageState]) -> tuple[str, str]:
    """Subject and text of the notice to the data team about digests that failed for good."""
    count = len(failed)
    subject = f"needseg: {count} alert digest{'s' if count != 1 else ''} could not be delivered"
    lines = [
        f"{count} churn-risk digest{'s' if count != 1 else ''} used all delivery attempts and failed for good:",
        "",
        *[f"- {m.describe()}" for m in failed],
        "",
        "Nothing is lost: the digests stay in the warehouse table alerts.outbox (status 'failed').",
        "After fixing the channel, put them back in the queue and send them:",
        "    needseg alerts --retry-failed --pending-only",
        "Otherwise the next segmentation run's digests carry their alerts.",
        "",
        "Sent by needseg's alert delivery.",
    ]
    return subject, "\n".join(lines)


def report_failures(
    con: Any,
    senders: Mapping[str, Sender],
    now: dt.datetime | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Tell the data team about messages that failed for good and were not reported yet;
    return their ids. A message counts as reported when a channel took the notice, or when
    no channel other than the log is configured; otherwise the next pass tries again."""
    from pipelines import notify

    ensure_schema(con)
    failed = unreported_failures(con)
    if not failed:
        return []
    subject, text = failure_notice(failed)
    log.error("%s\n%s", subject, text)
    # The notice's id names the messages and this pass: a requeued message that fails again
    # later is a new notice, not a repeat a receiver might drop.
    key = "failed-digests\x1f" + "\x1f".join(m.message_id for m in failed) + f"\x1f{utc_naive(now).isoformat()}"
    outcome = notify.tell_data_team(subject, text, key=key, senders=senders, environ=os.environ if environ is None else environ)
    if outcome and not any(result == "sent" for result in outcome.values()):
        log.error("the data team could not be told about %d failed digest(s); the next delivery pass tries again", len(failed))
        return []
    ids = [m.message_id for m in failed]
    mark_failures_reported(con, ids, now)
    return ids
