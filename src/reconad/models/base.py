"""The small interface through which a method family plugs into the shared stages.

``train.py`` builds the tf.data pipeline of clean random crops and calls
:meth:`Method.make_pairs` to turn each batch into (network input, loss target);
``score.py`` loads a :class:`Detector` from a trained model directory and asks it for
anomaly maps. Calibration, evaluation, reporting and ``predict`` only ever see maps and
image scores, so a fourth method is one new module registered in ``models/__init__.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol

import keras
import numpy as np
import tensorflow as tf

from reconad.config import Params, Phase

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class Detector(Protocol):
    """A trained model ready to score images."""

    map_names: tuple[str, ...]
    """Names of the maps :meth:`anomaly_maps` returns; the first is the primary one."""

    def anomaly_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Per-pixel anomaly scores.

        Args:
            images: float32 ``(N, H, W, C)`` in [0, 1].

        Returns:
            ``{name: (N, H, W) float32}`` for every name in ``map_names``.
        """
        ...

    def image_scores(self, maps: np.ndarray) -> np.ndarray:
        """One score per image ``(N,)`` from maps ``(N, H, W)``."""
        ...


class Method(abc.ABC):
    """A reconstruction-based detector family (SDC-AE, AESc, Patch AE, ...)."""

    family: ClassVar[str]

    def __init__(self, params: Params, channels: int) -> None:
        self.params = params
        self.channels = channels

    @abc.abstractmethod
    def build(self) -> keras.Model:
        """The network, input ``(None, None, channels)`` where the family allows it."""

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
    def load_detector(self, model: keras.Model, model_dir: Path) -> Detector:
        """A detector for the trained ``model`` saved in ``model_dir``."""

    def schedule(self) -> list[Phase]:
        """Training phases (crop size, epochs); one full-size phase unless overridden."""
        return [Phase(crop=self.params.dataset.image_size, epochs=self.params.train.epochs)]

    def after_training(self, model: keras.Model, train_images: np.ndarray, out_dir: Path) -> None:
        """Fit state beyond the weights (e.g. a memory bank) and save it in ``out_dir``."""
        del model, train_images, out_dir

    def check_image_size(self, size: int) -> None:
        """Raise ConfigError when the network cannot take ``size`` x ``size`` images."""
        del size


def batched_predict(
    fn: Callable[[tf.Tensor], tf.Tensor], images: np.ndarray, batch: int
) -> np.ndarray:
    """Apply ``fn`` to ``images`` in batches so memory stays bounded."""
    outputs = [
        np.asarray(fn(tf.convert_to_tensor(images[start : start + batch])))
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(outputs, axis=0) if outputs else np.zeros((0,), np.float32)
