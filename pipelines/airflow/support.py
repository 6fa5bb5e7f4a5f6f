"""What the DAG files share: assets, defaults, the as-of date, dbt task groups, callbacks.

DAG files stay thin (schedule, dependencies, docs, retries); they import from here and
call the step functions in `pipelines.cycle`. Nothing here runs at import time beyond
reading configuration, so DAG parsing stays fast.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from pipelines import clock
from pipelines.settings import DBT_PROJECT_DIR, load_settings

log = logging.getLogger("needseg.airflow")

# One writer at a time on the DuckDB warehouse: every task that writes it takes this pool.
WAREHOUSE_POOL = "needseg_warehouse"
START_DATE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def assets():
    """The data products the DAGs hand to each other (Airflow Assets)."""
    from airflow.sdk import Asset

    return {
        "raw": Asset(name="needseg_raw", uri="needseg://warehouse/raw", group="needseg"),
        "features": Asset(name="needseg_customer_features", uri="needseg://warehouse/marts/customer_features", group="needseg"),
        "segments": Asset(name="needseg_segments", uri="needseg://serving/customer_segments", group="needseg"),
    }


def schedule(env_name: str, default: str) -> str | None:
    """A DAG's schedule, overridable per deployment (e.g. NEEDSEG_SEGMENTATION_SCHEDULE);
    "none" turns the schedule off (runs are then triggered, e.g. over the REST API)."""
    value = os.environ.get(env_name, default)
    return None if value.strip().lower() in ("none", "manual", "") else value


def schedule_end() -> dt.datetime | None:
    """The last moment the timetables make runs for (NEEDSEG_SCHEDULE_END, an ISO date or
    time, UTC; empty: no end). The demo sets it to the end of its world, so Airflow's
    scheduler runs the world's months (as backfills) and never a month the world has no
    data for; a deployment leaves it unset."""
    value = os.environ.get("NEEDSEG_SCHEDULE_END", "").strip()
    if not value:
        return None
    try:
        end = dt.datetime.fromisoformat(value)
    except ValueError:
        from pipelines.errors import ConfigError

        raise ConfigError(f"NEEDSEG_SCHEDULE_END={value!r} is not an ISO date or time (e.g. 2026-11-01T23:59)") from None
    return end if end.tzinfo else end.replace(tzinfo=dt.UTC)


def dag_arguments(dag_id: str, schedule: Any, doc: str, tags: list[str], extra_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every needseg DAG shares: start (and end, see `schedule_end`), no catch-up, one
    run at a time, retries, the as-of param (and `extra_params`), docs, tags, and the
    failure notice to the data team."""
    return {
        "dag_id": dag_id,
        "schedule": schedule,
        "start_date": START_DATE,
        "end_date": schedule_end(),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": default_args(),
        "params": {**params(), **(extra_params or {})},
        "doc_md": _with_note(doc, manifest_note()),
        "tags": ["needseg", *tags],
        "on_failure_callback": on_dag_failure,
    }


def _with_note(doc: str, note: str) -> str:
    """The note after the docs' first line (the title stays first)."""
    if not note:
        return doc
    title, _, rest = doc.strip().partition("\n")
    return f"{title}{note}\n{rest}"


def default_args() -> dict[str, Any]:
    return {
        "owner": "needseg",
        "retries": int(os.environ.get("NEEDSEG_TASK_RETRIES", "2")),
        "retry_delay": dt.timedelta(minutes=int(os.environ.get("NEEDSEG_RETRY_DELAY_MINUTES", "5"))),
        "retry_exponential_backoff": True,
        "on_failure_callback": on_task_failure,
    }


def params() -> dict[str, Any]:
    from airflow.sdk import Param

    return {
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Run as of this date (YYYY-MM-DD). Empty: the end of the run's data interval, the upstream asset's date, or today.",
        )
    }


def resolve_as_of(context: dict[str, Any]) -> dt.date:
    """The date a run describes: explicit param or conf, the triggering asset's date, the
    last day of the data interval, or the last complete day before the run - in that order.

    Airflow 3's cron schedules give a run a zero-length interval at its start time, so a
    monthly run on the 1st at 03:00 describes the day before (the month just completed),
    never the day it has barely begun.
    """
    given = given_as_of(context)
    if given is not None:
        return given
    end = context.get("data_interval_end")
    start = context.get("data_interval_start")
    if end is not None and start is not None and end > start:
        return (end - dt.timedelta(microseconds=1)).date()
    started = context.get("logical_date") or clock.utc_now()
    return started.date() - dt.timedelta(days=1)


def given_as_of(context: dict[str, Any]) -> dt.date | None:
    """The date a run was handed: the `as_of` param or conf, else the latest `as_of` of the
    asset events that triggered it; None for a run a timetable started on its own."""
    explicit = (context.get("params") or {}).get("as_of")
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    explicit = explicit or conf.get("as_of")
    if explicit:
        return dt.date.fromisoformat(str(explicit))
    events = context.get("triggering_asset_events") or {}
    dates = []
    try:
        for asset_events in events.values():
            for event in asset_events:
                value = (getattr(event, "extra", None) or {}).get("as_of")
                if value:
                    dates.append(dt.date.fromisoformat(value))
    except (AttributeError, TypeError, ValueError):
        dates = []
    return max(dates) if dates else None


ALERTS_RETRY_SCHEDULE = "*/15 * * * *"


def alerts_schedule(segments_asset: Any) -> Any:
    """The alerts DAG's schedule: every new `needseg_segments` event (compose that run's
    digests and send them) OR a timer, NEEDSEG_ALERTS_RETRY_SCHEDULE (default every 15
    minutes, UTC), whose runs only send digests that are pending and due. The timer is what
    drives the outbox's retries between monthly runs; "none" leaves only the asset."""
    cron = schedule("NEEDSEG_ALERTS_RETRY_SCHEDULE", ALERTS_RETRY_SCHEDULE)
    if cron is None:
        return [segments_asset]
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=segments_asset)


def accept_changed_param() -> dict[str, Any]:
    """The ingest DAG's switch to load files that changed after loading as new batches."""
    from airflow.sdk import Param

    return {
        "accept_changed": Param(
            False,
            type="boolean",
            description="Load landing files whose content changed after they were loaded as new batches "
            "(`needseg ingest --accept-changed`). Off: such a file fails the run and is not appended.",
        )
    }


def flag(context: dict[str, Any], name: str) -> bool:
    """A boolean DAG param, or the same key in the run's conf."""
    value = (context.get("params") or {}).get(name)
    if value is None:
        value = (getattr(context.get("dag_run"), "conf", None) or {}).get(name)
    return str(value).strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def fails_for_good(exc: BaseException) -> bool:
    """Whether an error fails the same way on every retry: bad input or configuration (a
    refused, held, unloadable or changed file; a wrong mapping) needs a person, not a retry.
    Anything else (an API down, a locked warehouse, a crash) may pass on a retry. An error
    can say so itself with a `retryable` attribute (an HTTP source that failed is retryable
    even though it is reported as part of the ingest run)."""
    from pipelines.errors import ConfigError, InputError

    retryable = getattr(exc, "retryable", None)
    if retryable is not None:
        return not retryable
    return isinstance(exc, (InputError, ConfigError))


def step(**task_kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """Airflow's `@task`, the one way every needseg DAG task is written: the function runs
    through `run_step`, so an error that fails the same way on every retry (bad input, a
    configuration error: pipelines.errors.ConfigError) fails the task at once without
    retries, and anything else is retried. Takes `@task`'s arguments (pool, inlets, ...)."""
    from airflow.sdk import task

    def decorate(function: Callable[..., Any]) -> Any:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            return run_step(function, *args, **kwargs)

        run.needseg_step = True  # type: ignore[attr-defined]
        return task(**task_kwargs)(run)

    return decorate


def run_step(step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a pipeline step inside a task: an error that fails for good fails the task at
    once (AirflowFailException: no retries, the message naming file and expectation);
    anything else is raised as it is, for the task's retries."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return step(*args, **kwargs)
    except Exception as exc:
        if fails_for_good(exc):
            raise AirflowFailException(f"{type(exc).__name__} (not retried: it fails the same way until fixed): {exc}") from exc
        raise


AS_OF_XCOM = "{{ ti.xcom_pull(task_ids='resolve_as_of') }}"


def _cosmos_operator_args() -> dict[str, Any]:
    from pipelines.transform import RUN_FLAGS

    # The DAGs announce needseg's own assets; per-model datasets from cosmos would only add
    # a lineage parse of dbt's artifacts to every task.
    return {"dbt_cmd_global_flags": list(RUN_FLAGS), "emit_datasets": False}


def _dbt_settings() -> tuple[Any, Any, dict[str, Any]]:
    """Profile, env and vars shared by every cosmos task (the as-of date from `resolve_as_of`,
    in the env as `needseg build` passes it)."""
    from cosmos import ProfileConfig

    from pipelines import transform
    from pipelines.config import load_config

    settings = load_settings()
    config = load_config(settings.config_path)
    profile = ProfileConfig(profile_name="needseg", target_name="local", profiles_yml_filepath=DBT_PROJECT_DIR / "profiles.yml")
    return profile, transform.dbt_env(settings, AS_OF_XCOM), transform.dbt_vars(config)


def dbt_task_group(group_id: str, select: str, **kwargs: Any):
    """A cosmos DbtTaskGroup over dbt_project/: one Airflow task per model (`dbt build` of
    the model and its tests), rendered from dbt's manifest."""
    from cosmos import DbtTaskGroup, ExecutionConfig, ProjectConfig, RenderConfig
    from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior

    from pipelines import transform

    if not transform.MANIFEST.exists():
        return manifest_missing(group_id)
    profile, env, variables = _dbt_settings()
    return DbtTaskGroup(
        group_id=group_id,
        project_config=ProjectConfig(
            dbt_project_path=DBT_PROJECT_DIR,
            # Read, never made, at parse time: DAG parsing does not run dbt.
            manifest_path=transform.MANIFEST,
            install_dbt_deps=False,
            env_vars=env,
        ),
        profile_config=profile,
        execution_config=ExecutionConfig(execution_mode=ExecutionMode.LOCAL, invocation_mode=InvocationMode.DBT_RUNNER),
        # A test that spans several models runs once all of them are built.
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            select=[select],
            test_behavior=TestBehavior.BUILD,
            should_detach_multiple_parents_tests=True,
        ),
        operator_args={"vars": variables, "pool": WAREHOUSE_POOL, "install_deps": False, **_cosmos_operator_args()},
        **kwargs,
    )


MANIFEST_MISSING = (
    "dbt's manifest ({path}) is missing, so the dbt models cannot be shown as tasks: run "
    "`.venv/bin/needseg dbt-manifest` (make install does; the Docker image does at build), then let the DAG processor parse again."
)


def manifest_note() -> str:
    """A line for a DAG's docs when dbt's manifest is missing, saying what to run."""
    from pipelines import transform

    if transform.MANIFEST.exists():
        return ""
    return "\n\n**Not runnable yet**: " + MANIFEST_MISSING.format(path=transform.MANIFEST) + "\n"


def manifest_missing(task_id: str):
    """Stands in for a cosmos task group while dbt's manifest is missing: the DAG file
    still imports (parsing never runs dbt) and the task fails at once, saying what to run."""
    from airflow.sdk import task
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines import transform

    @task(task_id=task_id, retries=0)
    def dbt_manifest_missing():
        raise AirflowFailException(MANIFEST_MISSING.format(path=transform.MANIFEST))

    return dbt_manifest_missing()


def dbt_build_task(task_id: str, select: str, **kwargs: Any):
    """One cosmos task running `dbt build --select <select>`: for model sets where a task
    per model is not worth its overhead (each dbt invocation costs about a second)."""
    from cosmos.constants import InvocationMode
    from cosmos.operators.local import DbtBuildLocalOperator

    profile, env, variables = _dbt_settings()
    return DbtBuildLocalOperator(
        task_id=task_id,
        project_dir=str(DBT_PROJECT_DIR),
        profile_config=profile,
        invocation_mode=InvocationMode.DBT_RUNNER,
        select=[select],
        vars=variables,
        env=env,
        install_deps=False,
        pool=WAREHOUSE_POOL,
        **_cosmos_operator_args(),
        **kwargs,
    )


def on_task_failure(context: dict[str, Any]) -> None:
    """Log a failed task with what a data engineer needs to find it."""
    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    log.error(
        "needseg task failed: dag=%s task=%s run=%s try=%s: %s",
        getattr(ti, "dag_id", "?"),
        getattr(ti, "task_id", "?"),
        getattr(ti, "run_id", "?"),
        getattr(ti, "try_number", "?"),
        exc,
    )


def on_dag_failure(context: dict[str, Any]) -> None:
    """Tell the data team a DAG run failed (log always; channels where configured)."""
    from pipelines import notify

    notify.dag_failed(context)
