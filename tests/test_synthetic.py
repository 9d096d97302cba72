"""Label-free validation: each family's training corruption pasted into validation
normals, and how well a model's maps localise it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_fixtures import normals_only
from reconad.config import apply_overrides, params_from_dict
from reconad.data.layout import CategoryData
from reconad.errors import ConfigError
from reconad.models.base import Scores
from reconad.synthetic import (
    MONITOR_IMAGES,
    SyntheticSet,
    SyntheticValidation,
    synthetic_score,
    synthetic_set,
)
from reconad.train import make_method

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
TINY = {
    "dataset.image_size": 32,
    "sdc_ae.train.phases": [{"crop": 32, "epochs": 1}],
    "aesc.network.filters": [8, 16, 32],
    "aesc.network.dropout": [0.0, 0.1, 0.2],
    "patch_ae.network.weights": "random",
    "patch_ae.network.compressed_channels": 8,
}


def _method(variant: str, **overrides: object):
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    raw = apply_overrides(raw, {**TINY, **overrides}, "test", None)
    return make_method(params_from_dict(raw, variant), variant, 1)


def _data(count: int = 8) -> CategoryData:
    images = np.random.default_rng(0).random((count, 32, 32, 1), dtype=np.float32)
    return normals_only(images, val=images, category="gravel")


@pytest.mark.parametrize("variant", ["sdc_restore", "aesc_stain", "patch_ae"])
def test_each_family_pastes_its_own_corruption_with_exact_masks(variant: str) -> None:
    method = _method(variant)
    clean = _data().val
    made = synthetic_set(method, clean, seed=3)
    assert made.images.shape == clean.shape and made.masks.shape == clean.shape[:3]
    assert made.masks.any()
    changed = np.abs(made.images - clean).max(axis=-1) > 1e-6
    # soft masks (SDC-AE's faded disks) also change pixels below the level they are
    # binarised at; crisp ones (stains, CutPaste) only inside
    outside = (changed & ~made.masks).sum()
    assert outside < (0.5 if variant == "sdc_restore" else 0.02) * changed.sum()
    again = synthetic_set(method, clean, seed=3)
    np.testing.assert_array_equal(made.images, again.images)


@pytest.mark.parametrize("kind", ["stain", "scratch", "drops", "mix1"])
def test_held_out_defects_are_not_the_family_s_own_corruption(kind: str) -> None:
    method = _method("sdc_contrast", **{"sdc_ae.train.synthetic_defects": kind})
    clean = _data().val
    held_out = synthetic_set(method, clean, seed=3)
    own = synthetic_set(method, clean, seed=3, defects="training")
    assert held_out.masks.any()
    assert not np.array_equal(held_out.masks, own.masks)
    changed = np.abs(held_out.images - clean).max(axis=-1) > 1e-6
    assert (changed & ~held_out.masks).sum() < 0.02 * changed.sum()


def test_an_unknown_kind_of_synthetic_defects_is_named() -> None:
    with pytest.raises(ConfigError, match=r"sdc_ae\.train\.synthetic_defects"):
        _method("sdc_restore", **{"sdc_ae.train.synthetic_defects": "cutpaste"})


def _fixed_detector(maps_of):
    """A detector whose maps are ``maps_of(images)`` and whose image score is their max."""

    class Fixed:
        map_names = ("residual",)

        def score(self, images: np.ndarray) -> Scores:
            maps = maps_of(images)
            return Scores({"residual": maps}, {"residual": maps.max(axis=(1, 2))})

    return Fixed()


def test_maps_equal_to_the_masks_score_one_and_flat_maps_one_half(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    method = _method("sdc_restore", **{"sdc_ae.train.precise_bn": False})
    data = _data()
    made = synthetic_set(method, data.val, seed=1)

    def perfect(images: np.ndarray) -> np.ndarray:
        corrupted = images is made.images
        return made.masks.astype(np.float32) if corrupted else np.zeros(made.masks.shape)

    monkeypatch.setattr(method, "load_detector", lambda model, state: _fixed_detector(perfect))
    score = synthetic_score(method, None, data, made)
    assert (score.pixel_auroc, score.image_auroc, score.mean) == (1.0, 1.0, 1.0)
    flat = _fixed_detector(lambda images: np.zeros(images.shape[:3], np.float32))
    monkeypatch.setattr(method, "load_detector", lambda model, state: flat)
    score = synthetic_score(method, None, data, made)
    assert (score.pixel_auroc, score.image_auroc) == (0.5, 0.5)


def test_a_map_that_localises_but_flags_clean_images_loses_the_image_half(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hot inside the pasted defects, and as hot somewhere on every clean image: the
    pixel half cannot see it, the image half does (contrast at lambda 0.9 on brick)."""
    method = _method("sdc_restore", **{"sdc_ae.train.precise_bn": False})
    data = _data()
    made = synthetic_set(method, data.val, seed=1)

    def localises_but_flags_clean(images: np.ndarray) -> np.ndarray:
        if images is made.images:
            return made.masks.astype(np.float32)
        maps = np.zeros(images.shape[:3], np.float32)
        maps[:, 0, 0] = 1.0
        return maps

    detector = _fixed_detector(localises_but_flags_clean)
    monkeypatch.setattr(method, "load_detector", lambda model, state: detector)
    score = synthetic_score(method, None, data, made)
    assert score.pixel_auroc == 1.0
    assert score.image_auroc == 0.5
    assert score.mean == 0.75


def test_a_trained_sdc_model_gets_a_score_in_the_unit_interval() -> None:
    method = _method("sdc_restore", **{"sdc_ae.network.width": 0.125})
    model = method.build()
    data = _data()
    score = synthetic_score(method, model, data, synthetic_set(method, data.val, 0))
    assert 0.0 <= score.pixel_auroc <= 1.0 and 0.0 <= score.image_auroc <= 1.0


def test_a_corruption_that_changes_nothing_cannot_be_monitored() -> None:
    method = _method("aesc_none")
    with pytest.raises(ConfigError, match=r"aesc\.train\.monitor: 'synthetic'"):
        SyntheticValidation(method, _data(), seed=0)


def test_the_bank_of_a_memory_family_uses_a_few_training_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    method = _method("patch_ae")
    seen: list[int] = []
    monkeypatch.setattr(
        method, "after_training", lambda model, data, out: seen.append(len(data.train))
    )
    monkeypatch.setattr(
        method,
        "load_detector",
        lambda model, state: type(
            "D",
            (),
            {
                "map_names": ("knn",),
                "score": lambda self, x: Scores(
                    {"knn": np.zeros(x.shape[:3], np.float32)},
                    {"knn": np.zeros(len(x), np.float32)},
                ),
            },
        )(),
    )
    data = _data(count=40)
    made = SyntheticSet(data.val[:2], np.ones((2, 32, 32), bool) & (np.arange(32) < 8))
    synthetic_score(method, None, data, made)
    assert seen == [32]


def test_the_monitor_scores_a_few_validation_normals_whatever_the_dataset() -> None:
    data = _data(count=MONITOR_IMAGES + 8)
    monitor = SyntheticValidation(_method("sdc_restore"), data, seed=0)
    np.testing.assert_array_equal(monitor.data.val, data.val[:MONITOR_IMAGES])
    assert len(monitor.synthetic.images) == MONITOR_IMAGES
    np.testing.assert_array_equal(monitor.data.train, data.train)
