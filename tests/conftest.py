"""Shared fixtures. Airflow and needseg are pointed at throwaway folders before anything
imports Airflow, so tests never touch ./data or ./.airflow."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="needseg-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["NEEDSEG_DATA_DIR"] = str(_SESSION_DIR / "default-data")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # One worker per core: BLAS/OpenMP thread pools that each size themselves to every core
    # would make the workers' threads fight over the same cores.
    for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NEEDSEG_FIT_THREADS"):
        os.environ.setdefault(_threads, "1")

from pipelines.airflow import env as airflow_env  # noqa: E402 - after the environment is set

airflow_env.configure()


# A small world: enough surveyed customers to segment, quick to run.
SMALL_WORLD = dict(seed=7, customers=450, prospects=40, start_month="2025-01", end_month="2026-10", drift_window_start="2026-02")


# `make test` runs the suite on every core (pytest-xdist, --dist loadfile): one test file is
# one unit of work, slowest first so the workers finish together (seconds measured in CI on
# one worker: evaluation 340, production Airflow 235, Airflow e2e 230, cycles 125, backtest
# 60, the ingest DAG's gate 60, the evaluation suite's slice 45-85 CPU s (its world in a child process; the file's
# other tests 15), dbt project 30, Wholesale 25, deployment 25, Online Retail 20; every other file under 15).
SLOWEST_FIRST = (
    "test_evaluation.py",
    "test_bench.py",
    "test_repeatable.py",
    "test_production_airflow.py",
    "test_e2e_airflow.py",
    "test_cycle.py",
    "test_evaluation_suite.py",
    "test_taxonomy.py",
    "test_taxonomy_change.py",
    "test_key_accounts.py",
    "test_explain.py",
    "test_backtest.py",
    "test_dag_ingest_gate.py",
    "test_dbt.py",
    "test_wholesale.py",
    "test_online_retail.py",
    "test_deployment.py",
)
# The end-to-end tier: whole pipeline cycles, Airflow, the evaluation world. `make test` runs
# everything; `make test-fast` (pytest -m "not slow") leaves these out for everyday runs.
SLOW_TIER = {
    "test_evaluation.py",
    "test_bench.py",  # a whole cycle on a bench world
    "test_repeatable.py",  # two features builds of ~177k order lines
    "test_production_airflow.py",
    "test_e2e_airflow.py",
    "test_cycle.py",
    "test_taxonomy.py",
    "test_taxonomy_change.py",
    "test_key_accounts.py",
    "test_explain.py",
    "test_backtest.py",
    "test_dag_ingest_gate.py",
    "test_report_browser.py",
    "test_commands_as_written.py",
    "test_no_survey.py",  # a whole cycle without surveys, and the cycled small world
    "test_alert_consistency.py",  # the cycled small world
    "test_churn_days.py",  # three features builds of a generated world
}
# Files that share a session fixture (cycled_small_world) run on one worker, so it is built once.
SAME_WORKER_AS = {
    name: "test_cycle.py"
    for name in (
        "test_taxonomy.py",
        "test_taxonomy_change.py",
        "test_key_accounts.py",
        "test_explain.py",
        "test_report_browser.py",
        "test_commands_as_written.py",
        "test_no_survey.py",
        "test_alert_consistency.py",
    )
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    for item in items:
        if item.path.name in SLOW_TIER:
            item.add_marker(pytest.mark.slow)
        shared = "cycled_small_world" in getattr(item, "fixturenames", ())
        if shared and item.path.name != "test_cycle.py" and item.path.name not in SAME_WORKER_AS:
            raise pytest.UsageError(f"{item.path.name} uses cycled_small_world: add it to SAME_WORKER_AS in tests/conftest.py")
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("xdist"):
        return
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        """Whole files per worker, except that SAME_WORKER_AS files travel together."""

        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            folder, _, name = scope.rpartition("/")
            return f"{folder}/{SAME_WORKER_AS[name]}" if name in SAME_WORKER_AS else scope

    class Plugin:
        @pytest.hookimpl(tryfirst=True)
        def pytest_xdist_make_scheduler(self, config, log):
            if config.getvalue("dist") == "loadfile":
                return SharedFixtureScheduling(config, log)
            return None

    config.pluginmanager.register(Plugin(), "needseg-shared-fixture-scheduling")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def small_world(session_dir: Path) -> Path:
    from pipelines.demo.world import WorldSpec, generate

    out = session_dir / "small-world"
    generate(out, WorldSpec(**SMALL_WORLD))
    return out


@pytest.fixture
def data_dir(tmp_path: Path):
    """Settings for a fresh data dir."""
    from pipelines.settings import load_settings

    return load_settings(tmp_path / "data")


@pytest.fixture(scope="module", autouse=True)
def _environment_restored():
    """Each test file starts from the environment the session started with. Some code sets
    variables for the processes it starts (`needseg demo` sets NEEDSEG_SCHEDULE_END and
    NEEDSEG_DATA_DIR for Airflow's); left behind, a later file's DAGs would end in the past."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# The files whose fixtures are the bad-input classes: there every validation of the quality
# gate also runs great_expectations over every row and must give the same answer, row by
# row, as the DuckDB-marked validation the gate runs (pipelines/quality/gate.py).
CROSS_CHECKED_GATE = {
    "test_bad_input.py",
    "test_parsing.py",
    "test_ingest.py",
    "test_hostile_input.py",
    "test_mappings.py",
    "test_data_docs.py",
    "test_gate_prefilter.py",
}


@pytest.fixture(scope="module", autouse=True)
def _gate_cross_checked(request):
    if Path(str(request.module.__file__)).name not in CROSS_CHECKED_GATE:
        yield
        return
    from pipelines.quality.gate import QualityGate

    QualityGate.cross_check = True
    yield
    QualityGate.cross_check = False


@pytest.fixture(scope="session")
def cycled_small_world(session_dir: Path, small_world: Path):
    """The small world run through full CLI cycles for its last three months."""
    from pipelines.cycle import run_cycle
    from pipelines.demo.runner import month_end
    from pipelines.demo.world import deliver
    from pipelines.settings import load_settings

    settings = load_settings(session_dir / "cycled")
    reports = []
    for month in ("2026-08", "2026-09", "2026-10"):
        deliver(small_world, settings.landing_dir, month)
        reports.append(run_cycle(month_end(month), settings))
    return settings, reports


def warehouse_copy(source: Path, target: Path) -> Path:
    """A copy of a warehouse file with everything committed to it: dbt, run in this process,
    keeps its connection open, so recent changes may still sit in the write-ahead log."""
    from pipelines.warehouse import connect

    with connect(source) as con:
        con.execute("checkpoint")
    shutil.copy(source, target)
    return target


def shared_data(*parts: str) -> Path:
    """A file in ../shared/data, or skip the test saying why."""
    from pipelines.settings import public_data_dir

    path = public_data_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the public dataset {path} (../shared/data is not present on this machine; NEEDSEG_SHARED_DATA can point to it)")
    return path


def rows(database, sql: str, params=None) -> list[tuple]:
    """Rows of a query on a DuckDB file, read-only (for assertions)."""
    import duckdb

    con = duckdb.connect(str(database), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def account_order_days(con) -> None:
    """`intermediate.int_account_order_days` from a hand-made `intermediate.int_order_lines__priced`
    (order_id, account_id, order_date, revenue, is_return, discount, category_class): the
    per-day figures the churn history reads, as the dbt model adds them up from the lines
    (tests/test_churn_days.py checks the model itself on generated worlds)."""
    con.execute(
        """create or replace table intermediate.int_account_order_days as
        with per_order as (
            select account_id, order_date::date as order_day, order_id,
                   count(*) as lines, count(*) filter (where is_return) as return_lines,
                   count(*) filter (where not is_return) as purchase_lines,
                   sum(revenue) filter (where not is_return) as purchase_revenue,
                   sum(discount::decimal(18, 6)) filter (where not is_return) as discount_sum,
                   count(discount) filter (where not is_return) as discounted_lines,
                   count(*) filter (where not is_return and category_class = 'premium') as premium_lines,
                   count(*) filter (where not is_return and category_class = 'service') as service_lines
            from intermediate.int_order_lines__priced group by all
        )
        select account_id, order_day, date_trunc('month', order_day)::date as order_month,
               count(*) filter (where purchase_lines > 0)::bigint as purchase_orders,
               sum(lines)::bigint as lines, sum(return_lines)::bigint as return_lines,
               sum(purchase_lines)::bigint as purchase_lines, sum(purchase_revenue) as purchase_revenue,
               sum(discount_sum) as discount_sum, sum(discounted_lines)::bigint as discounted_lines,
               sum(premium_lines)::bigint as premium_lines, sum(service_lines)::bigint as service_lines
        from per_order group by all"""
    )
