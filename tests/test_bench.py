"""`needseg bench` at a tiny size: the world it writes, and the table it prints (no timings
asserted: the figures live in the benchmark, not in tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import json

import pandas as pd

from pipelines.bench.floors import Measured
from pipelines.bench.run import BenchResult, StageFigures, format_result
from pipelines.bench.world import BenchSpec, BenchWorld, ensure_truth, generate
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


def test_the_worlds_draws_are_independent_and_its_truth_says_who_drifts_where(tmp_path: Path):
    # Every account's draws come from one hash per (seed, salt, counters): draws with
    # neighbouring salts once came out correlated, and every drifter was price-focused
    # already and began its drift in the same month.
    spec = BenchSpec(accounts=4000, seed=5, months=12, end_month="2026-04")
    world = generate(tmp_path / "w", spec)
    truth = pd.read_parquet(world.path / "truth" / "accounts.parquet")
    assert len(truth) == spec.accounts and truth["account_id"].is_unique
    drifters = truth[truth["drifter"]]
    assert 0.03 < len(drifters) / len(truth) < 0.07
    assert drifters["base_segment"].nunique() == 4 and drifters["drift_start"].nunique() >= 5
    assert truth.loc[truth["is_prospect"], "base_segment"].nunique() == 4
    shares = truth["base_segment"].value_counts(normalize=True)
    assert shares.between(0.2, 0.3).all()
    monthly = pd.read_parquet(world.path / "truth" / "segments_monthly.parquet")
    assert sorted(monthly["month"].unique()) == ["2026-04", "2026-05"]
    last = monthly[monthly["month"] == "2026-04"].set_index("account_id")
    # a drifter half way or more is counted in the segment it drifts to; nobody else moves
    moved = last["segment"] != truth.set_index("account_id")["base_segment"]
    assert set(last.index[moved]) == set(last.index[(last["drift_weight"] >= 0.5) & (last["segment"] == "price_focused")]) - set(
        truth.loc[truth["base_segment"].eq("price_focused"), "account_id"]
    )
    assert moved.sum() > 0
    # a world written before the truth folder gets the same truth, from the spec alone
    for p in (world.path / "truth").iterdir():
        p.unlink()
    ensure_truth(world)
    assert pd.read_parquet(world.path / "truth" / "accounts.parquet").equals(truth)
    # the truth is the pipeline's to never read: it is not in the landing folders
    assert not any("truth" in p.parts for p in world.landing.rglob("*"))
    assert json.loads((world.path / "world.json").read_text())["generator"] >= 2


def test_bench_prints_a_table_of_the_cycle_and_the_floors(tmp_path: Path, capsys):
    # one cycle keeps the test short; the incremental cycle runs the same step functions
    assert main(["bench", "--accounts", "400", "--no-incremental", "--quality", "--out", str(tmp_path)]) == 0
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
    # --quality: the run scored against the world's truth, printed and kept as JSON
    assert "Quality of the run as of 2026-10-31 against the world's truth" in out
    for row in ("  surveyed ", "  inferred ", "  needseg drift flags "):
        assert row in out
    quality = json.loads((tmp_path / "run-400-csv" / "quality.json").read_text())
    assert quality["k"] >= 2 and 0 < quality["inferred"]["needseg_ari"] <= 1
    assert quality["drift"]["drifters"] > 0 and set(quality["found"]) <= {
        "price_focused",
        "service_focused",
        "quality_brand",
        "loyalty_partnership",
    }


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
