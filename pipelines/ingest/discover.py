"""Discovery: every file below the landing folder, and the contract table it belongs to.

The walk never leaves the landing folder: a symbolic link whose target lies outside it
(a file or a folder) is not followed; it is reported as not loadable, naming the link and
where it points, and nothing of the target is read or listed. Links inside the landing
folder are followed, each folder once.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.contract import TABLES
from pipelines.errors import ConfigError
from pipelines.ingest.mapping import FORMATS, SourceMapping, TableMapping, file_format, mapping_for
from pipelines.ingest.report import FileOutcome

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


@dataclass
class Found:
    """A file below the landing folder that belongs to a table (perhaps in a subfolder of it)."""

    source: str
    mapping: TableMapping
    path: Path
    rel: str
    nested: bool = False  # in a subfolder of the table folder: loadable only if already loaded
    digest: str = ""  # the content's SHA-256, once computed


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


def guess_table(name: str) -> str | None:
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


def discover(landing: Path, mappings: dict[str, SourceMapping], sources: list[str] | None) -> tuple[list[Found], list[FileOutcome]]:
    """Every file below the landing folder: the ones that belong to a table (in load order),
    and outcomes for the ones that do not (not loadable, with what to do; or ignored)."""
    found: list[Found] = []
    outcomes: list[FileOutcome] = []
    if not landing.is_dir():
        return found, outcomes
    for path, rel_path, escape in _walk(landing):
        parts = rel_path.parts
        source = parts[0] if len(parts) > 1 else ""
        if sources and source not in sources:
            continue
        if escape:
            outcomes.append(FileOutcome(source, "", rel_path.as_posix(), "not_loadable", message=escape))
        elif is_ignored(path.name):
            outcomes.append(FileOutcome(source, "", rel_path.as_posix(), "ignored", message="hidden or temporary file: not data"))
        else:
            placed, outcome = _place(path, rel_path, mapping_for(source, mappings) if source else None)
            found += placed
            if outcome is not None:
                outcomes.append(outcome)
    order = {t: i for i, t in enumerate(LOAD_ORDER)}
    found.sort(key=lambda x: (order[x.mapping.table], x.source, x.rel))
    return found, outcomes


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def _escape(landing_real: Path, path: Path) -> str | None:
    """Why the file or folder at `path` (a symbolic link) is not read: it leads outside the
    landing folder, or nowhere. None for anything else."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if not target.exists():
        return f"a symbolic link to {os.readlink(path)}, which does not exist: nothing to read"
    if not _inside(landing_real, target):
        kind = "folder" if target.is_dir() else "file"
        return (
            f"a symbolic link to the {kind} {target}, outside the landing folder: not followed (needseg reads only what is "
            "inside the landing folder); copy the data into the landing folder instead"
        )
    return None


def _walk(landing: Path):
    """(path, path relative to the landing folder, why it is not read or None) for every
    file below the landing folder, never leaving it: a link to a folder outside is reported
    as one entry and not walked; a link back to a folder already walked is skipped."""
    landing_real = landing.resolve()
    seen: set[Path] = set()
    for folder, subfolders, names in os.walk(landing, followlinks=True):
        here = Path(folder)
        real = here.resolve()
        if real in seen or not _inside(landing_real, real):  # a link back to a folder already walked
            subfolders[:] = []
            continue
        seen.add(real)
        kept = []
        for d in sorted(subfolders):
            if d.startswith("."):  # hidden folders: not data
                continue
            escape = _escape(landing_real, here / d)
            if escape:
                yield here / d, (here / d).relative_to(landing), escape
            else:
                kept.append(d)
        subfolders[:] = kept
        for name in sorted(names):
            path = here / name
            yield path, path.relative_to(landing), _escape(landing_real, path)


def _place(path: Path, rel_path: Path, mapping: SourceMapping | None) -> tuple[list[Found], FileOutcome | None]:
    """The table(s) a file feeds, or why it feeds none (where it should go instead)."""
    parts, name, rel = rel_path.parts, path.name, rel_path.as_posix()
    tables = ", ".join(TABLES)
    if mapping is None:
        guess = guess_table(name)
        where = f"<source>/{guess}/{name}" if guess else f"<source>/<table>/{name}"
        message = f"not in a source folder: landing files go in <landing>/<source>/<table>/; move it to {where} (tables: {tables})"
        return [], FileOutcome("", guess or "", rel, "not_loadable", message=message)
    source = parts[0]
    if len(parts) == 2:
        guess = guess_table(name)
        hint = f"did you mean {source}/{guess}/{name}?" if guess else "move it into the folder of its table"
        message = f"no table folder: files of source {source!r} go in {source}/<table>/ (tables: {tables}); {hint}"
        return [], FileOutcome(source, guess or "", rel, "not_loadable", message=message)
    folder_name = parts[1]
    readers = [mapping.for_table(t) for t in LOAD_ORDER if mapping.for_table(t).folder_table.lower() == folder_name.lower()]
    if not readers:
        return [], FileOutcome(source, guess_table(folder_name) or "", rel, "not_loadable", message=_unknown_folder(mapping, folder_name))
    matching = [tm for tm in readers if fnmatch.fnmatchcase(name.lower(), tm.files.lower())]
    if not matching:
        patterns = " / ".join(sorted({repr(tm.files) for tm in readers}))
        message = (
            f"the name does not match the files pattern {patterns} of {source}/{folder_name}/ in {readers[0].origin}: "
            "rename the file, or widen `files:` in the mapping"
        )
        return [], FileOutcome(source, readers[0].table, rel, "not_loadable", message=message)
    found = []
    for tm in matching:
        try:
            file_format(path, tm.read)
        except ConfigError:
            continue
        found.append(Found(source, tm, path, rel, nested=len(parts) > 3))
    if found:
        return found, None
    message = (
        f"needseg cannot tell the format from the name {name!r}: expected one of {', '.join(sorted(FORMATS))}; "
        "convert it (e.g. save the sheet as .xlsx or .csv), or declare `format:` in the source's mapping"
    )
    return [], FileOutcome(source, matching[0].table, rel, "not_loadable", message=message)


def _unknown_folder(mapping: SourceMapping, folder_name: str) -> str:
    source, tables = mapping.source, ", ".join(TABLES)
    guess = guess_table(folder_name)
    if guess and mapping.for_table(guess).folder_table != guess:
        return (
            f"the mapping for {source!r} ({mapping.origin}) reads {guess} from {source}/{mapping.for_table(guess).folder_table}/ "
            f"(read_from), so files in {source}/{folder_name}/ are not read; move it there or change the mapping"
        )
    hint = f"did you mean {source}/{guess}/?" if guess else "move the file into the folder of its table"
    return f"unknown table folder {folder_name!r}: expected one of {tables}; {hint}"
