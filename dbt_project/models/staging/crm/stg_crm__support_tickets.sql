-- A table, not a view: the latest version of each ticket is picked once per build
-- (a window over every load), not again for each model and test that reads it. Unique on
-- ticket_id by construction (one row per ticket_id), so no test groups it again.
{{ config(materialized='table') }}
with

source as (

    select * from {{ source('crm', 'support_tickets') }}

),

latest as (

    select
        ticket_id,
        account_id,
        opened_at,
        closed_at,
        lower(priority) as priority,
        lower(category) as category
    from source
    qualify row_number() over (partition by ticket_id order by _loaded_at desc, _batch_id desc) = 1

)

select * from latest
