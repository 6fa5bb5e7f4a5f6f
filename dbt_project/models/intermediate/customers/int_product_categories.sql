-- Classifies each product category as premium, service or standard.
-- Configured names win (vars premium_categories / service_categories). When none of the
-- configured premium names occur in the data (another company's catalogue), the categories
-- in the top third by median list unit price count as premium; when no service names
-- match, categories whose name says service/support/installation/training do.
-- Both paths (a month-end as-of date from the monthly digest, any other from the lines)
-- give the same rows.
-- depends_on: {{ ref('int_category_price_months') }}, {{ ref('stg_crm__order_lines') }}
with

{% if as_of_is_month_end() %}

-- On a month-end as-of date (the monthly cycle's), from the monthly digest of list prices
-- (int_category_price_months, a few thousand rows): per category and list unit price, how
-- many purchase lines up to the as-of month carry it.
prices as (

    select
        d.product_category,
        d.list_price * fx.rate_to_reporting as list_unit_price,
        sum(d.lines) as lines
    from {{ ref('int_category_price_months') }} as d
    inner join {{ fx_rates_values() }} on fx.currency = d.currency
    where d.order_month <= date_trunc('month', {{ as_of() }})
        and d.is_purchase
    group by 1, 2

),

counts as (

    select
        product_category,
        cast(sum(lines) as bigint) as lines,
        -- the median's positions among the lines with a list price, counted from 0: the
        -- lower and upper middle (one position for an odd count)
        (sum(lines) filter (where list_unit_price is not null) - 1) // 2 as lower_middle,
        sum(lines) filter (where list_unit_price is not null) // 2 as upper_middle
    from prices
    group by 1

),

-- each price covers the positions from `lines_below` to `lines_through` - 1 of its sorted category
positions as (

    select
        product_category,
        list_unit_price,
        sum(lines) over (partition by product_category order by list_unit_price) - lines as lines_below,
        sum(lines) over (partition by product_category order by list_unit_price) as lines_through
    from prices
    where list_unit_price is not null

),

-- the median of the one or two middle prices is the median of every line's price, to the
-- bit: DuckDB interpolates halfway between the same two values
medians as (

    select
        p.product_category,
        median(p.list_unit_price) as median_list_unit_price
    from positions as p
    inner join counts as c on c.product_category = p.product_category
    where (c.lower_middle >= p.lines_below and c.lower_middle < p.lines_through)
        or (c.upper_middle >= p.lines_below and c.upper_middle < p.lines_through)
    group by 1

),

categories as (

    select
        c.product_category,
        lower(c.product_category) as category_key,
        m.median_list_unit_price,
        c.lines
    from counts as c
    left join medians as m on m.product_category = c.product_category

),

{% else %}

-- any other as-of date: from the order lines
lines as (

    select
        l.product_category,
        l.list_price * fx.rate_to_reporting as list_unit_price
    from {{ ref('stg_crm__order_lines') }} as l
    inner join {{ fx_rates_values() }} on fx.currency = l.currency
    where l.order_date <= {{ as_of() }}
        and l.quantity > 0

),

categories as (

    select
        product_category,
        lower(product_category) as category_key,
        median(list_unit_price) as median_list_unit_price,
        count(*) as lines
    from lines
    group by 1, 2

),

{% endif %}

flags as (

    select
        *,
        -- `in (null)` is null, not false: an empty list must leave inference on
        coalesce(category_key in {{ category_list('premium_categories') }}, false) as configured_premium,
        coalesce(category_key in {{ category_list('service_categories') }}, false) as configured_service,
        regexp_matches(category_key, 'servic|support|install|training|maintenan|consult|repair') as named_service,
        percent_rank() over (order by median_list_unit_price) as price_rank
    from categories

),

coverage as (

    select
        bool_or(configured_premium) as any_configured_premium,
        bool_or(configured_service) as any_configured_service
    from flags

)

select
    f.product_category,
    f.median_list_unit_price,
    f.lines,
    case
        when (c.any_configured_service and f.configured_service)
            or (not c.any_configured_service and f.named_service) then 'service'
        when (c.any_configured_premium and f.configured_premium)
            or (not c.any_configured_premium and f.price_rank >= 2.0 / 3) then 'premium'
        else 'standard'
    end as category_class,
    case
        when f.configured_premium or f.configured_service then 'configured'
        else 'inferred'
    end as classified_by
from flags as f
cross join coverage as c
