select * from {{ source('segmentation', 'prospect_predictions') }}
