"""The warehouse layer: every way needseg opens DuckDB, runs a transaction and writes a frame.

- `open_warehouse` / `connect`: the working warehouse (one DuckDB file; needseg's schemas
  applied by `schema.ensure_schema` from `ddl/*.sql` and the input contract).
- `open_serving`: the published serving database as analysts get it (read-only, no file
  access).
- `in_memory`: a scratch database for set-based computation on frames.
- `sandboxed`: a scratch database that cannot touch files, the network or extensions, for
  expressions users wrote (mapping expressions).
- `open_scratch_copy`: an in-memory copy of what a dry run reads from the working warehouse.
- `transaction`: all or nothing; `insert_frame`: append a DataFrame by column name.

DuckDB allows one writing process per file. Airflow serialises writers through the
`needseg_warehouse` pool and `needseg run` holds a lock on the data directory
(pipelines/cycle.py); `connect` still waits a little for a lock held by another process and
then says who holds it, instead of a bare IOException.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from pipelines.errors import NeedsegError
from pipelines.settings import duckdb_resources
from pipelines.warehouse.schema import SCHEMAS, ensure_schema, table_names

__all__ = [
    "SCHEMAS",
    "Transaction",
    "WarehouseLocked",
    "connect",
    "ensure_schema",
    "in_memory",
    "insert_frame",
    "open_scratch_copy",
    "open_serving",
    "open_warehouse",
    "registered",
    "sandboxed",
    "scratch_connection",
    "table_names",
    "transaction",
]

log = logging.getLogger(__name__)


class WarehouseLocked(NeedsegError):
    pass


class Transaction:
    """The open transaction of `transaction()`; `discard()` rolls it back on a clean exit."""

    def __init__(self) -> None:
        self.discarded = False

    def discard(self) -> None:
        """Throw away everything written in this transaction when the block ends (a dry run
        writes exactly as a real one, then discards)."""
        self.discarded = True


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[Transaction]:
    """All or nothing: commit when the block ends, roll back when it raises (or discards)."""
    con.execute("begin transaction")
    tx = Transaction()
    try:
        yield tx
    except BaseException:
        _rollback_quietly(con)
        raise
    if tx.discarded:
        con.execute("rollback")
        return
    try:
        con.execute("commit")
    except duckdb.Error:
        _rollback_quietly(con)  # a failed commit (a write conflict) leaves nothing behind either
        raise


def _rollback_quietly(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back without hiding the error that caused it (a connection that died, or a
    transaction DuckDB already ended, has nothing left to roll back)."""
    try:
        con.execute("rollback")
    except duckdb.Error as exc:
        log.debug("rollback after an error: %s", exc)


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, frame) -> Iterator[str]:
    """`frame` readable as the view `name` inside the block (and gone after it, even when the
    block raises): the one way a DataFrame enters SQL."""
    con.register(name, frame)
    try:
        yield name
    finally:
        con.unregister(name)


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame, constants: dict | None = None) -> int:
    """Append a DataFrame (or Arrow table) to `table` (schema.table), matching columns by name
    and casting each to the table's type (lists to arrays, text to JSON or DECIMAL, dates as
    dates); `constants` ({column: value}) are the same in every row and are bound once, not
    repeated in the frame. Returns the rows added. A column the table lacks is an error,
    never dropped silently."""
    if frame is None or len(frame) == 0:
        return 0
    schema, name = table.split(".", 1) if "." in table else ("main", table)
    types = dict(
        con.execute(
            "select column_name, data_type from duckdb_columns() "
            "where database_name = current_database() and schema_name = ? and table_name = ?",
            [schema, name],
        ).fetchall()
    )
    names = list(frame.column_names if hasattr(frame, "column_names") else frame.columns)
    columns = [f'cast("{c}" as {types[c]}) as "{c}"' if c in types else f'"{c}"' for c in names]
    constants = constants or {}
    columns += [f'cast(? as {types[c]}) as "{c}"' if c in types else f'? as "{c}"' for c in constants]
    with registered(con, "_needseg_incoming", frame) as view:
        con.execute(f"insert into {table} by name select {', '.join(columns)} from {view}", list(constants.values()))
    return len(frame)


def _bounded(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """`con` with the configured memory limit, threads and spill folder
    (pipelines.settings.DuckDBResources; dbt's on-run-start hook applies the same). The
    settings are global to the database; the spill folder is set only when it differs, since
    DuckDB refuses to switch it once used, even to the same folder."""
    resources = duckdb_resources()
    con.execute(f"set memory_limit = '{resources.memory_limit}'")
    con.execute(f"set threads = {resources.threads}")
    if resources.temp_directory is not None:
        temp = str(resources.temp_directory)
        if con.execute("select current_setting('temp_directory')").fetchone()[0] != temp:
            con.execute(f"set temp_directory = '{temp}'")
    return con


# the memory limit set for a moment by `release_buffers`
_RELEASE_LIMIT = "64MB"


def release_buffers(con: duckdb.DuckDBPyConnection) -> None:
    """Make DuckDB give back the memory it keeps after its queries, between queries.

    DuckDB keeps freed buffers for reuse up to its memory limit: at 100k accounts, after the
    churn history's queries, 0.5 GB stayed resident (until the database was closed) while
    `duckdb_memory()` counted 0.1 GB in use. Lowering the limit for a moment makes it free
    what no query holds; the configured limit (DuckDBResources) is set again at once. Should
    DuckDB not get under the low limit, it refuses and keeps its old one: nothing is lost."""
    try:
        con.execute(f"set memory_limit = '{_RELEASE_LIMIT}'")
    except duckdb.Error:
        pass
    finally:
        con.execute(f"set memory_limit = '{duckdb_resources().memory_limit}'")


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
            return _bounded(duckdb.connect(str(path), read_only=read_only))
        except duckdb.ConnectionException as exc:
            # dbt (run in-process) keeps a read-write connection open, and DuckDB refuses a
            # second one with another configuration in the same process: share its mode.
            if read_only and "different configuration" in str(exc):
                return _bounded(duckdb.connect(str(path)))
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
def open_serving(path: Path | str, *, user_sql: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """The published serving database, read-only. For SQL a user wrote (`needseg query`, the
    default) DuckDB's file access is also switched off and locked, so it can read the
    published tables and nothing else on the machine, and write nothing anywhere. needseg's
    own readers (the report, the demo's summary) pass `user_sql=False`: a plain read-only
    connection, which can share the process with another connection to the same file."""
    path = Path(path)
    if not path.exists():
        raise NeedsegError(f"{path} does not exist yet: run a cycle first (needseg run or make demo)")
    if user_sql:
        con = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False, "lock_configuration": True})
    else:
        con = connect(path, read_only=True)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def in_memory() -> Iterator[duckdb.DuckDBPyConnection]:
    """A scratch in-memory DuckDB for set-based work on frames (registered with
    `con.register`); closed on exit. Bounded like the warehouse (`_bounded`)."""
    con = scratch_connection()
    try:
        yield con
    finally:
        con.close()


def scratch_connection() -> duckdb.DuckDBPyConnection:
    """The connection `in_memory` opens, for a caller that keeps it open (and closes it)."""
    return _bounded(duckdb.connect())


def sandboxed() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that cannot touch files, the network or extensions, its
    configuration locked: where expressions a user wrote run (pipelines/ingest/sandbox.py)."""
    return duckdb.connect(
        config={
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "lock_configuration": True,
        }
    )


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
