"""What an ingest run did to each file: the outcomes, the run's report and the error it ends with.

Every file below the landing folder ends up here as a `FileOutcome` (loaded, skipped,
refused, held back, changed after loading, not loadable, ignored); `IngestReport.problem()`
turns the ones that need attention into the `IngestIncomplete` subclass whose exit code
is the most urgent. The report is kept as `<quality>/<run_id>/ingest.json`.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.csv_output import neutralise_text
from pipelines.errors import InputError
from pipelines.files import atomic_target, write_file_atomically
from pipelines.ingest.parse import Problem
from pipelines.settings import Settings

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
    rows_filtered: int = 0  # rows the mapping's `where:` left out (not counted as read)
    # Bad values of optional columns set to null by the mapping's `bad_values` policy, by
    # "column: reason" (their rows were loaded).
    values_nulled: dict[str, int] = field(default_factory=dict)


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
    # Rows quarantined earlier for an unknown account, loaded now that the account arrived:
    # one entry per batch {batch_id, table, file, rows} (pipelines.ingest.replay).
    replayed: list[dict] = field(default_factory=list)
    landing_missing: str | None = None  # the landing folder, when it does not exist

    @property
    def rows_replayed(self) -> int:
        return sum(r["rows"] for r in self.replayed)

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
        if self.rows_replayed:
            parts.append(f"{self.rows_replayed} replayed from quarantine (their account arrived)")
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
        if self.landing_missing:
            sections.append(
                f"the landing folder {self.landing_missing} does not exist: nothing was loaded. Create it (files go in "
                "<landing>/<source>/<table>/), or point needseg at the right one (--landing, NEEDSEG_LANDING_DIR or --data-dir)"
            )
        if self.fetch_error:
            sections.append(f"HTTP sources (the landing files that did arrive were loaded): {self.fetch_error}")
        if not sections:
            return None
        kind = (
            GateFailed
            if self.rejected
            else FilesNotLoadable
            if self.not_loadable or self.landing_missing
            else FilesChanged
            if self.conflicts
            else SourcesNotFetched
            if self.fetch_error
            else GateFailed
        )
        return kind("\n".join(sections), self)


def problem_groups(problems_by_line: dict[int, list[Problem]]) -> list[dict]:
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


def problem_rows(file: str, table: str, problems_by_line: dict[int, list[Problem]]) -> list[tuple]:
    return [
        (file, table, line, p.column, p.value, p.reason, p.expected, p.check)
        for line in sorted(problems_by_line)
        for p in problems_by_line[line]
        if not p.reason.startswith("batch rejected")
    ]


def save_problems(settings: Settings, run_id: str, rows: list[tuple]) -> Path:
    """Every row-level problem of a dry run, as CSV (a real run has them in meta.quarantine)."""
    path = settings.quality_dir / run_id / "problems.csv"
    with atomic_target(path) as building, building.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PROBLEM_COLUMNS)
        writer.writerows(tuple(neutralise_text(v) for v in row) for row in rows)
    return path


def save_report(settings: Settings, run_id: str, report: IngestReport, dry_run: bool) -> None:
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
    write_file_atomically(folder / "ingest.json", json.dumps(document, indent=1, default=str, ensure_ascii=False))
