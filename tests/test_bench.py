"""`needseg bench` at a tiny size: the world it writes, and the table it prints (no timings
asserted: the figures live in the benchmark, not in tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb

from pipelines.bench.world import BenchSpec, generate
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


def test_bench_prints_a_table_of_both_cycles_and_the_floors(tmp_path: Path, capsys):
    assert main(["bench", "--accounts", "600", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stage in ("ingest", "features", "segment", "drift", "serving", "publish"):
        assert f"| full: {stage} " in out and f"| incremental: {stage} " in out
    for floor in ("DuckDB scan of the order lines", "DuckDB per-account features", "pandas + scikit-learn peer"):
        assert f"| floor: {floor} " in out
        assert f"needseg full cycle / {floor}: " in out
    assert "failed" not in out
    assert "600 accounts" in out
