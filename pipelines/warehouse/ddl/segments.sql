-- segments: one segmentation run per as-of date (pipelines/segmentation/run.py); every table
-- is keyed by run_id, so a run is readable on its own and runs can be compared.
-- Applied by pipelines/warehouse/schema.py: created when missing; a column a table written by
-- an older needseg lacks is added. Comments run from -- to the end of the line.
-- Tables with a row per account and run (population x runs rows) declare no primary key:
-- DuckDB keeps a key's index in memory, and at 1M accounts inserting one run's rows into
-- an indexed table ran out of the memory limit at commit (docs/scale.md "No index on the
-- per-account history"). A run's rows are unique by construction: its writer deletes the
-- run's rows and inserts one row per account (per segment for probabilities) in one
-- transaction. An older warehouse's keys are dropped by ensure_schema (pipelines/warehouse/schema.py).

create table if not exists segments.segment_runs (
    run_id varchar primary key, as_of date not null, created_at timestamp not null,
    model_version varchar not null, taxonomy varchar not null, taxonomy_digest varchar not null,
    lineage_digest varchar, lineage_id varchar, previous_run_id varchar, taxonomy_change varchar,
    basis varchar not null, k integer not null, k_reason varchar not null, k_evidence json not null,
    silhouette double, min_jaccard double, classifier_cv_accuracy double,
    key_account_mode varchar not null, key_account_evidence json,
    customers integer not null, surveyed integer not null, inferred integer not null,
    prospects integer not null, key_accounts integer not null, seconds double,
    k_preferred integer, verdict varchar, verdict_reasons json, published boolean, fallback_reason varchar,
    feature_missing json, survey_unusable_customers integer, excluded_respondents json, accounts_held integer);

create table if not exists segments.segment_definitions (
    run_id varchar not null, segment_id varchar not null, segment_name varchar not null,
    taxonomy_id varchar, is_emerging boolean not null, population varchar not null,
    centre json not null, size integer not null, fitted integer, jaccard double, similarity double,
    aligned_from varchar, renamed_from varchar, description varchar,
    offer varchar, serve varchar, action varchar);

create table if not exists segments.assignments (
    run_id varchar not null, as_of date not null, account_id varchar not null,
    account_name varchar, account_owner varchar, country varchar, industry varchar,
    segment_id varchar not null, segment_name varchar not null, segment_source varchar not null,
    probability double not null, behaviour_segment_id varchar, behaviour_probability double,
    value_tier varchar, is_key_account boolean not null, drivers json, drivers_text varchar,
    preferred_segment_id varchar, survey_status varchar);

create table if not exists segments.assignment_probabilities (
    run_id varchar not null, account_id varchar not null, segment_id varchar not null,
    probability double not null, behaviour_probability double);

create table if not exists segments.profiles (
    run_id varchar not null, segment_id varchar not null, population varchar not null,
    dimension varchar not null, kind varchar not null, segment_value double,
    overall_value double, index_vs_overall double);

create table if not exists segments.prospect_predictions (
    run_id varchar not null, as_of date not null, account_id varchar not null,
    account_name varchar, account_owner varchar, country varchar, industry varchar,
    segment_id varchar not null, segment_name varchar not null, probability double not null,
    probabilities json not null, offer varchar, serve varchar);

create table if not exists segments.lookalikes (
    run_id varchar not null, as_of date not null, account_id varchar not null,
    account_name varchar, account_owner varchar,
    segment_id varchar not null, similarity double not null, rank_in_segment integer not null,
    nearest_key_account_id varchar not null, nearest_key_account_name varchar, revenue_12m double,
    key_account_median_revenue_12m double);
