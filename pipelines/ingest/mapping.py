"""Source mappings: how a source's files map onto the input contract (configuration, not code).

A source is a folder below the landing folder (`<landing>/<source>/<table>/<file>`). A
source whose files already use the canonical column names needs no mapping file; any
other source has `config/sources/<source>.yaml` (or one in NEEDSEG_MAPPINGS_DIR). The
format is documented in config/sources/README.md; in short:

    source: nordic_crm
    defaults:            # for every table of this source
      format: csv        # csv | parquet | jsonl | xlsx (default: from the file name)
      delimiter: ";"     # csv only; default: sniffed from the header line
      decimal: ","       # "." or ","
      thousands: " "     # optional thousands separator (groups of 3 digits; never equal to decimal)
      encoding: auto     # auto (UTF-8, with or without BOM, else CP1252) | utf-8 | utf-8-sig | utf-16 | latin-1 | cp1252
      date_formats: ["%d.%m.%Y"]   # tried first; ISO 8601 is always accepted
      missing_values: ["", "-", "n/a"]
    tables:
      order_lines:
        files: "*.csv"               # glob inside <landing>/<source>/order_lines/
        columns:                     # contract column: source column, or a DuckDB SQL expression
          order_id: Ordernummer
          net_price: "parse_number(Belopp) / parse_number(Antal)"   # see README: parse_number, parse_date
          currency: "'SEK'"           # a constant is an expression too
        values:                      # recode values before checking them
          status: {Aktiv: customer, Prospekt: prospect}
        scale: {min: 1, max: 7, items: [price, quality]}   # items on another scale (or a list of these)
        reverse: [price]                                   # reverse-coded items
        unpivot: ...                 # wide -> long, see README
        read_from: order_lines       # read another folder's files (a table's, or any folder: deals/)
        where: "Stage = 'Won'"       # keep only the rows of the file this is true for
        bad_values: {account_owner: "null"}   # optional column: a bad value becomes null (default: quarantine)
        aggregate: {by: [account_id], ...}                 # one row per key from those files

Anything not named falls back to the canonical column of the same name.

`load_mapping_file` reads the YAML within limits (size, aliases: `pipelines.safe_yaml`) and
checks every SQL expression against the sandbox's allow-list (`pipelines.ingest.sandbox`).
It checks the whole file before anything is read with it: unknown keys at
every level (with the closest known key), the type of every value, contract columns and
survey items that do not exist, and contradictions (thousands separator = decimal
separator). All problems are reported at once, each with the file and its key path, as a
`ConfigError`.

A source fed by an HTTP API (not by people dropping files) also has an `http` section; the
fetcher in `pipelines.ingest.http_source` turns it into ordinary JSON Lines landing files,
which the `tables` section (if any) then maps like any other file. In short (every key is
documented in config/sources/examples/crm_api.yaml):

    http:
      base_url: https://crm.example.com/api   # and/or base_url_env, or the connection's host
      connection_id: needseg_crm_api          # Airflow connection: host = base URL, password = token
      token_env: NEEDSEG_CRM_API_TOKEN        # bearer token from the environment
      page_size: 500
      timeout_seconds: 30
      retry: {max_attempts: 5, backoff_seconds: 1.0, max_backoff_seconds: 60}
      endpoints:
        accounts: {path: /v1/accounts}        # one per contract table, see HttpEndpoint
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from pipelines.contract import CURRENCY, EMAIL, ISO_COUNTRY, TABLES
from pipelines.errors import ConfigError
from pipelines.ingest.sandbox import refusal
from pipelines.safe_yaml import load_yaml
from pipelines.warehouse import in_memory

FORMATS = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".xlsx": "xlsx"}
ENCODINGS = ("auto", "utf-8", "utf-8-sig", "utf-16", "latin-1", "iso-8859-1", "cp1252")
# Thousands separators a number may be written with (spaces are always accepted too).
THOUSANDS_SEPARATORS = (" ", ".", ",", "'", "\u2019", "\u00a0", "\u202f")

_READ_KEYS = ("format", "delimiter", "decimal", "thousands", "encoding", "date_formats", "missing_values", "sheet", "header_row")
_TABLE_KEYS = (
    "files",
    "columns",
    "values",
    "scale",
    "reverse",
    "unpivot",
    "read_from",
    "aggregate",
    "where",
    "bad_values",
    "description",
    *_READ_KEYS,
)
# What happens to a row with a bad value in an optional column (`bad_values:`).
BAD_VALUE_POLICIES = ("quarantine", "null")


@dataclass(frozen=True)
class ReadOptions:
    format: str | None = None
    delimiter: str | None = None
    decimal: str = "."
    thousands: str | None = None
    encoding: str = "auto"
    date_formats: tuple[str, ...] = ()  # tried before ISO 8601, which is always accepted
    missing_values: tuple[str, ...] = ("",)
    sheet: str | int | None = None
    header_row: int = 1


@dataclass(frozen=True)
class Scale:
    minimum: float
    maximum: float
    items: tuple[str, ...]


@dataclass(frozen=True)
class Unpivot:
    """Turn a wide row into several long rows: one per listed column."""

    columns: tuple[str, ...]
    name_to: str  # contract column that receives the column's name (or its `labels` value)
    value_to: str  # contract column that receives the value
    labels: dict[str, str] = field(default_factory=dict)
    skip_empty: bool = True


@dataclass(frozen=True)
class Aggregate:
    """Build one row per key from another table's files (e.g. accounts from order lines)."""

    by: tuple[str, ...]  # source columns (after unpivot) identifying a row
    columns: dict[str, str]  # contract column: DuckDB aggregate expression


@dataclass(frozen=True)
class TableMapping:
    source: str
    table: str
    files: str = "*"
    columns: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    scales: tuple[Scale, ...] = ()
    reverse: tuple[str, ...] = ()
    unpivot: Unpivot | None = None
    read_from: str | None = None
    aggregate: Aggregate | None = None
    read: ReadOptions = ReadOptions()
    origin: str = "canonical columns (no mapping file)"
    where: str | None = None  # an SQL condition on the file's columns: rows it is not true for are left out
    # Optional column -> "null" (a bad value becomes null, the row loads and is counted) or
    # "quarantine" (the default: the row goes to quarantine).
    bad_values: dict[str, str] = field(default_factory=dict)

    @property
    def nulled_columns(self) -> frozenset[str]:
        return frozenset(c for c, policy in self.bad_values.items() if policy == "null")

    @property
    def folder_table(self) -> str:
        """The landing sub-folder whose files feed this table."""
        return self.read_from or self.table


@dataclass(frozen=True)
class HttpRetry:
    """How often and how patiently one request is retried (429, 5xx, connection errors)."""

    max_attempts: int = 5  # attempts per request, the first one included
    backoff_seconds: float = 1.0  # wait after the n-th failed attempt: backoff_seconds * 2**(n-1) ...
    max_backoff_seconds: float = 60.0  # ... capped at this; also the longest Retry-After honoured


@dataclass(frozen=True)
class HttpEndpoint:
    """One paginated list endpoint that feeds one contract table."""

    table: str
    path: str
    items_field: str = "data"  # where the page's records are (a dotted path for nested bodies)
    next_cursor_field: str = "next_cursor"  # the next page's cursor; null or missing ends the list
    cursor_param: str = "cursor"
    updated_since_param: str | None = "updated_since"  # None: the API has no incremental filter
    page_size_param: str | None = "limit"  # None: the API decides the page size
    watermark_field: str = "updated_at"  # record field whose maximum becomes the next updated_since


@dataclass(frozen=True)
class HttpSource:
    """Where and how to fetch a source from an HTTP API. Holds no secret: the token comes
    from `token_env` or the Airflow connection at fetch time."""

    endpoints: dict[str, HttpEndpoint]
    base_url: str | None = None
    base_url_env: str | None = None
    connection_id: str | None = None
    token_env: str | None = None
    page_size: int = 500
    timeout_seconds: float = 30.0
    retry: HttpRetry = HttpRetry()


@dataclass(frozen=True)
class SourceMapping:
    source: str
    tables: dict[str, TableMapping]
    path: Path | None = None
    description: str = ""
    http: HttpSource | None = None  # set when the source is fetched from an HTTP API
    # The file's `defaults:`, which also hold for tables it does not list (canonical columns).
    defaults: ReadOptions = ReadOptions()

    def for_table(self, table: str) -> TableMapping:
        if table in self.tables:
            return self.tables[table]
        return TableMapping(source=self.source, table=table, read=self.defaults, origin=self.origin)

    @property
    def origin(self) -> str:
        return str(self.path) if self.path else "canonical columns (no mapping file)"


class _Problems:
    """Every problem of one mapping file, so a user fixes them all in one go.

    Each check records what is wrong where (the key path, e.g. `tables.accounts.reverse`)
    and returns a usable stand-in, so the remaining keys are still checked; `raise_if_any`
    then stops with all of them.
    """

    def __init__(self, path: Path):
        self.path = path
        self.found: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.found.append(f"{where}: {message}" if where else message)

    def raise_if_any(self) -> None:
        if len(self.found) == 1:
            raise ConfigError(f"{self.path}: {self.found[0]}")
        if self.found:
            lines = "\n".join(f"  - {p}" for p in self.found)
            raise ConfigError(f"{self.path}: {len(self.found)} problems in the mapping:\n{lines}")


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _suggest(name: Any, allowed: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(name), list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _shown(value: Any) -> str:
    """A YAML value as the user would recognise it in the error."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (YAML reads unquoted yes/no/on/off/true/false as true or false: put text in quotes)"
    if isinstance(value, dict):
        return f"a mapping {value!r}"
    if isinstance(value, list):
        return f"a list {value!r}"
    return repr(value)


# Keys that belong elsewhere: a hint in the message instead of a bare "unknown".
_WHERE_KEYS_BELONG = {
    **dict.fromkeys(_READ_KEYS, "read settings go under 'defaults:' (for every table) or under 'tables.<table>:'"),
    **dict.fromkeys(TABLES, "tables go under 'tables:'"),
}


def _check_keys(raw: Any, allowed: Iterable[str], problems: _Problems, where: str, context: str = "setting") -> dict[str, Any]:
    """`raw` as a dict of its known keys; unknown ones are reported, each with the closest
    known key (or where it belongs), and left out."""
    allowed = sorted(allowed)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(where, f"expected a mapping of settings ({', '.join(allowed)}), not {_shown(raw)}")
        return {}
    unknown = [str(k) for k in raw if str(k) not in allowed]
    if unknown:
        named = []
        for key in unknown:
            hint = _suggest(key, allowed)
            if not hint and key in _WHERE_KEYS_BELONG and (where in ("", "defaults") or where.startswith("tables.")):
                hint = f" ({_WHERE_KEYS_BELONG[key]})"
            named.append(key + hint)
        problems.add(where or "top level", f"unknown {context}(s) {', '.join(named)}; allowed: {', '.join(allowed)}")
    return {str(k): v for k, v in raw.items() if str(k) in allowed}


def _text(value: Any, problems: _Problems, where: str, what: str = "a non-empty text") -> str | None:
    """A text value; numbers are taken as their text (YAML reads 1 and 1.5 as numbers)."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        problems.add(where, f"expected {what}, not {_shown(value)}")
        return None
    text = str(value)
    if not text.strip():
        problems.add(where, f"expected {what}, not an empty text")
        return None
    return text


def _texts(value: Any, problems: _Problems, where: str, what: str, allow_empty_items: bool = False) -> tuple[str, ...]:
    """A list of texts; a single text is a list of one (`reverse: price`)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]" if isinstance(value, list) else where
        if allow_empty_items and isinstance(item, str):
            out.append(item)
            continue
        text = _text(item, problems, at, what)
        if text is not None:
            out.append(text)
    return tuple(out)


def _contract_column(name: str, table: str, problems: _Problems, where: str, allowed: Iterable[str] | None = None, what: str = "") -> bool:
    """Is `name` a column of the contract table (or of `allowed`, a subset of it)?"""
    columns = TABLES[table].column_names
    candidates = list(allowed) if allowed is not None else columns
    if name in candidates:
        return True
    if name in columns:  # a column, but not one this setting applies to
        problems.add(where, f"{name!r} is not {what}; expected one of {', '.join(candidates)}")
    else:
        problems.add(where, f"{name!r} is not a column of {table}{_suggest(name, candidates)}; expected one of {', '.join(candidates)}")
    return False


def _whole_number(value: Any, problems: _Problems, where: str, minimum: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.add(where, f"expected a whole number of at least {minimum}, not {_shown(value)}")
        return None
    return value


_YEAR_DIRECTIVES = ("%Y", "%y", "%G")


def _date_format_problem(fmt: str) -> str | None:
    """Why DuckDB's strptime cannot use `fmt` as a date format, or None."""
    if "%" not in fmt:
        return "not a strftime format (use codes such as %d.%m.%Y for 31.12.2025)"
    if not any(d in fmt for d in _YEAR_DIRECTIVES):
        return "a format without a year (%Y or %y): such a date cannot be placed"
    with in_memory() as con:
        try:
            con.execute("select try_strptime('', ?)", [fmt])
        except duckdb.Error as exc:
            return f"not a format DuckDB's strptime reads ({str(exc).strip().splitlines()[0]})"
    return None


_MISSING = object()  # a read setting that was refused: left at its default


def _format_setting(value: Any, problems: _Problems, at: str) -> Any:
    if value not in set(FORMATS.values()):
        problems.add(at, f"expected one of csv, parquet, jsonl, xlsx, not {_shown(value)}")
        return _MISSING
    return value


def _delimiter_setting(value: Any, problems: _Problems, at: str) -> Any:
    text = value.replace("\\t", "\t") if isinstance(value, str) else value
    if not isinstance(text, str) or len(text) != 1 or text in ('"', "\n", "\r"):
        problems.add(at, f"expected one character such as ';', ',', '|' or '\\t' (tab), not {_shown(value)}")
        return _MISSING
    return text


def _decimal_setting(value: Any, problems: _Problems, at: str) -> Any:
    if value not in (".", ","):
        problems.add(at, f"expected '.' or ',', not {_shown(value)}")
        return _MISSING
    return value


def _thousands_setting(value: Any, problems: _Problems, at: str) -> Any:
    if value is not None and value not in THOUSANDS_SEPARATORS:
        shown = ", ".join(repr(s) for s in THOUSANDS_SEPARATORS)
        problems.add(at, f"expected one of {shown} (or nothing), not {_shown(value)}")
        return _MISSING
    return value


def _encoding_setting(value: Any, problems: _Problems, at: str) -> Any:
    if not isinstance(value, str) or value.lower() not in ENCODINGS:
        problems.add(at, f"expected one of {', '.join(ENCODINGS)}, not {_shown(value)}")
        return _MISSING
    return value.lower()


def _date_formats_setting(value: Any, problems: _Problems, at: str) -> Any:
    formats = _texts(value, problems, at, "a strftime format such as '%d.%m.%Y'")
    for i, fmt in enumerate(formats):
        problem = _date_format_problem(fmt)
        if problem:
            problems.add(f"{at}[{i}]" if isinstance(value, list) else at, f"{fmt!r} is {problem}")
    return formats


def _missing_values_setting(value: Any, problems: _Problems, at: str) -> Any:
    return _texts(value, problems, at, "a cell text meaning 'no value', such as '-' or 'n/a'", allow_empty_items=True)


def _sheet_setting(value: Any, problems: _Problems, at: str) -> Any:
    if isinstance(value, str) and value.strip():
        return value
    number = _whole_number(value, problems, at, 0)
    return _MISSING if number is None else number


def _header_row_setting(value: Any, problems: _Problems, at: str) -> Any:
    number = _whole_number(value, problems, at, 1)
    return _MISSING if number is None else number


_READ_SETTINGS = {
    "format": _format_setting,
    "delimiter": _delimiter_setting,
    "decimal": _decimal_setting,
    "thousands": _thousands_setting,
    "encoding": _encoding_setting,
    "date_formats": _date_formats_setting,
    "missing_values": _missing_values_setting,
    "sheet": _sheet_setting,
    "header_row": _header_row_setting,
}


def _read_settings(raw: dict[str, Any], problems: _Problems, where: str) -> dict[str, Any]:
    """The read settings `raw` sets, checked and in ReadOptions' types."""
    out: dict[str, Any] = {}
    for key in _READ_KEYS:
        if key in raw:
            value = _READ_SETTINGS[key](raw[key], problems, _join(where, key))
            if value is not _MISSING:
                out[key] = value
    return out


def _read_options(settings: dict[str, Any], base: ReadOptions, problems: _Problems, where: str) -> ReadOptions:
    """`settings` over `base`; a conflict is reported where it is introduced."""
    options = ReadOptions(**{**base.__dict__, **settings})
    introduced_here = where == "defaults" or "thousands" in settings or "decimal" in settings
    if introduced_here and options.thousands is not None and options.thousands == options.decimal:
        at = _join(where, "thousands" if "thousands" in settings else "decimal")
        problems.add(
            at,
            f"the thousands separator {options.thousands!r} is also the decimal separator, so '10{options.decimal}5' could "
            "be ten and a half or a hundred and five; declare different ones (e.g. decimal: ',' with thousands: ' ' or '.')",
        )
    return options


def _scales(raw: Any, table: str, problems: _Problems, where: str) -> tuple[Scale, ...]:
    expected = "{min: <number>, max: <number>, items: [<score column>, ...]}"
    scored = [c.name for c in TABLES[table].columns if c.minimum is not None and c.maximum is not None and c.kind != "text"]
    scales, seen = [], {}
    for i, spec in enumerate(raw if isinstance(raw, list) else [raw]):
        at = f"{where}[{i}]" if isinstance(raw, list) else where
        if not isinstance(spec, dict):
            problems.add(at, f"expected {expected}, not {_shown(spec)}")
            continue
        spec = _check_keys(spec, ("min", "max", "items"), problems, at)
        bounds = {}
        for key in ("min", "max"):
            value = spec.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.add(_join(at, key), f"expected a number, not {_shown(value)}" if key in spec else f"missing; expected {expected}")
            else:
                bounds[key] = float(value)
        if len(bounds) == 2 and bounds["max"] <= bounds["min"]:
            problems.add(at, f"max ({bounds['max']:g}) must be greater than min ({bounds['min']:g})")
        if "items" not in spec:
            problems.add(_join(at, "items"), f"missing; expected {expected}")
        items = _texts(spec.get("items"), problems, _join(at, "items"), "a score column") if "items" in spec else ()
        good = []
        for item in items:
            if _contract_column(item, table, problems, _join(at, "items"), scored, "a score (a column with a scale)"):
                if item in seen:
                    problems.add(_join(at, "items"), f"{item!r} is already on the scale at {seen[item]}")
                seen[item] = at
                good.append(item)
        if len(bounds) == 2 and bounds["max"] > bounds["min"]:
            scales.append(Scale(bounds["min"], bounds["max"], tuple(good)))
    return tuple(scales)


_PATTERN_WORDS = {
    ISO_COUNTRY: "an ISO 3166 alpha-2 country code such as SE",
    CURRENCY: "an ISO 4217 currency code such as SEK",
    EMAIL: "an e-mail address",
}


def _recoding(raw: Any, table: str, problems: _Problems, where: str) -> dict[str, dict[str, str]]:
    example = "{<column>: {<value in the file>: <contract value>}}, e.g. {status: {Aktiv: customer}}"
    if not isinstance(raw, dict):
        problems.add(where, f"expected {example}, not {_shown(raw)}")
        return {}
    values: dict[str, dict[str, str]] = {}
    for column, lookup in raw.items():
        at = _join(where, column)
        if not _contract_column(str(column), table, problems, where):
            continue
        if not isinstance(lookup, dict):
            problems.add(at, f"expected {{<value in the file>: <contract value>}}, e.g. {{Aktiv: customer}}, not {_shown(lookup)}")
            continue
        spec = TABLES[table].column(str(column))
        pairs = {}
        for source_value, target in lookup.items():
            key = _text(source_value, problems, at, "a value as the file has it")
            value = _text(target, problems, _join(at, source_value), f"the {column} value it stands for")
            if key is None or value is None:
                continue
            if spec.allowed and value.strip().lower() not in spec.allowed:
                problems.add(
                    _join(at, source_value), f"{value!r} is not a {column} the contract allows; expected one of {', '.join(spec.allowed)}"
                )
                continue
            if spec.pattern and not re.match(
                spec.pattern, value.strip().upper() if spec.pattern in (ISO_COUNTRY, CURRENCY) else value.strip()
            ):
                problems.add(
                    _join(at, source_value), f"{value!r} is not {_PATTERN_WORDS.get(spec.pattern, 'text matching ' + spec.pattern)}"
                )
                continue
            pairs[key] = value
        values[str(column)] = pairs
    return values


def _unpivot(raw: Any, problems: _Problems, where: str) -> Unpivot | None:
    expected = "{columns: [<wide column>, ...], name_to: <column>, value_to: <column>}"
    if not isinstance(raw, dict):
        problems.add(where, f"expected {expected}, not {_shown(raw)}")
        return None
    spec = _check_keys(raw, ("columns", "name_to", "value_to", "labels", "skip_empty"), problems, where)
    for key in ("columns", "name_to", "value_to"):
        if key not in spec:
            problems.add(_join(where, key), f"missing; expected {expected}")
    columns = _texts(spec["columns"], problems, _join(where, "columns"), "a column of the file") if "columns" in spec else ()
    name_to = _text(spec.get("name_to"), problems, _join(where, "name_to"), "a column name") if "name_to" in spec else None
    value_to = _text(spec.get("value_to"), problems, _join(where, "value_to"), "a column name") if "value_to" in spec else None
    if name_to and name_to == value_to:
        problems.add(where, f"name_to and value_to are both {name_to!r}; they must differ")
    labels: dict[str, str] = {}
    raw_labels = spec.get("labels")
    if raw_labels is not None and not isinstance(raw_labels, dict):
        problems.add(_join(where, "labels"), f"expected {{<wide column>: <name to write>}}, not {_shown(raw_labels)}")
    for column, label in (raw_labels or {}).items() if isinstance(raw_labels, dict) else ():
        at = _join(_join(where, "labels"), column)
        if str(column) not in columns:
            problems.add(
                at, f"{str(column)!r} is not one of the unpivoted columns{_suggest(column, columns)}; expected one of {', '.join(columns)}"
            )
        text = _text(label, problems, at, "the name to write for this column")
        if text is not None:
            labels[str(column)] = text
    skip_empty = spec.get("skip_empty", True)
    if not isinstance(skip_empty, bool):
        problems.add(_join(where, "skip_empty"), f"expected true or false, not {_shown(skip_empty)}")
        skip_empty = True
    if not (columns and name_to and value_to):
        return None
    return Unpivot(columns=columns, name_to=name_to, value_to=value_to, labels=labels, skip_empty=skip_empty)


def _aggregate(raw: Any, table: str, problems: _Problems, where: str) -> Aggregate | None:
    expected = "{by: [<source column>, ...], columns: {<contract column>: <aggregate expression>}}"
    if not isinstance(raw, dict):
        problems.add(where, f"expected {expected}, not {_shown(raw)}")
        return None
    spec = _check_keys(raw, ("by", "columns"), problems, where)
    for key in ("by", "columns"):
        if key not in spec:
            problems.add(_join(where, key), f"missing; expected {expected}")
    by = _texts(spec["by"], problems, _join(where, "by"), "a source column") if "by" in spec else ()
    columns = (
        _columns(spec.get("columns"), table, problems, _join(where, "columns"), "an aggregate SQL expression") if "columns" in spec else {}
    )
    return Aggregate(by=by, columns=columns) if by and columns else None


def _columns(
    raw: Any, table: str, problems: _Problems, where: str, what: str = "a column of the file or an SQL expression"
) -> dict[str, str]:
    if not isinstance(raw, dict):
        problems.add(where, f"expected {{<contract column>: <{what}>}}, not {_shown(raw)}")
        return {}
    columns = {}
    for name, expression in raw.items():
        if not _contract_column(str(name), table, problems, where):
            continue
        text = _expression(expression, problems, _join(where, name), what)
        if text is not None:
            columns[str(name)] = text
    return columns


def _expression(value: Any, problems: _Problems, where: str, what: str) -> str | None:
    """A column name or SQL expression, refused if it reaches beyond the row (sandbox)."""
    text = _text(value, problems, where, what)
    if text is None:
        return None
    problem = refusal(text)
    if problem:
        problems.add(where, f"refused expression {text!r}: {problem}")
        return None
    return text


def _bad_values(raw: Any, table: str, problems: _Problems, where: str) -> dict[str, str]:
    """`bad_values: {<optional column>: null | quarantine}`."""
    example = '{<optional column>: "null" or "quarantine"}, e.g. {account_owner: "null"}'
    if not isinstance(raw, dict):
        problems.add(where, f"expected {example}, not {_shown(raw)}")
        return {}
    optional = [c.name for c in TABLES[table].columns if not c.required]
    policies = {}
    for column, policy in raw.items():
        at = _join(where, column)
        if not _contract_column(str(column), table, problems, where, optional, "an optional column (a required one cannot be null)"):
            continue
        # YAML reads an unquoted null as None: that is the policy "null" too.
        chosen = "null" if policy is None else policy
        if chosen not in BAD_VALUE_POLICIES:
            problems.add(at, f"expected one of {', '.join(BAD_VALUE_POLICIES)}, not {_shown(policy)}")
            continue
        policies[str(column)] = chosen
    return policies


_FOLDER_NAME = re.compile(r"^[^/\\.\s][^/\\]*$")


def _read_from(raw: Any, problems: _Problems, where: str) -> str | None:
    """The folder (below the source's folder) a table's files are read from."""
    folder = _text(raw, problems, where, "a folder name (a contract table's or another, e.g. deals)")
    if folder is not None and not _FOLDER_NAME.match(folder):
        problems.add(where, f"{folder!r} is not a folder name (no '/', '\\', leading dot or space)")
        return None
    return folder


def _table_mapping(source: str, table: str, raw: Any, defaults: ReadOptions, path: Path, problems: _Problems) -> TableMapping:
    where = f"tables.{table}"
    raw = _check_keys(raw, _TABLE_KEYS, problems, where)
    files = "*"
    if "files" in raw:
        files = _text(raw["files"], problems, f"{where}.files", "a file-name pattern such as '*.csv'") or "*"
    columns = _columns(raw["columns"], table, problems, f"{where}.columns") if "columns" in raw else {}
    values = _recoding(raw["values"], table, problems, f"{where}.values") if "values" in raw else {}
    scales = _scales(raw["scale"], table, problems, f"{where}.scale") if "scale" in raw else ()
    reverse: tuple[str, ...] = ()
    if "reverse" in raw:
        scored = [c.name for c in TABLES[table].columns if c.minimum is not None and c.maximum is not None and c.kind != "text"]
        items = _texts(raw["reverse"], problems, f"{where}.reverse", "a score column")
        reverse = tuple(
            dict.fromkeys(
                i for i in items if _contract_column(i, table, problems, f"{where}.reverse", scored, "a score (a column with a scale)")
            )
        )
    unpivot = _unpivot(raw["unpivot"], problems, f"{where}.unpivot") if "unpivot" in raw else None
    aggregate = _aggregate(raw["aggregate"], table, problems, f"{where}.aggregate") if "aggregate" in raw else None
    read_from = _read_from(raw["read_from"], problems, f"{where}.read_from") if "read_from" in raw else None
    condition = _expression(raw["where"], problems, f"{where}.where", "an SQL condition on the file's columns") if "where" in raw else None
    bad_values = _bad_values(raw["bad_values"], table, problems, f"{where}.bad_values") if "bad_values" in raw else {}
    if "description" in raw and raw["description"] is not None and not isinstance(raw["description"], str):
        problems.add(f"{where}.description", f"expected a text, not {_shown(raw['description'])}")
    return TableMapping(
        source=source,
        table=table,
        files=files,
        columns=columns,
        values=values,
        scales=scales,
        reverse=reverse,
        unpivot=unpivot,
        read_from=read_from,
        aggregate=aggregate,
        read=_read_options(_read_settings(raw, problems, where), defaults, problems, where),
        origin=str(path),
        where=condition,
        bad_values=bad_values,
    )


_HTTP_KEYS = {"base_url", "base_url_env", "connection_id", "token_env", "page_size", "timeout_seconds", "retry", "endpoints"}
_RETRY_KEYS = {"max_attempts", "backoff_seconds", "max_backoff_seconds"}
_ENDPOINT_KEYS = {
    "path",
    "items_field",
    "next_cursor_field",
    "cursor_param",
    "updated_since_param",
    "page_size_param",
    "watermark_field",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _text_setting(
    raw: dict[str, Any], key: str, problems: _Problems, where: str, default: str | None, nullable: bool = False
) -> str | None:
    if key not in raw:
        return default
    value = raw[key]
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value.strip():
        expected = "a non-empty text or null" if nullable else "a non-empty text"
        problems.add(f"{where}.{key}", f"expected {expected}, not {_shown(value)}")
        return default
    return value.strip()


def _number_setting(
    raw: dict[str, Any], key: str, problems: _Problems, where: str, default: float, minimum: float, integer: bool = False
) -> float:
    if key not in raw:
        return default
    value = raw[key]
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) or value < minimum:
        problems.add(f"{where}.{key}", f"expected {kind} of at least {minimum:g}, not {_shown(value)}")
        return default
    return value


def _http_source(raw: Any, problems: _Problems) -> HttpSource | None:
    where = "http"
    if not isinstance(raw, dict):
        problems.add(where, f"expected a mapping of settings ({', '.join(sorted(_HTTP_KEYS))}), not {_shown(raw)}")
        return None
    raw = _check_keys(raw, _HTTP_KEYS, problems, where)
    base_url = _text_setting(raw, "base_url", problems, where, None)
    if base_url is not None and not base_url.lower().startswith(("http://", "https://")):
        problems.add(f"{where}.base_url", f"expected an http:// or https:// address, not {base_url!r}")
    env_names = {key: _text_setting(raw, key, problems, where, None) for key in ("base_url_env", "token_env")}
    for key, name in env_names.items():
        if name is not None and not _ENV_NAME.match(name):
            problems.add(f"{where}.{key}", f"expected the name of an environment variable, not {name!r}")
    connection_id = _text_setting(raw, "connection_id", problems, where, None)
    if not (base_url or env_names["base_url_env"] or connection_id):
        problems.add(where, "missing required setting 'base_url' (or 'base_url_env', or 'connection_id' whose host is the base URL)")
    if not (env_names["token_env"] or connection_id):
        problems.add(where, "missing required setting 'token_env' (or 'connection_id' whose password is the token)")

    retry_raw = _check_keys(raw.get("retry"), _RETRY_KEYS, problems, f"{where}.retry")
    retry = HttpRetry(
        max_attempts=int(_number_setting(retry_raw, "max_attempts", problems, f"{where}.retry", HttpRetry.max_attempts, 1, integer=True)),
        backoff_seconds=float(_number_setting(retry_raw, "backoff_seconds", problems, f"{where}.retry", HttpRetry.backoff_seconds, 0)),
        max_backoff_seconds=float(
            _number_setting(retry_raw, "max_backoff_seconds", problems, f"{where}.retry", HttpRetry.max_backoff_seconds, 0)
        ),
    )

    endpoints = {}
    if not raw.get("endpoints"):
        problems.add(where, "missing required setting 'endpoints' (at least one table: {path: /v1/...})")
    else:
        endpoints_raw = _check_keys(raw["endpoints"], TABLES, problems, f"{where}.endpoints")
        for table, spec in endpoints_raw.items():
            at = f"{where}.endpoints.{table}"
            spec = _check_keys(spec, _ENDPOINT_KEYS, problems, at)
            if "path" not in spec:
                problems.add(at, "missing required setting 'path' (the list endpoint, e.g. /v1/accounts)")
            endpoints[str(table)] = HttpEndpoint(
                table=str(table),
                path=str(_text_setting(spec, "path", problems, at, "")),
                items_field=str(_text_setting(spec, "items_field", problems, at, HttpEndpoint.items_field)),
                next_cursor_field=str(_text_setting(spec, "next_cursor_field", problems, at, HttpEndpoint.next_cursor_field)),
                cursor_param=str(_text_setting(spec, "cursor_param", problems, at, HttpEndpoint.cursor_param)),
                updated_since_param=_text_setting(
                    spec, "updated_since_param", problems, at, HttpEndpoint.updated_since_param, nullable=True
                ),
                page_size_param=_text_setting(spec, "page_size_param", problems, at, HttpEndpoint.page_size_param, nullable=True),
                watermark_field=str(_text_setting(spec, "watermark_field", problems, at, HttpEndpoint.watermark_field)),
            )
    return HttpSource(
        endpoints=endpoints,
        base_url=base_url,
        base_url_env=env_names["base_url_env"],
        connection_id=connection_id,
        token_env=env_names["token_env"],
        page_size=int(_number_setting(raw, "page_size", problems, where, HttpSource.page_size, 1, integer=True)),
        timeout_seconds=float(_number_setting(raw, "timeout_seconds", problems, where, HttpSource.timeout_seconds, 0.001)),
        retry=retry,
    )


_TOP_KEYS = ("source", "description", "defaults", "tables", "http")
_SOURCE_NAME = re.compile(r"^[^/\\\s.][^/\\]*$")


def load_mapping_file(path: Path) -> SourceMapping:
    """Read and check one mapping file: every key, at every level, before any file is read.

    Unknown keys (with the closest known one), values of the wrong type, columns and survey
    items the contract does not have, and settings that contradict each other (a thousands
    separator equal to the decimal one) are all reported at once, each with its key path.
    """
    raw = load_yaml(path, "mapping")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping with 'source' and 'tables', not {_shown(raw)}")
    problems = _Problems(path)
    raw = _check_keys(raw, _TOP_KEYS, problems, "")
    source = path.stem
    if raw.get("source") is not None:
        source = _text(raw["source"], problems, "source", "the source's folder name below the landing folder") or path.stem
        if not _SOURCE_NAME.match(source):
            problems.add("source", f"{source!r} is not a folder name (no '/', '\\', leading dot or space)")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        problems.add("description", f"expected a text, not {_shown(description)}")
    defaults_raw = _check_keys(raw.get("defaults"), _READ_KEYS, problems, "defaults", context="read setting")
    defaults = _read_options(_read_settings(defaults_raw, problems, "defaults"), ReadOptions(), problems, "defaults")
    tables = {}
    tables_raw = _check_keys(raw.get("tables"), TABLES, problems, "tables", context="table")
    for name, spec in tables_raw.items():
        tables[name] = _table_mapping(source, name, spec, defaults, path, problems)
    # An `http:` key with nothing under it is a half-written section, not "no HTTP source".
    http = _http_source(raw["http"] if raw["http"] is not None else {}, problems) if "http" in raw else None
    problems.raise_if_any()
    return SourceMapping(
        source=source,
        tables=tables,
        path=path,
        description=description if isinstance(description, str) else "",
        http=http,
        defaults=defaults,
    )


def load_mappings(mappings_dir: Path) -> dict[str, SourceMapping]:
    """Every mapping file in the folder, by source name. All files are checked before any
    error is raised, so one run names every broken mapping."""
    found: dict[str, SourceMapping] = {}
    errors: list[str] = []
    if not mappings_dir.exists():
        return found
    for path in sorted(mappings_dir.glob("*.y*ml")):
        try:
            mapping = load_mapping_file(path)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if mapping.source in found:
            errors.append(f"{path}: source {mapping.source!r} is already mapped by {found[mapping.source].path}")
            continue
        found[mapping.source] = mapping
    if errors:
        raise ConfigError("\n".join(errors))
    return found


def mapping_for(source: str, mappings: dict[str, SourceMapping]) -> SourceMapping:
    return mappings.get(source) or SourceMapping(source=source, tables={})


def file_format(path: Path, options: ReadOptions) -> str:
    if options.format:
        return options.format
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{path}: cannot tell the format from the name; expected one of "
            f"{', '.join(sorted(FORMATS))} or a 'format' in the source's mapping"
        )
    return fmt
