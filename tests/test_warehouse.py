"""The warehouse layer (pipelines/warehouse): needseg's tables from one place, upgrades that
keep data, all-or-nothing writes, frames inserted by name with the table's types."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from pipelines.warehouse import ensure_schema, insert_frame, open_warehouse, table_names, transaction
from pipelines.warehouse.schema import DDL_DIR, SCHEMAS


def _tables(con) -> set[str]:
    return {
        f"{s}.{t}"
        for s, t in con.execute("select schema_name, table_name from duckdb_tables() where database_name = current_database()").fetchall()
    }


def test_a_new_warehouse_has_every_declared_table_and_opening_it_again_changes_nothing(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with open_warehouse(path) as con:
        created = _tables(con)
        columns = con.execute("select count(*) from duckdb_columns() where database_name = current_database()").fetchone()[0]
    assert set(table_names()) <= created
    assert {name.split(".")[0] for name in table_names()} == set(SCHEMAS)
    # every schema but raw (from the input contract) is declared in its own file
    assert sorted(p.stem for p in DDL_DIR.glob("*.sql")) == sorted(s for s in SCHEMAS if s != "raw")
    with open_warehouse(path) as con:
        assert _tables(con) == created
        assert con.execute("select count(*) from duckdb_columns() where database_name = current_database()").fetchone()[0] == columns


def test_a_warehouse_written_by_an_older_needseg_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:  # an outbox from before `part` and `failure_notified_at`
        con.execute("create schema alerts")
        con.execute(
            "create table alerts.deliveries (alert_id varchar not null, channel varchar not null, run_id varchar not null, "
            "message_id varchar not null, recipient varchar not null, delivered_at timestamp not null)"
        )
        con.execute("insert into alerts.deliveries values ('a1', 'email', 'seg-2026-01-31', 'm1', 'x@example.com', '2026-02-01')")
    with open_warehouse(path) as con:
        columns = [c for (c,) in con.execute("select column_name from duckdb_columns() where table_name = 'deliveries'").fetchall()]
        rows = con.execute("select alert_id, as_of from alerts.deliveries").fetchall()
    assert columns[-1] == "as_of" and rows == [("a1", None)]


def test_a_transaction_commits_whole_rolls_back_on_error_and_discards_on_request():
    with duckdb.connect() as con:
        ensure_schema(con)
        row = ["f.csv", "c1", "c2", "b1", "2026-01-01"]
        with transaction(con):
            con.execute("insert into meta.file_conflicts values (?, ?, ?, ?, ?)", row)
        with pytest.raises(RuntimeError), transaction(con):
            con.execute("insert into meta.file_conflicts values ('g.csv', 'c1', 'c2', 'b1', '2026-01-01')")
            raise RuntimeError("a step failed half way")
        with transaction(con) as tx:  # a dry run: written exactly as for real, then thrown away
            con.execute("insert into meta.file_conflicts values ('h.csv', 'c1', 'c2', 'b1', '2026-01-01')")
            tx.discard()
        with pytest.raises(duckdb.ConstraintException), transaction(con):  # the same key again: nothing of it stays
            con.execute("insert into meta.file_conflicts values ('i.csv', 'c1', 'c2', 'b1', '2026-01-01')")
            con.execute("insert into meta.file_conflicts values (?, ?, ?, ?, ?)", row)
        assert con.execute("select file from meta.file_conflicts").fetchall() == [("f.csv",)]


def test_a_frame_is_inserted_by_name_with_the_tables_types_and_an_unknown_column_is_refused():
    with duckdb.connect() as con:
        ensure_schema(con)
        message = {
            "message_id": "m1",
            "run_id": "seg-2026-01-31",
            "as_of": "2026-01-31",
            "channel": "webhook",
            "recipient": "x@example.com",
            "alert_ids": ["a1", "a2"],
            "subject": "2 alerts",
            "body_text": "...",
            "payload": '{"alerts": 2}',
            "status": "pending",
            "attempts": 0,
            "created_at": pd.Timestamp("2026-02-01 06:00"),
        }
        assert insert_frame(con, "alerts.outbox", pd.DataFrame([message])) == 1
        assert insert_frame(con, "alerts.outbox", pd.DataFrame()) == 0
        alert_ids, payload, as_of = con.execute("select alert_ids, payload->>'alerts', as_of from alerts.outbox").fetchone()
        assert alert_ids == ["a1", "a2"] and payload == "2" and str(as_of) == "2026-01-31"
        with pytest.raises(duckdb.BinderException, match="colour"):
            insert_frame(con, "alerts.outbox", pd.DataFrame([{**message, "message_id": "m2", "colour": "red"}]))
        assert con.execute("select count(*) from alerts.outbox").fetchone()[0] == 1


def test_every_duckdb_needseg_opens_is_bounded_by_one_setting_shared_with_dbt(tmp_path, monkeypatch):
    """NEEDSEG_DUCKDB_* bound needseg's connections (warehouse and scratch) and are what the
    dbt runs get (transform.profile_env, read by the project's on-run-start hook); setting
    the spill folder again on a second connection, after it was used, is no error."""
    from pipelines import transform
    from pipelines.errors import ConfigError
    from pipelines.settings import duckdb_resources, load_settings
    from pipelines.warehouse import connect, in_memory

    spill = tmp_path / "spill"
    monkeypatch.setenv("NEEDSEG_DUCKDB_MEMORY_LIMIT", "64MB")
    monkeypatch.setenv("NEEDSEG_DUCKDB_THREADS", "1")
    monkeypatch.setenv("NEEDSEG_DUCKDB_TEMP_DIR", str(spill))
    path = tmp_path / "w.duckdb"
    con = connect(path)
    assert con.execute("select current_setting('threads'), current_setting('temp_directory')").fetchone() == (1, str(spill))
    assert con.execute("select current_setting('memory_limit')").fetchone()[0].startswith("61")  # 64 MB in MiB
    # past the limit DuckDB spills instead of failing or growing
    con.execute("create table t as select range as k, md5(range::varchar) as v from range(2000000)")
    assert con.execute("select count(distinct v) from t").fetchone()[0] == 2_000_000
    again = connect(path)  # same process, same database: the settings again, the spill folder kept
    assert again.execute("select current_setting('temp_directory')").fetchone()[0] == str(spill)
    again.close()
    con.close()
    with in_memory() as scratch:
        assert scratch.execute("select current_setting('threads')").fetchone()[0] == 1
    env = transform.profile_env(load_settings(tmp_path))
    assert (env["NEEDSEG_DUCKDB_MEMORY_LIMIT"], env["NEEDSEG_DUCKDB_THREADS"], env["NEEDSEG_DUCKDB_TEMP_DIR"]) == ("64MB", "1", str(spill))

    monkeypatch.delenv("NEEDSEG_DUCKDB_MEMORY_LIMIT")
    monkeypatch.delenv("NEEDSEG_DUCKDB_TEMP_DIR")
    defaults = duckdb_resources()
    assert defaults.memory_limit == "1GB" and defaults.temp_directory is None
    assert "NEEDSEG_DUCKDB_TEMP_DIR" not in transform.profile_env(load_settings(tmp_path))
    monkeypatch.setenv("NEEDSEG_DUCKDB_THREADS", "two")
    with pytest.raises(ConfigError, match="NEEDSEG_DUCKDB_THREADS"):
        duckdb_resources()


def test_release_buffers_keeps_the_configured_limit_and_the_data(tmp_path, monkeypatch):
    """The drift step has DuckDB give back its kept buffers between queries
    (`release_buffers`): afterwards the connection has its configured limit again, the data
    is all there, and a low limit DuckDB refuses changes nothing."""
    import pipelines.warehouse as warehouse
    from pipelines.warehouse import connect, release_buffers

    monkeypatch.setenv("NEEDSEG_DUCKDB_MEMORY_LIMIT", "512MB")
    con = connect(tmp_path / "w.duckdb")
    con.execute("create table t as select range as k, md5(range::varchar) as v from range(1000000)")
    expected = con.execute("select count(distinct v), sum(k) from t").fetchone()
    limit = con.execute("select current_setting('memory_limit')").fetchone()[0]
    assert limit.startswith("488")  # 512 MB in MiB
    release_buffers(con)
    assert con.execute("select current_setting('memory_limit')").fetchone()[0] == limit
    assert con.execute("select count(distinct v), sum(k) from t").fetchone() == expected
    monkeypatch.setattr(warehouse, "_RELEASE_LIMIT", "not a size")  # DuckDB refuses the low limit
    release_buffers(con)
    assert con.execute("select current_setting('memory_limit')").fetchone()[0] == limit
    con.close()


def test_the_per_account_history_has_no_index_and_an_older_warehouses_keys_are_dropped(tmp_path, monkeypatch):
    """At 1M accounts a run's assignments, committed into a table with a primary key, ran out of
    DuckDB's memory limit (the key's index lives in memory); the per-account tables carry no
    key, a warehouse written with one loses it on opening, its rows kept, and three runs of
    300,000 accounts fit a 64 MB limit."""
    from pipelines.warehouse import open_warehouse

    per_account = [
        ("segments", "assignments"),
        ("segments", "assignment_probabilities"),
        ("drift", "customer_drift"),
        ("churn", "risk_history"),
    ]
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:  # as an older needseg wrote it
        con.execute("create schema segments")
        con.execute(
            "create table segments.assignment_probabilities (run_id varchar not null, account_id varchar not null, "
            "segment_id varchar not null, probability double not null, primary key (run_id, account_id, segment_id))"
        )
        con.execute(
            "insert into segments.assignment_probabilities values ('seg-2026-09-30', 'a1', 's1', 0.7), ('seg-2026-09-30', 'a1', 's2', 0.3)"
        )
    monkeypatch.setenv("NEEDSEG_DUCKDB_MEMORY_LIMIT", "64MB")
    with open_warehouse(path) as con:
        keys = con.execute("select schema_name, table_name from duckdb_constraints() where constraint_type = 'PRIMARY KEY'").fetchall()
        assert not set(per_account) & set(keys), keys
        assert ("churn", "model_quality") in keys  # small tables keep theirs
        rows = con.execute(
            "select run_id, account_id, segment_id, probability, behaviour_probability from segments.assignment_probabilities order by all"
        )
        assert rows.fetchall() == [("seg-2026-09-30", "a1", "s1", 0.7, None), ("seg-2026-09-30", "a1", "s2", 0.3, None)]
        for run in range(3):
            with transaction(con):
                con.execute(
                    "insert into segments.assignment_probabilities select ?, 'account-' || range, 's' || (range % 4), 0.25, null "
                    "from range(300000)",
                    [f"seg-2026-1{run}-30"],
                )
        assert con.execute("select count(*) from segments.assignment_probabilities").fetchone()[0] == 900_002
