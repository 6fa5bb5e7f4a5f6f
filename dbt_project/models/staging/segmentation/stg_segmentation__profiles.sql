select * from {{ source('segmentation', 'profiles') }}
