"""Inference latency (batch 1) and throughput (batch 32) per variant, through the Detector.

For each variant (default: the first variant ``params.yaml`` defines for every family but
the ensemble, whose detector needs trained members, :func:`default_variants`;
``sdc_restore``, ``aesc_stain``, ``patch_ae`` in the repository) at the active profile of
``params.yaml``, prepared images of ``dataset.image_size`` with one channel like the
textures dataset go through the path ``reconad calibrate``, ``evaluate`` and ``predict``
take: ``Method.load_detector(model, model_dir)`` wrapped in an ``AdaptedDetector`` (as
``reconad.models.trained.load_trained`` wraps it: images converted to the family's
``input`` size and colour, maps back at the prepared size), then ``Detector.score`` with
all its maps and image scores (SDC-AE: smoothed residual; AESc: residual plus
``aesc.score.mc_passes`` MC-dropout passes; Patch AE: encoder, nearest-neighbour search in
the memory bank, upsampling, smoothing, PatchCore re-weighting), in batches of
``score.batch_size`` inside the detector. It also times the bare network
(``model(x, training=False)`` in a tf.function, at the family's image size) for
comparison. Each path's ratio is taken against its own batch-1 latency, measured in the
same run.

No trained model is needed: speed does not depend on the weights. The networks are
freshly built (Patch AE with its offline ``hed_vgg16`` backbone), and the Patch AE memory
bank holds random non-negative vectors, as many as training would keep: the encoder's
grid (``patch_ae.network.stride``) over ``dataset.textures.train`` training images,
thinned by ``patch_ae.bank`` (``BankConfig.thinned``; the bank size sets the kNN cost).
Any other family fits its state (``Method.after_training``) on as many random images.
Usage::

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
from reconad.config import ENSEMBLE, Params, load_params  # noqa: E402
from reconad.data.layout import CategoryData  # noqa: E402
from reconad.memory_bank import MEMORY_BANK_FILE, build_bank, load_bank, save_bank  # noqa: E402
from reconad.models import FAMILIES  # noqa: E402
from reconad.models.base import AdaptedDetector, Detector, Method  # noqa: E402
from reconad.models.patch_ae import PatchAe  # noqa: E402
from reconad.train import make_method  # noqa: E402

CHANNELS = 1
"""The embedded textures dataset is grey."""

WARMUP_CALLS = 1
"""Untimed calls per batch size: tracing and kernel selection."""


def default_variants(params: Params) -> tuple[str, ...]:
    """One variant per family but the ensemble, in the order of
    :data:`reconad.models.FAMILIES`: the first one ``params.yaml`` defines."""
    chosen = []
    for family in FAMILIES:
        if family == ENSEMBLE:
            continue
        name = next((n for n, v in params.variants.items() if v.method == family), None)
        if name is not None:
            chosen.append(name)
    return tuple(chosen)


def write_random_bank(method: PatchAe, model_dir: Path, seed: int) -> int:
    """A Patch AE memory bank of random R vectors, sized as training would leave it.

    Returns:
        The number of bank vectors: ``dataset.textures.train`` images x
        ``(image_size / stride)^2``, thinned by ``patch_ae.bank`` as training thins it.
    """
    network = method.config.network
    side = method.image_size // network.stride
    shape = (method.params.dataset.textures.train, side, side, network.compressed_channels)
    features = np.random.default_rng(seed).random(shape, dtype=np.float32)
    bank = method.config.bank.thinned(build_bank(features), seed)
    save_bank(model_dir / MEMORY_BANK_FILE, bank)
    return len(bank)


def random_training_data(method: Method, seed: int) -> CategoryData:
    """``dataset.textures.train`` random training images as the family sees them (size and
    channels of its ``input``), for families whose detector needs fitted state."""
    count = method.params.dataset.textures.train
    train = random_images(count, method.image_size, seed, method.channels)
    empty = np.zeros((0, method.image_size, method.image_size, method.channels), np.float32)
    return CategoryData(
        category="random",
        color="grey" if method.channels == 1 else "rgb",
        image_size=method.image_size,
        train=train,
        val=train[:1],
        test=empty,
        test_labels=np.zeros(0, np.int64),
        test_masks=np.zeros(empty.shape[:3], bool),
        test_names=[],
        test_defects=[],
        train_names=[f"train/good/{index:03d}.png" for index in range(count)],
        val_names=["train/good/000.png"],
    )


def ready_detector(
    method: Method, model: keras.Model | None, model_dir: Path, seed: int
) -> tuple[Detector, int]:
    """The method's detector for ``model`` as loading wraps it, and its memory-bank size
    (0 without one).

    Patch AE gets random R vectors (:func:`write_random_bank`: no encoder pass over the
    training images); any other family fits its state as training does
    (``Method.after_training``, a no-op for SDC-AE and AESc) on random images.
    """
    if isinstance(method, PatchAe):
        write_random_bank(method, model_dir, seed)
    else:
        method.after_training(model, random_training_data(method, seed), model_dir)
    bank_file = model_dir / MEMORY_BANK_FILE
    bank = len(load_bank(bank_file)) if bank_file.exists() else 0
    inner = method.load_detector(model, model_dir)
    return AdaptedDetector(inner, method.image_size, method.channels), bank


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
    model = method.build()
    if model is None:
        raise ValueError(f"{variant}: the {method.family} family has no network to time")
    size = params.dataset.image_size
    images = random_images(large_batch, size, seed, CHANNELS)
    one = images[:1]
    seen = random_images(large_batch, method.image_size, seed, method.channels)
    network = tf.function(
        lambda x: model(x, training=False),
        input_signature=[
            tf.TensorSpec((None, method.image_size, method.image_size, method.channels))
        ],
    )
    with tempfile.TemporaryDirectory(prefix="reconad-bench-") as model_dir:
        detector, bank = ready_detector(method, model, Path(model_dir), seed)
        timings = {
            "detector": (
                median_seconds(lambda: detector.score(one), repeats, WARMUP_CALLS),
                median_seconds(lambda: detector.score(images), repeats, WARMUP_CALLS),
            ),
            "network": (
                median_seconds(lambda: network(seen[:1]).numpy(), repeats, WARMUP_CALLS),
                median_seconds(lambda: network(seen).numpy(), repeats, WARMUP_CALLS),
            ),
        }
    keras.backend.clear_session()
    row: dict[str, Any] = {
        "variant": variant,
        "family": method.family,
        "image_size": size,
        "network_size": method.image_size,
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
    variants: Iterable[str] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Measure every variant.

    Args:
        params_path: the ``params.yaml`` whose active profile sets the sizes.
        large_batch: images per throughput call.
        repeats: timed calls per batch size (the median is kept).
        variants: variant names defined in ``params.yaml``; default
            :func:`default_variants`.
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
    variants = default_variants(params) if variants is None else tuple(variants)
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
    parser.add_argument("--variant", action="append", help="repeatable; default: one per family")
    parser.add_argument("--seed", type=int, default=None, help="default: params seed")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    figures = run(args.params, args.large_batch, args.repeats, args.variant, args.seed)
    print(format_figures(figures))


if __name__ == "__main__":
    main()
