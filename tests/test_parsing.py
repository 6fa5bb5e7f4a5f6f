"""Values are read exactly as declared, or quarantined saying why: never guessed at.

Dates, numbers, quoting and encodings are where a lenient reader silently loads something
else than the file says (`1/2/26` as the year 1, `inf` as a quantity, `"5" Screws AB` as
`5 Screws AB`, a CP1252 line turning its UTF-8 neighbours into "Ã…ngström"). Each test
writes real landing files, runs the loader on a throwaway warehouse and checks what reached
raw, what went to quarantine with which reason, and that every row is accounted for.
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata

import pandas as pd
import pytest

from pipelines.ingest.http_source import _timestamp as http_timestamp
from tests.test_bad_input import ACCOUNTS, ORDER_HEADER, Landing, assert_refused, good_orders

ISO_ONLY = "is not a date in one of the formats ISO 8601"


@pytest.fixture
def landing(tmp_path) -> Landing:
    land = Landing(tmp_path)
    land.write("crm/accounts/accounts.csv", ACCOUNTS)
    return land


def reasons(landing: Landing, file: str) -> dict[int, tuple[str | None, str | None, str]]:
    return {line: (column, value, reason) for _, line, column, value, reason in landing.quarantine(file)}


# --- dates ------------------------------------------------------------------------------------


def test_only_iso_8601_dates_are_read_when_the_mapping_declares_no_format(landing):
    file = "crm/order_lines/dates.csv"
    landing.write(
        file,
        ORDER_HEADER
        + "O1,1,A1,2025-06-01,1,10,EUR\n"
        + "O2,1,A1,2025-06-01T14:05:00,1,10,EUR\n"
        + "O3,1,A1,2025-06-01 14:05:07.25,1,10,EUR\n"
        + "O4,1,A1,2025-06-01 14:05,1,10,EUR\n"
        + "O5,1,A1,1/2/26,1,10,EUR\n"  # was read as 0001-02-26
        + "O6,1,A1,26-08-31,1,10,EUR\n"  # was read as 0026-08-31
        + "O7,1,A1,12/31/2025,1,10,EUR\n"
        + "O8,1,A1,2025-09-01 10:00:00 PM,1,10,EUR\n"  # was read as 10:00, twelve hours off
        + "O9,1,A1,epoch,1,10,EUR\n"  # was read as 1900-01-01
        + "O10,1,A1,0026-08-31,1,10,EUR\n"  # ISO, but no real order is from the year 26
        + "O11,1,A1,2025-02-30,1,10,EUR\n",
    )
    landing.ingest(max_quarantine_share=0.7)
    assert landing.raw("order_lines", "order_id, order_date", file) == [
        ("O1", dt.date(2025, 6, 1)),
        ("O2", dt.date(2025, 6, 1)),
        ("O3", dt.date(2025, 6, 1)),
        ("O4", dt.date(2025, 6, 1)),
    ]
    found = reasons(landing, file)
    assert sorted(found) == [6, 7, 8, 9, 10, 11, 12]
    for column, value, reason in found.values():
        assert column == "order_date" and reason.startswith(f"wrong type: {value!r} {ISO_ONLY}"), reason
        assert "in the years 1900-2100" in reason
    assert found[11][2].endswith("(it reads as the year 26)")
    landing.assert_nothing_lost()


def test_declared_formats_are_read_first_and_iso_after_them(landing):
    landing.mapping("crm.yaml", 'source: crm\ndefaults:\n  date_formats: ["%d.%m.%Y %H:%M", "%d.%m.%Y"]\n')
    file = "crm/order_lines/nordic.csv"
    landing.write(
        file,
        ORDER_HEADER
        + "O1,1,A1,31.12.2025,1,10,EUR\n"
        + "O2,1,A1,31.12.2025 08:15,1,10,EUR\n"
        + "O3,1,A1,2025-12-30,1,10,EUR\n"
        + "O4,1,A1,01.02.0026,1,10,EUR\n"  # the declared format reads it, as the year 26
        + "O5,1,A1,12/31/2025,1,10,EUR\n"
        + "O6,1,A1,31.12.2025,1,10,EUR\n",
    )
    landing.ingest()
    assert landing.raw("order_lines", "order_id, order_date", file) == [
        ("O1", dt.date(2025, 12, 31)),
        ("O2", dt.date(2025, 12, 31)),
        ("O3", dt.date(2025, 12, 30)),
        ("O6", dt.date(2025, 12, 31)),
    ]
    found = reasons(landing, file)
    expected = "is not a date in one of the formats %d.%m.%Y %H:%M, %d.%m.%Y, ISO 8601"
    assert found[5][2].startswith(f"wrong type: '01.02.0026' {expected}") and found[5][2].endswith("(it reads as the year 26)")
    assert found[6][2].startswith(f"wrong type: '12/31/2025' {expected}")
    landing.assert_nothing_lost()


def test_offsets_are_converted_to_utc_like_the_http_sources_watermarks(landing):
    file = "crm/accounts/zones.csv"
    stamps = {
        "Z1": "2026-01-30T23:30:00-05:00",  # 2026-01-31 04:30 UTC: the as-of day, loads
        "Z2": "2026-01-31T23:30:00-05:00",  # 2026-02-01 04:30 UTC: after the as-of day
        "Z3": "2026-01-31T01:30:00+02:00",  # 2026-01-30 23:30 UTC
        "Z4": "2026-01-15T10:00:00Z",
        "Z5": "2026-01-15 10:00:00.5+0130",
        "Z6": "2026-01-15T10:00+01",
    }
    landing.write(file, "account_id,account_name,status,updated_at\n" + "".join(f"{k},Zone {k},customer,{v}\n" for k, v in stamps.items()))
    landing.ingest(max_quarantine_share=0.6)
    loaded = dict(landing.raw("accounts", "account_id, updated_at", file))
    assert loaded == {
        "Z1": dt.datetime(2026, 1, 31, 4, 30),
        "Z3": dt.datetime(2026, 1, 30, 23, 30),
        "Z4": dt.datetime(2026, 1, 15, 10, 0),
        "Z5": dt.datetime(2026, 1, 15, 8, 30, 0, 500000),
        "Z6": dt.datetime(2026, 1, 15, 9, 0),
    }
    # the same instant the HTTP source's watermark code gives for the same text
    assert loaded == {account: http_timestamp(stamps[account]) for account in loaded}
    assert landing.quarantine(file) == [(file, 3, "updated_at", stamps["Z2"], f"dated in the future: updated_at '{stamps['Z2']}'")]
    landing.assert_nothing_lost()


# --- numbers ---------------------------------------------------------------------------------


def test_numbers_are_digits_with_the_declared_separators_and_nothing_else(landing):
    file = "crm/order_lines/numbers.csv"
    quantities = {
        "O1": ("1234.5", 1234.5),
        "O2": ('"1 234.5"', 1234.5),  # spaces group thousands in any locale
        "O3": ("+5", 5.0),
        "O4": ("\u22123", -3.0),  # a typographic minus
        "O5": (".5", 0.5),
        "O6": ("-2", -2.0),
        "O7": ("\u00a01\u00a0000\u00a0", 1000.0),  # no-break spaces, as Excel writes them
        "O8": ("1 000 000", 1000000.0),
        "O9": ("inf", None),
        "O10": ("nan", None),
        "O11": ("1_000", None),
        "O12": ("1e3", None),  # Excel's display of a rounded number: refused, not read
        "O13": ("12 34", None),  # not a group of three: two numbers in one cell?
        "O14": ('"1,5"', None),  # the mapping declares '.' as the decimal separator
        "O15": ("-Infinity", None),
        "O16": ("5.", None),
    }
    landing.write(file, ORDER_HEADER + "".join(f"{k},1,A1,2025-06-01,{text},10,EUR\n" for k, (text, _) in quantities.items()))
    landing.ingest(max_quarantine_share=0.6)
    assert landing.raw("order_lines", "order_id, quantity", file) == [(k, v) for k, (_, v) in quantities.items() if v is not None]
    found = reasons(landing, file)
    assert sorted(found) == list(range(10, 18))
    for column, _value, reason in found.values():
        assert (
            column == "quantity"
            and "is not a number with decimal separator '.', e.g. -1234.5 or -1 234.5 (thousands in groups of 3 digits)" in reason
        )
    landing.assert_nothing_lost()


def test_nan_in_an_optional_score_is_a_wrong_type_not_an_empty_answer(landing):
    file = "crm/survey_responses/wave.csv"
    landing.write(
        file,
        "response_id,account_id,submitted_at,price,satisfaction\n"
        "R1,A1,2025-06-01,nan,3\nR2,A1,2025-06-01,3,3\nR3,A1,2025-06-01,,3\nR4,A1,2025-06-01,4,3\n",
    )
    landing.ingest()
    assert landing.raw("survey_responses", "response_id, price", file) == [("R2", 3.0), ("R3", None), ("R4", 4.0)]
    assert [(r[1], r[2], r[4].split(":")[0]) for r in landing.quarantine(file)] == [(2, "price", "wrong type")]


@pytest.mark.parametrize(
    ("thousands", "expected"),
    [
        # decimal comma, no thousands separator declared: "1.234" is not a number
        (None, {"O1": 1234.5, "O2": 10.5, "O3": None, "O4": None, "O5": None, "O6": 1234.0}),
        # decimal comma, thousands ".": German style, in groups of three only
        (".", {"O1": 1234.5, "O2": 10.5, "O3": 1234.0, "O4": 1234567.25, "O5": None, "O6": 1234.0}),
    ],
)
def test_decimal_comma_reads_points_only_as_declared_thousands(landing, thousands, expected):
    declared = f'\n  thousands: "{thousands}"' if thousands else ""
    landing.mapping("eu.yaml", f'source: eu\ndefaults:\n  delimiter: ";"\n  decimal: ","{declared}\n')
    landing.write("eu/accounts/accounts.csv", ACCOUNTS.replace(",", ";"))
    file = "eu/order_lines/orders.csv"
    texts = {"O1": "1 234,5", "O2": "10,5", "O3": "1.234", "O4": "1.234.567,25", "O5": "12.34", "O6": "1234"}
    landing.write(file, ORDER_HEADER.replace(",", ";") + "".join(f"{k};1;A1;2025-06-01;{t};10;EUR\n" for k, t in texts.items()))
    landing.ingest(max_quarantine_share=0.6)
    assert landing.raw("order_lines", "order_id, quantity", file) == [(k, v) for k, v in expected.items() if v is not None]
    refused = {k for k, v in expected.items() if v is None}
    assert {r[3] for r in landing.quarantine(file)} == {texts[k] for k in refused}
    landing.assert_nothing_lost()


def test_native_numbers_are_read_exactly_without_exponents(landing):
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = "crm/order_lines/orders.parquet"
    path = landing.settings.landing_dir / file
    path.parent.mkdir(parents=True)
    columns = {
        "order_id": ["O1", "O2", "O3"],
        "line_number": [1, 1, 1],
        "account_id": ["A1", "A1", "A1"],
        "order_date": ["2025-06-01"] * 3,
        # Arrow writes these as 1e-05 and 1.234567890123e+12; NaN is no number (a null would be)
        "quantity": [0.00001, 1234567890123.0, float("nan")],
        "net_price": [10.0, 10.0, 10.0],
        "currency": ["EUR"] * 3,
    }
    pq.write_table(pa.table(columns), path)
    jsonl = "crm/order_lines/orders.jsonl"
    landing.write(
        jsonl,
        "".join(
            json.dumps(
                {
                    "order_id": f"J{i}",
                    "line_number": 1,
                    "account_id": "A1",
                    "order_date": "2025-06-01",
                    "quantity": q,
                    "net_price": 10,
                    "currency": "EUR",
                }
            )
            + "\n"
            for i, q in enumerate([1e-05, 1e16, 2.5])
        ),
    )
    landing.ingest(max_quarantine_share=0.6)
    assert landing.raw("order_lines", "order_id, quantity", file) == [("O1", 0.00001), ("O2", 1234567890123.0)]
    assert [(r[1], r[2], r[4].split(":")[0]) for r in landing.quarantine(file)] == [(3, "quantity", "wrong type")]
    assert landing.raw("order_lines", "order_id, quantity", jsonl) == [("J0", 0.00001), ("J1", 1e16), ("J2", 2.5)]
    landing.assert_nothing_lost()


# --- quoting -----------------------------------------------------------------------------------


def test_a_stray_quote_quarantines_its_line_instead_of_altering_the_value(landing):
    file = "crm/accounts/quotes.csv"
    names = [f"Name {i}" for i in range(1, 13)]
    names[2] = '"5" Screws AB'  # a quoted "5", then more text: malformed
    names[3] = '5" Screws AB'  # a quote inside an unquoted value: literal
    names[4] = '"Smith, Jones & Co" '  # only a blank after the closing quote
    names[5] = '"He said ""hi"""'  # doubled quotes inside a quoted value
    landing.write(
        file,
        "account_id,account_name,status,updated_at\n" + "".join(f"Q{i},{n},customer,2025-01-01\n" for i, n in enumerate(names, start=1)),
    )
    landing.ingest()
    loaded = dict(landing.raw("accounts", "account_id, account_name", file))
    assert "Q3" not in loaded and loaded["Q4"] == '5" Screws AB' and loaded["Q5"] == "Smith, Jones & Co" and loaded["Q6"] == 'He said "hi"'
    assert len(loaded) == 11
    ((_, line, column, value, reason),) = landing.quarantine(file)
    assert (line, column, value) == (4, "account_name", 'Q3,"5" Screws AB,customer,2025-01-01')
    assert reason.startswith("stray quote: \"5\" is closed, then ' Screws AB' follows before the next ','")
    assert '"""5"" Screws AB"' in reason  # how the value should have been written
    landing.assert_nothing_lost()


def test_a_stray_quote_in_the_header_refuses_the_file_and_keeps_its_rows(landing):
    bad = "crm/order_lines/header.csv"
    landing.write(bad, 'order_id,line_number,"account"_id,order_date,quantity,net_price,currency\n' + good_orders("O1", "O2"))
    failure = landing.ingest()
    assert_refused(failure, bad, "line 1: the header line cannot be split into column names: stray quote", "[header]")
    assert [r[1] for r in landing.quarantine(bad)] == [2, 3]
    landing.assert_nothing_lost()


# --- encodings ---------------------------------------------------------------------------------


def test_a_file_mixing_utf8_and_cp1252_is_refused_not_garbled(landing):
    bad = "crm/accounts/mixed.csv"
    utf8 = "".join(f"M{i},Ångström Verktyg {i} AB,customer,2025-01-01\n" for i in range(9)).encode("utf-8")
    landing.write(bad, b"account_id,account_name,status,updated_at\n" + utf8 + "M9,Café Lyon,customer,2025-01-01\n".encode("cp1252"))
    failure = landing.ingest()
    assert_refused(
        failure,
        bad,
        "mixed encodings: line 11, character 7: byte(s) b'\\xe9 Ly' are not valid UTF-8",
        "line 2 is UTF-8",
        "'encoding: cp1252'",
        "[file_encoding]",
    )
    assert landing.raw("accounts", "account_id", bad) == []
    assert landing.query("select count(*) from raw.accounts where account_name like '%Ã%'")[0][0] == 0
    rows = landing.quarantine(bad)
    assert [r[1] for r in rows] == list(range(2, 12)) and all(r[4].startswith("batch rejected: mixed encodings") for r in rows)
    landing.assert_nothing_lost()


def test_a_file_declared_cp1252_that_holds_utf8_lines_is_refused(landing):
    landing.mapping("crm.yaml", "source: crm\ndefaults:\n  encoding: cp1252\n")
    bad = "crm/accounts/mixed.csv"
    landing.write(
        bad,
        b"account_id,account_name,status,updated_at\n"
        + "M1,Café Lyon,customer,2025-01-01\n".encode("cp1252")
        + "M2,Ångström Verktyg AB,customer,2025-01-01\n".encode(),
    )
    failure = landing.ingest()
    assert_refused(
        failure,
        bad,
        "wrong encoding: the mapping declares cp1252, but line 3 holds UTF-8 text",
        "'M2,Ã…ngstrÃ¶m Verktyg AB",
        "[file_encoding]",
    )
    landing.assert_nothing_lost()


NORDIC_NAMES = ["Ångström Verktyg AB", "Kalmar Mekaniska Næstved AB", "Øresund Ståhl ApS", "Café Élan Öst"]


@pytest.mark.parametrize(
    ("codec", "bom", "detected"),
    [("utf-8", b"", "utf-8"), ("utf-8", b"\xef\xbb\xbf", "utf-8-sig"), ("cp1252", b"", "cp1252"), ("latin-1", b"", "cp1252")],
)
def test_files_in_one_encoding_are_detected_and_keep_their_letters(landing, codec, bom, detected):
    file = "crm/accounts/nordic.csv"
    text = "account_id,account_name,status,updated_at\n" + "".join(f"N{i},{n},customer,2025-01-01\n" for i, n in enumerate(NORDIC_NAMES))
    landing.write(file, bom + text.encode(codec))
    landing.ingest()
    assert [r[0] for r in landing.raw("accounts", "account_name", file)] == NORDIC_NAMES
    assert landing.batch(file)["encoding"] == detected


# --- the fast CSV reader ------------------------------------------------------------------------

# Files a plain export writes (DuckDB splits them) and files only the Python reader can
# explain; both readers must give the same rows, line numbers and problems.
CSV_SHAPES = {
    "plain": ("a,b,c\n1,2,3\n4,5,6\n", True),
    "no final newline": ("a,b,c\n1,2,3\n4,5,6", True),
    "CRLF, a blank cell": ("a;b;c\r\n1;2;3\r\n4; ;6\r\n", True),
    "blank and unicode cells": ("a,b,c\n1,,3\n ,\u00a0,x\n  spaced  ,é,ü\n", True),
    "Excel's sep= line": ("sep=;\na;b\n1;2\n", True),
    "tabs": ("a\tb\n1\t2\n", True),
    "byte-order mark": ("\ufeffa,b\n1,2\n", True),
    "a quoted field": ('a,b\n"1,5",2\n', False),
    "a short row": ("a,b\n1\n2,3\n", False),
    "a blank line": ("a,b\n1,2\n\n3,4\n", False),
    "bare delimiters": ("a,b\n1,2\n,\n", False),
    "a trailing delimiter": ("a,b\n1,2,\n3,4,\n", False),
    "a row too long": ("a,b\n1,2,x\n3,4\n", False),
    "a row with empty fields past the header": ("a,b\n1,2,,\n3,4\n", False),
    "old Mac line ends": ("a,b\r1,2\r3,4\r", False),
    "mixed line ends": ("a,b\n1,2\r\n3,4\n", False),
    "one column with a blank row": ("a\n1\n \n2\n", False),
    "cells at the edges of printable ASCII": ("a,b,c\n!,~,\x7f\n\x1f,\u2003x, ~\n\x7fx,\u3000,!\n", True),
}


@pytest.mark.parametrize("shape", CSV_SHAPES)
def test_duckdbs_csv_split_gives_exactly_what_the_python_reader_gives(shape, tmp_path, monkeypatch):
    """A plain CSV is split by DuckDB (tens of times faster); anything else falls back to
    Python's reader, which explains problems line by line. The rows, their line numbers and
    the problems must be the same either way - and the fast path must really be taken."""
    from pipelines.ingest import readers
    from pipelines.ingest.mapping import ReadOptions

    text, plain = CSV_SHAPES[shape]
    path = tmp_path / "export.csv"
    path.write_bytes(text.encode())
    taken = []
    split = readers._plain_csv_rows
    monkeypatch.setattr(readers, "_plain_csv_rows", lambda *a: taken.append(split(*a)) or taken[-1])
    fast = readers.read_csv(path, ReadOptions())
    monkeypatch.setattr(readers, "_plain_csv_rows", lambda *a: None)
    python = readers.read_csv(path, ReadOptions())

    assert (taken[0] is not None) == plain
    text = [c for c in fast.frame.columns if c != "_line"]
    as_read = fast.frame.astype(dict.fromkeys(text, object))  # DuckDB's text is Arrow-backed
    as_read[text] = as_read[text].where(fast.frame[text].notna(), None)
    assert as_read.equals(python.frame), (fast.frame, python.frame)
    assert [vars(b) for b in fast.bad_rows] == [vars(b) for b in python.bad_rows]
    assert fast.frame["_line"].tolist() == python.frame["_line"].tolist()


# Text around which trim() and the blank-cell check behave differently: every space separator
# (Unicode Zs, what DuckDB's trim() removes), the ASCII controls and the ends of printable
# ASCII, alone, leading, trailing, on both sides and inside a text.
_EDGE_CHARACTERS = sorted(
    {chr(c) for c in range(1, 0x3001) if unicodedata.category(chr(c)) == "Zs" or chr(c).isspace()}
    | {chr(c) for c in [*range(1, 32), 127, 128, 0x85, 0xA0]}
    | set("!~a é")
)
_EDGE_VALUES = [""] + [v for ch in _EDGE_CHARACTERS for v in (ch, ch + "a", "a" + ch, ch + "a" + ch, "a" + ch + "b", ch * 2)]


def test_the_typing_querys_conditional_trim_is_duckdbs_trim():
    """The typing query calls trim() only where it can change the text (`parse._trimmed`):
    on every edge value its result is `nullif(trim(x), '')`."""
    from pipelines.ingest.parse import _trimmed
    from pipelines.warehouse import in_memory

    with in_memory() as con:
        con.register("edge", pd.DataFrame({"x": pd.array([*_EDGE_VALUES, None], dtype=object)}))
        differ = con.execute(f"select x from edge where {_trimmed('x')} is distinct from nullif(trim(x), '')").fetchall()
        trimmed = con.execute(f"select count(*) from edge where {_trimmed('x')} is distinct from x").fetchone()[0]
    assert differ == []
    assert trimmed > 50  # the edge values do exercise trim()


def test_the_fast_readers_blank_cell_check_is_the_pattern_alone():
    """The CSV split matches the blank-cell pattern only on cells that do not start with
    printable ASCII (`readers._cell_sql`): on every edge value the same as the pattern."""
    from pipelines.ingest import readers
    from pipelines.warehouse import in_memory

    pattern = f"case when regexp_full_match(x, {readers._sql_text(readers._BLANK_CELL)}) then null else x end"
    with in_memory() as con:
        con.register("edge", pd.DataFrame({"x": pd.array([*_EDGE_VALUES, None], dtype=object)}))
        differ = con.execute(f"select x from edge where {readers._cell_sql('x')} is distinct from {pattern}").fetchall()
        blank = con.execute(f"select count(*) from edge where x is not null and {pattern} is null").fetchone()[0]
    assert differ == []
    assert blank > 20


# Headers read from the first characters of a file (`readers._header_of`): a quoted name
# across lines, Excel's sep= line with CRLF, a stray quote, a header below a title line.
HEADER_SHAPES = {
    **{shape: (text, 1) for shape, (text, _) in CSV_SHAPES.items()},
    "a quoted name across lines": ('id,"long\nname",x\r\n1,2,3\r\n4,5,6\r\n', 1),
    "sep= and CRLF": ("sep=;\r\na;b\r\n1;2\r\n", 1),
    "a stray quote in the header": ('a,"b"c,d\n1,2,3\n', 1),
    "only blanks after a quoted name": ('a,"b" ,c\n1,2,3\n', 1),
    "a title line above the header": ("Export of 2026-10\na,b\n1,2\n3,4\n", 2),
    "a header and nothing else": ("a,b,c\n", 1),
}


@pytest.mark.parametrize("shape", HEADER_SHAPES)
def test_a_header_read_from_the_files_first_characters_is_the_header_read_from_all_of_it(shape, tmp_path, monkeypatch):
    """Cut the text the header's reader gets first at every position: the rows, problems,
    delimiter and refusals are those of a reader given the whole text."""
    from pipelines.ingest import readers
    from pipelines.ingest.mapping import ReadOptions

    text, header_row = HEADER_SHAPES[shape]
    path = tmp_path / "export.csv"
    path.write_bytes(text.encode())
    options = ReadOptions(header_row=header_row)

    def read(limit: int):
        monkeypatch.setattr(readers, "_HEAD_CHARACTERS", limit)
        try:
            raw = readers.read_csv(path, options)
        except readers.BatchRejected as exc:
            found = None if exc.raw is None else (exc.raw.frame.astype(object).to_dict("list"), [vars(b) for b in exc.raw.bad_rows])
            return ("refused", str(exc), exc.expectation, found)
        frame = raw.frame.astype(object).where(raw.frame.notna(), None)
        return (frame.to_dict("list"), [vars(b) for b in raw.bad_rows], raw.delimiter, raw.duplicate_columns, raw.encoding)

    whole = read(10**12)
    for limit in range(1, len(text) + 1):
        assert read(limit) == whole, limit


def test_a_long_file_is_split_by_duckdb_after_a_header_read_from_its_start(tmp_path, monkeypatch):
    """A file longer than the header's first read: the same rows as the Python reader's, by
    DuckDB; and a bad line far past the start still reaches the Python reader whole."""
    from pipelines.ingest import readers
    from pipelines.ingest.mapping import ReadOptions

    rows = "".join(f"O{i},{i % 7},{'  ' if i % 11 == 0 else 'x'}\r\n" for i in range(20_000))
    assert len(rows) > readers._HEAD_CHARACTERS
    for name, text, plain in (
        ("plain.csv", "sep=,\r\norder,line,note\r\n" + rows, True),
        ("bad.csv", "order,line,note\r\n" + rows + 'O,"1"2,x\r\n' + rows, False),
    ):
        path = tmp_path / name
        path.write_bytes(text.encode())
        taken = []
        split = readers._plain_csv_rows
        monkeypatch.setattr(readers, "_plain_csv_rows", lambda *a, split=split, taken=taken: taken.append(split(*a)) or taken[-1])
        fast = readers.read_csv(path, ReadOptions())
        monkeypatch.setattr(readers, "_plain_csv_rows", lambda *a: None)
        monkeypatch.setattr(readers, "_HEAD_CHARACTERS", 10**12)
        python = readers.read_csv(path, ReadOptions())
        monkeypatch.undo()
        assert (taken[0] is not None) == plain
        columns = [c for c in fast.frame.columns if c != "_line"]
        as_read = fast.frame.astype(dict.fromkeys(columns, object))
        as_read[columns] = as_read[columns].where(fast.frame[columns].notna(), None)
        assert as_read.equals(python.frame)
        assert [vars(b) for b in fast.bad_rows] == [vars(b) for b in python.bad_rows]
        assert len(python.frame) == (20_000 if plain else 40_000)


def test_a_large_file_is_typed_as_a_small_one(tmp_path, monkeypatch):
    """Past `parse.CONDITIONAL_TRIM_ROWS` rows the typing query trims conditionally: the same
    typed rows, texts and problems as the plain trim, on cells with every edge character."""
    from pipelines.contract import TABLES
    from pipelines.ingest import parse, readers
    from pipelines.ingest.mapping import ReadOptions, TableMapping

    edges = [v.replace(",", ";").replace("\n", " ").replace("\r", " ") for v in _EDGE_VALUES]
    lines = [
        f"O{i},{i % 5 + 1}{edges[i % len(edges)] if i % 3 == 0 else ''},A{i % 9},2026-0{i % 9 + 1}-1{i % 10},P{i},cat {edges[(i * 7) % len(edges)]},"
        f"{i % 4}{' ' if i % 2 else ''},{i}.5,{i}.25,{edges[i % len(edges)] if i % 13 == 0 else 'sek'},web"
        for i in range(1_200)
    ]
    path = tmp_path / "orders.csv"
    header = "order_id,line_number,account_id,order_date,product_id,product_category,quantity,list_price,net_price,currency,channel"
    path.write_text(header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    raw = readers.read_csv(path, ReadOptions())
    mapping = TableMapping(source="crm", table="order_lines")

    def typed(limit: int):
        monkeypatch.setattr(parse, "CONDITIONAL_TRIM_ROWS", limit)
        batch = parse.parse(raw, mapping, TABLES["order_lines"], path)
        return batch.typed, batch.texts, [vars(p) for p in batch.problems]

    plain, conditional = typed(10**9), typed(1)
    assert plain[0].equals(conditional[0]) and plain[1].equals(conditional[1])
    assert plain[2] == conditional[2]
    assert len(plain[2]) > 100 and len(plain[0]) > 500  # bad cells quarantined, good rows typed
