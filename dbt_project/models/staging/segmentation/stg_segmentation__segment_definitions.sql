select * from {{ source('segmentation', 'segment_definitions') }}
