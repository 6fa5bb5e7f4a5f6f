"""A consumption-based taxonomy on real data: the UCI Wholesale customers (440 clients,
annual spend per product category), loaded through a mapping only, segmented by what they
buy. Skipped without ../shared."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from pipelines import cycle
from pipelines.settings import CONFIG_DIR, load_settings
from pipelines.warehouse import connect
from tests.conftest import shared_data

AS_OF = dt.date(2011, 12, 31)


@pytest.fixture(scope="module")
def wholesale(session_dir):
    csv = shared_data("uci_wholesale_customers", "Wholesale customers data.csv")
    settings = load_settings(session_dir / "wholesale")
    mappings = settings.data_dir / "mappings"
    mappings.mkdir(parents=True)
    shutil.copy(CONFIG_DIR / "sources" / "examples" / "wholesale_customers.yaml", mappings / "wholesale.yaml")
    landing = settings.landing_dir / "wholesale" / "order_lines"
    landing.mkdir(parents=True)
    shutil.copy(csv, landing / "wholesale_customers.csv")
    settings = settings.with_overrides(mappings_dir=mappings, taxonomy_path=CONFIG_DIR / "taxonomies" / "wholesale_consumption.yaml")
    ingested = cycle.ingest_step(AS_OF, settings)
    cycle.features_step(AS_OF, settings)
    segmented = cycle.segment_step(AS_OF, settings)
    return settings, ingested, segmented


def test_every_client_loads_with_its_spend_per_category(wholesale):
    settings, ingested, _ = wholesale
    assert ingested["rows_quarantined"] == 0
    with connect(settings.warehouse_path, read_only=True) as con:
        assert con.execute("select count(*) from raw.accounts").fetchone()[0] == 440
        spend = con.execute("select sum(net_price) from raw.order_lines where product_category = 'Fresh'").fetchone()[0]
        assert float(spend) == 5_280_131  # the Fresh column's total in the export


def test_three_to_five_stable_segments_that_follow_the_sales_channel(wholesale):
    settings, _, segmented = wholesale
    assert 3 <= segmented["k"] <= 5
    with connect(settings.warehouse_path, read_only=True) as con:
        run = con.execute("select k, min_jaccard, k_evidence, basis from segments.segment_runs").fetchone()
        definitions = con.execute(
            "select segment_name, jaccard, size from segments.segment_definitions where population = 'all'"
        ).fetchall()
        labels = con.execute(
            "select a.segment_id, f.industry from segments.assignments a join marts.customer_features f using (account_id)"
        ).fetchall()
    assert run[3] == "behaviour" and run[2]
    # stability is reported for every segment, and every segment is stable
    assert len(definitions) == run[0] and all(j is not None and j >= 0.75 for _, j, _ in definitions)
    names = {name for name, _, _ in definitions}
    assert {"Fresh & frozen kitchens", "Grocery & household retail"} <= names

    # what clients buy lines up with who they are: the kitchens are mostly hotels,
    # restaurants and cafés, the grocery buyers mostly retailers
    def share(segment, industry):
        members = [i for s, i in labels if s == segment]
        return sum(i == industry for i in members) / len(members)

    assert share("fresh_kitchen", "Horeca") >= 0.8
    assert share("grocery_retail", "Retail") >= 0.65
