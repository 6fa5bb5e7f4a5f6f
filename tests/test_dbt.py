"""The dbt project on its own: its unit tests (the tricky SQL against fixed rows) and its
documentation (every column of every staging, intermediate and features model described).

Pipeline runs leave dbt's unit tests out (pipelines/transform.py); they run here. dbt reads
the column types of a unit test's inputs from the warehouse, so the models are first built
empty (`dbt run --empty`) on a fresh warehouse with needseg's raw and step tables.
"""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pytest

from pipelines import transform
from pipelines.config import load_config
from pipelines.settings import load_settings
from pipelines.warehouse import connect, open_warehouse

# Everything below the published serving marts (those carry contracts of their own).
DOCUMENTED = ("models/staging/", "models/intermediate/", "models/marts/features/")
SELECT = " ".join(f"path:{folder.rstrip('/')}" for folder in DOCUMENTED)
AS_OF = dt.date(2026, 10, 31)

# The SQL whose logic a reader could get wrong; each has at least one dbt unit test.
UNIT_TESTED_MODELS = {
    "stg_crm__order_lines",  # the incremental build: only new loads, the latest of a re-sent line
    "stg_crm__quotes",  # the same, for quotes
    "stg_crm__support_tickets",  # and tickets
    "stg_survey__survey_responses",  # and survey responses
    "int_category_price_months",  # the incremental digest of list prices: which months a build recomputes
    "int_account_ticket_behaviour",  # the comparison windows and their edges
    "int_account_order_behaviour",  # run-rate revenue trend, regularity, weighted discount depth
    "int_account_months",  # the incremental monthly sums: which months a build recomputes
    "int_account_order_days",  # the churn history's per-day figures: which months a build recomputes
    "customer_category_mix",  # exact shares, from the lines and from the monthly sums
    "int_product_categories",  # premium / service inference; exact medians from the monthly digest
    "int_survey_needs",  # normalisation, straight-liners, the latest usable wave
    "int_account_value_tiers",  # 80/20 tiers, revenue shares per window
    "customer_features",  # tickets per order across windows
}


@pytest.fixture(scope="module")
def empty_project(tmp_path_factory):
    settings = load_settings(tmp_path_factory.mktemp("dbt") / "data")
    config = load_config(settings.config_path)
    with open_warehouse(settings.warehouse_path):  # needseg's own tables, as dbt's sources expect them
        pass
    transform.build(settings, config, AS_OF, SELECT, command="run", flags=("--empty",))
    manifest = json.loads(transform.ensure_manifest().read_text())
    return settings, config, manifest


def test_dbt_unit_tests_pass(empty_project):
    settings, config, manifest = empty_project
    defined = [n for n in manifest["unit_tests"].values() if n["package_name"] == "needseg"]
    assert {n["model"] for n in defined} >= UNIT_TESTED_MODELS
    try:
        result = transform.build(settings, config, AS_OF, "test_type:unit", command="test", unit_tests=True)
    except transform.DbtFailed as exc:
        failed = str(exc)  # dbt's diff of actual against expected rows, per failing unit test
    else:
        failed = ""
    assert not failed, failed
    assert result.nodes == len(defined)


def test_pipeline_runs_leave_unit_tests_out(empty_project):
    settings, config, _ = empty_project
    result = transform.build(settings, config, AS_OF, "int_product_categories", command="test")
    assert result.nodes > 0  # its data tests ran
    with_units = transform.build(settings, config, AS_OF, "int_product_categories", command="test", unit_tests=True)
    assert with_units.nodes > result.nodes


def test_a_build_leaves_no_database_open_in_this_process(empty_project):
    """dbt runs in-process; once a build returns, its DuckDB database is closed, so its buffer
    pool is not carried into the steps that follow and the file opens with any configuration
    (DuckDB refuses a read-only connection while the same process holds it read-write)."""
    settings, config, _ = empty_project
    transform.build(settings, config, AS_OF, "int_product_categories", command="run")
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        assert con.execute("select count(*) from information_schema.tables where table_name = 'int_product_categories'").fetchone()[0] == 1
    finally:
        con.close()


def test_every_column_of_every_model_below_the_serving_marts_is_documented(empty_project):
    settings, _, manifest = empty_project
    models = [n for n in manifest["nodes"].values() if n["resource_type"] == "model" and n["original_file_path"].startswith(DOCUMENTED)]
    assert len(models) >= 20
    with connect(settings.warehouse_path, read_only=True) as con:
        built = con.execute("select schema_name, table_name, column_name from duckdb_columns()").fetchall()
    columns: dict[tuple[str, str], list[str]] = {}
    for schema, table, column in built:
        columns.setdefault((schema, table), []).append(column)
    problems = []
    for model in models:
        actual = columns.get((model["schema"], model["alias"]))
        if actual is None:
            problems.append(f"{model['name']}: not built")
            continue
        documented = {name for name, c in model["columns"].items() if c["description"].strip()}
        where = model["patch_path"].split("://")[-1] if model["patch_path"] else "no YAML"
        if not model["description"].strip():
            problems.append(f"{model['name']}: no description ({where})")
        if missing := [c for c in actual if c not in documented]:
            problems.append(f"{model['name']}: undocumented in {where}: {', '.join(missing)}")
        if stale := sorted(set(model["columns"]) - set(actual)):
            problems.append(f"{model['name']}: documented in {where} but not produced: {', '.join(stale)}")
    assert not problems, "\n".join(problems)


def test_feature_marts_enforce_contracts_and_test_every_column(empty_project):
    """Every column of a features mart has a data type and a data test or a constraint (the
    contract enforces not_null and check constraints as the table is built, at no test's cost)."""
    _, _, manifest = empty_project
    tested: dict[str, set[str]] = {}
    for node in manifest["nodes"].values():
        if node["resource_type"] == "test" and node.get("attached_node") and node.get("column_name"):
            tested.setdefault(node["attached_node"], set()).add(node["column_name"])
    marts = [
        n
        for n in manifest["nodes"].values()
        if n["resource_type"] == "model" and n["original_file_path"].startswith("models/marts/features/")
    ]
    assert {m["name"] for m in marts} >= {"customer_features", "customer_category_mix", "customer_monthly_behaviour"}
    for mart in marts:
        assert mart["contract"]["enforced"], mart["name"]
        untested = [
            c
            for c, spec in mart["columns"].items()
            if (c not in tested.get(mart["unique_id"], set()) and not spec.get("constraints")) or not spec.get("data_type")
        ]
        assert not untested, f"{mart['name']}: columns without a data type or a data test: {', '.join(untested)}"


def test_a_new_as_of_date_reaches_the_models_without_dbt_parsing_the_whole_project_again(empty_project):
    """The as-of date changes every run. It reaches dbt as an environment variable, so dbt
    keeps its saved parse and parses again only the models that read the date; as a dbt var
    it would make dbt parse the whole project on every run (docs/scale.md)."""
    settings, config, _ = empty_project
    log = transform.target_dir(settings) / "logs" / "dbt.log"
    seen = len(log.read_text(encoding="utf-8"))
    transform.build(settings, config, dt.date(2026, 9, 30), "int_accounts", command="run", flags=("--empty",))
    parse = log.read_text(encoding="utf-8")[seen:]
    assert "Unable to do partial parsing" not in parse
    assert "Partial parsing: updated file: needseg://models/intermediate/customers/int_accounts.sql" in parse
    ran = next((transform.target_dir(settings) / "target" / "run").rglob("int_accounts.sql")).read_text(encoding="utf-8")
    assert "2026-09-30" in ran and "2026-10-31" not in ran
