"""Label-free validation: how well a model's anomaly maps find synthetic defects (its
own training corruption, or a held-out kind) pasted into validation normals.

Choosing the length of training, early stopping or a loss weight on test figures tunes on
the test set, and validation normals hold no defects to measure with. A family's training
corruption (SDC-AE's elastic patches, AESc's stains, Patch AE's CutPaste) gives them some,
with exact masks. Judged as the test split is (the pixel AUROC of the maps against those
masks, and the image AUROC of corrupted against clean validation normals), they give a
validation score that needs no label. It is no promise about real defects, but it moves
with the quality of the maps where the validation loss does not (the ``restore`` loss
rises as reconstructions get sharper: docs/methods.md).

Scored on its own training corruption, an objective that learns to amplify that
corruption (SDC-AE's ``contrast``) grades itself; ``train.synthetic_defects`` then pastes
defects it never saw (AESc's stains, scratches and drops) instead.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from reconad.corrupt.stain import corrupt
from reconad.data.layout import CategoryData
from reconad.errors import ConfigError
from reconad.metrics import image_auroc, pixel_auroc
from reconad.models.base import TrainedMethod, precise_batch_norm

METRIC = "val_synthetic_auroc"
"""The name the score is logged under, for EarlyStopping and MLflow."""
BANK_IMAGES = 32
"""Training images a memory-bank family (Patch AE) banks for the score: enough to cover a
category's normal patches, few enough to score every epoch."""
MONITOR_IMAGES = 32
"""Validation normals the per-epoch monitor scores, clean and with defects pasted in: the
first of them, as :data:`BANK_IMAGES`. Enough for a steady AUROC, and an epoch's cost that
does not grow with the dataset (the 114 validation normals of a 760-image category took
Patch AE's epochs to 4.5 min on two cores; docs/quality.md)."""
MASK_LEVEL = 0.25
"""Soft corruption masks (SDC-AE's blended patches) count as defective above this."""


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
    """Validation normals with synthetic defects pasted in, and their masks."""

    images: np.ndarray
    """float32 ``(N, H, W, C)``."""
    masks: np.ndarray
    """bool ``(N, H, W)``."""


def synthetic_set(
    method: TrainedMethod, images: np.ndarray, seed: int, defects: str | None = None
) -> SyntheticSet:
    """``images`` corrupted once, with a fixed seed so that every epoch (and every
    candidate setting) is scored on the same defects.

    ``defects``: ``training`` (the family's own corruption) or one of AESc's corruption
    models; None takes the family's ``train.synthetic_defects``.
    """
    kind = defects or method.fit_config().synthetic_defects
    clean = tf.convert_to_tensor(images, tf.float32)
    key = tf.constant([seed, 0], tf.int64)
    if kind == "training":
        corrupted, masks = method.synthetic_defects(clean, key)
    else:
        corrupted, masks = corrupt(clean, key, kind)
    masks = tf.cast(masks, tf.float32)
    return SyntheticSet(np.asarray(corrupted, np.float32), np.asarray(masks)[..., 0] > MASK_LEVEL)


@dataclasses.dataclass(frozen=True)
class SyntheticScore:
    """How a model's maps find the synthetic defects, as the test split is judged."""

    pixel_auroc: float
    """Of the primary map on the corrupted images against their masks."""
    image_auroc: float
    """Of the primary image score: corrupted images against the clean validation normals
    they were made from. A model can localise pasted defects well and still score clean
    images as high (``contrast`` at lambda 0.9 on brick: docs/methods.md)."""

    @property
    def mean(self) -> float:
        """What early stopping and a label-free choice of a setting compare."""
        return (self.pixel_auroc + self.image_auroc) / 2.0


def synthetic_score(
    method: TrainedMethod, model: keras.Model, data: CategoryData, synthetic: SyntheticSet
) -> SyntheticScore:
    """Pixel and image AUROC of ``model`` on ``synthetic`` and on ``data``'s validation
    normals (those ``synthetic`` was made from).

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
        name = detector.map_names[0]
        corrupted = detector.score(synthetic.images)
        clean = detector.score(data.val).image_scores[name]
    defective = synthetic.masks.any(axis=(1, 2))
    labels = np.concatenate([np.ones(int(defective.sum())), np.zeros(len(clean))])
    scores = np.concatenate([corrupted.image_scores[name][defective], clean])
    return SyntheticScore(
        pixel_auroc(corrupted.maps[name], synthetic.masks), image_auroc(scores, labels)
    )


class SyntheticValidation(keras.callbacks.Callback):
    """Logs :data:`METRIC` at the end of every epoch, before the callbacks after it (early
    stopping) read the logs."""

    def __init__(self, method: TrainedMethod, data: CategoryData, seed: int) -> None:
        super().__init__()
        self.method = method
        self.data = dataclasses.replace(data, val=data.val[:MONITOR_IMAGES])
        self.synthetic = synthetic_set(method, self.data.val, seed)
        if not self.synthetic.masks.any():
            raise ConfigError(
                f"{method.family}.train.monitor: 'synthetic' needs defects that change "
                "pixels, and these changed none; use val_loss or another "
                f"{method.family}.train.synthetic_defects"
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            score = synthetic_score(self.method, self.model, self.data, self.synthetic)
            logs[METRIC] = score.mean
            logs[f"{METRIC}_pixel"] = score.pixel_auroc
            logs[f"{METRIC}_image"] = score.image_auroc
