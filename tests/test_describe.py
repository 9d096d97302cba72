"""``reconad describe``: what each variant sees and how long it trains, as a profile and
``-S`` settings resolve it, without running DVC (``dvc exp run --dry`` runs in a
temporary copy that lacks the cached data, so it cannot show this)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconad import cli
from reconad.config import raw_params
from reconad.errors import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _describe(capsys: pytest.CaptureFixture[str], *settings: str) -> dict[str, str]:
    argv = ["--params", str(REPO_PARAMS), "describe"]
    for setting in settings:
        argv += ["-S", setting]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def test_the_paper_profile_shows_each_family_s_size_colour_and_backbone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    described = _describe(capsys, "profile=paper")
    assert described["aesc_stain"].startswith("aesc at 256 px, grey;")
    assert described["sdc_restore"].startswith("sdc_ae at 512 px, colour as prepared;")
    assert "resnet101/imagenet" in described["patch_ae"]
    assert "early stopping after 10 epochs" in described["sdc_restore"]
    assert "(mix1 defects)" in described["sdc_restore"]
    assert described["patchcore"].endswith("not trained")


def test_settings_change_what_is_described(capsys: pytest.CaptureFixture[str]) -> None:
    described = _describe(
        capsys, "profile=cpu", "run.sdc_ae=[sdc_contrast]", "dataset.image_size=512"
    )
    assert set(described) >= {"sdc_contrast"} and "sdc_restore" not in described
    assert described["sdc_contrast"].startswith("sdc_ae at 512 px")
    assert "after 6 epochs" in described["sdc_contrast"]


def test_the_time_cap_is_described_where_a_profile_sets_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    capped = _describe(capsys, "profile=cpu")
    assert capped["aesc_stain"].endswith(", or 25 min (train.max_minutes)")
    assert "max_minutes" not in capped["patchcore"]
    assert "max_minutes" not in _describe(capsys, "profile=quick")["aesc_stain"]


def test_a_zero_time_cap_lifts_the_profiles_cap(capsys: pytest.CaptureFixture[str]) -> None:
    """null takes the profile's cap, so lifting it needs a value of its own: 0."""
    assert (
        "max_minutes" not in _describe(capsys, "profile=cpu", "train.max_minutes=0")["aesc_stain"]
    )
    assert _describe(capsys, "profile=cpu", "train.max_minutes=null")["aesc_stain"].endswith(
        ", or 25 min (train.max_minutes)"
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("profile", r"-S profile: expected KEY=VALUE"),
        ("sdc_ae.inputs.size=1", r"sdc_ae\.inputs\.size"),
    ],
)
def test_a_bad_setting_is_named(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        raw_params(REPO_PARAMS, [setting])
