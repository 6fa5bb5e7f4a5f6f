{#- Fails for every combination of `columns` that occurs more than once. With
    `recent_column` (a load timestamp), only the combinations of the rows loaded within a
    day of the latest load are checked, against every row: on a table that grows by a
    month at a time, the new rows cannot repeat a key, without grouping the whole table. -#}
{% test unique_combination(model, columns, recent_column=none) %}
{%- set key = columns | join(', ') %}
{%- if recent_column %}
with recent as (
    select distinct {{ key }}
    from {{ model }}
    where {{ recent_column }} >= (select max({{ recent_column }}) from {{ model }}) - interval 1 day
)
select {{ key }}, count(*) as occurrences
from {{ model }}
semi join recent using ({{ key }})
{%- else %}
select {{ key }}, count(*) as occurrences
from {{ model }}
{%- endif %}
group by {{ key }}
having count(*) > 1
{% endtest %}
