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
