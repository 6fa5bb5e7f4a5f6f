"""Load new landing files into the raw tables: read, map, type, gate, quarantine, count.

Rules kept here (DESIGN.md, "Storage and concurrency"):
- raw tables are append-only; every row carries `_batch_id`, `_source`, `_file`, `_line`,
  `_loaded_at`;
- a file is one batch; its id comes from its content, so loading the same file twice (under
  any name) adds nothing; a file whose content changed after it was loaded is reported as a
  conflict and not appended;
- every row read ends up in raw or in quarantine, and the batch records both counts;
- a batch is written in one transaction: it is in the warehouse whole or not at all;
- a batch-level failure (unreadable, empty, missing column, too many bad rows) is recorded
  and, once every other file is handled, stops the run with a message naming the file;
  the rows such a file still yields are in quarantine with the batch's reason;
- a file with a header but no rows is an empty extract, not a failure: it loads as a batch
  of 0 rows ("no rows (header only)"), so it is skipped by checksum next time;
- rows of other tables must name an account that is in raw (or loads in this run);
- each run's validation results and its report are kept under `<quality>/<run_id>/`.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from pipelines.contract import TABLES
from pipelines.config import load_config
from pipelines.errors import ConfigError, InputError
from pipelines.ingest.mapping import (
    SourceMapping,
    TableMapping,
    file_format,
    load_mappings,
    mapping_for,
)
from pipelines.ingest.parse import ParsedBatch, Problem, Records, parse
from pipelines.ingest.readers import BatchRejected, RawFrame, read_file
from pipelines.quality.gate import QualityGate
from pipelines.settings import EXPECTATIONS_DIR, Settings

log = logging.getLogger(__name__)

# Accounts first: the other tables' rows are checked against the accounts known by then.
LOAD_ORDER = ("accounts", "order_lines", "support_tickets", "quotes", "survey_responses")
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".lock")


class GateFailed(InputError):
    """One or more batches were refused; the message lists each with its reason."""


@dataclass
class FileOutcome:
    source: str
    table: str
    file: str
    status: str  # loaded | valid (dry run) | duplicate | already_loaded | conflict | rejected
    batch_id: str | None = None
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    message: str = ""
    extra_columns: list[str] = field(default_factory=list)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestReport:
    as_of: str
    files: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0
    validation_files: list[str] = field(default_factory=list)
    # Wall time per stage, summed over files: discover (list and checksum files), read (file
    # to text columns), parse (map and type, in DuckDB), gate setup (import
    # great_expectations and load the suites, once per process), validate (run the suites),
    # write (raw, quarantine and meta.batches, one transaction per file).
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, stage: str, started: float) -> float:
        """Add the time since `started` to `stage`; returns now, to start the next stage."""
        now = time.monotonic()
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - started
        return now

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files if f.status in ("loaded", "valid", "rejected"))

    @property
    def rows_loaded(self) -> int:
        return sum(f.rows_loaded for f in self.files if f.status in ("loaded", "valid"))

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files if f.status in ("loaded", "valid", "rejected"))

    @property
    def rejected(self) -> list[FileOutcome]:
        return [f for f in self.files if f.status == "rejected"]

    @property
    def conflicts(self) -> list[FileOutcome]:
        return [f for f in self.files if f.status == "conflict"]

    def summary(self) -> str:
        parts = [
            f"{self.count('valid')} file(s) would load (dry run)" if self.count("valid") else f"{self.count('loaded')} file(s) loaded",
            f"{self.rows_read} rows read",
            f"{self.rows_loaded} to raw",
            f"{self.rows_quarantined} to quarantine",
        ]
        skipped = self.count("already_loaded") + self.count("duplicate")
        if skipped:
            parts.append(f"{skipped} already loaded")
        if self.conflicts:
            parts.append(f"{len(self.conflicts)} changed after loading (not appended)")
        if self.rejected:
            parts.append(f"{len(self.rejected)} rejected")
        return ", ".join(parts) + f" in {self.seconds:.1f} s"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Pending:
    path: Path
    rel: str
    source: str
    mapping: TableMapping
    checksum: str
    size: int


def checksum(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _discover(landing: Path, mappings: dict[str, SourceMapping]) -> list[tuple[str, TableMapping, Path]]:
    """Every (source, table mapping, file) below the landing folder, in load order."""
    found = []
    if not landing.exists():
        return found
    for source_dir in sorted(p for p in landing.iterdir() if p.is_dir() and not p.name.startswith(".")):
        mapping = mapping_for(source_dir.name, mappings)
        for table in LOAD_ORDER:
            tm = mapping.for_table(table)
            folder = source_dir / tm.folder_table
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if not path.is_file() or path.name.startswith((".", "~$")) or path.name.endswith(IGNORED_SUFFIXES):
                    continue
                if fnmatch.fnmatch(path.name, tm.files):
                    found.append((source_dir.name, tm, path))
    order = {t: i for i, t in enumerate(LOAD_ORDER)}
    return sorted(found, key=lambda x: (order[x[1].table], x[0], str(x[2])))


def ingest(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    run_id: str,
    sources: list[str] | None = None,
    accept_changed: bool = False,
    max_quarantine_share: float = 0.5,
    known_currencies: list[str] | None = None,
    gate: QualityGate | None = None,
    dry_run: bool = False,
) -> IngestReport:
    """Load every new landing file; raise GateFailed after the others if any batch was refused.

    With `dry_run` every file is read, mapped and checked exactly as for a load, and the
    report says what would happen, but nothing is written to the warehouse (the validation
    results and the report are still kept under `<quality>/<run_id>/`, to be read).

    `known_currencies` defaults to the currencies with a rate in the configuration
    (`fx_rates` in config/needseg.yaml, or NEEDSEG_CONFIG).
    """
    started = time.monotonic()
    report = IngestReport(as_of=as_of.isoformat())
    mappings = load_mappings(settings.mappings_dir)
    if known_currencies is None:
        known_currencies = list(load_config(settings.config_path)["fx_rates"])
    gate = gate or QualityGate(EXPECTATIONS_DIR)
    latest_allowed = pd.Timestamp(as_of) + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    loaded = {
        (r[0], r[1]): r[2]
        for r in con.execute("select table_name, checksum, batch_id from meta.batches where status = 'loaded'").fetchall()
    }
    by_file = {
        (r[0], r[1]): (r[2], r[3])
        for r in con.execute(
            "select table_name, file, checksum, batch_id from meta.batches where status = 'loaded' "
            "qualify row_number() over (partition by table_name, file order by loaded_at desc) = 1"
        ).fetchall()
    }
    known_accounts: set[str] = {r[0] for r in con.execute("select distinct account_id from raw.accounts").fetchall()}

    pending: dict[str, list[_Pending]] = {t: [] for t in LOAD_ORDER}
    clock = time.monotonic()
    for source, tm, path in _discover(settings.landing_dir, mappings):
        if sources and source not in sources:
            continue
        rel = str(path.relative_to(settings.landing_dir))
        digest = checksum(path)
        if (tm.table, digest) in loaded:
            previous = loaded[(tm.table, digest)]
            same_file = by_file.get((tm.table, rel), (None, None))[1] == previous
            report.files.append(
                FileOutcome(source, tm.table, rel, "already_loaded" if same_file else "duplicate", previous,
                            message="" if same_file else f"identical to a file already loaded as batch {previous}")
            )
            continue
        if (tm.table, rel) in by_file and not accept_changed:
            old_digest, old_batch = by_file[(tm.table, rel)]
            if not dry_run:
                con.execute(
                    "insert or ignore into meta.file_conflicts values (?, ?, ?, ?, ?)",
                    [rel, old_digest, digest, old_batch, dt.datetime.now()],
                )
            report.files.append(
                FileOutcome(
                    source, tm.table, rel, "conflict", old_batch,
                    message=(
                        f"{rel} changed after it was loaded as batch {old_batch}; the new content was not appended. "
                        "Deliver changes as a new file, or re-run with --accept-changed to load it as a new batch."
                    ),
                )
            )
            continue
        pending[tm.table].append(_Pending(path, rel, source, tm, digest, path.stat().st_size))
    clock = report.timed("discover", clock)

    # A file read for two tables (accounts aggregated from the order-line files) is read
    # once per run: each table's mapping then works on the same text columns.
    reads: dict[tuple, RawFrame | BatchRejected] = {}
    readers_left = {}
    for items in pending.values():
        for item in items:
            readers_left[_read_key(item)] = readers_left.get(_read_key(item), 0) + 1

    for table in LOAD_ORDER:
        items = pending[table]
        if not items:
            continue
        parsed: list[tuple[_Pending, ParsedBatch | BatchRejected]] = []
        for item in items:
            key = _read_key(item)
            try:
                if key not in reads:
                    try:
                        reads[key] = _read(item)
                    except BatchRejected as exc:
                        reads[key] = exc
                raw = reads[key]
                readers_left[key] -= 1
                if not readers_left[key]:
                    del reads[key]
                clock = report.timed("read", clock)
                if isinstance(raw, BatchRejected):
                    raise _for_table(raw, item)
                parsed.append((item, parse(raw, item.mapping, TABLES[table], item.path)))
            except BatchRejected as exc:
                parsed.append((item, exc))
            clock = report.timed("parse", clock)
        # Validate all of this table's new files in one GE run, then split by file. A file
        # with no rows (a header-only extract) has nothing to validate and is not part of it:
        # the suite's row-count expectation is about the rows validated, not about files.
        frames, texts = [], []
        for i, (_, batch) in enumerate(parsed):
            if isinstance(batch, ParsedBatch) and len(batch.typed):
                frames.append(batch.typed.assign(_file_index=i))
                texts.append(batch.texts)
        gate_problems: dict[int, list[Problem]] = {}
        batch_failures: list[str] = []
        if frames:
            gate.suite(table)  # loads great_expectations and the suite once per process
            clock = report.timed("gate setup", clock)
            combined = pd.concat(frames, ignore_index=True)
            result = gate.validate(
                table,
                combined,
                {
                    "known_account_ids": sorted(known_accounts),
                    "known_currencies": sorted(known_currencies or []),
                    "latest_allowed": latest_allowed,
                },
                texts=pd.concat(texts, ignore_index=True) if all(t is not None for t in texts) else None,
            )
            files = {i: item.rel for i, (item, _) in enumerate(parsed)}
            _save_validation(settings, run_id, table, result.document, files, as_of)
            report.validation_files.append(str(settings.quality_dir / run_id / f"{table}.json"))
            batch_failures = result.batch_failures
            file_of = combined["_file_index"].to_numpy()
            for problem in _resolve_duplicates(result.row_problems, combined, TABLES[table]):
                gate_problems.setdefault(int(file_of[problem.index]), []).append(problem)
            clock = report.timed("validate", clock)
        for i, (item, batch) in enumerate(parsed):
            outcome, loaded_rows = _write_batch(
                con, item, batch, gate_problems.get(i, []), batch_failures, run_id, as_of, max_quarantine_share, dry_run
            )
            report.files.append(outcome)
            if table == "accounts" and loaded_rows is not None:
                # Only accounts that reached raw make other tables' rows valid: an account row
                # quarantined here must not vouch for its orders.
                known_accounts.update(loaded_rows["account_id"].dropna().astype(str))
        clock = report.timed("write", clock)

    report.seconds = time.monotonic() - started
    _save_report(settings, run_id, report, dry_run)
    problems = report.rejected
    if problems:
        lines = [f"- {f.file}: {f.message}" for f in problems]
        raise GateFailed(
            f"{len(problems)} batch(es) refused by the quality gate; nothing from them was loaded, "
            "and the run stops here:\n" + "\n".join(lines)
        )
    return report


def _read_key(item: _Pending) -> tuple:
    """Files read the same way give the same text columns."""
    return (str(item.path), item.checksum, item.mapping.read)


def _for_table(exc: BatchRejected, item: _Pending) -> BatchRejected:
    """A read failure shared by the tables that read one file: each table records its own
    batch, but only the table the folder belongs to accounts for the file's rows."""
    if item.mapping.read_from and item.mapping.read_from != item.mapping.table:
        return BatchRejected(exc.file, exc.reason, expectation=exc.expectation)
    return exc


def _read(item: _Pending) -> RawFrame:
    """The file as text columns; anything that stops it being read refuses the batch."""
    try:
        fmt = file_format(item.path, item.mapping.read)
    except ConfigError as exc:
        raise BatchRejected(item.path, str(exc).split(": ", 1)[-1], expectation="file_format") from None
    try:
        return read_file(item.path, fmt, item.mapping.read)
    except BatchRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file must not stop the other files
        raise BatchRejected(item.path, f"could not be read as {fmt}: {type(exc).__name__}: {exc}", expectation="file_format") from None


def _save_report(settings: Settings, run_id: str, report: IngestReport, dry_run: bool) -> None:
    """Keep what this run did to each file next to its validation results (for data docs)."""
    folder = settings.quality_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    document = {"run_id": run_id, "dry_run": dry_run, "summary": report.summary(), **report.as_dict()}
    (folder / "ingest.json").write_text(json.dumps(document, indent=1, default=str, ensure_ascii=False))


def _resolve_duplicates(problems: list[Problem], frame: pd.DataFrame, table) -> list[Problem]:
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


def _save_validation(settings: Settings, run_id: str, table: str, document: dict, files: dict[int, str], as_of: dt.date) -> None:
    """Keep GE's validation result for this run and table, with failing rows named by file."""
    for entry in document.get("results", []):
        for row in (entry.get("result") or {}).get("needseg_unexpected_rows", []):
            row["file"] = files.get(row.pop("file_index", 0))
    document.setdefault("meta", {})["needseg"] = {"run_id": run_id, "table": table, "as_of": as_of.isoformat(), "files": sorted(files.values())}
    folder = settings.quality_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{table}.json").write_text(json.dumps(document, indent=1, default=str, ensure_ascii=False))


def _write_batch(
    con: duckdb.DuckDBPyConnection,
    item: _Pending,
    batch: ParsedBatch | BatchRejected,
    gate_problems: list[Problem],
    batch_failures: list[str],
    run_id: str,
    as_of: dt.date,
    max_quarantine_share: float,
    dry_run: bool = False,
) -> tuple[FileOutcome, pd.DataFrame | None]:
    """Write one batch in one transaction; returns its outcome and the rows that went to raw."""
    table = item.mapping.table
    batch_id = f"{item.source}.{table}.{item.checksum[:16]}"
    now = dt.datetime.now()
    outcome = FileOutcome(item.source, table, item.rel, "loaded", batch_id)
    con.execute("begin transaction")
    try:
        # A refused batch may be retried on a later run: replace what its last try left.
        con.execute("delete from meta.quarantine where batch_id = ?", [batch_id])
        con.execute("delete from meta.batches where batch_id = ?", [batch_id])
        if isinstance(batch, BatchRejected):
            outcome.status = "rejected"
            outcome.message = f"{batch.reason} [{batch.expectation or 'read'}]"
            # Whatever rows the refused file still yields are accounted for in quarantine.
            records, problems_by_line = _rejected_rows(batch, outcome.message)
            outcome.rows_read = len(records)
            quarantined = _quarantine(con, item, batch_id, records, problems_by_line, now)
            outcome.rows_quarantined = quarantined
            if quarantined:
                outcome.quarantine_reasons = {"batch rejected": quarantined}
            encoding = batch.raw.encoding if batch.raw is not None else None
            _record_batch(con, item, batch_id, "rejected", outcome.rows_read, 0, quarantined, [], outcome.message, run_id, as_of, now, encoding)
            con.execute("rollback" if dry_run else "commit")
            return outcome, None

        problems_by_line: dict[int, list[Problem]] = {}
        for p in batch.problems + gate_problems:
            problems_by_line.setdefault(p.line, []).append(p)
        outcome.rows_read = batch.rows_read
        outcome.extra_columns = batch.extra_columns
        bad_lines = set(problems_by_line)
        good = batch.typed[~batch.typed["_line"].isin(bad_lines)]
        share = len(bad_lines) / max(batch.rows_read, 1)
        # A batch without rows was not validated (there was nothing to validate): the
        # failures of the other files' validation are not its own.
        failures = list(batch_failures) if len(batch.typed) else []
        if share > max_quarantine_share:
            failures.append(
                f"{len(bad_lines)} of {batch.rows_read} rows ({share:.0%}) failed the checks, more than the "
                f"{max_quarantine_share:.0%} allowed; this usually means a wrong mapping. First problem: "
                f"line {min(bad_lines)}: {problems_by_line[min(bad_lines)][0].reason} [max_quarantine_share]"
            )
        if failures:
            outcome.status = "rejected"
            outcome.message = "; ".join(failures)
            # Every row of a refused batch is accounted for in quarantine, with the batch's reason.
            reason = "batch rejected: " + outcome.message
            for line in batch.records:
                problems_by_line.setdefault(line, []).insert(0, Problem(line, None, None, reason[:1000], None, "batch"))
            quarantined = _quarantine(con, item, batch_id, batch.records, problems_by_line, now)
            outcome.rows_quarantined = quarantined
            outcome.quarantine_reasons = {"batch rejected": quarantined}
            _record_batch(con, item, batch_id, "rejected", batch.rows_read, 0, quarantined, batch.extra_columns, outcome.message, run_id, as_of, now, batch.encoding)
            con.execute("rollback" if dry_run else "commit")
            return outcome, None

        if len(good):
            insert = good.assign(_batch_id=batch_id, _source=item.source, _file=item.rel, _loaded_at=now)
            columns = [*TABLES[table].column_names, "_batch_id", "_source", "_file", "_line", "_loaded_at"]
            con.register("incoming", insert[columns])
            con.execute(f"insert into raw.{table} ({', '.join(columns)}) select {', '.join(columns)} from incoming")
            con.unregister("incoming")
        quarantined = _quarantine(con, item, batch_id, batch.records, problems_by_line, now)
        # Counted in input rows: an unpivoted line is several raw rows but one row read.
        outcome.rows_loaded = int(good["_line"].nunique())
        outcome.rows_quarantined = quarantined
        reasons: dict[str, int] = {}
        for plist in problems_by_line.values():
            key = plist[0].reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        outcome.quarantine_reasons = reasons
        if outcome.rows_loaded + outcome.rows_quarantined != outcome.rows_read:
            raise InputError(
                f"{item.rel}: row accounting does not add up ({outcome.rows_read} read, "
                f"{outcome.rows_loaded} to raw, {outcome.rows_quarantined} to quarantine); nothing was loaded"
            )
        notes = []
        if batch.header_only:
            # An empty extract (a day without new tickets): loaded as a batch of 0 rows, so the
            # file is known by its checksum and skipped next time, and the run goes on.
            notes.append("no rows (header only)")
        elif not batch.rows_read and item.mapping.aggregate:
            notes.append("no rows (no line has a value in " + ", ".join(item.mapping.aggregate.by) + ")")
        if batch.extra_columns:
            notes.append("extra column(s) not in the contract, not loaded: " + ", ".join(batch.extra_columns))
        outcome.message = "; ".join(notes)
        _record_batch(con, item, batch_id, "loaded", batch.rows_read, outcome.rows_loaded, quarantined, batch.extra_columns, outcome.message, run_id, as_of, now, batch.encoding)
        if dry_run:
            # everything was checked and written inside the transaction; throw it away
            con.execute("rollback")
            outcome.status = "valid"
        else:
            con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return outcome, good


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


# One encoder for all quarantined rows (json.dumps with options builds one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def _quarantine(con, item: _Pending, batch_id: str, records: Mapping[int, dict], problems_by_line: dict[int, list[Problem]], now) -> int:
    if not problems_by_line:
        return 0
    rows = []
    lines = sorted(problems_by_line)
    as_read = records.many(lines) if isinstance(records, Records) else [records.get(line, {}) for line in lines]
    for line, record in zip(lines, as_read, strict=True):
        plist = problems_by_line[line]
        first = plist[0]
        rows.append(
            (
                batch_id, item.source, item.mapping.table, item.rel, line, first.column,
                None if first.value is None else str(first.value)[:1000], first.reason, first.expected,
                _JSON.encode([{"column": p.column, "value": None if p.value is None else str(p.value), "reason": p.reason, "check": p.check} for p in plist]),
                _JSON.encode(record),
                now,
            )
        )
    frame = pd.DataFrame(
        rows,
        columns=["batch_id", "source", "table_name", "file", "line", "column_name", "value", "reason", "expected", "problems", "record", "quarantined_at"],
    )
    con.register("quarantined", frame)
    con.execute("insert into meta.quarantine select * replace (cast(problems as json) as problems, cast(record as json) as record) from quarantined")
    con.unregister("quarantined")
    return len(rows)


def _record_batch(con, item: _Pending, batch_id, status, read, loaded, quarantined, extra, message, run_id, as_of, now, encoding) -> None:
    con.execute(
        "insert into meta.batches values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            batch_id, item.source, item.mapping.table, item.rel, item.checksum, item.size,
            encoding, status, read, loaded, quarantined, extra or [], message or None,
            run_id, as_of, now,
        ],
    )
