select * from {{ source('segmentation', 'lookalikes') }}
