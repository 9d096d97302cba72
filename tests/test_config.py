"""params.yaml validation: every mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from reconad.config import load_params
from reconad.errors import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write_params(tmp_path: Path, **changes: object) -> Path:
    """The repository's params.yaml with dotted keys changed."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repository_params_are_valid() -> None:
    params = load_params(REPO_PARAMS)
    assert params.dataset.name == "textures"
    assert params.loss.lambda_ == pytest.approx(0.5)
    for family, names in params.run.items():
        for name in names:
            assert params.variant(name).method == family


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"loss__lambda": 1.5}, "loss.lambda: Input should be less than or equal to 1"),
        ({"loss__objective": "rebuild"}, "loss.objective: Input should be 'restore' or 'contrast'"),
        ({"dataset__image_size": "big"}, "dataset.image_size: Input should be a valid integer"),
        ({"dataset__image_size": 100}, "dataset.image_size: must be a multiple of 8"),
        (
            {"dataset__name": "imagenet"},
            "dataset.name: Input should be 'textures', 'mvtec_ad' or 'folder'",
        ),
        ({"train__batchsize": 4}, "train.batchsize: unknown key (allowed: augment, batch_size"),
        ({"run__sdc_ae": ["sdc_nope"]}, "run.sdc_ae: unknown variant 'sdc_nope'"),
        ({"profile": "huge"}, "profile: unknown profile 'huge' (allowed: paper, quick)"),
        (
            {"run__ensemble": ["sdc_ensemble"]},
            "run.ensemble: 'sdc_ensemble' needs its member 'sdc_contrast' in run.sdc_ae",
        ),
        (
            {"variants__sdc_ensemble__members": ["sdc_restore"]},
            "variants.sdc_ensemble.members: an ensemble needs at least 2 variants",
        ),
        (
            {"variants__sdc_ensemble__members": ["sdc_restore", "sdc_nope"]},
            "variants.sdc_ensemble.members: unknown variant 'sdc_nope'",
        ),
        (
            {"variants__sdc_ensemble__members": ["sdc_restore", "sdc_ensemble"]},
            "variants.sdc_ensemble.members: 'sdc_ensemble' is itself an ensemble",
        ),
        (
            {"variants__sdc_restore__members": ["sdc_contrast"]},
            "variants.sdc_restore.members: only an 'ensemble' variant has members",
        ),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, change: dict, expected: str) -> None:
    path = write_params(tmp_path, **change)
    with pytest.raises(ConfigError) as error:
        load_params(path)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def test_variant_overrides_apply(tmp_path: Path) -> None:
    path = write_params(
        tmp_path,
        variants={"v": {"method": "sdc_ae", "set": {"loss.objective": "contrast"}}},
        run={"sdc_ae": ["v"]},
    )
    assert load_params(path).loss.objective == "restore"
    assert load_params(path, variant="v").loss.objective == "contrast"


def test_variant_override_of_unknown_key_fails(tmp_path: Path) -> None:
    path = write_params(
        tmp_path,
        variants={"v": {"method": "sdc_ae", "set": {"loss.lamda": 0.1}}},
        run={"sdc_ae": ["v"]},
    )
    with pytest.raises(ConfigError, match=r"variants\.v\.set: unknown key 'loss\.lamda'"):
        load_params(path, variant="v")


def test_unknown_variant_names_the_defined_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown variant 'nope'.*sdc_restore"):
        load_params(REPO_PARAMS, variant="nope")


def test_paper_profile_switches_scale(tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path, profile="paper"))
    assert params.dataset.image_size == 512
    assert params.sdc_ae.width == 1.0
    assert [phase.crop for phase in params.sdc_ae.schedule] == [128, 256, 512]


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_params(tmp_path / "absent.yaml")


def test_params_are_immutable() -> None:
    params = load_params(REPO_PARAMS)
    with pytest.raises(ValidationError, match="frozen"):
        params.loss.objective = "contrast"  # type: ignore[misc]
