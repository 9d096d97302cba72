"""A trained model directory, loaded as a :class:`~reconad.models.base.Detector`.

``<root>/<variant>/<category>/`` holds ``model/`` (the JSON description written by
training, the network if the family has one, and family state such as a memory bank)
and, once calibrated, ``threshold.json``. Calibrate, evaluate and predict all load
through :func:`load_trained`, keyed by the family named in the description, so they
score exactly the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from reconad import paths
from reconad.config import Params
from reconad.errors import ReconadError
from reconad.io import read_json
from reconad.models import method_class
from reconad.models.base import AdaptedDetector, Detector


@dataclass(frozen=True)
class TrainedModel:
    directory: Path
    description: dict[str, Any]
    """``method``, ``image_size`` and ``channels`` the network sees, the training params."""
    params: Params
    """The params it scores with."""
    detector: Detector

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


def variant_dir(params: Params, variant: str, category: str) -> Path:
    """Where ``variant`` of ``category`` is saved: ``<family root>/<variant>/<category>``."""
    family = method_class(params.variant(variant).method)
    return paths.model_dir(variant, category, family.models_root)


def load_trained(model_dir: Path, params: Params | None = None) -> TrainedModel:
    """Load a model directory written by ``reconad train``.

    Args:
        model_dir: ``<root>/<variant>/<category>``.
        params: the params to score with. Calibrate and evaluate pass params.yaml's
            (scoring settings belong to them, not to training); None takes the params the
            model was calibrated with, so ``predict`` scores as evaluation did.
    """
    model_dir = Path(model_dir)
    description_file = model_dir / paths.MODEL_SUBDIR / paths.MODEL_CONFIG_FILE
    if not description_file.exists():
        raise ReconadError(
            f"{model_dir}: not a trained model directory (no {paths.MODEL_SUBDIR}/"
            f"{paths.MODEL_CONFIG_FILE}); point at models/<variant>/<category>"
        )
    description = read_json(description_file)
    params = params if params is not None else calibrated_params(model_dir)
    channels = int(description["channels"])
    prepared_channels = 1 if description["color"] == "grey" else 3
    method = method_class(description["method"])(params, description["variant"], prepared_channels)
    network_file = model_dir / paths.MODEL_SUBDIR / paths.MODEL_FILE
    model = keras.saving.load_model(network_file, compile=False) if network_file.exists() else None
    inner = method.load_detector(model, model_dir / paths.MODEL_SUBDIR)
    detector = AdaptedDetector(inner, int(description["image_size"]), channels)
    return TrainedModel(model_dir, description, params, detector)


def calibrated_params(model_dir: Path) -> Params:
    """The params ``threshold.json`` was calibrated with."""
    path = Path(model_dir) / paths.THRESHOLD_FILE
    if not path.exists():
        raise ReconadError(
            f"{path}: no calibrated threshold; run `dvc repro` (or `reconad calibrate`)"
        )
    return Params.model_validate(read_json(path)["params"])
