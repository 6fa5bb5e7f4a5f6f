select * from {{ source('drift', 'customer_drift') }}
