"""The data-quality gate: great_expectations suites run on every batch before it enters raw.

One suite per contract table lives in `expectations/<table>.json`, versioned with the code
(`needseg expectations --write` creates them from the contract; hand-added expectations
are kept). A suite may use three run-time parameters: `known_account_ids` (accounts in the
warehouse or in this run's account batches), `known_currencies` (currencies with a
configured exchange rate) and `latest_allowed` (end of the run's as-of day: nothing may be
dated after it).

Expectations about rows (types, nulls, sets, ranges, patterns, keys, references: great_expectations'
column, column-pair and multicolumn *map* expectations) send the failing rows to quarantine
with the expectation as the reason. They run once over the rows of all of a table's new files
together (fast), and every failing row is traced back to its file and line. Expectations about
a batch as a whole (row counts, a column missing, a column's mean or other aggregates) judge
each file on its own - a file is a batch - and refuse only the file that fails them. Those
that must give every file the same answer (its columns: every validated file has the
contract's typed columns; "at least one row": only files with rows are validated) run once
over all of a table's files, since each GE validation has a fixed cost (0.1-0.3 s) that a
run of 100 monthly files paid 100 times.

Every contract column has a type expectation (`expect_column_values_to_be_of_type`, on the
typed frame the gate validates: text `str`, integers `int64`, numbers and money `float64`,
dates and timestamps `datetime64`). Cells that do not even read as their type never reach
that frame: the parser quarantines them ("wrong type"), and the kept validation result
counts them under the column's type expectation (see `add_parse_results`), together with a
mapping's declared survey scale (`scale:`) as a range expectation on the values as read.

Only files that have rows are validated: a header-only file (an empty extract, e.g. a day
without new tickets) has no rows to check, its columns were checked against the mapping when
it was read, and it loads as a batch of 0 rows. So `expect_table_row_count_to_be_between`
(min 1) keeps its meaning, "the file's rows are not nothing", and a suite can still raise that
minimum; an empty 0-byte file is refused before validation, by the reader, under that
expectation's name.

GE validates pandas frames here (its SQL path on DuckDB returned wrong results in an
earlier round, see the README's developer notes), but it does not look at every row: the
row-level expectations of the kinds the contract generates (not null, type, in a set,
pattern, range, compound key, column pair) are first computed by DuckDB as set-based
predicates over all rows in one query (`RowPredicate`, `mark_rows`). Each predicate is
true for every row that may fail its expectation (it may mark more). great_expectations
then validates only the marked rows plus an even, fixed sample of the others
(`SAMPLE_ROWS`), with their positions kept, so its verdict decides every failing row and
its result (counts restated for all rows, `_whole_frame_counts`) is the kept one. If GE
fails a sampled row DuckDB did not mark, or a predicate does not fit a frame (a column of
another dtype), GE judges every row instead. An expectation with options the predicates
do not translate (`mostly`, a row condition, a hand-added kind) runs in GE on every row.
The tests run the bad-input fixtures with `QualityGate.cross_check`: every validation is
repeated with GE on every row and must agree row by row, and every row GE fails must be
marked by its predicate.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contract import TABLES, Table
from pipelines.errors import ConfigError
from pipelines.files import write_file_atomically
from pipelines.ingest.parse import Problem

log = logging.getLogger(__name__)

# The type of each contract kind in the frame the gate validates (`validated_frame`), as
# great_expectations names pandas dtypes.
PANDAS_TYPES = {
    "text": "str",
    "integer": "int64",
    "number": "float64",
    "money": "float64",
    "date": "datetime64",
    "timestamp": "datetime64",
}
TYPE_EXPECTATION = "expect_column_values_to_be_of_type"
# Not a great_expectations expectation: the parser's own check that every line of a file
# could be split into the header's fields (no truncated last line, no broken JSON record).
READABLE_ROWS = "needseg_rows_are_readable"

# Failing rows named (file, line, value) per expectation in the kept validation result.
ROWS_KEPT_PER_EXPECTATION = 200
# Rows great_expectations judges besides the ones DuckDB marked (`_validate_marked`):
# spread evenly over the validated rows, the same rows for the same input.
SAMPLE_ROWS = 1000

REASONS = {
    "expect_column_values_to_not_be_null": "missing required value",
    "expect_column_values_to_be_in_set": "value not allowed",
    "expect_column_values_to_match_regex": "value has the wrong form",
    "expect_column_values_to_be_between": "out of range",
    "expect_compound_columns_to_be_unique": "duplicate key",
    "expect_column_values_to_be_unique": "duplicate key",
    "expect_column_pair_values_a_to_be_greater_than_b": "inconsistent values",
    TYPE_EXPECTATION: "wrong type",
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
        exps.append({"type": TYPE_EXPECTATION, "kwargs": {"column": c.name, "type_": PANDAS_TYPES[c.kind]}})
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
        write_file_atomically(path, json.dumps(suite, indent=2) + "\n")
        written.append(path)
    return written


@dataclass
class GateResult:
    table: str
    success: bool
    row_problems: list[Problem] = field(default_factory=list)  # `index`: row position in the validated frame
    # Why each file (the frame's `_file_index`) is refused: batch-level expectations that
    # failed on it, or a row-level one that failed without naming rows.
    failures_by_file: dict[int, list[str]] = field(default_factory=dict)
    # Row positions whose account is not (yet) known: the loader may hold their file back.
    unknown_account_rows: set[int] = field(default_factory=set)
    document: dict[str, Any] = field(default_factory=dict)  # GE's validation result, merged


def is_row_level(kind: str) -> bool:
    """Whether an expectation judges rows one by one (GE's map expectations), rather than
    the batch as a whole (row counts, column sets, aggregates such as a column's mean)."""
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        impl = get_expectation_impl(kind)
    except ExpectationNotFoundError:
        raise ConfigError(f"unknown expectation type {kind!r}") from None
    return issubclass(impl, (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation))


def validated_frame(frame: pd.DataFrame, table: Table) -> pd.DataFrame:
    """The frame with each contract column in the dtype its type expectation names
    (PANDAS_TYPES): integers with gaps stay integers (nullable Int64), not floats; dates
    and timestamps in nanoseconds."""
    out = frame.copy(deep=False)
    for c in table.columns:
        if c.name not in out.columns:
            continue
        column = out[c.name]
        try:
            if c.kind == "integer":
                # numpy int64 where no value is missing: GE checks ranges on it vectorised,
                # on the nullable Int64 value by value
                column = column.astype("Int64")
                out[c.name] = column.astype("int64") if not column.isna().any() else column
            elif c.kind in ("number", "money") and column.dtype != np.float64:
                out[c.name] = column.astype("float64")
            elif c.kind in ("date", "timestamp") and not pd.api.types.is_datetime64_ns_dtype(column):
                # nanoseconds: GE compares datetime64[ns] columns vectorised, any other
                # resolution value by value in Python (12 s per million rows and check)
                out[c.name] = pd.to_datetime(column).astype("datetime64[ns]")
        except (TypeError, ValueError):
            pass  # left as it is: the column's type expectation reports it
    return out


class QualityGate:
    """Loads the suites once per process and validates typed frames against them.

    `prefilter` (default): the row-level expectations `row_predicate` translates are first
    computed by DuckDB over every row, and great_expectations judges the rows DuckDB marks
    plus a fixed sample (`_validate_marked`); without it GE judges every row (the reference
    the tests compare with). `cross_check`: run both and raise if they differ (tests)."""

    cross_check = False

    def __init__(self, suites_dir: Path, prefilter: bool = True):
        self.suites_dir = suites_dir
        self.prefilter = prefilter
        self._context = None
        self._row_suites: dict[str, Any] = {}
        self._batch_suites: dict[str, Any] = {}
        self._shape_suites: dict[str, Any] = {}
        self._set_checks: dict[str, list[dict[str, Any]]] = {}
        self._batch_definitions: dict[str, Any] = {}
        # Row-level expectations with a DuckDB predicate: GE judges only the rows it marks.
        self._marked_suites: dict[str, Any] = {}
        self._predicates: dict[str, list[RowPredicate]] = {}
        self._duckdb = None
        self._reference: QualityGate | None = None  # GE on every row, for `cross_check`

    def _ctx(self):
        if self._context is None:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
            logging.getLogger("great_expectations").setLevel(logging.WARNING)
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            # Some of its modules set their own loggers to INFO, which would print a line
            # about a temporary docs folder into every run's output.
            for name, logger in list(logging.root.manager.loggerDict.items()):
                if name.startswith("great_expectations.") and isinstance(logger, logging.Logger) and logger.level < logging.WARNING:
                    logger.setLevel(logging.NOTSET)
            self._context = gx.get_context(mode="ephemeral")
            self._context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            self._source = self._context.data_sources.add_pandas("needseg_batches")
        return self._context

    def suite(self, table: str):
        """Load a table's suite (once per process), split into its row-level and its
        batch-level expectations; returns the row-level part."""
        if table not in self._row_suites:
            import great_expectations as gx

            path = self.suites_dir / f"{table}.json"
            if not path.exists():
                raise ConfigError(f"no quality suite for {table}: expected {path} (create it with `needseg expectations --write`)")
            try:
                doc = json.loads(path.read_text())
                name = doc.get("name", table)
                rows, batches = gx.ExpectationSuite(name=name), gx.ExpectationSuite(name=f"{name} (per file)")
                shapes = gx.ExpectationSuite(name=f"{name} (every file alike)")
                marked = gx.ExpectationSuite(name=f"{name} (rows DuckDB marks)")
                set_checks, predicates = [], []
                for exp in doc["expectations"]:
                    if exp["type"] == "expect_compound_columns_to_be_unique":
                        # Keys are unique within a file; several files are validated together.
                        exp = {**exp, "kwargs": {**exp["kwargs"], "column_list": [*exp["kwargs"]["column_list"], "_file_index"]}}
                    parameters = {k: v["$PARAMETER"] for k, v in exp["kwargs"].items() if isinstance(v, dict) and "$PARAMETER" in v}
                    if parameters:
                        # GE hands back the kwargs with the values filled in: keep which were parameters.
                        exp = {**exp, "meta": {**(exp.get("meta") or {}), "needseg_parameters": parameters}}
                    if _is_run_value_set(exp):
                        set_checks.append(exp)
                        continue
                    predicate = row_predicate(exp) if self.prefilter else None
                    if predicate is not None:
                        predicates.append(predicate)
                        marked.add_expectation_configuration(_configuration(exp))
                        continue
                    suite = rows if is_row_level(exp["type"]) else shapes if _same_for_every_file(exp) else batches
                    suite.add_expectation_configuration(_configuration(exp))
            except (ValueError, KeyError, TypeError, ConfigError) as exc:
                raise ConfigError(f"{path}: not a valid expectation suite: {exc}") from None
            self._row_suites[table] = self._ctx().suites.add(rows)
            self._batch_suites[table] = self._ctx().suites.add(batches)
            self._shape_suites[table] = self._ctx().suites.add(shapes)
            self._set_checks[table] = set_checks
            self._marked_suites[table] = self._ctx().suites.add(marked)
            self._predicates[table] = predicates
            asset = self._source.add_dataframe_asset(table)
            self._batch_definitions[table] = asset.add_batch_definition_whole_dataframe(f"{table}_batch")
        return self._row_suites[table]

    def validate(self, table: str, frame: pd.DataFrame, parameters: dict[str, Any], texts: pd.DataFrame | None = None) -> GateResult:
        """Validate `frame`: typed contract columns plus `_line` and `_file_index` (which file).

        Row-level expectations run once over all rows; batch-level ones once per file.
        `texts`, aligned row by row with `frame`, holds the values as the file wrote them
        ("1 234,50", "31.12.2025"); problems quote those, so a user can find them.
        """
        self.suite(table)
        frame = validated_frame(frame.reset_index(drop=True), TABLES[table])
        if texts is not None:
            texts = texts.reset_index(drop=True)
            if len(texts) != len(frame):
                texts = None
        if "_file_index" not in frame.columns:
            frame = frame.assign(_file_index=0)
        found = _Findings(frame, texts)
        if self._marked_suites[table].expectations:
            self._validate_marked(table, found, parameters)
        if self._row_suites[table].expectations:
            self._validate_rows(table, found, parameters)
        for exp in self._set_checks[table]:
            found.entries.append(found.in_run_value_set(exp, parameters))
        if self._shape_suites[table].expectations:
            self._validate_shape(table, found, parameters)
        if self._batch_suites[table].expectations:
            self._validate_files(table, found, parameters)
        document = {"suite_name": table, "results": found.entries, "meta": {}}
        restate(document)
        success = not found.failures and not found.problems
        result = GateResult(table, success, found.problems, found.failures, found.unknown_accounts, document)
        if self.cross_check and self.prefilter and self._predicates[table]:
            _cross_check(self, table, frame, parameters, texts, result)
        return result

    def _validate_rows(self, table: str, found: _Findings, parameters: dict[str, Any], suite=None) -> None:
        """The row-level expectations, once over the rows of every file."""
        batch = self._batch_definitions[table].get_batch(batch_parameters={"dataframe": found.frame})
        suite = suite or self._row_suites[table]
        result = batch.validate(suite, expectation_parameters=parameters, result_format={"result_format": "COMPLETE"})
        self._row_results(found, result)

    def _validate_marked(self, table: str, found: _Findings, parameters: dict[str, Any]) -> None:
        """The row-level expectations DuckDB can compute (`row_predicate`): DuckDB marks, over
        every row, each row that may fail one; great_expectations then validates the marked
        rows and an even sample of the others (`SAMPLE_ROWS`), keeping their positions, and
        its verdict is the gate's. The counts of its result are restated for every row
        (`_whole_frame_counts`). Should GE fail a sampled row DuckDB did not mark (a
        predicate narrower than the expectation), or the predicates not run on this frame,
        GE judges every row instead. DuckDB only narrows what GE has to look at."""
        predicates = self._predicates[table]
        marked = mark_rows(self._connection(), found.frame, predicates, parameters)
        if marked is None:
            log.warning("%s: the row predicates do not run on this frame; great_expectations judges every row", table)
            self._validate_rows(table, found, parameters, self._marked_suites[table])
            return
        n = len(found.frame)
        sample = np.unique(np.linspace(0, n - 1, num=min(n, SAMPLE_ROWS)).astype("int64")) if n else np.zeros(0, dtype="int64")
        union = np.union1d(np.concatenate([m for m in marked] or [np.zeros(0, dtype="int64")]), sample)
        subset = found.frame.iloc[union]  # index labels stay the positions in the whole frame
        batch = self._batch_definitions[table].get_batch(batch_parameters={"dataframe": subset})
        result = batch.validate(self._marked_suites[table], expectation_parameters=parameters, result_format={"result_format": "COMPLETE"})
        for r, flagged, predicate in zip(result.results, marked, predicates, strict=True):
            failing = r.result.get("unexpected_index_list")
            if r.expectation_config.type != predicate.kind or (
                failing and not np.isin(np.asarray(_positions(failing), dtype="int64"), flagged).all()
            ):
                message = f"{table}: {r.expectation_config.type} failed on rows its DuckDB predicate did not mark"
                if self.cross_check:
                    raise AssertionError(message)
                log.warning("%s; great_expectations judges every row", message)
                self._validate_rows(table, found, parameters, self._marked_suites[table])
                return
        for r in result.results:
            _whole_frame_counts(r, found.frame)
        self._row_results(found, result)

    def _connection(self):
        if self._duckdb is None:
            from pipelines.warehouse import scratch_connection

            self._duckdb = scratch_connection()
        return self._duckdb

    def _row_results(self, found: _Findings, result) -> None:
        rows_of: dict[int, list[dict[str, Any]]] = {}  # result number -> its failing rows, for data docs
        for number, r in enumerate(result.results):
            if not r.success:
                rows = found.row_result(r)
                if rows is not None:
                    rows_of[number] = rows
        document = result.to_json_dict()
        for number, rows in rows_of.items():
            # Which file and line each failing value came from: GE only knows frame positions.
            document["results"][number]["result"]["needseg_unexpected_rows"] = rows
        found.entries.extend(document["results"])

    def _validate_shape(self, table: str, found: _Findings, parameters: dict[str, Any]) -> None:
        """The batch-level expectations whose answer is the same for every file (see
        `_same_for_every_file`), once over the rows of every file: a failure refuses each.

        They look at the frame's columns and whether it has a row, so (with `prefilter`) GE
        gets the first row only, which has the same columns: on 3M rows GE spent seconds on
        the whole frame for the same answer. The row count GE observes is restated."""
        frame = found.frame.iloc[:1] if self.prefilter and len(found.frame) else found.frame
        batch = self._batch_definitions[table].get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(self._shape_suites[table], expectation_parameters=parameters, result_format={"result_format": "SUMMARY"})
        for r in result.results:
            if r.expectation_config.type == "expect_table_row_count_to_be_between" and isinstance(r.result, dict):
                r.result["observed_value"] = len(found.frame)
            if not r.success:
                message = _batch_failure(r)
                for f in found.files:
                    found.failures.setdefault(f, []).append(message)
        for entry in result.to_json_dict()["results"]:
            entry["result"] = {**(entry.get("result") or {}), "needseg_files": "every file validated"}
            found.entries.append(entry)

    def _validate_files(self, table: str, found: _Findings, parameters: dict[str, Any]) -> None:
        """The batch-level expectations, per file: a file is a batch, its row count, columns
        and aggregates are its own."""
        for f in found.files:
            rows = found.frame[found.file_index == f].reset_index(drop=True)
            batch = self._batch_definitions[table].get_batch(batch_parameters={"dataframe": rows})
            result = batch.validate(
                self._batch_suites[table], expectation_parameters=parameters, result_format={"result_format": "SUMMARY"}
            )
            for r in result.results:
                if not r.success:
                    found.failures.setdefault(f, []).append(_batch_failure(r))
            for entry in result.to_json_dict()["results"]:
                entry["result"] = {**(entry.get("result") or {}), "needseg_file_index": f}
                found.entries.append(entry)


class _Findings:
    """What one validation finds, collected over its expectations."""

    def __init__(self, frame: pd.DataFrame, texts: pd.DataFrame | None):
        self.frame, self.texts = frame, texts
        self.lines = frame["_line"].to_numpy()
        self.file_index = frame["_file_index"].to_numpy()
        self.files = [int(i) for i in np.unique(self.file_index)]
        self.problems: list[Problem] = []
        self.failures: dict[int, list[str]] = {}
        self.unknown_accounts: set[int] = set()
        self.entries: list[dict[str, Any]] = []

    def row_result(self, r) -> list[dict[str, Any]] | None:
        """Record a failed row-level expectation; returns its first failing rows (file, line,
        value) for the kept result, or None when it judged no rows."""
        cfg = r.expectation_config
        kind, kwargs = cfg.type, cfg.kwargs
        column = _column_of(kwargs)
        if r.exception_info and r.exception_info.get("raised_exception"):
            for f in self.files:
                self.failures.setdefault(f, []).append(
                    f"{kind}({column}): could not be checked: {r.exception_info.get('exception_message')}"
                )
            return None
        if "unexpected_index_list" not in r.result:
            # Judged on the column as a whole (a dtype): it holds for every file alike.
            for f in self.files:
                self.failures.setdefault(f, []).append(f"{kind}({column or ''}) failed: {_describe(kind, kwargs, r.result)}")
            return None
        index = np.asarray(_positions(r.result["unexpected_index_list"]), dtype="int64")
        rows = self._failing_rows(kind, kwargs, cfg.meta or {}, index)
        _trim_lists(r.result)
        return rows

    def in_run_value_set(self, exp: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
        """`expect_column_values_to_be_in_set` against a run parameter (`known_account_ids`),
        checked here with pandas' hash lookup; returns its result in GE's shape. GE copies an
        expectation's configuration, value set included, about a hundred times per
        validation: with the 10,000s of known accounts as the set that was most of an
        ingest's time, and it grows with accounts x rows. Same semantics: a missing value is
        not judged (the not-null expectation is), every other value must be in the set."""
        kwargs, meta = exp["kwargs"], exp.get("meta") or {}
        name = kwargs["value_set"]["$PARAMETER"]
        column = kwargs["column"]
        values = self.frame[column] if column in self.frame.columns else None
        if values is None or name not in parameters:
            missing = f"column {column!r} is not in the batch" if values is None else f"no value for the parameter {name!r}"
            for f in self.files:
                self.failures.setdefault(f, []).append(f"{exp['type']}({column}): could not be checked: {missing}")
            return _entry(exp["type"], kwargs, meta, stage="gate", success=False, error=missing)
        judged = values.notna().to_numpy()
        allowed = pd.Index(list(parameters[name]))
        failing = judged & ~_is_in(values, parameters[name])
        index = np.flatnonzero(failing)
        rows = self._failing_rows(exp["type"], kwargs, {**meta, "needseg_parameters": {"value_set": name}}, index)
        count, element_count = len(index), len(values)
        # As GE keeps it: the set filled in (its first values only when it is long).
        shown = sorted(map(str, allowed[:ROWS_KEPT_PER_EXPECTATION] if len(allowed) > ROWS_KEPT_PER_EXPECTATION else allowed))
        entry = _entry(exp["type"], {**kwargs, "value_set": shown}, meta, stage="gate", success=count == 0)
        entry["result"] = {
            "element_count": element_count,
            "missing_count": int((~judged).sum()),
            "unexpected_count": count,
            "unexpected_percent": 100.0 * count / max(int(judged.sum()), 1),
            "partial_unexpected_list": [r["value"] for r in rows[:20]],
            "needseg_value_set_size": len(allowed),
        }
        if rows:
            entry["result"]["needseg_unexpected_rows"] = rows
        return entry

    def _failing_rows(self, kind: str, kwargs: dict[str, Any], meta: dict[str, Any], index: np.ndarray) -> list[dict[str, Any]]:
        """Record the failing rows `index` of a row-level expectation as problems (the row
        goes to quarantine with file, line, value and reason); returns the first of them
        (file, line, value) for the kept result."""
        column = _column_of(kwargs)
        reason = meta.get("reason") or REASONS.get(kind, kind)
        parameters = meta.get("needseg_parameters") or {}
        expected = _expected(kind, {**kwargs, **{k: {"$PARAMETER": v} for k, v in parameters.items()}})
        # One pass per expectation over its failing rows (a real export can have 100,000s).
        values = _values(self.frame, self.texts, kind, kwargs, index)
        for i, line, value in zip(index.tolist(), self.lines[index].tolist(), values, strict=True):
            text = f"{reason}: {column} {value!r}" if value is not None else f"{reason}: {column}"
            self.problems.append(Problem(line=int(line), column=column, value=value, reason=text, expected=expected, check=kind, index=i))
        if parameters.get("value_set") == "known_account_ids":
            self.unknown_accounts.update(index.tolist())
        kept = index[:ROWS_KEPT_PER_EXPECTATION]
        return [
            {"file_index": int(f), "line": int(line), "value": value}
            for f, line, value in zip(
                self.file_index[kept].tolist(), self.lines[kept].tolist(), values[:ROWS_KEPT_PER_EXPECTATION], strict=True
            )
        ]


# --- row-level expectations as DuckDB predicates (`QualityGate._validate_marked`) -------
#
# Each predicate is true for every row that may fail its expectation, and may be true for
# more (a wider net is harmless: great_expectations judges every marked row). It must never
# be false for a row GE would fail; the tests check that on every row of the bad-input
# fixtures (`QualityGate.cross_check`), and GE's verdict on a sample of unmarked rows checks
# it on every run. Only the expectation types and options below are translated; any other
# (a hand-added expectation, `mostly`, a row condition) runs in GE on every row.

_TRANSLATED_KWARGS = {
    "expect_column_values_to_not_be_null": {"column"},
    "expect_column_values_to_be_of_type": {"column", "type_"},
    "expect_column_values_to_be_in_set": {"column", "value_set"},
    "expect_column_values_to_match_regex": {"column", "regex"},
    "expect_column_values_to_be_between": {"column", "min_value", "max_value", "strict_min", "strict_max"},
    "expect_compound_columns_to_be_unique": {"column_list"},
    "expect_column_pair_values_a_to_be_greater_than_b": {"column_A", "column_B", "or_equal", "ignore_row_if"},
}
# Regular expressions whose meaning differs between Python's `re` (GE's pandas engine) and
# RE2 (DuckDB) even on printable ASCII text: POSIX classes, `{,n}`. Lookarounds and
# backreferences RE2 refuses (the predicates then do not run: GE judges every row).
_PYTHON_ONLY_REGEX = re.compile(r"\[:|\{,")
# Text outside printable ASCII is always marked for a regex: Python's \d, \w, \s and $ know
# Unicode digits, letters, spaces and a trailing newline, RE2's do not.
_NOT_PRINTABLE_ASCII = "[^ -~]"


@dataclass(frozen=True)
class RowPredicate:
    """An expectation as a DuckDB predicate over the validated frame (`sql`)."""

    kind: str
    kwargs: dict[str, Any]

    def columns(self) -> list[str]:
        kw = self.kwargs
        if "column_list" in kw:
            return list(kw["column_list"])
        if "column_A" in kw:
            return [kw["column_A"], kw["column_B"]]
        return [kw["column"]]

    def sql(self, frame: pd.DataFrame, parameters: dict[str, Any]) -> tuple[str, list[Any]] | None:
        """(SQL true for each row that may fail, its bound values); None when this frame's
        columns or the run's parameters are not what the translation is for."""
        kw = {}
        for key, value in self.kwargs.items():
            if isinstance(value, dict) and "$PARAMETER" in value:
                if value["$PARAMETER"] not in parameters:
                    return None
                value = parameters[value["$PARAMETER"]]
            kw[key] = value
        if any(c not in frame.columns for c in self.columns()):
            return None
        dtypes = {c: frame[c].dtype for c in self.columns()}
        q = {c: _sql_name(c) for c in self.columns()}
        empty = {c for c, d in dtypes.items() if pd.api.types.is_object_dtype(d) and frame[c].isna().all()}
        if empty:
            # A column of no values at all (e.g. an optional column no file has): a missing
            # value is not judged, except by the not-null expectation.
            return _empty_column_sql(self.kind, kw, empty)
        if self.kind == "expect_compound_columns_to_be_unique":
            if any(pd.api.types.is_object_dtype(d) for d in dtypes.values()):
                return None
            # Rows whose key's hash occurs more than once: every repeated key (NULLs alike, as
            # a window's partition groups them), and a collision now and then (more marked,
            # which is harmless). A hash aggregate and a semi-join over one integer cost about
            # half of `count(*) over (partition by <key>)` on a group of a million rows.
            key = f"hash({', '.join(q.values())})"
            return f"{key} in (select h from (select {key} as h from {_GATE_ROWS}) group by h having count(*) > 1)", []
        if self.kind == "expect_column_pair_values_a_to_be_greater_than_b":
            a, b = q[kw["column_A"]], q[kw["column_B"]]
            if not all(_is_numpy_ordered(d) for d in dtypes.values()) or kw.get("ignore_row_if") not in (
                None,
                "either_value_is_missing",
                "both_values_are_missing",
                "neither",
            ):
                return None
            compare = ">=" if kw.get("or_equal") else ">"
            return f"not coalesce({a} {compare} {b}, false)", []
        return _column_sql(self.kind, q[kw["column"]], dtypes[kw["column"]], kw)


def _column_sql(kind: str, c: str, dtype, kw: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """A single-column expectation's predicate (see `RowPredicate.sql`)."""
    if kind == "expect_column_values_to_not_be_null":
        return (f"({c} is null or isnan({c}))" if dtype == np.float64 else f"{c} is null"), []
    if kind == "expect_column_values_to_be_of_type":
        # Judged on the column's dtype, which a subset of rows keeps; object columns
        # (values of mixed types) are judged value by value: not translated.
        return None if pd.api.types.is_object_dtype(dtype) else ("false", [])
    if kind == "expect_column_values_to_be_between":
        return _between_sql(c, dtype, kw)
    if not isinstance(dtype, pd.StringDtype):
        return None
    if kind == "expect_column_values_to_be_in_set":
        values = kw["value_set"]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return None
        return f"{c} is not null and not list_contains(?::varchar[], {c})", [values]
    if kind == "expect_column_values_to_match_regex":
        regex = kw["regex"]
        if not isinstance(regex, str) or _PYTHON_ONLY_REGEX.search(regex):
            return None
        return f"{c} is not null and (not regexp_matches({c}, ?) or regexp_matches({c}, '{_NOT_PRINTABLE_ASCII}'))", [regex]
    return None


def _empty_column_sql(kind: str, kw: dict[str, Any], empty: set[str]) -> tuple[str, list[Any]] | None:
    if kind == "expect_column_values_to_not_be_null":
        return "true", []
    if kind == "expect_compound_columns_to_be_unique":
        return None
    if kind == "expect_column_pair_values_a_to_be_greater_than_b" and kw.get("ignore_row_if") != "either_value_is_missing":
        return None
    return "false", []


def _between_sql(c: str, dtype, kw: dict[str, Any]) -> tuple[str, list[Any]] | None:
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if not _is_numpy_ordered(dtype):
        return None
    dated = pd.api.types.is_datetime64_ns_dtype(dtype)
    bounds: list[Any] = []
    for bound in (lo, hi):
        if bound is None:
            continue
        if dated and isinstance(bound, (pd.Timestamp, dt.datetime)) and bound.tzinfo is None:
            bounds.append(pd.Timestamp(bound).to_pydatetime())
        elif not dated and isinstance(bound, (int, float, np.integer, np.floating)) and not isinstance(bound, bool):
            bounds.append(float(bound))
        else:
            return None
    parts = []
    if lo is not None:
        parts.append(f"{c} {'<=' if kw.get('strict_min') else '<'} ?")
    if hi is not None:
        parts.append(f"{c} {'>=' if kw.get('strict_max') else '>'} ?")
    if not parts:
        return None
    return f"{c} is not null and ({' or '.join(parts)})", bounds


def _is_numpy_ordered(dtype) -> bool:
    """Numbers (numpy's, or pandas' nullable ones) and nanosecond timestamps: the dtypes
    DuckDB compares as GE's pandas engine does."""
    if pd.api.types.is_bool_dtype(dtype):
        return False
    return pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype) or pd.api.types.is_datetime64_ns_dtype(dtype)


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def row_predicate(exp: dict[str, Any]) -> RowPredicate | None:
    """The expectation as a DuckDB predicate, or None when it is not one `RowPredicate`
    translates (its type, or an option such as `mostly` or a row condition)."""
    allowed = _TRANSLATED_KWARGS.get(exp["type"])
    kwargs = exp.get("kwargs") or {}
    if allowed is None or not set(kwargs) <= allowed:
        return None
    regex = kwargs.get("regex")
    if regex is not None and (not isinstance(regex, str) or _PYTHON_ONLY_REGEX.search(regex)):
        return None
    return RowPredicate(exp["type"], dict(kwargs))


_POSITION = "__needseg_position"
_GATE_ROWS = "needseg_gate_rows"  # the view `mark_rows` computes the predicates over


def mark_rows(con, frame: pd.DataFrame, predicates: list[RowPredicate], parameters: dict[str, Any]) -> list[np.ndarray] | None:
    """For each predicate, the positions of the rows it marks (one DuckDB query over every
    row); None when a predicate does not apply to this frame or does not run."""
    import duckdb

    parts, bound = [], []
    for i, predicate in enumerate(predicates):
        sql = predicate.sql(frame, parameters)
        if sql is None:
            log.info("no DuckDB predicate for %s%s on this frame", predicate.kind, predicate.columns())
            return None
        parts.append(f"coalesce(({sql[0]}), false) as m{i}")
        bound += sql[1]
    if not parts:
        return []
    columns = sorted({c for p in predicates for c in p.columns()})
    view = frame[columns].assign(**{_POSITION: np.arange(len(frame), dtype="int64")})
    flags = ", ".join(f"m{i}" for i in range(len(parts)))
    any_flag = " or ".join(f"m{i}" for i in range(len(parts)))
    query = (
        f"select {_POSITION}, {flags} from (select {_POSITION}, {', '.join(parts)} from {_GATE_ROWS}) where {any_flag} order by {_POSITION}"
    )
    con.register(_GATE_ROWS, view)
    try:
        found = con.execute(query, bound).fetchnumpy()
    except duckdb.Error as exc:
        log.info("row predicates do not run: %s", exc)
        return None
    finally:
        con.unregister(_GATE_ROWS)
    positions = np.asarray(found[_POSITION], dtype="int64")
    return [positions[np.asarray(found[f"m{i}"], dtype=bool)] for i in range(len(parts))]


def _is_in(values: pd.Series, allowed) -> np.ndarray:
    """`values.isin(allowed)` as a numpy mask; Arrow-backed text through pyarrow's hash
    lookup (pandas' own makes a Python object of every allowed value on each call)."""
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
        import pyarrow as pa
        import pyarrow.compute as pc

        array = pa.array(values.array)
        wanted = pa.array([v for v in allowed if isinstance(v, str)], type=array.type)
        return pc.fill_null(pc.is_in(array, value_set=wanted), False).to_numpy(zero_copy_only=False)
    return values.isin(pd.Index(list(allowed))).to_numpy()


def _positions(index_list: list) -> list[int]:
    return [int(i) if isinstance(i, (int, np.integer)) else int(i.get("index", i)) for i in index_list]


def _whole_frame_counts(r, frame: pd.DataFrame) -> None:
    """Restate a result GE computed on some rows for every row of `frame`: the rows judged
    and missing (GE's own definitions, computed over the whole frame) and the shares, as
    GE's `_format_map_output` computes them. The failing rows and values need no change:
    every failing row was among the rows judged."""
    result = r.result
    if not isinstance(result, dict) or "element_count" not in result:
        return
    cfg = r.expectation_config
    kw = cfg.kwargs
    total = len(frame)
    unexpected = result.get("unexpected_count") or 0
    result["element_count"] = total
    if "missing_count" not in result:
        result["unexpected_percent"] = unexpected / total * 100 if total else None
        return
    if "column_list" in kw:
        nulls = frame[[c for c in kw["column_list"]]].isna()
        how = kw.get("ignore_row_if", "all_values_are_missing")
        missing = int(
            nulls.all(axis=1).sum() if how == "all_values_are_missing" else nulls.any(axis=1).sum() if how == "any_value_is_missing" else 0
        )
    elif "column_A" in kw:
        a, b = frame[kw["column_A"]].isna(), frame[kw["column_B"]].isna()
        how = kw.get("ignore_row_if", "both_values_are_missing")
        missing = int((a | b).sum() if how == "either_value_is_missing" else (a & b).sum() if how == "both_values_are_missing" else 0)
    else:
        missing = int(frame[kw["column"]].isna().sum())
    judged = total - missing
    result["missing_count"] = missing
    result["missing_percent"] = missing / total * 100 if total else None
    result["unexpected_percent_total"] = unexpected / total * 100 if total else None
    share = unexpected / judged * 100 if judged > 0 else None
    result["unexpected_percent_nonmissing"] = share
    result["unexpected_percent"] = share


def _cross_check(gate: QualityGate, table: str, frame: pd.DataFrame, parameters: dict[str, Any], texts, result: GateResult) -> None:
    """Validate `frame` again with GE judging every row, and raise if the gate's answer
    differs in any row problem, file failure, unknown account or validation entry."""
    if gate._reference is None:
        gate._reference = QualityGate(gate.suites_dir, prefilter=False)
    expected = gate._reference.validate(table, frame, parameters, texts)
    differences = []
    # Every row GE fails must be one the expectation's predicate marks.
    checked = validated_frame(frame.reset_index(drop=True), TABLES[table])
    marked = mark_rows(gate._connection(), checked, gate._predicates[table], parameters)
    if marked is None:
        differences.append("the row predicates did not run")
    else:
        by_check: dict[tuple[str, str | None], set[int]] = {}  # two of a kind on a column: either marks
        for predicate, rows in zip(gate._predicates[table], marked, strict=True):
            by_check.setdefault((predicate.kind, _column_of(predicate.kwargs)), set()).update(rows.tolist())
        for (kind, column), rows in by_check.items():
            missed = {p.index for p in expected.row_problems if p.check == kind and p.column == column} - rows
            if missed:
                differences.append(f"{kind}({column}) does not mark rows {sorted(missed)[:10]} GE fails")
    if sorted(map(repr, result.row_problems)) != sorted(map(repr, expected.row_problems)):
        differences.append("row problems")
    if result.failures_by_file != expected.failures_by_file:
        differences.append(f"file failures {result.failures_by_file} != {expected.failures_by_file}")
    if result.unknown_account_rows != expected.unknown_account_rows:
        differences.append("unknown accounts")
    mine = {_entry_key(e): _comparable(e) for e in result.document["results"]}
    theirs = {_entry_key(e): _comparable(e) for e in expected.document["results"]}
    if mine != theirs:
        differences += [f"{k}: {mine.get(k)} != {theirs.get(k)}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    if differences:
        raise AssertionError(f"{table}: the DuckDB-marked validation differs from GE on every row: " + "; ".join(differences)[:4000])


def _comparable(entry: dict[str, Any]) -> str:
    return json.dumps({"success": entry.get("success"), "result": entry.get("result")}, sort_keys=True, default=str)


def shift_files(document: dict[str, Any], offset: int) -> dict[str, Any]:
    """A group's validation result with its file positions moved by `offset` (the files of
    earlier groups of the table come first)."""
    if offset:
        for entry in document.get("results") or []:
            result = entry.get("result") or {}
            if "needseg_file_index" in result:
                result["needseg_file_index"] += offset
            for row in result.get("needseg_unexpected_rows") or []:
                row["file_index"] = row.get("file_index", 0) + offset
    return document


_SUMMED = ("element_count", "missing_count", "unexpected_count")
_LISTS = {"partial_unexpected_list": 20, "unexpected_list": ROWS_KEPT_PER_EXPECTATION, "needseg_unexpected_rows": ROWS_KEPT_PER_EXPECTATION}
# Positions in one group's frame: they mean nothing across groups (file and line do).
_POSITIONS = ("unexpected_index_list", "partial_unexpected_index_list", "unexpected_index_query")


def merge_documents(first: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    """One table's validation result from the results of its groups of files: an expectation
    judged over all rows has one entry, its counts summed and its first failing values kept;
    one judged per file keeps an entry per file."""
    if first is None:
        return more
    results = first.setdefault("results", [])
    index = {_entry_key(e): e for e in results if "needseg_file_index" not in (e.get("result") or {})}
    for entry in more.get("results") or []:
        key = _entry_key(entry)
        if "needseg_file_index" in (entry.get("result") or {}) or key not in index:
            results.append(entry)
            index.setdefault(key, entry)
            continue
        _merge_entry(index[key], entry)
    restate(first)
    return first


def _entry_key(entry: dict[str, Any]) -> str:
    config = entry.get("expectation_config") or {}
    kwargs = {k: v for k, v in (config.get("kwargs") or {}).items() if k not in ("value_set", "batch_id")}
    return json.dumps([config.get("type"), kwargs], sort_keys=True, default=str)


def _merge_entry(into: dict[str, Any], entry: dict[str, Any]) -> None:
    into["success"] = bool(into.get("success")) and bool(entry.get("success"))
    stages = {(e.get("meta") or {}).get("needseg_stage") for e in (into, entry)} - {None}
    if stages:  # checked by the parser in one group and by GE in another: both
        into.setdefault("meta", {})["needseg_stage"] = "parse and gate" if len(stages) > 1 else stages.pop()
    if (entry.get("exception_info") or {}).get("raised_exception"):
        into["exception_info"] = entry["exception_info"]
    mine, theirs = into.setdefault("result", {}), entry.get("result") or {}
    for key in _SUMMED:
        if key in theirs:
            mine[key] = (mine.get(key) or 0) + (theirs[key] or 0)
    for key, kept in _LISTS.items():
        if key in theirs:
            mine[key] = ((mine.get(key) or []) + list(theirs[key]))[:kept]
    if "partial_unexpected_counts" in theirs:
        mine["partial_unexpected_counts"] = _merged_counts(mine.get("partial_unexpected_counts") or [], theirs["partial_unexpected_counts"])
    for key in _POSITIONS:
        mine.pop(key, None)
    _merge_observed(mine, theirs, bool(entry.get("success")))
    _restate_shares(mine)


def _merged_counts(first: list[dict[str, Any]], more: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: dict[str, list] = {}
    for item in [*first, *more]:
        key = json.dumps(item.get("value"), default=str)
        counts.setdefault(key, [item.get("value"), 0])[1] += item.get("count") or 0
    ranked = sorted(counts.values(), key=lambda vc: -vc[1])[:20]
    return [{"value": v, "count": c} for v, c in ranked]


def _merge_observed(mine: dict[str, Any], theirs: dict[str, Any], their_success: bool) -> None:
    if "observed_value" in theirs:
        if isinstance(mine.get("observed_value"), int) and isinstance(theirs["observed_value"], int):
            mine["observed_value"] += theirs["observed_value"]  # a row count
        elif not their_success:
            mine["observed_value"] = theirs["observed_value"]
    elif mine.get("unexpected_count"):
        mine.pop("observed_value", None)  # failing rows counted: a dtype observed elsewhere says nothing


def _restate_shares(result: dict[str, Any]) -> None:
    """The percentages of summed counts."""
    total = result.get("element_count")
    if not total:
        return
    missing = result.get("missing_count") or 0
    if "missing_percent" in result:
        result["missing_percent"] = 100.0 * missing / total
    if "unexpected_count" in result:
        judged = total - missing
        share = 100.0 * result["unexpected_count"] / judged if judged else None
        result["unexpected_percent"] = share
        if "unexpected_percent_nonmissing" in result:
            result["unexpected_percent_nonmissing"] = share
        if "unexpected_percent_total" in result:
            result["unexpected_percent_total"] = 100.0 * result["unexpected_count"] / total


def restate(document: dict[str, Any]) -> None:
    """Set a validation result's success and statistics from its entries."""
    results = document.get("results") or []
    successful = sum(1 for e in results if e.get("success"))
    document["success"] = successful == len(results)
    document["statistics"] = {
        "evaluated_expectations": len(results),
        "successful_expectations": successful,
        "unsuccessful_expectations": len(results) - successful,
        "success_percent": 100.0 * successful / len(results) if results else None,
    }


def add_parse_results(
    document: dict[str, Any],
    table: Table,
    problems: list[tuple[int, Problem]],
    rows_checked: int,
    scales: dict[tuple[str, float, float, str], tuple[list[int], int]],
) -> None:
    """Count the parser's findings in a table's validation result, under the expectation each
    one breaks, so the kept result (and the data docs) show every row-level problem:

    - a cell that does not read as its column's type -> the column's type expectation;
    - a survey answer outside the scale a mapping declares -> a range expectation on the values
      as read, one per declared scale (`scales`: (column, min, max, mapping) -> (file
      indices, rows read)), listed even when every answer is on the scale;
    - a line that cannot be split into fields -> `needseg_rows_are_readable`.

    `problems` are (file index, parse problem); `rows_checked` the rows the gate validated.
    """
    results = document.setdefault("results", [])
    for entry in results:
        # A type expectation GE judged on the column's dtype: it covered every row checked
        # (counted, so results of several groups of files add up).
        if (entry.get("expectation_config") or {}).get("type") == TYPE_EXPECTATION:
            result = entry.setdefault("result", {})
            if result.get("element_count") is None and entry.get("success"):
                result.update(element_count=rows_checked, unexpected_count=0, unexpected_percent=0.0 if rows_checked else None)
    scale_columns = {column for column, *_ in scales}
    by_entry: dict[tuple, list[tuple[int, Problem]]] = {}
    for f, p in problems:
        if p.column is None:
            key: tuple = (READABLE_ROWS,)
        elif p.column in scale_columns and p.reason.startswith("out of range"):
            key = ("scale", p.column)
        else:
            key = (TYPE_EXPECTATION, p.column)
        by_entry.setdefault(key, []).append((f, p))

    def failing(entry: dict[str, Any], found: list[tuple[int, Problem]], checked: int) -> None:
        result = entry.setdefault("result", {})
        base = result.get("element_count")
        total = (base if base is not None else checked) + len(found)
        unexpected = (result.get("unexpected_count") or 0) + len(found)
        values = [p.value for _, p in found]
        result.update(
            element_count=total,
            unexpected_count=unexpected,
            unexpected_percent=100.0 * unexpected / total if total else None,
            partial_unexpected_list=(result.get("partial_unexpected_list") or []) + values[:20],
            needseg_unexpected_rows=(result.get("needseg_unexpected_rows") or [])
            + [{"file_index": f, "line": p.line, "value": p.value} for f, p in found[:ROWS_KEPT_PER_EXPECTATION]],
        )
        result.pop("observed_value", None)
        entry["success"] = entry.get("success", True) and not found
        entry.setdefault("meta", {})["needseg_stage"] = "parse and gate"

    for (kind, *rest), found in by_entry.items():
        if kind != TYPE_EXPECTATION:
            continue
        column = rest[0]
        entry = next(
            (
                e
                for e in results
                if (e.get("expectation_config") or {}).get("type") == TYPE_EXPECTATION
                and ((e.get("expectation_config") or {}).get("kwargs") or {}).get("column") == column
            ),
            None,
        )
        if entry is None:
            kind_of = table.column(column).kind if column in table.column_names else "text"
            entry = _entry(TYPE_EXPECTATION, {"column": column, "type_": PANDAS_TYPES[kind_of]}, {"reason": "wrong type"})
            results.append(entry)
        failing(entry, found, rows_checked)

    for (column, lo, hi, origin), (file_indices, rows) in scales.items():
        found = [(f, p) for f, p in by_entry.get(("scale", column), []) if f in file_indices]
        entry = _entry(
            "expect_column_values_to_be_between",
            {"column": column, "min_value": lo, "max_value": hi},
            {
                "reason": "outside the declared scale",
                "declared_in": origin,
                "notes": "the answers as read, on the scale the mapping declares (then rescaled to the contract's range)",
            },
        )
        entry["result"] = {"element_count": rows - len(found), "unexpected_count": 0}
        failing(entry, found, rows)
        entry["meta"]["needseg_stage"] = "parse"
        results.append(entry)

    if (READABLE_ROWS,) in by_entry:
        entry = _entry(READABLE_ROWS, {}, {"reason": "the line could not be read as a row"})
        failing(entry, by_entry[(READABLE_ROWS,)], rows_checked)
        entry["meta"]["needseg_stage"] = "parse"
        results.append(entry)
    restate(document)


# Batch-level expectations on a file's shape: every validated file has the same typed
# columns (the contract's), so these give each file the answer they give all files together.
_SHAPE_EXPECTATIONS = (
    "expect_column_to_exist",
    "expect_table_columns_to_match_set",
    "expect_table_columns_to_match_ordered_list",
    "expect_table_column_count_to_equal",
    "expect_table_column_count_to_be_between",
)


def _same_for_every_file(exp: dict[str, Any]) -> bool:
    """Whether a batch-level expectation judges every file of a table alike, so it can run
    once over all of them instead of once per file (a fixed cost of a GE validation each):
    the file's columns (the same typed frame for every file), and "at least one row" (only
    files with rows are validated, see the module's notes). An upper bound on rows, or any
    aggregate (a column's mean), is a file's own and runs per file."""
    kind, kwargs = exp["type"], exp.get("kwargs") or {}
    if kind in _SHAPE_EXPECTATIONS:
        return True
    if kind == "expect_table_row_count_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        return high is None and (low is None or (isinstance(low, (int, float)) and low <= 1))
    return False


def _batch_failure(r) -> str:
    """Why a batch-level expectation refuses a file."""
    cfg = r.expectation_config
    column = _column_of(cfg.kwargs)
    if r.exception_info and r.exception_info.get("raised_exception"):
        return f"{cfg.type}({column or ''}): could not be checked: {r.exception_info.get('exception_message')}"
    return f"{cfg.type}({column or ''}) failed: {_describe(cfg.type, cfg.kwargs, r.result)}"


def _is_run_value_set(exp: dict[str, Any]) -> bool:
    """An in-set expectation whose set is a run parameter (the known accounts, currencies)
    and nothing else (no `mostly`, no other options): checked by `in_run_value_set`."""
    kwargs = exp.get("kwargs") or {}
    value_set = kwargs.get("value_set")
    return (
        exp["type"] == "expect_column_values_to_be_in_set"
        and isinstance(value_set, dict)
        and "$PARAMETER" in value_set
        and set(kwargs) <= {"column", "value_set"}
    )


def _entry(
    kind: str, kwargs: dict[str, Any], meta: dict[str, Any], *, stage: str = "parse", success: bool = True, error: str | None = None
) -> dict[str, Any]:
    """A validation result entry in great_expectations' JSON shape, for a check needseg made
    itself (the parser's, or the gate's run value sets)."""
    return {
        "success": success,
        "expectation_config": {"type": kind, "kwargs": kwargs, "meta": meta},
        "result": {},
        "meta": {"needseg_stage": stage},
        "exception_info": {"raised_exception": error is not None, "exception_traceback": None, "exception_message": error},
    }


def _column_of(kwargs: dict[str, Any]) -> str | None:
    return (
        kwargs.get("column") or kwargs.get("column_A") or ",".join(c for c in kwargs.get("column_list") or [] if c != "_file_index") or None
    )


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
    if kind == TYPE_EXPECTATION:
        return f"a value of type {kwargs.get('type_')}"
    return kind


def _describe(kind: str, kwargs: dict[str, Any], result: dict[str, Any]) -> str:
    """What a batch-level expectation found, against what it expects."""
    observed = result.get("observed_value")
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if kind == "expect_table_row_count_to_be_between":
        wanted = f"at least {lo}" if hi is None else f"{lo} to {hi}" if lo is not None else f"at most {hi}"
        return f"{observed} rows, expected {wanted}"
    if kind == "expect_column_to_exist":
        return f"column {kwargs.get('column')!r} is missing"
    if kind == TYPE_EXPECTATION:
        return f"the column is {observed}, expected {kwargs.get('type_')}"
    if "observed_value" in result:
        shown = f"{observed:g}" if isinstance(observed, float) else str(observed)
        if lo is not None or hi is not None:
            bounds = " and ".join(x for x in (f"at least {lo}" if lo is not None else "", f"at most {hi}" if hi is not None else "") if x)
            return f"observed {shown}, expected {bounds}"
        return f"observed {shown}"
    return json.dumps(result, default=str)[:300]
