-- drift: per-account movement between segments and the population's changes, per run
-- (pipelines/drift/).
-- Applied by pipelines/warehouse/schema.py: created when missing; a column a table written by
-- an older needseg lacks is added. Comments run from -- to the end of the line.
-- The per-account tables declare no primary key: why, in segments.sql.

create table if not exists drift.customer_drift (
    run_id varchar not null, as_of date not null, account_id varchar not null,
    account_name varchar, account_owner varchar,
    segment_id varchar not null, segment_name varchar, previous_segment_id varchar, previous_segment_name varchar,
    migrated boolean not null, migration_kind varchar, migration_z double, migration_confirmed boolean,
    drift_flag boolean,
    drift_kind varchar, toward_segment_id varchar, toward_segment_name varchar,
    drift_z double, drift_shift double, ordering_recently boolean, early_warning boolean not null,
    behaviour_probability_now double, behaviour_probability_before double,
    revenue_trend double, satisfaction_change double, nps double,
    churn_risk_score double not null, churn_risk_reasons json, is_churn_risk boolean not null,
    lapse_risk double,
    evidence json, evidence_text varchar, components json,
    supporting_signals integer, probability_contradicts boolean,
    churn_probability double, churn_rank integer, churn_reasons varchar, churn_model varchar, lapsing boolean);

create table if not exists drift.segment_transitions (
    run_id varchar not null, previous_run_id varchar not null, as_of date not null,
    from_segment_id varchar not null, to_segment_id varchar not null,
    accounts integer not null, share_of_from double not null);

create table if not exists drift.population_changes (
    run_id varchar not null, previous_run_id varchar not null, as_of date not null,
    event varchar not null, from_segments varchar[], to_segments varchar[],
    overlap double, size_before integer, size_after integer, size_change double,
    centre_shift double, detail json);
