"""A listener plugin for a local Airflow (`make demo`, `make airflow`): when the scheduler
starts, import what needseg's tasks use (dbt, cosmos, pandas, scikit-learn, the pipeline
steps) once, before LocalExecutor forks its workers.

Every task process is forked from one of those workers, so it starts with them imported:
on 2 busy cores that saves 3-4 s of every dbt model task (importing dbt) and of every
pipeline step. Other components (API server, DAG processor) are left alone. The plugins
folder is set by `pipelines.airflow.env` for local runs only.
"""

from __future__ import annotations

import importlib
import logging
import sys

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

PRELOAD = (
    "dbt.cli.main",
    "dbt.adapters.duckdb",
    "cosmos",
    "cosmos.operators.local",
    "pipelines.cycle",
    "pipelines.airflow.support",
)


class _SchedulerStart:
    @hookimpl
    def on_starting(self, component) -> None:
        # `component` is a Job whose type is not set yet at this hook: the command tells.
        if sys.argv[1:2] != ["scheduler"]:
            return
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - an optimisation: a task imports what it needs anyway
                log.warning("needseg preload: %s not imported (%s)", name, exc)


class NeedsegPreload(AirflowPlugin):
    name = "needseg_preload"
    listeners = [_SchedulerStart()]  # noqa: RUF012 - the form Airflow reads
