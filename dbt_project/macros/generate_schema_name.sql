{#- Use the folder's schema name as it is (staging, intermediate, marts), not prefixed with
    the target schema: analysts and needseg's Python steps address these names directly. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
