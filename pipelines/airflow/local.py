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
import urllib.request
from pathlib import Path

from pipelines.airflow import env as airflow_env


def _password(home: Path) -> str | None:
    for name in ("simple_auth_manager_passwords.json.generated", "simple_auth_manager_passwords.json"):
        path = home / name
        if path.exists():
            try:
                return json.loads(path.read_text()).get("admin")
            except ValueError:
                return None
    return None


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


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
            [str(exe), "standalone"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True
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
        while not _healthy(port):
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
        print(
            "DAGs: needseg_ingest, needseg_features, needseg_segmentation, needseg_alerts (paused until you switch them on; "
            "the demo's runs are listed). Ctrl-C stops Airflow.",
            flush=True,
        )
        process.wait()
        return process.returncode or 0
    except KeyboardInterrupt:
        print("\nstopping Airflow ...", flush=True)
        stop()
        return 0
