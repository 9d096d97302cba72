"""Smoke run of the paper profile: every family at the papers' sizes, on the CPU, in minutes.

A paper-profile run is meant for a GPU and takes hours, so whatever stops a family at
those sizes (a crop or image size the network cannot take, a shape mismatch between
layers, a corruption that fails at 512 px, a non-finite loss, a memory bank that cannot
be built or scored) should stop it here, before the hours are spent. Each network of
the repository's params.yaml (``_variants``) goes through the pipeline's own code
(``reconad.train``): built under the profile's dtype policy, trained two steps at each
phase's crop on pairs from its own corruption fed by the training input pipeline, precise
BN where it is on, its state fitted (``after_training``) and one batch scored at the prepared size.

Only two things differ from what a GPU user runs, both forced by this machine:

- ImageNet weights (Patch AE, PatchCore) become ``random``: there is no internet here to
  download them, and the untrained topology has the same shapes and cost.
- The training batch is 2 instead of the families' 8, to keep the file within minutes on
  two cores. Batch size changes no shape a layer sees.

Widths, dilations, image sizes, crops, backbones and the dtype policy are the profile's.
The file runs in minutes only because the paper profile trains in float32: under
``mixed_float16`` a training step on this CPU is about 100 times slower (float16
convolution gradients have no fast CPU kernels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import yaml

from pipeline_fixtures import normals_only
from reconad.config import Params, apply_overrides, params_from_dict
from reconad.data import orientation
from reconad.data.layout import CategoryData
from reconad.data.pipeline import training_dataset
from reconad.models.base import AdaptedDetector, TrainedMethod, precise_batch_norm
from reconad.runtime import dtype_policy
from reconad.synthetic import METRIC, SyntheticValidation
from reconad.train import as_seen_by, compiled_model, make_method

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
PROFILE = "paper"
BATCH_SIZE = 2
TRAIN_STEPS = 2
PREPARED_CHANNELS = 3  # RGB: the larger input of the two a prepared category can have
TRAIN_IMAGES = 2  # enough for the crops and a memory bank; sizes stay the paper's
SCORED_IMAGES = 2


def _repo_raw() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))


def _variants() -> list[str]:
    """One variant per network a family builds at the paper's sizes: each family's first,
    and every other variant that changes its network (``sdc_model2``, ``ae_stain``).
    Variants that change only the loss or the corruption (``sdc_contrast``, ``aesc_none``)
    build the same layers; the fast tests run their losses and corruptions. The ensemble
    trains nothing and only combines members tested here."""
    chosen: list[str] = []
    families: set[str] = set()
    for name, spec in _repo_raw()["variants"].items():
        family = spec["method"]
        changes_network = any(".network." in key for key in spec.get("set", {}))
        if family != "ensemble" and (family not in families or changes_network):
            chosen.append(name)
            families.add(family)
    return chosen


def _paper_params(variant: str) -> Params:
    """``variant`` in the paper profile, with ImageNet weights replaced by random ones (no
    download offline) and the training batch reduced (CPU memory); nothing else changed."""
    raw = apply_overrides(_repo_raw(), {"profile": PROFILE}, "test", None)
    profile = params_from_dict(raw, variant)
    family = profile.variant(variant).method
    block = profile.raw()[family]
    overrides: dict[str, Any] = {}
    if "train" in block:
        overrides[f"{family}.train.batch_size"] = BATCH_SIZE
    if block.get("network", {}).get("weights") == "imagenet":
        overrides[f"{family}.network.weights"] = "random"
    return params_from_dict(apply_overrides(raw, overrides, "test", None), variant)


def _images(count: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, size, size, PREPARED_CHANNELS), np.float32)


def _category(train: np.ndarray, val: np.ndarray) -> CategoryData:
    """A prepared category holding only normal training and validation images."""
    return normals_only(train, val=val)


def _train_every_phase(
    model: keras.Model, method: TrainedMethod, data: CategoryData, params: Params
) -> None:
    """Two steps per phase on the batches ``fit_phases`` would draw: random crops of the
    phase's size (0: the family's whole input), corrupted by the family's ``make_pairs``."""
    fit = method.fit_config()
    augment = orientation.augmentation(params.dataset, data.category) if fit.augment else None
    for index, phase in enumerate(fit.phases):
        crop = phase.crop or method.image_size
        stream = training_dataset(
            data.train, crop, fit.batch_size, augment, params.seed + 1000 * index, method.make_pairs
        )
        for step, (inputs, targets) in enumerate(stream.take(TRAIN_STEPS), start=1):
            assert tuple(inputs.shape) == (BATCH_SIZE, crop, crop, method.channels)
            loss = float(model.train_on_batch(inputs, targets))
            assert np.isfinite(loss), f"phase {index} (crop {crop}), step {step}: loss {loss}"


def _check_the_early_stopping_monitor(
    model: keras.Model, method: TrainedMethod, data: CategoryData, seed: int
) -> None:
    """The paper profile ends each phase on a plateau of the synthetic score: one epoch
    end of that callback, at the paper's sizes, as ``fit_phases`` would run it."""
    fit = method.fit_config()
    if not (fit.patience and fit.monitor == "synthetic"):
        return
    monitor = SyntheticValidation(method, data, seed)
    monitor.set_model(model)
    logs: dict[str, float] = {}
    monitor.on_epoch_end(0, logs)
    assert 0.0 <= logs[METRIC] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("variant", _variants())
def test_builds_trains_and_scores_at_the_paper_sizes(variant: str, tmp_path: Path) -> None:
    params = _paper_params(variant)
    size = params.dataset.image_size
    method = make_method(params, variant, PREPARED_CHANNELS)
    data = as_seen_by(
        method, _category(_images(TRAIN_IMAGES, size, seed=0), _images(2, size, seed=2))
    )
    with dtype_policy(params.train.mixed_precision):
        trained = isinstance(method, TrainedMethod)
        model = compiled_model(params, method) if trained else method.build()
    if trained:
        _train_every_phase(model, method, data, params)
        _check_the_early_stopping_monitor(model, method, data, params.seed)
        if method.fit_config().precise_bn:
            precise_batch_norm(model, data.train, method.fit_config().batch_size)
    method.after_training(model, data, tmp_path)
    detector = AdaptedDetector(
        method.load_detector(model, tmp_path), method.image_size, method.channels
    )
    scores = detector.score(_images(SCORED_IMAGES, size, seed=1))
    assert set(scores.maps) == set(detector.map_names)
    for name in detector.map_names:
        assert scores.maps[name].shape == (SCORED_IMAGES, size, size), name
        assert np.isfinite(scores.maps[name]).all(), name
        assert scores.image_scores[name].shape == (SCORED_IMAGES,), name
        assert np.isfinite(scores.image_scores[name]).all(), name
