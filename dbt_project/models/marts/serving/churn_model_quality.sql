-- How well the churn model predicted, measured on the latest run: every earlier run whose
-- outcome window has closed, scored again with what was known on its date, against
-- ranking by recency and by BG/NBD on the same customers.
with

quality as (

    select * from {{ ref('stg_churn__model_quality') }}

),

latest as (

    select max(as_of) as as_of from quality

)

select
    quality.run_id,
    quality.as_of,
    quality.evaluated_as_of,
    quality.metric,
    quality.k,
    quality.model,
    quality.accounts,
    quality.churned,
    quality.needseg,
    quality.recency,
    quality.bgnbd
from quality
inner join latest on latest.as_of = quality.as_of
