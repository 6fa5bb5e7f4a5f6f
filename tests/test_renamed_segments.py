"""A cluster that continues under another id - an emerging segment that now matches a taxonomy
prototype, or the reverse (`segment_definitions.renamed_from`) - keeps its members: they did
not change segment, so drift does not count them as migrations, and an account team is not
told that 300 customers "moved" when only a name changed."""

from __future__ import annotations

import duckdb
import pandas as pd

from pipelines.segmentation.run import continued_assignments
from pipelines.warehouse.schema import ensure_schema


def _definition(run_id: str, segment_id: str, population: str, renamed_from: str | None = None) -> tuple:
    return (run_id, segment_id, segment_id, population, renamed_from)


def _warehouse(separate_key_tier: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    ensure_schema(con)
    definitions = [
        _definition("seg-1", "price_focused", "all"),
        _definition("seg-1", "emerging_1", "all"),
        _definition("seg-2", "price_focused", "all"),
        # the main population's emerging cluster now matches the service prototype
        _definition("seg-2", "service_focused", "all", renamed_from="emerging_1"),
    ]
    if separate_key_tier:
        definitions += [
            _definition("seg-1", "key_emerging_1", "key"),
            # the key tier's own segments: the same old id renamed to another new one
            _definition("seg-2", "loyalty_partnership", "key", renamed_from="key_emerging_1"),
            _definition("seg-2", "emerging_1", "key", renamed_from="emerging_1"),
        ]
    con.executemany(
        "insert into segments.segment_definitions (run_id, segment_id, segment_name, population, renamed_from, is_emerging, centre, size) "
        "values (?, ?, ?, ?, ?, false, '{}', 1)",
        definitions,
    )
    previous = [
        ("a", "emerging_1", False),  # renamed: stays with its cluster
        ("b", "price_focused", False),  # moves (below)
        ("c", "price_focused", False),  # stays
        ("k1", "key_emerging_1", True),
        ("k2", "emerging_1", True),
    ]
    con.executemany(
        "insert into segments.assignments (run_id, as_of, account_id, segment_id, segment_name, segment_source, probability, is_key_account) "
        "values ('seg-1', date '2026-09-30', ?, ?, ?, 'inferred', 1.0, ?)",
        [(a, s, s, k) for a, s, k in previous],
    )
    return con


def test_members_of_a_renamed_cluster_continue_under_its_new_id_per_population():
    con = _warehouse(separate_key_tier=True)
    before = continued_assignments(con, "seg-2", "seg-1")
    assert before["segment_id"].to_dict() == {
        "a": "service_focused",
        "b": "price_focused",
        "c": "price_focused",
        "k1": "loyalty_partnership",
        # a key account follows the key tier's renames, not the main population's
        "k2": "emerging_1",
    }
    assert before["stored_segment_id"].to_dict() == {
        "a": "emerging_1",
        "b": "price_focused",
        "c": "price_focused",
        "k1": "key_emerging_1",
        "k2": "emerging_1",
    }
    now = pd.Series({"a": "service_focused", "b": "service_focused", "c": "price_focused", "k1": "loyalty_partnership", "k2": "emerging_1"})
    moved = now[now != before["segment_id"].reindex(now.index)]
    assert list(moved.index) == ["b"]  # only the account that really changed segment


def test_without_a_key_tier_of_its_own_key_accounts_follow_the_main_renames():
    con = _warehouse(separate_key_tier=False)
    before = continued_assignments(con, "seg-2", "seg-1")
    assert before.loc["k2", "segment_id"] == "service_focused"
    assert before.loc["k1", "segment_id"] == "key_emerging_1"  # no rename for it: as stored
