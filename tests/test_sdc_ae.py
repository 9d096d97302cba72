"""SDC-AE networks, custom layers and the Method plugged into the shared trainer."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from reconad.config import (
    CorruptionConfig,
    DatasetConfig,
    ElasticConfig,
    LossConfig,
    Params,
    Phase,
    ScoreConfig,
    SdcAeConfig,
    SdcScoreConfig,
)
from reconad.errors import ConfigError
from reconad.maps import box_smooth
from reconad.models import method_class
from reconad.models.layers import ConvexCombination, SdcBlock
from reconad.models.sdc_ae import SdcAe, build_sdc_ae

TINY = SdcAeConfig(width=0.0625, sdc_blocks=1, dilations=[1, 2], sdc_kernel=3)


def _params(**sections: object) -> Params:
    defaults = {
        "dataset": DatasetConfig(categories=["texture"], image_size=32),
        "sdc_ae": TINY,
        "score": ScoreConfig(batch_size=2),
    }
    return Params(**{**defaults, **sections})


def _images(count: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).random((count, size, size, channels))
    return ndimage.gaussian_filter(noise, sigma=(0, 1, 1, 0)).astype(np.float32)


# ---------------------------------------------------------------------------- layers


def test_sdc_block_shape_weights_and_config_round_trip() -> None:
    block = SdcBlock(4, dilations=(1, 2, 4), kernel_size=3)
    outputs = block(np.zeros((2, 16, 16, 5), np.float32))
    assert outputs.shape == (2, 16, 16, 12)
    # 3 branches 3x3x5x4, fuse 3x3x12x12, two BatchNorms over 12 channels (4 weights each)
    assert block.count_params() == 3 * 9 * 5 * 4 + 9 * 12 * 12 + 2 * 4 * 12
    clone = SdcBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    assert block.compute_output_shape((None, None, None, 5)) == (None, None, None, 12)


def test_sdc_block_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dilations"):
        SdcBlock(4, dilations=())


def test_convex_combination_lies_between_its_inputs() -> None:
    rng = np.random.default_rng(0)
    decoder = rng.normal(size=(2, 8, 8, 6)).astype(np.float32)
    skip = rng.normal(size=(2, 8, 8, 6)).astype(np.float32)
    layer = ConvexCombination(kernel_size=3)
    layer.build([decoder.shape, skip.shape])
    layer.kernel.assign(rng.normal(scale=3.0, size=layer.kernel.shape))
    layer.bias.assign(rng.normal(size=layer.bias.shape))
    merged = layer([decoder, skip]).numpy()
    low, high = np.minimum(decoder, skip), np.maximum(decoder, skip)
    assert (merged >= low - 1e-6).all() and (merged <= high + 1e-6).all()
    assert not np.allclose(merged, decoder) and not np.allclose(merged, skip)
    assert ConvexCombination.from_config(layer.get_config()).kernel_size == 3


def test_convex_combination_needs_equal_channels() -> None:
    with pytest.raises(ValueError, match="same known number of channels"):
        ConvexCombination()([np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4, 5))])


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize("architecture", ["model1", "model2"])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes_for_sizes_multiple_of_8(architecture: str, channels: int) -> None:
    model = build_sdc_ae(TINY.model_copy(update={"architecture": architecture}), channels)
    assert model.name == f"sdc_ae_{architecture}"
    for size in (32, 64, 96):
        outputs = model(np.zeros((1, size, size, channels), np.float32))
        assert outputs.shape == (1, size, size, channels)
        assert outputs.dtype == "float32"
        assert float(np.min(outputs)) >= 0.0 and float(np.max(outputs)) <= 1.0


def test_last_layer_is_a_sigmoid_conv_without_batch_norm() -> None:
    model = build_sdc_ae(TINY, 1)
    last = model.layers[-1]
    assert isinstance(last, keras.layers.Conv2D) and last.kernel_size == (1, 1)
    assert last.activation is keras.activations.sigmoid
    assert not isinstance(model.layers[-2], keras.layers.BatchNormalization)
    assert model.output is last.output


def test_model2_adds_one_convex_combination_per_stage() -> None:
    model1 = build_sdc_ae(TINY, 1)
    model2 = build_sdc_ae(TINY.model_copy(update={"architecture": "model2"}), 1)
    gates = [layer for layer in model2.layers if isinstance(layer, ConvexCombination)]
    assert len(gates) == 3
    assert not any(isinstance(layer, ConvexCombination) for layer in model1.layers)
    assert sum(isinstance(layer, SdcBlock) for layer in model1.layers) == 1


def _paper_parameter_count(channels: int, architecture: str = "model1") -> int:
    """Model I/II at width 1.0 from v2 Table 1, counted by hand (convs without bias)."""
    total, inputs = 0, channels
    batch_norm = 4  # gamma, beta, moving mean, moving variance per channel
    for filters in (64, 128, 256):
        total += 9 * inputs * filters + 9 * filters * filters + 2 * batch_norm * filters
        inputs = filters
    for _ in range(4):
        stacked = 6 * 64
        total += 6 * 25 * inputs * 64 + 9 * stacked * stacked + 2 * batch_norm * stacked
        inputs = stacked
    for filters in (256, 128, 64):
        total += 9 * inputs * filters + 2 * 9 * filters * filters + 3 * batch_norm * filters
        if architecture == "model2":
            total += 2 * filters * filters + filters
        inputs = filters
    return total + inputs * channels + channels


@pytest.mark.parametrize("architecture", ["model1", "model2"])
def test_paper_scale_parameter_count(architecture: str) -> None:
    model = build_sdc_ae(SdcAeConfig(width=1.0, architecture=architecture), 3)
    count = model.count_params()
    print(f"SDC-AE {architecture} width 1.0, RGB: {count:,} parameters")
    assert count == _paper_parameter_count(3, architecture)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = build_sdc_ae(TINY.model_copy(update={"architecture": "model2"}), 3)
    images = _images(2, 32, 3)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())


# ---------------------------------------------------------------------------- method


def test_method_is_registered() -> None:
    assert method_class("sdc_ae") is SdcAe
    assert SdcAe.family == "sdc_ae"


def test_make_pairs_packs_clean_mask_and_input() -> None:
    method = SdcAe(_params(), channels=3)
    clean = tf.constant(_images(2, 32, 3))
    x, y = method.make_pairs(clean, tf.constant([1, 2], tf.int64))
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, 32, 32, 9)
    np.testing.assert_array_equal(y[..., :3], clean)
    np.testing.assert_array_equal(y[..., 6:], x)
    mask = y[..., 3:6].numpy()
    assert mask.min() >= 0.0 and mask.max() <= 1.0 and mask.max() > 0.0


def test_loss_schedule_and_image_size_checks() -> None:
    schedule = [Phase(crop=16, epochs=1), Phase(crop=32, epochs=2)]
    params = _params(
        sdc_ae=TINY.model_copy(update={"schedule": schedule}),
        loss=LossConfig(objective="contrast", lambda_=0.7),
    )
    method = SdcAe(params, channels=1)
    assert method.loss().__name__ == "contrast_loss"
    assert method.schedule() == schedule
    method.check_image_size(128)
    with pytest.raises(ConfigError, match=r"dataset\.image_size.*multiple of 8"):
        method.check_image_size(100)
    odd_crop = TINY.model_copy(update={"schedule": [Phase(crop=20, epochs=1)]})
    with pytest.raises(ConfigError, match=r"sdc_ae\.schedule\[0\]\.crop"):
        SdcAe(_params(sdc_ae=odd_crop), channels=1).check_image_size(32)


@pytest.mark.parametrize("smoothing", ["gaussian", "anomap", "none"])
def test_detector_maps_are_smoothed_squared_errors(smoothing: str) -> None:
    score = SdcScoreConfig(smoothing=smoothing, sigma=1.5, box_size=3, box_passes=2)
    method = SdcAe(_params(score=ScoreConfig(batch_size=2, sdc_ae=score)), channels=3)
    model = method.build()
    detector = method.load_detector(model, Path("unused"))
    images = _images(3, 32, 3)
    maps = detector.anomaly_maps(images)
    assert detector.map_names == ("residual",) and set(maps) == {"residual"}
    raw = np.mean((images - model.predict(images, verbose=0)) ** 2, axis=-1)
    expected = {
        "gaussian": np.stack([ndimage.gaussian_filter(m, 1.5, mode="reflect") for m in raw]),
        "anomap": box_smooth(raw, 3, 2),
        "none": raw,
    }[smoothing]
    assert maps["residual"].shape == (3, 32, 32) and maps["residual"].dtype == np.float32
    np.testing.assert_allclose(maps["residual"], expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(detector.image_scores(maps["residual"]), expected.max(axis=(1, 2)))


def test_detector_top_q_image_score_and_empty_input() -> None:
    score = SdcScoreConfig(smoothing="none", image_score="top_q_mean", top_q=0.5)
    method = SdcAe(_params(score=ScoreConfig(batch_size=2, sdc_ae=score)), channels=1)
    detector = method.load_detector(method.build(), Path("unused"))
    maps = np.stack([np.arange(16, dtype=np.float32).reshape(4, 4)])
    np.testing.assert_allclose(detector.image_scores(maps), [np.arange(8, 16).mean()])
    empty = detector.anomaly_maps(np.zeros((0, 32, 32, 1), np.float32))
    assert empty["residual"].shape == (0, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["restore", "contrast"])
def test_two_training_steps_on_corrupted_crops_give_finite_losses(objective: str) -> None:
    corruption = CorruptionConfig(elastic=ElasticConfig(modes=["elastic", "zeros", "swap"]))
    params = _params(loss=LossConfig(objective=objective), corruption=corruption)
    method = SdcAe(params, channels=1)
    model = method.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=method.loss())
    dataset = tf.data.Dataset.from_tensor_slices(_images(4, 32, 1)).batch(2).enumerate()
    dataset = dataset.map(lambda index, clean: method.make_pairs(clean, tf.stack([index, 5])))
    history = model.fit(dataset, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
