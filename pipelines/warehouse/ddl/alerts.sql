-- alerts: risk snapshots per run, the alerts' lifecycle, and the outbox that delivers them
-- exactly once per channel (pipelines/drift/run.py, pipelines/alerts/).
-- Applied by pipelines/warehouse/schema.py: created when missing; a column a table written by
-- an older needseg lacks is added. Comments run from -- to the end of the line.

create table if not exists alerts.risk_snapshots (
    run_id varchar not null, as_of date not null, account_id varchar not null, reason varchar not null,
    score double not null, account_name varchar, account_owner varchar,
    from_segment varchar, to_segment varchar, evidence json, action varchar,
    primary key (run_id, account_id, reason));

create table if not exists alerts.churn_risk_alerts (
    alert_id varchar primary key, account_id varchar not null, reason varchar not null, status varchar not null,
    opened_run_id varchar not null, opened_as_of date not null, last_seen_run_id varchar not null,
    last_seen_as_of date not null, resolved_as_of date, runs_flagged integer not null,
    score double, peak_score double, account_name varchar, account_owner varchar,
    from_segment varchar, to_segment varchar, evidence json, action varchar);

create table if not exists alerts.outbox (
    message_id varchar primary key,   -- deterministic from run_id, channel, recipient, part
    run_id varchar not null,
    as_of date,
    channel varchar not null,         -- table | email | webhook
    recipient varchar not null,       -- the account owner (or the fallback recipient)
    alert_ids varchar[] not null,
    subject varchar not null,
    body_text varchar not null,
    body_html varchar,                -- e-mail and table
    payload json,                     -- webhook: the JSON posted
    status varchar not null,          -- pending | sent | failed
    attempts integer not null,
    last_error varchar,
    next_attempt_at timestamp,
    created_at timestamp not null,
    last_attempt_at timestamp,
    sent_at timestamp,
    part integer,                     -- 1: the run's digest, 2, 3, ...: addenda (null: 1, older outboxes)
    failure_notified_at timestamp     -- when the data team was told the message failed for good
);

create table if not exists alerts.deliveries (
    alert_id varchar not null,
    channel varchar not null,
    run_id varchar not null,
    message_id varchar not null,
    recipient varchar not null,
    delivered_at timestamp not null,
    as_of date,                       -- the run's as-of date: reminders count from it (null: older outboxes)
    primary key (alert_id, channel, run_id)
);
