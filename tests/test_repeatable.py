"""The same inputs give the same tables, to the bit (issue 12, item 3).

A whole cycle (`needseg run`: ingest, features with dbt's tests, segmentation, drift and
churn, serving models, publish, alerts) runs twice, in two processes, into two data
directories, from one landing folder. Then every table and view dbt built (staging,
intermediate, marts) and every table of the two published serving databases is compared
row for row with exact equality, driver and evidence texts included. Only the columns that
record when something ran (listed in WALL_CLOCK) are left out.

The world is large enough (the bench generator, ~144k order lines) that DuckDB splits the
order lines over several row groups and both threads, so an aggregate whose result depends
on the order threads add in would show up here.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.bench.world import BenchSpec, generate
from pipelines.settings import load_settings
from pipelines.warehouse import connect

SPEC = BenchSpec(accounts=1600, seed=11)
# Columns that say when a step ran or how long it took: they differ between any two runs.
WALL_CLOCK = {"created_at", "published_at", "seconds", "_loaded_at", "loaded_at", "generated_at"}


def _relations(con, schemas: tuple[str, ...]) -> list[str]:
    names = ", ".join(f"'{s}'" for s in schemas)
    rows = con.execute(
        f"select schema_name || '.' || table_name from duckdb_tables() where database_name = current_database() and schema_name in ({names}) "
        f"union all select schema_name || '.' || view_name from duckdb_views() where database_name = current_database() and schema_name in ({names}) "
        "and not internal order by 1"
    ).fetchall()
    return [r[0] for r in rows]


def _differences(first_path, second_path, schemas: tuple[str, ...]) -> tuple[list[str], dict[str, int]]:
    """(relations compared, relation -> rows that differ between the two databases)."""
    con = connect(first_path, read_only=True)
    try:
        con.execute(f"attach '{second_path}' as second (read_only)")
        relations = _relations(con, schemas)
        differing = {}
        for rel in relations:
            schema, name = rel.split(".")
            columns = [
                c
                for (c,) in con.execute(
                    "select column_name from duckdb_columns() where database_name = current_database() "
                    "and schema_name = ? and table_name = ? order by column_index",
                    [schema, name],
                ).fetchall()
                if c not in WALL_CLOCK
            ]
            select = ", ".join(f'"{c}"' for c in columns)
            mine, other = f"select {select} from {rel}", f"select {select} from second.{schema}.{name}"
            count = con.execute(f"select count(*) from (({mine} except all {other}) union all ({other} except all {mine}))").fetchone()[0]
            if count:
                differing[rel] = count
    finally:
        con.close()
    return relations, differing


@pytest.fixture(scope="module")
def two_cycles(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeatable")
    world = generate(root / "world", SPEC)
    runs = [load_settings(root / name) for name in ("first", "second")]
    for settings in runs:  # two processes, as two runs of the pipeline are
        command = [sys.executable, "-m", "pipelines.cli", "run", "--data-dir", str(settings.data_dir)]
        command += ["--landing", str(world.landing), "--as-of", SPEC.as_of.isoformat()]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return runs


def test_the_features_are_the_same_to_the_bit(two_cycles):
    first, second = two_cycles
    relations, differing = _differences(first.warehouse_path, second.warehouse_path, ("staging", "intermediate", "marts"))
    assert {"marts.customer_features", "marts.customer_monthly_behaviour", "marts.customer_category_mix"} <= set(relations)
    with connect(first.warehouse_path, read_only=True) as con:
        lines = con.execute("select count(*) from intermediate.int_order_lines__priced").fetchone()[0]
    assert lines > 122_880, "the world must span several row groups for the threads to matter"
    assert not differing, f"rows that differ between two runs of the same inputs: {differing}"


def test_every_published_table_is_the_same_to_the_bit(two_cycles):
    first, second = two_cycles
    relations, differing = _differences(first.serving_path, second.serving_path, ("main",))
    assert {"main.customer_segments", "main.customer_drift", "main.churn_risk_history", "main.publication"} <= set(relations)
    with connect(first.serving_path, read_only=True) as con:
        drivers = con.execute("select count(*) from customer_segments where drivers is not null and drivers <> ''").fetchone()[0]
        segmented = con.execute("select count(*) from customer_segments").fetchone()[0]
    assert segmented > 1200 and drivers > segmented / 2, "the comparison must cover the driver texts"
    assert not differing, f"published rows that differ between two runs of the same inputs: {differing}"
