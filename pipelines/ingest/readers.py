"""Read a landing file into text columns, keeping each row's line number in the file.

Every reader returns a `RawFrame`: the file's columns as text (None for an empty cell),
a `_line` column (the line or spreadsheet row a user would open), and the rows that could
not even be split into fields (wrong field count, broken JSON, a truncated last line),
each with its line and the reason. Typing happens later, in `parse`, so a bad value is
reported against the cell it came from.

A file that cannot be read at all (wrong encoding, no header, no rows) raises
`BatchRejected` with a message naming the file and where it went wrong.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.errors import InputError
from pipelines.ingest.mapping import ReadOptions

csv.field_size_limit(16 * 1024 * 1024)


class BatchRejected(InputError):
    """The whole file is refused; nothing of it is loaded."""

    def __init__(self, file: Path | str, message: str, rows_read: int = 0, expectation: str | None = None):
        self.file = str(file)
        self.reason = message
        self.rows_read = rows_read
        self.expectation = expectation
        super().__init__(f"{file}: {message}")


@dataclass
class BadRow:
    line: int
    reason: str
    text: str
    column: str | None = None
    expected: str | None = None


@dataclass
class RawFrame:
    frame: pd.DataFrame  # text columns + `_line`
    bad_rows: list[BadRow] = field(default_factory=list)
    encoding: str | None = None

    @property
    def rows_read(self) -> int:
        return len(self.frame) + len(self.bad_rows)


def decode(path: Path, data: bytes, encoding: str) -> tuple[str, str]:
    """Text of a file and the encoding used; `auto` is UTF-8 (BOM or not), else CP1252."""
    if encoding == "auto":
        try:
            return data.decode("utf-8-sig"), "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"
        except UnicodeDecodeError:
            try:
                return data.decode("cp1252"), "cp1252"
            except UnicodeDecodeError as exc:
                raise _encoding_error(path, data, exc, "UTF-8 or CP1252") from None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _encoding_error(path, data, exc, encoding) from None
    if encoding in ("utf-8", "utf8") and text.startswith("\ufeff"):
        text = text[1:]
    return text, encoding


def _encoding_error(path: Path, data: bytes, exc: UnicodeDecodeError, expected: str) -> BatchRejected:
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    bad = data[exc.start : exc.start + 4]
    return BatchRejected(
        path,
        f"wrong encoding: line {line}, character {column}: byte(s) {bad!r} are not valid {expected}. "
        "Save the file as UTF-8, or declare its encoding (e.g. 'encoding: cp1252') in the source's mapping.",
        expectation="file_encoding",
    )


def _sniff_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _clean_header(names: list[str], path: Path, line: int) -> list[str]:
    cleaned = [n.strip().lstrip("\ufeff") for n in names]
    if not any(cleaned):
        raise BatchRejected(path, f"line {line}: the header row is empty; expected column names", expectation="header")
    seen: dict[str, int] = {}
    for i, name in enumerate(cleaned):
        if name == "":
            cleaned[i] = f"column_{i + 1}"
        if cleaned[i] in seen:
            raise BatchRejected(
                path,
                f"line {line}: column {cleaned[i]!r} appears twice in the header (columns {seen[cleaned[i]] + 1} and {i + 1})",
                expectation="header",
            )
        seen[cleaned[i]] = i
    return cleaned


def read_csv(path: Path, options: ReadOptions) -> RawFrame:
    data = path.read_bytes()
    if not data.strip():
        raise BatchRejected(path, "the file is empty: expected a header line and at least one row", expectation="expect_table_row_count_to_be_between")
    text, used = decode(path, data, options.encoding)
    lines_skip = options.header_row - 1
    buffer = io.StringIO(text, newline="")
    for _ in range(lines_skip):
        buffer.readline()
    first = buffer.readline()
    delimiter = options.delimiter or _sniff_delimiter(first)
    header = _clean_header(next(csv.reader([first], delimiter=delimiter)), path, options.header_row)
    width = len(header)
    reader = csv.reader(buffer, delimiter=delimiter, strict=False)
    rows: list[list[str | None]] = []
    lines: list[int] = []
    bad: list[BadRow] = []
    ends_cleanly = text.endswith(("\n", "\r"))
    line_offset = options.header_row  # csv's line_num counts from the start of `buffer`
    last_line = 0
    try:
        previous_end = 0
        for fields in reader:
            start = previous_end + 1 + line_offset
            previous_end = reader.line_num
            last_line = reader.line_num + line_offset
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if len(fields) != width:
                is_last = not ends_cleanly and _is_last_record(reader, buffer)
                reason = (
                    f"truncated last line: {len(fields)} of {width} fields (the file ends mid-row)"
                    if is_last and len(fields) < width
                    else f"expected {width} fields, found {len(fields)}"
                )
                bad.append(BadRow(start, reason, delimiter.join(fields), expected=f"{width} fields separated by {delimiter!r}"))
                continue
            rows.append([f if f.strip() != "" else None for f in fields])
            lines.append(start)
    except csv.Error as exc:
        bad.append(BadRow(last_line + 1, f"unreadable CSV from here on: {exc}", ""))
    if not rows and not bad:
        raise BatchRejected(path, "no data rows after the header: expected at least one row", expectation="expect_table_row_count_to_be_between")
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame["_line"] = lines
    return RawFrame(frame, bad, used)


def _is_last_record(reader, buffer: io.StringIO) -> bool:
    position = buffer.tell()
    rest = buffer.read()
    buffer.seek(position)
    return rest.strip() == ""


def read_jsonl(path: Path, options: ReadOptions) -> RawFrame:
    data = path.read_bytes()
    if not data.strip():
        raise BatchRejected(path, "the file is empty: expected one JSON object per line", expectation="expect_table_row_count_to_be_between")
    text, used = decode(path, data, options.encoding)
    records, lines, bad = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            reason = "truncated last line: not complete JSON" if number == len(text.splitlines()) and not text.endswith("\n") else f"not valid JSON: {exc.msg} at character {exc.colno}"
            bad.append(BadRow(number, reason, line[:500], expected="one JSON object per line"))
            continue
        if not isinstance(obj, dict):
            bad.append(BadRow(number, "expected a JSON object", line[:500], expected="one JSON object per line"))
            continue
        records.append({k: _text(v) for k, v in obj.items()})
        lines.append(number)
    frame = pd.DataFrame.from_records(records).astype(object) if records else pd.DataFrame()
    frame = frame.where(frame.notna(), None)
    frame["_line"] = lines
    return RawFrame(frame, bad, used)


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if text.strip() != "" else None


def read_parquet(path: Path, options: ReadOptions) -> RawFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
        raise BatchRejected(path, f"not a readable Parquet file: {exc}", expectation="file_format") from None
    if table.num_rows == 0:
        raise BatchRejected(path, "the file has no rows: expected at least one", expectation="expect_table_row_count_to_be_between")
    frame = pd.DataFrame({name: _column_text(table.column(name).to_pandas()) for name in table.column_names})
    frame["_line"] = range(1, len(frame) + 1)  # Parquet has no lines: the row number
    return RawFrame(frame, [], None)


def _column_text(series: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series):
        text = series.dt.strftime("%Y-%m-%d %H:%M:%S")
    elif pd.api.types.is_float_dtype(series):
        text = series.map(lambda v: None if pd.isna(v) else repr(float(v)))
    else:
        text = series.map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    return text.astype(object).where(series.notna(), None)


def read_xlsx(path: Path, options: ReadOptions) -> RawFrame:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many types for a damaged file
        raise BatchRejected(path, f"not a readable .xlsx workbook: {exc}", expectation="file_format") from None
    try:
        if options.sheet is None:
            sheet = book.worksheets[0]
        elif isinstance(options.sheet, int):
            sheet = book.worksheets[options.sheet]
        else:
            if options.sheet not in book.sheetnames:
                raise BatchRejected(path, f"no sheet named {options.sheet!r}; the workbook has {', '.join(book.sheetnames)}", expectation="sheet")
            sheet = book[options.sheet]
        rows_iter = sheet.iter_rows(values_only=True)
        header = None
        for number, row in enumerate(rows_iter, start=1):
            if number == options.header_row:
                header = _clean_header(["" if v is None else str(v) for v in row], path, number)
                break
        if header is None:
            raise BatchRejected(path, "the sheet is empty: expected a header row and at least one row", expectation="expect_table_row_count_to_be_between")
        records, lines = [], []
        for number, row in enumerate(rows_iter, start=options.header_row + 1):
            values = [_cell_text(v) for v in row[: len(header)]]
            if all(v is None for v in values):
                continue
            values += [None] * (len(header) - len(values))
            records.append(values)
            lines.append(number)
    finally:
        book.close()
    if not records:
        raise BatchRejected(path, "no data rows after the header: expected at least one row", expectation="expect_table_row_count_to_be_between")
    frame = pd.DataFrame(records, columns=header, dtype=object)
    frame["_line"] = lines
    return RawFrame(frame, [], None)


def _cell_text(value) -> str | None:
    import datetime as dt

    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S") if value.time() != dt.time(0) else value.strftime("%Y-%m-%d")
    if isinstance(value, dt.date):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() else repr(value)
    text = str(value)
    return text if text.strip() != "" else None


READERS = {"csv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet, "xlsx": read_xlsx}


def read_file(path: Path, fmt: str, options: ReadOptions) -> RawFrame:
    return READERS[fmt](path, options)
