"""`needseg evaluate --suite`: needseg's figures over many generated worlds, not one.

One world says how well needseg learned that world. The suite generates worlds that differ
in what real customer bases differ in (`WorldSpec`'s knobs: segment sizes and where key
accounts sit, how far apart the needs are, survey response and scale use, which way and
how fast drift goes, seasonality and returns), replays each through the pipeline
(`pipelines.evaluate.evaluate`: the same steps a production cycle runs) and prints, per
figure, the worst and median world and the share of worlds that meet the goal.

Every segment figure is a ratio to the supervised ceiling ON THE SAME WORLD (needseg's
classifier trained on the true labels, `pipelines/evaluate.py`), so a world that is hard
for everyone does not count against needseg. Figures, one value per world:

- surveyed / inferred ARI / ceiling: adjusted Rand index of needseg's segments against the
  true needs segments as of the last replayed month, divided by the ceiling's ARI.
- true segments found: the share of the true segments present in the world (at least
  `PRESENT_SHARE` of the scored customers) that needseg found. A true segment is found when
  some published segment (a `segment_id` of the last run's assignments) has it as its
  majority true label AND holds at least half of that true segment's customers. At most one
  published segment can find a true segment, and a published segment finds at most one
  (its majority label), so two true segments merged into one published segment count one
  found and one lost.
- drift F1: needseg's drift flags (any run of the replay) against the planted drifters
  (`pipelines/drift/evaluation.py`).
- flag lag: median months from a drifter's drift start (truth) to its first flag, over the
  flagged drifters.
- alert lead: median months from a churner's first churn-risk alert (any reason) to its
  churn month, over the churners alerted before churning. A world where customers churned
  during the replay but none was alerted scores 0 (nothing was foreseen); a world without
  churn in the replay has no value.

Each world runs in its own process (bounded memory, a fresh warehouse) and leaves its
result as JSON under `<data dir>/suite-<name>/`; a finished world is not run again unless
asked (`rerun`), so an interrupted suite resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.demo.world import SEGMENTS, WorldSpec, generate
from pipelines.files import write_file_atomically
from pipelines.settings import Settings, load_settings

# A suite world is smaller and shorter than the demo's, so twenty of them fit in about
# 50 CPU minutes (a replayed month costs 15-20 CPU s whatever the size, most of it fixed
# costs such as dbt's): 700 customers over 22 months of extracts, drifts starting in the
# first two of the last six months, and those six months replayed (one cycle each). Drift
# lasts 4-8 months and churn follows it 1-3 months later, so few drift churns fall inside
# the replay: the alert lead is mostly that of random churners alerted as lapsing.
SUITE_BASE = dict(
    customers=700,
    prospects=60,
    start_month="2025-01",
    end_month="2026-10",
    drift_window_start="2026-05",
    drift_min_visible=5,
)
# The CI slice: one very small world whose drift goes elsewhere than price, two months
# replayed (it checks the machinery; its figures mean little).
SLICE_BASE = dict(
    customers=240,
    prospects=20,
    start_month="2025-06",
    end_month="2026-10",
    drift_window_start="2026-09",
    drift_min_visible=2,
    drifter_share=0.12,
    survey_share=0.3,
)
PRESENT_SHARE = 0.02


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    knobs: dict[str, Any] = field(default_factory=dict)


VARIANTS = (
    Variant("default", "the demo world's knobs"),
    Variant(
        "unequal-sizes",
        "segments about 55/21/14/10 % (loyalty & partnership small), key accounts spread evenly over the segments",
        {"segment_weights": (2.0, 1.0, 0.6, 0.35), "size_lean": (0.0, 0.0, 0.0, 0.0)},
    ),
    Variant("close-prototypes", "needs prototypes pulled 25 % towards their mean", {"separation": 0.75}),
    Variant("low-response", "half the survey response (8 % of customers a wave)", {"survey_share": 0.08}),
    Variant("noisy-scale", "respondents use the scale very differently, noisy items", {"response_style": 0.8, "survey_noise": 0.8}),
    Variant(
        "drift-elsewhere",
        "drift towards any other segment but partnership (price, service, quality), over 3-10 months, spend falls less",
        {"drift_target_weights": (1.0, 1.0, 1.0, 0.0), "drift_months": (3, 10), "drift_spend_drop": 0.2},
    ),
    Variant(
        "step-seasonal",
        "drift towards price in one step, strong seasonality (+-35 %), 5 % returns",
        {"drift_shape": "step", "seasonality": 0.35, "returns_rate": 0.05},
    ),
)
SUITES = {
    "full": (SUITE_BASE, [v.name for v in VARIANTS], (1, 2, 3)),
    "slice": (SLICE_BASE, ["drift-elsewhere"], (1,)),
}


@dataclass(frozen=True)
class SuiteWorld:
    name: str
    variant: str
    seed: int
    spec: WorldSpec
    first_month: str


def suite_worlds(suite: str, variants: list[str] | None = None) -> list[SuiteWorld]:
    """The fixed list of worlds of a suite ("full" or "slice"): variants x seeds; only the
    named variants' worlds when `variants` is given (in the suite's order)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}: expected one of {', '.join(SUITES)}")
    base, names, seeds = SUITES[suite]
    if variants:
        unknown = [v for v in variants if v not in names]
        if unknown:
            raise ValueError(f"unknown variant(s) of suite {suite!r}: {', '.join(unknown)}; expected any of {', '.join(names)}")
        names = [n for n in names if n in variants]
    by_name = {v.name: v for v in VARIANTS}
    return [
        SuiteWorld(f"{name}-s{seed}", name, seed, WorldSpec(seed=seed, **{**base, **by_name[name].knobs}), base["drift_window_start"])
        for seed in seeds  # seed by seed: a suite stopped early has scored every variant
        for name in names
    ]


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    higher_is_better: bool
    median_goal: float
    worst_goal: float | None = None

    def meets(self, value: float | None, goal: float) -> bool:
        if value is None:
            return False
        return value >= goal if self.higher_is_better else value <= goal

    def goal_text(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        text = f"median {op} {self.median_goal:g}"
        return text + (f", worst {op} {self.worst_goal:g}" if self.worst_goal is not None else "")


# Issue 14's "Done when", per figure.
FIGURES = (
    Figure("surveyed_ratio", "surveyed ARI / ceiling", True, 0.9, 0.8),
    Figure("inferred_ratio", "inferred ARI / ceiling", True, 0.9, 0.8),
    Figure("segments_found", "true segments found (share)", True, 1.0),
    Figure("drift_f1", "drift F1", True, 0.6, 0.45),
    Figure("flag_lag", "flag lag after drift start (months)", False, 2.0),
    Figure("alert_lead", "alert lead before churn (months)", True, 2.0),
)
FOUND_IN_WORLDS = 0.95  # every taxonomy segment present in a world's truth is found in >= 95 % of worlds


def segments_found(assigned: pd.Series, truth: pd.Series) -> dict[str, bool]:
    """Per true segment present (>= PRESENT_SHARE of the accounts): found or not (module docstring)."""
    frame = pd.DataFrame({"published": assigned, "truth": truth}).dropna()
    sizes = frame["truth"].value_counts()
    present = sizes[sizes >= PRESENT_SHARE * len(frame)].index
    majority = frame.groupby("published")["truth"].agg(lambda s: s.value_counts().idxmax())
    found = {}
    for segment in present:
        holders = majority[majority == segment].index
        covered = frame[frame["truth"].eq(segment) & frame["published"].isin(holders)].groupby("published").size()
        found[segment] = bool(len(covered) and covered.max() >= 0.5 * sizes[segment])
    return found


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def replay_world(world: SuiteWorld, settings: Settings, workdir: Path):
    """Generate `world` into <workdir>/world and replay it through the pipeline into
    <workdir>/data with the suite's configuration (`settings`' config, taxonomy and
    mappings). Returns the data folder's settings and the evaluation report."""
    from pipelines.evaluate import evaluate

    generate(workdir / "world", world.spec)
    data = replace(
        load_settings(workdir / "data"),
        config_path=settings.config_path,
        taxonomy_path=settings.taxonomy_path,
        mappings_dir=settings.mappings_dir,
    )
    return data, evaluate(data, workdir / "world", world.first_month, say=lambda _: None, rerun=False)


def run_world(world: SuiteWorld, settings: Settings, out: Path, keep: bool = False) -> dict[str, Any]:
    """Generate one world, replay it, score it and write `<out>/<name>.json`. Runs in the
    calling process (`run_suite` calls it in a child process per world)."""
    from pipelines.evaluate import month_end
    from pipelines.segmentation.run import run_id_for
    from pipelines.warehouse import open_warehouse

    started, cpu0 = time.monotonic(), _cpu_seconds()
    workdir = out / "worlds" / world.name
    if workdir.exists():
        shutil.rmtree(workdir)
    data, report = replay_world(world, settings, workdir)
    months = report.months
    run_id = run_id_for(month_end(months[-1]))
    with open_warehouse(data.warehouse_path, read_only=True) as con:
        assigned = con.execute("select account_id, segment_id from segments.assignments where run_id = ?", [run_id]).df()
    truth_monthly = pd.read_parquet(workdir / "world" / "truth" / "segments_monthly.parquet")
    truth_last = truth_monthly[truth_monthly["month"] == months[-1]].set_index("account_id")["segment"]
    assigned = assigned.set_index("account_id")["segment_id"]
    found = segments_found(assigned, truth_last.reindex(assigned.index))
    accounts = pd.read_csv(workdir / "world" / "truth" / "accounts.csv", keep_default_na=False, dtype=str)
    churners = accounts[accounts["is_prospect"].eq("False") & accounts["churn_month"].between(months[0], months[-1])]
    s, d = report.segments, report.drift
    lead = d["alerts"]["lead_time_months"]["median"]
    figures = {
        "surveyed_ratio": _num(s.surveyed.ratio) if s.surveyed else None,
        "inferred_ratio": _num(s.inferred.ratio),
        "segments_found": sum(found.values()) / len(found) if found else None,
        "drift_f1": d["needseg"]["f1"],
        "flag_lag": d["flag_lag_months"]["median"],
        "alert_lead": lead if lead is not None else (0.0 if len(churners) else None),
    }
    result = {
        "name": world.name,
        "variant": world.variant,
        "seed": world.seed,
        "spec": world.spec.as_json(),
        "months": months,
        "figures": figures,
        "found": found,
        "k": s.k,
        "true_segments": sorted(found),
        "surveyed": s.surveyed.__dict__ if s.surveyed else None,
        "inferred": s.inferred.__dict__,
        "drift": {
            "needseg": d["needseg"],
            "baseline": d["baseline"],
            "drifters": d["drifters"],
            "drifters_elsewhere": d["drifters_elsewhere"],
            "any_direction": d["any_direction"],
            "flag_lag_months": d["flag_lag_months"],
            "lead_time_months": d["lead_time_months"],
            "alerts": {k: v for k, v in d["alerts"].items() if k != "lines"},
            "churners_in_replay": len(churners),
        },
        "cpu_seconds": round(_cpu_seconds() - cpu0, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    write_file_atomically(out / f"{world.name}.json", json.dumps(result, indent=1, default=str))
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _child_command(suite: str, world: SuiteWorld, settings: Settings, out: Path, keep: bool) -> list[str]:
    command = [sys.executable, "-m", "pipelines.evaluate_suite", suite, world.name, str(out)]
    command += [str(settings.config_path), str(settings.taxonomy_path), str(settings.mappings_dir)]
    return command + (["--keep"] if keep else [])


def _main(argv: list[str]) -> int:
    """A child process: run one world of a suite (`run_suite` starts these)."""
    suite, name, out, config, taxonomy, mappings = argv[:6]
    world = next(w for w in suite_worlds(suite) if w.name == name)
    base = replace(load_settings(Path(out)), config_path=Path(config), taxonomy_path=Path(taxonomy), mappings_dir=Path(mappings))
    run_world(world, base, Path(out), keep="--keep" in argv)
    return 0


def finished(world: SuiteWorld, out: Path) -> dict[str, Any] | None:
    """A world's saved result, if it ran with the same spec."""
    path = out / f"{world.name}.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("spec") == world.spec.as_json() else None


def run_suite(
    settings: Settings,
    suite: str = "full",
    jobs: int = 1,
    rerun: bool = False,
    keep: bool = False,
    say: Callable[[str], None] = print,
    table_only: bool = False,
    variants: list[str] | None = None,
) -> SuiteReport:
    """Run every world of the suite not finished yet (each in a child process, `jobs` at a
    time) and summarise all of them; `table_only`: run nothing, summarise the finished ones;
    `variants`: only the worlds of these variants (run and summarised)."""
    worlds = suite_worlds(suite, variants)
    out = settings.data_dir / f"suite-{suite}"
    out.mkdir(parents=True, exist_ok=True)
    todo = [] if table_only else [w for w in worlds if rerun or finished(w, out) is None]
    done = sum(finished(w, out) is not None for w in worlds) if table_only or rerun else len(worlds) - len(todo)
    say(f"suite {suite}: {len(worlds)} worlds, {done} already finished, {len(todo)} to run ({jobs} at a time) in {out}")
    running: list[tuple[SuiteWorld, subprocess.Popen, float, Any]] = []
    failed: list[str] = []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    while todo or running:
        while todo and len(running) < max(1, jobs):
            world = todo.pop(0)
            log = (out / f"{world.name}.log").open("w")
            proc = subprocess.Popen(_child_command(suite, world, settings, out, keep), stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((world, proc, time.monotonic(), log))
            say(f"  {world.name}: started")
        time.sleep(0.5)
        for entry in list(running):
            world, proc, t0, log = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            log.close()
            result = finished(world, out)
            if proc.returncode == 0 and result is not None:
                say(f"  {world.name}: done in {time.monotonic() - t0:.0f} s wall, {result['cpu_seconds']:.0f} CPU s")
            else:
                failed.append(world.name)
                say(f"  {world.name}: FAILED (exit code {proc.returncode}); its output: {out / (world.name + '.log')}")
    results = [r for w in worlds if (r := finished(w, out)) is not None]
    report = SuiteReport(suite=suite, results=results, failed=failed, worlds=len(worlds))
    # a summary of some variants only does not replace the whole suite's
    summary = f"suite-{'+'.join(sorted(variants))}.json" if variants else "suite.json"
    write_file_atomically(out / summary, json.dumps(report.as_dict(), indent=1, default=str))
    return report


@dataclass
class SuiteReport:
    suite: str
    results: list[dict[str, Any]]
    failed: list[str]
    worlds: int

    def values(self, key: str) -> list[float | None]:
        return [r["figures"].get(key) for r in self.results]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per figure: worst, median, share of worlds meeting the median goal, goal met."""
        out = {}
        for f in FIGURES:
            values = self.values(f.key)
            known = [v for v in values if v is not None]
            worst = (min(known) if f.higher_is_better else max(known)) if known else None
            median = float(np.median(known)) if known else None
            share = sum(f.meets(v, f.median_goal) for v in known) / len(known) if known else None
            if f.key == "segments_found":
                met = all(rate >= FOUND_IN_WORLDS for rate in self.found_rates().values()) if known else False
            else:
                met = f.meets(median, f.median_goal) and (f.worst_goal is None or f.meets(worst, f.worst_goal))
            out[f.key] = {"worlds": len(known), "worst": worst, "median": median, "share_meeting": share, "met": bool(met)}
        return out

    def found_rates(self) -> dict[str, float]:
        """Per taxonomy segment: the share of worlds (where it is present) that found it."""
        rates = {}
        for segment in SEGMENTS:
            seen = [r["found"][segment] for r in self.results if segment in r["found"]]
            if seen:
                rates[segment] = sum(seen) / len(seen)
        return rates

    def by_variant(self) -> dict[str, dict[str, float | None]]:
        table: dict[str, dict[str, float | None]] = {}
        for variant in dict.fromkeys(r["variant"] for r in self.results):
            rows = [r for r in self.results if r["variant"] == variant]
            table[variant] = {}
            for f in FIGURES:
                known = [r["figures"][f.key] for r in rows if r["figures"].get(f.key) is not None]
                table[variant][f.key] = float(np.median(known)) if known else None
            table[variant]["worlds"] = len(rows)
        return table

    def lines(self) -> list[str]:
        cpu = sum(r["cpu_seconds"] for r in self.results)
        out = [
            f"needseg evaluation suite '{self.suite}': {len(self.results)} of {self.worlds} worlds scored"
            + (f" ({len(self.failed)} failed: {', '.join(self.failed)})" if self.failed else "")
            + f"; {cpu:.0f} CPU s in the worlds' processes",
            "",
            f"  {'figure':<38}{'worlds':>7}{'worst':>8}{'median':>8}{'meeting':>9}  {'goal (issue 14)':<42}verdict",
        ]

        def fmt(v, pct=False):
            return "-" if v is None else (f"{v:.0%}" if pct else f"{v:.2f}")

        summary = self.summary()
        for f in FIGURES:
            s = summary[f.key]
            goal = f.goal_text() if f.key != "segments_found" else f"each segment found in >= {FOUND_IN_WORLDS:.0%} of worlds"
            out.append(
                f"  {f.label:<38}{s['worlds']:>7}{fmt(s['worst']):>8}{fmt(s['median']):>8}{fmt(s['share_meeting'], True):>9}  "
                f"{goal:<42}{'met' if s['met'] else 'NOT met'}"
            )
        out.append("  meeting: share of worlds at or better than the median goal (segments found: every true segment found)")
        rates = self.found_rates()
        out.append(
            "  true segments found, per segment (share of worlds where present): " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items())
        )
        ceilings = {g: [r[g]["ceiling_ari"] for r in self.results if r.get(g)] for g in ("surveyed", "inferred")}
        out.append(
            "  ceilings (the classifier on the true labels, same world), median ARI: "
            + ", ".join(f"{g} {np.median(v):.2f}" for g, v in ceilings.items() if v)
            + "; needseg's k: "
            + ", ".join(f"{k}: {n}" for k, n in sorted(pd.Series([r["k"] for r in self.results]).value_counts().items()))
        )
        elsewhere = [r for r in self.results if r["drift"].get("drifters_elsewhere")]
        if elsewhere:
            recall = np.median([r["drift"]["any_direction"]["recall"] for r in elsewhere])
            out.append(
                f"  {len(elsewhere)} worlds also plant drift elsewhere than price or away from partnership (not counted in drift F1): "
                f"every drifter against any sign of movement (early warning to any segment, migration, flag), median recall {recall:.2f}"
            )
        alerted = [
            r["drift"]["alerts"]["lead_time_months"]["churners_alerted"] / r["drift"]["churners_in_replay"]
            for r in self.results
            if r["drift"]["churners_in_replay"]
        ]
        if alerted:
            out.append(
                f"  churners alerted before their churn month (the alert lead's base): median {np.median(alerted):.0%} of a world's "
                f"churners in the replay, worst {min(alerted):.0%}"
            )
        lead = [r["drift"]["lead_time_months"]["median"] for r in self.results if r["drift"]["lead_time_months"]["median"] is not None]
        out.append(
            f"  lead from the first drift flag to churn, drifters that churned in the replay: {len(lead)} worlds have one"
            + (f", median {np.median(lead):.1f} months" if lead else "")
        )
        variants = self.by_variant()
        out += ["", "  median per variant:", "  " + f"{'variant':<18}{'worlds':>7}" + "".join(f"{f.key:>16}" for f in FIGURES)]
        for name, row in variants.items():
            out.append("  " + f"{name:<18}{row['worlds']:>7}" + "".join(f"{fmt(row[f.key]):>16}" for f in FIGURES))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "worlds": self.worlds,
            "scored": len(self.results),
            "failed": self.failed,
            "summary": self.summary(),
            "found_rates": self.found_rates(),
            "by_variant": self.by_variant(),
            "goals": {f.key: f.goal_text() for f in FIGURES},
            "lines": self.lines(),
        }


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
