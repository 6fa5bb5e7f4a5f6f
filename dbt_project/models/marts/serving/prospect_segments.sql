-- Every prospect with its predicted needs segment and the offer to approach it with.
with

predictions as (

    select * from {{ ref('stg_segmentation__prospect_predictions') }}

),

latest as (

    select run_id, as_of from {{ ref('int_segment_runs__latest') }}

),

accounts as (

    select account_id, account_name, account_owner, industry, country
    from {{ ref('customer_features') }}

)

select
    predictions.account_id,
    accounts.account_name,
    predictions.segment_id,
    predictions.segment_name as segment,
    round(predictions.probability, 4) as probability,
    cast(predictions.probabilities as varchar) as probabilities,
    predictions.offer,
    predictions.serve,
    accounts.account_owner,
    accounts.industry,
    accounts.country,
    latest.run_id,
    latest.as_of
from predictions
inner join latest on latest.run_id = predictions.run_id
left join accounts on accounts.account_id = predictions.account_id
