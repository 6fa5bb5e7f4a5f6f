"""
### needseg · ingest

Loads new landing files (`<landing>/<source>/<table>/<file>`) into the raw tables of the
working warehouse. Every batch passes the great_expectations quality gate first: rows that
fail go to `meta.quarantine` with file, line, column and reason; a batch that fails as a
whole (unreadable, empty, missing column) is refused and this run fails with a message
naming the file and the expectation, so nothing downstream is published.

Files already loaded are skipped by checksum; a file changed after loading is reported,
not appended. Every row read ends up in raw or quarantine (`meta.batches` counts both).

**Schedule**: daily (`NEEDSEG_INGEST_SCHEDULE`). **Produces**: the `needseg_raw` asset,
with the run's as-of date, which triggers `needseg_features`.
"""

from airflow.sdk import dag, task

from pipelines import airflow_support as af
from pipelines import cycle

ASSETS = af.assets()


@dag(**af.dag_arguments("needseg_ingest", af.schedule("NEEDSEG_INGEST_SCHEDULE", "@daily"), __doc__, ["ingest"]))
def needseg_ingest():
    @task(pool=af.WAREHOUSE_POOL, outlets=[ASSETS["raw"]])
    def ingest_landing_files(*, outlet_events=None, **context):
        """Read, map, type and gate every new landing file; load the good rows to raw."""
        as_of = af.resolve_as_of(context)
        summary = cycle.ingest_step(as_of)
        outlet_events[ASSETS["raw"]].extra = {"as_of": as_of.isoformat(), "rows_loaded": summary["rows_loaded"]}
        return summary

    ingest_landing_files()


needseg_ingest()
