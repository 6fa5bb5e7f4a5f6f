"""Ingestion of clean files: typed raw tables, lineage, idempotence, nothing lost."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from pipelines.demo.world import deliver
from pipelines.ingest.loader import GateFailed, ingest
from pipelines.warehouse import open_warehouse

AS_OF = dt.date(2025, 3, 31)


def _ingest(settings, as_of=AS_OF, **kwargs):
    with open_warehouse(settings.warehouse_path) as con:
        return ingest(settings, con, as_of, "test", known_currencies=["EUR", "SEK", "NOK", "DKK", "GBP"], **kwargs)


def test_loads_every_table_with_lineage_and_counts(small_world, data_dir):
    deliver(small_world, data_dir.landing_dir, "2025-03")
    report = _ingest(data_dir)
    assert report.count("loaded") == len(list(data_dir.landing_dir.rglob("*.csv")))
    assert report.rows_read == report.rows_loaded + report.rows_quarantined
    con = duckdb.connect(str(data_dir.warehouse_path), read_only=True)
    lines = con.execute("select count(*), count(distinct _batch_id), min(_line), bool_and(_source = 'crm') from raw.order_lines").fetchone()
    assert lines[0] > 1000 and lines[1] == 3 and lines[2] == 2 and lines[3]
    assert con.execute("select typeof(order_date), typeof(net_price) from raw.order_lines limit 1").fetchone() == ("DATE", "DECIMAL(18,4)")
    batches = con.execute("select sum(rows_read), sum(rows_loaded + rows_quarantined) from meta.batches").fetchone()
    assert batches[0] == batches[1]


def test_the_same_file_twice_adds_nothing(small_world, data_dir):
    deliver(small_world, data_dir.landing_dir, "2025-02")
    first = _ingest(data_dir)
    again = _ingest(data_dir)
    assert first.rows_loaded > 0
    assert again.rows_loaded == 0 and again.count("already_loaded") == first.count("loaded")
    # the same content under another name is recognised too
    src = data_dir.landing_dir / "crm" / "order_lines" / "order_lines_2025-02.csv"
    (src.parent / "copy_of_february.csv").write_bytes(src.read_bytes())
    third = _ingest(data_dir)
    assert third.rows_loaded == 0 and third.count("duplicate") == 1
    con = duckdb.connect(str(data_dir.warehouse_path), read_only=True)
    assert con.execute("select count(*) from raw.order_lines").fetchone()[0] == first.rows_loaded - sum(
        f.rows_loaded for f in first.files if f.table != "order_lines"
    )


def test_a_file_changed_after_loading_is_reported_not_appended(small_world, data_dir):
    deliver(small_world, data_dir.landing_dir, "2025-01")
    _ingest(data_dir)
    path = data_dir.landing_dir / "crm" / "quotes" / "quotes_2025-01.csv"
    path.write_text(path.read_text().replace(",won,", ",lost,", 1))
    report = _ingest(data_dir)
    conflict = report.conflicts[0]
    assert "changed after it was loaded" in conflict.message and "quotes_2025-01.csv" in conflict.message
    con = duckdb.connect(str(data_dir.warehouse_path), read_only=True)
    assert con.execute("select count(*) from meta.file_conflicts").fetchone()[0] == 1
    assert con.execute("select count(distinct _batch_id) from raw.quotes").fetchone()[0] == 1
    con.close()
    accepted = _ingest(data_dir, accept_changed=True)
    assert accepted.count("loaded") == 1


def test_dry_run_writes_nothing(small_world, data_dir):
    deliver(small_world, data_dir.landing_dir, "2025-01")
    report = _ingest(data_dir, dry_run=True)
    assert report.count("valid") > 0 and report.count("loaded") == 0
    con = duckdb.connect(str(data_dir.warehouse_path), read_only=True)
    assert con.execute("select count(*) from raw.order_lines").fetchone()[0] == 0
    assert con.execute("select count(*) from meta.batches").fetchone()[0] == 0


def test_rows_dated_after_the_as_of_date_are_quarantined(small_world, data_dir):
    deliver(small_world, data_dir.landing_dir, "2025-01")
    path = data_dir.landing_dir / "crm" / "order_lines" / "order_lines_2025-01.csv"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split(",")[3], "2025-02-15")
    path.write_text("\n".join(lines) + "\n")
    report = _ingest(data_dir, as_of=dt.date(2025, 1, 31))
    con = duckdb.connect(str(data_dir.warehouse_path), read_only=True)
    row = con.execute("select file, line, column_name, value, reason from meta.quarantine").fetchone()
    assert row == ("crm/order_lines/order_lines_2025-01.csv", 6, "order_date", "2025-02-15", "dated in the future: order_date '2025-02-15'")
    assert report.rows_read == report.rows_loaded + report.rows_quarantined


def test_a_file_from_the_future_is_refused_whole_with_the_reason(small_world, data_dir):
    deliver(small_world, data_dir.landing_dir, "2025-02")
    with pytest.raises(GateFailed) as failure:
        _ingest(data_dir, as_of=dt.date(2025, 1, 31))
    message = str(failure.value)
    assert "crm/order_lines/order_lines_2025-02.csv" in message and "dated in the future" in message
    con = duckdb.connect(str(data_dir.warehouse_path), read_only=True)
    # the January files loaded; every row of the refused February files is in quarantine
    assert con.execute("select count(*) from raw.order_lines where order_date >= '2025-02-01'").fetchone()[0] == 0
    refused = con.execute("select sum(rows_read), sum(rows_quarantined) from meta.batches where status = 'rejected'").fetchone()
    assert refused[0] == refused[1] > 0
