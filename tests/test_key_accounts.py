"""The 80/20 rule: key accounts are segmented on their own when the key tier is large
enough, because their profile differs from the long tail, and each still gets a needs
segment; otherwise they are segmented with everyone else and segment_runs says why.

The world here is the small world's warehouse with a key tier whose needs differ from the
tail's: no price-focused accounts among them, and a group (brand and delivery first) that
no prototype of the taxonomy describes."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from pipelines.config import load_config
from pipelines.contract import NEEDS_ITEMS
from pipelines.segmentation.run import segment
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import CONFIG_DIR
from pipelines.warehouse import connect
from tests.conftest import warehouse_copy

AS_OF = dt.date(2026, 10, 31)
KEY_TIER = 150
# needs on the 1-5 scale over price, quality, brand, service, delivery, reliability, partnership
KEY_GROUPS = {
    "loyalty_partnership": [2.6, 3.6, 3.0, 3.5, 3.2, 3.8, 4.7],
    "quality_brand": [2.4, 4.6, 4.4, 3.4, 3.0, 3.7, 2.8],
    "brand_delivery": [2.0, 2.5, 4.6, 2.2, 4.6, 2.5, 2.0],
}


def _plant_key_tier(con, like_the_tail: bool = False) -> pd.Series:
    """Make the KEY_TIER largest customers the key tier, about two thirds of them surveyed with
    needs drawn around KEY_GROUPS (normalised per respondent, as the survey model does) -
    or, `like_the_tail`, with needs of surveyed customers outside it, drawn at random."""
    customers = con.execute(
        "select account_id from marts.customer_features where status = 'customer' order by revenue_12m desc, account_id"
    ).df()["account_id"]
    key = customers.iloc[:KEY_TIER].sort_values().reset_index(drop=True)
    rng = np.random.default_rng(3)
    groups = pd.Series([list(KEY_GROUPS)[i % 3] for i in range(len(key))], index=key)
    answers = np.array([KEY_GROUPS[g] for g in groups]) + rng.normal(0, 0.35, (len(key), len(NEEDS_ITEMS)))
    needs = (answers - answers.mean(axis=1, keepdims=True)) / np.maximum(answers.std(axis=1, keepdims=True), 0.5)
    if like_the_tail:
        columns = ", ".join(f"need_{i}" for i in NEEDS_ITEMS)
        tail = con.execute(
            f"select {columns} from marts.customer_features where status = 'customer' and is_surveyed and account_id not in "
            f"(select unnest(?::varchar[])) order by account_id",
            [list(key)],
        ).fetchnumpy()
        tail = np.column_stack([tail[f"need_{i}"] for i in NEEDS_ITEMS])
        needs = tail[rng.integers(0, len(tail), len(key))]
    planted = pd.DataFrame(needs, columns=[f"need_{i}" for i in NEEDS_ITEMS])
    planted.insert(0, "account_id", key.to_numpy())
    planted["surveyed"] = (np.arange(len(key)) // 3) % 3 != 2  # two of three in every group
    for c in planted.columns[1:-1]:
        planted.loc[~planted["surveyed"], c] = np.nan
    con.register("planted", planted)
    con.execute("update marts.customer_features set value_tier = 'mid' where value_tier = 'key'")
    sets = ", ".join(f"{c} = planted.{c}" for c in planted.columns[1:-1])
    con.execute(
        f"update marts.customer_features as f set value_tier = 'key', is_surveyed = planted.surveyed, {sets} "
        "from planted where f.account_id = planted.account_id"
    )
    return groups


@pytest.fixture(scope="module")
def key_tier_run(cycled_small_world, tmp_path_factory):
    settings, _ = cycled_small_world
    target = tmp_path_factory.mktemp("key-tier") / "warehouse.duckdb"
    warehouse_copy(settings.warehouse_path, target)
    with connect(target) as con:
        groups = _plant_key_tier(con)
        result = segment(con, AS_OF, load_taxonomy(CONFIG_DIR / "taxonomy.yaml"), load_config(CONFIG_DIR / "needseg.yaml"))
        run = con.execute(
            "select key_account_mode, key_account_evidence, customers from segments.segment_runs where run_id = ?", [result.run_id]
        ).fetchone()
        definitions = con.execute(
            "select population, segment_id, segment_name, is_emerging, size, fitted, jaccard from segments.segment_definitions where run_id = ?",
            [result.run_id],
        ).df()
        assignments = (
            con.execute(
                "select account_id, segment_id, segment_name, segment_source, is_key_account from segments.assignments where run_id = ?",
                [result.run_id],
            )
            .df()
            .set_index("account_id")
        )
    return groups, run, definitions, assignments


def test_a_large_key_tier_is_segmented_on_its_own_with_evidence(key_tier_run):
    _, (mode, evidence, _), definitions, _ = key_tier_run
    evidence = json.loads(evidence)
    assert mode == "separate", evidence
    assert evidence["key_accounts"] == KEY_TIER and evidence["key_accounts_profiled"] == 102
    # its own k, within the taxonomy's bounds, chosen with the same evidence as the main run
    assert evidence["k"] == 3 and [c["k"] for c in evidence["k_evidence"]] == [3, 4, 5]
    assert min(evidence["jaccard"]) >= 0.75 and sum(evidence["sizes"]) == 102
    # its profile differs from the other customers': its own segments describe it far better
    assert evidence["held_out_distance"]["gain_by_k"]["3"] >= 0.5
    assert "their profile differs from the other customers'" in evidence["why"] and "segmented on their own" in evidence["why"]
    key = definitions[definitions["population"] == "key"]
    assert sorted(key["fitted"]) == sorted(evidence["sizes"]) and (key["jaccard"] >= 0.75).all()


def test_each_key_segment_is_a_needs_segment_named_by_prototype_or_emerging(key_tier_run):
    groups, _, definitions, assignments = key_tier_run
    key = definitions[definitions["population"] == "key"].set_index("segment_id")
    named = set(key.loc[~key["is_emerging"], "segment_name"])
    assert named == {"Loyalty & partnership", "Quality & brand"}
    emerging = key[key["is_emerging"]]
    assert list(emerging.index) == ["key_emerging_1"]
    # named after what sets it apart from the other key segments, not after its two largest needs
    name = emerging["segment_name"].iloc[0]
    assert name.startswith("Emerging among key accounts: high ") and ("high delivery" in name or "high brand" in name)
    # the surveyed key accounts are found again as planted
    surveyed = assignments[assignments["is_key_account"] & assignments["segment_source"].eq("surveyed")]
    assert adjusted_rand_score(groups.loc[surveyed.index], surveyed["segment_id"]) >= 0.9


def test_every_key_account_has_a_needs_segment_of_the_key_tier_and_sizes_add_up(key_tier_run):
    _, (_, _, customers), definitions, assignments = key_tier_run
    key_ids = set(definitions.loc[definitions["population"] == "key", "segment_id"])
    main_ids = set(definitions.loc[definitions["population"] == "all", "segment_id"])
    key_accounts = assignments[assignments["is_key_account"]]
    assert len(key_accounts) == KEY_TIER and set(key_accounts["segment_id"]) <= key_ids
    assert key_accounts["segment_source"].eq("inferred").sum() == 48  # the unsurveyed ones, inferred into key segments
    # an account outside the key tier is never put in a segment only the key tier has
    assert set(assignments.loc[~assignments["is_key_account"], "segment_id"]) <= main_ids
    # sizes are the published assignments per population: every customer counted once
    assert definitions["size"].sum() == customers == len(assignments)
    for row in definitions.itertuples():
        members = assignments[assignments["is_key_account"].eq(row.population == "key") & assignments["segment_id"].eq(row.segment_id)]
        assert row.size == len(members), row
    # one id, one name: a segment id shared by both populations is the same needs segment
    names = definitions.groupby("segment_id")["segment_name"].nunique()
    assert (names == 1).all(), names


def test_a_large_key_tier_like_the_others_is_segmented_with_everyone(cycled_small_world, tmp_path):
    settings, _ = cycled_small_world
    target = tmp_path / "warehouse.duckdb"
    warehouse_copy(settings.warehouse_path, target)
    with connect(target) as con:
        _plant_key_tier(con, like_the_tail=True)
        result = segment(con, AS_OF, load_taxonomy(CONFIG_DIR / "taxonomy.yaml"), load_config(CONFIG_DIR / "needseg.yaml"))
        mode, evidence = con.execute(
            "select key_account_mode, key_account_evidence from segments.segment_runs where run_id = ?", [result.run_id]
        ).fetchone()
        populations = {
            r[0]
            for r in con.execute(
                "select distinct population from segments.segment_definitions where run_id = ?", [result.run_id]
            ).fetchall()
        }
    evidence = json.loads(evidence)
    assert mode == "nearest" and populations == {"all"}
    assert evidence["key_accounts_profiled"] == 102 and "does not differ enough from the other customers'" in evidence["why"]
    # at the k its own segments would have, they describe key accounts no better than the others' do
    gain = evidence["held_out_distance"]["gain_by_k"]
    assert gain[str(evidence["k"])] < 0.1 if "k" in evidence else max(gain.values()) < 0.1


def test_a_small_key_tier_is_segmented_with_everyone_and_the_run_says_why(cycled_small_world):
    settings, _ = cycled_small_world
    with connect(settings.warehouse_path, read_only=True) as con:
        mode, evidence = con.execute(
            "select key_account_mode, key_account_evidence from segments.segment_runs where run_id = 'seg-2026-10-31'"
        ).fetchone()
        populations = {
            r[0]
            for r in con.execute("select distinct population from segments.segment_definitions where run_id = 'seg-2026-10-31'").fetchall()
        }
    evidence = json.loads(evidence)
    assert mode == "nearest" and populations == {"all"}
    assert evidence["key_accounts_profiled"] < evidence["profiled_needed"]
    assert f"at least {evidence['profiled_needed']} are needed" in evidence["why"]
