"""A run's verdict: may people act on these segments? `trusted`, `provisional` or `withheld`.

Every run is judged on the evidence it produced, and the verdict is stored with the run
(segment_runs.verdict, verdict_reasons) and said in words by `needseg run`/`segment`:

- stability: the least stable segment's bootstrap Jaccard against `min_stability`
  (provisional) and `verdict.withhold_stability` (withheld);
- small segments: a segment under `min_cluster_share` of the accounts;
- the classifier (survey basis): its held-out (out-of-bag) accuracy against the base rate (the
  largest segment's share) plus `verdict.classifier_margin`, and each segment's recall
  against `verdict.min_recall`;
- missing data: a dimension left out of clustering for its missing share, or one without
  any data at all (withheld when fewer than two dimensions remain);
- survey respondents excluded as unusable (straight-lining, too few items) above
  `verdict.max_excluded_share`;
- prospects: predictions that do not vary (every prospect the same segment, or a spread of
  the top probability under `verdict.min_prospect_spread`) are the base rate, not a prediction;
- a no-survey start (segments inferred from behaviour) and a taxonomy segment not found.

Each reason has a severity; the verdict is the worst one. `note` reasons are recorded and
said but do not lower the verdict. Whether a withheld run replaces the published one is
`verdict.publish_withheld`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import SegmentationConfig, VerdictConfig

SEVERITY = {"note": 0, "provisional": 1, "withheld": 2}
VERDICTS = ("trusted", "provisional", "withheld")


# Defaults come from the typed configuration (pipelines/config.py): one place per key.
_DEFAULTS = VerdictConfig()
_SEGMENTATION = SegmentationConfig()


@dataclass
class VerdictSettings:
    min_stability: float = _SEGMENTATION.min_stability
    withhold_stability: float = _DEFAULTS.withhold_stability
    min_cluster_share: float = _SEGMENTATION.min_cluster_share
    classifier_margin: float = _DEFAULTS.classifier_margin
    min_recall: float = _DEFAULTS.min_recall
    max_excluded_share: float = _DEFAULTS.max_excluded_share
    min_prospect_spread: float = _DEFAULTS.min_prospect_spread
    publish_withheld: bool = _DEFAULTS.publish_withheld

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> VerdictSettings:
        v = cfg.get("verdict") or {}
        return cls(
            min_stability=float(cfg["min_stability"]),
            withhold_stability=float(v.get("withhold_stability", cls.withhold_stability)),
            min_cluster_share=float(cfg["min_cluster_share"]),
            classifier_margin=float(v.get("classifier_margin", cls.classifier_margin)),
            min_recall=float(v.get("min_recall", cls.min_recall)),
            max_excluded_share=float(v.get("max_excluded_share", cls.max_excluded_share)),
            min_prospect_spread=float(v.get("min_prospect_spread", cls.min_prospect_spread)),
            publish_withheld=bool(v.get("publish_withheld", cls.publish_withheld)),
        )


@dataclass
class Evidence:
    """What a run found, as the verdict needs it (None: not applicable to this run)."""

    jaccard: dict[str, float]  # segment name -> bootstrap Jaccard
    shares: dict[str, float]  # segment name -> share of the clustered accounts
    classifier_accuracy: float | None = None
    classifier_base_rate: float | None = None
    classifier_recall: dict[str, float] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # dimension -> why it was left out
    dimensions_used: int = 0
    answered: int = 0  # customers with a survey response in the validity window
    unusable: int = 0  # of them, customers whose every respondent was unusable
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> respondents left out
    prospects: int = 0
    prospect_segments: int = 0
    prospect_spread: float | None = None  # sd of prospects' top probability
    fallback: str | None = None  # why the run was inferred from behaviour
    not_found: list[str] = field(default_factory=list)  # taxonomy segments without a cluster
    not_found_in: dict[str, str] = field(default_factory=dict)  # such a segment -> where its customers are
    notes: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    verdict: str
    reasons: list[dict[str, str]]
    published: bool

    def words(self) -> str:
        if not self.reasons:
            return f"verdict: {self.verdict} (stable segments, no warning)"
        worst = [r for r in self.reasons if r["severity"] != "note"]
        notes = [r for r in self.reasons if r["severity"] == "note"]
        text = f"verdict: {self.verdict.upper()}"
        if worst:
            text += " - " + "; ".join(r["text"] for r in worst)
        if notes:
            text += " (notes: " + "; ".join(r["text"] for r in notes) + ")"
        if not self.published:
            text += "; NOT published: the serving tables keep the last run that was not withheld (segmentation.verdict.publish_withheld)"
        return text

    def as_json(self) -> str:
        return json.dumps(self.reasons)


def _stability(e: Evidence, s: VerdictSettings) -> list[tuple[str, str, str]]:
    if not e.jaccard:
        return []
    name, worst = min(e.jaccard.items(), key=lambda kv: kv[1])
    if worst >= s.min_stability:
        return []
    severity = "withheld" if worst < s.withhold_stability else "provisional"
    return [
        (
            "stability",
            severity,
            f"segment {name!r} is unstable (bootstrap Jaccard {worst:.2f}, floor {s.min_stability}"
            + (f", withheld under {s.withhold_stability}" if severity == "withheld" else "")
            + ")",
        )
    ]


def _small(e: Evidence, s: VerdictSettings) -> list[tuple[str, str, str]]:
    small = {n: v for n, v in e.shares.items() if v < s.min_cluster_share}
    if not small:
        return []
    listed = ", ".join(f"{n!r} {v:.1%}" for n, v in sorted(small.items(), key=lambda kv: kv[1]))
    return [("small_segment", "provisional", f"segments under the minimum share of {s.min_cluster_share:.0%}: {listed}")]


def _classifier(e: Evidence, s: VerdictSettings) -> list[tuple[str, str, str]]:
    out = []
    if e.classifier_accuracy is not None and e.classifier_base_rate is not None:
        needed = e.classifier_base_rate + s.classifier_margin
        if e.classifier_accuracy < needed:
            out.append(
                (
                    "classifier_base_rate",
                    "provisional",
                    f"the classifier that infers unsurveyed accounts is barely better than guessing the largest segment "
                    f"(held-out accuracy {e.classifier_accuracy:.2f}, base rate {e.classifier_base_rate:.2f}, "
                    f"needed {needed:.2f})",
                )
            )
    weak = {n: r for n, r in e.classifier_recall.items() if r < s.min_recall}
    if weak:
        listed = ", ".join(f"{n!r} {r:.2f}" for n, r in sorted(weak.items(), key=lambda kv: kv[1]))
        out.append(
            (
                "classifier_recall",
                "provisional",
                f"the classifier rarely recognises some segments (held-out recall under {s.min_recall}: {listed}); "
                "their inferred members are uncertain",
            )
        )
    return out


def _missing(e: Evidence, s: VerdictSettings) -> list[tuple[str, str, str]]:
    out = []
    empty = {d: why for d, why in e.left_out.items() if why.startswith("no data")}
    sparse = {d: why for d, why in e.left_out.items() if d not in empty}
    severity = "withheld" if e.dimensions_used < 2 else "provisional"
    if empty:
        out.append(("dimensions_without_data", severity, "taxonomy dimensions without data: " + ", ".join(empty)))
    if sparse:
        out.append(
            ("imputed", severity, "left out of clustering for missing values: " + "; ".join(f"{d} ({w})" for d, w in sparse.items()))
        )
    return out


def _respondents(e: Evidence, s: VerdictSettings) -> list[tuple[str, str, str]]:
    excluded = sum(e.excluded.values())
    if not excluded or not e.answered:
        return []
    share = e.unusable / e.answered
    words = ", ".join(f"{n} for {why}" for why, n in sorted(e.excluded.items()) if n)
    text = (
        f"{excluded} survey respondents left out as unusable ({words}); {e.unusable} of {e.answered} customers who answered "
        f"({share:.0%}) have no usable respondent and are published as surveyed but unusable (inferred from behaviour)"
    )
    return [("respondents_excluded", "provisional" if share > s.max_excluded_share else "note", text)]


def _prospects(e: Evidence, s: VerdictSettings) -> list[tuple[str, str, str]]:
    if e.prospects < 2:
        return []
    if e.prospect_segments <= 1:
        return [("prospects_flat", "provisional", f"all {e.prospects} prospects were predicted into one segment")]
    if e.prospect_spread is not None and e.prospect_spread < s.min_prospect_spread:
        return [
            (
                "prospects_flat",
                "provisional",
                f"prospects' predictions hardly vary (sd of the top probability {e.prospect_spread:.3f}, "
                f"needed {s.min_prospect_spread}): they are close to the base rate",
            )
        ]
    return []


def _other(e: Evidence, s: VerdictSettings) -> list[tuple[str, str, str]]:
    out = []
    if e.fallback:
        out.append(("inferred_from_behaviour", "provisional", e.fallback))
    for name in e.not_found:
        where = e.not_found_in.get(name, "its customers sit in the nearest segment")
        out.append(("segment_not_found", "provisional", f"{name} not found: {where}"))
    out.extend(("note", "note", n) for n in e.notes)
    return out


CHECKS = (_stability, _small, _classifier, _missing, _respondents, _prospects, _other)


def judge(evidence: Evidence, settings: VerdictSettings) -> Verdict:
    reasons = [{"code": code, "severity": severity, "text": text} for check in CHECKS for code, severity, text in check(evidence, settings)]
    worst = max((SEVERITY[r["severity"]] for r in reasons), default=0)
    verdict = VERDICTS[worst]
    return Verdict(verdict, reasons, verdict != "withheld" or settings.publish_withheld)
