"""The production deployment (docker-compose.yml, deploy/Dockerfile) without a Docker
engine: the compose file holds every component docs/design.md lists, gives every Airflow
component the settings the production-path test runs with on this machine's own
PostgreSQL and Redis, keeps secrets out of the repository, and starts only commands that
this Airflow really has, logs everyone in (FAB auth manager, admin from secrets), checks
its Celery worker's health and keeps the unauthenticated mail catcher off the network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.airflow import env as airflow_env
from pipelines.settings import PROJECT_ROOT
from tests.test_production_airflow import production_environment

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "deploy" / "Dockerfile"
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
    "airflow-worker": ["celery", "worker"],
}
# A value is a secret when its key says so; it must come from the deployment's .env.
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN", re.IGNORECASE)
INTERPOLATED = re.compile(r"^\$\{[A-Z0-9_]+(:?[?-][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _airflow_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if name.startswith("airflow-")}


def test_every_component_of_the_deployment_is_there(compose):
    services = set(compose["services"])
    assert {"postgres", "redis", "mailpit", "airflow-init", *AIRFLOW_COMPONENTS} <= services
    for name, svc in _airflow_services(compose).items():
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert svc["image"] == "needseg:latest", name
    for name, args in AIRFLOW_COMPONENTS.items():
        assert compose["services"][name]["command"][1 : 1 + len(args)] == args, name
    init = compose["services"]["airflow-init"]["command"][-1]
    assert "airflow db migrate" in init and "pools set needseg_warehouse 1" in init


def test_airflow_components_get_the_production_settings_the_production_test_runs_with(compose):
    production = production_environment("postgresql+psycopg2://u@h/db", "redis://h:6379/0", "http://h:8080")
    local_defaults = set(airflow_env.defaults(Path("/x")))
    # Paths differ per machine; what must match is that every setting is made.
    expected = set(production) | (local_defaults - {"AIRFLOW_HOME", "AIRFLOW__LOGGING__BASE_LOG_FOLDER"}) | {"AIRFLOW__CORE__AUTH_MANAGER"}
    for name, svc in _airflow_services(compose).items():
        env = svc["environment"]
        assert expected <= set(env), (name, sorted(expected - set(env)))
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        # One warehouse for every worker and component (DuckDB is a file).
        assert "needseg-data:" + env["NEEDSEG_DATA_DIR"] in svc["volumes"], name


def test_no_secret_is_written_into_the_repository(compose):
    def walk(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")
        else:
            yield path, node

    checked = 0
    for path, value in walk(compose):
        key = path.rsplit(".", 1)[-1]
        if SECRET_KEY.search(key) and isinstance(value, str):
            checked += 1
            # Either wholly from the environment, or a URL whose password part is.
            literal = re.sub(r"\$\{[^}]+\}", "", value)
            assert INTERPOLATED.match(value) or (value.startswith(("postgresql", "db+")) and ":@" in literal), (path, value)
    assert checked >= 5
    for url_key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = compose["x-airflow-common"]["environment"][url_key]
        assert ":${NEEDSEG_POSTGRES_PASSWORD" in url, url_key
    # required secrets say where to set them when missing
    assert "${NEEDSEG_POSTGRES_PASSWORD:?" in COMPOSE.read_text()
    assert ".env" in (PROJECT_ROOT / ".gitignore").read_text().split()


def test_the_image_installs_from_the_lock_like_make_install():
    dockerfile = DOCKERFILE.read_text()
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "uv sync --locked" in dockerfile and "--extra production" in dockerfile
    assert "--extra production" in makefile
    uv_pin = re.search(r"UV_VERSION := (\S+)", makefile).group(1)
    assert f"UV_VERSION={uv_pin}" in dockerfile
    assert "needseg dbt-manifest" in dockerfile  # cosmos renders the DAGs from the manifest
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {"data", ".env", ".venv", ".airflow"} <= set(ignored)


FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


def test_the_ui_asks_for_a_login_and_the_admin_comes_from_secrets(compose):
    """Airflow's SimpleAuthManager is for development only: the deployment uses the FAB
    auth manager, and airflow-init creates the admin from .env, never from the repository."""
    import importlib

    for name, svc in _airflow_services(compose).items():
        assert svc["environment"]["AIRFLOW__CORE__AUTH_MANAGER"] == FAB, name
    module, _, cls = FAB.rpartition(".")
    assert hasattr(importlib.import_module(module), cls)  # installed (the production extra)
    init = compose["services"]["airflow-init"]
    script = init["command"][-1]
    assert "airflow users create --role Admin" in script and "$${AIRFLOW_ADMIN_PASSWORD}" in script
    assert init["environment"]["AIRFLOW_ADMIN_PASSWORD"].startswith("${AIRFLOW_ADMIN_PASSWORD:?")
    assert "AIRFLOW_ADMIN_PASSWORD=" in (PROJECT_ROOT / "deploy" / "env.example").read_text()
    help_text = _airflow_help("users", "create", env={"AIRFLOW__CORE__AUTH_MANAGER": FAB})
    for option in ("--role", "--username", "--password", "--email", "--firstname", "--lastname"):
        assert option in help_text, option


def test_the_celery_worker_has_a_healthcheck_that_pings_it(compose):
    import importlib

    test = " ".join(compose["services"]["airflow-worker"]["healthcheck"]["test"])
    app = re.search(r"--app (\S+)\.app inspect ping", test)
    assert app, test
    assert importlib.import_module(app.group(1)).app is not None
    assert "celery@$${HOSTNAME}" in test


def test_the_mail_catcher_is_reachable_from_this_host_only(compose):
    mailpit = compose["services"]["mailpit"]
    assert mailpit["ports"], "the UI should be reachable from the host"
    for port in mailpit["ports"]:
        assert str(port).startswith("127.0.0.1:"), port
        assert not str(port).endswith(":1025"), "SMTP stays inside the compose network"


def _airflow_help(*args: str, env: dict[str, str] | None = None) -> str:
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = {**os.environ, **airflow_env.defaults(), **(env or {})}
    result = subprocess.run([airflow, *args, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_every_command_the_deployment_starts_exists_in_this_airflow(compose):
    top = _airflow_help()
    for args in AIRFLOW_COMPONENTS.values():
        assert re.search(rf"^\s+{args[0]}\s", top, re.MULTILINE), args
    assert re.search(r"^\s+worker\s", _airflow_help("celery"), re.MULTILINE)
    checks = _airflow_help("jobs", "check")
    for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        test = compose["services"][name]["healthcheck"]["test"]
        job_type = test[test.index("--job-type") + 1]
        assert job_type in checks, (name, job_type)
