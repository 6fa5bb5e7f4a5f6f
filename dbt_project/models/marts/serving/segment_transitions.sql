-- The transition matrix between consecutive runs: how many accounts went from each
-- segment of the previous run to each segment of the next (accounts in both runs).
with

transitions as (

    select * from {{ ref('stg_drift__segment_transitions') }}

),

names as (

    select segment_id, any_value(segment_name) as segment_name
    from {{ ref('stg_segmentation__segment_definitions') }}
    group by segment_id

)

select
    transitions.run_id,
    transitions.previous_run_id,
    transitions.as_of,
    transitions.from_segment_id,
    from_names.segment_name as from_segment,
    transitions.to_segment_id,
    to_names.segment_name as to_segment,
    transitions.accounts,
    transitions.share_of_from,
    transitions.from_segment_id = transitions.to_segment_id as stayed
from transitions
left join names as from_names on from_names.segment_id = transitions.from_segment_id
left join names as to_names on to_names.segment_id = transitions.to_segment_id
