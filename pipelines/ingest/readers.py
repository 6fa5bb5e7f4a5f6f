"""Read a landing file into text columns, keeping each row's line number in the file.

Every reader returns a `RawFrame`: the file's columns as text (None for an empty cell),
a `_line` column (the line or spreadsheet row a user would open), and the rows that could
not even be split into fields (wrong field count, broken JSON, a truncated last line),
each with its line and the reason. Typing happens later, in `parse`, so a bad value is
reported against the cell it came from.

A file that cannot be read at all (wrong encoding, empty, no header) raises
`BatchRejected` with a message naming the file and where it went wrong. A file with a
header (or, for Parquet, a schema) but no rows is not broken: it is an empty extract (a
day without new tickets) and reads as a frame of 0 rows with the header's columns. Where the rows can
still be split (a wrong encoding read with replacement characters, say), the exception
carries them in `raw`, so the loader can account for every one of them in quarantine.

Native values (numbers in a workbook, Parquet or JSON) are written as text the way the
mapping declares numbers (its decimal separator, no thousands separator), so one mapping
reads a source's CSV and its spreadsheets alike.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd

from pipelines.errors import InputError
from pipelines.ingest.mapping import ReadOptions
from pipelines.warehouse import scratch_connection

csv.field_size_limit(16 * 1024 * 1024)

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SINGLE_BYTE = ("latin-1", "iso-8859-1", "cp1252")
NO_ROWS = "expect_table_row_count_to_be_between"


class BatchRejected(InputError):
    """The whole file is refused; nothing of it is loaded."""

    def __init__(
        self,
        file: Path | str,
        message: str,
        rows_read: int = 0,
        expectation: str | None = None,
        raw: RawFrame | None = None,
    ):
        self.file = str(file)
        self.reason = message
        self.rows_read = rows_read
        self.expectation = expectation
        self.raw = raw  # the rows as far as they could be read, to account for in quarantine
        super().__init__(f"{file}: {message}")

    def with_rows(self, raw: RawFrame | None) -> BatchRejected:
        if raw is not None:
            self.raw = raw
            self.rows_read = raw.rows_read
        return self


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
    # Header names that appeared more than once: name -> the names its later copies got.
    duplicate_columns: dict[str, list[str]] = field(default_factory=dict)
    delimiter: str | None = None  # CSV: the field separator used
    notes: list[str] = field(default_factory=list)  # what a user should know (sheets not read)

    @property
    def rows_read(self) -> int:
        return len(self.frame) + len(self.bad_rows)


# --- text and encodings -------------------------------------------------------------


def decode(path: Path, data: bytes, encoding: str) -> tuple[str, str]:
    """Text of a file and the encoding used.

    `auto` is UTF-8 (with or without BOM), else CP1252 — but only for a file that is CP1252
    throughout: a file with UTF-8 letters in some lines and other bytes elsewhere (two
    exports pasted together) is in no single encoding, and is refused rather than read with
    one of them garbling the other. A byte-order mark wins over the declared encoding: the
    file says what it is. A single-byte encoding (latin-1, cp1252) declared for a file that
    holds UTF-8 letters is refused too, rather than read as mojibake ("Ã…ngström").
    """
    encoding = encoding.lower()
    if data.startswith(UTF16_BOMS):
        text, used = _decode(path, data, "utf-16", "UTF-16 (the file starts with a UTF-16 byte-order mark)"), "utf-16"
    elif data.startswith(UTF8_BOM):
        text, used = _decode(path, data, "utf-8-sig", "UTF-8 (the file starts with a UTF-8 byte-order mark)"), "utf-8-sig"
    elif encoding == "auto":
        try:
            text, used = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError as exc:
            utf8 = _UTF8_LETTER.search(data)
            if utf8:
                raise _mixed_encoding(path, data, exc, utf8.start()) from None
            text, used = _decode(path, data, "cp1252", "UTF-8 or CP1252"), "cp1252"
    else:
        text, used = _decode(path, data, encoding, encoding), encoding
        if encoding in SINGLE_BYTE and not data.isascii():
            if _is_utf8(data):
                raise BatchRejected(
                    path,
                    f"wrong encoding: the mapping declares {encoding}, but the file is UTF-8 (reading it as "
                    f"{encoding} would turn 'Å' into 'Ã…'). Declare 'encoding: utf-8' (or 'auto') in the source's mapping.",
                    expectation="file_encoding",
                )
            mojibake = _UTF8_AS_SINGLE_BYTE.search(data)
            if mojibake:
                line, _, shown = _line_at(data, mojibake.start())
                raise BatchRejected(
                    path,
                    f"wrong encoding: the mapping declares {encoding}, but line {line} holds UTF-8 text ({shown!r}), which "
                    f"{encoding} would turn into {_line_at(data, mojibake.start(), encoding)[2]!r}: the file mixes encodings. "
                    "Re-save it in one encoding (UTF-8), then declare 'encoding: utf-8' (or 'auto') in the source's mapping.",
                    expectation="file_encoding",
                )
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise BatchRejected(
            path,
            f"wrong encoding: line {line} contains NUL characters, read as {used}: this is a binary file or UTF-16 "
            "without a byte-order mark. Save it as UTF-8 CSV.",
            expectation="file_encoding",
        )
    return text, used


# A UTF-8 multi-byte character (a well-formed sequence): in a file that is not UTF-8
# throughout, the sign that part of it is UTF-8 after all.
_UTF8_LETTER = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
# UTF-8 for Latin-1 letters (å, ö, é: "Ã¥", "Ã¶", "Ã©" in CP1252) and for typographic
# punctuation (– ’ “ € ™: "â€“" ...): byte pairs a real CP1252/Latin-1 text never has.
_UTF8_AS_SINGLE_BYTE = re.compile(rb"[\xc2\xc3][\x80-\xbf]|\xe2[\x80-\x84][\x80-\xbf]")


def _line_at(data: bytes, offset: int, codec: str = "utf-8") -> tuple[int, int, str]:
    """Line number, character position and text (decoded with `codec`) around a byte offset."""
    line = data.count(b"\n", 0, offset) + 1
    begin = data.rfind(b"\n", 0, offset) + 1
    end = data.find(b"\n", offset)
    text = data[begin : end if end >= 0 else len(data)].decode(codec, errors="replace").strip()
    return line, offset - begin + 1, text if len(text) <= 80 else text[:77] + "..."


def _mixed_encoding(path: Path, data: bytes, exc: UnicodeDecodeError, utf8_at: int) -> BatchRejected:
    line, column, _ = _line_at(data, exc.start)
    utf8_line, _, utf8_text = _line_at(data, utf8_at)
    bad = data[exc.start : exc.start + 4]
    return BatchRejected(
        path,
        f"mixed encodings: line {line}, character {column}: byte(s) {bad!r} are not valid UTF-8, yet line {utf8_line} is "
        f"UTF-8 ({utf8_text!r}). The file is not in one encoding, so none of it is loaded: read as CP1252, its UTF-8 lines "
        f"would turn 'Å' into 'Ã…'. Re-save the file in one encoding (UTF-8); if it is all CP1252 or Latin-1, declare "
        "'encoding: cp1252' (or latin-1) in the source's mapping.",
        expectation="file_encoding",
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode(path: Path, data: bytes, codec: str, expected: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise _encoding_error(path, data, exc, expected) from None
    except LookupError:
        raise BatchRejected(path, f"unknown encoding {codec!r}", expectation="file_encoding") from None


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


def _lossy_text(data: bytes) -> str:
    """The file's text with undecodable bytes replaced: enough to count and show its rows."""
    if data.startswith(UTF16_BOMS):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace").replace("\x00", "")


def _rejected_with_rows(exc: BatchRejected, salvage) -> BatchRejected:
    """Attach the rows a refused file still yields, so none of them goes unaccounted."""
    try:
        raw = salvage()
    except BatchRejected:
        raw = None
    return exc.with_rows(raw)


# --- header -----------------------------------------------------------------------------


def _sniff_delimiter(header: str) -> str:
    # Count outside quotes: survey tools quote headers like "Price (1 = low, 7 = high)".
    bare = re.sub(r'"(?:[^"]|"")*"', "", header)
    counts = {d: bare.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _clean_header(names: list[str], path: Path, line: int) -> tuple[list[str], dict[str, list[str]]]:
    """Stripped names; an empty name becomes column_<n>, a repeated one `<name>.<k>`.

    Repeats are common in survey exports (two "Comments" questions); they only matter if
    the mapping uses such a column, which `parse` refuses as ambiguous.
    """
    cleaned = [n.strip().lstrip("\ufeff").strip() for n in names]
    if not any(cleaned):
        raise BatchRejected(path, f"line {line}: the header row is empty; expected column names", expectation="header")
    seen: set[str] = set()
    duplicates: dict[str, list[str]] = {}
    for i, name in enumerate(cleaned):
        if name == "":
            name = f"column_{i + 1}"
        if name in seen:
            k = 1
            while f"{name}.{k}" in seen or f"{name}.{k}" in cleaned:
                k += 1
            duplicates.setdefault(name, []).append(f"{name}.{k}")
            name = f"{name}.{k}"
        seen.add(name)
        cleaned[i] = name
    return cleaned, duplicates


def _drop_empty_unnamed(frame: pd.DataFrame, header: list[str], named: list[str]) -> pd.DataFrame:
    """Columns without a header and without any value (a trailing `;` on every line, or
    formatting beyond the data in a workbook) are not columns of the export."""
    drop = [c for c, original in zip(header, named, strict=False) if original.strip() == "" and frame[c].isna().all()]
    return frame.drop(columns=drop) if drop else frame


# --- CSV --------------------------------------------------------------------------------


def read_csv(path: Path, options: ReadOptions) -> RawFrame:
    data = path.read_bytes()
    if not data.strip():
        size = "0 bytes" if not data else "only blank lines"
        raise BatchRejected(path, f"the file is empty ({size}): expected a header line with the column names", expectation=NO_ROWS)
    try:
        text, used = decode(path, data, options.encoding)
    except BatchRejected as exc:
        raise _rejected_with_rows(exc, lambda: _split_csv(path, _lossy_text(data), options, None)) from None
    return _split_csv(path, text, options, used)


_SEP_LINE = re.compile(r'^"?sep=(.)"?\s*$')


# What of a file's text is given to the header's reader first (`_split_csv`).
_HEAD_CHARACTERS = 65536


def _split_csv(path: Path, text: str, options: ReadOptions, used: str | None, strict_header: bool = True) -> RawFrame:
    buffer, (named, delimiter, skipped) = _header_of(path, text, options, used, strict_header)
    header, duplicates = _clean_header(named, path, skipped)
    start = buffer.tell()
    frame = _plain_csv_rows(path, text, start, delimiter, header, skipped) if used in ("utf-8", "utf-8-sig") else None
    if frame is not None:
        bad = []
    else:
        if len(buffer.getvalue()) != len(text):
            buffer = io.StringIO(text, newline="")
            buffer.seek(start)
        rows, lines, bad = _csv_rows(buffer, text, delimiter, header, skipped)
        frame = pd.DataFrame(rows, columns=header, dtype=object)
        frame["_line"] = pd.Series(lines, dtype="int64")
    frame = _drop_empty_unnamed(frame, header, named)
    # No rows after the header is an empty extract, not a broken file: 0 rows read.
    return RawFrame(frame, bad, used, duplicates, delimiter)


def _header_of(path: Path, text: str, options: ReadOptions, used, strict_header: bool) -> tuple[io.StringIO, tuple[list[str], str, int]]:
    """`_csv_header` read from the file's first `_HEAD_CHARACTERS` (a buffer of the whole
    text copies it into four bytes a character: 0.15 s for 30 MB, which only the Python
    reader needs). The answer counts only where the header record ended before that
    prefix did (the reader takes whole lines and never looks past the record); anything
    else (a longer header, an error) is read again from the whole text."""
    if len(text) > _HEAD_CHARACTERS:
        head = io.StringIO(text[:_HEAD_CHARACTERS], newline="")
        try:
            found = _csv_header(head, path, text, options, used, strict_header)
        except BatchRejected:
            found = None
        if found is not None and head.tell() < _HEAD_CHARACTERS:
            return head, found
    buffer = io.StringIO(text, newline="")
    return buffer, _csv_header(buffer, path, text, options, used, strict_header)


def _csv_header(buffer: io.StringIO, path: Path, text: str, options: ReadOptions, used, strict_header: bool) -> tuple[list[str], str, int]:
    """(the header's names, the delimiter, the physical line of the header); `buffer` is left
    at the first row. A header that cannot be split refuses the file (with its rows, where
    they can still be read)."""
    skipped = 0  # physical lines before the header record
    for _ in range(options.header_row - 1):
        buffer.readline()
        skipped += 1
    position = buffer.tell()
    first = buffer.readline()
    sep = _SEP_LINE.match(first)
    if sep:  # Excel's "sep=;" first line names the delimiter
        skipped += 1
        delimiter = options.delimiter or sep.group(1)
        position = buffer.tell()
        first = buffer.readline()
    else:
        delimiter = options.delimiter or _sniff_delimiter(first)
    buffer.seek(position)
    header_reader = csv.reader(buffer, delimiter=delimiter, strict=strict_header)
    try:
        named = next(header_reader)
    except StopIteration:
        raise BatchRejected(path, "the file has no header line: expected a line with the column names", expectation=NO_ROWS) from None
    except csv.Error as exc:
        record = text[position : buffer.tell()]
        if not ("expected after" in str(exc) and _only_blanks_after_quotes(record, delimiter)):
            problem = _stray_quote(record, delimiter) if "expected after" in str(exc) else str(exc)
            refused = BatchRejected(
                path, f"line {skipped + 1}: the header line cannot be split into column names: {problem}", expectation="header"
            )
            if not strict_header:
                raise refused from None
            # The rows may still be readable: account for them in quarantine.
            raise _rejected_with_rows(refused, lambda: _split_csv(path, text, options, used, strict_header=False)) from None
        named = next(csv.reader(io.StringIO(record, newline=""), delimiter=delimiter, strict=False))
        return named, delimiter, skipped + header_reader.line_num
    return named, delimiter, skipped + header_reader.line_num


# Python's str.strip() whitespace (str.isspace()) as an RE2 class: a cell of only these is
# empty, as in `_csv_rows`. (DuckDB's trim() with this set of characters is 10x slower.)
_BLANK_CELL = r"[\t-\r\x{1c}-\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*"


def _plain_csv_rows(path: Path, text: str, start: int, delimiter: str, header: list[str], skipped: int) -> pd.DataFrame | None:
    """The rows after the header split by DuckDB's CSV reader (tens of times faster than
    Python's), for a plain file: UTF-8, no quote character after the header, no blank
    line, every line ending alike (LF or CRLF). There each physical line is one record, so
    a row's line number is its position; DuckDB must also find exactly one row per line,
    every row with the header's number of fields, and no row of only blanks. Anything else
    (a quoted field, a short row, a trailing delimiter, a row of bare delimiters) returns
    None, and `_csv_rows` reads the file and says what is wrong where."""
    body = text[start:]
    if not body or '"' in body or "\n\n" in body or body.startswith(("\n", "\r")):
        return None
    carriage_returns = "\r" in body  # most files have none: two counts saved
    crlf = body.count("\r\n") if carriage_returns else 0
    if (carriage_returns and body.count("\r") != crlf) or (crlf and (crlf != body.count("\n") or "\r\n\r\n" in body)):
        return None
    lines = body.count("\n") + (0 if body.endswith("\n") else 1)
    if body.count(delimiter) != lines * (len(header) - 1):
        return None  # some line has more fields (DuckDB drops empty ones past the last column)
    cells = ", ".join(f"{_cell_sql(f'c{i}')} as c{i}" for i in range(len(header)))
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(header))) + "}"
    sql = (
        f"select {cells} from read_csv({_sql_text(str(path))}, skip = {skipped}, header = false, delim = {_sql_text(delimiter)}, "
        f"quote = '', escape = '', columns = {columns}, auto_detect = false, strict_mode = true, null_padding = false, "
        "ignore_errors = false)"
    )
    try:
        table = _csv_connection().sql(sql).to_arrow_table()
    except duckdb.Error:  # anything DuckDB cannot read plainly, the Python reader explains
        return None
    if table.num_rows != lines:
        return None
    # Arrow-backed text (pandas' "str"): no Python object per cell, a fifth of the memory.
    frame = table.to_pandas()
    frame.columns = header
    if len(header) and frame.isna().all(axis=1).any():
        return None  # a row of only blanks or bare delimiters: not a row (the Python reader skips it)
    frame["_line"] = pd.Series(range(skipped + 1, skipped + 1 + len(frame)), dtype="int64")
    return frame


def _cell_sql(name: str) -> str:
    """A cell of only blanks is empty (NULL), as the Python reader makes it. A cell whose first
    byte is printable ASCII other than the space ('!' to '~'; DuckDB compares text byte by
    byte) is not blank: the pattern is matched only on the others, a fifth of the split's
    cost saved."""
    return f"case when {name} >= '!' and {name} < chr(127) then {name} when regexp_full_match({name}, {_sql_text(_BLANK_CELL)}) then null else {name} end"


_CONNECTION: list[duckdb.DuckDBPyConnection] = []


def _csv_connection() -> duckdb.DuckDBPyConnection:
    """One scratch DuckDB per process for splitting plain CSV files (opening one per file
    cost ~15 ms, a run of 100 monthly files paid it 100 times); it holds no data between
    files."""
    if not _CONNECTION:
        _CONNECTION.append(scratch_connection())
    return _CONNECTION[0]


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _csv_rows(buffer: io.StringIO, text: str, delimiter: str, header: list[str], skipped: int):
    """(rows of text, their first physical line, the records that are not rows) from the
    buffer's position on; `skipped` physical lines came before."""
    # Strict: text after a closing quote ("5" Screws AB) is an error, not silently joined.
    reader = csv.reader(buffer, delimiter=delimiter, strict=True)
    width = len(header)
    rows: list[list[str | None]] = []
    lines: list[int] = []
    bad: list[BadRow] = []
    ends_cleanly = text.endswith(("\n", "\r"))
    expected = f"{width} fields separated by {delimiter!r}"
    previous_end = 0  # physical lines the row reader has consumed so far
    previous_pos = buffer.tell()
    while True:
        try:
            fields, error = next(reader), None
        except StopIteration:
            break
        except csv.Error as exc:
            fields, error = None, str(exc)
        start, end = skipped + previous_end + 1, skipped + reader.line_num
        record_start, pos = previous_pos, buffer.tell()
        record_text = text[record_start:pos]
        previous_end, previous_pos = reader.line_num, pos
        if error is not None and "expected after" in error and _only_blanks_after_quotes(record_text, delimiter):
            # Only blanks after a closing quote ("Smith" ,): the value is plain, read it leniently.
            fields, error = next(csv.reader(io.StringIO(record_text, newline=""), delimiter=delimiter, strict=False)), None
        if error is not None:
            bad.append(_unsplittable(error, record_text, (start, end), ends_cleanly, delimiter, header, expected))
            if bad[-1].reason.startswith("unreadable CSV"):
                bad[-1].text = text[record_start : record_start + 500]
                break
            continue
        if not fields or all(not f.strip() for f in fields):
            continue  # a blank line, or a row of bare delimiters (Excel's ";;;;")
        if len(fields) == width + 1 and not fields[-1].strip():
            fields = fields[:-1]  # a trailing delimiter the header line does not have
        if len(fields) != width:
            truncated = pos >= len(text) and not ends_cleanly and len(fields) < width
            reason = (
                f"truncated last line: {len(fields)} of {width} fields (the file ends mid-row)"
                if truncated
                else f"expected {width} fields, found {len(fields)}"
            )
            bad.append(BadRow(start, reason, record_text.rstrip("\r\n"), expected=expected))
            continue
        rows.append([f if f.strip() != "" else None for f in fields])
        lines.append(start)
    return rows, lines, bad


def _unsplittable(error: str, record_text: str, span: tuple[int, int], ends_cleanly: bool, delimiter: str, header, expected) -> BadRow:
    """A record the CSV reader could not split into fields, with why."""
    start, end = span
    if "unexpected end of data" in error:  # the file ends inside a quoted field
        reason = (
            "truncated last line: the file ends inside a quoted field"
            if start == end and not ends_cleanly
            else f"unterminated quote: the quoted field on line {start} runs to the end of the file (lines {start}-{end})"
        )
        return BadRow(start, reason, record_text.rstrip("\r\n"), expected=expected)
    if "expected after" in error:  # a quoted field followed by more text
        column = _stray_quote_column(record_text, delimiter, header)
        return BadRow(start, _stray_quote(record_text, delimiter), record_text.rstrip("\r\n"), column, _QUOTING)
    return BadRow(start, f"unreadable CSV from here on: {error}", record_text)


_QUOTING = 'a quoted field ending at the delimiter; quotes inside a value are doubled: """5"" Screws AB"'


def _quoted_then_text(record_text: str, delimiter: str) -> list[re.Match]:
    """Quoted fields followed by more text before the next delimiter (group 2: that text)."""
    d = re.escape(delimiter)
    return list(re.finditer(rf'(?:^|(?<={d}))"((?:[^"]|"")*)"([^{d}\r\n]+)', record_text))


def _only_blanks_after_quotes(record_text: str, delimiter: str) -> bool:
    found = _quoted_then_text(record_text, delimiter)
    return bool(found) and all(not m.group(2).strip() for m in found)


def _stray_quote_match(record_text: str, delimiter: str) -> re.Match | None:
    """The first quoted field followed by more than blanks before the next delimiter."""
    return next((m for m in _quoted_then_text(record_text, delimiter) if m.group(2).strip()), None)


def _stray_quote(record_text: str, delimiter: str) -> str:
    """Why a record with text after a closing quote is not read, and how it should look."""
    match = _stray_quote_match(record_text, delimiter)
    if match is None:
        return f"stray quote: a quoted field is followed by more text before the next {delimiter!r}"
    quoted, after = match.group(1).replace('""', '"'), match.group(2)
    meant = '"' + ('"' + quoted + '"' + after).replace('"', '""') + '"'
    return (
        f'stray quote: "{quoted}" is closed, then {after!r} follows before the next {delimiter!r}; '
        f"the value is not guessed at. A value with quotes in it is quoted whole, its quotes doubled: {meant}"
    )


def _stray_quote_column(record_text: str, delimiter: str, header: list[str]) -> str | None:
    """The header name of the field with the stray quote."""
    match = _stray_quote_match(record_text, delimiter)
    if match is None:
        return None
    try:
        before = next(csv.reader(io.StringIO(record_text[: match.start()], newline=""), delimiter=delimiter), [""])
    except csv.Error:
        return None
    index = len(before) - 1 if record_text[: match.start()] else 0
    return header[index] if 0 <= index < len(header) else None


# --- JSON Lines ---------------------------------------------------------------------------


def read_jsonl(path: Path, options: ReadOptions) -> RawFrame:
    data = path.read_bytes()
    if not data.strip():
        raise BatchRejected(path, "the file is empty: expected one JSON object per line", expectation=NO_ROWS)
    try:
        text, used = decode(path, data, options.encoding)
    except BatchRejected as exc:
        raise _rejected_with_rows(exc, lambda: _split_jsonl(_lossy_text(data), options, None)) from None
    return _split_jsonl(text, options, used)


def _split_jsonl(text: str, options: ReadOptions, used: str | None) -> RawFrame:
    records, lines, bad = [], [], []
    physical = text.splitlines()
    ends_cleanly = text.endswith(("\n", "\r"))
    for number, line in enumerate(physical, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            last = number == len(physical) and not ends_cleanly
            reason = "truncated last line: not complete JSON" if last else f"not valid JSON: {exc.msg} at character {exc.colno}"
            bad.append(BadRow(number, reason, line[:500], expected="one JSON object per line"))
            continue
        if not isinstance(obj, dict):
            bad.append(BadRow(number, "expected a JSON object", line[:500], expected="one JSON object per line"))
            continue
        records.append({str(k): _text(v, options) for k, v in obj.items()})
        lines.append(number)
    frame = pd.DataFrame.from_records(records).astype(object) if records else pd.DataFrame()
    frame = frame.where(frame.notna(), None)
    frame["_line"] = pd.Series(lines, dtype="int64")
    return RawFrame(frame, bad, used)


def _plain_number(value: float | int | Decimal) -> str:
    """A native number as plain digits: 17850 (not 17850.0), 0.00001 (not 1e-05),
    1234567890123 (not 1.234567890123e+12). NaN and infinity stay 'nan' and 'inf', which
    `parse` refuses as not a number."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        if value.is_integer():
            return str(int(value))
        return format(Decimal(repr(value)), "f")
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value).lower()
    return str(value)


def _number_text(value: float | int, options: ReadOptions) -> str:
    text = _plain_number(value)
    return text.replace(".", options.decimal) if options.decimal != "." else text


def _text(value, options: ReadOptions) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number_text(value, options)
    text = str(value)
    return text if text.strip() != "" else None


# --- Parquet ------------------------------------------------------------------------------


def read_parquet(path: Path, options: ReadOptions) -> RawFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
        raise BatchRejected(path, f"not a readable Parquet file: {exc}", expectation="file_format") from None
    if table.num_columns == 0:
        raise BatchRejected(path, "the file has no columns: expected column names", expectation=NO_ROWS)
    # A file with its schema but no rows is an empty extract: 0 rows read.
    names, duplicates = _clean_header(list(table.column_names), path, 0)
    frame = pd.DataFrame({name: _arrow_text(table.column(i), options) for i, name in enumerate(names)})
    frame["_line"] = pd.Series(range(1, len(frame) + 1), dtype="int64")  # Parquet has no lines: the row number
    return RawFrame(frame, [], None, duplicates)


def _arrow_text(column, options: ReadOptions) -> pd.Series:
    """A Parquet column as text, exactly: integers stay integers even with nulls in them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_timestamp(kind):
        if kind.tz is not None:  # the contract's timestamps are naive: keep the UTC time
            column = column.cast(pa.timestamp(kind.unit))
        # "2010-12-01 08:26:00", as a user would write it: Arrow's %S writes the unit's
        # fraction ("08:26:00.000000"); keep it only on values that have one.
        whole = pc.floor_temporal(column, unit="second")
        text = pc.strftime(whole.cast(pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S")
        if kind.unit != "s":
            exact = pc.equal(column, whole)
            if not pc.all(exact).as_py():
                text = pc.if_else(exact, text, pc.strftime(column, format="%Y-%m-%d %H:%M:%S"))
    elif pa.types.is_date(kind):
        text = pc.strftime(column, format="%Y-%m-%d")
    elif pa.types.is_dictionary(kind):
        text = pc.cast(column.cast(kind.value_type), pa.string())
    elif pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        text = pc.cast(column, pa.string())
        exponent = pc.match_substring(text, "e", ignore_case=True)
        if pc.any(exponent).as_py():  # Arrow writes 1.234567890123e+12: write those digits out
            text = pa.array(
                [_plain_number(v) if e else t for v, t, e in zip(column.to_pylist(), text.to_pylist(), exponent.to_pylist(), strict=True)],
                pa.string(),
            )
        if options.decimal != ".":
            text = pc.replace_substring(text, ".", options.decimal)
    elif pa.types.is_nested(kind):
        return pd.Series([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in column.to_pylist()], dtype=object)
    else:
        try:
            text = pc.cast(column, pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            return pd.Series([None if v is None else str(v) for v in column.to_pylist()], dtype=object)
    # Blank text is no value, as in a CSV; done in Arrow, not per value in Python.
    blank = pc.equal(pc.utf8_trim_whitespace(text), "")
    text = pc.if_else(blank, pa.scalar(None, pa.string()), text)
    return text.to_pandas()  # Arrow-backed text (pandas str): no Python object per cell


# --- Excel ----------------------------------------------------------------------------------


def read_xlsx(path: Path, options: ReadOptions) -> RawFrame:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many types for a damaged file
        raise BatchRejected(path, f"not a readable .xlsx workbook: {exc}", expectation="file_format") from None
    try:
        sheet = _choose_sheet(book, options, path)
        others = [ws.title for ws in book.worksheets if ws.title != sheet.title and _has_data(ws)]
        rows_iter = sheet.iter_rows(values_only=True)
        header = named = None
        duplicates: dict[str, list[str]] = {}
        for number, row in enumerate(rows_iter, start=1):
            if number == options.header_row:
                named = ["" if v is None else str(v) for v in row]
                header, duplicates = _clean_header(named, path, number)
                break
        if header is None:
            raise BatchRejected(
                path, f"the sheet is empty: expected a header row (row {options.header_row}) with the column names", expectation=NO_ROWS
            )
        records, lines = [], []
        for number, row in enumerate(rows_iter, start=options.header_row + 1):
            values = [_cell_text(v, options) for v in row[: len(header)]]
            if all(v is None for v in values):
                continue
            values += [None] * (len(header) - len(values))
            records.append(values)
            lines.append(number)
    finally:
        book.close()
    frame = pd.DataFrame(records, columns=header, dtype=object)
    frame = _drop_empty_unnamed(frame, header, named)
    frame["_line"] = pd.Series(lines, dtype="int64")
    # Other sheets with data are not read (the mapping names this one), and the batch says so.
    notes = [f"sheet(s) {', '.join(map(repr, others))} not read: the mapping reads sheet {sheet.title!r}"] if others else []
    # No rows after the header is an empty extract, not a broken file: 0 rows read.
    return RawFrame(frame, [], None, duplicates, notes=notes)


def _has_data(sheet) -> bool:
    return any(v is not None and str(v).strip() != "" for row in sheet.iter_rows(values_only=True) for v in row)


def _choose_sheet(book, options: ReadOptions, path: Path):
    """The sheet the mapping names (`sheet:`), else the workbook's only sheet with data. A
    workbook with data on several sheets and no `sheet:` is refused naming them: which one
    holds the table is not guessed, and no sheet is ignored without a word."""
    if options.sheet is None:
        with_data = [ws for ws in book.worksheets if _has_data(ws)]
        if len(with_data) > 1:
            names = ", ".join(repr(ws.title) for ws in with_data)
            raise BatchRejected(
                path,
                f"the workbook has data on {len(with_data)} sheets ({names}); needseg reads one sheet per file. Declare which "
                f"one holds this table in the source's mapping (e.g. 'sheet: {with_data[0].title}'), and deliver each other "
                "sheet as a file of its own table",
                expectation="sheet",
            )
        return with_data[0] if with_data else book.worksheets[0]
    if isinstance(options.sheet, int):
        if not 0 <= options.sheet < len(book.worksheets):
            raise BatchRejected(
                path, f"no sheet number {options.sheet} (counting from 0); the workbook has {len(book.worksheets)}", expectation="sheet"
            )
        return book.worksheets[options.sheet]
    if options.sheet not in book.sheetnames:
        raise BatchRejected(path, f"no sheet named {options.sheet!r}; the workbook has {', '.join(book.sheetnames)}", expectation="sheet")
    return book[options.sheet]


def _cell_text(value, options: ReadOptions) -> str | None:
    import datetime as dt

    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S") if value.time() != dt.time(0) else value.strftime("%Y-%m-%d")
    if isinstance(value, dt.date):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, (int, float)):
        return _number_text(value, options)
    text = str(value)
    return text if text.strip() != "" else None


READERS = {"csv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet, "xlsx": read_xlsx}


def read_file(path: Path, fmt: str, options: ReadOptions) -> RawFrame:
    return READERS[fmt](path, options)
