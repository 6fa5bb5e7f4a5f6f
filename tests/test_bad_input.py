"""Ingestion of real, messy exports: every bad-input class, formats, encodings, mappings.

Each test builds a small landing folder of real files (bytes written here: Latin-1,
UTF-8 with BOM, semicolons and decimal commas, a last line cut mid-row ...), runs the
loader on a throwaway warehouse and checks three things: what reached raw (typed), what
went to quarantine (file, line, column, value, reason), and that every batch accounts for
every row it read (rows_read == rows_loaded + rows_quarantined, and the warehouse agrees).

The mapping examples in config/sources/examples/ are loaded from there, so the
documentation cannot drift from what the loader does.
"""

from __future__ import annotations

import json

import csv
import datetime as dt
import io
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from pipelines.ingest.loader import FilesNotLoadable, GateFailed, IngestIncomplete, ingest
from pipelines.ingest.mapping import ReadOptions
from pipelines.ingest.readers import read_csv
from pipelines.settings import CONFIG_DIR, load_settings
from pipelines.warehouse import open_warehouse
from tests.conftest import rows

AS_OF = dt.date(2026, 1, 31)
EXAMPLES = CONFIG_DIR / "sources" / "examples"

ACCOUNTS = "account_id,account_name,status,updated_at\nA1,Alpha AB,customer,2025-01-01\nA2,Beta Oy,customer,2025-01-01\n"
ORDER_HEADER = "order_id,line_number,account_id,order_date,quantity,net_price,currency\n"
SURVEY_HEADER = "response_id,account_id,submitted_at,price,quality,satisfaction,nps\n"


def good_orders(*ids: str) -> str:
    return "".join(f"{i},1,A1,2025-06-01,1,10.00,EUR\n" for i in ids)


class Landing:
    """A throwaway data folder: landing files, mappings, warehouse, and what a run left."""

    def __init__(self, root: Path):
        self.settings = load_settings(root / "data").with_overrides(mappings_dir=root / "mappings")
        self.settings.mappings_dir.mkdir(parents=True)

    def write(self, rel: str, data: bytes | str) -> Path:
        path = self.settings.landing_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def mapping(self, name: str, text: str | None = None) -> None:
        target = self.settings.mappings_dir / name
        if text is None:
            shutil.copy(EXAMPLES / name, target)
        else:
            target.write_text(text)

    def ingest(self, **kwargs):
        """The report, or the IngestIncomplete (GateFailed ...) the run ended with."""
        kwargs.setdefault("known_currencies", ["EUR", "SEK"])
        with open_warehouse(self.settings.warehouse_path) as con:
            try:
                return ingest(self.settings, con, kwargs.pop("as_of", AS_OF), "test-run", **kwargs)
            except IngestIncomplete as failure:
                return failure

    def query(self, sql: str, params=None) -> list[tuple]:
        return rows(self.settings.warehouse_path, sql, params)

    def quarantine(self, file: str) -> list[tuple]:
        return self.query("select file, line, column_name, value, reason from meta.quarantine where file = ? order by line", [file])

    def raw(self, table: str, columns: str, file: str | None = None, source: str | None = None) -> list[tuple]:
        """Rows of one file (or of one source's files) in file and line order."""
        where, params = ("where _file = ?", [file]) if file else ("where _source = ?", [source]) if source else ("", [])
        return self.query(f"select {columns} from raw.{table} {where} order by _file, _line", params)

    def batch(self, file: str) -> dict:
        cols = ["status", "rows_read", "rows_loaded", "rows_quarantined", "extra_columns", "encoding", "message"]
        rows = self.query(f"select {', '.join(cols)} from meta.batches where file = ?", [file])
        assert len(rows) == 1, f"expected one batch for {file}, found {rows}"
        return dict(zip(cols, rows[0], strict=True))

    def assert_counts(self, file: str, read: int, loaded: int, quarantined: int) -> None:
        batch = self.batch(file)
        assert (batch["rows_read"], batch["rows_loaded"], batch["rows_quarantined"]) == (read, loaded, quarantined)

    def assert_nothing_lost(self) -> None:
        """Every batch: read = loaded + quarantined, and raw and quarantine hold exactly that."""
        for table, file, batch_id, status, read, loaded, quarantined in self.query(
            "select table_name, file, batch_id, status, rows_read, rows_loaded, rows_quarantined from meta.batches"
        ):
            assert read == loaded + quarantined, f"{file}: {read} read != {loaded} loaded + {quarantined} quarantined"
            in_raw = self.query(f"select count(distinct _line) from raw.{table} where _batch_id = ?", [batch_id])[0][0]
            in_quarantine = self.query("select count(*) from meta.quarantine where batch_id = ?", [batch_id])[0][0]
            assert (in_raw, in_quarantine) == (loaded, quarantined), f"{file} ({status}): raw/quarantine disagree with meta.batches"


@pytest.fixture
def landing(tmp_path: Path) -> Landing:
    land = Landing(tmp_path)
    land.write("crm/accounts/accounts.csv", ACCOUNTS)
    return land


def assert_refused(failure, file: str, *needles: str) -> None:
    assert isinstance(failure, GateFailed), f"expected the run to stop with GateFailed, got {failure!r}"
    line = next((x for x in str(failure).splitlines() if file in x), None)
    assert line is not None, f"{file} not named in: {failure}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"


# --- the bad-input classes -------------------------------------------------------------------


def test_unparseable_date_is_quarantined_with_line_column_and_value(landing):
    file = "crm/order_lines/dates.csv"
    landing.write(file, ORDER_HEADER + good_orders("O1", "O2", "O3") + "O4,1,A1,2025-13-45,1,10.00,EUR\nO5,1,A1,31/12/2025,1,10.00,EUR\n")
    report = landing.ingest()
    assert report.count("loaded") == 2
    rows = landing.quarantine(file)
    assert [r[:4] for r in rows] == [(file, 5, "order_date", "2025-13-45"), (file, 6, "order_date", "31/12/2025")]
    assert all(r[4].startswith("wrong type: ") and "is not a date in one of the formats" in r[4] for r in rows)
    landing.assert_counts(file, read=5, loaded=3, quarantined=2)
    assert landing.raw("order_lines", "order_id", file) == [("O1",), ("O2",), ("O3",)]
    landing.assert_nothing_lost()


def test_wrong_type_is_quarantined(landing):
    file = "crm/order_lines/types.csv"
    landing.write(
        file, ORDER_HEADER + good_orders("O1", "O2", "O3") + "O4,1,A1,2025-06-01,two,10.00,EUR\nO5,1.5,A1,2025-06-01,1,10.00,EUR\n"
    )
    landing.ingest()
    assert landing.quarantine(file) == [
        (
            file,
            5,
            "quantity",
            "two",
            "wrong type: 'two' is not a number with decimal separator '.', e.g. -1234.5 or -1 234.5 (thousands in groups of 3 digits)",
        ),
        (file, 6, "line_number", "1.5", "wrong type: '1.5' is not a whole number"),
    ]
    assert landing.batch(file)["rows_loaded"] == 3
    landing.assert_nothing_lost()


def test_out_of_range_scores_and_nps_are_quarantined(landing):
    file = "crm/survey_responses/wave1.csv"
    landing.write(
        file,
        SURVEY_HEADER
        + "R1,A1,2025-06-01,3,4,4,9\nR2,A1,2025-06-01,5,5,5,10\nR3,A2,2025-06-01,1,1,1,0\nR4,A2,2025-06-01,2,3,4,8\n"
        + "R5,A1,2025-06-01,6,4,4,9\n"  # price above the 1-5 scale
        + "R6,A1,2025-06-01,3,4,0,9\n"  # satisfaction below 1
        + "R7,A1,2025-06-01,3,4,4,11\n"  # NPS above 10
        + "R8,A1,2025-06-01,3,4,4,7.5\n",  # NPS must be a whole number
    )
    # Eight rows, four bad: stay under the 50 % that would refuse the whole file.
    landing.write("crm/survey_responses/wave2.csv", SURVEY_HEADER + "".join(f"S{i},A1,2025-06-01,3,3,3,5\n" for i in range(4)))
    landing.ingest(max_quarantine_share=0.6)
    assert landing.quarantine(file) == [
        (file, 6, "price", "6", "out of range: price '6'"),
        (file, 7, "satisfaction", "0", "out of range: satisfaction '0'"),
        (file, 8, "nps", "11", "out of range: nps '11'"),
        (file, 9, "nps", "7.5", "wrong type: '7.5' is not a whole number"),
    ]
    expected = landing.query("select expected from meta.quarantine where line = 6")[0][0]
    assert expected == "a value from 1 to 5"
    assert landing.raw("survey_responses", "response_id, price, nps", file)[:2] == [("R1", 3.0, 9), ("R2", 5.0, 10)]
    landing.assert_nothing_lost()


def test_missing_required_value_is_quarantined(landing):
    file = "crm/order_lines/gaps.csv"
    landing.write(file, ORDER_HEADER + good_orders("O1", "O2", "O3") + "O4,1,A1,2025-06-01,1,,EUR\nO5,1,,2025-06-01,1,10.00,EUR\n")
    landing.ingest()
    assert landing.quarantine(file) == [
        (file, 5, "net_price", None, "missing required value: net_price"),
        (file, 6, "account_id", None, "missing required value: account_id"),
    ]
    landing.assert_nothing_lost()


def test_duplicate_keys_identical_repeat_keeps_the_first_conflict_quarantines_all(landing):
    file = "crm/order_lines/dupes.csv"
    landing.write(
        file,
        ORDER_HEADER
        + good_orders("O1", "O2", "O3", "O4", "O5", "O6")
        + "O7,1,A1,2025-06-01,2,5.00,EUR\n"  # line 8
        + "O7,1,A1,2025-06-01,2,5.00,EUR\n"  # line 9: the same row again
        + "O8,1,A1,2025-06-01,2,5.00,EUR\n"  # line 10
        + "O8,1,A1,2025-06-01,3,5.00,EUR\n",  # line 11: same key, other quantity
    )
    landing.ingest()
    rows = landing.quarantine(file)
    assert [r[:4] for r in rows] == [
        (file, 9, "order_id,line_number", "O7|1"),
        (file, 10, "order_id,line_number", "O8|1"),
        (file, 11, "order_id,line_number", "O8|1"),
    ]
    assert rows[0][4] == "duplicate row: repeats line 8 (order_id,line_number 'O7|1')"
    assert rows[1][4] == rows[2][4] == "duplicate key with different values: order_id,line_number 'O8|1' on lines 10, 11"
    assert landing.raw("order_lines", "order_id, _line", file)[-1] == ("O7", 8)
    assert landing.batch(file)["rows_loaded"] == 7
    landing.assert_nothing_lost()


def test_unknown_account_is_quarantined_even_if_its_account_row_was_refused(landing):
    # A3's own row is quarantined (bad status), so A3 does not exist for its orders either.
    landing.write(
        "crm/accounts/more.csv",
        "account_id,account_name,status,updated_at\nA3,Gamma AS,bankrupt,2025-01-01\nA4,Delta ApS,prospect,2025-01-01\n",
    )
    file = "crm/order_lines/orders.csv"
    landing.write(file, ORDER_HEADER + good_orders("O1", "O2", "O3") + "O4,1,A9,2025-06-01,1,10.00,EUR\nO5,1,A3,2025-06-01,1,10.00,EUR\n")
    landing.ingest()
    assert landing.quarantine("crm/accounts/more.csv") == [
        ("crm/accounts/more.csv", 2, "status", "bankrupt", "value not allowed: status 'bankrupt'")
    ]
    assert landing.quarantine(file) == [
        (file, 5, "account_id", "A9", "unknown account: account_id 'A9'"),
        (file, 6, "account_id", "A3", "unknown account: account_id 'A3'"),
    ]
    landing.assert_nothing_lost()


def test_truncated_last_line_and_line_numbers_after_multiline_fields(landing):
    file = "crm/order_lines/cut.csv"
    # Line 3 holds a quoted product category over two physical lines: later rows keep their
    # real line numbers. The file ends mid-row with no newline (an interrupted transfer).
    landing.write(
        file,
        "order_id,line_number,account_id,order_date,quantity,net_price,currency,product_category\r\n"
        "O1,1,A1,2025-06-01,1,10.00,EUR,Tools\r\n"
        'O2,1,A1,2025-06-01,1,10.00,EUR,"Screws, bolts\r\nand nuts"\r\n'
        "O3,1,A1,2025-06-01,1,10.00,EUR,Tools\r\n"
        "O4,1,A1,2025-06-01,1,10.00,EUR,Tools\r\n"
        "O5,1,A1,2025-0",
    )
    file2 = "crm/order_lines/cut_in_quotes.csv"
    landing.write(file2, ORDER_HEADER + good_orders("P1", "P2") + 'P3,1,A1,2025-06-01,1,10.00,"EU')
    landing.ingest()
    assert landing.raw("order_lines", "order_id, product_category, _line", file) == [
        ("O1", "Tools", 2),
        ("O2", "Screws, bolts\r\nand nuts", 3),
        ("O3", "Tools", 5),
        ("O4", "Tools", 6),
    ]
    assert landing.quarantine(file) == [(file, 7, None, "O5,1,A1,2025-0", "truncated last line: 4 of 8 fields (the file ends mid-row)")]
    assert landing.quarantine(file2) == [
        (file2, 4, None, 'P3,1,A1,2025-06-01,1,10.00,"EU', "truncated last line: the file ends inside a quoted field")
    ]
    assert landing.batch(file)["rows_read"] == 5
    landing.assert_nothing_lost()


def test_wrong_encoding_refuses_the_file_names_it_and_accounts_for_its_rows(landing):
    # The source declares UTF-8 (defaults only: they hold for every table of the source),
    # but one export was saved as Latin-1.
    landing.mapping("crm.yaml", "source: crm\ndefaults:\n  encoding: utf-8\n")
    bad = "crm/accounts/latin1.csv"
    landing.write(
        bad,
        "account_id,account_name,status,updated_at\nA5,Ångström Verktyg AB,customer,2025-01-01\nA6,Fabrik Åkesson,customer,2025-01-01\n".encode(
            "latin-1"
        ),
    )
    landing.write("crm/order_lines/orders.csv", ORDER_HEADER + good_orders("O1", "O2"))
    failure = landing.ingest()
    assert_refused(failure, bad, "wrong encoding", "line 2", "not valid utf-8", "[file_encoding]")
    assert landing.raw("accounts", "account_id", bad) == []
    assert landing.batch(bad) | {"message": None} == {
        "status": "rejected",
        "rows_read": 2,
        "rows_loaded": 0,
        "rows_quarantined": 2,
        "extra_columns": [],
        "encoding": None,
        "message": None,
    }
    rows = landing.quarantine(bad)
    assert [r[1] for r in rows] == [2, 3] and all(r[4].startswith("batch rejected: wrong encoding") for r in rows)
    # the other files of the run still loaded
    assert landing.batch("crm/order_lines/orders.csv")["rows_loaded"] == 2
    landing.assert_nothing_lost()


def test_utf8_file_declared_as_latin1_is_refused_not_turned_into_mojibake(landing):
    landing.mapping("crm.yaml", "source: crm\ndefaults:\n  encoding: latin-1\n")
    bad = "crm/accounts/utf8.csv"
    landing.write(bad, "account_id,account_name,status,updated_at\nA5,Ångström Verktyg AB,customer,2025-01-01\n")
    failure = landing.ingest()
    assert_refused(failure, bad, "wrong encoding", "declares latin-1, but the file is UTF-8", "[file_encoding]")
    assert landing.query("select count(*) from raw.accounts where account_name like '%Ã%'")[0][0] == 0
    landing.assert_nothing_lost()


def test_an_empty_file_is_refused_naming_the_file_and_the_expectation(landing):
    landing.write("crm/order_lines/empty.csv", b"")  # 0 bytes: not even a header
    landing.write("crm/order_lines/blank.csv", "\r\n\r\n")  # only blank lines
    landing.write("crm/order_lines/good.csv", ORDER_HEADER + good_orders("O1"))
    failure = landing.ingest()
    assert_refused(failure, "crm/order_lines/empty.csv", "the file is empty (0 bytes)", "[expect_table_row_count_to_be_between]")
    assert_refused(failure, "crm/order_lines/blank.csv", "the file is empty (only blank lines)", "[expect_table_row_count_to_be_between]")
    for file in ("crm/order_lines/empty.csv", "crm/order_lines/blank.csv"):
        assert landing.batch(file)["status"] == "rejected" and landing.batch(file)["rows_read"] == 0
    assert landing.batch("crm/order_lines/good.csv")["rows_loaded"] == 1
    landing.assert_nothing_lost()


def test_a_header_only_file_is_an_empty_extract_loaded_as_zero_rows(landing):
    """A day without new tickets is not a broken export: the run goes on."""
    import openpyxl
    import pandas as pd

    files = {
        "csv": "crm/support_tickets/tickets_2026-01-31.csv",  # Excel's CSV UTF-8: BOM, CRLF
        "parquet": "crm/quotes/quotes_2026-01-31.parquet",  # a schema, no rows
        "xlsx": "crm/order_lines/orders_2026-01-31.xlsx",  # a header row, then nothing (a blank row)
    }
    landing.write(files["csv"], "\ufeffticket_id,account_id,opened_at,closed_at,priority,category\r\n")
    path = landing.settings.landing_dir / files["parquet"]
    path.parent.mkdir(parents=True)
    columns = ["quote_id", "account_id", "created_at", "amount", "currency", "status", "loss_reason"]
    pd.DataFrame({c: pd.Series([], dtype="str") for c in columns}).to_parquet(path)
    book = openpyxl.Workbook()
    book.active.append(ORDER_HEADER.strip().split(","))
    book.active.append([None] * 7)
    path = landing.settings.landing_dir / files["xlsx"]
    path.parent.mkdir(parents=True)
    book.save(path)

    report = landing.ingest()
    assert not isinstance(report, GateFailed), report
    for file in files.values():
        outcome = next(f for f in report.files if f.file == file)
        assert (outcome.status, outcome.rows_read, outcome.rows_loaded, outcome.rows_quarantined) == ("loaded", 0, 0, 0)
        assert outcome.message == "no rows (header only)"
        assert landing.batch(file) | {"encoding": None} == {
            "status": "loaded",
            "rows_read": 0,
            "rows_loaded": 0,
            "rows_quarantined": 0,
            "extra_columns": [],
            "encoding": None,
            "message": "no rows (header only)",
        }
    assert landing.batch("crm/accounts/accounts.csv")["rows_loaded"] == 2  # the rest of the run loaded
    landing.assert_nothing_lost()
    # Recorded by checksum like any batch: the next run skips it.
    again = landing.ingest()
    assert {f.file: f.status for f in again.files if f.file in files.values()} == dict.fromkeys(files.values(), "already_loaded")
    # Tomorrow's header-only export is byte for byte the same file: known already, nothing to do.
    landing.write("crm/support_tickets/tickets_2026-02-01.csv", "\ufeffticket_id,account_id,opened_at,closed_at,priority,category\r\n")
    third = landing.ingest()
    assert not isinstance(third, GateFailed) and [f.status for f in third.files if f.status != "already_loaded"] == ["duplicate"]


def test_a_header_only_file_missing_a_required_column_is_still_refused(landing):
    bad = "crm/order_lines/no_price.csv"
    landing.write(bad, "order_id,line_number,account_id,order_date,quantity,currency\n")
    landing.mapping("nordic_crm.yaml")
    mapped = "nordic_crm/accounts/kunder_2026-01.csv"  # the mapping reads Kundnamn, which is not there
    landing.write(mapped, "Kundnr;Status;Uppdaterad\r\n".encode("cp1252"))
    failure = landing.ingest()
    assert_refused(failure, bad, "missing required column(s) net_price", "[expect_column_to_exist]")
    assert_refused(failure, mapped, "missing column 'Kundnamn'", "[expect_column_to_exist]")
    for file in (bad, mapped):
        assert landing.batch(file)["status"] == "rejected" and landing.batch(file)["rows_read"] == 0
    landing.assert_nothing_lost()


def test_missing_column_refuses_the_file_and_quarantines_its_rows(landing):
    bad = "crm/order_lines/no_price.csv"
    landing.write(bad, "order_id,line_number,account_id,order_date,quantity,currency\nO1,1,A1,2025-06-01,1,EUR\nO2,1,A1,2025-06-01,1,EUR\n")
    failure = landing.ingest()
    assert_refused(failure, bad, "missing required column(s) net_price", "[expect_column_to_exist]")
    assert landing.raw("order_lines", "order_id", bad) == []
    rows = landing.quarantine(bad)
    assert [r[1] for r in rows] == [2, 3] and all(r[4].startswith("batch rejected: missing required column(s) net_price") for r in rows)
    record = landing.query("select record from meta.quarantine where line = 2")[0][0]
    assert json.loads(record)["order_id"] == "O1"  # the row as read, to re-deliver it
    assert landing.batch("crm/accounts/accounts.csv")["rows_loaded"] == 2  # the rest of the run loaded
    landing.assert_nothing_lost()


def test_a_mapped_column_missing_from_the_export_is_a_missing_column_not_a_crash(landing):
    landing.mapping("nordic_crm.yaml")
    bad = "nordic_crm/accounts/kunder_1.csv"
    landing.write(bad, "Kundnr;Status;Uppdaterad\r\nK-1;Aktiv;31.12.2025\r\n".encode("cp1252"))
    landing.write("crm/order_lines/orders.csv", ORDER_HEADER + good_orders("O1"))
    failure = landing.ingest()
    assert_refused(failure, bad, "missing column 'Kundnamn'", "accounts.account_name", "[expect_column_to_exist]")
    assert landing.batch("crm/order_lines/orders.csv")["status"] == "loaded"
    landing.assert_nothing_lost()


def test_extra_column_loads_and_is_reported(landing):
    file = "crm/order_lines/extra.csv"
    landing.write(
        file,
        "order_id,line_number,account_id,order_date,quantity,net_price,currency,Internal note\nO1,1,A1,2025-06-01,1,10.00,EUR,call back\n",
    )
    report = landing.ingest()
    outcome = next(f for f in report.files if f.file == file)
    assert outcome.extra_columns == ["Internal note"] and "Internal note" in outcome.message
    batch = landing.batch(file)
    assert batch["status"] == "loaded" and batch["extra_columns"] == ["Internal note"] and "not loaded: Internal note" in batch["message"]
    assert landing.raw("order_lines", "order_id", file) == [("O1",)]
    landing.assert_nothing_lost()


def test_nordic_semicolon_decimal_comma_csv_loads_correctly(landing):
    landing.mapping("nordic_crm.yaml")
    landing.write(
        "nordic_crm/accounts/kunder_2025-12.csv",
        (
            "Kundnr;Kundnamn;Status;Bransch;Land;Anställda;Omsättning (SEK);Kund sedan;Säljare;Uppdaterad\r\n"
            "K-1001;Ångström Verktyg AB;Aktiv;Verkstad;se;1 200;12 500 000,00;15.03.2019;anna.berg@example.se;31.12.2025 08:15\r\n"
            "K-1002;Björk & Söner Handelsbolag;prospekt;-;SE;-;-;-;;01.12.2025\r\n"
        ).encode("cp1252"),
    )
    # the next month's export came as "CSV UTF-8" from Excel: the BOM wins over cp1252
    landing.write(
        "nordic_crm/accounts/kunder_2026-01.csv",
        "\ufeffKundnr;Kundnamn;Status;Bransch;Land;Anställda;Omsättning (SEK);Kund sedan;Säljare;Uppdaterad\r\n"
        "K-1003;Öresunds Ädelstål AB;Avslutad;Stål;DK;45;9 876,5;01.02.2020;;15.01.2026\r\n".encode("utf-8"),
    )
    landing.write(
        "nordic_crm/order_lines/ordrar_2025-12.csv",
        (
            "Ordernr;Rad;Kundnr;Orderdatum;Artikel;Varugrupp;Antal;Listpris;Rabatt %;Valuta;Kanal\r\n"
            "O-77;1;K-1001;31.12.2025;ART-9;Verktyg;2;1 500,00;17,7;sek;Webb\r\n"
            "O-77;2;K-1001;31.12.2025;ART-3;Skruvar & muttrar;-1;1 234,50;;;Säljare\r\n"
        ).encode("cp1252"),
    )
    report = landing.ingest()
    assert report.rows_quarantined == 0, landing.query("select * from meta.quarantine")
    assert landing.raw(
        "accounts", "account_id, account_name, status, country, employees, annual_revenue, customer_since, updated_at", source="nordic_crm"
    ) == [
        (
            "K-1001",
            "Ångström Verktyg AB",
            "customer",
            "SE",
            1200,
            Decimal("12500000.0000"),
            dt.date(2019, 3, 15),
            dt.datetime(2025, 12, 31, 8, 15),
        ),
        ("K-1002", "Björk & Söner Handelsbolag", "prospect", "SE", None, None, None, dt.datetime(2025, 12, 1)),
        ("K-1003", "Öresunds Ädelstål AB", "churned", "DK", 45, Decimal("9876.5000"), dt.date(2020, 2, 1), dt.datetime(2026, 1, 15)),
    ]
    assert landing.raw(
        "order_lines",
        "order_id, line_number, order_date, product_category, quantity, list_price, net_price, currency, channel",
        source="nordic_crm",
    ) == [
        ("O-77", 1, dt.date(2025, 12, 31), "Verktyg", 2.0, Decimal("1500.0000"), Decimal("1234.5000"), "SEK", "web"),
        ("O-77", 2, dt.date(2025, 12, 31), "Skruvar & muttrar", -1.0, Decimal("1234.5000"), Decimal("1234.5000"), "SEK", "field sales"),
    ]
    assert landing.batch("nordic_crm/accounts/kunder_2025-12.csv")["encoding"] == "cp1252"
    assert landing.batch("nordic_crm/accounts/kunder_2026-01.csv")["encoding"] == "utf-8-sig"
    landing.assert_nothing_lost()


# --- the other quality rules ----------------------------------------------------------------


def test_ticket_closed_before_it_was_opened_and_currency_without_a_rate(landing):
    tickets = "crm/support_tickets/tickets.csv"
    landing.write(
        tickets,
        "ticket_id,account_id,opened_at,closed_at,priority,category\n"
        "T1,A1,2025-06-01 10:00,2025-06-02 09:00,High,Technical\n"
        "T2,A1,2025-06-01,,low,other\n"
        "T3,A1,2025-06-05 10:00,2025-06-04 10:00,normal,price\n",
    )
    orders = "crm/order_lines/currencies.csv"
    landing.write(orders, ORDER_HEADER + good_orders("O1", "O2") + "O3,1,A1,2025-06-01,1,10.00,BRL\n")
    landing.ingest()
    assert landing.quarantine(tickets) == [
        (
            tickets,
            4,
            "closed_at",
            "2025-06-04 10:00 < 2025-06-05 10:00",
            "closed before it was opened: closed_at '2025-06-04 10:00 < 2025-06-05 10:00'",
        )
    ]
    assert landing.raw("support_tickets", "ticket_id, priority, category", tickets) == [("T1", "high", "technical"), ("T2", "low", "other")]
    assert landing.quarantine(orders) == [(orders, 4, "currency", "BRL", "no exchange rate for currency: currency 'BRL'")]
    landing.assert_nothing_lost()


def test_known_currencies_default_to_the_configured_exchange_rates(landing):
    orders = "crm/order_lines/currencies.csv"
    landing.write(orders, ORDER_HEADER + good_orders("O1", "O2") + "O3,1,A1,2025-06-01,1,10.00,usd\nO4,1,A1,2025-06-01,1,10.00,BRL\n")
    with open_warehouse(landing.settings.warehouse_path) as con:
        ingest(landing.settings, con, AS_OF, "test-run")  # no known_currencies: config/needseg.yaml's fx_rates
    assert landing.raw("order_lines", "order_id, currency", orders)[-1] == ("O3", "USD")
    assert [r[3] for r in landing.quarantine(orders)] == ["BRL"]


# --- formats, encodings, mapping features ------------------------------------------------------


def test_xlsx_workbook_loads_with_native_numbers_and_dates(landing):
    import openpyxl

    landing.mapping("nordic_crm.yaml")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Ordernr", "Rad", "Kundnr", "Orderdatum", "Artikel", "Varugrupp", "Antal", "Listpris", "Rabatt %", "Valuta", "Kanal"])
    sheet.append(["O-1", 1, "K-1", dt.date(2025, 12, 31), "ART-1", "Verktyg", 2, 1234.5, None, "SEK", "Webb"])
    sheet.append([None] * 11)  # an empty row inside the sheet
    sheet.append(["O-1", 2, "K-1", "30.12.2025", "ART-2", "Verktyg", 1, "1 500,00", "17,7", None, "Butik"])  # typed as text
    sheet.append(["O-1", 3, "K-1", dt.datetime(2025, 12, 30, 14, 0), "ART-3", "Verktyg", "många", 10, 0, "SEK", "Webb"])
    path = landing.settings.landing_dir / "nordic_crm/order_lines/ordrar_2025-12.xlsx"
    path.parent.mkdir(parents=True)
    book.save(path)
    landing.write(
        "nordic_crm/accounts/kunder.csv",
        "Kundnr;Kundnamn;Status;Bransch;Land;Anställda;Omsättning (SEK);Kund sedan;Säljare;Uppdaterad\r\n"
        "K-1;Kund Ett AB;Aktiv;;SE;;;;;01.12.2025\r\n".encode("cp1252"),
    )
    landing.ingest(max_quarantine_share=0.6)
    file = "nordic_crm/order_lines/ordrar_2025-12.xlsx"
    # 1234.5 is a native number: with decimal ',' and thousands ' ' it must stay 1234.5
    assert landing.raw("order_lines", "line_number, order_date, list_price, net_price, currency, _line", file) == [
        (1, dt.date(2025, 12, 31), Decimal("1234.5000"), Decimal("1234.5000"), "SEK", 2),
        (2, dt.date(2025, 12, 30), Decimal("1500.0000"), Decimal("1234.5000"), "SEK", 4),
    ]
    assert landing.quarantine(file) == [
        (
            file,
            5,
            "quantity",
            "många",
            "wrong type: 'många' is not a number with decimal separator ',', thousands separator ' ', e.g. -1234,5 or -1 234,5 (thousands in groups of 3 digits)",
        )
    ]
    landing.assert_nothing_lost()


def test_json_lines_load_with_lines_numbered_as_in_the_file(landing):
    file = "crm/support_tickets/tickets.jsonl"
    landing.write(
        file,
        '{"ticket_id": "T1", "account_id": "A1", "opened_at": "2025-06-01T10:00:00", "closed_at": null, "priority": "high", "category": "price"}\n'
        "\n"
        '{"ticket_id": 2, "account_id": "A2", "opened_at": "2025-06-02 08:00:00", "priority": "low", "category": "other"}\n'
        '{"ticket_id": "T3", "account_id": "A1", "opened_at": 2025}\n'
        '["not", "an", "object"]\n'
        '{"ticket_id": "T5", "account_id": "A1", "ope',
    )
    landing.ingest(max_quarantine_share=0.7)
    assert landing.raw("support_tickets", "ticket_id, account_id, opened_at, _line", file) == [
        ("T1", "A1", dt.datetime(2025, 6, 1, 10), 1),
        ("2", "A2", dt.datetime(2025, 6, 2, 8), 3),
    ]
    rows = landing.quarantine(file)
    assert [(r[1], r[2], r[4].split(":")[0]) for r in rows] == [
        (4, "opened_at", "wrong type"),
        (5, None, "expected a JSON object"),
        (6, None, "truncated last line"),
    ]
    landing.assert_nothing_lost()


def test_parquet_loads_with_integer_ids_kept_exact(landing):
    import pandas as pd

    frame = pd.DataFrame(
        {
            "quote_id": pd.array([9001, 9002, None], dtype="Int64"),  # integers with a null: not "9001.0"
            "account_id": ["A1", "A2", "A1"],
            "created_at": pd.to_datetime(["2025-06-01 09:30:00", "2025-06-02 00:00:00", "2025-06-03 00:00:00"]),
            "amount": [1234.5, 99.0, 10.0],
            "currency": ["EUR", "SEK", "EUR"],
            "status": ["won", "lost", "open"],
            "loss_reason": [None, "price", None],
        }
    )
    path = landing.settings.landing_dir / "crm/quotes/quotes.parquet"
    path.parent.mkdir(parents=True)
    frame.to_parquet(path)
    landing.ingest()
    file = "crm/quotes/quotes.parquet"
    assert landing.raw("quotes", "quote_id, created_at, amount, loss_reason, _line", file) == [
        ("9001", dt.datetime(2025, 6, 1, 9, 30), Decimal("1234.5000"), None, 1),
        ("9002", dt.datetime(2025, 6, 2), Decimal("99.0000"), "price", 2),
    ]
    assert landing.quarantine(file) == [(file, 3, "quote_id", None, "missing required value: quote_id")]


def test_cp1252_with_encoding_auto_keeps_nordic_letters(landing):
    file = "crm/accounts/nordic.csv"
    landing.write(
        file, "account_id;account_name;status;updated_at\nA7;Åhléns Företagsförsäljning AB – Öst;customer;2025-01-01\n".encode("cp1252")
    )
    landing.ingest()
    assert landing.raw("accounts", "account_name", file) == [("Åhléns Företagsförsäljning AB – Öst",)]
    assert landing.batch(file)["encoding"] == "cp1252"


def test_derived_and_constant_columns_and_value_recoding(landing):
    landing.mapping(
        "shop.yaml",
        """
source: shop
defaults:
  date_formats: ["%Y%m%d"]
tables:
  order_lines:
    columns:
      order_id: "'WEB-' || Invoice"                      # derived
      line_number: Pos
      account_id: "upper(trim(Customer))"                # derived
      order_date: Day
      quantity: Qty
      net_price: "parse_number(Total) / parse_number(Qty)" # derived, numeric
      currency: "'EUR'"                                  # a constant
      channel: Source
    values:
      channel: {W: web, S: store}
""",
    )
    file = "shop/order_lines/export.csv"
    landing.write(
        file,
        "Invoice,Pos,Customer,Day,Qty,Total,Source,Clerk\n1001,1, a1 ,20250601,4,10.00,W,Kim\n1001,2,a2,20250601,2,7,s,Kim\n1002,1,a1,20250602,1,3.5,X,Lee\n",
    )
    report = landing.ingest()
    assert landing.raw("order_lines", "order_id, line_number, account_id, order_date, net_price, currency, channel", file) == [
        ("WEB-1001", 1, "A1", dt.date(2025, 6, 1), Decimal("2.5000"), "EUR", "web"),
        ("WEB-1001", 2, "A2", dt.date(2025, 6, 1), Decimal("3.5000"), "EUR", "store"),
        ("WEB-1002", 1, "A1", dt.date(2025, 6, 2), Decimal("3.5000"), "EUR", "X"),  # unlisted values pass as they are
    ]
    assert next(f for f in report.files if f.file == file).extra_columns == ["Clerk"]


def test_unpivot_wide_to_long_counts_input_rows(landing):
    landing.mapping(
        "wide.yaml",
        """
source: wide
tables:
  order_lines:
    unpivot:
      columns: [Widgets, Bolts]
      name_to: product_id
      value_to: quantity
      labels: {Widgets: W-1, Bolts: B-2}
    columns:
      order_id: Order
      line_number: "row_number() over (partition by \\"Order\\" order by _line, product_id)"
      account_id: Customer
      order_date: Date
      net_price: "'1.00'"
      currency: "'EUR'"
""",
    )
    file = "wide/order_lines/wide.csv"
    landing.write(
        file,
        "Order,Customer,Date,Widgets,Bolts\nO1,A1,2025-06-01,3,5\nO2,A2,2025-06-01,,2\nO3,A1,2025-06-01,,\nO4,A1,2025-06-01,x,1\nO5,A1,2025-06-01,1,1\n",
    )
    landing.ingest()
    assert landing.raw("order_lines", "order_id, line_number, product_id, quantity, _line", file) == [
        ("O1", 1, "B-2", 5.0, 2),
        ("O1", 2, "W-1", 3.0, 2),
        ("O2", 1, "B-2", 2.0, 3),
        ("O5", 1, "B-2", 1.0, 6),
        ("O5", 2, "W-1", 1.0, 6),
    ]
    assert [(r[1], r[4].split(":")[0]) for r in landing.quarantine(file)] == [(4, "empty row"), (5, "wrong type")]
    landing.assert_counts(file, read=5, loaded=3, quarantined=2)


def test_dry_run_checks_everything_and_writes_nothing(landing):
    landing.write("crm/order_lines/orders.csv", ORDER_HEADER + good_orders("O1", "O2") + "O3,1,A9,2025-06-01,1,10.00,EUR\n")
    report = landing.ingest(dry_run=True)
    assert report.count("valid") == 2 and report.count("loaded") == 0
    outcome = next(f for f in report.files if f.file == "crm/order_lines/orders.csv")
    assert (outcome.rows_read, outcome.rows_loaded, outcome.rows_quarantined) == (3, 2, 1)
    assert outcome.quarantine_reasons == {"unknown account": 1}
    for table in ("raw.accounts", "raw.order_lines", "meta.batches", "meta.quarantine"):
        assert landing.query(f"select count(*) from {table}")[0][0] == 0, table
    # a refused file is reported the same way, and still nothing is written
    landing.write("crm/order_lines/empty.csv", b"")
    assert isinstance(landing.ingest(dry_run=True), GateFailed)
    assert landing.query("select count(*) from meta.batches")[0][0] == 0


# --- a survey tool's wide export ---------------------------------------------------------------


def _question(text: str) -> str:
    return f"How important {text}? (1 = not at all, 7 = extremely)"


SURVEY_TOOL_HEADER = [
    "Respondent ID",
    "Company number",
    "Submitted",
    "Your role",
    _question("is product quality when choosing a supplier"),
    _question("is the supplier's brand and reputation"),
    _question("are support and service"),
    _question("is fast delivery"),
    _question("is delivery reliability (on time, complete)"),
    _question("is a long-term partnership with your supplier"),
    "Price matters little to us (1 = disagree completely, 7 = agree completely)",
    "Overall, how satisfied are you with us? (1-5)",
    "How likely is it that you would recommend us to a colleague? (0-10)",
    "Anything else you would like to tell us?",
]


def test_wide_survey_export_loads_through_the_mapping_only(landing):
    landing.mapping("survey_tool_wide.yaml")
    rows = [
        # several respondents per account; a free-text answer over two lines
        [
            "R-1",
            "A1",
            "03/11/2025 14:22",
            "Purchasing manager",
            "7",
            "1",
            "4",
            "Don't know",
            "5",
            "6",
            "2",
            "4",
            "9",
            "Great service,\nthanks",
        ],
        ["R-2", "A1", "04/11/2025 09:05", "Technical manager", "8", "3", "3", "3", "3", "3", "3", "3", "7", ""],
        ["R-3", "A2", "05/11/2025", "VD", "4", "4", "4", "4", "4", "4", "7", "5", "10", ""],
        ["R-4", "A2", "06/11/2025", "Managing director", "Don’t know", "2", "2", "2", "2", "2", "1", "1", "0", ""],
        ["R-5", "A2", "07/11/2025", "Inköpschef", "", "", "", "", "", "", "", "Prefer not to say", "6", ""],
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(SURVEY_TOOL_HEADER)
    writer.writerows(rows)
    file = "survey_tool/survey_responses/needs_2025h2.csv"
    landing.write(file, b"\xef\xbb\xbf" + out.getvalue().encode("utf-8"))
    report = landing.ingest()
    loaded = landing.raw(
        "survey_responses",
        "response_id, account_id, respondent_role, submitted_at, wave, round(price, 4), round(quality, 4), round(brand, 4), "
        "round(service, 4), round(delivery, 4), round(reliability, 4), round(partnership, 4), satisfaction, nps, _line",
        file,
    )
    assert loaded == [
        ("R-1", "A1", "purchasing", dt.datetime(2025, 11, 3, 14, 22), "2025H2", 4.3333, 5.0, 1.0, 3.0, None, 3.6667, 4.3333, 4.0, 9, 2),
        ("R-3", "A2", "management", dt.datetime(2025, 11, 5), "2025H2", 1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 5.0, 10, 5),
        ("R-4", "A2", "management", dt.datetime(2025, 11, 6), "2025H2", 5.0, None, 1.6667, 1.6667, 1.6667, 1.6667, 1.6667, 1.0, 0, 6),
        ("R-5", "A2", "purchasing", dt.datetime(2025, 11, 7), "2025H2", None, None, None, None, None, None, None, None, 6, 7),
    ]
    # R-2 is on line 4 (R-1's comment spans lines 2-3); 8 is not on the declared 1-7 scale
    assert landing.quarantine(file) == [(file, 4, "quality", "8", "out of range: 8 is outside the declared scale 1-7")]
    outcome = next(f for f in report.files if f.file == file)
    assert outcome.extra_columns == ["Anything else you would like to tell us?"]
    landing.assert_nothing_lost()


# --- every file accounted for; what stops a run and what does not ---------------------------


def test_every_file_in_the_landing_folder_is_loaded_skipped_or_reported_with_what_to_do(landing):
    landing.mapping("nordic_crm.yaml")  # accounts: files "kunder*"
    kunder = "K-1;Kund Ett AB;Aktiv;;SE;;;;;01.12.2025\r\n"
    header = "Kundnr;Kundnamn;Status;Bransch;Land;Anställda;Omsättning (SEK);Kund sedan;Säljare;Uppdaterad\r\n"
    landing.write("nordic_crm/accounts/Kunder_2026.CSV", (header + kunder).encode("cp1252"))  # pattern: any case
    landing.write("nordic_crm/accounts/export_2026.csv", (header + kunder.replace("K-1", "K-2")).encode("cp1252"))
    landing.write("crm/Accounts/more.csv", ACCOUNTS.replace("A1", "A3").replace("A2", "A4"))  # table folder: any case
    landing.write("crm/customers/a.csv", ACCOUNTS)
    landing.write("crm/top.csv", ACCOUNTS)
    landing.write("crm/customers_2026.csv", ACCOUNTS)
    landing.write("loose.csv", ACCOUNTS)
    landing.write("crm/order_lines/notes.docx", b"PK\x03\x04")
    landing.write("crm/order_lines/2025/old.csv", ORDER_HEADER + good_orders("O9"))
    for litter in ("crm/accounts/.DS_Store", "crm/accounts/~$accounts.xlsx", "crm/order_lines/orders.csv.part"):
        landing.write(litter, b"\x00")

    failure = landing.ingest()

    assert isinstance(failure, FilesNotLoadable) and failure.exit_code == 4
    statuses = {f.file: f.status for f in failure.report.files}
    assert statuses == {
        "crm/accounts/accounts.csv": "loaded",
        "crm/Accounts/more.csv": "loaded",
        "nordic_crm/accounts/Kunder_2026.CSV": "loaded",
        "nordic_crm/accounts/export_2026.csv": "not_loadable",
        "crm/customers/a.csv": "not_loadable",
        "crm/top.csv": "not_loadable",
        "crm/customers_2026.csv": "not_loadable",
        "loose.csv": "not_loadable",
        "crm/order_lines/notes.docx": "not_loadable",
        "crm/order_lines/2025/old.csv": "not_loadable",
        "crm/accounts/.DS_Store": "ignored",
        "crm/accounts/~$accounts.xlsx": "ignored",
        "crm/order_lines/orders.csv.part": "ignored",
    }
    message = str(failure)
    for file, *needles in (
        ("nordic_crm/accounts/export_2026.csv", "does not match the files pattern 'kunder*'", "nordic_crm.yaml", "rename the file"),
        ("crm/customers/a.csv", "unknown table folder 'customers'", "did you mean crm/accounts/?"),
        ("crm/top.csv", "no table folder", "crm/<table>/", "move it into the folder of its table"),
        ("crm/customers_2026.csv", "no table folder", "did you mean crm/accounts/customers_2026.csv?"),
        ("loose.csv", "not in a source folder", "<source>/<table>/loose.csv"),
        ("crm/order_lines/notes.docx", "cannot tell the format", "'notes.docx'", ".xlsx"),
        ("crm/order_lines/2025/old.csv", "in a subfolder of crm/order_lines/", "move it up"),
    ):
        line = next(x for x in message.splitlines() if x.startswith(f"- {file}:"))
        assert all(n in line for n in needles), (needles, line)
    assert sorted(landing.raw("accounts", "account_id", source="crm")) == [("A1",), ("A2",), ("A3",), ("A4",)]
    assert landing.raw("accounts", "account_id", source="nordic_crm") == [("K-1",)]
    landing.assert_nothing_lost()

    # An archived copy of a file already loaded is known by its checksum: nothing to report.
    (landing.settings.landing_dir / "crm/order_lines/2025/old.csv").unlink()
    for stray in (
        "nordic_crm/accounts/export_2026.csv",
        "crm/customers/a.csv",
        "crm/top.csv",
        "crm/customers_2026.csv",
        "loose.csv",
        "crm/order_lines/notes.docx",
    ):
        (landing.settings.landing_dir / stray).unlink()
    landing.write("crm/order_lines/orders.csv", ORDER_HEADER + good_orders("O1"))
    assert not isinstance(landing.ingest(), IngestIncomplete)
    landing.write("crm/order_lines/archive/orders.csv", ORDER_HEADER + good_orders("O1"))
    again = landing.ingest()
    assert not isinstance(again, IngestIncomplete)
    assert {f.file: f.status for f in again.files}["crm/order_lines/archive/orders.csv"] == "already_loaded"


def test_a_refused_accounts_file_holds_back_the_orders_that_need_it_until_it_is_fixed(landing):
    """b.csv (accounts) comes in the wrong encoding; o.csv names its account A7. o.csv must
    not lose A7's rows to quarantine for good: it waits, and loads whole once b.csv is fixed."""
    landing.mapping("c.yaml", "source: c\ndefaults:\n  encoding: utf-8\n")
    header = "account_id,account_name,status,updated_at\n"
    landing.write("c/accounts/a.csv", header + "A1,Alpha,customer,2026-01-01\n")
    fixed = header + "A7,Ångström Verktyg AB,customer,2026-01-01\n"
    landing.write("c/accounts/b.csv", fixed.encode("latin-1"))
    orders = "c/order_lines/o.csv"
    landing.write(
        orders,
        ORDER_HEADER + good_orders(*(f"O{i}" for i in range(1, 8))) + "".join(f"O{i},1,A7,2025-06-01,1,10.00,EUR\n" for i in (8, 9, 10)),
    )
    independent = "c/order_lines/only_a1.csv"
    landing.write(independent, ORDER_HEADER + good_orders("P1", "P2"))

    failure = landing.ingest()
    assert_refused(failure, "c/accounts/b.csv", "wrong encoding", "[file_encoding]")
    assert_refused(failure, orders, "held back", "(A7)", "c/accounts/b.csv (refused)")
    held = next(f for f in failure.report.files if f.file == orders)
    assert (held.status, held.rows_read, held.rows_loaded, held.rows_quarantined) == ("held", 10, 0, 0)
    assert landing.raw("order_lines", "order_id", orders) == [] and landing.quarantine(orders) == []
    assert landing.batch(orders)["status"] == "held"
    assert landing.batch(independent)["rows_loaded"] == 2  # names only known accounts: loads now
    landing.assert_nothing_lost()
    # Still broken on the next run: still held, still nothing of it written.
    assert isinstance(landing.ingest(), GateFailed) and landing.batch(orders)["status"] == "held"

    landing.write("c/accounts/b.csv", fixed)  # re-delivered as UTF-8
    report = landing.ingest()
    assert not isinstance(report, IngestIncomplete), report
    assert {f.file: f.status for f in report.files if f.status != "already_loaded"} == {"c/accounts/b.csv": "loaded", orders: "loaded"}
    landing.assert_counts(orders, read=10, loaded=10, quarantined=0)
    assert len(landing.raw("order_lines", "order_id", orders)) == 10
    assert landing.query("select count(*) from meta.quarantine where reason like 'unknown account%'")[0][0] == 0
    # the refused delivery stays on record (its row in quarantine), marked as replaced
    assert landing.query("select status from meta.batches where file = 'c/accounts/b.csv' order by loaded_at") == [
        ("superseded",),
        ("loaded",),
    ]
    landing.assert_nothing_lost()


def test_a_batch_expectation_judges_each_file_on_its_own(landing, tmp_path):
    """An aggregate added to a suite (the mean quantity of an order file) refuses the file
    whose own mean breaks it, not every file of the run."""
    import json

    from pipelines.quality.gate import QualityGate
    from pipelines.settings import EXPECTATIONS_DIR

    suites = tmp_path / "suites"
    shutil.copytree(EXPECTATIONS_DIR, suites)
    suite = json.loads((suites / "order_lines.json").read_text())
    suite["expectations"].append({"type": "expect_column_mean_to_be_between", "kwargs": {"column": "quantity", "max_value": 1000}})
    (suites / "order_lines.json").write_text(json.dumps(suite))
    landing.write("crm/order_lines/good.csv", ORDER_HEADER + good_orders("O1", "O2"))
    landing.write("crm/order_lines/huge.csv", ORDER_HEADER + "O3,1,A1,2025-06-01,100000,10.00,EUR\n")

    failure = landing.ingest(gate=QualityGate(suites))

    assert_refused(failure, "crm/order_lines/huge.csv", "expect_column_mean_to_be_between(quantity)", "observed 100000", "at most 1000")
    assert "good.csv" not in str(failure)
    assert landing.batch("crm/order_lines/good.csv")["rows_loaded"] == 2
    document = json.loads((landing.settings.quality_dir / failure.report.run_id / "order_lines.json").read_text())
    means = {
        e["result"]["needseg_file"]: (e["success"], e["result"]["observed_value"])
        for e in document["results"]
        if e["expectation_config"]["type"] == "expect_column_mean_to_be_between"
    }
    assert means == {"crm/order_lines/good.csv": (True, 1.0), "crm/order_lines/huge.csv": (False, 100000.0)}
    landing.assert_nothing_lost()


def test_a_small_file_is_not_refused_for_its_share_of_bad_rows(landing):
    """A daily increment of one record that happens to be bad is quarantined, not a stopped run."""
    tiny = "crm/order_lines/2026-01-30.csv"
    landing.write(tiny, ORDER_HEADER + "O1,1,A1,2025-06-01,one,10.00,EUR\n")
    large = "crm/order_lines/full.csv"
    landing.write(
        large, ORDER_HEADER + good_orders(*(f"P{i}" for i in range(9))) + "".join(f"Q{i},1,A1,2025-06-01,x,10.00,EUR\n" for i in range(11))
    )

    failure = landing.ingest()

    assert landing.batch(tiny) | {"message": None, "encoding": None, "extra_columns": None} == {
        "status": "loaded",
        "rows_read": 1,
        "rows_loaded": 0,
        "rows_quarantined": 1,
        "message": None,
        "encoding": None,
        "extra_columns": None,
    }
    assert "2026-01-30.csv" not in str(failure)
    assert_refused(
        failure,
        large,
        "11 of 20 rows (55%) failed the checks",
        "50% max_quarantine_share",
        "files of 20 rows or more",
        "line 11",
        "[max_quarantine_share]",
    )
    landing.assert_nothing_lost()


def test_the_minimum_rows_for_the_share_rule_comes_from_the_configuration(landing, tmp_path):
    config = tmp_path / "needseg.yaml"
    config.write_text("fx_rates: {EUR: 1.0}\ningest:\n  max_quarantine_share: 0.5\n  min_rows_for_quarantine_share: 1\n")
    landing.settings = landing.settings.with_overrides(config_path=config)
    landing.write("crm/order_lines/2026-01-30.csv", ORDER_HEADER + "O1,1,A1,2025-06-01,one,10.00,EUR\n")
    assert_refused(landing.ingest(), "crm/order_lines/2026-01-30.csv", "1 of 1 rows (100%)", "files of 1 rows or more")


def test_a_dry_run_keeps_every_row_level_problem_with_file_line_column_and_value(landing):
    import json

    landing.mapping("survey.yaml", "source: survey\ntables:\n  survey_responses:\n    scale: {min: 1, max: 7, items: [price, quality]}\n")
    survey = "survey/survey_responses/wave.csv"
    landing.write(
        survey,
        SURVEY_HEADER
        + "R1,A1,2025-06-01,7,1,4,9\nR2,A1,2025-06-01,9,4,4,9\nR3,A1,31.12.2025,4,4,4,9\nR4,A1,2025-06-01,4,4\nR5,A1,2025-06-0",
    )
    many = "crm/order_lines/many.csv"
    landing.write(
        many,
        ORDER_HEADER + good_orders(*(f"O{i}" for i in range(3000))) + "".join(f"X{i},1,A1,2025-06-01,n/a,10.00,EUR\n" for i in range(2500)),
    )

    report = landing.ingest(dry_run=True)

    assert not isinstance(report, IngestIncomplete), report
    groups = {f.file: {(g["column"], g["reason"]): g for g in f.problems} for f in report.files}
    found = groups[survey]
    assert [(x["line"], x["value"]) for x in found[("price", "out of range")]["lines"]] == [(3, "9")]
    assert found[("price", "out of range")]["expected"] == "a value from 1 to 7"
    assert [(x["line"], x["value"]) for x in found[("submitted_at", "wrong type")]["lines"]] == [(4, "31.12.2025")]
    assert found[(None, "expected 7 fields, found 5")]["lines"][0]["line"] == 5
    assert found[(None, "truncated last line")]["lines"][0]["line"] == 6
    summarised = groups[many][("quantity", "wrong type")]
    assert (
        summarised["count"] == 2500
        and [x["line"] for x in summarised["lines"][:3]] == [3002, 3003, 3004]
        and len(summarised["lines"]) == 20
    )
    # every one of them kept with the run (a dry run has nothing in quarantine)
    with open(report.problems_file, encoding="utf-8") as f:
        kept = list(csv.DictReader(f))
    assert len(kept) == 2500 + 4
    assert {"file": survey, "table": "survey_responses", "line": "4", "column": "submitted_at", "value": "31.12.2025"}.items() <= kept[
        -2
    ].items() or any(k["file"] == survey and k["line"] == "4" and k["column"] == "submitted_at" for k in kept)
    # and counted under the expectation each one breaks in the kept validation result
    document = json.loads((landing.settings.quality_dir / report.run_id / "survey_responses.json").read_text())
    entries = {
        (
            e["expectation_config"]["type"],
            e["expectation_config"]["kwargs"].get("column"),
            e["expectation_config"]["kwargs"].get("max_value"),
        ): e
        for e in document["results"]
    }
    submitted = entries[("expect_column_values_to_be_of_type", "submitted_at", None)]
    assert not submitted["success"] and submitted["result"]["needseg_unexpected_rows"] == [
        {"file": survey, "line": 4, "value": "31.12.2025"}
    ]
    declared = entries[("expect_column_values_to_be_between", "price", 7)]
    assert not declared["success"] and declared["result"]["needseg_unexpected_rows"] == [{"file": survey, "line": 3, "value": "9"}]
    assert entries[("expect_column_values_to_be_between", "quality", 7)]["success"]  # declared, and kept
    readable = entries[("needseg_rows_are_readable", None, None)]
    assert [r["line"] for r in readable["result"]["needseg_unexpected_rows"]] == [5, 6]
    assert landing.query("select count(*) from meta.quarantine")[0][0] == 0


# --- real exports -------------------------------------------------------------------------------


def test_real_crlf_csv_without_final_newline_is_not_truncated():
    from tests.conftest import shared_data

    path = shared_data("uci_wholesale_customers", "Wholesale customers data.csv")
    raw = read_csv(path, ReadOptions())
    assert len(raw.frame) == 440 and raw.bad_rows == []
    assert raw.frame["_line"].tolist()[:2] == [2, 3] and raw.frame["_line"].iloc[-1] == 441
    assert list(raw.frame.columns[:3]) == ["Channel", "Region", "Fresh"]


def test_real_online_retail_export_maps_onto_orders_and_accounts(landing):
    """A real wholesaler's order lines (UCI Online Retail), and its accounts derived from them."""
    import pyarrow.parquet as pq

    from tests.conftest import shared_data

    source = shared_data("uci_online_retail", "online_retail.parquet")
    (landing.settings.landing_dir / "crm/accounts/accounts.csv").unlink()  # dated after 2011
    path = landing.settings.landing_dir / "retail/order_lines/online_retail_sample.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pq.read_table(source).slice(0, 4000), path)
    landing.mapping(
        "retail.yaml",
        """
source: retail
tables:
  order_lines:
    columns:
      order_id: InvoiceNo
      line_number: "row_number() over (partition by InvoiceNo order by _line)"
      account_id: CustomerID
      order_date: InvoiceDate
      product_id: StockCode
      quantity: Quantity
      net_price: UnitPrice
      currency: "'GBP'"
  accounts:
    read_from: order_lines
    aggregate:
      by: [CustomerID]
      columns:
        account_id: CustomerID
        account_name: "'Customer ' || CustomerID"
        status: "'customer'"
        country: "case any_value(Country) when 'United Kingdom' then 'GB' when 'France' then 'FR' when 'Germany' then 'DE' else null end"
        customer_since: "min(InvoiceDate)"
        updated_at: "max(InvoiceDate)"
""",
    )
    report = landing.ingest(as_of=dt.date(2011, 12, 31), known_currencies=["GBP"])
    accounts = next(f for f in report.files if f.table == "accounts" and f.source == "retail")
    orders = next(f for f in report.files if f.table == "order_lines" and f.source == "retail")
    assert accounts.rows_quarantined == 0 and accounts.rows_loaded > 50
    assert orders.rows_read == 4000 and orders.rows_loaded + orders.rows_quarantined == 4000
    # rows without a customer are quarantined as such, not lost
    reasons = landing.query("select distinct split_part(reason, ':', 1) from meta.quarantine where file like 'retail/%'")
    assert ("missing required value",) in reasons
    ids = landing.query("select account_id from raw.accounts where _source = 'retail' limit 3")
    assert all(i[0].isdigit() for i in ids)  # 17850, not 17850.0
    landing.assert_nothing_lost()


def test_files_handled_in_groups_give_the_same_load_and_validation_result(tmp_path, monkeypatch):
    """Memory stays bounded because a table's files are read, checked and written a group at
    a time (`ingest.group_megabytes`). The groups must not change anything a user sees: the
    same rows in raw and quarantine, and one validation result per table with the same
    counts and failing rows, file by file."""
    import json

    from pipelines.ingest import loader

    def deliver(root: Path) -> Landing:
        land = Landing(root)
        land.write("crm/accounts/accounts.csv", ACCOUNTS)
        land.write("crm/order_lines/a.csv", ORDER_HEADER + good_orders("O1", "O2") + "O3,1,A9,2025-06-01,1,10.00,EUR\n")
        land.write("crm/order_lines/b.csv", ORDER_HEADER + good_orders("O4") + "O5,1,A1,2025-06-01,-5,10.00,EUR\n")
        land.write("crm/order_lines/c.csv", ORDER_HEADER + "O6,1,A1,2025-06-01,x,10.00,EUR\nO7,1,A1,2025-06-01,1,10.00,XXX\n")
        return land

    def outcome(land: Landing, failure) -> tuple:
        report = getattr(failure, "report", failure)
        document = json.loads((land.settings.quality_dir / report.run_id / "order_lines.json").read_text())
        # what the data docs show of each expectation
        shown = ("element_count", "missing_count", "unexpected_count", "unexpected_percent", "observed_value", "needseg_unexpected_rows")
        entries = sorted(
            json.dumps(
                [
                    e["expectation_config"]["type"],
                    e["expectation_config"]["kwargs"].get("column"),
                    e["success"],
                    {k: v for k, v in e["result"].items() if k in shown},
                    sorted(map(str, e["result"].get("partial_unexpected_list") or [])),
                ],
                sort_keys=True,
            )
            for e in document["results"]
        )
        return (
            land.query("select _file, _line, order_id from raw.order_lines order by all"),
            land.query("select file, line, column_name, value, reason from meta.quarantine order by all"),
            entries,
            document["statistics"],
        )

    together = deliver(tmp_path / "together")
    expected = outcome(together, together.ingest())
    monkeypatch.setattr(loader, "_groups", lambda items, limit: [[item] for item in items])
    one_by_one = deliver(tmp_path / "one_by_one")
    assert outcome(one_by_one, one_by_one.ingest()) == expected
    assert len(expected[1]) == 3  # unknown account, out of range, wrong type (XXX has no rate: also)
    one_by_one.assert_nothing_lost()
