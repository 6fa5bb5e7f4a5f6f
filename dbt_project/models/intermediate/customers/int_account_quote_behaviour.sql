-- Price-sensitivity proxies from quotes: how often quotes are lost, and lost on price.
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

),

per_account as (

    select
        account_id,
        count(*) filter (where in_trailing) as quotes_12m,
        count(*) filter (where in_trailing and status = 'lost') as quotes_lost_12m,
        count(*) filter (where in_trailing and status = 'lost' and loss_reason = 'price') as quotes_lost_on_price_12m,
        count(*) filter (where in_trailing and status = 'won')
            / nullif(count(*) filter (where in_trailing and is_decided), 0) as quote_win_rate_12m,
        -- among decided quotes: an open quote has not been lost yet
        {% call(window) per_window('lost_on_price_share') %}
            count(*) filter (where {{ window }} and status = 'lost' and loss_reason = 'price')
                / nullif(count(*) filter (where {{ window }} and is_decided), 0)
        {% endcall %}
    from flagged
    group by account_id

)

select
    account_id,
    quotes_12m,
    quotes_lost_12m,
    quotes_lost_on_price_12m,
    quote_win_rate_12m,
    lost_on_price_share_12m,
    lost_on_price_share_recent,
    lost_on_price_share_prior,
    lost_on_price_share_recent - lost_on_price_share_prior as lost_on_price_share_trend
from per_account
