-- Order lines up to the as-of date in the reporting currency, with their discount and
-- category class. Lines in a currency without a configured rate are excluded here and
-- counted by the test on this model (ingest quarantines them first).
-- Money is DECIMAL(38, 6) from here on: a line's amount is rounded once, on its own row,
-- and sums of decimals are exact whatever order dbt's threads add them in, so shares of a
-- total stay within [0, 1] and every build of the same inputs gives the same figures, to the
-- bit (tests/test_repeatable.py).
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
    cast(lines.net_amount * fx.rate_to_reporting as decimal(38, 6)) as revenue,
    cast(lines.list_amount * fx.rate_to_reporting as decimal(38, 6)) as list_revenue,
    -- DECIMAL too (to 1e-9), so discount sums are exact in any order
    case
        when lines.list_price > 0 then cast(greatest(1 - lines.net_price / lines.list_price, 0) as decimal(18, 9))
    end as discount,
    datesub('month', lines.order_date, {{ as_of() }}) as months_ago
from lines
inner join {{ fx_rates_values() }} on fx.currency = lines.currency
left join categories on categories.product_category = lines.product_category
