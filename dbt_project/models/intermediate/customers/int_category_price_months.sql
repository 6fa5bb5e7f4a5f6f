-- Per calendar month of the order date, product category, currency, list unit price and
-- kind of line (a purchase: quantity above 0), how many order lines there are: a digest of
-- the order lines a few thousand rows long (a catalogue has few distinct list prices),
-- from which int_product_categories takes each category's exact median list price, and
-- int_account_months counts each month's priced lines, without a pass over every line.
-- Not tied to the as-of date or the exchange rates (currency is a key), so this table only
-- grows. Incremental (delete+insert by month), as int_account_months: a build recomputes
-- the months with a line loaded after this table's newest (a new month, a line re-sent
-- into an old one) and the months whose count of lines differs from the table's (a
-- re-sent line that moved out of it). `dbt build --full-refresh` rebuilds it from every line.
{{
    config(
        materialized='incremental',
        unique_key=['order_month'],
        incremental_strategy='delete+insert',
        on_schema_change='fail',
    )
}}
with

-- not materialised: each reader scans only the lines and columns it needs
staged as not materialized (

    select
        product_category,
        currency,
        list_price,
        quantity,
        order_date,
        loaded_at,
        cast(date_trunc('month', order_date) as date) as order_month
    from {{ ref('stg_crm__order_lines') }}

),

{% if is_incremental() %}

stored as (

    select order_month, sum(lines) as lines
    from {{ this }}
    group by order_month

),

current_months as (

    select order_month, count(*) as lines
    from staged
    group by order_month

),

changed as (

    {{ months_to_rebuild('current_months', 'stored', 'staged') }}

),

{% endif %}

digest as (

    select
        order_month,
        product_category,
        currency,
        list_price,
        quantity > 0 as is_purchase,
        count(*) as lines,
        max(loaded_at) as loaded_at
    from staged
    {% if is_incremental() %}
    where order_month in (select order_month from changed)
        -- the same lines, bounded on the stored column: the scan skips the older row groups
        -- (and with no month changed, reads nothing: a date after every line)
        and order_date >= coalesce((select min(order_month) from changed), date '9999-12-31')
    {% endif %}
    group by 1, 2, 3, 4, 5

)

select * from digest
