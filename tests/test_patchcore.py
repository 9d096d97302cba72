"""PatchCore: locally aware multi-scale features, a coreset memory bank, re-weighted scores."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from pipeline_fixtures import normals_only
from reconad.config import Params, apply_overrides, params_from_dict
from reconad.data.layout import CategoryData
from reconad.errors import ConfigError
from reconad.memory_bank import MEMORY_BANK_FILE, load_bank, nearest_distances
from reconad.models import method_class
from reconad.models.patchcore import PatchCore

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
VARIANT = "patchcore"
TINY = {
    "dataset.image_size": 32,
    "patchcore.network.backbone": "vgg16",
    "patchcore.network.weights": "random",
    "patchcore.bank.coreset_fraction": 1.0,
    "patchcore.score.reweight_neighbours": 0,
}


def _params(**overrides: object) -> Params:
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    raw = apply_overrides(raw, {**TINY, **overrides}, "test", None)
    return params_from_dict(raw, VARIANT)


def _method(channels: int = 1, **overrides: object) -> PatchCore:
    return PatchCore(_params(**overrides), VARIANT, channels)


def _data(train: np.ndarray) -> CategoryData:
    return normals_only(train)


def _images(count: int, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, size, size, channels), np.float32)


def test_registry_finds_patchcore() -> None:
    assert method_class("patchcore") is PatchCore


def test_features_are_the_averaged_layers_on_the_stride_8_grid() -> None:
    """block3 (stride 4, 256 ch) pooled and block4 (stride 8, 512 ch) on a 4 x 4 grid."""
    features = _method().build()
    assert not features.trainable_weights
    out = features(_images(2))
    assert tuple(out.shape) == (2, 32 // 8, 32 // 8, 256 + 512)


def test_locally_aware_features_average_each_layer_over_its_neighbourhood() -> None:
    plain = _method(**{"patchcore.network.aggregate": 1}).build()
    aware = _method(**{"patchcore.network.aggregate": 3}).build()
    aware.set_weights(plain.get_weights())
    images = _images(1, size=64)
    assert not np.allclose(plain(images), aware(images))


def test_the_bank_holds_every_training_vector_and_scores_them_zero(tmp_path: Path) -> None:
    method = _method()
    model = method.build()
    train = _images(3)
    method.after_training(model, _data(train), tmp_path)
    bank = load_bank(tmp_path / MEMORY_BANK_FILE)
    assert bank.shape == (3 * 4 * 4, 256 + 512)
    detector = method.load_detector(model, tmp_path)
    scores = detector.score(train)
    assert scores.maps["knn"].shape == (3, 32, 32)
    other = detector.score(_images(1, seed=7)).image_scores["knn"][0]
    # float32 distances of features far from the origin: zero up to rounding
    assert scores.image_scores["knn"].max() < 1e-2 * other


def test_coreset_thins_the_bank(tmp_path: Path) -> None:
    method = _method(**{"patchcore.bank.coreset_fraction": 0.25})
    method.after_training(method.build(), _data(_images(4)), tmp_path)
    assert len(load_bank(tmp_path / MEMORY_BANK_FILE)) == round(0.25 * 4 * 4 * 4)


def test_a_changed_patch_scores_higher_where_it_changed(tmp_path: Path) -> None:
    method = _method()
    model = method.build()
    train = np.tile(np.linspace(0, 1, 32, dtype=np.float32)[None, :, None, None], (4, 1, 32, 1))
    train = np.transpose(train, (0, 2, 1, 3))
    method.after_training(model, _data(train), tmp_path)
    test = train[:1].copy()
    test[0, 8:16, 8:16] = 1.0 - test[0, 8:16, 8:16]
    scores = method.load_detector(model, tmp_path).score(test)
    anomaly_map = scores.maps["knn"][0]
    assert anomaly_map[8:16, 8:16].mean() > anomaly_map[24:, 24:].mean()
    grid = model(test).numpy().reshape(-1, 768)
    bank = load_bank(tmp_path / MEMORY_BANK_FILE)
    raw_max = nearest_distances(grid, bank, 64).max()
    np.testing.assert_allclose(scores.image_scores["knn"][0], raw_max, rtol=1e-4)


def test_reweighting_changes_the_image_score_not_the_map(tmp_path: Path) -> None:
    train, test = _images(4), _images(1, seed=9)
    plain = _method()
    model = plain.build()
    plain.after_training(model, _data(train), tmp_path)
    weighted = _method(**{"patchcore.score.reweight_neighbours": 3})
    a = plain.load_detector(model, tmp_path).score(test)
    b = weighted.load_detector(model, tmp_path).score(test)
    np.testing.assert_allclose(a.maps["knn"], b.maps["knn"])
    assert 0.0 < b.image_scores["knn"][0] < a.image_scores["knn"][0]


def test_image_size_must_fit_the_strides() -> None:
    method = _method()
    method.check_image_size(40)
    with pytest.raises(ConfigError, match=r"patchcore\.input\.size\b.*multiple of 8.*got 36"):
        method.check_image_size(36)


def test_rgb_and_grey_images_both_work() -> None:
    for channels in (1, 3):
        features = _method(channels).build()
        out = features(tf.convert_to_tensor(_images(1, channels=channels)))
        assert out.shape[-1] == 768
    assert keras.backend.backend() == "tensorflow"
