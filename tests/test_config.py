"""Configuration a user wrote: typed, every key checked, refused with the key and what was
expected (exit 2) instead of a default quietly taken or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import cli
from pipelines.config import DEFAULTS, NeedsegConfig, load_config
from pipelines.errors import ConfigError
from pipelines.settings import CONFIG_DIR

BOMB = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n" for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_the_shipped_configuration_is_valid_and_a_partial_file_keeps_the_defaults(tmp_path: Path):
    shipped = load_config(CONFIG_DIR / "needseg.yaml")
    assert shipped["fx_rates"]["SEK"] == pytest.approx(0.087)
    partial = tmp_path / "needseg.yaml"
    partial.write_text("drift:\n  early_warning_z: 4\n")
    config = load_config(partial)
    assert config["drift"]["early_warning_z"] == 4.0
    assert config["drift"]["min_shift"] == DEFAULTS["drift"]["min_shift"] == NeedsegConfig().drift.min_shift
    assert config["segmentation"] == DEFAULTS["segmentation"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("segmentation:\n  min_stability: high\n", "segmentation.min_stability must be a number, not 'high'"),
        ("segmentation:\n  bootstrap_samples: 2.5\n", "segmentation.bootstrap_samples must be a whole number, not 2.5"),
        ("features:\n  premium_categories: Premium\n", "features.premium_categories must be a list"),
        ("drift:\n  min_shift: 1.5\n", "drift.min_shift must be less than or equal to 1, not 1.5"),
        ("fx_rates:\n  SEK: -0.1\n", "fx_rates.SEK must be greater than 0, not -0.1"),
        ("drift:\n  early_warning: 3\n", "unknown setting 'drift.early_warning'; expected one of active_within_months"),
        ("segmentaton:\n  seed: 1\n", "unknown setting 'segmentaton'"),
        ("- just a list\n", "expected a mapping of settings"),
        ("drift: [\n", "not valid YAML"),
        (BOMB, "expands to more than"),
    ],
)
def test_a_wrong_setting_is_named_with_what_was_expected(tmp_path: Path, text: str, message: str):
    path = tmp_path / "needseg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_the_command_line_exits_2_naming_the_key_without_a_traceback(tmp_path: Path, monkeypatch, capsys):
    path = tmp_path / "needseg.yaml"
    path.write_text("segmentation:\n  min_cluster_share: lots\n")
    monkeypatch.setenv("NEEDSEG_CONFIG", str(path))
    (tmp_path / "data" / "landing").mkdir(parents=True)
    code = cli.main(["validate", "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2
    assert "segmentation.min_cluster_share must be a number, not 'lots'" in err
    assert "Traceback" not in err
