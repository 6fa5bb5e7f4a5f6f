"""The ingest DAG when the quality gate says no: Airflow runs needseg_ingest (dag.test runs
the real task in this process) on a small landing folder with an empty file, or a file
changed after it was loaded. The task must fail at once (no retries: the same file fails
the same way until someone fixes it), name the file and the expectation, emit no
needseg_raw event (so the features and segmentation DAGs do not run and nothing is
published), and still load the files that were fine."""

from __future__ import annotations

import datetime as dt
import itertools

import duckdb
import pytest

from pipelines.demo.runner import frozen_heap
from pipelines.settings import PROJECT_ROOT, load_settings

AS_OF = dt.date(2026, 1, 31)
ACCOUNTS = "account_id,account_name,status,updated_at\nA1,Alpha AB,customer,2025-01-01\n"
ORDERS = "order_id,line_number,account_id,order_date,quantity,net_price,currency\nO1,1,A1,2025-06-01,1,10.00,EUR\n"


@pytest.fixture(scope="module")
def airflow(session_dir):
    """The ingest DAG, parsed with retries on (2, no delay between tries), on its own data dir."""
    from pipelines.airflow import env as airflow_env

    mp = pytest.MonkeyPatch()
    mp.setenv("NEEDSEG_DATA_DIR", str(session_dir / "dag-ingest-gate"))
    mp.setenv("NEEDSEG_TASK_RETRIES", "2")
    mp.setenv("NEEDSEG_RETRY_DELAY_MINUTES", "0")  # a retry (the bug) would run at once, not hang the test
    airflow_env.ensure_metadata_db()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "needseg_ingest.py"))
    assert bag.import_errors == {}
    dag = bag.get_dag("needseg_ingest")
    assert dag.get_task("ingest_landing_files").retries == 2
    yield dag, load_settings()
    mp.undo()


_RUNS = itertools.count()


def _run(dag, **conf):
    """A run of the DAG as of AS_OF (each with its own logical date, so each is a new run)."""
    with frozen_heap():
        return dag.test(
            logical_date=dt.datetime.combine(AS_OF, dt.time(23), tzinfo=dt.UTC) + dt.timedelta(seconds=next(_RUNS)),
            run_conf={"as_of": AS_OF.isoformat(), **conf},
        )


def _task(run):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id="ingest_landing_files").one()
        return str(ti.state), ti.try_number


def _raw_events(run) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "needseg_raw", AssetEvent.source_run_id == run.run_id)
            .all()
        )
        return [dict(e.extra or {}) for e in events]


def _write(settings, rel: str, text: str) -> None:
    path = settings.landing_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _count(settings, sql: str) -> int:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def test_a_refused_file_fails_the_task_at_once_naming_file_and_expectation_and_publishes_nothing(airflow, capfd):
    dag, settings = airflow
    _write(settings, "crm/accounts/accounts.csv", ACCOUNTS)
    _write(settings, "crm/order_lines/good.csv", ORDERS)
    _write(settings, "crm/order_lines/empty.csv", "")

    run = _run(dag)
    logs = "".join(capfd.readouterr())

    assert str(run.state) == "failed"
    assert _task(run) == ("failed", 1)  # not retried, although the task has 2 retries
    assert "AirflowFailException" in logs and "GateFailed" in logs
    failure = next(line for line in logs.splitlines() if "crm/order_lines/empty.csv:" in line)
    assert "the file is empty" in failure and "[expect_table_row_count_to_be_between]" in failure
    assert _raw_events(run) == []  # needseg_features is not triggered ...
    assert not settings.serving_path.exists()  # ... and nothing is published
    # the files that were fine did load; the refused one is on record with its reason
    assert _count(settings, "select count(*) from raw.order_lines") == 1
    assert _count(settings, "select count(*) from meta.batches where status = 'rejected' and file = 'crm/order_lines/empty.csv'") == 1

    # Fixed (the empty extract removed): the next run succeeds and announces the raw data.
    (settings.landing_dir / "crm/order_lines/empty.csv").unlink()
    fixed = _run(dag)
    assert str(fixed.state) == "success" and _raw_events(fixed) == [{"as_of": AS_OF.isoformat(), "rows_loaded": 0}]


def test_a_file_changed_after_loading_fails_the_task_until_accepted(airflow, capfd):
    dag, settings = airflow
    _write(settings, "crm/accounts/accounts.csv", ACCOUNTS.replace("Alpha AB", "Alpha Group AB"))
    capfd.readouterr()

    run = _run(dag)
    logs = "".join(capfd.readouterr())

    assert str(run.state) == "failed" and _task(run) == ("failed", 1)
    assert "FilesChanged" in logs and "crm/accounts/accounts.csv changed after it was loaded" in logs
    assert _raw_events(run) == []
    assert _count(settings, "select count(*) from raw.accounts") == 1  # not appended

    accepted = _run(dag, accept_changed=True)
    assert str(accepted.state) == "success"
    assert _count(settings, "select count(*) from raw.accounts") == 2  # the new version, as a new batch


def test_only_errors_that_fail_the_same_way_every_time_skip_the_retries():
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines.airflow.support import fails_for_good, run_step
    from pipelines.errors import ConfigError, NeedsegError
    from pipelines.ingest.http_source import HttpSourceError
    from pipelines.ingest.loader import FilesChanged, FilesNotLoadable, GateFailed, IngestReport, SourcesNotFetched
    from pipelines.warehouse import WarehouseLocked

    report = IngestReport(as_of="2026-01-31")
    for permanent in (GateFailed("x", report), FilesNotLoadable("x", report), FilesChanged("x", report), ConfigError("bad mapping")):
        assert fails_for_good(permanent), permanent
    for transient in (
        SourcesNotFetched("x", report),
        HttpSourceError("API down"),
        WarehouseLocked("locked"),
        NeedsegError("?"),
        OSError("disk"),
    ):
        assert not fails_for_good(transient), transient

    def refuse():
        raise GateFailed("- crm/order_lines/empty.csv: the file is empty [expect_table_row_count_to_be_between]", report)

    with pytest.raises(
        AirflowFailException, match=r"crm/order_lines/empty.csv: the file is empty \[expect_table_row_count_to_be_between\]"
    ):
        run_step(refuse)

    def api_down():
        raise HttpSourceError("crm_api accounts: 503")

    with pytest.raises(HttpSourceError):
        run_step(api_down)
    assert run_step(lambda a, b=0: a + b, 1, b=2) == 3
