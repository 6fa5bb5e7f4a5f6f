"""Load new landing files into the raw tables: read, map, type, gate, quarantine, count.

This module runs an ingest; each step has its own module:
- `discover`: every file below the landing folder and its table (never leaving the folder);
- `readers` and `parse`: a file to text columns, then mapped and typed in a DuckDB sandbox;
- the gate (`pipelines.quality.gate`, called by `_validate` here): great_expectations suites;
- `write`: one batch per transaction - raw, quarantine, meta.batches;
- `replay`: quarantined rows whose account has arrived, loaded after the run's files;
- `report`: what happened to every file, and the error (exit code) the run ends with.

Rules kept here (docs/design.md, "Storage and concurrency"):
- every file below the landing folder is accounted for in the run's report: loaded, skipped
  (already loaded), refused, held back, changed after loading, or not loadable with the reason
  and what to do (wrong folder, unknown table, a name the mapping's `files` pattern does not
  match, a format needseg cannot read). Hidden and temporary files (`.DS_Store`, `~$book.xlsx`,
  `*.part`, ...) are not data: they are listed as ignored; hidden folders are not looked into;
- table folders and `files` patterns match regardless of case (`Accounts/`, `Kunder_2026.CSV`):
  exports from Windows tools change case freely, and two folders differing only in case
  would be a mistake anyway;
- raw tables are append-only; every row carries `_batch_id`, `_source`, `_file`, `_line`,
  `_loaded_at`;
- a file is one batch; its id comes from its content, so loading the same file twice (under
  any name) adds nothing; a file whose content changed after it was loaded is reported as a
  conflict and not appended;
- every row read ends up in raw or in quarantine, and the batch records both counts;
- a batch is written in one transaction: it is in the warehouse whole or not at all;
- a batch-level failure (unreadable, empty, missing column, a batch expectation, too many bad
  rows) refuses that file only; its rows are in quarantine with the batch's reason, and it is
  tried again on the next run;
- rows of other tables must name an account that is in raw (or loads in this run). While
  an accounts file of the run could not be loaded (refused, not loadable, or its HTTP source
  failed), a file whose rows name unknown accounts is *held back* whole instead: nothing of it
  is written (`meta.batches` records it as `held`), and the next run loads it once the
  accounts are in, so no row is quarantined for an account that was merely late;
- once every file is handled the run ends with `IngestIncomplete` (a subclass per cause, each
  with its exit code and the full report) if anything was not loaded;
- each run's validation results and its report are kept under `<quality>/<run_id>/`, with
  a run id unique per run (`<label>-<UTC time>`), so a second run the same day or an
  Airflow retry never overwrites an earlier one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from pipelines import clock
from pipelines.config import load_config
from pipelines.contract import TABLES
from pipelines.errors import ConfigError, InputError
from pipelines.files import write_file_atomically
from pipelines.ingest.discover import LOAD_ORDER, Found, checksum, discover
from pipelines.ingest.mapping import (
    FORMATS,
    SourceMapping,
    TableMapping,
    file_format,
    load_mappings,
)
from pipelines.ingest.parse import ParsedBatch, Problem, Sandbox, parse
from pipelines.ingest.readers import BatchRejected, RawFrame, read_file
from pipelines.ingest.replay import replay_late_rows
from pipelines.ingest.report import (
    FileOutcome,
    FilesChanged,
    FilesNotLoadable,
    GateFailed,
    IngestIncomplete,
    IngestReport,
    SourcesNotFetched,
    problem_groups,
    problem_rows,
    save_problems,
    save_report,
)
from pipelines.ingest.write import BatchContext, Pending, resolve_duplicates, write_batch
from pipelines.quality.gate import QualityGate, add_parse_results, merge_documents, shift_files
from pipelines.settings import EXPECTATIONS_DIR, Settings
from pipelines.warehouse import transaction

log = logging.getLogger(__name__)

# The names callers know from this module (the CLI, the cycle, tests).
__all__ = [
    "FileOutcome",
    "FilesChanged",
    "FilesNotLoadable",
    "GateFailed",
    "IngestIncomplete",
    "IngestReport",
    "SourcesNotFetched",
    "ingest",
    "new_run_id",
]


def new_run_id(quality_dir: Path, label: str) -> str:
    """`<label>-<UTC time>`, unique under `quality_dir` (its folder is created here, so two
    runs in the same second get `-2`, `-3`...)."""
    stamp = clock.utc_now().strftime("%Y%m%dT%H%M%SZ")
    quality_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        run_id = f"{label}-{stamp}" + (f"-{n}" if n > 1 else "")
        try:
            (quality_dir / run_id).mkdir()
            return run_id
        except FileExistsError:
            continue
    raise InputError(f"{quality_dir}: could not find a free run folder for {label}-{stamp}")


def ingest_rules(config: dict) -> tuple[float, int]:
    """`max_quarantine_share` and `min_rows_for_quarantine_share` from the configuration."""
    rules = config["ingest"]
    try:
        share, min_rows = float(rules["max_quarantine_share"]), int(rules["min_rows_for_quarantine_share"])
    except (TypeError, ValueError):
        raise ConfigError(
            f"ingest.max_quarantine_share must be a number and ingest.min_rows_for_quarantine_share a whole number; got {rules}"
        ) from None
    if not 0 <= share <= 1 or min_rows < 0:
        raise ConfigError(f"ingest.max_quarantine_share must lie between 0 and 1 and min_rows_for_quarantine_share be >= 0; got {rules}")
    return share, min_rows


@dataclass(frozen=True)
class IngestOptions:
    """How one ingest run behaves (every field has the configuration's or a safe default)."""

    sources: list[str] | None = None  # only these sources (folders below the landing folder)
    accept_changed: bool = False  # load a file whose content changed after loading as a new batch
    max_quarantine_share: float | None = None  # default: ingest.max_quarantine_share
    min_rows_for_quarantine_share: int | None = None  # default: ingest.min_rows_for_quarantine_share
    known_currencies: list[str] | None = None  # default: the currencies of fx_rates
    dry_run: bool = False  # check everything, write nothing
    fetch: bool = False  # pull the HTTP sources into the landing folder first


@dataclass
class _Run:
    """What one ingest run knows while it works through the files."""

    settings: Settings
    con: duckdb.DuckDBPyConnection
    as_of: dt.date
    report: IngestReport
    options: IngestOptions
    mappings: dict[str, SourceMapping]
    gate: QualityGate
    share_rule: tuple[float, int]
    known_currencies: list[str]
    known_accounts: set[str] = field(default_factory=set)
    # Why the accounts of this run may be incomplete: then rows naming unknown accounts wait.
    accounts_missing: list[str] = field(default_factory=list)
    # A file read for two tables (accounts aggregated from the order-line files) is read once.
    reads: dict[tuple, RawFrame | BatchRejected] = field(default_factory=dict)
    readers_left: dict[tuple, int] = field(default_factory=dict)
    dry_run_problems: list[tuple] = field(default_factory=list)  # every row-level problem of a dry run
    sandbox: Sandbox = field(default_factory=Sandbox)  # where every file's mapping runs
    group_bytes: int = 0  # a table's files are handled in groups of this much input (ingest.group_megabytes)

    @property
    def run_id(self) -> str:
        return self.report.run_id

    _sorted_accounts: list[str] = field(default_factory=list)

    @property
    def parameters(self) -> dict:
        if len(self._sorted_accounts) != len(self.known_accounts):  # it only grows
            self._sorted_accounts = sorted(self.known_accounts)
        return {
            "known_account_ids": self._sorted_accounts,
            "known_currencies": sorted(self.known_currencies),
            "latest_allowed": pd.Timestamp(self.as_of) + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1),
        }


def ingest(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    run_id: str,
    options: IngestOptions | None = None,
    *,
    gate: QualityGate | None = None,
    **option_values,
) -> IngestReport:
    """Load every new landing file; once all are handled, raise `IngestIncomplete` (with the
    full report) if any was refused, held back, not loadable or changed, or an HTTP source
    failed, or the landing folder does not exist.

    `run_id` is a label (e.g. `ingest-2026-10-31`): the run's id, under which its
    validation results and report are kept, is the label plus the time (`report.run_id`).
    `options` (or its fields as keywords: `dry_run=True`, ...) are `IngestOptions`. With
    `fetch` the HTTP sources (mappings with an `http` section) are pulled into the landing
    folder first; a source that fails does not keep the landing files from loading. With
    `dry_run` every file is read, mapped and checked exactly as for a load, and the report
    says what would happen, but nothing is written to the warehouse (the validation results,
    the report and every row-level problem are still kept under the run's folder).

    Rows quarantined earlier only because their account was unknown are replayed once the
    account is in raw (`pipelines.ingest.replay`); the report counts them.
    """
    started = time.monotonic()
    run = _start(settings, con, as_of, run_id, options or IngestOptions(**option_values), gate)
    if run.options.fetch and not run.options.dry_run:
        run.accounts_missing += _fetch(settings, con, run.mappings, run.options.sources, run.report)
    if settings.landing_dir.is_dir():
        pending = _pending(run)
        with run.sandbox:
            for table in LOAD_ORDER:
                if pending[table]:
                    _load_table(run, table, pending[table])
        if not run.options.dry_run:
            clock = time.monotonic()
            run.report.replayed = replay_late_rows(con, run.mappings, run.gate, run.parameters, run.run_id)
            run.report.timed("replay", clock)
    elif not run.report.fetched and not run.report.fetch_error:
        run.report.landing_missing = str(settings.landing_dir)
    if run.options.dry_run and run.dry_run_problems:
        run.report.problems_file = str(save_problems(settings, run.run_id, run.dry_run_problems))
    run.report.seconds = time.monotonic() - started
    save_report(settings, run.run_id, run.report, run.options.dry_run)
    problem = run.report.problem()
    if problem is not None:
        raise problem
    return run.report


def _start(settings: Settings, con, as_of: dt.date, label: str, options: IngestOptions, gate: QualityGate | None) -> _Run:
    config = load_config(settings.config_path)
    share, min_rows = ingest_rules(config)
    if options.max_quarantine_share is not None:
        share = options.max_quarantine_share
    if options.min_rows_for_quarantine_share is not None:
        min_rows = options.min_rows_for_quarantine_share
    mappings = load_mappings(settings.mappings_dir)
    report = IngestReport(
        as_of=as_of.isoformat(),
        run_id=new_run_id(settings.quality_dir, label),
        dry_run=options.dry_run,
        started_at=clock.utc_now().isoformat(timespec="seconds"),
    )
    return _Run(
        settings=settings,
        con=con,
        as_of=as_of,
        report=report,
        options=options,
        mappings=mappings,
        gate=gate or QualityGate(EXPECTATIONS_DIR),
        share_rule=(share, min_rows),
        known_currencies=list(config["fx_rates"]) if options.known_currencies is None else list(options.known_currencies),
        known_accounts={r[0] for r in con.execute("select distinct account_id from raw.accounts").fetchall()},
        group_bytes=int(config["ingest"]["group_megabytes"]) * 2**20,
    )


def _pending(run: _Run) -> dict[str, list[Pending]]:
    """The new files of each table; every other file gets its outcome in the report."""
    clock = time.monotonic()
    loaded = {
        (r[0], r[1]): r[2]
        for r in run.con.execute("select table_name, checksum, batch_id from meta.batches where status = 'loaded'").fetchall()
    }
    by_file = {
        (r[0], r[1]): (r[2], r[3])
        for r in run.con.execute(
            "select table_name, file, checksum, batch_id from meta.batches where status = 'loaded' "
            "qualify row_number() over (partition by table_name, file order by loaded_at desc) = 1"
        ).fetchall()
    }
    found, outcomes = discover(run.settings.landing_dir, run.mappings, run.options.sources)
    run.report.files.extend(outcomes)
    run.accounts_missing += [
        f"{f.file} (not loadable)"
        for f in outcomes
        if f.status == "not_loadable" and (f.table == "accounts" or (not f.table and Path(f.file).suffix.lower() in FORMATS))
    ]
    pending: dict[str, list[Pending]] = {t: [] for t in LOAD_ORDER}
    for item in found:
        outcome = _known_file(run, item, loaded, by_file)
        if outcome is None:
            pending[item.mapping.table].append(
                Pending(item.path, item.rel, item.source, item.mapping, item.digest, item.path.stat().st_size)
            )
            key = _read_key(pending[item.mapping.table][-1])
            run.readers_left[key] = run.readers_left.get(key, 0) + 1
        elif outcome.status != "reported":
            run.report.files.append(outcome)
    run.report.timed("discover", clock)
    return pending


def _known_file(run: _Run, item: Found, loaded: dict, by_file: dict) -> FileOutcome | None:
    """The outcome of a file that is not loaded now (already loaded, a copy, in a subfolder,
    changed after loading); None for a new file."""
    tm, rel, source = item.mapping, item.rel, item.source
    item.digest = checksum(item.path)
    if (tm.table, item.digest) in loaded:
        previous = loaded[(tm.table, item.digest)]
        same_file = item.nested or by_file.get((tm.table, rel), (None, None))[1] == previous
        message = "" if same_file else f"identical to a file already loaded as batch {previous}"
        return FileOutcome(source, tm.table, rel, "already_loaded" if same_file else "duplicate", previous, message=message)
    if item.nested:
        if any(f.file == rel and f.status == "not_loadable" for f in run.report.files):
            return FileOutcome(source, tm.table, rel, "reported")  # read for two tables (read_from): reported once
        if tm.table == "accounts":
            run.accounts_missing.append(f"{rel} (not loadable)")
        folder = "/".join(Path(rel).parts[:2])
        return FileOutcome(
            source,
            tm.table,
            rel,
            "not_loadable",
            message=(
                f"in a subfolder of {folder}/: only files directly in {folder}/ are loaded; move it up into {folder}/ "
                "(or out of the landing folder, if it was archived there)"
            ),
        )
    if (tm.table, rel) in by_file and not run.options.accept_changed:
        old_digest, old_batch = by_file[(tm.table, rel)]
        if not run.options.dry_run:
            run.con.execute(
                "insert or ignore into meta.file_conflicts values (?, ?, ?, ?, ?)",
                [rel, old_digest, item.digest, old_batch, clock.utc_naive_now()],
            )
        return FileOutcome(
            source,
            tm.table,
            rel,
            "conflict",
            old_batch,
            message=(
                f"{rel} changed after it was loaded as batch {old_batch}; the new content was not appended. "
                "Deliver changes as a new file, restore the loaded version, or load it as a new batch with "
                "`needseg ingest --accept-changed` (in Airflow: trigger needseg_ingest with accept_changed)."
            ),
        )
    return None


def _parse_item(run: _Run, item: Pending) -> ParsedBatch | BatchRejected:
    """Read (once per run, whichever tables read the file) and parse one file for its table."""
    key = _read_key(item)
    clock = time.monotonic()
    if key not in run.reads:
        try:
            run.reads[key] = _read(item)
        except BatchRejected as exc:
            run.reads[key] = exc
    raw = run.reads[key]
    run.readers_left[key] -= 1
    if not run.readers_left[key]:
        del run.reads[key]
    clock = run.report.timed("read", clock)
    try:
        if isinstance(raw, BatchRejected):
            raise _for_table(raw, item)
        return parse(raw, item.mapping, TABLES[item.mapping.table], item.path, run.sandbox)
    except BatchRejected as exc:
        return exc
    finally:
        run.report.timed("parse", clock)


@dataclass
class _Checked:
    """The quality gate's findings for one table's new files, by file (position in `parsed`)."""

    problems: dict[int, list[Problem]] = field(default_factory=dict)
    failures: dict[int, list[str]] = field(default_factory=dict)
    unknown_accounts: dict[int, set[str]] = field(default_factory=dict)
    document: dict | None = None
    rows_validated: int = 0


def _validate(run: _Run, table: str, parsed: list[tuple[Pending, ParsedBatch | BatchRejected]]) -> _Checked:
    """Validate all of a table's new files in one GE run (batch-level expectations per file),
    then split by file. A file with no rows (a header-only extract) is not part of it."""
    checked = _Checked()
    frames, texts, batches = [], [], {}
    for i, (_, batch) in enumerate(parsed):
        if isinstance(batch, ParsedBatch) and len(batch.typed):
            frames.append(batch.typed.assign(_file_index=i))
            texts.append(batch.texts)
            batches[i] = batch
    if not frames:
        return checked
    clock = time.monotonic()
    run.gate.suite(table)  # loads great_expectations and the suite once per process
    clock = run.report.timed("gate setup", clock)
    combined = pd.concat(frames, ignore_index=True)
    checked.rows_validated = len(combined)
    all_texts = pd.concat(texts, ignore_index=True) if all(t is not None for t in texts) else None
    result = run.gate.validate(table, combined, run.parameters, texts=all_texts)
    checked.document, checked.failures = result.document, result.failures_by_file
    file_of = combined["_file_index"].to_numpy()
    offsets = {i: int(np.argmax(file_of == i)) for i in batches}
    for problem in resolve_duplicates(result.row_problems, combined, TABLES[table]):
        i = int(file_of[problem.index])
        if not _null_bad_value(parsed[i][0].mapping, batches[i], problem, problem.index - offsets[i]):
            checked.problems.setdefault(i, []).append(problem)
    if result.unknown_account_rows:
        rows = sorted(result.unknown_account_rows)
        for f, account in zip(file_of[rows].tolist(), combined["account_id"].iloc[rows].tolist(), strict=True):
            checked.unknown_accounts.setdefault(int(f), set()).add(str(account))
    run.report.timed("validate", clock)
    return checked


# Expectations about one column's value: a bad value there can be set to null (`bad_values`).
_SINGLE_COLUMN_CHECKS = (
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_match_regex",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_of_type",
)


def _null_bad_value(mapping: TableMapping, batch: ParsedBatch, problem: Problem, row: int) -> bool:
    """Apply the mapping's `bad_values: {column: null}` policy to a gate finding: the value
    becomes null and the row loads (the finding is kept in `batch.nulled`). False when the
    policy does not apply and the row goes to quarantine."""
    if problem.column not in mapping.nulled_columns or problem.check not in _SINGLE_COLUMN_CHECKS:
        return False
    batch.typed.iloc[row, batch.typed.columns.get_loc(problem.column)] = None
    batch.nulled.append(problem)
    return True


def _groups(items: list[Pending], limit: int) -> list[list[Pending]]:
    """The files in order, in groups of at most `limit` bytes (a larger file on its own)."""
    groups: list[list[Pending]] = []
    size = 0
    for item in items:
        if not groups or size + item.size > limit:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item.size
    return groups


def _load_table(run: _Run, table: str, items: list[Pending]) -> None:
    """Read, check and write a table's new files, a group at a time (`ingest.group_megabytes`):
    every file of a group is validated in one GE run, and what a group holds in memory is
    written and released before the next is read. The validation result is one per table."""
    document: dict | None = None
    files: dict[int, str] = {}
    for group in _groups(items, run.group_bytes):
        offset = len(files)
        files.update({offset + i: item.rel for i, item in enumerate(group)})
        found = _load_group(run, table, group)
        if found is not None:
            document = merge_documents(document, shift_files(found, offset))
    if document is not None:
        _save_validation(run.settings, run.run_id, table, document, files, run.as_of)
        run.report.validation_files.append(str(run.settings.quality_dir / run.run_id / f"{table}.json"))


def _load_group(run: _Run, table: str, items: list[Pending]) -> dict | None:
    """One group of a table's files; returns its validation result (file indices local)."""
    parsed = [(item, _parse_item(run, item)) for item in items]
    checked = _validate(run, table, parsed)
    parse_problems = [(i, p) for i, (_, batch) in enumerate(parsed) if isinstance(batch, ParsedBatch) for p in batch.problems]
    scales = _declared_scales(parsed)
    document = None
    if checked.document is not None or parse_problems or scales:
        document = checked.document or {"suite_name": table, "results": [], "meta": {}}
        add_parse_results(document, TABLES[table], parse_problems, checked.rows_validated, scales)
    blocking = (
        []
        if table == "accounts"
        else [*run.accounts_missing, *(f"{f.file} (refused)" for f in run.report.rejected if f.table == "accounts")]
    )
    clock = time.monotonic()
    # The group's batches in one transaction: each is in the warehouse whole or not at all,
    # and a group costs one commit, not one per file.
    with transaction(run.con) as tx:
        for i, (item, batch) in enumerate(parsed):
            _write_one(run, table, checked, blocking, i, item, batch)
        if run.options.dry_run:
            tx.discard()
    run.report.timed("write", clock)
    return document


def _write_one(run: _Run, table: str, checked: _Checked, blocking: list[str], i: int, item: Pending, batch) -> None:
    """Write one file of a group (inside the group's transaction) and record its outcome."""
    hold = _hold_reason(blocking, checked.unknown_accounts.get(i), checked.failures.get(i))
    outcome, loaded_rows, problems = write_batch(
        run.con,
        item,
        batch,
        checked.problems.get(i, []),
        checked.failures.get(i, []),
        BatchContext(run.run_id, run.as_of, run.share_rule, run.options.dry_run),
        hold,
        in_transaction=True,
    )
    outcome.problems = problem_groups(problems)
    if run.options.dry_run:
        run.dry_run_problems += problem_rows(item.rel, item.mapping.table, problems)
    run.report.files.append(outcome)
    if table == "accounts" and loaded_rows is not None:
        # Only accounts that reached raw make other tables' rows valid: an account row
        # quarantined here must not vouch for its orders.
        run.known_accounts.update(loaded_rows["account_id"].dropna().astype(str))


def _hold_reason(blocking: list[str], unknown: set[str] | None, failures: list[str] | None) -> str | None:
    """Why a file is held back whole (its rows name accounts that could not be loaded yet)."""
    if not blocking or not unknown or failures:
        return None
    names = sorted(unknown)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"held back, not loaded: rows name account(s) not loaded yet ({shown}) while accounts could not be "
        f"loaded from {', '.join(blocking)}; fix those, and the next run loads this file whole"
    )


def _fetch(settings: Settings, con, mappings: dict[str, SourceMapping], sources: list[str] | None, report: IngestReport) -> list[str]:
    """Pull the HTTP sources into the landing folder; a failure is recorded in the report
    (the run goes on with the files that did arrive). Returns the failed sources that would
    have delivered accounts."""
    from pipelines.ingest.http_source import HttpSourceError, fetch_http_sources

    try:
        fetched = fetch_http_sources(settings, con, mappings, sources=sources)
    except HttpSourceError as exc:
        fetched = exc.reports
        report.fetch_error = str(exc)
    report.fetched = [f.summary() for f in fetched]
    if report.fetch_error is None:
        return []
    succeeded = {f.source for f in fetched}
    return [
        f"the HTTP source {name} (not fetched)"
        for name, m in sorted(mappings.items())
        if m.http is not None and "accounts" in m.http.endpoints and name not in succeeded and (not sources or name in sources)
    ]


def _declared_scales(parsed) -> dict[tuple[str, float, float, str], tuple[list[int], int]]:
    """Each survey scale a mapping declares (column, min, max, mapping) -> (files, rows read)."""
    scales: dict[tuple[str, float, float, str], tuple[list[int], int]] = {}
    for i, (item, batch) in enumerate(parsed):
        if not isinstance(batch, ParsedBatch):
            continue
        for scale in item.mapping.scales:
            for column in scale.items:
                key = (column, scale.minimum, scale.maximum, item.mapping.origin)
                files, rows = scales.get(key, ([], 0))
                scales[key] = ([*files, i], rows + batch.rows_read)
    return scales


def _read_key(item: Pending) -> tuple:
    """Files read the same way give the same text columns."""
    return (str(item.path), item.checksum, item.mapping.read)


def _for_table(exc: BatchRejected, item: Pending) -> BatchRejected:
    """A read failure shared by the tables that read one file: each table records its own
    batch, but only the table the folder belongs to accounts for the file's rows."""
    if item.mapping.read_from and item.mapping.read_from != item.mapping.table:
        return BatchRejected(exc.file, exc.reason, expectation=exc.expectation)
    return exc


def _read(item: Pending) -> RawFrame:
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


def _save_validation(settings: Settings, run_id: str, table: str, document: dict, files: dict[int, str], as_of: dt.date) -> None:
    """Keep GE's validation result for this run and table, with failing rows named by file."""
    for entry in document.get("results", []):
        result = entry.get("result") or {}
        for row in result.get("needseg_unexpected_rows", []):
            row["file"] = files.get(row.pop("file_index", 0))
        if "needseg_file_index" in result:
            # a batch-level expectation judged one file: which one
            result["needseg_file"] = files.get(result.pop("needseg_file_index"))
    document.setdefault("meta", {})["needseg"] = {
        "run_id": run_id,
        "table": table,
        "as_of": as_of.isoformat(),
        "files": sorted(files.values()),
    }
    folder = settings.quality_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    write_file_atomically(folder / f"{table}.json", json.dumps(document, indent=1, default=str, ensure_ascii=False))
