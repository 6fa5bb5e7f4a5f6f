select * from {{ source('segmentation', 'assignments') }}
