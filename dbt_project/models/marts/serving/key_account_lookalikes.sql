-- Non-key customers that buy the way key accounts of their segment do (regularity,
-- breadth, mix, service use - not size): candidates to deepen the relationship.
with

lookalikes as (

    select * from {{ ref('stg_segmentation__lookalikes') }}

),

latest as (

    select run_id, as_of from {{ ref('int_segment_runs__latest') }}

),

segment_names as (

    select run_id, segment_id, segment_name
    from {{ ref('stg_segmentation__segment_definitions') }}
    qualify row_number() over (partition by run_id, segment_id order by population) = 1

)

select
    lookalikes.account_id,
    lookalikes.account_name,
    lookalikes.segment_id,
    segment_names.segment_name as segment,
    lookalikes.similarity,
    lookalikes.rank_in_segment,
    lookalikes.nearest_key_account_id,
    lookalikes.nearest_key_account_name,
    lookalikes.revenue_12m,
    lookalikes.key_account_median_revenue_12m,
    lookalikes.account_owner,
    latest.run_id,
    latest.as_of
from lookalikes
inner join latest on latest.run_id = lookalikes.run_id
left join segment_names
    on segment_names.run_id = lookalikes.run_id and segment_names.segment_id = lookalikes.segment_id
