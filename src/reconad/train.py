"""Shared training loop: any method family, progressive phases, resumable, tracked.

Interrupted training (Ctrl-C, SIGTERM, a crash) resumes where it stopped: each phase
runs under ``keras.callbacks.BackupAndRestore`` and each finished phase leaves its
weights behind, both under ``.reconad/checkpoints`` keyed by a hash of everything that
determines the model, so a run with other params never resumes from stale state.
The checkpoints live outside DVC's outputs because DVC deletes a stage's outputs before
it runs the stage again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from reconad import paths, synthetic, tracking
from reconad.budget import BudgetedCosineDecay, StopAtTimeBudget, TimeBudget
from reconad.config import FitConfig, Params
from reconad.data import orientation
from reconad.data.layout import CategoryData, load_split
from reconad.data.pipeline import PairFn, training_dataset, validation_dataset
from reconad.errors import ConfigError, TrainingError
from reconad.io import atomic_dir, atomic_write_json, check_writable
from reconad.models import FAMILIES, method_class
from reconad.models.base import Method, TrainedMethod, adapt_images, precise_batch_norm
from reconad.models.trained import variant_dir
from reconad.runtime import dtype_policy

CHECKPOINT_ROOT = Path(".reconad/checkpoints")
BACKUP_METADATA = "training_metadata.json"  # written by keras.callbacks.BackupAndRestore
PACKAGE_ROOT = Path(__file__).parent
"""The code a checkpoint was trained by is part of its key (:func:`run_key`)."""
log = logging.getLogger("reconad")


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    epochs_run: int
    final_losses: dict[str, float]
    run_id: str
    time_budget_reached: bool


def train(
    params: Params,
    variant: str,
    category: str,
    prepared_dir: Path = paths.PREPARED_DIR,
    out_dir: Path | None = None,
    checkpoint_root: Path = CHECKPOINT_ROOT,
) -> TrainResult:
    """Train ``variant`` on the normal images of ``category`` and save it atomically.

    A training-free family (PatchCore, an ensemble) runs no phases and only fits its
    state (:meth:`Method.after_training`).

    Raises:
        ConfigError: the network cannot take the configured image or crop size.
        TrainingError: the loss became NaN.
    """
    params.family(params.variant(variant).method)  # a bad block fails before any data is read
    out_dir = out_dir or variant_dir(params, variant, category)
    prepared = load_split(paths.prepared_category(category, prepared_dir))
    method = make_method(params, variant, prepared.train.shape[-1])
    data = as_seen_by(method, prepared)
    log.info("%s/%s: %s", variant, category, describe_input(params, method))
    check_writable(out_dir)
    tags = {"variant": variant, "category": category, "method": method.family}
    with tracking.training_run(params, f"{variant}/{category}", tags) as run_id:
        tracking.log_params(tracking.flatten(relevant_params(params, method.family)))
        start = time.perf_counter()
        checkpoints = checkpoint_root / variant / category / run_key(params, variant, data)
        fitted = fit_network(method, data, params, checkpoints)
        with atomic_dir(out_dir / paths.MODEL_SUBDIR) as tmp:
            method.after_training(fitted.model, data, tmp)
            seconds = time.perf_counter() - start
            save_model(fitted.model, method, prepared, run_id, seconds, tmp, fitted.budget_reached)
        tracking.log_metrics(
            {"training_seconds": seconds, "time_budget_reached": float(fitted.budget_reached)}
        )
        tracking.log_artifacts(out_dir / paths.MODEL_SUBDIR, "model")
    shutil.rmtree(checkpoints, ignore_errors=True)  # only once the model is safely saved
    return TrainResult(out_dir, fitted.epochs, fitted.losses, run_id, fitted.budget_reached)


def describe_input(params: Params, method: Method, colour: str | None = None) -> str:
    """What the family sees, e.g. ``aesc at 256 px, grey`` or ``patch_ae at 512 px, rgb,
    resnet101/imagenet``: the profile's per-family choices, visible in every run's log.
    ``colour`` None: from the channels the method was built for."""
    colour = colour or ("grey" if method.channels == 1 else "rgb")
    text = f"{method.family} at {method.image_size} px, {colour}"
    network = getattr(params.family(method.family), "network", None)
    if getattr(network, "backbone", None):
        text += f", {network.backbone}/{network.weights}"
    return text


def describe_variant(params: Params, variant: str) -> str:
    """One line on what ``variant`` sees and how long it may train, as the params and the
    active profile resolve it: what a GPU user checks before a long run."""
    method = make_method(params, variant, prepared_channels=3)
    colour = params.family(method.family).input.color
    colour = "colour as prepared" if colour == "auto" else colour
    text = f"{variant}: {describe_input(params, method, colour)}"
    if not isinstance(method, TrainedMethod):
        return text + "; not trained"
    fit = method.fit_config()
    crops = ", ".join(str(phase.crop or method.image_size) for phase in fit.phases)
    text += f"; at most {fit.total_steps()} steps (crops {crops} px)"
    if fit.patience:
        watched = fit.monitor
        if fit.monitor == "synthetic":
            watched += f" ({fit.synthetic_defects} defects)"
        text += f", early stopping after {fit.patience} epochs without a better {watched}"
    if params.train.max_minutes is not None:
        text += f", or {params.train.max_minutes:g} min (train.max_minutes)"
    return text


def as_seen_by(method: Method, data: CategoryData) -> CategoryData:
    """``data`` with its train and validation images converted to the family's input."""
    if (method.image_size, method.channels) == (data.image_size, data.train.shape[-1]):
        return data
    return dataclasses.replace(
        data,
        train=adapt_images(data.train, method.image_size, method.channels).numpy(),
        val=adapt_images(data.val, method.image_size, method.channels).numpy(),
        image_size=method.image_size,
    )


@dataclass(frozen=True)
class Fitted:
    """A family's network after its phases (None for a training-free family)."""

    model: keras.Model | None
    epochs: int
    losses: dict[str, float]
    budget_reached: bool
    """``train.max_minutes`` ended training before its last scheduled epoch."""


def fit_network(method: Method, data: CategoryData, params: Params, checkpoints: Path) -> Fitted:
    """Build the family's network and run its phases, resumably from ``checkpoints``."""
    strategy = distribution_strategy(params.train.distribute)
    budget = TimeBudget(params.train.max_minutes, checkpoints)
    with strategy.scope(), dtype_policy(params.train.mixed_precision):
        if not isinstance(method, TrainedMethod):
            return Fitted(method.build(), 0, {}, budget_reached=False)
        model = compiled_model(params, method, data, budget)
    epochs_run, losses = fit_phases(model, method, data, params, checkpoints, budget)
    if method.fit_config().precise_bn:
        precise_batch_norm(model, data.train, method.fit_config().batch_size)
    return Fitted(model, epochs_run, losses, budget.reached)


def compile_for_training(
    model: keras.Model, method: TrainedMethod, params: Params, budget: TimeBudget | None = None
) -> None:
    """Adam (constant or cosine-decayed learning rate) and the method's loss."""
    fit = method.fit_config()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(fit, budget)),
        loss=method.loss(),
        jit_compile=params.train.jit_compile,
    )


def compiled_model(
    params: Params,
    method: TrainedMethod,
    data: CategoryData | None = None,
    budget: TimeBudget | None = None,
) -> keras.Model:
    """The method's network compiled for training, its data-dependent weights set from
    ``data`` when given (benchmarks, which only time steps, pass none)."""
    model = method.build()
    if data is not None:
        method.initialise(model, data)
    compile_for_training(model, method, params, budget)
    return model


def learning_rate(
    fit: FitConfig, budget: TimeBudget | None = None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """``train.learning_rate``, decayed to 0 over all steps with ``lr_schedule: cosine``
    (or over the steps the time ``budget`` allows, once it is projected to run out first)."""
    if fit.lr_schedule == "cosine":
        pace = budget.pace if budget is not None else None
        return BudgetedCosineDecay(fit.learning_rate, fit.total_steps(), pace=pace)
    return fit.learning_rate


def make_method(params: Params, variant: str, prepared_channels: int) -> Method:
    """The family of ``variant``, checked against the image size it will see."""
    method = method_class(params.variant(variant).method)(params, variant, prepared_channels)
    method.check_image_size(method.image_size)
    return method


def fit_phases(
    model: keras.Model,
    method: TrainedMethod,
    data: CategoryData,
    params: Params,
    checkpoints: Path,
    budget: TimeBudget | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[int, dict[str, float]]:
    """Run every phase, skipping the ones a previous attempt finished and, once
    ``budget`` is spent, the ones left; ``extra_callbacks`` watch every phase (the
    learning-curve benchmark evaluates through them)."""
    budget = budget or TimeBudget(None, checkpoints)
    cfg = method.fit_config()
    augment = orientation.augmentation(params.dataset, data.category) if cfg.augment else None
    epochs_done = 0
    losses: dict[str, float] = {}
    val = epoch_validation(data, cfg.batch_size, params.seed, method.make_pairs)
    for index, phase in enumerate(cfg.phases):
        finished = checkpoints / f"phase{index}.weights.h5"
        if finished.exists():
            model.load_weights(finished)
            log.info(
                "phase %d (crop %d) already trained: resumed from %s", index, phase.crop, finished
            )
            epochs_done += phase.epochs
            continue
        if budget.exhausted():
            log_budget_end(budget, index, len(cfg.phases))
            break
        log.info("phase %d: crop %d, %d epochs", index, phase.crop, phase.epochs)
        backup_dir = checkpoints / f"phase{index}"
        log_resume_point(backup_dir, index)
        forget_restored_epoch(model)
        stream = training_dataset(
            data.train,
            phase.crop or data.image_size,
            cfg.batch_size,
            augment,
            params.seed + 1000 * index,
            method.make_pairs,
        )
        history = model.fit(
            stream,
            validation_data=val,
            epochs=phase.epochs,
            steps_per_epoch=cfg.steps_per_epoch,
            shuffle=False,  # tf.data already draws random crops; Keras would only warn
            callbacks=[
                *phase_callbacks(backup_dir, index, epochs_done, method, data, params.seed),
                StopAtTimeBudget(budget, cfg.total_steps()),
                *extra_callbacks,
            ],
            verbose=2,
        )
        epochs_done += history.epoch[-1] + 1 if history.epoch else phase.epochs
        losses = {name: float(values[-1]) for name, values in history.history.items()}
        checkpoints.mkdir(parents=True, exist_ok=True)
        save_weights_atomically(model, finished)
        if budget.reached:
            log_budget_end(budget, index, len(cfg.phases))
            break
    return epochs_done, losses


VALIDATION_IMAGES = synthetic.MONITOR_IMAGES
"""Validation normals the per-epoch validation loss is computed on: the synthetic monitor's,
for an epoch whose cost does not grow with the dataset (the loss on 114 normals took a
third of Patch AE's 2-min epochs on 2 slow cores). Calibration uses all of them."""


def epoch_validation(
    data: CategoryData, batch_size: int, seed: int, make_pairs: PairFn
) -> tf.data.Dataset:
    """The pairs ``fit`` computes the validation loss on after every epoch."""
    return validation_dataset(data.val[:VALIDATION_IMAGES], batch_size, seed, make_pairs)


def log_budget_end(budget: TimeBudget, phase: int, phases: int) -> None:
    """Say that ``train.max_minutes`` ended training in (or before) phase ``phase``."""
    log.warning(
        "train.max_minutes: the %g-min budget was spent (%.1f min); training ends in "
        "phase %d of %d (phases count from 0)",
        budget.max_minutes,
        budget.spent_seconds() / 60.0,
        phase,
        phases,
    )


def log_resume_point(backup_dir: Path, phase: int) -> None:
    """Say when a phase restarts from the epoch checkpoint an interrupted run left.

    A checkpoint whose epoch record cannot be read is set aside and the phase starts
    over. A kill or power loss during Keras' unsynced write can leave that record empty,
    and Keras would otherwise fail on it at every re-run.
    """
    metadata = backup_dir / BACKUP_METADATA
    if not metadata.exists():
        return
    try:
        epoch = int(json.loads(metadata.read_text(encoding="utf-8"))["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        damaged = backup_dir.with_name(f"{backup_dir.name}.damaged")
        shutil.rmtree(damaged, ignore_errors=True)
        backup_dir.rename(damaged)
        log.warning(
            "phase %d: checkpoint %s is damaged (moved to %s); the phase starts over",
            phase,
            metadata,
            damaged,
        )
        return
    log.info("phase %d: resumed after epoch %d from the checkpoint in %s", phase, epoch, backup_dir)


def forget_restored_epoch(model: keras.Model) -> None:
    """Let the next ``fit`` start at its own first epoch.

    ``BackupAndRestore`` stores the restored epoch on the model (``_initial_epoch``) and
    Keras starts every later ``fit`` of that model there, so without this a phase that
    follows a resumed phase would skip as many epochs as the resumed one had done.
    """
    model._initial_epoch = None


def save_weights_atomically(model: keras.Model, path: Path) -> None:
    """Save next to ``path`` and rename: a kill mid-save must not leave a truncated
    file that the next run would load as a finished phase."""
    partial = path.with_name(f".partial.{path.name}")
    model.save_weights(partial)
    partial.replace(path)


MONITORS = {"val_loss": ("val_loss", "min"), "synthetic": (synthetic.METRIC, "max")}
"""``train.monitor`` to the Keras log key early stopping watches, and its direction."""


def phase_callbacks(
    backup_dir: Path,
    phase: int,
    first_epoch: int,
    method: TrainedMethod,
    data: CategoryData,
    seed: int,
) -> list[keras.callbacks.Callback]:
    """Backup for resuming, the NaN guard, MLflow logging and, when ``patience`` is set,
    early stopping on the ``monitor`` that keeps the weights of the best epoch (the
    synthetic-defect score is computed first, so that early stopping and MLflow see it)."""
    fit = method.fit_config()
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True),
        NonFiniteLossGuard(phase, method.family),
    ]
    if fit.patience and fit.monitor == "synthetic":
        callbacks.append(synthetic.SyntheticValidation(method, data, seed))
    callbacks.append(tracking.EpochMetricsLogger(first_epoch))
    if fit.patience:
        key, mode = MONITORS[fit.monitor]
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=key, mode=mode, patience=fit.patience, restore_best_weights=True
            )
        )
    return callbacks


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops at the first NaN/inf loss with a message naming where it happened."""

    def __init__(self, phase: int, family: str) -> None:
        super().__init__()
        self.phase = phase
        self.family = family
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(
                f"loss became {float(loss)} at phase {self.phase}, epoch {self.epoch + 1}, "
                f"step {batch + 1}; lower {self.family}.train.learning_rate or check the "
                "input images"
            )


def distribution_strategy(kind: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy named by ``train.distribute``.

    Raises:
        ConfigError: ``multi_worker`` with more than one worker in ``TF_CONFIG``.
    """
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        refuse_multi_worker_cluster(cluster_workers())
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def cluster_workers() -> int:
    """Training tasks (chief and workers) in the cluster ``TF_CONFIG`` describes; 1 without one.

    Raises:
        ConfigError: ``TF_CONFIG`` is set but is not JSON.
    """
    try:
        spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    except ValueError as exc:  # json.JSONDecodeError
        raise ConfigError(f"TF_CONFIG: not valid JSON ({exc})") from exc
    return max(1, sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs))


def refuse_multi_worker_cluster(workers: int) -> None:
    """Stop before MultiWorkerMirroredStrategy joins a cluster whose training would crash.

    Keras 3's ``Model.fit`` (checked with 3.15 on TensorFlow 2.21) fails on two or more
    workers: it all-reduces a nested data batch to build the model, which tf.distribute
    does not support, and then reduces the scalar logs along an axis they do not have.
    ``tests/test_distribute.py`` keeps a two-worker canary of plain Keras that fails
    while this holds. Without the check, every worker would wait for its peers and then
    end in a traceback.
    """
    if workers > 1:
        raise ConfigError(
            f"train.distribute: multi_worker: TF_CONFIG describes {workers} workers, but "
            "Keras 3's Model.fit cannot train across workers; use `mirrored` (every GPU "
            "of one machine) or unset TF_CONFIG"
        )


def relevant_params(params: Params, family: str) -> dict[str, Any]:
    """The params a model of ``family`` depends on (logged and hashed): the family's
    blocks, the shared training loop, the dataset and the seed."""
    dump = params.raw()
    sections = ["seed", "dataset", "train", *FAMILIES[family].blocks]
    return {name: dump[name] for name in sections}


def run_key(params: Params, variant: str, data: CategoryData) -> str:
    """A hash of everything that determines the trained weights, the package's code
    included: DVC re-runs a training stage when its code changes, and that run must not
    resume from an epoch the old code trained."""
    payload = {
        "variant": variant,
        "category": data.category,
        "params": relevant_params(params, params.variant(variant).method),
        "data": data_fingerprint(data),
        "code": code_fingerprint(PACKAGE_ROOT),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.cache
def code_fingerprint(package: Path) -> str:
    """A hash of every Python source file under ``package``, by relative path."""
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def data_fingerprint(data: CategoryData) -> str:
    """A hash of the training and validation pixels the model sees."""
    digest = hashlib.sha256()
    for images in (data.train, data.val):
        digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def save_model(
    model: keras.Model | None,
    method: Method,
    prepared: CategoryData,
    run_id: str,
    seconds: float,
    directory: Path,
    time_budget_reached: bool = False,
) -> None:
    """``model.keras`` (when the family has a network) plus the JSON description that
    loading needs: the family, what its network sees, what the prepared images were."""
    if model is not None:
        model.save(directory / paths.MODEL_FILE)
    atomic_write_json(
        directory / paths.MODEL_CONFIG_FILE,
        {
            "variant": method.variant,
            "method": method.family,
            "category": prepared.category,
            "image_size": method.image_size,
            "channels": method.channels,
            "prepared_size": prepared.image_size,
            "color": prepared.color,
            "training_seconds": round(seconds, 1),
            "time_budget_reached": time_budget_reached,
            "mlflow_run_id": run_id,
            "params": method.params.raw(),
        },
    )
