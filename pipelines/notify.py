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
    dag_run = context.get("dag_run")
    ti = context.get("task_instance") or context.get("ti")
    reason = context.get("reason") or context.get("exception") or "see the task log"
    dag_id = getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None) or "?"
    run_id = getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None) or "?"
    task_id = getattr(ti, "task_id", None) or "?"
    message = f"needseg: DAG {dag_id} run {run_id} failed (task {task_id}): {reason}"
    log.error(message)
    details = [message, "", f"DAG: {dag_id}", f"Run: {run_id}", f"Task: {task_id}"]
    log_url = getattr(ti, "log_url", None)
    if isinstance(log_url, str) and log_url:
        details.append(f"Log: {log_url}")
    details += ["", "Sent by needseg's DAG failure callback."]
    tell_data_team(
        subject=f"needseg: DAG {dag_id} failed (run {run_id})",
        text="\n".join(details),
        key=f"dag-failed\x1f{dag_id}\x1f{run_id}",
    )
    return message


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
