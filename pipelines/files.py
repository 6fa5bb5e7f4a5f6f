"""Files written for readers: one way to write them whole.

`atomic_target` builds a file beside its target (`.<name>.<pid>.building`), flushes it to
disk, renames it over the target and flushes the folder's entry: a reader sees the old
file or the new one, never half of one, and a crash leaves the old one. Every writer of a
file someone else reads uses it (the serving database, the report, dbt docs, data docs,
quality results, suites, evaluation figures); `remove_stale_builds` clears what killed
writers left behind.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUILDING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.building(\.wal)?$")


def _building_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.building")


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_target(target: Path) -> Iterator[Path]:
    """A path to build `target` at (beside it, named after this process); once the block
    ends without an error it is flushed to disk and renamed over `target`, and the folder's
    entry flushed too: readers see the old file or the new one, never half of one, and a
    crash leaves the old one. On an error the half-built file is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    building = _building_path(target)
    building.unlink(missing_ok=True)
    try:
        yield building
        move_into_place(building, target)
    except BaseException:
        building.unlink(missing_ok=True)
        raise


def move_into_place(built: Path, target: Path) -> Path:
    """Flush a finished file (or folder of flushed files) to disk, rename it to `target` in
    one step and flush the folder's entry: the one way a built file becomes visible."""
    fsync_path(built)
    os.replace(built, target)
    fsync_path(target.parent)
    return target


def write_file_atomically(target: Path, data: bytes | str) -> Path:
    """Write `target` next to itself and swap it in with one rename (see `atomic_target`);
    text is written as UTF-8."""
    with atomic_target(target) as building:
        building.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return target


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_builds(folder: Path) -> list[Path]:
    """Remove what killed publishes left in `folder`: `.<name>.<pid>.building` files (and their
    DuckDB `.wal`) and folders of processes that no longer run. Returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = BUILDING.match(path.name)
        if not match or _alive(int(match.group("pid"))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
