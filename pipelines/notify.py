"""Notices to the data team when a DAG run fails.

Always logged; also sent through the alert channels that are configured (see
pipelines/alerts/channels.py): an e-mail to NEEDSEG_DATA_TEAM_EMAIL when SMTP is
configured, and a post to the alert webhook when that is configured.

Notices go out directly, not through the warehouse outbox: the warehouse may be the very
thing that failed (locked, full, corrupt). A channel that is down is logged, never raised,
because an exception in a failure callback would hide the failure it reports.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("needseg.notify")


def dag_failed(context: dict[str, Any]) -> str:
    """The DAG-level failure callback: which DAG, run and task failed, and where its log is.

    Airflow 3 hands a DAG callback the failed run's last task instance when it has one, and
    otherwise only the DAG, the run id and the reason; both are handled.
    """
    dag_run = context.get("dag_run")
    ti = context.get("task_instance") or context.get("ti")
    reason = context.get("reason") or context.get("exception") or "see the task log"
    dag_id = getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None) or "?"
    run_id = getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None) or context.get("run_id") or "?"
    task_id = getattr(ti, "task_id", None)
    message = f"needseg: DAG {dag_id} run {run_id} failed" + (f" (task {task_id})" if task_id else "") + f": {reason}"
    log.error(message)
    details = [message, "", f"DAG: {dag_id}", f"Run: {run_id}", f"Task: {task_id or 'unknown (Airflow did not say)'}"]
    try_number = getattr(ti, "try_number", None)
    if try_number:
        details.append(f"Try: {try_number}")
    task_log = _task_log_url(ti)
    if task_log:
        details.append(f"Log: {task_log}")
    elif dag_id != "?" and run_id != "?" and (run_page := _run_url(dag_id, run_id)):
        details.append(f"Run and its task logs: {run_page}")
    details += ["", "Sent by needseg's DAG failure callback."]
    tell_data_team(
        subject=f"needseg: DAG {dag_id} failed (run {run_id})",
        text="\n".join(details),
        key=f"dag-failed\x1f{dag_id}\x1f{run_id}",
    )
    return message


def _task_log_url(ti: Any) -> str | None:
    try:
        url = getattr(ti, "log_url", None)
    except Exception:  # noqa: BLE001 - a property that needs Airflow's configuration
        return None
    return url if isinstance(url, str) and url else None


def _run_url(dag_id: str, run_id: str) -> str | None:
    """The run's page in the Airflow UI (api.base_url), when Airflow is installed."""
    try:
        from urllib.parse import quote

        from airflow.configuration import conf

        base = conf.get("api", "base_url", fallback="http://localhost:8080/")
    except Exception:  # noqa: BLE001 - outside Airflow there is no UI to point to
        return None
    return f"{base.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id)}"


def tell_data_team(
    subject: str,
    text: str,
    *,
    key: str | None = None,
    senders: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Send a short notice to the data team on every configured channel; never raises.

    `key` makes the message id deterministic (the same failure notified twice carries the
    same Message-ID / Idempotency-Key). Returns {channel: "sent" or the error}.
    """
    environ = os.environ if environ is None else environ
    outcome: dict[str, str] = {}
    try:
        from pipelines.alerts.channels import OutgoingMessage, configured_senders
        from pipelines.alerts.digest import slack_escape

        senders = configured_senders(environ) if senders is None else senders
    except Exception as exc:  # noqa: BLE001 - a broken channel configuration must not break the callback
        log.error("could not tell the data team (%s): channel configuration: %s", subject, exc)
        return outcome
    message_id = "needseg-notice-" + hashlib.sha256((key or f"{subject}\x1f{text}").encode()).hexdigest()[:32]
    for channel, sender in senders.items():
        if channel == "table":
            continue  # notices are not alerts; the log and the channels carry them
        if channel == "email":
            recipient = (environ.get("NEEDSEG_DATA_TEAM_EMAIL") or "").strip()
            if not recipient:
                log.warning("SMTP is configured but NEEDSEG_DATA_TEAM_EMAIL is not: the data team gets no e-mail about: %s", subject)
                continue
        else:
            recipient = "the data team"
        message = OutgoingMessage(
            message_id=message_id,
            run_id="notice",
            channel=channel,
            recipient=recipient,
            subject=subject,
            body_text=text,
            body_html="",
            payload={"text": f"*{slack_escape(subject)}*\n{slack_escape(text)}"},
        )
        try:
            sender.send(message)
        except Exception as exc:  # noqa: BLE001 - a channel that is down is logged, not raised
            log.error("could not tell the data team via %s: %s", channel, exc)
            outcome[channel] = str(exc)
        else:
            outcome[channel] = "sent"
    return outcome
