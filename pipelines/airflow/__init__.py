"""needseg's Airflow glue, in one place.

- `env`: the environment a local Airflow runs in (`.airflow/`, SQLite, executor sized to the machine);
- `support`: what the DAG files share (assets, schedules, the as-of date, the task wrapper, cosmos task groups, callbacks);
- `local`: `make airflow` (standalone: API server with the UI, scheduler, DAG processor, triggerer);
- `scheduler`: Airflow's scheduler driven locally by `make demo` (backfills month by month, progress while it runs);
- `history`: the latest DAG runs from Airflow's metadata database, for `needseg status`.

Nothing here imports Airflow at module import time except where a function needs it, so
`pipelines` stays importable (and the CLI fast) without touching Airflow.
"""
