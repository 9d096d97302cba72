"""Inference latency (batch 1) and throughput (batch 32) per variant, through the Detector.

For each variant (default ``sdc_restore``, ``aesc_stain``, ``patch_ae``) at the active
profile of ``params.yaml``, images of ``dataset.image_size`` with one channel like the
textures dataset go through the path ``reconad score`` and ``predict`` take:
``Method.load_detector(model, model_dir)`` then ``Detector.anomaly_maps``, with all its
maps (SDC-AE: smoothed residual; AESc: residual plus ``score.aesc.mc_passes`` MC-dropout
passes; Patch AE: encoder, nearest-neighbour search in the memory bank, upsampling and
smoothing), in batches of ``score.batch_size`` inside the detector. It also times the bare
network (``model(x, training=False)`` in a tf.function) for comparison.

No trained model is needed: speed does not depend on the weights. The networks are
freshly built (Patch AE with its offline ``hed_vgg16`` backbone), and the Patch AE memory
bank holds random non-negative vectors, as many as the encoder gives for
``dataset.textures.train`` training images (the bank size sets the kNN cost). Usage::

    python benchmarks/inference.py                      # quick profile
    python benchmarks/inference.py --variant aesc_stain --large-batch 16 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconad.runtime import configure_environment, seed_everything

configure_environment()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import median_seconds, random_images  # noqa: E402
from reconad.config import Params, load_params  # noqa: E402
from reconad.memory_bank import MEMORY_BANK_FILE, build_bank, save_bank  # noqa: E402
from reconad.models import Detector, Method  # noqa: E402
from reconad.models.backbones import FINE_STRIDE  # noqa: E402
from reconad.train import make_method  # noqa: E402

VARIANTS = ("sdc_restore", "aesc_stain", "patch_ae")
"""One variant per method family."""

CHANNELS = 1
"""The embedded textures dataset is grey."""

WARMUP_CALLS = 1
"""Untimed calls per batch size: tracing and kernel selection."""


def write_random_bank(params: Params, model_dir: Path, seed: int) -> int:
    """A Patch AE memory bank of random R vectors, sized as training would make it.

    Returns:
        The number of bank vectors: training images x (image_size / 8)^2.
    """
    side = params.dataset.image_size // FINE_STRIDE
    shape = (params.dataset.textures.train, side, side, params.patch_ae.compressed_channels)
    features = np.random.default_rng(seed).random(shape, dtype=np.float32)
    bank = build_bank(features)
    save_bank(model_dir / MEMORY_BANK_FILE, bank)
    return len(bank)


def ready_detector(
    params: Params, method: Method, model: keras.Model, model_dir: Path, seed: int
) -> tuple[Detector, int]:
    """The method's detector for ``model``, and its memory-bank size (0 without one)."""
    bank = write_random_bank(params, model_dir, seed) if method.family == "patch_ae" else 0
    return method.load_detector(model, model_dir), bank


def measure_variant(
    params_path: Path | str, variant: str, large_batch: int, repeats: int, seed: int
) -> dict[str, Any]:
    """Detector and bare-network timings of ``variant`` at batch 1 and ``large_batch``.

    Returns:
        One row: sizes, the detector's ``map_names``, ``detector_ms_batch1``,
        ``detector_ms_per_image_large`` and ``detector_images_per_s_large``, the same for
        the bare ``network``, and ``*_large_over_batch1``: per-image time at the large
        batch over the batch-1 latency (below 1 when batching pays).
    """
    params = load_params(params_path, variant)
    method = make_method(params, variant, CHANNELS)
    size = params.dataset.image_size
    model = method.build()
    images = random_images(large_batch, size, seed, CHANNELS)
    one = images[:1]
    network = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, size, size, CHANNELS), tf.float32)],
    )
    with tempfile.TemporaryDirectory(prefix="reconad-bench-") as model_dir:
        detector, bank = ready_detector(params, method, model, Path(model_dir), seed)
        timings = {
            "detector": (
                median_seconds(lambda: detector.anomaly_maps(one), repeats, WARMUP_CALLS),
                median_seconds(lambda: detector.anomaly_maps(images), repeats, WARMUP_CALLS),
            ),
            "network": (
                median_seconds(lambda: network(one).numpy(), repeats, WARMUP_CALLS),
                median_seconds(lambda: network(images).numpy(), repeats, WARMUP_CALLS),
            ),
        }
    keras.backend.clear_session()
    row: dict[str, Any] = {
        "variant": variant,
        "family": method.family,
        "image_size": size,
        "large_batch": large_batch,
        "score_batch_size": params.score.batch_size,
        "maps": list(detector.map_names),
        "memory_bank": bank,
    }
    for name, (single, batched) in timings.items():
        per_image = batched / large_batch
        row[f"{name}_ms_batch1"] = 1e3 * single
        row[f"{name}_ms_per_image_large"] = 1e3 * per_image
        row[f"{name}_images_per_s_large"] = 1.0 / per_image
        row[f"{name}_large_over_batch1"] = per_image / single
    return row


def run(
    params_path: Path | str = "params.yaml",
    large_batch: int = 32,
    repeats: int = 3,
    variants: Iterable[str] = VARIANTS,
    seed: int | None = None,
) -> dict[str, Any]:
    """Measure every variant.

    Args:
        params_path: the ``params.yaml`` whose active profile sets the sizes.
        large_batch: images per throughput call.
        repeats: timed calls per batch size (the median is kept).
        variants: variant names defined in ``params.yaml``.
        seed: seeds the images, weights and memory bank; default ``params.seed``.

    Returns:
        The profile, sizes and one row per variant (see :func:`measure_variant`).
    """
    if large_batch < 1 or repeats < 1:
        raise ValueError(
            f"Expected large_batch >= 1 and repeats >= 1, "
            f"Received: large_batch={large_batch}, repeats={repeats}"
        )
    params = load_params(params_path)
    seed = params.seed if seed is None else seed
    seed_everything(seed)
    rows = [measure_variant(params_path, name, large_batch, repeats, seed) for name in variants]
    return {
        "profile": params.profile,
        "channels": CHANNELS,
        "large_batch": large_batch,
        "repeats": repeats,
        "variants": rows,
    }


def format_figures(figures: dict[str, Any]) -> str:
    """The table and ratios of :func:`run` as printable text."""
    large = figures["large_batch"]
    lines = [
        f"profile {figures['profile']}: {figures['channels']} channel, median of "
        f"{figures['repeats']} calls; batch-{large} per-image time / batch-1 latency "
        f"(< 1 when batching pays)",
        f"  {'variant':<12} {'size':>4} {'path':<9} {'b1 ms':>9} {f'b{large} ms/img':>12} "
        f"{f'b{large} img/s':>11} {f'b{large}/b1':>8}  maps",
    ]
    for row in figures["variants"]:
        for path in ("detector", "network"):
            maps = ", ".join(row["maps"]) if path == "detector" else "reconstruction"
            lines.append(
                f"  {row['variant']:<12} {row['image_size']:>4} {path:<9} "
                f"{row[f'{path}_ms_batch1']:>9.1f} {row[f'{path}_ms_per_image_large']:>12.1f} "
                f"{row[f'{path}_images_per_s_large']:>11.1f} "
                f"{row[f'{path}_large_over_batch1']:>7.2f}x  {maps}"
            )
    return "\n".join(lines)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--large-batch", type=int, default=32, help="throughput batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch size")
    parser.add_argument(
        "--variant", action="append", help=f"repeatable; default: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--seed", type=int, default=None, help="default: params seed")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    figures = run(args.params, args.large_batch, args.repeats, args.variant or VARIANTS, args.seed)
    print(format_figures(figures))


if __name__ == "__main__":
    main()
