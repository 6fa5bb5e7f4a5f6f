"""Notices to the data team when a DAG run fails.

Always logged; sent through the same channels as alerts once those are configured
(see pipelines/alerts).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("needseg.notify")


def dag_failed(context: dict[str, Any]) -> str:
    dag_run = context.get("dag_run")
    ti = context.get("task_instance") or context.get("ti")
    reason = context.get("reason") or context.get("exception") or "see the task log"
    message = (
        f"needseg: DAG {getattr(dag_run, 'dag_id', '?')} run {getattr(dag_run, 'run_id', '?')} failed"
        f" (task {getattr(ti, 'task_id', '?')}): {reason}"
    )
    log.error(message)
    return message
