"""`make airflow`: Airflow standalone (API server + UI, scheduler, DAG processor, triggerer)
on this machine with needseg's DAGs, its SQLite metadata database under .airflow/.

Started in its own process group so Ctrl-C (or SIGTERM) stops every child it spawned.
The login comes from SimpleAuthManager's generated password file, printed once the UI
answers its health check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipelines.airflow import env as airflow_env
from pipelines.airflow.scheduler import healthy


def _password(home: Path) -> str | None:
    for name in ("simple_auth_manager_passwords.json.generated", "simple_auth_manager_passwords.json"):
        path = home / name
        if path.exists():
            try:
                return json.loads(path.read_text()).get("admin")
            except ValueError:
                return None
    return None


def _environment() -> dict[str, str]:
    """This process's environment, with this venv's `airflow` first on PATH: standalone
    starts its components as `airflow <component>` (uv is not on PATH after make)."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def what_to_look_at(port: int) -> list[str]:
    """Where the UI shows what the demo (or the schedules) did, with the runs so far."""
    from pipelines.airflow.history import run_counts

    base = f"http://localhost:{port}"
    pages = (
        (
            "/dags",
            "the four DAGs and their schedules: ingest daily, segmentation monthly (1st, 03:00 UTC), "
            "features on the needseg_raw asset, alerts on needseg_segments or every 15 minutes",
        ),
        (
            "/dags/needseg_segmentation",
            "runs with the logical dates the timetable made (a month's run is the 1st at 03:00) "
            "and real durations; Grid: each task's duration and log",
        ),
        ("/dags/needseg_features", "runs triggered by the needseg_raw asset, one task per dbt model"),
        ("/assets", "needseg_raw -> needseg_customer_features -> needseg_segments, each event with its as_of"),
        ("/pools", "needseg_warehouse: 1 slot, one writer at a time on the DuckDB warehouse"),
    )
    width = max(len(base + path) for path, _ in pages)
    lines = [f"Airflow with {airflow_env.parallelism()} task slots (LocalExecutor, one per core); what to look at:"]
    lines += [f"  {base + path:<{width}}  {text}" for path, text in pages]
    counts = run_counts()
    if counts:
        lines.append(
            "  runs so far: "
            + "; ".join(
                f"{dag.removeprefix('needseg_')} {', '.join(f'{n} {kind}' for kind, n in kinds.items())}" for dag, kinds in counts.items()
            )
        )
        lines.append(
            "  after make demo, ingest and segmentation are paused (the demo world ends months ago); unpause them to run today's schedule"
        )
    lines.append("Ctrl-C stops Airflow.")
    return lines


def serve(port: int = 8080, ready_timeout: float = 180.0) -> int:
    env = airflow_env.configure()
    os.environ["AIRFLOW__API__PORT"] = str(port)
    os.environ.setdefault("AIRFLOW__API__BASE_URL", f"http://localhost:{port}")
    home = Path(env["AIRFLOW_HOME"])
    from pipelines.transform import ensure_manifest

    ensure_manifest()
    airflow_env.ensure_metadata_db()
    exe = Path(sys.executable).with_name("airflow")
    log_path = home / "standalone.log"
    print(f"starting Airflow standalone on http://localhost:{port} (log: {log_path}) ...", flush=True)
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            [str(exe), "standalone"], stdout=log, stderr=subprocess.STDOUT, env=_environment(), start_new_session=True
        )

    def stop(*_):
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt

    # Installed explicitly: a launcher started in the background inherits SIGINT as
    # ignored, and Ctrl-C or a SIGTERM must always take Airflow's whole group down.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        deadline = time.monotonic() + ready_timeout
        while not healthy(port):
            if process.poll() is not None:
                print(f"Airflow exited with code {process.returncode}; see {log_path}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"Airflow did not become healthy within {ready_timeout:.0f} s; see {log_path}", file=sys.stderr)
                stop()
                return 1
            time.sleep(1)
        print(
            f"Airflow UI: http://localhost:{port}  login: admin / {_password(home) or '(see ' + str(home) + '/simple_auth_manager_passwords.json.generated)'}",
            flush=True,
        )
        for line in what_to_look_at(port):
            print(line, flush=True)
        process.wait()
        return process.returncode or 0
    except KeyboardInterrupt:
        print("\nstopping Airflow ...", flush=True)
        stop()
        return 0
