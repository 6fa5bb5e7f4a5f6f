"""End to end: Airflow runs the DAGs (dag.test executes the real tasks) on a small world
over two monthly cycles; the published serving database is what analysts would get."""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd
import pytest

from pipelines.demo.runner import frozen_heap, month_end
from pipelines.demo.world import deliver
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import PROJECT_ROOT, load_settings


@pytest.fixture(scope="module")
def airflow_runs(small_world, session_dir):
    from pipelines.airflow import env as airflow_env

    mp = pytest.MonkeyPatch()
    data = session_dir / "airflow-e2e"
    mp.setenv("NEEDSEG_DATA_DIR", str(data))
    mp.setenv("NEEDSEG_TASK_RETRIES", "0")
    airflow_env.ensure_metadata_db()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    settings = load_settings()
    states = {}
    with frozen_heap():
        for month, dag_ids in (
            ("2026-09", ("needseg_ingest", "needseg_features", "needseg_segmentation", "needseg_alerts")),
            ("2026-10", ("needseg_ingest", "needseg_segmentation", "needseg_alerts")),
        ):
            deliver(small_world, settings.landing_dir, month)
            as_of = month_end(month)
            for dag_id in dag_ids:
                run = bag.get_dag(dag_id).test(
                    logical_date=dt.datetime.combine(as_of, dt.time(23), tzinfo=dt.UTC), run_conf={"as_of": as_of.isoformat()}
                )
                states[(month, dag_id)] = str(run.state)
    yield settings, states
    mp.undo()


def test_every_dag_run_succeeded(airflow_runs):
    _, states = airflow_runs
    assert set(states.values()) == {"success"}, states


def test_serving_database_has_one_row_per_active_customer_with_a_taxonomy_segment(airflow_runs, small_world):
    settings, _ = airflow_runs
    con = duckdb.connect(str(settings.serving_path), read_only=True)
    segments = con.execute("select * from customer_segments").df()
    truth = pd.read_parquet(small_world / "truth" / "segments_monthly.parquet")
    active = set(truth[(truth["month"] == "2026-10") & truth["active"]]["account_id"])
    assert set(segments["account_id"]) == active
    assert segments["account_id"].is_unique
    taxonomy_ids = {s.id for s in load_taxonomy(settings.taxonomy_path).segments}
    assert set(segments["segment_id"]) <= taxonomy_ids
    assert set(segments["segment_source"]) == {"surveyed", "inferred"}
    assert segments[["account_name", "value_tier", "account_owner", "run_id"]].notna().all().all()
    assert (segments["run_id"] == "seg-2026-10-31").all()


def test_segment_runs_grow_by_one_per_cycle(airflow_runs):
    settings, _ = airflow_runs
    con = duckdb.connect(str(settings.serving_path), read_only=True)
    runs = con.execute("select as_of, is_latest from segment_runs order by as_of").fetchall()
    assert runs == [(dt.date(2026, 9, 30), False), (dt.date(2026, 10, 31), True)]
    assert con.execute("select run_id, as_of from publication").fetchone() == ("seg-2026-10-31", dt.date(2026, 10, 31))


def test_drift_and_alerts_ran_for_the_last_cycle(airflow_runs):
    settings, _ = airflow_runs
    con = duckdb.connect(str(settings.serving_path), read_only=True)
    drift = con.execute("select count(*), count(distinct run_id) from customer_drift").fetchone()
    assert drift[0] > 300 and drift[1] == 1
    assert con.execute("select count(*) from segment_transitions where run_id = 'seg-2026-10-31'").fetchone()[0] >= 4
    from pipelines.warehouse import connect

    with connect(settings.warehouse_path, read_only=True) as wh:
        # the table channel is always on: every open alert of the run is recorded as delivered
        open_alerts = wh.execute(
            "select count(*) from alerts.churn_risk_alerts where status = 'open' and last_seen_run_id = 'seg-2026-10-31'"
        ).fetchone()[0]
        delivered = wh.execute("select count(distinct alert_id) from alerts.deliveries where channel = 'table'").fetchone()[0]
    assert delivered >= open_alerts


def test_features_dag_announced_its_asset_with_the_date(airflow_runs):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "needseg_customer_features")
            .all()
        )
        assert [e.extra.get("as_of") for e in events] == ["2026-09-30"]


def test_later_tasks_in_the_same_process_use_their_own_data_dir(airflow_runs, tmp_path, monkeypatch):
    # cosmos copies its tasks' environment into the process for good (its lineage step):
    # what it is handed must not redirect a later needseg task to this world's warehouse
    monkeypatch.setenv("NEEDSEG_DATA_DIR", str(tmp_path))
    assert load_settings().warehouse_path == tmp_path / "warehouse.duckdb"
