"""Reading quarantined rows back out of `meta.quarantine` (the `needseg quarantine` command).

Every row that failed parsing or the quality gate is kept there with its batch, file, line,
column, value, reason and what was expected, plus the row as read (`record`) so it can be
fixed and re-delivered. This module only reads; nothing here changes the warehouse.
"""

from __future__ import annotations

import duckdb
import pandas as pd

SHOWN_COLUMNS = ["batch_id", "file", "line", "column_name", "value", "reason", "expected"]
# CSV output adds what a re-delivery needs: the row as read and every problem of the line.
FULL_COLUMNS = [*SHOWN_COLUMNS, "source", "table_name", "problems", "record", "quarantined_at"]


def quarantined_rows(
    con: duckdb.DuckDBPyConnection,
    *,
    batch: str | None = None,
    file: str | None = None,
    table: str | None = None,
    reason: str | None = None,
    source: str | None = None,
    limit: int | None = None,
    full: bool = False,
) -> tuple[int, pd.DataFrame]:
    """(rows matching, the first `limit` of them in file and line order).

    `batch` matches a batch id or its beginning; `file` a landing path (relative to the
    landing folder), its last part(s) ("o.csv" finds "crm/order_lines/o.csv") or a glob
    ("crm/*/2026-*"); `reason` any part of the reason, ignoring case.
    """
    where, params = [], []
    if batch:
        where.append("starts_with(batch_id, ?)")
        params.append(batch)
    if file:
        if any(c in file for c in "*?["):
            where.append("file glob ?")
            params.append(file)
        else:
            where.append("(file = ? or ends_with(file, '/' || ?))")
            params += [file, file.lstrip("/")]
    if table:
        where.append("table_name = ?")
        params.append(table)
    if source:
        where.append("source = ?")
        params.append(source)
    if reason:
        where.append("contains(lower(reason), lower(?))")
        params.append(reason)
    condition = f"where {' and '.join(where)}" if where else ""
    total = con.execute(f"select count(*) from meta.quarantine {condition}", params).fetchone()[0]
    columns = ", ".join(FULL_COLUMNS if full else SHOWN_COLUMNS)
    query = f"select {columns} from meta.quarantine {condition} order by file, line, batch_id"
    if limit is not None:
        query += f" limit {int(limit)}"
    return int(total), con.execute(query, params).df()
