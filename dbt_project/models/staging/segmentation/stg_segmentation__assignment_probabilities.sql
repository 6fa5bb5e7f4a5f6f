select * from {{ source('segmentation', 'assignment_probabilities') }}
