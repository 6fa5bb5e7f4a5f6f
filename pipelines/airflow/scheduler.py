"""Airflow's own scheduler, run locally for `make demo`: the months are backfills, so the
runs get the logical dates the DAGs' timetables make (the segmentation of August is the
run of 1 September 03:00), real start and end times, and the features and alerts DAGs run
because their assets were updated, exactly as in production.

`LocalAirflow` starts the API server (tasks report to its execution API), the scheduler
(LocalExecutor, one task slot per core) and the DAG processor in their own process
groups, and stops them all on exit. `backfill` and `wait_for_run` drive one DAG run from
the demo process through the metadata database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines import clock
from pipelines.errors import NeedsegError

COMPONENTS = ("api-server", "scheduler", "dag-processor")
TERMINAL = ("success", "failed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    """Airflow's API server on `port` answers its health check."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class RunState:
    dag_id: str
    run_id: str
    run_type: str
    state: str
    logical_date: dt.datetime | None
    tasks_done: int
    tasks_total: int
    running: list[str]
    seconds: float

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


class LocalAirflow:
    """API server, scheduler and DAG processor on this machine, for the demo."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []

    def environment(self) -> dict[str, str]:
        env = os.environ.copy()
        env["AIRFLOW__API__PORT"] = str(self.port)
        env["AIRFLOW__API__BASE_URL"] = f"http://localhost:{self.port}"
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://localhost:{self.port}/execution/"
        return env

    def start(self) -> None:
        exe = Path(sys.executable).with_name("airflow")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        os.environ.update({k: env[k] for k in ("AIRFLOW__API__PORT", "AIRFLOW__API__BASE_URL", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL")})
        with open(self.log_path, "a") as log:
            for component in COMPONENTS:
                self.processes.append(
                    subprocess.Popen([str(exe), component], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                )

    def check_alive(self) -> None:
        for component, process in zip(COMPONENTS, self.processes, strict=True):
            if process.poll() is not None:
                raise NeedsegError(f"Airflow's {component} exited with code {process.returncode}; see {self.log_path}")

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()

    def wait_ready(self, dag_ids: tuple[str, ...], tick: Callable[[str], None], since: dt.datetime, timeout: float = 600) -> None:
        """Until the API answers and this DAG processor has parsed every DAG (so what the
        scheduler reads was parsed with this environment, not an earlier one)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            errors = import_errors(since)
            if errors:
                raise NeedsegError("DAG import errors:\n" + "\n".join(f"- {f}: {e.strip().splitlines()[-1]}" for f, e in errors.items()))
            missing = unparsed_dags(dag_ids, since)
            api = healthy(self.port)
            if api and not missing:
                return
            if time.monotonic() > deadline:
                raise NeedsegError(f"Airflow did not get ready within {timeout:.0f} s; see {self.log_path}")
            waiting = [*([] if api else ["the API server"]), *([f"{len(missing)} DAG(s) parsed"] if missing else [])]
            tick("waiting for " + " and ".join(waiting))
            time.sleep(2)


@contextlib.contextmanager
def local_airflow(log_path: Path) -> Iterator[LocalAirflow]:
    airflow = LocalAirflow(log_path)
    airflow.start()
    try:
        yield airflow
    finally:
        airflow.stop()


def import_errors(since: dt.datetime) -> dict[str, str]:
    """DAG files the DAG processor could not import since a moment, with the error."""
    from airflow.models.errors import ParseImportError
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(ParseImportError).where(ParseImportError.timestamp >= since))
        return {row.filename: row.stacktrace or "" for row in rows}


def unparsed_dags(dag_ids: tuple[str, ...], since: dt.datetime) -> list[str]:
    """The DAGs not parsed (and stored) since a moment."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        parsed = set(session.scalars(select(DagModel.dag_id).where(DagModel.dag_id.in_(dag_ids), DagModel.last_parsed_time >= since)))
    return [d for d in dag_ids if d not in parsed]


def set_paused(dag_ids: tuple[str, ...], paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id.in_(dag_ids)).values(is_paused=paused))


def _busy(exc: BaseException) -> bool:
    """SQLite's "database is locked", or a backfill the scheduler has not marked complete yet."""
    return "database is locked" in str(exc) or type(exc).__name__ == "AlreadyRunningBackfill"


def close_unfinished_backfills(dag_ids: tuple[str, ...]) -> int:
    """Backfills an interrupted demo left open: their unfinished runs are marked failed and
    the backfills complete, so they neither run later nor block a new backfill."""
    from airflow.models.backfill import Backfill
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select, update

    with create_session() as session:
        open_ids = list(session.scalars(select(Backfill.id).where(Backfill.dag_id.in_(dag_ids), Backfill.completed_at.is_(None))))
        if open_ids:
            session.execute(
                update(DagRun).where(DagRun.backfill_id.in_(open_ids), DagRun.state.in_(("queued", "running"))).values(state="failed")
            )
            session.execute(update(Backfill).where(Backfill.id.in_(open_ids)).values(completed_at=clock.utc_now()))
    return len(open_ids)


def backfill(dag_id: str, day: dt.date, attempts: int = 15) -> None:
    """A backfill of `dag_id` over one day (UTC): the runs its timetable makes that day,
    re-running any that exist already. A busy SQLite database is waited for, not failed."""
    from airflow.models.backfill import ReprocessBehavior, _create_backfill

    start = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
    for attempt in range(attempts):
        try:
            _create_backfill(
                dag_id=dag_id,
                from_date=start,
                to_date=start + dt.timedelta(hours=23, minutes=59),
                max_active_runs=1,
                reverse=False,
                dag_run_conf=None,
                triggering_user_name="needseg demo",
                reprocess_behavior=ReprocessBehavior.COMPLETED,
            )
            return
        except Exception as exc:
            if not _busy(exc):
                raise
            # A backfill row written before the lock hit would block the next attempt.
            close_unfinished_backfills((dag_id,))
            time.sleep(min(2 + attempt, 10))
    raise NeedsegError(f"could not create the backfill of {dag_id}: Airflow's metadata database stayed busy")


def latest_run(dag_id: str, run_type: str | None = None, after: dt.datetime | None = None) -> RunState | None:
    """The newest run of a DAG (of a type, queued after a moment), with its task counts."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(DagRun).where(DagRun.dag_id == dag_id)
        if run_type:
            query = query.where(DagRun.run_type == run_type)
        if after is not None:
            query = query.where(DagRun.queued_at >= after)
        run = session.scalars(query.order_by(DagRun.id.desc()).limit(1)).first()
        if run is None:
            return None
        tasks = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
        ).all()
        done = sum(1 for _, state in tasks if state in ("success", "skipped", "failed", "upstream_failed"))
        running = [task for task, state in tasks if state == "running"]
        start = run.start_date or run.queued_at
        end = run.end_date or clock.utc_now()
        return RunState(
            dag_id=dag_id,
            run_id=run.run_id,
            run_type=str(run.run_type.value if hasattr(run.run_type, "value") else run.run_type),
            state=str(run.state.value if hasattr(run.state, "value") else run.state),
            logical_date=run.logical_date,
            tasks_done=done,
            tasks_total=len(tasks),
            running=running,
            seconds=(end - start).total_seconds() if start else 0.0,
        )


def wait_for_run(
    find: Callable[[], RunState | None], on_poll: Callable[[RunState | None], None], airflow: LocalAirflow, timeout: float = 3600
) -> RunState:
    """Poll until the run `find` returns has ended; `on_poll` sees every state on the way."""
    deadline = time.monotonic() + timeout
    while True:
        airflow.check_alive()
        try:
            state = find()
        except Exception as exc:
            if not _busy(exc):
                raise
            state = None
        on_poll(state)
        if state is not None and state.finished:
            return state
        if time.monotonic() > deadline:
            raise NeedsegError(f"no finished run after {timeout:.0f} s; see {airflow.log_path}")
        time.sleep(2)
