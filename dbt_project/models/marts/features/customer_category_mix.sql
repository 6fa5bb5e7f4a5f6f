-- Each account's spend per product category over the trailing 12 months: the input of
-- consumption-based taxonomies (dimensions `category_share:<category>`), added up from the
-- monthly sums per category (macros/account_months.sql; DECIMAL, exact in any order).
-- depends_on: {{ ref('int_account_months') }}, {{ ref('int_order_lines__priced') }}
with

categories as (

    select * from ({{ account_months(var('trailing_months')) }})
    where not is_month_total

),

per_category as (

    select
        account_id,
        product_category,
        category_class,
        greatest(sum(revenue), 0) as revenue_12m
    from categories
    group by 1, 2, 3

)

select
    account_id,
    product_category,
    category_class,
    cast(revenue_12m as double) as revenue_12m,
    cast(coalesce(revenue_12m / nullif(sum(revenue_12m) over (partition by account_id), 0), 0) as double) as revenue_share,
    {{ as_of() }} as as_of
from per_category
