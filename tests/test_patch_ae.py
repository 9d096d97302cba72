"""Patch AE: hybrid loss, patch-wise decoding, training pairs, memory bank and detector."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from scipy import ndimage
from scipy.spatial import distance
from sklearn.neighbors import NearestNeighbors

from reconad.config import Params, apply_overrides, params_from_dict
from reconad.data.layout import CategoryData
from reconad.errors import ConfigError
from reconad.memory_bank import MEMORY_BANK_FILE, MemoryBankDetector, load_bank, reweighted_scores
from reconad.models import backbones, method_class
from reconad.models.base import Scores
from reconad.models.patch_ae import (
    COMPRESS,
    DECODER,
    REPRESENTATION,
    SHIFT_MARGIN,
    DepthToSpace,
    PatchAe,
    PointwiseIdentity,
    encoder,
    hybrid_patch_loss,
)
from reconad.train import compiled_model

C3 = 4
REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
VARIANT = "patch_ae"
TINY = {
    "dataset.image_size": 32,
    "patch_ae.network.backbone": "vgg16",
    "patch_ae.network.weights": "random",
    "patch_ae.network.compressed_channels": C3,
    "patch_ae.network.decoder_channels": 8,
    "patch_ae.bank.coreset_fraction": 1.0,
    "patch_ae.score.reweight_neighbours": 0,
}


def _params(base: dict[str, object] = TINY, **keys: object) -> Params:
    """The repository's params with ``base`` (dotted keys) applied, then ``keys``: dotted
    keys under ``patch_ae`` (passed as ``**{"network.stride": 4}``)."""
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    overrides = {**base, **{f"patch_ae.{key}": value for key, value in keys.items()}}
    return params_from_dict(apply_overrides(raw, overrides, "test", None), VARIANT)


def _method(channels: int = 1, **keys: object) -> PatchAe:
    return PatchAe(_params(**keys), VARIANT, channels)


def _data(train: np.ndarray) -> CategoryData:
    """A category holding only ``train`` (what ``after_training`` reads)."""
    empty = np.zeros((0, *train.shape[1:]), np.float32)
    return CategoryData(
        category="grid",
        color="grey" if train.shape[-1] == 1 else "rgb",
        image_size=train.shape[1],
        train=train,
        val=empty,
        test=empty,
        test_labels=np.zeros(0, int),
        test_masks=np.zeros((0, *train.shape[1:3]), bool),
        test_names=[],
        test_defects=[],
        train_names=[f"train/good/{index:03d}.png" for index in range(len(train))],
        val_names=[],
    )


@pytest.fixture(scope="module")
def grey_method() -> PatchAe:
    return _method(1)


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
    model = _method(channels).build()
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
    backbone = model.get_layer("patch_features").get_layer("backbone")
    backbone_before = [w.numpy().copy() for w in backbone.weights]
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
    for before, weight in zip(backbone_before, backbone.weights, strict=True):
        np.testing.assert_array_equal(weight.numpy(), before)
    assert not np.array_equal(model.get_layer("representation").get_weights()[0], head_before)
    assert grey_method.config.network.freeze_backbone  # the quick profile freezes it
    trainable = _method(1, **{"network.freeze_backbone": False}).build()
    assert trainable.get_layer("patch_features").get_layer("backbone").trainable


def test_fine_tuned_backbone_keeps_batch_norm_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    def tiny_backbone(
        name: str, weights: str, channels: int, layers: list[str] | None = None
    ) -> keras.Model:
        images = keras.Input((None, None, channels))
        fine = keras.layers.Conv2D(4, 8, strides=8, name="conv")(images)
        fine = keras.layers.BatchNormalization(name="bn")(fine)
        coarse = keras.layers.AveragePooling2D(2)(fine)
        return keras.Model(images, [fine, coarse], name="backbone")

    monkeypatch.setattr(backbones, "build_backbone", tiny_backbone)
    model = _method(1, **{"network.freeze_backbone": False}).build()
    backbone = model.get_layer("patch_features").get_layer("backbone")
    assert backbone.get_layer("conv").trainable
    assert not backbone.get_layer("bn").trainable


def test_make_pairs_targets_the_corrupted_input(grey_method: PatchAe) -> None:
    clean = tf.constant(_images(3, 32, 1, seed=6))
    x, y = grey_method.make_pairs(clean, tf.constant([5, 6], tf.int64))
    np.testing.assert_array_equal(x.numpy(), y.numpy())
    forced = _method(1, **{"corruption.probability": 1.0})
    x, _ = forced.make_pairs(clean, tf.constant([5, 6], tf.int64))
    assert not np.array_equal(x.numpy(), clean.numpy())


def test_image_size_must_be_a_multiple_of_the_strides_involved(grey_method: PatchAe) -> None:
    """The default layers (VGG block3, block4) and grid (stride 8) need a multiple of 8."""
    grey_method.check_image_size(40)
    with pytest.raises(ConfigError, match=r"patch_ae\.input\.size\b.*multiple of 8.*got 44"):
        grey_method.check_image_size(44)
    coarse = _method(1, **{"network.stride": 32, "network.layers": ["block5_pool"]})
    with pytest.raises(ConfigError, match=r"multiple of 32.*got 48"):
        coarse.check_image_size(48)


def test_registry_finds_patch_ae() -> None:
    assert method_class("patch_ae") is PatchAe


def test_memory_bank_and_detector(
    grey_method: PatchAe, grey_model: keras.Model, tmp_path: Path
) -> None:
    train = _images(3, 32, 1, seed=7)
    grey_method.after_training(grey_model, _data(train), tmp_path)
    bank = load_bank(tmp_path / MEMORY_BANK_FILE)
    features = encoder(grey_model)(train).numpy()
    assert features.shape == (3, 4, 4, C3)
    np.testing.assert_allclose(bank, features.reshape(-1, C3), rtol=1e-6)

    detector = grey_method.load_detector(grey_model, tmp_path)
    assert isinstance(detector, MemoryBankDetector)
    assert detector.map_names == ("knn",)
    normal = detector.score(train)
    assert isinstance(normal, Scores)
    assert normal.maps["knn"].shape == (3, 32, 32)
    np.testing.assert_allclose(normal.maps["knn"], 0.0, atol=1e-3)
    np.testing.assert_allclose(normal.image_scores["knn"], 0.0, atol=1e-3)

    test = _images(2, 32, 1, seed=8)
    test[1, 8:16, 8:16] = 1.0
    scores = detector.score(test)
    test_features = encoder(grey_model)(test).numpy().reshape(-1, C3)
    nearest = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(bank.astype(np.float64))
    grid = nearest.kneighbors(test_features.astype(np.float64))[0].reshape(2, 4, 4, 1)
    upsampled = tf.image.resize(grid, (32, 32), method="bilinear").numpy()[..., 0]
    sigma = grey_method.config.score.sigma_px * 32 / 256  # sigma_px is at 256 px
    expected = ndimage.gaussian_filter(upsampled, sigma=(0, sigma, sigma))
    # float32 search by ||q||^2 - 2 q.b + ||b||^2: ~1e-4 absolute on these features
    np.testing.assert_allclose(scores.maps["knn"], expected, rtol=1e-3, atol=5e-4)
    # reweight_neighbours 0: the image score is the largest raw patch distance
    np.testing.assert_allclose(
        scores.image_scores["knn"], grid.max(axis=(1, 2, 3)), rtol=1e-3, atol=5e-4
    )


def test_detector_reweights_as_patchcore_by_default(
    grey_model: keras.Model, tmp_path: Path
) -> None:
    repository_scoring = {key: value for key, value in TINY.items() if "reweight" not in key}
    method = PatchAe(_params(repository_scoring), VARIANT, 1)
    neighbours = method.config.score.reweight_neighbours
    assert neighbours == 9  # the repository's setting
    train = _images(3, 32, 1, seed=7)
    method.after_training(grey_model, _data(train), tmp_path)
    bank = load_bank(tmp_path / MEMORY_BANK_FILE)
    test = _images(2, 32, 1, seed=8)
    scores = method.load_detector(grey_model, tmp_path).score(test).image_scores["knn"]
    vectors = encoder(grey_model)(test).numpy().reshape(2, 16, C3)
    distances = np.linalg.norm(vectors[:, :, None] - bank[None, None], axis=-1)
    top = distances.min(axis=2).argmax(axis=1)
    picked = np.arange(2)
    expected = reweighted_scores(
        vectors[picked, top],
        distances.min(axis=2)[picked, top],
        distances.argmin(axis=2)[picked, top],
        bank,
        neighbours,
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-4)
    assert (scores < distances.min(axis=2).max(axis=1)).all()


def test_coreset_bank_is_smaller(grey_model: keras.Model, tmp_path: Path) -> None:
    method = _method(1, **{"bank.coreset_fraction": 0.25, "bank.coreset_projection": 2})
    method.after_training(grey_model, _data(_images(2, 32, 1, seed=9)), tmp_path)
    assert load_bank(tmp_path / MEMORY_BANK_FILE).shape == (8, C3)


def test_saved_model_reloads_with_the_same_outputs(grey_model: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    grey_model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    images = _images(1, 32, 1, seed=10)
    np.testing.assert_allclose(loaded(images), grey_model(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoder(loaded)(images), encoder(grey_model)(images), rtol=1e-5)


def test_method_reads_the_patch_ae_block(grey_method: PatchAe) -> None:
    config = grey_method.config
    assert config is grey_method.params.family("patch_ae")
    assert (config.network.layers, config.network.stride, config.network.aggregate) == (
        None,
        8,
        1,
    )
    assert grey_method.channels == 1 and grey_method.image_size == 32
    assert grey_method.fit_config() is config.train
    assert _method(3).channels == 3
    assert _method(3, **{"input.color": "grey"}).channels == 1
    assert _method(1, **{"input.size": 64}).image_size == 64


@pytest.mark.parametrize(
    ("network", "grid"),
    [
        ({"network.stride": 4}, 8),
        ({"network.stride": 16, "network.layers": ["block4_conv3", "block5_conv3"]}, 2),
        ({"network.aggregate": 3}, 4),
    ],
)
def test_layers_stride_and_aggregate_are_configurable(network: dict, grid: int) -> None:
    method = _method(1, **network)
    stride = method.config.network.stride
    model = method.build()
    images = _images(2, 32, 1, seed=11)
    assert encoder(model)(images).shape == (2, grid, grid, C3)
    assert model(images).shape == (2, 32, 32, 1)
    depth_to_space = model.get_layer(DECODER).get_layer("depth_to_space")
    assert depth_to_space.block_size == stride
    x, y = method.make_pairs(tf.constant(images), tf.constant([1, 2], tf.int64))
    loss = method.loss()(y, model(x)).numpy()
    np.testing.assert_allclose(
        loss, hybrid_patch_loss(y, model(x), patch=stride, alpha=method.config.loss.alpha)
    )
    aggregating = [
        layer.name
        for layer in model.get_layer("patch_features").layers
        if layer.name.startswith("aggregate_")
    ]
    assert len(aggregating) == (2 if method.config.network.aggregate > 1 else 0)


def test_unknown_layer_names_the_patch_ae_key() -> None:
    with pytest.raises(ConfigError, match=r"patch_ae\.network\.layers: 'block9_conv1'"):
        _method(1, **{"network.layers": ["block3_conv3", "block9_conv1"]}).build()


def test_representation_layer_is_the_memory_bank_feature(grey_model: keras.Model) -> None:
    images = _images(1, 32, 1, seed=12)
    representation = grey_model.get_layer(REPRESENTATION)
    assert representation.filters == C3
    codes = encoder(grey_model)(images).numpy()
    assert (codes >= 0).all()  # ReLU
    decoded = grey_model.get_layer(DECODER)(codes).numpy()
    np.testing.assert_allclose(decoded, grey_model(images).numpy(), rtol=1e-5, atol=1e-6)


def _code_of(model: keras.Model, features: np.ndarray) -> np.ndarray:
    """The two compression layers of ``model`` applied to ``features`` (B, h, w, c1 + c2)."""
    compressed = model.get_layer(COMPRESS)(features)
    return model.get_layer(REPRESENTATION)(compressed).numpy()


def _features_of(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The backbone features the compression of ``model`` reads, one row per patch."""
    features = keras.Model(model.input, model.get_layer(COMPRESS).input)(images).numpy()
    return features.reshape(-1, features.shape[-1])


def test_orthogonal_compression_keeps_the_distances_of_the_training_features() -> None:
    """With as many channels as feature channels, the initialised code is an isometry of
    every training patch: the memory bank starts from the distances PatchCore scores."""
    keras.utils.set_random_seed(3)
    feature_channels = 256 + 512  # block3_conv3 + block4_conv3
    method = _method(1, **{"network.compressed_channels": feature_channels})
    model = method.build()
    images = _images(3, 32, 1, seed=4)
    method.initialise(model, _data(images))
    features = _features_of(model, images)
    codes = encoder(model)(images).numpy().reshape(-1, feature_channels)
    assert codes.min() > 0  # no coordinate is cut by either ReLU
    np.testing.assert_allclose(distance.pdist(codes), distance.pdist(features), rtol=1e-4)


def test_the_shift_leaves_a_margin_below_the_lowest_training_code() -> None:
    keras.utils.set_random_seed(3)
    method = _method(1)
    model = method.build()
    images = _images(4, 32, 1, seed=5)
    method.initialise(model, _data(images))
    compress = model.get_layer(COMPRESS)
    kernel, bias = (weights for weights in compress.get_weights())
    projected = _features_of(model, images) @ kernel[0, 0]
    low, high = projected.min(axis=0), projected.max(axis=0)
    np.testing.assert_allclose(low + bias, SHIFT_MARGIN * (high - low), rtol=1e-4, atol=1e-5)


def test_a_glorot_code_is_not_shifted() -> None:
    keras.utils.set_random_seed(3)
    method = _method(1, **{"network.compression_init": "glorot"})
    model = method.build()
    method.initialise(model, _data(_images(2, 32, 1, seed=5)))
    np.testing.assert_array_equal(model.get_layer(COMPRESS).get_weights()[1], np.zeros(C3))


def test_the_network_training_starts_from_has_the_shifted_code() -> None:
    """``fit_network`` builds through ``compiled_model``, which initialises from the data."""
    keras.utils.set_random_seed(3)
    method = _method(1)
    model = compiled_model(method.params, method, _data(_images(2, 32, 1, seed=5)))
    assert (model.get_layer(COMPRESS).get_weights()[1] != 0).all()


def test_second_compression_layer_starts_random_with_glorot_and_as_identity_otherwise() -> None:
    keras.utils.set_random_seed(3)
    model = _method(1, **{"network.compression_init": "glorot"}).build()
    kernel = model.get_layer(REPRESENTATION).get_weights()[0][0, 0]
    assert not np.allclose(kernel, np.eye(C3))
    keras.utils.set_random_seed(3)
    orthogonal = _method(1).build().get_layer(REPRESENTATION).get_weights()[0][0, 0]
    np.testing.assert_array_equal(orthogonal, np.eye(C3))


def test_the_second_layer_starts_as_the_identity_only_on_square_kernels() -> None:
    with pytest.raises(ValueError, match="square 1x1 kernel"):
        PointwiseIdentity()((1, 1, 6, 4))
