select * from {{ source('drift', 'segment_transitions') }}
