-- Survey needs per account, from the latest wave answered within the validity window.
-- People use rating scales differently (some rate everything high, some never use the
-- ends), so each respondent's answers are centred on their own mean and divided by their
-- own spread over the core items; what remains is what matters to them *relative to the
-- rest*. Straight-liners (the same answer to every item) carry no such information and
-- are left out. Respondents of one account and wave are then averaged.
{% set core = ['price', 'quality', 'brand', 'service', 'delivery', 'reliability', 'partnership'] %}
{% set extra = ['innovation', 'digital_maturity', 'willingness_to_invest'] %}
with

responses as (

    select *
    from {{ ref('stg_survey__survey_responses') }}
    where submitted_at < {{ as_of_end() }}
        and submitted_at >= {{ as_of_end() }} - interval {{ var('survey_valid_months') }} month

),

long as (

    unpivot responses
    on {{ (core + extra) | join(', ') }}
    into name item value score

),

respondent_scale as (

    select
        response_id,
        avg(score) as mean_score,
        stddev_pop(score) as score_spread,
        count(*) as answered
    from long
    where item in ('{{ core | join("', '") }}')
    group by response_id

),

normalised as (

    select
        long.response_id,
        long.item,
        (long.score - s.mean_score) / greatest(s.score_spread, 0.5) as relative_importance
    from long
    inner join respondent_scale as s on s.response_id = long.response_id
    where s.answered >= 4 and s.score_spread > 0

),

usable_responses as (

    select
        r.response_id,
        r.account_id,
        r.wave,
        r.submitted_at,
        r.satisfaction,
        r.nps,
        s.score_spread > 0 and s.answered >= 4 as is_usable
    from responses as r
    left join respondent_scale as s on s.response_id = r.response_id

),

waves as (

    select
        account_id,
        wave,
        max(submitted_at) as submitted_at,
        count(*) filter (where is_usable) as usable_respondents,
        count(*) filter (where not coalesce(is_usable, false)) as unusable_respondents,
        avg(satisfaction) as satisfaction,
        avg(nps) as nps,
        dense_rank() over (partition by account_id order by max(submitted_at) desc) as wave_recency
    from usable_responses
    group by account_id, wave

),

wave_needs as (

    select
        u.account_id,
        u.wave,
        {% for item in core + extra -%}
        avg(n.relative_importance) filter (where n.item = '{{ item }}') as need_{{ item }}{{ "," if not loop.last }}
        {% endfor %}
    from usable_responses as u
    inner join normalised as n on n.response_id = u.response_id
    group by u.account_id, u.wave

),

latest as (

    select
        w.account_id,
        w.wave as survey_wave,
        w.submitted_at as survey_submitted_at,
        w.usable_respondents as survey_respondents,
        w.unusable_respondents as survey_unusable_respondents,
        w.satisfaction,
        w.nps,
        {% for item in core + extra -%}
        round(n.need_{{ item }}, 6) as need_{{ item }}{{ "," if not loop.last }}
        {% endfor %}
    from waves as w
    left join wave_needs as n on n.account_id = w.account_id and n.wave = w.wave
    where w.wave_recency = 1

),

previous as (

    select
        w.account_id,
        w.satisfaction as previous_satisfaction,
        round(n.need_price, 6) as previous_need_price
    from waves as w
    left join wave_needs as n on n.account_id = w.account_id and n.wave = w.wave
    where w.wave_recency = 2

)

select
    latest.*,
    latest.need_price - previous.previous_need_price as need_price_change,
    latest.satisfaction - previous.previous_satisfaction as satisfaction_change
from latest
left join previous on previous.account_id = latest.account_id
