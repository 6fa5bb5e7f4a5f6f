with

source as (

    select * from {{ source('survey', 'survey_responses') }}

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
        nps
    from source
    qualify row_number() over (partition by response_id order by _loaded_at desc, _batch_id desc) = 1

)

select * from latest
