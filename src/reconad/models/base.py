"""The small interface through which a method family plugs into the shared stages.

``train.py`` builds the family's network, runs its training phases (random crops turned
into (input, target) pairs by :meth:`Method.make_pairs`) and lets the family fit any
further state (:meth:`Method.after_training`: a memory bank, an ensemble's member
scales). A training-free family has no phases. ``models.load_trained`` rebuilds a
:class:`Detector` from a model directory; calibration, evaluation, reporting and
``predict`` only ever see its maps and image scores.

Every family sees the prepared images through its ``input`` settings (size and colour):
:func:`adapt_images` converts them, and :class:`AdaptedDetector` returns maps at the size
of the images it was given, so all families are calibrated and evaluated alike.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import keras
import numpy as np
import tensorflow as tf

from reconad import paths
from reconad.config import FitConfig, InputConfig, Params, Section
from reconad.errors import ConfigError

if TYPE_CHECKING:
    from reconad.data.layout import CategoryData

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
AS_PREPARED = InputConfig(size=None, color="auto")


@dataclass(frozen=True)
class Scores:
    """A detector's output for a batch: every map and its image scores."""

    maps: dict[str, np.ndarray]
    """``{map name: (N, H, W) float32}``."""
    image_scores: dict[str, np.ndarray]
    """``{map name: (N,) float32}``."""


class Detector(Protocol):
    """A trained model ready to score images."""

    map_names: tuple[str, ...]
    """Names of the maps :meth:`score` returns; the first is the primary one."""

    def score(self, images: np.ndarray) -> Scores:
        """Anomaly maps and image scores.

        Args:
            images: float32 ``(N, H, W, C)`` in [0, 1].

        Returns:
            For every name in ``map_names``: ``(N, H, W)`` maps, ``(N,)`` image scores.
        """
        ...


class MapScoredDetector(abc.ABC):
    """A detector whose image score is a function of each map alone (max, norm, ...)."""

    map_names: tuple[str, ...]

    @abc.abstractmethod
    def anomaly_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``{name: (N, H, W) float32}`` for every name in ``map_names``."""

    @abc.abstractmethod
    def image_scores(self, maps: np.ndarray) -> np.ndarray:
        """One score per image ``(N,)`` from maps ``(N, H, W)``."""

    def score(self, images: np.ndarray) -> Scores:
        maps = self.anomaly_maps(images)
        return Scores(maps, {name: self.image_scores(m) for name, m in maps.items()})


class Method(abc.ABC):
    """A detector family (SDC-AE, AESc, Patch AE, PatchCore, ensembles, ...).

    Args:
        params: the params of one variant (its overrides and the profile applied).
        variant: that variant's name.
        prepared_channels: channels of the prepared images (1 grey, 3 RGB).
    """

    family: ClassVar[str]
    Config: ClassVar[type[Section]]
    """Schema of the family's params block (``params.family(family)``)."""
    models_root: ClassVar[Path] = paths.MODELS_DIR
    """Where the family's variants are saved (``<root>/<variant>/<category>``)."""

    def __init__(self, params: Params, variant: str, prepared_channels: int) -> None:
        self.params = params
        self.variant = variant
        self.config = params.family(self.family)
        self.channels = family_channels(self.input_settings(), prepared_channels)
        """Channels of the images the family's network sees."""
        self.image_size = self.input_settings().size_for(params.dataset.image_size)
        """Side of the images the family's network sees."""

    def input_settings(self) -> InputConfig:
        """What the family's network sees (the family block's ``input``, if it has one)."""
        return AS_PREPARED

    @abc.abstractmethod
    def build(self) -> keras.Model | None:
        """The network, input ``(None, None, channels)``; None when there is none."""

    def after_training(self, model: keras.Model | None, data: CategoryData, out_dir: Path) -> None:
        """Fit state beyond the weights (e.g. a memory bank) and save it in ``out_dir``.

        ``data`` holds the images as the family sees them (:func:`adapt_images`).
        """
        del model, data, out_dir

    @abc.abstractmethod
    def load_detector(self, model: keras.Model | None, model_dir: Path) -> Detector:
        """A detector for the trained ``model`` saved in ``model_dir``."""

    def check_image_size(self, size: int) -> None:
        """Raise ConfigError when the network cannot take ``size`` x ``size`` images."""
        del size


class TrainedMethod(Method):
    """A family whose network learns by gradient steps on corrupted training crops."""

    def input_settings(self) -> InputConfig:
        return self.config.input

    def fit_config(self) -> FitConfig:
        """Batch, learning rate, phases: the family block's ``train``."""
        return self.config.train

    @abc.abstractmethod
    def build(self) -> keras.Model:
        """The network, input ``(None, None, channels)``."""

    def initialise(self, model: keras.Model, data: CategoryData) -> None:
        """Set the weights of the freshly built ``model`` that depend on the training
        images, before its first step; a resumed run loads its checkpoint over them."""
        del model, data

    @abc.abstractmethod
    def make_pairs(self, clean: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Turn a batch of clean crops into one training example.

        Runs inside ``tf.data.Dataset.map``: pure TensorFlow, stateless random ops only.

        Args:
            clean: float32 ``(B, h, w, C)`` in [0, 1]; ``B`` may be unknown.
            seed: int64 ``(2,)`` seed for ``tf.random.stateless_*``; the same seed
                gives the same pair.

        Returns:
            ``(x, y)``: the network input and the target passed to :meth:`loss`.
        """

    @abc.abstractmethod
    def loss(self) -> LossFn:
        """``loss(y_true, y_pred)`` where ``y_true`` is the target of :meth:`make_pairs`."""

    @abc.abstractmethod
    def synthetic_defects(self, clean: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The family's training corruption as defects to find: ``(images, masks)``.

        Args:
            clean: float32 ``(B, H, W, C)`` in [0, 1].
            seed: int64 ``(2,)`` stateless seed.

        Returns:
            The corrupted images ``(B, H, W, C)`` and where they changed, ``(B, H, W, 1)``
            in [0, 1] (:mod:`reconad.synthetic` scores the maps against it).
        """

    def check_image_size(self, size: int) -> None:
        for index, phase in enumerate(self.fit_config().phases):
            if phase.crop > size:
                raise ConfigError(
                    f"{self.family}.train.phases[{index}].crop: {phase.crop} exceeds the "
                    f"image size {size}"
                )


def family_channels(config: InputConfig, prepared_channels: int) -> int:
    """Channels a family's network sees: 1 for ``grey``, 3 for ``rgb``, else as prepared."""
    return {"grey": 1, "rgb": 3}.get(config.color, prepared_channels)


def adapt_images(images: np.ndarray | tf.Tensor, size: int, channels: int) -> tf.Tensor:
    """Prepared images ``(N, H, W, C)`` as a family sees them: ``(N, size, size, channels)``.

    Colour is converted first (ITU-R 601 luma, as ``tf.image.rgb_to_grayscale``); a
    smaller size uses area averaging, a larger one bilinear interpolation.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape[-1] == 3 and channels == 1:
        images = tf.image.rgb_to_grayscale(images)
    elif images.shape[-1] == 1 and channels == 3:
        images = tf.repeat(images, 3, axis=-1)
    if tuple(images.shape[1:3]) == (size, size):
        return images
    method = "area" if images.shape[1] > size else "bilinear"
    return tf.clip_by_value(tf.image.resize(images, (size, size), method=method), 0.0, 1.0)


def resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Maps ``(N, h, w)`` resized to ``shape`` (bilinear), float32."""
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:3] == tuple(shape):
        return maps
    resized = tf.image.resize(maps[..., None], shape, method="bilinear")
    return resized.numpy()[..., 0]


class AdaptedDetector:
    """A family's detector run on images of any size and colour; maps come back at the
    size of the images given, so every family is calibrated and evaluated alike."""

    def __init__(self, inner: Detector, size: int, channels: int) -> None:
        self.inner = inner
        self.size = size
        self.channels = channels
        self.map_names = inner.map_names

    def score(self, images: np.ndarray) -> Scores:
        """Image scores at the family's size; maps at the size of ``images``."""
        adapted = adapt_images(images, self.size, self.channels).numpy()
        scores = self.inner.score(adapted)
        maps = {name: resize_maps(m, images.shape[1:3]) for name, m in scores.maps.items()}
        return Scores(maps, scores.image_scores)


def batched_predict(
    fn: Callable[[tf.Tensor], tf.Tensor], images: np.ndarray, batch: int
) -> np.ndarray:
    """Apply ``fn`` to ``images`` in batches so memory stays bounded."""
    outputs = [
        np.asarray(fn(tf.convert_to_tensor(images[start : start + batch])))
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(outputs, axis=0) if outputs else np.zeros((0,), np.float32)


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer inside ``model``: nested models' layers and the sublayers of custom
    layers too (the BatchNorms inside an ``SdcBlock``), which ``model.layers`` does not
    list. Keras has no public call for this; ``_flatten_layers`` is what its own
    ``summary`` and weight tracking walk."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def precise_batch_norm(model: keras.Model, images: np.ndarray, batch_size: int) -> None:
    """Set every BatchNorm's moving statistics to their mean over the full-size training
    images ("precise BN", fvcore's ``update_bn_stats``).

    Statistics gathered on small crops (progressive training) do not fit whole images,
    and an exponential average of the last few hundred steps lags the weights. Batch k
    (from 1) is folded in with momentum (k - 1) / k, which leaves each moving statistic
    the plain mean over all batches. No weight changes; dropout is active, as in training.
    """
    trainable_norms = [
        layer
        for layer in all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not trainable_norms:
        return
    momenta = [layer.momentum for layer in trainable_norms]
    try:
        for count, start in enumerate(range(0, len(images), batch_size), start=1):
            for layer in trainable_norms:
                layer.momentum = (count - 1) / count
            model(tf.convert_to_tensor(images[start : start + batch_size]), training=True)
    finally:
        for layer, momentum in zip(trainable_norms, momenta, strict=True):
            layer.momentum = momentum
