select * from {{ source('segmentation', 'segment_runs') }}
