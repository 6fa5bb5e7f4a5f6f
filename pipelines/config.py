"""The pipeline's business configuration (config/needseg.yaml or NEEDSEG_CONFIG).

Defaults live in code so a partial file only overrides what it names; unknown keys are
refused with the file and key, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "reporting_currency": "EUR",
    "fx_rates": {"EUR": 1.0},
    "ingest": {"max_quarantine_share": 0.5, "min_rows_for_quarantine_share": 20},
    "features": {
        "trailing_months": 12,
        "recent_months": 3,
        "key_account_revenue_share": 0.8,
        "mid_tier_revenue_share": 0.95,
        "survey_valid_months": 24,
        # Months of per-account monthly behaviour kept for drift detection.
        "drift_history_months": 18,
        "premium_categories": [],
        "service_categories": [],
    },
    "segmentation": {
        "seed": 42,
        "bootstrap_samples": 20,
        "min_stability": 0.75,
        "choose_stability": 0.85,
        "min_cluster_share": 0.04,
        # The key tier gets its own segmentation from this many key accounts with a profile on.
        "key_accounts_min": 50,
        # ... and when its own segments describe key accounts this much better than the others' do.
        "key_accounts_min_gain": 0.1,
        "lookalikes_per_segment": 25,
    },
    "drift": {
        # compare the last `recent_months` of buying mix with the `baseline_months` before
        "recent_months": 6,
        "baseline_months": 12,
        # an early warning needs both: evidence (z) and a material move (share of the way
        # from the account's segment profile to the target's)
        "early_warning_z": 3.5,
        "min_shift": 0.25,
        "confirm_migration_z": 2.5,
        "active_within_months": 4,
        "min_profile_gap": 0.7,
        # churn risk: drift plus falling revenue or worsening satisfaction
        "revenue_drop": 0.2,
        "satisfaction_drop": 1.0,
        "low_nps": 6.0,
        "alert_min_score": 0.35,
        "resolve_after_runs": 2,
        "cooldown_days": 60,
        # lapse risk: no order within the horizon, at the account's own rhythm
        "lapse_horizon_months": 3.0,
        "lapse_silence_months": 6.0,
        # MONIC population transitions
        "survive_overlap": 0.5,
        "split_overlap": 0.25,
    },
    "alerts": {  # the same defaults as pipelines.alerts.outbox.AlertOptions
        "fallback_recipient": None,
        "renotify_after_days": 60,
        "renotify_tolerance_days": 3,
        "max_attempts": 12,
        "retry_base_seconds": 60,
        "retry_max_seconds": 21600,
    },
    "publish": {
        # Parquet export sets kept on disk: the current one and those before it, for
        # readers still busy with an older set.
        "keep_export_versions": 3,
    },
}


def _merge(base: dict[str, Any], override: dict[str, Any], path: Path, where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        here = f"{where}.{key}" if where else key
        if key not in base:
            raise ConfigError(f"{path}: unknown setting {here!r}; expected one of {', '.join(sorted(base))}")
        if isinstance(base[key], dict) and base[key] and key != "fx_rates":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {here} must be a mapping")
            out[key] = _merge(base[key], value, path, here)
        else:
            out[key] = value
    return out


def load_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"configuration file {path} does not exist (set NEEDSEG_CONFIG or restore config/needseg.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    config = _merge(DEFAULTS, raw, path)
    rates = config["fx_rates"]
    if not isinstance(rates, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in rates.values()):
        raise ConfigError(f"{path}: fx_rates must map currency codes to positive numbers")
    config["fx_rates"] = {str(k).upper(): float(v) for k, v in rates.items()}
    return config
