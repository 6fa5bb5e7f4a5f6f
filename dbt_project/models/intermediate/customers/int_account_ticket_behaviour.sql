-- Service proxies from support tickets, per account, with the recent-against-prior trend.
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

)

select
    account_id,
    count(*) filter (where in_trailing) as tickets_12m,
    count(*) filter (where in_trailing and priority = 'critical') as critical_tickets_12m,
    count(*) filter (where in_trailing and priority = 'critical')
        / nullif(count(*) filter (where in_trailing), 0) as critical_ticket_share_12m,
    count(*) filter (where in_trailing and category = 'price') as price_tickets_12m,
    count(*) filter (where in_trailing and category = 'price')
        / nullif(count(*) filter (where in_trailing), 0) as price_ticket_share_12m,
    count(*) filter (where in_trailing and category = 'quality') as quality_tickets_12m,
    count(*) filter (where in_trailing and category in ('technical', 'delivery'))
        / nullif(count(*) filter (where in_trailing), 0) as service_ticket_share_12m,
    -- monthly rates, recent against prior
    count(*) filter (where in_recent and category = 'price') / {{ recent }}
        - count(*) filter (where in_prior and category = 'price') / {{ trailing }} as price_tickets_trend,
    count(*) filter (where in_recent) / {{ recent }}
        - count(*) filter (where in_prior) / {{ trailing }} as tickets_trend,
    median(date_diff('minute', opened_at, closed_at) / 60.0) filter (where in_trailing) as median_hours_to_close_12m
from flagged
group by account_id
