-- Behavioural proxies from orders, per account: the trailing 12 months, the recent 3 months
-- and the prior 12 months before those (recent against prior gives each proxy's trend).
-- Windows count whole months back from the as-of date (months_ago 0 = the last month).
{% set recent = var('recent_months') %}
{% set trailing = var('trailing_months') %}
with

lines as (

    select
        *,
        {{ window_flags() }}
    from {{ ref('int_order_lines__priced') }}

),

per_account as (

    select
        account_id,
        min(order_date) as first_order_date,
        max(order_date) as last_order_date,
        sum(revenue) filter (where in_trailing) as revenue_12m,
        sum(revenue) filter (where in_recent) as revenue_recent,
        sum(revenue) filter (where in_prior) as revenue_prior,
        count(distinct order_id) filter (where in_trailing) as orders_12m,
        count(distinct order_id) filter (where in_recent) as orders_recent,
        count(distinct order_id) filter (where in_prior) as orders_prior,
        -- revenue-weighted discount: what share of list value was given away
        1 - sum(revenue) filter (where in_trailing and not is_return and discount is not null)
            / nullif(sum(list_revenue) filter (where in_trailing and not is_return and discount is not null), 0)
            as discount_depth_12m,
        1 - sum(revenue) filter (where in_recent and not is_return and discount is not null)
            / nullif(sum(list_revenue) filter (where in_recent and not is_return and discount is not null), 0)
            as discount_depth_recent,
        1 - sum(revenue) filter (where in_prior and not is_return and discount is not null)
            / nullif(sum(list_revenue) filter (where in_prior and not is_return and discount is not null), 0)
            as discount_depth_prior,
        coalesce(sum(revenue) filter (where in_trailing and not is_return and discount <= 0.005), 0)
            / nullif(sum(revenue) filter (where in_trailing and not is_return and discount is not null), 0)
            as list_price_share_12m,
        coalesce(sum(revenue) filter (where in_trailing and not is_return and category_class = 'premium'), 0)
            / nullif(sum(revenue) filter (where in_trailing and not is_return), 0) as premium_share_12m,
        coalesce(sum(revenue) filter (where in_recent and not is_return and category_class = 'premium'), 0)
            / nullif(sum(revenue) filter (where in_recent and not is_return), 0) as premium_share_recent,
        coalesce(sum(revenue) filter (where in_prior and not is_return and category_class = 'premium'), 0)
            / nullif(sum(revenue) filter (where in_prior and not is_return), 0) as premium_share_prior,
        coalesce(sum(revenue) filter (where in_trailing and not is_return and category_class = 'service'), 0)
            / nullif(sum(revenue) filter (where in_trailing and not is_return), 0) as service_revenue_share_12m,
        -coalesce(sum(revenue) filter (where in_trailing and is_return), 0)
            / nullif(sum(revenue) filter (where in_trailing and not is_return), 0) as return_share_12m,
        count(distinct product_category) filter (where in_trailing) as categories_12m,
        count(distinct product_category) filter (where in_recent) as categories_recent,
        count(distinct product_category) filter (where in_prior) as categories_prior,
        count(distinct order_id) filter (where in_trailing and channel = 'web')
            / nullif(count(distinct order_id) filter (where in_trailing), 0) as web_order_share_12m
    from lines
    group by account_id

),

-- orders per month over the trailing window, zero months included, for regularity
months as (

    select range as months_ago from range({{ trailing }})

),

monthly_orders as (

    select
        a.account_id,
        m.months_ago,
        count(distinct l.order_id) as orders
    from (select distinct account_id from lines where in_trailing) as a
    cross join months as m
    left join lines as l
        on l.account_id = a.account_id and l.months_ago = m.months_ago
    group by 1, 2

),

regularity as (

    select
        account_id,
        count(*) filter (where orders > 0) as active_months_12m,
        -- 1 for the same number of orders every month, towards 0 for bursts and gaps
        1 / (1 + stddev_pop(orders) / nullif(avg(orders), 0)) as order_regularity_12m
    from monthly_orders
    group by account_id

),

catalogue as (

    select count(*) as categories_total from {{ ref('int_product_categories') }}

)

select
    p.account_id,
    p.first_order_date,
    p.last_order_date,
    date_diff('day', p.last_order_date, {{ as_of() }}) as days_since_last_order,
    coalesce(p.revenue_12m, 0) as revenue_12m,
    coalesce(p.revenue_recent, 0) as revenue_recent,
    coalesce(p.revenue_prior, 0) as revenue_prior,
    -- monthly run-rate of the recent window against the prior one: -0.5 = half the spend
    case
        when coalesce(p.revenue_prior, 0) > 0
            then (greatest(coalesce(p.revenue_recent, 0), 0) / {{ recent }}) / (p.revenue_prior / {{ trailing }}) - 1
    end as revenue_trend,
    coalesce(p.orders_12m, 0) as orders_12m,
    coalesce(p.orders_recent, 0) as orders_recent,
    coalesce(p.orders_prior, 0) as orders_prior,
    coalesce(p.revenue_12m, 0) / nullif(p.orders_12m, 0) as average_order_value_12m,
    p.discount_depth_12m,
    p.discount_depth_recent,
    p.discount_depth_prior,
    p.discount_depth_recent - p.discount_depth_prior as discount_depth_trend,
    p.list_price_share_12m,
    p.premium_share_12m,
    p.premium_share_recent - p.premium_share_prior as premium_share_trend,
    p.service_revenue_share_12m,
    p.return_share_12m,
    coalesce(p.categories_12m, 0) as categories_12m,
    coalesce(p.categories_12m, 0) / nullif(c.categories_total, 0) as category_breadth_12m,
    (coalesce(p.categories_recent, 0) - coalesce(p.categories_prior, 0)) / nullif(c.categories_total, 0)
        as category_breadth_trend,
    p.web_order_share_12m,
    coalesce(r.active_months_12m, 0) as active_months_12m,
    r.order_regularity_12m
from per_account as p
cross join catalogue as c
left join regularity as r on r.account_id = p.account_id
