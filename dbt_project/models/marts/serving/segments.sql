-- The segments of the latest run: who they are, how big and stable, and the playbook.
with

definitions as (

    select * from {{ ref('stg_segmentation__segment_definitions') }}

),

latest as (

    select run_id, as_of from {{ ref('int_segment_runs__latest') }}

)

select
    definitions.segment_id,
    definitions.segment_name as segment,
    definitions.population,
    definitions.taxonomy_id,
    definitions.is_emerging,
    definitions.description,
    definitions.size,
    definitions.fitted,
    definitions.jaccard as stability_jaccard,
    definitions.similarity as taxonomy_similarity,
    definitions.aligned_from,
    definitions.renamed_from,
    definitions.offer,
    definitions.serve,
    definitions.action,
    cast(definitions.centre as varchar) as centre,
    latest.run_id,
    latest.as_of
from definitions
inner join latest on latest.run_id = definitions.run_id
