"""The data-quality gate: great_expectations suites run on every batch before it enters raw.

One suite per contract table lives in `expectations/<table>.json`, versioned with the code
(`needseg expectations --write` creates them from the contract; hand-added expectations
are kept). A suite may use three run-time parameters: `known_account_ids` (accounts in the
warehouse or in this run's account batches), `known_currencies` (currencies with a
configured exchange rate) and `latest_allowed` (end of the run's as-of day: nothing may be
dated after it).

Expectations about rows (nulls, sets, ranges, patterns, keys, references) send the failing
rows to quarantine with the expectation as the reason. Expectations about the batch as a
whole (a column missing, no rows) reject the batch.

The loader validates the rows of all new files of a table together, and only files that
have rows: a header-only file (an empty extract, e.g. a day without new tickets) has no
rows to check, its columns were checked against the mapping when it was read, and it loads
as a batch of 0 rows. So `expect_table_row_count_to_be_between` (min 1) keeps its meaning,
"the rows validated are not nothing", and a suite can still raise that minimum; an empty
0-byte file is refused before validation, by the reader, under that expectation's name.

GE validates pandas frames here: its SQL path on DuckDB returns wrong results (see
DEVELOPERS notes in the README).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contract import TABLES, Table
from pipelines.errors import ConfigError
from pipelines.ingest.parse import Problem

log = logging.getLogger(__name__)

BATCH_LEVEL = {
    "expect_column_to_exist",
    "expect_table_row_count_to_be_between",
    "expect_table_columns_to_match_set",
    "expect_table_columns_to_match_ordered_list",
}

# Failing rows named (file, line, value) per expectation in the kept validation result.
ROWS_KEPT_PER_EXPECTATION = 200

REASONS = {
    "expect_column_values_to_not_be_null": "missing required value",
    "expect_column_values_to_be_in_set": "value not allowed",
    "expect_column_values_to_match_regex": "value has the wrong form",
    "expect_column_values_to_be_between": "out of range",
    "expect_compound_columns_to_be_unique": "duplicate key",
    "expect_column_values_to_be_unique": "duplicate key",
    "expect_column_pair_values_a_to_be_greater_than_b": "inconsistent values",
}


def contract_suite(table: Table) -> dict[str, Any]:
    """The expectations the input contract implies for a table, as a GE suite document."""
    exps: list[dict[str, Any]] = [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
    ]
    for c in table.columns:
        if c.required:
            exps.append({"type": "expect_column_to_exist", "kwargs": {"column": c.name}})
            exps.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c.name}})
        if c.allowed:
            exps.append({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": c.name, "value_set": list(c.allowed)}})
        if c.pattern:
            exps.append({"type": "expect_column_values_to_match_regex", "kwargs": {"column": c.name, "regex": c.pattern}})
        if c.minimum is not None or c.maximum is not None:
            kw: dict[str, Any] = {"column": c.name}
            if c.minimum is not None:
                kw["min_value"] = c.minimum
            if c.maximum is not None:
                kw["max_value"] = c.maximum
            exps.append({"type": "expect_column_values_to_be_between", "kwargs": kw})
        if c.not_future:
            exps.append(
                {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {"column": c.name, "max_value": {"$PARAMETER": "latest_allowed"}},
                    "meta": {"reason": "dated in the future"},
                }
            )
        if c.known_currency:
            exps.append(
                {
                    "type": "expect_column_values_to_be_in_set",
                    "kwargs": {"column": c.name, "value_set": {"$PARAMETER": "known_currencies"}},
                    "meta": {"reason": "no exchange rate for currency"},
                }
            )
        if c.references_account:
            exps.append(
                {
                    "type": "expect_column_values_to_be_in_set",
                    "kwargs": {"column": c.name, "value_set": {"$PARAMETER": "known_account_ids"}},
                    "meta": {"reason": "unknown account"},
                }
            )
    key = list(table.key) + ([table.version_column] if table.version_column else [])
    exps.append({"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": key}})
    if table.name == "support_tickets":
        exps.append(
            {
                "type": "expect_column_pair_values_a_to_be_greater_than_b",
                "kwargs": {"column_A": "closed_at", "column_B": "opened_at", "or_equal": True, "ignore_row_if": "either_value_is_missing"},
                "meta": {"reason": "closed before it was opened"},
            }
        )
    return {"name": table.name, "expectations": exps, "meta": {"generated_from": "pipelines/contract.py"}}


def write_suites(folder: Path) -> list[Path]:
    """Create or refresh the suites from the contract, keeping expectations added by hand.

    Generated expectations carry `meta.generated: true`; any other expectation in a suite
    file is the user's and survives a refresh.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for table in TABLES.values():
        path = folder / f"{table.name}.json"
        suite = contract_suite(table)
        for exp in suite["expectations"]:
            exp.setdefault("meta", {})["generated"] = True
        if path.exists():
            current = json.loads(path.read_text())
            suite["expectations"] += [e for e in current.get("expectations", []) if not (e.get("meta") or {}).get("generated")]
        path.write_text(json.dumps(suite, indent=2) + "\n")
        written.append(path)
    return written


@dataclass
class GateResult:
    table: str
    success: bool
    row_problems: list[Problem] = field(default_factory=list)
    batch_failures: list[str] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)  # GE's validation result


class QualityGate:
    """Loads the suites once per process and validates typed frames against them."""

    def __init__(self, suites_dir: Path):
        self.suites_dir = suites_dir
        self._context = None
        self._suites: dict[str, Any] = {}
        self._batch_definitions: dict[str, Any] = {}

    def _ctx(self):
        if self._context is None:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            logging.getLogger("great_expectations").setLevel(logging.WARNING)
            self._context = gx.get_context(mode="ephemeral")
            self._context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            self._source = self._context.data_sources.add_pandas("needseg_batches")
        return self._context

    def suite(self, table: str):
        if table not in self._suites:
            import great_expectations as gx

            path = self.suites_dir / f"{table}.json"
            if not path.exists():
                raise ConfigError(f"no quality suite for {table}: expected {path} (create it with `needseg expectations --write`)")
            try:
                doc = json.loads(path.read_text())
                suite = gx.ExpectationSuite(name=doc.get("name", table))
                for exp in doc["expectations"]:
                    if exp["type"] == "expect_compound_columns_to_be_unique":
                        # Keys are unique within a file; several files are validated together.
                        exp = {**exp, "kwargs": {**exp["kwargs"], "column_list": [*exp["kwargs"]["column_list"], "_file_index"]}}
                    suite.add_expectation_configuration(_configuration(exp))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}: not a valid expectation suite: {exc}") from None
            self._suites[table] = self._ctx().suites.add(suite)
            asset = self._source.add_dataframe_asset(table)
            self._batch_definitions[table] = asset.add_batch_definition_whole_dataframe(f"{table}_batch")
        return self._suites[table]

    def validate(self, table: str, frame: pd.DataFrame, parameters: dict[str, Any], texts: pd.DataFrame | None = None) -> GateResult:
        """Validate `frame`: typed contract columns plus `_line` and `_file_index` (which file).

        `texts`, aligned row by row with `frame`, holds the values as the file wrote them
        ("1 234,50", "31.12.2025"); problems quote those, so a user can find them.
        """
        suite = self.suite(table)
        frame = frame.reset_index(drop=True)
        if texts is not None:
            texts = texts.reset_index(drop=True)
            if len(texts) != len(frame):
                texts = None
        if "_file_index" not in frame.columns:
            frame = frame.assign(_file_index=0)
        batch = self._batch_definitions[table].get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, expectation_parameters=parameters, result_format={"result_format": "COMPLETE"})
        problems: list[Problem] = []
        failures: list[str] = []
        rows_of: dict[int, list[dict[str, Any]]] = {}  # result number -> its failing rows, for data docs
        lines = frame["_line"].to_numpy()
        file_index = frame["_file_index"].to_numpy()
        for number, r in enumerate(result.results):
            cfg = r.expectation_config
            if r.success:
                continue
            kind = cfg.type
            kwargs = cfg.kwargs
            column = kwargs.get("column") or kwargs.get("column_A") or ",".join(c for c in kwargs.get("column_list") or [] if c != "_file_index") or None
            if r.exception_info and r.exception_info.get("raised_exception"):
                failures.append(f"{kind}({column}): could not be checked: {r.exception_info.get('exception_message')}")
                continue
            if kind in BATCH_LEVEL or "unexpected_index_list" not in r.result:
                failures.append(f"{kind}({column or ''}) failed: {_describe(kind, kwargs, r.result)}")
                continue
            reason = (cfg.meta or {}).get("reason") or REASONS.get(kind, kind)
            expected = _expected(kind, kwargs)
            # One pass per expectation over its failing rows (a real export can have 100,000s).
            index = np.asarray(
                [i if isinstance(i, (int, np.integer)) else i.get("index", i) for i in r.result["unexpected_index_list"]], dtype="int64"
            )
            values = _values(frame, texts, kind, kwargs, index)
            for i, line, value in zip(index.tolist(), lines[index].tolist(), values, strict=True):
                problems.append(
                    Problem(
                        line=int(line),
                        column=column,
                        value=value,
                        reason=f"{reason}: {column} {value!r}" if value is not None else f"{reason}: {column}",
                        expected=expected,
                        check=kind,
                        index=i,
                    )
                )
            kept = index[:ROWS_KEPT_PER_EXPECTATION]
            rows_of[number] = [
                {"file_index": int(f), "line": int(line), "value": value}
                for f, line, value in zip(file_index[kept].tolist(), lines[kept].tolist(), values[:ROWS_KEPT_PER_EXPECTATION], strict=True)
            ]
            _trim_lists(r.result)
        document = result.to_json_dict()
        for number, rows in rows_of.items():
            # Which file and line each failing value came from: GE only knows frame positions.
            document["results"][number]["result"]["needseg_unexpected_rows"] = rows
        return GateResult(table, not failures and not problems, problems, failures, document)


def _configuration(exp: dict[str, Any]):
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    return ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"], meta=exp.get("meta") or {})


def _trim_lists(result: dict[str, Any]) -> None:
    """Keep the first failing values in the validation result, not all of them.

    With result_format COMPLETE, GE lists every failing value and index; for a real export
    that is 100,000s of entries, which would make the kept result (and its HTML) huge. The
    counts stay exact; every failing row is in quarantine with its file, line and value.
    """
    for key in ("unexpected_list", "unexpected_index_list", "unexpected_rows"):
        value = result.get(key)
        if isinstance(value, list) and len(value) > ROWS_KEPT_PER_EXPECTATION:
            result[key] = value[:ROWS_KEPT_PER_EXPECTATION]
            result["needseg_lists_truncated_to"] = ROWS_KEPT_PER_EXPECTATION


def _values(frame: pd.DataFrame, texts: pd.DataFrame | None, kind: str, kwargs: dict[str, Any], index: np.ndarray) -> list[str | None]:
    """The failing values of rows `index`, for the quarantine: as in the file when known,
    else as typed."""

    def typed(column: str) -> list[str | None]:
        out = []
        for value in frame[column].iloc[index].tolist():
            if value is None or value is pd.NaT or (isinstance(value, float) and pd.isna(value)):
                out.append(None)
            elif isinstance(value, pd.Timestamp) and value == value.normalize():
                out.append(value.date().isoformat())
            else:
                out.append(str(value))
        return out

    def as_read(column: str) -> list[str | None]:
        """The text in the file, trimmed; None where there is no text for this column."""
        if texts is None or column not in texts.columns:
            return [None] * len(index)
        return [None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v).strip() for v in texts[column].iloc[index].tolist()]

    def raw_typed(column: str) -> list:
        return frame[column].iloc[index].tolist()

    def shown(column: str) -> list:
        # Text when the file had any (even blank), else the typed value as it is.
        text = as_read(column)
        if all(t is not None for t in text):
            return text
        value = raw_typed(column)
        return [t if t is not None else v for t, v in zip(text, value, strict=True)]

    if kind == "expect_compound_columns_to_be_unique":
        parts = [shown(c) for c in kwargs["column_list"] if c != "_file_index"]
        return ["|".join(str(p) for p in row) for row in zip(*parts, strict=True)]
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return [f"{a} < {b}" for a, b in zip(shown(kwargs["column_A"]), shown(kwargs["column_B"]), strict=True)]
    column = kwargs.get("column")
    text = as_read(column)
    fallback = None
    out = []
    for i, t in enumerate(text):
        if t:  # a non-blank text as read
            out.append(t)
            continue
        if fallback is None:
            fallback = typed(column)
        out.append(fallback[i])
    return out


def _expected(kind: str, kwargs: dict[str, Any]) -> str:
    if kind == "expect_column_values_to_not_be_null":
        return "a value"
    if kind == "expect_column_values_to_be_in_set":
        vs = kwargs.get("value_set")
        if isinstance(vs, dict) and vs.get("$PARAMETER") == "known_currencies":
            return "a currency with a rate in fx_rates (config/needseg.yaml)"
        if isinstance(vs, dict):
            return "an account that exists in the accounts table"
        return "one of " + ", ".join(map(str, vs))
    if kind == "expect_column_values_to_match_regex":
        return f"text matching {kwargs['regex']}"
    if kind == "expect_column_values_to_be_between":
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        if isinstance(hi, dict):
            return "a date not after the run's as-of date"
        if lo is not None and hi is not None:
            return f"a value from {lo:g} to {hi:g}"
        return f"at least {lo:g}" if lo is not None else f"at most {hi:g}"
    if kind == "expect_compound_columns_to_be_unique":
        return "one row per " + ", ".join(c for c in kwargs["column_list"] if c != "_file_index")
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return f"{kwargs['column_A']} at or after {kwargs['column_B']}"
    return kind


def _describe(kind: str, kwargs: dict[str, Any], result: dict[str, Any]) -> str:
    if kind == "expect_table_row_count_to_be_between":
        return f"{result.get('observed_value')} rows, expected at least {kwargs.get('min_value')}"
    if kind == "expect_column_to_exist":
        return f"column {kwargs.get('column')!r} is missing"
    return json.dumps(result, default=str)[:300]
