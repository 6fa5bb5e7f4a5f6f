-- Behavioural proxies from orders, per account: the trailing 12 months, the recent 3 months
-- and the prior 12 months before those (recent against prior gives each proxy's trend).
-- Windows count whole months back from the as-of date (months_ago 0 = the last month).
-- Every window is added up from per-month sums (macros/account_months.sql), which is exact:
-- money and discounts are DECIMAL, and an order is placed on one day by one account, so
-- its distinct count per month adds up across months.
-- A share or rate over a window without the lines it needs is null, and so is its trend.
{% set recent = var('recent_months') %}
{% set trailing = var('trailing_months') %}
-- depends_on: {{ ref('int_account_months') }}, {{ ref('int_order_lines__priced') }}
with

-- per account and month back: sums and counts per category, and the month's total row
-- (macros/account_months.sql); every window below is added up from these. Not
-- materialised: each reader scans only the columns and rows it needs (the windows the
-- months of the recent and prior windows, only the proxies that need a category the
-- category rows).
account_months as not materialized (

    select * from ({{ account_months() }})

),

window_months as not materialized (

    select
        *,
        {{ window_flags() }}
    from ({{ account_months(recent + trailing) }})

),

history as (

    select
        account_id,
        min(first_order_date) as first_order_date,
        max(last_order_date) as last_order_date
    from account_months
    where is_month_total
    group by account_id

),

totals as (

    select
        account_id,
        {% call(window) per_window('orders') %}cast(sum(orders) filter (where {{ window }}) as bigint){% endcall %},
        sum(web_orders) filter (where in_trailing)
            / nullif(sum(orders) filter (where in_trailing), 0) as web_order_share_12m,
        {% call(window) per_window('revenue') %}sum(revenue) filter (where {{ window }}){% endcall %},
        {% call(window) per_window('purchase_revenue') %}sum(purchase_revenue) filter (where {{ window }}){% endcall %},
        -- discount off list price weighted by list value (a line's discount is never below 0,
        -- so a surcharge does not cancel a discount); returns are refunds, not purchases
        {% call(window) per_window('discount_depth') %}
            sum(discount_list_revenue) filter (where {{ window }})
                / nullif(sum(priced_list_revenue) filter (where {{ window }}), 0)
        {% endcall %},
        -- revenue bought at list price among revenue whose list price is known
        {% call(window) per_window('list_price_share') %}
            coalesce(sum(list_price_revenue) filter (where {{ window }}), 0)
                / nullif(sum(priced_purchase_revenue) filter (where {{ window }}), 0)
        {% endcall %},
        -coalesce(sum(return_revenue) filter (where in_trailing), 0)
            / nullif(sum(purchase_revenue) filter (where in_trailing), 0) as return_share_12m
    from window_months
    where is_month_total
    group by account_id

),

-- purchases in premium and service categories per window
classes as (

    select
        account_id,
        {% call(window) per_window('premium_revenue') %}sum(purchase_revenue) filter (where {{ window }} and category_class = 'premium'){% endcall %},
        {% call(window) per_window('service_revenue') %}sum(purchase_revenue) filter (where {{ window }} and category_class = 'service'){% endcall %}
    from window_months
    where not is_month_total and category_class in ('premium', 'service')
    group by account_id

),

per_account as (

    select
        h.account_id,
        t.* exclude (account_id),
        {% call(window) per_window('premium_share') %}
            coalesce(c.premium_revenue_{{ window_suffix(window) }}, 0)
                / nullif(t.purchase_revenue_{{ window_suffix(window) }}, 0)
        {% endcall %},
        {% call(window) per_window('service_revenue_share') %}
            coalesce(c.service_revenue_{{ window_suffix(window) }}, 0)
                / nullif(t.purchase_revenue_{{ window_suffix(window) }}, 0)
        {% endcall %}
    from history as h
    left join totals as t on t.account_id = h.account_id
    left join classes as c on c.account_id = h.account_id

),

-- distinct categories per window, counted from one row per account and category (a
-- distinct count per window over every month's rows costs several times more)
category_windows as (

    select
        account_id,
        {% call(window) per_window('categories') %}count(*) filter (where {{ window }}){% endcall %}
    from (
        select
            account_id,
            product_category,
            bool_or(in_trailing) as in_trailing,
            bool_or(in_recent) as in_recent,
            bool_or(in_prior) as in_prior
        from window_months
        where not is_month_total
        group by account_id, product_category
    )
    group by account_id

),

-- How many months back the order history reaches (the month of the earliest order any
-- account placed, to the as-of month): months before it are not months without orders but
-- months the data does not cover. While it is shorter than a window (an export that starts
-- less than a year before the as-of date), rates are taken over the months covered, so a
-- window that is still filling does not move every account's numbers.
coverage as (

    select coalesce(max(months_ago), 0) + 1 as history_months
    from account_months
    where is_month_total

),

-- how many of each window's months the history covers: regularity counts the months
-- without an order among them (it is about the gaps as much as the orders), not the months
-- before the history begins
window_lengths as (

    select
        least(history_months, {{ trailing }}) as months_12m,
        least(history_months, {{ recent }}) as months_recent,
        greatest(least(history_months - {{ recent }}, {{ trailing }}), 0) as months_prior
    from coverage

),

regularity as (

    select
        w.account_id,
        count(*) filter (where w.in_trailing and w.orders > 0) as active_months_12m,
        -- 1 for the same number of orders every month, towards 0 for bursts and gaps (1 / (1 +
        -- the coefficient of variation)); null for a window without orders. Written with
        -- integer sums, sd / mean = sqrt(n * sum(x^2) - sum(x)^2) / sum(x), which are exact
        -- in any order, where stddev_pop's last digits depend on how threads combine. n is
        -- the window's months covered; a month without orders has no row and adds 0 to both
        -- sums, so the sums are taken over the months with orders only.
        {% call(window) per_window('order_regularity') %}
            1 / (1 + sqrt(
                n.months_{{ window_suffix(window) }} * sum(w.orders * w.orders) filter (where w.{{ window }})
                - sum(w.orders) filter (where w.{{ window }}) * sum(w.orders) filter (where w.{{ window }})
            ) / nullif(sum(w.orders) filter (where w.{{ window }}), 0))
        {% endcall %}
    from window_months as w
    cross join window_lengths as n
    where w.is_month_total
    group by w.account_id, n.months_12m, n.months_recent, n.months_prior

),

catalogue as (

    select count(*) as categories_total from {{ ref('int_product_categories') }}

)

select
    p.account_id,
    o.first_order_date,
    o.last_order_date,
    date_diff('day', o.last_order_date, {{ as_of() }}) as days_since_last_order,
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
    coalesce(k.categories_12m, 0) as categories_12m,
    coalesce(k.categories_recent, 0) as categories_recent,
    coalesce(k.categories_prior, 0) as categories_prior,
    coalesce(k.categories_12m, 0) / nullif(c.categories_total, 0) as category_breadth_12m,
    (coalesce(k.categories_recent, 0) - coalesce(k.categories_prior, 0)) / nullif(c.categories_total, 0)
        as category_breadth_trend,
    p.web_order_share_12m,
    coalesce(r.active_months_12m, 0) as active_months_12m,
    -- the trailing window's months the history covers, and the counts as rates over them
    least(v.history_months, {{ trailing }}) as observed_months_12m,
    coalesce(r.active_months_12m, 0) / least(v.history_months, {{ trailing }}) as active_month_share_12m,
    coalesce(p.orders_12m, 0) / least(v.history_months, {{ trailing }}) as orders_per_month_12m,
    r.order_regularity_12m,
    r.order_regularity_recent,
    r.order_regularity_prior,
    r.order_regularity_recent - r.order_regularity_prior as order_regularity_trend
from per_account as p
inner join history as o on o.account_id = p.account_id
left join category_windows as k on k.account_id = p.account_id
cross join catalogue as c
cross join coverage as v
left join regularity as r on r.account_id = p.account_id
