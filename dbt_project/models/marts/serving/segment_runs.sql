-- Every segmentation run: what k was chosen and why, the quality figures, the counts, the verdict.
with

runs as (

    select * from {{ ref('stg_segmentation__runs') }}

),

latest as (

    select run_id from {{ ref('int_segment_runs__latest') }}

)

select
    runs.run_id,
    runs.as_of,
    runs.created_at,
    runs.model_version,
    runs.taxonomy,
    runs.taxonomy_digest,
    runs.lineage_id,
    runs.previous_run_id,
    runs.previous_run_id is null as lineage_start,
    runs.taxonomy_change,
    runs.basis,
    runs.k,
    runs.k_reason,
    cast(runs.k_evidence as varchar) as k_evidence,
    runs.silhouette,
    runs.min_jaccard,
    runs.classifier_cv_accuracy,
    runs.key_account_mode,
    cast(runs.key_account_evidence as varchar) as key_account_evidence,
    runs.customers,
    runs.surveyed,
    runs.inferred,
    runs.prospects,
    runs.key_accounts,
    runs.seconds,
    runs.k_preferred,
    runs.verdict,
    cast(runs.verdict_reasons as varchar) as verdict_reasons,
    coalesce(runs.published, true) as published,
    runs.fallback_reason,
    cast(runs.feature_missing as varchar) as feature_missing,
    runs.survey_unusable_customers,
    cast(runs.excluded_respondents as varchar) as excluded_respondents,
    runs.accounts_held,
    runs.run_id = latest.run_id as is_latest
from runs
cross join latest
