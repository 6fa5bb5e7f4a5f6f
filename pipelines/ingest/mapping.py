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
      thousands: " "     # optional thousands separator to drop
      encoding: auto     # auto (UTF-8, with or without BOM, else CP1252) | utf-8 | utf-8-sig | utf-16 | latin-1 | cp1252
      date_formats: ["%d.%m.%Y", "%Y-%m-%d"]
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
        read_from: order_lines       # read another table's files (e.g. accounts from lines)
        aggregate: {by: [account_id], ...}                 # one row per key from those files

Anything not named falls back to the canonical column of the same name.

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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.contract import TABLES
from pipelines.errors import ConfigError

FORMATS = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".xlsx": "xlsx"}
ENCODINGS = ("auto", "utf-8", "utf-8-sig", "utf-16", "latin-1", "iso-8859-1", "cp1252")
DEFAULT_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")

_TABLE_KEYS = {
    "files", "columns", "values", "scale", "reverse", "unpivot", "read_from", "aggregate",
    "format", "delimiter", "decimal", "thousands", "encoding", "date_formats", "missing_values",
    "sheet", "header_row", "description",
}
_READ_KEYS = ("format", "delimiter", "decimal", "thousands", "encoding", "date_formats", "missing_values", "sheet", "header_row")


@dataclass(frozen=True)
class ReadOptions:
    format: str | None = None
    delimiter: str | None = None
    decimal: str = "."
    thousands: str | None = None
    encoding: str = "auto"
    date_formats: tuple[str, ...] = DEFAULT_DATE_FORMATS
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


def _fail(path: Path, where: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {message}")


def _read_options(raw: dict[str, Any], base: ReadOptions, path: Path, where: str) -> ReadOptions:
    opts = {k: raw[k] for k in _READ_KEYS if k in raw}
    if "format" in opts and opts["format"] not in set(FORMATS.values()):
        raise _fail(path, where, f"format {opts['format']!r} is not one of csv, parquet, jsonl, xlsx")
    if "encoding" in opts and str(opts["encoding"]).lower() not in ENCODINGS:
        raise _fail(path, where, f"encoding {opts['encoding']!r} is not one of {', '.join(ENCODINGS)}")
    if "decimal" in opts and opts["decimal"] not in (".", ","):
        raise _fail(path, where, f"decimal must be '.' or ',', not {opts['decimal']!r}")
    if "delimiter" in opts and (not isinstance(opts["delimiter"], str) or len(opts["delimiter"].replace("\\t", "\t")) != 1):
        raise _fail(path, where, f"delimiter must be one character, not {opts['delimiter']!r}")
    if "delimiter" in opts:
        opts["delimiter"] = opts["delimiter"].replace("\\t", "\t")
    if "encoding" in opts:
        opts["encoding"] = str(opts["encoding"]).lower()
    for key in ("date_formats", "missing_values"):
        if key in opts:
            value = opts[key]
            opts[key] = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
    if "header_row" in opts:
        opts["header_row"] = int(opts["header_row"])
    merged = {**base.__dict__, **opts}
    return ReadOptions(**merged)


def _table_mapping(source: str, table: str, raw: dict[str, Any], defaults: ReadOptions, path: Path) -> TableMapping:
    where = f"tables.{table}"
    if table not in TABLES:
        raise _fail(path, where, f"unknown table; the contract has {', '.join(TABLES)}")
    if not isinstance(raw, dict):
        raise _fail(path, where, "expected a mapping of settings")
    unknown = set(raw) - _TABLE_KEYS
    if unknown:
        raise _fail(path, where, f"unknown setting(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_TABLE_KEYS))}")
    contract_cols = set(TABLES[table].column_names)
    columns = {str(k): str(v) for k, v in (raw.get("columns") or {}).items()}
    for name in columns:
        if name not in contract_cols:
            raise _fail(path, f"{where}.columns.{name}", f"not a column of {table}; expected one of {', '.join(TABLES[table].column_names)}")
    values = {str(k): {str(a): str(b) for a, b in v.items()} for k, v in (raw.get("values") or {}).items()}
    scales = []
    raw_scales = raw.get("scale") or []
    for s in raw_scales if isinstance(raw_scales, list) else [raw_scales]:
        try:
            scale = Scale(float(s["min"]), float(s["max"]), tuple(s["items"]))
        except (KeyError, TypeError, ValueError):
            raise _fail(path, f"{where}.scale", "expected {min: <number>, max: <number>, items: [<column>, ...]}") from None
        if scale.maximum <= scale.minimum:
            raise _fail(path, f"{where}.scale", "max must be greater than min")
        for item in scale.items:
            if item not in contract_cols:
                raise _fail(path, f"{where}.scale", f"{item!r} is not a column of {table}")
        scales.append(scale)
    unpivot = None
    if raw.get("unpivot"):
        u = raw["unpivot"]
        try:
            unpivot = Unpivot(
                columns=tuple(u["columns"]),
                name_to=str(u["name_to"]),
                value_to=str(u["value_to"]),
                labels={str(a): str(b) for a, b in (u.get("labels") or {}).items()},
                skip_empty=bool(u.get("skip_empty", True)),
            )
        except (KeyError, TypeError):
            raise _fail(path, f"{where}.unpivot", "expected {columns: [...], name_to: <column>, value_to: <column>}") from None
    aggregate = None
    if raw.get("aggregate"):
        a = raw["aggregate"]
        try:
            by = a["by"]
            aggregate = Aggregate(by=tuple(by if isinstance(by, list) else [by]), columns={str(k): str(v) for k, v in a["columns"].items()})
        except (KeyError, TypeError, AttributeError):
            raise _fail(path, f"{where}.aggregate", "expected {by: [<source column>], columns: {<contract column>: <aggregate expression>}}") from None
    read_from = raw.get("read_from")
    if read_from is not None and read_from not in TABLES:
        raise _fail(path, f"{where}.read_from", f"unknown table {read_from!r}")
    return TableMapping(
        source=source,
        table=table,
        files=str(raw.get("files", "*")),
        columns=columns,
        values=values,
        scales=tuple(scales),
        reverse=tuple(raw.get("reverse") or ()),
        unpivot=unpivot,
        read_from=read_from,
        aggregate=aggregate,
        read=_read_options(raw, defaults, path, where),
        origin=str(path),
    )


_HTTP_KEYS = {"base_url", "base_url_env", "connection_id", "token_env", "page_size", "timeout_seconds", "retry", "endpoints"}
_RETRY_KEYS = {"max_attempts", "backoff_seconds", "max_backoff_seconds"}
_ENDPOINT_KEYS = {
    "path", "items_field", "next_cursor_field", "cursor_param", "updated_since_param", "page_size_param", "watermark_field",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_keys(raw: Any, allowed: set[str], path: Path, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(path, where, "expected a mapping of settings")
    unknown = {str(k) for k in raw} - allowed
    if unknown:
        raise _fail(path, where, f"unknown setting(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    return raw


def _text_setting(raw: dict[str, Any], key: str, path: Path, where: str, default: str | None, nullable: bool = False) -> str | None:
    if key not in raw:
        return default
    value = raw[key]
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value.strip():
        expected = "a non-empty text or null" if nullable else "a non-empty text"
        raise _fail(path, f"{where}.{key}", f"expected {expected}, not {value!r}")
    return value.strip()


def _number_setting(raw: dict[str, Any], key: str, path: Path, where: str, default: float, minimum: float, integer: bool = False) -> float:
    if key not in raw:
        return default
    value = raw[key]
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) or value < minimum:
        raise _fail(path, f"{where}.{key}", f"expected {kind} of at least {minimum:g}, not {value!r}")
    return value


def _http_source(raw: Any, path: Path) -> HttpSource:
    where = "http"
    raw = _check_keys(raw, _HTTP_KEYS, path, where)
    base_url = _text_setting(raw, "base_url", path, where, None)
    if base_url is not None and not base_url.lower().startswith(("http://", "https://")):
        raise _fail(path, f"{where}.base_url", f"expected an http:// or https:// address, not {base_url!r}")
    env_names = {key: _text_setting(raw, key, path, where, None) for key in ("base_url_env", "token_env")}
    for key, name in env_names.items():
        if name is not None and not _ENV_NAME.match(name):
            raise _fail(path, f"{where}.{key}", f"expected the name of an environment variable, not {name!r}")
    connection_id = _text_setting(raw, "connection_id", path, where, None)
    if not (base_url or env_names["base_url_env"] or connection_id):
        raise _fail(path, where, "missing required setting 'base_url' (or 'base_url_env', or 'connection_id' whose host is the base URL)")
    if not (env_names["token_env"] or connection_id):
        raise _fail(path, where, "missing required setting 'token_env' (or 'connection_id' whose password is the token)")

    retry_raw = _check_keys(raw.get("retry") or {}, _RETRY_KEYS, path, f"{where}.retry")
    retry = HttpRetry(
        max_attempts=int(_number_setting(retry_raw, "max_attempts", path, f"{where}.retry", HttpRetry.max_attempts, 1, integer=True)),
        backoff_seconds=float(_number_setting(retry_raw, "backoff_seconds", path, f"{where}.retry", HttpRetry.backoff_seconds, 0)),
        max_backoff_seconds=float(_number_setting(retry_raw, "max_backoff_seconds", path, f"{where}.retry", HttpRetry.max_backoff_seconds, 0)),
    )

    if not raw.get("endpoints"):
        raise _fail(path, where, "missing required setting 'endpoints' (at least one table: {path: /v1/...})")
    endpoints_raw = _check_keys(raw["endpoints"], set(TABLES), path, f"{where}.endpoints")
    endpoints = {}
    for table, spec in endpoints_raw.items():
        at = f"{where}.endpoints.{table}"
        spec = _check_keys(spec if spec is not None else {}, _ENDPOINT_KEYS, path, at)
        if "path" not in spec:
            raise _fail(path, at, "missing required setting 'path' (the list endpoint, e.g. /v1/accounts)")
        endpoints[str(table)] = HttpEndpoint(
            table=str(table),
            path=str(_text_setting(spec, "path", path, at, None)),
            items_field=str(_text_setting(spec, "items_field", path, at, HttpEndpoint.items_field)),
            next_cursor_field=str(_text_setting(spec, "next_cursor_field", path, at, HttpEndpoint.next_cursor_field)),
            cursor_param=str(_text_setting(spec, "cursor_param", path, at, HttpEndpoint.cursor_param)),
            updated_since_param=_text_setting(spec, "updated_since_param", path, at, HttpEndpoint.updated_since_param, nullable=True),
            page_size_param=_text_setting(spec, "page_size_param", path, at, HttpEndpoint.page_size_param, nullable=True),
            watermark_field=str(_text_setting(spec, "watermark_field", path, at, HttpEndpoint.watermark_field)),
        )
    return HttpSource(
        endpoints=endpoints,
        base_url=base_url,
        base_url_env=env_names["base_url_env"],
        connection_id=connection_id,
        token_env=env_names["token_env"],
        page_size=int(_number_setting(raw, "page_size", path, where, HttpSource.page_size, 1, integer=True)),
        timeout_seconds=float(_number_setting(raw, "timeout_seconds", path, where, HttpSource.timeout_seconds, 0.001)),
        retry=retry,
    )


def load_mapping_file(path: Path) -> SourceMapping:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping with 'source' and 'tables'")
    source = str(raw.get("source") or path.stem)
    defaults = _read_options(raw.get("defaults") or {}, ReadOptions(), path, "defaults")
    tables = {
        str(name): _table_mapping(source, str(name), spec or {}, defaults, path)
        for name, spec in (raw.get("tables") or {}).items()
    }
    # An `http:` key with nothing under it is a half-written section, not "no HTTP source".
    http = _http_source(raw["http"] if raw["http"] is not None else {}, path) if "http" in raw else None
    return SourceMapping(source=source, tables=tables, path=path, description=str(raw.get("description", "")), http=http, defaults=defaults)


def load_mappings(mappings_dir: Path) -> dict[str, SourceMapping]:
    """Every mapping file in the folder, by source name."""
    found: dict[str, SourceMapping] = {}
    if not mappings_dir.exists():
        return found
    for path in sorted(mappings_dir.glob("*.y*ml")):
        mapping = load_mapping_file(path)
        if mapping.source in found:
            raise ConfigError(f"{path}: source {mapping.source!r} is already mapped by {found[mapping.source].path}")
        found[mapping.source] = mapping
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
