"""The production path: Airflow with its metadata on PostgreSQL and the CeleryExecutor
with Redis as broker - scheduler, DAG processor, API server and a Celery worker as
separate processes, on the PostgreSQL and Redis this machine runs. A run is triggered over
the REST API; the asset it produces triggers the features DAG, which runs dbt through
cosmos on the worker. Skipped, saying why, where PostgreSQL or Redis are not reachable."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.airflow import env as airflow_env
from pipelines.demo.world import deliver
from pipelines.settings import load_settings

PG = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("NEEDSEG_TEST_PG_USER", "postgres")}
REDIS_DB = 11
# What the test's Airflow processes must not inherit from the test process: its own Airflow
# settings, and needseg/dbt locations that earlier in-process runs may have left behind
# (cosmos leaves a dbt task's env vars set in the process that ran it).
INHERITED_PREFIXES_DROPPED = ("AIRFLOW", "NEEDSEG_", "DBT_")


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def production_environment(database_url: str, broker_url: str, api_base: str) -> dict[str, str]:
    """The Airflow settings of the production path: what docker-compose.yml sets for every
    Airflow component (tests/test_deployment.py holds the two to the same keys)."""
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url.replace("+psycopg2", ""),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_base}/execution/",
        "AIRFLOW__API__BASE_URL": api_base,
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
    }


@pytest.fixture(scope="module")
def production_airflow(tmp_path_factory, small_world):
    if not (_reachable(5432) and _reachable(6379)):
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (the production path)")
    psycopg2 = pytest.importorskip("psycopg2", reason="the production extra is not installed (uv sync --extra production)")
    redis = pytest.importorskip("redis", reason="the production extra is not installed (uv sync --extra production)")
    database = f"needseg_airflow_{os.getpid()}"
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    admin.cursor().execute(f'create database "{database}"')
    # A queue of its own, so a concurrent run on this machine can neither take nor drop its tasks.
    queue = f"needseg_test_{os.getpid()}_{secrets.token_hex(4)}"

    root = tmp_path_factory.mktemp("production")
    settings = load_settings(root / "data")
    deliver(small_world, settings.landing_dir, "2026-09")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES_DROPPED)}
    env.update(airflow_env.defaults(root / "airflow"))
    url = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{database}"
    env.update(production_environment(url, f"redis://127.0.0.1:6379/{REDIS_DB}", base))
    env.update(
        {
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "NEEDSEG_DATA_DIR": str(settings.data_dir),
            "NEEDSEG_TASK_RETRIES": "0",
            "NEEDSEG_INGEST_SCHEDULE": "none",
            "NEEDSEG_SEGMENTATION_SCHEDULE": "none",
        }
    )
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "needseg_warehouse", "1", "needseg"], env=env, check=True, capture_output=True)
    processes = []
    logs = root / "logs"
    logs.mkdir()
    for name, args in (
        ("api-server", ["api-server", "--port", str(port)]),
        ("scheduler", ["scheduler"]),
        ("dag-processor", ["dag-processor"]),
        ("worker", ["celery", "worker", "--concurrency", "2"]),
    ):
        out = open(logs / f"{name}.log", "w")
        processes.append((subprocess.Popen([airflow, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True), out))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                dags = {d["dag_id"] for d in _api(base, "GET", "/api/v2/dags")["dags"]}
                if {"needseg_ingest", "needseg_features"} <= dags:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Airflow did not list the DAGs within 120 s; logs in {logs}")
            time.sleep(2)
        for dag_id in ("needseg_ingest", "needseg_features"):
            _api(base, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run = _api(base, "POST", "/api/v2/dags/needseg_ingest/dagRuns", {"logical_date": None, "conf": {"as_of": "2026-09-30"}})
        yield base, run["dag_run_id"], settings, logs, database
    finally:
        for process, _log in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process, out in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            out.close()
        broker = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        leftovers = list(broker.scan_iter(f"*{queue}*"))
        if leftovers:
            broker.delete(*leftovers)
        admin.cursor().execute(f'drop database if exists "{database}" with (force)')
        admin.close()


def _wait_for(base: str, dag_id: str, logs: Path, run_id: str | None = None, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _api(base, "GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed") and run_id in (None, r["dag_run_id"])]
        if done:
            return done[0]
        time.sleep(3)
    pytest.fail(f"{dag_id} did not finish within {timeout:.0f} s; logs in {logs}")


def test_a_triggered_ingest_runs_on_a_celery_worker_and_its_asset_triggers_the_features_dag(production_airflow):
    base, run_id, settings, logs, database = production_airflow
    ingest = _wait_for(base, "needseg_ingest", logs, run_id)
    assert ingest["state"] == "success", f"see {logs}"
    features = _wait_for(base, "needseg_features", logs)
    assert features["state"] == "success", f"see {logs}"
    assert features["run_type"] == "asset_triggered"
    tasks = _api(base, "GET", f"/api/v2/dags/needseg_features/dagRuns/{features['dag_run_id']}/taskInstances")["task_instances"]
    assert {t["state"] for t in tasks} == {"success"} and len(tasks) > 10
    # the features were built as of the date the ingest run's asset event carried
    import duckdb

    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    assert str(con.execute("select max(as_of) from marts.customer_features").fetchone()[0]) == "2026-09-30"
    # and Airflow's own records are in PostgreSQL
    import psycopg2

    pg = psycopg2.connect(dbname=database, **PG)
    with pg.cursor() as cur:
        cur.execute("select count(*) from dag_run where dag_id in ('needseg_ingest', 'needseg_features') and state = 'success'")
        assert cur.fetchone()[0] == 2
        # every task instance went through Celery: the result backend holds one result per task
        cur.execute("select count(*) from task_instance where dag_id in ('needseg_ingest', 'needseg_features')")
        task_count = cur.fetchone()[0]
    # The worker stores a task's Celery result only after Airflow has recorded the task as
    # done, so the last result can arrive a moment after the run finished.
    deadline = time.monotonic() + 60
    while True:
        with pg.cursor() as cur:
            cur.execute("select count(*) from celery_taskmeta where status = 'SUCCESS'")
            results = cur.fetchone()[0]
        pg.commit()
        if results >= task_count or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert results == task_count, f"{results} Celery results for {task_count} task instances; see {logs}"
    pg.close()
