"""Label-free validation: how well a model's anomaly maps localise its own training
corruption, pasted into validation normals.

Choosing the length of training, early stopping or a loss weight on test figures tunes on
the test set, and validation normals hold no defects to measure with. A family's training
corruption (SDC-AE's elastic patches, AESc's stains, Patch AE's CutPaste) gives them some,
with exact masks: the pixel AUROC of the maps against those masks is a validation score
that needs no label. It measures what the model was trained to see; it is no promise about
real defects, but it moves with the quality of the maps where the validation loss does
not (the ``restore`` loss rises as reconstructions get sharper: docs/methods.md).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from reconad.data.layout import CategoryData
from reconad.errors import ConfigError
from reconad.metrics import pixel_auroc
from reconad.models.base import TrainedMethod, precise_batch_norm

METRIC = "val_synthetic_auroc"
"""The name the score is logged under, for EarlyStopping and MLflow."""
BANK_IMAGES = 32
"""Training images a memory-bank family (Patch AE) banks for the score: enough to cover a
category's normal patches, few enough to score every epoch."""
MASK_LEVEL = 0.25
"""Soft corruption masks (SDC-AE's blended patches) count as defective above this."""


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
    """Validation normals with the training corruption pasted in, and its masks."""

    images: np.ndarray
    """float32 ``(N, H, W, C)``."""
    masks: np.ndarray
    """bool ``(N, H, W)``."""


def synthetic_set(method: TrainedMethod, images: np.ndarray, seed: int) -> SyntheticSet:
    """``images`` corrupted once by the family's training corruption, with a fixed seed so
    that every epoch (and every candidate setting) is scored on the same defects."""
    corrupted, masks = method.synthetic_defects(
        tf.convert_to_tensor(images, tf.float32), tf.constant([seed, 0], tf.int64)
    )
    return SyntheticSet(np.asarray(corrupted, np.float32), np.asarray(masks)[..., 0] > MASK_LEVEL)


def localisation_auroc(
    method: TrainedMethod, model: keras.Model, data: CategoryData, synthetic: SyntheticSet
) -> float:
    """Pixel AUROC of the primary map of ``model`` on ``synthetic`` against its masks.

    The detector is built as scoring builds it, with the family's state fitted on at most
    :data:`BANK_IMAGES` of ``data``'s training images, and BatchNorm statistics recomputed
    on them as training ends (``train.precise_bn``): statistics of the small crops of a
    progressive phase do not fit the full-size images scored here. Training itself uses
    batch statistics, so this does not change how it goes on.
    """
    bank = dataclasses.replace(data, train=data.train[:BANK_IMAGES])
    fit = method.fit_config()
    if fit.precise_bn:
        precise_batch_norm(model, bank.train, fit.batch_size)
    with tempfile.TemporaryDirectory() as state:
        method.after_training(model, bank, Path(state))
        detector = method.load_detector(model, Path(state))
        maps = detector.score(synthetic.images).maps[detector.map_names[0]]
    return pixel_auroc(maps, synthetic.masks)


class SyntheticValidation(keras.callbacks.Callback):
    """Logs :data:`METRIC` at the end of every epoch, before the callbacks after it (early
    stopping) read the logs."""

    def __init__(self, method: TrainedMethod, data: CategoryData, seed: int) -> None:
        super().__init__()
        self.method = method
        self.data = data
        self.synthetic = synthetic_set(method, data.val, seed)
        if not self.synthetic.masks.any():
            raise ConfigError(
                f"{method.family}.train.monitor: 'synthetic' needs a training corruption "
                "that changes pixels, and this one changed none; use val_loss"
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs[METRIC] = localisation_auroc(self.method, self.model, self.data, self.synthetic)
