"""Process-wide set-up shared by every stage: quiet logs, no telemetry, fixed seeds."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "KERAS_BACKEND": "tensorflow",
    # No usage data leaves the machine: MLflow honours both switches.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


def configure_environment() -> None:
    """Set quiet, telemetry-free defaults; must run before TensorFlow or MLflow import."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def seed_everything(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; make TF kernels deterministic on CPU.

    GPU kernels without a deterministic implementation raise under op determinism;
    ``deterministic_ops=False`` trades bitwise reproducibility for them.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def dtype_policy(mixed_precision: str) -> Iterator[None]:
    """Build layers under Keras' ``mixed_<mixed_precision>`` policy (``none``: float32),
    restoring the global policy afterwards so that other code in the process is unaffected.

    Variables and losses stay float32, and so does the reconstruction layer. ``float16``
    suits GPUs with tensor cores (Keras then wraps the optimizer in a LossScaleOptimizer);
    ``bfloat16`` needs no loss scaling and also runs fast on CPUs with AVX512-BF16 or AMX,
    where float16 is slower than float32 (README, "Profiles and time").
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(
        "float32" if mixed_precision == "none" else f"mixed_{mixed_precision}"
    )
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
