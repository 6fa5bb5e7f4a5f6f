-- Per account, calendar month of the order date and product category, the sums and counts
-- every order window is added up from (macros/account_months.sql `account_month_rows`), plus one total row per
-- account and month (product_category null) whose distinct order counts hold. Not tied to
-- the as-of date: the windows pick their months (`account_months()`), so this table only
-- grows. Incremental (delete+insert by month): a build recomputes the months whose lines
-- changed and nothing else. A month changed when staging holds a line loaded after this
-- table's newest (a new month, or a line re-sent into an old one), when its count of
-- priced lines differs from the table's (a re-sent line that moved out of it), or when the
-- exchange rates differ from those its rows were priced with (`pricing`: every month then).
-- The counts per month come from int_category_price_months, not from every staged line.
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
{% set pricing = tojson(var('fx_rates'), sort_keys=True) | replace("'", "''") %}
with

-- not materialised: each reader scans only the lines and columns it needs
staged as not materialized (

    select
        l.*,
        cast(date_trunc('month', l.order_date) as date) as order_month
    from {{ ref('stg_crm__order_lines') }} as l

),

{% if is_incremental() %}

-- the months as this table holds them, if priced with today's rates
stored as (

    select order_month, sum(lines) as lines
    from {{ this }}
    where is_month_total and pricing = '{{ pricing }}'
    group by order_month

),

-- each month's priced lines as staging holds them, counted by the monthly digest of the
-- lines (a few thousand rows, built before this) rather than over every line again
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
        s.product_category,
        s.quantity < 0 as is_return,
        s.channel,
        s.loaded_at,
        {{ priced_line_amounts('s') }}
    from staged as s
    inner join {{ fx_rates_values() }} on fx.currency = s.currency
    {% if is_incremental() %}
    where s.order_month in (select order_month from changed)
        -- the same lines, bounded on the stored column: the scan skips the older row groups
        -- (and with no month changed, reads nothing: a date after every line)
        and s.order_date >= coalesce((select min(order_month) from changed), date '9999-12-31')
    {% endif %}

)

select
    *,
    '{{ pricing }}' as pricing
from (
    {{ account_month_rows('lines', 'order_month') }}
)
