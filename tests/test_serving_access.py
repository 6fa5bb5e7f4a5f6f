"""Analysts' SQL (`needseg query`) reads the published serving database and nothing else:
no file on the machine is read or written through it, and the database itself cannot be
changed."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from pipelines import cli
from pipelines.settings import load_settings


@pytest.fixture
def published(tmp_path: Path) -> Path:
    settings = load_settings(tmp_path / "data")
    settings.serving_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(settings.serving_path))
    con.execute("create table customer_segments as select 'A-1' as account_id, 'Price-focused' as segment")
    con.close()
    return settings.data_dir


def test_a_published_table_answers(published: Path, capsys):
    assert cli.main(["query", "select segment from customer_segments", "--data-dir", str(published), "--csv"]) == 0
    assert "Price-focused" in capsys.readouterr().out


@pytest.mark.parametrize(
    "sql",
    [
        "select * from read_text('/etc/hostname')",
        "copy customer_segments to '{out}'",
        "attach '{other}' as other",
        "set enable_external_access = true",
        "drop table customer_segments",
    ],
)
def test_user_sql_cannot_reach_files_or_change_the_database(published: Path, tmp_path: Path, sql: str, capsys):
    out, other = tmp_path / "leak.csv", tmp_path / "other.duckdb"
    code = cli.main(["query", sql.format(out=out, other=other), "--data-dir", str(published)])
    err = capsys.readouterr().err
    assert code == 1 and "query failed" in err and "Traceback" not in err
    assert not out.exists() and not other.exists()
    con = duckdb.connect(str(published / "serving.duckdb"), read_only=True)
    assert con.execute("select count(*) from customer_segments").fetchone() == (1,)
    con.close()
