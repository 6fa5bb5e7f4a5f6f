"""Publish the serving database and Parquet exports that analysts read.

The serving database is built as a new file next to the old one and moved over it with one
rename, so a reader sees the previous or the next version, never half of one, and a reader
holding the old file open never blocks the pipeline. Table and column descriptions from
dbt go along as DuckDB comments. Parquet exports are swapped the same way, file by file.
Before anything is swapped, the published tables are checked (see `check_serving`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines.errors import NeedsegError
from pipelines.settings import Settings

# serving table -> relation in the working warehouse
SERVING_TABLES = {
    "customer_segments": "marts.customer_segments",
    "segments": "marts.segments",
    "segment_profiles": "marts.segment_profiles",
    "segment_history": "marts.segment_history",
    "segment_runs": "marts.segment_runs",
    "prospect_segments": "marts.prospect_segments",
    "key_account_lookalikes": "marts.key_account_lookalikes",
    "customer_drift": "marts.customer_drift",
    "segment_transitions": "marts.segment_transitions",
    "segment_population_changes": "marts.segment_population_changes",
    "churn_risk_alerts": "marts.churn_risk_alerts",
    "customer_features": "marts.customer_features",
}
OPTIONAL_TABLES: dict[str, str] = {}
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


def publish(settings: Settings, con: duckdb.DuckDBPyConnection, as_of: dt.date, tables: dict[str, str] | None = None) -> PublishResult:
    started = time.monotonic()
    tables = dict(tables or SERVING_TABLES)
    for name, rel in OPTIONAL_TABLES.items():
        if _relation_exists(con, rel):
            tables[name] = rel
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
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.building")
    for leftover in (staging, Path(str(staging) + ".wal")):
        leftover.unlink(missing_ok=True)
    result = PublishResult(str(target), str(settings.exports_dir), as_of.isoformat(), run_id)
    con.execute(f"attach {_quote(str(staging))} as serving_build")
    try:
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
            [run_id, as_of, json.dumps(result.tables)],
        )
        con.execute(
            "comment on table serving_build.main.publication is 'Which segmentation run this database holds, and when it was published.'"
        )
        for column, comment in PUBLICATION_COLUMNS.items():
            con.execute(f"comment on column serving_build.main.publication.{column} is {_quote(comment)}")
    except BaseException:
        con.execute("detach serving_build")
        staging.unlink(missing_ok=True)
        raise
    con.execute("detach serving_build")
    with open(staging, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(staging, target)
    _export_parquet(con, settings.exports_dir, tables)
    result.seconds = round(time.monotonic() - started, 2)
    return result


def write_file_atomically(target: Path, data: bytes) -> Path:
    """Write `target` next to itself and swap it in with one rename: readers see the old
    file or the new one, never half of one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f".{target.name}.{os.getpid()}.building")
    building.write_bytes(data)
    os.replace(building, target)
    return target


def _export_parquet(con: duckdb.DuckDBPyConnection, folder: Path, tables: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rel in tables.items():
        final = folder / f"{name}.parquet"
        building = folder / f".{name}.parquet.building"
        con.execute(f"copy (select * from {rel}) to {_quote(str(building))} (format parquet, compression zstd)")
        os.replace(building, final)
