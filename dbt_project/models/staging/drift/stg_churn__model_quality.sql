select * from {{ source('churn', 'model_quality') }}
