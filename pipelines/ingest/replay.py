"""Rows that waited in quarantine for their account are loaded once the account arrives.

An order line, ticket, quote or survey answer whose account is not in raw goes to quarantine
with the reason "unknown account" (its file loads; only that row waits). Accounts are often
exported later than the orders that name them: when a later run brings the account, the row
is *replayed*: read again from the row kept in quarantine (`record`), mapped with the
source's mapping, typed and checked by the quality gate exactly like a new row, and if
nothing else is wrong with it, moved to raw under its original batch, file and line. The
batch's counts in meta.batches move with it (rows_loaded up, rows_quarantined down), so
every batch still accounts for every row it read; `meta.replayed` records each replay, and
the ingest report and `needseg status` count them.

Only rows whose every problem is the unknown account are replayed, only from batches that
were loaded (a refused file is tried again whole), and never a row whose key is in raw by
now (it arrived again in another file).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import duckdb
import pandas as pd

from pipelines import clock
from pipelines.contract import TABLES
from pipelines.ingest.mapping import SourceMapping, mapping_for
from pipelines.ingest.parse import ParsedBatch, parse
from pipelines.ingest.readers import BatchRejected, RawFrame
from pipelines.quality.gate import QualityGate
from pipelines.warehouse import insert_frame, registered, transaction

log = logging.getLogger(__name__)

UNKNOWN_ACCOUNT = "unknown account"
REFERENCING_TABLES = tuple(name for name, t in TABLES.items() if any(c.references_account for c in t.columns))

_CANDIDATES = f"""
select q.batch_id, q.source, q.table_name, q.file, q.line, cast(q.record as varchar) as record
from meta.quarantine q
join meta.batches b on b.batch_id = q.batch_id and b.status = 'loaded'
where q.table_name in ({", ".join("'" + t + "'" for t in REFERENCING_TABLES)})
  and starts_with(q.reason, '{UNKNOWN_ACCOUNT}')
  and list_bool_and(list_transform(json_extract_string(q.problems, '$[*].reason'), lambda r: starts_with(r, '{UNKNOWN_ACCOUNT}')))
  and q.value in (select account_id from raw.accounts)
order by q.batch_id, q.line
"""


def replay_late_rows(
    con: duckdb.DuckDBPyConnection, mappings: dict[str, SourceMapping], gate: QualityGate, parameters: dict[str, Any], run_id: str
) -> list[dict]:
    """Load the quarantined rows whose account has arrived; one entry per batch replayed."""
    candidates = con.execute(_CANDIDATES).df()
    if candidates.empty:
        return []
    parameters = {**parameters, "known_account_ids": [r[0] for r in con.execute("select account_id from raw.accounts").fetchall()]}
    replayed = []
    now = clock.utc_naive_now()
    with transaction(con):
        for (batch_id, source, table, file), rows in candidates.groupby(["batch_id", "source", "table_name", "file"], sort=True):
            lines = _replay_batch(con, mapping_for(source, mappings).for_table(table), gate, parameters, rows, now)
            if lines:
                _move(con, batch_id, table, file, lines, run_id, now)
                replayed.append({"batch_id": batch_id, "table": table, "file": file, "rows": len(lines)})
    return replayed


def _replay_batch(con, mapping, gate: QualityGate, parameters: dict[str, Any], rows: pd.DataFrame, now: dt.datetime) -> list[int]:
    """Parse, check and insert one batch's waiting rows; returns the lines that reached raw."""
    table = TABLES[mapping.table]
    frame = pd.DataFrame.from_records([json.loads(r) for r in rows["record"]]).astype(object)
    frame = frame.where(frame.notna(), None)
    frame["_line"] = rows["line"].astype("int64").to_numpy()
    file = rows["file"].iloc[0]
    try:
        batch = parse(RawFrame(frame), mapping, table, file)
    except BatchRejected as exc:
        log.warning("quarantined rows of %s not replayed: %s", file, exc)
        return []
    good = _checked_rows(batch, table.name, gate, parameters)
    if good.empty:
        return []
    key = list(table.key)
    columns = [*table.column_names, "_line"]
    with registered(con, "replayed_rows", good[columns]):
        new = con.execute(
            f"select * from replayed_rows r where not exists (select 1 from raw.{table.name} t where "
            + " and ".join(f"t.{k} = r.{k}" for k in key)
            + ")"
        ).df()
    if new.empty:
        return []
    insert = new.assign(_batch_id=rows["batch_id"].iloc[0], _source=rows["source"].iloc[0], _file=file, _loaded_at=now)
    names = [*table.column_names, "_batch_id", "_source", "_file", "_line", "_loaded_at"]
    insert_frame(con, f"raw.{table.name}", insert[names])
    return sorted(set(new["_line"].astype(int).tolist()))


def _checked_rows(batch: ParsedBatch, table: str, gate: QualityGate, parameters: dict[str, Any]) -> pd.DataFrame:
    """The typed rows the quality gate finds nothing wrong with now (a line loads whole)."""
    if batch.typed.empty:
        return batch.typed
    frame = batch.typed.assign(_file_index=0)
    result = gate.validate(table, frame, parameters, texts=batch.texts)
    bad = {p.line for p in batch.problems} | {p.line for p in result.row_problems}
    if result.failures_by_file:
        return batch.typed.iloc[0:0]
    return batch.typed[~batch.typed["_line"].isin(bad)]


def _move(con, batch_id: str, table: str, file: str, lines: list[int], run_id: str, now: dt.datetime) -> None:
    """The rows are in raw now: out of quarantine, and the batch's counts follow."""
    con.execute("delete from meta.quarantine where batch_id = ? and list_contains(?, line)", [batch_id, lines])
    con.execute(
        "update meta.batches set rows_loaded = rows_loaded + ?, rows_quarantined = rows_quarantined - ? where batch_id = ?",
        [len(lines), len(lines), batch_id],
    )
    con.execute("insert into meta.replayed values (?, ?, ?, ?, ?, ?)", [batch_id, table, file, len(lines), run_id, now])
