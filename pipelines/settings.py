"""Where needseg reads and writes, from environment variables with working local defaults.

Every location has a default under the project's `data/` folder so a fresh checkout runs
without any configuration; production points these elsewhere through the environment
(or an Airflow deployment's environment). Nothing here holds a secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
CONFIG_DIR = PROJECT_ROOT / "config"
EXPECTATIONS_DIR = PROJECT_ROOT / "expectations"


def public_data_dir() -> Path:
    """The public datasets that tests and benchmarks use (never the pipeline itself):
    `../shared/data` next to the project, or wherever NEEDSEG_SHARED_DATA points."""
    return _env_path("NEEDSEG_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    landing_dir: Path
    warehouse_path: Path
    serving_path: Path
    exports_dir: Path
    report_dir: Path
    quality_dir: Path
    config_path: Path
    taxonomy_path: Path
    mappings_dir: Path

    @property
    def dbt_project_dir(self) -> Path:
        return DBT_PROJECT_DIR

    def with_overrides(self, **changes: Path | str | None) -> Settings:
        """A copy with some locations replaced; `data_dir` moves every default below it."""
        given = {k: Path(v) for k, v in changes.items() if v is not None}
        if "data_dir" in given:
            base = load_settings(data_dir=given["data_dir"])
            return replace(base, **{k: v for k, v in given.items() if k != "data_dir"})
        return replace(self, **given)


# DuckDB's own default memory limit is 80 % of the machine's memory: a features build at
# 100k accounts grew to 4.6 GB resident with it. Bounded, DuckDB spills to its temp
# directory instead (docs/scale.md "Memory").
DEFAULT_DUCKDB_MEMORY_LIMIT = "1GB"


@dataclass(frozen=True)
class DuckDBResources:
    """What every DuckDB that needseg opens on the warehouse may use: the pipeline's own
    connections (pipelines/warehouse) and dbt's (dbt_project/profiles.yml reads the same
    values, passed by `pipelines.transform.profile_env`, in its on-run-start hook).

    From NEEDSEG_DUCKDB_MEMORY_LIMIT (DuckDB's size syntax, default 1GB: the buffer
    manager's limit, not the process's), NEEDSEG_DUCKDB_THREADS (default: the cores this
    process may use) and NEEDSEG_DUCKDB_TEMP_DIR (where DuckDB spills past the limit;
    default DuckDB's own, `<database file>.tmp`)."""

    memory_limit: str
    threads: int
    temp_directory: Path | None


def release_process_memory() -> None:
    """Give back to the system what a finished step freed, before the next step of the same
    process (`needseg run`, the demo, the bench) starts: Python's cycles, Arrow's pool, and
    the C heap's free pages. Without it a step's peak stays resident under every later step
    (at 100k accounts the ingest step's ~2 GB stayed under the drift step's own 1.9 GB)."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass


def thread_count(variable: str) -> int | None:
    """A thread count from an environment variable (None when unset); exit 2 naming it when
    it is not a whole number of at least 1."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return None
    try:
        threads = int(raw)
    except ValueError:
        raise ConfigError(f"{variable} must be a whole number, not {raw!r}") from None
    if threads < 1:
        raise ConfigError(f"{variable} must be at least 1, not {threads}")
    return threads


def duckdb_resources() -> DuckDBResources:
    """DuckDB's memory limit, threads and spill folder from the environment (see DuckDBResources)."""
    threads = thread_count("NEEDSEG_DUCKDB_THREADS") or len(os.sched_getaffinity(0))
    memory_limit = os.environ.get("NEEDSEG_DUCKDB_MEMORY_LIMIT", "").strip() or DEFAULT_DUCKDB_MEMORY_LIMIT
    if "'" in memory_limit:
        raise ConfigError(f"NEEDSEG_DUCKDB_MEMORY_LIMIT is not a size: {memory_limit!r}")
    temp = os.environ.get("NEEDSEG_DUCKDB_TEMP_DIR", "").strip()
    return DuckDBResources(memory_limit, threads, Path(temp).expanduser().resolve() if temp else None)


# How DuckDB says it ran out of its memory limit: an OutOfMemoryException, or another error
# (a commit's TransactionException) whose message carries one of these.
OUT_OF_MEMORY_SIGNS = ("Out of Memory", "failed to pin block", "could not allocate block")


def is_out_of_memory(error: BaseException | str) -> bool:
    """True for DuckDB running out of its memory limit (OUT_OF_MEMORY_SIGNS)."""
    text = str(error)
    return type(error).__name__ == "OutOfMemoryException" or any(sign in text for sign in OUT_OF_MEMORY_SIGNS)


def out_of_memory_in(error: BaseException) -> BaseException | None:
    """The DuckDB out-of-memory error in `error`'s chain, if any: it is often not the last one
    (a rollback or an unregister in a `finally` then fails with "transaction is aborted")."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if is_out_of_memory(current):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def out_of_memory_hint() -> str:
    """What to do when DuckDB ran out of its memory limit, in needseg's own settings (DuckDB's
    message suggests SET statements a user of needseg cannot run)."""
    r = duckdb_resources()
    spill = f"spilling to {r.temp_directory}" if r.temp_directory else "spilling beside the warehouse (NEEDSEG_DUCKDB_TEMP_DIR)"
    return (
        f"DuckDB ran out of its memory limit ({r.memory_limit}, {r.threads} thread(s), {spill}): raise the limit, "
        "e.g. NEEDSEG_DUCKDB_MEMORY_LIMIT=4GB, or give DuckDB fewer threads (NEEDSEG_DUCKDB_THREADS=1); "
        "nothing was published, and the run can be repeated as it is"
    )


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def load_settings(data_dir: Path | str | None = None) -> Settings:
    """Settings from the environment; `data_dir` (if given) beats NEEDSEG_DATA_DIR."""
    base = Path(data_dir).expanduser().resolve() if data_dir is not None else _env_path("NEEDSEG_DATA_DIR", PROJECT_ROOT / "data")
    explicit = data_dir is not None
    # With an explicit data dir, files below it win over environment overrides of them,
    # so tests and `--data-dir` runs never touch the default warehouse by accident.
    pick = (lambda name, default: default) if explicit else _env_path
    return Settings(
        data_dir=base,
        landing_dir=pick("NEEDSEG_LANDING_DIR", base / "landing"),
        warehouse_path=pick("NEEDSEG_WAREHOUSE", base / "warehouse.duckdb"),
        serving_path=pick("NEEDSEG_SERVING", base / "serving.duckdb"),
        exports_dir=pick("NEEDSEG_EXPORTS_DIR", base / "exports"),
        report_dir=pick("NEEDSEG_REPORT_DIR", base / "report"),
        quality_dir=pick("NEEDSEG_QUALITY_DIR", base / "quality"),
        config_path=_env_path("NEEDSEG_CONFIG", CONFIG_DIR / "needseg.yaml"),
        taxonomy_path=_env_path("NEEDSEG_TAXONOMY", CONFIG_DIR / "taxonomy.yaml"),
        mappings_dir=_env_path("NEEDSEG_MAPPINGS_DIR", CONFIG_DIR / "sources"),
    )
