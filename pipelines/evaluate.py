"""`needseg evaluate`: how good are needseg's segments and drift flags, by measurement.

A generated world carries its ground truth (`truth/`, never read by the pipeline). The
evaluation replays the world month by month through the same steps a production cycle
runs (ingest, features, segment, drift), then compares with the truth:

Segments (as of the last month, separately for surveyed and inferred accounts):
- needseg's adjusted Rand index (ARI) against the true needs segments;
- a supervised ceiling: needseg's classifier (a random forest) given the same inputs and
  the TRUE labels, cross-validated - for surveyed accounts on their survey needs (5-fold
  CV), for inferred accounts on the same behaviour and firmographics, trained on the
  surveyed accounts (the only accounts whose labels could ever be known) and scored on
  the inferred ones. needseg/ceiling therefore measures what needseg's own labels cost.
  Printed beside it for transparency: the strongest of three classifier families
  (forest, gradient boosting, a soft-voting ensemble with logistic regression) on the
  true labels, and the optimistic variant (5-fold CV over all customers);
- a naive baseline: k-means on standardised raw per-account aggregates, its k chosen by
  silhouette within the taxonomy's bounds (it is not told the true number of segments);
- bootstrap Jaccard per published segment, and whether a re-run on unchanged data
  changes any assignment.

Drift (issue 5) is added by `pipelines.drift` when present.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.preprocessing import StandardScaler

from pipelines import cycle
from pipelines.config import load_config
from pipelines.demo.world import WorldSpec, deliver, extract_months, generate
from pipelines.errors import NeedsegError
from pipelines.segmentation.inference import BEHAVIOUR_COLUMNS, CATEGORICAL_COLUMNS, LOG_COLUMNS, design_matrix
from pipelines.segmentation.inference import model as needseg_model
from pipelines.segmentation.run import run_id_for
from pipelines.segmentation.taxonomy import Taxonomy, load_taxonomy
from pipelines.settings import Settings
from pipelines.warehouse import open_warehouse

# Large populations (the scale benchmark's worlds, `needseg bench --quality`): the segment
# figures are computed on a random sample of SCORE_SAMPLE customers (needseg's ARI on it
# estimates the population's; the ceilings are trained within it), and the optimistic
# ceiling (5-fold CV of three classifier families over every scored customer) only up to
# OPTIMISTIC_MAX customers. The demo and suite worlds (700-3,000 customers) are scored whole.
SCORE_SAMPLE = 10_000
OPTIMISTIC_MAX = 5_000

# Raw per-account aggregates a first attempt would cluster on, as they come.
NAIVE_COLUMNS = [
    "revenue_12m",
    "orders_12m",
    "tickets_12m",
    "quotes_12m",
    "discount_depth_12m",
    "critical_tickets_12m",
    "price_tickets_12m",
    "quotes_lost_on_price_12m",
    "tenure_months",
    "employees",
]


def month_end(month: str) -> dt.date:
    return pd.Period(month, "M").end_time.date()


@dataclass
class GroupScore:
    accounts: int
    needseg_ari: float
    ceiling_ari: float
    strongest_ceiling_ari: float
    strongest_ceiling_model: str
    optimistic_ceiling_ari: float | None
    naive_ari: float

    @property
    def ratio(self) -> float:
        return self.needseg_ari / self.ceiling_ari if self.ceiling_ari > 0 else float("nan")

    @property
    def strongest_ratio(self) -> float:
        return self.needseg_ari / self.strongest_ceiling_ari if self.strongest_ceiling_ari > 0 else float("nan")


@dataclass
class RunFigures:
    """What segment_runs records for a run: the evidence for k and the quality figures."""

    k_reason: str
    candidates: list[dict[str, Any]]
    silhouette: float | None
    min_jaccard: float
    classifier_cv_accuracy: float | None
    key_account_mode: str
    key_account_why: str
    verdict: str | None = None
    verdict_reasons: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"  {self.k_reason}",
            f"  {'candidate k':>13}{'silhouette':>12}{'BIC':>11}{'mean Jaccard':>14}{'min Jaccard':>13}{'smallest':>10}  chosen if eligible",
        ]
        out.extend(
            f"  {c['k']:>13}{c['silhouette']:>12.3f}{c['bic']:>11.0f}{c['mean_jaccard']:>14.2f}{c['min_jaccard']:>13.2f}"
            f"{c['smallest_share']:>10.0%}  {'eligible' if c['eligible'] else '-'}"
            for c in self.candidates
        )
        cv = f"{self.classifier_cv_accuracy:.3f}" if self.classifier_cv_accuracy is not None else "n/a (behaviour taxonomy)"
        sil = f"{self.silhouette:.3f}" if self.silhouette is not None else "n/a"
        out.append(
            f"  silhouette {sil}; stability (min bootstrap Jaccard) {self.min_jaccard:.2f}; "
            f"classifier CV accuracy on surveyed accounts' segments {cv}"
        )
        out.append(f"  key accounts: {self.key_account_mode} - {self.key_account_why}")
        out.append(f"  verdict: {self.verdict}" + (" - " + "; ".join(self.verdict_reasons) if self.verdict_reasons else ""))
        return out


@dataclass
class SegmentQuality:
    as_of: str
    run_id: str
    k: int
    surveyed: GroupScore | None  # None when no customer answered a survey
    inferred: GroupScore
    jaccard: dict[str, float]
    run: RunFigures | None = None
    naive_k: int | None = None
    naive_k_bounds: tuple[int, int] | None = None
    # customers scored against the truth; above SCORE_SAMPLE the groups are a random sample
    population: int | None = None
    rerun_changed: int | None = None
    seconds_per_resegmentation: float | None = None
    # every replayed run (month -> ARI of every customer's segment against that month's true
    # needs): one month-end figure is one draw from a series that moves month to month
    by_month: dict[str, float] = field(default_factory=dict)

    @property
    def sampled(self) -> bool:
        return self.population is not None and self.population > SCORE_SAMPLE

    def by_month_line(self) -> str | None:
        if len(self.by_month) < 2:
            return None
        values = np.array(list(self.by_month.values()))
        return (
            "  every run of the replay against that month's true needs (ARI, every customer; the ceiling is computed for "
            f"the last month only): min {values.min():.3f}, median {np.median(values):.3f}, max {values.max():.3f} - "
            + ", ".join(f"{m} {v:.3f}" for m, v in self.by_month.items())
        )


@dataclass
class EvaluationReport:
    world: str
    months: list[str]
    segments: SegmentQuality | None = None
    drift: dict[str, Any] | None = None
    cycle_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"needseg evaluation on {self.world} ({len(self.months)} monthly runs, {self.months[0]} .. {self.months[-1]}); {self.seconds:.0f} s"
        ]
        if self.cycle_seconds:
            out.append("  mean seconds per cycle stage: " + ", ".join(f"{k} {v:.1f}" for k, v in self.cycle_seconds.items()))
        s = self.segments
        if s:
            out += [
                "",
                f"Segments as of {s.as_of} (run {s.run_id}, k={s.k}), adjusted Rand index against the true needs segments"
                + (f" (a random sample of {SCORE_SAMPLE:,} of {s.population:,} customers):" if s.sampled else ":"),
                f"  {'group':<10}{'accounts':>9}{'needseg':>9}{'ceiling':>9}{'needseg/ceiling':>17}{'naive baseline':>16}"
                f"{'strongest':>11}{'needseg/strongest':>19}{'all-CV':>8}",
            ]
            if s.surveyed is None:
                out.append(
                    "  no survey answered: every customer inferred from behaviour; ceiling = the classifier on the true labels, "
                    "behaviour inputs only, 5-fold CV over every customer (the behaviour-only supervised ceiling)"
                )
            for name, g in (("surveyed", s.surveyed), ("inferred", s.inferred)):
                if g is None:
                    continue
                opt = f"{g.optimistic_ceiling_ari:.3f}" if g.optimistic_ceiling_ari is not None else "-"
                out.append(
                    f"  {name:<10}{g.accounts:>9}{g.needseg_ari:>9.3f}{g.ceiling_ari:>9.3f}{g.ratio:>16.0%}{g.naive_ari:>16.3f}"
                    f"{g.strongest_ceiling_ari:>11.3f}{g.strongest_ratio:>18.0%}{opt:>8}"
                )
            if s.naive_k is not None:
                out.append(
                    f"  naive baseline: k-means on standardised raw aggregates ({', '.join(NAIVE_COLUMNS)}), "
                    f"k={s.naive_k} chosen by silhouette in {s.naive_k_bounds[0]}-{s.naive_k_bounds[1]} (not told the true k);"
                )
            out.append("  ceiling: needseg's classifier (random forest) trained on the true labels, same inputs, cross-validated;")
            out.append(
                "  strongest: the best of forest, boosting and an ensemble on the true labels ("
                + (f"{s.surveyed.strongest_ceiling_model} for surveyed, " if s.surveyed else "")
                + f"{s.inferred.strongest_ceiling_model} for inferred); all-CV: 5-fold CV over every customer"
                + f" (left out above {OPTIMISTIC_MAX:,} customers)"
            )
            out.append("  bootstrap Jaccard per segment: " + ", ".join(f"{k} {v:.2f}" for k, v in s.jaccard.items()))
            if s.by_month_line():
                out.append(s.by_month_line())
            if s.run:
                out += [
                    "",
                    f"How run {s.run_id} chose k={s.k} (segment_runs: k_reason, k_evidence, silhouette, min_jaccard, classifier_cv_accuracy):",
                    *s.run.lines(),
                ]
            if s.rerun_changed is not None:
                out.append(
                    f"  re-running the segmentation on unchanged data changed {s.rerun_changed} assignment(s)"
                    + (f"; one re-segmentation took {s.seconds_per_resegmentation:.1f} s" if s.seconds_per_resegmentation else "")
                )
        if self.drift:
            out += ["", *self.drift.get("lines", [])]
        return out

    def as_dict(self) -> dict[str, Any]:
        def plain(o):
            if isinstance(o, GroupScore):
                return {**o.__dict__, "ratio": o.ratio, "strongest_ratio": o.strongest_ratio}
            if hasattr(o, "__dict__"):
                return {k: plain(v) for k, v in o.__dict__.items()}
            if isinstance(o, dict):
                return {k: plain(v) for k, v in o.items()}
            if isinstance(o, list):
                return [plain(v) for v in o]
            return o

        return plain(self)


def truth_segments(world: Path, month: str) -> pd.Series:
    truth = pd.read_parquet(world / "truth" / "segments_monthly.parquet")
    truth = truth[truth["month"] == month]
    return truth.set_index("account_id")["segment"]


def _ari(a, b) -> float:
    return float(adjusted_rand_score(np.asarray(a), np.asarray(b)))


def ceiling_models(seed: int) -> dict[str, Any]:
    """Classifier families for the supervised ceiling: needseg's own and two others."""
    from sklearn.ensemble import HistGradientBoostingClassifier, VotingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def boosting():
        return HistGradientBoostingClassifier(max_iter=150, learning_rate=0.04, max_leaf_nodes=8, l2_regularization=1.0, random_state=seed)

    logistic = make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=0.3, max_iter=3000),
    )
    return {
        "random forest": needseg_model(seed),
        "gradient boosting": boosting(),
        "ensemble": VotingClassifier([("logistic", logistic), ("forest", needseg_model(seed)), ("boosting", boosting())], voting="soft"),
    }


def best_of(truth: pd.Series, predictions: dict[str, Any]) -> tuple[float, str]:
    scores = {name: _ari(truth, pred) for name, pred in predictions.items()}
    name = max(scores, key=scores.get)
    return scores[name], name


def _segment_jaccard(con, run_id: str) -> dict[str, float]:
    """Bootstrap Jaccard per segment of a run (its main population), by segment name."""
    return dict(
        con.execute(
            "select segment_name, round(jaccard, 3) from segments.segment_definitions where run_id = ? and population = 'all' order by segment_id",
            [run_id],
        ).fetchall()
    )


def segment_quality(con, world: Path, as_of: dt.date, taxonomy: Taxonomy, seed: int = 42) -> SegmentQuality:
    """Score the run as of `as_of` against the world's true segments of that month, and
    every run of the replay up to it against its own month's (`by_month`)."""
    from threadpoolctl import threadpool_limits

    # Gradient boosting's OpenMP threads thrash on a busy 2-core machine; one is faster.
    with threadpool_limits(limits=1):
        quality = _segment_quality(con, world, as_of, taxonomy, seed)
    quality.by_month = agreement_by_month(con, world, as_of)
    return quality


def agreement_by_month(con, world: Path, until: dt.date) -> dict[str, float]:
    """Each segmentation run up to `until`: ARI of every customer's segment against the
    true needs of the run's month."""
    runs = con.execute("select run_id, as_of from segments.segment_runs where as_of <= ? order by as_of", [until]).fetchall()
    out = {}
    for run_id, as_of in runs:
        month = str(pd.Period(as_of, "M"))
        assigned = con.execute("select account_id, segment_id from segments.assignments where run_id = ?", [run_id]).df()
        both = assigned.set_index("account_id").join(truth_segments(world, month).rename("truth"), how="inner")
        if len(both):
            out[month] = round(_ari(both["truth"], both["segment_id"]), 4)
    return out


def _segment_quality(con, world: Path, as_of: dt.date, taxonomy: Taxonomy, seed: int) -> SegmentQuality:
    run_id = run_id_for(as_of)
    month = str(pd.Period(as_of, "M"))
    truth = truth_segments(world, month)
    assigned = con.execute("select account_id, segment_id, segment_source from segments.assignments where run_id = ?", [run_id]).df()
    if assigned.empty:
        raise NeedsegError(f"no segmentation run {run_id} to evaluate")
    features = (
        con.execute("select * from marts.customer_features where status = 'customer' order by account_id")
        .df()
        .set_index("account_id", drop=False)
    )
    if pd.Timestamp(features["as_of"].iloc[0]).date() != as_of:
        raise NeedsegError(f"customer_features is not as of {as_of}; run the features for that date first")
    assigned = assigned.set_index("account_id").join(truth.rename("truth"), how="inner")
    population = len(assigned)
    if population > SCORE_SAMPLE:
        assigned = assigned.sample(SCORE_SAMPLE, random_state=seed).sort_index()
    surveyed = assigned[assigned["segment_source"] == "surveyed"]
    inferred = assigned[assigned["segment_source"] == "inferred"]
    if surveyed.empty:
        return _behaviour_only_quality(con, assigned, features, run_id, as_of, taxonomy, seed, population)
    k = int(con.execute("select k from segments.segment_runs where run_id = ?", [run_id]).fetchone()[0])
    taxonomy_dims = [c for c in features.columns if c.startswith("need_")][:7]
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)

    # Surveyed: classifiers on the survey needs with the true labels, cross-validated.
    xs = features.loc[surveyed.index, taxonomy_dims].fillna(0.0)
    ceiling_s = {name: cross_val_predict(m, xs, surveyed["truth"], cv=cv) for name, m in ceiling_models(seed).items()}
    # Inferred: the same behaviour inputs, true labels of the surveyed accounts.
    xb, _ = design_matrix(features, BEHAVIOUR_COLUMNS, LOG_COLUMNS, CATEGORICAL_COLUMNS)
    ceiling_i = {
        name: m.fit(xb.loc[surveyed.index], surveyed["truth"]).predict(xb.loc[inferred.index]) for name, m in ceiling_models(seed).items()
    }
    everyone = assigned.index
    optimistic = (
        {
            name: pd.Series(cross_val_predict(m, xb.loc[everyone], assigned["truth"], cv=cv), index=everyone)
            for name, m in ceiling_models(seed).items()
        }
        if len(everyone) <= OPTIMISTIC_MAX
        else None
    )

    naive_x = StandardScaler().fit_transform(features.loc[everyone, NAIVE_COLUMNS].apply(pd.to_numeric, errors="coerce").fillna(0.0))
    naive_k, naive_labels = naive_baseline(naive_x, taxonomy.k_min, taxonomy.k_max, seed)
    naive = pd.Series(naive_labels, index=everyone)

    def score(group: pd.DataFrame, ceilings: dict[str, Any]) -> GroupScore:
        strongest, family = best_of(group["truth"], ceilings)
        optimistic_best = best_of(group["truth"], {k: v.loc[group.index] for k, v in optimistic.items()})[0] if optimistic else None
        return GroupScore(
            accounts=len(group),
            needseg_ari=round(_ari(group["truth"], group["segment_id"]), 4),
            ceiling_ari=round(_ari(group["truth"], ceilings["random forest"]), 4),
            strongest_ceiling_ari=round(strongest, 4),
            strongest_ceiling_model=family,
            optimistic_ceiling_ari=round(optimistic_best, 4) if optimistic_best is not None else None,
            naive_ari=round(_ari(group["truth"], naive.loc[group.index]), 4),
        )

    jaccard = _segment_jaccard(con, run_id)
    return SegmentQuality(
        as_of=as_of.isoformat(),
        run_id=run_id,
        k=k,
        population=population,
        surveyed=score(surveyed, ceiling_s),
        inferred=score(inferred, ceiling_i),
        jaccard=jaccard,
        run=run_figures(con, run_id),
        naive_k=naive_k,
        naive_k_bounds=(taxonomy.k_min, taxonomy.k_max),
    )


def _behaviour_only_quality(
    con, assigned, features, run_id: str, as_of: dt.date, taxonomy: Taxonomy, seed: int, population: int
) -> SegmentQuality:
    """No survey answered: every customer is inferred from behaviour. The ceiling is the
    behaviour-only supervised one: the classifiers on the same behaviour and firmographics
    with the TRUE labels, 5-fold cross-validated over every customer."""
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    everyone = assigned.index
    xb, _ = design_matrix(features, BEHAVIOUR_COLUMNS, LOG_COLUMNS, CATEGORICAL_COLUMNS)
    ceilings = {name: cross_val_predict(m, xb.loc[everyone], assigned["truth"], cv=cv) for name, m in ceiling_models(seed).items()}
    naive_x = StandardScaler().fit_transform(features.loc[everyone, NAIVE_COLUMNS].apply(pd.to_numeric, errors="coerce").fillna(0.0))
    naive_k, naive_labels = naive_baseline(naive_x, taxonomy.k_min, taxonomy.k_max, seed)
    strongest, family = best_of(assigned["truth"], ceilings)
    inferred = GroupScore(
        accounts=len(assigned),
        needseg_ari=round(_ari(assigned["truth"], assigned["segment_id"]), 4),
        ceiling_ari=round(_ari(assigned["truth"], ceilings["random forest"]), 4),
        strongest_ceiling_ari=round(strongest, 4),
        strongest_ceiling_model=family,
        optimistic_ceiling_ari=None,
        naive_ari=round(_ari(assigned["truth"], naive_labels), 4),
    )
    k = int(con.execute("select k from segments.segment_runs where run_id = ?", [run_id]).fetchone()[0])
    jaccard = _segment_jaccard(con, run_id)
    return SegmentQuality(
        as_of=as_of.isoformat(),
        run_id=run_id,
        k=k,
        population=population,
        surveyed=None,
        inferred=inferred,
        jaccard=jaccard,
        run=run_figures(con, run_id),
        naive_k=naive_k,
        naive_k_bounds=(taxonomy.k_min, taxonomy.k_max),
    )


def naive_baseline(X: np.ndarray, k_min: int, k_max: int, seed: int) -> tuple[int, np.ndarray]:
    """k-means with the k (within the taxonomy's bounds) of the best silhouette: what a
    first attempt without the ground truth would choose."""
    best = None
    for k in range(k_min, k_max + 1):
        labels = KMeans(k, n_init=10, random_state=seed).fit_predict(X)
        sil = silhouette_score(X, labels, random_state=seed)
        if best is None or sil > best[0]:
            best = (sil, k, labels)
    return best[1], best[2]


def run_figures(con, run_id: str) -> RunFigures:
    row = con.execute(
        "select k_reason, k_evidence, silhouette, min_jaccard, classifier_cv_accuracy, key_account_mode, key_account_evidence, "
        "verdict, verdict_reasons from segments.segment_runs where run_id = ?",
        [run_id],
    ).fetchone()
    evidence = json.loads(row[6]) if row[6] else {}
    return RunFigures(
        k_reason=row[0],
        candidates=json.loads(row[1]),
        silhouette=row[2],
        min_jaccard=row[3],
        classifier_cv_accuracy=row[4],
        key_account_mode=row[5],
        key_account_why=evidence.get("why") or evidence.get("why_not") or "",
        verdict=row[7],
        verdict_reasons=[r["text"] for r in json.loads(row[8] or "[]")],
    )


def rerun_changes(settings: Settings, as_of: dt.date) -> tuple[int, float]:
    """Re-run the segmentation for `as_of` on unchanged data; how many assignments moved."""
    with open_warehouse(settings.warehouse_path) as con:
        before = con.execute("select account_id, segment_id from segments.assignments where run_id = ?", [run_id_for(as_of)]).df()
    started = time.monotonic()
    cycle.segment_step(as_of, settings)
    seconds = time.monotonic() - started
    with open_warehouse(settings.warehouse_path) as con:
        after = con.execute("select account_id, segment_id from segments.assignments where run_id = ?", [run_id_for(as_of)]).df()
    merged = before.merge(after, on="account_id", how="outer", suffixes=("_before", "_after"))
    return int((merged["segment_id_before"] != merged["segment_id_after"]).sum()), seconds


BACKTEST_STAGES = ("ingest", "features", "segment", "drift")


def backtest(
    world: Path, settings: Settings, months: list[str], on_cycle: Callable[[str, dict], None] | None = None
) -> dict[str, list[float]]:
    """Replay `months` of a world: deliver each month's extracts, then run a cycle as of its end."""
    timings: dict[str, list[float]] = {}
    for month in months:
        deliver(world, settings.landing_dir, month)
        as_of = month_end(month)
        details = {}
        for stage in BACKTEST_STAGES:
            if stage == "features":
                detail = cycle.features_step(as_of, settings, run_tests=False)
            elif stage in cycle.STEP_FUNCTIONS:
                detail = cycle.STEP_FUNCTIONS[stage](as_of, settings)
            else:
                continue
            details[stage] = detail
            timings.setdefault(stage, []).append(detail["seconds"])
        if on_cycle:
            on_cycle(month, details)
    return timings


def evaluate(
    settings: Settings,
    world: Path | None = None,
    first_month: str | None = None,
    say: Callable[[str], None] = print,
    surveys: bool = True,
    rerun: bool = True,
) -> EvaluationReport:
    """Generate the default world (unless given), replay it, score segments and drift.

    `surveys=False`: the default world with no survey file delivered at all (a no-survey
    start), scored against the behaviour-only supervised ceiling. `rerun=False` skips the
    re-segmentation of the last month on unchanged data (the evaluation suite does, to
    save a segmentation per world)."""
    started = time.monotonic()
    if world is None:
        spec = WorldSpec() if surveys else WorldSpec(survey_every_months=0)
        world = settings.data_dir / ("world" if surveys else "world-no-surveys")
        meta = world / "world.json"
        if not meta.exists() or json.loads(meta.read_text()).get("spec") != spec.as_json():
            say(f"generating the {'default demo world' if surveys else 'default world without surveys'} in {world} ...")
            generate(world, spec)
    spec = json.loads((world / "world.json").read_text())["spec"]
    all_months = extract_months(world)
    first = first_month or str(pd.Period(spec.get("drift_window_start", all_months[-12]), "M") - 1)
    months = [m for m in all_months if m >= first]
    say(f"replaying {len(months)} months ({months[0]} .. {months[-1]}) of {world} into {settings.data_dir} ...")

    def progress(month: str, details: dict) -> None:
        seg = details.get("segment", {})
        say(f"  {month}: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in details.items()) + (f"  k={seg.get('k')}" if seg else ""))

    timings = backtest(world, settings, months, progress)
    report = EvaluationReport(world=str(world), months=months, cycle_seconds={k: float(np.mean(v)) for k, v in timings.items()})
    last = month_end(months[-1])
    config = load_config(settings.config_path)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    with open_warehouse(settings.warehouse_path) as con:
        report.segments = segment_quality(con, world, last, taxonomy, int(config["segmentation"]["seed"]))
    if rerun:
        report.segments.rerun_changed, report.segments.seconds_per_resegmentation = rerun_changes(settings, last)
    try:
        from pipelines.drift import evaluation as drift_evaluation
    except ImportError:
        drift_evaluation = None
    if drift_evaluation is not None:
        with open_warehouse(settings.warehouse_path) as con:
            report.drift = drift_evaluation.drift_quality(con, world, months)
    report.seconds = time.monotonic() - started
    return report
