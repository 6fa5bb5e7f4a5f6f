-- Survey needs per account, from the latest usable wave within the validity window.
-- People use rating scales differently (some rate everything high, some never use the
-- ends), so each respondent's answers are centred on their own mean and divided by their
-- own spread over the core items; what remains is what matters to them *relative to the
-- rest*. Respondents of one account and wave are then averaged.
--
-- Usability rules (README, config/sources/README.md): a respondent is usable when they
-- answered at least 4 of the 7 core items ("too few items" otherwise) and did not give the
-- same answer to every core item they answered ("straight-lining": no relative importance
-- can be read from it). Unusable respondents are counted per reason; an account whose
-- every respondent in the validity window was unusable is published as surveyed but
-- unusable (its needs are inferred from behaviour, and the run says so).
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

    -- scores as exact decimals: sums and spreads below do not depend on the order threads
    -- add in, so every build of the same answers gives the same needs to the bit
    select response_id, item, cast(score as decimal(18, 9)) as score
    from (
        unpivot responses
        on {{ (core + extra) | join(', ') }}
        into name item value score
    )

),

respondent_scale as (

    select
        response_id,
        avg(score) as mean_score,
        -- the population standard deviation, sqrt(n * sum(x^2) - sum(x)^2) / n, from exact sums
        sqrt(count(*) * sum(score * score) - sum(score) * sum(score)) / count(*) as score_spread,
        count(*) < 4 as has_too_few_items,
        count(*) >= 4 and count(*) * sum(score * score) - sum(score) * sum(score) = 0 as is_straightlining,
        -- usable: enough core items answered, and not all the same (a straight-liner)
        count(*) >= 4 and count(*) * sum(score * score) - sum(score) * sum(score) > 0 as is_usable
    from long
    where item in ('{{ core | join("', '") }}')
    group by response_id

),

normalised as (

    select
        long.response_id,
        long.item,
        cast((long.score - s.mean_score) / greatest(s.score_spread, 0.5) as decimal(18, 9)) as relative_importance
    from long
    inner join respondent_scale as s on s.response_id = long.response_id
    where s.is_usable

),

usable_responses as (

    select
        r.response_id,
        r.account_id,
        r.wave,
        r.submitted_at,
        r.satisfaction,
        r.nps,
        coalesce(s.is_usable, false) as is_usable,
        coalesce(s.is_straightlining, false) as is_straightlining,
        -- a respondent without any core answer has no row in respondent_scale
        coalesce(s.has_too_few_items, true) as has_too_few_items
    from responses as r
    left join respondent_scale as s on s.response_id = r.response_id

),

waves as (

    select
        account_id,
        wave,
        max(submitted_at) as submitted_at,
        count(*) filter (where is_usable) as usable_respondents,
        count(*) filter (where not is_usable) as unusable_respondents,
        avg(cast(satisfaction as decimal(18, 9))) as satisfaction,
        avg(nps) as nps
    from usable_responses
    group by account_id, wave

),

-- Needs come from the latest wave with a usable respondent: a wave of straight-liners
-- says nothing about needs, so it does not hide the wave before it. Satisfaction and NPS
-- are single answers that straight-lining does not spoil: they come from the latest wave.
answered_waves as (

    select
        *,
        row_number() over (partition by account_id order by submitted_at desc, wave desc) as answered_recency
    from waves

),

usable_waves as (

    select
        *,
        row_number() over (partition by account_id order by submitted_at desc, wave desc) as usable_recency
    from waves
    where usable_respondents > 0

),

wave_needs as (

    select
        u.account_id,
        u.wave,
        {% for item in core + extra -%}
        round(avg(n.relative_importance) filter (where n.item = '{{ item }}'), 6) as need_{{ item }}{{ "," if not loop.last }}
        {% endfor %}
    from usable_responses as u
    inner join normalised as n on n.response_id = u.response_id
    group by u.account_id, u.wave

),

needs as (

    select
        w.account_id,
        w.usable_recency,
        w.wave,
        w.submitted_at,
        w.usable_respondents,
        w.unusable_respondents,
        n.* exclude (account_id, wave)
    from usable_waves as w
    inner join wave_needs as n on n.account_id = w.account_id and n.wave = w.wave
    where w.usable_recency <= 2

),

answers as (

    select account_id, answered_recency, wave, satisfaction, nps
    from answered_waves
    where answered_recency <= 2

),

-- unusable respondents in the validity window, per reason
unusable as (

    select
        account_id,
        count(*) filter (where is_straightlining) as straightlining_respondents,
        count(*) filter (where has_too_few_items) as too_few_items_respondents
    from usable_responses
    where not is_usable
    group by account_id

)

select
    latest_answers.account_id,
    latest_needs.wave as survey_wave,
    latest_needs.submitted_at as survey_submitted_at,
    coalesce(latest_needs.usable_respondents, 0) as survey_respondents,
    latest_needs.unusable_respondents as survey_unusable_respondents,
    coalesce(unusable.straightlining_respondents, 0) as survey_straightlining_respondents,
    coalesce(unusable.too_few_items_respondents, 0) as survey_too_few_items_respondents,
    {% for item in core + extra -%}
    latest_needs.need_{{ item }},
    {% endfor -%}
    -- how each core need moved since the usable wave before (null without one): the needs
    -- evidence of a drift (pipelines/drift/detect.py, the stated-needs test)
    previous_needs.wave as previous_survey_wave,
    {% for item in core -%}
    latest_needs.need_{{ item }} - previous_needs.need_{{ item }} as need_{{ item }}_change,
    {% endfor -%}
    latest_answers.wave as satisfaction_wave,
    latest_answers.satisfaction,
    latest_answers.nps,
    latest_answers.satisfaction - previous_answers.satisfaction as satisfaction_change
from answers as latest_answers
left join answers as previous_answers
    on previous_answers.account_id = latest_answers.account_id and previous_answers.answered_recency = 2
left join needs as latest_needs
    on latest_needs.account_id = latest_answers.account_id and latest_needs.usable_recency = 1
left join needs as previous_needs
    on previous_needs.account_id = latest_answers.account_id and previous_needs.usable_recency = 2
left join unusable on unusable.account_id = latest_answers.account_id
where latest_answers.answered_recency = 1
