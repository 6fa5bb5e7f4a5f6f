select * from {{ source('drift', 'population_changes') }}
