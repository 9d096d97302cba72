"""MLflow experiment tracking: a local SQLite store by default, no telemetry.

``MLFLOW_TRACKING_URI`` overrides ``tracking.uri``. Training opens a run and logs
params, per-epoch losses and the model; evaluation re-opens the same run (its id is
saved with the model) to add the final metrics.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras

from reconad.config import Params

MAX_PARAM_LENGTH = 500
log = logging.getLogger("reconad")


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


@contextmanager
def training_run(params: Params, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
    """Open a new MLflow run; yields its id."""
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    if experiment is None:
        experiment_id = mlflow.create_experiment(
            params.tracking.experiment, artifact_location=artifact_location(uri)
        )
    else:
        experiment_id = experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags)) as run:
        yield run.info.run_id


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (``<db dir>/mlartifacts``), not in the cwd.

    Other stores (a tracking server) choose their own artifact location.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    database = Path(uri.removeprefix(prefix)).resolve()
    return (database.parent / "mlartifacts").as_uri()


@contextmanager
def evaluation_run(
    params: Params, run_id: str | None, run_name: str, tags: Mapping[str, str]
) -> Iterator[None]:
    """Re-open training run ``run_id`` to log test metrics into it.

    A model without one (an ensemble trains nothing) or whose run was deleted gets a run
    of its own. Logging with no active run would make MLflow start one implicitly and
    leave it open for whatever runs next in the process.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(params))
    if run_id and _run_exists(run_id):
        with mlflow.start_run(run_id=run_id):
            yield
        return
    if run_id:
        log.warning("MLflow run %s not found; test metrics go to a new run", run_id)
    with training_run(params, run_name, tags):
        yield


def _run_exists(run_id: str) -> bool:
    import mlflow

    try:
        mlflow.tracking.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def log_params(flat: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_params({key: str(value)[:MAX_PARAM_LENGTH] for key, value in flat.items()})


def log_metrics(metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
    import mlflow

    finite = {
        f"{prefix}{key}": float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and math.isfinite(value)
    }
    if finite:
        mlflow.log_metrics(finite, step=step)


def log_artifacts(directory: Path, artifact_path: str) -> None:
    import mlflow

    mlflow.log_artifacts(str(directory), artifact_path=artifact_path)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class EpochMetricsLogger(keras.callbacks.Callback):
    """Logs every epoch's losses to the active MLflow run, numbered across phases."""

    def __init__(self, first_epoch: int = 0) -> None:
        super().__init__()
        self.first_epoch = first_epoch

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        log_metrics(logs or {}, step=self.first_epoch + epoch)
