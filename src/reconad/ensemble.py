"""Ensembles of trained models (Bauer et al., v2 final remark): the mean of the members'
primary anomaly maps, each standardised by its own validation-normal statistics.

Standardising first matters: a ``restore`` and a ``contrast`` model produce residuals on
different scales, and a plain mean would be the louder model's map. The statistics come
from each member's ``threshold.json`` (validation normals only), so building an
ensemble retrains nothing and never looks at test labels.

``assemble`` writes ``ensembles/<variant>/<category>/ensemble.json``; from then on the
ensemble is calibrated, evaluated and used by ``predict`` like any trained model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reconad import paths
from reconad.config import Params, ScoreConfig
from reconad.errors import ReconadError
from reconad.io import atomic_write_json, read_json
from reconad.models import Detector
from reconad.score import TrainedModel, load_trained

MAP_NAME = "normalised_mean"


@dataclass(frozen=True)
class Member:
    """One member: its detector, the map it contributes and that map's validation scale."""

    detector: Detector
    map_name: str
    mean: float
    std: float

    def standardised_map(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W): the member's map in units of its validation-normal spread."""
        raw = self.detector.anomaly_maps(images)[self.map_name]
        return ((raw - self.mean) / self.std).astype(np.float32)


class EnsembleDetector:
    """A Detector whose single map is the mean of its members' standardised maps.

    Image scores follow the first member's rule (``max`` or ``top_q_mean`` for SDC-AE),
    applied to the ensemble map.
    """

    map_names = (MAP_NAME,)

    def __init__(self, members: list[Member]) -> None:
        if len(members) < 2:
            raise ReconadError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = members

    def anomaly_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
        total = sum(member.standardised_map(images) for member in self.members)
        return {MAP_NAME: (total / len(self.members)).astype(np.float32)}

    def image_scores(self, maps: np.ndarray) -> np.ndarray:
        return self.members[0].detector.image_scores(maps)


def assemble(
    params: Params,
    variant: str,
    category: str,
    models_root: Path = paths.MODELS_DIR,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Write ``ensemble.json`` for ``variant`` on ``category`` from its calibrated members.

    Raises:
        ReconadError: a member is not trained and calibrated, or members disagree on the
            image size or channels they were trained for.
    """
    out_dir = out_dir or paths.ensemble_dir(variant, category)
    members = [
        member_entry(paths.model_dir(name, category, models_root), name, out_dir, variant)
        for name in params.variant(variant).members
    ]
    shapes = [(m["image_size"], m["channels"]) for m in members]
    if len(set(shapes)) != 1:
        trained_for = ", ".join(
            f"{m['variant']}: {m['image_size']} px x {m['channels']}" for m in members
        )
        raise ReconadError(
            f"variants.{variant}.members: trained for different image sizes or channels "
            f"({trained_for})"
        )
    description = {
        "method": "ensemble",
        "variant": variant,
        "category": category,
        "image_size": shapes[0][0],
        "channels": shapes[0][1],
        "members": members,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / paths.ENSEMBLE_FILE, description)
    return description


def member_entry(model_dir: Path, name: str, out_dir: Path, variant: str) -> dict[str, Any]:
    """What the ensemble keeps of one member: where it is, its primary map and scale."""
    threshold_file = model_dir / paths.THRESHOLD_FILE
    if not threshold_file.exists():
        raise ReconadError(
            f"{threshold_file}: member '{name}' of ensemble '{variant}' is not trained and "
            f"calibrated; list '{name}' under `run` in params.yaml and run `dvc repro`"
        )
    calibration = read_json(threshold_file)
    primary = calibration["primary"]
    stats = calibration["maps"][primary]["stats"]
    if not stats["std"] > 0.0:
        raise ReconadError(
            f"{threshold_file}: map '{primary}' is constant on validation images "
            f"(std {stats['std']}); it cannot be standardised for ensemble '{variant}'"
        )
    description = read_json(model_dir / paths.MODEL_SUBDIR / paths.MODEL_CONFIG_FILE)
    return {
        "variant": name,
        "directory": os.path.relpath(model_dir, out_dir),
        "map": primary,
        "mean": stats["mean"],
        "std": stats["std"],
        "image_size": int(description["image_size"]),
        "channels": int(description["channels"]),
    }


def load_ensemble(directory: Path, score: ScoreConfig | None) -> TrainedModel:
    """Load an ensemble directory; member paths are relative to it, so the project folder
    can move. Members score with ``score`` (the ensemble's settings), not their own."""
    description = read_json(directory / paths.ENSEMBLE_FILE)
    entries = description["members"]
    trained = [load_trained(directory / entry["directory"], score) for entry in entries]
    members = [
        Member(model.detector, entry["map"], float(entry["mean"]), float(entry["std"]))
        for model, entry in zip(trained, entries, strict=True)
    ]
    return TrainedModel(directory, description, trained[0].params, EnsembleDetector(members))
