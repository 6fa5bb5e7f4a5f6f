-- Price-sensitivity proxies from quotes: how often quotes are lost, and lost on price.
{% set recent = var('recent_months') %}
{% set trailing = var('trailing_months') %}
with

quotes as (

    select
        *,
        datesub('month', cast(created_at as date), {{ as_of() }}) as months_ago
    from {{ ref('stg_crm__quotes') }}
    where created_at < {{ as_of_end() }}

),

flagged as (

    select
        *,
        {{ window_flags() }},
        status in ('won', 'lost') as is_decided
    from quotes

)

select
    account_id,
    count(*) filter (where in_trailing) as quotes_12m,
    count(*) filter (where in_trailing and status = 'lost') as quotes_lost_12m,
    count(*) filter (where in_trailing and status = 'lost' and loss_reason = 'price') as quotes_lost_on_price_12m,
    count(*) filter (where in_trailing and status = 'won')
        / nullif(count(*) filter (where in_trailing and is_decided), 0) as quote_win_rate_12m,
    count(*) filter (where in_trailing and status = 'lost' and loss_reason = 'price')
        / nullif(count(*) filter (where in_trailing and is_decided), 0) as lost_on_price_share_12m,
    count(*) filter (where in_recent and status = 'lost' and loss_reason = 'price')
        / nullif(count(*) filter (where in_recent and is_decided), 0)
    - count(*) filter (where in_prior and status = 'lost' and loss_reason = 'price')
        / nullif(count(*) filter (where in_prior and is_decided), 0) as lost_on_price_share_trend
from flagged
group by account_id
