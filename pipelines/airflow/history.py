"""How the DAGs last ended, read from Airflow's metadata database for `needseg status`.

Read with SQLAlchemy straight from the `dag_run` table (no Airflow import, so `status`
stays quick): the database Airflow is configured with (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN,
e.g. PostgreSQL in production), or the local SQLite file under .airflow/. When it cannot
be reached, the caller gets the reason instead of runs.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from pipelines.airflow import env as airflow_env

NEEDSEG_DAGS = ("needseg_ingest", "needseg_features", "needseg_segmentation", "needseg_alerts")


@dataclass
class DagRunSummary:
    dag_id: str
    state: str
    run_type: str
    logical_date: dt.datetime | None
    start_date: dt.datetime | None
    end_date: dt.datetime | None

    def line(self) -> str:
        logical = f"logical date {self.logical_date:%Y-%m-%d %H:%M}" if self.logical_date else "no logical date"
        ended = f"ended {self.end_date:%Y-%m-%d %H:%M} UTC" if self.end_date else "still running"
        took = ""
        if self.start_date and self.end_date:
            seconds = (self.end_date - self.start_date).total_seconds()
            took = f", took {seconds / 60:.1f} min" if seconds >= 60 else f", took {seconds:.0f} s"
        return f"{self.dag_id:<22} {self.state:<8} {self.run_type:<16} {logical}, {ended}{took}"


def metadata_url() -> str:
    configured = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    return configured or f"sqlite:///{airflow_env.airflow_home() / 'airflow.db'}"


def _where(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def latest_runs(dag_ids: tuple[str, ...] = NEEDSEG_DAGS) -> tuple[list[DagRunSummary], str]:
    """The newest run of each DAG, and where they were read from (or why they could not be)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    url = metadata_url()
    where = _where(url)
    if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
        return [], f"Airflow's metadata database is not reachable ({where} does not exist: no local Airflow run yet)"
    connect_args = {"connect_timeout": 3} if url.startswith("postgresql") else {}
    engine = create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as con:
            rows = con.execute(
                text(
                    "select dag_id, state, run_type, logical_date, start_date, end_date from ("
                    "  select *, row_number() over (partition by dag_id order by id desc) as n from dag_run"
                    "  where dag_id in (" + ", ".join(f":d{i}" for i in range(len(dag_ids))) + ")"
                    ") latest where n = 1 order by dag_id"
                ),
                {f"d{i}": d for i, d in enumerate(dag_ids)},
            ).fetchall()
    except SQLAlchemyError as exc:
        return [], f"Airflow's metadata database is not reachable ({where}): {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()
    return [DagRunSummary(*(_as_time(v) if i >= 3 else v for i, v in enumerate(row))) for row in rows], where


def _as_time(value) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def run_counts(dag_ids: tuple[str, ...] = NEEDSEG_DAGS) -> dict[str, dict[str, int]]:
    """Runs per DAG and run type (backfill, scheduled, asset_triggered, manual); empty when
    the metadata database cannot be read."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    url = metadata_url()
    if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
        return {}
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            rows = con.execute(
                text("select dag_id, run_type, count(*) from dag_run group by dag_id, run_type order by dag_id, run_type")
            ).fetchall()
    except SQLAlchemyError:
        return {}
    finally:
        engine.dispose()
    counts: dict[str, dict[str, int]] = {}
    for dag_id, run_type, n in rows:
        if dag_id in dag_ids:
            counts.setdefault(dag_id, {})[str(run_type).replace("_", "-")] = int(n)
    return counts
