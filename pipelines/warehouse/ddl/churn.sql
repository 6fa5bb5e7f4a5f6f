-- churn: the churn model's scores per run, its backtest against recency and BG/NBD, and a
-- summary of each model run (pipelines/churn/).
-- Applied by pipelines/warehouse/schema.py: created when missing; a column a table written by
-- an older needseg lacks is added. Comments run from -- to the end of the line.
-- The per-account tables declare no primary key: why, in segments.sql.

create table if not exists churn.risk_history (
    run_id varchar not null, as_of date not null, account_id varchar not null,
    churn_probability double not null, rank integer not null, reasons varchar not null, model varchar not null,
    recency_days integer, bgnbd_p_no_purchase double, eligible boolean not null, lapsing boolean not null);

create table if not exists churn.model_quality (
    run_id varchar not null, as_of date not null, evaluated_as_of date not null, model varchar not null,
    accounts integer not null, churned integer not null, k integer not null, metric varchar not null,
    needseg double, recency double, bgnbd double,
    primary key (run_id, evaluated_as_of, metric));

create table if not exists churn.model_runs (
    run_id varchar primary key, as_of date not null, model varchar not null, training_rows integer not null,
    training_positives integer not null, training_cutoffs integer not null, backtest_runs integer not null,
    alert_threshold double, threshold_precision double, threshold_source varchar, target_precision double not null,
    lapsing integer not null, summary varchar not null);

-- BG/NBD parameters per cutoff, keyed by a fingerprint of exactly the inputs, so a history
-- fitted once is not fitted again on the next run (pipelines/churn/bgnbd.py).
create table if not exists churn.bgnbd_fits (
    cutoff date not null, fingerprint varchar not null, accounts integer not null, converged boolean not null,
    penalizer double, r double, alpha double, a double, b double, fitted_at timestamp,
    primary key (cutoff, fingerprint));
