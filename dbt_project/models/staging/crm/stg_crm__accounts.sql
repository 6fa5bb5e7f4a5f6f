with

source as (

    select * from {{ source('crm', 'accounts') }}

),

renamed as (

    select
        account_id,
        trim(account_name) as account_name,
        lower(status) as status,
        industry,
        upper(country) as country,
        employees,
        cast(annual_revenue as double) as annual_revenue,
        customer_since,
        lower(account_owner) as account_owner,
        nullif(parent_account_id, '') as parent_account_id,
        updated_at,
        _source as source_system,
        _batch_id as batch_id,
        _loaded_at as loaded_at
    from source

),

-- the same version loaded twice (re-sent file with other rows) counts once
deduplicated as (

    select *
    from renamed
    qualify row_number() over (partition by account_id, updated_at order by loaded_at desc, batch_id desc) = 1

)

select * from deduplicated
