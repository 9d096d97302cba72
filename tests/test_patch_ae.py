"""Patch AE: hybrid loss, patch-wise decoding, training pairs, memory bank and detector."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from sklearn.neighbors import NearestNeighbors

from reconad.config import CorruptionConfig, CutPasteConfig, DatasetConfig, Params, PatchAeConfig
from reconad.errors import ConfigError
from reconad.memory_bank import MEMORY_BANK_FILE, load_bank
from reconad.models import method_class, patch_ae
from reconad.models.patch_ae import (
    DECODER,
    DepthToSpace,
    PatchAe,
    encoder,
    hybrid_patch_loss,
)

C3 = 4


def _params(**patch_ae) -> Params:
    settings = {"backbone": "random", "compressed_channels": C3, "decoder_channels": 8}
    return Params(
        dataset=DatasetConfig(categories=["grid"], image_size=32),
        patch_ae=PatchAeConfig(**{**settings, **patch_ae}),
    )


@pytest.fixture(scope="module")
def grey_method() -> PatchAe:
    return PatchAe(_params(), channels=1)


@pytest.fixture(scope="module")
def grey_model(grey_method: PatchAe) -> keras.Model:
    keras.utils.set_random_seed(7)
    return grey_method.build()


def _images(count: int, size: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((count, size, size, channels), dtype=np.float32)


def test_hybrid_loss_hand_computed() -> None:
    # Two 8 x 8 grey patches side by side.
    target = np.zeros((1, 8, 16, 1), np.float32)
    target[0, :, 8:, 0] = np.indices((8, 8)).sum(axis=0) % 2  # checkerboard: mean .5, std .5
    prediction = np.zeros_like(target)
    prediction[0, :, :8, 0] = 0.5
    # Patch 1: target 0, prediction 0.5 -> raw ||.|| = sqrt(64 * 0.25) = 4; both flat -> norm 0.
    # Patch 2: prediction 0 -> raw = sqrt(32) ; norm(target) = +-1, norm(pred) = 0 -> 8.
    alpha = 0.25
    std = np.sqrt(0.25 + 1e-6)
    expected = alpha * (8 * 0.5 / std) + (1 - alpha) * (4 + np.sqrt(32))
    loss = hybrid_patch_loss(target, prediction, patch=8, alpha=alpha).numpy()
    assert loss.shape == (1,)
    np.testing.assert_allclose(loss[0], expected, rtol=1e-5)


def test_hybrid_loss_standardised_term_ignores_affine_changes() -> None:
    target = _images(2, 16, 3, seed=0)
    brighter = 2.0 * target + 0.3
    only_standardised = hybrid_patch_loss(target, brighter, patch=8, alpha=1.0).numpy()
    np.testing.assert_allclose(only_standardised, 0.0, atol=1e-3)
    only_raw = hybrid_patch_loss(target, brighter, patch=8, alpha=0.0).numpy()
    patches = tf.nn.space_to_depth(brighter - target, 8).numpy()
    np.testing.assert_allclose(
        only_raw, np.linalg.norm(patches, axis=-1).sum(axis=(1, 2)), rtol=1e-5
    )


def test_hybrid_loss_has_finite_gradient_at_a_perfect_reconstruction() -> None:
    target = tf.constant(_images(1, 16, 1, seed=1))
    flat = tf.Variable(tf.zeros((1, 16, 16, 1)))
    with tf.GradientTape() as tape:
        loss = hybrid_patch_loss(target, target + flat, patch=8, alpha=0.5)
    assert np.isfinite(tape.gradient(loss, flat).numpy()).all()


def test_depth_to_space_matches_tensorflow_and_round_trips_config() -> None:
    values = tf.constant(_images(2, 3, 8 * 8 * 3, seed=2))
    layer = DepthToSpace(8)
    np.testing.assert_array_equal(layer(values), tf.nn.depth_to_space(values, 8))
    assert layer.compute_output_shape((None, 3, None, 192)) == (None, 24, None, 3)
    clone = DepthToSpace.from_config(layer.get_config())
    assert clone.block_size == 8
    with pytest.raises(ValueError, match="block_size"):
        DepthToSpace(0)


@pytest.mark.parametrize("channels", [1, 3])
def test_reconstruction_and_representation_shapes(channels: int) -> None:
    model = PatchAe(_params(), channels).build()
    images = _images(2, 48, channels, seed=3)
    assert model(images).shape == (2, 48, 48, channels)
    assert encoder(model)(images).shape == (2, 6, 6, C3)
    assert model.get_layer(DECODER)(np.zeros((1, 2, 3, C3), np.float32)).shape == (
        1,
        16,
        24,
        channels,
    )


def test_each_patch_depends_only_on_its_own_vector(grey_model: keras.Model) -> None:
    decoder = grey_model.get_layer(DECODER)
    codes = np.random.default_rng(4).random((1, 4, 5, C3), dtype=np.float32)
    before = decoder(codes).numpy()
    codes[0, 2, 3] += 1.0
    after = decoder(codes).numpy()
    changed = np.abs(after - before)[0, ..., 0] > 0
    expected = np.zeros((32, 40), bool)
    expected[16:24, 24:32] = True
    assert changed[expected].any()
    np.testing.assert_array_equal(changed & ~expected, np.zeros_like(changed))


def test_frozen_backbone_only_head_trains(grey_method: PatchAe) -> None:
    model = grey_method.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=grey_method.loss())
    backbone_before = [w.numpy().copy() for w in model.get_layer("backbone").weights]
    head_before = model.get_layer("representation").get_weights()[0].copy()
    images = _images(2, 32, 1, seed=5)
    x, y = grey_method.make_pairs(tf.constant(images), tf.constant([1, 2], tf.int64))
    loss = grey_method.loss()
    before = float(tf.reduce_mean(loss(y, model(x))))
    for _ in range(5):
        model.train_on_batch(x, y)
    after = float(tf.reduce_mean(loss(y, model(x))))
    assert np.isfinite(after)
    assert after < before
    for before, weight in zip(backbone_before, model.get_layer("backbone").weights, strict=True):
        np.testing.assert_array_equal(weight.numpy(), before)
    assert not np.array_equal(model.get_layer("representation").get_weights()[0], head_before)
    trainable = _params(freeze_backbone=False)
    assert PatchAe(trainable, 1).build().get_layer("backbone").trainable


def test_fine_tuned_backbone_keeps_batch_norm_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    def tiny_backbone(name: str, weights: str | None, channels: int) -> keras.Model:
        images = keras.Input((None, None, channels))
        fine = keras.layers.Conv2D(4, 8, strides=8, name="conv")(images)
        fine = keras.layers.BatchNormalization(name="bn")(fine)
        coarse = keras.layers.AveragePooling2D(2)(fine)
        return keras.Model(images, [fine, coarse], name="backbone")

    monkeypatch.setattr(patch_ae, "build_backbone", tiny_backbone)
    backbone = PatchAe(_params(freeze_backbone=False), 1).build().get_layer("backbone")
    assert backbone.get_layer("conv").trainable
    assert not backbone.get_layer("bn").trainable


def test_make_pairs_targets_the_corrupted_input(grey_method: PatchAe) -> None:
    clean = tf.constant(_images(3, 32, 1, seed=6))
    x, y = grey_method.make_pairs(clean, tf.constant([5, 6], tf.int64))
    np.testing.assert_array_equal(x.numpy(), y.numpy())
    always = CorruptionConfig(cutpaste=CutPasteConfig(probability=1.0))
    forced = PatchAe(_params().model_copy(update={"corruption": always}), 1)
    x, _ = forced.make_pairs(clean, tf.constant([5, 6], tf.int64))
    assert not np.array_equal(x.numpy(), clean.numpy())


def test_image_size_must_be_a_multiple_of_16(grey_method: PatchAe) -> None:
    grey_method.check_image_size(48)
    with pytest.raises(ConfigError, match=r"dataset\.image_size: .*multiple of 16.*got 40"):
        grey_method.check_image_size(40)


def test_registry_finds_patch_ae() -> None:
    assert method_class("patch_ae") is PatchAe


def test_memory_bank_and_detector(
    grey_method: PatchAe, grey_model: keras.Model, tmp_path: Path
) -> None:
    train = _images(3, 32, 1, seed=7)
    grey_method.after_training(grey_model, train, tmp_path)
    bank = load_bank(tmp_path / MEMORY_BANK_FILE)
    features = encoder(grey_model)(train).numpy()
    np.testing.assert_allclose(bank, features.reshape(-1, C3), rtol=1e-6)

    detector = grey_method.load_detector(grey_model, tmp_path)
    assert detector.map_names == ("knn",)
    normal = detector.anomaly_maps(train)["knn"]
    assert normal.shape == (3, 32, 32)
    np.testing.assert_allclose(normal, 0.0, atol=1e-3)

    test = _images(2, 32, 1, seed=8)
    test[1, 8:16, 8:16] = 1.0
    maps = detector.anomaly_maps(test)["knn"]
    test_features = encoder(grey_model)(test).numpy().reshape(-1, C3)
    nearest = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(bank)
    grid = nearest.kneighbors(test_features)[0].reshape(2, 4, 4, 1)
    upsampled = tf.image.resize(grid, (32, 32), method="bilinear").numpy()[..., 0]
    expected = ndimage.gaussian_filter(upsampled, sigma=(0, 4.0, 4.0))
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(detector.image_scores(maps), expected.max(axis=(1, 2)), rtol=1e-4)


def test_coreset_bank_is_smaller(grey_model: keras.Model, tmp_path: Path) -> None:
    method = PatchAe(_params(coreset_fraction=0.25, coreset_projection=2), 1)
    method.after_training(grey_model, _images(2, 32, 1, seed=9), tmp_path)
    assert load_bank(tmp_path / MEMORY_BANK_FILE).shape == (8, C3)


def test_saved_model_reloads_with_the_same_outputs(grey_model: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    grey_model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    images = _images(1, 32, 1, seed=10)
    np.testing.assert_allclose(loaded(images), grey_model(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoder(loaded)(images), encoder(grey_model)(images), rtol=1e-5)
