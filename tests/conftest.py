"""Shared test set-up: quiet, deterministic TensorFlow on the CPU."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import keras
import pytest


@pytest.fixture(autouse=True)
def _seeded() -> None:
    keras.utils.set_random_seed(1234)
