-- Classifies each product category as premium, service or standard.
-- Configured names win (vars premium_categories / service_categories). When none of the
-- configured premium names occur in the data (another company's catalogue), the categories
-- in the top third by median list unit price count as premium; when no service names
-- match, categories whose name says service/support/installation/training do.
with

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
