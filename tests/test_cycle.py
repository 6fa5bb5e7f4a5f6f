"""Full cycles from the command line functions on the small world: what analysts and
account teams get, and the rules every part keeps (idempotent, deterministic, atomic)."""

from __future__ import annotations

import datetime as dt
import html
import os
import pathlib
import re
import subprocess
import sys

import duckdb
import pandas as pd
import pytest

from pipelines import cycle
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.warehouse import connect
from tests.conftest import warehouse_copy

LAST = dt.date(2026, 10, 31)


def _serving(settings):
    return duckdb.connect(str(settings.serving_path), read_only=True)


def test_every_stage_ran_for_every_cycle(cycled_small_world):
    settings, reports = cycled_small_world
    assert [r.as_of for r in reports] == ["2026-08-31", "2026-09-30", "2026-10-31"]
    assert all(set(r.stages) == set(cycle.STAGES) for r in reports)
    with connect(settings.warehouse_path, read_only=True) as con:
        timed = con.execute("select count(distinct stage) from meta.cycle_runs where as_of = ?", [LAST]).fetchone()[0]
    assert timed == len(cycle.STAGES)


def test_published_tables_describe_the_latest_run_for_every_customer(cycled_small_world, small_world):
    settings, _ = cycled_small_world
    con = _serving(settings)
    tables = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
    assert {
        "customer_segments",
        "segments",
        "segment_profiles",
        "segment_history",
        "segment_runs",
        "prospect_segments",
        "key_account_lookalikes",
        "customer_drift",
        "segment_transitions",
        "segment_population_changes",
        "churn_risk_alerts",
        "customer_features",
        "publication",
    } <= tables
    segments = con.execute("select * from customer_segments").df()
    truth = pd.read_parquet(small_world / "truth" / "segments_monthly.parquet")
    assert set(segments["account_id"]) == set(truth[(truth["month"] == "2026-10") & truth["active"]]["account_id"])
    taxonomy = load_taxonomy(settings.taxonomy_path)
    assert set(segments["segment"]) <= {s.name for s in taxonomy.segments}
    assert segments["probability"].between(0, 1).all() and segments["drivers"].str.len().gt(0).mean() > 0.9
    # key accounts are the 80/20 tier
    features = con.execute("select revenue_12m, value_tier from customer_features where status = 'customer'").df()
    key_share = features.loc[features["value_tier"] == "key", "revenue_12m"].sum() / features["revenue_12m"].clip(lower=0).sum()
    assert 0.78 <= key_share <= 0.86
    prospects = con.execute("select count(*), count(offer) from prospect_segments").fetchone()
    assert prospects[0] == 40 and prospects[1] == 40
    # comments travel with the tables
    comment = con.execute("select comment from duckdb_tables() where table_name = 'customer_segments'").fetchone()[0]
    assert comment and "one row per customer" in comment.lower()


def test_history_and_runs_grow_by_one_per_cycle(cycled_small_world):
    settings, _ = cycled_small_world
    con = _serving(settings)
    assert con.execute("select count(*) from segment_runs").fetchone()[0] == 3
    history = con.execute("select * from segment_history").df()
    assert history.groupby("account_id")["is_current"].sum().max() == 1
    closed = history[~history["is_current"]]
    assert (closed["valid_to"] > closed["valid_from"]).all()
    assert con.execute("select count(*) from segment_population_changes where event = 'survive'").fetchone()[0] >= 3


def test_rerunning_the_last_cycle_changes_nothing_and_adds_nothing(cycled_small_world):
    settings, _ = cycled_small_world
    with connect(settings.warehouse_path, read_only=True) as con:
        before = con.execute(
            "select account_id, segment_id, probability from segments.assignments where run_id = 'seg-2026-10-31' order by 1"
        ).df()
        counts = {
            t: con.execute(f"select count(*) from {t}").fetchone()[0]
            for t in ("raw.order_lines", "segments.segment_runs", "drift.customer_drift", "alerts.churn_risk_alerts", "alerts.outbox")
        }
    cycle.run_cycle(LAST, settings)
    with connect(settings.warehouse_path, read_only=True) as con:
        after = con.execute(
            "select account_id, segment_id, probability from segments.assignments where run_id = 'seg-2026-10-31' order by 1"
        ).df()
        again = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in counts}
    pd.testing.assert_frame_equal(before, after)
    assert again == counts


def test_publishing_swaps_the_file_so_an_open_reader_keeps_its_version(cycled_small_world):
    settings, _ = cycled_small_world
    reader = duckdb.connect(str(settings.serving_path), read_only=True)
    published_at = reader.execute("select published_at from publication").fetchone()[0]
    cycle.publish_step(LAST, settings)
    # the old reader still sees the version it opened; a new one sees the new version
    assert reader.execute("select published_at from publication").fetchone()[0] == published_at
    assert reader.execute("select count(*) from customer_segments").fetchone()[0] > 0
    # a new reader (another process, like an analyst's) sees the new version
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import duckdb; print(duckdb.connect({str(settings.serving_path)!r}, read_only=True).execute('select published_at from publication').fetchone()[0].isoformat())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert dt.datetime.fromisoformat(out.stdout.strip()) > published_at
    assert not list(settings.serving_path.parent.glob(".*building*"))


def test_publishing_an_earlier_date_keeps_the_newer_publication(cycled_small_world):
    settings, _ = cycled_small_world
    detail = cycle.publish_step(dt.date(2026, 9, 30), settings)
    assert "already shows the newer run" in detail["summary"]
    assert _serving(settings).execute("select run_id from publication").fetchone()[0] == "seg-2026-10-31"


def test_the_segment_report_shows_the_published_run_offline(cycled_small_world):
    settings, reports = cycled_small_world
    from pipelines.report import report_path

    page = report_path(settings).read_text(encoding="utf-8")
    assert reports[-1].stages["publish"]["report"] == str(report_path(settings))
    con = _serving(settings)
    run_id = con.execute("select run_id from publication").fetchone()[0]
    assert f"Run <b>{run_id}</b>" in page
    for segment, customers in con.execute("select segment, count(*) from customer_segments group by 1").fetchall():
        assert html.escape(segment) in page
        assert re.search(rf"<td[^>]*>{customers}</td>", page)  # the segments table
    open_alerts = con.execute("select count(*) from churn_risk_alerts where status = 'open'").fetchone()[0]
    assert f"{open_alerts} open churn-risk alerts" in page
    # charts are inline: sizes, needs heat map, sizes over the three runs, transitions
    assert page.count("<svg") >= 4 and "customers per segment over the runs" in page
    # nothing is fetched from the network, and nothing runs
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script" not in page


def test_the_report_escapes_what_comes_from_the_crm(cycled_small_world, tmp_path):
    settings, _ = cycled_small_world
    import shutil

    from pipelines.report import write_report
    from pipelines.settings import load_settings

    copy = load_settings(tmp_path)
    shutil.copy(settings.serving_path, copy.serving_path)
    con = duckdb.connect(str(copy.serving_path))
    con.execute("update churn_risk_alerts set account_name = '<script>alert(1)</script> & Co' where status = 'open'")
    con.close()
    page = pathlib.Path(write_report(copy).path).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in page


def test_dbt_docs_document_every_published_table_offline(cycled_small_world):
    settings, _ = cycled_small_world
    from pipelines.cli import main

    assert main(["dbt-docs", "--data-dir", str(settings.data_dir)]) == 0
    page = (settings.report_dir / "dbt_docs.html").read_text(encoding="utf-8")
    for table in ("customer_segments", "segment_history", "churn_risk_alerts", "customer_features"):
        assert f'"model.needseg.{table}"' in page
    # self-contained: scripts and styles inlined, nothing loaded from elsewhere
    assert not re.search(r"""<(script|link)[^>]+(src|href)=["']?(https?:)?//""", page)


def _needseg(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env)


def test_cli_query_reads_the_serving_database(cycled_small_world):
    settings, _ = cycled_small_world
    out = _needseg("query", "--data-dir", str(settings.data_dir), "--csv", "select count(*) as n from customer_segments")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "n" and int(out.stdout.splitlines()[1]) > 300


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["query", "select 1"], 1, "does not exist yet: run a cycle first"),
        (["segment", "--as-of", "2026-13-01"], 2, "is not a date; expected YYYY-MM-DD"),
        (["drift", "--as-of", "2026-10-31"], 1, "no segmentation run as of 2026-10-31"),
    ],
)
def test_cli_errors_say_what_to_do(tmp_path, args, code, message):
    if args[0] in ("query", "segment", "drift"):
        args = [args[0], "--data-dir", str(tmp_path / "empty"), *args[1:]]
    out = _needseg(*args)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_the_pipelines_own_alerts_reach_each_owner_once_by_email(cycled_small_world, monkeypatch):
    """Alerts raised by the drift step on the small world, delivered by `needseg alerts`
    to a real SMTP server on loopback: one digest per owner, nothing twice on a re-run."""
    import email
    import socket

    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings, _ = cycled_small_world
        monkeypatch.setenv("NEEDSEG_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("NEEDSEG_SMTP_PORT", str(port))
        with connect(settings.warehouse_path, read_only=True) as con:
            open_alerts = con.execute("select account_owner, account_name from alerts.churn_risk_alerts where status = 'open'").fetchall()
        assert open_alerts, "the small world should raise churn-risk alerts"
        detail = cycle.alerts_step(LAST, settings, raise_if_undelivered=True)
        owners = {owner for owner, _ in open_alerts}
        assert len(inbox.messages) == len(owners) == detail["messages_sent"]
        assert {m["To"] for m in inbox.messages} == owners
        body = "\n".join(
            m.get_payload(0).get_payload(decode=True).decode() if m.is_multipart() else m.get_payload() for m in inbox.messages
        )
        assert all(name in body for _, name in open_alerts)
        # a retry or a re-run of the same interval sends nothing new
        cycle.alerts_step(LAST, settings, raise_if_undelivered=True)
        assert len(inbox.messages) == len(owners)
    finally:
        controller.stop()


def test_duckdb_out_of_its_memory_limit_is_a_message_naming_the_setting(cycled_small_world, tmp_path):
    """At 1M accounts the features build once ran out of DuckDB's 1 GB: the user is told which
    setting to raise, in the build (dbt) and in needseg's own steps, without a traceback."""
    settings, _ = cycled_small_world
    data = tmp_path / "data"
    data.mkdir()
    warehouse_copy(settings.warehouse_path, data / "warehouse.duckdb")
    env = {**os.environ, "NEEDSEG_DUCKDB_MEMORY_LIMIT": "4MB", "NEEDSEG_DUCKDB_THREADS": "2"}
    said = {}
    for command in ("build", "segment"):
        out = said[command] = _needseg(command, "--data-dir", str(data), "--as-of", "2026-10-31", env=env)
        assert out.returncode == 1, (command, out.stdout, out.stderr)
        assert "Out of Memory" in out.stderr and "NEEDSEG_DUCKDB_MEMORY_LIMIT=4GB" in out.stderr, (command, out.stderr)
        assert "(4MB, 2 thread(s)" in out.stderr and "nothing was published" in out.stderr
        assert "Traceback" not in out.stderr and "SET memory_limit" not in out.stderr, out.stderr
    # the build tried the models that ran out of memory again, one at a time, before giving up
    retried = "built again one node at a time after running out of memory beside other models; it failed again"
    assert retried in said["build"].stderr, said["build"].stderr
