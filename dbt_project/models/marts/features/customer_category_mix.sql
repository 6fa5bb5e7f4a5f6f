-- Each account's spend per product category over the trailing 12 months: the input of
-- consumption-based taxonomies (dimensions `category_share:<category>`).
with

lines as (

    select * from {{ ref('int_order_lines__priced') }}
    where months_ago < {{ var('trailing_months') }}

),

per_category as (

    select
        account_id,
        product_category,
        category_class,
        greatest(sum(revenue), 0) as revenue_12m
    from lines
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
