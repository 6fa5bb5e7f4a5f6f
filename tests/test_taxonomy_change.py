"""Swapping the taxonomy on a warehouse that already has runs: the next run starts a new
identity lineage (no alignment to the old segments), segment_runs says what changed, and
history, transitions and drift never compare segments across the change. An edit that
keeps the segment ids and dimensions (a reworded playbook) continues the lineage."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from pipelines import cycle
from pipelines.config import load_config
from pipelines.segmentation.run import segment
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import CONFIG_DIR, load_settings
from pipelines.warehouse import connect
from tests.conftest import rows, warehouse_copy
from tests.test_taxonomy import THREE_SEGMENTS

AS_OF = dt.date(2026, 10, 31)
RUN = "seg-2026-10-31"

# The default taxonomy's seven dimensions under other segment ids: as wide as the old
# centres, so nothing would crash if the two were compared - which is why they must not be.
SAME_WIDTH = (
    (CONFIG_DIR / "taxonomy.yaml")
    .read_text()
    .replace("name: default-needs", "name: renamed-needs")
    .replace("price_focused", "bargain_hunters")
    .replace("service_focused", "uptime_buyers")
)


def _copy(settings, target):
    with connect(settings.warehouse_path) as con:
        con.execute("checkpoint")  # see tests.conftest.warehouse_copy
    shutil.copytree(settings.data_dir, target)
    return load_settings(target)


@pytest.fixture(scope="module")
def swapped(cycled_small_world, tmp_path_factory):
    """The small world's three monthly runs under the default taxonomy; then the last month
    re-segmented with another company's taxonomy (four dimensions, three segments), its
    drift step re-run and the serving tables rebuilt. Before the month is re-run, one
    segment of the two runs before it is renamed, as an emerging segment's name changes
    with its centre."""
    settings, _ = cycled_small_world
    base = tmp_path_factory.mktemp("swapped")
    taxonomy = base / "acme.yaml"
    taxonomy.write_text(THREE_SEGMENTS)
    copy = _copy(settings, base / "data").with_overrides(taxonomy_path=taxonomy)
    with connect(copy.warehouse_path) as con:
        con.execute(
            "update segments.segment_definitions set segment_name = 'Name in August' where run_id = 'seg-2026-08-31' and segment_id = 'price_focused'"
        )
        con.execute(
            "update segments.segment_definitions set segment_name = 'Name in September' where run_id = 'seg-2026-09-30' and segment_id = 'price_focused'"
        )
    segmented = cycle.segment_step(AS_OF, copy)
    cycle.drift_step(AS_OF, copy)
    cycle.serving_step(AS_OF, copy)
    cycle.publish_step(AS_OF, copy)
    return copy, segmented


def _working(settings, sql: str, params=None) -> list[tuple]:
    # dbt, run in this process, keeps the warehouse open: read it with the same configuration
    with connect(settings.warehouse_path, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_a_swapped_taxonomy_starts_a_new_lineage_and_says_so(swapped):
    settings, segmented = swapped
    runs = _working(
        settings, "select run_id, previous_run_id, lineage_id, taxonomy, taxonomy_change from segments.segment_runs order by as_of"
    )
    assert [r[:4] for r in runs] == [
        ("seg-2026-08-31", None, "seg-2026-08-31", "default-needs v1"),
        ("seg-2026-09-30", "seg-2026-08-31", "seg-2026-08-31", "default-needs v1"),
        (RUN, None, RUN, "acme-buying-styles v3"),
    ]
    change = runs[-1][4]
    assert "taxonomy changed since seg-2026-09-30: default-needs v1" in change and "-> acme-buying-styles v3" in change
    assert "start afresh" in change and change in segmented["summary"]
    # no segment of the new run claims to continue one of the old taxonomy
    definitions = _working(
        settings, "select segment_name, aligned_from, renamed_from from segments.segment_definitions where run_id = ?", [RUN]
    )
    assert {r[0] for r in definitions} == {"Cost cutters", "Uptime buyers", "Partners"}
    assert all(r[1] is None and r[2] is None for r in definitions)
    published = rows(settings.serving_path, "select run_id, lineage_start, taxonomy_change is not null from segment_runs order by as_of")
    assert published == [("seg-2026-08-31", True, False), ("seg-2026-09-30", False, False), (RUN, True, True)]


def test_history_and_transitions_do_not_compare_across_the_change(swapped):
    settings, _ = swapped
    # every stay of the old taxonomy ends where the new one starts; the new stays start there
    spanning = rows(
        settings.serving_path,
        f"select count(*) from segment_history where valid_from < date '{AS_OF}' and (valid_to is null or valid_to > date '{AS_OF}')",
    )
    assert spanning == [(0,)]
    new = rows(
        settings.serving_path,
        "select count(*), min(valid_from), max(runs), count(distinct lineage_id) from segment_history where is_current",
    )
    assert new[0][1:] == (AS_OF, 1, 1)
    assert rows(settings.serving_path, f"select count(*) from segment_transitions where run_id = '{RUN}'") == [(0,)]
    assert rows(settings.serving_path, "select count(*) from segment_transitions where run_id = 'seg-2026-09-30'")[0][0] > 0


def test_drift_after_the_change_sees_no_migration_and_no_population_change(swapped):
    settings, _ = swapped
    drift = rows(
        settings.serving_path,
        "select count(*), count(previous_segment_id), count(*) filter (where migrated), "
        "count(distinct run_id), count(segment) from customer_drift",
    )
    customers = rows(settings.serving_path, "select count(*) from customer_segments")[0][0]
    # every customer still gets its drift row, and none is said to have moved: there is no
    # earlier run of this lineage to have moved from
    assert drift == [(customers, 0, 0, 1, customers)]
    # a drift in what an account buys is read against the new taxonomy's segments alone
    named = rows(settings.serving_path, "select distinct segment, toward_segment from customer_drift")
    assert {name for pair in named for name in pair if name is not None} <= {"Cost cutters", "Uptime buyers", "Partners"}
    assert rows(settings.serving_path, f"select count(*) from segment_population_changes where run_id = '{RUN}'") == [(0,)]
    assert rows(settings.serving_path, "select count(*) from segment_population_changes where run_id = 'seg-2026-09-30'")[0][0] > 0
    # nor does an alert opened in this run claim a move between the two taxonomies
    opened = rows(settings.serving_path, f"select from_segment, to_segment from churn_risk_alerts where opened_run_id = '{RUN}'")
    assert all(
        f in {"Cost cutters", "Uptime buyers", "Partners", None} and t in {"Cost cutters", "Uptime buyers", "Partners", None}
        for f, t in opened
    )


def test_transitions_name_each_side_from_its_own_run(swapped):
    settings, _ = swapped
    named = rows(
        settings.serving_path,
        "select distinct from_segment, to_segment from segment_transitions "
        "where run_id = 'seg-2026-09-30' and from_segment_id = 'price_focused' and to_segment_id = 'price_focused'",
    )
    assert named == [("Name in August", "Name in September")]


def test_same_width_taxonomy_under_other_ids_is_not_aligned_to_the_old_segments(cycled_small_world, tmp_path):
    settings, _ = cycled_small_world
    target = tmp_path / "warehouse.duckdb"
    warehouse_copy(settings.warehouse_path, target)
    path = tmp_path / "renamed.yaml"
    path.write_text(SAME_WIDTH)
    with connect(target) as con:
        segment(con, AS_OF, load_taxonomy(path), load_config(CONFIG_DIR / "needseg.yaml"))
        run = con.execute("select previous_run_id, lineage_id from segments.segment_runs where run_id = ?", [RUN]).fetchone()
        aligned = con.execute("select count(aligned_from) from segments.segment_definitions where run_id = ?", [RUN]).fetchone()[0]
        ids = {r[0] for r in con.execute("select segment_id from segments.assignments where run_id = ?", [RUN]).fetchall()}
    assert run == (None, RUN) and aligned == 0
    assert {"bargain_hunters", "uptime_buyers"} <= ids and not ids & {"price_focused", "service_focused"}


def test_an_edit_that_keeps_ids_and_dimensions_continues_the_lineage(cycled_small_world, tmp_path):
    settings, _ = cycled_small_world
    target = tmp_path / "warehouse.duckdb"
    warehouse_copy(settings.warehouse_path, target)
    path = tmp_path / "edited.yaml"
    path.write_text(
        (CONFIG_DIR / "taxonomy.yaml")
        .read_text()
        .replace("name: Price-focused", "name: Price buyers")
        .replace("Volume tiers and framework prices", "Framework prices and volume tiers")
    )
    with connect(target) as con:
        before = dict(con.execute("select account_id, segment_id from segments.assignments where run_id = ?", [RUN]).fetchall())
        segment(con, AS_OF, load_taxonomy(path), load_config(CONFIG_DIR / "needseg.yaml"))
        runs = con.execute(
            "select run_id, previous_run_id, lineage_id, taxonomy_change from segments.segment_runs order by as_of"
        ).fetchall()
        after = dict(con.execute("select account_id, segment_id from segments.assignments where run_id = ?", [RUN]).fetchall())
        names = {r[0] for r in con.execute("select segment_name from segments.segment_definitions where run_id = ?", [RUN]).fetchall()}
    assert [r[:3] for r in runs] == [
        ("seg-2026-08-31", None, "seg-2026-08-31"),
        ("seg-2026-09-30", "seg-2026-08-31", "seg-2026-08-31"),
        (RUN, "seg-2026-09-30", "seg-2026-08-31"),
    ]
    assert "taxonomy edited since seg-2026-09-30" in runs[-1][3] and "segments continue" in runs[-1][3]
    assert after == before  # the same segments for the same customers
    assert "Price buyers" in names and "Price-focused" not in names  # the new display name is used


def test_runs_written_before_lineages_get_theirs_and_continue(cycled_small_world, tmp_path):
    settings, _ = cycled_small_world
    target = tmp_path / "warehouse.duckdb"
    warehouse_copy(settings.warehouse_path, target)
    with connect(target) as con:
        # as an older needseg left them: no lineage columns filled in
        con.execute("update segments.segment_runs set lineage_id = null, previous_run_id = null, lineage_digest = null")
        segment(con, AS_OF, load_taxonomy(CONFIG_DIR / "taxonomy.yaml"), load_config(CONFIG_DIR / "needseg.yaml"))
        runs = con.execute("select run_id, previous_run_id, lineage_id from segments.segment_runs order by as_of").fetchall()
        aligned = con.execute("select count(*), count(aligned_from) from segments.segment_definitions where run_id = ?", [RUN]).fetchone()
    assert runs == [
        ("seg-2026-08-31", None, "seg-2026-08-31"),
        ("seg-2026-09-30", "seg-2026-08-31", "seg-2026-08-31"),
        (RUN, "seg-2026-09-30", "seg-2026-08-31"),
    ]
    assert aligned[0] == aligned[1]  # every segment continues one of the previous run's
