"""A CRM without needs surveys still gets needs segments, said to be inferred from behaviour;
missing data and unusable survey answers are handled in the open, never silently.

The first test runs `needseg run` (the CLI, every stage) on a small world delivered with no
survey file at all; the others re-segment a copy of the cycled small world's warehouse
after changing its customer features the way a weaker export would look."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import load_config
from pipelines.demo.world import WorldSpec, deliver, generate
from pipelines.segmentation.run import segment
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import CONFIG_DIR
from pipelines.warehouse import connect
from tests.conftest import SMALL_WORLD, rows, warehouse_copy

AS_OF = dt.date(2026, 10, 31)
CONFIG = load_config(CONFIG_DIR / "needseg.yaml")
DEFAULT_IDS = {"price_focused", "service_focused", "quality_brand", "loyalty_partnership"}


def test_needseg_run_without_any_survey_file_publishes_segments_inferred_from_behaviour(tmp_path):
    world = tmp_path / "world"
    generate(world, WorldSpec(**{**SMALL_WORLD, "survey_every_months": 0}))
    assert not list(world.glob("extracts/*/survey*"))
    data = tmp_path / "data"
    deliver(world, data / "landing", "2026-10")
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--as-of", "2026-10-31", "--data-dir", str(data)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "verdict: PROVISIONAL" in out.stdout and "segments inferred from behaviour" in out.stdout
    serving = data / "serving.duckdb"
    verdict, taxonomy, fallback = rows(serving, "select verdict, taxonomy, fallback_reason from segment_runs where is_latest")[0]
    assert (verdict, taxonomy) == ("provisional", "default-needs-from-behaviour v1")
    assert "only 0 customers have a usable survey response" in fallback
    published = dict(rows(serving, "select segment_source, count(*) from customer_segments group by 1"))
    assert set(published) == {"inferred"} and published["inferred"] > 300
    ids = {r[0] for r in rows(serving, "select distinct segment_id from customer_segments")}
    assert ids <= DEFAULT_IDS | {f"emerging_{i}" for i in range(1, 4)} and len(ids & DEFAULT_IDS) >= 3


@pytest.fixture
def warehouse(cycled_small_world, tmp_path) -> Path:
    settings, _ = cycled_small_world
    target = warehouse_copy(settings.warehouse_path, tmp_path / "warehouse.duckdb")
    with connect(target) as con:
        for table in ("segment_runs", "segment_definitions", "assignments", "assignment_probabilities", "profiles", "prospect_predictions"):
            con.execute(f"delete from segments.{table}")
    return target


def test_too_few_respondents_fall_back_to_behaviour_and_say_why(warehouse):
    with connect(warehouse) as con:
        con.execute(
            "update marts.customer_features set is_surveyed = false where account_id not in (select account_id from marts.customer_features where is_surveyed order by account_id limit 12)"
        )
        result = segment(con, AS_OF, load_taxonomy(CONFIG_DIR / "taxonomy.yaml"), CONFIG)
        run = con.execute("select verdict, verdict_reasons, basis, surveyed from segments.segment_runs").fetchone()
    assert "only 12 customers have a usable survey response" in result.fallback
    assert run[0] == "provisional" and run[2] == "behaviour" and run[3] == 0
    assert "inferred_from_behaviour" in {r["code"] for r in json.loads(run[1])}
    assert "verdict: PROVISIONAL" in result.summary()
    assert "segments were held near where the taxonomy's prototypes put each need (prototype_weight 2)" in result.fallback


FALLBACK = CONFIG_DIR / "taxonomies" / "needs_from_behaviour.yaml"


def test_the_needs_fallback_holds_its_segments_at_the_needs_prototypes(warehouse):
    """Without surveys the default needs are read from their proxies, whose k-means centres
    wander where the accounts are dense (a long tail of service revenue pulls one out). The
    shipped fallback holds each segment that matches a need near where its prototype puts
    it (prototype_weight), segments key accounts with everyone against the same
    prototypes, and says both in the run's notes and key-account evidence."""
    prototypes = {s.id: s.prototype for s in load_taxonomy(FALLBACK).segments}
    with connect(warehouse) as con:
        con.execute("update marts.customer_features set is_surveyed = false")
        segment(con, AS_OF, load_taxonomy(CONFIG_DIR / "taxonomy.yaml"), CONFIG)
        run = con.execute("select verdict_reasons, key_account_mode, key_account_evidence from segments.segment_runs").fetchone()
        centres = con.execute("select taxonomy_id, centre from segments.segment_definitions where taxonomy_id is not null").fetchall()
    assert any("drawn towards the taxonomy prototypes they match" in r["text"] for r in json.loads(run[0]))
    assert run[1] == "nearest" and "drawn towards its prototypes" in json.loads(run[2])["why"]
    assert len(centres) >= 3
    for taxonomy_id, centre in centres:
        stored = json.loads(centre)
        at = dict(zip(stored["dimensions"], stored["values"], strict=True))
        gap = max(abs(at[d] - v) for d, v in prototypes[taxonomy_id].items())
        assert gap < 0.5, (taxonomy_id, gap)  # within half a standard deviation on every proxy


def test_needs_read_from_proxies_keep_the_clear_half_and_read_the_others_from_all_behaviour(warehouse, tmp_path):
    """A behaviour taxonomy whose proxies are noisy readings of the needs may say so
    (core_share 0.5): the customers most clearly in one cluster keep it, explained by the
    proxies; the classifier learned from them reads the rest from every behaviour signal,
    and says so in their drivers."""
    cored = tmp_path / "needs_core.yaml"
    cored.write_text(FALLBACK.read_text().replace("prototype_weight: 2", "core_share: 0.5"))
    with connect(warehouse) as con:
        segment(con, AS_OF, load_taxonomy(cored), CONFIG)
        rows = con.execute(
            """
            select a.account_id, a.segment_id, a.preferred_segment_id, a.drivers, a.behaviour_segment_id, max(p.probability) as cluster_p
            from segments.assignments as a
            join segments.assignment_probabilities as p using (run_id, account_id)
            group by all
            """
        ).df()
    kinds = rows["drivers"].map(lambda d: {x.get("kind") for x in json.loads(d)} - {None})
    from_proxies = kinds.map(lambda k: k == {"dimension"})
    # about half are explained by the proxies they were clustered on, the rest by the model
    assert 0.4 <= from_proxies.mean() <= 0.75, from_proxies.mean()
    assert kinds[~from_proxies].map(lambda k: "dimension" not in k).all()
    # the core is the confident half: its cluster probabilities are above everyone else's
    assert rows.loc[from_proxies, "cluster_p"].min() >= rows.loc[~from_proxies, "cluster_p"].median()
    # outside the core, the segment is the classifier's reading
    assert (rows.loc[~from_proxies, "segment_id"] == rows.loc[~from_proxies, "behaviour_segment_id"]).mean() > 0.9


BEHAVIOUR = """
name: revenue-and-buying
basis: behaviour
dimensions:
  - {name: declared_revenue, column: annual_revenue, transform: log1p}
  - {name: discount, column: discount_depth_12m}
  - {name: premium, column: premium_share_12m}
  - {name: regularity, column: order_regularity_12m}
  - {name: tickets, column: tickets_12m}
k: {min: 2, max: 4}
segments:
  - {id: bargain, name: Bargain hunters, prototype: {declared_revenue: 0, discount: 1.2, premium: -0.8, regularity: 0, tickets: 0}}
  - {id: premium, name: Premium buyers, prototype: {declared_revenue: 0, discount: -0.8, premium: 1.2, regularity: 0, tickets: 0}}
  - {id: steady, name: Steady buyers, prototype: {declared_revenue: 0, discount: 0, premium: 0, regularity: 1.2, tickets: 0}}
"""


def test_a_mostly_missing_dimension_is_left_out_and_never_a_driver(warehouse, tmp_path):
    path = tmp_path / "behaviour.yaml"
    path.write_text(BEHAVIOUR)
    with connect(warehouse) as con:
        # declared revenue known for 1 customer in 20; no customer has a ticket
        con.execute("update marts.customer_features set annual_revenue = null where hash(account_id) % 20 != 0")
        con.execute("update marts.customer_features set tickets_12m = 0")
        result = segment(con, AS_OF, load_taxonomy(path), CONFIG)
        verdict, reasons, missing = con.execute("select verdict, verdict_reasons, feature_missing from segments.segment_runs").fetchone()
        drivers = [json.loads(r[0]) for r in con.execute("select drivers from segments.assignments").fetchall()]
        centre = json.loads(con.execute("select centre from segments.segment_definitions limit 1").fetchone()[0])
    missing = json.loads(missing)
    assert missing["dimensions"]["declared_revenue"] > 0.9
    assert "more than the 30% allowed" in missing["left_out"]["declared_revenue"]
    assert missing["left_out"]["tickets"].startswith("no data: the same value (0)")
    assert centre["dimensions"] == ["discount", "premium", "regularity"]
    assert verdict == "provisional"
    assert {r["code"] for r in json.loads(reasons)} >= {"imputed", "dimensions_without_data"}
    cited = {d["dimension"] for ds in drivers for d in ds}
    assert cited and not cited & {"declared_revenue", "tickets"}
    assert all(d["value"] is not None for ds in drivers for d in ds)
    assert result.left_out.keys() == {"declared_revenue", "tickets"}


def test_respondents_left_out_are_counted_and_published_as_unusable(warehouse):
    with connect(warehouse) as con:
        unsurveyed = [
            r[0]
            for r in con.execute(
                "select account_id from marts.customer_features where status = 'customer' and not is_surveyed order by account_id limit 30"
            ).fetchall()
        ]
        con.execute(
            "update marts.customer_features set survey_straightlining_respondents = 2 where account_id in (select unnest(?))",
            [unsurveyed[:20]],
        )
        con.execute(
            "update marts.customer_features set survey_too_few_items_respondents = 1 where account_id in (select unnest(?))",
            [unsurveyed[15:]],
        )
        result = segment(con, AS_OF, load_taxonomy(CONFIG_DIR / "taxonomy.yaml"), CONFIG)
        run = con.execute("select excluded_respondents, survey_unusable_customers, verdict_reasons from segments.segment_runs").fetchone()
        status = dict(
            con.execute(
                "select survey_status, count(*) from segments.assignments where survey_status like 'unusable%' group by 1"
            ).fetchall()
        )
    assert json.loads(run[0]) == {"straight-lining": 40, "too few items": 15}
    assert run[1] == 30
    assert status == {"unusable: straight-lining": 15, "unusable: straight-lining, too few items": 5, "unusable: too few items": 10}
    assert "40 for straight-lining" in result.survey and "30 customer(s) answered" in result.survey
    assert "respondents_excluded" in {r["code"] for r in json.loads(run[2])}


def test_a_withheld_run_does_not_replace_the_published_one_unless_configured(cycled_small_world, warehouse, tmp_path):
    # no segment can be that stable: every run is withheld for stability
    strict = {
        **CONFIG,
        "segmentation": {
            **CONFIG["segmentation"],
            "min_stability": 1.01,
            "verdict": {**CONFIG["segmentation"]["verdict"], "withhold_stability": 1.01},
        },
    }
    taxonomy = load_taxonomy(CONFIG_DIR / "taxonomy.yaml")
    # with earlier published runs (the cycled world's): stored, withheld, not published
    settings, _ = cycled_small_world
    earlier = warehouse_copy(settings.warehouse_path, tmp_path / "with-runs.duckdb")
    with connect(earlier) as con:
        result = segment(con, AS_OF, taxonomy, strict)
        withheld = con.execute("select verdict, published from segments.segment_runs where run_id = ?", [result.run_id]).fetchone()
        published_before = con.execute("select count(*) from segments.segment_runs where published is not false").fetchone()[0]
    assert withheld == ("withheld", False) and published_before >= 1
    assert "NOT published" in result.summary()
    # the first run ever is published even when withheld (there is nothing else to serve)
    with connect(warehouse) as con:
        first = segment(con, AS_OF, taxonomy, strict)
        row = con.execute("select verdict, published, verdict_reasons from segments.segment_runs").fetchone()
    assert row[:2] == ("withheld", True) and "first_published" in row[2]
    # publish_withheld: true replaces the published run whatever the verdict
    lenient = {
        **strict,
        "segmentation": {**strict["segmentation"], "verdict": {**strict["segmentation"]["verdict"], "publish_withheld": True}},
    }
    with connect(earlier) as con:
        segment(con, AS_OF, taxonomy, lenient)
        assert con.execute("select published from segments.segment_runs where run_id = ?", [first.run_id]).fetchone()[0] is True


def test_an_account_crossing_the_key_tier_cut_once_keeps_its_tier_until_the_cut_confirms_it(warehouse, tmp_path):
    """Key-tier hysteresis on behaviour-only data, read from the warehouse run to run: an
    account the 80/20 cut moves across it in one run keeps its tier (the cut's own tier is
    still published, as value_tier); when the next run's cut says the same, it moves."""
    taxonomy_path = tmp_path / "behaviour.yaml"
    taxonomy_path.write_text(BEHAVIOUR)
    taxonomy = load_taxonomy(taxonomy_path)
    runs = int(CONFIG["segmentation"]["key_tier_switch_runs"])  # 3 by default
    assert runs >= 2
    months = [(pd.Period(AS_OF, "M") + n).end_time.date() for n in range(runs + 1)]
    with connect(warehouse) as con:
        key, mid = (
            con.execute(
                f"select account_id from marts.customer_features where value_tier = '{tier}' order by account_id limit 1"
            ).fetchone()[0]
            for tier in ("key", "mid")
        )
        tiers = []
        for n, as_of in enumerate(months):
            if n:  # the next months: the cut puts the two accounts on the other side
                con.execute("update marts.customer_features set as_of = ?", [as_of])
                con.execute(
                    "update marts.customer_features set value_tier = case account_id when ? then 'mid' else 'key' end where account_id in (?, ?)",
                    [key, key, mid],
                )
            result = segment(con, as_of, taxonomy, CONFIG)
            tiers.append(
                dict(
                    con.execute(
                        "select account_id, is_key_account from segments.assignments where run_id = ? and account_id in (?, ?)",
                        [result.run_id, key, mid],
                    ).fetchall()
                )
            )
        reasons = con.execute("select verdict_reasons from segments.segment_runs where as_of = ?", [months[1]]).fetchone()[0]
    assert tiers[0] == {key: True, mid: False}
    # the cut said so in fewer than `runs` consecutive runs: kept
    assert tiers[1:runs] == [{key: True, mid: False}] * (runs - 1)
    assert tiers[runs] == {key: False, mid: True}  # in `runs` consecutive runs: moved
    assert "kept their previous side of the key-tier cut" in reasons
