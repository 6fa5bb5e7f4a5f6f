-- A table, not a view: the latest version of each quote is picked once per build
-- (a window over every load), not again for each model and test that reads it. Unique on
-- quote_id by construction (one row per quote_id), so no test groups it again.
{{ config(materialized='table') }}
with

source as (

    select * from {{ source('crm', 'quotes') }}

),

latest as (

    select
        quote_id,
        account_id,
        created_at,
        cast(amount as double) as amount,
        upper(currency) as currency,
        lower(status) as status,
        case when lower(status) = 'lost' then lower(loss_reason) end as loss_reason
    from source
    qualify row_number() over (partition by quote_id order by _loaded_at desc, _batch_id desc) = 1

)

select * from latest
