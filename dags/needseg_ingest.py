"""
### needseg · ingest

Pulls the HTTP sources into the landing folder, then loads new landing files
(`<landing>/<source>/<table>/<file>`) into the raw tables of the working warehouse. Every
batch passes the great_expectations quality gate first: rows that fail go to
`meta.quarantine` with file, line, column and reason (`needseg quarantine` lists them).

The task **fails at once, without retries** (the same files fail the same way until someone
fixes them), with a message naming each file and what to do, when a file is refused as a
whole (unreadable, empty, missing column, a batch expectation), held back because the
accounts it names could not be loaded, not loadable where it lies (wrong folder, unknown
table, a name the mapping does not match), or **changed after it was loaded** (not
appended: deliver changes as a new file, or trigger this DAG with `accept_changed`). The
other files still load, but no `needseg_raw` event is emitted, so nothing downstream runs
or is published. An HTTP source that is down fails the task too, after the landing files
loaded; that is retried.

Files already loaded are skipped by checksum. Every row read ends up in raw or quarantine
(`meta.batches` counts both). Each run's report and validation results are kept under
`<quality>/<run id>/` (`needseg docs`).

**Schedule**: daily (`NEEDSEG_INGEST_SCHEDULE`). **Produces**: the `needseg_raw` asset,
with the run's as-of date, which triggers `needseg_features`.
"""

from airflow.sdk import dag

from pipelines.airflow import support as af
from pipelines import cycle

ASSETS = af.assets()


@dag(**af.dag_arguments("needseg_ingest", af.schedule("NEEDSEG_INGEST_SCHEDULE", "@daily"), __doc__, ["ingest"], af.accept_changed_param()))
def needseg_ingest():
    @af.step(pool=af.WAREHOUSE_POOL, outlets=[ASSETS["raw"]])
    def ingest_landing_files(*, outlet_events=None, **context):
        """Read, map, type and gate every new landing file; load the good rows to raw."""
        as_of = af.resolve_as_of(context)
        summary = cycle.ingest_step(as_of, accept_changed=af.flag(context, "accept_changed"))
        outlet_events[ASSETS["raw"]].extra = {"as_of": as_of.isoformat(), "rows_loaded": summary["rows_loaded"]}
        return summary

    ingest_landing_files()


needseg_ingest()
