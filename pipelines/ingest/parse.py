"""Map a file's text columns onto a contract table and type every value, cell by cell.

The mapping's expressions run in DuckDB over the file's text, so a mapping can rename,
combine, recode or compute columns with plain SQL. Typing is strict and explicit: a
number uses the declared decimal separator, a date one of the declared formats; a cell
that does not parse becomes a `Problem` naming its line, column, value and what was
expected, and its row goes to quarantine rather than being guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from pipelines.contract import Table
from pipelines.errors import ConfigError
from pipelines.ingest.mapping import ReadOptions, TableMapping
from pipelines.ingest.readers import BatchRejected, RawFrame


@dataclass(frozen=True)
class Problem:
    line: int
    column: str | None
    value: str | None
    reason: str
    expected: str | None = None
    check: str = "parse"  # parse, or the quality-gate expectation that failed
    index: int | None = None  # row position in the frame the gate validated


@dataclass
class ParsedBatch:
    typed: pd.DataFrame  # contract columns, typed, plus `_line`; rows without problems only
    problems: list[Problem] = field(default_factory=list)
    records: dict[int, dict] = field(default_factory=dict)  # line -> the row as read
    rows_read: int = 0
    extra_columns: list[str] = field(default_factory=list)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _column_expression(mapping: TableMapping, column: str, source_columns: list[str]) -> str | None:
    """SQL for a contract column: the mapped column/expression, else the same-named column."""
    expr = mapping.columns.get(column)
    if expr is None:
        return _quote(column) if column in source_columns else None
    if expr in source_columns:
        return _quote(expr)
    return expr


def _used_columns(expressions: list[str], source_columns: list[str]) -> set[str]:
    used = set()
    for name in source_columns:
        pattern = re.compile(r'(?<![\w"])' + re.escape(name) + r'(?![\w"])|"' + re.escape(name.replace('"', '""')) + '"')
        if any(expr == name or pattern.search(expr) for expr in expressions):
            used.add(name)
    return used


def _number(text_sql: str, options: ReadOptions) -> str:
    cleaned = f"replace(replace(replace(trim({text_sql}), ' ', ''), chr(160), ''), chr(8239), '')"
    if options.thousands and options.thousands.strip():
        cleaned = f"replace({cleaned}, {_literal(options.thousands)}, '')"
    if options.decimal == ",":
        cleaned = f"replace({cleaned}, ',', '.')"
    return f"try_cast({cleaned} as double)"


def _timestamp(text_sql: str, options: ReadOptions) -> str:
    formats = "[" + ", ".join(_literal(f) for f in options.date_formats) + "]"
    return f"coalesce(try_strptime(trim({text_sql}), {formats}), try_cast(trim({text_sql}) as timestamp))"


def _describe_expected(kind: str, options: ReadOptions) -> str:
    if kind in ("number", "money"):
        return f"a number with decimal separator {options.decimal!r}"
    if kind == "integer":
        return "a whole number"
    if kind in ("date", "timestamp"):
        return "a date in one of the formats " + ", ".join(options.date_formats)
    return kind


def _unpivot(frame: pd.DataFrame, mapping: TableMapping, path) -> pd.DataFrame:
    u = mapping.unpivot
    missing = [c for c in u.columns if c not in frame.columns]
    if missing:
        raise BatchRejected(path, f"missing column(s) {', '.join(map(repr, missing))} that the mapping unpivots ({mapping.origin})", expectation="expect_column_to_exist")
    keep = [c for c in frame.columns if c not in u.columns]
    long = frame.melt(id_vars=keep, value_vars=list(u.columns), var_name=u.name_to, value_name=u.value_to)
    long[u.name_to] = long[u.name_to].map(lambda c: u.labels.get(c, c))
    if u.skip_empty:
        long = long[long[u.value_to].notna()]
    return long.sort_values(["_line", u.name_to], kind="stable").reset_index(drop=True)


def parse(raw: RawFrame, mapping: TableMapping, table: Table, path) -> ParsedBatch:
    options = mapping.read
    frame = raw.frame.copy()
    source_columns = [c for c in frame.columns if c != "_line"]

    # "Don't know", "-", "n/a" ...: declared missing values become empty cells.
    tokens = {t.strip().lower() for t in options.missing_values}
    if tokens - {""}:
        for c in source_columns:
            frame[c] = frame[c].map(lambda v: None if v is None or v.strip().lower() in tokens else v)

    records = {int(r["_line"]): {k: v for k, v in r.items() if k != "_line"} for r in frame.to_dict("records")}
    problems = [Problem(b.line, b.column, b.text[:200] if b.text else None, b.reason, b.expected) for b in raw.bad_rows]
    for b in raw.bad_rows:
        records.setdefault(b.line, {"_text": b.text})

    if mapping.unpivot:
        frame = _unpivot(frame, mapping, path)
        source_columns = [c for c in frame.columns if c != "_line"]

    con = duckdb.connect()
    try:
        con.register("src", frame)
        if mapping.aggregate:
            frame, source_columns = _aggregate(con, frame, mapping, path)
            con.register("src", frame)
            records = {int(r["_line"]): {k: v for k, v in r.items() if k != "_line"} for r in frame.to_dict("records")}

        expressions = {}
        for col in table.columns:
            expr = _column_expression(mapping, col.name, source_columns)
            if expr is not None:
                expressions[col.name] = expr
        missing = [c for c in table.required_columns if c not in expressions]
        if missing:
            raise BatchRejected(
                path,
                f"missing required column(s) {', '.join(missing)} for {table.name}; the file has "
                f"{', '.join(source_columns) or 'no columns'} (mapping: {mapping.origin})",
                rows_read=raw.rows_read,
                expectation="expect_column_to_exist",
            )
        extra = sorted(set(source_columns) - _used_columns(list(expressions.values()), source_columns))
        if mapping.aggregate:
            extra = []

        text_sql = []
        for name, expr in expressions.items():
            text_sql.append(f"cast(({expr}) as varchar) as {_quote(name)}")
        try:
            mapped = con.execute(f"select {', '.join(text_sql)}, _line from src").df()
        except duckdb.Error as exc:
            raise ConfigError(f"{mapping.origin}: a column expression for {table.name} does not run on {path}: {exc}") from None
        for name in table.column_names:
            if name not in mapped.columns:
                mapped[name] = None

        mapped = _recode(mapped, mapping)
        con.register("mapped", mapped)
        select, checks = [], []
        for col in table.columns:
            q = _quote(col.name)
            text = f"nullif(trim({q}), '')"
            if col.kind == "text":
                typed = f"lower({text})" if col.allowed else text
                bad = "false"
            elif col.kind in ("number", "money", "integer"):
                num = _number(text, options)
                scale = next((s for s in mapping.scales if col.name in s.items), None)
                if col.name in mapping.reverse:
                    lo, hi = (scale.minimum, scale.maximum) if scale else (col.minimum, col.maximum)
                    num = f"({lo} + {hi} - {num})"
                if scale:
                    lo, hi = scale.minimum, scale.maximum
                    low, high = col.minimum, col.maximum
                    checks.append(
                        (col.name, f"{num} is not null and ({num} < {lo} or {num} > {hi})", f"outside the declared scale {lo:g}-{hi:g}", f"a value from {lo:g} to {hi:g}")
                    )
                    num = f"({low} + ({num} - {lo}) * ({high} - {low}) / ({hi} - {lo}))"
                if col.kind == "integer":
                    typed = f"case when {num} = round({num}) then cast({num} as bigint) end"
                elif col.kind == "money":
                    typed = f"try_cast({num} as decimal(18, 4))"
                else:
                    typed = num
                bad = f"{text} is not null and {typed} is null"
            else:
                ts = _timestamp(text, options)
                typed = f"cast({ts} as date)" if col.kind == "date" else ts
                bad = f"{text} is not null and {ts} is null"
            select.append(f"{typed} as {q}")
            select.append(f"({bad}) as {_quote('_bad_' + col.name)}")
        for i, (_, cond, _, _) in enumerate(checks):
            select.append(f"({cond}) as {_quote(f'_scale_{i}')}")
        result = con.execute(f"select {', '.join(select)}, _line from mapped").df()
    finally:
        con.close()

    bad_any = pd.Series(False, index=result.index)
    for col in table.columns:
        flag = result.pop("_bad_" + col.name).fillna(False).astype(bool)
        if flag.any():
            for line, value in zip(result.loc[flag, "_line"], mapped.loc[flag.values, col.name], strict=False):
                problems.append(Problem(int(line), col.name, value, f"wrong type: {value!r} is not {_describe_expected(col.kind, options)}", _describe_expected(col.kind, options)))
            bad_any |= flag
    for i, (name, _, reason, expected) in enumerate(checks):
        flag = result.pop(f"_scale_{i}").fillna(False).astype(bool)
        if flag.any():
            for line, value in zip(result.loc[flag, "_line"], mapped.loc[flag.values, name], strict=False):
                problems.append(Problem(int(line), name, value, f"out of range: {value} is {reason}", expected))
            bad_any |= flag
    typed = result.loc[~bad_any].reset_index(drop=True)
    return ParsedBatch(typed=typed, problems=problems, records=records, rows_read=raw.rows_read if not mapping.aggregate else len(frame), extra_columns=extra)


def _recode(mapped: pd.DataFrame, mapping: TableMapping) -> pd.DataFrame:
    for column, table in mapping.values.items():
        if column in mapped.columns:
            lookup = {k.strip().lower(): v for k, v in table.items()}
            mapped[column] = mapped[column].map(lambda v, lookup=lookup: lookup.get(v.strip().lower(), v) if isinstance(v, str) else v)
    return mapped


def _aggregate(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, mapping: TableMapping, path) -> tuple[pd.DataFrame, list[str]]:
    agg = mapping.aggregate
    missing = [c for c in agg.by if c not in frame.columns]
    if missing:
        raise BatchRejected(path, f"missing column(s) {', '.join(map(repr, missing))} that the mapping groups by ({mapping.origin})", expectation="expect_column_to_exist")
    by = ", ".join(_quote(c) for c in agg.by)
    not_null = " and ".join(f"{_quote(c)} is not null" for c in agg.by)
    cols = ", ".join(f"cast(({expr}) as varchar) as {_quote(name)}" for name, expr in agg.columns.items())
    try:
        out = con.execute(f"select {cols}, min(_line) as _line from src where {not_null} group by {by} order by min(_line)").df()
    except duckdb.Error as exc:
        raise ConfigError(f"{mapping.origin}: the aggregate for {mapping.table} does not run on {path}: {exc}") from None
    out = out.astype(object).where(out.notna(), None)
    out["_line"] = out["_line"].astype("int64")
    # After aggregation the contract columns are named directly, so map them by name.
    return out, [c for c in out.columns if c != "_line"]
