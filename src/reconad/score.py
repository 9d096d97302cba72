"""Scoring many images with a detector, in chunks, with progress on a terminal.

Calibrate, evaluate and predict score through :func:`score_images`; hundreds of test
images take minutes on a CPU, so a progress bar shows when stdout is a terminal and
stays out of CI logs and DVC's captured output otherwise.
"""

from __future__ import annotations

import sys

import keras
import numpy as np

from reconad.errors import DataError
from reconad.models.base import Detector, Scores

CHUNK = 32
"""Images per detector call: bounds memory, and the step of the progress bar."""


def score_images(
    detector: Detector, images: np.ndarray, label: str = "scoring", progress: bool | None = None
) -> Scores:
    """All of the detector's maps and their image scores for ``images`` (N, H, W, C).

    Args:
        detector: a loaded detector.
        images: float32 ``(N, H, W, C)`` in [0, 1].
        label: what the progress bar says it does.
        progress: show a progress bar; None: when stdout is a terminal.
    """
    if images.ndim != 4:
        raise DataError(f"expected a batch of images (N, H, W, C), got shape {images.shape}")
    images = images.astype(np.float32, copy=False)
    show = sys.stdout.isatty() if progress is None else progress
    bar = keras.utils.Progbar(len(images), unit_name="image", verbose=1) if show else None
    if bar is not None:
        print(label, flush=True)
    parts = []
    for start in range(0, len(images), CHUNK):
        parts.append(detector.score(images[start : start + CHUNK]))
        if bar is not None:
            bar.update(min(start + CHUNK, len(images)))
    if not parts:
        return detector.score(images)
    return Scores(
        {name: np.concatenate([p.maps[name] for p in parts]) for name in parts[0].maps},
        {name: np.concatenate([p.image_scores[name] for p in parts]) for name in parts[0].maps},
    )
