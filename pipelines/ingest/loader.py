"""Load new landing files into the raw tables: read, map, type, gate, quarantine, count.

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

import csv
import datetime as dt
import difflib
import fnmatch
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from pipelines.config import load_config
from pipelines.contract import TABLES
from pipelines.errors import ConfigError, InputError
from pipelines.ingest.mapping import (
    FORMATS,
    SourceMapping,
    TableMapping,
    file_format,
    load_mappings,
    mapping_for,
)
from pipelines.ingest.parse import ParsedBatch, Problem, Records, parse
from pipelines.ingest.readers import BatchRejected, RawFrame, read_file
from pipelines.quality.gate import QualityGate, add_parse_results
from pipelines.settings import EXPECTATIONS_DIR, Settings

log = logging.getLogger(__name__)

# Accounts first: the other tables' rows are checked against the accounts known by then.
LOAD_ORDER = ("accounts", "order_lines", "support_tickets", "quotes", "survey_responses")
# Not data: partial downloads and editors' lock files (hidden files, names starting with "."
# or "~$", are skipped too) and the files desktop systems drop into every folder.
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".lock")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "icon\r"}
# What people call the contract tables, for "did you mean" on an unknown table folder.
TABLE_SYNONYMS = {
    "accounts": ("account", "customers", "customer", "clients", "client", "companies", "kunder", "kunde", "asiakkaat"),
    "order_lines": ("orders", "order", "orderlines", "sales", "invoices", "invoice_lines", "lines", "ordrar"),
    "support_tickets": ("tickets", "ticket", "support", "cases", "incidents", "ärenden"),
    "quotes": ("quote", "quotations", "offers", "offerter"),
    "survey_responses": ("survey", "surveys", "responses", "answers", "nps"),
}
PROBLEM_EXAMPLES = 20  # lines named per file x column x reason in the report and data docs


class IngestIncomplete(InputError):
    """The run handled every file, but not all of them could be loaded. `report` is the full
    per-file report; the message lists every file that needs attention. The subclass (and its
    exit code) is the most urgent cause; the message covers all of them."""

    retryable = False  # the same files fail the same way on a retry

    def __init__(self, message: str, report: IngestReport):
        super().__init__(message)
        self.report = report


class GateFailed(IngestIncomplete):
    """One or more batches were refused (or held back behind a refused accounts batch)."""

    exit_code = 3


class FilesNotLoadable(IngestIncomplete):
    """Files in the landing folder that cannot be loaded where they are or as they are named."""

    exit_code = 4


class FilesChanged(IngestIncomplete):
    """Files whose content changed after they were loaded; the new content was not appended."""

    exit_code = 5


class SourcesNotFetched(IngestIncomplete):
    """An HTTP source could not be fetched; the landing files that did arrive were loaded.
    Often transient (an API down), so a retry may help."""

    exit_code = 6
    retryable = True


@dataclass
class FileOutcome:
    source: str
    table: str
    file: str
    # loaded | valid (dry run) | duplicate | already_loaded | conflict | rejected | held |
    # not_loadable | ignored
    status: str
    batch_id: str | None = None
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    message: str = ""
    extra_columns: list[str] = field(default_factory=list)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    # Row-level problems by column and reason: {column, reason, expected, count, lines: [{line, value}]}
    problems: list[dict] = field(default_factory=list)


@dataclass
class IngestReport:
    as_of: str
    run_id: str = ""
    dry_run: bool = False
    started_at: str = ""
    files: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0
    validation_files: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)  # one line per HTTP source fetched
    fetch_error: str | None = None  # why HTTP sources could not be fetched
    # Where every row-level problem of a dry run is listed (nothing is in quarantine then).
    problems_file: str | None = None
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

    def with_status(self, *statuses: str) -> list[FileOutcome]:
        return [f for f in self.files if f.status in statuses]

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
        return self.with_status("rejected")

    @property
    def held(self) -> list[FileOutcome]:
        return self.with_status("held")

    @property
    def not_loadable(self) -> list[FileOutcome]:
        return self.with_status("not_loadable")

    @property
    def conflicts(self) -> list[FileOutcome]:
        return self.with_status("conflict")

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
            parts.append(f"{len(self.rejected)} refused")
        if self.held:
            parts.append(f"{len(self.held)} held back")
        if self.not_loadable:
            parts.append(f"{len(self.not_loadable)} not loadable")
        if self.count("ignored"):
            parts.append(f"{self.count('ignored')} ignored (hidden or temporary)")
        if self.fetch_error:
            parts.append("HTTP source(s) failed")
        return ", ".join(parts) + f" in {self.seconds:.1f} s"

    def as_dict(self) -> dict:
        return asdict(self)

    def problem(self) -> IngestIncomplete | None:
        """The error this run ends with (None when every file is loaded or already was)."""
        sections = []
        if self.rejected:
            sections.append(
                f"{len(self.rejected)} batch(es) would be refused by the quality gate (dry run: nothing was written):"
                if self.dry_run
                else f"{len(self.rejected)} batch(es) refused by the quality gate; nothing from them was loaded "
                "(their rows are in quarantine with the reason), and the run stops here:",
            )
            sections += [f"- {f.file}: {f.message}" for f in self.rejected]
        if self.held:
            sections.append(
                f"{len(self.held)} file(s) would be held back (dry run):"
                if self.dry_run
                else f"{len(self.held)} file(s) held back, not loaded yet (they load on the next run once their accounts are in):"
            )
            sections += [f"- {f.file}: {f.message}" for f in self.held]
        if self.not_loadable:
            sections.append(f"{len(self.not_loadable)} file(s) in the landing folder cannot be loaded:")
            sections += [f"- {f.file}: {f.message}" for f in self.not_loadable]
        if self.conflicts:
            sections.append(f"{len(self.conflicts)} file(s) changed after they were loaded; the new content was not appended:")
            sections += [f"- {f.file}: {f.message}" for f in self.conflicts]
        if self.fetch_error:
            sections.append(f"HTTP sources (the landing files that did arrive were loaded): {self.fetch_error}")
        if not sections:
            return None
        kind = (
            GateFailed
            if self.rejected
            else FilesNotLoadable
            if self.not_loadable
            else FilesChanged
            if self.conflicts
            else SourcesNotFetched
            if self.fetch_error
            else GateFailed
        )
        return kind("\n".join(sections), self)


@dataclass
class _Pending:
    path: Path
    rel: str
    source: str
    mapping: TableMapping
    checksum: str
    size: int


@dataclass
class _Found:
    """A file below the landing folder that belongs to a table (perhaps in a subfolder of it)."""

    source: str
    mapping: TableMapping
    path: Path
    rel: str
    nested: bool = False  # in a subfolder of the table folder: loadable only if already loaded


def checksum(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_ignored(name: str) -> bool:
    """Hidden files, editors' lock files, partial downloads, desktop litter: not data."""
    lowered = name.lower()
    return name.startswith((".", "~$")) or lowered.endswith(IGNORED_SUFFIXES) or lowered in IGNORED_NAMES


def _guess_table(name: str) -> str | None:
    """The contract table a folder or file name most likely means, if any."""
    stem = Path(name).stem.lower().replace("-", "_").replace(" ", "_")
    words = [stem, *stem.split("_")]
    for table in TABLES:
        if table in stem:
            return table
    for table, synonyms in TABLE_SYNONYMS.items():
        if any(word in synonyms for word in words):
            return table
    close = difflib.get_close_matches(stem, list(TABLES), n=1, cutoff=0.75)
    return close[0] if close else None


def _discover(landing: Path, mappings: dict[str, SourceMapping], sources: list[str] | None) -> tuple[list[_Found], list[FileOutcome]]:
    """Every file below the landing folder: the ones that belong to a table (in load order),
    and outcomes for the ones that do not (not loadable, with what to do; or ignored)."""
    found: list[_Found] = []
    outcomes: list[FileOutcome] = []
    if not landing.exists():
        return found, outcomes
    tables = ", ".join(TABLES)
    seen: set[Path] = set()
    for folder, subfolders, names in os.walk(landing, followlinks=True):
        real = Path(folder).resolve()
        if real in seen:  # a symbolic link back to a folder already walked
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # hidden folders: not data
        for name in sorted(names):
            path = Path(folder) / name
            rel_path = path.relative_to(landing)
            rel = rel_path.as_posix()
            parts = rel_path.parts
            source = parts[0] if len(parts) > 1 else ""
            if sources and source not in sources:
                continue
            if is_ignored(name):
                outcomes.append(FileOutcome(source, "", rel, "ignored", message="hidden or temporary file: not data"))
                continue
            if len(parts) == 1:
                guess = _guess_table(name)
                where = f"<source>/{guess}/{name}" if guess else f"<source>/<table>/{name}"
                outcomes.append(
                    FileOutcome(
                        "",
                        guess or "",
                        rel,
                        "not_loadable",
                        message=(
                            f"not in a source folder: landing files go in <landing>/<source>/<table>/; move it to {where} "
                            f"(tables: {tables})"
                        ),
                    )
                )
                continue
            mapping = mapping_for(source, mappings)
            if len(parts) == 2:
                guess = _guess_table(name)
                hint = f"did you mean {source}/{guess}/{name}?" if guess else ""
                outcomes.append(
                    FileOutcome(
                        source,
                        guess or "",
                        rel,
                        "not_loadable",
                        message=(
                            f"no table folder: files of source {source!r} go in {source}/<table>/ (tables: {tables}); "
                            f"{hint or 'move it into the folder of its table'}"
                        ),
                    )
                )
                continue
            folder_name = parts[1]
            readers = [mapping.for_table(t) for t in LOAD_ORDER if mapping.for_table(t).folder_table.lower() == folder_name.lower()]
            if not readers:
                guess = _guess_table(folder_name)
                redirected = guess and mapping.for_table(guess).folder_table != guess
                if redirected:
                    message = (
                        f"the mapping for {source!r} ({mapping.origin}) reads {guess} from {source}/{mapping.for_table(guess).folder_table}/ "
                        f"(read_from), so files in {source}/{folder_name}/ are not read; move it there or change the mapping"
                    )
                else:
                    hint = f"did you mean {source}/{guess}/?" if guess else "move the file into the folder of its table"
                    message = f"unknown table folder {folder_name!r}: expected one of {tables}; {hint}"
                outcomes.append(FileOutcome(source, guess or "", rel, "not_loadable", message=message))
                continue
            matching = [tm for tm in readers if fnmatch.fnmatchcase(name.lower(), tm.files.lower())]
            if not matching:
                patterns = " / ".join(sorted({repr(tm.files) for tm in readers}))
                outcomes.append(
                    FileOutcome(
                        source,
                        readers[0].table,
                        rel,
                        "not_loadable",
                        message=(
                            f"the name does not match the files pattern {patterns} of {source}/{folder_name}/ in {readers[0].origin}: "
                            "rename the file, or widen `files:` in the mapping"
                        ),
                    )
                )
                continue
            unreadable = []
            for tm in matching:
                try:
                    file_format(path, tm.read)
                except ConfigError:
                    unreadable.append(tm)
                    continue
                found.append(_Found(source, tm, path, rel, nested=len(parts) > 3))
            if unreadable and len(unreadable) == len(matching):
                outcomes.append(
                    FileOutcome(
                        source,
                        matching[0].table,
                        rel,
                        "not_loadable",
                        message=(
                            f"needseg cannot tell the format from the name {name!r}: expected one of {', '.join(sorted(FORMATS))}; "
                            "convert it (e.g. save the sheet as .xlsx or .csv), or declare `format:` in the source's mapping"
                        ),
                    )
                )
    order = {t: i for i, t in enumerate(LOAD_ORDER)}
    found.sort(key=lambda x: (order[x.mapping.table], x.source, x.rel))
    return found, outcomes


def new_run_id(quality_dir: Path, label: str) -> str:
    """`<label>-<UTC time>`, unique under `quality_dir` (its folder is created here, so two
    runs in the same second get `-2`, `-3`...)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
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


def ingest(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    run_id: str,
    sources: list[str] | None = None,
    accept_changed: bool = False,
    max_quarantine_share: float | None = None,
    known_currencies: list[str] | None = None,
    gate: QualityGate | None = None,
    dry_run: bool = False,
    fetch: bool = False,
    min_rows_for_quarantine_share: int | None = None,
) -> IngestReport:
    """Load every new landing file; once all are handled, raise `IngestIncomplete` (with the
    full report) if any was refused, held back, not loadable or changed, or an HTTP source
    failed.

    `run_id` is a label (e.g. `ingest-2026-10-31`): the run's id, under which its
    validation results and report are kept, is the label plus the time (`report.run_id`).
    With `fetch` the HTTP sources (mappings with an `http` section) are pulled into the
    landing folder first; a source that fails does not keep the landing files from loading.
    With `dry_run` every file is read, mapped and checked exactly as for a load, and the
    report says what would happen, but nothing is written to the warehouse (the validation
    results, the report and every row-level problem are still kept under the run's folder).

    `known_currencies`, `max_quarantine_share` and `min_rows_for_quarantine_share` default to
    the configuration (`fx_rates` and `ingest` in config/needseg.yaml, or NEEDSEG_CONFIG).
    """
    started = time.monotonic()
    config = load_config(settings.config_path)
    share_rule = ingest_rules(config)
    if max_quarantine_share is not None:
        share_rule = (max_quarantine_share, share_rule[1])
    if min_rows_for_quarantine_share is not None:
        share_rule = (share_rule[0], min_rows_for_quarantine_share)
    if known_currencies is None:
        known_currencies = list(config["fx_rates"])
    mappings = load_mappings(settings.mappings_dir)
    report = IngestReport(
        as_of=as_of.isoformat(),
        run_id=new_run_id(settings.quality_dir, run_id),
        dry_run=dry_run,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    run_id = report.run_id
    # Why the accounts of this run may be incomplete: then rows naming unknown accounts wait.
    accounts_missing: list[str] = []
    if fetch and not dry_run:
        accounts_missing += _fetch(settings, con, mappings, sources, report)
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
    found, outcomes = _discover(settings.landing_dir, mappings, sources)
    report.files.extend(outcomes)
    accounts_missing += [
        f"{f.file} (not loadable)"
        for f in outcomes
        if f.status == "not_loadable" and (f.table == "accounts" or (not f.table and Path(f.file).suffix.lower() in FORMATS))
    ]
    for item in found:
        tm, path, rel, source = item.mapping, item.path, item.rel, item.source
        digest = checksum(path)
        if (tm.table, digest) in loaded:
            previous = loaded[(tm.table, digest)]
            same_file = item.nested or by_file.get((tm.table, rel), (None, None))[1] == previous
            report.files.append(
                FileOutcome(
                    source,
                    tm.table,
                    rel,
                    "already_loaded" if same_file else "duplicate",
                    previous,
                    message="" if same_file else f"identical to a file already loaded as batch {previous}",
                )
            )
            continue
        if item.nested:
            if any(f.file == rel and f.status == "not_loadable" for f in report.files):
                continue  # read for two tables (read_from): reported once
            folder = "/".join(Path(rel).parts[:2])
            report.files.append(
                FileOutcome(
                    source,
                    tm.table,
                    rel,
                    "not_loadable",
                    message=(
                        f"in a subfolder of {folder}/: only files directly in {folder}/ are loaded; move it up into {folder}/ "
                        "(or out of the landing folder, if it was archived there)"
                    ),
                )
            )
            if tm.table == "accounts":
                accounts_missing.append(f"{rel} (not loadable)")
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
            )
            continue
        pending[tm.table].append(_Pending(path, rel, source, tm, digest, path.stat().st_size))
    clock = report.timed("discover", clock)

    # A file read for two tables (accounts aggregated from the order-line files) is read
    # once per run: each table's mapping then works on the same text columns.
    reads: dict[tuple, RawFrame | BatchRejected] = {}
    readers_left: dict[tuple, int] = {}
    for items in pending.values():
        for item in items:
            readers_left[_read_key(item)] = readers_left.get(_read_key(item), 0) + 1
    problem_rows: list[tuple] = []  # every row-level problem of a dry run, for problems.csv

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
        # Validate all of this table's new files in one GE run (batch-level expectations per
        # file), then split by file. A file with no rows (a header-only extract) has nothing
        # to validate and is not part of it.
        frames, texts = [], []
        for i, (_, batch) in enumerate(parsed):
            if isinstance(batch, ParsedBatch) and len(batch.typed):
                frames.append(batch.typed.assign(_file_index=i))
                texts.append(batch.texts)
        gate_problems: dict[int, list[Problem]] = {}
        failures_by_file: dict[int, list[str]] = {}
        unknown_accounts: dict[int, set[str]] = {}
        document = None
        rows_validated = 0
        if frames:
            gate.suite(table)  # loads great_expectations and the suite once per process
            clock = report.timed("gate setup", clock)
            combined = pd.concat(frames, ignore_index=True)
            rows_validated = len(combined)
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
            document = result.document
            failures_by_file = result.failures_by_file
            file_of = combined["_file_index"].to_numpy()
            for problem in _resolve_duplicates(result.row_problems, combined, TABLES[table]):
                gate_problems.setdefault(int(file_of[problem.index]), []).append(problem)
            if result.unknown_account_rows:
                rows = sorted(result.unknown_account_rows)
                for f, account in zip(file_of[rows].tolist(), combined["account_id"].iloc[rows].tolist(), strict=True):
                    unknown_accounts.setdefault(int(f), set()).add(str(account))
            clock = report.timed("validate", clock)
        parse_problems = [(i, p) for i, (_, batch) in enumerate(parsed) if isinstance(batch, ParsedBatch) for p in batch.problems]
        scales = _declared_scales(parsed)
        if document is not None or parse_problems or scales:
            document = document or {"suite_name": table, "results": [], "meta": {}}
            add_parse_results(document, TABLES[table], parse_problems, rows_validated, scales)
            files = {i: item.rel for i, (item, _) in enumerate(parsed)}
            _save_validation(settings, run_id, table, document, files, as_of)
            report.validation_files.append(str(settings.quality_dir / run_id / f"{table}.json"))
        blocking = (
            [] if table == "accounts" else [*accounts_missing, *(f"{f.file} (refused)" for f in report.rejected if f.table == "accounts")]
        )
        for i, (item, batch) in enumerate(parsed):
            hold = None
            if blocking and i in unknown_accounts and not failures_by_file.get(i):
                names = sorted(unknown_accounts[i])
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                hold = (
                    f"held back, not loaded: rows name account(s) not loaded yet ({shown}) while accounts could not be "
                    f"loaded from {', '.join(blocking)}; fix those, and the next run loads this file whole"
                )
            outcome, loaded_rows, problems = _write_batch(
                con, item, batch, gate_problems.get(i, []), failures_by_file.get(i, []), run_id, as_of, share_rule, dry_run, hold
            )
            outcome.problems = _problem_groups(problems)
            if dry_run:
                problem_rows += _problem_rows(item, problems)
            report.files.append(outcome)
            if table == "accounts" and loaded_rows is not None:
                # Only accounts that reached raw make other tables' rows valid: an account row
                # quarantined here must not vouch for its orders.
                known_accounts.update(loaded_rows["account_id"].dropna().astype(str))
        clock = report.timed("write", clock)

    if dry_run and problem_rows:
        report.problems_file = str(_save_problems(settings, run_id, problem_rows))
    report.seconds = time.monotonic() - started
    _save_report(settings, run_id, report, dry_run)
    problem = report.problem()
    if problem is not None:
        raise problem
    return report


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


def _problem_groups(problems_by_line: dict[int, list[Problem]]) -> list[dict]:
    """A file's row-level problems by column and reason, with the first lines of each.
    The batch-refusal note every row of a refused file carries is the file's message, not
    a row's problem, and is left out."""
    groups: dict[tuple, dict] = {}
    for line in sorted(problems_by_line):
        for p in problems_by_line[line]:
            if p.reason.startswith("batch rejected"):
                continue
            reason = p.reason.split(":")[0]
            group = groups.setdefault(
                (p.column, reason, p.expected),
                {"column": p.column, "reason": reason, "expected": p.expected, "check": p.check, "count": 0, "lines": []},
            )
            group["count"] += 1
            if len(group["lines"]) < PROBLEM_EXAMPLES:
                group["lines"].append({"line": line, "value": None if p.value is None else str(p.value)[:200], "reason": p.reason[:300]})
    return sorted(groups.values(), key=lambda g: (-g["count"], str(g["column"]), g["reason"]))


PROBLEM_COLUMNS = ["file", "table", "line", "column", "value", "reason", "expected", "check"]


def _problem_rows(item: _Pending, problems_by_line: dict[int, list[Problem]]) -> list[tuple]:
    return [
        (item.rel, item.mapping.table, line, p.column, p.value, p.reason, p.expected, p.check)
        for line in sorted(problems_by_line)
        for p in problems_by_line[line]
        if not p.reason.startswith("batch rejected")
    ]


def _save_problems(settings: Settings, run_id: str, rows: list[tuple]) -> Path:
    """Every row-level problem of a dry run, as CSV (a real run has them in meta.quarantine)."""
    path = settings.quality_dir / run_id / "problems.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PROBLEM_COLUMNS)
        writer.writerows(rows)
    return path


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
    problem = report.problem()
    document = {
        "dry_run": dry_run,
        "summary": report.summary(),
        "outcome": type(problem).__name__ if problem else "complete",
        "exit_code": problem.exit_code if problem else 0,
        **report.as_dict(),
    }
    (folder / "ingest.json").write_text(json.dumps(document, indent=1, default=str, ensure_ascii=False))


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
    (folder / f"{table}.json").write_text(json.dumps(document, indent=1, default=str, ensure_ascii=False))


def _write_batch(
    con: duckdb.DuckDBPyConnection,
    item: _Pending,
    batch: ParsedBatch | BatchRejected,
    gate_problems: list[Problem],
    batch_failures: list[str],
    run_id: str,
    as_of: dt.date,
    share_rule: tuple[float, int],
    dry_run: bool = False,
    hold: str | None = None,
) -> tuple[FileOutcome, pd.DataFrame | None, dict[int, list[Problem]]]:
    """Write one batch in one transaction; returns its outcome, the rows that went to raw and
    the problems of each line."""
    table = item.mapping.table
    batch_id = f"{item.source}.{table}.{item.checksum[:16]}"
    now = dt.datetime.now()
    outcome = FileOutcome(item.source, table, item.rel, "loaded", batch_id)
    con.execute("begin transaction")
    try:
        # A refused or held batch is tried again on a later run: replace what its last try left.
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
            _record_batch(
                con, item, batch_id, "rejected", outcome.rows_read, 0, quarantined, [], outcome.message, run_id, as_of, now, encoding
            )
            con.execute("rollback" if dry_run else "commit")
            return outcome, None, problems_by_line

        problems_by_line: dict[int, list[Problem]] = {}
        for p in batch.problems + gate_problems:
            problems_by_line.setdefault(p.line, []).append(p)
        outcome.rows_read = batch.rows_read
        outcome.extra_columns = batch.extra_columns
        if hold:
            # Nothing of it is written: its rows wait for their accounts (see the module docstring).
            outcome.status = "held"
            outcome.message = hold
            _record_batch(con, item, batch_id, "held", 0, 0, 0, batch.extra_columns, hold, run_id, as_of, now, batch.encoding)
            con.execute("rollback" if dry_run else "commit")
            return outcome, None, problems_by_line
        bad_lines = set(problems_by_line)
        good = batch.typed[~batch.typed["_line"].isin(bad_lines)]
        share = len(bad_lines) / max(batch.rows_read, 1)
        # A batch without rows was not validated (there was nothing to validate).
        failures = list(batch_failures) if len(batch.typed) else []
        max_share, min_rows = share_rule
        # A small file (a daily increment of a few rows) is not judged by its share of bad
        # rows: one bad record of three is a bad record, not a wrong mapping.
        if batch.rows_read >= min_rows and share > max_share:
            first = min(bad_lines)
            failures.append(
                f"{len(bad_lines)} of {batch.rows_read} rows ({share:.0%}) failed the checks, more than the "
                f"{max_share:.0%} max_quarantine_share allows for files of {min_rows} rows or more (config: ingest); "
                f"this usually means a wrong mapping. First problem: line {first}: {problems_by_line[first][0].reason} "
                "[max_quarantine_share]"
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
            _record_batch(
                con,
                item,
                batch_id,
                "rejected",
                batch.rows_read,
                0,
                quarantined,
                batch.extra_columns,
                outcome.message,
                run_id,
                as_of,
                now,
                batch.encoding,
            )
            con.execute("rollback" if dry_run else "commit")
            return outcome, None, problems_by_line

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
        _record_batch(
            con,
            item,
            batch_id,
            "loaded",
            batch.rows_read,
            outcome.rows_loaded,
            quarantined,
            batch.extra_columns,
            outcome.message,
            run_id,
            as_of,
            now,
            batch.encoding,
        )
        # What earlier tries of this file left (refused, or held back with other content) is
        # history now: its quarantine rows stay as the record of that delivery.
        con.execute(
            "update meta.batches set status = 'superseded', message = concat_ws(' ', message, ?) "
            "where file = ? and table_name = ? and status in ('rejected', 'held') and batch_id <> ?",
            [f"(superseded by batch {batch_id})", item.rel, table, batch_id],
        )
        if dry_run:
            # everything was checked and written inside the transaction; throw it away
            con.execute("rollback")
            outcome.status = "valid"
        else:
            con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return outcome, good, problems_by_line


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
                batch_id,
                item.source,
                item.mapping.table,
                item.rel,
                line,
                first.column,
                None if first.value is None else str(first.value)[:1000],
                first.reason,
                first.expected,
                _JSON.encode(
                    [
                        {"column": p.column, "value": None if p.value is None else str(p.value), "reason": p.reason, "check": p.check}
                        for p in plist
                    ]
                ),
                _JSON.encode(record),
                now,
            )
        )
    frame = pd.DataFrame(
        rows,
        columns=[
            "batch_id",
            "source",
            "table_name",
            "file",
            "line",
            "column_name",
            "value",
            "reason",
            "expected",
            "problems",
            "record",
            "quarantined_at",
        ],
    )
    con.register("quarantined", frame)
    con.execute(
        "insert into meta.quarantine select * replace (cast(problems as json) as problems, cast(record as json) as record) from quarantined"
    )
    con.unregister("quarantined")
    return len(rows)


def _record_batch(con, item: _Pending, batch_id, status, read, loaded, quarantined, extra, message, run_id, as_of, now, encoding) -> None:
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
