"""Map a file's text columns onto a contract table and type every value, cell by cell.

The mapping's expressions run in DuckDB over the file's text, so a mapping can rename,
combine, recode or compute columns with plain SQL. Two macros read text the way the
mapping declares it: `parse_number(x)` (decimal and thousands separators) and
`parse_date(x)` (the declared date formats, else ISO 8601).

Typing is strict and explicit: a number is digits with the declared decimal separator,
thousands grouped in threes by a space or the declared separator (no exponent, inf, nan or
underscores); a date is in one of the declared formats or ISO 8601 (an offset is converted
to UTC), in a plausible year. A cell that does not read so becomes a `Problem` naming its
line, column, value and what was expected, and its row goes to quarantine rather than
being guessed at. A mapping that names a column the file lacks, or an expression that does not
run, refuses the batch (`BatchRejected`), so the other files of the run still load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.contract import CURRENCY, ISO_COUNTRY, Table
from pipelines.ingest import sandbox
from pipelines.ingest.mapping import ReadOptions, TableMapping
from pipelines.ingest.readers import BatchRejected, RawFrame
from pipelines.warehouse import registered, sandboxed

# Codes written in capitals by the standard they come from; "se" and "sek" mean SE and SEK.
UPPER_CASE_PATTERNS = (ISO_COUNTRY, CURRENCY)
_NUMERIC_TYPES = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|FLOAT|DOUBLE|DECIMAL.*)$")
_MISSING_COLUMN = re.compile(r'Referenced column "?(.+?)"? not found')


@dataclass(frozen=True)
class Problem:
    line: int
    column: str | None
    value: str | None
    reason: str
    expected: str | None = None
    check: str = "parse"  # parse, or the quality-gate expectation that failed
    index: int | None = None  # row position in the frame the gate validated


class Records(Mapping):
    """Each input line's row as read (line -> {column: text}), built only when asked for.

    Quarantine needs the row as read for the few lines that go there; building a dict for
    every line of a 500,000-line file would cost seconds for nothing. `many()` fetches the
    rows of many lines in one go.
    """

    def __init__(self, frame: pd.DataFrame | None = None, extra: dict[int, dict] | None = None):
        self._frame = frame if frame is not None else pd.DataFrame({"_line": pd.Series([], dtype="int64")})
        self._extra = dict(extra or {})  # lines that could not be split into fields: {"_text": ...}
        self._positions: dict[int, int] | None = None
        self._columns = [c for c in self._frame.columns if c != "_line"]

    def _position(self) -> dict[int, int]:
        if self._positions is None:
            self._positions = dict(zip(self._frame["_line"].astype("int64").tolist(), range(len(self._frame)), strict=True))
        return self._positions

    def __getitem__(self, line: int) -> dict:
        if line not in self:
            raise KeyError(line)
        return self.many([line])[0]

    def __contains__(self, line: object) -> bool:
        return line in self._extra or line in self._position()

    def __iter__(self) -> Iterator[int]:
        yield from self._position()
        yield from (line for line in self._extra if line not in self._position())

    def __len__(self) -> int:
        return len(self._position()) + sum(1 for line in self._extra if line not in self._position())

    def rows_of(self, lines) -> tuple[pd.DataFrame, dict[int, dict]]:
        """The rows of `lines` as a frame (the columns as read and `_line`), and the lines
        kept as raw text ({line: {"_text": ...}}); selected in one vectorised step."""
        extra = {int(line): self._extra[int(line)] for line in lines if int(line) in self._extra}
        wanted = np.setdiff1d(np.asarray(lines, dtype="int64"), np.fromiter(extra, dtype="int64", count=len(extra)))
        rows = self._frame[self._frame["_line"].astype("int64").isin(wanted)]
        return rows.reset_index(drop=True), extra

    def many(self, lines: Iterable[int]) -> list[dict]:
        """The rows of `lines`, in that order ({} for a line not read)."""
        lines = list(lines)
        positions = self._position()
        found = [(i, positions[line]) for i, line in enumerate(lines) if line not in self._extra and line in positions]
        out: list[dict] = [self._extra.get(line, {}) for line in lines]
        if found:
            rows = self._frame.iloc[[p for _, p in found]]
            columns = []
            for name in self._columns:
                values = rows[name].tolist()
                if rows[name].dtype != object:  # NaN / NaT are no value, as None in a text frame
                    values = [None if pd.isna(v) else v for v in values]
                columns.append(values)
            for (i, _), values in zip(found, zip(*columns, strict=True), strict=True):
                out[i] = dict(zip(self._columns, values, strict=True))
        return out


@dataclass
class ParsedBatch:
    typed: pd.DataFrame  # contract columns, typed, plus `_line`; rows without problems only
    problems: list[Problem] = field(default_factory=list)
    records: Mapping[int, dict] = field(default_factory=Records)  # line -> the row as read
    rows_read: int = 0
    extra_columns: list[str] = field(default_factory=list)
    encoding: str | None = None
    # Each typed row's contract columns as text, as the file had them (before recoding):
    # quarantine shows a user the value they can find in their file, not our typed copy.
    texts: pd.DataFrame | None = None
    # The file has a header (or a schema) but no rows: an empty extract, loaded as 0 rows.
    header_only: bool = False
    rows_filtered: int = 0  # rows the mapping's `where:` left out (not counted as read)
    # Bad values of optional columns the mapping's `bad_values` policy set to null (the row loads).
    nulled: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the reader's notes (e.g. sheets not read)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _column_expression(mapping: TableMapping, column: str, source_columns: list[str]) -> str | None:
    """SQL for a contract column: the mapped column/expression, else the same-named column."""
    expr = mapping.columns.get(column)
    if expr is None:
        return _quote(column) if column in source_columns else None
    if expr in source_columns or sandbox.expression_problem(expr):
        # A name the sandbox would not run is a column name (missing if the file lacks it).
        return _quote(expr)
    return expr


def _used_columns(expressions: list[str], source_columns: list[str]) -> set[str]:
    used = set()
    for name in source_columns:
        pattern = re.compile(r'(?<![\w"])' + re.escape(name) + r'(?![\w"])|"' + re.escape(name.replace('"', '""')) + '"')
        if any(expr == name or expr == _quote(name) or pattern.search(expr) for expr in expressions):
            used.add(name)
    return used


# --- reading numbers and dates: exactly as the mapping declares them ----------------------

# Dates outside these years are misreadings ("26-08-31" read as the year 26), not history.
PLAUSIBLE_YEARS = (1900, 2100)
# Spaces group thousands in any locale: Excel writes no-break and narrow no-break spaces.
_SPACES = " \u00a0\u202f"
_MINUS = "\u2212"  # the typographic minus sign some locales write
# ISO 8601 as exports write it: a date, optionally a time (after T or a space) with optional
# seconds and fraction, optionally a UTC offset (Z, +hh, +hhmm, +hh:mm).
_ISO_DATE = r"\d{4}-\d{2}-\d{2}"
_ISO_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,9})?)?"
ISO_LOCAL = rf"{_ISO_DATE}(?:[T ]{_ISO_TIME})?"
ISO_ZONED = rf"({_ISO_DATE}[T ]{_ISO_TIME})(?:(Z)|([+-])([01]\d|2[0-3])(?::?([0-5]\d))?)"
_ISO_DAY_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
_ISO_SECOND_GLOB = _ISO_DAY_GLOB + "[ T][0-2][0-9]:[0-5][0-9]:[0-5][0-9]"
ISO_8601 = "ISO 8601 (2026-10-01, 2026-10-01 07:18:47 or 2026-10-01T07:18:47.123, with an optional offset Z or +02:00)"
# How DuckDB writes a number it computed (an expression's DOUBLE): '.' decimal, maybe an exponent.
_NATIVE_NUMBER = r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*"


def number_pattern(options: ReadOptions) -> str:
    """A number as the mapping declares numbers (an RE2 pattern for the whole cell).

    Digits, optionally grouped in threes by a space or the declared thousands separator,
    then optionally the declared decimal separator and digits. No exponent, no inf/nan, no
    underscores: '1e3' or '1_000' in an export is a symptom (Excel's display rounding, a
    programmer's literal), not a value to guess at.
    """
    separators = [f"[{_SPACES}]"]
    if options.thousands and options.thousands not in _SPACES:
        separators.append(f"[{options.thousands}]")
    grouped = "|".join(rf"\d{{1,3}}(?:{sep}\d{{3}})+" for sep in separators)
    decimal = f"[{options.decimal}]"
    blank = rf"[\s{_SPACES}]*"
    return rf"{blank}[+\-{_MINUS}]?(?:(?:\d+|{grouped})(?:{decimal}\d+)?|{decimal}\d+){blank}"


def _macros(con: duckdb.DuckDBPyConnection, options: ReadOptions) -> None:
    """The SQL functions that read numbers and dates, one definition for every use.

    `parse_number(x)` and `parse_date(x)` are also the functions mapping expressions call;
    the `needseg_*` ones are their parts. Every one returns NULL for text it does not read.
    """
    drop = _SPACES + "\t\r\n" + (options.thousands if options.thousands and options.thousands not in _SPACES else "")
    # translate(): the decimal separator becomes '.', the minus sign '-', separators go.
    cleaned = f"translate(t, {_literal(options.decimal + _MINUS + drop)}, '.-')"
    # Most cells are plain digits: a cheaper pattern and no clean-up first.
    plain = rf"[+-]?\d+(?:[{options.decimal}]\d+)?"
    plain_text = "t" if options.decimal == "." else "replace(t, ',', '.')"
    macros = {
        "needseg_number(t)": (
            f"case when regexp_full_match(t, {_literal(plain)}) then try_cast({plain_text} as double) "
            f"when regexp_full_match(t, {_literal(number_pattern(options))}) then try_cast({cleaned} as double) end"
        ),
        "needseg_native_number(t)": f"case when regexp_full_match(t, {_literal(_NATIVE_NUMBER)}) then try_cast(trim(t) as double) end",
        "parse_number(x)": "needseg_number(cast(x as varchar))",
        # An offset is subtracted to give UTC, as the HTTP source does with its watermarks.
        "needseg_utc(p)": (
            "try_cast(p.local as timestamp) - to_minutes(case when p.z = 'Z' then 0 else "
            "(case when p.sign = '-' then -1 else 1 end) * (cast(p.hh as bigint) * 60 + coalesce(try_cast(nullif(p.mm, '') as bigint), 0)) end)"
        ),
        "needseg_plausible(ts)": f"case when year(ts) between {PLAUSIBLE_YEARS[0]} and {PLAUSIBLE_YEARS[1]} then ts end",
        "needseg_date(t)": _date_sql(options, plausible=True),
        # The same without the year check: only to tell a user which year a refused date had.
        "needseg_unchecked_date(t)": _date_sql(options, plausible=False),
        "parse_date(x)": "needseg_date(cast(x as varchar))",
    }
    for signature, body in macros.items():
        con.execute(f"create or replace temp macro {signature} as {body}")


def _date_sql(options: ReadOptions, plausible: bool) -> str:
    """SQL reading the text `t` as a timestamp: the declared formats first, then ISO 8601
    (an offset converted to UTC); NULL for anything else and, if `plausible`, for a year
    outside PLAUSIBLE_YEARS. DuckDB evaluates a repeated expression inside CASE again, so
    each cell is read once: the year of an ISO text is checked on the text."""
    check = (lambda sql: f"needseg_plausible({sql})") if plausible else (lambda sql: sql)
    naive = [f for f in options.date_formats if "%z" not in f and "%Z" not in f]
    zoned = [f for f in options.date_formats if f not in naive]
    readers = []
    if naive:
        readers.append(check(f"try_strptime(t, [{', '.join(map(_literal, naive))}])"))
    if zoned:  # a declared format with a zone (%z, %Z): UTC, like an ISO offset
        readers.append(check(f"timezone('UTC', try_strptime(t, [{', '.join(map(_literal, zoned))}]))"))
    lo, hi = PLAUSIBLE_YEARS

    def local(text: str) -> str:
        cast = f"try_cast({text} as timestamp)"
        return f"(case when left({text}, 4) between '{lo}' and '{hi}' then {cast} end)" if plausible else cast

    zoned_pattern = _literal(f" *{ISO_ZONED} *")
    zoned_iso = check(f"needseg_utc(regexp_extract(t, {zoned_pattern}, ['local', 'z', 'sign', 'hh', 'mm']))")
    readers.append(
        # The shapes almost every export writes are told by a cheaper GLOB first; the
        # text is trimmed only where it has to be (parse_date() gets it untrimmed).
        f"case when t glob {_literal(_ISO_DAY_GLOB)} or t glob {_literal(_ISO_SECOND_GLOB)} then {local('t')} "
        f"when regexp_full_match(t, {_literal(f' *{ISO_LOCAL} *')}) then {local('trim(t)')} "
        f"when regexp_full_match(t, {zoned_pattern}) then {zoned_iso} end"
    )
    return f"coalesce({', '.join(readers)})" if len(readers) > 1 else readers[0]


def _describe_expected(kind: str, options: ReadOptions) -> str:
    if kind in ("number", "money"):
        d, grouped = options.decimal, options.thousands or " "
        thousands = f", thousands separator {options.thousands!r}" if options.thousands else ""
        return f"a number with decimal separator {d!r}{thousands}, e.g. -1234{d}5 or -1{grouped}234{d}5 (thousands in groups of 3 digits)"
    if kind == "integer":
        return "a whole number"
    if kind in ("date", "timestamp"):
        formats = [*options.date_formats, ISO_8601]
        return f"a date in one of the formats {', '.join(formats)}, in the years {PLAUSIBLE_YEARS[0]}-{PLAUSIBLE_YEARS[1]}"
    return kind


def _unpivot(frame: pd.DataFrame, mapping: TableMapping, path, raw: RawFrame) -> pd.DataFrame:
    u = mapping.unpivot
    missing = [c for c in u.columns if c not in frame.columns]
    if missing:
        raise BatchRejected(
            path,
            f"missing column(s) {', '.join(map(repr, missing))} that the mapping unpivots ({mapping.origin})",
            expectation="expect_column_to_exist",
        ).with_rows(raw)
    keep = [c for c in frame.columns if c not in u.columns]
    long = frame.melt(id_vars=keep, value_vars=list(u.columns), var_name=u.name_to, value_name=u.value_to)
    long[u.name_to] = long[u.name_to].map(lambda c: u.labels.get(c, c))
    if u.skip_empty:
        long = long[long[u.value_to].notna()]
    return long.sort_values(["_line", u.name_to], kind="stable").reset_index(drop=True)


def _normalise_missing(value: str) -> str:
    # Survey tools write "Don’t know" with a typographic apostrophe as often as "Don't know".
    return value.strip().lower().replace("\u2019", "'").replace("\u2018", "'")


# Python's str.strip() whitespace, so SQL recoding matches values exactly as Python would.
_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
_ROW = "__needseg_row"  # the frame's row order, kept through window functions and recoding
_TEXT = "__needseg_text__"  # prefix of the as-read text copies of the contract columns
_GIVEN = "__needseg_given__"  # prefix of a number or date column's text after recoding
_VALUE = "__needseg_value__"  # prefix of the number (before scale and range checks) or date read from it
_BAD = "__needseg_bad__"  # prefix of the flag: text given, but it does not read as its type
_YEAR = "__needseg_year__"  # prefix of the year an unreadable date's text would have had
_YEAR_TEXT = "__needseg_year_text__"  # prefix of that date's text (where it does not read)


class Sandbox:
    """One sandboxed DuckDB (no file or network access) with the reading macros, for every
    file a run parses: opening one and defining the macros costs ~0.1 s, which a run of 100
    monthly files paid 100 times. The macros are redefined when a file's read options
    differ from the previous file's. `parse` leaves nothing of a file behind in it."""

    def __init__(self) -> None:
        self._con: duckdb.DuckDBPyConnection | None = None
        self._options: ReadOptions | None = None

    def connection(self, options: ReadOptions) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = sandboxed()
        if options != self._options:
            _macros(self._con, options)
            self._options = options
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con, self._options = None, None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse(raw: RawFrame, mapping: TableMapping, table: Table, path, sandbox: Sandbox | None = None) -> ParsedBatch:
    """Map and type one file's rows. The work runs in one DuckDB query over the text frame
    (in the sandbox: no file or network access): the row filter (`where`), expressions,
    recoding, typing and the per-cell checks, so a large file costs seconds, not minutes.
    `sandbox` is the run's (one for many files); without it the file gets its own."""
    options = mapping.read
    problems = [Problem(b.line, b.column, b.text[:200] if b.text else None, b.reason, b.expected) for b in raw.bad_rows]
    records: Mapping[int, dict] = Records(raw.frame, {b.line: {"_text": b.text} for b in raw.bad_rows})
    header_only = raw.rows_read == 0
    reject = _rejecter(raw, mapping, path)
    frame = _missing_to_none(raw.frame, options)
    source_columns = [c for c in frame.columns if c != "_line"]
    if not len(frame) and not source_columns:
        # No row could be read (every line of a JSON Lines file broken): all go to quarantine.
        return ParsedBatch(
            typed=pd.DataFrame(columns=[*table.column_names, "_line"]),
            problems=problems,
            records=records,
            rows_read=raw.rows_read,
            encoding=raw.encoding,
            texts=pd.DataFrame(columns=table.column_names),
            header_only=header_only,
        )
    own = sandbox is None
    sandbox = sandbox or Sandbox()
    con = sandbox.connection(options)
    try:
        frame, filtered = _filter_rows(con, frame, mapping, source_columns, reject)
        rows_read = raw.rows_read - filtered
        if mapping.unpivot:
            frame, empty = _unpivot_lines(frame, mapping, path, raw)
            problems.extend(empty)
            source_columns = [c for c in frame.columns if c != "_line"]
        _register_source(con, frame, source_columns)
        if mapping.aggregate:
            frame, source_columns = _aggregate(con, frame, mapping, path)
            _register_source(con, frame, source_columns)
            records = Records(frame)
            problems = []  # the lines themselves are accounted for by the table they were read for
            rows_read = len(frame)
        expressions = _mapped_expressions(con, raw, mapping, table, source_columns, reject)
        extra = [] if mapping.aggregate else sorted(set(source_columns) - _used_columns(list(expressions.values()), source_columns))
        # A column mapped as it is: its text as read is the file's column, not copied out of DuckDB.
        as_read = {name: expr[1:-1].replace('""', '"') for name, expr in expressions.items() if _is_column(expr, source_columns)}
        result, flagged, checks = _typed(con, expressions, mapping, table, reject, set(as_read), len(frame))
        for name in table.column_names:
            if name in as_read:
                result[_TEXT + name] = frame[as_read[name]].reset_index(drop=True)
            elif name not in expressions:
                result[_TEXT + name] = pd.Series([None] * len(result), dtype=object)
    finally:
        if own:
            sandbox.close()
        else:
            con.execute("drop view if exists src")
            con.unregister("src_frame")
    typed, texts, nulled = _split_problems(result, flagged, checks, mapping, table, problems)
    return ParsedBatch(
        typed=typed,
        problems=problems,
        records=records,
        rows_read=rows_read,
        extra_columns=extra,
        encoding=raw.encoding,
        texts=texts,
        header_only=header_only,
        rows_filtered=filtered,
        nulled=nulled,
        notes=list(raw.notes),
    )


def _rejecter(raw: RawFrame, mapping: TableMapping, path):
    def reject(message: str, expectation: str) -> BatchRejected:
        if mapping.aggregate:  # the file's lines are accounted for by the table they were read for
            return BatchRejected(path, message, expectation=expectation)
        return BatchRejected(path, message, rows_read=raw.rows_read, expectation=expectation, raw=raw)

    return reject


def _missing_to_none(frame: pd.DataFrame, options: ReadOptions) -> pd.DataFrame:
    """ "Don't know", "-", "n/a" ...: declared missing values become empty cells."""
    tokens = {_normalise_missing(t) for t in options.missing_values}
    if not tokens - {""}:
        return frame
    frame = frame.copy()
    for c in (c for c in frame.columns if c != "_line"):
        frame[c] = frame[c].astype(object).map(lambda v: None if not isinstance(v, str) or _normalise_missing(v) in tokens else v)
    return frame


def _filter_rows(con, frame: pd.DataFrame, mapping: TableMapping, source_columns: list[str], reject) -> tuple[pd.DataFrame, int]:
    """The rows the mapping's `where:` is true for (NULL counts as false), and how many it left out."""
    if not mapping.where:
        return frame, 0
    _register_source(con, frame, source_columns)
    try:
        keep = con.execute(f"select {_ROW} from src where coalesce(({mapping.where}), false) order by {_ROW}").fetchnumpy()[_ROW]
    except duckdb.Error as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise reject(
            f"the mapping's where for {mapping.table} ({mapping.where!r}, {mapping.origin}) does not run on this file: {first_line}. "
            f"The file has {', '.join(source_columns) or 'no columns'}",
            "mapping",
        ) from None
    kept = frame.iloc[np.asarray(keep, dtype="int64")].reset_index(drop=True)
    return kept, len(frame) - len(kept)


def _unpivot_lines(frame: pd.DataFrame, mapping: TableMapping, path, raw: RawFrame) -> tuple[pd.DataFrame, list[Problem]]:
    lines_before = set(frame["_line"].astype(int))
    frame = _unpivot(frame, mapping, path, raw)
    # A line with nothing to unpivot makes no row: account for it in quarantine.
    empty = f"empty row: no value in any of the unpivoted columns ({', '.join(mapping.unpivot.columns)})"
    problems = [
        Problem(line, None, None, empty, "a value in at least one unpivoted column")
        for line in sorted(lines_before - set(frame["_line"].astype(int)))
    ]
    return frame, problems


def _mapped_expressions(con, raw: RawFrame, mapping: TableMapping, table: Table, source_columns: list[str], reject) -> dict[str, str]:
    """Contract column -> the SQL that gives it on this file; refuses a file that lacks a
    required column, or whose columns the mapping's expressions cannot use."""
    expressions: dict[str, str] = {}
    for col in table.columns:
        expr = _column_expression(mapping, col.name, source_columns)
        if expr is not None:
            expressions[col.name] = expr
    missing = [c for c in table.required_columns if c not in expressions]
    if missing:
        raise reject(
            f"missing required column(s) {', '.join(missing)} for {table.name}; the file has "
            f"{', '.join(source_columns) or 'no columns'} (mapping: {mapping.origin}){_delimiter_hint(raw, source_columns)}",
            "expect_column_to_exist",
        )
    ambiguous = sorted(name for name in raw.duplicate_columns if name in _used_columns(list(expressions.values()), [name]))
    if ambiguous and not mapping.aggregate:
        raise reject(
            f"column(s) {', '.join(map(repr, ambiguous))} appear more than once in the header, and the mapping "
            f"uses them ({mapping.origin}): rename them in the export or map the copy you mean ('{ambiguous[0]}.1' is the second)",
            "header",
        )
    _check_expressions(con, expressions, mapping, table, source_columns, reject, _delimiter_hint(raw, source_columns))
    return expressions


def _number_sql(col, mapping: TableMapping, native: set[str], checks: list) -> tuple[str, str]:
    """(the SQL reading a number column's text, the typed value) for one column; appends
    the declared scale's range check to `checks`."""
    given, value = _quote(_GIVEN + col.name), _quote(_VALUE + col.name)
    reader = "needseg_native_number" if col.name in native else "needseg_number"
    num = value
    scale = next((s for s in mapping.scales if col.name in s.items), None)
    if scale:
        lo, hi = scale.minimum, scale.maximum
        checks.append(
            (
                col.name,
                f"{num} is not null and ({num} < {lo} or {num} > {hi})",
                f"outside the declared scale {lo:g}-{hi:g}",
                f"a value from {lo:g} to {hi:g}",
            )
        )
    if col.name in mapping.reverse:
        # Reverse-coded: the scale's top answer means the least of this need.
        lo, hi = (scale.minimum, scale.maximum) if scale else (col.minimum, col.maximum)
        num = f"({lo} + {hi} - {num})"
    if scale:
        lo, hi = scale.minimum, scale.maximum
        num = f"({col.minimum} + ({num} - {lo}) * ({col.maximum} - {col.minimum}) / ({hi} - {lo}))"
    if col.kind == "integer":
        typed = f"case when {num} = round({num}) then try_cast({num} as bigint) end"
    elif col.kind == "money":
        typed = f"try_cast({num} as decimal(18, 4))"
    else:
        typed = num
    return f"{reader}({given}) as {value}", typed


def _column_sql(col, mapping: TableMapping, native: set[str], checks: list, rows: int) -> tuple[list[str], list[str], list[str], bool]:
    """(parsed-stage SQL, typed-stage SQL, select-stage SQL, whether the column is flagged
    when unreadable). Each stage names what the last one computed: a typed value is computed
    once, not again for its flag (DuckDB does not share a repeated expression)."""
    q = _quote(col.name)
    text = _trimmed(q, rows)
    if col.kind == "text":
        typed = f"lower({text})" if col.allowed else f"upper({text})" if col.pattern in UPPER_CASE_PATTERNS else text
        return [f"{typed} as {q}"], [q], [q], False
    given, value = _quote(_GIVEN + col.name), _quote(_VALUE + col.name)
    parsed = [f"{text} as {given}"]
    select = []
    if col.kind in ("number", "money", "integer"):
        reader, typed = _number_sql(col, mapping, native, checks)
        parsed.append(reader)
    else:
        parsed.append(f"needseg_date({given}) as {value}")
        typed = f"cast({value} as date)" if col.kind == "date" else value
        # A value that reads as a date, but in an implausible year: its text, whose year
        # `_years_of` tells (for those few cells only).
        select.append(f"case when {given} is not null and {value} is null then {given} end as {_quote(_YEAR_TEXT + col.name)}")
    select.append(q)
    select.append(f"({given} is not null and {q} is null) as {_quote(_BAD + col.name)}")
    return parsed, [f"{typed} as {q}", given, value], select, True


# From this many rows on, trim() is called only where it can change a text (`_trimmed`).
CONDITIONAL_TRIM_ROWS = 50_000


def _trimmed(q: str, rows: int = CONDITIONAL_TRIM_ROWS) -> str:
    """`nullif(trim(q), '')`; for `rows` >= CONDITIONAL_TRIM_ROWS with trim() (which copies
    every value) called only where it can change the text. DuckDB's trim() removes the space
    separators (Unicode category Zs) and nothing else; the only ASCII one is the space, so an
    ASCII text (as many bytes as characters) that neither starts nor ends with a space and
    is not empty is its own result. That saves ~1 CPU s per million cells, but the longer
    expression costs ~30 ms more to plan per file: a small file is typed with the plain
    one. `tests/test_parsing.py` checks every Zs character and the ASCII controls."""
    if rows < CONDITIONAL_TRIM_ROWS:
        return f"nullif(trim({q}), '')"
    return f"(case when {q} = '' or starts_with({q}, ' ') or ends_with({q}, ' ') or strlen({q}) <> length({q}) then nullif(trim({q}), '') else {q} end)"


def _is_column(expr: str, source_columns: list[str]) -> bool:
    return expr.startswith('"') and expr.endswith('"') and expr[1:-1].replace('""', '"') in source_columns


# A window function in a mapping expression: the rows' order is then kept by sorting.
_WINDOW = re.compile(r"\bover\s*\(", re.IGNORECASE)


def _typed(
    con, expressions: dict[str, str], mapping: TableMapping, table: Table, reject, texts_known: set[str], rows: int
) -> tuple[pd.DataFrame, list, list]:
    """One query: each contract column as text, recoded, read as its type, with a flag per
    cell that does not read so. Returns (result, flagged columns, scale checks). The text
    as read of each column is in the result, except those in `texts_known` (and those not
    mapped at all), which the caller adds. The rows come in the frame's order: DuckDB keeps
    the insertion order of a projection; a window function sorts them back."""
    # Plain columns come as text; derived ones may be typed already (a sum, a date).
    relation = con.sql("select " + ", ".join(f"({expr}) as {_quote(name)}" for name, expr in expressions.items()) + " from src limit 0")
    native = {name for name, kind in zip(relation.columns, relation.types, strict=False) if _NUMERIC_TYPES.match(str(kind))}
    # 1. each contract column as text, as the mapping makes it (NULL where unmapped)
    text_sql = [
        f"cast(({expressions[name]}) as varchar) as {_quote(name)}" if name in expressions else f"cast(null as varchar) as {_quote(name)}"
        for name in table.column_names
    ]
    # 2. recoded (`values`), keeping the text as read for quarantine
    recoded_sql = [f"{_recode_sql(mapping, name)} as {_quote(name)}" for name in table.column_names]
    recoded_sql += [f"{_quote(name)} as {_quote(_TEXT + name)}" for name in table.column_names]
    # 3. read as numbers and dates (each cell once); 4. typed, with a flag per unreadable cell
    parsed_sql, typed_sql, select, checks, flagged = [], [], [], [], []
    for col in table.columns:
        parsed, typed, selected, flag = _column_sql(col, mapping, native, checks, rows)
        parsed_sql += parsed
        typed_sql += typed
        select += selected
        if flag:
            flagged.append(col)
    for i, (_, cond, _, _) in enumerate(checks):
        select.append(f"({cond}) as {_quote(f'_scale_{i}')}")
    texts_sql = [_quote(_TEXT + name) for name in table.column_names if name in expressions and name not in texts_known]
    sql = (
        f"with mapped as (select {', '.join(text_sql)}, _line, {_ROW} from src), "
        f"recoded as (select {', '.join(recoded_sql)}, _line, {_ROW} from mapped), "
        f"parsed as (select {', '.join(parsed_sql + texts_sql)}, _line, {_ROW} from recoded), "
        f"typed as (select {', '.join(typed_sql + texts_sql)}, _line, {_ROW} from parsed) "
        f"select {', '.join(select + texts_sql)}, _line from typed"
    )
    if any(_WINDOW.search(expr) for expr in expressions.values()):
        sql += f" order by {_ROW}"
    try:
        result = con.sql(sql).to_arrow_table()
        dates = [col.name for col in table.columns if col.kind in ("date", "timestamp")]
        return _to_pandas(_years_of(con, result, dates)), flagged, checks
    except duckdb.Error as exc:
        raise reject(f"a column expression of the mapping ({mapping.origin}) fails on this file: {exc}", "mapping") from None


def _years_of(con, result: pa.Table, dates: list[str]) -> pa.Table:
    """`result` with, for each date column, the year its text has where it does not read as
    a date of a plausible year (NULL elsewhere), in place of that text: read in one query
    over the few such texts, not over every row."""
    for name in dates:
        texts = result.column(_YEAR_TEXT + name)
        years = pa.nulls(len(texts), pa.int64())
        if texts.null_count < len(texts):
            with registered(con, "needseg_year_texts", pa.table({"t": texts})) as view:
                years = con.sql(f"select year(needseg_unchecked_date(t)) as y from {view}").to_arrow_table().column("y")
            years = years.cast(pa.int64())
        position = result.column_names.index(_YEAR_TEXT + name)
        result = result.set_column(position, _YEAR + name, years)
    return result


def _split_problems(
    result: pd.DataFrame, flagged: list, checks: list, mapping: TableMapping, table: Table, problems: list[Problem]
) -> tuple[pd.DataFrame, pd.DataFrame, list[Problem]]:
    """(typed rows without problems, their texts as read, the values set to null by the
    mapping's `bad_values` policy); appends each cell that does not read as its type, or
    lies outside its declared scale, to `problems`."""
    options = mapping.read
    texts = result[[_TEXT + name for name in table.column_names]]
    texts.columns = table.column_names
    bad_any = np.zeros(len(result), dtype=bool)
    lines = result["_line"].to_numpy()
    nulled: list[Problem] = []
    for col in flagged:
        flag = result[_BAD + col.name].fillna(False).to_numpy(dtype=bool)
        if not flag.any():
            continue
        expected = _describe_expected(col.kind, options)
        years = result[_YEAR + col.name].to_numpy(dtype=object)[flag].tolist() if col.kind in ("date", "timestamp") else None
        found = []
        for i, (line, value) in enumerate(zip(lines[flag].tolist(), texts[col.name].to_numpy(dtype=object)[flag].tolist(), strict=True)):
            reason = f"wrong type: {value!r} is not {expected}"
            if years is not None and not pd.isna(years[i]):
                reason += f" (it reads as the year {int(years[i])})"
            found.append(Problem(int(line), col.name, value, reason, expected))
        if col.name in mapping.nulled_columns:
            nulled += found  # the typed value is null already
        else:
            problems += found
            bad_any |= flag
    for i, (name, _, reason, expected) in enumerate(checks):
        flag = result[f"_scale_{i}"].fillna(False).to_numpy(dtype=bool)
        if not flag.any():
            continue
        found = [
            Problem(int(line), name, value, f"out of range: {value} is {reason}", expected)
            for line, value in zip(lines[flag].tolist(), texts[name].to_numpy(dtype=object)[flag].tolist(), strict=True)
        ]
        if name in mapping.nulled_columns:
            result.loc[flag, name] = None
            nulled += found
        else:
            problems += found
            bad_any |= flag
    if mapping.unpivot:
        # One wide line is several rows here; a line loads whole or not at all.
        bad_any = np.isin(lines, np.unique(lines[bad_any]))
    if not bad_any.any():  # the usual file: every row typed, nothing to select
        return result[[*table.column_names, "_line"]], texts, nulled
    keep = ~bad_any
    typed = result.loc[keep, [*table.column_names, "_line"]].reset_index(drop=True)
    return typed, texts.loc[keep].reset_index(drop=True), nulled


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """DuckDB's result as pandas, through Arrow (several times faster than `.df()` for wide
    text results), with the types `.df()` gives: DECIMAL as float, DATE as datetime64."""
    fields = []
    for f in table.schema:
        if pa.types.is_decimal(f.type):
            fields.append(pa.field(f.name, pa.float64()))
        elif pa.types.is_date(f.type):
            fields.append(pa.field(f.name, pa.timestamp("us")))
        else:
            fields.append(f)
    return table.cast(pa.schema(fields)).to_pandas()


def _register_source(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, source_columns: list[str]) -> None:
    """`src`: the file's columns as VARCHAR (an empty or all-empty column too), `_line`, and
    the frame's row order."""
    con.register("src_frame", frame.assign(**{_ROW: np.arange(len(frame), dtype="int64")}))
    columns = ", ".join(f"cast({_quote(c)} as varchar) as {_quote(c)}" for c in source_columns)
    con.execute(
        f"create or replace temp view src as select {columns}{', ' if columns else ''}cast(_line as bigint) as _line, {_ROW} from src_frame"
    )


def _recode_sql(mapping: TableMapping, column: str) -> str:
    """`values:` recoding in SQL: matched trimmed and case-insensitively, others unchanged."""
    q = _quote(column)
    lookup = mapping.values.get(column)
    if not lookup:
        return q
    key = f"lower(trim({q}, {_literal(_WHITESPACE)}))"
    keys = {k.strip().lower(): v for k, v in lookup.items()}  # the last spelling of a key wins
    cases = " ".join(f"when {_literal(k)} then {_literal(v)}" for k, v in keys.items())
    return f"(case {key} {cases} else {q} end)"


def _delimiter_hint(raw: RawFrame, source_columns: list[str]) -> str:
    """One header "column" holding other separators is a delimiter problem, not a missing column."""
    if raw.delimiter is None or len(source_columns) != 1:
        return ""
    found = [d for d in (",", ";", "\t", "|") if d != raw.delimiter and d in source_columns[0]]
    if not found:
        return ""
    shown = found[0].replace("\t", "\\t")
    return f". The header was split on {raw.delimiter!r} but contains {found[0]!r}: declare 'delimiter: \"{shown}\"' in the mapping"


def _check_expressions(
    con, expressions: dict[str, str], mapping: TableMapping, table: Table, source_columns, reject, hint: str = ""
) -> None:
    """Each mapped expression must bind on this file: name the column or the SQL at fault
    (all of them in one statement first; one by one only to name the one that fails)."""
    if expressions:
        try:
            con.execute("select " + ", ".join(f"cast(({expr}) as varchar)" for expr in expressions.values()) + " from src limit 0")
            return
        except duckdb.Error:
            pass
    for name, expr in expressions.items():
        try:
            con.execute(f"select cast(({expr}) as varchar) from src limit 0")
        except duckdb.Error as exc:
            given = mapping.columns.get(name, expr)
            missing = _MISSING_COLUMN.search(str(exc))
            if missing:
                raise reject(
                    f"missing column {missing.group(1)!r}, which the mapping reads for {table.name}.{name} "
                    f"({given!r}, {mapping.origin}); the file has {', '.join(source_columns) or 'no columns'}{hint}",
                    "expect_column_to_exist",
                ) from None
            first_line = str(exc).strip().splitlines()[0]
            raise reject(
                f"the mapping's {table.name}.{name}: {given!r} is neither a column of this file nor an SQL expression "
                f"that runs on it ({first_line}; {mapping.origin}). The file has {', '.join(source_columns) or 'no columns'}",
                "mapping",
            ) from None


def _aggregate(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, mapping: TableMapping, path) -> tuple[pd.DataFrame, list[str]]:
    agg = mapping.aggregate
    missing = [c for c in agg.by if c not in frame.columns]
    if missing:
        raise BatchRejected(
            path,
            f"missing column(s) {', '.join(map(repr, missing))} that the mapping groups by ({mapping.origin})",
            expectation="expect_column_to_exist",
        )
    by = ", ".join(_quote(c) for c in agg.by)
    not_null = " and ".join(f"{_quote(c)} is not null" for c in agg.by)
    cols = ", ".join(f"cast(({expr}) as varchar) as {_quote(name)}" for name, expr in agg.columns.items())
    try:
        out = con.execute(f"select {cols}, min(_line) as _line from src where {not_null} group by {by} order by min(_line)").df()
    except duckdb.Error as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise BatchRejected(
            path,
            f"the mapping's aggregate for {mapping.table} does not run on this file ({first_line}; {mapping.origin})",
            expectation="mapping",
        ) from None
    out = out.astype(object).where(out.notna(), None)
    out["_line"] = out["_line"].astype("int64")
    # After aggregation the contract columns are named directly, so map them by name.
    return out, [c for c in out.columns if c != "_line"]
