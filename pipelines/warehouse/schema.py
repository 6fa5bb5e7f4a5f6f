"""needseg's own tables, declared in one place and applied by one function.

Every schema's DDL is a SQL file in `ddl/` (meta, segments, drift, alerts, churn); the raw
tables come from the input contract (pipelines/contract.py). `ensure_schema` creates what is
missing, adds the columns a table written by an older needseg lacks and drops a primary key
its DDL no longer declares, so a warehouse keeps working after an upgrade. It reads the
catalogue's columns and keys once, so opening a warehouse that is up to date costs two
queries. dbt owns the staging, intermediate and marts schemas.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import duckdb

from pipelines.contract import LINEAGE_COLUMNS, TABLES

DDL_DIR = Path(__file__).with_name("ddl")
# Order matters only for readers of the catalogue: raw first, then the stages' own schemas.
SCHEMAS = ("raw", "meta", "segments", "drift", "alerts", "churn")
_CREATE = re.compile(r"create table if not exists\s+(\w+)\.(\w+)\s*\(", re.IGNORECASE)


def raw_table_ddl(name: str) -> str:
    spec = TABLES[name]
    cols = [f"{c.name} {c.sql_type}" for c in spec.columns]
    cols += [f"{n} {t}" for n, t in LINEAGE_COLUMNS]
    return f"create table if not exists raw.{name} (\n    " + ",\n    ".join(cols) + "\n)"


@cache
def statements(schema: str) -> tuple[str, ...]:
    """The create-table statements of one schema, in file order."""
    if schema == "raw":
        return tuple(raw_table_ddl(name) for name in TABLES)
    path = DDL_DIR / f"{schema}.sql"
    text = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))  # DDL holds no string with "--"
    out = []
    for chunk in text.split(";"):
        body = chunk.strip()
        if not body:
            continue
        match = _CREATE.match(body)
        if not match or match.group(1) != schema:
            raise ValueError(f"{path}: expected 'create table if not exists {schema}.<name> (...)', got {body[:80]!r}")
        out.append(body)
    return tuple(out)


def table_names() -> list[str]:
    """Every table needseg itself creates, as schema.table."""
    return [".".join(_CREATE.search(ddl).groups()) for schema in SCHEMAS for ddl in statements(schema)]


def _declared_columns(ddl: str) -> tuple[tuple[str, str], ...]:
    """(column, type) as DuckDB reads the DDL."""
    return _every_declared_column()[_CREATE.search(ddl).groups()]


@cache
def _every_declared_column() -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    """(schema, table) -> (column, type) of every table needseg declares, as DuckDB reads the
    DDL: learnt once per process on one scratch database (a database per table cost ~30 ms
    each)."""
    with duckdb.connect() as scratch:
        for schema in SCHEMAS:
            scratch.execute(f"create schema {schema}")
            for ddl in statements(schema):
                scratch.execute(ddl)
        out: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for schema, table, column, data_type in scratch.execute(
            "select schema_name, table_name, column_name, data_type from duckdb_columns() "
            "where database_name = current_database() order by schema_name, table_name, column_index"
        ).fetchall():
            out.setdefault((schema, table), []).append((column, data_type))
    return {key: tuple(columns) for key, columns in out.items()}


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create needseg's schemas and tables where missing, add missing columns, and drop a
    primary key the DDL no longer declares (`_drop_key`)."""
    have: dict[tuple[str, str], set[str]] = {}
    for schema, table, column in con.execute(
        "select schema_name, table_name, column_name from duckdb_columns() where database_name = current_database()"
    ).fetchall():
        have.setdefault((schema, table), set()).add(column)
    keyed = {
        (schema, table)
        for schema, table in con.execute(
            "select schema_name, table_name from duckdb_constraints() "
            "where database_name = current_database() and constraint_type = 'PRIMARY KEY'"
        ).fetchall()
    }
    schemas = {r[0] for r in con.execute("select schema_name from duckdb_schemas() where database_name = current_database()").fetchall()}
    for schema in SCHEMAS:
        if schema not in schemas:
            con.execute(f"create schema if not exists {schema}")
        for ddl in statements(schema):
            key = _CREATE.search(ddl).groups()
            if key not in have:
                con.execute(ddl)
                continue
            for column, data_type in _declared_columns(ddl):
                if column not in have[key]:
                    con.execute(f'alter table {key[0]}.{key[1]} add column "{column}" {data_type}')
            if key in keyed and key not in _declared_keys():
                _drop_key(con, key, ddl)
    _backfill_lineage(con)


@cache
def _declared_keys() -> frozenset[tuple[str, str]]:
    """(schema, table) of every table whose DDL declares a primary key."""
    with duckdb.connect() as scratch:
        for schema in SCHEMAS:
            scratch.execute(f"create schema {schema}")
            for ddl in statements(schema):
                scratch.execute(ddl)
        rows = scratch.execute("select schema_name, table_name from duckdb_constraints() where constraint_type = 'PRIMARY KEY'").fetchall()
    return frozenset((schema, table) for schema, table in rows)


def _drop_key(con: duckdb.DuckDBPyConnection, key: tuple[str, str], ddl: str) -> None:
    """Rebuild a table written by an older needseg without the primary key its DDL no longer
    declares (DuckDB cannot drop a key in place): the rows copied by column name into the
    table as declared now, which then takes the old one's name, all in one transaction."""
    from pipelines.warehouse import transaction

    schema, table = key
    rebuilt = f"{table}__without_key"
    with transaction(con):
        con.execute(f"drop table if exists {schema}.{rebuilt}")
        con.execute(_CREATE.sub(f"create table {schema}.{rebuilt} (", ddl, count=1))
        con.execute(f"insert into {schema}.{rebuilt} by name select * from {schema}.{table}")
        con.execute(f"drop table {schema}.{table}")
        con.execute(f"alter table {schema}.{rebuilt} rename to {table}")


def _backfill_lineage(con: duckdb.DuckDBPyConnection) -> None:
    """Segmentation runs written before lineages existed: consecutive runs with the same
    taxonomy file form one lineage."""
    if not con.execute("select count(*) from segments.segment_runs where lineage_id is null").fetchone()[0]:
        return
    con.execute(
        """
        update segments.segment_runs as r
        set previous_run_id = l.previous_run_id, lineage_id = l.lineage_id
        from (
            select run_id, case when starts then null else prev_id end as previous_run_id,
                   first_value(run_id) over (partition by lineage order by as_of) as lineage_id
            from (
                select *, sum(starts::int) over (order by as_of) as lineage
                from (
                    select run_id, as_of,
                           lag(run_id) over (order by as_of) as prev_id,
                           coalesce(lag(taxonomy_digest) over (order by as_of) != taxonomy_digest, true) as starts
                    from segments.segment_runs
                )
            )
        ) as l
        where r.run_id = l.run_id and r.lineage_id is null
        """
    )
