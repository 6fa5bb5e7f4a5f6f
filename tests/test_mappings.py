"""Mapping files are checked whole when they are read: every typo and wrong value is named.

A mapping is the one piece of configuration a data engineer writes per source; a typo in it
(`encodng:`, `table:`, `reverse: [prize]`) must stop the run with the file, the key path and
what was expected, before any landing file is read with a half-understood mapping. These
tests write real YAML files and read them with the loader the pipeline uses; one runs
`needseg validate` as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.ingest.mapping import load_mapping_file, load_mappings
from pipelines.settings import CONFIG_DIR


def mapping_error(tmp_path: Path, text: str, name: str = "crm.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_mapping_file(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    return message


def test_unknown_keys_at_every_level_are_named_with_the_key_meant(tmp_path):
    message = mapping_error(
        tmp_path,
        """
source: crm
defaults:
  encodng: cp1252
  delimeter: ";"
  missing_value: ["Vet ej"]
table:
  accounts:
    columns: {account_id: Kundnr}
""",
    )
    # all of them at once, not one per run
    assert "2 problems in the mapping" in message
    assert "top level: unknown setting(s) table (did you mean 'tables'?)" in message
    assert (
        "defaults: unknown read setting(s) encodng (did you mean 'encoding'?), delimeter (did you mean 'delimiter'?), "
        "missing_value (did you mean 'missing_values'?)"
    ) in message

    nested = mapping_error(
        tmp_path,
        """
source: crm
encoding: cp1252
tables:
  acounts: {}
  order_lines:
    colums: {order_id: Nr}
    unpivot: {columns: [A, B], name_to: product_id, value_to: quantity, skip_emtpy: true}
    aggregate: {by: Nr, colunms: {}}
""",
    )
    assert "top level: unknown setting(s) encoding (read settings go under 'defaults:'" in nested
    assert "tables: unknown table(s) acounts (did you mean 'accounts'?)" in nested
    assert "tables.order_lines: unknown setting(s) colums (did you mean 'columns'?)" in nested
    assert "tables.order_lines.unpivot: unknown setting(s) skip_emtpy (did you mean 'skip_empty'?)" in nested
    assert "tables.order_lines.aggregate: unknown setting(s) colunms (did you mean 'columns'?)" in nested


def test_columns_and_survey_items_must_exist_in_the_contract(tmp_path):
    message = mapping_error(
        tmp_path,
        """
source: survey
tables:
  survey_responses:
    columns: {prise: Q1}
    reverse: [prize]
    scale: {min: 1, max: 7, items: [quality, account_id]}
    values: {staus: {a: b}}
  accounts:
    values: {staus: {Aktiv: customer}, status: {Aktiv: kund}, country: {Sverige: Sweden}}
""",
    )
    assert "tables.survey_responses.columns: 'prise' is not a column of survey_responses (did you mean 'price'?)" in message
    assert "tables.survey_responses.reverse: 'prize' is not a column of survey_responses (did you mean 'price'?)" in message
    assert "tables.survey_responses.scale.items: 'account_id' is not a score (a column with a scale)" in message
    assert "tables.survey_responses.values: 'staus' is not a column of survey_responses;" in message
    assert "tables.accounts.values: 'staus' is not a column of accounts (did you mean 'status'?)" in message
    # a recoding into a value the contract refuses would quarantine every row it touches
    assert (
        "tables.accounts.values.status.Aktiv: 'kund' is not a status the contract allows; expected one of customer, prospect, churned"
        in message
    )
    assert "tables.accounts.values.country.Sverige: 'Sweden' is not an ISO 3166 alpha-2 country code such as SE" in message


def test_wrong_types_say_what_was_expected_instead_of_crashing(tmp_path):
    message = mapping_error(
        tmp_path,
        """
source: crm
defaults:
  header_row: first
  date_formats: [dd.mm.yyyy, "%d.%m", "%Y-%m-%Q"]
  delimiter: ";;"
  sheet: -1
tables:
  accounts:
    files:
    values: {status: Aktiv, country: {Norge: NO}}
    columns: {account_id: }
  survey_responses:
    scale: {min: one, max: 7, items: [price]}
    unpivot: {columns: [A], name_to: x, value_to: x, skip_empty: maybe}
""",
    )
    expected = [
        "defaults.header_row: expected a whole number of at least 1, not 'first'",
        "defaults.date_formats[0]: 'dd.mm.yyyy' is not a strftime format (use codes such as %d.%m.%Y for 31.12.2025)",
        "defaults.date_formats[1]: '%d.%m' is a format without a year",
        "defaults.date_formats[2]: '%Y-%m-%Q' is not a format DuckDB's strptime reads",
        "defaults.delimiter: expected one character",
        "defaults.sheet: expected a whole number of at least 0, not -1",
        "tables.accounts.files: expected a file-name pattern such as '*.csv', not nothing (an empty value)",
        "tables.accounts.values.status: expected {<value in the file>: <contract value>}, e.g. {Aktiv: customer}, not 'Aktiv'",
        # YAML 1.1 reads an unquoted NO (Norway) as false
        "tables.accounts.values.country.Norge: expected the country value it stands for, not false (YAML reads unquoted",
        "tables.accounts.columns.account_id: expected a column of the file or an SQL expression, not nothing",
        "tables.survey_responses.scale.min: expected a number, not 'one'",
        "tables.survey_responses.unpivot: name_to and value_to are both 'x'",
        "tables.survey_responses.unpivot.skip_empty: expected true or false, not 'maybe'",
    ]
    for needle in expected:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert f"{len(expected)} problems in the mapping" in message


def test_a_single_value_where_a_list_is_natural_is_a_list_of_one(tmp_path):
    path = tmp_path / "survey.yaml"
    path.write_text(
        """
source: survey
defaults:
  date_formats: "%d.%m.%Y"
  missing_values: Vet ej
tables:
  survey_responses:
    reverse: price
    scale: {min: 1, max: 7, items: quality}
  accounts:
    read_from: order_lines
    aggregate: {by: Kund, columns: {account_id: Kund, account_name: "any_value(Namn)", status: "'customer'", updated_at: "max(Datum)"}}
"""
    )
    mapping = load_mapping_file(path)
    survey = mapping.tables["survey_responses"]
    assert survey.reverse == ("price",)  # not ('p', 'r', 'i', 'c', 'e')
    assert survey.scales[0].items == ("quality",)
    assert survey.read.date_formats == ("%d.%m.%Y",) and survey.read.missing_values == ("Vet ej",)
    assert mapping.tables["accounts"].aggregate.by == ("Kund",)


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ('defaults: {decimal: ",", thousands: ","}', "defaults.thousands"),
        ('defaults: {thousands: "."}', "defaults.thousands"),  # the default decimal is "."
        ('defaults: {decimal: ","}\ntables: {accounts: {thousands: ","}}', "tables.accounts.thousands"),
        ('defaults: {thousands: "."}\ntables: {accounts: {decimal: ","}}\n', "defaults.thousands"),  # the defaults themselves clash
    ],
)
def test_a_thousands_separator_equal_to_the_decimal_one_is_refused(tmp_path, settings, where):
    message = mapping_error(tmp_path, f"source: crm\n{settings}\n")
    assert f"{where}: the thousands separator" in message and "is also the decimal separator" in message


def test_every_example_mapping_is_valid():
    examples = sorted((CONFIG_DIR / "sources" / "examples").glob("*.yaml"))
    assert len(examples) >= 5
    for path in examples:
        assert load_mapping_file(path).source


def test_every_broken_mapping_of_a_folder_is_named_in_one_error(tmp_path):
    (tmp_path / "a.yaml").write_text("source: a\ntables: {accounts: {reverse: price}}\n")
    (tmp_path / "b.yaml").write_text("source: b\ndefaults: {encodng: cp1252}\n")
    (tmp_path / "c.yaml").write_text("source: c\ntables: {accounts: {files: 'kunder*'}}\n")
    with pytest.raises(ConfigError) as caught:
        load_mappings(tmp_path)
    message = str(caught.value)
    assert f"{tmp_path / 'a.yaml'}: tables.accounts.reverse: 'price' is not a score" not in message  # accounts has no scores
    assert f"{tmp_path / 'a.yaml'}: tables.accounts.reverse: 'price' is not a column of accounts" in message
    assert f"{tmp_path / 'b.yaml'}: defaults: unknown read setting(s) encodng (did you mean 'encoding'?)" in message
    assert "c.yaml" not in message


def test_needseg_validate_reports_a_broken_mapping_as_a_configuration_error(tmp_path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "survey.yaml").write_text("source: survey\ntables:\n  survey_responses:\n    reverse: [prize]\n")
    landing = tmp_path / "data" / "landing" / "survey" / "survey_responses"
    landing.mkdir(parents=True)
    (landing / "wave.csv").write_text("response_id,account_id,submitted_at,price\nR1,A1,2026-01-01,3\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "validate",
            "--data-dir",
            str(tmp_path / "data"),
            "--mappings",
            str(mappings),
            "--as-of",
            "2026-01-31",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "GX_ANALYTICS_ENABLED": "False"},
    )
    assert out.returncode == 2, (out.stdout, out.stderr)  # 2: configuration error (pipelines/cli.py)
    assert (
        f"{mappings / 'survey.yaml'}: tables.survey_responses.reverse: 'prize' is not a column of survey_responses (did you mean 'price'?)"
        in out.stderr
    )
    assert "Traceback" not in out.stderr
