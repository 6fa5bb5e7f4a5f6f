"""Run the dbt project (dbt_project/) in-process, with needseg's settings as dbt vars and
the as-of date as an environment variable (`AS_OF_ENV`).

The CLI and tests call `build`; Airflow runs the same project, selectors and vars through
astronomer-cosmos (dags/), whose settings also come from here (`dbt_vars`, `dbt_env`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import NeedsegError
from pipelines.settings import DBT_PROJECT_DIR, Settings, duckdb_resources, is_out_of_memory, out_of_memory_hint

log = logging.getLogger(__name__)

FEATURES = "tag:features"
SERVING = "tag:serving"
# dbt writes manifest.json, semantic_manifest.json and run_results.json after every
# invocation with Python's pure-Python JSON encoder: about 1.4 s each time on this project,
# a third of an Airflow model task. needseg reads results from the runner and renders the
# DAGs from the manifest `ensure_manifest` writes, so pipeline runs skip those files.
RUN_FLAGS = ["--no-write-json"]
# dbt unit tests check the SQL against fixed rows, not the data, so a pipeline run gains
# nothing from them; they cost it about a fifth of the features build. The test suite runs
# them (tests/test_dbt.py). An environment variable, so cosmos's tasks leave them out too.
PIPELINE_ENV = {"DBT_EXCLUDE_RESOURCE_TYPES": "unit_test"}
# The as-of date reaches dbt as this environment variable (read by dbt_project/macros/as_of.sql),
# not as a dbt var: dbt keeps its saved parse (target/partial_parse.msgpack) when only
# environment variables change and re-parses just the files that read them, while any change
# of --vars makes it parse the whole project again (about 2.7 CPU s a run). The vars are
# needseg's configuration, the same from one run to the next.
AS_OF_ENV = "NEEDSEG_AS_OF"


class DbtFailed(NeedsegError):
    pass


@dataclass
class DbtResult:
    select: str
    seconds: float
    nodes: int
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def dbt_vars(config: dict[str, Any]) -> dict[str, Any]:
    """needseg's configuration as dbt vars (the as-of date is not one: `dbt_env`)."""
    features = config["features"]
    return {
        "reporting_currency": config["reporting_currency"],
        "fx_rates": config["fx_rates"],
        "premium_categories": list(features["premium_categories"]),
        "service_categories": list(features["service_categories"]),
        "trailing_months": int(features["trailing_months"]),
        "recent_months": int(features["recent_months"]),
        "key_account_revenue_share": float(features["key_account_revenue_share"]),
        "mid_tier_revenue_share": float(features["mid_tier_revenue_share"]),
        "survey_valid_months": int(features["survey_valid_months"]),
        "drift_history_months": int(features["drift_history_months"]),
    }


def profile_env(settings: Settings) -> dict[str, str]:
    """Environment of the pipeline's dbt runs: the warehouse the profile reads
    (dbt_project/profiles.yml says why its variable is not NEEDSEG_WAREHOUSE), DuckDB's
    memory limit, threads and spill folder as needseg's own connections have them
    (pipelines.settings.DuckDBResources), and unit tests left out."""
    resources = duckdb_resources()
    env = {
        "NEEDSEG_DBT_WAREHOUSE": str(settings.warehouse_path),
        # read by the project's on-run-start hook (dbt_project/macros/duckdb_resources.sql)
        "NEEDSEG_DUCKDB_MEMORY_LIMIT": resources.memory_limit,
        "NEEDSEG_DUCKDB_THREADS": str(resources.threads),
    }
    if resources.temp_directory is not None:
        env["NEEDSEG_DUCKDB_TEMP_DIR"] = str(resources.temp_directory)
    return {**env, **PIPELINE_ENV}


def dbt_env(settings: Settings, as_of: str) -> dict[str, str]:
    """Environment of a pipeline dbt run as of a date (YYYY-MM-DD; cosmos passes a template
    of the resolved date): `profile_env` and the as-of date."""
    return {**profile_env(settings), AS_OF_ENV: as_of}


def target_dir(settings: Settings) -> Path:
    """dbt's target and log folder for one data dir, so parallel worlds don't collide."""
    return settings.data_dir / "dbt"


def _project_args(settings: Settings, config: dict[str, Any], target_subdir: str) -> list[str]:
    """What every needseg dbt invocation passes: vars, project, profile, this data dir's
    target and log folders, quiet output."""
    target = target_dir(settings)
    return [
        "--vars",
        json.dumps(dbt_vars(config)),
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target-path",
        str(target / target_subdir),
        "--log-path",
        str(target / "logs"),
        "--quiet",
        "--no-use-colors",
    ]


def _invoke(args: list[str], settings: Settings | None, as_of: dt.date | None = None, unit_tests: bool = False) -> Any:
    from dbt.cli.main import dbtRunner

    env: dict[str, str | None] = {}
    if settings is not None:
        env.update(dbt_env(settings, as_of.isoformat()) if as_of else profile_env(settings))
    if unit_tests:
        # Removed, not just left unset: an earlier in-process run (cosmos under
        # `dag.test()`) may have left the exclusion in this process's environment.
        env.update(dict.fromkeys(PIPELINE_ENV))
    previous = {k: os.environ.get(k) for k in env}
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    try:
        return dbtRunner().invoke(args)
    finally:
        _close_dbt_duckdb()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _close_dbt_duckdb() -> None:
    """Close the DuckDB database dbt-duckdb keeps open in this process after an invocation.

    dbt-duckdb holds one environment per process and closes its database only when every
    cursor has been closed, which an in-process run does not always reach: the database's
    buffer pool (up to the memory limit) then stays allocated through the segmentation and
    drift steps that follow in the same process. The next invocation opens it again
    (a few milliseconds)."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # another adapter: nothing of ours to close
        return
    with DuckDBConnectionManager._LOCK:
        env, DuckDBConnectionManager._ENV = DuckDBConnectionManager._ENV, None
        if env is not None:
            env.close()


def build(
    settings: Settings,
    config: dict[str, Any],
    as_of: dt.date,
    select: str,
    command: str = "build",
    flags: tuple[str, ...] = (),
    unit_tests: bool = False,
) -> DbtResult:
    """`dbt build --select <select>` on the working warehouse; raises DbtFailed on any error.

    `command="run"` builds the models without their tests: for backtests that replay many
    dates of data the test suite has already checked. `flags` go after the command (e.g.
    `--empty`); `unit_tests=True` runs dbt's unit tests too, which pipeline runs leave out.
    """
    started = time.monotonic()
    target = target_dir(settings)
    args = [command, "--select", select, *_project_args(settings, config, "target"), *flags, *RUN_FLAGS]
    result = _invoke(args, settings, as_of, unit_tests)
    failures, warnings, nodes, out_of_memory = _outcome(result)
    # only when running out of memory is all that went wrong (a failing test is not retried)
    retry = _one_at_a_time(select, out_of_memory) if not result.success and len(out_of_memory) == len(failures) else None
    if retry:
        # dbt builds independent nodes side by side (two threads) within DuckDB's one memory
        # limit: at 1M accounts two of the first build's heavy nodes together ran out of it
        # where each alone fits. The nodes that ran out, and what depends on them, are built
        # again one at a time before the build is called failed.
        args = [command, "--select", retry, *_project_args(settings, config, "target"), "--threads", "1", *flags, *RUN_FLAGS]
        result = _invoke(args, settings, as_of, unit_tests)
        again, warnings_again, _, _ = _outcome(result)
        warnings += warnings_again
        names = ", ".join(out_of_memory)
        if result.success:
            warnings.append(
                f"{names}: ran out of DuckDB's memory limit built beside other models, then built again one node at a time; "
                "a larger NEEDSEG_DUCKDB_MEMORY_LIMIT avoids the second pass"
            )
            failures = []
        else:
            failures = [*again, f"{names}: built again one node at a time after running out of memory beside other models; it failed again"]
    if not result.success:
        if result.exception is not None and not failures:
            failures.append(str(result.exception))
        hint = [out_of_memory_hint()] if any(is_out_of_memory(f) for f in failures) else []
        raise DbtFailed(
            f"dbt {command} ({select}, as of {as_of}) failed; nothing downstream runs:\n- "
            + "\n- ".join([*(failures or ["see the dbt log in " + str(target / "logs")]), *hint])
        )
    return DbtResult(select, time.monotonic() - started, nodes, failures, warnings)


def _outcome(result: Any) -> tuple[list[str], list[str], int, list[str]]:
    """A dbt invocation's failures and warnings in words, its node count, and the nodes
    (models, tests) that ran out of DuckDB's memory limit."""
    failures, warnings, nodes, out_of_memory = [], [], 0, []
    for r in result.result or []:
        if r.node.resource_type == "operation":
            continue  # the on-run-start hook (DuckDB's resources), not a model or test
        nodes += 1
        status = str(r.status)
        name = r.node.name
        if status in ("error", "fail", "runtime error"):
            # DuckDB's own advice (SET statements) is not the user's to run: out_of_memory_hint
            message = (r.message or "").split("Possible solutions:")[0].strip()
            failures.append(f"{r.node.resource_type} {name}: {status}: {message[:500]}")
            if is_out_of_memory(message):
                out_of_memory.append(name)
        elif status == "warn":
            warnings.append(f"{name}: {(r.message or '').strip()[:300]}")
    return failures, warnings, nodes, out_of_memory


def _one_at_a_time(select: str, out_of_memory: list[str]) -> str | None:
    """The selection that builds again the nodes that ran out of memory and everything of
    `select` downstream of them (dbt: a space is a union, a comma an intersection); None
    when nothing ran out of memory or `select` is not a single selector."""
    if not out_of_memory or not select or any(c.isspace() for c in select):
        return None
    return " ".join(f"{name}+,{select}" for name in out_of_memory)


MANIFEST = DBT_PROJECT_DIR / "target" / "manifest.json"
# dbt models carrying this tag are what analysts get: the serving database and the exports.
PUBLISHED_TAG = "published"


def manifest_is_stale() -> bool:
    if not MANIFEST.exists():
        return True
    built = MANIFEST.stat().st_mtime
    sources = [DBT_PROJECT_DIR / "dbt_project.yml"]
    for folder in ("models", "macros", "tests", "seeds"):
        sources += list((DBT_PROJECT_DIR / folder).rglob("*.*")) if (DBT_PROJECT_DIR / folder).exists() else []
    return any(p.stat().st_mtime > built for p in sources)


def build_docs(settings: Settings, config: dict[str, Any], as_of: dt.date, out: Path) -> Path:
    """dbt's documentation site as one self-contained HTML file (`dbt docs generate
    --static`: manifest and catalog inlined, nothing fetched from the network), swapped in
    with one rename. The catalog reads the working warehouse, so run it between cycles."""
    from pipelines.files import write_file_atomically

    target = target_dir(settings)
    result = _invoke(["docs", "generate", "--static", *_project_args(settings, config, "docs")], settings, as_of)
    if not result.success:
        raise DbtFailed(f"dbt docs generate failed: {result.exception or 'see the dbt log in ' + str(target / 'logs')}")
    return write_file_atomically(out, static_docs_as_published(target / "docs").encode("utf-8"))


def static_docs_as_published(docs_target: Path) -> str:
    """dbt's one-file docs (what `--static` writes), with every published table named as
    analysts query it: `customer_segments` in serving.duckdb (database "serving", schema
    "main"), not the working warehouse's `warehouse.marts.customer_segments`."""
    from dbt.task.docs import DOCS_INDEX_FILE_PATH

    published = {tuple(rel.split(".")): name for name, rel in serving_tables(docs_target / "manifest.json").items()}
    manifest = json.loads((docs_target / "manifest.json").read_text(encoding="utf-8"))
    catalog = json.loads((docs_target / "catalog.json").read_text(encoding="utf-8"))
    for unique_id, node in manifest.get("nodes", {}).items():
        name = published.get((node.get("schema"), node.get("alias") or node.get("name")))
        if node.get("resource_type") != "model" or name is None:
            continue
        node.update(database="serving", schema="main", relation_name=f'"serving"."main"."{name}"')
        metadata = catalog.get("nodes", {}).get(unique_id, {}).get("metadata")
        if metadata:
            metadata.update(database="serving", schema="main", name=name)
    page = Path(DOCS_INDEX_FILE_PATH).read_text(encoding="utf-8")
    page = page.replace('"MANIFEST.JSON INLINE DATA"', json.dumps(manifest))
    return page.replace('"CATALOG.JSON INLINE DATA"', json.dumps(catalog))


def serving_tables(manifest: Path | None = None) -> dict[str, str]:
    """serving table -> relation in the working warehouse: every dbt model tagged
    `published`, read from dbt's manifest (parsed again when the project changed), in name
    order. A model joins the serving database by its tag, never by a list kept here."""
    path = manifest or ensure_manifest()
    nodes = json.loads(path.read_text(encoding="utf-8")).get("nodes", {})
    tables = {
        node.get("alias") or node["name"]: f"{node['schema']}.{node.get('alias') or node['name']}"
        for node in nodes.values()
        if node.get("resource_type") == "model" and PUBLISHED_TAG in (node.get("tags") or [])
    }
    if not tables:
        raise NeedsegError(f"{path}: no dbt model is tagged '{PUBLISHED_TAG}'; nothing could be published")
    return dict(sorted(tables.items()))


def ensure_manifest() -> Path:
    """dbt's manifest, which cosmos renders the DAGs from; parsed again when the project changed."""
    if manifest_is_stale():
        result = _invoke(
            [
                "parse",
                "--project-dir",
                str(DBT_PROJECT_DIR),
                "--profiles-dir",
                str(DBT_PROJECT_DIR),
                "--quiet",
            ],
            None,
        )
        if not result.success:
            raise DbtFailed(f"dbt parse failed: {result.exception}")
    return MANIFEST
