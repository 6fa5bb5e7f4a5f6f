-- Order lines up to the as-of date in the reporting currency, with their discount and
-- category class. Lines in a currency without a configured rate are excluded here (ingest
-- quarantines them first).
-- A view: on a month-end as-of date the feature windows are added up from
-- int_account_months (any other date groups this view), and churn (pipelines/churn) reads
-- int_account_order_days; as a table it cost every build a pass over every line.
-- Money is DECIMAL(38, 6) from here on (macros/account_months.sql): a line's amount is
-- rounded once, on its own row, and sums of decimals are exact whatever order dbt's threads
-- add them in, so shares of a total stay within [0, 1] and every build of the same inputs
-- gives the same figures, to the bit (tests/test_repeatable.py).
{{ config(materialized='view') }}
with

lines as (

    select * from {{ ref('stg_crm__order_lines') }}
    where order_date <= {{ as_of() }}

),

categories as (

    select * from {{ ref('int_product_categories') }}

)

select
    lines.order_id,
    lines.line_number,
    lines.account_id,
    lines.order_date,
    lines.product_id,
    lines.product_category,
    categories.category_class,
    lines.quantity,
    lines.quantity < 0 as is_return,
    lines.channel,
    {{ priced_line_amounts('lines') }},
    datesub('month', lines.order_date, {{ as_of() }}) as months_ago
from lines
inner join {{ fx_rates_values() }} on fx.currency = lines.currency
left join categories on categories.product_category = lines.product_category
