"""One segmentation run as of a date: fit or assign, align, name, infer, explain, store.

Reads `marts.customer_features` (and `marts.customer_category_mix` for consumption
taxonomies) from the working warehouse and writes the run into the `segments` schema:

- segment_runs            one row per run: k, the evidence for it, quality figures
- segment_definitions     the run's segments: id, name, centre, size, stability, playbook
- assignments             one row per customer: segment, source, probability, drivers
- assignment_probabilities per customer and segment: assigned and behavioural probability
- profiles                per segment and dimension: segment mean against everyone's
- prospect_predictions    predicted segment and offer for every prospect
- lookalikes              non-key customers that resemble key accounts

The run id comes from the as-of date, so re-running a date replaces that run and nothing
else; with unchanged inputs the assignments are identical (every random step is seeded).

Identity lineage: a run continues the previous run (segment ids aligned to its segments;
drift compares with it, `previous_run_id`) only when both used a taxonomy with the same
basis, dimensions and segment ids (`Taxonomy.lineage_digest`). Another taxonomy starts a
new lineage: `previous_run_id` is null, `lineage_id` is the run itself, and
`taxonomy_change` says what replaced what. Nothing downstream compares across lineages.

Key accounts (the 80/20 tier): segmented on their own when the tier is large enough, its
own segments are stable and its profile differs from the other customers' (see
`_segment_key_tier`); the other customers are then segmented without them. Otherwise key
accounts are segmented with everyone. segment_runs records the mode and why.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from pipelines.errors import NeedsegError
from pipelines.segmentation import explain
from pipelines.segmentation.clustering import (
    KEY_EMERGING,
    Clustering,
    ClusterSettings,
    Identity,
    PreviousSegment,
    choose_k,
    held_out_distance,
    k_bounds,
    resolve_identities,
)
from pipelines.segmentation.inference import BEHAVIOUR_COLUMNS, fit_and_score
from pipelines.segmentation.taxonomy import Taxonomy
from pipelines.warehouse import ensure_table, insert_frame

MODEL_VERSION = "needseg-segmentation/1"

DDL = [
    """create table if not exists segments.segment_runs (
        run_id varchar primary key, as_of date not null, created_at timestamp not null,
        model_version varchar not null, taxonomy varchar not null, taxonomy_digest varchar not null,
        lineage_digest varchar, lineage_id varchar, previous_run_id varchar, taxonomy_change varchar,
        basis varchar not null, k integer not null, k_reason varchar not null, k_evidence json not null,
        silhouette double, min_jaccard double, classifier_cv_accuracy double,
        key_account_mode varchar not null, key_account_evidence json,
        customers integer not null, surveyed integer not null, inferred integer not null,
        prospects integer not null, key_accounts integer not null, seconds double)""",
    """create table if not exists segments.segment_definitions (
        run_id varchar not null, segment_id varchar not null, segment_name varchar not null,
        taxonomy_id varchar, is_emerging boolean not null, population varchar not null,
        centre json not null, size integer not null, fitted integer, jaccard double, similarity double,
        aligned_from varchar, renamed_from varchar, description varchar,
        offer varchar, serve varchar, action varchar)""",
    """create table if not exists segments.assignments (
        run_id varchar not null, as_of date not null, account_id varchar not null,
        account_name varchar, account_owner varchar, country varchar, industry varchar,
        segment_id varchar not null, segment_name varchar not null, segment_source varchar not null,
        probability double not null, behaviour_segment_id varchar, behaviour_probability double,
        value_tier varchar, is_key_account boolean not null, drivers json, drivers_text varchar,
        primary key (run_id, account_id))""",
    """create table if not exists segments.assignment_probabilities (
        run_id varchar not null, account_id varchar not null, segment_id varchar not null,
        probability double not null, behaviour_probability double,
        primary key (run_id, account_id, segment_id))""",
    """create table if not exists segments.profiles (
        run_id varchar not null, segment_id varchar not null, population varchar not null,
        dimension varchar not null, kind varchar not null, segment_value double,
        overall_value double, index_vs_overall double)""",
    """create table if not exists segments.prospect_predictions (
        run_id varchar not null, as_of date not null, account_id varchar not null,
        account_name varchar, account_owner varchar, country varchar, industry varchar,
        segment_id varchar not null, segment_name varchar not null, probability double not null,
        probabilities json not null, offer varchar, serve varchar)""",
    """create table if not exists segments.lookalikes (
        run_id varchar not null, as_of date not null, account_id varchar not null,
        account_name varchar, account_owner varchar,
        segment_id varchar not null, similarity double not null, rank_in_segment integer not null,
        nearest_key_account_id varchar not null, nearest_key_account_name varchar, revenue_12m double,
        key_account_median_revenue_12m double)""",
]
RUN_TABLES = (
    "segment_runs",
    "segment_definitions",
    "assignments",
    "assignment_probabilities",
    "profiles",
    "prospect_predictions",
    "lookalikes",
)

# Account details each run keeps with its rows, so a run is readable on its own.
ACCOUNT_DETAILS = ["account_name", "account_owner", "country", "industry"]

# Scale-free behaviour used to find accounts that resemble key accounts (size left out:
# a lookalike is a smaller account that buys the way key accounts do).
LOOKALIKE_COLUMNS = [
    "order_regularity_12m",
    "category_breadth_12m",
    "premium_share_12m",
    "service_revenue_share_12m",
    "tickets_per_order_12m",
    "discount_depth_12m",
    "list_price_share_12m",
    "active_months_12m",
    "quote_win_rate_12m",
]


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists segments")
    for ddl in DDL:
        ensure_table(con, ddl)
    _backfill_lineage(con)


def run_id_for(as_of: dt.date) -> str:
    return f"seg-{as_of.isoformat()}"


@dataclass
class SegmentRunResult:
    run_id: str
    as_of: str
    k: int
    k_reason: str
    segments: dict[str, int]
    surveyed: int
    inferred: int
    prospects: int
    key_account_mode: str
    classifier_cv_accuracy: float | None
    min_jaccard: float
    seconds: float
    taxonomy_change: str | None = None

    def summary(self) -> str:
        sizes = ", ".join(f"{name} {n}" for name, n in sorted(self.segments.items(), key=lambda x: -x[1]))
        return (
            f"{self.run_id}: k={self.k} ({sizes}); {self.surveyed} surveyed, {self.inferred} inferred, "
            f"{self.prospects} prospects; key accounts: {self.key_account_mode}; min bootstrap Jaccard {self.min_jaccard:.2f}; "
            f"classifier CV accuracy {self.classifier_cv_accuracy if self.classifier_cv_accuracy is not None else 'n/a'}; "
            f"{self.seconds:.1f} s" + (f"; {self.taxonomy_change}" if self.taxonomy_change else "")
        )


def _cluster_settings(cfg: dict[str, Any]) -> ClusterSettings:
    return ClusterSettings(
        seed=int(cfg["seed"]),
        bootstrap_samples=int(cfg["bootstrap_samples"]),
        min_stability=float(cfg["min_stability"]),
        choose_stability=float(cfg["choose_stability"]),
        min_cluster_share=float(cfg["min_cluster_share"]),
    )


def _dimension_matrix(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """The taxonomy's dimensions for every account in `frame`, on the clustering scale."""
    out = pd.DataFrame(index=frame.index)
    mix = None
    for d in taxonomy.dimensions:
        if d.column.startswith("category_share:"):
            if mix is None:
                mix = con.execute("select account_id, product_category, revenue_share from marts.customer_category_mix").df()
                mix = mix.pivot_table(index="account_id", columns="product_category", values="revenue_share", aggfunc="sum")
            category = d.column.split(":", 1)[1]
            if category not in mix.columns:
                raise NeedsegError(
                    f"taxonomy {taxonomy.path}: dimension {d.name!r} uses category {category!r}, which no order line has; categories are: {', '.join(map(str, mix.columns))}"
                )
            values = frame["account_id"].map(mix[category]).fillna(0.0)
        elif d.column in frame.columns:
            values = pd.to_numeric(frame[d.column], errors="coerce")
        else:
            raise NeedsegError(
                f"taxonomy {taxonomy.path}: dimension {d.name!r} needs column {d.column!r}, which customer_features does not have"
            )
        if d.transform == "log1p":
            values = np.log1p(values.clip(lower=0))
        out[d.name] = values.astype(float)
    if taxonomy.basis == "survey":
        # An item the account's respondents skipped counts as average for them.
        return out.fillna(0.0)
    out = out.fillna(out.median())
    scaled = StandardScaler().fit_transform(out.to_numpy())
    return pd.DataFrame(scaled, index=out.index, columns=out.columns)


@dataclass
class Lineage:
    """Which earlier run this one continues (ids aligned to it, drift compared with it)."""

    previous_run_id: str | None  # None for the first run and after a taxonomy change
    lineage_id: str  # the run that started the lineage
    taxonomy_change: str | None  # what changed in the taxonomy since the previous run, if anything


def _lineage(con: duckdb.DuckDBPyConnection, as_of: dt.date, run_id: str, taxonomy: Taxonomy) -> Lineage:
    row = con.execute(
        "select run_id, taxonomy, taxonomy_digest, lineage_digest, lineage_id, basis from segments.segment_runs where as_of < ? order by as_of desc limit 1",
        [as_of],
    ).fetchone()
    if not row:
        return Lineage(None, run_id, None)
    prev_id, prev_taxonomy, prev_digest, prev_lineage_digest, prev_lineage_id, prev_basis = row
    here = f"{taxonomy_label(taxonomy)} (file digest {taxonomy.digest})"
    there = f"{prev_taxonomy} (file digest {prev_digest})"
    if prev_lineage_digest:
        same_space = prev_lineage_digest == taxonomy.lineage_digest
    else:
        # a run written before lineage digests: the same file, or its segments on the same
        # dimensions with ids this taxonomy still has
        defs = con.execute("select taxonomy_id, centre from segments.segment_definitions where run_id = ?", [prev_id]).fetchall()
        same_space = prev_digest == taxonomy.digest or (
            prev_basis == taxonomy.basis
            and bool(defs)
            and all(json.loads(centre)["dimensions"] == taxonomy.dimension_names for _, centre in defs)
            and all(t is None or taxonomy.segment(t) is not None for t, _ in defs)
        )
    if same_space:
        change = None
        if prev_digest != taxonomy.digest:
            change = f"taxonomy edited since {prev_id}: {there} -> {here}; same basis, dimensions and segment ids, so segments continue"
        return Lineage(prev_id, prev_lineage_id or prev_id, change)
    return Lineage(
        None,
        run_id,
        f"taxonomy changed since {prev_id}: {there} -> {here}; its basis, dimensions or segment ids differ, so segment "
        "identities start afresh and nothing is compared with earlier runs",
    )


def taxonomy_label(taxonomy: Taxonomy) -> str:
    return f"{taxonomy.name} v{taxonomy.version}"


def _backfill_lineage(con: duckdb.DuckDBPyConnection) -> None:
    """Runs written before lineages existed: consecutive runs with the same taxonomy file form one."""
    if not con.execute("select count(*) from segments.segment_runs where lineage_id is null").fetchone()[0]:
        return
    con.execute(
        """
        update segments.segment_runs as r
        set previous_run_id = l.previous_run_id, lineage_id = l.lineage_id
        from (
            select run_id, case when starts then null else prev_id end as previous_run_id,
                   first_value(run_id) over (partition by lineage order by as_of) as lineage_id
            from (
                select *, sum(starts::int) over (order by as_of) as lineage
                from (
                    select run_id, as_of,
                           lag(run_id) over (order by as_of) as prev_id,
                           coalesce(lag(taxonomy_digest) over (order by as_of) != taxonomy_digest, true) as starts
                    from segments.segment_runs
                )
            )
        ) as l
        where r.run_id = l.run_id and r.lineage_id is null
        """
    )


def _previous_segments(con: duckdb.DuckDBPyConnection, previous_run_id: str | None, population: str) -> list[PreviousSegment]:
    if previous_run_id is None:
        return []
    defs = con.execute(
        "select segment_id, segment_name, taxonomy_id, centre from segments.segment_definitions where run_id = ? and population = ? order by segment_id",
        [previous_run_id, population],
    ).fetchall()
    return [PreviousSegment(r[0], r[1], r[2], np.array(json.loads(r[3])["values"])) for r in defs]


@dataclass
class KeyTier:
    """The key (80/20) tier's own segmentation, or why key accounts took the main segments."""

    mode: str  # separate | nearest
    evidence: dict[str, Any]
    index: pd.Index  # key accounts clustered (with a profile)
    clustering: Clustering | None = None
    identities: list[Identity] = field(default_factory=list)


def _segment_key_tier(
    key_dims: pd.DataFrame,
    other_dims: pd.DataFrame,
    other_k: int,
    key_accounts: int,
    taxonomy: Taxonomy,
    settings: ClusterSettings,
    min_profiles: int,
    min_gain: float,
    previous: list[PreviousSegment],
) -> KeyTier:
    """Segment the key tier on its own when it is large enough and its profile differs from
    the other customers' (docs/design.md, the 80/20 rule).

    It differs when its own segments describe key accounts at least `min_gain` better than
    the other customers' segments do (held-out mean squared distance to the nearest centre,
    see clustering.held_out_distance); when they do not, key accounts are better served by
    the main segments, fitted on more accounts. Its own k is chosen within the taxonomy's
    bounds with the same evidence and stability rule as the main run, and must differ too.
    Each key cluster is then named after the prototype it resembles, or emerging."""
    n = len(key_dims)
    profile = "a survey response" if taxonomy.basis == "survey" else "a behaviour profile"
    evidence: dict[str, Any] = {"key_accounts": key_accounts, "key_accounts_profiled": n, "profiled_needed": min_profiles}
    nearest = "; key accounts are segmented with everyone else"
    if n < min_profiles:
        evidence["why"] = (
            f"{n} of {key_accounts} key accounts have {profile}; at least {min_profiles} are needed to segment the key tier on its own{nearest}"
        )
        return KeyTier("nearest", evidence, key_dims.index)
    X = key_dims.to_numpy()
    # Does the tier differ at all? Its own segments (any k in bounds) against the other
    # customers' segments, by held-out distance; cheap, so it comes before the bootstrap.
    other_centres = (
        KMeans(n_clusters=other_k, n_init=settings.n_init, random_state=settings.seed).fit(other_dims.to_numpy()).cluster_centers_
    )
    k_lo, k_hi = k_bounds(n, taxonomy.k_min, taxonomy.k_max)
    own, other = held_out_distance(X, range(k_lo, k_hi + 1), other_centres, settings)
    gain = {k: 1.0 - d / other if other > 0 else 0.0 for k, d in own.items()}
    evidence["held_out_distance"] = {
        "own_by_k": {str(k): round(d, 4) for k, d in own.items()},
        "other": round(other, 4),
        "other_k": other_k,
        "gain_by_k": {str(k): round(g, 4) for k, g in gain.items()},
        "gain_needed": min_gain,
    }

    def fit_words(k: int) -> str:
        return (
            f"held-out mean squared distance to the nearest centre {own[k]:.2f} with their own k={k} segments, "
            f"{other:.2f} with the other customers' k={other_k}: {gain[k]:.1%} better, needed {min_gain:.0%}"
        )

    not_different = "the key tier's profile does not differ enough from the other customers'"
    best = max(gain, key=gain.get)
    if gain[best] < min_gain:
        evidence["why"] = f"{not_different} (at best {fit_words(best)}){nearest}"
        return KeyTier("nearest", evidence, key_dims.index)
    clustering = choose_k(X, taxonomy.k_min, taxonomy.k_max, settings)
    chosen = next(c for c in clustering.candidates if c.k == clustering.k)
    sizes = np.bincount(clustering.labels, minlength=clustering.k)
    evidence.update(
        k=clustering.k,
        k_reason=clustering.reason,
        k_evidence=[c.__dict__ for c in clustering.candidates],
        silhouette=clustering.silhouette,
        jaccard=[round(float(j), 4) for j in clustering.jaccard],
        sizes=sizes.tolist(),
    )
    problems = []
    own_segments = f"the key tier's own segments ({n} key accounts with {profile}, k={clustering.k})"
    if clustering.jaccard.min() < settings.min_stability:
        problems.append(
            f"{own_segments} are not stable enough (min bootstrap Jaccard {clustering.jaccard.min():.2f}, needed {settings.min_stability})"
        )
    if chosen.smallest_share < settings.min_cluster_share:
        problems.append(
            f"{own_segments} include one too small ({chosen.smallest_share:.0%} of them, needed {settings.min_cluster_share:.0%})"
        )
    if gain[clustering.k] < min_gain:
        problems.append(f"{not_different} at the k chosen for its own segments ({fit_words(clustering.k)})")
    if problems:
        evidence["why"] = "; ".join(problems) + nearest
        return KeyTier("nearest", evidence, key_dims.index)
    identities = resolve_identities(clustering.centres, taxonomy, previous, KEY_EMERGING)
    evidence["segments"] = {i.segment_id: int(size) for i, size in zip(identities, sizes, strict=True)}
    evidence["why"] = (
        f"{n} of {key_accounts} key accounts have {profile}, and their profile differs from the other customers' "
        f"({fit_words(clustering.k)}): segmented on their own into k={clustering.k} stable segments "
        f"(min bootstrap Jaccard {clustering.jaccard.min():.2f})"
    )
    return KeyTier("separate", evidence, key_dims.index, clustering, identities)


def segment(con: duckdb.DuckDBPyConnection, as_of: dt.date, taxonomy: Taxonomy, config: dict[str, Any]) -> SegmentRunResult:
    started = time.monotonic()
    ensure_tables(con)
    cfg = config["segmentation"]
    settings = _cluster_settings(cfg)
    run_id = run_id_for(as_of)
    # A fixed row order: DuckDB returns rows in any order, and k-means seeding, forest
    # bootstraps and CV folds all depend on it.
    features = con.execute("select * from marts.customer_features order by account_id").df()
    if features.empty:
        raise NeedsegError("customer_features is empty: load accounts and orders first (needseg ingest, needseg build)")
    feature_as_of = pd.Timestamp(features["as_of"].iloc[0]).date()
    if feature_as_of != as_of:
        raise NeedsegError(f"customer_features describes {feature_as_of}, not {as_of}: build the features for this date first")
    features = features.set_index("account_id", drop=False)
    customers = features[features["status"] == "customer"]
    prospects = features[features["status"] == "prospect"]
    if len(customers) < 20:
        raise NeedsegError(f"only {len(customers)} customers as of {as_of}: too few to segment (at least 20 are needed)")

    dims = _dimension_matrix(con, customers, taxonomy)
    if taxonomy.basis == "survey":
        fit_mask = customers["is_surveyed"].fillna(False).astype(bool)
        min_fit = max(30, 10 * taxonomy.k_max)
        if fit_mask.sum() < min_fit:
            raise NeedsegError(
                f"only {int(fit_mask.sum())} surveyed customers as of {as_of}; the survey taxonomy needs at least "
                f"{min_fit}. Load more survey responses, or use a behaviour taxonomy (see config/taxonomies/)."
            )
    else:
        fit_mask = pd.Series(True, index=customers.index)
    is_key = customers["value_tier"].eq("key")
    lineage = _lineage(con, as_of, run_id, taxonomy)

    # 1. Cluster on the needs dimensions; the key tier on its own when it is large enough
    #    and differs from the other customers, and then the others without it.
    fit_index = customers.index[fit_mask.to_numpy()]
    key_fit = fit_index[is_key.loc[fit_index].to_numpy()]
    other_fit = fit_index[~is_key.loc[fit_index].to_numpy()]
    main = choose_k(dims.loc[fit_index].to_numpy(), taxonomy.k_min, taxonomy.k_max, settings)
    key = _segment_key_tier(
        dims.loc[key_fit],
        dims.loc[other_fit],
        main.k,
        int(is_key.sum()),
        taxonomy,
        settings,
        max(int(cfg["key_accounts_min"]), 10 * taxonomy.k_min),
        float(cfg["key_accounts_min_gain"]),
        _previous_segments(con, lineage.previous_run_id, "key"),
    )
    separate = key.mode == "separate"
    main_index = other_fit if separate else fit_index
    if separate:
        main = choose_k(dims.loc[main_index].to_numpy(), taxonomy.k_min, taxonomy.k_max, settings)
    identities = resolve_identities(main.centres, taxonomy, _previous_segments(con, lineage.previous_run_id, "all"))
    id_of = np.array([i.segment_id for i in identities])
    segment_of = pd.Series(id_of[main.labels], index=main_index)
    cluster_probs = pd.DataFrame(main.probabilities, index=main_index, columns=id_of)
    if separate:
        key_id_of = np.array([i.segment_id for i in key.identities])
        segment_of = pd.concat([segment_of, pd.Series(key_id_of[key.clustering.labels], index=key.index)]).reindex(fit_index)
        key_probs = pd.DataFrame(key.clustering.probabilities, index=key.index, columns=key_id_of)
        cluster_probs = pd.concat([cluster_probs, key_probs]).reindex(fit_index)
    # each account's candidate segments: its own population's
    population = pd.Series("all", index=customers.index)
    if separate:
        population.loc[is_key] = "key"
    population_ids = {"all": list(id_of), "key": list(key_id_of) if separate else list(id_of)}

    # 2. Everyone not in the fit is inferred from behaviour; everyone gets behavioural probabilities.
    inference = fit_and_score(customers.loc[fit_index], segment_of.loc[fit_index], customers, settings.seed)
    all_ids = sorted(set(segment_of) | set(inference.probabilities.columns))
    behaviour = inference.probabilities.reindex(index=customers.index, columns=all_ids).fillna(0.0)
    cluster_probs = cluster_probs.reindex(columns=all_ids).fillna(0.0)
    # An inferred account is assigned among its own population's segments (a non-key account
    # never to a segment only the key tier has); its behavioural probabilities stay the
    # model's own, over every segment, for drift to watch.
    probs = behaviour.copy()
    for name, ids in population_ids.items():
        members = population.index[population.eq(name).to_numpy()]
        outside = [c for c in all_ids if c not in ids]
        if len(members) and outside:
            restricted = probs.loc[members].copy()
            restricted[outside] = 0.0
            total = restricted.sum(axis=1)
            probs.loc[members] = restricted.div(total.where(total > 0, 1.0), axis=0)
    probs.loc[fit_index] = cluster_probs.loc[fit_index]
    assigned = probs.idxmax(axis=1)
    assigned.loc[fit_index] = segment_of.loc[fit_index]
    source = pd.Series("inferred", index=customers.index)
    if taxonomy.basis == "survey":
        source.loc[fit_index] = "surveyed"

    # 3. Names, playbooks, explanations.
    definitions = _definitions(run_id, main, identities, key, taxonomy, assigned, population)
    name_of = {d["segment_id"]: d["segment_name"] for d in definitions}
    drivers_json, drivers_text = _drivers(customers, dims, taxonomy, assigned, fit_index, segment_of, inference)

    assignments = pd.DataFrame(
        {
            "run_id": run_id,
            "as_of": as_of,
            "account_id": customers.index,
            **{c: customers[c].values for c in ACCOUNT_DETAILS},
            "segment_id": assigned.values,
            "segment_name": assigned.map(name_of).values,
            "segment_source": source.values,
            "probability": [float(probs.at[a, s]) for a, s in zip(customers.index, assigned, strict=False)],
            "behaviour_segment_id": behaviour.idxmax(axis=1).values,
            "behaviour_probability": behaviour.max(axis=1).values,
            "value_tier": customers["value_tier"].values,
            "is_key_account": is_key.values,
            "drivers": drivers_json.values,
            "drivers_text": drivers_text.values,
        }
    )
    long = probs.stack().rename("probability").reset_index()
    long.columns = ["account_id", "segment_id", "probability"]
    long["behaviour_probability"] = behaviour.stack().values
    long.insert(0, "run_id", run_id)

    prospect_rows = _prospects(
        run_id, as_of, customers, fit_index, assigned, prospects, taxonomy, name_of, definitions, settings.seed, population_ids["all"]
    )
    lookalike_rows = _lookalikes(run_id, as_of, customers, assigned, is_key, int(cfg["lookalikes_per_segment"]))
    profile_rows = _profiles(run_id, customers, dims, assigned, fit_index, is_key, key.mode, taxonomy)

    seconds = time.monotonic() - started
    run_row = {
        "run_id": run_id,
        "as_of": as_of,
        "created_at": dt.datetime.now(),
        "model_version": MODEL_VERSION,
        "taxonomy": taxonomy_label(taxonomy),
        "taxonomy_digest": taxonomy.digest,
        "lineage_digest": taxonomy.lineage_digest,
        "lineage_id": lineage.lineage_id,
        "previous_run_id": lineage.previous_run_id,
        "taxonomy_change": lineage.taxonomy_change,
        "basis": taxonomy.basis,
        "k": main.k,
        "k_reason": main.reason,
        "k_evidence": json.dumps([c.__dict__ for c in main.candidates]),
        "silhouette": main.silhouette,
        "min_jaccard": float(main.jaccard.min()),
        "classifier_cv_accuracy": inference.cv_accuracy if taxonomy.basis == "survey" else None,
        "key_account_mode": key.mode,
        "key_account_evidence": json.dumps(key.evidence),
        "customers": len(customers),
        "surveyed": int((source == "surveyed").sum()),
        "inferred": int((source == "inferred").sum()),
        "prospects": len(prospect_rows),
        "key_accounts": int(is_key.sum()),
        "seconds": round(seconds, 2),
    }
    _store(con, run_id, run_row, definitions, assignments, long, profile_rows, prospect_rows, lookalike_rows)
    sizes = assignments.groupby("segment_name").size().to_dict()
    return SegmentRunResult(
        run_id,
        as_of.isoformat(),
        main.k,
        main.reason,
        sizes,
        run_row["surveyed"],
        run_row["inferred"],
        len(prospect_rows),
        key.mode,
        run_row["classifier_cv_accuracy"],
        run_row["min_jaccard"],
        round(seconds, 2),
        lineage.taxonomy_change,
    )


def _drivers(customers, dims, taxonomy, assigned, fit_index, segment_of, inference) -> tuple[pd.Series, pd.Series]:
    """Why each account is in its segment: a clustered account by the dimensions it was
    clustered on, an inferred one by what moved the classifier's probability for its segment."""
    drivers_json = pd.Series("[]", index=customers.index)
    drivers_text = pd.Series("", index=customers.index)
    clustered = fit_index
    if len(clustered):
        kind = "need" if taxonomy.basis == "survey" else "dimension"
        j, t = explain.drivers(dims.loc[clustered], assigned.loc[clustered], kind)
        drivers_json.loc[clustered], drivers_text.loc[clustered] = j, t
    inferred = customers.index.difference(clustered, sort=False)
    if len(inferred) and inference.model is not None:
        j, t = explain.model_drivers(
            inference, customers.loc[inferred], assigned.loc[inferred], customers.loc[fit_index], segment_of.loc[fit_index]
        )
        drivers_json.loc[inferred], drivers_text.loc[inferred] = j, t
    return drivers_json, drivers_text


def _definitions(
    run_id: str, main: Clustering, identities: list[Identity], key: KeyTier, taxonomy: Taxonomy, assigned: pd.Series, population: pd.Series
) -> list[dict[str, Any]]:
    rows = []

    def row(ident, centre, fitted, jaccard, name):
        seg = taxonomy.segment(ident.taxonomy_id) if ident.taxonomy_id else None
        playbook = seg.playbook if seg else {}
        return {
            "run_id": run_id,
            "segment_id": ident.segment_id,
            "segment_name": ident.name,
            "taxonomy_id": ident.taxonomy_id,
            "is_emerging": ident.taxonomy_id is None,
            "population": name,
            "centre": json.dumps({"dimensions": taxonomy.dimension_names, "values": [round(float(v), 6) for v in centre]}),
            "size": int((assigned.eq(ident.segment_id) & population.eq(name)).sum()),
            "fitted": fitted,
            "jaccard": round(jaccard, 4),
            "similarity": round(ident.similarity, 4),
            "aligned_from": ident.aligned_from,
            "renamed_from": ident.renamed_from,
            "description": seg.description if seg else "A group the taxonomy does not describe; review it before acting on it.",
            "offer": playbook.get("offer"),
            "serve": playbook.get("serve"),
            "action": playbook.get("action") or "Review what these accounts have in common before choosing an offer.",
        }

    for i, ident in enumerate(identities):
        rows.append(row(ident, main.centres[i], int((main.labels == i).sum()), float(main.jaccard[i]), "all"))
    if key.clustering is not None and key.mode == "separate":
        for i, ident in enumerate(key.identities):
            rows.append(
                row(ident, key.clustering.centres[i], int((key.clustering.labels == i).sum()), float(key.clustering.jaccard[i]), "key")
            )
    return rows


def _prospects(run_id, as_of, customers, fit_index, assigned, prospects, taxonomy, name_of, definitions, seed, segment_ids) -> pd.DataFrame:
    columns = [
        "run_id",
        "as_of",
        "account_id",
        *ACCOUNT_DETAILS,
        "segment_id",
        "segment_name",
        "probability",
        "probabilities",
        "offer",
        "serve",
    ]
    if prospects.empty:
        return pd.DataFrame(columns=columns)
    result = fit_and_score(customers.loc[fit_index], assigned.loc[fit_index], prospects, seed, kind="prospect")
    # a prospect is no key account: it gets one of the main segments
    p = result.probabilities.reindex(index=prospects.index, columns=segment_ids).fillna(0.0)
    p = p.div(p.sum(axis=1).where(lambda t: t > 0, 1.0), axis=0)
    best = p.idxmax(axis=1)
    playbook = {d["segment_id"]: d for d in definitions if d["population"] == "all"}
    return pd.DataFrame(
        {
            "run_id": run_id,
            "as_of": as_of,
            "account_id": prospects.index,
            **{c: prospects[c].values for c in ACCOUNT_DETAILS},
            "segment_id": best.values,
            "segment_name": best.map(name_of).values,
            "probability": p.max(axis=1).round(4).values,
            "probabilities": [json.dumps({k: round(float(v), 4) for k, v in r.items()}) for _, r in p.iterrows()],
            "offer": best.map(lambda s: playbook.get(s, {}).get("offer")).values,
            "serve": best.map(lambda s: playbook.get(s, {}).get("serve")).values,
        }
    )[columns]


def _lookalikes(run_id, as_of, customers, assigned, is_key, per_segment: int) -> pd.DataFrame:
    columns = [
        "run_id",
        "as_of",
        "account_id",
        "account_name",
        "account_owner",
        "segment_id",
        "similarity",
        "rank_in_segment",
        "nearest_key_account_id",
        "nearest_key_account_name",
        "revenue_12m",
        "key_account_median_revenue_12m",
    ]
    cols = [c for c in LOOKALIKE_COLUMNS if c in customers.columns]
    values = customers[cols].apply(pd.to_numeric, errors="coerce")
    values = values.fillna(values.median()).fillna(0.0)
    scaled = pd.DataFrame(StandardScaler().fit_transform(values), index=values.index, columns=cols)
    rows = []
    active = customers["revenue_12m"] > 0
    for seg in sorted(assigned.unique()):
        keys = customers.index[(assigned == seg) & is_key]
        others = customers.index[(assigned == seg) & ~is_key & active]
        if len(keys) == 0 or len(others) == 0:
            continue
        key_rows, other_rows = scaled.loc[keys].to_numpy(), scaled.loc[others].to_numpy()
        dist = np.sqrt(((other_rows[:, None, :] - key_rows[None, :, :]) ** 2).sum(axis=2))
        nearest = dist.argmin(axis=1)
        similarity = 1.0 / (1.0 + dist[np.arange(len(other_rows)), nearest])
        order = np.lexsort((others.to_numpy(), -similarity))[:per_segment]
        median_key = float(customers.loc[keys, "revenue_12m"].median())
        for rank, i in enumerate(order, start=1):
            account, key_account = others[i], keys[nearest[i]]
            rows.append(
                (
                    run_id,
                    as_of,
                    account,
                    customers.at[account, "account_name"],
                    customers.at[account, "account_owner"],
                    seg,
                    round(float(similarity[i]), 4),
                    rank,
                    key_account,
                    customers.at[key_account, "account_name"],
                    float(customers.at[account, "revenue_12m"]),
                    median_key,
                )
            )
    return pd.DataFrame(rows, columns=columns)


def _profiles(run_id, customers, dims, assigned, fit_index, is_key, key_mode, taxonomy) -> pd.DataFrame:
    rows = []
    behaviour_cols = [c for c in [*BEHAVIOUR_COLUMNS, "revenue_12m", "tenure_months", "satisfaction", "nps"] if c in customers.columns]
    values = customers[behaviour_cols].apply(pd.to_numeric, errors="coerce")
    populations = [("all", customers.index)]
    if key_mode == "separate":
        populations.append(("key", customers.index[is_key.to_numpy()]))
    for population, members in populations:
        seg = assigned.loc[members]
        fit_members = members.intersection(fit_index)
        need_overall = dims.loc[fit_members].mean()
        need_sd = dims.loc[fit_members].std().replace(0, np.nan)
        for s in sorted(seg.unique()):
            in_seg = seg.index[seg == s]
            fit_in_seg = in_seg.intersection(fit_members)
            rows.append((run_id, s, population, "accounts", "size", float(len(in_seg)), float(len(members)), len(in_seg) / len(members)))
            total = customers.loc[members, "revenue_12m"].clip(lower=0).sum()
            share = customers.loc[in_seg, "revenue_12m"].clip(lower=0).sum() / total if total else None
            rows.append((run_id, s, population, "revenue_share", "value", share, 1.0, None))
            for d in dims.columns:
                v = dims.loc[fit_in_seg, d].mean() if len(fit_in_seg) else None
                idx = (v - need_overall[d]) / need_sd[d] if v is not None and pd.notna(need_sd[d]) else None
                rows.append((run_id, s, population, d, "need", v, float(need_overall[d]), idx))
            for c in behaviour_cols:
                overall, sd = values.loc[members, c].mean(), values.loc[members, c].std()
                v = values.loc[in_seg, c].mean()
                rows.append(
                    (run_id, s, population, c, "behaviour", v, overall, (v - overall) / sd if sd and pd.notna(sd) and pd.notna(v) else None)
                )
    frame = pd.DataFrame(
        rows, columns=["run_id", "segment_id", "population", "dimension", "kind", "segment_value", "overall_value", "index_vs_overall"]
    )
    for c in ("segment_value", "overall_value", "index_vs_overall"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float).round(6)
    return frame


def _store(con, run_id, run_row, definitions, assignments, long, profiles, prospects, lookalikes) -> None:
    con.execute("begin transaction")
    try:
        for table in RUN_TABLES:
            con.execute(f"delete from segments.{table} where run_id = ?", [run_id])
        insert_frame(con, "segments.segment_runs", pd.DataFrame([run_row]))
        for table, frame in (
            ("segment_definitions", pd.DataFrame(definitions)),
            ("assignments", assignments),
            ("assignment_probabilities", long),
            ("profiles", profiles),
            ("prospect_predictions", prospects),
            ("lookalikes", lookalikes),
        ):
            insert_frame(con, f"segments.{table}", frame)
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
