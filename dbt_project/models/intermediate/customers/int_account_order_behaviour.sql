-- Behavioural proxies from orders, per account: the trailing 12 months, the recent 3 months
-- and the prior 12 months before those (recent against prior gives each proxy's trend).
-- Windows count whole months back from the as-of date (months_ago 0 = the last month).
-- A share or rate over a window without the lines it needs is null, and so is its trend.
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
        {% call(window) per_window('revenue') %}sum(revenue) filter (where {{ window }}){% endcall %},
        {% call(window) per_window('orders') %}count(distinct order_id) filter (where {{ window }}){% endcall %},
        -- discount off list price weighted by list value (a line's discount is never below 0,
        -- so a surcharge does not cancel a discount); returns are refunds, not purchases
        {% call(window) per_window('discount_depth') %}
            sum(discount * list_revenue) filter (where {{ window }} and not is_return)
                / nullif(sum(list_revenue) filter (where {{ window }} and not is_return and discount is not null), 0)
        {% endcall %},
        -- revenue bought at list price among revenue whose list price is known
        {% call(window) per_window('list_price_share') %}
            coalesce(sum(revenue) filter (where {{ window }} and not is_return and discount <= 0.005), 0)
                / nullif(sum(revenue) filter (where {{ window }} and not is_return and discount is not null), 0)
        {% endcall %},
        {% call(window) per_window('premium_share') %}
            coalesce(sum(revenue) filter (where {{ window }} and not is_return and category_class = 'premium'), 0)
                / nullif(sum(revenue) filter (where {{ window }} and not is_return), 0)
        {% endcall %},
        {% call(window) per_window('service_revenue_share') %}
            coalesce(sum(revenue) filter (where {{ window }} and not is_return and category_class = 'service'), 0)
                / nullif(sum(revenue) filter (where {{ window }} and not is_return), 0)
        {% endcall %},
        -coalesce(sum(revenue) filter (where in_trailing and is_return), 0)
            / nullif(sum(revenue) filter (where in_trailing and not is_return), 0) as return_share_12m,
        {% call(window) per_window('categories') %}count(distinct product_category) filter (where {{ window }}){% endcall %},
        count(distinct order_id) filter (where in_trailing and channel = 'web')
            / nullif(count(distinct order_id) filter (where in_trailing), 0) as web_order_share_12m
    from lines
    group by account_id

),

-- orders per month over every window, months without an order included: regularity is
-- about the gaps as much as the orders
months as (

    select range as months_ago from range({{ recent + trailing }})

),

monthly_orders as (

    select
        a.account_id,
        m.months_ago,
        count(distinct l.order_id) as orders
    from (select distinct account_id from lines where in_trailing or in_prior) as a
    cross join months as m
    left join lines as l
        on l.account_id = a.account_id and l.months_ago = m.months_ago
    group by 1, 2

),

regularity as (

    select
        account_id,
        count(*) filter (where in_trailing and orders > 0) as active_months_12m,
        -- 1 for the same number of orders every month, towards 0 for bursts and gaps (1 / (1 +
        -- the coefficient of variation)); null for a window without orders. Written with
        -- integer sums, sd / mean = sqrt(n * sum(x^2) - sum(x)^2) / sum(x), which are exact
        -- in any order, where stddev_pop's last digits depend on how threads combine.
        {% call(window) per_window('order_regularity') %}
            1 / (1 + sqrt(
                count(*) filter (where {{ window }}) * sum(orders * orders) filter (where {{ window }})
                - sum(orders) filter (where {{ window }}) * sum(orders) filter (where {{ window }})
            ) / nullif(sum(orders) filter (where {{ window }}), 0))
        {% endcall %}
    from (select *, {{ window_flags() }} from monthly_orders)
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
    p.list_price_share_recent,
    p.list_price_share_prior,
    p.list_price_share_recent - p.list_price_share_prior as list_price_share_trend,
    p.premium_share_12m,
    p.premium_share_recent,
    p.premium_share_prior,
    p.premium_share_recent - p.premium_share_prior as premium_share_trend,
    p.service_revenue_share_12m,
    p.service_revenue_share_recent,
    p.service_revenue_share_prior,
    p.service_revenue_share_recent - p.service_revenue_share_prior as service_revenue_share_trend,
    p.return_share_12m,
    coalesce(p.categories_12m, 0) as categories_12m,
    coalesce(p.categories_recent, 0) as categories_recent,
    coalesce(p.categories_prior, 0) as categories_prior,
    coalesce(p.categories_12m, 0) / nullif(c.categories_total, 0) as category_breadth_12m,
    (coalesce(p.categories_recent, 0) - coalesce(p.categories_prior, 0)) / nullif(c.categories_total, 0)
        as category_breadth_trend,
    p.web_order_share_12m,
    coalesce(r.active_months_12m, 0) as active_months_12m,
    r.order_regularity_12m,
    r.order_regularity_recent,
    r.order_regularity_prior,
    r.order_regularity_recent - r.order_regularity_prior as order_regularity_trend
from per_account as p
cross join catalogue as c
left join regularity as r on r.account_id = p.account_id
