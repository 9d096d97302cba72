"""Augmentation per category: MVTec AD names get the orientation table unless the user
sets their own ``dataset.augment`` entry, and an entry that re-orients a fixed-orientation
category is warned about once, naming the category and the key to set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconad.config import AugmentConfig, Params, apply_overrides, params_from_dict
from reconad.data.orientation import MVTEC_AD, OPERATIONS, augmentation

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
MVTEC_CATEGORIES = {
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
}  # fmt: skip
EVERYTHING = {"rot90": True, "hflip": True, "vflip": True}
NOTHING = {"rot90": False, "hflip": False, "vflip": False}


def params_with(name: str, augment: dict[str, dict[str, bool]] | None = None) -> Params:
    """The repository's params on dataset ``name``, with ``dataset.augment`` replaced if
    given (the repository's holds only ``default``, all operations allowed)."""
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    overrides: dict[str, Any] = {"dataset.name": name, "dataset.root": "/data/mvtec"}
    if augment is not None:
        overrides["dataset.augment"] = augment
    return params_from_dict(apply_overrides(raw, overrides, "test", None))


def test_the_table_covers_exactly_the_mvtec_ad_categories() -> None:
    assert set(MVTEC_AD) == MVTEC_CATEGORIES
    assert all(rule.reason and "\n" not in rule.reason for rule in MVTEC_AD.values())


@pytest.mark.parametrize("name", ["mvtec_ad", "folder"])
@pytest.mark.parametrize("category", sorted(MVTEC_CATEGORIES))
def test_mvtec_names_get_the_table_over_default(name: str, category: str) -> None:
    dataset = params_with(name).dataset
    assert dataset.augment["default"] == AugmentConfig(**EVERYTHING)
    expected = MVTEC_AD[category].allowed
    assert augmentation(dataset, category) == AugmentConfig(**expected._asdict())


@pytest.mark.parametrize("name", ["mvtec_ad", "folder"])
def test_an_explicit_entry_wins_over_the_table(name: str) -> None:
    dataset = params_with(name, {"default": NOTHING, "metal_nut": EVERYTHING}).dataset
    assert augmentation(dataset, "metal_nut") == AugmentConfig(**EVERYTHING)


@pytest.mark.parametrize("name", ["textures", "folder"])
def test_other_names_get_their_entry_or_default(name: str) -> None:
    own = {"rot90": True, "hflip": False, "vflip": False}
    dataset = params_with(name, {"default": NOTHING, "parts": own}).dataset
    assert augmentation(dataset, "parts") == AugmentConfig(**own)
    assert augmentation(dataset, "brick") == AugmentConfig(**NOTHING)


@pytest.mark.parametrize("category", ["metal_nut", "transistor"])
def test_label_carrying_orientations_are_never_flipped_by_default(category: str) -> None:
    allowed = augmentation(params_with("mvtec_ad").dataset, category)
    assert not allowed.hflip and not allowed.vflip


def test_transistor_is_never_turned_by_default() -> None:
    assert not augmentation(params_with("mvtec_ad").dataset, "transistor").rot90


def test_an_entry_turning_a_fixed_category_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    params = params_with("folder", {"default": NOTHING, "transistor": EVERYTHING})
    with caplog.at_level(logging.WARNING, logger="reconad"):
        assert augmentation(params.dataset, "transistor") == AugmentConfig(**EVERYTHING)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    message = warnings[0]
    assert "\n" not in message
    assert "transistor" in message
    for op in OPERATIONS:
        assert f"dataset.augment.transistor.{op}" in message


@pytest.mark.parametrize(
    "augment",
    [
        {"default": EVERYTHING},  # the table applies: nothing to warn about
        {"default": EVERYTHING, "metal_nut": {"rot90": True, "hflip": False, "vflip": False}},
        {"default": EVERYTHING, "nut_v2": EVERYTHING},  # not an MVTec AD name
    ],
)
def test_no_warning_without_an_entry_exceeding_the_table(
    augment: dict[str, dict[str, bool]], caplog: pytest.LogCaptureFixture
) -> None:
    params = params_with("mvtec_ad", augment)
    with caplog.at_level(logging.WARNING, logger="reconad"):
        for category in ("metal_nut", "nut_v2"):
            augmentation(params.dataset, category)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_warning_names_only_the_operations_the_table_forbids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    params = params_with("mvtec_ad", {"default": NOTHING, "metal_nut": EVERYTHING})
    with caplog.at_level(logging.WARNING, logger="reconad"):
        augmentation(params.dataset, "metal_nut")
    (record,) = caplog.records
    assert "dataset.augment.metal_nut.hflip" in record.getMessage()
    assert "dataset.augment.metal_nut.vflip" in record.getMessage()
    assert "dataset.augment.metal_nut.rot90" not in record.getMessage()
