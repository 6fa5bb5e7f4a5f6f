-- The segmentation run the serving tables describe: the published one with the latest
-- as-of date (a withheld run is not published unless segmentation.verdict.publish_withheld).
select
    run_id,
    as_of
from {{ ref('stg_segmentation__runs') }}
where coalesce(published, true)
qualify row_number() over (order by as_of desc, created_at desc) = 1
