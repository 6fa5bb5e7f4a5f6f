-- Churn-risk alerts: one row per alert episode (one open alert per account and reason):
-- when it opened, when it was last seen, whether the account recovered, the latest score
-- and evidence, and the playbook action for the segment the account is moving to.
select
    alert_id,
    account_id,
    account_name,
    account_owner,
    reason,
    status,
    opened_as_of,
    last_seen_as_of,
    resolved_as_of,
    runs_flagged,
    score,
    peak_score,
    from_segment,
    to_segment,
    cast(evidence as varchar) as evidence,
    action,
    opened_run_id,
    last_seen_run_id
from {{ ref('stg_alerts__churn_risk_alerts') }}
