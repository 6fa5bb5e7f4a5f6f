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
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipelines import clock
from pipelines.errors import NeedsegError
from pipelines.parallel import ordered_map
from pipelines.segmentation import explain
from pipelines.segmentation.clustering import (
    KEY_EMERGING,
    MAIN_EMERGING,
    Clustering,
    ClusterSettings,
    Identity,
    KHold,
    PreviousSegment,
    Prior,
    bounded_sample,
    choose_k,
    extend,
    held_out_distance,
    k_bounds,
    resolve_identities,
    sq_distances,
    where_prototype_sits,
)
from pipelines.segmentation.dimensions import Dimensions, dimension_matrix, missingness_segments
from pipelines.segmentation.inference import BEHAVIOUR_COLUMNS, CATEGORICAL_COLUMNS, INPUTS, fit_and_score
from pipelines.segmentation.taxonomy import Taxonomy, load_taxonomy
from pipelines.segmentation.verdict import Evidence, VerdictSettings, judge
from pipelines.warehouse import ensure_schema, insert_frame, transaction

MODEL_VERSION = "needseg-segmentation/1"

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
    verdict: str = ""  # in words
    verdict_code: str = ""  # trusted | provisional | withheld
    fallback: str | None = None  # why the segments were inferred from behaviour
    survey: str | None = None  # respondents left out as unusable
    left_out: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        sizes = ", ".join(f"{name} {n}" for name, n in sorted(self.segments.items(), key=lambda x: -x[1]))
        lines = [
            f"{self.run_id}: k={self.k} ({sizes}); {self.surveyed} surveyed, {self.inferred} inferred, "
            f"{self.prospects} prospects; key accounts: {self.key_account_mode}; min bootstrap Jaccard {self.min_jaccard:.2f}; "
            f"classifier CV accuracy {self.classifier_cv_accuracy if self.classifier_cv_accuracy is not None else 'n/a'}; "
            f"{self.seconds:.1f} s" + (f"; {self.taxonomy_change}" if self.taxonomy_change else "")
        ]
        if self.survey:
            lines.append(self.survey)
        lines.append(self.verdict)
        return "\n    ".join(lines)


def _cluster_settings(cfg: dict[str, Any]) -> ClusterSettings:
    return ClusterSettings(
        seed=int(cfg["seed"]),
        bootstrap_samples=int(cfg["bootstrap_samples"]),
        min_stability=float(cfg["min_stability"]),
        choose_stability=float(cfg["choose_stability"]),
        min_cluster_share=float(cfg["min_cluster_share"]),
        k_switch_runs=int(cfg["k_switch_runs"]),
        k_switch_margin=float(cfg["k_switch_margin"]),
        anchor_tolerance=float(cfg["anchor_tolerance"]),
        warm_start_tolerance=float(cfg["warm_start_tolerance"]),
        silhouette_sample=int(cfg["silhouette_sample"]),
        fit_sample=int(cfg["fit_sample"]),
        k_rule=str(cfg["k_rule"]),
        held_out_folds=int(cfg["held_out_folds"]),
    )


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


def _previous_segments(
    con: duckdb.DuckDBPyConnection, previous_run_id: str | None, population: str, dims: Dimensions
) -> list[PreviousSegment]:
    """The previous run's segments, their centres on this run's dimensions and scale (none
    when a dimension clustered now was left out then: the centres are not comparable).

    Behavioural centres are read in the dimensions' own units (`raw`) and standardised as
    this run standardises: a customer whose behaviour did not change is as far from them as
    it was, whatever the population around it did."""
    if previous_run_id is None:
        return []
    defs = con.execute(
        "select segment_id, segment_name, taxonomy_id, centre from segments.segment_definitions where run_id = ? and population = ? order by segment_id",
        [previous_run_id, population],
    ).fetchall()
    dimensions = list(dims.values.columns)
    out = []
    for segment_id, name, taxonomy_id, centre in defs:
        stored = json.loads(centre)
        raw = dims.scale is not None and "raw" in stored
        values = dict(zip(stored["dimensions"], stored["raw" if raw else "values"], strict=True))
        if any(d not in values for d in dimensions):
            return []
        point = np.array([values[d] for d in dimensions], dtype=float)
        out.append(PreviousSegment(segment_id, name, taxonomy_id, dims.from_raw(point) if raw else point))
    return out


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
    hold: KHold | None = None,
    prior: Prior | None = None,
) -> KeyTier:
    """Segment the key tier on its own when it is large enough and its profile differs from
    the other customers' (docs/design.md, the 80/20 rule).

    It differs when its own segments describe key accounts at least `min_gain` better than
    the other customers' segments do (held-out mean squared distance to the nearest centre,
    see clustering.held_out_distance); when they do not, key accounts are better served by
    the main segments, fitted on more accounts. Its own k is chosen within the taxonomy's
    bounds with the same evidence and stability rule as the main run, and must differ too.
    Each key cluster is then named after the prototype it resembles, or emerging. `hold`
    keeps the tier's previous k and centres (identity hysteresis), as for the main run."""
    n = len(key_dims)
    profile = "a survey response" if taxonomy.basis == "survey" else "a behaviour profile"
    evidence: dict[str, Any] = {"key_accounts": key_accounts, "key_accounts_profiled": n, "profiled_needed": min_profiles}
    nearest = "; key accounts are segmented with everyone else"
    if taxonomy.prototype_weight:
        evidence["why"] = (
            "the taxonomy's segments are drawn towards its prototypes (prototype_weight), which say where each need sits "
            f"relative to every customer, not within the key tier{nearest}, against the same prototypes"
        )
        return KeyTier("nearest", evidence, key_dims.index)
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
    clustering = choose_k(X, taxonomy.k_min, taxonomy.k_max, settings, hold, prior)
    chosen = next(c for c in clustering.candidates if c.k == clustering.k)
    sizes = np.bincount(clustering.labels, minlength=clustering.k)
    evidence.update(
        k=clustering.k,
        k_preferred=clustering.preferred_k,
        k_reason=clustering.reason,
        centres_from=clustering.centres_from,
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


@dataclass
class Survey:
    """Who answered a survey, and whose answers could not be used (and why)."""

    usable: int  # customers with a usable response in the validity window
    unusable: int  # customers who answered, every respondent unusable
    excluded: dict[str, int]  # reason -> respondents left out, every customer
    status: pd.Series  # per customer: usable | unusable: <reasons> | none

    def words(self) -> str | None:
        if not self.unusable and not any(self.excluded.values()):
            return None
        reasons = ", ".join(f"{n} for {why}" for why, n in self.excluded.items() if n)
        return (
            f"survey respondents left out as unusable: {reasons}; {self.unusable} customer(s) answered but have no usable "
            "respondent (published as survey_status 'unusable: ...', inferred from behaviour)"
        )


def _survey(customers: pd.DataFrame) -> Survey:
    usable = customers["is_surveyed"].fillna(False).astype(bool)
    counts = {}
    reasons = pd.Series("", index=customers.index)
    for column, why in (("survey_straightlining_respondents", "straight-lining"), ("survey_too_few_items_respondents", "too few items")):
        n = pd.to_numeric(customers[column], errors="coerce").fillna(0) if column in customers else pd.Series(0, index=customers.index)
        counts[why] = int(n.sum())
        reasons = reasons.where(n.eq(0), reasons + np.where(reasons.eq(""), "", ", ") + why)
    unusable = ~usable & reasons.ne("")
    status = pd.Series("none", index=customers.index).mask(usable, "usable").mask(unusable, "unusable: " + reasons)
    return Survey(int(usable.sum()), int(unusable.sum()), counts, status)


def _taxonomy_for_run(taxonomy: Taxonomy, survey: Survey, as_of: dt.date) -> tuple[Taxonomy, str | None]:
    """The survey taxonomy, or its behavioural fallback when too few customers answered."""
    if taxonomy.basis != "survey":
        return taxonomy, None
    min_fit = max(30, 10 * taxonomy.k_max)
    if survey.usable >= min_fit:
        return taxonomy, None
    answered = f"only {survey.usable} customers have a usable survey response as of {as_of}" + (
        f" ({survey.unusable} more answered, every respondent unusable)" if survey.unusable else ""
    )
    if not taxonomy.fallback:
        raise NeedsegError(
            f"{answered}; the survey taxonomy needs at least {min_fit}. Load more survey responses, give the taxonomy a "
            "`fallback` behaviour taxonomy, or use a behaviour taxonomy (see config/taxonomies/README.md)."
        )
    fallback = load_taxonomy(Path(taxonomy.fallback))
    return fallback, (
        f"segments inferred from behaviour: {answered}, and clustering survey needs takes at least {min_fit}; "
        f"the needs of {taxonomy_label(taxonomy)} were read from their behavioural proxies ({taxonomy_label(fallback)})"
        + (
            f"; the {fallback.core_share:.0%} of customers most clearly in one cluster taught a classifier on every behaviour "
            "signal, which read the others' needs"
            if fallback.core_share
            else ""
        )
        + (
            f"; the segments were held near where the taxonomy's prototypes put each need (prototype_weight {fallback.prototype_weight:g}), "
            "key accounts with everyone else"
            if fallback.prototype_weight
            else ""
        )
    )


@dataclass
class History:
    """What earlier runs of the lineage decided, for identity hysteresis."""

    previous_k: int | None = None
    preferred_k: list[int] = field(default_factory=list)  # latest first
    preferred_segments: pd.DataFrame | None = None  # account x earlier run (latest first): preferred segment
    assigned: pd.Series | None = None  # previous run's segment per account
    key_preferred_k: list[int] = field(default_factory=list)  # the key tier's own segmentation, latest first
    is_key: pd.Series | None = None  # previous run's key tier per account (as segmented)
    cut_key: pd.DataFrame | None = None  # account x earlier run (latest first): the 80/20 cut said key


def _history(con: duckdb.DuckDBPyConnection, lineage: Lineage, runs: int) -> History:
    if lineage.previous_run_id is None:
        return History()
    rows = con.execute(
        "select run_id, k, coalesce(k_preferred, k), key_account_evidence from segments.segment_runs where lineage_id = ? and as_of <= "
        "(select as_of from segments.segment_runs where run_id = ?) order by as_of desc limit ?",
        [lineage.lineage_id, lineage.previous_run_id, max(runs, 1)],
    ).fetchall()
    if not rows:
        return History()
    ids = [r[0] for r in rows]
    prev = con.execute(
        "select account_id, run_id, segment_id, coalesce(preferred_segment_id, segment_id) as preferred, "
        "coalesce(is_key_account, false) as is_key, coalesce(value_tier = 'key', false) as cut_key from segments.assignments "
        f"where run_id in ({', '.join('?' for _ in ids)})",
        ids,
    ).df()
    preferred = prev.pivot(index="account_id", columns="run_id", values="preferred").reindex(columns=ids)
    cut_key = prev.pivot(index="account_id", columns="run_id", values="cut_key").reindex(columns=ids)
    latest = prev[prev["run_id"] == ids[0]].set_index("account_id")
    assigned = latest["segment_id"]
    key_preferred = []
    for row in rows:
        evidence = json.loads(row[3]) if row[3] else {}
        if "k" not in evidence:
            break
        key_preferred.append(int(evidence.get("k_preferred") or evidence["k"]))
    return History(int(rows[0][1]), [int(r[2]) for r in rows], preferred, assigned, key_preferred, latest["is_key"].astype(bool), cut_key)


def _hold_key_tier(value_tier: pd.Series, history: History, runs: int) -> tuple[pd.Series, int]:
    """Key-tier hysteresis: an account changes tier only when the 80/20 cut (`value_tier`)
    put it on the other side in `runs` consecutive runs, this one included; a key account
    whose revenue falls below the mid tier too ('tail') leaves at once. An account new to
    the lineage follows the cut. Returns the key tier segmented on and how many accounts
    the rule kept on their previous side."""
    cut = value_tier.eq("key")
    if history.is_key is None or history.is_key.empty or runs <= 1:
        return cut, 0
    before = history.is_key.reindex(cut.index)
    known = before.notna().to_numpy()
    before = before.fillna(False).astype(bool)
    differs = known & (cut != before).to_numpy()
    earlier = history.cut_key.reindex(cut.index).iloc[:, : runs - 1] if history.cut_key is not None else None
    if earlier is None or earlier.shape[1] < runs - 1:
        confirmed = np.zeros(len(cut), bool)
    else:
        confirmed = earlier.eq(cut, axis=0).all(axis=1).to_numpy()
    falls_out = (before & value_tier.eq("tail")).to_numpy()
    keep = differs & ~confirmed & ~falls_out
    out = cut.copy()
    out[keep] = before[keep]
    return out, int(keep.sum())


def _k_hold(history: History, previous: list[PreviousSegment], dims: Dimensions, steady: bool) -> KHold | None:
    """Keep k and warm-start from the previous centres: for the taxonomy bases in
    `segmentation.hysteresis_bases` (survey segments follow each new answer as it comes)."""
    if history.previous_k is None or not steady:
        return None
    centres = None
    if previous and len(previous) == history.previous_k:
        centres = dims.to_space(np.array([p.centre for p in previous]))
    return KHold(history.previous_k, history.preferred_k, centres)


def _prior(dims: Dimensions, settings: ClusterSettings, key_tier: bool = False) -> Prior | None:
    """For the prototype k rule: the taxonomy's prototypes in the clustering space, and
    centres -> the name of the taxonomy segment each matches, as its segments would be
    named (`resolve_identities`, without a previous run). Names, not ids: they go into the
    k rule's reason, which the run output and the report show to people. The key tier
    clusters on the dimensions' values themselves, not the main run's clustering space."""
    if settings.k_rule != "prototypes":
        return None
    to_values = (lambda c: c) if key_tier else dims.to_values
    style = KEY_EMERGING if key_tier else MAIN_EMERGING
    prototypes = dims.taxonomy.prototype_matrix()

    def match(centres: np.ndarray) -> list[str | None]:
        return [i.name if i.taxonomy_id else None for i in resolve_identities(to_values(centres), dims.taxonomy, [], style)]

    return Prior(
        match,
        prototypes if key_tier else dims.to_space(prototypes),
        [s.name for s in dims.taxonomy.segments],
        0.0 if key_tier else dims.taxonomy.prototype_weight or 0.0,
    )


def _cluster_main(
    dims: Dimensions, index: pd.Index, settings: ClusterSettings, hold: KHold | None, strata: pd.Series
) -> tuple[Clustering, Dimensions]:
    """Choose k and cluster; a dimension whose missing values define a cluster is dropped
    and the clustering repeated (missingness alone never defines a segment).

    A large population is fitted on a bounded sample stratified by value tier
    (`segmentation.fit_sample`: k choice, bootstrap stability and silhouette on the
    sample); every account is then assigned to its nearest fitted centre."""
    sample = index[bounded_sample(len(index), settings.fit_sample, strata.reindex(index).fillna("").to_numpy(), settings.seed)]
    while True:
        taxonomy = dims.taxonomy
        main = choose_k(dims.space(sample), taxonomy.k_min, taxonomy.k_max, settings, hold, _prior(dims, settings))
        if len(sample) < len(index):
            main = extend(main, dims.space(index))
        bad = missingness_segments(main.labels, dims.imputed.loc[index])
        if not bad or len(bad) >= len(dims.values.columns):
            return main, dims
        dims = dims.without(bad, index, settings.seed)
        if hold is not None:
            hold = KHold(hold.previous_k, hold.preferred, None)


@dataclass
class Place:
    """One population's clustered accounts and centres, in the space they were clustered in."""

    X: np.ndarray  # accounts x dimensions
    centres: np.ndarray  # k x dimensions
    ids: np.ndarray  # k segment ids


@dataclass
class Whereabouts:
    """Where each clustered account sits between its population's segment centres: per
    population (the key tier has its own segments, which may share ids with the others'),
    squared distances to its centres (accounts x segment ids) and between them."""

    parts: list[tuple[pd.DataFrame, pd.DataFrame]]  # (d2, gap2) per population

    @classmethod
    def of(cls, places: list[Place], indexes: list[pd.Index]) -> Whereabouts:
        return cls(
            [
                (
                    pd.DataFrame(sq_distances(p.X, p.centres), index=index, columns=p.ids),
                    pd.DataFrame(sq_distances(p.centres, p.centres), index=p.ids, columns=p.ids),
                )
                for p, index in zip(places, indexes, strict=True)
            ]
        )

    def only(self, index: pd.Index) -> Whereabouts:
        return Whereabouts([(d2[d2.index.isin(index)], gap2) for d2, gap2 in self.parts])

    def past_midpoint(self, idx: pd.Index, old: pd.Series, new: pd.Series) -> np.ndarray:
        """How far past the midpoint between the old segment's centre and the new one's each
        account lies, along the line joining them, as a share of their distance: 0 on the
        boundary, 0.5 at the new centre, negative on the old side; NaN where unknown (not
        clustered, or a segment not of its population)."""
        out = np.full(len(idx), np.nan)
        for d2, gap2 in self.parts:
            at = np.nonzero(idx.isin(d2.index))[0]
            if not len(at):
                continue
            accounts = idx[at]
            cols = {c: n for n, c in enumerate(d2.columns)}
            o = old.loc[accounts].map(cols).to_numpy(dtype=float)
            w = new.loc[accounts].map(cols).to_numpy(dtype=float)
            ok = ~(np.isnan(o) | np.isnan(w))
            oi, wi = o[ok].astype(int), w[ok].astype(int)
            values = d2.loc[accounts[ok]].to_numpy()
            rows = np.arange(len(oi))
            gap = gap2.to_numpy()[oi, wi]
            with np.errstate(divide="ignore", invalid="ignore"):
                part = np.where(gap > 0, (values[rows, oi] - values[rows, wi]) / (2 * gap), np.nan)
            out[at[ok]] = part
        return out


def confident_core(cluster_probs: pd.DataFrame, share: float | None) -> pd.Index:
    """The clustered accounts whose segment is their cluster. With `share` (a taxonomy's
    `core_share`: needs read from proxies), only the most confident share of them - the
    accounts clearly inside one cluster, by their probability there - so that a classifier
    learned from them on every behaviour signal reads the needs of the accounts between
    clusters. Deterministic: accounts tied at the cut are all kept."""
    if share is None or share >= 1 or cluster_probs.empty:
        return cluster_probs.index
    confidence = cluster_probs.max(axis=1)
    cut = float(np.quantile(confidence.to_numpy(), 1 - share))
    return cluster_probs.index[(confidence >= cut).to_numpy()]


@dataclass
class SwitchRule:
    """When an account may leave its previous segment (identity hysteresis)."""

    band: float  # clustered accounts: past the midpoint by this share of the centres' distance
    margin: float  # others: probability gain over the old segment
    runs: int  # others: or preferred the new segment this many runs in a row


def _hold_accounts(
    assigned: pd.Series, probs: pd.DataFrame, history: History, rule: SwitchRule, where: Whereabouts | None = None
) -> tuple[pd.Series, int]:
    """An account moves to another segment only when the new one is clearly better.

    A clustered account (its distances to the centres known): when it lies past the midpoint
    between its old segment's centre and the new one's by `rule.band` of their distance - a
    band either side of the boundary, so an account on the boundary does not flip with each
    month's noise and a refit that shifts the boundary a little moves nobody. Any other
    account: when its probability beats the old segment's by `rule.margin`, or it preferred
    the new segment for `rule.runs` consecutive runs (this one included). Otherwise it stays
    where the previous run put it. An account whose old segment is gone moves."""
    if history.assigned is None or history.assigned.empty:
        return assigned, 0
    prev = history.assigned.reindex(assigned.index)
    movable = prev.notna() & prev.isin(probs.columns) & prev.ne(assigned)
    if not movable.any():
        return assigned, 0
    idx = assigned.index[movable.to_numpy()]
    p = probs.loc[idx]
    cols = {c: i for i, c in enumerate(p.columns)}
    rows = np.arange(len(idx))
    gain = p.to_numpy()[rows, assigned.loc[idx].map(cols).to_numpy()] - p.to_numpy()[rows, prev.loc[idx].map(cols).to_numpy()]
    earlier = history.preferred_segments.reindex(idx).iloc[:, : max(rule.runs - 1, 0)] if history.preferred_segments is not None else None
    confirmed = (
        earlier.eq(assigned.loc[idx], axis=0).all(axis=1).to_numpy()
        if earlier is not None and earlier.shape[1] >= rule.runs - 1
        else np.zeros(len(idx), bool)
    )
    moves = (gain >= rule.margin) | confirmed
    if where is not None:
        past = where.past_midpoint(idx, prev, assigned)
        placed = ~np.isnan(past)
        moves[placed] = past[placed] >= rule.band
    stay = idx[~moves]
    out = assigned.copy()
    out.loc[stay] = prev.loc[stay]
    return out, len(stay)


def _published_before(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    return bool(
        con.execute("select count(*) from segments.segment_runs where run_id != ? and coalesce(published, true)", [run_id]).fetchone()[0]
    )


@dataclass
class Fit:
    """The clustered accounts' segments: main run, key tier, identities, populations."""

    main: Clustering
    key: KeyTier
    dims: Dimensions
    identities: list[Identity]
    segment_of: pd.Series  # fit accounts -> segment id
    cluster_probs: pd.DataFrame  # fit accounts x segment ids
    population: pd.Series  # every customer: all | key
    population_ids: dict[str, list[str]]
    where: Whereabouts | None = None  # clustered accounts' distances to their population's centres

    def continued(self, previous: pd.Series, was_key: pd.Series | None) -> pd.Series:
        """The previous run's segment of each account, under the id its cluster has now
        (`continue_renamed`), from this fit's identities."""
        renames = {"all": {i.renamed_from: i.segment_id for i in self.identities if i.renamed_from}}
        if self.key.mode == "separate":
            renames["key"] = {i.renamed_from: i.segment_id for i in self.key.identities if i.renamed_from}
        return continue_renamed(previous, was_key, renames)


def continue_renamed(previous: pd.Series, was_key: pd.Series | None, renames: dict[str, dict[str, str]]) -> pd.Series:
    """The previous run's segment of each account (`previous`), under the id its cluster has
    now: a cluster that continues under another id (an emerging segment now matching a
    taxonomy prototype, or the reverse; `segment_definitions.renamed_from`) keeps its
    members, so they did not change segment. `renames`: population -> {old id: new id}, with
    a 'key' entry when this run segmented the key tier on its own (its ids may repeat the
    others'); `was_key`: the accounts the previous run segmented as key accounts."""
    out = previous.copy()
    key = was_key.reindex(previous.index).fillna(False).astype(bool) if was_key is not None else pd.Series(False, index=previous.index)
    for population, mapping in renames.items():
        if not mapping:
            continue
        members = key if population == "key" else ~key if "key" in renames else pd.Series(True, index=previous.index)
        part = previous[members.to_numpy()]
        out.loc[part.index] = part.map(lambda s, m=mapping: m.get(s, s))
    return out


def continued_assignments(con: duckdb.DuckDBPyConnection, run_id: str, previous_run_id: str) -> pd.DataFrame:
    """The previous run's assignments (index account_id; segment_id, is_key_account) with each
    segment under the id it continues as in `run_id` (`continue_renamed`, from the stored
    `segment_definitions.renamed_from`): what a run's changes of segment are counted against.
    `stored_segment_id` keeps the id the previous run stored."""
    previous = (
        con.execute(
            "select account_id, segment_id, is_key_account from segments.assignments where run_id = ? order by account_id",
            [previous_run_id],
        )
        .df()
        .set_index("account_id")
    )
    renames: dict[str, dict[str, str]] = {}
    for population, old, new in con.execute(
        "select population, renamed_from, segment_id from segments.segment_definitions where run_id = ?", [run_id]
    ).fetchall():
        mapping = renames.setdefault(population, {})
        if old:
            mapping[old] = new
    previous["stored_segment_id"] = previous["segment_id"]
    previous["segment_id"] = continue_renamed(previous["segment_id"], previous["is_key_account"], renames)
    return previous


def _load(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    # A fixed row order: DuckDB returns rows in any order, and k-means seeding, forest
    # bootstraps and CV folds all depend on it. Customers and prospects are read apart:
    # never the whole table and a filtered copy of it in memory at once.
    first = con.execute("select as_of from marts.customer_features order by account_id limit 1").fetchone()
    if first is None:
        raise NeedsegError("customer_features is empty: load accounts and orders first (needseg ingest, needseg build)")
    feature_as_of = pd.Timestamp(first[0]).date()
    if feature_as_of != as_of:
        raise NeedsegError(f"customer_features describes {feature_as_of}, not {as_of}: build the features for this date first")

    def read(status: str) -> pd.DataFrame:
        frame = con.execute("select * from marts.customer_features where status = ? order by account_id", [status]).df()
        return frame.set_index("account_id", drop=False)

    customers, prospects = read("customer"), read("prospect")
    if len(customers) < 20:
        raise NeedsegError(f"only {len(customers)} customers as of {as_of}: too few to segment (at least 20 are needed)")
    return customers, prospects


def _fit(con, dims: Dimensions, customers, fit_index, is_key, lineage: Lineage, history: History, settings, cfg, warm: bool) -> Fit:
    """1. Cluster on the needs dimensions; the key tier on its own when it is large enough
    and differs from the other customers, and then the others without it."""
    taxonomy = dims.taxonomy
    key_fit = fit_index[is_key.loc[fit_index].to_numpy()]
    other_fit = fit_index[~is_key.loc[fit_index].to_numpy()]
    hold = _k_hold(history, _previous_segments(con, lineage.previous_run_id, "all", dims), dims, warm)
    main, dims = _cluster_main(dims, fit_index, settings, hold, customers["value_tier"])
    # (on the dimensions kept by the main clustering)
    previous_key = _previous_segments(con, lineage.previous_run_id, "key", dims)
    key_hold = None
    if warm and previous_key and history.key_preferred_k:
        # the key tier clusters on the values themselves (not whitened): its centres as stored
        key_hold = KHold(len(previous_key), history.key_preferred_k, np.array([p.centre for p in previous_key]))
    cap = settings.fit_sample
    key_sample = key_fit[bounded_sample(len(key_fit), cap, np.zeros(len(key_fit)), settings.seed)]
    other_sample = other_fit[bounded_sample(len(other_fit), cap, np.zeros(len(other_fit)), settings.seed)]
    key = _segment_key_tier(
        dims.values.loc[key_sample],
        dims.values.loc[other_sample],
        main.k,
        int(is_key.sum()),
        dims.taxonomy,
        settings,
        max(int(cfg["key_accounts_min"]), 10 * taxonomy.k_min),
        float(cfg["key_accounts_min_gain"]),
        previous_key,
        key_hold,
        _prior(dims, settings, key_tier=True),
    )
    separate = key.mode == "separate"
    if separate and len(key_sample) < len(key_fit):
        key.clustering, key.index = extend(key.clustering, dims.values.loc[key_fit].to_numpy()), key_fit
    main_index = other_fit if separate else fit_index
    if separate:
        main, _ = _cluster_main(dims, main_index, settings, hold, customers["value_tier"])
    space_centres = main.centres
    main.centres = dims.to_values(main.centres)
    identities = resolve_identities(main.centres, dims.taxonomy, _previous_segments(con, lineage.previous_run_id, "all", dims))
    id_of = np.array([i.segment_id for i in identities])
    segment_of = pd.Series(id_of[main.labels], index=main_index)
    cluster_probs = pd.DataFrame(main.probabilities, index=main_index, columns=id_of)
    population = pd.Series("all", index=customers.index)
    population_ids = {"all": list(id_of), "key": list(id_of)}
    if separate:
        key_id_of = np.array([i.segment_id for i in key.identities])
        segment_of = pd.concat([segment_of, pd.Series(key_id_of[key.clustering.labels], index=key.index)]).reindex(fit_index)
        key_probs = pd.DataFrame(key.clustering.probabilities, index=key.index, columns=key_id_of)
        cluster_probs = pd.concat([cluster_probs, key_probs]).reindex(fit_index)
        population.loc[is_key] = "key"
        population_ids["key"] = list(key_id_of)
    where = None
    if warm:  # identity hysteresis needs each account's place between the centres
        places = [Place(dims.space(main_index), space_centres, id_of)]
        if separate:
            places.append(Place(dims.values.loc[key.index].to_numpy(), key.clustering.centres, key_id_of))
        where = Whereabouts.of(places, [main_index, key.index] if separate else [main_index])
    return Fit(main, key, dims, identities, segment_of, cluster_probs, population, population_ids, where)


def _probabilities(fit: Fit, inference, customers, fit_index) -> tuple[pd.DataFrame, pd.DataFrame]:
    """2. Everyone not in the fit is inferred from behaviour; everyone gets behavioural probabilities.

    An inferred account is assigned among its own population's segments (a non-key account
    never to a segment only the key tier has); its behavioural probabilities stay the
    model's own, over every segment, for drift to watch."""
    all_ids = sorted(set(fit.segment_of) | set(inference.probabilities.columns))
    behaviour = inference.probabilities.reindex(index=customers.index, columns=all_ids).fillna(0.0)
    cluster_probs = fit.cluster_probs.reindex(columns=all_ids).fillna(0.0)
    probs = behaviour.copy()
    for name, ids in fit.population_ids.items():
        members = fit.population.index[fit.population.eq(name).to_numpy()]
        outside = [c for c in all_ids if c not in ids]
        if len(members) and outside:
            restricted = probs.loc[members].copy()
            restricted[outside] = 0.0
            total = restricted.sum(axis=1)
            probs.loc[members] = restricted.div(total.where(total > 0, 1.0), axis=0)
    probs.loc[fit_index] = cluster_probs.loc[fit_index]
    return probs, behaviour


def _evidence(fit: Fit, inference, taxonomy: Taxonomy, survey: Survey, prospect_rows, fallback, held, settings) -> Evidence:
    main = fit.main
    names = {i.segment_id: i.name for i in fit.identities}
    sizes = fit.segment_of.value_counts()
    total = max(int(sizes.sum()), 1)
    evidence = Evidence(
        jaccard={names[i.segment_id]: float(main.jaccard[n]) for n, i in enumerate(fit.identities)},
        shares={names.get(s, s): float(v / total) for s, v in sizes.items() if s in names},
        left_out=dict(fit.dims.left_out),
        dimensions_used=len(fit.dims.values.columns),
        answered=survey.usable + survey.unusable,
        unusable=survey.unusable,
        excluded=dict(survey.excluded),
        fallback=fallback,
        prospects=len(prospect_rows),
    )
    if taxonomy.basis == "survey" and inference.cv_accuracy is not None:
        evidence.classifier_accuracy = inference.cv_accuracy
        evidence.classifier_base_rate = inference.base_rate
        evidence.classifier_recall = {names.get(s, s): r for s, r in inference.cv_recall.items()}
    if len(prospect_rows):
        evidence.prospect_segments = int(prospect_rows["segment_id"].nunique())
        evidence.prospect_spread = float(prospect_rows["probability"].std(ddof=0))
    found = {i.taxonomy_id for i in fit.identities}
    evidence.not_found = [s.name for s in taxonomy.segments if s.id not in found]
    evidence.not_found_in = _not_found_in(fit, names)
    if main.preferred_k is not None and main.preferred_k != main.k:
        evidence.notes.append(main.reason)
    elif main.stability_k is not None and main.stability_k != main.k:
        # the taxonomy's prototypes changed k: say why
        evidence.notes.append(main.reason)
    if main.centres_note:
        evidence.notes.append(main.centres_note)
    if held:
        evidence.notes.append(
            f"{held} account(s) kept their previous segment: the new one was not clearly better (segmentation.switch_band, switch_margin, switch_runs)"
        )
    return evidence


def _not_found_in(fit: Fit, names: dict[str, str]) -> dict[str, str]:
    """Per taxonomy segment without a cluster of the main run: where its customers are -
    the segment holding most of the clustered accounts that resemble its prototype most."""
    taxonomy = fit.dims.taxonomy
    found = {i.taxonomy_id for i in fit.identities}
    index = fit.segment_of.index[fit.population.reindex(fit.segment_of.index).eq("all").to_numpy()]
    values = fit.dims.values.loc[index].to_numpy()
    segments = fit.segment_of.loc[index].to_numpy()
    out = {}
    for row, seg in enumerate(taxonomy.segments):
        if seg.id in found:
            continue
        where, held, resembling = where_prototype_sits(values, segments, taxonomy.prototype_matrix(), row)
        out[seg.name] = (
            f"its customers are in {names.get(where, where)} ({held} of the {resembling} clustered accounts closest to its prototype)"
            if where is not None
            else "no clustered account resembles its prototype more than another's"
        )
    return out


def segment(con: duckdb.DuckDBPyConnection, as_of: dt.date, taxonomy: Taxonomy, config: dict[str, Any]) -> SegmentRunResult:
    """One segmentation run (module docstring).

    Native thread pools (OpenMP in k-means, Gaussian mixtures and LightGBM, BLAS) are held
    to one thread: the samples they work on are small, so a second thread buys little on a
    quiet machine and costs 20x on a busy one (idle OpenMP threads spin while the cores are
    taken), and k-means' per-thread partial sums are then added in one order, the same on
    every machine. The forest builds its trees on two threads of its own (n_jobs)."""
    with threadpool_limits(limits=1):
        return _segment(con, as_of, taxonomy, config)


def _segment(con: duckdb.DuckDBPyConnection, as_of: dt.date, taxonomy: Taxonomy, config: dict[str, Any]) -> SegmentRunResult:
    started = time.monotonic()
    ensure_schema(con)
    cfg = config["segmentation"]
    settings = _cluster_settings(cfg)
    run_id = run_id_for(as_of)
    customers, prospects = _load(con, as_of)
    survey = _survey(customers)
    taxonomy, fallback = _taxonomy_for_run(taxonomy, survey, as_of)
    fit_mask = customers["is_surveyed"].fillna(False).astype(bool) if taxonomy.basis == "survey" else pd.Series(True, index=customers.index)
    fit_index = customers.index[fit_mask.to_numpy()]
    lineage = _lineage(con, as_of, run_id, taxonomy)
    dims = dimension_matrix(con, customers, taxonomy, fit_index, float(cfg["max_missing_share"]), settings.seed)
    steady = taxonomy.basis in cfg["hysteresis_bases"]
    tier_runs = int(cfg["key_tier_switch_runs"]) if steady else 1
    history = _history(con, lineage, max(int(cfg["switch_runs"]), tier_runs))
    is_key, tier_held = _hold_key_tier(customers["value_tier"], history, tier_runs)
    fit = _fit(con, dims, customers, fit_index, is_key, lineage, history, settings, cfg, steady)
    if tier_held:
        fit.key.evidence["tier_held"] = tier_held
    dims, main, key = fit.dims, fit.main, fit.key
    # The accounts whose segment is their cluster: every clustered one, or for needs read
    # from proxies (`core_share`) the confident core; the classifier reads everyone else.
    core = confident_core(fit.cluster_probs.loc[fit_index], taxonomy.core_share)

    inference = fit_and_score(
        customers,  # the training rows are taken from it by the labels' index (no copy of every labelled row)
        fit.segment_of.loc[core],
        customers,
        settings.seed,
        classifier=cfg["classifier"],
        sample=int(cfg["classifier_sample"]),
    )
    probs, behaviour = _probabilities(fit, inference, customers, core)
    preferred = probs.idxmax(axis=1)
    preferred.loc[core] = fit.segment_of.loc[core]
    assigned, held = preferred, 0
    if steady:
        if history.assigned is not None:
            history.assigned = fit.continued(history.assigned, history.is_key)
        rule = SwitchRule(float(cfg["switch_band"]), float(cfg["switch_margin"]), int(cfg["switch_runs"]))
        assigned, held = _hold_accounts(preferred, probs, history, rule, fit.where.only(core) if fit.where else None)
    source = pd.Series("inferred", index=customers.index)
    if taxonomy.basis == "survey":
        source.loc[fit_index] = "surveyed"

    # 3. Names, playbooks, explanations.
    definitions = _definitions(run_id, main, fit.identities, key, dims, assigned, fit.population)
    name_of = {d["segment_id"]: d["segment_name"] for d in definitions}
    drivers_json, drivers_text = _drivers(customers, dims.observed(), dims.taxonomy, assigned, core, fit.segment_of, inference)

    assignments = pd.DataFrame(
        {
            "run_id": run_id,
            "as_of": as_of,
            "account_id": customers.index,
            **{c: customers[c].values for c in ACCOUNT_DETAILS},
            "segment_id": assigned.values,
            "segment_name": assigned.map(name_of).values,
            "segment_source": source.values,
            "probability": probs.to_numpy()[np.arange(len(probs)), probs.columns.get_indexer(assigned)],
            "behaviour_segment_id": behaviour.idxmax(axis=1).values,
            "behaviour_probability": behaviour.max(axis=1).values,
            "value_tier": customers["value_tier"].values,
            "is_key_account": is_key.values,
            "drivers": drivers_json.values,
            "drivers_text": drivers_text.values,
            "preferred_segment_id": preferred.values,
            "survey_status": survey.status.values,
        }
    )
    long = probs.stack().rename("probability").reset_index()
    long.columns = ["account_id", "segment_id", "probability"]
    long["behaviour_probability"] = behaviour.stack().values
    long.insert(0, "run_id", run_id)

    prospect_rows = _prospects(
        run_id,
        as_of,
        customers,
        fit_index,
        assigned,
        prospects,
        dims.taxonomy,
        name_of,
        definitions,
        settings.seed,
        fit.population_ids["all"],
        cfg["classifier"],
        int(cfg["classifier_sample"]),
    )
    lookalike_rows = _lookalikes(run_id, as_of, customers, assigned, is_key, int(cfg["lookalikes_per_segment"]))
    profile_rows = _profiles(run_id, customers, dims.values, assigned, fit_index, is_key, key.mode, dims.taxonomy)
    evidence = _evidence(fit, inference, taxonomy, survey, prospect_rows, fallback, held, settings)
    if tier_held:
        evidence.notes.append(
            f"{tier_held} account(s) kept their previous side of the key-tier cut: the 80/20 cut has not put them on "
            "the other side in segmentation.key_tier_switch_runs consecutive runs (assignments.value_tier is the cut's tier)"
        )
    verdict = judge(evidence, VerdictSettings.from_config(cfg))
    if not verdict.published and not _published_before(con, run_id):
        verdict.published = True
        verdict.reasons.append(
            {"code": "first_published", "severity": "note", "text": "published although withheld: no earlier run was published"}
        )

    seconds = time.monotonic() - started
    run_row = {
        "run_id": run_id,
        "as_of": as_of,
        "created_at": clock.utc_naive_now(),
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
        "k_preferred": main.preferred_k,
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
        "verdict": verdict.verdict,
        "verdict_reasons": verdict.as_json(),
        "published": verdict.published,
        "fallback_reason": fallback,
        "feature_missing": json.dumps(
            {"dimensions": dims.missing_share, "left_out": dims.left_out, "classifier_inputs": inference.missing_share}
        ),
        "survey_unusable_customers": survey.unusable,
        "excluded_respondents": json.dumps(survey.excluded),
        "accounts_held": held,
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
        verdict=verdict.words(),
        verdict_code=verdict.verdict,
        fallback=fallback,
        survey=survey.words(),
        left_out=dict(dims.left_out),
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
        # only the columns the model reads (its inputs' sources): no copy of every column
        numeric, logged = INPUTS[inference.kind]
        needed = [c for c in dict.fromkeys([*numeric, *logged, *CATEGORICAL_COLUMNS]) if c in customers.columns]
        j, t = explain.model_drivers(
            inference, customers.loc[inferred, needed], assigned.loc[inferred], customers.loc[fit_index, needed], segment_of.loc[fit_index]
        )
        drivers_json.loc[inferred], drivers_text.loc[inferred] = j, t
    return drivers_json, drivers_text


def _definitions(
    run_id: str, main: Clustering, identities: list[Identity], key: KeyTier, dims: Dimensions, assigned: pd.Series, population: pd.Series
) -> list[dict[str, Any]]:
    rows = []
    taxonomy = dims.taxonomy

    def row(ident, centre, fitted, jaccard, name):
        seg = taxonomy.segment(ident.taxonomy_id) if ident.taxonomy_id else None
        playbook = seg.playbook if seg else {}
        stored = {"dimensions": taxonomy.dimension_names, "values": [round(float(v), 6) for v in centre]}
        if dims.scale is not None:
            # the centre in the dimensions' own units, for the next run to compare with
            stored["raw"] = [round(float(v), 6) for v in dims.to_raw(np.asarray(centre)[None, :])[0]]
        return {
            "run_id": run_id,
            "segment_id": ident.segment_id,
            "segment_name": ident.name,
            "taxonomy_id": ident.taxonomy_id,
            "is_emerging": ident.taxonomy_id is None,
            "population": name,
            "centre": json.dumps(stored),
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


def _prospects(
    run_id,
    as_of,
    customers,
    fit_index,
    assigned,
    prospects,
    taxonomy,
    name_of,
    definitions,
    seed,
    segment_ids,
    classifier="forest",
    sample: int | None = None,
) -> pd.DataFrame:
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
    result = fit_and_score(customers, assigned.loc[fit_index], prospects, seed, kind="prospect", classifier=classifier, sample=sample)
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
            "probabilities": _json_objects(p, 4),
            "offer": best.map({s: d.get("offer") for s, d in playbook.items()}).values,
            "serve": best.map({s: d.get("serve") for s, d in playbook.items()}).values,
        }
    )[columns]


def _json_objects(frame: pd.DataFrame, decimals: int) -> np.ndarray:
    """Each row as a JSON object of its columns, numbers rounded (as json.dumps(round(v)) writes them)."""
    out = np.full(len(frame), "{", dtype=object)
    for i, column in enumerate(frame.columns):
        out = (
            out
            + ("" if i == 0 else ", ")
            + json.dumps(str(column))
            + ": "
            + explain.json_numbers(frame[column].to_numpy(dtype=float), decimals)
        )
    return out + "}"


# Accounts x key accounts compared at a time in the lookalike search (memory bounded).
NEAREST_BLOCK = 4_000_000


def _nearest(points: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's nearest reference (first on ties) and the distance to it, in blocks
    of points so that points x refs stays under NEAREST_BLOCK."""
    step = max(1, NEAREST_BLOCK // max(len(refs), 1))
    nearest = np.empty(len(points), dtype=np.int64)
    distance = np.empty(len(points))
    for start in range(0, len(points), step):
        d2 = sq_distances(points[start : start + step], refs)
        nearest[start : start + step] = d2.argmin(axis=1)
        distance[start : start + step] = np.sqrt(d2[np.arange(len(d2)), nearest[start : start + step]])
    return nearest, distance


def _lookalikes(run_id, as_of, customers, assigned, is_key, per_segment: int) -> pd.DataFrame:
    """Per segment, the `per_segment` active non-key customers nearest to one of the
    segment's key accounts (scale-free behaviour, standardised), with that key account.
    Vectorised; the nearest key account is found in blocks (memory bounded)."""
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
    scaled = StandardScaler().fit_transform(values)
    active = (customers["revenue_12m"] > 0).to_numpy()
    key = is_key.to_numpy()
    segment = assigned.to_numpy()
    ids = customers.index.to_numpy()
    parts = []
    searches = []
    for seg in sorted(assigned.unique()):
        in_segment = segment == seg
        keys = np.nonzero(in_segment & key)[0]
        others = np.nonzero(in_segment & ~key & active)[0]
        if len(keys) and len(others):
            searches.append((seg, keys, others))
    # each segment's search on a core of its own (pipelines.parallel), results in segment order
    found = ordered_map(lambda s: _nearest(scaled[s[2]], scaled[s[1]]), searches)
    for (seg, keys, others), (nearest, distance) in zip(searches, found, strict=True):
        similarity = 1.0 / (1.0 + distance)
        order = np.lexsort((ids[others], -similarity))[:per_segment]
        chosen, their_key = others[order], keys[nearest[order]]
        parts.append(
            pd.DataFrame(
                {
                    "account_id": ids[chosen],
                    "account_name": customers["account_name"].to_numpy()[chosen],
                    "account_owner": customers["account_owner"].to_numpy()[chosen],
                    "segment_id": seg,
                    "similarity": [round(float(v), 4) for v in similarity[order]],  # at most per_segment
                    "rank_in_segment": np.arange(1, len(order) + 1),
                    "nearest_key_account_id": ids[their_key],
                    "nearest_key_account_name": customers["account_name"].to_numpy()[their_key],
                    "revenue_12m": customers["revenue_12m"].to_numpy(dtype=float)[chosen],
                    "key_account_median_revenue_12m": float(customers["revenue_12m"].iloc[keys].median()),
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=columns)
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "as_of", as_of)
    out.insert(0, "run_id", run_id)
    return out[columns]


def _profiles(run_id, customers, dims, assigned, fit_index, is_key, key_mode, taxonomy) -> pd.DataFrame:
    """Per population and segment: size, revenue share, each need (clustered accounts) and
    each behaviour (every member) against the population's own. One group-by per
    population: linear in the accounts."""
    rows = []
    behaviour_cols = [c for c in [*BEHAVIOUR_COLUMNS, "revenue_12m", "tenure_months", "satisfaction", "nps"] if c in customers.columns]
    values = customers[behaviour_cols].apply(pd.to_numeric, errors="coerce")
    revenue = customers["revenue_12m"].clip(lower=0)
    in_fit = customers.index.isin(fit_index)
    populations = [("all", np.ones(len(customers), dtype=bool))]
    if key_mode == "separate":
        populations.append(("key", is_key.to_numpy()))
    for population, member in populations:
        seg = assigned[member]
        n_members = int(member.sum())
        fit_member = member & in_fit
        needs = dims.loc[customers.index[fit_member]]
        need_overall = needs.mean()
        need_sd = needs.std().replace(0, np.nan)
        need_by_segment = needs.groupby(assigned[fit_member]).mean()
        here = values[member]
        overall, sd = here.mean(), here.std()
        by_segment = here.groupby(seg).mean()
        sizes = seg.value_counts()
        total = revenue[member].sum()
        revenue_by_segment = revenue[member].groupby(seg).sum()
        for s in sorted(seg.unique()):
            size = int(sizes[s])
            rows.append((run_id, s, population, "accounts", "size", float(size), float(n_members), size / n_members))
            share = revenue_by_segment[s] / total if total else None
            rows.append((run_id, s, population, "revenue_share", "value", share, 1.0, None))
            for d in dims.columns:
                v = need_by_segment.at[s, d] if s in need_by_segment.index else None
                idx = (v - need_overall[d]) / need_sd[d] if v is not None and pd.notna(need_sd[d]) else None
                rows.append((run_id, s, population, d, "need", v, float(need_overall[d]), idx))
            for c in behaviour_cols:
                v = by_segment.at[s, c]
                rows.append(
                    (
                        run_id,
                        s,
                        population,
                        c,
                        "behaviour",
                        v,
                        overall[c],
                        (v - overall[c]) / sd[c] if sd[c] and pd.notna(sd[c]) and pd.notna(v) else None,
                    )
                )
    frame = pd.DataFrame(
        rows, columns=["run_id", "segment_id", "population", "dimension", "kind", "segment_value", "overall_value", "index_vs_overall"]
    )
    for c in ("segment_value", "overall_value", "index_vs_overall"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float).round(6)
    return frame


def _store(con, run_id, run_row, definitions, assignments, long, profiles, prospects, lookalikes) -> None:
    with transaction(con):
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
