select * from {{ source('churn', 'risk_history') }}
