{#- Fails for every row where the column's value lies after `other_column`'s. -#}
{% test not_after(model, column_name, other_column) %}
select {{ column_name }}, {{ other_column }}
from {{ model }}
where {{ column_name }} > {{ other_column }}
{% endtest %}
