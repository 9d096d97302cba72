"""The calibrate stage (``reconad.calibrate.calibrate_model``): thresholds of a model from
the validation normals of its category only, all rules and the params in threshold.json.

The model is a tiny SDC-AE saved as training saves it (untrained: calibration only needs
maps). The prepared category is an in-memory stand-in whose test split raises when
anything touches it. The rules themselves are tested in ``test_decision.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reconad.calibrate
from pipeline_fixtures import TINY_CATEGORY, TINY_VARIANT, tiny_params
from reconad import paths
from reconad.calibrate import calibrate_model
from reconad.config import Params, params_from_dict
from reconad.data.layout import CategoryData
from reconad.decision import RULES, map_statistics, rule_thresholds
from reconad.models.trained import load_trained
from reconad.score import score_images
from reconad.train import make_method, save_model

SIZE = 32
VAL_IMAGES = 6
MIN_AREA_PX = {"default": 64, TINY_CATEGORY: 1024}
"""At 32 px: 1 pixel by default, 16 pixels for the tiny category (1024 * (32/256)^2)."""
PREPARED = Path("prepared-nowhere")


class ForbiddenTouch(AssertionError):
    """Raised by :class:`Untouchable`: calibration looked at test data."""


class Untouchable:
    """Stands for a test array: any use of it is recorded and raises."""

    def __init__(self, name: str, touches: list[str]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_touches", touches)

    def _touched(self, how: str) -> ForbiddenTouch:
        name = object.__getattribute__(self, "_name")
        object.__getattribute__(self, "_touches").append(f"{name}: {how}")
        return ForbiddenTouch(f"calibration touched {name} ({how})")

    def __getattribute__(self, attribute: str) -> Any:
        raise object.__getattribute__(self, "_touched")(f".{attribute}")

    def __len__(self) -> int:
        raise object.__getattribute__(self, "_touched")("len()")

    def __iter__(self) -> Any:
        raise object.__getattribute__(self, "_touched")("iter()")

    def __getitem__(self, key: Any) -> Any:
        raise object.__getattribute__(self, "_touched")("[]")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise object.__getattribute__(self, "_touched")("np.asarray()")

    def __bool__(self) -> bool:
        raise object.__getattribute__(self, "_touched")("bool()")

    def __repr__(self) -> str:
        return f"<untouchable {object.__getattribute__(self, '_name')}>"


def images(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, SIZE, SIZE, 1), dtype=np.float32)


def category_without_test(touches: list[str]) -> CategoryData:
    """The tiny category with real train/val images and a test split that must not be used."""
    return CategoryData(
        category=TINY_CATEGORY,
        color="grey",
        image_size=SIZE,
        train=images(1, 4),
        val=images(2, VAL_IMAGES),
        test=Untouchable("test", touches),
        test_labels=Untouchable("test_labels", touches),
        test_masks=Untouchable("test_masks", touches),
        test_names=Untouchable("test_names", touches),
        test_defects=Untouchable("test_defects", touches),
        train_names=[f"train/good/{i:03d}.png" for i in range(4)],
        val_names=[f"train/good/{i:03d}.png" for i in range(4, 4 + VAL_IMAGES)],
    )


def calibration_params(rule: str = "components") -> Params:
    raw = tiny_params()
    raw["calibrate"].update(rule=rule, min_defect_area_px=MIN_AREA_PX, target_fpr=0.2)
    return params_from_dict(raw, variant=TINY_VARIANT)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDC-AE directory as ``reconad train`` writes it (read-only; tests copy it)."""
    params = calibration_params()
    method = make_method(params, TINY_VARIANT, 1)
    model_dir = tmp_path_factory.mktemp("calibrate") / TINY_VARIANT / TINY_CATEGORY
    (model_dir / paths.MODEL_SUBDIR).mkdir(parents=True)
    save_model(
        method.build(),
        method,
        category_without_test([]),
        "no-run",
        0.0,
        model_dir / paths.MODEL_SUBDIR,
    )
    return model_dir


@pytest.fixture
def model_dir(saved_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved_model, tmp_path / TINY_VARIANT / TINY_CATEGORY))


@pytest.fixture
def touches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Calibration reads the stand-in category; what touched its test split is listed."""
    seen: list[str] = []

    def load_split(category_dir: Path) -> CategoryData:
        assert Path(category_dir) == paths.prepared_category(TINY_CATEGORY, PREPARED)
        return category_without_test(seen)

    monkeypatch.setattr(reconad.calibrate, "load_split", load_split)
    return seen


def calibrate(params: Params, model_dir: Path) -> dict[str, Any]:
    return calibrate_model(params, TINY_VARIANT, TINY_CATEGORY, PREPARED, model_dir)


def test_calibration_reads_validation_images_only(model_dir: Path, touches: list[str]) -> None:
    params = calibration_params()
    calibration = calibrate(params, model_dir)
    assert touches == []
    assert calibration["validation_images"] == VAL_IMAGES
    trained = load_trained(model_dir, params)
    val_maps = score_images(trained.detector, images(2, VAL_IMAGES)).maps
    for name, maps in val_maps.items():
        expected = rule_thresholds(maps, 16, 0.2, params.calibrate.percentile)
        stored = calibration["maps"][name]
        assert {rule: stored[rule] for rule in RULES} == pytest.approx(expected, rel=1e-6)
        assert stored["stats"] == pytest.approx(map_statistics(maps), rel=1e-6)


def test_threshold_file_holds_every_rule_and_the_params(
    model_dir: Path, touches: list[str]
) -> None:
    params = calibration_params("fpr")
    returned = calibrate(params, model_dir)
    stored = json.loads((model_dir / paths.THRESHOLD_FILE).read_text(encoding="utf-8"))
    assert stored == returned
    assert set(stored) == {
        "rule",
        "min_area",
        "target_fpr",
        "percentile",
        "primary",
        "validation_images",
        "maps",
        "params",
    }
    assert stored["rule"] == "fpr"
    assert stored["min_area"] == 16, "the category's own area, rescaled to 32 px"
    assert (stored["target_fpr"], stored["percentile"]) == (0.2, params.calibrate.percentile)
    assert stored["primary"] == "residual"
    assert set(stored["maps"]) == {"residual"}
    for thresholds in stored["maps"].values():
        assert set(thresholds) == {*RULES, "stats"}
        assert all(type(thresholds[rule]) is float for rule in RULES)
        assert set(thresholds["stats"]) == {"mean", "std", "min", "p50", "p99", "max"}
    assert stored["params"] == params.raw()
    assert Params.model_validate(stored["params"]).raw() == params.raw()
    assert load_trained(model_dir).params.raw() == params.raw(), "predict scores with these"
    assert touches == []


def test_the_rule_only_chooses_which_stored_threshold_decides(
    model_dir: Path, touches: list[str]
) -> None:
    calibrations = {rule: calibrate(calibration_params(rule), model_dir) for rule in RULES}
    assert {rule: c["rule"] for rule, c in calibrations.items()} == {r: r for r in RULES}
    maps = [c["maps"] for c in calibrations.values()]
    assert all(m == maps[0] for m in maps)
    assert touches == []
