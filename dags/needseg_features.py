"""
### needseg · features

Builds the customer features with dbt (staging → intermediate → `marts.customer_features`,
tests after each model), one Airflow task per dbt model through astronomer-cosmos. Runs
whenever ingestion has loaded new data, as of the ingest run's date.

**Schedule**: on the `needseg_raw` asset. **Produces**: `needseg_customer_features`.
"""

from airflow.sdk import dag

from pipelines.airflow import support as af

ASSETS = af.assets()


@dag(**af.dag_arguments("needseg_features", [ASSETS["raw"]], __doc__, ["dbt", "features"]))
def needseg_features():
    @af.step()
    def resolve_as_of(**context):
        """The date these features describe."""
        return af.resolve_as_of(context).isoformat()

    @af.step(outlets=[ASSETS["features"]])
    def features_ready(as_of: str, *, outlet_events=None):
        """Announce the new features to whoever consumes them."""
        outlet_events[ASSETS["features"]].extra = {"as_of": as_of}
        return as_of

    as_of = resolve_as_of()
    build = af.dbt_task_group("build_features", "tag:features")
    as_of >> build >> features_ready(as_of)


needseg_features()
