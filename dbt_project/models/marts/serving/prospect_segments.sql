-- Every prospect with its predicted needs segment and the offer to approach it with.
with

predictions as (

    select * from {{ ref('stg_segmentation__prospect_predictions') }}

),

latest as (

    select run_id, as_of from {{ ref('int_segment_runs__latest') }}

)


select
    predictions.account_id,
    predictions.account_name,
    predictions.segment_id,
    predictions.segment_name as segment,
    round(predictions.probability, 4) as probability,
    cast(predictions.probabilities as varchar) as probabilities,
    predictions.offer,
    predictions.serve,
    predictions.account_owner,
    predictions.industry,
    predictions.country,
    latest.run_id,
    latest.as_of
from predictions
inner join latest on latest.run_id = predictions.run_id
