"""The working warehouse: one DuckDB file, opened one way, with needseg's own tables.

DuckDB allows one writing process per file. Airflow serialises writers through the
`needseg_warehouse` pool; `connect` still waits a little for a lock held by another
process and then says who holds it, instead of a bare IOException.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from pipelines.contract import LINEAGE_COLUMNS, TABLES
from pipelines.errors import NeedsegError

SCHEMAS = ("raw", "meta", "segments")

META_DDL = [
    """
    create table if not exists meta.batches (
        batch_id varchar primary key,
        source varchar not null,
        table_name varchar not null,
        file varchar not null,
        checksum varchar not null,
        size_bytes bigint,
        encoding varchar,
        status varchar not null,          -- loaded | rejected
        rows_read bigint not null,
        rows_loaded bigint not null,
        rows_quarantined bigint not null,
        extra_columns varchar[],
        message varchar,
        run_id varchar,
        as_of date,
        loaded_at timestamp not null
    )
    """,
    """
    create table if not exists meta.quarantine (
        batch_id varchar not null,
        source varchar not null,
        table_name varchar not null,
        file varchar not null,
        line bigint,
        column_name varchar,
        value varchar,
        reason varchar not null,
        expected varchar,
        problems json,
        record json,
        quarantined_at timestamp not null
    )
    """,
    """
    create table if not exists meta.replayed (
        batch_id varchar not null,        -- the batch the rows were quarantined in (and now loaded under)
        table_name varchar not null,
        file varchar not null,
        rows bigint not null,             -- rows moved from quarantine to raw once their account arrived
        run_id varchar,
        replayed_at timestamp not null
    )
    """,
    """
    create table if not exists meta.file_conflicts (
        file varchar not null,
        loaded_checksum varchar not null,
        new_checksum varchar not null,
        loaded_batch_id varchar not null,
        detected_at timestamp not null,
        primary key (file, new_checksum)
    )
    """,
    """
    create table if not exists meta.cycle_runs (
        run_id varchar not null,
        as_of date not null,
        stage varchar not null,
        started_at timestamp not null,
        seconds double not null,
        detail json,
        primary key (run_id, stage)
    )
    """,
]


class WarehouseLocked(NeedsegError):
    pass


def raw_table_ddl(name: str) -> str:
    spec = TABLES[name]
    cols = [f"{c.name} {c.sql_type}" for c in spec.columns]
    cols += [f"{n} {t}" for n, t in LINEAGE_COLUMNS]
    return f"create table if not exists raw.{name} (\n    " + ",\n    ".join(cols) + "\n)"


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for schema in SCHEMAS:
        con.execute(f"create schema if not exists {schema}")
    for name in TABLES:
        con.execute(raw_table_ddl(name))
        _add_missing_columns(con, name)
    for ddl in META_DDL:
        ensure_table(con, ddl)


def _add_missing_columns(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Contract columns added after a warehouse was created join it as NULL columns."""
    have = {
        r[0]
        for r in con.execute(
            "select column_name from information_schema.columns where table_schema = 'raw' and table_name = ?",
            [name],
        ).fetchall()
    }
    for c in TABLES[name].columns:
        if c.name not in have:
            con.execute(f"alter table raw.{name} add column {c.name} {c.sql_type}")


def ensure_table(con: duckdb.DuckDBPyConnection, ddl: str) -> None:
    """`create table if not exists`, then add any column the DDL has that the table lacks,
    so a warehouse written by an older needseg keeps working after an upgrade."""
    match = re.search(r"create table if not exists\s+([\w.]+)\s*\(", ddl, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a create-table-if-not-exists statement: {ddl[:80]}")
    name = match.group(1)
    con.execute(ddl)
    probe = "_needseg_probe_" + name.replace(".", "_")
    con.execute(ddl.replace(match.group(0), f"create or replace temp table {probe} (", 1))
    try:
        wanted = con.execute(f"select column_name, data_type from duckdb_columns() where table_name = '{probe}'").fetchall()
        schema, table = name.split(".")
        have = {
            r[0]
            for r in con.execute(
                "select column_name from duckdb_columns() where schema_name = ? and table_name = ?", [schema, table]
            ).fetchall()
        }
        for column, data_type in wanted:
            if column not in have:
                con.execute(f'alter table {name} add column "{column}" {data_type}')
    finally:
        con.execute(f"drop table if exists {probe}")


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame) -> int:
    """Append a DataFrame to a table, matching columns by name; returns the rows added."""
    if frame is None or len(frame) == 0:
        return 0
    view = "_needseg_incoming"
    con.register(view, frame)
    try:
        con.execute(f"insert into {table} by name select * from {view}")
    finally:
        con.unregister(view)
    return len(frame)


_LOCK_HOLDER = re.compile(r"PID (\d+)")


def connect(path: Path | str, read_only: bool = False, wait_seconds: float = 30.0) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file, waiting up to `wait_seconds` for another process's write lock."""
    path = Path(path)
    if read_only and not path.exists():
        raise NeedsegError(f"{path} does not exist yet: run a cycle first (needseg run)")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.ConnectionException as exc:
            # dbt (run in-process) keeps a read-write connection open, and DuckDB refuses a
            # second one with another configuration in the same process: share its mode.
            if read_only and "different configuration" in str(exc):
                return duckdb.connect(str(path))
            raise
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                holder = _LOCK_HOLDER.search(str(exc))
                who = f"process {holder.group(1)}" if holder else "another process"
                raise WarehouseLocked(
                    f"{path} is locked by {who}: DuckDB allows one writer at a time. "
                    "Wait for the running task to finish (in Airflow, writers share the "
                    "'needseg_warehouse' pool); analysts should open the serving database instead."
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@contextmanager
def open_warehouse(path: Path | str, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """The working warehouse with needseg's schemas in place; closed on exit."""
    con = connect(path, read_only=read_only)
    try:
        if not read_only:
            ensure_schema(con)
        yield con
    finally:
        con.close()


@contextmanager
def open_serving(path: Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """The published serving database as analysts get it: read-only, and with DuckDB's file
    access switched off and locked, so SQL a user wrote (`needseg query`) can read the
    published tables and nothing else on the machine, and write nothing anywhere."""
    path = Path(path)
    if not path.exists():
        raise NeedsegError(f"{path} does not exist yet: run a cycle first (needseg run or make demo)")
    con = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False, "lock_configuration": True})
    try:
        yield con
    finally:
        con.close()


@contextmanager
def open_scratch_copy(path: Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory warehouse with needseg's schema and what a dry run reads from the working
    one (the batches loaded, the accounts known), for checks that must behave exactly as a
    load but write nothing: the working warehouse is read (if it exists) and never created,
    changed or locked for longer than that read."""
    con = duckdb.connect()
    try:
        ensure_schema(con)
        if Path(path).exists():
            source = connect(path, read_only=True)
            try:
                batches = _frame_or_none(source, "select * from meta.batches")
                accounts = _frame_or_none(source, "select distinct account_id from raw.accounts")
            finally:
                source.close()
            if batches is not None:
                insert_frame(con, "meta.batches", batches)
            if accounts is not None:
                insert_frame(con, "raw.accounts", accounts)
        yield con
    finally:
        con.close()


def _frame_or_none(con: duckdb.DuckDBPyConnection, sql: str):
    try:
        return con.execute(sql).df()
    except duckdb.CatalogException:  # a warehouse created before that table existed
        return None
