-- Incremental, as stg_crm__order_lines: a build reads only the survey responses loaded since the last
-- one (raw is append-only, each load later than the one before), keeps the latest version
-- of each among them and replaces the table's earlier version (delete+insert on response_id), so
-- the latest-version window runs over a month's loads, not every load since the first.
-- A table built before this kept loaded_at catches up by itself (macros/loaded_after_newest.sql).
-- Unique on response_id by construction. `dbt build --full-refresh` rebuilds it from every load.
{{
    config(
        materialized='incremental',
        unique_key='response_id',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
    )
}}
with

source as (

    select * from {{ source('survey', 'survey_responses') }}
    {% if is_incremental() %}
    {{ loaded_after_newest() }}
    {% endif %}

),

latest as (

    select
        response_id,
        account_id,
        respondent_role,
        submitted_at,
        coalesce(wave, strftime(submitted_at, '%Y-%m')) as wave,
        price,
        quality,
        brand,
        service,
        delivery,
        reliability,
        partnership,
        innovation,
        digital_maturity,
        willingness_to_invest,
        satisfaction,
        nps,
        _loaded_at as loaded_at,
        _batch_id as batch_id
    from source
    qualify row_number() over (partition by response_id order by _loaded_at desc, _batch_id desc) = 1

)

select * from latest
