"""The same inputs give the same features, to the bit (issue 12, item 3).

dbt builds the features (`needseg build`, tests included) twice from the same raw tables, in
two processes, into two warehouses, then every
table and view of the staging, intermediate and marts schemas is compared row for row with
exact equality. The world is large enough (the bench generator, ~170k order lines) that
DuckDB splits the order lines over several row groups and both threads, so an aggregate
whose result depends on the order threads add in would show up here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.bench.world import BenchSpec, generate
from pipelines.contract import TABLES
from pipelines.settings import load_settings
from pipelines.warehouse import connect, open_warehouse

SPEC = BenchSpec(accounts=2000, seed=11)
BUILD = [sys.executable, "-m", "pipelines.cli", "build", "--select", "features"]


def _load_raw(con, landing: Path) -> None:
    """The generated files straight into raw (this test is about dbt, not ingest)."""
    for source in ("crm", "survey"):
        for folder in sorted((landing / source).iterdir()):
            table = folder.name
            columns = ", ".join(c.name for c in TABLES[table].columns if c.name in _header(folder))
            con.execute(
                f"insert into raw.{table} by name select {columns}, "
                f"'batch-' || regexp_extract(filename, '(\\d{{4}}-\\d{{2}})') as _batch_id, '{source}' as _source, "
                "filename as _file, 0 as _line, "
                "timestamp '2026-11-01' + to_seconds(cast(regexp_extract(filename, '-(\\d{2})\\.', 1) as bigint)) as _loaded_at "
                f"from read_csv('{folder}/*.csv', header = true, filename = true, all_varchar = true)"
            )


def _header(folder: Path) -> list[str]:
    first = sorted(folder.glob("*.csv"))[0]
    return first.read_text(encoding="utf-8").split("\n", 1)[0].split(",")


def _relations(con) -> list[str]:
    rows = con.execute(
        "select schema_name || '.' || table_name from duckdb_tables() where database_name = current_database() and schema_name in ('staging', 'intermediate', 'marts') "
        "union all select schema_name || '.' || view_name from duckdb_views() where database_name = current_database() and schema_name in ('staging', 'intermediate', 'marts') "
        "and not internal order by 1"
    ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeatable")
    world = generate(root / "world", SPEC)
    first = load_settings(root / "first")
    with open_warehouse(first.warehouse_path) as con:
        _load_raw(con, world.landing)
    second = load_settings(root / "second")
    second.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(first.warehouse_path, second.warehouse_path)
    for settings in (first, second):  # two processes, as two runs of the pipeline are
        subprocess.run(
            [*BUILD, "--data-dir", str(settings.data_dir), "--as-of", SPEC.as_of.isoformat()],
            check=True,
            capture_output=True,
        )
    return first, second


def test_the_features_build_twice_gives_every_table_to_the_bit(two_builds):
    first, second = two_builds
    con = connect(first.warehouse_path, read_only=True)
    try:
        con.execute(f"attach '{second.warehouse_path}' as second (read_only)")
        relations = _relations(con)
        assert {"marts.customer_features", "marts.customer_monthly_behaviour", "marts.customer_category_mix"} <= set(relations)
        lines = con.execute("select count(*) from intermediate.int_order_lines__priced").fetchone()[0]
        assert lines > 122_880, "the world must span several row groups for the threads to matter"
        differing = {}
        for rel in relations:
            schema, name = rel.split(".")
            other = f"second.{schema}.{name}"
            count = con.execute(
                f"select count(*) from ((select * from {rel} except all select * from {other}) "
                f"union all (select * from {other} except all select * from {rel}))"
            ).fetchone()[0]
            if count:
                differing[rel] = count
    finally:
        con.close()
    assert not differing, f"rows that differ between two builds of the same inputs: {differing}"
