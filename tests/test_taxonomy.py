"""Taxonomies are configuration: another company's segments (names, dimensions, count)
come out of the same code, a cluster no prototype describes is called emerging, and
identities survive reordering and re-runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.segmentation.clustering import PreviousSegment, resolve_identities
from pipelines.segmentation.run import segment
from pipelines.segmentation.taxonomy import load_taxonomy
from pipelines.settings import CONFIG_DIR
from pipelines.warehouse import connect
from tests.conftest import warehouse_copy

AS_OF = dt.date(2026, 10, 31)

THREE_SEGMENTS = """
name: acme-buying-styles
version: 3
basis: survey
dimensions: [price, service, quality, partnership]
k: {min: 3, max: 3}
roles: {price_sensitive: cost_cutters}
segments:
  - id: cost_cutters
    name: Cost cutters
    prototype: {price: 4.8, service: 2.5, quality: 2.6, partnership: 2.0}
    playbook: {offer: Price list, serve: Web shop, action: Send the price list}
  - id: uptime_buyers
    name: Uptime buyers
    prototype: {price: 2.6, service: 4.7, quality: 3.3, partnership: 3.0}
    playbook: {offer: SLA, serve: Hotline, action: Offer an SLA}
  - id: partners
    name: Partners
    prototype: {price: 2.6, service: 3.4, quality: 3.7, partnership: 4.8}
    playbook: {offer: Framework deal, serve: Account team, action: Book a review}
"""


def _warehouse_copy(cycled_small_world, tmp_path: Path) -> Path:
    settings, _ = cycled_small_world
    target = tmp_path / "warehouse.duckdb"
    warehouse_copy(settings.warehouse_path, target)
    with connect(target) as con:
        for table in (
            "segment_runs",
            "segment_definitions",
            "assignments",
            "assignment_probabilities",
            "profiles",
            "prospect_predictions",
            "lookalikes",
        ):
            con.execute(f"delete from segments.{table}")
    return target


def test_another_companys_taxonomy_names_the_segments(cycled_small_world, tmp_path):
    path = tmp_path / "acme.yaml"
    path.write_text(THREE_SEGMENTS)
    taxonomy = load_taxonomy(path)
    with connect(_warehouse_copy(cycled_small_world, tmp_path)) as con:
        result = segment(con, AS_OF, taxonomy, load_config(CONFIG_DIR / "needseg.yaml"))
        names = {r[0] for r in con.execute("select distinct segment_name from segments.assignments").fetchall()}
        centre = con.execute("select centre from segments.segment_definitions limit 1").fetchone()[0]
        run = con.execute("select taxonomy, k from segments.segment_runs").fetchone()
    assert result.k == 3 and run == ("acme-buying-styles v3", 3)
    assert names == {"Cost cutters", "Uptime buyers", "Partners"}
    assert '"dimensions": ["price", "service", "quality", "partnership"]' in centre


def test_a_cluster_the_taxonomy_does_not_describe_is_published_as_emerging(cycled_small_world, tmp_path):
    # the default taxonomy with only its price and service segments, three clusters: the
    # quality- and partnership-minded customers form a group no prototype describes
    text = (CONFIG_DIR / "taxonomy.yaml").read_text()
    text = text[: text.index("  - id: quality_brand")].replace("k: {min: 3, max: 5}", "k: {min: 3, max: 3}")
    text = text.replace("  partnership: loyalty_partnership\n", "")
    path = tmp_path / "two.yaml"
    path.write_text(text)
    with connect(_warehouse_copy(cycled_small_world, tmp_path)) as con:
        result = segment(con, AS_OF, load_taxonomy(path), load_config(CONFIG_DIR / "needseg.yaml"))
        rows = con.execute(
            "select segment_id, segment_name, is_emerging, offer, action from segments.segment_definitions order by segment_id"
        ).fetchall()
    assert result.k == 3
    named = {r[1] for r in rows if not r[2]}
    emerging = [r for r in rows if r[2]]
    assert named == {"Price-focused", "Service-focused"}
    assert len(emerging) == 1
    segment_id, name, _, offer, action = emerging[0]
    assert segment_id == "emerging_1" and name.startswith("Emerging: ")
    assert offer is None and "Review what these accounts have in common" in action  # no playbook is invented


def test_identities_do_not_depend_on_cluster_order_and_follow_the_previous_run():
    taxonomy = load_taxonomy(CONFIG_DIR / "taxonomy.yaml")
    protos = taxonomy.prototype_matrix()
    rng = np.random.default_rng(0)
    centres = protos + rng.normal(0, 0.05, protos.shape)
    ids = [i.segment_id for i in resolve_identities(centres, taxonomy, [])]
    shuffled = [i.segment_id for i in resolve_identities(centres[::-1], taxonomy, [])]
    assert ids == [s.id for s in taxonomy.segments] and shuffled == ids[::-1]
    # an emerging segment keeps its id from one run to the next
    odd = np.array([[0, 0, 0, 0, 0, 2.0, -2.0]])
    first = resolve_identities(np.vstack([centres, odd]), taxonomy, [])
    previous = [PreviousSegment(i.segment_id, i.name, i.taxonomy_id, c) for i, c in zip(first, np.vstack([centres, odd]), strict=True)]
    second = resolve_identities(np.vstack([odd + 0.01, centres]), taxonomy, previous)
    assert second[0].segment_id == first[-1].segment_id == "emerging_1" and second[0].aligned_from == "emerging_1"


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (
            "prototype: {price: 4.8, service: 2.5, quality: 2.6, partnership: 2.0}",
            "prototype must give every dimension once; missing partnership",
        ),
        ("dimensions: [price, service, quality, partnership]", "is not a survey item"),
        ("k: {min: 3, max: 3}", "k must satisfy 2 <= min <= max"),
    ],
)
def test_a_broken_taxonomy_is_refused_naming_file_and_problem(tmp_path, broken, message):
    fixes = {
        "prototype: {price: 4.8, service: 2.5, quality: 2.6, partnership: 2.0}": "prototype: {price: 4.8, service: 2.5, quality: 2.6}",
        "dimensions: [price, service, quality, partnership]": "dimensions: [price, service, quality, partnership, colour]",
        "k: {min: 3, max: 3}": "k: {min: 4, max: 3}",
    }
    path = tmp_path / "broken.yaml"
    path.write_text(THREE_SEGMENTS.replace(broken, fixes[broken], 1))
    with pytest.raises(ConfigError) as error:
        load_taxonomy(path)
    assert str(path) in str(error.value) and message in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("basis: behaviour\ncore_share: 2", "core_share must be a share between 0.1 and 1, not 2"),
        ("basis: behaviour\ncore_share: half", "core_share must be a share between 0.1 and 1, not 'half'"),
        ("basis: behaviour\nprototype_weight: 0", "prototype_weight must be a number above 0"),
        (
            "basis: behaviour\nprototype_weight: strong",
            "prototype_weight must be a number above 0 (times the clustered accounts; 1000 at most), not 'strong'",
        ),
    ],
)
def test_core_share_and_prototype_weight_are_refused_where_they_mean_nothing(tmp_path, text, message):
    path = tmp_path / "core.yaml"
    path.write_text(
        text
        + "\ndimensions: [{name: price, column: discount_depth_12m}, {name: tenure, column: tenure_months}]\n"
        + "segments:\n  - {id: a, name: A, prototype: {price: 1, tenure: 0}}\n  - {id: b, name: B, prototype: {price: 0, tenure: 1}}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_taxonomy(path)
    assert str(path) in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("option", ["core_share: 0.5", "prototype_weight: 2"])
def test_behaviour_only_options_are_refused_on_a_survey_taxonomy(tmp_path, option):
    path = tmp_path / "survey.yaml"
    path.write_text(THREE_SEGMENTS + f"\n{option}\n")
    with pytest.raises(ConfigError, match=f"{option.split(':')[0]} applies to behaviour taxonomies only"):
        load_taxonomy(path)


def test_the_shipped_needs_fallback_holds_its_segments_at_the_needs_prototypes():
    fallback = load_taxonomy(CONFIG_DIR / "taxonomies" / "needs_from_behaviour.yaml")
    assert fallback.prototype_weight == 2 and fallback.core_share is None
    retail = load_taxonomy(CONFIG_DIR / "taxonomies" / "online_retail_engagement.yaml")
    assert retail.core_share is None and retail.prototype_weight is None
