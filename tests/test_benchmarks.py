"""The benchmark scripts import, their reference corruption does what the TF op does, and
``python -m benchmarks`` reads the figures the other scripts print.

Nothing is timed here: on a shared machine a timing test would be flaky. ``make bench``
measures.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tensorflow as tf

from reconad.config import ElasticConfig
from reconad.corrupt.elastic import elastic_patch_corruption

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("corruption", "knn", "mc_dropout", "__main__")
CFG = ElasticConfig(size_min=0.15, size_max=0.35, sigma=4.0, alpha=50.0)


def import_benchmark(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``benchmarks.<name>`` imported as ``python -m benchmarks`` does, from the repo root."""
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module(f"benchmarks.{name}")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports_without_running(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = import_benchmark(name, monkeypatch)
    assert callable(module.main)


@pytest.mark.parametrize("channels", [1, 3])
def test_reference_output_is_shaped_like_the_tf_op(
    channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    corruption = import_benchmark("corruption", monkeypatch)
    images = np.random.default_rng(0).random((2, 32, 32, channels), dtype=np.float32)
    x_hat, x, mask = corruption.reference_corruption(images, CFG, np.random.default_rng(1))
    expected = [t.numpy() for t in elastic_patch_corruption(images, tf.constant([1, 2]), CFG)]

    for ours, theirs in zip((x_hat, x, mask), expected, strict=True):
        assert ours.shape == theirs.shape
        assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(x, images)
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert (x_hat >= 0.0).all() and (x_hat <= 1.0).all()
    np.testing.assert_array_equal(mask, np.repeat(mask[..., :1], channels, axis=-1))
    np.testing.assert_array_equal(x_hat[mask == 0], x[mask == 0])
    assert (np.abs(x_hat - x).sum(axis=(1, 2, 3)) > 0).all()


def test_reference_masks_cover_as_much_as_the_tf_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same patch counts and sizes: mean mask coverage of 64 images within 25% of the op's."""
    corruption = import_benchmark("corruption", monkeypatch)
    images = np.random.default_rng(0).random((64, 32, 32, 1), dtype=np.float32)
    ours = corruption.reference_corruption(images, CFG, np.random.default_rng(2))[2]
    theirs = elastic_patch_corruption(images, tf.constant([3, 4]), CFG)[2].numpy()
    assert ours.mean() == pytest.approx(theirs.mean(), rel=0.25)


def test_reference_falls_back_on_a_flat_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """Elastic deformation cannot change a flat image: the brightness fallback must."""
    corruption = import_benchmark("corruption", monkeypatch)
    flat = np.full((2, 32, 32, 1), 0.7, np.float32)
    x_hat, x, mask = corruption.reference_corruption(flat, CFG, np.random.default_rng(3))
    np.testing.assert_allclose(x_hat, x - corruption.FALLBACK_SHIFT * mask, atol=1e-6)
    assert (mask.max(axis=(1, 2, 3)) == 1.0).all()


def test_figures_are_read_back_from_printed_text(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = import_benchmark("__main__", monkeypatch)
    knn_text = (
        "bank 50000 x 64, 5000 queries, chunk 4096\n"
        "  reconad chunked TF kNN :    0.250 s\n"
        "  sklearn brute force    :    0.750 s\n"
        "  speed-up               :     3.00 x\n"
        "  max |difference|       : 4.77e-07\n"
        "peak extra resident memory of one search (5000 queries, dim 64):\n"
        "      bank  bank MiB  Q x M matrix MiB  ours MiB  ours - bank  sklearn MiB\n"
        "     10000       2.4             190.7      20.5         18.1        200.0\n"
    )
    mc_text = "batched / deterministic:    6.5x  (goal <= 8x)\nnaive / batched:    4.0x\n"

    knn = bench.parse_figures(knn_text, bench.KNN_FIGURES)
    mc = bench.parse_figures(mc_text, bench.MC_DROPOUT_FIGURES)

    assert knn == {
        "reconad_s": 0.25,
        "sklearn_s": 0.75,
        "speedup": 3.0,
        "max_abs_difference": 4.77e-07,
    }
    assert mc["batched_over_deterministic"] == 6.5
    assert mc["naive_over_batched"] == 4.0
    assert mc["deterministic_ms"] is None
    assert bench.parse_knn_memory(knn_text) == [
        dict(zip(bench.KNN_MEMORY_COLUMNS, [10000, 2.4, 190.7, 20.5, 18.1, 200.0], strict=True))
    ]
