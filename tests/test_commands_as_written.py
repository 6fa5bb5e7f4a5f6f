"""Commands work as written: every `needseg` command of the README names a real command
(through `.venv/bin/needseg`: `make` installs uv into .tools/, not onto PATH), every
`needseg query` line runs by copy-paste against a published serving database, and the
CLI takes its global options anywhere, has --version and explains every option."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess

import pytest

from pipelines.cli import build_parser, main
from pipelines.settings import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
COMMAND = re.compile(r"^\s*(\.venv/bin/needseg\s.+)$", re.MULTILINE)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_readme_never_relies_on_uv_being_on_path():
    assert "uv run" not in README
    for line in COMMAND.findall(README):
        words = shlex.split(line)
        assert words[1] in _subcommands() or words[1].startswith("-"), line


def test_every_query_in_the_readme_runs_as_written(cycled_small_world):
    settings, _ = cycled_small_world
    queries = [line for line in COMMAND.findall(README) if shlex.split(line)[1] == "query"]
    assert len(queries) >= 4
    env = {**os.environ, "NEEDSEG_DATA_DIR": str(settings.data_dir)}
    for line in queries:
        done = subprocess.run(line, shell=True, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (line, done.stderr[-2000:])
        assert "rows" in done.stdout or "│" in done.stdout, (line, done.stdout[-500:])


def test_version_and_global_options_before_or_after_the_command(capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and re.match(r"needseg \d+\.\d+", capsys.readouterr().out)
    missing = tmp_path / "nothing-here"
    for argv in (["-v", "--data-dir", str(missing), "status"], ["status", "-v", "--data-dir", str(missing)]):
        assert main(argv) == 1
        assert str(missing / "warehouse.duckdb") in capsys.readouterr().err


def test_every_option_of_every_command_is_explained():
    for name, command in _subcommands().items():
        for action in command._actions:
            assert action.help, (name, action.dest)


def test_one_rule_for_as_of_stated_in_the_help(monkeypatch):
    import datetime as dt

    from pipelines import cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_segment", lambda args: seen.setdefault("segment", args.as_of) and 0)
    monkeypatch.setattr(cli, "cmd_alerts", lambda args: seen.setdefault("alerts", args.as_of) or 0)
    parser_help = build_parser().format_help()
    assert "default to yesterday (UTC)" in re.sub(r"\s+", " ", parser_help)
    main(["segment"])
    main(["alerts"])
    assert seen["segment"] == dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    assert seen["alerts"] is None  # the latest segmentation run


def test_status_answers_the_on_call_questions(cycled_small_world, tmp_path, monkeypatch, capsys):
    """What is published (as-of, when, verdict), what arrived since, where alerts go and
    how the outbox stands, how the DAGs last ended (or why that cannot be read)."""
    import shutil

    import duckdb

    settings, _ = cycled_small_world
    data = tmp_path / "data"
    data.mkdir()
    from tests.conftest import warehouse_copy

    warehouse_copy(settings.warehouse_path, data / "warehouse.duckdb")
    shutil.copy(settings.serving_path, data / "serving.duckdb")
    con = duckdb.connect(str(data / "serving.duckdb"))
    if "verdict" not in {
        c for (c,) in con.execute("select column_name from duckdb_columns() where table_name = 'segment_runs'").fetchall()
    }:
        con.execute("alter table segment_runs add column verdict varchar")
    con.execute("update segment_runs set verdict = 'weak: the segments barely differ' where is_latest")
    con.close()
    monkeypatch.setenv("NEEDSEG_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.delenv("NEEDSEG_SMTP_HOST", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "no-airflow"))
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    assert main(["status", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"published: run seg-2026-10-31 as of 2026-10-31, published \d{4}-\d\d-\d\d \d\d:\d\d UTC", out)
    assert "verdict of that run: weak: the segments barely differ" in out
    assert re.search(r"loaded since that publish: \d+ batch\(es\), [\d,]+ rows to raw, [\d,]+ rows quarantined", out)
    assert re.search(r"webhook\s+webhook http://127\.0\.0\.1:9", out) and re.search(r"email\s+not configured", out)
    assert "alert outbox" in out
    assert "Airflow's metadata database is not reachable" in out and "no-airflow" in out


def test_analysts_documentation_matches_the_database_they_query(cycled_small_world, tmp_path):
    """dbt docs name the published tables as analysts query them (serving.duckdb, schema
    main), list the exposures (report, alert digests), and every published column,
    `publication`'s included, carries its description inside the serving database."""
    import duckdb

    settings, _ = cycled_small_world
    out = tmp_path / "dbt_docs.html"
    assert main(["dbt-docs", "--data-dir", str(settings.data_dir), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    relation = re.compile(r'"relation_name": "([^"\\]|\\.)*customer_segments\\""')
    relations = {m.group(0) for m in relation.finditer(page)}
    assert relations == {r'"relation_name": "\"serving\".\"main\".\"customer_segments\""'}, relations
    assert '"exposure.needseg.segment_report"' in page and '"exposure.needseg.churn_risk_alert_digests"' in page
    assert "serving.duckdb" in page
    con = duckdb.connect(str(settings.serving_path), read_only=True)
    undocumented = con.execute(
        "select table_name, column_name from duckdb_columns() where database_name = current_database() and coalesce(comment, '') = ''"
    ).fetchall()
    tables = {t for (t,) in con.execute("select table_name from duckdb_tables() where coalesce(comment, '') = ''").fetchall()}
    con.close()
    assert undocumented == [] and tables == set()
