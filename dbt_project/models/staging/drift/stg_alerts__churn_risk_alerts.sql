select * from {{ source('alerts', 'churn_risk_alerts') }}
