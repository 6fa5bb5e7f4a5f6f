-- Incremental: the order lines are the one table that grows by millions of rows a month.
-- A build reads only the lines loaded since the last one (raw is append-only, each load
-- later than the one before), keeps the latest of each line among them, and replaces the
-- earlier version of a re-sent line (delete+insert on the line's key). A new month costs
-- its own lines, not the 24 months before it; `dbt build --full-refresh` rebuilds it all.
{{
    config(
        materialized='incremental',
        unique_key=['order_id', 'line_number'],
        incremental_strategy='delete+insert',
    )
}}
with

source as (

    select * from {{ source('crm', 'order_lines') }}
    {% if is_incremental() %}
    where _loaded_at > (select coalesce(max(loaded_at), timestamp '0001-01-01') from {{ this }})
    {% endif %}

),

renamed as (

    select
        order_id,
        line_number,
        account_id,
        order_date,
        product_id,
        coalesce(nullif(trim(product_category), ''), 'Uncategorised') as product_category,
        quantity,
        cast(list_price as double) as list_price,
        cast(net_price as double) as net_price,
        upper(currency) as currency,
        lower(channel) as channel,
        _loaded_at as loaded_at,
        _batch_id as batch_id
    from source

),

-- a line re-sent in a later extract replaces the earlier one
latest as (

    select *
    from renamed
    qualify row_number() over (partition by order_id, line_number order by loaded_at desc, batch_id desc) = 1

)

select
    order_id,
    line_number,
    account_id,
    order_date,
    product_id,
    product_category,
    quantity,
    list_price,
    net_price,
    currency,
    channel,
    quantity * net_price as net_amount,
    quantity * coalesce(list_price, net_price) as list_amount,
    loaded_at,
    batch_id
from latest
