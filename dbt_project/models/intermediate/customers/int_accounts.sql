-- Each account as its CRM record stood on the as-of date (latest version written by then).
with

versions as (

    select *
    from {{ ref('stg_crm__accounts') }}
    where updated_at < {{ as_of_end() }}

),

current_version as (

    select *
    from versions
    qualify row_number() over (partition by account_id order by updated_at desc, loaded_at desc) = 1

)

select
    account_id,
    account_name,
    status,
    industry,
    country,
    employees,
    annual_revenue,
    customer_since,
    account_owner,
    parent_account_id,
    updated_at,
    greatest(date_diff('month', customer_since, {{ as_of() }}), 0) as tenure_months
from current_version
