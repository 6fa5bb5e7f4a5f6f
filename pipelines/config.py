"""The pipeline's business configuration (config/needseg.yaml or NEEDSEG_CONFIG).

One typed model holds every setting, its type and its default: a partial file only
overrides what it names. Unknown keys and values of the wrong type are refused with the
file, the dotted key and what was expected (exit 2), so a typo never falls back to a
default and a wrong type never reaches the pipeline as a traceback.

`load_config` returns the validated settings as plain mappings (`config["drift"]["z"]`),
which every step reads; `NeedsegConfig` is the one place defaults live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.errors import ConfigError
from pipelines.safe_yaml import load_yaml

Share = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Months = Annotated[int, Field(ge=1, le=120)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class IngestConfig(_Section):
    # A file with more bad rows than this share is refused as a whole ...
    max_quarantine_share: Share = 0.5
    # ... if it has at least this many rows.
    min_rows_for_quarantine_share: Count = 20
    # A table's new files are read, checked and written in groups of at most this many MB
    # of input (a larger file is a group of its own): memory stays bounded by the group,
    # not by how many months arrive at once.
    group_megabytes: Annotated[int, Field(ge=1)] = 64


class FeaturesConfig(_Section):
    trailing_months: Months = 12
    recent_months: Months = 3
    key_account_revenue_share: Share = 0.8
    mid_tier_revenue_share: Share = 0.95
    survey_valid_months: Months = 24
    # Months of per-account monthly behaviour kept for drift detection.
    drift_history_months: Months = 18
    premium_categories: list[str] = []
    service_categories: list[str] = []


class VerdictConfig(_Section):
    # min bootstrap Jaccard under min_stability: provisional; under this: withheld
    withhold_stability: Share = 0.5
    # the classifier's CV accuracy must beat the base rate (largest segment) by this ...
    classifier_margin: Share = 0.1
    # ... and recognise every segment at least this often (CV recall)
    min_recall: Share = 0.3
    # customers who answered a survey but have no usable respondent, as a share of those
    # who answered: provisional above this
    max_excluded_share: Share = 0.2
    # prospects' top probability must vary at least this much (sd), else they are the base rate
    min_prospect_spread: NonNegative = 0.02
    # false: a withheld run is stored, but the serving tables keep the last published run
    publish_withheld: bool = False


class SegmentationConfig(_Section):
    seed: int = 42
    bootstrap_samples: Annotated[int, Field(ge=2)] = 20
    min_stability: Share = 0.75
    choose_stability: Share = 0.85
    min_cluster_share: Share = 0.04
    # how k is chosen (clustering.select_k): "prototypes" - the stability rule's k unless it
    # misses taxonomy segments the data support (a cluster matching a prototype needs
    # min_stability, one matching none choose_stability; every k must gain held-out
    # log-likelihood over k-1, cross-validated in held_out_folds folds); "stability" - the
    # largest k whose every cluster reaches choose_stability
    k_rule: Literal["prototypes", "stability"] = "prototypes"
    held_out_folds: Annotated[int, Field(ge=2)] = 5
    # The key tier gets its own segmentation from this many key accounts with a profile on.
    key_accounts_min: Count = 50
    # ... and when its own segments describe key accounts this much better than the others' do.
    key_accounts_min_gain: NonNegative = 0.1
    lookalikes_per_segment: Count = 25
    # missing data: a dimension missing for more than this share of the clustered accounts
    # is left out of clustering (segment_runs.feature_missing says why)
    max_missing_share: Share = 0.3
    # identity hysteresis: k is kept unless another k was preferred in k_switch_runs
    # consecutive runs by k_switch_margin of min Jaccard; the previous run's centres (in the
    # dimensions' own units) are kept unchanged while their inertia is within
    # anchor_tolerance of a fresh fit's; else warm start from them unless a fresh fit is
    # warm_start_tolerance better (inertia)
    k_switch_runs: Annotated[int, Field(ge=1)] = 2
    k_switch_margin: NonNegative = 0.05
    anchor_tolerance: NonNegative = 0.2
    warm_start_tolerance: NonNegative = 0.02
    # an account moves to another segment only when the new one is clearly better: a
    # clustered account (every account of a behaviour taxonomy) when it lies past the
    # midpoint between the two segments' centres by switch_band of their distance; any other
    # when its probability there beats its old segment's by switch_margin, or it preferred
    # the new one switch_runs runs in a row; for the taxonomy bases listed (survey segments
    # follow the answers as they come)
    switch_band: Annotated[float, Field(ge=0, le=0.5)] = 0.3
    switch_margin: Share = 0.2
    switch_runs: Annotated[int, Field(ge=1)] = 2
    hysteresis_bases: list[Literal["survey", "behaviour"]] = ["behaviour"]
    # key-tier hysteresis (same bases): an account enters or leaves the key tier only when
    # the 80/20 cut put it on the other side in key_tier_switch_runs consecutive runs; a key
    # account that falls below the mid tier too leaves at once (1: follow the cut each run)
    key_tier_switch_runs: Annotated[int, Field(ge=1)] = 3
    # silhouette on a sample of at most this many accounts (it is quadratic)
    silhouette_sample: Annotated[int, Field(ge=100)] = 5000
    # a larger population is fitted on a sample of this many accounts, stratified by value
    # tier (k, stability, silhouette on the sample); every account is then assigned
    fit_sample: Annotated[int, Field(ge=100)] = 20000
    # the classifier that infers unsurveyed accounts: forest (scikit-learn's random forest)
    # or lightgbm (LightGBM's random-forest mode, fast, its own attributions)
    classifier: Literal["forest", "lightgbm"] = "forest"
    # more surveyed accounts than this and the classifier learns (and is cross-validated)
    # on a sample of them stratified by segment; every account is still scored
    classifier_sample: Annotated[int, Field(ge=100)] = 5000
    # the run's verdict (pipelines/segmentation/verdict.py)
    verdict: VerdictConfig = VerdictConfig()


class DriftConfig(_Section):
    # compare the last `recent_months` of buying mix with the `baseline_months` before
    recent_months: Months = 6
    baseline_months: Months = 12
    # scan the recent window from this many months up to `recent_months` (a change point
    # scan): the window whose evidence is strongest counts, so a move that began two months
    # ago is not diluted by four older months
    shortest_recent_months: Months = 2
    # the change-point scan's evidence threshold (stricter than early_warning_z: it looks at
    # every window and every direction, so it has more chances to be fooled by noise)
    scan_z: Positive = 5.25
    # an early warning needs both: evidence (z) and a material move
    early_warning_z: Positive = 3.5
    # the stated-needs test: a re-surveyed account's answers moved towards another segment's
    # needs profile between its last two usable waves (pipelines/drift/needs.py)
    needs_z: Positive = 3.5
    min_shift: Share = 0.25
    confirm_migration_z: Positive = 2.5
    active_within_months: Months = 4
    min_profile_gap: Positive = 0.7
    # churn risk: drift plus falling revenue or worsening satisfaction
    revenue_drop: Share = 0.2
    satisfaction_drop: Positive = 1.0
    low_nps: Annotated[float, Field(ge=0, le=10)] = 6.0
    alert_min_score: Share = 0.35
    # a drift alert whose target's model probability fell this much over recent runs is stopped
    contradicting_probability_drop: Share = 0.05
    resolve_after_runs: Annotated[int, Field(ge=1)] = 2
    cooldown_days: Count = 60
    # lapse risk: no order within the horizon, at the account's own rhythm
    lapse_horizon_months: Positive = 3.0
    lapse_silence_months: Positive = 6.0
    # MONIC population transitions
    survive_overlap: Share = 0.5
    split_overlap: Share = 0.25


class ChurnConfig(_Section):
    # label: no order within the horizon after a run, or churned in the CRM within it
    horizon_months: Months = 3
    # monthly cutoffs with a closed outcome window the model learns from
    training_cutoffs: Annotated[int, Field(ge=1)] = 12
    # fewer closed outcomes (or churned ones) than this: BG/NBD alone (cold start)
    min_training_rows: Count = 500
    min_training_positives: Count = 50
    # at scale, learn from a fixed sample of accounts (by a hash of the account id, so the
    # same accounts month after month): LightGBM on at most this many closed outcomes, BG/NBD
    # fitted on at most this many accounts per cutoff (every account is still scored)
    max_training_rows: Annotated[int, Field(ge=1)] = 60000
    bgnbd_max_accounts: Annotated[int, Field(ge=20)] = 5000
    # backtest over the latest earlier runs whose window has closed; precision@k
    backtest_runs: Count = 6
    top_k: Annotated[int, Field(ge=1)] = 100
    # lapsing alerts from the lowest probability whose backtest precision reaches this
    target_precision: Share = 0.6
    min_alerts_for_threshold: Annotated[int, Field(ge=1)] = 10
    # the playbook action of a lapsing alert (null: the built-in text)
    lapsing_action: str | None = None


class AlertsConfig(_Section):
    # the same fields as pipelines.alerts.outbox.AlertOptions, which checks them further
    fallback_recipient: str | None = None
    renotify_after_days: Annotated[int, Field(ge=0)] | None = 60
    renotify_tolerance_days: Count = 3
    max_attempts: Annotated[int, Field(ge=1)] = 12
    retry_base_seconds: Positive = 60.0
    retry_max_seconds: Positive = 21600.0


class PublishConfig(_Section):
    # Parquet export sets kept on disk: the current one and those before it, for readers
    # still busy with an older set.
    keep_export_versions: Annotated[int, Field(ge=1)] = 3


class NeedsegConfig(_Section):
    reporting_currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")] = "EUR"
    # Units of the reporting currency per unit of each currency.
    fx_rates: dict[str, Positive] = {"EUR": 1.0}
    ingest: IngestConfig = IngestConfig()
    features: FeaturesConfig = FeaturesConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    drift: DriftConfig = DriftConfig()
    churn: ChurnConfig = ChurnConfig()
    alerts: AlertsConfig = AlertsConfig()
    publish: PublishConfig = PublishConfig()

    @field_validator("fx_rates")
    @classmethod
    def _upper_case_codes(cls, rates: dict[str, float]) -> dict[str, float]:
        return {str(code).upper(): float(rate) for code, rate in rates.items()}

    @field_validator("reporting_currency")
    @classmethod
    def _upper_case_currency(cls, code: str) -> str:
        return code.upper()


# The defaults as plain mappings (what `load_config` returns for an empty file).
DEFAULTS: dict[str, Any] = NeedsegConfig().model_dump()

_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a text",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _describe(error: dict[str, Any], path: Path) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        section = NeedsegConfig
        for part in error["loc"][:-1]:
            field = section.model_fields.get(str(part))
            section = field.annotation if field is not None and isinstance(field.annotation, type) else section
        known = ", ".join(sorted(section.model_fields)) if isinstance(section, type) and issubclass(section, BaseModel) else ""
        return f"{path}: unknown setting {key!r}" + (f"; expected one of {known}" if known else "")
    expected = _EXPECTED.get(kind) or error["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    return f"{path}: {key} must be {expected}, not {error.get('input')!r}"


def validate_config(raw: Any, path: Path) -> NeedsegConfig:
    """The typed configuration from a parsed file, or a ConfigError naming every wrong key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    try:
        return NeedsegConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(error, path) for error in exc.errors()]
        raise ConfigError("\n".join(problems)) from None


def load_config(path: Path) -> dict[str, Any]:
    """The validated configuration of `path` as plain mappings (defaults filled in)."""
    if not path.exists():
        raise ConfigError(f"configuration file {path} does not exist (set NEEDSEG_CONFIG or restore config/needseg.yaml)")
    return validate_config(load_yaml(path), path).model_dump()
