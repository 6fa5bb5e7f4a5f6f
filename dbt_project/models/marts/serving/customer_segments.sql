-- One row per customer: its needs segment in the latest run, where it came from (a survey
-- or the behavioural model), how sure we are, why, and who owns the account.
with

assignments as (

    select * from {{ ref('stg_segmentation__assignments') }}

),

probabilities as (

    select
        run_id,
        account_id,
        json_group_object(segment_id, round(probability, 4)) as probabilities
    from {{ ref('stg_segmentation__assignment_probabilities') }}
    group by 1, 2

),

latest as (

    select run_id, as_of from {{ ref('int_segment_runs__latest') }}

)


select
    assignments.account_id,
    assignments.account_name,
    assignments.segment_id,
    assignments.segment_name as segment,
    assignments.segment_source,
    replace(coalesce(assignments.survey_status, 'none'), 'unusable: ', 'unusable - ') as survey_status,
    round(assignments.probability, 4) as probability,
    cast(probabilities.probabilities as varchar) as probabilities,
    assignments.drivers_text as drivers,
    cast(assignments.drivers as varchar) as drivers_json,
    assignments.value_tier,
    assignments.is_key_account,
    assignments.account_owner,
    assignments.country,
    assignments.industry,
    latest.run_id,
    latest.as_of
from assignments
inner join latest on latest.run_id = assignments.run_id
left join probabilities
    on probabilities.run_id = assignments.run_id and probabilities.account_id = assignments.account_id
