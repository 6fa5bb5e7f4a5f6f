"""Ingestion of clean files: typed raw tables, lineage, idempotence, nothing lost."""

from __future__ import annotations

import json

import datetime as dt

import duckdb
import pytest

from pipelines.demo.world import deliver
from pipelines.ingest.loader import FilesChanged, GateFailed, ingest
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
    with pytest.raises(FilesChanged) as changed:
        _ingest(data_dir)
    assert changed.value.exit_code == 5 and not changed.value.retryable
    conflict = changed.value.report.conflicts[0]
    assert "changed after it was loaded" in conflict.message and "quotes_2025-01.csv" in conflict.message
    assert "crm/quotes/quotes_2025-01.csv changed after it was loaded" in str(changed.value)
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


# --- the command line: the whole report, exit codes, validate, quarantine ----------------------

ACCOUNTS = "account_id,account_name,status,updated_at\nA1,Alpha AB,customer,2025-01-01\nA2,Beta Oy,customer,2025-01-01\n"
ORDERS = "order_id,line_number,account_id,order_date,quantity,net_price,currency\n"


def _write(settings, rel: str, text: str | bytes) -> None:
    path = settings.landing_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)


def _cli(capsys, settings, *args: str) -> tuple[int, str, str]:
    from pipelines.cli import main

    code = main([*args, "--data-dir", str(settings.data_dir), "--as-of", "2026-01-31"])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_refused_file_does_not_hide_the_report_of_the_others(data_dir, capsys):
    _write(data_dir, "crm/accounts/accounts.csv", ACCOUNTS)
    _write(data_dir, "crm/quotes/q.csv", "quote_id,account_id,created_at,amount,currency,status\nQ1,A1,2025-06-01,10,EUR,won\n")
    assert _cli(capsys, data_dir, "ingest")[0] == 0
    _write(data_dir, "crm/quotes/q.csv", "quote_id,account_id,created_at,amount,currency,status\nQ1,A1,2025-06-01,10,EUR,lost\n")  # changed
    _write(data_dir, "crm/order_lines/june.csv", ORDERS + "O1,1,A1,2025-06-01,1,10,EUR\nO2,1,A9,2025-06-01,1,10,EUR\n")
    _write(data_dir, "crm/order_lines/extra.csv", ORDERS.strip() + ",Note\nO3,1,A1,2025-06-01,1,10,EUR,hi\n")
    _write(data_dir, "crm/order_lines/empty.csv", "")

    code, out, err = _cli(capsys, data_dir, "ingest")

    assert code == 3  # a refusal outranks the changed file; both are reported
    assert "loaded  crm/order_lines/june.csv  2 read, 1 to raw, 1 quarantined" in out
    assert "1 x unknown account" in out and "line 3: 'A9'" in out
    assert "extra column(s) not in the contract, not loaded: Note" in out
    assert "changed  crm/quotes/q.csv" in out and "--accept-changed" in out
    assert "refused  crm/order_lines/empty.csv" in out and "[expect_table_row_count_to_be_between]" in out
    assert "2 file(s) loaded" in out and "1 refused" in out and "1 changed after loading" in out
    assert "crm/order_lines/empty.csv: the file is empty" in err and "crm/quotes/q.csv changed after it was loaded" in err


def test_status_lists_the_files_waiting_for_a_fix(data_dir, capsys):
    _write(data_dir, "crm/accounts/accounts.csv", ACCOUNTS)
    _write(data_dir, "crm/accounts/broken.csv", "account_id,account_name\nA3,Gamma\n")
    _write(data_dir, "crm/order_lines/june.csv", ORDERS + "O1,1,A3,2025-06-01,1,10,EUR\n")
    assert _cli(capsys, data_dir, "ingest")[0] == 3

    from pipelines.cli import main

    assert main(["status", "--data-dir", str(data_dir.data_dir)]) == 0
    out = capsys.readouterr().out
    assert "files waiting for a fix" in out
    assert "refused  crm/accounts/broken.csv: missing required column(s) status, updated_at" in out
    assert "held  crm/order_lines/june.csv: held back, not loaded: rows name account(s) not loaded yet (A3)" in out


def test_exit_codes_tell_a_changed_file_and_a_misplaced_file_apart(data_dir, capsys):
    _write(data_dir, "crm/accounts/accounts.csv", ACCOUNTS)
    assert _cli(capsys, data_dir, "ingest")[0] == 0
    _write(data_dir, "crm/accounts/accounts.csv", ACCOUNTS.replace("Beta Oy", "Beta Oyj"))
    code, out, err = _cli(capsys, data_dir, "ingest")
    assert code == 5 and "crm/accounts/accounts.csv changed after it was loaded" in err
    assert rows_of(data_dir, "select count(*) from raw.accounts") == [(2,)]  # not appended
    assert _cli(capsys, data_dir, "ingest", "--accept-changed")[0] == 0
    _write(data_dir, "crm/Customers/more.csv", ACCOUNTS)
    code, out, err = _cli(capsys, data_dir, "ingest")
    assert code == 4 and "not loadable  crm/Customers/more.csv" in out and "did you mean crm/accounts/?" in out


def test_exit_codes_are_in_the_help():
    from pipelines.cli import build_parser

    parser = build_parser()
    text = parser.format_help()
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "6 ", "130"):
        assert f"\n  {code}" in text, code
    ingest_help = parser._subparsers._group_actions[0].choices["ingest"].format_help()
    assert "3    the quality gate refused a file" in ingest_help and "5    a file changed after it was loaded" in ingest_help
    status_help = parser._subparsers._group_actions[0].choices["status"].format_help()
    assert "exit codes:" in status_help and "2    configuration error" in status_help


def test_validate_writes_nothing_to_the_warehouse(data_dir, capsys):
    _write(data_dir, "crm/accounts/accounts.csv", ACCOUNTS)
    code, out, _ = _cli(capsys, data_dir, "validate")
    assert code == 0 and "would load  crm/accounts/accounts.csv" in out
    assert not data_dir.warehouse_path.exists()
    assert _cli(capsys, data_dir, "ingest")[0] == 0
    before = (data_dir.warehouse_path.read_bytes(), data_dir.warehouse_path.stat().st_mtime_ns)
    _write(data_dir, "crm/order_lines/june.csv", ORDERS + "O1,1,A2,2025-06-01,1,10,EUR\nO2,1,A9,2025-06-01,1,10,EUR\n")
    code, out, _ = _cli(capsys, data_dir, "validate")
    # checked against what the warehouse holds (A2 is known, accounts.csv already loaded) ...
    assert code == 0 and "would load  crm/order_lines/june.csv  2 read, 1 to raw, 1 quarantined" in out and "line 3: 'A9'" in out
    # ... without touching it
    assert (data_dir.warehouse_path.read_bytes(), data_dir.warehouse_path.stat().st_mtime_ns) == before


def test_quarantine_command_lists_rows_with_filters_and_csv(data_dir, capsys):
    _write(data_dir, "crm/accounts/accounts.csv", ACCOUNTS)
    _write(
        data_dir,
        "crm/order_lines/june.csv",
        ORDERS + "O1,1,A1,2025-06-01,x,10,EUR\nO2,1,A9,2025-06-01,1,10,EUR\nO3,1,A1,2025-06-01,1,10,EUR\n",
    )
    _write(
        data_dir,
        "crm/order_lines/july.csv",
        ORDERS + "P1,1,A1,31.07.2025,1,10,EUR\nP2,1,A1,2025-07-01,1,10,EUR\nP3,1,A1,2025-07-01,1,10,EUR\n",
    )
    assert _cli(capsys, data_dir, "ingest")[0] == 0

    from pipelines.cli import main

    assert main(["quarantine", "--data-dir", str(data_dir.data_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 quarantined row(s)" in out and "crm/order_lines/july.csv" in out and "'31.07.2025' is not a date" in out
    assert main(["quarantine", "--data-dir", str(data_dir.data_dir), "--file", "june.csv", "--reason", "WRONG TYPE"]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 quarantined row(s)" in out and "quantity" in out and "july" not in out
    assert main(["quarantine", "--data-dir", str(data_dir.data_dir), "--table", "order_lines", "--limit", "1"]) == 0
    assert "1 of 3 quarantined row(s); --limit 0 or --csv for all of them" in capsys.readouterr().out
    batch = rows_of(data_dir, "select batch_id from meta.batches where file = 'crm/order_lines/june.csv'")[0][0]
    assert main(["quarantine", "--data-dir", str(data_dir.data_dir), "--batch", batch, "--csv"]) == 0
    import csv
    import io

    listed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["file"], r["line"], r["column_name"], r["value"]) for r in listed] == [
        ("crm/order_lines/june.csv", "2", "quantity", "x"),
        ("crm/order_lines/june.csv", "3", "account_id", "A9"),
    ]
    assert json.loads(listed[1]["record"])["order_id"] == "O2"


def test_an_http_source_that_is_down_does_not_keep_the_landing_files_out(data_dir, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mappings = data_dir.data_dir / "mappings"
    mappings.mkdir(parents=True)
    (mappings / "api.yaml").write_text(
        f"source: api\nhttp:\n  base_url: http://127.0.0.1:{port}\n  token_env: NEEDSEG_TEST_TOKEN\n"
        "  retry: {max_attempts: 1}\n  endpoints:\n    accounts: {path: /v1/accounts}\n"
    )
    monkeypatch.setenv("NEEDSEG_TEST_TOKEN", "t")
    monkeypatch.setenv("NEEDSEG_MAPPINGS_DIR", str(mappings))
    _write(data_dir, "files/accounts/a.csv", ACCOUNTS)
    _write(data_dir, "files/order_lines/o.csv", ORDERS + "O1,1,A1,2025-06-01,1,10,EUR\n")

    code, out, err = _cli(capsys, data_dir, "ingest")

    assert code == 6
    assert "loaded  files/accounts/a.csv" in out and "HTTP sources:" in out and f"127.0.0.1:{port}" in err
    assert rows_of(data_dir, "select count(*) from raw.accounts") == [(2,)]
    # The order file names only accounts that are in: it loads too (it would wait otherwise).
    assert rows_of(data_dir, "select count(*) from raw.order_lines") == [(1,)]

    from pipelines.cycle import ingest_step
    from pipelines.ingest.loader import SourcesNotFetched

    _write(data_dir, "files/order_lines/o2.csv", ORDERS + "O2,1,A1,2025-06-01,1,10,EUR\n")
    with pytest.raises(SourcesNotFetched) as failed:
        ingest_step(dt.date(2026, 1, 31), data_dir.with_overrides(mappings_dir=mappings))
    assert failed.value.retryable and failed.value.report.count("loaded") == 1
    assert rows_of(data_dir, "select count(*) from raw.order_lines") == [(2,)]


def rows_of(settings, sql: str) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
