-- Each customer's segments over time: one row per uninterrupted stay in a segment, from
-- the first run that placed it there (valid_from) to the first run that did not
-- (valid_to, exclusive; null while it lasts). A run without the account (churned, gone)
-- ends the stay too, and so does a taxonomy change: a stay never spans two identity
-- lineages, because the same segment id can mean something else in the next one.
with

runs as (

    select
        run_id,
        as_of,
        lineage_id,
        row_number() over (order by as_of) as run_number
    from {{ ref('stg_segmentation__runs') }}

),

assignments as (

    select
        a.account_id,
        a.segment_id,
        a.segment_name,
        a.segment_source,
        runs.as_of,
        runs.lineage_id,
        runs.run_number
    from {{ ref('stg_segmentation__assignments') }} as a
    inner join runs on runs.run_id = a.run_id

),

streaks as (

    select
        *,
        -- consecutive runs in the same segment of one lineage share (run_number - position)
        run_number - row_number() over (partition by account_id, lineage_id, segment_id order by run_number) as streak
    from assignments

),

stays as (

    select
        account_id,
        lineage_id,
        segment_id,
        max(segment_name) filter (where run_number = last_run) as segment_name,
        min(as_of) as valid_from,
        max(run_number) as last_run,
        count(*) as runs
    from (select *, max(run_number) over (partition by account_id, lineage_id, segment_id, streak) as last_run from streaks)
    group by account_id, lineage_id, segment_id, streak

)

select
    stays.account_id,
    stays.segment_id,
    stays.segment_name as segment,
    stays.lineage_id,
    stays.valid_from,
    next_run.as_of as valid_to,
    next_run.as_of is null as is_current,
    cast(stays.runs as bigint) as runs
from stays
left join runs as next_run on next_run.run_number = stays.last_run + 1
