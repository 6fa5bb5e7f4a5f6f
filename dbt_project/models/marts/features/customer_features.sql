-- One row per account known on the as-of date: firmographics, value tier, every
-- behavioural needs proxy with its trend, and survey needs where answered. The
-- segmentation step reads this table; analysts can too.
with

accounts as (

    select * from {{ ref('int_accounts') }}

),

orders as (

    select * from {{ ref('int_account_order_behaviour') }}

),

tickets as (

    select * from {{ ref('int_account_ticket_behaviour') }}

),

quotes as (

    select * from {{ ref('int_account_quote_behaviour') }}

),

survey as (

    select * from {{ ref('int_survey_needs') }}

),

tiers as (

    select * from {{ ref('int_account_value_tiers') }}

)

select
    accounts.account_id,
    accounts.account_name,
    accounts.status,
    accounts.industry,
    accounts.country,
    cast(accounts.employees as bigint) as employees,
    cast(accounts.annual_revenue as double) as annual_revenue,
    accounts.customer_since,
    cast(accounts.tenure_months as bigint) as tenure_months,
    accounts.account_owner,
    accounts.parent_account_id,
    {{ as_of() }} as as_of,

    -- value
    cast(coalesce(orders.revenue_12m, 0) as double) as revenue_12m,
    cast(coalesce(orders.revenue_recent, 0) as double) as revenue_recent,
    cast(coalesce(orders.revenue_prior, 0) as double) as revenue_prior,
    cast(orders.revenue_trend as double) as revenue_trend,
    cast(coalesce(tiers.revenue_share, 0) as double) as revenue_share_12m,
    cast(coalesce(tiers.revenue_share_trend, 0) as double) as revenue_share_trend,
    cast(tiers.revenue_rank as bigint) as revenue_rank,
    case
        when accounts.status = 'customer' then tiers.value_tier
        else accounts.status
    end as value_tier,

    -- ordering behaviour (loyalty & partnership)
    cast(coalesce(orders.orders_12m, 0) as bigint) as orders_12m,
    cast(coalesce(orders.orders_recent, 0) as bigint) as orders_recent,
    cast(coalesce(orders.orders_prior, 0) as bigint) as orders_prior,
    cast(orders.average_order_value_12m as double) as average_order_value_12m,
    orders.first_order_date,
    orders.last_order_date,
    cast(orders.days_since_last_order as bigint) as days_since_last_order,
    cast(coalesce(orders.active_months_12m, 0) as bigint) as active_months_12m,
    cast(coalesce(orders.observed_months_12m, {{ var('trailing_months') }}) as bigint) as observed_months_12m,
    cast(coalesce(orders.active_month_share_12m, 0) as double) as active_month_share_12m,
    cast(coalesce(orders.orders_per_month_12m, 0) as double) as orders_per_month_12m,
    cast(orders.order_regularity_12m as double) as order_regularity_12m,
    cast(orders.order_regularity_trend as double) as order_regularity_trend,
    cast(coalesce(orders.categories_12m, 0) as bigint) as categories_12m,
    cast(orders.category_breadth_12m as double) as category_breadth_12m,
    cast(orders.category_breadth_trend as double) as category_breadth_trend,
    cast(orders.web_order_share_12m as double) as web_order_share_12m,

    -- price
    cast(orders.discount_depth_12m as double) as discount_depth_12m,
    cast(orders.discount_depth_recent as double) as discount_depth_recent,
    cast(orders.discount_depth_prior as double) as discount_depth_prior,
    cast(orders.discount_depth_trend as double) as discount_depth_trend,
    cast(orders.list_price_share_12m as double) as list_price_share_12m,
    cast(orders.list_price_share_trend as double) as list_price_share_trend,
    cast(coalesce(quotes.quotes_12m, 0) as bigint) as quotes_12m,
    cast(quotes.quote_win_rate_12m as double) as quote_win_rate_12m,
    cast(coalesce(quotes.quotes_lost_on_price_12m, 0) as bigint) as quotes_lost_on_price_12m,
    cast(quotes.lost_on_price_share_12m as double) as lost_on_price_share_12m,
    cast(quotes.lost_on_price_share_trend as double) as lost_on_price_share_trend,
    cast(coalesce(tickets.price_tickets_12m, 0) as bigint) as price_tickets_12m,
    cast(tickets.price_ticket_share_12m as double) as price_ticket_share_12m,
    cast(tickets.price_tickets_trend as double) as price_tickets_trend,

    -- service
    cast(coalesce(tickets.tickets_12m, 0) as bigint) as tickets_12m,
    cast(coalesce(tickets.tickets_12m, 0) / nullif(orders.orders_12m, 0) as double) as tickets_per_order_12m,
    -- tickets per order in the recent window minus the prior one; null unless both had orders
    cast(
        coalesce(tickets.tickets_recent, 0) / nullif(orders.orders_recent, 0)
        - coalesce(tickets.tickets_prior, 0) / nullif(orders.orders_prior, 0)
        as double
    ) as tickets_per_order_trend,
    cast(coalesce(tickets.critical_tickets_12m, 0) as bigint) as critical_tickets_12m,
    cast(tickets.critical_ticket_share_12m as double) as critical_ticket_share_12m,
    cast(tickets.critical_tickets_trend as double) as critical_tickets_trend,
    cast(tickets.service_ticket_share_12m as double) as service_ticket_share_12m,
    cast(tickets.tickets_trend as double) as tickets_trend,
    cast(orders.service_revenue_share_12m as double) as service_revenue_share_12m,
    cast(orders.service_revenue_share_trend as double) as service_revenue_share_trend,
    cast(tickets.median_hours_to_close_12m as double) as median_hours_to_close_12m,

    -- quality & brand
    cast(orders.premium_share_12m as double) as premium_share_12m,
    cast(orders.premium_share_trend as double) as premium_share_trend,
    cast(orders.return_share_12m as double) as return_share_12m,
    cast(coalesce(tickets.quality_tickets_12m, 0) as bigint) as quality_tickets_12m,

    -- survey (relative importance per respondent, averaged per account)
    survey.account_id is not null and survey.survey_respondents > 0 as is_surveyed,
    survey.survey_wave,
    survey.survey_submitted_at,
    cast(coalesce(survey.survey_respondents, 0) as bigint) as survey_respondents,
    cast(coalesce(survey.survey_straightlining_respondents, 0) as bigint) as survey_straightlining_respondents,
    cast(coalesce(survey.survey_too_few_items_respondents, 0) as bigint) as survey_too_few_items_respondents,
    cast(survey.need_price as double) as need_price,
    cast(survey.need_quality as double) as need_quality,
    cast(survey.need_brand as double) as need_brand,
    cast(survey.need_service as double) as need_service,
    cast(survey.need_delivery as double) as need_delivery,
    cast(survey.need_reliability as double) as need_reliability,
    cast(survey.need_partnership as double) as need_partnership,
    cast(survey.need_innovation as double) as need_innovation,
    cast(survey.need_digital_maturity as double) as need_digital_maturity,
    cast(survey.need_willingness_to_invest as double) as need_willingness_to_invest,
    survey.previous_survey_wave,
    cast(survey.need_price_change as double) as need_price_change,
    cast(survey.need_quality_change as double) as need_quality_change,
    cast(survey.need_brand_change as double) as need_brand_change,
    cast(survey.need_service_change as double) as need_service_change,
    cast(survey.need_delivery_change as double) as need_delivery_change,
    cast(survey.need_reliability_change as double) as need_reliability_change,
    cast(survey.need_partnership_change as double) as need_partnership_change,
    survey.satisfaction_wave,
    cast(survey.satisfaction as double) as satisfaction,
    cast(survey.satisfaction_change as double) as satisfaction_change,
    cast(survey.nps as double) as nps

from accounts
left join orders on orders.account_id = accounts.account_id
left join tickets on tickets.account_id = accounts.account_id
left join quotes on quotes.account_id = accounts.account_id
left join survey on survey.account_id = accounts.account_id
left join tiers on tiers.account_id = accounts.account_id
