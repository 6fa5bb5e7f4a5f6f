-- Per account and order day, the figures of its priced order lines that the churn history
-- (pipelines/churn/history.py) reads at every cutoff: its order features, return share,
-- labels and training sample add up days, not lines. Not tied to the as-of date (a cutoff
-- picks its days), so this table only grows. Incremental (delete+insert by month), as
-- int_account_months: a build recomputes the months with a line loaded after this table's
-- newest (a new month, or a line re-sent into an old one), the months whose count of priced
-- lines differs from the table's (a re-sent line that moved out of it), and every month
-- when the exchange rates differ from those its rows were priced with (`pricing`) or the
-- categories counted as premium or service differ from those its rows counted
-- (`premium_service`: int_product_categories, which follows the as-of date).
-- `dbt build --full-refresh` rebuilds it from every line.
{{
    config(
        materialized='incremental',
        unique_key=['order_month'],
        incremental_strategy='delete+insert',
        on_schema_change='fail',
    )
}}
-- depends_on: {{ ref('int_category_price_months') }}
-- Built after int_account_months, never beside it: the two are the build's only passes over
-- every order line, each already on every DuckDB thread, and side by side they share one
-- memory limit. At 100k accounts one after the other took 21.5 s against 25.9 s together; at
-- 1M accounts (88M lines) together both failed with DuckDB's "Out of Memory" at the 1 GB
-- default, one after the other both finished (docs/scale.md "Two passes, one at a time").
-- depends_on: {{ ref('int_account_months') }}
{% set pricing = tojson(var('fx_rates'), sort_keys=True) | replace("'", "''") %}
with

-- not materialised: each reader scans only the lines and columns it needs
staged as not materialized (

    select
        l.*,
        cast(date_trunc('month', l.order_date) as date) as order_month
    from {{ ref('stg_crm__order_lines') }} as l

),

categories as (

    select * from {{ ref('int_product_categories') }}

),

-- the categories whose lines count as premium or service, as one value: the rows hold
-- the value they were counted with, and a build with another recomputes every month
classes as (

    select
        coalesce(
            string_agg(product_category || '=' || category_class, ';' order by product_category),
            ''
        ) as premium_service
    from categories
    where category_class in ('premium', 'service')

),

{% if is_incremental() %}

-- the months as this table holds them, if priced with today's rates and classes
stored as (

    select order_month, sum(lines) as lines
    from {{ this }}
    where pricing = '{{ pricing }}'
        and premium_service = (select premium_service from classes)
    group by order_month

),

-- each month's priced lines as staging holds them, counted by the monthly digest of the
-- lines (a few thousand rows) rather than over every line again
current_months as (

    select d.order_month, sum(d.lines) as lines
    from {{ ref('int_category_price_months') }} as d
    inner join {{ fx_rates_values() }} on fx.currency = d.currency
    group by d.order_month

),

changed as (

    {{ months_to_rebuild('current_months', 'stored', 'staged') }}

),

{% endif %}

lines as (

    select
        s.order_id,
        s.account_id,
        s.order_date,
        s.order_month,
        s.quantity < 0 as is_return,
        c.category_class,
        s.loaded_at,
        {{ priced_line_amounts('s') }}
    from staged as s
    inner join {{ fx_rates_values() }} on fx.currency = s.currency
    left join categories as c on c.product_category = s.product_category
    {% if is_incremental() %}
    where s.order_month in (select order_month from changed)
        -- the same lines, bounded on the stored column: the scan skips the older row groups
        -- (and with no month changed, reads nothing: a date after every line)
        and s.order_date >= coalesce((select min(order_month) from changed), date '9999-12-31')
    {% endif %}

),

-- one row per order first: an order is counted once on its day, from its own row, rather
-- than with a distinct count per day
per_order as (

    select
        account_id,
        order_date,
        order_month,
        order_id,
        count(*) as lines,
        count(*) filter (where is_return) as return_lines,
        count(*) filter (where not is_return) as purchase_lines,
        sum(revenue) filter (where not is_return) as purchase_revenue,
        -- each line's discount rounded to 6 places, then added up exactly (DECIMAL)
        sum(cast(discount as decimal(18, 6))) filter (where not is_return) as discount_sum,
        count(discount) filter (where not is_return) as discounted_lines,
        count(*) filter (where not is_return and category_class = 'premium') as premium_lines,
        count(*) filter (where not is_return and category_class = 'service') as service_lines,
        max(loaded_at) as loaded_at
    from lines
    group by account_id, order_date, order_month, order_id

)

select
    account_id,
    order_date as order_day,
    order_month,
    cast(count(*) filter (where purchase_lines > 0) as bigint) as purchase_orders,
    cast(sum(lines) as bigint) as lines,
    cast(sum(return_lines) as bigint) as return_lines,
    cast(sum(purchase_lines) as bigint) as purchase_lines,
    sum(purchase_revenue) as purchase_revenue,
    sum(discount_sum) as discount_sum,
    cast(sum(discounted_lines) as bigint) as discounted_lines,
    cast(sum(premium_lines) as bigint) as premium_lines,
    cast(sum(service_lines) as bigint) as service_lines,
    max(loaded_at) as loaded_at,
    '{{ pricing }}' as pricing,
    (select premium_service from classes) as premium_service
from per_order
group by account_id, order_date, order_month
