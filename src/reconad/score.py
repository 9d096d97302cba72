"""Load a trained model directory and turn images into anomaly maps and image scores.

A model directory (``models/<variant>/<category>``) holds ``model/`` (weights, the JSON
description written by training, and any method state such as a memory bank) and,
once calibrated, ``threshold.json``. An ensemble directory
(``ensembles/<variant>/<category>``) holds ``ensemble.json`` instead, naming its member
model directories. Calibrate, evaluate and predict all go through :func:`load_trained`,
so they score exactly the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from reconad import paths
from reconad.config import Params, ScoreConfig
from reconad.errors import DataError, ReconadError
from reconad.io import read_json
from reconad.models import Detector, method_class


@dataclass(frozen=True)
class TrainedModel:
    directory: Path
    description: dict[str, Any]
    """``image_size``, ``channels``, ``method`` and, for trained networks, ``params``."""
    params: Params
    detector: Detector

    @property
    def image_size(self) -> int:
        return int(self.description["image_size"])

    @property
    def channels(self) -> int:
        return int(self.description["channels"])

    @property
    def primary_map(self) -> str:
        return self.detector.map_names[0]

    def threshold(self) -> dict[str, Any]:
        """The calibration of this model; an error says how to produce it."""
        path = self.directory / paths.THRESHOLD_FILE
        if not path.exists():
            raise ReconadError(
                f"{path}: no calibrated threshold; run `dvc repro` (or `reconad calibrate`)"
            )
        return read_json(path)


@dataclass(frozen=True)
class Scores:
    maps: dict[str, np.ndarray]
    """``{map name: (N, H, W)}``."""
    image_scores: dict[str, np.ndarray]
    """``{map name: (N,)}``."""


def variant_model_dir(params: Params, variant: str, category: str) -> Path:
    """Where the calibrate and evaluate stages find ``variant``: its model or ensemble dir."""
    if params.variant(variant).method == "ensemble":
        return paths.ensemble_dir(variant, category)
    return paths.model_dir(variant, category)


def load_trained(model_dir: Path, score: ScoreConfig | None = None) -> TrainedModel:
    """Load ``models/<variant>/<category>`` as written by ``reconad train``, or an
    ensemble directory as written by ``reconad calibrate``.

    Args:
        model_dir: the model (or ensemble) directory.
        score: how to turn outputs into maps and scores. Calibrate and evaluate pass
            params.yaml's (``score.*`` belongs to them, not to training); ``None`` keeps
            the settings the model was calibrated with, so predict scores the same way.
    """
    model_dir = Path(model_dir)
    score = score if score is not None else calibrated_score(model_dir)
    if (model_dir / paths.ENSEMBLE_FILE).exists():
        from reconad.ensemble import load_ensemble

        return load_ensemble(model_dir, score)
    description_file = model_dir / paths.MODEL_SUBDIR / paths.MODEL_CONFIG_FILE
    if not description_file.exists():
        raise ReconadError(
            f"{model_dir}: not a trained model directory (no {paths.MODEL_SUBDIR}/"
            f"{paths.MODEL_CONFIG_FILE}); point at models/<variant>/<category>"
        )
    description = read_json(description_file)
    params = Params.model_validate(description["params"])
    if score is not None:
        params = params.model_copy(update={"score": score})
    method = method_class(description["method"])(params, int(description["channels"]))
    model = keras.saving.load_model(
        model_dir / paths.MODEL_SUBDIR / paths.MODEL_FILE, compile=False
    )
    detector = method.load_detector(model, model_dir / paths.MODEL_SUBDIR)
    return TrainedModel(model_dir, description, params, detector)


def calibrated_score(model_dir: Path) -> ScoreConfig | None:
    """The scoring settings ``threshold.json`` was calibrated with, if any."""
    path = Path(model_dir) / paths.THRESHOLD_FILE
    if not path.exists():
        return None
    saved = read_json(path).get("score")
    return ScoreConfig.model_validate(saved) if saved is not None else None


def score_images(detector: Detector, images: np.ndarray) -> Scores:
    """All of the detector's maps and their image scores for ``images`` (N, H, W, C)."""
    if images.ndim != 4:
        raise DataError(f"expected a batch of images (N, H, W, C), got shape {images.shape}")
    maps = detector.anomaly_maps(images.astype(np.float32, copy=False))
    return Scores(maps, {name: detector.image_scores(m) for name, m in maps.items()})
