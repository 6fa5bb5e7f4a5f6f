-- Service proxies from support tickets, per account, with the recent-against-prior trend.
-- Counts become monthly rates for the trend, since the windows differ in length.
{% set recent = var('recent_months') %}
{% set trailing = var('trailing_months') %}
with

tickets as (

    select
        *,
        datesub('month', cast(opened_at as date), {{ as_of() }}) as months_ago
    from {{ ref('stg_crm__support_tickets') }}
    where opened_at < {{ as_of_end() }}

),

flagged as (

    select
        *,
        {{ window_flags() }}
    from tickets

),

per_account as (

    select
        account_id,
        {% call(window) per_window('tickets') %}count(*) filter (where {{ window }}){% endcall %},
        {% call(window) per_window('critical_tickets') %}count(*) filter (where {{ window }} and priority = 'critical'){% endcall %},
        {% call(window) per_window('price_tickets') %}count(*) filter (where {{ window }} and category = 'price'){% endcall %},
        count(*) filter (where in_trailing and category = 'quality') as quality_tickets_12m,
        count(*) filter (where in_trailing and category in ('technical', 'delivery')) as service_tickets_12m,
        median(date_diff('minute', opened_at, closed_at) / 60.0) filter (where in_trailing) as median_hours_to_close_12m
    from flagged
    group by account_id

)

select
    account_id,
    tickets_12m,
    tickets_recent,
    tickets_prior,
    critical_tickets_12m,
    critical_tickets_recent,
    critical_tickets_prior,
    critical_tickets_12m / nullif(tickets_12m, 0) as critical_ticket_share_12m,
    price_tickets_12m,
    price_tickets_recent,
    price_tickets_prior,
    price_tickets_12m / nullif(tickets_12m, 0) as price_ticket_share_12m,
    quality_tickets_12m,
    service_tickets_12m / nullif(tickets_12m, 0) as service_ticket_share_12m,
    -- monthly rates, recent against prior
    price_tickets_recent / {{ recent }} - price_tickets_prior / {{ trailing }} as price_tickets_trend,
    critical_tickets_recent / {{ recent }} - critical_tickets_prior / {{ trailing }} as critical_tickets_trend,
    tickets_recent / {{ recent }} - tickets_prior / {{ trailing }} as tickets_trend,
    median_hours_to_close_12m
from per_account
