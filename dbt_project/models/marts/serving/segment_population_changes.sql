-- What happened to the segments themselves between consecutive runs (MONIC): survive,
-- split, absorbed, merge, disappear, emerge - with sizes and how far the centre moved.
select
    run_id,
    previous_run_id,
    as_of,
    event,
    array_to_string(from_segments, ', ') as from_segments,
    array_to_string(to_segments, ', ') as to_segments,
    overlap,
    size_before,
    size_after,
    size_change,
    centre_shift,
    cast(detail as varchar) as detail
from {{ ref('stg_drift__population_changes') }}
