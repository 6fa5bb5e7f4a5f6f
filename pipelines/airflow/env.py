"""The environment a local Airflow runs needseg's DAGs in (make airflow, make demo, tests).

Everything lives inside the project (`.airflow/`): a SQLite metadata database, logs, the
cosmos cache. Values already set in the environment win, so a deployment (PostgreSQL,
CeleryExecutor; see docker-compose.yml) configures Airflow its own way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.settings import PROJECT_ROOT


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME", PROJECT_ROOT / ".airflow"))


def parallelism() -> int:
    """Task slots for a local Airflow: one per core, at least 2 (a task that only reads can
    run beside the one writer the warehouse pool lets through)."""
    return max(2, os.cpu_count() or 2)


def defaults(home: Path | None = None) -> dict[str, str]:
    home = home or airflow_home()
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Task slots sized to the machine: Airflow's default, 32 LocalExecutor workers,
        # is about 6 GB of forked processes on a 2-core laptop for no gain.
        "AIRFLOW__CORE__PARALLELISM": str(parallelism()),
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__DAG_FILE_PROCESSOR_TIMEOUT": "180",
        # needseg_preload: the scheduler imports dbt and the pipeline once, so LocalExecutor's
        # forked task processes start with them (see the plugin's docstring).
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "pipelines" / "airflow" / "plugins"),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "AIRFLOW__COSMOS__CACHE_DIR": str(home / "cosmos_cache"),
        "AIRFLOW__COSMOS__PROPAGATE_LOGS": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "GX_ANALYTICS_ENABLED": "False",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        "DO_NOT_TRACK": "1",
    }


# How long SQLite waits for a lock before "database is locked" (Python's default is 5 s):
# on 2 busy cores the scheduler's write transactions can take longer than that.
SQLITE_CONNECT_ARGS = {"timeout": 60}


def sqlite_settings() -> dict[str, str]:
    """Local SQLite metadata only (a deployment's PostgreSQL takes no such argument)."""
    if os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite").startswith("sqlite"):
        return {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "pipelines.airflow.env.SQLITE_CONNECT_ARGS"}
    return {}


def configure(home: Path | None = None) -> dict[str, str]:
    """Set the defaults into os.environ (keeping what is already set); before importing airflow."""
    env = {**defaults(home), **sqlite_settings()}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    return {k: os.environ[k] for k in env}


def airflow_command(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    """Run the `airflow` CLI of this environment with the local defaults."""
    configure()
    exe = Path(sys.executable).with_name("airflow")
    return subprocess.run([str(exe), *args], check=check, capture_output=capture, text=True, env=os.environ.copy())


def ensure_metadata_db() -> None:
    """Create or upgrade the metadata database and the warehouse pool (idempotent)."""
    configure()
    airflow_command("db", "migrate")
    airflow_command("pools", "set", "needseg_warehouse", "1", "One writer at a time on the needseg DuckDB warehouse")
