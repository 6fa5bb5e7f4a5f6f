{#- DuckDB's memory limit, threads and spill folder for this dbt invocation (on-run-start in
    dbt_project.yml), the values needseg's own connections use: pipelines/transform.py
    passes them as NEEDSEG_DUCKDB_MEMORY_LIMIT, NEEDSEG_DUCKDB_THREADS and (when set)
    NEEDSEG_DUCKDB_TEMP_DIR (pipelines.settings.DuckDBResources). The fallbacks, for a
    `dbt build` by hand, are needseg's defaults on this 2-core machine. Settings are global
    to the database, so once per invocation is enough; the spill folder is set only when it
    differs, since DuckDB refuses to switch it once used, even to itself. -#}
{% macro apply_duckdb_resources() %}
    {%- if execute -%}
        {%- do run_query("set memory_limit = '" ~ env_var('NEEDSEG_DUCKDB_MEMORY_LIMIT', '1GB') ~ "'") -%}
        {%- do run_query("set threads = " ~ (env_var('NEEDSEG_DUCKDB_THREADS', '2') | int)) -%}
        {%- set temp = env_var('NEEDSEG_DUCKDB_TEMP_DIR', '') -%}
        {%- if temp -%}
            {%- set current = run_query("select current_setting('temp_directory')").columns[0].values()[0] -%}
            {%- if current != temp -%}
                {%- do run_query("set temp_directory = '" ~ temp ~ "'") -%}
            {%- endif -%}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}
