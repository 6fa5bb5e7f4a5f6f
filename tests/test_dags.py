"""DAG integrity: the DAG files import cleanly and keep the project's rules."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from pipelines.settings import PROJECT_ROOT

EXPECTED = {"needseg_ingest", "needseg_features", "needseg_segmentation", "needseg_alerts"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dag_files_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert EXPECTED <= set(dagbag.dag_ids)


def test_every_dag_is_documented_tagged_and_retried(dagbag):
    for dag_id in EXPECTED:
        dag = dagbag.dags[dag_id]
        assert dag.doc_md and dag.doc_md.strip().startswith("### needseg"), dag_id
        assert "needseg" in dag.tags
        assert dag.catchup is False and dag.max_active_runs == 1
        assert dag.on_failure_callback is not None
        for task in dag.tasks:
            assert task.retries >= 1, (dag_id, task.task_id)
            assert task.on_failure_callback, (dag_id, task.task_id)


def test_schedules_and_assets_link_ingest_features_segmentation(dagbag):
    ingest = dagbag.dags["needseg_ingest"]
    features = dagbag.dags["needseg_features"]
    segmentation = dagbag.dags["needseg_segmentation"]
    assert ingest.schedule == "@daily"
    assert segmentation.schedule == "0 3 1 * *"  # monthly, its own schedule
    raw = ingest.get_task("ingest_landing_files").outlets[0]
    assert raw.name == "needseg_raw"
    assert [a.name for a in features.schedule] == ["needseg_raw"]
    produced = features.get_task("features_ready").outlets[0]
    assert produced.name == "needseg_customer_features"
    assert segmentation.get_task("segment_customers").inlets[0].name == "needseg_customer_features"
    assert segmentation.get_task("publish_serving_database").outlets[0].name == "needseg_segments"
    alerts = dagbag.dags["needseg_alerts"]
    # every new segments event, or the retry timer (its runs only send what is pending)
    assert alerts.timetable.asset_condition.name == "needseg_segments"
    assert alerts.timetable.timetable.expression == "*/15 * * * *"
    # drift runs between the segmentation and the serving models it feeds
    assert segmentation.get_task("detect_drift").upstream_task_ids == {"resolve_as_of", "segment_customers"}


def test_features_run_as_one_cosmos_task_per_dbt_model(dagbag):
    features = dagbag.dags["needseg_features"]
    dbt_tasks = [t for t in features.tasks if t.task_id.startswith("build_features.")]
    models = {t.task_id.split(".")[1].removesuffix("_model_build") for t in dbt_tasks}
    assert {"stg_crm__order_lines", "int_survey_needs", "int_account_value_tiers", "customer_features"} <= models
    assert all(type(t).__module__.startswith("cosmos.") for t in dbt_tasks)
    # segmentation rebuilds the same features for its own date as one task
    build = dagbag.dags["needseg_segmentation"].get_task("build_features")
    assert type(build).__module__.startswith("cosmos.") and build.select == ["tag:features"]


def test_every_task_that_writes_the_warehouse_takes_the_single_writer_pool(dagbag):
    for dag_id in EXPECTED:
        for task in dagbag.dags[dag_id].tasks:
            writes = task.task_id.startswith(("build_", "ingest_", "segment_", "publish_", "detect_", "deliver_"))
            if writes:
                assert task.pool == "needseg_warehouse", (dag_id, task.task_id)


def test_schedules_can_be_set_per_deployment(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("NEEDSEG_SEGMENTATION_SCHEDULE", "0 4 * * 1")
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "needseg_segmentation.py"))
    assert bag.dags["needseg_segmentation"].schedule == "0 4 * * 1"


def test_the_alerts_retry_timer_can_be_set_or_turned_off_per_deployment(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import AssetOrTimeSchedule

    path = str(PROJECT_ROOT / "dags" / "needseg_alerts.py")
    monkeypatch.setenv("NEEDSEG_ALERTS_RETRY_SCHEDULE", "5 * * * *")
    hourly = DagBag(dag_folder=path).dags["needseg_alerts"]
    assert isinstance(hourly.timetable, AssetOrTimeSchedule) and hourly.timetable.timetable.expression == "5 * * * *"
    monkeypatch.setenv("NEEDSEG_ALERTS_RETRY_SCHEDULE", "none")
    asset_only = DagBag(dag_folder=path).dags["needseg_alerts"]
    assert [a.name for a in asset_only.schedule] == ["needseg_segments"]


def test_only_a_run_handed_a_date_composes_alerts():
    """The alerts DAG composes a run's digests when the run names it (asset event or as_of);
    a timed run has no date of its own and only sends what is pending."""
    from types import SimpleNamespace

    from pipelines.airflow.support import given_as_of

    at = dt.datetime(2026, 12, 1, 3, 15, tzinfo=dt.UTC)
    timed = {
        "logical_date": at,
        "data_interval_start": at,
        "data_interval_end": at,
        "params": {"as_of": None},
        "dag_run": SimpleNamespace(conf={}, run_type="scheduled"),
        "triggering_asset_events": {},
    }
    assert given_as_of(timed) is None
    event = SimpleNamespace(extra={"as_of": "2026-11-30", "run_id": "seg-2026-11-30"})
    assert given_as_of({**timed, "triggering_asset_events": {"needseg_segments": [event]}}) == dt.date(2026, 11, 30)
    assert given_as_of({**timed, "params": {"as_of": "2026-10-31"}}) == dt.date(2026, 10, 31)


def test_dag_files_hold_no_pipeline_logic():
    for path in Path(PROJECT_ROOT / "dags").glob("*.py"):
        text = path.read_text()
        assert "duckdb" not in text and "sklearn" not in text and "pandas" not in text, path.name
        assert len(text.splitlines()) < 120, f"{path.name} is no longer thin"
    assert os.path.exists(PROJECT_ROOT / "dags" / "needseg_ingest.py")


def _next_scheduled_run(dag, after: dt.datetime):
    """The logical date and data interval Airflow's scheduler gives the run that follows a run
    at `after`. It never reads the clock: with catch-up off the scheduler would skip to the
    latest run before *now*, so the answer would depend on the day the test runs. The DAGs
    keep catch-up off; the run that follows a given one is the same either way."""
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable

    # The scheduler's own timetable for the DAG's cron schedule (the DAG holds the SDK's definition).
    timetable = CronTriggerTimetable(dag.timetable.expression, timezone=dag.timetable.timezone)
    last = DataInterval(after, after)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=last, restriction=TimeRestriction(earliest=None, latest=None, catchup=True)
    )
    return {"logical_date": info.logical_date, "data_interval_start": info.data_interval.start, "data_interval_end": info.data_interval.end}


def test_a_scheduled_monthly_run_describes_the_month_just_completed(dagbag):
    from pipelines.airflow.support import resolve_as_of

    run = _next_scheduled_run(dagbag.dags["needseg_segmentation"], dt.datetime(2026, 11, 15, tzinfo=dt.UTC))
    assert run["logical_date"] == dt.datetime(2026, 12, 1, 3, tzinfo=dt.UTC)
    assert resolve_as_of(run) == dt.date(2026, 11, 30)
    daily = _next_scheduled_run(dagbag.dags["needseg_ingest"], dt.datetime(2026, 12, 2, tzinfo=dt.UTC))
    assert daily["logical_date"] == dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    assert resolve_as_of(daily) == dt.date(2026, 12, 2)


def test_an_explicit_or_asset_date_beats_the_schedule():
    from types import SimpleNamespace

    from pipelines.airflow.support import resolve_as_of

    at = dt.datetime(2026, 12, 1, 3, tzinfo=dt.UTC)
    assert resolve_as_of({"logical_date": at, "params": {"as_of": "2026-10-31"}}) == dt.date(2026, 10, 31)
    assert resolve_as_of({"logical_date": at, "dag_run": SimpleNamespace(conf={"as_of": "2026-09-30"})}) == dt.date(2026, 9, 30)
    event = SimpleNamespace(extra={"as_of": "2026-11-30"})
    assert resolve_as_of({"logical_date": at, "triggering_asset_events": {"needseg_segments": [event]}}) == dt.date(2026, 11, 30)


def test_every_python_task_is_a_needseg_step_and_configuration_errors_are_not_retried(dagbag):
    """One wrapper for every task: a configuration error fails the task at once (no
    retries: it fails the same way until someone fixes the file); other errors are retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines.airflow.support import step
    from pipelines.errors import ConfigError

    python_tasks = [(dag_id, t) for dag_id in EXPECTED for t in dagbag.dags[dag_id].tasks if type(t).__name__ == "_PythonDecoratedOperator"]
    assert len(python_tasks) >= 7
    for dag_id, t in python_tasks:
        assert getattr(t.python_callable, "needseg_step", False), (dag_id, t.task_id)

    def broken_mapping():
        raise ConfigError("config/sources/crm.yaml: tables.order_lines.columns.net_price: expected a number")

    def flaky_api():
        raise ConnectionError("CRM API down")

    wrapped = step()(broken_mapping)
    with pytest.raises(AirflowFailException, match=r"not retried.*crm\.yaml"):
        wrapped.function()
    with pytest.raises(ConnectionError):
        step()(flaky_api).function()


def test_dag_parsing_never_runs_dbt_and_says_what_to_run_without_a_manifest(monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    from pipelines import transform

    def no_dbt(*args, **kwargs):
        raise AssertionError("DAG parsing ran dbt")

    monkeypatch.setattr(transform, "_invoke", no_dbt)
    monkeypatch.setattr(transform, "MANIFEST", tmp_path / "missing" / "manifest.json")
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    features = bag.dags["needseg_features"]
    assert "needseg dbt-manifest" in features.doc_md and features.doc_md.startswith("### needseg")
    stand_in = features.get_task("build_features")
    assert stand_in.retries == 0
    # with the manifest, the same files parse into one task per model (and still run no dbt)
    monkeypatch.undo()
    monkeypatch.setattr(transform, "_invoke", no_dbt)
    assert transform.MANIFEST.exists()
    assert len(DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "needseg_features.py")).dags["needseg_features"].tasks) > 10


def test_the_demo_end_date_keeps_the_scheduler_inside_the_world(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("NEEDSEG_SCHEDULE_END", "2026-11-01T23:59")
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "needseg_segmentation.py")).dags["needseg_segmentation"]
    assert dag.end_date == dt.datetime(2026, 11, 1, 23, 59, tzinfo=dt.UTC)
