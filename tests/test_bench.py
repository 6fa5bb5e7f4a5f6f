"""`needseg bench` at a tiny size: the world it writes, and the table it prints (no timings
asserted: the figures live in the benchmark, not in tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb

from pipelines.bench.floors import Measured
from pipelines.bench.run import BenchResult, StageFigures, format_result
from pipelines.bench.world import BenchSpec, BenchWorld, generate
from pipelines.cli import main
from pipelines.contract import TABLES


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.*"))}


def test_the_world_follows_the_landing_layout_and_is_the_same_for_the_same_spec(tmp_path: Path):
    spec = BenchSpec(accounts=400, seed=3)
    world = generate(tmp_path / "a", spec)
    again = generate(tmp_path / "b", spec)
    assert _digest(world.landing) == _digest(again.landing) and _digest(world.next_month) == _digest(again.next_month)
    months = sorted(p.name for p in (world.landing / "crm" / "order_lines").iterdir())
    assert len(months) == spec.months and months[-1] == "order_lines_2026-10.csv"
    assert [p.name for p in (world.next_month / "crm" / "order_lines").iterdir()] == ["order_lines_2026-11.csv"]
    assert len(list((world.landing / "survey" / "survey_responses").iterdir())) == spec.months // 6
    con = duckdb.connect()
    lines = world.landing / "crm" / "order_lines" / "*.csv"
    header = con.execute(f"select * from read_csv('{lines}') limit 0").description
    assert [c[0] for c in header] == TABLES["order_lines"].column_names  # canonical: no mapping needed
    per_account, returns, orphans = con.execute(
        f"select count(*) / count(distinct account_id), avg((quantity < 0)::int), "
        f"count(*) filter (where account_id not in (select account_id from read_csv('{world.landing}/crm/accounts/*.csv'))) "
        f"from read_csv('{lines}')"
    ).fetchone()
    assert 60 < per_account < 120 and 0 < returns < 0.05 and orphans == 0
    assert world.rows["order_lines"] == con.execute(f"select count(*) from read_csv('{lines}')").fetchone()[0]


def test_bench_prints_a_table_of_the_cycle_and_the_floors(tmp_path: Path, capsys):
    # one cycle keeps the test short; the incremental cycle runs the same step functions
    assert main(["bench", "--accounts", "400", "--no-incremental", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stage in ("ingest", "features", "segment", "drift", "serving", "publish", "alerts"):
        assert f"| full: {stage} " in out
    for floor in ("DuckDB scan of the order lines", "DuckDB per-account features", "pandas + scikit-learn peer"):
        assert f"| floor: {floor} " in out
        assert f"needseg full cycle / {floor}: " in out
    assert "failed" not in out and "400 accounts" in out
    serving = tmp_path / "run-400-csv" / "serving.duckdb"
    customers = duckdb.connect(str(serving), read_only=True).execute("select count(*) from customer_segments").fetchone()[0]
    assert customers > 300
    assert sorted(p.name for p in (tmp_path / "run-400-csv" / "exports").iterdir())[0].endswith(".parquet")


def test_the_table_has_a_row_per_stage_of_both_cycles_and_the_incremental_share():
    spec = BenchSpec(accounts=10)
    world = BenchWorld(Path("w"), spec, rows={"order_lines": 900}, bytes=2**20)
    full = [StageFigures(stage, 2.0, 1.0, 2**30, 100) for stage in ("ingest", "features")]
    result = BenchResult(10, world, full=full, incremental=[StageFigures("ingest", 1.0, 0.5, 2**29, 10)])
    result.floors = [Measured("DuckDB scan of the order lines", 0.5, 0.25, 2**28, 900)]
    table = format_result(result)
    assert "| full: ingest " in table and "| incremental: ingest " in table
    assert "incremental cycle (25% of full)" in table
    assert "needseg full cycle / DuckDB scan of the order lines: 8.0x wall" in table
