"""Writing one batch: its good rows to raw, its bad rows to quarantine, its record to
meta.batches - in one transaction, so a batch is in the warehouse whole or not at all.
Every row read ends up in raw or in quarantine; the batch records both counts.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from pipelines import clock
from pipelines.contract import TABLES
from pipelines.errors import InputError
from pipelines.ingest.mapping import TableMapping
from pipelines.ingest.parse import ParsedBatch, Problem, Records
from pipelines.ingest.readers import BatchRejected
from pipelines.ingest.report import FileOutcome
from pipelines.warehouse import Transaction, insert_frame, registered, transaction


@dataclass
class Pending:
    path: Path
    rel: str
    source: str
    mapping: TableMapping
    checksum: str
    size: int


@dataclass(frozen=True)
class BatchContext:
    """What every batch of a run is written with."""

    run_id: str
    as_of: dt.date
    share_rule: tuple[float, int]  # (max_quarantine_share, min_rows_for_quarantine_share)
    dry_run: bool = False


@dataclass
class _Write:
    """One batch being written: where, as what, and what it has come to."""

    con: duckdb.DuckDBPyConnection
    item: Pending
    context: BatchContext
    outcome: FileOutcome
    now: dt.datetime

    @property
    def batch_id(self) -> str:
        return self.outcome.batch_id or ""

    def record(self, status: str, read: int, loaded: int, quarantined: int, extra: list[str], message: str, encoding) -> None:
        _record_batch(
            self.con,
            self.item,
            self.batch_id,
            status,
            read,
            loaded,
            quarantined,
            extra,
            message,
            self.context.run_id,
            self.context.as_of,
            self.now,
            encoding,
        )


def write_batch(
    con: duckdb.DuckDBPyConnection,
    item: Pending,
    batch: ParsedBatch | BatchRejected,
    gate_problems: list[Problem],
    batch_failures: list[str],
    context: BatchContext,
    hold: str | None = None,
    *,
    in_transaction: bool = False,
) -> tuple[FileOutcome, pd.DataFrame | None, dict[int, list[Problem]]]:
    """Write one batch in one transaction; returns its outcome, the rows that went to raw and
    the problems of each line. A dry run writes the same and rolls back.

    `in_transaction`: the caller holds a transaction for several batches (a group of a
    table's files, committed together) and discards it on a dry run."""
    table = item.mapping.table
    batch_id = f"{item.source}.{table}.{item.checksum[:16]}"
    w = _Write(con, item, context, FileOutcome(item.source, table, item.rel, "loaded", batch_id), clock.utc_naive_now())
    with nullcontext(Transaction()) if in_transaction else transaction(con) as tx:
        # A refused or held batch is tried again on a later run: replace what its last try left.
        con.execute("delete from meta.quarantine where batch_id = ?", [batch_id])
        con.execute("delete from meta.batches where batch_id = ?", [batch_id])
        if isinstance(batch, BatchRejected):
            problems_by_line, good = _write_rejected_read(w, batch), None
        else:
            problems_by_line = _problems_by_line([*batch.problems, *gate_problems])
            w.outcome.rows_read = batch.rows_read
            w.outcome.extra_columns = batch.extra_columns
            if hold:
                good = _write_held(w, batch, hold)
            else:
                failures = _batch_failures(batch, problems_by_line, batch_failures, context.share_rule)
                good = _write_refused(w, batch, problems_by_line, failures) if failures else _write_loaded(w, batch, problems_by_line)
        if context.dry_run:
            tx.discard()  # everything was checked and written inside the transaction; throw it away
            if w.outcome.status == "loaded":
                w.outcome.status = "valid"
    return w.outcome, good, problems_by_line


def _problems_by_line(problems: list[Problem]) -> dict[int, list[Problem]]:
    out: dict[int, list[Problem]] = {}
    for p in problems:
        out.setdefault(p.line, []).append(p)
    return out


def _write_rejected_read(w: _Write, batch: BatchRejected) -> dict[int, list[Problem]]:
    """A file that could not be read or mapped: whatever rows it still yields go to quarantine."""
    w.outcome.status = "rejected"
    w.outcome.message = f"{batch.reason} [{batch.expectation or 'read'}]"
    records, problems_by_line = _rejected_rows(batch, w.outcome.message)
    w.outcome.rows_read = len(records)
    quarantined = _quarantine(w.con, w.item, w.batch_id, records, problems_by_line, w.now)
    w.outcome.rows_quarantined = quarantined
    if quarantined:
        w.outcome.quarantine_reasons = {"batch rejected": quarantined}
    encoding = batch.raw.encoding if batch.raw is not None else None
    w.record("rejected", w.outcome.rows_read, 0, quarantined, [], w.outcome.message, encoding)
    return problems_by_line


def _write_held(w: _Write, batch: ParsedBatch, hold: str) -> None:
    """Nothing of it is written: its rows wait for their accounts."""
    w.outcome.status = "held"
    w.outcome.message = hold
    w.record("held", 0, 0, 0, batch.extra_columns, hold, batch.encoding)


def _batch_failures(batch: ParsedBatch, problems_by_line: dict[int, list[Problem]], failures: list[str], share_rule) -> list[str]:
    """Why the whole batch is refused: the gate's batch-level findings, and too many bad rows."""
    # A batch without rows was not validated (there was nothing to validate).
    out = list(failures) if len(batch.typed) else []
    max_share, min_rows = share_rule
    share = len(problems_by_line) / max(batch.rows_read, 1)
    # A small file (a daily increment of a few rows) is not judged by its share of bad
    # rows: one bad record of three is a bad record, not a wrong mapping.
    if batch.rows_read >= min_rows and share > max_share:
        first = min(problems_by_line)
        out.append(
            f"{len(problems_by_line)} of {batch.rows_read} rows ({share:.0%}) failed the checks, more than the "
            f"{max_share:.0%} max_quarantine_share allows for files of {min_rows} rows or more (config: ingest); "
            f"this usually means a wrong mapping. First problem: line {first}: {problems_by_line[first][0].reason} "
            "[max_quarantine_share]"
        )
    return out


def _write_refused(w: _Write, batch: ParsedBatch, problems_by_line: dict[int, list[Problem]], failures: list[str]) -> None:
    """Every row of a refused batch is accounted for in quarantine, with the batch's reason."""
    w.outcome.status = "rejected"
    w.outcome.message = "; ".join(failures)
    reason = "batch rejected: " + w.outcome.message
    for line in batch.records:
        problems_by_line.setdefault(line, []).insert(0, Problem(line, None, None, reason[:1000], None, "batch"))
    quarantined = _quarantine(w.con, w.item, w.batch_id, batch.records, problems_by_line, w.now)
    w.outcome.rows_quarantined = quarantined
    w.outcome.quarantine_reasons = {"batch rejected": quarantined}
    w.record("rejected", batch.rows_read, 0, quarantined, batch.extra_columns, w.outcome.message, batch.encoding)


def _write_loaded(w: _Write, batch: ParsedBatch, problems_by_line: dict[int, list[Problem]]) -> pd.DataFrame:
    """Good rows to raw, bad ones to quarantine; the batch's counts must add up."""
    table, item = w.item.mapping.table, w.item
    good = batch.typed[~batch.typed["_line"].isin(set(problems_by_line))] if problems_by_line else batch.typed
    if len(good):
        constants = {"_batch_id": w.batch_id, "_source": item.source, "_file": item.rel, "_loaded_at": w.now}
        insert_frame(w.con, f"raw.{table}", good[[*TABLES[table].column_names, "_line"]], constants)
    quarantined = _quarantine(w.con, item, w.batch_id, batch.records, problems_by_line, w.now)
    # Counted in input rows: an unpivoted line is several raw rows but one row read.
    w.outcome.rows_loaded = int(good["_line"].nunique())
    w.outcome.rows_quarantined = quarantined
    reasons: dict[str, int] = {}
    for plist in problems_by_line.values():
        key = plist[0].reason.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    w.outcome.quarantine_reasons = reasons
    if w.outcome.rows_loaded + w.outcome.rows_quarantined != w.outcome.rows_read:
        raise InputError(
            f"{item.rel}: row accounting does not add up ({w.outcome.rows_read} read, "
            f"{w.outcome.rows_loaded} to raw, {w.outcome.rows_quarantined} to quarantine); nothing was loaded"
        )
    w.outcome.rows_filtered = batch.rows_filtered
    w.outcome.values_nulled = _nulled_counts(batch.nulled)
    w.outcome.message = "; ".join(_notes(batch, item.mapping))
    w.record("loaded", batch.rows_read, w.outcome.rows_loaded, quarantined, batch.extra_columns, w.outcome.message, batch.encoding)
    # What earlier tries of this file left (refused, or held back with other content) is
    # history now: its quarantine rows stay as the record of that delivery.
    w.con.execute(
        "update meta.batches set status = 'superseded', message = concat_ws(' ', message, ?) "
        "where file = ? and table_name = ? and status in ('rejected', 'held') and batch_id <> ?",
        [f"(superseded by batch {w.batch_id})", item.rel, table, w.batch_id],
    )
    return good


def _nulled_counts(nulled: list[Problem]) -> dict[str, int]:
    """Values set to null by the `bad_values` policy, by column and reason."""
    counts: dict[str, int] = {}
    for p in nulled:
        key = f"{p.column}: {p.reason.split(':')[0]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _notes(batch: ParsedBatch, mapping: TableMapping) -> list[str]:
    """What a user should know about a loaded batch (kept in meta.batches.message)."""
    notes = []
    if batch.header_only:
        # An empty extract (a day without new tickets): loaded as a batch of 0 rows, so the
        # file is known by its checksum and skipped next time, and the run goes on.
        notes.append("no rows (header only)")
    elif not batch.rows_read and mapping.aggregate:
        notes.append("no rows (no line has a value in " + ", ".join(mapping.aggregate.by) + ")")
    if batch.rows_filtered:
        notes.append(f"{batch.rows_filtered} row(s) left out by the mapping's where: {mapping.where}")
    if batch.nulled:
        columns = sorted({p.column for p in batch.nulled})
        lines = len({p.line for p in batch.nulled})
        notes.append(
            f"{len(batch.nulled)} bad value(s) in {', '.join(columns)} set to null on {lines} row(s) "
            "(the mapping's bad_values policy); the rows were loaded"
        )
    if batch.extra_columns:
        notes.append("extra column(s) not in the contract, not loaded: " + ", ".join(batch.extra_columns))
    return notes + batch.notes


def resolve_duplicates(problems: list[Problem], frame: pd.DataFrame, table) -> list[Problem]:
    """Apply the duplicate-key policy to the gate's duplicate findings.

    Rows that repeat another row exactly are harmless re-sends: the first is kept, the rest
    are quarantined as duplicates of it. Rows that share a key but differ are a conflict
    nobody can settle automatically: all of them are quarantined, naming each other.
    """
    dupes = [p for p in problems if p.check == "expect_compound_columns_to_be_unique"]
    if not dupes:
        return problems
    others = [p for p in problems if p.check != "expect_compound_columns_to_be_unique"]
    key = [*table.key, *([table.version_column] if table.version_column else []), "_file_index"]
    content = [c for c in table.column_names]
    rows = frame.loc[[p.index for p in dupes]]
    by_index = {p.index: p for p in dupes}
    kept: list[Problem] = []
    for _, group in rows.groupby(key, dropna=False, sort=False):
        lines = group["_line"].tolist()
        identical = len(group[content].astype(str).drop_duplicates()) == 1
        first = group.index[0]
        for index, _line in zip(group.index, lines, strict=False):
            p = by_index[index]
            if identical:
                if index == first:
                    continue
                reason = f"duplicate row: repeats line {lines[0]} ({p.column} {p.value!r})"
            else:
                reason = f"duplicate key with different values: {p.column} {p.value!r} on lines {', '.join(map(str, lines))}"
            kept.append(Problem(p.line, p.column, p.value, reason, p.expected, p.check, p.index))
    return others + kept


def _rejected_rows(batch: BatchRejected, message: str) -> tuple[Records, dict[int, list[Problem]]]:
    """The rows of a refused file (as far as it could be read), each with the batch's reason."""
    if batch.raw is None:
        return Records(), {}
    reason = ("batch rejected: " + message)[:1000]
    records = Records(batch.raw.frame, {bad.line: {"_text": bad.text} for bad in batch.raw.bad_rows})
    problems = {line: [Problem(line, None, None, reason, None, batch.expectation or "batch")] for line in records}
    for bad in batch.raw.bad_rows:
        problems[bad.line].append(Problem(bad.line, bad.column, bad.text[:200] if bad.text else None, bad.reason, bad.expected))
    return records, problems


# One encoder for the few rows kept as raw text (lines that could not be split into fields).
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)

# Each quarantined line: its first problem in columns, every problem and the row as read as
# JSON - built by DuckDB over the whole batch at once, not row by row in Python. Most lines
# have one problem: only the others are grouped (an ordered aggregate per line costs seconds
# for 100,000s of lines).
_QUARANTINE_SQL = """
insert into meta.quarantine
select ?, ?, ?, ?, f.line, f.column_name, left(f.value, 1000), f.reason, f.expected,
    coalesce(l.problems, to_json([{'column': f.column_name, 'value': f.value, 'reason': f.reason, 'check': f.check_name}])),
    coalesce(r.record, '{}')::json,
    ?
from quarantined_problems f
left join (
    select line, to_json(list({'column': column_name, 'value': value, 'reason': reason, 'check': check_name} order by position)) as problems
    from quarantined_problems
    where line in (select line from quarantined_problems where position > 0)
    group by line
) l on l.line = f.line
left join quarantined_records r on r.line = f.line
where f.position = 0
order by f.line
"""


def _quarantine(con, item: Pending, batch_id: str, records: Mapping[int, dict], problems_by_line: dict[int, list[Problem]], now) -> int:
    if not problems_by_line:
        return 0
    flat = [
        (line, i, p.column, None if p.value is None else str(p.value), p.reason, p.expected, p.check)
        for line, plist in problems_by_line.items()
        for i, p in enumerate(plist)
    ]
    problems = pd.DataFrame(flat, columns=["line", "position", "column_name", "value", "reason", "expected", "check_name"])
    problems = problems.astype({"line": "int64", "position": "int64"})
    as_json = _records_as_json(con, records, problems["line"].unique())
    with registered(con, "quarantined_problems", problems), registered(con, "quarantined_records", as_json):
        con.execute(_QUARANTINE_SQL, [batch_id, item.source, item.mapping.table, item.rel, now])
    return len(problems_by_line)


def _records_as_json(con, records: Mapping[int, dict], lines) -> pd.DataFrame:
    """(line, record): each line's row as read, as JSON text. DuckDB writes the JSON of the
    rows that were split into fields; lines kept as raw text are few and done here."""
    if not isinstance(records, Records):
        return pd.DataFrame({"line": list(lines), "record": [_JSON.encode(records.get(int(line), {})) for line in lines]})
    rows, extra = records.rows_of(lines)
    out = [pd.DataFrame({"line": list(extra), "record": [_JSON.encode(record) for record in extra.values()]}, dtype=object)]
    if len(rows):
        with registered(con, "quarantined_rows", rows):
            out.append(
                con.execute(
                    "select _line as line, cast(json_merge_patch(to_json(r), '{\"_line\": null}') as varchar) as record from quarantined_rows r"
                ).df()
            )
    return pd.concat(out, ignore_index=True).astype({"line": "int64"})


def _record_batch(con, item: Pending, batch_id, status, read, loaded, quarantined, extra, message, run_id, as_of, now, encoding) -> None:
    con.execute(
        "insert into meta.batches values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            batch_id,
            item.source,
            item.mapping.table,
            item.rel,
            item.checksum,
            item.size,
            encoding,
            status,
            read,
            loaded,
            quarantined,
            extra or [],
            message or None,
            run_id,
            as_of,
            now,
        ],
    )
