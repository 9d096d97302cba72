"""SDC-AE networks, custom layers and the Method plugged into the shared trainer."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from scipy import ndimage

from reconad.config import Params, Phase, apply_overrides, params_from_dict
from reconad.corrupt.elastic import ElasticOp
from reconad.errors import ConfigError, ReconadError
from reconad.maps import box_smooth
from reconad.models import method_class
from reconad.models.base import Scores
from reconad.models.layers import ConvexCombination, SdcBlock
from reconad.models.sdc_ae import (
    Config,
    NetworkConfig,
    SdcAe,
    SdcDetector,
    build_sdc_ae,
    smooth_residual,
)
from reconad.pixel_stats import STATS_FILE, fit_pixel_stats, load_pixel_stats

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
TINY = {
    "dataset.image_size": 32,
    "sdc_ae.network.width": 0.0625,
    "sdc_ae.network.sdc_blocks": 1,
    "sdc_ae.network.dilations": [1, 2],
    "sdc_ae.network.sdc_kernel": 3,
    "sdc_ae.train.phases": [{"crop": 32, "epochs": 1}],
    "score.batch_size": 2,
}


def _raw() -> dict:
    return yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))


def _params(overrides: dict[str, object] | None = None, variant: str | None = None) -> Params:
    """The repository's params with the tiny SDC-AE of ``TINY`` and dotted ``overrides``."""
    raw = apply_overrides(_raw(), {**TINY, **(overrides or {})}, "test", None)
    return params_from_dict(raw, variant)


def _method(
    overrides: dict[str, object] | None = None, channels: int = 1, variant: str = "sdc_restore"
) -> SdcAe:
    return SdcAe(_params(overrides, variant), variant, channels)


def _network(**fields: object) -> NetworkConfig:
    return _params().family("sdc_ae").network.model_copy(update=fields)


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
    model = build_sdc_ae(_network(architecture=architecture), channels)
    assert model.name == f"sdc_ae_{architecture}"
    for size in (32, 64, 96):
        outputs = model(np.zeros((1, size, size, channels), np.float32))
        assert outputs.shape == (1, size, size, channels)
        assert outputs.dtype == "float32"
        assert float(np.min(outputs)) >= 0.0 and float(np.max(outputs)) <= 1.0


def test_last_layer_is_a_sigmoid_conv_without_batch_norm() -> None:
    model = build_sdc_ae(_network(), 1)
    last = model.layers[-1]
    assert isinstance(last, keras.layers.Conv2D) and last.kernel_size == (1, 1)
    assert last.activation is keras.activations.sigmoid
    assert not isinstance(model.layers[-2], keras.layers.BatchNormalization)
    assert model.output is last.output


def test_model2_adds_one_convex_combination_per_stage() -> None:
    model1 = build_sdc_ae(_network(), 1)
    model2 = build_sdc_ae(_network(architecture="model2"), 1)
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
    """The repository's network under the ``paper`` profile is v2 Table 1."""
    raw = _raw()
    raw["profile"] = "paper"
    network = params_from_dict(raw).family("sdc_ae").network
    assert (network.width, network.dilations) == (1.0, [1, 2, 4, 8, 16, 32])
    model = build_sdc_ae(network.model_copy(update={"architecture": architecture}), 3)
    count = model.count_params()
    print(f"SDC-AE {architecture} width 1.0, RGB: {count:,} parameters")
    assert count == _paper_parameter_count(3, architecture)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = build_sdc_ae(_network(architecture="model2"), 3)
    images = _images(2, 32, 3)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())


# ---------------------------------------------------------------------------- method


def test_method_is_registered() -> None:
    assert method_class("sdc_ae") is SdcAe
    assert SdcAe.family == "sdc_ae" and SdcAe.Config is Config


def test_method_reads_its_family_block_and_input() -> None:
    method = _method(channels=3)
    assert method.variant == "sdc_restore"
    assert method.config is method.params.family("sdc_ae")
    assert method.config.loss.objective == "restore"
    assert (method.channels, method.image_size) == (3, 32)
    assert method.fit_config() is method.config.train
    grey = _method({"sdc_ae.input.color": "grey", "sdc_ae.input.size": 64}, channels=3)
    assert (grey.channels, grey.image_size) == (1, 64)
    assert grey.build().input_shape == (None, None, None, 1)


def test_make_pairs_packs_clean_mask_and_input() -> None:
    method = _method(channels=3)
    clean = tf.constant(_images(2, 32, 3))
    x, y = method.make_pairs(clean, tf.constant([1, 2], tf.int64))
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, 32, 32, 9)
    np.testing.assert_array_equal(y[..., :3], clean)
    np.testing.assert_array_equal(y[..., 6:], x)
    mask = y[..., 3:6].numpy()
    assert mask.min() >= 0.0 and mask.max() <= 1.0 and mask.max() > 0.0


def test_make_pairs_corrupts_at_the_pixel_scale_of_the_network_input() -> None:
    """The ``*_px`` corruption sizes are rescaled to ``image_size`` (256 px reference)."""
    overrides = {
        "sdc_ae.corruption.patches_min": 1,
        "sdc_ae.corruption.patches_max": 1,
        "sdc_ae.corruption.size_min_px": 64.0,
        "sdc_ae.corruption.size_max_px": 64.0,
    }
    method = _method(overrides)
    op = ElasticOp.at_size(method.config.corruption, method.image_size)
    assert op.size_min == op.size_max == 8.0  # 64 px at 256 is 8 px at 32
    _, y = method.make_pairs(tf.constant(_images(4, 32, 1)), tf.constant([3, 4], tf.int64))
    for mask in y[..., 1].numpy():
        rows, cols = np.nonzero(mask)
        assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8


def test_loss_phases_and_image_size_checks() -> None:
    phases = [{"crop": 16, "epochs": 1}, {"crop": 32, "epochs": 2}]
    overrides = {
        "sdc_ae.train.phases": phases,
        "loss.objective": "contrast",
        "loss.lambda": 0.7,
    }
    method = SdcAe(_params(overrides), "sdc_contrast_0.7", 1)
    assert method.loss().__name__ == "contrast_loss"
    assert method.config.loss.lambda_ == 0.7
    assert method.fit_config().phases == [Phase(crop=16, epochs=1), Phase(crop=32, epochs=2)]
    method.check_image_size(128)
    with pytest.raises(ConfigError, match=r"sdc_ae\.input\.size\b.*multiple of 8.*got 100"):
        method.check_image_size(100)
    with pytest.raises(ConfigError, match=r"sdc_ae\.train\.phases\[1\]\.crop: 32 exceeds"):
        method.check_image_size(24)
    odd_crop = _method({"sdc_ae.train.phases": [{"crop": 20, "epochs": 1}]})
    with pytest.raises(ConfigError, match=r"sdc_ae\.train\.phases\[0\]\.crop: .*multiple of 8"):
        odd_crop.check_image_size(32)


def test_variants_set_the_objective() -> None:
    assert _method(variant="sdc_restore").loss().__name__ == "restore_loss"
    contrast = _method(variant="sdc_contrast")
    assert contrast.loss().__name__ == "contrast_loss"
    assert contrast.config.loss.lambda_ == 0.99
    assert contrast.fit_config().patience == 6


def test_config_errors_name_the_key_as_written() -> None:
    with pytest.raises(ConfigError, match=r"(^|: )sdc_ae\.network\.width: "):
        _params({"sdc_ae.network.width": 0.0}).family("sdc_ae")
    with pytest.raises(ConfigError, match=r"(^|: )loss\.lambda: "):
        _params({"loss.lambda": 1.5}).family("sdc_ae")


def _score_overrides(**score: object) -> dict[str, object]:
    return {f"sdc_ae.score.{key}": value for key, value in score.items()}


@pytest.mark.parametrize("smoothing", ["gaussian", "anomap", "none"])
def test_detector_maps_are_smoothed_squared_errors(smoothing: str) -> None:
    # sigma 1.5 px and a 3 px box at 32 px: 12 and 24 px at the 256 px reference
    score = _score_overrides(smoothing=smoothing, sigma_px=12.0, box_size_px=24.0, box_passes=2)
    method = _method(score, channels=3)
    model = method.build()
    detector = method.load_detector(model, Path("unused"))
    assert isinstance(detector, SdcDetector)
    images = _images(3, 32, 3)
    scores = detector.score(images)
    assert isinstance(scores, Scores)
    assert detector.map_names == ("residual",) and set(scores.maps) == {"residual"}
    assert set(scores.image_scores) == {"residual"}
    raw = np.mean((images - model.predict(images, verbose=0)) ** 2, axis=-1)
    expected = {
        "gaussian": np.stack([ndimage.gaussian_filter(m, 1.5, mode="reflect") for m in raw]),
        "anomap": box_smooth(raw, 3, 2),
        "none": raw,
    }[smoothing]
    maps = scores.maps["residual"]
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(detector.anomaly_maps(images)["residual"], maps)
    np.testing.assert_allclose(scores.image_scores["residual"], expected.max(axis=(1, 2)))
    assert scores.image_scores["residual"].shape == (3,)


def test_smoothing_sizes_scale_with_the_image_side() -> None:
    score = (
        _params()
        .family("sdc_ae")
        .score.model_copy(update={"sigma_px": 8.0, "box_size_px": 16.0, "box_passes": 1})
    )
    maps = _images(2, 64, 1)[..., 0]
    for size, sigma in ((256, 8.0), (64, 2.0), (32, 1.0)):
        np.testing.assert_allclose(
            smooth_residual(maps, score, size),
            ndimage.gaussian_filter(maps, (0, sigma, sigma), mode="reflect"),
            rtol=1e-5,
            atol=1e-7,
        )
    anomap = score.model_copy(update={"smoothing": "anomap"})
    np.testing.assert_allclose(smooth_residual(maps, anomap, 64), box_smooth(maps, 4, 1))
    np.testing.assert_allclose(smooth_residual(maps, anomap, 8), box_smooth(maps, 1, 1))


def test_detector_top_q_image_score_and_empty_input() -> None:
    score = _score_overrides(smoothing="none", image_score="top_q_mean", top_q=0.5)
    method = _method(score)
    detector = method.load_detector(method.build(), Path("unused"))
    maps = np.stack([np.arange(16, dtype=np.float32).reshape(4, 4)])
    np.testing.assert_allclose(detector.image_scores(maps), [np.arange(8, 16).mean()])
    empty = detector.score(np.zeros((0, 32, 32, 1), np.float32))
    assert empty.maps["residual"].shape == (0, 32, 32)
    assert empty.image_scores["residual"].shape == (0,)


def test_pixel_normalised_maps_are_standard_scores_over_the_training_normals(
    tmp_path: Path,
) -> None:
    score = _score_overrides(normalise="pixel", std_floor=0.5, stats_sigma_px=[0.0])
    method = _method(score)
    model = method.build()
    train = _images(5, 32, 1, seed=1)
    data = SimpleNamespace(train=train)
    method.after_training(model, data, tmp_path)
    assert (tmp_path / STATS_FILE).is_file()
    plain = _method(_score_overrides(normalise="none")).load_detector(model, tmp_path)
    normal = plain.anomaly_maps(train)["residual"]
    std = normal.astype(np.float64).std(axis=0)
    images = _images(2, 32, 1, seed=2)
    expected = (plain.anomaly_maps(images)["residual"] - normal.mean(axis=0)) / np.maximum(
        std, 0.5 * np.median(std)
    )
    scores = method.load_detector(model, tmp_path).score(images)
    np.testing.assert_allclose(scores.maps["residual"], expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        scores.image_scores["residual"], expected.max(axis=(1, 2)), rtol=1e-3
    )


def test_pixel_statistics_pool_at_widths_scaled_to_the_image(tmp_path: Path) -> None:
    method = _method(_score_overrides(normalise="pixel", stats_sigma_px=[64.0]))  # 8 px at 32
    model = method.build()
    train = _images(6, 32, 1, seed=1)
    method.after_training(model, SimpleNamespace(train=train), tmp_path)
    plain = _method(_score_overrides(normalise="none")).load_detector(model, tmp_path)
    expected = fit_pixel_stats([plain.anomaly_maps(train)["residual"]], 0.5, [8.0])
    stored = load_pixel_stats(tmp_path)
    np.testing.assert_allclose(stored.mean, expected.mean, rtol=1e-5)
    np.testing.assert_allclose(stored.scale, expected.scale, rtol=1e-5)


def test_the_paper_map_needs_no_statistics_and_pixel_maps_need_them(tmp_path: Path) -> None:
    plain = _method(_score_overrides(normalise="none"))
    plain.after_training(plain.build(), SimpleNamespace(train=_images(2, 32, 1)), tmp_path)
    assert not list(tmp_path.iterdir())
    method = _method(_score_overrides(normalise="pixel"))
    with pytest.raises(ReconadError, match=rf"{STATS_FILE}: pixel statistics missing"):
        method.load_detector(method.build(), tmp_path)


def test_profiles_choose_the_map() -> None:
    raw = _raw()
    for profile, normalise in (("quick", "none"), ("cpu", "pixel"), ("paper", "none")):
        params = params_from_dict(apply_overrides(raw, {"profile": profile}, "test", None))
        assert params.family("sdc_ae").score.normalise == normalise
    with pytest.raises(ConfigError, match=r"sdc_ae\.score\.normalise"):
        _params(_score_overrides(normalise="global")).family("sdc_ae")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["restore", "contrast"])
def test_two_training_steps_on_corrupted_crops_give_finite_losses(objective: str) -> None:
    overrides = {
        "loss.objective": objective,
        "sdc_ae.corruption.modes": ["elastic", "zeros", "swap"],
    }
    method = SdcAe(_params(overrides), f"sdc_{objective}", 1)
    model = method.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=method.loss())
    dataset = tf.data.Dataset.from_tensor_slices(_images(4, 32, 1)).batch(2).enumerate()
    dataset = dataset.map(lambda index, clean: method.make_pairs(clean, tf.stack([index, 5])))
    history = model.fit(dataset, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(("height", "width"), [(8, 8), (16, 16), (32, 32), (8, 16), (20, 12)])
def test_sdc_block_skips_only_taps_that_read_padding(height: int, width: int) -> None:
    """Same output as every branch in full, on maps smaller than the largest dilation."""
    block = SdcBlock(4, [1, 2, 4, 8, 16, 32], 5)
    inputs = tf.random.stateless_normal((2, height, width, 6), seed=(1, 2))
    block.build(inputs.shape)
    full = keras.ops.concatenate([branch(inputs) for branch in block.branches], axis=-1)
    trimmed = keras.ops.concatenate(
        [block._dilated(branch, inputs) for branch in block.branches], axis=-1
    )
    np.testing.assert_allclose(trimmed, full, atol=1e-5)
    dynamic = tf.function(block, input_signature=[tf.TensorSpec([None, None, None, 6])])
    np.testing.assert_allclose(block(inputs), dynamic(inputs), atol=1e-5)
