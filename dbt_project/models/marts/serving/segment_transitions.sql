-- The transition matrix between consecutive runs: how many accounts went from each
-- segment of the previous run to each segment of the next (accounts in both runs). Each
-- side is named from its own run (an emerging segment's name follows its centre), and
-- only runs of one identity lineage are compared: across a taxonomy change a segment id
-- means something else.
with

transitions as (

    select * from {{ ref('stg_drift__segment_transitions') }}

),

runs as (

    select run_id, previous_run_id from {{ ref('stg_segmentation__runs') }}

),

names as (

    select run_id, segment_id, segment_name
    from {{ ref('stg_segmentation__segment_definitions') }}
    qualify row_number() over (partition by run_id, segment_id order by population) = 1

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
inner join runs
    on runs.run_id = transitions.run_id and runs.previous_run_id = transitions.previous_run_id
left join names as from_names
    on from_names.run_id = transitions.previous_run_id and from_names.segment_id = transitions.from_segment_id
left join names as to_names
    on to_names.run_id = transitions.run_id and to_names.segment_id = transitions.to_segment_id
