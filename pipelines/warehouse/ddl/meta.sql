-- meta: what needseg knows about its own loads: batches, quarantined rows, replays, file
-- conflicts, stage timings of each cycle and the HTTP sources' watermarks.
-- Applied by pipelines/warehouse/schema.py: created when missing; a column a table written by
-- an older needseg lacks is added. Comments run from -- to the end of the line.

create table if not exists meta.batches (
    batch_id varchar primary key,
    source varchar not null,
    table_name varchar not null,
    file varchar not null,
    checksum varchar not null,
    size_bytes bigint,
    encoding varchar,
    status varchar not null,          -- loaded | rejected
    rows_read bigint not null,
    rows_loaded bigint not null,
    rows_quarantined bigint not null,
    extra_columns varchar[],
    message varchar,
    run_id varchar,
    as_of date,
    loaded_at timestamp not null
);

create table if not exists meta.quarantine (
    batch_id varchar not null,
    source varchar not null,
    table_name varchar not null,
    file varchar not null,
    line bigint,
    column_name varchar,
    value varchar,
    reason varchar not null,
    expected varchar,
    problems json,
    record json,
    quarantined_at timestamp not null
);

create table if not exists meta.replayed (
    batch_id varchar not null,        -- the batch the rows were quarantined in (and now loaded under)
    table_name varchar not null,
    file varchar not null,
    rows bigint not null,             -- rows moved from quarantine to raw once their account arrived
    run_id varchar,
    replayed_at timestamp not null
);

create table if not exists meta.file_conflicts (
    file varchar not null,
    loaded_checksum varchar not null,
    new_checksum varchar not null,
    loaded_batch_id varchar not null,
    detected_at timestamp not null,
    primary key (file, new_checksum)
);

create table if not exists meta.cycle_runs (
    run_id varchar not null,
    as_of date not null,
    stage varchar not null,
    started_at timestamp not null,
    seconds double not null,
    detail json,
    primary key (run_id, stage)
);

create table if not exists meta.http_watermarks (
    source varchar not null,
    table_name varchar not null,
    watermark timestamp,           -- largest updated_at fetched so far (UTC when the API sends offsets)
    fetched_at timestamp not null,  -- when the fetch that moved it ran (UTC)
    records bigint not null,        -- records that fetch wrote
    file varchar,                   -- the landing file it wrote, relative to the landing folder
    primary key (source, table_name)
);
