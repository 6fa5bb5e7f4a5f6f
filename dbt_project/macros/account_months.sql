{#- Order lines priced in the reporting currency: the one definition of a line's money,
    shared by int_order_lines__priced and int_account_months. Money is DECIMAL(38, 6),
    rounded once per line; discounts DECIMAL(18, 9): sums of decimals are exact in any
    order, so a window summed from monthly sums equals the sum over its lines, to the bit.
    Expects `lines` (stg_crm__order_lines) joined to `fx_rates_values()`. -#}
{% macro priced_line_amounts(lines='lines') -%}
    cast({{ lines }}.net_amount * fx.rate_to_reporting as decimal(38, 6)) as revenue,
    cast({{ lines }}.list_amount * fx.rate_to_reporting as decimal(38, 6)) as list_revenue,
    -- DECIMAL too (to 1e-9), so discount sums are exact in any order
    case
        when {{ lines }}.list_price > 0 then cast(greatest(1 - {{ lines }}.net_price / {{ lines }}.list_price, 0) as decimal(18, 9))
    end as discount
{%- endmacro %}

{#- The sums and counts of priced lines that every order window is added up from, per
    account, month (`month`: a column of `lines`) and product category (with
    `extra_keys`, e.g. its class), and one total row per account and month
    (product_category null, is_month_total): the category rows summed, and the distinct
    order counts, which add up across months (an order is placed on one day) but not across
    categories. `lines` is a relation of priced lines (order_id, account_id, order_date,
    product_category, is_return, channel, revenue, list_revenue, discount, loaded_at). A
    measure is null, not 0, when no line qualifies, as a sum over a window's lines would be.
    Distinct counts come from a per-order aggregate, not count(distinct) per group: the same
    counts at a fraction of the cost. -#}
{% macro account_month_rows(lines, month, extra_keys=[]) -%}
    {%- set keys = ['account_id', month, 'product_category'] + extra_keys -%}
    {%- set sums = ['lines', 'revenue', 'purchase_revenue', 'return_revenue', 'list_price_revenue',
                    'priced_purchase_revenue', 'discount_list_revenue', 'priced_list_revenue',
                    'purchase_lines', 'discounted_lines', 'discount_sum', 'discount_square_sum',
                    'list_price_lines'] -%}
    with
    per_category as (
        select
            {{ keys | join(', ') }},
            count(*) as lines,
            sum(revenue) as revenue,
            sum(revenue) filter (where not is_return) as purchase_revenue,
            sum(revenue) filter (where is_return) as return_revenue,
            -- revenue bought at list price, and the revenue whose list price is known
            sum(revenue) filter (where not is_return and discount <= 0.005) as list_price_revenue,
            sum(revenue) filter (where not is_return and discount is not null) as priced_purchase_revenue,
            -- discount weighted by list value: numerator and denominator
            sum(discount * list_revenue) filter (where not is_return) as discount_list_revenue,
            sum(list_revenue) filter (where not is_return and discount is not null) as priced_list_revenue,
            count(*) filter (where not is_return) as purchase_lines,
            count(discount) filter (where not is_return) as discounted_lines,
            sum(discount) filter (where not is_return) as discount_sum,
            sum(discount * discount) filter (where not is_return) as discount_square_sum,
            count(*) filter (where not is_return and discount <= 0.005) as list_price_lines,
            min(order_date) as first_order_date,
            max(order_date) as last_order_date,
            max(loaded_at) as loaded_at
        from {{ lines }}
        group by {{ keys | join(', ') }}
    ),
    per_order as (
        select
            account_id,
            {{ month }},
            order_id,
            bool_or(channel = 'web') as is_web,
            bool_or(not is_return) as is_purchase
        from {{ lines }}
        group by account_id, {{ month }}, order_id
    ),
    order_counts as (
        select
            account_id,
            {{ month }},
            count(*) as orders,
            count(*) filter (where is_web) as web_orders,
            count(*) filter (where is_purchase) as purchase_orders
        from per_order
        group by account_id, {{ month }}
    ),
    totals as (
        select
            account_id,
            {{ month }},
            {%- for column in sums %}
            {%- if column.endswith('lines') %}
            cast(sum({{ column }}) as bigint) as {{ column }},
            {%- else %}
            sum({{ column }}) as {{ column }},
            {%- endif %}
            {%- endfor %}
            min(first_order_date) as first_order_date,
            max(last_order_date) as last_order_date,
            max(loaded_at) as loaded_at
        from per_category
        group by account_id, {{ month }}
    )
    select
        {{ keys | join(', ') }},
        false as is_month_total,
        {{ sums | join(', ') }},
        cast(null as bigint) as orders,
        cast(null as bigint) as web_orders,
        cast(null as bigint) as purchase_orders,
        first_order_date,
        last_order_date,
        loaded_at
    from per_category
    union all by name
    select
        t.*,
        true as is_month_total,
        o.orders,
        o.web_orders,
        o.purchase_orders
    from totals as t
    inner join order_counts as o on o.account_id = t.account_id and o.{{ month }} = t.{{ month }}
{%- endmacro %}

{#- True when the as-of date is the last day of its month (the monthly cycle's dates):
    then a line's months_ago is the calendar months between its month and the as-of month,
    for every day of the month, and windows can be added up from calendar-month sums. -#}
{% macro as_of_is_month_end() -%}
    {%- set day = modules.datetime.date.fromisoformat(as_of_day()) -%}
    {{ return((day + modules.datetime.timedelta(days=1)).day == 1) }}
{%- endmacro %}

{#- Per account and month back from the as-of date (months_ago), the measures of
    `account_month_rows` per product category (with its class; is_month_total false)
    and for the month as a whole (product_category null, is_month_total true: the rows
    whose order counts hold). Lines up to the as-of date only.

    On a month-end as-of date these are read from int_account_months (incremental: a new
    month costs its own lines) and the category classes of int_product_categories joined
    on; any other as-of date groups int_order_lines__priced directly. Both give the same
    rows. `months_back`: only the months_ago below it. A model calling this names both in a
    `-- depends_on:` comment, since dbt sees
    only the refs of the branch its parse takes. -#}
{% macro account_months(months_back=none) -%}
    {%- if as_of_is_month_end() %}
    select
        m.account_id,
        cast(datesub('month', m.order_month, date_trunc('month', {{ as_of() }})) as integer) as months_ago,
        m.product_category,
        c.category_class,
        m.is_month_total,
        m.* exclude (account_id, order_month, product_category, is_month_total, loaded_at, pricing)
    from {{ ref('int_account_months') }} as m
    left join {{ ref('int_product_categories') }} as c on c.product_category = m.product_category
    where m.order_month <= date_trunc('month', {{ as_of() }})
    {%- if months_back is not none %}
        -- on the month column itself, so that the scan skips older row groups
        and m.order_month > date_trunc('month', {{ as_of() }}) - interval {{ months_back }} month
    {%- endif %}
    {%- else %}
    {%- set lines -%}
        (select *, null::timestamp as loaded_at from {{ ref('int_order_lines__priced') }}
        {%- if months_back is not none %} where months_ago < {{ months_back }}{% endif %})
    {%- endset %}
    select * exclude (loaded_at) replace (cast(months_ago as integer) as months_ago)
    from (
        {{ account_month_rows(lines, 'months_ago', ['category_class']) }}
    )
    {%- endif %}
{%- endmacro %}
