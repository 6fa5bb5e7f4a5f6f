-- Per customer and month (months_ago 0 = the month ending on the as-of date, counting back
-- whole months), the buying mix in counts a change test can use: lines and their
-- discounts (sum and sum of squares), lines at list price, premium and service lines,
-- categories, quotes decided and lost on price, tickets. Volumes are kept but drift
-- detection reads only the mix: a customer that simply buys less is a churn question.
{% set horizon = var('drift_history_months') %}
-- depends_on: {{ ref('int_account_months') }}, {{ ref('int_order_lines__priced') }}
with

-- per account and month back, from the monthly sums (macros/account_months.sql): the
-- month's total row for lines, orders and discounts, the category rows for the classes
account_months as not materialized (

    select * from ({{ account_months(horizon) }})

),

-- a month's total row already holds its lines, orders and discounts: no grouping
month_totals as (

    select
        account_id,
        months_ago,
        purchase_lines as order_lines,
        purchase_orders as orders,
        discounted_lines,
        -- discounts are DECIMAL: exact sums, the same in every build
        coalesce(discount_sum, 0) as discount_sum,
        coalesce(discount_square_sum, 0) as discount_square_sum,
        list_price_lines,
        purchase_revenue as revenue
    from account_months
    where is_month_total
        -- returns are not purchases: a month with returns only is no order month
        and purchase_lines > 0

),

month_classes as (

    select
        account_id,
        months_ago,
        sum(purchase_lines) filter (where category_class = 'premium') as premium_lines,
        sum(purchase_lines) filter (where category_class = 'service') as service_lines,
        count(*) filter (where purchase_lines > 0) as categories
    from account_months
    where not is_month_total
    group by 1, 2

),

order_months as (

    select
        t.*,
        coalesce(c.premium_lines, 0) as premium_lines,
        coalesce(c.service_lines, 0) as service_lines,
        c.categories
    from month_totals as t
    left join month_classes as c on c.account_id = t.account_id and c.months_ago = t.months_ago

),

quote_months as (

    select
        account_id,
        datesub('month', cast(created_at as date), {{ as_of() }}) as months_ago,
        count(*) filter (where status in ('won', 'lost')) as quotes_decided,
        count(*) filter (where status = 'lost' and loss_reason = 'price') as quotes_lost_on_price
    from {{ ref('stg_crm__quotes') }}
    where created_at < {{ as_of_end() }}
        and created_at >= {{ as_of_end() }} - interval {{ horizon }} month
    group by 1, 2

),

ticket_months as (

    select
        account_id,
        datesub('month', cast(opened_at as date), {{ as_of() }}) as months_ago,
        count(*) as tickets,
        count(*) filter (where category = 'price') as price_tickets,
        count(*) filter (where priority = 'critical') as critical_tickets
    from {{ ref('stg_crm__support_tickets') }}
    where opened_at < {{ as_of_end() }}
        and opened_at >= {{ as_of_end() }} - interval {{ horizon }} month
    group by 1, 2

),

-- every account and month with orders, quotes or tickets: one row each, the three joined
-- on their keys (full joins, not a distinct union of the keys joined to each again)
joined as (

    select
        coalesce(o.account_id, q.account_id) as account_id,
        coalesce(o.months_ago, q.months_ago) as months_ago,
        o.* exclude (account_id, months_ago),
        q.* exclude (account_id, months_ago)
    from order_months as o
    full join quote_months as q on q.account_id = o.account_id and q.months_ago = o.months_ago

)

select
    coalesce(j.account_id, t.account_id) as account_id,
    cast(coalesce(j.months_ago, t.months_ago) as integer) as months_ago,
    cast(coalesce(j.order_lines, 0) as bigint) as order_lines,
    cast(coalesce(j.orders, 0) as bigint) as orders,
    cast(coalesce(j.discounted_lines, 0) as bigint) as discounted_lines,
    cast(coalesce(j.discount_sum, 0) as double) as discount_sum,
    cast(coalesce(j.discount_square_sum, 0) as double) as discount_square_sum,
    cast(coalesce(j.list_price_lines, 0) as bigint) as list_price_lines,
    cast(coalesce(j.premium_lines, 0) as bigint) as premium_lines,
    cast(coalesce(j.service_lines, 0) as bigint) as service_lines,
    cast(coalesce(j.categories, 0) as bigint) as categories,
    cast(coalesce(j.revenue, 0) as double) as revenue,
    cast(coalesce(j.quotes_decided, 0) as bigint) as quotes_decided,
    cast(coalesce(j.quotes_lost_on_price, 0) as bigint) as quotes_lost_on_price,
    cast(coalesce(t.tickets, 0) as bigint) as tickets,
    cast(coalesce(t.price_tickets, 0) as bigint) as price_tickets,
    cast(coalesce(t.critical_tickets, 0) as bigint) as critical_tickets
from joined as j
full join ticket_months as t on t.account_id = j.account_id and t.months_ago = j.months_ago
