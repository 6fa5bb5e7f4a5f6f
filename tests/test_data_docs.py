"""Data docs: validation results kept per run render to self-contained, offline HTML."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import socket
from pathlib import Path

import pytest

from pipelines.ingest.loader import GateFailed, IngestIncomplete, ingest
from pipelines.quality.docs import build_data_docs, describe
from pipelines.settings import load_settings
from pipelines.warehouse import open_warehouse

ACCOUNTS = "account_id,account_name,status,updated_at\nA1,Alpha AB,customer,2025-01-01\nA2,Beta <Oy>,customer,2025-01-01\n"
ORDERS = (
    "order_id,line_number,account_id,order_date,quantity,net_price,currency\n"
    + "".join(f"O{i},1,A1,2025-06-01,1,10.00,EUR\n" for i in range(1, 6))
    + "O6,1,A9,2025-06-01,1,10.00,EUR\n"  # unknown account
    + "O7,1,A1,2025-06-01,1,-5,EUR\n"  # negative price
)


def _run(settings, label: str, **kwargs):
    with open_warehouse(settings.warehouse_path) as con:
        try:
            return ingest(settings, con, dt.date(2026, 1, 31), label, known_currencies=["EUR"], **kwargs)
        except IngestIncomplete as failure:
            return failure


def _run_id(outcome) -> str:
    return (outcome.report if isinstance(outcome, IngestIncomplete) else outcome).run_id


@pytest.fixture
def two_runs(tmp_path: Path):
    settings = load_settings(tmp_path / "data").with_overrides(mappings_dir=tmp_path / "mappings")
    landing = settings.landing_dir / "crm"
    (landing / "accounts").mkdir(parents=True)
    (landing / "order_lines").mkdir(parents=True)
    (landing / "accounts" / "accounts.csv").write_text(ACCOUNTS)
    (landing / "order_lines" / "june.csv").write_text(ORDERS)
    first = _run(settings, "ingest-2026-01-31")
    (landing / "order_lines" / "empty.csv").write_text("")
    (landing / "order_lines" / "july.csv").write_text(ORDERS.replace("2025-06-01", "2025-07-01").replace("O", "P"))
    second = _run(settings, "ingest-2026-01-31")  # the same day again (a re-run, an Airflow retry)
    assert isinstance(second, GateFailed)
    return settings, _run_id(first), _run_id(second)


def test_validation_results_and_run_report_are_kept_per_run(two_runs):
    settings, first, second = two_runs
    quality = settings.quality_dir
    # one folder per run, however many runs a day has: the as-of date, then the time
    assert first != second and first.startswith("ingest-2026-01-31-") and second.startswith("ingest-2026-01-31-")
    assert sorted(p.name for p in (quality / first).iterdir()) == ["accounts.json", "ingest.json", "order_lines.json"]
    assert (quality / second / "order_lines.json").exists()
    report = json.loads((quality / second / "ingest.json").read_text())
    assert report["run_id"] == second and report["outcome"] == "GateFailed" and report["exit_code"] == 3
    assert json.loads((quality / first / "ingest.json").read_text())["outcome"] == "complete"


def test_data_docs_render_every_run_and_table_offline(two_runs, monkeypatch):
    settings, first, second = two_runs

    # No network: any attempt to open a socket fails the test.
    def no_network(*args, **kwargs):
        raise AssertionError("data docs tried to use the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    index = build_data_docs(settings.quality_dir)
    assert index == settings.quality_dir / "docs" / "index.html"
    pages = sorted(str(p.relative_to(index.parent)) for p in index.parent.rglob("*.html"))
    assert pages == sorted(
        [
            "index.html",
            f"{first}/accounts.html",
            f"{first}/index.html",
            f"{first}/order_lines.html",
            f"{second}/index.html",
            f"{second}/order_lines.html",
        ]
    )
    home = index.read_text()
    assert home.index(f"{second}/index.html") < home.index(f"{first}/index.html")  # newest first (an id may be the other plus "-2")
    assert f'href="{first}/order_lines.html"' in home
    assert "GateFailed" in home and "(exit 3)" in home

    orders = (index.parent / first / "order_lines.html").read_text()
    # GE's own prescriptive sentence, success, counts, and the failing values with file and line
    assert "net_price values must be greater than or equal to 0" in orders
    assert "account_id values must belong to this set: A1, A2" in orders
    assert "✗ failed" in orders and "✓ passed" in orders
    assert re.search(r"unknown account", orders)
    assert "A9" in orders and "crm/order_lines/june.csv line 7" in orders
    assert "-5" in orders and "crm/order_lines/june.csv line 8" in orders
    assert "_file_index" not in orders
    # batch-level expectations on a file's columns and rows hold alike for every file: checked once, and said so
    assert "the same for every file: checked once over all of them" in orders

    run = (index.parent / second / "index.html").read_text()
    assert "crm/order_lines/empty.csv" in run and "refused" in run and "the file is empty" in run


def test_data_docs_are_self_contained(two_runs):
    settings, _, _ = two_runs
    index = build_data_docs(settings.quality_dir, settings.data_dir / "site")
    for page in index.parent.rglob("*.html"):
        html = page.read_text()
        tags = re.findall(r"<(?:link|script|img|iframe|source)\b[^>]*>", html, flags=re.IGNORECASE)
        assert tags == [], f"{page}: external resources {tags}"
        assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html, flags=re.IGNORECASE), page
        assert "<script" not in html.lower()
    # user data is escaped, not interpreted as HTML
    assert "<Oy>" not in "".join(p.read_text() for p in index.parent.rglob("*.html"))


def test_a_dry_run_keeps_its_results_too(tmp_path):
    settings = load_settings(tmp_path / "data").with_overrides(mappings_dir=tmp_path / "mappings")
    folder = settings.landing_dir / "crm" / "accounts"
    folder.mkdir(parents=True)
    (folder / "accounts.csv").write_text(ACCOUNTS)
    run_id = _run_id(_run(settings, "validate-2026-01-31", dry_run=True))
    index = build_data_docs(settings.quality_dir)
    assert "(dry run" in (index.parent / run_id / "index.html").read_text()


def test_data_docs_show_every_row_level_problem_of_a_dry_run(tmp_path):
    """Problems found while typing the rows (not by GE on typed rows) are in the docs too."""
    settings = load_settings(tmp_path / "data").with_overrides(mappings_dir=tmp_path / "mappings")
    (settings.landing_dir / "crm" / "accounts").mkdir(parents=True)
    (settings.landing_dir / "crm" / "accounts" / "accounts.csv").write_text(ACCOUNTS)
    (settings.landing_dir / "crm" / "order_lines").mkdir(parents=True)
    (settings.landing_dir / "crm" / "order_lines" / "june.csv").write_text(
        ORDERS + "O8,1,A1,31.06.2025,1,10.00,EUR\nO9,1,A1,2025-06-01,lots,10.00,EUR\nO10,1,A1"
    )
    run_id = _run_id(_run(settings, "validate-2026-01-31", dry_run=True))
    index = build_data_docs(settings.quality_dir)
    run = (index.parent / run_id / "index.html").read_text()
    assert "Row-level problems" in run and "problems.csv" in run
    for needle in (
        "order_date",
        "wrong type",
        'line 9: <span class="value">31.06.2025</span>',
        "quantity",
        'line 10: <span class="value">lots</span>',
        "truncated last line",
        "line 11",
    ):
        assert needle in run, needle
    table = (index.parent / run_id / "order_lines.html").read_text()
    assert "order_date values must be of type datetime64" in table and "crm/order_lines/june.csv line 9" in table
    assert "Every line must read as a row" in table and "crm/order_lines/june.csv line 11" in table


def test_every_suite_checks_every_contract_columns_type_and_a_refresh_keeps_hand_added_expectations(tmp_path):
    from pipelines.contract import TABLES
    from pipelines.quality.gate import PANDAS_TYPES, write_suites
    from pipelines.settings import EXPECTATIONS_DIR

    for table in TABLES.values():
        suite = json.loads((EXPECTATIONS_DIR / f"{table.name}.json").read_text())
        types = {
            e["kwargs"]["column"]: e["kwargs"]["type_"] for e in suite["expectations"] if e["type"] == "expect_column_values_to_be_of_type"
        }
        assert types == {c.name: PANDAS_TYPES[c.kind] for c in table.columns}, table.name
    shutil.copytree(EXPECTATIONS_DIR, tmp_path / "suites")
    path = tmp_path / "suites" / "order_lines.json"
    suite = json.loads(path.read_text())
    mine = {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "quantity", "max_value": 1000}}
    suite["expectations"] = [e for e in suite["expectations"] if e["type"] != "expect_column_values_to_be_of_type"] + [mine]
    path.write_text(json.dumps(suite))
    write_suites(tmp_path / "suites")
    assert json.loads(path.read_text()) == json.loads((EXPECTATIONS_DIR / "order_lines.json").read_text()) | {
        "expectations": json.loads((EXPECTATIONS_DIR / "order_lines.json").read_text())["expectations"] + [mine]
    }


def test_no_results_yet_gives_an_index_that_says_so(tmp_path):
    index = build_data_docs(tmp_path / "quality")
    assert "No validation results yet" in index.read_text()


def test_long_value_sets_are_shortened():
    text = describe("expect_column_values_to_be_in_set", {"column": "account_id", "value_set": [f"A{i}" for i in range(5000)]})
    assert text.startswith("account_id values must belong to this set: A0, A1") and text.endswith("and 4988 more.")
    assert len(text) < 300
