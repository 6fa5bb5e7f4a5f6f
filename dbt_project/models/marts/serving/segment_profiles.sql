-- What sets each segment of the latest run apart: per dimension (needs, behaviour, value)
-- the segment's mean against everyone's, and the difference in standard deviations.
with

profiles as (

    select * from {{ ref('stg_segmentation__profiles') }}

),

definitions as (

    select run_id, segment_id, segment_name
    from {{ ref('stg_segmentation__segment_definitions') }}
    qualify row_number() over (partition by run_id, segment_id order by population) = 1

),

latest as (

    select run_id, as_of from {{ ref('int_segment_runs__latest') }}

)

select
    profiles.segment_id,
    definitions.segment_name as segment,
    profiles.population,
    profiles.dimension,
    profiles.kind,
    profiles.segment_value,
    profiles.overall_value,
    profiles.index_vs_overall,
    latest.run_id,
    latest.as_of
from profiles
inner join latest on latest.run_id = profiles.run_id
left join definitions on definitions.run_id = profiles.run_id and definitions.segment_id = profiles.segment_id
