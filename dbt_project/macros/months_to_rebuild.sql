{#- The months an incremental model by month (int_account_months, int_category_price_months)
    recomputes: those whose count of lines in staging (`current`: order_month, lines)
    differs from the table's (`stored`: order_month, lines) - a re-sent line that moved
    between months - and those with a staged line loaded after the table's newest row (a
    new month, or a line re-sent into an old one). -#}
{% macro months_to_rebuild(current, stored, staged) -%}
    select c.order_month
    from {{ current }} as c
    left join {{ stored }} as s on s.order_month = c.order_month
    where s.lines is distinct from c.lines
    union
    select distinct order_month
    from {{ staged }}
    where loaded_at > (select coalesce(max(loaded_at), timestamp '0001-01-01') from {{ this }})
{%- endmacro %}
