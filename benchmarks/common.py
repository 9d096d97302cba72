"""Helpers shared by the benchmarks: synthetic inputs and robust timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
"""Where ``python -m benchmarks.<name>`` runs: benchmarks/ is a folder of the repository,
not an installed package."""


def random_images(count: int, size: int, seed: int, channels: int) -> np.ndarray:
    """``(count, size, size, channels)`` float32 with uint8 levels, like decoded PNGs."""
    levels = np.random.default_rng(seed).integers(0, 256, (count, size, size, channels))
    return (levels / 255.0).astype(np.float32)


def median_seconds(call: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``repeats`` calls of ``call`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
