"""The quality gate's DuckDB predicates (pipelines/quality/gate.py, `RowPredicate`): DuckDB
marks every row that may fail a row-level expectation, great_expectations judges the marked
rows and a sample, and the gate's answer is GE's on every row.

Every validation in this file (and in the bad-input test files, see tests/conftest.py
CROSS_CHECKED_GATE) also runs GE over every row and fails if any row GE fails was not
marked, or if any row problem, file failure or validation entry differs.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.quality import gate as gate_module
from pipelines.quality.gate import QualityGate, mark_rows, row_predicate, validated_frame
from pipelines.contract import TABLES
from pipelines.settings import EXPECTATIONS_DIR
from pipelines.warehouse import scratch_connection

PARAMETERS = {
    "known_account_ids": ["A1", "A2"],
    "known_currencies": ["EUR", "SEK"],
    "latest_allowed": pd.Timestamp("2026-01-31 23:59:59.999999"),
}


def _orders(n: int = 3000) -> pd.DataFrame:
    """Order lines with one of every problem, the bad rows spread between good ones."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "order_id": [f"O{i}" for i in range(n)],
            "line_number": np.ones(n, dtype="int64"),
            "account_id": pd.array(rng.choice(["A1", "A2"], n), dtype="str"),
            "order_date": pd.to_datetime("2025-06-01") + pd.to_timedelta(rng.integers(0, 200, n), unit="D"),
            "product_id": pd.array([None] * n, dtype="str"),
            "product_category": pd.array([None] * n, dtype="str"),
            "quantity": rng.integers(1, 9, n).astype("float64"),
            "list_price": np.full(n, np.nan),
            "net_price": rng.random(n) * 100,
            "currency": pd.array(["EUR"] * n, dtype="str"),
            "channel": pd.array([None] * n, dtype="str"),
            "_line": np.arange(2, n + 2, dtype="int64"),
        }
    )
    frame.loc[1777, "order_id"] = None  # missing required value
    frame.loc[2011, "net_price"] = -1.0  # out of range
    frame.loc[2500, "quantity"] = np.nan  # a missing number
    frame.loc[1234, "order_date"] = pd.Timestamp("2026-02-01")  # dated after the as-of day
    frame.loc[2999, "currency"] = "eu"  # wrong form
    frame.loc[1500, "currency"] = "EUR\n"  # Python's $ matches before a final newline, RE2's does not
    frame.loc[1501, "currency"] = "\u0395UR"  # a Greek capital Epsilon: not [A-Z] for either
    frame.loc[2222, ["order_id", "line_number"]] = ["O7", 1]  # duplicate key of line 9
    return frame


def _problems(result) -> list[tuple]:
    return sorted((p.line, p.column, p.check, p.reason) for p in result.row_problems)


@pytest.fixture(scope="module")
def gates():
    return QualityGate(EXPECTATIONS_DIR), QualityGate(EXPECTATIONS_DIR, prefilter=False)


def test_the_marked_validation_gives_ges_answer_on_every_row(gates):
    marked, everything = gates
    frame = _orders()
    found = marked.validate("order_lines", frame, PARAMETERS)
    reference = everything.validate("order_lines", frame, PARAMETERS)
    assert _problems(found) == _problems(reference)
    assert {(p.line, p.check) for p in found.row_problems} >= {
        (1779, "expect_column_values_to_not_be_null"),
        (2013, "expect_column_values_to_be_between"),
        (1236, "expect_column_values_to_be_between"),
        (3001, "expect_column_values_to_match_regex"),
        (1503, "expect_column_values_to_match_regex"),
        (2224, "expect_compound_columns_to_be_unique"),
        (9, "expect_compound_columns_to_be_unique"),
    }
    # "EUR\n" matches ^[A-Z]{3}$ in Python: GE passes it, though DuckDB marked it
    assert not [p for p in found.row_problems if p.line == 1502 and p.check == "expect_column_values_to_match_regex"]
    # the kept result counts every row, as GE on every row does
    by_key = {gate_module._entry_key(e): e["result"] for e in reference.document["results"]}
    for entry in found.document["results"]:
        assert json.dumps(entry["result"], sort_keys=True, default=str) == json.dumps(
            by_key[gate_module._entry_key(entry)], sort_keys=True, default=str
        )


def test_each_predicate_marks_every_row_ge_fails():
    """Checked without the sample: the predicates alone cover GE's failures."""
    frame = validated_frame(_orders(), TABLES["order_lines"]).assign(_file_index=0)
    gate = QualityGate(EXPECTATIONS_DIR)
    gate.suite("order_lines")
    predicates = gate._predicates["order_lines"]
    assert {p.kind for p in predicates} >= {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_match_regex",
        "expect_compound_columns_to_be_unique",
    }
    marked = mark_rows(scratch_connection(), frame, predicates, PARAMETERS)
    reference = QualityGate(EXPECTATIONS_DIR, prefilter=False).validate("order_lines", frame, PARAMETERS)
    for predicate, rows in zip(predicates, marked, strict=True):
        column = gate_module._column_of(predicate.kwargs)
        failing = {p.index for p in reference.row_problems if p.check == predicate.kind and p.column == column}
        assert failing <= set(rows.tolist()), (predicate, failing - set(rows.tolist()))
    # and they mark little else: a narrow net is what makes the gate fast
    assert sum(len(r) for r in marked) <= 12


def test_an_expectation_without_a_translation_runs_in_ge_on_every_row(tmp_path):
    suite = json.loads((EXPECTATIONS_DIR / "order_lines.json").read_text())
    suite["expectations"] += [
        # options the predicates do not translate: `mostly`, a POSIX class
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "quantity", "max_value": 5, "mostly": 0.5}},
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "order_id", "regex": "^O[[:digit:]]+$"}},
    ]
    (tmp_path / "order_lines.json").write_text(json.dumps(suite))
    gate = QualityGate(tmp_path)
    gate.suite("order_lines")
    translated = {(p.kind, json.dumps(p.kwargs, sort_keys=True)) for p in gate._predicates["order_lines"]}
    assert (
        "expect_column_values_to_be_between",
        json.dumps({"column": "quantity", "max_value": 5, "mostly": 0.5}, sort_keys=True),
    ) not in translated
    assert len(gate._row_suites["order_lines"].expectations) == 2
    frame = _orders().iloc[:50].copy()
    frame.loc[3, "order_id"] = "X3"
    found = gate.validate("order_lines", frame, PARAMETERS)
    reference = QualityGate(tmp_path, prefilter=False).validate("order_lines", frame, PARAMETERS)
    assert _problems(found) == _problems(reference)
    # GE's verdict, whichever regular-expression engine pandas gives it for this column
    assert [p.line for p in found.row_problems if p.check == "expect_column_values_to_match_regex"] == [5]
    assert [p.line for p in found.row_problems if p.check == "expect_column_values_to_be_between"] == []


def test_a_predicate_narrower_than_its_expectation_is_caught_and_ge_judges_every_row(gates, monkeypatch):
    """A wrong translation cannot lose a failing row on a real run: GE's verdict on the
    sample shows it, and then GE judges every row."""
    _, everything = gates
    frame = _orders()
    frame.loc[0, "net_price"] = -5.0  # row 0 is always in the sample
    monkeypatch.setattr(gate_module, "_between_sql", lambda c, dtype, kw: ("false", []))
    monkeypatch.setattr(QualityGate, "cross_check", False)  # it would refuse the wrong translation outright
    gate = QualityGate(EXPECTATIONS_DIR)
    found = gate.validate("order_lines", frame, PARAMETERS)
    assert _problems(found) == _problems(everything.validate("order_lines", frame, PARAMETERS))
    assert any(p.line == 2 and p.column == "net_price" for p in found.row_problems)


def test_only_known_options_are_translated():
    assert row_predicate({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}}) is not None
    assert row_predicate({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a", "mostly": 0.9}}) is None
    assert (
        row_predicate({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "a", "value_set": ["x"], "row_condition": "b>1"}})
        is None
    )
    assert row_predicate({"type": "expect_column_mean_to_be_between", "kwargs": {"column": "a", "min_value": 1}}) is None


def test_the_duplicate_key_predicate_marks_exactly_the_repeated_keys():
    """The compound-key predicate groups the key's hash (`RowPredicate.sql`): it marks every
    row whose key repeats within a file, missing values alike, as a window over the key
    does, and here (no hash collision among 20,000 keys) nothing else."""
    rng = np.random.default_rng(11)
    n = 20_000
    frame = pd.DataFrame(
        {
            "order_id": pd.array([f"O{i}" if i % 97 else None for i in rng.integers(0, 15_000, n)], dtype="str"),
            "line_number": pd.array(rng.integers(1, 3, n), dtype="Int64"),
            "_file_index": rng.integers(0, 3, n).astype("int64"),
        }
    )
    frame.loc[rng.integers(0, n, 50), "line_number"] = pd.NA
    predicate = row_predicate(
        {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["order_id", "line_number", "_file_index"]}}
    )
    con = scratch_connection()
    (marked,) = mark_rows(con, frame, [predicate], {})
    con.register("keys", frame.assign(position=np.arange(n)))
    window = con.execute(
        "select position from (select position, count(*) over (partition by order_id, line_number, _file_index) > 1 as d from keys) "
        "where d order by position"
    ).fetchnumpy()["position"]
    assert 1000 < len(window) < n  # repeats within and across files, with missing values among them
    assert marked.tolist() == window.tolist()
