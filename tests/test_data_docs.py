"""Data docs: validation results kept per run render to self-contained, offline HTML."""

from __future__ import annotations

import datetime as dt
import re
import socket
from pathlib import Path

import pytest

from pipelines.ingest.loader import GateFailed, ingest
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


def _run(settings, run_id: str, **kwargs):
    with open_warehouse(settings.warehouse_path) as con:
        try:
            return ingest(settings, con, dt.date(2026, 1, 31), run_id, known_currencies=["EUR"], **kwargs)
        except GateFailed as failure:
            return failure


@pytest.fixture
def two_runs(tmp_path: Path):
    settings = load_settings(tmp_path / "data").with_overrides(mappings_dir=tmp_path / "mappings")
    landing = settings.landing_dir / "crm"
    (landing / "accounts").mkdir(parents=True)
    (landing / "order_lines").mkdir(parents=True)
    (landing / "accounts" / "accounts.csv").write_text(ACCOUNTS)
    (landing / "order_lines" / "june.csv").write_text(ORDERS)
    _run(settings, "ingest-2026-01-31")
    (landing / "order_lines" / "empty.csv").write_text("")
    (landing / "order_lines" / "july.csv").write_text(ORDERS.replace("2025-06-01", "2025-07-01").replace("O", "P"))
    assert isinstance(_run(settings, "ingest-2026-02-01"), GateFailed)
    return settings


def test_validation_results_and_run_report_are_kept_per_run(two_runs):
    quality = two_runs.quality_dir
    assert sorted(p.name for p in (quality / "ingest-2026-01-31").iterdir()) == ["accounts.json", "ingest.json", "order_lines.json"]
    assert (quality / "ingest-2026-02-01" / "order_lines.json").exists()


def test_data_docs_render_every_run_and_table_offline(two_runs, monkeypatch):
    # No network: any attempt to open a socket fails the test.
    def no_network(*args, **kwargs):
        raise AssertionError("data docs tried to use the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    index = build_data_docs(two_runs.quality_dir)
    assert index == two_runs.quality_dir / "docs" / "index.html"
    pages = sorted(str(p.relative_to(index.parent)) for p in index.parent.rglob("*.html"))
    assert pages == [
        "index.html",
        "ingest-2026-01-31/accounts.html", "ingest-2026-01-31/index.html", "ingest-2026-01-31/order_lines.html",
        "ingest-2026-02-01/index.html", "ingest-2026-02-01/order_lines.html",
    ]
    home = index.read_text()
    assert home.index("ingest-2026-02-01") < home.index("ingest-2026-01-31")  # newest first
    assert 'href="ingest-2026-01-31/order_lines.html"' in home

    orders = (index.parent / "ingest-2026-01-31" / "order_lines.html").read_text()
    # GE's own prescriptive sentence, success, counts, and the failing values with file and line
    assert "net_price values must be greater than or equal to 0" in orders
    assert "account_id values must belong to this set: A1, A2" in orders
    assert "✗ failed" in orders and "✓ passed" in orders
    assert re.search(r"unknown account", orders)
    assert "A9" in orders and "crm/order_lines/june.csv line 7" in orders
    assert "-5" in orders and "crm/order_lines/june.csv line 8" in orders
    assert "_file_index" not in orders

    run = (index.parent / "ingest-2026-02-01" / "index.html").read_text()
    assert "crm/order_lines/empty.csv" in run and "refused" in run and "the file is empty" in run


def test_data_docs_are_self_contained(two_runs):
    index = build_data_docs(two_runs.quality_dir, two_runs.data_dir / "site")
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
    _run(settings, "validate-2026-01-31", dry_run=True)
    index = build_data_docs(settings.quality_dir)
    assert "(dry run" in (index.parent / "validate-2026-01-31" / "index.html").read_text()


def test_no_results_yet_gives_an_index_that_says_so(tmp_path):
    index = build_data_docs(tmp_path / "quality")
    assert "No validation results yet" in index.read_text()


def test_long_value_sets_are_shortened():
    text = describe("expect_column_values_to_be_in_set", {"column": "account_id", "value_set": [f"A{i}" for i in range(5000)]})
    assert text.startswith("account_id values must belong to this set: A0, A1") and text.endswith("and 4988 more.")
    assert len(text) < 300
