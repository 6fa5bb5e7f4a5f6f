"""The data-quality gate: great_expectations suites run on every batch before it enters raw.

One suite per contract table lives in `expectations/<table>.json`, versioned with the code
(`needseg expectations --write` creates them from the contract; hand-added expectations
are kept). A suite may use three run-time parameters: `known_account_ids` (accounts in the
warehouse or in this run's account batches), `known_currencies` (currencies with a
configured exchange rate) and `latest_allowed` (end of the run's as-of day: nothing may be
dated after it).

Expectations about rows (nulls, sets, ranges, patterns, keys, references) send the failing
rows to quarantine with the expectation as the reason. Expectations about the batch as a
whole (a column missing, no rows) reject the batch. GE validates pandas frames here: its
SQL path on DuckDB returns wrong results (see DEVELOPERS notes in the README).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def validate(self, table: str, frame: pd.DataFrame, parameters: dict[str, Any]) -> GateResult:
        """Validate `frame`: typed contract columns plus `_line` and `_file_index` (which file)."""
        suite = self.suite(table)
        frame = frame.reset_index(drop=True)
        if "_file_index" not in frame.columns:
            frame = frame.assign(_file_index=0)
        batch = self._batch_definitions[table].get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, expectation_parameters=parameters, result_format={"result_format": "COMPLETE"})
        problems: list[Problem] = []
        failures: list[str] = []
        for r in result.results:
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
            for index in r.result["unexpected_index_list"]:
                index = index if isinstance(index, int) else index.get("index", index)
                row = frame.iloc[int(index)]
                value = _value(row, kind, kwargs)
                problems.append(
                    Problem(
                        line=int(row["_line"]),
                        column=column,
                        value=value,
                        reason=f"{reason}: {column} {value!r}" if value is not None else f"{reason}: {column}",
                        expected=expected,
                        check=kind,
                        index=int(index),
                    )
                )
        return GateResult(table, not failures and not problems, problems, failures, result.to_json_dict())


def _configuration(exp: dict[str, Any]):
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    return ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"], meta=exp.get("meta") or {})


def _value(row: pd.Series, kind: str, kwargs: dict[str, Any]) -> str | None:
    if kind == "expect_compound_columns_to_be_unique":
        return "|".join(str(row[c]) for c in kwargs["column_list"] if c != "_file_index")
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return f"{row[kwargs['column_A']]} < {row[kwargs['column_B']]}"
    value = row.get(kwargs.get("column"))
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp) and value == value.normalize():
        return value.date().isoformat()
    return str(value)


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
