-- The segmentation run the serving tables describe: the one with the latest as-of date.
select
    run_id,
    as_of
from {{ ref('stg_segmentation__runs') }}
qualify row_number() over (order by as_of desc, created_at desc) = 1
