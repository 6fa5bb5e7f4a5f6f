"""Publishing for readers: files swapped in whole, the Parquet exports as one set, and what
killed publishes leave behind cleaned up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines.files import atomic_target, remove_stale_builds, write_file_atomically
from pipelines.publish import _publish_exports

TABLES = {"customer_segments": "marts.customer_segments", "segments": "marts.segments"}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def warehouse():
    con = duckdb.connect()
    con.execute("create schema marts")
    con.execute("create table marts.customer_segments as select 'A1' as account_id, 'price_focused' as segment")
    con.execute("create table marts.segments as select 'price_focused' as segment, 1 as size")
    yield con
    con.close()


def test_a_failed_write_leaves_the_old_file_and_no_half_built_one(tmp_path: Path):
    target = tmp_path / "report.html"
    write_file_atomically(target, b"version 1")
    with pytest.raises(RuntimeError), atomic_target(target) as building:
        building.write_bytes(b"half of version 2")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"version 1"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    write_file_atomically(target, b"version 2")
    assert target.read_bytes() == b"version 2"


def test_files_left_by_killed_publishes_are_removed_and_running_ones_kept(tmp_path: Path):
    dead, alive = _dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stale = [
            tmp_path / f".serving.duckdb.{dead}.building",
            tmp_path / f".serving.duckdb.{dead}.building.wal",
            tmp_path / f".report.html.{dead}.building",
        ]
        running = tmp_path / f".serving.duckdb.{alive.pid}.building"
        for path in [*stale, running, tmp_path / "serving.duckdb"]:
            path.write_bytes(b"x")
        (tmp_path / f".run-1.{dead}.building").mkdir()  # a half-written export set
        removed = remove_stale_builds(tmp_path)
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in removed) == sorted([*(p.name for p in stale), f".run-1.{dead}.building"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, "serving.duckdb"])


def test_parquet_exports_are_published_as_one_set_and_a_reader_keeps_its_set(tmp_path: Path, warehouse):
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "customer_segments.parquet").write_bytes(b"an export of an older needseg")
    first = _publish_exports(warehouse, exports, TABLES, "seg-1", keep=2)
    assert exports.is_symlink() and exports.resolve() == first.resolve()
    assert sorted(p.name for p in exports.iterdir()) == ["customer_segments.parquet", "segments.parquet"]
    # a reader resolves the link once and reads that set, whatever is published meanwhile
    reading = exports.resolve()
    warehouse.execute("update marts.customer_segments set segment = 'service_focused'")
    _publish_exports(warehouse, exports, TABLES, "seg-2", keep=2)
    segment = "select segment from read_parquet(?)"
    reader = duckdb.connect()
    assert reader.execute(segment, [str(reading / "customer_segments.parquet")]).fetchone()[0] == "price_focused"
    assert reader.execute(segment, [str(exports / "customer_segments.parquet")]).fetchone()[0] == "service_focused"
    third = _publish_exports(warehouse, exports, TABLES, "seg-3", keep=2)
    versions = sorted(p.name for p in third.parent.iterdir())
    # the two newest sets stay; the older needseg's folder and the first set are gone
    assert len(versions) == 2 and versions[-1] == third.name and not reading.exists()
    assert not list(tmp_path.glob(".*building*")) and not list(third.parent.glob(".*building*"))
