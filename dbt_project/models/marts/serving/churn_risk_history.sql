-- The churn model's verdict on every customer in every run: calibrated probability of no
-- order within the horizon, rank and reasons in words, so analysts can check the model
-- against what happened afterwards.
with

history as (

    select * from {{ ref('stg_churn__risk_history') }}

)

select
    account_id,
    as_of,
    churn_probability,
    rank,
    reasons,
    model,
    eligible,
    lapsing,
    run_id
from history
