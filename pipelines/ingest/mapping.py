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
      encoding: auto     # auto (UTF-8, with or without BOM, else CP1252) | utf-8 | utf-8-sig | latin-1 | cp1252
      date_formats: ["%d.%m.%Y", "%Y-%m-%d"]
      missing_values: ["", "-", "n/a"]
    tables:
      order_lines:
        files: "*.csv"               # glob inside <landing>/<source>/order_lines/
        columns:                     # contract column: source column, or a DuckDB SQL expression
          order_id: Ordernummer
          net_price: "Belopp / Antal"
          currency: "'SEK'"           # a constant is an expression too
        values:                      # recode values before checking them
          status: {Aktiv: customer, Prospekt: prospect}
        scale: {min: 1, max: 7, items: [price, quality]}   # items on another scale (or a list of these)
        reverse: [price]                                   # reverse-coded items
        unpivot: ...                 # wide -> long, see README
        read_from: order_lines       # read another table's files (e.g. accounts from lines)
        aggregate: {by: [account_id], ...}                 # one row per key from those files

Anything not named falls back to the canonical column of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.contract import TABLES
from pipelines.errors import ConfigError

FORMATS = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".xlsx": "xlsx"}
ENCODINGS = ("auto", "utf-8", "utf-8-sig", "latin-1", "iso-8859-1", "cp1252")
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
class SourceMapping:
    source: str
    tables: dict[str, TableMapping]
    path: Path | None = None
    description: str = ""

    def for_table(self, table: str) -> TableMapping:
        if table in self.tables:
            return self.tables[table]
        return TableMapping(source=self.source, table=table, origin=self.origin)

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
    return SourceMapping(source=source, tables=tables, path=path, description=str(raw.get("description", "")))


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
