"""SDC-AE corruption throughput: tf.data against NumPy/OpenCV and against the training step.

Measures three rates in one process, in images per second, at the active profile of
``params.yaml`` for an SDC-AE variant (default ``sdc_restore``; batch
``sdc_ae.train.batch_size``, crops of the first and last ``sdc_ae.train.phases``, one
channel like the textures dataset, ``sdc_ae.corruption`` at the network's image size,
``ElasticOp.at_size``), under the same seeds and op determinism as ``reconad train``:

- ``tf.data``: :func:`reconad.data.pipeline.training_dataset` with ``SdcAe.make_pairs``
  on random images of the size the SDC-AE sees (crop, augment when
  ``sdc_ae.train.augment``, corrupt, batch, prefetch);
- ``reference``: :func:`reference_corruption`, a straightforward per-image NumPy/OpenCV
  implementation of the same corruption, on as many ready-made crops;
- ``training``: ``model.train_on_batch`` of the SDC-AE compiled as ``reconad train``
  does, on one pre-made batch of pairs.

It prints both ratios per crop: tf.data / reference, and tf.data / training (goal >= 5x,
so the input pipeline never starves the training step). Each rate is measured alone;
during training the pipeline and the step share the cores. Usage::

    python benchmarks/corruption.py                   # quick profile, 30 batches per rate
    python benchmarks/corruption.py --batches 60 --crop 64 --crop 128
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reconad.runtime import configure_environment, seed_everything

configure_environment()

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import random_images  # noqa: E402
from reconad.config import Params, load_params  # noqa: E402
from reconad.corrupt.elastic import (  # noqa: E402
    DISK_FADE,
    FALLBACK_SHIFT,
    MIN_CHANGE,
    MIN_SIDE,
    ElasticOp,
)
from reconad.corrupt.fields import TRUNCATE  # noqa: E402
from reconad.data.pipeline import training_dataset  # noqa: E402
from reconad.errors import ConfigError  # noqa: E402
from reconad.models.sdc_ae import SdcAe  # noqa: E402
from reconad.train import compiled_model, make_method  # noqa: E402

VARIANT = "sdc_restore"
"""The SDC-AE variant whose corruption and network are measured."""

CHANNELS = 1
"""The embedded textures dataset is grey."""

SOURCE_IMAGES = 64
"""Distinct full-size images the tf.data pipeline crops from."""

WARMUP_BATCHES = 3
"""Batches (or steps) run before timing: graph tracing and thread start-up."""

GOAL = 5.0
"""tf.data corruption must outpace the training step by at least this factor."""


def reference_corruption(
    images: np.ndarray, cfg: ElasticOp, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elastic patch corruption written per image and per patch with NumPy and OpenCV.

    Same recipe as :func:`reconad.corrupt.elastic.elastic_patch_corruption`, drawn from the
    same ``cfg`` ranges (pixels of the images given, as ``ElasticOp.at_size`` resolves
    them): k patches of random side and position; replacement by elastic
    deformation (``alpha * G_sigma * U(-1, 1)`` displacements, ``cv2.GaussianBlur`` on noise
    larger by the kernel radius, ``cv2.remap`` bilinear with clamped borders), cut-out or
    swap, optional brightness shift; a disk mask fading by smoothstep, distorted by a
    second field; ``x_hat = M * y + (1 - M) * x`` pasted patch after patch; soft union of
    the masks; the brightness fallback when the image barely changed. It does not match
    the TF op bit for bit (other random streams) and, as a per-patch loop would, it works
    on each patch box instead of the whole image; sizes and parameters are the same.

    Args:
        images: float32 ``(B, H, W, C)`` in [0, 1].
        cfg: ``sdc_ae.corruption`` at the size of ``images`` (``ElasticOp.at_size``).
        rng: source of every random draw.

    Returns:
        ``(x_hat, x, mask)``, each float32 ``(B, H, W, C)``; the mask is in [0, 1] and zero
        outside the patches.

    Raises:
        ConfigError: ``cfg.modes`` is empty.
    """
    if not cfg.modes:
        raise ConfigError("sdc_ae.corruption.modes: needs at least one of elastic, zeros, swap")
    x = np.asarray(images, dtype=np.float32)
    corrupted = [_corrupt_image(image, cfg, rng) for image in x]
    x_hat = np.stack([image for image, _ in corrupted])
    mask = np.stack([soft for _, soft in corrupted])[..., None]
    return x_hat, x, np.broadcast_to(mask, x.shape).copy()


def _corrupt_image(
    image: np.ndarray, cfg: ElasticOp, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(H, W, C)`` image: its corrupted copy and its ``(H, W)`` soft mask."""
    height, width = image.shape[:2]
    x_hat = image.copy()
    keep = np.ones((height, width), np.float32)
    boxes = [_draw_box(height, width, cfg, rng) for _ in range(_patch_count(cfg, rng))]
    for top, left, side in boxes:
        box = np.s_[top : top + side, left : left + side]
        mask = _disk(side, _random_field(side, cfg.mask_sigma, cfg.mask_alpha, rng))[..., None]
        replacement = _replacement(image, top, left, side, cfg, rng)
        x_hat[box] = mask * replacement + (1.0 - mask) * x_hat[box]
        keep[box] *= 1.0 - mask[..., 0]
    if np.abs(x_hat - image).sum() >= MIN_CHANGE:
        return x_hat, 1.0 - keep
    return _fallback(image, *boxes[0])


def _patch_count(cfg: ElasticOp, rng: np.random.Generator) -> int:
    return int(rng.integers(cfg.patches_min, cfg.patches_max + 1))


def _draw_box(
    height: int, width: int, cfg: ElasticOp, rng: np.random.Generator
) -> tuple[int, int, int]:
    """``(top, left, side)`` of a square patch inside the image; sides are in pixels."""
    short = min(height, width)
    drawn = rng.uniform(cfg.size_min, cfg.size_max)
    side = int(np.clip(round(drawn), min(MIN_SIDE, short), short))
    return *_place(height, width, side, rng), side


def _place(height: int, width: int, side: int, rng: np.random.Generator) -> tuple[int, int]:
    """Uniform ``(top, left)`` of a ``side`` box inside a ``height x width`` image."""
    return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))


def _random_field(side: int, sigma: float, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """``(side, side, 2)`` displacements ``(dy, dx)``: blurred noise, cropped past its border."""
    radius = math.ceil(TRUNCATE * sigma)
    noise = rng.uniform(-1.0, 1.0, (side + 2 * radius, side + 2 * radius, 2)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (2 * radius + 1, 2 * radius + 1), sigma)
    return alpha * blurred[radius : radius + side, radius : radius + side]


def _disk(side: int, flow: np.ndarray | None) -> np.ndarray:
    """``(side, side)`` disk inscribed in the box, soft rim, sampled through ``flow``."""
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float32)
    if flow is not None:
        rows, cols = rows + flow[..., 0], cols + flow[..., 1]
    radius = side / 2.0
    distance = np.hypot(rows - (radius - 0.5), cols - (radius - 0.5))
    t = np.clip((radius - distance) / (DISK_FADE * radius), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _replacement(
    image: np.ndarray,
    top: int,
    left: int,
    side: int,
    cfg: ElasticOp,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(side, side, C)`` content for the box, by a mode drawn from ``cfg.modes``."""
    mode = cfg.modes[int(rng.integers(len(cfg.modes)))]
    if mode == "elastic":
        content = _elastic(image, top, left, side, cfg, rng)
    elif mode == "zeros":
        content = np.zeros((side, side, image.shape[2]), np.float32)
    else:
        source_top, source_left = _place(image.shape[0], image.shape[1], side, rng)
        content = image[source_top : source_top + side, source_left : source_left + side]
    if cfg.brightness > 0:
        content = np.clip(content + rng.uniform(-cfg.brightness, cfg.brightness), 0.0, 1.0)
    return content


def _elastic(
    image: np.ndarray,
    top: int,
    left: int,
    side: int,
    cfg: ElasticOp,
    rng: np.random.Generator,
) -> np.ndarray:
    """The box resampled bilinearly at displaced positions, reading from the whole image."""
    flow = _random_field(side, cfg.sigma, cfg.alpha, rng)
    rows, cols = np.mgrid[top : top + side, left : left + side].astype(np.float32)
    warped = cv2.remap(
        image,
        cols + flow[..., 1],
        rows + flow[..., 0],
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return warped.reshape(side, side, image.shape[2])


def _fallback(image: np.ndarray, top: int, left: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The undistorted first disk, brightness shifted away from the nearer bound."""
    mask = np.zeros(image.shape[:2], np.float32)
    mask[top : top + side, left : left + side] = _disk(side, flow=None)
    shifted = np.where(image > 0.5, image - FALLBACK_SHIFT, image + FALLBACK_SHIFT)
    return mask[..., None] * shifted + (1.0 - mask[..., None]) * image, mask


def rate(step: Callable[[], object], steps: int, images_per_step: int) -> float:
    """Images per second of ``steps`` calls of ``step``, after ``WARMUP_BATCHES`` calls."""
    for _ in range(WARMUP_BATCHES):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * images_per_step / (time.perf_counter() - start)


def pipeline_rate(
    params: Params, method: SdcAe, images: np.ndarray, crop: int, batches: int
) -> tuple[float, tuple[tf.Tensor, tf.Tensor]]:
    """tf.data images/s at ``crop``, and one batch of its pairs for the training step."""
    fit = method.fit_config()
    dataset = training_dataset(
        images,
        crop,
        fit.batch_size,
        params.dataset.augment["default"] if fit.augment else None,
        params.seed,
        method.make_pairs,
    )
    batches_iter = iter(dataset)
    pairs = next(batches_iter)
    images_per_s = rate(lambda: next(batches_iter), batches, fit.batch_size)
    return images_per_s, pairs


def reference_rate(method: SdcAe, images: np.ndarray, crop: int, batches: int, seed: int) -> float:
    """NumPy/OpenCV images/s at ``crop`` on ready-made batches of crops.

    The corruption is resolved at the network's image size, as ``SdcAe.make_pairs`` does
    (patch sides are pixels of the image, whatever the crop).
    """
    rng = np.random.default_rng(seed)
    size = method.fit_config().batch_size
    op = ElasticOp.at_size(method.config.corruption, method.image_size)
    crops = _random_crops(images, crop, (WARMUP_BATCHES + batches) * size, rng)
    batch_iter = iter(np.split(crops, WARMUP_BATCHES + batches))
    return rate(lambda: reference_corruption(next(batch_iter), op, rng), batches, size)


def _random_crops(
    images: np.ndarray, crop: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    picks = rng.integers(0, len(images), count)
    tops = rng.integers(0, images.shape[1] - crop + 1, count)
    lefts = rng.integers(0, images.shape[2] - crop + 1, count)
    return np.stack(
        [images[i, t : t + crop, j : j + crop] for i, t, j in zip(picks, tops, lefts, strict=True)]
    )


def training_rate(model: keras.Model, pairs: tuple[tf.Tensor, tf.Tensor], batches: int) -> float:
    """Images/s of ``train_on_batch`` on one fixed batch of pairs."""
    inputs, targets = pairs
    return rate(lambda: model.train_on_batch(inputs, targets), batches, int(inputs.shape[0]))


def default_crops(method: SdcAe) -> list[int]:
    """Crops of the first and last training phases (``crop: 0`` is the whole image)."""
    phases = method.fit_config().phases
    return sorted({phase.crop or method.image_size for phase in (phases[0], phases[-1])})


def run(
    params_path: Path | str = "params.yaml",
    batches: int = 30,
    crops: Iterable[int] | None = None,
    seed: int | None = None,
    variant: str = VARIANT,
) -> dict[str, Any]:
    """Measure the three rates at every crop.

    Args:
        params_path: the ``params.yaml`` whose active profile sets the sizes.
        batches: timed batches (or training steps) per rate and crop.
        crops: crop sides; default the first and last ``sdc_ae.train.phases``.
        seed: seeds images, pipeline and model; default ``params.seed``.
        variant: an SDC-AE variant of ``params.yaml``.

    Returns:
        Sizes, plus one row per crop with ``tf_data``, ``reference`` and ``training`` in
        images/s and the ratios ``tf_data_over_reference`` and ``tf_data_over_training``.

    Raises:
        ConfigError: ``variant`` is not an SDC-AE variant, or a crop does not fit.
    """
    if batches < 1:
        raise ValueError(f"Expected batches >= 1, Received: batches={batches}")
    params = load_params(params_path, variant)
    seed = params.seed if seed is None else seed
    seed_everything(seed)
    method = make_method(params, variant, CHANNELS)
    if not isinstance(method, SdcAe):
        raise ConfigError(f"{variant}: not an SDC-AE variant (method {method.family})")
    crops = default_crops(method) if crops is None else sorted(set(crops))
    for crop in crops:
        if not 0 < crop <= method.image_size:
            raise ConfigError(f"crop {crop}: must lie in 1..{method.image_size} (the image size)")
    images = random_images(SOURCE_IMAGES, method.image_size, seed, CHANNELS)
    model = compiled_model(params, method)
    rows = []
    for crop in crops:
        tf_data, pairs = pipeline_rate(params, method, images, crop, batches)
        reference = reference_rate(method, images, crop, batches, seed)
        training = training_rate(model, pairs, batches)
        rows.append(
            {
                "crop": crop,
                "tf_data": tf_data,
                "reference": reference,
                "training": training,
                "tf_data_over_reference": tf_data / reference,
                "tf_data_over_training": tf_data / training,
            }
        )
    keras.backend.clear_session()
    return {
        "profile": params.profile,
        "variant": variant,
        "batch_size": method.fit_config().batch_size,
        "image_size": method.image_size,
        "channels": CHANNELS,
        "batches": batches,
        "goal_tf_data_over_training": GOAL,
        "crops": rows,
    }


def format_figures(figures: dict[str, Any]) -> str:
    """The table and ratios of :func:`run` as printable text."""
    lines = [
        f"profile {figures['profile']}, {figures['variant']} at {figures['image_size']} px: "
        f"batch {figures['batch_size']}, "
        f"{figures['channels']} channel, {figures['batches']} timed batches per rate "
        f"(images/s)",
        f"  {'crop':>5} {'tf.data':>9} {'reference':>10} {'training':>9} "
        f"{'tf.data/ref':>12} {'tf.data/train':>14}",
    ]
    for row in figures["crops"]:
        verdict = "ok" if row["tf_data_over_training"] >= GOAL else "BELOW GOAL"
        lines.append(
            f"  {row['crop']:>5} {row['tf_data']:>9.1f} {row['reference']:>10.1f} "
            f"{row['training']:>9.1f} {row['tf_data_over_reference']:>11.2f}x "
            f"{row['tf_data_over_training']:>13.2f}x  {verdict} (goal >= {GOAL:g}x)"
        )
    return "\n".join(lines)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batches", type=int, default=30, help="timed batches per rate")
    parser.add_argument(
        "--crop",
        type=int,
        action="append",
        help="crop side (repeatable); default: first and last sdc_ae.train.phases",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: params seed")
    parser.add_argument("--variant", default=VARIANT, help="an SDC-AE variant")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    print(format_figures(run(args.params, args.batches, args.crop, args.seed, args.variant)))


if __name__ == "__main__":
    main()
