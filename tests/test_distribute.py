"""Training under ``tf.distribute`` on one CPU split into two logical devices.

``train.distribute: mirrored`` must run the real trainer (:func:`reconad.train.train`) with
the model built and compiled in the strategy scope, each batch split over both replicas,
and leave a loadable model behind. The logical devices can only be configured before
TensorFlow initialises its devices, which the test process has already done, so the
training runs in a fresh interpreter; it prints what it saw as one JSON line.

A cluster of two workers on localhost checks that Keras still cannot fit across workers,
the reason reconad refuses ``multi_worker`` with more than one worker.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from faults_support import TINY, free_port, subprocess_env, write_params
from reconad import paths
from reconad.config import load_params
from reconad.data.fetch import fetch_dataset
from reconad.data.prepare import prepare_dataset
from reconad.models import method_class
from reconad.models.trained import load_trained

VARIANT = "sdc_restore"
CATEGORY = "brick"
LOGICAL_CPUS = 2
IMAGE_SIZE = TINY["dataset.image_size"]
TIMEOUT_S = 300
SMALL_RUN: dict[str, Any] = {
    "sdc_ae__network__width": 0.125,
    "sdc_ae__train__phases": [{"crop": 16, "epochs": 1}],
    "sdc_ae__train__steps_per_epoch": 2,
    "sdc_ae__train__batch_size": 4,
}
"""On top of the fault tests' tiny params (``write_params`` keywords, ``__`` for ``.``): one
epoch of two steps on 16-pixel crops, two per replica."""

TRAIN_WITH_LOGICAL_CPUS = """
import json, sys
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * int(sys.argv[2])
)

from reconad import train as trainer
from reconad.config import load_params
from reconad.runtime import configure_environment, seed_everything

configure_environment()
workdir, variant, category = Path(sys.argv[1]), sys.argv[3], sys.argv[4]
params = load_params(workdir / "params.yaml", variant)
seed_everything(params.seed)
seen = {}
make_strategy = trainer.distribution_strategy


def recorded_strategy(kind):
    strategy = make_strategy(kind)
    seen["strategy"] = [
        name
        for name in ("MirroredStrategy", "MultiWorkerMirroredStrategy")
        if isinstance(strategy, getattr(tf.distribute, name))
    ]
    seen["replicas"] = strategy.num_replicas_in_sync
    seen["devices"] = list(strategy.extended.worker_devices)
    return strategy


trainer.distribution_strategy = recorded_strategy
result = trainer.train(
    params,
    variant,
    category,
    prepared_dir=workdir / "prepared",
    out_dir=workdir / "model_out",
    checkpoint_root=workdir / "checkpoints",
)
seen.update(
    model_dir=str(result.model_dir), epochs_run=result.epochs_run, losses=result.final_losses
)
print("RESULT " + json.dumps(seen))
"""


def prepared_project(workdir: Path, distribute: str) -> Path:
    """``workdir`` with a tiny params file and its textures category fetched and prepared."""
    params_file = write_params(workdir, train__distribute=distribute, **SMALL_RUN)
    params = load_params(params_file)
    fetch_dataset(params, workdir / "raw")
    prepare_dataset(params, workdir / "raw", workdir / "prepared")
    return workdir


def train_in_subprocess(workdir: Path, env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the trainer in a fresh interpreter with ``LOGICAL_CPUS`` logical CPU devices."""
    env = subprocess_env(workdir)
    env.pop("TF_CONFIG", None)
    env.update(env_extra or {})
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            TRAIN_WITH_LOGICAL_CPUS,
            str(workdir),
            str(LOGICAL_CPUS),
            VARIANT,
            CATEGORY,
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    [line] = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def check_trained_model(workdir: Path, seen: dict[str, Any]) -> None:
    """Finite losses, and a saved model that loads (as a network and as a detector) and
    reconstructs a 32-pixel image."""
    assert seen["epochs_run"] == 1
    assert {"loss", "val_loss"} <= set(seen["losses"])
    assert all(math.isfinite(value) for value in seen["losses"].values()), seen["losses"]
    params = load_params(workdir / "params.yaml", VARIANT)
    method_class(params.variant(VARIANT).method)  # importing it registers its custom layers
    model_file = Path(seen["model_dir"]) / paths.MODEL_SUBDIR / paths.MODEL_FILE
    model = keras.saving.load_model(model_file, compile=False)
    image = np.random.default_rng(0).random((1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    reconstruction = np.asarray(model(image, training=False))
    assert reconstruction.shape == image.shape
    assert np.isfinite(reconstruction).all()
    trained = load_trained(Path(seen["model_dir"]), params)
    assert trained.description["method"] == "sdc_ae"
    assert trained.description["image_size"] == IMAGE_SIZE
    maps = trained.detector.score(image).maps[trained.primary_map]
    assert maps.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and np.isfinite(maps).all()


@pytest.mark.slow
def test_mirrored_training_splits_batches_over_two_logical_cpus(tmp_path: Path) -> None:
    seen = train_in_subprocess(prepared_project(tmp_path, "mirrored"))

    assert seen["strategy"] == ["MirroredStrategy"]
    assert seen["replicas"] == LOGICAL_CPUS
    assert [device.rsplit("/", 1)[-1] for device in seen["devices"]] == [
        "device:CPU:0",
        "device:CPU:1",
    ]
    check_trained_model(tmp_path, seen)


@pytest.mark.slow
def test_single_worker_multi_worker_strategy_trains(tmp_path: Path) -> None:
    """Without a cluster in TF_CONFIG the collective strategy runs one local worker.

    On CPUs it takes one replica per worker (only GPUs are split into several), so the
    second logical CPU stays unused: ``train.distribute: multi_worker`` scales over
    machines, ``mirrored`` over the devices of one.
    """
    seen = train_in_subprocess(prepared_project(tmp_path, "multi_worker"), {"TF_CONFIG": "{}"})

    assert seen["strategy"] == ["MultiWorkerMirroredStrategy"]
    assert seen["replicas"] == 1
    assert seen["devices"][0].endswith("device:CPU:0")
    check_trained_model(tmp_path, seen)


KERAS_FIT_ON_EACH_WORKER = """
import tensorflow as tf, keras

strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
pairs = tf.data.Dataset.from_tensor_slices((tf.ones((64, 4)), tf.ones((64, 1))))
try:
    model.fit(pairs.batch(8).repeat(), epochs=1, steps_per_epoch=2, verbose=0)
    print("FIT OK")
except ValueError as exc:
    print("FIT FAILED", str(exc).splitlines()[0])
"""


@pytest.mark.slow
def test_keras_still_cannot_fit_on_two_workers(tmp_path: Path) -> None:
    """Canary for ``train.refuse_multi_worker_cluster``: plain Keras, two local workers.

    When this starts to fail because the fit succeeds, Keras has fixed multi-worker
    training: lift the refusal and test reconad's trainer on two workers instead.
    """
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        env = subprocess_env(tmp_path)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", KERAS_FIT_ON_EACH_WORKER],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    try:
        outputs = [worker.communicate(timeout=TIMEOUT_S)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()

    for output in outputs:
        assert "FIT OK" not in output, (
            "Keras now trains on two workers: remove train.refuse_multi_worker_cluster"
        )
        assert "FIT FAILED Attempt to convert a value (PerReplica" in output, output
