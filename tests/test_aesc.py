"""AESc / AE: network shape and skips, batched MC-dropout, detector, method contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from reconad.config import Params, apply_overrides, params_from_dict
from reconad.corrupt.stain import CORRUPTION_MODELS
from reconad.errors import ConfigError
from reconad.maps import gaussian_smooth
from reconad.models import method_class
from reconad.models.aesc import (
    Aesc,
    AescDetector,
    AescNetwork,
    Config,
    McDropout,
    ScoreConfig,
    build_network,
    mc_predict,
    p_norm_scores,
)
from reconad.models.base import Scores
from reconad.models.layers import UpsamplingConv2D

FILTERS = [4, 4, 8, 8, 8, 8]
RATES = [0.0, 0.0, 0.1, 0.2, 0.3, 0.4]
PASSES = 6
VARIANT = "aesc_stain"
REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _params(
    network: dict | None = None, score: dict | None = None, size: int = 64, **keys: object
) -> Params:
    """The repository's params, variant ``aesc_stain``, with a tiny AESc at ``size`` px;
    ``network`` and ``score`` hold keys of ``aesc.network`` / ``aesc.score``, ``keys`` other
    dotted keys under ``aesc``."""
    overrides = {
        "dataset.image_size": size,
        "score.batch_size": 2,
        "aesc.network.filters": FILTERS,
        "aesc.network.width": 1.0,
        **{f"aesc.network.{key}": value for key, value in (network or {}).items()},
        **{f"aesc.score.{key}": value for key, value in (score or {}).items()},
        **{f"aesc.{key}": value for key, value in keys.items()},
    }
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    return params_from_dict(apply_overrides(raw, overrides, "test", None), VARIANT)


def _method(params: Params, channels: int = 1) -> Aesc:
    return Aesc(params, VARIANT, channels)


def _score_config(**fields: object) -> ScoreConfig:
    """``aesc.score`` of the repository's params.yaml, ``fields`` applied."""
    base = _params().family("aesc").score
    return ScoreConfig.model_validate({**base.model_dump(), **fields})


def _images(count: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((count, size, size, channels), dtype=np.float32)


def _with_random_statistics(model: keras.Model, seed: int) -> keras.Model:
    """Give every batch normalisation non-trivial moving statistics, as after training."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                    rng.normal(0.0, 0.2, beta.shape).astype(np.float32),
                    rng.normal(0.0, 0.3, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 2.0, var.shape).astype(np.float32),
                ]
            )
    return model


@pytest.fixture(scope="module")
def aesc_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return _with_random_statistics(build_network(1, FILTERS, 5, RATES, True, seed=7), 1)


@pytest.fixture(scope="module")
def network(aesc_model: keras.Model) -> AescNetwork:
    return AescNetwork(aesc_model)


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes_for_any_multiple_of_64(channels: int) -> None:
    model = _method(_params(), channels).build()
    assert model.input_shape == (None, None, None, channels)
    for size in (64, 128):
        out = model(_images(2, size, channels), training=False)
        assert out.shape == (2, size, size, channels)
        assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0


def test_paper_widths_give_a_4x4x512_latent_at_256() -> None:
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    raw["profile"] = "paper"
    paper = params_from_dict(raw, VARIANT)  # the repository's network at the paper's scale
    assert paper.family("aesc").network.filters == [16, 32, 64, 128, 256, 512]
    model = _method(paper).build()
    encoder = keras.Model(model.input, model.get_layer("enc5_drop").output)
    assert encoder(_images(1, 256, 1)).shape == (1, 4, 4, 512)
    quick = _method(_params({"filters": [16, 32, 64, 128, 256, 512], "width": 0.25})).build()
    widths = [quick.get_layer(f"enc{d}_conv").filters for d in range(6)]
    assert widths == [4, 8, 16, 32, 64, 128]
    assert quick.get_layer("dec0_conv").filters == 4 and quick.get_layer("output").filters == 1


def test_image_size_must_be_a_multiple_of_64() -> None:
    method = _method(_params())
    with pytest.raises(
        ConfigError, match=r"aesc\.input\.size\b.*AESc needs a multiple of 64 \(got 100\)"
    ):
        method.check_image_size(100)
    method.check_image_size(128)
    method_class("aesc")(
        _params({"filters": [4, 4, 4], "dropout": [0, 0, 0.1]}), VARIANT, 1
    ).check_image_size(40)
    cropped = _method(_params(**{"train.phases": [{"crop": 96, "epochs": 1}]}))
    with pytest.raises(ConfigError, match=r"aesc\.train\.phases\[0\]\.crop: AESc needs a multiple"):
        cropped.check_image_size(128)
    with pytest.raises(ConfigError, match=r"aesc\.train\.phases\[0\]\.crop: 96 exceeds"):
        cropped.check_image_size(64)


def test_aesc_adds_five_skips_and_ae_none() -> None:
    def adds(skips: bool) -> list[str]:
        model = _method(_params({"skips": skips})).build()
        return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]

    assert adds(True) == [f"dec{d}_skip" for d in (4, 3, 2, 1, 0)]
    assert adds(False) == []


def test_skips_carry_input_detail_to_the_output() -> None:
    """Perturbing one input pixel changes the AE output only through the bottleneck; the
    AESc output also through the full-resolution skip, so far more strongly nearby."""
    x = _images(1, 64, 1)
    bumped = x.copy()
    bumped[0, 30, 30, 0] += 0.5
    change = {}
    for skips in (True, False):
        keras.utils.set_random_seed(5)
        model = build_network(1, FILTERS, 5, [0.0] * 6, skips, seed=0)
        change[skips] = float(np.abs(model(bumped) - model(x)).sum())
    assert change[True] > 2 * change[False]


@pytest.mark.parametrize(
    ("kernel_size", "height", "width"), [(1, 4, 4), (3, 5, 7), (5, 6, 10), (7, 9, 3)]
)
def test_upsampling_conv_is_upsampling_then_conv(kernel_size: int, height: int, width: int) -> None:
    """Same outputs and gradients as the two layers it replaces, same weights."""
    rng = np.random.default_rng(kernel_size)
    x = tf.constant(rng.random((2, height, width, 3), dtype=np.float32))
    fused = UpsamplingConv2D(4, kernel_size, activation="sigmoid")
    plain = keras.layers.Conv2D(4, kernel_size, padding="same", activation="sigmoid")
    fused.build(x.shape)
    plain.build((2, 2 * height, 2 * width, 3))
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in plain.get_weights()]
    fused.set_weights(weights)
    plain.set_weights(weights)

    def outputs_and_gradients(run: Any, layer: keras.layers.Layer) -> list[np.ndarray]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = run(x)
            ramp = tf.reshape(tf.range(tf.size(y), dtype=tf.float32), tf.shape(y))
            loss = tf.reduce_sum(y * ramp / 1e3)
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    expected = outputs_and_gradients(
        lambda images: plain(keras.layers.UpSampling2D(2)(images)), plain
    )
    got = outputs_and_gradients(fused, fused)
    assert got[0].shape == (2, 2 * height, 2 * width, 4)
    assert fused.compute_output_shape((None, height, None, 3)) == (None, 2 * height, None, 4)
    for value, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [{"kernel_size": 4}, {"strides": 2}, {"padding": "valid"}, {"dilation_rate": 2}]
)
def test_upsampling_conv_rejects_what_it_cannot_compute(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Expected an odd square kernel"):
        UpsamplingConv2D(4, **{"kernel_size": 3, **kwargs})


def test_upsampling_conv_config_round_trips() -> None:
    layer = UpsamplingConv2D(4, 5, use_bias=False, name="dec0_conv")
    clone = UpsamplingConv2D.from_config(layer.get_config())
    assert (clone.filters, clone.kernel_size, clone.use_bias, clone.name) == (
        4,
        (5, 5),
        False,
        "dec0_conv",
    )


def _legacy_network(channels: int, filters: list[int], dropout: list[float]) -> keras.Model:
    """AESc as saved before UpsamplingConv2D: ``dec{d}_up`` / ``out_up`` layers of their own."""
    images = keras.Input((None, None, channels), name="image")
    x, encoded = images, []
    for d, width in enumerate(filters):
        x = keras.layers.Conv2D(width, 5, strides=2, padding="same", name=f"enc{d}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"enc{d}_bn")(x)
        x = keras.layers.LeakyReLU(name=f"enc{d}_act")(x)
        x = McDropout(dropout[d], d, name=f"enc{d}_drop")(x)
        encoded.append(x)
    for d in reversed(range(len(filters) - 1)):
        x = keras.layers.UpSampling2D(2, name=f"dec{d}_up")(x)
        x = keras.layers.Conv2D(filters[d], 5, padding="same", name=f"dec{d}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"dec{d}_bn")(x)
        x = keras.layers.LeakyReLU(name=f"dec{d}_act")(x)
        x = McDropout(dropout[d], 10 + d, name=f"dec{d}_drop")(x)
        x = keras.layers.Add(name=f"dec{d}_skip")([x, encoded[d]])
    x = keras.layers.UpSampling2D(2, name="out_up")(x)
    outputs = keras.layers.Conv2D(channels, 5, padding="same", name="output")(x)
    return keras.Model(images, outputs)


def test_models_saved_before_the_upsampling_conv_still_run_their_passes() -> None:
    """A shipped model of an earlier version keeps its MC-dropout scoring."""
    model = _legacy_network(1, [4, 8, 8], [0.0, 0.2, 0.2])
    network = AescNetwork(model)
    images = tf.constant(_images(2, 32, 1))
    np.testing.assert_allclose(
        network.forward(images, None), model(images, training=False), rtol=1e-5, atol=1e-6
    )


def test_split_follows_the_first_positive_dropout(network: AescNetwork) -> None:
    assert network.depth == 6 and network.skips and network.stochastic
    assert network.split == 2


def test_head_uses_inference_batch_norm(aesc_model: keras.Model, network: AescNetwork) -> None:
    x = tf.constant(_images(3, 64, 1))
    split_output = network.forward(x, None)
    np.testing.assert_allclose(split_output, aesc_model(x, training=False), atol=1e-6)
    keras.utils.set_random_seed(0)
    batch_statistics = aesc_model(x, training=True)
    assert float(tf.reduce_max(tf.abs(batch_statistics - split_output))) > 1e-2


def test_batched_passes_equal_naive_full_passes(network: AescNetwork) -> None:
    x = tf.constant(_images(2, 64, 1, seed=1))
    seed = tf.constant([4, 2], tf.int64)
    mean, variance = mc_predict(network, x, PASSES, seed)
    pass_seeds = tf.random.experimental.stateless_split(seed, PASSES)
    naive = np.stack([network.forward(x, pass_seeds[t : t + 1]).numpy() for t in range(PASSES)])
    np.testing.assert_allclose(mean, naive.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(variance, naive.var(axis=0), atol=1e-6)
    assert float(tf.reduce_mean(variance)) > 1e-7
    assert np.all(np.abs(naive[0] - naive[1]).max() > 1e-3)


def test_chunked_passes_give_the_same_statistics(network: AescNetwork) -> None:
    x = _images(2, 64, 1, seed=2)
    mean, variance = mc_predict(network, x, PASSES, (1, 2))
    chunk_mean, chunk_variance = mc_predict(network, x, PASSES, (1, 2), passes_per_call=4)
    np.testing.assert_allclose(chunk_mean, mean, atol=1e-6)
    np.testing.assert_allclose(chunk_variance, variance, atol=1e-7)
    _, other = mc_predict(network, x, PASSES, (1, 3))
    assert float(tf.reduce_max(tf.abs(other - variance))) > 1e-6


def test_stem_runs_once_on_the_images_and_head_once_on_all_passes(
    aesc_model: keras.Model,
) -> None:
    spied = AescNetwork(aesc_model)
    calls: dict[str, list[tuple[int, ...]]] = {"stem": [], "head": []}
    run_stem, run_head = spied.run_stem, spied.run_head

    def stem(images: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
        calls["stem"].append(tuple(images.shape))
        return run_stem(images)

    def head(skips: list[tf.Tensor], top: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        calls["head"].append(tuple(top.shape))
        return run_head(skips, top, seeds)

    spied.run_stem, spied.run_head = stem, head
    mean, _ = mc_predict(spied, _images(3, 64, 1), 30, (0, 1))
    assert calls == {"stem": [(3, 64, 64, 1)], "head": [(3, 8, 8, 8)]}
    assert mean.shape == (3, 64, 64, 1)
    stem_graph = run_stem.get_concrete_function(tf.TensorSpec([None, 64, 64, 1], tf.float32)).graph
    convolutions = [op for op in stem_graph.get_operations() if op.type == "Conv2D"]
    assert len(convolutions) == 3


def test_no_dropout_means_zero_variance() -> None:
    model = build_network(1, FILTERS, 5, [0.0] * 6, True, seed=0)
    x = _images(2, 64, 1)
    mean, variance = mc_predict(model, x, 30, (0, 0))
    assert np.all(variance.numpy() == 0.0)
    np.testing.assert_allclose(mean, model(x, training=False), atol=1e-6)


def test_dropout_layer_config_and_training_behaviour() -> None:
    layer = McDropout(0.25, seed=3, name="d")
    clone = McDropout.from_config(layer.get_config())
    assert (clone.rate, clone.seed, clone.name) == (0.25, 3, "d")
    ones = tf.ones([4, 16, 16, 8])
    np.testing.assert_array_equal(layer(ones), ones)
    dropped = layer(ones, training=True).numpy()
    np.testing.assert_allclose(np.unique(dropped), [0.0, 1.0 / 0.75], rtol=1e-6)
    assert abs(np.mean(dropped == 0.0) - 0.25) < 0.03
    sampled = layer.sample(ones, tf.constant([[1, 2], [3, 4]], tf.int64)).numpy()
    assert abs(np.mean(sampled == 0.0) - 0.25) < 0.03
    assert np.any(sampled[:2] != sampled[2:])
    with pytest.raises(ValueError, match="rate"):
        McDropout(1.0)


def test_save_and_load_keep_the_split(aesc_model: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    aesc_model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = _images(2, 64, 1)
    np.testing.assert_allclose(loaded(x, training=False), aesc_model(x, training=False), atol=1e-6)
    restored = AescNetwork(loaded)
    assert (restored.split, restored.skips, restored.depth) == (2, True, 6)
    before = mc_predict(aesc_model, x, PASSES, (5, 5))
    after = mc_predict(restored, x, PASSES, (5, 5))
    for ours, theirs in zip(before, after, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_p_norm_scores() -> None:
    maps = _images(4, 8, 1)[..., 0]
    np.testing.assert_allclose(
        p_norm_scores(maps, 2.0), np.linalg.norm(maps.reshape(4, -1), axis=1), rtol=1e-6
    )
    np.testing.assert_allclose(p_norm_scores(maps, 1.0), maps.sum(axis=(1, 2)), rtol=1e-6)
    with pytest.raises(ValueError, match="p > 0"):
        p_norm_scores(maps, 0.0)


def test_detector_maps_and_scores(aesc_model: keras.Model) -> None:
    method = _method(
        _params(score={"map": "uncertainty", "sigma_px": 0.0, "p": 2.0, "mc_passes": 4})
    )
    detector = method.load_detector(aesc_model, Path("unused"))
    assert detector.map_names == ("uncertainty", "residual")
    images = _images(3, 64, 1)
    scored = detector.score(images)
    assert isinstance(scored, Scores) and list(scored.image_scores) == list(detector.map_names)
    maps = scored.maps
    for name in detector.map_names:
        np.testing.assert_allclose(scored.image_scores[name], p_norm_scores(maps[name], 2.0))
    assert list(maps) == ["uncertainty", "residual"]
    assert all(m.shape == (3, 64, 64) and m.dtype == np.float32 for m in maps.values())
    residual = np.abs(images - aesc_model(images, training=False).numpy()).mean(axis=-1)
    np.testing.assert_allclose(maps["residual"], residual, atol=1e-6)
    _, variance = mc_predict(aesc_model, images[2:], 4, (method.params.seed, 2), passes_per_call=2)
    np.testing.assert_allclose(maps["uncertainty"][2], variance.numpy()[0].mean(-1), atol=1e-7)
    scores = detector.image_scores(maps["residual"])
    np.testing.assert_allclose(scores, np.sqrt((residual**2).sum(axis=(1, 2))), rtol=1e-5)


def test_detector_without_dropout_has_only_the_residual() -> None:
    model = build_network(1, FILTERS, 5, [0.0] * 6, False, seed=0)
    detector = AescDetector(AescNetwork(model), _score_config(map="residual"), 64, 2, 0)
    assert detector.map_names == ("residual",)
    scores = detector.score(_images(2, 64, 1))
    assert list(scores.maps) == ["residual"] and scores.image_scores["residual"].shape == (2,)
    with pytest.raises(ConfigError, match=r"aesc\.score\.map: 'uncertainty' needs"):
        AescDetector(AescNetwork(model), _score_config(map="uncertainty"), 64, 2, 0)


@pytest.mark.parametrize(("sigma_px", "image_size", "sigma"), [(4.0, 256, 4.0), (4.0, 64, 1.0)])
def test_maps_are_smoothed_by_sigma_scaled_to_the_image_size(
    aesc_model: keras.Model, sigma_px: float, image_size: int, sigma: float
) -> None:
    network = AescNetwork(aesc_model)
    config = _score_config(map="residual", mc_passes=2)
    raw = AescDetector(network, config.model_copy(update={"sigma_px": 0.0}), image_size, 2, 0)
    smooth = AescDetector(
        network, config.model_copy(update={"sigma_px": sigma_px}), image_size, 2, 0
    )
    images = _images(2, 64, 1)
    raw_maps, smooth_maps = raw.anomaly_maps(images), smooth.anomaly_maps(images)
    for name in ("residual", "uncertainty"):
        expected = gaussian_smooth(raw_maps[name], sigma)
        np.testing.assert_allclose(smooth_maps[name], expected, rtol=1e-5, atol=1e-7)
        assert smooth_maps[name].std() < raw_maps[name].std()


def test_pairs_in_tf_data_and_their_loss() -> None:
    method = _method(_params())
    assert method.config.corruption.model == "stain"  # set by the variant
    clean = _images(5, 64, 1)
    seeds = tf.data.Dataset.random(seed=3).batch(2)
    batches = tf.data.Dataset.from_tensor_slices(clean).batch(2)
    pairs = tf.data.Dataset.zip(batches, seeds).map(method.make_pairs)
    x, y = next(iter(pairs))
    np.testing.assert_array_equal(y, clean[:2])
    changed = np.any(x.numpy() != clean[:2], axis=(1, 2, 3))
    assert changed.all()
    loss = method.loss()(y, x)
    np.testing.assert_allclose(loss, np.mean((x.numpy() - clean[:2]) ** 2), rtol=1e-5)


@pytest.mark.slow
def test_one_training_step_with_the_shared_trainer_settings() -> None:
    method = _method(_params())
    seeds = tf.data.Dataset.random(seed=3).batch(2)
    batches = tf.data.Dataset.from_tensor_slices(_images(4, 64, 1)).batch(2)
    pairs = tf.data.Dataset.zip(batches, seeds).map(method.make_pairs)
    model = method.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=method.loss())
    history = model.fit(pairs, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


def test_method_reads_the_aesc_block() -> None:
    method = _method(_params(), channels=3)
    assert method_class("aesc") is Aesc and Aesc.Config is Config
    assert method.config is method.params.family("aesc")
    assert method.fit_config() is method.config.train
    assert method.image_size == 64
    assert method.channels == 3  # input.color auto: as prepared
    grey = _method(_params(**{"input.color": "grey", "input.size": 128}), channels=3)
    assert (grey.channels, grey.image_size) == (1, 128)
    assert grey.build().input_shape == (None, None, None, 1)


def test_variants_choose_skips_and_corruption() -> None:
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    plain = params_from_dict(raw, "ae_stain").family("aesc")
    assert plain.network.skips is False and plain.corruption.model == "stain"
    assert params_from_dict(raw, "aesc_none").family("aesc").corruption.model == "none"


def test_corruption_models_are_validated_with_the_key() -> None:
    assert set(CORRUPTION_MODELS) == {"stain", "scratch", "drops", "gaussian"} | {
        "mix1",
        "mix2",
        "none",
    }
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    for model in CORRUPTION_MODELS:
        chosen = apply_overrides(raw, {"aesc.corruption.model": model}, "test", None)
        assert params_from_dict(chosen).family("aesc").corruption.model == model
    blur = apply_overrides(raw, {"aesc.corruption.model": "blur"}, "test", None)
    with pytest.raises(ConfigError, match=r"(^|: )aesc\.corruption\.model: "):
        params_from_dict(blur).family("aesc")
    with pytest.raises(ConfigError, match=r"aesc\.network\.dropout: needs one rate per depth"):
        _params({"dropout": [0.0, 0.1]}).family("aesc")
