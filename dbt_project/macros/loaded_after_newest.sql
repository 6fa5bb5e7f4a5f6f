{#- The incremental staging models' filter on their raw source: the rows loaded after the
    newest the table holds (raw is append-only, each load later than the one before). A
    table built before it kept `loaded_at` (stg_crm__quotes and stg_crm__support_tickets
    were plain tables) has no such column: its build then reads every load once, and
    `on_schema_change='append_new_columns'` adds the column, so no `--full-refresh` is
    needed. -#}
{% macro loaded_after_newest() -%}
    {#- in a dbt unit test `this` is the name of its fixture, a string: the filter applies -#}
    {%- set columns = [] if this is string else adapter.get_columns_in_relation(this) | map(attribute='name') | map('lower') | list -%}
    {%- if 'loaded_at' in columns or not columns %}
    where _loaded_at > (select coalesce(max(loaded_at), timestamp '0001-01-01') from {{ this }})
    {%- endif %}
{%- endmacro %}
