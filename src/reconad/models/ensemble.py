"""Ensembles of trained variants (Bauer et al., v2 final remark): the mean of the members'
primary anomaly maps, each standardised by its own statistics on validation normals.

Standardising first matters: a ``restore`` and a ``contrast`` model produce residuals on
different scales, and a plain mean would be the louder model's map. The statistics come
from the validation normals only, so an ensemble retrains nothing and never looks at test
labels.

Its "training" assembles it: ``ensemble.json`` names the member directories (relative, so
the project can move) and their scales. From then on it is calibrated, evaluated and
used by ``predict`` like any trained model. Ensembles are saved under ``ensembles/``: their
DVC stages depend on the members' models, which DVC can only express as the whole of
``models/`` (docs/adding-a-method.md), and a stage may not write inside its own dep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from reconad import paths
from reconad.config import Section
from reconad.data.layout import CategoryData
from reconad.errors import ReconadError
from reconad.io import atomic_write_json, read_json
from reconad.maps import IMAGE_SCORES, image_score
from reconad.models.base import Detector, MapScoredDetector, Method
from reconad.models.trained import load_trained, variant_dir

MAP_NAME = "normalised_mean"
ENSEMBLE_FILE = "ensemble.json"


class Config(Section):
    """The ``ensemble`` block: how the combined map becomes an image score."""

    image_score: Literal[IMAGE_SCORES]


@dataclass(frozen=True)
class Member:
    """One member: its detector, the map it contributes and that map's validation scale."""

    detector: Detector
    map_name: str
    mean: float
    std: float

    def standardised_map(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W): the member's map in units of its validation-normal spread."""
        raw = self.detector.score(images).maps[self.map_name]
        return ((raw - self.mean) / self.std).astype(np.float32)


class EnsembleDetector(MapScoredDetector):
    """A Detector whose single map is the mean of its members' standardised maps."""

    map_names = (MAP_NAME,)

    def __init__(self, members: list[Member], how: str) -> None:
        if len(members) < 2:
            raise ReconadError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = members
        self.how = how

    def anomaly_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
        total = sum(member.standardised_map(images) for member in self.members)
        return {MAP_NAME: (total / len(self.members)).astype(np.float32)}

    def image_scores(self, maps: np.ndarray) -> np.ndarray:
        return image_score(maps, self.how)


class Ensemble(Method):
    """The ensemble family: assembled from trained variants, nothing to train."""

    family = "ensemble"
    Config = Config
    models_root = paths.ENSEMBLES_DIR

    def build(self) -> keras.Model | None:
        return None

    def after_training(self, model: keras.Model | None, data: CategoryData, out_dir: Path) -> None:
        """Write ``ensemble.json``: each member's directory and the mean and standard
        deviation of its primary map over the validation normals."""
        del model
        members = [
            self._member_entry(name, data, Path(out_dir).parent)
            for name in self.params.variant(self.variant).members
        ]
        atomic_write_json(Path(out_dir) / ENSEMBLE_FILE, {"members": members})

    def load_detector(self, model: keras.Model | None, model_dir: Path) -> Detector:
        """Members are loaded with the ensemble's params and their own variant overrides."""
        del model
        entries = read_json(Path(model_dir) / ENSEMBLE_FILE)["members"]
        members = [
            Member(
                load_trained(
                    Path(model_dir).parent / entry["directory"],
                    self.params.for_variant(entry["variant"]),
                ).detector,
                entry["map"],
                float(entry["mean"]),
                float(entry["std"]),
            )
            for entry in entries
        ]
        return EnsembleDetector(members, self.config.image_score)

    def _member_entry(self, name: str, data: CategoryData, home: Path) -> dict:
        """Where member ``name`` is, relative to the ensemble's ``home`` folder (the one
        that holds ``model/``; the model folder itself is still a temporary sibling here),
        and its map's scale."""
        directory = variant_dir(self.params, name, data.category)
        member = load_trained(directory, self.params.for_variant(name))
        maps = member.detector.score(data.val).maps[member.primary_map]
        mean, std = float(maps.mean(dtype=np.float64)), float(maps.std(dtype=np.float64))
        if not std > 0.0:
            raise ReconadError(
                f"{directory}: map '{member.primary_map}' of member '{name}' is constant on "
                f"validation images (std {std}); it cannot be standardised"
            )
        return {
            "variant": name,
            "directory": os.path.relpath(directory, home),
            "map": member.primary_map,
            "mean": mean,
            "std": std,
        }
