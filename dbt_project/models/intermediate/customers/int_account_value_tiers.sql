-- The 80/20 rule: key accounts are the smallest set of customers whose trailing-12-month
-- revenue together reaches the configured share (default 80 %) of all customers' revenue.
-- The next accounts up to the mid-tier share are `mid`; the rest `tail`. Each customer's
-- share of all customers' revenue is also taken in the recent and prior windows: its
-- trend says whether the account gains or loses weight whatever the market does.
with

customers as (

    select
        a.account_id,
        -- net returns can exceed purchases; such an account holds no share of revenue
        greatest(coalesce(o.revenue_12m, 0), 0) as revenue_12m,
        greatest(coalesce(o.revenue_recent, 0), 0) as revenue_recent,
        greatest(coalesce(o.revenue_prior, 0), 0) as revenue_prior
    from {{ ref('int_accounts') }} as a
    left join {{ ref('int_account_order_behaviour') }} as o on o.account_id = a.account_id
    where a.status = 'customer'

),

ranked as (

    select
        account_id,
        revenue_12m,
        revenue_12m / nullif(sum(revenue_12m) over (), 0) as revenue_share,
        revenue_recent / nullif(sum(revenue_recent) over (), 0) as revenue_share_recent,
        revenue_prior / nullif(sum(revenue_prior) over (), 0) as revenue_share_prior,
        -- share held by the accounts ranked above this one (ties broken by id, stably)
        coalesce(
            sum(revenue_12m) over (
                order by revenue_12m desc, account_id
                rows between unbounded preceding and 1 preceding
            ),
            0
        ) / nullif(sum(revenue_12m) over (), 0) as share_before,
        row_number() over (order by revenue_12m desc, account_id) as revenue_rank
    from customers

)

select
    account_id,
    revenue_rank,
    coalesce(revenue_share, 0) as revenue_share,
    coalesce(share_before, 0) + coalesce(revenue_share, 0) as cumulative_revenue_share,
    case
        when revenue_12m <= 0 then 'tail'
        when share_before < {{ var('key_account_revenue_share') }} then 'key'
        when share_before < {{ var('mid_tier_revenue_share') }} then 'mid'
        else 'tail'
    end as value_tier,
    coalesce(revenue_share_recent, 0) as revenue_share_recent,
    coalesce(revenue_share_prior, 0) as revenue_share_prior,
    coalesce(revenue_share_recent, 0) - coalesce(revenue_share_prior, 0) as revenue_share_trend
from ranked
