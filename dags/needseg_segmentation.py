"""
### needseg · segmentation

Re-assigns every customer's needs segment as of the run's date and publishes the result:

1. **features** — `customer_features` built with dbt for this run's date, as one task (the
   features DAG, triggered by every ingest, shows the same models one task each;
   segmentation needs them as of its own date);
2. **segment** — cluster surveyed accounts on their needs (k chosen from the data within
   the taxonomy's bounds, with the evidence stored in `segment_runs`), align the segments
   to the previous run's so names stay put, infer everyone else from behaviour, predict
   prospects, find key-account lookalikes;
3. **drift** — migrations, early warnings (buying mix moving towards price-sensitivity or
   away from partnership before the segment changed), population changes between runs,
   churn-risk scores and alert episodes;
4. **serving models** — the published marts, built and tested with dbt (one task);
5. **publish** — a new serving database swapped in with one rename, Parquet exports.

**Schedule**: monthly by default (`NEEDSEG_SEGMENTATION_SCHEDULE`), independent of
ingestion. **Uses**: `needseg_customer_features`. **Produces**: `needseg_segments`, which
triggers `needseg_alerts`.
"""

from airflow.sdk import dag

from pipelines.airflow import support as af
from pipelines import cycle

ASSETS = af.assets()


@dag(**af.dag_arguments("needseg_segmentation", af.schedule("NEEDSEG_SEGMENTATION_SCHEDULE", "0 3 1 * *"), __doc__, ["segmentation"]))
def needseg_segmentation():
    @af.step()
    def resolve_as_of(**context):
        """The date this segmentation describes."""
        return af.resolve_as_of(context).isoformat()

    @af.step(pool=af.WAREHOUSE_POOL, inlets=[ASSETS["features"]])
    def segment_customers(as_of: str):
        """Fit or assign segments, align identities, infer, explain; store the run."""
        return cycle.segment_step(cycle.parse_date(as_of))

    @af.step(pool=af.WAREHOUSE_POOL)
    def detect_drift(as_of: str):
        """Migrations, early warnings, population changes, churn-risk alerts."""
        return cycle.drift_step(cycle.parse_date(as_of))

    @af.step(pool=af.WAREHOUSE_POOL, outlets=[ASSETS["segments"]])
    def publish_serving_database(as_of: str, *, outlet_events=None):
        """Swap in the new serving database and Parquet exports."""
        summary = cycle.publish_step(cycle.parse_date(as_of))
        outlet_events[ASSETS["segments"]].extra = {"as_of": as_of, "run_id": summary["run_id"]}
        return summary

    as_of = resolve_as_of()
    features = af.dbt_build_task("build_features", "tag:features")
    serving = af.dbt_build_task("build_serving_models", "tag:serving")
    segmented = segment_customers(as_of)
    drifted = detect_drift(as_of)
    as_of >> features >> segmented >> drifted >> serving >> publish_serving_database(as_of)


needseg_segmentation()
