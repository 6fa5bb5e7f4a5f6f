"""Clustering needs profiles: choose k from the data, measure stability, name and align clusters.

Pure functions on arrays, no I/O: `run.py` feeds them the features and stores the results.

- k is chosen within the taxonomy's bounds. Each candidate k gets a silhouette, a
  Gaussian-mixture BIC and a bootstrap stability (Hennig's clusterwise Jaccard: refit on
  resamples, how well does each cluster reappear). The choice is the most detailed
  segmentation the data support: the largest k whose every cluster reappears with Jaccard
  >= `choose_stability` (0.85, "highly stable" in Hennig's terms) and none is tiny.
  Silhouette and BIC are kept as evidence but do not decide: on overlapping needs
  segments silhouette drifts towards too few clusters and BIC towards too many, while a
  spurious split shows at once as an unstable cluster.
- Clusters are aligned to the previous run's segments (Hungarian matching on centres,
  accepted only for mutual nearest centres) so ids and names stay put; clusters not
  carried over are named after the taxonomy prototype they resemble (Hungarian matching on
  cosine similarity), or published as "emerging" when they resemble none. Only segments of
  the same taxonomy lineage are comparable (run.py decides which previous run that is).
- Whether a group (the key tier) needs segments of its own: its own clusters against
  centres fitted without it, by held-out distance (`held_out_distance`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture

from pipelines.config import SegmentationConfig
from pipelines.parallel import ordered_map
from pipelines.segmentation.taxonomy import Taxonomy


@dataclass
class Candidate:
    k: int
    silhouette: float
    bic: float
    mean_jaccard: float
    min_jaccard: float
    smallest_share: float
    eligible: bool  # the stability rule's: every cluster >= choose_stability, none tiny
    # the prototype rule's evidence (None when the k rule ran without a taxonomy):
    # held-out log-likelihood per account gained over k-1 clusters (cross-validated
    # Gaussian mixture), the taxonomy segments whose prototype a cluster matches, and
    # whether this k is acceptable to the prototype rule (see `select_k`)
    held_out_gain: float | None = None
    prototypes: list[str] | None = None
    supported: bool | None = None
    from_prototypes: bool | None = None  # k-means (and its bootstrap refits) started from the prototypes


@dataclass
class Clustering:
    k: int
    centres: np.ndarray  # k x d
    labels: np.ndarray  # n
    probabilities: np.ndarray  # n x k
    jaccard: np.ndarray  # k: bootstrap stability per cluster
    silhouette: float
    candidates: list[Candidate]
    reason: str
    preferred_k: int | None = None  # what the stability rule preferred (k differs when the previous k was kept)
    centres_from: str = "fit"  # fit | warm start | kept: where the centres came from (see anchor)
    centres_note: str | None = None  # why, when the previous run's centres were kept or left
    stability_k: int | None = None  # what the stability rule alone preferred (differs when taxonomy segments it missed are supported)


@dataclass
class Identity:
    segment_id: str
    name: str
    taxonomy_id: str | None  # None for an emerging segment
    similarity: float  # to the named prototype (or the best one, for emerging)
    aligned_from: str | None = None  # previous run's segment id this cluster continues
    renamed_from: str | None = None


@dataclass
class PreviousSegment:
    segment_id: str
    name: str
    taxonomy_id: str | None
    centre: np.ndarray


# Defaults come from the typed configuration (pipelines/config.py): one place per key.
_DEFAULTS = SegmentationConfig()


@dataclass
class ClusterSettings:
    seed: int = _DEFAULTS.seed
    bootstrap_samples: int = _DEFAULTS.bootstrap_samples
    min_stability: float = _DEFAULTS.min_stability
    choose_stability: float = _DEFAULTS.choose_stability
    min_cluster_share: float = _DEFAULTS.min_cluster_share
    n_init: int = 20
    # identity hysteresis (see hold_k), the previous centres kept (see anchor) and the
    # warm start from them
    k_switch_runs: int = _DEFAULTS.k_switch_runs
    k_switch_margin: float = _DEFAULTS.k_switch_margin
    anchor_tolerance: float = _DEFAULTS.anchor_tolerance
    warm_start_tolerance: float = _DEFAULTS.warm_start_tolerance
    # silhouette on a sample of at most this many accounts (it is quadratic)
    silhouette_sample: int = _DEFAULTS.silhouette_sample
    # a larger population is fitted on a stratified sample of this many, then assigned
    fit_sample: int = _DEFAULTS.fit_sample
    # the prototype rule (select_k): k-fold cross-validation of the held-out likelihood
    k_rule: str = _DEFAULTS.k_rule
    held_out_folds: int = _DEFAULTS.held_out_folds
    notes: list[str] = field(default_factory=list)


def _kmeans(X: np.ndarray, k: int, seed: int, n_init: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(X)


def bootstrap_jaccard(X: np.ndarray, labels: np.ndarray, k: int, settings: ClusterSettings, init: np.ndarray | None = None) -> np.ndarray:
    """Hennig's clusterwise stability: mean best Jaccard of each cluster over bootstrap refits.

    The refits use the method that made `labels`: k-means from random starts, or started
    from `init` (the taxonomy's prototypes) when the clusters were."""
    rng = np.random.default_rng(settings.seed)
    n = len(X)
    # the resamples drawn in order first, then refitted on every core (pipelines.parallel)
    # and added up in the same order: the figures of one refit after another
    samples = [rng.integers(0, n, n) for _ in range(settings.bootstrap_samples)]

    def refit(b: int) -> np.ndarray:
        sample = samples[b]
        unique = np.unique(sample)
        if init is None:
            model = _kmeans(X[sample], k, settings.seed + b + 1, max(3, settings.n_init // 4))
        else:
            model = KMeans(n_clusters=k, init=init, n_init=1, random_state=settings.seed + b + 1).fit(X[sample])
        boot = model.predict(X[unique])
        orig = labels[unique]
        best = np.zeros(k)
        for i in range(k):
            a = orig == i
            if not a.any():
                continue
            for j in range(k):
                bj = boot == j
                union = np.logical_or(a, bj).sum()
                if union:
                    best[i] = max(best[i], np.logical_and(a, bj).sum() / union)
        return best

    totals = np.zeros(k)
    for best in ordered_map(refit, range(settings.bootstrap_samples)):
        totals += best
    return totals / settings.bootstrap_samples


def sq_distances(X: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distances n x k, in memory n x k (not n x k x d)."""
    d2 = (X**2).sum(axis=1)[:, None] - 2 * X @ centres.T + (centres**2).sum(axis=1)[None, :]
    return np.maximum(d2, 0.0)


def extend(clustering: Clustering, X: np.ndarray) -> Clustering:
    """A clustering fitted on a sample, applied to every account: nearest centre, and the
    soft assignment around the centres."""
    labels = sq_distances(X, clustering.centres).argmin(axis=1)
    return replace(clustering, labels=labels, probabilities=soft_assign(X, clustering.centres, labels))


def bounded_sample(n: int, cap: int, strata: np.ndarray, seed: int) -> np.ndarray:
    """Positions of at most `cap` of n accounts, each stratum represented in proportion
    (at least one account per stratum); all of them when n <= cap. Seeded, sorted."""
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    picked = []
    values, inverse = np.unique(strata, return_inverse=True)
    for j in range(len(values)):
        members = np.nonzero(inverse == j)[0]
        take = max(1, round(cap * len(members) / n))
        picked.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def soft_assign(X: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Posterior of an equal-weight spherical Gaussian mixture around the centres."""
    d2 = sq_distances(X, centres)
    within = d2[np.arange(len(X)), labels].mean() / max(X.shape[1], 1)
    logits = -d2 / (2 * max(within, 1e-6))
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class KHold:
    """What the previous runs of the lineage chose, for keeping k (identity hysteresis).

    `previous_k` is the k of the previous run; `preferred` the k the stability rule
    preferred in each earlier run, latest first; `centres` the previous run's centres
    (on this run's dimensions) to warm-start k-means from when k is kept."""

    previous_k: int
    preferred: list[int] = field(default_factory=list)
    centres: np.ndarray | None = None


def _rule_choice(candidates: list[Candidate], k_min: int, k_max: int, settings: ClusterSettings) -> tuple[Candidate, str]:
    eligible = [c for c in candidates if c.eligible]
    if eligible:
        best = max(eligible, key=lambda c: c.k)
        return best, (
            f"k={best.k}: the largest k in {k_min}-{k_max} whose every segment reappears in bootstrap refits "
            f"(min Jaccard {best.min_jaccard:.2f} >= {settings.choose_stability}) with none under "
            f"{settings.min_cluster_share:.0%} of accounts; silhouette {best.silhouette:.3f}, BIC {best.bic:.0f}"
        )
    best = max(candidates, key=lambda c: (c.min_jaccard, c.silhouette))
    return best, (
        f"k={best.k}: no k in {k_min}-{k_max} had every segment highly stable (Jaccard >= {settings.choose_stability}); "
        f"took the most stable (min Jaccard {best.min_jaccard:.2f})"
    )


def hold_k(preferred: Candidate, candidates: list[Candidate], settings: ClusterSettings, hold: KHold | None) -> tuple[int, str | None]:
    """Keep the previous run's k unless the preferred k is clearly better over consecutive runs.

    The previous k is kept while it is still acceptable (every segment at least
    `min_stability`, none under the minimum share) unless the stability rule has preferred
    another k in `k_switch_runs` consecutive runs (this one included) AND by a clear margin:
    a larger k whose least stable segment clears `choose_stability` by `k_switch_margin` (or
    that the prototype rule supports and that finds taxonomy segments the previous k misses), or
    a smaller k because the previous k's least stable segment fell `k_switch_margin` under it.
    A previous k that is no longer acceptable is left at once only for a preferred k that
    is: when no k is acceptable (e.g. every k has a segment under the minimum share, and
    the rule fell back to the most stable one), switching mends nothing, and the same
    margin and consecutive runs are needed.
    Returns the k to use and why it was held (None when the preferred k is taken)."""
    if hold is None or hold.previous_k == preferred.k:
        return preferred.k, None
    previous = next((c for c in candidates if c.k == hold.previous_k), None)
    if previous is None:
        return preferred.k, None

    def acceptable(c: Candidate) -> bool:
        return c.min_jaccard >= settings.min_stability and c.smallest_share >= settings.min_cluster_share

    if not acceptable(previous) and acceptable(preferred):
        return preferred.k, None
    streak = 1
    for k in hold.preferred:
        if k != preferred.k:
            break
        streak += 1
    if preferred.k > previous.k:
        # a clear margin, or (the prototype rule) supported and finding taxonomy segments the kept k misses
        clear = preferred.min_jaccard >= settings.choose_stability + settings.k_switch_margin or bool(
            preferred.supported and set(preferred.prototypes or []) > set(previous.prototypes or [])
        )
    else:
        clear = previous.min_jaccard < settings.choose_stability - settings.k_switch_margin
    if clear and streak >= settings.k_switch_runs:
        return preferred.k, None
    return previous.k, (
        f"k={previous.k} kept from the previous run: the stability rule preferred k={preferred.k} "
        f"({streak} consecutive run(s), {settings.k_switch_runs} needed; "
        f"{'a clear margin' if clear else 'no clear margin'} of {settings.k_switch_margin} in min Jaccard), "
        + (
            f"and k={previous.k} is still acceptable (min Jaccard {previous.min_jaccard:.2f} >= {settings.min_stability})"
            if acceptable(previous)
            else f"and k={preferred.k} is no more acceptable than k={previous.k} (min Jaccard {preferred.min_jaccard:.2f} and "
            f"{previous.min_jaccard:.2f}, smallest segment {preferred.smallest_share:.1%} and {previous.smallest_share:.1%}; "
            f"needed {settings.min_stability} and {settings.min_cluster_share:.0%})"
        )
    )


PrototypeMatch = Callable[[np.ndarray], list[str | None]]


@dataclass
class Prior:
    """The taxonomy as prior evidence for the k rule: `match` maps centres (in the
    clustering space) to the taxonomy segment each matches (None: none), as the clusters
    would be named; `seeds` are the taxonomy's prototypes in the clustering space, in the
    order of `names`. `weight` (the taxonomy's `prototype_weight`): the centres are drawn
    towards the prototypes they match, each prototype counting as `weight` times the
    clustered accounts (`toward_prototypes`); 0: not drawn."""

    match: PrototypeMatch
    seeds: np.ndarray
    names: list[str] = field(default_factory=list)
    weight: float = 0.0


def toward_prototypes(X: np.ndarray, centres: np.ndarray, prior: Prior, max_iter: int = 100) -> tuple[np.ndarray, list[int]]:
    """Centres drawn towards the taxonomy's prototypes: k-means with a prior (MAP).

    Each centre that matches a prototype (`prior.match`, as it would be named) becomes the
    mean of its accounts and the prototype, the prototype counting as `prior.weight` x
    len(X) accounts: c = (sum of its accounts + w n p) / (its accounts + w n). Alternated
    with every account to its nearest centre until nothing moves. A centre that matches no
    prototype (an emerging segment) is its accounts' mean, as in k-means. The weight is a
    share of the population, so the pull does not depend on how many accounts there are;
    a large weight holds the matched centres at the prototypes. Returns the centres and the
    rows of the centres that were drawn."""
    names = prior.match(centres)
    seed_of = {name: row for row, name in enumerate(prior.names)}
    rows = [j for j, m in enumerate(names) if m is not None and m in seed_of]
    if not rows or prior.weight <= 0 or not len(X):
        return centres, []
    pull = prior.weight * len(X)
    target = {j: prior.seeds[seed_of[names[j]]] for j in rows}
    centres = centres.copy()
    labels = None
    for _ in range(max_iter):
        new_labels = sq_distances(X, centres).argmin(axis=1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(len(centres)):
            members = X[labels == j]
            if j in target:
                centres[j] = (members.sum(axis=0) + pull * target[j]) / (len(members) + pull)
            elif len(members):
                centres[j] = members.mean(axis=0)
    return centres, rows


def held_out_loglik(
    X: np.ndarray, ks: list[int], settings: ClusterSettings, seeds: np.ndarray | None = None
) -> tuple[dict[int, float], float | None]:
    """Mean held-out log-likelihood per account of a diagonal Gaussian mixture with k
    components, per k: k-fold cross-validation (`held_out_folds`), every account scored by
    a mixture fitted without it. Unlike BIC (in-sample, penalised) a component that is not
    real does not raise it: it describes the training folds' noise, not the held-out ones.
    With `seeds`, also the mixture of len(seeds) components started from them (second value)."""
    from sklearn.model_selection import KFold

    folds = min(settings.held_out_folds, len(X))
    out = {k: 0.0 for k in ks}
    seeded = 0.0 if seeds is not None and len(seeds) <= len(X) else None
    splits = list(KFold(folds, shuffle=True, random_state=settings.seed).split(X))
    # every (fold, k) mixture fitted on every core (pipelines.parallel), added up per k in
    # fold order as one fit after another would; k None: the one started from the seeds
    fits = [(f, k) for f in range(len(splits)) for k in [*ks, *([None] if seeded is not None else [])]]

    def held_out(fit: tuple[int, int | None]) -> float:
        (train, test), k = splits[fit[0]], fit[1]
        if (len(seeds) if k is None else k) > len(train):
            return float("-inf")
        if k is None:
            gmm = GaussianMixture(len(seeds), covariance_type="diag", means_init=seeds, random_state=settings.seed, reg_covar=1e-3)
        else:
            gmm = GaussianMixture(k, covariance_type="diag", n_init=2, random_state=settings.seed, reg_covar=1e-3)
        return float(gmm.fit(X[train]).score_samples(X[test]).sum())

    for (_, k), value in zip(fits, ordered_map(held_out, fits), strict=True):
        # a fold with too few accounts for k makes it -inf, as it stays once it is
        if k is None:
            seeded = float("-inf") if value == float("-inf") else seeded + value
        else:
            out[k] = float("-inf") if value == float("-inf") else out[k] + value
    return {k: v / len(X) for k, v in out.items()}, (None if seeded is None else seeded / len(X))


def supported(c: Candidate, jaccard: np.ndarray, matched: list[str | None], settings: ClusterSettings) -> bool:
    """The prototype rule's test of one k: its clusters are real.

    - every cluster that matches a taxonomy prototype reappears in bootstrap refits with
      Jaccard >= `min_stability` (the taxonomy is prior evidence that such a segment
      exists, so "stable" suffices); a cluster that matches none needs `choose_stability`
      ("highly stable"), as under the stability rule;
    - no cluster under `min_cluster_share` of the accounts;
    - held out, k clusters describe the accounts better than k-1 (log-likelihood gain > 0).
    """
    floors = np.array([settings.min_stability if m is not None else settings.choose_stability for m in matched])
    gain_ok = c.held_out_gain is None or c.held_out_gain > 0
    return bool((jaccard >= floors).all() and c.smallest_share >= settings.min_cluster_share and gain_ok)


def select_k(candidates: list[Candidate], k_min: int, k_max: int, settings: ClusterSettings) -> tuple[Candidate, str]:
    """The k rule: the stability rule's k (`_rule_choice`), unless it misses taxonomy
    segments the data support.

    Without prototype evidence (`Candidate.supported` None) this is the stability rule. With
    it: among the k the prototype rule accepts (`supported`), the most taxonomy segments
    found wins; the stability rule's k is kept when it finds as many (so a highly stable
    extra cluster is still taken, as before), else the smallest k that finds them (a cluster
    without a prototype gets no benefit of the doubt)."""
    preferred, reason = _rule_choice(candidates, k_min, k_max, settings)
    accepted = [c for c in candidates if c.supported]
    if not accepted:
        return preferred, reason
    most = max(len(c.prototypes or []) for c in accepted)
    if preferred.supported and len(preferred.prototypes or []) == most:
        started = "; k-means started from the taxonomy's prototypes" if preferred.from_prototypes else ""
        return preferred, reason + f"; it finds {_found_words(preferred)}{started}"
    best = min((c for c in accepted if len(c.prototypes or []) == most), key=lambda c: c.k)
    missing = sorted(set(best.prototypes or []) - set(preferred.prototypes or []))
    why = (
        f"the stability rule's k={preferred.k} misses {', '.join(missing) or 'no taxonomy segment'}"
        if missing
        else f"the stability rule's k={preferred.k} is not supported (an unmatched cluster under {settings.choose_stability} "
        "Jaccard, a tiny one, or no held-out gain)"
    )
    return best, (
        f"k={best.k}: {why}; k={best.k} finds {_found_words(best)}, every segment whose prototype matches reappears in "
        f"bootstrap refits (min Jaccard {best.min_jaccard:.2f} >= {settings.min_stability}; a cluster matching no prototype "
        f"needs {settings.choose_stability}), none under {settings.min_cluster_share:.0%} of accounts (smallest "
        f"{best.smallest_share:.1%}), and held out it describes the accounts better than k={best.k - 1} (log-likelihood "
        f"+{best.held_out_gain:.3f} per account); silhouette {best.silhouette:.3f}"
        + ("; k-means started from the taxonomy's prototypes" if best.from_prototypes else "")
    )


def _found_words(c: Candidate) -> str:
    found = c.prototypes or []
    return f"{len(found)} taxonomy segment(s) ({', '.join(found)})" if found else "no taxonomy segment"


def _assess(
    X: np.ndarray,
    model: KMeans,
    init: np.ndarray | None,
    prior: Prior | None,
    loglik: float | None,
    loglik_before: float | None,
    settings: ClusterSettings,
) -> tuple[Candidate, np.ndarray]:
    """One candidate k's evidence for a fitted k-means (started from `init`, or random starts)."""
    n, k = len(X), model.n_clusters
    labels = model.labels_
    jac = bootstrap_jaccard(X, labels, k, settings, init)
    sample = min(n, settings.silhouette_sample)

    def silhouette() -> float:
        return float(silhouette_score(X, labels, sample_size=sample, random_state=settings.seed)) if n > k else float("nan")

    def mixture() -> GaussianMixture:
        return GaussianMixture(k, covariance_type="diag", n_init=2, random_state=settings.seed, reg_covar=1e-3).fit(X)

    sil, gmm = ordered_map(lambda task: task(), [silhouette, mixture])  # side by side (pipelines.parallel)
    share = float(np.bincount(labels, minlength=k).min() / n)
    eligible = bool(jac.min() >= settings.choose_stability and share >= settings.min_cluster_share)
    candidate = Candidate(
        k,
        round(sil, 4),
        round(float(gmm.bic(X)), 1),
        round(float(jac.mean()), 4),
        round(float(jac.min()), 4),
        round(share, 4),
        eligible,
    )
    if prior is not None:
        matched = prior.match(model.cluster_centers_)
        gain = loglik - loglik_before if loglik is not None and loglik_before is not None else None
        candidate.held_out_gain = None if gain is None or not np.isfinite(gain) else round(float(gain), 4)
        candidate.prototypes = sorted({m for m in matched if m is not None})
        candidate.supported = supported(candidate, jac, matched, settings)
        candidate.from_prototypes = init is not None
    return candidate, jac


def choose_k(
    X: np.ndarray,
    k_min: int,
    k_max: int,
    settings: ClusterSettings,
    hold: KHold | None = None,
    prior: Prior | None = None,
) -> Clustering:
    """Choose k (`select_k`), hold it (`hold_k`) and cluster. Without a `prior` (the
    taxonomy's prototypes) k is the stability rule's.

    With one, when the k equal to the number of prototypes is not supported from random
    starts (`supported`), it is fitted from the prototypes: k-means started at them, taken
    when it describes the accounts within `warm_start_tolerance` (inertia) of the fit from
    random starts and is supported - its bootstrap refits and held-out mixture start from
    the prototypes too (the same method on each resample). Random starts split a large
    segment before they isolate a small one; the prototypes say where to look."""
    n = len(X)
    k_min, k_max = k_bounds(n, k_min, k_max)
    fits: dict[int, tuple[KMeans, np.ndarray]] = {}
    candidates: list[Candidate] = []
    seeds = prior.seeds if prior is not None and k_min <= len(prior.seeds) <= k_max else None
    loglik, seeded_loglik = held_out_loglik(X, list(range(max(1, k_min - 1), k_max + 1)), settings, seeds) if prior else ({}, None)
    # each k's k-means from random starts, fitted on every core (pipelines.parallel)
    ks = list(range(k_min, k_max + 1))
    models = dict(zip(ks, ordered_map(lambda k: _kmeans(X, k, settings.seed, settings.n_init), ks), strict=True))
    for k in range(k_min, k_max + 1):
        model = models[k]
        candidate, jac = _assess(X, model, None, prior, loglik.get(k), loglik.get(k - 1), settings)
        if seeds is not None and k == len(seeds) and not candidate.supported:
            # the taxonomy's k not supported from random starts: started from the prototypes
            started = KMeans(n_clusters=k, init=seeds, n_init=1, random_state=settings.seed).fit(X)
            if started.inertia_ <= model.inertia_ * (1 + settings.warm_start_tolerance):
                alternative, alt_jac = _assess(X, started, seeds, prior, seeded_loglik, loglik.get(k - 1), settings)
                if alternative.supported:
                    model, candidate, jac = started, alternative, alt_jac
                    loglik[k] = seeded_loglik if seeded_loglik is not None else loglik[k]
        candidates.append(candidate)
        fits[k] = (model, jac)
    preferred, reason = select_k(candidates, k_min, k_max, settings)
    stability = _rule_choice(candidates, k_min, k_max, settings)[0]
    k, held = hold_k(preferred, candidates, settings, hold)
    model, jac = fits[k]
    centres, source, note = anchor(X, model, hold, settings)
    if prior is not None and prior.weight > 0:
        centres, drawn = toward_prototypes(X, centres, prior)
        if drawn:
            drew = (
                f"{len(drawn)} of the {k} centres drawn towards the taxonomy prototypes they match "
                f"(each prototype weighs {prior.weight:g} x the {len(X)} clustered accounts: the taxonomy's prototype_weight)"
            )
            note = f"{note}; {drew}" if note else drew
    # every account to its nearest centre: kept, warm-started and drawn centres are not the
    # fresh fit's, whose labels number its own clusters (in another order)
    moved = centres is not model.cluster_centers_
    labels = sq_distances(X, centres).argmin(axis=1) if moved else model.labels_
    if moved:
        # the bootstrap Jaccard was measured on the fresh fit's clusters: each centre used
        # takes the one of the fresh cluster matched to it
        used, fresh = linear_sum_assignment(sq_distances(centres, model.cluster_centers_))
        jac = jac[fresh[np.argsort(used)]]
    chosen = next(c for c in candidates if c.k == k)
    return Clustering(
        k=k,
        centres=centres,
        labels=labels,
        probabilities=soft_assign(X, centres, labels),
        jaccard=jac,
        silhouette=chosen.silhouette,
        candidates=candidates,
        reason=held or reason,
        preferred_k=preferred.k,
        centres_from=source,
        centres_note=note,
        stability_k=stability.k,
    )


def anchor(X: np.ndarray, fresh: KMeans, hold: KHold | None, settings: ClusterSettings) -> tuple[np.ndarray, str, str | None]:
    """The centres to use: the previous run's, unchanged, while they describe the data
    nearly as well as a fresh fit; else a k-means warm-started from them; else the fresh fit.

    Kept centres mean an account changes segment only when its own behaviour moved across
    a boundary, never because the boundaries were redrawn around it. They are kept while
    their inertia (squared distances to the nearest centre) is within `anchor_tolerance`
    of the fresh fit's: a real change in the population - a group that grew, split or
    moved - makes the fresh fit clearly better, and the centres are refitted. Returns the
    centres, where they came from (kept | warm start | fit) and why."""
    k = len(fresh.cluster_centers_)
    if hold is None or hold.centres is None or not len(hold.centres):
        return fresh.cluster_centers_, "fit", None
    if len(hold.centres) != k:
        # k changed: start from the previous centres that continue (matched to the fresh
        # fit's) and the fresh centres that are new, so continuing segments keep their members
        fresh_rows, old_rows = linear_sum_assignment(sq_distances(fresh.cluster_centers_, hold.centres))
        init = fresh.cluster_centers_.copy()
        init[fresh_rows] = hold.centres[old_rows]
        warm = KMeans(n_clusters=k, init=init, n_init=1, random_state=settings.seed).fit(X)
        if warm.inertia_ <= fresh.inertia_ * (1 + settings.warm_start_tolerance):
            return (
                warm.cluster_centers_,
                "warm start",
                f"k changed from {len(hold.centres)} to {k}: started from the previous run's centres that continue",
            )
        return fresh.cluster_centers_, "fit", None
    kept = float(sq_distances(X, hold.centres).min(axis=1).sum())
    excess = kept / fresh.inertia_ - 1 if fresh.inertia_ > 0 else 0.0
    if excess <= settings.anchor_tolerance:
        return (
            hold.centres,
            "kept",
            (
                f"the previous run's {k} segment centres kept: they describe this run's accounts within {excess:.1%} of a fresh "
                f"fit (inertia; segmentation.anchor_tolerance {settings.anchor_tolerance:.0%})"
            ),
        )
    refitted = f"the previous run's segment centres describe this run's accounts {excess:.1%} worse than a fresh fit (more than segmentation.anchor_tolerance {settings.anchor_tolerance:.0%}): refitted"
    # warm start from the previous run's centres: the same local optimum, unless the data
    # moved so far that a fresh fit is clearly better
    warm = KMeans(n_clusters=k, init=hold.centres, n_init=1, random_state=settings.seed).fit(X)
    if warm.inertia_ <= fresh.inertia_ * (1 + settings.warm_start_tolerance):
        return warm.cluster_centers_, "warm start", refitted + ", starting from them"
    return fresh.cluster_centers_, "fit", refitted


def k_bounds(n: int, k_min: int, k_max: int) -> tuple[int, int]:
    """The candidate k for n accounts: the taxonomy's bounds, with at least 10 accounts per segment."""
    k_max = min(k_max, max(2, n // 10))
    return min(k_min, k_max), k_max


def held_out_distance(
    X: np.ndarray, ks: range, other_centres: np.ndarray, settings: ClusterSettings, folds: int = 5
) -> tuple[dict[int, float], float]:
    """How well do a group's own segments describe it, against segments found without it?

    Returns mean squared distances of the accounts to their nearest centre: per k in `ks`,
    of the group's own k-means refitted without them (k-fold cross-validation); and of
    `other_centres`, fitted on other accounts. Every distance is to centres that never
    saw the account, so the comparison is fair."""
    from sklearn.model_selection import KFold

    own = {k: np.zeros(len(X)) for k in ks}
    for train, test in KFold(folds, shuffle=True, random_state=settings.seed).split(X):
        for k in ks:
            centres = _kmeans(X[train], k, settings.seed, settings.n_init).cluster_centers_
            own[k][test] = ((X[test][:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).min(axis=1)
    other = ((X[:, None, :] - other_centres[None, :, :]) ** 2).sum(axis=2).min(axis=1)
    return {k: float(d.mean()) for k, d in own.items()}, float(other.mean())


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a @ b.T) / np.maximum(na * nb.T, 1e-9)


def where_prototype_sits(values: np.ndarray, segments: np.ndarray, prototypes: np.ndarray, row: int) -> tuple[str | None, int, int]:
    """Where the accounts resembling one taxonomy prototype went, when no cluster matches it.

    The accounts whose profile (`values`, as the centres are named: cosine similarity)
    resembles prototype `row` most of all prototypes; returns the segment (of `segments`,
    one per account) holding most of them, how many it holds and how many there are
    (None, 0, 0 when no account resembles it most)."""
    if not len(values):
        return None, 0, 0
    nearest = _cosine(values, prototypes).argmax(axis=1)
    theirs = pd.Series(segments[nearest == row])
    if theirs.empty:
        return None, 0, 0
    counts = theirs.value_counts()
    return str(counts.index[0]), int(counts.iloc[0]), len(theirs)


def distinguishing_names(centres: np.ndarray, rows: list[int], dimensions: list[str], label: str) -> dict[int, str]:
    """Names for clusters that resemble no prototype, after what sets each apart from the
    other clusters: the dimension where its centre is furthest above the mean of the other
    centres and the one furthest below, e.g. "Emerging: high partnership, low delivery".
    Names are made unique by adding the next distinguishing dimension, never by reordering
    the same words."""
    k = len(centres)
    names: dict[int, str] = {}
    used: set[str] = set()

    def words(i: int, diff: np.ndarray) -> str:
        return f"{'high' if diff[i] > 0 else 'low'} {dimensions[i].replace('_', ' ')}"

    for r in rows:
        others = [i for i in range(k) if i != r]
        diff = centres[r] - (centres[others].mean(axis=0) if others else 0.0)
        picked = list(dict.fromkeys([int(np.argmax(diff)), int(np.argmin(diff))]))
        rest = [int(i) for i in np.argsort(-np.abs(diff)) if int(i) not in picked]
        name = f"{label}: " + ", ".join(words(i, diff) for i in picked)
        while name in used and rest:
            picked.append(rest.pop(0))
            name = f"{label}: " + ", ".join(words(i, diff) for i in picked)
        if name in used:
            name = f"{name} ({r + 1})"
        used.add(name)
        names[r] = name
    return names


@dataclass(frozen=True)
class EmergingStyle:
    """How a population's emerging segments are called: ids `<prefix>_<n>`, names `<label>: ...`.

    The key tier's own segmentation uses its own prefix, so an emerging group among key
    accounts never shares an id (or a name) with an emerging group of the main run."""

    prefix: str = "emerging"
    label: str = "Emerging"


MAIN_EMERGING = EmergingStyle()
KEY_EMERGING = EmergingStyle("key_emerging", "Emerging among key accounts")


def resolve_identities(
    centres: np.ndarray,
    taxonomy: Taxonomy,
    previous: list[PreviousSegment],
    emerging: EmergingStyle = MAIN_EMERGING,
) -> list[Identity]:
    """Give each cluster a segment id and name, keeping the previous run's where it continues.

    `previous` must come from a run of the same identity lineage (same dimensions; see
    Taxonomy.lineage_digest): centres of another taxonomy are not comparable."""
    k = len(centres)
    protos = taxonomy.prototype_matrix()
    similarity = _cosine(centres, protos)
    ids: list[Identity | None] = [None] * k
    used: set[str] = set()
    aligned: dict[int, PreviousSegment] = {}
    if previous:
        prev_centres = np.array([p.centre for p in previous])
        if prev_centres.shape[1] != centres.shape[1]:
            raise ValueError(
                f"previous centres have {prev_centres.shape[1]} dimensions, these {centres.shape[1]}: "
                "pass only segments of the same taxonomy lineage"
            )
        dist = np.sqrt(((centres[:, None, :] - prev_centres[None, :, :]) ** 2).sum(axis=2))
        rows, cols = linear_sum_assignment(dist)
        for r, c in zip(rows, cols, strict=False):
            if dist[r].argmin() == c and dist[:, c].argmin() == r:
                aligned[r] = previous[c]
    tax_index = {s.id: i for i, s in enumerate(taxonomy.segments)}
    for r, prev in aligned.items():
        if prev.taxonomy_id in tax_index and similarity[r, tax_index[prev.taxonomy_id]] >= taxonomy.min_similarity:
            # the taxonomy's current name: a segment renamed in the YAML shows its new name
            name = taxonomy.segments[tax_index[prev.taxonomy_id]].name
            ids[r] = Identity(prev.segment_id, name, prev.taxonomy_id, float(similarity[r, tax_index[prev.taxonomy_id]]), prev.segment_id)
            used.add(prev.taxonomy_id)
    rest = [r for r in range(k) if ids[r] is None]
    free = [j for j, s in enumerate(taxonomy.segments) if s.id not in used]
    if rest and free:
        rr, cc = linear_sum_assignment(-similarity[np.ix_(rest, free)])
        for a, b in zip(rr, cc, strict=False):
            r, j = rest[a], free[b]
            if similarity[r, j] >= taxonomy.min_similarity:
                seg = taxonomy.segments[j]
                prev = aligned.get(r)
                ids[r] = Identity(
                    seg.id,
                    seg.name,
                    seg.id,
                    float(similarity[r, j]),
                    aligned_from=prev.segment_id if prev else None,
                    renamed_from=prev.segment_id if prev and prev.segment_id != seg.id else None,
                )
                used.add(seg.id)
    taken = {p.segment_id for p in previous if p.taxonomy_id is None}
    names = distinguishing_names(centres, [r for r in range(k) if ids[r] is None], taxonomy.dimension_names, emerging.label)
    for r in range(k):
        if ids[r] is not None:
            continue
        prev = aligned.get(r)
        best = float(similarity[r].max())
        name = names[r]
        if prev is not None and prev.taxonomy_id is None:
            ids[r] = Identity(prev.segment_id, name, None, best, prev.segment_id)
            continue
        n = 1
        while f"{emerging.prefix}_{n}" in taken:
            n += 1
        taken.add(f"{emerging.prefix}_{n}")
        ids[r] = Identity(
            f"{emerging.prefix}_{n}",
            name,
            None,
            best,
            aligned_from=prev.segment_id if prev else None,
            renamed_from=prev.segment_id if prev else None,
        )
    return [i for i in ids if i is not None]
