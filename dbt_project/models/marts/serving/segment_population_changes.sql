-- What happened to the segments themselves between consecutive runs (MONIC): survive,
-- split, absorbed, merge, disappear, emerge - with sizes and how far the centre moved.
-- Only runs of one identity lineage are compared (as in segment_transitions): across a
-- taxonomy change a segment id means something else.
with

changes as (

    select * from {{ ref('stg_drift__population_changes') }}

),

runs as (

    select run_id, previous_run_id from {{ ref('stg_segmentation__runs') }}

)

select
    changes.run_id,
    changes.previous_run_id,
    changes.as_of,
    changes.event,
    array_to_string(changes.from_segments, ', ') as from_segments,
    array_to_string(changes.to_segments, ', ') as to_segments,
    changes.overlap,
    changes.size_before,
    changes.size_after,
    changes.size_change,
    changes.centre_shift,
    cast(changes.detail as varchar) as detail
from changes
inner join runs
    on runs.run_id = changes.run_id and runs.previous_run_id = changes.previous_run_id
