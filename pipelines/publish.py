"""Publish the serving database and Parquet exports that analysts read.

The serving database is built as a new file next to the old one and moved over it with one
rename, so a reader sees the previous or the next version, never half of one, and a reader
holding the old file open never blocks the pipeline. Table and column descriptions from
dbt go along as DuckDB comments. The Parquet exports are published as one set: written by
DuckDB into a new version folder, then `exports` (a symbolic link) is pointed at it with one
rename, so a reader never mixes two versions. Before anything is swapped, the published
tables are checked (see `check_serving`). Files that killed publishes left behind
(`.<name>.<pid>.building`) are removed by the next publish. Every file needseg writes for
readers goes through `atomic_target` (fsync, one rename, the folder's entry flushed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines import clock, transform
from pipelines.errors import NeedsegError
from pipelines.files import atomic_target, fsync_path, move_into_place, remove_stale_builds
from pipelines.settings import Settings

# The publication table's columns as analysts read them (dbt's overview page says the same).
PUBLICATION_COLUMNS = {
    "run_id": "The segmentation run this database holds (e.g. seg-2026-10-31).",
    "as_of": "The date that run describes.",
    "published_at": "When this database was swapped in (UTC).",
    "tables": "JSON: rows per published table.",
}


class PublishRefused(NeedsegError):
    pass


@dataclass
class PublishResult:
    serving_path: str
    exports_dir: str
    as_of: str
    run_id: str
    tables: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str = ""

    def summary(self) -> str:
        if self.skipped:
            return f"nothing to publish for {self.as_of}: {self.skipped}"
        return f"published {len(self.tables)} tables to {self.serving_path} (run {self.run_id}) in {self.seconds:.1f} s"


def _relation_exists(con: duckdb.DuckDBPyConnection, relation: str) -> bool:
    schema, name = relation.split(".")
    return bool(
        con.execute("select count(*) from duckdb_tables() where schema_name = ? and table_name = ?", [schema, name]).fetchone()[0]
    ) or bool(con.execute("select count(*) from duckdb_views() where schema_name = ? and view_name = ?", [schema, name]).fetchone()[0])


def check_serving(con: duckdb.DuckDBPyConnection, as_of: dt.date, tables: dict[str, str]) -> str:
    """Refuse to publish without this date's segmentation run, or with customers missing."""
    missing = [rel for rel in tables.values() if not _relation_exists(con, rel)]
    if missing:
        raise PublishRefused(
            f"nothing published: {', '.join(missing)} missing; build the serving models first (needseg build --select serving)"
        )
    if not con.execute("select count(*) from marts.segment_runs where as_of = ?", [as_of]).fetchone()[0]:
        raise PublishRefused(f"nothing published: there is no segmentation run as of {as_of}; run the segmentation for {as_of} first")
    customers = con.execute("select count(*) from marts.customer_features where status = 'customer'").fetchone()[0]
    segmented = con.execute("select count(*) from marts.customer_segments").fetchone()[0]
    if customers != segmented:
        raise PublishRefused(f"nothing published: {customers} customers in customer_features but {segmented} in customer_segments")
    return con.execute("select run_id from marts.segment_runs where is_latest").fetchone()[0]


def _comments(con: duckdb.DuckDBPyConnection, relation: str) -> tuple[str | None, dict[str, str]]:
    schema, name = relation.split(".")
    table = con.execute(
        "select comment from duckdb_tables() where schema_name = ? and table_name = ? "
        "union all select comment from duckdb_views() where schema_name = ? and view_name = ?",
        [schema, name, schema, name],
    ).fetchone()
    cols = con.execute(
        "select column_name, comment from duckdb_columns() where schema_name = ? and table_name = ? and comment is not null",
        [schema, name],
    ).fetchall()
    return (table[0] if table else None), dict(cols)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def publish(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    tables: dict[str, str] | None = None,
    keep_export_versions: int = 3,
) -> PublishResult:
    started = time.monotonic()
    tables = dict(tables or transform.serving_tables())
    latest = con.execute("select max(as_of) from segments.segment_runs").fetchone()[0]
    if latest is not None and as_of < latest:
        # A re-run of an earlier date (retry, backfill) recomputed its own run; the
        # serving database keeps showing the newest run, published when that ran.
        return PublishResult(
            str(settings.serving_path),
            str(settings.exports_dir),
            as_of.isoformat(),
            "",
            skipped=f"the serving database already shows the newer run as of {latest}",
        )
    run_id = check_serving(con, as_of, tables)
    target = settings.serving_path
    remove_stale_builds(target.parent)
    remove_stale_builds(_versions_dir(settings.exports_dir))
    result = PublishResult(str(target), str(settings.exports_dir), as_of.isoformat(), run_id)
    with atomic_target(target) as staging:
        Path(str(staging) + ".wal").unlink(missing_ok=True)
        con.execute(f"attach {_quote(str(staging))} as serving_build")
        try:
            _fill_serving(con, tables, result, as_of)
        finally:
            con.execute("detach serving_build")
    _publish_exports(con, settings.exports_dir, tables, run_id, keep_export_versions)
    result.seconds = round(time.monotonic() - started, 2)
    return result


def _fill_serving(con: duckdb.DuckDBPyConnection, tables: dict[str, str], result: PublishResult, as_of: dt.date) -> None:
    """Copy every serving table, with its descriptions, into the attached `serving_build`."""
    for name, rel in tables.items():
        con.execute(f"create table serving_build.main.{name} as select * from {rel}")
        table_comment, column_comments = _comments(con, rel)
        if table_comment:
            con.execute(f"comment on table serving_build.main.{name} is {_quote(table_comment)}")
        for column, comment in column_comments.items():
            con.execute(f'comment on column serving_build.main.{name}."{column}" is {_quote(comment)}')
        result.tables[name] = con.execute(f"select count(*) from serving_build.main.{name}").fetchone()[0]
    con.execute(
        "create table serving_build.main.publication as select ? as run_id, cast(? as date) as as_of, "
        "current_timestamp as published_at, ? as tables",
        [result.run_id, as_of, json.dumps(result.tables)],
    )
    con.execute(
        "comment on table serving_build.main.publication is 'Which segmentation run this database holds, and when it was published.'"
    )
    for column, comment in PUBLICATION_COLUMNS.items():
        con.execute(f"comment on column serving_build.main.publication.{column} is {_quote(comment)}")


# --- the Parquet exports, published as one set ---------------------------------------------


def _versions_dir(exports_dir: Path) -> Path:
    return exports_dir.parent / f".{exports_dir.name}.versions"


def _publish_exports(con: duckdb.DuckDBPyConnection, exports_dir: Path, tables: dict[str, str], run_id: str, keep: int) -> Path:
    """Write every table's Parquet file into a new version folder, then point `exports_dir`
    (a symbolic link) at it with one rename. A reader that resolves the link once
    (`Path(exports).resolve()`) reads one version's files only; the previous `keep - 1`
    versions stay on disk for readers still busy with them."""
    versions = _versions_dir(exports_dir)
    versions.mkdir(parents=True, exist_ok=True)
    version = f"{run_id}-{clock.utc_now():%Y%m%dT%H%M%S%f}"
    building = versions / f".{version}.{os.getpid()}.building"
    building.mkdir()
    try:
        for name, rel in tables.items():
            path = building / f"{name}.parquet"
            con.execute(f"copy (select * from {rel}) to {_quote(str(path))} (format parquet, compression zstd)")
            fsync_path(path)
        final = versions / version
        move_into_place(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    _point_link(exports_dir, final)
    _prune_versions(versions, final, keep)
    return final


def _point_link(link: Path, folder: Path) -> None:
    """Make `link` a symbolic link to `folder` in one rename. An exports folder of an older
    needseg (a real folder) is moved into the versions folder first."""
    if link.exists() and not link.is_symlink():
        move_into_place(link, _versions_dir(link) / f"legacy-{clock.utc_now():%Y%m%dT%H%M%S%f}")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.building")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(folder, link.parent), tmp)
    move_into_place(tmp, link)


def _prune_versions(versions: Path, current: Path, keep: int) -> None:
    done = sorted((p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for old in [p for p in done if p != current][: max(0, len(done) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
