{#- The run's as-of date (YYYY-MM-DD): every model looks at the world as it was known on
    that day. An environment variable, not a dbt var (pipelines/transform.py sets it): dbt
    reuses its saved parse when only env vars change, re-parsing just the files that read
    them, while any change of --vars re-parses the whole project. Unit tests set it with
    `overrides: env_vars: {NEEDSEG_AS_OF: ...}`. -#}
{% macro as_of_day() -%}
    {%- if var('as_of', none) is not none -%}
        {{- exceptions.raise_compiler_error("the as-of date is the environment variable NEEDSEG_AS_OF, not the dbt var as_of (" ~ var('as_of') ~ ")") -}}
    {%- endif -%}
    {{- return(env_var('NEEDSEG_AS_OF', '2026-10-31')) -}}
{%- endmacro %}

{% macro as_of() -%}
    cast('{{ as_of_day() }}' as date)
{%- endmacro %}

{#- End of the as-of day, for comparing timestamps. -#}
{% macro as_of_end() -%}
    ({{ as_of() }} + interval 1 day)
{%- endmacro %}

{#- Start of the window `months_back` months before the as-of day (exclusive bound). -#}
{% macro months_before_as_of(months_back) -%}
    ({{ as_of() }} + interval 1 day - interval {{ months_back }} month)
{%- endmacro %}

{#- A VALUES list of the configured exchange rates, to join on. -#}
{% macro fx_rates_values() -%}
    (values
    {%- for currency, rate in var("fx_rates").items() %}
        ('{{ currency | upper }}', cast({{ rate }} as double)){% if not loop.last %},{% endif %}
    {%- endfor %}
    ) as fx(currency, rate_to_reporting)
{%- endmacro %}

{#- A SQL list literal of configured category names (lower-cased), or NULL-only list. -#}
{% macro category_list(var_name) -%}
    {%- set names = var(var_name) -%}
    {%- if names | length == 0 -%}(null){%- else -%}
    ({%- for n in names -%}'{{ n | lower | replace("'", "''") }}'{% if not loop.last %}, {% endif %}{%- endfor -%})
    {%- endif -%}
{%- endmacro %}

{#- Which comparison windows a row at `months_ago` falls in: the trailing window
    (var trailing_months), the recent one (var recent_months) and the prior one (the
    trailing_months before the recent window). Trends compare recent with prior. -#}
{% macro window_flags(months_ago='months_ago') -%}
    {{ months_ago }} < {{ var('trailing_months') }} as in_trailing,
    {{ months_ago }} < {{ var('recent_months') }} as in_recent,
    {{ months_ago }} >= {{ var('recent_months') }}
        and {{ months_ago }} < {{ var('recent_months') + var('trailing_months') }} as in_prior
{%- endmacro %}

{#- One aggregate per comparison window of `window_flags`, named `<name>_12m` (trailing),
    `<name>_recent` and `<name>_prior`: a proxy is written once, in a call block whose
    argument is the window's flag to filter on, e.g.
        {% call(window) per_window('orders') %}count(distinct order_id) filter (where {{ window }}){% endcall %}
-#}
{% macro per_window(name) -%}
    {%- for flag in ['in_trailing', 'in_recent', 'in_prior'] %}
        {{ caller(flag) | trim }} as {{ name }}_{{ window_suffix(flag) }}{{ "," if not loop.last }}
    {%- endfor %}
{%- endmacro %}

{#- The column suffix of a window flag of `window_flags`: 12m, recent or prior (to refer,
    inside a `per_window` call, to another proxy's column of the same window). -#}
{% macro window_suffix(flag) -%}
    {{ {'in_trailing': '12m', 'in_recent': 'recent', 'in_prior': 'prior'}[flag] }}
{%- endmacro %}
