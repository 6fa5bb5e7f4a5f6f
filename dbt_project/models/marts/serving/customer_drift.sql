-- Every customer in the latest run: did it change segment, is its buying mix moving
-- towards price-sensitivity or away from partnership, how strong is the evidence, and is
-- it at churn risk - with the evidence in words.
with

drift as (

    select * from {{ ref('stg_drift__customer_drift') }}

),

latest as (

    select run_id from {{ ref('int_segment_runs__latest') }}

)

select
    drift.account_id,
    drift.account_name,
    drift.segment_id,
    drift.segment_name as segment,
    drift.previous_segment_id,
    drift.previous_segment_name as previous_segment,
    drift.migrated,
    drift.migration_kind,
    coalesce(drift.migration_confirmed, false) as migration_confirmed,
    drift.drift_kind,
    drift.toward_segment_id,
    drift.toward_segment_name as toward_segment,
    drift.drift_z,
    drift.drift_shift,
    drift.early_warning,
    coalesce(drift.drift_flag, false) as drift_flag,
    drift.behaviour_probability_before,
    drift.behaviour_probability_now,
    drift.revenue_trend,
    drift.satisfaction_change,
    drift.churn_risk_score,
    drift.is_churn_risk,
    cast(drift.churn_risk_reasons as varchar) as churn_risk_reasons,
    drift.lapse_risk,
    drift.churn_probability,
    drift.churn_rank,
    drift.churn_reasons,
    drift.churn_model,
    coalesce(drift.lapsing, false) as lapsing,
    drift.evidence_text as evidence,
    cast(drift.components as varchar) as evidence_json,
    drift.account_owner,
    drift.run_id,
    drift.as_of
from drift
inner join latest on latest.run_id = drift.run_id
